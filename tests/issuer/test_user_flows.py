"""A user's flows on the wire, on SQLite and PostgreSQL: the authorization code grant with
PKCE (RFC 6749 §4.1, RFC 7636) through the login and consent pages, stored consents,
refresh token rotation (RFC 6749 §6, OAuth 2.1 §4.3.1) and token exchange for an agent
acting for the user (RFC 8693).

A browser is an httpx client that keeps cookies and follows no redirect, so every step
of the flow is checked. The authorization server runs on 127.0.0.1 with an exchange
check that records what it is asked and refuses only for the agents a test tells it to.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

import httpx
import jwt
import pytest
from authlib.integrations.httpx_client import OAuth2Client  # type: ignore[import-untyped]

from issuer import wire
from issuer.hashing import hash_password
from issuer.keys import KeyRing
from issuer.oauth.authorize import SESSION_COOKIE
from issuer.oauth.bodies import MAX_BODY
from issuer.oauth.grants import Exchange
from issuer.oauth.pending import Pending, PendingRequests
from tests.issuer.conftest import TIMEOUT, unique
from tests.issuer.oauth_server import OAuthService, Registered, oauth_service
from tests.servers import send_raw
from tests.stores import BACKENDS

RESOURCE = "https://api.example.com/"
SCOPE = "payments:transfer read"
REDIRECT_URI = "http://127.0.0.1:9999/cb"
STATE = "xyz"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
MAX_STEPS = 8  # redirects a browser follows within the issuer before giving up


# ---------------------------------------------------------------- the server


class ExchangeChecks:
    """The server's exchange check: records every exchange it is asked about, and refuses
    those of the agents in :attr:`refusals` (with that reason); allows the others."""

    def __init__(self) -> None:
        self.refusals: dict[str, str] = {}
        self._seen: list[Exchange] = []
        self._lock = threading.Lock()

    def __call__(self, exchange: Exchange) -> str | None:
        with self._lock:
            self._seen.append(exchange)
        return self.refusals.get(exchange.agent_id)

    def of(self, agent_id: str) -> list[Exchange]:
        """The exchanges asked for ``agent_id`` (tests share the server: each has its own
        agents)."""
        with self._lock:
            return [e for e in self._seen if e.agent_id == agent_id]


@dataclass(frozen=True)
class User:
    id: str
    name: str
    password: str


@dataclass(frozen=True)
class App:
    """A public client (auth method none) registered without a token."""

    client_id: str
    redirect_uri: str
    scope: str
    name: str


@dataclass
class Service:
    """The OAuth service (its helpers), the exchange check it uses, and the directory."""

    oauth: OAuthService
    checks: ExchangeChecks

    @property
    def issuer(self) -> str:
        return self.oauth.issuer

    @property
    def http(self) -> httpx.Client:
        """A client of the token endpoint: keeps no cookie the tests rely on."""
        return self.oauth.http

    def add_user(self, *, active: bool = True) -> User:
        name = unique("user")
        password = secrets.token_urlsafe(12)
        document: dict[str, Any] = {"userName": name, "password": hash_password(password)}
        if not active:
            document["active"] = False
        record = self.oauth.store.create(
            "User", document, unique={"userName": name.casefold()}, actor="admin"
        )
        return User(record.id, name, password)

    def add_app(self, scope: str = SCOPE) -> App:
        name = unique("Assistant")
        metadata = {
            "token_endpoint_auth_method": "none",
            "grant_types": ["authorization_code", "refresh_token"],
            "redirect_uris": [REDIRECT_URI],
            "scope": scope,
            "client_name": name,
        }
        response = self.oauth.register(metadata, token=None)
        assert response.status_code == 201, response.text
        body = response.json()
        assert "client_secret" not in body
        return App(body["client_id"], REDIRECT_URI, body["scope"], name)

    def agent_client(self, agent_id: str | None = None, scope: str = SCOPE) -> Registered:
        """A client_secret_basic client of an agent (a new active one unless given) that
        may get tokens for itself and exchange a user's."""
        metadata = {
            "agent_id": agent_id or self.oauth.add_agent(),
            "grant_types": ["client_credentials", TOKEN_EXCHANGE],
            "token_endpoint_auth_method": "client_secret_basic",
            "scope": scope,
        }
        response = self.oauth.register(metadata)
        assert response.status_code == 201, response.text
        body = response.json()
        return Registered(
            client_id=body["client_id"],
            method=body["token_endpoint_auth_method"],
            agent_id=body["agent_id"],
            scope=body["scope"],
            secret=body["client_secret"],
            response=body,
        )

    def claims(self, token: str) -> dict[str, Any]:
        """The access token's claims, verified with the published keys."""
        return self.oauth.verifier().verify(token)


