"""What the MCP auth proxy adds to a ``tools/call``: through the proxy versus direct.

What it measures, in one run, over loopback (127.0.0.1) only, with three server
processes (multiprocessing, spawn):

* the **upstream**: an MCP server written with the official SDK (``MCPServer``), one tool
  ``search``, Streamable HTTP, stateless with JSON answers;
* the **PDP and issuer**: ``tessera serve``'s parts on a SQLite store: the gRPC decision
  service on the shipped policies with the directory and the audit trail (async), and the
  issuer's HTTP service (for the JWKS). It mints one ES256 access token for an agent
  whose audience is the proxy's resource URI;
* the **proxy**: ``pep.mcp_proxy`` as ``tessera mcp-proxy`` runs it (uvloop, httptools)
  in front of the upstream, with a static upstream credential and ``decisions = "local"``:
  every call decided in the proxy's process on the shipped policies and the PDP's store,
  and audited there; and a second proxy, the same but asking the PDP over gRPC for every
  call (``decisions = "pdp"``), for comparison.

The client, in this process, sends the same stateless (2026-07-28) ``tools/call`` over a
kept-alive ``httpx`` connection, one call at a time, in rounds of direct, proxied and
proxied-via-the-PDP calls so all see the same machine state. The result is the median (and
p99) of each and the **added median latency**, proxied minus direct, and the same via the
PDP, with each proxied median as a ratio of the direct one. Targets: local decisions add at
most 0.6 ms, decisions over gRPC at most 1.5 ms. Each proxied
call is checked to carry a decision id and the tool's answer. Client and servers share
the machine's cores; the result records the one-minute load average at the end, since on
a busy machine every hop waits longer for a core.

    python benchmarks/mcp_proxy.py [--json] [--quick] [--strict]
"""

from __future__ import annotations

import os
import sys

# The project root first: no script here may stand in for one of Tessera's packages
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import asyncio
import multiprocessing as mp
import statistics
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import httpx

from benchmarks.engine import Target, benchmark_parser, finish

ROOT = Path(__file__).resolve().parents[1]
PUBLIC = "http://proxy.bench"
PATH = "/mcp"
# What the proxy may add to a tools/call's median: deciding in its own process, and
# asking the PDP over gRPC (the decision-path redesign's targets).
LOCAL_TARGET_US = 600.0
PDP_TARGET_US = 1500.0
UPSTREAM_TOKEN = "bench-upstream-credential"


def _upstream(pipe: Connection) -> None:
    from mcp.server.mcpserver import MCPServer

    from issuer.app import bind, serve_http

    server = MCPServer("bench")

    @server.tool(name="search")
    def search(query: str) -> str:
        return f"found {query}"

    app = server.streamable_http_app(
        streamable_http_path=PATH, stateless_http=True, json_response=True
    )

    async def main() -> None:
        served = await serve_http(app, bind("127.0.0.1", 0), lifespan=True)
        pipe.send(served.port)
        await _answer_until_stopped(pipe)
        await served.stop()

    asyncio.run(main())


async def _answer_until_stopped(pipe: Connection) -> None:
    """Report this process's CPU seconds whenever asked, until told to stop."""
    loop = asyncio.get_running_loop()
    while await loop.run_in_executor(None, pipe.recv) == "cpu":
        pipe.send(time.process_time())


def _pdp(pipe: Connection, folder: str) -> None:
    from issuer.app import bind, issuer_app, serve_http
    from issuer.keys import KeyRing
    from issuer.models import AGENT_EXTENSION, AGENT_SCHEMA
    from issuer.oauth.endpoints import AuthorizationServer
    from issuer.oauth.tokens import TokenMinter
    from issuer.scim import BootstrapToken
    from issuer.store import open_store
    from pdp.audit.writer import AuditWriter
    from pdp.directory import Directory
    from pdp.engine import Engine
    from pdp.loader import load_directory
    from pdp.server import start

    store = open_store(f"sqlite:///{folder}/bench.db")
    document = {
        "schemas": [AGENT_SCHEMA, AGENT_EXTENSION],
        "name": "bench-agent",
        AGENT_EXTENSION: {"owner": "ops", "riskLevel": "low", "status": "active"},
    }
    agent = store.create("Agent", document, unique={"name": "bench-agent"}, actor="admin").id
    directory = Directory(store)
    directory.start()
    audit = AuditWriter(store)

    async def main() -> None:
        engine = Engine(load_directory(ROOT / "policies").bundle)
        running = await start(
            engine, "127.0.0.1", 0, cache_size=0, directory=directory, audit=audit
        )
        sock = bind("127.0.0.1", 0)
        issuer = f"http://127.0.0.1:{sock.getsockname()[1]}"
        keys = KeyRing(store)
        admin = BootstrapToken("bench-admin-token-0123456789")
        oauth = AuthorizationServer(store, keys, issuer, admin)
        http = await serve_http(issuer_app(store, admin, oauth), sock)
        minter = TokenMinter(keys, issuer, lifetime=3600)
        token = minter.mint(
            subject=agent,
            client_id="bench",
            audience=[f"{PUBLIC}{PATH}"],
            scope=["mcp:tools"],
            extra={"agent_id": agent, "agent_type": "interactive"},
        ).token
        for _ in range(500):  # the directory snapshot has the agent
            if directory.agent(agent) is not None:
                break
            await asyncio.sleep(0.01)
        pipe.send((running.port, issuer, token))
        await _answer_until_stopped(pipe)
        await http.stop()
        await running.stop(0)

    asyncio.run(main())
    audit.close()
    directory.stop()
    store.close()


