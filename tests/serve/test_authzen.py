"""The AuthZEN Authorization API 1.0 over real HTTP (httpx against uvicorn on loopback),
deciding with the decision service on a directory, on both stores."""

from __future__ import annotations

import base64
import json
import re
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from envoy.service.auth.v3 import external_auth_pb2 as auth
from envoy.service.auth.v3 import external_auth_pb2_grpc as auth_grpc
from starlette.applications import Starlette

from issuer import wire
from issuer.keys import KeyRing
from issuer.models import AGENT_EXTENSION, AGENT_SCHEMA
from issuer.oauth.endpoints import AuthorizationServer
from issuer.oauth.tokens import TokenMinter
from issuer.scim import BootstrapToken
from issuer.store import Store
from pdp.audit.query import entries
from pdp.audit.writer import AuditWriter
from pdp.decide import DecisionPoint
from pdp.directory import Directory
from pdp.doors import authzen
from pdp.doors.authzen import AUTHZEN_PATH, AUTHZEN_SCOPE, AuthZen
from pdp.doors.callers import callers_of
from pdp.engine import Bundle, Engine
from pdp.loader import load_directory, load_texts
from tests.conftest import SHIPPED_POLICIES
from tests.serve.test_tls import PKI, _pem
from tests.servers import HttpServer, send_raw, tessera_serve
from tests.stores import opened_store, store_url
from tests.test_directory import add_agent, add_user

ADMIN_TOKEN = "authzen-admin-token-0123456789"
REQUEST_ID = "bfe9eb29-ab87-4ca3-be83-a1d5d8305716"


class Pdp:
    """AuthZEN served on 127.0.0.1 over a decision service with a directory, an audit
    trail answered once committed, and the issuer's authentication of callers."""

    def __init__(
        self,
        store: Store,
        tls: tuple[str, str] | None = None,
        client_ca: str | None = None,
        bundle: Bundle | None = None,
    ) -> None:
        self.store = store
        self.directory = Directory(store)
        self.directory.load()
        self.writer = AuditWriter(store, 1_000, 0.0)
        self.point = DecisionPoint(
            Engine(bundle or load_directory(SHIPPED_POLICIES).bundle),
            directory=self.directory,
            audit=self.writer,
            durability="sync",
        )
        self.keys = KeyRing(store, "ES256")

        def build(port: int) -> Starlette:
            scheme = "https" if tls else "http"
            self.base = f"{scheme}://{'localhost' if tls else '127.0.0.1'}:{port}"
            oauth = AuthorizationServer(store, self.keys, self.base, BootstrapToken(ADMIN_TOKEN))
            callers = oauth.administrators([self.base, f"{self.base}{AUTHZEN_PATH}"])
            agents = callers_of(self.keys, self.base, self.directory, peps=False).agent_tokens
            door = AuthZen(
                self.point,
                callers,
                self.base,
                certificates=client_ca is not None,
                agent_tokens=agents,
            )
            return Starlette(routes=door.routes())

        self.server = HttpServer(build, tls, client_ca)
        self.http = httpx.Client(
            base_url=self.base, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=10
        )

    def close(self) -> None:
        self.http.close()
        self.server.close()
        self.writer.close(10)

    def agent(self, name: str, **extension: Any) -> str:
        id = add_agent(self.store, name, **extension)
        self.directory.refresh()
        return id

    def post(self, path: str, body: Any, **headers: str) -> httpx.Response:
        return self.http.post(f"{AUTHZEN_PATH}{path}", json=body, headers=headers)

    def ok(self, path: str, body: Any) -> Any:
        response = self.post(path, body)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/json"
        return response.json()

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(entry.record) for entry in entries(self.store, "agent")]


@pytest.fixture
def pdp(store: Store) -> Iterator[Pdp]:
    running = Pdp(store)
    yield running
    running.close()


def evaluation(agent: str, tool: str = "search", **extra: Any) -> dict[str, Any]:
    return {
        "subject": {"type": "agent", "id": agent},
        "action": {"name": "tool.call"},
        "resource": {"type": "tool", "id": tool},
        **extra,
    }


# ------------------------------------------------------------------ metadata


