"""What an MCP client sees when the admin MCP server refuses: the reason, whether the
refusal comes from a tool, from the question a write asks first, or from a resource read;
while a crash keeps its text on the server. Driven in process by the SDK's client."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
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
    person: Person | None = None,
) -> Any:
    """Run ``body`` with a client connected to the admin MCP server in this process."""
    server = build_server(Settings(store, policies, ADMIN))  # type: ignore[arg-type]

    async def main() -> Any:
        with anyio.fail_after(30):
            async with Client(server, elicitation_callback=person or Person()) as client:
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
        "Error executing tool retire_agent: no agent has the id or name 'nobody'; "
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
