"""The authorization server on the wire, on SQLite and PostgreSQL.

A real server on 127.0.0.1 (see :mod:`tests.issuer.oauth_server`), spoken to with httpx
and with Authlib's OAuth 2 client: RFC 8414 metadata, the JWK Set, RFC 7591 registration,
the client_credentials grant with client_secret_basic, client_secret_post and RFC 7523
private_key_jwt, RFC 9068 access tokens, RFC 8707 resources, RFC 7662 introspection and
RFC 7009 revocation. Errors are checked to the exact RFC 6749 §5.2 code and status.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import httpx
import jwt
import pytest
from authlib.integrations.base_client import OAuthError as AuthlibError  # type: ignore[import-untyped]
from authlib.oauth2.rfc7523 import PrivateKeyJWT  # type: ignore[import-untyped]
from cryptography.hazmat.primitives import serialization
from joserfc import jwk as joserfc_jwk

from issuer import wire
from issuer.keys import thumbprint
from issuer.oauth.bodies import MAX_BODY
from issuer.oauth.client_auth import JWT_BEARER
from tests.issuer.oauth_server import (
    ClientKey,
    OAuthService,
    Registered,
    ShortPrivateKeyJWT,
    oauth_service,
)
from tests.servers import send_raw
from tests.stores import BACKENDS

RESOURCE = "https://api.example.com/payments"
PATHS = {
    "token_endpoint": "/oauth/token",
    "jwks_uri": "/oauth/jwks",
    "registration_endpoint": "/oauth/register",
    "introspection_endpoint": "/oauth/introspect",
    "revocation_endpoint": "/oauth/revoke",
}
AUTH_METHODS = {"private_key_jwt", "client_secret_basic", "client_secret_post"}
PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}


@pytest.fixture(scope="module", params=BACKENDS)
def oauth(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OAuthService]:
    backend: str = request.param
    with oauth_service(backend, tmp_path_factory.mktemp(backend)) as service:
        yield service


# ---------------------------------------------------------------- helpers


def expect_error(response: httpx.Response, status: int, error: str) -> dict[str, Any]:
    """The response is the RFC 6749 §5.2 error ``error`` with ``status``, not cached, and
    issues nothing."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "no-store"
    body: dict[str, Any] = response.json()
    assert body["error"] == error, body
    assert isinstance(body["error_description"], str)
    assert "access_token" not in body
    return body


def token_request(oauth: OAuthService, **form: str) -> httpx.Response:
    """POST /oauth/token with a client_credentials form (``form`` adds or replaces)."""
    return oauth.http.post("/oauth/token", data={"grant_type": "client_credentials", **form})


def basic_token_request(oauth: OAuthService, client: Registered, **form: str) -> httpx.Response:
    return oauth.http.post(
        "/oauth/token",
        data={"grant_type": "client_credentials", **form},
        auth=client.basic,
    )


def assertion_request(oauth: OAuthService, assertion: str, **form: str) -> httpx.Response:
    return token_request(
        oauth, client_assertion_type=JWT_BEARER, client_assertion=assertion, **form
    )


def access_token(oauth: OAuthService, client: Registered, **params: str) -> str:
    """An access token for ``client``, fetched with Authlib."""
    with oauth.authlib(client) as authlib:
        token = authlib.fetch_token(oauth.token_endpoint, grant_type="client_credentials", **params)
    value: str = token["access_token"]
    return value


def registered_for(oauth: OAuthService, agent_id: str) -> list[str]:
    """The ids of the clients stored for an agent."""
    return [
        record.data["client_id"]
        for record in oauth.store.list("Client")
        if record.data["agent_id"] == agent_id
    ]


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def compact(header: dict[str, Any], claims: dict[str, Any], sign: Callable[[bytes], bytes]) -> str:
    """A compact JWS built by hand, so that nothing refuses to make a bad one."""
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    return f"{signing_input}.{b64url(sign(signing_input.encode()))}"


# ---------------------------------------------------------------- metadata (RFC 8414)


@pytest.mark.parametrize(
    "path", ["/.well-known/oauth-authorization-server", "/.well-known/openid-configuration"]
)
def test_metadata_is_served_at_the_well_known_url_with_the_exact_issuer(
    oauth: OAuthService, path: str
) -> None:
    response = oauth.http.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    metadata = response.json()
    assert metadata["issuer"] == oauth.issuer  # RFC 8414 §3.3: identical, no trailing slash
    assert not metadata["issuer"].endswith("/")


def test_both_well_known_urls_serve_the_same_metadata(oauth: OAuthService) -> None:
    rfc8414 = oauth.http.get("/.well-known/oauth-authorization-server").json()
    openid = oauth.http.get("/.well-known/openid-configuration").json()
    assert rfc8414 == openid


def test_metadata_names_every_endpoint_as_an_absolute_url_under_the_issuer(
    oauth: OAuthService,
) -> None:
    metadata = oauth.http.get("/.well-known/oauth-authorization-server").json()
    for name, path in PATHS.items():
        assert metadata[name] == oauth.issuer + path


def test_metadata_states_the_grant_and_the_client_authentication_methods(
    oauth: OAuthService,
) -> None:
    metadata = oauth.http.get("/.well-known/oauth-authorization-server").json()
    assert metadata["grant_types_supported"] == [
        "client_credentials",
        "authorization_code",
        "refresh_token",
        "urn:ietf:params:oauth:grant-type:token-exchange",
        "urn:openid:params:grant-type:ciba",
    ]
    assert metadata["response_types_supported"] == ["code"]
    assert metadata["code_challenge_methods_supported"] == ["S256"]
    mutual_tls = {"tls_client_auth", "self_signed_tls_client_auth"}
    for endpoint in ("token", "revocation"):  # public clients too (RFC 6749 §2.1, RFC 7009)
        assert set(metadata[f"{endpoint}_endpoint_auth_methods_supported"]) == {
            *AUTH_METHODS,
            *mutual_tls,
            "none",
        }
    assert set(metadata["introspection_endpoint_auth_methods_supported"]) == {
        *AUTH_METHODS,
        *mutual_tls,
    }


