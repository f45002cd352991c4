"""Users' consents: which scopes a user granted a client, and the agent acting through it.

One record per (user, client, agent) in the store (kind :data:`issuer.models.CONSENT`).
Granting again widens the scopes; revoking deletes the record. The PDP follows these
records like the directory and sees the scopes as ``context.consents``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from issuer.models import CONSENT
from issuer.store import Conflict, NotFound, Store, VersionMismatch


@dataclass(frozen=True)
class Consent:
    id: str
    user_id: str
    client_id: str
    agent_id: str | None
    scopes: frozenset[str]

    def covers(self, scopes: Iterable[str]) -> bool:
        """Whether the user granted every one of these scopes."""
        return set(scopes) <= self.scopes


def _key(user_id: str, client_id: str, agent_id: str | None) -> str:
    return f"{user_id}|{client_id}|{agent_id or ''}"


class Consents:
    """Grant, find, list and revoke consents."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def find(self, user_id: str, client_id: str, agent_id: str | None) -> Consent | None:
        try:
            record = self.store.find(CONSENT, "grant", _key(user_id, client_id, agent_id))
        except NotFound:
            return None
        return _consent(record.id, record.data)

    def grant(
        self, user_id: str, client_id: str, agent_id: str | None, scopes: Iterable[str]
    ) -> Consent:
        """Record (or widen) the user's consent; the user is the actor in the change log."""
        key = _key(user_id, client_id, agent_id)
        for _ in range(5):  # a concurrent grant of the same key: read again and merge
            existing = self.find(user_id, client_id, agent_id)
            wanted = sorted(set(scopes) | (existing.scopes if existing else frozenset()))
            data = {
                "user_id": user_id,
                "client_id": client_id,
                "agent_id": agent_id,
                "scopes": wanted,
            }
            try:
                if existing is None:
                    record = self.store.create(CONSENT, data, unique={"grant": key}, actor=user_id)
                else:
                    version = self.store.get(CONSENT, existing.id).version
                    record = self.store.replace(
                        CONSENT,
                        existing.id,
                        data,
                        unique={"grant": key},
                        expected_version=version,
                        actor=user_id,
                    )
                return _consent(record.id, record.data)
            except (Conflict, VersionMismatch, NotFound):
                continue
        raise RuntimeError("the consent kept changing while it was granted")

    def of_user(self, user_id: str) -> list[Consent]:
        return [
            _consent(r.id, r.data)
            for r in self.store.list(CONSENT)
            if r.data.get("user_id") == user_id
        ]

    def mine(self, consent_id: str, user_id: str) -> Consent | None:
        """One of the user's consents, by id; None when the user has no such consent."""
        try:
            record = self.store.get(CONSENT, consent_id)
        except NotFound:
            return None
        if record.data.get("user_id") != user_id:
            return None
        return _consent(record.id, record.data)

    def revoke(self, consent_id: str, user_id: str, actor: str) -> Consent | None:
        """Delete one of the user's consents; the consent, or None when there is none."""
        consent = self.mine(consent_id, user_id)
        if consent is None:
            return None
        try:
            self.store.delete(CONSENT, consent_id, expected_version=None, actor=actor)
        except NotFound:
            return None
        return consent


def _consent(id: str, data: dict[str, object]) -> Consent:
    scopes = data.get("scopes") or []
    assert isinstance(scopes, list)
    agent = data.get("agent_id")
    return Consent(
        id=id,
        user_id=str(data["user_id"]),
        client_id=str(data["client_id"]),
        agent_id=agent if isinstance(agent, str) else None,
        scopes=frozenset(str(s) for s in scopes),
    )
