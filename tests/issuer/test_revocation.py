"""What a revocation reaches, on the wire and on SQLite and PostgreSQL: a replayed code
revokes every token it gave (RFC 6749 §4.1.2, OAuth 2.1 §4.1.3), a revoked token (RFC 7009)
revokes the tokens exchanged from it (RFC 8693), transitively, and a revoked refresh token
its family with the access tokens it gave.

A token is checked twice: by the issuer's introspection (RFC 7662), and by a resource
server's :class:`issuer.verify.Verifier` on the store opened afresh, as another replica or
this one after a restart sees it: the revocation is in the store, not in a process.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from issuer.keys import KeyRing
from issuer.oauth.authorize import SESSION_COOKIE
from issuer.oauth.tokens import ring_lookup
from issuer.store import open_store
from issuer.verify import Caller, Reason, Refusal, Verifier, revocations
from tests.issuer.oauth_server import Registered, _Running
from tests.issuer.test_user_flows import (
    RESOURCE,
    App,
    Page,
    Pkce,
    Service,
    agent_token,
    authorize,
    authorize_params,
    browser,
    browsers,
    callback,
    consents,
    delegation,
    exchange,
    expect_error,
    expect_page,
    redeem,
    refresh,
    request_id,
    service,
    user_tokens,
)

__all__ = ["browser", "browsers", "service"]  # the fixtures this module shares


@pytest.fixture
def elsewhere(service: Service) -> Iterator[Verifier]:
    """A resource server's verifier on the store opened anew: nothing in its memory."""
    store = open_store(service.oauth.store.url)
    try:
        audiences = [RESOURCE, service.issuer]  # a user's resource, or an agent's own token
        keys = ring_lookup(KeyRing(store))
        yield Verifier(keys, service.issuer, audiences, revoked=revocations(store))
    finally:
        store.close()


Live = Callable[[str], bool]


@pytest.fixture
def live(service: Service, elsewhere: Verifier) -> Live:
    """Whether a token is still good: introspection says active and, for a token an agent
    holds, the verifier elsewhere takes it (or refuses it as revoked, never otherwise)."""

    def check(token: str) -> bool:
        active = service.oauth.introspect(token)["active"]
        assert isinstance(active, bool)
        if "agent_id" in service.claims(token):
            found = asyncio.run(elsewhere.verify(token))
            if active:
                assert isinstance(found, Caller), found
            else:
                assert isinstance(found, Refusal) and found.reason is Reason.REVOKED, found
        return active

    return check


def exchanged(service: Service, agent: Registered, subject: str) -> str:
    """A token the agent gets for the user of ``subject`` by token exchange."""
    response = exchange(service, agent, subject, agent_token(service, agent))
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


def revoke(service: Service, token: str, **auth: Any) -> None:
    """POST /oauth/revoke as the client the token was issued to (``auth`` or client_id)."""
    response = service.http.post("/oauth/revoke", data={"token": token}, **auth)
    assert response.status_code == 200, response.text


def revoke_as_app(service: Service, app: App, token: str) -> None:
    response = service.http.post("/oauth/revoke", data={"token": token, "client_id": app.client_id})
    assert response.status_code == 200, response.text


# ---------------------------------------------------------------- a replayed code


def test_a_replayed_code_revokes_every_token_it_gave_and_what_came_from_them(
    service: Service, browser: httpx.Client, live: Live
) -> None:
    user, app, agent = service.add_user(), service.add_app(), service.agent_client()
    pkce = Pkce()
    code = authorize(browser, app, user, pkce, agent.agent_id).params["code"]
    first = redeem(service, app, code, pkce).json()
    again = refresh(service, app, first["refresh_token"]).json()
    by_agent = exchanged(service, agent, again["access_token"])
    other = user_tokens(service, browser, app, user, agent.agent_id)  # another grant
    gave = [first["access_token"], again["access_token"], by_agent]
    assert all(live(token) for token in [*gave, other["access_token"]])

    body = expect_error(redeem(service, app, code, pkce), 400, "invalid_grant")
    assert "used before" in body["error_description"]
    assert not any(live(token) for token in gave)
    expect_error(refresh(service, app, again["refresh_token"]), 400, "invalid_grant")
    expect_error(
        exchange(service, agent, again["access_token"], agent_token(service, agent)),
        400,
        "invalid_request",
    )
    assert live(other["access_token"])
    assert refresh(service, app, other["refresh_token"]).status_code == 200


