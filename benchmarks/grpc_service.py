"""What the gRPC service costs over gRPC itself, on both ends of an ``Authorize`` call.

It answers the decision path's targets in one run, over loopback (127.0.0.1) only:

* **server**: the PDP's CPU per ``Authorize`` over a bare echo server's CPU per call, with
  one caller (one call at a time) and with 32 concurrent callers: ≤ 1.15× at both;
* **client**: the CPU per call of the PEP client, ``pep.client.Client.authorize(Query(...))``,
  over a bare generated stub call asking the same question: ≤ 1.20×;
* **batch**: ``AuthorizeBatch`` of 100 requests, sequential: ≥ 20,000 decisions/s.

The servers, each in its own process (multiprocessing, spawn):

* **echo**: a bare ``grpc.aio`` server with one generic unary method taking and returning
  raw bytes (no codegen, no protobuf parsing); it answers each call with the bytes it got,
  the serialized typical ``AuthorizeRequest``. This is the floor: what a gRPC call costs in
  Python with no work behind it. (The PDP's answer is longer than the request; both sizes
  are in the JSON. At ~100 bytes the difference costs gRPC nothing measurable.)
* **pdp**: ``pdp.server.start`` (in ``start_pdp``, the one place that starts it) with
  the shipped policies (``policies/``) and ``cache_size=0``, so every call parses the
  request, runs the engine and builds a response.

Each server reports its port through a queue and, on request over a pipe, its own CPU time
(``time.process_time``: the whole process, all threads), read before and after each phase.

The request: agent "helper" (status "active", risk low) calling tool "search", allowed by
``agents.read_only``; the run stops unless the PDP answers it so.

Method. The machine is shared and noisy (the same server's CPU per call moves by ±15% from
run to run, as other work comes and goes), so each compared quantity is measured in many
short rounds that alternate the two sides in ABBA order (echo, pdp, pdp, echo, echo,
pdp, ...), so that load coming and going moves both rounds of a pair alike. Each round
pair gives one ratio; the targets take the **median of the paired ratios**. The median
of each side's per-round values is reported too, with every round's value in the JSON.
After a warm-up of each side:

* **1 caller**: a sync ``grpc`` client in this process sends pre-serialized bytes and
  takes bytes back, one call at a time: server CPU µs per call and latency (median and
  p99 over the calls of all rounds);
* **32 in flight**: a ``grpc.aio`` client in this process, 32 tasks each making calls one
  after another (pre-serialized bytes): server CPU µs per call and calls/s (information
  only: client and servers share the machine's cores, so it is this setup's rate);
* **client CPU**: a process of its own (spawn) makes sequential calls to the PDP server
  in rounds alternating (a) ``Client(target).authorize(typical_query())`` and (b)
  ``AuthorizerStub(channel).Authorize(typical_request(), timeout=...)`` reading
  ``.allow``, each message built in the loop as a caller builds it, and measures its own
  ``time.process_time`` (all its threads) around each round. Nothing else runs in that
  process, and this process only waits on a pipe meanwhile. Both have their own channel,
  the same deadline and no cache. Before timing it checks that the query is the same
  message as the bare request and that both are allowed by ``agents.read_only``; a call
  that is not allowed during the rounds makes the row unmeasured;
* **batch**: ``AuthorizeBatch`` with 100 copies of the request, sequential, in rounds:
  decisions/s (median of the rounds) and server CPU per decision.

Caveats. Even the medians move with the load beside the run (at 1 caller, 1.24x to 1.43x
over three full runs at load averages of 2.5 to 8 on 2 cores; quick runs spread wider): a
value within about 0.1 of its limit is not a clear verdict, and runs compare best on the
same host at the same load. Calls/s and decisions/s are wall-clock rates of client and
servers sharing the cores, and move the most. The baseline: benchmarks/README.md.

With ``--auth`` the PDP asks each call for a PEP's bearer token (as it does beyond
loopback, or with ``caller_auth = "required"``): its callers are checked by
``pdp.doors.callers`` against a key ring in a temporary SQLite store, and every call of
every row, to the echo server too, carries the same ``authorization`` metadata (the
client rows: ``pep.client`` with ``Credentials(token=...)`` and the bare stub with the
metadata), so the ratios show what verifying the token costs on the hot path.

Targets print as PASS/FAIL. With ``--strict`` the exit status is 1 when a target fails or
could not be measured (the reason is printed); without it, 0.

    python benchmarks/grpc_service.py [--json] [--quick] [--strict] [--auth]
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
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import grpc
from engine import Target, benchmark_parser, environment, finish  # a sibling script

from pdp.lang.values import Risk
from pdp.serve.proto import authorizer_pb2 as pb
from pdp.serve.proto import authorizer_pb2_grpc as pb_grpc
from pep.client import Client, Credentials, Options, Query

ROOT = Path(__file__).resolve().parent.parent
POLICIES = ROOT / "policies"
HOST = "127.0.0.1"

ECHO_METHOD = "/bench.Echo/Call"
AUTHORIZE_METHOD = "/tessera.v1.Authorizer/Authorize"
BATCH_METHOD = "/tessera.v1.Authorizer/AuthorizeBatch"
DECIDED_BY = ["agents.read_only"]
BATCH_SIZE = 100
IN_FLIGHT = 32
START_TIMEOUT_S = 30.0
CALL_TIMEOUT_S = 10.0
CLIENT_TIMEOUT_S = 900.0  # the client process's whole run

SERVER_LIMIT = 1.15  # PDP CPU per Authorize / echo CPU per call, at 1 and at 32 callers
CLIENT_LIMIT = 1.20  # pep.client CPU per call / bare stub CPU per call
BATCH_LIMIT = 20_000  # AuthorizeBatch decisions/s
ISSUER = "http://127.0.0.1:8080"  # whose tokens the PDP takes with --auth
Metadata = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Budget:
    """How many calls each part makes; rounds are short so that load beside the run
    moves both sides of a round pair alike."""

    rounds: int  # rounds per side (= round pairs) for each compared quantity
    warmup: int  # calls per side before the rounds
    sequential: int  # calls per round, one caller
    concurrent: int  # calls per round, 32 in flight
    client: int  # calls per round, client CPU
    batch_rounds: int
    batches: int  # AuthorizeBatch calls per round


FULL = Budget(
    rounds=20, warmup=300, sequential=800, concurrent=3_200, client=800, batch_rounds=15, batches=10
)
QUICK = Budget(
    rounds=10, warmup=100, sequential=400, concurrent=1_600, client=400, batch_rounds=9, batches=10
)


def typical_request() -> pb.AuthorizeRequest:
    """The question every row asks: may "helper" (active, risk low) call tool "search"?"""
    return pb.AuthorizeRequest(
        agent=pb.Agent(
            id="helper",
            attributes={"status": pb.Value(string="active"), "risk": pb.Value(risk="low")},
        ),
        action="tool.call",
        resource=pb.Resource(type="tool", id="search"),
    )


def typical_query() -> Query:
    """The PEP client's form of ``typical_request()``."""
    return Query(
        agent="helper", tool="search", agent_attributes={"status": "active", "risk": Risk.low}
    )


