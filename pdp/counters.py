"""Counters behind ``limit`` clauses: how much an agent (or user) used in a time window.

The engine asks :meth:`CounterStore.usage` while deciding and calls :meth:`CounterStore.add`
only when the decision is allow, so a denied call never consumes a cap. This module holds
the interface and the in-memory store; shared stores (Redis) implement the same protocol.
"""

from __future__ import annotations

import threading
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


class _Series:
    """The buckets of one key, oldest first.

    No running total: subtracting expired float amounts drifts (0.9 + 0.9 + 1.1 - 0.9 -
    0.9 is not 1.1), and summing at most :data:`BUCKETS` live buckets is cheap.
    """

    __slots__ = ("buckets",)

    def __init__(self) -> None:
        self.buckets: dict[int, Amount] = {}


class MemoryCounters:
    """A sliding window of :data:`BUCKETS` buckets per key, in this process only."""

    def __init__(self) -> None:
        self._series: dict[str, _Series] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _bucket(window: float, now: float) -> int:
        return int(now * BUCKETS // window) if window > 0 else int(now * 1000)

    def usage(self, key: str, window: float, now: float) -> Amount:
        series = self._series.get(key)
        if series is None:
            return 0
        oldest = self._bucket(window, now) - BUCKETS + 1
        with self._lock:
            buckets = series.buckets
            # Buckets are added in time order, so stale ones sit at the front.
            while buckets:
                first = next(iter(buckets))
                if first >= oldest:
                    break
                del buckets[first]
            return sum(buckets.values())

    def add(self, key: str, window: float, amount: Amount, now: float) -> None:
        bucket = self._bucket(window, now)
        with self._lock:
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = _Series()
            buckets = series.buckets
            if bucket in buckets:
                buckets[bucket] += amount
            elif not buckets or bucket > next(reversed(buckets)):
                buckets[bucket] = amount
            else:
                # A clock that stepped back: keep the dict in time order.
                buckets[bucket] = amount
                series.buckets = dict(sorted(buckets.items()))

    def clear(self) -> None:
        with self._lock:
            self._series.clear()
