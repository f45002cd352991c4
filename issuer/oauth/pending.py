"""Authorization requests waiting for a person to sign in and consent, carried by the browser.

Between ``/oauth/authorize`` and the consent page, the browser may reach any worker or
replica, and anyone may call ``/oauth/authorize``: so the request is not kept in a
process's memory, nor written to the store for anonymous callers. It travels as the
``request`` parameter of the login and consent pages, a compact JWS the key ring signs,
of type :data:`TYPE` (which no access-token verifier takes) and :data:`LIFETIME` seconds
long. It holds only what the client's request said; names to show (the client's, the
agent's) are looked up when the page is shown to a signed-in person.

The consent form's CSRF token is the HMAC of the request's ``jti`` keyed by the person's
session cookie (:func:`csrf_token`): a page of another site can neither read nor make it.
A request is answered once, on whichever replica (:meth:`PendingRequests.answer`): the
answer is stored under the SHA-256 of the ``jti``, a unique value, so of two answers
racing anywhere one is stored and the other refused. Those records are written only by
signed-in people, and each removes a few past the requests' lifetime (and a margin for
replicas whose clocks lag).
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import jwt

from issuer import jws
from issuer.keys import KeyRing
from issuer.oauth.sessions import form_token
from issuer.oauth.stored import digest, sweep
from issuer.store import Conflict, Store

KIND = "AuthorizationAnswer"
TYPE = "tessera-authz-request+jwt"
LIFETIME = 600  # seconds from /oauth/authorize to the consent's answer
CLOCK_SKEW = 300  # seconds an answer is kept past LIFETIME, for replicas whose clocks lag
# characters of a sealed request, made or read: a page's URL carries it within the
# 16 KiB head every HTTP door takes, with room for the rest of the head
MAX_SEALED = 8_192


def _jti() -> str:
    return secrets.token_urlsafe(24)


@dataclass(frozen=True)
class Pending:
    """An authorization request waiting for the person to sign in and consent."""

    client_id: str
    redirect_uri: str
    redirect_given: bool  # whether the request named its redirect_uri
    state: str | None
    scopes: tuple[str, ...]
    resources: tuple[str, ...]
    challenge: str  # the PKCE code_challenge (S256)
    actor: str | None  # the agent that will act for the person (requested_actor)
    jti: str = field(default_factory=_jti)
    expires: int = field(default_factory=lambda: int(time.time()) + LIFETIME)


def csrf_token(pending: Pending, session: str) -> str:
    """The consent form's CSRF token: the request's ``jti`` under the session cookie."""
    return form_token(session, "consent", pending.jti)


class PendingRequests:
    """Seals and opens pending requests with the key ring, and records their answers;
    blocking calls (run them off the event loop)."""

    def __init__(self, store: Store, keys: KeyRing, issuer: str) -> None:
        self.store = store
        self.keys = keys
        self.issuer = issuer

    def seal(self, pending: Pending) -> str:
        """``pending`` as a signed compact JWS, for the browser to carry."""
        claims = {
            "iss": self.issuer,
            "aud": self.issuer,
            "iat": pending.expires - LIFETIME,
            "exp": pending.expires,
            "jti": pending.jti,
            "client_id": pending.client_id,
            "redirect_uri": pending.redirect_uri,
            "redirect_given": pending.redirect_given,
            "state": pending.state,
            "scope": list(pending.scopes),
            "resource": list(pending.resources),
            "code_challenge": pending.challenge,
            "requested_actor": pending.actor,
        }
        key = self.keys.signing_key()
        headers = {"typ": TYPE, "kid": key.kid}
        return jwt.encode(claims, key.private, algorithm=key.alg, headers=headers)

    def open(self, sealed: str) -> Pending | None:
        """The request ``sealed`` carries, while it is unexpired; None when it is not one
        this issuer sealed (malformed, forged, another type of token, too long)."""
        if not sealed or len(sealed) > MAX_SEALED:
            return None
        try:
            header, claims, signing_input, signature = jws.parse(sealed)
        except ValueError:
            return None
        kid = header.get("kid")
        key = self.keys.key(kid) if isinstance(kid, str) else None
        if key is None or header.get("typ") != TYPE or header.get("alg") != key.alg:
            return None  # the key decides the algorithm, never the header
        try:
            jws.verify_signature(key.alg, key.public, signing_input, signature)
        except jws.BadSignature:
            return None
        if claims.get("iss") != self.issuer or claims.get("aud") != self.issuer:
            return None
        try:
            pending = _pending(claims)
        except (KeyError, TypeError, ValueError):
            return None
        return pending if pending.expires > time.time() else None

    def answer(self, pending: Pending, user_id: str) -> bool:
        """Record that ``user_id`` answered ``pending``: False when it was answered before
        (here or on another replica), and nothing is recorded."""
        now = time.time()
        try:
            self.store.create(
                KIND,
                {"answered": now, "user_id": user_id},
                unique={"request": digest(pending.jti)},
                actor=user_id,
            )
        except Conflict:
            return False
        sweep(self.store, KIND, "answered", now - LIFETIME - CLOCK_SKEW)
        return True


def _pending(claims: dict[str, Any]) -> Pending:
    """The request a verified JWS's claims carry; TypeError or KeyError when a claim is
    missing or of another type (never for claims :meth:`PendingRequests.seal` wrote)."""
    texts = ("jti", "client_id", "redirect_uri", "code_challenge")
    if not all(isinstance(claims[name], str) for name in texts):
        raise TypeError("a claim is not a string")
    scopes, resources = claims["scope"], claims["resource"]
    lists = (scopes, resources)
    if not all(isinstance(v, list) and all(isinstance(s, str) for s in v) for v in lists):
        raise TypeError("scope and resource are lists of strings")
    state, actor, expires = claims["state"], claims["requested_actor"], claims["exp"]
    if not all(v is None or isinstance(v, str) for v in (state, actor)):
        raise TypeError("state and requested_actor are strings or null")
    if not isinstance(expires, int) or isinstance(expires, bool):
        raise TypeError("exp is an integer")
    return Pending(
        client_id=claims["client_id"],
        redirect_uri=claims["redirect_uri"],
        redirect_given=claims["redirect_given"] is True,
        state=state,
        scopes=tuple(scopes),
        resources=tuple(resources),
        challenge=claims["code_challenge"],
        actor=actor,
        jti=claims["jti"],
        expires=expires,
    )
