"""Short-lived secrets the issuer keeps in the store (authorization codes, sign-in
sessions, the console's sessions), so that every worker and replica knows them.

Each is stored under the SHA-256 of the secret (:func:`digest`): whoever reads the store
or the admin trail learns nothing they could present. Nothing removes such a record when
it is done with; each write removes a few that are past their time (:func:`sweep`)."""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Mapping
from typing import Any

from issuer.store import NotFound, Store

MAX_SECRET = 128  # characters of a secret read from a request (a cookie, a form)
SWEEP = 8  # stored records looked at, and removed when past their time, per write


def digest(secret: str) -> str:
    """The id a secret's record is stored under: the secret's SHA-256, in hex."""
    return hashlib.sha256(secret.encode()).hexdigest()


def live(store: Store, kind: str, secret: str) -> Mapping[str, Any] | None:
    """The document of ``kind`` stored for ``secret`` while its ``expires`` (epoch
    seconds) is ahead; None for none, an expired one, or an empty secret or one longer
    than :data:`MAX_SECRET` characters."""
    if not secret or len(secret) > MAX_SECRET:
        return None
    try:
        data = store.get(kind, digest(secret)).data
    except NotFound:
        return None
    return data if float(data.get("expires", 0)) > time.time() else None


def sweep(store: Store, kind: str, stamp: str, before: float, actor: str = "issuer") -> None:
    """Remove up to :data:`SWEEP` records of ``kind`` whose time ``stamp`` is ``before``
    or earlier, looked for from a random place among the ids (digests), so that records
    no one reads again go, a few each time another is written; ``actor`` is whom the
    change log names."""
    sample = store.page(kind, "", secrets.token_hex(32), SWEEP)
    gone = {r.id: None for r in sample if float(r.data.get(stamp, 0)) <= before}
    if gone:
        store.put(kind, gone, actor=actor)
