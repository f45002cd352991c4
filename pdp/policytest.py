"""Run the ``test "…" { … }`` blocks of a bundle against its compiled engine.

Each test gets a fresh engine with its own counters and its own clock, so ``limit``
steps accumulate within a test and never leak into the next one. The clock starts at
:data:`ast.TEST_START` and moves only where the test says (``at``, ``after``), so results
never depend on the day. A failure carries the decision trace, made with the test's
counters and clock as they were just before the failing step, so the author sees why.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pdp.catalog import catalogued
from pdp.counters import MemoryCounters
from pdp.engine import Bundle, Engine
from pdp.interpreter import Explanation, Interpreter
from pdp.lang import ast
from pdp.lang.errors import Span
from pdp.lang.rewrite import fold, inline_lets
from pdp.model import Decision, Request, RequestError, json_value
from pdp.request import request_from_json

# Where every test's clock starts (2027-01-15T08:00:00Z) unless the test says ``at``.
TEST_CLOCK = ast.TEST_START

# Called before each decision a test asks for, with the test, the step's request and the
# test's engine (its counters and clock as they are then): how coverage watches a run.
StepObserver = Callable[[ast.Test, Request, Engine], None]


class TestClock:
    """The clock of one policy test: the engine's ``clock``, moved by ``at`` and ``after``."""

    __test__ = False  # not a pytest test class

    def __init__(self, start: float = ast.TEST_START) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def move(self, move: ast.ClockMove) -> None:
        """Apply one ``at`` (set) or ``after`` (advance); the parser has checked both."""
        if isinstance(move, ast.ClockAdvance):
            self.now += move.by.seconds
        else:
            self.now = move.when.timestamp()

    def __str__(self) -> str:
        return datetime.fromtimestamp(self.now, UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class TestFailure:
    __test__ = False

    step: int
    repetition: int
    message: str
    request: Request | None = None
    decision: Decision | None = None
    # why each candidate rule did what it did, at the failing step's clock and counters
    explanation: Explanation | None = None
    clock: str = ""  # the test's clock at the failing step, as an ``at`` writes it


@dataclass(frozen=True)
class TestResult:
    __test__ = False

    test: ast.Test
    failure: TestFailure | None

    @property
    def passed(self) -> bool:
        return self.failure is None

    @property
    def span(self) -> Span:
        return self.test.span


def select_tests(tests: Sequence[ast.Test], names: Sequence[str]) -> tuple[ast.Test, ...]:
    """The tests whose name contains any of ``names``, ignoring case; all for no names."""
    if not names:
        return tuple(tests)
    wanted = [name.casefold() for name in names]
    return tuple(t for t in tests if any(w in t.name.casefold() for w in wanted))


def run_tests(
    bundle: Bundle,
    tests: Sequence[ast.Test] | None = None,
    observe: StepObserver | None = None,
) -> list[TestResult]:
    """Run ``tests`` (every test of the bundle by default), in file order."""
    chosen = bundle.tests if tests is None else tests
    return [run_test(bundle, test, observe) for test in chosen]


def run_test(bundle: Bundle, test: ast.Test, observe: StepObserver | None = None) -> TestResult:
    clock = TestClock()
    engine = Engine(bundle, MemoryCounters(), clock=clock)
    records: dict[str, ast.Record] = {record.kind: record for record in test.records}
    for number, step in enumerate(test.steps, start=1):
        for move in step.clock:
            clock.move(move)
        try:
            request = build_request(bundle, test, records, step)
        except (RequestError, ValueError) as exc:
            message = f"the test's request is invalid: {exc}"
            return TestResult(test, TestFailure(number, 1, message, clock=str(clock)))
        for repetition in range(1, step.times + 1):
            if observe is not None:
                observe(test, request, engine)
            wrong = _decide(engine, test, step.expect, request)
            if wrong is not None:
                problem, decision, explanation = wrong
                failure = TestFailure(
                    number, repetition, problem, request, decision, explanation, str(clock)
                )
                return TestResult(test, failure)
    return TestResult(test, None)


def _decide(
    engine: Engine, test: ast.Test, expect: ast.Expect, request: Request
) -> tuple[str, Decision, Explanation] | None:
    """Decide one repetition of a step: None when it went as expected, else what went
    wrong, the decision and why each candidate rule did what it did.

    The decision is first made without recording limit usage, so that a failure is
    explained with the counters as the step found them; an allow that was expected is
    then decided again for real, which records its usage."""
    decision = engine.decide(request, commit=False)
    problem = _mismatch(test.package, expect, decision)
    if problem:
        bundle = engine.bundle
        interpreter = Interpreter(
            bundle.rules, bundle.lets, bundle.version, engine.counters, engine.clock
        )
        return problem, decision, interpreter.explain(request, commit=False)
    if decision.allow:
        engine.decide(request)
    return None


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
