"""Hypothesis strategies for the policy language: random well-typed policies and requests.

Everything here works against one small, fixed schema (:data:`SCHEMA_TEXT`). Policies are
built as syntax trees, typed by construction: every expression is drawn for a type, so a
comparison only ever meets operands the checker accepts (a property in test_agreement.py
runs the checker on them to keep it so). Requests are drawn as request JSON with
attributes left out at random, so missing-attribute errors, currency mismatches and
absent users happen at run time, which is where the engine and the interpreter could part.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from functools import cache
from typing import Any

from hypothesis import strategies as st

from pdp.lang import ast
from pdp.lang.schema import PERSONS, SchemaModel
from pdp.lang.values import Duration, Money, Risk

PACKAGE = "p"
PACKAGES = ("p", "q")

Lets = dict[tuple[str, str], ast.Expr]

SCHEMA_TEXT = """
schema {
  agent {
    risk: risk,
    status: string,
    purpose: string,
    scopes: set<string>,
    labels: map<string>,
    score: number,
    tz: string,
  }
  user { roles: set<string> }
  context {
    amount: money,
    n: number,
    consents: set<string>,
    acr: string,
    age: duration,
    at: time,
    until: date,
  }
  resource tool { server: string }
}
"""


def schema_model() -> SchemaModel:
    """The schema of :data:`SCHEMA_TEXT`, built the way the loader builds it."""
    from pdp.loader import load_texts

    schema: SchemaModel = load_texts({"schema.pol": SCHEMA_TEXT}).bundle.schema
    return schema


# ------------------------------------------------------------------ vocabularies

# Tool names requests call, and patterns rules target: they overlap on purpose.
TOOLS = (
    "search",
    "web.search",
    "read_file",
    "fs.write",
    "fs.write_tmp",
    "payments.transfer",
    "payments.refund",
    "mail.send",
)
TOOL_GLOBS = ("*", "fs.*", "*search", "payments.*", "*write*", "mail.?end", "read_*", "?")
ACTIONS = ("tool.call", "db.read", "db.export", "db.write")
ACTION_GLOBS = ("db.*", "*", "tool.*", "*.read")
TYPES = ("tool", "table")
TABLES = ("orders", "finance_q1", "users")
TABLE_GLOBS = ("finance_*", "*s", "*")

STRINGS = ("", "a", "ops", "pay", "payments", "active", "suspended", "analyst", "mfa", "search")
GLOBS = ("*", "a*", "*s*", "pay*", "?", "*.search", "s?arch", "*e*", "")
CONSENTS = ("pay", "read")
ACRS = ("mfa", "strong", "urn:tessera:acr:key", "urn:tessera:acr:key+mtls")  # two on the ladder
LABEL_KEYS = ("team", "env", "cost-center")
AGENT_IDS = ("a1", "a2")
USER_IDS = ("u1", "u2")
WINDOWS = ("30s", "1m", "1h", "24h")
ZONES = ("UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata")
DAYS = ("monday", "friday", "saturday", "sunday")
TIMES = ("2026-03-29T00:30:00Z", "2026-03-29T01:30:00Z", "2026-10-25T00:30:00Z")
DATES = ("2026-03-28", "2026-03-29", "2027-03-31")

# Scalar and container types an expression can be drawn for. Money is split by the
# currency of its literals, so a comparison never pits a USD literal against a EUR one
# (the checker rejects that); a request's amount may still be in either.
BOOL = "bool"
STRING = "string"
NUMBER = "number"
RISK = "risk"
USD = "money USD"
EUR = "money EUR"
DURATION = "duration"
STRINGS_T = "strings"  # set<string> or list<string>
MAP = "map"  # map<string>
TIME = "time"
DATE = "date"
IP = "ip"

EQUATABLE = (BOOL, STRING, NUMBER, RISK, USD, EUR, DURATION, STRINGS_T, MAP, TIME, DATE, IP)
ORDERED = (NUMBER, RISK, USD, EUR, DURATION, TIME, DATE)
MEMBERS = (STRING, NUMBER, RISK, USD, EUR, DURATION)
LET_TYPES = (BOOL, STRING, NUMBER, RISK, USD, EUR, DURATION, STRINGS_T)
SET_OPS: tuple[ast.CompareOp, ...] = ("intersects", "subset of")
AFFIX_OPS: tuple[ast.CompareOp, ...] = ("startswith", "endswith")


def _lit(value: Any) -> ast.Literal_:
    return ast.Literal_(value)


def _path(dotted: str) -> ast.Path:
    root, *parts = dotted.split(".")
    return ast.Path(root, tuple(parts))


def _paths(*dotted: str) -> st.SearchStrategy[ast.Expr]:
    return st.sampled_from([_path(d) for d in dotted])


# ------------------------------------------------------------------ literals


def _money_literals(currency: str) -> st.SearchStrategy[ast.Expr]:
    amounts = ("0", "1", "5", "50", "99.5", "100", "250", "1000", "-5")
    return st.sampled_from([_lit(Money(Decimal(a), currency)) for a in amounts])


_LITERALS: dict[str, st.SearchStrategy[ast.Expr]] = {
    BOOL: st.sampled_from([_lit(True), _lit(False)]),
    STRING: st.sampled_from([_lit(s) for s in STRINGS]),
    NUMBER: st.one_of(st.integers(-3, 1000), st.sampled_from([0.5, 2.5, -1.5, 100.0, 1e-7])).map(
        _lit
    ),
    RISK: st.sampled_from([_lit(r) for r in Risk]),
    USD: _money_literals("USD"),
    EUR: _money_literals("EUR"),
    DURATION: st.sampled_from(
        [_lit(Duration.parse(t)) for t in ("500ms", "30s", "90s", "5m", "1h", "2d")]
    ),
    TIME: st.sampled_from(
        [
            _lit(datetime(2026, 1, 31, 9, 0, tzinfo=UTC)),
            _lit(datetime(2025, 6, 1, 0, 0, tzinfo=UTC)),
        ]
    ),
    DATE: st.sampled_from([_lit(date.fromisoformat(d)) for d in DATES]),
    IP: st.sampled_from([_lit(ipaddress.ip_address(a)) for a in ("10.1.2.3", "192.168.0.1")]),
}

_NETWORKS = st.sampled_from(
    [_lit(ipaddress.ip_network(n)) for n in ("10.0.0.0/8", "192.168.0.0/16")]
)


# ------------------------------------------------------------------ expressions


@dataclass(frozen=True)
class Scope:
    """What an expression may refer to: the lets so far, and whether tool.* is present."""

    lets: tuple[tuple[str, str], ...] = ()  # (name, type)
    tool_ok: bool = True

    def names(self, t: str) -> list[ast.Expr]:
        return [ast.Name(name) for name, kind in self.lets if kind == t]


def _attribute_paths(t: str, scope: Scope) -> list[str]:
    tool = scope.tool_ok
    table: dict[str, list[str]] = {
        BOOL: ["delegation.delegated"],
        STRING: [
            "agent.id",
            "agent.status",
            "agent.purpose",
            "user.id",
            "context.acr",
            "action",
            "resource.id",
            "resource.type",
            "agent.labels.team",
            "agent.labels.env",
            "agent.labels.cost-center",
            "subject.type",
            "subject.id",
            "agent.tz",
        ]
        + (["tool.name", "tool.server", "resource.server"] if tool else []),
        NUMBER: ["agent.score", "context.n", "delegation.depth"],
        RISK: ["agent.risk"],
        USD: ["context.amount"],
        EUR: ["context.amount"],
        DURATION: ["context.age"],
        TIME: ["now", "context.at"],
        DATE: ["context.until"],
        STRINGS_T: ["agent.scopes", "user.roles", "context.consents", "delegation.chain"],
        MAP: ["agent.labels"],
    }
    return table.get(t, [])


@cache
def leaves(t: str, scope: Scope) -> st.SearchStrategy[ast.Expr]:
    """Expressions of type ``t`` with no sub-expression to speak of."""
    options: list[st.SearchStrategy[ast.Expr]] = []
    if t in _LITERALS:
        options.append(_LITERALS[t])
    paths = _attribute_paths(t, scope)
    if paths:
        options.append(_paths(*paths))
    names = scope.names(t)
    if names:
        options.append(st.sampled_from(names))
    if t == BOOL:
        options.append(st.sampled_from([ast.Flag("delegated"), ast.Flag("autonomous")]))
    if t == STRINGS_T:
        options.append(st.lists(_LITERALS[STRING], max_size=3).map(_list))
    if t == MAP:
        options.append(
            st.dictionaries(st.sampled_from(LABEL_KEYS), _LITERALS[STRING], max_size=2).map(_map)
        )
    return st.one_of(options)


def _list(items: list[ast.Expr]) -> ast.Expr:
    return ast.ListExpr(tuple(items))


def _map(entries: dict[str, ast.Expr]) -> ast.Expr:
    return ast.MapExpr(tuple(entries.items()))


@cache
def exprs(t: str, depth: int, scope: Scope) -> st.SearchStrategy[ast.Expr]:
    """Well-typed expressions of type ``t``, nested at most ``depth`` deep."""
    base = leaves(t, scope)
    if depth <= 0:
        return base
    inner = depth - 1
    if t == BOOL:
        compared = comparisons(inner, scope)
        return st.one_of(
            base,
            compared,
            compared,
            compared,
            has_tests(scope),
            exprs(BOOL, inner, scope).map(ast.Not),
            st.tuples(
                st.sampled_from(["and", "or"]),
                st.lists(exprs(BOOL, inner, scope), min_size=2, max_size=3),
            ).map(lambda p: ast.BoolOp(p[0], tuple(p[1]))),
        )
    if t == STRINGS_T:  # a list that reads the request: [agent.status, "x"]
        return st.one_of(base, st.lists(exprs(STRING, 0, scope), max_size=3).map(_list))
    if t == MAP:
        return st.one_of(
            base,
            st.dictionaries(st.sampled_from(LABEL_KEYS), exprs(STRING, 0, scope), max_size=2).map(
                _map
            ),
        )
    if t == NUMBER:
        counted = st.one_of(
            exprs(STRINGS_T, 0, scope), exprs(MAP, 0, scope), exprs(STRING, 0, scope)
        )
        return st.one_of(
            base, time_parts(("hour", "minute"), scope), counted.map(lambda x: _call("size", x))
        )
    if t == DATE:
        return st.one_of(base, time_parts(("date",), scope))
    return base


def _call(name: str, *args: ast.Expr) -> ast.Expr:
    return ast.Call(name, args)


@cache
def time_parts(names: tuple[str, ...], scope: Scope) -> st.SearchStrategy[ast.Expr]:
    """``hour(t)``, ``minute(t, zone)``, …: a zone as a literal, or read from the agent
    (where it may name no zone)."""
    zones = st.one_of(st.sampled_from(ZONES).map(_lit), _paths("agent.tz"))
    times = leaves(TIME, scope)
    return st.one_of(
        st.tuples(st.sampled_from(names), times).map(lambda p: _call(p[0], p[1])),
        st.tuples(st.sampled_from(names), times, zones).map(lambda p: _call(*p)),
    )


def _compare(op: str) -> Callable[[tuple[ast.Expr, ast.Expr]], ast.Expr]:
    return lambda sides: ast.Compare(op, sides[0], sides[1])  # type: ignore[arg-type]


@cache
def comparisons(depth: int, scope: Scope) -> st.SearchStrategy[ast.Expr]:
    """Every comparison operator, each with operands of types the checker accepts."""

    def same(types: tuple[str, ...], ops: tuple[str, ...]) -> st.SearchStrategy[ast.Expr]:
        return st.sampled_from(types).flatmap(
            lambda t: st.tuples(
                st.sampled_from(ops), exprs(t, depth, scope), exprs(t, depth, scope)
            ).map(lambda p: ast.Compare(p[0], p[1], p[2]))
        )

    def member_list(t: str) -> st.SearchStrategy[ast.Expr]:
        items = st.one_of(_LITERALS[t], exprs(t, 0, scope))
        return st.lists(items, max_size=3).map(_list)

    def in_list(t: str) -> st.SearchStrategy[ast.Expr]:
        return st.tuples(exprs(t, 0, scope), member_list(t)).map(_compare("in"))

    def list_contains(t: str) -> st.SearchStrategy[ast.Expr]:
        return st.tuples(member_list(t), exprs(t, 0, scope)).map(_compare("contains"))

    def collections(op: str) -> Callable[[str], st.SearchStrategy[ast.Expr]]:
        return lambda t: st.tuples(member_list(t), member_list(t)).map(_compare(op))

    def weekdays() -> st.SearchStrategy[ast.Expr]:
        day = time_parts(("weekday",), scope)
        names = st.sampled_from(DAYS).map(_lit)
        ops = st.sampled_from(["==", "!=", "<", "<=", ">", ">="])
        return st.one_of(
            st.tuples(ops, day, names).map(lambda p: ast.Compare(p[0], p[1], p[2])),
            st.tuples(day, st.lists(names, max_size=3).map(_list)).map(_compare("in")),
        )

    strings, set_of_strings = exprs(STRING, 0, scope), exprs(STRINGS_T, depth, scope)
    return st.one_of(
        weekdays(),
        st.tuples(strings, strings).map(_compare("like")),  # a glob read from the request
        same(EQUATABLE, ("==", "!=")),
        same(ORDERED, ("<", "<=", ">", ">=")),
        st.sampled_from(MEMBERS).flatmap(in_list),
        st.sampled_from(MEMBERS).flatmap(list_contains),
        st.tuples(strings, set_of_strings).map(_compare("in")),
        st.tuples(set_of_strings, strings).map(_compare("contains")),
        st.tuples(strings, strings).map(_compare("contains")),  # a substring
        st.tuples(strings, st.sampled_from(GLOBS + STRINGS).map(_lit)).map(_compare("like")),
        st.tuples(_LITERALS[IP], st.one_of(_NETWORKS, _NETWORKS.map(lambda n: _list([n])))).map(
            _compare("in")
        ),
        st.tuples(set_of_strings, set_of_strings, st.sampled_from(SET_OPS)).map(
            lambda p: ast.Compare(p[2], p[0], p[1])
        ),
        st.sampled_from(SET_OPS).flatmap(
            lambda op: st.sampled_from(MEMBERS).flatmap(collections(op))
        ),
        st.tuples(strings, strings, st.sampled_from(AFFIX_OPS)).map(
            lambda p: ast.Compare(p[2], p[0], p[1])
        ),
    )


@cache
def has_tests(scope: Scope) -> st.SearchStrategy[ast.Expr]:
    """``agent has owner``, ``user has roles``, ``agent.labels has team``, …"""
    roots = ["agent", "user", "context", "resource", "subject"]
    roots += ["tool"] if scope.tool_ok else []
    names = ("id", "risk", "status", "roles", "amount", "n", "consents", "server", "owner", "name")
    entity = st.tuples(st.sampled_from(roots), st.sampled_from(names)).map(
        lambda p: ast.Has(ast.Path(p[0], ()), p[1])
    )
    label = st.sampled_from(LABEL_KEYS).map(lambda k: ast.Has(_path("agent.labels"), k))
    return st.one_of(entity, label)


# ------------------------------------------------------------------ lets and rules


@dataclass(frozen=True)
class Vocabulary:
    """Tool names, actions and table ids that requests use besides the fixed pools."""

    tools: tuple[str, ...] = ()
    actions: tuple[str, ...] = ()
    tables: tuple[str, ...] = ()


@dataclass(frozen=True)
class Policy:
    """Rules and lets as :meth:`Bundle.build` and :class:`Interpreter` take them."""

    rules: tuple[ast.Rule, ...]
    lets: Lets = field(default_factory=dict)
    let_items: tuple[ast.Let, ...] = ()

    def vocabulary(self) -> Vocabulary:
        """Names requests should use: a name each of the policy's patterns matches."""
        tools: set[str] = set()
        actions: set[str] = set()
        tables: set[str] = set()
        for rule in self.rules:
            target = rule.target
            if target is None:
                continue
            if target.action is not None:
                actions |= self._matched(target.action, rule.package)
            if target.resource is not None:
                names = self._matched(target.resource, rule.package)
                (tools if target.resource_type == ast.TOOL_TYPE else tables).update(names)
        return Vocabulary(tuple(sorted(tools)), tuple(sorted(actions)), tuple(sorted(tables)))

    def _matched(self, pattern: ast.Pattern, package: str) -> set[str]:
        expr = pattern.expr
        if isinstance(expr, ast.Name):
            expr = self.lets[(package, expr.name)]
        items = expr.items if isinstance(expr, ast.ListExpr) else (expr,)
        strings = [i.value for i in items if isinstance(i, ast.Literal_)]
        return {str(s).replace("*", "x").replace("?", "y") for s in strings}

    def modules(self) -> dict[str, ast.Module]:
        """The policy as one module per package, for the formatter (so for the checker)."""
        out = {}
        for package in sorted(
            {r.package for r in self.rules} | {x.package for x in self.let_items}
        ):
            items: tuple[ast.Item, ...] = (
                *(x for x in self.let_items if x.package == package),
                *(r for r in self.rules if r.package == package),
            )
            out[f"{package}.pol"] = ast.Module(f"{package}.pol", package, items)
        return out

    def text(self) -> str:
        """The policy as people read it (in failure notes)."""
        from pdp.lang.formatter import format_module

        return "\n".join(format_module(m) for m in self.modules().values())


