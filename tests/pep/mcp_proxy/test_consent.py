"""A user in the loop: the SDK's authorization-code provider signs a user in (headless
browser: login and consent pages of the real issuer), a payment the policy lets the agent
make only with the user's consent is answered ``-32042`` with the issuer's consent page,
the user consents there, and the same call passes. An agent's exchanged token acts for
its user. On SQLite and PostgreSQL."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.auth import OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import AuthorizationCodeResult, OAuthClientMetadata
from mcp.shared.exceptions import MCPError, UrlElicitationRequiredError

from issuer.hashing import hash_password
from pep.mcp_proxy.jsonrpc import CONSENT_REQUIRED
from tests.issuer.conftest import unique
from tests.issuer.test_user_flows import ACCESS_TOKEN_TYPE, TOKEN_EXCHANGE, Page, s256
from tests.pep.mcp_proxy.test_proxy import Memory, call, modern
from tests.pep.mcp_proxy.world import CONSENT_SCOPE, World, run, world
from tests.stores import BACKENDS

TIMEOUT = 10.0
REDIRECT_URI = "http://127.0.0.1:9/callback"  # the application's; never contacted
MAX_STEPS = 8
MAX_RETRIES = 100  # the PDP follows consents within a second or so


@pytest.fixture(scope="module", params=BACKENDS)
def w(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """The consent and the directory reach the PDP through each store's change feed."""
    with world(request.param, tmp_path_factory.mktemp(request.param)) as built:
        yield built


class Browser:
    """A user's browser: keeps cookies, follows redirects step by step, signs in and
    answers consent pages with Allow."""

    def __init__(self, w: World, name: str, password: str) -> None:
        self.http = httpx.Client(follow_redirects=False, timeout=TIMEOUT)
        self.issuer = w.oauth.issuer
        self.name = name
        self.password = password
        self.consent_pages: list[Page] = []

    def visit(self, url: str) -> str:
        """Follow ``url`` through the issuer; the URL it finally leaves the issuer for."""
        response = self.http.get(url)
        for _ in range(MAX_STEPS):
            assert response.status_code in (200, 303), (response.status_code, response.text)
            if response.status_code == 303:
                target = urljoin(str(response.url), response.headers["location"])
                if not target.startswith(self.issuer):
                    return target
                response = self.http.get(target)
                continue
            page = Page(response.text)
            path = urlsplit(str(response.url)).path
            if path == "/oauth/login":
                form = {**page.inputs, "username": self.name, "password": self.password}
                response = self.http.post(f"{self.issuer}/oauth/login", data=form)
            else:
                assert path == "/oauth/consent", path
                self.consent_pages.append(page)
                form = {**page.inputs, "decision": "allow"}
                response = self.http.post(f"{self.issuer}/oauth/consent", data=form)
        raise AssertionError("the issuer kept redirecting")


def test_a_payment_needs_the_users_consent_then_passes(w: World) -> None:
    agent = w.add_agent(purpose="payments")
    password = secrets.token_urlsafe(12)
    name = unique("user")
    w.oauth.store.create(
        "User",
        {"userName": name, "password": hash_password(password)},
        unique={"userName": name.casefold()},
        actor="admin",
    )
    browser = Browser(w, name, password)
    answered: dict[str, str] = {}

    async def redirect(url: str) -> None:
        # The application names the agent that will act for the user.
        answered.update(
            {
                k: v[0]
                for k, v in parse_qs(
                    urlsplit(browser.visit(f"{url}&{urlencode({'requested_actor': agent})}")).query
                ).items()
            }
        )

    async def callback() -> AuthorizationCodeResult:
        return AuthorizationCodeResult(
            code=answered["code"], state=answered.get("state"), iss=answered.get("iss")
        )

    metadata = OAuthClientMetadata(
        redirect_uris=[REDIRECT_URI],
        grant_types=["authorization_code"],
        token_endpoint_auth_method="none",
        scope="mcp:tools",
        client_name="Assistant",
    )
    provider = OAuthClientProvider(w.url, metadata, Memory(), redirect, callback)

    async def session() -> tuple[list[str], MCPError, str]:
        http = httpx2.AsyncClient(auth=provider, timeout=TIMEOUT)
        transport = streamable_http_client(w.url, http_client=http)
        async with Client(transport, read_timeout_seconds=TIMEOUT) as mcp:
            listed = [t.name for t in (await mcp.list_tools()).tools]
            with pytest.raises(MCPError) as raised:
                await mcp.call_tool("payments.transfer", {"amount": 200})
            refused = raised.value
            assert refused.code == CONSENT_REQUIRED
            elicitation = UrlElicitationRequiredError.from_error(refused.error).elicitations[0]
            landed = browser.visit(elicitation.url)
            text = ""
            for _ in range(MAX_RETRIES):
                try:
                    result: Any = await mcp.call_tool("payments.transfer", {"amount": 200})
                except MCPError as exc:
                    assert exc.code == CONSENT_REQUIRED
                    time.sleep(0.05)
                    continue
                text = result.content[0].text
                break
            return listed, refused, f"{landed}|{text}"

    listed, refused, outcome = run(session())
    landed, text = outcome.split("|")
    # listing decides without arguments or consent: the payment is not listed until then
    assert listed == ["search", "read_file"]
    # the consent page names the agent and exactly the scope the policy asks for
    consent = browser.consent_pages[-1]
    assert consent.items["scopes"] == [CONSENT_SCOPE]
    assert refused.message == f"tools/call 'payments.transfer' needs your consent: {CONSENT_SCOPE}"
    assert urlsplit(landed).path == "/consent/done"
    assert landed.startswith(w.proxy)
    assert text == "sent 200 USD"


