"""What the SQLite and PostgreSQL stores share: the tables, their migrations and the queries.

:class:`SQLStore` implements every :class:`~issuer.store.Store` operation on top of one
abstract method, :meth:`SQLStore._transaction`, which a backend provides: it holds the
backend's lock, opens a transaction (a *write* transaction excludes every other writer
until it commits, so change seqs become visible in order and uniqueness checks are
exact), and yields a :class:`Cursor` that takes ``?`` placeholders.

Values cross the driver as text both ways: timestamps as ISO-8601 UTC, documents as
JSON. SQLite stores that text as is; PostgreSQL receives it as an untyped literal and
casts it to the column's ``timestamptz`` or ``jsonb``, and hands back ``datetime`` and
decoded JSON, which :func:`as_utc` and :func:`as_document` accept as well.
"""

from __future__ import annotations

import builtins
import json
import re
import uuid
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import Any, Protocol, cast

from issuer.store.interface import (
    AuditEntry,
    Change,
    Conflict,
    MissingStore,
    NotFound,
    Op,
    Record,
    StoreError,
    Unstorable,
    VersionMismatch,
)


class Cursor(Protocol):
    """The part of a DB-API cursor the shared queries use (``?`` placeholders)."""

    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> object: ...

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]], /) -> object: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> builtins.list[Any]: ...


# The agent document's fields the console lists agents by: a path into the document (the
# SCIM agent extension's URN, as issuer.agents names it, then the attribute).
AGENT_EXTENSION = "urn:tessera:params:scim:schemas:extension:agent:1.0:Agent"
AGENT_FIELDS: Mapping[str, tuple[str, ...]] = {
    "name": ("name",),
    "owner": (AGENT_EXTENSION, "owner"),
    "purpose": (AGENT_EXTENSION, "purpose"),
    "riskLevel": (AGENT_EXTENSION, "riskLevel"),
    "status": (AGENT_EXTENSION, "status"),
}
# The agent list's sort keys: a text field in lower case, the risk level by its rank.
SORTED_FIELDS = ("name", "owner", "status")
RISK_RANKS = ("low", "medium", "high", "critical")


def json_field(backend: str, column: str, path: Sequence[str]) -> str:
    """How ``backend`` ("sqlite" or "postgresql") reads the text at ``path`` in the JSON
    of ``column`` (``data``, JSONB on PostgreSQL, or an audit ``record``, text on both).
    The sort indexes of migration 5 are on these expressions; the queries of
    :mod:`issuer.store.listing` use the very same text, so that the planner matches them."""
    if backend == "sqlite":
        return f"json_extract({column}, '$" + "".join(f'."{p}"' for p in path) + "')"
    value = column if column == "data" else f"({column}::json)"
    *inner, last = path
    return f"({value}" + "".join(f" -> '{p}'" for p in inner) + f" ->> '{last}')"


def sort_key(field: str, backend: str) -> str:
    """The SQL expression an Agent sort by ``field`` orders by (and is indexed on)."""
    value = json_field(backend, "data", AGENT_FIELDS[field])
    if field == "riskLevel":
        ranks = " ".join(f"WHEN '{name}' THEN {rank}" for rank, name in enumerate(RISK_RANKS))
        return f"(CASE {value} {ranks} ELSE -1 END)"
    return f"lower({value})"


def _expressions(backend: str) -> dict[str, str]:
    keys = {f"sort_{name}": sort_key(name, backend) for name in (*SORTED_FIELDS, "riskLevel")}
    return {
        **keys,
        "record_agent": json_field(backend, "record", ["agent"]),
        "record_kind": json_field(backend, "record", ["kind"]),
    }


# Column types and expressions per backend, substituted into MIGRATIONS with str.format.
SQLITE_TYPES: Mapping[str, str] = {
    "int": "INTEGER",
    "json": "TEXT",
    "time": "TEXT",
    "seq": "INTEGER PRIMARY KEY AUTOINCREMENT",
    **_expressions("sqlite"),
}
POSTGRES_TYPES: Mapping[str, str] = {
    "int": "BIGINT",
    "json": "JSONB",
    "time": "TIMESTAMPTZ",
    "seq": "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
    **_expressions("postgresql"),
}

