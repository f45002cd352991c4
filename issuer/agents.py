"""The directory's facts, typed: agents and users as every plane reads them.

The directory stores SCIM resources (RFC 7643) as documents; this module is the one place
that reads them. :meth:`Agent.from_scim` and :meth:`User.from_scim` turn a stored document
into a frozen record, and the agent extension's URN (:data:`AGENT_EXTENSION`) and the
names of its attributes are written here and nowhere else: the SCIM schemas in
:mod:`issuer.models`, the token endpoint, the decision plane's directory, the report and
the admin tools all take them from here.

Users carry the SCIM enterprise user extension (RFC 7643 §4.3, :data:`ENTERPRISE_EXTENSION`)
when the directory's client sends it; its URN is written here too.

A record takes what it can from a document and leaves the rest empty: a document edited
by hand in the store, with an attribute missing or of the wrong type, gives a record
without that fact rather than an error (the SCIM service validates whatever it writes).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

AGENT_SCHEMA = "urn:tessera:params:scim:schemas:core:1.0:Agent"
"""The core schema of Tessera's agent resource type: ``name`` and ``displayName``."""

AGENT_EXTENSION = "urn:tessera:params:scim:schemas:extension:agent:1.0:Agent"
"""Tessera's agent extension, required on every agent: what governance needs."""

ENTERPRISE_EXTENSION = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
"""The enterprise user extension (RFC 7643 §4.3): department, manager, cost center…"""

# The enterprise extension's string attributes by their SCIM names, which are also the
# names policies read them by (``user.costCenter``); ``manager`` is complex, read apart.
ENTERPRISE_ATTRIBUTES = ("employeeNumber", "costCenter", "organization", "division", "department")
MANAGER = "manager"

# The agent extension's attributes by their SCIM names (the schema in issuer.models
# derives the same names from its fields; a test holds the two together).
OWNER = "owner"
PURPOSE = "purpose"
RISK_LEVEL = "riskLevel"
AGENT_TYPE = "agentType"
STATUS = "status"
MODEL = "model"
DESCRIPTION = "description"
CALLBACK_URL = "callbackUrl"
SCOPES = "scopes"
LABELS = "labels"
MINIMUM_ACR = "minimumAcr"

EXTENSION_ATTRIBUTES = (
    OWNER,
    PURPOSE,
    RISK_LEVEL,
    AGENT_TYPE,
    STATUS,
    MODEL,
    DESCRIPTION,
    CALLBACK_URL,
    SCOPES,
    LABELS,
    MINIMUM_ACR,
)
"""Every attribute of the agent extension, in the order a document lists them."""


class RiskLevel(StrEnum):
    """How much harm the agent can do. Policies order it low < medium < high < critical;
    SCIM filters and sorting compare the names as strings, as RFC 7644 says."""

    low = "low"
    medium = "medium"
    high = "high"
    critical = "critical"


class AgentType(StrEnum):
    """How the agent runs: with a person at hand, on its own, or outside the organisation."""

    interactive = "interactive"
    background = "background"
    external = "external"


class AgentStatus(StrEnum):
    """Lifecycle: only an active agent can be allowed anything."""

    active = "active"
    suspended = "suspended"
    retired = "retired"


_ACTIVE = AgentStatus.active.value  # a plain str: compared on every decision, enum lookups cost


@dataclass(frozen=True)
class Label:
    """A key/value label on an agent (policies see the labels as ``agent.labels``)."""

    key: str
    value: str | None = None


