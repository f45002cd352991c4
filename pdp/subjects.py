"""Who a question is about: an agent, a person, or a subject of a type the schema declares.

OpenID AuthZEN 1.0 §5.1 lets a subject be of any ``type``, with an ``id`` and
``properties``. Tessera decides for three kinds of subject:

    agent               the directory's agents; policies read ``agent.*``
    user, identity      a person (AuthZEN's interop scenarios ask about both); policies read
                        ``user.*``: the directory's user when it knows the person, else the
                        properties sent with the subject, typed by the ``user { … }`` block
    a declared type     ``subject service { team: string }`` in the schema; policies read
                        ``subject.*``, the properties sent, typed by that block

and every request tells policies ``subject.type`` and ``subject.id`` (the id as the
caller sent it).

A person is named by any of the ids a caller may hold for them. :class:`People` looks a
name up in this order, and the first step that finds anyone decides (docs/directory.md):

    1. the SCIM ``id`` (RFC 7643 §3.1: case-exact)
    2. ``userName`` (RFC 7643 §4.1.1: unique, compared case-insensitively)
    3. ``externalId`` (RFC 7643 §3.1: case-exact; the provisioning client's id)
    4. an e-mail address the user lists (``emails[].value``), compared case-insensitively

Two users at the step that finds them is ambiguous: a :class:`RequestError` naming the
field, never a guess. The indexes are built once per change of the directory's users
(:meth:`pdp.directory.Directory`), so a lookup is a few dictionary reads.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from issuer.agents import User
from pdp.lang.schema import AGENT_SUBJECT, PERSONS
from pdp.model import RequestError

__all__ = [
    "AGENT_SUBJECT",
    "DEFAULT_ID_FORM",
    "ID_FORMS",
    "PERSONS",
    "People",
    "Subject",
]

ID_FORMS = ("id", "userName", "externalId", "email")
"""The forms of a person's id a subject search can answer in (and the lookup's steps)."""

DEFAULT_ID_FORM = "userName"

Index = dict[str, tuple[str, ...]]


@dataclass(frozen=True)
class Subject:
    """A subject as a door read it, before it is typed into a request.

    ``id`` is the id as sent. ``user`` is the person the question is for: an agent's user
    (``subject.properties.user`` in AuthZEN), or the person the subject is; after
    :meth:`People.identify`, the directory's id for them. ``chain``: an agent's actors.
    ``properties``: a person's attributes (``user.*``) or a declared type's
    (``subject.*``), as plain values."""

    type: str
    id: str
    user: str | None = None
    chain: tuple[str, ...] = ()
    properties: Mapping[str, Any] = field(default_factory=dict)

    @property
    def is_agent(self) -> bool:
        return self.type == AGENT_SUBJECT

    @property
    def is_person(self) -> bool:
        return self.type in PERSONS

    def parts(self) -> dict[str, Any]:
        """The keyword arguments of :func:`pdp.request.typed_request` that say who asks:
        ``agent``, ``user``, ``chain`` and ``subject``."""
        if self.is_agent:
            user = None if self.user is None else {"id": self.user}
            chain = self.chain or None  # none sent: the agent's own, when it acts for a user
            return {"agent": {"id": self.id}, "user": user, "chain": chain, "subject": None}
        named = {"type": self.type, "id": self.id}
        if self.is_person:
            person = {**self.properties, "id": self.user or self.id}
            return {"agent": None, "user": person, "chain": None, "subject": named}
        subject = {**self.properties, **named}
        return {"agent": None, "user": None, "chain": None, "subject": subject}


class People:
    """The directory's users by each form of id a caller may name them with."""

    def __init__(self, users: Mapping[str, User]) -> None:
        self._users = users
        self._user_names = _index(((u.user_name or "").casefold(), u.id) for u in users.values())
        self._external_ids = _index((u.external_id or "", u.id) for u in users.values())
        self._emails = _index(
            (email.casefold(), u.id) for u in users.values() for email in set(u.emails)
        )

    def lookup(self, name: str) -> tuple[str, tuple[str, ...]]:
        """(the step that found someone, their ids) for ``name``; ("", ()) when no one."""
        if name in self._users:
            return "id", (name,)
        folded = name.casefold()
        for step, index, key in (
            ("userName", self._user_names, folded),
            ("externalId", self._external_ids, name),
            ("email", self._emails, folded),
        ):
            found = index.get(key)
            if found:
                return step, found
        return "", ()

    def identify(self, name: str, where: str) -> str:
        """The directory's id of the person ``name`` names, or ``name`` itself when the
        directory knows no one by it; a RequestError naming ``where`` when several users
        answer to it."""
        if name in self._users:  # the common case first: a SCIM id
            return name
        step, found = self.lookup(name)
        if len(found) > 1:
            raise RequestError(
                f"{where}: {name!r} names {len(found)} users in the directory (by {step}); "
                "name one by its SCIM id or userName"
            )
        return found[0] if found else name

    def name_of(self, user: User, form: str) -> str:
        """The user's id in ``form`` (one of :data:`ID_FORMS`); the SCIM id when the user
        has none in that form, or when it would not name this user alone (another user's
        SCIM id, or shared), so that every id given back names its user."""
        value = {
            "userName": user.user_name,
            "externalId": user.external_id,
            "email": user.email,
        }.get(form)
        if not value or self.lookup(value)[1] != (user.id,):
            return user.id
        return value


def _index(pairs: Iterable[tuple[str, str]]) -> Index:
    """User ids by key, each key's ids sorted; empty keys left out."""
    found: dict[str, set[str]] = {}
    for key, ident in pairs:
        if key:
            found.setdefault(key, set()).add(ident)
    return {key: tuple(sorted(ids)) for key, ids in found.items()}
