"""Authenticated callers of the gRPC decision service, and questions asked with an agent's
own token: a real server on 127.0.0.1 that asks each call for a PEP's bearer token (as
``caller_auth = "required"`` or a port beyond loopback does), tokens from the issuer's key
ring, agents from the directory, decisions on the audit trail."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from envoy.service.auth.v3 import external_auth_pb2 as auth
from envoy.service.auth.v3 import external_auth_pb2_grpc as auth_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from issuer.jws import b64decode
from issuer.keys import KeyRing
from issuer.models import AGENT_EXTENSION, AGENT_SCHEMA, REVOKED
from issuer.oauth.tokens import TokenMinter
from issuer.store import Store
from pdp.audit.query import entries
from pdp.audit.writer import AuditWriter
from pdp.directory import Directory
from pdp.doors.callers import DECIDE_SCOPE, callers_of
from pdp.doors.ext_authz import gateway_for
from pdp.engine import Engine
from pdp.lang.values import Risk
from pdp.loader import load_directory
from pdp.serve.proto import authorizer_pb2 as pb
from pdp.serve.proto import authorizer_pb2_grpc as pb_grpc
from pep.client import Client, Credentials, Options, Query, TesseraError
from pep.client_tokens import ClientCredentialsToken
from tests.conftest import SHIPPED_POLICIES
from tests.servers import Server, tessera_serve
from tests.stores import opened_store
from tests.test_directory import add_agent, add_user, set_agent

ISSUER = "http://127.0.0.1:8080"
MCP = "https://mcp.example.com"  # an audience agent tokens may also name
ADMIN_TOKEN = "callers-admin-token-0123456789"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with opened_store("sqlite", tmp_path) as opened:
        yield opened


class Pdp:
    """The decision service asking its callers for bearer tokens, on a directory, with
    ext_authz beside it and an audit trail answered once committed."""

    def __init__(self, store: Store, peps: bool = True) -> None:
        self.store = store
        self.directory = Directory(store)
        self.directory.load()
        self.keys = KeyRing(store, "ES256")
        self.minter = TokenMinter(self.keys, ISSUER)
        self.writer = AuditWriter(store, 1_000, 0.0)
        callers = callers_of(
            self.keys, ISSUER, self.directory, peps=peps, agent_audiences=[ISSUER, MCP]
        )
        self.server = Server(
            Engine(load_directory(SHIPPED_POLICIES).bundle),
            directory=self.directory,
            audit=self.writer,
            durability="sync",
            gateway=gateway_for(store, self.keys, ISSUER),
            callers=callers,
        )
        self.target = f"127.0.0.1:{self.server.running.port}"
        self.stub = pb_grpc.AuthorizerStub(self.server.channel)

    def close(self) -> None:
        self.server.close()
        self.writer.close(10)

    def agent(self, name: str, **extension: Any) -> str:
        id = add_agent(self.store, name, **extension)
        self.directory.refresh()
        return id

    def token(
        self, agent: str, scopes: list[str] | None = None, audience: str = ISSUER, **claims: Any
    ) -> str:
        """An access token of the issuer for ``agent`` (acting alone unless ``claims`` say
        otherwise)."""
        subject = claims.pop("sub", agent)
        extra = {"agent_id": agent, "agent_type": "background", **claims}
        return self.minter.mint(
            subject=subject,
            client_id="test",
            audience=[audience],
            scope=[DECIDE_SCOPE] if scopes is None else scopes,
            extra=extra,
        ).token

    def pep(self) -> str:
        """A PEP's token: its own agent, acting alone, with tessera:decide."""
        return self.token(self.agent(f"pep-{time.monotonic_ns()}"))

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(entry.record) for entry in entries(self.store, "agent")]


@pytest.fixture
def pdp(store: Store) -> Iterator[Pdp]:
    running = Pdp(store)
    yield running
    running.close()


