"""The PEP client stub against a real decision service on loopback."""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import grpc
import pytest

from pdp.engine import Engine
from pdp.lang.values import Money, Risk
from pdp.loader import load_directory
from pep.client import AsyncClient, Client, Options, Query, TesseraError, addresses, to_value
from tests.servers import Server

POLICIES = Path(__file__).resolve().parents[2] / "policies"
ACTIVE = {"status": "active", "risk": Risk.low, "purpose": "payments"}
# A deadline no busy test machine misses, for tests that are not about deadlines (the
# client's default is 0.5 s per call, all attempts included).
PATIENT = Options(timeout=10.0)


@pytest.fixture
def target(server: Server) -> str:
    return f"127.0.0.1:{server.running.port}"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_sync_client_allows_and_denies(target: str) -> None:
    with Client(target, PATIENT) as tessera:
        allowed = tessera.authorize(Query(agent="helper", tool="search", agent_attributes=ACTIVE))
        assert allowed.allow and allowed.decided_by == ("agents.read_only",)
        assert len(allowed.decision_id) == 32
        consent = tessera.authorize(
            Query(
                agent="pay-bot",
                tool="payments.transfer",
                user="alice",
                agent_attributes=ACTIVE,
                context={"amount": Money(Decimal(200), "USD")},
            )
        )
        assert not consent.allow
        assert consent.obligations == (("consent", "payments:transfer"),)
        assert consent.error is None


def test_async_client_and_batch(target: str) -> None:
    async def scenario() -> tuple[bool, list[bool]]:
        async with AsyncClient(target, PATIENT) as tessera:
            one = await tessera.authorize(
                Query(agent="helper", tool="search", agent_attributes=ACTIVE)
            )
            many = await tessera.authorize_many(
                [
                    Query(agent="helper", tool="search", agent_attributes=ACTIVE),
                    Query(agent="helper", tool="delete_everything", agent_attributes=ACTIVE),
                ]
            )
            return one.allow, [v.allow for v in many]

    assert asyncio.run(scenario()) == (True, [True, False])


def test_sync_batch_keeps_order(target: str) -> None:
    with Client(target, PATIENT) as tessera:
        verdicts = tessera.authorize_many(
            [
                Query(agent="a", tool="delete_everything", agent_attributes=ACTIVE),
                Query(agent="a", tool="search", agent_attributes=ACTIVE),
            ]
        )
    assert [v.allow for v in verdicts] == [False, True]


def test_an_unreachable_service_is_a_deny_by_default() -> None:
    options = Options(timeout=0.2, attempts=2, backoff=0.01)
    with Client(f"127.0.0.1:{free_port()}", options) as tessera:
        verdict = tessera.authorize(Query(agent="a", tool="search"))
    assert not verdict.allow
    assert verdict.error is not None and verdict.error.startswith("UNAVAILABLE")
    assert verdict.reasons[0].startswith("fail closed")


def test_errors_can_raise_instead(target: str) -> None:
    options = Options(timeout=0.2, attempts=1, on_error="raise")
    with (
        Client(f"127.0.0.1:{free_port()}", options) as tessera,
        pytest.raises(TesseraError) as caught,
    ):
        tessera.authorize(Query(agent="a", tool="search"))
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE


def test_a_malformed_query_is_a_deny_naming_the_field(target: str) -> None:
    with Client(target, PATIENT) as tessera:
        verdict = tessera.authorize(
            Query(agent="a", tool="payments.transfer", context={"amount": "lots"})
        )
    assert not verdict.allow
    assert verdict.error is not None
    assert "INVALID_ARGUMENT: context.amount: invalid money" in verdict.error


def test_a_malformed_query_is_refused_and_says_so(target: str) -> None:
    with Client(target, PATIENT) as tessera:
        verdict = tessera.authorize(
            Query(agent="a", tool="payments.transfer", context={"amount": "lots"})
        )
    assert verdict.code == "INVALID_ARGUMENT"
    assert verdict.refused  # the question itself: asking again cannot help


def test_a_query_over_the_message_bound_is_a_deny_without_being_sent(
    server: Server, target: str
) -> None:
    registry = server.running.point.metrics.registry

    def calls() -> float | None:
        return registry.get_sample_value("tessera_rpc_seconds_count", {"method": "Authorize"})

    with Client(target, PATIENT) as tessera:
        assert tessera.authorize(Query(agent="a", tool="search")).error is None
        before = calls()
        verdict = tessera.authorize(
            Query(agent="a", tool="search", context={"note": "x" * (1 << 20)})
        )
    assert not verdict.allow
    assert verdict.code == "RESOURCE_EXHAUSTED"
    assert verdict.error is not None
    assert "Sent message larger than max" in verdict.error  # refused here, not by the server
    assert before is not None and calls() == before  # the server never saw it


