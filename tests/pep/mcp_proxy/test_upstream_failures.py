"""An upstream that fails, for real: a small HTTP server on 127.0.0.1 that answers 500 or
503, or does not answer within the upstream's timeout, or starts an SSE answer and leaves
requests unanswered, and a port nobody listens on. Each request the proxy forwarded gets a
JSON-RPC error (``-32603``) with its own id; a batch gets one per request, next to the
proxy's own answers for the calls it refused."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from typing import Any

import httpx
import pytest
from mcp_types.version import LATEST_HANDSHAKE_VERSION
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from issuer.app import bind
from pep.mcp_proxy.config import Upstream
from pep.mcp_proxy.jsonrpc import FORBIDDEN, UPSTREAM_ERROR
from tests.pep.mcp_proxy.test_proxy import call, machine, modern, token_for
from tests.pep.mcp_proxy.test_upstreams import request
from tests.pep.mcp_proxy.world import World, world

TIMEOUT = 10.0
ACCEPT = "application/json, text/event-stream"
UPSTREAM_TIMEOUT = 0.3  # seconds the hanging upstream is given
HANG_POLLS = 200  # at most 10 s of 50 ms polls before the hanging upstream answers anyway


class Misbehaving:
    """An HTTP server whose every POST fails: ``/status/<code>`` answers that status with
    a text body (a JSON body with ``?body=json``), ``/hang`` answers only after the client
    has given up. ``/sse/<how>`` starts an SSE answer with a progress notification, then:
    ``quiet`` sends nothing more until the client has gone, ``cut`` ends the stream,
    ``resumable`` ends it after an event with an id, ``first`` answers the first request of
    the batch and goes quiet, ``pinging`` sends only keep-alive comments, ``array`` answers
    every request in one event (a JSON array) with the same tools. ``/refuse/<code>``
    answers that status with a JSON-RPC error of ``id: null`` (a text body with
    ``?body=text``). It counts the requests it gets."""

    def __init__(self) -> None:
        self.count = 0
        self.lock = threading.Lock()

    def app(self) -> Starlette:
        routes = [
            Route("/status/{code:int}", self.status, methods=["POST"]),
            Route("/hang", self.hang, methods=["POST"]),
            Route("/refuse/{code:int}", self.refuse, methods=["POST"]),
            Route("/sse/{how}", self.sse, methods=["POST"]),
        ]
        return Starlette(routes=routes)

    def _seen(self) -> None:
        with self.lock:
            self.count += 1

    async def status(self, request: Request) -> Response:
        await request.body()
        self._seen()
        code = int(request.path_params["code"])
        if request.query_params.get("body") == "json":
            return JSONResponse({"error": "the service is unavailable"}, code)
        return PlainTextResponse("the service is unavailable", code)

    async def refuse(self, request: Request) -> Response:
        await request.body()
        self._seen()
        code = int(request.path_params["code"])
        if request.query_params.get("body") == "text":
            return PlainTextResponse("no such thing", code)
        refusal = {"code": -32600, "message": "Bad Request: Missing session ID"}
        return JSONResponse({"jsonrpc": "2.0", "id": None, "error": refusal}, code)

    async def hang(self, request: Request) -> Response:
        await request.body()
        self._seen()
        for _ in range(HANG_POLLS):
            if await request.is_disconnected():
                break
            await asyncio.sleep(0.05)
        return PlainTextResponse("too late", 200)

    async def sse(self, request: Request) -> Response:
        body = json.loads(await request.body())
        sent = body if isinstance(body, list) else [body]
        first = sent[0]
        self._seen()
        how = request.path_params["how"]

        async def events() -> AsyncIterator[bytes]:
            progress = {"jsonrpc": "2.0", "method": "notifications/progress", "params": {}}
            event_id = b"id: 1\n" if how == "resumable" else b""
            yield event_id + b"event: message\ndata: " + json.dumps(progress).encode() + b"\n\n"
            if how == "first":
                answer = {"jsonrpc": "2.0", "id": first["id"], "result": {"content": []}}
                yield b"event: message\ndata: " + json.dumps(answer).encode() + b"\n\n"
            if how == "array":
                tools = {"tools": [{"name": "search"}, {"name": "fs.delete"}]}
                answers = [{"jsonrpc": "2.0", "id": m["id"], "result": tools} for m in sent]
                yield b"data: " + json.dumps(answers).encode() + b"\n\n"
            if how in ("quiet", "first", "pinging"):
                for _ in range(HANG_POLLS):
                    if await request.is_disconnected():
                        return
                    if how == "pinging":
                        yield b": ping\n\n"
                    await asyncio.sleep(0.05)

        return StreamingResponse(events(), media_type="text/event-stream")


@dataclass(frozen=True)
class Failing:
    """A proxy in front of failing upstreams, and the server behind them."""

    origin: str
    server: Misbehaving

    def url(self, name: str) -> str:
        return f"{self.origin}/mcp/{name}"


@pytest.fixture(scope="module")
def w(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with world("sqlite", tmp_path_factory.mktemp("failures")) as built:
        yield built


@pytest.fixture(scope="module")
def failing(w: World) -> Failing:
    server = Misbehaving()
    at = w.serve(server.app())
    closed = bind("127.0.0.1", 0)  # a port nobody listens on
    refused_url = f"http://127.0.0.1:{closed.getsockname()[1]}/mcp"
    closed.close()
    base = w.config.upstreams[0]

    def upstream(name: str, url: str, **changes: Any) -> Upstream:
        return replace(base, name=name, path=f"/mcp/{name}", url=url, **changes)

    upstreams = (
        upstream("error500", f"{at}/status/500"),
        upstream("error503", f"{at}/status/503"),
        upstream("json500", f"{at}/status/500?body=json"),
        upstream("json503", f"{at}/status/503?body=json"),
        upstream("hang", f"{at}/hang", timeout=UPSTREAM_TIMEOUT),
        upstream("refused", refused_url),
        upstream("refuse400", f"{at}/refuse/400"),
        upstream("refuse404", f"{at}/refuse/404"),
        upstream("text400", f"{at}/refuse/400?body=text"),
        *(
            upstream(how, f"{at}/sse/{how}", timeout=UPSTREAM_TIMEOUT)
            for how in ("quiet", "cut", "resumable", "first", "pinging", "array")
        ),
    )
    return Failing(w.add_proxy(upstreams), server)


FAILURES = [
    ("error500", "failed"),
    ("error503", "failed"),
    ("json500", "failed"),
    ("json503", "failed"),
    ("hang", "timed out"),
    ("refused", "is unreachable"),
]

# The same failures, where the proxy has a list to filter or answers of its own to merge
# (a 5xx JSON answer was once rewritten and passed on with its status).
REWRITTEN = FAILURES


def post_at(url: str, body: Any, token: str, **headers: str) -> httpx.Response:
    sent = {"Accept": ACCEPT, "Authorization": f"Bearer {token}", **headers}
    return httpx.post(url, json=body, headers=sent, timeout=TIMEOUT)


def failed(id: Any, name: str, reason: str) -> dict[str, Any]:
    message = f"upstream {name!r} {reason}"
    return {"jsonrpc": "2.0", "id": id, "error": {"code": UPSTREAM_ERROR, "message": message}}


def token_at(w: World, failing: Failing, name: str) -> str:
    """A new agent's token for the failing upstream ``name``."""
    return token_for(w, machine(w), resource=failing.url(name))


