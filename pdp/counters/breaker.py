"""A circuit breaker for the shared counter stores: after a failure, fail fast a while.

The engine calls a store inline, once per limited decision. A store that is down would
otherwise cost every such call its full timeout; after one failed round trip the breaker
refuses calls at once for ``backoff`` seconds. Then it lets one call through (a trial,
while the others still fail fast): its success closes the breaker, its failure opens it
again. So the store recovers by itself when its server returns.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from pdp.counters.base import CounterError

T = TypeVar("T")

BACKOFF = 1.0  # seconds of failing fast after a failure


class CounterBusy(CounterError):
    """Every connection of this process was in use for the whole timeout: the process is
    overloaded, not the store down, so the breaker stays closed."""


class Breaker:
    """Runs a store's round trips; counts them and trips on a :class:`CounterError`.

    ``errors`` counts the round trips that failed, ``rejected`` the calls refused without
    a round trip while the breaker was open: the numbers a metric can expose."""

    def __init__(
        self, store: str, backoff: float = BACKOFF, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.store = store
        self.backoff = backoff
        self.errors = 0
        self.rejected = 0
        self._clock = clock
        self._lock = threading.Lock()
        self._open_until = 0.0  # 0.0: closed
        self._trial = False  # a call is finding out whether the store is back
        self._last = ""  # the failure that opened the breaker

    @property
    def open(self) -> bool:
        """Whether calls fail fast now."""
        return self._open_until != 0.0 and (self._trial or self._clock() < self._open_until)

    def call(self, attempt: Callable[[], T]) -> T:
        """``attempt()``, unless the breaker is open; a :class:`CounterError` opens it."""
        trial = self._open_until != 0.0 and self._enter()
        try:
            result = attempt()
        except CounterBusy:
            self.errors += 1
            raise
        except CounterError as e:
            self._fail(str(e))
            raise
        finally:
            if trial:
                self._trial = False
        if trial:
            with self._lock:
                self._open_until = 0.0
        return result

    def _enter(self) -> bool:
        """Refuse the call while open; past the back-off, let this one call try."""
        with self._lock:
            if self._open_until == 0.0:
                return False
            left = self._open_until - self._clock()
            if left > 0 or self._trial:
                self.rejected += 1
                when = f"for {left:.2f} s" if left > 0 else "until another call finds it back"
                raise CounterError(
                    f"{self.store} is not asked again {when}, after it failed: {self._last}"
                )
            self._trial = True
            return True

    def _fail(self, message: str) -> None:
        with self._lock:
            self.errors += 1
            self._last = message.removeprefix(f"{self.store}: ")
            self._open_until = self._clock() + self.backoff


@contextmanager
def held(lock: threading.Lock, timeout: float, store: str) -> Iterator[None]:
    """A connection's lock, waited for at most ``timeout`` seconds."""
    if not lock.acquire(timeout=timeout):
        raise CounterBusy(f"{store}: its connections stayed busy for {timeout:g} s")
    try:
        yield
    finally:
        lock.release()


class Guarded:
    """A shared store whose round trips go through its :class:`Breaker`: the breaker's
    counts, as the store's metrics read them."""

    _breaker: Breaker

    @property
    def errors(self) -> int:
        """Round trips that failed (unreachable, timed out, refused)."""
        return self._breaker.errors

    @property
    def rejected(self) -> int:
        """Calls refused at once while the store was failing."""
        return self._breaker.rejected