@pytest.fixture(scope="module", params=BACKENDS)
def service(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    backend: str = request.param
    with _service(backend, tmp_path_factory.mktemp(backend)) as running:
        yield running


@contextmanager
def _service(backend: str, tmp_path: Path) -> Iterator[Service]:
    checks = ExchangeChecks()
    with oauth_service(backend, tmp_path, exchange_check=checks) as oauth:
        yield Service(oauth, checks)


@pytest.fixture
def browsers(service: Service) -> Iterator[Callable[[], httpx.Client]]:
    """Makes browsers: each keeps its own cookies and follows no redirect."""
    made: list[httpx.Client] = []

    def browser() -> httpx.Client:
        client = httpx.Client(base_url=service.issuer, follow_redirects=False, timeout=TIMEOUT)
        made.append(client)
        return client

    yield browser
    for client in made:
        client.close()


@pytest.fixture
def browser(browsers: Callable[[], httpx.Client]) -> httpx.Client:
    return browsers()


# ---------------------------------------------------------------- helpers


def s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


@dataclass(frozen=True)
class Pkce:
    verifier: str = field(default_factory=lambda: secrets.token_urlsafe(48))

    @property
    def challenge(self) -> str:
        return s256(self.verifier)


def authorize_params(
    app: App, pkce: Pkce, actor: str | None = None, **params: str | None
) -> dict[str, str]:
    """A valid authorization request's query; ``params`` add or replace (None removes)."""
    query: dict[str, str | None] = {
        "response_type": "code",
        "client_id": app.client_id,
        "redirect_uri": app.redirect_uri,
        "code_challenge": pkce.challenge,
        "code_challenge_method": "S256",
        "state": STATE,
        "scope": SCOPE,
        "requested_actor": actor,
        "resource": RESOURCE,
        **params,
    }
    return {k: v for k, v in query.items() if v is not None}


def location(response: httpx.Response) -> str:
    assert response.status_code == 303, (response.status_code, response.text)
    return response.headers["location"]


def request_id(response: httpx.Response, path: str) -> str:
    """The pending request id of a 303 to ``path`` on the issuer."""
    parts = urlsplit(location(response))
    assert (parts.scheme, parts.netloc, parts.path) == ("", "", path), parts
    query = parse_qs(parts.query)
    assert list(query) == ["request"], query
    return query["request"][0]


def callback(response: httpx.Response, app: App) -> dict[str, str]:
    """The parameters of a 303 to the app's redirect URI (each given exactly once)."""
    parts = urlsplit(location(response))
    assert urlunsplit((parts.scheme, parts.netloc, parts.path, "", "")) == app.redirect_uri
    query = parse_qs(parts.query, keep_blank_values=True)
    assert all(len(values) == 1 for values in query.values()), query
    return {k: v[0] for k, v in query.items()}


class Page(HTMLParser):
    """What the tests read of a page: the text of elements by id, the form's inputs."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = ""  # all of it
        self.texts: dict[str, str] = {}
        self.items: dict[str, list[str]] = {}  # the <li> texts under an element with id
        self.inputs: dict[str, str] = {}
        self._open: list[tuple[str, str | None]] = []  # (tag, id)
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "input":
            if found.get("name") is not None:
                self.inputs[str(found["name"])] = found.get("value") or ""
            return
        self._open.append((tag, found.get("id")))
        if tag == "li":
            for _, element in self._open:
                if element is not None:
                    self.items.setdefault(element, []).append("")

    def handle_endtag(self, tag: str) -> None:
        while self._open:
            if self._open.pop()[0] == tag:
                break

    def handle_data(self, data: str) -> None:
        self.text += data
        for _, element in self._open:
            if element is not None:
                self.texts[element] = self.texts.get(element, "") + data
                if self._open[-1][0] == "li" and self.items.get(element):
                    self.items[element][-1] += data


@dataclass
class Flow:
    """How an authorization went: what the browser saw, and the redirect's parameters."""

    steps: list[str]
    params: dict[str, str]
    consent_page: Page | None = None


def authorize(
    browser: httpx.Client,
    app: App,
    user: User,
    pkce: Pkce,
    actor: str | None = None,
    decision: str | None = "allow",
    **params: str | None,
) -> Flow:
    """Drive an authorization to the redirect back to the app: sign in when asked to, and
    answer the consent page with ``decision`` when it is shown."""
    steps = ["authorize"]
    response = browser.get("/oauth/authorize", params=authorize_params(app, pkce, actor, **params))
    page = None
    for _ in range(MAX_STEPS):
        target = urlsplit(location(response))
        if target.netloc:  # left the issuer: back at the app
            return Flow(steps, callback(response, app), page)
        if target.path == "/oauth/login":
            steps.append("login")
            response = browser.post(
                "/oauth/login",
                data={
                    "request": request_id(response, "/oauth/login"),
                    "username": user.name,
                    "password": user.password,
                },
            )
            assert SESSION_COOKIE in response.cookies
            continue
        assert target.path == "/oauth/consent", target
        steps.append("consent")
        pending = request_id(response, "/oauth/consent")
        response = browser.get("/oauth/consent", params={"request": pending})
        if response.status_code == 200:
            steps.append("consent page")
            page = Page(response.text)
            assert page.inputs["request"] == pending
            response = browser.post(
                "/oauth/consent",
                data={
                    "request": pending,
                    "csrf": page.inputs["csrf"],
                    "decision": decision or "allow",
                },
            )
    raise AssertionError(f"no redirect back to the app after {steps}")


def requested(browser: httpx.Client, app: App) -> str:
    """The request /oauth/authorize sends the browser on with (a valid one, for ``app``)."""
    response = browser.get("/oauth/authorize", params=authorize_params(app, Pkce()))
    return request_id(response, "/oauth/consent")


def sign_in(browser: httpx.Client, pending: str, user: User) -> httpx.Response:
    form = {"request": pending, "username": user.name, "password": user.password}
    return browser.post("/oauth/login", data=form)


def redeem(service: Service, app: App, code: str, pkce: Pkce, **form: str | None) -> httpx.Response:
    """POST /oauth/token with the authorization_code grant (``form`` adds or replaces; None
    removes)."""
    data: dict[str, str | None] = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": app.redirect_uri,
        "client_id": app.client_id,
        "code_verifier": pkce.verifier,
        **form,
    }
    return service.http.post("/oauth/token", data={k: v for k, v in data.items() if v})


def user_tokens(
    service: Service,
    browser: httpx.Client,
    app: App,
    user: User,
    actor: str | None = None,
    **params: str | None,
) -> dict[str, Any]:
    """The token response of a whole authorization code flow."""
    pkce = Pkce()
    flow = authorize(browser, app, user, pkce, actor, **params)
    response = redeem(service, app, flow.params["code"], pkce)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def refresh(service: Service, app: App, token: str, **form: str) -> httpx.Response:
    data = {"grant_type": "refresh_token", "refresh_token": token, "client_id": app.client_id}
    return service.http.post("/oauth/token", data={**data, **form})


def agent_token(service: Service, client: Registered) -> str:
    """The agent's own access token (client_credentials)."""
    response = service.http.post(
        "/oauth/token", data={"grant_type": "client_credentials"}, auth=client.basic
    )
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


def exchange(
    service: Service, client: Registered, subject: str, actor: str, **form: str | None
) -> httpx.Response:
    """POST /oauth/token with the token exchange grant, as ``client`` (``form`` adds or
    replaces; None removes)."""
    data: dict[str, str | None] = {
        "grant_type": TOKEN_EXCHANGE,
        "subject_token": subject,
        "subject_token_type": ACCESS_TOKEN_TYPE,
        "actor_token": actor,
        "actor_token_type": ACCESS_TOKEN_TYPE,
        "resource": RESOURCE,
        **form,
    }
    present = {k: v for k, v in data.items() if v is not None}
    return service.http.post("/oauth/token", data=present, auth=client.basic)


def expect_error(response: httpx.Response, status: int, error: str) -> dict[str, Any]:
    """The response is the JSON error ``error`` with ``status``, and issues nothing."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "no-store"
    body: dict[str, Any] = response.json()
    assert body["error"] == error, body
    assert "access_token" not in body and "refresh_token" not in body
    return body


def expect_page(response: httpx.Response, status: int) -> str:
    """An HTML page with ``status``, no redirect, and no code anywhere."""
    assert response.status_code == status, response.text
    assert "location" not in response.headers
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["cache-control"] == "no-store"
    assert "code=" not in response.text
    return response.text


def expect_redirect_error(response: httpx.Response, app: App, error: str) -> dict[str, str]:
    """A redirect back to the app with ``error`` and no code."""
    params = callback(response, app)
    assert params["error"] == error, params
    assert "code" not in params
    return params


def consents(browser: httpx.Client) -> list[dict[str, Any]]:
    response = browser.get("/oauth/consents")
    assert response.status_code == 200, response.text
    listing: list[dict[str, Any]] = response.json()["consents"]
    return listing


@dataclass
class Delegation:
    """A user's token from a code flow with ``requested_actor`` = the agent, and the
    agent's client and own token."""

    user: User
    app: App
    agent: Registered
    subject: str  # the user's access token (may_act names the agent)
    actor: str  # the agent's client_credentials token


