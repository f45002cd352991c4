"""OpenID CIBA, driven as clients drive it: an agent's client over HTTP on loopback, the
person on the approval page (httpx, and headless Chromium), a ping receiver on loopback.

The server's CIBA clock is the test's (:class:`Clock`): polling too fast, waiting the
interval and expiry are steps of the clock, not sleeps.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import jwt
import pytest
from playwright.sync_api import sync_playwright

from issuer.hashing import hash_password
from issuer.oauth.ciba import MAX_BINDING_MESSAGE, id_hash
from issuer.oauth.clients import CIBA
from issuer.oauth.grants import Exchange
from issuer.strength import ACR_KEY, ACR_KEY_MTLS
from tests.issuer.conftest import TIMEOUT, unique
from tests.issuer.oauth_server import ClientKey, OAuthService, Registered, oauth_service
from tests.stores import BACKENDS

PAYMENT = {
    "type": "payment_initiation",
    "instructedAmount": {"currency": "USD", "amount": "4200"},
    "creditorName": "ACME",
}


class Clock:
    """The server's CIBA clock, moved by the tests."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass(frozen=True)
class Person:
    id: str
    name: str
    password: str
    email: str


@dataclass
class Policy:
    """The decision point's answer to ``token.exchange``: allowed, except for the agents
    in ``refused``; every question is kept in ``asked``."""

    refused: set[str] = field(default_factory=set)
    asked: list[Exchange] = field(default_factory=list)

    def __call__(self, exchange: Exchange) -> str | None:
        self.asked.append(exchange)
        return "the policy forbids it" if exchange.agent_id in self.refused else None


@dataclass
class Ciba:
    service: OAuthService
    clock: Clock
    told: list[dict[str, Any]]
    policy: Policy = field(default_factory=Policy)


@pytest.fixture(scope="module", params=BACKENDS)
def ciba(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Ciba]:
    clock, policy = Clock(), Policy()
    told: list[dict[str, Any]] = []
    tmp = tmp_path_factory.mktemp(request.param)
    with oauth_service(
        request.param, tmp, clock=clock, on_human=told.append, exchange_check=policy
    ) as service:
        yield Ciba(service, clock, told, policy)


def add_person(ciba: Ciba) -> Person:
    name = unique("person")
    password = secrets.token_urlsafe(12)
    email = f"{name}@example.com"
    document = {
        "userName": name,
        "password": hash_password(password),
        "emails": [{"value": email, "primary": True}],
    }
    record = ciba.service.store.create(
        "User", document, unique={"userName": name.casefold()}, actor="admin"
    )
    return Person(record.id, name, password, email)


def ciba_client(ciba: Ciba, mode: str = "poll", endpoint: str | None = None) -> Registered:
    """A private_key_jwt agent client registered for CIBA."""
    key = ClientKey.new()
    metadata: dict[str, Any] = {
        "agent_id": ciba.service.add_agent(),
        "token_endpoint_auth_method": "private_key_jwt",
        "grant_types": [CIBA],
        "scope": "payments read",
        "jwks": {"keys": [key.public_jwk]},
        "client_name": unique("payments-app"),
        "backchannel_token_delivery_mode": mode,
    }
    if endpoint is not None:
        metadata["backchannel_client_notification_endpoint"] = endpoint
    return ciba.service._registered(metadata, key)


def authenticated(ciba: Ciba, client: Registered, **form: str) -> dict[str, str]:
    assertion = ciba.service.assertion(client, aud=ciba.service.issuer)
    return {
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": assertion,
        **form,
    }


def ask(ciba: Ciba, client: Registered, person: Person, **form: str) -> httpx.Response:
    """POST /oauth/bc-authorize for ``person``, paying ACME, unless ``form`` says else."""
    defaults = {
        "login_hint": person.name,
        "scope": "openid payments",
        "binding_message": "Pay ACME 4200 USD, code 7F3A",
        "authorization_details": json.dumps([PAYMENT]),
    }
    data = authenticated(ciba, client, **{**defaults, **form})
    return ciba.service.http.post("/oauth/bc-authorize", data=data)


