"""Which rules of a bundle its policy tests exercise: ``tessera test --coverage``.

A rule is *hit* by a test when, at some repetition of some step of that test, the rule's
target covers the step's request, its ``when`` holds and its ``unless`` does not: the
reference interpreter finds that it applies, waits on an obligation, or is over one of
its limits. Each rule is evaluated on its own, with the test's counters and clock as the
engine is about to decide, so a permit that a forbid overrides is hit when it matched
(the engine never evaluates it). A rule whose evaluation fails (an absent attribute) is
not hit: the test reached it, but not its conditions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from pdp.engine import Bundle, Engine
from pdp.interpreter import Interpreter
from pdp.lang import ast
from pdp.lang.values import quote
from pdp.model import Request

# The interpreter's outcomes of a rule whose target and conditions held.
HIT_OUTCOMES = frozenset({"applies", "requires", "over limit"})

# How many test names a line of the terminal report shows before "and N more".
SHOWN_TESTS = 3


@dataclass(frozen=True)
class RuleCoverage:
    """One rule and the names of the tests that hit it, in the order they ran."""

    rule: ast.Rule
    tests: tuple[str, ...]

    @property
    def hit(self) -> bool:
        return bool(self.tests)


@dataclass(frozen=True)
class CoverageReport:
    """Every rule of a bundle, in bundle order, with the tests that hit it."""

    rules: tuple[RuleCoverage, ...]

    @property
    def hit(self) -> int:
        return sum(1 for rule in self.rules if rule.hit)

    @property
    def missed(self) -> tuple[RuleCoverage, ...]:
        return tuple(rule for rule in self.rules if not rule.hit)

    @property
    def percent(self) -> float:
        """The share of rules hit, in percent; a bundle without rules is fully covered."""
        return 100.0 * self.hit / len(self.rules) if self.rules else 100.0

    def below(self, minimum: float) -> bool:
        """Whether fewer than ``minimum`` percent of the rules were hit (exactly, with no
        rounding: 2 of 3 rules is below 66.67)."""
        return self.hit * 100 < minimum * len(self.rules)

    def to_json(self) -> dict[str, Any]:
        return {
            "hit": self.hit,
            "total": len(self.rules),
            "percent": self.percent,
            "rules": [
                {
                    "id": entry.rule.id,
                    "effect": entry.rule.effect,
                    "where": str(entry.rule.span),
                    "tests": list(entry.tests),
                }
                for entry in self.rules
            ],
        }


class Coverage:
    """Collects hits while tests run: pass :meth:`observe` to ``run_tests``."""

    def __init__(self, bundle: Bundle) -> None:
        self.bundle = bundle
        # by rule position: the tests that hit it, keyed by identity (names may repeat)
        self._hits: list[dict[int, ast.Test]] = [{} for _ in bundle.rules]

    def observe(self, test: ast.Test, request: Request, engine: Engine) -> None:
        """Evaluate every rule not yet hit by ``test`` on this request, at the engine's
        clock and with its counters, recording nothing."""
        bundle = self.bundle
        interpreter = Interpreter(
            bundle.rules, bundle.lets, bundle.version, engine.counters, engine.clock
        )
        now = engine.clock()
        for position, rule in enumerate(bundle.rules):
            hits = self._hits[position]
            if id(test) in hits:
                continue
            if interpreter.evaluate_rule(rule, request, now).outcome in HIT_OUTCOMES:
                hits[id(test)] = test

    def report(self) -> CoverageReport:
        return CoverageReport(
            tuple(
                RuleCoverage(rule, tuple(t.name for t in hits.values()))
                for rule, hits in zip(self.bundle.rules, self._hits, strict=True)
            )
        )


def render_percent(report: CoverageReport) -> str:
    """The share of rules hit, rounded down to a tenth so that 99.96% never shows as 100%."""
    shown = math.floor(report.percent * 10) / 10
    return f"{shown:g}%"


def render_coverage(report: CoverageReport) -> list[str]:
    """The terminal report: each rule, where it is, and the tests that hit it (or not)."""
    lines = ["coverage (rules, and the tests that hit them):"]
    for entry in report.rules:
        rule = entry.rule
        lines.append(f"  {'hit ' if entry.hit else 'MISS'}  {rule.effect} {rule.id}  ({rule.span})")
        if entry.hit:
            shown = ", ".join(quote(name) for name in entry.tests[:SHOWN_TESTS])
            more = len(entry.tests) - SHOWN_TESTS
            lines.append(f"        by {shown}" + (f" and {more} more" if more > 0 else ""))
    lines.append(f"{report.hit} of {len(report.rules)} rules hit ({render_percent(report)})")
    return lines
