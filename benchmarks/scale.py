"""How ``tessera serve`` scales with ``--workers``: ``Authorize`` decisions/s with 1, 2 and
``auto`` workers (one per usable core), in one run.

What it measures, on loopback (127.0.0.1) only:

* **servers**: one ``tessera serve --workers N --policies policies --store '' --counters
  memory --port 0 --metrics-port -1 --cache-size 0`` subprocess per worker count, all
  started before the first round and idle while another is measured. No store: the
  decision path alone, with no directory and no audit writer (whose shared SQLite file
  would measure the disk); no decision cache: every call runs the engine. The request
  touches no limit, so where limits would be counted does not matter here. When ``auto``
  equals 1 or 2 on this machine it is that row, not a third server.
* **load**: ``--clients`` client processes (multiprocessing, spawn; default one per usable
  core, at least 2), started once, so that the client side is not one interpreter's worth
  of CPU. For each measurement every client opens :data:`CHANNELS` fresh channels (each its
  own TCP connection: the kernel spreads connections, not calls, over the workers) with
  :data:`IN_FLIGHT` calls in flight on each, one after another, of the pre-serialized
  typical request (an active low-risk agent calling tool "search": allowed by
  ``agents.read_only``; checked before timing). The calls before the window warm the
  connections up; a call counts when it completes inside the window. Decisions/s is the
  calls answered OK in the window over its length; any failed call is reported.
* **CPU**: the servers' CPU time per decision (``/proc/<pid>/stat`` of the parent and every
  worker, before and after the window), and how busy the whole machine was meanwhile.
* **order**: rounds; in each, every server once, the order reversed every other round
  (1, 2, auto, auto, 2, 1, ...), so load beside the run moves all rows alike. Reported:
  the median decisions/s of each row over the rounds, its ratio to the 1-worker median,
  and the median of the per-round ratios (paired).

Target: 2 workers ≥ 1.6× the decisions/s of 1 worker, on a machine with at least 4
usable cores. With fewer, the clients and the workers share too few cores for a second
worker to show (each decision costs a client about as much CPU as the server): the check
is reported as not applicable, with the number of cores, never silently passed or failed;
``--strict`` exits 1 only on a measured miss.

    python benchmarks/scale.py [--json] [--quick] [--strict] [--clients N]
"""

from __future__ import annotations

import os
import sys

# The project root first: benchmarks/issuer.py must not shadow the issuer package
# (sibling scripts stay importable from this directory, next on the path).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import asyncio
import json
import multiprocessing as mp
import re
import signal
import statistics
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import grpc
from engine import Target, benchmark_parser, environment, fmt, ratio
from grpc_service import AUTHORIZE_METHOD, typical_request

from pdp.serve.proto import authorizer_pb2 as pb

ROOT = Path(__file__).resolve().parent.parent
POLICIES = ROOT / "policies"
TESSERA = Path(sys.executable).parent / "tessera"
HOST = "127.0.0.1"
CHANNELS = 4  # per client process: connections, each to whichever worker the kernel picks
IN_FLIGHT = 16  # calls in flight per channel
CALL_TIMEOUT_S = 10.0
START_TIMEOUT_S = 120.0  # a server with all its workers to serve
SETUP_S = 1.0  # seconds the clients get to connect before the warm-up starts
MIN_CORES = 4  # below this the 2-worker target is not applicable
TARGET_RATIO = 1.6  # 2 workers' decisions/s over 1 worker's


@dataclass(frozen=True)
class Budget:
    rounds: int
    warmup: float  # seconds of calls before each window, not counted
    seconds: float  # the window


FULL = Budget(rounds=7, warmup=1.0, seconds=4.0)
QUICK = Budget(rounds=3, warmup=0.5, seconds=1.5)


def usable_cores() -> int:
    """The CPUs this process may run on: what ``--workers auto`` starts."""
    return len(os.sched_getaffinity(0))


def rows(cores: int) -> dict[str, int]:
    """Row name -> worker count: 1, 2 and auto, auto folded into 1 or 2 when equal."""
    out = {"1": 1, "2": 2}
    if cores > 2:
        out[f"auto ({cores})"] = cores
    else:
        name = str(cores)
        out[f"{name} (= auto)"] = out.pop(name)
    return out


