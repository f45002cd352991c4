"""Anomaly detection in a process of its own, beside ``tessera serve``.

Following the agent trail costs CPU per decision (reading, parsing, baselines). In the
decision service's process it would share one interpreter lock with the hot path, so
``tessera serve`` starts :func:`main` as a child process instead: it opens the same store,
runs the :class:`~pdp.audit.anomaly.AnomalyDetector` while it holds the store's
``anomaly-detector`` lease (one replica at a time), and stops on SIGTERM or when its parent
is gone. The server counts the alerts that reach the alert trail for its metrics with an
:class:`AlertCounter`, a cheap follower (alerts are rare).

    python -m pdp.audit.watch --store URL [--thresholds JSON] [--parent PID]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence

import orjson
from prometheus_client import Counter

from issuer.store import Store, open_store
from pdp.audit.anomaly import AnomalyDetector
from pdp.audit.baselines import AnomalyThresholds
from pdp.audit.exclusive import Exclusive
from pdp.audit.writer import AuditWriter

log = logging.getLogger("tessera.audit")

TRAIL = "alert"
LEASE = "anomaly-detector"
POLL = 0.5  # seconds between looks at the parent and at the alert trail
STOP_TIMEOUT = 10.0


class Watcher:
    """The child process, seen from ``tessera serve``: started with the server's store URL
    and thresholds, stopped (SIGTERM, then SIGKILL after a timeout) with it."""

    def __init__(self, store_url: str, thresholds: AnomalyThresholds) -> None:
        self.store_url = store_url
        self.thresholds = thresholds
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pdp.audit.watch",
                "--store",
                self.store_url,
                "--thresholds",
                json.dumps(dataclasses.asdict(self.thresholds)),
                "--parent",
                str(os.getpid()),
            ],
            stdin=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT)


class AlertCounter:
    """Counts the alerts appended to the alert trail from now on, by kind, into
    ``tessera_audit_alerts_total``, until :meth:`stop`."""

    def __init__(self, store: Store, counter: Counter, poll: float = POLL) -> None:
        self.store = store
        self.counter = counter
        self.poll = poll
        tail = store.audit_tail(TRAIL)
        self.position = 0 if tail is None else tail.seq
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="alert-counter", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.poll + 5)

    def catch_up(self) -> None:
        for entry in self.store.audit(TRAIL, self.position):
            kind = orjson.loads(entry.record).get("alert")
            if isinstance(kind, str):
                self.counter.labels(kind).inc()
            self.position = entry.seq

    def _run(self) -> None:
        while not self._stop.wait(self.poll):
            try:
                self.catch_up()
            except Exception:
                log.exception("cannot count the alert trail's new alerts; retrying")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pdp.audit.watch",
        description="Follow a store's agent trail and append anomaly alerts to its alert "
        "trail (one process per store at a time holds the lease), until SIGTERM or until "
        "the parent process is gone.",
    )
    parser.add_argument("--store", required=True, metavar="URL")
    parser.add_argument("--thresholds", default="{}", metavar="JSON")
    parser.add_argument("--parent", type=int, metavar="PID", help="stop when this process is gone")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="tessera audit watch: %(message)s")
    thresholds = AnomalyThresholds(**json.loads(args.thresholds))
    parent = args.parent or os.getppid()  # given: it may die before this line runs
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    store = open_store(args.store)
    writer = AuditWriter(store)
    job = Exclusive(store, LEASE, lambda: AnomalyDetector(store, writer, thresholds))
    try:
        job.start()
        while not stopping.wait(POLL) and os.getppid() == parent:
            pass
    finally:
        job.stop()
        writer.close()
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
