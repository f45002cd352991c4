"""Bodies and JSON documents read within bounds (issuer/wire.py), every door's reader."""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from issuer.wire import MAX_DEPTH, NotJson, TooDeep, WireError, read_body, read_json
from tests.servers import HttpServer

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.text()
    | st.floats(allow_nan=False, allow_infinity=False)
)
documents = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(documents)
@example(-(2**63) - 1)  # 19 digits, beyond orjson's integers
@example(2**64)
def test_a_json_document_reads_back_as_written(value: Any) -> None:
    for text in (json.dumps(value), json.dumps(value, ensure_ascii=False)):
        assert read_json(text.encode()) == value
        assert read_json(text) == value


@pytest.mark.parametrize("digits", [19, 20, 40, 300, 4300])
def test_integers_of_any_length_read_exactly(digits: int) -> None:
    for number in (int("9" * digits), -int("9" * digits)):
        assert read_json(f'{{"n": {number}, "s": "x"}}'.encode()) == {"n": number, "s": "x"}


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (b"NaN", "not JSON"),
        (b"[Infinity]", "not JSON"),
        (b"1e400", "not JSON"),
        (b'{"a": 12345678901234567890123, "b": 1e400}', "too large for a double"),
        (b'["\\ud800"]', "not JSON"),
        (b'["\\ud800", 123456789012345678901234]', "lone surrogate"),
        (b'{"\\udc00": 123456789012345678901234}', "lone surrogate"),
        (b'"\xff"', "not JSON"),
        (b"1" + b"0" * 5000, "a number of 5,001 digits; at most 4,300"),
        (b"[-" + b"9" * 4301 + b"]", "a number of 4,301 digits"),
        (b"{", "not JSON"),
    ],
)
def test_what_json_does_not_allow_is_refused(text: bytes, says: str) -> None:
    with pytest.raises(NotJson, match=says) as refused:
        read_json(text)
    assert refused.value.status == 400


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 500, 1100, 100_000])
@pytest.mark.parametrize("bracket", ["[]", '{"a":}'])
def test_a_document_nested_too_deeply_is_refused(depth: int, bracket: str) -> None:
    opening, closing = (bracket[0], bracket[1]) if bracket == "[]" else ('{"a":', "}")
    text = opening * depth + "1" + closing * depth
    with pytest.raises(TooDeep, match=f"deeper than {MAX_DEPTH}"):
        read_json(text.encode())
    with pytest.raises(TooDeep):  # the exact path too
        read_json((opening * depth + "123456789012345678901234" + closing * depth).encode())


def test_nesting_up_to_the_bound_reads() -> None:
    text = "[" * MAX_DEPTH + "1" + "]" * MAX_DEPTH
    value = read_json(text.encode())
    for _ in range(MAX_DEPTH):
        value = value[0]
    assert value == 1
    assert read_json(b'["[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["]')


def _echo_app() -> Starlette:
    async def echo(request: Request) -> JSONResponse:
        try:
            body = await read_body(request, limit=64, timeout=0.5)
            return JSONResponse({"length": len(body)})
        except WireError as exc:
            return JSONResponse({"error": str(exc)}, exc.status)

    return Starlette(routes=[Route("/", echo, methods=["POST"])])


@pytest.fixture(scope="module")
def echo() -> Any:
    server = HttpServer(lambda port: _echo_app())
    yield server
    server.close()


def _exchange(port: int, head: bytes, body: bytes) -> bytes:
    """Send a request head and (perhaps too little) body; the whole answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(head + body)
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.endswith(b"}"):
            chunk = conn.recv(4096)
            if not chunk:
                break
            answer += chunk
    return answer


def test_a_body_within_the_bounds_is_read(echo: HttpServer) -> None:
    head = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n"
    assert b'{"length":5}' in _exchange(echo.port, head, b"hello")


def test_a_short_body_ends_with_408_in_time(echo: HttpServer) -> None:
    head = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n"
    answer = _exchange(echo.port, head, b"only ten b")
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert b"did not arrive within 0.5 seconds" in answer


@pytest.mark.parametrize(
    "head",
    [
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 65\r\n\r\n",  # declared
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n41\r\n",  # sent
    ],
)
def test_a_body_over_the_limit_is_413(echo: HttpServer, head: bytes) -> None:
    answer = _exchange(echo.port, head, b"x" * 65)
    assert answer.startswith(b"HTTP/1.1 413"), answer
    assert b"larger than 64 bytes" in answer