@dataclass(frozen=True)
class Agent:
    """An agent as the directory holds it: its SCIM attributes, typed.

    The extension's values are kept as stored (``risk`` is "low"…"critical" whenever the
    SCIM service wrote it); None means the document does not say.
    """

    id: str
    name: str = ""
    display_name: str | None = None
    owner: str | None = None
    purpose: str | None = None
    risk: str | None = None  # riskLevel
    type: str | None = None  # agentType
    status: str | None = None
    model: str | None = None
    description: str | None = None
    callback_url: str | None = None
    scopes: tuple[str, ...] | None = None
    labels: tuple[Label, ...] | None = None
    minimum_acr: str | None = None  # minimumAcr: the weakest acr its tokens may have
    roles: tuple[str, ...] = ()  # roles[].value, as a user's
    groups: tuple[str, ...] = ()  # displayName of each group listing the agent, sorted
    _attributes: dict[str, Any] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Built once: the decision plane reads them on every request.
        object.__setattr__(self, "_attributes", _agent_attributes(self))

    @classmethod
    def from_scim(cls, id: str, doc: Mapping[str, Any], groups: Iterable[str] = ()) -> Agent:
        """The agent a stored SCIM document (core schema and extension) describes, member
        of the groups named."""
        extension = doc.get(AGENT_EXTENSION)
        if not isinstance(extension, Mapping):
            extension = {}
        return cls(
            id=id,
            name=_text(doc.get("name")) or "",
            display_name=_text(doc.get("displayName")),
            roles=_values(doc.get("roles")),
            groups=tuple(sorted(set(groups))),
            owner=_text(extension.get(OWNER)),
            purpose=_text(extension.get(PURPOSE)),
            risk=_text(extension.get(RISK_LEVEL)),
            type=_text(extension.get(AGENT_TYPE)),
            status=_text(extension.get(STATUS)),
            model=_text(extension.get(MODEL)),
            description=_text(extension.get(DESCRIPTION)),
            callback_url=_text(extension.get(CALLBACK_URL)),
            scopes=_texts(extension.get(SCOPES)),
            labels=_labels(extension.get(LABELS)),
            minimum_acr=_text(extension.get(MINIMUM_ACR)),
        )

    @property
    def active(self) -> bool:
        """Whether the agent may be allowed anything (suspended, retired: no)."""
        return self.status == _ACTIVE

    def in_groups(self, groups: Iterable[str]) -> Agent:
        """The same agent, member of the groups named instead."""
        return dataclasses.replace(self, groups=tuple(sorted(set(groups))))

    def attributes(self) -> dict[str, Any]:
        """The agent as the request attributes policies read (``agent.risk``…).

        ``status`` is "unknown" and ``type`` "background" when the document does not say;
        ``owner``, ``purpose`` and ``risk`` are left out then; ``scopes``, ``roles`` and
        ``groups`` are always there, perhaps empty. The same dictionary each time: callers
        must not change it.
        """
        return self._attributes

    def extension(self) -> dict[str, Any]:
        """The agent extension's attributes, by their SCIM names, that the agent has."""
        labels = None if self.labels is None else [_label_document(x) for x in self.labels]
        values = {
            OWNER: self.owner,
            PURPOSE: self.purpose,
            RISK_LEVEL: self.risk,
            AGENT_TYPE: self.type,
            STATUS: self.status,
            MODEL: self.model,
            DESCRIPTION: self.description,
            CALLBACK_URL: self.callback_url,
            SCOPES: None if self.scopes is None else list(self.scopes),
            LABELS: labels,
            MINIMUM_ACR: self.minimum_acr,
        }
        return {key: value for key, value in values.items() if value is not None}