def test_the_metadata_names_every_endpoint(pdp: Pdp) -> None:
    response = httpx.get(f"{pdp.base}/.well-known/authzen-configuration", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    api = f"{pdp.base}/access/v1"
    assert response.json() == {
        "policy_decision_point": pdp.base,
        "access_evaluation_endpoint": f"{api}/evaluation",
        "access_evaluations_endpoint": f"{api}/evaluations",
        "search_subject_endpoint": f"{api}/search/subject",
        "search_resource_endpoint": f"{api}/search/resource",
        "search_action_endpoint": f"{api}/search/action",
    }


# ------------------------------------------------------------------ evaluation


def test_an_evaluation_answers_exactly_the_decision_and_echoes_the_request_id(pdp: Pdp) -> None:
    reader = pdp.agent("reader")
    response = pdp.post("/evaluation", evaluation(reader), **{"X-Request-ID": REQUEST_ID})
    assert response.status_code == 200
    assert response.headers["x-request-id"] == REQUEST_ID
    assert response.content == b'{"decision":true}'
    assert pdp.ok("/evaluation", evaluation(reader, "payments.transfer")) == {"decision": False}


def test_an_evaluation_is_decided_and_recorded_as_authorize_would(pdp: Pdp) -> None:
    risky = pdp.agent("risky", riskLevel="high")
    explained = pdp.ok("/evaluation", evaluation(risky, options={"tessera_explain": True}))
    assert explained["decision"] is False
    context = explained["context"]
    assert context["reasons"] == ["no permit applies (default deny)"]
    assert context["bundle_version"].startswith("sha256:")
    (record,) = [r for r in pdp.records() if r.get("decision_id") == context["decision_id"]]
    assert (record["agent"], record["action"], record["allow"]) == (risky, "tool.call", False)
    assert record["pep"].startswith("ipv4:127.0.0.1:")


def test_an_unknown_or_suspended_agent_is_denied_by_the_directory(pdp: Pdp) -> None:
    suspended = pdp.agent("old", status="suspended")
    for agent, reason in (
        ("nobody", "agent 'nobody' is not in the directory"),
        (suspended, f"agent {suspended!r} is suspended"),
    ):
        answer = pdp.ok("/evaluation", evaluation(agent, options={"tessera_explain": True}))
        assert answer["decision"] is False
        assert answer["context"]["reasons"] == [reason]
        assert answer["context"]["decided_by"] == ["directory"]


def test_properties_and_context_are_typed_by_the_schema(pdp: Pdp) -> None:
    payer = pdp.agent("payer", purpose="payments")
    analyst_bot = pdp.agent("analyst-bot")
    analyst = add_user(pdp.store, "ana", roles=[{"value": "analyst"}])
    pdp.directory.refresh()
    pay = evaluation(payer, "payments.transfer")
    assert pdp.ok("/evaluation", {**pay, "context": {"amount": "200 USD"}})["decision"]
    assert not pdp.ok("/evaluation", {**pay, "context": {"amount": "2000 USD"}})["decision"]
    orders = {
        "subject": {"type": "agent", "id": analyst_bot, "properties": {"user": analyst}},
        "action": {"name": "db.read"},
        "resource": {"type": "table", "id": "orders", "properties": {"classification": "public"}},
    }
    assert pdp.ok("/evaluation", orders)["decision"] is True
    orders["resource"]["properties"] = {"classification": "secret"}
    assert pdp.ok("/evaluation", orders)["decision"] is False


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"action": {"name": "a"}, "resource": {"type": "t", "id": "i"}}, "subject is required"),
        (
            {**evaluation("a"), "subject": {"type": "robot", "id": "r2"}},
            'subject.type: Tessera decides for subjects of type "agent", "user", "identity"',
        ),
        ({**evaluation("a"), "action": {}}, "action.name is required"),
        ({**evaluation("a"), "resource": {"type": "tool"}}, "resource.id is required"),
        ({**evaluation("a"), "resource": "tool:x"}, "resource must be an object"),
        ({**evaluation("a"), "context": {"ip": None}}, "context.ip: null"),
        (
            {**evaluation("a"), "subject": {"type": "agent", "id": "a", "properties": {"user": 1}}},
            "subject.properties.user must be a user id",
        ),
        ([1, 2], "the body must be a JSON object"),
    ],
)
def test_a_malformed_evaluation_is_400_with_a_message_and_decides_nothing(
    pdp: Pdp, body: Any, message: str
) -> None:
    before = len(pdp.records())
    response = pdp.post("/evaluation", body, **{"X-Request-ID": REQUEST_ID})
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("text/plain")
    assert response.headers["x-request-id"] == REQUEST_ID
    assert message in response.text
    assert len(pdp.records()) == before


