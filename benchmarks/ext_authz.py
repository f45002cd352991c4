"""What Envoy's ext_authz front door costs over ``Authorize`` for the same decision.

What it measures, in one run, over loopback (127.0.0.1) only:

* one server process (multiprocessing, spawn): ``pdp.server.start`` with the shipped
  policies, ``cache_size=0`` (every call runs the engine), a directory loaded from a fresh
  SQLite store holding one agent ("reader", risk low), no audit trail, and the ext_authz
  gateway (``pdp.doors.ext_authz.gateway_for``) with the route
  ``POST /tools/{name} tool.call tool:{name}``. The directory is loaded once (no change
  follower beside it, so no background work in either phase);
* **Authorize**: the ``AuthorizeRequest`` the gateway request stands for: the agent's id,
  ``tool.call`` on ``tool:search``, ``context.ip`` = the client address;
* **Check**: a ``CheckRequest`` as Envoy's filter sends it for ``POST /tools/search``: source
  and destination addresses, the request id, method, path, host, scheme, protocol and a
  dozen headers, among them ``authorization: Bearer <ES256 access token>`` minted by the
  store's key ring for the agent. Its answer is an ``OkHttpResponse`` with the decision id
  and agent id headers and the ``authorization`` header stripped.

Both are parsed once before timing and must be allowed by ``agents.read_only``. The client
sends pre-serialized bytes and takes bytes back, so the difference is the server's. The
phases alternate, Authorize then Check, over several rounds after a warm-up of each (the
token is verified once, on the first Check; from then on the gateway remembers it and
reads its revocation again once a second). The server reports its own CPU time
(``time.process_time``, all threads) over a pipe before and after each phase.

* sequential: median and p99 latency from a sync ``grpc`` client, one call at a time, and
  server CPU µs per call (all rounds together), and the Check / Authorize CPU ratio of each
  round, whose median is the target's value (robust to load beside the benchmark, which
  comes and goes between rounds);
* throughput with 8 calls in flight from a ``grpc.aio`` client, and server CPU per call.

Target: Check server CPU per call ≤ 1.10× Authorize's (sequential, median of the rounds'
ratios, same run).

    python benchmarks/ext_authz.py [--json] [--quick] [--strict]
"""

from __future__ import annotations

import os
import sys

# The project root first: no script here may stand in for one of Tessera's packages
# (sibling scripts stay importable from this directory, next on the path).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import asyncio
import contextlib
import multiprocessing as mp
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import grpc
from engine import (  # a sibling script
    Target,
    benchmark_parser,
    environment,
    finish,
    print_targets,
    ratio,
)

from pdp.serve.proto import authorizer_pb2 as pb

ROOT = Path(__file__).resolve().parent.parent
POLICIES = ROOT / "policies"
HOST = "127.0.0.1"
ISSUER = "http://127.0.0.1:8080"
API = "https://api.example.com"
ROUTES = "POST /tools/{name} tool.call tool:{name}"
CLIENT_IP = "10.1.2.3"

AUTHORIZE_METHOD = "/tessera.v1.Authorizer/Authorize"
CHECK_METHOD = "/envoy.service.auth.v3.Authorization/Check"
IN_FLIGHT = 8
START_TIMEOUT_S = 30.0
CALL_TIMEOUT_S = 10.0
CPU_RATIO_LIMIT = 1.10


@dataclass(frozen=True)
class Budget:
    warmup: int
    sequential: int  # calls per method, over all rounds
    concurrent: int  # calls per method in the throughput phase
    rounds: int


FULL = Budget(warmup=300, sequential=6_000, concurrent=6_000, rounds=20)
QUICK = Budget(warmup=50, sequential=600, concurrent=600, rounds=4)


# ------------------------------------------------------------------ the store and requests


