"""The PostgreSQL side of :class:`~pdp.counters.sql.SqlCounters`: one database, any replicas.

A charge takes transaction-level advisory locks on its keys (64-bit hashes, in ascending
order, so two charges never each hold what the other waits for) before it reads; they are
let go at commit. Charges on other keys run side by side. The tables live in the schema
the URL's ``search_path`` selects, as the directory's do.

Each round trip is bounded on the server by ``statement_timeout`` and ``lock_timeout``
and on the wire by ``tcp_user_timeout``, all the store's timeout, given at connection
start-up. ``connect_timeout`` is at least 2 seconds, libpq's minimum.
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from functools import lru_cache
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pdp.counters.base import CounterError
from pdp.counters.breaker import held
from pdp.counters.schema import TABLES, Run, sweep_queries

SWEEP = tuple(q.replace("?", "%s") for q in sweep_queries(" FOR UPDATE SKIP LOCKED"))
LOCK = "SELECT pg_advisory_xact_lock(id) FROM unnest(%s::bigint[]) AS id"
CONNECT_TIMEOUT = 2  # seconds: libpq's least
IDLE_IN_TRANSACTION = 5000  # ms: a stalled process lets go of its keys' locks


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
                f" -c idle_in_transaction_session_timeout={max(ms, IDLE_IN_TRANSACTION)}"
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

    @contextmanager
    def transaction(self, keys: Sequence[str] | None) -> Iterator[Run]:
        with held(self._lock, self._timeout, self.name):
            conn = self._connection()
            try:
                with conn.transaction(), conn.cursor() as cur:

                    def run(query: str, parameters: Sequence[Any]) -> Any:
                        return cur.execute(dialect(query), parameters)

                    if keys is not None:
                        cur.execute(LOCK, (sorted({lock_id(k) for k in keys}),))
                    yield run
            except psycopg.Error as e:
                if conn.broken or isinstance(e, psycopg.OperationalError):
                    self._drop()
                raise CounterError(f"{self.name}: {scrub(str(e), self._password)}") from e

    def sweep(self, run: Run, now: float) -> None:
        for query in SWEEP:
            run(query, (now,))

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
                    "AND to_regclass('tessera_counter_once') IS NOT NULL"
                ).fetchone()
                if not (present and present[0]):
                    # Two processes creating the tables at once: one waits for the other.
                    conn.execute(
                        "SELECT pg_advisory_xact_lock(hashtextextended("
                        "'tessera.counters.' || current_schema(), 0))"
                    )
                    for statement in TABLES:
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


@lru_cache(maxsize=64)
def dialect(query: str) -> str:
    """A shared query with psycopg's placeholders."""
    return query.replace("?", "%s")


def lock_id(key: str) -> int:
    """The 64-bit advisory lock that stands for a key."""
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def scrub(message: str, password: str) -> str:
    """A driver's message on one line, without the password should it quote the URL."""
    message = " ".join(message.split())
    return message.replace(password, "***") if password else message
