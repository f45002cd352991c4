"""Limit counters in Redis: one cap held exactly across every replica.

A charge is one Lua script, which Redis runs atomically: for each charge it sums the
live buckets of the key's hash (field: bucket number, value: units of 1/10,000, see
:mod:`pdp.counters.units`), compares with the cap, and only when every charge fits adds
the amounts to the current buckets (``HINCRBY``), deletes the expired fields (``HDEL``)
and sets the key to expire one window after (``PEXPIRE``); with an idempotency key it
first looks for, and last sets (``SET NX PX``), the call's once-record. The script is
loaded once and called by its SHA (``EVALSHA``), and loaded again when the server
forgot it (after a restart or ``SCRIPT FLUSH``).

Keys: ``<prefix>limit:{<subject>}:<key>`` and ``<prefix>once:{<subject>}:<hash>``, where
``<prefix>`` is ``tessera:`` unless given. ``{<subject>}`` is a Redis Cluster hash tag:
every key of one agent (or user, owner, tool, …) lives in one slot, so a charge of one
subject's limits runs in one script on one node. The once-record takes the first
charge's subject.

Lua adds doubles: totals stay exact because caps and amounts are kept below 2**52 units
(:data:`pdp.counters.units.MAX_UNITS`). Every round trip, and connecting, is bounded by
the store's timeout; redis-py's own retries are off (the breaker decides when to retry).
A charge that reaches the script after its caller stopped waiting (a server stalled,
then resumed) records nothing: the script compares Redis's clock with the caller's
deadline, so a call answered "denied" is never counted. This holds while the clocks of
the Redis host and the replicas agree to better than the timeout.
"""

from __future__ import annotations

import math
import time
from typing import Any
from urllib.parse import urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from pdp.counters.base import (
    BUCKETS,
    FITS,
    Amount,
    Charge,
    CounterError,
    Tally,
    bucket_of,
    oldest_bucket,
    once_key,
)
from pdp.counters.breaker import BACKOFF, Breaker, Guarded
from pdp.counters.units import amount_units, cap_units, from_units

TIMEOUT = 0.1  # seconds a round trip (or connecting) may take
LATE = -2  # the script's answer when it ran after the caller's deadline
POOL = 16  # connections per store object; a call waits at most the timeout for one

# KEYS: the charges' keys, then the once-record's when ARGV[2] (its time to live, ms) > 0.
# ARGV: record (1 or 0), once ttl, the caller's deadline (µs since the epoch), then per
# charge: bucket, oldest live bucket, units, cap, the key's time to live (ms). Answers an
# array: -1 when all fit, else the 0-based index of the first charge that does not, then
# the units each key held up to that one (none for a retry recorded before); or {-2}
# when the script runs after the caller gave up waiting (a call held up in a stalled
# server): the caller has denied, so nothing may be recorded.
CHARGE = """
local record = ARGV[1] == '1'
local once_ttl = tonumber(ARGV[2])
if record then
  local t = redis.call('TIME')
  if tonumber(t[1]) * 1000000 + tonumber(t[2]) > tonumber(ARGV[3]) then return {-2} end
end
local n = #KEYS
if once_ttl > 0 then
  n = n - 1
  if redis.call('EXISTS', KEYS[#KEYS]) == 1 then return {-1} end
end
local stale = {}
local seen = {-1}
for i = 1, n do
  local a = 3 + (i - 1) * 5
  local oldest = tonumber(ARGV[a + 2])
  local total = 0
  local old = {}
  local fields = redis.call('HGETALL', KEYS[i])
  for j = 1, #fields, 2 do
    if tonumber(fields[j]) >= oldest then
      total = total + tonumber(fields[j + 1])
    else
      old[#old + 1] = fields[j]
    end
  end
  seen[i + 1] = total
  if total + tonumber(ARGV[a + 3]) > tonumber(ARGV[a + 4]) then
    seen[1] = i - 1
    return seen
  end
  stale[i] = old
end
if record then
  for i = 1, n do
    local a = 3 + (i - 1) * 5
    redis.call('HINCRBY', KEYS[i], ARGV[a + 1], ARGV[a + 3])
    if #stale[i] > 0 then redis.call('HDEL', KEYS[i], unpack(stale[i])) end
    redis.call('PEXPIRE', KEYS[i], ARGV[a + 5])
  end
  if once_ttl > 0 then redis.call('SET', KEYS[#KEYS], '1', 'PX', once_ttl, 'NX') end
end
return seen
"""


