"""The proxy authenticates to a PDP that asks its callers to (``caller_auth =
"required"``): with ``pdp_token = "client_credentials"`` it sends its own ``tessera:decide``
token from the issuer on every call, ``Authorize`` and ``ListAllowed`` alike; without it,
every call is denied and every list empty (fail closed), and the log and the metrics say
why. All real on 127.0.0.1: the issuer, the PDP, the proxy and an SDK MCP server."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from starlette.testclient import TestClient

from pep.mcp_proxy.app import Proxy
from pep.mcp_proxy.config import ProxyConfig
from pep.mcp_proxy.jsonrpc import FORBIDDEN
from tests.pep.mcp_proxy.test_proxy import call, machine, modern, token_for
from tests.pep.mcp_proxy.test_upstreams import request
from tests.pep.mcp_proxy.world import PROXY_PATH, World, world


@pytest.fixture(scope="module")
def w(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    folder = tmp_path_factory.mktemp("pdp-auth")
    # The PDP checks that the proxy's own agent is active in its directory: each test's
    # machine() waits for a newer agent to be there, so the proxy's is there too.
    with world("sqlite", folder, callers=True, pdp_token="client_credentials") as built:
        yield built


def ask(config: ProxyConfig, token: str, body: dict[str, Any], method: str) -> tuple[Any, Proxy]:
    """``body`` sent through a proxy with ``config``: its JSON-RPC answer, and the proxy
    (for its metrics)."""
    proxy = Proxy(config)
    headers = {
        "Authorization": f"Bearer {token}",
        "Accept": "application/json, text/event-stream",
        **modern(body["params"].get("name", "")),
        "Mcp-Method": method,
    }
    if method != "tools/call":
        headers.pop("Mcp-Name", None)
    with TestClient(proxy.app()) as client:
        response = client.post(PROXY_PATH, json=body, headers=headers)
    assert response.status_code == 200, response.text
    return response.json(), proxy


def failures(proxy: Proxy, call: str, code: str) -> float:
    value = proxy.metrics.registry.get_sample_value(
        "tessera_mcp_proxy_pdp_failures_total", {"call": call, "code": code}
    )
    return value or 0.0


def test_with_its_own_token_the_proxy_is_answered_by_a_pdp_that_asks_for_one(w: World) -> None:
    token = token_for(w, machine(w))
    called, proxy = ask(w.config, token, call("search", {"query": "pdp"}), "tools/call")
    assert called["result"]["content"][0]["text"] == "found pdp"
    listed, proxy = ask(w.config, token, request("tools/list", {}), "tools/list")
    assert [tool["name"] for tool in listed["result"]["tools"]] == ["search", "read_file"]
    assert failures(proxy, "ListAllowed", "UNAUTHENTICATED") == 0


def test_without_a_token_every_call_is_denied_and_the_log_and_metrics_say_why(
    w: World, caplog: pytest.LogCaptureFixture
) -> None:
    anonymous = replace(w.config, pdp_token="none")
    token = token_for(w, machine(w))
    with caplog.at_level(logging.WARNING, logger="tessera.mcp_proxy"):
        called, proxy = ask(anonymous, token, call("search", {"query": "pdp"}), "tools/call")
        listed, listing = ask(anonymous, token, request("tools/list", {}), "tools/list")
    assert called["error"]["code"] == FORBIDDEN
    assert called["error"]["data"]["reasons"][0].startswith("fail closed: UNAUTHENTICATED")
    assert failures(proxy, "Authorize", "UNAUTHENTICATED") == 1
    assert listed["result"]["tools"] == []
    assert failures(listing, "ListAllowed", "UNAUTHENTICATED") == 1
    said = [r.getMessage() for r in caplog.records]
    assert any("did not answer Authorize" in m and "UNAUTHENTICATED" in m for m in said), said
    assert any("did not answer ListAllowed" in m and "UNAUTHENTICATED" in m for m in said), said


def test_a_token_the_issuer_refuses_is_a_deny_naming_the_issuers_answer(w: World) -> None:
    undecided = w.oauth.secret_client(scope="")  # may introspect, may not ask for decisions
    assert undecided.secret is not None
    refused = replace(w.config, client_id=undecided.client_id, client_secret=undecided.secret)
    token = token_for(w, machine(w))
    called, proxy = ask(refused, token, call("search", {"query": "pdp"}), "tools/call")
    assert called["error"]["code"] == FORBIDDEN
    reason = called["error"]["data"]["reasons"][0]
    assert reason.startswith("fail closed: UNAUTHENTICATED: the bearer token could not be had")
    assert "the issuer refused a token" in reason
    assert failures(proxy, "Authorize", "UNAUTHENTICATED") == 1
