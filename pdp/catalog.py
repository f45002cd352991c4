"""The resource catalog as the decision point reads it: data about resources for policies.

When a request names a resource (type, id) the catalog holds, the entry's properties fill
every ``resource.ATTR`` the request does not send; what the request sends wins. Entries
come from two places (docs/language.md, "Resource attributes from the catalog"):

- the bundle: ``*.resources.json`` files beside the ``.pol`` files, each a JSON array of
  ``{"type", "id", "properties"}``. They are read and typed by the schema's
  ``resource TYPE { … }`` when the bundle loads (:func:`read_catalog`): a property the
  schema does not declare for the type, or of another type, refuses the bundle with the
  file, the entry and the property named, and the previous bundle keeps serving. They
  travel with the bundle, so every replica deciding with a bundle version has its
  entries, and an entry taken out of the files is gone with the next version;
- the store: entries written over the HTTP API (:mod:`issuer.catalog_api`), followed by
  the directory's change feed into a :class:`StoredEntries` snapshot, so an entry written
  on one replica reaches every replica within the feed's latency. A stored entry takes
  the place of the bundle's entry of the same (type, id) whole: the API is where live
  data changes; deleting it brings the bundle's back.

:class:`Resources` is one decision point's view of both, made again whenever the bundle
or the directory changes (so the decision cache is emptied with it). A request whose
resource type has no entry costs two dictionary membership tests; a stored entry is typed by the
bundle's schema on first use, and one that does not fit it (the schema changed since it
was written) refuses the request: fail closed, with the reason.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from issuer.catalog import (
    MAX_FILE_ENTRIES,
    CatalogError,
    Entry,
    SchemaCheck,
    entry_from_json,
    entry_of,
)
from issuer.store import Change, Record
from pdp.engine import Bundle
from pdp.errors import PdpError
from pdp.lang.errors import Diagnostic, PolicyError, Sources, Span
from pdp.lang.schema import SchemaModel
from pdp.model import Request, RequestError
from pdp.request import typed_resource

RESOURCES_SUFFIX = ".resources.json"

Catalogued = dict[str, dict[str, dict[str, Any]]]
"""Typed resources (their ``type``, ``id`` and attributes) by type, then id."""


# ---------------------------------------------------------------- typing entries


def typed_entry(entry: Entry, schema: SchemaModel) -> dict[str, Any]:
    """The entry as a request's typed resource, every property declared for its type by
    the schema and of the declared type; :class:`RequestError` naming the one that is not."""
    declared = schema.resources.get(entry.type, {})
    for name in entry.properties:
        if name not in declared:
            raise RequestError(
                f"resource.{name}: the schema declares no {name} for {entry.type}; add it "
                f"to the schema's resource {entry.type} {{ … }}"
            )
    return typed_resource(entry.type, entry.id, entry.properties, schema)


def schema_check(schema: Callable[[], SchemaModel]) -> SchemaCheck:
    """The check the catalog API makes of each entry it is sent, against the schema the
    server decides with now (``schema`` tells it)."""

    def check(entry: Entry) -> str | None:
        try:
            typed_entry(entry, schema())
        except RequestError as exc:
            return str(exc)
        return None

    return check


# ---------------------------------------------------------------- bundle files


class _Broken(PdpError):
    """A resources file that is not a JSON array of entries, at an offset of its text."""

    def __init__(self, message: str, at: int) -> None:
        super().__init__(message)
        self.at = at


def read_catalog(files: Mapping[str, str], schema: SchemaModel, sources: Sources) -> Catalogued:
    """The typed entries of a bundle's resources files ({path: text}); a
    :class:`PolicyError` with every file and entry at fault (each quoted by ``sources``)."""
    catalog: Catalogued = {}
    where: dict[tuple[str, str], Span] = {}
    errors: list[Diagnostic] = []
    for path in sorted(files):
        text = files[path]
        sources.add(path, text)
        try:
            items = _array_items(text)
        except _Broken as exc:
            errors.append(sources.diagnostic("error", str(exc), _span(path, text, exc.at)))
            continue
        for number, (at, raw) in enumerate(items, start=1):
            span = _span(path, text, at)
            problem = _add(catalog, where, raw, schema, span)
            if problem is not None:
                errors.append(sources.diagnostic("error", f"entry {number}: {problem}", span))
    if errors:
        raise PolicyError(errors)
    return catalog


def _add(
    catalog: Catalogued,
    where: dict[tuple[str, str], Span],
    raw: Any,
    schema: SchemaModel,
    span: Span,
) -> str | None:
    """Type one entry into ``catalog``; why it cannot be, or None."""
    try:
        entry = entry_from_json(raw)
    except CatalogError as exc:
        return str(exc)
    named = f"{entry.type} {entry.id!r}"
    try:
        typed = typed_entry(entry, schema)
    except RequestError as exc:
        return f"{named}: {exc}"
    first = where.setdefault((entry.type, entry.id), span)
    if first is not span:
        return f"{named} is described twice; first at {first}"
    catalog.setdefault(entry.type, {})[entry.id] = typed
    return None


_SPACE = re.compile(r"[ \t\n\r]*")


def _array_items(text: str) -> list[tuple[int, Any]]:
    """Each item of the JSON array that is ``text``, with the offset it starts at."""
    decoder = json.JSONDecoder(parse_constant=_no_constant)
    at = _skip(text, 0)
    if not text.startswith("[", at):
        raise _Broken('a resources file is a JSON array of {"type", "id", "properties"}', at)
    items: list[tuple[int, Any]] = []
    at = _skip(text, at + 1)
    closed = text.startswith("]", at)
    while not closed:
        try:
            value, end = decoder.raw_decode(text, at)
        except json.JSONDecodeError as exc:
            raise _Broken(f"not JSON: {exc.msg}", exc.pos) from None
        except (RecursionError, ValueError) as exc:
            raise _Broken(f"not JSON: {exc}", at) from None
        items.append((at, value))
        if len(items) > MAX_FILE_ENTRIES:
            raise _Broken(f"over the {MAX_FILE_ENTRIES:,} entries a resources file may hold", at)
        at = _skip(text, end)
        closed = text.startswith("]", at)
        if not closed and not text.startswith(",", at):
            raise _Broken("expected , or ] after an entry", at)
        at = at if closed else _skip(text, at + 1)
    if _skip(text, at + 1) != len(text):
        raise _Broken("text after the array", _skip(text, at + 1))
    return items


def _skip(text: str, at: int) -> int:
    return _SPACE.match(text, at).end()  # type: ignore[union-attr]  # matches anything


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def _span(path: str, text: str, at: int) -> Span:
    line = text.count("\n", 0, at) + 1
    column = at - (text.rfind("\n", 0, at) + 1) + 1
    return Span(path, line, column, line, column + 1)


# ---------------------------------------------------------------- the store's entries


class StoredEntries:
    """The API's entries as the store's change feed brings them: their properties (JSON
    values) by type, then id. The directory's follower writes it (one writer); any thread
    reads it."""

    def __init__(self) -> None:
        self.by_type: dict[str, dict[str, Mapping[str, Any]]] = {}

    def load(self, records: Iterable[Record]) -> None:
        """Hold exactly the stored entries ``records`` are."""
        by_type: dict[str, dict[str, Mapping[str, Any]]] = {}
        for record in records:
            entry = entry_of(record.data)
            by_type.setdefault(entry.type, {})[entry.id] = entry.properties
        self.by_type = by_type

    def apply(self, change: Change) -> None:
        """Apply one change of the catalog's kind."""
        if change.data is None:
            type, _, id = change.id.partition("/")  # a type holds no "/"
            entries = self.by_type.get(type)
            if entries is not None:
                entries.pop(id, None)
                if not entries:  # a type without entries costs requests nothing
                    del self.by_type[type]
            return
        entry = entry_of(change.data)
        self.by_type.setdefault(entry.type, {})[entry.id] = entry.properties


