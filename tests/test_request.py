"""Request JSON becomes typed values, or a RequestError naming the field."""

from __future__ import annotations

import ipaddress
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest

from pdp.lang.values import Duration, Money, Risk
from pdp.model import RequestError
from pdp.request import request_from_json
from tests.conftest import bundle_of

SCHEMA = """
schema {
  agent { risk: risk, scopes: set<string>, labels: map<string>, spend: money<USD> }
  user { roles: set<string> }
  context { amount: money, n: number, ip: ip, at: time, age: duration, ok: bool,
            path: list<string>, until: date }
  resource tool { server: string }
}
"""


def build(**data: Any) -> Any:
    schema = bundle_of("", schema=SCHEMA).schema
    data.setdefault("agent", {"id": "a"})
    if "action" not in data:
        data.setdefault("tool", "t")
    return request_from_json(data, schema)


def test_values_are_typed_by_the_schema() -> None:
    req = build(
        agent={"id": "a", "risk": "high", "scopes": ["x", "y"], "labels": {"team": "ops"}},
        user={"id": "u", "roles": ["analyst"]},
        context={
            "amount": {"amount": "12.50", "currency": "EUR"},
            "n": 3,
            "ip": "10.0.0.1",
            "at": "2026-01-31T09:00:00Z",
            "age": "5m",
            "ok": True,
            "path": ["a", "b"],
        },
    )
    assert req.agent["risk"] is Risk.high
    assert req.agent["scopes"] == frozenset({"x", "y"})
    assert req.agent["labels"] == {"team": "ops"}
    assert req.user is not None and req.user["roles"] == frozenset({"analyst"})
    assert req.context["amount"] == Money(Decimal("12.50"), "EUR")
    assert req.context["ip"] == ipaddress.ip_address("10.0.0.1")
    assert req.context["at"] == datetime(2026, 1, 31, 9, tzinfo=UTC)
    assert req.context["age"] == Duration(300)
    assert req.context["path"] == ("a", "b")


def test_tool_shorthand_and_delegation() -> None:
    req = build(user={"id": "alice"})
    assert (req.action, req.resource["type"], req.resource["id"]) == ("tool.call", "tool", "t")
    assert req.tool == {"type": "tool", "id": "t", "name": "t"}
    assert req.delegation == {"delegated": True, "depth": 1, "chain": ("a",)}
    alone = build()
    assert alone.delegation == {"delegated": False, "depth": 0, "chain": ()}
    chained = build(user={"id": "alice"}, delegation={"chain": ["a", "planner"]})
    assert chained.delegation["depth"] == 2


def test_generic_resource_with_attributes() -> None:
    req = build(action="db.read", resource={"type": "table", "id": "orders", "owner": "x"})
    assert req.resource == {"type": "table", "id": "orders", "owner": "x"}
    assert req.tool is None


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"agent": {"id": "a", "risk": "extreme"}}, "agent.risk: unknown risk level 'extreme'"),
        ({"agent": {"id": "a", "scopes": "x"}}, "agent.scopes: expected a list of string"),
        ({"agent": {"id": "a", "spend": "5 EUR"}}, "agent.spend: expected an amount in USD"),
        ({"agent": {"risk": "low"}}, "agent.id: required"),
        ({"agent": {"id": ""}}, "agent.id: required"),
        ({"user": {"roles": []}}, "user.id: required"),
        ({"context": {"amount": 5}}, "context.amount: expected money"),
        ({"context": {"amount": "5 usd"}}, "context.amount: invalid money"),
        ({"context": {"amount": " 100 USD"}}, "context.amount: invalid amount ' 100'"),
        (
            {"context": {"amount": "1_000 USD"}},
            "context.amount: invalid amount '1_000': it has \"_\"",
        ),
        ({"context": {"amount": "١٠٠ USD"}}, "digits other than ASCII 0-9"),
        (
            {"context": {"amount": {"amount": "1E+3", "currency": "USD"}}},
            "context.amount.amount: invalid amount '1E+3': it has an exponent",
        ),
        (
            {"context": {"amount": {"amount": float("inf"), "currency": "USD"}}},
            "context.amount.amount: invalid amount inf: an amount is a finite number",
        ),
        (
            {"context": {"amount": {"amount": 10**20, "currency": "USD"}}},
            "context.amount.amount: invalid amount 100000000000000000000: its size is beyond",
        ),
        ({"context": {"amount": {"amount": "1", "currency": "usd"}}}, "context.amount.currency"),
        ({"context": {"n": "5"}}, "context.n: expected a number, got the string '5'"),
        ({"context": {"n": True}}, "context.n: expected a number, got a boolean"),
        ({"context": {"ip": "300.1.1.1"}}, "context.ip: invalid IP address"),
        ({"context": {"at": "2026-01-31T09:00:00"}}, "has no UTC offset"),
        ({"context": {"until": "2027-3-31"}}, "context.until: invalid date '2027-3-31'"),
        ({"context": {"until": "2027-02-29"}}, "context.until: invalid date '2027-02-29'"),
        ({"context": {"until": "2027-03-31T00:00:00Z"}}, "write it as YYYY-MM-DD"),
        ({"time": "2026-03-30T09:00:00"}, "time: time '2026-03-30T09:00:00' has no UTC offset"),
        ({"time": 1774861200}, "time: expected an RFC 3339 time"),
        ({"context": {"age": "5 minutes"}}, "context.age: invalid duration"),
        ({"context": {"n": None}}, "context.n: null is not a value"),
        ({"context": []}, "context: expected an object"),
        ({"delegation": {"depth": 3}}, "delegation.depth: not settable"),
        ({"delegation": {"chain": [1]}}, "delegation.chain: expected a list of actor ids"),
        ({"surprise": 1}, "unknown top-level field 'surprise'"),
        ({"tool": "t", "action": "x", "resource": {}}, "give one or the other"),
        ({"action": "x", "resource": {"id": "r"}}, "resource.type: required"),
        ({"action": "", "resource": {"type": "t", "id": "r"}}, "action: required"),
        (
            {"action": "x", "resource": {"type": "tool", "id": "r", "name": "n"}},
            "resource.name: reserved",
        ),
    ],
)
def test_bad_requests_name_the_field(data: dict[str, Any], message: str) -> None:
    with pytest.raises(RequestError) as caught:
        build(**data)
    assert message in str(caught.value)


def test_a_request_is_an_object() -> None:
    schema = bundle_of("", schema=SCHEMA).schema
    with pytest.raises(RequestError, match="a request is a JSON object"):
        request_from_json([1, 2], schema)


def test_a_date_attribute_and_the_decision_time() -> None:
    req = build(context={"until": "2027-03-31"}, time="2026-03-30T09:00:00+02:00")
    assert req.context["until"] == date(2027, 3, 31)
    assert req.time == datetime(2026, 3, 30, 7, tzinfo=UTC)
    assert req.to_json()["context"] == {"until": "2027-03-31"}
    assert req.to_json()["time"] == "2026-03-30T07:00:00Z"
    assert build().time is None and "time" not in build().to_json()


def test_to_json_round_trips_plain_values() -> None:
    req = build(agent={"id": "a", "risk": "low"}, context={"amount": "5 USD", "age": "30s"})
    assert req.to_json()["agent"] == {"id": "a", "risk": "low"}
    assert req.to_json()["context"] == {"amount": "5 USD", "age": "30s"}