def delegation(service: Service, browser: httpx.Client, agent_scope: str = SCOPE) -> Delegation:
    user, app = service.add_user(), service.add_app()
    agent = service.agent_client(scope=agent_scope)
    tokens = user_tokens(service, browser, app, user, agent.agent_id)
    return Delegation(user, app, agent, tokens["access_token"], agent_token(service, agent))


# ---------------------------------------------------------------- the happy path


def test_the_code_flow_signs_in_asks_consent_naming_app_agent_and_scopes_and_redirects_with_code(
    service: Service, browser: httpx.Client
) -> None:
    user, app, agent = service.add_user(), service.add_app(), service.oauth.add_agent()
    flow = authorize(browser, app, user, Pkce(), agent)
    assert flow.steps == ["authorize", "consent", "login", "consent", "consent page"]
    assert flow.consent_page is not None
    agent_name = service.oauth.store.get("Agent", agent).data["name"]
    assert flow.consent_page.texts["agent"] == agent_name
    assert flow.consent_page.items["scopes"] == SCOPE.split()
    assert app.name in flow.consent_page.text
    assert set(flow.params) == {"code", "state", "iss"}
    assert flow.params["state"] == STATE
    assert flow.params["iss"] == service.issuer


def test_the_code_gives_a_user_token_that_the_agent_may_act_on_and_a_refresh_token(
    service: Service, browser: httpx.Client
) -> None:
    user, app, agent = service.add_user(), service.add_app(), service.oauth.add_agent()
    body = user_tokens(service, browser, app, user, agent)
    assert body["token_type"] == "Bearer"
    assert body["scope"] == SCOPE
    assert isinstance(body["expires_in"], int) and body["expires_in"] > 0
    assert isinstance(body["refresh_token"], str) and body["refresh_token"]
    claims = service.claims(body["access_token"])
    assert claims["iss"] == service.issuer
    assert claims["sub"] == user.id
    assert claims["client_id"] == app.client_id
    assert claims["aud"] == RESOURCE
    assert claims["scope"] == SCOPE
    assert claims["may_act"] == {"sub": agent}
    assert "act" not in claims and "agent_id" not in claims


def test_authlib_redeems_the_code_with_its_s256_verifier(
    service: Service, browser: httpx.Client
) -> None:
    user, app, agent = service.add_user(), service.add_app(), service.oauth.add_agent()
    with OAuth2Client(
        app.client_id,
        token_endpoint_auth_method="none",
        redirect_uri=app.redirect_uri,
        scope=SCOPE,
        code_challenge_method="S256",
        timeout=TIMEOUT,
    ) as client:
        verifier = secrets.token_urlsafe(48)
        url, state = client.create_authorization_url(
            service.issuer + "/oauth/authorize",
            code_verifier=verifier,
            requested_actor=agent,
            resource=RESOURCE,
        )
        query = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
        assert query["code_challenge"] == s256(verifier)
        assert query["code_challenge_method"] == "S256"
        # the browser goes through the same pages with Authlib's request
        response = browser.get(url)
        pending = request_id(response, "/oauth/consent")
        response = browser.get("/oauth/consent", params={"request": pending})
        response = browser.post(
            "/oauth/login",
            data={
                "request": request_id(response, "/oauth/login"),
                "username": user.name,
                "password": user.password,
            },
        )
        response = browser.get("/oauth/consent", params={"request": pending})
        csrf = Page(response.text).inputs["csrf"]
        response = browser.post(
            "/oauth/consent", data={"request": pending, "csrf": csrf, "decision": "allow"}
        )
        redirected = location(response)
        assert callback(response, app)["state"] == state
        token = client.fetch_token(
            service.oauth.token_endpoint,
            authorization_response=redirected,
            state=state,
            code_verifier=verifier,
        )
    assert token["token_type"] == "Bearer"
    assert token["refresh_token"]
    claims = service.claims(token["access_token"])
    assert (claims["sub"], claims["client_id"], claims["may_act"]) == (
        user.id,
        app.client_id,
        {"sub": agent},
    )


def test_the_consent_is_stored_and_listed_for_the_signed_in_user(
    service: Service, browser: httpx.Client
) -> None:
    user, app, agent = service.add_user(), service.add_app(), service.oauth.add_agent()
    authorize(browser, app, user, Pkce(), agent)
    [consent] = consents(browser)
    assert set(consent) == {"id", "client_id", "agent_id", "scopes"}
    assert (consent["client_id"], consent["agent_id"]) == (app.client_id, agent)
    assert consent["scopes"] == sorted(SCOPE.split())
    record = service.oauth.store.get("Consent", consent["id"]).data
    assert record["user_id"] == user.id


def test_listing_consents_without_a_session_is_login_required(service: Service) -> None:
    expect_error(service.http.get("/oauth/consents"), 401, "login_required")


def test_a_second_authorization_with_the_consented_scopes_skips_login_and_consent_page(
    service: Service, browser: httpx.Client
) -> None:
    user, app, agent = service.add_user(), service.add_app(), service.oauth.add_agent()
    authorize(browser, app, user, Pkce(), agent)
    pkce = Pkce()
    again = authorize(browser, app, user, pkce, agent, scope="read")  # fewer: still covered
    assert again.steps == ["authorize", "consent"]
    assert again.params["state"] == STATE
    response = redeem(service, app, again.params["code"], pkce)
    assert response.status_code == 200, response.text
    assert service.claims(response.json()["access_token"])["scope"] == "read"


def test_a_scope_not_yet_consented_shows_the_consent_page_again(
    service: Service, browser: httpx.Client
) -> None:
    user, app = service.add_user(), service.add_app()
    agent = service.oauth.add_agent()
    authorize(browser, app, user, Pkce(), agent, scope="read")
    wider = authorize(browser, app, user, Pkce(), agent, scope=SCOPE)
    assert wider.steps == ["authorize", "consent", "consent page"]
    [consent] = consents(browser)
    assert consent["scopes"] == sorted(SCOPE.split())  # granting again widens the record


def test_consent_for_one_agent_does_not_cover_another(
    service: Service, browser: httpx.Client
) -> None:
    user, app = service.add_user(), service.add_app()
    authorize(browser, app, user, Pkce(), service.oauth.add_agent())
    other = authorize(browser, app, user, Pkce(), service.oauth.add_agent())
    assert other.steps == ["authorize", "consent", "consent page"]
    assert len(consents(browser)) == 2


def test_several_resources_make_several_audiences(service: Service, browser: httpx.Client) -> None:
    user, app = service.add_user(), service.add_app()
    pkce = Pkce()
    other = "https://files.example.com/"
    params = authorize_params(app, pkce)
    query = httpx.QueryParams(params).add("resource", other)
    response = browser.get("/oauth/authorize", params=query)
    pending = request_id(response, "/oauth/consent")
    response = browser.post(
        "/oauth/login",
        data={"request": pending, "username": user.name, "password": user.password},
    )
    response = browser.get("/oauth/consent", params={"request": pending})
    csrf = Page(response.text).inputs["csrf"]
    response = browser.post(
        "/oauth/consent", data={"request": pending, "csrf": csrf, "decision": "allow"}
    )
    response = redeem(service, app, callback(response, app)["code"], pkce)
    assert response.status_code == 200, response.text
    assert service.claims(response.json()["access_token"])["aud"] == [RESOURCE, other]


