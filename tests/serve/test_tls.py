"""TLS and mutual TLS on the gRPC port, with certificates made for the test."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pdp.engine import Engine
from pdp.lang.values import Risk
from pdp.loader import load_directory
from pdp.serve.proto import authorizer_pb2 as pb
from pdp.serve.proto import authorizer_pb2_grpc as pb_grpc
from pep.client import Client, Credentials, Options, Query
from tests.servers import Server, tessera_serve

POLICIES = Path(__file__).resolve().parents[2] / "policies"


def _pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool = False,
    server: bool = False,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


class PKI:
    def __init__(self) -> None:
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        self.ca = _cert("test ca", self.ca_key, None, self.ca_key, ca=True)
        self.server_key = ec.generate_private_key(ec.SECP256R1())
        self.server = _cert("localhost", self.server_key, self.ca, self.ca_key, server=True)
        self.client_key = ec.generate_private_key(ec.SECP256R1())
        self.client = _cert("gateway", self.client_key, self.ca, self.ca_key)

    @staticmethod
    def pem(cert: x509.Certificate) -> bytes:
        return cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def pki() -> PKI:
    return PKI()


@pytest.fixture(scope="module")
def mtls_server(pki: PKI) -> Iterator[Server]:
    tls = (_pem(pki.server_key), PKI.pem(pki.server), PKI.pem(pki.ca))
    running = Server(Engine(load_directory(POLICIES).bundle), tls=tls)
    yield running
    running.close()


def ask(channel: grpc.Channel) -> pb.AuthorizeResponse:
    question = pb.AuthorizeRequest(
        agent=pb.Agent(
            id="helper",
            attributes={"status": pb.Value(string="active"), "risk": pb.Value(risk="low")},
        ),
        action="tool.call",
        resource=pb.Resource(type="tool", id="search"),
    )
    response: pb.AuthorizeResponse = pb_grpc.AuthorizerStub(channel).Authorize(question, timeout=5)
    return response


def test_a_client_with_a_certificate_from_the_ca_is_served(pki: PKI, mtls_server: Server) -> None:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=PKI.pem(pki.ca),
        private_key=_pem(pki.client_key),
        certificate_chain=PKI.pem(pki.client),
    )
    with grpc.secure_channel(f"localhost:{mtls_server.running.port}", credentials) as channel:
        assert ask(channel).allow


def test_a_client_without_a_certificate_is_refused(pki: PKI, mtls_server: Server) -> None:
    credentials = grpc.ssl_channel_credentials(root_certificates=PKI.pem(pki.ca))
    target = f"localhost:{mtls_server.running.port}"
    with (
        grpc.secure_channel(target, credentials) as channel,
        pytest.raises(grpc.RpcError) as caught,
    ):
        ask(channel)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_the_pep_client_is_answered_with_its_client_certificate_alone(
    pki: PKI, mtls_server: Server
) -> None:
    """Mutual TLS is the PEP's credential: no bearer token is asked for."""
    attributes = {"status": "active", "risk": Risk.low}
    query = Query(agent="helper", tool="search", agent_attributes=attributes)
    mtls = Credentials(
        root_certificates=PKI.pem(pki.ca),
        certificate_chain=PKI.pem(pki.client),
        private_key=_pem(pki.client_key),
        server_name="localhost",
    )
    target = f"127.0.0.1:{mtls_server.running.port}"
    with Client(target, Options(timeout=5), credentials=mtls) as client:
        verdict = client.authorize(query)
    assert verdict.allow and verdict.decided_by == ("agents.read_only",), verdict
    server_only = Credentials(root_certificates=PKI.pem(pki.ca), server_name="localhost")
    with Client(target, Options(timeout=5, attempts=1), credentials=server_only) as client:
        refused = client.authorize(query)
    assert not refused.allow and refused.error is not None
    assert refused.error.startswith("UNAVAILABLE"), refused.error


def test_a_client_certificate_needs_its_key() -> None:
    half = Credentials(certificate_chain=b"-----BEGIN CERTIFICATE-----")
    with pytest.raises(ValueError, match="both certificate_chain and private_key"):
        Client("127.0.0.1:1", credentials=half)


def test_plaintext_is_refused_on_a_tls_port(mtls_server: Server) -> None:
    target = f"127.0.0.1:{mtls_server.running.port}"
    with grpc.insecure_channel(target) as channel, pytest.raises(grpc.RpcError):
        ask(channel)


def test_with_tls_the_scim_service_is_served_over_https_only(pki: PKI, tmp_path: Path) -> None:
    import re
    import ssl

    import httpx

    (tmp_path / "server.pem").write_bytes(PKI.pem(pki.server))
    (tmp_path / "server.key").write_bytes(_pem(pki.server_key))
    with tessera_serve(
        *("--policies", str(POLICIES), "--metrics-port", "-1"),
        *("--port", "0", "--http-port", "0", "--store", f"sqlite:///{tmp_path}/t.db"),
        *("--tls-cert", str(tmp_path / "server.pem"), "--tls-key", str(tmp_path / "server.key")),
        *("--admin-token", "tls-test-token-0123456789", "--grace", "1"),
        lines=2,
    ) as (_, lines):
        found = re.search(r"SCIM 2\.0 at https://127\.0\.0\.1:(\d+)/scim/v2", lines[1])
        assert found, lines
        port = found.group(1)
        trust = ssl.create_default_context(cadata=PKI.pem(pki.ca).decode())
        headers = {"Authorization": "Bearer tls-test-token-0123456789"}
        url = f"https://localhost:{port}/scim/v2/ServiceProviderConfig"
        assert httpx.get(url, headers=headers, verify=trust, timeout=10).status_code == 200
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/scim/v2/ServiceProviderConfig", timeout=10)