def test_a_value_of_the_wrong_type_is_400_naming_the_attribute(pdp: Pdp) -> None:
    payer = pdp.agent("payer", purpose="payments")
    before = len(pdp.records())
    body = evaluation(payer, "payments.transfer", context={"amount": "lots"})
    response = pdp.post("/evaluation", body)
    assert response.status_code == 400
    assert response.text.startswith("context.amount")
    assert len(pdp.records()) == before


def test_the_body_must_be_json_sent_as_json(pdp: Pdp) -> None:
    url = f"{AUTHZEN_PATH}/evaluation"
    text = pdp.http.post(url, content=b"{}", headers={"Content-Type": "text/plain"})
    assert (text.status_code, text.text) == (400, "Content-Type must be application/json")
    broken = pdp.http.post(url, content=b"{", headers={"Content-Type": "application/json"})
    assert broken.status_code == 400
    assert broken.text.startswith("the document is not JSON")
    nan = pdp.http.post(url, content=b'{"x": NaN}', headers={"Content-Type": "application/json"})
    assert nan.status_code == 400
    assert nan.text.startswith("the document is not JSON")
    huge = b'{"pad": "' + b"x" * (1 << 20) + b'"}'
    large = pdp.http.post(url, content=huge, headers={"Content-Type": "application/json"})
    assert (large.status_code, large.text) == (413, "the body is larger than 1048576 bytes")


def test_a_body_nested_too_deeply_is_400_not_a_server_error(pdp: Pdp) -> None:
    url = f"{AUTHZEN_PATH}/evaluation"
    json_type = {"Content-Type": "application/json"}
    for depth in (1_000, 50_000):
        deep = b'{"x": ' + b"[" * depth + b"]" * depth + b"}"
        response = pdp.http.post(url, content=deep, headers=json_type)
        assert (response.status_code, response.text) == (
            400,
            "the document nests deeper than 64 levels",
        )
    payer = pdp.agent("payer", purpose="payments")
    nested: Any = "x"
    for _ in range(40):
        nested = {"n": nested}
    body = evaluation(payer, "payments.transfer", context={"deep": nested})
    response = pdp.post("/evaluation", body)
    assert response.status_code == 400
    assert response.text.startswith("context.deep") and "nested deeper than 32" in response.text


MARK = "@lone-surrogate@"  # replaced by the escape of one in the JSON text


def with_resource_property(agent: str) -> dict[str, Any]:
    body = evaluation(agent)
    body["resource"]["properties"] = {"p": MARK}
    return body


LONE_SURROGATE_AT = {
    "subject id": lambda agent: evaluation(MARK),
    "resource property": with_resource_property,
    "context key": lambda agent: evaluation(agent, context={MARK: "x"}),
}