def abba(rounds: int, a: str, b: str) -> list[str]:
    """The order of the phases: a, b, b, a, a, b, ... (``rounds`` of each side)."""
    return [side for i in range(rounds) for side in ((a, b) if i % 2 == 0 else (b, a))]


# ------------------------------------------------------------------ server processes


async def start_echo() -> tuple[grpc.aio.Server, int]:
    async def call(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return request

    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(
        "bench.Echo", {"Call": grpc.unary_unary_rpc_method_handler(call)}
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port(f"{HOST}:0")
    await server.start()
    return server, port


async def start_pdp(auth: bool = False) -> tuple[Any, int, str]:
    """The PDP as the benchmark measures it: the shipped policies, no decision cache; with
    ``auth``, asking its callers for a PEP's bearer token, and the token to send."""
    from pdp.doors.callers import OPEN
    from pdp.engine import Engine
    from pdp.loader import load_directory
    from pdp.server import start

    callers, token = pep_callers() if auth else (OPEN, "")
    engine = Engine(load_directory(POLICIES).bundle)
    running = await start(engine, HOST, 0, cache_size=0, callers=callers)
    return running, running.port, token


def pep_callers() -> tuple[Any, str]:
    """The checks of a port that asks for bearer tokens, over a key ring and a directory in
    a temporary SQLite store (removed when the process ends), and a PEP's token for them."""
    import atexit
    import shutil
    import tempfile

    from issuer.keys import KeyRing
    from issuer.models import AGENT_EXTENSION, AGENT_SCHEMA
    from issuer.oauth.tokens import TokenMinter
    from issuer.store import open_store
    from pdp.directory import Directory
    from pdp.doors.callers import DECIDE_SCOPE, callers_of

    where = tempfile.mkdtemp(prefix="tessera-bench-")
    atexit.register(shutil.rmtree, where, True)
    store = open_store(f"sqlite:///{where}/bench.db")
    document = {
        "schemas": [AGENT_SCHEMA, AGENT_EXTENSION],
        "name": "gateway",
        AGENT_EXTENSION: {"owner": "ops", "riskLevel": "low", "status": "active"},
    }
    pep = store.create("Agent", document, unique={"name": "gateway"}, actor="bench").id
    directory = Directory(store)
    directory.load()
    keys = KeyRing(store, "ES256")
    minted = TokenMinter(keys, ISSUER, lifetime=3600).mint(
        subject=pep,
        client_id="gateway",
        audience=[ISSUER],
        scope=[DECIDE_SCOPE],
        extra={"agent_id": pep, "agent_type": "background"},
    )
    return callers_of(keys, ISSUER, directory, peps=True), minted.token


def serve(kind: str, ports: Any, control: Connection, auth: bool = False) -> None:
    """A server process: serve on an event loop thread; answer CPU-time requests until stop."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    starter = start_echo() if kind == "echo" else start_pdp(auth)
    try:
        server, port, *token = asyncio.run_coroutine_threadsafe(starter, loop).result(
            START_TIMEOUT_S
        )
    except Exception as exc:  # report, so the parent does not wait for a port forever
        ports.put((kind, None, repr(exc), ""))
        return
    ports.put((kind, port, None, token[0] if token else ""))
    try:
        while control.poll(600):  # bounded: a parent that went away leaves within minutes
            if control.recv() != "cpu":
                break
            control.send(time.process_time())
    except EOFError:
        pass
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(0), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)


@dataclass
class Proc:
    kind: str
    process: Any
    control: Connection
    port: int = 0

    def cpu(self) -> float:
        self.control.send("cpu")
        if not self.control.poll(10):
            raise RuntimeError(f"{self.kind} server did not report its CPU time")
        value: float = self.control.recv()
        return value


def launch(ctx: Any, ports: Any, auth: bool = False) -> tuple[dict[str, Proc], Metadata]:
    """The two server processes, and the metadata every call sends (with ``auth``, the
    PEP's bearer token the PDP made)."""
    procs: dict[str, Proc] = {}
    for kind in ("echo", "pdp"):
        parent, child = ctx.Pipe()
        process = ctx.Process(target=serve, args=(kind, ports, child, auth), daemon=True)
        process.start()
        procs[kind] = Proc(kind, process, parent)
    metadata: Metadata = ()
    for _ in procs:
        kind, port, error, token = ports.get(timeout=START_TIMEOUT_S)
        if port is None:
            raise RuntimeError(f"{kind} server failed to start: {error}")
        procs[kind].port = port
        if token:
            metadata = (("authorization", f"Bearer {token}"),)
    return procs, metadata


def shutdown(procs: dict[str, Proc]) -> None:
    for proc in procs.values():
        with contextlib.suppress(OSError, ValueError):
            proc.control.send("stop")
    for proc in procs.values():
        proc.process.join(timeout=5)
        if proc.process.is_alive():
            proc.process.terminate()
            proc.process.join(timeout=5)
        if proc.process.is_alive():
            proc.process.kill()
            proc.process.join(timeout=5)
        proc.control.close()


# ------------------------------------------------------------------ summaries


def paired(records: dict[str, list[dict[str, float]]], key: str, a: str, b: str) -> dict[str, Any]:
    """``b`` over ``a`` on ``key``, round pair by round pair: median, min, max, and each."""
    ratios = [y[key] / x[key] for x, y in zip(records[a], records[b], strict=True) if x[key] > 0]
    return {
        "median": round(statistics.median(ratios), 3) if ratios else None,
        "min": round(min(ratios), 3) if ratios else None,
        "max": round(max(ratios), 3) if ratios else None,
        "pairs": [round(r, 3) for r in ratios],
    }


def summarize(records: list[dict[str, float]], **extra: Any) -> dict[str, Any]:
    """One side's per-round values, and the median of each over the rounds."""
    keys = records[0].keys() if records else ()
    out: dict[str, Any] = {k: round(statistics.median(r[k] for r in records), 1) for k in keys}
    out.update(extra)
    out["rounds"] = {k: [round(r[k], 1) for r in records] for k in keys}
    return out


# ------------------------------------------------------------------ server rows


def sequential(call: Callable[..., bytes], payload: bytes, n: int) -> list[float]:
    """Per-call latencies in µs, one call at a time."""
    out = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        call(payload, timeout=CALL_TIMEOUT_S)
        out.append((time.perf_counter_ns() - t0) / 1_000)
    return out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * q))], 1)


