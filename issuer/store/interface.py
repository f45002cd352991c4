"""What the identity store holds and does: records, changes, errors, the Store protocol.

Every backend implements :class:`Store` and imports this module; :mod:`issuer.store`
presents these names with :func:`~issuer.store.open_store`, which picks a backend, so
callers import them from there.
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol

from issuer.errors import IssuerError

Op = Literal["create", "replace", "delete"]


@dataclass(frozen=True)
class Record:
    """A stored resource at one version."""

    kind: str  # "Agent", "User" or "Group"
    id: str  # assigned by the store (a UUID)
    version: int  # 1 on create, +1 on each replace; the SCIM ETag is W/"<version>"
    data: dict[str, Any]  # the resource document, without "id" and "meta"
    created: datetime  # timezone-aware, UTC
    modified: datetime


@dataclass(frozen=True)
class Change:
    """One entry of the change log."""

    seq: int  # strictly increasing over the whole store
    at: datetime
    kind: str
    id: str
    op: Op
    actor: str  # who made the change (the administrator's subject)
    version: int  # the record's version after the change (the last version for delete)
    data: dict[str, Any] | None  # the document after the change; None for delete


@dataclass(frozen=True)
class AuditEntry:
    """One entry of an audit trail, as stored: the record's exact text and its chain links."""

    seq: int  # 1, 2, 3… within its trail
    at: datetime
    record: str  # canonical JSON, exactly the text that was hashed
    prev_hash: str  # the previous entry's hash (64 zeros for the first)
    hash: str  # SHA-256 of prev_hash and record
    # The agent a decision record of the agent trail is of, kept beside the record (not
    # hashed) so that an index finds an agent's decisions; None for every other entry.
    agent: str | None = None


@dataclass(frozen=True)
class BackchannelRecord:
    """A backchannel authentication request (OpenID CIBA) at one version."""

    id_hash: str  # SHA-256 of the auth_req_id: the id itself is never stored
    client_id: str
    user_id: str
    expires_at: int  # seconds since the epoch
    version: int  # 1 when added, +1 on each update
    data: dict[str, Any]


@dataclass(frozen=True)
class OutboxEvent:
    """One event for one webhook endpoint, waiting in the outbox."""

    n: int  # the row's number (0 before it is stored)
    event_id: str  # the CloudEvents id: with target, unique (the same event is kept once)
    target: str  # the endpoint's URL
    event: str  # the event as JSON text: exactly the body delivered
    created: int  # epoch milliseconds when it was added
    attempts: int = 0  # deliveries tried and failed


class StoreError(IssuerError):
    """Base of the store's errors."""


class NotFound(StoreError):
    """No resource of that kind with that id."""


class MissingStore(StoreError):
    """The URL names no store, and the caller opens existing stores only: a SQLite file
    that does not exist, or a database schema without Tessera's tables. Nothing was
    created."""


class Conflict(StoreError):
    """A unique attribute already holds that value on another resource."""

    def __init__(self, attribute: str, value: str) -> None:
        super().__init__(f"{attribute} {value!r} is already taken")
        self.attribute = attribute
        self.value = value


class Unstorable(StoreError, ValueError):
    """A value no backend holds, refused by each alike so that the backends keep the same
    data: text with a NUL character (PostgreSQL's text and JSON cannot hold one), or a
    unique value longer than the store indexes. The caller's input is at fault, not the
    store: a door answers it as invalid input."""


class VersionMismatch(StoreError):
    """The resource changed since the version the caller read (a stale ETag)."""

    def __init__(self, expected: int, actual: int) -> None:
        super().__init__(f"expected version {expected}, the resource is at version {actual}")
        self.expected = expected
        self.actual = actual


