"""Generated Python source versus nested closures, for the same folded conditions.

The compiler had to choose between two ways of turning a condition into a callable. This
benchmark keeps the losing strategy (closures) only here, builds both for the shipped
policies' typical conditions, checks they agree on a request, and times each with
``timeit`` (best of five runs of a million calls). Ratio > 1 means closures are slower.

    python benchmarks/compile_strategies.py [--json] [--quick]
"""

from __future__ import annotations

import argparse
import json
import timeit
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from pdp.lang import ast
from pdp.lang.compiler import _Source
from pdp.lang.parser import parse_expression
from pdp.lang.rewrite import fold
from pdp.lang.values import Money, Risk
from pdp.model import Request

Fn = Callable[[Request], Any]

CONDITIONS = (
    'agent.status != "active"',
    "agent.risk < high",
    'agent.purpose == "payments" and agent.risk <= medium and context.amount <= 1000 USD',
)


def closure(node: ast.Expr) -> Fn:
    """The closure strategy, as fast as it reasonably gets (specialised small arities)."""
    if isinstance(node, ast.Literal_):
        value = node.value.value if isinstance(node.value, Risk) else node.value
        return lambda q: value
    if isinstance(node, ast.Path):
        root, parts = node.root, node.parts
        if len(parts) == 1:
            part = parts[0]
            if root == "agent":
                return lambda q: q.agent[part]
            if root == "context":
                return lambda q: q.context[part]

        def walk(q: Request) -> Any:
            base = getattr(q, root)
            for p in parts:
                base = base[p]
            return base

        return walk
    if isinstance(node, ast.BoolOp):
        fns = [closure(o) for o in node.operands]
        if node.op == "and" and len(fns) == 2:
            a, b = fns
            return lambda q: a(q) and b(q)
        if node.op == "and" and len(fns) == 3:
            a, b, c = fns
            return lambda q: a(q) and b(q) and c(q)
        if node.op == "and":
            return lambda q: all(f(q) for f in fns)
        return lambda q: any(f(q) for f in fns)
    if isinstance(node, ast.Compare) and isinstance(node.right, ast.Literal_):
        left = closure(node.left)
        right: Any = node.right.value
        if isinstance(right, Risk):
            right = int(right)
        ops: dict[str, Fn] = {
            "<": lambda q: left(q) < right,
            "<=": lambda q: left(q) <= right,
            ">": lambda q: left(q) > right,
            ">=": lambda q: left(q) >= right,
            "==": lambda q: left(q) == right,
            "!=": lambda q: left(q) != right,
        }
        return ops[node.op]
    raise TypeError(f"not covered by this benchmark: {node!r}")


def generated(node: ast.Expr) -> Fn:
    source = _Source()
    source.function("condition", source.expr(node))
    exec("\n".join(source.lines), source.namespace)
    fn: Fn = source.namespace["condition"]
    return fn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--quick", action="store_true", help="fewer calls, for a smoke test")
    args = parser.parse_args()
    calls = 20_000 if args.quick else 1_000_000
    request = Request.build(
        agent={"id": "a", "status": "active", "risk": Risk.low, "purpose": "payments"},
        action="tool.call",
        resource_type="tool",
        resource_id="payments.transfer",
        context={"amount": Money(Decimal(200), "USD")},
    )
    rows = []
    for text in CONDITIONS:
        expr = fold(parse_expression(text))
        gen, clo = generated(expr), closure(expr)
        assert gen(request) == clo(request), text
        t_gen = min(timeit.repeat(lambda g=gen: g(request), number=calls, repeat=5))  # type: ignore[misc]
        t_clo = min(timeit.repeat(lambda c=clo: c(request), number=calls, repeat=5))  # type: ignore[misc]
        rows.append(
            {
                "condition": text,
                "generated_ns": t_gen / calls * 1e9,
                "closures_ns": t_clo / calls * 1e9,
                "closures_over_generated": t_clo / t_gen,
            }
        )
    if args.json:
        print(json.dumps({"benchmark": "compile_strategies", "rows": rows}, indent=2))
        return
    print(f"{'condition':70s} {'generated':>10s} {'closures':>10s} {'ratio':>7s}")
    for row in rows:
        print(
            f"{row['condition'][:70]:70s} {row['generated_ns']:8.1f}ns {row['closures_ns']:8.1f}ns"
            f" {row['closures_over_generated']:6.2f}x"
        )


if __name__ == "__main__":
    main()
