"""The PostgreSQL store: psycopg 3, tables in the current schema, LISTEN/NOTIFY for changes.

Operations share one connection behind a lock, each in its own transaction. A write
transaction first takes ``LOCK TABLE changes IN EXCLUSIVE MODE``: writers (in any
process) run one at a time, so change seqs commit in order and a reader following
``changes(since)`` never skips one, while readers are not blocked. Each write sends
``NOTIFY`` on a channel named after the schema before it commits; ``wait_for_change``
listens on a second, autocommit connection.

The tables live in whatever schema the connection's ``search_path`` selects, e.g.
``postgresql://host/db?options=-c%20search_path%3Dtessera``. A connection the server
dropped makes the operation fail with :class:`~issuer.store.StoreError`; the next one
reconnects.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from issuer.store.backchannel import BackchannelTable
from issuer.store.interface import Lease, MissingStore, StoreError
from issuer.store.listing import IndexedReads
from issuer.store.outbox import OutboxTable
from issuer.store.schema import (
    POSTGRES_TYPES,
    Cursor,
    SQLStore,
    apply_migrations,
    require_tables,
)

CONNECT_TIMEOUT = 10  # seconds, unless the URL sets connect_timeout
_MAX_IDENTIFIER = 63  # bytes; PostgreSQL truncates longer channel names
_TABLES = (
    "SELECT count(*) FROM pg_catalog.pg_tables "
    "WHERE schemaname = current_schema() AND tablename = 'schema_version'"
)


def channel_for(schema: str) -> str:
    """The NOTIFY channel of the store in ``schema`` (hashed if the name is too long)."""
    channel = f"tessera_changes.{schema}"
    if len(channel.encode()) <= _MAX_IDENTIFIER:
        return channel
    return "tessera_changes." + hashlib.sha256(schema.encode()).hexdigest()[:40]


class _Cursor:
    """A psycopg cursor that takes the shared queries' ``?`` placeholders."""

    def __init__(self, cur: psycopg.Cursor[Any]) -> None:
        self._cur = cur
        self.raw = cur

    def execute(self, query: str, parameters: Sequence[Any] = (), /) -> object:
        return self._cur.execute(query.replace("?", "%s"), parameters)

    def executemany(self, query: str, rows: Sequence[Sequence[Any]], /) -> object:
        self._cur.executemany(query.replace("?", "%s"), rows)  # pipelined by psycopg
        return None

    def fetchone(self) -> Any:
        return self._cur.fetchone()

    def fetchall(self) -> list[Any]:
        return self._cur.fetchall()


