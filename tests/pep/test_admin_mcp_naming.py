"""Every admin MCP tool that takes an agent takes its id or its name, through one resolver:
an agent no one knows is refused ("no agent named or with id 'x'"), never answered with
nothing, and a name two agents had is refused with their ids. Driven in process by the
SDK's client, on a trail a gRPC PDP wrote."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from issuer.store import Store
from pdp.audit.records import decision_record
from pdp.audit.writer import AuditWriter
from pdp.model import Answer, Decision, Request
from tests.pep.test_admin_mcp import call, refused, seed_agent
from tests.pep.test_admin_mcp_errors import in_process
from tests.pep.test_admin_mcp_policies import STRICTER, audited
from tests.test_directory import agent_doc

__all__ = ["audited"]  # the fixture: a store whose agent trail a PDP wrote

Audited = tuple[str, Store, Path, dict[str, str]]
EXTENSION = "urn:tessera:params:scim:schemas:extension:agent:1.0:Agent"
UNKNOWN = "no agent named or with id 'nobody'"
STRICT = [{"file": "agents.pol", "text": STRICTER}]


def raise_an_alert(store: Store, agent: str) -> None:
    writer = AuditWriter(store)
    try:
        alert = {
            "kind": "alert",
            "at": "2026-11-28T10:14:00+00:00",
            "alert": "new_tool",
            "severity": "warning",
            "agent": agent,
            "message": "called a tool it never called before",
            "source_seq": 1,
        }
        writer.submit("alert", alert).result(timeout=10)
    finally:
        writer.close()


def test_query_decisions_takes_an_agents_name(audited: Audited) -> None:
    _, store, policies, ids = audited

    async def body(client: Client) -> Any:
        return (
            await call(client, "query_decisions", agent="pay-bot"),
            await call(client, "query_decisions", agent="Pay-Bot"),
            await call(client, "query_decisions", agent=store.find("Agent", "name", "pay-bot").id),
        )

    by_name, any_case, by_id = in_process(store, body, policies)
    wanted = [ids["pay-bot search"], ids["pay-bot transfer"]]
    assert [d["decision_id"] for d in by_name["decisions"]] == wanted
    assert by_name == any_case == by_id


def test_what_if_takes_an_agents_name(audited: Audited) -> None:
    _, store, policies, ids = audited

    async def body(client: Client) -> Any:
        return await call(client, "what_if_policy_change", changes=STRICT, agent="report-bot")

    answer = in_process(store, body, policies)
    assert answer["replayed"] == 3
    assert {d["decision_id"] for d in answer["decisions"]} == {
        ids["report-bot search"],
        ids["report-bot sql"],
    }


def test_list_alerts_takes_an_agents_name(audited: Audited) -> None:
    _, store, policies, _ = audited
    raise_an_alert(store, store.find("Agent", "name", "pay-bot").id)

    async def body(client: Client) -> Any:
        return (
            await call(client, "list_alerts", agent="pay-bot"),
            await call(client, "list_alerts", agent="report-bot"),
        )

    alerts, none = in_process(store, body, policies)
    assert [a["alert"] for a in alerts["alerts"]] == ["new_tool"]
    assert none == {"alerts": [], "count": 0}  # a known agent without alerts has none


def test_simulate_request_takes_an_agents_name(audited: Audited) -> None:
    _, store, policies, _ = audited

    async def body(client: Client) -> Any:
        return await call(
            client, "simulate_request", request={"agent": {"id": "pay-bot"}, "tool": "search"}
        )

    answer = in_process(store, body, policies)
    assert answer["decision"] == "allow" and answer["decided_by"] == ["agents.read_only"]


# Every tool that takes an agent, with the other arguments it needs.
TAKES_AN_AGENT: dict[str, dict[str, Any]] = {
    "get_agent": {},
    "list_consents": {},
    "update_agent": {"owner": "finance"},
    "suspend_agent": {},
    "reactivate_agent": {},
    "retire_agent": {},
    "set_risk_level": {"risk_level": "low"},
    "issue_credential": {"kind": "api_key"},
    "rotate_credential": {"credential": "tsk_x"},
    "query_decisions": {},
    "what_if_policy_change": {"changes": STRICT},
    "list_alerts": {},
    "compliance_report": {},
}


def test_every_tool_that_takes_an_agent_refuses_one_no_one_knows(audited: Audited) -> None:
    _, store, policies, _ = audited
    before = store.last_change()

    async def body(client: Client) -> Any:
        listed = await client.list_tools()
        taking = {t.name for t in listed.tools if "agent" in t.input_schema["properties"]}
        answers = {
            name: await refused(client, name, agent="nobody", **extra)
            for name, extra in TAKES_AN_AGENT.items()
        }
        return taking, answers

    taking, answers = in_process(store, body, policies)
    assert taking == set(TAKES_AN_AGENT)
    for name, answer in answers.items():
        assert UNKNOWN in answer, (name, answer)
    assert store.last_change() == before


def test_a_name_two_agents_had_is_refused_naming_both(audited: Audited) -> None:
    _, store, policies, ids = audited
    old = store.find("Agent", "name", "pay-bot")
    renamed = agent_doc("payer", purpose="payments")
    store.replace(
        "Agent", old.id, renamed, unique={"name": "payer"}, expected_version=None, actor="x"
    )
    new = seed_agent(store, "pay-bot", purpose="payments")

    async def body(client: Client) -> Any:
        return (
            await refused(client, "query_decisions", agent="pay-bot"),
            await refused(client, "list_alerts", agent="pay-bot"),
            await call(client, "query_decisions", agent="payer"),
            await call(client, "query_decisions", agent=old.id),
            await call(client, "get_agent", agent="pay-bot"),
        )

    shared, alerts, by_new_name, by_id, current = in_process(store, body, policies)
    assert "'pay-bot' names more than one agent" in shared
    assert old.id in shared and new in shared and "name it by its id" in shared
    assert old.id in alerts and new in alerts
    wanted = [ids["pay-bot search"], ids["pay-bot transfer"]]
    assert [d["decision_id"] for d in by_new_name["decisions"]] == wanted
    assert by_id == by_new_name
    assert current["id"] == new  # acting on an agent: the one named so now


def test_an_agent_the_directory_never_held_is_found_if_the_trail_holds_it(
    audited: Audited,
) -> None:
    """A PEP asked for 'ghost'; the decision point refused it as unknown. Its refusals can
    be looked up by that id, which is no directory agent."""
    _, store, policies, _ = audited
    asked = Request.build(
        agent={"id": "ghost"}, action="tool.call", resource_type="tool", resource_id="search"
    )
    refusal = Decision(
        False, (), ("directory",), ("agent 'ghost' is not in the directory",), (), "v"
    )
    writer = AuditWriter(store)
    try:
        record = decision_record(asked, Answer(refusal, "a" * 32, False), 0.001, "pep")
        writer.submit("agent", record).result(timeout=10)
    finally:
        writer.close()

    async def body(client: Client) -> Any:
        return (
            await call(client, "query_decisions", agent="ghost"),
            await call(client, "list_alerts", agent="ghost"),
            await refused(client, "get_agent", agent="ghost"),
        )

    found, alerts, unknown = in_process(store, body, policies)
    assert [d["decision_id"] for d in found["decisions"]] == ["a" * 32]
    assert alerts["count"] == 0
    assert "no agent named or with id 'ghost'" in unknown


@pytest.mark.parametrize("blank", ["", "   "])
def test_a_blank_agent_is_refused(audited: Audited, blank: str) -> None:
    _, store, policies, _ = audited

    async def body(client: Client) -> Any:
        return await refused(client, "query_decisions", agent=blank)

    assert "name the agent by its id or its name" in in_process(store, body, policies)
