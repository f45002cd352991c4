"""The authorization code flow for users: authorize, log in, consent (RFC 6749 §4.1).

PKCE is required, with S256 only (RFC 7636; OAuth 2.1). The redirect URI must equal one
the client registered, character for character; until it is verified, errors are shown
to the user and never sent to it. A request may name the agent that will act for the
user (``requested_actor``); the consent page names it, the consent is recorded for that
agent, and the access token carries ``may_act`` so that agent (and only it) can exchange
the token (RFC 8693 §4.4). The redirect carries ``iss`` (RFC 9207).

Users log in with their directory ``userName`` and password; their sessions are in the
store (:mod:`issuer.oauth.sessions`). The request waiting for the sign-in and the consent
travels in the browser, signed by the key ring, and is answered once
(:mod:`issuer.oauth.pending`). Codes are in the store (:mod:`issuer.oauth.codes`): the
client's token request may reach any worker or replica, and a code presented again after
it was redeemed, anywhere, is known for a replay (:class:`CodeReplayed`) and the tokens
it gave are revoked (RFC 6749 §4.1.2, OAuth 2.1 §4.1.3).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import re
import secrets
from urllib.parse import parse_qsl, urlencode, urlsplit

from anyio import to_thread
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from issuer.agents import Agent, User
from issuer.hashing import hash_password, same_text, verify_password
from issuer.keys import KeyRing
from issuer.oauth.bodies import MAX_BODY
from issuer.oauth.clients import RESERVED_PREFIX, Client, ClientRegistry
from issuer.oauth.codes import UNKNOWN, Codes, Grant, Issued
from issuer.oauth.consent import Consents
from issuer.oauth.errors import OAuthError
from issuer.oauth.pending import MAX_SEALED, Pending, PendingRequests, csrf_token
from issuer.oauth.sessions import LIFETIME, Sessions
from issuer.store import NotFound, Store
from issuer.wire import WireError, read_body

SESSION_COOKIE = "tessera_session"
_CHALLENGE = re.compile(r"^[A-Za-z0-9_-]{43}$")  # base64url of a SHA-256 digest
_VERIFIER = re.compile(r"^[A-Za-z0-9._~-]{43,128}$")  # RFC 7636 §4.1
_DUMMY_HASH = hash_password(secrets.token_urlsafe(16))  # equal time for unknown users
_NOT_PENDING = "This request has expired, or is not one of ours; start again."
# where a sign-in may lead back to, besides a pending authorization: the approval pages
_RETURN = re.compile(r"^/oauth/approvals(/[0-9a-f]{64})?$")


class AuthorizationEndpoint:
    """``/oauth/authorize``, ``/oauth/login`` and ``/oauth/consent``, and code redemption."""

    def __init__(
        self,
        store: Store,
        keys: KeyRing,
        clients: ClientRegistry,
        consents: Consents,
        issuer: str,
        secure_cookies: bool = False,
    ) -> None:
        self.store = store
        self.clients = clients
        self.consents = consents
        self.issuer = issuer
        self.secure_cookies = secure_cookies
        self.pending = PendingRequests(store, keys, issuer)
        self.codes = Codes(store)
        self.sessions = Sessions(store)

    # -- /oauth/authorize

    async def authorize(self, request: Request) -> Response:
        query = request.query_params
        params = dict(query)
        client = await to_thread.run_sync(self.clients.get, params.get("client_id", ""))
        if client is None or "authorization_code" not in client.grant_types:
            return _page("Unknown client", "This application is not registered here.", 400)
        redirect_uri = params.get("redirect_uri")
        if redirect_uri is None and len(client.redirect_uris) == 1:
            redirect_uri = client.redirect_uris[0]
        if redirect_uri is None or redirect_uri not in client.redirect_uris:  # exact match
            return _page("Wrong redirect URI", "The redirect URI is not registered.", 400)
        state = params.get("state")
        repeated = sorted(k for k in query if k != "resource" and len(query.getlist(k)) > 1)
        try:
            if repeated:  # RFC 6749 §3.1; resource may repeat (RFC 8707 §2)
                raise OAuthError("invalid_request", f"{repeated[0]} is given more than once")
            sealed = await to_thread.run_sync(
                self._sealed,
                client,
                redirect_uri,
                params,
                check_resources(query.getlist("resource")),
            )
        except OAuthError as exc:
            return self._redirect(redirect_uri, state, error=exc.error, desc=exc.description)
        return _see_other(f"/oauth/consent?request={sealed}")

    def _sealed(
        self, client: Client, redirect_uri: str, params: dict[str, str], resources: list[str]
    ) -> str:
        """The request, checked and sealed for the browser to carry to the consent."""
        if params.get("response_type") != "code":
            raise OAuthError("unsupported_response_type", "response_type must be code")
        method = params.get("code_challenge_method")
        if method != "S256":
            raise OAuthError("invalid_request", "PKCE with code_challenge_method=S256 is required")
        challenge = params.get("code_challenge", "")
        if not _CHALLENGE.match(challenge):
            raise OAuthError("invalid_request", "code_challenge must be a base64url SHA-256")
        scopes = params.get("scope", "").split() or sorted(client.scopes)
        denied = sorted(
            s for s in scopes if s not in client.scopes or s.startswith(RESERVED_PREFIX)
        )
        if denied:  # Tessera's own scopes are never a user's to grant
            raise OAuthError("invalid_scope", f"scope {denied[0]!r} is not allowed")
        actor = params.get("requested_actor") or None
        if actor is not None:
            self._actor(actor)
        pending = Pending(
            client_id=client.client_id,
            redirect_uri=redirect_uri,
            redirect_given="redirect_uri" in params,
            state=params.get("state"),
            scopes=tuple(scopes),
            resources=tuple(resources),
            challenge=challenge,
            actor=actor,
        )
        sealed = self.pending.seal(pending)
        if len(sealed) > MAX_SEALED:  # the consent page's URL could not carry it
            raise OAuthError(
                "invalid_request",
                f"the request is too large to carry to the consent page: signed, its state, "
                f"scope and resource take {len(sealed)} characters, at most {MAX_SEALED}",
            )
        return sealed

    def _actor(self, actor: str) -> Agent:
        """The active agent ``requested_actor`` names, or invalid_request."""
        try:
            agent = Agent.from_scim(actor, self.store.get("Agent", actor).data)
        except NotFound:
            raise OAuthError("invalid_request", "requested_actor is not an agent") from None
        if not agent.active:
            raise OAuthError("invalid_request", "requested_actor is not an active agent")
        return agent

    async def session_user(self, request: Request) -> str | None:
        """The user signed in with this request's session cookie, if any."""
        cookie = request.cookies.get(SESSION_COOKIE, "")
        return await to_thread.run_sync(self.sessions.user, cookie) if cookie else None

    # -- /oauth/login

    async def login(self, request: Request) -> Response:
        """Sign in for a pending authorization (``request``) or to answer the approval
        pages (``return``, a path of theirs)."""
        form = await _form(request) if request.method == "POST" else dict(request.query_params)
        if isinstance(form, Response):
            return form
        request_id = form.get("request", "")
        back = form.get("return", "")
        if not _RETURN.match(back) and await self._open(request_id) is None:
            return _page("Expired", _NOT_PENDING, 400)
        if request.method == "GET":
            return _login_page(request_id, error=None, back=back)
        user_id = await to_thread.run_sync(
            self._check_password, form.get("username", ""), form.get("password", "")
        )
        if user_id is None:
            error = "Wrong user name or password."
            return _login_page(request_id, error=error, status=401, back=back)
        session = await to_thread.run_sync(self.sessions.open, user_id)
        target = back if _RETURN.match(back) else f"/oauth/consent?request={request_id}"
        response = _see_other(target)
        response.set_cookie(
            SESSION_COOKIE,
            session,
            max_age=LIFETIME,
            httponly=True,
            samesite="lax",
            secure=self.secure_cookies,
            path="/oauth",
        )
        return response

    def _check_password(self, username: str, password: str) -> str | None:
        try:
            record = self.store.find("User", "userName", username.casefold())
        except NotFound:
            verify_password(password, _DUMMY_HASH)
            return None
        stored = record.data.get("password")
        if not isinstance(stored, str) or not User.from_scim(record.id, record.data).active:
            verify_password(password, _DUMMY_HASH)
            return None
        return record.id if verify_password(password, stored) else None

    # -- /oauth/consent

    async def consent(self, request: Request) -> Response:
        form = await _form(request) if request.method == "POST" else {}
        if isinstance(form, Response):
            return form
        request_id = form.get("request") or request.query_params.get("request", "")
        pending = await self._open(request_id)
        if pending is None:
            return _page("Expired", _NOT_PENDING, 400)
        user_id = await self.session_user(request)
        if user_id is None:
            return _see_other(f"/oauth/login?request={request_id}")
        session = request.cookies.get(SESSION_COOKIE, "")
        if request.method == "POST":
            if not same_text(form.get("csrf", ""), csrf_token(pending, session)):
                return _page("Refused", "The form is stale or forged; start again.", 400)
            allow = form.get("decision") == "allow"
        else:
            allow = True  # shown no page when every scope was consented to before
        return await to_thread.run_sync(
            self._answered, request_id, pending, user_id, session, request.method == "GET", allow
        )

    async def _open(self, request_id: str) -> Pending | None:
        return await to_thread.run_sync(self.pending.open, request_id)

    def _answered(
        self,
        request_id: str,
        pending: Pending,
        user_id: str,
        session: str,
        may_ask: bool,
        allow: bool,
    ) -> Response:
        """The consent page when it ``may_ask`` and the person has not consented to every
        scope before; else the request answered (``allow`` or not), once."""
        client = self.clients.get(pending.client_id)
        if client is None or pending.redirect_uri not in client.redirect_uris:
            return _page("Unknown client", "This application is not registered here.", 400)
        scopes = list(pending.scopes)
        try:
            agent = self._actor(pending.actor) if pending.actor is not None else None
        except OAuthError as exc:  # suspended or removed since the request
            return self._redirect(
                pending.redirect_uri, pending.state, error=exc.error, desc=exc.description
            )
        consent = self.consents.find(user_id, client.client_id, pending.actor)
        covered = consent is not None and consent.covers(scopes)
        if may_ask and not covered:
            csrf = csrf_token(pending, session)
            return _consent_page(request_id, csrf, client, agent, scopes)
        if not self.pending.answer(pending, user_id):  # one answer per request, anywhere
            return _page("Expired", "This request was answered before; start again.", 400)
        if not allow:
            return self._redirect(
                pending.redirect_uri, pending.state, error="access_denied", desc="the user said no"
            )
        if consent is None or not covered:  # the person allowed on the page
            consent = self.consents.grant(user_id, client.client_id, pending.actor, scopes)
        grant = Grant(
            client_id=client.client_id,
            user_id=user_id,
            scopes=pending.scopes,
            resources=pending.resources,
            actor=pending.actor,
            consent_id=consent.id,
        )
        issued = Issued(grant, pending.redirect_uri, pending.redirect_given, pending.challenge)
        return self._redirect(pending.redirect_uri, pending.state, code=self.codes.issue(issued))

    # -- redemption at the token endpoint

    def redeem(self, code: str, client_id: str, redirect_uri: str | None, verifier: str) -> Grant:
        """The grant of a code, once (RFC 6749 §4.1.3, RFC 7636 §4.6); invalid_grant else,
        :class:`CodeReplayed` for a code redeemed before (by anyone: it leaked)."""
        found = self.codes.take(code)
        if found.grant.client_id != client_id:
            raise OAuthError("invalid_grant", UNKNOWN)
        # RFC 6749 §4.1.3: required, and identical, when the authorization request had it
        if redirect_uri != found.redirect_uri and (
            redirect_uri is not None or found.redirect_given
        ):
            raise OAuthError("invalid_grant", "redirect_uri differs from the authorization's")
        if not _VERIFIER.match(verifier):
            raise OAuthError("invalid_grant", "code_verifier must be 43 to 128 unreserved chars")
        digest = hashlib.sha256(verifier.encode()).digest()
        computed = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
        if not hmac.compare_digest(computed, found.challenge):
            raise OAuthError("invalid_grant", "code_verifier does not match the code_challenge")
        return found.grant

    def _redirect(self, uri: str, state: str | None, **params: str) -> Response:
        values = {k: v for k, v in params.items() if k != "desc"}
        if "error" in values and "desc" in params:
            values["error_description"] = params["desc"]
        if state is not None:
            values["state"] = state
        values["iss"] = self.issuer
        separator = "&" if "?" in uri else "?"
        return _see_other(f"{uri}{separator}{urlencode(values)}")