class PostgresStore(SQLStore, BackchannelTable, OutboxTable, IndexedReads):
    """A :class:`~issuer.store.Store` in a PostgreSQL schema."""

    _backend = "postgresql"

    _skip_locked = " FOR UPDATE SKIP LOCKED"

    def __init__(self, url: str, *, create: bool = True) -> None:
        """Connect, and make the tables in the current schema when ``create``; without, a
        schema without them is a :class:`MissingStore` and nothing is created."""
        self.url = url
        self._lock = threading.Lock()  # guards _conn
        self._listen_lock = threading.Lock()  # guards _listener
        self._closed = False
        self._listener: psycopg.Connection[Any] | None = None
        self._conn: psycopg.Connection[Any] | None = None
        try:
            given = conninfo_to_dict(url)
            extra = {} if "connect_timeout" in given else {"connect_timeout": CONNECT_TIMEOUT}
            self._conninfo = make_conninfo(url, **extra)
        except psycopg.Error as e:
            raise StoreError(f"bad PostgreSQL URL {url!r}: {e}") from e
        try:
            self.schema = self._migrate(create)
        except BaseException:
            self.close()
            raise
        self._channel = channel_for(self.schema)

    def _connect(self, *, autocommit: bool) -> psycopg.Connection[Any]:
        try:
            return psycopg.connect(self._conninfo, autocommit=autocommit)
        except psycopg.Error as e:
            raise StoreError(f"cannot connect to {self.url}: {e}") from e

    def _migrate(self, create: bool) -> str:
        """Create (when ``create``) or upgrade the tables in the current schema; return
        the schema's name."""
        with self._transaction(write=False) as cur:
            cur.execute("SELECT current_schema()")
            schema = cur.fetchone()[0]
            if schema is None:
                raise MissingStore(f"no store at {self.url}: the search_path names no schema")
            if not create:
                require_tables(cur, _TABLES, self.url, f"the schema {schema}")
            # Two stores opening a fresh schema at once must not both create the tables.
            cur.execute("SELECT pg_advisory_xact_lock(hashtext(?))", (f"tessera.store.{schema}",))
            apply_migrations(cur, POSTGRES_TYPES)
        return str(schema)

    @contextmanager
    def _transaction(self, write: bool, changes: bool = True) -> Iterator[Cursor]:
        with self._lock:
            if self._closed:
                raise StoreError(f"{self.url}: the store is closed")
            if self._conn is None or self._conn.closed:
                self._conn = self._connect(autocommit=False)
            conn = self._conn
            try:
                with conn.transaction(), conn.cursor() as cur:
                    if write and changes:
                        cur.execute("LOCK TABLE changes IN EXCLUSIVE MODE")
                    yield _Cursor(cur)
                    if write and changes:
                        cur.execute(sql.SQL("NOTIFY {}").format(sql.Identifier(self._channel)))
            except psycopg.Error as e:
                raise StoreError(f"{self.url}: {e}") from e

    def wait_for_change(self, since: int, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        if not self._listen_lock.acquire(timeout=max(timeout, 0.0)):
            return self.last_change()  # another thread waited for the whole timeout
        try:
            listener = self._listening()
            while True:
                current = self.last_change()  # after LISTEN, so no NOTIFY is missed
                remaining = deadline - time.monotonic()
                if current > since or remaining <= 0:
                    return current
                for _ in listener.notifies(timeout=remaining, stop_after=1):
                    pass
        except psycopg.Error as e:
            self._drop_listener()
            raise StoreError(f"{self.url}: {e}") from e
        finally:
            self._listen_lock.release()

    def _listening(self) -> psycopg.Connection[Any]:
        """The autocommit connection that LISTENs on the channel (opened on first use)."""
        if self._closed:
            raise StoreError(f"{self.url}: the store is closed")
        if self._listener is not None and self._listener.closed:
            self._drop_listener()
        if self._listener is None:
            listener = self._connect(autocommit=True)
            try:
                listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
            except BaseException:
                listener.close()
                raise
            self._listener = listener
        return self._listener

    def _drop_listener(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def _insert_many(
        self, cur: Cursor, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> None:
        """COPY: a fraction of the client CPU a row costs in an INSERT."""
        assert isinstance(cur, _Cursor)
        statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
            sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, columns))
        )
        with cur.raw.copy(statement) as copy:
            for row in rows:
                copy.write_row(row)

    def lease(self, name: str) -> Lease | None:
        """A session advisory lock, held by a connection of its own."""
        key = f"tessera.lease.{self.schema}.{name}"
        conn = self._connect(autocommit=True)
        try:
            row = conn.execute("SELECT pg_try_advisory_lock(hashtext(%s))", (key,)).fetchone()
        except psycopg.Error as e:
            conn.close()
            raise StoreError(f"{self.url}: {e}") from e
        if not row or not row[0]:
            conn.close()
            return None
        return _HeldConnection(conn)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._conn is not None:
                self._conn.close()
                self._conn = None
        with self._listen_lock:
            self._drop_listener()


class _HeldConnection:
    """A lease: the advisory lock lives as long as this connection."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    def release(self) -> None:
        """Unlock before closing: a closed connection's backend lets the lock go only when
        it exits, a moment later, and another replica asking at once would be refused."""
        try:
            self._conn.execute("SELECT pg_advisory_unlock_all()")
        except psycopg.Error:
            pass  # the connection is gone, and its lock with it
        finally:
            self._conn.close()
