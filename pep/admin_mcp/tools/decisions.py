"""The tools that find past decisions in the agent audit trail and explain them."""

# Annotations stay evaluated at definition: the SDK reads the tools' signatures.

from dataclasses import replace
from typing import Annotated, Any, Literal

from mcp.server.mcpserver import MCPServer
from pydantic import Field

from pdp.audit.query import records
from pep.admin_mcp.tools.arguments import Since, Until, filters, trail_agent
from pep.admin_mcp.tools.backend import Backend, in_thread
from pep.admin_mcp.tools.declare import READ, tool


def register(server: MCPServer[Any], backend: Backend) -> None:
    """Register explain_decision and query_decisions."""
    _explain_decision(server, backend)
    _query_decisions(server, backend)


def _explain_decision(server: MCPServer[Any], backend: Backend) -> None:
    @tool(
        server,
        READ,
        "Explain a past decision by its decision id (the id the decision point "
        "answered with and the audit trail keeps), as it was answered: the recorded "
        "decision, reasons and obligations, the limit usage it was made on, and why, rule "
        "by rule, when the record reproduces it ('unknown' lists what the record does not "
        "tell). 'today' says apart how the policies and directory of now decide the same "
        "request. Use query_decisions to find ids, e.g. for 'why was pay-bot denied at "
        "10:14?'.",
    )
    async def explain_decision(
        decision_id: Annotated[str, Field(description="the decision id (32 hex digits)")],
    ) -> dict[str, Any]:
        return await in_thread(
            lambda: backend.policies.explain_decision(backend.store, decision_id)
        )


def _query_decisions(server: MCPServer[Any], backend: Backend) -> None:
    @tool(
        server,
        READ,
        "List recorded decisions from the agent audit trail, newest last, with "
        "their decision ids: filter by agent (id or name), user id, allow/deny, tool and "
        "time. An agent that is not known is refused, not answered with no decisions.",
    )
    async def query_decisions(
        agent: Annotated[str | None, trail_agent("decisions")] = None,
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
        given = filters(user=user, decision=decision, tool=tool, since=since, until=until)

        def query() -> list[dict[str, Any]]:
            named = backend.names.on_trail(agent)
            by_agent = given if named is None else replace(given, agent=named.id)
            found = [
                {"seq": seq, **record}
                for seq, record in records(backend.store, "agent", by_agent)
                if record.get("kind") == "decision"
            ]
            if named is not None:
                named.known(backend.store, len(found))
            return found[-limit:]

        found = await in_thread(query)
        return {"decisions": found, "count": len(found)}
