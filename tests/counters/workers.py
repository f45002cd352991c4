"""What the counter tests run, here or in processes of their own: kept light to import.

A :class:`Place` opens as many store objects on the same counts as a test wants, in this
process or in another (it pickles), each with its own connection.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pdp.counters import FITS, Charge, CounterError, CounterStore, MemoryCounters
from pdp.counters.redis import RedisCounters
from pdp.counters.sql import SqlCounters

NOW = 1_000_000.0  # seconds: the clock of the tests that do not move it

# Generous: the contract tests check what is counted, not how fast, on a busy machine.
TIMEOUT = 5.0


@dataclass
class Place:
    """The counts of one test, and how to open a store on them."""

    backend: str
    url: str = ""
    prefix: str = "tessera:"
    opened: list[CounterStore] = field(default_factory=list, repr=False)

    def open(self, *, timeout: float = TIMEOUT, backoff: float = 1.0) -> CounterStore:
        """A new store object on this place's counts (memory has only the one)."""
        store: CounterStore
        if self.backend == "memory":
            if self.opened:
                return self.opened[0]
            store = MemoryCounters()
        elif self.backend == "redis":
            store = RedisCounters(self.url, timeout=timeout, backoff=backoff, prefix=self.prefix)
        else:
            store = SqlCounters(self.url, timeout=timeout, backoff=backoff)
        self.opened.append(store)
        return store

    def __reduce__(self) -> tuple[type[Place], tuple[str, str, str]]:
        """Another process gets the place, not this one's open stores."""
        return (Place, (self.backend, self.url, self.prefix))


def close(found: Place) -> None:
    for store in found.opened:
        store.close()


def hammer(where: Place, charges: tuple[Charge, ...], tries: int, start: Any) -> int:
    """Charge ``tries`` times from a store object of its own once every caller is ready;
    answer how many charges fit. A store too busy to answer counts as not fitting."""
    store = where.open(backoff=0.0)
    start.wait(timeout=60)
    fitted = 0
    for _ in range(tries):
        try:
            fitted += store.charge(charges, NOW) == FITS
        except CounterError:
            continue
    return fitted


def hammer_in_process(
    where: Place, charges: tuple[Charge, ...], tries: int, start: Any, out: Any
) -> None:
    """:func:`hammer` in a process of its own, the answer put on ``out``."""
    out.put(hammer(where, charges, tries, start))
    close(where)
