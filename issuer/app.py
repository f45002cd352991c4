"""The issuer's HTTP side: one ASGI application and the uvicorn server that runs it.

``tessera serve`` runs it beside the gRPC decision service, in the same event loop:
the SCIM service at ``/scim/v2``, the resource catalog at ``/resources/v1`` and the OAuth
endpoints.

The issuer, AuthZEN and the MCP proxy run on :func:`serve_http`, so a connection is held
to one set of bounds (:class:`HttpBounds`, docs/limits.md) before its request reaches the
application: a request head of at most 16 KiB (431 beyond, RFC 6585 §5) that arrives
whole within 10 seconds (408, RFC 9110 §15.5.9), and at most 1,000 connections and
requests at once (503 beyond). uvicorn bounds the head's size on the h11 path only, and
only while it arrives, and its time on neither, so the two protocols and the application
wrapper below add what it lacks.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import ssl
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Protocol

import uvicorn
from scim2_models import Error
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Mount
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from issuer.catalog import SchemaCheck
from issuer.catalog_api import CATALOG_PATH, CatalogApi, error_response
from issuer.netloc import bare, hostport
from issuer.oauth.endpoints import AuthorizationServer
from issuer.oauth.errors import OAuthError
from issuer.scim import Authenticator, scim_app, scim_response
from issuer.store import Store

SCIM_PATH = "/scim/v2"


def issuer_routes(
    store: Store,
    authenticate: Authenticator,
    oauth: AuthorizationServer | None = None,
    catalog_check: SchemaCheck | None = None,
) -> list[BaseRoute]:
    """Every HTTP endpoint of the issuer: SCIM at ``/scim/v2``, the resource catalog at
    ``/resources/v1`` (its entries held to ``catalog_check``, when given) and, with
    ``oauth``, the authorization server's endpoints. Routes, not an application, so that
    an application serving other routes beside them lists them in one router: a
    catch-all mount would answer 404 where a known path asked with another method
    deserves 405 with ``Allow``."""
    routes: list[BaseRoute] = [
        Mount(SCIM_PATH, app=scim_app(store, authenticate)),
        *CatalogApi(store, authenticate, catalog_check).routes(),
    ]
    if oauth is not None:
        routes = [*oauth.routes(), *routes]
    return routes


def issuer_app(
    store: Store,
    authenticate: Authenticator,
    oauth: AuthorizationServer | None = None,
    catalog_check: SchemaCheck | None = None,
) -> Starlette:
    """The issuer's routes (:func:`issuer_routes`) as one application."""
    routes = issuer_routes(store, authenticate, oauth, catalog_check)
    return Starlette(routes=routes, exception_handlers={HTTPException: unrouted})


OAUTH_PATHS = ("/oauth/", "/.well-known/oauth-", "/.well-known/openid-")


def unrouted(request: Request, exc: Exception) -> Response:
    """A path no route serves, or a method its route does not take, in the error shape of
    the protocol the path belongs to, headers (``Allow``) kept: SCIM's under ``/scim/v2``
    (also a path the SCIM mount cannot match, such as one with a line break), the
    catalog's JSON under ``/resources/v1``, OAuth's for a method an OAuth endpoint does
    not take, plain text otherwise (AuthZEN's shape). The handler of every application
    the issuer's routes are served in."""
    assert isinstance(exc, HTTPException)
    path, status, headers = request.scope["path"], exc.status_code, dict(exc.headers or {})
    if path.startswith(f"{SCIM_PATH}/"):
        return scim_response(Error(status=status, detail=exc.detail).model_dump(), status, headers)
    if path == CATALOG_PATH or path.startswith(f"{CATALOG_PATH}/"):
        allowed = headers.get("Allow", headers.get("allow", ""))
        message = f"this endpoint takes {allowed}" if status == 405 else str(exc.detail)
        return error_response(status, message, headers)
    if status == 405 and path.startswith(OAUTH_PATHS):
        allowed = headers.get("Allow", headers.get("allow", ""))
        error = OAuthError("invalid_request", f"this endpoint takes {allowed}", 405, headers)
        return error.response()
    return PlainTextResponse(exc.detail, status, headers)


