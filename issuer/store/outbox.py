"""The outbox: events waiting for delivery to webhooks, shared by every replica.

Events are added by whichever replica follows the trails, together with the follower's
cursor in the same transaction, so a restart neither loses nor repeats one; an event
already there (same id and endpoint) is skipped. Any replica may deliver: it claims due
rows by moving ``claimed_until`` past now (on PostgreSQL with ``FOR UPDATE SKIP LOCKED``,
so two replicas claiming at once take different rows), and a claim that outlives its
holder (a crash) runs out and the row is claimed again.
"""

from __future__ import annotations

import builtins
from abc import abstractmethod
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any

from issuer.store.interface import OutboxEvent

_COLUMNS = "n, event_id, target, event, created, attempts"


class OutboxTable:
    """The outbox and cursor operations of :class:`~issuer.store.Store`, in SQL both
    backends understand; a backend provides ``_transaction`` and ``_skip_locked``."""

    _skip_locked = ""  # the row-locking clause of a claim (PostgreSQL's FOR UPDATE ...)

    @abstractmethod
    def _transaction(self, write: bool, changes: bool = True) -> AbstractContextManager[Any]: ...

    def add_events(
        self, events: Sequence[OutboxEvent], *, cursor: str, position: int, bound: int
    ) -> int:
        with self._transaction(write=True, changes=False) as cur:
            dropped = 0
            if events:
                cur.execute("SELECT COUNT(*) FROM outbox WHERE dead = 0")
                if int(cur.fetchone()[0]) >= bound:
                    dropped = len(events)
                else:
                    cur.executemany(
                        "INSERT INTO outbox (event_id, target, event, created, attempts, due,"
                        " claimed_until, dead) VALUES (?, ?, ?, ?, 0, ?, 0, 0)"
                        " ON CONFLICT (event_id, target) DO NOTHING",
                        [(e.event_id, e.target, e.event, e.created, e.created) for e in events],
                    )
            _move(cur, cursor, position)
        return dropped

    def cursor(self, name: str) -> int | None:
        with self._transaction(write=False) as cur:
            cur.execute("SELECT position FROM cursors WHERE name = ?", (name,))
            row = cur.fetchone()
        return None if row is None else int(row[0])

    def move_cursor(self, name: str, position: int) -> None:
        with self._transaction(write=True, changes=False) as cur:
            _move(cur, name, position)

    def claim_events(self, now: int, lease: int, limit: int) -> builtins.list[OutboxEvent]:
        with self._transaction(write=True, changes=False) as cur:
            cur.execute(
                "UPDATE outbox SET claimed_until = ? WHERE n IN (SELECT n FROM outbox"
                " WHERE dead = 0 AND due <= ? AND claimed_until <= ? ORDER BY n LIMIT ?"
                f"{self._skip_locked}) RETURNING {_COLUMNS}",
                (now + lease, now, now, limit),
            )
            rows = cur.fetchall()
        events = [
            OutboxEvent(int(n), str(i), str(t), str(e), int(c), int(a)) for n, i, t, e, c, a in rows
        ]
        return sorted(events, key=lambda e: e.n)

    def event_delivered(self, n: int) -> None:
        with self._transaction(write=True, changes=False) as cur:
            cur.execute("DELETE FROM outbox WHERE n = ?", (n,))

    def event_failed(self, n: int, due: int | None) -> None:
        with self._transaction(write=True, changes=False) as cur:
            if due is None:
                cur.execute(
                    "UPDATE outbox SET attempts = attempts + 1, dead = 1, claimed_until = 0"
                    " WHERE n = ?",
                    (n,),
                )
            else:
                cur.execute(
                    "UPDATE outbox SET attempts = attempts + 1, due = ?, claimed_until = 0"
                    " WHERE n = ?",
                    (due, n),
                )

    def outbox_counts(self) -> tuple[int, int]:
        with self._transaction(write=False) as cur:
            cur.execute("SELECT COALESCE(SUM(1 - dead), 0), COALESCE(SUM(dead), 0) FROM outbox")
            pending, dead = cur.fetchone()
        return int(pending), int(dead)


def _move(cur: Any, name: str, position: int) -> None:
    cur.execute(
        "INSERT INTO cursors (name, position) VALUES (?, ?)"
        " ON CONFLICT (name) DO UPDATE SET position = excluded.position",
        (name, position),
    )
