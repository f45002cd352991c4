"""Authentication strength in agent tokens (amr, acr), the agent's minimum, acr_values
and authorization_details, over a real issuer on loopback behind a (pretend)
TLS-terminating proxy that forwards client certificates in a header."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from cryptography.hazmat.primitives import serialization

from issuer.keys import public_jwk
from issuer.oauth.api_keys import API_KEY_TOKEN_TYPE
from issuer.oauth.clients import TOKEN_EXCHANGE
from issuer.strength import ACR_APIKEY, ACR_KEY, ACR_KEY_MTLS, ACR_KEY_MTLS_HUMAN
from tests.issuer.conftest import TOKEN
from tests.issuer.oauth_server import ClientKey, OAuthService, Registered, oauth_service
from tests.issuer.test_mtls import HEADER, self_signed


@pytest.fixture(scope="module")
def oauth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OAuthService]:
    with oauth_service(
        "sqlite", tmp_path_factory.mktemp("strength"), client_cert_header=HEADER
    ) as service:
        yield service


def credentials(oauth: OAuthService, **form: str) -> dict[str, str]:
    return {"grant_type": "client_credentials", **form}


def with_key(oauth: OAuthService, client: Registered, **form: str) -> dict[str, str]:
    """A client_credentials form authenticated with ``client``'s private_key_jwt."""
    return credentials(
        oauth,
        client_assertion_type="urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        client_assertion=oauth.assertion(client),
        **form,
    )


def granted(response: httpx.Response, oauth: OAuthService) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    return oauth.verifier().verify(response.json()["access_token"])


def refused(response: httpx.Response, status: int, error: str) -> str:
    assert (response.status_code, response.json()["error"]) == (status, error), response.text
    assert "access_token" not in response.json()
    description: str = response.json()["error_description"]
    return description


def key_client_with_certificate(
    oauth: OAuthService, agent_id: str
) -> tuple[Registered, dict[str, str]]:
    """A private_key_jwt client that registered two keys, one it signs assertions with and
    one of a self-signed certificate, and the proxy header presenting that certificate."""
    cert, private = self_signed("bot")
    assertion_key = ClientKey.new()
    cert_jwk = {**public_jwk(private.public_key()), "kid": "k-cert", "alg": "ES256"}
    metadata = {
        "agent_id": agent_id,
        "token_endpoint_auth_method": "private_key_jwt",
        "grant_types": ["client_credentials"],
        "scope": "read write",
        "jwks": {"keys": [assertion_key.public_jwk, cert_jwk]},
    }
    client = oauth._registered(metadata, assertion_key)
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    return client, {HEADER: quote(pem)}


def key_client_with_its_own_certificate(
    oauth: OAuthService,
) -> tuple[Registered, dict[str, str]]:
    """A private_key_jwt client whose one key is also a self-signed certificate's, and the
    proxy header presenting that certificate."""
    cert, private = self_signed("bot")
    key = ClientKey("ES256", "k-cert", private)
    client = oauth.key_client(key)
    assert public_jwk(private.public_key())["x"] == key.public_jwk["x"]
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    return client, {HEADER: quote(pem)}


def api_key(oauth: OAuthService, agent_id: str) -> httpx.Response:
    return oauth.http.post(
        "/oauth/api-keys",
        json={"agent_id": agent_id, "scope": "read"},
        headers={"Authorization": f"Bearer {TOKEN}"},
    )


def trade(oauth: OAuthService, key: str, **form: str) -> httpx.Response:
    data = {"grant_type": TOKEN_EXCHANGE, "subject_token": key}
    data["subject_token_type"] = API_KEY_TOKEN_TYPE
    return oauth.http.post("/oauth/token", data={**data, **form})


# ---------------------------------------------------------------- each credential


def test_a_client_secret_gives_amr_secret_and_acr_key(oauth: OAuthService) -> None:
    for method in ("client_secret_basic", "client_secret_post"):
        client = oauth.secret_client(method)
        assert client.secret is not None
        if method == "client_secret_basic":
            response = oauth.http.post("/oauth/token", data=credentials(oauth), auth=client.basic)
        else:
            form = credentials(oauth, client_id=client.client_id, client_secret=client.secret)
            response = oauth.http.post("/oauth/token", data=form)
        claims = granted(response, oauth)
        assert (claims["amr"], claims["acr"]) == (["secret"], ACR_KEY)


def test_private_key_jwt_gives_pkjwt_and_with_its_certificate_key_mtls(
    oauth: OAuthService,
) -> None:
    plain = oauth.key_client()
    claims = granted(oauth.http.post("/oauth/token", data=with_key(oauth, plain)), oauth)
    assert (claims["amr"], claims["acr"]) == (["pkjwt"], ACR_KEY)
    assert "cnf" not in claims

    client, header = key_client_with_certificate(oauth, oauth.add_agent())
    response = oauth.http.post("/oauth/token", data=with_key(oauth, client), headers=header)
    claims = granted(response, oauth)
    assert (claims["amr"], claims["acr"]) == (["mtls", "pkjwt"], ACR_KEY_MTLS)
    assert "x5t#S256" in claims["cnf"]  # the token is bound to the certificate


