"""The identity store: agents, users and groups, with an append-only change log.

One interface, two backends: SQLite (the default, a WAL file under ``./var/``) and
PostgreSQL (psycopg 3, chosen by a ``postgresql://`` URL). :func:`open_store` picks one
from a URL and runs the schema migrations before it returns.

A resource is stored as the JSON document the SCIM service validated, without ``meta``
and ``id`` (the store owns those). Every create, replace and delete appends a
:class:`Change` carrying the document after the change; the change log is never
trimmed, so a deleted agent keeps its trail, and it is also the change feed the PDP's
directory snapshot follows.
"""

from __future__ import annotations

from collections.abc import Sequence

# The backends import the interface from its own module, not from this package, so the
# package can import them without a circle.
from issuer.store.interface import (
    AuditEntry,
    BackchannelRecord,
    Change,
    Conflict,
    Lease,
    MissingStore,
    NotFound,
    Op,
    OutboxEvent,
    Record,
    Store,
    StoreError,
    Unstorable,
    VersionMismatch,
)

DEFAULT_URL = "sqlite:///var/tessera.db"


def open_store(url: str = DEFAULT_URL, *, create: bool = True) -> Store:
    """Open (and migrate) the store a URL names.

    ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db``, ``sqlite:///:memory:``,
    or ``postgresql://host:port/database`` (also ``postgres://``).

    With ``create`` (what ``tessera serve`` does) a new store is made where there is
    none: the SQLite file and its folder, or the tables in the PostgreSQL schema. Without
    it only an existing store opens, and one that is not there is a
    :class:`MissingStore` with nothing created: a command that reads or administers a
    store must not answer from a new, empty one because its URL was mistyped.
    """
    if url.startswith("sqlite:"):
        from issuer.store.sqlite import SQLiteStore

        return SQLiteStore(url, create=create)
    if url.startswith(("postgresql://", "postgres://")):
        from issuer.store.postgres import PostgresStore

        return PostgresStore(url, create=create)
    raise StoreError(
        f"unknown store URL {url!r}: use sqlite:///path/to/file.db or postgresql://host/db"
    )


__all__: Sequence[str] = (
    "DEFAULT_URL",
    "AuditEntry",
    "BackchannelRecord",
    "Change",
    "Conflict",
    "Lease",
    "MissingStore",
    "NotFound",
    "Op",
    "OutboxEvent",
    "Record",
    "Store",
    "StoreError",
    "Unstorable",
    "VersionMismatch",
    "open_store",
)
