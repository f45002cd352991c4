"""The admin MCP server: Tessera's tools and resources for an administrator's MCP client.

Built on the official MCP SDK (``mcp.server.mcpserver.MCPServer``). Read tools answer at
once; every write first asks the person at the keyboard to confirm through MCP
elicitation (a client that cannot ask is refused), and is made through the store with the
administrator as actor, so the admin trail records it as theirs. Over stdio the
administrator is the one configured (``--admin``); over Streamable HTTP it is the subject
of the bearer token (see :mod:`pep.admin_mcp.http`).
"""

# Annotations stay evaluated at definition: the SDK reads the tools' signatures, which
# name local resolvers.

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from anyio import to_thread
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.mcpserver import (
    AcceptedElicitation,
    Elicit,
    ElicitationResult,
    MCPServer,
    Resolve,
)
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import BaseModel, Field
from scim2_models import Context as ScimContext

from issuer.models import PROVIDER
from issuer.store import Store
from pdp.audit.query import Filters, records
from pdp.audit.report import Period, ReportError, gather
from pdp.audit.report_formats import FORMATS, render
from pdp.directory import Directory
from pep.admin_mcp.directory import Admin, AdminError, DirectoryAdmin
from pep.admin_mcp.policies import Policies, changes_from

T = TypeVar("T")

INSTRUCTIONS = """\
Tessera is the identity and authorization layer for AI agents. These tools administer it:
the agent directory (agents, their owners, risk levels, status and credentials; users and
their consents), the policies (.pol files) the decision point enforces, and the audit
trails (decisions, anomaly alerts, compliance reports).

Before proposing a policy change, read the policy files and the schema (resources
tessera://policies/… and tessera://schema/policy); then check_policy_change,
test_policy_change and what_if_policy_change show what the change would do. Policy
changes are never written by these tools: hand the checked text to the person.

Writes (register, update, suspend, retire, set risk level, issue or rotate credentials)
ask the person to confirm first and are recorded in the admin audit trail under the
administrator's name. Agents are named by their id or by their unique name."""

ADMIN_SCOPE = "tessera:admin"

READ = ToolAnnotations(read_only_hint=True, open_world_hint=False)
WRITE = ToolAnnotations(read_only_hint=False, destructive_hint=False, open_world_hint=False)
DESTRUCTIVE = ToolAnnotations(read_only_hint=False, destructive_hint=True, open_world_hint=False)


@dataclass(frozen=True)
class Settings:
    """What the server administers, and who the administrator is over stdio."""

    store: Store
    policies: Path
    admin: str  # the actor recorded for changes made over stdio


class Confirm(BaseModel):
    """The person's answer to "make this change?"."""

    confirm: bool = Field(description="true to make the change, false to cancel it")


class FileChange(BaseModel):
    """One file of a proposed policy change."""

    file: str = Field(
        description="the policy file's path relative to the policy directory, ending in .pol, "
        "e.g. 'agents.pol' (list_policies names the existing files)"
    )
    text: str | None = Field(
        description="the file's complete new text in Tessera's policy language; null deletes "
        "the file"
    )


class Label(BaseModel):
    key: str = Field(description="the label's name, e.g. 'team'")
    value: str = Field(description="the label's value, e.g. 'finance'")


AgentRef = Annotated[
    str, Field(description="the agent's directory id, or its unique name (e.g. 'pay-bot')")
]
Risk = Literal["low", "medium", "high", "critical"]
Proposal = Annotated[
    list[FileChange],
    Field(
        description="the proposed change: the files to add, replace or delete; every other "
        "policy file stays as it is",
        min_length=1,
    ),
]
Since = Annotated[
    str | None, Field(description="RFC 3339 time, inclusive, e.g. '2026-11-28T10:00:00Z'")
]
Until = Annotated[str | None, Field(description="RFC 3339 time, exclusive")]


