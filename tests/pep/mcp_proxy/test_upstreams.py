"""Upstreams of every kind behind the proxy: the proxy's own credential from the issuer, a
local stdio server, batches and notifications, timeouts and crashes, sessions bound to
their caller, and signing keys that change."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import jwt
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from pep.mcp_proxy.jsonrpc import FORBIDDEN, UPSTREAM_ERROR
from pep.mcp_proxy.stdio import StdioUpstream, UpstreamFailed
from tests.pep.mcp_proxy.test_proxy import (
    call,
    key_provider,
    machine,
    modern,
    sdk_client,
    token_for,
)
from tests.pep.mcp_proxy.world import UPSTREAM_AUDIENCE, World, run, world

TIMEOUT = 10.0
ACCEPT = "application/json, text/event-stream"
LOCAL = (sys.executable, "-m", "tests.pep.mcp_proxy.stdio_server")
ECHO = (*LOCAL, "echo")


@pytest.fixture(scope="module")
def w(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with world("sqlite", tmp_path_factory.mktemp("upstreams")) as built:
        yield built


def post_to(w: World, path: str, body: Any, token: str, **headers: str) -> httpx.Response:
    sent = {"Accept": ACCEPT, "Authorization": f"Bearer {token}", **headers}
    return httpx.post(w.at(path), json=body, headers=sent, timeout=TIMEOUT)


def test_the_upstream_gets_the_proxys_own_token_for_its_own_audience(w: World) -> None:
    client = machine(w)
    token = token_for(w, client, resource=w.at("/mcp/own"))
    before = len(w.recorder.seen)
    response = post_to(w, "/mcp/own", call("search", {"query": "own"}), token, **modern("search"))
    assert response.status_code == 200, response.text
    assert "found own" in response.text
    seen = [s for s in w.recorder.seen[before:] if s is not None]
    assert seen and token not in "".join(seen)
    upstream_token = seen[0].removeprefix("Bearer ")
    claims = jwt.decode(upstream_token, options={"verify_signature": False})
    assert claims["aud"] == UPSTREAM_AUDIENCE
    assert claims["sub"] == claims["agent_id"] != client.agent_id  # the proxy's agent


def test_a_token_for_one_upstream_does_not_open_another(w: World) -> None:
    token = token_for(w, machine(w), resource=w.at("/mcp/own"))
    response = post_to(w, "/mcp/tools", call("search", {"query": "x"}), token)
    assert response.status_code == 401


def test_an_sdk_client_uses_a_stdio_server_through_the_proxy(w: World) -> None:
    client = machine(w)
    provider = key_provider(w, client)
    provider.context.server_url = w.at("/mcp/local")

    async def session() -> tuple[list[str], str]:
        import httpx2

        http = httpx2.AsyncClient(auth=provider, timeout=TIMEOUT)
        transport = streamable_http_client(w.at("/mcp/local"), http_client=http)
        async with Client(transport, read_timeout_seconds=TIMEOUT) as mcp:
            tools = await mcp.list_tools()
            result: Any = await mcp.call_tool("search", {"query": "local"})
            return [t.name for t in tools.tools], result.content[0].text

    names, text = run(session())
    assert names == ["search", "read_file"]
    assert text == "found local"


def test_a_batch_gets_local_refusals_and_upstream_answers_together(w: World) -> None:
    token = token_for(w, machine(w), resource=w.at("/mcp/local"))
    batch = [
        call("search", {"query": "one"}, id=1),
        call("payments.transfer", {"amount": 5}, id=2),
        {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 99}},
    ]
    response = post_to(w, "/mcp/local", batch, token)
    assert response.status_code == 200, response.text
    answers = {a["id"]: a for a in response.json()}
    assert set(answers) == {1, 2}
    assert answers[2]["error"]["code"] == FORBIDDEN
    assert "found one" in str(answers[1]["result"])
    assert len(response.headers["tessera-decision-id"].split(",")) == 2


def test_an_upstream_timeout_is_a_json_rpc_error(w: World) -> None:
    token = token_for(w, machine(w), resource=w.at("/mcp/slow"))
    body = call("read_file", {"path": "/etc/motd"})
    response = post_to(w, "/mcp/slow", body, token, **modern("read_file"))
    assert response.status_code == 200
    assert response.json()["error"] == {
        "code": UPSTREAM_ERROR,
        "message": "upstream 'slow' timed out",
    }


def test_a_crashed_stdio_server_is_a_json_rpc_error(w: World) -> None:
    token = token_for(w, machine(w), resource=w.at("/mcp/broken"))
    response = post_to(w, "/mcp/broken", call("search", {"query": "x"}), token)
    assert response.status_code == 200
    assert response.json()["error"] == {
        "code": UPSTREAM_ERROR,
        "message": "upstream 'broken' exited",
    }


def cancelled(request_id: Any) -> dict[str, Any]:
    """A caller's ``notifications/cancelled`` for its request ``request_id``."""
    params = {"requestId": request_id}
    return {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": params}


def in_flight(w: World) -> int:
    """The proxy's id of the one call in flight at the local stdio server, once it is
    there (bounded)."""
    stdio = w.gateway.stdio["local"]

    async def ids() -> list[int]:  # read on the proxy's loop
        return list(stdio.pending)

    for _ in range(500):
        found = w.thread.run(ids())
        if found:
            assert len(found) == 1, found
            return found[0]
        time.sleep(0.01)
    raise AssertionError("the call did not reach the stdio server")


def test_a_caller_cannot_cancel_another_callers_call_over_stdio(w: World) -> None:
    """The proxy's ids are a counter anyone can guess, and callers' ids collide: a
    cancellation reaches only its sender's own calls."""
    victim = token_for(w, machine(w), resource=w.at("/mcp/local"))
    other = token_for(w, machine(w), resource=w.at("/mcp/local"))
    body = call("read_file", {"path": "/victim"}, id=1)
    with ThreadPoolExecutor(1) as pool:
        reading = pool.submit(post_to, w, "/mcp/local", body, victim)
        for request_id in {1, in_flight(w)}:  # the victim's id, and the proxy's
            assert post_to(w, "/mcp/local", cancelled(request_id), other).status_code == 202
        response = reading.result()
    assert response.status_code == 200
    assert "read /victim" in response.text, response.text


def test_a_caller_cancels_its_own_call_over_stdio(w: World) -> None:
    """The cancellation reaches the server under the proxy's id, and the server drops the
    call without answering: the caller's request times out instead of being read."""
    token = token_for(w, machine(w), resource=w.at("/mcp/local"))
    body = call("read_file", {"path": "/mine"}, id="mine")
    with ThreadPoolExecutor(1) as pool:
        reading = pool.submit(post_to, w, "/mcp/local", body, token)
        in_flight(w)
        assert post_to(w, "/mcp/local", cancelled("mine"), token).status_code == 202
        response = reading.result()
    assert response.json() == {
        "jsonrpc": "2.0",
        "id": "mine",
        "error": {"code": UPSTREAM_ERROR, "message": "upstream 'local' timed out after 5 s"},
    }


def test_a_progress_token_is_not_passed_to_the_stdio_server() -> None:
    """The server's progress notifications would be dropped, and callers' tokens may
    collide: the proxy asks for none, and passes the rest of the request on as it is."""
    body = call("search", {"query": "x"}, id="a")
    meta = dict(body["params"]["_meta"])
    body["params"]["_meta"]["progressToken"] = 1

    async def sent() -> Any:
        stdio = StdioUpstream(ECHO, TIMEOUT)
        try:
            return await stdio.send(body, "caller")
        finally:
            await stdio.close()

    answer = run(sent())
    assert answer["id"] == "a"
    received = answer["result"]["received"]
    assert received["params"] == {**body["params"], "_meta": meta}


def test_a_callers_answer_is_not_passed_to_the_stdio_server() -> None:
    """The proxy refuses the server's requests itself, so a caller was asked nothing: its
    answer could reach a request the server made during another caller's call."""
    notified = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    answer = {"jsonrpc": "2.0", "id": 0, "result": {"action": "accept", "content": {}}}

    async def seen() -> Any:
        stdio = StdioUpstream(ECHO, TIMEOUT)
        try:
            assert await stdio.send([answer, notified], "caller") is None
            return await stdio.send(call("search", {"query": "x"}), "caller")
        finally:
            await stdio.close()

    assert run(seen())["result"]["before"] == [notified]


def test_a_line_over_the_limit_fails_its_call_and_restarts_the_server() -> None:
    """The stream cannot be read past a line over the limit: the process is killed, the
    calls in flight fail, and the next call gets a new process."""

    async def calls() -> tuple[Any, str, Any]:
        stdio = StdioUpstream(LOCAL, TIMEOUT, limit=4096)
        try:
            before = await stdio.send(call("search", {"query": "small"}, id=1), "caller")
            first = stdio.process
            assert first is not None
            with pytest.raises(UpstreamFailed) as failed:
                await stdio.send(call("search", {"query": "x" * 4096}, id=2), "caller")
            after = await stdio.send(call("search", {"query": "small"}, id=3), "caller")
            assert stdio.process is not first
            async with asyncio.timeout(TIMEOUT):
                await first.wait()  # killed
            return before, str(failed.value), after
        finally:
            await stdio.close()

    before, failed, after = run(calls())
    assert "found small" in str(before["result"])
    assert failed == "sent a message longer than 4096 bytes"
    assert after["id"] == 3
    assert "found small" in str(after["result"])


def test_a_server_that_closes_its_output_is_stopped_and_started_again() -> None:
    """It runs on, but nothing more can be read from it: its call fails at once, and the
    next call gets a new process (which fails the same way here) rather than waiting for
    an answer that cannot come."""
    mute = (sys.executable, "-c", "import os, time; os.close(1); time.sleep(60)")

    async def reasons() -> list[str]:
        stdio = StdioUpstream(mute, TIMEOUT)
        failures = []
        try:
            for id in (1, 2):
                with pytest.raises(UpstreamFailed) as failed:
                    await stdio.send(call("search", {"query": "x"}, id=id), "caller")
                failures.append(str(failed.value))
            return failures
        finally:
            await stdio.close()

    assert run(reasons()) == ["exited", "exited"]


def test_a_server_that_takes_no_more_input_is_stopped_and_no_call_is_left_behind() -> None:
    """Writing a batch to it fails part way (its first message is more than the pipe
    holds): the batch fails, none of its calls stays in flight, and the process is not
    kept for the next call."""
    deaf = (sys.executable, "-c", "import os, time; os.close(0); time.sleep(60)")
    batch = [call("search", {"query": "x" * (1 << 20)}, id=1), call("search", {"query": "y"}, id=2)]

    async def left() -> tuple[str, dict[int, Any], Any]:
        stdio = StdioUpstream(deaf, TIMEOUT)
        try:
            with pytest.raises(UpstreamFailed) as failed:
                await stdio.send(batch, "caller")
            return str(failed.value), dict(stdio.pending), stdio.process
        finally:
            await stdio.close()

    reason, pending, kept = run(left())
    assert reason == "exited"
    assert pending == {}
    assert kept is None


def request(method: str, params: dict[str, Any], id: int | str = 1) -> dict[str, Any]:
    """A stateless (2026-07-28) request: the protocol envelope in ``_meta``."""
    meta = call("", {})["params"]["_meta"]
    return {"jsonrpc": "2.0", "id": id, "method": method, "params": {**params, "_meta": meta}}


def test_an_unreachable_upstream_is_a_json_rpc_error(w: World) -> None:
    token = token_for(w, machine(w), resource=w.at("/mcp/gone"))
    response = post_to(w, "/mcp/gone", call("search", {"query": "x"}), token)
    assert response.status_code == 200
    assert response.json()["error"] == {
        "code": UPSTREAM_ERROR,
        "message": "upstream 'gone' is unreachable",
    }


def initialize(id: int = 1) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": id,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "test", "version": "1"},
        },
    }


