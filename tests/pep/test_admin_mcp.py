"""The admin MCP server over stdio, driven by the official MCP SDK's client: it lists its
tools and resources, reads the directory and the policies, and every write asks the
person first, is recorded for the administrator, and takes effect at the PDP."""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import mcp.types as types
import pytest
from mcp import Client, StdioServerParameters

from issuer.models import AGENT_EXTENSION, AGENT_SCHEMA
from issuer.store import Store, open_store
from tests.conftest import SHIPPED_POLICIES

ADMIN = "alice@example.com"


def agent_document(name: str, **extension: Any) -> dict[str, Any]:
    return {
        "schemas": [AGENT_SCHEMA, AGENT_EXTENSION],
        "name": name,
        AGENT_EXTENSION: {
            "owner": "finance",
            "riskLevel": "low",
            "agentType": "background",
            "status": "active",
            **extension,
        },
    }


def seed_agent(store: Store, name: str, **extension: Any) -> str:
    record = store.create(
        "Agent", agent_document(name, **extension), unique={"name": name}, actor="seed"
    )
    return record.id


@pytest.fixture
def seeded(url: str) -> Iterator[tuple[str, Store]]:
    store = open_store(url)
    try:
        seed_agent(store, "pay-bot", purpose="payments")
        seed_agent(store, "report-bot", purpose="reporting", riskLevel="medium")
        yield url, store
    finally:
        store.close()


class Person:
    """The elicitation callback: records every question and gives one answer."""

    def __init__(self, action: str = "accept", confirm: bool = True) -> None:
        self.action = action
        self.confirm = confirm
        self.asked: list[str] = []

    async def __call__(self, context: Any, params: Any) -> types.ElicitResult:
        self.asked.append(params.message)
        content = {"confirm": self.confirm} if self.action == "accept" else None
        return types.ElicitResult(action=self.action, content=content)  # type: ignore[arg-type]


def server_parameters(url: str, policies: Path = SHIPPED_POLICIES) -> StdioServerParameters:
    exe = Path(sys.executable).parent / "tessera"
    return StdioServerParameters(
        command=str(exe),
        args=["admin-mcp", "--store", url, "--policies", str(policies), "--admin", ADMIN],
    )


def session(
    url: str,
    body: Callable[[Client], Awaitable[Any]],
    person: Person | None = None,
    policies: Path = SHIPPED_POLICIES,
) -> Any:
    """Run ``body`` with a client connected to ``tessera admin-mcp`` over stdio."""

    async def main() -> Any:
        with anyio.fail_after(60):
            async with Client(
                server_parameters(url, policies), elicitation_callback=person or Person()
            ) as client:
                return await body(client)

    return anyio.run(main)


async def call(client: Client, tool: str, **arguments: Any) -> Any:
    """A tool's JSON answer; AssertionError with the message when the tool fails."""
    result = await client.call_tool(tool, arguments)
    text = result.content[0].text  # type: ignore[union-attr]
    assert not result.is_error, text
    return json.loads(text)


async def refused(client: Client, tool: str, **arguments: Any) -> str:
    """The error message of a tool call that must fail."""
    result = await client.call_tool(tool, arguments)
    assert result.is_error
    return str(result.content[0].text)  # type: ignore[union-attr]


# ---------------------------------------------------------------- slice 1: reading


