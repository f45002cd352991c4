"""The engine: default deny, forbid overrides, fail closed, obligations, limits, the index."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from pdp.engine import CANDIDATE_MEMO_SIZE, Engine
from pdp.lang.ast import Obligation
from pdp.model import Decision, LimitUse, Request
from tests.conftest import bundle_of, request


def decide(policy: str, **data: Any) -> Any:
    engine = Engine(bundle_of(policy), clock=lambda: 1_000_000.0)
    return engine.decide(request(engine.bundle, **data))


def test_nothing_matches_so_default_deny() -> None:
    decision = decide('permit p call tool "search"', tool="delete")
    assert not decision.allow
    assert decision.decided_by == ()
    assert decision.reasons == ("no permit applies (default deny)",)


def test_a_permit_that_matches_allows_and_names_itself() -> None:
    decision = decide('permit p call tool "search" when agent.risk < high', tool="search")
    assert decision.allow
    assert decision.decided_by == ("p",)
    assert decision.reasons == ("permit p applies",)


def test_any_matching_forbid_wins_over_every_permit() -> None:
    policy = """
    permit p call tool "search"
    forbid f when agent.status != "active"
    """
    decision = decide(
        policy, agent={"id": "b", "status": "suspended", "risk": "low"}, tool="search"
    )
    assert not decision.allow
    assert decision.decided_by == ("f",)


def test_forbid_that_errors_denies_and_reports_it() -> None:
    policy = """
    permit p call tool "search"
    forbid f when agent.purpose == "spam"
    """
    decision = decide(policy, tool="search")
    assert not decision.allow
    assert decision.decided_by == ("f",)
    assert [(e.rule, e.effect, e.message) for e in decision.errors] == [
        ("f", "forbid", "agent.purpose is absent from the request")
    ]


def test_permit_that_errors_does_not_apply_and_is_reported() -> None:
    policy = """
    permit needs_purpose call tool "search" when agent.purpose == "search"
    """
    decision = decide(policy, tool="search")
    assert not decision.allow
    assert decision.errors[0].rule == "needs_purpose"
    assert decision.errors[0].effect == "permit"
    assert "permit needs_purpose failed and does not apply" in decision.reasons[1]


def test_one_failing_permit_does_not_spoil_another_that_applies() -> None:
    policy = """
    permit needs_purpose call tool "search" when agent.purpose == "search"
    permit plain call tool "search"
    """
    decision = decide(policy, tool="search")
    assert decision.allow
    assert decision.decided_by == ("plain",)
    assert [e.rule for e in decision.errors] == ["needs_purpose"]


def test_user_attributes_of_an_autonomous_agent_are_an_error() -> None:
    decision = decide('permit p call tool "x" when user.roles contains "admin"', tool="x")
    assert not decision.allow
    assert "the agent acts alone" in decision.errors[0].message


def test_currency_mismatch_is_an_error_not_false() -> None:
    policy = 'forbid big call tool "pay" when context.amount > 100 USD\npermit p call tool "pay"'
    decision = decide(policy, tool="pay", context={"amount": "5 EUR"})
    assert not decision.allow
    assert "currencies differ" in decision.errors[0].message or "EUR" in decision.errors[0].message


def test_unmet_require_denies_carrying_the_obligation() -> None:
    policy = 'permit p call tool "pay" require consent("payments:transfer") if delegated'
    decision = decide(policy, tool="pay", user={"id": "alice"})
    assert not decision.allow
    assert decision.obligations == (Obligation("consent", "payments:transfer"),)
    assert decision.decided_by == ("p",)


def test_met_require_allows() -> None:
    policy = 'permit p call tool "pay" require consent("payments:transfer") if delegated'
    decision = decide(
        policy,
        tool="pay",
        user={"id": "alice"},
        context={"consents": ["payments:transfer"]},
    )
    assert decision.allow


def test_require_whose_condition_is_false_asks_nothing() -> None:
    policy = 'permit p call tool "pay" require consent("payments:transfer") if delegated'
    assert decide(policy, tool="pay").allow


def test_step_up_is_met_by_the_acr() -> None:
    policy = 'permit p call tool "admin" require step_up("mfa")'
    assert decide(policy, tool="admin").obligations == (Obligation("step_up", "mfa"),)
    assert decide(policy, tool="admin", context={"acr": "mfa"}).allow


def test_a_ladder_step_up_is_met_by_the_level_asked_or_above() -> None:
    policy = 'permit p call tool "admin" require step_up("urn:tessera:acr:key+mtls")'
    for acr in ("urn:tessera:acr:key+mtls", "urn:tessera:acr:key+mtls+human"):
        assert decide(policy, tool="admin", context={"acr": acr}).allow, acr
    for acr in ("urn:tessera:acr:key", "urn:tessera:acr:apikey", "mfa", "urn:tessera:acr:other"):
        decision = decide(policy, tool="admin", context={"acr": acr})
        assert not decision.allow, acr
        assert decision.obligations == (Obligation("step_up", "urn:tessera:acr:key+mtls"),)


def test_a_step_up_off_the_ladder_is_met_only_by_that_very_value() -> None:
    policy = 'permit p call tool "admin" require step_up("mfa")'
    assert not decide(policy, tool="admin", context={"acr": "urn:tessera:acr:key+mtls+human"}).allow
    assert not decide(policy, tool="admin", context={"acr": "mfa2"}).allow


def test_a_permit_that_applies_outright_beats_one_waiting_on_consent() -> None:
    policy = """
    permit gated call tool "pay" require consent("c")
    permit open call tool "pay"
    """
    decision = decide(policy, tool="pay")
    assert decision.allow
    assert decision.decided_by == ("open",)


def test_count_limit_commits_only_on_allow() -> None:
    policy = """
    permit p call tool "search" limit 2 calls per 1m per agent
    forbid quiet call tool "search" when context.n == 0
    """
    bundle = bundle_of(policy)
    engine = Engine(bundle, clock=lambda: 1_000_000.0)
    denied = request(bundle, tool="search", context={"n": 0})
    allowed = request(bundle, tool="search", context={"n": 1})
    for _ in range(5):
        assert not engine.decide(denied).allow  # denied calls never consume the cap
    assert engine.decide(allowed).allow
    assert engine.decide(allowed).allow
    third = engine.decide(allowed)
    assert not third.allow
    assert "permit p is over its limit: 2 calls per 1m per agent" in third.reasons


def test_a_limited_decision_tells_the_usage_it_was_made_on() -> None:
    policy = """
    permit p call tool "pay"
      limit 2 calls per 1m per agent
      limit sum(context.amount) <= 100 USD per 24h per agent
    """
    bundle = bundle_of(policy)
    engine = Engine(bundle, clock=lambda: 1_000_000.0)

    def pay(amount: str) -> Any:
        return engine.decide(request(bundle, tool="pay", context={"amount": amount}))

    first, second, third = pay("60 USD"), pay("50 USD"), pay("10 USD")
    calls, spent = "2 calls per 1m per agent", "sum <= 100 USD per 24h per agent"
    assert first.allow and first.limits == (
        LimitUse("p", 0, calls, 60.0, 2, 1, 0),
        LimitUse("p", 1, spent, 86_400.0, 100, 60, 0),
    )
    assert not second.allow and second.limits == (  # 60 + 50 > 100
        LimitUse("p", 0, calls, 60.0, 2, 1, 1),
        LimitUse("p", 1, spent, 86_400.0, 100, 50, 60),
    )
    assert third.allow and [use.used for use in third.limits] == [1, 60]
    over = pay("1 USD")
    assert not over.allow
    assert [use.used for use in over.limits] == [2, None]  # the store stopped at the first
    assert engine.decide(request(bundle, tool="other")).limits == ()
    # The usage rides along: caches and counts keyed by a decision see the answer alone.
    plain = Decision(*first)
    assert first == plain and hash(first) == hash(plain) and plain.limits == ()


def test_count_limit_window_slides() -> None:
    now = [1_000_000.0]
    bundle = bundle_of('permit p call tool "s" limit 1 calls per 1m per agent')
    engine = Engine(bundle, clock=lambda: now[0])
    req = request(bundle, tool="s")
    assert engine.decide(req).allow
    assert not engine.decide(req).allow
    now[0] += 61
    assert engine.decide(req).allow


def test_sum_limit_counts_amounts_per_agent() -> None:
    bundle = bundle_of('permit p call tool "pay" limit sum(context.amount) <= 100 USD per 24h')
    engine = Engine(bundle, clock=lambda: 1_000_000.0)

    def pay(agent: str, amount: str) -> bool:
        req = request(
            bundle,
            agent={"id": agent, "risk": "low", "status": "active"},
            tool="pay",
            context={"amount": amount},
        )
        return engine.decide(req).allow

    assert pay("a", "60 USD")
    assert not pay("a", "41 USD")  # 101 would exceed
    assert pay("a", "40 USD")  # exactly 100
    assert pay("b", "100 USD")  # another agent has its own cap
    assert not pay("c", "5 EUR")  # a EUR amount never counts against a USD cap


def test_limit_per_user_needs_a_user() -> None:
    bundle = bundle_of('permit p call tool "s" limit 5 calls per 1h per user')
    engine = Engine(bundle)
    alone = engine.decide(request(bundle, tool="s"))
    assert not alone.allow
    assert "needs a user" in alone.errors[0].message
    assert engine.decide(request(bundle, tool="s", user={"id": "alice"})).allow


def test_limit_per_agent_and_user_keeps_pairs_apart() -> None:
    bundle = bundle_of('permit p call tool "s" limit 1 calls per 1h per agent+user')
    engine = Engine(bundle, clock=lambda: 5.0)
    alice = request(bundle, tool="s", user={"id": "alice"})
    bob = request(bundle, tool="s", user={"id": "bob"})
    assert engine.decide(alice).allow
    assert not engine.decide(alice).allow
    assert engine.decide(bob).allow


def test_all_permits_that_apply_are_named_in_rule_order() -> None:
    policy = 'permit b call tool "s"\npermit a call tool like "s*"\npermit c call tool "t"'
    assert decide(policy, tool="s").decided_by == ("b", "a")


def test_decision_carries_the_bundle_version() -> None:
    bundle = bundle_of('permit p call tool "s"')
    decision = Engine(bundle).decide(request(bundle, tool="s"))
    assert decision.bundle_version == bundle.version
    assert bundle.version.startswith("sha256:")


def candidate_ids(policy: str, **data: Any) -> list[str]:
    bundle = bundle_of(policy)
    forbids, permits = Engine(bundle).candidates(request(bundle, **data))
    return [r.id for r in forbids] + [r.id for r in permits]


INDEXED = """
forbid everything_global when agent.status != "active"
permit exact call tool "fs.read"
permit glob call tool "fs.*"
permit listed call tool ["fs.read", "net.get"]
permit any_tool call tool like "*"
permit table_read action "db.read" on table "orders"
permit table_any action "db.read" on table
permit any_type action "db.*"
"""


def test_index_exact_tool_touches_only_its_candidates() -> None:
    assert candidate_ids(INDEXED, tool="fs.read") == [
        "everything_global",
        "exact",
        "glob",
        "listed",
        "any_tool",
    ]


def test_index_glob_prefix_and_list() -> None:
    assert candidate_ids(INDEXED, tool="fs.write") == ["everything_global", "glob", "any_tool"]
    assert candidate_ids(INDEXED, tool="net.get") == ["everything_global", "listed", "any_tool"]


def test_index_generic_actions_and_types() -> None:
    orders = {"action": "db.read", "resource": {"type": "table", "id": "orders"}}
    assert candidate_ids(INDEXED, **orders) == [
        "everything_global",
        "table_read",
        "table_any",
        "any_type",
    ]
    other = {"action": "db.write", "resource": {"type": "queue", "id": "jobs"}}
    assert candidate_ids(INDEXED, **other) == ["everything_global", "any_type"]


def test_a_rule_whose_condition_is_constant_false_is_never_a_candidate() -> None:
    policy = 'permit never call tool "s" when 1 > 2\npermit always call tool "s"'
    assert candidate_ids(policy, tool="s") == ["always"]


def test_candidate_memo_is_bounded() -> None:
    bundle = bundle_of('permit p call tool like "t*"')
    engine = Engine(bundle)
    for i in range(CANDIDATE_MEMO_SIZE + 10):
        req = Request.build(
            agent={"id": "a"}, action="tool.call", resource_type="tool", resource_id=f"t{i}"
        )
        assert engine.decide(req).allow
    assert len(engine._memo) <= CANDIDATE_MEMO_SIZE


def test_deciding_without_commit_leaves_limits_untouched() -> None:
    bundle = bundle_of('permit p call tool "s" limit 1 calls per 1h')
    engine = Engine(bundle, clock=lambda: 5.0)
    req = request(bundle, tool="s")
    for _ in range(3):
        assert engine.decide(req, commit=False).allow
    assert engine.decide(req).allow
    assert not engine.decide(req, commit=False).allow


def test_a_fault_in_compiled_code_alone_fails_closed_naming_no_internals(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A compiled forbid that raises where the interpreter finds nothing wrong (a fault
    of Tessera's, injected here): the forbid denies, its reason names no exception class,
    and the fault is logged with its traceback."""
    engine = Engine(
        bundle_of('permit p call tool "search"\nforbid f when agent.risk > high'),
        clock=lambda: 1_000_000.0,
    )

    def broken(*args: Any) -> bool:
        raise ZeroDivisionError("a fault of the compiler")

    forbid = next(rule for rule in engine.bundle.compiled if rule.id == "f")
    forbid.test = broken
    with caplog.at_level(logging.ERROR, logger="tessera.engine"):
        decision = engine.decide(request(engine.bundle, tool="search"))
    assert not decision.allow
    assert [(e.rule, e.message) for e in decision.errors] == [
        ("f", "an internal error (logged) stopped the rule")
    ]
    assert "ZeroDivisionError" not in " ".join(decision.reasons)
    assert "rule f failed in compiled code only" in caplog.text
    assert "ZeroDivisionError" in caplog.text
