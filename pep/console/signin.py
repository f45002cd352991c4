"""Signing in to the console, and out.

Operators sign in with Tessera's own issuer: the authorization code flow with PKCE (RFC
7636, S256) of a public client the console registers for itself, then the code redeemed
in process. Only a user whose SCIM ``roles`` hold :data:`ADMIN_ROLE`, or who is a member
of the group :data:`ADMIN_GROUP`, gets a session. The bootstrap admin token signs in too,
for the very first operator of a new deployment, before any user exists.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from anyio import to_thread
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from issuer.agents import User, memberships
from issuer.hashing import same_text
from issuer.oauth import clients as oauth_clients
from issuer.oauth.endpoints import AuthorizationServer
from issuer.oauth.errors import OAuthError
from issuer.scim import Principal
from issuer.store import NotFound, Store
from pep.console.render import Renderer
from pep.console.security import read_form, set_session_cookie, signed_in
from pep.console.sessions import COOKIE, Session, Sessions

ADMIN_ROLE = "tessera-admin"
ADMIN_GROUP = "tessera-admins"
CLIENT_NAME = "Tessera console"
LOGIN_COOKIE = "tessera_console_login"  # state, PKCE verifier and where to go, in flight
LOGIN_LIFETIME = 600  # seconds a sign-in may take
CALLBACK = "/console/callback"
_NEXT = re.compile(r"/console(/[A-Za-z0-9/_\-.]*)?")  # where a sign-in may lead: the console


@dataclass(frozen=True)
class Issuer:
    """The issuer the console signs in with, and its own client there."""

    oauth: AuthorizationServer
    client_id: str
    redirect_uri: str
    secure: bool


def console_client(store: Store, oauth: AuthorizationServer, issuer: str) -> Issuer:
    """The console's public client at ``issuer`` (registered on the first start)."""
    redirect_uri = f"{issuer.rstrip('/')}{CALLBACK}"
    for record in store.list(oauth_clients.KIND):
        data = record.data
        if data.get("client_name") == CLIENT_NAME and data.get("redirect_uris") == [redirect_uri]:
            return Issuer(oauth, str(data["client_id"]), redirect_uri, _secure(issuer))
    registered = oauth.clients.register(
        {
            "client_name": CLIENT_NAME,
            "token_endpoint_auth_method": "none",
            "grant_types": ["authorization_code"],
            "redirect_uris": [redirect_uri],
        },
        actor="tessera-console",
    )
    return Issuer(oauth, str(registered["client_id"]), redirect_uri, _secure(issuer))


def _secure(url: str) -> bool:
    return url.startswith("https://")


def is_admin(store: Store, user_id: str) -> User | None:
    """The user, when they may operate the console."""
    try:
        record = store.get("User", user_id)
    except NotFound:
        return None
    groups = memberships(group.data for group in store.list("Group"))
    user = User.from_scim(record.id, record.data, groups.get(record.id, ()))
    if user.active and (ADMIN_ROLE in user.roles or ADMIN_GROUP in user.groups):
        return user
    return None


def _next(value: str) -> str:
    return value if _NEXT.fullmatch(value) else "/console/agents"


