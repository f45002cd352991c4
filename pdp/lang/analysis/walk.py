"""Walking a syntax tree: every sub-expression, and the source text behind one."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from typing import get_args

from pdp.lang import ast
from pdp.lang.errors import Sources, Span

# Every kind of expression node; read from the union so a node added to it is walked too.
EXPR_TYPES = get_args(ast.Expr)


def children(expr: ast.Expr) -> Iterator[ast.Expr]:
    """The direct sub-expressions of ``expr``, in source order."""
    for f in dataclasses.fields(expr):
        yield from _exprs(getattr(expr, f.name))


def _exprs(value: object) -> Iterator[ast.Expr]:
    if isinstance(value, EXPR_TYPES):
        yield value
    elif isinstance(value, tuple):
        for item in value:
            yield from _exprs(item)


def walk(expr: ast.Expr) -> Iterator[ast.Expr]:
    """``expr`` and every expression below it, depth first."""
    stack = [expr]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(reversed(list(children(node))))


def reads_root(expr: ast.Expr | None, root: str) -> bool:
    """Whether ``expr`` reads a path of ``root`` (``tool``, ``now``) anywhere in it."""
    if expr is None:
        return False
    return any(isinstance(node, ast.Path) and node.root == root for node in walk(expr))


def rule_exprs(rule: ast.Rule) -> Iterator[ast.Expr]:
    """Every expression a rule holds: its target's patterns, conditions, limits, requires."""
    if rule.target is not None:
        for pattern in (rule.target.action, rule.target.resource):
            if pattern is not None:
                yield pattern.expr
    for clause in (rule.when, rule.unless):
        if clause is not None:
            yield clause
    for limit in rule.limits:
        yield from (e for e in (limit.amount, limit.cap, limit.window) if e is not None)
    for require in rule.requires:
        if require.condition is not None:
            yield require.condition


def text(sources: Sources, expr: ast.Expr) -> str:
    """The source text of an expression; its dotted form or "it" when it spans lines."""
    span = expr.span
    if span.line > 0 and span.end_line == span.line:
        found = sources.line(span)[span.column - 1 : span.end_column - 1]
        if found:
            return found
    return expr.dotted() if isinstance(expr, ast.Path) else "it"


def word_span(sources: Sources, span: Span, pattern: str) -> Span:
    """The span of regex group 1 of ``pattern`` on the first line of ``span``."""
    line = sources.line(span)
    match = re.compile(pattern).search(line, max(span.column - 1, 0))
    if match is None:
        return span
    return Span(span.file, span.line, match.start(1) + 1, span.line, match.end(1) + 1)
