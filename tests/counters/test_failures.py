"""A store that cannot answer raises CounterError, fails fast a while, and comes back.

Nothing here measures time: that a failure costs one bounded round trip and that the
calls after it ask nobody shows in the store's counts (``errors``: round trips that
failed; ``rejected``: calls refused without one).
"""

from __future__ import annotations

import signal
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from pdp.counters import FITS, Charge, CounterError
from pdp.counters.redis import RedisCounters
from pdp.counters.sql import SqlCounters
from tests.counters.places import closed_port, redis_server
from tests.stores import admin_connection, postgres_schema

T = TypeVar("T")
NOW = 1_000_000.0
ONE = Charge(key="calls/agent-1", subject="agent-1", window=60.0, amount=1, cap=100)
SECRET = "s3cret-pass"


def eventually(attempt: Callable[[], T], tries: int = 500) -> T:
    """``attempt()`` once it stops raising CounterError (a bounded number of tries)."""
    for _ in range(tries - 1):
        try:
            return attempt()
        except CounterError:
            time.sleep(0.01)
    return attempt()


def fails_then_fails_fast(store: RedisCounters | SqlCounters, name: str) -> None:
    with pytest.raises(CounterError) as first:
        store.charge((ONE,), NOW)
    with pytest.raises(CounterError) as second:
        store.usage(ONE, NOW)
    for error in (first.value, second.value):
        assert name in str(error)
        assert SECRET not in str(error)
    assert "not asked again" in str(second.value)
    assert (store.errors, store.rejected) == (1, 1)


def test_redis_on_a_closed_port_fails_then_fails_fast() -> None:
    port = closed_port()
    store = RedisCounters(f"redis://:{SECRET}@127.0.0.1:{port}/0", backoff=60.0)
    try:
        fails_then_fails_fast(store, f"the Redis counter store at redis://127.0.0.1:{port}/0")
    finally:
        store.close()


def test_postgresql_on_a_wrong_port_fails_then_fails_fast() -> None:
    port = closed_port()
    store = SqlCounters(f"postgresql://postgres:{SECRET}@127.0.0.1:{port}/test", backoff=60.0)
    try:
        fails_then_fails_fast(store, f"the PostgreSQL counter store at 127.0.0.1:{port}/test")
    finally:
        store.close()


def test_sqlite_that_cannot_be_opened_fails_then_fails_fast(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    store = SqlCounters(f"sqlite:///{tmp_path}/file/counters.db", backoff=60.0)
    fails_then_fails_fast(store, "the SQLite counter store")


def test_sqlite_held_by_another_writer_fails_and_recovers_when_let_go(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/counters.db"
    store = SqlCounters(url, timeout=0.05, backoff=0.05)
    assert store.charge((ONE,), NOW) == FITS
    other = sqlite3.connect(tmp_path / "counters.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # holds the write lock past the busy timeout
    with pytest.raises(CounterError, match="locked"):
        store.charge((ONE,), NOW)
    other.execute("ROLLBACK")
    other.close()
    assert eventually(lambda: store.charge((ONE,), NOW)) == FITS
    assert store.usage(ONE, NOW) == 2
    store.close()


def test_postgresql_recovers_after_its_connection_is_cut() -> None:
    with postgres_schema() as url:
        store = SqlCounters(url, timeout=5.0, backoff=0.05)
        assert store.charge((ONE,), NOW) == FITS
        with admin_connection() as admin:
            schema = url.rsplit("application_name=", 1)[1]
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = %s",
                (schema,),
            )
        with pytest.raises(CounterError):
            store.charge((ONE,), NOW)
        assert eventually(lambda: store.charge((ONE,), NOW)) == FITS
        assert store.usage(ONE, NOW) == 2
        store.close()


def test_redis_recovers_when_its_server_returns() -> None:
    port = closed_port()
    store = RedisCounters(f"redis://127.0.0.1:{port}/0", timeout=5.0, backoff=0.05)
    try:
        with redis_server(port):
            assert store.charge((ONE,), NOW) == FITS
        with pytest.raises(CounterError):
            store.charge((ONE,), NOW)
        with redis_server(port):  # a new server: no counts, and no script loaded
            assert eventually(lambda: store.charge((ONE,), NOW)) == FITS
            assert store.usage(ONE, NOW) == 1
    finally:
        store.close()


def test_a_charge_held_up_in_a_stalled_redis_is_never_recorded() -> None:
    """The caller denied when its charge timed out: Redis running the charge later,
    once it resumes, must not count it."""
    port = closed_port()
    store = RedisCounters(f"redis://127.0.0.1:{port}/0", timeout=0.2, backoff=0.05)
    try:
        with redis_server(port) as server:
            assert store.charge((ONE,), NOW) == FITS  # connected, script loaded
            server.send_signal(signal.SIGSTOP)
            try:
                with pytest.raises(CounterError):
                    store.charge((ONE,), NOW)
            finally:
                server.send_signal(signal.SIGCONT)
            time.sleep(0.5)  # let the resumed server run what was waiting for it
            assert eventually(lambda: store.usage(ONE, NOW)) == 1
    finally:
        store.close()
