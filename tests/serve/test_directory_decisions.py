"""The decision service with a directory: who an agent is comes from the directory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from issuer.store import Store
from pdp.directory import Directory
from pdp.engine import Engine
from pdp.loader import load_directory
from pdp.serve.proto import authorizer_pb2 as pb
from pdp.serve.proto import authorizer_pb2_grpc as pb_grpc
from tests.conftest import SHIPPED_POLICIES
from tests.servers import Server
from tests.stores import opened_store
from tests.test_directory import add_agent, add_user, set_agent


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with opened_store("sqlite", tmp_path) as opened:
        yield opened


@pytest.fixture
def directory(store: Store) -> Directory:
    directory = Directory(store)
    directory.load()
    return directory


@pytest.fixture
def stub(directory: Directory) -> Iterator[pb_grpc.AuthorizerStub]:
    server = Server(Engine(load_directory(SHIPPED_POLICIES).bundle), directory=directory)
    yield pb_grpc.AuthorizerStub(server.channel)
    server.close()


def call(agent_id: str, tool: str, *, claimed_risk: str = "low") -> pb.AuthorizeRequest:
    """A tool call whose caller claims attributes the directory may contradict."""
    return pb.AuthorizeRequest(
        agent=pb.Agent(
            id=agent_id,
            attributes={"risk": pb.Value(risk=claimed_risk), "status": pb.Value(string="active")},
        ),
        action="tool.call",
        resource=pb.Resource(type="tool", id=tool),
    )


def test_a_known_active_agent_is_decided_by_the_policies(
    store: Store, directory: Directory, stub: pb_grpc.AuthorizerStub
) -> None:
    id = add_agent(store, "reader")
    directory.refresh()
    response = stub.Authorize(call(id, "search"), timeout=5)
    assert response.allow
    assert list(response.decided_by) == ["agents.read_only"]


def test_the_directory_attributes_win_over_what_the_caller_claims(
    store: Store, directory: Directory, stub: pb_grpc.AuthorizerStub
) -> None:
    id = add_agent(store, "risky", riskLevel="high")
    directory.refresh()
    response = stub.Authorize(call(id, "search", claimed_risk="low"), timeout=5)
    assert not response.allow  # read_only needs risk < high; the directory says high


def test_an_unknown_agent_is_denied_by_the_directory(stub: pb_grpc.AuthorizerStub) -> None:
    response = stub.Authorize(call("nobody", "search"), timeout=5)
    assert not response.allow
    assert list(response.decided_by) == ["directory"]
    assert list(response.reasons) == ["agent 'nobody' is not in the directory"]
    assert not response.cacheable
    assert len(response.decision_id) == 32


def test_suspending_an_agent_denies_even_a_remembered_decision(
    store: Store, directory: Directory, stub: pb_grpc.AuthorizerStub
) -> None:
    id = add_agent(store, "reader")
    directory.refresh()
    first = stub.Authorize(call(id, "search"), timeout=5)
    assert first.allow and first.cacheable
    assert stub.Authorize(call(id, "search"), timeout=5).allow  # now from the cache
    set_agent(store, id, "reader", status="suspended")
    directory.refresh()
    after = stub.Authorize(call(id, "search"), timeout=5)
    assert not after.allow
    assert list(after.reasons) == [f"agent {id!r} is suspended"]
    set_agent(store, id, "reader", status="active")
    directory.refresh()
    assert stub.Authorize(call(id, "search"), timeout=5).allow


def test_an_unknown_user_is_denied_and_a_known_one_brings_their_roles(
    store: Store, directory: Directory, stub: pb_grpc.AuthorizerStub
) -> None:
    agent = add_agent(store, "reader")
    user = add_user(store, "bjensen", roles=[{"value": "treasurer"}])
    directory.refresh()
    request = call(agent, "search")
    request.user.id = "nobody"
    denied = stub.Authorize(request, timeout=5)
    assert list(denied.reasons) == ["user 'nobody' is not in the directory"]
    request.user.id = user
    assert stub.Authorize(request, timeout=5).allow


def test_a_batch_refuses_only_the_requests_of_refused_agents(
    store: Store, directory: Directory, stub: pb_grpc.AuthorizerStub
) -> None:
    id = add_agent(store, "reader")
    directory.refresh()
    batch = pb.AuthorizeBatchRequest(requests=[call(id, "search"), call("nobody", "search")])
    responses = stub.AuthorizeBatch(batch, timeout=5).responses
    assert [r.allow for r in responses] == [True, False]
    assert list(responses[1].decided_by) == ["directory"]


def test_a_refused_agent_is_allowed_no_candidate(
    store: Store, directory: Directory, stub: pb_grpc.AuthorizerStub
) -> None:
    id = add_agent(store, "reader", status="suspended")
    active = add_agent(store, "active-reader")
    directory.refresh()
    tools = [pb.Resource(type="tool", id=t) for t in ("search", "read_file", "web.search")]
    for agent, expected in ((id, []), (active, ["search", "read_file"])):
        listing = pb.ListAllowedRequest(agent=pb.Agent(id=agent), action="tool.call")
        listing.candidates.extend(tools)
        allowed = stub.ListAllowed(listing, timeout=5).allowed
        assert [c.id for c in allowed] == expected


def test_consents_come_from_the_consent_store_not_the_caller(
    store: Store, directory: Directory, stub: pb_grpc.AuthorizerStub
) -> None:
    from issuer.models import CONSENT

    agent = add_agent(store, "pay-bot", purpose="payments")
    user = add_user(store, "bjensen")
    directory.refresh()
    request = pb.AuthorizeRequest(
        agent=pb.Agent(id=agent),
        user=pb.User(id=user),
        action="tool.call",
        resource=pb.Resource(type="tool", id="payments.transfer"),
        context={
            "amount": pb.Value(money=pb.Money(amount="100", currency="USD")),
            "consents": pb.Value(strings=pb.StringList(values=["payments:transfer"])),
        },
    )
    forged = stub.Authorize(request, timeout=5)
    assert not forged.allow  # the caller's claim of consent does not count
    assert [(o.kind, o.value) for o in forged.obligations] == [("consent", "payments:transfer")]
    grant = {"user_id": user, "agent_id": agent, "client_id": "c", "scopes": ["payments:transfer"]}
    store.create(CONSENT, grant, unique={"grant": f"{user}|c|{agent}"}, actor=user)
    directory.refresh()
    assert stub.Authorize(request, timeout=5).allow
