"""Consent first, then the step-up: a permit that needs the user's consent and a stronger
login asks for the consent (``-32042`` with the issuer's consent page) when the issuer can
raise the user's login to that ``acr`` (``step_up_acrs``); once the user consents, the
call gets the step-up's answer, and a token from the stronger login passes. ``tools/list``
shows such a tool, marked ``_meta["tessera/consent"]``, and still hides one the policy
refuses outright. Decided by the PDP over gRPC and by the proxy itself."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from typing import Any

import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from pep.mcp_proxy.consent import CONSENT_META
from pep.mcp_proxy.jsonrpc import CONSENT_REQUIRED, FORBIDDEN
from tests.pep.mcp_proxy.test_consent import MAX_RETRIES, Browser, add_user, answer_of, rpc
from tests.pep.mcp_proxy.test_proxy import claims_for, signed
from tests.pep.mcp_proxy.test_upstreams import request
from tests.pep.mcp_proxy.world import CONSENT_SCOPE, POLICIES, World, run, world

TIMEOUT = 10.0

# High-risk agents get no read_only tools, so only these rules decide the tools for a
# records agent. A limit could decide payments.transfer (small_transfers), so with local
# decisions a list holding it is the PDP's to filter, and a call to search is decided in
# the proxy.
CONSENT_AND_STEP_UP = f"""package records

permit consented_strong_searches
  call tool "search"
  when agent.purpose == "records"
  require consent("{CONSENT_SCOPE}")
  require step_up("mfa")

permit consented_transfers
  call tool "payments.transfer"
  when agent.purpose == "records"
  require consent("{CONSENT_SCOPE}")

permit consented_deletes
  call tool "fs.delete"
  when agent.purpose == "records"
  require consent("{CONSENT_SCOPE}")

forbid records_agents_never_delete
  call tool "fs.delete"
  when agent.purpose == "records"

permit consented_token_step_ups
  call tool "read_file"
  when agent.purpose == "records"
  require consent("{CONSENT_SCOPE}")
  require step_up("hardware-key")
"""


@pytest.fixture(scope="module", params=["pdp", "local"])
def w(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    policies = tmp_path_factory.mktemp("policies")
    for path in POLICIES.glob("*.pol"):
        shutil.copy(path, policies / path.name)
    (policies / "records.pol").write_text(CONSENT_AND_STEP_UP, encoding="utf-8")
    folder = tmp_path_factory.mktemp("consent_step_up")
    with world("sqlite", folder, policies, decisions=request.param, step_up_acrs=("mfa",)) as built:
        yield built


def for_user(w: World, agent: str, user: str, acr: str | None) -> str:
    """A token by which ``agent`` acts for ``user`` (RFC 8693 ``act``), from a login of
    strength ``acr``: what an exchange from the user's stepped-up token gives."""
    claims = claims_for(w, agent, sub=user, act={"sub": agent}, acr=acr)
    return signed(w, claims)


def listed(w: World, token: str, url: str | None = None) -> dict[str, dict[str, Any]]:
    """The tools an SDK client lists through the proxy, by name: each as the SDK read it."""

    async def session() -> dict[str, dict[str, Any]]:
        headers = {"Authorization": f"Bearer {token}"}
        http = httpx2.AsyncClient(headers=headers, timeout=TIMEOUT)
        transport = streamable_http_client(url or w.url, http_client=http)
        async with Client(transport, read_timeout_seconds=TIMEOUT) as mcp:
            tools = (await mcp.list_tools()).tools
        return {t.name: t.model_dump(by_alias=True, exclude_none=True) for t in tools}

    result: dict[str, dict[str, Any]] = run(session())
    return result


def consented(w: World, browser: Browser, elicitation: dict[str, Any], token: str) -> Any:
    """The user consents on the page the elicitation names; the same call's next answer
    other than the consent elicitation (the PDP follows consents within a second)."""
    landed = browser.visit(elicitation["url"])
    assert landed.startswith(f"{w.proxy}/consent/done")
    assert browser.consent_pages[-1].items["scopes"] == [CONSENT_SCOPE]
    for _ in range(MAX_RETRIES):
        answer = answer_of(rpc(w, token, "search", {"query": "x"}))
        if answer.get("error", {}).get("code") != CONSENT_REQUIRED:
            return answer
        time.sleep(0.05)
    raise AssertionError("the consent did not reach the decisions")


