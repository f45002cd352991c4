"""The proxy's HTTP/1.1 client for upstreams, against small servers on 127.0.0.1 that
answer exactly the bytes a test gives them; on asyncio's loop and on uvloop (the one
``tessera mcp-proxy`` runs)."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import pytest
import uvloop

from pep.mcp_proxy.upstream import TooLarge, UpstreamClient, UpstreamError

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
JSON_OK = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Callable[[Coroutine[Any, Any, Any]], Any]:
    runner = asyncio.run if request.param == "asyncio" else uvloop.run
    return lambda coroutine: runner(coroutine)


class Served:
    """A server calling ``handler`` for each connection; counts connections."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> str:
        async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            try:
                await self.handler(reader, writer)
            finally:
                writer.close()

        self.server = await asyncio.start_server(accepted, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/mcp?x=1"

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return head + (await reader.readexactly(length) if length else b"")


def answering(*answers: bytes, then_close: bool = False) -> Handler:
    """Answer each request on a connection with the next of ``answers``."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for answer in answers:
            await read_request(reader)
            writer.write(answer)
            await writer.drain()
        if not then_close:
            await reader.read()  # until the client closes

    return handler


def test_a_request_is_sent_as_given_and_the_connection_kept(run: Any) -> None:
    seen: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(2):
            seen.append(await read_request(reader))
            writer.write(JSON_OK)
        await reader.read()

    async def main() -> tuple[list[tuple[int, str, bytes]], int]:
        served = Served(handler)
        async with served as url:
            client = UpstreamClient(url)
            answers = []
            for body in (b'{"a":1}', b'{"b":2}'):
                response = await client.request("POST", {"accept": "x/y"}, body, 5.0)
                answers.append(
                    (response.status, response.headers["content-type"], await response.read())
                )
            await client.close()
            return answers, served.connections

    answers, connections = run(main())
    assert answers == [(200, "application/json", b"{}")] * 2
    assert connections == 1
    port = seen[0].split(b"host: 127.0.0.1:")[1].split(b"\r\n")[0]
    assert seen[0] == (
        b"POST /mcp?x=1 HTTP/1.1\r\nhost: 127.0.0.1:" + port + b"\r\naccept: x/y\r\n"
        b'content-length: 7\r\n\r\n{"a":1}'
    )


def test_a_chunked_body_arrives_chunk_by_chunk(run: Any) -> None:
    async def main() -> list[bytes]:
        second = asyncio.Event()

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                b"transfer-encoding: chunked\r\n\r\n6\r\nfirst\n\r\n"
            )
            await second.wait()  # sent only once the client has the first
            writer.write(b"7\r\nsecond\n\r\n0\r\n\r\n")
            await reader.read()

        async with Served(handler) as url:
            client = UpstreamClient(url)
            response = await client.request("GET", {}, None, 5.0)
            got = []
            async for chunk in response.chunks():
                got.append(chunk)
                second.set()
            await client.close()
            return got

    assert run(main()) == [b"first\n", b"second\n"]


def test_a_body_that_ends_with_the_connection_is_read_whole(run: Any) -> None:
    answer = b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nall of it"

    async def main() -> bytes:
        async with Served(answering(answer, then_close=True)) as url:
            client = UpstreamClient(url)
            body = await (await client.request("POST", {}, b"{}", 5.0)).read()
            await client.close()
            return body

    assert run(main()) == b"all of it"


@pytest.mark.parametrize("length", ["content-length: 20", "transfer-encoding: chunked"])
def test_an_answer_over_the_limit_is_refused_and_the_next_call_works(run: Any, length: str) -> None:
    body = b"14\r\n" + b"x" * 20 + b"\r\n0\r\n\r\n" if "chunked" in length else b"x" * 20
    answer = f"HTTP/1.1 200 OK\r\n{length}\r\n\r\n".encode() + body

    async def main() -> tuple[str, bytes]:
        async with Served(answering(answer, JSON_OK)) as url:
            client = UpstreamClient(url)
            with pytest.raises(TooLarge) as raised:
                await (await client.request("POST", {}, b"1", 5.0)).read(limit=10)
            after = await (await client.request("POST", {}, b"2", 5.0)).read(limit=10)
            await client.close()
            return str(raised.value), after

    assert run(main()) == ("an answer over 10 bytes", b"{}")


@pytest.mark.parametrize("length", ["content-length: 4000000", "transfer-encoding: chunked"])
def test_an_answer_over_the_limit_is_given_up_before_it_has_all_come(run: Any, length: str) -> None:
    """Reading stops at the limit: the rest is not waited for, and the connection goes."""
    chunk = b"x" * 65536
    head = f"HTTP/1.1 200 OK\r\n{length}\r\n\r\n".encode()
    framed = b"10000\r\n" + chunk + b"\r\n" if "chunked" in length else chunk

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(head)
        for _ in range(32):  # 2 MiB, then it never finishes
            writer.write(framed)
            await writer.drain()
        await reader.read()

    async def main() -> str:
        async with Served(handler) as url:
            client = UpstreamClient(url)
            with pytest.raises(TooLarge) as raised:
                response = await client.request("POST", {}, b"1", 5.0)
                await asyncio.wait_for(response.read(limit=1 << 20), 5.0)
            await client.close()
            return str(raised.value)

    assert run(main()) == f"an answer over {1 << 20} bytes"


def test_a_connection_the_server_closed_while_idle_is_replaced(run: Any) -> None:
    async def main() -> tuple[bytes, bytes, int]:
        served = Served(answering(JSON_OK, then_close=True))  # keeps-alive, then hangs up
        async with served as url:
            client = UpstreamClient(url)
            first = await (await client.request("POST", {}, b"1", 5.0)).read()
            await asyncio.sleep(0.05)
            second = await (await client.request("POST", {}, b"2", 5.0)).read()
            await client.close()
            return first, second, served.connections

    assert run(main()) == (b"{}", b"{}", 2)


@pytest.mark.parametrize(
    "answer",
    [b"NOT HTTP AT ALL\r\n\r\n", b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort"],
)
def test_what_is_not_a_whole_http_answer_is_an_upstream_error(run: Any, answer: bytes) -> None:
    async def main() -> None:
        async with Served(answering(answer, then_close=True)) as url:
            client = UpstreamClient(url)
            with pytest.raises(UpstreamError):
                response = await client.request("POST", {}, b"{}", 5.0)
                await response.read()
            await client.close()

    run(main())


def test_a_refused_connection_is_an_upstream_error(run: Any) -> None:
    async def main() -> None:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        client = UpstreamClient(f"http://127.0.0.1:{port}/")
        with pytest.raises(UpstreamError, match="cannot connect"):
            await client.request("POST", {}, b"{}", 5.0)

    run(main())


def test_an_upstream_that_does_not_answer_in_time_times_out(run: Any) -> None:
    async def main() -> int:
        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read()

        served = Served(silent)
        async with served as url:
            client = UpstreamClient(url)
            with pytest.raises(TimeoutError):
                await client.request("POST", {}, b"{}", 0.1)
            # the spent connection is not reused: the next request opens another
            with pytest.raises(TimeoutError):
                await client.request("POST", {}, b"{}", 0.1)
            await client.close()
            return served.connections

    assert run(main()) == 2


def test_a_header_with_a_line_break_is_never_sent(run: Any) -> None:
    async def main() -> int:
        served = Served(answering(JSON_OK))
        async with served as url:
            client = UpstreamClient(url)
            with pytest.raises(UpstreamError, match="line break"):
                await client.request("POST", {"x-a": "1\r\nx-injected: 2"}, b"{}", 5.0)
            await client.close()
            return served.connections

    assert run(main()) == 0


def dropping_the_second() -> tuple[Handler, list[bytes]]:
    """Answer the first request of a connection; read the second, then drop the
    connection without an answer (as a server that acted and then crashed would)."""
    seen: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await read_request(reader))
        writer.write(JSON_OK)
        await writer.drain()
        if len(seen) > 1:
            return
        seen.append(await read_request(reader))
        writer.transport.abort()

    return handler, seen


def test_a_post_the_server_may_have_seen_is_never_sent_again(run: Any) -> None:
    async def main() -> list[bytes]:
        handler, seen = dropping_the_second()
        async with Served(handler) as url:
            client = UpstreamClient(url)
            await (await client.request("POST", {}, b"1", 5.0)).read()
            with pytest.raises(UpstreamError):
                await client.request("POST", {}, b"2", 5.0)
            await client.close()
            return seen

    seen = run(main())
    assert [request.rpartition(b"\r\n\r\n")[2] for request in seen] == [b"1", b"2"]


def test_a_get_dropped_before_any_answer_is_sent_once_more(run: Any) -> None:
    async def main() -> tuple[int, int]:
        handler, _ = dropping_the_second()
        served = Served(handler)
        async with served as url:
            client = UpstreamClient(url)
            await (await client.request("GET", {}, None, 5.0)).read()
            again = await client.request("GET", {}, None, 5.0)
            await again.read()
            await client.close()
            return again.status, served.connections

    assert run(main()) == (200, 2)


def test_a_large_answer_read_late_leaves_its_connection_usable(run: Any) -> None:
    big = b"x" * ((1 << 20) + 1)
    answer = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(big) + big

    async def main() -> tuple[int, int, int]:
        served = Served(answering(answer, JSON_OK))
        async with served as url:
            client = UpstreamClient(url)
            response = await client.request("POST", {}, b"{}", 5.0)
            await asyncio.sleep(0.2)  # the whole answer arrives before it is read
            body = await response.read()
            second = await (await client.request("POST", {}, b"{}", 2.0)).read()
            await client.close()
            return len(body), len(second), served.connections

    assert run(main()) == (len(big), 2, 1)


def test_bytes_nobody_asked_for_retire_the_connection(run: Any) -> None:
    stray = JSON_OK + b"HTTP/1.1 200 OK\r\ncontent-length: 50\r\n\r\nhalf"

    async def main() -> tuple[bytes, int]:
        served = Served(answering(stray, JSON_OK))
        async with served as url:
            client = UpstreamClient(url)
            await (await client.request("POST", {}, b"{}", 5.0)).read()
            await asyncio.sleep(0.05)
            body = await (await client.request("POST", {}, b"{}", 5.0)).read()
            await client.close()
            return body, served.connections

    assert run(main()) == (b"{}", 2)


def test_a_reset_in_a_body_that_ends_with_the_connection_is_an_error(run: Any) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\npart of it")
        await writer.drain()
        await asyncio.sleep(0.05)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # RST, not FIN

    async def main() -> None:
        async with Served(handler) as url:
            client = UpstreamClient(url)
            response = await client.request("POST", {}, b"{}", 5.0)
            with pytest.raises(UpstreamError):
                await response.read()
            await client.close()

    run(main())


def test_connections_to_an_upstream_are_capped(run: Any) -> None:
    async def main() -> tuple[list[bytes], int]:
        open_now = 0
        most = 0

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal open_now, most
            open_now += 1
            most = max(most, open_now)
            try:
                await read_request(reader)
                await asyncio.sleep(0.05)
                writer.write(JSON_OK.replace(b"OK\r\n", b"OK\r\nconnection: close\r\n"))
                await writer.drain()
                writer.close()
            finally:
                open_now -= 1

        async with Served(handler) as url:
            client = UpstreamClient(url, max_connections=2)

            async def one() -> bytes:
                response = await client.request("POST", {"connection": "close"}, b"{}", 5.0)
                return await response.read()

            bodies = await asyncio.gather(*(one() for _ in range(5)))
            await client.close()
            return list(bodies), most

    bodies, most = run(main())
    assert bodies == [b"{}"] * 5
    assert most <= 2
