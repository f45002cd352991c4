"""Untrusted input never gets past the boundaries as anything but the boundary's own error.

Policy text is parsed into a module or rejected with a :class:`PolicyError` that says
file:line:col; request JSON becomes a :class:`Request` or a :class:`RequestError`; and a
request that was accepted is always decided. Inputs are random text and JSON, and
mutations of a valid policy file and a valid request. Bugs the fuzzers found are pinned by
regression tests at the end of this file.
"""

from __future__ import annotations

import contextlib
import copy
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st

from pdp.engine import Bundle, Engine
from pdp.lang import ast
from pdp.lang.errors import PolicyError
from pdp.lang.parser import parse, parse_expression
from pdp.loader import load_texts
from pdp.model import Request, RequestError
from pdp.request import request_from_json
from tests.lang import strategies as gen

FUZZ = settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

SCHEMA = """\
schema {
  agent {
    name: string,
    owner: string,
    purpose: string,
    risk: risk,
    status: string,
    type: string,
    scopes: set<string>,
    labels: map<string>,
  }
  user { roles: set<string>, groups: set<string> }
  context {
    amount: money,
    limit_eur: money<EUR>,
    risk_score: number,
    ip: ip,
    time: time,
    session_age: duration,
    tags: list<string>,
    trusted: bool,
  }
  resource tool { server: string, annotations: set<string> }
  resource table { classification: string }
}
"""

POLICY = """\
package agents

# Risk levels are built in and ordered: low < medium < high < critical.
let read_tools = ["search", "read_file", "summarize", "sql.select"]
let payment_tools = ["payments.transfer", "payments.refund"]
let office_network = ip("10.0.0.0/8")

forbid inactive_agents
  when agent.status != "active"

forbid deep_delegation
  when delegation.depth > 2

forbid risky_writes
  call tool like "*write*"
  when agent.risk >= high

permit read_only
  call tool in read_tools
  when agent.risk < high

permit small_transfers
  call tool in payment_tools
  when agent.purpose == "payments"
    and agent.risk <= medium
    and context.amount <= 1000 USD
  limit sum(context.amount) <= 5000 USD per 24h per agent
  require consent("payments:transfer") if delegated

permit large_transfers
  call tool "payments.transfer"
  when agent.purpose == "payments"
    and delegated
    and context.amount <= 10000 USD
    and user.roles contains "treasurer"
  limit sum(context.amount) <= 20000 USD per 24h per agent+user
  require consent("payments:transfer")
  require step_up("mfa")

permit external_search
  call tool "web.search"
  when agent.type == "external"
  limit 60 calls per 1m per agent

permit workspace_writes
  call tool "fs.write*"
  when agent.labels has team and context.ip in office_network
  unless tool has annotations and tool.annotations contains "destructive"

permit send_mail_for_user
  call tool "mail.send"
  when delegated and agent.scopes contains "mail:send"
  limit 20 calls per 24h per user

permit analysts_read_orders
  action "db.read" on table "orders"
  when user.roles contains "analyst"
    and resource.classification in ["internal", "public"]

permit finance_reporting
  action ["db.read", "db.export"] on table like "finance_*"
  when agent.owner == "finance"
    and agent.purpose like "report*"
    and context.session_age < 30m
    and context.time < time("2030-01-01T00:00:00Z")
    and not (context.risk_score >= 0.5 or context.trusted == false)
    and agent.labels["cost-center"] == "42"
    and context.tags == ["a", "b"]
    and context.limit_eur > 10 EUR

test "a delegated transfer without consent asks the user" {
  agent { id: "pay-bot", purpose: "payments", risk: low, status: "active" }
  user { id: "alice" }
  call tool "payments.transfer" with { amount: 200 USD } times 2
  expect deny requiring consent("payments:transfer")
}

test "reports" {
  agent { id: "r", owner: "finance", labels: { "cost-center": "42" } }
  context { ip: ip("10.1.2.3") }
  action "db.read" on table "finance_q1"
  expect allow by agents.finance_reporting
}
"""

BUNDLE = load_texts({"schema.pol": SCHEMA, "agents.pol": POLICY}).bundle
GEN_SCHEMA = gen.schema_model()

