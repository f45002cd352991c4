"""A local MCP server started as a subprocess and spoken to over stdio (newline-delimited
JSON-RPC), so the proxy can serve it over Streamable HTTP.

One process serves every caller. Request ids are replaced by the proxy's own on the way
in (callers' ids may collide) and restored on the way out. A caller's
``notifications/cancelled`` goes on under the proxy's id of that caller's own call in
flight with the id it names, and is dropped when there is none, so no caller cancels
another's.

A request the server sends back (sampling, elicitation) is refused with ``-32601``, since
there is no client to ask on this path, and a caller's answer is dropped (it was asked
nothing, and could answer a request made during another's call). The server's
notifications are dropped, so a request's progress token is not passed on (callers'
tokens may collide).

Each line the server writes is read within the bounds every JSON the proxy reads is held
to (:func:`issuer.wire.read_json`: at most 64 levels deep, among others) and of at most
:data:`LINE_LIMIT` bytes. A line that is not JSON at all (a stray log line: the stdio
transport forbids them, but servers print) is skipped; a message beyond the bounds cannot
be matched to its call, so it stops the process like a line over the limit.

A process that exits, or that can no longer be read or written (a pipe closed, a message
over the limit or beyond the bounds), is killed and fails its calls in flight, and the
next call starts another; a call unanswered within the upstream's timeout fails alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass
from typing import Any

from issuer.wire import NotJson, TooDeep, TooLong, read_json
from pep.errors import PepError

log = logging.getLogger("tessera.mcp_proxy")

LINE_LIMIT = 16 << 20  # bytes in one message from the server


class UpstreamFailed(PepError):
    """The subprocess could not answer; the message completes 'upstream X …'."""


@dataclass(slots=True)
class Call:
    """A request in flight: who sent it, with which id, and where its answer goes."""

    caller: str
    id: Any  # the caller's
    process: asyncio.subprocess.Process  # the one it was sent to
    answer: asyncio.Future[dict[str, Any]]


class StdioUpstream:
    def __init__(self, command: tuple[str, ...], timeout: float, limit: int = LINE_LIMIT) -> None:
        self.command = command
        self.timeout = timeout
        self.limit = limit  # bytes in one message from the server
        self.process: asyncio.subprocess.Process | None = None
        self.readers: dict[asyncio.subprocess.Process, asyncio.Task[None]] = {}  # until it is gone
        self.pending: dict[int, Call] = {}  # by the proxy's id
        self.counter = 0
        self._lock = asyncio.Lock()

    async def _started(self) -> asyncio.subprocess.Process:
        async with self._lock:
            if self.process is not None and self.process.returncode is None:
                return self.process
            try:
                process = await asyncio.create_subprocess_exec(
                    *self.command,
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.DEVNULL,
                    limit=self.limit,
                )
            except OSError as exc:
                raise UpstreamFailed(f"could not be started: {exc.strerror}") from None
            self.process = process
            reader = asyncio.create_task(self._read(process))
            reader.add_done_callback(lambda _: self.readers.pop(process, None))
            self.readers[process] = reader
            return process

    async def _read(self, process: asyncio.subprocess.Process) -> None:
        """Hand the server's answers to their calls until it stops or cannot be read on
        (a line over the limit), then stop it for good."""
        assert process.stdout is not None
        reason = "exited"
        try:
            while True:
                try:
                    line = await process.stdout.readline()
                except ValueError:  # over the limit: where the next message starts is lost
                    reason = f"sent a message longer than {self.limit} bytes"
                    log.warning("stdio upstream %s; stopping it", reason)
                    break
                if not line:
                    break
                try:
                    message = read_json(line)
                except NotJson as exc:
                    if not _unreadable_message(line, exc):
                        continue  # not a message: a stray log line, say
                    reason = f"sent a message the proxy cannot read ({exc})"
                    log.warning("stdio upstream %s; stopping it", reason)
                    break
                if not isinstance(message, dict):
                    continue
                if "method" in message:
                    if "id" in message:  # a request to a client that is not there
                        await self._write(
                            process,
                            {
                                "jsonrpc": "2.0",
                                "id": message["id"],
                                "error": {
                                    "code": -32601,
                                    "message": "not available through the proxy",
                                },
                            },
                        )
                    continue
                key = message.get("id")
                call = self.pending.pop(key, None) if type(key) is int else None
                if call is not None and not call.answer.done():
                    call.answer.set_result(message)
        except Exception as exc:  # stopped reading, so the process is of no more use
            log.warning("stdio upstream: %s", exc)
        finally:
            self._stop(process, reason)
            await process.wait()

    def _stop(self, process: asyncio.subprocess.Process, reason: str) -> None:
        """Stop using ``process``: its calls in flight fail with ``reason``, it is killed,
        and the next call starts another."""
        if self.process is process:
            self.process = None
        for key, call in list(self.pending.items()):
            if call.process is process:
                del self.pending[key]
                if not call.answer.done():
                    call.answer.set_exception(UpstreamFailed(reason))
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()

    async def _write(self, process: asyncio.subprocess.Process, message: dict[str, Any]) -> None:
        assert process.stdin is not None
        process.stdin.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")
        await process.stdin.drain()

    async def send(self, payload: Any, caller: str) -> Any:
        """The answer to a message or batch (None when it held no request); ``caller`` is
        who sends it, so that a cancellation reaches only its own calls."""
        process = await self._started()
        messages = payload if isinstance(payload, list) else [payload]
        waiting: list[Call] = []
        ids: list[int] = []
        loop = asyncio.get_running_loop()
        try:
            try:
                for message in messages:
                    if "method" in message and "id" in message:
                        self.counter += 1
                        call = Call(caller, message["id"], process, loop.create_future())
                        self.pending[self.counter] = call
                        ids.append(self.counter)
                        waiting.append(call)
                        await self._write(process, {**_unprogressed(message), "id": self.counter})
                    elif message.get("method") == "notifications/cancelled":
                        for cancellation in self._cancellations(message, caller):
                            await self._write(process, cancellation)
                    elif "method" in message:
                        await self._write(process, message)
            except (ConnectionError, OSError):  # it takes no more input
                self._stop(process, "exited")
                raise UpstreamFailed("exited") from None
            if self.process is not process:  # it stopped while the batch was written
                self._stop(process, "exited")  # fails the calls sent after that, too
            if not waiting:
                return None
            async with asyncio.timeout(self.timeout):
                answers = [await call.answer for call in waiting]
        except TimeoutError:
            raise UpstreamFailed(f"timed out after {self.timeout:g} s") from None
        finally:
            for key in ids:
                self.pending.pop(key, None)
            for call in waiting:
                if not call.answer.cancel() and not call.answer.cancelled():
                    call.answer.exception()  # seen, so that asyncio does not log it
        restored = [{**a, "id": call.id} for call, a in zip(waiting, answers, strict=True)]
        return restored if isinstance(payload, list) else restored[0]

    def _cancellations(self, message: dict[str, Any], caller: str) -> list[dict[str, Any]]:
        """``notifications/cancelled`` for each of the caller's calls in flight with the
        id it names, under the proxy's id (none when it names no call of the caller's:
        another caller's call may have that id on the proxy's side)."""
        params = message.get("params")
        if not isinstance(params, dict) or "requestId" not in params:
            return []
        named = params["requestId"]
        return [
            {**message, "params": {**params, "requestId": key}}
            for key, call in self.pending.items()
            if call.caller == caller and _same_id(call.id, named)
        ]

    async def close(self) -> None:
        """Stop every process not yet gone: its input closed, killed if it has not exited
        within 2 s (those stopped already were killed)."""
        for process, reader in list(self.readers.items()):
            if process.stdin is not None:
                process.stdin.close()
            try:
                await asyncio.wait_for(process.wait(), 2.0)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader


def _unprogressed(message: dict[str, Any]) -> dict[str, Any]:
    """The request without its ``_meta.progressToken``: the progress the server would
    report is dropped, and callers' tokens may collide."""
    params = message.get("params")
    meta = params.get("_meta") if isinstance(params, dict) else None
    if not isinstance(params, dict) or not isinstance(meta, dict) or "progressToken" not in meta:
        return message
    meta = {k: v for k, v in meta.items() if k != "progressToken"}
    return {**message, "params": {**params, "_meta": meta}}


def _unreadable_message(line: bytes, refused: NotJson) -> bool:
    """Whether a line :func:`read_json` refused is a message beyond its bounds (nested too
    deep, a number too long, or an object it cannot read) rather than a line of text: a
    message's answer is lost with it, so the stream cannot be trusted on."""
    return isinstance(refused, TooDeep | TooLong) or line.lstrip().startswith(b"{")


def _same_id(a: Any, b: Any) -> bool:
    """Whether two JSON-RPC ids are the same (``1`` is not ``"1"``, nor ``true``)."""
    return type(a) is type(b) and bool(a == b)
