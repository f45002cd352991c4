"""The Agents pages: a searchable, sortable, paged list; one agent's page (metadata,
credentials by kind and fingerprint, recent decisions, alerts, delegations); suspending
and resuming, confirmed first.

A suspension is the SCIM service's own PATCH of the agent's status, made in process with
the operator as the actor (:meth:`pep.admin_mcp.directory.DirectoryAdmin.update_agent`):
the store's change feed carries it to every decision point and verifier, and the admin
trail records it as the operator's.
"""

from __future__ import annotations

import hashlib
from typing import Any

from anyio import to_thread
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from issuer.agents import AgentStatus
from issuer.store import NotFound
from pep.admin_mcp.directory import Admin, DirectoryAdmin, agent_document, agent_summary
from pep.admin_mcp.errors import AdminError
from pep.console.activity import Activity, activities, activity, alerts
from pep.console.render import Renderer
from pep.console.security import form_of, signed_in
from pep.console.sessions import Session, Sessions

PAGE_SIZE = 50
MAX_PAGES = 10_000
MAX_SEARCH = 200  # characters of a search
COLUMNS = ("name", "owner", "purpose", "riskLevel", "agentType", "status", "last_seen", "today")
SORTABLE = ("name", "owner", "riskLevel", "status")  # each served by an index of the store


def fingerprint(identifier: str) -> str:
    """A credential's fingerprint: the first 16 hex digits of its identifier's SHA-256."""
    return hashlib.sha256(identifier.encode()).hexdigest()[:16]


def listing(directory: DirectoryAdmin, params: dict[str, str]) -> dict[str, Any]:
    """The rows of one page of the list, and how it was asked for: the store searches,
    sorts and pages (an index serves each sort); the activity is read for the page's
    agents only."""
    search = params.get("q", "")[:MAX_SEARCH]
    column = params.get("sort", "name")
    column = column if column in SORTABLE else "name"
    descending = params.get("dir") == "desc"
    page = min(max(_int(params.get("page", "1")), 1), MAX_PAGES)
    store = directory.store
    offset = (page - 1) * PAGE_SIZE
    total, records = store.search("Agent", search, column, descending, PAGE_SIZE, offset)
    seen = activities(store, [record.id for record in records])
    rows = [
        {**agent_summary(record), "activity": seen.get(record.id, Activity())} for record in records
    ]
    return {
        "rows": rows,
        "q": search,
        "sort": column,
        "dir": "desc" if descending else "asc",
        "page": page,
        "pages": max(1, -(-total // PAGE_SIZE)),
        "total": total,
        "columns": COLUMNS,
        "sortable": SORTABLE,
    }


def _int(text: str) -> int:
    return int(text) if text.isdigit() and len(text) < 7 else 1


def agent_page(directory: DirectoryAdmin, agent_id: str) -> dict[str, Any]:
    """Everything the agent's page shows; NotFound when there is no such agent."""
    record = directory.store.get("Agent", agent_id)
    credentials = [
        {
            "kind": "OAuth client" if found["kind"] == "oauth_client" else "API key",
            "method": found.get("auth_method") or "api key",
            "fingerprint": fingerprint(str(found["id"])),
            "scope": found.get("scope", ""),
        }
        for found in directory.credentials(record.id)
    ]
    seen = activity(directory.store, record.id)
    return {
        "agent": agent_document(record),
        "credentials": credentials,
        "activity": seen,
        "alerts": alerts(directory.store, record.id, 50),
        "delegations": directory.list_consents(agent=record.id),
    }


class AgentPages:
    """The Agents routes over one directory."""

    def __init__(self, directory: DirectoryAdmin, sessions: Sessions, render: Renderer) -> None:
        self.directory = directory
        self.render = render
        self.sessions = sessions

    def routes(self) -> list[Route]:
        page = signed_in
        return [
            Route("/", page(self.sessions, self.home), methods=["GET"]),
            Route("/agents", page(self.sessions, self.list), methods=["GET"]),
            Route("/agents/{id}", page(self.sessions, self.show), methods=["GET"]),
            Route("/agents/{id}/{act:str}", page(self.sessions, self.confirm), methods=["GET"]),
            Route("/agents/{id}/{act:str}", page(self.sessions, self.act), methods=["POST"]),
        ]

    async def home(self, request: Request, session: Session) -> Response:
        return RedirectResponse("/console/agents", 303)

    async def list(self, request: Request, session: Session) -> Response:
        params = dict(request.query_params)
        context = await to_thread.run_sync(listing, self.directory, params)
        return self.render(request, "agents.html.j2", context, session)

    async def show(self, request: Request, session: Session) -> Response:
        try:
            context = await to_thread.run_sync(
                agent_page, self.directory, request.path_params["id"]
            )
        except NotFound:
            return PlainTextResponse("no such agent", 404)
        return self.render(request, "agent.html.j2", context, session)

    async def confirm(self, request: Request, session: Session) -> Response:
        """The confirmation page of a suspension or a resumption."""
        act = request.path_params["act"]
        if act not in ("suspend", "resume"):
            return PlainTextResponse("not found", 404)
        try:
            record = await to_thread.run_sync(
                self.directory.store.get, "Agent", request.path_params["id"]
            )
        except NotFound:
            return PlainTextResponse("no such agent", 404)
        context = {"agent": agent_document(record), "act": act}
        return self.render(request, "confirm.html.j2", context, session)

    async def act(self, request: Request, session: Session) -> Response:
        """Suspend or resume, as the operator, through the SCIM service."""
        act, agent_id = request.path_params["act"], request.path_params["id"]
        status = {"suspend": AgentStatus.suspended, "resume": AgentStatus.active}.get(act)
        if status is None:
            return PlainTextResponse("not found", 404)
        if form_of(request).get("confirm") != "yes":
            return RedirectResponse(f"/console/agents/{agent_id}/{act}", 303)
        try:
            await self.directory.update_agent(
                Admin(session.operator), agent_id, {"status": status.value}
            )
        except AdminError as exc:
            return PlainTextResponse(str(exc), 409)
        return RedirectResponse(f"/console/agents/{agent_id}", 303)