def test_an_exchanged_token_acts_for_its_user_with_the_users_consent(w: World) -> None:
    agent = w.add_agent(purpose="payments")
    name, password = unique("user"), secrets.token_urlsafe(12)
    user = w.oauth.store.create(
        "User",
        {"userName": name, "password": hash_password(password)},
        unique={"userName": name.casefold()},
        actor="admin",
    ).id
    scope = f"mcp:tools {CONSENT_SCOPE}"
    app = w.oauth.register(
        {
            "token_endpoint_auth_method": "none",
            "grant_types": ["authorization_code"],
            "redirect_uris": [REDIRECT_URI],
            "scope": scope,
        },
        token=None,
    ).json()["client_id"]
    verifier = secrets.token_urlsafe(48)
    query = {
        "response_type": "code",
        "client_id": app,
        "redirect_uri": REDIRECT_URI,
        "code_challenge": s256(verifier),
        "code_challenge_method": "S256",
        "scope": scope,
        "resource": w.resource,
        "requested_actor": agent,
        "state": "s",
    }
    browser = Browser(w, name, password)
    back = browser.visit(f"{w.oauth.issuer}/oauth/authorize?{urlencode(query)}")
    code = parse_qs(urlsplit(back).query)["code"][0]
    user_token = w.oauth.http.post(
        "/oauth/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "code_verifier": verifier,
            "client_id": app,
            "redirect_uri": REDIRECT_URI,
        },
    ).json()["access_token"]
    agent_client = w.oauth.register(
        {
            "agent_id": agent,
            "grant_types": ["client_credentials", TOKEN_EXCHANGE],
            "token_endpoint_auth_method": "client_secret_basic",
            "scope": scope,
        }
    ).json()
    basic = (agent_client["client_id"], agent_client["client_secret"])
    actor_token = w.oauth.http.post(
        "/oauth/token", data={"grant_type": "client_credentials"}, auth=basic
    ).json()["access_token"]
    exchange = {
        "grant_type": TOKEN_EXCHANGE,
        "subject_token": user_token,
        "subject_token_type": ACCESS_TOKEN_TYPE,
        "actor_token": actor_token,
        "actor_token_type": ACCESS_TOKEN_TYPE,
        "resource": w.resource,
        "scope": scope,
    }
    exchanged = None
    for _ in range(MAX_RETRIES):  # the PDP allows it once it has seen the user's consent
        response = w.oauth.http.post("/oauth/token", data=exchange, auth=basic)
        if response.status_code == 200:
            exchanged = response.json()["access_token"]
            break
        time.sleep(0.05)
    assert exchanged is not None, response.text
    body = call("payments.transfer", {"amount": 200})
    answer = httpx.post(
        w.url,
        json=body,
        headers={
            "Authorization": f"Bearer {exchanged}",
            "Accept": "application/json, text/event-stream",
            **modern("payments.transfer"),
        },
        timeout=TIMEOUT,
    )
    assert answer.status_code == 200, answer.text
    assert "sent 200 USD" in answer.text
    decision_id = answer.headers["tessera-decision-id"]
    records = [json.loads(e.record) for e in w.oauth.store.audit("agent", 0, 100_000)]
    (record,) = [r for r in records if r["decision_id"] == decision_id]
    assert (record["agent"], record["user"], record["delegation"]) == (agent, user, [agent])
    assert record["decided_by"] == ["agents.small_transfers"]
    assert record["context"]["amount"] == {"amount": "200", "currency": "USD"}
