"""Whether anomaly detection keeps up with the audit writer, and what it costs per record.

One run, in this process, for SQLite (a file in a temporary directory) and PostgreSQL (a
fresh schema of ``TESSERA_TEST_POSTGRES``, dropped after; when unreachable the row is
skipped saying why, and ``--strict`` exits 1 before measuring):

* **writer**: N decision records submitted to a fresh agent trail through an
  ``AuditWriter`` as fast as its queue takes them, timed until the last is committed:
  records/s, the rate the detector must follow;
* **detector**: an ``AnomalyDetector`` (default thresholds) reading that whole trail with
  ``catch_up()`` (read pages from the store, parse, update the baselines, queue the alerts
  raised), timed: records/s and CPU µs per record (``time.process_time``, all threads:
  it runs in the server's process and shares its GIL);
* **baselines alone**: ``Baselines.observe`` on the already parsed records (the core,
  without the store and JSON): CPU µs per record.

The records: 50 agents, each calling one of 6 tools every 0.5 s in turn, 30% of calls
with an amount, one call in 20 denied, in time order over N × 10 ms. Target: detector records/s ≥
writer records/s on each store (the detector can follow anything the writer commits).

    python benchmarks/anomaly.py [--json] [--quick] [--strict]
"""

from __future__ import annotations

import os
import sys

# The project root first: no script here may stand in for one of Tessera's packages.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import json
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import psycopg
from engine import (  # a sibling script
    Target,
    benchmark_parser,
    environment,
    finish,
    fmt,
    ratio,
    refuse_skips,
)

from issuer.store import open_store
from pdp.audit.anomaly import AnomalyDetector
from pdp.audit.baselines import Baselines
from pdp.audit.writer import AuditWriter

POSTGRES_URL = os.environ.get("TESSERA_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
FULL_RECORDS = 100_000
QUICK_RECORDS = 10_000
AGENTS = 50
TOOLS = ("search", "read_file", "summarize", "sql.select", "payments.transfer", "mail.draft")
START = datetime(2026, 11, 1, tzinfo=UTC)


def records(count: int) -> list[dict[str, Any]]:
    out = []
    for i in range(count):
        agent = i % AGENTS
        call = i // AGENTS
        context: dict[str, Any] = {}
        if i % 10 < 3:
            context["amount"] = {"amount": str(10 + (i * 7) % 490), "currency": "USD"}
        allow = call % 20 != agent % 20
        out.append(
            {
                "kind": "decision",
                "at": (START + timedelta(milliseconds=10 * i)).isoformat(),
                "decision_id": uuid.UUID(int=i).hex,
                "agent": f"agent-{agent}",
                "user": None,
                "delegation": [],
                "action": "tool.call",
                "resource": {"type": "tool", "id": TOOLS[call % len(TOOLS)]},
                "context": context,
                "allow": allow,
                "decided_by": ["agents.read_only"] if allow else [],
                "obligations": [],
                "reasons": [],
                "bundle_version": "sha256:bench",
                "pep": "ipv4:127.0.0.1:50000",
                "latency_us": 40.0,
            }
        )
    return out


def measure(url: str, batch: list[dict[str, Any]]) -> dict[str, Any]:
    store = open_store(url)
    writer = AuditWriter(store, queue_size=10_000)
    try:
        start = time.perf_counter()
        last = None
        for record in batch:
            last = writer.submit("agent", record)
        assert last is not None
        last.result(600)
        writer_s = time.perf_counter() - start

        detector = AnomalyDetector(store, writer)
        cpu, wall = time.process_time(), time.perf_counter()
        alerts = detector.catch_up()
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    finally:
        writer.close(600)
        store.close()
    n = len(batch)
    return {
        "records": n,
        "writer_records_per_s": round(n / writer_s),
        "detector_records_per_s": round(n / wall),
        "detector_cpu_us_per_record": round(cpu / n * 1e6, 2),
        "alerts": len(alerts),
    }


def baselines_alone(batch: list[dict[str, Any]]) -> dict[str, Any]:
    baselines = Baselines()
    cpu = time.process_time()
    for seq, record in enumerate(batch, 1):
        baselines.observe(record, seq)
    cpu = time.process_time() - cpu
    return {"records": len(batch), "cpu_us_per_record": round(cpu / len(batch) * 1e6, 2)}


def postgres_schema() -> tuple[str, str] | str:
    """(a fresh schema, the store URL on it), or why PostgreSQL cannot be had."""
    name = f"bench_{uuid.uuid4().hex}"
    try:
        with psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=5) as admin:
            admin.execute(f"CREATE SCHEMA {name}")
    except psycopg.OperationalError as e:
        return f"{POSTGRES_URL} is not reachable: {' '.join(str(e).split())}"
    return name, f"{POSTGRES_URL}?options={quote(f'-c search_path={name}')}"


