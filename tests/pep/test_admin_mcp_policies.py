"""The admin MCP server's policy and audit tools over stdio: check and test a proposed
change, simulate a request, replay audited decisions against a proposal (what-if),
explain a past decision, list alerts, write a compliance report."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from issuer.store import Store, open_store
from pdp.audit.writer import AuditWriter
from pdp.directory import Directory
from pdp.engine import Engine
from pdp.loader import load_directory
from pdp.serve.proto import authorizer_pb2 as pb
from pdp.serve.proto import authorizer_pb2_grpc as pb_grpc
from tests.conftest import SHIPPED_POLICIES
from tests.pep.test_admin_mcp import call, over_stdio, refused, seed_agent
from tests.servers import Server

AGENTS_POL = (SHIPPED_POLICIES / "agents.pol").read_text()
# Read tools for low-risk agents only: medium-risk agents lose them.
STRICTER = AGENTS_POL.replace(
    "permit read_only\n  call tool in read_tools\n  when agent.risk < high",
    "permit read_only\n  call tool in read_tools\n  when agent.risk < medium",
)


def tool_call(agent_id: str, tool: str, amount: str | None = None) -> pb.AuthorizeRequest:
    context = {}
    if amount is not None:
        context["amount"] = pb.Value(money=pb.Money(amount=amount, currency="USD"))
    return pb.AuthorizeRequest(
        agent=pb.Agent(id=agent_id),
        action="tool.call",
        resource=pb.Resource(type="tool", id=tool),
        context=context,
    )


@pytest.fixture
def audited(url: str, tmp_path: Path) -> Iterator[tuple[str, Store, Path, dict[str, str]]]:
    """A store whose agent trail holds decisions the PDP made (each one's id by a label),
    and a copy of the shipped policies."""
    assert STRICTER != AGENTS_POL
    policies = tmp_path / "policies"
    shutil.copytree(SHIPPED_POLICIES, policies)
    store = open_store(url)
    writer = AuditWriter(store)
    try:
        pay_bot = seed_agent(store, "pay-bot", purpose="payments")
        report_bot = seed_agent(store, "report-bot", purpose="reporting", riskLevel="medium")
        directory = Directory(store)
        directory.load()
        server = Server(
            Engine(load_directory(policies).bundle),
            directory=directory,
            audit=writer,
            durability="sync",
        )
        try:
            stub = pb_grpc.AuthorizerStub(server.channel)
            asked = {
                "pay-bot search": tool_call(pay_bot, "search"),
                "pay-bot transfer": tool_call(pay_bot, "payments.transfer", "200"),
                "report-bot search": tool_call(report_bot, "search"),
                "report-bot sql": tool_call(report_bot, "sql.select"),
                "report-bot transfer": tool_call(report_bot, "payments.transfer", "50"),
            }
            ids = {label: stub.Authorize(m, timeout=5).decision_id for label, m in asked.items()}
        finally:
            server.close()
        writer.flush()
        yield url, store, policies, ids
    finally:
        writer.close()
        store.close()


def test_what_if_lists_exactly_the_decisions_a_change_would_flip(
    audited: tuple[str, Store, Path, dict[str, str]],
) -> None:
    url, _, policies, ids = audited

    async def body(client: Client) -> Any:
        return (
            await call(
                client,
                "what_if_policy_change",
                changes=[{"file": "agents.pol", "text": STRICTER}],
            ),
            await call(
                client,
                "what_if_policy_change",
                changes=[{"file": "agents.pol", "text": STRICTER}],
                limit=2,
            ),
        )

    everything, recent = over_stdio(url, body, policies=policies)
    assert everything["replayed"] == 5
    assert everything["changed"] == 2
    changed = {d["decision_id"]: d for d in everything["decisions"]}
    assert set(changed) == {ids["report-bot search"], ids["report-bot sql"]}
    flipped = changed[ids["report-bot search"]]
    assert flipped["recorded"]["decision"] == "allow"
    assert flipped["current"]["decision"] == "allow"
    assert flipped["current"]["decided_by"] == ["agents.read_only"]
    assert flipped["proposed"]["decision"] == "deny"
    assert flipped["resource"] == {"type": "tool", "id": "search"}
    assert everything["current_version"] != everything["proposed_version"]
    assert recent["replayed"] == 2 and recent["changed"] == 1  # report-bot sql only
    assert (policies / "agents.pol").read_text() == AGENTS_POL  # nothing was written


def test_what_if_takes_each_agent_as_it_was_when_it_was_decided(
    audited: tuple[str, Store, Path, dict[str, str]],
) -> None:
    url, store, policies, ids = audited
    report_bot = store.find("Agent", "name", "report-bot")
    data = {**report_bot.data}
    extension = {**data["urn:tessera:params:scim:schemas:extension:agent:1.0:Agent"]}
    extension["riskLevel"] = "low"  # lowered after the decisions were made
    data["urn:tessera:params:scim:schemas:extension:agent:1.0:Agent"] = extension
    store.replace("Agent", report_bot.id, data, unique={}, expected_version=None, actor="someone")

    async def body(client: Client) -> Any:
        return await call(
            client, "what_if_policy_change", changes=[{"file": "agents.pol", "text": STRICTER}]
        )

    answer = over_stdio(url, body, policies=policies)
    assert {d["decision_id"] for d in answer["decisions"]} == {
        ids["report-bot search"],
        ids["report-bot sql"],
    }


def test_what_if_sees_the_groups_that_list_an_agent_now(
    audited: tuple[str, Store, Path, dict[str, str]],
) -> None:
    url, store, policies, ids = audited
    report_bot = store.find("Agent", "name", "report-bot")
    members = [{"value": report_bot.id}]
    store.create("Group", {"displayName": "frozen", "members": members}, unique={}, actor="x")
    frozen = AGENTS_POL + '\nforbid frozen_agents\n  when agent.groups contains "frozen"\n'

    async def body(client: Client) -> Any:
        return await call(
            client, "what_if_policy_change", changes=[{"file": "agents.pol", "text": frozen}]
        )

    answer = over_stdio(url, body, policies=policies)
    assert {d["decision_id"] for d in answer["decisions"]} == {
        ids["report-bot search"],
        ids["report-bot sql"],
    }
    assert {d["proposed"]["decided_by"][0] for d in answer["decisions"]} == {"agents.frozen_agents"}


def test_checks_and_tests_a_proposed_change_without_writing_it(
    audited: tuple[str, Store, Path, dict[str, str]],
) -> None:
    url, _, policies, _ = audited
    broken = AGENTS_POL.replace("when agent.risk < high", "when agent.risk < hihg", 1)
    medium_reads = {
        "file": "medium_test.pol",
        "text": 'package agents\n\ntest "a medium-risk agent may search" {\n'
        '  agent { id: "r", risk: medium, status: "active" }\n'
        '  call tool "search"\n  expect allow by read_only\n}\n',
    }

    async def body(client: Client) -> Any:
        return (
            await call(
                client, "check_policy_change", changes=[{"file": "agents.pol", "text": broken}]
            ),
            await call(
                client, "check_policy_change", changes=[{"file": "agents.pol", "text": STRICTER}]
            ),
            await call(
                client,
                "test_policy_change",
                changes=[{"file": "agents.pol", "text": STRICTER}, medium_reads],
            ),
            await call(client, "test_policy_change", changes=[medium_reads]),
            await refused(
                client, "check_policy_change", changes=[{"file": "../etc/x.pol", "text": ""}]
            ),
            await refused(
                client, "check_policy_change", changes=[{"file": "gone.pol", "text": None}]
            ),
        )

    bad, good, failing, passing, outside, missing = over_stdio(url, body, policies=policies)
    assert bad["ok"] is False
    error = bad["errors"][0]
    assert "agents.pol" in error["text"] and "hihg" in error["text"]
    assert good["ok"] is True and good["errors"] == []
    assert failing["ok"] is False and failing["failed"] >= 1
    assert failing["failures"][0]["test"] == "a medium-risk agent may search"
    assert "expected allow, got deny" in failing["failures"][0]["message"]
    assert "candidate rules" in failing["failures"][0]["explanation"]
    assert passing["ok"] is True and passing["failed"] == 0 and passing["passed"] > 0
    assert "not a policy file name" in outside
    assert "no such policy file" in missing
    assert (policies / "agents.pol").read_text() == AGENTS_POL


def test_simulates_a_request_with_the_directory_and_explains_it(
    audited: tuple[str, Store, Path, dict[str, str]],
) -> None:
    url, store, policies, _ = audited
    pay_bot = store.find("Agent", "name", "pay-bot").id
    transfer = {
        "agent": {"id": pay_bot},
        "tool": "payments.transfer",
        "context": {"amount": "2000 USD"},
    }

    async def body(client: Client) -> Any:
        return (
            await call(client, "simulate_request", request=transfer),
            await call(
                client,
                "simulate_request",
                request={"agent": {"id": pay_bot}, "tool": "search"},
                changes=[{"file": "agents.pol", "text": STRICTER}],
            ),
            await call(
                client, "simulate_request", request={"agent": {"id": "ghost"}, "tool": "search"}
            ),
            await refused(client, "simulate_request", request={"agent": {"id": pay_bot}}),
        )

    over, allowed, unknown, malformed = over_stdio(url, body, policies=policies)
    assert over["decision"] == "deny"
    assert "permit agents.small_transfers" in over["explanation"]
    assert "context.amount <= 1000 USD" in over["explanation"]
    assert allowed["decision"] == "allow" and allowed["decided_by"] == ["agents.read_only"]
    assert unknown["decision"] == "deny" and unknown["decided_by"] == ["directory"]
    assert "action" in malformed


def test_explains_a_past_decision_by_its_id(
    audited: tuple[str, Store, Path, dict[str, str]],
) -> None:
    url, _, policies, ids = audited

    async def body(client: Client) -> Any:
        return (
            await call(client, "explain_decision", decision_id=ids["report-bot transfer"]),
            await call(client, "query_decisions", decision="deny"),
            await refused(client, "explain_decision", decision_id="0" * 32),
        )

    explained, denials, unknown = over_stdio(url, body, policies=policies)
    assert explained["record"]["allow"] is False
    assert explained["record"]["decision_id"] == ids["report-bot transfer"]
    assert "decision: DENY" in explained["explanation"]
    assert 'agent.purpose == "payments"' in explained["explanation"]
    assert "in force now" in explained["bundle"]
    assert [d["decision_id"] for d in denials["decisions"]] == [ids["report-bot transfer"]]
    assert "no decision" in unknown


def test_lists_alerts_and_writes_a_compliance_report(
    audited: tuple[str, Store, Path, dict[str, str]],
) -> None:
    url, store, policies, _ = audited
    pay_bot = store.find("Agent", "name", "pay-bot").id
    writer = AuditWriter(store)
    try:
        writer.submit(
            "alert",
            {
                "kind": "alert",
                "at": "2026-11-28T10:14:00+00:00",
                "alert": "new_tool",
                "severity": "warning",
                "agent": pay_bot,
                "message": "pay-bot called a tool it never called before",
                "source_seq": 1,
            },
        ).result(timeout=10)
    finally:
        writer.close()

    async def body(client: Client) -> Any:
        return (
            await call(client, "list_alerts", agent=pay_bot),
            await call(client, "list_alerts", alert="rate"),
            await call(client, "compliance_report", agent="pay-bot"),
            await call(client, "compliance_report", agent="pay-bot", format="json"),
            await refused(client, "list_alerts", since="yesterday"),
            await refused(client, "compliance_report", agent="nobody"),
        )

    alerts, none, report, as_json, bad_time, unknown = over_stdio(url, body, policies=policies)
    assert [a["alert"] for a in alerts["alerts"]] == ["new_tool"]
    assert none["count"] == 0
    assert report["intact"] is True and report["format"] == "md"
    assert report["report"].startswith("# Tessera compliance report")
    assert "### Identity" in report["report"]
    assert as_json["format"] == "json"
    assert "pay-bot" in as_json["report"] and "new_tool" in as_json["report"]
    assert "RFC 3339" in bad_time
    assert "nobody" in unknown
