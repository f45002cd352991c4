"""What a hover over a `.pol` file shows: an attribute's schema type, a let's value and
type, a rule's summary (Markdown)."""

from __future__ import annotations

from collections.abc import Iterable

from pdp.lang import ast
from pdp.lang.checker import CheckResult
from pdp.lang.errors import PolicyError, source_lines
from pdp.lang.formatter import format_expr, format_source
from pdp.lang.schema import SchemaModel, Type
from pdp.lsp.navigate import Found, LetName, RuleRef, find_let, find_rule


def hover_text(found: Found, modules: Iterable[ast.Module], result: CheckResult) -> str | None:
    """The Markdown for the node under the cursor (typed as the checker typed the bundle);
    None when there is nothing to say."""
    schema = result.schema
    modules = list(modules)
    node = found.node
    package = getattr(found.item, "package", "")
    if isinstance(node, ast.Path):
        resource_type = None
        if isinstance(found.item, ast.Rule) and found.item.target is not None:
            resource_type = found.item.target.resource_type
        shown = path_type(node, schema, resource_type)
        what = f"`{shown}`" if shown is not None else "not declared in the schema"
        return f"`{node.dotted()}`: {what}"
    if isinstance(node, ast.Name | LetName):
        let = node.let if isinstance(node, LetName) else find_let(modules, package, node.name)
        return None if let is None else _let(let, modules, result)
    if isinstance(node, ast.Rule):
        return _rule(node, modules)
    if isinstance(node, RuleRef):
        rule = find_rule(modules, node.package, node.name)
        return None if rule is None else _rule(rule, modules)
    return None


def path_type(path: ast.Path, schema: SchemaModel, resource_type: str | None) -> Type | None:
    """The schema type of an attribute path (None when the schema has no such path)."""
    if path.root == "action":
        return Type("string") if not path.parts else None
    attrs = schema.root_attrs(path.root, resource_type)
    if attrs is None or not path.parts:
        return None
    found = attrs.get(path.parts[0])
    for _ in path.parts[1:]:
        if found is None or found.name != "map":
            return None
        found = found.arg
    return found


def _let(let: ast.Let, modules: list[ast.Module], result: CheckResult) -> str:
    shown = result.let_types.get((let.package, let.name))
    head = f"let `{let.name}`" + (f": `{shown}`" if shown is not None else "")
    return f"{head}\n\n```tessera\n{_item_text(let, modules)}\n```"


def _rule(rule: ast.Rule, modules: list[ast.Module]) -> str:
    where = f"{rule.name_span.file}:{rule.name_span.line}"
    return f"{rule.effect} `{rule.id}` ({where})\n\n```tessera\n{_item_text(rule, modules)}\n```"


def _item_text(item: ast.Let | ast.Rule, modules: list[ast.Module]) -> str:
    """An item in canonical form (its own source text, formatted)."""
    source = next((m.source for m in modules if m.path == item.span.file), "")
    lines = source_lines(source)[item.span.line - 1 : item.span.end_line]
    if lines:
        lines[-1] = lines[-1][: item.span.end_column - 1]
        lines[0] = lines[0][item.span.column - 1 :]
    text = "\n".join(lines)
    try:
        return format_source(text).rstrip("\n")
    except PolicyError:
        if isinstance(item, ast.Let):
            return f"let {item.name} = {format_expr(item.expr)}"
        return text
