"""The authorization server's HTTP endpoints.

/.well-known/oauth-authorization-server   metadata (RFC 8414)
/.well-known/openid-configuration         the same metadata, where OpenID clients look
/oauth/jwks                               the signing keys (RFC 7517)
/oauth/token                              client_credentials (RFC 6749 §4.4) and the
                                          other grants (issuer.oauth.grants, .ciba)
/oauth/bc-authorize                       backchannel authentication (OpenID CIBA §7)
/oauth/approvals                          a person's requests to approve (CIBA §8)
/oauth/introspect                         RFC 7662
/oauth/revoke                             RFC 7009
/oauth/register                           dynamic client registration (RFC 7591),
                                          with an admin bearer token as the initial
                                          access token
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from anyio import to_thread
from cryptography import x509
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from issuer import strength
from issuer.agents import Agent
from issuer.keys import KeyRing
from issuer.oauth import inline, revocation
from issuer.oauth.api_keys import API_KEY_TOKEN_TYPE, ApiKeys
from issuer.oauth.approvals import APPROVALS, ApprovalPages
from issuer.oauth.authorization_details import PAYMENT, check_types
from issuer.oauth.authorize import AuthorizationEndpoint
from issuer.oauth.bodies import read_document, read_form
from issuer.oauth.ciba import Backchannel, Clock, HumanHook
from issuer.oauth.client_auth import ClientAuthenticator, SeenAssertions
from issuer.oauth.clients import (
    ASSERTION_ALGORITHMS,
    AUTH_METHODS,
    CIBA,
    DELIVERY_MODES,
    GRANT_TYPES,
    TOKEN_EXCHANGE,
    Client,
    ClientRegistry,
)
from issuer.oauth.consent import Consents
from issuer.oauth.errors import OAuthError, json_response
from issuer.oauth.fetch import reach_of
from issuer.oauth.grants import AgentLookup, ExchangeCheck, Grants, refuse_all
from issuer.oauth.metadata_documents import MetadataDocuments
from issuer.oauth.mtls import TRUSTED_PROXIES, certificate_from, confirmation
from issuer.oauth.ping import Notifier
from issuer.oauth.tokens import (
    InvalidToken,
    IssuedHook,
    TokenMinter,
    TokenVerifier,
    ring_lookup,
)
from issuer.scim import ADMIN_SCOPE, Authenticator, Principal, bearer_token
from issuer.store import NotFound, Store, Unstorable
from issuer.verify import MISSING, Memory, Refusal, Verifier, agent_statuses, revocations


@dataclass(frozen=True)
class Paths:
    token: str = "/oauth/token"
    jwks: str = "/oauth/jwks"
    introspect: str = "/oauth/introspect"
    revoke: str = "/oauth/revoke"
    register: str = "/oauth/register"
    authorize: str = "/oauth/authorize"
    login: str = "/oauth/login"
    consent: str = "/oauth/consent"
    consents: str = "/oauth/consents"
    api_keys: str = "/oauth/api-keys"
    bc_authorize: str = "/oauth/bc-authorize"
    approvals: str = APPROVALS


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
        exchange_check: ExchangeCheck = refuse_all,
        client_cert_header: str | None = None,
        agents: AgentLookup | None = None,
        client_cert_proxies: frozenset[str] = TRUSTED_PROXIES,
        on_issue: IssuedHook | None = None,
        on_human: HumanHook | None = None,
        clock: Clock = time.time,
        authorization_details_types: tuple[str, ...] = (PAYMENT,),
    ) -> None:
        self.store = store
        self.authorization_details_types = authorization_details_types
        self.client_cert_header = client_cert_header
        self.client_cert_proxies = client_cert_proxies
        self.keys = keys
        self.issuer = issuer.rstrip("/")
        self.admin = admin
        reach = reach_of(self.issuer)  # plain-http loopback URLs for a development issuer
        self.clients = ClientRegistry(store, MetadataDocuments(reach), reach)
        audiences = [self.issuer] + [
            self.issuer + path
            for path in (PATHS.token, PATHS.introspect, PATHS.revoke, PATHS.bc_authorize)
        ]
        self.client_auth = ClientAuthenticator(self.clients, audiences, SeenAssertions())
        self.minter = TokenMinter(keys, self.issuer, token_lifetime, on_issue)
        self.verifier = TokenVerifier(ring_lookup(keys), self.issuer)
        self.consents = Consents(store)
        self.api_keys = ApiKeys(store)
        self._administrators = self.administrators([self.issuer])
        self.authorization = AuthorizationEndpoint(
            store,
            keys,
            self.clients,
            self.consents,
            self.issuer,
            secure_cookies=self.issuer.startswith("https://"),
        )
        self.grants = Grants(
            store, self.minter, self.verifier, self.authorization, exchange_check, agents
        )
        self.backchannel = Backchannel(store, self.grants, clock, on_human)
        self.notifier = Notifier(reach=reach)
        self.approvals = ApprovalPages(self.backchannel, self.authorization, self.notifier)

    # -- metadata and keys

    def metadata(self) -> dict[str, Any]:
        """RFC 8414 §2: what this server supports, exactly. The endpoints take mutual TLS
        where they are (the certificate is optional at the TLS level), so there are no
        ``mtls_endpoint_aliases`` (RFC 8705 §5); tokens of mutual-TLS clients are bound
        to their certificate (§3.3)."""
        assertion_algorithms = list(ASSERTION_ALGORITHMS)
        return {
            "issuer": self.issuer,
            "authorization_endpoint": self.issuer + PATHS.authorize,
            "token_endpoint": self.issuer + PATHS.token,
            "jwks_uri": self.issuer + PATHS.jwks,
            "registration_endpoint": self.issuer + PATHS.register,
            "introspection_endpoint": self.issuer + PATHS.introspect,
            "revocation_endpoint": self.issuer + PATHS.revoke,
            "grant_types_supported": list(GRANT_TYPES),
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "code_challenge_methods_supported": ["S256"],
            "authorization_response_iss_parameter_supported": True,
            "client_id_metadata_document_supported": True,
            "token_endpoint_auth_methods_supported": list(AUTH_METHODS),
            "token_endpoint_auth_signing_alg_values_supported": assertion_algorithms,
            "introspection_endpoint_auth_methods_supported": [
                m for m in AUTH_METHODS if m != "none"
            ],
            # §2: present whenever private_key_jwt is among an endpoint's methods
            "introspection_endpoint_auth_signing_alg_values_supported": assertion_algorithms,
            "revocation_endpoint_auth_methods_supported": list(AUTH_METHODS),
            "revocation_endpoint_auth_signing_alg_values_supported": assertion_algorithms,
            "tls_client_certificate_bound_access_tokens": True,
            "access_token_signing_alg_values_supported": self._signing_algorithms(),
            # OpenID CIBA §4: poll and ping, no user_code, no signed requests
            "backchannel_authentication_endpoint": self.issuer + PATHS.bc_authorize,
            "backchannel_token_delivery_modes_supported": list(DELIVERY_MODES),
            "backchannel_user_code_parameter_supported": False,
            "authorization_details_types_supported": list(self.authorization_details_types),
        }

    def _signing_algorithms(self) -> list[str]:
        """The algorithms of the published keys: after a rotation to another algorithm,
        tokens of the previous key still verify until they expire."""
        return sorted({str(jwk["alg"]) for jwk in self.keys.jwks()["keys"]})

    async def well_known(self, request: Request) -> Response:
        return json_response(self.metadata(), headers={"Cache-Control": "max-age=300"})

    async def jwks(self, request: Request) -> Response:
        return json_response(self.keys.jwks(), headers={"Cache-Control": "max-age=300"})

    # -- the token endpoint

    async def token(self, request: Request) -> Response:
        form = await read_form(request)
        check_types(form, self.authorization_details_types)
        if (
            form.get("grant_type") == TOKEN_EXCHANGE
            and form.get("subject_token_type") == API_KEY_TOKEN_TYPE
        ):
            body = await to_thread.run_sync(self.grants.api_key, form, self.api_keys)
            return json_response(body)
        client = await self._client(request, form)
        grant = form.get("grant_type")
        if grant is None:
            raise OAuthError("invalid_request", "grant_type is required")
        if grant not in GRANT_TYPES:
            raise OAuthError("unsupported_grant_type", f"grant_type {grant!r} is not supported")
        if grant not in client.grant_types:
            raise OAuthError("unauthorized_client", f"this client may not use {grant}")
        certificate = self._certificate(request)
        bound = await inline.run(self.client_auth.certificate_bound, client, certificate)
        bound_to = confirmation(certificate) if bound and certificate is not None else None
        presented = confirmation(certificate) if certificate is not None else None
        factor = await inline.run(self.client_auth.certificate_factor, client, certificate, form)
        amr = strength.amr_for(client.auth_method, factor)
        if grant == "client_credentials":  # no side effect before its one possible read
            body = await inline.run(
                self.grants.issue, grant, client, form, bound_to, presented, amr
            )
        elif grant == CIBA:
            body = await to_thread.run_sync(self.backchannel.redeem, client, form, bound_to, amr)
        else:
            body = await to_thread.run_sync(
                self.grants.issue, grant, client, form, bound_to, presented, amr
            )
        return json_response(body)

    def _certificate(self, request: Request) -> x509.Certificate | None:
        return certificate_from(
            request.scope, request.headers, self.client_cert_header, self.client_cert_proxies
        )

    async def _client(self, request: Request, form: dict[str, str]) -> Client:
        authorization = request.headers.get("authorization")
        certificate = self._certificate(request)
        # I/O (a client not yet cached, a key set to fetch) comes before the one side
        # effect, recording an assertion's jti: inline first, a thread when it must read.
        return await inline.run(self.client_auth.authenticate, form, authorization, certificate)

    # -- backchannel authentication (OpenID CIBA)

    async def bc_authorize(self, request: Request) -> Response:
        """CIBA §7: an authenticated client (never a public one) asks a person's approval."""
        form = await read_form(request)
        client = await self._client(request, form)
        if client.auth_method == "none":
            raise OAuthError("invalid_client", "CIBA clients authenticate (§7.1)", 401)
        check_types(form, self.authorization_details_types)
        certificate = self._certificate(request)
        factor = await inline.run(self.client_auth.certificate_factor, client, certificate, form)
        amr = strength.amr_for(client.auth_method, factor)
        body = await to_thread.run_sync(self.backchannel.start, client, form, amr)
        return json_response(body)

    # -- introspection and revocation

    async def introspect(self, request: Request) -> Response:
        form = await read_form(request)
        client = await self._client(request, form)
        if client.auth_method == "none":  # RFC 7662 §2.1: protected resources authenticate
            raise OAuthError("invalid_client", "a public client may not introspect", 401)
        token = form.get("token")
        if not token:
            raise OAuthError("invalid_request", "token is required")
        claims = await to_thread.run_sync(self._active_claims, token)
        if claims is None:
            return json_response({"active": False})
        return json_response({"active": True, "token_type": "Bearer", **claims})

    def _active_claims(self, token: str) -> dict[str, Any] | None:
        """RFC 7662 §2.2: active means valid, not revoked, and its agent still active.

        Not :class:`issuer.verify.Verifier`, which checks a token for one resource server:
        introspection answers for every audience and every holder (a user's own token, a
        delegated one, one bound to a certificate), and the resource server that asks
        checks the audience, the caller and the binding itself (RFC 7662 §4)."""
        try:
            claims = self.verifier.verify(token)
        except InvalidToken:
            return None
        if revocation.revoked(self.store, claims):  # itself, or what it came from
            return None
        agent_id = claims.get("agent_id")
        if isinstance(agent_id, str):
            try:
                agent = Agent.from_scim(agent_id, self.store.get("Agent", agent_id).data)
            except NotFound:
                return None
            if not agent.active:
                return None
        return claims

    def administrators(self, audiences: list[str]) -> Authenticator:
        """Who may administer: the bootstrap token, or an access token from this issuer
        for one of ``audiences``, checked by :class:`issuer.verify.Verifier`: not revoked,
        its agent active in the directory, the agent acting alone (no user, no delegation)
        and not bound to a certificate (none is seen here). Its scopes say what it may do
        (``tessera:admin``)."""
        bootstrap = self.admin
        verifier = Verifier(
            ring_lookup(self.keys),
            self.issuer,
            audiences,
            revoked=revocations(self.store),
            agent_status=agent_statuses(self.store),
            alone=True,
            # a token's signature is checked once; revocation and status on every call
            memory=Memory(recheck=0.0),
        )

        async def authenticate(token: str) -> Principal | Refusal:
            principal = await bootstrap(token)
            if isinstance(principal, Principal):
                return principal
            found = await verifier.verify(token)
            return found if isinstance(found, Refusal) else Principal(found.agent, found.scopes)

        return authenticate

    async def revoke(self, request: Request) -> Response:
        form = await read_form(request)
        client = await self._client(request, form)
        token = form.get("token")
        if not token:
            raise OAuthError("invalid_request", "token is required")
        await to_thread.run_sync(self._revoke, token, client)
        return Response(status_code=200, headers={"Cache-Control": "no-store"})

    def _revoke(self, token: str, client: Client) -> None:
        """RFC 7009 §2.1: only the client the token was issued to may revoke it; an invalid
        or unknown token is not an error (§2.2). Revoking an access token revokes the
        tokens exchanged from it (RFC 8693), which name it in their lineage; revoking a
        refresh token revokes its family and the access tokens it gave."""
        try:
            claims = self.verifier.verify(token)
        except InvalidToken:  # perhaps a refresh token: revoking one revokes its family
            self.grants.revoke_refresh_token(token, client.client_id)
            return
        if claims.get("client_id") != client.client_id:
            raise OAuthError("unauthorized_client", "the token was issued to another client")
        revocation.revoke(
            self.store,
            str(claims["jti"]),
            subject=str(claims["sub"]),
            exp=claims["exp"],
            lifetime=self.minter.lifetime,
            actor=client.client_id,
        )

    # -- registration

    async def register(self, request: Request) -> Response:
        """RFC 7591. With an admin bearer token, any client; without a token, public
        user-facing applications only (open registration, as MCP clients do it)."""
        actor = await self._administrator(request) if "authorization" in request.headers else None
        metadata = await read_document(request, not_json="invalid_client_metadata")
        try:
            registered = await to_thread.run_sync(self.clients.register, metadata, actor)
        except Unstorable as exc:  # RFC 7591 §3.2.2: a metadata value the server refuses
            raise OAuthError("invalid_client_metadata", str(exc)) from None
        return json_response(registered, 201)

    async def _administrator(self, request: Request) -> str:
        """The subject of the admin bearer token on the request, or 401/403."""
        header = request.headers.get("authorization", "")
        token = bearer_token(header)
        found = await self._administrators(token) if token is not None else MISSING
        if isinstance(found, Principal) and ADMIN_SCOPE in found.scopes:
            return found.subject
        # without a token the challenge names no error (RFC 6750 §3.1), the body still does
        if isinstance(found, Refusal):
            error, status = found.error or "invalid_token", found.status
        else:
            error, status = "insufficient_scope", 403
        challenge = f'Bearer realm="tessera", scope="{ADMIN_SCOPE}"'
        if header:
            challenge += f', error="{error}"'
        raise OAuthError(
            error, "an admin bearer token is required", status, {"WWW-Authenticate": challenge}
        )

    # -- API keys (administrators)

    async def api_keys_endpoint(self, request: Request) -> Response:
        """POST: a new key (shown once); GET: the keys (``?agent_id=`` filters);
        DELETE /oauth/api-keys/ID: revoke."""
        actor = await self._administrator(request)
        if request.method == "POST":
            body = await read_document(request)
            created = await to_thread.run_sync(self.api_keys.create, body, actor)
            return json_response(created, 201)
        if request.method == "DELETE":
            key_id = request.path_params["id"]
            if not await to_thread.run_sync(self.api_keys.revoke, key_id, actor):
                raise OAuthError("invalid_request", f"no API key {key_id!r}", 404)
            return Response(status_code=204)
        agent_id = request.query_params.get("agent_id")
        keys = await to_thread.run_sync(self.api_keys.of_agent, agent_id)
        return json_response({"api_keys": [key.listing() for key in keys]})

    # -- a user's consents

    async def my_consents(self, request: Request) -> Response:
        """The signed-in user's consents (GET), or one revoked (DELETE /oauth/consents/ID)."""
        user_id = await self.authorization.session_user(request)
        if user_id is None:
            raise OAuthError("login_required", "sign in at /oauth/login first", 401)
        if request.method == "DELETE":
            consent_id = request.path_params["id"]
            consent = await to_thread.run_sync(self.consents.mine, consent_id, user_id)
            if consent is None:
                raise OAuthError("invalid_request", f"you have no consent {consent_id!r}", 404)
            # What the consent allowed stops first (the tokens given under it, and those
            # exchanged from them), then the consent goes: a failure between the two
            # leaves it listed, to withdraw again.
            await to_thread.run_sync(self.grants.consent_withdrawn, consent, user_id)
            await to_thread.run_sync(self.consents.revoke, consent_id, user_id, user_id)
            return Response(status_code=204)
        found = await to_thread.run_sync(self.consents.of_user, user_id)
        listing = [
            {
                "id": c.id,
                "client_id": c.client_id,
                "agent_id": c.agent_id,
                "scopes": sorted(c.scopes),
            }
            for c in found
        ]
        return json_response({"consents": listing})

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
            route(PATHS.bc_authorize, self.bc_authorize, "POST"),
            route(PATHS.approvals, self.approvals.listing, "GET"),
            Route(
                PATHS.approvals + "/{id}",
                _guarded(self.approvals.approval),
                methods=["GET", "POST"],
            ),
            Route(PATHS.api_keys, _guarded(self.api_keys_endpoint), methods=["GET", "POST"]),
            route(PATHS.api_keys + "/{id}", self.api_keys_endpoint, "DELETE"),
            route(PATHS.consents, self.my_consents, "GET"),
            route(PATHS.consents + "/{id}", self.my_consents, "DELETE"),
            Route(PATHS.authorize, _guarded(self.authorization.authorize), methods=["GET"]),
            Route(PATHS.login, _guarded(self.authorization.login), methods=["GET", "POST"]),
            Route(PATHS.consent, _guarded(self.authorization.consent), methods=["GET", "POST"]),
        ]


def _guarded(
    handler: Callable[[Request], Awaitable[Response]],
) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        try:
            return await handler(request)
        except OAuthError as exc:
            return exc.response()
        except Unstorable as exc:  # a value no store holds (a NUL character…)
            return OAuthError("invalid_request", str(exc)).response()

    return endpoint
