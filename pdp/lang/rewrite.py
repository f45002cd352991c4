"""Tree rewrites shared by the checker and the compiler: let substitution and folding.

Folding is exact: it evaluates constant sub-expressions with the interpreter's own
:func:`~pdp.lang.runtime.compare`, and it keeps every operand that could still raise
an error when reached (``x and false`` stays as it is), so a folded expression means what
the original means.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import assert_never

from pdp.lang import ast
from pdp.lang.functions import call
from pdp.lang.runtime import EvalError, compare
from pdp.lang.values import CurrencyMismatch

Lets = Mapping[tuple[str, str], ast.Expr]


def substitute(expr: ast.Expr, replace: Callable[[ast.Name], ast.Expr]) -> ast.Expr:
    """Rebuild ``expr`` with each Name replaced; unchanged leaves are shared, not copied."""
    if isinstance(expr, ast.Name):
        return replace(expr)
    if isinstance(expr, ast.Literal_ | ast.Path | ast.Flag):
        return expr
    if isinstance(expr, ast.ListExpr):
        items = tuple(substitute(i, replace) for i in expr.items)
        return expr if _same(items, expr.items) else dataclasses.replace(expr, items=items)
    if isinstance(expr, ast.MapExpr):
        entries = tuple((k, substitute(v, replace)) for k, v in expr.entries)
        if _same([v for _, v in entries], [v for _, v in expr.entries]):
            return expr
        return dataclasses.replace(expr, entries=entries)
    if isinstance(expr, ast.Not):
        operand = substitute(expr.operand, replace)
        return expr if operand is expr.operand else dataclasses.replace(expr, operand=operand)
    if isinstance(expr, ast.BoolOp):
        operands = tuple(substitute(o, replace) for o in expr.operands)
        return (
            expr if _same(operands, expr.operands) else dataclasses.replace(expr, operands=operands)
        )
    if isinstance(expr, ast.Compare):
        left = substitute(expr.left, replace)
        right = substitute(expr.right, replace)
        if left is expr.left and right is expr.right:
            return expr
        return dataclasses.replace(expr, left=left, right=right)
    if isinstance(expr, ast.Has):
        base = substitute(expr.base, replace)
        return expr if base is expr.base else dataclasses.replace(expr, base=base)
    if isinstance(expr, ast.Call):
        args = tuple(substitute(a, replace) for a in expr.args)
        return expr if _same(args, expr.args) else dataclasses.replace(expr, args=args)
    assert_never(expr)


def _same(new: Sequence[ast.Expr], old: Sequence[ast.Expr]) -> bool:
    """Whether a rewrite left every child as it was (then the parent is kept, not copied)."""
    return all(a is b for a, b in zip(new, old, strict=True))


def inline_lets(expr: ast.Expr, package: str, lets: Lets) -> ast.Expr:
    """``expr`` with every let of ``package`` replaced by its expression, transitively.

    Names that are not lets of the package are left as they are (the checker reports
    them). Lets must be free of cycles, which the checker guarantees.
    """

    def replace(name: ast.Name) -> ast.Expr:
        target = lets.get((package, name.name))
        return name if target is None else inline_lets(target, package, lets)

    return substitute(expr, replace)


def fold(expr: ast.Expr) -> ast.Expr:
    """Fold constant sub-expressions, keeping every error a reached operand could raise."""
    if isinstance(expr, ast.ListExpr):
        items = tuple(fold(i) for i in expr.items)
        if all(isinstance(i, ast.Literal_) for i in items):
            values = tuple(i.value for i in items if isinstance(i, ast.Literal_))
            return ast.Literal_(values, expr.span)
        return expr if _same(items, expr.items) else dataclasses.replace(expr, items=items)
    if isinstance(expr, ast.MapExpr):
        entries = tuple((k, fold(v)) for k, v in expr.entries)
        if all(isinstance(v, ast.Literal_) for _, v in entries):
            mapping = {k: v.value for k, v in entries if isinstance(v, ast.Literal_)}
            return ast.Literal_(mapping, expr.span)
        return dataclasses.replace(expr, entries=entries)
    if isinstance(expr, ast.Not):
        operand = fold(expr.operand)
        if isinstance(operand, ast.Literal_):
            return ast.Literal_(not operand.value, expr.span)
        return expr if operand is expr.operand else dataclasses.replace(expr, operand=operand)
    if isinstance(expr, ast.BoolOp):
        decisive = expr.op == "or"  # the constant that settles the whole expression
        kept: list[ast.Expr] = []
        for operand in (fold(o) for o in expr.operands):
            if isinstance(operand, ast.Literal_):
                if bool(operand.value) is decisive:
                    kept.append(operand)
                    break
                continue  # a neutral constant changes nothing
            kept.append(operand)
        if not kept:
            return ast.Literal_(not decisive, expr.span)
        if len(kept) == 1:
            return kept[0]
        if len(kept) == len(expr.operands) and _same(kept, expr.operands):
            return expr
        return dataclasses.replace(expr, operands=tuple(kept))
    if isinstance(expr, ast.Compare):
        left, right = fold(expr.left), fold(expr.right)
        if isinstance(left, ast.Literal_) and isinstance(right, ast.Literal_):
            try:
                return ast.Literal_(compare(expr.op, left.value, right.value), expr.span)
            except (EvalError, CurrencyMismatch, TypeError):
                pass  # keep it: it errors at run time, as the interpreter says
        if left is expr.left and right is expr.right:
            return expr
        return dataclasses.replace(expr, left=left, right=right)
    if isinstance(expr, ast.Has):
        base = fold(expr.base)
        return expr if base is expr.base else dataclasses.replace(expr, base=base)
    if isinstance(expr, ast.Call):
        return _fold_call(expr)
    return expr


def _fold_call(expr: ast.Call) -> ast.Expr:
    """A call of constants is its value (``hour(time("…"))``); one that fails stays, to
    fail at run time as the interpreter says."""
    args = tuple(fold(a) for a in expr.args)
    if all(isinstance(a, ast.Literal_) for a in args):
        values = tuple(a.value for a in args if isinstance(a, ast.Literal_))
        try:
            return ast.Literal_(call(expr.name, values), expr.span)
        except (EvalError, TypeError, ValueError):
            pass
    return expr if _same(args, expr.args) else dataclasses.replace(expr, args=args)


def constant(expr: ast.Expr) -> ast.Literal_ | None:
    """The folded literal ``expr`` always equals, or None when a request can change it."""
    folded = fold(expr)
    return folded if isinstance(folded, ast.Literal_) else None
