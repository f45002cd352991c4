"""explain_decision over stdio: a recorded decision is explained as it was answered, with
the limit usage it was made on, however the counters, the policies or the directory have
moved on since; what the policies in force now would decide comes apart, as ``today``."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from issuer.store import Store, open_store
from pdp.audit.query import Filters, records
from pdp.audit.records import limit_record
from pdp.audit.writer import AuditWriter
from pdp.directory import Directory
from pdp.engine import Bundle, Engine
from pdp.explain import render_explanation
from pdp.loader import load_directory
from pdp.model import Request
from pdp.serve.proto import authorizer_pb2_grpc as pb_grpc
from pep.admin_mcp.explain import RecordedUsage, explained
from tests.conftest import SHIPPED_POLICIES, bundle_of, request
from tests.pep.test_admin_mcp import call, over_stdio, seed_agent
from tests.pep.test_admin_mcp_errors import in_process
from tests.pep.test_admin_mcp_policies import tool_call
from tests.servers import Server

CAP = "sum <= 5000 USD per 24h per agent"
EXTENSION = "urn:tessera:params:scim:schemas:extension:agent:1.0:Agent"
Audited = tuple[str, Store, Path, list[str]]


@pytest.fixture
def transfers(url: str, tmp_path: Path) -> Iterator[Audited]:
    """Seven transfers of pay-bot decided by the PDP (gRPC, memory counters, the agent
    trail written synchronously): five of 1000 USD reach the 5000 USD daily cap, the sixth
    (1000 USD) and the seventh (10 USD) are denied by it. Their decision ids, in order."""
    policies = tmp_path / "policies"
    shutil.copytree(SHIPPED_POLICIES, policies)
    store = open_store(url)
    writer = AuditWriter(store)
    try:
        pay_bot = seed_agent(store, "pay-bot", purpose="payments")
        directory = Directory(store)
        directory.load()
        engine = Engine(load_directory(policies).bundle)
        server = Server(engine, directory=directory, audit=writer, durability="sync")
        try:
            stub = pb_grpc.AuthorizerStub(server.channel)
            amounts = ["1000"] * 6 + ["10"]
            answers = [
                stub.Authorize(tool_call(pay_bot, "payments.transfer", a), timeout=5)
                for a in amounts
            ]
        finally:
            server.close()
        assert [a.allow for a in answers] == [True] * 5 + [False, False]
        writer.flush()
        yield url, store, policies, [a.decision_id for a in answers]
    finally:
        writer.close()
        store.close()


def test_a_recorded_cap_deny_is_explained_as_denied_with_its_usage(transfers: Audited) -> None:
    url, _, policies, ids = transfers

    async def body(client: Client) -> Any:
        return (
            await call(client, "explain_decision", decision_id=ids[5]),
            await call(client, "explain_decision", decision_id=ids[6]),
            await call(client, "explain_decision", decision_id=ids[0]),
        )

    denied, small, first = over_stdio(url, body, policies=policies)
    text = denied["explanation"]
    assert text.startswith("decision: DENY")  # the recorded effect, never a replay's
    assert denied["decision"] == "deny" and denied["record"]["allow"] is False
    assert f"permit agents.small_transfers is over its limit: {CAP}" in text
    assert f"{CAP}: used 5000 before this call, this call 1000: over the cap" in text
    assert denied["reproduced"] is True
    assert "permit agents.small_transfers" in text and "is over its limit" in text
    assert denied["today"]["decision"] == "deny" and denied["today"]["same_as_recorded"]
    assert denied["today"]["explanation"].startswith("today: ")
    assert "used 5000 before this call, this call 10: over the cap" in small["explanation"]
    assert small["decision"] == "deny" and small["reproduced"] is True
    assert first["decision"] == "allow" and first["explanation"].startswith("decision: ALLOW")
    assert "used 0 before this call, this call 1000: fits under the cap" in first["explanation"]
    assert "permit agents.small_transfers" in first["explanation"]


def test_the_record_of_a_limited_decision_keeps_its_limit_and_the_chain_verifies(
    transfers: Audited,
) -> None:
    _, store, _, ids = transfers
    kept = {r["decision_id"]: r for _, r in records(store, "agent", Filters())}
    assert kept[ids[5]]["limits"] == [
        {
            "rule": "agents.small_transfers",
            "limit": 0,
            "text": CAP,
            "window": 86_400.0,
            "cap": "5000",
            "amount": "1000",
            "used": "5000",
        }
    ]
    from pdp.audit.query import verify_trail

    assert verify_trail(store, "agent")[1] == []


def test_a_record_without_limit_usage_still_explains_the_recorded_deny(
    transfers: Audited,
) -> None:
    """A record written before records kept limit usage: the decision is the recorded
    one, and the explanation says the usage is unknown, instead of replaying from zero."""
    url, store, policies, ids = transfers
    old = {r["decision_id"]: r for _, r in records(store, "agent", Filters())}[ids[5]]
    old = {k: v for k, v in old.items() if k != "limits"} | {"decision_id": "f" * 32}
    writer = AuditWriter(store)
    try:
        writer.submit("agent", old).result(timeout=10)
    finally:
        writer.close()

    async def body(client: Client) -> Any:
        return await call(client, "explain_decision", decision_id="f" * 32)

    explained = over_stdio(url, body, policies=policies)
    assert explained["decision"] == "deny"
    assert explained["explanation"].startswith("decision: DENY")
    assert "how much the window held is unknown" in explained["explanation"]
    assert explained["reproduced"] is False
    assert any("before decision records kept it" in u for u in explained["unknown"])
    assert "ALLOW" not in explained["explanation"]


def test_what_changed_since_is_told_apart_as_today(transfers: Audited) -> None:
    url, store, policies, ids = transfers
    agents_pol = policies / "agents.pol"
    agents_pol.write_text(
        agents_pol.read_text().replace("<= 5000 USD per 24h", "<= 100 USD per 24h")
    )
    pay_bot = store.find("Agent", "name", "pay-bot")

    async def body(client: Client) -> Any:
        return await call(client, "explain_decision", decision_id=ids[0])

    explained = over_stdio(url, body, policies=policies)
    assert explained["decision"] == "allow"
    assert explained["explanation"].startswith("decision: ALLOW")
    assert explained["reproduced"] is False
    assert "no rule-by-rule account: it was decided with bundle" in explained["explanation"]
    assert explained["today"]["decision"] == "deny"  # 1000 USD is over the new 100 USD cap
    assert explained["today"]["same_as_recorded"] is False
    assert pay_bot.id == explained["record"]["agent"]


def test_an_agent_suspended_since_is_refused_today_not_in_the_record(transfers: Audited) -> None:
    _, store, policies, ids = transfers
    pay_bot = store.find("Agent", "name", "pay-bot")
    data = {**pay_bot.data, EXTENSION: {**pay_bot.data[EXTENSION], "status": "suspended"}}
    store.replace("Agent", pay_bot.id, data, unique={}, expected_version=None, actor="someone")

    async def body(client: Client) -> Any:
        return await call(client, "explain_decision", decision_id=ids[0])

    explained = in_process(store, body, policies)
    assert explained["decision"] == "allow" and explained["reproduced"] is True
    assert explained["today"]["decision"] == "deny"
    assert explained["today"]["decided_by"] == ["directory"]
    assert "suspended" in explained["today"]["explanation"]


@pytest.mark.parametrize(
    "scope", ["per agent+resource", "per owner", "per tool", "global", "per agent+user"]
)
def test_the_recorded_usage_of_a_limit_of_any_scope_is_read_back(scope: str) -> None:
    bundle = bundle_of(f'permit p call tool like "x*" limit 3 calls per 1h {scope}')
    (use,) = Engine(bundle).decide(asked := recorded_request(bundle)).limits
    entry = limit_record(use._replace(used=3))  # the cap was reached when it was decided
    record = {"at": "2026-01-31T09:00:00Z", "limits": [entry]}
    usage = RecordedUsage(record, bundle.rules)
    text = render_explanation(explained(bundle, asked, record, usage))
    assert f"3 calls per 1h {scope}: used 3, this call 1" in text and usage.unknown == []


def recorded_request(bundle: Bundle) -> Request:
    agent = {"id": "a|b/c", "risk": "low", "status": "active", "owner": "o/1"}
    return request(bundle, agent=agent, user={"id": "u+1"}, tool="x/y")
