"""The counter store's interface and what every store shares: charges, buckets, errors."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from decimal import Decimal
from typing import NamedTuple, Protocol

from pdp.errors import PdpError

Amount = Decimal | int

BUCKETS = 60

FITS = -1  # what :meth:`CounterStore.charge` answers when every charge fits


class CounterError(PdpError):
    """The counter store could not answer (unreachable, timed out, refused)."""


@dataclass(frozen=True, slots=True)
class Charge:
    """One limit's share of one call: add ``amount`` under ``key`` if it fits ``cap``.

    ``subject`` is whose use the key counts, or what (an agent id, a user id, the pair,
    an owner, an agent and a resource, a tool, ``*`` for a global limit: the tail of
    :func:`pdp.lang.runtime.limit_key_prefix`), also the last part of ``key``: shared
    stores keep every key of one subject together (one Redis Cluster slot)."""

    key: str
    subject: str
    window: float  # seconds
    amount: Amount
    cap: Amount


class Tally(NamedTuple):
    """What one atomic check found: its ``answer`` (what :meth:`CounterStore.charge`
    answers: :data:`FITS` or the index of the first charge that does not fit), and what
    each charge's key held in its window before this call, read in the same atomic step,
    in charge order up to and including the first that does not fit. ``used`` is empty
    when nothing was read: a retry of a call recorded before."""

    answer: int
    used: tuple[Amount, ...]


def bucket_of(now: float, window: float) -> int:
    """The bucket ``now`` falls in, for a window of ``window`` seconds."""
    return int(now * BUCKETS // window)


def oldest_bucket(now: float, window: float) -> int:
    """The oldest bucket still inside the window ending ``now``."""
    return bucket_of(now, window) - BUCKETS + 1


class CounterStore(Protocol):
    """Where limit usage is counted. Keys are opaque strings made by the engine."""

    @property
    def name(self) -> str:
        """What it is, for messages: its address, never a password."""
        ...

    @property
    def errors(self) -> int:
        """How many times it could not answer (a metric)."""
        ...

    def charge(
        self, charges: tuple[Charge, ...], now: float, *, record: bool = True, once: str = ""
    ) -> int:
        """Atomically: when every charge fits (usage in its window + amount <= cap),
        record them all (unless ``record`` is false) and answer :data:`FITS`; otherwise
        record nothing and answer the index of the first charge that does not fit.

        ``once`` is an idempotency key the caller keeps across retries of one call: the
        same charges under the same key, recorded within the longest window, fit again
        and are not recorded twice. Raises :class:`CounterError` when it cannot answer."""
        ...

    def tally(
        self, charges: tuple[Charge, ...], now: float, *, record: bool = True, once: str = ""
    ) -> Tally:
        """:meth:`charge`, also telling the usage each charge found (:class:`Tally`): what
        a decision's audit record keeps of its limits."""
        ...

    def usage(self, charge: Charge, now: float) -> Amount:
        """The total recorded under ``charge.key`` in its window before ``now``."""
        ...

    def close(self) -> None:
        """Let go of connections; the store is not used again."""
        ...


def once_key(once: str, charges: tuple[Charge, ...]) -> str:
    """The idempotency record of ``once`` for exactly these charges: a key reused for a
    different call is a different record, never a free pass."""
    digest = hashlib.sha256(once.encode("utf-8", "surrogatepass"))
    for c in charges:
        digest.update(f"\x00{c.key}\x00{c.window!r}\x00{c.amount}".encode("utf-8", "surrogatepass"))
    return digest.hexdigest()[:32]
