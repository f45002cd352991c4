"""open_counters: a setting names the store."""

from __future__ import annotations

from pathlib import Path

import pytest

from pdp.counters import CounterError, MemoryCounters, open_counters
from pdp.counters.redis import RedisCounters
from pdp.counters.sql import SqlCounters
from tests.counters.places import REDIS_URL


def test_memory_names_this_process_s_counters() -> None:
    assert isinstance(open_counters("memory"), MemoryCounters)


@pytest.mark.parametrize("scheme", ["sqlite:///", "postgresql://127.0.0.1/", "postgres://h/"])
def test_a_database_url_names_the_sql_store(scheme: str, tmp_path: Path) -> None:
    store = open_counters(f"{scheme}{tmp_path}/c.db", timeout=0.5)
    assert isinstance(store, SqlCounters)
    assert store.timeout == 0.5
    store.close()


@pytest.mark.parametrize("url", [REDIS_URL, "rediss://127.0.0.1:6380/1"])
def test_a_redis_url_names_the_redis_store(url: str) -> None:
    store = open_counters(url)
    assert isinstance(store, RedisCounters)
    store.close()


@pytest.mark.parametrize("url", ["mysql://h/db", "store", "", "file:///tmp/c.db"])
def test_anything_else_is_refused_with_the_forms_it_takes(url: str) -> None:
    with pytest.raises(CounterError, match=r"memory, sqlite:///.*postgresql://.*redis://"):
        open_counters(url)


def test_an_in_memory_sqlite_database_is_refused_as_useless() -> None:
    with pytest.raises(CounterError, match="use `memory`"):
        open_counters("sqlite:///:memory:")
