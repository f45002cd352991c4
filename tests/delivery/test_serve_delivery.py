"""``tessera serve`` delivers webhooks from its store: nothing lost across a restart, and
each event delivered once by replicas sharing PostgreSQL."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import httpx
import orjson
import pytest

from issuer.models import AGENT_EXTENSION, AGENT_SCHEMA
from issuer.store import open_store
from tests.delivery.receivers import receiver
from tests.serve.test_scale_out import TOKEN, replica
from tests.stores import postgres_schema

SECRET = "a-shared-secret-of-32-characters"
EXTENSION = {"owner": "finance", "riskLevel": "low", "purpose": "payments"}


def provision(scim: str, name: str = "payer") -> str:
    """A new active agent named ``name``; its id."""
    document = {
        "schemas": [AGENT_SCHEMA, AGENT_EXTENSION],
        "name": name,
        AGENT_EXTENSION: EXTENSION,
    }
    headers = {"Authorization": f"Bearer {TOKEN}"}
    created = httpx.post(f"{scim}/Agents", headers=headers, json=document, timeout=10)
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


def suspend(scim: str, agent: str) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    document = httpx.get(f"{scim}/Agents/{agent}", headers=headers, timeout=10).json()
    document[AGENT_EXTENSION]["status"] = "suspended"
    put = httpx.put(f"{scim}/Agents/{agent}", headers=headers, json=document, timeout=10)
    assert put.status_code == 200, put.text


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def configure(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("TESSERA_WEBHOOKS", url)
    monkeypatch.setenv("TESSERA_WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv("TESSERA_WEBHOOK_BACKOFF", "0.2")


def test_a_receiver_down_across_a_restart_gets_the_event_after_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = f"sqlite:///{tmp_path}/tessera.db"
    port = free_port()
    configure(monkeypatch, f"http://127.0.0.1:{port}/hook")
    with replica(store) as first:
        agent = provision(first.scim)
        suspend(first.scim, agent)
        outbox = open_store(store)
        deadline = time.monotonic() + 30
        while outbox.outbox_counts() != (1, 0) and time.monotonic() < deadline:
            time.sleep(0.1)  # until the event waits in the outbox, its receiver down
        assert outbox.outbox_counts() == (1, 0), [e.record for e in outbox.audit("admin")]
        outbox.close()
    with receiver(port=port) as got, replica(store):
        [(_, body)] = got.wait_for(1)
    event = orjson.loads(body)
    assert (event["type"], event["subject"]) == ("dev.tessera.agent.suspended", agent)


def test_two_replicas_on_postgresql_deliver_each_event_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with receiver() as got, postgres_schema() as store:
        configure(monkeypatch, got.url)
        with replica(store) as one, replica(store) as two:
            agents = [provision(one.scim, f"agent-{n}") for n in range(6)]
            for n, agent in enumerate(agents):
                suspend((one, two)[n % 2].scim, agent)
            got.wait_for(len(agents))
            time.sleep(1.0)  # room for a second delivery to show
    subjects = sorted(orjson.loads(body)["subject"] for _, body in got.posts)
    assert subjects == sorted(agents)
