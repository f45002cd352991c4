"""Limits counted in a shared counter store, as the decision service uses them: when the
store stops answering, what a limit decides is denied with the reason and the rest keeps
being allowed; when it answers again, the cap holds exactly, as if nothing happened."""

from __future__ import annotations

import signal
import subprocess
import time
import uuid
from collections.abc import Iterator

import pytest

from pdp.counters.redis import RedisCounters
from pdp.engine import Engine
from pdp.loader import load_directory
from pdp.serve.proto import authorizer_pb2 as pb
from pdp.serve.proto import authorizer_pb2_grpc as pb_grpc
from tests.conftest import SHIPPED_POLICIES
from tests.counters.places import closed_port, redis_server
from tests.servers import Server

TRANSFER = pb.Value(money=pb.Money(amount="100", currency="USD"))
CAP = 50  # transfers of 100 USD under the shipped 5,000 USD a day per agent


def question(agent_id: str, tool: str) -> pb.AuthorizeRequest:
    agent = pb.Agent(
        id=agent_id,
        attributes={
            "status": pb.Value(string="active"),
            "risk": pb.Value(risk="low"),
            "purpose": pb.Value(string="payments"),
        },
    )
    context = {"amount": TRANSFER} if tool == "payments.transfer" else {}
    return pb.AuthorizeRequest(
        agent=agent, action="tool.call", resource=pb.Resource(type="tool", id=tool), context=context
    )


@pytest.fixture
def stalled_redis() -> Iterator[tuple[Server, subprocess.Popen[bytes]]]:
    """A decision service counting in a Redis server of the test's own."""
    port = closed_port()
    with redis_server(port) as process:
        counters = RedisCounters(f"redis://127.0.0.1:{port}/0", timeout=0.2, backoff=0.1)
        server = Server(Engine(load_directory(SHIPPED_POLICIES).bundle, counters))
        try:
            yield server, process
        finally:
            server.close()
            counters.close()


def test_a_stalled_counter_store_denies_limits_only_and_recovers_exactly(
    stalled_redis: tuple[Server, subprocess.Popen[bytes]],
) -> None:
    server, process = stalled_redis
    stub = pb_grpc.AuthorizerStub(server.channel)
    agent = f"pay-bot-{uuid.uuid4().hex[:8]}"
    transfer, search = question(agent, "payments.transfer"), question(agent, "search")
    allowed = sum(stub.Authorize(transfer, timeout=5).allow for _ in range(10))
    assert allowed == 10

    process.send_signal(signal.SIGSTOP)
    try:
        for _ in range(3):
            denied = stub.Authorize(transfer, timeout=5)
            assert not denied.allow
            assert any("could not be checked" in reason for reason in denied.reasons)
            assert "the Redis counter store at redis://127.0.0.1" in " ".join(denied.reasons)
            assert stub.Authorize(search, timeout=5).allow  # no limit: unaffected
    finally:
        process.send_signal(signal.SIGCONT)
    registry = server.running.point.metrics.registry
    assert (registry.get_sample_value("tessera_limit_counter_errors_total") or 0) >= 1

    for _ in range(200):  # the breaker lets a call through again within its back-off
        if stub.Authorize(transfer, timeout=5).allow:
            allowed += 1
            break
        time.sleep(0.05)
    while stub.Authorize(transfer, timeout=5).allow:
        allowed += 1
        assert allowed <= CAP
    assert allowed == CAP  # nothing counted twice, nothing lost
