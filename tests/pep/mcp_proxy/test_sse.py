"""Server-Sent Events as the proxy reads them: line endings of every kind, split anywhere
between chunks, and a stream that ends in the middle of an event."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from pep.mcp_proxy.jsonrpc import SseParser, SseTooLarge, event_data, rewrite_sse

STREAM = b'event: message\ndata: {"id": 1}\n\n: a comment\n\ndata: {"id": 2}\n\n'


def events_of(stream: bytes, size: int) -> list[bytes | None]:
    """The data of each event, fed ``size`` bytes at a time."""
    parser = SseParser(1 << 20)
    events = []
    for start in range(0, len(stream), size):
        events += parser.feed(stream[start : start + size])
    return [event_data(e) for e in events]


@pytest.mark.parametrize("ending", [b"\n", b"\r\n", b"\r"])
@pytest.mark.parametrize("size", [1, 2, 3, 7, 1000])
def test_every_line_ending_splits_the_same_events_however_chunked(ending: bytes, size: int) -> None:
    stream = STREAM.replace(b"\n", ending)
    assert events_of(stream, size) == [b'{"id": 1}', None, b'{"id": 2}']


def test_an_event_over_the_limit_is_refused() -> None:
    parser = SseParser(10)
    with pytest.raises(SseTooLarge):
        parser.feed(b"data: " + b"x" * 20)


def test_an_event_the_stream_ends_in_the_middle_of_is_not_passed_on() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'data: {"id": 1}\n\ndata: {"id": 2, "result": {"tools": ["unfiltered"]}}'

    async def rewrite(message: Any) -> Any:
        return {**message, "seen": True}

    async def relayed() -> list[bytes]:
        return [event async for event in rewrite_sse(chunks(), rewrite, [], 1 << 20)]

    assert asyncio.run(relayed()) == [b'data: {"id":1,"seen":true}\n\n']


def test_an_empty_chunk_between_cr_and_lf_keeps_them_one_line_end() -> None:
    parser = SseParser(1 << 20)
    events = [e for chunk in (b"data: 1\r", b"", b"\n\r\n") for e in parser.feed(chunk)]
    assert events == [b"data: 1\n\n"]
    assert parser.feed(b"data: 2\n") == [] and bytes(parser.buffer) == b"data: 2\n"


def test_a_large_event_in_small_chunks_comes_out_whole() -> None:
    parser = SseParser(4 << 20)
    data = b"data: " + b"x" * (2 << 20) + b"\n\n"
    events = [e for i in range(0, len(data), 4096) for e in parser.feed(data[i : i + 4096])]
    assert events == [data]