def asked(ciba: Ciba, client: Registered, person: Person, **form: str) -> str:
    response = ask(ciba, client, person, **form)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["interval"] == 5 and body["expires_in"] > 0
    return str(body["auth_req_id"])


def poll(ciba: Ciba, client: Registered, auth_req_id: str) -> httpx.Response:
    data = authenticated(ciba, client, grant_type=CIBA, auth_req_id=auth_req_id)
    return ciba.service.http.post("/oauth/token", data=data)


def error_of(response: httpx.Response) -> str:
    assert response.status_code >= 400, response.text
    return str(response.json()["error"])


@contextmanager
def signed_in(ciba: Ciba, person: Person) -> Iterator[httpx.Client]:
    """A browser-like client with the person's session cookie."""
    with httpx.Client(base_url=ciba.service.issuer, timeout=TIMEOUT) as browser:
        response = browser.post(
            "/oauth/login",
            data={
                "return": "/oauth/approvals",
                "username": person.name,
                "password": person.password,
            },
        )
        assert response.status_code == 303
        assert response.headers["location"] == "/oauth/approvals"
        yield browser


def answer(browser: httpx.Client, auth_req_id: str, decision: str) -> httpx.Response:
    page = f"/oauth/approvals/{id_hash(auth_req_id)}"
    shown = browser.get(page)
    found = re.search(r"name='csrf' value='([0-9a-f]+)'", shown.text)
    csrf = found.group(1) if found else "none"
    return browser.post(page, data={"csrf": csrf, "decision": decision})


# ---------------------------------------------------------------- poll mode


def test_poll_mode_gives_one_token_carrying_the_person_and_the_agent(ciba: Ciba) -> None:
    client, person = ciba_client(ciba), add_person(ciba)
    auth_req_id = asked(ciba, client, person)
    assert error_of(poll(ciba, client, auth_req_id)) == "authorization_pending"
    with signed_in(ciba, person) as browser:
        listing = browser.get("/oauth/approvals")
        assert id_hash(auth_req_id) in listing.text
        page = browser.get(f"/oauth/approvals/{id_hash(auth_req_id)}")
        assert "Pay 4200 USD to ACME" in page.text and "code 7F3A" in page.text
        assert "default-src 'none'" in page.headers["content-security-policy"]
        approved_at = ciba.clock.now
        assert answer(browser, auth_req_id, "approve").status_code == 200
    ciba.clock.advance(5)
    response = poll(ciba, client, auth_req_id)
    assert response.status_code == 200, response.text
    claims = jwt.decode(response.json()["access_token"], options={"verify_signature": False})
    assert claims["sub"] == person.id
    assert claims["act"] == {"sub": client.agent_id}
    assert claims["authorization_details"] == [PAYMENT]
    assert response.json()["authorization_details"] == [PAYMENT]  # RFC 9396 §7
    assert claims["amr"] == ["human", "pkjwt"]
    assert claims["acr"] == "urn:tessera:acr:key"  # no mTLS: human stays in amr only
    assert claims["auth_time"] == int(approved_at)
    assert claims["scope"] == "payments"
    ciba.clock.advance(5)
    assert error_of(poll(ciba, client, auth_req_id)) == "invalid_grant"  # once exactly


def test_the_page_names_where_the_token_is_good_and_for_what(ciba: Ciba) -> None:
    client, person = ciba_client(ciba), add_person(ciba)
    bank = "https://prod-bank.example/admin"
    auth_req_id = asked(ciba, client, person, resource=bank, scope="openid payments read")
    plain = asked(ciba, client, person)
    with signed_in(ciba, person) as browser:
        page = browser.get(f"/oauth/approvals/{id_hash(auth_req_id)}").text
        assert f"<span id='audience'>{bank}</span>" in page
        assert "<span id='scopes'>payments, read</span>" in page
        page = browser.get(f"/oauth/approvals/{id_hash(plain)}").text
        assert f"<span id='audience'>{ciba.service.issuer} (this sign-in service)" in page


