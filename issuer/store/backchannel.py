"""The backchannel table: pending OpenID CIBA requests, shared by every replica.

Requests live outside the resources and the change log: they are many, short-lived and
no concern of the directory's followers, and the change log is never trimmed. Each row
is keyed by the SHA-256 of its ``auth_req_id`` (the id is a bearer secret of the client's)
and carries a version, so that approving, denying and redeeming are compare-and-set:
of two replicas racing, one wins and the other sees the new state.
"""

from __future__ import annotations

import builtins
from abc import abstractmethod
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

from issuer.store.interface import BackchannelRecord
from issuer.store.schema import as_document, document_text, storable

_COLUMNS = "id_hash, client_id, user_id, expires_at, version, data"


class BackchannelTable:
    """The backchannel operations of :class:`~issuer.store.Store`, in SQL both backends
    understand; a backend provides ``_transaction`` (see ``SQLStore``), and lists this
    class beside it."""

    @abstractmethod
    def _transaction(self, write: bool, changes: bool = True) -> AbstractContextManager[Any]: ...

    def add_backchannel(
        self, record: BackchannelRecord, *, now: int, per_client: int, total: int, keep: int
    ) -> bool:
        text = document_text(record.data)
        storable(text, {"client_id": record.client_id, "user_id": record.user_id})
        # a write transaction that takes the change log's lock: the count and the insert
        # exclude every other writer, on every replica
        with self._transaction(write=True) as cur:
            cur.execute("DELETE FROM backchannel WHERE expires_at < ?", (now - keep,))
            cur.execute(
                "SELECT COUNT(*), COALESCE(SUM(CASE WHEN client_id = ? THEN 1 ELSE 0 END), 0)"
                " FROM backchannel WHERE expires_at > ?",
                (record.client_id, now),
            )
            everyone, this_client = (int(n) for n in cur.fetchone())
            if everyone >= total or this_client >= per_client:
                return False
            cur.execute(
                f"INSERT INTO backchannel ({_COLUMNS}) VALUES (?, ?, ?, ?, 1, ?)",
                (record.id_hash, record.client_id, record.user_id, record.expires_at, text),
            )
        return True

    def backchannel(self, id_hash: str) -> BackchannelRecord | None:
        rows = self._rows(f"SELECT {_COLUMNS} FROM backchannel WHERE id_hash = ?", (id_hash,))
        return rows[0] if rows else None

    def update_backchannel(self, id_hash: str, data: Mapping[str, Any], version: int) -> bool:
        text = document_text(data)
        storable(text, {})
        with self._transaction(write=True, changes=False) as cur:
            cur.execute(
                "UPDATE backchannel SET data = ?, version = version + 1"
                " WHERE id_hash = ? AND version = ? RETURNING version",
                (text, id_hash, version),
            )
            return cur.fetchone() is not None

    def backchannel_of_user(self, user_id: str, now: int) -> builtins.list[BackchannelRecord]:
        return self._rows(
            f"SELECT {_COLUMNS} FROM backchannel WHERE user_id = ? AND expires_at > ?"
            " ORDER BY expires_at, id_hash",
            (user_id, now),
        )

    def _rows(self, sql: str, parameters: Sequence[Any]) -> builtins.list[BackchannelRecord]:
        with self._transaction(write=False) as cur:
            cur.execute(sql, parameters)
            found = cur.fetchall()
        return [
            BackchannelRecord(str(h), str(c), str(u), int(e), int(v), as_document(d))
            for h, c, u, e, v, d in found
        ]