def test_a_certificate_of_the_assertion_key_binds_but_is_no_second_factor(
    oauth: OAuthService,
) -> None:
    client, header = key_client_with_its_own_certificate(oauth)
    response = oauth.http.post("/oauth/token", data=with_key(oauth, client), headers=header)
    claims = granted(response, oauth)
    assert (claims["amr"], claims["acr"]) == (["pkjwt"], ACR_KEY)
    assert "x5t#S256" in claims["cnf"]  # still bound to the certificate

    ask = with_key(oauth, client, acr_values=ACR_KEY_MTLS)
    response = oauth.http.post("/oauth/token", data=ask, headers=header)
    assert "reaches urn:tessera:acr:key" in refused(response, 400, "unauthorized_client")


def test_a_certificate_not_bound_to_the_client_adds_nothing(oauth: OAuthService) -> None:
    other, _ = self_signed("someone else")
    pem = other.public_bytes(serialization.Encoding.PEM).decode()
    client = oauth.key_client()
    response = oauth.http.post(
        "/oauth/token", data=with_key(oauth, client), headers={HEADER: quote(pem)}
    )
    claims = granted(response, oauth)
    assert (claims["amr"], claims["acr"]) == (["pkjwt"], ACR_KEY)
    assert "cnf" not in claims


def test_a_self_signed_mutual_tls_client_gives_mtls_and_acr_key(oauth: OAuthService) -> None:
    cert, key = self_signed("tls-bot")
    jwk = {**public_jwk(key.public_key()), "kid": "k1", "alg": "ES256"}
    registered = oauth.register(
        {
            "agent_id": oauth.add_agent(),
            "grant_types": ["client_credentials"],
            "scope": "read",
            "token_endpoint_auth_method": "self_signed_tls_client_auth",
            "jwks": {"keys": [jwk]},
        }
    )
    pem = quote(cert.public_bytes(serialization.Encoding.PEM).decode())
    response = oauth.http.post(
        "/oauth/token",
        data=credentials(oauth, client_id=registered.json()["client_id"]),
        headers={HEADER: pem},
    )
    claims = granted(response, oauth)
    assert (claims["amr"], claims["acr"]) == (["mtls"], ACR_KEY)


def test_an_api_key_gives_amr_apikey_and_introspection_says_so(oauth: OAuthService) -> None:
    created = api_key(oauth, oauth.add_agent())
    assert created.status_code == 201, created.text
    response = trade(oauth, created.json()["api_key"])
    claims = granted(response, oauth)
    assert (claims["amr"], claims["acr"]) == (["apikey"], ACR_APIKEY)
    introspected = oauth.introspect(response.json()["access_token"])
    assert (introspected["amr"], introspected["acr"]) == (["apikey"], ACR_APIKEY)


# ---------------------------------------------------------------- the minimum


def test_a_high_risk_agent_may_not_get_or_use_an_api_key(oauth: OAuthService) -> None:
    for agent in (oauth.add_agent(risk="high"), oauth.add_agent(agent_type="external")):
        assert refused(api_key(oauth, agent), 400, "invalid_request")
    declared = oauth.add_agent(minimum_acr=ACR_KEY)
    assert "needs authentication of at least" in refused(
        api_key(oauth, declared), 400, "invalid_request"
    )

    held = oauth.add_agent()  # a key made while the agent was low-risk and internal
    key = api_key(oauth, held).json()["api_key"]
    record = oauth.store.get("Agent", held)
    extension = record.data["urn:tessera:params:scim:schemas:extension:agent:1.0:Agent"]
    data = {
        **record.data,
        "urn:tessera:params:scim:schemas:extension:agent:1.0:Agent": {
            **extension,
            "agentType": "external",
        },
    }
    oauth.store.replace(
        "Agent", held, data, unique={"name": data["name"]}, expected_version=None, actor="t"
    )
    refused(trade(oauth, key), 400, "invalid_request")


def test_a_minimum_above_the_clients_authentication_is_unauthorized_client(
    oauth: OAuthService,
) -> None:
    agent = oauth.add_agent(minimum_acr=ACR_KEY_MTLS)
    client = oauth.key_client(agent_id=agent)
    description = refused(
        oauth.http.post("/oauth/token", data=with_key(oauth, client)), 400, "unauthorized_client"
    )
    assert ACR_KEY_MTLS in description and "pkjwt" in description

    stronger, header = key_client_with_certificate(oauth, agent)
    response = oauth.http.post("/oauth/token", data=with_key(oauth, stronger), headers=header)
    assert granted(response, oauth)["acr"] == ACR_KEY_MTLS


def test_a_high_risk_agents_secret_client_meets_the_default_minimum(oauth: OAuthService) -> None:
    client = oauth.secret_client(agent_id=oauth.add_agent(risk="critical"))
    response = oauth.http.post("/oauth/token", data=credentials(oauth), auth=client.basic)
    assert granted(response, oauth)["acr"] == ACR_KEY


# ---------------------------------------------------------------- acr_values