def _proxy(pipe: Connection, issuer: str, pdp: int, upstream: str, store: str) -> None:
    import uvloop

    from issuer.app import bind, serve_http
    from pep.mcp_proxy.app import Proxy
    from pep.mcp_proxy.config import ProxyConfig, Upstream

    config = ProxyConfig(
        public_url=PUBLIC,
        issuer=issuer,
        pdp=f"127.0.0.1:{pdp}",
        upstreams=(
            Upstream(
                name="bench",
                path=PATH,
                url=upstream,
                scopes=("mcp:tools",),
                credential="static",
                token=UPSTREAM_TOKEN,
            ),
        ),
        decisions="local" if store else "pdp",
        policies=str(ROOT / "policies"),
        store=store,
    )

    async def main() -> None:
        served = await serve_http(
            Proxy(config).app(), bind("127.0.0.1", 0), lifespan=True, httptools=True
        )
        pipe.send(served.port)
        await _answer_until_stopped(pipe)
        await served.stop()

    uvloop.run(main())  # as tessera mcp-proxy runs


def _cpu(pipes: list[Connection]) -> list[float]:
    for pipe in pipes:
        pipe.send("cpu")
    return [pipe.recv() for pipe in pipes]


def _spawn(target: Any, *args: Any) -> tuple[Any, Connection]:
    context = mp.get_context("spawn")
    mine, theirs = context.Pipe()
    process = context.Process(target=target, args=(theirs, *args), daemon=True)
    process.start()
    return process, mine


def _body() -> dict[str, Any]:
    meta = {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
    }
    return {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "search", "arguments": {"query": "bench"}, "_meta": meta},
    }