# Migration n (1-based) is MIGRATIONS[n - 1]; append new ones, never edit applied ones.
MIGRATIONS: Sequence[Sequence[str]] = (
    (
        # created_seq is the seq of the create change: "oldest first" without clock ties.
        """CREATE TABLE resources (
            kind TEXT NOT NULL,
            id TEXT NOT NULL,
            version {int} NOT NULL,
            data {json} NOT NULL,
            created {time} NOT NULL,
            modified {time} NOT NULL,
            created_seq {int} NOT NULL,
            PRIMARY KEY (kind, id)
        )""",
        "CREATE INDEX resources_by_age ON resources (kind, created_seq)",
        """CREATE TABLE unique_values (
            kind TEXT NOT NULL,
            attribute TEXT NOT NULL,
            value TEXT NOT NULL,
            id TEXT NOT NULL,
            PRIMARY KEY (kind, attribute, value),
            FOREIGN KEY (kind, id) REFERENCES resources (kind, id)
        )""",
        "CREATE INDEX unique_values_by_resource ON unique_values (kind, id)",
        """CREATE TABLE changes (
            seq {seq},
            at {time} NOT NULL,
            kind TEXT NOT NULL,
            id TEXT NOT NULL,
            op TEXT NOT NULL CHECK (op IN ('create', 'replace', 'delete')),
            actor TEXT NOT NULL,
            version {int} NOT NULL,
            data {json}
        )""",
        "CREATE INDEX changes_by_resource ON changes (kind, id, seq)",
    ),
    (
        # The audit trails: one hash chain per trail. A record is kept as the exact text
        # that was hashed (TEXT, not JSONB, which would reorder its keys).
        """CREATE TABLE audit (
            trail TEXT NOT NULL,
            seq {int} NOT NULL,
            at {time} NOT NULL,
            record TEXT NOT NULL,
            prev_hash TEXT NOT NULL,
            hash TEXT NOT NULL,
            PRIMARY KEY (trail, seq)
        )""",
    ),
    (
        # Backchannel authentication requests (OpenID CIBA): short-lived, outside the
        # change log (which is never trimmed), keyed by the SHA-256 of the auth_req_id.
        """CREATE TABLE backchannel (
            id_hash TEXT PRIMARY KEY,
            client_id TEXT NOT NULL,
            user_id TEXT NOT NULL,
            expires_at {int} NOT NULL,
            version {int} NOT NULL,
            data {json} NOT NULL
        )""",
        "CREATE INDEX backchannel_by_client ON backchannel (client_id, expires_at)",
        "CREATE INDEX backchannel_by_user ON backchannel (user_id, expires_at)",
        "CREATE INDEX backchannel_by_expiry ON backchannel (expires_at)",
    ),
    (
        # Events to deliver to webhooks (an outbox): one row per event and endpoint, kept
        # until delivered (deleted) or dead-lettered (dead = 1). Times are epoch
        # milliseconds; a replica claims a row by moving claimed_until past now.
        """CREATE TABLE outbox (
            n {seq},
            event_id TEXT NOT NULL,
            target TEXT NOT NULL,
            event TEXT NOT NULL,
            created {int} NOT NULL,
            attempts {int} NOT NULL,
            due {int} NOT NULL,
            claimed_until {int} NOT NULL,
            dead {int} NOT NULL,
            UNIQUE (event_id, target)
        )""",
        "CREATE INDEX outbox_by_due ON outbox (dead, due)",
        # How far a follower of the trails has read (the webhook events, the decision log).
        "CREATE TABLE cursors (name TEXT PRIMARY KEY, position {int} NOT NULL)",
    ),
    (
        # The console's agent list pages through the store sorted by these keys (id breaks
        # ties), and reads each listed agent's decisions of today, its last decision and
        # its newest decisions from the agent trail by agent and time.
        "CREATE INDEX resources_agent_name ON resources (kind, {sort_name}, id)",
        "CREATE INDEX resources_agent_owner ON resources (kind, {sort_owner}, id)",
        "CREATE INDEX resources_agent_status ON resources (kind, {sort_status}, id)",
        "CREATE INDEX resources_agent_risk ON resources (kind, {sort_riskLevel}, id)",
        # A plain column, set by the audit writer for decisions: an index on an expression
        # of the record would parse every record's JSON as it is written (a third of the
        # PostgreSQL writer's throughput). Decisions written before are filled in here.
        "ALTER TABLE audit ADD COLUMN agent TEXT",
        "UPDATE audit SET agent = {record_agent}"
        " WHERE trail = 'agent' AND {record_kind} = 'decision'",
        "CREATE INDEX audit_by_agent ON audit (agent, at, seq)",
    ),
)