def one_caller(
    procs: dict[str, Proc], payload: bytes, budget: Budget, metadata: Metadata = ()
) -> dict[str, Any]:
    """Server CPU per call and latency, one call at a time, echo and pdp in ABBA rounds."""
    methods = {"echo": ECHO_METHOD, "pdp": AUTHORIZE_METHOD}
    records: dict[str, list[dict[str, float]]] = {"echo": [], "pdp": []}
    latencies: dict[str, list[float]] = {"echo": [], "pdp": []}
    with contextlib.ExitStack() as stack:
        calls = {
            kind: partial(
                stack.enter_context(grpc.insecure_channel(f"{HOST}:{proc.port}")).unary_unary(
                    methods[kind]
                ),
                metadata=metadata,
            )
            for kind, proc in procs.items()
        }
        for kind in records:
            sequential(calls[kind], payload, budget.warmup)
        for kind in abba(budget.rounds, "echo", "pdp"):
            before = procs[kind].cpu()
            times = sequential(calls[kind], payload, budget.sequential)
            spent = procs[kind].cpu() - before
            latencies[kind] += times
            records[kind].append(
                {"cpu_us_per_call": spent * 1e6 / len(times), "median_us": statistics.median(times)}
            )
    result: dict[str, Any] = {
        kind: summarize(
            records[kind],
            calls=len(latencies[kind]),
            latency_median_us=round(statistics.median(latencies[kind]), 1),
            latency_p99_us=percentile(latencies[kind], 0.99),
        )
        for kind in records
    }
    result["cpu_ratio"] = paired(records, "cpu_us_per_call", "echo", "pdp")
    return result


