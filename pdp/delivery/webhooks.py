"""Delivers the outbox's events to webhooks: signed, retried with backoff, dead-lettered.

Every replica runs a :class:`Sender`. It claims due events in the store for
:attr:`Sender.lease` milliseconds (no other replica takes them meanwhile), POSTs each to
its endpoint with the :mod:`~pdp.delivery.signature` header, and then:

- a 2xx answer: the event is delivered and leaves the outbox;
- anything else (another status, a refused connection, a timeout): tried again after
  ``backoff × 2^(attempts - 1)`` seconds (at most :data:`MAX_DELAY`), until
  ``max_attempts`` attempts were made or ``max_age`` seconds passed since the event was
  added; then it stays in the outbox as a dead letter, never tried again.

Each outcome is counted in ``tessera_webhook_deliveries_total{outcome=delivered|retry|
dead_letter}``, and dead letters also in ``tessera_webhook_dead_letters_total``. Delivery
is at least once: a replica that dies after the receiver answered and before the row is
deleted leaves it to be sent again once its claim runs out; receivers drop repeats by the
event's ``id``.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import httpx
from prometheus_client import Counter

from issuer.store import OutboxEvent, Store
from pdp.delivery.cloudevents import MEDIA_TYPE
from pdp.delivery.signature import HEADER, signature

log = logging.getLogger("tessera.delivery")

BATCH = 4  # events claimed at once: a stop leaves at most these claimed for a lease
POLL = 0.2  # seconds between looks at the outbox when nothing is due (bounds stop())
MAX_DELAY = 300.0  # the longest wait between two attempts


@dataclass(frozen=True)
class Retries:
    """How long an event is tried: attempts, total time and the first delay (seconds)."""

    max_attempts: int = 8
    max_age: float = 3600.0
    backoff: float = 1.0
    timeout: float = 5.0  # one attempt's

    def next_due(self, event: OutboxEvent, now_ms: int) -> int | None:
        """When to try ``event`` again after its attempt failed at ``now_ms``; None: never
        (a dead letter)."""
        attempts = event.attempts + 1
        if attempts >= self.max_attempts or now_ms - event.created >= self.max_age * 1000:
            return None
        delay = min(self.backoff * 2 ** (attempts - 1), MAX_DELAY)
        return now_ms + int(delay * 1000)


class Sender:
    """Delivers due outbox events until :meth:`stop`."""

    def __init__(
        self, store: Store, secret: str, retries: Retries, deliveries: Counter, dead: Counter
    ) -> None:
        self.store = store
        self.secret = secret
        self.retries = retries
        self.deliveries = deliveries
        self.dead = dead
        self.lease = int((retries.timeout + 1) * BATCH * 1000)  # ms: the batch's attempts
        self._client = httpx.Client(timeout=retries.timeout, follow_redirects=False)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="webhook-sender", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.retries.timeout + POLL + 5)
        self._client.close()

    def send_due(self) -> int:
        """Try every event due now once; how many were tried."""
        tried = 0
        while not self._stop.is_set():
            events = self.store.claim_events(_now_ms(), self.lease, BATCH)
            for event in events:
                self._send(event)
            tried += len(events)
            if len(events) < BATCH:
                break
        return tried

    def _send(self, event: OutboxEvent) -> None:
        body = event.event.encode()
        headers = {
            "Content-Type": f"{MEDIA_TYPE}; charset=utf-8",
            HEADER: signature(self.secret, body, int(time.time())),
        }
        try:
            response = self._client.post(event.target, content=body, headers=headers)
            problem = None if response.is_success else f"HTTP {response.status_code}"
        except httpx.HTTPError as exc:
            problem = f"{type(exc).__name__}: {exc}"
        if problem is None:
            self.store.event_delivered(event.n)
            self.deliveries.labels("delivered").inc()
            return
        due = self.retries.next_due(event, _now_ms())
        self.store.event_failed(event.n, due)
        if due is None:
            self.deliveries.labels("dead_letter").inc()
            self.dead.inc()
            log.error(
                "webhook %s: event %s is a dead letter after %d attempts (%s)",
                event.target,
                event.event_id,
                event.attempts + 1,
                problem,
            )
        else:
            self.deliveries.labels("retry").inc()
            log.warning(
                "webhook %s: event %s not delivered (%s); will retry",
                event.target,
                event.event_id,
                problem,
            )

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.send_due()
            except Exception:
                log.exception("cannot deliver webhook events; retrying")
                self._stop.wait(1.0)
                continue
            self._stop.wait(POLL)


def _now_ms() -> int:
    return int(time.time() * 1000)
