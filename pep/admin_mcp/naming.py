"""How every tool names an agent: by its directory id or by its name (case-insensitive).

One resolver for every tool that takes an agent, in two reaches:

- :meth:`AgentNames.now`, for the tools that act on or read an agent as it is (get_agent,
  list_consents, simulate_request, every write): the agents the directory holds now;
- :meth:`AgentNames.ever`, for the tools that read the audit trails (query_decisions,
  what_if_policy_change, list_alerts, compliance_report): also the agents it held before,
  deleted or renamed since, because their decisions stay on the trails. The trail tools
  also find an id the directory never held but the trail does (a PEP asked for an agent
  the decision point refused as unknown): :class:`OnTrail`.

A text that names no agent is refused ("no agent named or with id 'x'"), never answered
with nothing; a text that names more than one agent (one's name now and another's before,
or one's id and another's name) is refused with their ids, so the administrator can pick.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass

from issuer.store import Change, NotFound, Record, Store
from pdp.audit.query import Filters, records
from pep.admin_mcp.errors import AdminError

KIND = "Agent"
TRAIL = "agent"  # where every agent a PEP asked about is recorded


class UnknownAgent(AdminError):
    """No agent has the id or the name a tool was given."""


@dataclass(frozen=True)
class OnTrail:
    """An agent as a trail tool filters by it: its id, and when the directory never held
    it, the refusal to answer should the trail hold nothing of it either."""

    id: str
    unknown: UnknownAgent | None = None

    def known(self, store: Store, found: int) -> None:
        """Refuse, as an unknown agent, one the directory never held when a search found
        ``found`` (none) of its entries and the agent trail holds none either."""
        if self.unknown is None or found:
            return
        if not any(True for _ in records(store, TRAIL, Filters(agent=self.id))):
            raise self.unknown


class AgentNames:
    """Agents by id or name, over one store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def now(self, text: str) -> Record:
        """The agent the directory holds now with this id or name; AdminError when none
        or several do."""
        given = _given(text)
        found: dict[str, Record] = {}
        with suppress(NotFound):
            record = self.store.get(KIND, given)
            found[record.id] = record
        with suppress(NotFound):
            record = self.store.find(KIND, "name", given.casefold())
            found[record.id] = record
        if not found:
            raise UnknownAgent(f"no agent named or with id {given!r}; list_agents shows the agents")
        if len(found) > 1:
            raise _ambiguous(given, {i: f"named {_name(r.data)!r}" for i, r in found.items()})
        return next(iter(found.values()))

    def ever(self, text: str) -> str:
        """The id of the agent the directory holds or held with this id or name, now or
        before; AdminError when none or several did."""
        given = _given(text)
        wanted = given.casefold()
        matches: dict[str, str] = {}  # id -> its name now, or "deleted"
        for agent_id, history in self._histories().items():
            names = {_name(change.data).casefold() for change in history if change.data}
            if agent_id == given or wanted in names:
                last = history[-1]
                matches[agent_id] = "deleted" if last.data is None else f"now {_name(last.data)!r}"
        if not matches:
            raise UnknownAgent(
                f"no agent named or with id {given!r}, now or before; list_agents shows the agents"
            )
        if len(matches) > 1:
            raise _ambiguous(given, matches)
        return next(iter(matches))

    def on_trail(self, text: str | None) -> OnTrail | None:
        """The agent a trail tool filters by (None: every agent): one the directory holds
        or held (:meth:`ever`), or else the text itself as an id the trail may hold."""
        if text is None:
            return None
        try:
            return OnTrail(self.ever(text))
        except UnknownAgent as unknown:
            return OnTrail(text, unknown)

    def _histories(self) -> dict[str, list[Change]]:
        """Every agent's changes, oldest first, from the change log."""
        histories: dict[str, list[Change]] = {}
        for change in _changes(self.store):
            if change.kind == KIND:
                histories.setdefault(change.id, []).append(change)
        return histories


def _given(text: str) -> str:
    if not text or not text.strip():
        raise AdminError("name the agent by its id or its name")
    return text


def _name(data: dict[str, object] | None) -> str:
    return str((data or {}).get("name") or "")


def _ambiguous(given: str, agents: dict[str, str]) -> AdminError:
    listed = ", ".join(f"{agent_id} ({about})" for agent_id, about in sorted(agents.items()))
    return AdminError(f"{given!r} names more than one agent: {listed}; name it by its id")


def _changes(store: Store) -> Iterator[Change]:
    after = 0
    while page := store.changes(after):
        yield from page
        after = page[-1].seq