def test_the_message_bound_is_an_option(target: str) -> None:
    options = Options(timeout=10.0, max_message_bytes=1_000)
    with Client(target, options) as tessera:
        small = tessera.authorize(Query(agent="helper", tool="search", agent_attributes=ACTIVE))
        large = tessera.authorize(
            Query(agent="helper", tool="search", context={"note": "x" * 1_000})
        )
    assert small.allow
    assert large.code == "RESOURCE_EXHAUSTED"
    assert large.error is not None and "Sent message larger than max" in large.error


def test_local_cache_keeps_only_cacheable_answers(target: str) -> None:
    options = Options(timeout=10.0, cache_size=100, cache_ttl=60)
    external = {"status": "active", "risk": Risk.medium, "type": "external"}
    with Client(target, options) as tessera:
        first = tessera.authorize(Query(agent="c", tool="summarize", agent_attributes=ACTIVE))
        second = tessera.authorize(Query(agent="c", tool="summarize", agent_attributes=ACTIVE))
        assert (first.cached, second.cached) == (False, True)
        assert second.allow
        limited = [
            tessera.authorize(Query(agent="ext", tool="web.search", agent_attributes=external))
            for _ in range(2)
        ]
        assert [v.cached for v in limited] == [False, False]  # a limit is involved


def test_python_values_become_typed_values() -> None:
    assert to_value(Risk.high).risk == "high"
    assert to_value(Money("1.5", "EUR")).money.amount == "1.5"
    assert list(to_value({"b", "a"}).strings.values) == ["a", "b"]
    assert to_value(3).integer == 3 and to_value(2.5).number == 2.5
    assert to_value(True).bool is True
    with pytest.raises(TypeError, match="cannot send"):
        to_value(object())


def authorize_calls(server: Server) -> int:
    """How many Authorize calls ``server`` has answered."""
    from prometheus_client import generate_latest

    text = generate_latest(server.running.point.metrics.registry).decode()
    found = re.search(r'tessera_rpc_seconds_count\{method="Authorize"\} (\d+)', text)
    return int(found.group(1)) if found else 0


@pytest.fixture
def two() -> Iterator[list[Server]]:
    """Two decision services of their own on the shipped policies (a test may stop one)."""
    servers: list[Server] = []
    try:
        for _ in range(2):
            servers.append(Server(Engine(load_directory(POLICIES).bundle)))
        yield servers
    finally:
        for server in servers:
            server.close()


def test_addresses_come_as_a_list_or_one_string_with_commas() -> None:
    assert addresses("10.0.0.1:50051, 10.0.0.2:50051") == ("10.0.0.1:50051", "10.0.0.2:50051")
    assert addresses(["a:1", "b:2"]) == ("a:1", "b:2")
    assert addresses("dns:///pdp.internal:50051") == ("dns:///pdp.internal:50051",)
    with pytest.raises(ValueError, match="no address"):
        addresses(" , ")


@pytest.mark.parametrize("given", ["string", "list"])
def test_calls_are_spread_over_the_addresses_in_turn(two: list[Server], given: str) -> None:
    targets = [f"127.0.0.1:{s.running.port}" for s in two]
    before = [authorize_calls(s) for s in two]
    with Client(",".join(targets) if given == "string" else targets, PATIENT) as tessera:
        verdicts = [tessera.authorize(Query(agent="a", tool="search")) for _ in range(10)]
    assert [v.error for v in verdicts] == [None] * 10
    assert [authorize_calls(s) - b for s, b in zip(two, before, strict=True)] == [5, 5]


def test_a_replica_stopped_gracefully_costs_no_call(two: list[Server]) -> None:
    targets = [f"127.0.0.1:{s.running.port}" for s in two]
    query = Query(agent="helper", tool="search", agent_attributes=ACTIVE)
    with Client(targets, PATIENT) as tessera:
        verdicts = [tessera.authorize(query) for _ in range(20)]
        gone = two[0]
        gone.thread.run(gone.running.stop(1))
        verdicts += [tessera.authorize(query) for _ in range(60)]
    assert [(v.allow, v.error) for v in verdicts] == [(True, None)] * 80
    assert authorize_calls(two[1]) == 10 + 60  # its share before, then every call
