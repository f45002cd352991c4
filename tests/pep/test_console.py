"""The operator console at /console on a real ``tessera serve``: signing in (the issuer's
code flow with PKCE, or the bootstrap token), the Agents pages, suspending an agent, and
what the console refuses (no session, a forged form)."""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import grpc
import httpx
import pytest
from playwright.sync_api import Page, sync_playwright

from issuer.models import AGENT_EXTENSION, AGENT_SCHEMA
from pdp.serve.proto import authorizer_pb2 as pb
from pdp.serve.proto import authorizer_pb2_grpc as pb_grpc
from pep.console.security import CSP
from tests.conftest import SHIPPED_POLICIES
from tests.servers import Serving, tessera_on

TOKEN = "console-admin-token-0123456789"
USER_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:User"
PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def serving(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serving]:
    url = f"sqlite:///{tmp_path_factory.mktemp('console')}/tessera.db"
    with tessera_on(SHIPPED_POLICIES, url, TOKEN) as served:
        yield served


def scim(serving: Serving) -> httpx.Client:
    return httpx.Client(
        base_url=f"{serving.http}/scim/v2",
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=10,
    )


def add_agent(
    serving: Serving,
    name: str,
    owner: str = "finance",
    purpose: str = "reporting",
    risk: str = "low",
) -> str:
    """Provision an agent over SCIM; its id."""
    body = {
        "schemas": [AGENT_SCHEMA, AGENT_EXTENSION],
        "name": name,
        AGENT_EXTENSION: {"owner": owner, "purpose": purpose, "riskLevel": risk},
    }
    with scim(serving) as client:
        created = client.post("/Agents", json=body)
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


def add_user(serving: Serving, name: str, roles: list[str]) -> None:
    body = {
        "schemas": [USER_SCHEMA],
        "userName": name,
        "password": PASSWORD,
        "roles": [{"value": role} for role in roles],
    }
    with scim(serving) as client:
        created = client.post("/Users", json=body)
    assert created.status_code == 201, created.text


def status_of(serving: Serving, agent_id: str) -> str:
    with scim(serving) as client:
        return str(client.get(f"/Agents/{agent_id}").json()[AGENT_EXTENSION]["status"])


def authorize(serving: Serving, agent_id: str) -> pb.AuthorizeResponse:
    with grpc.insecure_channel(f"127.0.0.1:{serving.grpc_port}") as channel:
        request = pb.AuthorizeRequest(
            agent=pb.Agent(id=agent_id),
            action="tool.call",
            resource=pb.Resource(type="tool", id="search"),
        )
        response: pb.AuthorizeResponse = pb_grpc.AuthorizerStub(channel).Authorize(
            request, timeout=5
        )
        return response


def denied_within(serving: Serving, agent_id: str, seconds: float) -> bool:
    """Whether Authorize refuses the agent within ``seconds`` (asked every 20 ms)."""
    deadline = time.monotonic() + seconds
    for _ in range(1000):
        if not authorize(serving, agent_id).allow:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return False


@contextmanager
def token_session(serving: Serving) -> Iterator[httpx.Client]:
    """A client signed in to the console with the bootstrap admin token."""
    with httpx.Client(base_url=serving.http, timeout=10) as client:
        page = client.get("/console/signin")
        pre = re.search(r'name="pre" value="([^"]+)"', page.text)
        assert pre is not None, page.text
        form = {"pre": pre.group(1), "token": TOKEN}
        signed = client.post("/console/signin/token", data=form)
        assert signed.status_code == 303, signed.text
        yield client


# ---------------------------------------------------------------- without a browser


def test_an_unauthenticated_visit_redirects_to_sign_in(serving: Serving) -> None:
    answer = httpx.get(f"{serving.http}/console/agents", timeout=10)
    assert answer.status_code == 303
    assert answer.headers["location"] == "/console/signin?next=/console/agents"


def test_every_answer_carries_the_strict_content_security_policy(serving: Serving) -> None:
    answer = httpx.get(f"{serving.http}/console/signin", timeout=10)
    assert answer.headers["content-security-policy"] == CSP
    assert "script-src 'self'" in CSP and "unsafe-inline" not in CSP
    assert "<script>" not in answer.text  # no inline script: only src='/console/static/…'


def test_the_session_cookie_is_http_only_and_strict(serving: Serving) -> None:
    with token_session(serving) as client:
        cookie = next(c for c in client.cookies.jar if c.name == "tessera_console")
        assert cookie.has_nonstandard_attr("HttpOnly")
        assert cookie.get_nonstandard_attr("SameSite") == "strict"
        assert cookie.path == "/console"


def test_a_forged_form_is_refused_and_changes_nothing(serving: Serving) -> None:
    agent = add_agent(serving, "forged-target")
    with token_session(serving) as client:
        for token in ("0" * 64, "é" * 64):  # any text: refused, never an error
            forged = {"csrf": token, "confirm": "yes"}
            answer = client.post(f"/console/agents/{agent}/suspend", data=forged)
            assert answer.status_code == 403, answer.text
        no_token = client.post(f"/console/agents/{agent}/suspend", data={"confirm": "yes"})
        assert no_token.status_code == 403
    assert status_of(serving, agent) == "active"