def drop_schema(name: str) -> None:
    with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
        admin.execute(f"DROP SCHEMA {name} CASCADE")


def report(result: dict[str, Any]) -> None:
    env = result["environment"]
    print(
        f"Tessera anomaly detection benchmark  (Python {env['python']}, {env['machine']}, "
        f"{env['cpus']} cpus{', quick' if env['quick'] else ''})\n"
    )
    print(
        f"{'store':12s} {'records':>8s} {'writer rec/s':>13s} {'detector rec/s':>15s} "
        f"{'detector cpu us/rec':>20s} {'alerts':>7s}"
    )
    for name, row in result["stores"].items():
        if "skipped" in row:
            print(f"{name:12s} skipped: {row['skipped']}")
            continue
        print(
            f"{name:12s} {row['records']:>8d} {row['writer_records_per_s']:>13d} "
            f"{row['detector_records_per_s']:>15d} "
            f"{fmt(row['detector_cpu_us_per_record'], 2):>20s} {row['alerts']:>7d}"
        )
    alone = result["baselines_alone"]
    print(f"\nBaselines.observe alone: {fmt(alone['cpu_us_per_record'], 2)} us per record\n")
    for target in result["targets"]:
        why = f"; not measured: {target['why']}" if "why" in target else ""
        print(
            f"{target['verdict']:5s} {target['name']}: {fmt(target['value'], 2)} "
            f"(limit {target['limit']}){why}"
        )


def main() -> None:
    args = benchmark_parser(
        __doc__.splitlines()[0], f"{QUICK_RECORDS:,} records instead of {FULL_RECORDS:,}"
    ).parse_args()
    batch = records(QUICK_RECORDS if args.quick else FULL_RECORDS)
    stores: dict[str, Any] = {}
    schema = postgres_schema()  # first: a strict run that cannot have it stops at once
    skipped = {"postgresql": schema} if isinstance(schema, str) else {}
    refuse_skips(args, skipped)
    with tempfile.TemporaryDirectory() as tmp:
        stores["sqlite"] = measure(f"sqlite:///{tmp}/anomaly.db", batch)
    if isinstance(schema, str):
        stores["postgresql"] = {"skipped": schema}
    else:
        try:
            stores["postgresql"] = measure(schema[1], batch)
        finally:
            drop_schema(schema[0])
    targets = []
    for name, row in stores.items():
        keeps_up = (
            None
            if "skipped" in row
            else ratio(row["detector_records_per_s"], row["writer_records_per_s"])
        )
        targets.append(
            Target(
                f"detector records/s over writer records/s, {name}",
                ">= 1",
                keeps_up,
                None if keeps_up is None else keeps_up >= 1,
                row.get("skipped"),
            )
        )
    result = {
        "benchmark": "anomaly",
        "environment": environment(args.quick),
        "stores": stores,
        "baselines_alone": baselines_alone(json.loads(json.dumps(batch))),
        "targets": [t.to_json(3) for t in targets],
    }
    finish(result, targets, args, report, skipped)


if __name__ == "__main__":
    main()