async def _burst(call: Any, payload: bytes, total: int) -> float:
    """Seconds to make ``total`` calls with IN_FLIGHT tasks each calling one after another."""

    async def caller(n: int) -> None:
        for _ in range(n):
            await call(payload, timeout=CALL_TIMEOUT_S)

    share, rest = divmod(total, IN_FLIGHT)
    t0 = time.perf_counter()
    await asyncio.gather(*(caller(share + (i < rest)) for i in range(IN_FLIGHT)))
    return time.perf_counter() - t0


async def _in_flight(
    procs: dict[str, Proc], payload: bytes, budget: Budget, metadata: Metadata
) -> dict[str, Any]:
    methods = {"echo": ECHO_METHOD, "pdp": AUTHORIZE_METHOD}
    records: dict[str, list[dict[str, float]]] = {"echo": [], "pdp": []}
    async with contextlib.AsyncExitStack() as stack:
        calls = {}
        for kind, proc in procs.items():
            channel = await stack.enter_async_context(
                grpc.aio.insecure_channel(f"{HOST}:{proc.port}")
            )
            calls[kind] = partial(channel.unary_unary(methods[kind]), metadata=metadata)
        for kind in records:
            await _burst(calls[kind], payload, max(budget.warmup, IN_FLIGHT * 4))
        for kind in abba(budget.rounds, "echo", "pdp"):
            before = procs[kind].cpu()  # nothing in flight: a blocking read is fine
            elapsed = await _burst(calls[kind], payload, budget.concurrent)
            spent = procs[kind].cpu() - before
            records[kind].append(
                {
                    "cpu_us_per_call": spent * 1e6 / budget.concurrent,
                    "calls_per_s": budget.concurrent / elapsed,
                }
            )
    result: dict[str, Any] = {
        kind: summarize(records[kind], calls=budget.concurrent * budget.rounds) for kind in records
    }
    result["cpu_ratio"] = paired(records, "cpu_us_per_call", "echo", "pdp")
    return result