def test_a_redirect_uri_left_out_of_both_requests_is_the_registered_one(
    service: Service, browser: httpx.Client
) -> None:
    user, app = service.add_user(), service.add_app()
    pkce = Pkce()
    flow = authorize(browser, app, user, pkce, redirect_uri=None)
    response = redeem(service, app, flow.params["code"], pkce, redirect_uri=None)
    assert response.status_code == 200, response.text


# ---------------------------------------------------------------- refused at /authorize


def test_plain_code_challenge_method_is_invalid_request_with_the_state(
    service: Service, browser: httpx.Client
) -> None:
    app, pkce = service.add_app(), Pkce()
    response = browser.get(
        "/oauth/authorize",
        params=authorize_params(
            app, pkce, code_challenge=pkce.verifier, code_challenge_method="plain"
        ),
    )
    params = expect_redirect_error(response, app, "invalid_request")
    assert params["state"] == STATE
    assert params["iss"] == service.issuer


@pytest.mark.parametrize(
    "missing",
    [
        {"code_challenge": None, "code_challenge_method": None},
        {"code_challenge_method": None},
        {"code_challenge": None},
        {"code_challenge": "too-short"},
    ],
    ids=["no PKCE", "no method", "no challenge", "not a S256 challenge"],
)
def test_an_authorization_without_a_s256_challenge_is_invalid_request(
    service: Service, browser: httpx.Client, missing: dict[str, str | None]
) -> None:
    app = service.add_app()
    response = browser.get("/oauth/authorize", params=authorize_params(app, Pkce(), **missing))
    assert expect_redirect_error(response, app, "invalid_request")["state"] == STATE


def test_response_type_token_is_unsupported_response_type(
    service: Service, browser: httpx.Client
) -> None:
    app = service.add_app()
    response = browser.get(
        "/oauth/authorize", params=authorize_params(app, Pkce(), response_type="token")
    )
    expect_redirect_error(response, app, "unsupported_response_type")


@pytest.mark.parametrize(
    "redirect_uri",
    [
        "http://127.0.0.1:9999/cc",
        "http://127.0.0.1:9999/cb/",
        "http://127.0.0.1:9998/cb",
        "http://localhost:9999/cb",
    ],
)
def test_a_redirect_uri_differing_from_the_registered_one_gets_a_400_page_and_no_redirect(
    service: Service, browser: httpx.Client, redirect_uri: str
) -> None:
    app = service.add_app()
    response = browser.get(
        "/oauth/authorize", params=authorize_params(app, Pkce(), redirect_uri=redirect_uri)
    )
    expect_page(response, 400)


@pytest.mark.parametrize("client_id", ["unknown", None], ids=["unknown", "missing"])
def test_an_unknown_client_gets_a_400_page(
    service: Service, browser: httpx.Client, client_id: str | None
) -> None:
    app = service.add_app()
    response = browser.get(
        "/oauth/authorize", params=authorize_params(app, Pkce(), client_id=client_id)
    )
    expect_page(response, 400)


def test_an_agents_client_credentials_client_gets_a_400_page(
    service: Service, browser: httpx.Client
) -> None:
    agent = service.agent_client()
    app = App(agent.client_id, REDIRECT_URI, SCOPE, "agent")
    expect_page(browser.get("/oauth/authorize", params=authorize_params(app, Pkce())), 400)


def test_a_scope_beyond_the_clients_is_invalid_scope(
    service: Service, browser: httpx.Client
) -> None:
    app = service.add_app(scope="read")
    response = browser.get("/oauth/authorize", params=authorize_params(app, Pkce(), scope=SCOPE))
    assert expect_redirect_error(response, app, "invalid_scope")["state"] == STATE


def test_a_request_too_large_to_carry_to_the_consent_page_is_invalid_request(
    service: Service, browser: httpx.Client
) -> None:
    app = service.add_app()
    state = "s" * 7_000  # fits the 16 KiB head; signed with the rest, over 8,192 characters
    response = browser.get("/oauth/authorize", params=authorize_params(app, Pkce(), state=state))
    params = expect_redirect_error(response, app, "invalid_request")
    assert "too large to carry to the consent page" in params["error_description"]
    assert params["state"] == state
    smaller = browser.get(
        "/oauth/authorize", params=authorize_params(app, Pkce(), state="s" * 3_000)
    )
    assert request_id(smaller, "/oauth/consent")


@pytest.mark.parametrize("which", ["suspended", "retired", "unknown", "a user"])
def test_a_requested_actor_that_is_not_an_active_agent_is_invalid_request(
    service: Service, browser: httpx.Client, which: str
) -> None:
    if which in ("suspended", "retired"):
        actor = service.oauth.add_agent(status=which)
    elif which == "a user":
        actor = service.add_user().id
    else:
        actor = unique("no-such-agent")
    app = service.add_app()
    response = browser.get("/oauth/authorize", params=authorize_params(app, Pkce(), actor))
    assert expect_redirect_error(response, app, "invalid_request")["state"] == STATE


@pytest.mark.parametrize(
    "resource", ["/payments", "api.example.com/payments", "https://api.example.com/#frag"]
)
def test_a_resource_that_is_not_an_absolute_uri_without_fragment_is_invalid_target(
    service: Service, browser: httpx.Client, resource: str
) -> None:
    app = service.add_app()
    response = browser.get(
        "/oauth/authorize", params=authorize_params(app, Pkce(), resource=resource)
    )
    assert expect_redirect_error(response, app, "invalid_target")["state"] == STATE


def test_a_parameter_given_twice_is_invalid_request(
    service: Service, browser: httpx.Client
) -> None:
    app = service.add_app()
    query = httpx.QueryParams(authorize_params(app, Pkce())).add("scope", "read")
    response = browser.get("/oauth/authorize", params=query)
    expect_redirect_error(response, app, "invalid_request")


# ---------------------------------------------------------------- refused at login and consent


@pytest.mark.parametrize("who", ["wrong password", "unknown user", "inactive user"])
def test_a_failed_sign_in_is_a_401_login_page_and_no_session(
    service: Service, browser: httpx.Client, who: str
) -> None:
    user = service.add_user(active=who != "inactive user")
    name = unique("nobody") if who == "unknown user" else user.name
    password = "not-the-password" if who == "wrong password" else user.password
    app = service.add_app()
    pending = requested(browser, app)
    response = browser.post(
        "/oauth/login", data={"request": pending, "username": name, "password": password}
    )
    text = expect_page(response, 401)
    assert "role='alert'" in text
    assert "set-cookie" not in response.headers
    assert not browser.cookies
    # still not signed in: the consent step sends the browser back to the login page
    response = browser.get("/oauth/consent", params={"request": pending})
    assert request_id(response, "/oauth/login") == pending


@pytest.mark.parametrize("path", ["/oauth/login", "/oauth/consent"])
def test_a_form_over_64_kib_is_a_413_page_and_no_session(
    service: Service, browser: httpx.Client, path: str
) -> None:
    response = browser.post(path, data={"request": "r", "password": "a" * MAX_BODY})
    assert "larger than 65536 bytes" in expect_page(response, 413)
    assert not browser.cookies


