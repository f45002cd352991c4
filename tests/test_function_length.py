"""Every function of Tessera fits on a screen: at most 60 lines, or a reason to be longer.

A function's length runs from its ``def`` line to its last line, docstring included and
decorators apart; a nested function counts on its own, and as part of the one holding it.
The generated gRPC stubs (``pdp/serve/proto/``) are not Tessera's to shape. A function
that must stay longer is named in :data:`ALLOWED` with the reason it is one function.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

LIMIT = 60
ROOT = Path(__file__).parents[1]
PACKAGES = ("pdp", "issuer", "pep")
GENERATED = ("pdp/serve/proto/",)  # a folder: protogen.py beside it is ours

ALLOWED = {
    "pdp.engine.Engine.decide": (
        "the hot path (~1.4 µs a decision): loops inlined with early returns, for a call "
        "per step would cost more than the steps"
    ),
}


@dataclass(frozen=True)
class Function:
    """One function or method: where it is and how many lines it spans."""

    name: str  # the module's dotted name, then the classes and functions holding it
    path: str
    line: int
    lines: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.name} is {self.lines} lines"


def test_every_function_fits_on_a_screen() -> None:
    long = [f for f in package_functions() if f.lines > LIMIT and f.name not in ALLOWED]
    if long:
        listed = "\n".join(f"  {f}" for f in sorted(long, key=lambda f: -f.lines))
        pytest.fail(
            f"functions longer than {LIMIT} lines:\n{listed}\n"
            "Split each by what its parts do, or name it in ALLOWED with the reason it is "
            "one function.",
            pytrace=False,
        )


def test_every_allowed_function_is_still_there_and_long() -> None:
    lengths = {f.name: f.lines for f in package_functions()}
    stale = [name for name in ALLOWED if lengths.get(name, 0) <= LIMIT]
    assert stale == [], f"remove from ALLOWED, they are gone or short now: {stale}"


def test_a_long_function_is_found_with_its_place_even_nested_in_a_class() -> None:
    body = "\n".join(f"        x{n} = {n}" for n in range(LIMIT))
    source = (
        "class Plan:\n"
        "    @staticmethod\n"
        "    def short() -> None:\n"
        "        pass\n"
        "\n"
        "    async def long(self) -> None:\n"
        f"{body}\n"
        "\n"
        "def outer() -> None:\n"
        "    def inner() -> None:\n"
        "        pass\n"
    )
    found = functions(source, "pdp.plan", "pdp/plan.py")
    assert [(f.name, f.line, f.lines) for f in found] == [
        ("pdp.plan.Plan.short", 3, 2),
        ("pdp.plan.Plan.long", 6, LIMIT + 1),
        ("pdp.plan.outer", LIMIT + 8, 3),
        ("pdp.plan.outer.inner", LIMIT + 9, 2),
    ]
    assert str(found[1]) == f"pdp/plan.py:6: pdp.plan.Plan.long is {LIMIT + 1} lines"


def package_functions() -> Iterator[Function]:
    """Every function of Tessera's packages, but for the generated code."""
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            if relative.startswith(GENERATED):
                continue
            parts = path.relative_to(ROOT).with_suffix("").parts
            module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            yield from functions(path.read_text(encoding="utf-8"), module, relative)


def functions(source: str, module: str, path: str) -> list[Function]:
    """Each function defined in ``source``, at any depth, in the order they are written."""
    work: list[tuple[ast.AST, str]] = [(ast.parse(source, path), module)]
    found: list[Function] = []
    while work:
        node, prefix = work.pop()
        for child in ast.iter_child_nodes(node):
            name = prefix
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = f"{prefix}.{child.name}"
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (child.end_lineno or child.lineno) - child.lineno + 1
                found.append(Function(name, path, child.lineno, lines))
            work.append((child, name))
    return sorted(found, key=lambda f: f.line)
