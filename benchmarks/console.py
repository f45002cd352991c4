"""How long the operator console's pages take with 10,000 agents and 1,000,000 decisions.

For each store (a SQLite file in a temporary directory; a fresh schema of
``TESSERA_TEST_POSTGRES``, dropped after, skipped when unreachable) the script fills the
tables straight, in the shape the code writes them (an agent is a SCIM document with its
create change; a decision is the audit writer's record, hash-chained; alerts as the
anomaly detector appends them): 10,000 agents, 1,000,000 decisions over the last two days
(half of them today), 1,000 alerts. Then ``tessera serve`` runs on it as users run it
(shipped policies, loopback), the script signs in with the bootstrap admin token and
times each page over HTTP: the agents list (first page), a sorted and searched page, a
deep page, an agent's page, the decisions list, the alerts, the policies page.

Baseline: a bare Starlette route on uvicorn in this process, on loopback, answering HTML
as large as the largest page. Rounds are interleaved: in each round every page (and the
baseline) is fetched ``CALLS`` times, in an order rotated per round; the median and p99
are over every fetch. Target: every page's median under 200 ms.

    python benchmarks/console.py [--json] [--quick] [--strict]
"""

from __future__ import annotations

import os
import sys

# The project root first: no script here may stand in for one of Tessera's packages.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse
import json
import re
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import psycopg
import uvicorn
from directory import serve
from engine import Target, benchmark_parser, environment, finish, fmt, print_targets, refuse_skips
from starlette.applications import Starlette
from starlette.responses import HTMLResponse
from starlette.routing import Route

from issuer.agents import AGENT_EXTENSION
from issuer.store import open_store
from pdp.audit.chain import canonical, link

POSTGRES_URL = os.environ.get("TESSERA_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
FULL = {"agents": 10_000, "decisions": 1_000_000, "alerts": 1_000, "rounds": 5, "calls": 4}
QUICK = {"agents": 500, "decisions": 20_000, "alerts": 100, "rounds": 3, "calls": 2}
TARGET_MS = 200.0
TOKEN = "console-benchmark-token-0123456789"
CHUNK = 5_000  # rows per insert
RISKS = ("low", "medium", "high", "critical")
TOOLS = ("search", "read_file", "send_email", "transfer_funds", "db.read")


def agent_document(n: int) -> dict[str, Any]:
    extension = {
        "owner": f"team-{n % 37}",
        "purpose": f"purpose {n % 11}",
        "riskLevel": RISKS[n % 4],
        "agentType": "autonomous",
        "status": "suspended" if n % 50 == 0 else "active",
    }
    return {"name": f"agent-{n:05d}", AGENT_EXTENSION: extension}


def decision(n: int, agent: str, at: datetime) -> dict[str, Any]:
    """A decision record in the shape :func:`pdp.audit.records.decided` makes."""
    tool = TOOLS[n % len(TOOLS)]
    allow = n % 3 != 0
    return {
        "kind": "decision",
        "agent": agent,
        "user": None,
        "action": "tool.call",
        "resource": {"type": "tool", "id": tool},
        "context": {},
        "at": at.isoformat(),
        "decision_id": uuid.UUID(int=n + 1).hex,
        "allow": allow,
        "decided_by": ["agents.read_only"] if allow else [],
        "obligations": [],
        "reasons": [] if allow else ["no rule permits this request"],
        "bundle_version": "benchmark",
        "pep": "benchmark",
        "latency_us": 42.0,
    }


def alert(n: int, agent: str, at: datetime, source: int) -> dict[str, Any]:
    """An alert in the shape the anomaly detector appends."""
    return {
        "kind": "alert",
        "at": at.isoformat(),
        "alert": "rate",
        "agent": agent,
        "severity": "warning",
        "message": f"{n % 90 + 10} decisions in a minute, baseline 3",
        "observed": n % 90 + 10,
        "baseline": 3,
        "decision_id": uuid.UUID(int=source).hex,
        "source_seq": source,
    }


def chained(records: Iterator[tuple[datetime, dict[str, Any]]]) -> Iterator[tuple[Any, ...]]:
    """(seq, at, record, prev_hash, hash, agent) rows of one hash chain, the agent as the
    audit writer keeps it beside a decision (:func:`pdp.audit.writer.agent_of`)."""
    prev = "0" * 64
    for seq, (at, record) in enumerate(records, start=1):
        text = canonical(record)
        digest = link(prev, text)
        agent = record["agent"] if record["kind"] == "decision" else None
        yield seq, at, text, prev, digest, agent
        prev = digest


def fill(url: str, shape: dict[str, int]) -> list[str]:
    """Migrate the store, then insert the rows straight; the agents' ids."""
    open_store(url).close()  # the schema, as the code makes it
    now = datetime.now(UTC)
    start = now - timedelta(days=2)
    ids = [str(uuid.UUID(int=(n + 1) << 64)) for n in range(shape["agents"])]
    agents = [(n, id_, agent_document(n)) for n, id_ in enumerate(ids)]
    step = timedelta(days=2) / shape["decisions"]
    decisions = chained(
        (start + step * n, decision(n, ids[n * 7919 % len(ids)], start + step * n))
        for n in range(shape["decisions"])
    )
    alerts = chained(
        (start + timedelta(seconds=n), alert(n, ids[n % len(ids)], start, n + 1))
        for n in range(shape["alerts"])
    )
    (fill_sqlite if url.startswith("sqlite") else fill_postgres)(url, agents, decisions, alerts)
    return ids


def fill_sqlite(
    url: str, agents: list[Any], decisions: Iterator[Any], alerts: Iterator[Any]
) -> None:
    import sqlite3

    conn = sqlite3.connect(url.removeprefix("sqlite:///"))
    stamp = datetime.now(UTC).isoformat(timespec="microseconds")
    with conn:
        for _, id_, doc in agents:
            text = json.dumps(doc, separators=(",", ":"))
            cur = conn.execute(
                "INSERT INTO changes (at, kind, id, op, actor, version, data)"
                " VALUES (?, 'Agent', ?, 'create', 'benchmark', 1, ?)",
                (stamp, id_, text),
            )
            conn.execute(
                "INSERT INTO resources VALUES ('Agent', ?, 1, ?, ?, ?, ?)",
                (id_, text, stamp, stamp, cur.lastrowid),
            )
        for trail, rows in (("agent", decisions), ("alert", alerts)):
            conn.executemany(
                "INSERT INTO audit (trail, seq, at, record, prev_hash, hash, agent)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    (trail, seq, at.isoformat(timespec="microseconds"), r, p, h, a)
                    for seq, at, r, p, h, a in rows
                ),
            )
    conn.close()


