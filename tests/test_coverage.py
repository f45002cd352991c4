"""Rule coverage of policy tests: which rules matched in some step, and which never did."""

from __future__ import annotations

from pdp.coverage import Coverage, CoverageReport, RuleCoverage, render_coverage, render_percent
from pdp.lang import ast
from pdp.policytest import run_tests
from tests.conftest import bundle_of

RULES = """
package c
forbid inactive when agent.status != "active"
permit pay
  call tool "pay"
  limit 1 calls per 1h per agent
permit consented
  call tool "transfer"
  require consent("transfer")
permit by_owner
  call tool "read"
  when agent.owner == "ops"
permit never_called
  call tool "refund"
"""


def coverage_of(tests: str) -> CoverageReport:
    bundle = bundle_of(RULES + tests)
    coverage = Coverage(bundle)
    results = run_tests(bundle, observe=coverage.observe)
    assert all(r.passed for r in results), [r.failure for r in results]
    return coverage.report()


def hits(report: CoverageReport) -> dict[str, tuple[str, ...]]:
    return {entry.rule.id: entry.tests for entry in report.rules}


def test_a_permit_a_forbid_overrides_is_hit_when_it_matched() -> None:
    report = coverage_of(
        """
        test "suspended" {
          agent { id: "a", status: "suspended" }
          call tool "pay"
          expect deny by inactive
        }
        """
    )
    assert hits(report)["c.inactive"] == ("suspended",)
    assert hits(report)["c.pay"] == ("suspended",)


def test_a_permit_over_its_limit_or_waiting_on_an_obligation_is_hit() -> None:
    report = coverage_of(
        """
        test "over the limit" {
          agent { id: "a", status: "active" }
          call tool "pay"
          expect allow
          call tool "pay"
          expect deny
        }
        test "asks for consent" {
          agent { id: "a", status: "active" }
          call tool "transfer"
          expect deny requiring consent("transfer")
        }
        """
    )
    assert hits(report)["c.pay"] == ("over the limit",)
    assert hits(report)["c.consented"] == ("asks for consent",)


def test_a_false_or_failing_condition_and_an_untargeted_rule_are_not_hits() -> None:
    report = coverage_of(
        """
        test "someone else's agent" {
          agent { id: "a", status: "active", owner: "dev" }
          call tool "read"
          expect deny
        }
        test "no owner at all" {
          agent { id: "a", status: "active" }
          call tool "read"
          expect deny
        }
        """
    )
    assert hits(report)["c.by_owner"] == ()
    assert hits(report)["c.inactive"] == ()  # its condition was false
    assert hits(report)["c.never_called"] == ()


def test_the_report_counts_rules_hit_and_names_those_missed() -> None:
    report = coverage_of(
        """
        test "one" { agent { id: "a", status: "active" } call tool "pay" expect allow }
        test "two" { agent { id: "b", status: "active" } call tool "pay" expect allow }
        """
    )
    assert (report.hit, len(report.rules)) == (1, 5)
    assert hits(report)["c.pay"] == ("one", "two")
    assert [entry.rule.id for entry in report.missed] == [
        "c.inactive",
        "c.consented",
        "c.by_owner",
        "c.never_called",
    ]
    assert report.percent == 20.0
    assert report.below(20.01) and not report.below(20)
    text = "\n".join(render_coverage(report))
    assert "  hit   permit c.pay  (p.pol:4:1)\n" in text
    assert '        by "one", "two"\n' in text
    assert "  MISS  permit c.never_called  (p.pol:13:1)" in text
    assert text.endswith("1 of 5 rules hit (20%)")


def test_the_shown_share_rounds_down_so_a_miss_never_shows_as_100() -> None:
    rule = ast.Rule("permit", "r", None, None, None, (), ())
    report = CoverageReport((*[RuleCoverage(rule, ("t",))] * 1999, RuleCoverage(rule, ())))
    assert render_percent(report) == "99.9%"
    assert report.below(100)
    two_of_three = CoverageReport((RuleCoverage(rule, ("t",)),) * 2 + (RuleCoverage(rule, ()),))
    assert render_percent(two_of_three) == "66.6%"
    empty = CoverageReport(())
    assert (render_percent(empty), empty.below(100)) == ("100%", False)
