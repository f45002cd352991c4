"""The issuer's HTTP side: one ASGI application and the uvicorn server that runs it.

``tessera serve`` runs it beside the gRPC decision service, in the same event loop:
the SCIM service at ``/scim/v2`` (and, as they arrive, the OAuth endpoints).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import uvicorn
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.types import ASGIApp

from issuer.scim import Authenticator, scim_app
from issuer.store import Store

SCIM_PATH = "/scim/v2"


def issuer_app(store: Store, authenticate: Authenticator) -> Starlette:
    """Every HTTP endpoint of the issuer, under one application."""
    return Starlette(routes=[Mount(SCIM_PATH, app=scim_app(store, authenticate))])


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


async def start_http(app: ASGIApp, host: str, port: int) -> HttpRunning:
    """Serve ``app`` on ``host:port`` (0 picks a free port) in the running event loop."""
    config = uvicorn.Config(
        app, host=host, port=port, log_level="warning", lifespan="off", access_log=False
    )
    server = _Server(config)
    task = asyncio.create_task(server.serve())
    for _ in range(500):  # at most 5 s
        if server.started or task.done():
            break
        await asyncio.sleep(0.01)
    if task.done() or not server.started:
        server.should_exit = True
        raise OSError(f"cannot serve HTTP on {host}:{port}")
    sockets = [sock for srv in server.servers for sock in srv.sockets]
    return HttpRunning(server, task, sockets[0].getsockname()[1])
