"""The proxy as an OAuth 2.1 resource server: who is calling, per the MCP authorization
specification.

Tokens come only from the ``Authorization: Bearer`` header (OAuth 2.1 §5.2; never the
query string). A JWT (RFC 9068) is checked for its signature by a key of the issuer's JWKS
with an allowed algorithm, ``typ``, ``iss``, ``aud`` (the upstream's canonical resource
URI, RFC 8707), ``exp``, ``nbf`` and ``iat`` (:class:`issuer.oauth.tokens.TokenVerifier`).
The JWKS is fetched once, kept, and fetched again when a token names a ``kid`` it does
not hold (at most once a second). Anything else is an opaque token, asked about at the
issuer's introspection endpoint (RFC 7662), or, where configured, a Tessera API key
traded for an access token for this resource.

The caller is then the agent and the user it acts for: ``act`` (RFC 8693 delegation)
names the agent acting for ``sub``; a token whose ``agent_id`` is its ``sub`` is an agent
acting alone; a user's token with ``may_act`` acts through the agent it names.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
from cachetools import TTLCache

from issuer.keys import PublicKey
from issuer.oauth.tokens import InvalidToken, TokenVerifier

API_KEY_PREFIX = "tsk_"
API_KEY_TYPE = "urn:tessera:params:oauth:token-type:api-key"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
REFRESH_INTERVAL = 1.0  # seconds between JWKS fetches for unknown kids
CACHE_SIZE = 10_000


class Unauthorized(Exception):
    """No usable token: answered 401 ``invalid_token`` (or a bare challenge)."""

    def __init__(self, description: str | None) -> None:
        super().__init__(description or "no access token")
        self.description = description


@dataclass(frozen=True)
class Caller:
    """Who calls, from a verified token."""

    agent: str
    user: str | None
    chain: tuple[str, ...]
    scopes: frozenset[str]
    client_id: str
    subject: str
    expires: float
    jti: str = ""

    @property
    def key(self) -> str:
        """The principal a session belongs to."""
        return f"{self.agent}|{self.user or ''}"


def caller_from_claims(claims: Mapping[str, Any]) -> Caller:
    """The agent and user a token's claims name, or :class:`Unauthorized`."""
    if "cnf" in claims:  # RFC 8705 §3: only with its certificate, which no proxy sees
        raise Unauthorized("a certificate-bound token is not accepted here")
    subject = str(claims.get("sub", ""))
    scopes = frozenset(str(claims.get("scope", "")).split())
    client_id = str(claims.get("client_id", ""))
    expires = float(claims.get("exp", 0))
    jti = str(claims.get("jti", ""))
    act = claims.get("act")
    if isinstance(act, dict):
        chain = []
        while isinstance(act, dict) and isinstance(act.get("sub"), str):
            chain.append(act["sub"])
            act = act.get("act")
        return Caller(chain[0], subject, tuple(chain), scopes, client_id, subject, expires, jti)
    if claims.get("agent_id") == subject and subject:
        return Caller(subject, None, (), scopes, client_id, subject, expires, jti)
    if "may_act" in claims:  # its holder may be any client the user signed in to
        raise Unauthorized("a user's token must be exchanged by its agent first (RFC 8693)")
    raise Unauthorized("the token names no agent (no act and no agent_id)")


class Jwks:
    """The issuer's signing keys, fetched when needed and kept."""

    def __init__(self, uri: str, http: httpx.AsyncClient, algorithms: tuple[str, ...]) -> None:
        self.uri = uri
        self.http = http
        self.algorithms = frozenset(algorithms)
        self.keys: dict[str, tuple[str, PublicKey]] = {}
        self._fetched = 0.0
        self._lock = asyncio.Lock()

    def lookup(self, kid: str) -> tuple[str, PublicKey] | None:
        return self.keys.get(kid)

    async def refresh(self) -> None:
        """Fetch the key set again, unless it was fetched within the last second."""
        async with self._lock:
            if time.monotonic() - self._fetched < REFRESH_INTERVAL:
                return
            self._fetched = time.monotonic()
            try:
                response = await self.http.get(self.uri)
                response.raise_for_status()
                members = response.json()["keys"]
            except (httpx.HTTPError, ValueError, KeyError, TypeError):
                return  # keep the keys we have; the token is refused as unknown
            keys = {}
            for member in members:
                alg = member.get("alg") if isinstance(member, dict) else None
                kid = member.get("kid") if isinstance(member, dict) else None
                if alg not in self.algorithms or not isinstance(kid, str):
                    continue  # an algorithm outside the allowlist never verifies
                try:
                    keys[kid] = (alg, jwt.PyJWK(member).key)
                except (jwt.PyJWKError, jwt.InvalidKeyError):
                    continue
            self.keys = keys


