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
from mcp.shared.exceptions import MCPError

from issuer.store import Store, open_store
from pdp.audit.changes import ChangeAuditor
from pdp.audit.query import entries
from pdp.audit.writer import AuditWriter
from pdp.directory import Directory
from pdp.engine import Engine
from pdp.loader import load_directory
from pdp.serve.proto import authorizer_pb2 as pb
from pdp.serve.proto import authorizer_pb2_grpc as pb_grpc
from tests.conftest import SHIPPED_POLICIES
from tests.servers import Server
from tests.test_directory import agent_doc

ADMIN = "alice@example.com"


def seed_agent(store: Store, name: str, **extension: Any) -> str:
    record = store.create(
        "Agent", agent_doc(name, **extension), unique={"name": name}, actor="seed"
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


def over_stdio(
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


def test_the_alert_kinds_it_offers_are_the_detectors_kinds() -> None:
    from mcp.server.mcpserver import MCPServer

    from pdp.audit.baselines import ALERTS
    from pep.admin_mcp.server import Settings, register_tools

    server: MCPServer[Any] = MCPServer("t")
    register_tools(server, Settings(None, SHIPPED_POLICIES, "a"))  # type: ignore[arg-type]
    tools = {tool.name: tool for tool in anyio.run(server.list_tools)}
    kinds = tools["list_alerts"].input_schema["properties"]["alert"]["anyOf"][0]["enum"]
    assert tuple(kinds) == ALERTS


def test_lists_its_tools_with_descriptions_and_input_schemas(
    seeded: tuple[str, Store],
) -> None:
    url, _ = seeded

    async def body(client: Client) -> Any:
        return (await client.list_tools()).tools

    tools = {tool.name: tool for tool in over_stdio(url, body)}
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

    everyone, medium, agent, users, consents, policies, unknown = over_stdio(url, body)
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
    assert "no agent named or with id 'nobody'" in unknown


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

    listed, texts = over_stdio(url, body)
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


# ---------------------------------------------------------------- slice 2: writes


def admin_trail(store: Store) -> list[dict[str, Any]]:
    """The admin trail as the change follower writes it from the change log."""
    writer = AuditWriter(store)
    try:
        ChangeAuditor(store, writer).catch_up()
        writer.flush()
    finally:
        writer.close()
    return [json.loads(entry.record) for entry in entries(store, "admin")]


def test_registering_asks_the_person_and_is_recorded_for_the_administrator(
    seeded: tuple[str, Store],
) -> None:
    url, store = seeded
    person = Person()

    async def body(client: Client) -> Any:
        return await call(
            client,
            "register_agent",
            name="ledger-bot",
            owner="finance",
            risk_level="low",
            purpose="reporting",
            labels=[{"key": "team", "value": "fp&a"}],
        )

    answer = over_stdio(url, body, person)
    assert answer["done"] is True
    agent = answer["agent"]
    assert (agent["name"], agent["owner"], agent["riskLevel"], agent["status"]) == (
        "ledger-bot",
        "finance",
        "low",
        "active",
    )
    assert agent["labels"] == [{"key": "team", "value": "fp&a"}]
    assert len(person.asked) == 1 and "ledger-bot" in person.asked[0]
    assert [c.actor for c in store.history("Agent", agent["id"])] == [ADMIN]
    last = admin_trail(store)[-1]
    assert (last["op"], last["resource"]["id"], last["actor"]) == ("create", agent["id"], ADMIN)


@pytest.mark.parametrize(
    "action,confirm", [("decline", False), ("cancel", False), ("accept", False)]
)
def test_a_write_the_person_does_not_confirm_changes_nothing(
    seeded: tuple[str, Store], action: str, confirm: bool
) -> None:
    url, store = seeded
    person = Person(action, confirm)
    before = store.last_change()

    async def body(client: Client) -> Any:
        return (
            await call(client, "register_agent", name="x-bot", owner="it", risk_level="low"),
            await call(client, "suspend_agent", agent="pay-bot"),
            await call(client, "issue_credential", agent="pay-bot", kind="api_key"),
        )

    answers = over_stdio(url, body, person)
    assert [a["done"] for a in answers] == [False, False, False]
    assert len(person.asked) == 3
    assert store.last_change() == before


def test_a_suspended_agent_is_denied_by_the_pdp(seeded: tuple[str, Store]) -> None:
    url, store = seeded
    pay_bot = store.find("Agent", "name", "pay-bot").id
    directory = Directory(store)
    directory.load()
    server = Server(Engine(load_directory(SHIPPED_POLICIES).bundle), directory=directory)
    try:
        stub = pb_grpc.AuthorizerStub(server.channel)
        ask = pb.AuthorizeRequest(
            agent=pb.Agent(id=pay_bot),
            action="tool.call",
            resource=pb.Resource(type="tool", id="search"),
        )
        assert stub.Authorize(ask, timeout=5).allow
        person = Person()

        async def body(client: Client) -> Any:
            return await call(client, "suspend_agent", agent="pay-bot")

        answer = over_stdio(url, body, person)
        assert answer["agent"]["status"] == "suspended"
        assert "Every request it makes will be denied" in person.asked[0]
        directory.refresh()
        denied = stub.Authorize(ask, timeout=5)
    finally:
        server.close()
    assert not denied.allow
    assert list(denied.decided_by) == ["directory"]
    assert directory.resolve(pay_bot, None) == f"agent {pay_bot!r} is suspended"
    assert [c.actor for c in store.history("Agent", pay_bot)] == ["seed", ADMIN]


def test_updates_risk_and_retirement_go_through_the_directory_schema(
    seeded: tuple[str, Store],
) -> None:
    url, store = seeded

    async def body(client: Client) -> Any:
        return (
            await call(
                client,
                "update_agent",
                agent="report-bot",
                owner="ops",
                model="m-2",
                labels=[{"key": "team", "value": "ops"}],
            ),
            await call(client, "set_risk_level", agent="report-bot", risk_level="high"),
            await call(client, "retire_agent", agent="report-bot"),
            await refused(client, "update_agent", agent="report-bot", owner="   "),
            await refused(client, "register_agent", name="PAY-BOT", owner="x", risk_level="low"),
            await refused(client, "update_agent", agent="report-bot"),
            await refused(client, "set_risk_level", agent="report-bot", risk_level="extreme"),
            await refused(client, "suspend_agent", agent="nobody"),
        )

    person = Person()
    updated, risky, retired, blank, taken, empty, extreme, nobody = over_stdio(url, body, person)
    # asked: the three writes, and the two the directory refused after the question
    assert len(person.asked) == 5
    assert person.asked[0].endswith(
        "owner = 'ops', model = 'm-2', labels = [{'key': 'team', 'value': 'ops'}]?"
    )
    assert "extreme" in extreme
    assert "no agent named or with id 'nobody'" in nobody
    assert (updated["agent"]["owner"], updated["agent"]["model"]) == ("ops", "m-2")
    assert updated["agent"]["labels"] == [{"key": "team", "value": "ops"}]
    assert updated["agent"]["purpose"] == "reporting"  # what was not given stays
    assert risky["agent"]["riskLevel"] == "high"
    assert retired["agent"]["status"] == "retired"
    assert "owner" in blank and "blank" in blank
    assert "already taken" in taken
    assert "nothing to change" in empty
    report_bot = store.find("Agent", "name", "report-bot").id
    assert [c.actor for c in store.history("Agent", report_bot)] == ["seed", ADMIN, ADMIN, ADMIN]


def test_issues_and_rotates_credentials_showing_each_secret_once(
    seeded: tuple[str, Store],
) -> None:
    url, store = seeded

    async def body(client: Client) -> Any:
        key = await call(
            client, "issue_credential", agent="pay-bot", kind="api_key", scope="reports:read"
        )
        client_ = await call(
            client, "issue_credential", agent="pay-bot", kind="client_secret_basic", scope="a b"
        )
        new_key = await call(
            client, "rotate_credential", agent="pay-bot", credential=key["credential"]["prefix"]
        )
        new_client = await call(
            client,
            "rotate_credential",
            agent="pay-bot",
            credential=client_["credential"]["client_id"],
        )
        listed = await call(client, "get_agent", agent="pay-bot")
        high = await refused(client, "issue_credential", agent="report-bot", kind="api_key")
        return key, client_, new_key, new_client, listed, high

    key, client_, new_key, new_client, listed, high = over_stdio(url, body)
    assert key["credential"]["api_key"].startswith("tsk_")
    assert client_["credential"]["client_secret"]
    assert new_key["credential"]["scope"] == "reports:read"
    assert new_key["credential"]["replaced"] == key["credential"]["prefix"]
    assert new_client["credential"]["scope"] == "a b"
    ids = {c["id"] for c in listed["credentials"]}
    assert ids == {new_key["credential"]["id"], new_client["credential"]["client_id"]}
    assert "low-risk" in high
    trail = json.dumps(admin_trail(store))
    for secret in (
        key["credential"]["api_key"][len("tsk_0123456789abcdef_") :],
        client_["credential"]["client_secret"],
        new_key["credential"]["api_key"][len("tsk_0123456789abcdef_") :],
        new_client["credential"]["client_secret"],
    ):
        assert len(secret) == 43 and secret not in trail
    assert {r["actor"] for r in admin_trail(store) if r["actor"] != "seed"} == {ADMIN}


# ---------------------------------------------------------------- the command


def test_a_client_without_elicitation_learns_a_suspension_needs_confirmation(
    seeded: tuple[str, Store],
) -> None:
    """Over stdio, from a client that declares no elicitation: a plain answer saying what
    is missing, no name of the server's code, and the agent stays active."""
    url, store = seeded
    before = store.last_change()

    async def main() -> MCPError:
        with anyio.fail_after(60):
            async with Client(server_parameters(url)) as client:  # no elicitation callback
                with pytest.raises(MCPError) as raised:
                    await client.call_tool("suspend_agent", {"agent": "pay-bot"})
                return raised.value

    error = anyio.run(main)
    assert error.message == (
        "suspend_agent changes Tessera, so it first asks the administrator to confirm the "
        "change, and this MCP client cannot ask: it does not support elicitation (form "
        "mode). Nothing was changed. Make the change from an MCP client that supports "
        "elicitation; no tool argument can stand in for the confirmation, which must come "
        "from the person."
    )
    assert store.last_change() == before


def test_the_command_refuses_a_store_that_is_not_there_and_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Registering agents into a new store no server reads would look like success."""
    from pep.cli import main

    missing = f"sqlite:///{tmp_path}/var/tesera.db"
    code = main(["admin-mcp", "--store", missing, "--policies", str(SHIPPED_POLICIES)])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"tessera admin-mcp: no store at {missing}: the file ")
    assert "nothing was created" in err
    assert list(tmp_path.iterdir()) == []


def test_the_command_refuses_bad_usage_with_exit_2(
    url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pep.cli import main

    common = ["admin-mcp", "--store", url]
    assert main([*common, "--policies", str(tmp_path / "none")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    assert main([*common, "--policies", str(SHIPPED_POLICIES), "--issuer", "https://x"]) == 2
    assert "--issuer only goes with --http" in capsys.readouterr().err
    assert main([*common, "--policies", str(SHIPPED_POLICIES), "--http", "8000"]) == 2
    assert "use HOST:PORT" in capsys.readouterr().err