@pytest.fixture
def replica(service: Service) -> Iterator[httpx.Client]:
    """Another replica of the issuer: its own process state, the same store opened anew,
    the same issuer identifier."""
    store = open_store(service.oauth.store.url)
    running = _Running(store, issuer=service.issuer)
    try:
        with httpx.Client(base_url=running.url, timeout=10.0) as http:
            yield http
    finally:
        running.close()
        store.close()


def test_a_code_is_redeemed_on_another_replica_and_replayed_on_this_one_revokes(
    service: Service, browser: httpx.Client, replica: httpx.Client
) -> None:
    """The client's token request reaches whichever replica (or worker) it reaches."""
    user, app = service.add_user(), service.add_app()
    pkce = Pkce()
    code = authorize(browser, app, user, pkce).params["code"]
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": app.redirect_uri,
        "client_id": app.client_id,
        "code_verifier": pkce.verifier,
    }
    answered = replica.post("/oauth/token", data=form)
    assert answered.status_code == 200, answered.text
    body = expect_error(redeem(service, app, code, pkce), 400, "invalid_grant")
    assert "used before" in body["error_description"]
    again = {"grant_type": "refresh_token", "client_id": app.client_id}
    again["refresh_token"] = answered.json()["refresh_token"]
    expect_error(replica.post("/oauth/token", data=again), 400, "invalid_grant")


def test_a_person_signed_in_on_one_replica_is_signed_in_on_another(
    service: Service, browser: httpx.Client, replica: httpx.Client
) -> None:
    """The session is in the store: the approval and consent pages may reach any replica."""
    user, app = service.add_user(), service.add_app()
    authorize(browser, app, user, Pkce())  # signs in here, and consents
    cookie = {"Cookie": f"{SESSION_COOKIE}={browser.cookies[SESSION_COOKIE]}"}
    listed = replica.get("/oauth/consents", headers=cookie)
    assert listed.status_code == 200, listed.text
    assert [c["client_id"] for c in listed.json()["consents"]] == [app.client_id]
    expect_error(replica.get("/oauth/consents"), 401, "login_required")


def test_a_request_made_on_one_replica_is_signed_in_and_answered_once_on_another(
    service: Service, browser: httpx.Client, replica: httpx.Client
) -> None:
    """The request waiting for the sign-in travels in the browser: any replica (or worker)
    the login and consent pages reach takes it, and one answer, anywhere, ends it."""
    user, app = service.add_user(), service.add_app()
    pkce = Pkce()
    response = browser.get("/oauth/authorize", params=authorize_params(app, pkce))
    pending = request_id(response, "/oauth/consent")
    form = {"request": pending, "username": user.name, "password": user.password}
    assert request_id(replica.post("/oauth/login", data=form), "/oauth/consent") == pending
    page = Page(replica.get("/oauth/consent", params={"request": pending}).text)
    answer = {"request": pending, "csrf": page.inputs["csrf"], "decision": "allow"}
    code = callback(replica.post("/oauth/consent", data=answer), app)["code"]
    assert redeem(service, app, code, pkce).status_code == 200
    cookie = {"Cookie": f"{SESSION_COOKIE}={replica.cookies[SESSION_COOKIE]}"}
    again = browser.post("/oauth/consent", data=answer, headers=cookie)
    assert "answered before" in expect_page(again, 400)


def test_a_code_replayed_by_another_client_revokes_its_tokens_too(
    service: Service, browser: httpx.Client, live: Live
) -> None:
    user, app, thief = service.add_user(), service.add_app(), service.add_app()
    pkce = Pkce()
    code = authorize(browser, app, user, pkce).params["code"]
    tokens = redeem(service, app, code, pkce).json()
    expect_error(redeem(service, app, code, pkce, client_id=thief.client_id), 400, "invalid_grant")
    assert not live(tokens["access_token"])
    expect_error(refresh(service, app, tokens["refresh_token"]), 400, "invalid_grant")


# ---------------------------------------------------------------- revoking a token


def test_revoking_a_token_revokes_the_tokens_exchanged_from_it_transitively_and_no_other(
    service: Service, browser: httpx.Client, live: Live
) -> None:
    d = delegation(service, browser)
    by_a = exchanged(service, d.agent, d.subject)
    b = service.agent_client(scope="read")
    by_b = exchanged(service, b, by_a)  # B acts for the user through A
    sibling = exchanged(service, d.agent, d.subject)
    assert all(live(token) for token in (d.subject, by_a, by_b, sibling))

    revoke(service, by_a, auth=d.agent.basic)
    assert not live(by_a) and not live(by_b)
    assert live(sibling) and live(d.subject)
    expect_error(exchange(service, b, by_a, agent_token(service, b)), 400, "invalid_request")

    revoke_as_app(service, d.app, d.subject)
    assert not live(sibling) and not live(d.subject)
    response = exchange(service, d.agent, d.subject, agent_token(service, d.agent))
    expect_error(response, 400, "invalid_request")