REQUEST: dict[str, Any] = {
    "agent": {
        "id": "pay-bot",
        "purpose": "payments",
        "risk": "low",
        "status": "active",
        "type": "external",
        "owner": "finance",
        "scopes": ["mail:send"],
        "labels": {"team": "ops", "cost-center": "42"},
    },
    "user": {"id": "alice", "roles": ["treasurer", "analyst"]},
    "delegation": {"chain": ["pay-bot"]},
    "tool": "payments.transfer",
    "context": {
        "amount": "200 USD",
        "limit_eur": {"amount": "20", "currency": "EUR"},
        "risk_score": 0.25,
        "ip": "10.1.2.3",
        "time": "2026-01-31T09:00:00Z",
        "session_age": "5m",
        "tags": ["a", "b"],
        "trusted": True,
        "consents": ["payments:transfer"],
        "acr": "mfa",
    },
}

ACTION_REQUEST: dict[str, Any] = {
    **{k: v for k, v in REQUEST.items() if k != "tool"},
    "action": "db.read",
    "resource": {"type": "table", "id": "finance_q1", "attributes": {"classification": "x"}},
}


# ------------------------------------------------------------------ policy text


def mutations(
    text: str, fragments: st.SearchStrategy[str], most: int = 4
) -> st.SearchStrategy[str]:
    """``text`` with a few characters or runs deleted, inserted or replaced."""

    @st.composite
    def mutated(draw: st.DrawFn) -> str:
        out = text
        for _ in range(draw(st.integers(1, most))):
            at = draw(st.integers(0, len(out)))
            how = draw(st.sampled_from(["delete", "insert", "replace", "swap lines"]))
            if how == "delete":
                out = out[:at] + out[at + draw(st.integers(1, 12)) :]
            elif how == "insert":
                out = out[:at] + draw(fragments) + out[at:]
            elif how == "replace":
                out = out[:at] + draw(fragments) + out[at + 1 :]
            else:
                lines = out.split("\n")
                i, j = draw(st.integers(0, len(lines) - 1)), draw(st.integers(0, len(lines) - 1))
                lines[i], lines[j] = lines[j], lines[i]
                out = "\n".join(lines)
        return out

    return mutated()


TOKENS = st.sampled_from(
    [
        *"(){}[]<>=!.,:+*?\"'#\\\n\t ",
        "==",
        "<=",
        "and",
        "or",
        "not",
        "in",
        "has",
        "like",
        "contains",
        "intersects",
        "subset of",
        "startswith",
        "endswith",
        "permit",
        "forbid",
        "when",
        "unless",
        "limit",
        "require",
        "call tool",
        "action",
        "on",
        "let",
        "package",
        "schema",
        "test",
        "expect",
        "allow",
        "deny",
        "by",
        "requiring",
        "times",
        "at",
        'at "2026-12-01T09:00:00Z"',
        "after",
        "with",
        "per",
        "calls",
        "sum(",
        "consent(",
        "step_up(",
        "ip(",
        "time(",
        "USD",
        "5 EUR",
        "24h",
        "0",
        "-1",
        "2.5",
        "1000",
        "low",
        "high",
        '"x"',
        '"',
        '"\\',
        "true",
        "agent.",
        "agent",
        "user",
        "tool",
        "context.",
        "delegated",
        "set<",
        "map<string>",
    ]
)
FRAGMENTS = st.one_of(TOKENS, st.text(max_size=3))

POLICY_TEXTS = st.one_of(
    st.text(),
    st.lists(TOKENS, max_size=30).map(" ".join),
    mutations(POLICY, FRAGMENTS),
    mutations(SCHEMA, FRAGMENTS),
)

_LOCATION = re.compile(r"^fuzz\.pol:(\d+):(\d+): (error|warning): ")


@FUZZ
@given(text=POLICY_TEXTS)
def test_parse_returns_a_module_or_a_policy_error_with_a_location(text: str) -> None:
    try:
        module = parse(text, "fuzz.pol")
    except PolicyError as exc:
        event("PolicyError")
        assert exc.diagnostics
        for diagnostic in exc.diagnostics:
            span = diagnostic.span
            assert span.file == "fuzz.pol"
            assert span.line >= 1 and span.column >= 1, diagnostic.render()
            rendered = diagnostic.render()
            location = _LOCATION.match(rendered)
            assert location, rendered
            assert location.groups()[:2] == (str(span.line), str(span.column))
        assert _LOCATION.match(str(exc)), str(exc)
    else:
        event("Module")
        assert isinstance(module, ast.Module)


