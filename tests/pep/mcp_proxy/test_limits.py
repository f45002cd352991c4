"""The proxy's bounds (docs/mcp.md, "Limits"), against real servers on 127.0.0.1: a body
that does not arrive in time, JSON nested too deep from the client, from a Streamable HTTP
upstream (a JSON answer the proxy rewrites, an SSE event) and from a stdio upstream. Each
ends in the protocol's own error, with the request's id where there is one, and the proxy
serves on."""

from __future__ import annotations

import json
import socket
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from typing import Any

import httpx
import pytest
from mcp_types.version import LATEST_HANDSHAKE_VERSION
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from issuer.wire import MAX_DEPTH
from pep.mcp_proxy.config import Upstream
from pep.mcp_proxy.jsonrpc import INVALID_REQUEST, PARSE_ERROR, UPSTREAM_ERROR
from tests.pep.mcp_proxy.test_proxy import ACCEPT, call, machine, modern, token_for
from tests.pep.mcp_proxy.test_upstreams import request
from tests.pep.mcp_proxy.tools import nesting_server
from tests.pep.mcp_proxy.world import World, world

TIMEOUT = 10.0
BODY_TIMEOUT = 1.0  # seconds the limited proxy waits for a body
NESTING = (sys.executable, "-m", "tests.pep.mcp_proxy.stdio_server", "nesting")
TOO_DEEP = f"the document nests deeper than {MAX_DEPTH} levels"


def nested_text(depth: int) -> bytes:
    """A JSON value ``depth`` arrays deep, as text (no recursion to write it)."""
    return b"[" * depth + b"]" * depth


class Deep:
    """An HTTP JSON-RPC server that answers every request with a result nested ``depth``
    levels deep (``/json/<depth>``: a JSON answer; ``/sse/<depth>``: one SSE event after
    a progress notification). It counts the requests it gets."""

    def __init__(self) -> None:
        self.count = 0
        self.lock = threading.Lock()

    def app(self) -> Starlette:
        routes = [
            Route("/json/{depth:int}", self.json, methods=["POST"]),
            Route("/sse/{depth:int}", self.sse, methods=["POST"]),
        ]
        return Starlette(routes=routes)

    async def _answers(self, request: Request) -> bytes:
        body = json.loads(await request.body())
        with self.lock:
            self.count += 1
        depth = int(request.path_params["depth"])
        ids = [m["id"] for m in (body if isinstance(body, list) else [body]) if "id" in m]
        answers = [
            b'{"jsonrpc":"2.0","id":%s,"result":{"tools":[],"deep":%s}}'
            % (json.dumps(id).encode(), nested_text(depth))
            for id in ids
        ]
        return b"[" + b",".join(answers) + b"]" if isinstance(body, list) else answers[0]

    async def json(self, request: Request) -> Response:
        return Response(await self._answers(request), media_type="application/json")

    async def sse(self, request: Request) -> Response:
        answers = await self._answers(request)

        async def events() -> AsyncIterator[bytes]:
            progress = {"jsonrpc": "2.0", "method": "notifications/progress", "params": {}}
            yield b"event: message\ndata: " + json.dumps(progress).encode() + b"\n\n"
            yield b"event: message\ndata: " + answers + b"\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")


@dataclass(frozen=True)
class Limited:
    """A proxy with a short body timeout in front of the deep servers, and the one that
    counts what reaches it."""

    origin: str
    deep: Deep

    def url(self, name: str) -> str:
        return f"{self.origin}/mcp/{name}"


