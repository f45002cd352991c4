"""The tools that read the audit trails as a whole: anomaly alerts and compliance reports."""

# Annotations stay evaluated at definition: the SDK reads the tools' signatures.

from dataclasses import replace
from typing import Annotated, Any, Literal

from mcp.server.mcpserver import MCPServer
from pydantic import Field

from pdp.audit.query import records
from pdp.audit.report import Period, ReportError, gather
from pdp.audit.report_formats import FORMATS, render
from pep.admin_mcp.errors import AdminError
from pep.admin_mcp.tools.arguments import Since, Until, filters, trail_agent
from pep.admin_mcp.tools.backend import Backend, in_thread
from pep.admin_mcp.tools.declare import READ, tool


def register(server: MCPServer[Any], backend: Backend) -> None:
    """Register list_alerts and compliance_report."""
    _list_alerts(server, backend)
    _compliance_report(server, backend)


def _list_alerts(server: MCPServer[Any], backend: Backend) -> None:
    @tool(
        server,
        READ,
        "List the anomaly alerts raised on agents (a new tool, a call rate or "
        "burst of denials far above the agent's baseline, a large amount, an unusual hour), "
        "oldest first, with severity and message.",
    )
    async def list_alerts(
        agent: Annotated[str | None, trail_agent("alerts")] = None,
        alert: Annotated[
            Literal["new_tool", "rate", "denials", "amount", "hours"] | None,
            Field(description="only this kind of alert"),
        ] = None,
        since: Since = None,
        until: Until = None,
    ) -> dict[str, Any]:
        given = filters(since=since, until=until)

        def alerts() -> list[dict[str, Any]]:
            named = backend.names.on_trail(agent)
            by_agent = given if named is None else replace(given, agent=named.id)
            found = [
                {"seq": seq, **record}
                for seq, record in records(backend.store, "alert", by_agent)
                if record.get("kind") == "alert" and alert in (None, record.get("alert"))
            ]
            if named is not None:
                named.known(backend.store, len(found))
            return found

        found = await in_thread(alerts)
        return {"alerts": found, "count": len(found)}


def _compliance_report(server: MCPServer[Any], backend: Backend) -> None:
    @tool(
        server,
        READ,
        "Produce a compliance report on one agent or on every agent for a period, "
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
        period = filters(since=since, until=until)

        def report() -> dict[str, Any]:
            agent_id = None if agent is None else backend.names.ever(agent)
            try:
                made = gather(
                    backend.store, agent=agent_id, period=Period(period.since, period.until)
                )
            except ReportError as exc:
                raise AdminError(str(exc)) from None
            return {"intact": made.intact, "format": format, "report": render(made, format)}

        return await in_thread(report)
