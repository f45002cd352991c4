"""The admin MCP server: Tessera's tools and resources for an administrator's MCP client.

Built on the official MCP SDK (``mcp.server.mcpserver.MCPServer``). This module builds the
server and has each group of tools (:mod:`pep.admin_mcp.tools`) and the resources
(:mod:`pep.admin_mcp.resources`) register themselves; it serves them over stdio, and
:mod:`pep.admin_mcp.http` over Streamable HTTP. Read tools answer at once; every write
first asks the person at the keyboard to confirm through MCP elicitation, and is recorded
in the admin trail as the administrator's.
"""

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.shared.exceptions import MCPError
from mcp.types import CallToolResult, InputRequiredResult

from issuer.store import Store
from pep.admin_mcp import resources
from pep.admin_mcp.errors import in_plain_words
from pep.admin_mcp.tools import agents, audit, credentials, decisions, directory, policies
from pep.admin_mcp.tools.backend import Backend

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

# Each group's registration, in the order the client lists the tools: reading the
# directory first, the audit trails last.
TOOL_GROUPS = (
    directory.register,
    agents.register,
    credentials.register,
    policies.register,
    decisions.register,
    audit.register,
)


@dataclass(frozen=True)
class Settings:
    """What the server administers, and who the administrator is over stdio."""

    store: Store
    policies: Path
    admin: str  # the actor recorded for changes made over stdio


class AdminServer(MCPServer[Any]):
    """The SDK's server, answering its own refusals of a tool call in plain words
    (:func:`pep.admin_mcp.errors.in_plain_words`): a client that cannot confirm a write
    is told so, not the name of the function that would have asked."""

    async def call_tool(
        self, name: str, arguments: dict[str, Any], context: Context[Any, Any] | None = None
    ) -> CallToolResult | InputRequiredResult:
        try:
            return await super().call_tool(name, arguments, context)
        except (MCPError, ToolError) as exc:
            plain = in_plain_words(name, exc)
            if plain is exc:
                raise
            raise plain from exc.__cause__ or exc  # the SDK logs a ValidationError's fields


def build_server(
    settings: Settings, auth: Any = None, token_verifier: Any = None
) -> MCPServer[Any]:
    """The MCP server over one store and policy directory; ``auth`` (the SDK's
    ``AuthSettings``) and ``token_verifier`` protect its HTTP transport."""
    server: MCPServer[Any] = AdminServer(
        "tessera-admin",
        title="Tessera administration",
        instructions=INSTRUCTIONS,
        auth=auth,
        token_verifier=token_verifier,
    )
    backend = register_tools(server, settings)
    resources.register(server, backend.policies)
    return server


def register_tools(server: MCPServer[Any], settings: Settings) -> Backend:
    """Register every group's tools on ``server``; the backend they share."""
    backend = Backend(settings.store, settings.policies, settings.admin)
    for register_group in TOOL_GROUPS:
        register_group(server, backend)
    return backend


def serve_stdio(settings: Settings) -> None:
    """Serve over standard input and output until the client closes them."""
    server = build_server(settings)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # in-process SCIM calls, not news
    server.run("stdio")
