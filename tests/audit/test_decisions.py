"""Every decision the gRPC service answers is on the agent trail, tied to its answer.

A real server on 127.0.0.1 (in its own event loop thread) decides on the shipped
policies and records through an :class:`AuditWriter` on a store; the tests read the
store back while the server runs.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest

from issuer.store import AuditEntry, Store, open_store
from pdp.audit.query import entries, verify_trail
from pdp.audit.writer import QUEUE_BYTES, RECORD_BYTES, AuditWriter
from pdp.engine import Engine
from pdp.loader import load_directory
from pdp.serve.proto import authorizer_pb2 as pb
from pdp.serve.proto import authorizer_pb2_grpc as pb_grpc
from tests.servers import Server
from tests.stores import BACKENDS, opened_store, store_url

POLICIES = Path(__file__).resolve().parents[2] / "policies"
BUNDLE = load_directory(POLICIES).bundle
WAIT = 10.0  # seconds: the bound on every wait in these tests


class Audited(Server):
    """The decision service on 127.0.0.1 with every decision recorded on ``store``."""

    def __init__(
        self,
        store: Store,
        durability: str,
        queue_size: int = 10_000,
        queue_bytes: int = QUEUE_BYTES,
    ) -> None:
        self.writer = AuditWriter(store, queue_size, queue_bytes=queue_bytes)
        super().__init__(Engine(BUNDLE), audit=self.writer, durability=durability)
        self.stub = pb_grpc.AuthorizerStub(self.channel)  # type: ignore[no-untyped-call]

    def close(self) -> None:
        super().close()
        self.writer.close(WAIT)


@contextmanager
def serving(
    store: Store, durability: str, queue_size: int = 10_000, queue_bytes: int = QUEUE_BYTES
) -> Iterator[Audited]:
    server = Audited(store, durability, queue_size, queue_bytes)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with opened_store("sqlite", tmp_path) as opened:
        yield opened


@pytest.fixture(params=BACKENDS)
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    with store_url(request.param, tmp_path) as url:
        opened = open_store(url)
        yield opened
        opened.close()


class SlowAppends:
    """Holds the store's commits back until :attr:`released` is set (or for ``delay``)."""

    def __init__(self, store: Store, monkeypatch: pytest.MonkeyPatch, delay: float = 0) -> None:
        self.inner: Callable[[str, Sequence[AuditEntry]], None] = store.append_audit
        self.delay = delay
        self.released = threading.Event()
        if delay:
            self.released.set()
        monkeypatch.setattr(store, "append_audit", self)

    def __call__(self, trail: str, batch: Sequence[AuditEntry]) -> None:
        self.released.wait(WAIT)
        time.sleep(self.delay)
        self.inner(trail, batch)


# ------------------------------------------------------------------ requests


def agent(status: str = "active", risk: str = "low", id: str = "pay-bot") -> pb.Agent:
    return pb.Agent(
        id=id,
        attributes={
            "status": pb.Value(string=status),
            "risk": pb.Value(risk=risk),
            "purpose": pb.Value(string="payments"),
        },
    )


def call(tool: str, *, status: str = "active", user: str | None = None, **context: Any) -> Any:
    request = pb.AuthorizeRequest(
        agent=agent(status),
        action="tool.call",
        resource=pb.Resource(type="tool", id=tool),
        context=context,
    )
    if user is not None:
        request.user.id = user
    return request


def transfer(amount: str, user: str | None = None) -> Any:
    money = pb.Value(money=pb.Money(amount=amount, currency="USD"))
    return call("payments.transfer", user=user, amount=money)


ALLOWED = call("search")
SUSPENDED = call("search", status="suspended")
UNKNOWN_TOOL = call("rm -rf")
WITH_CONSENT = transfer("200", user="alice")


# ------------------------------------------------------------------ reading the trail


def records(store: Store) -> list[dict[str, Any]]:
    return [json.loads(e.record) for e in entries(store, "agent")]


def by_decision(store: Store) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for record in records(store):
        found.setdefault(record["decision_id"], []).append(record)
    return found


def assert_records_the_answer(record: dict[str, Any], request: Any, response: Any) -> None:
    assert record["kind"] == "decision"
    assert record["decision_id"] == response.decision_id
    assert record["agent"] == request.agent.id
    assert record["user"] == (request.user.id if request.HasField("user") else None)
    assert record["action"] == request.action
    assert record["resource"] == {"type": request.resource.type, "id": request.resource.id}
    assert record["allow"] is response.allow
    assert record["decided_by"] == list(response.decided_by)
    assert record["reasons"] == list(response.reasons)
    assert record["obligations"] == [f"{o.kind}:{o.value}" for o in response.obligations]
    assert record["bundle_version"] == response.bundle_version == BUNDLE.version
    assert record["pep"].startswith("ipv4:127.0.0.1:")
    assert record["latency_us"] > 0
    at = datetime.fromisoformat(record["at"])
    assert abs(datetime.now(UTC) - at) < timedelta(minutes=1)


