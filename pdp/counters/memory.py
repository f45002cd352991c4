"""Limit counters in this process's memory: exact and fast, but neither shared with
another process nor kept across a restart. ``tessera serve`` refuses them with more than
one worker."""

from __future__ import annotations

import threading

from pdp.counters.base import FITS, Amount, Charge, Tally, bucket_of, oldest_bucket, once_key

MAX_ONCE = 100_000  # idempotency records kept at the most


class MemoryCounters:
    """A sliding window of :data:`~pdp.counters.BUCKETS` buckets per key.

    Each key holds its buckets oldest first. Usage sums the live buckets rather than
    keeping a running total: subtracting expired float amounts drifts (0.9 + 0.9 + 1.1
    - 0.9 - 0.9 is not 1.1), and summing at most BUCKETS numbers is cheap.
    """

    name = "memory (this process only)"
    errors = 0  # memory always answers

    def __init__(self) -> None:
        self._series: dict[str, dict[int, Amount]] = {}
        self._once: dict[str, float] = {}  # idempotency records: key -> when it expires
        self._lock = threading.Lock()

    def charge(
        self, charges: tuple[Charge, ...], now: float, *, record: bool = True, once: str = ""
    ) -> int:
        return self.tally(charges, now, record=record, once=once).answer

    def tally(
        self, charges: tuple[Charge, ...], now: float, *, record: bool = True, once: str = ""
    ) -> Tally:
        with self._lock:
            remembered = ""
            if once and record:
                remembered = once_key(once, charges)
                if self._once.get(remembered, 0.0) > now:
                    return Tally(FITS, ())
            used: list[Amount] = []
            for index, charge in enumerate(charges):
                used.append(self._usage(charge.key, charge.window, now))
                if used[-1] + charge.amount > charge.cap:
                    return Tally(index, tuple(used))
            if record:
                for charge in charges:
                    self._add(charge.key, charge.window, charge.amount, now)
                if remembered:
                    self._remember(remembered, now + max(c.window for c in charges), now)
            return Tally(FITS, tuple(used))

    def usage(self, charge: Charge, now: float) -> Amount:
        with self._lock:
            return self._usage(charge.key, charge.window, now)

    def close(self) -> None:
        self.clear()

    def clear(self) -> None:
        with self._lock:
            self._series.clear()
            self._once.clear()

    def _usage(self, key: str, window: float, now: float) -> Amount:
        buckets = self._series.get(key)
        if not buckets:
            return 0
        oldest = oldest_bucket(now, window)
        while buckets:
            first = next(iter(buckets))
            if first >= oldest:
                break
            del buckets[first]
        return sum(buckets.values())

    def _add(self, key: str, window: float, amount: Amount, now: float) -> None:
        bucket = bucket_of(now, window)
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

    def _remember(self, key: str, expires: float, now: float) -> None:
        if len(self._once) >= MAX_ONCE:  # bounded: expired records go first, then the oldest
            self._once = {k: t for k, t in self._once.items() if t > now}
            while len(self._once) >= MAX_ONCE:
                del self._once[next(iter(self._once))]
        self._once[key] = expires