@pytest.mark.parametrize(("name", "reason"), FAILURES)
def test_a_failed_request_is_a_json_rpc_error_with_its_id(
    w: World, failing: Failing, name: str, reason: str
) -> None:
    token = token_at(w, failing, name)
    before = failing.server.count
    body = call("search", {"query": "x"}, id=7)
    response = post_at(failing.url(name), body, token, **modern("search"))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == failed(7, name, reason)
    assert response.headers["tessera-decision-id"]  # the call was decided and allowed
    if name != "refused":
        assert failing.server.count == before + 1  # it did go to the upstream


@pytest.mark.parametrize(("name", "reason"), REWRITTEN)
def test_a_failed_batch_gets_one_error_per_request(
    w: World, failing: Failing, name: str, reason: str
) -> None:
    token = token_at(w, failing, name)
    batch = [
        call("search", {"query": "one"}, id=1),
        request("tools/list", {}, id="two"),
        {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 9}},
        request("ping", {}, id=3),
    ]
    response = post_at(failing.url(name), batch, token)
    assert response.status_code == 200, response.text
    assert response.json() == [failed(i, name, reason) for i in (1, "two", 3)]


@pytest.mark.parametrize(("name", "reason"), REWRITTEN)
def test_a_failed_batch_keeps_the_proxys_own_refusals(
    w: World, failing: Failing, name: str, reason: str
) -> None:
    """The refused call is answered by the proxy; only the allowed ones failed upstream."""
    token = token_at(w, failing, name)
    batch = [
        call("search", {"query": "one"}, id=1),
        call("payments.transfer", {"amount": 5}, id=2),  # no policy lets this agent pay
        call("search", {"query": "three"}, id=3),
    ]
    response = post_at(failing.url(name), batch, token)
    assert response.status_code == 200, response.text
    answers = {a["id"]: a for a in response.json()}
    assert set(answers) == {1, 2, 3}
    assert answers[2]["error"]["code"] == FORBIDDEN
    assert answers[1] == failed(1, name, reason)
    assert answers[3] == failed(3, name, reason)
    assert len(response.headers["tessera-decision-id"].split(",")) == 3


