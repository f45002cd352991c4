"""The audit writer: chained, ordered, group-committed, bounded in records and bytes;
at its bound a caller waits (backpressure) or, with ``offer_or_drop``, the record is
dropped, counted and logged.

Each test runs on SQLite and PostgreSQL. A store's ``append_audit`` is wrapped where a
test needs to hold a commit back, count commits or make one fail.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from issuer.store import AuditEntry, Store, StoreError, open_store
from pdp.audit import writer as writer_module
from pdp.audit.chain import GENESIS, canonical
from pdp.audit.query import entries, verify_trail
from pdp.audit.writer import BATCH, AuditWriter

ROOT = Path(__file__).resolve().parents[2]
WAIT = 10.0  # seconds: the bound on every wait in these tests


@pytest.fixture
def store(url: str) -> Iterator[Store]:
    opened = open_store(url)
    yield opened
    opened.close()


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writer_module, "RETRY_DELAY", 0.01)


@contextmanager
def writing(
    store: Store, queue_size: int = 10_000, queue_bytes: int = writer_module.QUEUE_BYTES
) -> Iterator[AuditWriter]:
    writer = AuditWriter(store, queue_size, queue_bytes=queue_bytes)
    try:
        yield writer
    finally:
        writer.close(WAIT)


def record(n: int, **more: Any) -> dict[str, Any]:
    return {"kind": "test", "n": n, **more}


def stored(store: Store, trail: str = "agent") -> list[tuple[int, dict[str, Any]]]:
    return [(e.seq, json.loads(e.record)) for e in entries(store, trail)]


def results(futures: Sequence[Future[int]]) -> list[int]:
    return [f.result(WAIT) for f in futures]


Append = Callable[[str, Sequence[AuditEntry]], None]


class Wrapped:
    """A store's append_audit, wrapped: it records each call's trail and size, may wait
    for :attr:`released` first, and fails as ``fail(call number)`` says (before or after
    the real append)."""

    def __init__(
        self,
        store: Store,
        monkeypatch: pytest.MonkeyPatch,
        *,
        gated: bool = False,
        fail_before: Callable[[int], bool] = lambda _: False,
        fail_after: Callable[[int], bool] = lambda _: False,
    ) -> None:
        self.inner: Append = store.append_audit
        self.calls: list[tuple[str, int]] = []
        self.entered = threading.Event()
        self.released = threading.Event()
        if not gated:
            self.released.set()
        self.fail_before = fail_before
        self.fail_after = fail_after
        monkeypatch.setattr(store, "append_audit", self)

    def __call__(self, trail: str, batch: Sequence[AuditEntry]) -> None:
        self.calls.append((trail, len(batch)))
        number = len(self.calls)
        self.entered.set()
        self.released.wait(WAIT)
        if self.fail_before(number):
            raise StoreError("the database is down")
        self.inner(trail, batch)
        if self.fail_after(number):
            raise StoreError("connection lost while committing")

    def hold_first_commit(self, writer: AuditWriter) -> Future[int]:
        """Submit record 0 and return once the writer is inside its commit."""
        first = writer.submit("agent", record(0))
        assert self.entered.wait(WAIT)
        return first


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.01)


# ------------------------------------------------------------------ order and chains


def test_records_come_back_in_order_numbered_from_1_and_the_trail_verifies(
    store: Store,
) -> None:
    with writing(store) as writer:
        futures = [writer.submit("agent", record(n)) for n in range(1, 101)]
        assert results(futures) == list(range(1, 101))
    assert stored(store) == [(n, record(n)) for n in range(1, 101)]
    assert verify_trail(store, "agent") == (100, [])


def test_the_stored_text_is_the_canonical_json_that_was_hashed(store: Store) -> None:
    data = {"z": 1, "a": "Zoë ✓", "nested": {"b": 2, "a": 1}}
    with writing(store) as writer:
        writer.write("agent", data)
    (entry,) = store.audit("agent")
    assert entry.record == canonical(data)
    assert entry.prev_hash == GENESIS


def test_the_agent_and_admin_trails_are_separate_chains_each_from_1(store: Store) -> None:
    with writing(store) as writer:
        futures: dict[str, list[Future[int]]] = {"agent": [], "admin": []}
        for n in range(1, 31):
            trail = "admin" if n % 3 == 0 else "agent"
            futures[trail].append(writer.submit(trail, record(n, trail=trail)))
        assert results(futures["agent"]) == list(range(1, 21))
        assert results(futures["admin"]) == list(range(1, 11))
    agent, admin = stored(store, "agent"), stored(store, "admin")
    assert [r["n"] for _, r in agent] == [n for n in range(1, 31) if n % 3]
    assert [r["n"] for _, r in admin] == [n for n in range(1, 31) if n % 3 == 0]
    assert store.audit("admin")[0].prev_hash == GENESIS
    assert verify_trail(store, "agent") == (20, [])
    assert verify_trail(store, "admin") == (10, [])


def test_a_new_writer_on_the_same_store_continues_each_chain(store: Store, url: str) -> None:
    with writing(store) as writer:
        for n in range(1, 4):
            writer.write("agent", record(n))
        writer.write("admin", record(1))
    reopened = open_store(url)
    try:
        with writing(reopened) as writer:
            assert writer.write("agent", record(4)) == 4
            assert writer.write("agent", record(5)) == 5
            assert writer.write("admin", record(2)) == 2
    finally:
        reopened.close()
    assert [seq for seq, _ in stored(store)] == [1, 2, 3, 4, 5]
    third, fourth = store.audit("agent")[2:4]
    assert fourth.prev_hash == third.hash
    assert verify_trail(store, "agent") == (5, [])
    assert verify_trail(store, "admin") == (2, [])


def test_write_returns_the_seq_once_the_record_is_committed(store: Store, url: str) -> None:
    with writing(store) as writer:
        assert writer.write("agent", record(1)) == 1
        assert writer.write("agent", record(2)) == 2
        other = open_store(url)  # another connection sees it: it is committed
        try:
            tail = other.audit_tail("agent")
        finally:
            other.close()
    assert tail is not None
    assert (tail.seq, json.loads(tail.record)) == (2, record(2))


def test_records_from_many_threads_each_get_one_place_in_their_chain(store: Store) -> None:
    with writing(store) as writer:

        def submit_many(worker: int) -> list[Future[int]]:
            trail = "agent" if worker % 2 else "admin"
            return [writer.submit(trail, record(n, worker=worker)) for n in range(50)]

        threads: list[list[Future[int]]] = [[] for _ in range(4)]

        def run(worker: int) -> None:
            threads[worker] = submit_many(worker)

        workers = [threading.Thread(target=run, args=(w,)) for w in range(4)]
        for t in workers:
            t.start()
        for t in workers:
            t.join(WAIT)
        for futures in threads:
            results(futures)
    for trail in ("agent", "admin"):
        rows = stored(store, trail)
        assert [seq for seq, _ in rows] == list(range(1, 101))
        for worker in {r["worker"] for _, r in rows}:  # each thread's records in its order
            assert [r["n"] for _, r in rows if r["worker"] == worker] == list(range(50))
        assert verify_trail(store, trail) == (100, [])


def test_two_writers_on_one_database_share_each_chain_without_losing_a_record(
    store: Store, url: str
) -> None:
    """Two replicas of the PDP on one database: whichever commits second chains onto the
    other's head instead of colliding on its seq."""
    other = open_store(url)
    try:
        with writing(store) as first, writing(other) as second:
            futures: list[list[Future[int]]] = [[], []]

            def run(index: int, writer: AuditWriter) -> None:
                futures[index] = [
                    writer.submit("agent", record(n, worker=index)) for n in range(300)
                ]

            workers = [
                threading.Thread(target=run, args=pair) for pair in enumerate((first, second))
            ]
            for t in workers:
                t.start()
            for t in workers:
                t.join(WAIT)
            seqs = results(futures[0]) + results(futures[1])
    finally:
        other.close()
    assert sorted(seqs) == list(range(1, 601))
    rows = stored(store, "agent")
    for worker in (0, 1):
        assert [r["n"] for _, r in rows if r["worker"] == worker] == list(range(300))
    assert verify_trail(store, "agent") == (600, [])


