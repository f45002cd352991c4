"""A real authorization server on 127.0.0.1 for each store backend, shared by one test module.

The port is bound first, so the issuer URL (``http://127.0.0.1:<port>``) is known before
the :class:`~issuer.oauth.endpoints.AuthorizationServer` is built; then uvicorn serves the
issuer's application (SCIM and OAuth) on that socket, in its own event loop thread.

Tests share the server, so each one makes its own agent and clients
(:meth:`OAuthService.add_agent`, :meth:`OAuthService.secret_client`,
:meth:`OAuthService.key_client`) and never rotates the server's keys.

Use it from a test module as::

    @pytest.fixture(scope="module", params=BACKENDS)
    def oauth(request, tmp_path_factory):
        with oauth_service(request.param, tmp_path_factory.mktemp(request.param)) as service:
            yield service
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import httpx
import jwt
from authlib.integrations.httpx_client import OAuth2Client  # type: ignore[import-untyped]
from authlib.oauth2.rfc7523 import PrivateKeyJWT, private_key_jwt_sign  # type: ignore[import-untyped]
from joserfc import jwk as joserfc_jwk
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm
from starlette.types import ASGIApp

from issuer.app import issuer_app
from issuer.keys import KeyRing, PrivateKey, generate, public_jwk
from issuer.models import AGENT_EXTENSION, AGENT_SCHEMA
from issuer.oauth.endpoints import AuthorizationServer
from issuer.oauth.tokens import KeyLookup, TokenVerifier
from issuer.scim import BootstrapToken
from issuer.store import Store, open_store
from tests.issuer.conftest import TIMEOUT, TOKEN, unique
from tests.servers import HttpServer
from tests.stores import store_url

TOKEN_PATH = "/oauth/token"
ASSERTION_LIFETIME = 60  # seconds; the server accepts at most 300


class _Running(HttpServer):
    """The issuer's application with the authorization server on 127.0.0.1; ``options`` go
    to :class:`AuthorizationServer` (exchange_check, client_cert_header…). Its issuer
    identifier is its own URL unless ``issuer`` names another's (a replica's)."""

    def __init__(
        self,
        store: Store,
        tls: tuple[str, str] | None = None,
        client_ca: str | None = None,
        issuer: str | None = None,
        **options: Any,
    ) -> None:
        def build(port: int) -> ASGIApp:
            self.url = f"https://localhost:{port}" if tls else f"http://127.0.0.1:{port}"
            self.issuer = issuer or self.url
            admin = BootstrapToken(TOKEN)
            self.keys = KeyRing(store)
            self.server = AuthorizationServer(store, self.keys, self.issuer, admin, **options)
            return issuer_app(store, admin, self.server)

        super().__init__(build, tls, client_ca)


# ---------------------------------------------------------------- client keys


_TO_JWK: dict[str, Any] = {"ES256": ECAlgorithm, "RS256": RSAAlgorithm, "EdDSA": OKPAlgorithm}


@dataclass(frozen=True)
class ClientKey:
    """A client's signing key for private_key_jwt: the private key and its public JWK."""

    alg: str
    kid: str
    private: PrivateKey

    @classmethod
    def new(cls, alg: str = "ES256") -> ClientKey:
        return cls(alg, unique("client-key"), generate(alg))

    @property
    def public_jwk(self) -> dict[str, Any]:
        """What the client registers: public members only, with kid, alg and use."""
        return {**public_jwk(self.private.public_key()), "kid": self.kid, "alg": self.alg}

    @property
    def private_jwk(self) -> dict[str, Any]:
        """The whole key as a JWK, private members included (never to be registered)."""
        whole: dict[str, Any] = _TO_JWK[self.alg].to_jwk(self.private, as_dict=True)
        return {**whole, "kid": self.kid, "alg": self.alg}

    def sign(self, claims: dict[str, Any], **header: Any) -> str:
        """A JWT over ``claims`` with this key; ``header`` adds to or replaces its kid (a
        value of None removes the member)."""
        members = {k: v for k, v in {"kid": self.kid, **header}.items() if v is not None}
        return jwt.encode(claims, self.private, algorithm=self.alg, headers=members)