def test_the_consent_is_asked_first_then_the_step_up_then_the_call_passes(w: World) -> None:
    agent = w.add_agent(purpose="records", risk="high")
    user, name, password = add_user(w)
    weak = for_user(w, agent, user, acr="pwd")
    first = answer_of(rpc(w, weak, "search", {"query": "x"}))["error"]
    assert first["code"] == CONSENT_REQUIRED, first
    assert first["message"] == f"tools/call 'search' needs your consent: {CONSENT_SCOPE}"
    (elicitation,) = first["data"]["elicitations"]
    assert elicitation["mode"] == "url"
    assert elicitation["url"].startswith(f"{w.oauth.issuer}/oauth/authorize?")
    after = consented(w, Browser(w, name, password), elicitation, weak)["error"]
    assert after["code"] == FORBIDDEN, after
    assert after["data"]["obligations"] == [{"kind": "step_up", "value": "mfa"}]
    strong = for_user(w, agent, user, acr="mfa")
    passed = answer_of(rpc(w, strong, "search", {"query": "x"}))
    assert passed["result"]["content"][0]["text"] == "found x", passed


def test_a_tool_awaiting_consent_and_step_up_is_listed_marked_and_forbidden_ones_hidden(
    w: World,
) -> None:
    agent = w.add_agent(purpose="records", risk="high")
    user, _, _ = add_user(w)
    tools = listed(w, for_user(w, agent, user, acr="pwd"))
    # fs.delete: a forbid refuses it outright, whatever the consent; read_file: a step-up
    # the issuer cannot raise a login to; payments.transfer: no permit for this agent
    assert sorted(tools) == ["payments.transfer", "search"]
    assert tools["payments.transfer"]["_meta"] == {CONSENT_META: {}}
    # the upstream's own metadata stays, its consent mark gives way to the proxy's
    assert tools["search"]["_meta"] == {
        "com.example/owner": "search team",
        CONSENT_META: {"stepUp": "mfa"},
    }


def test_a_listed_tool_the_caller_may_use_carries_no_mark(w: World) -> None:
    agent = w.add_agent(purpose="records", risk="high")
    user, name, password = add_user(w)
    weak = for_user(w, agent, user, acr="pwd")
    elicitation = answer_of(rpc(w, weak, "search", {"query": "x"}))["error"]["data"]
    consented(w, Browser(w, name, password), elicitation["elicitations"][0], weak)
    tools = listed(w, for_user(w, agent, user, acr="mfa"))
    assert sorted(tools) == ["payments.transfer", "search"]
    assert tools["search"]["_meta"] == {"com.example/owner": "search team"}
    assert "_meta" not in tools["payments.transfer"]


def test_an_agent_acting_alone_has_no_user_to_ask(w: World) -> None:
    agent = w.add_agent(purpose="records", risk="high")
    token = signed(w, claims_for(w, agent, acr="pwd"))
    refused = answer_of(rpc(w, token, "search", {"query": "x"}))["error"]
    assert refused["code"] == FORBIDDEN
    assert listed(w, token) == {}


def test_a_step_up_the_issuer_cannot_raise_a_login_to_is_not_asked_for(w: World) -> None:
    agent = w.add_agent(purpose="records", risk="high")
    user, _, _ = add_user(w)
    weak = for_user(w, agent, user, acr="pwd")
    refused = answer_of(rpc(w, weak, "read_file", {"path": "/tmp/x"}))["error"]
    assert refused["code"] == FORBIDDEN
    assert {"kind": "step_up", "value": "hardware-key"} in refused["data"]["obligations"]
    # a proxy that knows of no step-up its issuer can do asks for no consent it could
    # not follow through, and lists no tool that needs one
    (upstream,) = [u for u in w.config.upstreams if u.name == "tools"]
    plain = f"{w.add_proxy((upstream,), step_up_acrs=())}{upstream.path}"
    claims = claims_for(w, agent, sub=user, act={"sub": agent}, acr="pwd", aud=plain)
    token = signed(w, claims)
    body = request("tools/call", {"name": "search", "arguments": {"query": "x"}})
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json, text/event-stream"}
    answer = answer_of(httpx.post(plain, json=body, headers=headers, timeout=TIMEOUT))
    assert answer["error"]["code"] == FORBIDDEN, answer
    assert sorted(listed(w, token, plain)) == ["payments.transfer"]
