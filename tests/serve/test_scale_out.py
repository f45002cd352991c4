"""A cap holds exactly across every process that decides: workers, replicas, restarts.

Each test provisions a payments agent over SCIM and has 8 concurrent clients send
100 USD transfers against the shipped ``5000 USD per 24h per agent`` cap, spread over
every serving process: exactly 50 are allowed, and after everything restarts the next
one is still denied.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx

from issuer.models import AGENT_EXTENSION, AGENT_SCHEMA
from pdp.serve.proto import authorizer_pb2 as pb
from pdp.serve.proto import authorizer_pb2_grpc as pb_grpc
from tests.conftest import SHIPPED_POLICIES
from tests.counters.places import REDIS_URL
from tests.servers import tessera_on
from tests.stores import postgres_schema

TOKEN = "test-admin-token-0123456789"
CAP = 50  # transfers of 100 USD under 5,000 USD
CLIENTS = 8
ATTEMPTS = 9  # per client: 72 in all, more than the cap
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]  # a channel's own TCP connection


@dataclass
class Replica:
    grpc: str  # host:port
    scim: str  # base URL


@contextmanager
def replica(store: str, *flags: str) -> Iterator[Replica]:
    """``tessera serve`` on ``store`` (ports picked), stopped cleanly after the block."""
    with tessera_on(SHIPPED_POLICIES, store, TOKEN, "--grace", "2", *flags) as serving:
        yield Replica(f"127.0.0.1:{serving.grpc_port}", f"{serving.http}/scim/v2")


def provision(scim: str) -> str:
    """A new low-risk payments agent; its id."""
    created = httpx.post(
        f"{scim}/Agents",
        headers={"Authorization": f"Bearer {TOKEN}"},
        json={
            "schemas": [AGENT_SCHEMA, AGENT_EXTENSION],
            "name": "payer",
            AGENT_EXTENSION: {"owner": "finance", "riskLevel": "low", "purpose": "payments"},
        },
        timeout=10,
    )
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


def transfer(agent: str) -> pb.AuthorizeRequest:
    return pb.AuthorizeRequest(
        agent=pb.Agent(id=agent),
        action="tool.call",
        resource=pb.Resource(type="tool", id="payments.transfer"),
        context={"amount": pb.Value(money=pb.Money(amount="100", currency="USD"))},
    )


def wait_known(address: str, agent: str) -> None:
    """Until this process's directory knows the agent (it follows the store's change
    feed), bounded."""
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.AuthorizerStub(channel)
        probe = pb.AuthorizeRequest(
            agent=pb.Agent(id=agent),
            action="tool.call",
            resource=pb.Resource(type="tool", id="search"),
        )
        for _ in range(500):
            if stub.Authorize(probe, timeout=5).allow:
                return
            time.sleep(0.01)
        raise AssertionError(f"{address} never learned of {agent}")


def allowed_transfers(addresses: Sequence[str], agent: str) -> tuple[int, int]:
    """How many of CLIENTS × ATTEMPTS concurrent transfers are allowed, and how many
    processes answered them (a decision id starts with its process's random prefix).
    Each attempt opens a connection of its own, so the kernel spreads them over the
    workers sharing a port; the attempts alternate between the addresses."""

    def client(number: int) -> tuple[int, set[str]]:
        allowed, prefixes = 0, set()
        for attempt in range(ATTEMPTS):
            address = addresses[(number + attempt) % len(addresses)]
            with grpc.insecure_channel(address, options=OWN_CONNECTION) as channel:
                answer = pb_grpc.AuthorizerStub(channel).Authorize(transfer(agent), timeout=10)
            allowed += answer.allow
            prefixes.add(answer.decision_id[:16])
        return allowed, prefixes

    with ThreadPoolExecutor(CLIENTS) as pool:
        results = list(pool.map(client, range(CLIENTS)))
    return sum(a for a, _ in results), len(set().union(*(p for _, p in results)))


def denied_now(addresses: Sequence[str], agent: str) -> bool:
    for address in addresses:
        wait_known(address, agent)
        with grpc.insecure_channel(address) as channel:
            answer = pb_grpc.AuthorizerStub(channel).Authorize(transfer(agent), timeout=10)
            if answer.allow:
                return False
            assert any("over its limit" in reason for reason in answer.reasons), answer
    return True


def test_the_embedded_default_with_two_workers_keeps_a_cap_across_a_restart(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path}/tessera.db"
    with replica(store, "--workers", "2") as one:
        agent = provision(one.scim)
        wait_known(one.grpc, agent)
        assert allowed_transfers([one.grpc], agent) == (CAP, 2)
    with replica(store, "--workers", "2") as again:
        assert denied_now([again.grpc], agent)


def test_two_replicas_of_two_workers_on_postgresql_and_redis_hold_one_cap(tmp_path: Path) -> None:
    with postgres_schema() as store:
        flags = ("--counters", REDIS_URL, "--workers", "2")
        with replica(store, *flags) as first, replica(store, *flags) as second:
            agent = provision(first.scim)
            addresses = [first.grpc, second.grpc]
            for address in addresses:
                wait_known(address, agent)
            assert allowed_transfers(addresses, agent) == (CAP, 4)  # 2 replicas × 2 workers
        with ExitStack() as stack:  # everything restarted
            again = [stack.enter_context(replica(store, *flags)) for _ in range(2)]
            assert denied_now([r.grpc for r in again], agent)
