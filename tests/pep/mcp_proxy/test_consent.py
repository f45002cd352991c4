"""A user in the loop: the SDK's authorization-code provider signs a user in (headless
browser: login and consent pages of the real issuer), a payment the policy lets the agent
make only with the user's consent is answered ``-32042`` with the issuer's consent page,
the user consents there, and the same call passes."""

from __future__ import annotations

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
from tests.issuer.test_user_flows import Page
from tests.pep.mcp_proxy.test_proxy import Memory
from tests.pep.mcp_proxy.world import CONSENT_SCOPE, World, run, world

TIMEOUT = 10.0
REDIRECT_URI = "http://127.0.0.1:9/callback"  # the application's; never contacted
MAX_STEPS = 8
MAX_RETRIES = 100  # the PDP follows consents within a second or so


@pytest.fixture(scope="module")
def w(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with world("sqlite", tmp_path_factory.mktemp("consent")) as built:
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
