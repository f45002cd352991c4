"""The PostgreSQL side of :class:`~pdp.counters.sql.SqlCounters`: one database, any replicas.

A charge is one call of the function ``tessera_counter_charge_v2``, created beside the
tables: one round trip, one transaction. The function first takes transaction-level
advisory locks on the keys (64-bit hashes, in ascending order, so two charges never each
hold what the other waits for), then reads each key's usage in a statement of its own:
a plpgsql statement of a volatile function sees every commit made before it started, so
it sees every charge that held the locks before. The locks are let go at commit. Charges
on other keys run side by side. The tables and the function live in the schema the URL's
``search_path`` selects, as the directory's tables do.

Each round trip is bounded on the server by ``statement_timeout`` and ``lock_timeout``
and on the wire by ``tcp_user_timeout``, all the store's timeout, given at connection
start-up. ``connect_timeout`` is at least 2 seconds, libpq's minimum. Commits do not wait
for the disk (``synchronous_commit = off``): a crash of the server may forget its last
fraction of a second of charges, which a cap then lets through again.
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections.abc import Sequence
from contextlib import suppress
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pdp.counters.base import CounterError
from pdp.counters.breaker import held
from pdp.counters.schema import TABLES, Counted, Once, Step, sweep_queries

SWEEP_BUCKETS, SWEEP_ONCE = (
    q.replace("?", "_now") for q in sweep_queries(" FOR UPDATE SKIP LOCKED")
)
# A charge (pdp.counters.schema.charge_in, as one function): an array of -1 when every
# charge fits, else the 0-based index of the first that does not, then the units each
# key held, up to that one. Parameter names start with "_" so that none is taken for a
# column. (v1 answered the index alone; a new name, since a function's result type
# cannot be replaced, so replicas of either version share one database.)
FUNCTION = f"""
CREATE OR REPLACE FUNCTION tessera_counter_charge_v2(
    _keys text[], _buckets bigint[], _oldest bigint[], _units bigint[], _caps bigint[],
    _expires double precision[], _locks bigint[], _record boolean, _once text,
    _until double precision, _now double precision, _sweep boolean
) RETURNS bigint[] LANGUAGE plpgsql AS $fn$
DECLARE
    _used numeric;
    _seen bigint[] := '{{}}';
BEGIN
    PERFORM pg_advisory_xact_lock(_lock) FROM unnest(_locks) AS _lock;  -- in array order
    IF _once <> '' AND EXISTS (
        SELECT 1 FROM tessera_counter_once WHERE once = _once AND expires > _now
    ) THEN
        RETURN ARRAY[-1]::bigint[];
    END IF;
    FOR _i IN 1 .. cardinality(_keys) LOOP
        SELECT COALESCE(SUM(units), 0) INTO _used FROM tessera_counter_buckets
            WHERE key = _keys[_i] AND bucket >= _oldest[_i];
        _seen := _seen || _used::bigint;
        IF _used + _units[_i] > _caps[_i] THEN
            RETURN ARRAY[_i - 1]::bigint[] || _seen;
        END IF;
    END LOOP;
    IF NOT _record THEN
        RETURN ARRAY[-1]::bigint[] || _seen;
    END IF;
    INSERT INTO tessera_counter_buckets AS b (key, bucket, units, expires)
        SELECT k, n, SUM(u), MAX(e) FROM unnest(_keys, _buckets, _units, _expires) AS t(k, n, u, e)
        GROUP BY k, n
        ON CONFLICT (key, bucket) DO UPDATE
        SET units = b.units + excluded.units, expires = excluded.expires;
    IF _once <> '' THEN
        INSERT INTO tessera_counter_once AS o (once, expires) VALUES (_once, _until)
            ON CONFLICT (once) DO UPDATE SET expires = excluded.expires;
    END IF;
    IF _sweep THEN
        {SWEEP_BUCKETS};
        {SWEEP_ONCE};
    END IF;
    RETURN ARRAY[-1]::bigint[] || _seen;
