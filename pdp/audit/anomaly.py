"""Anomaly alerts: a thread follows the agent trail and appends alerts to the alert trail.

The detector reads the agent trail's decisions in seq order and feeds them to
:class:`~pdp.audit.baselines.Baselines` (per-agent baselines; what each alert means is
documented there). Each alert it raises is appended to the ``alert`` trail, chained like
every trail, and counted in ``tessera_audit_alerts_total{alert=...}``.

Each alert names the agent-trail entry that raised it (``source_seq``). The baselines read
no clock, so reading the same records again gives the same alerts: after a restart the
detector rebuilds its baselines from the agent trail, keeps quiet up to the highest
``source_seq`` the alert trail holds (raising, for that entry, only the alerts not stored
yet), and appends alerts from there on. No alert is repeated or skipped, as long as the
thresholds are the same.

The writer does not wake followers of the agent trail, so the detector looks for new
entries every :data:`POLL` seconds when it has caught up.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

import orjson
from prometheus_client import Counter

from issuer.store import Store
from pdp.audit.baselines import ALERTS, AnomalyThresholds, Baselines
from pdp.audit.writer import AuditWriter

__all__ = ["ALERTS", "AnomalyDetector", "AnomalyThresholds"]

log = logging.getLogger("tessera.audit")

SOURCE = "agent"
TRAIL = "alert"
PAGE = 5_000
POLL = 0.25  # seconds between looks at the agent trail once caught up (bounds stop())


class AnomalyDetector:
    """Follows the agent trail onto the alert trail until :meth:`stop`."""

    def __init__(
        self,
        store: Store,
        writer: AuditWriter,
        thresholds: AnomalyThresholds | None = None,
        counter: Counter | None = None,
    ) -> None:
        self.store = store
        self.writer = writer
        self.baselines = Baselines(thresholds)
        self.counter = counter
        self.position = 0  # the last agent-trail seq read
        self.raised = 0  # alerts appended by this detector
        self._resume: tuple[int, set[str]] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="anomaly-alerts", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=POLL + 5)

    def catch_up(self) -> list[dict[str, Any]]:
        """Read every agent-trail entry not read yet; the alerts queued for the trail."""
        if self._resume is None:
            self._resume = self._resume_point()
        last, stored = self._resume
        queued: list[dict[str, Any]] = []
        while not self._stop.is_set():
            page = self.store.audit(SOURCE, self.position, PAGE)
            for entry in page:
                try:
                    record = orjson.loads(entry.record)
                except orjson.JSONDecodeError:
                    record = None
                alerts = (
                    self.baselines.observe(record, entry.seq) if isinstance(record, dict) else []
                )
                if entry.seq < last:
                    alerts = []  # raised and stored before a restart
                elif entry.seq == last:
                    alerts = [a for a in alerts if a["alert"] not in stored]
                for alert in alerts:
                    self.writer.submit(TRAIL, alert)
                    if self.counter is not None:
                        self.counter.labels(alert["alert"]).inc()
                queued += alerts
                self.position = entry.seq
            if len(page) < PAGE:
                break
        self.raised += len(queued)
        return queued

    def _resume_point(self) -> tuple[int, set[str]]:
        """(the highest source_seq on the alert trail, the kinds stored for it)."""
        tail = self.store.audit_tail(TRAIL)
        if tail is None:
            return 0, set()
        last = _source_seq(tail.record)
        # one entry raises at most one alert of each kind
        recent = self.store.audit(TRAIL, max(tail.seq - len(ALERTS), 0), len(ALERTS))
        stored = {
            str(json.loads(e.record).get("alert")) for e in recent if _source_seq(e.record) == last
        }
        return last, stored

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.catch_up()
            except Exception:
                log.exception("cannot follow the agent trail for anomaly alerts; retrying")
                self._stop.wait(1.0)
                continue
            self._stop.wait(POLL)


def _source_seq(text: str) -> int:
    try:
        value = json.loads(text).get("source_seq", 0)
    except (ValueError, AttributeError):
        return 0
    return value if isinstance(value, int) else 0