@dataclass(frozen=True)
class User:
    """A user (RFC 7643 §4.1) as the directory holds it: a person agents act for, with
    what the enterprise extension (RFC 7643 §4.3) says of them."""

    id: str
    user_name: str | None = None
    external_id: str | None = None
    display_name: str | None = None
    email: str | None = None  # the primary address, else the first
    emails: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()  # displayName of each group listing the user, sorted
    active: bool = True  # only an explicit "active": false makes a user inactive
    # The enterprise extension's strings by their SCIM names (employeeNumber, costCenter,
    # organization, division, department), and the manager's id (manager.value).
    enterprise: tuple[tuple[str, str], ...] = ()
    manager: str | None = None
    _attributes: dict[str, Any] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Built once: the decision plane reads them on every request.
        object.__setattr__(self, "_attributes", _user_attributes(self))

    @classmethod
    def from_scim(cls, id: str, doc: Mapping[str, Any], groups: Iterable[str] = ()) -> User:
        """The user a stored SCIM document describes, member of the groups named."""
        emails = [item for item in _items(doc.get("emails")) if _text(item.get("value"))]
        primary = [item for item in emails if item.get("primary") is True]
        extension = doc.get(ENTERPRISE_EXTENSION)
        if not isinstance(extension, Mapping):
            extension = {}
        manager = extension.get(MANAGER)
        return cls(
            id=id,
            user_name=_text(doc.get("userName")),
            external_id=_text(doc.get("externalId")),
            display_name=_text(doc.get("displayName")),
            email=str((primary or emails)[0]["value"]) if emails else None,
            emails=tuple(str(item["value"]) for item in emails),
            roles=_values(doc.get("roles")),
            groups=tuple(sorted(set(groups))),
            active=doc.get("active") is not False,
            enterprise=tuple(
                (name, value)
                for name in ENTERPRISE_ATTRIBUTES
                if (value := _text(extension.get(name)))
            ),
            manager=_text(manager.get("value")) if isinstance(manager, Mapping) else None,
        )

    def attributes(self) -> dict[str, Any]:
        """The user as the request attributes policies read (``user.email``…; the table
        is in docs/directory.md). An attribute the directory lacks is left out; ``emails``,
        ``roles`` and ``groups`` are always there, perhaps empty. The same dictionary each
        time: callers must not change it."""
        return self._attributes


def memberships(groups: Iterable[Mapping[str, Any]]) -> dict[str, set[str]]:
    """The names (``displayName``) of the groups each user is a member of, by user id,
    from the groups' SCIM documents (RFC 7643 §4.2)."""
    names: dict[str, set[str]] = {}
    for group in groups:
        name = _text(group.get("displayName")) or ""
        for member in _items(group.get("members")):
            names.setdefault(_text(member.get("value")) or "", set()).add(name)
    return names


def _agent_attributes(agent: Agent) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "id": agent.id,
        "name": agent.name,
        "status": agent.status or "unknown",  # refused: only "active" passes
        "type": agent.type or AgentType.background.value,
        "scopes": list(agent.scopes or ()),
        "labels": {label.key: label.value or "" for label in agent.labels or ()},
        "roles": list(agent.roles),
        "groups": list(agent.groups),
    }
    for name, value in (("owner", agent.owner), ("purpose", agent.purpose), ("risk", agent.risk)):
        if value is not None:
            attributes[name] = value
    return attributes


def _user_attributes(user: User) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "id": user.id,
        "emails": list(user.emails),
        "roles": list(user.roles),
        "groups": list(user.groups),
    }
    single = (
        ("userName", user.user_name),
        ("externalId", user.external_id),
        ("displayName", user.display_name),
        ("email", user.email),
        *user.enterprise,
        (MANAGER, user.manager),
    )
    # SCIM counts "" as a value; a policy asking `user has department` does not.
    attributes.update((name, value) for name, value in single if value)
    return attributes


def _label_document(label: Label) -> dict[str, str]:
    if label.value is None:
        return {"key": label.key}
    return {"key": label.key, "value": label.value}


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _texts(value: Any) -> tuple[str, ...] | None:
    """A multi-valued string attribute's strings; None when it is not a list."""
    if not isinstance(value, list | tuple):
        return None
    return tuple(item for item in value if isinstance(item, str))


def _values(value: Any) -> tuple[str, ...]:
    """The ``value`` strings of a multi-valued complex attribute (``roles``), in order."""
    return tuple(str(item["value"]) for item in _items(value) if _text(item.get("value")))


def _items(value: Any) -> list[Mapping[str, Any]]:
    """A multi-valued complex attribute's values (RFC 7643 §2.4); anything else holds none."""
    if not isinstance(value, list | tuple):
        return []
    return [item for item in value if isinstance(item, Mapping)]


def _labels(value: Any) -> tuple[Label, ...] | None:
    if not isinstance(value, list | tuple):
        return None
    return tuple(
        Label(item["key"], _text(item.get("value")))
        for item in _items(value)
        if isinstance(item.get("key"), str)
    )