def bearer(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


def question(agent: str = "", tool: str = "search", **fields: Any) -> pb.AuthorizeRequest:
    return pb.AuthorizeRequest(
        agent=pb.Agent(id=agent),
        action="tool.call",
        resource=pb.Resource(type="tool", id=tool),
        **fields,
    )


def refused(call: Any, *args: Any, **kwargs: Any) -> grpc.RpcError:
    """The error a call that must fail ends with."""
    with pytest.raises(grpc.RpcError) as caught:
        call(*args, timeout=5, **kwargs)
    return caught.value


# ------------------------------------------------------------------ the PEP's credentials


def test_a_call_without_a_bearer_token_is_refused_unauthenticated_and_decides_nothing(
    pdp: Pdp,
) -> None:
    reader = pdp.agent("reader")
    calls = [
        (pdp.stub.Authorize, question(reader)),
        (pdp.stub.AuthorizeBatch, pb.AuthorizeBatchRequest(requests=[question(reader)])),
        (
            pdp.stub.ListAllowed,
            pb.ListAllowedRequest(
                agent=pb.Agent(id=reader),
                action="tool.call",
                candidates=[pb.Resource(type="tool", id="search")],
            ),
        ),
    ]
    for method, message in calls:
        error = refused(method, message)
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        assert error.details() == (
            "a bearer token with the scope tessera:decide is required (authorization: Bearer …)"
        )
    assert pdp.records() == []


@pytest.mark.parametrize(
    ("case", "told"),
    [
        ("forged", "the bearer token is not valid: it is not a JWT"),
        ("expired", "the bearer token is not valid: it has expired"),
        ("another audience", "the bearer token is not valid: its audience is not this decision"),
        ("acting for a user", "the bearer token is not valid: the token acts for a user"),
        ("suspended agent", "the bearer token is not valid: the agent "),
        ("revoked", "the bearer token is not valid: the token was revoked"),
    ],
)
def test_a_bearer_token_that_does_not_verify_is_refused_unauthenticated(
    pdp: Pdp, case: str, told: str
) -> None:
    reader = pdp.agent("reader")
    pep = pdp.agent("pep")
    tokens = {
        "forged": lambda: "not-a-token",
        "expired": lambda: pdp.token(pep, exp=int(time.time()) - 120),
        "another audience": lambda: pdp.token(pep, audience="https://elsewhere.example.com"),
        "acting for a user": lambda: pdp.token(pep, sub="alice", act={"sub": pep}),
        "suspended agent": lambda: pdp.token(pep),
        "revoked": lambda: pdp.token(pep),
    }
    token = tokens[case]()
    if case == "suspended agent":
        set_agent(pdp.store, pep, "pep", status="suspended")
    if case == "revoked":
        claims = json.loads(b64decode(token.split(".")[1]))
        document = {"jti": claims["jti"], "exp": claims["exp"], "sub": pep}
        pdp.store.create(REVOKED, document, unique={"jti": claims["jti"]}, actor="test")
    pdp.directory.refresh()
    error = refused(pdp.stub.Authorize, question(reader), metadata=bearer(token))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error.details().startswith(told), error.details()
    assert pdp.records() == []


def test_a_valid_token_without_the_decide_scope_is_refused_permission_denied(pdp: Pdp) -> None:
    reader = pdp.agent("reader")
    token = pdp.token(pdp.agent("pep"), scopes=["read", "tessera:admin"])
    error = refused(pdp.stub.Authorize, question(reader), metadata=bearer(token))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error.details() == "the bearer token lacks the scope tessera:decide"
    assert pdp.records() == []


def test_a_pep_with_a_good_token_is_answered_and_the_decision_recorded(pdp: Pdp) -> None:
    reader = pdp.agent("reader")
    response = pdp.stub.Authorize(question(reader), timeout=5, metadata=bearer(pdp.pep()))
    assert response.allow and list(response.decided_by) == ["agents.read_only"]
    (record,) = pdp.records()
    assert (record["decision_id"], record["agent"]) == (response.decision_id, reader)


def test_the_pep_client_sends_a_fixed_token_or_one_from_a_source_on_each_call(
    pdp: Pdp,
) -> None:
    reader = pdp.agent("reader")
    token = pdp.pep()
    asked = []

    def source() -> str:
        asked.append(1)
        return token

    for credentials in (Credentials(token=token), Credentials(token=source)):
        with Client(pdp.target, credentials=credentials) as client:
            verdicts = [client.authorize(Query(agent=reader, tool="search")) for _ in range(3)]
            many = client.authorize_many([Query(agent=reader, tool="search")] * 2)
        assert all(v.allow and v.error is None for v in [*verdicts, *many]), verdicts
    assert len(asked) == 4  # once per call: three alone, one batch


def test_the_pep_client_fails_closed_without_an_acceptable_token(pdp: Pdp) -> None:
    reader = pdp.agent("reader")
    ask = Query(agent=reader, tool="search")
    with Client(pdp.target) as anonymous:
        verdict = anonymous.authorize(ask)
    assert not verdict.allow
    assert verdict.error is not None and verdict.error.startswith("UNAUTHENTICATED: a bearer")

    def broken() -> str:
        raise OSError("the issuer is unreachable")

    with Client(pdp.target, credentials=Credentials(token=broken)) as client:
        verdict = client.authorize(ask)
        assert verdict.error == (
            "UNAUTHENTICATED: the bearer token could not be had: the issuer is unreachable"
        )
    raising = Options(on_error="raise")
    with Client(pdp.target, raising, credentials=Credentials(token=lambda: "")) as client:
        with pytest.raises(TesseraError) as caught:
            client.authorize(ask)
        assert caught.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert pdp.records() == []


def test_health_and_reflection_answer_callers_without_a_token(pdp: Pdp) -> None:
    health = health_pb2_grpc.HealthStub(pdp.server.channel)
    answer = health.Check(health_pb2.HealthCheckRequest(service="tessera.v1.Authorizer"))
    assert answer.status == health_pb2.HealthCheckResponse.SERVING
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    reflection = reflection_pb2_grpc.ServerReflectionStub(pdp.server.channel)
    ask = reflection_pb2.ServerReflectionRequest(list_services="")
    (listed,) = reflection.ServerReflectionInfo(iter([ask]), timeout=5)
    assert "tessera.v1.Authorizer" in [s.name for s in listed.list_services_response.service]


def test_envoy_asking_check_shows_a_token_of_its_own_too(pdp: Pdp) -> None:
    agent = pdp.agent("reader")
    check = auth.CheckRequest()
    http = check.attributes.request.http
    http.method, http.path = "GET", "/public/about"
    http.headers["authorization"] = f"Bearer {pdp.token(agent, scopes=[])}"
    stub = auth_grpc.AuthorizationStub(pdp.server.channel)
    assert refused(stub.Check, check).code() == grpc.StatusCode.UNAUTHENTICATED
    answer = stub.Check(check, timeout=5, metadata=bearer(pdp.pep()))
    assert answer.denied_response.status.code == 403  # decided: no policy allows the path


def test_without_peps_to_check_the_port_answers_anyone_as_on_loopback(store: Store) -> None:
    pdp = Pdp(store, peps=False)
    try:
        reader = pdp.agent("reader")
        assert pdp.stub.Authorize(question(reader), timeout=5).allow
    finally:
        pdp.close()


# ------------------------------------------------------------------ agent tokens


def test_an_agent_token_decides_for_the_agent_it_names(pdp: Pdp) -> None:
    reader = pdp.agent("reader")
    pep = bearer(pdp.pep())
    token = pdp.token(reader, scopes=["read"], audience=MCP)
    response = pdp.stub.Authorize(question(agent_token=token), timeout=5, metadata=pep)
    assert response.allow and list(response.decided_by) == ["agents.read_only"]
    named = pdp.stub.Authorize(question(reader, agent_token=token), timeout=5, metadata=pep)
    assert named.allow
    records = {r["decision_id"]: r for r in pdp.records()}
    assert records[response.decision_id]["agent"] == reader
    assert records[response.decision_id].get("user") is None


def test_an_exchanged_agent_token_decides_for_its_user_through_its_actors(pdp: Pdp) -> None:
    mailer = pdp.agent("mailer", scopes=["mail:send"])
    user = add_user(pdp.store, "bjensen")
    pdp.directory.refresh()
    pep = bearer(pdp.pep())
    alone = pdp.token(mailer)
    for_user = pdp.token(mailer, sub=user, act={"sub": mailer})
    sent = "mail.send"  # allowed only for a user (send_mail_for_user)
    assert not pdp.stub.Authorize(question(tool=sent, agent_token=alone), metadata=pep).allow
    response = pdp.stub.Authorize(question(tool=sent, agent_token=for_user), metadata=pep)
    assert response.allow, response
    record = {r["decision_id"]: r for r in pdp.records()}[response.decision_id]
    assert (record["agent"], record["user"]) == (mailer, user)
    assert record["delegation"] == [mailer]
    assert for_user not in json.dumps(record)  # the trail names who, never the token


@pytest.mark.parametrize(
    ("fields", "told"),
    [
        ({"agent": pb.Agent(id="someone-else")}, "agent.id: 'someone-else' is not the agent"),
        ({"user": pb.User(id="alice")}, "user.id: 'alice', but the agent token's agent acts"),
        ({"delegation": pb.Delegation(chain=["x"])}, "delegation.chain: ['x'] is not the"),
    ],
)
def test_a_question_that_disagrees_with_its_agent_token_is_invalid_argument(
    pdp: Pdp, fields: dict[str, Any], told: str
) -> None:
    reader = pdp.agent("reader")
    message = question(agent_token=pdp.token(reader))
    for name, value in fields.items():
        getattr(message, name).CopyFrom(value)
    error = refused(pdp.stub.Authorize, message, metadata=bearer(pdp.pep()))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith(told), error.details()
    assert pdp.records() == []


def test_an_agent_token_that_does_not_verify_is_unauthenticated(pdp: Pdp) -> None:
    reader = pdp.agent("reader")
    pep = bearer(pdp.pep())
    elsewhere = pdp.token(reader, audience="https://elsewhere.example.com")
    for token, told in (
        ("junk", "the agent token is not valid: it is not a JWT"),
        (elsewhere, "the agent token is not valid: its audience is not this decision service"),
    ):
        error = refused(pdp.stub.Authorize, question(reader, agent_token=token), metadata=pep)
        assert (error.code(), error.details()) == (grpc.StatusCode.UNAUTHENTICATED, told)
    batch = pb.AuthorizeBatchRequest(requests=[question(reader), question(agent_token="junk")])
    error = refused(pdp.stub.AuthorizeBatch, batch, metadata=pep)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error.details() == "requests[1]: the agent token is not valid: it is not a JWT"
    assert pdp.records() == []  # nothing of the batch was decided


def test_an_agent_token_exchanged_from_a_revoked_token_is_unauthenticated(pdp: Pdp) -> None:
    """Revoking a token revokes what was exchanged from it (its ``lineage``), here as in
    every other verifier: the directory's snapshot is read for every id of the lineage."""
    mailer = pdp.agent("mailer", scopes=["mail:send"])
    pep = bearer(pdp.pep())
    document = {"jti": "parent-jti", "exp": int(time.time()) + 600, "sub": mailer}
    pdp.store.create(REVOKED, document, unique={"jti": "parent-jti"}, actor="test")
    pdp.directory.refresh()
    sibling = pdp.token(mailer, audience=MCP, lineage=["grant-1", "another-jti"])
    assert pdp.stub.Authorize(question(agent_token=sibling), timeout=5, metadata=pep).decision_id
    exchanged = pdp.token(mailer, audience=MCP, lineage=["grant-1", "parent-jti"])
    error = refused(pdp.stub.Authorize, question(agent_token=exchanged), metadata=pep)
    assert (error.code(), error.details()) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "the agent token is not valid: the token was revoked",
    )