@st.composite
def let_sets(draw: st.DrawFn, package: str = PACKAGE) -> tuple[tuple[ast.Let, ...], Scope]:
    """A few lets, each of one type; a later let may use an earlier one."""
    scope = Scope(tool_ok=False)  # a let may be used by a rule on any resource type
    lets: list[ast.Let] = []
    # Target lists: what `call tool in NAME` and `call tool NAME` refer to.
    for index in range(draw(st.integers(0, 2))):
        items = draw(st.lists(st.sampled_from(TOOLS + TOOL_GLOBS), max_size=3, unique=True))
        lets.append(ast.Let(f"tools{index}", _list([_lit(i) for i in items]), package=package))
        scope = Scope(((f"tools{index}", STRINGS_T), *scope.lets), tool_ok=False)
    for index in range(draw(st.integers(0, 4))):
        t = draw(st.sampled_from(LET_TYPES))
        expr = draw(exprs(t, 2 if t == BOOL else 1, scope))
        name = f"v{index}"
        lets.append(ast.Let(name, expr, package=package))
        scope = Scope(((name, t), *scope.lets), tool_ok=False)
    return tuple(lets), scope


def _strings_pattern(form: str, strings: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    return st.lists(strings, max_size=3).map(
        lambda items: ast.Pattern(form, _list([_lit(s) for s in items]))  # type: ignore[arg-type]
    )


def patterns(
    exact: tuple[str, ...], globs: tuple[str, ...], lets: list[str]
) -> st.SearchStrategy[ast.Pattern]:
    """A target pattern: exact, glob, ``like``, ``in`` a list or let, a bare list or let."""
    strings = st.sampled_from(exact + globs)
    options = [
        strings.map(lambda s: ast.Pattern("string", _lit(s))),
        strings.map(lambda s: ast.Pattern("like", _lit(s))),
        _strings_pattern("in", strings),
        _strings_pattern("list", strings),
    ]
    if lets:
        options.append(st.sampled_from(lets).map(lambda n: ast.Pattern("in", ast.Name(n))))
        options.append(st.sampled_from(lets).map(lambda n: ast.Pattern("name", ast.Name(n))))
    return st.one_of(options)


def targets(tool_lets: list[str]) -> st.SearchStrategy[ast.Target | None]:
    call = patterns(TOOLS, TOOL_GLOBS, tool_lets).map(
        lambda p: ast.Target("call", None, ast.TOOL_TYPE, p)
    )
    bare_action = patterns(ACTIONS, ACTION_GLOBS, []).map(
        lambda p: ast.Target("action", p, None, None)
    )
    on_type = st.tuples(
        patterns(ACTIONS, ACTION_GLOBS, []),
        st.sampled_from(TYPES),
        st.none() | patterns(TOOLS + TABLES, TABLE_GLOBS + TOOL_GLOBS, []),
    ).map(lambda p: ast.Target("action", p[0], p[1], p[2]))
    return st.one_of(st.none(), call, bare_action, on_type)


def limits(scope: Scope) -> st.SearchStrategy[ast.Limit]:
    window = st.sampled_from(WINDOWS).map(lambda w: _lit(Duration.parse(w)))
    # per owner reads agent.owner, which this schema leaves undeclared on purpose
    scopes = st.sampled_from([s for s in (*ast.PER_SCOPES, ast.GLOBAL_SCOPE) if s != "owner"])
    money = st.tuples(
        st.one_of(
            _paths("context.amount"), st.sampled_from(scope.names(USD) or [_path("context.amount")])
        ),
        st.sampled_from(["0", "100", "500", "1000"]).map(lambda a: _lit(Money(Decimal(a), "USD"))),
        window,
        scopes,
    ).map(lambda p: ast.Limit("sum", p[0], p[1], p[2], p[3]))
    number = st.tuples(st.integers(0, 20).map(_lit), window, scopes).map(
        lambda p: ast.Limit("sum", _path("context.n"), p[0], p[1], p[2])
    )
    count = st.tuples(st.integers(1, 4).map(_lit), window, scopes).map(
        lambda p: ast.Limit("count", None, p[0], p[1], p[2])
    )
    return st.one_of(money, number, count)


def requires(scope: Scope) -> st.SearchStrategy[ast.Require]:
    obligation = st.one_of(
        st.sampled_from(CONSENTS).map(lambda v: ast.Obligation("consent", v)),
        st.sampled_from(ACRS).map(lambda v: ast.Obligation("step_up", v)),
    )
    condition = st.none() | exprs(BOOL, 1, scope)
    return st.tuples(obligation, condition).map(lambda p: ast.Require(p[0], p[1]))


@st.composite
def rules(
    draw: st.DrawFn, name: str, scope: Scope, gated: bool = False, package: str = PACKAGE
) -> ast.Rule:
    """One rule; a ``gated`` one is mostly a permit with limits and plain conditions."""
    effect = draw(st.sampled_from(["permit"] * (6 if gated else 2) + ["forbid"]))
    tool_lets = [n for n, t in scope.lets if n.startswith("tools")]
    # A gated rule mostly applies to every request: no target, no condition.
    target = None
    if not gated or draw(st.integers(0, 3)) == 0:
        target = draw(targets(tool_lets))
    tool_ok = target is None or target.resource_type in (None, ast.TOOL_TYPE)
    inner = Scope(scope.lets, tool_ok)  # lets never read tool.*: all stay usable
    when = unless = None
    if not gated:
        when = draw(st.none() | exprs(BOOL, 2, inner))
        unless = draw(st.none() | st.none() | exprs(BOOL, 1, inner))
    elif draw(st.integers(0, 3)) == 3:
        when = draw(exprs(BOOL, 0, inner))
    rule_limits: tuple[ast.Limit, ...] = ()
    rule_requires: tuple[ast.Require, ...] = ()
    if effect == "permit":
        rule_limits = tuple(draw(st.lists(limits(inner), min_size=int(gated), max_size=2)))
        rule_requires = tuple(draw(st.lists(requires(inner), max_size=2)))
    return ast.Rule(
        effect,  # type: ignore[arg-type]
        name,
        target,
        when,
        unless,
        rule_limits,
        rule_requires,
        package=package,
    )


@st.composite
def policies(draw: st.DrawFn, max_rules: int = 6, gated: bool = False) -> Policy:
    """A random well-typed policy: lets, then permits and forbids over them.

    Most policies are one package; some are two, each with its own lets (of the same
    names) and rules (of the same names, so only the package tells their ids apart).
    ``gated`` policies are mostly permits with limits and obligations, so repeated calls
    fill caps and meet obligations more often than fully random ones do.
    """
    packages = PACKAGES[: draw(st.sampled_from([1, 1, 1, 2]))]
    all_lets: list[ast.Let] = []
    all_rules: list[ast.Rule] = []
    for package in packages:
        let_items, scope = draw(let_sets(package))
        count = draw(st.integers(1, max_rules))
        all_lets += let_items
        all_rules += [draw(rules(f"r{i}", scope, gated, package)) for i in range(count)]
    if len(packages) > 1:
        all_rules = draw(st.permutations(all_rules))
    lets = {(let.package, let.name): let.expr for let in all_lets}
    return Policy(tuple(all_rules), lets, tuple(all_lets))


@st.composite
def expressions(draw: st.DrawFn) -> tuple[ast.Expr, Lets]:
    """An expression of any type, with the lets it may refer to."""
    let_items, scope = draw(let_sets())
    t = draw(st.sampled_from(EQUATABLE))
    expr = draw(exprs(t, 3 if t == BOOL else 1, Scope(scope.lets, tool_ok=True)))
    return expr, {(PACKAGE, let.name): let.expr for let in let_items}


# ------------------------------------------------------------------ requests

_NUMBERS = st.one_of(
    st.sampled_from([0, 1, 2, 3, 5, 10, 100, -1, 2.5, 0.5]),
    st.integers(-10, 2000),
    st.floats(allow_nan=False, allow_infinity=False),
)
_AMOUNTS = ("0", "1", "5", "50", "99.5", "100", "250", "1000", "0.01", "-5")


# An attribute no resource type declares passes through untyped (no rule can read it).
UNTYPED = st.one_of(
    st.sampled_from(STRINGS),
    st.integers(-2, 2),
    st.booleans(),
    st.lists(st.sampled_from(STRINGS), max_size=2),
    st.dictionaries(st.sampled_from(STRINGS), st.integers(0, 2), max_size=2),
)


def _attributes(
    required: dict[str, st.SearchStrategy[Any]],
    optional: dict[str, st.SearchStrategy[Any]],
    complete: bool,
) -> st.SearchStrategy[dict[str, Any]]:
    if complete:
        return st.fixed_dictionaries({**required, **optional})
    return st.fixed_dictionaries(required, optional=optional)


def agents(complete: bool = False) -> st.SearchStrategy[dict[str, Any]]:
    return _attributes(
        {"id": st.sampled_from(AGENT_IDS)},
        {
            "risk": st.sampled_from([r.name for r in Risk]),
            "status": st.sampled_from(["active", "active", "suspended"]),
            "purpose": st.sampled_from(STRINGS),
            "scopes": st.lists(st.sampled_from(STRINGS), max_size=3),
            "labels": st.dictionaries(
                st.sampled_from(LABEL_KEYS), st.sampled_from(STRINGS), max_size=2
            ),
            "score": _NUMBERS,
            "tz": st.sampled_from((*ZONES, "Mars/Base", "")),
            "owner": UNTYPED,  # not in the schema: only `has` can ask about it
        },
        complete,
    )


def users(complete: bool = False) -> st.SearchStrategy[dict[str, Any]]:
    roles = {"roles": st.lists(st.sampled_from(STRINGS), max_size=3)}
    return _attributes({"id": st.sampled_from(USER_IDS)}, roles, complete)


def contexts(complete: bool = False) -> st.SearchStrategy[dict[str, Any]]:
    # A complete context is one that sums cleanly: USD amounts, counts not below zero.
    amounts = _AMOUNTS[:-1] if complete else _AMOUNTS
    currencies = ("USD",) if complete else ("USD", "USD", "EUR")
    return _attributes(
        {},
        {
            "amount": st.tuples(st.sampled_from(amounts), st.sampled_from(currencies)).map(
                " ".join
            ),
            "n": st.integers(0, 8) if complete else _NUMBERS,
            "consents": st.lists(st.sampled_from((*CONSENTS, "other")), max_size=2),
            "acr": st.sampled_from((*ACRS, "none")),
            "age": st.one_of(
                st.sampled_from(["10s", "30s", "5m", "2h", "3d"]), st.integers(0, 10_000)
            ),
            "at": st.sampled_from(TIMES),
            "until": st.sampled_from(DATES),
        },
        complete,
    )


def _names(pool: tuple[str, ...], extra: tuple[str, ...]) -> st.SearchStrategy[str]:
    if not extra:
        return st.sampled_from(pool)
    return st.one_of(st.sampled_from(extra), st.sampled_from(pool))


def resources(names: Vocabulary) -> st.SearchStrategy[dict[str, Any]]:
    """``{"tool": …}`` or an action on a tool or a table."""
    tools = _names((*TOOLS, "other.tool"), names.tools)
    call = tools.map(lambda t: {"tool": t})
    on = st.fixed_dictionaries(
        {
            "action": _names((*ACTIONS, "db.delete"), names.actions),
            "resource": st.one_of(
                st.fixed_dictionaries(
                    {"type": st.just("tool"), "id": tools},
                    optional={"server": st.sampled_from(STRINGS)},
                ),
                st.fixed_dictionaries(
                    {"type": st.just("table"), "id": _names(TABLES, names.tables)},
                    # Tables declare no `server`, but tools do, so it is typed as a string.
                    optional={"server": st.sampled_from(STRINGS), "note": UNTYPED},
                ),
            ),
        }
    )
    return st.one_of(call, on)


@st.composite
def request_json(
    draw: st.DrawFn, complete: bool = False, names: Vocabulary = Vocabulary()
) -> dict[str, Any]:
    """Request JSON for :data:`SCHEMA_TEXT`, with attributes left out at random.

    Tools, actions and tables come from ``names`` (see :meth:`Policy.vocabulary`). A
    ``complete`` request has every attribute and a user, and amounts that a limit can
    sum, so that permits with limits apply to it and fill their caps. One request in
    eight is about a person instead of an agent (no agent, no delegation).
    """
    if not complete and draw(st.integers(0, 7)) == 0:
        person = draw(st.sampled_from(USER_IDS))
        data: dict[str, Any] = {"subject": {"type": draw(st.sampled_from(PERSONS)), "id": person}}
        if draw(st.booleans()):
            data["user"] = draw(users())
    else:
        data = {"agent": draw(agents(complete))}
    if "agent" in data and (complete or draw(st.booleans())):
        data["user"] = draw(users(complete))
    if "agent" in data and draw(st.booleans()):
        chain = st.lists(st.sampled_from((*AGENT_IDS, *USER_IDS, "x")), max_size=4)
        data["delegation"] = {"chain": draw(chain)}
    data.update(draw(resources(names)))
    context = draw(contexts(complete))
    if context or draw(st.booleans()):
        data["context"] = context
    return data
