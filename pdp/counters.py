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


class MemoryCounters:
    """A sliding window of :data:`BUCKETS` buckets per key, in this process only.

    Each key holds its buckets oldest first. Usage sums the live buckets rather than
    keeping a running total: subtracting expired float amounts drifts (0.9 + 0.9 + 1.1
    - 0.9 - 0.9 is not 1.1), and summing at most :data:`BUCKETS` numbers is cheap.
    """

    def __init__(self) -> None:
        self._series: dict[str, dict[int, Amount]] = {}
        self._lock = threading.Lock()

    def usage(self, key: str, window: float, now: float) -> Amount:
        buckets = self._series.get(key)
        if not buckets:
            return 0
        oldest = int(now * BUCKETS // window) - BUCKETS + 1
        with self._lock:
            while buckets:
                first = next(iter(buckets))
                if first >= oldest:
                    break
                del buckets[first]
            return sum(buckets.values())

    def add(self, key: str, window: float, amount: Amount, now: float) -> None:
        bucket = int(now * BUCKETS // window)
        with self._lock:
            buckets = self._series.get(key)
            if buckets is None:
                self._series[key] = {bucket: amount}
            elif bucket in buckets:
                buckets[bucket] += amount
            elif bucket > next(reversed(buckets), bucket - 1):
                buckets[bucket] = amount
            else:
                # A clock that stepped back: keep the buckets in time order.
                buckets[bucket] = amount
                self._series[key] = dict(sorted(buckets.items()))

    def clear(self) -> None:
        with self._lock:
            self._series.clear()
