"""Real servers on loopback for tests."""

from __future__ import annotations

import asyncio
import threading

import grpc

from pdp.directory import Directory
from pdp.engine import Engine
from pdp.serve.grpc import Running, start


class Server:
    """A real server on 127.0.0.1 in its own event loop thread."""

    def __init__(
        self,
        engine: Engine,
        tls: tuple[bytes, bytes, bytes | None] | None = None,
        directory: Directory | None = None,
    ) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.running: Running = asyncio.run_coroutine_threadsafe(
            start(engine, "127.0.0.1", 0, tls=tls, directory=directory), self.loop
        ).result(timeout=10)
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.running.port}")

    def close(self) -> None:
        self.channel.close()
        asyncio.run_coroutine_threadsafe(self.running.stop(0), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
