"""Running the proxy with uvicorn until SIGINT or SIGTERM."""

from __future__ import annotations

import asyncio

from issuer.app import bind, on_stop_signals, serve_http
from issuer.netloc import hostport
from pdp.loader import Loaded
from pep.mcp_proxy.app import Proxy
from pep.mcp_proxy.config import ProxyConfig


async def proxy_forever(config: ProxyConfig, loaded: Loaded | None = None) -> None:
    """Serve the proxy until SIGINT or SIGTERM; with local decisions, on ``loaded`` (the
    policies as the command loaded them), else on what ``config.policies`` holds."""
    sock = bind(config.host, config.port)
    proxy = Proxy(config, loaded)
    stopping = asyncio.Event()
    on_stop_signals(stopping.set)  # before serving: none is missed
    served = await serve_http(proxy.app(), sock, lifespan=True, httptools=True)
    print(
        f"tessera: MCP proxy on http://{hostport(config.host, served.port)} "
        f"for {config.public_url}",
        flush=True,
    )
    metrics = None
    if config.metrics_port >= 0:
        try:
            metrics = proxy.metrics.serve(config.metrics_port, config.host)
        except OSError:
            await served.stop()
            raise
        where = hostport(config.host, metrics.server_port)
        print(f"tessera: metrics on http://{where}/metrics", flush=True)
    for upstream in config.upstreams:
        target = upstream.url or " ".join(upstream.command)
        print(f"tessera:   {upstream.path} -> {target} ({upstream.name})", flush=True)
    await stopping.wait()
    await served.stop()
    if metrics is not None:
        metrics.shutdown()
        metrics.server_close()
