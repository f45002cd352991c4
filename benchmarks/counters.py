"""What one charge of one limit costs on each counter store, on loopback.

One run, in this process, of ``CounterStore.charge`` with one money charge (1.00 USD
against a cap it never reaches, so every charge checks and records) on:

* **memory**: ``MemoryCounters``, the baseline: the interface's cost with no I/O;
* **sqlite**: ``SqlCounters`` on a file in a temporary directory (WAL, ``BEGIN IMMEDIATE``);
* **postgresql**: ``SqlCounters`` on a fresh schema of ``TESSERA_TEST_POSTGRES``, dropped
  after (skipped when unreachable);
* **redis**: ``RedisCounters`` on ``TESSERA_TEST_REDIS`` (default
  ``redis://127.0.0.1:6379/0``) under a fresh key prefix, deleted after (skipped when
  unreachable).

A store that is unreachable is skipped saying why (in the report and on standard error);
``--strict`` then exits 1 before timing anything.

Beside them, each server's floor through the same client: a Redis ``PING`` and a
PostgreSQL ``SELECT 1``, one round trip each. Every store is warmed up (connections made,
statements prepared, the Lua script loaded), then the stores take turns: in each round
each store, in an order rotated per round, times ``CALLS`` charges one by one with
``time.perf_counter_ns``, garbage collector off. Median and p99 are over every single
charge of every round. Each store's timeout is 1 s here, so a slow outlier is measured,
not refused. Target: Redis median <= 250 µs.

    python benchmarks/counters.py [--json] [--quick] [--strict]
"""

from __future__ import annotations

import os
import sys

# The project root first: no script here may stand in for one of Tessera's packages.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse
import gc
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from decimal import Decimal
from importlib.metadata import version
from typing import Any
from urllib.parse import quote

import psycopg
import redis
from engine import (
    Target,
    benchmark_parser,
    environment,
    finish,
    fmt,
    print_targets,
    ratio,
    refuse_skips,
)

from pdp.counters import FITS, Charge, CounterStore, MemoryCounters
from pdp.counters.redis import RedisCounters
from pdp.counters.sql import SqlCounters