def test_a_person_is_found_by_email_too(ciba: Ciba) -> None:
    client, person = ciba_client(ciba), add_person(ciba)
    auth_req_id = asked(ciba, client, person, login_hint=person.email.upper())
    record = ciba.service.store.backchannel(id_hash(auth_req_id))
    assert record is not None and record.user_id == person.id


def test_polling_faster_than_the_interval_slows_the_client_down(ciba: Ciba) -> None:
    client, person = ciba_client(ciba), add_person(ciba)
    auth_req_id = asked(ciba, client, person)
    assert error_of(poll(ciba, client, auth_req_id)) == "authorization_pending"
    assert error_of(poll(ciba, client, auth_req_id)) == "slow_down"
    ciba.clock.advance(5)  # the interval is now 10 s: 5 s is still too fast
    assert error_of(poll(ciba, client, auth_req_id)) == "slow_down"
    ciba.clock.advance(15)
    assert error_of(poll(ciba, client, auth_req_id)) == "authorization_pending"


def test_an_expired_request_can_be_neither_approved_nor_redeemed(ciba: Ciba) -> None:
    client, person = ciba_client(ciba), add_person(ciba)
    auth_req_id = asked(ciba, client, person, requested_expiry="10")
    with signed_in(ciba, person) as browser:
        page = f"/oauth/approvals/{id_hash(auth_req_id)}"
        found = re.search(r"name='csrf' value='([0-9a-f]+)'", browser.get(page).text)
        assert found is not None
        ciba.clock.advance(11)  # the page was open too long
        assert browser.get(page).status_code == 410
        late = browser.post(page, data={"csrf": found.group(1), "decision": "approve"})
        assert late.status_code == 410
    assert error_of(poll(ciba, client, auth_req_id)) == "expired_token"
    record = ciba.service.store.backchannel(id_hash(auth_req_id))
    assert record is not None and record.data["status"] == "pending"


def test_another_person_cannot_approve(ciba: Ciba) -> None:
    client, person, other = ciba_client(ciba), add_person(ciba), add_person(ciba)
    auth_req_id = asked(ciba, client, person)
    with signed_in(ciba, other) as browser:
        assert id_hash(auth_req_id) not in browser.get("/oauth/approvals").text
        refused = browser.post(
            f"/oauth/approvals/{id_hash(auth_req_id)}",
            data={"csrf": "x" * 64, "decision": "approve"},
        )
        assert refused.status_code == 400  # no page was served to them: no CSRF token
        shown = browser.get(f"/oauth/approvals/{id_hash(auth_req_id)}")
        assert shown.status_code == 403 and "another person" in shown.text
    assert error_of(poll(ciba, client, auth_req_id)) == "authorization_pending"


def test_a_replayed_approval_changes_nothing(ciba: Ciba) -> None:
    client, person = ciba_client(ciba), add_person(ciba)
    auth_req_id = asked(ciba, client, person)
    with signed_in(ciba, person) as browser:
        page = f"/oauth/approvals/{id_hash(auth_req_id)}"
        found = re.search(r"name='csrf' value='([0-9a-f]+)'", browser.get(page).text)
        assert found is not None
        assert browser.post(page, data={"csrf": found.group(1), "decision": "approve"}).is_success
        again = browser.post(page, data={"csrf": found.group(1), "decision": "deny"})
        assert again.status_code == 409
    assert poll(ciba, client, auth_req_id).status_code == 200


