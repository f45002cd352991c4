"""Reading the audit trails: filtered records, and verification of a whole trail."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from issuer.store import AuditEntry, Store
from pdp.audit.chain import Problem, verify

PAGE = 5_000


def entries(store: Store, trail: str) -> Iterator[AuditEntry]:
    """Every entry of a trail, in seq order, read page by page."""
    after = 0
    while True:
        page = store.audit(trail, after, PAGE)
        yield from page
        if len(page) < PAGE:
            return
        after = page[-1].seq


def verify_trail(store: Store, trail: str) -> tuple[int, list[Problem]]:
    """(entries read, every break of the chain) for one trail."""
    problems: list[Problem] = []
    count = 0
    previous: AuditEntry | None = None
    page: list[AuditEntry] = []
    for entry in entries(store, trail):
        page.append(entry)
        count += 1
        if len(page) == PAGE:
            problems += verify(page, previous)
            previous, page = page[-1], []
    problems += verify(page, previous)
    return count, problems


@dataclass(frozen=True)
class Filters:
    agent: str | None = None
    user: str | None = None
    decision: bool | None = None
    tool: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    @classmethod
    def parse(
        cls,
        *,
        agent: str | None,
        user: str | None,
        decision: str | None,
        tool: str | None,
        since: str | None,
        until: str | None,
    ) -> Filters:
        """Filters from command-line text; ValueError naming a bad time."""
        return cls(
            agent,
            user,
            None if decision is None else decision == "allow",
            tool,
            _time(since, "--since"),
            _time(until, "--until"),
        )

    def match(self, record: dict[str, Any]) -> bool:
        resource = record.get("resource") or {}
        at = _record_time(record.get("at")) if (self.since or self.until) else None
        return (
            (self.agent is None or record.get("agent") == self.agent)
            and (self.user is None or record.get("user") == self.user)
            and (self.decision is None or record.get("allow") is self.decision)
            and (
                self.tool is None
                or (resource.get("type") == "tool" and resource.get("id") == self.tool)
            )
            and (self.since is None or (at is not None and at >= self.since))
            and (self.until is None or (at is not None and at < self.until))
        )


def records(store: Store, trail: str, filters: Filters) -> Iterator[tuple[int, dict[str, Any]]]:
    """(seq, record) of every entry that matches, oldest first."""
    for entry in entries(store, trail):
        record = json.loads(entry.record)
        if filters.match(record):
            yield entry.seq, record


def _time(text: str | None, where: str) -> datetime | None:
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{where}: {text!r} is not an RFC 3339 time") from None
    if value.tzinfo is None:
        raise ValueError(f"{where}: {text!r} needs a time zone (e.g. Z)")
    return value


def _record_time(value: Any) -> datetime | None:
    """A record's time; None (no time filter matches) when it has none that reads as one."""
    if not isinstance(value, str):
        return None
    try:
        return _time(value, "at")
    except ValueError:
        return None
