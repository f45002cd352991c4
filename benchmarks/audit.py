"""What auditing every decision costs the gRPC service, and whether the audit writer keeps up.

What it measures, in one run, over loopback (127.0.0.1) only, against servers started as
``pdp.server.start(engine, HOST, 0, cache_size=0, audit=..., durability=...)`` with the
shipped policies, no directory (requests carry the agent's attributes), each in its own
process (multiprocessing, spawn):

* **off**: ``audit=None``, the baseline;
* **async**: an ``AuditWriter`` on a fresh SQLite file, ``durability="async"``, and the
  anomaly watcher process following the agent trail, as ``tessera serve`` runs them (its
  CPU is reported beside the server's, not in it);
* **sync**: the same with ``durability="sync"`` (an extra row, no target);
* **async, PostgreSQL**: the writer on a fresh schema of the PostgreSQL database at
  ``TESSERA_TEST_POSTGRES`` (default ``postgresql://postgres@127.0.0.1:5432/test``), dropped
  after. When the database cannot be reached the row is skipped, saying why, and its
  target is not measured; ``--strict`` then exits 1 before measuring anything.

Each server reports its port through a queue and answers over a pipe: its CPU time
(``time.process_time``, all threads, the writer thread included), and the writer's counters:
records submitted, records committed (``AuditWriter.written``), how often a record found
the queue full (``AuditWriter.full``: backpressure with sync; with async the record is
then dropped, counted in ``AuditWriter.dropped``), and the
deepest queue the writer found when it took a batch (``AuditWriter.deepest``) since the
last read.

Every round's window lasts at least ``WINDOW_S`` (five of the async writer's ``GATHER``
intervals, whatever the call count), so it holds several of the writer's batch commits.

Phases:

* (a) sequential ``Authorize`` from a sync ``grpc`` client, one call at a time, after a
  warm-up: median latency and server CPU µs per call. off / async (and sync) alternate over
  15 rounds so drift hits them alike; the writer's queue is drained before each round.
  Target: the median over rounds of each round's CPU per call async / off ≤ 1.10 (as
  ``ext_authz.py`` does: one noisy round cannot decide it).
* (b) ``AuthorizeBatch`` of 100 requests, sequential calls: decisions/s, and for audited
  servers the writer's records/s between its first and last commit in the window (the
  records the later commits wrote over the time between: no commit is cut by the window's
  edges), the records still queued at its end, and backpressure. The queue is drained
  before each round's warm-up, not after it, so the window is in steady state.
  Target: writer records/s ≥ 0.99 × the audited server's decisions/s, with no
  backpressure. Alternates off / async like (a).
* writer capacity: in the async server process, the writer alone, saturated: N copies of a
  real decision record submitted as fast as the queue takes them, timed until committed.
  Compared (no target) with the audit-off ``AuthorizeBatch`` decisions/s: the headroom.

The request is ``grpc_service.py``'s: agent "helper" (active, risk low) calling tool
"search", allowed by ``agents.read_only``; the client sends pre-serialized bytes. Client and
servers share the machine's cores; the writer thread shares its server's GIL.

    python benchmarks/audit.py [--json] [--quick] [--strict]
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
import sqlite3
import statistics
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import grpc
from engine import (
    Target,
    benchmark_parser,
    environment,
    finish,
    percentile,
    print_targets,
    ratio,
    refuse_skips,
)

from pdp.audit.writer import GATHER
from pdp.serve.proto import authorizer_pb2 as pb

ROOT = Path(__file__).resolve().parent.parent
POLICIES = ROOT / "policies"
HOST = "127.0.0.1"
POSTGRES_URL = os.environ.get("TESSERA_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")

AUTHORIZE_METHOD = "/tessera.v1.Authorizer/Authorize"
BATCH_METHOD = "/tessera.v1.Authorizer/AuthorizeBatch"
BATCH_SIZE = 100
START_TIMEOUT_S = 30.0
CALL_TIMEOUT_S = 30.0
DRAIN_TIMEOUT_S = 60.0
CPU_RATIO_LIMIT = 1.10
WRITER_KEEPS_UP = 0.99
# A round's window holds several of the async writer's batch commits (one per GATHER
# seconds), so it measures their cost and rate rather than the moment one lands.
WRITES_PER_WINDOW = 5
WINDOW_S = WRITES_PER_WINDOW * GATHER
PG_ROW = "async_pg (the audit writer on PostgreSQL)"


@dataclass(frozen=True)
class Budget:
    warmup: int
    sequential: int  # Authorize calls per server, over all rounds (at least; see WINDOW_S)
    batches: int  # AuthorizeBatch calls per server, over all rounds (at least)
    rounds: int  # AuthorizeBatch rounds
    sequential_rounds: int  # Authorize rounds, off / async / sync alternating
    capacity: int  # records for the saturated writer


FULL = Budget(
    warmup=300, sequential=3_000, batches=1_500, rounds=3, sequential_rounds=15, capacity=30_000
)
QUICK = Budget(warmup=50, sequential=300, batches=12, rounds=2, sequential_rounds=2, capacity=3_000)


def typical_request() -> pb.AuthorizeRequest:
    return pb.AuthorizeRequest(
        agent=pb.Agent(
            id="helper",
            attributes={"status": pb.Value(string="active"), "risk": pb.Value(risk="low")},
        ),
        action="tool.call",
        resource=pb.Resource(type="tool", id="search"),
    )


def redacted(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")))


# ------------------------------------------------------------------ server processes


class Counting:
    """Wraps the writer's queueing methods to count the records submitted, and its commit
    to note when each batch committed and the records written by then; backpressure and
    the deepest queue are the writer's own counters (``full``, ``deepest``)."""

    def __init__(self, writer: Any) -> None:
        self.writer = writer
        self.submitted = 0
        self.full_seen = writer.full
        self.last_record: Any = None
        self.commits: deque[tuple[float, int]] = deque(maxlen=100_000)  # since the last stats
        offer, nowait, blocking = writer.offer, writer.submit_nowait, writer.submit
        commit = writer._commit

        def noted_commit(batch: Any, stopping: bool) -> None:
            commit(batch, stopping)
            self.commits.append((time.perf_counter(), writer.written))

        def counted_offer(trail: str, record: Any, *weight: Any) -> bool:
            queued: bool = offer(trail, record, *weight)
            if queued:
                self.submitted += 1
                self.last_record = record
            return queued

        def submit_nowait(trail: str, record: Any, *weight: Any) -> Any:
            done = nowait(trail, record, *weight)
            if done is not None:
                self.submitted += 1
                self.last_record = record
            return done

        def submit(trail: str, record: Any, **options: Any) -> Any:
            done = blocking(trail, record, **options)
            self.submitted += 1
            return done

        writer.offer, writer.submit_nowait, writer.submit = counted_offer, submit_nowait, submit
        writer._commit = noted_commit

    @property
    def full(self) -> int:
        return int(self.writer.full) - self.full_seen

    def stats(self) -> dict[str, Any]:
        out = {
            "submitted": self.submitted,
            "written": self.writer.written,
            "full": self.full,
            "max_depth": self.writer.deepest,
            "depth": self.writer.depth(),
            "watcher_cpu": watcher_cpu(),
            "commits": list(self.commits),
        }
        self.writer.deepest = 0
        self.commits.clear()
        return out

    def drain(self) -> bool:
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.writer.written >= self.submitted:
                return True
            time.sleep(0.002)
        return False

    def capacity(self, n: int) -> dict[str, Any]:
        """The writer alone, saturated: n copies of a real record, timed until committed."""
        if not self.drain() or self.last_record is None:
            raise RuntimeError("the writer did not drain, or saw no record")
        record, writer = self.last_record, self.writer
        start = writer.written
        cpu0, t0 = time.process_time(), time.perf_counter()
        for _ in range(n):
            writer.put("agent", record)
        if not self.drain():
            raise RuntimeError("the writer did not commit the capacity records in time")
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        committed = writer.written - start
        tail = writer.store.audit_tail("agent")
        return {
            "records": committed,
            "records_per_s": round(committed / elapsed),
            "cpu_us_per_record": round(cpu * 1e6 / committed, 1),
            "tail_seq": None if tail is None else tail.seq,
        }


