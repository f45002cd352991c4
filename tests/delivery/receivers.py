"""An HTTP receiver on loopback for the delivery tests: it answers each POST with the
next status of a script (then 200) and keeps what it was sent."""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    statuses: list[int] = field(default_factory=list)  # answered in order, then 200
    posts: list[tuple[dict[str, str], bytes]] = field(default_factory=list)  # delivered
    tried: int = 0
    url: str = ""

    def wait_for(self, count: int, timeout: float = 30.0) -> list[tuple[dict[str, str], bytes]]:
        """Until ``count`` posts were accepted, bounded; what was accepted."""
        deadline = time.monotonic() + timeout
        while len(self.posts) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.posts


def _handler(received: Received) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            received.tried += 1
            status = received.statuses.pop(0) if received.statuses else 200
            if status == 200:
                received.posts.append(({k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


@contextmanager
def receiver(statuses: list[int] | None = None, port: int = 0) -> Iterator[Received]:
    """A receiver on 127.0.0.1 (``port``, or one picked), stopped after the block."""
    received = Received(list(statuses or []))
    server = ThreadingHTTPServer(("127.0.0.1", port), _handler(received))
    received.url = f"http://127.0.0.1:{server.server_port}/hook"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield received
    finally:
        server.shutdown()
        server.server_close()
