"""Envoy ext_authz ``Check`` on the decision service, asked by a client built from Envoy's
own stubs: tokens from the issuer's key ring, agents from the directory, on both stores."""

from __future__ import annotations

import asyncio
import json
import time
import tomllib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from envoy.config.core.v3 import base_pb2 as core
from envoy.service.auth.v3 import external_auth_pb2 as auth
from envoy.service.auth.v3 import external_auth_pb2_grpc as auth_grpc
from envoy.service.auth.v3.attribute_context_pb2 import AttributeContext
from google.rpc import code_pb2

from issuer.jws import b64decode
from issuer.keys import KeyRing
from issuer.models import REVOKED
from issuer.oauth.mtls import confirmation
from issuer.oauth.tokens import TokenMinter
from issuer.store import Store
from issuer.verify import Caller, Reason, Refusal
from pdp.audit.query import entries
from pdp.audit.writer import AuditWriter
from pdp.directory import Directory
from pdp.doors.ext_authz import (
    AGENT_HEADER,
    DECISION_HEADER,
    USER_HEADER,
    RouteError,
    gateway_for,
    parse_route,
    parse_routes,
    route,
)
from pdp.doors.grpc import PROTOBUF_DEPTH
from pdp.engine import Bundle, Engine
from pdp.loader import load_texts
from pdp.serve.config import ConfigError, load_config
from pdp.serve.proto import authorizer_pb2 as pb
from pdp.serve.proto import authorizer_pb2_grpc as pb_grpc
from tests.conftest import SHIPPED_POLICIES, bundle_of
from tests.protobuf import entry, field, nested_struct, number
from tests.servers import Server
from tests.test_directory import add_agent, add_user, set_agent

ISSUER = "http://127.0.0.1:8080"
API = "https://api.example.com"
ROUTES = """
# the API behind the gateway
GET,HEAD /orders/{id}    db.read    order:{id}
POST     /tools/{name}   tool.call  tool:{name}
GET      /users/{userId} user.read  route:/users/{{userId}}
"""
GATEWAY_POLICIES = """
package gateway

permit public_pages
  action "http.GET" on http like "/public/*"

permit order_reads
  action "db.read" on order
  when agent.risk < high

permit user_reads
  action "user.read" on route "/users/{userId}"
  when agent.risk < high

permit bound_key_calls
  action "tool.call" on tool "rotate-keys"
  require step_up("urn:tessera:acr:key+mtls")

permit purges_after_a_strong_login
  action "tool.call" on tool "purge"
  require step_up("mfa")

permit wipes_after_a_strong_login
  action "tool.call" on tool "wipe"
  require step_up("mfa")

permit wipes_with_a_bound_key
  action "tool.call" on tool "wipe"
  require step_up("urn:tessera:acr:key+mtls")
"""
OVERWRITE = core.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD


def policies() -> Bundle:
    """The shipped policies plus a gateway package."""
    texts = {
        path.name: path.read_text()
        for path in SHIPPED_POLICIES.glob("*.pol")
        if not path.name.endswith("_test.pol")
    }
    return load_texts({**texts, "gateway.pol": GATEWAY_POLICIES}).bundle


class Gateway:
    """The decision service with ext_authz over a store: its directory, key ring, an
    audit trail answered only once committed, and a minter for the issuer's tokens."""

    def __init__(self, store: Store, audience: str = API, strip: str = "authorization") -> None:
        self.store = store
        self.directory = Directory(store)
        self.directory.load()
        self.keys = KeyRing(store, "ES256")
        self.minter = TokenMinter(self.keys, ISSUER)
        self.writer = AuditWriter(store, 1_000, 0.0)
        gateway = gateway_for(store, self.keys, ISSUER, audience, ROUTES, strip)
        self.server = Server(
            Engine(policies()),
            directory=self.directory,
            audit=self.writer,
            durability="sync",
            gateway=gateway,
        )
        self.check_stub = auth_grpc.AuthorizationStub(self.server.channel)
        self.authorize_stub = pb_grpc.AuthorizerStub(self.server.channel)

    def close(self) -> None:
        self.server.close()
        self.writer.close(10)

    def agent(self, name: str, **extension: Any) -> str:
        id = add_agent(self.store, name, **extension)
        self.directory.refresh()
        return id

    def token(self, agent: str, **claims: Any) -> str:
        """An access token as the issuer mints it for an agent acting alone."""
        subject = claims.pop("sub", agent)
        audience = claims.pop("aud", [API])
        extra = {"agent_id": agent, "agent_type": "background", **claims}
        return self.minter.mint(
            subject=subject, client_id="gateway-test", audience=audience, scope=[], extra=extra
        ).token

    def check(self, request: auth.CheckRequest) -> auth.CheckResponse:
        response: auth.CheckResponse = self.check_stub.Check(request, timeout=5)
        return response


