"""The Streamable HTTP and JSON-RPC rules at the proxy, against a recording upstream on
127.0.0.1 (what reached it, headers and body) and the SDK upstream: media types, batch
members checked one by one, calls that cannot be answered refused, headers given twice
refused, routing and parameter headers as MCP 2026-07-28 clients send them, the
upstream's refusal of the proxy's credential, and sessions a server will not end."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import httpx
import pytest
from mcp_types.version import LATEST_MODERN_VERSION
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from pep.mcp_proxy.jsonrpc import HEADER_MISMATCH, INVALID_REQUEST, PARSE_ERROR, UPSTREAM_ERROR
from tests.pep.mcp_proxy.test_proxy import ACCEPT, call, machine, modern, post, token_for
from tests.pep.mcp_proxy.test_upstreams import request
from tests.pep.mcp_proxy.world import World, world

TIMEOUT = 10.0
SESSION = "session-1"
APP = "https://app.example"  # a browser application's origin, allowed by the proxy


@dataclass
class Recorder:
    """An HTTP JSON-RPC server that records each request it gets. ``/ok`` answers each
    request with its method (202 when there is none to answer), hands out a session on
    ``initialize`` and will not end one (DELETE is 405); ``/refuses`` answers 401."""

    seen: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def app(self) -> Starlette:
        methods = ["GET", "POST", "DELETE"]
        return Starlette(
            routes=[
                Route("/ok", self.ok, methods=methods),
                Route("/refuses", self.refuses, methods=methods),
            ]
        )

    async def _record(self, request: Request) -> bytes:
        body = await request.body()
        with self.lock:
            self.seen.append((request.method, dict(request.headers), body))
        return body

    def last(self) -> tuple[str, dict[str, str], bytes]:
        with self.lock:
            return self.seen[-1]

    def count(self) -> int:
        with self.lock:
            return len(self.seen)

    async def ok(self, request: Request) -> Response:
        body = await self._record(request)
        if request.method == "DELETE":
            return Response(status_code=405, headers={"Allow": "GET, POST"})
        if request.method == "GET":
            return Response(status_code=405, headers={"Allow": "POST"})
        parsed = json.loads(body)
        messages = parsed if isinstance(parsed, list) else [parsed]
        answers = [
            {"jsonrpc": "2.0", "id": m["id"], "result": {"method": m["method"]}}
            for m in messages
            if "id" in m and "method" in m
        ]
        headers = {"Mcp-Session-Id": SESSION} if messages[0].get("method") == "initialize" else {}
        if not answers:
            return Response(status_code=202, headers=headers)
        return JSONResponse(answers if isinstance(parsed, list) else answers[0], headers=headers)

    async def refuses(self, request: Request) -> Response:
        await self._record(request)
        challenge = {"WWW-Authenticate": 'Bearer error="invalid_token"'}
        return JSONResponse({"error": "invalid_token"}, 401, headers=challenge)


@dataclass(frozen=True)
class Recorded:
    """A proxy in front of the recorder (``/mcp/ok``, ``/mcp/refuses``), and a token."""

    origin: str
    recorder: Recorder
    token: str

    def post(self, name: str, body: Any, *pairs: tuple[str, str], **headers: str) -> httpx.Response:
        sent = [
            ("Accept", ACCEPT),
            ("Content-Type", "application/json"),
            ("Authorization", f"Bearer {self.token}"),
            *headers.items(),
            *pairs,
        ]
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return httpx.post(
            f"{self.origin}/mcp/{name}", content=content, headers=sent, timeout=TIMEOUT
        )


@pytest.fixture(scope="module")
def w(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with world("sqlite", tmp_path_factory.mktemp("protocol")) as built:
        yield built


@pytest.fixture(scope="module")
def recorded(w: World) -> Recorded:
    recorder = Recorder()
    at = w.serve(recorder.app())
    base = w.config.upstreams[0]
    upstreams = tuple(
        replace(base, name=name, path=f"/mcp/{name}", url=f"{at}/{name}")
        for name in ("ok", "refuses")
    )
    origin = w.add_proxy(upstreams, allowed_origins=(APP,))
    token = token_for(w, machine(w), resource=f"{origin}/mcp/ok")
    return Recorded(origin, recorder, token)


def refused(response: httpx.Response, status: int, code: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    answer: dict[str, Any] = response.json()
    assert answer["error"]["code"] == code, answer
    return answer


# -- media types


def test_a_body_that_is_not_json_by_its_content_type_is_415(w: World) -> None:
    token = token_for(w, machine(w))
    body = json.dumps(call("search", {"query": "x"}))
    headers = {"Authorization": f"Bearer {token}", "Accept": ACCEPT, "Content-Type": "text/plain"}
    response = httpx.post(w.url, content=body, headers=headers, timeout=TIMEOUT)
    assert refused(response, 415, INVALID_REQUEST)["error"]["message"] == (
        "Content-Type must be application/json"
    )


@pytest.mark.parametrize("accept", ["text/html", "application/json", "text/event-stream"])
def test_a_post_must_accept_json_and_event_streams(w: World, accept: str) -> None:
    token = token_for(w, machine(w))
    response = post(w, call("search", {"query": "x"}), token, Accept=accept, **modern("search"))
    refused(response, 406, INVALID_REQUEST)


def test_wildcards_accept_both(w: World) -> None:
    token = token_for(w, machine(w))
    response = post(w, call("search", {"query": "x"}), token, Accept="*/*", **modern("search"))
    assert response.status_code == 200, response.text


def test_a_get_must_accept_an_event_stream(w: World) -> None:
    token = token_for(w, machine(w))
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
    refused(httpx.get(w.url, headers=headers, timeout=TIMEOUT), 406, INVALID_REQUEST)


# -- JSON-RPC messages and batches


def test_each_invalid_member_of_a_batch_gets_its_own_error(recorded: Recorded) -> None:
    """JSON-RPC 2.0 §6: the valid members are answered, each invalid one with -32600."""
    ping = request("ping", {}, id=1)
    response = recorded.post("ok", [ping, {"foo": 1}, {"jsonrpc": "2.0", "id": 2, "method": 5}])
    assert response.status_code == 200, response.text
    answers = response.json()
    assert [a["error"]["code"] for a in answers[:2]] == [INVALID_REQUEST, INVALID_REQUEST]
    assert [a["id"] for a in answers[:2]] == [None, 2]
    assert answers[2] == {"jsonrpc": "2.0", "id": 1, "result": {"method": "ping"}}
    assert json.loads(recorded.recorder.last()[2]) == [ping]  # only the valid one went on


@pytest.mark.parametrize("version", ["2025-06-18", "2025-11-25", LATEST_MODERN_VERSION])
def test_a_batch_is_refused_in_a_revision_without_batches(recorded: Recorded, version: str) -> None:
    """MCP 2025-06-18 removed JSON-RPC batching: one invalid request (JSON-RPC 2.0 §6),
    400 as Streamable HTTP answers a message it cannot accept; nothing goes on."""
    before = recorded.recorder.count()
    batch = [request("ping", {}, id=1), request("tools/list", {}, id=2)]
    response = recorded.post("ok", batch, **{"MCP-Protocol-Version": version})
    assert response.status_code == 400, response.text
    message = f"MCP {version} has no JSON-RPC batches (removed in 2025-06-18): send each alone"
    assert response.json() == {
        "jsonrpc": "2.0",
        "id": None,
        "error": {"code": INVALID_REQUEST, "message": message},
    }
    assert recorded.recorder.count() == before


def test_a_batch_in_a_revision_the_proxy_does_not_know_is_refused(recorded: Recorded) -> None:
    before = recorded.recorder.count()
    batch = [request("ping", {}, id=1)]
    answer = refused(
        recorded.post("ok", batch, **{"MCP-Protocol-Version": "2099-01-01"}), 400, INVALID_REQUEST
    )
    assert answer["id"] is None
    assert recorded.recorder.count() == before


@pytest.mark.parametrize("version", ["2024-11-05", "2025-03-26", None])
def test_a_batch_goes_on_in_a_revision_with_batches(
    recorded: Recorded, version: str | None
) -> None:
    """Before 2025-06-18, and without the header (a server then assumes 2025-03-26)."""
    batch = [request("ping", {}, id=1), request("tools/list", {}, id=2)]
    headers = {"MCP-Protocol-Version": version} if version else {}
    response = recorded.post("ok", batch, **headers)
    assert response.status_code == 200, response.text
    assert [a["id"] for a in response.json()] == [1, 2]
    assert json.loads(recorded.recorder.last()[2]) == batch


def test_a_batch_of_nothing_valid_is_400_with_an_error_each(recorded: Recorded) -> None:
    response = recorded.post("ok", b"[1, 2]")
    assert response.status_code == 400
    assert [a["error"]["code"] for a in response.json()] == [INVALID_REQUEST, INVALID_REQUEST]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"[]", "the batch is empty"),
        (b'{"jsonrpc": "2.0", "id": {"a": 1}, "method": "ping"}', "an id is a string"),
        (b'{"jsonrpc": "2.0", "id": 1}', "a response has an id and either a result or an error"),
        (b'{"jsonrpc": "1.0", "id": 1, "method": "ping"}', "not a JSON-RPC 2.0 message"),
    ],
)
def test_a_message_that_is_not_json_rpc_is_400(
    recorded: Recorded, body: bytes, message: str
) -> None:
    before = recorded.recorder.count()
    answer = refused(recorded.post("ok", body), 400, INVALID_REQUEST)
    assert answer["error"]["message"].startswith(message)
    assert recorded.recorder.count() == before


def test_a_decided_call_sent_as_a_notification_is_refused(recorded: Recorded) -> None:
    """A notification gets no answer, so a deny could not be told; it never goes on."""
    before = recorded.recorder.count()
    notification = {k: v for k, v in call("fs.delete", {"path": "/"}).items() if k != "id"}
    answer = refused(recorded.post("ok", notification), 400, INVALID_REQUEST)
    assert answer["error"]["message"] == "tools/call is a request: it needs an id"
    refused(recorded.post("ok", [request("ping", {}), notification]), 400, INVALID_REQUEST)
    assert recorded.recorder.count() == before


def test_a_batch_that_repeats_a_request_id_is_refused(recorded: Recorded) -> None:
    """Answers are matched by id: a repeated one would let a list escape its filter."""
    before = recorded.recorder.count()
    batch = [request("tools/list", {}, id=1), request("prompts/list", {}, id=1)]
    answer = refused(recorded.post("ok", batch), 400, INVALID_REQUEST)
    assert answer["error"]["message"] == "the batch gives the request id 1 twice"
    assert recorded.recorder.count() == before


def test_ids_that_are_one_number_are_one_id(recorded: Recorded) -> None:
    """1 and 1.0 are the same id to a JavaScript server: a list must not escape its filter
    under the other's answer."""
    batch = [request("tools/list", {}, id=1), request("prompts/list", {}, id=1.0)]
    answer = refused(recorded.post("ok", batch), 400, INVALID_REQUEST)
    assert answer["error"]["message"] == "the batch gives the request id 1.0 twice"


