"""What the gRPC service costs over gRPC itself: Tessera's ``Authorize`` against a bare echo.

What it measures, in one run, over loopback (127.0.0.1) only:

* an **echo** server: a bare ``grpc.aio`` server with one generic unary method taking and
  returning raw bytes (no codegen, no protobuf parsing); it answers each call with the bytes
  it got, a payload the size of a serialized typical ``AuthorizeRequest``. This is the
  floor: what a gRPC call costs in Python with no work behind it;
* the **PDP**: ``pdp.server.start`` with the shipped policies (``policies/``) and
  ``cache_size=0``, so every call parses the request, runs the engine and builds a response.

Each server runs in its own process (multiprocessing, spawn). It reports its port through a
queue and, on request over a pipe, its own CPU time (``time.process_time``, all threads), read
before and after each measured phase, which gives server CPU µs per call.

For each server:

* sequential latency: the median (and p99) over N calls from a sync ``grpc`` client, one
  call at a time, after a warm-up;
* server CPU µs per call during that sequential phase;
* throughput (calls/s) with 8 and with 32 calls in flight: a ``grpc.aio`` client in this
  process, ``asyncio.gather`` over a bounded number of calls, each holding a semaphore;
* PDP only: ``AuthorizeBatch`` with 100 requests per call, sequential, as decisions/s.

The request: agent "helper" (status "active", risk low) calling tool "search", allowed by
``agents.read_only``. Both clients send pre-serialized bytes and take bytes back (no client
side protobuf work in the timed loop), so the difference is the server's. The PDP's answer
is parsed once, before timing, and must be an allow by ``agents.read_only``. Client and
servers share the machine's cores, so throughput is that of this whole setup, not of a
server alone.

    python benchmarks/grpc_service.py [--json] [--quick]
"""

from __future__ import annotations

import os
import sys

# The project root first: benchmarks/issuer.py must not shadow the issuer package
# (sibling scripts stay importable from this directory, next on the path).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import grpc
from engine import environment  # a sibling script

from pdp.serve.proto import authorizer_pb2 as pb

ROOT = Path(__file__).resolve().parent.parent
POLICIES = ROOT / "policies"
HOST = "127.0.0.1"

ECHO_METHOD = "/bench.Echo/Call"
AUTHORIZE_METHOD = "/tessera.v1.Authorizer/Authorize"
BATCH_METHOD = "/tessera.v1.Authorizer/AuthorizeBatch"
BATCH_SIZE = 100
IN_FLIGHT = (8, 32)
START_TIMEOUT_S = 30.0
CALL_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Budget:
    warmup: int
    sequential: int
    concurrent: int  # total calls per throughput phase
    batches: int


FULL = Budget(warmup=300, sequential=3_000, concurrent=10_000, batches=100)
QUICK = Budget(warmup=50, sequential=300, concurrent=1_000, batches=10)


def typical_request() -> pb.AuthorizeRequest:
    return pb.AuthorizeRequest(
        agent=pb.Agent(
            id="helper",
            attributes={"status": pb.Value(string="active"), "risk": pb.Value(risk="low")},
        ),
        action="tool.call",
        resource=pb.Resource(type="tool", id="search"),
    )


# ------------------------------------------------------------------ server processes


async def _start_echo() -> tuple[grpc.aio.Server, int]:
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


async def _start_pdp() -> tuple[Any, int]:
    from pdp.engine import Engine
    from pdp.loader import load_directory
    from pdp.server import start

    engine = Engine(load_directory(POLICIES).bundle)
    running = await start(engine, HOST, 0, cache_size=0)
    return running, running.port


