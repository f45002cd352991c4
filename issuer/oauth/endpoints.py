"""The authorization server's HTTP endpoints.

/.well-known/oauth-authorization-server   metadata (RFC 8414)
/.well-known/openid-configuration         the same metadata, where OpenID clients look
/oauth/jwks                               the signing keys (RFC 7517)
/oauth/token                              client_credentials (RFC 6749 §4.4)
/oauth/introspect                         RFC 7662
/oauth/revoke                             RFC 7009
/oauth/register                           dynamic client registration (RFC 7591),
                                          with an admin bearer token as the initial
                                          access token
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from anyio import to_thread
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from issuer.keys import KeyRing
from issuer.models import AGENT_EXTENSION
from issuer.oauth.client_auth import ClientAuthenticator, SeenAssertions
from issuer.oauth.clients import (
    ASSERTION_ALGORITHMS,
    AUTH_METHODS,
    GRANT_TYPES,
    Client,
    ClientRegistry,
)
from issuer.oauth.errors import OAuthError, json_response
from issuer.oauth.tokens import InvalidToken, TokenMinter, TokenVerifier, ring_lookup
from issuer.scim import ADMIN_SCOPE, Authenticator
from issuer.store import Conflict, NotFound, Store

REVOKED = "RevokedToken"
MULTI_VALUED = frozenset({"resource", "audience"})  # RFC 8707 §2, RFC 8693 §2.1
MAX_FORM = 64 * 1024


@dataclass(frozen=True)
class Paths:
    token: str = "/oauth/token"
    jwks: str = "/oauth/jwks"
    introspect: str = "/oauth/introspect"
    revoke: str = "/oauth/revoke"
    register: str = "/oauth/register"


PATHS = Paths()
METADATA_PATH = "/.well-known/oauth-authorization-server"


class AuthorizationServer:
    """The endpoints over the store, the key ring and the registered clients."""

    def __init__(
        self,
        store: Store,
        keys: KeyRing,
        issuer: str,
        admin: Authenticator,
        token_lifetime: int = 300,
    ) -> None:
        self.store = store
        self.keys = keys
        self.issuer = issuer.rstrip("/")
        self.admin = admin
        self.clients = ClientRegistry(store)
        self.client_auth = ClientAuthenticator(
            self.clients, self.issuer, self.issuer + PATHS.token, SeenAssertions()
        )
        self.minter = TokenMinter(keys, self.issuer, token_lifetime)
        self.verifier = TokenVerifier(ring_lookup(keys), self.issuer)

    # -- metadata and keys

    def metadata(self) -> dict[str, Any]:
        """RFC 8414 §2: what this server supports, exactly."""
        return {
            "issuer": self.issuer,
            "token_endpoint": self.issuer + PATHS.token,
            "jwks_uri": self.issuer + PATHS.jwks,
            "registration_endpoint": self.issuer + PATHS.register,
            "introspection_endpoint": self.issuer + PATHS.introspect,
            "revocation_endpoint": self.issuer + PATHS.revoke,
            "grant_types_supported": list(GRANT_TYPES),
            "response_types_supported": [],
            "token_endpoint_auth_methods_supported": list(AUTH_METHODS),
            "token_endpoint_auth_signing_alg_values_supported": list(ASSERTION_ALGORITHMS),
            "introspection_endpoint_auth_methods_supported": list(AUTH_METHODS),
            "revocation_endpoint_auth_methods_supported": list(AUTH_METHODS),
            "access_token_signing_alg_values_supported": [self.keys.alg],
        }

    async def well_known(self, request: Request) -> Response:
        return json_response(self.metadata(), headers={"Cache-Control": "max-age=300"})

    async def jwks(self, request: Request) -> Response:
        return json_response(self.keys.jwks(), headers={"Cache-Control": "max-age=300"})

    # -- the token endpoint

    async def token(self, request: Request) -> Response:
        form = await _form(request)
        client = await self._client(request, form)
        grant = form.get("grant_type")
        if grant is None:
            raise OAuthError("invalid_request", "grant_type is required")
        if grant not in GRANT_TYPES:
            raise OAuthError("unsupported_grant_type", f"grant_type {grant!r} is not supported")
        if grant not in client.grant_types:
            raise OAuthError("unauthorized_client", f"this client may not use {grant}")
        agent = await to_thread.run_sync(self._active_agent, client.agent_id)
        scope = _scope(form.get("scope"), client.scopes)
        audience = _resources(form) or [self.issuer]
        extension = agent.get(AGENT_EXTENSION) or {}
        issued = self.minter.mint(
            subject=client.agent_id,
            client_id=client.client_id,
            audience=audience,
            scope=scope,
            extra={"agent_id": client.agent_id, "agent_type": extension.get("agentType")},
        )
        body = {
            "access_token": issued.token,
            "token_type": "Bearer",
            "expires_in": issued.expires_in,
            "scope": issued.claims["scope"],
        }
        return json_response(body)

    def _active_agent(self, agent_id: str) -> dict[str, Any]:
        try:
            data = self.store.get("Agent", agent_id).data
        except NotFound:
            raise OAuthError("unauthorized_client", "the client's agent no longer exists") from None
        status = (data.get(AGENT_EXTENSION) or {}).get("status")
        if status != "active":
            raise OAuthError("unauthorized_client", f"the client's agent is {status}")
        return data

    async def _client(self, request: Request, form: dict[str, str]) -> Client:
        authorization = request.headers.get("authorization")
        return await to_thread.run_sync(self.client_auth.authenticate, form, authorization)

    # -- introspection and revocation

    async def introspect(self, request: Request) -> Response:
        form = await _form(request)
        await self._client(request, form)
        token = form.get("token")
        if not token:
            raise OAuthError("invalid_request", "token is required")
        claims = await to_thread.run_sync(self._active_claims, token)
        if claims is None:
            return json_response({"active": False})
        return json_response({"active": True, "token_type": "Bearer", **claims})

    def _active_claims(self, token: str) -> dict[str, Any] | None:
        """RFC 7662 §2.2: active means valid, not revoked, and its agent still active."""
        try:
            claims = self.verifier.verify(token)
        except InvalidToken:
            return None
        try:
            self.store.find(REVOKED, "jti", str(claims["jti"]))
            return None
        except NotFound:
            pass
        agent_id = claims.get("agent_id")
        if isinstance(agent_id, str):
            try:
                agent = self.store.get("Agent", agent_id).data
            except NotFound:
                return None
            if (agent.get(AGENT_EXTENSION) or {}).get("status") != "active":
                return None
        return claims

    async def revoke(self, request: Request) -> Response:
        form = await _form(request)
        client = await self._client(request, form)
        token = form.get("token")
        if not token:
            raise OAuthError("invalid_request", "token is required")
        await to_thread.run_sync(self._revoke, token, client)
        return Response(status_code=200, headers={"Cache-Control": "no-store"})

    def _revoke(self, token: str, client: Client) -> None:
        """RFC 7009 §2.1: only the client the token was issued to may revoke it; an invalid
        or unknown token is not an error (§2.2)."""
        try:
            claims = self.verifier.verify(token)
        except InvalidToken:
            return
        if claims.get("client_id") != client.client_id:
            return
        document = {"jti": claims["jti"], "exp": claims["exp"], "sub": claims["sub"]}
        with contextlib.suppress(Conflict):  # revoked already
            self.store.create(
                REVOKED, document, unique={"jti": str(claims["jti"])}, actor=client.client_id
            )

    # -- registration

    async def register(self, request: Request) -> Response:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        principal = self.admin(token.strip()) if scheme.lower() == "bearer" else None
        if principal is None or ADMIN_SCOPE not in principal.scopes:
            challenge = f'Bearer realm="tessera", scope="{ADMIN_SCOPE}"'
            if principal is not None:
                challenge += ', error="insufficient_scope"'
            elif token:
                challenge += ', error="invalid_token"'
            raise OAuthError(
                "invalid_token",
                "registration needs an admin bearer token",
                401,
                {"WWW-Authenticate": challenge},
            )
        try:
            metadata = await request.json()
        except ValueError:
            raise OAuthError("invalid_client_metadata", "the body is not JSON") from None
        registered = await to_thread.run_sync(self.clients.register, metadata, principal.subject)
        return json_response(registered, 201)

    # -- routing

    def routes(self) -> list[Route]:
        def route(
            path: str, handler: Callable[[Request], Awaitable[Response]], method: str
        ) -> Route:
            return Route(path, _guarded(handler), methods=[method])

        return [
            route(METADATA_PATH, self.well_known, "GET"),
            route("/.well-known/openid-configuration", self.well_known, "GET"),
            route(PATHS.jwks, self.jwks, "GET"),
            route(PATHS.token, self.token, "POST"),
            route(PATHS.introspect, self.introspect, "POST"),
            route(PATHS.revoke, self.revoke, "POST"),
            route(PATHS.register, self.register, "POST"),
        ]


def _guarded(
    handler: Callable[[Request], Awaitable[Response]],
) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        try:
            return await handler(request)
        except OAuthError as exc:
            return exc.response()

    return endpoint


async def _form(request: Request) -> dict[str, str]:
    """An application/x-www-form-urlencoded body; a parameter may appear once (RFC 6749
    §3.2), except the multi-valued ones, which come back space-joined."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        raise OAuthError("invalid_request", "the body must be application/x-www-form-urlencoded")
    body = await request.body()
    if len(body) > MAX_FORM:
        raise OAuthError("invalid_request", f"the body exceeds {MAX_FORM} bytes")
    try:
        pairs = parse_qsl(body.decode(), keep_blank_values=True, strict_parsing=bool(body))
    except (UnicodeDecodeError, ValueError):
        raise OAuthError("invalid_request", "the body is not form-urlencoded") from None
    form: dict[str, str] = {}
    for name, value in pairs:
        if name in form:
            if name not in MULTI_VALUED:
                raise OAuthError("invalid_request", f"{name} is given more than once")
            form[name] += " " + value
        else:
            form[name] = value
    return form


def _scope(requested: str | None, allowed: frozenset[str]) -> list[str]:
    """RFC 6749 §3.3: the requested scopes, all of which the client must be allowed; the
    client's whole scope when none is requested."""
    if requested is None:
        return sorted(allowed)
    wanted = requested.split()
    denied = sorted(set(wanted) - allowed)
    if denied:
        raise OAuthError("invalid_scope", f"scope {denied[0]!r} is not allowed for this client")
    return wanted


def _resources(form: dict[str, str]) -> list[str]:
    """RFC 8707 §2: each resource is an absolute URI without a fragment."""
    resources = form.get("resource", "").split()
    for resource in resources:
        parts = urlsplit(resource)
        if not parts.scheme or not parts.netloc or parts.fragment:
            raise OAuthError(
                "invalid_target", f"resource {resource!r} is not an absolute URI without fragment"
            )
    return resources
