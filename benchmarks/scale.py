"""How ``tessera serve`` scales with ``--workers``: ``Authorize`` decisions/s with 1, 2 and
``auto`` workers (one per usable core), in one run; and what a limited decision's counter
store adds to its latency, Redis, PostgreSQL and SQLite against memory.

What it measures, on loopback (127.0.0.1) only:

* **servers**: one ``tessera serve --workers N --policies policies --store '' --counters
  sqlite:///<temp dir>/counters.db --port 0 --metrics-port -1 --cache-size 0`` subprocess
  per worker count, all started before the first round and idle while another is
  measured. No store: the decision path alone, with no directory and no audit writer
  (whose shared SQLite file would measure the disk); no decision cache: every call runs
  the engine. Several workers refuse to count limits in memory, so every row names a
  SQLite file of counters in a temporary directory of the run (removed at its end); the
  request touches no limit, so the file is never opened and the rows differ in
  ``--workers`` alone. When ``auto`` equals 1 or 2 on this machine it is that row, not a
  third server.
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
* **limit counters**, after the scaling rows, their servers stopped: one ``tessera serve
  --workers 1 --store '' --counters X --counters-timeout 1 --cache-size 0`` per store,
  started once: ``memory`` (the baseline), Redis (``TESSERA_TEST_REDIS``, default
  ``redis://127.0.0.1:6379/0``), PostgreSQL (``TESSERA_TEST_POSTGRES``, default
  ``postgresql://postgres@127.0.0.1:5432/test``, on a schema of its own made for the run
  and dropped after) and SQLite (a file in the run's temporary directory). One client in
  this process calls each server one call at a time (latency, not throughput) with a
  *limited* request: an agent unique to the run, its attributes sent by the caller
  (active, risk low, purpose "payments"), calling tool ``payments.transfer`` with
  ``context.amount`` 0.01 USD, which ``agents.small_transfers`` allows under its
  5,000 USD daily cap per agent (500,000 such calls). Before timing, on every server:
  the limited call is allowed by ``agents.small_transfers`` and is not cacheable (a limit
  decides it) while the typical request is; five transfers of 1,000 USD by another agent
  of the run are allowed and a sixth is denied (the store counts); the server says it
  counts in the store named. Rounds interleave the servers, the order reversed every
  other round (memory, Redis, PostgreSQL, SQLite, SQLite, ..., memory: ABBA against
  memory), each timing :attr:`Budget.counter_calls` sequential calls; each round gives
  each server's p50 and p99. Reported: each store's median over the rounds of its p50
  and p99, and what it adds over memory, paired per round (store minus memory in the
  same round), the median of the rounds. The one-second counter timeout (the default is
  0.1 s) has a slow charge measured rather than refused; a call not allowed is counted
  as failed.

Targets:

* 2 workers ≥ 1.6× the decisions/s of 1 worker, on a machine with at least 4 usable
  cores. With fewer, the clients and the workers share too few cores for a second worker
  to show (each decision costs a client about as much CPU as the server): the check is
  reported as not applicable, with the number of cores, never silently passed or failed.
* Redis adds ≤ 250 µs to the p50 of a limited ``Authorize`` over memory, on loopback.

``--strict`` exits 1 on a measured miss of the scaling target, and when the counter
target fails or could not be measured, or a counter row could not be measured (Redis or
PostgreSQL unreachable) or had failed calls, each with its reason.

    python benchmarks/scale.py [--json] [--quick] [--strict] [--clients N]
"""

from __future__ import annotations

import os
import sys

# The project root first: no script here may stand in for one of Tessera's packages
# (sibling scripts stay importable from this directory, next on the path).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import asyncio
import gc
import json
import multiprocessing as mp
import re
import signal
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any
from urllib.parse import quote

import grpc
import psycopg
import redis
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
    counter_rounds: int  # even, so that each store is as often before memory as after it
    counter_calls: int  # sequential calls per server per round
    counter_warmup: int  # calls per server before the first round, not counted


FULL = Budget(
    rounds=7, warmup=1.0, seconds=4.0, counter_rounds=10, counter_calls=500, counter_warmup=300
)
QUICK = Budget(
    rounds=3, warmup=0.5, seconds=1.5, counter_rounds=4, counter_calls=250, counter_warmup=100
)


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


class NotServing(Exception):
    """A ``tessera serve`` that did not start, with what it printed."""


@dataclass
class Served:
    """A ``tessera serve --workers N`` subprocess."""

    workers: int
    process: subprocess.Popen[str]
    port: int
    pids: list[int]  # the processes that serve: the workers, or the one server
    counted_in: str  # where it says limits are counted

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


