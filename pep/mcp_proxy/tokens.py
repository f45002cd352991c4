"""The proxy as an OAuth 2.1 resource server: who is calling, per the MCP authorization
specification.

Tokens come only from the ``Authorization: Bearer`` header (OAuth 2.1 §5.2; never the
query string) and are checked by :class:`issuer.verify.Verifier`, one per upstream. A JWT
(RFC 9068) is checked for its signature by a key of the issuer's JWKS with an allowed
algorithm, ``typ``, ``iss``, ``aud`` (the upstream's canonical resource URI, RFC 8707),
``exp``, ``nbf`` and ``iat``, with 5 s of leeway. The JWKS is fetched once, kept, and
fetched again when a token names a ``kid`` it does not hold (at most once a second).
Anything else is an opaque token, asked about at the issuer's introspection endpoint
(RFC 7662), or, where configured, a Tessera API key traded for an access token for this
resource.

The caller is then the agent and the user it acts for: ``act`` (RFC 8693 delegation)
names the agent acting for ``sub``; a token whose ``agent_id`` is its ``sub`` is an agent
acting alone; a user's own token (``may_act``) must be exchanged by its agent first. A
certificate-bound token (RFC 8705 §3) is accepted only with the certificate it names,
which the proxy learns from the TLS-terminating proxy in front (``client_cert_header``);
without one it is refused.

Revocation: with the store's revocations at hand (local decisions), a revoked JWT, or
one exchanged from a revoked token or grant (its ``lineage``), is refused at once,
remembered or not; else, with a client to introspect as, the issuer is
asked each time a JWT is verified (once per ``keep`` seconds, the time a verified JWT is
remembered), and a token it cannot ask about is refused.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import httpx
import jwt

from issuer.keys import PublicKey
from issuer.oauth.revocation import revoked_by
from issuer.verify import Caller as Caller
from issuer.verify import Memory, Reason, Refusal, Revocation, Verifier
from pep.errors import PepError

API_KEY_PREFIX = "tsk_"
API_KEY_TYPE = "urn:tessera:params:oauth:token-type:api-key"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
REFRESH_INTERVAL = 1.0  # seconds between JWKS fetches for unknown kids
CACHE_SIZE = 10_000


class Unauthorized(PepError):
    """No usable token: answered 401 ``invalid_token`` (or a bare challenge)."""

    def __init__(self, description: str | None) -> None:
        super().__init__(description or "no access token")
        self.description = description


def unauthorized(refusal: Refusal) -> Unauthorized:
    """What the proxy answers a refused token: a bare challenge without one, else
    ``invalid_token`` saying why (RFC 6750 §3.1)."""
    return Unauthorized(None if refusal.reason is Reason.MISSING else refusal.message)


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
        self.revoked = revoked
        # the store's revocations at hand are read every time; introspection is asked
        # when a JWT is verified again; without either, a JWT is good until it expires
        self._revocation: Revocation | None = None
        if revoked is not None:
            self._revocation = self._revoked_here
        elif client is not None:
            self._revocation = self._still_active
        recheck = 0.0 if revoked is not None else math.inf
        # verified JWTs by (upstream, token), all upstreams together
        self._memory = Memory(CACHE_SIZE, keep, recheck)
        self._verifiers: dict[str, Verifier] = {}

    def _verifier(self, resource: str) -> Verifier:
        verifier = self._verifiers.get(resource)
        if verifier is None:
            verifier = Verifier(
                self.jwks.lookup,
                self.issuer,
                resource,
                leeway=5.0,
                refresh_keys=self.jwks.refresh,
                introspect=self._introspect,
                revoked=self._revocation,
                memory=self._memory,
            )
            self._verifiers[resource] = verifier
        return verifier

    async def authenticate(
        self, authorization: str | None, resource: str, certificate: str | None = None
    ) -> Caller:
        """The caller for this resource, or :class:`Unauthorized`; ``certificate``: the
        ``x5t#S256`` of the client certificate the request came with, if any."""
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip() if scheme.lower() == "bearer" else ""
        verifier = self._verifier(resource)
        if token.startswith(API_KEY_PREFIX):
            # an API key is traded for a token each time, so its revocation takes effect
            # at once; the token just issued is neither remembered nor asked about again
            traded = await self._api_key(token, resource)
            if isinstance(traded, Refusal):
                raise unauthorized(traded)
            found = await verifier.verify(traded, certificate, fresh=True)
        else:
            found = await verifier.verify(token, certificate)
        if isinstance(found, Refusal):
            raise unauthorized(found)
        return found

    async def _revoked_here(self, token: str, who: Caller) -> Refusal | None:
        """Revoked, by the store's revocations (local decisions): the token itself, or a
        token or grant it came from (its lineage); a malformed lineage is refused."""
        assert self.revoked is not None
        if revoked_by(self.revoked, who.claims):
            return Refusal(Reason.REVOKED, "the token was revoked")
        return None

    async def _still_active(self, token: str, who: Caller) -> Refusal | None:
        """Revoked, or its agent stopped, by the issuer's introspection."""
        found = await self._introspect(token)
        return found if isinstance(found, Refusal) else None

    async def _introspect(self, token: str) -> Mapping[str, Any] | Refusal:
        """RFC 7662, authenticated as the proxy's own client."""
        if self.client is None:
            why = "opaque tokens need introspection (set mcp_proxy.client_id)"
            return Refusal(Reason.UNCHECKED, why)
        try:
            response = await self.http.post(
                f"{self.issuer}/oauth/introspect", data={"token": token}, auth=self.client
            )
            response.raise_for_status()
            claims = response.json()
        except (httpx.HTTPError, ValueError):
            return Refusal(Reason.UNCHECKED, "the token could not be introspected")
        if not isinstance(claims, dict) or claims.get("active") is not True:
            return Refusal(Reason.REVOKED, "the token is not active")
        return claims

    async def _api_key(self, token: str, resource: str) -> str | Refusal:
        """A Tessera API key, traded at the issuer for an access token for this resource
        (the issuer checks the key, the agent's risk and status)."""
        if not self.api_keys:
            return Refusal(Reason.INVALID, "API keys are not accepted here")
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
            return Refusal(Reason.UNCHECKED, "the API key could not be checked")
        if response.status_code != 200 or not isinstance(body, dict):
            return Refusal(Reason.INVALID, "the API key is not valid here")
        return str(body.get("access_token", "")) or Refusal(
            Reason.INVALID, "the API key is not valid here"
        )


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
