"""Past decisions read back from the agent trail: a decision record by its id, the request
it was made on, rebuilt, and a replayer that decides such requests again.

A decision record keeps who asked (ids), the action, the resource's type and id, the
context and the answer (see docs/audit.md). The rest of a request is rebuilt: the agent's
attributes as the directory held them when the decision was made (from the change log),
the user's roles and groups as they are now, and the user's consents either as the
record keeps them or as they are now. A record about a subject that is no agent (``agent``
null) keeps the subject as the caller named it: a person is rebuilt as the directory
holds them now, and a person it does not hold, or a subject of a declared type, with no
attributes but its id (the record does not keep the properties sent). The resource's
attributes come from the resource catalog, as the decision point's do.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from issuer.agents import Agent
from issuer.store import Change, Store
from pdp.audit.query import Filters, records
from pdp.catalog import Resources
from pdp.counters import MemoryCounters
from pdp.directory import Directory
from pdp.engine import Bundle, Engine
from pdp.model import Request, RequestError
from pdp.request import request_from_json
from pdp.subjects import PERSONS

TRAIL = "agent"


def find_decision(store: Store, decision_id: str) -> tuple[int, dict[str, Any]] | None:
    """The agent-trail entry (seq, record) of a decision, by its decision id."""
    for seq, record in records(store, TRAIL, Filters()):
        if record.get("kind") == "decision" and record.get("decision_id") == decision_id:
            return seq, record
    return None


class Replay:
    """Rebuilds the request of an agent-trail decision record."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.directory = Directory(store)
        self.directory.load()
        self._histories: dict[str, list[Change]] = {}

    def agent_at(self, agent_id: str, at: datetime | None) -> Agent | None:
        """The agent as the directory held it at ``at``, or None; in the groups that list
        it now (the change log of an agent does not say which groups listed it then)."""
        if agent_id not in self._histories:
            self._histories[agent_id] = self.store.history("Agent", agent_id)
        state: dict[str, Any] | None = None
        for change in self._histories[agent_id]:
            if at is not None and change.at > at:
                break
            state = change.data
        if state is None:
            return None
        now = self.directory.agent_record(agent_id)
        return Agent.from_scim(agent_id, state, now.groups if now is not None else ())

    def request(
        self, record: Mapping[str, Any], *, recorded_consents: bool = False
    ) -> dict[str, Any] | str:
        """The request JSON, or why the directory refused it at the time. The user's
        consents are the record's with ``recorded_consents`` (a record keeps those the
        decision saw, and none when there were none), else the directory's now."""
        if record.get("agent") is None:
            return self._other_subject(record, recorded_consents=recorded_consents)
        at = record_time(record.get("at"))
        agent_id = str(record.get("agent") or "")
        agent = self.agent_at(agent_id, at)
        chain = [str(actor) for actor in record.get("delegation") or ()]
        for who, actor in [("agent", agent_id)] + [("delegating agent", a) for a in chain]:
            known = agent if actor == agent_id else self.agent_at(actor, at)
            if known is None:
                return f"{who} {actor!r} was not in the directory"
            if not known.active:
                return f"{who} {actor!r} was {known.attributes()['status']}"
        assert agent is not None
        consents: list[str] | None = None
        if not recorded_consents:
            user_id = record.get("user")
            identities = self.directory.resolve(agent_id, str(user_id)) if user_id else None
            granted = identities.consents if identities and not isinstance(identities, str) else ()
            consents = list(granted)
        return self._completed(agent.attributes(), record, chain, consents)

    def request_now(self, record: Mapping[str, Any]) -> dict[str, Any] | str:
        """The recorded request with the agent, the user and the consents as the directory
        holds them now, or why the decision point would refuse it now."""
        if record.get("agent") is None:
            known = self.directory.person(str(record.get("user") or ""))
            if known is not None and not known.active:
                return f"user {known.id!r} is not active"
            return self._other_subject(record, recorded_consents=False)
        user_id = record.get("user")
        chain = [str(actor) for actor in record.get("delegation") or ()]
        identities = self.directory.resolve(
            str(record.get("agent") or ""), None if user_id is None else str(user_id), chain
        )
        if isinstance(identities, str):
            return identities
        return self._completed(identities.agent, record, chain, list(identities.consents))

    def person(self, record: Mapping[str, Any]) -> dict[str, Any] | None:
        """The attributes of the person a record about a person is for, as the directory
        holds them now; None when it does not hold them (or the record is about no one)."""
        user_id = record.get("user")
        return self.directory.user(str(user_id)) if user_id else None

    def _other_subject(
        self, record: Mapping[str, Any], *, recorded_consents: bool
    ) -> dict[str, Any] | str:
        """The request JSON of a record about a subject that is no agent (as
        ``DecisionPoint._other_subject`` decides it): a person the directory holds with
        its attributes now, else the subject alone; nobody's consents but the record's
        with ``recorded_consents`` (the consent store holds an agent's)."""
        subject = record.get("subject")
        if not isinstance(subject, dict):
            return "the record names neither an agent nor another subject"
        context = dict(record.get("context") or {})
        context["consents"] = context.get("consents", []) if recorded_consents else []
        data: dict[str, Any] = {
            "subject": {"type": subject.get("type"), "id": subject.get("id")},
            "action": record.get("action"),
            "resource": dict(record.get("resource") or {}),
            "context": context,
        }
        if subject.get("type") in PERSONS and record.get("user"):
            data["user"] = self.person(record) or {"id": str(record["user"])}
        return data

    def _completed(
        self,
        agent: dict[str, Any],
        record: Mapping[str, Any],
        chain: list[str],
        consents: list[str] | None,
    ) -> dict[str, Any] | str:
        """The request JSON of ``record`` with ``agent``'s attributes, the user's as they
        are now, and ``consents`` (None: as recorded)."""
        context = dict(record.get("context") or {})
        context["consents"] = context.get("consents", []) if consents is None else consents
        data: dict[str, Any] = {
            "agent": agent,
            "action": record.get("action"),
            "resource": dict(record.get("resource") or {}),
            "context": context,
        }
        user_id = record.get("user")
        if user_id:
            user = self.directory.user(str(user_id))
            if user is None:
                return f"user {user_id!r} is not in the directory"
            data["user"] = user
        if chain:
            data["delegation"] = {"chain": chain}
        return data