def fill_postgres(
    url: str, agents: list[Any], decisions: Iterator[Any], alerts: Iterator[Any]
) -> None:
    stamp = datetime.now(UTC)
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        with cur.copy("COPY changes (at, kind, id, op, actor, version, data) FROM STDIN") as copy:
            for _, id_, doc in agents:
                copy.write_row((stamp, "Agent", id_, "create", "benchmark", 1, json.dumps(doc)))
        cur.execute(
            "INSERT INTO resources SELECT kind, id, 1, data, at, at, seq FROM changes"
            " WHERE kind = 'Agent' AND actor = 'benchmark'"
        )
        for trail, rows in (("agent", decisions), ("alert", alerts)):
            with cur.copy(
                "COPY audit (trail, seq, at, record, prev_hash, hash, agent) FROM STDIN"
            ) as copy:
                for row in rows:
                    copy.write_row((trail, *row))
        cur.execute("ANALYZE")


# ------------------------------------------------------------------ measuring


def pages(ids: list[str]) -> dict[str, str]:
    """The pages timed, by row name: path and query under the console."""
    middle = ids[len(ids) // 2]
    return {
        "agents list": "/console/agents",
        "agents sorted, searched": "/console/agents?q=team-1&sort=riskLevel&dir=desc",
        "agents page 5, by owner": "/console/agents?sort=owner&page=5",
        "agent": f"/console/agents/{middle}",
        "decisions": "/console/decisions",
        "alerts": "/console/alerts",
        "policies": "/console/policies",
    }


def signed_in(base: str) -> httpx.Client:
    """A client with a console session, signed in with the bootstrap admin token."""
    client = httpx.Client(base_url=base, timeout=60)
    page = client.get("/console/signin")
    pre = re.search(r'name="pre" value="([^"]+)"', page.text)
    if pre is None:
        raise SystemExit(f"no sign-in form at {base}/console/signin: {page.status_code}")
    signed = client.post("/console/signin/token", data={"pre": pre.group(1), "token": TOKEN})
    if signed.status_code != 303:
        raise SystemExit(f"signing in failed: {signed.status_code} {signed.text[:200]}")
    return client


@contextmanager
def bare_server(size: int) -> Iterator[str]:
    """uvicorn in a thread: one Starlette route answering ``size`` bytes of HTML."""
    body = "<!doctype html><p>" + "x" * max(0, size - 18)

    async def page(request: Any) -> HTMLResponse:
        return HTMLResponse(body)

    config = uvicorn.Config(
        Starlette(routes=[Route("/", page)]), host="127.0.0.1", port=0, log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(500):  # bounded: 10 s
        if server.started:
            break
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def fetching(
    client: httpx.Client, path: str, sizes: dict[str, int], name: str
) -> Callable[[], None]:
    def fetch() -> None:
        answer = client.get(path)
        if answer.status_code != 200:
            raise SystemExit(f"{name}: {path} answered {answer.status_code}: {answer.text[:200]}")
        sizes[name] = len(answer.content)

    return fetch


def rounds(steps: dict[str, Callable[[], None]], shape: dict[str, int]) -> dict[str, list[float]]:
    """Each step ``calls`` times per round, the order rotated per round; ms per fetch."""
    names = list(steps)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for name in names:  # warm-up: templates compiled, caches and connections made
        steps[name]()
    for r in range(shape["rounds"]):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            for _ in range(shape["calls"]):
                began = time.perf_counter()
                steps[name]()
                samples[name].append((time.perf_counter() - began) * 1000)
    return samples


def summary(values: list[float]) -> dict[str, Any]:
    ordered = sorted(values)
    return {
        "median_ms": round(statistics.median(ordered), 2),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 2),
        "samples": len(ordered),
    }


def measure_store(url: str, shape: dict[str, int]) -> dict[str, Any]:
    """Fill the store, serve it, time every page and the baseline."""
    began = time.perf_counter()
    ids = fill(url, shape)
    filled = time.perf_counter() - began
    with tempfile.TemporaryDirectory() as tmp, serve(url, Path(tmp), TOKEN) as server:
        base = server.scim.removesuffix("/scim/v2")
        sizes: dict[str, int] = {}
        client = signed_in(base)
        try:
            steps = {name: fetching(client, path, sizes, name) for name, path in pages(ids).items()}
            for step in steps.values():
                step()  # the sizes, for the baseline
            with bare_server(max(sizes.values())) as bare, httpx.Client(base_url=bare) as plain:
                steps["baseline (bare Starlette)"] = fetching(
                    plain, "/", sizes, "baseline (bare Starlette)"
                )
                samples = rounds(steps, shape)
        finally:
            client.close()
    rows = {name: {**summary(values), "bytes": sizes[name]} for name, values in samples.items()}
    return {"fill_s": round(filled, 1), "pages": rows}


@contextmanager
def postgres_url(skipped: dict[str, str]) -> Iterator[str | None]:
    """A fresh schema's URL (dropped after), or None and why not in ``skipped``."""
    name = f"bench_console_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as e:
        skipped["postgresql"] = f"{POSTGRES_URL} is not reachable: {' '.join(str(e).split())}"
        yield None
        return
    admin.execute(f"CREATE SCHEMA {name}")
    try:
        yield f"{POSTGRES_URL}?options={quote(f'-c search_path={name}')}"
    finally:
        admin.execute(f"DROP SCHEMA {name} CASCADE")
        admin.close()


def measure(
    shape: dict[str, int], args: argparse.Namespace
) -> tuple[dict[str, Any], dict[str, str]]:
    skipped: dict[str, str] = {}
    stores: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp, postgres_url(skipped) as pg:
        refuse_skips(args, skipped)
        stores["sqlite"] = measure_store(f"sqlite:///{tmp}/console.db", shape)
        if pg is not None:
            stores["postgresql"] = measure_store(pg, shape)
    return stores, skipped


def report(result: dict[str, Any], targets: list[Target]) -> None:
    env, shape = result["environment"], result["shape"]
    print(
        f"Tessera console pages  (Python {env['python']}, {env['machine']}, "
        f"{shape['agents']:,} agents, {shape['decisions']:,} decisions, "
        f"{shape['alerts']:,} alerts, "
        f"{shape['rounds']} rounds of {shape['calls']}{', quick' if env['quick'] else ''})"
    )
    print("ms per page over HTTP on loopback, tessera serve in a subprocess, signed in\n")
    for store, found in result["stores"].items():
        print(f"{store} (filled in {found['fill_s']} s)")
        print(f"  {'page':28s} {'median':>8s} {'p99':>8s} {'bytes':>8s} {'x baseline':>10s}")
        floor = found["pages"]["baseline (bare Starlette)"]["median_ms"]
        for name, row in found["pages"].items():
            print(
                f"  {name:28s} {fmt(row['median_ms'], 1):>8s} {fmt(row['p99_ms'], 1):>8s} "
                f"{row['bytes']:>8d} {fmt(row['median_ms'] / floor, 1):>10s}"
            )
    for name, why in result["skipped"].items():
        print(f"{name:30s} skipped: {why}")
    print_targets(targets, result["seconds"])


def main() -> None:
    args = benchmark_parser(
        __doc__.splitlines()[0],
        f"{QUICK['agents']} agents and {QUICK['decisions']} decisions, "
        f"{QUICK['rounds']} rounds of {QUICK['calls']}",
    ).parse_args()
    shape = QUICK if args.quick else FULL
    began = time.perf_counter()
    stores, skipped = measure(shape, args)
    targets = []
    for store in ("sqlite", "postgresql"):
        found = stores.get(store, {}).get("pages", {})
        slowest = max(
            (row["median_ms"] for n, row in found.items() if not n.startswith("baseline")),
            default=None,
        )
        targets.append(
            Target(
                f"{store} slowest page median ms",
                f"< {TARGET_MS:g}",
                slowest,
                None if slowest is None else slowest < TARGET_MS,
                skipped.get(store),
            )
        )
    result = {
        "benchmark": "console",
        "environment": environment(
            args.quick, httpx=httpx.__version__, psycopg=psycopg.__version__
        ),
        "shape": shape,
        "stores": stores,
        "skipped": skipped,
        "targets": [t.to_json(2) for t in targets],
        "seconds": round(time.perf_counter() - began, 1),
    }
    finish(result, targets, args, lambda r: report(r, targets), skipped)


if __name__ == "__main__":
    main()
