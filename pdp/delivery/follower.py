"""Follows the alert and admin trails into the webhook outbox.

One replica runs it (an :class:`~pdp.audit.exclusive.Exclusive` job). For each trail it
keeps a cursor in the store; each page of entries becomes events (one per webhook
endpoint) added to the outbox in the same transaction that moves the cursor, so a restart
resumes where the last holder stopped, and nothing is lost or added twice. On its first
start a follower begins at the trail's head: what happened before webhooks were configured
is not sent.

While reading, it verifies each trail's hash chain: a break becomes a
``dev.tessera.audit.chain_broken`` event. The outbox is bounded (``webhook_queue``
events pending); past the bound a page's events are dropped, counted in
``tessera_webhook_dropped_total`` and logged (the trails still hold what they tell of).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

import orjson
from prometheus_client import Counter

from issuer.keys import KIND as SIGNING_KEY
from issuer.store import AuditEntry, NotFound, OutboxEvent, Store
from pdp.audit.chain import verify
from pdp.delivery.cloudevents import (
    KEY_ROTATED,
    Event,
    alert_event,
    chain_event,
    change_event,
    suspended,
)

log = logging.getLogger("tessera.delivery")

TRAILS = ("alert", "admin")
PAGE = 500
POLL = 0.25  # seconds between looks at the trails once caught up (bounds stop())


class EventFollower:
    """Turns new alert and admin trail entries into outbox rows until :meth:`stop`."""

    def __init__(
        self,
        store: Store,
        targets: Sequence[str],
        source: str,
        bound: int,
        dropped: Counter | None = None,
    ) -> None:
        self.store = store
        self.targets = tuple(targets)
        self.source = source
        self.bound = bound
        self.dropped = dropped
        self._last: dict[str, AuditEntry | None] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="webhook-events", daemon=True)

    def start(self) -> None:
        for trail in TRAILS:  # a first start begins at the head
            if self.store.cursor(_cursor(trail)) is None:
                tail = self.store.audit_tail(trail)
                self.store.move_cursor(_cursor(trail), 0 if tail is None else tail.seq)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=POLL + 5)

    def catch_up(self) -> int:
        """Add the events of every entry not read yet; how many entries were read."""
        read = 0
        for trail in TRAILS:
            while not self._stop.is_set():
                page = self._page(trail)
                if not page:
                    break
                self._add(trail, page)
                read += len(page)
        return read

    def _page(self, trail: str) -> list[AuditEntry]:
        position = self.store.cursor(_cursor(trail)) or 0
        if trail not in self._last:  # the entry the chain is verified from
            before = self.store.audit(trail, position - 1, 1) if position else []
            self._last[trail] = before[0] if before else None
        return self.store.audit(trail, position, PAGE)

    def _add(self, trail: str, page: list[AuditEntry]) -> None:
        events = [
            chain_event(trail, p.seq, p.message, _at(page, p.seq))
            for p in verify(page, self._last[trail])
        ]
        for entry in page:
            event = self._event(trail, entry)
            if event is not None:
                events.append(event)
        now = int(time.time() * 1000)
        rows = [
            OutboxEvent(0, event.id, target, event.body(self.source).decode(), now)
            for event in events
            for target in self.targets
        ]
        dropped = self.store.add_events(
            rows, cursor=_cursor(trail), position=page[-1].seq, bound=self.bound
        )
        self._last[trail] = page[-1]
        if dropped:
            log.warning(
                "the webhook outbox holds %d events or more: dropped %d (tessera_webhook_"
                "dropped_total); the %s trail still holds what they tell of",
                self.bound,
                dropped,
                trail,
            )
            if self.dropped is not None:
                self.dropped.inc(dropped)

    def _event(self, trail: str, entry: AuditEntry) -> Event | None:
        try:
            record = orjson.loads(entry.record)
        except orjson.JSONDecodeError:
            return None  # the chain check reports it
        if not isinstance(record, dict):
            return None
        if trail == "alert":
            return alert_event(entry.seq, record) if record.get("kind") == "alert" else None
        before = self._before(record) if suspended(record.get("data")) else None
        event = change_event(entry.seq, record, before)
        if event is not None and event.type == KEY_ROTATED:
            event = dataclasses.replace(event, data={**event.data, **self._key(event.subject)})
        return event

    def _before(self, record: dict[str, Any]) -> dict[str, Any] | None:
        """The document of the changed resource at the version before this change."""
        resource = record.get("resource") or {}
        version = record.get("version")
        if resource.get("type") != "Agent" or not isinstance(version, int) or version < 2:
            return None
        for change in self.store.history("Agent", str(resource.get("id"))):
            if change.version == version - 1:
                return change.data
        return None

    def _key(self, id_: str) -> dict[str, Any]:
        """The public facts of a signing key: its kid and algorithm."""
        try:
            data = self.store.get(SIGNING_KEY, id_).data
        except NotFound:
            return {}
        return {"kid": data.get("kid"), "alg": data.get("alg")}

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.catch_up()
            except Exception:
                log.exception("cannot follow the trails for webhook events; retrying")
                self._stop.wait(1.0)
                continue
            self._stop.wait(POLL)


def _cursor(trail: str) -> str:
    return f"webhooks.{trail}"


def _at(page: list[AuditEntry], seq: int) -> str:
    for entry in page:
        if entry.seq == seq:
            return entry.at.isoformat()
    return page[-1].at.isoformat()
