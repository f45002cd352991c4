"""Compliance reports: what they say about an agent, in JSON, Markdown and HTML.

The store is filled with the real parts: agents and their changes through the store,
clients, API keys and consents through the issuer's own classes, and trail records (of
the shapes decisions, token issuance and anomaly alerts write) through the real
:class:`AuditWriter`. The HTML report is opened in headless Chromium, and the tests read
what the browser made of it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from bs4 import BeautifulSoup

from issuer.keys import KeyRing, generate, public_jwk
from issuer.oauth.api_keys import ApiKeys
from issuer.oauth.clients import ClientRegistry
from issuer.oauth.consent import Consents
from issuer.store import Record, Store
from pdp.audit.chain import canonical
from pdp.audit.checkpoints import Checkpointer
from pdp.audit.records import token_record
from pdp.audit.report import Period, ReportError, gather, to_json, to_markdown
from pdp.audit.report_formats import render
from pdp.audit.writer import AuditWriter
from pep.cli import main
from tests.audit.test_cli import decision, execute
from tests.test_directory import agent_doc

SCRIPT = "<script>document.body.setAttribute('data-pwned', 'yes')</script>"
PURPOSE = f"payments {SCRIPT}"
ISSUER = "https://issuer.example"


def agent_document(name: str, owner: str, purpose: str, risk: str, status: str) -> dict[str, Any]:
    document = agent_doc(name, owner=owner, purpose=purpose, riskLevel=risk, status=status)
    return {**document, "displayName": name.title()}


def create_agent(store: Store, name: str, **attributes: str) -> Record:
    document = agent_document(name, **attributes)
    return store.create("Agent", document, unique={"name": name}, actor="admin-ann")


def at(base: datetime, hours: float) -> str:
    return (base + timedelta(hours=hours)).isoformat()


@dataclass(frozen=True)
class Seeded:
    base: datetime  # the hour the trail records start at
    pay: str  # pay-bot's id
    helper: str
    client_id: str
    key: str  # the standing API key's prefix


def seed(store: Store) -> Seeded:
    """pay-bot with a client, two API keys (one revoked), consents, a suspension, and a
    trail of decisions, tokens and an alert; helper with one decision; decisions for an
    agent the directory never held."""
    pay = create_agent(
        store, "pay-bot", owner="finance", purpose=PURPOSE, risk="low", status="active"
    )
    helper = create_agent(
        store, "helper", owner="ops", purpose="search", risk="medium", status="active"
    )
    client = ClientRegistry(store).register(
        {
            "client_name": "Pay Bot",
            "grant_types": ["client_credentials"],
            "agent_id": pay.id,
            "scope": "payments:transfer",
        },
        actor="admin-ann",
    )
    keys = ApiKeys(store)
    key = keys.create({"agent_id": pay.id, "scope": "search"}, actor="admin-ann")
    revoked = keys.create({"agent_id": pay.id, "scope": "payments:read"}, actor="admin-ann")
    assert keys.revoke(revoked["id"], actor="admin-bob")
    consents = Consents(store)
    consents.grant("alice", client["client_id"], pay.id, ["payments:transfer"])
    consents.grant("alice", client["client_id"], pay.id, ["payments:refund"])
    bobs = consents.grant("bob", client["client_id"], pay.id, ["payments:transfer"])
    consents.revoke(bobs.id, "bob", actor="bob")
    suspended = agent_document(
        "pay-bot", owner="finance", purpose=PURPOSE, risk="medium", status="suspended"
    )
    store.replace(
        "Agent",
        pay.id,
        suspended,
        unique={"name": "pay-bot"},
        expected_version=1,
        actor="admin-bob",
    )
    base = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    claims = {
        "client_id": client["client_id"],
        "agent_id": pay.id,
        "aud": "https://payments.example/",
        "scope": "payments:transfer",
        "exp": int((base + timedelta(hours=1)).timestamp()),
    }
    trail = [
        decision("p1", at(base, 0.1), pay.id, "search", True),
        decision("p2", at(base, 0.5), pay.id, "payments.transfer", False, "alice"),
        decision("p3", at(base, 1.2), pay.id, "payments.transfer", True, "alice"),
        decision("p4", at(base, 3.5), pay.id, "fs.write", False),
        decision("p5", at(base, 3.6), pay.id, "fs.write", False),
        decision("h1", at(base, 2.0), helper.id, "search", True),
        decision("g1", at(base, 2.5), "ghost", "search", False),
        {
            **token_record("client_credentials", {**claims, "sub": pay.id, "jti": "t1"}),
            "at": at(base, 0.05),
        },
        {
            **token_record(
                "token_exchange", {**claims, "sub": "alice", "act": {"sub": pay.id}, "jti": "t2"}
            ),
            "at": at(base, 0.4),
        },
    ]
    trail[1]["delegation"] = [pay.id]
    trail[2]["delegation"] = [pay.id]
    trail[3]["reasons"] = ["forbid risky_writes"]
    trail[3]["decided_by"] = ["agents.risky_writes"]
    alert = {
        "kind": "alert",
        "at": at(base, 3.6),
        "alert": "denials",
        "agent": pay.id,
        "severity": "high",
        "message": "a burst of <b>denials</b>: privilege probing?",
        "observed": 2,
        "baseline": 0.1,
        "decision_id": "p5",
        "source_seq": 5,
    }
    writer = AuditWriter(store)
    try:
        for record in trail:
            writer.write("agent", record)
        writer.write("alert", alert)
        for done in Checkpointer(store, writer, KeyRing(store), ISSUER).checkpoint():
            done.result(10)
    finally:
        writer.close()
    return Seeded(base, pay.id, helper.id, client["client_id"], f"tsk_{key['id']}")


@pytest.fixture
def seeded(store: Store) -> Seeded:
    return seed(store)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# ------------------------------------------------------------------ what the report says


def test_the_json_report_states_the_agents_identity_and_its_status_history(
    store: Store, seeded: Seeded
) -> None:
    report = to_json(gather(store, agent=seeded.pay))
    assert report["format"] == "tessera.report/1"
    assert report["scope"] == "agent"
    [agent] = report["agents"]
    assert {k: agent[k] for k in ("id", "name", "owner", "purpose", "risk", "status")} == {
        "id": seeded.pay,
        "name": "pay-bot",
        "owner": "finance",
        "purpose": PURPOSE,
        "risk": "medium",
        "status": "suspended",
    }
    assert agent["deleted"] is False
    assert [
        (s["op"], s["actor"], s["version"], s["status"], s["risk"]) for s in agent["status_history"]
    ] == [
        ("create", "admin-ann", 1, "active", "low"),
        ("replace", "admin-bob", 2, "suspended", "medium"),
    ]


def test_the_report_lists_credentials_without_secrets_and_counts_tokens_by_grant(
    store: Store, seeded: Seeded
) -> None:
    report = to_json(gather(store, agent="pay-bot"))
    [agent] = report["agents"]
    credentials = {c["id"]: c for c in agent["credentials"]}
    client = credentials[seeded.client_id]
    assert (client["kind"], client["name"], client["auth_method"], client["scope"]) == (
        "client",
        "Pay Bot",
        "client_secret_basic",
        "payments:transfer",
    )
    assert client["grant_types"] == ["client_credentials"]
    keys = [c for c in agent["credentials"] if c["kind"] == "api_key"]
    assert [(k["scope"], k["revoked_by"]) for k in keys] == [
        ("search", None),
        ("payments:read", "admin-bob"),
    ]
    assert keys[0]["id"] == seeded.key
    assert keys[1]["revoked_at"] is not None and keys[0]["expires_at"] is not None
    assert agent["tokens"] == {"client_credentials": 1, "token_exchange": 1}
    assert "sha256$" not in json.dumps(report) and '"hash"' not in json.dumps(report)


def test_the_report_shows_delegations_and_consents_with_their_history(
    store: Store, seeded: Seeded
) -> None:
    [agent] = to_json(gather(store, agent=seeded.pay))["agents"]
    [delegation] = agent["delegations"]
    assert delegation["user"] == "alice"
    assert delegation["chain"] == [seeded.pay]
    assert (delegation["tokens"], delegation["decisions"]) == (1, 2)
    assert delegation["first"] < delegation["last"]
    assert [(c["user"], c["client"], c["scopes"]) for c in agent["consents"]] == [
        ("alice", seeded.client_id, ["payments:refund", "payments:transfer"])
    ]
    assert [(c["op"], c["user"], c["scopes"], c["actor"]) for c in agent["consent_history"]] == [
        ("granted", "alice", ["payments:transfer"], "alice"),
        ("widened", "alice", ["payments:refund", "payments:transfer"], "alice"),
        ("granted", "bob", ["payments:transfer"], "bob"),
        ("revoked", "bob", ["payments:transfer"], "bob"),
    ]


def test_the_report_counts_decisions_per_hour_and_lists_denials_newest_first(
    store: Store, seeded: Seeded
) -> None:
    report = to_json(gather(store, agent=seeded.pay))
    [agent] = report["agents"]
    assert report["unit"] == "hour"
    decisions = agent["decisions"]
    assert (decisions["total"], decisions["allowed"], decisions["denied"]) == (5, 2, 3)
    timeline = [(b["allowed"], b["denied"]) for b in decisions["timeline"]]
    assert timeline == [(1, 1), (1, 0), (0, 0), (0, 2)]
    assert decisions["timeline"][0]["start"] == seeded.base.isoformat().replace("+00:00", "Z")
    assert [d["decision_id"] for d in agent["denials"]] == ["p5", "p4", "p2"]
    assert agent["denials"][1]["reasons"] == ["forbid risky_writes"]
    assert agent["denials"][1]["decided_by"] == ["agents.risky_writes"]
    assert agent["denials"][2]["user"] == "alice"
    assert [(d["action"], d["resource"], d["count"]) for d in agent["most_denied"]] == [
        ("tool.call", "tool:fs.write", 2),
        ("tool.call", "tool:payments.transfer", 1),
    ]
    [alert] = agent["alerts"]
    assert (alert["alert"], alert["severity"], alert["observed"], alert["decision_id"]) == (
        "denials",
        "high",
        2,
        "p5",
    )


def test_the_report_states_that_every_trail_verifies(store: Store, seeded: Seeded) -> None:
    verification = to_json(gather(store, agent=seeded.pay))["verification"]
    assert verification["intact"] is True
    assert [
        (t["trail"], t["entries"], t["checkpoints"], t["vouched"], t["intact"])
        for t in verification["trails"]
    ] == [
        ("agent", 9, 1, 9, True),
        ("admin", 0, 0, 0, True),
        ("alert", 1, 1, 1, True),
        ("checkpoint", 2, 0, 0, True),
    ]


def test_a_period_keeps_only_what_happened_in_it(store: Store, seeded: Seeded) -> None:
    period = Period(seeded.base + timedelta(hours=1), seeded.base + timedelta(hours=3, minutes=35))
    report = to_json(gather(store, agent=seeded.pay, period=period))
    [agent] = report["agents"]
    assert (agent["decisions"]["total"], agent["decisions"]["denied"]) == (2, 1)  # p3, p4
    assert [b["allowed"] + b["denied"] for b in agent["decisions"]["timeline"]] == [1, 0, 1]
    assert agent["tokens"] == {}
    assert agent["alerts"] == []
    assert report["period"]["since"] == period.since.isoformat().replace("+00:00", "Z")  # type: ignore[union-attr]


def test_a_period_that_ended_before_a_change_shows_the_agent_as_it_was(
    store: Store, seeded: Seeded
) -> None:
    created = store.history("Agent", seeded.pay)[0].at
    suspended = store.history("Agent", seeded.pay)[1].at
    period = Period(None, created + (suspended - created) / 2)
    [agent] = to_json(gather(store, agent=seeded.pay, period=period))["agents"]
    assert (agent["status"], agent["risk"]) == ("active", "low")
    assert [s["op"] for s in agent["status_history"]] == ["create"]


def test_every_agent_report_holds_both_agents_and_the_ids_the_directory_never_held(
    store: Store, seeded: Seeded
) -> None:
    report = to_json(gather(store))
    assert report["scope"] == "all"
    assert [a["name"] for a in report["agents"]] == ["pay-bot", "helper"]
    assert report["decisions"]["total"] == 6
    assert report["unknown_agents"] == [{"id": "ghost", "decisions": 1, "denied": 1}]


def test_a_deleted_agent_keeps_its_report(store: Store, seeded: Seeded) -> None:
    store.delete("Agent", seeded.helper, expected_version=None, actor="admin-ann")
    [agent] = to_json(gather(store, agent=seeded.helper))["agents"]
    assert agent["deleted"] is True
    assert agent["owner"] == "ops"
    assert [s["op"] for s in agent["status_history"]] == ["create", "delete"]
    assert agent["decisions"]["total"] == 1


def test_an_unknown_agent_is_an_error_that_names_it(store: Store, seeded: Seeded) -> None:
    with pytest.raises(ReportError, match="no agent 'ghost' in the directory"):
        gather(store, agent="ghost")


def test_the_markdown_report_shows_every_part_with_user_text_escaped(
    store: Store, seeded: Seeded
) -> None:
    text = to_markdown(gather(store, agent=seeded.pay))
    for heading in (
        "# Tessera compliance report",
        "## Agent pay-bot",
        "### Identity",
        "#### Status history",
        "### Credentials",
        "### Delegations",
        "### Consents",
        "### Decisions",
        "### Denials",
        "### Anomalies",
        "## Audit chain verification",
    ):
        assert f"\n{heading}\n" in f"\n{text}"
    assert "- **Owner**: finance" in text
    assert "\\<script\\>" in text and "<script>" not in text
    assert "5 (2 allowed, 3 denied)" in text
    assert "a burst of \\<b\\>denials\\</b\\>: privilege probing?" in text
    assert (
        "every trail verifies (12 entries, chains intact; 2 signed checkpoint(s) verified)" in text
    )
    assert f"| {seeded.client_id} | Pay Bot |" in text


# ------------------------------------------------------------------ the command


def test_the_command_writes_json_to_standard_output(
    capsys: pytest.CaptureFixture[str], store: Store, seeded: Seeded
) -> None:
    code, out, err = run(
        capsys, "report", "--agent", "pay-bot", "--format", "json", "--store", store.url
    )
    assert (code, err) == (0, "")
    assert json.loads(out)["agents"][0]["id"] == seeded.pay


def test_the_command_writes_the_report_to_a_file(
    capsys: pytest.CaptureFixture[str], store: Store, seeded: Seeded, tmp_path: Path
) -> None:
    target = tmp_path / "report.md"
    flags = ("--all", "--format", "md", "--output", str(target), "--store", store.url)
    code, out, err = run(capsys, "report", *flags)
    assert (code, out) == (0, "")
    assert err == f"wrote the report to {target}\n"
    assert "## Agent helper" in target.read_text(encoding="utf-8")


def test_the_command_applies_since_and_until(
    capsys: pytest.CaptureFixture[str], store: Store, seeded: Seeded
) -> None:
    since = (seeded.base + timedelta(hours=3)).isoformat().replace("+00:00", "Z")
    flags = ("--since", since, "--format", "json", "--store", store.url)
    code, out, _ = run(capsys, "report", "--agent", seeded.pay, *flags)
    assert code == 0
    assert json.loads(out)["agents"][0]["decisions"]["total"] == 2


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--agent", "nobody"), "tessera report: no agent 'nobody' in the directory"),
        (("--all", "--since", "yesterday"), "--since: 'yesterday' is not an RFC 3339 time"),
        (("--all", "--until", "2026-11-28T10:00:00"), "--until: '2026-11-28T10:00:00' needs"),
        (
            ("--all", "--since", "2026-11-28T10:00:00Z", "--until", "2026-11-28T10:00:00Z"),
            "tessera report: --since must be before --until",
        ),
    ],
)
def test_bad_input_is_a_usage_error_that_says_what_is_wrong(
    capsys: pytest.CaptureFixture[str],
    store: Store,
    seeded: Seeded,
    flags: tuple[str, ...],
    message: str,
    tmp_path: Path,
) -> None:
    target = tmp_path / "report.html"
    code, out, err = run(capsys, "report", *flags, "--output", str(target), "--store", store.url)
    assert (code, out) == (2, "")
    assert message in err
    assert not target.exists()


@pytest.mark.parametrize("flags", [(), ("--all", "--agent", "pay-bot")])
def test_the_command_needs_exactly_one_of_agent_and_all(
    capsys: pytest.CaptureFixture[str], flags: tuple[str, ...]
) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["report", *flags])
    assert stopped.value.code == 2
    assert "--agent" in capsys.readouterr().err


def test_a_broken_chain_is_reported_and_the_command_exits_1(
    capsys: pytest.CaptureFixture[str], store: Store, seeded: Seeded
) -> None:
    forged = canonical(decision("p4", "2026-01-01T00:00:00Z", seeded.pay, "fs.write", True))
    execute(store.url, "UPDATE audit SET record = ? WHERE trail = 'agent' AND seq = 4", [forged])
    code, out, err = run(
        capsys, "report", "--agent", seeded.pay, "--format", "json", "--store", store.url
    )
    assert code == 1
    assert "the audit chain is BROKEN" in err
    verification = json.loads(out)["verification"]
    assert verification["intact"] is False
    agent_trail = verification["trails"][0]
    assert (agent_trail["intact"], agent_trail["problem_count"]) == (False, 1)
    assert agent_trail["problems"] == [
        "agent trail, entry 4: its content was changed (hash mismatch)"
    ]


def test_a_trail_cut_short_is_found_by_its_signed_checkpoint(
    capsys: pytest.CaptureFixture[str], store: Store, seeded: Seeded
) -> None:
    execute(store.url, "DELETE FROM audit WHERE trail = 'agent' AND seq = 9")
    code, out, _ = run(
        capsys, "report", "--agent", seeded.pay, "--format", "json", "--store", store.url
    )
    assert code == 1
    [agent_trail, *_] = json.loads(out)["verification"]["trails"]
    assert (agent_trail["entries"], agent_trail["checkpoints"], agent_trail["intact"]) == (
        8,
        0,
        False,
    )
    [problem] = agent_trail["problems"]
    assert problem.startswith("checkpoint trail, entry 1: checkpoint of the agent trail at entry 9")


def test_checkpoints_are_checked_with_the_jwk_set_given(
    capsys: pytest.CaptureFixture[str], store: Store, seeded: Seeded, tmp_path: Path
) -> None:
    published = tmp_path / "jwks.json"
    stranger = {**public_jwk(generate("ES256").public_key()), "kid": "stranger", "alg": "ES256"}
    published.write_text(json.dumps({"keys": [stranger]}))
    flags = ("--format", "json", "--store", store.url, "--jwks", str(published))
    code, out, _ = run(capsys, "report", "--agent", seeded.pay, *flags)
    assert code == 1
    trails = json.loads(out)["verification"]["trails"]
    assert ["which is not in the JWK Set" in p for t in trails for p in t["problems"]] == [
        True,
        True,
    ]
    published.write_text(json.dumps(KeyRing(store).jwks()))
    code, out, _ = run(capsys, "report", "--agent", seeded.pay, *flags, "--issuer", ISSUER)
    assert code == 0
    assert json.loads(out)["verification"]["intact"] is True
    code, out, _ = run(capsys, "report", "--agent", seeded.pay, *flags, "--issuer", "https://x")
    assert code == 1
    assert json.loads(out)["verification"]["intact"] is False


def test_an_unreadable_jwk_set_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], store: Store, tmp_path: Path
) -> None:
    missing = tmp_path / "nowhere.json"
    code, out, err = run(capsys, "report", "--all", "--store", store.url, "--jwks", str(missing))
    assert (code, out) == (2, "")
    assert err.startswith(f"tessera report: --jwks {missing}: ")


# ------------------------------------------------------------------ the page in a browser


def chromium() -> str:
    """The browser; the test fails (never skips) without it: `make test` installs it."""
    found = shutil.which("chromium")
    if found is None:
        pytest.fail("Chromium is not installed: `apt-get install -y chromium` (make test does)")
    return found


def browse(page: Path, tmp_path: Path, *flags: str) -> str:
    """Open a file in headless Chromium; what it prints (the DOM with --dump-dom)."""
    done = subprocess.run(
        [
            chromium(),
            "--headless",
            "--disable-gpu",
            "--no-sandbox",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'chromium-profile'}",
            *flags,
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return done.stdout


def rendered(store: Store, tmp_path: Path, *flags: str) -> BeautifulSoup:
    page = tmp_path / "report.html"
    code = main(["report", *flags, "--output", str(page), "--store", store.url])
    assert code == 0
    return BeautifulSoup(browse(page, tmp_path, "--dump-dom"), "html.parser")


def text(soup: BeautifulSoup, selector: str) -> str:
    found = soup.select_one(selector)
    assert found is not None, f"nothing on the page matches {selector}"
    return " ".join(found.get_text(" ").split())


def test_the_html_report_shows_the_agent_its_counts_chart_and_verdict_in_a_browser(
    store: Store, seeded: Seeded, tmp_path: Path
) -> None:
    page = rendered(store, tmp_path, "--agent", "pay-bot")
    agent = page.select_one(f'section.agent[data-agent-id="{seeded.pay}"]')
    assert agent is not None
    assert text(agent, ".agent-name") == "pay-bot"
    identity = {
        dt.get_text(): dt.find_next_sibling("dd").get_text()
        for dt in agent.select("dl.identity dt")
    }
    assert identity == {
        "Id": seeded.pay,
        "Display name": "Pay-Bot",
        "Owner": "finance",
        "Purpose": PURPOSE,
        "Risk": "medium",
        "Type": "background",
        "Status": "suspended",
    }
    assert text(agent, "p.decisions") == "5 (2 allowed, 3 denied)"
    history = [
        [td.get_text() for td in row.select("td")][1:5]
        for row in agent.select("table.status-history tbody tr")
    ]
    assert history == [
        ["create", "admin-ann", "1", "active"],
        ["replace", "admin-bob", "2", "suspended"],
    ]
    assert seeded.client_id in text(agent, "table.credentials")
    assert "alice" in text(agent, "table.delegations")
    assert "payments:refund payments:transfer" in text(agent, "table.consents")
    assert [td.get_text() for td in agent.select("table.denials tbody tr td:nth-of-type(2)")] == [
        "p5",
        "p4",
        "p2",
    ]
    assert "a burst of <b>denials</b>: privilege probing?" in text(agent, "table.alerts")

    chart = agent.select_one("svg.timeline")
    assert chart is not None
    assert chart["aria-label"] == "Decisions per hour: 5 (2 allowed, 3 denied)"
    bars = [bar.select_one("title").get_text() for bar in chart.select("g.bar")]
    assert len(bars) == 4
    assert bars[0].endswith(": 1 allowed, 1 denied")
    assert bars[3].endswith(": 0 allowed, 2 denied")
    assert len(chart.select("rect.allowed")) == 2 and len(chart.select("rect.denied")) == 2

    assert (
        text(page, "#verdict")
        == "every trail verifies (12 entries, chains intact; 2 signed checkpoint(s) verified)"
    )
    assert "intact" in page.select_one("#verdict")["class"]
    trails = {row["data-trail"]: text(row, "td:nth-of-type(3)") for row in page.select("tr.trail")}
    assert trails == {
        "agent": "intact",
        "admin": "intact",
        "alert": "intact",
        "checkpoint": "intact",
    }


def test_a_script_in_an_agents_purpose_is_shown_as_text_and_never_runs(
    store: Store, seeded: Seeded, tmp_path: Path
) -> None:
    page = rendered(store, tmp_path, "--all")
    assert page.body is not None
    assert page.body.get("data-pwned") is None
    assert page.find("script") is None
    assert SCRIPT in text(page, f'section[data-agent-id="{seeded.pay}"] dd.purpose')
    assert text(page, "#unknown-agents tbody") == "ghost 1 1"


def test_a_period_without_decisions_says_so_instead_of_drawing_a_chart(
    store: Store, seeded: Seeded
) -> None:
    period = Period(seeded.base - timedelta(hours=1), seeded.base)
    page = BeautifulSoup(
        render(gather(store, agent="helper", period=period), "html"), "html.parser"
    )
    assert page.select("svg") == []
    assert "No decision in the period." in text(page, "section.agent")
    assert text(page, "p.decisions") == "0 (0 allowed, 0 denied)"


def test_the_html_report_is_one_file_that_fetches_nothing(
    store: Store, seeded: Seeded, tmp_path: Path
) -> None:
    page = tmp_path / "report.html"
    assert main(["report", "--all", "--output", str(page), "--store", store.url]) == 0
    html = page.read_text(encoding="utf-8")
    assert "http://" not in html and "https://" not in html
    soup = BeautifulSoup(html, "html.parser")
    assert not soup.select("script, link, img, iframe, object, embed")
    assert (
        "default-src 'none'"
        in soup.select_one('meta[http-equiv="Content-Security-Policy"]')["content"]
    )
    assert len(soup.select("svg.timeline")) == 3  # every agent, and pay-bot and helper


def test_the_html_report_renders_to_a_screenshot(
    store: Store, seeded: Seeded, tmp_path: Path
) -> None:
    page = tmp_path / "report.html"
    assert main(["report", "--agent", seeded.pay, "--output", str(page), "--store", store.url]) == 0
    shot = tmp_path / "report.png"
    browse(page, tmp_path, f"--screenshot={shot}", "--window-size=1100,1400")
    png = shot.read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert (width, height) == (1100, 1400)


# ------------------------------------------------------------------ timelines and limits


@pytest.mark.parametrize(
    ("span", "unit", "buckets"),
    [
        (timedelta(hours=48), "hour", 48),
        (timedelta(days=10), "day", 11),  # 06:00 to 06:00: a part of an eleventh day
        (timedelta(days=92), "day", 93),
        (timedelta(days=93), "week", 14),  # from Monday 2 November to Tuesday 3 February
    ],
)
def test_the_timeline_counts_per_hour_day_or_week_by_the_periods_length(
    store: Store, seeded: Seeded, span: timedelta, unit: str, buckets: int
) -> None:
    since = datetime(2026, 11, 2, tzinfo=UTC) + timedelta(hours=6)  # a Monday, 06:00
    report = gather(store, period=Period(since, since + span))
    assert report.unit == unit
    assert len(report.decisions.timeline) == buckets
    starts = [b.start for b in report.decisions.timeline]
    assert starts == sorted(starts)
    assert starts[0] == (since if unit == "hour" else since.replace(hour=0))


def test_denials_beyond_the_listed_ones_are_still_counted(store: Store) -> None:
    bot = create_agent(store, "prober", owner="sec", purpose="x", risk="low", status="active")
    base = datetime.now(UTC) + timedelta(minutes=1)
    writer = AuditWriter(store)
    try:
        for n in range(105):
            writer.submit("agent", decision(f"d{n}", at(base, n / 60), bot.id, f"t{n % 3}", False))
    finally:
        writer.close()
    [agent] = gather(store, agent="prober").agents
    assert agent.decisions.denied == 105
    assert [d.decision_id for d in agent.denials] == [f"d{n}" for n in range(104, 4, -1)]
    assert sum(d.count for d in agent.most_denied) == 105


def test_the_json_keys_are_the_documented_ones(store: Store, seeded: Seeded) -> None:
    report = to_json(gather(store))
    assert list(report) == [
        "format",
        "generated_at",
        "scope",
        "period",
        "unit",
        "agents",
        "unknown_agents",
        "decisions",
        "verification",
    ]
    docs = (Path(__file__).parents[2] / "docs" / "audit.md").read_text(encoding="utf-8")
    section = docs.split("### The JSON report", 1)[1]
    documented = {
        name
        for row in section.splitlines()
        if row.startswith("| `")
        for name in re.findall(r"`(\w+)`", row.split("|")[1])
    }
    assert documented == set(report["agents"][0])
