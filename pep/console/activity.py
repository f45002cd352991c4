"""What the agent and alert trails say of agents lately, read by sequence number.

The trails are read from their tail backwards by seq (the trail's index), never whole:
at most :data:`RECENT` entries of each, so a page costs the same however long a
deployment has run. Counts for "today" (UTC) are of the decisions within that window.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from issuer.store import Store

RECENT = 20_000  # entries of a trail read from its tail, at most
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


def activities(store: Store, keep: str | None = None, keep_recent: int = 20) -> dict[str, Activity]:
    """Each agent's activity from the agent trail's tail; for agent ``keep``, its newest
    ``keep_recent`` decisions too (newest first)."""
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    found: dict[str, Activity] = {}
    for seq, record in tail(store, AGENT_TRAIL):
        agent = record.get("agent")
        if record.get("kind") != "decision" or not isinstance(agent, str):
            continue
        seen = found.setdefault(agent, Activity())
        at = str(record.get("at", ""))
        seen.last_seen = max(seen.last_seen, at)
        if at.startswith(today):
            if record.get("allow"):
                seen.allowed_today += 1
            else:
                seen.denied_today += 1
        if agent == keep:
            seen.recent.append({"seq": seq, **record})
    if keep is not None and keep in found:
        found[keep].recent = found[keep].recent[::-1][:keep_recent]
    return found


def alerts(store: Store, agent: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
    """The newest alerts (of one agent, when named), newest first."""
    found = [
        {"seq": seq, **record}
        for seq, record in tail(store, ALERT_TRAIL)
        if agent is None or record.get("agent") == agent
    ]
    return found[::-1][:limit]
