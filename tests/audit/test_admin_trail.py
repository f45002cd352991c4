"""The admin trail follows the change log: every change, chained, without secrets."""

from __future__ import annotations

import json
import time
from typing import Any

from issuer.catalog import CATALOG
from issuer.store import Store
from pdp.audit.changes import ChangeAuditor
from pdp.audit.query import entries, verify_trail
from pdp.audit.writer import AuditWriter


def admin_records(store: Store) -> list[dict[str, Any]]:
    return [json.loads(e.record) for e in entries(store, "admin")]


def settle(store: Store, count: int) -> list[dict[str, Any]]:
    """The admin records once there are ``count`` of them (bounded wait)."""
    deadline = time.monotonic() + 10
    while True:
        records = admin_records(store)
        if len(records) >= count or time.monotonic() > deadline:
            return records
        time.sleep(0.02)


def test_every_change_reaches_the_admin_trail_with_its_actor_and_no_password(
    store: Store,
) -> None:
    writer = AuditWriter(store)
    auditor = ChangeAuditor(store, writer)
    auditor.start()
    try:
        user = store.create(
            "User", {"userName": "bj", "password": "scrypt$x"}, unique={}, actor="admin-1"
        )
        store.create("Client", {"secret_hash": "sha256$y"}, unique={}, actor="admin-2")
        store.delete("User", user.id, expected_version=None, actor="admin-1")
        records = settle(store, 3)
    finally:
        auditor.stop()
        writer.close()
    assert [(r["op"], r["resource"], r["actor"]) for r in records] == [
        ("create", {"type": "User", "id": user.id}, "admin-1"),
        ("create", {"type": "Client", "id": records[1]["resource"]["id"]}, "admin-2"),
        ("delete", {"type": "User", "id": user.id}, "admin-1"),
    ]
    assert records[0]["data"] == {"userName": "bj"}
    assert "data" not in records[1]
    text = json.dumps(records)
    assert "scrypt$x" not in text and "sha256$y" not in text
    assert verify_trail(store, "admin") == (3, [])


def test_a_restarted_follower_resumes_after_the_last_recorded_change(store: Store) -> None:
    store.create("Group", {"displayName": "a"}, unique={}, actor="admin")
    writer = AuditWriter(store)
    first = ChangeAuditor(store, writer)
    assert first.catch_up() == 1
    writer.close()
    store.create("Group", {"displayName": "b"}, unique={}, actor="admin")
    writer = AuditWriter(store)
    second = ChangeAuditor(store, writer)
    assert second.catch_up() == 1  # only the new change
    writer.close()
    records = admin_records(store)
    assert [r["change_seq"] for r in records] == [1, 2]
    assert verify_trail(store, "admin") == (2, [])


def test_a_catalog_entrys_change_reaches_the_admin_trail_with_its_content(store: Store) -> None:
    writer = AuditWriter(store)
    auditor = ChangeAuditor(store, writer)
    auditor.start()
    entry = {"type": "record", "id": "101", "properties": {"owner": "bob"}}
    try:
        store.put(CATALOG, {"record/101": entry}, actor="admin-1")
        records = settle(store, 1)
    finally:
        auditor.stop()
        writer.close()
    assert records[0]["resource"] == {"type": CATALOG, "id": "record/101"}
    assert records[0]["actor"] == "admin-1"
    assert records[0]["data"] == entry  # who handed record 101 to bob, and when
