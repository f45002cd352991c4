"""The tools that change agents: register, update, suspend, reactivate, retire, and set
the risk level. Each asks the person to confirm first, naming the agent and the change."""

# Annotations stay evaluated at definition: the SDK reads the tools' signatures, which
# name local resolvers.

from typing import Annotated, Any

from mcp.server.mcpserver import Elicit, ElicitationResult, MCPServer, Resolve
from pydantic import Field

from issuer.agents import (
    AGENT_TYPE,
    DESCRIPTION,
    LABELS,
    MODEL,
    OWNER,
    PURPOSE,
    RISK_LEVEL,
    SCOPES,
    STATUS,
    AgentStatus,
)
from pep.admin_mcp.errors import AdminError, answer_refusals
from pep.admin_mcp.tools.arguments import AgentRef, AgentType, Label, Risk, labels_of
from pep.admin_mcp.tools.backend import Backend
from pep.admin_mcp.tools.declare import DESTRUCTIVE, WRITE, Confirm, declined, tool


def register(server: MCPServer[Any], backend: Backend) -> None:
    """Register register_agent, update_agent, suspend_agent, reactivate_agent,
    retire_agent and set_risk_level, in that order."""
    for register_one in (
        _register_agent,
        _update_agent,
        _suspend_agent,
        _reactivate_agent,
        _retire_agent,
        _set_risk_level,
    ):
        register_one(server, backend)


def _register_agent(server: MCPServer[Any], backend: Backend) -> None:
    @answer_refusals
    def ask_register(name: str, owner: str, risk_level: str) -> Elicit[Confirm]:
        return Elicit(
            f"Register a new agent {name!r}, owned by {owner!r}, at risk level {risk_level}?",
            Confirm,
        )

    @tool(
        server,
        WRITE,
        "Register a new agent in the directory (asks the administrator to "
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
            AgentType | None,
            Field(description="how it runs (default background)"),
        ] = None,
        description: Annotated[str | None, Field(description="free text for people")] = None,
        model: Annotated[str | None, Field(description="the model it runs on")] = None,
        scopes: Annotated[
            list[str] | None, Field(description="OAuth scopes it may be granted")
        ] = None,
        labels: Annotated[list[Label] | None, Field(description="key/value labels")] = None,
    ) -> dict[str, Any]:
        if refused := declined(confirmation):
            return refused
        attributes = {
            "name": name,
            OWNER: owner,
            RISK_LEVEL: risk_level,
            PURPOSE: purpose,
            AGENT_TYPE: agent_type,
            DESCRIPTION: description,
            MODEL: model,
            SCOPES: scopes,
            LABELS: labels_of(labels),
        }
        agent = await backend.directory.register_agent(backend.admin(), attributes)
        return {"done": True, "agent": agent}


