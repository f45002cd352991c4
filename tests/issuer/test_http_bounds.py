"""What a connection may ask of an HTTP door before its request reaches the application
(issuer/app.py ``HttpBounds``), on both HTTP/1.1 parsers: h11 (the issuer, AuthZEN) and
httptools (the MCP proxy). Raw bytes over a socket, the answer's status asserted."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from issuer.app import HttpBounds
from tests.servers import HttpServer, read_answer

BOUNDS = HttpBounds(head_bytes=4096, head_seconds=0.5, concurrency=3)
HELLO = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


def _app() -> Starlette:
    async def hello(request: Request) -> PlainTextResponse:
        return PlainTextResponse("hello")

    return Starlette(routes=[Route("/", hello, methods=["GET", "POST"])])


@pytest.fixture(scope="module", params=["h11", "httptools"])
def server(request: pytest.FixtureRequest) -> Iterator[HttpServer]:
    running = HttpServer(lambda port: _app(), bounds=BOUNDS, httptools=request.param == "httptools")
    yield running
    running.close()


def _connect(server: HttpServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=10)


def test_a_request_within_the_bounds_is_answered(server: HttpServer) -> None:
    with _connect(server) as conn:
        conn.sendall(HELLO)
        answer = read_answer(conn)
    assert answer.startswith(b"HTTP/1.1 200"), answer
    assert answer.endswith(b"hello")
    head = answer.split(b"\r\n\r\n", 1)[0].lower()
    assert b"\r\ndate: " in head  # RFC 9110 §6.6.1: a server with a clock sends it
    assert b"\r\nserver:" not in head  # nothing to fingerprint the HTTP stack by


def test_a_head_that_does_not_arrive_in_time_is_408(server: HttpServer) -> None:
    with _connect(server) as conn:
        conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # and nothing more
        answer = read_answer(conn)
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert b"did not arrive within 0.5 seconds" in answer


def test_the_next_head_on_a_kept_connection_is_bounded_too(server: HttpServer) -> None:
    with _connect(server) as conn:
        conn.sendall(HELLO)
        assert read_answer(conn).startswith(b"HTTP/1.1 200")
        conn.sendall(b"GET / HTTP/1.1\r\nHo")
        answer = read_answer(conn)
    assert answer.startswith(b"HTTP/1.1 408"), answer


def test_a_connection_that_sends_nothing_is_closed_without_an_answer(server: HttpServer) -> None:
    with _connect(server) as conn:
        assert conn.recv(4096) == b""


def test_a_whole_request_larger_than_the_head_bound_in_one_write_is_answered(
    server: HttpServer,
) -> None:
    """Head and body (and a second request) in one write, as a loaded server reads them:
    the body does not count against the head's bound."""
    body = b"b" * 20_000
    post = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 20000\r\n\r\n" + body
    answers = b""
    with _connect(server) as conn:
        conn.sendall(post + HELLO)
        for _ in range(100):  # both answers, or the connection closed
            chunk = conn.recv(65536)
            answers += chunk
            if not chunk or answers.count(b"hello") == 2:
                break
    assert answers.count(b"HTTP/1.1 200") == 2, answers


@pytest.mark.parametrize("whole", [True, False], ids=["in-one-read", "unfinished"])
def test_a_head_over_the_size_bound_is_431(server: HttpServer, whole: bool) -> None:
    head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 4200
    with _connect(server) as conn:
        conn.sendall(head + (b"\r\n\r\n" if whole else b""))
        answer = read_answer(conn)
    assert answer.startswith(b"HTTP/1.1 431"), answer
    assert answer.endswith(b"the request head is larger than 4096 bytes")


def test_a_head_that_never_ends_is_431_not_kept(server: HttpServer) -> None:
    with _connect(server) as conn:
        conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        for _ in range(8):  # small headers, each read all head: 4,105 bytes in all
            conn.sendall(b"X-Many: " + b"b" * 500 + b"\r\n")
        answer = read_answer(conn)
    assert answer.startswith(b"HTTP/1.1 431"), answer


@pytest.mark.parametrize("httptools", [False, True], ids=["h11", "httptools"])
def test_requests_beyond_the_concurrency_bound_are_503(httptools: bool) -> None:
    server = HttpServer(lambda port: _app(), bounds=BOUNDS, httptools=httptools)
    # uvicorn counts the connection asking among those open: one fewer are served
    idle = [_connect(server) for _ in range(BOUNDS.concurrency - 1)]
    try:
        for conn in idle:  # each connection served once, then left open
            conn.sendall(HELLO)
            assert read_answer(conn).startswith(b"HTTP/1.1 200")
        with _connect(server) as conn:
            conn.sendall(HELLO)
            answer = read_answer(conn)
        assert answer.startswith(b"HTTP/1.1 503"), answer
    finally:
        for conn in idle:
            conn.close()
        server.close()
