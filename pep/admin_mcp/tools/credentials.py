"""The tools that issue and rotate an agent's credentials (OAuth clients and API keys).
Each asks the person to confirm first; the answer holds the new secret exactly once."""

# Annotations stay evaluated at definition: the SDK reads the tools' signatures, which
# name local resolvers.

from typing import Annotated, Any, Literal

from mcp.server.mcpserver import Elicit, ElicitationResult, MCPServer, Resolve
from pydantic import Field

from pep.admin_mcp.errors import answer_refusals
from pep.admin_mcp.tools.arguments import AgentRef
from pep.admin_mcp.tools.backend import Backend, in_thread
from pep.admin_mcp.tools.declare import DESTRUCTIVE, WRITE, Confirm, declined, tool

JwksField = Annotated[
    dict[str, Any] | None,
    Field(
        description="for private_key_jwt only: the agent's public keys as a JWK Set, "
        '{"keys": [{"kty": "EC", "crv": "P-256", "x": "…", "y": "…", "kid": "…"}]}'
    ),
]


def register(server: MCPServer[Any], backend: Backend) -> None:
    """Register issue_credential and rotate_credential."""
    _issue_credential(server, backend)
    _rotate_credential(server, backend)


def _issue_credential(server: MCPServer[Any], backend: Backend) -> None:
    @answer_refusals
    def ask_issue(agent: str, kind: str) -> Elicit[Confirm]:
        return Elicit(
            f"Issue a new {kind} credential to agent {backend.agent_named(agent)}?", Confirm
        )

    @tool(
        server,
        WRITE,
        "Issue a credential to an agent (asks the administrator to confirm). "
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
        if refused := declined(confirmation):
            return refused
        who = backend.admin()
        issued = await in_thread(
            lambda: backend.directory.issue_credential(who, agent, kind, scope, jwks, expires_in)
        )
        return {"done": True, "credential": issued}


def _rotate_credential(server: MCPServer[Any], backend: Backend) -> None:
    @answer_refusals
    def ask_rotate(agent: str, credential: str) -> Elicit[Confirm]:
        return Elicit(
            f"Rotate credential {credential!r} of agent {backend.agent_named(agent)}? The old "
            "one stops working.",
            Confirm,
        )

    @tool(
        server,
        DESTRUCTIVE,
        "Rotate an agent's credential (asks the administrator to confirm): issue "
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
        if refused := declined(confirmation):
            return refused
        who = backend.admin()
        rotated = await in_thread(
            lambda: backend.directory.rotate_credential(who, agent, credential, jwks)
        )
        return {"done": True, "credential": rotated}
