"""The audit writer: records off the hot path, chained and committed in batches.

Callers hand records to a bounded queue; one thread takes whatever is waiting (up to
:data:`BATCH` records: what queued up while the previous batch committed), chains them
onto their trail and commits them in one store transaction (group commit). A batch is
all or nothing, so a crash mid-batch leaves a chain that still verifies, one batch shorter.

Durability:

- ``async`` (the default): a decision returns before its record is committed. What a crash
  can lose is bounded: the records in the queue (at most ``queue_size``) plus the batch
  being committed (at most :data:`BATCH`).
- ``sync``: :meth:`AuditWriter.write` returns only once the record is committed.

A full queue makes :meth:`AuditWriter.write` wait for room (backpressure); a record is
never dropped silently. When the store refuses a batch, the writer logs it and retries the
same batch (its chain position is not given away) until it commits or the writer stops.
When another writer on the same database (a replica) took that position first, the batch
is chained onto the new head and committed there.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from datetime import UTC, datetime
from typing import Any

from issuer.store import AuditEntry, Store
from pdp.audit.chain import GENESIS, TRAILS, canonical, link

log = logging.getLogger("tessera.audit")

BATCH = 512
GATHER = 0.002  # seconds a batch waits for more records to share its commit (async)
RETRY_DELAY = 0.5
_STOP = object()

Record = Mapping[str, Any] | Callable[[], Mapping[str, Any]]
"""A record, or a function that builds one (then the writer thread pays for building it)."""


class AuditWriter:
    """Appends records to the agent and admin trails of a store."""

    def __init__(self, store: Store, queue_size: int = 10_000, gather: float = GATHER) -> None:
        self.store = store
        self.gather = gather
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self._tails: dict[str, tuple[int, str]] = {}
        for trail in TRAILS:
            tail = store.audit_tail(trail)
            self._tails[trail] = (0, GENESIS) if tail is None else (tail.seq, tail.hash)
        self.written = 0
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._thread.start()

    def submit(self, trail: str, record: Record) -> Future[int]:
        """Queue a record (or a function that builds it, called by the writer thread); the
        future gives its seq once committed. Waits while the queue is full (backpressure)."""
        done = _pending(trail)
        self.queue.put((trail, record, done))
        return done

    def submit_nowait(self, trail: str, record: Record) -> Future[int] | None:
        """Queue a record if there is room; None when the queue is full (then the caller
        waits with :meth:`submit`, off the event loop)."""
        done = _pending(trail)
        try:  # the record is serialized by the writer thread, off the caller's path
            self.queue.put_nowait((trail, record, done))
        except queue.Full:
            return None
        return done

    def write(self, trail: str, record: Record, timeout: float = 30.0) -> int:
        """Queue a record and wait until it is committed (``sync`` durability)."""
        return self.submit(trail, record).result(timeout)

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until everything queued before this call is committed."""
        done: Future[int] = Future()
        done.set_running_or_notify_cancel()
        self.queue.put((None, None, done))
        done.result(timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Commit everything queued, then stop."""
        self.queue.put(_STOP)
        self._thread.join(timeout)

    def _run(self) -> None:
        stopping = False
        while not stopping:
            batch = [self.queue.get()]
            # Group commit: whatever queued up while the last batch committed goes in this
            # one, and the batch waits up to ``gather`` seconds for company (a commit costs
            # far more than a record; sync durability gathers nothing).
            deadline = time.monotonic() + self.gather
            while len(batch) < BATCH:
                try:
                    batch.append(self.queue.get(timeout=max(deadline - time.monotonic(), 0)))
                except queue.Empty:
                    break
            if _STOP in batch:
                stopping = True
                batch = [item for item in batch if item is not _STOP]
            if batch:
                self._commit(batch, stopping)

    def _commit(self, batch: list[Any], stopping: bool) -> None:
        by_trail: dict[str, list[tuple[str, Future[int]]]] = {}
        flushed = []
        for trail, record, done in batch:
            if trail is None:  # a flush: answered once what came before is committed
                flushed.append(done)
                continue
            try:  # a factory builds the record here, off the caller's thread
                text = canonical(record() if callable(record) else record)
            except (TypeError, ValueError) as exc:  # not JSON: refuse this record alone
                log.error("refusing an audit record for the %s trail: %s", trail, exc)
                done.set_exception(exc)
                continue
            by_trail.setdefault(trail, []).append((text, done))
        for trail, items in by_trail.items():
            entries = self._append(trail, [text for text, _ in items], stopping)
            if entries is None:
                for _, done in items:
                    done.set_exception(RuntimeError("the audit store is unavailable"))
                continue
            self.written += len(entries)
            for entry, (_, done) in zip(entries, items, strict=True):
                done.set_result(entry.seq)
        for done in flushed:
            done.set_result(0)

    def _append(self, trail: str, texts: list[str], stopping: bool) -> list[AuditEntry] | None:
        """Chain ``texts`` onto the trail's head and commit them; the entries, or None when
        the store stays unavailable while stopping. When another writer (a replica on the
        same database) took the next seq first, chain onto its head and try again."""
        while True:
            seq, prev = self._tails[trail]
            now = datetime.now(UTC)
            entries = []
            for text in texts:
                seq += 1
                digest = link(prev, text)
                entries.append(AuditEntry(seq, now, text, prev, digest))
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


def _pending(trail: str) -> Future[int]:
    """The future of a record's commit. It is marked running at once, so a caller who
    stops waiting (a cancelled call) cannot cancel it: the record is committed anyway,
    and the writer never meets a cancelled future."""
    if trail not in TRAILS:
        raise ValueError(f"unknown audit trail {trail!r}; use one of {', '.join(TRAILS)}")
    done: Future[int] = Future()
    done.set_running_or_notify_cancel()
    return done