def test_a_session_belongs_to_the_caller_that_opened_it(w: World) -> None:
    owner = token_for(w, machine(w))
    other = token_for(w, machine(w))
    opened = post_to(w, "/mcp/tools", initialize(), owner)
    assert opened.status_code == 200, opened.text
    session = opened.headers["mcp-session-id"]
    ping = {"jsonrpc": "2.0", "id": 2, "method": "ping"}
    headers = {"Mcp-Session-Id": session, "MCP-Protocol-Version": "2025-11-25"}
    assert post_to(w, "/mcp/tools", ping, other, **headers).status_code == 404
    assert post_to(w, "/mcp/tools", ping, owner, **headers).status_code == 200
    sent = {"Authorization": f"Bearer {other}", **headers}
    assert httpx.delete(w.url, headers=sent, timeout=TIMEOUT).status_code == 404
    sent = {"Authorization": f"Bearer {owner}", **headers}
    assert httpx.delete(w.url, headers=sent, timeout=TIMEOUT).status_code in (200, 204)


def test_a_token_signed_by_a_new_key_is_accepted_once_the_jwks_is_fetched_again(
    w: World,
) -> None:
    client = machine(w)
    assert post_to(w, "/mcp/tools", call("search", {"query": "a"}), token_for(w, client),
                   **modern("search")).status_code == 200  # fmt: skip
    w.oauth.keys.rotate()
    time.sleep(1.1)  # the proxy fetches the key set at most once a second
    token = token_for(w, client)
    response = post_to(w, "/mcp/tools", call("search", {"query": "b"}), token, **modern("search"))
    assert response.status_code == 200, response.text