def test_a_form_token_of_any_text_is_refused_as_forged(ciba: Ciba) -> None:
    client, person = ciba_client(ciba), add_person(ciba)
    auth_req_id = asked(ciba, client, person)
    with signed_in(ciba, person) as browser:
        page = f"/oauth/approvals/{id_hash(auth_req_id)}"
        assert browser.get(page).status_code == 200
        for forged in ("é" * 64, "\u2028", "0" * 63 + "ÿ"):
            refused = browser.post(page, data={"csrf": forged, "decision": "approve"})
            assert (refused.status_code, "stale or forged" in refused.text) == (400, True)
    assert error_of(poll(ciba, client, auth_req_id)) == "authorization_pending"


def test_a_denied_request_answers_access_denied(ciba: Ciba) -> None:
    client, person = ciba_client(ciba), add_person(ciba)
    auth_req_id = asked(ciba, client, person)
    with signed_in(ciba, person) as browser:
        assert answer(browser, auth_req_id, "deny").status_code == 200
    assert error_of(poll(ciba, client, auth_req_id)) == "access_denied"
    actions = [r["action"] for r in ciba.told if r["request"] == id_hash(auth_req_id)]
    assert actions == ["backchannel.request", "backchannel.deny"]
    assert all(r["kind"] == "human" for r in ciba.told)


def test_unknown_and_foreign_auth_req_ids_are_invalid_grants(ciba: Ciba) -> None:
    client, other, person = ciba_client(ciba), ciba_client(ciba), add_person(ciba)
    auth_req_id = asked(ciba, client, person)
    assert error_of(poll(ciba, client, secrets.token_urlsafe(32))) == "invalid_grant"
    assert error_of(poll(ciba, other, auth_req_id)) == "invalid_grant"
    assert error_of(poll(ciba, client, auth_req_id)) == "authorization_pending"


def test_the_decision_point_is_asked_before_the_person_and_at_redemption(ciba: Ciba) -> None:
    client, person = ciba_client(ciba), add_person(ciba)
    ciba.policy.refused.add(client.agent_id)
    assert error_of(ask(ciba, client, person)) == "access_denied"
    assert ciba.service.store.backchannel_of_user(person.id, int(ciba.clock.now)) == []
    assert ciba.policy.asked[-1] == Exchange(
        client.agent_id, person.id, (client.agent_id,), (ciba.service.issuer,), ("payments",)
    )
    ciba.policy.refused.discard(client.agent_id)
    auth_req_id = asked(ciba, client, person)
    with signed_in(ciba, person) as browser:
        assert answer(browser, auth_req_id, "approve").status_code == 200
    ciba.policy.refused.add(client.agent_id)  # the policy changed while the person answered
    try:
        assert error_of(poll(ciba, client, auth_req_id)) == "access_denied"
    finally:
        ciba.policy.refused.discard(client.agent_id)
    ciba.clock.advance(5)
    assert poll(ciba, client, auth_req_id).status_code == 200  # the refusal used up nothing


def test_the_agents_minimum_is_checked_before_the_person_is_asked(ciba: Ciba) -> None:
    key = ClientKey.new()
    metadata = {
        "agent_id": ciba.service.add_agent(minimum_acr=ACR_KEY_MTLS),
        "token_endpoint_auth_method": "private_key_jwt",
        "grant_types": [CIBA],
        "scope": "payments",
        "jwks": {"keys": [key.public_jwk]},
        "backchannel_token_delivery_mode": "poll",
    }
    client, person = ciba.service._registered(metadata, key), add_person(ciba)
    assert error_of(ask(ciba, client, person)) == "unauthorized_client"  # no certificate
    assert ciba.service.store.backchannel_of_user(person.id, int(ciba.clock.now)) == []


