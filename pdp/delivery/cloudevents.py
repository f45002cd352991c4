"""The events webhooks receive: CloudEvents 1.0 in structured mode, made from the trails.

Each event is one JSON object with the CloudEvents attributes (``specversion``, ``id``,
``source``, ``type``, ``time``, ``subject``, ``datacontenttype``) and ``data``. An event's
id is made from the trail entry it tells of (``alert-17``, ``admin-42``,
``chain-agent-9``): the same entry always makes the same id, whichever replica reads
it, so a receiver can drop a repeat by its id.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from issuer.agents import AGENT_EXTENSION
from issuer.keys import KIND as SIGNING_KEY

SPECVERSION = "1.0"
ANOMALY = "dev.tessera.alert.anomaly"
SUSPENDED = "dev.tessera.agent.suspended"
KEY_ROTATED = "dev.tessera.key.rotated"
CHAIN_BROKEN = "dev.tessera.audit.chain_broken"
TYPES = (ANOMALY, SUSPENDED, KEY_ROTATED, CHAIN_BROKEN)
MEDIA_TYPE = "application/cloudevents+json"


@dataclass(frozen=True)
class Event:
    """One event before it is sent: its id, type, subject, time and data."""

    id: str
    type: str
    subject: str
    time: str
    data: dict[str, Any]

    def body(self, source: str) -> bytes:
        """The event as the JSON body a webhook receives."""
        return orjson.dumps(
            {
                "specversion": SPECVERSION,
                "id": self.id,
                "source": source,
                "type": self.type,
                "time": self.time,
                "subject": self.subject,
                "datacontenttype": "application/json",
                "data": self.data,
            }
        )


def alert_event(seq: int, record: dict[str, Any]) -> Event:
    """An anomaly alert of the alert trail (entry ``seq``)."""
    return Event(f"alert-{seq}", ANOMALY, str(record.get("agent")), str(record["at"]), record)


def suspended(data: dict[str, Any] | None) -> bool:
    """Whether an agent's SCIM document says it is suspended (status, or active false)."""
    if data is None:
        return False
    extension = data.get(AGENT_EXTENSION)
    status = extension.get("status") if isinstance(extension, dict) else None
    return status == "suspended" or data.get("active") is False


def change_event(seq: int, record: dict[str, Any], before: dict[str, Any] | None) -> Event | None:
    """The event an admin-trail change (entry ``seq``) makes, if any: an agent that
    became suspended (``before`` is its document at the version before), or a new
    signing key (a rotation)."""
    resource = record.get("resource") or {}
    kind, id_ = resource.get("type"), str(resource.get("id"))
    data = {k: record.get(k) for k in ("op", "actor", "version", "change_seq", "at")}
    became = suspended(record.get("data")) and not suspended(before)
    if kind == "Agent" and record.get("op") != "delete" and became:
        return Event(f"admin-{seq}", SUSPENDED, id_, str(record["at"]), {**data, "agent": id_})
    if kind == SIGNING_KEY and record.get("op") == "create":
        return Event(f"admin-{seq}", KEY_ROTATED, id_, str(record["at"]), {**data, "key": id_})
    return None


def chain_event(trail: str, seq: int, message: str, at: str) -> Event:
    """A break in the chain of ``trail`` found at entry ``seq``."""
    data = {"trail": trail, "seq": seq, "problem": message}
    return Event(f"chain-{trail}-{seq}", CHAIN_BROKEN, f"{trail}/{seq}", at, data)