@dataclass(frozen=True)
class HttpBounds:
    """What a connection may ask of the server before its request reaches the
    application; the defaults are those of every door (docs/limits.md)."""

    head_bytes: int = 16 * 1024  # the request line and headers; 431 beyond
    head_seconds: float = 10.0  # for a request's head to arrive whole; 408 beyond
    concurrency: int = 1_000  # connections and requests at once; a request beyond gets 503
    keep_alive: int = 5  # seconds an idle connection is kept between requests


class _Config(uvicorn.Config):
    """uvicorn's configuration, carrying the bounds to the protocols it makes."""

    bounds = HttpBounds()


def _bounds(config: uvicorn.Config) -> HttpBounds:
    return config.bounds if isinstance(config, _Config) else HttpBounds()


class _Connection(Protocol):
    """What answering and closing a connection needs of its transport."""

    def write(self, data: bytes) -> None: ...
    def close(self) -> None: ...
    def is_closing(self) -> bool: ...


def _refuse(transport: _Connection, status: int, message: str) -> None:
    """Answer a request the application never saw, and close the connection."""
    body = message.encode()
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
        "content-type: text/plain; charset=utf-8\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    transport.write(head.encode() + body)
    transport.close()


class _HeadClock:
    """The time a request's head may take: counted from the connection, or from the
    previous answer, to the head's end. uvicorn has no such bound (its keep-alive timer
    only closes a connection that sends nothing), so a client that trickles a head a
    byte at a time would hold its connection forever.

    One timer per connection, moved only when it fires: an answer merely notes when
    it ended, which costs the hot path nothing."""

    def __init__(
        self,
        transport: _Connection,
        seconds: float,
        waiting: Callable[[], bool],
        begun: Callable[[], bool],
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._transport = transport
        self._seconds = seconds
        self._waiting = waiting  # no request is being answered
        self._begun = begun  # some of the next head has arrived
        self.since = self._loop.time()
        self._timer = self._loop.call_later(seconds, self._check)

    def restart(self) -> None:
        """An answer ended: the next head has the whole time from now."""
        self.since = self._loop.time()

    def stop(self) -> None:
        self._timer.cancel()

    def _check(self) -> None:
        if self._transport.is_closing():
            return
        left = self._seconds
        if self._waiting():
            left -= self._loop.time() - self.since
            if left <= 0:
                self._expire()
                return
        self._timer = self._loop.call_later(left, self._check)

    def _expire(self) -> None:
        """408 for a head begun and not finished (RFC 9110 §15.5.9); a connection that
        sent nothing is closed without a word."""
        if self._begun():
            _refuse(
                self._transport,
                408,
                f"the request head did not arrive within {self._seconds:g} seconds",
            )
        else:
            self._transport.close()


def _too_large(limit: int) -> str:
    return f"the request head is larger than {limit} bytes"


class _Server(uvicorn.Server):
    """uvicorn, leaving signals to the process that embeds it (``tessera serve``)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class _ClientCertificates(H11Protocol):
    """HTTP/1.1 (h11) that hands the TLS client certificate to the application, as the
    ASGI TLS extension's ``client_cert_chain`` (uvicorn itself does not), and keeps a
    request's head within the time bound, and answers one too large 431, not 400."""

    _clock: _HeadClock | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._clock = _HeadClock(
            transport, _bounds(self.config).head_seconds, self._waiting, self._begun
        )
        self._hand_certificate_on(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._clock is not None:
            self._clock.stop()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        if self._clock is not None:
            self._clock.restart()
        super().on_response_complete()

    def send_400_response(self, msg: str) -> None:
        """h11 refuses a head over its buffer's bound as it refuses a malformed one; the
        bytes it kept tell them apart."""
        bounds = _bounds(self.config)
        if len(self.conn.trailing_data[0]) > bounds.head_bytes:
            _refuse(self.transport, 431, _too_large(bounds.head_bytes))
        else:
            super().send_400_response(msg)

    def _waiting(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _begun(self) -> bool:
        return bool(self.conn.trailing_data[0])

    def _hand_certificate_on(self, transport: asyncio.Transport) -> None:
        tls = transport.get_extra_info("ssl_object")
        der = tls.getpeercert(binary_form=True) if tls is not None else None
        if not der:
            return
        chain = [ssl.DER_cert_to_PEM_cert(der)]
        inner = self.app

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            scope["extensions"] = {
                **(scope.get("extensions") or {}),
                "tls": {"client_cert_chain": chain},
            }
            await inner(scope, receive, send)

        self.app = app


class _Corked:
    """A transport whose writes within one turn of the event loop leave in one system
    call. uvicorn writes a response's head and its body separately, and on loopback a
    write costs about as much as parsing the request: corked, a small answer is one."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._pending: list[bytes] = []
        self._loop = asyncio.get_running_loop()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(bytes(data))

    def writelines(self, lines: Iterable[bytes | bytearray | memoryview]) -> None:
        for line in lines:
            self.write(line)

    def _flush(self) -> None:
        if self._pending:
            data = b"".join(self._pending)
            self._pending.clear()
            if not self._transport.is_closing():
                self._transport.write(data)

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._pending))

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class _CorkedHttpTools(HttpToolsProtocol):
    """uvicorn's httptools HTTP/1.1 on a :class:`_Corked` transport, with a request's
    head bounded in time, and in size while it arrives (httptools would keep a head of
    any size: a header that never ends grows in its buffer)."""

    _clock: _HeadClock | None = None
    _head_bytes = 0  # of the head being read, counted in whole reads
    _reading_head = True  # the bytes that arrive belong to a request's head
    _heads_ended = 0  # in the read being parsed

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(_Corked(transport))  # type: ignore[arg-type]
        self._clock = _HeadClock(
            self.transport, _bounds(self.config).head_seconds, self._waiting, self._begun
        )

    def connection_lost(self, exc: Exception | None) -> None:
        if self._clock is not None:
            self._clock.stop()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """Count each read that is all head: a head still unfinished past the bound is
        431. (A read a head ends in is not counted, even when the whole request and the
        next head's start came in it; :class:`_Guarded` measures the finished head.)"""
        reading = self._reading_head
        self._heads_ended = 0
        super().data_received(data)
        if reading and not self._heads_ended and not self.transport.is_closing():
            self._head_bytes += len(data)
            bounds = _bounds(self.config)
            if self._head_bytes > bounds.head_bytes:
                _refuse(self.transport, 431, _too_large(bounds.head_bytes))

    def on_headers_complete(self) -> None:
        self._reading_head = False
        self._heads_ended += 1
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._reading_head, self._head_bytes = True, 0

    def on_response_complete(self) -> None:
        if self._clock is not None:
            self._clock.restart()
        super().on_response_complete()

    def _waiting(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _begun(self) -> bool:
        return self._head_bytes > 0


class _Guarded:
    """The application, with what every request gets before and after it: a request whose
    finished head is over the bound answered 431 (RFC 6585 §5) before the application
    sees it (the parsers bound a head while it arrives; one that arrives whole in one
    read is measured here, on both paths), and a request the drain cancels before its
    answer began answered 503 Service Unavailable (uvicorn would log the cancellation
    and answer 500). One layer, so a request pays for one more call, not two."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # the request line and each "name: value\r\n", near enough
        size = len(scope["raw_path"]) + len(scope["query_string"]) + 32
        for name, value in scope["headers"]:
            size += len(name) + len(value) + 4
        if size > self.limit:
            await self._refuse(send)
            return
        try:
            await self.app(scope, receive, send)
        except asyncio.CancelledError as exc:
            if exc.args != (SHUTTING_DOWN,):
                raise
            try:
                await send(_UNAVAILABLE)
            except RuntimeError:  # the answer had begun: the connection is cut
                raise exc from None
            await send({"type": "http.response.body", "body": SHUTTING_DOWN.encode()})

    async def _refuse(self, send: Send) -> None:
        body = _too_large(self.limit).encode()
        headers = [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        await send({"type": "http.response.start", "status": 431, "headers": headers})
        await send({"type": "http.response.body", "body": body})


# Why a request still running when a drain ends is answered 503: the drain cancels its task
# with this message, and :class:`_Guarded` turns that cancellation into the answer.
SHUTTING_DOWN = "the server is shutting down; retry on another replica"
# The end of a grace period kept for answering the requests that outlast it: at most this
# long, and at most a tenth of the period.
ENDING = 0.25  # seconds


_UNAVAILABLE = {
    "type": "http.response.start",
    "status": 503,
    "headers": [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"retry-after", b"1"),
        (b"connection", b"close"),
    ],
}


@dataclass
class HttpRunning:
    """A started HTTP server: its port, and how to stop it."""

    server: uvicorn.Server
    task: asyncio.Task[None]
    port: int

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting connections, close the idle ones, and let the requests in
        progress finish: within ``grace`` seconds (shortly before they are up, those still
        running are answered 503 and their connections closed), or as long as they take
        (None). Stopping again waits for the first stop."""
        self.server.should_exit = True
        if grace is not None:
            if self.server.config.timeout_graceful_shutdown is None:  # uvicorn's backstop
                # uvicorn hints an int, and hands it to asyncio.timeout, which takes seconds.
                backstop: Any = grace
                self.server.config.timeout_graceful_shutdown = backstop
            ending = min(ENDING, grace / 10)
            await asyncio.wait((self.task,), timeout=max(grace - ending, 0.0))
            self.hurry()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task

    def hurry(self) -> None:
        """Stop waiting for the requests in progress: answer them 503 now."""
        self.server.should_exit = True
        for task in self.server.server_state.tasks:
            task.cancel(SHUTTING_DOWN)


def bind(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    """A TCP socket bound to ``host:port`` (0 picks a free port), or an OSError naming it.

    With ``reuse_port``, several processes bind the same port (``SO_REUSEPORT``) and the
    kernel spreads new connections over those that listen: the worker processes of one
    ``tessera serve``. Without it, a port another process holds is an error."""
    address = bare(host)
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        # Accepted connections inherit it: without, small responses wait on delayed ACKs.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((address, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot serve HTTP on {hostport(host, port)}: {exc.strerror}") from None
    return sock


async def serve_http(
    app: ASGIApp,
    sock: socket.socket,
    tls: tuple[str, str] | None = None,
    client_ca: str | None = None,
    *,
    lifespan: bool = False,
    httptools: bool = False,
    bounds: HttpBounds = HttpBounds(),
) -> HttpRunning:
    """Serve ``app`` on a bound socket in the running event loop; with ``tls``
    (certificate chain file, key file), serve HTTPS; with ``client_ca`` too, ask clients
    for a certificate from that CA (optional: OAuth clients that use mutual TLS send one)
    and pass it on to the application; with ``lifespan``, run the application's lifespan
    (startup before the first request, shutdown on stop); with ``httptools``, parse HTTP
    with httptools (C) instead of h11, and send each answer in one write (a fraction of the
    CPU per request, for the MCP proxy's hot path; without TLS client certificates, which
    only the h11 path hands on). ``bounds`` are what a connection may ask before its
    request reaches the application (:class:`HttpBounds`)."""
    if httptools and client_ca:
        raise ValueError("httptools does not hand TLS client certificates on")
    certfile, keyfile = tls if tls is not None else (None, None)
    config = _Config(
        _Guarded(app, bounds.head_bytes),
        log_level="warning",
        lifespan="on" if lifespan else "off",
        access_log=False,
        ssl_certfile=certfile,
        ssl_keyfile=keyfile,
        ssl_cert_reqs=ssl.CERT_OPTIONAL if tls and client_ca else ssl.CERT_NONE,
        ssl_ca_certs=client_ca if tls else None,
        http=_CorkedHttpTools if httptools else _ClientCertificates,
        ws="none",  # no door speaks WebSocket: an upgrade is an ordinary request
        # The peer is whoever connected: a client_cert_proxies check must not be met, or
        # missed, by what an X-Forwarded-For header says (uvicorn believes loopback's)
        proxy_headers=False,
        server_header=False,  # no "server: uvicorn" to fingerprint the stack by
        h11_max_incomplete_event_size=bounds.head_bytes,
        timeout_keep_alive=bounds.keep_alive,
        limit_concurrency=bounds.concurrency,
    )
    config.bounds = bounds
    server = _Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    for _ in range(500):  # at most 5 s
        if server.started or task.done():
            break
        await asyncio.sleep(0.01)
    if not server.started:
        server.should_exit = True
        sock.close()
        raise OSError(f"cannot serve HTTP on {sock.getsockname()}")
    return HttpRunning(server, task, sock.getsockname()[1])


def on_stop_signals(act: Callable[[], None]) -> None:
    """Have the running loop call ``act`` on SIGINT or SIGTERM (replacing what it did)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, act)


async def start_http(
    app: ASGIApp,
    host: str,
    port: int,
    tls: tuple[str, str] | None = None,
    client_ca: str | None = None,
) -> HttpRunning:
    """:func:`bind` then :func:`serve_http`."""
    return await serve_http(app, bind(host, port), tls, client_ca)