class ResourceServer:
    """Verifies bearer tokens for each upstream's resource URI."""

    def __init__(
        self,
        issuer: str,
        jwks: Jwks,
        http: httpx.AsyncClient,
        client: tuple[str, str] | None = None,
        api_keys: bool = False,
        revoked: Callable[[str], bool] | None = None,
        keep: float = 60.0,
    ) -> None:
        self.issuer = issuer
        self.jwks = jwks
        self.http = http
        self.client = client
        self.api_keys = api_keys
        # with the store's revocations at hand (local decisions), a revoked JWT is
        # refused at once, kept or not; else, with a client to introspect as, the issuer
        # is asked each time a JWT is verified (once per ``keep`` seconds)
        self.revoked = revoked
        self._verifiers: dict[str, TokenVerifier] = {}
        # verified tokens by (resource, token): the hot path verifies a signature once
        self._seen: TTLCache[tuple[str, str], Caller] = TTLCache(CACHE_SIZE, keep)

    def _verifier(self, resource: str) -> TokenVerifier:
        verifier = self._verifiers.get(resource)
        if verifier is None:
            verifier = TokenVerifier(self.jwks.lookup, self.issuer, resource, leeway=5.0)
            self._verifiers[resource] = verifier
        return verifier

    async def authenticate(self, authorization: str | None, resource: str) -> Caller:
        """The caller for this resource, or :class:`Unauthorized`."""
        if authorization is None:
            raise Unauthorized(None)
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized(None)
        seen = self._seen.get((resource, token))
        if seen is not None and seen.expires > time.time():
            return self._unrevoked(seen)
        if token.startswith(API_KEY_PREFIX):
            claims = await self._api_key(token, resource)
        elif token.count(".") == 2:
            claims = await self._jwt(token, resource)
            if self.revoked is None and self.client is not None:
                await self._introspect(token, resource)  # revoked, or its agent stopped
        else:
            claims = await self._introspect(token, resource)
        caller = caller_from_claims(claims)
        if token.count(".") == 2 and not token.startswith(API_KEY_PREFIX):
            # a JWT is kept until it expires (at most ``keep`` seconds); opaque tokens and
            # API keys are asked about every time, so their revocation takes effect at once
            self._seen[(resource, token)] = caller
        return self._unrevoked(caller)

    def _unrevoked(self, caller: Caller) -> Caller:
        if self.revoked is not None and caller.jti and self.revoked(caller.jti):
            raise Unauthorized("the token was revoked")
        return caller

    async def _jwt(self, token: str, resource: str) -> dict[str, Any]:
        verifier = self._verifier(resource)
        try:
            return verifier.verify(token)
        except InvalidToken as exc:
            if not str(exc).startswith("unknown kid"):
                raise Unauthorized(str(exc)) from None
        await self.jwks.refresh()
        try:
            return verifier.verify(token)
        except InvalidToken as exc:
            raise Unauthorized(str(exc)) from None

    async def _introspect(self, token: str, resource: str) -> dict[str, Any]:
        """RFC 7662, authenticated as the proxy's own client."""
        if self.client is None:
            raise Unauthorized("opaque tokens need introspection (set mcp_proxy.client_id)")
        try:
            response = await self.http.post(
                f"{self.issuer}/oauth/introspect", data={"token": token}, auth=self.client
            )
            response.raise_for_status()
            claims = response.json()
        except (httpx.HTTPError, ValueError):
            raise Unauthorized("the token could not be introspected") from None
        if not isinstance(claims, dict) or claims.get("active") is not True:
            raise Unauthorized("the token is not active")
        if claims.get("iss") != self.issuer:
            raise Unauthorized("the token is from another issuer")
        aud = claims.get("aud")
        if resource not in (aud if isinstance(aud, list) else [aud]):
            raise Unauthorized(f"the token's audience does not include {resource!r}")
        return claims

    async def _api_key(self, token: str, resource: str) -> dict[str, Any]:
        """A Tessera API key, traded at the issuer for an access token for this resource
        (the issuer checks the key, the agent's risk and status)."""
        if not self.api_keys:
            raise Unauthorized("API keys are not accepted here")
        form = {
            "grant_type": TOKEN_EXCHANGE,
            "subject_token": token,
            "subject_token_type": API_KEY_TYPE,
            "resource": resource,
        }
        try:
            response = await self.http.post(f"{self.issuer}/oauth/token", data=form)
            body = response.json()
        except (httpx.HTTPError, ValueError):
            raise Unauthorized("the API key could not be checked") from None
        if response.status_code != 200 or not isinstance(body, dict):
            raise Unauthorized("the API key is not valid here")
        return await self._jwt(str(body.get("access_token", "")), resource)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