WATCHER: Any = None  # the server process's anomaly watcher, a child process


def watcher_cpu() -> float:
    """CPU seconds the anomaly watcher process has used (0 without one)."""
    if WATCHER is None or WATCHER.process is None:
        return 0.0
    fields = Path(f"/proc/{WATCHER.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


async def _start(mode: str, store_url: str | None) -> tuple[Any, Any]:
    from issuer.store import open_store
    from pdp.audit.baselines import AnomalyThresholds
    from pdp.audit.watch import Watcher
    from pdp.audit.writer import GATHER, AuditWriter
    from pdp.engine import Engine
    from pdp.loader import load_directory
    from pdp.server import start

    engine = Engine(load_directory(POLICIES).bundle)
    durability = "sync" if mode == "sync" else "async"
    gather = 0.0 if durability == "sync" else GATHER  # as tessera serve configures it
    writer = None if store_url is None else AuditWriter(open_store(store_url), gather=gather)
    running = await start(engine, HOST, 0, cache_size=0, audit=writer, durability=durability)
    if writer is not None:  # as tessera serve runs it: anomaly detection in its own process
        assert store_url is not None
        global WATCHER
        WATCHER = Watcher(store_url, AnomalyThresholds())
        WATCHER.start()
    return running, writer


def serve(name: str, mode: str, store_url: str | None, ports: Any, control: Connection) -> None:
    """A server process: serve on an event loop thread; answer requests until stop."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        future = asyncio.run_coroutine_threadsafe(_start(mode, store_url), loop)
        server, writer = future.result(START_TIMEOUT_S)
    except Exception as exc:  # report, so the parent does not wait for a port forever
        ports.put((name, None, repr(exc)))
        return
    counting = None if writer is None else Counting(writer)
    ports.put((name, server.port, None))
    try:
        while control.poll(600):  # bounded: a parent that went away leaves within minutes
            command, *args = control.recv()
            if command == "cpu":
                control.send(time.process_time())
            elif command == "stats":
                control.send(None if counting is None else counting.stats())
            elif command == "drain":
                control.send(True if counting is None else counting.drain())
            elif command == "capacity" and counting is not None:
                try:
                    control.send(counting.capacity(*args))
                except Exception as exc:
                    control.send(repr(exc))
            else:
                break
    except EOFError:
        pass
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(0), loop).result(10)
        if WATCHER is not None:
            WATCHER.stop()
        if writer is not None:
            assert counting is not None
            writer.close()
            writer.store.close()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)


@dataclass
class Proc:
    name: str
    process: Any
    control: Connection
    port: int = 0

    def ask(self, *command: Any, timeout: float = 10) -> Any:
        self.control.send(command)
        if not self.control.poll(timeout):
            raise RuntimeError(f"the {self.name} server did not answer {command[0]!r}")
        return self.control.recv()

    def cpu(self) -> float:
        value: float = self.ask("cpu")
        return value

    def drain(self) -> None:
        if not self.ask("drain", timeout=DRAIN_TIMEOUT_S + 5):
            raise RuntimeError(f"the {self.name} server's audit writer did not drain")


def launch(ctx: Any, ports: Any, servers: dict[str, tuple[str, str | None]]) -> dict[str, Proc]:
    procs: dict[str, Proc] = {}
    for name, (mode, url) in servers.items():
        parent, child = ctx.Pipe()
        process = ctx.Process(target=serve, args=(name, mode, url, ports, child), daemon=True)
        process.start()
        procs[name] = Proc(name, process, parent)
    for _ in servers:
        name, port, error = ports.get(timeout=START_TIMEOUT_S)
        if port is None:
            raise RuntimeError(f"the {name} server failed to start: {error}")
        procs[name].port = port
    return procs


def shutdown(procs: dict[str, Proc]) -> None:
    for proc in procs.values():
        with contextlib.suppress(OSError, ValueError):
            proc.control.send(("stop",))
    for proc in procs.values():
        proc.process.join(timeout=15)
        if proc.process.is_alive():
            proc.process.terminate()
            proc.process.join(timeout=5)
        if proc.process.is_alive():
            proc.process.kill()
            proc.process.join(timeout=5)
        proc.control.close()


@contextlib.contextmanager
def postgres_url() -> Iterator[tuple[str | None, str]]:
    """A fresh schema (the URL sets it as the search_path), dropped after; (None, why)
    when PostgreSQL cannot be reached."""
    try:
        import psycopg

        admin = psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=5)
    except Exception as exc:
        reason = " ".join(str(exc).split())  # psycopg's message runs over several lines
        yield None, f"not reachable at {redacted(POSTGRES_URL)}: {reason}"
        return
    schema = f"bench_{uuid.uuid4().hex}"
    with admin:
        row = admin.execute("SHOW server_version").fetchone()
        admin.execute(f"CREATE SCHEMA {schema}")
        try:
            options = quote(f"-c search_path={schema}")
            yield (
                f"{POSTGRES_URL}?options={options}&application_name={schema}",
                f"PostgreSQL {row[0] if row else '?'}, schema {schema} (dropped after)",
            )
        finally:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")


# ------------------------------------------------------------------ measuring


def check(proc: Proc, payload: bytes) -> None:
    with grpc.insecure_channel(f"{HOST}:{proc.port}") as channel:
        raw = channel.unary_unary(AUTHORIZE_METHOD)(payload, timeout=CALL_TIMEOUT_S)
    answer = pb.AuthorizeResponse.FromString(raw)
    if not answer.allow or list(answer.decided_by) != ["agents.read_only"]:
        raise RuntimeError(f"unexpected decision from {proc.name}: {answer}")


def sequential_round(proc: Proc, payload: bytes, warmup: int, n: int) -> tuple[list[float], float]:
    """Latencies in µs of at least n calls, one at a time, over at least WINDOW_S, and the
    server's CPU seconds over them."""
    proc.drain()
    with grpc.insecure_channel(f"{HOST}:{proc.port}") as channel:
        stub = channel.unary_unary(AUTHORIZE_METHOD)
        for _ in range(warmup):
            stub(payload, timeout=CALL_TIMEOUT_S)
        proc.drain()
        out: list[float] = []
        cpu0 = proc.cpu()
        ends = time.perf_counter() + WINDOW_S
        while len(out) < n or time.perf_counter() < ends:
            t0 = time.perf_counter_ns()
            stub(payload, timeout=CALL_TIMEOUT_S)
            out.append((time.perf_counter_ns() - t0) / 1_000)
        cpu1 = proc.cpu()
    return out, cpu1 - cpu0


def batch_round(proc: Proc, batch: bytes, warmup: int, n: int) -> dict[str, Any]:
    """At least n AuthorizeBatch calls over at least WINDOW_S: the decisions, the server's
    CPU, and what the writer committed and queued meanwhile."""
    proc.drain()
    with grpc.insecure_channel(f"{HOST}:{proc.port}") as channel:
        stub = channel.unary_unary(BATCH_METHOD)
        for _ in range(warmup):  # not drained after: the window starts in steady state
            stub(batch, timeout=CALL_TIMEOUT_S)
        before = proc.ask("stats")
        cpu0 = proc.cpu()
        t0 = time.perf_counter()
        calls = 0
        while calls < n or time.perf_counter() - t0 < WINDOW_S:
            stub(batch, timeout=CALL_TIMEOUT_S)
            calls += 1
        elapsed = time.perf_counter() - t0
        after = proc.ask("stats")
        cpu1 = proc.cpu()
    out: dict[str, Any] = {"elapsed": elapsed, "cpu": cpu1 - cpu0, "decisions": calls * BATCH_SIZE}
    if before is not None:
        # The writer's rate between its first and last commit in the window: the records
        # the later commits wrote over the time between, whatever the window's edges cut.
        commits = after["commits"]
        if len(commits) >= 2:
            out["commit_span_s"] = commits[-1][0] - commits[0][0]
            out["committed_in_span"] = commits[-1][1] - commits[0][1]
        out["commits"] = len(commits)
        out["committed"] = after["written"] - before["written"]
        out["full"] = after["full"] - before["full"]
        out["max_depth"] = after["max_depth"]
        out["depth_at_end"] = after["depth"]
        out["lag_at_end"] = after["submitted"] - after["written"]
        out["watcher_cpu"] = after["watcher_cpu"] - before["watcher_cpu"]
    return out


def summarize_sequential(latencies: list[float], cpu: float) -> dict[str, Any]:
    return {
        "calls": len(latencies),
        "median_us": round(statistics.median(latencies), 1),
        "p99_us": round(percentile(latencies, 0.99), 1),
        "server_cpu_us_per_call": round(cpu * 1e6 / len(latencies), 1),
    }


def summarize_batch(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    elapsed = sum(r["elapsed"] for r in rounds)
    decisions = sum(r["decisions"] for r in rounds)
    out: dict[str, Any] = {
        "batch_size": BATCH_SIZE,
        "calls": decisions // BATCH_SIZE,
        "decisions_per_s": round(decisions / elapsed),
        "server_cpu_us_per_decision": round(sum(r["cpu"] for r in rounds) * 1e6 / decisions, 2),
    }
    if "committed" in rounds[0]:
        committed = sum(r["committed"] for r in rounds)
        spanned = [r for r in rounds if "commit_span_s" in r]
        span = sum(r["commit_span_s"] for r in spanned)
        out.update(
            {
                # None when no round held two commits: the writer's rate was not seen
                "writer_records_per_s": (
                    round(sum(r["committed_in_span"] for r in spanned) / span) if span else None
                ),
                "writer_commits_in_windows": sum(r["commits"] for r in rounds),
                "records_committed_in_window": committed,
                "backpressure_events": sum(r["full"] for r in rounds),
                "max_queue_depth": max(r["max_depth"] for r in rounds),
                "max_lag_at_end": max(r["lag_at_end"] for r in rounds),
                # the anomaly watcher, another process: not server CPU, shown beside it
                "watcher_cpu_us_per_record": round(
                    sum(r["watcher_cpu"] for r in rounds) * 1e6 / max(committed, 1), 2
                ),
            }
        )
    return out


def run(budget: Budget, postgres: tuple[str | None, str]) -> dict[str, Any]:
    """Every phase, on the servers: off, async and sync on SQLite, and async on
    ``postgres`` (its URL, or None; and what it is or why there is none)."""
    request = typical_request()
    payload = request.SerializeToString()
    batch = pb.AuthorizeBatchRequest(requests=[request] * BATCH_SIZE).SerializeToString()
    ctx = mp.get_context("spawn")
    ports = ctx.Queue()
    procs: dict[str, Proc] = {}
    stores: dict[str, str] = {}
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tessera-audit-")))
        servers: dict[str, tuple[str, str | None]] = {
            "off": ("off", None),
            "async": ("async", f"sqlite:///{tmp}/async.db"),
            "sync": ("sync", f"sqlite:///{tmp}/sync.db"),
        }
        stores["sqlite"] = f"SQLite {sqlite3.sqlite_version}, file in a temporary directory"
        url, stores["postgresql"] = postgres
        if url is not None:
            servers["async_pg"] = ("async", url)
        try:
            procs = launch(ctx, ports, servers)
            for proc in procs.values():
                check(proc, payload)
            # (a) sequential Authorize, off / async / sync alternating
            per_round = max(1, budget.sequential // budget.sequential_rounds)
            seq_names = ["off", "async", "sync"]
            lat: dict[str, list[float]] = {n: [] for n in seq_names}
            cpu: dict[str, float] = dict.fromkeys(seq_names, 0.0)
            paired: list[float] = []  # each round's async / off CPU per call
            for i in range(budget.sequential_rounds):
                spent_in_round: dict[str, float] = {}
                for name in seq_names:
                    warm = budget.warmup if i == 0 else budget.warmup // 10
                    values, spent = sequential_round(procs[name], payload, warm, per_round)
                    lat[name] += values
                    cpu[name] += spent
                    spent_in_round[name] = spent
                if spent_in_round["off"] > 0:
                    paired.append(spent_in_round["async"] / spent_in_round["off"])
            sequential = {n: summarize_sequential(lat[n], cpu[n]) for n in seq_names}
            rounds_ratio = {
                "median": round(statistics.median(paired), 3) if paired else None,
                "min": round(min(paired), 3) if paired else None,
                "max": round(max(paired), 3) if paired else None,
            }
            # (b) AuthorizeBatch x100, off / async (/ async on PostgreSQL) alternating
            batch_names = ["off", "async"] + (["async_pg"] if "async_pg" in procs else [])
            per_round = max(1, budget.batches // budget.rounds)
            rounds: dict[str, list[dict[str, Any]]] = {n: [] for n in batch_names}
            for _ in range(budget.rounds):
                for name in batch_names:
                    warm = max(5, per_round // 10)
                    rounds[name].append(batch_round(procs[name], batch, warm, per_round))
            batches = {n: summarize_batch(rounds[n]) for n in batch_names}
            # the writer alone, saturated
            capacity: dict[str, Any] = {}
            for name in batch_names[1:]:
                answer = procs[name].ask("capacity", budget.capacity, timeout=DRAIN_TIMEOUT_S * 3)
                if isinstance(answer, str):
                    raise RuntimeError(f"capacity on {name}: {answer}")
                capacity[name] = answer
        finally:
            shutdown(procs)
            ports.close()
            ports.join_thread()
    return {
        "stores": stores,
        "sequential": sequential,
        "sequential_rounds_cpu_async_over_off": rounds_ratio,
        "batch": batches,
        "capacity": capacity,
    }


def evaluate(
    measured: dict[str, Any], skipped: dict[str, str]
) -> tuple[dict[str, Any], list[Target]]:
    """The ratios and the targets; a row in ``skipped`` has its target not measured, a
    row left out by --no-postgres has none."""
    seq, batch, cap = measured["sequential"], measured["batch"], measured["capacity"]
    off_cpu = seq["off"]["server_cpu_us_per_call"]
    ratios: dict[str, Any] = {
        "cpu_per_call_async_over_off": ratio(seq["async"]["server_cpu_us_per_call"], off_cpu),
        "cpu_per_call_sync_over_off": ratio(seq["sync"]["server_cpu_us_per_call"], off_cpu),
        "latency_async_over_off": ratio(seq["async"]["median_us"], seq["off"]["median_us"]),
        "latency_sync_over_off": ratio(seq["sync"]["median_us"], seq["off"]["median_us"]),
    }
    off_rate = batch["off"]["decisions_per_s"]
    paired = measured["sequential_rounds_cpu_async_over_off"]["median"]
    targets = [
        Target(
            "Authorize server CPU per call, audit async / off (median of paired rounds)",
            f"<= {CPU_RATIO_LIMIT:.2f}x",
            paired,
            None if paired is None else paired <= CPU_RATIO_LIMIT,
        )
    ]
    for name, label in (("async", "SQLite"), ("async_pg", "PostgreSQL")):
        b = batch.get(name)
        if b is None:
            if name == "async_pg" and PG_ROW in skipped:
                target = f"audit writer keeps up with AuthorizeBatch ({label})"
                targets.append(Target(target, "", None, None, skipped[PG_ROW]))
            continue
        keeps = ratio(b["writer_records_per_s"], b["decisions_per_s"])
        ratios[f"batch_decisions_{name}_over_off"] = ratio(b["decisions_per_s"], off_rate)
        ratios[f"writer_over_decisions_{name}"] = keeps
        ratios[f"writer_capacity_{name}_over_off_decisions"] = ratio(
            cap[name]["records_per_s"], off_rate
        )
        targets.append(
            Target(
                f"audit writer keeps up with AuthorizeBatch ({label}): records/s over "
                "decisions/s, no backpressure",
                f">= {WRITER_KEEPS_UP:.2f}x and 0 full-queue events",
                keeps,
                None
                if keeps is None
                else keeps >= WRITER_KEEPS_UP and b["backpressure_events"] == 0,
                None if keeps is not None else "no window held two of the writer's commits",
            )
        )
    return ratios, targets


# ------------------------------------------------------------------ report


def x(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}x"


def print_report(result: dict[str, Any]) -> None:
    env, seq, batch = result["environment"], result["sequential"], result["batch"]
    cap, ratios = result["capacity"], result["ratios"]
    print(
        f"Audit cost on the gRPC service (Python {env['python']}, {env['machine']}, "
        f"grpcio {env['grpcio']}{', quick' if env['quick'] else ''})"
    )
    for backend, about in result["stores"].items():
        print(f"  {backend}: {about}")
    print(f"servers in their own processes on {HOST}, cache_size=0, no directory\n")
    print("(a) sequential Authorize")
    header = f"{'audit':18} {'median µs':>10} {'p99 µs':>10} {'CPU µs/call':>12} {'vs off':>8}"
    print(header)
    print("-" * len(header))
    for name, label in (("off", "off"), ("async", "async (SQLite)"), ("sync", "sync (SQLite)")):
        s = seq[name]
        r = None if name == "off" else ratios[f"cpu_per_call_{name}_over_off"]
        print(
            f"{label:18} {s['median_us']:>10,} {s['p99_us']:>10,} "
            f"{s['server_cpu_us_per_call']:>12,} {x(r):>8}"
        )
    paired = result["sequential_rounds_cpu_async_over_off"]
    print(
        f"server CPU async / off per round ({result['method']['sequential_rounds']} rounds): "
        f"median {paired['median']}x, min {paired['min']}x, max {paired['max']}x"
    )
    print(f"\n(b) AuthorizeBatch x{BATCH_SIZE}")
    header = (
        f"{'audit':20} {'decisions/s':>12} {'vs off':>7} {'CPU µs/dec':>11} "
        f"{'writer rec/s':>13} {'writer/dec':>11} {'full':>5} {'max queue':>10} "
        f"{'capacity rec/s':>15}"
    )
    print(header)
    print("-" * len(header))
    for name, label in (("off", "off"), ("async", "async (SQLite)"), ("async_pg", "async (PG)")):
        b = batch.get(name)
        if b is None:
            print(f"{label:20} not run: {result['stores']['postgresql']}")
            continue
        if name == "off":
            print(
                f"{label:20} {b['decisions_per_s']:>12,} {'':>7} "
                f"{b['server_cpu_us_per_decision']:>11}"
            )
            continue
        print(
            f"{label:20} {b['decisions_per_s']:>12,} "
            f"{x(ratios[f'batch_decisions_{name}_over_off']):>7} "
            f"{b['server_cpu_us_per_decision']:>11} {b['writer_records_per_s'] or 0:>13,} "
            f"{x(ratios[f'writer_over_decisions_{name}']):>11} {b['backpressure_events']:>5} "
            f"{b['max_queue_depth']:>10,} {cap[name]['records_per_s']:>15,}"
        )
    for name in cap:
        c = cap[name]
        print(
            f"  writer alone ({name}): {c['records']:,} records at {c['records_per_s']:,}/s, "
            f"{c['cpu_us_per_record']} µs CPU each; "
            f"{x(ratios[f'writer_capacity_{name}_over_off_decisions'])} the audit-off "
            "batch decision rate"
        )
    for name in cap:
        print(
            f"  anomaly watcher ({name}, its own process): "
            f"{result['batch'][name]['watcher_cpu_us_per_record']} µs CPU per record"
        )
    print_targets(result["_targets"], result["seconds"])


def main() -> None:
    parser = benchmark_parser(
        "Time what auditing costs Tessera's gRPC service: Authorize server CPU with the "
        "audit writer on vs off, and whether the writer keeps up with AuthorizeBatch.",
        quick="a short smoke run (noisy numbers)",
    )
    parser.add_argument("--no-postgres", action="store_true", help="skip the PostgreSQL row")
    args = parser.parse_args()

    budget = QUICK if args.quick else FULL
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        postgres: tuple[str | None, str] = (None, "left out (--no-postgres)")
        if not args.no_postgres:
            postgres = stack.enter_context(postgres_url())
        skipped = {} if args.no_postgres or postgres[0] is not None else {PG_ROW: postgres[1]}
        refuse_skips(args, skipped)
        measured = run(budget, postgres)
    ratios, targets = evaluate(measured, skipped)
    result: dict[str, Any] = {
        "benchmark": "audit",
        "environment": environment(args.quick, grpcio=grpc.__version__),
        "method": {
            "host": HOST,
            "servers": "one process each (multiprocessing spawn)",
            "pdp_cache_size": 0,
            "warmup_calls": budget.warmup,
            "sequential_calls": budget.sequential,
            "batch_calls": budget.batches,
            "rounds": budget.rounds,
            "sequential_rounds": budget.sequential_rounds,
            "capacity_records": budget.capacity,
            "window_s": f"at least {WINDOW_S:g} per round ({WRITES_PER_WINDOW} writer gathers)",
            "server_cpu": "time.process_time in the server process (all threads)",
            "queue_depth": "the writer's deepest queue when it took a batch",
            "postgres": redacted(POSTGRES_URL),
        },
        **measured,
        "ratios": ratios,
        "targets": [t.to_json(3) for t in targets],
        "seconds": round(time.perf_counter() - started, 1),
    }
    finish(result, targets, args, lambda r: print_report({**r, "_targets": targets}), skipped)


if __name__ == "__main__":
    main()