END
$fn$
"""
CHARGE = (
    "SELECT tessera_counter_charge_v2(%s::text[], %s::bigint[], %s::bigint[], %s::bigint[], "
    "%s::bigint[], %s::float8[], %s::bigint[], %s, %s, %s, %s, %s)"
)
USAGE = (
    "SELECT COALESCE(SUM(units), 0) FROM tessera_counter_buckets WHERE key = %s AND bucket >= %s"
)
CONNECT_TIMEOUT = 2  # seconds: libpq's least


class PostgresDatabase:
    """One connection, behind a lock, opened on first use and again after a failure."""

    def __init__(self, url: str, timeout: float) -> None:
        password = ""
        try:
            given = conninfo_to_dict(url)
            password = str(given.get("password") or "")
            ms = max(1, math.ceil(timeout * 1000))
            options = (
                f"{given.get('options') or ''} -c statement_timeout={ms} -c lock_timeout={ms}"
                " -c synchronous_commit=off"
            )
            self._conninfo = make_conninfo(
                url,
                connect_timeout=max(CONNECT_TIMEOUT, math.ceil(timeout)),
                tcp_user_timeout=ms,
                options=options.strip(),
            )
        except psycopg.Error as e:
            raise CounterError(f"bad PostgreSQL URL: {scrub(str(e), password)}") from None
        self._password = password
        where = f"{given.get('host') or 'localhost'}:{given.get('port') or 5432}"
        self.name = f"the PostgreSQL counter store at {where}/{given.get('dbname') or ''}"
        self._timeout = timeout
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[Any] | None = None
        self._closed = False

    def charge(
        self, steps: list[Step], now: float, *, record: bool, once: Once, sweep: bool
    ) -> Counted:
        keys = [s.key for s in steps]
        locks = sorted({lock_id(k) for k in [*keys, once.key] if k}) if record else []
        parameters = (
            keys,
            [s.bucket for s in steps],
            [s.oldest for s in steps],
            [s.units for s in steps],
            [s.cap for s in steps],
            [s.expires for s in steps],
            locks,
            record,
            once.key,
            once.until,
            now,
            sweep,
        )
        index, *used = self._execute(CHARGE, parameters)[0]
        return int(index), tuple(int(units) for units in used)

    def usage(self, key: str, oldest: int) -> int:
        return int(self._execute(USAGE, (key, oldest))[0])

    def _execute(self, query: str, parameters: Sequence[Any]) -> Any:
        """One statement, in a transaction of its own; its one row."""
        with held(self._lock, self._timeout, self.name):
            conn = self._connection()
            try:
                return conn.execute(query, parameters).fetchone()
            except psycopg.Error as e:
                if conn.broken or isinstance(e, psycopg.OperationalError):
                    self._drop()
                raise CounterError(f"{self.name}: {scrub(str(e), self._password)}") from e

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._drop()

    def _connection(self) -> psycopg.Connection[Any]:
        if self._closed:
            raise CounterError(f"{self.name} is closed")
        if self._conn is None or self._conn.closed:
            self._conn = self._connect()
        return self._conn

    def _connect(self) -> psycopg.Connection[Any]:
        """Connect, and create the tables when the schema lacks them."""
        try:
            conn = psycopg.connect(self._conninfo, autocommit=True)
        except psycopg.Error as e:
            raise CounterError(
                f"{self.name}: cannot connect: {scrub(str(e), self._password)}"
            ) from e
        try:
            with conn.transaction():
                present = conn.execute(
                    "SELECT to_regclass('tessera_counter_buckets') IS NOT NULL "
                    "AND to_regclass('tessera_counter_once') IS NOT NULL "
                    "AND to_regproc('tessera_counter_charge_v2') IS NOT NULL"
                ).fetchone()
                if not (present and present[0]):
                    # Two processes creating the tables at once: one waits for the other.
                    conn.execute(
                        "SELECT pg_advisory_xact_lock(hashtextextended("
                        "'tessera.counters.' || current_schema(), 0))"
                    )
                    for statement in (*TABLES, FUNCTION):
                        conn.execute(statement)
        except psycopg.Error as e:
            conn.close()
            raise CounterError(f"{self.name}: {scrub(str(e), self._password)}") from e
        return conn

    def _drop(self) -> None:
        if self._conn is not None:
            with suppress(psycopg.Error):
                self._conn.close()
            self._conn = None


def lock_id(key: str) -> int:
    """The 64-bit advisory lock that stands for a key."""
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def scrub(message: str, password: str) -> str:
    """A driver's message on one line, without the password should it quote the URL."""
    message = " ".join(message.split())
    return message.replace(password, "***") if password else message