def in_flight(
    procs: dict[str, Proc], payload: bytes, budget: Budget, metadata: Metadata = ()
) -> dict[str, Any]:
    """Server CPU per call and calls/s with 32 in flight, echo and pdp in ABBA rounds."""
    return asyncio.run(_in_flight(procs, payload, budget, metadata))


def batch(
    proc: Proc, request: pb.AuthorizeRequest, budget: Budget, metadata: Metadata = ()
) -> dict[str, Any]:
    """AuthorizeBatch of BATCH_SIZE, sequential, in rounds: decisions/s, server CPU."""
    message = pb.AuthorizeBatchRequest(requests=[request] * BATCH_SIZE).SerializeToString()
    records: list[dict[str, float]] = []
    with grpc.insecure_channel(f"{HOST}:{proc.port}") as channel:
        stub = partial(channel.unary_unary(BATCH_METHOD), metadata=metadata)
        answer = pb.AuthorizeBatchResponse.FromString(stub(message, timeout=CALL_TIMEOUT_S))
        if len(answer.responses) != BATCH_SIZE or not all(r.allow for r in answer.responses):
            raise RuntimeError("AuthorizeBatch did not allow every request")
        for _ in range(budget.batches):
            stub(message, timeout=CALL_TIMEOUT_S)
        for _ in range(budget.batch_rounds):
            before = proc.cpu()
            t0 = time.perf_counter()
            for _ in range(budget.batches):
                stub(message, timeout=CALL_TIMEOUT_S)
            elapsed = time.perf_counter() - t0
            spent = proc.cpu() - before
            decisions = budget.batches * BATCH_SIZE
            records.append(
                {
                    "decisions_per_s": decisions / elapsed,
                    "server_cpu_us_per_decision": spent * 1e6 / decisions,
                }
            )
    return summarize(
        records,
        batch_size=BATCH_SIZE,
        calls=budget.batches * budget.batch_rounds,
        bytes=len(message),
    )


def check_pdp(proc: Proc, payload: bytes, metadata: Metadata = ()) -> int:
    """Stop unless the PDP allows the request by agents.read_only; the answer's size."""
    with grpc.insecure_channel(f"{HOST}:{proc.port}") as channel:
        call = channel.unary_unary(AUTHORIZE_METHOD)
        raw = call(payload, timeout=CALL_TIMEOUT_S, metadata=metadata)
    answer = pb.AuthorizeResponse.FromString(raw)
    if not answer.allow or list(answer.decided_by) != DECIDED_BY:
        raise RuntimeError(f"unexpected decision for the benchmark request: {answer}")
    return len(raw)


# ------------------------------------------------------------------ client rows


def _client_calls(
    target: str, metadata: Metadata = ()
) -> tuple[dict[str, Callable[[int], int]], Callable[[], None]]:
    """The two ways of asking, each making n calls and returning how many were not allowed,
    and what closes them; both send the PEP's bearer token in ``metadata``, if any."""
    token = metadata[0][1].removeprefix("Bearer ") if metadata else None
    client = Client(target, Options(timeout=CALL_TIMEOUT_S), credentials=Credentials(token=token))
    channel = grpc.insecure_channel(target)
    stub = pb_grpc.AuthorizerStub(channel)  # type: ignore[no-untyped-call]

    def pep_client(n: int) -> int:
        return sum(not client.authorize(typical_query()).allow for _ in range(n))

    def bare_stub(n: int) -> int:
        return sum(
            not stub.Authorize(typical_request(), timeout=CALL_TIMEOUT_S, metadata=metadata).allow
            for _ in range(n)
        )

    first = client.authorize(typical_query())
    answer = stub.Authorize(typical_request(), timeout=CALL_TIMEOUT_S, metadata=metadata)
    if typical_query().to_message() != typical_request():
        raise RuntimeError("pep.client's query is not the bare request")
    if not first.allow or list(first.decided_by) != DECIDED_BY:
        raise RuntimeError(f"pep.client got an unexpected verdict: {first}")
    if not answer.allow or list(answer.decided_by) != DECIDED_BY:
        raise RuntimeError(f"the bare stub got an unexpected answer: {answer}")

    def close() -> None:
        client.close()
        channel.close()

    return {"pep_client": pep_client, "bare_stub": bare_stub}, close


