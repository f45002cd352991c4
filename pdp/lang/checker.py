"""The static checker: types every rule, let and policy test of a bundle against its schema.

``tessera check`` runs it before a bundle is ever loaded, so a policy author learns about
unknown attributes, type and currency mismatches, duplicate names and unknown lets from a
diagnostic with file:line:col, a caret and a hint, never from a deny at run time. It also
warns about rules that can never apply. The checker reports; it never raises: the caller
decides what to do with errors (the loader refuses the bundle, the CLI prints them).
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any, assert_never

from pdp.lang import ast
from pdp.lang.analysis import analyse
from pdp.lang.analysis.targets import covers
from pdp.lang.analysis.walk import reads_root
from pdp.lang.diagnostics import root_first
from pdp.lang.errors import Diagnostic, Severity, Sources, Span
from pdp.lang.functions import FUNCTIONS, ZONE, arity, is_zone, zone_hint
from pdp.lang.rewrite import fold, inline_lets, substitute
from pdp.lang.schema import (
    ANY,
    BOOL,
    BUILTINS,
    DATE,
    DURATION,
    IP,
    NETWORK,
    NUMBER,
    RISK,
    STRING,
    TIME,
    WEEKDAY,
    SchemaModel,
    Type,
    attribute_key,
    build_schema,
)
from pdp.lang.values import (
    WEEKDAYS,
    Duration,
    Money,
    Risk,
    Weekday,
    parse_date,
    parse_ip,
    parse_time,
)

LetKey = tuple[str, str]

RISK_LEVELS = tuple(Risk.__members__)
# Words the parser reads as something other than a let name, so a let cannot take them.
RESERVED: dict[str, str] = {
    **{level: "a risk level" for level in RISK_LEVELS},
    "true": "a boolean",
    "false": "a boolean",
    "delegated": "a delegation flag",
    "autonomous": "a delegation flag",
}
# Roots that name a whole entity: `has` may ask them about an attribute.
ENTITY_ROOTS = ("agent", "user", "context", "resource", "tool", "subject")
ORDERED = ("number", "money", "risk", "duration", "time", "date", "weekday")
# What to compare instead when a whole entity is used as a value.
_EXAMPLE_ATTR = {
    "agent": "agent.id",
    "user": "user.id",
    "context": "context.consents",
    "delegation": "delegation.depth",
    "resource": "resource.id",
    "tool": "tool.name",
    "subject": "subject.type",
}
# What to write for a field a test block lacks.
_REQUIRED_EXAMPLES = {
    ("agent", "id"): '"pay-bot"',
    ("user", "id"): '"alice"',
    ("subject", "type"): '"user"',
    ("subject", "id"): '"alice@example.com"',
}
_TYPE_WORDS = {
    "string": "a string",
    "number": "a number",
    "bool": "true or false",
    "risk": "a risk level",
    "duration": "a duration",
    "time": "a time",
    "date": "a date",
    "weekday": "a weekday",
    "ip": "an ip address",
    "network": "an ip network",
    "any": "anything",
}


@dataclass(frozen=True)
class CheckResult:
    """What the checker learned about a bundle: its schema, its lets, its diagnostics."""

    schema: SchemaModel
    # (package, let name) -> the let's expression with every let it uses substituted.
    lets: dict[LetKey, ast.Expr]
    diagnostics: tuple[Diagnostic, ...]
    # (package, let name) -> the let's type (None where it has none: a broken let).
    let_types: dict[LetKey, Type | None] = dataclasses.field(default_factory=dict)

    @property
    def errors(self) -> tuple[Diagnostic, ...]:
        return tuple(d for d in self.diagnostics if d.severity == "error")

    @property
    def warnings(self) -> tuple[Diagnostic, ...]:
        return tuple(d for d in self.diagnostics if d.severity == "warning")


def check(modules: Sequence[ast.Module], sources: Sources) -> CheckResult:
    """Check a whole bundle; ``sources`` must already hold the text of every module."""
    return _Checker(modules, sources).run()


def _is_constant(expr: ast.Expr) -> bool:
    """A literal or a list of constants: what a test record or a target may hold."""
    if isinstance(expr, ast.Literal_):
        return True
    if isinstance(expr, ast.ListExpr):
        return all(_is_constant(i) for i in expr.items)
    if isinstance(expr, ast.MapExpr):
        return all(_is_constant(v) for _, v in expr.entries)
    return False


# ------------------------------------------------------------------ types


def _literal_type(value: Any) -> Type | None:
    # bool and Risk are ints to Python: test them before numbers.
    if isinstance(value, bool):
        return BOOL
    if isinstance(value, Risk):
        return RISK
    if isinstance(value, Weekday):  # a str: test it before strings
        return WEEKDAY
    if isinstance(value, int | float | Decimal):
        return NUMBER
    if isinstance(value, str):
        return STRING
    if isinstance(value, Money):
        return Type("money", Type(value.currency))
    if isinstance(value, Duration):
        return DURATION
    if isinstance(value, datetime):  # a date: test it before dates
        return TIME
    if isinstance(value, date):
        return DATE
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return IP
    if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return NETWORK
    return None


def _compatible(a: Type, b: Type) -> bool:
    """Same type, ignoring currencies (checked apart) and list versus set."""
    if a == ANY or b == ANY:
        return True
    if a.name == "money" and b.name == "money":
        return True
    if (a.is_collection and b.is_collection) or a.name == b.name:
        if a.arg is None or b.arg is None:
            return a.arg is None and b.arg is None
        return _compatible(a.arg, b.arg)
    return False


def _currency_clash(a: Type, b: Type) -> tuple[str, str] | None:
    """The two currencies when both sides are known and differ, looking into containers."""
    if a.name == "money" and b.name == "money":
        if a.currency and b.currency and a.currency != b.currency:
            return a.currency, b.currency
        return None
    if a.arg is not None and b.arg is not None:
        return _currency_clash(a.arg, b.arg)
    return None


def _describe(t: Type) -> str:
    if t.name == "money":
        return f"money in {t.currency}" if t.currency else "money"
    if t.is_collection and t.arg == ANY:
        return "an empty list"
    if t.arg is not None:
        return f"a {t}"
    return _TYPE_WORDS.get(t.name, f"a {t.name}")


def _did_you_mean(word: str, choices: Sequence[str], shown: Callable[[str], str] = str) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f"did you mean '{shown(close[0])}'?" if close else ""


def _mismatch_hint(
    a: Type,
    b: Type,
    left: ast.Expr,
    right: ast.Expr,
    default: str = "both sides must have the same type",
) -> str:
    """How to make two sides comparable, for the mistakes people actually make."""
    for t, other, other_expr in ((a, b, right), (b, a, left)):
        literal = other_expr.value if isinstance(other_expr, ast.Literal_) else None
        if t == RISK and isinstance(literal, str) and literal in RISK_LEVELS:
            return f"risk levels are words, not strings: write {literal} without quotes"
        if t.name == "money" and other == NUMBER:
            return f"write the amount with its currency: 1000 {t.currency or 'USD'}"
        if t == DURATION and other == NUMBER:
            return "write a duration with its unit: 30s, 5m, 24h"
        if t == TIME and other == STRING:
            return 'write a time as time("2026-01-31T09:00:00Z")'
        if t == DATE and other == STRING:
            return 'write a date as date("2027-03-31")'
        if t == WEEKDAY:
            return 'a weekday compares with the name of a day: weekday(now) == "saturday"'
        if t == DATE and other == TIME:
            return (
                "a time compares with a time, a date with a date: take the date of the time "
                'in a zone, as in date(now, "Europe/Berlin")'
            )
        if t == IP and other == STRING:
            return 'write an address as ip("10.0.0.1")'
        if t == NUMBER and isinstance(literal, str) and _is_number(literal):
            return f"remove the quotes: {literal}"
        if t == BOOL and literal in ("true", "false"):
            return f"remove the quotes: {literal}"
    return default


def _kinds(kinds: tuple[str, ...]) -> str:
    """The kinds of value a parameter takes, in words: "a list, a set or a string"."""
    words = [_TYPE_WORDS.get(k, f"a {k}") for k in kinds]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def _argument_hint(name: str, given: Type, example: str) -> str:
    if name == "date" and given == STRING:
        return 'a date is written date("2027-03-31"); date(t) reads the date of a time t'
    if given == DATE:
        return f"a date has no {name}: read it of a time, such as now"
    if given == STRING and name != "size":
        return 'read a time: now, context.at, or time("2026-01-31T09:00:00Z")'
    return f"write: {example}"


def _weekday_hint(day: str) -> str:
    """The day a misspelled or abbreviated weekday was meant to be."""
    lower = day.lower()
    for name in WEEKDAYS:
        if len(lower) >= 2 and name.startswith(lower[:3]):
            return f'did you mean "{name}"? weekdays are lowercase English names'
    close = difflib.get_close_matches(lower, WEEKDAYS, n=1)
    if close:
        return f'did you mean "{close[0]}"? weekdays are lowercase English names'
    return 'weekdays are "monday", "tuesday", … "sunday"'


def _is_number(text: str) -> bool:
    return re.fullmatch(r"-?\d+(\.\d+)?", text) is not None


# ------------------------------------------------------------------ the checker


@dataclass(frozen=True)
class _Scope:
    """Where an expression is typed: its package and, in a rule, the target's resource type."""

    package: str
    resource_type: str | None = None
    in_rule: bool = False


