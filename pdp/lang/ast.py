"""The syntax tree of a `.pol` file: frozen dataclasses, each carrying its source span.

The parser builds these, the checker types them, the formatter prints them back, and the
compiler and the interpreter both evaluate them. Nothing here knows about Lark.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from pdp.lang.errors import NO_SPAN, Span
from pdp.lang.values import Duration, quote

# The roots an expression path can start from. ``action`` and ``now`` (the decision's
# time) are values of their own, with no attributes.
ROOTS = (
    "agent",
    "user",
    "delegation",
    "resource",
    "tool",
    "context",
    "action",
    "subject",
    "now",
)

CompareOp = Literal[
    "==",
    "!=",
    "<",
    "<=",
    ">",
    ">=",
    "in",
    "contains",
    "like",
    "intersects",
    "subset of",
    "startswith",
    "endswith",
]


# ---------------------------------------------------------------- expressions


@dataclass(frozen=True, slots=True)
class Literal_:
    """A constant: string, number, bool, risk, money, duration, time, date or ip."""

    value: Any
    span: Span = field(default=NO_SPAN, compare=False)


@dataclass(frozen=True, slots=True)
class ListExpr:
    items: tuple[Expr, ...]
    span: Span = field(default=NO_SPAN, compare=False)


@dataclass(frozen=True, slots=True)
class MapExpr:
    """``{ team: "ops", "cost-center": "42" }``: a map of strings to values (test data)."""

    entries: tuple[tuple[str, Expr], ...]
    span: Span = field(default=NO_SPAN, compare=False)


@dataclass(frozen=True, slots=True)
class Path:
    """An attribute of the request: ``agent.risk``, ``agent.labels["team"]``, ``action``."""

    root: str
    parts: tuple[str, ...]
    span: Span = field(default=NO_SPAN, compare=False)

    def dotted(self) -> str:
        return ".".join((self.root, *self.parts))


@dataclass(frozen=True, slots=True)
class Name:
    """A reference to a ``let``."""

    name: str
    span: Span = field(default=NO_SPAN, compare=False)


@dataclass(frozen=True, slots=True)
class Flag:
    """``delegated`` (the agent acts for a user) or ``autonomous`` (it acts alone); both
    are false when the subject is no agent."""

    kind: Literal["delegated", "autonomous"]
    span: Span = field(default=NO_SPAN, compare=False)


@dataclass(frozen=True, slots=True)
class Not:
    operand: Expr
    span: Span = field(default=NO_SPAN, compare=False)


@dataclass(frozen=True, slots=True)
class BoolOp:
    """``a and b and c`` or ``a or b``: n-ary, evaluated left to right, short-circuit."""

    op: Literal["and", "or"]
    operands: tuple[Expr, ...]
    span: Span = field(default=NO_SPAN, compare=False)


@dataclass(frozen=True, slots=True)
class Compare:
    op: CompareOp
    left: Expr
    right: Expr
    span: Span = field(default=NO_SPAN, compare=False)


@dataclass(frozen=True, slots=True)
class Has:
    """``agent has owner``: true when the attribute is present; never an error."""

    base: Expr
    name: str
    span: Span = field(default=NO_SPAN, compare=False)


@dataclass(frozen=True, slots=True)
class Call:
    """A built-in function applied to its arguments: ``hour(now, "Europe/Berlin")``,
    ``size(agent.scopes)``. ``ip("…")``, ``time("…")`` and ``date("…")`` of a string are
    literals, not calls."""

    name: str
    args: tuple[Expr, ...]
    span: Span = field(default=NO_SPAN, compare=False)


Expr = Literal_ | ListExpr | MapExpr | Path | Name | Flag | Not | BoolOp | Compare | Has | Call


# ---------------------------------------------------------------- rules


@dataclass(frozen=True, slots=True)
class Pattern:
    """What a target matches: ``"x"`` (exact or, with * or ?, a glob), ``like "g*"``,
    ``in LIST_OR_LET``, a bare list or a bare let name."""

    form: Literal["string", "like", "in", "list", "name"]
    expr: Expr
    span: Span = field(default=NO_SPAN, compare=False)


@dataclass(frozen=True, slots=True)
class Target:
    """``call tool PATTERN`` or ``action PATTERN [on TYPE [PATTERN]]``."""

    form: Literal["call", "action"]
    action: Pattern | None
    resource_type: str | None
    resource: Pattern | None
    span: Span = field(default=NO_SPAN, compare=False)


CALL_ACTION = "tool.call"
TOOL_TYPE = "tool"

Scope = Literal["agent", "user", "agent+user", "agent+resource", "owner", "tool", "global"]
# What a limit counts per: written `per NAME` (or `per NAME+NAME`), except `global`.
PER_SCOPES: tuple[Scope, ...] = ("agent", "user", "agent+user", "agent+resource", "owner", "tool")
GLOBAL_SCOPE: Scope = "global"


def scope_text(scope: str) -> str:
    """A limit's scope as written: ``per agent``, ``per agent+resource``, ``global``."""
    return scope if scope == GLOBAL_SCOPE else f"per {scope}"


@dataclass(frozen=True, slots=True)
class Limit:
    """``limit sum(EXPR) <= CAP per WINDOW per SCOPE`` or ``limit N calls per WINDOW``
    (``global`` in place of ``per SCOPE``: one count for every request)."""

    kind: Literal["sum", "count"]
    amount: Expr | None
    cap: Expr
    window: Expr
    scope: Scope
    span: Span = field(default=NO_SPAN, compare=False)


