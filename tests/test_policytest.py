"""Policy tests: steps, repetitions, fresh counters per test, the clock, selection and
precise failure messages."""

from __future__ import annotations

from datetime import UTC, datetime

from pdp.explain import render_explanation
from pdp.lang import ast
from pdp.lang.values import Duration
from pdp.policytest import TEST_CLOCK, TestClock, run_tests, select_tests
from tests.conftest import bundle_of

RULES = """
package p
forbid inactive when agent.status != "active"
permit pay
  call tool "pay"
  limit 2 calls per 1h per agent
  require consent("payments") if delegated
"""


def results(tests: str) -> list[tuple[str, str]]:
    bundle = bundle_of(RULES + tests)
    return [(r.test.name, r.failure.message if r.failure else "") for r in run_tests(bundle)]


def test_passing_steps_and_limits_accumulate_within_a_test() -> None:
    out = results(
        """
        test "two then no more" {
          agent { id: "a", status: "active" }
          call tool "pay" times 2
          expect allow by pay
          call tool "pay"
          expect deny
        }
        test "counters start fresh in each test" {
          agent { id: "a", status: "active" }
          call tool "pay" times 2
          expect allow
        }
        """
    )
    assert out == [("two then no more", ""), ("counters start fresh in each test", "")]


def test_wrong_verdict_is_reported() -> None:
    out = results(
        """
        test "t" {
          agent { id: "a", status: "retired" }
          call tool "pay"
          expect allow
        }
        """
    )
    assert out == [("t", "expected allow, got deny")]


def test_wrong_deciding_rule_is_reported() -> None:
    out = results(
        """
        test "t" {
          agent { id: "a", status: "retired" }
          call tool "pay"
          expect deny by pay
        }
        """
    )
    assert out == [("t", "expected deny by p.pay, decided by p.inactive")]


def test_obligations_must_match_exactly() -> None:
    out = results(
        """
        test "plain deny is not a deny asking for consent" {
          agent { id: "a", status: "active" }
          user { id: "u" }
          call tool "pay"
          expect deny
        }
        test "the right obligation" {
          agent { id: "a", status: "active" }
          user { id: "u" }
          call tool "pay"
          expect deny requiring consent("payments")
        }
        """
    )
    assert out == [
        (
            "plain deny is not a deny asking for consent",
            'expected obligations none, got consent("payments")',
        ),
        ("the right obligation", ""),
    ]


def test_the_failing_repetition_is_named() -> None:
    bundle = bundle_of(
        RULES
        + """
        test "three in a row" {
          agent { id: "a", status: "active" }
          call tool "pay" times 3
          expect allow
        }
        """
    )
    (result,) = run_tests(bundle)
    assert result.failure is not None
    assert (result.failure.step, result.failure.repetition) == (1, 3)


def test_a_limit_per_agent_and_resource_counts_each_record_apart() -> None:
    bundle = bundle_of(
        """
        package r
        permit reads
          action "db.read" on table
          limit 3 calls per 1h per agent+resource
        test "three reads of each record, by each agent" {
          agent { id: "a", status: "active" }
          action "db.read" on table "orders" times 3
          expect allow by reads
          action "db.read" on table "orders"
          expect deny
          action "db.read" on table "invoices" times 3
          expect allow by reads
        }
        """
    )
    (result,) = run_tests(bundle)
    assert result.failure is None, result.failure


# ------------------------------------------------------------------ the clock

DAILY = """
package d
permit pay
  call tool "pay"
  limit sum(context.amount) <= 100 USD per 24h per agent
"""


def clock_results(tests: str) -> list[tuple[str, str]]:
    bundle = bundle_of(DAILY + tests)
    return [(r.test.name, r.failure.message if r.failure else "") for r in run_tests(bundle)]


def test_a_daily_limit_refills_after_24h() -> None:
    out = clock_results(
        """
        test "spend, wait a day, spend again" {
          agent { id: "a" }
          at "2026-12-01T09:00:00Z"
          call tool "pay" with { amount: 100 USD }
          expect allow
          call tool "pay" with { amount: 1 USD }
          expect deny
          after 24h
          call tool "pay" with { amount: 100 USD }
          expect allow
        }
        """
    )
    assert out == [("spend, wait a day, spend again", "")]


