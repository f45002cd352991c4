"""The directory and the issuer as the admin MCP server reads and changes them.

Every write goes through the component that owns the data, with the administrator as
the actor, so the store's change log (and from it the admin audit trail) records who did
it: agents through the SCIM service (its schemas validate every document, its PATCH
applies the change, its ETags guard against a concurrent edit), OAuth clients through
:class:`~issuer.oauth.clients.ClientRegistry`, API keys through
:class:`~issuer.oauth.api_keys.ApiKeys`. Reads come straight from the store.
"""

from __future__ import annotations

import hmac
import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from issuer.agents import (
    AGENT_EXTENSION,
    AGENT_SCHEMA,
    AGENT_TYPE,
    EXTENSION_ATTRIBUTES,
    OWNER,
    PURPOSE,
    RISK_LEVEL,
    STATUS,
    Agent,
    AgentStatus,
    AgentType,
    RiskLevel,
    User,
    memberships,
)
from issuer.models import CONSENT
from issuer.oauth import clients as oauth_clients
from issuer.oauth.api_keys import KIND as API_KEY_KIND
from issuer.oauth.api_keys import PREFIX as API_KEY_PREFIX
from issuer.oauth.api_keys import ApiKeys
from issuer.oauth.clients import ClientRegistry
from issuer.oauth.errors import OAuthError
from issuer.scim import ADMIN_SCOPE, Principal, scim_app
from issuer.store import NotFound, Record, Store
from issuer.verify import Reason, Refusal
from pep.admin_mcp.errors import AdminError
from pep.admin_mcp.naming import AgentNames

PATCH_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
SCIM_BASE = "http://tessera.invalid"  # in-process only; never resolved
STATUSES = tuple(status.value for status in AgentStatus)
RISK_LEVELS = tuple(level.value for level in RiskLevel)
AGENT_TYPES = tuple(kind.value for kind in AgentType)


@dataclass(frozen=True)
class Admin:
    """The administrator a change is recorded for (the change log's ``actor``)."""

    subject: str


def agent_summary(record: Record) -> dict[str, Any]:
    """An agent as a listing shows it."""
    agent = Agent.from_scim(record.id, record.data)
    return {
        "id": record.id,
        "name": agent.name,
        OWNER: agent.owner,
        PURPOSE: agent.purpose,
        RISK_LEVEL: agent.risk,
        STATUS: agent.status,
        AGENT_TYPE: agent.type,
        "version": record.version,
    }


def agent_document(record: Record) -> dict[str, Any]:
    """An agent in full: its SCIM attributes, flattened, with id and version."""
    agent = Agent.from_scim(record.id, record.data)
    document: dict[str, Any] = {"id": record.id, "name": agent.name}
    if agent.display_name:
        document["displayName"] = agent.display_name
    document.update(agent.extension())
    document["version"] = record.version
    document["created"] = record.created.isoformat()
    document["modified"] = record.modified.isoformat()
    return document


