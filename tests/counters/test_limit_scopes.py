"""Limit scopes through the engine, on every counter store: each scope counts what it says
and keeps apart what it should, and its keys keep hostile ids from colliding."""

from __future__ import annotations

from typing import Any

from pdp.engine import Bundle, Engine
from pdp.lang.runtime import limit_key
from pdp.model import Decision
from tests.conftest import bundle_of, request
from tests.counters.workers import NOW, Place


def limited(scope: str, cap: int = 1) -> Bundle:
    return bundle_of(
        f'permit p call tool like "*" limit {cap} calls per 1h {scope}\n'
        f'permit q action "db.read" on table limit {cap} calls per 1h {scope}'
    )


def engine_on(where: Place, bundle: Bundle) -> Engine:
    return Engine(bundle, where.open(), clock=lambda: NOW)


def ask(engine: Engine, agent: str | dict[str, Any] = "bot", **data: Any) -> Decision:
    if isinstance(agent, str):
        agent = {"id": agent, "risk": "low", "status": "active"}
    data["agent"] = agent
    if "tool" not in data and "resource" not in data:
        data["tool"] = "search"
    return engine.decide(request(engine.bundle, **data))


def read(engine: Engine, table: str, agent: str = "bot") -> Decision:
    resource = {"type": "table", "id": table}
    return ask(engine, agent, action="db.read", resource=resource)


def test_per_agent_and_resource_counts_each_resource_of_each_agent_apart(where: Place) -> None:
    engine = engine_on(where, limited("per agent+resource"))
    assert read(engine, "orders").allow
    assert not read(engine, "orders").allow  # the cap of one read of this record
    assert read(engine, "invoices").allow  # another resource: a count of its own
    assert read(engine, "orders", agent="other").allow  # another agent: its own
    assert ask(engine, tool="orders").allow  # a tool is a resource of type tool


def test_per_owner_is_shared_by_every_agent_of_one_owner(where: Place) -> None:
    engine = engine_on(where, limited("per owner", cap=2))

    def call(agent: str, owner: str) -> bool:
        return ask(engine, {"id": agent, "risk": "low", "status": "active", "owner": owner}).allow

    assert call("bot-1", "alice") and call("bot-2", "alice")
    assert not call("bot-3", "alice")  # alice's agents have used her two calls
    assert call("bot-4", "bob")  # bob's agents have their own


def test_per_owner_without_an_owner_fails_so_the_permit_does_not_apply(where: Place) -> None:
    engine = engine_on(where, limited("per owner"))
    decision = ask(engine)
    assert not decision.allow
    assert [e.message for e in decision.errors] == [
        "limit per owner needs the agent's owner, and the agent has none"
    ]


def test_per_tool_is_shared_by_every_agent_and_kept_apart_per_tool(where: Place) -> None:
    engine = engine_on(where, limited("per tool"))
    assert ask(engine, agent="a", tool="search").allow
    assert not ask(engine, agent="b", tool="search").allow  # one count for all agents
    assert ask(engine, agent="b", tool="fetch").allow  # another tool
    assert read(engine, "orders", agent="a").allow  # a generic action: per resource
    assert not read(engine, "orders", agent="b").allow
    assert read(engine, "invoices", agent="b").allow


def test_global_is_one_count_for_every_agent_and_resource(where: Place) -> None:
    engine = engine_on(where, limited("global", cap=3))
    assert ask(engine, agent="a", tool="search").allow
    assert ask(engine, agent="b", tool="fetch").allow
    assert ask(engine, agent="c", user={"id": "alice"}).allow
    over = ask(engine, agent="d", tool="other")
    assert not over.allow
    assert "permit p is over its limit: 3 calls per 1h global" in over.reasons
    assert read(engine, "orders", agent="d").allow  # rule q's limit is a count of its own


def test_hostile_ids_cannot_pose_as_key_separators(where: Place) -> None:
    engine = engine_on(where, limited("per agent+resource"))
    # Unescaped, both keys would end `a|table/1|table/x`.
    assert read(engine, "x", agent="a|table/1").allow
    assert read(engine, "1|table/x", agent="a").allow
    assert read(engine, "1%7Ctable%2Fx", agent="a").allow  # nor can an escape
    engine = engine_on(where, limited("per tool"))
    assert ask(engine, tool="table/orders").allow  # a tool named like a resource
    assert read(engine, "orders").allow


def key_of(scope: str, **data: Any) -> str:
    bundle = limited(scope)
    rule = next(rule for rule in bundle.rules if rule.id == "p")
    data.setdefault("agent", {"id": "bot", "risk": "low", "status": "active", "owner": "ann"})
    data.setdefault("tool", "sql.select")
    return limit_key("p", 0, rule.limits[0], request(bundle, **data))


def test_the_keys_of_the_first_scopes_are_as_they_always_were() -> None:
    assert key_of("per agent") == "p#0|agent|bot"
    assert key_of("per user", user={"id": "ann"}) == "p#0|user|ann"
    assert key_of("per agent+user", user={"id": "ann"}) == "p#0|agent+user|bot+ann"


def test_the_keys_of_the_newer_scopes_are_as_documented() -> None:
    assert key_of("per agent+resource") == "p#0|agent+resource|bot|tool/sql.select"
    assert key_of("per owner") == "p#0|owner|ann"
    assert key_of("per tool") == "p#0|tool|sql.select"
    assert key_of("global") == "p#0|global|*"
    hostile = {"id": "a/b|c%", "risk": "low", "status": "active", "owner": "o|1"}
    assert key_of("per agent+resource", agent=hostile, tool="t/1") == (
        "p#0|agent+resource|a%2Fb%7Cc%25|tool/t%2F1"
    )
    assert key_of("per owner", agent=hostile) == "p#0|owner|o%7C1"
    assert key_of("per tool", tool="table/orders") == "p#0|tool|table%2Forders"
