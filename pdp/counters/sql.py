"""Limit counters in SQL: the SQLite file or PostgreSQL database of the directory.

Caps survive restarts and hold across every process that opens the same database, with
no component beyond the one the directory needs. The store has its own connection (not
the directory's) and two tables, created when absent:

- ``tessera_counter_buckets``: (key, bucket) -> units, the amount in units of 1/10,000
  (:mod:`pdp.counters.units`), with the time the bucket leaves every window;
- ``tessera_counter_once``: idempotency records, each with the time it expires.

A charge is one transaction: it reads the usage of every key, decides, and records only
when everything fits. No two charges on one key interleave: on SQLite, ``BEGIN
IMMEDIATE`` takes the database's write lock (across processes) before the reads; on
PostgreSQL, a function does the charge in one round trip, taking advisory locks on the
keys, in sorted order, before the reads (:mod:`pdp.counters.postgres`). Expired rows are
deleted every :data:`SWEEP_EVERY` recording charges, a bounded number at once.

Every round trip is bounded by the store's timeout: SQLite's busy timeout, PostgreSQL's
``statement_timeout``, ``lock_timeout`` and ``tcp_user_timeout``. PostgreSQL's
``connect_timeout`` cannot go below 2 seconds (libpq's minimum): a connection attempt to
an address that does not answer costs one call up to that, once per back-off, while the
:class:`~pdp.counters.breaker.Breaker` has the other calls fail fast.
"""

from __future__ import annotations

from pdp.counters.base import (
    BUCKETS,
    FITS,
    Amount,
    Charge,
    CounterError,
    Tally,
    bucket_of,
    oldest_bucket,
    once_key,
)
from pdp.counters.breaker import BACKOFF, Breaker, Guarded
from pdp.counters.schema import Database, Once, Step
from pdp.counters.units import amount_units, cap_units, from_units

TIMEOUT = 0.1  # seconds a round trip may take
SWEEP_EVERY = 64  # recording charges between two deletions of expired rows


class SqlCounters(Guarded):
    """A :class:`~pdp.counters.CounterStore` in a SQLite file or a PostgreSQL database.

    ``url`` is the directory's: ``sqlite:///path.db`` or ``postgresql://host/db`` (with
    ``options=-c search_path=...`` for a schema). Connects on first use."""

    def __init__(self, url: str, *, timeout: float = TIMEOUT, backoff: float = BACKOFF) -> None:
        self.timeout = timeout
        self._db = open_database(url, timeout)
        self.name = self._db.name
        self._breaker = Breaker(self.name, backoff)
        self._recorded = 0  # recording charges, for the sweep

    def charge(
        self, charges: tuple[Charge, ...], now: float, *, record: bool = True, once: str = ""
    ) -> int:
        return self.tally(charges, now, record=record, once=once).answer

    def tally(
        self, charges: tuple[Charge, ...], now: float, *, record: bool = True, once: str = ""
    ) -> Tally:
        if not charges:
            return Tally(FITS, ())
        steps = [step_of(c, now) for c in charges]
        remembered = Once(
            once_key(once, charges) if once and record else "",
            now + max(c.window for c in charges),
        )
        sweep = False
        if record:
            self._recorded += 1
            sweep = self._recorded % SWEEP_EVERY == 0
        index, used = self._breaker.call(
            lambda: self._db.charge(steps, now, record=record, once=remembered, sweep=sweep)
        )
        return Tally(index, tuple(map(from_units, used, charges)))

    def usage(self, charge: Charge, now: float) -> Amount:
        oldest = oldest_bucket(now, charge.window)
        units = self._breaker.call(lambda: self._db.usage(charge.key, oldest))
        return from_units(units, charge)

    def close(self) -> None:
        self._db.close()


def step_of(charge: Charge, now: float) -> Step:
    """A charge in units and buckets. Its bucket leaves the window ending at ``expires``
    (one bucket later than exact, so float rounding never sweeps a live bucket)."""
    bucket = bucket_of(now, charge.window)
    return Step(
        key=charge.key,
        bucket=bucket,
        oldest=oldest_bucket(now, charge.window),
        units=amount_units(charge.amount),
        cap=cap_units(charge.cap),
        expires=(bucket + BUCKETS + 1) * charge.window / BUCKETS,
    )


def open_database(url: str, timeout: float) -> Database:
    """The SQLite or PostgreSQL side of a URL."""
    if url.startswith("sqlite:"):
        from pdp.counters.sqlite import SQLiteDatabase

        return SQLiteDatabase(url, timeout)
    if url.startswith(("postgresql://", "postgres://")):
        from pdp.counters.postgres import PostgresDatabase

        return PostgresDatabase(url, timeout)
    raise CounterError(
        "a SQL counter store needs sqlite:///path/to/file.db or postgresql://host/database"
    )