@pytest.fixture
def gateway(store: Store) -> Iterator[Gateway]:
    running = Gateway(store)
    yield running
    running.close()


def http_request(
    method: str,
    path: str,
    token: str | None = None,
    *,
    certificate: str = "",
    client: str = "10.1.2.3",
) -> auth.CheckRequest:
    """What Envoy's ext_authz filter sends for one HTTP request."""
    headers = {":method": method, ":path": path, "x-request-id": "r-1"}
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    request = auth.CheckRequest()
    source = request.attributes.source
    source.address.socket_address.address = client
    source.address.socket_address.port_value = 40_000
    source.certificate = certificate
    http = request.attributes.request.http
    http.method, http.path, http.host = method, path, "api.example.com"
    http.headers.update(headers)
    return request


def header_values(options: Any) -> dict[str, str]:
    assert all(option.append_action == OVERWRITE for option in options)
    return {option.header.key: option.header.value for option in options}


def denied_body(response: auth.CheckResponse) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(response.denied_response.body)
    return body


# ------------------------------------------------------------------ allowed


def test_an_allowed_request_goes_upstream_with_the_decision_id_and_the_agent(
    gateway: Gateway,
) -> None:
    agent = gateway.agent("reader")
    response = gateway.check(http_request("GET", "/orders/42?expand=lines", gateway.token(agent)))
    assert response.status.code == code_pb2.OK
    assert response.WhichOneof("http_response") == "ok_response"
    headers = header_values(response.ok_response.headers)
    assert headers[AGENT_HEADER] == agent
    assert len(headers[DECISION_HEADER]) == 32
    assert USER_HEADER not in headers
    # the token and any x-tessera-user-id the client made up stay away from the upstream
    assert list(response.ok_response.headers_to_remove) == ["authorization", USER_HEADER]


def test_headers_sent_as_a_header_map_are_read_too(gateway: Gateway) -> None:
    agent = gateway.agent("reader")
    request = http_request("GET", "/orders/42")
    raw = request.attributes.request.http.header_map.headers.add()
    raw.key, raw.raw_value = "Authorization", f"Bearer {gateway.token(agent)}".encode()
    assert gateway.check(request).status.code == code_pb2.OK


def test_check_is_recorded_on_the_audit_trail_under_its_decision_id(gateway: Gateway) -> None:
    agent = gateway.agent("reader")
    response = gateway.check(http_request("HEAD", "/orders/7", gateway.token(agent)))
    decision_id = header_values(response.ok_response.headers)[DECISION_HEADER]
    records = [json.loads(entry.record) for entry in entries(gateway.store, "agent")]
    (record,) = [r for r in records if r.get("decision_id") == decision_id]
    assert record["agent"] == agent
    assert record["action"] == "db.read"
    assert record["resource"] == {"type": "order", "id": "7"}
    assert record["context"] == {"ip": "10.1.2.3"}
    assert record["allow"] is True
    assert record["decided_by"] == ["gateway.order_reads"]


def test_check_decides_as_authorize_decides_the_same_request(gateway: Gateway) -> None:
    agent = gateway.agent("reader")
    token = gateway.token(agent)
    for tool, allowed in (("search", True), ("payments.transfer", False)):
        check = gateway.check(http_request("POST", f"/tools/{tool}", token))
        same = pb.AuthorizeRequest(
            agent=pb.Agent(id=agent),
            action="tool.call",
            resource=pb.Resource(type="tool", id=tool),
            context={"ip": pb.Value(ip="10.1.2.3")},
        )
        authorized = gateway.authorize_stub.Authorize(same, timeout=5)
        assert authorized.allow is allowed
        assert (check.status.code == code_pb2.OK) is allowed