def test_an_after_shorter_than_the_window_keeps_the_cap_spent() -> None:
    bundle = bundle_of(
        DAILY
        + """
        test "23 hours are not a day" {
          agent { id: "a" }
          at "2026-12-01T09:00:00Z"
          call tool "pay" with { amount: 100 USD }
          expect allow
          after 23h
          call tool "pay" with { amount: 1 USD }
          expect allow
        }
        """
    )
    (result,) = run_tests(bundle)
    failure = result.failure
    assert failure is not None
    assert (failure.step, failure.message) == (2, "expected allow, got deny")
    assert failure.clock == "2026-12-02T08:00:00Z"
    # explained with the test's counters as the step found them, not fresh ones
    assert failure.explanation is not None
    text = render_explanation(failure.explanation)
    assert "used 100, this call 1" in text


def test_a_clock_in_the_last_second_of_the_year_9999_runs() -> None:
    out = clock_results(
        """
        test "the end of time" {
          agent { id: "a" }
          at "9999-12-31T23:59:59.5Z"
          call tool "pay" with { amount: 100 USD }
          expect deny
        }
        """
    )
    assert out == [("the end of time", "expected deny, got allow")]


def test_at_sets_the_clock_the_engine_decides_with() -> None:
    seen: list[float] = []
    bundle = bundle_of(
        DAILY
        + """
        test "t" {
          agent { id: "a" }
          call tool "pay" with { amount: 1 USD }
          expect allow
          at "2027-02-01T09:00:00Z"
          call tool "pay" with { amount: 1 USD } times 2
          expect allow
          after 1.5h
          call tool "pay" with { amount: 1 USD }
          expect allow
        }
        """
    )
    (result,) = run_tests(bundle, observe=lambda test, request, engine: seen.append(engine.clock()))
    assert result.passed
    start = datetime(2027, 2, 1, 9, tzinfo=UTC).timestamp()
    assert seen == [TEST_CLOCK, start, start, start + 5400]


def test_a_test_clock_is_a_mutable_callable() -> None:
    clock = TestClock()
    assert clock() == TEST_CLOCK
    clock.move(ast.ClockAdvance(Duration.parse("2h")))
    assert clock() == TEST_CLOCK + 7200
    clock.move(ast.ClockSet(datetime(2026, 12, 1, 9, tzinfo=UTC)))
    assert str(clock) == "2026-12-01T09:00:00Z"


# ------------------------------------------------------------------ selecting tests


def test_a_filter_selects_names_containing_any_of_its_words_ignoring_case() -> None:
    bundle = bundle_of(
        DAILY
        + """
        test "Pay once" { agent { id: "a" } call tool "pay" with { amount: 1 USD } expect allow }
        test "pay twice" { agent { id: "a" } call tool "pay" with { amount: 1 USD } expect allow }
        test "refund" { agent { id: "a" } call tool "refund" expect deny }
        """
    )
    names = [t.name for t in select_tests(bundle.tests, ["PAY"])]
    assert names == ["Pay once", "pay twice"]
    assert [t.name for t in select_tests(bundle.tests, ["once", "fund"])] == ["Pay once", "refund"]
    assert select_tests(bundle.tests, ["nothing"]) == ()
    assert len(select_tests(bundle.tests, [])) == 3
    assert [r.test.name for r in run_tests(bundle, select_tests(bundle.tests, ["fund"]))] == [
        "refund"
    ]


def test_now_in_a_policy_test_is_the_test_clock() -> None:
    # The test clock is 2027-01-15T08:00:00Z: a Friday, 09:00 in Berlin.
    bundle = bundle_of(
        """
package p
permit office
  call tool "search"
  when hour(now, "Europe/Berlin") == 9 and weekday(now, "Europe/Berlin") == "friday"
    and date(now) == date("2027-01-15")
test "a Friday morning in Berlin" {
  agent { id: "a" }
  call tool "search"
  expect allow by office
}
"""
    )
    assert [r.failure for r in run_tests(bundle)] == [None]
