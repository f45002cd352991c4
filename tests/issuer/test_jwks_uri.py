"""private_key_jwt clients whose keys are published at a jwks_uri (RFC 7591 §2)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.issuer.oauth_server import ClientKey, OAuthService, Registered, oauth_service
from tests.issuer.test_metadata_documents import Documents


@pytest.fixture(scope="module")
def documents() -> Iterator[Documents]:
    served = Documents()
    yield served
    served.close()


@pytest.fixture(scope="module")
def oauth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OAuthService]:
    with oauth_service("sqlite", tmp_path_factory.mktemp("jwks-uri")) as service:
        yield service


def register(oauth: OAuthService, **metadata: Any) -> httpx.Response:
    body = {
        "agent_id": oauth.add_agent(),
        "grant_types": ["client_credentials"],
        "token_endpoint_auth_method": "private_key_jwt",
        "scope": "read",
        **metadata,
    }
    return oauth.register(body)


def token_with(oauth: OAuthService, client: Registered) -> httpx.Response:
    return oauth.http.post(
        "/oauth/token",
        data={
            "grant_type": "client_credentials",
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": oauth.assertion(client),
        },
    )


def test_keys_published_at_the_jwks_uri_authenticate_and_a_rotation_is_picked_up(
    oauth: OAuthService, documents: Documents, monkeypatch: pytest.MonkeyPatch
) -> None:
    import issuer.oauth.remote_keys

    monkeypatch.setattr(issuer.oauth.remote_keys, "REFETCH_SECONDS", 0)
    first = ClientKey.new()
    uri = documents.publish("/agents/keys.json", {"keys": [first.public_jwk]})
    registered = register(oauth, jwks_uri=uri)
    assert registered.status_code == 201, registered.text
    body = registered.json()
    assert body["jwks_uri"] == uri and "jwks" not in body
    client = Registered(body["client_id"], "private_key_jwt", body["agent_id"], "read", key=first)
    assert token_with(oauth, client).status_code == 200

    second = ClientKey.new("EdDSA")
    documents.publish("/agents/keys.json", {"keys": [first.public_jwk, second.public_jwk]})
    rotated = dataclasses.replace(client, key=second)
    response = token_with(oauth, rotated)  # an unknown kid fetches the set again
    assert response.status_code == 200, response.text

    stranger = dataclasses.replace(client, key=ClientKey.new())  # fetched again: still unknown
    refused = token_with(oauth, stranger)
    assert (refused.status_code, refused.json()["error"]) == (401, "invalid_client")


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({"jwks_uri": "http://keys.example.com/jwks.json"}, "must use https"),
        ({"jwks_uri": "/relative"}, "absolute URL"),
        ({}, "as jwks or as jwks_uri"),
    ],
)
def test_a_bad_or_missing_key_source_is_invalid_client_metadata(
    oauth: OAuthService, metadata: dict[str, Any], message: str
) -> None:
    response = register(oauth, **metadata)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_client_metadata"
    assert message in response.json()["error_description"]


def test_both_jwks_and_jwks_uri_is_invalid_client_metadata(
    oauth: OAuthService, documents: Documents
) -> None:
    key = ClientKey.new()
    uri = documents.publish("/both.json", {"keys": [key.public_jwk]})
    response = register(oauth, jwks_uri=uri, jwks={"keys": [key.public_jwk]})
    assert response.json()["error"] == "invalid_client_metadata"
