"""``tessera audit verify | query | export``: exit codes, output, filters.

The trails are written through the :class:`AuditWriter` (records with chosen ``at``
times), then tampered with directly in the database where a test needs a broken chain.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

import psycopg
import pytest

from issuer.store import open_store
from pdp.audit.chain import canonical
from pdp.audit.writer import AuditWriter
from pep.cli import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def decision(
    decision_id: str,
    at: str,
    agent: str,
    tool: str,
    allow: bool,
    user: str | None = None,
    resource_type: str = "tool",
) -> dict[str, Any]:
    return {
        "kind": "decision",
        "at": at,
        "decision_id": decision_id,
        "agent": agent,
        "user": user,
        "delegation": [],
        "action": "tool.call",
        "resource": {"type": resource_type, "id": tool},
        "context": {},
        "allow": allow,
        "decided_by": ["agents.read_only"] if allow else [],
        "obligations": [],
        "reasons": [],
        "bundle_version": "sha256:test",
        "pep": "ipv4:127.0.0.1:50000",
        "latency_us": 12.5,
    }


AGENT_TRAIL = [
    decision("d1", "2026-11-28T09:00:00+00:00", "pay-bot", "payments.transfer", False, "alice"),
    decision("d2", "2026-11-28T10:00:00Z", "pay-bot", "search", True),
    decision("d3", "2026-11-28T11:30:00+00:00", "helper", "search", True, "bob"),
    decision("d4", "2026-11-28T12:00:00+01:00", "helper", "rm -rf", False),  # 11:00 UTC
    decision("d5", "2026-11-29T08:00:00+00:00", "pay-bot", "payments.transfer", True, "alice"),
    decision("d6", "2026-11-28T10:30:00+00:00", "helper", "search", False, resource_type="table"),
    decision("d7", "not a time", "pay-bot", "search", True),
]
ADMIN_TRAIL = [
    {"kind": "scim", "at": "2026-11-28T09:30:00+00:00", "actor": "root", "op": "create"},
    {"kind": "scim", "at": "2026-11-28T09:45:00+00:00", "actor": "root", "op": "delete"},
]


@pytest.fixture
def seeded(url: str) -> str:
    """A store whose agent trail holds AGENT_TRAIL (seq 1…7) and admin trail ADMIN_TRAIL."""
    store = open_store(url)
    writer = AuditWriter(store)
    try:
        for record in AGENT_TRAIL:
            writer.write("agent", record)
        for record in ADMIN_TRAIL:
            writer.write("admin", record)
    finally:
        writer.close()
        store.close()
    return url


def execute(url: str, statement: str, parameters: Sequence[Any] = ()) -> None:
    """Run one statement straight on the store's database (``?`` placeholders)."""
    if url.startswith("sqlite:"):
        with closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as db:
            db.execute(statement, parameters)
            db.commit()
        return
    with psycopg.connect(url, autocommit=True) as db:
        db.execute(statement.replace("?", "%s"), parameters)


def seqs(out: str) -> list[int]:
    return [int(line.split()[0]) for line in out.splitlines()]


# ------------------------------------------------------------------ verify


def test_verify_on_an_intact_trail_says_it_verifies_and_exits_0(
    capsys: pytest.CaptureFixture[str], seeded: str
) -> None:
    code, out, err = run(capsys, "audit", "verify", "--store", seeded)
    assert (code, err) == (0, "")
    assert out == "the agent trail verifies: 7 entries, chain intact; no signed checkpoint yet\n"
    code, out, _ = run(capsys, "audit", "verify", "--store", seeded, "--trail", "admin")
    assert code == 0
    assert out == "the admin trail verifies: 2 entries, chain intact; no signed checkpoint yet\n"


def test_verify_on_an_empty_store_verifies_no_entries(
    capsys: pytest.CaptureFixture[str], url: str
) -> None:
    open_store(url).close()
    code, out, _ = run(capsys, "audit", "verify", "--store", url)
    assert code == 0
    assert "verifies: 0 entries" in out


def test_verify_names_a_record_changed_in_the_database_and_exits_1(
    capsys: pytest.CaptureFixture[str], seeded: str
) -> None:
    forged = canonical({**AGENT_TRAIL[1], "allow": False})
    execute(seeded, "UPDATE audit SET record = ? WHERE trail = 'agent' AND seq = 2", [forged])
    code, out, _ = run(capsys, "audit", "verify", "--store", seeded)
    assert code == 1
    assert out.splitlines() == [
        "agent trail, entry 2: its content was changed (hash mismatch)",
        "the agent trail is BROKEN: 1 problem(s)",
    ]


def test_verify_names_a_deleted_entry_and_exits_1(
    capsys: pytest.CaptureFixture[str], seeded: str
) -> None:
    execute(seeded, "DELETE FROM audit WHERE trail = 'agent' AND seq = 3")
    code, out, _ = run(capsys, "audit", "verify", "--store", seeded)
    assert code == 1
    assert out.splitlines() == [
        "agent trail, entry 4: entry 3 is missing (deleted)",
        "agent trail, entry 4: does not link to the entry before it "
        "(inserted, deleted or reordered)",
        "the agent trail is BROKEN: 2 problem(s)",
    ]