def prepare(directory: Path) -> tuple[str, str, str]:
    """A SQLite store with one agent and a signing key: (store URL, agent id, token)."""
    from issuer.keys import KeyRing
    from issuer.models import AGENT_EXTENSION, AGENT_SCHEMA
    from issuer.oauth.tokens import TokenMinter
    from issuer.store import open_store

    url = f"sqlite:///{directory / 'tessera.db'}"
    store = open_store(url)
    try:
        document = {
            "schemas": [AGENT_SCHEMA, AGENT_EXTENSION],
            "name": "reader",
            AGENT_EXTENSION: {
                "owner": "ops",
                "riskLevel": "low",
                "agentType": "background",
                "status": "active",
            },
        }
        agent = store.create("Agent", document, unique={"name": "reader"}, actor="bench").id
        minter = TokenMinter(KeyRing(store, "ES256"), ISSUER, lifetime=3600)
        extra = {"agent_id": agent, "agent_type": "background"}
        token = minter.mint(
            subject=agent, client_id="bench", audience=[API], scope=[], extra=extra
        ).token
    finally:
        store.close()
    return url, agent, token


def authorize_request(agent: str) -> pb.AuthorizeRequest:
    return pb.AuthorizeRequest(
        agent=pb.Agent(id=agent),
        action="tool.call",
        resource=pb.Resource(type="tool", id="search"),
        context={"ip": pb.Value(ip=CLIENT_IP)},
    )


def check_request(token: str) -> Any:
    from envoy.service.auth.v3 import external_auth_pb2 as auth

    request = auth.CheckRequest()
    attributes = request.attributes
    attributes.source.address.socket_address.address = CLIENT_IP
    attributes.source.address.socket_address.port_value = 51_234
    attributes.destination.address.socket_address.address = "10.0.0.5"
    attributes.destination.address.socket_address.port_value = 8443
    http = attributes.request.http
    http.id = "11797924283358812845"
    http.method, http.path, http.host = "POST", "/tools/search", "api.example.com"
    http.scheme, http.protocol = "https", "HTTP/1.1"
    http.headers.update(
        {
            ":authority": "api.example.com",
            ":method": "POST",
            ":path": "/tools/search",
            ":scheme": "https",
            "accept": "application/json",
            "authorization": f"Bearer {token}",
            "content-length": "42",
            "content-type": "application/json",
            "user-agent": "agent-runtime/1.4",
            "x-envoy-expected-rq-timeout-ms": "15000",
            "x-forwarded-proto": "https",
            "x-request-id": "c2b4d2a0-7a8c-4b7b-9d55-1d1f1ad1e0aa",
        }
    )
    return request


# ------------------------------------------------------------------ the server process


async def _start(url: str) -> Any:
    from issuer.keys import KeyRing
    from issuer.store import open_store
    from pdp.directory import Directory
    from pdp.doors.ext_authz import gateway_for
    from pdp.engine import Engine
    from pdp.loader import load_directory
    from pdp.server import start

    store = open_store(url)
    directory = Directory(store)
    directory.load()
    gateway = gateway_for(store, KeyRing(store, "ES256"), ISSUER, API, ROUTES, "authorization")
    engine = Engine(load_directory(POLICIES).bundle)
    return await start(engine, HOST, 0, cache_size=0, directory=directory, gateway=gateway)