def test_tools_list_through_the_sdk_is_filtered_per_agent(w: World) -> None:
    risky = machine(w, risk="high")

    async def session() -> list[str]:
        async with sdk_client(w, key_provider(w, risky)) as mcp:
            return [t.name for t in (await mcp.list_tools()).tools]

    assert run(session()) == []  # read_only is for agents below high risk


def test_a_handshake_era_client_gets_filtered_lists_over_sse(w: World) -> None:
    client = machine(w)

    async def session() -> tuple[str, list[str], str]:
        import httpx2

        http = httpx2.AsyncClient(auth=key_provider(w, client), timeout=TIMEOUT)
        transport = streamable_http_client(w.url, http_client=http)
        async with Client(transport, read_timeout_seconds=TIMEOUT, mode="legacy") as mcp:
            tools = await mcp.list_tools()
            result: Any = await mcp.call_tool("search", {"query": "sse"})
            return mcp.protocol_version, [t.name for t in tools.tools], result.content[0].text

    version, names, text = run(session())
    assert version == "2025-11-25"
    assert names == ["search", "read_file"]
    assert text == "found sse"


def test_prompts_are_listed_and_got_only_where_policy_allows(w: World) -> None:
    token = token_for(w, machine(w), resource=w.at("/mcp/local"))
    listed = post_to(w, "/mcp/local", request("prompts/list", {}), token)
    assert listed.status_code == 200, listed.text
    assert listed.json()["result"]["prompts"] == []  # no policy permits prompt.get
    get = request("prompts/get", {"name": "summarize"}, id=2)
    refused = post_to(w, "/mcp/local", get, token)
    assert refused.json()["error"]["code"] == FORBIDDEN
    assert refused.headers["tessera-decision-id"]


def test_an_api_key_is_traded_for_a_token_for_this_resource(w: World) -> None:
    agent = w.add_agent()
    created = w.oauth.http.post(
        "/oauth/api-keys",
        json={"agent_id": agent, "scope": "mcp:tools"},
        headers={"Authorization": f"Bearer {w.oauth.token}"},
    )
    assert created.status_code == 201, created.text
    key = created.json()["api_key"]
    response = post_to(w, "/mcp/tools", call("search", {"query": "key"}), key, **modern("search"))
    assert response.status_code == 200, response.text
    assert "found key" in response.text
    forged = key[:-4] + "AAAA"
    refused = post_to(w, "/mcp/tools", call("search", {"query": "key"}), forged)
    assert refused.status_code == 401
    assert 'error="invalid_token"' in refused.headers["www-authenticate"]


def test_an_opaque_token_is_introspected_at_the_issuer(w: World) -> None:
    response = post_to(w, "/mcp/tools", call("search", {"query": "x"}), "not-a-jwt-0123456789")
    assert response.status_code == 401
    assert response.json() == {
        "error": "invalid_token",
        "error_description": "the token is not active",
    }
