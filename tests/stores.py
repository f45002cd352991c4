"""Stores for tests: a SQLite file or a fresh PostgreSQL schema, each thrown away after.

PostgreSQL is the real server at ``TESSERA_TEST_POSTGRES`` (default
``postgresql://postgres@127.0.0.1:5432/test``; ``.ci/run`` starts it when it is down).
Each test gets its own schema, dropped afterwards. An unreachable server fails the test.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import pytest

from issuer.store import Store, open_store

POSTGRES_URL = os.environ.get("TESSERA_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")

BACKENDS = ("sqlite", "postgresql")


def admin_connection() -> psycopg.Connection[Any]:
    try:
        return psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as e:
        pytest.fail(f"PostgreSQL at {POSTGRES_URL} is not reachable (run .ci/run): {e}")


@contextmanager
def postgres_schema() -> Iterator[str]:
    """A store URL whose search_path is a fresh schema; the schema is dropped after."""
    name = f"t_{uuid.uuid4().hex}"
    with admin_connection() as admin:
        admin.execute(f"CREATE SCHEMA {name}")
        try:
            options = quote(f"-c search_path={name}")
            yield f"{POSTGRES_URL}?options={options}&application_name={name}"
        finally:
            admin.execute(f"DROP SCHEMA {name} CASCADE")


@contextmanager
def opened_store(backend: str, tmp_path: Path) -> Iterator[Store]:
    """An empty store of the given backend, open for the block."""
    with store_url(backend, tmp_path) as url:
        store = open_store(url)
        try:
            yield store
        finally:
            store.close()


@contextmanager
def store_url(backend: str, tmp_path: Path) -> Iterator[str]:
    """A URL for an empty store of the given backend."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path}/tessera.db"
        return
    with postgres_schema() as url:
        yield url