def _update_agent(server: MCPServer[Any], backend: Backend) -> None:
    @answer_refusals
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
        given = _changes(
            owner, purpose, agent_type, description, model, display_name, scopes, labels
        )
        changes = ", ".join(
            f"{key} = {value!r}" for key, value in given.items() if value is not None
        )
        if not changes:
            raise AdminError("nothing to change: give at least one attribute to set")
        return Elicit(f"Update agent {backend.agent_named(agent)}: {changes}?", Confirm)

    @tool(
        server,
        WRITE,
        "Change attributes of an existing agent (asks the administrator to "
        "confirm). Give only the attributes to change; each replaces the old value. Use "
        "suspend_agent, retire_agent and set_risk_level for status and risk.",
    )
    async def update_agent(
        agent: AgentRef,
        confirmation: Annotated[ElicitationResult[Confirm], Resolve(ask_update)],
        owner: Annotated[str | None, Field(description="new owner")] = None,
        purpose: Annotated[str | None, Field(description="new purpose")] = None,
        agent_type: Annotated[AgentType | None, Field(description="new agent type")] = None,
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
        if refused := declined(confirmation):
            return refused
        changes = _changes(
            owner, purpose, agent_type, description, model, display_name, scopes, labels
        )
        updated = await backend.directory.update_agent(backend.admin(), agent, changes)
        return {"done": True, "agent": updated}


def _changes(
    owner: str | None,
    purpose: str | None,
    agent_type: str | None,
    description: str | None,
    model: str | None,
    display_name: str | None,
    scopes: list[str] | None,
    labels: list[Label] | None,
) -> dict[str, Any]:
    """update_agent's arguments by the directory's attribute names (None: left as is)."""
    return {
        OWNER: owner,
        PURPOSE: purpose,
        AGENT_TYPE: agent_type,
        DESCRIPTION: description,
        MODEL: model,
        "displayName": display_name,
        SCOPES: scopes,
        LABELS: labels_of(labels),
    }


async def _set(
    backend: Backend,
    agent: str,
    confirmation: ElicitationResult[Confirm],
    changes: dict[str, Any],
) -> dict[str, Any]:
    """Set attributes of an agent once the administrator confirmed."""
    if refused := declined(confirmation):
        return refused
    updated = await backend.directory.update_agent(backend.admin(), agent, changes)
    return {"done": True, "agent": updated}


def _suspend_agent(server: MCPServer[Any], backend: Backend) -> None:
    @answer_refusals
    def ask_suspend(agent: str) -> Elicit[Confirm]:
        return Elicit(
            f"Suspend agent {backend.agent_named(agent)}? Every request it makes will be denied.",
            Confirm,
        )

    @tool(
        server,
        DESTRUCTIVE,
        "Suspend an agent (asks the administrator to confirm): from then on every "
        "decision point that follows the directory denies all of its requests and its "
        "access tokens stop introspecting as active. reactivate_agent undoes it.",
    )
    async def suspend_agent(
        agent: AgentRef,
        confirmation: Annotated[ElicitationResult[Confirm], Resolve(ask_suspend)],
    ) -> dict[str, Any]:
        return await _set(backend, agent, confirmation, {STATUS: AgentStatus.suspended.value})


def _reactivate_agent(server: MCPServer[Any], backend: Backend) -> None:
    @answer_refusals
    def ask_reactivate(agent: str) -> Elicit[Confirm]:
        return Elicit(f"Reactivate agent {backend.agent_named(agent)}?", Confirm)

    @tool(
        server,
        WRITE,
        "Make a suspended agent active again (asks the administrator to confirm); "
        "the policies decide its requests again.",
    )
    async def reactivate_agent(
        agent: AgentRef,
        confirmation: Annotated[ElicitationResult[Confirm], Resolve(ask_reactivate)],
    ) -> dict[str, Any]:
        return await _set(backend, agent, confirmation, {STATUS: AgentStatus.active.value})


def _retire_agent(server: MCPServer[Any], backend: Backend) -> None:
    @answer_refusals
    def ask_retire(agent: str) -> Elicit[Confirm]:
        return Elicit(
            f"Retire agent {backend.agent_named(agent)}? It will be denied everything; its "
            "history stays in the audit trails.",
            Confirm,
        )

    @tool(
        server,
        DESTRUCTIVE,
        "Retire an agent for good (asks the administrator to confirm): it is "
        "denied everything, like a suspended agent, and its record and audit history are "
        "kept.",
    )
    async def retire_agent(
        agent: AgentRef,
        confirmation: Annotated[ElicitationResult[Confirm], Resolve(ask_retire)],
    ) -> dict[str, Any]:
        return await _set(backend, agent, confirmation, {STATUS: AgentStatus.retired.value})


def _set_risk_level(server: MCPServer[Any], backend: Backend) -> None:
    @answer_refusals
    def ask_risk(agent: str, risk_level: str) -> Elicit[Confirm]:
        return Elicit(
            f"Set the risk level of agent {backend.agent_named(agent)} to {risk_level}?", Confirm
        )

    @tool(
        server,
        WRITE,
        "Set an agent's risk level (asks the administrator to confirm). Policies "
        "compare it (agent.risk, ordered low < medium < high < critical); API keys work only "
        "for low-risk agents.",
    )
    async def set_risk_level(
        agent: AgentRef,
        risk_level: Annotated[Risk, Field(description="the new risk level")],
        confirmation: Annotated[ElicitationResult[Confirm], Resolve(ask_risk)],
    ) -> dict[str, Any]:
        return await _set(backend, agent, confirmation, {RISK_LEVEL: risk_level})