def wait_for(store: Store, count: int) -> None:
    deadline = time.monotonic() + WAIT
    while verify_trail(store, "agent")[0] < count:
        assert time.monotonic() < deadline, f"fewer than {count} records after {WAIT}s"
        time.sleep(0.01)


# ------------------------------------------------------------------ tests


def test_each_authorize_answer_is_recorded_once_with_what_the_pep_got(store: Store) -> None:
    requests = [ALLOWED, SUSPENDED, UNKNOWN_TOOL, WITH_CONSENT, ALLOWED]
    with serving(store, "sync") as server:
        responses = [server.stub.Authorize(r, timeout=WAIT) for r in requests]
    assert [r.allow for r in responses] == [True, False, False, False, True]
    assert list(responses[3].obligations) != []  # the consent obligation is recorded too
    found = by_decision(store)
    assert len(found) == len(requests) == len({r.decision_id for r in responses})
    for request, response in zip(requests, responses, strict=True):
        (record,) = found[response.decision_id]
        assert_records_the_answer(record, request, response)


def test_a_record_carries_the_request_context_user_and_delegation(store: Store) -> None:
    request = transfer("200", user="alice")
    request.delegation.chain.extend(["planner", "pay-bot"])
    with serving(store, "sync") as server:
        response = server.stub.Authorize(request, timeout=WAIT)
    (record,) = by_decision(store)[response.decision_id]
    assert record["user"] == "alice"
    assert record["delegation"] == ["planner", "pay-bot"]
    assert record["context"] == {"amount": {"amount": "200", "currency": "USD"}}


def test_each_batch_answer_is_recorded_once_with_what_the_pep_got(store: Store) -> None:
    requests = [ALLOWED, SUSPENDED, UNKNOWN_TOOL, WITH_CONSENT]
    with serving(store, "sync") as server:
        batch = pb.AuthorizeBatchRequest(requests=requests)
        responses = server.stub.AuthorizeBatch(batch, timeout=WAIT).responses
    found = by_decision(store)
    assert len(found) == len(requests)
    for request, response in zip(requests, responses, strict=True):
        (record,) = found[response.decision_id]
        assert_records_the_answer(record, request, response)
    # A batch's records are on the trail in the batch's order.
    assert [r["decision_id"] for r in records(store)] == [r.decision_id for r in responses]


def test_with_sync_durability_the_record_is_stored_when_the_answer_arrives(
    any_store: Store,
) -> None:
    with serving(any_store, "sync") as server:
        for n, request in enumerate([ALLOWED, SUSPENDED, ALLOWED, WITH_CONSENT] * 5, 1):
            response = server.stub.Authorize(request, timeout=WAIT)
            tail = any_store.audit_tail("agent")  # read at once: no waiting
            assert tail is not None and tail.seq == n
            assert json.loads(tail.record)["decision_id"] == response.decision_id
        batch = pb.AuthorizeBatchRequest(requests=[ALLOWED, SUSPENDED, UNKNOWN_TOOL])
        answers = server.stub.AuthorizeBatch(batch, timeout=WAIT).responses
        found = by_decision(any_store)
        assert all(len(found[a.decision_id]) == 1 for a in answers)
    assert verify_trail(any_store, "agent") == (23, [])


