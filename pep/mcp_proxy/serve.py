"""Running the proxy (or any ASGI application with a lifespan) with uvicorn."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from dataclasses import dataclass

import uvicorn
from starlette.types import ASGIApp

from issuer.app import bind
from pep.mcp_proxy.app import Proxy
from pep.mcp_proxy.config import ProxyConfig

STARTUP_CHECKS = 1000  # at most 10 s


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self):  # type: ignore[no-untyped-def]
        yield  # signals belong to whoever runs the loop


@dataclass
class Served:
    """A started server: its port, and how to stop it."""

    server: uvicorn.Server
    task: asyncio.Task[None]
    port: int

    async def stop(self) -> None:
        self.server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


async def serve_app(app: ASGIApp, sock: socket.socket) -> Served:
    """Serve ``app`` (its lifespan run first) on a bound socket in this event loop."""
    config = uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False)
    server = _Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    for _ in range(STARTUP_CHECKS):
        if server.started or task.done():
            break
        await asyncio.sleep(0.01)
    if not server.started:
        server.should_exit = True
        sock.close()
        raise OSError(f"cannot serve HTTP on {sock.getsockname()}")
    return Served(server, task, sock.getsockname()[1])


async def proxy_forever(config: ProxyConfig) -> None:
    """Serve the proxy until SIGINT or SIGTERM."""
    sock = bind(config.host, config.port)
    served = await serve_app(Proxy(config).app(), sock)
    print(
        f"tessera: MCP proxy on http://{config.host}:{served.port} for {config.public_url}",
        flush=True,
    )
    for upstream in config.upstreams:
        target = upstream.url or " ".join(upstream.command)
        print(f"tessera:   {upstream.path} -> {target} ({upstream.name})", flush=True)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    await served.stop()
