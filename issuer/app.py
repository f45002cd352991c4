"""The issuer's HTTP side: one ASGI application and the uvicorn server that runs it.

``tessera serve`` runs it beside the gRPC decision service, in the same event loop:
the SCIM service at ``/scim/v2`` (and, as they arrive, the OAuth endpoints).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

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

from issuer.oauth.endpoints import AuthorizationServer
from issuer.oauth.errors import OAuthError
from issuer.scim import Authenticator, scim_app, scim_response
from issuer.store import Store

SCIM_PATH = "/scim/v2"


def issuer_app(
    store: Store, authenticate: Authenticator, oauth: AuthorizationServer | None = None
) -> Starlette:
    """Every HTTP endpoint of the issuer, under one application: SCIM at ``/scim/v2`` and,
    with ``oauth``, the authorization server's endpoints."""
    routes: list[BaseRoute] = [Mount(SCIM_PATH, app=scim_app(store, authenticate))]
    if oauth is not None:
        routes = [*oauth.routes(), *routes]
    return Starlette(routes=routes, exception_handlers={HTTPException: _unrouted})


def _unrouted(request: Request, exc: Exception) -> Response:
    """A path no endpoint serves, or a method its endpoint does not take, in its
    protocol's error shape, headers (``Allow``) kept: SCIM's under ``/scim/v2`` (a path
    the SCIM mount cannot match, such as one with a line break), OAuth's for a method an
    OAuth endpoint does not take; any other unknown path is Starlette's plain 404."""
    assert isinstance(exc, HTTPException)
    status, headers = exc.status_code, dict(exc.headers or {})
    if request.scope["path"].startswith(f"{SCIM_PATH}/"):
        return scim_response(Error(status=status, detail=exc.detail).model_dump(), status, headers)
    if status == 405:
        allowed = headers.get("allow", headers.get("Allow", ""))
        return OAuthError(
            "invalid_request", f"this endpoint takes {allowed}", 405, headers
        ).response()
    return PlainTextResponse(exc.detail, status, headers)


class _Server(uvicorn.Server):
    """uvicorn, leaving signals to the process that embeds it (``tessera serve``)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class _ClientCertificates(H11Protocol):
    """HTTP/1.1 that hands the TLS client certificate to the application, as the ASGI TLS
    extension's ``client_cert_chain`` (uvicorn itself does not)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
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
    """uvicorn's httptools HTTP/1.1 on a :class:`_Corked` transport."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(_Corked(transport))  # type: ignore[arg-type]


# Why a request still running when a drain ends is answered 503: the drain cancels its task
# with this message, and :class:`_Draining` turns that cancellation into the answer.
SHUTTING_DOWN = "the server is shutting down; retry on another replica"
# The end of a grace period kept for answering the requests that outlast it: at most this
# long, and at most a tenth of the period.
ENDING = 0.25  # seconds


class _Draining:
    """The application, with a request the drain cancels before its answer began answered
    503 Service Unavailable (uvicorn would log the cancellation and answer 500)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.app(scope, receive, send)
        except asyncio.CancelledError as exc:
            if exc.args != (SHUTTING_DOWN,) or scope["type"] != "http":
                raise
            try:
                await send(_UNAVAILABLE)
            except RuntimeError:  # the answer had begun: the connection is cut
                raise exc from None
            await send({"type": "http.response.body", "body": SHUTTING_DOWN.encode()})


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
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        # Accepted connections inherit it: without, small responses wait on delayed ACKs.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot serve HTTP on {host}:{port}: {exc.strerror}") from None
    return sock


async def serve_http(
    app: ASGIApp,
    sock: socket.socket,
    tls: tuple[str, str] | None = None,
    client_ca: str | None = None,
    *,
    lifespan: bool = False,
    httptools: bool = False,
) -> HttpRunning:
    """Serve ``app`` on a bound socket in the running event loop; with ``tls``
    (certificate chain file, key file), serve HTTPS; with ``client_ca`` too, ask clients
    for a certificate from that CA (optional: OAuth clients that use mutual TLS send one)
    and pass it on to the application; with ``lifespan``, run the application's lifespan
    (startup before the first request, shutdown on stop); with ``httptools``, parse HTTP
    with httptools (C) instead of h11, and send each answer in one write (a fraction of the
    CPU per request, for the MCP proxy's hot path; without TLS client certificates, which
    only the h11 path hands on)."""
    if httptools and client_ca:
        raise ValueError("httptools does not hand TLS client certificates on")
    certfile, keyfile = tls if tls is not None else (None, None)
    config = uvicorn.Config(
        _Draining(app),
        log_level="warning",
        lifespan="on" if lifespan else "off",
        access_log=False,
        ssl_certfile=certfile,
        ssl_keyfile=keyfile,
        ssl_cert_reqs=ssl.CERT_OPTIONAL if tls and client_ca else ssl.CERT_NONE,
        ssl_ca_certs=client_ca if tls else None,
        http=_CorkedHttpTools if httptools else _ClientCertificates,
    )
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


async def start_http(
    app: ASGIApp,
    host: str,
    port: int,
    tls: tuple[str, str] | None = None,
    client_ca: str | None = None,
) -> HttpRunning:
    """:func:`bind` then :func:`serve_http`."""
    return await serve_http(app, bind(host, port), tls, client_ca)