@pytest.fixture(scope="module")
def w(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with world("sqlite", tmp_path_factory.mktemp("limits")) as built:
        yield built


@pytest.fixture(scope="module")
def limited(w: World) -> Limited:
    deep = Deep()
    at = w.serve(deep.app())
    sdk = nesting_server().streamable_http_app(streamable_http_path="/mcp", stateless_http=True)
    sdk_at = w.serve(sdk, lifespan=True)
    base = w.config.upstreams[0]

    def upstream(name: str, **changes: Any) -> Upstream:
        return replace(base, name=name, path=f"/mcp/{name}", **changes)

    upstreams = (
        upstream("plain", url=f"{at}/json/1"),
        *(upstream(f"json{d}", url=f"{at}/json/{d}") for d in (100, 1000)),
        *(upstream(f"sse{d}", url=f"{at}/sse/{d}") for d in (100, 1000)),
        upstream("sdk", url=f"{sdk_at}/mcp"),
        # a process that starts the SDK may take a while on a busy machine
        upstream("stdio", url=None, command=NESTING, credential="none", token="", timeout=30.0),
    )
    return Limited(w.add_proxy(upstreams, body_timeout=BODY_TIMEOUT), deep)


def post_to(url: str, body: bytes, token: str, **headers: str) -> httpx.Response:
    sent = {
        "Accept": ACCEPT,
        "Content-Type": "application/json",
        "Authorization": f"Bearer {token}",
        **headers,
    }
    return httpx.post(url, content=body, headers=sent, timeout=TIMEOUT)


def token_at(w: World, limited: Limited, name: str) -> str:
    return token_for(w, machine(w), resource=limited.url(name))


def failed(id: Any, name: str, reason: str) -> dict[str, Any]:
    message = f"upstream {name!r} {reason}"
    return {"jsonrpc": "2.0", "id": id, "error": {"code": UPSTREAM_ERROR, "message": message}}


def sse_messages(response: httpx.Response) -> list[Any]:
    assert response.headers["content-type"].startswith("text/event-stream"), response.text
    return [
        json.loads(line.removeprefix("data:"))
        for line in response.text.splitlines()
        if line.startswith("data:")
    ]


# -- the client's body


def exchange(port: int, head: bytes, body: bytes) -> bytes:
    """Send ``head`` and ``body`` on one connection and read the whole answer (the server
    closes it); the socket's timeout bounds the wait."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(head + body)
        received = b""
        for _ in range(1000):  # bounded: an answer is a few reads
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
        return received


def test_a_body_shorter_than_its_content_length_is_408_once_the_timeout_passes(
    w: World, limited: Limited
) -> None:
    """The proxy waits ``body_timeout`` for the rest, then answers 408 and closes the
    connection; nothing reaches the upstream."""
    token = token_at(w, limited, "plain")
    before = limited.deep.count
    head = (
        "POST /mcp/plain HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
        f"Accept: {ACCEPT}\r\nContent-Length: 1000\r\n\r\n"
    ).encode()
    answer = exchange(int(limited.origin.rsplit(":", 1)[1]), head, b'{"jsonrpc": "2.0", ')
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 408 Request Timeout", answer
    headers, _, body = rest.partition(b"\r\n\r\n")
    assert b"connection: close" in headers.lower()
    refusal = json.loads(body)
    assert refusal["id"] is None and refusal["error"]["code"] == INVALID_REQUEST
    assert refusal["error"]["message"] == f"the body did not arrive within {BODY_TIMEOUT:g} seconds"
    assert limited.deep.count == before


def ping_nested(levels: int) -> bytes:
    """A ping whose message nests ``levels`` deep in all (message, params, then arrays)."""
    return b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"deep":%s}}' % nested_text(
        levels - 2
    )


@pytest.mark.parametrize("levels", [MAX_DEPTH + 1, 1000, 100_000])
def test_a_body_nested_too_deep_is_a_parse_error(w: World, limited: Limited, levels: int) -> None:
    token = token_at(w, limited, "plain")
    before = limited.deep.count
    response = post_to(limited.url("plain"), ping_nested(levels), token)
    assert response.status_code == 400, response.text
    assert response.json() == {
        "jsonrpc": "2.0",
        "id": None,
        "error": {"code": PARSE_ERROR, "message": TOO_DEEP},
    }
    assert limited.deep.count == before


def test_a_body_at_the_depth_bound_goes_on(w: World, limited: Limited) -> None:
    token = token_at(w, limited, "plain")
    response = post_to(limited.url("plain"), ping_nested(MAX_DEPTH), token)
    assert response.status_code == 200, response.text
    assert response.json()["id"] == 1


# -- the upstream's answers


@pytest.mark.parametrize("depth", [100, 1000])
def test_a_json_answer_too_deep_to_rewrite_is_an_error_with_the_request_id(
    w: World, limited: Limited, depth: int
) -> None:
    """A list the proxy must filter, in an answer it cannot read: the request fails."""
    name = f"json{depth}"
    token = token_at(w, limited, name)
    body = json.dumps(request("tools/list", {}, id=7)).encode()
    response = post_to(limited.url(name), body, token)
    assert response.status_code == 200, response.text
    assert response.json() == failed(7, name, f"sent an answer the proxy cannot read ({TOO_DEEP})")


@pytest.mark.parametrize("depth", [100, 1000])
def test_an_sse_event_too_deep_to_read_ends_the_stream_with_the_request_error(
    w: World, limited: Limited, depth: int
) -> None:
    name = f"sse{depth}"
    token = token_at(w, limited, name)
    body = json.dumps(call("search", {"query": "x"}, id=7)).encode()
    response = post_to(limited.url(name), body, token, **modern("search"))
    assert response.status_code == 200, response.text
    progress = {"jsonrpc": "2.0", "method": "notifications/progress", "params": {}}
    reason = f"sent an event the proxy cannot read ({TOO_DEEP})"
    assert sse_messages(response) == [progress, failed(7, name, reason)]


def test_an_sdk_servers_answer_too_deep_to_read_is_an_error_with_the_request_id(
    w: World, limited: Limited
) -> None:
    """Over SSE (a handshake-era client of a stateless server), every event is read."""
    token = token_at(w, limited, "sdk")
    era = {"MCP-Protocol-Version": LATEST_HANDSHAKE_VERSION}
    body = json.dumps(call("search", {"query": "100"}, id="deep")).encode()
    response = post_to(limited.url("sdk"), body, token, **era)
    assert response.status_code == 200, response.text
    reason = f"sent an event the proxy cannot read ({TOO_DEEP})"
    assert sse_messages(response)[-1] == failed("deep", "sdk", reason)
    shallow = json.dumps(call("search", {"query": "3"}, id="shallow")).encode()
    answered = sse_messages(post_to(limited.url("sdk"), shallow, token, **era))
    assert answered[-1]["result"]["structuredContent"] == {"in": {"in": {"end": True}}}


def test_a_stdio_answer_too_deep_to_read_fails_its_call_and_restarts_the_server(
    w: World, limited: Limited
) -> None:
    """Its answer cannot be matched to its call: the calls in flight fail at once (not
    after the timeout), and the next call gets a new process."""
    token = token_at(w, limited, "stdio")
    body = json.dumps(call("search", {"query": "100"}, id="deep")).encode()
    response = post_to(limited.url("stdio"), body, token, **modern("search"))
    assert response.status_code == 200, response.text
    reason = f"sent a message the proxy cannot read ({TOO_DEEP})"
    assert response.json() == failed("deep", "stdio", reason)
    shallow = json.dumps(call("search", {"query": "2"}, id="shallow")).encode()
    answered = post_to(limited.url("stdio"), shallow, token, **modern("search")).json()
    assert answered["id"] == "shallow"
    assert answered["result"]["structuredContent"] == {"in": {"end": True}}
