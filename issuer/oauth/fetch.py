"""Fetching small JSON documents clients point the server at (metadata, JWK Sets).

No redirects are followed, the body is capped, the whole fetch has a deadline, addresses
outside the public internet are refused (plain http to a loopback name excepted, for a
development issuer: :class:`Reach`), and every failure becomes the caller's OAuth
error: a client's URL must never make the server hang, read without bound, or reach into
its private network.

The host's name is resolved once: the connection goes to an address that was checked
(:class:`Destination`), with the name kept for the ``Host`` header and for the TLS server
name the certificate is verified against. A name that resolves elsewhere by the time of
the connection (DNS rebinding) cannot turn the request into one to a private address.
Through a proxy the environment names (``HTTPS_PROXY``), the proxy resolves the name, and
its own rules decide where requests may go.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import SplitResult, urlsplit, urlunsplit

import httpx

from issuer.oauth.errors import OAuthError
from issuer.wire import read_json

TIMEOUT = 5.0  # seconds for the whole fetch
# The least time connecting to one address gets, however many are left to try: a TLS
# handshake and a lost SYN's retransmission (1 s) fit in it.
MIN_CONNECT = 1.5
# What makes a request go to the next checked address, as a connection to a name would:
# the address refused, or did not answer in its share of the time (Destination.timeout).
NEXT_ADDRESS = (httpx.ConnectError, httpx.ConnectTimeout)
LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")
T = TypeVar("T")


def plain_loopback(url: str) -> bool:
    """Whether a URL is plain http to a loopback host: allowed for development only."""
    try:
        parts = urlsplit(url)
        return parts.scheme == "http" and parts.hostname in LOOPBACK_HOSTS
    except ValueError:  # a bracketed host that is no IP address: not a URL at all
        return False


@dataclass(frozen=True)
class Reach:
    """Which URLs a client may make the server call: https to public addresses and, with
    ``loopback``, plain http to a loopback name too. Only a development issuer, itself
    served over plain http on loopback, allows that (:func:`reach_of`): elsewhere a
    client's URL could make the issuer probe and call services on its own host."""

    loopback: bool = False

    def plain(self, url: str) -> bool:
        """Whether ``url`` is plain http this reach allows (to a loopback name)."""
        return self.loopback and plain_loopback(url)


PUBLIC = Reach()
DEVELOPMENT = Reach(loopback=True)


def reach_of(issuer: str) -> Reach:
    """What the issuer identified by ``issuer`` lets clients make it call: a plain-http
    loopback issuer is a development one."""
    return DEVELOPMENT if plain_loopback(issuer) else PUBLIC


IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
NAT64 = ipaddress.ip_network("64:ff9b::/96")  # IPv4 addresses embedded (RFC 6052)
LOCAL_NAT64 = ipaddress.ip_network("64:ff9b:1::/48")  # local use (RFC 8215)


@dataclass(frozen=True)
class Destination:
    """Where requests for a client's URL go.

    ``urls`` is the URL with each checked address in place of the host's name, in the
    resolver's order: tried in turn while one cannot be connected to, as a connection to
    the name would be. ``headers`` (``Host``) and ``extensions`` (``sni_hostname``, the
    TLS server name, which certificate verification also uses) keep the name. A
    plain-http loopback URL (development), or one the environment sends through a proxy
    (which resolves the name itself), goes as it is: ``urls`` is the URL alone."""

    urls: tuple[str, ...]
    headers: dict[str, str] = field(default_factory=dict)
    extensions: dict[str, Any] = field(default_factory=dict)
    proxy: str | None = None  # the proxy the environment names for it, if any

    def timeout(self, index: int, deadline: float) -> httpx.Timeout:
        """The timeout of a request to ``urls[index]``, all of it by ``deadline``
        (``time.monotonic``): connecting may take the time left shared by the addresses
        still to try (at least :data:`MIN_CONNECT`), so that one that drops connections
        leaves time for the next."""
        left = max(deadline - time.monotonic(), 0.001)
        share = max(left / (len(self.urls) - index), MIN_CONNECT)
        return httpx.Timeout(left, connect=min(left, share))

    def client(self, timeout: float) -> dict[str, Any]:
        """The httpx client options for these requests: no redirects followed, and the
        proxy decided here, not again by httpx from the environment (which would see the
        address, not the name, and decide otherwise); TLS trusts what the environment
        says (``SSL_CERT_FILE``, ``SSL_CERT_DIR``), as httpx would."""
        return {
            "timeout": timeout,
            "follow_redirects": False,
            "trust_env": False,
            "proxy": self.proxy,
            "verify": httpx.create_ssl_context(trust_env=True),
        }


def public(address: IpAddress) -> bool:
    """Whether an address is on the public internet (not private, loopback, link-local,
    reserved or multicast; nor site-local IPv6), and so is the IPv4 address an IPv6 one
    embeds (IPv4-mapped, -compatible or -translated, 6to4, Teredo, NAT64)."""
    if not address.is_global or address.is_multicast:
        return False
    if isinstance(address, ipaddress.IPv6Address):
        if address in LOCAL_NAT64 or address.is_site_local:
            return False
        embedded = _embedded(address)
        return embedded is None or public(embedded)
    return True


