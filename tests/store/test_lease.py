"""Leases: one holder among every process on a database, freed when the holder dies."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from issuer.store import Store, open_store
from tests.stores import BACKENDS, store_url

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(params=BACKENDS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with store_url(request.param, tmp_path) as opened:
        yield opened


@pytest.fixture
def two(url: str) -> Iterator[tuple[Store, Store]]:
    first, second = open_store(url), open_store(url)
    yield first, second
    first.close()
    second.close()


def test_a_lease_has_one_holder_until_it_is_released(two: tuple[Store, Store]) -> None:
    first, second = two
    held = first.lease("job")
    assert held is not None
    assert second.lease("job") is None
    assert first.lease("job") is None  # not even the same store object twice
    other = second.lease("other job")  # leases of other names are independent
    assert other is not None
    held.release()
    again = second.lease("job")
    assert again is not None
    again.release()
    other.release()


def test_a_lease_is_freed_when_its_holder_is_killed(url: str, two: tuple[Store, Store]) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from issuer.store import open_store\n"
            "lease = open_store(sys.argv[1]).lease('job')\n"
            "print('held' if lease else 'refused', flush=True)\n"
            "time.sleep(60)\n",
            url,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "held\n"
        assert two[0].lease("job") is None
    finally:
        holder.kill()
        holder.wait(timeout=10)
    taken = None
    for _ in range(100):  # the server notices the dead session promptly; bounded at 5 s
        taken = two[0].lease("job")
        if taken is not None:
            break
        time.sleep(0.05)
    assert taken is not None
    taken.release()