@pytest.mark.parametrize("path", ["/oauth/login", "/oauth/consent"])
def test_a_form_that_does_not_arrive_in_time_is_a_408_page(
    service: Service, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    monkeypatch.setattr(wire, "READ_TIMEOUT", 0.5)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\n"
    )
    answer = send_raw(int(service.issuer.rsplit(":", 1)[1]), head.encode() + b"request=")
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), answer
    assert b"text/html" in answer.partition(b"\r\n\r\n")[0]
    assert b"did not arrive within 0.5 seconds" in answer


def test_the_user_name_is_matched_without_case(service: Service, browser: httpx.Client) -> None:
    user, app = service.add_user(), service.add_app()
    shouted = User(user.id, user.name.upper(), user.password)
    flow = authorize(browser, app, shouted, Pkce())
    assert "code" in flow.params


def test_deny_on_the_consent_page_redirects_with_access_denied_and_stores_no_consent(
    service: Service, browser: httpx.Client
) -> None:
    user, app, agent = service.add_user(), service.add_app(), service.oauth.add_agent()
    flow = authorize(browser, app, user, Pkce(), agent, decision="deny")
    assert flow.steps[-1] == "consent page"
    assert flow.params["error"] == "access_denied"
    assert (flow.params["state"], flow.params["iss"]) == (STATE, service.issuer)
    assert "code" not in flow.params
    assert consents(browser) == []


def test_a_forged_csrf_on_the_consent_form_is_a_400_page_and_grants_nothing(
    service: Service, browser: httpx.Client
) -> None:
    user, app = service.add_user(), service.add_app()
    pending = requested(browser, app)
    sign_in(browser, pending, user)
    page = Page(browser.get("/oauth/consent", params={"request": pending}).text)
    for forged in ["", "forged", page.inputs["csrf"][:-1], "é" * 43]:
        response = browser.post(
            "/oauth/consent", data={"request": pending, "csrf": forged, "decision": "allow"}
        )
        expect_page(response, 400)
    assert consents(browser) == []
    # the genuine form still works
    response = browser.post(
        "/oauth/consent",
        data={"request": pending, "csrf": page.inputs["csrf"], "decision": "allow"},
    )
    assert "code" in callback(response, app)


def test_the_consent_form_gives_one_code_even_when_posted_concurrently(
    service: Service, browser: httpx.Client
) -> None:
    user, app = service.add_user(), service.add_app()
    pending = requested(browser, app)
    sign_in(browser, pending, user)
    csrf = Page(browser.get("/oauth/consent", params={"request": pending}).text).inputs["csrf"]
    form = {"request": pending, "csrf": csrf, "decision": "allow"}
    with ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(lambda _: browser.post("/oauth/consent", data=form), range(6)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [303, 400, 400, 400, 400, 400], [r.text for r in responses]


# ---------------------------------------------------------------- the request the browser carries


def test_an_authorization_request_stores_nothing_until_a_person_answers_it(
    service: Service, browser: httpx.Client
) -> None:
    """Anyone may call /oauth/authorize: the request it makes travels in the browser."""
    app = service.add_app()
    store = service.oauth.store
    before = store.last_change()
    response = browser.get("/oauth/authorize", params=authorize_params(app, Pkce()))
    pending = request_id(response, "/oauth/consent")
    to_login = browser.get("/oauth/consent", params={"request": pending})
    assert request_id(to_login, "/oauth/login") == pending
    page = browser.get("/oauth/login", params={"request": pending})
    assert "Sign in" in page.text
    assert store.last_change() == before
    # the URLs carry the request: no Referer repeats it (the next request's head is bounded)
    for answer in (response, to_login, page):
        assert answer.headers["referrer-policy"] == "no-referrer"


def test_a_request_altered_in_the_browser_or_another_token_is_an_expired_page(
    service: Service, browser: httpx.Client
) -> None:
    user, app = service.add_user(), service.add_app()
    pending = requested(browser, app)
    header, payload, signature = pending.split(".")
    changed = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    changed["redirect_uri"] = "https://attacker.example/cb"
    altered = base64.urlsafe_b64encode(json.dumps(changed).encode()).rstrip(b"=").decode()
    access_token = agent_token(service, service.agent_client())  # signed here, not a request
    key = KeyRing(service.oauth.store).signing_key()
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    retyped = jwt.encode(claims, key.private, key.alg, {"typ": "at+jwt", "kid": key.kid})
    forged = [
        f"{header}.{altered}.{signature}",
        access_token,
        retyped,  # the request's own claims, signed here, as another type of token
        pending[:-2],
        pending + "A",
        "r",
    ]
    for bad in forged:
        assert "expired" in expect_page(sign_in(browser, bad, user), 400)
    assert request_id(sign_in(browser, pending, user), "/oauth/consent") == pending
    for bad in forged:
        assert "expired" in expect_page(browser.get("/oauth/consent", params={"request": bad}), 400)
    assert consents(browser) == []


def test_a_request_past_its_lifetime_is_an_expired_page(
    service: Service, browser: httpx.Client
) -> None:
    user, app = service.add_user(), service.add_app()
    sealer = PendingRequests(service.oauth.store, KeyRing(service.oauth.store), service.issuer)
    asked = Pending(
        client_id=app.client_id,
        redirect_uri=app.redirect_uri,
        redirect_given=True,
        state=STATE,
        scopes=("read",),
        resources=(),
        challenge=Pkce().challenge,
        actor=None,
    )
    late = sealer.seal(replace(asked, expires=int(time.time()) - 1))
    assert "expired" in expect_page(sign_in(browser, late, user), 400)
    in_time = sealer.seal(asked)  # the same, sealed the same way, within its lifetime
    assert request_id(sign_in(browser, in_time, user), "/oauth/consent") == in_time


def test_a_consent_form_answers_only_in_the_session_it_was_shown_to(
    service: Service, browsers: Callable[[], httpx.Client]
) -> None:
    user, app = service.add_user(), service.add_app()
    shown, other = browsers(), browsers()
    pending = requested(shown, app)
    for browser in (shown, other):  # the same person, signed in twice
        assert request_id(sign_in(browser, pending, user), "/oauth/consent") == pending
    csrf = Page(shown.get("/oauth/consent", params={"request": pending}).text).inputs["csrf"]
    form = {"request": pending, "csrf": csrf, "decision": "allow"}
    assert "stale or forged" in expect_page(other.post("/oauth/consent", data=form), 400)
    assert consents(other) == []
    assert "code" in callback(shown.post("/oauth/consent", data=form), app)


def test_a_denied_request_cannot_then_be_allowed(service: Service, browser: httpx.Client) -> None:
    user, app = service.add_user(), service.add_app()
    pending = requested(browser, app)
    sign_in(browser, pending, user)
    csrf = Page(browser.get("/oauth/consent", params={"request": pending}).text).inputs["csrf"]
    denied = browser.post(
        "/oauth/consent", data={"request": pending, "csrf": csrf, "decision": "deny"}
    )
    expect_redirect_error(denied, app, "access_denied")
    again = {"request": pending, "csrf": csrf, "decision": "allow"}
    assert "answered before" in expect_page(browser.post("/oauth/consent", data=again), 400)
    assert consents(browser) == []


# ---------------------------------------------------------------- refused at /token


def test_a_wrong_code_verifier_is_invalid_grant(service: Service, browser: httpx.Client) -> None:
    user, app = service.add_user(), service.add_app()
    pkce = Pkce()
    code = authorize(browser, app, user, pkce).params["code"]
    expect_error(redeem(service, app, code, Pkce()), 400, "invalid_grant")
    # the failed attempt used the code up
    expect_error(redeem(service, app, code, pkce), 400, "invalid_grant")


def test_a_code_without_its_verifier_is_invalid_request(
    service: Service, browser: httpx.Client
) -> None:
    user, app = service.add_user(), service.add_app()
    code = authorize(browser, app, user, Pkce()).params["code"]
    expect_error(redeem(service, app, code, Pkce(), code_verifier=None), 400, "invalid_request")


def test_a_code_used_twice_is_invalid_grant(service: Service, browser: httpx.Client) -> None:
    user, app = service.add_user(), service.add_app()
    pkce = Pkce()
    code = authorize(browser, app, user, pkce).params["code"]
    assert redeem(service, app, code, pkce).status_code == 200
    expect_error(redeem(service, app, code, pkce), 400, "invalid_grant")


def test_a_code_redeemed_concurrently_gives_at_most_one_token_and_no_live_one(
    service: Service, browser: httpx.Client
) -> None:
    """The other attempts are replays, which revoke what the code gave (RFC 6749 §4.1.2):
    the one that won gets its tokens revoked, or refused when the replay came first."""
    user, app = service.add_user(), service.add_app()
    pkce = Pkce()
    code = authorize(browser, app, user, pkce).params["code"]
    with ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(lambda _: redeem(service, app, code, pkce), range(6)))
    assert sorted(r.status_code for r in responses) in ([200] + [400] * 5, [400] * 6)
    for response in responses:
        if response.status_code == 400:
            expect_error(response, 400, "invalid_grant")
        else:
            tokens = response.json()
            assert service.oauth.introspect(tokens["access_token"]) == {"active": False}
            expect_error(refresh(service, app, tokens["refresh_token"]), 400, "invalid_grant")