def require_tables(cur: Cursor, count_query: str, url: str, where: str) -> None:
    """Refuse (:class:`MissingStore`) a database without Tessera's tables, found by
    ``count_query``, which counts the ``schema_version`` table where the backend keeps
    it; ``where`` names the place for the message (a file, a schema)."""
    cur.execute(count_query)
    if int(cur.fetchone()[0]) == 0:
        raise MissingStore(f"no store at {url}: {where} has no Tessera tables")


def apply_migrations(cur: Cursor, types: Mapping[str, str]) -> None:
    """Bring the schema up to date; a no-op when it already is.

    Runs inside the caller's transaction, which must keep other openers out.
    """
    cur.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY)")
    cur.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version")
    current = int(cur.fetchone()[0])
    if current > len(MIGRATIONS):
        raise StoreError(
            f"the database schema is at version {current}, newer than this code "
            f"({len(MIGRATIONS)}); upgrade Tessera"
        )
    for number, statements in enumerate(MIGRATIONS[current:], start=current + 1):
        for statement in statements:
            cur.execute(statement.format_map(types))
        cur.execute("INSERT INTO schema_version (version) VALUES (?)", (number,))


def unique_diff(
    old: Mapping[str, str], new: Mapping[str, str]
) -> tuple[builtins.list[str], dict[str, str]]:
    """Which unique attributes to release and which values to claim, going old → new.

    An attribute that keeps its value is in neither, so a resource never conflicts
    with itself.
    """
    release = [attribute for attribute, value in old.items() if new.get(attribute) != value]
    claim = {attribute: value for attribute, value in new.items() if old.get(attribute) != value}
    return release, claim


def utc_now() -> datetime:
    return datetime.now(UTC)


