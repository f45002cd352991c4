"""The MCP proxy deciding in its own process (``decisions = "local"``): the PDP's policies,
directory and audit trail, without the gRPC hop; what a ``limit`` could decide still goes
to the PDP, which keeps the counters. Both store backends, all parts real."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from pep.mcp_proxy.answers import DECISION_HEADER
from pep.mcp_proxy.decisions import TOOL, Listed, LocalDecider
from pep.mcp_proxy.jsonrpc import FORBIDDEN
from pep.mcp_proxy.tokens import Caller
from tests.pep.mcp_proxy.test_proxy import (
    _data,
    call,
    machine,
    modern,
    post,
    sdk_client,
    secret_provider,
    token_for,
)
from tests.pep.mcp_proxy.world import POLICIES, World, run, world
from tests.stores import BACKENDS


@pytest.fixture(scope="module", params=BACKENDS)
def w(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with world(request.param, tmp_path_factory.mktemp("local"), decisions="local") as built:
        yield built


def record_of(w: World, decision_id: str) -> dict[str, Any]:
    """The agent-trail record of a decision (the proxy's writer commits within 0.1 s)."""
    for _ in range(200):
        for entry in w.oauth.store.audit("agent", 0, 100_000):
            data = _data(entry)
            if data.get("decision_id") == decision_id:
                return data
        time.sleep(0.02)
    raise AssertionError(f"no record of {decision_id}")


def test_the_proxy_decides_in_its_own_process_and_records_the_decision(w: World) -> None:
    assert isinstance(w.gateway.decider, LocalDecider)
    client = machine(w)
    token = token_for(w, client)
    pdp_decisions = w.pdp.running.point.metrics.decisions.collect()[0].samples
    before = sum(s.value for s in pdp_decisions if s.name.endswith("_total"))
    response = post(w, call("search", {"query": "local"}), token, **modern("search"))
    assert response.status_code == 200
    assert "found local" in response.text
    record = record_of(w, response.headers[DECISION_HEADER])
    assert record["pep"] == LocalDecider.PEP
    assert record["agent"] == client.agent_id
    assert record["allow"] is True
    assert record["resource"] == {"type": "tool", "id": "search"}
    assert record["context"]["mcp_server"] == "tools"
    pdp_decisions = w.pdp.running.point.metrics.decisions.collect()[0].samples
    assert sum(s.value for s in pdp_decisions if s.name.endswith("_total")) == before


def test_a_denied_call_is_answered_by_the_proxy_and_recorded(w: World) -> None:
    client = machine(w)
    token = token_for(w, client)
    seen = len(w.recorder.seen)
    response = post(w, call("fs.delete", {"path": "/"}), token, **modern("fs.delete"))
    # fs.delete needs the fs:write scope first: a 403 challenge, nothing decided
    assert response.status_code == 403
    response = post(w, call("shell.exec", {"command": "ls"}), token, **modern("shell.exec"))
    assert response.status_code == 200
    error = response.json()["error"]
    assert error["code"] == FORBIDDEN
    assert len(w.recorder.seen) == seen  # the upstream never saw it
    record = record_of(w, error["data"]["decision_id"])
    assert (record["pep"], record["allow"]) == (LocalDecider.PEP, False)


def test_a_call_a_limit_could_decide_goes_to_the_pdp(w: World) -> None:
    client = machine(w, purpose="payments")
    token = token_for(w, client)
    body = call("payments.transfer", {"amount": 10})
    response = post(w, body, token, **modern("payments.transfer"))
    assert response.status_code == 200
    assert "error" not in response.json(), response.text
    record = record_of(w, response.headers[DECISION_HEADER])
    assert record["allow"] is True
    assert record["pep"] != LocalDecider.PEP  # the PDP's peer: it counted the amount
    assert record["decided_by"] == ["agents.small_transfers"]


def test_a_suspended_agent_is_refused_once_the_store_says_so(w: World) -> None:
    client = machine(w)
    token = token_for(w, client)
    assert post(w, call("search", {"query": "a"}), token, **modern("search")).status_code == 200
    assert client.agent_id is not None
    w.oauth.set_agent_status(client.agent_id, "suspended")
    agent = client.agent_id
    w.wait_for(lambda: all(isinstance(d.resolve(agent, None), str) for d in w.directories))
    response = post(w, call("search", {"query": "b"}), token, **modern("search"))
    assert response.json()["error"]["code"] == FORBIDDEN
    record = record_of(w, response.json()["error"]["data"]["decision_id"])
    assert record["decided_by"] == ["directory"]


def test_a_revoked_token_is_refused_at_once_though_it_was_kept(w: World) -> None:
    client = machine(w)
    token = token_for(w, client)
    body = call("search", {"query": "r"})
    assert post(w, body, token, **modern("search")).status_code == 200  # kept from now on
    w.revoke(client, token)
    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    decider = w.gateway.decider
    assert isinstance(decider, LocalDecider)
    w.wait_for(lambda: decider.directory.revoked(jti))
    refused = post(w, body, token, **modern("search"))
    assert refused.status_code == 401
    assert 'error="invalid_token"' in refused.headers["www-authenticate"]
    assert 'error_description="the token was revoked"' in refused.headers["www-authenticate"]


def test_a_token_exchanged_from_a_revoked_token_is_refused_once_the_store_says_so(
    w: World,
) -> None:
    """The issuer names what a token was exchanged from in its ``lineage``; revoking that
    parent revokes the token too, here as in every resource-server verifier."""
    client = machine(w)
    assert client.agent_id is not None
    parent = token_for(w, client)
    jti = jwt.decode(parent, options={"verify_signature": False})["jti"]
    child = w.oauth.server.minter.mint(
        subject=client.agent_id,
        client_id=client.client_id,
        audience=[w.resource],
        scope=client.scope.split(),
        extra={"agent_id": client.agent_id, "agent_type": "background", "lineage": [jti]},
    ).token
    body = call("search", {"query": "l"})
    assert post(w, body, child, **modern("search")).status_code == 200  # kept from now on
    w.revoke(client, parent)
    decider = w.gateway.decider
    assert isinstance(decider, LocalDecider)
    w.wait_for(lambda: decider.directory.revoked(jti))
    refused = post(w, body, child, **modern("search"))
    assert refused.status_code == 401
    assert 'error_description="the token was revoked"' in refused.headers["www-authenticate"]


def list_allowed_calls(w: World) -> float:
    """How many ListAllowed calls the PDP has answered."""
    samples = w.pdp.running.point.metrics.rpc_seconds.collect()[0].samples
    return sum(
        s.value
        for s in samples
        if s.name.endswith("_count") and s.labels.get("method") == "ListAllowed"
    )


def test_a_list_with_a_tool_a_limit_could_decide_is_the_pdps_to_filter(w: World) -> None:
    client = w.oauth.secret_client(scope="mcp:tools", agent_id=w.add_agent())
    before = list_allowed_calls(w)

    async def session() -> list[str]:
        async with sdk_client(w, secret_provider(w, client)) as mcp:
            return [t.name for t in (await mcp.list_tools()).tools]

    # payments.transfer is listed by the upstream, and small_transfers has a limit
    assert run(session()) == ["search", "read_file"]
    assert list_allowed_calls(w) == before + 1


def test_a_list_no_limit_could_decide_is_filtered_in_the_proxy(w: World) -> None:
    decider = w.gateway.decider
    assert isinstance(decider, LocalDecider)
    caller = Caller(w.add_agent(), None, (), frozenset({"mcp:tools"}), None)
    upstream = w.config.upstreams[0]
    before = list_allowed_calls(w)
    listed = run(decider.listed(caller, upstream, TOOL, ["search", "read_file", "fs.delete"]))
    assert listed == Listed(frozenset({"search", "read_file"}), frozenset())
    assert list_allowed_calls(w) == before


def test_with_sync_audit_a_local_decision_is_recorded_before_it_is_answered(
    tmp_path: Path,
) -> None:
    with world("sqlite", tmp_path, decisions="local", audit="sync") as w:
        token = token_for(w, machine(w))
        response = post(w, call("search", {"query": "s"}), token, **modern("search"))
        decision_id = response.headers[DECISION_HEADER]
        records = [_data(e) for e in w.oauth.store.audit("agent", 0, 100_000)]
        assert [r["pep"] for r in records if r.get("decision_id") == decision_id] == [
            LocalDecider.PEP
        ]


def test_a_policy_change_is_followed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    policies = tmp_path / "policies"
    shutil.copytree(POLICIES, policies)
    options = {"decisions": "local", "policies": str(policies), "reload_interval": 0.05}
    with world("sqlite", tmp_path, **options) as w:
        token = token_for(w, machine(w))
        body = call("search", {"query": "x"})
        assert "result" in post(w, body, token, **modern("search")).json()
        (policies / "freeze.pol").write_text('forbid no_search\n  call tool "search"\n')
        for _ in range(200):
            answer = post(w, body, token, **modern("search")).json()
            if "error" in answer:
                break
            time.sleep(0.02)
        assert answer["error"]["code"] == FORBIDDEN
        assert answer["error"]["data"]["reasons"] == ["forbid no_search matched"]
        (policies / "freeze.pol").write_text("forbid broken\n  call tool\n")  # does not load
        time.sleep(0.3)
        answer = post(w, body, token, **modern("search")).json()
        assert answer["error"]["data"]["reasons"] == ["forbid no_search matched"]
        # the PDP still decides with the shipped bundle: a call it decides shows it
        payer = token_for(w, machine(w, purpose="payments"))
        transfer = call("payments.transfer", {"amount": 10})
        with caplog.at_level("WARNING", logger="tessera.mcp_proxy"):
            post(w, transfer, payer, **modern("payments.transfer"))
        assert any("the PDP decides with bundle" in r.getMessage() for r in caplog.records)


def test_the_proxy_counts_what_it_does_for_prometheus(w: World) -> None:
    registry = w.gateway.metrics.registry

    def value(name: str, **labels: str) -> float:
        return registry.get_sample_value(name, labels) or 0.0

    token = token_for(w, machine(w))
    before = {
        "allow": value(
            "tessera_mcp_proxy_decisions_total",
            upstream="tools",
            method="tools/call",
            result="allow",
        ),
        "ok": value("tessera_mcp_proxy_responses_total", upstream="tools", status="200"),
        "refused": value("tessera_mcp_proxy_responses_total", upstream="tools", status="401"),
        "waits": value("tessera_mcp_proxy_upstream_seconds_count", upstream="tools"),
        "local": value("tessera_decisions_total", result="allow", rule="agents.read_only"),
    }
    assert post(w, call("search", {"query": "m"}), token, **modern("search")).status_code == 200
    assert post(w, call("search", {"query": "m"}), None, **modern("search")).status_code == 401
    assert (
        value(
            "tessera_mcp_proxy_decisions_total",
            upstream="tools",
            method="tools/call",
            result="allow",
        )
        == before["allow"] + 1
    )
    assert value("tessera_mcp_proxy_responses_total", upstream="tools", status="200") == (
        before["ok"] + 1
    )
    assert value("tessera_mcp_proxy_responses_total", upstream="tools", status="401") == (
        before["refused"] + 1
    )
    assert value("tessera_mcp_proxy_upstream_seconds_count", upstream="tools") == (
        before["waits"] + 1
    )
    # the decision service's own metrics, as tessera serve has them
    assert value("tessera_decisions_total", result="allow", rule="agents.read_only") == (
        before["local"] + 1
    )

    gone = f"{w.proxy}/mcp/gone"
    token = token_for(w, machine(w), gone)
    failed = value(
        "tessera_mcp_proxy_upstream_failures_total", upstream="gone", reason="unreachable"
    )
    answer = httpx.post(
        gone,
        json=call("search", {"query": "m"}),
        headers={
            "Accept": "application/json, text/event-stream",
            "Authorization": f"Bearer {token}",
        },
        timeout=10.0,
    ).json()
    assert answer["error"]["message"] == "upstream 'gone' is unreachable"
    assert (
        value("tessera_mcp_proxy_upstream_failures_total", upstream="gone", reason="unreachable")
        == failed + 1
    )