def client_rounds(port: int, budget: Budget, metadata: Metadata = ()) -> dict[str, Any]:
    """In the client process: its own CPU per call, bare stub and pep.client in ABBA rounds."""
    calls, close = _client_calls(f"{HOST}:{port}", metadata)
    records: dict[str, list[dict[str, float]]] = {name: [] for name in calls}
    refused = dict.fromkeys(calls, 0)
    try:
        for name, call in calls.items():
            refused[name] += call(budget.warmup)
        for name in abba(budget.rounds, "bare_stub", "pep_client"):
            cpu0, t0 = time.process_time(), time.perf_counter()
            refused[name] += calls[name](budget.client)
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
            records[name].append(
                {
                    "cpu_us_per_call": cpu * 1e6 / budget.client,
                    "wall_us_per_call": wall * 1e6 / budget.client,
                }
            )
    finally:
        close()
    return {"records": records, "not_allowed": refused}


def client_process(port: int, budget: Budget, out: Connection, metadata: Metadata = ()) -> None:
    """The client process: run the rounds, send back ("ok", result) or ("error", why)."""
    try:
        out.send(("ok", client_rounds(port, budget, metadata)))
    except Exception as exc:  # report, so the parent says why the row is missing
        out.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        out.close()


def client(ctx: Any, proc: Proc, budget: Budget, metadata: Metadata = ()) -> dict[str, Any]:
    """Client CPU per call, measured in a process of its own while this one waits."""
    parent, child = ctx.Pipe(duplex=False)
    arguments = (proc.port, budget, child, metadata)
    process = ctx.Process(target=client_process, args=arguments, daemon=True)
    process.start()
    child.close()
    try:
        if not parent.poll(CLIENT_TIMEOUT_S):
            raise RuntimeError(f"the client process did not finish in {CLIENT_TIMEOUT_S:.0f} s")
        status, value = parent.recv()
    except EOFError:
        raise RuntimeError("the client process ended without an answer") from None
    finally:
        process.join(timeout=10)
        if process.is_alive():
            process.kill()
            process.join(timeout=5)
        parent.close()
    if status != "ok":
        raise RuntimeError(f"the client process failed: {value}")
    records = value["records"]
    calls = budget.client * budget.rounds
    result: dict[str, Any] = {
        name: summarize(records[name], calls=calls, not_allowed=value["not_allowed"][name])
        for name in records
    }
    result["cpu_ratio"] = paired(records, "cpu_us_per_call", "bare_stub", "pep_client")
    if any(value["not_allowed"].values()):
        raise RuntimeError(f"calls were not allowed during the rounds: {value['not_allowed']}")
    return result


# ------------------------------------------------------------------ the run


def attempt(unmeasured: dict[str, str], name: str, measure: Callable[[], Any]) -> Any:
    """The section's result, or None with the reason kept in ``unmeasured``."""
    try:
        return measure()
    except Exception as exc:  # a row that cannot be measured is reported, never dropped
        unmeasured[name] = f"{type(exc).__name__}: {exc}"
        return None


