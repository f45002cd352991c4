"""Comparisons whose answer a request cannot change: impossible or always true.

``agent.risk > critical`` is never true (no level is above critical), ``agent.risk >= low``
always is; ``delegation.depth < 0`` never is (a depth counts actors); ``x in []`` never is;
``subject.type == "servce"`` never is when no subject type has that name; and a
comparison of two constants always has the same answer. Each is a mistake a reviewer
would miss, so the checker warns at the comparison.

A constant that comes in through a let is configuration, not a mistake: with
``let suspended = []``, ``agent.id in suspended`` is false until someone is suspended, and
``let strict = true`` makes ``strict == true`` a switch. So two constants and an empty
list are warned about only when the comparison's own text holds them; a let's value
still counts against a range or the subject types (no setting makes those true).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from pdp.lang import ast
from pdp.lang.analysis.walk import text, walk
from pdp.lang.errors import Diagnostic, Sources, Span
from pdp.lang.rewrite import fold
from pdp.lang.schema import SchemaModel
from pdp.lang.values import Risk

_FLIP = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "==": "==", "!=": "!="}
_ORDERS = ("<", "<=", ">", ">=", "==", "!=")


@dataclass(frozen=True)
class _Range:
    """The values an attribute can take: from ``low`` to ``high`` (None: no end)."""

    low: Any
    high: Any
    says: str  # the range in words, for the message

    def answer(self, op: str, c: Any) -> bool | None:
        """True or False when ``value OP c`` has that answer for every value; else None."""
        low, high = self.low, self.high
        outside = c < low or (high is not None and c > high)
        never = {
            "<": c <= low,
            "<=": c < low,
            ">": high is not None and c >= high,
            ">=": high is not None and c > high,
            "==": outside,
            "!=": False,
        }[op]
        always = {
            "<": high is not None and c > high,
            "<=": high is not None and c >= high,
            ">": c < low,
            ">=": c <= low,
            "==": False,
            "!=": outside,
        }[op]
        return False if never else True if always else None


_RISK = _Range(Risk.low, Risk.critical, "risk levels go from low to critical")
_DEPTH = _Range(0, None, "delegation.depth counts actors: 0 or more")


def comparison_warnings(
    rule: ast.Rule, conditions: list[ast.Expr], schema: SchemaModel, sources: Sources
) -> Iterator[Diagnostic]:
    """A warning for each comparison in ``conditions`` (lets filled in) that is constant."""
    for condition in conditions:
        for node in walk(condition):
            if isinstance(node, ast.Compare):
                found = _constant_compare(node, rule, schema)
                if found is not None:
                    answer, why, hint = found
                    word = "true" if answer else "false"
                    yield sources.diagnostic(
                        "warning",
                        f"{text(sources, node)} is always {word}: {why}",
                        node.span,
                        hint,
                    )


def _constant_compare(
    c: ast.Compare, rule: ast.Rule, schema: SchemaModel
) -> tuple[bool, str, str] | None:
    """(answer, why, hint) when ``c`` has one answer whatever the request."""
    folded = fold(c)
    written = not _from_a_let(c)
    if written and isinstance(folded, ast.Literal_) and isinstance(folded.value, bool):
        return folded.value, "both sides are constants", "compare an attribute of the request"
    if written and c.op in ("in", "contains", "intersects") and _empty(c):
        return False, "nothing is in an empty list", "list at least one value, or remove it"
    if c.op in _ORDERS:
        return _ordered(c) or _named(c, rule, schema)
    if c.op == "in":
        return _named(c, rule, schema)
    return None


def _from_a_let(c: ast.Compare) -> bool:
    """Whether part of ``c`` came in through a let: lets filled in keep the spans of
    their definition, which lie outside the comparison's own text."""
    return any(not _within(node.span, c.span) for node in walk(c) if node.span.line > 0)


def _within(inner: Span, outer: Span) -> bool:
    return (
        inner.file == outer.file
        and (outer.line, outer.column) <= (inner.line, inner.column)
        and (inner.end_line, inner.end_column) <= (outer.end_line, outer.end_column)
    )


def _empty(c: ast.Compare) -> bool:
    side = c.right if c.op == "in" else c.left
    if c.op == "intersects" and not (isinstance(side, ast.ListExpr) and not side.items):
        side = c.right
    return isinstance(side, ast.ListExpr) and not side.items


def _ordered(c: ast.Compare) -> tuple[bool, str, str] | None:
    """Risk levels and delegation depths compared with a constant outside their range."""
    for var, const, op in ((c.left, c.right, c.op), (c.right, c.left, _FLIP[c.op])):
        if not isinstance(const, ast.Literal_) or isinstance(var, ast.Literal_):
            continue
        value = const.value
        if isinstance(value, Risk):
            scale = _RISK
        elif (
            isinstance(var, ast.Path)
            and var.dotted() == "delegation.depth"
            and isinstance(value, int | float | Decimal)
            and not isinstance(value, bool)
        ):
            scale = _DEPTH
        else:
            continue
        answer = scale.answer(op, value)
        if answer is not None:
            hint = (
                "remove the comparison: it does not depend on the request"
                if answer
                else "compare with a value inside the range"
            )
            if scale is _RISK and not answer:
                hint = "to match the end of the range, use ==: agent.risk == critical"
            return answer, scale.says, hint
    return None


def _named(c: ast.Compare, rule: ast.Rule, schema: SchemaModel) -> tuple[bool, str, str] | None:
    """``subject.type`` and ``resource.type`` compared with a name they can never have."""
    if not isinstance(c.left, ast.Path) or c.op not in ("==", "!=", "in"):
        return None
    dotted = c.left.dotted()
    if dotted == "subject.type":
        known = set(schema.subject_types())
        where = "the subject types are " + ", ".join(schema.subject_types())
    elif dotted == "resource.type" and rule.target is not None and rule.target.resource_type:
        known = {rule.target.resource_type}
        where = f"this rule's target is on {rule.target.resource_type} resources"
    else:
        return None
    names = _strings(c.right)
    if names is None or not names or any(n in known for n in names):
        return None
    return c.op == "!=", where, "compare with one of those names"


def _strings(expr: ast.Expr) -> list[str] | None:
    if isinstance(expr, ast.Literal_) and isinstance(expr.value, str):
        return [expr.value]
    if isinstance(expr, ast.ListExpr):
        items = [i.value for i in expr.items if isinstance(i, ast.Literal_)]
        if len(items) == len(expr.items) and all(isinstance(i, str) for i in items):
            return items
    return None