# ------------------------------------------------------------------ the servers


@dataclass
class Served:
    """A ``tessera serve --workers N`` subprocess."""

    workers: int
    process: subprocess.Popen[str]
    port: int
    pids: list[int]  # the processes that serve: the workers, or the one server

    def cpu(self) -> float:
        """CPU seconds the serving processes have used so far."""
        return sum(cpu_seconds(pid) for pid in self.pids)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux ``/proc``); 0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy() -> tuple[int, int]:
    """(busy, total) CPU ticks of the whole machine so far (``/proc/stat``)."""
    line = Path("/proc/stat").read_text().split("\n", 1)[0]
    fields = [int(v) for v in line.split()[1:9]]
    total = sum(fields)
    return total - fields[3] - fields[4], total


def serve(workers: int) -> Served:
    """Start ``tessera serve --workers N`` and wait until every worker serves."""
    process = subprocess.Popen(
        [
            *(str(TESSERA), "serve", "--workers", str(workers), "--policies", str(POLICIES)),
            *("--store", "", "--counters", "memory", "--port", "0", "--metrics-port", "-1"),
            *("--cache-size", "0"),
            *("--grace", "1"),
        ],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + START_TIMEOUT_S
    while " rules from " not in (lines[-1] if lines else ""):  # the last startup line
        line = process.stdout.readline()
        if not line or time.monotonic() > deadline:
            process.kill()
            raise SystemExit(f"tessera serve --workers {workers} did not start: {lines}")
        lines.append(line)
    text = "".join(lines)
    port = int(re.findall(r"Authorizer on 127\.0\.0\.1:(\d+)", text)[0])
    pids = [int(pid) for pid in re.findall(r"serving, pid (\d+)", text)] or [process.pid]
    return Served(workers, process, port, pids)


def stop(served: Served) -> None:
    served.process.send_signal(signal.SIGTERM)
    try:
        served.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        served.process.kill()
        served.process.wait(timeout=10)


def check(served: Served) -> None:
    """The typical request is allowed by agents.read_only, or the run stops."""
    with grpc.insecure_channel(f"{HOST}:{served.port}") as channel:
        raw = channel.unary_unary(AUTHORIZE_METHOD)(
            typical_request().SerializeToString(), timeout=CALL_TIMEOUT_S
        )
    answer = pb.AuthorizeResponse.FromString(raw)
    if not answer.allow or list(answer.decided_by) != ["agents.read_only"]:
        raise SystemExit(f"the typical request is not allowed by agents.read_only: {answer}")


# ------------------------------------------------------------------ the clients


async def _load(port: int, payload: bytes, start: float, end: float) -> tuple[int, int]:
    """Calls in flight on fresh channels from now until ``end`` (monotonic); the calls
    answered OK and failed that completed in [start, end]."""
    options = [("grpc.use_local_subchannel_pool", 1)]  # each channel its own connection
    channels = [
        grpc.aio.insecure_channel(f"{HOST}:{port}", options=options) for _ in range(CHANNELS)
    ]
    ok = failed = 0

    async def caller(channel: grpc.aio.Channel) -> None:
        nonlocal ok, failed
        call = channel.unary_unary(AUTHORIZE_METHOD)
        while time.monotonic() < end:
            try:
                await call(payload, timeout=CALL_TIMEOUT_S)
                good = True
            except grpc.RpcError:
                good = False
            done = time.monotonic()
            if start <= done <= end:
                ok += good
                failed += not good

    try:
        await asyncio.gather(*(caller(c) for c in channels for _ in range(IN_FLIGHT)))
    finally:
        for channel in channels:
            await channel.close()
    return ok, failed


def client_process(commands: Connection) -> None:
    """A load process: for each (port, start, end) it is sent, load that server and send
    back (ok, failed); None ends it."""
    payload = typical_request().SerializeToString()
    while (command := commands.recv()) is not None:
        port, start, end = command
        commands.send(asyncio.run(_load(port, payload, start, end)))


@contextmanager
def clients(count: int) -> Iterator[list[Connection]]:
    """``count`` load processes, each behind a pipe."""
    ctx = mp.get_context("spawn")
    pipes, processes = [], []
    for _ in range(count):
        mine, theirs = ctx.Pipe()
        process = ctx.Process(target=client_process, args=(theirs,), daemon=True)
        process.start()
        pipes.append(mine)
        processes.append(process)
    try:
        yield pipes
    finally:
        for pipe in pipes:
            pipe.send(None)
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()


def measure(served: Served, pipes: list[Connection], budget: Budget) -> dict[str, float]:
    """One window of load on one server: decisions/s, failures, CPU per decision."""
    start = time.monotonic() + SETUP_S + budget.warmup
    end = start + budget.seconds
    for pipe in pipes:
        pipe.send((served.port, start, end))
    while time.monotonic() < start:
        time.sleep(0.005)
    cpu0, busy0 = served.cpu(), machine_busy()
    while time.monotonic() < end:
        time.sleep(0.005)
    cpu1, busy1 = served.cpu(), machine_busy()
    answers = [pipe.recv() for pipe in pipes]
    ok, failed = sum(a[0] for a in answers), sum(a[1] for a in answers)
    cores_busy = (busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1]) * (os.cpu_count() or 1)
    return {
        "decisions_per_s": ok / budget.seconds,
        "failed": failed,
        "server_cpu_us_per_decision": (cpu1 - cpu0) * 1e6 / ok if ok else float("nan"),
        "server_cores": (cpu1 - cpu0) / budget.seconds,
        "machine_cores_busy": cores_busy,
    }


