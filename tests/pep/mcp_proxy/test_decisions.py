"""Resources and prompts through the proxy, decided by policy like tools: each
``resources/read`` and ``prompts/get`` is asked of the PDP (``resource.read`` on
``resource``/<uri>, ``prompt.get`` on ``prompt``/<name>), a denied one is answered
``-32003`` by the proxy without reaching the upstream, and ``resources/list`` and
``prompts/list`` keep only what the caller may use. The PDP decides with the shipped
policies and a test policy for resources and prompts; the upstream is the SDK server."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from mcp.shared.exceptions import MCPError
from mcp_types.version import LATEST_MODERN_VERSION

from pep.mcp_proxy.answers import DECISION_HEADER
from pep.mcp_proxy.jsonrpc import FORBIDDEN
from tests.pep.mcp_proxy.test_proxy import key_provider, machine, sdk_client, token_for
from tests.pep.mcp_proxy.test_upstreams import request
from tests.pep.mcp_proxy.tools import PRIVATE_DOCUMENT, PUBLIC_DOCUMENT
from tests.pep.mcp_proxy.world import POLICIES, World, run, world

TIMEOUT = 10.0

READS = """\
package mcp_reads

# Agents below high risk read the public documents and use the summarize prompt;
# no other resource or prompt is permitted.
permit public_documents
  action "resource.read" on resource like "docs://public/*"
  when agent.risk < high

permit summarize_prompt
  action "prompt.get" on prompt "summarize"
  when agent.risk < high
"""


@pytest.fixture(scope="module")
def w(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    policies = tmp_path_factory.mktemp("policies")
    for path in POLICIES.glob("*.pol"):
        shutil.copy(path, policies / path.name)
    (policies / "mcp_reads.pol").write_text(READS, encoding="utf-8")
    with world("sqlite", tmp_path_factory.mktemp("decisions"), policies) as built:
        yield built


def post_routed(w: World, body: dict[str, Any], token: str, name: str) -> httpx.Response:
    """A stateless request with its routing headers, as a 2026 client sends it."""
    headers = {
        "Accept": "application/json, text/event-stream",
        "Authorization": f"Bearer {token}",
        "MCP-Protocol-Version": LATEST_MODERN_VERSION,
        "Mcp-Method": body["method"],
        "Mcp-Name": name,
    }
    return httpx.post(w.url, json=body, headers=headers, timeout=TIMEOUT)


def audited(w: World, decision_id: str) -> dict[str, Any]:
    """The PDP's audit record of one decision."""
    records = [json.loads(e.record) for e in w.oauth.store.audit("agent", 0, 100_000)]
    (record,) = [r for r in records if r.get("decision_id") == decision_id]
    return dict(record)


# ---------------------------------------------------------------- resources


def test_an_sdk_client_lists_and_reads_only_the_resources_policy_allows(w: World) -> None:
    client = machine(w)

    async def session() -> tuple[list[str], str, MCPError]:
        async with sdk_client(w, key_provider(w, client)) as mcp:
            listed = await mcp.list_resources()
            read = await mcp.read_resource(PUBLIC_DOCUMENT)
            with pytest.raises(MCPError) as raised:
                await mcp.read_resource(PRIVATE_DOCUMENT)
            text = read.contents[0].text  # type: ignore[union-attr]
            return [str(r.uri) for r in listed.resources], text, raised.value

    uris, text, refused = run(session())
    assert uris == [PUBLIC_DOCUMENT]  # the upstream has docs://private/salaries too
    assert text == "the public readme"
    assert refused.code == FORBIDDEN
    assert refused.message == f"resources/read {PRIVATE_DOCUMENT!r} is not allowed"


def test_an_allowed_resource_read_is_decided_as_resource_read(w: World) -> None:
    client = machine(w)
    token = token_for(w, client)
    body = request("resources/read", {"uri": PUBLIC_DOCUMENT}, id=3)
    response = post_routed(w, body, token, PUBLIC_DOCUMENT)
    assert response.status_code == 200, response.text
    assert "the public readme" in response.text
    record = audited(w, response.headers[DECISION_HEADER])
    assert record["agent"] == client.agent_id
    assert record["action"] == "resource.read"
    assert record["resource"] == {"type": "resource", "id": PUBLIC_DOCUMENT}
    assert record["context"]["mcp_method"] == "resources/read"
    assert (record["allow"], record["decided_by"]) == (True, ["mcp_reads.public_documents"])


def test_a_denied_resource_read_never_reaches_the_upstream(w: World) -> None:
    token = token_for(w, machine(w))
    body = request("resources/read", {"uri": PRIVATE_DOCUMENT}, id=4)
    before = len(w.recorder.seen)
    response = post_routed(w, body, token, PRIVATE_DOCUMENT)
    assert len(w.recorder.seen) == before
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["id"] == 4
    error = answer["error"]
    assert error["code"] == FORBIDDEN
    assert error["message"] == f"resources/read {PRIVATE_DOCUMENT!r} is not allowed"
    assert error["data"]["decision_id"] == response.headers[DECISION_HEADER]
    assert error["data"]["obligations"] == []
    record = audited(w, response.headers[DECISION_HEADER])
    assert record["resource"] == {"type": "resource", "id": PRIVATE_DOCUMENT}
    assert record["allow"] is False


# ---------------------------------------------------------------- prompts


def test_an_sdk_client_lists_and_gets_only_the_prompts_policy_allows(w: World) -> None:
    client = machine(w)

    async def session() -> tuple[list[str], str, MCPError]:
        async with sdk_client(w, key_provider(w, client)) as mcp:
            listed = await mcp.list_prompts()
            got = await mcp.get_prompt("summarize", {"text": "the minutes"})
            with pytest.raises(MCPError) as raised:
                await mcp.get_prompt("impersonate", {"person": "the CEO"})
            text = got.messages[0].content.text  # type: ignore[union-attr]
            return [p.name for p in listed.prompts], text, raised.value

    names, text, refused = run(session())
    assert names == ["summarize"]  # the upstream has impersonate too
    assert text == "Summarize: the minutes"
    assert refused.code == FORBIDDEN
    assert refused.message == "prompts/get 'impersonate' is not allowed"


def test_a_denied_prompt_never_reaches_the_upstream(w: World) -> None:
    token = token_for(w, machine(w))
    body = request("prompts/get", {"name": "impersonate", "arguments": {"person": "x"}}, id=5)
    before = len(w.recorder.seen)
    response = post_routed(w, body, token, "impersonate")
    assert len(w.recorder.seen) == before
    assert response.status_code == 200, response.text
    assert response.json()["id"] == 5
    assert response.json()["error"]["code"] == FORBIDDEN
    record = audited(w, response.headers[DECISION_HEADER])
    assert record["action"] == "prompt.get"
    assert record["resource"] == {"type": "prompt", "id": "impersonate"}
    assert record["allow"] is False


def test_the_policy_decides_per_agent_not_per_name(w: World) -> None:
    """A high-risk agent is listed nothing and refused the summarize prompt."""
    risky = machine(w, risk="high")

    async def session() -> tuple[list[str], list[str], MCPError]:
        async with sdk_client(w, key_provider(w, risky)) as mcp:
            resources = await mcp.list_resources()
            prompts = await mcp.list_prompts()
            with pytest.raises(MCPError) as raised:
                await mcp.get_prompt("summarize", {"text": "x"})
            return (
                [str(r.uri) for r in resources.resources],
                [p.name for p in prompts.prompts],
                raised.value,
            )

    resources, prompts, refused = run(session())
    assert (resources, prompts) == ([], [])
    assert refused.code == FORBIDDEN
