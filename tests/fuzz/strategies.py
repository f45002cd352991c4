"""Hypothesis strategies for what the HTTP fuzzers send: JSON of any shape, bodies that are
not JSON, valid bodies with one part made wrong, and the rest of a request."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
KEYS = st.text(max_size=20) | st.sampled_from(
    [
        "subject",
        "action",
        "resource",
        "context",
        "type",
        "id",
        "name",
        "properties",
        "schemas",
        "userName",
        "displayName",
        "members",
        "Operations",
        "op",
        "path",
        "value",
        "filter",
        "evaluations",
        "options",
        "page",
        "agent_id",
        "grant_types",
        "scope",
        "redirect_uris",
    ]
)


def json_values(max_leaves: int = 30) -> st.SearchStrategy[Any]:
    """Any JSON value, of random shape and a depth of a few levels."""
    return st.recursive(
        SCALARS,
        lambda inner: st.lists(inner, max_size=5) | st.dictionaries(KEYS, inner, max_size=5),
        max_leaves=max_leaves,
    )


@st.composite
def nested(draw: st.DrawFn, min_depth: int = 65, max_depth: int = 3_000) -> bytes:
    """A JSON document nested deeper than any door takes (arrays, objects or both)."""
    depth = draw(st.integers(min_depth, max_depth))
    kind = draw(st.sampled_from(["array", "object", "mixed"]))
    opens = {"array": "[" * depth, "object": '{"a":' * depth}
    closes = {"array": "]" * depth, "object": "}" * depth}
    if kind == "mixed":
        return ('{"a":[' * (depth // 2) + "1" + "]}" * (depth // 2)).encode()
    return (opens[kind] + "1" + closes[kind]).encode()


LONE = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)


@st.composite
def with_surrogates(draw: st.DrawFn, value: Any) -> bytes:
    """``value`` as JSON text with a lone surrogate (``\\ud800``) in a key or string."""
    text = st.builds(lambda a, s, b: a + s + b, st.text(max_size=5), LONE, st.text(max_size=5))
    return json.dumps(draw(mutated(value, text, drop=False)), ensure_ascii=True).encode()


def huge_strings(max_size: int) -> st.SearchStrategy[str]:
    """A long string (one character repeated, or a short pattern) within ``max_size``."""
    return st.builds(
        lambda unit, size: (unit * (size // max(len(unit), 1) + 1))[:size],
        st.text(min_size=1, max_size=4),
        st.integers(min_value=1_000, max_value=max_size),
    )


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a JSON value, the root included."""
    found = [prefix]
    if isinstance(value, dict):
        for key, inner in value.items():
            found += _paths(inner, (*prefix, key))
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            found += _paths(inner, (*prefix, index))
    return found


def _replaced(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        return {**value, head: _replaced(value[head], rest, new)}
    copy = list(value)
    copy[head] = _replaced(value[head], rest, new)
    return copy


@st.composite
def mutated(
    draw: st.DrawFn, value: Any, replacement: st.SearchStrategy[Any], drop: bool = True
) -> Any:
    """``value`` with one place replaced by a drawn value, one key dropped (unless not
    ``drop``), or one unknown key added to an object."""
    path = draw(st.sampled_from(_paths(value)))
    how = draw(st.sampled_from(["replace", "drop", "add"] if drop else ["replace", "add"]))
    at: Any = value
    for step in path:
        at = at[step]
    if how == "drop" and path and isinstance(_parent(value, path), dict):
        parent = _parent(value, path)
        return _replaced(value, path[:-1], {k: v for k, v in parent.items() if k != path[-1]})
    if how == "add" and isinstance(at, dict):
        return _replaced(value, path, {**at, draw(KEYS): draw(replacement)})
    return _replaced(value, path, draw(replacement))


def _parent(value: Any, path: tuple[Any, ...]) -> Any:
    for step in path[:-1]:
        value = value[step]
    return value


CONTENT_TYPES = st.sampled_from(
    [
        "application/json",
        "application/scim+json",
        "application/json; charset=utf-8",
        "application/x-www-form-urlencoded",
        "text/plain",
        "multipart/form-data; boundary=fuzz",
        "application/json; charset=latin-1",
        "",
    ]
)

IDS = st.text(min_size=1, max_size=30) | st.sampled_from(["..", "%00", "%2F", " ", "\x00"])
QUERY = st.dictionaries(
    st.sampled_from(
        [
            "filter",
            "count",
            "startIndex",
            "sortBy",
            "sortOrder",
            "attributes",
            "excludedAttributes",
            "agent_id",
            "request",
            "client_id",
            "scope",
        ]
    )
    | st.text(max_size=10),
    st.text(max_size=60) | st.integers().map(str),
    max_size=4,
)

# SCIM filters (RFC 7644 §3.4.2.2): well-formed ones, near misses and noise.
ATTRIBUTES = st.sampled_from(
    [
        "userName",
        "name.givenName",
        "emails.value",
        'emails[type eq "work"].value',
        "meta.created",
        "displayName",
        "members.value",
        "active",
        "id",
        "urn:ietf:params:scim:schemas:core:2.0:User:userName",
        "name",
        "unknown",
        "",
    ]
)
OPERATORS = st.sampled_from(["eq", "ne", "co", "sw", "ew", "gt", "ge", "lt", "le", "pr", "xx"])
VALUES = st.sampled_from(['"x"', "true", "null", "1", "1.5e400", '"2020-01-01T00:00:00Z"', '"'])
FILTERS = st.recursive(
    st.builds(lambda a, o, v: f"{a} {o} {v}", ATTRIBUTES, OPERATORS, VALUES) | st.text(max_size=30),
    lambda inner: (
        st.builds(lambda a, j, b: f"{a} {j} {b}", inner, st.sampled_from(["and", "or"]), inner)
        | inner.map(lambda f: f"not ({f})")
        | inner.map(lambda f: f"({f}")
    ),
    max_leaves=6,
)