def test_acr_values_are_checked_when_asked_and_kept_for_the_token(ciba: Ciba) -> None:
    client, person = ciba_client(ciba), add_person(ciba)
    assert error_of(ask(ciba, client, person, acr_values="not-a-level")) == "invalid_request"
    assert error_of(ask(ciba, client, person, acr_values=ACR_KEY_MTLS)) == "unauthorized_client"
    auth_req_id = asked(ciba, client, person, acr_values=ACR_KEY)
    record = ciba.service.store.backchannel(id_hash(auth_req_id))
    assert record is not None and record.data["acr_values"] == [ACR_KEY]
    with signed_in(ciba, person) as browser:
        assert answer(browser, auth_req_id, "approve").status_code == 200
    stronger = authenticated(
        ciba, client, grant_type=CIBA, auth_req_id=auth_req_id, acr_values=ACR_KEY_MTLS
    )
    refused = ciba.service.http.post("/oauth/token", data=stronger)
    assert error_of(refused) == "unauthorized_client"
    ciba.clock.advance(5)
    response = poll(ciba, client, auth_req_id)  # the approval was not used up
    assert response.status_code == 200, response.text
    claims = jwt.decode(response.json()["access_token"], options={"verify_signature": False})
    assert claims["acr"] == ACR_KEY


# ---------------------------------------------------------------- bad requests


@pytest.mark.parametrize(
    ("form", "error"),
    [
        ({"binding_message": "x" * (MAX_BINDING_MESSAGE + 1)}, "invalid_binding_message"),
        ({"binding_message": "Pay ACME \u202e0024 DSU"}, "invalid_binding_message"),
        (
            {"authorization_details": json.dumps([{**PAYMENT, "creditorName": "ACME\u202e"}])},
            "invalid_authorization_details",
        ),
        ({"login_hint": "nobody-at-all"}, "unknown_user_id"),
        ({"login_hint_token": "a.b.c"}, "invalid_request"),
        ({"authorization_details": '[{"creditorName": "ACME"}]'}, "invalid_authorization_details"),
        # RFC 9396 §5: a type the issuer does not accept (it advertises payment_initiation)
        (
            {"authorization_details": '[{"type": "account_information"}]'},
            "invalid_authorization_details",
        ),
        ({"requested_expiry": "-5"}, "invalid_request"),
        ({"requested_expiry": "²"}, "invalid_request"),  # a digit to str.isdigit, not int()
        ({"requested_expiry": "9" * 5_000}, "invalid_request"),  # beyond int()'s 4,300 digits
        ({"requested_expiry": "1" * 10}, "invalid_request"),
        ({"scope": "openid admin"}, "invalid_scope"),
        ({"scope": "payments"}, "invalid_request"),  # §7.1: openid is required
    ],
)
def test_a_bad_request_is_refused_and_stores_nothing(
    ciba: Ciba, form: dict[str, str], error: str
) -> None:
    client, person = ciba_client(ciba), add_person(ciba)
    assert error_of(ask(ciba, client, person, **form)) == error
    assert ciba.service.store.backchannel_of_user(person.id, int(ciba.clock.now)) == []


def test_a_request_without_scope_is_refused(ciba: Ciba) -> None:
    client, person = ciba_client(ciba), add_person(ciba)
    data = authenticated(ciba, client, login_hint=person.name)  # §7.1: scope is REQUIRED
    assert error_of(ciba.service.http.post("/oauth/bc-authorize", data=data)) == "invalid_request"


def test_only_registered_ciba_clients_may_ask(ciba: Ciba) -> None:
    person = add_person(ciba)
    plain = ciba.service.key_client()  # client_credentials only
    assert error_of(ask(ciba, plain, person)) == "unauthorized_client"
    anonymous = ciba.service.http.post("/oauth/bc-authorize", data={"login_hint": person.name})
    assert anonymous.status_code == 401 and anonymous.json()["error"] == "invalid_client"


def test_the_metadata_names_the_endpoint_and_the_modes(ciba: Ciba) -> None:
    metadata = ciba.service.http.get("/.well-known/openid-configuration").json()
    assert metadata["backchannel_authentication_endpoint"].endswith("/oauth/bc-authorize")
    assert metadata["backchannel_token_delivery_modes_supported"] == ["poll", "ping"]
    assert metadata["backchannel_user_code_parameter_supported"] is False
    assert CIBA in metadata["grant_types_supported"]