def test_metadata_says_tokens_of_mutual_tls_clients_are_certificate_bound(
    oauth: OAuthService,
) -> None:
    """RFC 8705 §3.3: such tokens are issued (``cnf``), so the server says so; its
    endpoints take mutual TLS where they are, so it names no mtls_endpoint_aliases."""
    metadata = oauth.http.get("/.well-known/oauth-authorization-server").json()
    assert metadata["tls_client_certificate_bound_access_tokens"] is True
    assert "mtls_endpoint_aliases" not in metadata


def test_metadata_names_the_assertion_algorithms_of_every_endpoint_taking_private_key_jwt(
    oauth: OAuthService,
) -> None:
    """RFC 8414 §2: ``*_auth_signing_alg_values_supported`` must be present for an endpoint
    whose methods include private_key_jwt."""
    metadata = oauth.http.get("/.well-known/oauth-authorization-server").json()
    token = metadata["token_endpoint_auth_signing_alg_values_supported"]
    for endpoint in ("token", "introspection", "revocation"):
        assert "private_key_jwt" in metadata[f"{endpoint}_endpoint_auth_methods_supported"]
        assert metadata[f"{endpoint}_endpoint_auth_signing_alg_values_supported"] == token


def test_metadata_names_exactly_what_tessera_implements(
    oauth: OAuthService,
) -> None:
    metadata = oauth.http.get("/.well-known/oauth-authorization-server").json()
    assert set(metadata) == {
        "issuer",
        "authorization_endpoint",
        "token_endpoint",
        "jwks_uri",
        "registration_endpoint",
        "introspection_endpoint",
        "revocation_endpoint",
        "grant_types_supported",
        "response_types_supported",
        "response_modes_supported",
        "code_challenge_methods_supported",
        "authorization_response_iss_parameter_supported",  # RFC 9207
        "client_id_metadata_document_supported",
        "token_endpoint_auth_methods_supported",
        "token_endpoint_auth_signing_alg_values_supported",
        "introspection_endpoint_auth_methods_supported",
        "introspection_endpoint_auth_signing_alg_values_supported",
        "revocation_endpoint_auth_methods_supported",
        "revocation_endpoint_auth_signing_alg_values_supported",
        "tls_client_certificate_bound_access_tokens",  # RFC 8705 §3.3
        "access_token_signing_alg_values_supported",
        "backchannel_authentication_endpoint",  # OpenID CIBA §4
        "backchannel_token_delivery_modes_supported",
        "backchannel_user_code_parameter_supported",
        "authorization_details_types_supported",  # RFC 9396 §10
    }
    assert metadata["access_token_signing_alg_values_supported"] == ["ES256"]


def test_metadata_offers_no_unsigned_or_symmetric_assertion_algorithm(
    oauth: OAuthService,
) -> None:
    metadata = oauth.http.get("/.well-known/oauth-authorization-server").json()
    algs = metadata["token_endpoint_auth_signing_alg_values_supported"]
    assert {"ES256", "RS256", "EdDSA"} <= set(algs)
    assert not [alg for alg in algs if alg == "none" or alg.startswith("HS")]


# ---------------------------------------------------------------- the JWK Set


def test_jwks_publishes_the_current_signing_key_with_kid_alg_and_use(
    oauth: OAuthService,
) -> None:
    response = oauth.http.get("/oauth/jwks")
    assert response.status_code == 200
    keys = response.json()["keys"]
    current = oauth.keys.signing_key()
    published = {key["kid"]: key for key in keys}
    assert current.kid in published
    key = published[current.kid]
    assert (key["kty"], key["crv"], key["alg"], key["use"]) == ("EC", "P-256", "ES256", "sig")
    assert key["kid"] == thumbprint(key)  # RFC 7638


def test_jwks_holds_no_private_key_member(oauth: OAuthService) -> None:
    for key in oauth.http.get("/oauth/jwks").json()["keys"]:
        assert not PRIVATE_MEMBERS & set(key), key


# ---------------------------------------------------------------- registration (RFC 7591)


def test_registration_is_201_with_the_client_id_and_the_secret_shown_once(
    oauth: OAuthService,
) -> None:
    agent_id = oauth.add_agent()
    response = oauth.register(
        {
            "agent_id": agent_id,
            "grant_types": ["client_credentials"],
            "scope": "read  write",
            "client_name": "payments bot",
        }
    )
    assert response.status_code == 201, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["token_endpoint_auth_method"] == "client_secret_basic"  # RFC 7591 default
    assert body["grant_types"] == ["client_credentials"]
    assert body["agent_id"] == agent_id
    assert body["scope"] == "read write"
    assert body["client_name"] == "payments bot"
    assert len(body["client_secret"]) >= 43  # 256 bits
    assert body["client_secret_expires_at"] == 0  # RFC 7591 §3.2.1: it does not expire
    assert abs(body["client_id_issued_at"] - time.time()) < 60
    assert "secret_hash" not in body


def test_the_store_keeps_only_a_hash_of_the_client_secret(oauth: OAuthService) -> None:
    client = oauth.secret_client()
    assert client.secret is not None
    stored = oauth.store.find("Client", "client_id", client.client_id).data
    assert client.secret not in json.dumps(stored)
    assert "client_secret" not in stored
    assert stored["secret_hash"] == "sha256$" + hashlib.sha256(client.secret.encode()).hexdigest()


def test_a_private_key_jwt_client_gets_no_secret_and_keeps_its_public_key(
    oauth: OAuthService,
) -> None:
    key = ClientKey.new()
    client = oauth.key_client(key)
    assert client.secret is None
    assert "client_secret" not in client.response
    assert client.response["jwks"] == {"keys": [key.public_jwk]}


