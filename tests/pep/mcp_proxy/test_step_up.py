"""A step-up through the proxy: the token's ``acr`` claim is the decision's
``context.acr``, as through Envoy's ext_authz, so ``require step_up("mfa")`` is met by a
token from a strong login and by no other, and a step-up to a level of the issuer's
ladder by a token at that level or above. A call denied only for a step-up is answered
401 with RFC 9470's challenge, which an MCP SDK client sees and answers with a stronger
token from the issuer. Decided by the PDP over gRPC and by the proxy itself
(``decisions = "local"``), for calls and for lists."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Generator, Iterator
from typing import Any

import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from issuer.oauth.api_keys import API_KEY_TOKEN_TYPE
from issuer.oauth.clients import TOKEN_EXCHANGE
from pep.mcp_proxy.jsonrpc import FORBIDDEN
from tests.pep.mcp_proxy.test_consent import answer_of, rpc
from tests.pep.mcp_proxy.test_listing import listed_tools
from tests.pep.mcp_proxy.test_proxy import claims_for, signed
from tests.pep.mcp_proxy.test_upstreams import request
from tests.pep.mcp_proxy.world import POLICIES, World, run, world

TIMEOUT = 10.0

# No limit could decide fs.delete, so with local decisions the proxy decides it itself.
STEP_UP = """package step_up

permit deletes_after_a_strong_login
  call tool "fs.delete"
  require step_up("mfa")

permit keyed_agents_delete_with_a_key
  call tool "fs.delete"
  when agent.purpose == "keyed"
  require step_up("urn:tessera:acr:key")
