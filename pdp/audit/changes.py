"""The admin trail: every change people make to the directory and the issuer, chained.

The store's change log already records each create, replace and delete with its actor
(SCIM provisioning, client registration, API keys, users' consents…). A thread follows it
and appends one admin-trail record per change, so those changes get the trail's tamper
evidence. Each record carries the change's seq; on start the follower resumes after the
last one the trail holds, so a restart neither skips nor repeats a change.

Secrets never reach the trail: only the directory's own documents (agents, groups, users
without their password) and the resource catalog's entries are copied; for everything
else the record names the change without its content.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

from issuer.catalog import CATALOG
from issuer.store import Change, Store
from pdp.audit.writer import AuditWriter

log = logging.getLogger("tessera.audit")

TRAIL = "admin"
WAIT = 0.5  # seconds one wait on the change feed may block (bounds stop())
_COPIED = {"Agent", "Group", "User", CATALOG}


def change_record(change: Change) -> dict[str, Any]:
    """The admin-trail record of one change."""
    record: dict[str, Any] = {
        "kind": "change",
        "at": change.at.isoformat(),
        "change_seq": change.seq,
        "op": change.op,
        "resource": {"type": change.kind, "id": change.id},
        "actor": change.actor,
        "version": change.version,
    }
    if change.kind in _COPIED and change.data is not None:
        record["data"] = {k: v for k, v in change.data.items() if k != "password"}
    return record


class ChangeAuditor:
    """Follows the change log onto the admin trail until :meth:`stop`."""

    def __init__(self, store: Store, writer: AuditWriter) -> None:
        self.store = store
        self.writer = writer
        tail = store.audit_tail(TRAIL)
        self.last = int(json.loads(tail.record).get("change_seq", 0)) if tail else 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="admin-trail", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=WAIT + 5)

    def catch_up(self) -> int:
        """Queue every change after the last one recorded; how many."""
        count = 0
        while True:
            changes = self.store.changes(self.last)
            if not changes:
                return count
            for change in changes:
                self.writer.submit(TRAIL, change_record(change))
                self.last = change.seq
            count += len(changes)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.catch_up()
                self.store.wait_for_change(self.last, WAIT)
            except Exception:
                log.exception("cannot follow the change log onto the admin trail; retrying")
                self._stop.wait(1.0)
