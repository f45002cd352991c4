"""How soon a SCIM change reaches the PDP's decisions, on SQLite and on PostgreSQL.

What it measures, for each backend, against the real service as users run it: a
``tessera serve`` subprocess (``--policies policies --store URL``, gRPC and SCIM on ports
the OS picks on 127.0.0.1, metrics off), with a store made for the run: a SQLite file in a
temporary directory, or a fresh schema in the PostgreSQL database at
``TESSERA_TEST_POSTGRES`` (default ``postgresql://postgres@127.0.0.1:5432/test``), created
for the run and dropped after it.

Each sample is one agent's life, over the SCIM API and the gRPC ``Authorize`` call:

* **create → visible**: from sending ``POST /Agents`` (an active low-risk agent) to the
  first ``Authorize`` of that agent calling tool "search" that is allowed (by rule
  ``agents.read_only``). Until the PDP's directory snapshot has the agent, the answer is a
  deny "agent '<id>' is not in the directory";
* **suspend → visible**: from sending the ``PATCH`` that sets the agent's status to
  "suspended" to the first ``Authorize`` denied with "agent '<id>' is suspended".

The client learns the agent's id from the POST's answer, so it polls only after the SCIM
request has returned (the PATCH is timed the same way): a visibility time is the SCIM
request's own latency plus the time from its answer to the first decision that reflects
it. ``Authorize`` is polled back to back with a sync gRPC stub, one call at a time; each
wait is bounded at 5 s, and a wait that reaches the bound counts as a timeout (a miss).
Before each timed SCIM request the client pauses a random 0-50 ms (seeded), so changes
land at random points of the SQLite feed's 20 ms poll cycle; back to back, every sample
would start just after the poll that showed the previous change and wait a whole cycle.

Baseline, measured in the same run and on the same server: the SCIM request alone (the
POST, the PATCH) and a bare ``Authorize`` round trip. The ratio printed for each
visibility row is its median over the median of the SCIM request that caused it: 1x would
mean a change is decided on as soon as the request that made it has returned; what lies
above 1x is the PDP's change feed (SQLite: the directory thread polls a change counter
every 20 ms; PostgreSQL: LISTEN/NOTIFY) plus one ``Authorize`` round trip. The "after the
answer" rows show that difference sample by sample.

Target (from the issue): p99 ≤ 1 s for both operations on both backends, with no timeout.
Printed as PASS/FAIL; ``--strict`` exits 1 on a miss.

    python benchmarks/directory.py [--json] [--quick] [--strict] [--backend NAME]
"""

from __future__ import annotations

import os
import sys

# The project root first: no script here may stand in for one of Tessera's packages
# (sibling scripts stay importable from this directory, next on the path).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import contextlib
import random
import re
import secrets
import signal
import sqlite3
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import grpc
import httpx
import psycopg
from engine import (
    Target,
    benchmark_parser,
    environment,
    finish,
    fmt,
    percentile,
    ratio,
)

from issuer.models import AGENT_EXTENSION, AGENT_SCHEMA
from pdp.serve.proto import authorizer_pb2 as pb