POSTGRES_URL = os.environ.get("TESSERA_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("TESSERA_TEST_REDIS", "redis://127.0.0.1:6379/0")
CHARGE = Charge("spend/usd/agent-1", "agent-1", 86_400.0, Decimal("1.00"), Decimal(10**9))
FULL = {"rounds": 10, "calls": 500}
QUICK = {"rounds": 3, "calls": 100}
WARM_UP = 200
TARGET_REDIS_US = 250.0

Step = Callable[[], object]


def charging(store: CounterStore) -> Step:
    """One charge of one limit, now, as the engine would make it."""

    def step() -> object:
        answer = store.charge((CHARGE,), time.time())
        assert answer == FITS
        return answer

    return step


def timed(step: Step, calls: int) -> list[float]:
    """µs of each of ``calls`` steps, one by one."""
    clock = time.perf_counter_ns
    out = []
    for _ in range(calls):
        start = clock()
        step()
        out.append((clock() - start) / 1000)
    return out


def run_rounds(steps: dict[str, Step], rounds: int, calls: int) -> dict[str, list[float]]:
    """Each step timed ``calls`` times per round, the order rotated round by round."""
    names = list(steps)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for step in steps.values():
        for _ in range(WARM_UP):
            step()
    gc.collect()
    gc.disable()
    try:
        for r in range(rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                samples[name] += timed(steps[name], calls)
    finally:
        gc.enable()
    return samples


def summary(values: list[float]) -> dict[str, Any]:
    ordered = sorted(values)
    return {
        "median_us": round(statistics.median(ordered), 2),
        "p99_us": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 2),
        "samples": len(ordered),
    }


def open_postgres(opened: dict[str, Any], skipped: dict[str, str]) -> dict[str, Step]:
    """The PostgreSQL store and floor on a fresh schema, or why not."""
    name = f"bench_{uuid.uuid4().hex}"
    try:
        admin = psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as e:
        skipped["postgresql"] = f"{POSTGRES_URL} is not reachable: {' '.join(str(e).split())}"
        return {}
    admin.execute(f"CREATE SCHEMA {name}")
    opened["postgres_admin"], opened["postgres_schema"] = admin, name
    store = SqlCounters(f"{POSTGRES_URL}?options={quote(f'-c search_path={name}')}", timeout=1)
    floor = psycopg.connect(POSTGRES_URL, autocommit=True)
    opened["postgresql"], opened["postgres_floor"] = store, floor
    return {
        "postgresql": charging(store),
        "postgresql SELECT 1 (floor)": lambda: floor.execute("SELECT 1").fetchone(),
    }


def open_redis(opened: dict[str, Any], skipped: dict[str, str]) -> dict[str, Step]:
    """The Redis store and floor under a fresh key prefix, or why not."""
    floor = redis.Redis.from_url(REDIS_URL, socket_timeout=1, socket_connect_timeout=1)
    try:
        floor.ping()
    except redis.RedisError as e:
        skipped["redis"] = f"{REDIS_URL} is not reachable: {' '.join(str(e).split())}"
        return {}
    prefix = f"tessera-bench-{uuid.uuid4().hex}:"
    store = RedisCounters(REDIS_URL, timeout=1, prefix=prefix)
    opened["redis"], opened["redis_floor"], opened["redis_prefix"] = store, floor, prefix
    return {"redis": charging(store), "redis PING (floor)": floor.ping}


def close_all(opened: dict[str, Any]) -> None:
    for name in ("sqlite", "postgresql", "redis"):
        if name in opened:
            opened[name].close()
    if "redis_floor" in opened:
        floor = opened["redis_floor"]
        for key in floor.scan_iter(match=f"{opened['redis_prefix']}*", count=500):
            floor.delete(key)
        floor.close()
    if "postgres_floor" in opened:
        opened["postgres_floor"].close()
    if "postgres_admin" in opened:
        opened["postgres_admin"].execute(f"DROP SCHEMA {opened['postgres_schema']} CASCADE")
        opened["postgres_admin"].close()


def measure(
    shape: dict[str, int], args: argparse.Namespace
) -> tuple[dict[str, Any], dict[str, str]]:
    """Every store's charges, and the stores that could not be had (with --strict, none
    is timed then: see :func:`refuse_skips`)."""
    opened: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        try:
            opened["sqlite"] = SqlCounters(f"sqlite:///{tmp}/counters.db", timeout=1)
            steps = {"memory": charging(MemoryCounters()), "sqlite": charging(opened["sqlite"])}
            steps |= open_postgres(opened, skipped)
            steps |= open_redis(opened, skipped)
            refuse_skips(args, skipped)
            samples = run_rounds(steps, shape["rounds"], shape["calls"])
        finally:
            close_all(opened)
    rows = {name: summary(values) for name, values in samples.items()}
    memory = rows["memory"]["median_us"]
    for row in rows.values():
        row["over_memory"] = round(row["median_us"] / memory, 1)
    return rows, skipped


def report(result: dict[str, Any], targets: list[Target]) -> None:
    env = result["environment"]
    print(
        f"Tessera counter stores  (Python {env['python']}, {env['machine']}, "
        f"{result['shape']['rounds']} rounds of {result['shape']['calls']} charges"
        f"{', quick' if env['quick'] else ''})"
    )
    print("µs per charge of one limit (check and record), loopback; gc off while timing\n")
    print(f"{'store':30s} {'median':>9s} {'p99':>9s} {'x memory':>9s} {'samples':>8s}")
    for name, row in result["stores"].items():
        print(
            f"{name:30s} {fmt(row['median_us'], 1):>9s} {fmt(row['p99_us'], 1):>9s} "
            f"{fmt(row['over_memory'], 1):>9s} {row['samples']:>8d}"
        )
    for name, why in result["skipped"].items():
        print(f"{name:30s} skipped: {why}")
    print_targets(targets, result["seconds"])


def main() -> None:
    args = benchmark_parser(
        __doc__.splitlines()[0],
        f"{QUICK['rounds']} rounds of {QUICK['calls']} charges instead of "
        f"{FULL['rounds']} of {FULL['calls']}",
    ).parse_args()
    shape = QUICK if args.quick else FULL
    began = time.perf_counter()
    rows, skipped = measure(shape, args)
    redis_median = rows.get("redis", {}).get("median_us")
    targets = [
        Target(
            "redis charge median µs",
            f"<= {TARGET_REDIS_US:g}",
            redis_median,
            None if redis_median is None else redis_median <= TARGET_REDIS_US,
            skipped.get("redis"),
        )
    ]
    result = {
        "benchmark": "counters",
        "environment": environment(
            args.quick,
            redis=version("redis"),
            hiredis=version("hiredis"),
            psycopg=psycopg.__version__,
        ),
        "shape": shape,
        "stores": rows,
        "skipped": skipped,
        "redis_over_memory": ratio(redis_median, rows["memory"]["median_us"]),
        "targets": [t.to_json(2) for t in targets],
        "seconds": round(time.perf_counter() - began, 1),
    }
    finish(result, targets, args, lambda r: report(r, targets), skipped)


if __name__ == "__main__":
    main()
