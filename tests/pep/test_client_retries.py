"""The PEP client's retries: which failures are tried again, on which address, with which
idempotency key, within which deadline; and a rolling restart of two ``tessera serve``
processes under load that no call notices.

Stand-in replicas (real gRPC servers on loopback) record each attempt's address, method
and ``idempotency-key`` metadata, and fail attempts as a test scripts them."""

from __future__ import annotations

import asyncio
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from pdp.lang.values import Risk
from pdp.serve.proto import authorizer_pb2 as pb
from pep.client import (
    IDEMPOTENCY_KEY,
    AsyncClient,
    Client,
    Options,
    Query,
    TesseraError,
    Verdict,
)
from tests.servers import LoopThread, tessera_serve

POLICIES = Path(__file__).resolve().parents[2] / "policies"
ACTIVE = {"status": "active", "risk": Risk.low}
QUERY = Query(agent="helper", tool="search", agent_attributes=ACTIVE)
# Deadlines no busy machine misses, a short backoff: the tests are not about time.
RETRYING = Options(timeout=10.0, attempts=3, backoff=0.001)

# What a replica does with an attempt, from how many attempts with its key came before.
Script = Callable[[int], grpc.StatusCode | None]


@dataclass(frozen=True)
class Attempt:
    replica: int
    method: str
    key: str


class Replicas:
    """Stand-in decision services sharing one log of attempts. An attempt fails with the
    status ``script`` gives for it (None: it is answered allow); ``hold`` makes each
    attempt wait until the test ends."""

    def __init__(self, script: Script, count: int = 2, hold: bool = False) -> None:
        self.script = script
        self.hold = hold
        self.attempts: list[Attempt] = []
        self.thread = LoopThread()
        self.released = asyncio.Event()
        self.servers: list[grpc.aio.Server] = []
        self.targets: list[str] = []
        for replica in range(count):
            server, port = self.thread.run(self._start(replica))
            self.servers.append(server)
            self.targets.append(f"127.0.0.1:{port}")

    async def _start(self, replica: int) -> tuple[grpc.aio.Server, int]:
        async def authorize(raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
            await self._attempt(replica, "Authorize", context)
            return pb.AuthorizeResponse(allow=True).SerializeToString()

        async def batch(raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
            await self._attempt(replica, "AuthorizeBatch", context)
            size = len(pb.AuthorizeBatchRequest.FromString(raw).requests)
            answers = [pb.AuthorizeResponse(allow=True)] * size
            return pb.AuthorizeBatchResponse(responses=answers).SerializeToString()

        server = grpc.aio.server()
        methods = {
            "Authorize": grpc.unary_unary_rpc_method_handler(authorize),
            "AuthorizeBatch": grpc.unary_unary_rpc_method_handler(batch),
        }
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("tessera.v1.Authorizer", methods),)
        )
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        return server, port

    async def _attempt(self, replica: int, method: str, context: grpc.aio.ServicerContext) -> None:
        key = dict(context.invocation_metadata() or ()).get(IDEMPOTENCY_KEY, "")
        assert isinstance(key, str)
        before = sum(1 for a in self.attempts if a.key == key)
        self.attempts.append(Attempt(replica, method, key))
        if self.hold:
            await self.released.wait()
        code = self.script(before)
        if code is not None:
            await context.abort(code, "scripted")

    def close(self) -> None:
        self.thread.loop.call_soon_threadsafe(self.released.set)
        for server in self.servers:
            self.thread.run(server.stop(0))
        self.thread.stop()


@contextmanager
def replicas_that(script: Script, hold: bool = False) -> Iterator[Replicas]:
    made = Replicas(script, hold=hold)
    try:
        yield made
    finally:
        made.close()


def first_fails(code: grpc.StatusCode) -> Script:
    return lambda before: code if before == 0 else None


def always(code: grpc.StatusCode) -> Script:
    return lambda before: code


def ask(kind: str, targets: list[str], options: Options, queries: int = 1) -> list[Verdict]:
    """``queries`` calls, one after another, through a sync or an asyncio client."""
    if kind == "sync":
        with Client(targets, options) as tessera:
            return [tessera.authorize(QUERY) for _ in range(queries)]

    async def scenario() -> list[Verdict]:
        async with AsyncClient(targets, options) as tessera:
            return [await tessera.authorize(QUERY) for _ in range(queries)]

    return asyncio.run(scenario())


@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize("code", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED])
def test_a_failed_attempt_is_tried_on_the_other_address_with_the_same_key(
    kind: str, code: grpc.StatusCode
) -> None:
    with replicas_that(first_fails(code)) as replicas:
        verdicts = ask(kind, replicas.targets, RETRYING, queries=2)
    assert [(v.allow, v.error) for v in verdicts] == [(True, None)] * 2
    first, retried, second, retried_second = replicas.attempts
    assert (first.replica, retried.replica) == (0, 1)  # in turn, then the next address
    assert (second.replica, retried_second.replica) == (1, 0)
    assert first.key == retried.key and second.key == retried_second.key
    assert first.key != second.key and first.key != ""


