"""The drain of ``tessera serve``: health turns NOT_SERVING, new connections are refused,
the calls in flight finish, and those that outlast the grace period end UNAVAILABLE; the
issuer's HTTP side drains alike. Real servers on loopback; a call is held in flight at
the door's admission of its caller (its bearer token names it) until the test lets it
go on."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from starlette.applications import Starlette
from starlette.requests import Request as HttpRequest
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from issuer.app import SHUTTING_DOWN as HTTP_SHUTTING_DOWN
from issuer.verify import Caller
from pdp import server as serve_module
from pdp.doors.callers import Callers, Peps
from pdp.engine import Engine
from pdp.loader import load_directory
from pdp.serve.drain import SHUTTING_DOWN, Drained
from pdp.serve.proto import authorizer_pb2 as pb
from pdp.serve.proto import authorizer_pb2_grpc as pb_grpc
from pdp.server import SERVICE_NAME, Running, start
from tests.conftest import SHIPPED_POLICIES
from tests.servers import TIMEOUT, HttpServer, Server

GRACE = 2.0  # seconds: long enough for a released call to finish on a busy machine
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def shipped() -> Engine:
    return Engine(load_directory(SHIPPED_POLICIES).bundle)


def question(agent: str) -> pb.AuthorizeRequest:
    """May ``agent`` (active, risk low) call tool "search"? The shipped policies allow it."""
    return pb.AuthorizeRequest(
        agent=pb.Agent(
            id=agent,
            attributes={"status": pb.Value(string="active"), "risk": pb.Value(risk="low")},
        ),
        action="tool.call",
        resource=pb.Resource(type="tool", id="search"),
    )


class Held(Peps):
    """The PEPs' admission of a decision service, holding the calls whose bearer token is
    one of ``agents`` until released, and admitting every call: a call is in flight from
    before its admission."""

    def __init__(self, *agents: str) -> None:
        self.gates = {agent: asyncio.Event() for agent in agents}
        self.loop: asyncio.AbstractEventLoop | None = None

    async def admit(self, token: str | None) -> Caller:
        self.loop = asyncio.get_running_loop()
        gate = self.gates.get(token or "")
        if gate is not None:
            await gate.wait()
        return Caller(token or "", None, (), frozenset(), None)

    def release(self, agent: str) -> None:
        assert self.loop is not None, "no call was held"
        self.loop.call_soon_threadsafe(self.gates[agent].set)


def held_call(stub: pb_grpc.AuthorizerStub, agent: str) -> Any:
    """``agent``'s Authorize call, under way; its bearer token names it to :class:`Held`."""
    return stub.Authorize.future(
        question(agent), timeout=TIMEOUT * 3, metadata=(("authorization", f"Bearer {agent}"),)
    )


def in_flight(running: Running) -> int:
    return len(running.point.metrics.calls_in_flight)


def wait_until(condition: Any, what: str) -> None:
    """Poll ``condition`` a bounded number of times."""
    for _ in range(1_000):
        if condition():
            return
        time.sleep(0.01)
    raise AssertionError(f"never: {what}")


def refuses_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except ConnectionRefusedError:
        return True
    except ConnectionResetError:  # the listener closed while this one was queued
        return False


@pytest.fixture
def held() -> Held:
    return Held("prompt", "late")


@pytest.fixture
def server(held: Held) -> Iterator[Server]:
    """A decision service of its own, admitting its callers through ``held``: each test
    here stops it."""
    running = Server(shipped(), callers=Callers(peps=held))
    yield running
    running.close()


def watch(server: Server, service: str) -> Iterator[health_pb2.HealthCheckResponse]:
    """A health Watch stream (as a load balancer keeps), past its first answer, SERVING."""
    stream = health_pb2_grpc.HealthStub(server.channel).Watch(
        health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT * 3
    )
    assert next(stream).status == SERVING
    return stream


def test_a_drain_finishes_calls_in_flight_and_ends_late_ones_unavailable(
    server: Server, held: Held
) -> None:
    watches = [watch(server, name) for name in ("", SERVICE_NAME)]
    stub = pb_grpc.AuthorizerStub(server.channel)
    prompt = held_call(stub, "prompt")
    late = held_call(stub, "late")
    wait_until(lambda: in_flight(server.running) == 2, "both calls in flight")

    loop = server.thread.loop
    stopping = asyncio.run_coroutine_threadsafe(server.running.stop(GRACE), loop)
    assert [next(stream).status for stream in watches] == [NOT_SERVING, NOT_SERVING]
    wait_until(lambda: refuses_connections(server.running.port), "new connections refused")
    held.release("prompt")
    assert prompt.result(timeout=TIMEOUT).allow

    with pytest.raises(grpc.RpcError) as caught:
        late.result(timeout=TIMEOUT)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert caught.value.details() == SHUTTING_DOWN
    assert stopping.result(timeout=TIMEOUT) == Drained(finished=1, ended=1)
    held.release("late")  # it decides on; what it decides is not sent


def test_stopping_again_tells_what_the_first_stop_did(server: Server) -> None:
    loop = server.thread.loop
    first = asyncio.run_coroutine_threadsafe(server.running.stop(GRACE), loop)
    again = asyncio.run_coroutine_threadsafe(server.running.stop(0), loop)
    assert first.result(timeout=TIMEOUT) == again.result(timeout=TIMEOUT) == Drained(0, 0)


