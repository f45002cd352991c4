"""The high-value agents example (docs/high-value-agents.md) end to end, driven as
clients drive it: a payments MCP server (the official SDK) behind the MCP proxy, decided
by the PDP on ``policies/examples/payments``, tokens from the issuer. The agent's client
authenticates with private_key_jwt and its certificate, which a (pretend)
TLS-terminating proxy forwards in a header to the issuer and the MCP proxy alike, so its
tokens are certificate-bound at ``urn:tessera:acr:key+mtls``. A person approves one
transfer out of band (OpenID CIBA, on the approval page over HTTP); the token that
approval gives pays that transfer and no other.

The issuer's CIBA clock is the test's: waiting the poll interval is a step of the clock.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import httpx2
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.mcpserver import MCPServer
from mcp.shared.exceptions import MCPError

from issuer.models import AGENT_EXTENSION, AGENT_SCHEMA
from issuer.oauth.clients import CIBA
from pep.mcp_proxy.config import ContextArgument, Upstream
from pep.mcp_proxy.jsonrpc import FORBIDDEN
from tests.issuer.conftest import TOKEN, unique
from tests.issuer.oauth_server import ClientKey, Registered
from tests.issuer.test_ciba import Ciba, Clock, Person, add_person, answer, signed_in
from tests.issuer.test_mtls import HEADER, self_signed
from tests.pep.mcp_proxy.test_proxy import call, modern
from tests.pep.mcp_proxy.world import World, run, world

PAYMENTS = Path(__file__).resolve().parents[3] / "policies" / "examples" / "payments"
PATH = "/mcp/payments"
HUMAN = "urn:tessera:acr:key+mtls+human"
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
TIMEOUT = 10.0
PAYMENT = {
    "type": "payment_initiation",
    "instructedAmount": {"currency": "USD", "amount": "4200"},
    "creditorName": "ACME",
}


def payments_server() -> MCPServer:
    """The payments service: it pays whatever it is asked to (the proxy decides)."""
    server = MCPServer("payments")

    @server.tool(name="payments.transfer")
    def transfer(amount: str, creditor: str) -> str:
        return f"paid {amount} USD to {creditor}"

    return server


@dataclass
class Example:
    world: World
    url: str  # the payments endpoint on the proxy: the tokens' resource
    ciba: Ciba  # the issuer, its CIBA clock, and the approvals it recorded
    seen: list[httpx2.Response] = field(default_factory=list)


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Example]:
    clock = Clock()
    clock.now = time.time() - 30  # behind the wall clock, so advancing it stays in the past
    told: list[dict[str, Any]] = []
    issuer = {"client_cert_header": HEADER, "clock": clock, "on_human": told.append}
    folder = tmp_path_factory.mktemp("payments")
    with world("sqlite", folder, PAYMENTS, issuer=issuer) as w:
        app = payments_server().streamable_http_app(streamable_http_path="/mcp")
        upstream = Upstream(
            name="payments",
            path=PATH,
            url=f"{w.serve(app, lifespan=True)}/mcp",
            scopes=("payments",),
            context={
                "amount": ContextArgument("amount", "USD"),
                "creditor": ContextArgument("creditor"),
            },
        )
        origin = w.add_proxy((upstream,), client_cert_header=HEADER)
        yield Example(w, f"{origin}{PATH}", Ciba(w.oauth, clock, told))


@dataclass(frozen=True)
class Agent:
    """The payments agent: its directory id, its client, and the certificate header."""

    id: str
    client: Registered
    certificate: dict[str, str]


def register_agent(example: Example) -> Agent:
    """SCIM: an external, high-risk payments agent whose minimum is key+mtls; then its
    client: private_key_jwt with two keys, one for its assertions and one of its
    certificate (one key would be one factor), for client credentials and CIBA (poll)."""
    w = example.world
    extension = {
        "owner": "treasury",
        "purpose": "payments",
        "riskLevel": "high",
        "agentType": "external",
        "minimumAcr": "urn:tessera:acr:key+mtls",
    }
    document = {
        "schemas": [AGENT_SCHEMA, AGENT_EXTENSION],
        "name": unique("pay-bot"),
        AGENT_EXTENSION: extension,
    }
    created = w.oauth.http.post(
        "/scim/v2/Agents", json=document, headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert created.status_code == 201, created.text
    agent_id: str = created.json()["id"]
    w.wait_for(lambda: all(d.agent(agent_id) is not None for d in w.directories))
    certificate, private = self_signed("pay-bot")
    key = ClientKey.new()  # signs the assertions; the certificate has a key of its own
    tls = ClientKey("ES256", unique("k-tls"), private)
    metadata = {
        "agent_id": agent_id,
        "token_endpoint_auth_method": "private_key_jwt",
        "grant_types": ["client_credentials", CIBA],
        "backchannel_token_delivery_mode": "poll",
        "scope": "payments",
        "jwks": {"keys": [key.public_jwk, tls.public_jwk]},
        "client_name": unique("payments-app"),
    }
    client = w.oauth._registered(metadata, key)
    pem = certificate.public_bytes(serialization.Encoding.PEM).decode()
    return Agent(agent_id, client, {HEADER: quote(pem)})


def authenticated(example: Example, agent: Agent, **form: str) -> dict[str, str]:
    assertion = example.world.oauth.assertion(agent.client, aud=example.world.oauth.issuer)
    return {"client_assertion_type": JWT_BEARER, "client_assertion": assertion, **form}


def post(example: Example, agent: Agent, path: str, **form: str) -> httpx.Response:
    """An authenticated request of the agent's client to the issuer, with its certificate."""
    data = authenticated(example, agent, **form)
    return example.world.oauth.http.post(path, data=data, headers=agent.certificate)