def run(budget: Budget, auth: bool = False) -> dict[str, Any]:
    request = typical_request()
    payload = request.SerializeToString()
    ctx = mp.get_context("spawn")
    ports = ctx.Queue()
    procs: dict[str, Proc] = {}
    unmeasured: dict[str, str] = {}
    try:
        procs, meta = launch(ctx, ports, auth)
        answer_bytes = check_pdp(procs["pdp"], payload, meta)
        pdp = procs["pdp"]
        result: dict[str, Any] = {
            "payload_bytes": {"request": len(payload), "pdp_answer": answer_bytes},
            "one_caller": attempt(
                unmeasured, "one_caller", lambda: one_caller(procs, payload, budget, meta)
            ),
            f"in_flight_{IN_FLIGHT}": attempt(
                unmeasured,
                f"in_flight_{IN_FLIGHT}",
                lambda: in_flight(procs, payload, budget, meta),
            ),
            "client": attempt(unmeasured, "client", lambda: client(ctx, pdp, budget, meta)),
            "batch": attempt(unmeasured, "batch", lambda: batch(pdp, request, budget, meta)),
        }
    finally:
        shutdown(procs)
        ports.close()
        ports.join_thread()
    result["unmeasured"] = unmeasured
    return result


def evaluate(measured: dict[str, Any]) -> list[Target]:
    """Each target with its verdict, and why it could not be measured."""

    def ratio_target(name: str, section: str, limit: float) -> Target:
        part = measured.get(section)
        value = None if part is None else part["cpu_ratio"]["median"]
        why = measured["unmeasured"].get(section) or (
            "no round pair with CPU time" if part is not None and value is None else None
        )
        passed = None if value is None else value <= limit
        return Target(name, f"<= {limit:.2f}x", value, passed, why)

    batch_part = measured.get("batch")
    rate = None if batch_part is None else batch_part["decisions_per_s"]
    return [
        ratio_target(
            "server CPU per Authorize / echo, 1 caller (median of paired rounds)",
            "one_caller",
            SERVER_LIMIT,
        ),
        ratio_target(
            f"server CPU per Authorize / echo, {IN_FLIGHT} in flight (median of paired rounds)",
            f"in_flight_{IN_FLIGHT}",
            SERVER_LIMIT,
        ),
        ratio_target(
            "pep.client CPU per call / bare stub (median of paired rounds)",
            "client",
            CLIENT_LIMIT,
        ),
        Target(
            f"AuthorizeBatch x{BATCH_SIZE} decisions/s (median of rounds)",
            f">= {BATCH_LIMIT:,}",
            rate,
            None if rate is None else rate >= BATCH_LIMIT,
            measured["unmeasured"].get("batch"),
        ),
    ]


# ------------------------------------------------------------------ report


def show(value: float | None, unit: str = "") -> str:
    if value is None:
        return "n/a"
    return f"{value:.2f}{unit}" if unit == "x" else f"{value:,.1f}{unit}"


def print_server(result: dict[str, Any]) -> None:
    one, many = result["one_caller"], result[f"in_flight_{IN_FLIGHT}"]
    header = f"{'':36} {'echo':>9} {'pdp':>9} {'pdp/echo':>9}  {'pairs min-max':>13}"
    print(header)
    print("-" * len(header))
    rows: list[tuple[str, dict[str, Any] | None, str, bool]] = [
        ("server CPU µs/call, 1 caller", one, "cpu_us_per_call", True),
        (f"server CPU µs/call, {IN_FLIGHT} in flight", many, "cpu_us_per_call", True),
        ("latency median µs, 1 caller", one, "latency_median_us", False),
        ("latency p99 µs, 1 caller", one, "latency_p99_us", False),
        (f"calls/s, {IN_FLIGHT} in flight", many, "calls_per_s", False),
    ]
    for label, part, key, is_cpu in rows:
        if part is None:
            print(f"{label:36} {'not measured':>9}")
            continue
        echo, pdp = part["echo"][key], part["pdp"][key]
        spread = ""
        if is_cpu:  # the median of the paired rounds' ratios; other rows: of the medians
            r = part["cpu_ratio"]
            ratio_text = show(r["median"], "x")
            spread = f"{show(r['min'], 'x')}-{show(r['max'], 'x')}"
        else:
            ratio_text = show(pdp / echo if echo else None, "x")
        print(f"{label:36} {echo:>9,.1f} {pdp:>9,.1f} {ratio_text:>9}  {spread:>13}")