@FUZZ
@given(text=st.one_of(st.text(), st.lists(TOKENS, max_size=12).map(" ".join)))
def test_parse_expression_returns_an_expression_or_a_policy_error(text: str) -> None:
    try:
        expr = parse_expression(text, "fuzz.pol")
    except PolicyError as exc:
        assert _LOCATION.match(str(exc)), str(exc)
    else:
        assert isinstance(
            expr,
            ast.Literal_
            | ast.ListExpr
            | ast.MapExpr
            | ast.Path
            | ast.Name
            | ast.Flag
            | ast.Not
            | ast.BoolOp
            | ast.Compare
            | ast.Has,
        )


# ------------------------------------------------------------------ request JSON

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True),
    st.text(max_size=10),
)
JSON = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
# Values that are almost right for some declared type.
PLAUSIBLE = st.sampled_from(
    [
        "200 USD",
        "-5 EUR",
        "1.5 usd",
        "200USD",
        "low",
        "LOW",
        "30s",
        "5x",
        "-1s",
        "10.0.0.1",
        "10.0.0.0/8",
        "::1",
        "2026-01-31T09:00:00Z",
        "2026-01-31T09:00:00",
        "2026-13-01T00:00:00Z",
        "",
        "payments.transfer",
        "tool.call",
        "tool",
        "table",
        "id",
        0,
        -1,
        1.5,
        10**20,
        True,
        None,
        [],
        {},
        ["a", 1],
        {"amount": "1", "currency": "USD"},
        {"amount": 1, "currency": "usd"},
        {"amount": True, "currency": "USD"},
        {"amount": "1", "currency": "USD", "x": 1},
        {"type": "tool", "id": "x"},
        {"chain": ["a"]},
        {"id": "x"},
    ]
)
KEYS = st.sampled_from(
    [
        "agent",
        "user",
        "delegation",
        "action",
        "resource",
        "context",
        "tool",
        "id",
        "type",
        "attributes",
        "name",
        "chain",
        "depth",
        "amount",
        "risk",
        "time",
        "ip",
        "session_age",
        "labels",
        "scopes",
        "roles",
        "consents",
        "acr",
        "tags",
        "trusted",
        "limit_eur",
    ]
)
# Copied, so that mutating a request never mutates a constant of PLAUSIBLE.
VALUES = st.one_of(PLAUSIBLE, JSON).map(copy.deepcopy)


