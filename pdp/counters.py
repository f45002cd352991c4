"""Counters behind ``limit`` clauses: how much an agent (or user) used in a time window.

The engine asks :meth:`CounterStore.usage` while deciding and calls :meth:`CounterStore.add`
only when the decision is allow, so a denied call never consumes a cap. This module holds
the interface and the in-memory store; shared stores (Redis) implement the same protocol.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from decimal import Decimal
from typing import Protocol

Amount = Decimal | int

# A window is split into this many buckets; usage is the sum of the buckets that overlap
# the window ending now, so the window slides in steps of window/BUCKETS.
BUCKETS = 60


class CounterStore(Protocol):
    """Where limit usage is counted. Keys are opaque strings made by the engine."""

    def usage(self, key: str, window: float, now: float) -> Amount:
        """The total added under ``key`` during the ``window`` seconds before ``now``."""
        ...

    def add(self, key: str, window: float, amount: Amount, now: float) -> None:
        """Record ``amount`` under ``key`` at ``now``."""
        ...


class MemoryCounters:
    """A sliding window of :data:`BUCKETS` buckets per key, in this process only."""

    def __init__(self) -> None:
        self._buckets: defaultdict[str, dict[int, Amount]] = defaultdict(dict)
        self._lock = threading.Lock()

    @staticmethod
    def _width(window: float) -> float:
        return max(window / BUCKETS, 0.001)

    def usage(self, key: str, window: float, now: float) -> Amount:
        width = self._width(window)
        current = int(now // width)
        oldest = current - BUCKETS + 1
        with self._lock:
            buckets = self._buckets.get(key)
            if not buckets:
                return 0
            stale = [b for b in buckets if b < oldest]
            for b in stale:
                del buckets[b]
            return sum(buckets.values(), 0)

    def add(self, key: str, window: float, amount: Amount, now: float) -> None:
        bucket = int(now // self._width(window))
        with self._lock:
            buckets = self._buckets[key]
            buckets[bucket] = buckets.get(bucket, 0) + amount

    def clear(self) -> None:
        with self._lock:
            self._buckets.clear()