@pytest.mark.parametrize(
    "redirect_uri", ["http://127.0.0.1:9999/cc", "http://127.0.0.1:9999/cb/", None]
)
def test_a_redirect_uri_at_token_differing_from_the_authorizations_is_invalid_grant(
    service: Service, browser: httpx.Client, redirect_uri: str | None
) -> None:
    user, app = service.add_user(), service.add_app()
    pkce = Pkce()
    code = authorize(browser, app, user, pkce).params["code"]
    response = redeem(service, app, code, pkce, redirect_uri=redirect_uri)
    expect_error(response, 400, "invalid_grant")


def test_a_code_redeemed_by_another_client_is_invalid_grant(
    service: Service, browser: httpx.Client
) -> None:
    user, app, other = service.add_user(), service.add_app(), service.add_app()
    pkce = Pkce()
    code = authorize(browser, app, user, pkce).params["code"]
    response = redeem(service, app, code, pkce, client_id=other.client_id)
    expect_error(response, 400, "invalid_grant")


# ---------------------------------------------------------------- refresh


def test_refresh_rotates_the_refresh_token_and_the_old_one_then_fails(
    service: Service, browser: httpx.Client
) -> None:
    user, app, agent = service.add_user(), service.add_app(), service.oauth.add_agent()
    first = user_tokens(service, browser, app, user, agent)
    response = refresh(service, app, first["refresh_token"])
    assert response.status_code == 200, response.text
    second = response.json()
    assert second["refresh_token"] != first["refresh_token"]
    assert second["scope"] == SCOPE
    claims = service.claims(second["access_token"])
    assert (claims["sub"], claims["client_id"], claims["aud"]) == (user.id, app.client_id, RESOURCE)
    assert claims["may_act"] == {"sub": agent}
    assert claims["jti"] != service.claims(first["access_token"])["jti"]
    expect_error(refresh(service, app, first["refresh_token"]), 400, "invalid_grant")


def test_reusing_a_rotated_refresh_token_revokes_the_family_so_the_newest_fails_too(
    service: Service, browser: httpx.Client
) -> None:
    user, app = service.add_user(), service.add_app()
    first = user_tokens(service, browser, app, user)["refresh_token"]
    second = refresh(service, app, first).json()["refresh_token"]
    third = refresh(service, app, second).json()["refresh_token"]
    expect_error(refresh(service, app, first), 400, "invalid_grant")
    expect_error(refresh(service, app, third), 400, "invalid_grant")
    # another family of the same user and app is untouched
    other = user_tokens(service, browser, app, user)["refresh_token"]
    assert refresh(service, app, other).status_code == 200


def test_refresh_may_narrow_the_scope_and_the_new_refresh_token_keeps_the_original_scope(
    service: Service, browser: httpx.Client
) -> None:
    user, app = service.add_user(), service.add_app()
    first = user_tokens(service, browser, app, user)["refresh_token"]
    response = refresh(service, app, first, scope="read")
    assert response.status_code == 200, response.text
    narrow = response.json()
    assert narrow["scope"] == "read"
    assert service.claims(narrow["access_token"])["scope"] == "read"
    # RFC 6749 §6: the new refresh token's scope is the one the old one had
    response = refresh(service, app, narrow["refresh_token"])
    assert response.status_code == 200, response.text
    assert response.json()["scope"] == SCOPE


def test_refresh_widening_the_scope_is_invalid_scope_and_leaves_the_refresh_token_usable(
    service: Service, browser: httpx.Client
) -> None:
    user, app = service.add_user(), service.add_app()
    token = user_tokens(service, browser, app, user, scope="read")["refresh_token"]
    expect_error(refresh(service, app, token, scope=SCOPE), 400, "invalid_scope")
    response = refresh(service, app, token)
    assert response.status_code == 200, response.text
    assert response.json()["scope"] == "read"


def test_a_refresh_token_of_another_client_is_invalid_grant(
    service: Service, browser: httpx.Client
) -> None:
    user, app, other = service.add_user(), service.add_app(), service.add_app()
    token = user_tokens(service, browser, app, user)["refresh_token"]
    expect_error(refresh(service, other, token), 400, "invalid_grant")
    assert refresh(service, app, token).status_code == 200


@pytest.mark.parametrize("token", ["garbage", ""], ids=["unknown", "empty"])
def test_an_unknown_or_missing_refresh_token_is_refused(service: Service, token: str) -> None:
    app = service.add_app()
    error = "invalid_grant" if token else "invalid_request"
    expect_error(refresh(service, app, token), 400, error)


# ---------------------------------------------------------------- revoking a consent


