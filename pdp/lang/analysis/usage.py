"""Declarations nothing uses: lets no rule, let or test names, and schema attributes no
rule reads.

An attribute counts as read when a rule reads it or asks ``has`` about it, directly or
through a let, and a resource attribute also when the bundle's resource catalog sets it
(what the catalog sets must be declared; the loader drops those warnings by
:func:`unused_key`). A policy test that sets one does not count: no decision depends on
it. The ``agent`` and ``user`` blocks and ``resource tool`` are left out: the directory
fills agents' and users' attributes and the MCP proxy tools', whatever the rules read,
and declaring them is how a bundle types those values.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence

from pdp.lang import ast
from pdp.lang.analysis.walk import rule_exprs, walk, word_span
from pdp.lang.errors import Diagnostic, Sources
from pdp.lang.rewrite import inline_lets
from pdp.lang.schema import BUILTINS

LetKey = tuple[str, str]
# Blocks whose attributes something other than rules needs declared.
FILLED_FOR_RULES = ("agent", "user")


def _names(modules: Sequence[ast.Module]) -> set[LetKey]:
    """Every (package, let) a rule, another let or a test refers to."""
    used: set[LetKey] = set()

    def note(package: str, expr: ast.Expr, own: str = "") -> None:
        for node in walk(expr):
            if isinstance(node, ast.Name) and node.name != own:
                used.add((package, node.name))

    for module in modules:
        for rule in module.rules:
            for expr in rule_exprs(rule):
                note(rule.package, expr)
        for let in module.lets:
            note(let.package, let.expr, let.name)
        for test in module.tests:
            fields = [f for r in test.records for f in r.fields]
            fields += [f for s in test.steps for f in s.context]
            for f in fields:
                note(test.package, f.value)
    return used


def unused_lets(modules: Sequence[ast.Module], sources: Sources) -> Iterator[Diagnostic]:
    used = _names(modules)
    seen: set[LetKey] = set()
    for let in (item for m in modules for item in m.lets):
        key = (let.package, let.name)
        if key in used or key in seen:
            continue
        seen.add(key)
        yield sources.diagnostic(
            "warning",
            f"let {let.name} is never used",
            word_span(sources, let.span, rf"\blet\s+({re.escape(let.name)})\b"),
            "use it in a rule or a test, or remove it",
        )


def _reads(modules: Sequence[ast.Module], lets: Mapping[LetKey, ast.Expr]) -> set[tuple[str, str]]:
    """Every (root, attribute) a rule reads or asks ``has`` about; tool.X is resource.X."""
    reads: set[tuple[str, str]] = set()
    for rule in (r for m in modules for r in m.rules):
        for expr in rule_exprs(rule):
            for node in walk(inline_lets(expr, rule.package, lets)):
                if isinstance(node, ast.Path) and node.parts:
                    reads.add((node.root, node.parts[0]))
                elif (
                    isinstance(node, ast.Has)
                    and isinstance(node.base, ast.Path)
                    and not node.base.parts
                ):
                    reads.add((node.base.root, node.name))
    return {("resource" if root == "tool" else root, name) for root, name in reads}


def unused_attributes(
    modules: Sequence[ast.Module], lets: Mapping[LetKey, ast.Expr], sources: Sources
) -> Iterator[Diagnostic]:
    reads = _reads(modules, lets)
    seen: set[tuple[str, str, str]] = set()
    for decl in (e for m in modules for s in m.schemas for e in s.entities):
        if decl.kind in FILLED_FOR_RULES or decl.resource_type == ast.TOOL_TYPE:
            continue
        for attr in decl.attrs:
            key = (decl.kind, decl.resource_type or "", attr.name)
            builtin = attr.name in BUILTINS[decl.kind]
            if builtin or (decl.kind, attr.name) in reads or key in seen:
                continue
            seen.add(key)
            block = f"{decl.kind} {decl.resource_type}" if decl.resource_type else decl.kind
            yield sources.diagnostic(
                "warning",
                f"{decl.kind}.{attr.name} is declared but no rule reads it",
                word_span(sources, attr.span, rf"\b({re.escape(attr.name)})\b"),
                f"remove it from {block} {{ … }}, or read it in a rule (a policy test "
                "that sets it does not count)",
                key=unused_key(decl.kind, decl.resource_type, attr.name),
            )


def unused_key(kind: str, resource_type: str | None, name: str) -> str:
    """The key of the warning that an attribute is unused: a loader that finds the
    attribute in the resource catalog drops the warning by it."""
    return f"unused {kind} {resource_type or ''}.{name}"