@dataclass(frozen=True, slots=True)
class Obligation:
    """What a PEP must obtain before the permit applies: a consent or a step-up."""

    kind: Literal["consent", "step_up"]
    value: str
    span: Span = field(default=NO_SPAN, compare=False)

    def __str__(self) -> str:
        return f"{self.kind}({quote(self.value)})"


@dataclass(frozen=True, slots=True)
class Require:
    obligation: Obligation
    condition: Expr | None
    span: Span = field(default=NO_SPAN, compare=False)


@dataclass(frozen=True, slots=True)
class Comment:
    text: str
    span: Span = field(default=NO_SPAN, compare=False)


@dataclass(frozen=True, slots=True)
class Rule:
    effect: Literal["permit", "forbid"]
    name: str
    target: Target | None
    when: Expr | None
    unless: Expr | None
    limits: tuple[Limit, ...]
    requires: tuple[Require, ...]
    span: Span = field(default=NO_SPAN, compare=False)
    name_span: Span = field(default=NO_SPAN, compare=False)
    package: str = ""

    @property
    def id(self) -> str:
        return f"{self.package}.{self.name}" if self.package else self.name


@dataclass(frozen=True, slots=True)
class Let:
    name: str
    expr: Expr
    span: Span = field(default=NO_SPAN, compare=False)
    package: str = ""


# ---------------------------------------------------------------- schema


@dataclass(frozen=True, slots=True)
class TypeRef:
    """A type as written: ``string``, ``set<string>``, ``map<number>``."""

    name: str
    arg: TypeRef | None = None
    span: Span = field(default=NO_SPAN, compare=False)

    def __str__(self) -> str:
        return f"{self.name}<{self.arg}>" if self.arg else self.name


@dataclass(frozen=True, slots=True)
class AttrDecl:
    name: str
    type: TypeRef
    span: Span = field(default=NO_SPAN, compare=False)


@dataclass(frozen=True, slots=True)
class EntityDecl:
    """``agent { … }``, ``user { … }``, ``context { … }``, ``resource TYPE { … }`` or
    ``subject TYPE { … }``; ``resource_type`` is the TYPE of the last two."""

    kind: Literal["agent", "user", "context", "resource", "subject"]
    resource_type: str | None
    attrs: tuple[AttrDecl, ...]
    span: Span = field(default=NO_SPAN, compare=False)


@dataclass(frozen=True, slots=True)
class Schema:
    entities: tuple[EntityDecl, ...]
    span: Span = field(default=NO_SPAN, compare=False)


# ---------------------------------------------------------------- policy tests


@dataclass(frozen=True, slots=True)
class Field:
    name: str
    value: Expr
    span: Span = field(default=NO_SPAN, compare=False)


@dataclass(frozen=True, slots=True)
class Record:
    """A block of test data: ``agent { id: "pay-bot", risk: low }``."""

    kind: Literal["agent", "user", "delegation", "context", "resource", "subject"]
    fields: tuple[Field, ...]
    span: Span = field(default=NO_SPAN, compare=False)


@dataclass(frozen=True, slots=True)
class Expect:
    allow: bool
    by: tuple[str, ...]
    requiring: tuple[Obligation, ...]
    span: Span = field(default=NO_SPAN, compare=False)


# Where a test's clock starts unless the test sets it with ``at``: 2027-01-15T08:00:00Z,
# so that no result depends on the day a test runs.
TEST_START = 1_800_000_000.0


@dataclass(frozen=True, slots=True)
class ClockSet:
    """``at "2026-12-01T09:00:00Z"``: the test's clock reads this instant from here on."""

    when: datetime
    span: Span = field(default=NO_SPAN, compare=False)


@dataclass(frozen=True, slots=True)
class ClockAdvance:
    """``after 25h``: the test's clock moves this far forward."""

    by: Duration
    span: Span = field(default=NO_SPAN, compare=False)


ClockMove = ClockSet | ClockAdvance


@dataclass(frozen=True, slots=True)
class Step:
    """``call tool "x" [with {…}] [times N]`` or ``action "a" on TYPE "id" …``, then expect;
    ``clock`` holds the ``at`` and ``after`` statements written just before it."""

    action: str
    resource_type: str
    resource_id: str
    form: Literal["call", "action"]
    context: tuple[Field, ...]
    times: int
    expect: Expect
    span: Span = field(default=NO_SPAN, compare=False)
    clock: tuple[ClockMove, ...] = ()


@dataclass(frozen=True, slots=True)
class Test:
    name: str
    records: tuple[Record, ...]
    steps: tuple[Step, ...]
    span: Span = field(default=NO_SPAN, compare=False)
    package: str = ""


# ---------------------------------------------------------------- files


Item = Let | Rule | Schema | Test


@dataclass(frozen=True, slots=True)
class Module:
    """One parsed `.pol` file."""

    path: str
    package: str
    items: tuple[Item, ...]
    comments: tuple[Comment, ...] = ()
    source: str = field(default="", repr=False, compare=False)

    @property
    def rules(self) -> tuple[Rule, ...]:
        return tuple(i for i in self.items if isinstance(i, Rule))

    @property
    def lets(self) -> tuple[Let, ...]:
        return tuple(i for i in self.items if isinstance(i, Let))

    @property
    def schemas(self) -> tuple[Schema, ...]:
        return tuple(i for i in self.items if isinstance(i, Schema))

    @property
    def tests(self) -> tuple[Test, ...]:
        return tuple(i for i in self.items if isinstance(i, Test))
