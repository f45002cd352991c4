"""What every console answer and every console form is held to.

Answers: a strict Content-Security-Policy (scripts only from the console itself, no inline
script or style), no caching, no framing, no referrer. Forms: read within bounds, and a
POST is refused (403) unless it carries the synchronizer token of the session it comes
with (:attr:`pep.console.sessions.Session.csrf`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl, quote

from anyio import to_thread
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pep.console.sessions import COOKIE, LIFETIME, Session, Sessions

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]
MAX_FORM = 16 * 1024  # bytes of a console form
MAX_FIELDS = 64
MAX_QUERY = 2048  # characters of a page's query string

Page = Callable[[Request, Session], Awaitable[Response]]


class Hardened:
    """ASGI middleware: the security headers on every answer, and 414 for a query string
    longer than :data:`MAX_QUERY`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if len(scope.get("query_string", b"")) > MAX_QUERY:
            too_long = PlainTextResponse("the query is too long", 414)
            await too_long(scope, receive, self._headed(send))
            return
        await self.app(scope, receive, self._headed(send))

    @staticmethod
    def _headed(send: Send) -> Send:
        async def headed(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {name for name, _ in HEADERS}
                kept = [(k, v) for k, v in message.get("headers", []) if k.lower() not in names]
                message = {**message, "headers": kept + HEADERS}
            await send(message)

        return headed


async def read_form(request: Request) -> dict[str, str] | None:
    """A urlencoded form of at most :data:`MAX_FORM` bytes and :data:`MAX_FIELDS` fields
    (the last of a repeated field), or None when it is larger or of another type."""
    if request.headers.get("content-type", "").split(";")[0].strip() != (
        "application/x-www-form-urlencoded"
    ):
        return None
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM:
            return None
    pairs = parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
    return dict(pairs) if len(pairs) <= MAX_FIELDS else None


def signed_in(sessions: Sessions, page: Page) -> Callable[[Request], Awaitable[Response]]:
    """``page`` for a signed-in operator; anyone else is sent to sign in (and back). A
    POST must come with its session's token and a bounded form: 403 otherwise."""

    async def endpoint(request: Request) -> Response:
        cookie = request.cookies.get(COOKIE, "")
        session = await to_thread.run_sync(sessions.find, cookie)
        if session is None:
            if request.method != "GET":
                return PlainTextResponse("sign in first", 403)
            back = quote(request.url.path, safe="/")
            return RedirectResponse(f"/console/signin?next={back}", 303)
        if request.method == "POST":
            form = await read_form(request)
            if form is None:
                return PlainTextResponse("the form is too large or not a form", 413)
            if not session.checks(form.get("csrf", "")):
                return PlainTextResponse("the form's token is not this session's", 403)
            request.state.form = form
        return await page(request, session)

    return endpoint


def set_session_cookie(response: Response, session: Session, secure: bool) -> None:
    """The session's cookie: HttpOnly, SameSite=Strict, Secure over TLS, console only."""
    response.set_cookie(
        COOKIE,
        session.id,
        max_age=LIFETIME,
        httponly=True,
        samesite="strict",
        secure=secure,
        path="/console",
    )


def form_of(request: Request) -> dict[str, Any]:
    """The checked form of a POST (see :func:`signed_in`)."""
    form: dict[str, Any] = request.state.form
    return form