class RedisCounters(Guarded):
    """A :class:`~pdp.counters.CounterStore` in Redis (``redis://host:port/db``, or
    ``rediss://`` for TLS). Connects on first use, through a small pool."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float = TIMEOUT,
        backoff: float = BACKOFF,
        prefix: str = "tessera:",
    ) -> None:
        self.name = name_of(url)
        self.prefix = prefix
        self.timeout = timeout
        self._password = urlsplit(url).password or ""
        try:
            pool = redis.BlockingConnectionPool.from_url(
                url,
                max_connections=POOL,
                timeout=timeout,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                retry=Retry(NoBackoff(), 0),
            )
        except (ValueError, redis.RedisError) as e:
            raise CounterError(f"{self.name}: bad URL: {self._scrub(e)}") from None
        self._client = redis.Redis(connection_pool=pool)
        self._script = self._client.register_script(CHARGE)
        self._breaker = Breaker(self.name, backoff)

    def charge(
        self, charges: tuple[Charge, ...], now: float, *, record: bool = True, once: str = ""
    ) -> int:
        return self.tally(charges, now, record=record, once=once).answer

    def tally(
        self, charges: tuple[Charge, ...], now: float, *, record: bool = True, once: str = ""
    ) -> Tally:
        if not charges:
            return Tally(FITS, ())
        keys = [self.key(c) for c in charges]
        once_ttl = 0
        if once and record:
            once_ttl = math.ceil(max(c.window for c in charges) * 1000)
            keys.append(f"{self.prefix}once:{{{charges[0].subject}}}:{once_key(once, charges)}")
        deadline = math.ceil((time.time() + self.timeout) * 1_000_000)
        args: list[Any] = [1 if record else 0, once_ttl, deadline]
        for c in charges:
            ttl = math.ceil(c.window * (BUCKETS + 1) / BUCKETS * 1000)
            bucket = bucket_of(now, c.window)
            args += [bucket, oldest_bucket(now, c.window), amount_units(c.amount)]
            args += [cap_units(c.cap), ttl]
        index, *used = self._breaker.call(lambda: self._run(self._script, keys, args))
        if int(index) == LATE:
            raise CounterError(f"{self.name}: answered after the timeout; nothing recorded")
        return Tally(int(index), tuple(map(from_units, map(int, used), charges)))  # up to the index

    def usage(self, charge: Charge, now: float) -> Amount:
        fields = self._breaker.call(lambda: self._run(self._client.hgetall, self.key(charge)))
        oldest = oldest_bucket(now, charge.window)
        units = sum(int(v) for b, v in fields.items() if int(b) >= oldest)
        return from_units(units, charge)

    def key(self, charge: Charge) -> str:
        """The hash that counts a charge's key, in its subject's Cluster slot."""
        return f"{self.prefix}limit:{{{charge.subject}}}:{charge.key}"

    def close(self) -> None:
        self._client.close()
        self._client.connection_pool.disconnect()

    def _run(self, call: Any, *args: Any) -> Any:
        try:
            return call(*args)
        except (redis.RedisError, OSError) as e:
            raise CounterError(f"{self.name}: {self._scrub(e)}") from e

    def _scrub(self, error: Exception) -> str:
        message = str(error) or "the connection failed, no reason given"
        return message.replace(self._password, "***") if self._password else message


def name_of(url: str) -> str:
    """The store named for messages: its address, never its password."""
    try:
        parts = urlsplit(url)
        where = f"{parts.scheme}://{parts.hostname or 'localhost'}:{parts.port or 6379}"
    except ValueError:
        return "the Redis counter store"
    return f"the Redis counter store at {where}{parts.path if parts.path.strip('/') else '/0'}"