class SignIn:
    """The sign-in pages, the code's return, the bootstrap token and signing out."""

    def __init__(self, issuer: Issuer, sessions: Sessions, render: Renderer) -> None:
        self.issuer = issuer
        self.sessions = sessions
        self.render = render

    def routes(self) -> list[Route]:
        return [
            Route("/signin", self.page, methods=["GET"]),
            Route("/signin/start", self.start, methods=["GET"]),
            Route("/signin/token", self.token, methods=["POST"]),
            Route("/callback", self.callback, methods=["GET"]),
            Route("/signout", signed_in(self.sessions, self.signout), methods=["POST"]),
        ]

    async def page(self, request: Request, error: str | None = None, status: int = 200) -> Response:
        """The sign-in page; its token form carries a double-submit token (no session yet)."""
        pre = secrets.token_urlsafe(24)
        nxt = _next(request.query_params.get("next", ""))
        context = {"pre": pre, "next": nxt, "error": error}
        response = self.render(request, "signin.html.j2", context, None, status)
        response.set_cookie(
            LOGIN_COOKIE + "_pre",
            pre,
            max_age=LOGIN_LIFETIME,
            httponly=True,
            samesite="strict",
            secure=self.issuer.secure,
            path="/console",
        )
        return response

    async def start(self, request: Request) -> Response:
        """To the issuer's authorization endpoint, with a fresh state and PKCE challenge."""
        state, verifier = secrets.token_urlsafe(24), secrets.token_urlsafe(48)
        digest = hashlib.sha256(verifier.encode()).digest()
        challenge = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
        query = urlencode(
            {
                "response_type": "code",
                "client_id": self.issuer.client_id,
                "redirect_uri": self.issuer.redirect_uri,
                "code_challenge": challenge,
                "code_challenge_method": "S256",
                "state": state,
            }
        )
        response = RedirectResponse(f"/oauth/authorize?{query}", 303)
        nxt = _next(request.query_params.get("next", ""))
        response.set_cookie(
            LOGIN_COOKIE,
            f"{state} {verifier} {nxt}",
            max_age=LOGIN_LIFETIME,
            httponly=True,
            samesite="lax",  # it must come back with the issuer's redirect
            secure=self.issuer.secure,
            path="/console",
        )
        return response

    async def callback(self, request: Request) -> Response:
        """The issuer's redirect: the state checked, the code redeemed with the verifier,
        the user held to the admin role."""
        state, verifier, nxt = [*request.cookies.get(LOGIN_COOKIE, "").split(" "), "", ""][:3]
        params = request.query_params
        if not state or not same_text(params.get("state", ""), state):
            return await self.page(request, "The sign-in expired or was not yours; again.", 400)
        if "code" not in params:
            return await self.page(request, f"The issuer refused: {params.get('error')}.", 400)
        try:
            grant = await to_thread.run_sync(
                self.issuer.oauth.authorization.redeem,
                params["code"],
                self.issuer.client_id,
                self.issuer.redirect_uri,
                verifier,
            )
        except OAuthError as exc:
            return await self.page(request, f"The code was refused: {exc.description}", 400)
        store = self.issuer.oauth.store
        user = await to_thread.run_sync(is_admin, store, grant.user_id)
        if user is None:
            why = f"Only users with the role {ADMIN_ROLE!r} (or in {ADMIN_GROUP!r}) may."
            return await self.page(request, why, 403)
        name = user.display_name or user.user_name or user.id
        return await self._open(f"user:{user.id}", name, _next(nxt))

    async def token(self, request: Request) -> Response:
        """Sign in with the bootstrap admin token."""
        form = await read_form(request)
        pre = request.cookies.get(LOGIN_COOKIE + "_pre", "")
        if form is None or not pre or not same_text(form.get("pre", ""), pre):
            return Response("the form's token is not this browser's", 403)
        found: Any = await self.issuer.oauth.admin(form.get("token", ""))
        if not isinstance(found, Principal):
            return await self.page(request, "That is not the admin token.", 401)
        return await self._open(found.subject, "bootstrap admin", _next(form.get("next", "")))

    async def _open(self, operator: str, name: str, target: str) -> Response:
        session = await to_thread.run_sync(self.sessions.open, operator, name)
        response = RedirectResponse(target, 303)
        set_session_cookie(response, session, self.issuer.secure)
        response.delete_cookie(LOGIN_COOKIE, path="/console")
        return response

    async def signout(self, request: Request, session: Session) -> Response:
        await to_thread.run_sync(self.sessions.close, session)
        response = RedirectResponse("/console/signin", 303)
        response.delete_cookie(COOKIE, path="/console")
        return response