def test_a_path_no_route_matches_is_an_http_action_on_the_path(gateway: Gateway) -> None:
    token = gateway.token(gateway.agent("reader"))
    assert gateway.check(http_request("GET", "/public/about", token)).status.code == code_pb2.OK
    refused = gateway.check(http_request("POST", "/public/about", token))
    assert refused.denied_response.status.code == 403
    assert gateway.check(http_request("GET", "/private/x", token)).status.code != code_pb2.OK


@pytest.mark.parametrize(
    "path",
    [
        "/public/..%2Fadmin",
        "/public/%2E%2E/admin",
        "/public/../admin",
        "/public/./about",
        "/orders/1%5C..%5Cadmin",
        "/orders/a%2Fb",
    ],
)
def test_a_path_with_dot_segments_or_hidden_separators_is_refused(
    gateway: Gateway, path: str
) -> None:
    """Policy globs match across "/": such a path could be decided as one resource and
    served as another by an upstream that decodes and resolves it."""
    token = gateway.token(gateway.agent("reader"))
    response = gateway.check(http_request("GET", path, token))
    assert response.status.code == code_pb2.INVALID_ARGUMENT
    assert response.denied_response.status.code == 400
    assert denied_body(response)["error"] == "invalid_request"


def with_metadata(request: auth.CheckRequest, lists: int) -> bytes:
    """``request`` as Envoy sends it with filter metadata: a ``Struct`` holding a value in
    ``lists`` lists (written by hand: protobuf builds none deeper than it parses)."""
    metadata = entry(
        number(core.Metadata.DESCRIPTOR, "filter_metadata"), "lua", nested_struct(lists)
    )
    attributes = request.attributes.SerializeToString() + field(
        number(AttributeContext.DESCRIPTOR, "metadata_context"), metadata
    )
    return field(number(auth.CheckRequest.DESCRIPTOR, "attributes"), attributes)