# ------------------------------------------------------------------ limit counters
# RESERVED for the rows that compare the latency of limit counters (Redis and PostgreSQL
# against memory): counter_rows() returns them, the JSON carries them as "counters" and
# print_report() prints them under "limit counters". None are measured yet.


def counter_rows(budget: Budget) -> list[dict[str, Any]]:
    """Limit-counter latency rows (Redis, PostgreSQL against memory); none yet."""
    del budget
    return []


# ------------------------------------------------------------------ the run


def run(budget: Budget, client_count: int) -> dict[str, Any]:
    cores = usable_cores()
    counts = rows(cores)
    records: dict[str, list[dict[str, float]]] = {name: [] for name in counts}
    with ExitStack() as stack:
        servers = {}
        for name, workers in counts.items():
            servers[name] = serve(workers)
            stack.callback(stop, servers[name])
            check(servers[name])
        pipes = stack.enter_context(clients(client_count))
        names = list(counts)
        for number in range(budget.rounds):
            for name in names if number % 2 == 0 else reversed(names):
                records[name].append(measure(servers[name], pipes, budget))
    return summarize(records, counts, cores, client_count)


def summarize(
    records: dict[str, list[dict[str, float]]], counts: dict[str, int], cores: int, clients: int
) -> dict[str, Any]:
    one = next(name for name, workers in counts.items() if workers == 1)
    two = next(name for name, workers in counts.items() if workers == 2)
    base = statistics.median(r["decisions_per_s"] for r in records[one])
    out: dict[str, Any] = {"cores": cores, "clients": clients, "rows": {}}
    for name, rounds in records.items():
        rates = [r["decisions_per_s"] for r in rounds]
        paired = [r / b["decisions_per_s"] for r, b in zip(rates, records[one], strict=True)]
        out["rows"][name] = {
            "workers": counts[name],
            "decisions_per_s": round(statistics.median(rates), 1),
            "ratio_to_1": _round(ratio(statistics.median(rates), base), 3),
            "paired_ratio_to_1": round(statistics.median(paired), 3),
            "failed": sum(int(r["failed"]) for r in rounds),
            "server_cpu_us_per_decision": round(
                statistics.median(r["server_cpu_us_per_decision"] for r in rounds), 1
            ),
            "server_cores": round(statistics.median(r["server_cores"] for r in rounds), 2),
            "machine_cores_busy": round(
                statistics.median(r["machine_cores_busy"] for r in rounds), 2
            ),
            "rounds": [{k: round(v, 3) for k, v in r.items()} for r in rounds],
        }
    out["two_over_one"] = out["rows"][two]["ratio_to_1"]
    return out


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def evaluate(measured: dict[str, Any]) -> tuple[Target, str]:
    """The scaling target, and what to say about it."""
    cores, value = measured["cores"], measured["two_over_one"]
    limit = f">= {TARGET_RATIO}x on >= {MIN_CORES} cores"
    name = "2 workers / 1 worker, decisions/s"
    if cores < MIN_CORES:
        why = (
            f"NOT APPLICABLE: this machine has {cores} usable cores and the check needs "
            f"{MIN_CORES} (2 workers and the clients that load them); the ratio is shown, "
            "not judged"
        )
        return Target(name, limit, value, None), why
    failed = sum(row["failed"] for row in measured["rows"].values())
    if failed:
        return Target(name, limit, value, False), f"{failed} calls failed"
    passed = value is not None and value >= TARGET_RATIO
    return Target(name, limit, value, passed), f"measured on {cores} cores"


