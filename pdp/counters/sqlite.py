"""The SQLite side of :class:`~pdp.counters.sql.SqlCounters`: a file shared by processes.

``BEGIN IMMEDIATE`` takes the database's one write lock before a charge reads, so charges
from every process on the machine run one at a time; a charge that waits longer than the
busy timeout for it fails. The file is in WAL mode with ``synchronous = NORMAL``: a charge
survives the process ending; a power failure may forget the last few.
"""

from __future__ import annotations

import math
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from issuer.store.interface import StoreError
from issuer.store.sqlite import database_path
from pdp.counters.base import CounterError
from pdp.counters.breaker import held
from pdp.counters.schema import (
    TABLES,
    Counted,
    Once,
    Run,
    Step,
    charge_in,
    read_query,
    sweep_queries,
)

SWEEP = sweep_queries()


class SQLiteDatabase:
    """One connection, behind a lock, opened on first use."""

    def __init__(self, url: str, timeout: float) -> None:
        try:
            path = database_path(url)
        except StoreError as e:
            raise CounterError(str(e)) from None
        if path == ":memory:":
            raise CounterError(
                "sqlite:///:memory: would count in one connection of one process and keep "
                "nothing: use `memory` for that, or a SQLite file to share and keep counts"
            )
        self.name = f"the SQLite counter store {path}"
        self._path = path
        self._timeout = timeout
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._closed = False

    def charge(
        self, steps: list[Step], now: float, *, record: bool, once: Once, sweep: bool
    ) -> Counted:
        with self._transaction(write=record) as run:
            answer = charge_in(run, steps, now, record, once)
            if sweep:
                for query in SWEEP:
                    run(query, (now,))
            return answer

    def usage(self, key: str, oldest: int) -> int:
        with self._transaction(write=False) as run:
            return int(run(read_query(1, False), (key, oldest)).fetchone()[0])

    @contextmanager
    def _transaction(self, write: bool) -> Iterator[Run]:
        """A transaction; a writing one holds the file's write lock from its start."""
        with held(self._lock, self._timeout, self.name):
            conn = self._connection()
            try:
                conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                yield conn.execute
                conn.execute("COMMIT")
            except BaseException as e:
                with suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                if isinstance(e, sqlite3.Error):
                    raise CounterError(f"{self.name}: {e}") from e
                raise

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _connection(self) -> sqlite3.Connection:
        if self._closed:
            raise CounterError(f"{self.name} is closed")
        if self._conn is None:
            self._conn = self._connect()
        return self._conn

    def _connect(self) -> sqlite3.Connection:
        """Open the file, in WAL mode, and create the tables when absent."""
        try:
            Path(self._path).parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                self._path, timeout=self._timeout, isolation_level=None, check_same_thread=False
            )
        except (OSError, sqlite3.Error) as e:
            raise CounterError(f"{self.name}: cannot open: {e}") from e
        try:
            conn.execute(f"PRAGMA busy_timeout = {max(1, math.ceil(self._timeout * 1000))}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("BEGIN IMMEDIATE")
            for statement in TABLES:
                conn.execute(statement)
            conn.execute("COMMIT")
        except sqlite3.Error as e:
            conn.close()
            raise CounterError(f"{self.name}: cannot open: {e}") from e
        return conn