def check_resources(values: list[str]) -> list[str]:
    """RFC 8707 §2: each resource is an absolute URI without a fragment."""
    for resource in values:
        try:
            parts = urlsplit(resource)
        except ValueError:  # a bracketed host that is no IP address
            parts = urlsplit("")
        if not parts.scheme or not parts.netloc or "#" in resource:
            raise OAuthError(
                "invalid_target", f"resource {resource!r} is not an absolute URI without fragment"
            )
    return values


async def _form(request: Request) -> dict[str, str] | HTMLResponse:
    """A login or consent form, read within the bounds of every OAuth body; or the page
    that tells the person a form too large (413) or too slow (408) was refused."""
    try:
        body = await read_body(request, MAX_BODY)
    except WireError as exc:
        return _page("Refused", f"The form was refused: {exc}.", exc.status)
    return dict(parse_qsl(body.decode(errors="replace"), keep_blank_values=True))


_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem}"
    "input,button{font-size:1rem;padding:.4rem;margin:.2rem 0}label{display:block}"
)


def _html(title: str, body: str, status: int = 200) -> HTMLResponse:
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>"
    )
    return HTMLResponse(page, status, headers={**_UNCACHED, "X-Frame-Options": "DENY"})


# Neither stored nor named in a Referer: the pages' URLs carry the pending request, which
# a Referer would repeat in the head of the next page's request (the head is bounded).
_UNCACHED = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}


