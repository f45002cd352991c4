"""Webhooks: trail entries become signed CloudEvents, retried, dead-lettered, claimed once."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import orjson
from prometheus_client import CollectorRegistry, Counter

from issuer.agents import AGENT_EXTENSION
from issuer.store import Store
from pdp.audit.writer import AuditWriter
from pdp.delivery.follower import EventFollower
from pdp.delivery.signature import HEADER, verify
from pdp.delivery.webhooks import Retries, Sender
from tests.delivery.receivers import receiver

SECRET = "a-shared-secret-of-32-characters"
QUICK = Retries(max_attempts=3, max_age=60.0, backoff=0.05, timeout=2.0)


def alert(agent: str) -> dict[str, object]:
    return {"kind": "alert", "at": "2025-01-01T00:00:00+00:00", "alert": "rate", "agent": agent}


@contextmanager
def delivering(
    store: Store, url: str, retries: Retries = QUICK
) -> Iterator[tuple[AuditWriter, CollectorRegistry]]:
    """A writer onto the trails, the follower into the outbox and a sender to ``url``."""
    registry = CollectorRegistry()
    deliveries = Counter("tessera_webhook_deliveries", "", ["outcome"], registry=registry)
    dead = Counter("tessera_webhook_dead_letters", "", registry=registry)
    writer = AuditWriter(store)
    follower = EventFollower(store, [url], "/tessera", 100)
    sender = Sender(store, SECRET, retries, deliveries, dead)
    follower.start()
    sender.start()
    try:
        yield writer, registry
    finally:
        sender.stop()
        follower.stop()
        writer.close()


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def test_an_alert_arrives_as_a_cloudevent_signed_by_the_documented_recipe(store: Store) -> None:
    with receiver() as got, delivering(store, got.url) as (writer, _):
        writer.write("alert", alert("agent-1"))
        [(headers, body)] = got.wait_for(1)
    assert verify(SECRET, body, headers[HEADER.lower()], int(time.time()))
    assert not verify("another-secret-of-32-characters!", body, headers[HEADER.lower()], 0)
    forged = headers[HEADER.lower()].split("v1=")[0] + "v1=" + "é" * 64  # any text: False
    assert not verify(SECRET, body, forged, int(time.time()))
    assert headers["content-type"].startswith("application/cloudevents+json")
    event = orjson.loads(body)
    assert event["specversion"] == "1.0"
    assert event["type"] == "dev.tessera.alert.anomaly"
    assert event["subject"] == "agent-1"
    assert event["id"] == "alert-1"
    assert event["data"]["alert"] == "rate"
    assert {"source", "time", "datacontenttype"} <= event.keys()


def test_a_receiver_that_fails_first_gets_the_event_once_after_the_retry(store: Store) -> None:
    with receiver([500]) as got, delivering(store, got.url) as (writer, registry):
        writer.write("alert", alert("agent-1"))
        got.wait_for(1)
        time.sleep(0.3)  # room for a wrong second delivery to show
    assert got.tried == 2 and len(got.posts) == 1
    assert value(registry, "tessera_webhook_deliveries_total", outcome="retry") == 1
    assert value(registry, "tessera_webhook_deliveries_total", outcome="delivered") == 1
    assert store.outbox_counts() == (0, 0)


def test_an_event_is_a_dead_letter_after_its_attempts_counted_in_metrics(store: Store) -> None:
    with receiver([500, 500, 500, 500]) as got, delivering(store, got.url) as (writer, registry):
        writer.write("alert", alert("agent-1"))
        deadline = time.monotonic() + 30
        while store.outbox_counts() != (0, 1) and time.monotonic() < deadline:
            time.sleep(0.05)
    assert got.tried == 3 and got.posts == []
    assert store.outbox_counts() == (0, 1)
    assert value(registry, "tessera_webhook_dead_letters_total") == 1
    assert value(registry, "tessera_webhook_deliveries_total", outcome="dead_letter") == 1


def test_an_agent_suspended_in_the_directory_is_an_event(store: Store) -> None:
    from pdp.audit.changes import ChangeAuditor

    agent = {AGENT_EXTENSION: {"status": "active"}, "name": "payer"}
    with receiver() as got, delivering(store, got.url) as (writer, _):
        auditor = ChangeAuditor(store, writer)
        auditor.start()
        try:
            made = store.create("Agent", agent, unique={}, actor="admin")
            suspended = {**agent, AGENT_EXTENSION: {"status": "suspended"}}
            store.replace("Agent", made.id, suspended, unique={}, expected_version=1, actor="a")
            [(_, body)] = got.wait_for(1)
        finally:
            auditor.stop()
    event = orjson.loads(body)
    assert event["type"] == "dev.tessera.agent.suspended"
    assert event["subject"] == made.id


def test_a_changed_trail_entry_is_a_chain_broken_event(store: Store) -> None:
    writer = AuditWriter(store)
    writer.write("alert", alert("agent-1"))
    writer.close()
    with receiver() as got, delivering(store, got.url) as (writer, _):
        [entry] = store.audit("alert", 0, 1)
        forged = type(entry)(2, entry.at, entry.record, "f" * 64, entry.hash)
        store.append_audit("alert", [forged])
        posts = got.wait_for(2)
    types = sorted(orjson.loads(body)["type"] for _, body in posts)
    assert "dev.tessera.audit.chain_broken" in types
