"""Semantics shared by the compiled evaluators and the reference interpreter.

Anything both must do identically lives here once: glob matching, equality across lists
and sets, comparisons, target patterns, limit keys and wording, and how an obligation is
met.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any, Protocol

from pdp.lang import ast
from pdp.lang.errors import LanguageError
from pdp.lang.values import Money, render, type_name


class EvalError(LanguageError):
    """A rule could not be evaluated: a missing attribute, a currency mismatch, …"""


@lru_cache(maxsize=4096)
def glob(pattern: str) -> Callable[[str], re.Match[str] | None]:
    """A glob as a full-match function: ``*`` is any run of characters, ``?`` one."""
    parts = []
    for char in pattern:
        if char == "*":
            parts.append(".*")
        elif char == "?":
            parts.append(".")
        else:
            parts.append(re.escape(char))
    return re.compile("".join(parts), re.DOTALL).fullmatch


def is_glob(text: str) -> bool:
    return "*" in text or "?" in text


def like(value: Any, pattern: Any) -> bool:
    """``s like p``: a glob match; the glob may be read from the request, so both sides
    are checked to be strings."""
    if not isinstance(value, str):
        raise EvalError(f"'like' needs a string, got {value!r}")
    if not isinstance(pattern, str):
        raise EvalError(f"'like' needs a glob (a string) on its right, got {type_name(pattern)}")
    return glob(pattern)(value) is not None


def equal(left: Any, right: Any) -> bool:
    """``==`` in the language: a list equals a set with the same members."""
    if isinstance(left, frozenset) and isinstance(right, tuple):
        return left == frozenset(right)
    if isinstance(left, tuple) and isinstance(right, frozenset):
        return frozenset(left) == right
    return bool(left == right)


_COLLECTIONS = (frozenset, tuple)  # sets and lists at run time


def _collection(op: str, side: str, value: Any) -> None:
    if not isinstance(value, _COLLECTIONS):
        raise EvalError(f"'{op}' needs a list or a set on its {side}, got {type_name(value)}")


def intersects(left: Any, right: Any) -> bool:
    """``A intersects B``: the two lists or sets share at least one member."""
    _collection("intersects", "left", left)
    _collection("intersects", "right", right)
    try:
        members = right if isinstance(right, frozenset) else frozenset(right)
        return not members.isdisjoint(left)
    except TypeError:  # maps have no hash: compare them one by one
        return any(item == other for item in left for other in right)


def subset(left: Any, right: Any) -> bool:
    """``A subset of B``: every member of A is in B (an empty A is a subset of anything)."""
    _collection("subset of", "left", left)
    _collection("subset of", "right", right)
    try:
        members = right if isinstance(right, frozenset) else frozenset(right)
        return members.issuperset(left)
    except TypeError:  # maps have no hash: compare them one by one
        return all(any(item == other for other in right) for item in left)


def _strings(op: str, left: Any, right: Any) -> None:
    for side, value in (("left", left), ("right", right)):
        if not isinstance(value, str):
            raise EvalError(f"'{op}' needs a string on its {side}, got {type_name(value)}")


def startswith(left: Any, right: Any) -> bool:
    """``S startswith P``: the string S begins with the string P."""
    _strings("startswith", left, right)
    return bool(left.startswith(right))


def endswith(left: Any, right: Any) -> bool:
    """``S endswith P``: the string S ends with the string P."""
    _strings("endswith", left, right)
    return bool(left.endswith(right))


def compare(op: str, left: Any, right: Any) -> bool:
    """One comparison with the language's meaning (``==`` as :func:`equal`, ``like`` a glob)."""
    if op == "==":
        return equal(left, right)
    if op == "!=":
        return not equal(left, right)
    if op == "<":
        return bool(left < right)
    if op == "<=":
        return bool(left <= right)
    if op == ">":
        return bool(left > right)
    if op == ">=":
        return bool(left >= right)
    if op == "in":
        return left in right
    if op == "contains":
        return right in left
    if op == "like":
        return like(left, right)
    if op == "intersects":
        return intersects(left, right)
    if op == "subset of":
        return subset(left, right)
    if op == "startswith":
        return startswith(left, right)
    if op == "endswith":
        return endswith(left, right)
    raise EvalError(f"unknown operator {op}")


