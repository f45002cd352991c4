"""The reference interpreter's traces: down to the sub-expression that decided."""

from __future__ import annotations

from typing import Any

from pdp.explain import render_explanation
from pdp.interpreter import Interpreter
from tests.conftest import bundle_of, request


def explain(policy: str, **data: Any) -> Any:
    bundle = bundle_of(policy)
    interpreter = Interpreter(bundle.rules, bundle.lets, bundle.version, clock=lambda: 0.0)
    return interpreter.explain(request(bundle, **data))


def test_the_failing_operand_of_an_and_is_found() -> None:
    explanation = explain(
        'permit p call tool "x" when agent.status == "active" and agent.risk < medium',
        agent={"id": "a", "status": "active", "risk": "high"},
        tool="x",
    )
    (trace,) = explanation.rules
    assert trace.outcome == "condition false"
    culprit = trace.steps[0].trace.failing()
    assert culprit.value is False
    assert [c.value for c in culprit.children][1:] == [1]  # high < medium: right side medium
    text = render_explanation(explanation)
    assert "because agent.risk < medium  →  false" in text
    assert "where agent.risk = high" in text


def test_errors_are_traced_to_the_absent_attribute() -> None:
    explanation = explain('forbid f when agent.purpose == "x"', tool="x")
    (trace,) = explanation.rules
    assert trace.outcome == "error"
    assert trace.error == "agent.purpose is absent from the request"
    assert "FAILED" in render_explanation(explanation)


def test_rules_outside_the_target_are_not_targeted() -> None:
    explanation = explain('permit a call tool "a"\npermit b call tool "b"', tool="a")
    assert [t.outcome for t in explanation.rules] == ["applies", "not targeted"]
    text = render_explanation(explanation, show_untargeted=True)
    assert "candidate rules (1 of 2)" in text
    assert "permit b" in text.split("does not cover")[1]


def test_permits_are_skipped_once_a_forbid_decides() -> None:
    explanation = explain(
        'forbid f when agent.status != "active"\npermit p call tool "x"',
        agent={"id": "a", "status": "retired"},
        tool="x",
    )
    assert [t.outcome for t in explanation.rules] == ["applies", "skipped"]


def test_explain_commits_limits_only_when_asked() -> None:
    bundle = bundle_of('permit p call tool "x" limit 1 calls per 1h')
    interpreter = Interpreter(bundle.rules, bundle.lets, clock=lambda: 0.0)
    req = request(bundle, tool="x")
    assert interpreter.explain(req, commit=False).decision.allow
    assert interpreter.explain(req).decision.allow
    assert not interpreter.explain(req).decision.allow


def test_a_trace_names_a_global_limit_and_the_usage_it_read() -> None:
    bundle = bundle_of('permit p call tool "x" limit 1 calls per 1h global')
    interpreter = Interpreter(bundle.rules, bundle.lets, clock=lambda: 0.0)
    assert interpreter.explain(request(bundle, tool="x")).decision.allow
    other = request(bundle, tool="x", agent={"id": "other", "risk": "low", "status": "active"})
    text = render_explanation(interpreter.explain(other))
    assert "1 calls per 1h global: used 1, this call 1" in text