def test_a_lone_surrogate_in_a_string_is_a_parse_error(recorded: Recorded) -> None:
    """RFC 8259 §8.2: such text is not interoperable, so the upstream might read it another
    way than the proxy decided it; it is refused, as at every Tessera door."""
    before = recorded.recorder.count()
    raw = b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "search", '
    raw += b'"arguments": {"query": "\\ud800"}}}'
    answer = refused(recorded.post("ok", raw), 400, PARSE_ERROR)
    assert answer["id"] is None
    assert answer["error"]["message"].startswith("the document is not JSON")
    assert recorded.recorder.count() == before


def test_the_upstream_gets_the_message_as_the_proxy_read_it(recorded: Recorded) -> None:
    """A repeated member name: the proxy decides on the last, and sends only that one."""
    raw = (
        b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": '
        b'{"name": "fs.delete", "name": "search", "arguments": {}}}'
    )
    response = recorded.post("ok", raw)
    assert response.status_code == 200, response.text
    sent = recorded.recorder.last()[2]
    assert b"fs.delete" not in sent
    assert json.loads(sent)["params"]["name"] == "search"


# -- headers


def test_two_authorization_headers_are_an_invalid_request(recorded: Recorded) -> None:
    """RFC 6750 §3.1: 400 invalid_request, whichever of the two is valid."""
    response = recorded.post("ok", request("ping", {}), ("Authorization", "Bearer other"))
    assert response.status_code == 400
    assert response.headers["www-authenticate"].startswith('Bearer error="invalid_request"')