def test_revoking_a_consent_empties_the_listing_and_the_next_authorization_asks_again(
    service: Service, browser: httpx.Client
) -> None:
    user, app, agent = service.add_user(), service.add_app(), service.oauth.add_agent()
    authorize(browser, app, user, Pkce(), agent)
    [consent] = consents(browser)
    response = browser.delete(f"/oauth/consents/{consent['id']}")
    assert response.status_code == 204, response.text
    assert consents(browser) == []
    again = authorize(browser, app, user, Pkce(), agent)
    assert again.steps == ["authorize", "consent", "consent page"]
    assert "code" in again.params


def test_revoking_a_consent_revokes_the_refresh_tokens_it_made_possible(
    service: Service, browser: httpx.Client
) -> None:
    user, app, agent = service.add_user(), service.add_app(), service.oauth.add_agent()
    token = user_tokens(service, browser, app, user, actor=agent)["refresh_token"]
    [consent] = consents(browser)
    assert browser.delete(f"/oauth/consents/{consent['id']}").status_code == 204
    expect_error(refresh(service, app, token), 400, "invalid_grant")


def test_a_refresh_token_used_twice_at_once_leaves_no_live_token_in_its_family(
    service: Service, browser: httpx.Client
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    user, app = service.add_user(), service.add_app()
    for _ in range(5):
        token = user_tokens(service, browser, app, user)["refresh_token"]
        with ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(lambda t: refresh(service, app, t), [token, token]))
        assert sorted(a.status_code for a in answers) in ([200, 400], [400, 400])
        for answer in answers:
            if answer.status_code == 200:  # the reuse revoked the winner's new token too
                fresh = answer.json()["refresh_token"]
                expect_error(refresh(service, app, fresh), 400, "invalid_grant")


def test_revoking_a_refresh_token_at_the_revocation_endpoint_revokes_its_family(
    service: Service, browser: httpx.Client
) -> None:
    user, app = service.add_user(), service.add_app()
    first = user_tokens(service, browser, app, user)["refresh_token"]
    second = refresh(service, app, first).json()["refresh_token"]
    revoked = service.http.post("/oauth/revoke", data={"token": second, "client_id": app.client_id})
    assert revoked.status_code == 200, revoked.text
    expect_error(refresh(service, app, second), 400, "invalid_grant")


def test_a_user_cannot_revoke_another_users_consent(
    service: Service, browsers: Callable[[], httpx.Client]
) -> None:
    app, alice, bob = service.add_app(), service.add_user(), service.add_user()
    alice_browser, bob_browser = browsers(), browsers()
    authorize(alice_browser, app, alice, Pkce())
    authorize(bob_browser, app, bob, Pkce())
    [consent] = consents(alice_browser)
    response = bob_browser.delete(f"/oauth/consents/{consent['id']}")
    expect_error(response, 404, "invalid_request")
    assert consents(alice_browser) == [consent]
    expect_error(bob_browser.delete("/oauth/consents/no-such-id"), 404, "invalid_request")
    expect_error(service.http.delete(f"/oauth/consents/{consent['id']}"), 401, "login_required")


# ---------------------------------------------------------------- token exchange


def test_exchange_gives_a_user_token_with_the_agent_as_actor(
    service: Service, browser: httpx.Client
) -> None:
    d = delegation(service, browser)
    response = exchange(service, d.agent, d.subject, d.actor)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["issued_token_type"] == ACCESS_TOKEN_TYPE
    assert body["token_type"] == "Bearer"
    assert body["scope"] == SCOPE
    assert "refresh_token" not in body
    claims = service.claims(body["access_token"])
    assert claims["sub"] == d.user.id
    assert claims["act"] == {"sub": d.agent.agent_id}
    assert claims["agent_id"] == d.agent.agent_id
    assert claims["agent_type"] == "background"
    assert claims["client_id"] == d.agent.client_id
    assert claims["aud"] == RESOURCE
    assert claims["scope"] == SCOPE
    assert "may_act" not in claims
    assert service.checks.of(d.agent.agent_id) == [
        Exchange(
            agent_id=d.agent.agent_id,
            user_id=d.user.id,
            chain=(d.agent.agent_id,),
            audience=(RESOURCE,),
            scopes=("payments:transfer", "read"),
        )
    ]


def test_authlib_performs_the_token_exchange_as_the_agents_client(
    service: Service, browser: httpx.Client
) -> None:
    d = delegation(service, browser)
    with OAuth2Client(
        client_id=d.agent.client_id,
        client_secret=d.agent.secret,
        token_endpoint_auth_method="client_secret_basic",
        timeout=10,
    ) as client:
        token = client.fetch_token(
            service.oauth.token_endpoint,
            grant_type=TOKEN_EXCHANGE,
            subject_token=d.subject,
            subject_token_type=ACCESS_TOKEN_TYPE,
            actor_token=d.actor,
            actor_token_type=ACCESS_TOKEN_TYPE,
            resource=RESOURCE,
        )
    claims = service.oauth.verifier(RESOURCE).verify(token["access_token"])
    assert (claims["sub"], claims["act"]) == (d.user.id, {"sub": d.agent.agent_id})
    assert token["issued_token_type"] == ACCESS_TOKEN_TYPE


def test_exchange_narrows_to_the_requested_scope_within_the_subjects_audience(
    service: Service, browser: httpx.Client
) -> None:
    d = delegation(service, browser)
    response = exchange(service, d.agent, d.subject, d.actor, scope="read", resource=RESOURCE)
    assert response.status_code == 200, response.text
    claims = service.claims(response.json()["access_token"])
    assert (claims["scope"], claims["aud"]) == ("read", RESOURCE)
    [asked] = service.checks.of(d.agent.agent_id)
    assert (asked.scopes, asked.audience) == (("read",), (RESOURCE,))


def test_exchange_for_an_audience_the_subject_token_lacks_is_invalid_target(
    service: Service, browser: httpx.Client
) -> None:
    d = delegation(service, browser)
    other = "https://ledger.example.com/"
    expect_error(
        exchange(service, d.agent, d.subject, d.actor, resource=other), 400, "invalid_target"
    )
    assert service.checks.of(d.agent.agent_id) == []


def test_exchange_scope_is_the_intersection_of_the_subject_tokens_and_the_agent_clients(
    service: Service, browser: httpx.Client
) -> None:
    d = delegation(service, browser, agent_scope="read audit")
    response = exchange(service, d.agent, d.subject, d.actor)
    assert response.status_code == 200, response.text
    assert service.claims(response.json()["access_token"])["scope"] == "read"
    for beyond in ("payments:transfer", "audit", "read audit"):
        response = exchange(service, d.agent, d.subject, d.actor, scope=beyond)
        expect_error(response, 400, "invalid_scope")


def test_exchange_without_a_resource_keeps_the_subject_tokens_audience(
    service: Service, browser: httpx.Client
) -> None:
    d = delegation(service, browser)
    response = exchange(service, d.agent, d.subject, d.actor, resource=None)
    assert response.status_code == 200, response.text
    assert service.claims(response.json()["access_token"])["aud"] == RESOURCE