class Following(Protocol):
    """What follows the store's entries for a decision point: the directory."""

    catalog: StoredEntries


NOTHING_STORED = StoredEntries()


class Resources:
    """The catalog as one decision point reads it now: the store's entries over the
    bundle's, typed by the bundle's schema (see the module's text)."""

    def __init__(self, bundle: Bundle, directory: Following | None) -> None:
        self._bundled: Mapping[str, Mapping[str, dict[str, Any]]] = bundle.catalog
        self._stored = directory.catalog if directory is not None else NOTHING_STORED
        self._schema: SchemaModel = bundle.schema
        # typed stored entries, each with the properties it was typed from
        self._typed: dict[tuple[str, str], tuple[Mapping[str, Any], dict[str, Any] | str]] = {}

    def resource(self, asked: dict[str, Any]) -> dict[str, Any] | str:
        """A request's resource with the catalog's attributes it does not send (``asked``
        itself when the catalog has no entry), or why the request is refused."""
        rtype = asked["type"]
        if rtype in self._stored.by_type or rtype in self._bundled:
            return self._described(rtype, asked)
        return asked  # the hot path of a type without entries (a tool call)

    def _described(self, rtype: str, asked: dict[str, Any]) -> dict[str, Any] | str:
        raw = self._stored.by_type.get(rtype, {}).get(asked["id"])
        if raw is not None:
            typed = self._typed_stored(rtype, asked["id"], raw)
            return typed if isinstance(typed, str) else {**typed, **asked}
        found = self._bundled.get(rtype, {}).get(asked["id"])
        return asked if found is None else {**found, **asked}

    def request(self, request: Request) -> Request | str:
        """The request with its resource's catalog attributes, or why it is refused."""
        resource = self.resource(request.resource)
        if isinstance(resource, str):
            return resource
        if resource is request.resource:
            return request
        return Request(
            request.agent,
            request.user,
            request.delegation,
            request.action,
            resource,
            request.context,
            request.size,
            None if request.agent is not None else request.subject,  # a person's, say
            request.time,
        )

    def ids(self, rtype: str) -> list[str]:
        """The id of every entry of a type, stored or bundled, sorted."""
        stored = self._stored.by_type.get(rtype, {}).copy()  # copied at once: fed by a thread
        return sorted({*stored, *self._bundled.get(rtype, {})})

    def _typed_stored(self, rtype: str, rid: str, raw: Mapping[str, Any]) -> dict[str, Any] | str:
        memo = self._typed.get((rtype, rid))
        if memo is not None and memo[0] is raw:
            return memo[1]
        typed: dict[str, Any] | str
        try:
            typed = typed_resource(rtype, rid, raw, self._schema)
        except RequestError as exc:
            typed = f"the catalog's entry for {rtype} {rid!r} does not fit the policy schema: {exc}"
        self._typed[(rtype, rid)] = (raw, typed)
        return typed


def catalogued(bundle: Bundle, request: Request) -> Request:
    """The request with its resource's attributes from the bundle's catalog (policy
    tests, which decide with the bundle alone)."""
    filled = Resources(bundle, None).request(request)
    assert not isinstance(filled, str)  # bundled entries were typed when it loaded
    return filled