class ShortPrivateKeyJWT(PrivateKeyJWT):  # type: ignore[misc]
    """Authlib's private_key_jwt, with a lifetime this server accepts.

    Authlib signs assertions valid for an hour (``exp = iat + 3600``); the server takes
    at most 300 s, so this signs them for :data:`ASSERTION_LIFETIME` seconds instead.
    """

    def sign(self, auth: Any, token_endpoint: str) -> str:
        assertion: str = private_key_jwt_sign(
            auth.client_secret,
            client_id=auth.client_id,
            token_endpoint=token_endpoint,
            alg=self.alg,
            header=dict(self.headers or {}),
            expires_in=ASSERTION_LIFETIME,
        )
        return assertion


# ---------------------------------------------------------------- the service


@dataclass(frozen=True)
class Registered:
    """A client as registered: its id, how it authenticates, and its credentials."""

    client_id: str
    method: str
    agent_id: str
    scope: str
    secret: str | None = None  # for client_secret_basic and client_secret_post
    key: ClientKey | None = None  # for private_key_jwt
    response: dict[str, Any] = field(default_factory=dict)

    @property
    def basic(self) -> tuple[str, str]:
        """(client_id, secret), for httpx's ``auth=`` (client_secret_basic)."""
        assert self.secret is not None, "not a client_secret client"
        return (self.client_id, self.secret)