def pattern_strings(
    pattern: ast.Pattern, lets: Mapping[tuple[str, str], ast.Expr], package: str
) -> tuple[str, ...]:
    """The strings a target pattern lists (one for a plain string or glob)."""
    expr = pattern.expr
    if isinstance(expr, ast.Name):
        expr = lets[(package, expr.name)]
    if isinstance(expr, ast.Literal_):
        return (str(expr.value),)
    if isinstance(expr, ast.ListExpr):
        out = []
        for item in expr.items:
            if isinstance(item, ast.Name):
                item = lets[(package, item.name)]
            if not isinstance(item, ast.Literal_) or not isinstance(item.value, str):
                raise EvalError("a target list holds strings only")
            out.append(item.value)
        return tuple(out)
    raise EvalError("a target pattern is a string, a glob, a list or a let of strings")


def pattern_globs(
    pattern: ast.Pattern, lets: Mapping[tuple[str, str], ast.Expr], package: str
) -> tuple[tuple[str, bool], ...]:
    """Each alternative of a pattern and whether it is a glob (``like`` forces one)."""
    strings = pattern_strings(pattern, lets, package)
    if pattern.form == "like":
        return tuple((s, True) for s in strings)
    return tuple((s, is_glob(s)) for s in strings)


def matches_pattern(alternatives: tuple[tuple[str, bool], ...], value: str) -> bool:
    for text, is_pattern in alternatives:
        if is_pattern:
            if glob(text)(value) is not None:
                return True
        elif text == value:
            return True
    return False


ACR_LADDER = (
    "urn:tessera:acr:apikey",
    "urn:tessera:acr:key",
    "urn:tessera:acr:key+mtls",
    "urn:tessera:acr:key+mtls+human",
)
"""The issuer's acr levels, weakest first (``issuer.strength.LADDER``, which this package
may not import; a test holds the two equal)."""

_RANK = {level: rank for rank, level in enumerate(ACR_LADDER)}


def obligation_met(obligation: ast.Obligation, context: dict[str, Any]) -> bool:
    """A consent is met when the context lists it; a step-up when ``context.acr`` is the
    level asked or above it on :data:`ACR_LADDER`, or, for a value off the ladder (such
    as ``"mfa"``), when it equals it."""
    if obligation.kind == "consent":
        return obligation.value in context.get("consents", ())
    acr = context.get("acr")
    if acr == obligation.value:
        return True
    needed = _RANK.get(obligation.value)
    reached = _RANK.get(acr) if isinstance(acr, str) else None
    return needed is not None and reached is not None and reached >= needed


def limit_key_prefix(rule_id: str, index: int, scope: str) -> str:
    """The part of a counter key fixed by the rule: which limit, counted per what.

    A key is ``<rule id>#<limit index>|<scope>|<tail>``; the rule id is a dotted name and
    the scope a fixed word, so the prefix is unambiguous. The tail (:func:`limit_subject`)
    is what the request decides:

    ==================  ====================================================
    scope               tail
    ==================  ====================================================
    ``agent``           ``<agent>``
    ``user``            ``<user>``
    ``agent+user``      ``<agent>+<user>``
    ``agent+resource``  ``<agent>|<type>/<id>``
    ``owner``           ``<owner>``
    ``tool``            ``<tool name>`` for a tool, ``<type>/<id>`` otherwise
    ``global``          ``*``
    ==================  ====================================================

    The first three are as they were before the others existed, so the counters a running
    deployment keeps stay valid across an upgrade. Every id in the other tails is escaped
    (:func:`key_part`), so no id can pose as a separator."""
    return f"{rule_id}#{index}|{scope}|"


class LimitFacts(Protocol):
    """What a limit's scope reads of a request (a ``pdp.model.Request``)."""

    @property
    def agent_id(self) -> str | None: ...

    @property
    def user_id(self) -> str | None: ...

    @property
    def agent(self) -> Mapping[str, Any] | None: ...

    @property
    def resource(self) -> Mapping[str, Any]: ...


