"""The tools that read the directory: agents, users and the consents users gave."""

# Annotations stay evaluated at definition: the SDK reads the tools' signatures.

from typing import Annotated, Any, Literal

from mcp.server.mcpserver import MCPServer
from pydantic import Field

from pep.admin_mcp.directory import DirectoryAdmin
from pep.admin_mcp.tools.arguments import AgentRef, Risk
from pep.admin_mcp.tools.backend import Backend, in_thread
from pep.admin_mcp.tools.declare import READ, tool


def register(server: MCPServer[Any], backend: Backend) -> None:
    """Register list_agents, get_agent, list_users and list_consents, in that order."""
    _agents(server, backend.directory)
    _users_and_consents(server, backend.directory)


def _agents(server: MCPServer[Any], directory: DirectoryAdmin) -> None:
    @tool(
        server,
        READ,
        "List the agents in Tessera's directory with their id, name, owner, "
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
        agents = await in_thread(lambda: directory.list_agents(status, owner, purpose, risk_level))
        return {"agents": agents, "count": len(agents)}

    @tool(
        server,
        READ,
        "Get one agent in full: every directory attribute (owner, purpose, "
        "riskLevel, status, agentType, model, description, scopes, labels, version, created, "
        "modified) and its credentials (OAuth clients and API keys, never their secrets).",
    )
    async def get_agent(agent: AgentRef) -> dict[str, Any]:
        return await in_thread(lambda: directory.get_agent(agent))


def _users_and_consents(server: MCPServer[Any], directory: DirectoryAdmin) -> None:
    @tool(
        server,
        READ,
        "List the users (the people agents act for) with their id, userName, "
        "displayName, active flag, roles and groups, as policies see them.",
    )
    async def list_users() -> dict[str, Any]:
        users = await in_thread(directory.list_users)
        return {"users": users, "count": len(users)}

    @tool(
        server,
        READ,
        "List the consents users gave: which user let which agent (through which "
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
        consents = await in_thread(lambda: directory.list_consents(user, agent))
        return {"consents": consents, "count": len(consents)}