def test_lists_its_tools_with_descriptions_and_input_schemas(
    seeded: tuple[str, Store],
) -> None:
    url, _ = seeded

    async def body(client: Client) -> Any:
        return (await client.list_tools()).tools

    tools = {tool.name: tool for tool in session(url, body)}
    assert {
        "list_agents",
        "get_agent",
        "register_agent",
        "update_agent",
        "suspend_agent",
        "retire_agent",
        "set_risk_level",
        "issue_credential",
        "rotate_credential",
        "list_users",
        "list_consents",
        "list_policies",
        "check_policy_change",
        "test_policy_change",
        "simulate_request",
        "what_if_policy_change",
        "explain_decision",
        "list_alerts",
        "compliance_report",
    } <= set(tools)
    for tool in tools.values():
        assert tool.description and len(tool.description) > 40, tool.name
        for name, schema in tool.input_schema.get("properties", {}).items():
            assert "description" in schema or "$ref" in schema or "anyOf" in schema, (
                tool.name,
                name,
            )
    register = tools["register_agent"].input_schema
    assert set(register["required"]) == {"name", "owner", "risk_level"}
    assert "confirmation" not in register["properties"]  # asked of the person, not the model
    assert register["properties"]["risk_level"]["enum"] == ["low", "medium", "high", "critical"]
    assert tools["list_agents"].annotations.read_only_hint is True  # type: ignore[union-attr]
    assert tools["suspend_agent"].annotations.destructive_hint is True  # type: ignore[union-attr]


def test_reads_agents_users_consents_and_policies(seeded: tuple[str, Store]) -> None:
    url, store = seeded
    user = store.create(
        "User", {"userName": "bj", "roles": [{"value": "analyst"}]}, unique={}, actor="seed"
    )
    pay_bot = store.find("Agent", "name", "pay-bot").id
    store.create(
        "Consent",
        {
            "user_id": user.id,
            "agent_id": pay_bot,
            "client_id": "app",
            "scopes": ["payments:transfer"],
        },
        unique={},
        actor=user.id,
    )

    async def body(client: Client) -> Any:
        return (
            await call(client, "list_agents"),
            await call(client, "list_agents", risk_level="medium"),
            await call(client, "get_agent", agent="PAY-BOT"),
            await call(client, "list_users"),
            await call(client, "list_consents", agent="pay-bot"),
            await call(client, "list_policies"),
            await refused(client, "get_agent", agent="nobody"),
        )

    everyone, medium, agent, users, consents, policies, unknown = session(url, body)
    assert [a["name"] for a in everyone["agents"]] == ["pay-bot", "report-bot"]
    assert [a["name"] for a in medium["agents"]] == ["report-bot"]
    assert agent["id"] == pay_bot and agent["purpose"] == "payments"
    assert agent["credentials"] == []
    assert users["users"][0]["roles"] == ["analyst"]
    assert consents["consents"][0]["scopes"] == ["payments:transfer"]
    files = {f["name"]: f for f in policies["files"]}
    assert set(files) == {"agents.pol", "agents_test.pol", "schema.pol"}
    assert files["schema.pol"]["declares_schema"] is True
    assert "agents.read_only" in [r["id"] for r in files["agents.pol"]["rules"]]
    assert "no agent has the id or name 'nobody'" in unknown


def test_serves_the_policy_files_and_the_schemas_as_resources(seeded: tuple[str, Store]) -> None:
    url, _ = seeded

    async def body(client: Client) -> Any:
        listed = [str(r.uri) for r in (await client.list_resources()).resources]
        texts = {}
        for uri in (
            "tessera://policies/agents.pol",
            "tessera://schema/policy",
            "tessera://schema/agent",
        ):
            contents = (await client.read_resource(uri)).contents
            texts[uri] = contents[0].text  # type: ignore[union-attr]
        return listed, texts

    listed, texts = session(url, body)
    assert {
        "tessera://policies/agents.pol",
        "tessera://policies/schema.pol",
        "tessera://schema/policy",
        "tessera://schema/agent",
    } <= set(listed)
    assert texts["tessera://policies/agents.pol"] == (SHIPPED_POLICIES / "agents.pol").read_text()
    assert "schema {" in texts["tessera://schema/policy"]
    agent_schemas = json.loads(texts["tessera://schema/agent"])
    attributes = {a["name"] for s in agent_schemas for a in s["attributes"]}
    assert {"name", "owner", "riskLevel", "status"} <= attributes
