"""Lists and consent: a tool that only the user's consent stands in the way of is listed
when the proxy can ask that user (a delegated token, a consent page configured), so a
client can call it and be asked; it is not listed for an agent acting alone. Decided by
the PDP over gRPC and by the proxy itself (``decisions = "local"``)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from mcp_types.version import LATEST_MODERN_VERSION

from pep.mcp_proxy.jsonrpc import CONSENT_REQUIRED
from tests.pep.mcp_proxy.test_consent import Browser, add_user, answer_of, delegated, rpc
from tests.pep.mcp_proxy.test_proxy import machine, token_for
from tests.pep.mcp_proxy.test_upstreams import request
from tests.pep.mcp_proxy.world import CONSENT_SCOPE, POLICIES, World, world

TIMEOUT = 10.0

# High-risk agents get no read_only tools; no limit could decide read_file, so with local
# decisions the proxy lists it itself.
CONSENTED_READS = f"""package listing

permit consented_reads
  call tool "read_file"
  when agent.purpose == "bookkeeping"
  require consent("{CONSENT_SCOPE}")
"""


@pytest.fixture(scope="module", params=["pdp", "local"])
def w(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    policies = tmp_path_factory.mktemp("policies")
    for path in POLICIES.glob("*.pol"):
        shutil.copy(path, policies / path.name)
    (policies / "listing.pol").write_text(CONSENTED_READS, encoding="utf-8")
    folder = tmp_path_factory.mktemp("listing")
    with world("sqlite", folder, policies, decisions=request.param) as built:
        yield built


def listed_tools(w: World, token: str) -> list[str]:
    headers = {
        "Authorization": f"Bearer {token}",
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": LATEST_MODERN_VERSION,
        "Mcp-Method": "tools/list",
    }
    response = httpx.post(w.url, json=request("tools/list", {}), headers=headers, timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = answer_of(response)
    return [tool["name"] for tool in answer["result"]["tools"]]


def test_a_tool_awaiting_the_users_consent_is_listed_and_asks_when_called(w: World) -> None:
    agent = w.add_agent(purpose="bookkeeping", risk="high")
    _, name, password = add_user(w)
    _, exchanged, _ = delegated(w, agent, Browser(w, name, password), "mcp:tools")
    assert listed_tools(w, exchanged) == ["read_file"]
    refused = answer_of(rpc(w, exchanged, "read_file", {"path": "/tmp/x"}))
    assert refused["error"]["code"] == CONSENT_REQUIRED


def test_an_agent_acting_alone_has_no_user_to_ask_so_the_tool_is_not_listed(w: World) -> None:
    token = token_for(w, machine(w, purpose="bookkeeping", risk="high"))
    assert listed_tools(w, token) == []