class _Checker:
    def __init__(self, modules: Sequence[ast.Module], sources: Sources) -> None:
        self.modules = modules
        self.sources = sources
        self.out: list[Diagnostic] = []
        self.schema = SchemaModel()
        self.let_decls: dict[LetKey, ast.Let] = {}
        self.lets: dict[LetKey, ast.Expr] = {}
        self.let_types: dict[LetKey, Type | None] = {}
        self._typing: set[LetKey] = set()
        self._cycles: set[frozenset[LetKey]] = set()
        self.rules: dict[str, dict[str, ast.Rule]] = {}
        self.never_apply: set[int] = set()

    # diagnostics ------------------------------------------------------------
    def error(self, message: str, span: Span, hint: str = "") -> None:
        self.out.append(self.sources.diagnostic("error", message, span, hint))

    def warn(self, message: str, span: Span, hint: str = "") -> None:
        self.out.append(self.sources.diagnostic("warning", message, span, hint))

    def _report(self, severity: Severity, message: str, span: Span, hint: str) -> None:
        self.out.append(self.sources.diagnostic(severity, message, span, hint))

    def _word_span(self, span: Span, pattern: str) -> Span:
        """The span of the regex group 1 of ``pattern`` on the first line of ``span``."""
        text = self.sources.line(span)
        end = span.end_column - 1 if span.end_line == span.line else len(text)
        match = re.compile(pattern).search(text, span.column - 1, max(end, 0))
        if match is None:
            return span
        return Span(span.file, span.line, match.start(1) + 1, span.line, match.end(1) + 1)

    def _text(self, expr: ast.Expr) -> str:
        """The source text of an expression, for hints; a placeholder when it spans lines."""
        span = expr.span
        if span.line <= 0 or span.end_line != span.line:
            return "it"
        return self.sources.line(span)[span.column - 1 : span.end_column - 1] or "it"

    # the run --------------------------------------------------------------------
    def run(self) -> CheckResult:
        schemas = [s for m in self.modules for s in m.schemas]
        self.schema, schema_diagnostics = build_schema(schemas, self.sources)
        self.out.extend(schema_diagnostics)
        self._declare_lets()
        for key in self.let_decls:
            self._resolve(key, [])
        for key in self.let_decls:
            self._let_type(key)
        self._declare_rules()
        rules = [r for m in self.modules for r in m.rules]
        for rule in rules:
            self._rule(rule)
        self._overridden_permits(rules)
        for test in (t for m in self.modules for t in m.tests):
            self._test(test)
        if not any(d.severity == "error" for d in self.out):
            self.out.extend(
                analyse(
                    self.modules,
                    self.schema,
                    self.lets,
                    self.sources,
                    frozenset(self.never_apply),
                )
            )
        diagnostics = root_first(self.out)
        return CheckResult(self.schema, dict(self.lets), tuple(diagnostics), dict(self.let_types))

    # lets -----------------------------------------------------------------------
    def _declare_lets(self) -> None:
        for let in (item for m in self.modules for item in m.lets):
            key = (let.package, let.name)
            name_span = self._word_span(let.span, rf"\blet\s+({re.escape(let.name)})\b")
            what = "an attribute root" if let.name in ast.ROOTS else RESERVED.get(let.name)
            if what is not None:
                self.error(
                    f"a let cannot be named '{let.name}': it is {what}",
                    name_span,
                    f"pick another name, such as {let.name}_list: a reference to "
                    f"'{let.name}' reads as {what}",
                )
            first = self.let_decls.get(key)
            if first is not None:
                self.error(
                    f"let {let.name} is defined twice in package {let.package or '(none)'}",
                    name_span,
                    f"the first is at {first.span.file}:{first.span.line}; rename or remove one",
                )
                # Still type the duplicate so the errors inside it are reported.
                self._type(let.expr, _Scope(let.package))
                continue
            self.let_decls[key] = let

    def _resolve(self, key: LetKey, stack: list[tuple[LetKey, ast.Name]]) -> ast.Expr:
        """Inline the lets a let uses, depth first; report each cycle once.

        ``stack[i]`` is a let being inlined and the name in it that led to the next one.
        """
        done = self.lets.get(key)
        if done is not None:
            return done
        let = self.let_decls[key]
        chain = [k for k, _ in stack] + [key]

        def replace(name: ast.Name) -> ast.Expr:
            ref = (key[0], name.name)
            if ref not in self.let_decls:
                return name
            if ref in chain:
                self._cycle(chain, chain.index(ref), stack, name)
                return name
            return self._resolve(ref, [*stack, (key, name)])

        expr = substitute(let.expr, replace)
        self.lets[key] = expr
        return expr

    def _cycle(
        self,
        chain: list[LetKey],
        position: int,
        stack: list[tuple[LetKey, ast.Name]],
        closing: ast.Name,
    ) -> None:
        members = chain[position:]
        if frozenset(members) in self._cycles:
            return
        self._cycles.add(frozenset(members))
        # Point at the reference, in the let the cycle starts from, that leads into it.
        span = stack[position][1].span if position < len(stack) else closing.span
        message = f"let {members[0][1]} refers to itself"
        if len(members) > 1:
            message += " through " + ", ".join(name for _, name in members[1:])
        self.error(
            message,
            span,
            "a let is a named constant; write one of them out in full to break the cycle",
        )

    def _let_type(self, key: LetKey) -> Type | None:
        if key in self.let_types:
            return self.let_types[key]
        if key in self._typing:
            return None  # a cycle, already reported
        self._typing.add(key)
        let = self.let_decls[key]
        result = self._type(let.expr, _Scope(let.package))
        self._typing.discard(key)
        self.let_types[key] = result
        return result

    def _unknown_name(self, name: ast.Name, package: str) -> None:
        local = [n for (p, n) in self.let_decls if p == package]
        choices = [*local, *RISK_LEVELS, *ast.ROOTS, *RESERVED]
        elsewhere = sorted(p for (p, n) in self.let_decls if n == name.name)
        if elsewhere:
            hint = (
                f"let {name.name} is defined in package {elsewhere[0] or '(none)'}; "
                "a let is visible only in its own package"
            )
        else:
            hint = _did_you_mean(name.name, choices) or (
                f"define it (let {name.name} = ...), or quote it if you meant the "
                f'string "{name.name}"'
            )
        self.out.append(
            self.sources.diagnostic(
                "error",
                f"unknown name '{name.name}'",
                name.span,
                hint,
                cause=f"let {package}.{name.name}",
            )
        )

    # types ------------------------------------------------------------------------
    def _type(self, expr: ast.Expr, scope: _Scope) -> Type | None:
        """The type of ``expr``, reporting what is wrong inside it; None after an error."""
        if isinstance(expr, ast.Literal_):
            return _literal_type(expr.value)
        if isinstance(expr, ast.ListExpr):
            return self._list_type(expr, scope)
        if isinstance(expr, ast.MapExpr):
            return self._map_type(expr, scope)
        if isinstance(expr, ast.Path):
            return self._path_type(expr, scope)
        if isinstance(expr, ast.Name):
            return self._name_type(expr, scope)
        if isinstance(expr, ast.Flag):
            return BOOL
        if isinstance(expr, ast.Not):
            self._condition(expr.operand, scope, "not applies to a condition (true or false)")
            return BOOL
        if isinstance(expr, ast.BoolOp):
            for operand in expr.operands:
                self._condition(operand, scope, f"'{expr.op}' joins conditions (true or false)")
            return BOOL
        if isinstance(expr, ast.Compare):
            self._compare(expr, scope)
            return BOOL
        if isinstance(expr, ast.Has):
            self._has(expr, scope)
            return BOOL
        if isinstance(expr, ast.Call):
            return self._call(expr, scope)
        assert_never(expr)

    def _condition(self, expr: ast.Expr, scope: _Scope, what: str) -> None:
        t = self._type(expr, scope)
        if t is None or t in (BOOL, ANY):
            return
        text = self._text(expr)
        if t.is_collection:
            hint = f'ask for a member: {text} contains "..."'
        elif t.name == "map":
            hint = f'ask for a key: {text} has "..."'
        elif t == RISK:
            hint = f"compare it: {text} <= medium"
        elif t == STRING:
            hint = f'compare it: {text} == "..."'
        else:
            hint = f"compare it with a value: {text} == ..."
        self.error(f"{what}; this is {_describe(t)}", expr.span, hint)

    def _list_type(self, expr: ast.ListExpr, scope: _Scope) -> Type | None:
        if not expr.items:
            return Type("list", ANY)
        first: Type | None = None
        for item in expr.items:
            t = self._type(item, scope)
            if t is None:
                continue
            if first is None:
                first = t
                continue
            if not _compatible(first, t):
                self.error(
                    f"a list holds one type: the first item is {_describe(first)}, "
                    f"this one is {_describe(t)}",
                    item.span,
                    "split the list, or convert this item",
                )
            elif clash := _currency_clash(first, t):
                self.error(
                    f"currency mismatch: {clash[0]} vs {clash[1]}",
                    item.span,
                    "a list of amounts holds one currency",
                )
        return Type("list", first) if first is not None else None

    def _map_type(self, expr: ast.MapExpr, scope: _Scope) -> Type | None:
        """A map literal is map<T>: every value of one type (string keys)."""
        if not expr.entries:
            return Type("map", ANY)
        first: Type | None = None
        for _, value in expr.entries:
            t = self._type(value, scope)
            if t is None:
                continue
            if first is None:
                first = t
            elif not _compatible(first, t):
                self.error(
                    f"a map holds one type of value: the first is {_describe(first)}, "
                    f"this one is {_describe(t)}",
                    value.span,
                )
        return Type("map", first) if first is not None else None

    def _name_type(self, name: ast.Name, scope: _Scope) -> Type | None:
        key = (scope.package, name.name)
        if key not in self.let_decls:
            self._unknown_name(name, scope.package)
            return None
        if (
            scope.in_rule
            and scope.resource_type not in (None, ast.TOOL_TYPE)
            and reads_root(self.lets.get(key, name), "tool")
        ):
            self.error(
                f"let {name.name} reads tool.*, but this rule targets "
                f"`{scope.resource_type}` resources; tool.* is never present here",
                name.span,
                f"use resource.* for {scope.resource_type} attributes, or a rule that "
                "targets tools: call tool ...",
            )
            return None
        return self._let_type(key)

    def _root_attrs(self, path: ast.Path, scope: _Scope) -> dict[str, Type] | None:
        """The attributes a root offers in this scope; None (reported) when it cannot."""
        root = path.root
        if root == "tool" and scope.resource_type not in (None, ast.TOOL_TYPE):
            self.error(
                f"this rule targets `{scope.resource_type}` resources; "
                "tool.* is never present here",
                path.span,
                f"use resource.* for {scope.resource_type} attributes, or target tools: "
                "call tool ...",
            )
            return None
        attrs = self.schema.root_attrs(root, scope.resource_type)
        if attrs is None:
            raise KeyError(root)
        return attrs

    def _path_type(self, path: ast.Path, scope: _Scope) -> Type | None:
        if path.root == "action":
            if path.parts:
                self.error(
                    "action is a string (the action's name); it has no attributes",
                    path.span,
                    'compare it: action == "db.read"',
                )
                return None
            return STRING
        if path.root == "now":
            if path.parts:
                self.error(
                    "now is a time (the decision's); it has no attributes",
                    path.span,
                    'read its parts with functions: hour(now, "Europe/Berlin"), weekday(now)',
                )
                return None
            return TIME
        if not path.parts:
            self.error(
                f"{path.root} is the whole {path.root}; compare an attribute such as "
                f"{_EXAMPLE_ATTR[path.root]}",
                path.span,
                f"to ask whether an attribute is present: {path.root} has NAME",
            )
            return None
        attrs = self._root_attrs(path, scope)
        if attrs is None:
            return None
        name = path.parts[0]
        t = attrs.get(name)
        if t is None:
            self._unknown_attribute(path.root, name, attrs, path.span, scope.resource_type)
            return None
        walked = f"{path.root}.{name}"
        for part in path.parts[1:]:
            if t.name != "map" or t.arg is None:
                self.error(
                    f"{walked} is {_describe(t)}, not a map; it has no '{part}'",
                    path.span,
                    f'only map attributes take a key: {path.root}.labels["team"]',
                )
                return None
            t = t.arg
            walked += f'["{part}"]'
        return t

    def _call(self, call: ast.Call, scope: _Scope) -> Type | None:
        """A built-in function's result, once its arguments are of the kinds it takes."""
        function = FUNCTIONS[call.name]  # the parser lets no other name through
        types = [self._type(arg, scope) for arg in call.args]
        if not function.required <= len(call.args) <= len(function.params):
            self.error(
                f"{call.name}() takes {arity(function)}; this gives {len(call.args)}",
                call.span,
                f"write: {function.example}",
            )
            return None
        fine = True
        for arg, t, kinds in zip(call.args, types, function.params, strict=False):
            if t is None:
                fine = False
            elif kinds == (ZONE,):
                fine = self._zone(call, arg, t, scope) and fine
            elif t != ANY and t.name not in kinds:
                self.error(
                    f"{call.name}() reads {_kinds(kinds)}; this is {_describe(t)}",
                    arg.span,
                    _argument_hint(call.name, t, function.example),
                )
                fine = False
        return function.result if fine else None

    def _zone(self, call: ast.Call, arg: ast.Expr, t: Type, scope: _Scope) -> bool:
        """A time zone argument: a string; one the checker can see must name a zone."""
        if t not in (STRING, ANY):
            self.error(
                f"a time zone is a string naming a zone; this is {_describe(t)}",
                arg.span,
                f'write: {call.name}(now, "Europe/Berlin"), or read one: agent.labels.tz',
            )
            return False
        value = fold(inline_lets(arg, scope.package, self.lets))
        if isinstance(value, ast.Literal_) and not is_zone(value.value):
            self.error(f'unknown time zone "{value.value}"', arg.span, zone_hint(value.value))
            return False
        return True

    def _unknown_attribute(
        self,
        root: str,
        name: str,
        attrs: Mapping[str, Type],
        span: Span,
        resource_type: str | None,
        severity: Severity = "error",
        message: str = "",
    ) -> None:
        entity = root
        if root == "resource" and resource_type is not None:
            entity = f"resource {resource_type}"
        cause = attribute_key(root, name)
        hint = _did_you_mean(name, sorted(attrs), lambda a: f"{root}.{a}")
        if root == "resource" and resource_type not in (None, *self.schema.resources):
            cause = f"resource type {resource_type}"
            hint = self._unknown_resource_type_hint(resource_type) or hint
        hint = hint or self._declared_elsewhere(root, name)
        if not hint:
            if root == "delegation":
                hint = "delegation has " + ", ".join(BUILTINS["delegation"])
            else:
                block = root
                if root == "resource":
                    block = f"resource {resource_type or 'TYPE'}"
                elif root == "subject":
                    block = "subject TYPE"
                elif root == "tool":
                    block = f"resource {ast.TOOL_TYPE}"
                hint = f"declare it in the schema: {block} {{ {name}: string }}"
        message = message or f"{entity} has no attribute '{name}'"
        if severity == "warning":
            self._report(severity, message, span, hint)
        else:
            self.out.append(self.sources.diagnostic("error", message, span, hint, cause=cause))

    def _unknown_resource_type_hint(self, resource_type: str | None) -> str:
        """Did-you-mean for a rule's resource type that no schema block declares."""
        close = _did_you_mean(str(resource_type), sorted(self.schema.resources))
        if not close:
            return ""
        return f"no schema block declares resource {resource_type}: {close}"

    def _declared_elsewhere(self, root: str, name: str) -> str:
        """Where an attribute is declared under another entity than the one read."""
        for decl in (e for m in self.modules for s in m.schemas for e in s.entities):
            attr = next((a for a in decl.attrs if a.name == name), None)
            if attr is None or decl.kind == root:
                continue
            block = f"{decl.kind} {decl.resource_type}" if decl.resource_type else decl.kind
            return (
                f"{name} is declared under {block} at {attr.span.file}:{attr.span.line}; "
                f"move it to {root} {{ … }}, or read {decl.kind}.{name}"
            )
        return ""

    def _has(self, expr: ast.Has, scope: _Scope) -> None:
        base = expr.base
        if isinstance(base, ast.Path) and not base.parts and base.root in ENTITY_ROOTS:
            attrs = self._root_attrs(base, scope)
            if attrs is not None and expr.name not in attrs:
                # `has` asks about presence, so this is no error, but it cannot be true.
                self._unknown_attribute(
                    base.root,
                    expr.name,
                    attrs,
                    expr.span,
                    scope.resource_type,
                    severity="warning",
                    message=f"{base.root} has {expr.name} can only be false: "
                    f"{expr.name} is not in the schema",
                )
            return
        if isinstance(base, ast.Path) and base.parts:
            t = self._path_type(base, scope)
            if t is not None and t.name != "map":
                self.error(
                    f"has asks whether a map holds a key; {base.dotted()} is {_describe(t)}",
                    base.span,
                    f"ask the entity instead: {base.root} has {base.parts[0]}",
                )
            return
        if isinstance(base, ast.Path) and base.root == "delegation":
            hint = "delegation always has delegated, depth and chain"
        elif self._type(base, scope) is None:
            return  # already reported: an unknown name, most likely
        else:
            hint = 'write: agent has owner, or agent.labels has "team"'
        self.error(
            "has asks an entity (agent, user, context, resource, tool, subject) or a map attribute",
            base.span,
            hint,
        )

    def _compare(self, c: ast.Compare, scope: _Scope) -> None:
        lt = self._type(c.left, scope)
        rt = self._type(c.right, scope)
        if c.op == "like":
            self._like(c, lt, rt)
            return
        if lt is None or rt is None:
            return
        if WEEKDAY in (lt, rt) and self._weekday(c, lt, rt, scope):
            return
        if c.op in ("==", "!="):
            self._same(lt, rt, c, c.left, c.right)
        elif c.op in ("<", "<=", ">", ">="):
            for side, t in ((c.left, lt), (c.right, rt)):
                if t.name not in ORDERED:
                    self.error(
                        f"{c.op} orders numbers, money, risk levels, durations and times; "
                        f"this is {_describe(t)}",
                        side.span,
                        self._unordered_hint(t),
                    )
                    return
            self._same(lt, rt, c, c.left, c.right)
        elif c.op == "in":
            self._in(c, lt, rt)
        elif c.op == "contains":
            self._contains(c, lt, rt)
        elif c.op in ("intersects", "subset of"):
            self._collections(c, lt, rt)
        elif c.op in ("startswith", "endswith"):
            self._affix(c, lt, rt)

    @staticmethod
    def _unordered_hint(t: Type) -> str:
        if t == STRING:
            return (
                "strings have no order: compare with ==, or match with startswith, endswith "
                'or like "prefix*"'
            )
        if t == BOOL:
            return "use the condition itself, or == true"
        if t.is_collection:
            return 'ask for a member with contains: agent.scopes contains "x"'
        return "compare with == or !="

    def _same(self, a: Type, b: Type, c: ast.Compare, left: ast.Expr, right: ast.Expr) -> None:
        if not _compatible(a, b):
            self.error(
                f"cannot compare {_describe(a)} with {_describe(b)}",
                c.span,
                _mismatch_hint(a, b, left, right),
            )
        elif clash := _currency_clash(a, b):
            self.error(
                f"currency mismatch: {clash[0]} vs {clash[1]}",
                c.span,
                "amounts compare only within one currency: write both in "
                f"{clash[0]} or both in {clash[1]}",
            )

    def _in(self, c: ast.Compare, lt: Type, rt: Type) -> None:
        if lt == IP and (rt == NETWORK or (rt.is_collection and rt.arg == NETWORK)):
            return
        if not rt.is_collection or rt.arg is None:
            hint = 'in looks in a list or a set: x in ["a", "b"]'
            if rt == STRING and lt == STRING:
                hint = f"to find a substring, write: {self._text(c.right)} contains ..."
            self.error(
                f"in needs a list or a set on its right; this is {_describe(rt)}",
                c.right.span,
                hint,
            )
            return
        if not _compatible(lt, rt.arg):
            self.error(
                f"cannot look for {_describe(lt)} in {_describe(rt)}",
                c.span,
                _mismatch_hint(
                    lt, rt.arg, c.left, c.right, f"the item must be {_describe(rt.arg)}"
                ),
            )
        elif clash := _currency_clash(lt, rt.arg):
            self.error(
                f"currency mismatch: {clash[0]} vs {clash[1]}",
                c.span,
                "amounts compare only within one currency",
            )

    def _contains(self, c: ast.Compare, lt: Type, rt: Type) -> None:
        if lt == STRING:
            if rt != STRING:
                self.error(
                    f"a string contains strings; this is {_describe(rt)}",
                    c.right.span,
                    'look for a substring: agent.purpose contains "pay"',
                )
            return
        if not lt.is_collection or lt.arg is None:
            self.error(
                f"contains looks in a list, a set or a string; this is {_describe(lt)}",
                c.left.span,
                f"compare it instead: {self._text(c.left)} == {self._text(c.right)}",
            )
            return
        if not _compatible(lt.arg, rt):
            self.error(
                f"cannot look for {_describe(rt)} in {_describe(lt)}",
                c.span,
                _mismatch_hint(
                    lt.arg, rt, c.left, c.right, f"the item must be {_describe(lt.arg)}"
                ),
            )
        elif clash := _currency_clash(lt.arg, rt):
            self.error(
                f"currency mismatch: {clash[0]} vs {clash[1]}",
                c.span,
                "amounts compare only within one currency",
            )

    def _collections(self, c: ast.Compare, lt: Type, rt: Type) -> None:
        """``A intersects B`` and ``A subset of B``: two lists or sets of one member type."""
        for side, t, other in ((c.left, lt, rt), (c.right, rt, lt)):
            if t != ANY and not t.is_collection:
                self.error(
                    f"{c.op} compares two lists or sets; this is {_describe(t)}",
                    side.span,
                    self._collection_hint(c, side, other),
                )
                return
        if not _compatible(lt, rt):
            self.error(
                f"cannot compare {_describe(lt)} with {_describe(rt)}",
                c.span,
                "both sides must hold members of the same type",
            )
        elif clash := _currency_clash(lt, rt):
            self.error(
                f"currency mismatch: {clash[0]} vs {clash[1]}",
                c.span,
                "amounts compare only within one currency",
            )

    def _collection_hint(self, c: ast.Compare, scalar: ast.Expr, other: Type) -> str:
        """Write the lone value as a list, or ask for it as one member (``in``, ``contains``)."""
        one, left, right = self._text(scalar), self._text(c.left), self._text(c.right)
        listed = "[...]" if one == "it" else f"[{one}]"
        if scalar is c.left:
            as_list, member = f"{listed} {c.op} {right}", f"{one} in {right}"
        else:
            as_list, member = f"{left} {c.op} {listed}", f"{left} contains {one}"
        if not other.is_collection:
            return f"to compare two values, write: {left} == {right}"
        if c.op == "intersects" or scalar is c.left:
            return f"to ask for one member, write: {member}; or use a list: {as_list}"
        return f"use a list: {as_list}"

    def _affix(self, c: ast.Compare, lt: Type, rt: Type) -> None:
        """``S startswith P`` and ``S endswith P``: two strings."""
        for side, t in ((c.left, lt), (c.right, rt)):
            if t in (STRING, ANY):
                continue
            hint = f'{c.op} tests one string against another: user.email {c.op} "..."'
            if t.is_collection and side is c.right:
                hint = f"test one string at a time: {self._text(c.left)} {c.op} ... or ..."
            elif t.is_collection:
                hint = f"{c.op} reads one string; ask a list or a set for a member with contains"
            self.error(f"{c.op} matches strings; this is {_describe(t)}", side.span, hint)
            return

    def _weekday(self, c: ast.Compare, lt: Type, rt: Type, scope: _Scope) -> bool:
        """A weekday against day names: ``weekday(now) == "sunday"``, ``in [...]``. Whether
        the comparison was of that kind (and so is checked)."""
        names: ast.Expr | None = None
        if c.op in ("==", "!=", "<", "<=", ">", ">="):
            if {lt, rt} == {WEEKDAY, STRING}:
                names = c.right if rt == STRING else c.left
        elif c.op == "in" and lt == WEEKDAY and rt.is_collection and rt.arg in (STRING, ANY):
            names = c.right
        elif c.op == "contains" and rt == WEEKDAY and lt.is_collection and lt.arg == STRING:
            names = c.left
        if names is None:
            return False
        items = names.items if isinstance(names, ast.ListExpr) else (names,)
        for item in items:
            value = fold(inline_lets(item, scope.package, self.lets))
            days = value.value if isinstance(value, ast.Literal_) else ()
            for day in days if isinstance(days, tuple) else (days,):
                if isinstance(day, str) and day not in WEEKDAYS:
                    self.error(f'"{day}" is not a weekday', item.span, _weekday_hint(day))
                    return True
        return True

    def _like(self, c: ast.Compare, lt: Type | None, rt: Type | None) -> None:
        sides = ((c.left, lt, "matches strings against a glob"), (c.right, rt, "takes a glob"))
        for side, t, what in sides:
            if t is not None and t not in (STRING, ANY):
                hint = "compare it with == instead"
                if side is c.right:
                    hint = 'a glob is a string: "*write*", or an attribute that holds one'
                self.error(f"like {what}; this is {_describe(t)}", side.span, hint)
                return

    # rules ------------------------------------------------------------------------
    def _declare_rules(self) -> None:
        for rule in (r for m in self.modules for r in m.rules):
            named = self.rules.setdefault(rule.package, {})
            first = named.get(rule.name)
            if first is not None:
                self.error(
                    f"rule {rule.name} is defined twice in package {rule.package or '(none)'}",
                    rule.name_span,
                    f"the first is at {first.name_span.file}:{first.name_span.line}; "
                    "rule names identify decisions, so each must be unique",
                )
                continue
            named[rule.name] = rule

    def _rule(self, rule: ast.Rule) -> None:
        target = rule.target
        scope = _Scope(rule.package, target.resource_type if target else None, in_rule=True)
        if target is not None:
            for pattern in (target.action, target.resource):
                if pattern is not None:
                    self._pattern(rule, pattern)
        for clause in (rule.when, rule.unless):
            if clause is not None:
                self._condition(clause, scope, "a condition must be true or false")
        for limit in rule.limits:
            self._limit(limit, scope)
        for require in rule.requires:
            if require.condition is not None:
                self._condition(require.condition, scope, "a condition must be true or false")
        self._constant_conditions(rule)

    def _pattern(self, rule: ast.Rule, pattern: ast.Pattern) -> None:
        expr = pattern.expr
        if pattern.form in ("string", "like"):
            if not (isinstance(expr, ast.Literal_) and isinstance(expr.value, str)):
                self.error(
                    "a target pattern is a string", expr.span, 'write it in quotes: "sql.select"'
                )
            return
        if isinstance(expr, ast.ListExpr):
            self._pattern_list(rule, expr)
            return
        if isinstance(expr, ast.Name) and pattern.form in ("in", "name"):
            key = (rule.package, expr.name)
            if key not in self.let_decls:
                self._unknown_name(expr, rule.package)
                return
            value = self.lets[key]
            if isinstance(value, ast.ListExpr) and all(
                isinstance(i, ast.Literal_) and isinstance(i.value, str) for i in value.items
            ):
                if not value.items:
                    self._empty_target(rule, expr.span)
                return
            self.error(
                f"let {expr.name} is not a list of strings, so it cannot be a target",
                expr.span,
                f'a target names tools or actions: let {expr.name} = ["search", "read_file"]',
            )
            return
        self.error(
            'a target pattern is a string, like "glob", a list of strings or a let',
            expr.span,
            'write: call tool "sql.select", call tool like "fs.*" or call tool in read_tools',
        )

    def _pattern_list(self, rule: ast.Rule, expr: ast.ListExpr) -> None:
        if not expr.items:
            self._empty_target(rule, expr.span)
        for item in expr.items:
            value = item
            if isinstance(item, ast.Name):
                if (rule.package, item.name) not in self.let_decls:
                    self._unknown_name(item, rule.package)
                    continue
                value = self.lets[(rule.package, item.name)]
            if not (isinstance(value, ast.Literal_) and isinstance(value.value, str)):
                t = self._type(value, _Scope(rule.package))
                what = f"; this is {_describe(t)}" if t is not None else ""
                self.error(
                    f"a target lists names as strings{what}",
                    item.span,
                    'write each name in quotes: ["search", "read_file"]',
                )

    def _empty_target(self, rule: ast.Rule, span: Span) -> None:
        self.never_apply.add(id(rule))
        self.warn(
            f"{rule.effect} {rule.name} can never apply: its target list is empty",
            span,
            "list at least one name, or remove the rule",
        )

    def _limit(self, limit: ast.Limit, scope: _Scope) -> None:
        if limit.scope == "owner":
            self._owner_declared(limit)
        window = limit.window
        if (
            isinstance(window, ast.Literal_)
            and isinstance(window.value, Duration)
            and window.value.seconds <= 0
        ):
            self.error("a limit's window must be longer than zero", window.span, "write: per 24h")
        if limit.kind != "sum" or limit.amount is None:
            return
        amount = self._type(limit.amount, scope)
        cap = self._type(limit.cap, scope)
        if amount is None or cap is None:
            return
        if amount.name not in ("money", "number"):
            self.error(
                f"sum adds up money or numbers; this is {_describe(amount)}",
                limit.amount.span,
                "sum an amount: limit sum(context.amount) <= 5000 USD per 24h",
            )
            return
        if cap.name != amount.name:
            hint = (
                f"write the cap with its currency: 5000 {amount.currency or 'USD'}"
                if amount.name == "money"
                else "write the cap as a plain number: 5000"
            )
            self.error(
                f"the cap must be {_describe(amount)} like the sum; this is {_describe(cap)}",
                limit.cap.span,
                hint,
            )
        elif clash := _currency_clash(amount, cap):
            self.error(
                f"currency mismatch: {clash[0]} vs {clash[1]}",
                limit.cap.span,
                f"the amounts summed are in {clash[0]}: write the cap in {clash[0]}",
            )

    def _owner_declared(self, limit: ast.Limit) -> None:
        """A limit per owner counts by ``agent.owner``, which must be a declared string."""
        owner = self.schema.agent.get("owner")
        if owner is None or owner.name != "string":
            what = "does not declare it" if owner is None else f"declares {_describe(owner)}"
            self.error(
                f"limit per owner counts by agent.owner, a string; the schema {what}",
                limit.span,
                "declare it: schema { agent { owner: string } }",
            )

    # warnings: rules that can never apply --------------------------------------------
    def _fold_rule(self, rule: ast.Rule, expr: ast.Expr | None) -> object:
        """The constant value of a condition, or None when a request can change it."""
        if expr is None:
            return None
        folded = fold(inline_lets(expr, rule.package, self.lets))
        if isinstance(folded, ast.Literal_):
            return folded.value
        if rule.effect == "permit" and isinstance(folded, ast.BoolOp):
            # `x and false` is no constant (x may fail, and a failing forbid denies), but
            # a permit that fails does not apply either: for a permit it settles.
            settles = folded.op == "or"
            if any(
                isinstance(o, ast.Literal_) and bool(o.value) is settles for o in folded.operands
            ):
                return settles
        return None

    def _constant_conditions(self, rule: ast.Rule) -> None:
        if rule.when is not None and self._fold_rule(rule, rule.when) is False:
            self.never_apply.add(id(rule))
            self.warn(
                f"{rule.effect} {rule.name} can never apply: its when is always false",
                rule.when.span,
                "with its lets filled in, this condition is constant; fix or remove the rule",
            )
        if rule.unless is not None and self._fold_rule(rule, rule.unless) is True:
            self.never_apply.add(id(rule))
            self.warn(
                f"{rule.effect} {rule.name} can never apply: its unless is always true",
                rule.unless.span,
                "with its lets filled in, this condition is constant; fix or remove the rule",
            )

    def _unconditional(self, rule: ast.Rule) -> bool:
        when_ok = rule.when is None or self._fold_rule(rule, rule.when) is True
        unless_ok = rule.unless is None or self._fold_rule(rule, rule.unless) is False
        return when_ok and unless_ok

    def _normal_target(self, rule: ast.Rule) -> ast.Target | None:
        """The rule's target with lets inlined, so targets of two packages compare."""
        target = rule.target
        if target is None:
            return None

        def normal(pattern: ast.Pattern | None) -> ast.Pattern | None:
            if pattern is None:
                return None
            expr = inline_lets(pattern.expr, rule.package, self.lets)
            return dataclasses.replace(pattern, expr=expr)

        return dataclasses.replace(
            target, action=normal(target.action), resource=normal(target.resource)
        )

    def _overridden_permits(self, rules: list[ast.Rule]) -> None:
        forbids = [r for r in rules if r.effect == "forbid" and self._unconditional(r)]
        if not forbids:
            return
        for permit in rules:
            if permit.effect != "permit" or id(permit) in self.never_apply:
                continue
            target = self._normal_target(permit)
            for forbid in forbids:
                wide = self._normal_target(forbid)
                if not covers(wide, target):
                    continue
                what = "every request" if forbid.target is None else "the same target"
                if wide is not None and wide != target:
                    what = "a target covering this one"
                self.warn(
                    f"permit {permit.name} can never apply: forbid {forbid.id} denies "
                    f"{what} unconditionally",
                    permit.name_span,
                    f"forbid {forbid.id} is at {forbid.name_span.file}:"
                    f"{forbid.name_span.line}; give it a when or unless, or remove this permit",
                )
                break

    # policy tests ----------------------------------------------------------------
    def _record_attrs(self, kind: str) -> dict[str, Type]:
        if kind == "delegation":
            # Only the chain is set; delegated and depth follow from the user and it.
            return {"chain": BUILTINS["delegation"]["chain"]}
        if kind == "resource":
            return self.schema.resource_attrs(None)
        if kind == "subject":
            return self.schema.subject_attrs()
        return self.schema.entity(kind)

    def _test(self, test: ast.Test) -> None:
        scope = _Scope(test.package)
        seen: dict[str, ast.Record] = {}
        kinds = {record.kind for record in test.records}
        for record in test.records:
            kind_span = Span(
                record.span.file,
                record.span.line,
                record.span.column,
                record.span.line,
                record.span.column + len(record.kind),
            )
            if record.kind in seen:
                self.error(
                    f'test "{test.name}" has two {record.kind} blocks',
                    kind_span,
                    f"merge them into the one at line {seen[record.kind].span.line}",
                )
                continue
            seen[record.kind] = record
            self._fields(record.kind, record.fields, scope)
            self._required_fields(record, kind_span, "subject" in kinds)
        start = test.span
        head = Span(start.file, start.line, start.column, start.line, start.column + 4)
        if "agent" not in seen and "subject" not in seen:
            self.error(
                f'test "{test.name}" has no agent',
                head,
                'every request has an agent: agent { id: "pay-bot" }, or another subject: '
                'subject { type: "user", id: "alice" }',
            )
        if "agent" in seen and "subject" in seen:
            self.error(
                f'test "{test.name}" names an agent and a subject',
                head,
                "a request is about an agent (agent { … }) or another subject (subject { … })",
            )
        for step in test.steps:
            self._fields("context", step.context, scope)
            self._expect(test, step.expect)

    def _required_fields(self, record: ast.Record, kind_span: Span, subject: bool) -> None:
        """An agent block needs an id, a subject block a type and an id, and a user block
        an id unless the user is the subject (whose id it then takes)."""
        required = {"agent": ("id",), "subject": ("type", "id")}.get(record.kind, ())
        if record.kind == "user" and not subject:
            required = ("id",)
        given = {f.name for f in record.fields}
        for name in required:
            if name not in given:
                example = _REQUIRED_EXAMPLES[(record.kind, name)]
                self.error(
                    f"the {record.kind} block needs {'an' if name == 'id' else 'a'} {name}",
                    kind_span,
                    f"add one: {record.kind} {{ {name}: {example}, ... }}",
                )

    def _fields(self, kind: str, fields: Sequence[ast.Field], scope: _Scope) -> None:
        attrs = self._record_attrs(kind)
        names: set[str] = set()
        for f in fields:
            name_span = Span(
                f.span.file, f.span.line, f.span.column, f.span.line, f.span.column + len(f.name)
            )
            if f.name in names:
                self.error(f"{kind}.{f.name} is set twice", name_span, "keep one of them")
                continue
            names.add(f.name)
            declared = attrs.get(f.name)
            if declared is None:
                if kind == "delegation" and f.name in BUILTINS["delegation"]:
                    self.error(
                        f"delegation.{f.name} cannot be set in a test",
                        name_span,
                        "delegated and depth follow from the user and the chain: "
                        'delegation { chain: ["pay-bot", "sub-bot"] }',
                    )
                else:
                    self._unknown_attribute(kind, f.name, attrs, name_span, None)
                self._type(f.value, scope)
                continue
            self._test_value(f"{kind}.{f.name}", declared, f.value, scope)

    def _test_value(self, where: str, declared: Type, value: ast.Expr, scope: _Scope) -> None:
        t = self._type(value, scope)
        if t is None:
            return
        resolved = inline_lets(value, scope.package, self.lets)
        if not _is_constant(resolved):
            self.error(
                "a test gives values, not expressions",
                value.span,
                'write a value such as "x", 42, 200 USD, low, 30s or ["a", "b"]',
            )
            return
        if declared in (IP, TIME, DATE) and t == STRING and isinstance(resolved, ast.Literal_):
            # Test data is typed like request JSON, where ips, times and dates are strings;
            # accept the shorthand when it parses, so ip("...") is optional here.
            parsers = {IP: parse_ip, TIME: parse_time, DATE: parse_date}
            try:
                parsers[declared](resolved.value)
            except ValueError as exc:
                self.error(str(exc), value.span, f"{where} is {_describe(declared)}")
            return
        if not _compatible(declared, t):
            self.error(
                f"{where} is {_describe(declared)}; this is {_describe(t)}",
                value.span,
                _mismatch_hint(declared, t, value, value, f"write {_describe(declared)} here"),
            )
        elif clash := _currency_clash(declared, t):
            self.error(
                f"currency mismatch: {clash[0]} vs {clash[1]}",
                value.span,
                f"{where} is declared as {declared}: write the amount in {clash[0]}",
            )

    def _expect(self, test: ast.Test, expect: ast.Expect) -> None:
        local = self.rules.get(test.package, {})
        every = {r.id for named in self.rules.values() for r in named.values()}
        for name in expect.by:
            if name in local or name in every:
                continue
            span = self._word_span(expect.span, rf"\b({re.escape(name)})\b(?!\s*\()")
            hint = _did_you_mean(name, sorted(local)) or (
                "name a rule of this package, or give its full id: package.rule"
            )
            self.error(f"expect names rule {name}, which does not exist", span, hint)
