"""Real servers on loopback for tests, each in its own event loop thread."""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import grpc
from starlette.types import ASGIApp

from issuer.app import HttpRunning, bind, serve_http
from pdp.engine import Engine
from pdp.server import Running, start

T = TypeVar("T")
TIMEOUT = 10.0  # seconds, for starting and stopping a server


class LoopThread:
    """An asyncio event loop running in a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the loop and wait for its result (bounded)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=TIMEOUT)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=TIMEOUT)
        if not self.thread.is_alive():
            self.loop.close()


class Server:
    """The gRPC decision service on 127.0.0.1; ``options`` go to :func:`start` (tls,
    directory, audit, durability…)."""

    def __init__(self, engine: Engine, **options: Any) -> None:
        self.thread = LoopThread()
        try:
            self.running: Running = self.thread.run(start(engine, "127.0.0.1", 0, **options))
        except BaseException:
            self.thread.stop()
            raise
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.running.port}")

    def close(self) -> None:
        self.channel.close()
        try:
            self.thread.run(self.running.stop(0))
        finally:
            self.thread.stop()


class HttpServer:
    """An ASGI application served by uvicorn on a free port of 127.0.0.1. ``build(port)``
    makes the application once the port is known (an issuer's URL names it); ``options``
    go to :func:`serve_http` (``httptools``, ``bounds``)."""

    def __init__(
        self,
        build: Callable[[int], ASGIApp],
        tls: tuple[str, str] | None = None,
        client_ca: str | None = None,
        **options: Any,
    ) -> None:
        self.thread = LoopThread()
        try:
            sock = bind("127.0.0.1", 0)
            self.port: int = sock.getsockname()[1]
            try:
                app = build(self.port)
            except BaseException:
                sock.close()
                raise
            self.running: HttpRunning = self.thread.run(
                serve_http(app, sock, tls, client_ca, **options)
            )
        except BaseException:
            self.thread.stop()
            raise

    def close(self) -> None:
        try:
            self.thread.run(self.running.stop())
        finally:
            self.thread.stop()


@contextmanager
def tessera_serve(*args: str, lines: int) -> Iterator[tuple[subprocess.Popen[str], list[str]]]:
    """``tessera serve ARGS`` in a subprocess, with the first ``lines`` lines it printed.

    When the block ends normally, SIGTERM must stop it cleanly (exit 0); in any case it
    does not outlive the block.
    """
    exe = Path(sys.executable).parent / "tessera"
    process = subprocess.Popen(
        [str(exe), "serve", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        yield process, [process.stdout.readline() for _ in range(lines)]
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


class Serving(NamedTuple):
    """A ``tessera serve`` started by :func:`tessera_on`: the process, its gRPC port and
    the base URL of its HTTP port (SCIM, OAuth, AuthZEN)."""

    process: subprocess.Popen[str]
    grpc_port: int
    http: str


@contextmanager
def tessera_on(policies: str | Path, store: str, token: str, *flags: str) -> Iterator[Serving]:
    """``tessera serve`` on the bundle ``policies`` and the store URL ``store``, with the
    admin token ``token``, its ports picked; it says why when it does not start."""
    with tessera_serve(
        *("--policies", str(policies), "--store", store, "--admin-token", token),
        *("--port", "0", "--http-port", "0", "--metrics-port", "-1", "--grace", "1"),
        *flags,
        lines=2,
    ) as (process, lines):
        grpc_port = re.search(r"Authorizer on 127\.0\.0\.1:(\d+)", lines[0])
        http = re.search(r"SCIM 2\.0 at (http://127\.0\.0\.1:\d+)/scim/v2", lines[1])
        if (grpc_port is None or http is None) and process.wait(timeout=TIMEOUT) is not None:
            assert process.stderr is not None
            raise AssertionError(f"tessera serve did not start: {process.stderr.read()}")
        assert grpc_port and http, lines
        yield Serving(process, int(grpc_port.group(1)), http.group(1))


def read_answer(conn: socket.socket) -> bytes:
    """One HTTP answer from a raw socket: read until its body is whole (by its
    Content-Length) or the server closes; bounded reads."""
    answer = b""
    for _ in range(1000):
        head, separator, body = answer.partition(b"\r\n\r\n")
        if separator:
            lines = head.lower().split(b"\r\n")[1:]
            fields = dict(line.split(b":", 1) for line in lines if b":" in line)
            if len(body) >= int(fields.get(b"content-length", b"0")):
                return answer
        chunk = conn.recv(65536)
        if not chunk:
            break
        answer += chunk
    return answer


def send_raw(port: int, data: bytes) -> bytes:
    """Send raw bytes to 127.0.0.1:``port`` (a request, perhaps with too little body);
    the answer (see :func:`read_answer`)."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as conn:
        conn.sendall(data)
        return read_answer(conn)
