"""The admin MCP server's resources: the policy files, the policy schema and the agent
schema, for the model to read before it proposes a change."""

import json
from collections.abc import Callable
from typing import Any

from mcp.server.mcpserver import MCPServer
from scim2_models import Context as ScimContext

from issuer.models import PROVIDER
from pep.admin_mcp.errors import answer_refused_reads
from pep.admin_mcp.policies import Policies


def register(server: MCPServer[Any], policies: Policies) -> None:
    """Register the resources: every policy file by its name (listed, and as a template
    for any name), the policy schema and the agent schema."""

    @server.resource(
        "tessera://policies/{+name}",
        name="policy-file",
        description="A policy file (.pol) of the directory the decision point enforces, by "
        "its path relative to that directory",
        mime_type="text/plain",
    )
    @answer_refused_reads
    def policy_file(name: str) -> str:
        return policies.read(name)

    for name in sorted(policies.files()) if policies.root.is_dir() else ():
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
    @answer_refused_reads
    def policy_schema() -> str:
        return policies.schema_text()

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
    """The reader of one listed policy file, named for it (the SDK names a resource's
    function)."""

    @answer_refused_reads
    def read() -> str:
        return policies.read(name)

    read.__name__ = "policy_" + "".join(c if c.isalnum() else "_" for c in name)
    return read