def test_an_unknown_trail_is_refused_at_once(store: Store) -> None:
    with writing(store) as writer:
        with pytest.raises(ValueError, match="unknown audit trail 'billing'"):
            writer.submit("billing", record(1))
        with pytest.raises(ValueError, match="unknown audit trail 'billing'"):
            writer.submit_nowait("billing", record(1))
        assert writer.write("agent", record(1)) == 1  # the writer is unharmed


# ------------------------------------------------------------------ group commit


def test_records_queued_during_a_commit_go_in_one_transaction(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    appends = Wrapped(store, monkeypatch, gated=True)
    with writing(store) as writer:
        first = appends.hold_first_commit(writer)
        futures = [writer.submit("agent", record(n)) for n in range(1, 201)]
        appends.released.set()
        assert [first.result(WAIT), *results(futures)] == list(range(1, 202))
    assert appends.calls == [("agent", 1), ("agent", 200)]
    assert verify_trail(store, "agent") == (201, [])


def test_many_records_at_once_take_fewer_commits_than_records(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    appends = Wrapped(store, monkeypatch)
    with writing(store) as writer:
        futures = [writer.submit("agent", record(n)) for n in range(1, 1001)]
        assert results(futures) == list(range(1, 1001))
    assert len(appends.calls) < 1000
    assert sum(size for _, size in appends.calls) == 1000
    assert verify_trail(store, "agent") == (1000, [])


def test_a_commit_holds_at_most_a_batch_of_records(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    appends = Wrapped(store, monkeypatch, gated=True)
    with writing(store) as writer:
        appends.hold_first_commit(writer)
        futures = [writer.submit("agent", record(n)) for n in range(1, 1201)]
        appends.released.set()
        results(futures)
    assert [size for _, size in appends.calls] == [1, BATCH, BATCH, 1200 - 2 * BATCH]
    assert verify_trail(store, "agent") == (1201, [])


def test_a_batch_with_both_trails_commits_each_trail_in_its_own_transaction(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    appends = Wrapped(store, monkeypatch, gated=True)
    with writing(store) as writer:
        appends.hold_first_commit(writer)
        futures = [writer.submit("admin" if n % 2 else "agent", record(n)) for n in range(8)]
        appends.released.set()
        assert results(futures) == [2, 1, 3, 2, 4, 3, 5, 4]
    assert appends.calls == [("agent", 1), ("agent", 4), ("admin", 4)]


# ------------------------------------------------------------------ backpressure


def test_a_full_queue_makes_submit_wait_and_nothing_is_dropped(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    appends = Wrapped(store, monkeypatch, gated=True)
    with writing(store, queue_size=1) as writer:
        first = appends.hold_first_commit(writer)
        second = writer.submit("agent", record(1))  # fills the queue
        assert writer.submit_nowait("agent", record(99)) is None  # full: not queued

        waited: list[Future[int]] = []
        blocked = threading.Thread(target=lambda: waited.append(writer.submit("agent", record(2))))
        blocked.start()
        blocked.join(0.3)
        assert blocked.is_alive(), "submit returned although the queue was full"
        assert waited == []

        appends.released.set()
        blocked.join(WAIT)
        assert not blocked.is_alive()
        assert results([first, second, *waited]) == [1, 2, 3]
    assert stored(store) == [(1, record(0)), (2, record(1)), (3, record(2))]
    assert verify_trail(store, "agent") == (3, [])


def test_the_queue_is_full_by_bytes_before_it_is_full_by_records(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    appends = Wrapped(store, monkeypatch, gated=True)
    with writing(store, queue_size=10_000, queue_bytes=3_000) as writer:
        first = appends.hold_first_commit(writer)  # taken by the writer: weighs nothing now
        assert writer.offer("agent", record(1), 2_000)
        assert writer.offer("agent", record(2), 2_000)  # room was left: it is taken whole
        assert writer.weight() == 4_000
        assert not writer.offer("agent", record(99), 10)  # two records, but 4,000 bytes
        assert writer.submit_nowait("agent", record(99), 10) is None

        waited: list[Future[int]] = []
        blocked = threading.Thread(
            target=lambda: waited.append(writer.submit("agent", record(3), weight=10))
        )
        blocked.start()
        blocked.join(0.3)
        assert blocked.is_alive(), "submit returned although the queue was full"

        appends.released.set()
        blocked.join(WAIT)
        assert not blocked.is_alive()
        assert results([first, *waited]) == [1, 4]
        writer.flush(WAIT)
        assert writer.weight() == 0
    assert [r["n"] for _, r in stored(store)] == [0, 1, 2, 3]
    assert verify_trail(store, "agent") == (4, [])


def test_a_record_dropped_at_the_bound_is_counted_and_logged_once_per_interval(
    store: Store, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    appends = Wrapped(store, monkeypatch, gated=True)
    with writing(store, queue_size=1) as writer:
        appends.hold_first_commit(writer)
        assert writer.offer_or_drop("agent", record(1))
        assert not writer.offer_or_drop("agent", record(2))
        assert not writer.offer_or_drop("agent", record(3))
        assert writer.dropped == 2
        appends.released.set()
        writer.flush(WAIT)
    assert [r["n"] for _, r in stored(store)] == [0, 1]  # the chain has no gap
    assert verify_trail(store, "agent") == (2, [])
    lines = [r.getMessage() for r in caplog.records if r.name == "tessera.audit"]
    assert len(lines) == 1
    assert "the audit queue is full" in lines[0]
    assert "dropped 1 record(s) for the agent trail since the last warning, 1 in all" in lines[0]


# ------------------------------------------------------------------ failures


def test_a_failed_commit_is_retried_and_nothing_is_lost_or_duplicated(
    store: Store, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    appends = Wrapped(store, monkeypatch, fail_before=lambda number: number == 1)
    with caplog.at_level(logging.ERROR, "tessera.audit"), writing(store) as writer:
        futures = [writer.submit("agent", record(n)) for n in range(1, 51)]
        assert results(futures) == list(range(1, 51))
    assert len(appends.calls) >= 2
    assert "retrying" in caplog.text
    assert stored(store) == [(n, record(n)) for n in range(1, 51)]
    assert verify_trail(store, "agent") == (50, [])


def test_a_commit_whose_answer_was_lost_is_not_written_twice(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    Wrapped(store, monkeypatch, fail_after=lambda number: number == 1)
    with writing(store) as writer:
        futures = [writer.submit("agent", record(n)) for n in range(1, 21)]
        assert results(futures) == list(range(1, 21))
        assert writer.write("agent", record(21), timeout=WAIT) == 21
    assert stored(store) == [(n, record(n)) for n in range(1, 22)]
    assert verify_trail(store, "agent") == (21, [])


def test_a_record_that_is_not_json_fails_alone_and_leaves_no_gap(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    appends = Wrapped(store, monkeypatch, gated=True)
    with writing(store) as writer:
        first = appends.hold_first_commit(writer)
        bad = writer.submit("agent", {"kind": "test", "not json": object()})
        good = writer.submit("agent", record(1))
        appends.released.set()
        assert good.result(WAIT) == 2
        assert isinstance(bad.exception(WAIT), TypeError)
        assert first.result(WAIT) == 1
        assert writer.write("agent", record(2)) == 3
    assert stored(store) == [(1, record(0)), (2, record(1)), (3, record(2))]
    assert verify_trail(store, "agent") == (3, [])


def test_a_caller_who_stops_waiting_cannot_cancel_the_record_or_stop_the_writer(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    appends = Wrapped(store, monkeypatch, gated=True)
    with writing(store) as writer:
        first = appends.hold_first_commit(writer)
        assert first.cancel() is False  # e.g. a sync-durability call whose client gave up
        appends.released.set()
        assert first.result(WAIT) == 1
        assert writer.write("agent", record(1)) == 2
    assert verify_trail(store, "agent") == (2, [])


# ------------------------------------------------------------------ close


def test_close_commits_everything_queued(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    appends = Wrapped(store, monkeypatch, gated=True)
    writer = AuditWriter(store)
    first = appends.hold_first_commit(writer)
    futures = [writer.submit("agent" if n % 5 else "admin", record(n)) for n in range(1, 301)]
    threading.Timer(0.1, appends.released.set).start()
    writer.close(WAIT)
    assert all(f.done() for f in [first, *futures])
    results([first, *futures])
    assert verify_trail(store, "agent") == (241, [])
    assert verify_trail(store, "admin") == (60, [])


def test_a_store_that_fails_at_close_fails_every_waiting_record_on_every_trail(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    appends = Wrapped(store, monkeypatch, gated=True, fail_before=lambda number: number > 1)
    writer = AuditWriter(store)
    first = appends.hold_first_commit(writer)
    agent = writer.submit("agent", record(1))
    admin = writer.submit("admin", record(2))
    closing = threading.Thread(target=writer.close, args=(WAIT,))
    closing.start()
    wait_until(lambda: writer.closing, "close() has begun")
    appends.released.set()
    closing.join(WAIT)
    assert not closing.is_alive()
    assert first.result(WAIT) == 1
    for waiting in (agent, admin):
        assert isinstance(waiting.exception(WAIT), RuntimeError)
    assert verify_trail(store, "agent") == (1, [])
    assert verify_trail(store, "admin") == (0, [])


# ------------------------------------------------------------------ crash safety

CRASHING_WRITER = """
import sys
from issuer.store import open_store
from pdp.audit.writer import AuditWriter

writer = AuditWriter(open_store(sys.argv[1]), queue_size=256)
for n in range(1, int(sys.argv[3]) + 1):
    writer.submit("agent", {"kind": "test", "round": int(sys.argv[2]), "n": n, "pad": "x" * 200})
writer.close(60)
"""

SUBMITTED = 200_000  # more than a round commits before it is killed


def crash(url: str, store: Store, round_: int, log: Path, floor: int) -> None:
    """Run a writer process and SIGKILL it once it has committed 1000 records past
    ``floor``, mid-stream (its queue is full)."""
    with log.open("w") as output:
        child = subprocess.Popen(
            [sys.executable, "-c", CRASHING_WRITER, url, str(round_), str(SUBMITTED)],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        try:

            def committed_enough() -> bool:
                assert child.poll() is None, log.read_text()
                tail = store.audit_tail("agent")
                return tail is not None and tail.seq >= floor + 1000

            wait_until(committed_enough, f"round {round_} has committed 1000 records")
            child.send_signal(signal.SIGKILL)
            child.wait(WAIT)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait(WAIT)


def test_a_writer_killed_while_writing_leaves_a_chain_that_verifies(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/crash.db"
    store = open_store(url)
    try:
        before = 0
        for round_ in range(1, 4):  # each round's writer continues the chain
            crash(url, store, round_, tmp_path / f"round{round_}.log", before)
            count, problems = verify_trail(store, "agent")
            assert problems == []
            assert before + 1000 <= count < before + SUBMITTED
            # What survived is a prefix of what the round submitted, in order.
            rows = [r for _, r in stored(store) if r["round"] == round_]
            assert [r["n"] for r in rows] == list(range(1, count - before + 1))
            before = count
    finally:
        store.close()


def test_a_decision_is_kept_with_its_agent_for_the_index(store: Store) -> None:
    """The console finds an agent's decisions by the agent the writer keeps beside each;
    a token record, a record of another trail and a NUL-bearing agent keep none."""
    writer = AuditWriter(store)
    try:
        writer.put("agent", {"kind": "decision", "agent": "a1", "allow": True})
        writer.put("agent", {"kind": "token", "agent": "a1"})
        writer.put("agent", {"kind": "decision", "agent": "a\x00b", "allow": True})
        writer.put("alert", {"kind": "decision", "agent": "a1"})
        writer.put("agent", lambda: {"kind": "decision", "agent": "a1", "allow": False})
        writer.flush()
    finally:
        writer.close()
    found = store.agent_decisions("a1", 10)
    assert [json.loads(entry.record)["allow"] for entry in found] == [False, True]
    assert all(entry.agent == "a1" for entry in found)
    assert len(store.audit("agent")) == 4  # every record is written, with or without