def serve(url: str, ports: Any, control: Connection) -> None:
    """The server process: serve on an event loop thread; answer CPU-time requests."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        running = asyncio.run_coroutine_threadsafe(_start(url), loop).result(START_TIMEOUT_S)
    except Exception as exc:  # report, so the parent does not wait for a port forever
        ports.put((None, repr(exc)))
        return
    ports.put((running.port, None))
    try:
        while control.poll(600):  # bounded: a parent that went away leaves within minutes
            if control.recv() != "cpu":
                break
            control.send(time.process_time())
    except EOFError:
        pass
    finally:
        asyncio.run_coroutine_threadsafe(running.stop(0), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)


class Server:
    def __init__(self, url: str) -> None:
        ctx = mp.get_context("spawn")
        self.ports = ctx.Queue()
        self.control, child = ctx.Pipe()
        self.process = ctx.Process(target=serve, args=(url, self.ports, child), daemon=True)
        self.process.start()
        port, error = self.ports.get(timeout=START_TIMEOUT_S)
        if port is None:
            raise RuntimeError(f"the server failed to start: {error}")
        self.port: int = port

    def cpu(self) -> float:
        self.control.send("cpu")
        if not self.control.poll(10):
            raise RuntimeError("the server did not report its CPU time")
        value: float = self.control.recv()
        return value

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.control.send("stop")
        self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout=5)
        self.control.close()
        self.ports.close()
        self.ports.join_thread()


# ------------------------------------------------------------------ measuring


def check_answers(channel: grpc.Channel, authorize: bytes, check: bytes) -> None:
    from envoy.service.auth.v3 import external_auth_pb2 as auth

    answer = pb.AuthorizeResponse.FromString(
        channel.unary_unary(AUTHORIZE_METHOD)(authorize, timeout=CALL_TIMEOUT_S)
    )
    if not answer.allow or list(answer.decided_by) != ["agents.read_only"]:
        raise RuntimeError(f"unexpected Authorize answer: {answer}")
    checked = auth.CheckResponse.FromString(
        channel.unary_unary(CHECK_METHOD)(check, timeout=CALL_TIMEOUT_S)
    )
    if checked.status.code != 0 or not checked.HasField("ok_response"):
        raise RuntimeError(f"unexpected Check answer: {checked}")


def sequential(call: Any, payload: bytes, n: int) -> list[float]:
    """Per-call latencies in µs, one call at a time."""
    out = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        call(payload, timeout=CALL_TIMEOUT_S)
        out.append((time.perf_counter_ns() - t0) / 1_000)
    return out


async def _throughput(port: int, method: str, payload: bytes, total: int) -> float:
    async with grpc.aio.insecure_channel(f"{HOST}:{port}") as channel:
        call = channel.unary_unary(method)
        gate = asyncio.Semaphore(IN_FLIGHT)

        async def one() -> None:
            async with gate:
                await call(payload, timeout=CALL_TIMEOUT_S)

        await asyncio.gather(*(one() for _ in range(IN_FLIGHT * 4)))
        t0 = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(total)))
        return total / (time.perf_counter() - t0)


def run(budget: Budget) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="tessera-bench-") as tmp:
        url, agent, token = prepare(Path(tmp))
        payloads = {
            "authorize": authorize_request(agent).SerializeToString(),
            "check": check_request(token).SerializeToString(),
        }
        methods = {"authorize": AUTHORIZE_METHOD, "check": CHECK_METHOD}
        server = Server(url)
        try:
            latencies: dict[str, list[float]] = {name: [] for name in methods}
            cpu: dict[str, float] = dict.fromkeys(methods, 0.0)
            with grpc.insecure_channel(f"{HOST}:{server.port}") as channel:
                check_answers(channel, payloads["authorize"], payloads["check"])
                calls = {name: channel.unary_unary(m) for name, m in methods.items()}
                for name in methods:
                    sequential(calls[name], payloads[name], budget.warmup)
                per_round = budget.sequential // budget.rounds
                paired = []  # Check over Authorize CPU per call, round by round
                for _ in range(budget.rounds):
                    spent = {}
                    for name in methods:
                        before = server.cpu()
                        latencies[name] += sequential(calls[name], payloads[name], per_round)
                        spent[name] = server.cpu() - before
                        cpu[name] += spent[name]
                    if spent["authorize"] > 0:
                        paired.append(spent["check"] / spent["authorize"])
            result: dict[str, Any] = {
                "payload_bytes": {name: len(p) for name, p in payloads.items()},
                "rounds_cpu_ratio": {
                    "median": round(statistics.median(paired), 3) if paired else None,
                    "min": round(min(paired), 3) if paired else None,
                    "max": round(max(paired), 3) if paired else None,
                },
            }
            for name in methods:
                ordered = sorted(latencies[name])
                result[name] = {
                    "sequential": {
                        "calls": len(ordered),
                        "median_us": round(statistics.median(ordered), 1),
                        "p99_us": round(ordered[int(len(ordered) * 0.99) - 1], 1),
                        "server_cpu_us_per_call": round(cpu[name] * 1e6 / len(ordered), 1),
                    }
                }
            for name in methods:
                before = server.cpu()
                rate = asyncio.run(
                    _throughput(server.port, methods[name], payloads[name], budget.concurrent)
                )
                spent = server.cpu() - before
                result[name][f"in_flight_{IN_FLIGHT}"] = {
                    "calls": budget.concurrent,
                    "calls_per_s": round(rate),
                    "server_cpu_us_per_call": round(
                        spent * 1e6 / (budget.concurrent + IN_FLIGHT * 4), 1
                    ),
                }
        finally:
            server.close()
    return result


def evaluate(measured: dict[str, Any]) -> tuple[dict[str, float | None], list[Target]]:
    a, c = measured["authorize"], measured["check"]
    key = f"in_flight_{IN_FLIGHT}"
    ratios = {
        "cpu_per_call_check_over_authorize": ratio(
            c["sequential"]["server_cpu_us_per_call"], a["sequential"]["server_cpu_us_per_call"]
        ),
        "latency_check_over_authorize": ratio(
            c["sequential"]["median_us"], a["sequential"]["median_us"]
        ),
        f"cpu_per_call_{IN_FLIGHT}_in_flight_check_over_authorize": ratio(
            c[key]["server_cpu_us_per_call"], a[key]["server_cpu_us_per_call"]
        ),
        f"throughput_{IN_FLIGHT}_in_flight_check_over_authorize": ratio(
            c[key]["calls_per_s"], a[key]["calls_per_s"]
        ),
    }
    ratios = {name: None if r is None else round(r, 3) for name, r in ratios.items()}
    value = measured["rounds_cpu_ratio"]["median"]
    targets = [
        Target(
            "ext_authz Check server CPU per call / Authorize (sequential, median of rounds)",
            f"<= {CPU_RATIO_LIMIT:.2f}x",
            value,
            None if value is None else value <= CPU_RATIO_LIMIT,
            "no round with CPU time on both sides" if value is None else None,
        )
    ]
    return ratios, targets


def print_report(result: dict[str, Any]) -> None:
    env = result["environment"]
    a, c = result["authorize"], result["check"]
    print(
        f"ext_authz Check vs Authorize, same decision (Python {env['python']}, "
        f"{env['machine']}, grpcio {env['grpcio']}{', quick' if env['quick'] else ''})"
    )
    sizes = result["payload_bytes"]
    print(
        f"requests: Authorize {sizes['authorize']} bytes, Check {sizes['check']} bytes; "
        f"one server process on {HOST}, cache off, no audit\n"
    )
    key = f"in_flight_{IN_FLIGHT}"
    rows = [
        ("sequential median µs", "sequential", "median_us"),
        ("sequential p99 µs", "sequential", "p99_us"),
        ("server CPU µs/call (seq)", "sequential", "server_cpu_us_per_call"),
        (f"calls/s, {IN_FLIGHT} in flight", key, "calls_per_s"),
        (f"server CPU µs/call, {IN_FLIGHT} in flight", key, "server_cpu_us_per_call"),
    ]
    header = f"{'':34} {'Authorize':>10} {'Check':>10} {'ratio':>7}"
    print(header)
    print("-" * len(header))
    for label, group, field in rows:
        x, y = a[group][field], c[group][field]
        r = ratio(y, x)
        print(f"{label:34} {x:>10,} {y:>10,} {'' if r is None else f'{r:.2f}x':>7}")
    rounds = result["rounds_cpu_ratio"]
    print(
        f"\nserver CPU Check / Authorize per round ({result['method']['rounds']} rounds): "
        f"median {rounds['median']}x, min {rounds['min']}x, max {rounds['max']}x"
    )
    print_targets(result["_targets"], result["seconds"])


def main() -> None:
    parser = benchmark_parser(
        "Time Envoy ext_authz Check against Authorize for the same decision, in one "
        "server process: server CPU per call, latency, throughput with 8 calls in flight.",
        quick="a short smoke run (noisy numbers)",
    )
    args = parser.parse_args()
    budget = QUICK if args.quick else FULL
    started = time.perf_counter()
    measured = run(budget)
    ratios, targets = evaluate(measured)
    result: dict[str, Any] = {
        "benchmark": "ext_authz",
        "environment": environment(args.quick, grpcio=grpc.__version__),
        "method": {
            "host": HOST,
            "server": "one process (multiprocessing spawn), both methods",
            "pdp_cache_size": 0,
            "audit": "off",
            "directory": "SQLite, loaded once, one agent",
            "routes": ROUTES,
            "warmup_calls": budget.warmup,
            "sequential_calls": budget.sequential,
            "rounds": budget.rounds,
            "concurrent_calls": budget.concurrent,
            "in_flight": IN_FLIGHT,
            "server_cpu": "time.process_time in the server process (all threads)",
        },
        **measured,
        "ratios": ratios,
        "targets": [t.to_json(3) for t in targets],
        "seconds": round(time.perf_counter() - started, 1),
    }
    finish(result, targets, args, lambda r: print_report({**r, "_targets": targets}))


if __name__ == "__main__":
    main()