def test_agent_tokens_in_a_batch_and_in_list_allowed(pdp: Pdp) -> None:
    reader = pdp.agent("reader")
    risky = pdp.agent("risky", riskLevel="high")
    pep = bearer(pdp.pep())
    batch = pb.AuthorizeBatchRequest(
        requests=[question(agent_token=pdp.token(reader)), question(agent_token=pdp.token(risky))]
    )
    answers = pdp.stub.AuthorizeBatch(batch, timeout=5, metadata=pep).responses
    assert [a.allow for a in answers] == [True, False]
    listed = pdp.stub.ListAllowed(
        pb.ListAllowedRequest(
            agent_token=pdp.token(reader),
            action="tool.call",
            candidates=[pb.Resource(type="tool", id=t) for t in ("search", "fs.write")],
        ),
        timeout=5,
        metadata=pep,
    )
    assert [r.id for r in listed.allowed] == ["search"]


def test_the_pep_client_sends_the_agent_token_of_each_call(pdp: Pdp) -> None:
    reader = pdp.agent("reader")
    risky = pdp.agent("risky", riskLevel="high")
    with Client(pdp.target, credentials=Credentials(token=pdp.pep())) as client:
        allowed = client.authorize(Query(tool="search", agent_token=pdp.token(reader)))
        denied = client.authorize(Query(tool="search", agent_token=pdp.token(risky)))
    assert (allowed.allow, denied.allow) == (True, False)
    agents = {r["decision_id"]: r["agent"] for r in pdp.records()}
    assert (agents[allowed.decision_id], agents[denied.decision_id]) == (reader, risky)


