"""JSON-RPC 2.0 messages and Server-Sent Events, as the proxy reads and rewrites them.

The proxy parses a request body once to decide it, forwards what it allows, and rewrites
the upstream's answer where it must (``…/list`` results filtered, local answers for denied
calls merged in). A JSON answer is rewritten whole; an SSE answer (``text/event-stream``)
event by event as it streams, so server requests and progress in between pass at once.

What the proxy reads of a client's or an upstream's messages it reads with
:func:`issuer.wire.read_json` (at most 64 levels deep, among its bounds), so what it writes
anew is no deeper.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from mcp_types.jsonrpc import INTERNAL_ERROR, URL_ELICITATION_REQUIRED

from issuer.wire import WireError, read_json
from pep.errors import PepError

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
HEADER_MISMATCH = -32020
FORBIDDEN = -32003  # a call the policy refuses (implementation-defined server error)
UPSTREAM_ERROR = INTERNAL_ERROR
CONSENT_REQUIRED = URL_ELICITATION_REQUIRED  # -32042

Message = dict[str, Any]


def error(id: Any, code: int, message: str, data: Any = None) -> Message:
    body: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        body["data"] = data
    return {"jsonrpc": "2.0", "id": id, "error": body}


def is_request(message: Message) -> bool:
    return "method" in message and "id" in message


def invalid(message: Any) -> str | None:
    """Why ``message`` is not a JSON-RPC 2.0 request, notification or response; None when
    it is one."""
    if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
        return "not a JSON-RPC 2.0 message"
    if "id" in message and not valid_id(message["id"]):
        return "an id is a string, a number or null"
    if "method" in message:
        return None if isinstance(message["method"], str) else "a method is a string"
    if "id" not in message or ("result" in message) == ("error" in message):
        return "a response has an id and either a result or an error"
    return None


def valid_id(value: Any) -> bool:
    return value is None or (isinstance(value, str | int | float) and not isinstance(value, bool))


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON: orjson, or the standard encoder for what orjson refuses (such as
    integers beyond 64 bits). Values come from :func:`read_json` or the proxy itself, so
    they nest no deeper than its bound: neither encoder runs out of stack on them."""
    try:
        return orjson.dumps(value)
    except TypeError:  # ASCII: a lone surrogate (which JSON text may hold) is kept escaped
        return json.dumps(value, separators=(",", ":")).encode()


class SseTooLarge(PepError, ValueError):
    """An SSE event larger than the limit."""


class SseUnreadable(PepError, ValueError):
    """An SSE event whose data is not JSON within the bounds of :func:`read_json`: it may
    answer a request, or hold a list to filter, that the proxy cannot check."""


class SseParser:
    """Splits a byte stream into SSE events (lines of ``field: value``, a blank line ends
    one). Lines end with CRLF, LF or CR (the SSE grammar); events come out with LF."""

    def __init__(self, limit: int) -> None:
        self.buffer = bytearray()  # of the event under way, lines ending in LF
        self.limit = limit
        self._cr = False  # the last chunk ended with CR: an LF first in the next is its pair

    def feed(self, chunk: bytes) -> list[bytes]:
        """The complete events in ``chunk`` and what came before, as raw bytes (each with
        its terminating blank line)."""
        if not chunk:
            return []
        if self._cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]
        self._cr = chunk.endswith(b"\r")
        searched = max(len(self.buffer) - 1, 0)  # what came before holds no blank line
        self.buffer += chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        events = []
        start = 0
        while (end := self.buffer.find(b"\n\n", max(start, searched))) >= 0:
            events.append(bytes(self.buffer[start : end + 2]))
            start = end + 2
        del self.buffer[:start]
        if len(self.buffer) > self.limit:
            raise SseTooLarge(f"an SSE event over {self.limit} bytes")
        return events


def event_data(event: bytes) -> bytes | None:
    """The data of an event of type ``message`` (the default), or None."""
    data = []
    kind = b"message"
    for line in event.split(b"\n"):
        name, _, value = line.partition(b":")
        value = value[1:] if value.startswith(b" ") else value
        if name == b"data":
            data.append(value)
        elif name == b"event":
            kind = value
    if kind != b"message" or not data:
        return None
    return b"\n".join(data)


def has_event_id(event: bytes) -> bool:
    """Whether the event sets the stream's last event id (an ``id`` field with a value),
    which lets a client resume the stream after it ends."""
    for line in event.split(b"\n"):
        name, _, value = line.partition(b":")
        if name == b"id" and value.strip():
            return True
    return False


def is_comment(event: bytes) -> bool:
    """Whether the event is only comments (lines that begin with a colon), such as a
    keep-alive."""
    return all(line.startswith(b":") for line in event.split(b"\n") if line)


def replace_data(event: bytes, data: bytes) -> bytes:
    """The event with its data lines replaced by ``data`` (other fields kept)."""
    kept = [
        line for line in event.rstrip(b"\n").split(b"\n") if line and not line.startswith(b"data")
    ]
    return b"\n".join([*kept, b"data: " + data]) + b"\n\n"


def sse_event(message: Any) -> bytes:
    return b"event: message\ndata: " + dumps(message) + b"\n\n"


async def rewrite_sse(
    chunks: AsyncIterator[bytes],
    rewrite: Callable[[Any], Awaitable[Any]],
    prefix: list[Message],
    limit: int,
) -> AsyncGenerator[bytes, None]:
    """The SSE stream with each JSON message passed through ``rewrite``, after events for
    the ``prefix`` messages; :class:`SseUnreadable` at an event whose data the proxy
    cannot read (an event with blank data, such as a stream's priming event, passes)."""
    for message in prefix:
        yield sse_event(message)
    parser = SseParser(limit)
    async for chunk in chunks:
        for event in parser.feed(chunk):
            data = event_data(event)
            if data is None or not data.strip():
                yield event
                continue
            try:
                message = read_json(data)
            except WireError as exc:
                raise SseUnreadable(f"sent an event the proxy cannot read ({exc})") from None
            yield replace_data(event, dumps(await rewrite(message)))
    # an event the stream ended in the middle of is not dispatched (the SSE rules), so it
    # is not passed on either: it was never rewritten
