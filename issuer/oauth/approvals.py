"""The approval pages of backchannel authentication (OpenID CIBA §8 and §9).

A person learns of an agent's request on ``/oauth/approvals``, the list of their
requests that wait for an answer, and answers one on ``/oauth/approvals/{id}`` (the id
is the SHA-256 of the ``auth_req_id``, which grants nothing). They sign in as for the
authorization code flow (``/oauth/login``, which leads back here). The page names the
agent, its owner, purpose and risk, the application, the services the token will be
good for (its audience: the ``resource`` parameters, else this issuer) and the scopes
there, the binding message and the authorization details in plain words; only the
person the request names may answer, once. Plain server-rendered HTML: no script, no
asset from elsewhere, a strict Content-Security-Policy, and a CSRF token bound to the
session and the request.
"""

from __future__ import annotations

import base64
import hashlib
import html
from datetime import UTC, datetime
from urllib.parse import parse_qsl, quote

from anyio import to_thread
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from issuer.hashing import same_text
from issuer.oauth.authorize import SESSION_COOKIE, AuthorizationEndpoint
from issuer.oauth.bodies import MAX_BODY
from issuer.oauth.ciba import Backchannel, BackchannelRequest
from issuer.oauth.ping import Notifier
from issuer.oauth.sessions import form_token
from issuer.wire import WireError, read_body

