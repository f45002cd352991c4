"""The tools that work on the policies: list them, and check, test, simulate and replay a
proposed change. None of them writes a policy file: the person applies the checked text."""

# Annotations stay evaluated at definition: the SDK reads the tools' signatures.

from dataclasses import replace
from typing import Annotated, Any

from mcp.server.mcpserver import MCPServer
from pydantic import Field

from pdp.directory import Directory
from pep.admin_mcp.naming import AgentNames, UnknownAgent
from pep.admin_mcp.policies import changes_from
from pep.admin_mcp.tools.arguments import (
    FileChange,
    Proposal,
    Since,
    Until,
    filters,
    trail_agent,
)
from pep.admin_mcp.tools.backend import Backend, in_thread
from pep.admin_mcp.tools.declare import READ, tool


def register(server: MCPServer[Any], backend: Backend) -> None:
    """Register list_policies, check_policy_change, test_policy_change, simulate_request
    and what_if_policy_change, in that order."""
    _list_check_and_test(server, backend)
    _simulate_request(server, backend)
    _what_if_policy_change(server, backend)


def _list_check_and_test(server: MCPServer[Any], backend: Backend) -> None:
    policies = backend.policies

    @tool(
        server,
        READ,
        "List the policy files the decision point enforces, with each file's "
        "rules (id, permit or forbid, line), its number of tests, whether it declares the "
        "schema, and the resource URI to read its text; plus the bundle version.",
    )
    async def list_policies() -> dict[str, Any]:
        return await in_thread(policies.listing)

    @tool(
        server,
        READ,
        "Parse and type-check a proposed policy change without applying it, as "
        "'tessera check' does: every error and warning with file:line:col, the line, a "
        "caret and a hint. Read the files (tessera://policies/…) and the schema first.",
    )
    async def check_policy_change(changes: Proposal) -> dict[str, Any]:
        proposal = changes_from(changes)
        return await in_thread(lambda: policies.check(proposal))

    @tool(
        server,
        READ,
        "Check a proposed policy change and run every policy test block "
        "(test \"…\" { … }) of the resulting policies, as 'tessera test' does; each "
        "failure comes with its decision trace. Include new or changed test blocks in the "
        "proposal to test the change itself.",
    )
    async def test_policy_change(changes: Proposal) -> dict[str, Any]:
        proposal = changes_from(changes)
        return await in_thread(lambda: policies.test(proposal))


def _simulate_request(server: MCPServer[Any], backend: Backend) -> None:
    @tool(
        server,
        READ,
        "Decide one request and explain it rule by rule (why each candidate rule "
        "applied or not, down to the failing sub-expression), as 'tessera explain' does. "
        "Limits are not used up. With the directory, agent.id (the agent's id or name) "
        "and user.id (any id of the person: SCIM id, userName, externalId, e-mail) are "
        "enough: their attributes and consents come from the directory, and an unknown, "
        "suspended or retired agent is refused as the decision point would. A request "
        'about a person names them as {"subject": {"type": "user", "id": "…"}}: a person '
        "the directory knows is decided on its facts. Optionally decide against a "
        "proposed change instead of the current policies.",
    )
    async def simulate_request(
        request: Annotated[
            dict[str, Any],
            Field(
                description='request JSON: {"agent": {"id": "…"}, "user": {"id": "…"} '
                '(optional), "action": "tool.call", "resource": {"type": "tool", "id": '
                '"payments.transfer"}, "context": {"amount": "200 USD"}}; "tool": "name" is '
                'short for action tool.call on that tool; "subject": {"type": "user", "id": '
                '"…"} instead of "agent" asks about a person'
            ),
        ],
        changes: Annotated[
            list[FileChange] | None,
            Field(description="a proposed change to decide with instead of the current policies"),
        ] = None,
        use_directory: Annotated[
            bool,
            Field(description="take agent and user attributes from the directory (default)"),
        ] = True,
    ) -> dict[str, Any]:
        proposal = changes_from(changes) if changes else None

        def simulate() -> dict[str, Any]:
            if not use_directory:
                return backend.policies.simulate(request, proposal, None)
            known = Directory(backend.store)
            known.load()
            return backend.policies.simulate(by_id(request, backend.names), proposal, known)

        return await in_thread(simulate)


def _what_if_policy_change(server: MCPServer[Any], backend: Backend) -> None:
    @tool(
        server,
        READ,
        "What-if: replay the most recent audited decisions (from the agent audit "
        "trail) under the current policies and under a proposed change, and list exactly "
        "the decisions whose outcome (allow/deny or obligations) would change, each with "
        "the agent, action, resource, time, decision id and both answers. Agents are taken "
        "as the directory held them at the time of each decision.",
    )
    async def what_if_policy_change(
        changes: Proposal,
        limit: Annotated[
            int, Field(description="how many recent decisions to replay", ge=1, le=10_000)
        ] = 1000,
        agent: Annotated[str | None, trail_agent("decisions")] = None,
        tool: Annotated[str | None, Field(description="only calls of this tool")] = None,
        since: Since = None,
        until: Until = None,
    ) -> dict[str, Any]:
        proposal = changes_from(changes)
        given = filters(tool=tool, since=since, until=until)

        def what_if() -> dict[str, Any]:
            named = backend.names.on_trail(agent)
            by_agent = given if named is None else replace(given, agent=named.id)
            answer = backend.policies.what_if(backend.store, proposal, by_agent, limit)
            if named is not None:
                named.known(backend.store, answer["replayed"])
            return answer

        return await in_thread(what_if)


def by_id(request: Any, names: AgentNames) -> Any:
    """The request with its agent named by its id, when it names an agent the directory
    holds by its name; an agent it does not hold is left to be refused, as the decision
    point refuses it."""
    agent = request.get("agent") if isinstance(request, dict) else None
    if not isinstance(agent, dict):
        return request
    given = agent.get("id")
    if not isinstance(given, str) or not given.strip():
        return request
    try:
        record = names.now(given)
    except UnknownAgent:
        return request
    return {**request, "agent": {**agent, "id": record.id}}
