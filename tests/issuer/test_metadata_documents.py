"""Client ID Metadata Documents: a client that is a URL, fetched from a server on loopback."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from issuer.oauth.errors import OAuthError
from issuer.oauth.fetch import DEVELOPMENT
from issuer.oauth.metadata_documents import MAX_BYTES, MetadataDocuments
from tests.issuer.oauth_server import OAuthService, oauth_service

CHALLENGE = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"  # RFC 7636 Appendix B


class Documents:
    """A web server on 127.0.0.1 serving JSON documents by path."""

    def __init__(self) -> None:
        self.pages: dict[str, tuple[int, bytes]] = {}
        self.asked: list[str] = []  # the paths asked for, in order
        pages, asked = self.pages, self.asked

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                asked.append(self.path)
                status, body = pages.get(self.path, (404, b"{}"))
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def publish(self, path: str, document: Any, status: int = 200) -> str:
        body = document if isinstance(document, bytes) else json.dumps(document).encode()
        self.pages[path] = (status, body)
        return self.base + path

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def documents() -> Iterator[Documents]:
    served = Documents()
    yield served
    served.close()


@pytest.fixture(scope="module")
def oauth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OAuthService]:
    with oauth_service("sqlite", tmp_path_factory.mktemp("cimd")) as service:
        yield service


def document(url: str, **fields: Any) -> dict[str, Any]:
    return {
        "client_id": url,
        "client_name": "Desk assistant",
        "redirect_uris": ["http://127.0.0.1:7777/callback"],
        "token_endpoint_auth_method": "none",
        "scope": "read",
        **fields,
    }


def test_a_client_described_by_its_document_is_a_public_client(documents: Documents) -> None:
    url = documents.base + "/apps/desk.json"
    documents.publish("/apps/desk.json", document(url))
    client = MetadataDocuments(DEVELOPMENT).client(url)
    assert (client.client_id, client.auth_method, client.name) == (url, "none", "Desk assistant")
    assert client.redirect_uris == ("http://127.0.0.1:7777/callback",)
    assert client.scopes == frozenset({"read"})


@pytest.mark.parametrize(
    ("fields", "status", "message"),
    [
        ({"client_id": "https://elsewhere.example/app"}, 200, "client_id is not its own URL"),
        ({"token_endpoint_auth_method": "client_secret_basic"}, 200, "is public"),
        ({"redirect_uris": ["http://evil.example/cb"]}, 200, "http only on a loopback host"),
        ({}, 404, "answered 404"),
    ],
)
def test_a_document_that_does_not_describe_a_safe_public_client_is_refused(
    documents: Documents, fields: dict[str, Any], status: int, message: str
) -> None:
    path = f"/bad/{abs(hash((str(fields), status)))}.json"
    url = documents.base + path
    documents.publish(path, document(url, **fields), status)
    with pytest.raises(OAuthError, match=message):
        MetadataDocuments(DEVELOPMENT).client(url)


def test_a_document_over_the_size_limit_is_refused(documents: Documents) -> None:
    url = documents.publish("/huge.json", b"{" + b" " * (MAX_BYTES + 1) + b"}")
    with pytest.raises(OAuthError, match="exceeds"):
        MetadataDocuments(DEVELOPMENT).client(url)


def test_a_document_nested_too_deeply_is_refused(documents: Documents) -> None:
    url = documents.publish("/deep.json", b"[" * 2000 + b"]" * 2000)  # within 5 KiB
    with pytest.raises(OAuthError, match="is not JSON"):
        MetadataDocuments(DEVELOPMENT).client(url)


def test_the_authorization_endpoint_accepts_a_url_client_and_refuses_a_broken_one(
    oauth: OAuthService, documents: Documents
) -> None:
    url = documents.base + "/apps/flow.json"
    documents.publish("/apps/flow.json", document(url))
    query = {
        "response_type": "code",
        "client_id": url,
        "redirect_uri": "http://127.0.0.1:7777/callback",
        "code_challenge": CHALLENGE,
        "code_challenge_method": "S256",
        "scope": "read",
    }
    accepted = oauth.http.get("/oauth/authorize", params=query)
    assert accepted.status_code == 303
    assert accepted.headers["location"].startswith("/oauth/consent?request=")
    documents.publish("/apps/flow.json", document("https://someone.else/app"))
    broken = oauth.http.get("/oauth/authorize", params={**query, "client_id": url + "?v=2"})
    assert broken.status_code == 400
    assert "Unknown client" in broken.text


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1/app.json",
        "https://10.1.2.3/app.json",
        "https://169.254.169.254/latest/meta-data",
        "http://169.254.169.254/latest/meta-data",
        "https://[::1]/app.json",
    ],
)
def test_a_document_in_a_private_network_is_never_fetched(url: str) -> None:
    with pytest.raises(OAuthError, match=r"not a public address|only https"):
        MetadataDocuments(DEVELOPMENT).client(url)


def test_an_issuer_not_on_plain_http_loopback_calls_no_loopback_url(
    documents: Documents, tmp_path: Path
) -> None:
    """Plain http to loopback is for a development issuer, itself there. Elsewhere (here an
    issuer named by https, as behind a TLS-terminating proxy) a client's URL cannot make
    it call a service on its own host: not as a metadata document, not as a jwks_uri."""
    url = documents.publish("/apps/local.json", document(documents.base + "/apps/local.json"))
    keys = documents.publish("/keys/local.json", {"keys": []})
    asked = len(documents.asked)
    with oauth_service("sqlite", tmp_path, issuer="https://issuer.example") as production:
        query = {"client_id": url, "response_type": "code", "code_challenge": CHALLENGE}
        page = production.http.get("/oauth/authorize", params=query)
        assert (page.status_code, "Unknown client" in page.text) == (400, True)
        body = {
            "agent_id": production.add_agent(),
            "grant_types": ["client_credentials"],
            "token_endpoint_auth_method": "private_key_jwt",
            "jwks_uri": keys,
        }
        refused = production.register(body)
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"] == "invalid_client_metadata"
        assert "must use https" in refused.json()["error_description"]
    assert documents.asked[asked:] == []
