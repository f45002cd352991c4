"""Forbids that deny whenever an attribute is absent, perhaps without meaning to.

Reading an attribute a request lacks is an error, and a forbid that errors denies (fail
closed). So ``forbid f when agent.status != "active"`` also denies every request whose
agent has no status. That may be the intent; the checker asks the author to say so
(``not (agent has status) or …``) or to guard the read (``agent has status and …``).

An attribute is always present when every request has it: ``action``, ``subject.type``
and ``subject.id``, ``resource.type`` and ``resource.id``, the ``delegation`` facts,
``agent.id`` (a request about a person has no agent at all: rules meant for agents say
``subject.type == "agent"``), and ``tool.name`` in a rule that targets tools. Everything
else may be absent: the directory fills an agent's status, type, roles, groups, scopes
and labels, but a request decided without one (``tessera eval``, policy tests, a PDP
without a store, a person the directory does not know) carries only what its caller
sent, and ``user.*`` is absent whenever an agent acts alone. ``user.id`` is known present
where the agent is ``delegated`` or the subject is a person (``subject.type == "user"``,
``subject.type in ["user", "identity"]``): a person's request always names them.
"""

from __future__ import annotations

from collections.abc import Iterator

from pdp.lang import ast
from pdp.lang.analysis.walk import text
from pdp.lang.errors import Diagnostic, Sources
from pdp.lang.schema import PERSONS

Attr = tuple[str, str]

ALWAYS_PRESENT: frozenset[Attr] = frozenset(
    {
        ("subject", "type"),
        ("subject", "id"),
        ("resource", "type"),
        ("resource", "id"),
        ("delegation", "delegated"),
        ("delegation", "depth"),
        ("delegation", "chain"),
        ("agent", "id"),
    }
)


def facts(expr: ast.Expr, value: bool) -> frozenset[Attr]:
    """The attributes known present once ``expr`` has evaluated to ``value``."""
    if isinstance(expr, ast.Has) and value and isinstance(expr.base, ast.Path):
        base = expr.base
        return frozenset({(base.root, base.parts[0]) if base.parts else (base.root, expr.name)})
    if isinstance(expr, ast.Flag) and value and expr.kind == "delegated":
        return frozenset({("user", "id")})  # an agent acting for a user has one
    if isinstance(expr, ast.Compare) and _is_person(expr, value):
        return frozenset({("user", "id")})  # a person as the subject has one
    if isinstance(expr, ast.Not):
        return facts(expr.operand, not value)
    if isinstance(expr, ast.BoolOp) and (expr.op == "and") == value:
        # `a and b` true: both were; `a or b` false: both were false.
        return frozenset().union(*(facts(o, value) for o in expr.operands))
    return frozenset()


def _is_person(compare: ast.Compare, value: bool) -> bool:
    """Whether ``compare`` evaluating to ``value`` means the subject is a person."""
    left, right = compare.left, compare.right
    if compare.op in ("==", "!=") and (compare.op == "==") == value:
        if _is_subject_type(right):
            left, right = right, left
        return _is_subject_type(left) and _is_person_name(right)
    if compare.op == "in" and value and isinstance(right, ast.ListExpr):
        items = right.items
        return _is_subject_type(left) and bool(items) and all(map(_is_person_name, items))
    return False


def _is_subject_type(expr: ast.Expr) -> bool:
    return isinstance(expr, ast.Path) and expr.root == "subject" and expr.parts == ("type",)


def _is_person_name(expr: ast.Expr) -> bool:
    return isinstance(expr, ast.Literal_) and expr.value in PERSONS


def _reads(
    expr: ast.Expr, known: frozenset[Attr], compare: ast.Compare | None
) -> Iterator[tuple[ast.Path, ast.Expr, frozenset[Attr]]]:
    """Each path ``expr`` reads, the expression to quote with it and what guards it."""
    if isinstance(expr, ast.Has):
        if isinstance(expr.base, ast.Path) and len(expr.base.parts) > 1:
            yield expr.base, compare or expr, known
        return
    if isinstance(expr, ast.Path):
        yield expr, compare or expr, known
        return
    if isinstance(expr, ast.BoolOp):
        guard = known
        for operand in expr.operands:
            yield from _reads(operand, guard, None)
            # The next operand runs only when this one was true (and) or false (or).
            guard = guard | facts(operand, expr.op == "and")
        return
    if isinstance(expr, ast.Not):
        yield from _reads(expr.operand, known, None)
        return
    if isinstance(expr, ast.Compare):
        for side in (expr.left, expr.right):
            yield from _reads(side, known, expr)
        return
    if isinstance(expr, ast.ListExpr):
        for item in expr.items:
            yield from _reads(item, known, compare)
    elif isinstance(expr, ast.MapExpr):
        for _, value in expr.entries:
            yield from _reads(value, known, compare)


def _present(path: ast.Path, rule: ast.Rule, known: frozenset[Attr]) -> bool:
    if path.root == "action" or not path.parts:
        return True
    attr = (path.root, path.parts[0])
    if attr in ALWAYS_PRESENT or attr in known:
        return True
    if path.root == "tool":
        on_tools = rule.target is not None and rule.target.resource_type == ast.TOOL_TYPE
        return (path.parts[0] == "name" and on_tools) or ("tool", path.parts[0]) in known
    return False


def absence_warnings(
    rule: ast.Rule, when: ast.Expr | None, unless: ast.Expr | None, sources: Sources
) -> Iterator[Diagnostic]:
    """One warning per attribute a forbid reads without knowing it is present."""
    if rule.effect != "forbid":
        return
    reads = list(_reads(when, frozenset(), None)) if when is not None else []
    if unless is not None:
        # unless runs only when `when` held.
        known = facts(when, True) if when is not None else frozenset()
        reads += _reads(unless, known, None)
    warned: set[Attr] = set()
    for path, quoted, known in reads:
        attr = (path.root, path.parts[0]) if path.parts else (path.root, "")
        if attr in warned or _present(path, rule, known):
            continue
        warned.add(attr)
        yield _warning(rule, path, text(sources, quoted), sources)


def _warning(rule: ast.Rule, path: ast.Path, quoted: str, sources: Sources) -> Diagnostic:
    root, name = path.root, path.parts[0]
    return sources.diagnostic(
        "warning",
        f"forbid {rule.name} denies every request that lacks {root}.{name}: reading an "
        "absent attribute fails, and a forbid that fails denies",
        path.span,
        f"if that is meant, say so: not ({root} has {name}) or {quoted}; "
        f"if not, guard it: {root} has {name} and {quoted}",
    )
