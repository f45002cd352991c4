"""Where a test's counters live: memory, a SQLite file, a PostgreSQL schema, a Redis prefix.

Each test gets its own file, schema or key prefix, so tests running side by side never
share a count. Redis is the real server at ``TESSERA_TEST_REDIS`` (default ``redis://127.0.0.1:6379/0``).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis

from tests.counters.workers import Place, close
from tests.stores import postgres_schema

REDIS_URL = os.environ.get("TESSERA_TEST_REDIS", "redis://127.0.0.1:6379/0")

BACKENDS = ("memory", "sqlite", "postgresql", "redis")
SHARED = BACKENDS[1:]


@contextmanager
def place(backend: str, tmp_path: Path) -> Iterator[Place]:
    """A place with no counts, emptied (schema dropped, keys deleted) afterwards."""
    if backend == "memory":
        found = Place("memory")
    elif backend == "sqlite":
        found = Place("sqlite", f"sqlite:///{tmp_path}/counters.db")
    elif backend == "postgresql":
        with postgres_schema() as url:
            found = Place("postgresql", url)
            yield found
            close(found)
        return
    else:
        with redis_prefix() as prefix:
            found = Place("redis", REDIS_URL, prefix)
            yield found
            close(found)
        return
    yield found
    close(found)


@contextmanager
def redis_prefix() -> Iterator[str]:
    """A key prefix of one test; its keys are deleted afterwards."""
    prefix = f"tessera-test-{uuid.uuid4().hex}:"
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=5, socket_connect_timeout=5)
    try:
        client.ping()
    except redis.RedisError as e:
        pytest.fail(f"Redis at {REDIS_URL} is not reachable (run .ci/run): {e}")
    try:
        yield prefix
    finally:
        for key in client.scan_iter(match=f"{prefix}*", count=500):
            client.delete(key)
        client.close()


def closed_port() -> int:
    """A loopback port nobody listens on (taken from the kernel, then let go)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@contextmanager
def redis_server(port: int) -> Iterator[subprocess.Popen[bytes]]:
    """A Redis server of this test's own on 127.0.0.1, keeping nothing on disk."""
    binary = shutil.which("redis-server")
    assert binary is not None, "redis-server is not installed (the suite needs it)"
    server = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port, socket_timeout=1, socket_connect_timeout=1)
    try:
        for _ in range(500):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.01)
        yield server
    finally:
        client.close()
        server.terminate()
        server.wait(timeout=30)