@pytest.mark.parametrize(("name", "reason"), REWRITTEN)
def test_a_list_the_proxy_would_filter_is_a_json_rpc_error(
    w: World, failing: Failing, name: str, reason: str
) -> None:
    token = token_at(w, failing, name)
    response = post_at(failing.url(name), request("tools/list", {}, id=11), token)
    assert response.status_code == 200, response.text
    assert response.json() == failed(11, name, reason)


def test_a_hanging_upstream_is_given_up_on_after_its_timeout(w: World, failing: Failing) -> None:
    token = token_at(w, failing, "hang")
    body = call("search", {"query": "x"})
    response = post_at(failing.url("hang"), body, token, **modern("search"))
    assert response.json() == failed(1, "hang", "timed out")
    assert response.elapsed.total_seconds() < UPSTREAM_TIMEOUT + 2.0


def sse_messages(response: httpx.Response) -> list[Any]:
    """The JSON-RPC messages of an SSE answer, in order."""
    assert response.headers["content-type"].startswith("text/event-stream")
    return [
        json.loads(line.removeprefix("data:"))
        for line in response.text.splitlines()
        if line.startswith("data:")
    ]


PROGRESS = {"jsonrpc": "2.0", "method": "notifications/progress", "params": {}}


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("quiet", "timed out"),
        ("cut", "ended the stream without answering"),
        ("pinging", "timed out"),  # keep-alive comments say nothing of the request
    ],
)
def test_an_sse_answer_that_leaves_a_request_unanswered_ends_with_its_error(
    w: World, failing: Failing, name: str, reason: str
) -> None:
    """The progress passes at once; the error follows, and the stream ends."""
    token = token_at(w, failing, name)
    body = call("search", {"query": "x"}, id=7)
    response = post_at(failing.url(name), body, token, **modern("search"))
    assert response.status_code == 200, response.text
    assert sse_messages(response) == [PROGRESS, failed(7, name, reason)]
    assert response.elapsed.total_seconds() < UPSTREAM_TIMEOUT + 2.0


def test_answers_in_one_event_are_each_counted_and_a_list_among_them_filtered(
    w: World, failing: Failing
) -> None:
    token = token_at(w, failing, "array")
    batch = [request("tools/list", {}, id=1), request("tools/list", {}, id=2)]
    response = post_at(failing.url("array"), batch, token)
    assert response.status_code == 200, response.text
    kept = {"tools": [{"name": "search"}]}  # fs.delete is not this agent's to call
    assert sse_messages(response) == [
        PROGRESS,
        [{"jsonrpc": "2.0", "id": i, "result": kept} for i in (1, 2)],
    ]