ROOT = Path(__file__).resolve().parent.parent
POLICIES = ROOT / "policies"
HOST = "127.0.0.1"
POSTGRES_URL = os.environ.get("TESSERA_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
BACKENDS = ("sqlite", "postgresql")

AUTHORIZE_METHOD = "/tessera.v1.Authorizer/Authorize"
PATCH_OP = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
ALLOWED_BY = ["agents.read_only"]

VISIBILITY_BOUND_S = 5.0  # one wait for a change to show; reaching it is a timeout
START_TIMEOUT_S = 30.0  # for the server to print its ports
STOP_TIMEOUT_S = 20.0  # for the server to drain and exit after SIGTERM
CALL_TIMEOUT_S = 5.0  # one Authorize call
HTTP_TIMEOUT_S = 10.0  # one SCIM request

# A random pause before each timed SCIM request, so changes land at random points of the
# SQLite feed's 20 ms poll cycle. Without it every sample starts just after the poll that
# showed the previous change, and all of them wait almost a whole cycle.
PAUSE_MAX_S = 0.05
SEED = 20_261_128

# Must-reach target (from the issue).
TARGET_P99_MS = 1_000.0


@dataclass(frozen=True)
class Budget:
    warmup: int  # untimed agent lives (create + suspend) before sampling
    samples: int  # timed agent lives
    authorize_calls: int  # bare Authorize round trips


FULL = Budget(warmup=5, samples=200, authorize_calls=1_000)
QUICK = Budget(warmup=2, samples=30, authorize_calls=200)


# ------------------------------------------------------------------ the store and the server


@dataclass(frozen=True)
class StoreInfo:
    url: str
    description: str


def redacted(url: str) -> str:
    """The URL without a password, for output."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


@contextlib.contextmanager
def make_store(backend: str, tmp: Path) -> Iterator[StoreInfo]:
    """An empty store of the backend, thrown away after: a SQLite file in ``tmp``, or a
    fresh PostgreSQL schema (the URL sets it as the search_path), dropped after."""
    if backend == "sqlite":
        yield StoreInfo(f"sqlite:///{tmp}/tessera.db", f"SQLite {sqlite3.sqlite_version}, file")
        return
    schema = f"bench_{uuid.uuid4().hex}"
    with postgres_admin() as admin:
        row = admin.execute("SHOW server_version").fetchone()
        version = row[0] if row else "?"
        admin.execute(f"CREATE SCHEMA {schema}")
        try:
            options = quote(f"-c search_path={schema}")
            yield StoreInfo(
                f"{POSTGRES_URL}?options={options}&application_name={schema}",
                f"PostgreSQL {version}, schema {schema} (dropped after)",
            )
        finally:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")


def postgres_admin() -> psycopg.Connection[Any]:
    """A connection to PostgreSQL; when it cannot be had, the run stops (exit 1) naming
    why: a PostgreSQL row is never skipped in silence."""
    try:
        return psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as e:
        reason = " ".join(str(e).split())
        raise SystemExit(
            f"PostgreSQL at {redacted(POSTGRES_URL)} is not reachable ({reason}); start it, "
            "set TESSERA_TEST_POSTGRES, or run with --backend sqlite"
        ) from e


@dataclass(frozen=True)
class Server:
    process: subprocess.Popen[bytes]
    grpc_port: int
    scim: str  # base URL of the SCIM API
    stderr: Path


GRPC_LINE = re.compile(r"serving tessera\.v1\.Authorizer on 127\.0\.0\.1:(\d+)")
SCIM_LINE = re.compile(r"SCIM 2\.0 at (http://127\.0\.0\.1:\d+/scim/v2)")


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def wait_for_ports(process: subprocess.Popen[bytes], out: Path, err: Path) -> tuple[int, str]:
    """The gRPC port and the SCIM base the server prints first; bounded by START_TIMEOUT_S."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        text = out.read_text(errors="replace")
        grpc_port, scim = GRPC_LINE.search(text), SCIM_LINE.search(text)
        if grpc_port and scim:
            return int(grpc_port.group(1)), scim.group(1)
        if process.poll() is not None or time.monotonic() > deadline:
            state = "exited" if process.returncode is not None else "did not print its ports"
            raise SystemExit(f"tessera serve {state}:\n{text}\n{tail(err)}")
        time.sleep(0.05)


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM (drain, then exit), escalating to SIGKILL; every wait bounded."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@contextlib.contextmanager
def serve(store_url: str, tmp: Path, token: str) -> Iterator[Server]:
    """``tessera serve`` on the store, as users run it; its output goes to files in ``tmp``
    (read for the ports, so a chatty server never blocks on a full pipe)."""
    exe = Path(sys.executable).parent / "tessera"
    if not exe.exists():
        raise SystemExit(f"{exe} not found: run with the project's virtualenv (.venv/bin/python)")
    out, err = tmp / "serve.out", tmp / "serve.err"
    command = [
        *(str(exe), "serve", "--policies", str(POLICIES), "--store", store_url),
        *("--port", "0", "--http-port", "0", "--metrics-port", "-1", "--grace", "1"),
        f"--admin-token={token}",  # a token may start with "-"
    ]
    with out.open("wb") as stdout, err.open("wb") as stderr:
        process = subprocess.Popen(command, stdout=stdout, stderr=stderr, cwd=ROOT)
    try:
        grpc_port, scim = wait_for_ports(process, out, err)
        yield Server(process, grpc_port, scim, err)
    finally:
        stop(process)


# ------------------------------------------------------------------ measuring


def read_call(agent_id: str) -> pb.AuthorizeRequest:
    """Agent ``agent_id`` calls tool "search": allowed by agents.read_only for an active
    low-risk agent; the directory supplies every attribute."""
    return pb.AuthorizeRequest(
        agent=pb.Agent(id=agent_id),
        action="tool.call",
        resource=pb.Resource(type="tool", id="search"),
    )


def allowed(response: pb.AuthorizeResponse) -> bool:
    return bool(response.allow)


def is_suspended(agent_id: str) -> Callable[[pb.AuthorizeResponse], bool]:
    reasons = [f"agent {agent_id!r} is suspended"]
    return lambda response: not response.allow and list(response.reasons) == reasons


@dataclass(frozen=True)
class Sample:
    request_ms: float  # the SCIM request alone
    visible_ms: float | None  # from sending it to the first decision reflecting it; None: timeout
    polls: int  # Authorize calls made in the wait
    last: pb.AuthorizeResponse  # the last answer (the first that reflected the change)


class Client:
    """A keep-alive SCIM client and a sync gRPC ``Authorize`` callable on one server."""

    def __init__(self, server: Server, token: str, rng: random.Random) -> None:
        self.server = server
        self.rng = rng
        self.channel = grpc.insecure_channel(f"{HOST}:{server.grpc_port}")
        self.call = self.channel.unary_unary(
            AUTHORIZE_METHOD,
            request_serializer=pb.AuthorizeRequest.SerializeToString,
            response_deserializer=pb.AuthorizeResponse.FromString,
        )
        self.http = httpx.Client(
            base_url=server.scim,
            headers={"Authorization": f"Bearer {token}"},
            timeout=HTTP_TIMEOUT_S,
        )

    def close(self) -> None:
        self.http.close()
        self.channel.close()

    def authorize(self, agent_id: str) -> pb.AuthorizeResponse:
        response: pb.AuthorizeResponse = self.call(read_call(agent_id), timeout=CALL_TIMEOUT_S)
        return response

    def first(
        self, agent_id: str, reflects: Callable[[pb.AuthorizeResponse], bool], t0: int
    ) -> tuple[float | None, int, pb.AuthorizeResponse]:
        """Ask back to back until an answer reflects the change: ms since ``t0`` (None
        when the bound passed first), calls made, the last answer."""
        deadline = t0 + int(VISIBILITY_BOUND_S * 1e9)
        request = read_call(agent_id)
        polls = 0
        while True:
            response: pb.AuthorizeResponse = self.call(request, timeout=CALL_TIMEOUT_S)
            now = time.perf_counter_ns()
            polls += 1
            if reflects(response):
                return (now - t0) / 1e6, polls, response
            if now > deadline:
                return None, polls, response

    def create(self, name: str) -> tuple[str, Sample]:
        body = {
            "schemas": [AGENT_SCHEMA, AGENT_EXTENSION],
            "name": name,
            AGENT_EXTENSION: {"owner": "bench", "riskLevel": "low"},
        }
        time.sleep(self.rng.uniform(0, PAUSE_MAX_S))
        t0 = time.perf_counter_ns()
        answer = self.http.post("/Agents", json=body)
        sent = time.perf_counter_ns()
        if answer.status_code != 201:
            raise SystemExit(f"POST /Agents: {answer.status_code} {answer.text}")
        agent_id: str = answer.json()["id"]
        visible, polls, last = self.first(agent_id, allowed, t0)
        return agent_id, Sample((sent - t0) / 1e6, visible, polls, last)

    def suspend(self, agent_id: str) -> Sample:
        body = {
            "schemas": [PATCH_OP],
            "Operations": [
                {"op": "replace", "path": f"{AGENT_EXTENSION}:status", "value": "suspended"}
            ],
        }
        time.sleep(self.rng.uniform(0, PAUSE_MAX_S))
        t0 = time.perf_counter_ns()
        answer = self.http.patch(f"/Agents/{agent_id}", json=body)
        sent = time.perf_counter_ns()
        if answer.status_code != 200:
            raise SystemExit(f"PATCH /Agents/{agent_id}: {answer.status_code} {answer.text}")
        visible, polls, last = self.first(agent_id, is_suspended(agent_id), t0)
        return Sample((sent - t0) / 1e6, visible, polls, last)

    def round_trips(self, agent_id: str, calls: int) -> list[float]:
        """Bare Authorize round trips in ms, one at a time."""
        out = []
        request = read_call(agent_id)
        for _ in range(calls):
            t0 = time.perf_counter_ns()
            self.call(request, timeout=CALL_TIMEOUT_S)
            out.append((time.perf_counter_ns() - t0) / 1e6)
        return out


def stats(values: Sequence[float]) -> dict[str, Any]:
    """Median, p99 and max in ms over the values (a timeout counted at the bound)."""
    return {
        "samples": len(values),
        "median_ms": round(statistics.median(values), 3),
        "p99_ms": round(percentile(values, 0.99), 3),
        "max_ms": round(max(values), 3),
    }


def summarize(samples: Sequence[Sample]) -> dict[str, Any]:
    bound_ms = VISIBILITY_BOUND_S * 1e3
    visible = [bound_ms if s.visible_ms is None else s.visible_ms for s in samples]
    after = [s.visible_ms - s.request_ms for s in samples if s.visible_ms is not None]
    polls = [s.polls for s in samples]
    return {
        "scim_request": stats([s.request_ms for s in samples]),
        "visible": stats(visible),
        "after_answer": stats(after) if after else None,
        "timeouts": sum(s.visible_ms is None for s in samples),
        "polls_median": statistics.median(polls),
        "polls_max": max(polls),
        "reflected_on_first_poll": sum(p == 1 for p in polls),
    }


def check_warmup(kind: str, agent_id: str, sample: Sample, server: Server) -> None:
    """The warm-up lives must succeed: the run is meaningless otherwise."""
    expected = (
        f"an allow by {ALLOWED_BY}"
        if kind == "create"
        else f"a deny because agent {agent_id!r} is suspended"
    )
    allowed_by_rule = kind != "create" or list(sample.last.decided_by) == ALLOWED_BY
    if sample.visible_ms is None or not allowed_by_rule:
        raise SystemExit(
            f"warm-up {kind} of {agent_id}: wanted {expected} within {VISIBILITY_BOUND_S:g} s, "
            f"last answer: allow={sample.last.allow} decided_by={list(sample.last.decided_by)} "
            f"reasons={list(sample.last.reasons)}\n{tail(server.stderr)}"
        )


def run_backend(backend: str, budget: Budget, progress: bool) -> dict[str, Any]:
    token = secrets.token_urlsafe(32)
    with (
        tempfile.TemporaryDirectory(prefix="tessera-bench-") as raw,
        make_store(backend, Path(raw)) as store,
        serve(store.url, Path(raw), token) as server,
    ):
        client = Client(server, token, random.Random(SEED))
        try:
            for i in range(budget.warmup):
                agent_id, sample = client.create(f"warmup-{i}")
                check_warmup("create", agent_id, sample, server)
                check_warmup("suspend", agent_id, client.suspend(agent_id), server)
            # A bare Authorize round trip of an active agent (the decision cache is on, as
            # users run it, so this is a cache hit after the first call).
            steady, sample = client.create("steady")
            check_warmup("create", steady, sample, server)
            client.round_trips(steady, max(10, budget.authorize_calls // 10))
            authorize = client.round_trips(steady, budget.authorize_calls)
            created: list[Sample] = []
            suspended: list[Sample] = []
            for i in range(budget.samples):
                agent_id, sample = client.create(f"agent-{i}")
                created.append(sample)
                suspended.append(client.suspend(agent_id))
                if progress and (i + 1) % 50 == 0:
                    print(f"  {backend}: {i + 1}/{budget.samples}", file=sys.stderr, flush=True)
        finally:
            client.close()
    return {
        "store": store.description,
        "authorize": stats(authorize),
        "create": summarize(created),
        "suspend": summarize(suspended),
    }


# ------------------------------------------------------------------ verdict and report

OPERATIONS = (("create", "POST /Agents"), ("suspend", "PATCH status=suspended"))


def evaluate(backends: dict[str, Any]) -> tuple[dict[str, float | None], list[Target]]:
    """The ratios, and the targets of the backends measured (one left out with --backend
    has none: it was not asked for; one that cannot be reached stops the run)."""
    ratios: dict[str, float | None] = {}
    targets = []
    for backend in BACKENDS:
        result = backends.get(backend)
        if result is None:
            continue
        for op, _ in OPERATIONS:
            name = f"{backend}: {op} → visible, p99 (no timeout)"
            limit = f"<= {TARGET_P99_MS:g} ms"
            row = result[op]
            for stat in ("median_ms", "p99_ms"):
                value = ratio(row["visible"][stat], row["scim_request"][stat])
                key = f"{backend}_{op}_visible_over_scim_{stat.removesuffix('_ms')}"
                ratios[key] = None if value is None else round(value, 2)
            p99 = row["visible"]["p99_ms"]
            targets.append(Target(name, limit, p99, p99 <= TARGET_P99_MS and not row["timeouts"]))
    return ratios, targets


NOTES = (
    "each sample: POST an active low-risk agent, poll Authorize until allowed; PATCH it "
    "suspended, poll until denied as suspended; Authorize polled back to back, one call at "
    "a time, each wait bounded at 5 s (a timeout counts at 5,000 ms and misses the target)",
    "a random 0-50 ms pause (seeded) precedes each timed SCIM request, so changes land at "
    "random points of the SQLite feed's poll cycle",
    "visibility is timed from sending the SCIM request, so it includes that request; "
    "'after the answer' is visibility minus the request, sample by sample",
    "ratio: visibility median / that SCIM request's median, same backend, same run",
    "the server runs as users run it (decision cache on, default settings); the client, "
    "the server and PostgreSQL share the machine's cores",
    "back-to-back polling keeps the server busy while it applies the change, so it can "
    "only make a change show later; it is what a busy PDP does",
    "SQLite: the directory thread polls the change counter every 20 ms; PostgreSQL: it "
    "waits on LISTEN/NOTIFY; either wait gives up after 0.5 s and starts again",
)


def print_report(result: dict[str, Any]) -> None:
    env = result["environment"]
    print(
        f"SCIM change → PDP decision latency (Python {env['python']}, {env['machine']}, "
        f"{result['method']['samples']} samples per operation"
        f"{', quick' if env['quick'] else ''})"
    )
    print(f"tessera serve on {HOST}, shipped policies; ms; ratio = median / SCIM request median\n")
    header = (
        f"{'':36s} {'median':>9s} {'p99':>9s} {'max':>9s} {'n':>6s} {'timeouts':>9s} {'ratio':>7s}"
    )

    def row(label: str, s: dict[str, Any], timeouts: str = "", r: str = "") -> None:
        print(
            f"{label:36s} {fmt(s['median_ms'], 2):>9s} {fmt(s['p99_ms'], 2):>9s} "
            f"{fmt(s['max_ms'], 2):>9s} {s['samples']:>6d} {timeouts:>9s} {r:>7s}"
        )

    for backend, data in result["backends"].items():
        print(f"{backend}: {data['store']}")
        print(header)
        print("-" * len(header))
        row("  Authorize round trip", data["authorize"])
        for op, request in OPERATIONS:
            item = data[op]
            r = result["ratios"].get(f"{backend}_{op}_visible_over_scim_median")
            row(f"  SCIM {request}", item["scim_request"])
            row(
                f"  {op} → visible",
                item["visible"],
                str(item["timeouts"]),
                "n/a" if r is None else f"{r:.2f}x",
            )
            if item["after_answer"] is not None:
                row("    after the answer", item["after_answer"])
        print(
            "  Authorize calls per wait (median/max): "
            + ", ".join(
                f"{op} {fmt(data[op]['polls_median'], 0)}/{data[op]['polls_max']}"
                for op, _ in OPERATIONS
            )
        )
        print(
            "  change already decided on at the first call: "
            + ", ".join(
                f"{op} {data[op]['reflected_on_first_poll']}/{data[op]['visible']['samples']}"
                for op, _ in OPERATIONS
            )
        )
        print()
    print("targets")
    for target in result["targets"]:
        print(
            f"  {target['verdict']:4s}  {target['name']:48s} {target['limit']:>11s}"
            f"   measured {fmt(target['value'], 1)}"
        )
    print("\nnotes")
    for note in result["notes"]:
        print(f"  - {note}")
    print(f"\n{result['seconds']} s")


def main() -> None:
    parser = benchmark_parser(
        "Time how soon a SCIM create or suspend reaches tessera serve's decisions, on "
        "SQLite and PostgreSQL, against the SCIM request itself. Prints PASS/FAIL "
        "against the p99 <= 1 s target.",
        quick="30 samples per operation (a smoke run; noisy)",
    )
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        action="append",
        help="measure only this backend (repeatable; default: both; the other has no target)",
    )
    args = parser.parse_args()

    budget = QUICK if args.quick else FULL
    started = time.perf_counter()
    if args.backend is None or "postgresql" in args.backend:
        postgres_admin().close()  # before minutes of SQLite samples, not after them
    backends = {
        backend: run_backend(backend, budget, progress=not args.json)
        for backend in BACKENDS
        if args.backend is None or backend in args.backend
    }
    ratios, targets = evaluate(backends)
    result: dict[str, Any] = {
        "benchmark": "directory",
        "environment": environment(args.quick, grpcio=grpc.__version__, httpx=httpx.__version__),
        "method": {
            "host": HOST,
            "server": "tessera serve subprocess, shipped policies, default cache, metrics off",
            "client": "httpx.Client (keep-alive) for SCIM, sync grpc stub polled back to back",
            "timer": "time.perf_counter_ns",
            "warmup_lives": budget.warmup,
            "samples": budget.samples,
            "authorize_calls": budget.authorize_calls,
            "visibility_bound_s": VISIBILITY_BOUND_S,
            "pause_before_each_scim_request_s": f"uniform 0..{PAUSE_MAX_S:g}, seed {SEED}",
            "postgres": redacted(POSTGRES_URL),
        },
        "backends": backends,
        "ratios": ratios,
        "targets": [t.to_json() for t in targets],
        "notes": list(NOTES),
        "seconds": round(time.perf_counter() - started, 1),
    }
    finish(result, targets, args, print_report)


if __name__ == "__main__":
    main()
