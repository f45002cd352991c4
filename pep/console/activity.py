"""What the agent and alert trails say of agents lately, read by sequence number.

The trails are read from their tail backwards by seq (the trail's index), never whole:
at most :data:`RECENT` entries of each, a :data:`CHUNK` at a time until a page is full,
so a page costs the same however long a deployment has run. An agent's activity (its
last decision, its decisions of today in UTC, its newest decisions) is read through the
agent trail's index by agent and time (:mod:`issuer.store.listing`), for the agents a
page shows only.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from issuer.store import Store

RECENT = 20_000  # entries of a trail read from its tail, at most
CHUNK = 500  # entries read at once when reading a trail backwards
AGENT_TRAIL = "agent"
ALERT_TRAIL = "alert"


@dataclass
class Activity:
    """One agent's recent decisions: when last seen, and today's allows and denies."""

    last_seen: str = ""
    allowed_today: int = 0
    denied_today: int = 0
    recent: list[dict[str, Any]] = field(default_factory=list)

    @property
    def today(self) -> int:
        return self.allowed_today + self.denied_today

    @property
    def ratio(self) -> str:
        """Allows to denies today, as the list shows it."""
        return f"{self.allowed_today}:{self.denied_today}" if self.today else "–"


def tail(store: Store, trail: str, limit: int = RECENT) -> Iterator[tuple[int, dict[str, Any]]]:
    """The newest ``limit`` entries of a trail as (seq, record), oldest first."""
    last = store.audit_tail(trail)
    if last is None:
        return
    for entry in store.audit(trail, after=max(0, last.seq - limit), limit=limit):
        yield entry.seq, json.loads(entry.record)


def today_start() -> datetime:
    """Midnight (UTC) of today: where "decisions today" start."""
    return datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def activities(store: Store, agents: list[str]) -> dict[str, Activity]:
    """The activity of each of ``agents`` (a page of the list, at most 500), read
    through the agent trail's index by agent and time, not from the trail's tail."""
    found = store.agent_activity(agents, today_start())
    return {
        agent: Activity(last.isoformat(), allowed, denied)
        for agent, (last, allowed, denied) in found.items()
    }


def activity(store: Store, agent: str, recent: int = 20) -> Activity:
    """One agent's activity, with its newest ``recent`` decisions (newest first)."""
    seen = activities(store, [agent]).get(agent, Activity())
    entries = store.agent_decisions(agent, recent)
    seen.recent = [{"seq": e.seq, **json.loads(e.record)} for e in entries]
    return seen


def newest(
    store: Store, trail: str, wanted: Callable[[dict[str, Any]], bool], limit: int
) -> tuple[list[tuple[int, dict[str, Any]]], int]:
    """The newest ``limit`` entries of a trail that are ``wanted``, newest first, read
    backwards a :data:`CHUNK` at a time and never further than :data:`RECENT` entries
    back; and the trail's last seq (0 when empty)."""
    last = store.audit_tail(trail)
    if last is None:
        return [], 0
    found: list[tuple[int, dict[str, Any]]] = []
    end = last.seq
    while end > max(0, last.seq - RECENT) and len(found) < limit:
        start = max(0, end - CHUNK, last.seq - RECENT)
        chunk = store.audit(trail, after=start, limit=end - start)
        for entry in reversed(chunk):
            record = json.loads(entry.record)
            if wanted(record):
                found.append((entry.seq, record))
        end = start
    return found[:limit], last.seq


def alerts(store: Store, agent: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
    """The newest alerts (of one agent, when named), newest first."""
    found, _ = newest(store, ALERT_TRAIL, lambda r: agent is None or r.get("agent") == agent, limit)
    return [{"seq": seq, **record} for seq, record in found]
