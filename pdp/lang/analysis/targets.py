"""Whether one rule's target covers another's: every request the narrow one matches, the
wide one matches too. Lets must be inlined first; a pattern read from the request or
otherwise unknown covers nothing, so the answer errs towards "no"."""

from __future__ import annotations

from pdp.lang import ast
from pdp.lang.runtime import glob, is_glob


def covers(wide: ast.Target | None, narrow: ast.Target | None) -> bool:
    """Whether ``wide`` matches every request ``narrow`` matches (None: no target)."""
    if wide is None or wide == narrow:
        return True
    if narrow is None:
        return False
    if not _all_covered(_actions(wide), _actions(narrow)):
        return False
    if wide.resource_type is not None and wide.resource_type != narrow.resource_type:
        return False
    if wide.resource is None:
        return True
    return narrow.resource is not None and _all_covered(
        _names(wide.resource), _names(narrow.resource)
    )


def _actions(target: ast.Target) -> list[str] | None:
    if target.form == "call":
        return [ast.CALL_ACTION]
    return ["*"] if target.action is None else _names(target.action)


def _names(pattern: ast.Pattern) -> list[str] | None:
    """The names or globs a pattern lists; None when they are not all constant strings."""
    expr = pattern.expr
    items = expr.items if isinstance(expr, ast.ListExpr) else (expr,)
    names = [i.value for i in items if isinstance(i, ast.Literal_)]
    if len(names) != len(items) or not all(isinstance(n, str) for n in names):
        return None
    return names


def _all_covered(wide: list[str] | None, narrow: list[str] | None) -> bool:
    if wide is None or narrow is None:
        return False
    return all(any(_covers(w, n) for w in wide) for n in narrow)


def _covers(wide: str, narrow: str) -> bool:
    """Whether the glob ``wide`` matches every name the glob (or name) ``narrow`` does."""
    if not is_glob(narrow):
        return glob(wide)(narrow) is not None
    if wide == narrow or wide == "*":
        return True
    # A prefix glob covers any glob that starts with the same prefix.
    prefix = wide[:-1]
    return wide.endswith("*") and not is_glob(prefix) and narrow.startswith(prefix)
