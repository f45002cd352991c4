"""Warnings about policies that type-check but do not mean what their author meant.

The checker runs this once a bundle has no errors: comparisons whose answer is fixed
(:mod:`.comparisons`), forbids that deny whenever an attribute is absent
(:mod:`.presence`), and declarations nothing uses (:mod:`.usage`). Permits shadowed by a
wider forbid are the checker's (it knows which rules are unconditional), with the target
coverage of :mod:`.targets`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pdp.lang import ast
from pdp.lang.analysis.comparisons import comparison_warnings
from pdp.lang.analysis.presence import absence_warnings
from pdp.lang.analysis.usage import unused_attributes, unused_lets
from pdp.lang.errors import Diagnostic, Sources
from pdp.lang.rewrite import fold, inline_lets
from pdp.lang.schema import SchemaModel

LetKey = tuple[str, str]


def analyse(
    modules: Sequence[ast.Module],
    schema: SchemaModel,
    lets: Mapping[LetKey, ast.Expr],
    sources: Sources,
    never_apply: frozenset[int] = frozenset(),
) -> list[Diagnostic]:
    """Every warning of the analyses, each place once (a let used twice is one place)."""
    out: list[Diagnostic] = []
    for rule in (r for m in modules for r in m.rules):
        if id(rule) in never_apply:
            continue  # already warned about: it never applies
        when, unless = (
            None if e is None else inline_lets(e, rule.package, lets)
            for e in (rule.when, rule.unless)
        )
        conditions = [e for e in (when, unless) if e is not None]
        conditions += [
            inline_lets(r.condition, rule.package, lets)
            for r in rule.requires
            if r.condition is not None
        ]
        # A clause that is constant as a whole is the checker's to report (it never
        # applies, or it is unconditional), not each comparison in it.
        varying = [c for c in conditions if not isinstance(fold(c), ast.Literal_)]
        out.extend(comparison_warnings(rule, varying, schema, sources))
        out.extend(absence_warnings(rule, when, unless, sources))
    out.extend(unused_lets(modules, sources))
    out.extend(unused_attributes(modules, lets, sources))
    return _once(out)


def _once(diagnostics: list[Diagnostic]) -> list[Diagnostic]:
    seen: set[tuple[str, object]] = set()
    kept = []
    for d in diagnostics:
        if (d.message, d.span) not in seen:
            seen.add((d.message, d.span))
            kept.append(d)
    return kept