def print_report(result: dict[str, Any]) -> None:
    m = result["measured"]
    print(
        f"tessera serve --workers: Authorize decisions/s, {m['cores']} usable cores, "
        f"{m['clients']} client processes x {CHANNELS} channels x {IN_FLIGHT} in flight, "
        f"{result['method']['rounds']} rounds of {result['method']['seconds']} s\n"
    )
    print(
        f"  {'workers':14} {'decisions/s':>12} {'x 1 worker':>11} {'paired':>8} "
        f"{'server µs/dec':>14} {'server cores':>13} {'busy cores':>11} {'failed':>7}"
    )
    for name, row in m["rows"].items():
        print(
            f"  {name:14} {row['decisions_per_s']:12.0f} {fmt(row['ratio_to_1'], 2):>11} "
            f"{row['paired_ratio_to_1']:8.2f} {row['server_cpu_us_per_decision']:14.1f} "
            f"{row['server_cores']:13.2f} {row['machine_cores_busy']:11.2f} "
            f"{row['failed']:7d}"
        )
    print("\nlimit counters")
    if not result["counters"]:
        print("  (rows to be added: Redis and PostgreSQL against memory)")
    for row in result["counters"]:
        print(f"  {row}")
    target = result["target"]
    print("\ntarget")
    print(
        f"  {target['verdict']:4}  {target['name']}: {fmt(target['value'], 2)} ({target['limit']})"
    )
    print(f"        {target['why']}")
    print(f"\n{result['seconds']} s")


def main() -> None:
    parser = benchmark_parser(
        "Authorize decisions/s of tessera serve with 1, 2 and auto workers, loaded by "
        "several client processes; interleaved rounds, medians, ratio to 1 worker.",
        quick="3 rounds of 1.5 s windows, about a minute (noisier numbers)",
    )
    parser.add_argument(
        "--clients",
        type=int,
        default=max(2, usable_cores()),
        metavar="N",
        help="client processes (default: one per usable core, at least 2)",
    )
    args = parser.parse_args()
    budget = QUICK if args.quick else FULL
    started, load = time.perf_counter(), round(os.getloadavg()[0], 2)
    measured = run(budget, args.clients)
    target, why = evaluate(measured)
    result: dict[str, Any] = {
        "benchmark": "scale",
        "environment": environment(args.quick, grpcio=grpc.__version__),
        "method": {
            "host": HOST,
            "server": "tessera serve --workers N --store '' --counters memory --cache-size 0",
            "channels_per_client": CHANNELS,
            "in_flight_per_channel": IN_FLIGHT,
            "order": "rounds, every row once each, the order reversed every other round",
            **asdict(budget),
        },
        "measured": measured,
        "counters": counter_rows(budget),
        "target": {**target.to_json(3), "why": why},
        "load_average_1m": {"start": load, "end": round(os.getloadavg()[0], 2)},
        "seconds": round(time.perf_counter() - started, 1),
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_report(result)
    if target.passed is None:
        print(f"scale: the 2-worker check was not judged: {why}", file=sys.stderr)
    if args.strict and target.passed is False:
        print(f"--strict: {target.name}: {fmt(target.value, 2)} ({target.limit})", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