@pytest.mark.parametrize("where", LONE_SURROGATE_AT)
def test_a_lone_surrogate_is_400_and_decides_nothing(pdp: Pdp, where: str) -> None:
    body = LONE_SURROGATE_AT[where](pdp.agent("reader"))
    text = json.dumps(body).replace(MARK, "\\ud800")  # JSON's escape; no UTF-8 holds it
    before = len(pdp.records())
    response = pdp.http.post(
        f"{AUTHZEN_PATH}/evaluation",
        content=text.encode(),
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 400, response.text
    assert response.text.startswith("the document is not JSON: ")
    assert "surrogate" in response.text
    assert len(pdp.records()) == before


def test_a_body_that_does_not_arrive_in_time_is_408(
    pdp: Pdp, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(wire, "READ_TIMEOUT", 0.5)
    head = (
        f"POST {AUTHZEN_PATH}/evaluation HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {ADMIN_TOKEN}\r\nX-Request-ID: {REQUEST_ID}\r\n"
        "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    )
    answer = send_raw(pdp.server.port, head.encode() + b'{"subject": ')
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), answer
    head_part, _, text = answer.partition(b"\r\n\r\n")
    assert f"x-request-id: {REQUEST_ID}".encode() in head_part.lower()
    assert text == b"the body did not arrive within 0.5 seconds"


def test_a_page_token_that_nests_deeply_is_not_one_this_pdp_issued(pdp: Pdp) -> None:
    token = base64.urlsafe_b64encode(b"[" * 5_000 + b"]" * 5_000).decode()
    search = {
        "subject": {"type": "agent"},
        "action": {"name": "tool.call"},
        "resource": {"type": "tool", "id": "search"},
        "page": {"token": token},
    }
    response = pdp.post("/search/subject", search)
    assert (response.status_code, response.text) == (
        400,
        "page.token is not a token this PDP issued",
    )


def test_callers_authenticate_with_a_token_that_may_ask_for_decisions(pdp: Pdp) -> None:
    reader = pdp.agent("reader")
    url = f"{pdp.base}{AUTHZEN_PATH}/evaluation"
    anonymous = httpx.post(url, json=evaluation(reader), headers={"X-Request-ID": "x"})
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"] == "Bearer"
    assert anonymous.headers["x-request-id"] == "x"
    forged = httpx.post(url, json=evaluation(reader), headers={"Authorization": "Bearer nope"})
    assert forged.status_code == 401
    assert forged.headers["www-authenticate"] == 'Bearer error="invalid_token"'

    pep = pdp.agent("gateway-pep")
    minter = TokenMinter(pdp.keys, pdp.base)

    def token(scopes: list[str]) -> str:
        extra = {"agent_id": pep, "agent_type": "background"}
        issued = minter.mint(
            subject=pep, client_id="pep", audience=[pdp.base], scope=scopes, extra=extra
        )
        return issued.token

    for scopes, status in (([AUTHZEN_SCOPE], 200), (["read"], 403)):
        headers = {"Authorization": f"Bearer {token(scopes)}"}
        answer = httpx.post(url, json=evaluation(reader), headers=headers, timeout=10)
        assert answer.status_code == status, answer.text
    assert answer.text == f"asking for decisions needs the scope {AUTHZEN_SCOPE}"


def test_a_pep_with_a_client_certificate_from_the_ca_needs_no_token(tmp_path: Path) -> None:
    pki = PKI()
    files = {
        "server.pem": PKI.pem(pki.server),
        "server.key": _pem(pki.server_key),
        "ca.pem": PKI.pem(pki.ca),
        "pep.pem": PKI.pem(pki.client),
        "pep.key": _pem(pki.client_key),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    with opened_store("sqlite", tmp_path) as store:
        pdp = Pdp(
            store,
            (str(tmp_path / "server.pem"), str(tmp_path / "server.key")),
            str(tmp_path / "ca.pem"),
        )
        try:
            reader = pdp.agent("reader")
            url = f"{pdp.base}{AUTHZEN_PATH}/evaluation"
            trust = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
            anonymous = httpx.post(url, json=evaluation(reader), verify=trust, timeout=10)
            assert anonymous.status_code == 401
            trust.load_cert_chain(tmp_path / "pep.pem", tmp_path / "pep.key")
            answer = httpx.post(url, json=evaluation(reader), verify=trust, timeout=10)
            assert (answer.status_code, answer.json()) == (200, {"decision": True})
        finally:
            pdp.close()


# ------------------------------------------------------------------ the agent's own token


def agent_token(pdp: Pdp, agent: str, **claims: Any) -> str:
    """The agent's access token from the issuer (for a user with ``sub`` and ``act``)."""
    subject = claims.pop("sub", agent)
    extra = {"agent_id": agent, "agent_type": "assistant", **claims}
    minter = TokenMinter(pdp.keys, pdp.base)
    return minter.mint(
        subject=subject, client_id="agent", audience=[pdp.base], scope=["read"], extra=extra
    ).token


def by_token(token: str, tool: str = "search", **properties: Any) -> dict[str, Any]:
    return {
        "subject": {"type": "agent", "properties": {"token": token, **properties}},
        "action": {"name": "tool.call"},
        "resource": {"type": "tool", "id": tool},
    }


def test_an_agent_token_in_the_subject_decides_for_whom_it_names(pdp: Pdp) -> None:
    reader = pdp.agent("reader")
    mailer = pdp.agent("mailer", scopes=["mail:send"])
    user = add_user(pdp.store, "bjensen")
    pdp.directory.refresh()
    explain = {"options": {"tessera_explain": True}}
    answer = pdp.ok("/evaluation", {**by_token(agent_token(pdp, reader)), **explain})
    assert answer["decision"] is True
    record = {r["decision_id"]: r for r in pdp.records()}[answer["context"]["decision_id"]]
    assert (record["agent"], record["user"]) == (reader, None)
    for_user = agent_token(pdp, mailer, sub=user, act={"sub": mailer})
    body = {**by_token(for_user, "mail.send"), **explain}
    body["subject"]["id"] = mailer  # AuthZEN's subject.id, when sent, must be the token's
    answer = pdp.ok("/evaluation", body)
    assert answer["decision"] is True, answer
    record = {r["decision_id"]: r for r in pdp.records()}[answer["context"]["decision_id"]]
    assert (record["agent"], record["user"], record["delegation"]) == (mailer, user, [mailer])
    many = pdp.ok(
        "/evaluations",
        {
            "subject": by_token(agent_token(pdp, reader))["subject"],
            "action": {"name": "tool.call"},
            "evaluations": [{"resource": {"type": "tool", "id": t}} for t in ("search", "x")],
        },
    )
    assert many == {"evaluations": [{"decision": True}, {"decision": False}]}


def test_with_an_agent_token_the_user_may_be_named_by_any_of_their_ids(pdp: Pdp) -> None:
    mailer = pdp.agent("mailer", scopes=["mail:send"])
    user = add_user(pdp.store, "bjensen", emails=[{"value": "babs@example.com"}])
    pdp.directory.refresh()
    token = agent_token(pdp, mailer, sub=user, act={"sub": mailer})
    for name in (user, "bjensen", "babs@example.com"):
        body = by_token(token, "mail.send", user=name)
        assert pdp.ok("/evaluation", body) == {"decision": True}, name
    refused = pdp.post("/evaluation", by_token(token, "mail.send", user="someone-else"))
    assert refused.status_code == 400
    assert "subject.properties.user" in refused.text


STEP_UP = """
package stepup

permit bound_key_calls
  action "tool.call" on tool "rotate-keys"
  require step_up("urn:tessera:acr:key+mtls")
"""


def test_a_token_subjects_step_up_is_met_by_the_tokens_acr_only(store: Store) -> None:
    texts = {p.name: p.read_text() for p in SHIPPED_POLICIES.glob("*.pol")}
    texts = {name: text for name, text in texts.items() if not name.endswith("_test.pol")}
    pdp = Pdp(store, bundle=load_texts({**texts, "stepup.pol": STEP_UP}).bundle)
    try:
        rotator = pdp.agent("rotator")
        strong = agent_token(pdp, rotator, acr="urn:tessera:acr:key+mtls", amr=["mtls", "pkjwt"])
        weak = agent_token(pdp, rotator, acr="urn:tessera:acr:key", amr=["pkjwt"])
        assert pdp.ok("/evaluation", by_token(strong, "rotate-keys")) == {"decision": True}
        assert pdp.ok("/evaluation", by_token(weak, "rotate-keys")) == {"decision": False}
        claimed = {**by_token(weak, "rotate-keys"), "context": {"acr": "urn:tessera:acr:key+mtls"}}
        refused = pdp.post("/evaluation", claimed)
        assert refused.status_code == 400 and refused.text.startswith("context.acr:"), refused.text
        # an agent named by id: the PEP's word, as before
        by_id = {
            **evaluation(rotator, "rotate-keys"),
            "context": {"acr": "urn:tessera:acr:key+mtls"},
        }
        assert pdp.ok("/evaluation", by_id) == {"decision": True}
    finally:
        pdp.close()


def test_a_subject_that_disagrees_with_its_token_or_a_bad_token_is_400(pdp: Pdp) -> None:
    reader = pdp.agent("reader")
    token = agent_token(pdp, reader)
    wrong_id = by_token(token)
    wrong_id["subject"]["id"] = "someone-else"
    cases = [
        (wrong_id, "subject.id: 'someone-else' is not the agent the agent token names"),
        (by_token(token, user="alice"), "subject.properties.user: 'alice', but the agent"),
        (
            by_token(token, delegation=["x"]),
            "subject.properties.delegation: ['x'] is not the agent token's actors",
        ),
        (by_token("junk"), "subject.properties.token: the agent token is not valid: it is not"),
        (by_token(""), "subject.properties.token must be the agent's access token"),
    ]
    for body, message in cases:
        response = pdp.post("/evaluation", body)
        assert response.status_code == 400, response.text
        assert response.text.startswith(message), response.text
    search = {**by_token(token), "resource": {"type": "tool"}}
    assert pdp.post("/search/subject", search).status_code == 400
    assert pdp.records() == []


# ------------------------------------------------------------------ evaluations


def test_evaluations_take_defaults_and_answer_in_order(pdp: Pdp) -> None:
    reader = pdp.agent("reader")
    body = {
        "subject": {"type": "agent", "id": reader},
        "action": {"name": "tool.call"},
        "evaluations": [
            {"resource": {"type": "tool", "id": "search"}},
            {"resource": {"type": "tool", "id": "payments.transfer"}},
            {"resource": {"type": "tool", "id": "read_file"}},
            {"action": {"name": "db.drop"}, "resource": {"type": "tool", "id": "search"}},
        ],
    }
    assert pdp.ok("/evaluations", body) == {
        "evaluations": [
            {"decision": True},
            {"decision": False},
            {"decision": True},
            {"decision": False},
        ]
    }
    body["options"] = {"evaluations_semantic": "execute_all"}
    assert len(pdp.ok("/evaluations", body)["evaluations"]) == 4


def test_deny_on_first_deny_and_permit_on_first_permit_stop_early(pdp: Pdp) -> None:
    reader = pdp.agent("reader")
    tools = ["search", "payments.transfer", "read_file"]
    body: dict[str, Any] = {
        "subject": {"type": "agent", "id": reader},
        "action": {"name": "tool.call"},
        "evaluations": [{"resource": {"type": "tool", "id": t}} for t in tools],
    }
    before = len(pdp.records())
    body["options"] = {"evaluations_semantic": "deny_on_first_deny"}
    assert pdp.ok("/evaluations", body) == {
        "evaluations": [{"decision": True}, {"decision": False}]
    }
    body["options"] = {"evaluations_semantic": "permit_on_first_permit"}
    assert pdp.ok("/evaluations", body) == {"evaluations": [{"decision": True}]}
    assert len(pdp.records()) == before + 3  # only what was decided is recorded


def test_evaluations_without_items_are_one_evaluation(pdp: Pdp) -> None:
    reader = pdp.agent("reader")
    assert pdp.ok("/evaluations", evaluation(reader)) == {"decision": True}
    assert pdp.ok("/evaluations", {**evaluation(reader), "evaluations": []}) == {"decision": True}


def test_a_bad_evaluations_request_is_400_and_decides_none_of_its_items(pdp: Pdp) -> None:
    reader = pdp.agent("reader")
    good = {"resource": {"type": "tool", "id": "search"}}
    base = {"subject": {"type": "agent", "id": reader}, "action": {"name": "tool.call"}}
    before = len(pdp.records())
    for body, message in (
        ({**base, "evaluations": [good, {"action": {"name": "x"}}]}, "evaluations[1].resource"),
        (
            {**base, "evaluations": [good, {**good, "context": {"amount": "lots"}}]},
            "evaluations[1]: context.amount",
        ),
        ({**base, "evaluations": [good, 7]}, "evaluations[1] must be an object"),
        ({**base, "evaluations": {"a": good}}, "evaluations must be an array"),
        (
            {**base, "evaluations": [good], "options": {"evaluations_semantic": "first"}},
            "options.evaluations_semantic must be one of execute_all",
        ),
    ):
        response = pdp.post("/evaluations", body)
        assert response.status_code == 400
        assert message in response.text, response.text
    assert len(pdp.records()) == before


# ------------------------------------------------------------------ search


def test_subject_search_lists_the_agents_allowed_page_by_page(pdp: Pdp) -> None:
    readers = sorted([pdp.agent("reader-1"), pdp.agent("reader-2"), pdp.agent("reader-3")])
    pdp.agent("risky", riskLevel="high")
    pdp.agent("old", status="suspended")
    before = len(pdp.records())
    body: dict[str, Any] = {
        "subject": {"type": "agent"},
        "action": {"name": "tool.call"},
        "resource": {"type": "tool", "id": "search"},
    }
    assert pdp.ok("/search/subject", body) == {
        "page": {"next_token": "", "count": 3, "total": 3},
        "results": [{"type": "agent", "id": id} for id in readers],
    }
    body["page"] = {"limit": 2}
    first = pdp.ok("/search/subject", body)
    assert first["results"] == [{"type": "agent", "id": id} for id in readers[:2]]
    assert first["page"]["count"] == 2 and first["page"]["next_token"]
    body["page"] = {"limit": 2, "token": first["page"]["next_token"]}
    second = pdp.ok("/search/subject", body)
    assert second == {
        "page": {"next_token": "", "count": 1, "total": 3},
        "results": [{"type": "agent", "id": readers[2]}],
    }
    changed = {**body, "resource": {"type": "tool", "id": "read_file"}}
    refused = pdp.post("/search/subject", changed)
    assert refused.status_code == 400
    assert "page.token belongs to another search" in refused.text
    for page in ({"token": "garbage!"}, {"limit": 0}, {"limit": "2"}):
        assert pdp.post("/search/subject", {**body, "page": page}).status_code == 400
    assert len(pdp.records()) == before  # searching decides without recording


def test_a_search_over_more_candidates_than_its_bound_is_413(
    pdp: Pdp, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("reader-1", "reader-2", "reader-3"):
        pdp.agent(name)
    body = {
        "subject": {"type": "agent"},
        "action": {"name": "tool.call"},
        "resource": {"type": "tool", "id": "search"},
    }
    monkeypatch.setattr(authzen, "MAX_CANDIDATES", 2)
    refused = pdp.post("/search/subject", body)
    assert refused.status_code == 413
    assert "would decide on 3 subjects, over the 2 one search may consider" in refused.text
    monkeypatch.setattr(authzen, "MAX_CANDIDATES", 3)
    assert pdp.ok("/search/subject", body)["page"]["total"] == 3


def test_resource_search_lists_the_ids_the_policies_name_that_are_allowed(pdp: Pdp) -> None:
    reader = pdp.agent("reader")
    body = {
        "subject": {"type": "agent", "id": reader},
        "action": {"name": "tool.call"},
        "resource": {"type": "tool"},
    }
    found = pdp.ok("/search/resource", body)
    names = ["mail.draft", "read_file", "search", "sql.select", "summarize"]
    assert found["results"] == [{"type": "tool", "id": n} for n in names]
    for name in names:  # what a search returns, an evaluation allows
        assert pdp.ok("/evaluation", evaluation(reader, name)) == {"decision": True}


def test_action_search_lists_the_actions_allowed_on_the_resource(pdp: Pdp) -> None:
    reader = pdp.agent("reader")
    body = {
        "subject": {"type": "agent", "id": reader},
        "resource": {"type": "tool", "id": "search"},
    }
    assert pdp.ok("/search/action", body) == {
        "page": {"next_token": "", "count": 1, "total": 1},
        "results": [{"name": "tool.call"}],
    }
    body["resource"] = {"type": "tool", "id": "payments.transfer"}
    assert pdp.ok("/search/action", body)["results"] == []


def test_searching_does_not_use_up_limits(pdp: Pdp) -> None:
    external = pdp.agent("outsider", agentType="external")
    body = {
        "subject": {"type": "agent", "id": external},
        "action": {"name": "tool.call"},
        "resource": {"type": "tool"},
    }
    for _ in range(70):  # external_search allows 60 calls a minute
        assert {"type": "tool", "id": "web.search"} in pdp.ok("/search/resource", body)["results"]
    assert pdp.ok("/evaluation", evaluation(external, "web.search")) == {"decision": True}


def test_a_retried_evaluation_uses_up_its_limit_once(pdp: Pdp) -> None:
    external = pdp.agent("retrier", agentType="external")
    search = evaluation(external, "web.search")

    def allowed(key: str, body: Any = search) -> Any:
        response = pdp.post("/evaluation", body, **({"Idempotency-Key": key} if key else {}))
        assert response.status_code == 200, response.text
        return response.json()["decision"]

    assert [allowed("call-0") for _ in range(3)] == [True] * 3  # one call, sent three times
    batch = {"evaluations": [search, search]}
    for _ in range(2):  # a batch retried: each of its evaluations counts once
        response = pdp.post("/evaluations", batch, **{"Idempotency-Key": "batch-0"})
        assert [r["decision"] for r in response.json()["evaluations"]] == [True, True]
    assert [allowed(f"call-{n}") for n in range(1, 58)] == [True] * 57  # 60 a minute in all
    assert allowed("call-58") is False
    assert allowed("") is False  # without a key, each evaluation is a new call


# ------------------------------------------------------------------ tessera serve


def test_tessera_serve_offers_authzen_and_ext_authz(tmp_path: Path) -> None:
    with (
        store_url("sqlite", tmp_path) as url,
        tessera_serve(
            *("--policies", str(SHIPPED_POLICIES), "--store", url),
            *("--port", "0", "--http-port", "0", "--metrics-port", "-1", "--grace", "1"),
            *("--admin-token", ADMIN_TOKEN),
            lines=5,
        ) as (_, lines),
    ):
        grpc_port = re.search(r"Authorizer on 127\.0\.0\.1:(\d+)", lines[0])
        authzen = re.search(r"AuthZEN at (http://127\.0\.0\.1:\d+)/access/v1", lines[3])
        assert grpc_port and authzen, lines
        assert re.search(r"Envoy ext_authz .* on port (\d+)", lines[4]), lines
        base = authzen.group(1)
        with httpx.Client(
            base_url=base, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=10
        ) as http:
            created = http.post(
                "/scim/v2/Agents",
                json={
                    "schemas": [AGENT_SCHEMA, AGENT_EXTENSION],
                    "name": "reader",
                    AGENT_EXTENSION: {"owner": "ops", "riskLevel": "low"},
                },
            )
            assert created.status_code == 201, created.text
            oauth = http.get("/.well-known/oauth-authorization-server")
            assert oauth.status_code == 200  # the issuer's routes are served beside AuthZEN
            metadata = http.get("/.well-known/authzen-configuration").json()
            assert metadata["access_evaluation_endpoint"] == f"{base}/access/v1/evaluation"
            answer: dict[str, Any] = {}
            for _ in range(100):  # the directory follows the store within a second
                answer = http.post(
                    "/access/v1/evaluation", json=evaluation(created.json()["id"])
                ).json()
                if answer["decision"]:
                    break
            assert answer == {"decision": True}
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port.group(1)}") as channel:
            check = auth_grpc.AuthorizationStub(channel).Check(auth.CheckRequest(), timeout=5)
            assert check.denied_response.status.code == 401


def test_tessera_serve_answers_a_wrong_method_405_with_allow(tmp_path: Path) -> None:
    """The AuthZEN routes share `tessera serve`'s HTTP port with the issuer's: a known path
    asked with another method is 405 naming the methods it takes, an unknown path 404."""
    with (
        store_url("sqlite", tmp_path) as url,
        tessera_serve(
            *("--policies", str(SHIPPED_POLICIES), "--store", url),
            *("--port", "0", "--http-port", "0", "--metrics-port", "-1", "--grace", "1"),
            *("--admin-token", ADMIN_TOKEN),
            lines=4,
        ) as (_, lines),
    ):
        found = re.search(r"AuthZEN at (http://127\.0\.0\.1:\d+)/access/v1", lines[3])
        assert found, lines
        with httpx.Client(base_url=found.group(1), timeout=10) as http:
            for path in ("evaluation", "evaluations", "search/subject", "search/action"):
                for method in ("GET", "PUT", "DELETE"):
                    response = http.request(method, f"{AUTHZEN_PATH}/{path}")
                    assert response.status_code == 405, (method, path, response.text)
                    assert response.headers["allow"] == "POST"
            metadata = http.post("/.well-known/authzen-configuration")
            assert metadata.status_code == 405
            assert set(metadata.headers["allow"].split(", ")) == {"GET", "HEAD"}  # a set's order
            token = http.get("/oauth/token")  # the issuer's routes alike
            assert (token.status_code, token.headers["allow"]) == (405, "POST")
            assert http.get(f"{AUTHZEN_PATH}/nothing").status_code == 404
            assert http.get("/nowhere").status_code == 404
