"""Revocation (RFC 7009) and what it reaches: a token's lineage.

An access token names, in its ``lineage`` claim, the ids whose revocation revokes it too,
oldest first:

- the authorization grant it comes from: the id of the authorization code that started
  it, which the refresh tokens of that code share as their family, so the access tokens
  of every refresh carry it too;
- the ``jti`` of each token it was exchanged from (RFC 8693), the subject token's and
  the actor token's, after their own lineage.

A revocation is a ``RevokedToken`` record in the store, unique by the id it revokes (a
token's ``jti`` or a grant's id), so every replica and worker sees it and it outlives
restarts; a token is revoked when its ``jti`` or any id of its lineage is recorded. So
revoking a user's token revokes every token exchanged from it, and those exchanged from
them; revoking a refresh token, or replaying its code (RFC 6749 §4.1.2, OAuth 2.1 §4.1.3),
revokes its grant: the refresh tokens, the access tokens and what was exchanged from them.

A record's ``exp`` is when it stops mattering: the revoked token's own ``exp`` or, when
later, the revocation plus the longest token lifetime and :data:`MARGIN`, since a token
exchanged from the revoked one before the revocation may expire after it. The store's
check ignores ``exp``; the directory's snapshot (:mod:`pdp.directory`) forgets a record
after it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from issuer.keys import VERIFY_LEEWAY
from issuer.models import REVOKED
from issuer.store import Conflict, NotFound, Store

LINEAGE = "lineage"
# seconds past the longest token lifetime a record matters: verifiers take a token 30 s
# past its exp, and an exchange that checked its parents just before the revocation
# mints a moment after it
MARGIN = VERIFY_LEEWAY + 30.0


def lineage(claims: Mapping[str, Any]) -> list[str] | None:
    """The ids a token's ``lineage`` claim names (none when it has no claim), or None when
    the claim is not a list of strings (then the token is taken as revoked)."""
    found = claims.get(LINEAGE, [])
    if not isinstance(found, list) or not all(isinstance(i, str) for i in found):
        return None
    return found


def revocable_ids(claims: Mapping[str, Any]) -> list[str] | None:
    """Every id whose revocation revokes the token: its ``jti``, then its lineage; None
    for a lineage that is not a list of strings."""
    ids = lineage(claims)
    return None if ids is None else [str(claims.get("jti", "")), *ids]


def descended(*parents: Mapping[str, Any]) -> list[str]:
    """The lineage of a token made from ``parents`` (RFC 8693: the subject and the actor
    token): each parent's lineage, then its ``jti``, each id once."""
    ids: dict[str, None] = {}
    for parent in parents:
        for id_ in [*(lineage(parent) or ()), str(parent["jti"])]:
            ids.setdefault(id_, None)
    return list(ids)


def lineage_claim(ids: Iterable[str]) -> dict[str, Any]:
    """The claims to add for ``ids``: none when there are none (an agent alone)."""
    listed = list(ids)
    return {LINEAGE: listed} if listed else {}


def revoked(store: Store, claims: Mapping[str, Any]) -> bool:
    """Whether an access token was revoked (RFC 7009), as the store records it."""
    return revoked_by(lambda id_: is_recorded(store, id_), claims)


def revoked_by(recorded: Callable[[str], bool], claims: Mapping[str, Any]) -> bool:
    """Whether an access token was revoked: its own ``jti`` or an id of its lineage is
    ``recorded`` (in the store, or in a snapshot of it); a malformed lineage counts as
    revoked (the check fails closed)."""
    ids = revocable_ids(claims)
    return ids is None or any(recorded(id_) for id_ in ids if id_)


def revoke(store: Store, id_: str, *, subject: str, exp: float, lifetime: int, actor: str) -> None:
    """Record the revocation of ``id_`` (a token's ``jti``, or a grant's id) for
    ``subject``; ``exp`` is the token's own, ``lifetime`` the longest an access token
    lives. Revoking twice is revoking once."""
    until = max(float(exp), time.time() + lifetime) + MARGIN
    document = {"jti": id_, "exp": int(until) + 1, "sub": subject}
    with contextlib.suppress(Conflict):  # revoked already
        store.create(REVOKED, document, unique={"jti": id_}, actor=actor)


def is_recorded(store: Store, id_: str) -> bool:
    """Whether ``id_`` itself was revoked (a grant: whether it may mint again)."""
    try:
        store.find(REVOKED, "jti", id_)
    except NotFound:
        return False
    return True
