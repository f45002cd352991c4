"""The proxy's HTTP/1.1 client for Streamable HTTP upstreams: kept-alive connections
parsed by ``httptools``.

A proxied call pays for its upstream request twice over (the proxy's CPU and the call's
latency), and a general client spends most of that on what the proxy never uses: URL
merging, cookies, redirects, auth flows, per-request configuration. This client does one
thing: send a request to one origin on an idle connection (or a new one) and hand back
the status, the headers and the body, whole or chunk by chunk as it arrives. Chunked
transfer coding is decoded by the parser. A connection goes back to the pool once its
response is read to the end and the server keeps it alive.

Failures are :class:`UpstreamError` (refused, reset, malformed) or :class:`TimeoutError`.
A connection idle for :data:`IDLE_SECONDS` is not used again (servers close idle ones:
uvicorn after 5 s). An idempotent request (GET, DELETE) that a kept-alive connection
drops before any answer is sent once more on a new connection; a POST never is, since the
server may have acted on it. At most :data:`MAX_CONNECTIONS` connections are open to an
upstream at once; a request beyond that waits for one (within its timeout).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import AsyncGenerator, Callable, Mapping
from typing import cast
from urllib.parse import urlsplit

import httptools

from pep.errors import PepError

MAX_IDLE = 32  # kept-alive connections per upstream
MAX_CONNECTIONS = 200  # open connections per upstream, busy or idle
IDLE_SECONDS = 4.0  # an idle connection older than this is closed, not used
RETRIED = frozenset({"GET", "DELETE", "HEAD", "OPTIONS", "PUT"})  # idempotent (RFC 9110)
HIGH_WATER = 1 << 20  # buffered body bytes before the socket is paused


ANSWER_LIMIT = 16 << 20  # bytes of an answer read whole (to pass on, or to rewrite)


class UpstreamError(PepError):
    """The upstream could not be reached or answered with something that is not HTTP."""


class TooLarge(UpstreamError):
    """An answer longer than the proxy holds in memory."""


class _Connection(asyncio.Protocol):
    """One connection; one request at a time."""

    def __init__(self, lost: Callable[[_Connection], None]) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.reused = False  # kept alive from an earlier request
        self.idle_since = 0.0
        self.answered = False  # bytes of the current response arrived
        self.response: Response | None = None
        self._lost = lost

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        if self.response is None:  # nothing was asked: whatever this is, it is no answer
            self.close()
            return
        self.answered = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamError(f"malformed HTTP from the upstream: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._lost(self)
        response = self.response
        ended = exc is None and response is not None and response.head.done()
        if ended and response is not None and response.delimited_by_close:
            self.response = None
            response.finish(None)  # the body ran to the connection's end, as it said
            return
        self._fail(UpstreamError(f"the upstream closed the connection{f': {exc}' if exc else ''}"))

    # -- httptools callbacks

    def on_message_begin(self) -> None:
        if self.response is None:  # a message after the answer, unasked for
            self.close()

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.response is not None:
            self.response.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        response = self.response
        if response is not None and not response.head.done():
            status = self.parser.get_status_code()
            if status < 200:  # an interim answer (100 Continue…): the real one follows
                response.headers.clear()
                return
            response.status = status
            response.head.set_result(None)

    def on_body(self, body: bytes) -> None:
        if self.response is not None:
            self.response.feed(body)

    def on_message_complete(self) -> None:
        response = self.response
        if response is None or not response.head.done():
            return
        keep = self.parser.should_keep_alive() and not self.closed
        self.response = None
        response.finish(self if keep else None)
        if not keep:
            self.close()

    # --

    def send(self, response: Response, data: bytes) -> None:
        assert self.transport is not None
        self.response = response
        self.answered = False
        response.connection = self
        self.transport.write(data)

    def _fail(self, exc: Exception) -> None:
        response, self.response = self.response, None
        if response is not None:
            response.fail(exc)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class Response:
    """The status and headers, then the body: :meth:`read` it whole or iterate
    :meth:`chunks`; :meth:`aclose` gives up the rest (and the connection)."""

    def __init__(self, pool: UpstreamClient) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.head: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.connection: _Connection | None = None
        self._pool = pool
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._done = False
        self._error: Exception | None = None
        self._ready = asyncio.Event()
        self._paused = False

    @property
    def whole(self) -> bool:
        """Whether the body has arrived whole (or been given up): reading it waits for
        nothing."""
        return self._done

    @property
    def delimited_by_close(self) -> bool:
        """A body with neither a length nor chunks: it ends with the connection."""
        chunked = "chunked" in self.headers.get("transfer-encoding", "").lower()
        return "content-length" not in self.headers and not chunked

    # fed by the connection

    def feed(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self._buffered += len(chunk)
        self._ready.set()
        connection = self.connection
        if self._buffered > HIGH_WATER and connection is not None and connection.transport:
            connection.transport.pause_reading()
            self._paused = True

    def finish(self, keep: _Connection | None) -> None:
        self._done = True
        self._ready.set()
        if self._paused and keep is not None and keep.transport is not None:
            keep.transport.resume_reading()  # the message is whole: nothing to hold back
        self._paused = False
        self.connection = None
        if keep is not None:
            self._pool.release(keep)

    def fail(self, exc: Exception) -> None:
        if not self.head.done():
            self.head.set_exception(exc)
            self.head.exception()  # retrieved: the sender sees it through the await
        elif not self._done:
            self._error = exc
            self._ready.set()

    # read by the proxy

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        """The body as it arrives; :class:`UpstreamError` if the connection breaks."""
        try:
            while True:
                while self._chunks:
                    chunk = self._chunks.popleft()
                    self._buffered -= len(chunk)
                    self._resume()
                    yield chunk
                if self._done:
                    return
                if self._error is not None:
                    raise self._error
                self._ready.clear()
                await self._ready.wait()
        finally:
            await self.aclose()

    async def read(self, limit: int = ANSWER_LIMIT) -> bytes:
        """The whole body; :class:`TooLarge` past ``limit`` bytes (the rest is given up)."""
        if self._done:  # all of it is here already (the usual small answer)
            body = b"".join(self._chunks)
            self._chunks.clear()
            self._buffered = 0
        else:
            parts = []
            size = 0
            async for chunk in self.chunks():
                size += len(chunk)
                if size > limit:
                    await self.aclose()
                    raise TooLarge(f"an answer over {limit} bytes")
                parts.append(chunk)
            body = b"".join(parts)
        if len(body) > limit:
            raise TooLarge(f"an answer over {limit} bytes")
        return body

    async def aclose(self) -> None:
        """Give up the rest of the body: the connection cannot be used again."""
        if not self._done and self.connection is not None:
            self.connection.close()
            self.connection = None
        self._done = True

    def _resume(self) -> None:
        connection = self.connection
        if self._paused and self._buffered < HIGH_WATER // 2 and connection is not None:
            if connection.transport is not None:
                connection.transport.resume_reading()
            self._paused = False


class UpstreamClient:
    """Kept-alive connections to the origin of ``url``; requests go to its path."""

    def __init__(self, url: str, max_connections: int = MAX_CONNECTIONS) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.ssl = ssl.create_default_context() if parts.scheme == "https" else None
        target = parts.path or "/"
        if parts.query:
            target = f"{target}?{parts.query}"
        authority = parts.netloc.rpartition("@")[2]  # never userinfo in Host
        self._start = f"{{}} {target} HTTP/1.1\r\nhost: {authority}\r\n"
        self._idle: deque[_Connection] = deque()
        self._all: set[_Connection] = set()
        self._freed = asyncio.Event()
        self._max = max_connections
        self._opening = 0  # connections being opened

    async def request(
        self,
        method: str,
        headers: Mapping[str, str],
        body: bytes | None,
        timeout: float,
    ) -> Response:
        """Send the request and wait (at most ``timeout`` seconds) for the status and the
        headers; the body follows through the response."""
        lines = [self._start.format(method)]
        for name, value in headers.items():
            if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
                raise UpstreamError(f"the header {name!r} has a line break")
            lines.append(f"{name}: {value}\r\n")
        if body is not None or method == "POST":
            lines.append(f"content-length: {len(body or b'')}\r\n")
        lines.append("\r\n")
        data = "".join(lines).encode("latin-1") + (body or b"")
        connection: _Connection | None = None
        retries = 1 if method in RETRIED else 0
        try:
            async with asyncio.timeout(timeout):
                while True:
                    connection = await self._connection()
                    response = Response(self)
                    connection.send(response, data)
                    try:
                        await response.head
                    except UpstreamError:
                        if retries and connection.reused and not connection.answered:
                            retries -= 1
                            continue  # dropped while idle, most likely: once more
                        raise
                    return response
        except TimeoutError:
            if connection is not None:
                connection.close()  # an answer may still come: the connection is spent
            raise

    def release(self, connection: _Connection) -> None:
        if connection.closed or len(self._idle) >= MAX_IDLE:
            self._forget(connection)
            return
        connection.reused = True
        connection.idle_since = time.monotonic()
        self._idle.append(connection)
        self._freed.set()

    async def _connection(self) -> _Connection:
        while True:
            stale = time.monotonic() - IDLE_SECONDS
            while self._idle:
                connection = self._idle.pop()
                if not connection.closed and connection.idle_since > stale:
                    return connection
                self._forget(connection)
            if len(self._all) + self._opening < self._max:
                break
            self._freed.clear()
            await self._freed.wait()  # a connection is released or closed
        loop = asyncio.get_running_loop()
        self._opening += 1
        try:
            _, connection = await loop.create_connection(
                lambda: _Connection(self._lost),
                self.host,
                self.port,
                ssl=self.ssl,
                server_hostname=self.host if self.ssl else None,
            )
        except OSError as exc:
            raise UpstreamError(f"cannot connect to {self.host}:{self.port}: {exc}") from exc
        finally:
            self._opening -= 1
            self._freed.set()  # a failed attempt frees its place
        self._all.add(connection)
        return connection

    def _lost(self, connection: _Connection) -> None:
        self._all.discard(connection)
        self._freed.set()

    def _forget(self, connection: _Connection) -> None:
        connection.close()
        self._lost(connection)

    async def close(self) -> None:
        for connection in list(self._all):
            connection.close()
        self._all.clear()
        self._idle.clear()