def own_token(example: Example, agent: Agent) -> dict[str, Any]:
    response = post(
        example, agent, "/oauth/token", grant_type="client_credentials", resource=example.url
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


def transfer(
    example: Example, agent: Agent, token: str, amount: str, creditor: str = "ACME"
) -> str | MCPError:
    """payments.transfer through the proxy with the MCP SDK: the tool's text, or the
    MCPError of a refusal (the proxy's answers are kept in ``example.seen``)."""

    async def seen(response: httpx2.Response) -> None:
        example.seen.append(response)

    headers = {"Authorization": f"Bearer {token}", **agent.certificate}
    http = httpx2.AsyncClient(headers=headers, timeout=TIMEOUT, event_hooks={"response": [seen]})

    async def call() -> str | MCPError:
        async with Client(
            streamable_http_client(example.url, http_client=http), read_timeout_seconds=TIMEOUT
        ) as mcp:
            arguments = {"amount": amount, "creditor": creditor}
            try:
                result = await mcp.call_tool("payments.transfer", arguments)
            except MCPError as exc:
                return exc
            text: str = result.content[0].text  # type: ignore[union-attr]
            return text

    example.seen.clear()
    outcome: str | MCPError = run(call())
    return outcome


def refused(outcome: str | MCPError) -> int:
    """The JSON-RPC error code of a refused call."""
    assert isinstance(outcome, MCPError), outcome
    return outcome.error.code


def refusal(example: Example) -> httpx2.Response:
    """The proxy's answer to the refused tools/call."""
    return next(r for r in reversed(example.seen) if r.request.method == "POST")


def known_person(example: Example) -> Person:
    """A person in the directory, once every decision point (the issuer's exchange check
    among them) knows them: the directory reaches them through the store's change feed."""
    person = add_person(example.ciba)
    w = example.world
    w.wait_for(lambda: all(d.person(person.id) is not None for d in w.directories))
    return person


def approve(example: Example, agent: Agent, person: Person) -> str:
    """The agent asks the person (CIBA, poll), the person approves on the approval page,
    the agent polls: the token the approval gave."""
    asked = post(
        example,
        agent,
        "/oauth/bc-authorize",
        login_hint=person.name,
        scope="openid payments",
        resource=example.url,
        binding_message="Pay ACME 4200 USD, code 7F3A",
        authorization_details=json.dumps([PAYMENT]),
    )
    assert asked.status_code == 200, asked.text
    auth_req_id = asked.json()["auth_req_id"]
    redeem = {"grant_type": CIBA, "auth_req_id": auth_req_id}
    pending = post(example, agent, "/oauth/token", **redeem)
    assert pending.json()["error"] == "authorization_pending", pending.text
    with signed_in(example.ciba, person) as browser:
        assert answer(browser, auth_req_id, "approve").status_code == 200
    example.ciba.clock.advance(5)  # the poll interval
    granted = post(example, agent, "/oauth/token", **redeem)
    assert granted.status_code == 200, granted.text
    token: str = granted.json()["access_token"]
    return token


def test_a_large_transfer_needs_the_persons_approval_of_that_transfer(example: Example) -> None:
    agent, person = register_agent(example), known_person(example)
    machine = own_token(example, agent)
    claims = jwt.decode(machine["access_token"], options={"verify_signature": False})
    assert claims["acr"] == "urn:tessera:acr:key+mtls" and "x5t#S256" in claims["cnf"]

    # under 1,000 USD the agent pays on its own
    assert transfer(example, agent, machine["access_token"], "200") == "paid 200 USD to ACME"

    # 4,200 USD: refused with RFC 9470's challenge for the human level
    assert refused(transfer(example, agent, machine["access_token"], "4200")) == FORBIDDEN
    challenge = refusal(example)
    assert challenge.status_code == 401
    assert challenge.headers["www-authenticate"].startswith(
        'Bearer error="insufficient_user_authentication"'
    )
    assert f'acr_values="{HUMAN}"' in challenge.headers["www-authenticate"]

    # the person approves that transfer; the agent retries with the token it got
    approved = approve(example, agent, person)
    claims = jwt.decode(approved, options={"verify_signature": False})
    assert (claims["sub"], claims["act"], claims["acr"]) == (person.id, {"sub": agent.id}, HUMAN)
    assert claims["authorization_details"] == [PAYMENT]
    assert transfer(example, agent, approved, "4200") == "paid 4200 USD to ACME"

    # the same approval pays nothing else: more, another creditor, or again
    for amount, creditor in (("4300", "ACME"), ("4200", "Mallory"), ("4200", "ACME")):
        assert refused(transfer(example, agent, approved, amount, creditor)) == FORBIDDEN
        assert refusal(example).status_code == 200  # a plain deny: no stronger token helps

    # the approval is on the admin trail, with what the person saw
    (approval,) = [
        r
        for r in example.ciba.told
        if r["action"] == "backchannel.approve" and r["user"] == person.id
    ]
    assert approval["binding_message"] == "Pay ACME 4200 USD, code 7F3A"
    assert approval["authorization_details"] == [PAYMENT]


def test_an_approval_token_without_its_certificate_is_refused(example: Example) -> None:
    agent, person = register_agent(example), known_person(example)
    approved = approve(example, agent, person)
    headers = {
        "Authorization": f"Bearer {approved}",
        "Accept": "application/json, text/event-stream",
        **modern("payments.transfer"),
    }
    arguments = {"amount": "4200", "creditor": "ACME"}
    body = call("payments.transfer", arguments)
    answered = httpx.post(example.url, json=body, headers=headers, timeout=TIMEOUT)
    assert answered.status_code == 401
    assert 'error="invalid_token"' in answered.headers["www-authenticate"]
    assert "certificate" in answered.headers["www-authenticate"]
