"""Mutual-TLS client authentication and certificate-bound tokens (RFC 8705), over a real
HTTPS server asking for client certificates, and behind a proxy through a header."""

from __future__ import annotations

import datetime
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from issuer.keys import public_jwk
from issuer.oauth.mtls import check_binding, confirmation
from issuer.oauth.tokens import InvalidToken
from tests.issuer.oauth_server import OAuthService, oauth_service
from tests.serve.test_tls import PKI, _pem

HEADER = "x-client-cert"


def self_signed(name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .sign(key, hashes.SHA256())
    )
    return cert, key


@pytest.fixture(scope="module")
def pki() -> PKI:
    return PKI()


@pytest.fixture(scope="module")
def files(pki: PKI, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test PKI as PEM files."""
    files = tmp_path_factory.mktemp("pki")
    for name, data in {
        "server.pem": PKI.pem(pki.server),
        "server.key": _pem(pki.server_key),
        "ca.pem": PKI.pem(pki.ca),
        "client.pem": PKI.pem(pki.client),
        "client.key": _pem(pki.client_key),
    }.items():
        (files / name).write_bytes(data)
    return files


@pytest.fixture(scope="module")
def direct(files: Path) -> Iterator[OAuthService]:
    """HTTPS asking for a client certificate from the test CA; the test client sends the
    CA-issued "gateway" certificate."""
    trust = ssl.create_default_context(cafile=str(files / "ca.pem"))
    trust.load_cert_chain(str(files / "client.pem"), str(files / "client.key"))
    with oauth_service(
        "sqlite",
        files,
        http_options={"verify": trust},
        tls=(str(files / "server.pem"), str(files / "server.key")),
        client_ca=str(files / "ca.pem"),
    ) as service:
        yield service


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OAuthService]:
    """Plain HTTP behind a (pretend) TLS-terminating proxy that forwards the certificate."""
    with oauth_service(
        "sqlite", tmp_path_factory.mktemp("proxied"), client_cert_header=HEADER
    ) as service:
        yield service


def register(service: OAuthService, **metadata: Any) -> str:
    body = {
        "agent_id": service.add_agent(),
        "grant_types": ["client_credentials"],
        "scope": "read",
        **metadata,
    }
    response = service.register(body)
    assert response.status_code == 201, response.text
    client_id: str = response.json()["client_id"]
    return client_id


def token(service: OAuthService, client_id: str, **request: Any) -> httpx.Response:
    data = {"grant_type": "client_credentials", "client_id": client_id}
    return service.http.post("/oauth/token", data=data, **request)


def test_a_ca_issued_certificate_with_the_registered_subject_gets_a_bound_token(
    direct: OAuthService, pki: PKI
) -> None:
    client_id = register(
        direct,
        token_endpoint_auth_method="tls_client_auth",
        tls_client_auth_subject_dn="CN=gateway",
    )
    response = token(direct, client_id)
    assert response.status_code == 200, response.text
    claims = direct.verifier().verify(response.json()["access_token"])
    assert claims["cnf"] == {"x5t#S256": confirmation(pki.client)}
    check_binding(claims, pki.client)


def test_a_certificate_with_another_subject_is_invalid_client(direct: OAuthService) -> None:
    client_id = register(
        direct, token_endpoint_auth_method="tls_client_auth", tls_client_auth_subject_dn="CN=other"
    )
    response = token(direct, client_id)
    assert (response.status_code, response.json()["error"]) == (401, "invalid_client")


def test_without_a_certificate_a_mutual_tls_client_is_invalid_client(
    direct: OAuthService, files: Path
) -> None:
    client_id = register(
        direct,
        token_endpoint_auth_method="tls_client_auth",
        tls_client_auth_subject_dn="CN=gateway",
    )
    bare = ssl.create_default_context(cafile=str(files / "ca.pem"))  # no client certificate
    with httpx.Client(base_url=direct.issuer, verify=bare, timeout=10) as anonymous:
        response = anonymous.post(
            "/oauth/token", data={"grant_type": "client_credentials", "client_id": client_id}
        )
    assert (response.status_code, response.json()["error"]) == (401, "invalid_client")


def test_a_self_signed_certificate_matching_a_registered_key_authenticates_via_the_proxy(
    proxied: OAuthService,
) -> None:
    cert, key = self_signed("bot")
    jwk = {**public_jwk(key.public_key()), "kid": "k1", "alg": "ES256"}
    client_id = register(
        proxied, token_endpoint_auth_method="self_signed_tls_client_auth", jwks={"keys": [jwk]}
    )
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    response = token(proxied, client_id, headers={HEADER: quote(pem)})
    assert response.status_code == 200, response.text
    claims = proxied.verifier().verify(response.json()["access_token"])
    assert claims["cnf"]["x5t#S256"] == confirmation(cert)

    other, _ = self_signed("bot")
    refused = token(
        proxied,
        client_id,
        headers={HEADER: quote(other.public_bytes(serialization.Encoding.PEM).decode())},
    )
    assert (refused.status_code, refused.json()["error"]) == (401, "invalid_client")
    assert token(proxied, client_id).json()["error"] == "invalid_client"  # no certificate


def test_the_proxy_is_the_peer_whatever_x_forwarded_for_says(proxied: OAuthService) -> None:
    """A TLS-terminating proxy names its own client in X-Forwarded-For; the certificate it
    forwards is still believed, since the proxy (a trusted one) is the peer."""
    cert, key = self_signed("bot")
    jwk = {**public_jwk(key.public_key()), "kid": "k1", "alg": "ES256"}
    client_id = register(
        proxied, token_endpoint_auth_method="self_signed_tls_client_auth", jwks={"keys": [jwk]}
    )
    pem = quote(cert.public_bytes(serialization.Encoding.PEM).decode())
    forwarded = {HEADER: pem, "X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"}
    response = token(proxied, client_id, headers=forwarded)
    assert response.status_code == 200, response.text


def test_a_bound_token_is_refused_with_another_certificate_or_none() -> None:
    mine, _ = self_signed("mine")
    theirs, _ = self_signed("theirs")
    claims = {"cnf": {"x5t#S256": confirmation(mine)}}
    check_binding(claims, mine)
    with pytest.raises(InvalidToken, match="bound to another client certificate"):
        check_binding(claims, theirs)
    with pytest.raises(InvalidToken):
        check_binding(claims, None)
    check_binding({"sub": "unbound"}, None)  # a token without cnf is not bound


def test_registration_of_mutual_tls_clients_checks_its_metadata(proxied: OAuthService) -> None:
    missing = proxied.register(
        {
            "agent_id": proxied.add_agent(),
            "grant_types": ["client_credentials"],
            "token_endpoint_auth_method": "tls_client_auth",
        }
    )
    assert missing.json()["error"] == "invalid_client_metadata"
    malformed = proxied.register(
        {
            "agent_id": proxied.add_agent(),
            "grant_types": ["client_credentials"],
            "token_endpoint_auth_method": "tls_client_auth",
            "tls_client_auth_subject_dn": "not a DN",
        }
    )
    assert malformed.json()["error"] == "invalid_client_metadata"


def test_the_certificate_header_is_ignored_from_a_peer_that_is_not_a_trusted_proxy(
    tmp_path: Path,
) -> None:
    with oauth_service(
        "sqlite", tmp_path, client_cert_header=HEADER, client_cert_proxies=frozenset({"10.9.9.9"})
    ) as direct_to_port:
        cert, key = self_signed("bot")
        jwk = {**public_jwk(key.public_key()), "kid": "k1", "alg": "ES256"}
        client_id = register(
            direct_to_port,
            token_endpoint_auth_method="self_signed_tls_client_auth",
            jwks={"keys": [jwk]},
        )
        pem = cert.public_bytes(serialization.Encoding.PEM).decode()
        forged = token(direct_to_port, client_id, headers={HEADER: quote(pem)})
        assert (forged.status_code, forged.json()["error"]) == (401, "invalid_client")
        # nor does a peer become a trusted proxy by naming one in X-Forwarded-For
        posing = {HEADER: quote(pem), "X-Forwarded-For": "10.9.9.9"}
        forged = token(direct_to_port, client_id, headers=posing)
        assert (forged.status_code, forged.json()["error"]) == (401, "invalid_client")


def test_a_bound_token_handed_to_a_token_exchange_without_its_certificate_is_invalid_request(
    proxied: OAuthService,
) -> None:
    cert, key = self_signed("bot")
    jwk = {**public_jwk(key.public_key()), "kid": "k1", "alg": "ES256"}
    agent = proxied.add_agent()
    exchange_grant = "urn:ietf:params:oauth:grant-type:token-exchange"
    mtls_client = register(
        proxied,
        agent_id=agent,
        token_endpoint_auth_method="self_signed_tls_client_auth",
        jwks={"keys": [jwk]},
    )
    pem = quote(cert.public_bytes(serialization.Encoding.PEM).decode())
    bound = token(proxied, mtls_client, headers={HEADER: pem}).json()["access_token"]
    other = proxied.register(
        {"agent_id": agent, "grant_types": [exchange_grant], "scope": "read"}
    ).json()
    access = "urn:ietf:params:oauth:token-type:access_token"
    stolen = proxied.http.post(
        "/oauth/token",
        data={
            "grant_type": exchange_grant,
            "subject_token": bound,
            "subject_token_type": access,
            "actor_token": bound,
            "actor_token_type": access,
        },
        auth=(other["client_id"], other["client_secret"]),
    )
    assert (stolen.status_code, stolen.json()["error"]) == (400, "invalid_request")
    assert "bound to another certificate" in stolen.json()["error_description"]
