"""Streams the agent trail's decisions as JSON lines: to a file, stdout or a collector.

One replica runs the :class:`DecisionLogStreamer` (an
:class:`~pdp.audit.exclusive.Exclusive` job). It reads the agent trail after its cursor
(kept in the store, so a restart resumes where the last holder stopped; a first start
begins at the trail's head), turns each decision record into a decision-log entry
(:mod:`~pdp.delivery.decision_logs`), and ships a batch when it holds ``batch`` entries
or its oldest entry has waited ``interval`` seconds. Memory is bounded by one batch: the
trail is the queue.

A batch that cannot be shipped is tried ``attempts`` times with exponential backoff
(``backoff``, doubled each time); then it is dropped, counted in
``tessera_decision_logs_dropped_total`` and logged, and the cursor moves on: the trail
still holds the decisions (``tessera audit`` reads them), and a collector that is down
for long does not hold the stream back forever.
"""

from __future__ import annotations

import gzip
import logging
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import httpx
import orjson
from prometheus_client import Counter

from issuer.store import Store
from pdp.delivery.decision_logs import decision_log

log = logging.getLogger("tessera.delivery")

TRAIL = "agent"
CURSOR = "decision-log"
POLL = 0.1  # seconds between looks at the trail once caught up (bounds stop())


class Sink(Protocol):
    def ship(self, body: bytes) -> None:
        """Write one batch of JSON lines, or raise."""


class StdoutSink:
    def ship(self, body: bytes) -> None:
        sys.stdout.buffer.write(body)
        sys.stdout.buffer.flush()


@dataclass(frozen=True)
class FileSink:
    path: Path

    def ship(self, body: bytes) -> None:
        with self.path.open("ab") as file:
            file.write(body)


class HttpSink:
    """POSTs each batch (``application/x-ndjson``, gzip-compressed when asked)."""

    def __init__(self, url: str, compress: bool, timeout: float = 10.0) -> None:
        self.url = url
        self.compress = compress
        self._client = httpx.Client(timeout=timeout)

    def ship(self, body: bytes) -> None:
        headers = {"Content-Type": "application/x-ndjson"}
        if self.compress:
            body = gzip.compress(body)
            headers["Content-Encoding"] = "gzip"
        self._client.post(self.url, content=body, headers=headers).raise_for_status()


def open_sink(where: str, compress: bool) -> Sink:
    """``stdout``, ``http(s)://...`` (a collector) or a file path (``file://`` optional)."""
    if where == "stdout":
        return StdoutSink()
    if where.startswith(("http://", "https://")):
        return HttpSink(where, compress)
    return FileSink(Path(where.removeprefix("file://")))


@dataclass(frozen=True)
class Batching:
    """When a batch ships, and how a failing one is retried."""

    size: int = 500
    interval: float = 5.0
    attempts: int = 5
    backoff: float = 1.0


class DecisionLogStreamer:
    """Ships the agent trail's decisions to ``sink`` until :meth:`stop`."""

    def __init__(
        self,
        store: Store,
        sink: Sink,
        batching: Batching,
        labels: Mapping[str, str],
        counters: tuple[Counter, Counter],
    ) -> None:
        self.store = store
        self.sink = sink
        self.batching = batching
        self.labels = dict(labels)
        self.sent, self.dropped = counters
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="decision-log", daemon=True)

    def start(self) -> None:
        if self.store.cursor(CURSOR) is None:  # a first start begins at the head
            tail = self.store.audit_tail(TRAIL)
            self.store.move_cursor(CURSOR, 0 if tail is None else tail.seq)
        self._thread.start()

    def stop(self) -> None:
        """Ship what is pending, then stop."""
        self._stop.set()
        self._thread.join(timeout=self.batching.interval + 30)

    def _run(self) -> None:
        lines: list[bytes] = []
        position = last = self.store.cursor(CURSOR) or 0
        oldest = 0.0  # monotonic time the batch's first line was read
        while True:
            stopping = self._stop.is_set()
            try:
                page = self.store.audit(TRAIL, last, self.batching.size - len(lines))
            except Exception:
                log.exception("cannot read the agent trail for the decision log; retrying")
                page = []
            for entry in page:
                record = orjson.loads(entry.record)
                if isinstance(record, dict) and record.get("kind") == "decision":
                    if not lines:
                        oldest = time.monotonic()
                    line = decision_log(record, entry.seq, self.labels)
                    lines.append(orjson.dumps(line) + b"\n")
                last = entry.seq
            full = len(lines) >= self.batching.size
            due = lines and (stopping or time.monotonic() - oldest >= self.batching.interval)
            if full or due:
                self._ship(lines)
                lines = []
            if last != position and not lines:
                self.store.move_cursor(CURSOR, last)
                position = last
            if stopping and not page:
                return
            if not page:
                self._stop.wait(POLL)

    def _ship(self, lines: list[bytes]) -> None:
        """Ship one batch: retried with backoff, then dropped (counted and logged)."""
        body = b"".join(lines)
        delay = self.batching.backoff
        for attempt in range(1, self.batching.attempts + 1):
            try:
                self.sink.ship(body)
                self.sent.inc(len(lines))
                return
            except Exception as exc:
                problem = exc
            if attempt < self.batching.attempts:
                time.sleep(delay)
                delay *= 2
        self.dropped.inc(len(lines))
        log.error(
            "dropped %d decision-log entries after %d attempts (%s); the agent trail "
            "still holds them (tessera_decision_logs_dropped_total)",
            len(lines),
            self.batching.attempts,
            problem,
        )