def test_a_routing_header_given_twice_is_refused(recorded: Recorded) -> None:
    body = call("search", {"query": "x"})
    response = recorded.post("ok", body, ("Mcp-Name", "search"), ("Mcp-Name", "fs.delete"))
    answer = refused(response, 400, INVALID_REQUEST)
    assert answer["error"]["message"] == "mcp-name is given more than once"


def test_a_base64_mcp_name_is_read_as_its_value(w: World) -> None:
    """MCP 2026-07-28: a name that is not plain printable ASCII comes as =?base64?…?=."""
    token = token_for(w, machine(w))
    headers = {**modern("search"), "Mcp-Name": "=?base64?c2VhcmNo?="}  # "search"
    response = post(w, call("search", {"query": "x"}), token, **headers)
    assert response.status_code == 200, response.text
    assert "found x" in response.text
    headers["Mcp-Name"] = "=?base64?not base64?="
    refused(post(w, call("search", {"query": "x"}), token, **headers), 400, HEADER_MISMATCH)


def test_parameter_headers_go_to_the_upstream(recorded: Recorded) -> None:
    """Mcp-Param-<Name> carries a tool argument the server routes on (x-mcp-header)."""
    response = recorded.post("ok", call("search", {"query": "x"}), **{"Mcp-Param-Query": "x"})
    assert response.status_code == 200, response.text
    _, headers, _ = recorded.recorder.last()
    assert headers["mcp-param-query"] == "x"
    assert "authorization" in headers and recorded.token not in headers["authorization"]


