"""The admin MCP server over Streamable HTTP, protected by Tessera's own OAuth: an access
token from the issuer with the tessera:admin scope and this server as audience, else 401
or 403 with the RFC 6750 / RFC 9728 challenge. Driven by the SDK's HTTP client."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from issuer.app import HttpBounds, HttpRunning, bind, serve_http
from issuer.keys import KeyRing
from issuer.oauth.tokens import TokenMinter
from issuer.store import Store
from pep.admin_mcp.http import MCP_PATH, http_app
from pep.admin_mcp.server import Settings
from tests.conftest import SHIPPED_POLICIES
from tests.pep.test_admin_mcp import Person, call, seed_agent
from tests.servers import LoopThread

ISSUER = "https://issuer.tessera.test"


@dataclass
class Running:
    url: str
    admin_id: str
    minter: TokenMinter
    store: Store

    def token(self, scope: str = "tessera:admin", audience: str | None = None, **extra: Any) -> str:
        claims = {"agent_id": self.admin_id, "agent_type": "background", **extra}
        return self.minter.mint(
            subject=self.admin_id,
            client_id="admin-client",
            audience=[audience or self.url],
            scope=scope.split(),
            extra=claims,
        ).token


@pytest.fixture
def running(store: Store) -> Iterator[Running]:
    admin_id = seed_agent(store, "admin-bot", purpose="administration")
    seed_agent(store, "pay-bot", purpose="payments")
    minter = TokenMinter(KeyRing(store), ISSUER)
    thread = LoopThread()
    sock = bind("127.0.0.1", 0)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}{MCP_PATH}"
    settings = Settings(store, Path(SHIPPED_POLICIES), admin="stdio-admin-not-used")
    server: HttpRunning = thread.run(
        serve_http(http_app(settings, ISSUER, url), sock, lifespan=True)
    )
    try:
        yield Running(url, admin_id, minter, store)
    finally:
        try:
            thread.run(server.stop())
        finally:
            thread.stop()


INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "test", "version": "1"},
    },
}


def post(url: str, token: str | None) -> httpx.Response:
    headers = {"Accept": "application/json, text/event-stream"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.post(url, json=INITIALIZE, headers=headers, timeout=10)


def test_without_a_token_it_answers_401_naming_its_resource_metadata(running: Running) -> None:
    response = post(running.url, None)
    assert response.status_code == 401
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="tessera", scope="tessera:admin", resource_metadata=')
    assert "error=" not in challenge  # RFC 6750 §3.1: no error code without a token
    metadata_url = "http://127.0.0.1:{}/.well-known/oauth-protected-resource/mcp".format(
        running.url.split(":")[2].split("/")[0]
    )
    assert f'resource_metadata="{metadata_url}"' in challenge
    metadata = httpx.get(metadata_url, timeout=10).json()
    assert metadata["resource"] == running.url
    assert metadata["authorization_servers"] == [ISSUER]


@pytest.mark.parametrize(
    "problem",
    ["another audience", "another issuer", "acting for a user", "suspended agent", "garbage"],
)
def test_a_token_it_must_not_accept_gets_401_invalid_token(running: Running, problem: str) -> None:
    if problem == "another audience":
        token = running.token(audience="https://elsewhere.example/mcp")
    elif problem == "another issuer":
        other = TokenMinter(KeyRing(running.store), "https://other-issuer.example")
        token = other.mint(
            subject=running.admin_id,
            client_id="c",
            audience=[running.url],
            scope=["tessera:admin"],
            extra={"agent_id": running.admin_id},
        ).token
    elif problem == "acting for a user":
        token = running.token(act={"sub": "someone"})
    elif problem == "suspended agent":
        token = running.token()
        record = running.store.get("Agent", running.admin_id)
        data = json.loads(json.dumps(record.data))
        data["urn:tessera:params:scim:schemas:extension:agent:1.0:Agent"]["status"] = "suspended"
        running.store.replace(
            "Agent", record.id, data, unique={}, expected_version=None, actor="seed"
        )
    else:
        token = "not-a-token"
    response = post(running.url, token)
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]


def test_without_the_admin_scope_it_answers_403_insufficient_scope(running: Running) -> None:
    response = post(running.url, running.token(scope="reports:read"))
    assert response.status_code == 403
    assert 'error="insufficient_scope"' in response.headers["WWW-Authenticate"]
    assert response.json()["error"] == "insufficient_scope"


def connect(
    running: Running, token: str, person: Person, statuses: list[int] | None = None
) -> Client:
    """The SDK's client over Streamable HTTP with a bearer token; ``statuses`` collects
    the HTTP status of every response."""

    async def seen(response: httpx2.Response) -> None:
        if statuses is not None:
            statuses.append(response.status_code)

    http = httpx2.AsyncClient(
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
        event_hooks={"response": [seen]},
    )
    return Client(
        streamable_http_client(running.url, http_client=http), elicitation_callback=person
    )


def test_the_sdk_client_is_refused_without_the_admin_scope(running: Running) -> None:
    statuses: list[int] = []
    token = running.token(scope="reports:read")
    listed: list[Any] = []

    async def main() -> None:
        with anyio.fail_after(30):
            async with connect(running, token, Person(), statuses) as client:
                listed.append(await client.list_tools())

    with pytest.raises(Exception, match="error"):
        anyio.run(main)
    assert listed == []
    assert statuses and set(statuses) == {403}


def test_with_an_admin_token_the_sdk_client_works_and_writes_as_the_token_subject(
    running: Running,
) -> None:
    person = Person()

    async def main() -> Any:
        with anyio.fail_after(30):
            async with connect(running, running.token(), person) as client:
                tools = [tool.name for tool in (await client.list_tools()).tools]
                agents = await call(client, "list_agents")
                suspended = await call(client, "suspend_agent", agent="pay-bot")
                return tools, agents, suspended

    tools, agents, suspended = anyio.run(main)
    assert "suspend_agent" in tools and "what_if_policy_change" in tools
    assert {a["name"] for a in agents["agents"]} == {"admin-bot", "pay-bot"}
    assert suspended["agent"]["status"] == "suspended"
    assert len(person.asked) == 1
    pay_bot = running.store.find("Agent", "name", "pay-bot").id
    assert [c.actor for c in running.store.history("Agent", pay_bot)] == [
        "seed",
        running.admin_id,
    ]


def test_a_request_for_another_host_is_refused(running: Running) -> None:
    headers = {
        "Accept": "application/json, text/event-stream",
        "Authorization": f"Bearer {running.token()}",
        "Host": "attacker.example",
    }
    response = httpx.post(running.url, json=INITIALIZE, headers=headers, timeout=10)
    assert response.status_code == 421


def test_tokens_verify_with_the_keys_the_issuer_publishes(store: Store) -> None:
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from tests.servers import HttpServer

    admin_id = seed_agent(store, "admin-bot")
    ring = KeyRing(store)
    minter = TokenMinter(ring, ISSUER)

    async def jwks(request: Any) -> JSONResponse:
        return JSONResponse(ring.jwks())

    issuer = HttpServer(lambda port: Starlette(routes=[Route("/oauth/jwks", jwks)]))
    thread = LoopThread()
    sock = bind("127.0.0.1", 0)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}{MCP_PATH}"
    settings = Settings(store, Path(SHIPPED_POLICIES), admin="unused")
    app = http_app(settings, ISSUER, url, jwks=f"http://127.0.0.1:{issuer.port}/oauth/jwks")
    server: HttpRunning = thread.run(serve_http(app, sock, lifespan=True))
    try:
        token = minter.mint(
            subject=admin_id,
            client_id="c",
            audience=[url],
            scope=["tessera:admin"],
            extra={"agent_id": admin_id},
        ).token
        accepted = post(url, token)
        ring.rotate()
        ring.load()
        unpublished = TokenMinter(ring, ISSUER).mint(
            subject=admin_id,
            client_id="c",
            audience=[url],
            scope=["tessera:admin"],
            extra={"agent_id": admin_id},
        )
        with_new_key = post(url, unpublished.token)  # a kid it has not seen published
    finally:
        try:
            thread.run(server.stop())
        finally:
            thread.stop()
            issuer.close()
    assert accepted.status_code == 200
    assert with_new_key.status_code == 401  # the set is fetched again REFETCH s later at most


def test_the_command_serves_within_the_http_bounds_and_stops_on_sigterm(store: Store) -> None:
    """``tessera admin-mcp --http`` is served as every Tessera HTTP door is: a head past
    the bound is 431, and SIGTERM stops it cleanly."""
    exe = Path(sys.executable).parent / "tessera"
    process = subprocess.Popen(
        [
            *(str(exe), "admin-mcp", "--store", store.url, "--policies", str(SHIPPED_POLICIES)),
            *("--http", "127.0.0.1:0", "--issuer", ISSUER),
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        said = ""
        for _ in range(50):  # the banner, after what the MCP SDK logs as it starts
            said += process.stderr.readline()
            found = re.search(r"Streamable HTTP at (http://127\.0\.0\.1:\d+/mcp)", said)
            if found or process.poll() is not None:
                break
        assert found, said
        huge = {"x-filler": "a" * (HttpBounds().head_bytes + 1)}
        response = httpx.post(found.group(1), headers=huge, timeout=10.0)
        assert response.status_code == 431, response.text
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
    assert process.returncode == 0
