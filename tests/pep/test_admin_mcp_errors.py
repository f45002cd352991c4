"""What an MCP client sees when the admin MCP server refuses: the reason, whether the
refusal comes from a tool, from the question a write asks first, or from a resource read;
while a crash keeps its text on the server. Driven in process by the SDK's client."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import mcp.types as types
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from issuer.store import Store
from pep.admin_mcp.server import Settings, build_server
from tests.conftest import SHIPPED_POLICIES
from tests.pep.test_admin_mcp import ADMIN, Person, refused, seed_agent

TWICE = [{"file": "agents.pol", "text": "x"}, {"file": "agents.pol", "text": None}]


def in_process(
    store: Store | None,
    body: Callable[[Client], Awaitable[Any]],
    policies: Path = SHIPPED_POLICIES,
    person: Any = None,
    elicitation: bool = True,
) -> Any:
    """Run ``body`` with a client connected to the admin MCP server in this process; one
    that declares no elicitation capability unless ``elicitation``."""
    server = build_server(Settings(store, policies, ADMIN))  # type: ignore[arg-type]
    callback = (person or Person()) if elicitation else None

    async def main() -> Any:
        with anyio.fail_after(30):
            async with Client(server, elicitation_callback=callback) as client:
                return await body(client)

    return anyio.run(main)


def test_a_proposal_naming_a_file_twice_is_refused_with_the_reason() -> None:
    async def body(client: Client) -> list[str]:
        return [
            await refused(client, "check_policy_change", changes=TWICE),
            await refused(client, "test_policy_change", changes=TWICE),
            await refused(client, "what_if_policy_change", changes=TWICE),
            await refused(client, "simulate_request", request={}, changes=TWICE),
        ]

    answers = in_process(None, body)
    tools = ["check_policy_change", "test_policy_change", "what_if_policy_change"]
    for tool, answer in zip([*tools, "simulate_request"], answers, strict=True):
        assert answer == (
            f"Error executing tool {tool}: 'agents.pol' appears twice in the proposed change"
        )


def test_a_bad_time_filter_is_refused_naming_the_argument_without_dashes() -> None:
    async def body(client: Client) -> str:
        return await refused(client, "query_decisions", until="soon")

    answer = in_process(None, body)
    assert answer.startswith("Error executing tool query_decisions: ")
    assert "until" in answer and "RFC 3339" in answer and "--" not in answer


def test_a_refusal_while_asking_the_person_is_the_tools_answer(store: Store) -> None:
    seed_agent(store, "pay-bot")

    async def body(client: Client) -> list[str]:
        return [
            await refused(client, "retire_agent", agent="nobody"),
            await refused(client, "update_agent", agent="pay-bot"),
        ]

    person = Person()
    nobody, nothing = in_process(store, body, person=person)
    assert nobody == (
        "Error executing tool retire_agent: no agent named or with id 'nobody'; "
        "list_agents shows the agents"
    )
    assert nothing == (
        "Error executing tool update_agent: nothing to change: give at least one attribute to set"
    )
    assert person.asked == []


def test_a_resource_that_cannot_be_read_says_why(tmp_path: Path) -> None:
    async def read(client: Client, uri: str) -> str:
        with pytest.raises(MCPError) as raised:
            await client.read_resource(uri)
        return raised.value.error.message

    async def body(client: Client) -> list[str]:
        return [
            await read(client, "tessera://policies/nothing.pol"),
            await read(client, "tessera://schema/policy"),
        ]

    missing = tmp_path / "missing"
    no_file, no_directory = in_process(None, body, policies=missing)
    assert f"the policy directory {missing} does not exist" in no_file
    assert f"the policy directory {missing} does not exist" in no_directory

    async def one(client: Client) -> str:
        return await read(client, "tessera://policies/nothing.pol")

    assert "no policy file 'nothing.pol'; list_policies names them" in in_process(None, one)


def test_a_crash_keeps_its_text_on_the_server() -> None:
    async def body(client: Client) -> str:
        return await refused(client, "list_agents")

    # without a store, listing fails inside the tool: not a refusal, so no reason is given
    assert in_process(None, body) == "Error executing tool list_agents"


# ------------------------------------------------------------ confirming without elicitation

INTERNAL = re.compile(r"<locals>|ask_|pep\.|\.py|Traceback|Error\b(?!s)")


def writes(pay: str) -> dict[str, dict[str, Any]]:
    """Every write tool, with arguments it accepts for agent ``pay``."""
    return {
        "register_agent": {"name": "new-bot", "owner": "ops", "risk_level": "low"},
        "update_agent": {"agent": pay, "purpose": "reporting"},
        "suspend_agent": {"agent": pay},
        "reactivate_agent": {"agent": pay},
        "retire_agent": {"agent": pay},
        "set_risk_level": {"agent": pay, "risk_level": "high"},
        "issue_credential": {"agent": pay, "kind": "client_secret_basic"},
        "rotate_credential": {"agent": pay, "credential": "some-client"},
    }


def test_a_client_without_elicitation_is_told_a_write_needs_confirmation(store: Store) -> None:
    """The SDK's refusal named the resolver (``_suspend_agent.<locals>.ask_suspend``); the
    answer says what is needed instead, keeps the JSON-RPC code and capability data, and
    nothing changes."""
    pay = seed_agent(store, "pay-bot")
    before = store.last_change()

    async def body(client: Client) -> dict[str, MCPError]:
        errors = {}
        for tool, arguments in writes(pay).items():
            with pytest.raises(MCPError) as raised:
                await client.call_tool(tool, arguments)
            errors[tool] = raised.value
        return errors

    errors = in_process(store, body, elicitation=False)
    assert set(errors) == set(writes(pay))
    for tool, error in errors.items():
        assert error.code == types.MISSING_REQUIRED_CLIENT_CAPABILITY
        assert error.message.startswith(
            f"{tool} changes Tessera, so it first asks the administrator to confirm the "
            "change, and this MCP client cannot ask: it does not support elicitation (form "
            "mode). Nothing was changed."
        )
        assert not INTERNAL.search(error.message), error.message
        assert error.data == {"requiredCapabilities": {"elicitation": {"form": {}}}}
    assert store.last_change() == before  # no agent registered, changed or credentialed


class Garbled:
    """An elicitation callback that accepts with an answer that does not fit the form."""

    def __init__(self, content: dict[str, Any] | None) -> None:
        self.content = content

    async def __call__(self, context: Any, params: Any) -> types.ElicitResult:
        return types.ElicitResult(action="accept", content=self.content)  # type: ignore[arg-type]


@pytest.mark.parametrize("content", [{"confirm": "perhaps"}, None], ids=["not a bool", "empty"])
def test_an_answer_that_does_not_fit_the_question_changes_nothing_and_names_no_code(
    store: Store, content: dict[str, Any] | None
) -> None:
    pay = seed_agent(store, "pay-bot")
    before = store.last_change()

    async def body(client: Client) -> str:
        return await refused(client, "suspend_agent", agent=pay)

    answer = in_process(store, body, person=Garbled(content))
    assert answer == (
        "Error executing tool suspend_agent: the client's answer to the confirmation "
        "question does not fit it (an accepted answer carries confirm: true or false); "
        "nothing was changed"
    )
    assert store.last_change() == before


def test_arguments_that_do_not_fit_are_refused_naming_each_argument_only(store: Store) -> None:
    """pydantic's own text named the SDK's generated model, Python types and a link."""
    pay = seed_agent(store, "pay-bot")

    async def body(client: Client) -> list[str]:
        return [
            await refused(client, "suspend_agent"),
            await refused(client, "set_risk_level", agent=pay, risk_level="extreme"),
            await refused(client, "query_decisions", limit="ten"),
            await refused(client, "set_risk_level", agent=pay, risk_level="x" * 100),
        ]

    missing, extreme, ten, long = in_process(store, body)
    assert missing == "Error executing tool suspend_agent: bad arguments: agent: Field required"
    assert extreme == (
        "Error executing tool set_risk_level: bad arguments: risk_level: Input should be "
        "'low', 'medium', 'high' or 'critical', not 'extreme'"
    )
    assert ten.startswith("Error executing tool query_decisions: bad arguments: limit: ")
    assert ten.endswith(", not 'ten'")
    assert long == extreme.removesuffix(", not 'extreme'")  # a long value is not repeated back
    for answer in (missing, extreme, ten, long):
        assert not re.search(r"Arguments|input_type|pydantic|\bdict\b|\bstr\b", answer), answer