@dataclass
class OAuthService:
    """What a test talks to: the issuer URL, the store, the admin token, an HTTP client."""

    backend: str
    issuer: str  # http://127.0.0.1:PORT, exactly as the server says it
    store: Store
    keys: KeyRing  # the server's ring (tests must not rotate it: the server is shared)
    server: AuthorizationServer
    http: httpx.Client  # base_url is the issuer; sends nothing by itself
    token: str = TOKEN  # the admin bearer token registration needs
    url: str = ""  # the store's URL

    @cached_property
    def resource_server(self) -> Registered:
        """A client_secret_basic client that introspects tokens, like a resource server."""
        return self.secret_client(scope="")

    @property
    def token_endpoint(self) -> str:
        return self.issuer + TOKEN_PATH

    # -- the directory

    def add_agent(
        self,
        *,
        agent_type: str = "background",
        status: str = "active",
        risk: str = "low",
        minimum_acr: str | None = None,
    ) -> str:
        """A new agent in the directory (with ``minimumAcr`` when given); its id."""
        name = unique("agent")
        extension = {
            "owner": "finance",
            "riskLevel": risk,
            "agentType": agent_type,
            "status": status,
        }
        if minimum_acr is not None:
            extension["minimumAcr"] = minimum_acr
        document = {
            "schemas": [AGENT_SCHEMA, AGENT_EXTENSION],
            "name": name,
            AGENT_EXTENSION: extension,
        }
        return self.store.create("Agent", document, unique={"name": name}, actor="admin").id

    def set_agent_status(self, agent_id: str, status: str) -> None:
        record = self.store.get("Agent", agent_id)
        data = {**record.data, AGENT_EXTENSION: {**record.data[AGENT_EXTENSION], "status": status}}
        self.store.replace(
            "Agent",
            agent_id,
            data,
            unique={"name": data["name"]},
            expected_version=record.version,
            actor="admin",
        )

    # -- registration

    def register(self, metadata: Any, token: str | None = TOKEN) -> httpx.Response:
        """POST /oauth/register with ``token`` as the bearer token (None: no header)."""
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        return self.http.post("/oauth/register", json=metadata, headers=headers)

    def _registered(self, metadata: dict[str, Any], key: ClientKey | None = None) -> Registered:
        response = self.register(metadata)
        assert response.status_code == 201, response.text
        body: dict[str, Any] = response.json()
        return Registered(
            client_id=body["client_id"],
            method=body["token_endpoint_auth_method"],
            agent_id=body["agent_id"],
            scope=body["scope"],
            secret=body.get("client_secret"),
            key=key,
            response=body,
        )

    def secret_client(
        self,
        method: str = "client_secret_basic",
        *,
        scope: str = "read write",
        agent_id: str | None = None,
    ) -> Registered:
        """A registered client_secret_basic or client_secret_post client (and, unless
        given, a new active agent for it)."""
        metadata = {
            "agent_id": agent_id or self.add_agent(),
            "token_endpoint_auth_method": method,
            "grant_types": ["client_credentials"],
            "scope": scope,
            "client_name": unique("client"),
        }
        return self._registered(metadata)

    def key_client(
        self,
        key: ClientKey | None = None,
        *,
        scope: str = "read write",
        agent_id: str | None = None,
    ) -> Registered:
        """A registered private_key_jwt client with ``key`` (a new ES256 key by default)."""
        key = key or ClientKey.new()
        metadata = {
            "agent_id": agent_id or self.add_agent(),
            "token_endpoint_auth_method": "private_key_jwt",
            "grant_types": ["client_credentials"],
            "scope": scope,
            "jwks": {"keys": [key.public_jwk]},
        }
        return self._registered(metadata, key)

    # -- Authlib, as a client of this server would use it

    def authlib(self, client: Registered, **kwargs: Any) -> OAuth2Client:
        """Authlib's OAuth 2 client (httpx), authenticating as ``client`` registered."""
        if client.key is not None:
            auth = ShortPrivateKeyJWT(
                self.token_endpoint, headers={"kid": client.key.kid}, alg=client.key.alg
            )
            secret: Any = joserfc_jwk.import_key(client.key.private_jwk)
            return OAuth2Client(
                client.client_id,
                secret,
                token_endpoint_auth_method=auth,
                timeout=TIMEOUT,
                **kwargs,
            )
        return OAuth2Client(
            client.client_id,
            client.secret,
            token_endpoint_auth_method=client.method,
            timeout=TIMEOUT,
            **kwargs,
        )

    # -- assertions, introspection, verification

    def assertion_claims(self, client: Registered, **claims: Any) -> dict[str, Any]:
        """The claims of a valid private_key_jwt assertion for ``client``: iss = sub = its
        id, aud the token endpoint, a fresh jti, a one-minute lifetime. ``claims`` replace
        these (a value of None removes the claim)."""
        now = int(time.time())
        defaults: dict[str, Any] = {
            "iss": client.client_id,
            "sub": client.client_id,
            "aud": self.token_endpoint,
            "iat": now,
            "exp": now + ASSERTION_LIFETIME,
            "jti": uuid.uuid4().hex,
        }
        return {k: v for k, v in {**defaults, **claims}.items() if v is not None}

    def assertion(self, client: Registered, **claims: Any) -> str:
        """:meth:`assertion_claims`, signed with the client's own key."""
        assert client.key is not None, "not a private_key_jwt client"
        return client.key.sign(self.assertion_claims(client, **claims))

    def introspect(self, token: str, client: Registered | None = None) -> dict[str, Any]:
        """The introspection response for ``token``, asked by ``client`` (by default the
        resource server)."""
        response = self.http.post(
            "/oauth/introspect",
            data={"token": token},
            auth=(client or self.resource_server).basic,
        )
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def published_keys(self) -> KeyLookup:
        """A key lookup built from GET /oauth/jwks, as a resource server would build it."""
        response = self.http.get("/oauth/jwks")
        assert response.status_code == 200, response.text
        keys = {
            member["kid"]: (member["alg"], jwt.PyJWK(member).key)
            for member in response.json()["keys"]
        }
        return keys.get

    def verifier(self, audience: str | None = None) -> TokenVerifier:
        """A verifier of this issuer's access tokens, from its published JWKS."""
        return TokenVerifier(self.published_keys(), self.issuer, audience)


@contextmanager
def oauth_service(
    backend: str, tmp_path: Path, http_options: dict[str, Any] | None = None, **server: Any
) -> Iterator[OAuthService]:
    """The issuer with its authorization server, on a fresh store of ``backend``;
    ``server`` options go to the server (tls, client_ca, client_cert_header),
    ``http_options`` to the test's httpx client (verify, cert)."""
    with store_url(backend, tmp_path) as url:
        store = open_store(url)
        try:
            running = _Running(store, **server)
            try:
                options = {"timeout": TIMEOUT, **(http_options or {})}
                with httpx.Client(base_url=running.url, **options) as http:
                    yield OAuthService(
                        backend, running.issuer, store, running.keys, running.server, http, url=url
                    )
            finally:
                running.close()
        finally:
            store.close()