def test_only_the_unanswered_requests_of_a_streamed_batch_get_errors(
    w: World, failing: Failing
) -> None:
    token = token_at(w, failing, "first")
    batch = [
        call("search", {"query": "one"}, id=1),
        call("payments.transfer", {"amount": 5}, id=2),  # refused by the proxy
        call("search", {"query": "three"}, id=3),
    ]
    response = post_at(failing.url("first"), batch, token)
    assert response.status_code == 200, response.text
    messages = sse_messages(response)
    assert messages[0]["id"] == 2 and messages[0]["error"]["code"] == FORBIDDEN
    assert messages[1:] == [
        PROGRESS,
        {"jsonrpc": "2.0", "id": 1, "result": {"content": []}},
        failed(3, "first", "timed out"),
    ]


def test_a_resumable_sse_answer_is_left_to_the_client_to_resume(w: World, failing: Failing) -> None:
    """Before 2026-07-28, an event with an id lets the client resume with Last-Event-ID,
    so the end of the stream is not a failure."""
    token = token_at(w, failing, "resumable")
    body = call("search", {"query": "x"}, id=7)
    headers = {**modern("search"), "MCP-Protocol-Version": LATEST_HANDSHAKE_VERSION}
    response = post_at(failing.url("resumable"), body, token, **headers)
    assert response.status_code == 200, response.text
    assert sse_messages(response) == [PROGRESS]
    assert "id: 1" in response.text


def test_a_stateless_client_cannot_resume_so_the_end_is_a_failure(
    w: World, failing: Failing
) -> None:
    """MCP 2026-07-28 has no resumable streams: event ids or not, the request failed."""
    token = token_at(w, failing, "resumable")
    body = call("search", {"query": "x"}, id=7)
    response = post_at(failing.url("resumable"), body, token, **modern("search"))
    assert response.status_code == 200, response.text
    reason = "ended the stream without answering"
    assert sse_messages(response) == [PROGRESS, failed(7, "resumable", reason)]


# -- an upstream's refusal that names no request


MISSING_SESSION = {"code": -32600, "message": "Bad Request: Missing session ID"}


@pytest.mark.parametrize("name", ["refuse400", "refuse404"])
def test_an_upstream_refusal_without_an_id_gets_the_requests_id(
    w: World, failing: Failing, name: str
) -> None:
    """Its status (a 404 tells a client to start a new session) and its error, with the id
    of the one request it refused: the client can tell which call failed."""
    token = token_at(w, failing, name)
    response = post_at(failing.url(name), call("search", {"query": "x"}, id=7), token)
    assert response.status_code == int(name.removeprefix("refuse")), response.text
    assert response.json() == {"jsonrpc": "2.0", "id": 7, "error": MISSING_SESSION}


def test_an_upstream_refusal_of_a_batch_reaches_each_request_by_its_id(
    w: World, failing: Failing
) -> None:
    token = token_at(w, failing, "refuse400")
    batch = [
        call("search", {"query": "one"}, id=1),
        call("payments.transfer", {"amount": 5}, id=2),  # refused by the proxy
        {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 9}},
        request("ping", {}, id="three"),
    ]
    response = post_at(failing.url("refuse400"), batch, token)
    assert response.status_code == 400, response.text
    answers = {a["id"]: a for a in response.json()}
    assert set(answers) == {1, 2, "three"}
    assert answers[2]["error"]["code"] == FORBIDDEN
    for id in (1, "three"):
        assert answers[id] == {"jsonrpc": "2.0", "id": id, "error": MISSING_SESSION}


def test_an_upstream_refusal_that_is_not_json_rpc_is_an_error_with_the_requests_id(
    w: World, failing: Failing
) -> None:
    token = token_at(w, failing, "text400")
    response = post_at(failing.url("text400"), call("search", {"query": "x"}, id=7), token)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json() == failed(7, "text400", "refused the request (HTTP 400)")


def test_an_sdk_servers_refusal_without_an_id_gets_the_requests_id(w: World) -> None:
    """The SDK's server refuses a handshake-era call outside a session with ``id: null``."""
    token = token_for(w, machine(w))
    headers = {"MCP-Protocol-Version": LATEST_HANDSHAKE_VERSION}
    response = post_at(w.url, call("search", {"query": "x"}, id="mine"), token, **headers)
    assert response.status_code == 400, response.text
    answer = response.json()
    assert answer["id"] == "mine", answer
    assert answer["error"]["code"] == -32600
