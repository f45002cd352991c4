"""The SQL store's tables, beside the directory's, and the sweep of expired rows."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from issuer.store import open_store
from pdp.counters import FITS, Charge
from pdp.counters.sql import SWEEP_EVERY, SqlCounters
from tests.stores import store_url

NOW = 1_000_000.0
WINDOW = 60.0


def calls(key: str) -> Charge:
    return Charge(key, "agent-1", WINDOW, 1, 1_000)


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty directory database."""
    with store_url(request.param, tmp_path) as opened:
        yield opened


def rows(url: str, query: str) -> list[Any]:
    """What a query of the store's tables finds, through a connection of the test's own."""
    if url.startswith("sqlite:"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
            return conn.execute(query).fetchall()
    with psycopg.connect(url) as conn:
        return conn.execute(query).fetchall()


def test_counts_live_beside_the_directory_in_its_database(url: str) -> None:
    directory = open_store(url)
    counters = SqlCounters(url, timeout=5.0)
    try:
        assert counters.charge((calls("calls/agent-1"),), NOW, once="call-1") == FITS
        assert directory.last_change() == 0  # the directory works on, untouched
        assert rows(url, "SELECT key, units FROM tessera_counter_buckets") == [
            ("calls/agent-1", 10_000)
        ]
        assert len(rows(url, "SELECT once FROM tessera_counter_once")) == 1
    finally:
        counters.close()
        directory.close()


def test_expired_rows_are_swept_while_charging(url: str) -> None:
    counters = SqlCounters(url, timeout=5.0)
    try:
        counters.charge((calls("old/agent-1"),), NOW, once="call-1")
        later = NOW + 10 * WINDOW
        for _ in range(SWEEP_EVERY):
            assert counters.charge((calls("new/agent-1"),), later) == FITS
        assert rows(url, "SELECT DISTINCT key FROM tessera_counter_buckets") == [("new/agent-1",)]
        assert rows(url, "SELECT once FROM tessera_counter_once") == []
        assert counters.usage(calls("new/agent-1"), later) == SWEEP_EVERY
    finally:
        counters.close()


def test_a_store_opened_again_keeps_the_counts(url: str) -> None:
    first = SqlCounters(url, timeout=5.0)
    first.charge((calls("calls/agent-1"),), NOW)
    first.close()
    again = SqlCounters(url, timeout=5.0)
    try:
        assert again.usage(calls("calls/agent-1"), NOW) == 1
    finally:
        again.close()
