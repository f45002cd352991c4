"""CIBA pings against clients that misbehave: receivers on loopback that answer with a
huge body, drip their reply, or stand where a ping must not go.

Each receiver counts what it did, so the tests assert what the pinging side read or
reached, never how long it took.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from issuer.oauth.fetch import DEVELOPMENT
from issuer.oauth.ping import Notifier

HUGE = 64 * 1024 * 1024  # bytes a receiver offers as its reply's body
CHUNK = 64 * 1024
DRIPS = 200  # bytes of a dripped reply head, one per DRIP seconds
DRIP = 0.1


class _Receiver(BaseHTTPRequestHandler):
    counts: dict[str, int]

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _take_request(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.counts["requests"] = self.counts.get("requests", 0) + 1


class _Huge(_Receiver):
    """Answers 200 with a body of :data:`HUGE` bytes, counting those it could write."""

    def do_POST(self) -> None:
        self._take_request()
        self.send_response(200)
        self.send_header("Content-Length", str(HUGE))
        self.end_headers()
        chunk = b"x" * CHUNK
        try:
            for _ in range(HUGE // CHUNK):
                self.wfile.write(chunk)
                self.counts["written"] = self.counts.get("written", 0) + CHUNK
        except OSError:  # the pinging side hung up
            return


class _Drip(_Receiver):
    """Sends its reply's head one byte at a time, :data:`DRIP` seconds apart."""

    def do_POST(self) -> None:
        self._take_request()
        head = b"HTTP/1.1 204 No Content\r\nX-Padding: " + b"p" * DRIPS + b"\r\n\r\n"
        try:
            for byte in head:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                threading.Event().wait(DRIP)
        except OSError:
            return
        self.counts["finished"] = 1
        self.close_connection = True


@contextmanager
def receiver(handler: type[_Receiver], host: str = "127.0.0.1") -> Iterator[dict[str, Any]]:
    counts: dict[str, int] = {}
    server = ThreadingHTTPServer((host, 0), type("R", (handler,), {"counts": counts}))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield {"url": f"http://{host}:{server.server_address[1]}/ciba", "counts": counts}
    finally:
        server.shutdown()
        server.server_close()


def test_a_huge_reply_is_not_read() -> None:
    with receiver(_Huge) as huge:
        took = asyncio.run(Notifier(attempts=1, reach=DEVELOPMENT).send(huge["url"], "t", "id"))
    assert took is True  # the status is all that counts
    assert huge["counts"].get("written", 0) < HUGE // 2  # the rest was never taken


def test_a_dripping_reply_ends_the_attempt() -> None:
    with receiver(_Drip) as drip:
        notifier = Notifier(timeout=1.0, attempts=1, reach=DEVELOPMENT)
        took = asyncio.run(notifier.send(drip["url"], "token", "id"))
    assert took is False
    assert drip["counts"]["requests"] == 1 and "finished" not in drip["counts"]


def test_a_ping_does_not_go_to_a_private_address() -> None:
    # 127.0.0.2 is loopback but no loopback name: plain http to it is refused, and the
    # receiver there never hears from the issuer
    with receiver(_Huge, "127.0.0.2") as private:
        took = asyncio.run(Notifier(attempts=1, reach=DEVELOPMENT).send(private["url"], "t", "i"))
    assert took is False
    assert private["counts"] == {}


def test_only_a_development_issuer_pings_plain_http_on_loopback() -> None:
    """An issuer not itself on plain-http loopback refuses such an endpoint: a client's
    URL must not make it call services on its own host."""
    with receiver(_Huge) as local:
        took = asyncio.run(Notifier(attempts=1).send(local["url"], "token", "id"))
    assert took is False
    assert local["counts"] == {}