def _declined(answer: Any) -> dict[str, Any] | None:
    """The tool's answer when the person did not confirm, else None."""
    if isinstance(answer, AcceptedElicitation) and answer.data.confirm:
        return None
    return {"done": False, "message": "the administrator did not confirm; nothing was changed"}


def build_server(
    settings: Settings, auth: Any = None, token_verifier: Any = None
) -> MCPServer[Any]:
    """The MCP server over one store and policy directory; ``auth`` (the SDK's
    ``AuthSettings``) and ``token_verifier`` protect its HTTP transport."""
    server: MCPServer[Any] = MCPServer(
        "tessera-admin",
        title="Tessera administration",
        instructions=INSTRUCTIONS,
        auth=auth,
        token_verifier=token_verifier,
    )
    register_tools(server, settings)
    register_resources(server, settings)
    return server


def register_tools(server: MCPServer[Any], settings: Settings) -> None:
    directory = DirectoryAdmin(settings.store)
    policies = Policies(settings.policies)

    def admin() -> Admin:
        token = get_access_token()
        if token is not None:
            return Admin(token.subject or token.client_id)
        return Admin(settings.admin)

    async def run(fn: Callable[[], T]) -> T:
        try:
            return await to_thread.run_sync(fn)
        except AdminError as exc:
            raise ToolError(str(exc)) from None

    async def run_async(fn: Callable[[], Awaitable[T]]) -> T:
        try:
            return await fn()
        except AdminError as exc:
            raise ToolError(str(exc)) from None

    def agent_named(agent: str) -> str:
        """How a confirmation names an agent (its name and id), or ToolError."""
        try:
            record = directory.find_agent(agent)
        except AdminError as exc:
            raise ToolError(str(exc)) from None
        return f"{record.data.get('name')!r} ({record.id})"

    # ------------------------------------------------------------ reading the directory

    @server.tool(
        annotations=READ,
        description="List the agents in Tessera's directory with their id, name, owner, "
        "purpose, riskLevel, status and agentType. All filters are optional and combine "
        "with AND; use this to find an agent's id or to answer questions such as 'which "
        "agents owned by finance are high risk?'.",
    )
    async def list_agents(
        status: Annotated[
            Literal["active", "suspended", "retired"] | None, Field(description="only this status")
        ] = None,
        owner: Annotated[str | None, Field(description="only agents of this owner")] = None,
        purpose: Annotated[str | None, Field(description="only agents with this purpose")] = None,
        risk_level: Annotated[Risk | None, Field(description="only this risk level")] = None,
    ) -> dict[str, Any]:
        agents = await run(lambda: directory.list_agents(status, owner, purpose, risk_level))
        return {"agents": agents, "count": len(agents)}

    @server.tool(
        annotations=READ,
        description="Get one agent in full: every directory attribute (owner, purpose, "
        "riskLevel, status, agentType, model, description, scopes, labels, version, created, "
        "modified) and its credentials (OAuth clients and API keys, never their secrets).",
    )
    async def get_agent(agent: AgentRef) -> dict[str, Any]:
        return await run(lambda: directory.get_agent(agent))

    @server.tool(
        annotations=READ,
        description="List the users (the people agents act for) with their id, userName, "
        "displayName, active flag, roles and groups, as policies see them.",
    )
    async def list_users() -> dict[str, Any]:
        users = await run(directory.list_users)
        return {"users": users, "count": len(users)}

    @server.tool(
        annotations=READ,
        description="List the consents users gave: which user let which agent (through which "
        "OAuth client) use which scopes. Policies see the scopes as context.consents. "
        "Filter by user id and/or agent.",
    )
    async def list_consents(
        user: Annotated[
            str | None, Field(description="only this user's consents (user id)")
        ] = None,
        agent: Annotated[
            str | None, Field(description="only consents for this agent (id or name)")
        ] = None,
    ) -> dict[str, Any]:
        consents = await run(lambda: directory.list_consents(user, agent))
        return {"consents": consents, "count": len(consents)}

    # ------------------------------------------------------------ changing agents

    def ask_register(name: str, owner: str, risk_level: str) -> Elicit[Confirm]:
        return Elicit(
            f"Register a new agent {name!r}, owned by {owner!r}, at risk level {risk_level}?",
            Confirm,
        )

    @server.tool(
        annotations=WRITE,
        description="Register a new agent in the directory (asks the administrator to "
        "confirm). name must be unique; owner is the person or team accountable; "
        "risk_level is how much harm it can do; purpose is what policies match on (e.g. "
        "'payments', 'reporting'). A new agent is active. Returns the agent with its id.",
    )
    async def register_agent(
        name: Annotated[str, Field(description="unique name, e.g. 'report-bot'", min_length=1)],
        owner: Annotated[str, Field(description="accountable person or team, e.g. 'finance'")],
        risk_level: Annotated[Risk, Field(description="low < medium < high < critical")],
        confirmation: Annotated[ElicitationResult[Confirm], Resolve(ask_register)],
        purpose: Annotated[
            str | None, Field(description="what it is for, e.g. 'reporting'")
        ] = None,
        agent_type: Annotated[
            Literal["interactive", "background", "external"] | None,
            Field(description="how it runs (default background)"),
        ] = None,
        description: Annotated[str | None, Field(description="free text for people")] = None,
        model: Annotated[str | None, Field(description="the model it runs on")] = None,
        scopes: Annotated[
            list[str] | None, Field(description="OAuth scopes it may be granted")
        ] = None,
        labels: Annotated[list[Label] | None, Field(description="key/value labels")] = None,
    ) -> dict[str, Any]:
        declined = _declined(confirmation)
        if declined:
            return declined
        attributes = {
            "name": name,
            "owner": owner,
            "riskLevel": risk_level,
            "purpose": purpose,
            "agentType": agent_type,
            "description": description,
            "model": model,
            "scopes": scopes,
            "labels": None if labels is None else [label.model_dump() for label in labels],
        }
        who = admin()
        agent = await run_async(lambda: directory.register_agent(who, attributes))
        return {"done": True, "agent": agent}

    def ask_update(
        agent: str,
        owner: str | None = None,
        purpose: str | None = None,
        agent_type: str | None = None,
        description: str | None = None,
        model: str | None = None,
        display_name: str | None = None,
        scopes: list[str] | None = None,
        labels: list[Label] | None = None,
    ) -> Elicit[Confirm]:
        given = {
            "owner": owner,
            "purpose": purpose,
            "agentType": agent_type,
            "description": description,
            "model": model,
            "displayName": display_name,
            "scopes": scopes,
            "labels": None if labels is None else [label.model_dump() for label in labels],
        }
        changes = ", ".join(
            f"{key} = {value!r}" for key, value in given.items() if value is not None
        )
        if not changes:
            raise ToolError("nothing to change: give at least one attribute to set")
        return Elicit(f"Update agent {agent_named(agent)}: {changes}?", Confirm)

    @server.tool(
        annotations=WRITE,
        description="Change attributes of an existing agent (asks the administrator to "
        "confirm). Give only the attributes to change; each replaces the old value. Use "
        "suspend_agent, retire_agent and set_risk_level for status and risk.",
    )
    async def update_agent(
        agent: AgentRef,
        confirmation: Annotated[ElicitationResult[Confirm], Resolve(ask_update)],
        owner: Annotated[str | None, Field(description="new owner")] = None,
        purpose: Annotated[str | None, Field(description="new purpose")] = None,
        agent_type: Annotated[
            Literal["interactive", "background", "external"] | None,
            Field(description="new agent type"),
        ] = None,
        description: Annotated[str | None, Field(description="new description")] = None,
        model: Annotated[str | None, Field(description="new model")] = None,
        display_name: Annotated[str | None, Field(description="new display name")] = None,
        scopes: Annotated[
            list[str] | None, Field(description="the complete new list of scopes")
        ] = None,
        labels: Annotated[
            list[Label] | None, Field(description="the complete new list of labels")
        ] = None,
    ) -> dict[str, Any]:
        declined = _declined(confirmation)
        if declined:
            return declined
        changes = {
            "owner": owner,
            "purpose": purpose,
            "agentType": agent_type,
            "description": description,
            "model": model,
            "displayName": display_name,
            "scopes": scopes,
            "labels": None if labels is None else [label.model_dump() for label in labels],
        }
        who = admin()
        updated = await run_async(lambda: directory.update_agent(who, agent, changes))
        return {"done": True, "agent": updated}

    async def set_status(
        agent: str, confirmation: ElicitationResult[Confirm], status: str
    ) -> dict[str, Any]:
        """Set an agent's status once the administrator confirmed."""
        declined = _declined(confirmation)
        if declined:
            return declined
        who = admin()
        updated = await run_async(lambda: directory.update_agent(who, agent, {"status": status}))
        return {"done": True, "agent": updated}

    def ask_suspend(agent: str) -> Elicit[Confirm]:
        return Elicit(
            f"Suspend agent {agent_named(agent)}? Every request it makes will be denied.",
            Confirm,
        )

    @server.tool(
        annotations=DESTRUCTIVE,
        description="Suspend an agent (asks the administrator to confirm): from then on every "
        "decision point that follows the directory denies all of its requests and its "
        "access tokens stop introspecting as active. reactivate_agent undoes it.",
    )
    async def suspend_agent(
        agent: AgentRef,
        confirmation: Annotated[ElicitationResult[Confirm], Resolve(ask_suspend)],
    ) -> dict[str, Any]:
        return await set_status(agent, confirmation, "suspended")

    def ask_reactivate(agent: str) -> Elicit[Confirm]:
        return Elicit(f"Reactivate agent {agent_named(agent)}?", Confirm)

    @server.tool(
        annotations=WRITE,
        description="Make a suspended agent active again (asks the administrator to confirm); "
        "the policies decide its requests again.",
    )
    async def reactivate_agent(
        agent: AgentRef,
        confirmation: Annotated[ElicitationResult[Confirm], Resolve(ask_reactivate)],
    ) -> dict[str, Any]:
        return await set_status(agent, confirmation, "active")

    def ask_retire(agent: str) -> Elicit[Confirm]:
        return Elicit(
            f"Retire agent {agent_named(agent)}? It will be denied everything; its history "
            "stays in the audit trails.",
            Confirm,
        )

    @server.tool(
        annotations=DESTRUCTIVE,
        description="Retire an agent for good (asks the administrator to confirm): it is "
        "denied everything, like a suspended agent, and its record and audit history are "
        "kept.",
    )
    async def retire_agent(
        agent: AgentRef,
        confirmation: Annotated[ElicitationResult[Confirm], Resolve(ask_retire)],
    ) -> dict[str, Any]:
        return await set_status(agent, confirmation, "retired")

    def ask_risk(agent: str, risk_level: str) -> Elicit[Confirm]:
        return Elicit(f"Set the risk level of agent {agent_named(agent)} to {risk_level}?", Confirm)

    @server.tool(
        annotations=WRITE,
        description="Set an agent's risk level (asks the administrator to confirm). Policies "
        "compare it (agent.risk, ordered low < medium < high < critical); API keys work only "
        "for low-risk agents.",
    )
    async def set_risk_level(
        agent: AgentRef,
        risk_level: Annotated[Risk, Field(description="the new risk level")],
        confirmation: Annotated[ElicitationResult[Confirm], Resolve(ask_risk)],
    ) -> dict[str, Any]:
        declined = _declined(confirmation)
        if declined:
            return declined
        who = admin()
        updated = await run_async(
            lambda: directory.update_agent(who, agent, {"riskLevel": risk_level})
        )
        return {"done": True, "agent": updated}

    # ------------------------------------------------------------ credentials

    JwksField = Annotated[
        dict[str, Any] | None,
        Field(
            description="for private_key_jwt only: the agent's public keys as a JWK Set, "
            '{"keys": [{"kty": "EC", "crv": "P-256", "x": "…", "y": "…", "kid": "…"}]}'
        ),
    ]

    def ask_issue(agent: str, kind: str) -> Elicit[Confirm]:
        return Elicit(f"Issue a new {kind} credential to agent {agent_named(agent)}?", Confirm)

    @server.tool(
        annotations=WRITE,
        description="Issue a credential to an agent (asks the administrator to confirm). "
        "kind 'client_secret_basic' registers an OAuth client with a generated secret; "
        "'private_key_jwt' registers an OAuth client that signs assertions with the keys in "
        "jwks; 'api_key' creates an API key (low-risk active agents only). Clients use the "
        "client_credentials grant. The answer holds the secret or key exactly once: pass it "
        "to the person, do not store it.",
    )
    async def issue_credential(
        agent: AgentRef,
        kind: Annotated[
            Literal["client_secret_basic", "private_key_jwt", "api_key"],
            Field(description="the kind of credential"),
        ],
        confirmation: Annotated[ElicitationResult[Confirm], Resolve(ask_issue)],
        scope: Annotated[
            str, Field(description="space-separated scopes it may get, e.g. 'reports:read'")
        ] = "",
        jwks: JwksField = None,
        expires_in: Annotated[
            int | None,
            Field(description="api_key only: lifetime in seconds (default 90 days)", gt=0),
        ] = None,
    ) -> dict[str, Any]:
        declined = _declined(confirmation)
        if declined:
            return declined
        who = admin()
        issued = await run(
            lambda: directory.issue_credential(who, agent, kind, scope, jwks, expires_in)
        )
        return {"done": True, "credential": issued}

    def ask_rotate(agent: str, credential: str) -> Elicit[Confirm]:
        return Elicit(
            f"Rotate credential {credential!r} of agent {agent_named(agent)}? The old one "
            "stops working.",
            Confirm,
        )

    @server.tool(
        annotations=DESTRUCTIVE,
        description="Rotate an agent's credential (asks the administrator to confirm): issue "
        "a new one with the same kind and scopes, then revoke the old one. credential is an "
        "OAuth client_id or an API key id or prefix (tsk_…), as get_agent lists them. A "
        "private_key_jwt client needs the new public keys in jwks. The answer holds the new "
        "secret exactly once.",
    )
    async def rotate_credential(
        agent: AgentRef,
        credential: Annotated[str, Field(description="the client_id or API key id to replace")],
        confirmation: Annotated[ElicitationResult[Confirm], Resolve(ask_rotate)],
        jwks: JwksField = None,
    ) -> dict[str, Any]:
        declined = _declined(confirmation)
        if declined:
            return declined
        who = admin()
        rotated = await run(lambda: directory.rotate_credential(who, agent, credential, jwks))
        return {"done": True, "credential": rotated}

    # ------------------------------------------------------------ policies

    @server.tool(
        annotations=READ,
        description="List the policy files the decision point enforces, with each file's "
        "rules (id, permit or forbid, line), its number of tests, whether it declares the "
        "schema, and the resource URI to read its text; plus the bundle version.",
    )
    async def list_policies() -> dict[str, Any]:
        return await run(policies.listing)

    @server.tool(
        annotations=READ,
        description="Parse and type-check a proposed policy change without applying it, as "
        "'tessera check' does: every error and warning with file:line:col, the line, a "
        "caret and a hint. Read the files (tessera://policies/…) and the schema first.",
    )
    async def check_policy_change(changes: Proposal) -> dict[str, Any]:
        proposal = changes_from(changes)
        return await run(lambda: policies.check(proposal))

    @server.tool(
        annotations=READ,
        description="Check a proposed policy change and run every policy test block "
        "(test \"…\" { … }) of the resulting policies, as 'tessera test' does; each "
        "failure comes with its decision trace. Include new or changed test blocks in the "
        "proposal to test the change itself.",
    )
    async def test_policy_change(changes: Proposal) -> dict[str, Any]:
        proposal = changes_from(changes)
        return await run(lambda: policies.test(proposal))

    @server.tool(
        annotations=READ,
        description="Decide one request and explain it rule by rule (why each candidate rule "
        "applied or not, down to the failing sub-expression), as 'tessera explain' does. "
        "Limits are not used up. With the directory, agent.id and user.id are enough: "
        "their attributes and consents come from the directory, and an unknown, suspended "
        "or retired agent is refused as the decision point would. Optionally decide "
        "against a proposed change instead of the current policies.",
    )
    async def simulate_request(
        request: Annotated[
            dict[str, Any],
            Field(
                description='request JSON: {"agent": {"id": "…"}, "user": {"id": "…"} '
                '(optional), "action": "tool.call", "resource": {"type": "tool", "id": '
                '"payments.transfer"}, "context": {"amount": "200 USD"}}; "tool": "name" is '
                "short for action tool.call on that tool"
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
            known = None
            if use_directory:
                known = Directory(settings.store)
                known.load()
            return policies.simulate(request, proposal, known)

        return await run(simulate)

    @server.tool(
        annotations=READ,
        description="What-if: replay the most recent audited decisions (from the agent audit "
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
        agent: Annotated[
            str | None, Field(description="only this agent's decisions (its id)")
        ] = None,
        tool: Annotated[str | None, Field(description="only calls of this tool")] = None,
        since: Since = None,
        until: Until = None,
    ) -> dict[str, Any]:
        proposal = changes_from(changes)
        filters = _filters(agent=agent, tool=tool, since=since, until=until)
        return await run(lambda: policies.what_if(settings.store, proposal, filters, limit))

    @server.tool(
        annotations=READ,
        description="Explain a past decision by its decision id (the id the decision point "
        "answered with and the audit trail keeps): the recorded request and answer, and "
        "the rule-by-rule explanation under the current policies. Use query_decisions to "
        "find ids, e.g. for 'why was pay-bot denied at 10:14?'.",
    )
    async def explain_decision(
        decision_id: Annotated[str, Field(description="the decision id (32 hex digits)")],
    ) -> dict[str, Any]:
        return await run(lambda: policies.explain_decision(settings.store, decision_id))

    @server.tool(
        annotations=READ,
        description="List recorded decisions from the agent audit trail, newest last, with "
        "their decision ids: filter by agent id, user id, allow/deny, tool and time.",
    )
    async def query_decisions(
        agent: Annotated[str | None, Field(description="the agent's id")] = None,
        user: Annotated[str | None, Field(description="the user's id")] = None,
        decision: Annotated[
            Literal["allow", "deny"] | None, Field(description="only allows or denies")
        ] = None,
        tool: Annotated[str | None, Field(description="only calls of this tool")] = None,
        since: Since = None,
        until: Until = None,
        limit: Annotated[
            int, Field(description="at most this many, the newest", ge=1, le=500)
        ] = 50,
    ) -> dict[str, Any]:
        filters = _filters(
            agent=agent, user=user, decision=decision, tool=tool, since=since, until=until
        )

        def query() -> list[dict[str, Any]]:
            found = [
                {"seq": seq, **record}
                for seq, record in records(settings.store, "agent", filters)
                if record.get("kind") == "decision"
            ]
            return found[-limit:]

        found = await run(query)
        return {"decisions": found, "count": len(found)}

    # ------------------------------------------------------------ audit

    @server.tool(
        annotations=READ,
        description="List the anomaly alerts raised on agents (a new tool, a call rate or "
        "burst of denials far above the agent's baseline, a large amount, an unusual hour), "
        "oldest first, with severity and message.",
    )
    async def list_alerts(
        agent: Annotated[str | None, Field(description="only this agent's alerts (its id)")] = None,
        alert: Annotated[
            Literal["new_tool", "rate", "denials", "amount", "hours"] | None,
            Field(description="only this kind of alert"),
        ] = None,
        since: Since = None,
        until: Until = None,
    ) -> dict[str, Any]:
        filters = _filters(agent=agent, since=since, until=until)

        def alerts() -> list[dict[str, Any]]:
            return [
                {"seq": seq, **record}
                for seq, record in records(settings.store, "alert", filters)
                if record.get("kind") == "alert" and alert in (None, record.get("alert"))
            ]

        found = await run(alerts)
        return {"alerts": found, "count": len(found)}

    @server.tool(
        annotations=READ,
        description="Produce a compliance report on one agent or on every agent for a period, "
        "as 'tessera report' does: identity and status history, credentials, delegations "
        "and consents, decisions over time, denials, anomaly alerts, and whether every "
        "audit trail's hash chain verifies. Markdown reads well in a chat; JSON has stable "
        "keys.",
    )
    async def compliance_report(
        agent: Annotated[
            str | None, Field(description="the agent (id or name); omit for every agent")
        ] = None,
        since: Since = None,
        until: Until = None,
        format: Annotated[Literal["md", "json"], Field(description="md (Markdown) or json")] = "md",
    ) -> dict[str, Any]:
        assert format in FORMATS
        filters = _filters(since=since, until=until)

        def report() -> dict[str, Any]:
            try:
                made = gather(
                    settings.store, agent=agent, period=Period(filters.since, filters.until)
                )
            except ReportError as exc:
                raise AdminError(str(exc)) from None
            return {"intact": made.intact, "format": format, "report": render(made, format)}

        return await run(report)


def _filters(**given: str | None) -> Filters:
    fields = {name: given.get(name) for name in ("agent", "user", "decision", "tool")}
    try:
        return Filters.parse(**fields, since=given.get("since"), until=given.get("until"))
    except ValueError as exc:
        raise ToolError(str(exc).replace("--", "")) from None


def register_resources(server: MCPServer[Any], settings: Settings) -> None:
    policies = Policies(settings.policies)

    @server.resource(
        "tessera://policies/{+name}",
        name="policy-file",
        description="A policy file (.pol) of the directory the decision point enforces, by "
        "its path relative to that directory",
        mime_type="text/plain",
    )
    def policy_file(name: str) -> str:
        try:
            return policies.read(name)
        except AdminError as exc:
            raise ValueError(str(exc)) from None

    for name in sorted(policies.files()) if settings.policies.is_dir() else ():
        server.resource(
            f"tessera://policies/{name}",
            name=name,
            description=f"The policy file {name}",
            mime_type="text/plain",
        )(_reader(policies, name))

    @server.resource(
        "tessera://schema/policy",
        name="policy-schema",
        description="The policy schema: the attributes policies may read (agent, user, "
        "context, resource types) and their types, as declared in the policy files",
        mime_type="text/plain",
    )
    def policy_schema() -> str:
        try:
            return policies.schema_text()
        except AdminError as exc:
            raise ValueError(str(exc)) from None

    @server.resource(
        "tessera://schema/agent",
        name="agent-schema",
        description="The directory's SCIM schemas for agents (core and Tessera's extension): "
        "every attribute an agent has, its type and whether it is required",
        mime_type="application/json",
    )
    def agent_schema() -> str:
        schemas = [
            schema.model_dump(scim_ctx=ScimContext.RESOURCE_QUERY_RESPONSE)
            for schema in PROVIDER.schemas
            if "Agent" in str(schema.id)
        ]
        return json.dumps(schemas, indent=2)


def _reader(policies: Policies, name: str) -> Callable[[], str]:
    def read() -> str:
        return policies.read(name)

    read.__name__ = "policy_" + "".join(c if c.isalnum() else "_" for c in name)
    return read


def serve_stdio(settings: Settings) -> None:
    """Serve over standard input and output until the client closes them."""
    server = build_server(settings)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # in-process SCIM calls, not news
    server.run("stdio")
