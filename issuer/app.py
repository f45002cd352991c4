"""The issuer's HTTP side: one ASGI application and the uvicorn server that runs it.

``tessera serve`` runs it beside the gRPC decision service, in the same event loop:
the SCIM service at ``/scim/v2`` (and, as they arrive, the OAuth endpoints).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from dataclasses import dataclass

import uvicorn
from starlette.applications import Starlette
from starlette.routing import BaseRoute, Mount
from starlette.types import ASGIApp

from issuer.oauth.endpoints import AuthorizationServer
from issuer.scim import Authenticator, scim_app
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
    return Starlette(routes=routes)


class _Server(uvicorn.Server):
    """uvicorn, leaving signals to the process that embeds it (``tessera serve``)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass
class HttpRunning:
    """A started HTTP server: its port, and how to stop it."""

    server: uvicorn.Server
    task: asyncio.Task[None]
    port: int

    async def stop(self) -> None:
        self.server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


def bind(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (0 picks a free port), or an OSError naming it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted connections inherit it: without, small responses wait on delayed ACKs.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot serve HTTP on {host}:{port}: {exc.strerror}") from None
    return sock


async def serve_http(
    app: ASGIApp, sock: socket.socket, tls: tuple[str, str] | None = None
) -> HttpRunning:
    """Serve ``app`` on a bound socket in the running event loop; with ``tls``
    (certificate chain file, key file), serve HTTPS."""
    certfile, keyfile = tls if tls is not None else (None, None)
    config = uvicorn.Config(
        app,
        log_level="warning",
        lifespan="off",
        access_log=False,
        ssl_certfile=certfile,
        ssl_keyfile=keyfile,
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
    app: ASGIApp, host: str, port: int, tls: tuple[str, str] | None = None
) -> HttpRunning:
    """:func:`bind` then :func:`serve_http`."""
    return await serve_http(app, bind(host, port), tls)
