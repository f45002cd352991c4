"""API keys: created by an administrator for a low-risk agent, hashed at rest, traded for a
short-lived access token, revocable, expiring."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from issuer.models import AGENT_EXTENSION
from issuer.oauth.api_keys import API_KEY_TOKEN_TYPE
from tests.issuer.oauth_server import OAuthService, oauth_service

EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"


@pytest.fixture(scope="module")
def oauth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OAuthService]:
    with oauth_service("sqlite", tmp_path_factory.mktemp("keys")) as service:
        yield service


def admin(oauth: OAuthService) -> dict[str, str]:
    return {"Authorization": f"Bearer {oauth.token}"}


def new_key(oauth: OAuthService, agent_id: str, **body: Any) -> httpx.Response:
    return oauth.http.post(
        "/oauth/api-keys",
        json={"agent_id": agent_id, "scope": "read", **body},
        headers=admin(oauth),
    )


def trade(oauth: OAuthService, key: str, **form: str) -> httpx.Response:
    data = {
        "grant_type": EXCHANGE,
        "subject_token": key,
        "subject_token_type": API_KEY_TOKEN_TYPE,
        **form,
    }
    return oauth.http.post("/oauth/token", data=data)


def set_risk(oauth: OAuthService, agent_id: str, risk: str) -> None:
    record = oauth.store.get("Agent", agent_id)
    data = {**record.data, AGENT_EXTENSION: {**record.data[AGENT_EXTENSION], "riskLevel": risk}}
    oauth.store.replace(
        "Agent", agent_id, data, unique={"name": data["name"]}, expected_version=None, actor="t"
    )


def test_a_key_is_shown_once_recognisable_and_only_its_hash_is_stored(
    oauth: OAuthService,
) -> None:
    agent = oauth.add_agent()
    response = new_key(oauth, agent)
    assert response.status_code == 201, response.text
    body = response.json()
    key = body["api_key"]
    assert key.startswith(f"tsk_{body['id']}_") and body["prefix"] == f"tsk_{body['id']}"
    stored = oauth.store.find("ApiKey", "key_id", body["id"]).data
    secret = key[len(f"tsk_{body['id']}_") :]
    assert secret not in json.dumps(stored)
    assert stored["hash"] == hashlib.sha256(secret.encode()).hexdigest()
    listing = oauth.http.get(f"/oauth/api-keys?agent_id={agent}", headers=admin(oauth)).json()
    assert [k["id"] for k in listing["api_keys"]] == [body["id"]]
    assert "api_key" not in listing["api_keys"][0]


def test_a_key_trades_for_a_short_lived_agent_token_narrowed_to_its_scope(
    oauth: OAuthService,
) -> None:
    agent = oauth.add_agent()
    key = new_key(oauth, agent).json()["api_key"]
    response = trade(oauth, key, resource="https://api.example.com/")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["issued_token_type"] == "urn:ietf:params:oauth:token-type:access_token"
    claims = oauth.verifier("https://api.example.com/").verify(body["access_token"])
    assert (claims["sub"], claims["agent_id"], claims["scope"]) == (agent, agent, "read")
    assert claims["exp"] - claims["iat"] == body["expires_in"]
    assert trade(oauth, key, scope="write").json()["error"] == "invalid_scope"


def test_a_revoked_an_expired_a_wrong_or_a_malformed_key_is_invalid_request(
    oauth: OAuthService,
) -> None:
    agent = oauth.add_agent()
    created = new_key(oauth, agent).json()
    key = created["api_key"]
    wrong = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    assert trade(oauth, wrong).json()["error"] == "invalid_request"
    assert trade(oauth, "not-a-key").json()["error"] == "invalid_request"
    gone = oauth.http.delete(f"/oauth/api-keys/{created['id']}", headers=admin(oauth))
    assert gone.status_code == 204
    refused = trade(oauth, key)
    assert (refused.status_code, refused.json()["error"]) == (400, "invalid_request")
    short = new_key(oauth, agent, expires_in=1).json()
    record = oauth.store.find("ApiKey", "key_id", short["id"])
    oauth.store.replace(
        "ApiKey",
        record.id,
        {**record.data, "expires_at": 0},
        unique={"key_id": short["id"]},
        expected_version=None,
        actor="t",
    )
    assert trade(oauth, short["api_key"]).json()["error_description"] == "the API key has expired"


def test_only_low_risk_active_agents_get_or_use_keys(oauth: OAuthService) -> None:
    agent = oauth.add_agent()
    key = new_key(oauth, agent).json()["api_key"]
    set_risk(oauth, agent, "medium")
    assert trade(oauth, key).json()["error"] == "invalid_request"
    refused = new_key(oauth, agent)
    assert (refused.status_code, refused.json()["error"]) == (400, "invalid_request")
    set_risk(oauth, agent, "low")
    oauth.set_agent_status(agent, "suspended")
    assert trade(oauth, key).json()["error"] == "invalid_request"


def test_managing_keys_needs_the_admin_token(oauth: OAuthService) -> None:
    agent = oauth.add_agent()
    anonymous = oauth.http.post("/oauth/api-keys", json={"agent_id": agent})
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"] == 'Bearer realm="tessera", scope="tessera:admin"'
    wrong = oauth.http.get("/oauth/api-keys", headers={"Authorization": "Bearer nope-nope-nope"})
    assert wrong.status_code == 401
    assert 'error="invalid_token"' in wrong.headers["www-authenticate"]