def time_text(moment: datetime) -> str:
    """ISO-8601 in UTC with microseconds, the form timestamps are stored in."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def as_utc(value: str | datetime) -> datetime:
    """A stored timestamp (ISO text or a driver's datetime) as an aware UTC datetime."""
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def document_text(data: Mapping[str, Any]) -> str:
    """A document as JSON text (strict JSON: NaN and infinities are refused)."""
    return json.dumps(dict(data), ensure_ascii=False, allow_nan=False, separators=(",", ":"))


MAX_UNIQUE = 1_024  # bytes of a unique value: PostgreSQL indexes a row of at most 2,704
NUL = "\x00"
# A NUL character in JSON text: the escape \u0000 after an even run of backslashes (an odd
# one would make it the text "\u0000" instead).
_NUL_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


def storable(text: str, unique: Mapping[str, str]) -> None:
    """:class:`Unstorable` unless every backend holds the document ``text`` and the
    ``unique`` values: no NUL character anywhere, no unique value over MAX_UNIQUE bytes."""
    if _NUL_ESCAPE.search(text):
        raise Unstorable("text with a NUL character (U+0000) cannot be stored")
    for attribute, value in unique.items():
        if NUL in value:
            raise Unstorable(f"{attribute}: text with a NUL character cannot be stored")
        if len(value.encode()) > MAX_UNIQUE:
            raise Unstorable(f"{attribute} is longer than {MAX_UNIQUE:,} bytes")


def as_document(value: str | dict[str, Any]) -> dict[str, Any]:
    """A stored document (JSON text or a driver's decoded JSON) as a dict."""
    return cast(dict[str, Any], json.loads(value)) if isinstance(value, str) else value


RECORD_COLUMNS = "id, version, data, created, modified"
CHANGE_COLUMNS = "seq, at, kind, id, op, actor, version, data"


def record_from_row(kind: str, row: Sequence[Any]) -> Record:
    """A :class:`Record` from a row of ``RECORD_COLUMNS``."""
    id_, version, data, created, modified = row
    return Record(
        kind=kind,
        id=str(id_),
        version=int(version),
        data=as_document(data),
        created=as_utc(created),
        modified=as_utc(modified),
    )


def change_from_row(row: Sequence[Any]) -> Change:
    """A :class:`Change` from a row of ``CHANGE_COLUMNS``."""
    seq, at, kind, id_, op, actor, version, data = row
    return Change(
        seq=int(seq),
        at=as_utc(at),
        kind=str(kind),
        id=str(id_),
        op=cast(Op, op),
        actor=str(actor),
        version=int(version),
        data=None if data is None else as_document(data),
    )


class SQLStore(ABC):
    """The store operations, in SQL both backends understand."""

    url: str

    @abstractmethod
    def _transaction(self, write: bool, changes: bool = True) -> AbstractContextManager[Cursor]:
        """Hold the lock and run one transaction: commit on success, roll back on error.

        ``write`` excludes other writers of the change log until commit (unless
        ``changes`` is False: a write outside the change log, such as the audit trail).
        Driver errors leave as :class:`StoreError`; errors the body raises pass through
        unchanged.
        """

    def create(
        self, kind: str, data: Mapping[str, Any], *, unique: Mapping[str, str], actor: str
    ) -> Record:
        text = document_text(data)
        storable(text, unique)
        id_ = str(uuid.uuid4())
        now = utc_now()
        with self._transaction(write=True) as cur:
            _check_unique(cur, kind, id_, unique)
            seq = _log(cur, now, kind, id_, "create", actor, 1, text)
            cur.execute(
                "INSERT INTO resources (kind, id, version, data, created, modified, created_seq)"
                " VALUES (?, ?, 1, ?, ?, ?, ?)",
                (kind, id_, text, time_text(now), time_text(now), seq),
            )
            _claim(cur, kind, id_, unique)
        return Record(kind, id_, 1, as_document(text), now, now)

    def _select(self, sql: str, parameters: Sequence[Any]) -> builtins.list[Any]:
        """The rows of one read-only query, in its own transaction."""
        with self._transaction(write=False) as cur:
            cur.execute(sql, parameters)
            return cur.fetchall()

    def _select_one(self, sql: str, parameters: Sequence[Any]) -> Any:
        """The first row of a read-only query, or None."""
        rows = self._select(sql, parameters)
        return rows[0] if rows else None

    def get(self, kind: str, id: str) -> Record:
        if NUL in id:  # never stored (see storable), and PostgreSQL cannot be asked
            raise NotFound(f"no {kind} with id {id!r}")
        row = self._select_one(
            f"SELECT {RECORD_COLUMNS} FROM resources WHERE kind = ? AND id = ?", (kind, id)
        )
        if row is None:
            raise NotFound(f"no {kind} with id {id!r}")
        return record_from_row(kind, row)

    def find(self, kind: str, attribute: str, value: str) -> Record:
        if NUL in value:
            raise NotFound(f"no {kind} with {attribute} {value!r}")
        row = self._select_one(
            "SELECT r.id, r.version, r.data, r.created, r.modified FROM unique_values u"
            " JOIN resources r ON r.kind = u.kind AND r.id = u.id"
            " WHERE u.kind = ? AND u.attribute = ? AND u.value = ?",
            (kind, attribute, value),
        )
        if row is None:
            raise NotFound(f"no {kind} with {attribute} {value!r}")
        return record_from_row(kind, row)

    def list(self, kind: str) -> builtins.list[Record]:
        rows = self._select(
            f"SELECT {RECORD_COLUMNS} FROM resources WHERE kind = ? ORDER BY created_seq",
            (kind,),
        )
        return [record_from_row(kind, row) for row in rows]

    def replace(
        self,
        kind: str,
        id: str,
        data: Mapping[str, Any],
        *,
        unique: Mapping[str, str],
        expected_version: int | None,
        actor: str,
    ) -> Record:
        text = document_text(data)
        storable(text, unique)
        now = utc_now()
        with self._transaction(write=True) as cur:
            current = _current(cur, kind, id, expected_version)
            cur.execute(
                "SELECT attribute, value FROM unique_values WHERE kind = ? AND id = ?", (kind, id)
            )
            release, claim = unique_diff(dict(cur.fetchall()), unique)
            _check_unique(cur, kind, id, claim)
            for attribute in release:
                cur.execute(
                    "DELETE FROM unique_values WHERE kind = ? AND id = ? AND attribute = ?",
                    (kind, id, attribute),
                )
            _claim(cur, kind, id, claim)
            version = current.version + 1
            cur.execute(
                "UPDATE resources SET version = ?, data = ?, modified = ?"
                " WHERE kind = ? AND id = ?",
                (version, text, time_text(now), kind, id),
            )
            _log(cur, now, kind, id, "replace", actor, version, text)
        return Record(kind, id, version, as_document(text), current.created, now)

    def delete(self, kind: str, id: str, *, expected_version: int | None, actor: str) -> None:
        now = utc_now()
        with self._transaction(write=True) as cur:
            current = _current(cur, kind, id, expected_version)
            cur.execute("DELETE FROM unique_values WHERE kind = ? AND id = ?", (kind, id))
            cur.execute("DELETE FROM resources WHERE kind = ? AND id = ?", (kind, id))
            _log(cur, now, kind, id, "delete", actor, current.version, None)

    def put(
        self, kind: str, documents: Mapping[str, Mapping[str, Any] | None], *, actor: str
    ) -> int:
        texts: dict[str, str | None] = {}
        for id_, data in documents.items():
            if NUL in id_:
                raise Unstorable("an id with a NUL character (U+0000) cannot be stored")
            texts[id_] = None if data is None else document_text(data)
            storable(texts[id_] or "", {})
        now = utc_now()
        made = 0
        with self._transaction(write=True) as cur:
            stored = _stored(cur, kind, list(texts))
            for id_, text in texts.items():
                made += _put_one(cur, kind, id_, text, stored.get(id_), now, actor)
        return made

    def page(self, kind: str, prefix: str, after: str, limit: int) -> builtins.list[Record]:
        if limit <= 0 or NUL in prefix or NUL in after:
            return []
        rows = self._select(
            f"SELECT {RECORD_COLUMNS} FROM resources WHERE kind = ? AND substr(id, 1, ?) = ?"
            " AND id > ? ORDER BY id LIMIT ?",
            (kind, len(prefix), prefix, after, limit),
        )
        return [record_from_row(kind, row) for row in rows]

    def last_change(self) -> int:
        return int(self._select_one("SELECT COALESCE(MAX(seq), 0) FROM changes", ())[0])

    def changes(self, since: int, limit: int = 1000) -> builtins.list[Change]:
        if limit <= 0:
            return []
        rows = self._select(
            f"SELECT {CHANGE_COLUMNS} FROM changes WHERE seq > ? ORDER BY seq LIMIT ?",
            (since, limit),
        )
        return [change_from_row(row) for row in rows]

    def append_audit(self, trail: str, entries: Sequence[AuditEntry]) -> None:
        """Append chained audit entries to a trail, all or none (one transaction). It does
        not touch the change log: no change-log lock, and no wake-up of its followers."""
        stamps: dict[datetime, str] = {}  # a batch's entries share their time
        rows = []
        for e in entries:
            at = stamps.get(e.at) or stamps.setdefault(e.at, time_text(e.at))
            rows.append((trail, e.seq, at, e.record, e.prev_hash, e.hash, e.agent))
        with self._transaction(write=True, changes=False) as cur:
            self._insert_many(cur, "audit", AUDIT_INSERT_COLUMNS, rows)

    def _insert_many(
        self, cur: Cursor, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> None:
        """Insert rows with one multi-row statement per :data:`INSERT_CHUNK` rows: one
        execution, so SQLite releases the interpreter lock once per chunk, not per row."""
        row = "(" + ", ".join("?" * len(columns)) + ")"
        for start in range(0, len(rows), INSERT_CHUNK):
            chunk = rows[start : start + INSERT_CHUNK]
            values = ", ".join([row] * len(chunk))
            cur.execute(
                f"INSERT INTO {table} ({', '.join(columns)}) VALUES {values}",
                [value for r in chunk for value in r],
            )

    def audit_tail(self, trail: str) -> AuditEntry | None:
        """The newest entry of a trail, or None for an empty trail."""
        row = self._select_one(
            f"SELECT {AUDIT_COLUMNS} FROM audit WHERE trail = ? ORDER BY seq DESC LIMIT 1",
            (trail,),
        )
        return None if row is None else _audit_entry(row)

    def audit(self, trail: str, after: int = 0, limit: int = 10_000) -> builtins.list[AuditEntry]:
        """A trail's entries with seq > ``after``, in seq order, at most ``limit``."""
        rows = self._select(
            f"SELECT {AUDIT_COLUMNS} FROM audit WHERE trail = ? AND seq > ? ORDER BY seq LIMIT ?",
            (trail, after, limit),
        )
        return [_audit_entry(row) for row in rows]

    def history(self, kind: str, id: str) -> builtins.list[Change]:
        if NUL in id:
            return []
        rows = self._select(
            f"SELECT {CHANGE_COLUMNS} FROM changes WHERE kind = ? AND id = ? ORDER BY seq",
            (kind, id),
        )
        return [change_from_row(row) for row in rows]


AUDIT_COLUMNS = "seq, at, record, prev_hash, hash"
AUDIT_INSERT_COLUMNS = ("trail", "seq", "at", "record", "prev_hash", "hash", "agent")
INSERT_CHUNK = 500  # rows per INSERT: 3,000 parameters, within every SQLite's limit


def _audit_entry(row: Sequence[Any]) -> AuditEntry:
    return AuditEntry(int(row[0]), as_utc(row[1]), str(row[2]), str(row[3]), str(row[4]))


def _current(cur: Cursor, kind: str, id_: str, expected_version: int | None) -> Record:
    """The stored record, checked against the version the caller expects."""
    if NUL in id_:
        raise NotFound(f"no {kind} with id {id_!r}")
    cur.execute(f"SELECT {RECORD_COLUMNS} FROM resources WHERE kind = ? AND id = ?", (kind, id_))
    row = cur.fetchone()
    if row is None:
        raise NotFound(f"no {kind} with id {id_!r}")
    record = record_from_row(kind, row)
    if expected_version is not None and expected_version != record.version:
        raise VersionMismatch(expected_version, record.version)
    return record


def _stored(cur: Cursor, kind: str, ids: Sequence[str]) -> dict[str, tuple[int, Any]]:
    """(version, document) of those of ``ids`` that are stored, by id."""
    found: dict[str, tuple[int, Any]] = {}
    for start in range(0, len(ids), INSERT_CHUNK):
        chunk = ids[start : start + INSERT_CHUNK]
        marks = ", ".join("?" * len(chunk))
        cur.execute(
            f"SELECT id, version, data FROM resources WHERE kind = ? AND id IN ({marks})",
            (kind, *chunk),
        )
        found.update((str(id_), (int(version), data)) for id_, version, data in cur.fetchall())
    return found


def _put_one(
    cur: Cursor,
    kind: str,
    id_: str,
    text: str | None,
    stored: tuple[int, Any] | None,
    now: datetime,
    actor: str,
) -> int:
    """Write one resource of :meth:`SQLStore.put`; 1 when it changed, else 0."""
    if text is None:
        if stored is None:
            return 0
        cur.execute("DELETE FROM unique_values WHERE kind = ? AND id = ?", (kind, id_))
        cur.execute("DELETE FROM resources WHERE kind = ? AND id = ?", (kind, id_))
        _log(cur, now, kind, id_, "delete", actor, stored[0], None)
        return 1
    if stored is None:
        seq = _log(cur, now, kind, id_, "create", actor, 1, text)
        cur.execute(
            "INSERT INTO resources (kind, id, version, data, created, modified, created_seq)"
            " VALUES (?, ?, 1, ?, ?, ?, ?)",
            (kind, id_, text, time_text(now), time_text(now), seq),
        )
        return 1
    version, data = stored
    if as_document(data) == json.loads(text):
        return 0
    cur.execute(
        "UPDATE resources SET version = ?, data = ?, modified = ? WHERE kind = ? AND id = ?",
        (version + 1, text, time_text(now), kind, id_),
    )
    _log(cur, now, kind, id_, "replace", actor, version + 1, text)
    return 1


def _check_unique(cur: Cursor, kind: str, id_: str, values: Mapping[str, str]) -> None:
    """:class:`Conflict` when another resource of the kind holds one of the values."""
    for attribute, value in values.items():
        cur.execute(
            "SELECT id FROM unique_values WHERE kind = ? AND attribute = ? AND value = ?",
            (kind, attribute, value),
        )
        row = cur.fetchone()
        if row is not None and row[0] != id_:
            raise Conflict(attribute, value)


def _claim(cur: Cursor, kind: str, id_: str, values: Mapping[str, str]) -> None:
    for attribute, value in values.items():
        cur.execute(
            "INSERT INTO unique_values (kind, attribute, value, id) VALUES (?, ?, ?, ?)",
            (kind, attribute, value, id_),
        )


def _log(
    cur: Cursor,
    at: datetime,
    kind: str,
    id_: str,
    op: Op,
    actor: str,
    version: int,
    text: str | None,
) -> int:
    """Append a change and return its seq."""
    cur.execute(
        "INSERT INTO changes (at, kind, id, op, actor, version, data)"
        " VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING seq",
        (time_text(at), kind, id_, op, actor, version, text),
    )
    return int(cur.fetchone()[0])