def serve(workers: int, counters: str, *extra: str) -> Served:
    """Start ``tessera serve --workers N --counters WHERE`` and wait until every worker
    serves; :class:`NotServing` when it does not."""
    process = subprocess.Popen(
        [
            *(str(TESSERA), "serve", "--workers", str(workers), "--policies", str(POLICIES)),
            *("--store", "", "--counters", counters, "--port", "0", "--metrics-port", "-1"),
            *("--cache-size", "0", "--grace", "1", *extra),
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
            process.wait(timeout=10)
            raise NotServing(
                f"tessera serve --workers {workers} --counters {counters} did not start "
                f"(its error is on standard error above): {''.join(lines).strip()!r}"
            )
        lines.append(line)
    text = "".join(lines)
    port = int(re.findall(r"Authorizer on 127\.0\.0\.1:(\d+)", text)[0])
    pids = [int(pid) for pid in re.findall(r"serving, pid (\d+)", text)] or [process.pid]
    counted_in = re.findall(r"limits counted in (.*)", text)
    return Served(workers, process, port, pids, counted_in[0] if counted_in else "")


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

POSTGRES_URL = os.environ.get("TESSERA_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("TESSERA_TEST_REDIS", "redis://127.0.0.1:6379/0")
LIMITED_RULE = "agents.small_transfers"
AMOUNT_USD = "0.01"  # a call's transfer: the rule's 5,000 USD a day holds 500,000 of them
CAP_CALLS = 500_000
COUNTERS_TIMEOUT = "1"  # seconds: a slow charge is measured, not refused (default 0.1)
TARGET_REDIS_ADDED_US = 250.0  # Redis over memory, p50 of a limited Authorize
COUNTED_IN = {  # row -> how `tessera serve` names the store it counts limits in
    "memory": "memory",
    "redis": "the Redis counter store",
    "postgresql": "the PostgreSQL counter store",
    "sqlite": "the SQLite counter store",
}


class Unmeasured(Exception):
    """Why a counter row has no numbers: its server unreachable or not started, or the
    limited request not decided by a limit on that store."""


@dataclass
class Store:
    """One counter store's row: the server that counts in it, or why there is none."""

    name: str
    counters: str = ""  # the --counters value
    served: Served | None = None
    why: str = ""


def limited_request(agent: str, amount: str = AMOUNT_USD) -> pb.AuthorizeRequest:
    """A transfer that ``agents.small_transfers`` allows under its daily cap per agent.
    With no store the caller sends the agent's attributes."""
    return pb.AuthorizeRequest(
        agent=pb.Agent(
            id=agent,
            attributes={
                "status": pb.Value(string="active"),
                "risk": pb.Value(risk="low"),
                "purpose": pb.Value(string="payments"),
            },
        ),
        action="tool.call",
        resource=pb.Resource(type="tool", id="payments.transfer"),
        context={"amount": pb.Value(money=pb.Money(amount=amount, currency="USD"))},
    )


def redis_counters(stack: ExitStack, agent: str) -> str:
    """The --counters URL of Redis, whose keys of the run's agents go at the end."""
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=5, socket_connect_timeout=5)
    try:
        client.ping()
    except redis.RedisError as e:
        client.close()
        raise Unmeasured(f"Redis at {REDIS_URL} is not reachable: {one_line(e)}") from None
    stack.callback(client.close)
    stack.callback(forget, client, agent)
    return REDIS_URL


def forget(client: redis.Redis, agent: str) -> None:
    """Delete the counts of the run's agents (idle keys would expire in a day anyway)."""
    for key in client.scan_iter(match=f"tessera:*{{{agent}*", count=500):
        client.delete(key)


def postgres_counters(stack: ExitStack) -> str:
    """The --counters URL of a PostgreSQL schema made for the run, dropped at the end."""
    schema = f"bench_{uuid.uuid4().hex}"
    try:
        admin = psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=5)
        stack.callback(admin.close)
        admin.execute(f"CREATE SCHEMA {schema}")
    except psycopg.Error as e:
        raise Unmeasured(f"PostgreSQL at {POSTGRES_URL} is not reachable: {one_line(e)}") from None
    stack.callback(admin.execute, f"DROP SCHEMA {schema} CASCADE")
    joiner = "&" if "?" in POSTGRES_URL else "?"
    return f"{POSTGRES_URL}{joiner}options={quote(f'-c search_path={schema}')}"


def one_line(said: object) -> str:
    """A message or an answer on one line, for a row's reason."""
    return " ".join(str(said).split())


def counter_servers(stack: ExitStack, tmp: Path, agent: str) -> list[Store]:
    """A one-worker server per store, started and checked, stopped when ``stack`` closes
    (before the store it counts in is cleaned up); or why not."""
    urls: dict[str, Callable[[], str]] = {
        "memory": lambda: "memory",
        "redis": lambda: redis_counters(stack, agent),
        "postgresql": lambda: postgres_counters(stack),
        "sqlite": lambda: f"sqlite:///{tmp}/limits.db",
    }
    stores = []
    for name, url in urls.items():
        store = Store(name)
        try:
            store.counters = url()
            served = serve(1, store.counters, "--counters-timeout", COUNTERS_TIMEOUT)
            stack.callback(stop, served)
            check_limited(served, name, agent)
            store.served = served
        except (Unmeasured, NotServing) as e:
            store.why = str(e)
        stores.append(store)
    return stores


def check_limited(served: Served, name: str, agent: str) -> None:
    """The limited request is allowed by ``agents.small_transfers``, decided by a limit
    counted in the store the row names, unlike the typical request; else Unmeasured."""
    if not served.counted_in.startswith(COUNTED_IN[name]):
        raise Unmeasured(f"the server counts limits in {served.counted_in!r}, not in {name}")
    with grpc.insecure_channel(f"{HOST}:{served.port}") as channel:
        call = channel.unary_unary(AUTHORIZE_METHOD)

        def ask(request: pb.AuthorizeRequest) -> pb.AuthorizeResponse:
            raw = call(request.SerializeToString(), timeout=CALL_TIMEOUT_S)
            return pb.AuthorizeResponse.FromString(raw)

        try:
            limited, typical = ask(limited_request(agent)), ask(typical_request())
            capped = [ask(limited_request(f"{agent}-cap", "1000")) for _ in range(6)]
        except grpc.RpcError as e:
            raise Unmeasured(f"the check's call failed: {one_line(e)}") from None
    if not limited.allow or list(limited.decided_by) != [LIMITED_RULE] or limited.cacheable:
        raise Unmeasured(
            f"the limited request is not allowed by {LIMITED_RULE} under its limit: "
            f"{one_line(limited)}"
        )
    if not typical.cacheable:
        raise Unmeasured("the typical request is not cacheable: a limit may decide it too")
    if [a.allow for a in capped] != [True] * 5 + [False]:
        raise Unmeasured(
            "of six transfers of 1,000 USD, not the first five allowed and the sixth denied "
            f"(the daily cap of 5,000 USD): {[a.allow for a in capped]}"
        )


def timed_calls(call: Any, payload: bytes, count: int) -> tuple[list[float], int]:
    """µs of each of ``count`` calls, one after another, and how many were not allowed
    (answered with a deny or an error: their time is kept, and they are reported)."""
    clock = time.perf_counter_ns
    out, failed = [], 0
    for _ in range(count):
        start = clock()
        try:
            raw = call(payload, timeout=CALL_TIMEOUT_S)
        except grpc.RpcError:
            raw = b""
        out.append((clock() - start) / 1000)
        if not raw or not pb.AuthorizeResponse.FromString(raw).allow:
            failed += 1
    return out, failed


def percentiles(latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return {"p50_us": statistics.median(ordered), "p99_us": p99}


def latency_rounds(
    servers: dict[str, Served], payload: bytes, budget: Budget
) -> dict[str, list[dict[str, float]]]:
    """Each server's p50 and p99 per round, the order reversed every other round; the
    client's garbage collector off while timing."""
    names = list(servers)
    records: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    with ExitStack() as stack:
        calls = {}
        for name, served in servers.items():
            channel = stack.enter_context(grpc.insecure_channel(f"{HOST}:{served.port}"))
            calls[name] = channel.unary_unary(AUTHORIZE_METHOD)
            timed_calls(calls[name], payload, budget.counter_warmup)
        gc.collect()
        gc.disable()
        try:
            for number in range(budget.counter_rounds):
                for name in names if number % 2 == 0 else reversed(names):
                    latencies, failed = timed_calls(calls[name], payload, budget.counter_calls)
                    records[name].append({**percentiles(latencies), "failed": failed})
        finally:
            gc.enable()
    return records


def counter_row(
    store: Store, rounds: list[dict[str, float]], memory: list[dict[str, float]]
) -> dict[str, Any]:
    """A store's medians over the rounds and, paired per round, what it adds to memory."""
    assert store.served is not None
    row: dict[str, Any] = {"store": store.name, "counters": store.counters}
    row["counted_in"] = store.served.counted_in
    for key in ("p50_us", "p99_us"):
        row[key] = round(statistics.median(r[key] for r in rounds), 1)
    for key in ("p50_us", "p99_us") if rounds is not memory else ():
        added = [r[key] - m[key] for r, m in zip(rounds, memory, strict=True)]
        row[f"added_{key}"] = round(statistics.median(added), 1)
    row["failed"] = int(sum(r["failed"] for r in rounds))
    row["rounds"] = [{k: round(v, 1) for k, v in r.items()} for r in rounds]
    return row


def counter_rows(budget: Budget, tmp: Path) -> list[dict[str, Any]]:
    """Limit-counter latency rows: memory, then Redis, PostgreSQL and SQLite, each with
    what it adds over memory; a row that could not be measured says why."""
    assert budget.counter_warmup + budget.counter_rounds * budget.counter_calls < CAP_CALLS
    agent = f"bench-{uuid.uuid4().hex[:12]}"
    with ExitStack() as stack:
        stores = counter_servers(stack, tmp, agent)
        if stores[0].served is None:  # memory: without the baseline, no row is measured
            for store in stores[1:]:
                store.served, store.why = None, f"memory was not measured: {stores[0].why}"
        servers = {s.name: s.served for s in stores if s.served is not None}
        payload = limited_request(agent).SerializeToString()
        records = latency_rounds(servers, payload, budget) if servers else {}
    return [
        counter_row(s, records[s.name], records["memory"])
        if s.name in records
        else {
            "store": s.name,
            **({"counters": s.counters} if s.counters else {}),
            "not_measured": s.why,
        }
        for s in stores
    ]


def evaluate_counters(rows: list[dict[str, Any]]) -> tuple[Target, str]:
    """The Redis target, and what to say about it."""
    by_store = {row["store"]: row for row in rows}
    name = "Redis: added p50 of a limited Authorize over memory, µs"
    limit = f"<= {TARGET_REDIS_ADDED_US:g} µs on loopback"
    row = by_store["redis"]
    if "not_measured" in row:
        return Target(name, limit, None, None), f"NOT MEASURED: {row['not_measured']}"
    value = row["added_p50_us"]
    failed = row["failed"] + by_store["memory"]["failed"]
    if failed:
        return Target(name, limit, value, False), f"{failed} limited calls were not allowed"
    why = "store minus memory per round, the median of the rounds"
    return Target(name, limit, value, value <= TARGET_REDIS_ADDED_US), why


def counter_problems(rows: list[dict[str, Any]]) -> list[str]:
    """What ``--strict`` refuses besides the target (which speaks for the Redis row): rows
    not measured, calls that failed."""
    problems = []
    for row in rows:
        if row["store"] == "redis":
            continue
        if "not_measured" in row:
            problems.append(f"{row['store']} not measured: {row['not_measured']}")
        elif row["failed"]:
            problems.append(f"{row['store']}: {row['failed']} limited calls were not allowed")
    return problems


# ------------------------------------------------------------------ the run


def run(budget: Budget, client_count: int, tmp: Path) -> dict[str, Any]:
    """The scaling rows: every server started, then the rounds; the servers stopped."""
    cores = usable_cores()
    counts = rows(cores)
    records: dict[str, list[dict[str, float]]] = {name: [] for name in counts}
    with ExitStack() as stack:
        servers = {}
        for name, workers in counts.items():
            servers[name] = serve(workers, scale_counters(tmp))
            stack.callback(stop, servers[name])
            check(servers[name])
        pipes = stack.enter_context(clients(client_count))
        names = list(counts)
        for number in range(budget.rounds):
            for name in names if number % 2 == 0 else reversed(names):
                records[name].append(measure(servers[name], pipes, budget))
    return summarize(records, counts, cores, client_count)


def scale_counters(tmp: Path) -> str:
    """Where the scaling rows' servers would count limits: several workers refuse memory;
    the typical request touches no limit, so the file is never opened."""
    return f"sqlite:///{tmp}/counters.db"


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
    print_counters(result)
    print("\ntargets")
    for target in (result["target"], result["counters_target"]):
        print(
            f"  {target['verdict']:4}  {target['name']}: {fmt(target['value'], 2)} "
            f"({target['limit']})"
        )
        print(f"        {target['why']}")
    print(f"\n{result['seconds']} s")


def print_counters(result: dict[str, Any]) -> None:
    """The limit-counter rows: µs of a limited Authorize, and what each store adds."""
    method = result["method"]
    print(
        f"\nlimit counters: a limited Authorize (allowed by {LIMITED_RULE}), 1 worker, "
        f"1 caller, one call at a time; {method['counter_rounds']} rounds of "
        f"{method['counter_calls']} calls per server, ABBA against memory\n"
    )
    print(
        f"  {'store':11} {'p50 µs':>8} {'p99 µs':>8} {'added p50':>10} {'added p99':>10} "
        f"{'failed':>7}  counted in"
    )
    for row in result["counters"]:
        if "not_measured" in row:
            print(f"  {row['store']:11} not measured: {row['not_measured']}")
            continue
        print(
            f"  {row['store']:11} {row['p50_us']:8.0f} {row['p99_us']:8.0f} "
            f"{fmt(row.get('added_p50_us'), 0):>10} {fmt(row.get('added_p99_us'), 0):>10} "
            f"{row['failed']:7d}  {row['counted_in']}"
        )


def strict_failures(result: dict[str, Any]) -> list[str]:
    """Why ``--strict`` exits 1: a measured miss of the scaling target; the counter target
    failed or not measured; a counter row not measured or with failed calls."""
    scale, counters = result["target"], result["counters_target"]
    judged = [t for t in (scale, counters) if t["pass"] is False] + (
        [counters] if counters["pass"] is None else []
    )
    return [
        f"{t['verdict']} {t['name']}: {fmt(t['value'], 2)} ({t['limit']}): {t['why']}"
        for t in judged
    ] + counter_problems(result["counters"])


def measure_all(args: Any, budget: Budget) -> dict[str, Any]:
    """Both parts in one run, in one temporary directory removed at the end."""
    started, load = time.perf_counter(), round(os.getloadavg()[0], 2)
    with tempfile.TemporaryDirectory(prefix="tessera-scale-") as tmp:
        try:
            measured = run(budget, args.clients, Path(tmp))
        except NotServing as e:
            raise SystemExit(str(e)) from None
        counters = counter_rows(budget, Path(tmp))
    target, why = evaluate(measured)
    counters_target, counters_why = evaluate_counters(counters)
    return {
        "benchmark": "scale",
        "environment": environment(args.quick, grpcio=grpc.__version__),
        "method": {
            "host": HOST,
            "server": "tessera serve --workers N --store '' --counters "
            "sqlite:///<temp dir>/counters.db --cache-size 0",
            "channels_per_client": CHANNELS,
            "in_flight_per_channel": IN_FLIGHT,
            "order": "rounds, every row once each, the order reversed every other round",
            "counter_server": "tessera serve --workers 1 --store '' --counters X "
            f"--counters-timeout {COUNTERS_TIMEOUT} --cache-size 0, one per store",
            "counter_request": f"payments.transfer of {AMOUNT_USD} USD by an agent of the "
            f"run, allowed by {LIMITED_RULE}; 1 caller, one call at a time",
            "counter_order": "rounds, every store once each, the order reversed every "
            "other round (ABBA against memory); p50 and p99 per round, medians of rounds",
            **asdict(budget),
        },
        "measured": measured,
        "target": {**target.to_json(3), "why": why},
        "counters": counters,
        "counters_target": {**counters_target.to_json(1), "why": counters_why},
        "load_average_1m": {"start": load, "end": round(os.getloadavg()[0], 2)},
        "seconds": round(time.perf_counter() - started, 1),
    }


def main() -> None:
    parser = benchmark_parser(
        "Authorize decisions/s of tessera serve with 1, 2 and auto workers, loaded by "
        "several client processes; interleaved rounds, medians, ratio to 1 worker. Then "
        "the latency a limited Authorize gets from Redis, PostgreSQL and SQLite counters "
        "over memory.",
        quick="3 rounds of 1.5 s windows and 4 counter rounds of 250 calls, about 30 s "
        "(noisier numbers)",
    )
    parser.add_argument(
        "--clients",
        type=int,
        default=max(2, usable_cores()),
        metavar="N",
        help="client processes (default: one per usable core, at least 2)",
    )
    args = parser.parse_args()
    result = measure_all(args, QUICK if args.quick else FULL)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_report(result)
    if result["target"]["pass"] is None:
        print(
            f"scale: the 2-worker check was not judged: {result['target']['why']}", file=sys.stderr
        )
    failures = strict_failures(result)
    if args.strict and failures:
        for failure in failures:
            print(f"--strict: {failure}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