# -- the upstream's answers


def test_an_upstream_that_refuses_the_proxys_credential_is_a_json_rpc_error(
    w: World, recorded: Recorded
) -> None:
    """Not a 401 to the client: its own token was good, and it must not sign in again."""
    token = token_for(w, machine(w), resource=f"{recorded.origin}/mcp/refuses")
    response = replace(recorded, token=token).post("refuses", request("tools/list", {}, id=4))
    assert response.status_code == 200, response.text
    assert "www-authenticate" not in response.headers
    message = "upstream 'refuses' refused the proxy's credential"
    assert response.json() == {
        "jsonrpc": "2.0",
        "id": 4,
        "error": {"code": UPSTREAM_ERROR, "message": message},
    }


def test_a_session_the_server_will_not_end_stays_open(recorded: Recorded) -> None:
    opened = recorded.post("ok", request("initialize", {}))
    assert opened.headers["mcp-session-id"] == SESSION
    headers = {"Authorization": f"Bearer {recorded.token}", "Mcp-Session-Id": SESSION}
    ended = httpx.delete(f"{recorded.origin}/mcp/ok", headers=headers, timeout=TIMEOUT)
    assert ended.status_code == 405
    later = recorded.post("ok", request("ping", {}, id=9), **{"Mcp-Session-Id": SESSION})
    assert later.status_code == 200, later.text


def test_a_stateless_request_passes_no_session_id_on(recorded: Recorded) -> None:
    """Else a caller could name another's session to the upstream, unchecked."""
    stateless = {"MCP-Protocol-Version": LATEST_MODERN_VERSION, "Mcp-Session-Id": SESSION}
    response = recorded.post("ok", request("ping", {}, id=3), **stateless)
    assert response.status_code == 200, response.text
    _, headers, _ = recorded.recorder.last()
    assert "mcp-session-id" not in headers
    assert headers["mcp-protocol-version"] == LATEST_MODERN_VERSION


def test_a_stateless_request_ignores_a_session_id(w: World) -> None:
    """MCP 2026-07-28 has no sessions: a stray Mcp-Session-Id is not a session to check."""
    token = token_for(w, machine(w))
    headers = {**modern("search"), "Mcp-Session-Id": "from-an-older-client"}
    response = post(w, call("search", {"query": "x"}), token, **headers)
    assert response.status_code == 200, response.text
    assert "found x" in response.text


def test_a_session_belongs_to_the_upstream_that_opened_it(w: World, recorded: Recorded) -> None:
    """Two servers may hand out the same id: each one's sessions are its own."""
    client = machine(w)
    at_ok = replace(recorded, token=token_for(w, client, resource=f"{recorded.origin}/mcp/ok"))
    at_other = replace(
        recorded, token=token_for(w, client, resource=f"{recorded.origin}/mcp/refuses")
    )
    assert at_ok.post("ok", request("initialize", {})).headers["mcp-session-id"] == SESSION
    elsewhere = at_other.post("refuses", request("ping", {}), **{"Mcp-Session-Id": SESSION})
    assert elsewhere.status_code == 404
    assert elsewhere.json()["error"]["message"] == "unknown session"


# -- browsers on other origins (CORS)


def test_an_allowed_origin_gets_its_preflight_answered(recorded: Recorded) -> None:
    preflight = {
        "Origin": APP,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type, mcp-param-query",
    }
    response = httpx.options(f"{recorded.origin}/mcp/ok", headers=preflight, timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    assert response.headers["access-control-allow-origin"] == APP
    allowed = response.headers["access-control-allow-headers"].lower()
    assert {"authorization", "mcp-param-query"} <= {h.strip() for h in allowed.split(",")}
    elsewhere = {**preflight, "Origin": "https://evil.example"}
    response = httpx.options(f"{recorded.origin}/mcp/ok", headers=elsewhere, timeout=TIMEOUT)
    assert response.status_code == 400
    assert "access-control-allow-origin" not in response.headers


def test_an_allowed_origin_may_read_the_session_and_the_decision(recorded: Recorded) -> None:
    response = recorded.post("ok", request("initialize", {}), Origin=APP)
    assert response.status_code == 200, response.text
    assert response.headers["access-control-allow-origin"] == APP
    exposed = {
        h.strip().lower() for h in response.headers["access-control-expose-headers"].split(",")
    }
    assert {"mcp-session-id", "www-authenticate", "tessera-decision-id"} <= exposed
