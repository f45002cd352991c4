"""The counter tables and queries that SQLite and PostgreSQL share, and what each provides.

Statements take ``?`` placeholders; the PostgreSQL side turns them into psycopg's.
Both databases take the same SQL: ``BIGINT`` and ``DOUBLE PRECISION`` are SQLite's
INTEGER and REAL, and both know upserts (``ON CONFLICT ... DO UPDATE``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from functools import lru_cache
from typing import Any, Protocol

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


class Database(Protocol):
    """What differs between SQLite and PostgreSQL: connecting, locking, sweeping."""

    name: str  # the store, named for messages: kind and place, never a password

    def transaction(self, keys: Sequence[str] | None) -> AbstractContextManager[Run]:
        """One transaction. With ``keys`` (sorted) it writes, and no other transaction
        given one of those keys runs until it ends. Raises CounterError."""
        ...

    def sweep(self, run: Run, now: float) -> None:
        """Delete some rows that expired before ``now``."""
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