def test_acr_values_is_honoured_when_reached_and_refused_when_not(oauth: OAuthService) -> None:
    client = oauth.secret_client()
    ask = {"acr_values": f"{ACR_KEY_MTLS} {ACR_KEY}"}
    response = oauth.http.post("/oauth/token", data=credentials(oauth, **ask), auth=client.basic)
    assert granted(response, oauth)["acr"] == ACR_KEY
    response = oauth.http.post(
        "/oauth/token", data=credentials(oauth, acr_values=ACR_APIKEY), auth=client.basic
    )
    assert granted(response, oauth)["acr"] == ACR_KEY  # the level reached, above the one asked

    too_high = credentials(oauth, acr_values=f"{ACR_KEY_MTLS} {ACR_KEY_MTLS_HUMAN}")
    response = oauth.http.post("/oauth/token", data=too_high, auth=client.basic)
    assert "reaches urn:tessera:acr:key" in refused(response, 400, "unauthorized_client")

    key = api_key(oauth, oauth.add_agent()).json()["api_key"]
    refused(trade(oauth, key, acr_values=ACR_KEY), 400, "invalid_request")


@pytest.mark.parametrize(
    "acr_values",
    ["mfa", f"{ACR_KEY} urn:tessera:acr:other", " ".join([ACR_KEY] * 40)],
)
def test_unknown_or_overlong_acr_values_are_invalid_request(
    oauth: OAuthService, acr_values: str
) -> None:
    client = oauth.secret_client()
    response = oauth.http.post(
        "/oauth/token", data=credentials(oauth, acr_values=acr_values), auth=client.basic
    )
    refused(response, 400, "invalid_request")


# ---------------------------------------------------------------- authorization_details

PAYMENT = {
    "type": "payment_initiation",
    "instructedAmount": {"currency": "USD", "amount": "12.00"},
    "creditorName": "ACME",
}


def test_authorization_details_are_copied_into_the_token(oauth: OAuthService) -> None:
    client = oauth.secret_client()
    details = [
        {
            "type": "payment_initiation",
            "instructedAmount": {"currency": "USD", "amount": "12.00"},
            "creditorName": "ACME",
        }
    ]
    form = credentials(oauth, authorization_details=json.dumps(details))
    response = oauth.http.post("/oauth/token", data=form, auth=client.basic)
    assert granted(response, oauth)["authorization_details"] == details
    assert response.json()["authorization_details"] == details
    plain = oauth.http.post("/oauth/token", data=credentials(oauth), auth=client.basic)
    assert "authorization_details" not in granted(plain, oauth)


def test_only_the_configured_authorization_details_types_are_accepted(
    oauth: OAuthService, tmp_path: Path
) -> None:
    other = [{"type": "account_information", "accounts": ["DE00"]}]
    client = oauth.secret_client()
    form = credentials(oauth, authorization_details=json.dumps([PAYMENT, *other]))
    response = oauth.http.post("/oauth/token", data=form, auth=client.basic)
    description = refused(response, 400, "invalid_authorization_details")
    assert "'account_information'" in description and "payment_initiation" in description
    metadata = oauth.http.get("/.well-known/oauth-authorization-server").json()
    assert metadata["authorization_details_types_supported"] == ["payment_initiation"]

    wider = ("payment_initiation", "account_information")
    with oauth_service("sqlite", tmp_path, authorization_details_types=wider) as configured:
        metadata = configured.http.get("/.well-known/oauth-authorization-server").json()
        assert metadata["authorization_details_types_supported"] == list(wider)
        client = configured.secret_client()
        form = credentials(configured, authorization_details=json.dumps(other))
        response = configured.http.post("/oauth/token", data=form, auth=client.basic)
        assert granted(response, configured)["authorization_details"] == other


@pytest.mark.parametrize(
    "details",
    [
        "not json",
        '{"type": "payment"}',
        "[]",
        '[{"kind": "payment"}]',
        '[{"type": ""}]',
        '[{"type": 7}]',
        '["payment"]',
        json.dumps([{"type": "t"}] * 11),
        json.dumps([{"type": "t", "x": "y" * 4100}]),
        '[{"type": "payment_initiation", "instructedAmount": {"amount": "12.00"}}]',
        "[" * 20 + "]" * 20,
        # text a person would read otherwise than it is: control and bidi characters
        json.dumps([{**PAYMENT, "creditorName": "ACME\u202e Ltd"}]),
        json.dumps([{**PAYMENT, "creditorName": "ACME\nIBAN DE00"}]),
        json.dumps([{**PAYMENT, "remittance": {"lines": ["ok", "a\u2066b"]}}]),
        json.dumps([{**PAYMENT, "note\u200f": "x"}]),
        json.dumps([{**PAYMENT, "note": "\x85"}]),
    ],
)
def test_malformed_authorization_details_are_refused(oauth: OAuthService, details: str) -> None:
    client = oauth.secret_client()
    form = credentials(oauth, authorization_details=details)
    response = oauth.http.post("/oauth/token", data=form, auth=client.basic)
    refused(response, 400, "invalid_authorization_details")
