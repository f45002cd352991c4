"""Authorization codes in the store, so that any worker or replica redeems them, once.

A code is issued by the process that shows the user the consent page, and redeemed by
whichever process the client's token request reaches: with ``tessera serve --workers N``
or several replicas, rarely the same one. So codes live in the store (kind
:data:`KIND`), keyed by the SHA-256 of the code: the store never holds a code anyone
could redeem. Redeeming marks the code redeemed with a compare-and-set on its version,
so of two redemptions racing on two replicas one wins and the other is a replay; a code
presented after it was redeemed, on any replica, is :class:`CodeReplayed` for
:data:`REDEEMED_LIFETIME` after it was issued (RFC 6749 §4.1.2, OAuth 2.1 §4.1.3), and
merely unknown later. Codes are written only once a person has signed in and consented,
so their number is bounded by people's sign-ins; each issuance removes a few codes
past that time, found at a random place among the keys, so that the kind stays as large
as a day's codes.
"""

from __future__ import annotations

import secrets
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from issuer.oauth.errors import OAuthError
from issuer.oauth.stored import digest, sweep
from issuer.store import NotFound, Store, VersionMismatch

KIND = "AuthorizationCode"
CODE_LIFETIME = 60  # seconds a code may be redeemed in
REDEEMED_LIFETIME = 24 * 3600  # seconds a code is known as redeemed (from its issuance)


@dataclass(frozen=True)
class Grant:
    """What a redeemed code grants."""

    client_id: str
    user_id: str
    scopes: tuple[str, ...]
    resources: tuple[str, ...]
    actor: str | None
    grant_id: str = field(default_factory=lambda: uuid.uuid4().hex)  # what its tokens name
    consent_id: str | None = None  # the consent it was given under, which its tokens name too


@dataclass(frozen=True)
class Issued:
    """A code's grant, and what its redemption is checked against."""

    grant: Grant
    redirect_uri: str
    redirect_given: bool  # whether the authorization request named its redirect_uri
    challenge: str  # the PKCE code_challenge (S256)


class CodeReplayed(OAuthError):
    """A code redeemed before, presented again: refused, and the grant it started (every
    token it gave) is to be revoked."""

    def __init__(self, grant_id: str, user_id: str) -> None:
        super().__init__(
            "invalid_grant", "the code was used before: the tokens it gave are revoked"
        )
        self.grant_id = grant_id
        self.user_id = user_id


UNKNOWN = "the code is unknown, used, expired or not yours"


class Codes:
    """The codes of one store; blocking calls (run them off the event loop)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def issue(self, issued: Issued) -> str:
        """A new code for ``issued``, stored (as the user who consented)."""
        code = secrets.token_urlsafe(32)
        now = time.time()
        document = {**_document(issued), "issued": now, "redeemed": False}
        self.store.put(KIND, {digest(code): document}, actor=issued.grant.user_id)
        self._sweep(now)
        return code

    def take(self, code: str) -> Issued:
        """What ``code`` was issued for, marked redeemed: :class:`CodeReplayed` when it was
        redeemed before (here or on another replica), invalid_grant when it is unknown or
        expired. Redeemed even when the caller's checks then fail: a code is tried once."""
        key = digest(code)
        try:
            record = self.store.get(KIND, key)
        except NotFound:
            raise OAuthError("invalid_grant", UNKNOWN) from None
        data = record.data
        issued = _issued(data)
        age = time.time() - float(data["issued"])
        if data.get("redeemed"):
            if age < REDEEMED_LIFETIME:
                raise CodeReplayed(issued.grant.grant_id, issued.grant.user_id)
            raise OAuthError("invalid_grant", UNKNOWN)
        if age >= CODE_LIFETIME:
            raise OAuthError("invalid_grant", UNKNOWN)
        try:
            self.store.replace(
                KIND,
                key,
                {**data, "redeemed": True},
                unique={},
                expected_version=record.version,
                actor=issued.grant.client_id,
            )
        except (VersionMismatch, NotFound):  # redeemed meanwhile, by another request
            raise CodeReplayed(issued.grant.grant_id, issued.grant.user_id) from None
        return issued

    def _sweep(self, now: float) -> None:
        sweep(self.store, KIND, "issued", now - REDEEMED_LIFETIME)


def _document(issued: Issued) -> dict[str, Any]:
    grant = issued.grant
    return {
        "client_id": grant.client_id,
        "user_id": grant.user_id,
        "scopes": list(grant.scopes),
        "resources": list(grant.resources),
        "actor": grant.actor,
        "grant_id": grant.grant_id,
        "consent_id": grant.consent_id,
        "redirect_uri": issued.redirect_uri,
        "redirect_given": issued.redirect_given,
        "challenge": issued.challenge,
    }


def _issued(data: dict[str, Any]) -> Issued:
    grant = Grant(
        client_id=str(data["client_id"]),
        user_id=str(data["user_id"]),
        scopes=tuple(data["scopes"]),
        resources=tuple(data["resources"]),
        actor=data.get("actor"),
        grant_id=str(data["grant_id"]),
        consent_id=data.get("consent_id"),
    )
    return Issued(grant, str(data["redirect_uri"]), bool(data["redirect_given"]), data["challenge"])
