"""Policy tests: steps, repetitions, fresh counters per test, precise failure messages."""

from __future__ import annotations

from pdp.policytest import run_tests
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