def test_tampering_with_one_trail_leaves_the_other_verifying(
    capsys: pytest.CaptureFixture[str], seeded: str
) -> None:
    execute(seeded, "UPDATE audit SET hash = ? WHERE trail = 'agent' AND seq = 7", ["0" * 64])
    assert run(capsys, "audit", "verify", "--store", seeded)[0] == 1
    assert run(capsys, "audit", "verify", "--store", seeded, "--trail", "admin")[0] == 0


# ------------------------------------------------------------------ query


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ((), [1, 2, 3, 4, 5, 6, 7]),
        (("--agent", "pay-bot"), [1, 2, 5, 7]),
        (("--agent", "nobody"), []),
        (("--user", "alice"), [1, 5]),
        (("--decision", "deny"), [1, 4, 6]),
        (("--decision", "allow"), [2, 3, 5, 7]),
        (("--tool", "search"), [2, 3, 7]),  # not the table named search
        (("--tool", "payments.transfer"), [1, 5]),
        (("--since", "2026-11-28T11:00:00Z"), [3, 4, 5]),  # inclusive; 12:00+01:00 is 11:00Z
        (("--until", "2026-11-28T10:00:00Z"), [1]),  # exclusive
        (("--since", "2026-11-28T10:00:00Z", "--until", "2026-11-28T11:30:00Z"), [2, 4, 6]),
        (("--since", "2026-11-28T11:00:00+01:00"), [2, 3, 4, 5, 6]),
        (("--agent", "pay-bot", "--decision", "deny"), [1]),
        (("--agent", "helper", "--tool", "search", "--decision", "allow"), [3]),
    ],
)
def test_query_lists_the_records_that_match_every_filter_oldest_first(
    capsys: pytest.CaptureFixture[str],
    seeded: str,
    flags: tuple[str, ...],
    expected: list[int],
) -> None:
    code, out, err = run(capsys, "audit", "query", "--store", seeded, *flags)
    assert (code, err) == (0, "")
    assert seqs(out) == expected


def test_query_shows_seq_time_verdict_agent_action_resource_and_decision_id(
    capsys: pytest.CaptureFixture[str], seeded: str
) -> None:
    code, out, _ = run(capsys, "audit", "query", "--store", seeded, "--decision", "deny")
    assert code == 0
    first = out.splitlines()[0].split()
    assert first == [
        "1",
        "2026-11-28T09:00:00",
        "deny",
        "pay-bot",
        "tool.call",
        "tool:payments.transfer",
        "d1",
    ]


def test_query_reads_the_admin_trail_when_asked(
    capsys: pytest.CaptureFixture[str], seeded: str
) -> None:
    flags = ("--trail", "admin", "--since", "2026-11-28T09:40Z")
    code, out, _ = run(capsys, "audit", "query", "--store", seeded, *flags)
    assert code == 0
    assert seqs(out) == [2]


# ------------------------------------------------------------------ export


def test_export_prints_each_record_as_one_json_line_with_its_trail_and_seq(
    capsys: pytest.CaptureFixture[str], seeded: str
) -> None:
    code, out, _ = run(capsys, "audit", "export", "--store", seeded)
    assert code == 0
    lines = [json.loads(line) for line in out.splitlines()]
    assert lines == [
        {"trail": "agent", "seq": seq, **record} for seq, record in enumerate(AGENT_TRAIL, 1)
    ]


def test_export_applies_the_filters_and_the_trail(
    capsys: pytest.CaptureFixture[str], seeded: str
) -> None:
    code, out, _ = run(capsys, "audit", "export", "--store", seeded, "--decision", "deny")
    assert code == 0
    assert [(r["seq"], r["decision_id"]) for r in map(json.loads, out.splitlines())] == [
        (1, "d1"),
        (4, "d4"),
        (6, "d6"),
    ]
    code, out, _ = run(capsys, "audit", "export", "--store", seeded, "--trail", "admin")
    assert [json.loads(line) for line in out.splitlines()] == [
        {"trail": "admin", "seq": seq, **record} for seq, record in enumerate(ADMIN_TRAIL, 1)
    ]


# ------------------------------------------------------------------ usage errors


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--since", "yesterday", "tessera audit: --since: 'yesterday' is not an RFC 3339 time"),
        ("--until", "2026-13-01T00:00:00Z", "--until: '2026-13-01T00:00:00Z' is not an RFC 3339"),
        ("--since", "2026-11-28T10:00:00", "--since: '2026-11-28T10:00:00' needs a time zone"),
    ],
)
def test_a_bad_time_is_a_usage_error_naming_the_flag(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, flag: str, value: str, message: str
) -> None:
    store = f"sqlite:///{tmp_path}/t.db"
    for action in ("query", "export"):
        code, out, err = run(capsys, "audit", action, "--store", store, flag, value)
        assert (code, out) == (2, "")
        assert message in err


def test_an_unknown_store_url_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "audit", "verify", "--store", "mysql://nope")
    assert code == 2
    assert err.startswith("tessera audit: ")


def test_an_unknown_decision_or_trail_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    store = f"sqlite:///{tmp_path}/t.db"
    for flags in (("--decision", "maybe"), ("--trail", "billing")):
        with pytest.raises(SystemExit) as stopped:
            main(["audit", "query", "--store", store, *flags])
        assert stopped.value.code == 2
        assert "invalid choice" in capsys.readouterr().err
