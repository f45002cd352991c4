"""The upstream's credential from the issuer, for real: a token exchanged (RFC 8693) for the
user the caller acts for, with the upstream's audience, or the proxy's own token (client
credentials). The caller's token never reaches the upstream, and a credential the issuer
refuses is a JSON-RPC error for the call, not a server error and not a passthrough."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import httpx
import pytest

from pep.mcp_proxy.config import Upstream
from pep.mcp_proxy.jsonrpc import UPSTREAM_ERROR
from tests.issuer.test_user_flows import TOKEN_EXCHANGE
from tests.pep.mcp_proxy.test_consent import Browser, add_user, delegated
from tests.pep.mcp_proxy.test_proxy import call, machine, modern, token_for
from tests.pep.mcp_proxy.world import UPSTREAM_AUDIENCE, World, world

TIMEOUT = 10.0
ACCEPT = "application/json, text/event-stream"
EXCHANGE_PATH = "/mcp/exchange"
MAX_RETRIES = 100  # the PDP follows a new consent within a second or so


@pytest.fixture(scope="module")
def w(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with world("sqlite", tmp_path_factory.mktemp("credentials")) as built:
        yield built


@dataclass(frozen=True)
class Exchanging:
    """A proxy whose upstream gets a token exchanged for each caller's user."""

    origin: str
    agent: str  # the proxy's own agent: the actor of the tokens it exchanges
    client_id: str

    @property
    def url(self) -> str:
        return f"{self.origin}{EXCHANGE_PATH}"


@pytest.fixture(scope="module")
def exchanging(w: World) -> Exchanging:
    """The proxy, registered at the issuer as an agent's client that may exchange tokens,
    in front of the SDK server with credential = "token_exchange"."""
    agent = w.add_agent()
    registered = w.oauth.register(
        {
            "agent_id": agent,
            "grant_types": ["client_credentials", TOKEN_EXCHANGE],
            "token_endpoint_auth_method": "client_secret_basic",
            "scope": "mcp:tools",
        }
    )
    assert registered.status_code == 201, registered.text
    client = registered.json()
    upstream = replace(
        w.config.upstreams[0],
        name="exchange",
        path=EXCHANGE_PATH,
        credential="token_exchange",
        token="",
        audience=UPSTREAM_AUDIENCE,
    )
    origin = w.add_proxy(
        (upstream,), client_id=client["client_id"], client_secret=client["client_secret"]
    )
    return Exchanging(origin, agent, client["client_id"])


def post_at(url: str, body: Any, token: str, **headers: str) -> httpx.Response:
    sent = {"Accept": ACCEPT, "Authorization": f"Bearer {token}", **headers}
    return httpx.post(url, json=body, headers=sent, timeout=TIMEOUT)


def search(url: str, token: str, query: str, id: int = 1) -> httpx.Response:
    return post_at(url, call("search", {"query": query}, id=id), token, **modern("search"))


def acting_for_a_user(w: World, resources: tuple[str, ...]) -> tuple[str, str, str]:
    """A user lets a new agent act for them, and the agent exchanges the user's token for
    one with these audiences: (the user, the agent, the agent's token for the user)."""
    agent = w.add_agent()
    user, name, password = add_user(w)
    _, token, _ = delegated(w, agent, Browser(w, name, password), "mcp:tools", resources)
    return user, agent, token


def let_the_proxy_act(w: World, exchanging: Exchanging, user: str) -> None:
    """The user consents to the proxy's agent acting for them, as the issuer's consent
    page records it; the PDP allows an exchange only for an agent the user consented to
    (``delegated_tokens`` in the shipped policies)."""
    w.oauth.server.consents.grant(user, exchanging.client_id, exchanging.agent, ["mcp:tools"])
    w.wait_for(lambda: _consents(w, exchanging.agent, user) != ())


def _consents(w: World, agent: str, user: str) -> tuple[str, ...]:
    identities = w.directory.resolve(agent, user)
    return () if isinstance(identities, str) else identities.consents


def upstream_tokens(w: World, before: int) -> list[str]:
    """The bearer tokens the SDK server got since it had seen ``before`` requests."""
    seen = w.recorder.seen[before:]
    return [s.removeprefix("Bearer ") for s in seen if s is not None]


def no_credential(id: Any, name: str) -> dict[str, Any]:
    error = {"code": UPSTREAM_ERROR, "message": f"no credential for upstream {name!r}"}
    return {"jsonrpc": "2.0", "id": id, "error": error}


# ---------------------------------------------------------------- token exchange


