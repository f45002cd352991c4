"""The MCP auth proxy end to end: SDK clients, the proxy, the issuer, the PDP and an SDK MCP
server, all real, on 127.0.0.1 (SQLite store)."""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import httpx
import httpx2
import jwt
import pytest
from mcp import Client
from mcp.client.auth import TokenStorage
from mcp.client.auth.extensions.client_credentials import (
    ClientCredentialsOAuthProvider,
    PrivateKeyJWTOAuthProvider,
)
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import OAuthClientInformationFull, OAuthToken
from mcp.shared.exceptions import MCPError
from mcp_types import CLIENT_CAPABILITIES_META_KEY, PROTOCOL_VERSION_META_KEY
from mcp_types.version import LATEST_HANDSHAKE_VERSION, LATEST_MODERN_VERSION
from starlette.testclient import TestClient

from issuer.store import AuditEntry
from pep.mcp_proxy.answers import DECISION_HEADER
from pep.mcp_proxy.app import Proxy
from pep.mcp_proxy.jsonrpc import FORBIDDEN
from tests.issuer.oauth_server import Registered
from tests.pep.mcp_proxy.world import UPSTREAM_TOKEN, World, run, world

TIMEOUT = 10.0
ACCEPT = "application/json, text/event-stream"


@pytest.fixture(scope="module")
def w(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with world("sqlite", tmp_path_factory.mktemp("proxy")) as built:
        yield built


class Memory(TokenStorage):
    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client = client_info


def key_provider(w: World, client: Registered) -> PrivateKeyJWTOAuthProvider:
    """The SDK's private_key_jwt provider, signing its assertions with the client's key."""
    key = client.key
    assert key is not None

    async def assertion(audience: str) -> str:
        now = int(time.time())
        claims = {
            "iss": client.client_id,
            "sub": client.client_id,
            "aud": audience,
            "iat": now,
            "exp": now + 60,
            "jti": uuid.uuid4().hex,
        }
        return key.sign(claims)

    return PrivateKeyJWTOAuthProvider(
        w.url, Memory(), client.client_id, assertion, scope=client.scope, issuer=w.oauth.issuer
    )


def secret_provider(w: World, client: Registered) -> ClientCredentialsOAuthProvider:
    assert client.secret is not None
    return ClientCredentialsOAuthProvider(
        w.url,
        Memory(),
        client.client_id,
        client.secret,
        scope=client.scope,
        issuer=w.oauth.issuer,
    )


def sdk_client(w: World, auth: httpx2.Auth) -> Client:
    http = httpx2.AsyncClient(auth=auth, timeout=TIMEOUT)
    return Client(streamable_http_client(w.url, http_client=http), read_timeout_seconds=TIMEOUT)


def machine(w: World, scope: str = "mcp:tools", **agent: Any) -> Registered:
    agent_id = w.add_agent(**agent)
    return w.oauth.key_client(scope=scope, agent_id=agent_id)


def token_for(w: World, client: Registered, resource: str | None = None) -> str:
    assert client.key is not None
    response = w.oauth.http.post(
        "/oauth/token",
        data={
            "grant_type": "client_credentials",
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": w.oauth.assertion(client),
            "scope": client.scope,
            "resource": resource or w.resource,
        },
    )
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


def post(w: World, body: Any, token: str | None = None, **headers: str) -> httpx.Response:
    sent = {"Accept": "application/json, text/event-stream", **headers}
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    return httpx.post(w.url, json=body, headers=sent, timeout=TIMEOUT)


def call(name: str, arguments: dict[str, Any], id: int | str = 1) -> dict[str, Any]:
    """A stateless (2026-07-28) tools/call: the protocol envelope rides in ``_meta``."""
    meta = {PROTOCOL_VERSION_META_KEY: LATEST_MODERN_VERSION, CLIENT_CAPABILITIES_META_KEY: {}}
    return {
        "jsonrpc": "2.0",
        "id": id,
        "method": "tools/call",
        "params": {"name": name, "arguments": arguments, "_meta": meta},
    }


def modern(name: str) -> dict[str, str]:
    """The routing headers of a stateless tools/call."""
    return {
        "MCP-Protocol-Version": LATEST_MODERN_VERSION,
        "Mcp-Method": "tools/call",
        "Mcp-Name": name,
    }


# ---------------------------------------------------------------- the resource server


def test_protected_resource_metadata_at_the_path_inserted_well_known_url(w: World) -> None:
    at_path = httpx.get(f"{w.proxy}/.well-known/oauth-protected-resource/mcp/tools")
    assert at_path.status_code == 200
    assert at_path.json() == {
        "resource": w.resource,
        "authorization_servers": [w.oauth.issuer],
        "scopes_supported": ["fs:write", "mcp:tools"],
        "bearer_methods_supported": ["header"],
        "resource_name": "tools",
    }
    # with several upstreams, the root names none of them
    assert httpx.get(f"{w.proxy}/.well-known/oauth-protected-resource").status_code == 404


def test_one_upstream_is_also_described_at_the_root(w: World) -> None:
    config = replace(w.config, upstreams=w.config.upstreams[:1])
    with TestClient(Proxy(config).app()) as client:
        at_root = client.get("/.well-known/oauth-protected-resource")
        at_path = client.get("/.well-known/oauth-protected-resource/mcp/tools")
    assert at_root.status_code == 200
    assert at_root.json() == at_path.json()
    assert at_root.json()["resource"] == w.resource


def test_no_token_is_a_401_with_the_metadata_and_scope_challenge(w: World) -> None:
    response = post(w, call("search", {"query": "x"}))
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == (
        f'Bearer resource_metadata="{w.proxy}/.well-known/oauth-protected-resource/mcp/tools", '
        'scope="mcp:tools"'
    )
    # RFC 6750 §3.1: no error code for a request that sent no token, in the body either
    assert response.json() == {"error_description": "an access token is required"}


def test_a_token_for_another_audience_is_a_401_invalid_token(w: World) -> None:
    client = machine(w)
    token = token_for(w, client, resource="https://elsewhere.example/mcp")
    response = post(w, call("search", {"query": "x"}), token)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == (
        'Bearer error="invalid_token", error_description="aud '
        "'https://elsewhere.example/mcp' does not include '"
        f"{w.resource}'\", "
        f'resource_metadata="{w.proxy}/.well-known/oauth-protected-resource/mcp/tools", '
        'scope="mcp:tools"'
    )
    assert w.oauth.issuer  # the token never reached the upstream
    assert token not in str(w.recorder.seen)


def test_a_token_in_the_query_string_is_not_read(w: World) -> None:
    token = token_for(w, machine(w))
    response = httpx.post(
        f"{w.url}?access_token={token}",
        json=call("search", {"query": "x"}),
        headers={"Accept": "application/json, text/event-stream"},
    )
    assert response.status_code == 401


def test_missing_scopes_are_a_403_naming_every_scope_needed(w: World) -> None:
    token = token_for(w, machine(w))  # mcp:tools, but not fs:write
    response = post(w, call("fs.delete", {"path": "/tmp/x"}), token)
    assert response.status_code == 403
    assert response.headers["www-authenticate"] == (
        'Bearer error="insufficient_scope", error_description="the call needs the scopes '
        'mcp:tools fs:write; missing fs:write", '
        f'resource_metadata="{w.proxy}/.well-known/oauth-protected-resource/mcp/tools", '
        'scope="mcp:tools fs:write"'
    )


def test_a_foreign_origin_is_refused(w: World) -> None:
    token = token_for(w, machine(w))
    response = post(w, call("search", {"query": "x"}), token, Origin="https://evil.example")
    assert response.status_code == 403


def test_a_body_over_the_limit_is_refused(w: World) -> None:
    token = token_for(w, machine(w))
    big = call("search", {"query": "x" * (w.config.max_body + 1)})
    assert post(w, big, token).status_code == 413


def test_mcp_method_and_name_headers_must_match_the_body(w: World) -> None:
    token = token_for(w, machine(w))
    body = call("search", {"query": "x"})
    wrong_method = post(w, body, token, **{"Mcp-Method": "tools/list"})
    wrong_name = post(w, body, token, **{"Mcp-Method": "tools/call", "Mcp-Name": "fs.delete"})
    for response in (wrong_method, wrong_name):
        assert response.status_code == 400
        assert response.json()["error"]["code"] == -32020


# ---------------------------------------------------------------- SDK clients


def test_an_sdk_client_with_private_key_jwt_lists_only_what_it_may_call(w: World) -> None:
    client = machine(w)

    async def session() -> tuple[list[str], str]:
        async with sdk_client(w, key_provider(w, client)) as mcp:
            tools = await mcp.list_tools()
            result = await mcp.call_tool("search", {"query": "tessera"})
            return [t.name for t in tools.tools], result.content[0].text  # type: ignore[union-attr]

    names, text = run(session())
    assert names == ["search", "read_file"]  # not payments.transfer nor fs.delete
    assert text == "found tessera"
    assert w.recorder.seen and set(w.recorder.seen) == {f"Bearer {UPSTREAM_TOKEN}"}


def test_an_sdk_client_with_a_secret_is_denied_a_tool_the_policy_refuses(w: World) -> None:
    agent = w.add_agent()
    client = w.oauth.secret_client(scope="mcp:tools", agent_id=agent)

    async def session() -> MCPError:
        async with sdk_client(w, secret_provider(w, client)) as mcp:
            with pytest.raises(MCPError) as raised:
                await mcp.call_tool("payments.transfer", {"amount": 5})
            return raised.value

    refused = run(session())
    assert refused.code == FORBIDDEN
    assert refused.message == "tools/call 'payments.transfer' is not allowed"
    assert refused.data["decision_id"]


def test_every_call_carries_its_decision_id_to_the_audit_trail(w: World) -> None:
    client = machine(w)
    token = token_for(w, client)
    response = post(w, call("search", {"query": "audit"}), token, **modern("search"))
    assert response.status_code == 200
    decision_id = response.headers[DECISION_HEADER]
    records = [e for e in w.oauth.store.audit("agent", 0, 100_000)]
    found = [r for r in records if _data(r).get("decision_id") == decision_id]
    assert len(found) == 1
    record = _data(found[0])
    assert record["agent"] == client.agent_id
    assert record["resource"] == {"type": "tool", "id": "search"}
    assert record["context"]["mcp_method"] == "tools/call"
    assert record["context"]["mcp_server"] == "tools"
    assert record["allow"] is True


@pytest.mark.parametrize(
    ("amount", "reason"),
    [("1e20", "largest"), ("0.00001", "decimal places"), ('"1E+3"', "exponent")],
)
def test_an_amount_no_money_can_be_made_of_is_invalid_params_naming_the_argument(
    w: World, amount: str, reason: str
) -> None:
    """Read by the amount grammar before the PDP is asked: the caller learns what to fix,
    rather than getting a fail-closed deny with no decision id."""
    token = token_for(w, machine(w))
    body = json.dumps(call("payments.transfer", {"amount": "AMOUNT"})).replace('"AMOUNT"', amount)
    headers = {"Authorization": f"Bearer {token}", "Accept": ACCEPT}
    response = httpx.post(
        w.url,
        content=body,
        headers={**headers, "Content-Type": "application/json"},
        timeout=TIMEOUT,
    )
    assert response.status_code == 200, response.text
    error = response.json()["error"]
    assert error["code"] == -32602
    assert error["message"].startswith("Invalid params: argument 'amount': invalid amount")
    assert reason in error["message"]
    assert error["data"] == {"argument": "amount"}
    assert DECISION_HEADER not in response.headers


def _data(entry: AuditEntry) -> dict[str, Any]:
    """An audit entry's record: the canonical JSON text that was hashed."""
    record: dict[str, Any] = json.loads(entry.record)
    return record


def signed(w: World, claims: dict[str, Any], **header: Any) -> str:
    """A token signed by the issuer's current key, with these claims and header members."""
    key = w.oauth.keys.signing_key()
    members = {"typ": "at+jwt", "kid": key.kid, **header}
    return jwt.encode(claims, key.private, algorithm=key.alg, headers=members)


def claims_for(w: World, agent: str, **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "iss": w.oauth.issuer,
        "sub": agent,
        "agent_id": agent,
        "aud": w.resource,
        "client_id": "c",
        "scope": "mcp:tools",
        "iat": now,
        "exp": now + 60,
        "jti": uuid.uuid4().hex,
        **changes,
    }
    return {k: v for k, v in claims.items() if v is not None}


class Seconds(int):
    """A time claim given as seconds from when the test runs."""


@pytest.mark.parametrize(
    ("changes", "header", "reason"),
    [
        ({"exp": Seconds(-60)}, {}, "the token has expired"),
        ({"nbf": Seconds(600)}, {}, "the token is not valid yet"),
        ({"iss": "https://other.example"}, {}, "iss 'https://other.example' is not"),
        ({}, {"typ": "JWT"}, "typ 'JWT' is not at+jwt"),
        ({}, {"kid": "unknown"}, "unknown kid 'unknown'"),
        ({"agent_id": None}, {}, "the token names no agent"),
        ({"cnf": {"x5t#S256": "AAAA"}}, {}, "a certificate-bound token"),
        ({"agent_id": None, "sub": "u1", "may_act": {"sub": "x"}}, {}, "a user's token must"),
    ],
)
def test_a_jwt_is_checked_for_every_claim_and_header_member(
    w: World, changes: dict[str, Any], header: dict[str, Any], reason: str
) -> None:
    agent = w.add_agent()
    now = int(time.time())  # times are made when the test runs, not when it is collected
    changes = {k: now + v if isinstance(v, Seconds) else v for k, v in changes.items()}
    token = signed(w, claims_for(w, agent, **changes), **header)
    response = post(w, call("search", {"query": "x"}), token, **modern("search"))
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_token"
    assert response.json()["error_description"].startswith(reason)


def test_a_valid_hand_made_token_passes(w: World) -> None:
    token = signed(w, claims_for(w, w.add_agent()))
    response = post(w, call("search", {"query": "x"}), token, **modern("search"))
    assert response.status_code == 200, response.text


def test_a_signature_algorithm_outside_the_allowlist_is_refused(w: World) -> None:
    config = replace(w.config, algorithms=("RS256",))  # the issuer signs with ES256
    token = token_for(w, machine(w))
    with TestClient(Proxy(config).app()) as client:
        response = client.post(
            "/mcp/tools", json=call("search", {}), headers={"Authorization": f"Bearer {token}"}
        )
    assert response.status_code == 401
    assert response.json()["error_description"].startswith("unknown kid")


def test_the_proxys_own_origin_is_allowed(w: World) -> None:
    token = token_for(w, machine(w))
    body = call("search", {"query": "x"})
    response = post(w, body, token, Origin=w.proxy, **modern("search"))
    assert response.status_code == 200, response.text


def test_without_the_pdp_every_call_is_denied(w: World) -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    config = replace(w.config, pdp=f"127.0.0.1:{closed.getsockname()[1]}", pdp_timeout=0.2)
    closed.close()
    token = token_for(w, machine(w))
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json, text/event-stream"}
    with TestClient(Proxy(config).app()) as client:
        refused = client.post("/mcp/tools", json=call("search", {}), headers=headers)
    assert refused.status_code == 200
    error = refused.json()["error"]
    assert error["code"] == FORBIDDEN
    assert error["data"]["reasons"][0].startswith("fail closed: UNAVAILABLE")


def test_a_session_id_the_proxy_did_not_hand_out_is_unknown(w: World) -> None:
    """After a restart or expiry, a guessed or leaked id must not be taken over (sessions
    are of the protocol revisions before 2026-07-28)."""
    token = token_for(w, machine(w))
    headers = {"MCP-Protocol-Version": LATEST_HANDSHAKE_VERSION, "Mcp-Session-Id": "s1"}
    response = post(w, {"jsonrpc": "2.0", "id": 1, "method": "ping"}, token, **headers)
    assert response.status_code == 404
    assert response.json()["error"]["message"] == "unknown session"


def refused_with(response: httpx.Response, description: str) -> bool:
    challenge = response.headers.get("www-authenticate", "")
    return response.status_code == 401 and f'error_description="{description}"' in challenge


def test_over_grpc_a_revoked_token_is_refused_once_it_is_verified_again(w: World) -> None:
    """With decisions over gRPC the proxy has no revocations at hand: it asks the issuer
    (RFC 7662) each time it verifies a JWT, once per ``token_cache`` seconds."""
    origin = w.add_proxy(w.config.upstreams, token_cache=0.2)
    url = f"{origin}/mcp/tools"
    client = machine(w)
    token = token_for(w, client, resource=url)
    headers = {"Accept": ACCEPT, "Authorization": f"Bearer {token}", **modern("search")}
    body = call("search", {"query": "r"})
    kept = httpx.post(url, json=body, headers=headers, timeout=TIMEOUT)
    assert kept.status_code == 200, kept.text
    w.revoke(client, token)
    for _ in range(100):  # bounded: the token is verified again after 0.2 s
        refused = httpx.post(url, json=body, headers=headers, timeout=TIMEOUT)
        if refused.status_code != 200:
            break
        time.sleep(0.05)
    assert refused_with(refused, "the token is not active"), refused.headers


def test_over_grpc_a_proxy_that_cannot_introspect_refuses_tokens(w: World) -> None:
    """Fail closed: when the issuer cannot say the token is still active, it is not used."""
    origin = w.add_proxy(w.config.upstreams, client_secret="not-the-secret")
    url = f"{origin}/mcp/tools"
    token = token_for(w, machine(w), resource=url)
    headers = {"Accept": ACCEPT, "Authorization": f"Bearer {token}", **modern("search")}
    refused = httpx.post(url, json=call("search", {}), headers=headers, timeout=TIMEOUT)
    assert refused_with(refused, "the token could not be introspected"), refused.headers
