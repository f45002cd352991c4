"""The audit writer: records off the hot path, chained and committed in batches.

Callers hand records to a bounded queue; one thread takes whatever is waiting (up to
:data:`BATCH` records: what queued up while the previous batch committed, and for
``gather`` seconds more), chains them onto their trail and commits them in one store
transaction (group commit). A batch is all or nothing, so a crash mid-batch leaves a chain
that still verifies, one batch shorter.

The hot path pays for one append: :meth:`AuditWriter.offer` queues a record (or a function
that builds it on the writer thread) without a future and without waking the writer, which
an empty queue's first record does once per batch.

The queue is bounded twice: by records (``queue_size``) and by bytes (``queue_bytes``):
each record is queued with its weight, the size of the request it tells of (as its door
measured it) plus :data:`RECORD_BYTES` for the record's own fields, so a few large
requests fill it as surely as many small ones. A record is built bounded in any case
(:mod:`pdp.audit.records` cuts long values short).

Durability, and what happens at the bound:

- ``async`` (the default): a decision returns before its record is committed. What a crash
  can lose is bounded: the records in the queue (at most ``queue_size`` and about
  ``queue_bytes``) plus the batch being committed (at most :data:`BATCH`). A decision
  that finds the queue full is still answered, and its record is dropped
  (:meth:`AuditWriter.offer_or_drop`): counted in :attr:`AuditWriter.dropped`
  (``tessera_audit_dropped_total``) and logged, never silently.
- ``sync``: :meth:`AuditWriter.write` returns only once the record is committed, and a
  full queue makes it wait for room (backpressure); no record is dropped.

When the store refuses a batch, the writer logs it and retries the same batch (its chain
position is not given away) until it commits or the writer stops. When another writer on
the same database (a replica) took that position first, the batch is chained onto the
new head and committed there.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from datetime import UTC, datetime
from typing import Any

from issuer.store import AuditEntry, Store
from pdp.audit.chain import GENESIS, TRAILS, canonical, link

log = logging.getLogger("tessera.audit")

BATCH = 512
GATHER = 0.1  # seconds a batch waits for more records to share its commit (async)
RETRY_DELAY = 0.5
ROOM_POLL = 0.001  # seconds between looks for room in a full queue
QUEUE_BYTES = 64 << 20  # the weight of the records a queue holds before it is full
RECORD_BYTES = 1 << 10  # a queued record's own fields, beside the request it tells of
DROP_LOG_INTERVAL = 10.0  # seconds between two log lines about dropped records

Record = Mapping[str, Any] | Callable[[], Mapping[str, Any]]
"""A record, or a function that builds one (then the writer thread pays for building it)."""

# (trail, record, future, weight); a None trail is a flush
_Item = tuple[str | None, Record | None, Future[int] | None, int]


class AuditWriter:
    """Appends records to the trails of a store."""

    def __init__(
        self,
        store: Store,
        queue_size: int = 10_000,
        gather: float = GATHER,
        queue_bytes: int = QUEUE_BYTES,
    ) -> None:
        self.store = store
        self.gather = gather
        self.queue_size = queue_size
        self.queue_bytes = queue_bytes
        self._items: deque[_Item] = deque()
        self._bytes = 0  # the weight of the records queued
        self._lock = threading.Lock()  # over _bytes and dropped: several threads queue
        self.dropped = 0  # records dropped at the bound (async durability only)
        self._drops_told = 0  # ... of which the log has told
        self._told_at = -DROP_LOG_INTERVAL  # monotonic time of the last log line about it
        self._wake = threading.Event()
        self._closing = False
        self._urgent = False  # someone waits for a queued record: commit without gathering
        self._tails: dict[str, tuple[int, str]] = {}
        for trail in TRAILS:
            tail = store.audit_tail(trail)
            self._tails[trail] = (0, GENESIS) if tail is None else (tail.seq, tail.hash)
        self.written = 0  # records committed
        self.full = 0  # times a record found the queue full (and its caller had to wait)
        self.deepest = 0  # the most records ever waiting when the writer took a batch
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._thread.start()

    @property
    def closing(self) -> bool:
        return self._closing

    def depth(self) -> int:
        """Records waiting in the queue."""
        return len(self._items)

    def weight(self) -> int:
        """The weight of the records waiting in the queue, in bytes."""
        return self._bytes

    def _full(self) -> bool:
        return len(self._items) >= self.queue_size or self._bytes >= self.queue_bytes

    def offer(self, trail: str, record: Record, weight: int = RECORD_BYTES) -> bool:
        """Queue a record with no future (async durability); False when the queue is full
        (then the caller drops it with :meth:`offer_or_drop`, or waits with
        :meth:`submit`, off the event loop)."""
        _known(trail)
        if self._full():
            self.full += 1
            return False
        items = self._items
        with self._lock:
            self._bytes += weight
        items.append((trail, record, None, weight))
        depth = len(items)
        if depth == 1 or depth == BATCH:  # the writer sleeps on an empty queue, or gathers
            self._wake.set()
        return True

    def offer_or_drop(self, trail: str, record: Record, weight: int = RECORD_BYTES) -> bool:
        """Queue a record, or drop it when the queue is full (async durability at its
        bound): counted in :attr:`dropped` and logged, at most once per
        :data:`DROP_LOG_INTERVAL` with the number since. Whether it was queued."""
        if self.offer(trail, record, weight):
            return True
        now = time.monotonic()
        with self._lock:
            self.dropped += 1
            untold = self.dropped - self._drops_told
            if now - self._told_at < DROP_LOG_INTERVAL:
                return False
            self._drops_told, self._told_at = self.dropped, now
        log.warning(
            "the audit queue is full (%d records, %d bytes): dropped %d record(s) for the "
            "%s trail since the last warning, %d in all (tessera_audit_dropped_total)",
            len(self._items),
            self._bytes,
            untold,
            trail,
            self.dropped,
        )
        return False

    def put(self, trail: str, record: Record, weight: int = RECORD_BYTES) -> None:
        """Queue a record nobody waits for, like :meth:`offer`, but wait for room when the
        queue is full (backpressure) instead of refusing it."""
        if not self.offer(trail, record, weight):
            self.submit(trail, record, weight=weight)

    def submit(
        self, trail: str, record: Record, urgent: bool = False, weight: int = RECORD_BYTES
    ) -> Future[int]:
        """Queue a record (or a function that builds it, called by the writer thread); the
        future gives its seq once committed. Waits while the queue is full (backpressure).
        An ``urgent`` record is committed without waiting ``gather`` for company."""
        done = _pending(trail)
        if self._full():
            self.full += 1
            while self._full():
                time.sleep(ROOM_POLL)
        self._put((trail, record, done, weight), urgent)
        return done

    def submit_nowait(
        self, trail: str, record: Record, weight: int = RECORD_BYTES
    ) -> Future[int] | None:
        """Queue a record if there is room; None when the queue is full (then the caller
        waits with :meth:`submit`, off the event loop)."""
        done = _pending(trail)
        if self._full():
            self.full += 1
            return None
        self._put((trail, record, done, weight))
        return done

    def write(
        self, trail: str, record: Record, timeout: float = 30.0, weight: int = RECORD_BYTES
    ) -> int:
        """Queue a record and wait until it is committed (``sync`` durability); the writer
        commits it without gathering company."""
        done = self.submit(trail, record, urgent=True, weight=weight)
        return done.result(timeout)

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until everything queued before this call is committed."""
        done: Future[int] = Future()
        done.set_running_or_notify_cancel()
        self._put((None, None, done, 0), urgent=True)
        done.result(timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Commit everything queued, then stop."""
        self._closing = True
        self._wake.set()
        self._thread.join(timeout)

    def _put(self, item: _Item, urgent: bool = False) -> None:
        """Queue an item someone may wait for: the writer wakes for it at once."""
        if urgent:
            self._urgent = True
        with self._lock:
            self._bytes += item[3]
        self._items.append(item)
        self._wake.set()

    def _run(self) -> None:
        items = self._items
        next_commit = 0.0  # monotonic time before which a commit waits for company
        while True:
            self._wake.clear()
            if not items:
                if self._closing:
                    return
                self._wake.wait()
                continue
            # Group commit: a commit costs far more than a record (an fsync), so commits
            # start at most every ``gather`` seconds, each taking whatever queued up
            # meanwhile (up to BATCH). A full batch, a record someone waits for, or
            # closing does not wait; sync durability gathers nothing.
            wait = next_commit - time.monotonic()
            if wait > 0 and len(items) < BATCH and not (self._urgent or self._closing):
                self._wake.clear()  # then look again: a full batch, an urgent record or
                if len(items) < BATCH and not (self._urgent or self._closing):  # close wakes
                    self._wake.wait(wait)
            self._urgent = False
            next_commit = time.monotonic() + self.gather
            depth = len(items)
            if depth > self.deepest:
                self.deepest = depth
            batch = [items.popleft() for _ in range(min(depth, BATCH))]
            taken = sum(item[3] for item in batch)
            with self._lock:
                self._bytes -= taken
            self._commit(batch, self._closing)

    def _commit(self, batch: list[_Item], stopping: bool) -> None:
        by_trail: dict[str, list[tuple[str, str | None, Future[int] | None]]] = {}
        flushed = []
        for trail, record, done, _ in batch:
            if trail is None:  # a flush: answered once what came before is committed
                flushed.append(done)
                continue
            try:  # a factory builds the record here, off the caller's thread
                value = record() if callable(record) else record
                text = canonical(value)  # type: ignore[arg-type]
            except (TypeError, ValueError) as exc:  # not JSON: refuse this record alone
                log.error("refusing an audit record for the %s trail: %s", trail, exc)
                if done is not None:
                    done.set_exception(exc)
                continue
            by_trail.setdefault(trail, []).append((text, agent_of(trail, value), done))
        for trail, items in by_trail.items():
            entries = self._append(trail, [(text, agent) for text, agent, _ in items], stopping)
            if entries is None:
                lost = RuntimeError("the audit store is unavailable")
                for _, _, done in items:
                    if done is not None:
                        done.set_exception(lost)
                log.error("lost %d audit records for the %s trail: %s", len(items), trail, lost)
                continue
            self.written += len(entries)
            for entry, (_, _, done) in zip(entries, items, strict=True):
                if done is not None:
                    done.set_result(entry.seq)
        for done in flushed:
            if done is not None:
                done.set_result(0)

    def _append(
        self, trail: str, texts: list[tuple[str, str | None]], stopping: bool
    ) -> list[AuditEntry] | None:
        """Chain ``texts`` onto the trail's head and commit them; the entries, or None when
        the store stays unavailable while stopping. When another writer (a replica on the
        same database) took the next seq first, chain onto its head and try again."""
        while True:
            seq, prev = self._tails[trail]
            now = datetime.now(UTC)
            entries = []
            for text, agent in texts:
                seq += 1
                digest = link(prev, text)
                entries.append(AuditEntry(seq, now, text, prev, digest, agent))
                prev = digest
            try:
                self.store.append_audit(trail, entries)
                committed = True
            except Exception:
                # The commit may have gone through with only its answer lost: then
                # retrying would collide with the batch itself, forever.
                committed = self._landed(trail, entries[-1])
                if not committed and self._moved(trail):
                    continue
                if not committed:
                    log.exception("cannot commit %d audit records; retrying", len(entries))
            if committed:
                self._tails[trail] = (seq, prev)
                return entries
            if stopping:
                return None
            time.sleep(RETRY_DELAY)

    def _moved(self, trail: str) -> bool:
        """Whether the trail's head is no longer the one this writer chained onto (another
        writer appended); then the writer takes the new head."""
        try:
            tail = self.store.audit_tail(trail)
        except Exception:
            return False
        head = (0, GENESIS) if tail is None else (tail.seq, tail.hash)
        if head == self._tails[trail]:
            return False
        self._tails[trail] = head
        return True

    def _landed(self, trail: str, last: AuditEntry) -> bool:
        """Whether a batch whose commit reported an error is in the store all the same."""
        try:
            tail = self.store.audit_tail(trail)
        except Exception:
            return False
        return tail is not None and tail.seq == last.seq and tail.hash == last.hash


def agent_of(trail: str, record: Any) -> str | None:
    """The agent a decision record of the agent trail is of (stored beside the record,
    indexed: the console reads an agent's decisions by it); None for any other record."""
    if trail != "agent" or not isinstance(record, Mapping) or record.get("kind") != "decision":
        return None
    agent = record.get("agent")
    return agent if isinstance(agent, str) and "\x00" not in agent else None


def _known(trail: str) -> None:
    if trail not in TRAILS:
        raise ValueError(f"unknown audit trail {trail!r}; use one of {', '.join(TRAILS)}")


def _pending(trail: str) -> Future[int]:
    """The future of a record's commit. It is marked running at once, so a caller who
    stops waiting (a cancelled call) cannot cancel it: the record is committed anyway,
    and the writer never meets a cancelled future."""
    _known(trail)
    done: Future[int] = Future()
    done.set_running_or_notify_cancel()
    return done
