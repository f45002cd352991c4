"""The compiled engine means what the reference interpreter means, on random policies.

The interpreter defines the semantics; the engine compiles, folds, inlines and indexes for
speed. These properties hold the two together on random well-typed policies and random
requests (with attributes left out, users absent, amounts in a second currency), and hold
constant folding to the evaluator it folds with. Bugs they found are pinned by
regression tests at the end of this file.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st

from pdp.counters import MemoryCounters
from pdp.engine import Bundle, Engine
from pdp.interpreter import Interpreter, _Evaluator
from pdp.lang import ast
from pdp.lang.errors import PolicyError
from pdp.lang.formatter import format_expr, format_module
from pdp.lang.rewrite import fold, inline_lets
from pdp.lang.values import Risk
from pdp.loader import load_texts
from pdp.model import Decision, Request, RequestError
from pdp.request import request_from_json
from tests.lang import strategies as gen

SCHEMA = gen.schema_model()
START = 1_000_000.0
NOW = datetime(2026, 3, 29, 1, 30, tzinfo=UTC)  # `now` where an expression is folded

# Time between two requests of a sequence: none, within every window, past the short ones.
STEPS = st.sampled_from([0.0, 0.0, 1.0, 45.0, 4000.0, 90_000.0])

AGREEMENT = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# ": used 3, this call 6" at the end of a permit's over-limit reason (interpreter only).
_USAGE = re.compile(r": used \S+, this call \S+$")


def outcome(decision: Decision) -> tuple[Any, ...]:
    """What the engine and the interpreter must agree on: everything but limit usage.

    For a permit over its limit the interpreter's reason adds what was used and what the
    call would add; the engine's stops at the limit. That wording is all that may differ.
    """
    return (
        decision.allow,
        decision.obligations,
        decision.decided_by,
        tuple((e.rule, e.effect, e.message) for e in decision.errors),
        tuple(_USAGE.sub("", reason) for reason in decision.reasons),
    )


def kind(decision: Decision) -> str:
    if decision.allow:
        return "allow"
    if decision.obligations:
        return "deny requiring"
    if decision.decided_by:
        return "deny by forbid"
    return "default deny" + (" with errors" if decision.errors else "")


def events(decision: Decision) -> None:
    """What kinds of decision a run met (``pytest --hypothesis-show-statistics``)."""
    event(kind(decision))
    if decision.errors:
        event("rule errors: " + ",".join(sorted({e.effect for e in decision.errors})))
    if any("over its limit" in r for r in decision.reasons):
        event("a permit over its limit")


def engines(policy: gen.Policy) -> tuple[Engine, Interpreter, list[float]]:
    """An engine and an interpreter on one policy: own counters, one shared clock."""
    now = [START]
    clock = lambda: now[0]  # noqa: E731
    bundle = Bundle.build(policy.rules, policy.lets, "v1")
    engine = Engine(bundle, MemoryCounters(), clock)
    interpreter = Interpreter(policy.rules, policy.lets, "v1", MemoryCounters(), clock)
    return engine, interpreter, now


@AGREEMENT
@given(policy=gen.policies(), data=st.data())
def test_engine_decides_as_the_interpreter(policy: gen.Policy, data: st.DataObject) -> None:
    """A sequence of calls, time moving on between them: every decision the same."""
    note(policy.text())
    requests = gen.request_json(names=policy.vocabulary())
    calls = data.draw(st.lists(st.tuples(requests, STEPS), min_size=1, max_size=8))
    engine, interpreter, now = engines(policy)
    for json, step in calls:
        now[0] += step
        request = request_from_json(json, SCHEMA)
        expected = interpreter.decide(request)
        got = engine.decide(request)
        note(f"{json} -> interpreter {expected}")
        events(expected)
        assert outcome(got) == outcome(expected)


@AGREEMENT
@given(policy=gen.policies(max_rules=3, gated=True), data=st.data(), times=st.integers(2, 6))
def test_repeated_calls_use_up_limits_alike(
    policy: gen.Policy, data: st.DataObject, times: int
) -> None:
    """The same call again and again, at one instant: caps fill in both counters alike."""
    note(policy.text())
    engine, interpreter, _ = engines(policy)
    json = data.draw(gen.request_json(complete=True, names=policy.vocabulary()))
    request = request_from_json(json, SCHEMA)
    for _ in range(times):
        expected = interpreter.decide(request)
        events(expected)
        assert outcome(engine.decide(request)) == outcome(expected)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policy=gen.policies())
def test_generated_policies_pass_the_checker(policy: gen.Policy) -> None:
    """The generators stay inside the language: each policy formats, parses and checks."""
    texts = {path: format_module(module) for path, module in policy.modules().items()}
    note("\n".join(texts.values()))
    load_texts({"schema.pol": gen.SCHEMA_TEXT, **texts})


# ------------------------------------------------------------------ folding


def evaluated(expr: ast.Expr, request: Request, lets: gen.Lets) -> tuple[str, Any]:
    trace = _Evaluator(request, lets, gen.PACKAGE, NOW).eval(expr)
    if trace.error is not None:
        return ("error", trace.error)
    return ("value", trace.value)


def same_value(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and bool(a == b)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=gen.expressions(), data=gen.request_json())
def test_folding_keeps_the_meaning_of_an_expression(
    case: tuple[ast.Expr, gen.Lets], data: dict[str, Any]
) -> None:
    expr, lets = case
    folded = fold(inline_lets(expr, gen.PACKAGE, lets))
    note(f"{format_expr(expr)}  folds to  {format_expr(folded)}")
    request = request_from_json(data, SCHEMA)
    before = evaluated(expr, request, lets)
    after = evaluated(folded, request, lets)
    event(before[0])
    assert before[0] == after[0], (before, after)
    if before[0] == "value":
        assert same_value(before[1], after[1]), (before, after)
    else:
        assert before[1] == after[1]


# ------------------------------------------------------------------ bugs found


def _both(policy: str, data: dict[str, Any]) -> tuple[Decision, Decision]:
    loaded = load_texts({"schema.pol": gen.SCHEMA_TEXT, "p.pol": policy})
    bundle = loaded.bundle
    request = request_from_json(data, bundle.schema)
    interpreter = Interpreter(bundle.rules, bundle.lets, bundle.version, MemoryCounters())
    return Engine(bundle).decide(request), interpreter.decide(request)


def test_a_number_literal_too_large_for_a_float_is_a_policy_error() -> None:
    # It used to become `inf`, which the compiled code could not name.
    big = "1" * 400 + ".0"
    with pytest.raises(PolicyError, match="is too large"):
        _both(
            f'permit p call tool "x" when context.n < {big}',
            {"agent": {"id": "a"}, "tool": "x", "context": {"n": 1}},
        )


def test_a_like_target_without_a_wildcard_builds() -> None:
    engine, interpreter = _both(
        'permit p call tool like "search"', {"agent": {"id": "a"}, "tool": "search"}
    )
    assert outcome(engine) == outcome(interpreter)


def test_a_map_in_a_list_of_maps_compiles() -> None:
    engine, interpreter = _both(
        'permit p call tool "x" when agent.labels in [{ team: "ops" }]',
        {"agent": {"id": "a", "labels": {"team": "ops"}}, "tool": "x"},
    )
    assert interpreter.allow
    assert outcome(engine) == outcome(interpreter)


def test_a_resource_attribute_is_typed_as_the_rules_read_it() -> None:
    # A rule without a resource type reads resource.server as tools declare it (a
    # string); a table's server of another type used to reach the engine untyped.
    with pytest.raises(RequestError, match=r"resource\.server: expected a string"):
        _both(
            'forbid f when resource.server in ["a", "b"]\npermit p',
            {
                "agent": {"id": "a"},
                "action": "db.read",
                "resource": {"type": "table", "id": "orders", "server": {"x": 1}},
            },
        )


@pytest.mark.parametrize(
    ("scope", "agent", "user"),
    [("agent", {"risk": Risk.low}, None), ("user", {"id": "a"}, {"roles": frozenset()})],
)
def test_a_built_request_without_an_id_is_limited_alike(
    scope: str, agent: dict[str, Any], user: dict[str, Any] | None
) -> None:
    bundle = load_texts(
        {"schema.pol": gen.SCHEMA_TEXT, "p.pol": f"permit p limit 5 calls per 1m per {scope}"}
    ).bundle
    request = Request.build(
        agent=agent, user=user, action="tool.call", resource_type="tool", resource_id="x"
    )
    interpreter = Interpreter(bundle.rules, bundle.lets, bundle.version, MemoryCounters())
    assert outcome(Engine(bundle).decide(request)) == outcome(interpreter.decide(request))


def test_a_call_that_exactly_fills_a_number_cap_after_others_expired_is_allowed() -> None:
    bundle = load_texts(
        {"schema.pol": gen.SCHEMA_TEXT, "p.pol": "permit p limit sum(context.n) <= 6 per 1m"}
    ).bundle
    now = [0.0]
    engine = Engine(bundle, MemoryCounters(), lambda: now[0])

    def call(at: float, n: float) -> bool:
        now[0] = at
        json = {"agent": {"id": "a"}, "tool": "x", "context": {"n": n}}
        return engine.decide(request_from_json(json, bundle.schema)).allow

    # 0.9 + 0.9 at 0s leave the window by 61s; then 1.1 + 4.9 == 6 is exactly the cap.
    assert [call(0, 0.9), call(0, 0.9), call(30, 1.1)] == [True, True, True]
    assert call(61, 4.9)
