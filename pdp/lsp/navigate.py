"""What is under the cursor in a parsed `.pol` file, and where a name is defined.

The syntax tree is walked generically (every dataclass field), so a node kind added to
:mod:`pdp.lang.ast` is walked through without a change here.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from pdp.lang import ast
from pdp.lang.errors import Span, source_lines

_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")


@dataclass(frozen=True)
class Found:
    """The innermost node of interest under the cursor, the span it covers there, and
    the top-level item (rule, let, test, schema) holding it."""

    node: object
    span: Span
    item: ast.Item


@dataclass(frozen=True)
class RuleRef:
    """A rule named by a test's ``expect … by NAME`` (or ``PACKAGE.NAME``)."""

    name: str
    package: str


@dataclass(frozen=True)
class LetName:
    """The name of a ``let`` where it is defined."""

    let: ast.Let


def walk(node: object) -> Iterator[object]:
    """``node`` and every syntax node below it, depth first."""
    yield node
    if isinstance(node, tuple):
        for child in node:
            yield from walk(child)
        return
    if not dataclasses.is_dataclass(node) or isinstance(node, Span | ast.Literal_):
        return
    for field in dataclasses.fields(node):
        child = getattr(node, field.name)
        if isinstance(child, tuple) or dataclasses.is_dataclass(child):
            yield from walk(child)


def covers(span: Span, line: int, column: int) -> bool:
    """Whether the cursor at ``line``:``column`` is on ``span`` or just after its end."""
    if span.line <= 0 or (line, column) < (span.line, span.column):
        return False
    return (line, column) <= (span.end_line, span.end_column)


def word_at(lines: list[str], line: int, column: int) -> tuple[str, Span] | None:
    """The dotted name under the cursor, and its span."""
    if not 1 <= line <= len(lines):
        return None
    for match in _WORD.finditer(lines[line - 1]):
        if match.start() + 1 <= column <= match.end() + 1:
            return match.group(), Span("", line, match.start() + 1, line, match.end() + 1)
    return None


def let_name_span(let: ast.Let, lines: list[str]) -> Span:
    """Where a let's name is written (``let NAME =``), else the whole let."""
    pattern = re.compile(rf"\blet\s+({re.escape(let.name)})\b")
    for number in range(let.span.line, min(let.span.end_line, len(lines)) + 1):
        match = pattern.search(lines[number - 1])
        if match is not None:
            return Span(let.span.file, number, match.start(1) + 1, number, match.end(1) + 1)
    return let.span


def _candidates(item: ast.Item, lines: list[str], line: int, column: int) -> Iterator[Found]:
    if isinstance(item, ast.Let):
        yield Found(LetName(item), let_name_span(item, lines), item)
    if isinstance(item, ast.Rule):
        yield Found(item, item.name_span, item)
    for node in walk(item):
        if isinstance(node, ast.Path | ast.Name):
            yield Found(node, node.span, item)
        elif isinstance(node, ast.Expect) and isinstance(item, ast.Test):
            word = word_at(lines, line, column)
            if word is not None and word[0] in node.by and covers(node.span, line, column):
                yield Found(RuleRef(word[0], item.package), word[1], item)


def node_at(module: ast.Module, line: int, column: int) -> Found | None:
    """The innermost path, let or rule name, or rule reference at ``line``:``column``."""
    lines = source_lines(module.source)
    best: Found | None = None
    for item in module.items:
        if not covers(item.span, line, column):
            continue
        for found in _candidates(item, lines, line, column):
            if covers(found.span, line, column) and (best is None or _inside(found, best)):
                best = found
    return best


def _inside(a: Found, b: Found) -> bool:
    return (a.span.line, a.span.column) >= (b.span.line, b.span.column) and (
        a.span.end_line,
        a.span.end_column,
    ) <= (b.span.end_line, b.span.end_column)


def find_let(modules: Iterable[ast.Module], package: str, name: str) -> ast.Let | None:
    """The let ``name`` of ``package`` (lets are scoped to their package)."""
    for module in modules:
        for let in module.lets:
            if let.package == package and let.name == name:
                return let
    return None


def find_rule(modules: Iterable[ast.Module], package: str, name: str) -> ast.Rule | None:
    """The rule ``name`` as a test of ``package`` names it: a rule of that package, or
    any rule by its full id (``package.rule``)."""
    rules = [rule for module in modules for rule in module.rules]
    for rule in rules:
        if rule.package == package and rule.name == name:
            return rule
    return next((rule for rule in rules if rule.id == name), None)


def definition(found: Found, modules: Iterable[ast.Module]) -> tuple[Span, ast.Item] | None:
    """Where the let or rule under the cursor is defined: the span of its name (None
    when the cursor is on something else, or names nothing defined)."""
    modules = list(modules)
    node = found.node
    package = getattr(found.item, "package", "")
    if isinstance(node, ast.Name):
        let = find_let(modules, package, node.name)
        return None if let is None else (_let_name(let, modules), let)
    if isinstance(node, LetName):
        return _let_name(node.let, modules), node.let
    if isinstance(node, RuleRef):
        rule = find_rule(modules, node.package, node.name)
        return None if rule is None else (rule.name_span, rule)
    if isinstance(node, ast.Rule):
        return node.name_span, node
    return None


def _let_name(let: ast.Let, modules: list[ast.Module]) -> Span:
    source = next((m.source for m in modules if m.path == let.span.file), "")
    return let_name_span(let, source_lines(source))