def test_hurrying_ends_the_calls_in_flight_unavailable_at_once(server: Server, held: Held) -> None:
    late = held_call(pb_grpc.AuthorizerStub(server.channel), "late")
    wait_until(lambda: in_flight(server.running) == 1, "the call in flight")
    loop = server.thread.loop
    stopping = asyncio.run_coroutine_threadsafe(server.running.stop(3_600), loop)
    wait_until(lambda: refuses_connections(server.running.port), "the drain under way")
    loop.call_soon_threadsafe(server.running.hurry)
    with pytest.raises(grpc.RpcError) as caught:
        late.result(timeout=TIMEOUT)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert stopping.result(timeout=TIMEOUT) == Drained(finished=0, ended=1)
    held.release("late")


def test_sigterm_drains_and_a_second_signal_stops_at_once() -> None:
    assert threading.current_thread() is threading.main_thread()  # signals reach the loop

    async def scenario() -> tuple[grpc.StatusCode, Drained]:
        held = Held("late")
        running = await start(shipped(), "127.0.0.1", 0, callers=Callers(peps=held))
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            call = pb_grpc.AuthorizerStub(channel).Authorize(
                question("late"), timeout=TIMEOUT, metadata=(("authorization", "Bearer late"),)
            )
            for _ in range(1_000):
                if in_flight(running):
                    break
                await asyncio.sleep(0.01)
            signalled = asyncio.create_task(serve_module._until_signalled(running, None))
            await asyncio.sleep(0)  # its signal handlers are in place
            os.kill(os.getpid(), signal.SIGTERM)
            await asyncio.wait_for(signalled, TIMEOUT)
            stopping = asyncio.create_task(running.stop(3_600))
            os.kill(os.getpid(), signal.SIGTERM)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call
            return caught.value.code(), await asyncio.wait_for(stopping, TIMEOUT)

    assert asyncio.run(scenario()) == (grpc.StatusCode.UNAVAILABLE, Drained(0, 1))


def test_tessera_serve_drains_on_sigterm_with_a_health_watcher_and_says_so() -> None:
    exe = Path(sys.executable).parent / "tessera"
    process = subprocess.Popen(
        [
            *(str(exe), "serve", "--policies", str(SHIPPED_POLICIES), "--store", ""),
            *("--port", "0", "--http-port", "-1", "--metrics-port", "-1", "--grace", "1"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        match = re.match(r"tessera: serving tessera\.v1\.Authorizer on 127\.0\.0\.1:(\d+)", first)
        assert match, first
        with grpc.insecure_channel(f"127.0.0.1:{match.group(1)}") as channel:
            assert pb_grpc.AuthorizerStub(channel).Authorize(question("a"), timeout=TIMEOUT).allow
            # A load balancer's watch: it is told, and it does not keep the process alive.
            watcher = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(service=""), timeout=TIMEOUT * 3
            )
            assert next(watcher).status == SERVING
            process.send_signal(signal.SIGTERM)
            assert next(watcher).status == NOT_SERVING
            out, _ = process.communicate(timeout=TIMEOUT * 2)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=TIMEOUT)
    assert process.returncode == 0
    assert "tessera: draining: health NOT_SERVING, no new calls; those in flight have 1 s" in out
    assert re.search(r"tessera: drained in \d+\.\d s: 0 calls finished, 0 ended UNAVAILABLE", out)


class SlowApp:
    """An HTTP application whose ``/hold`` requests wait until released."""

    def __init__(self) -> None:
        self.arrived = threading.Event()
        self.gate = asyncio.Event()

    def build(self, port: int) -> Starlette:
        async def hold(request: HttpRequest) -> Response:
            self.arrived.set()
            await self.gate.wait()
            return PlainTextResponse("done")

        return Starlette(routes=[Route("/hold", hold)])


def held_request(port: int) -> tuple[threading.Thread, list[Any]]:
    """GET /hold from a thread; the list gets its response or the error."""
    outcome: list[Any] = []

    def get() -> None:
        try:
            outcome.append(httpx.get(f"http://127.0.0.1:{port}/hold", timeout=TIMEOUT * 3))
        except httpx.HTTPError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=get, daemon=True)
    thread.start()
    return thread, outcome


def test_the_http_side_refuses_connections_and_finishes_its_requests() -> None:
    app = SlowApp()
    http = HttpServer(app.build)
    try:
        thread, outcome = held_request(http.port)
        assert app.arrived.wait(TIMEOUT)
        loop = http.thread.loop
        stopping = asyncio.run_coroutine_threadsafe(http.running.stop(GRACE * 2), loop)
        wait_until(lambda: refuses_connections(http.port), "new connections refused")
        loop.call_soon_threadsafe(app.gate.set)
        thread.join(TIMEOUT)
        stopping.result(timeout=TIMEOUT)
    finally:
        http.close()
    assert isinstance(outcome[0], httpx.Response)
    assert (outcome[0].status_code, outcome[0].text) == (200, "done")


def test_the_http_side_answers_requests_that_outlast_the_grace_period_503() -> None:
    app = SlowApp()
    http = HttpServer(app.build)
    try:
        thread, outcome = held_request(http.port)
        assert app.arrived.wait(TIMEOUT)
        stop = http.running.stop(0.5)
        asyncio.run_coroutine_threadsafe(stop, http.thread.loop).result(timeout=TIMEOUT)
        thread.join(TIMEOUT)
    finally:
        http.close()
    assert isinstance(outcome[0], httpx.Response)
    assert (outcome[0].status_code, outcome[0].text) == (503, HTTP_SHUTTING_DOWN)
    assert outcome[0].headers["retry-after"] == "1"
