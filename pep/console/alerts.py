"""The Alerts page: the newest anomaly alerts (:mod:`pdp.audit.anomaly`) with what was
observed against the agent's baseline (:mod:`pdp.audit.baselines`), and acknowledging one.

An acknowledgement is kept in the store (kind :data:`KIND`, keyed by the alert's seq on
the alert trail), so every worker and replica shows it; it is a change in the store's
log with the operator as actor, so the admin trail records who acknowledged which alert.
The alert trail itself is never written: it stays exactly what the detector appended.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from anyio import to_thread
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from issuer.store import Store
from pep.console.activity import ALERT_TRAIL, alerts
from pep.console.render import Renderer
from pep.console.security import signed_in
from pep.console.sessions import Session, Sessions

KIND = "AlertAcknowledgement"
SHOWN = 200  # alerts the page lists, newest first


def listed(store: Store) -> list[dict[str, Any]]:
    """The newest alerts, each with its acknowledgement (or None), read in one query."""
    found = alerts(store, None, SHOWN)
    acks = store.get_many(KIND, [str(alert["seq"]) for alert in found])
    for alert in found:
        ack = acks.get(str(alert["seq"]))
        alert["ack"] = None if ack is None else ack.data
    return found


def acknowledge(store: Store, seq: int, session: Session) -> bool:
    """Record that the operator acknowledged the alert at ``seq``; False when the alert
    trail holds no such entry."""
    entries = store.audit(ALERT_TRAIL, after=seq - 1, limit=1)
    if not entries or entries[0].seq != seq:
        return False
    at = datetime.now(UTC).isoformat(timespec="seconds")
    document = {"operator": session.operator, "name": session.name, "at": at}
    store.put(KIND, {str(seq): document}, actor=session.operator)
    return True


class AlertPages:
    """The Alerts routes over one store."""

    def __init__(self, store: Store, sessions: Sessions, render: Renderer) -> None:
        self.store = store
        self.sessions = sessions
        self.render = render

    def routes(self) -> list[Route]:
        return [
            Route("/alerts", signed_in(self.sessions, self.list), methods=["GET"]),
            Route("/alerts/{seq:int}/ack", signed_in(self.sessions, self.ack), methods=["POST"]),
        ]

    async def list(self, request: Request, session: Session) -> Response:
        rows = await to_thread.run_sync(listed, self.store)
        return self.render(request, "alerts.html.j2", {"rows": rows}, session)

    async def ack(self, request: Request, session: Session) -> Response:
        seq = int(request.path_params["seq"])
        found = await to_thread.run_sync(acknowledge, self.store, seq, session)
        if not found:
            return PlainTextResponse("no such alert", 404)
        return RedirectResponse("/console/alerts", 303)