def serve(kind: str, ports: Any, control: Connection) -> None:
    """A server process: serve on an event loop thread; answer CPU-time requests until stop."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    starter = _start_echo if kind == "echo" else _start_pdp
    try:
        server, port = asyncio.run_coroutine_threadsafe(starter(), loop).result(START_TIMEOUT_S)
    except Exception as exc:  # report, so the parent does not wait for a port forever
        ports.put((kind, None, repr(exc)))
        return
    ports.put((kind, port, None))
    try:
        while control.poll(600):  # bounded: a parent that went away leaves within minutes
            command = control.recv()
            if command == "cpu":
                control.send(time.process_time())
            else:
                break
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


def launch(ctx: Any, ports: Any) -> dict[str, Proc]:
    procs: dict[str, Proc] = {}
    for kind in ("echo", "pdp"):
        parent, child = ctx.Pipe()
        process = ctx.Process(target=serve, args=(kind, ports, child), daemon=True)
        process.start()
        procs[kind] = Proc(kind, process, parent)
    for _ in procs:
        kind, port, error = ports.get(timeout=START_TIMEOUT_S)
        if port is None:
            raise RuntimeError(f"{kind} server failed to start: {error}")
        procs[kind].port = port
    return procs


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


# ------------------------------------------------------------------ measuring


def sequential(call: Callable[[bytes], bytes], payload: bytes, n: int) -> list[float]:
    """Per-call latencies in µs, one call at a time."""
    out = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        call(payload)
        out.append((time.perf_counter_ns() - t0) / 1_000)
    return out


async def _throughput(port: int, method: str, payload: bytes, in_flight: int, total: int) -> float:
    async with grpc.aio.insecure_channel(f"{HOST}:{port}") as channel:
        call = channel.unary_unary(method)
        await asyncio.gather(*(call(payload, timeout=CALL_TIMEOUT_S) for _ in range(in_flight)))
        gate = asyncio.Semaphore(in_flight)

        async def one() -> None:
            async with gate:
                await call(payload, timeout=CALL_TIMEOUT_S)

        t0 = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(total)))
        return total / (time.perf_counter() - t0)


def measure(proc: Proc, method: str, payload: bytes, budget: Budget) -> dict[str, Any]:
    result: dict[str, Any] = {"payload_bytes": len(payload)}
    with grpc.insecure_channel(f"{HOST}:{proc.port}") as channel:
        stub = channel.unary_unary(method)

        def call(data: bytes) -> bytes:
            answer: bytes = stub(data, timeout=CALL_TIMEOUT_S)
            return answer

        sequential(call, payload, budget.warmup)
        cpu0 = proc.cpu()
        latencies = sequential(call, payload, budget.sequential)
        cpu1 = proc.cpu()
    latencies.sort()
    result["sequential"] = {
        "calls": len(latencies),
        "median_us": round(statistics.median(latencies), 1),
        "p99_us": round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))], 1),
        "server_cpu_us_per_call": round((cpu1 - cpu0) * 1e6 / len(latencies), 1),
    }
    for in_flight in IN_FLIGHT:
        cpu0 = proc.cpu()
        rate = asyncio.run(_throughput(proc.port, method, payload, in_flight, budget.concurrent))
        cpu1 = proc.cpu()
        result[f"in_flight_{in_flight}"] = {
            "calls": budget.concurrent,
            "calls_per_s": round(rate),
            "server_cpu_us_per_call": round((cpu1 - cpu0) * 1e6 / budget.concurrent, 1),
        }
    return result


def measure_batch(proc: Proc, request: pb.AuthorizeRequest, budget: Budget) -> dict[str, Any]:
    batch = pb.AuthorizeBatchRequest(requests=[request] * BATCH_SIZE).SerializeToString()
    with grpc.insecure_channel(f"{HOST}:{proc.port}") as channel:
        stub = channel.unary_unary(BATCH_METHOD)
        answer = pb.AuthorizeBatchResponse.FromString(stub(batch, timeout=CALL_TIMEOUT_S))
        if len(answer.responses) != BATCH_SIZE or not all(r.allow for r in answer.responses):
            raise RuntimeError("AuthorizeBatch did not allow every request")
        for _ in range(max(1, budget.batches // 10)):
            stub(batch, timeout=CALL_TIMEOUT_S)
        cpu0 = proc.cpu()
        t0 = time.perf_counter()
        for _ in range(budget.batches):
            stub(batch, timeout=CALL_TIMEOUT_S)
        elapsed = time.perf_counter() - t0
        cpu1 = proc.cpu()
    decisions = budget.batches * BATCH_SIZE
    return {
        "batch_size": BATCH_SIZE,
        "calls": budget.batches,
        "payload_bytes": len(batch),
        "decisions_per_s": round(decisions / elapsed),
        "us_per_call": round(elapsed * 1e6 / budget.batches, 1),
        "server_cpu_us_per_decision": round((cpu1 - cpu0) * 1e6 / decisions, 2),
    }


def check_pdp(proc: Proc, payload: bytes) -> None:
    with grpc.insecure_channel(f"{HOST}:{proc.port}") as channel:
        raw = channel.unary_unary(AUTHORIZE_METHOD)(payload, timeout=CALL_TIMEOUT_S)
    answer = pb.AuthorizeResponse.FromString(raw)
    if not answer.allow or list(answer.decided_by) != ["agents.read_only"]:
        raise RuntimeError(f"unexpected decision for the benchmark request: {answer}")


def ratio(a: float, b: float) -> float | None:
    return round(a / b, 2) if b else None


def run(budget: Budget) -> dict[str, Any]:
    request = typical_request()
    payload = request.SerializeToString()
    ctx = mp.get_context("spawn")
    ports = ctx.Queue()
    procs: dict[str, Proc] = {}
    try:
        procs = launch(ctx, ports)
        check_pdp(procs["pdp"], payload)
        echo = measure(procs["echo"], ECHO_METHOD, payload, budget)
        pdp = measure(procs["pdp"], AUTHORIZE_METHOD, payload, budget)
        pdp["batch"] = measure_batch(procs["pdp"], request, budget)
    finally:
        shutdown(procs)
        ports.close()
        ports.join_thread()
    ratios: dict[str, float | None] = {
        "latency_pdp_over_echo": ratio(
            pdp["sequential"]["median_us"], echo["sequential"]["median_us"]
        ),
        "cpu_per_call_pdp_over_echo": ratio(
            pdp["sequential"]["server_cpu_us_per_call"],
            echo["sequential"]["server_cpu_us_per_call"],
        ),
    }
    for n in IN_FLIGHT:
        key = f"in_flight_{n}"
        ratios[f"throughput_{n}_pdp_over_echo"] = ratio(
            pdp[key]["calls_per_s"], echo[key]["calls_per_s"]
        )
    return {"echo": echo, "pdp": pdp, "ratios": ratios}


# ------------------------------------------------------------------ report


def print_report(result: dict[str, Any]) -> None:
    env = result["environment"]
    echo, pdp, ratios = result["echo"], result["pdp"], result["ratios"]
    print(
        f"gRPC service vs bare grpc.aio echo (Python {env['python']}, {env['machine']}, "
        f"grpcio {env['grpcio']}{', quick' if env['quick'] else ''})"
    )
    print(f"request: {echo['payload_bytes']} bytes; servers in their own processes on {HOST}\n")
    rows = [
        ("sequential median µs", "sequential", "median_us", "latency_pdp_over_echo"),
        ("sequential p99 µs", "sequential", "p99_us", None),
        (
            "server CPU µs/call (seq)",
            "sequential",
            "server_cpu_us_per_call",
            "cpu_per_call_pdp_over_echo",
        ),
    ]
    for n in IN_FLIGHT:
        key = f"in_flight_{n}"
        rows.append(
            (f"calls/s, {n} in flight", key, "calls_per_s", f"throughput_{n}_pdp_over_echo")
        )
        rows.append((f"server CPU µs/call, {n} in flight", key, "server_cpu_us_per_call", None))
    header = f"{'':34} {'echo':>10} {'pdp':>10} {'pdp/echo':>9}"
    print(header)
    print("-" * len(header))
    for label, group, field, ratio_key in rows:
        e, p = echo[group][field], pdp[group][field]
        r = ratios.get(ratio_key) if ratio_key else ratio(p, e)
        print(f"{label:34} {e:>10,} {p:>10,} {'' if r is None else f'{r:.2f}x':>9}")
    b = pdp["batch"]
    print(
        f"\nAuthorizeBatch x{b['batch_size']}: {b['decisions_per_s']:,} decisions/s "
        f"({b['us_per_call']:,} µs per call, {b['server_cpu_us_per_decision']} µs server CPU "
        f"per decision, {b['calls']} calls)"
    )
    print("\nratios (pdp / echo)")
    print(f"  latency:          {ratios['latency_pdp_over_echo']}x")
    print(f"  CPU per call:     {ratios['cpu_per_call_pdp_over_echo']}x")
    for n in IN_FLIGHT:
        print(f"  throughput, {n:>2}:   {ratios[f'throughput_{n}_pdp_over_echo']}x")
    print(f"\n{result['seconds']} s")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=(
            "Time Tessera's gRPC Authorize against a bare grpc.aio echo server: latency, "
            "server CPU per call, throughput with 8 and 32 calls in flight, batch decisions/s."
        ),
        epilog="Method and caveats: see the module docstring.",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    parser.add_argument("--quick", action="store_true", help="a short smoke run (noisy numbers)")
    args = parser.parse_args()

    budget = QUICK if args.quick else FULL
    started = time.perf_counter()
    measured = run(budget)
    result: dict[str, Any] = {
        "benchmark": "grpc_service",
        "environment": environment(args.quick, grpcio=grpc.__version__),
        "method": {
            "host": HOST,
            "servers": "one process each (multiprocessing spawn)",
            "pdp_cache_size": 0,
            "warmup_calls": budget.warmup,
            "sequential_calls": budget.sequential,
            "concurrent_calls_per_phase": budget.concurrent,
            "in_flight": list(IN_FLIGHT),
            "batch_calls": budget.batches,
            "server_cpu": "time.process_time in the server process, before/after each phase",
        },
        **measured,
        "seconds": round(time.perf_counter() - started, 1),
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_report(result)


if __name__ == "__main__":
    main()
