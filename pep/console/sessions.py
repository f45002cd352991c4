"""Console sessions, kept in the store so that every worker and replica knows them.

The cookie holds a random session id; the store holds only its SHA-256 (kind
``ConsoleSession``), with the operator and the expiry. The synchronizer token that every
form carries is derived from the session id (HMAC), so it is bound to the session, never
stored, and unknown to whoever reads the store or the admin trail. Signing in and out are
changes in the store's change log, and so records on the admin trail with the operator as
actor; each sign-in also removes a few sessions past their time (actor ``console``).
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

from issuer.hashing import same_text
from issuer.oauth.sessions import form_token
from issuer.oauth.stored import digest, live, sweep
from issuer.store import Store

KIND = "ConsoleSession"
LIFETIME = 8 * 3600  # seconds a session lasts, however active
COOKIE = "tessera_console"


@dataclass(frozen=True)
class Session:
    """A signed-in operator: who (the actor recorded for their actions), the name shown,
    the session id (only in the cookie) and when it ends (epoch seconds)."""

    id: str
    operator: str
    name: str
    expires: float

    @property
    def csrf(self) -> str:
        """The synchronizer token of this session's forms (keyed by the session id)."""
        return form_token(self.id, "console", "forms")

    def checks(self, token: str) -> bool:
        """Whether a form's token is this session's (in constant time)."""
        return same_text(token, self.csrf)


class Sessions:
    """Sessions over one store; blocking calls (run them off the event loop)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def open(self, operator: str, name: str) -> Session:
        """A new session for ``operator``, stored; a few sessions past their time go."""
        now = time.time()
        session = Session(secrets.token_urlsafe(32), operator, name, now + LIFETIME)
        document = {"operator": operator, "name": name, "expires": session.expires}
        self.store.put(KIND, {digest(session.id): document}, actor=operator)
        sweep(self.store, KIND, "expires", now, actor="console")
        return session

    def find(self, session_id: str) -> Session | None:
        """The live session of a cookie's id, or None."""
        data = live(self.store, KIND, session_id)
        if data is None:
            return None
        return Session(session_id, str(data["operator"]), str(data["name"]), data["expires"])

    def close(self, session: Session) -> None:
        """End a session everywhere: the store forgets it."""
        self.store.put(KIND, {digest(session.id): None}, actor=session.operator)