@pytest.mark.parametrize(
    "metadata",
    [
        {"grant_types": [None, 1, True]},
        {"token_endpoint_auth_method": "private_key_jwt", "jwks": {"keys": [{"kty": ["EC"]}]}},
        {"client_name": "nul\x00"},
    ],
)
def test_registration_with_metadata_no_client_can_have_is_invalid_client_metadata(
    oauth: OAuthService, metadata: dict[str, Any]
) -> None:
    agent_id = oauth.add_agent()
    response = oauth.register(
        {"agent_id": agent_id, "grant_types": ["client_credentials"], **metadata}
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_client_metadata"
    assert registered_for(oauth, agent_id) == []


@pytest.mark.parametrize("path", ["/oauth/token", "/oauth/register", "/oauth/jwks"])
def test_a_method_an_endpoint_does_not_take_is_405_in_oauths_error_shape(
    oauth: OAuthService, path: str
) -> None:
    response = httpx.put(f"{oauth.issuer}{path}", timeout=10)
    assert response.status_code == 405
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"] == "invalid_request"
    allowed = {method.strip() for method in response.headers["allow"].split(",")}
    assert allowed in ({"POST"}, {"GET", "HEAD"})


def test_registration_without_a_bearer_token_is_401_with_a_bearer_challenge(
    oauth: OAuthService,
) -> None:
    agent_id = oauth.add_agent()
    response = oauth.register(
        {"agent_id": agent_id, "grant_types": ["client_credentials"]}, token=None
    )
    assert response.status_code == 401
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith("Bearer ")
    assert "error=" not in challenge  # RFC 6750 §3.1: no error code without credentials
    assert registered_for(oauth, agent_id) == []


def test_registration_with_a_wrong_admin_token_is_401_invalid_token(
    oauth: OAuthService,
) -> None:
    agent_id = oauth.add_agent()
    response = oauth.register({"agent_id": agent_id}, token="not-the-admin-token-at-all")
    expect_error(response, 401, "invalid_token")
    assert 'error="invalid_token"' in response.headers["www-authenticate"]
    assert response.headers["www-authenticate"].startswith("Bearer ")
    assert registered_for(oauth, agent_id) == []


def _private_jwks(agent_id: str) -> dict[str, Any]:
    return {
        "agent_id": agent_id,
        "token_endpoint_auth_method": "private_key_jwt",
        "jwks": {"keys": [ClientKey.new().private_jwk]},
    }


def _oct_jwks(agent_id: str) -> dict[str, Any]:
    secret = b64url(b"a shared secret of thirty-two b.")
    return {
        "agent_id": agent_id,
        "token_endpoint_auth_method": "private_key_jwt",
        "jwks": {"keys": [{"kty": "oct", "k": secret, "kid": "shared"}]},
    }


def _jwks_uri(agent_id: str) -> dict[str, Any]:
    return {
        "agent_id": agent_id,
        "token_endpoint_auth_method": "private_key_jwt",
        "jwks_uri": "https://agent.example.com/jwks.json",
    }


BAD_METADATA: dict[str, Callable[[str], Any]] = {
    "unknown agent": lambda agent_id: {"agent_id": "no-such-agent"},
    "no agent": lambda agent_id: {"scope": "read"},
    "jwks with a private key": _private_jwks,
    "jwks with an oct key": _oct_jwks,
    "jwks_uri": _jwks_uri,
    "authorization_code grant": lambda agent_id: {
        "agent_id": agent_id,
        "grant_types": ["client_credentials", "authorization_code"],
    },
    "auth method none": lambda agent_id: {
        "agent_id": agent_id,
        "token_endpoint_auth_method": "none",
    },
    "not an object": lambda agent_id: [agent_id],
}


@pytest.mark.parametrize("case", BAD_METADATA, ids=list(BAD_METADATA))
def test_registration_refuses_bad_metadata_with_invalid_client_metadata(
    oauth: OAuthService, case: str
) -> None:
    agent_id = oauth.add_agent()
    response = oauth.register(BAD_METADATA[case](agent_id))
    expect_error(response, 400, "invalid_client_metadata")
    assert registered_for(oauth, agent_id) == []


BAD_REDIRECT_URIS = {
    "a fragment": ["https://app.example.com/cb#top"],
    "an empty fragment": ["https://app.example.com/cb#"],
    "relative": ["/cb"],
    "no host": ["https:///cb"],
    "http elsewhere than loopback": ["http://app.example.com/cb"],
    "a private-use scheme that is no domain": ["myapp:/cb"],
    "a bracketed host that is no address": ["http://[::1/cb"],
    "one bad among good ones": ["https://app.example.com/cb", "https://app.example.com/x#y"],
    "not a list": "https://app.example.com/cb",
    "an empty list": [],
    "not strings": [42],
}


@pytest.mark.parametrize("token", [True, False], ids=["admin", "open"])
@pytest.mark.parametrize("case", BAD_REDIRECT_URIS, ids=list(BAD_REDIRECT_URIS))
def test_registration_refuses_bad_redirect_uris_with_invalid_redirect_uri(
    oauth: OAuthService, case: str, token: bool
) -> None:
    """RFC 7591 §3.2.2; the rules are OAuth 2.1 §2.3.1's and RFC 8252's (see docs)."""
    before = len(oauth.store.list("Client"))
    metadata = {
        "token_endpoint_auth_method": "none",
        "grant_types": ["authorization_code"],
        "redirect_uris": BAD_REDIRECT_URIS[case],
    }
    response = oauth.register(metadata) if token else oauth.register(metadata, token=None)
    expect_error(response, 400, "invalid_redirect_uri")
    assert len(oauth.store.list("Client")) == before


@pytest.mark.parametrize(
    "uri",
    [
        "https://app.example.com/cb?x=1",
        "http://127.0.0.1:9999/cb",
        "http://[::1]:9999/cb",
        "http://localhost/cb",
        "com.example.app:/oauth2redirect",
    ],
)
def test_registration_takes_redirect_uris_within_the_rules(oauth: OAuthService, uri: str) -> None:
    metadata = {
        "token_endpoint_auth_method": "none",
        "grant_types": ["authorization_code"],
        "redirect_uris": [uri],
    }
    response = oauth.register(metadata, token=None)
    assert response.status_code == 201, response.text
    assert response.json()["redirect_uris"] == [uri]


def test_an_authorization_code_client_without_redirect_uris_is_invalid_client_metadata(
    oauth: OAuthService,
) -> None:
    metadata = {"token_endpoint_auth_method": "none", "grant_types": ["authorization_code"]}
    expect_error(oauth.register(metadata, token=None), 400, "invalid_client_metadata")


def test_a_jwks_uri_that_is_no_url_is_invalid_client_metadata(oauth: OAuthService) -> None:
    agent_id = oauth.add_agent()
    for uri in ("https://[agent/jwks", "https://agent.example.com:port/jwks"):
        metadata = {**_jwks_uri(agent_id), "jwks_uri": uri, "grant_types": ["client_credentials"]}
        expect_error(oauth.register(metadata), 400, "invalid_client_metadata")
    assert registered_for(oauth, agent_id) == []


# ---------------------------------------------------------------- bodies within bounds

DEEP = b'{"a":' * 1000 + b"1" + b"}" * 1000  # nested a thousand levels
NOT_JSON = {  # each body, and what the answer says of it
    "nested a thousand levels": (DEEP, "the document nests deeper than 64 levels"),
    "a lone surrogate": (b'{"client_name": "\\ud800"}', "the document is not JSON"),
    "cut short": (b'{"client_name": ', "the document is not JSON"),
}


@pytest.mark.parametrize(("body", "says"), NOT_JSON.values(), ids=list(NOT_JSON))
def test_a_registration_that_is_not_json_within_bounds_is_invalid_client_metadata(
    oauth: OAuthService, body: bytes, says: str
) -> None:
    before = len(oauth.store.list("Client"))
    response = oauth.http.post(
        "/oauth/register",
        content=body,
        headers={"Authorization": f"Bearer {oauth.token}", "Content-Type": "application/json"},
    )
    error = expect_error(response, 400, "invalid_client_metadata")
    assert error["error_description"].startswith(says)
    assert len(oauth.store.list("Client")) == before


@pytest.mark.parametrize(("body", "says"), NOT_JSON.values(), ids=list(NOT_JSON))
def test_an_api_key_request_that_is_not_json_within_bounds_is_invalid_request(
    oauth: OAuthService, body: bytes, says: str
) -> None:
    before = len(oauth.store.list("ApiKey"))
    response = oauth.http.post(
        "/oauth/api-keys", content=body, headers={"Authorization": f"Bearer {oauth.token}"}
    )
    assert expect_error(response, 400, "invalid_request")["error_description"].startswith(says)
    assert len(oauth.store.list("ApiKey")) == before


@pytest.mark.parametrize("path", ["/oauth/register", "/oauth/api-keys", "/oauth/token"])
def test_a_body_over_64_kib_is_413_invalid_request(oauth: OAuthService, path: str) -> None:
    body = b"scope=" + b"a" * MAX_BODY
    kind = "application/x-www-form-urlencoded" if path == "/oauth/token" else "application/json"
    headers = {"Authorization": f"Bearer {oauth.token}", "Content-Type": kind}
    response = oauth.http.post(path, content=body, headers=headers)
    error = expect_error(response, 413, "invalid_request")
    assert error["error_description"] == f"the body is larger than {MAX_BODY} bytes"


@pytest.mark.parametrize("path", ["/oauth/register", "/oauth/token"])
def test_a_body_that_does_not_arrive_in_time_is_408_invalid_request(
    oauth: OAuthService, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    monkeypatch.setattr(wire, "READ_TIMEOUT", 0.5)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {oauth.token}\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\n"
    )
    answer = send_raw(int(oauth.issuer.rsplit(":", 1)[1]), head.encode() + b"grant_type=")
    status, _, rest = answer.partition(b"\r\n")
    assert status == b"HTTP/1.1 408 Request Timeout", answer
    error = json.loads(rest.partition(b"\r\n\r\n")[2])
    assert error == {
        "error": "invalid_request",
        "error_description": "the body did not arrive within 0.5 seconds",
    }


DEEP_JWT = f"{b64url(b'[' * 5000 + b']' * 5000)}.e30.AAAA"  # a header nested 5,000 deep


def test_a_deeply_nested_token_is_inactive(oauth: OAuthService) -> None:
    assert oauth.introspect(DEEP_JWT) == {"active": False}  # RFC 7662 §2.2


def test_a_deeply_nested_client_assertion_is_401_invalid_client(oauth: OAuthService) -> None:
    error = expect_error(assertion_request(oauth, DEEP_JWT), 401, "invalid_client")
    assert error["error_description"] == "the client assertion is not a JWT"


def test_a_deeply_nested_admin_token_is_401_invalid_token(oauth: OAuthService) -> None:
    header = f"{b64url(b'[' * 3000 + b']' * 3000)}.e30.AAAA"  # within the head's 16 KiB
    response = oauth.http.get("/oauth/api-keys", headers={"Authorization": f"Bearer {header}"})
    expect_error(response, 401, "invalid_token")


# ---------------------------------------------------------------- client_credentials


def test_authlib_gets_a_token_with_client_secret_basic(oauth: OAuthService) -> None:
    client = oauth.secret_client("client_secret_basic", scope="read")
    with oauth.authlib(client) as authlib:
        token = authlib.fetch_token(oauth.token_endpoint, grant_type="client_credentials")
    assert token["token_type"] == "Bearer"
    assert token["expires_in"] == 300
    assert token["scope"] == "read"
    assert "refresh_token" not in token  # RFC 6749 §4.4.3: SHOULD NOT be included
    assert oauth.verifier().verify(token["access_token"])["client_id"] == client.client_id


def test_authlib_gets_a_token_with_client_secret_post(oauth: OAuthService) -> None:
    client = oauth.secret_client("client_secret_post", scope="read")
    with oauth.authlib(client) as authlib:
        token = authlib.fetch_token(oauth.token_endpoint, grant_type="client_credentials")
    assert oauth.verifier().verify(token["access_token"])["client_id"] == client.client_id


def test_authlib_gets_a_token_with_private_key_jwt_and_an_es256_key(oauth: OAuthService) -> None:
    client = oauth.key_client(ClientKey.new("ES256"), scope="read")
    with oauth.authlib(client) as authlib:
        token = authlib.fetch_token(oauth.token_endpoint, grant_type="client_credentials")
    claims = oauth.verifier().verify(token["access_token"])
    assert (claims["client_id"], claims["sub"]) == (client.client_id, client.agent_id)


@pytest.mark.parametrize(
    "alg",
    [
        "RS256",
        pytest.param(
            "EdDSA",
            # joserfc prefers RFC 9864's Ed25519; EdDSA is what the server and RFC 8037 name
            marks=pytest.mark.filterwarnings("ignore:EdDSA is deprecated"),
        ),
    ],
)
def test_authlib_gets_a_token_with_private_key_jwt_and_other_key_types(
    oauth: OAuthService, alg: str
) -> None:
    client = oauth.key_client(ClientKey.new(alg))
    with oauth.authlib(client) as authlib:
        token = authlib.fetch_token(oauth.token_endpoint, grant_type="client_credentials")
    assert oauth.verifier().verify(token["access_token"])["client_id"] == client.client_id


def test_authlib_private_key_jwt_without_a_kid_works_when_the_client_has_one_key(
    oauth: OAuthService,
) -> None:
    client = oauth.key_client()
    assert client.key is not None
    secret = joserfc_jwk.import_key(client.key.private_jwk)
    auth = ShortPrivateKeyJWT(oauth.token_endpoint, alg="ES256")  # no headers: no kid
    with oauth.authlib(client) as authlib:
        token = authlib.fetch_token(
            oauth.token_endpoint,
            grant_type="client_credentials",
            auth=authlib.client_auth_class(client.client_id, secret, auth),
        )
    assert oauth.verifier().verify(token["access_token"])["client_id"] == client.client_id


def test_the_access_token_verifies_with_the_published_jwks_and_carries_the_rfc_9068_claims(
    oauth: OAuthService,
) -> None:
    agent_id = oauth.add_agent(agent_type="interactive")
    client = oauth.secret_client(agent_id=agent_id, scope="read write")
    token = access_token(oauth, client, scope="read", resource=RESOURCE)

    claims = oauth.verifier(audience=RESOURCE).verify(token)
    header = jwt.get_unverified_header(token)
    assert header["typ"] == "at+jwt"  # RFC 9068 §2.1
    assert header["alg"] == "ES256"
    assert header["kid"] == oauth.keys.signing_key().kid
    assert claims["iss"] == oauth.issuer
    assert claims["sub"] == agent_id
    assert claims["aud"] == RESOURCE
    assert claims["client_id"] == client.client_id
    assert claims["scope"] == "read"
    assert claims["agent_id"] == agent_id
    assert claims["agent_type"] == "interactive"
    assert isinstance(claims["jti"], str) and len(claims["jti"]) >= 16
    assert claims["exp"] - claims["iat"] == 300
    assert abs(claims["iat"] - time.time()) < 60


def test_each_token_has_its_own_jti(oauth: OAuthService) -> None:
    client = oauth.secret_client()
    first, second = access_token(oauth, client), access_token(oauth, client)
    verifier = oauth.verifier()
    assert verifier.verify(first)["jti"] != verifier.verify(second)["jti"]


def test_without_a_resource_the_audience_is_the_issuer(oauth: OAuthService) -> None:
    token = access_token(oauth, oauth.secret_client())
    assert oauth.verifier(audience=oauth.issuer).verify(token)["aud"] == oauth.issuer


def test_several_resources_make_several_audiences(oauth: OAuthService) -> None:
    client = oauth.secret_client()
    other = "https://ledger.example.com/"
    response = oauth.http.post(
        "/oauth/token",
        content=f"grant_type=client_credentials&resource={RESOURCE}&resource={other}",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        auth=client.basic,
    )
    assert response.status_code == 200, response.text
    claims = oauth.verifier().verify(response.json()["access_token"])
    assert claims["aud"] == [RESOURCE, other]


def test_a_token_response_is_json_and_not_cached(oauth: OAuthService) -> None:
    response = basic_token_request(oauth, oauth.secret_client())
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "no-store"  # RFC 6749 §5.1
    assert response.headers["pragma"] == "no-cache"


def test_a_narrower_scope_is_granted_as_asked(oauth: OAuthService) -> None:
    client = oauth.secret_client(scope="read write admin")
    response = basic_token_request(oauth, client, scope="write read")
    assert response.status_code == 200, response.text
    assert set(response.json()["scope"].split()) == {"read", "write"}
    claims = oauth.verifier().verify(response.json()["access_token"])
    assert set(claims["scope"].split()) == {"read", "write"}


def test_without_a_scope_the_client_gets_its_whole_registered_scope(oauth: OAuthService) -> None:
    client = oauth.secret_client(scope="read write")
    response = basic_token_request(oauth, client)
    assert response.status_code == 200, response.text
    assert set(response.json()["scope"].split()) == {"read", "write"}


def test_a_scope_beyond_the_registered_one_is_invalid_scope(oauth: OAuthService) -> None:
    client = oauth.secret_client(scope="read")
    expect_error(basic_token_request(oauth, client, scope="read write"), 400, "invalid_scope")


def test_authlib_reports_invalid_scope(oauth: OAuthService) -> None:
    client = oauth.key_client(scope="read")
    with oauth.authlib(client) as authlib, pytest.raises(AuthlibError) as raised:
        authlib.fetch_token(oauth.token_endpoint, grant_type="client_credentials", scope="admin")
    assert raised.value.error == "invalid_scope"


@pytest.mark.parametrize(
    "resource",
    [
        "/payments",
        "api.example.com/payments",
        "https://api.example.com/#frag",
        "https://api.example.com/#",
        "https://[api.example.com/",
    ],
)
def test_a_resource_that_is_not_an_absolute_uri_without_fragment_is_invalid_target(
    oauth: OAuthService, resource: str
) -> None:
    response = basic_token_request(oauth, oauth.secret_client(), resource=resource)
    expect_error(response, 400, "invalid_target")  # RFC 8707 §2


def test_a_client_id_that_is_a_broken_url_is_an_unknown_client(oauth: OAuthService) -> None:
    response = token_request(oauth, client_id="https://[app.example.com/client")
    expect_error(response, 401, "invalid_client")


def test_an_unknown_grant_type_is_unsupported_grant_type(oauth: OAuthService) -> None:
    response = basic_token_request(oauth, oauth.secret_client(), grant_type="password")
    expect_error(response, 400, "unsupported_grant_type")


def test_a_request_without_grant_type_is_invalid_request(oauth: OAuthService) -> None:
    client = oauth.secret_client()
    response = oauth.http.post("/oauth/token", data={"scope": "read"}, auth=client.basic)
    expect_error(response, 400, "invalid_request")


def test_a_json_body_is_invalid_request(oauth: OAuthService) -> None:
    client = oauth.secret_client()
    response = oauth.http.post(
        "/oauth/token", json={"grant_type": "client_credentials"}, auth=client.basic
    )
    expect_error(response, 400, "invalid_request")  # RFC 6749 §4.4.2: form-urlencoded


@pytest.mark.parametrize("parameter", ["grant_type=client_credentials", "scope=read"])
def test_a_repeated_parameter_is_invalid_request(oauth: OAuthService, parameter: str) -> None:
    client = oauth.secret_client()
    response = oauth.http.post(
        "/oauth/token",
        content=f"grant_type=client_credentials&scope=read&{parameter}",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        auth=client.basic,
    )
    expect_error(response, 400, "invalid_request")  # RFC 6749 §3.2


def test_the_token_endpoint_takes_only_post(oauth: OAuthService) -> None:
    assert oauth.http.get("/oauth/token").status_code == 405


# ---------------------------------------------------------------- the client's agent


def test_a_suspended_agent_gets_unauthorized_client_and_its_token_turns_inactive(
    oauth: OAuthService,
) -> None:
    client = oauth.secret_client()
    token = access_token(oauth, client)
    assert oauth.introspect(token)["active"] is True

    oauth.set_agent_status(client.agent_id, "suspended")
    expect_error(basic_token_request(oauth, client), 400, "unauthorized_client")
    assert oauth.introspect(token) == {"active": False}


def test_a_deleted_agent_gets_unauthorized_client_and_its_token_turns_inactive(
    oauth: OAuthService,
) -> None:
    client = oauth.secret_client()
    token = access_token(oauth, client)
    oauth.store.delete("Agent", client.agent_id, expected_version=None, actor="admin")
    expect_error(basic_token_request(oauth, client), 400, "unauthorized_client")
    assert oauth.introspect(token) == {"active": False}


# ---------------------------------------------------------------- introspection (RFC 7662)


def test_introspection_of_a_valid_token_is_active_with_its_claims(oauth: OAuthService) -> None:
    client = oauth.secret_client(scope="read")
    token = access_token(oauth, client, resource=RESOURCE)
    claims = oauth.verifier().verify(token)

    body = oauth.introspect(token)
    assert body["active"] is True
    assert body["token_type"] == "Bearer"
    for name in ("iss", "sub", "aud", "client_id", "scope", "exp", "iat", "jti", "agent_id"):
        assert body[name] == claims[name], name
    assert body["scope"] == "read"
    assert body["aud"] == RESOURCE


def test_authlib_introspects_with_its_own_client_authentication(oauth: OAuthService) -> None:
    client = oauth.secret_client()
    token = access_token(oauth, client)
    with oauth.authlib(oauth.resource_server) as authlib:
        response = authlib.introspect_token(oauth.issuer + PATHS["introspection_endpoint"], token)
    assert response.status_code == 200
    assert response.json()["active"] is True


@pytest.mark.parametrize("garbage", ["garbage", "a.b.c", "eyJhbGciOiJub25lIn0.e30.", "x" * 2000])
def test_introspection_of_garbage_is_inactive_and_nothing_more(
    oauth: OAuthService, garbage: str
) -> None:
    assert oauth.introspect(garbage) == {"active": False}  # RFC 7662 §2.2


def test_introspection_of_a_token_signed_by_another_key_under_the_servers_kid_is_inactive(
    oauth: OAuthService,
) -> None:
    stranger = ClientKey.new()
    now = int(time.time())
    forged = stranger.sign(
        {
            "iss": oauth.issuer,
            "sub": "someone",
            "aud": oauth.issuer,
            "client_id": "someone",
            "iat": now,
            "exp": now + 300,
            "jti": "forged",
        },
        typ="at+jwt",
        kid=oauth.keys.signing_key().kid,
    )
    assert oauth.introspect(forged) == {"active": False}


def test_introspection_needs_client_authentication(oauth: OAuthService) -> None:
    token = access_token(oauth, oauth.secret_client())
    response = oauth.http.post("/oauth/introspect", data={"token": token})
    expect_error(response, 401, "invalid_client")
    assert "active" not in response.json()


def test_introspection_without_a_token_is_invalid_request(oauth: OAuthService) -> None:
    response = oauth.http.post("/oauth/introspect", data={}, auth=oauth.resource_server.basic)
    expect_error(response, 400, "invalid_request")


# ---------------------------------------------------------------- revocation (RFC 7009)


def test_revocation_by_the_owning_client_makes_the_token_inactive(oauth: OAuthService) -> None:
    client = oauth.secret_client()
    token = access_token(oauth, client)
    with oauth.authlib(client) as authlib:
        response = authlib.revoke_token(
            oauth.issuer + PATHS["revocation_endpoint"], token, token_type_hint="access_token"
        )
    assert response.status_code == 200
    assert oauth.introspect(token) == {"active": False}


def test_revocation_by_a_private_key_jwt_client_of_its_own_token(oauth: OAuthService) -> None:
    client = oauth.key_client()
    token = access_token(oauth, client)
    response = oauth.http.post(
        "/oauth/revoke",
        data={
            "token": token,
            "client_assertion_type": JWT_BEARER,
            "client_assertion": oauth.assertion(client),
        },
    )
    assert response.status_code == 200
    assert oauth.introspect(token) == {"active": False}


def test_revocation_by_another_client_leaves_the_token_active(oauth: OAuthService) -> None:
    owner, other = oauth.secret_client(), oauth.secret_client()
    token = access_token(oauth, owner)
    oauth.http.post("/oauth/revoke", data={"token": token}, auth=other.basic)
    assert oauth.introspect(token)["active"] is True


def test_revoking_garbage_is_200(oauth: OAuthService) -> None:
    client = oauth.secret_client()
    response = oauth.http.post("/oauth/revoke", data={"token": "garbage"}, auth=client.basic)
    assert response.status_code == 200  # RFC 7009 §2.2: invalid tokens are not an error
    assert response.content == b""


def test_revoking_twice_is_200_both_times(oauth: OAuthService) -> None:
    client = oauth.secret_client()
    token = access_token(oauth, client)
    for _ in range(2):
        response = oauth.http.post("/oauth/revoke", data={"token": token}, auth=client.basic)
        assert response.status_code == 200
    assert oauth.introspect(token) == {"active": False}


def test_revocation_needs_client_authentication(oauth: OAuthService) -> None:
    client = oauth.secret_client()
    token = access_token(oauth, client)
    response = oauth.http.post("/oauth/revoke", data={"token": token})
    expect_error(response, 401, "invalid_client")
    assert oauth.introspect(token)["active"] is True


# ---------------------------------------------------------------- attacks on private_key_jwt

Attack = Callable[[OAuthService, Registered, Registered], str]


def _alg_none(oauth: OAuthService, client: Registered, other: Registered) -> str:
    assert client.key is not None
    header = {"alg": "none", "typ": "JWT", "kid": client.key.kid}
    return compact(header, oauth.assertion_claims(client), lambda _: b"")


def _hs256_with_the_public_key(oauth: OAuthService, client: Registered, other: Registered) -> str:
    """The classic confusion: HMAC keyed with the client's public key, which anyone has."""
    assert client.key is not None
    pem = client.key.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = {"alg": "HS256", "typ": "JWT", "kid": client.key.kid}
    return compact(
        header,
        oauth.assertion_claims(client),
        lambda data: hmac.new(pem, data, hashlib.sha256).digest(),
    )


def _hs256_with_the_public_jwk(oauth: OAuthService, client: Registered, other: Registered) -> str:
    assert client.key is not None
    secret = json.dumps(client.key.public_jwk).encode()
    header = {"alg": "HS256", "typ": "JWT", "kid": client.key.kid}
    return compact(
        header,
        oauth.assertion_claims(client),
        lambda data: hmac.new(secret, data, hashlib.sha256).digest(),
    )


def _unknown_kid(oauth: OAuthService, client: Registered, other: Registered) -> str:
    assert client.key is not None
    return client.key.sign(oauth.assertion_claims(client), kid="no-such-kid")


def _expired(oauth: OAuthService, client: Registered, other: Registered) -> str:
    now = int(time.time())
    return oauth.assertion(client, iat=now - 200, exp=now - 100)  # beyond the 30 s leeway


def _not_yet_valid(oauth: OAuthService, client: Registered, other: Registered) -> str:
    return oauth.assertion(client, nbf=int(time.time()) + 120)


def _wrong_audience(oauth: OAuthService, client: Registered, other: Registered) -> str:
    return oauth.assertion(client, aud="https://other-issuer.example.com/oauth/token")


def _issuer_is_not_subject(oauth: OAuthService, client: Registered, other: Registered) -> str:
    return oauth.assertion(client, sub=other.client_id)


def _over_300_seconds(oauth: OAuthService, client: Registered, other: Registered) -> str:
    now = int(time.time())
    return oauth.assertion(client, iat=now, exp=now + 3600)


def _over_300_seconds_without_iat(
    oauth: OAuthService, client: Registered, other: Registered
) -> str:
    return oauth.assertion(client, iat=None, exp=int(time.time()) + 3600)


def _without_exp(oauth: OAuthService, client: Registered, other: Registered) -> str:
    return oauth.assertion(client, exp=None)


def _without_jti(oauth: OAuthService, client: Registered, other: Registered) -> str:
    return oauth.assertion(client, jti=None)


def _another_clients_key(oauth: OAuthService, client: Registered, other: Registered) -> str:
    """Signed by the other client's key, naming this client and this client's kid."""
    assert client.key is not None and other.key is not None
    return other.key.sign(oauth.assertion_claims(client), kid=client.key.kid)


def _another_clients_key_without_kid(
    oauth: OAuthService, client: Registered, other: Registered
) -> str:
    assert other.key is not None
    return other.key.sign(oauth.assertion_claims(client), kid=None)  # no kid in the header


def _tampered(oauth: OAuthService, client: Registered, other: Registered) -> str:
    """A valid assertion whose exp was pushed back after signing."""
    assert client.key is not None
    claims = oauth.assertion_claims(client)
    header, _, signature = client.key.sign(claims).split(".")
    later = b64url(json.dumps({**claims, "exp": claims["exp"] + 200}).encode())
    return f"{header}.{later}.{signature}"


ATTACKS: dict[str, Attack] = {
    "alg none": _alg_none,
    "HS256 keyed with the public key PEM": _hs256_with_the_public_key,
    "HS256 keyed with the public JWK": _hs256_with_the_public_jwk,
    "unknown kid": _unknown_kid,
    "expired": _expired,
    "nbf in the future": _not_yet_valid,
    "wrong aud": _wrong_audience,
    "iss is not sub": _issuer_is_not_subject,
    "lifetime over 300 s": _over_300_seconds,
    "lifetime over 300 s, no iat": _over_300_seconds_without_iat,
    "no exp": _without_exp,
    "no jti": _without_jti,
    "another client's key": _another_clients_key,
    "another client's key, no kid": _another_clients_key_without_kid,
    "tampered claims": _tampered,
}


@pytest.fixture
def victim(oauth: OAuthService) -> Registered:
    return oauth.key_client()


@pytest.fixture
def attacker(oauth: OAuthService) -> Registered:
    return oauth.key_client()


@pytest.mark.parametrize("attack", ATTACKS, ids=list(ATTACKS))
def test_a_bad_client_assertion_is_401_invalid_client_and_nothing_is_issued(
    oauth: OAuthService, victim: Registered, attacker: Registered, attack: str
) -> None:
    assertion = ATTACKS[attack](oauth, victim, attacker)
    expect_error(assertion_request(oauth, assertion), 401, "invalid_client")


def test_the_same_assertion_is_accepted_once_and_refused_when_replayed(
    oauth: OAuthService, victim: Registered
) -> None:
    assertion = oauth.assertion(victim)
    assert assertion_request(oauth, assertion).status_code == 200
    expect_error(assertion_request(oauth, assertion), 401, "invalid_client")


def test_a_fresh_assertion_with_a_used_jti_is_refused(
    oauth: OAuthService, victim: Registered
) -> None:
    assert assertion_request(oauth, oauth.assertion(victim, jti="once")).status_code == 200
    expect_error(
        assertion_request(oauth, oauth.assertion(victim, jti="once")), 401, "invalid_client"
    )


def test_the_issuer_is_an_accepted_assertion_audience(
    oauth: OAuthService, victim: Registered
) -> None:
    assertion = oauth.assertion(victim, aud=oauth.issuer)  # RFC 7523 §3 item 3
    assert assertion_request(oauth, assertion).status_code == 200


def test_an_assertion_for_one_client_with_another_client_id_is_refused(
    oauth: OAuthService, victim: Registered, attacker: Registered
) -> None:
    assertion = oauth.assertion(attacker)
    response = assertion_request(oauth, assertion, client_id=victim.client_id)
    expect_error(response, 401, "invalid_client")


def test_an_assertion_of_the_wrong_type_is_refused(oauth: OAuthService, victim: Registered) -> None:
    response = token_request(
        oauth,
        client_assertion_type="urn:ietf:params:oauth:client-assertion-type:saml2-bearer",
        client_assertion=oauth.assertion(victim),
    )
    expect_error(response, 401, "invalid_client")


def test_a_secret_client_cannot_authenticate_with_an_assertion(oauth: OAuthService) -> None:
    client = oauth.secret_client()
    pretending = replace(client, key=ClientKey.new())
    expect_error(assertion_request(oauth, oauth.assertion(pretending)), 401, "invalid_client")


def test_authlibs_default_one_hour_assertion_is_refused(
    oauth: OAuthService, victim: Registered
) -> None:
    assert victim.key is not None
    secret = joserfc_jwk.import_key(victim.key.private_jwk)
    auth = PrivateKeyJWT(oauth.token_endpoint, alg="ES256")  # exp = iat + 3600
    with oauth.authlib(victim) as authlib, pytest.raises(AuthlibError) as raised:
        authlib.fetch_token(
            oauth.token_endpoint,
            grant_type="client_credentials",
            auth=authlib.client_auth_class(victim.client_id, secret, auth),
        )
    assert raised.value.error == "invalid_client"


# ---------------------------------------------------------------- client secrets


def test_a_wrong_secret_with_basic_is_401_invalid_client_with_a_basic_challenge(
    oauth: OAuthService,
) -> None:
    client = oauth.secret_client("client_secret_basic")
    response = oauth.http.post(
        "/oauth/token",
        data={"grant_type": "client_credentials"},
        auth=(client.client_id, "wrong-secret"),
    )
    expect_error(response, 401, "invalid_client")
    assert response.headers["www-authenticate"].startswith("Basic ")  # RFC 6749 §5.2


def test_a_wrong_secret_with_post_is_401_invalid_client(oauth: OAuthService) -> None:
    client = oauth.secret_client("client_secret_post")
    response = token_request(oauth, client_id=client.client_id, client_secret="wrong-secret")
    expect_error(response, 401, "invalid_client")


def test_an_unknown_client_is_401_invalid_client(oauth: OAuthService) -> None:
    response = oauth.http.post(
        "/oauth/token",
        data={"grant_type": "client_credentials"},
        auth=("no-such-client", "whatever"),
    )
    expect_error(response, 401, "invalid_client")


def test_a_client_must_use_the_method_it_registered(oauth: OAuthService) -> None:
    client = oauth.secret_client("client_secret_basic")
    assert client.secret is not None
    response = token_request(oauth, client_id=client.client_id, client_secret=client.secret)
    expect_error(response, 401, "invalid_client")


def test_a_request_without_client_authentication_is_401_invalid_client(
    oauth: OAuthService,
) -> None:
    client = oauth.secret_client()
    expect_error(token_request(oauth, client_id=client.client_id), 401, "invalid_client")


def test_two_authentication_methods_at_once_are_invalid_request(oauth: OAuthService) -> None:
    client = oauth.secret_client("client_secret_basic")
    assert client.secret is not None
    response = oauth.http.post(
        "/oauth/token",
        data={
            "grant_type": "client_credentials",
            "client_id": client.client_id,
            "client_secret": client.secret,
        },
        auth=client.basic,
    )
    expect_error(response, 400, "invalid_request")  # RFC 6749 §2.3


def test_a_secret_and_an_assertion_at_once_are_invalid_request(
    oauth: OAuthService, victim: Registered
) -> None:
    client = oauth.secret_client("client_secret_basic")
    response = oauth.http.post(
        "/oauth/token",
        data={
            "grant_type": "client_credentials",
            "client_assertion_type": JWT_BEARER,
            "client_assertion": oauth.assertion(victim),
        },
        auth=client.basic,
    )
    expect_error(response, 400, "invalid_request")


def test_tesseras_own_scopes_are_refused_to_public_and_user_facing_clients(
    oauth: OAuthService,
) -> None:
    public = {
        "token_endpoint_auth_method": "none",
        "grant_types": ["authorization_code"],
        "redirect_uris": ["http://127.0.0.1:9999/cb"],
        "scope": "read tessera:admin",
    }
    opened = oauth.register(public, token=None)
    assert (opened.status_code, opened.json()["error"]) == (400, "invalid_client_metadata")
    by_admin = oauth.register(public)
    assert (by_admin.status_code, by_admin.json()["error"]) == (400, "invalid_client_metadata")
    agent_client = oauth.register(
        {
            "agent_id": oauth.add_agent(),
            "grant_types": ["client_credentials"],
            "scope": "tessera:admin",
        }
    )
    assert agent_client.status_code == 201, agent_client.text