def test_with_sync_durability_the_answer_waits_for_the_commit(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow = SlowAppends(store, monkeypatch)
    with serving(store, "sync") as server, ThreadPoolExecutor(1) as pool:
        answer = pool.submit(server.stub.Authorize, ALLOWED, timeout=WAIT)
        time.sleep(0.3)
        assert not answer.done(), "answered before the record was committed"
        slow.released.set()
        response = answer.result(WAIT)
        assert len(by_decision(store)[response.decision_id]) == 1


def test_with_async_durability_the_answer_does_not_wait_and_the_record_follows(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow = SlowAppends(store, monkeypatch)
    with serving(store, "async") as server:
        response = server.stub.Authorize(ALLOWED, timeout=WAIT)  # the store is held back
        assert store.audit_tail("agent") is None
        slow.released.set()
        wait_for(store, 1)
        (record,) = by_decision(store)[response.decision_id]
        assert_records_the_answer(record, ALLOWED, response)


def test_with_async_durability_every_record_arrives_within_a_bounded_wait(
    any_store: Store,
) -> None:
    with serving(any_store, "async") as server:
        responses = [server.stub.Authorize(r, timeout=WAIT) for r in [ALLOWED, SUSPENDED] * 10]
        wait_for(any_store, 20)
    found = by_decision(any_store)
    assert all(len(found[r.decision_id]) == 1 for r in responses)


def test_the_chain_verifies_after_200_mixed_concurrent_decisions(store: Store) -> None:
    singles = [ALLOWED, SUSPENDED, UNKNOWN_TOOL, WITH_CONSENT, transfer("900")] * 24  # 120
    batches = [[ALLOWED, transfer("50"), SUSPENDED, UNKNOWN_TOOL]] * 20  # 80
    with serving(store, "async") as server, ThreadPoolExecutor(8) as pool:

        def authorize(request: Any) -> list[Any]:
            return [server.stub.Authorize(request, timeout=WAIT)]

        def authorize_batch(requests: list[Any]) -> list[Any]:
            batch = pb.AuthorizeBatchRequest(requests=requests)
            return list(server.stub.AuthorizeBatch(batch, timeout=WAIT).responses)

        calls = [pool.submit(authorize, r) for r in singles]
        calls += [pool.submit(authorize_batch, b) for b in batches]
        responses = [response for done in calls for response in done.result(WAIT)]
        wait_for(store, 200)
    assert len(responses) == 200
    assert {r.allow for r in responses} == {True, False}
    assert verify_trail(store, "agent") == (200, [])
    assert [e.seq for e in entries(store, "agent")] == list(range(1, 201))
    found = by_decision(store)
    assert sorted(found) == sorted(r.decision_id for r in responses)
    assert all(len(found[r.decision_id]) == 1 for r in responses)


def test_with_sync_durability_a_full_audit_queue_makes_decisions_wait_and_drops_none(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    SlowAppends(store, monkeypatch, delay=0.02)
    with serving(store, "sync", queue_size=2) as server, ThreadPoolExecutor(8) as pool:
        waited: list[str] = []  # submit() is called only when the queue had no room
        submit = server.writer.submit

        def waiting_submit(trail: str, record: Any, **options: Any) -> Future[int]:
            built = record() if callable(record) else record  # records come as factories
            waited.append(built["decision_id"])
            return submit(trail, record, **options)

        monkeypatch.setattr(server.writer, "submit", waiting_submit)
        calls = [pool.submit(server.stub.Authorize, ALLOWED, timeout=WAIT) for _ in range(24)]
        responses = [done.result(WAIT) for done in calls]
        wait_for(store, 24)
    assert waited, "no decision found the queue full"
    assert server.writer.dropped == 0
    found = by_decision(store)
    assert all(len(found[r.decision_id]) == 1 for r in responses)
    assert verify_trail(store, "agent") == (24, [])


def test_with_async_durability_a_full_audit_queue_drops_records_counted_and_logged(
    store: Store, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    slow = SlowAppends(store, monkeypatch)  # nothing commits until released
    with serving(store, "async", queue_size=2) as server:
        responses = [server.stub.Authorize(ALLOWED, timeout=WAIT) for _ in range(8)]
        assert all(r.allow for r in responses)  # every call is answered at once
        dropped = server.writer.dropped
        exposed = server.running.point.metrics.registry.get_sample_value(
            "tessera_audit_dropped_total"
        )
        slow.released.set()
        server.writer.flush(WAIT)
    # kept: the two records the queue holds, and the batch (of at most two) the writer
    # took before its commit stalled
    assert 8 - 4 <= dropped <= 8 - 2
    assert exposed == dropped
    kept = verify_trail(store, "agent")[0]
    assert kept == 8 - dropped
    assert verify_trail(store, "agent") == (kept, [])
    warnings = [r for r in caplog.records if r.name == "tessera.audit"]
    assert len(warnings) == 1  # one line, not one per record
    assert "the audit queue is full" in warnings[0].getMessage()


def test_the_queue_weighs_each_record_by_the_size_of_its_request(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    large = call("search", **{f"n{n}": pb.Value(string="x" * 1_000) for n in range(60)})
    slow = SlowAppends(store, monkeypatch)  # nothing commits until released
    with serving(store, "async", queue_bytes=150_000) as server:
        small = [server.stub.Authorize(ALLOWED, timeout=WAIT) for _ in range(6)]
        assert server.writer.dropped == 0  # six small records weigh little
        slow.released.set()
        server.writer.flush(WAIT)
        slow.released.clear()
        server.stub.Authorize(ALLOWED, timeout=WAIT)  # taken by the writer, then held
        wait_until_taken(server.writer)
        answered = [server.stub.Authorize(large, timeout=WAIT) for _ in range(6)]
        queued = server.writer.weight()
        dropped = server.writer.dropped
        slow.released.set()
        server.writer.flush(WAIT)
    assert all(r.allow for r in [*small, *answered])
    size = large.ByteSize() + RECORD_BYTES
    assert dropped == 6 - (150_000 // size + 1)  # the queue took what fitted, then no more
    assert queued == (6 - dropped) * size
    assert verify_trail(store, "agent") == (6 + 1 + 6 - dropped, [])


def wait_until_taken(writer: AuditWriter) -> None:
    """Until the writer has taken everything queued into its (held) commit."""
    deadline = time.monotonic() + WAIT
    while writer.depth():
        assert time.monotonic() < deadline, "the writer took nothing"
        time.sleep(0.01)


def test_a_sync_call_whose_client_gives_up_is_still_recorded_and_auditing_goes_on(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    SlowAppends(store, monkeypatch, delay=0.5)
    with serving(store, "sync") as server:
        with pytest.raises(grpc.RpcError) as gave_up:
            server.stub.Authorize(ALLOWED, timeout=0.1)
        assert gave_up.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        response = server.stub.Authorize(SUSPENDED, timeout=WAIT)
        assert len(by_decision(store)[response.decision_id]) == 1
    assert verify_trail(store, "agent") == (2, [])
    assert [r["allow"] for r in records(store)] == [True, False]
