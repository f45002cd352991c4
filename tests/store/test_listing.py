"""The console's indexed reads: searched, sorted pages; several ids at once; an agent's
activity and newest decisions from the agent trail's index."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from issuer.agents import AGENT_EXTENSION
from issuer.store import AuditEntry, Store, open_store, schema

AGENTS = [
    ("beta", "ops", "high", "active"),
    ("Alpha", "finance", "low", "suspended"),
    ("gamma_x", "ops", "critical", "active"),
    ("delta", "Finance", "medium", "active"),
]


def _agents(store: Store) -> dict[str, str]:
    ids = {}
    for name, owner, risk, status in AGENTS:
        extension = {"owner": owner, "riskLevel": risk, "status": status, "purpose": "p"}
        data = {"name": name, AGENT_EXTENSION: extension}
        ids[name] = store.create("Agent", data, unique={}, actor="t").id
    return ids


def _names(found: tuple[int, list]) -> list[str]:  # type: ignore[type-arg]
    return [record.data["name"] for record in found[1]]


def test_a_page_is_sorted_searched_and_cut_in_the_store(store: Store) -> None:
    _agents(store)
    store.create("User", {"name": "aaa"}, unique={}, actor="t")  # another kind: not listed
    assert _names(store.search("Agent", "", "name", False, 10, 0)) == [
        "Alpha", "beta", "delta", "gamma_x"
    ]  # fmt: skip
    by_risk = store.search("Agent", "", "riskLevel", True, 10, 0)
    assert _names(by_risk) == ["gamma_x", "beta", "delta", "Alpha"]  # by rank, not by text
    assert _names(store.search("Agent", "", "name", True, 2, 1)) == ["delta", "beta"]
    total, _ = store.search("Agent", "FINANCE", "owner", False, 10, 0)
    assert total == 2  # case-insensitive
    assert _names(store.search("Agent", "a_x", "name", False, 10, 0)) == ["gamma_x"]
    assert store.search("Agent", "%", "name", False, 10, 0)[0] == 0  # wildcards are literal
    with pytest.raises(ValueError, match="cannot sort by"):
        store.search("Agent", "", "purpose", False, 10, 0)


def test_many_ids_are_read_at_once(store: Store) -> None:
    ids = _agents(store)
    found = store.get_many("Agent", [ids["beta"], "no such id", ids["delta"], ids["beta"]])
    assert {record.data["name"] for record in found.values()} == {"beta", "delta"}
    assert set(found) == {ids["beta"], ids["delta"]}


def _decision(n: int, agent: str, allow: bool, at: datetime) -> AuditEntry:
    record = {"kind": "decision", "agent": agent, "allow": allow, "n": n}
    return AuditEntry(n, at, json.dumps(record), "0" * 64, "0" * 64, agent)


def test_activity_counts_today_and_finds_the_newest_decisions(store: Store) -> None:
    now = datetime.now(UTC)
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    yesterday = midnight - timedelta(hours=1)
    token = {"kind": "token", "agent": "a1"}
    entries = [
        _decision(1, "a1", True, yesterday),
        _decision(2, "a1", True, now),
        _decision(3, "a1", False, now),
        _decision(4, "a2", True, yesterday),
        AuditEntry(5, now + timedelta(seconds=1), json.dumps(token), "0" * 64, "0" * 64),
        _decision(6, "a3", False, now),
    ]
    store.append_audit("agent", entries)
    alert = {"kind": "alert", "agent": "a1"}  # kept without its agent, as the writer does
    store.append_audit("alert", [AuditEntry(1, now, json.dumps(alert), "0" * 64, "0" * 64)])
    found = store.agent_activity(["a1", "a2", "nobody"], midnight)
    assert set(found) == {"a1", "a2"}
    assert found["a1"][1:] == (1, 1)  # one allowed and one denied today; the token is none
    assert found["a1"][0] == now  # its newest decision, not the later token
    assert found["a2"] == (yesterday, 0, 0)
    newest = store.agent_decisions("a1", 2)
    assert [entry.seq for entry in newest] == [3, 2]
    assert store.agent_decisions("nobody", 5) == []


def test_the_indexed_fields_are_the_agent_extensions() -> None:
    assert schema.AGENT_EXTENSION == AGENT_EXTENSION


def test_the_migration_finds_the_agent_of_each_decision_written_before(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as patched:
        ours = next(n for n, m in enumerate(schema.MIGRATIONS) if "audit_by_agent" in str(m))
        patched.setattr(schema, "MIGRATIONS", schema.MIGRATIONS[:ours])  # the ones before
        before = open_store(url)
        now = datetime.now(UTC)
        rows = [("decision", "a1"), ("token", "a1"), ("decision", "a2")]
        with before._transaction(write=True, changes=False) as cur:  # type: ignore[attr-defined]
            for n, (kind, agent) in enumerate(rows, start=1):
                cur.execute(
                    "INSERT INTO audit (trail, seq, at, record, prev_hash, hash)"
                    " VALUES ('agent', ?, ?, ?, ?, ?)",
                    (
                        n,
                        schema.time_text(now),
                        json.dumps({"kind": kind, "agent": agent}),
                        "0",
                        "0",
                    ),
                )
        before.close()
    after = open_store(url)
    try:
        assert [entry.seq for entry in after.agent_decisions("a1", 5)] == [1]
        assert [entry.seq for entry in after.agent_decisions("a2", 5)] == [3]
    finally:
        after.close()