def test_a_post_without_a_session_is_refused(serving: Serving) -> None:
    agent = add_agent(serving, "no-session-target")
    answer = httpx.post(
        f"{serving.http}/console/agents/{agent}/suspend", data={"confirm": "yes"}, timeout=10
    )
    assert answer.status_code == 403
    assert status_of(serving, agent) == "active"


def test_a_wrong_bootstrap_token_signs_no_one_in(serving: Serving) -> None:
    with httpx.Client(base_url=serving.http, timeout=10) as client:
        page = client.get("/console/signin")
        pre = re.search(r'name="pre" value="([^"]+)"', page.text)
        assert pre is not None
        answer = client.post("/console/signin/token", data={"pre": pre.group(1), "token": "x"})
        assert answer.status_code == 401
        forged = client.post("/console/signin/token", data={"pre": "é", "token": TOKEN})
        assert forged.status_code == 403, forged.text
        assert client.get("/console/signin/start").status_code == 303  # a state in flight
        back = client.get("/console/callback", params={"state": "é", "code": "c"})
        assert (back.status_code, "was not yours" in back.text) == (400, True)
        assert client.get("/console/agents").status_code == 303


# ---------------------------------------------------------------- in a browser


def chromium() -> str:
    found = shutil.which("chromium")
    if found is None:
        pytest.fail("Chromium is not installed: `apt-get install -y chromium` (make test does)")
    return found


@contextmanager
def browser_page(**options: Any) -> Iterator[Page]:
    """A page of the system's headless Chromium, closed after."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        try:
            yield browser.new_page(**options)
        finally:
            browser.close()


def sign_in_with_token(page: Page, base: str, path: str) -> None:
    """Open a console page and sign in there with the bootstrap admin token."""
    page.goto(f"{base}{path}")
    page.click("details summary")
    page.fill("input[name=token]", TOKEN)
    page.click("#signin-token")


def sign_in(page: Page, base: str, user: str) -> None:
    """Through the issuer: the console's sign-in, the login form, the consent."""
    page.goto(f"{base}/console/agents")
    page.click("#signin-issuer")
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.click("button[value=allow]")


def test_an_operator_signs_in_suspends_an_agent_and_signs_out(serving: Serving) -> None:
    agent = add_agent(serving, "ledger-bot")
    add_user(serving, "olivia", ["tessera-admin"])
    assert authorize(serving, agent).allow
    with browser_page() as page:
        sign_in(page, serving.http, "olivia")
        assert page.url == f"{serving.http}/console/agents"
        assert page.inner_text("#operator") == "olivia"
        page.fill("#search", "ledger")
        page.press("#search", "Enter")
        rows = page.locator("#agents tbody tr")
        assert rows.count() == 1
        page.click("#agents a:text('ledger-bot')")
        assert page.inner_text("#status") == "active"
        page.click("#suspend")
        page.click("#confirm")
        assert page.inner_text("#status") == "suspended"
        assert denied_within(serving, agent, 1.0)
        page.click("#signout")
        assert page.url.startswith(f"{serving.http}/console/signin")
        page.goto(f"{serving.http}/console/agents")
        assert page.url.startswith(f"{serving.http}/console/signin")


def test_a_user_without_the_admin_role_is_not_let_in(serving: Serving) -> None:
    add_user(serving, "pat", [])
    with browser_page() as page:
        sign_in(page, serving.http, "pat")
        assert "tessera-admin" in page.inner_text("#error")
        page.goto(f"{serving.http}/console/agents")
        assert page.url.startswith(f"{serving.http}/console/signin")


def test_a_decision_appears_in_the_live_stream_and_opens_into_its_explanation(
    serving: Serving,
) -> None:
    agent = add_agent(serving, "stream-bot")
    add_user(serving, "sasha", ["tessera-admin"])
    with browser_page() as page:
        sign_in(page, serving.http, "sasha")
        page.goto(f"{serving.http}/console/decisions?agent={agent}")
        page.wait_for_selector("#live:text('live')")
        assert page.locator("#decisions tbody tr").count() == 0
        assert authorize(serving, agent).allow
        link = page.locator("#decisions tbody tr a").first
        link.wait_for(timeout=10_000)  # the stream, not a reload, brought it
        assert page.locator("#decisions tbody td.allow").count() == 1
        link.click()
        assert page.inner_text("#effect") == "allow"
        assert "permit agents.read_only" in page.inner_text("#explanation")


def test_a_decision_id_that_is_not_one_is_not_found(serving: Serving) -> None:
    with token_session(serving) as client:
        assert client.get("/console/decisions/not-an-id").status_code == 404
        assert client.get(f"/console/decisions/{'0' * 32}").status_code == 404