"""


@pytest.fixture(scope="module", params=["pdp", "local"])
def w(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    policies = tmp_path_factory.mktemp("policies")
    for path in POLICIES.glob("*.pol"):
        shutil.copy(path, policies / path.name)
    (policies / "step_up.pol").write_text(STEP_UP, encoding="utf-8")
    folder = tmp_path_factory.mktemp("step_up")
    with world("sqlite", folder, policies, decisions=request.param, step_up_acrs=("mfa",)) as built:
        yield built


def token(w: World, acr: Any = None) -> str:
    """A token for a new agent allowed to ask for fs.delete, with ``acr`` (none: no claim)."""
    return signed(w, claims_for(w, w.add_agent(), scope="mcp:tools fs:write", acr=acr))


def test_a_token_from_a_strong_login_meets_the_step_up(w: World) -> None:
    strong = token(w, acr="mfa")
    answer = answer_of(rpc(w, strong, "fs.delete", {"path": "/tmp/x"}))
    assert answer["result"]["content"][0]["text"] == "deleted /tmp/x", answer
    assert "fs.delete" in listed_tools(w, strong)


@pytest.mark.parametrize("acr", [None, "pwd", ["mfa"]], ids=["none", "another", "not-a-string"])
def test_without_that_acr_the_call_is_denied_and_not_listed(w: World, acr: Any) -> None:
    weak = token(w, acr=acr)
    response = rpc(w, weak, "fs.delete", {"path": "/tmp/x"})
    answer = answer_of(response)
    assert answer["error"]["code"] == FORBIDDEN, answer
    assert answer["error"]["data"]["obligations"] == [{"kind": "step_up", "value": "mfa"}]
    assert response.status_code == 401
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith('Bearer error="insufficient_user_authentication"'), challenge
    assert 'acr_values="mfa"' in challenge
    assert "fs.delete" not in listed_tools(w, weak)


def keyed_token(w: World, acr: str) -> str:
    """A token at ``acr`` for a new agent whose deletes need urn:tessera:acr:key."""
    claims = claims_for(w, w.add_agent(purpose="keyed"), scope="mcp:tools fs:write", acr=acr)
    return signed(w, claims)


@pytest.mark.parametrize("acr", ["urn:tessera:acr:key", "urn:tessera:acr:key+mtls+human"])
def test_a_ladder_step_up_is_met_at_or_above_its_level(w: World, acr: str) -> None:
    answer = answer_of(rpc(w, keyed_token(w, acr), "fs.delete", {"path": "/tmp/x"}))
    assert answer["result"]["content"][0]["text"] == "deleted /tmp/x", answer


def test_a_ladder_step_up_is_not_met_below_its_level(w: World) -> None:
    response = rpc(w, keyed_token(w, "urn:tessera:acr:apikey"), "fs.delete", {"path": "/x"})
    assert response.status_code == 401, response.text
    assert acr_values(response.headers["www-authenticate"]) == {"urn:tessera:acr:key", "mfa"}


def test_a_challenge_leaves_out_what_the_issuer_cannot_give(w: World) -> None:
    """A proxy whose issuer raises no user's login to ``mfa`` names only the ladder's
    levels; with none left, the deny is a plain ``-32003``, not a challenge."""
    (upstream,) = [u for u in w.config.upstreams if u.name == "tools"]
    plain = f"{w.add_proxy((upstream,), step_up_acrs=())}{upstream.path}"
    body = request("tools/call", {"name": "fs.delete", "arguments": {"path": "/x"}})
    accept = "application/json, text/event-stream"

    def call(agent: str, acr: str) -> httpx.Response:
        claims = claims_for(w, agent, scope="mcp:tools fs:write", acr=acr, aud=plain)
        headers = {"Authorization": f"Bearer {signed(w, claims)}", "Accept": accept}
        return httpx.post(plain, json=body, headers=headers, timeout=TIMEOUT)

    keyed = call(w.add_agent(purpose="keyed"), "urn:tessera:acr:apikey")
    assert keyed.status_code == 401, keyed.text
    assert acr_values(keyed.headers["www-authenticate"]) == {"urn:tessera:acr:key"}
    alone = call(w.add_agent(), "pwd")
    assert alone.status_code == 200, alone.text
    assert "www-authenticate" not in alone.headers
    assert answer_of(alone)["error"]["code"] == FORBIDDEN


def test_an_argument_cannot_set_the_acr(w: World) -> None:
    weak = keyed_token(w, "urn:tessera:acr:apikey")
    response = rpc(w, weak, "fs.delete", {"path": "/x", "acr": "urn:tessera:acr:key"})
    assert response.status_code == 401, response.text


LADDER_PREFIX = "urn:tessera:acr:"


def acr_values(challenge: str) -> set[str]:
    """The levels an RFC 9470 challenge names."""
    return set(challenge.split('acr_values="', 1)[1].split('"', 1)[0].split())


class StepUp(httpx2.Auth):
    """A client's RFC 9470 handling: send the token; on an
    ``insufficient_user_authentication`` challenge, get a stronger one and send again."""

    def __init__(self, token: str, stronger: Callable[[str], str]) -> None:
        self.token = token
        self.stronger = stronger
        self.challenges: list[str] = []

    def auth_flow(self, request: httpx2.Request) -> Generator[httpx2.Request, Any, None]:
        request.headers["Authorization"] = f"Bearer {self.token}"
        response = yield request
        challenge = response.headers.get("www-authenticate", "")
        if response.status_code == 401 and "insufficient_user_authentication" in challenge:
            self.challenges.append(challenge)
            # the issuer's levels only: "mfa" is a user's login, which an agent cannot raise
            wanted = sorted(v for v in acr_values(challenge) if v.startswith(LADDER_PREFIX))
            self.token = self.stronger(" ".join(wanted))
            request.headers["Authorization"] = f"Bearer {self.token}"
            yield request


def test_an_sdk_client_meets_the_challenge_with_a_stronger_token_from_the_issuer(
    w: World,
) -> None:
    agent = w.add_agent(purpose="keyed")
    scope = "mcp:tools fs:write"
    made = w.oauth.http.post(
        "/oauth/api-keys",
        json={"agent_id": agent, "scope": scope},
        headers={"Authorization": f"Bearer {w.oauth.token}"},
    )
    assert made.status_code == 201, made.text
    traded = w.oauth.http.post(
        "/oauth/token",
        data={
            "grant_type": TOKEN_EXCHANGE,
            "subject_token": made.json()["api_key"],
            "subject_token_type": API_KEY_TOKEN_TYPE,
            "resource": w.resource,
        },
    )
    assert traded.status_code == 200, traded.text
    client = w.oauth.key_client(agent_id=agent, scope=scope)

    def stronger(acr_values: str) -> str:
        response = w.oauth.http.post(
            "/oauth/token",
            data={
                "grant_type": "client_credentials",
                "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                "client_assertion": w.oauth.assertion(client),
                "resource": w.resource,
                "acr_values": acr_values,
            },
        )
        assert response.status_code == 200, response.text
        token: str = response.json()["access_token"]
        return token

    auth = StepUp(traded.json()["access_token"], stronger)

    async def call() -> Any:
        http = httpx2.AsyncClient(auth=auth, timeout=TIMEOUT)
        async with Client(
            streamable_http_client(w.url, http_client=http), read_timeout_seconds=TIMEOUT
        ) as mcp:
            return await mcp.call_tool("fs.delete", {"path": "/tmp/y"})

    result = run(call())
    assert result.content[0].text == "deleted /tmp/y"
    (challenge,) = auth.challenges
    assert acr_values(challenge) == {"urn:tessera:acr:key", "mfa"}