def print_client(part: dict[str, Any] | None) -> None:
    header = f"{'':36} {'bare stub':>9} {'pep.client':>10} {'ratio':>8}  {'pairs min-max':>13}"
    print(f"\n{header}")
    print("-" * len(header))
    if part is None:
        print(f"{'client CPU µs/call (own process)':36} not measured")
        return
    bare, pep = part["bare_stub"], part["pep_client"]
    r = part["cpu_ratio"]
    spread = f"{show(r['min'], 'x')}-{show(r['max'], 'x')}"
    print(
        f"{'client CPU µs/call (own process)':36} {bare['cpu_us_per_call']:>9,.1f} "
        f"{pep['cpu_us_per_call']:>10,.1f} {show(r['median'], 'x'):>8}  {spread:>13}"
    )
    wall = pep["wall_us_per_call"] / bare["wall_us_per_call"]
    print(
        f"{'client wall µs/call (information)':36} {bare['wall_us_per_call']:>9,.1f} "
        f"{pep['wall_us_per_call']:>10,.1f} {show(wall, 'x'):>8}"
    )


def print_report(result: dict[str, Any], targets: list[Target]) -> None:
    env, method = result["environment"], result["method"]
    print(
        f"gRPC service: Tessera's Authorize vs a bare grpc.aio echo, pep.client vs a bare stub "
        f"(Python {env['python']}, {env['machine']}, grpcio {env['grpcio']}"
        f"{', quick' if env['quick'] else ''}; callers {method['callers']})"
    )
    sizes = result["payload_bytes"]
    print(
        f"request {sizes['request']} bytes (pdp answer {sizes['pdp_answer']}); servers and the "
        f"client rows in their own processes on {HOST}; {method['rounds']} rounds per side, "
        "ABBA; ratios: median of the paired rounds\n"
    )
    print_server(result)
    print_client(result["client"])
    b = result["batch"]
    if b is not None:
        low, high = min(b["rounds"]["decisions_per_s"]), max(b["rounds"]["decisions_per_s"])
        print(
            f"\nAuthorizeBatch x{b['batch_size']}: {b['decisions_per_s']:,.0f} decisions/s "
            f"(rounds {low:,.0f}-{high:,.0f}), {b['server_cpu_us_per_decision']} µs server CPU "
            f"per decision, {b['calls']} calls"
        )
    print("\ntargets")
    for t in targets:
        value = show(t.value, "x") if t.value is None or "x" in t.limit else f"{t.value:,.0f}"
        note = f"; not measured: {t.why}" if t.why else ""
        print(f"  {t.verdict:4}  {t.name}: {value} ({t.limit}){note}")
    print(f"\n{result['seconds']} s")


def main() -> None:
    parser = benchmark_parser(
        "Server CPU per Authorize against a bare grpc.aio echo at 1 and 32 callers, client "
        "CPU per call of pep.client against a bare generated stub, AuthorizeBatch "
        "decisions/s; interleaved rounds, paired ratios.",
        quick="10 shorter rounds per side, about 30 s (noisier numbers)",
    )
    parser.add_argument(
        "--auth",
        action="store_true",
        help="the PDP asks each call for a PEP's bearer token, and every call sends one",
    )
    args = parser.parse_args()
    budget = QUICK if args.quick else FULL
    started, load = time.perf_counter(), round(os.getloadavg()[0], 2)
    measured = run(budget, args.auth)
    targets = evaluate(measured)
    result: dict[str, Any] = {
        "benchmark": "grpc_service",
        "environment": environment(args.quick, grpcio=grpc.__version__),
        "method": {
            "host": HOST,
            "servers": "one process each (multiprocessing spawn)",
            "client_rows": "a process of their own (spawn); this process waits meanwhile",
            "pdp_cache_size": 0,
            "callers": "bearer token (--auth)" if args.auth else "not asked (loopback)",
            "order": "ABBA rounds; ratios are the median of the round pairs' ratios",
            "in_flight": IN_FLIGHT,
            **asdict(budget),
            "server_cpu": "time.process_time in the server process, before/after each round",
            "client_cpu": "time.process_time in the client process, around each round",
        },
        **measured,
        "targets": [t.to_json(3) for t in targets],
        "load_average_1m": {"start": load, "end": round(os.getloadavg()[0], 2)},
        "seconds": round(time.perf_counter() - started, 1),
    }
    finish(result, targets, args, lambda r: print_report(r, targets))


if __name__ == "__main__":
    main()