def test_a_batch_carries_one_key_kept_on_its_retry() -> None:
    with (
        replicas_that(first_fails(grpc.StatusCode.UNAVAILABLE)) as replicas,
        Client(replicas.targets, RETRYING) as tessera,
    ):
        verdicts = tessera.authorize_many([QUERY, QUERY, QUERY])
    assert [v.allow for v in verdicts] == [True] * 3
    first, retried = replicas.attempts
    assert (first.method, retried.method) == ("AuthorizeBatch", "AuthorizeBatch")
    assert first.key == retried.key != ""


def test_each_client_and_each_call_has_a_key_of_its_own() -> None:
    with replicas_that(first_fails(grpc.StatusCode.UNAVAILABLE)) as replicas:
        ask("sync", replicas.targets, RETRYING, queries=3)
        ask("sync", replicas.targets, RETRYING, queries=3)
    keys = [a.key for a in replicas.attempts]
    assert len(keys) == 12 and len(set(keys)) == 6


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_running_out_of_attempts_is_a_deny_carrying_the_error(kind: str) -> None:
    with replicas_that(always(grpc.StatusCode.UNAVAILABLE)) as replicas:
        (verdict,) = ask(kind, replicas.targets, RETRYING)
    assert not verdict.allow
    assert verdict.error == "UNAVAILABLE: scripted"
    assert [a.replica for a in replicas.attempts] == [0, 1, 0]


def test_running_out_of_attempts_raises_when_asked_to() -> None:
    options = Options(timeout=10.0, attempts=2, backoff=0.001, on_error="raise")
    with (
        replicas_that(always(grpc.StatusCode.UNAVAILABLE)) as replicas,
        Client(replicas.targets, options) as tessera,
        pytest.raises(TesseraError) as caught,
    ):
        tessera.authorize(QUERY)
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert len(replicas.attempts) == 2


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_no_retry_waits_past_the_deadline(kind: str) -> None:
    # The pause before a second try (at least 5 s) would end after the call's deadline.
    options = Options(timeout=2.0, attempts=3, backoff=10.0)
    with replicas_that(always(grpc.StatusCode.UNAVAILABLE)) as replicas:
        (verdict,) = ask(kind, replicas.targets, options)
    assert verdict.error == "UNAVAILABLE: scripted"
    assert len(replicas.attempts) == 1


def test_other_failures_are_not_tried_again() -> None:
    with replicas_that(always(grpc.StatusCode.PERMISSION_DENIED)) as replicas:
        (verdict,) = ask("sync", replicas.targets, RETRYING)
    assert verdict.error == "PERMISSION_DENIED: scripted"
    assert len(replicas.attempts) == 1


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_call_that_runs_out_of_time_is_not_tried_again(kind: str) -> None:
    options = Options(timeout=0.5, attempts=3, backoff=0.001)
    with replicas_that(always(grpc.StatusCode.UNAVAILABLE), hold=True) as replicas:
        (verdict,) = ask(kind, replicas.targets, options)
    assert verdict.error is not None and verdict.error.startswith("DEADLINE_EXCEEDED")
    assert len(replicas.attempts) == 1


def test_the_callers_own_cancellation_is_not_tried_again() -> None:
    async def scenario(replicas: Replicas) -> None:
        async with AsyncClient(replicas.targets, RETRYING) as tessera:
            call = asyncio.create_task(tessera.authorize(QUERY))
            for _ in range(1_000):
                if replicas.attempts:
                    break
                await asyncio.sleep(0.01)
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call

    with replicas_that(always(grpc.StatusCode.UNAVAILABLE), hold=True) as replicas:
        asyncio.run(scenario(replicas))
    assert len(replicas.attempts) == 1


RATE = 200  # calls per second
CALLS = 600  # three seconds' worth


def test_a_rolling_restart_under_load_costs_no_call() -> None:
    serve = ("--policies", str(POLICIES), "--store", "", "--port", "0")
    serve += ("--http-port", "-1", "--metrics-port", "-1", "--grace", "2")
    with (
        tessera_serve(*serve, lines=1) as (restarted, (line_a,)),
        tessera_serve(*serve, lines=1) as (_, (line_b,)),
    ):
        targets = [f"127.0.0.1:{port(line)}" for line in (line_a, line_b)]
        verdicts: list[Verdict] = []
        with Client(targets, Options(timeout=10.0)) as tessera:
            sender = threading.Thread(target=paced, args=(tessera, verdicts), daemon=True)
            sender.start()
            for _ in range(3_000):  # until half the calls are made, at most 30 s
                if len(verdicts) >= CALLS // 2:
                    break
                time.sleep(0.01)
            restarted.send_signal(signal.SIGTERM)
            sender.join(timeout=120)
        assert restarted.wait(timeout=20) == 0
    assert len(verdicts) == CALLS
    assert [v for v in verdicts if v.error is not None or not v.allow] == []


def port(line: str) -> str:
    found = re.match(r"tessera: serving tessera\.v1\.Authorizer on 127\.0\.0\.1:(\d+)", line)
    assert found, line
    return found.group(1)


def paced(tessera: Client, verdicts: list[Verdict]) -> None:
    """CALLS calls at RATE a second (as far as the machine keeps up)."""
    began = time.monotonic()
    for number in range(CALLS):
        verdicts.append(tessera.authorize(QUERY))
        ahead = began + (number + 1) / RATE - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
