"""Fetching small JSON documents clients point the server at (metadata, JWK Sets).

No redirects are followed, the body is capped, the whole fetch has a deadline, addresses
outside the public internet are refused (plain http to a loopback name excepted, for
development), and every failure becomes the caller's OAuth error: a client's URL must
never make the server hang, read without bound, or reach into its private network.

The host's name is resolved once: the connection goes to the address that was checked
(:class:`Destination`), with the name kept for the ``Host`` header and for the TLS server
name the certificate is verified against. A name that resolves elsewhere by the time of
the connection (DNS rebinding) cannot turn the request into one to a private address.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import SplitResult, urlsplit, urlunsplit

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


IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Destination:
    """Where a request for a client's URL goes: the URL with the checked address in place
    of the host's name, and the ``Host`` header and TLS server name (the ``sni_hostname``
    request extension, which certificate verification also uses) that keep the name. A
    plain-http loopback URL (development) goes as it is."""

    url: str
    headers: dict[str, str] = field(default_factory=dict)
    extensions: dict[str, Any] = field(default_factory=dict)


def public(address: IpAddress) -> bool:
    """Whether an address is on the public internet (not private, loopback, link-local,
    reserved or multicast)."""
    return address.is_global and not address.is_multicast


def check_destination(url: str, error: Callable[[str], OAuthError]) -> Destination:
    """Refuse to reach into private networks (SSRF): every address the host resolves to
    must be public. Plain http to a loopback name is the one exception (development).
    Used for every URL a client makes the server call: fetched documents and CIBA
    notification endpoints (at registration and before each ping). Where to send the
    request: to the first address checked, never to a name resolved again."""
    if plain_loopback(url):
        return Destination(url)
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme != "https":
        raise error(f"{url}: only https may be fetched")
    try:
        infos = socket.getaddrinfo(host, parts.port or 443, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise error(f"{url}: cannot resolve {host}: {exc}") from None
    addresses = [ipaddress.ip_address(info[4][0]) for info in infos]
    for address in addresses:
        if not public(address):
            raise error(f"{url}: {host} resolves to {address}, which is not a public address")
    if not addresses:
        raise error(f"{url}: {host} resolves to no address")
    return _pinned(parts, host, addresses[0])


def _pinned(parts: SplitResult, host: str, address: IpAddress) -> Destination:
    """The request for ``parts`` sent to ``address``, naming ``host`` (credentials in the
    URL, and its fragment, left out)."""
    literal = f"[{address}]" if address.version == 6 else str(address)
    port = "" if parts.port is None else f":{parts.port}"
    url = urlunsplit((parts.scheme, literal + port, parts.path, parts.query, ""))
    named = f"[{host}]" if ":" in host else host  # an IPv6 literal keeps its brackets
    return Destination(url, {"Host": named + port}, {"sni_hostname": host})


def fetch_json(url: str, max_bytes: int, error: Callable[[str], OAuthError]) -> Any:
    """The JSON document at ``url``, or ``error(description)`` raised."""
    to = check_destination(url, error)
    deadline = time.monotonic() + TIMEOUT
    headers = {"Accept": "application/json", **to.headers}
    try:
        with (
            httpx.Client(timeout=TIMEOUT, follow_redirects=False) as http,
            http.stream("GET", to.url, headers=headers, extensions=to.extensions) as response,
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