def measure(calls: int, warmup: int) -> dict[str, Any]:
    from mcp_types import CLIENT_CAPABILITIES_META_KEY, PROTOCOL_VERSION_META_KEY

    body = _body()
    body["params"]["_meta"] = {
        PROTOCOL_VERSION_META_KEY: "2026-07-28",
        CLIENT_CAPABILITIES_META_KEY: {},
    }
    with tempfile.TemporaryDirectory() as folder:
        up, up_pipe = _spawn(_upstream)
        pdp, pdp_pipe = _spawn(_pdp, folder)
        up_port = up_pipe.recv()
        pdp_port, issuer, token = pdp_pipe.recv()
        upstream = f"http://127.0.0.1:{up_port}{PATH}"
        store = f"sqlite:///{folder}/bench.db"
        proxy, proxy_pipe = _spawn(_proxy, issuer, pdp_port, upstream, store)
        remote, remote_pipe = _spawn(_proxy, issuer, pdp_port, upstream, "")
        proxy_port = proxy_pipe.recv()
        remote_port = remote_pipe.recv()
        headers = {
            "Accept": "application/json, text/event-stream",
            "Content-Type": "application/json",
            "MCP-Protocol-Version": "2026-07-28",
            "Mcp-Method": "tools/call",
            "Mcp-Name": "search",
        }
        direct_headers = {**headers, "Authorization": f"Bearer {UPSTREAM_TOKEN}"}
        proxied_headers = {**headers, "Authorization": f"Bearer {token}"}
        via = f"http://127.0.0.1:{proxy_port}{PATH}"
        via_pdp = f"http://127.0.0.1:{remote_port}{PATH}"
        content = httpx.Request("POST", via, json=body).content
        direct_times: list[float] = []
        proxied_times: list[float] = []
        pdp_times: list[float] = []
        try:
            with (
                httpx.Client(timeout=10.0) as direct,
                httpx.Client(timeout=10.0) as proxied,
                httpx.Client(timeout=10.0) as through_pdp,
            ):
                pipes = [up_pipe, pdp_pipe, proxy_pipe, remote_pipe]
                for index in range(warmup + calls):
                    if index == warmup:
                        cpu_before = _cpu(pipes)
                    t0 = time.perf_counter()
                    a = direct.post(upstream, content=content, headers=direct_headers)
                    t1 = time.perf_counter()
                    b = proxied.post(via, content=content, headers=proxied_headers)
                    t2 = time.perf_counter()
                    c = through_pdp.post(via_pdp, content=content, headers=proxied_headers)
                    t3 = time.perf_counter()
                    if index == 0:
                        _check(a, b)
                        _check(a, c)
                    if index >= warmup:
                        direct_times.append((t1 - t0) * 1e6)
                        proxied_times.append((t2 - t1) * 1e6)
                        pdp_times.append((t3 - t2) * 1e6)
                cpu_after = _cpu(pipes)
        finally:
            for pipe in (remote_pipe, proxy_pipe, pdp_pipe, up_pipe):
                pipe.send("stop")
            for process in (remote, proxy, pdp, up):
                process.join(timeout=20)
                if process.is_alive():
                    process.kill()
    direct_median = statistics.median(direct_times)
    load = os.getloadavg()[0]
    proxied_median = statistics.median(proxied_times)
    pdp_median = statistics.median(pdp_times)
    return {
        "calls": calls,
        "cores": os.cpu_count(),
        "load_average_1m": round(load, 2),
        "direct_median_us": round(direct_median, 1),
        "direct_p99_us": round(_p99(direct_times), 1),
        "proxied_median_us": round(proxied_median, 1),
        "proxied_p99_us": round(_p99(proxied_times), 1),
        "added_median_us": round(proxied_median - direct_median, 1),
        "proxied_ratio": round(proxied_median / direct_median, 2),
        "pdp_median_us": round(pdp_median, 1),
        "pdp_p99_us": round(_p99(pdp_times), 1),
        "pdp_added_median_us": round(pdp_median - direct_median, 1),
        "pdp_ratio": round(pdp_median / direct_median, 2),
        # CPU µs per call of each server: the upstream serves three calls a round (direct,
        # proxied, proxied via the PDP); the PDP decides one (the local proxy decides its own)
        "cpu_us_per_call": {
            name: round((after - before) / calls * 1e6 / (3 if name == "upstream" else 1), 1)
            for name, before, after in zip(
                ("upstream", "pdp", "proxy", "proxy_via_pdp"), cpu_before, cpu_after, strict=True
            )
        },
    }


def _check(direct: httpx.Response, proxied: httpx.Response) -> None:
    for response in (direct, proxied):
        if response.status_code != 200 or "found bench" not in response.text:
            raise SystemExit(f"the call failed: {response.status_code} {response.text[:300]}")
    if not proxied.headers.get("tessera-decision-id"):
        raise SystemExit("the proxied call carries no decision id")


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def report(result: dict[str, Any]) -> None:
    print(
        f"tools/call, {result['calls']} calls each, sequential, loopback "
        f"({result['cores']} cores, load average {result['load_average_1m']} at the end)"
    )
    for name in ("direct", "proxied", "pdp"):
        median, p99 = result[f"{name}_median_us"], result[f"{name}_p99_us"]
        label = {"pdp": "via PDP"}.get(name, name)
        ratio = f"   {result[f'{name}_ratio']:.2f}× direct" if name != "direct" else ""
        print(f"  {label:<8} median {median:>8.1f} µs   p99 {p99:>8.1f} µs{ratio}")
    cpu = ", ".join(f"{k} {v:.0f}" for k, v in result["cpu_us_per_call"].items())
    print(f"  server CPU µs per call: {cpu}")
    for target in result["targets"]:
        verdict, what, value = target["verdict"], target["name"], target["value"]
        print(f"  {verdict}: {what} {value} µs (target {target['limit']})")


def main() -> None:
    parser = benchmark_parser(__doc__.splitlines()[0], "300 calls instead of 3000")
    args = parser.parse_args()
    calls, warmup = (300, 100) if args.quick else (3000, 300)
    result = measure(calls, warmup)
    local, pdp = result["added_median_us"], result["pdp_added_median_us"]
    targets = [
        Target(
            "added median latency per tools/call, local decisions",
            f"<= {LOCAL_TARGET_US:g} µs",
            local,
            local <= LOCAL_TARGET_US,
        ),
        Target(
            "added median latency per tools/call, decisions over gRPC",
            f"<= {PDP_TARGET_US:g} µs",
            pdp,
            pdp <= PDP_TARGET_US,
        ),
    ]
    result["targets"] = [{**t.to_json(1), "verdict": t.verdict} for t in targets]
    finish(result, targets, args, report)


if __name__ == "__main__":
    main()
