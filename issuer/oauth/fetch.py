"""Fetching small JSON documents clients point the server at (metadata, JWK Sets).

No redirects are followed, the body is capped, the whole fetch has a deadline, addresses
outside the public internet are refused (plain http to a loopback name excepted, for
development), and every failure becomes the caller's OAuth error: a client's URL must
never make the server hang, read without bound, or reach into its private network. (The
address is checked before the connection, which resolves again: a DNS rebinding window
remains.)
"""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx

from issuer.oauth.errors import OAuthError
from issuer.wire import read_json

TIMEOUT = 5.0  # seconds for the whole fetch
LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


def plain_loopback(url: str) -> bool:
    """Whether a URL is plain http to a loopback host: allowed for development only."""
    try:
        parts = urlsplit(url)
        return parts.scheme == "http" and parts.hostname in LOOPBACK_HOSTS
    except ValueError:  # a bracketed host that is no IP address: not a URL at all
        return False


def check_destination(url: str, error: Callable[[str], OAuthError]) -> None:
    """Refuse to reach into private networks (SSRF): every address the host resolves to
    must be public. Plain http to a loopback name is the one exception (development).
    Used for every URL a client makes the server call: fetched documents and CIBA
    notification endpoints (at registration and before each ping)."""
    if plain_loopback(url):
        return
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme != "https":
        raise error(f"{url}: only https may be fetched")
    try:
        infos = socket.getaddrinfo(host, parts.port or 443, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise error(f"{url}: cannot resolve {host}: {exc}") from None
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if not address.is_global or address.is_multicast:
            raise error(f"{url}: {host} resolves to {address}, which is not a public address")


def fetch_json(url: str, max_bytes: int, error: Callable[[str], OAuthError]) -> Any:
    """The JSON document at ``url``, or ``error(description)`` raised."""
    check_destination(url, error)
    deadline = time.monotonic() + TIMEOUT
    try:
        with (
            httpx.Client(timeout=TIMEOUT, follow_redirects=False) as http,
            http.stream("GET", url, headers={"Accept": "application/json"}) as response,
        ):
            if response.status_code != 200:
                raise error(f"{url} answered {response.status_code}")
            body = b""
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > max_bytes:
                    raise error(f"{url} exceeds {max_bytes} bytes")
                if time.monotonic() > deadline:  # a slow drip must not hold a thread
                    raise error(f"{url} took longer than {TIMEOUT:g} s")
    except httpx.HTTPError as exc:
        raise error(f"{url} cannot be fetched: {exc}") from None
    try:
        return read_json(body)
    except ValueError:
        raise error(f"{url} is not JSON") from None