class Store(Protocol):
    """What every backend provides. Methods are thread-safe and synchronous."""

    url: str

    def create(
        self, kind: str, data: Mapping[str, Any], *, unique: Mapping[str, str], actor: str
    ) -> Record:
        """Store a new resource with a fresh id at version 1.

        ``unique`` maps attribute names to values that must be unique within ``kind``
        (the caller normalises them, e.g. lower-cases a case-insensitive userName);
        :class:`Conflict` when one is taken, and nothing is stored.
        """
        ...

    def get(self, kind: str, id: str) -> Record:
        """The resource, or :class:`NotFound`."""
        ...

    def find(self, kind: str, attribute: str, value: str) -> Record:
        """The resource whose unique ``attribute`` holds ``value`` (as normalised when it was
        stored), or :class:`NotFound`."""
        ...

    def list(self, kind: str) -> builtins.list[Record]:
        """Every resource of a kind, oldest first."""
        ...

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
        """Replace the document and bump the version (same checks as create).

        :class:`NotFound`, :class:`VersionMismatch` when ``expected_version`` is given
        and differs, :class:`Conflict`; nothing changes on any error.
        """
        ...

    def delete(self, kind: str, id: str, *, expected_version: int | None, actor: str) -> None:
        """Remove the resource (its change log entries stay)."""
        ...

    def put(
        self, kind: str, documents: Mapping[str, Mapping[str, Any] | None], *, actor: str
    ) -> int:
        """Write resources whose ids the caller names, all in one transaction (all or
        none): a document creates the resource or replaces it, None deletes it. A document
        equal to the one stored, and None for a resource not stored, change nothing: no
        change is logged, no version bumped, so writing the same again is free. For kinds
        without unique values; :class:`Unstorable` for an id or document no backend
        holds, and nothing is written. The number of changes made."""
        ...

    def page(self, kind: str, prefix: str, after: str, limit: int) -> builtins.list[Record]:
        """Resources of a kind whose id starts with ``prefix`` and sorts after ``after``
        ("" for the first page), in the order of their ids, at most ``limit``."""
        ...

    def search(
        self, kind: str, text: str, sort: str, descending: bool, limit: int, offset: int
    ) -> tuple[int, builtins.list[Record]]:
        """How many resources of a kind hold ``text`` (case-insensitive) in their id,
        name, owner or purpose ("" holds every one), and ``limit`` of them from
        ``offset``, ordered by ``sort`` (name, owner, status or riskLevel by rank), then
        by id; an index serves each order (:mod:`issuer.store.listing`)."""
        ...

    def get_many(self, kind: str, ids: Sequence[str]) -> dict[str, Record]:
        """The resources of a kind with these ids, by id (ids not stored left out)."""
        ...

    def agent_activity(
        self, agents: Sequence[str], since: datetime
    ) -> dict[str, tuple[datetime, int, int]]:
        """For each of ``agents`` (at most 500) with a decision on the agent trail: the
        time of its newest decision, and its decisions since ``since`` that allowed and
        that denied."""
        ...

    def agent_decisions(self, agent: str, limit: int) -> builtins.list[AuditEntry]:
        """The newest ``limit`` decisions of one agent on the agent trail, newest first."""
        ...

    def last_change(self) -> int:
        """The seq of the newest change, 0 when there is none."""
        ...

    def changes(self, since: int, limit: int = 1000) -> builtins.list[Change]:
        """Changes with seq > since, oldest first, at most ``limit``."""
        ...

    def history(self, kind: str, id: str) -> builtins.list[Change]:
        """Every change of one resource, oldest first, also after it was deleted."""
        ...

    def append_audit(self, trail: str, entries: Sequence[AuditEntry]) -> None:
        """Append chained entries to an audit trail in one transaction (all or none)."""
        ...

    def audit_tail(self, trail: str) -> AuditEntry | None:
        """The newest entry of a trail, or None when it is empty."""
        ...

    def audit(self, trail: str, after: int = 0, limit: int = 10_000) -> builtins.list[AuditEntry]:
        """A trail's entries after seq ``after``, oldest first."""
        ...

    def wait_for_change(self, since: int, timeout: float) -> int:
        """Block until a change newer than ``since`` exists or ``timeout`` passes.

        Returns :meth:`last_change`. SQLite polls its change counter; PostgreSQL waits
        on LISTEN/NOTIFY.
        """
        ...

    def add_backchannel(
        self, record: BackchannelRecord, *, now: int, per_client: int, total: int, keep: int
    ) -> bool:
        """Add a backchannel request unless ``per_client`` requests of its client, or
        ``total`` in all, are pending (not expired at ``now``): False then, and nothing
        is added. Requests expired more than ``keep`` seconds ago are deleted first. The
        count and the insert are one write transaction, so the bounds hold across
        processes."""
        ...

    def backchannel(self, id_hash: str) -> BackchannelRecord | None:
        """The backchannel request with this hash, or None."""
        ...

    def update_backchannel(self, id_hash: str, data: Mapping[str, Any], version: int) -> bool:
        """Replace a request's data if it is still at ``version`` (and bump it); False
        when another update came first or the request is gone."""
        ...

    def backchannel_of_user(self, user_id: str, now: int) -> builtins.list[BackchannelRecord]:
        """The user's requests that have not expired at ``now``, oldest first."""
        ...

    def add_events(
        self, events: Sequence[OutboxEvent], *, cursor: str, position: int, bound: int
    ) -> int:
        """Add events to the outbox (one already there, same id and target, is skipped)
        and move the cursor ``cursor`` to ``position``, in one transaction; while
        ``bound`` events are pending, the events are not added (dropped). How many were
        dropped."""
        ...

    def cursor(self, name: str) -> int | None:
        """Where the follower ``name`` has read up to; None before it first moves."""
        ...

    def move_cursor(self, name: str, position: int) -> None:
        """Set the cursor ``name`` to ``position``."""
        ...

    def claim_events(self, now: int, lease: int, limit: int) -> builtins.list[OutboxEvent]:
        """Claim up to ``limit`` pending events due at ``now`` (epoch ms) for ``lease``
        ms, oldest first: no other process claims them meanwhile (PostgreSQL skips rows
        another transaction is claiming)."""
        ...

    def event_delivered(self, n: int) -> None:
        """Remove a delivered event from the outbox."""
        ...

    def event_failed(self, n: int, due: int | None) -> None:
        """Count a failed attempt; try again at ``due`` (epoch ms), or, None, keep the
        event as a dead letter (never tried again)."""
        ...

    def outbox_counts(self) -> tuple[int, int]:
        """(events pending, dead letters) in the outbox."""
        ...

    def lease(self, name: str) -> Lease | None:
        """Take the exclusive lease ``name`` among every process on this database, or None
        when another holds it. It lasts until released or until the holder dies (its
        connection or file lock goes with it): one replica runs a job, the others wait to
        take over."""
        ...

    def close(self) -> None: ...


class Lease(Protocol):
    """An exclusive lease taken with :meth:`Store.lease`."""

    def release(self) -> None: ...