def rebuilt(asked: dict[str, Any], bundle: Bundle, resources: Resources) -> Request | str:
    """``asked`` typed by the bundle's schema with the resource's attributes it does not
    send from the resource catalog (as the decision point fills them), or why the
    directory refuses it (a catalog entry that does not fit the schema). RequestError when
    the schema does not accept the request."""
    return resources.request(request_from_json(asked, bundle.schema))


class Replayer:
    """Decides replayed requests with one bundle: its own limit counters, each decision at
    its recorded time, the resource catalog of the bundle and the directory's store."""

    def __init__(self, bundle: Bundle, directory: Directory | None = None) -> None:
        self.bundle = bundle
        self.resources = Resources(bundle, directory)
        self.now = 0.0
        self.engine = Engine(bundle, MemoryCounters(), clock=lambda: self.now)

    def decide(self, asked: dict[str, Any] | str, record: Mapping[str, Any]) -> dict[str, Any]:
        try:
            typed = asked if isinstance(asked, str) else rebuilt(asked, self.bundle, self.resources)
        except RequestError as exc:
            return {"decision": "invalid", "decided_by": [], "reasons": [str(exc)]}
        if isinstance(typed, str):
            return {"decision": "deny", "decided_by": ["directory"], "reasons": [typed]}
        self.now = record_epoch(record.get("at"))
        decision = self.engine.decide(typed)
        answer = decision.to_json()
        return {
            "decision": answer["decision"],
            "decided_by": answer["decided_by"],
            "reasons": answer["reasons"],
            "obligations": [o["text"] for o in answer["obligations"]],
        }


def record_time(value: Any) -> datetime | None:
    """A record's ``at`` as a time, or None when it reads as none."""
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def record_epoch(value: Any) -> float:
    """A record's ``at`` in epoch seconds (0 when it reads as no time)."""
    at = record_time(value)
    return at.timestamp() if at is not None else 0.0