# ---------------------------------------------------------------- ping mode


class _Receiver(BaseHTTPRequestHandler):
    got: list[tuple[str, dict[str, Any]]]
    arrived: threading.Event

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.got.append((self.headers["Authorization"], body))
        self.send_response(204)
        self.end_headers()
        self.arrived.set()

    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.fixture
def receiver() -> Iterator[tuple[str, type[_Receiver]]]:
    handler = type("Receiver", (_Receiver,), {"got": [], "arrived": threading.Event()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/ciba", handler
    finally:
        server.shutdown()
        server.server_close()


def test_ping_mode_calls_the_client_back_then_it_redeems(
    ciba: Ciba, receiver: tuple[str, type[_Receiver]]
) -> None:
    endpoint, handler = receiver
    client, person = ciba_client(ciba, "ping", endpoint), add_person(ciba)
    auth_req_id = asked(ciba, client, person, client_notification_token="note-" + "a" * 40)
    record = ciba.service.store.backchannel(id_hash(auth_req_id))
    assert record is not None and auth_req_id not in json.dumps(record.data["scopes"])
    with signed_in(ciba, person) as browser:
        assert answer(browser, auth_req_id, "approve").status_code == 200
    assert handler.arrived.wait(TIMEOUT)
    assert handler.got == [(f"Bearer note-{'a' * 40}", {"auth_req_id": auth_req_id})]
    record = ciba.service.store.backchannel(id_hash(auth_req_id))
    assert record is not None and record.data["ping"] is None  # forgotten once answered
    assert poll(ciba, client, auth_req_id).status_code == 200


@pytest.mark.parametrize(
    "endpoint",
    [
        "https://169.254.169.254/latest/meta-data",  # cloud metadata
        "https://10.0.0.1/ciba",
        "https://[::1]:8443/ciba",  # loopback over https: no development exception
        "http://127.0.0.2/ciba",  # loopback, but no loopback name
        "http://ciba.example.com/ciba",
    ],
)
def test_a_notification_endpoint_must_be_public(ciba: Ciba, endpoint: str) -> None:
    key = ClientKey.new()
    metadata = {
        "agent_id": ciba.service.add_agent(),
        "token_endpoint_auth_method": "private_key_jwt",
        "grant_types": [CIBA],
        "scope": "payments",
        "jwks": {"keys": [key.public_jwk]},
        "backchannel_token_delivery_mode": "ping",
        "backchannel_client_notification_endpoint": endpoint,
    }
    refused = ciba.service.register(metadata)
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"] == "invalid_client_metadata"


def test_a_ping_client_must_send_a_notification_token(
    ciba: Ciba, receiver: tuple[str, type[_Receiver]]
) -> None:
    client, person = ciba_client(ciba, "ping", receiver[0]), add_person(ciba)
    assert error_of(ask(ciba, client, person)) == "invalid_request"


# ---------------------------------------------------------------- in a browser


def test_a_person_approves_in_a_browser(ciba: Ciba) -> None:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("Chromium is not installed: `apt-get install -y chromium` (make test does)")
    client, person = ciba_client(ciba), add_person(ciba)
    auth_req_id = asked(ciba, client, person)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(f"{ciba.service.issuer}/oauth/approvals")
            page.fill("input[name=username]", person.name)
            page.fill("input[name=password]", person.password)
            page.click("button[type=submit]")
            page.click(f"a[href='/oauth/approvals/{id_hash(auth_req_id)}']")
            assert page.inner_text("#binding") == "Pay ACME 4200 USD, code 7F3A"
            assert page.inner_text("#details") == "Pay 4200 USD to ACME"
            page.click("button[value=approve]")
            assert "You approved" in page.inner_text("#outcome")
        finally:
            browser.close()
    ciba.clock.advance(5)
    assert poll(ciba, client, auth_req_id).status_code == 200