def _see_other(location: str) -> RedirectResponse:
    return RedirectResponse(location, 303, headers=_UNCACHED)


def _page(title: str, message: str, status: int) -> HTMLResponse:
    return _html(title, f"<p>{html.escape(message)}</p>", status)


def _login_page(
    request_id: str, error: str | None, status: int = 200, back: str = ""
) -> HTMLResponse:
    notice = f"<p role='alert'>{html.escape(error)}</p>" if error else ""
    body = (
        f"{notice}<form method='post' action='/oauth/login'>"
        f"<input type='hidden' name='request' value='{html.escape(request_id)}'>"
        f"<input type='hidden' name='return' value='{html.escape(back)}'>"
        "<label>User name <input name='username' autocomplete='username' required></label>"
        "<label>Password <input name='password' type='password' "
        "autocomplete='current-password' required></label>"
        "<button type='submit'>Sign in</button></form>"
    )
    return _html("Sign in to Tessera", body, status)


def _consent_page(
    request_id: str, csrf: str, client: Client, agent: Agent | None, scopes: list[str]
) -> HTMLResponse:
    who = f"<strong>{html.escape(client.name or client.client_id)}</strong>"
    if agent is not None:
        name = html.escape(agent.display_name or agent.name or agent.id)
        who += f" and the agent <strong id='agent'>{name}</strong>, acting for you,"
    items = "".join(f"<li>{html.escape(s)}</li>" for s in scopes) or "<li>(none)</li>"
    body = (
        f"<p>{who} would like to:</p><ul id='scopes'>{items}</ul>"
        "<form method='post' action='/oauth/consent'>"
        f"<input type='hidden' name='request' value='{html.escape(request_id)}'>"
        f"<input type='hidden' name='csrf' value='{html.escape(csrf)}'>"
        "<button name='decision' value='allow' type='submit'>Allow</button> "
        "<button name='decision' value='deny' type='submit'>Deny</button></form>"
    )
    return _html("Allow access?", body)