def _containers(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Paths to every dict and list inside ``value``."""
    out: list[tuple[Any, ...]] = []
    if isinstance(value, dict):
        out.append(path)
        for key, item in value.items():
            out += _containers(item, (*path, key))
    elif isinstance(value, list):
        out.append(path)
        for index, item in enumerate(value):
            out += _containers(item, (*path, index))
    return out


@st.composite
def mutated_requests(draw: st.DrawFn, base: dict[str, Any]) -> Any:
    """``base`` with a few keys deleted, added or given other values."""
    data: Any = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 4))):
        containers = _containers(data)
        if not containers:
            break
        path = draw(st.sampled_from(containers))
        node = data
        for step in path:
            node = node[step]
        how = draw(st.sampled_from(["delete", "replace", "replace", "add"]))
        if isinstance(node, dict):
            keys = sorted(node, key=str)
            if how == "add" or not keys:
                node[draw(KEYS)] = draw(VALUES)
            elif how == "delete":
                del node[draw(st.sampled_from(keys))]
            else:
                node[draw(st.sampled_from(keys))] = draw(VALUES)
        elif how == "add" or not node:
            node.append(draw(VALUES))
        elif how == "delete":
            node.pop(draw(st.integers(0, len(node) - 1)))
        else:
            node[draw(st.integers(0, len(node) - 1))] = draw(VALUES)
    return data


REQUESTS = st.one_of(
    JSON,
    st.dictionaries(KEYS, VALUES, max_size=5),
    mutated_requests(REQUEST),
    mutated_requests(ACTION_REQUEST),
)


def built(data: Any) -> Request | None:
    """The request, or None when it is refused; any other exception fails the test."""
    try:
        request = request_from_json(data, BUNDLE.schema)
    except RequestError as exc:
        assert str(exc)
        return None
    assert isinstance(request, Request)
    return request


@FUZZ
@given(data=REQUESTS)
def test_request_json_becomes_a_request_or_a_request_error(data: Any) -> None:
    event("Request" if built(data) is not None else "RequestError")


@FUZZ
@given(requests=st.lists(st.one_of(mutated_requests(REQUEST), mutated_requests(ACTION_REQUEST))))
def test_a_request_that_builds_is_always_decided(requests: list[Any]) -> None:
    engine = Engine(BUNDLE, clock=lambda: 1_000_000.0)
    for data in requests:
        request = built(data)
        event("Request" if request is not None else "RequestError")
        if request is not None:
            note(f"{data}")
            decision = engine.decide(request)
            event("allow" if decision.allow else "deny")


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policy=gen.policies(), data=st.data())
def test_random_policies_decide_every_request_that_builds(
    policy: gen.Policy, data: st.DataObject
) -> None:
    """Random policies on fuzzed requests: no exception escapes :meth:`Engine.decide`."""
    engine = Engine(Bundle.build(policy.rules, policy.lets), clock=lambda: 1_000_000.0)
    base = data.draw(gen.request_json(names=policy.vocabulary()))
    for json in data.draw(st.lists(mutated_requests(base), min_size=1, max_size=4)):
        try:
            request = request_from_json(json, GEN_SCHEMA)
        except RequestError:
            continue
        engine.decide(request)


# ------------------------------------------------------------------ found by fuzzing


def _request(**context: Any) -> dict[str, Any]:
    return {**REQUEST, "context": {**REQUEST["context"], **context}}


@pytest.mark.parametrize(
    "text",
    [
        "permit p when context.n < " + "1" * 5000,
        "permit p limit " + "1" * 5000 + " calls per 1m",
    ],
)
def test_a_huge_integer_literal_is_a_policy_error(text: str) -> None:
    with pytest.raises(PolicyError):
        parse(text, "fuzz.pol")


@pytest.mark.parametrize("amount", ["NaN", "sNaN", float("nan")])
def test_a_nan_amount_of_money_is_refused_or_decided(amount: Any) -> None:
    request = built(_request(amount={"amount": amount, "currency": "USD"}))
    if request is not None:
        Engine(BUNDLE).decide(request)


def test_a_huge_number_of_seconds_is_a_request_error() -> None:
    built(_request(session_age=10**400))


@pytest.mark.parametrize("time", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_a_time_that_overflows_in_utc_is_a_request_error(time: str) -> None:
    built(_request(time=time))


@pytest.mark.parametrize("separator", ["\x0b", "\x0c", "\r", "\u2028"])
def test_a_syntax_error_quotes_the_line_it_points_into(separator: str) -> None:
    text = f"let a = 1 # a comment with {separator} in it\npermit p when = 2"
    with pytest.raises(PolicyError) as caught:
        parse(text, "fuzz.pol")
    (diagnostic,) = caught.value.diagnostics
    assert diagnostic.span.line == 2
    assert diagnostic.line_text == "permit p when = 2"


@pytest.mark.parametrize("text", ["not " * 1000 + "true", "[" * 1000 + "]" * 1000 + " == []"])
def test_deep_nesting_is_a_module_or_a_policy_error(text: str) -> None:
    with contextlib.suppress(PolicyError):
        parse(f"permit p when {text}", "fuzz.pol")


@pytest.mark.parametrize(
    "condition", ["not " * 250 + "delegated", "[" * 250 + "agent.status" + "]" * 250 + " == []"]
)
def test_a_deeply_nested_condition_loads_or_is_a_policy_error(condition: str) -> None:
    with contextlib.suppress(PolicyError):
        load_texts({"schema.pol": SCHEMA, "p.pol": f"permit p when {condition}"})
