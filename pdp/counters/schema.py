"""The counter tables and queries that SQLite and PostgreSQL share, and what each provides.

Statements take ``?`` placeholders; the PostgreSQL side turns them into psycopg's.
Both databases take the same SQL: ``BIGINT`` and ``DOUBLE PRECISION`` are SQLite's
INTEGER and REAL, and both know upserts (``ON CONFLICT ... DO UPDATE``). A charge runs
here, statement by statement, on SQLite; PostgreSQL runs the same steps in a function of
its own, in one round trip (:mod:`pdp.counters.postgres`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Protocol

from pdp.counters.base import FITS

TABLES = (
    "CREATE TABLE IF NOT EXISTS tessera_counter_buckets (key TEXT NOT NULL, "
    "bucket BIGINT NOT NULL, units BIGINT NOT NULL, expires DOUBLE PRECISION NOT NULL, "
    "PRIMARY KEY (key, bucket))",
    "CREATE INDEX IF NOT EXISTS tessera_counter_buckets_expires "
    "ON tessera_counter_buckets (expires)",
    "CREATE TABLE IF NOT EXISTS tessera_counter_once (once TEXT PRIMARY KEY, "
    "expires DOUBLE PRECISION NOT NULL)",
    "CREATE INDEX IF NOT EXISTS tessera_counter_once_expires ON tessera_counter_once (expires)",
)

RECORD_ONCE = (
    "INSERT INTO tessera_counter_once (once, expires) VALUES (?, ?) "
    "ON CONFLICT (once) DO UPDATE SET expires = excluded.expires"
)

SWEEP_ROWS = 256  # rows of each table one sweep deletes at most

Run = Callable[[str, Sequence[Any]], Any]  # executes one statement; answers its cursor

# A charge's answer in units: FITS or the index of the first step that does not fit, and
# the units each step's key held, up to that one (none for a retry recorded before).
Counted = tuple[int, tuple[int, ...]]


@dataclass(frozen=True, slots=True)
class Step:
    """One charge in the store's terms: units, bucket numbers, when its bucket expires."""

    key: str
    bucket: int
    oldest: int
    units: int
    cap: int
    expires: float


@dataclass(frozen=True, slots=True)
class Once:
    """A call's idempotency record: its key (none: ``""``) and when it expires."""

    key: str
    until: float


class Database(Protocol):
    """What SQLite and PostgreSQL each do their own way. Both raise CounterError."""

    name: str  # the store, named for messages: kind and place, never a password

    def charge(
        self, steps: list[Step], now: float, *, record: bool, once: Once, sweep: bool
    ) -> Counted:
        """:meth:`~pdp.counters.CounterStore.tally` of the steps, in one transaction; with
        ``sweep``, some expired rows go too."""
        ...

    def usage(self, key: str, oldest: int) -> int:
        """The units recorded under ``key`` from bucket ``oldest`` on."""
        ...

    def close(self) -> None: ...


@lru_cache(maxsize=32)
def read_query(charges: int, once: bool) -> str:
    """One row: the usage of each charge's key from its oldest live bucket on, then (with
    ``once``) whether the call's idempotency record is live."""
    usage = (
        "(SELECT COALESCE(SUM(units), 0) FROM tessera_counter_buckets "
        "WHERE key = ? AND bucket >= ?)"
    )
    columns = [usage] * charges
    if once:
        columns.append("(SELECT COUNT(*) FROM tessera_counter_once WHERE once = ? AND expires > ?)")
    return "SELECT " + ", ".join(columns)


@lru_cache(maxsize=32)
def add_query(rows: int) -> str:
    """Add units to buckets (each row once), creating those that are new."""
    return (
        "INSERT INTO tessera_counter_buckets (key, bucket, units, expires) VALUES "
        + ", ".join(["(?, ?, ?, ?)"] * rows)
        + " ON CONFLICT (key, bucket) DO UPDATE SET "
        "units = tessera_counter_buckets.units + excluded.units, expires = excluded.expires"
    )


def sweep_queries(skip_locked: str = "") -> tuple[str, str]:
    """Delete at most :data:`SWEEP_ROWS` expired buckets, then idempotency records;
    ``skip_locked`` (PostgreSQL) leaves rows another sweep holds to it."""
    return (
        "DELETE FROM tessera_counter_buckets WHERE (key, bucket) IN (SELECT key, bucket "
        f"FROM tessera_counter_buckets WHERE expires < ? LIMIT {SWEEP_ROWS}{skip_locked})",
        "DELETE FROM tessera_counter_once WHERE once IN (SELECT once "
        f"FROM tessera_counter_once WHERE expires < ? LIMIT {SWEEP_ROWS}{skip_locked})",
    )


def charge_in(run: Run, steps: list[Step], now: float, record: bool, once: Once) -> Counted:
    """A charge inside a transaction that keeps other charges of its keys out: read
    every key's usage (and the once-record) in one statement, then record or not."""
    parameters: list[Any] = [value for s in steps for value in (s.key, s.oldest)]
    if once.key:
        parameters += [once.key, now]
    row = run(read_query(len(steps), bool(once.key)), parameters).fetchone()
    if once.key and row[-1]:
        return FITS, ()  # this call was recorded before: a retry
    used = tuple(int(units) for units in row[: len(steps)])
    for index, step in enumerate(steps):
        if used[index] + step.units > step.cap:
            return index, used[: index + 1]
    if record:
        merged: dict[tuple[str, int], list[Any]] = {}
        for s in steps:  # one row each: an upsert may not touch a row twice
            added = merged.setdefault((s.key, s.bucket), [s.key, s.bucket, 0, s.expires])
            added[2] += s.units
        run(add_query(len(merged)), [value for row in merged.values() for value in row])
        if once.key:
            run(RECORD_ONCE, (once.key, once.until))
    return FITS, used
