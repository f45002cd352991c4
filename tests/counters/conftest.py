"""Fixtures of the counter store tests: a place per backend."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.counters.places import BACKENDS, SHARED, Place, place


@pytest.fixture(params=BACKENDS)
def where(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Place]:
    """Empty counts, once per backend: memory, SQLite, PostgreSQL, Redis."""
    with place(request.param, tmp_path) as found:
        yield found


@pytest.fixture(params=SHARED)
def shared(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Place]:
    """Empty counts, once per store shared by processes: SQLite, PostgreSQL, Redis."""
    with place(request.param, tmp_path) as found:
        yield found