def limit_subject(scope: str, request: LimitFacts) -> str:
    """The tail of a limit's counter key: whose use it counts, or which thing's. It is
    also the charge's subject (shared stores keep one subject's keys together). For a
    subject that is no agent (``agent_id`` None), only a person's limit per user, and the
    limits per tool and global, can count; any other fails."""
    if scope not in _PEOPLE_SCOPES:
        return _shared_tail(scope, request)
    agent_id, user_id = request.agent_id, request.user_id
    if agent_id is not None:
        if scope == "agent":
            return agent_id
        if user_id is None:
            raise EvalError(f"limit per {scope} needs a user, and the agent acts alone")
        return user_id if scope == "user" else f"{agent_id}+{user_id}"
    if scope == "user" and user_id is not None:
        return user_id
    needs = "a user" if scope == "user" else "an agent"
    raise EvalError(f"limit per {scope} needs {needs}, and the subject is none")


_PEOPLE_SCOPES = frozenset({"agent", "user", "agent+user"})  # keys as first written
GLOBAL_TAIL = "*"  # the one key of a global limit
_ESCAPES = (("%", "%25"), ("|", "%7C"), ("/", "%2F"), ("\x00", "%00"))


def key_part(text: str) -> str:
    """One id in a key of the newer scopes: ``%`` as ``%25``, ``|`` as ``%7C``, ``/`` as
    ``%2F`` and NUL as ``%00`` (PostgreSQL's text refuses it)."""
    if "%" in text or "|" in text or "/" in text or "\x00" in text:
        for char, escaped in _ESCAPES:
            text = text.replace(char, escaped)
    return text


def _resource_part(resource: Mapping[str, Any]) -> str:
    return f"{key_part(str(resource.get('type', '')))}/{key_part(str(resource.get('id', '')))}"


def _shared_tail(scope: str, request: LimitFacts) -> str:
    """The tail of a key per agent+resource, per owner, per tool, or global."""
    if scope == ast.GLOBAL_SCOPE:
        return GLOBAL_TAIL
    resource = request.resource
    if scope == "tool":
        if resource.get("type") == ast.TOOL_TYPE:
            return key_part(str(resource.get("id", "")))
        return _resource_part(resource)
    agent_id = request.agent_id
    if agent_id is None:
        raise EvalError(f"limit per {scope} needs an agent, and the subject is none")
    if scope == "owner":
        owner = (request.agent or {}).get("owner")
        if not isinstance(owner, str) or not owner:
            raise EvalError("limit per owner needs the agent's owner, and the agent has none")
        return key_part(owner)
    if scope == "agent+resource":
        return f"{key_part(agent_id)}|{_resource_part(resource)}"
    raise EvalError(f"unknown limit scope '{scope}'")


def limit_key(rule_id: str, index: int, limit: ast.Limit, request: LimitFacts) -> str:
    """The counter key of one limit of one rule for one request."""
    return limit_key_prefix(rule_id, index, limit.scope) + limit_subject(limit.scope, request)


def limit_amount(limit: ast.Limit, value: Any) -> Any:
    """The amount one call adds to a sum limit, checked against the cap's kind."""
    cap = limit.cap.value if isinstance(limit.cap, ast.Literal_) else None
    if isinstance(cap, Money):
        if not isinstance(value, Money):
            raise EvalError(f"limit sums money, got {value!r}")
        if value.currency != cap.currency:
            raise EvalError(f"limit is in {cap.currency}, the amount is {value}")
        if value.amount < 0:
            raise EvalError(f"a negative amount ({value}) cannot count against a limit")
        return value.amount
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise EvalError(f"limit sums numbers, got {value!r}")
    if value < 0:
        raise EvalError(f"a negative amount ({value}) cannot count against a limit")
    return value


def limit_cap(limit: ast.Limit) -> Any:
    cap = limit.cap.value if isinstance(limit.cap, ast.Literal_) else None
    return cap.amount if isinstance(cap, Money) else cap


def limit_window(limit: ast.Limit) -> float:
    window = limit.window.value if isinstance(limit.window, ast.Literal_) else None
    if window is None:
        raise EvalError("a limit window is a duration such as 24h")
    return float(window.seconds)


def describe_limit(limit: ast.Limit) -> str:
    """A limit as traces and errors show it, e.g. ``10 calls per 1h per agent``."""
    window = render(limit.window.value) if isinstance(limit.window, ast.Literal_) else "?"
    cap = render(limit.cap.value) if isinstance(limit.cap, ast.Literal_) else "?"
    if limit.kind == "count":
        return f"{cap} calls per {window} {ast.scope_text(limit.scope)}"
    return f"sum <= {cap} per {window} {ast.scope_text(limit.scope)}"
