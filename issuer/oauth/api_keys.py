"""API keys for low-risk internal agents: hashed at rest, recognisable, scoped, expiring,
revocable, and exchangeable for a short-lived access token.

A key reads ``tsk_<key id>_<secret>``: the ``tsk_`` prefix lets secret scanners find
leaked keys, the key id names the record, and only a SHA-256 hash of the 256-bit secret
is stored. Only agents whose risk level is ``low`` may hold or use one, and not those
that need a stronger authentication (external agents, or a ``minimumAcr`` above
``urn:tessera:acr:apikey``: :func:`issuer.strength.minimum_for`). A key is traded
for an access token with an RFC 8693 token exchange whose ``subject_token_type`` is
:data:`API_KEY_TOKEN_TYPE`; the key itself is never accepted as an access token.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

from issuer import strength
from issuer.agents import Agent, RiskLevel
from issuer.oauth.errors import OAuthError
from issuer.store import NotFound, Store

KIND = "ApiKey"
PREFIX = "tsk_"
API_KEY_TOKEN_TYPE = "urn:tessera:params:oauth:token-type:api-key"
MAX_LIFETIME = 365 * 24 * 3600  # seconds
_FORMAT = re.compile(r"^tsk_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")


@dataclass(frozen=True)
class ApiKey:
    """A stored key, without its secret."""

    id: str
    agent_id: str
    scopes: frozenset[str]
    expires_at: int
    created_at: int

    def listing(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "prefix": f"{PREFIX}{self.id}",
            "agent_id": self.agent_id,
            "scope": " ".join(sorted(self.scopes)),
            "expires_at": self.expires_at,
            "created_at": self.created_at,
        }


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _bad(description: str) -> OAuthError:
    return OAuthError("invalid_request", description)


class ApiKeys:
    """Create, list, revoke and check API keys."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def create(self, request: Any, actor: str) -> dict[str, Any]:
        """A new key for a low-risk agent; the response holds the key, shown this once."""
        if not isinstance(request, dict):
            raise _bad("the request is a JSON object")
        agent_id = request.get("agent_id")
        if not isinstance(agent_id, str) or not agent_id:
            raise _bad("agent_id is required")
        self.low_risk_agent(agent_id)
        scope = request.get("scope", "")
        expires_in = request.get("expires_in", 90 * 24 * 3600)
        if not isinstance(scope, str):
            raise _bad("scope is a space-separated string")
        if (
            not isinstance(expires_in, int)
            or isinstance(expires_in, bool)
            or not 0 < expires_in <= MAX_LIFETIME
        ):
            raise _bad(f"expires_in is a number of seconds, at most {MAX_LIFETIME}")
        key_id = secrets.token_hex(8)
        secret = secrets.token_urlsafe(32)
        now = int(time.time())
        document = {
            "key_id": key_id,
            "agent_id": agent_id,
            "scope": " ".join(scope.split()),
            "hash": _digest(secret),
            "created_at": now,
            "expires_at": now + expires_in,
        }
        self.store.create(KIND, document, unique={"key_id": key_id}, actor=actor)
        key = ApiKey(key_id, agent_id, frozenset(scope.split()), now + expires_in, now)
        return {**key.listing(), "api_key": f"{PREFIX}{key_id}_{secret}"}

    def of_agent(self, agent_id: str | None) -> list[ApiKey]:
        keys = [_key(r.data) for r in self.store.list(KIND)]
        return [k for k in keys if agent_id is None or k.agent_id == agent_id]

    def revoke(self, key_id: str, actor: str) -> bool:
        try:
            record = self.store.find(KIND, "key_id", key_id)
            self.store.delete(KIND, record.id, expected_version=None, actor=actor)
        except NotFound:
            return False
        return True

    def check(self, presented: str) -> ApiKey:
        """The key a presented string is, or ``invalid_request`` (unknown, wrong, expired,
        revoked, or its agent no longer low risk and active): the key is the subject token
        of a token exchange, and RFC 8693 §2.2.2 answers an invalid one so."""
        match = _FORMAT.match(presented)
        if match is None:
            raise OAuthError("invalid_request", "not a Tessera API key")
        key_id, secret = match.groups()
        try:
            record = self.store.find(KIND, "key_id", key_id)
        except NotFound:
            raise OAuthError("invalid_request", "unknown or revoked API key") from None
        if not hmac.compare_digest(record.data["hash"], _digest(secret)):
            raise OAuthError("invalid_request", "unknown or revoked API key")
        key = _key(record.data)
        if key.expires_at <= time.time():
            raise OAuthError("invalid_request", "the API key has expired")
        self.low_risk_agent(key.agent_id)
        return key

    def low_risk_agent(self, agent_id: str) -> Agent:
        """The agent, if it may hold a key: in the directory, active, of low risk, and
        needing no stronger authentication than a key."""
        try:
            agent = Agent.from_scim(agent_id, self.store.get("Agent", agent_id).data)
        except NotFound:
            raise _bad(f"agent {agent_id!r} is not in the directory") from None
        if not agent.active:
            raise _bad(f"agent {agent_id!r} is {agent.status}")
        if agent.risk != RiskLevel.low:
            raise _bad("API keys are for low-risk agents only")
        minimum = strength.minimum_for(agent.risk, agent.type, agent.minimum_acr)
        if minimum != strength.ACR_APIKEY:
            raise _bad(
                f"agent {agent_id!r} needs authentication of at least {minimum}: an API key "
                "is not enough (its type, or its minimumAcr in the directory)"
            )
        return agent


def _key(data: dict[str, Any]) -> ApiKey:
    return ApiKey(
        id=str(data["key_id"]),
        agent_id=str(data["agent_id"]),
        scopes=frozenset(str(data.get("scope", "")).split()),
        expires_at=int(data["expires_at"]),
        created_at=int(data["created_at"]),
    )