APPROVALS = "/oauth/approvals"
_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:36rem;margin:3rem auto;padding:0 1rem}"
    "dt{font-weight:bold}dd{margin:0 0 .5rem 0}button{font-size:1rem;padding:.4rem 1rem}"
    ".message{font-size:1.2rem;border:2px solid #333;padding:.5rem}"
)
_STYLE_HASH = base64.b64encode(hashlib.sha256(_STYLE.encode()).digest()).decode()
CSP = (
    f"default-src 'none'; style-src 'sha256-{_STYLE_HASH}'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
_OUTCOMES = {
    "unknown": (404, "Unknown request", "There is no such request; it may have expired."),
    "not_yours": (
        403,
        "Not your request",
        "This request asks another person's approval. Nothing was changed.",
    ),
    "answered_before": (409, "Already answered", "This request was answered before."),
    "expired": (410, "Expired", "This request expired before it was answered."),
}


class ApprovalPages:
    """``/oauth/approvals`` and ``/oauth/approvals/{id}``."""

    def __init__(
        self, backchannel: Backchannel, authorization: AuthorizationEndpoint, notifier: Notifier
    ) -> None:
        self.backchannel = backchannel
        self.authorization = authorization
        self.notifier = notifier

    async def listing(self, request: Request) -> Response:
        """The signed-in person's requests that wait for an answer."""
        user_id = await self.authorization.session_user(request)
        if user_id is None:
            return _sign_in(APPROVALS)
        found = await to_thread.run_sync(self.backchannel.pending_for, user_id)
        items = "".join(
            f"<li><a href='{APPROVALS}/{r.id_hash}'>{html.escape(r.agent_name)}</a>"
            f"{_quoted(r.binding_message)}</li>"
            for r in found
        )
        body = f"<ul id='pending'>{items}</ul>" if items else "<p>Nothing waits for you.</p>"
        return _html("Requests for your approval", body)

    async def approval(self, request: Request) -> Response:
        """GET: the request, to approve or deny; POST: the answer."""
        hashed = request.path_params["id"]
        user_id = await self.authorization.session_user(request)
        if user_id is None:
            return _sign_in(f"{APPROVALS}/{hashed}")
        csrf = form_token(request.cookies.get(SESSION_COOKIE, ""), "approve", hashed)
        if request.method == "POST":
            return await self._answer(request, hashed, user_id, csrf)
        found = await to_thread.run_sync(self.backchannel.get, hashed)
        if found is None:
            return _outcome("unknown")
        if found.user_id != user_id:
            return _outcome("not_yours")
        if found.status != "pending":
            return _outcome("answered_before")
        if found.expires_at <= self.backchannel.clock():
            return _outcome("expired")
        issuer = self.backchannel.grants.minter.issuer
        return _html("Approve this request?", _details(found, csrf, issuer))

    async def _answer(self, request: Request, hashed: str, user_id: str, csrf: str) -> Response:
        try:
            form = dict(parse_qsl((await read_body(request, MAX_BODY)).decode(errors="replace")))
        except WireError as exc:
            return _html("Refused", f"<p>The form was refused: {html.escape(str(exc))}.</p>", 400)
        if not same_text(form.get("csrf", ""), csrf):
            return _html("Refused", "<p>The form is stale or forged. Nothing was changed.</p>", 400)
        decision = form.get("decision")
        if decision not in ("approve", "deny"):
            return _html("Refused", "<p>Choose Approve or Deny.</p>", 400)
        answer = await to_thread.run_sync(
            self.backchannel.answer, hashed, user_id, decision == "approve"
        )
        if answer.outcome != "answered":
            return _outcome(answer.outcome)
        assert answer.request is not None
        if answer.request.ping is not None:  # §10.2, in the background
            self.notifier.notify(*answer.request.ping)
        said = "approved" if decision == "approve" else "denied"
        message = f"<p id='outcome'>You {said} the request of {_agent(answer.request)}.</p>"
        return _html(f"Request {said}", message)


def _details(found: BackchannelRequest, csrf: str, issuer: str) -> str:
    """The request in plain words, and the form that answers it."""
    audience = ", ".join(found.resources) or f"{issuer} (this sign-in service)"
    facts = [
        ("Agent", _agent(found)),
        ("Owner", html.escape(found.owner or "(not stated)")),
        ("Purpose", html.escape(found.purpose or "(not stated)")),
        ("Risk", html.escape(found.risk or "(not stated)")),
        ("Application", html.escape(found.client_name or found.client_id)),
        ("At", f"<span id='audience'>{html.escape(audience)}</span>"),
        (
            "Access",
            f"<span id='scopes'>{html.escape(', '.join(found.scopes) or '(no scopes)')}</span>",
        ),
        ("Until", datetime.fromtimestamp(found.expires_at, UTC).strftime("%H:%M:%S UTC")),
    ]
    listed = "".join(f"<dt>{name}</dt><dd>{value}</dd>" for name, value in facts)
    message = (
        f"<p>Check that this matches what the agent shows you:</p>"
        f"<p class='message' id='binding'>{html.escape(found.binding_message)}</p>"
        if found.binding_message
        else ""
    )
    actions = "".join(f"<li>{html.escape(line)}</li>" for line in found.plain_details())
    wanted = f"<p>It asks you to allow:</p><ul id='details'>{actions}</ul>" if actions else ""
    form = (
        f"<form method='post' action='{APPROVALS}/{found.id_hash}'>"
        f"<input type='hidden' name='csrf' value='{csrf}'>"
        "<button name='decision' value='approve' type='submit'>Approve</button> "
        "<button name='decision' value='deny' type='submit'>Deny</button></form>"
    )
    return f"<dl>{listed}</dl>{message}{wanted}{form}"


def _agent(found: BackchannelRequest) -> str:
    return f"<strong id='agent'>{html.escape(found.agent_name)}</strong>"


def _quoted(message: str | None) -> str:
    return f": “{html.escape(message)}”" if message else ""


def _sign_in(back: str) -> Response:
    return RedirectResponse(f"/oauth/login?return={quote(back, safe='')}", 303)


def _outcome(outcome: str) -> HTMLResponse:
    status, title, message = _OUTCOMES[outcome]
    return _html(title, f"<p role='alert'>{html.escape(message)}</p>", status)


def _html(title: str, body: str, status: int = 200) -> HTMLResponse:
    page = (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body><h1>{html.escape(title)}</h1>{body}</body></html>"
    )
    headers = {
        "Cache-Control": "no-store",
        "Content-Security-Policy": CSP,
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "no-referrer",
    }
    return HTMLResponse(page, status, headers=headers)
