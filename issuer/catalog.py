"""The resource catalog: what Tessera knows about the resources agents act on.

An entry is a resource's type, its id and its properties (an owner, a department, a
classification…). When a decision request names a resource the catalog holds, a policy
reads the entry's properties as ``resource.ATTR`` (docs/language.md). Entries come from
two places: ``*.resources.json`` files of the policy bundle, which travel with it
(:mod:`pdp.catalog` reads them), and the HTTP API (:mod:`issuer.catalog_api`), whose
entries live in the identity store under the kind :data:`CATALOG`, so that every replica
and worker follows them through the store's change feed and they survive restarts.

This module holds what both share: the entry, its bounds, how a JSON value becomes one
(:func:`entry_from_json`, which names the field at fault) and, in :class:`CatalogStore`,
the API's entries in the store. It knows nothing of policies: whether a property has the
type the policy schema declares is the decision plane's to say, through a
:data:`SchemaCheck` the server hands the API.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from issuer.errors import IssuerError
from issuer.store import NotFound, Record, Store

CATALOG = "CatalogEntry"
"""The store kind of an entry made over the API: ``{"type", "id", "properties"}``, stored
under the id ``TYPE/ID`` (:func:`store_id`)."""

TYPE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # a resource type as a policy names it
MAX_TYPE = 128  # characters of a resource type
MAX_ID_BYTES = 1_024  # UTF-8 bytes of an entry's id (what PostgreSQL indexes, and some)
MAX_PROPERTIES = 64  # properties of one entry (as a request's attribute map)
MAX_NAME_BYTES = 256  # UTF-8 bytes of a property's name
MAX_VALUE_BYTES = 16 << 10  # bytes of one property's value, as compact JSON in UTF-8
MAX_ENTRY_BYTES = 64 << 10  # bytes of an entry's properties together, likewise
MAX_DEPTH = 32  # lists and objects inside one another in a property's value
MAX_BATCH = 1_000  # entries one API batch writes or deletes
MAX_FILE_ENTRIES = 10_000  # entries of one bundle file
RESERVED = ("type", "id", "name")  # the entry's own, and a tool's name: never a property

SchemaCheck = Callable[["Entry"], str | None]
"""Why an entry does not fit the policy schema the server decides with (a message naming
the property), or None when it does."""


class CatalogError(IssuerError, ValueError):
    """An entry, or a request about one, refused: the message names the field at fault;
    ``status`` is the HTTP status that fits."""

    status = 400


class EntryTooLarge(CatalogError):
    """An entry over one of the bounds."""

    status = 413


@dataclass(frozen=True)
class Entry:
    """One resource the catalog describes; ``properties`` are JSON values (no null)."""

    type: str
    id: str
    properties: Mapping[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "id": self.id, "properties": dict(self.properties)}


def store_id(type: str, id: str) -> str:
    """The id an entry is stored under: a type never holds a ``/``, so it is unambiguous."""
    return f"{type}/{id}"


def check_type(type: Any, where: str = "type") -> str:
    """A resource type as policies name it, or :class:`CatalogError`."""
    if not isinstance(type, str) or not TYPE.fullmatch(type) or len(type) > MAX_TYPE:
        raise CatalogError(
            f"{where}: a resource type as policies name it (letters, digits and _, not "
            f"starting with a digit, at most {MAX_TYPE} characters), such as record"
        )
    return type


def check_id(id: Any, where: str = "id") -> str:
    """An entry's id: a non-empty string of at most :data:`MAX_ID_BYTES` bytes, with no
    NUL character (no store holds one)."""
    if not isinstance(id, str) or not id:
        raise CatalogError(f"{where}: required, a non-empty string")
    if "\x00" in id:
        raise CatalogError(f"{where}: text with a NUL character (U+0000) cannot be stored")
    try:
        size = len(id.encode("utf-8"))
    except UnicodeEncodeError:
        raise CatalogError(f"{where}: not UTF-8 text (a lone surrogate)") from None
    if size > MAX_ID_BYTES:
        raise EntryTooLarge(f"{where}: {size:,} bytes, over the {MAX_ID_BYTES:,} an id may have")
    return id


def check_properties(raw: Any, where: str = "properties") -> dict[str, Any]:
    """An entry's properties: an object of at most :data:`MAX_PROPERTIES` JSON values, none
    null, none reserved, each and all within their bounds."""
    if not isinstance(raw, Mapping):
        raise CatalogError(f"{where}: expected an object of property values")
    if len(raw) > MAX_PROPERTIES:
        raise EntryTooLarge(
            f"{where}: {len(raw)} properties, over the {MAX_PROPERTIES} an entry may have"
        )
    total = 0
    for name, value in raw.items():
        path = f"{where}.{name}"
        if not isinstance(name, str) or not name or name in RESERVED:
            raise CatalogError(
                f"{path}: a property is named by a non-empty string, not type, id or name"
            )
        named = len(name.encode("utf-8", "surrogatepass"))
        if named > MAX_NAME_BYTES:
            raise EntryTooLarge(f"{path}: a name longer than {MAX_NAME_BYTES} bytes")
        _check_value(value, path)
        size = len(_compact(value).encode("utf-8", "surrogatepass"))
        if size > MAX_VALUE_BYTES:
            raise EntryTooLarge(
                f"{path}: {size:,} bytes, over the {MAX_VALUE_BYTES:,} a property's value may have"
            )
        total += size + named
    if total > MAX_ENTRY_BYTES:
        raise EntryTooLarge(
            f"{where}: {total:,} bytes, over the {MAX_ENTRY_BYTES:,} an entry's properties may have"
        )
    return dict(raw)


def _check_value(value: Any, where: str) -> None:
    """A JSON value a policy can read: no null, no number that is not finite, nested at
    most :data:`MAX_DEPTH` levels (walked without recursion)."""
    pending = [(value, where, 0)]
    while pending:
        item, path, depth = pending.pop()
        if item is None:
            raise CatalogError(f"{path}: null is not a value; leave the property out instead")
        if isinstance(item, float) and not math.isfinite(item):
            raise CatalogError(f"{path}: a number must be finite")
        if isinstance(item, list | dict):
            if depth >= MAX_DEPTH:
                raise CatalogError(f"{path}: nested deeper than {MAX_DEPTH} levels")
            if isinstance(item, dict):
                pending.extend((v, f"{path}.{k}", depth + 1) for k, v in item.items())
            else:
                pending.extend((v, f"{path}[{i}]", depth + 1) for i, v in enumerate(item))
        elif not isinstance(item, str | int | float | bool):
            raise CatalogError(f"{path}: not a JSON value")


def _compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def entry_from_json(raw: Any, where: str = "") -> Entry:
    """An entry from its JSON form ``{"type", "id", "properties"}`` (properties may be left
    out); :class:`CatalogError` naming the field, prefixed by ``where``."""
    if not isinstance(raw, Mapping):
        prefix = f"{where.rstrip('.')}: " if where else ""
        raise CatalogError(f"{prefix}expected an object with type, id and properties")
    unknown = sorted(set(raw) - {"type", "id", "properties"})
    if unknown:
        raise CatalogError(f"{where}{unknown[0]}: unknown; an entry has type, id and properties")
    return Entry(
        check_type(raw.get("type"), f"{where}type"),
        check_id(raw.get("id"), f"{where}id"),
        check_properties(raw.get("properties", {}), f"{where}properties"),
    )


def entry_of(document: Mapping[str, Any]) -> Entry:
    """The entry a stored document holds (checked when it was written)."""
    return Entry(str(document["type"]), str(document["id"]), document.get("properties") or {})


class CatalogStore:
    """The API's entries in the identity store: read, written and deleted by (type, id),
    listed a page at a time. Every write is one transaction, logged on the change feed."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def get(self, type: str, id: str) -> Entry | None:
        try:
            return entry_of(self.store.get(CATALOG, store_id(type, id)).data)
        except NotFound:
            return None

    def write(self, put: Sequence[Entry], delete: Sequence[tuple[str, str]], actor: str) -> int:
        """Put the entries and delete those named, all or none; the changes made (an entry
        written as it was changes nothing). :class:`CatalogError` when one (type, id) is
        named twice."""
        documents: dict[str, dict[str, Any] | None] = {}
        for entry in put:
            documents[store_id(entry.type, entry.id)] = entry.to_json()
        for type, id in delete:
            documents[store_id(type, id)] = None
        if len(documents) < len(put) + len(delete):
            raise CatalogError("a batch names the same entry twice")
        return self.store.put(CATALOG, documents, actor=actor)

    def page(self, type: str, after: str, limit: int) -> list[Entry]:
        """The entries of a type whose id sorts after ``after``, in that order."""
        prefix = store_id(type, "")
        records: list[Record] = self.store.page(CATALOG, prefix, store_id(type, after), limit)
        return [entry_of(record.data) for record in records]
