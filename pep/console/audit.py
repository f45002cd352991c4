"""The Audit page: each trail's head, the newest signed checkpoints, verifying every
trail's hash chain and checkpoints on demand, and the compliance report for a period.

Verifying reads every trail whole (:func:`pdp.audit.report.verify`, what ``tessera audit
verify`` checks), so it runs when an operator asks, one at a time per process, and the
page shows the last result this process found. The report is the existing HTML report
(:mod:`pdp.audit.report_html`), served only as a download (``Content-Disposition:
attachment``): it carries inline style and its own Content-Security-Policy, and is never
shown inside the console, whose policy forbids inline style.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from anyio import to_thread
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from issuer.store import Store
from pdp.audit import report_html
from pdp.audit.chain import TRAILS
from pdp.audit.checkpoints import TRAIL as CHECKPOINT_TRAIL
from pdp.audit.report import Period, ReportError, TrailCheck, gather, verify
from pep.console.activity import tail
from pep.console.render import Renderer
from pep.console.security import signed_in
from pep.console.sessions import Session, Sessions

MAX_DAYS = 366  # the longest period a report covers
CHECKPOINTS_SHOWN = 20


@dataclass(frozen=True)
class Verified:
    """The last verification this process made: when, by whom, what it found."""

    at: str
    operator: str
    checks: tuple[TrailCheck, ...]

    @property
    def intact(self) -> bool:
        return all(check.intact for check in self.checks)


def period_of(since: str, until: str) -> Period:
    """The period from ``since`` to ``until`` (dates, both included, UTC), at most
    :data:`MAX_DAYS` days; ReportError saying what is wrong otherwise."""
    try:
        first, last = date.fromisoformat(since), date.fromisoformat(until)
    except ValueError:
        raise ReportError("since and until are dates, e.g. 2027-01-01") from None
    if last < first:
        raise ReportError("until is on or after since")
    if (last - first).days + 1 > MAX_DAYS:
        raise ReportError(f"a report covers at most {MAX_DAYS} days: choose a shorter period")
    start = datetime.combine(first, time(), UTC)
    return Period(start, datetime.combine(last + timedelta(days=1), time(), UTC))


def heads(store: Store) -> list[dict[str, Any]]:
    """Each trail's newest entry: its seq (how many entries) and when."""
    found = []
    for trail in dict.fromkeys((*TRAILS, CHECKPOINT_TRAIL)):  # each trail once
        last = store.audit_tail(trail)
        found.append({"trail": trail, "entries": last.seq if last else 0})
    return found


def checkpoints(store: Store) -> list[dict[str, Any]]:
    """The newest signed checkpoints, newest first."""
    found = [{"seq": seq, **record} for seq, record in tail(store, CHECKPOINT_TRAIL, 200)]
    return found[::-1][:CHECKPOINTS_SHOWN]


class AuditPages:
    """The Audit routes over one store and the issuer whose keys sign checkpoints."""

    def __init__(self, store: Store, issuer: str, sessions: Sessions, render: Renderer) -> None:
        self.store = store
        self.issuer = issuer
        self.sessions = sessions
        self.render = render
        self.verified: Verified | None = None
        self._verifying = threading.Lock()

    def routes(self) -> list[Route]:
        return [
            Route("/audit", signed_in(self.sessions, self.show), methods=["GET"]),
            Route("/audit/verify", signed_in(self.sessions, self.verify), methods=["POST"]),
            Route("/audit/report", signed_in(self.sessions, self.report), methods=["GET"]),
        ]

    async def show(self, request: Request, session: Session, error: str = "") -> Response:
        def read() -> dict[str, Any]:
            return {"heads": heads(self.store), "checkpoints": checkpoints(self.store)}

        context = await to_thread.run_sync(read)
        today = datetime.now(UTC).date()
        context.update(
            verified=self.verified,
            since=(today - timedelta(days=30)).isoformat(),
            until=today.isoformat(),
            max_days=MAX_DAYS,
            error=error,
        )
        return self.render(request, "audit.html.j2", context, session, 400 if error else 200)

    async def verify(self, request: Request, session: Session) -> Response:
        """Verify every trail now (one verification at a time in this process)."""

        def run() -> None:
            with self._verifying:
                checks = verify(self.store, issuer=self.issuer)
                at = datetime.now(UTC).isoformat(timespec="seconds")
                self.verified = Verified(at, session.name, checks)

        await to_thread.run_sync(run)
        return RedirectResponse("/console/audit", 303)

    async def report(self, request: Request, session: Session) -> Response:
        """The compliance report for a period, as a download."""
        params = request.query_params
        since, until = params.get("since", "")[:10], params.get("until", "")[:10]
        try:
            period = period_of(since, until)
        except ReportError as exc:
            return await self.show(request, session, str(exc))

        def write() -> str:
            report = gather(self.store, period=period, issuer=self.issuer)
            return report_html.render(report)

        page = await to_thread.run_sync(write)
        name = f"tessera-report-{since}-to-{until}.html"
        headers = {"Content-Disposition": f'attachment; filename="{name}"'}
        return Response(page, 200, media_type="text/html; charset=utf-8", headers=headers)