def test_the_upstream_gets_a_token_exchanged_for_the_callers_user(
    w: World, exchanging: Exchanging
) -> None:
    user, agent, token = acting_for_a_user(w, (exchanging.url, UPSTREAM_AUDIENCE))
    let_the_proxy_act(w, exchanging, user)
    before = len(w.recorder.seen)
    response = search(exchanging.url, token, "exchanged")
    assert response.status_code == 200, response.text
    assert "found exchanged" in response.text
    sent = upstream_tokens(w, before)
    assert sent and all(s != token for s in sent)
    assert token not in "".join(sent)
    # signed by the issuer, for the upstream's audience only, not the proxy's resource
    claims = w.oauth.verifier(UPSTREAM_AUDIENCE).verify(sent[0])
    assert claims["aud"] == UPSTREAM_AUDIENCE
    # the same user, the proxy's agent acting for them through the calling agent
    assert claims["sub"] == user
    assert claims["act"] == {"sub": exchanging.agent, "act": {"sub": agent}}
    assert claims["agent_id"] == exchanging.agent
    # the exchanged token is kept for the caller's token: a second call sends it again
    again = len(w.recorder.seen)
    assert search(exchanging.url, token, "again", id=2).status_code == 200
    assert upstream_tokens(w, again) == [sent[0]]


def test_an_exchange_the_pdp_refuses_is_a_json_rpc_error_until_the_user_consents(
    w: World, exchanging: Exchanging, caplog: pytest.LogCaptureFixture
) -> None:
    user, _, token = acting_for_a_user(w, (exchanging.url, UPSTREAM_AUDIENCE))
    before = len(w.recorder.seen)
    with caplog.at_level(logging.WARNING, logger="tessera.mcp_proxy"):
        refused = search(exchanging.url, token, "x", id=41)
    assert refused.status_code == 200, refused.text
    assert refused.json() == no_credential(41, "exchange")
    assert refused.headers["tessera-decision-id"]  # the call itself was allowed
    assert len(w.recorder.seen) == before  # nothing reached the upstream
    assert "the exchange is not allowed" in caplog.text
    # once the user lets the proxy's agent act for them, the same token passes
    let_the_proxy_act(w, exchanging, user)
    for _ in range(MAX_RETRIES):  # the issuer's PDP follows the consent within a second
        response = search(exchanging.url, token, "consented", id=42)
        if "found consented" in response.text:
            break
        assert response.json() == no_credential(42, "exchange")
        time.sleep(0.05)
    assert "found consented" in response.text


def test_a_token_without_the_upstreams_audience_is_not_widened_to_it(
    w: World, exchanging: Exchanging, caplog: pytest.LogCaptureFixture
) -> None:
    """The issuer only narrows an exchanged token's audience (RFC 8693 §2.1)."""
    user, _, token = acting_for_a_user(w, (exchanging.url,))
    let_the_proxy_act(w, exchanging, user)
    before = len(w.recorder.seen)
    with caplog.at_level(logging.WARNING, logger="tessera.mcp_proxy"):
        refused = search(exchanging.url, token, "x", id=7)
    assert refused.status_code == 200, refused.text
    assert refused.json() == no_credential(7, "exchange")
    assert len(w.recorder.seen) == before
    assert f"{UPSTREAM_AUDIENCE!r} is not an audience of the subject token" in caplog.text


def test_an_agent_acting_alone_gets_no_exchanged_token(
    w: World, exchanging: Exchanging, caplog: pytest.LogCaptureFixture
) -> None:
    """There is no user to act for: the issuer refuses, and the call fails cleanly."""
    client = machine(w)
    token = token_for(w, client, resource=f"{exchanging.url} {UPSTREAM_AUDIENCE}")
    before = len(w.recorder.seen)
    with caplog.at_level(logging.WARNING, logger="tessera.mcp_proxy"):
        batch = [call("search", {"query": "a"}, id=1), call("search", {"query": "b"}, id=2)]
        refused = post_at(exchanging.url, batch, token)
    assert refused.status_code == 200, refused.text
    assert refused.json() == [no_credential(1, "exchange"), no_credential(2, "exchange")]
    assert len(w.recorder.seen) == before
    assert "the issuer refused" in caplog.text


# ---------------------------------------------------------------- client credentials


def test_the_proxys_own_token_is_kept_between_calls(w: World) -> None:
    token = token_for(w, machine(w), resource=w.at("/mcp/own"))
    before = len(w.recorder.seen)
    for id in (1, 2):
        response = search(w.at("/mcp/own"), token, "own", id=id)
        assert response.status_code == 200, response.text
    sent = upstream_tokens(w, before)
    assert len(sent) == 2 and sent[0] == sent[1] != token
    assert w.oauth.verifier(UPSTREAM_AUDIENCE).verify(sent[0])["aud"] == UPSTREAM_AUDIENCE


def test_a_proxy_the_issuer_does_not_know_gets_no_credential(w: World) -> None:
    own: Upstream = w.config.upstreams[1]
    assert own.credential == "client_credentials"
    # local decisions: over gRPC, the proxy could not even introspect the caller's token
    origin = w.add_proxy((own,), client_secret="not-the-secret", decisions="local")
    token = token_for(w, machine(w), resource=f"{origin}{own.path}")
    before = len(w.recorder.seen)
    body = call("search", {"query": "x"}, id="a")
    refused = post_at(f"{origin}{own.path}", body, token, **modern("search"))
    assert refused.status_code == 200, refused.text
    assert refused.json() == no_credential("a", "own")
    assert len(w.recorder.seen) == before