class DirectoryAdmin:
    """Agents, users, consents and credentials over one store."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.names = AgentNames(store)
        self.clients = ClientRegistry(store)
        self.api_keys = ApiKeys(store)

    # -- reading

    def find_agent(self, agent: str) -> Record:
        """An agent the directory holds now, by its id or its name (case-insensitive):
        :meth:`pep.admin_mcp.naming.AgentNames.now`."""
        return self.names.now(agent)

    def list_agents(
        self,
        status: str | None = None,
        owner: str | None = None,
        purpose: str | None = None,
        risk_level: str | None = None,
    ) -> list[dict[str, Any]]:
        _one_of("status", status, STATUSES)
        _one_of("risk_level", risk_level, RISK_LEVELS)
        wanted = {STATUS: status, OWNER: owner, PURPOSE: purpose, RISK_LEVEL: risk_level}
        return [
            summary
            for summary in map(agent_summary, self.store.list("Agent"))
            if all(value is None or summary[key] == value for key, value in wanted.items())
        ]

    def get_agent(self, agent: str) -> dict[str, Any]:
        record = self.find_agent(agent)
        return {**agent_document(record), "credentials": self.credentials(record.id)}

    def credentials(self, agent_id: str) -> list[dict[str, Any]]:
        """The agent's OAuth clients and API keys, never their secrets."""
        found: list[dict[str, Any]] = []
        for record in self.store.list(oauth_clients.KIND):
            data = record.data
            if data.get("agent_id") != agent_id:
                continue
            found.append(
                {
                    "kind": "oauth_client",
                    "id": data["client_id"],
                    "auth_method": data.get("token_endpoint_auth_method"),
                    "grant_types": data.get("grant_types"),
                    "scope": data.get("scope", ""),
                    "created": record.created.isoformat(),
                }
            )
        for key in self.api_keys.of_agent(agent_id):
            found.append({"kind": "api_key", **key.listing()})
        return found

    def list_users(self) -> list[dict[str, Any]]:
        groups = memberships(group.data for group in self.store.list("Group"))
        users = (
            User.from_scim(record.id, record.data, groups.get(record.id, ()))
            for record in self.store.list("User")
        )
        return [
            {
                "id": user.id,
                "userName": user.user_name,
                "displayName": user.display_name,
                "active": user.active,
                "roles": list(user.roles),
                "groups": list(user.groups),
            }
            for user in users
        ]

    def list_consents(
        self, user: str | None = None, agent: str | None = None
    ) -> list[dict[str, Any]]:
        agent_id = self.find_agent(agent).id if agent else None
        return [
            {
                "id": record.id,
                "user_id": record.data.get("user_id"),
                "agent_id": record.data.get("agent_id"),
                "client_id": record.data.get("client_id"),
                "scopes": list(record.data.get("scopes") or ()),
                "granted": record.modified.isoformat(),
            }
            for record in self.store.list(CONSENT)
            if (user is None or record.data.get("user_id") == user)
            and (agent_id is None or record.data.get("agent_id") == agent_id)
        ]

    # -- agents, through the SCIM service

    async def register_agent(self, admin: Admin, attributes: Mapping[str, Any]) -> dict[str, Any]:
        """A new agent; ``attributes`` holds ``name``, ``displayName`` and the extension's
        attributes by their SCIM names (owner, riskLevel…)."""
        extension = {
            k: v for k, v in attributes.items() if k in EXTENSION_ATTRIBUTES and v is not None
        }
        payload: dict[str, Any] = {
            "schemas": [AGENT_SCHEMA, AGENT_EXTENSION],
            "name": attributes.get("name"),
            AGENT_EXTENSION: extension,
        }
        if attributes.get("displayName"):
            payload["displayName"] = attributes["displayName"]
        created = await self._scim(admin, "POST", "/Agents", payload)
        return self.get_agent(str(created["id"]))

    async def update_agent(
        self, admin: Admin, agent: str, changes: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Set attributes of an agent (SCIM PATCH replace), pinned to the version read."""
        record = self.find_agent(agent)
        operations: list[dict[str, Any]] = []
        for key, value in changes.items():
            if value is None:
                continue
            if key in ("name", "displayName"):
                operations.append({"op": "replace", "path": key, "value": value})
            elif key in EXTENSION_ATTRIBUTES:
                path = f"{AGENT_EXTENSION}:{key}"
                operations.append({"op": "replace", "path": path, "value": value})
            else:
                raise AdminError(f"{key!r} is not an agent attribute an administrator sets")
        if not operations:
            raise AdminError("nothing to change: give at least one attribute")
        await self._scim(
            admin,
            "PATCH",
            f"/Agents/{record.id}",
            {"schemas": [PATCH_SCHEMA], "Operations": operations},
            version=record.version,
        )
        return self.get_agent(record.id)

    async def _scim(
        self,
        admin: Admin,
        method: str,
        path: str,
        payload: Mapping[str, Any],
        version: int | None = None,
    ) -> dict[str, Any]:
        """One request to the SCIM service, in process, as ``admin``; AdminError with the
        service's own error detail when it refuses."""
        secret = secrets.token_urlsafe(32)

        async def authenticate(token: str) -> Principal | Refusal:
            if hmac.compare_digest(token, secret):
                return Principal(admin.subject, frozenset({ADMIN_SCOPE}))
            return Refusal(Reason.INVALID, "not this request's token")

        headers = {"Authorization": f"Bearer {secret}", "Content-Type": "application/scim+json"}
        if version is not None:
            headers["If-Match"] = f'W/"{version}"'
        transport = httpx.ASGITransport(app=scim_app(self.store, authenticate))
        async with httpx.AsyncClient(transport=transport, base_url=SCIM_BASE) as client:
            response = await client.request(
                method, path, content=json.dumps(payload), headers=headers
            )
        body: Any = response.json() if response.content else {}
        if response.status_code >= 400:
            detail = body.get("detail") if isinstance(body, dict) else None
            if response.status_code == 412:
                detail = "the agent changed meanwhile; read it again and retry"
            raise AdminError(f"the directory refused the change: {detail or response.status_code}")
        return body if isinstance(body, dict) else {}

    # -- credentials

    def issue_credential(
        self,
        admin: Admin,
        agent: str,
        kind: str,
        scope: str = "",
        jwks: Mapping[str, Any] | None = None,
        expires_in: int | None = None,
    ) -> dict[str, Any]:
        """A new credential for an agent: an OAuth client (client_secret_basic or
        private_key_jwt, for the client_credentials grant) or an API key. The answer holds
        the secret, shown this once."""
        record = self.find_agent(agent)
        try:
            if kind == "api_key":
                request: dict[str, Any] = {"agent_id": record.id, "scope": scope}
                if expires_in is not None:
                    request["expires_in"] = expires_in
                return {"kind": "api_key", **self.api_keys.create(request, admin.subject)}
            if kind not in ("client_secret_basic", "private_key_jwt"):
                raise AdminError(
                    f"kind {kind!r}: use client_secret_basic, private_key_jwt or api_key"
                )
            metadata: dict[str, Any] = {
                "agent_id": record.id,
                "token_endpoint_auth_method": kind,
                "grant_types": ["client_credentials"],
                "scope": scope,
                "client_name": record.data.get("name"),
            }
            if kind == "private_key_jwt":
                if jwks is None:
                    raise AdminError("private_key_jwt needs jwks: the agent's public keys")
                metadata["jwks"] = dict(jwks)
            elif jwks is not None:
                raise AdminError("jwks is only for private_key_jwt")
            if expires_in is not None:
                raise AdminError("expires_in is only for api_key")
            return {"kind": "oauth_client", **self.clients.register(metadata, admin.subject)}
        except OAuthError as exc:
            raise AdminError(exc.description) from None

    def rotate_credential(
        self,
        admin: Admin,
        agent: str,
        credential: str,
        jwks: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Replace a credential: issue a new one like it, then revoke the old one. The answer
        holds the new secret, shown this once."""
        record = self.find_agent(agent)
        key_id = credential.removeprefix(API_KEY_PREFIX)
        for key in self.api_keys.of_agent(record.id):
            if key.id == key_id:
                lifetime = max(int(key.expires_at - key.created_at), 1)
                issued = self.issue_credential(
                    admin, record.id, "api_key", " ".join(sorted(key.scopes)), None, lifetime
                )
                self.api_keys.revoke(key.id, admin.subject)
                return {**issued, "replaced": f"{API_KEY_PREFIX}{key.id}"}
        try:
            old = self.store.find(oauth_clients.KIND, "client_id", credential)
        except NotFound:
            old = None
        if old is None or old.data.get("agent_id") != record.id:
            raise AdminError(
                f"agent {record.data.get('name')!r} has no credential {credential!r}; "
                "get_agent lists its credentials"
            )
        method = str(old.data.get("token_endpoint_auth_method"))
        if method == "private_key_jwt" and jwks is None:
            raise AdminError("rotating a private_key_jwt client needs the new public keys (jwks)")
        issued = self.issue_credential(
            admin, record.id, method, str(old.data.get("scope", "")), jwks
        )
        self.store.delete(oauth_clients.KIND, old.id, expected_version=None, actor=admin.subject)
        return {**issued, "replaced": credential}


def _one_of(name: str, value: str | None, allowed: tuple[str, ...]) -> None:
    if value is not None and value not in allowed:
        raise AdminError(f"{name} {value!r}: use one of {', '.join(allowed)}")


__all__ = [
    "AGENT_TYPES",
    "API_KEY_KIND",
    "RISK_LEVELS",
    "STATUSES",
    "Admin",
    "DirectoryAdmin",
]