def test_exchange_refused_by_the_check_is_invalid_request_and_issues_no_token(
    service: Service, browser: httpx.Client
) -> None:
    d = delegation(service, browser)
    service.checks.refusals[d.agent.agent_id] = "the policy says no"
    body = expect_error(exchange(service, d.agent, d.subject, d.actor), 400, "invalid_request")
    assert "the policy says no" in body["error_description"]
    assert len(service.checks.of(d.agent.agent_id)) == 1


def test_exchange_is_refused_by_default_without_a_decision_point(tmp_path: Path) -> None:
    with oauth_service("sqlite", tmp_path) as oauth:  # AuthorizationServer's default check
        default = Service(oauth, ExchangeChecks())
        browser = httpx.Client(base_url=oauth.issuer, follow_redirects=False, timeout=TIMEOUT)
        with browser:
            d = delegation(default, browser)
            response = exchange(default, d.agent, d.subject, d.actor)
    body = expect_error(response, 400, "invalid_request")
    assert "no decision point" in body["error_description"]


def test_exchange_when_may_act_names_another_agent_is_invalid_request(
    service: Service, browser: httpx.Client
) -> None:
    d = delegation(service, browser)  # may_act names d.agent
    intruder = service.agent_client()
    response = exchange(service, intruder, d.subject, agent_token(service, intruder))
    expect_error(response, 400, "invalid_request")
    assert service.checks.of(intruder.agent_id) == []


def test_exchange_with_the_actor_token_of_another_agent_is_invalid_request(
    service: Service, browser: httpx.Client
) -> None:
    d = delegation(service, browser)
    other = agent_token(service, service.agent_client())
    expect_error(exchange(service, d.agent, d.subject, other), 400, "invalid_request")
    # nor may the agent offer the user's token as its own
    expect_error(exchange(service, d.agent, d.subject, d.subject), 400, "invalid_request")
    assert service.checks.of(d.agent.agent_id) == []


def test_exchange_of_an_agents_own_token_is_invalid_request_saying_so(
    service: Service, browser: httpx.Client
) -> None:
    d = delegation(service, browser)
    response = exchange(service, d.agent, d.actor, d.actor)
    body = expect_error(response, 400, "invalid_request")
    assert body["error_description"].startswith("the subject_token is an agent's own token")
    assert service.checks.of(d.agent.agent_id) == []


def test_exchange_with_a_revoked_subject_token_is_invalid_request(
    service: Service, browser: httpx.Client
) -> None:
    d = delegation(service, browser)
    response = service.http.post(
        "/oauth/revoke", data={"token": d.subject, "client_id": d.app.client_id}
    )
    assert response.status_code == 200, response.text
    expect_error(exchange(service, d.agent, d.subject, d.actor), 400, "invalid_request")


def test_exchange_for_a_user_no_longer_active_is_invalid_request(
    service: Service, browser: httpx.Client
) -> None:
    d = delegation(service, browser)
    record = service.oauth.store.get("User", d.user.id)
    service.oauth.store.replace(
        "User",
        d.user.id,
        {**record.data, "active": False},
        unique={"userName": d.user.name.casefold()},
        expected_version=record.version,
        actor="admin",
    )
    body = expect_error(exchange(service, d.agent, d.subject, d.actor), 400, "invalid_request")
    assert body["error_description"] == "the user is not active"
    assert service.checks.of(d.agent.agent_id) == []


@pytest.mark.parametrize(
    "token", ["garbage", "a.b.c", "eyJhbGciOiJub25lIn0.e30."], ids=["garbage", "dots", "alg none"]
)
def test_exchange_with_a_garbage_subject_or_actor_token_is_invalid_request(
    service: Service, browser: httpx.Client, token: str
) -> None:
    d = delegation(service, browser)
    expect_error(exchange(service, d.agent, token, d.actor), 400, "invalid_request")
    expect_error(exchange(service, d.agent, d.subject, token), 400, "invalid_request")
    assert service.checks.of(d.agent.agent_id) == []


def test_exchange_of_an_agents_own_token_as_subject_is_invalid_request(
    service: Service, browser: httpx.Client
) -> None:
    client = service.agent_client()
    own = agent_token(service, client)
    expect_error(exchange(service, client, own, own), 400, "invalid_request")


@pytest.mark.parametrize(
    "form",
    [
        {"subject_token_type": "urn:ietf:params:oauth:token-type:jwt"},
        {"subject_token_type": None},
        {"actor_token_type": "urn:ietf:params:oauth:token-type:refresh_token"},
        {"actor_token_type": None},
        {"subject_token": None},
        {"actor_token": None},
    ],
    ids=[
        "subject jwt",
        "subject no type",
        "actor refresh_token",
        "actor no type",
        "no subject",
        "no actor",
    ],
)
def test_exchange_with_a_wrong_or_missing_token_or_token_type_is_invalid_request(
    service: Service, browser: httpx.Client, form: dict[str, str | None]
) -> None:
    d = delegation(service, browser)
    expect_error(exchange(service, d.agent, d.subject, d.actor, **form), 400, "invalid_request")


def test_a_client_without_the_exchange_grant_is_unauthorized_client(
    service: Service, browser: httpx.Client
) -> None:
    d = delegation(service, browser)
    plain = service.oauth.secret_client(agent_id=d.agent.agent_id, scope=SCOPE)
    expect_error(exchange(service, plain, d.subject, d.actor), 400, "unauthorized_client")


def test_an_exchanged_token_has_no_may_act_so_another_agent_may_exchange_it_with_nested_act(
    service: Service, browser: httpx.Client
) -> None:
    d = delegation(service, browser)
    a = d.agent.agent_id
    response = exchange(service, d.agent, d.subject, d.actor)
    assert response.status_code == 200, response.text
    by_a = response.json()["access_token"]
    assert "may_act" not in service.claims(by_a)

    b = service.agent_client(scope="read")
    response = exchange(service, b, by_a, agent_token(service, b))
    assert response.status_code == 200, response.text
    claims = service.claims(response.json()["access_token"])
    assert claims["sub"] == d.user.id
    assert claims["act"] == {"sub": b.agent_id, "act": {"sub": a}}
    assert claims["agent_id"] == b.agent_id
    assert claims["scope"] == "read"
    assert service.checks.of(b.agent_id) == [
        Exchange(b.agent_id, d.user.id, (b.agent_id, a), (RESOURCE,), ("read",))
    ]
    # but B may not exchange the user's own token, whose may_act names A
    response = exchange(service, b, d.subject, agent_token(service, b))
    expect_error(response, 400, "invalid_request")


def test_a_user_token_without_requested_actor_has_no_may_act_and_any_agent_may_exchange_it(
    service: Service, browser: httpx.Client
) -> None:
    user, app = service.add_user(), service.add_app()
    subject = user_tokens(service, browser, app, user)["access_token"]
    assert "may_act" not in service.claims(subject)
    agent = service.agent_client()
    response = exchange(service, agent, subject, agent_token(service, agent))
    assert response.status_code == 200, response.text
    assert service.claims(response.json()["access_token"])["act"] == {"sub": agent.agent_id}
