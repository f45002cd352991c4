"""No import circles between Tessera's modules (docs/architecture.md).

The other rules of the architecture are import-linter contracts (`lint-imports`, run by
`make lint`); its one contract about cycles checks sibling packages, which is both more
and less than this rule, so the module graph is checked here. Every import counts: at the
top of a module, inside a function, and behind ``if TYPE_CHECKING:``, for a circle only
the type checker sees still ties two modules together.
"""

from __future__ import annotations

from collections.abc import Iterator

import grimp
import pytest

PACKAGES = ("pdp", "issuer", "pep")


def test_no_module_imports_itself_through_others() -> None:
    graph = grimp.build_graph(*PACKAGES, cache_dir=None)
    circles = [describe(graph, group) for group in circular_groups(graph)]
    if circles:
        pytest.fail("import circles:\n\n" + "\n\n".join(circles), pytrace=False)


def test_a_circle_is_found_and_shown_with_its_lines() -> None:
    graph = grimp.ImportGraph()
    for importer, imported, line in [
        ("a.x", "a.y", 3),
        ("a.y", "a.z", 4),
        ("a.z", "a.x", 5),
        ("a.w", "a.x", 6),
        ("a.z", "a.v", 7),
    ]:
        graph.add_import(
            importer=importer, imported=imported, line_number=line, line_contents="import"
        )
    assert circular_groups(graph) == [["a.x", "a.y", "a.z"]]
    assert describe(graph, ["a.x", "a.y", "a.z"]).splitlines() == [
        "a.x -> a.y -> a.z -> a.x",
        "imports inside the circle (remove some to break it):",
        "  a.x -> a.y (l.3)",
        "  a.y -> a.z (l.4)",
        "  a.z -> a.x (l.5)",
    ]


def circular_groups(graph: grimp.ImportGraph) -> list[list[str]]:
    """Each set of two or more modules that import one another (Tarjan's components)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []
    for root in sorted(graph.modules):
        if root in index:
            continue
        # An explicit stack of (module, its imports still to visit): recursion would be
        # bounded by the depth of the import chains.
        work: list[tuple[str, Iterator[str]]] = []
        _enter(graph, root, index, low, stack, work)
        while work:
            module, imported = work[-1]
            following = next(imported, None)
            if following is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[module])
                if low[module] == index[module]:
                    group = _pop_group(stack, module)
                    if len(group) > 1:
                        groups.append(sorted(group))
            elif following not in index:
                _enter(graph, following, index, low, stack, work)
            elif following in stack:
                low[module] = min(low[module], index[following])
    return sorted(groups)


def _enter(
    graph: grimp.ImportGraph,
    module: str,
    index: dict[str, int],
    low: dict[str, int],
    stack: list[str],
    work: list[tuple[str, Iterator[str]]],
) -> None:
    index[module] = low[module] = len(index)
    stack.append(module)
    work.append((module, iter(sorted(graph.find_modules_directly_imported_by(module)))))


def _pop_group(stack: list[str], module: str) -> list[str]:
    group: list[str] = []
    while not group or group[-1] != module:
        group.append(stack.pop())
    return group


def describe(graph: grimp.ImportGraph, group: list[str]) -> str:
    """One circle through the group's first module, then every import inside the group."""
    first = group[0]
    members = set(group)
    returns = [
        graph.find_shortest_chain(importer=imported, imported=first)
        for imported in sorted(graph.find_modules_directly_imported_by(first) & members)
    ]
    circle = (first, *min((c for c in returns if c), key=len))
    lines = [" -> ".join(circle), "imports inside the circle (remove some to break it):"]
    for importer in group:
        for imported in sorted(graph.find_modules_directly_imported_by(importer) & members):
            details = graph.get_import_details(importer=importer, imported=imported)
            where = ", ".join(f"l.{d['line_number']}" for d in details)
            lines.append(f"  {importer} -> {imported} ({where})")
    return "\n".join(lines)