# ------------------------------------------------------------------ tessera serve


def test_tessera_serve_says_on_loopback_that_callers_are_not_asked(tmp_path: Path) -> None:
    with tessera_serve(
        *("--policies", str(SHIPPED_POLICIES), "--store", ""),
        *("--port", "0", "--metrics-port", "-1", "--grace", "1"),
        lines=4,
    ) as (_, lines):
        assert lines[3].startswith("tessera: callers are not authenticated: the gRPC port"), lines
        port = re.findall(r"Authorizer on 127\.0\.0\.1:(\d+)", lines[0])[0]
        attributes = {"status": "active", "risk": Risk.low}
        with Client(f"127.0.0.1:{port}", Options(timeout=5)) as client:
            verdict = client.authorize(Query("helper", "search", agent_attributes=attributes))
        assert verdict.allow, verdict


def test_tessera_serve_beyond_loopback_with_nothing_to_check_callers_does_not_start() -> None:
    exe = Path(sys.executable).parent / "tessera"
    finished = subprocess.run(
        [
            *(str(exe), "serve", "--policies", str(SHIPPED_POLICIES), "--store", ""),
            *("--host", "0.0.0.0", "--port", "0", "--metrics-port", "-1"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert finished.returncode == 2
    assert "host '0.0.0.0' reaches beyond loopback, so callers" in finished.stderr


def test_a_pep_registered_at_the_issuer_asks_tessera_serve_with_its_token(
    tmp_path: Path,
) -> None:
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with tessera_serve(
        *("--policies", str(SHIPPED_POLICIES), "--store", f"sqlite:///{tmp_path}/t.db"),
        *("--port", "0", "--http-port", "0", "--metrics-port", "-1", "--grace", "1"),
        *("--admin-token", ADMIN_TOKEN, "--caller-auth", "required"),
        lines=8,
    ) as (_, lines):
        issuer = re.findall(r"OAuth issuer (\S+) ", lines[2])[0]
        assert lines[7] == (
            f"tessera: callers authenticate with bearer tokens of {issuer} with the scope "
            "tessera:decide; health and reflection answer anyone\n"
        )
        target = re.findall(r"Authorizer on (127\.0\.0\.1:\d+)", lines[0])[0]
        with httpx.Client(base_url=issuer, headers=admin, timeout=10) as http:
            reader, pep = (
                http.post(
                    "/scim/v2/Agents",
                    json={
                        "schemas": [AGENT_SCHEMA, AGENT_EXTENSION],
                        "name": name,
                        AGENT_EXTENSION: {"owner": "ops", "riskLevel": "low"},
                    },
                ).json()["id"]
                for name in ("reader", "gateway")
            )
            registered = http.post(
                "/oauth/register",
                json={
                    "agent_id": pep,
                    "grant_types": ["client_credentials"],
                    "scope": DECIDE_SCOPE,
                },
            ).json()
        token = ClientCredentialsToken(issuer, registered["client_id"], registered["client_secret"])
        ask = Query(agent=reader, tool="search")
        with Client(target, Options(timeout=5)) as anonymous:
            assert anonymous.authorize(ask).error.startswith("UNAUTHENTICATED: a bearer")
        with Client(target, Options(timeout=5), credentials=Credentials(token=token)) as client:
            verdict = client.authorize(ask)
            for _ in range(100):  # the directory follows the store within a second
                if verdict.allow:
                    break
                time.sleep(0.05)
                verdict = client.authorize(ask)
        assert verdict.allow, verdict


def test_without_an_issuer_to_verify_it_an_agent_token_is_refused(server: Server) -> None:
    stub = pb_grpc.AuthorizerStub(server.channel)
    error = refused(stub.Authorize, question("helper", agent_token="eyJ.x.y"))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error.details().startswith("this decision service verifies no agent tokens")
