"""Indexed reads for the operator console: a page of resources searched and sorted in
the database, several resources by id at once, and what the agent trail says of a few
agents, read through the audit table's index by agent and time (migration 5; the audit
writer keeps each decision's agent in the ``agent`` column).

Each read costs the same however many agents and decisions the store holds: a sorted
page walks an index on the sort key for ``offset + limit`` rows; a search reads the
kind's rows in SQL, never in Python (a substring is not indexable; 10,000 agents take
milliseconds); the trail is read for the listed agents only.
"""

from __future__ import annotations

import builtins
from abc import abstractmethod
from collections.abc import Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any

from issuer.store.interface import AuditEntry, Record
from issuer.store.schema import (
    AGENT_FIELDS,
    AUDIT_COLUMNS,
    NUL,
    RECORD_COLUMNS,
    SORTED_FIELDS,
    as_utc,
    json_field,
    record_from_row,
    sort_key,
    time_text,
)

SEARCHED = ("name", "owner", "purpose")  # document fields a search looks in (and the id)
SORTS = (*SORTED_FIELDS, "riskLevel")
MAX_IDS = 500  # ids one query names


def _pattern(text: str) -> str:
    """A LIKE pattern finding ``text`` anywhere, its wildcards taken literally."""
    escaped = text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


class IndexedReads:
    """The console's reads of :class:`~issuer.store.Store`; a backend provides
    ``_transaction`` and ``_backend`` (which names its JSON field expressions,
    see :func:`issuer.store.schema.json_field`) and lists this class beside ``SQLStore``."""

    _backend: str  # "sqlite" or "postgresql"

    @abstractmethod
    def _transaction(self, write: bool, changes: bool = True) -> AbstractContextManager[Any]: ...

    def _data(self, name: str) -> str:
        return json_field(self._backend, "data", AGENT_FIELDS[name])

    def _record(self, name: str) -> str:
        return json_field(self._backend, "record", [name])

    def _read(self, sql: str, parameters: Sequence[Any]) -> builtins.list[Any]:
        with self._transaction(write=False) as cur:
            cur.execute(sql, parameters)
            return list(cur.fetchall())

    def search(
        self, kind: str, text: str, sort: str, descending: bool, limit: int, offset: int
    ) -> tuple[int, builtins.list[Record]]:
        """How many resources of a kind hold ``text`` (case-insensitive) in their id or a
        :data:`SEARCHED` field ("" holds every one), and ``limit`` of them from
        ``offset``, ordered by the :data:`SORTS` field ``sort`` (then by id)."""
        if sort not in SORTS:
            raise ValueError(f"cannot sort by {sort!r}; one of {', '.join(SORTS)}")
        if NUL in text:
            return 0, []
        where, parameters = "kind = ?", [kind]
        if text:
            fields = [f"lower({self._data(name)})" for name in SEARCHED]
            where += (
                " AND ("
                + " OR ".join(f"{f} LIKE ? ESCAPE '\\'" for f in [*fields, "lower(id)"])
                + ")"
            )
            parameters += [_pattern(text)] * (len(SEARCHED) + 1)
        way = "DESC" if descending else "ASC"
        order = f"{sort_key(sort, self._backend)} {way}, id {way}"
        with self._transaction(write=False) as cur:
            cur.execute(f"SELECT count(*) FROM resources WHERE {where}", parameters)
            total = int(cur.fetchone()[0])
            cur.execute(
                f"SELECT {RECORD_COLUMNS} FROM resources WHERE {where}"
                f" ORDER BY {order} LIMIT ? OFFSET ?",
                [*parameters, max(0, limit), max(0, offset)],
            )
            rows = cur.fetchall()
        return total, [record_from_row(kind, row) for row in rows]

    def get_many(self, kind: str, ids: Sequence[str]) -> dict[str, Record]:
        """The resources of a kind with these ids, by id (ids not stored are left out)."""
        found: dict[str, Record] = {}
        wanted = [id_ for id_ in dict.fromkeys(ids) if NUL not in id_]
        for start in range(0, len(wanted), MAX_IDS):
            chunk = wanted[start : start + MAX_IDS]
            rows = self._read(
                f"SELECT {RECORD_COLUMNS} FROM resources WHERE kind = ?"
                f" AND id IN ({', '.join('?' * len(chunk))})",
                [kind, *chunk],
            )
            found.update((str(row[0]), record_from_row(kind, row)) for row in rows)
        return found

    def agent_activity(
        self, agents: Sequence[str], since: datetime
    ) -> dict[str, tuple[datetime, int, int]]:
        """For each of ``agents`` with a decision on the agent trail: the time of its
        newest decision, and how many of its decisions since ``since`` allowed and
        denied (by the time each was written)."""
        wanted = [agent for agent in dict.fromkeys(agents) if NUL not in agent][:MAX_IDS]
        if not wanted:
            return {}
        allow = self._record("allow")
        found: dict[str, tuple[datetime, int, int]] = {}
        with self._transaction(write=False) as cur:
            for who in wanted:
                cur.execute("SELECT max(at) FROM audit WHERE agent = ?", (who,))
                last = cur.fetchone()[0]
                if last is None:
                    continue
                cur.execute(
                    f"SELECT {allow} FROM audit WHERE agent = ? AND at >= ?",
                    (who, time_text(since)),
                )
                allows = [value in (1, True, "true") for (value,) in cur.fetchall()]
                found[who] = (as_utc(last), sum(allows), len(allows) - sum(allows))
        return found

    def agent_decisions(self, agent: str, limit: int) -> builtins.list[AuditEntry]:
        """The newest ``limit`` decisions of one agent on the agent trail, newest first."""
        if NUL in agent or limit <= 0:
            return []
        rows = self._read(
            f"SELECT {AUDIT_COLUMNS} FROM audit WHERE agent = ? ORDER BY at DESC, seq DESC LIMIT ?",
            (agent, limit),
        )
        return [
            AuditEntry(int(row[0]), as_utc(row[1]), str(row[2]), str(row[3]), str(row[4]), agent)
            for row in rows
        ]
