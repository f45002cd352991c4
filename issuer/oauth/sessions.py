"""People's sign-in sessions at the issuer, in the store, so that every worker and replica
knows them: the approval pages (CIBA) and the consent page may reach any of them.

The cookie holds a random session id; the store holds only its SHA-256 (kind
:data:`KIND`), with the user and the expiry. Sessions are written only when a person
signs in with their password, so their number is bounded by sign-ins; each sign-in
removes a few sessions past their expiry (:mod:`issuer.oauth.stored`).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

from issuer.oauth.stored import digest, live, sweep
from issuer.store import Store

KIND = "SignInSession"
LIFETIME = 8 * 3600  # seconds a session lasts


class Sessions:
    """Sessions over one store; blocking calls (run them off the event loop)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def open(self, user_id: str) -> str:
        """A new session for ``user_id``, stored: the id the cookie carries."""
        session = secrets.token_urlsafe(32)
        now = time.time()
        document = {"user": user_id, "expires": now + LIFETIME}
        self.store.put(KIND, {digest(session): document}, actor=user_id)
        sweep(self.store, KIND, "expires", now)
        return session

    def user(self, session: str) -> str | None:
        """The user a cookie's session is of, while it lasts; None otherwise."""
        data = live(self.store, KIND, session)
        return None if data is None else str(data["user"])


def form_token(session: str, purpose: str, subject: str) -> str:
    """The token a form served to the session cookie ``session`` carries, for one
    ``subject`` of one ``purpose`` (a consent request's ``jti``, a backchannel request,
    the console's forms):
    an HMAC keyed by the cookie, never stored, which a page of another site can neither
    read nor make."""
    message = f"{purpose}|{subject}".encode()
    return hmac.new(session.encode(), message, hashlib.sha256).hexdigest()
