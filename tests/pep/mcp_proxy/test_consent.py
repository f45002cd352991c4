"""A user in the loop: a user signs in to an application that names the agent to act for
them (headless browser: login and consent pages of the real issuer), and the agent
exchanges that token for one that acts for the user. A payment the policy lets the agent
make only with the user's consent is answered ``-32042`` with the issuer's consent page,
the user consents there, and the same call passes. The user's token itself is refused:
only the agent's exchanged token acts for the user. On SQLite and PostgreSQL."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

import httpx
import pytest

from issuer.hashing import hash_password
from pep.mcp_proxy.jsonrpc import CONSENT_REQUIRED
from tests.issuer.conftest import unique
from tests.issuer.test_user_flows import ACCESS_TOKEN_TYPE, TOKEN_EXCHANGE, Page, s256
from tests.pep.mcp_proxy.test_proxy import call, modern
from tests.pep.mcp_proxy.world import CONSENT_SCOPE, World, world
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


def rpc(w: World, token: str, tool: str, arguments: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        w.url,
        json=call(tool, arguments),
        headers={
            "Authorization": f"Bearer {token}",
            "Accept": "application/json, text/event-stream",
            **modern(tool),
        },
        timeout=TIMEOUT,
    )


def answer_of(response: httpx.Response) -> dict[str, Any]:
    """The JSON-RPC answer of a proxied call, whether it came as JSON or as SSE."""
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        data = [line[5:] for line in response.text.splitlines() if line.startswith("data:")]
        return dict(json.loads(data[-1]))
    return dict(response.json())


def delegated(
    w: World, agent: str, browser: Browser, scope: str, resources: Sequence[str] = ()
) -> tuple[str, str, tuple[str, str]]:
    """A user signs in to an application that names ``agent`` as the one to act for
    them (``requested_actor``), consenting to ``scope``; the agent exchanges that token
    for one that acts for the user (RFC 8693), with the audiences ``resources`` (the
    proxy's resource by default). (the user's token, the agent's exchanged token, the
    agent's client credentials)."""
    audiences = list(resources) or [w.resource]
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
        "resource": audiences,
        "requested_actor": agent,
        "state": "s",
    }
    back = browser.visit(f"{w.oauth.issuer}/oauth/authorize?{urlencode(query, doseq=True)}")
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
            "scope": f"mcp:tools {CONSENT_SCOPE}",
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
        "resource": audiences,
        "scope": scope,
    }
    for _ in range(MAX_RETRIES):  # the PDP allows it once it has seen the user's consent
        response = w.oauth.http.post("/oauth/token", data=exchange, auth=basic)
        if response.status_code == 200:
            return user_token, str(response.json()["access_token"]), basic
        time.sleep(0.05)
    raise AssertionError(response.text)


def add_user(w: World) -> tuple[str, str, str]:
    name, password = unique("user"), secrets.token_urlsafe(12)
    user = w.oauth.store.create(
        "User",
        {"userName": name, "password": hash_password(password)},
        unique={"userName": name.casefold()},
        actor="admin",
    ).id
    return user, name, password


def test_a_payment_needs_the_users_consent_then_passes(w: World) -> None:
    agent = w.add_agent(purpose="payments")
    _, name, password = add_user(w)
    browser = Browser(w, name, password)
    user_token, exchanged, _ = delegated(w, agent, browser, "mcp:tools")
    # the user's own token names the agent (may_act) but is not the agent's: whoever
    # holds it must not act as the agent; the agent exchanges it first
    direct = rpc(w, user_token, "search", {"query": "x"})
    assert direct.status_code == 401
    assert 'error="invalid_token"' in direct.headers["www-authenticate"]
    refused = answer_of(rpc(w, exchanged, "payments.transfer", {"amount": 200}))
    error = refused["error"]
    assert error["code"] == CONSENT_REQUIRED
    assert error["message"] == (
        f"tools/call 'payments.transfer' needs your consent: {CONSENT_SCOPE}"
    )
    elicitation = error["data"]["elicitations"][0]
    landed = browser.visit(elicitation["url"])
    # the consent page names the agent and exactly the scope the policy asks for
    assert browser.consent_pages[-1].items["scopes"] == [CONSENT_SCOPE]
    assert urlsplit(landed).path == "/consent/done"
    assert landed.startswith(w.proxy)
    text = ""
    for _ in range(MAX_RETRIES):  # the same call, with the same token, once consented
        answer = answer_of(rpc(w, exchanged, "payments.transfer", {"amount": 200}))
        if "error" in answer:
            assert answer["error"]["code"] == CONSENT_REQUIRED
            time.sleep(0.05)
            continue
        text = answer["result"]["content"][0]["text"]
        break
    assert text == "sent 200 USD"


def test_an_exchanged_token_acts_for_its_user_with_the_users_consent(w: World) -> None:
    agent = w.add_agent(purpose="payments")
    user, name, password = add_user(w)
    scope = f"mcp:tools {CONSENT_SCOPE}"
    _, exchanged, _ = delegated(w, agent, Browser(w, name, password), scope)
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