def test_withdrawing_a_consent_revokes_the_tokens_given_under_it_and_exchanged_from_them(
    service: Service, browser: httpx.Client, live: Live
) -> None:
    d = delegation(service, browser)
    refreshed = refresh(
        service,
        d.app,
        user_tokens(service, browser, d.app, d.user, d.agent.agent_id)["refresh_token"],
    )
    assert refreshed.status_code == 200, refreshed.text
    by_agent = exchanged(service, d.agent, d.subject)
    pkce = Pkce()
    unredeemed = authorize(browser, d.app, d.user, pkce, d.agent.agent_id)  # consented before
    assert unredeemed.steps == ["authorize", "consent"]
    other_app = service.add_app()  # another consent of the same person stays
    kept = user_tokens(service, browser, other_app, d.user, d.agent.agent_id)["access_token"]
    tokens = (d.subject, refreshed.json()["access_token"], by_agent)
    assert all(live(token) for token in (*tokens, kept))

    [consent] = [c for c in consents(browser) if c["client_id"] == d.app.client_id]
    assert browser.delete(f"/oauth/consents/{consent['id']}").status_code == 204
    assert not any(live(token) for token in tokens)
    assert live(kept)
    expect_error(refresh(service, d.app, refreshed.json()["refresh_token"]), 400, "invalid_grant")
    late = expect_error(
        redeem(service, d.app, unredeemed.params["code"], pkce), 400, "invalid_grant"
    )
    assert "withdrew the consent" in late["error_description"]
    response = exchange(service, d.agent, d.subject, agent_token(service, d.agent))
    expect_error(response, 400, "invalid_request")


def test_revoking_the_agents_actor_token_revokes_what_it_exchanged(
    service: Service, browser: httpx.Client, live: Live
) -> None:
    d = delegation(service, browser)
    response = exchange(service, d.agent, d.subject, d.actor)
    assert response.status_code == 200, response.text
    made = response.json()["access_token"]
    revoke(service, d.actor, auth=d.agent.basic)
    assert not live(made)
    assert live(d.subject)


def test_revoking_a_refresh_token_revokes_its_familys_access_tokens_and_their_exchanges(
    service: Service, browser: httpx.Client, live: Live
) -> None:
    user, app, agent = service.add_user(), service.add_app(), service.agent_client()
    first = user_tokens(service, browser, app, user, agent.agent_id)
    again = refresh(service, app, first["refresh_token"]).json()
    by_agent = exchanged(service, agent, again["access_token"])
    other = user_tokens(service, browser, app, user, agent.agent_id)
    revoke_as_app(service, app, again["refresh_token"])
    assert not any(live(t) for t in (first["access_token"], again["access_token"], by_agent))
    expect_error(refresh(service, app, again["refresh_token"]), 400, "invalid_grant")
    assert live(other["access_token"])


def test_a_reused_refresh_token_revokes_the_access_tokens_of_its_family(
    service: Service, browser: httpx.Client, live: Live
) -> None:
    user, app = service.add_user(), service.add_app()
    first = user_tokens(service, browser, app, user)
    again = refresh(service, app, first["refresh_token"]).json()
    assert live(again["access_token"])
    expect_error(refresh(service, app, first["refresh_token"]), 400, "invalid_grant")
    assert not live(first["access_token"]) and not live(again["access_token"])


def test_a_client_credentials_token_names_no_lineage_and_revoking_it_revokes_only_it(
    service: Service, live: Live
) -> None:
    agent = service.agent_client()
    mine, another = agent_token(service, agent), agent_token(service, agent)
    assert "lineage" not in service.claims(mine)
    revoke(service, mine, auth=agent.basic)
    assert not live(mine) and live(another)


def test_tokens_name_the_grant_the_consent_and_the_tokens_they_come_from(
    service: Service, browser: httpx.Client
) -> None:
    d = delegation(service, browser)
    subject, actor = service.claims(d.subject), service.claims(d.actor)
    [consent] = consents(browser)
    grant, consent_id = subject["lineage"]
    assert consent_id == consent["id"]
    response = exchange(service, d.agent, d.subject, d.actor)
    assert response.status_code == 200, response.text
    made = service.claims(response.json()["access_token"])
    assert made["lineage"] == [grant, consent_id, subject["jti"], actor["jti"]]
    assert "lineage" not in actor
