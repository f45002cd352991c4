"""The Decisions pages: recent decisions with filters, a live stream of new ones
(server-sent events), and each decision explained as recorded
(:func:`pep.admin_mcp.explain.explain_decision`).

A stream follows the agent trail by seq, a page of entries at a time; each process serves
at most :data:`MAX_STREAMS` streams at once, and a stream ends after :data:`STREAM_LIFE`
seconds (the browser's EventSource reconnects, resuming from the last seq it saw).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from typing import Any

from anyio import to_thread
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from issuer.store import Store
from pdp.decide import DecisionPoint
from pep.admin_mcp.errors import AdminError
from pep.admin_mcp.explain import explain_decision
from pep.console.activity import AGENT_TRAIL, newest
from pep.console.render import Renderer
from pep.console.security import signed_in
from pep.console.sessions import Session, Sessions

FILTERS = ("agent", "user", "tool", "effect", "rule")
MAX_FILTER = 200  # characters of one filter
MAX_STREAMS = 32  # live streams one process serves at once
STREAM_LIFE = 300.0  # seconds before a stream ends (the browser reconnects)
POLL = 0.25  # seconds between looks at the trail
BATCH = 500  # entries read per look
SHOWN = 100  # decisions a page lists
_ID = re.compile(r"[0-9a-f]{32}")


def wanted(params: dict[str, str]) -> dict[str, str]:
    """The filters asked for, bounded; empty ones dropped."""
    return {k: params[k][:MAX_FILTER] for k in FILTERS if params.get(k)}


def matches(record: dict[str, Any], filters: dict[str, str]) -> bool:
    """Whether a decision record passes the filters."""
    if record.get("kind") != "decision":
        return False
    effect = "allow" if record.get("allow") else "deny"
    resource = record.get("resource") or {}
    checks = {
        "agent": record.get("agent"),
        "user": record.get("user"),
        "tool": resource.get("id") if resource.get("type") == "tool" else None,
        "effect": effect,
    }
    for key, value in filters.items():
        if key == "rule":
            if value not in (record.get("decided_by") or []):
                return False
        elif checks[key] != value:
            return False
    return True


def row(seq: int, record: dict[str, Any]) -> dict[str, Any]:
    """A decision as the page and the stream show it."""
    resource = record.get("resource") or {}
    return {
        "seq": seq,
        "id": record.get("decision_id"),
        "at": record.get("at"),
        "agent": record.get("agent"),
        "user": record.get("user"),
        "action": record.get("action"),
        "resource": f"{resource.get('type')}:{resource.get('id')}",
        "effect": "allow" if record.get("allow") else "deny",
        "rules": ", ".join(record.get("decided_by") or []),
    }


def recent(store: Store, filters: dict[str, str]) -> tuple[list[dict[str, Any]], int]:
    """The newest matching decisions (newest first) and the trail's last seq: the trail
    is read backwards until a page is full (:func:`pep.console.activity.newest`)."""
    found, last = newest(store, AGENT_TRAIL, lambda record: matches(record, filters), SHOWN)
    return [row(seq, record) for seq, record in found], last


class DecisionPages:
    """The Decisions routes over one store and decision point."""

    def __init__(
        self, store: Store, point: DecisionPoint, sessions: Sessions, render: Renderer
    ) -> None:
        self.store = store
        self.point = point
        self.sessions = sessions
        self.render = render
        self.streams = asyncio.Semaphore(MAX_STREAMS)

    def routes(self) -> list[Route]:
        return [
            Route("/decisions", signed_in(self.sessions, self.list), methods=["GET"]),
            Route("/decisions/stream", signed_in(self.sessions, self.stream), methods=["GET"]),
            Route("/decisions/{id}", signed_in(self.sessions, self.show), methods=["GET"]),
        ]

    async def list(self, request: Request, session: Session) -> Response:
        filters = wanted(dict(request.query_params))
        rows, last = await to_thread.run_sync(recent, self.store, filters)
        context = {"rows": rows, "last": last, "filters": filters, "names": FILTERS}
        return self.render(request, "decisions.html.j2", context, session)

    async def show(self, request: Request, session: Session) -> Response:
        decision_id = request.path_params["id"]
        if not _ID.fullmatch(decision_id):
            return PlainTextResponse("a decision id is 32 hex digits", 404)
        bundle = self.point.engine.bundle
        try:
            found = await to_thread.run_sync(explain_decision, self.store, bundle, decision_id)
        except AdminError as exc:
            return PlainTextResponse(str(exc), 404)
        return self.render(request, "decision.html.j2", {"found": found}, session)

    async def stream(self, request: Request, session: Session) -> Response:
        if self.streams.locked():
            return PlainTextResponse("too many live streams; try again soon", 503)
        filters = wanted(dict(request.query_params))
        after = request.headers.get("last-event-id") or request.query_params.get("after", "0")
        start = int(after) if after.isdigit() and len(after) < 19 else 0
        events = self._events(request, filters, start)
        headers = {"X-Accel-Buffering": "no"}
        return StreamingResponse(events, media_type="text/event-stream", headers=headers)

    async def _events(
        self, request: Request, filters: dict[str, str], after: int
    ) -> AsyncIterator[str]:
        async with self.streams:
            loop = asyncio.get_running_loop()
            ends = loop.time() + STREAM_LIFE
            yield "retry: 1000\n\n"
            while loop.time() < ends and not await request.is_disconnected():
                entries = await to_thread.run_sync(self.store.audit, AGENT_TRAIL, after, BATCH)
                for entry in entries:
                    after = entry.seq
                    record = json.loads(entry.record)
                    if matches(record, filters):
                        yield f"id: {entry.seq}\ndata: {json.dumps(row(entry.seq, record))}\n\n"
                if not entries:
                    await asyncio.sleep(POLL)