def test_metadata_nested_deeper_than_protobuf_parses_is_invalid_argument(
    gateway: Gateway,
) -> None:
    request = http_request("GET", "/orders/7", gateway.token(gateway.agent("reader")))
    check = gateway.server.channel.unary_unary("/envoy.service.auth.v3.Authorization/Check")
    with pytest.raises(grpc.RpcError) as caught:
        check(with_metadata(request, 60), timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == (
        f"the request nests deeper than protobuf's limit of {PROTOBUF_DEPTH} levels"
    )
    answer = auth.CheckResponse.FromString(check(with_metadata(request, 3), timeout=5))
    assert answer.HasField("ok_response")


def test_an_encoded_character_that_is_not_a_separator_is_decided(gateway: Gateway) -> None:
    token = gateway.token(gateway.agent("reader"))
    response = gateway.check(http_request("GET", "/public/a%20b", token))
    assert response.status.code == code_pb2.OK


def test_a_delegated_token_names_the_user_and_the_chain(gateway: Gateway) -> None:
    agent = gateway.agent("mailer", scopes=["mail:send"])
    user = add_user(gateway.store, "bjensen")
    gateway.directory.refresh()
    delegated = gateway.token(agent, sub=user, act={"sub": agent})
    response = gateway.check(http_request("POST", "/tools/mail.send", delegated))
    assert response.status.code == code_pb2.OK
    headers = header_values(response.ok_response.headers)
    assert (headers[AGENT_HEADER], headers[USER_HEADER]) == (agent, user)
    assert list(response.ok_response.headers_to_remove) == ["authorization"]
    # acting alone, the same agent may not send mail (send_mail_for_user needs a user)
    alone = gateway.check(http_request("POST", "/tools/mail.send", gateway.token(agent)))
    assert alone.denied_response.status.code == 403


def test_the_authorization_header_is_kept_when_configured_so(store: Store) -> None:
    running = Gateway(store, strip="")
    try:
        token = running.token(running.agent("reader"))
        response = running.check(http_request("GET", "/orders/1", token))
        assert list(response.ok_response.headers_to_remove) == [USER_HEADER]
    finally:
        running.close()


# ------------------------------------------------------------------ denied


def test_a_denied_request_gets_403_with_a_json_body_and_its_decision_id(
    gateway: Gateway,
) -> None:
    risky = gateway.agent("risky", riskLevel="high")
    response = gateway.check(http_request("GET", "/orders/42", gateway.token(risky)))
    assert response.status.code == code_pb2.PERMISSION_DENIED
    denied = response.denied_response
    assert denied.status.code == 403
    headers = header_values(denied.headers)
    assert headers["content-type"] == "application/json"
    body = denied_body(response)
    assert body == {
        "error": "access_denied",
        "decision_id": headers[DECISION_HEADER],
        "obligations": [],
    }


def test_a_deny_awaiting_only_a_step_up_is_401_with_the_rfc_9470_challenge(
    gateway: Gateway,
) -> None:
    agent = gateway.agent("rotator")
    weak = gateway.token(agent, acr="urn:tessera:acr:key")
    response = gateway.check(http_request("POST", "/tools/rotate-keys", weak))
    assert response.status.code == code_pb2.UNAUTHENTICATED
    denied = response.denied_response
    assert denied.status.code == 401
    headers = header_values(denied.headers)
    assert headers["www-authenticate"] == (
        'Bearer error="insufficient_user_authentication", '
        'error_description="a stronger authentication is required", '
        'acr_values="urn:tessera:acr:key+mtls"'
    )
    body = denied_body(response)
    assert body["obligations"] == [{"kind": "step_up", "value": "urn:tessera:acr:key+mtls"}]
    assert body["decision_id"] == headers[DECISION_HEADER]
    for acr in ("urn:tessera:acr:key+mtls", "urn:tessera:acr:key+mtls+human"):
        strong = gateway.token(agent, acr=acr)
        allowed = gateway.check(http_request("POST", "/tools/rotate-keys", strong))
        assert allowed.status.code == code_pb2.OK, acr


def test_a_challenge_names_only_levels_a_token_can_be_got_at(gateway: Gateway) -> None:
    weak = gateway.token(gateway.agent("purger"), acr="urn:tessera:acr:key")
    purge = gateway.check(http_request("POST", "/tools/purge", weak))
    assert purge.denied_response.status.code == 403  # no token the client can get passes
    assert "www-authenticate" not in header_values(purge.denied_response.headers)
    assert denied_body(purge)["obligations"] == [{"kind": "step_up", "value": "mfa"}]

    wipe = gateway.check(http_request("POST", "/tools/wipe", weak))
    assert wipe.denied_response.status.code == 401
    challenge = header_values(wipe.denied_response.headers)["www-authenticate"]
    assert challenge.endswith('acr_values="urn:tessera:acr:key+mtls"'), challenge
    assert len(denied_body(wipe)["obligations"]) == 2  # the body still names both


def test_a_suspended_agent_is_refused_by_the_directory(gateway: Gateway) -> None:
    agent = gateway.agent("reader")
    token = gateway.token(agent)
    assert gateway.check(http_request("GET", "/orders/1", token)).status.code == code_pb2.OK
    set_agent(gateway.store, agent, "reader", status="suspended")
    gateway.directory.refresh()
    response = gateway.check(http_request("GET", "/orders/1", token))
    assert response.denied_response.status.code == 403
    decision_id = denied_body(response)["decision_id"]
    records = [json.loads(entry.record) for entry in entries(gateway.store, "agent")]
    (record,) = [r for r in records if r.get("decision_id") == decision_id]
    assert record["reasons"] == [f"agent {agent!r} is suspended"]


def test_a_request_the_schema_cannot_type_is_denied(store: Store) -> None:
    directory = Directory(store)
    keys = KeyRing(store, "ES256")
    odd = bundle_of('permit pages\n  action "http.GET"', schema="schema { context { ip: number } }")
    server = Server(Engine(odd), directory=directory, gateway=gateway_for(store, keys, ISSUER))
    try:
        agent = add_agent(store, "reader")
        directory.load()
        token = (
            TokenMinter(keys, ISSUER)
            .mint(
                subject=agent, client_id="c", audience=[ISSUER], scope=[], extra={"agent_id": agent}
            )
            .token
        )
        stub = auth_grpc.AuthorizationStub(server.channel)
        response = stub.Check(http_request("GET", "/x", token), timeout=5)
        assert response.status.code == code_pb2.PERMISSION_DENIED
        assert response.denied_response.status.code == 403
        assert "context.ip" in denied_body(response)["error_description"]
    finally:
        server.close()


def test_without_a_bearer_token_the_answer_is_401_with_a_challenge(gateway: Gateway) -> None:
    for request in (
        http_request("GET", "/orders/1"),
        http_request("GET", "/orders/1", ""),  # "Bearer " and nothing
    ):
        response = gateway.check(request)
        assert response.status.code == code_pb2.UNAUTHENTICATED
        denied = response.denied_response
        assert denied.status.code == 401
        assert header_values(denied.headers)["www-authenticate"] == "Bearer"
        assert denied_body(response)["error"] == "unauthorized"


def refused(gateway: Gateway, token: str, **options: Any) -> dict[str, Any]:
    response = gateway.check(http_request("GET", "/orders/1", token, **options))
    assert response.status.code == code_pb2.UNAUTHENTICATED
    assert response.denied_response.status.code == 401
    challenge = header_values(response.denied_response.headers)["www-authenticate"]
    assert challenge == 'Bearer error="invalid_token"'
    return denied_body(response)


def test_a_token_that_is_not_acceptable_is_refused_with_invalid_token(gateway: Gateway) -> None:
    agent = gateway.agent("reader")
    other_issuer = TokenMinter(gateway.keys, "https://elsewhere.example")
    foreign = other_issuer.mint(
        subject=agent, client_id="c", audience=[API], scope=[], extra={"agent_id": agent}
    ).token
    for token in (
        "not-a-jwt",
        gateway.token(agent, aud=["https://other-api.example"]),  # another audience
        foreign,
        gateway.token(agent, agent_id=None),  # a user's own token names no agent
        gateway.token(agent, sub="someone-else"),  # sub and agent_id disagree, no act
        gateway.token(agent, sub="u", act={"sub": "another-agent"}),  # act names another
        gateway.token(agent)[:-4] + "AAAA",  # a broken signature
    ):
        assert refused(gateway, token) == {
            "error": "invalid_token",
            "error_description": "the access token is not valid",
        }


def test_an_expired_token_is_refused(gateway: Gateway) -> None:
    agent = gateway.agent("reader")
    soon = TokenMinter(gateway.keys, ISSUER, lifetime=-31)  # past exp + the 30 s leeway
    expired = soon.mint(
        subject=agent, client_id="c", audience=[API], scope=[], extra={"agent_id": agent}
    ).token
    refused(gateway, expired)


def test_a_remembered_token_has_its_revocation_read_again_each_second(store: Store) -> None:
    keys = KeyRing(store, "ES256")
    minted = TokenMinter(keys, ISSUER).mint(
        subject="a", client_id="c", audience=[API], scope=[], extra={"agent_id": "a"}
    )
    tokens = gateway_for(store, keys, ISSUER, API).tokens
    assert tokens.memory is not None
    now = [float(minted.claims["iat"])]
    tokens.memory.clock = lambda: now[0]

    def verified() -> Caller | Refusal:
        return asyncio.run(tokens.verify(minted.token))

    assert verified() == Caller("a", None, (), frozenset(), None)
    document = {"jti": minted.claims["jti"], "exp": minted.claims["exp"], "sub": "a"}
    store.create(REVOKED, document, unique={"jti": minted.claims["jti"]}, actor="c")
    assert isinstance(verified(), Caller)  # remembered: not read again within a second
    now[0] += 1.0
    assert verified() == Refusal(Reason.REVOKED, "the token was revoked")


def test_a_revoked_token_is_refused_within_the_recheck_interval(gateway: Gateway) -> None:
    agent = gateway.agent("reader")
    token = gateway.token(agent)
    assert gateway.check(http_request("GET", "/orders/1", token)).status.code == code_pb2.OK
    payload = json.loads(b64decode(token.split(".")[1]))
    document = {"jti": payload["jti"], "exp": payload["exp"], "sub": payload["sub"]}
    gateway.store.create(REVOKED, document, unique={"jti": payload["jti"]}, actor="c")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        response = gateway.check(http_request("GET", "/orders/1", token))
        if response.status.code != code_pb2.OK:
            break
        time.sleep(0.1)
    assert response.status.code == code_pb2.UNAUTHENTICATED


def certificate() -> tuple[str, str]:
    """A self-signed client certificate: (URL-encoded PEM as Envoy sends it, x5t#S256)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "agent")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    return quote(pem, safe=""), confirmation(cert)


def test_a_certificate_bound_token_needs_its_certificate(gateway: Gateway) -> None:
    agent = gateway.agent("reader")
    presented, thumbprint = certificate()
    other, _ = certificate()
    bound = gateway.token(agent, cnf={"x5t#S256": thumbprint})
    assert refused(gateway, bound)["error_description"].endswith("another certificate")
    assert refused(gateway, bound, certificate=other)["error"] == "invalid_token"
    allowed = gateway.check(http_request("GET", "/orders/1", bound, certificate=presented))
    assert allowed.status.code == code_pb2.OK


# ------------------------------------------------------------------ routes


def test_routes_map_method_and_path_to_action_and_resource() -> None:
    files = "* /repos/{owner}/{name}/files/{rest...} repo.{method} file:{owner}/{name}:{rest}"
    routes = parse_routes(ROUTES + files)
    assert route(routes, "GET", "/orders/42?x=1") == ("db.read", "order", "42")
    assert route(routes, "POST", "/orders/42") == ("http.POST", "http", "/orders/42")
    assert route(routes, "DELETE", "/repos/acme/api/files/src/a%20b.py") == (
        "repo.DELETE",
        "file",
        "acme/api:src/a b.py",
    )
    assert route(routes, "GET", "/") == ("http.GET", "http", "/")


def test_doubled_braces_are_literal_braces_in_a_route() -> None:
    routes = parse_routes(
        "GET /users/{userId} user.read route:/users/{{userId}}\n"
        "GET /api/{{version}}/items/{id} item.{{read}} item:{{{id}}}"
    )
    assert route(routes, "GET", "/users/42") == ("user.read", "route", "/users/{userId}")
    assert route(routes, "GET", "/api/{version}/items/7") == ("item.{read}", "item", "{7}")
    assert route(routes, "GET", "/api/%7Bversion%7D/items/7") == ("item.{read}", "item", "{7}")
    assert route(routes, "GET", "/api/v1/items/7") == ("http.GET", "http", "/api/v1/items/7")


def test_a_literal_segment_matches_however_it_is_percent_encoded() -> None:
    """As a placeholder's value is decoded, so is the segment a literal is compared with:
    an upstream that decodes /%6Frders/42 serves the order the route names."""
    routes = parse_routes(ROUTES)
    assert route(routes, "GET", "/%6Frders/42") == ("db.read", "order", "42")
    assert route(routes, "GET", "/orders%2F42") == ("http.GET", "http", "/orders%2F42")


def test_braces_in_a_request_path_are_never_read_as_a_template() -> None:
    routes = parse_routes("* /files/{rest...} file.{method} file:{rest}\nGET /u/{id} u.read u:{id}")
    assert route(routes, "PUT", "/files/{method}/{path}") == ("file.PUT", "file", "{method}/{path}")
    assert route(routes, "GET", "/u/%7Bid%7D") == ("u.read", "u", "{id}")
    assert route(routes, "GET", "/x/{path}/{{y}}") == ("http.GET", "http", "/x/{path}/{{y}}")


def test_a_route_whose_resource_id_is_a_template_is_decided_on_that_id(gateway: Gateway) -> None:
    token = gateway.token(gateway.agent("reader"))
    response = gateway.check(http_request("GET", "/users/42", token))
    assert response.status.code == code_pb2.OK  # the policy names the template, not 42
    decision_id = header_values(response.ok_response.headers)[DECISION_HEADER]
    records = [json.loads(entry.record) for entry in entries(gateway.store, "agent")]
    (record,) = [r for r in records if r.get("decision_id") == decision_id]
    assert (record["action"], record["resource"]) == (
        "user.read",
        {"type": "route", "id": "/users/{userId}"},
    )


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("GET /a", "expected METHOD PATH ACTION TYPE:ID"),
        ("get /a read doc:x", "methods are upper case"),
        ("GET a read doc:x", "the path must start with /"),
        ("GET /a/x{id} read doc:{id}", "must be a whole segment"),
        ("GET /a/{rest...}/b read doc:x", "must be the last segment"),
        ("GET /a/{id}/{id} read doc:{id}", "is used twice or is reserved"),
        ("GET /a/{path} read doc:x", "is used twice or is reserved"),
        ("GET /a/{id} read doc", "the resource is TYPE:ID"),
        ("GET /a/{id} read doc:{name}", "{name} is not a name of the path"),
        ("GET /a/{id} read{ doc:{id}", "unbalanced braces"),
        ("GET /a/{id} read doc:{id", "unbalanced braces in '{id'; a literal brace is written"),
        ("GET /a/b} read doc:x", "unbalanced braces in 'b}'"),
        ("GET /a/{{id}x read doc:x", "unbalanced braces"),
        ("GET /a/{rest...} read doc:{rest...}", "{rest...} is not a name of the path"),
        ("GET /a/{{b}}{id} read doc:{id}", "must be a whole segment"),
    ],
)
def test_a_bad_route_template_is_refused_naming_the_problem(line: str, message: str) -> None:
    with pytest.raises(RouteError, match=message.replace("{", r"\{").replace("}", r"\}")):
        parse_route(line)


def test_the_routes_docs_gateways_md_shows_load() -> None:
    text = (SHIPPED_POLICIES.parent / "docs" / "gateways.md").read_text()
    shown = tomllib.loads(text.split("```toml\n", 1)[1].split("```", 1)[0])
    routes = parse_routes(shown["serve"]["ext_authz_routes"])
    assert route(routes, "GET", "/users/7") == ("user.read", "route", "/users/{userId}")
    assert route(routes, "PUT", "/repos/acme/api/files/a/b") == ("repo.PUT", "file", "acme/api/a/b")


def test_a_bad_route_in_the_configuration_stops_the_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="ext_authz_routes: route 'GET /a read'"):
        load_config({}, {"TESSERA_EXT_AUTHZ_ROUTES": "GET /a read"})
    with pytest.raises(ConfigError, match="ext_authz_strip_headers: 'host' cannot be removed"):
        load_config({}, {"TESSERA_EXT_AUTHZ_STRIP_HEADERS": "authorization,host"})
    config = tmp_path / "tessera.toml"
    config.write_text("[serve]\next_authz_routes = '''\nGET /orders/{id} db.read order:{id}\n'''\n")
    loaded = load_config({}, {}, str(config))
    assert parse_routes(loaded.ext_authz_routes)[0].text == "GET /orders/{id} db.read order:{id}"


def test_the_service_is_listed_by_reflection_and_health(gateway: Gateway) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    health = health_pb2_grpc.HealthStub(gateway.server.channel)
    answer = health.Check(
        health_pb2.HealthCheckRequest(service="envoy.service.auth.v3.Authorization"), timeout=5
    )
    assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_without_a_gateway_check_is_not_served(store: Store) -> None:
    server = Server(Engine(policies()))
    try:
        stub = auth_grpc.AuthorizationStub(server.channel)
        with pytest.raises(grpc.RpcError) as raised:
            stub.Check(http_request("GET", "/orders/1", "t"), timeout=5)
        assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        server.close()


def test_every_service_is_served_by_generic_handlers_only(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """grpc.aio's registered methods make every call of the server dearer, so no
    service of the decision point registers one; reflection still tells them all."""
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    registered: list[str] = []
    make = grpc.aio.server

    def recording(*args: Any, **kwargs: Any) -> grpc.aio.Server:
        server = make(*args, **kwargs)
        server.add_registered_method_handlers = lambda name, _: registered.append(name)  # type: ignore[method-assign]
        return server

    monkeypatch.setattr(grpc.aio, "server", recording)
    keys = KeyRing(store, "ES256")
    server = Server(
        Engine(bundle_of('permit pages\n  action "http.GET"')),
        gateway=gateway_for(store, keys, ISSUER),
    )
    try:
        stub = reflection_pb2_grpc.ServerReflectionStub(server.channel)
        asked = reflection_pb2.ServerReflectionRequest(list_services="")
        (listing,) = stub.ServerReflectionInfo(iter([asked]), timeout=5)
    finally:
        server.close()
    assert registered == []
    assert {s.name for s in listing.list_services_response.service} == {
        "tessera.v1.Authorizer",
        "envoy.service.auth.v3.Authorization",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }
