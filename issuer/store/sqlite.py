"""The SQLite store: one WAL-mode file (or memory), stdlib sqlite3, safe across threads.

One connection serves every thread, behind a lock. Writes run in ``BEGIN IMMEDIATE``
transactions, which also keep other processes' writers out until commit, so several
store objects (or processes) can share a file; readers are not blocked (WAL).
"""

from __future__ import annotations

import fcntl
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from issuer.store.backchannel import BackchannelTable
from issuer.store.interface import Lease, MissingStore, StoreError
from issuer.store.listing import IndexedReads
from issuer.store.outbox import OutboxTable
from issuer.store.schema import (
    SQLITE_TYPES,
    Cursor,
    SQLStore,
    apply_migrations,
    require_tables,
)

BUSY_TIMEOUT = 5.0  # seconds a statement waits for another connection's lock
POLL_INTERVAL = 0.02  # seconds between change-counter checks in wait_for_change

_PREFIX = "sqlite:///"
_TABLES = "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"


def database_path(url: str) -> str:
    """The file a ``sqlite:///`` URL names (relative unless it has a fourth slash)."""
    if not url.startswith(_PREFIX):
        raise StoreError(
            f"bad SQLite URL {url!r}: use sqlite:///relative/path.db or sqlite:////absolute/path.db"
        )
    path = url[len(_PREFIX) :].split("?", 1)[0]
    if not path:
        raise StoreError(f"bad SQLite URL {url!r}: no file name")
    return path


class SQLiteStore(SQLStore, BackchannelTable, OutboxTable, IndexedReads):
    """A :class:`~issuer.store.Store` in a SQLite database."""

    _backend = "sqlite"

    def __init__(self, url: str, *, create: bool = True) -> None:
        """Open the database file, and make it (folder included) when ``create``;
        without, a file that is not there or holds no Tessera tables is a
        :class:`MissingStore` and nothing is written."""
        self.url = url
        path = database_path(url)
        self._path = path
        self._lock = threading.Lock()
        self._audit_lock = threading.Lock()
        self._audit: sqlite3.Connection | None = None
        self._closed = False
        self._conn = _connect(url, path, create)
        try:
            self._conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT * 1000)}")
            self._conn.execute("PRAGMA foreign_keys = ON")
            if not create:  # before WAL mode, which would write to a file not ours
                with self._transaction(write=False) as cur:
                    require_tables(cur, _TABLES, url, path)
            self._conn.execute("PRAGMA journal_mode = WAL")
            with self._transaction(write=True) as cur:
                apply_migrations(cur, SQLITE_TYPES)
        except BaseException:
            self._conn.close()
            raise

    @contextmanager
    def _transaction(self, write: bool, changes: bool = True) -> Iterator[Cursor]:
        # Audit appends (writes outside the change log) have a connection of their own:
        # they neither wait for nor hold up the directory's operations in this process.
        audit = write and not changes and self._path != ":memory:"
        conn, lock = (
            (self._audit_connection(), self._audit_lock)
            if audit
            else (
                self._conn,
                self._lock,
            )
        )
        with lock:
            try:
                cur = conn.cursor()
                cur.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            except sqlite3.Error as e:
                raise StoreError(f"{self.url}: {e}") from e
            try:
                yield cur
                cur.execute("COMMIT")
            except BaseException as e:
                _rollback(conn)
                if isinstance(e, sqlite3.Error):
                    raise StoreError(f"{self.url}: {e}") from e
                raise

    def _audit_connection(self) -> sqlite3.Connection:
        """The connection audit appends commit on, opened on first use. Its commits do
        not wait for the disk (``synchronous = NORMAL``, safe in WAL mode): they survive
        a crash of the process; a power failure may lose the newest ones."""
        with self._audit_lock:
            if self._closed:
                raise StoreError(f"{self.url}: the store is closed")
            if self._audit is None:
                try:
                    conn = sqlite3.connect(
                        self._path,
                        timeout=BUSY_TIMEOUT,
                        isolation_level=None,
                        check_same_thread=False,
                    )
                    conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT * 1000)}")
                    conn.execute("PRAGMA synchronous = NORMAL")
                except sqlite3.Error as e:
                    raise StoreError(f"cannot open {self.url}: {e}") from e
                self._audit = conn
            return self._audit

    def wait_for_change(self, since: int, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while True:
            current = self.last_change()
            remaining = deadline - time.monotonic()
            if current > since or remaining <= 0:
                return current
            time.sleep(min(POLL_INTERVAL, remaining))

    def lease(self, name: str) -> Lease | None:
        """An exclusive ``flock`` on a file beside the database (``<file>.<name>.lease``);
        an in-memory database has one process, which always gets it."""
        if self._path == ":memory:":
            return _HeldFile(None)
        try:
            handle = open(f"{self._path}.{name}.lease", "a")  # noqa: SIM115 (held by the lease)
        except OSError as e:
            raise StoreError(f"cannot open the {name} lease of {self.url}: {e}") from e
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            return None
        return _HeldFile(handle)

    def close(self) -> None:
        with self._lock:
            self._conn.close()
        with self._audit_lock:
            self._closed = True
            if self._audit is not None:
                self._audit.close()


def _connect(url: str, path: str, create: bool) -> sqlite3.Connection:
    """The connection to ``path``; without ``create`` one that never makes the file
    (SQLite's ``mode=rw``), so a mistyped path creates nothing."""
    try:
        if create:
            if path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            return sqlite3.connect(
                path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
            )
        if path == ":memory:":
            raise MissingStore(f"no store at {url}: an in-memory database is always new")
        if not Path(path).is_file():
            raise MissingStore(f"no store at {url}: the file {path} does not exist")
        return sqlite3.connect(
            f"{Path(path).absolute().as_uri()}?mode=rw",
            uri=True,
            timeout=BUSY_TIMEOUT,
            isolation_level=None,
            check_same_thread=False,
        )
    except (OSError, sqlite3.Error) as e:
        raise StoreError(f"cannot open {url}: {e}") from e


class _HeldFile:
    """A lease: the lock lives as long as this open file."""

    def __init__(self, handle: IO[str] | None) -> None:
        self._handle = handle

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()


def _rollback(conn: sqlite3.Connection) -> None:
    try:
        if conn.in_transaction:
            conn.rollback()
    except sqlite3.Error:
        pass  # the connection is unusable; the error that brought us here says why
