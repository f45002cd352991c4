"""Counters behind ``limit`` clauses: how much an agent (or user) used in a time window.

A decision that a limited permit could allow asks the counter store one question, which
it answers atomically: *do all these charges fit under their caps? If so, record them.*
With the answer comes what each key held before the call (:class:`~pdp.counters.base.Tally`),
read in the same step: the decision's audit record keeps it.
Checked and recorded together, concurrent callers (threads, workers, replicas) can never
overshoot a cap. Only an allow records usage; a denied call never consumes a cap.

Three stores answer it:

- :class:`~pdp.counters.memory.MemoryCounters`, this process only (tests, a single
  process without a store);
- :class:`~pdp.counters.sql.SqlCounters`, in the SQLite or PostgreSQL database of the
  directory: caps survive restarts with no new component (the embedded default);
- :class:`~pdp.counters.redis.RedisCounters`, the store for several replicas.

Every store counts in the same sliding window: a window is split into :data:`BUCKETS`
buckets, and usage is the sum of the buckets that overlap the window ending now, so the
window slides in steps of window/BUCKETS.

A store that cannot answer (unreachable, slower than its timeout) raises
:class:`CounterError`; the engine then denies what the limit would decide, with the
reason, and decisions that touch no limit are unaffected. After a failure a shared store
fails fast for a short back-off (:mod:`pdp.counters.breaker`), then tries again.
"""

from pdp.counters.base import (
    BUCKETS,
    FITS,
    Amount,
    Charge,
    CounterError,
    CounterStore,
    Tally,
    bucket_of,
    oldest_bucket,
    once_key,
)
from pdp.counters.memory import MemoryCounters

ACCEPTED = "memory, sqlite:///path/to/file.db, postgresql://host/database or redis://host:port/db"


def open_counters(url: str, *, timeout: float = 0.1) -> CounterStore:
    """The counter store a setting names: ``memory``, a SQLite or PostgreSQL URL (the
    directory's database), or a ``redis://`` (``rediss://``) URL. ``timeout`` bounds each
    round trip of a shared store, in seconds."""
    if url == "memory":
        return MemoryCounters()
    if url.startswith(("sqlite:", "postgresql://", "postgres://")):
        from pdp.counters.sql import SqlCounters

        return SqlCounters(url, timeout=timeout)
    if url.startswith(("redis://", "rediss://")):
        from pdp.counters.redis import RedisCounters

        return RedisCounters(url, timeout=timeout)
    scheme = url.split(":", 1)[0] if ":" in url else url
    raise CounterError(f"unknown counter store {scheme!r}: use {ACCEPTED}")


__all__ = [
    "BUCKETS",
    "FITS",
    "Amount",
    "Charge",
    "CounterError",
    "CounterStore",
    "MemoryCounters",
    "Tally",
    "bucket_of",
    "oldest_bucket",
    "once_key",
    "open_counters",
]