def _embedded(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]  # the client's
    # NAT64, IPv4-compatible (::a.b.c.d), IPv4-translated (::ffff:0:a.b.c.d, RFC 2765)
    if address in NAT64 or int(address) >> 32 in (0, 0xFFFF0000):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def proxy_for(host: str) -> str | None:
    """The proxy the environment names for https requests to ``host`` (``HTTPS_PROXY``,
    else ``ALL_PROXY``, unless ``NO_PROXY`` lists the host or a domain of it, as Python's
    ``urllib`` reads them), or None. Requests are sent with exactly this decision."""
    proxies = urllib.request.getproxies()
    proxy = proxies.get("https") or proxies.get("all")
    if not proxy or urllib.request.proxy_bypass(host):
        return None
    return proxy


def check_destination(
    url: str, error: Callable[[str], OAuthError], reach: Reach = PUBLIC
) -> Destination:
    """Refuse to reach into private networks (SSRF): every address the host resolves to
    must be public. Plain http to a loopback name is the one exception, where ``reach``
    allows it (development). Used for every URL a client makes the server call: fetched
    documents and CIBA notification endpoints (at registration and before each ping).
    Where to send the request: to the addresses checked, never to a name resolved
    again."""
    if reach.plain(url):
        return Destination((url,))
    parts = urlsplit(url)
    if parts.scheme != "https":
        raise error(f"{url}: only https may be fetched")
    try:  # the name as it goes on the wire (an internationalized one in IDNA), the port
        host, port_number = httpx.URL(url).raw_host.decode("ascii"), parts.port
    except (httpx.InvalidURL, UnicodeError, ValueError):
        raise error(f"{url}: not a valid URL") from None
    try:
        infos = socket.getaddrinfo(host, port_number or 443, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise error(f"{url}: cannot resolve {host}: {exc}") from None
    addresses = list(dict.fromkeys(ipaddress.ip_address(info[4][0]) for info in infos))
    for address in addresses:
        if not public(address):
            raise error(f"{url}: {host} resolves to {address}, which is not a public address")
    if not addresses:
        raise error(f"{url}: {host} resolves to no address")
    proxy = proxy_for(host)
    if proxy is not None:  # the proxy resolves the name; its rules decide where it may go
        return Destination((url,), proxy=proxy)
    port = "" if port_number is None else f":{port_number}"
    named = f"[{host}]" if ":" in host else host  # an IPv6 literal keeps its brackets
    urls = tuple(_pinned(parts, address, port) for address in addresses)
    return Destination(urls, {"Host": named + port}, {"sni_hostname": host})


def _pinned(parts: SplitResult, address: IpAddress, port: str) -> str:
    """The URL ``parts`` names, sent to ``address`` (credentials in the URL, and its
    fragment, left out)."""
    literal = f"[{address}]" if address.version == 6 else str(address)
    return urlunsplit((parts.scheme, literal + port, parts.path, parts.query, ""))


async def first_answer(
    http: httpx.AsyncClient,
    to: Destination,
    method: str,
    seconds: float,
    read: Callable[[httpx.Response], Awaitable[T]],
    headers: dict[str, str],
    **request: Any,
) -> T:
    """What ``read`` makes of the answer to a ``method`` request for ``to``'s URL, from
    each checked address in turn while one cannot be connected to (:data:`NEXT_ADDRESS`),
    as a connection to the name would: the last one's failure is raised. All of it within
    ``seconds`` (TimeoutError beyond), however slowly the other end sends."""
    deadline = time.monotonic() + seconds

    async def attempt(index: int) -> T:
        answer = http.stream(
            method,
            to.urls[index],
            headers={**headers, **to.headers},
            extensions=to.extensions,
            timeout=to.timeout(index, deadline),
            **request,
        )
        async with answer as response:
            return await read(response)

    async with asyncio.timeout(seconds):
        for index in range(len(to.urls) - 1):
            try:
                return await attempt(index)
            except NEXT_ADDRESS:
                continue
        return await attempt(len(to.urls) - 1)


def fetch_json(
    url: str, max_bytes: int, error: Callable[[str], OAuthError], reach: Reach = PUBLIC
) -> Any:
    """The JSON document at ``url`` (within ``reach``), or ``error(description)`` raised.
    Blocking, for a worker thread: the fetch runs on an event loop of its own, so that
    :data:`TIMEOUT` bounds all of it (connecting, the answer's head, its body), however
    slowly the other end sends."""
    to = check_destination(url, error, reach)
    try:
        body = asyncio.run(_fetched(url, to, max_bytes, error))
    except TimeoutError:
        raise error(f"{url} took longer than {TIMEOUT:g} s") from None
    except httpx.HTTPError as exc:
        raise error(f"{url} cannot be fetched: {exc}") from None
    try:
        return read_json(body)
    except ValueError:
        raise error(f"{url} is not JSON") from None


async def _fetched(
    url: str, to: Destination, max_bytes: int, error: Callable[[str], OAuthError]
) -> bytes:
    async def body(response: httpx.Response) -> bytes:
        """The body of a 200 answer, within ``max_bytes``."""
        if response.status_code != 200:
            raise error(f"{url} answered {response.status_code}")
        read = b""
        async for chunk in response.aiter_bytes():
            read += chunk
            if len(read) > max_bytes:
                raise error(f"{url} exceeds {max_bytes} bytes")
        return read

    async with httpx.AsyncClient(**to.client(TIMEOUT)) as http:
        return await first_answer(http, to, "GET", TIMEOUT, body, {"Accept": "application/json"})
