"""The Redis store's keys: one hash per limit key, in its subject's Cluster slot."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import pytest
import redis
from redis.crc import key_slot

from pdp.counters import BUCKETS, FITS, Charge, bucket_of
from pdp.counters.redis import RedisCounters
from tests.counters.places import REDIS_URL, redis_prefix

NOW = 1_000_000.0
WINDOW = 3600.0


def spend(subject: str = "agent-1") -> Charge:
    return Charge(f"spend/usd/{subject}", subject, WINDOW, Decimal("12.5"), Decimal("100"))


@pytest.fixture
def store() -> Iterator[RedisCounters]:
    with redis_prefix() as prefix:
        opened = RedisCounters(REDIS_URL, timeout=5.0, prefix=prefix)
        yield opened
        opened.close()


@pytest.fixture
def client() -> Iterator[redis.Redis]:
    opened = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    yield opened
    opened.close()


def test_a_limit_key_is_a_hash_of_buckets_in_units(
    store: RedisCounters, client: redis.Redis
) -> None:
    assert store.charge((spend(),), NOW) == FITS
    key = f"{store.prefix}limit:{{agent-1}}:spend/usd/agent-1"
    assert client.hgetall(key) == {str(bucket_of(NOW, WINDOW)): "125000"}
    assert 0 < client.pttl(key) <= WINDOW * 1000 * (BUCKETS + 1) / BUCKETS


def test_recording_deletes_the_buckets_that_left_the_window(
    store: RedisCounters, client: redis.Redis
) -> None:
    store.charge((spend(),), NOW)
    later = NOW + WINDOW
    store.charge((spend(),), later)
    key = store.key(spend())
    assert client.hgetall(key) == {str(bucket_of(later, WINDOW)): "125000"}


def test_a_once_record_lives_one_window_in_the_first_subject_s_slot(
    store: RedisCounters, client: redis.Redis
) -> None:
    assert store.charge((spend("agent-1"), spend("user-7")), NOW, once="call-1") == FITS
    [once] = client.keys(f"{store.prefix}once:*")
    assert once.startswith(f"{store.prefix}once:{{agent-1}}:")
    assert 0 < client.pttl(once) <= WINDOW * 1000
    assert key_slot(once.encode()) == key_slot(store.key(spend("agent-1")).encode())


def test_every_key_of_one_subject_shares_a_slot(store: RedisCounters) -> None:
    calls = Charge("calls/agent-1", "agent-1", 60.0, 1, 10)
    assert key_slot(store.key(calls).encode()) == key_slot(store.key(spend()).encode())
