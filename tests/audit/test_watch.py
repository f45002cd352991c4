"""Anomaly detection in its own process: the watcher beside tessera serve, one per store,
gone with its parent; the server counts the alerts it raises."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from issuer.store import open_store
from pdp.audit.baselines import AnomalyThresholds
from pdp.audit.watch import AlertCounter, Watcher
from pdp.audit.writer import AuditWriter
from tests.audit.test_anomaly import WAIT, alerts, append, at, decision, eventually

ROOT = Path(__file__).resolve().parents[2]


def burst(agent: str) -> list[dict[str, Any]]:
    """Twelve denied calls within a minute: privilege probing."""
    return [decision(at(10, 0, i), agent=agent, tool=f"tool{i}", allow=False) for i in range(12)]


def test_two_watchers_on_one_store_raise_each_alert_once_and_stop_on_sigterm(url: str) -> None:
    store = open_store(url)
    watchers = [Watcher(url, AnomalyThresholds()) for _ in range(2)]
    for watcher in watchers:
        watcher.start()
    try:
        writer = AuditWriter(store)
        append(writer, burst("prober"))
        writer.close(WAIT)
        found = eventually(lambda: alerts(store) or None, "a denials alert")
        more = burst("prober-2")
        writer = AuditWriter(store)
        append(writer, more)
        writer.close(WAIT)
        eventually(lambda: len(alerts(store)) >= 2 or None, "the second agent's alert")
        stored = alerts(store)
    finally:
        for watcher in watchers:
            watcher.stop()
        store.close()
    assert [(a["alert"], a["agent"]) for a in stored] == [
        ("denials", "prober"),
        ("denials", "prober-2"),
    ]
    assert found[0]["source_seq"] == 10
    assert [w.process.returncode for w in watchers if w.process] == [0, 0]


PARENT = """
import sys, time
from pdp.audit.baselines import AnomalyThresholds
from pdp.audit.watch import Watcher
watcher = Watcher(sys.argv[1], AnomalyThresholds())
watcher.start()
print(watcher.process.pid, flush=True)
time.sleep(60)
"""


def test_a_watcher_whose_parent_is_killed_stops(url: str) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, url], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait(WAIT)

    def gone() -> bool | None:  # exited: no process, or one nobody has reaped yet
        try:
            state = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        return True if state in ("Z", "X") else None

    eventually(gone, "the orphaned watcher to stop")


def test_the_alert_counter_counts_new_alerts_by_kind(url: str) -> None:
    store = open_store(url)
    writer = AuditWriter(store)
    try:
        writer.write("alert", {"kind": "alert", "alert": "rate"})  # before: not counted
        counter = Counter("alerts", "alerts", ["alert"], registry=CollectorRegistry())
        counting = AlertCounter(store, counter, poll=0.01)
        counting.start()
        for kind in ("denials", "denials", "new_tool"):
            writer.write("alert", {"kind": "alert", "alert": kind})

        def counted(kind: str) -> float:
            return float(counter.labels(kind)._value.get())

        eventually(lambda: counted("new_tool") == 1 or None, "the alerts counted")
        counting.stop()
        assert (counted("denials"), counted("new_tool"), counted("rate")) == (2, 1, 0)
    finally:
        writer.close(WAIT)
        store.close()
