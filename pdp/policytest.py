"""Run the ``test "…" { … }`` blocks of a bundle against its compiled engine.

Each test gets a fresh engine with its own counters and a fixed clock, so ``limit``
steps accumulate within a test and never leak into the next one. A failure carries the
decision trace so the author sees why.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pdp.catalog import catalogued
from pdp.counters import MemoryCounters
from pdp.engine import Bundle, Engine
from pdp.lang import ast
from pdp.lang.errors import Span
from pdp.lang.rewrite import fold, inline_lets
from pdp.model import Decision, Request, RequestError, json_value
from pdp.request import request_from_json

# Every test runs at this instant (2027-01-15T08:00:00Z), so results never depend on the day.
TEST_CLOCK = 1_800_000_000.0


@dataclass(frozen=True)
class TestFailure:
    step: int
    repetition: int
    message: str
    request: Request | None = None
    decision: Decision | None = None


@dataclass(frozen=True)
class TestResult:
    test: ast.Test
    failure: TestFailure | None

    @property
    def passed(self) -> bool:
        return self.failure is None

    @property
    def span(self) -> Span:
        return self.test.span


def run_tests(bundle: Bundle) -> list[TestResult]:
    """Run every test of the bundle, in file order."""
    return [run_test(bundle, test) for test in bundle.tests]


def run_test(bundle: Bundle, test: ast.Test) -> TestResult:
    engine = Engine(bundle, MemoryCounters(), clock=lambda: TEST_CLOCK)
    records: dict[str, ast.Record] = {record.kind: record for record in test.records}
    for number, step in enumerate(test.steps, start=1):
        try:
            request = build_request(bundle, test, records, step)
        except (RequestError, ValueError) as exc:
            return TestResult(test, TestFailure(number, 1, f"the test's request is invalid: {exc}"))
        for repetition in range(1, step.times + 1):
            decision = engine.decide(request)
            problem = _mismatch(test.package, step.expect, decision)
            if problem:
                return TestResult(test, TestFailure(number, repetition, problem, request, decision))
    return TestResult(test, None)


def build_request(
    bundle: Bundle, test: ast.Test, records: dict[str, ast.Record], step: ast.Step
) -> Request:
    """The request a step describes, typed through the same path as request JSON, with
    the attributes of its resource the bundle's catalog holds and the step does not give."""

    def fields(kind: str, extra: tuple[ast.Field, ...] = ()) -> dict[str, Any] | None:
        record = records.get(kind)
        if record is None and not extra:
            return None
        out = {f.name: _json(bundle, test, f.value) for f in (record.fields if record else ())}
        out.update({f.name: _json(bundle, test, f.value) for f in extra})
        return out

    data: dict[str, Any] = {
        "action": step.action,
        "resource": {
            **(fields("resource") or {}),
            "type": step.resource_type,
            "id": step.resource_id,
        },
        "context": fields("context", step.context) or {},
    }
    subject = fields("subject")
    if subject is None:
        data["agent"] = fields("agent") or {}
    else:  # a person (then the user block is theirs) or a subject of a declared type
        data["subject"] = subject
    user = fields("user")
    if user is not None:
        data["user"] = user
    delegation = fields("delegation")
    if delegation is not None:
        data["delegation"] = delegation
    return catalogued(bundle, request_from_json(data, bundle.schema))


def _json(bundle: Bundle, test: ast.Test, expr: ast.Expr) -> Any:
    value = fold(inline_lets(expr, test.package, bundle.lets))
    if not isinstance(value, ast.Literal_):
        raise ValueError("test data must be constants (literals, lists, lets of constants)")
    return json_value(value.value)


def _rule_id(package: str, name: str) -> str:
    return name if "." in name or not package else f"{package}.{name}"


def _mismatch(package: str, expect: ast.Expect, decision: Decision) -> str:
    got = "allow" if decision.allow else "deny"
    want = "allow" if expect.allow else "deny"
    if got != want:
        return f"expected {want}, got {got}"
    if expect.by:
        wanted = sorted(_rule_id(package, n) for n in expect.by)
        if sorted(decision.decided_by) != wanted:
            return (
                f"expected {want} by {', '.join(wanted)}, "
                f"decided by {', '.join(decision.decided_by) or 'no rule (default deny)'}"
            )
    wanted_obligations = sorted(str(o) for o in expect.requiring)
    got_obligations = sorted(str(o) for o in decision.obligations)
    if wanted_obligations != got_obligations:
        return (
            f"expected obligations {', '.join(wanted_obligations) or 'none'}, "
            f"got {', '.join(got_obligations) or 'none'}"
        )
    return ""
