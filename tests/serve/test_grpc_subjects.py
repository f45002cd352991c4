"""The gRPC contract's ``subject`` field: persons and declared subject types decided as
AuthZEN decides them, on a real server with a directory; old-style questions unchanged."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from issuer.store import Store
from pdp.audit.query import entries
from pdp.audit.writer import AuditWriter
from pdp.directory import Directory
from pdp.engine import Engine
from pdp.loader import load_texts
from pdp.serve.proto import authorizer_pb2 as pb
from pdp.serve.proto import authorizer_pb2_grpc as pb_grpc
from pep.client import Client, Query, Subject
from tests.serve.test_authzen_subjects import POLICY, SCHEMA
from tests.servers import Server
from tests.stores import opened_store
from tests.test_directory import add_agent, add_user


class World:
    """The decision service over a directory on a SQLite store, audited synchronously."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.directory = Directory(store)
        self.directory.load()
        self.writer = AuditWriter(store, 1_000, 0.0)
        bundle = load_texts({"schema.pol": SCHEMA, "people.pol": POLICY}).bundle
        self.server = Server(
            Engine(bundle), directory=self.directory, audit=self.writer, durability="sync"
        )
        self.stub = pb_grpc.AuthorizerStub(self.server.channel)
        self.ana = add_user(
            store,
            "ana",
            externalId="HR-0042",
            emails=[{"value": "ana@example.com"}],
            roles=[{"value": "analyst"}],
        )
        self.carl = add_user(store, "carl", emails=[{"value": "carl@example.com"}])
        self.old = add_user(store, "old", roles=[{"value": "analyst"}], active=False)
        self.directory.refresh()

    def close(self) -> None:
        self.server.close()
        self.writer.close(10)

    def records(self) -> list[dict[str, object]]:
        return [json.loads(entry.record) for entry in entries(self.store, "agent")]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with opened_store("sqlite", tmp_path) as store:
        made = World(store)
        yield made
        made.close()


def orders(subject: pb.Subject | None = None, **fields: object) -> pb.AuthorizeRequest:
    message = pb.AuthorizeRequest(
        action="db.read", resource=pb.Resource(type="table", id="orders"), **fields
    )
    if subject is not None:
        message.subject.CopyFrom(subject)
    return message


def roles(*names: str) -> dict[str, pb.Value]:
    return {"roles": pb.Value(strings=pb.StringList(values=list(names)))}


@pytest.mark.parametrize("kind", ["user", "identity"])
def test_a_person_named_by_any_id_is_decided_on_the_directorys_roles(
    world: World, kind: str
) -> None:
    for name in (world.ana, "ana", "HR-0042", "ANA@example.com"):
        response = world.stub.Authorize(orders(pb.Subject(type=kind, id=name)), timeout=5)
        assert response.allow, name
        assert list(response.decided_by) == ["people.analysts_read"]
    clerk = pb.Subject(type=kind, id="carl", properties=roles("analyst"))
    assert not world.stub.Authorize(orders(clerk), timeout=5).allow
    records = world.records()
    assert [r["user"] for r in records] == [world.ana] * 4 + [world.carl]
    assert records[3]["subject"] == {"type": kind, "id": "ANA@example.com"}
    assert {r["agent"] for r in records} == {None}


def test_an_unknown_person_is_decided_on_the_properties_sent(world: World) -> None:
    guest = pb.Subject(type="identity", id="CiRmZDA2MTRk", properties=roles("analyst"))
    assert world.stub.Authorize(orders(guest), timeout=5).allow
    assert not world.stub.Authorize(orders(pb.Subject(type="user", id="CiRm")), timeout=5).allow


def test_an_inactive_person_is_refused(world: World) -> None:
    response = world.stub.Authorize(orders(pb.Subject(type="user", id="old")), timeout=5)
    assert not response.allow
    assert list(response.reasons) == [f"user {world.old!r} is not active"]


def test_an_ambiguous_id_is_invalid_argument_and_a_batch_decides_nothing(world: World) -> None:
    add_user(world.store, "twin", emails=[{"value": "ana@example.com"}])
    world.directory.refresh()
    with pytest.raises(grpc.RpcError) as raised:
        world.stub.Authorize(orders(pb.Subject(type="user", id="ana@example.com")), timeout=5)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details() == (
        "subject.id: 'ana@example.com' names 2 users in the directory (by email); "
        "name one by its SCIM id or userName"
    )
    batch = pb.AuthorizeBatchRequest(
        requests=[
            orders(pb.Subject(type="user", id="ana")),
            orders(pb.Subject(type="user", id="ana@example.com")),
        ]
    )
    with pytest.raises(grpc.RpcError) as raised:
        world.stub.AuthorizeBatch(batch, timeout=5)
    assert raised.value.details().startswith("requests[1].subject.id: 'ana@example.com' names")
    assert world.records() == []


def test_malformed_subjects_are_invalid_argument(world: World) -> None:
    person = pb.Subject(type="user", id="ana")
    cases = [
        (orders(person, agent=pb.Agent(id="a")), "agent: the subject is named in agent or in"),
        (orders(person, user=pb.User(id="u")), "user: only an agent acts for a user"),
        (orders(person, delegation=pb.Delegation(chain=["a"])), "delegation: only an agent"),
        (orders(pb.Subject(type="robot", id="r")), "subject.type: 'robot' is not a subject"),
        (orders(pb.Subject(type="user")), "subject.id: required"),
        (
            orders(pb.Subject(type="user", id="x", properties={"id": pb.Value(string="y")})),
            "subject.properties.id: the subject's id is subject.id",
        ),
        (
            orders(pb.Subject(type="user", id="x", properties={"roles": pb.Value(bool=True)})),
            "subject.properties.roles: expected a list of string",
        ),
    ]
    for message, details in cases:
        with pytest.raises(grpc.RpcError) as raised:
            world.stub.Authorize(message, timeout=5)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert raised.value.details().startswith(details), raised.value.details()
    assert world.records() == []


def test_a_declared_subject_type_is_decided_on_its_properties(world: World) -> None:
    def metrics(team: str) -> pb.AuthorizeRequest:
        service = pb.Subject(
            type="service", id="billing", properties={"team": pb.Value(string=team)}
        )
        return pb.AuthorizeRequest(
            subject=service, action="db.read", resource=pb.Resource(type="table", id="metrics")
        )

    assert world.stub.Authorize(metrics("ops"), timeout=5).allow
    assert not world.stub.Authorize(metrics("sales"), timeout=5).allow


def test_an_agent_subject_is_the_agent_field_and_its_user_any_id(world: World) -> None:
    agent = add_agent(world.store, "exporter")
    world.directory.refresh()
    export = pb.AuthorizeRequest(
        action="db.export", resource=pb.Resource(type="table", id="orders")
    )
    old_style = pb.AuthorizeRequest(agent=pb.Agent(id=agent), user=pb.User(id=world.ana))
    old_style.MergeFrom(export)
    new_style = pb.AuthorizeRequest(
        subject=pb.Subject(type="agent", id=agent), user=pb.User(id="ana@example.com")
    )
    new_style.MergeFrom(export)
    for message in (old_style, new_style):
        response = world.stub.Authorize(message, timeout=5)
        assert response.allow and list(response.decided_by) == [
            "people.low_risk_agents_for_analysts"
        ]
    assert [(r["agent"], r["user"]) for r in world.records()] == [(agent, world.ana)] * 2


def test_an_old_style_question_is_the_same_message_and_the_same_answer(world: World) -> None:
    agent = add_agent(world.store, "reader")
    world.directory.refresh()
    message = pb.AuthorizeRequest(
        agent=pb.Agent(id="pay-bot"),
        action="tool.call",
        resource=pb.Resource(type="tool", id="search"),
    )
    assert (
        message.SerializeToString() == b'\n\t\n\x07pay-bot"\ttool.call*\x0e\n\x04tool\x12\x06search'
    )
    message.agent.id = agent
    response = world.stub.Authorize(message, timeout=5)
    assert (response.allow, list(response.reasons)) == (False, ["no permit applies (default deny)"])
    (record,) = world.records()
    assert record["agent"] == agent and "subject" not in record


def test_list_allowed_takes_a_person_subject(world: World) -> None:
    listing = pb.ListAllowedRequest(
        subject=pb.Subject(type="user", id="HR-0042"),
        action="db.read",
        candidates=[pb.Resource(type="table", id=t) for t in ("orders", "metrics")],
    )
    assert [c.id for c in world.stub.ListAllowed(listing, timeout=5).allowed] == ["orders"]


def test_the_decision_cache_tells_persons_apart(world: World) -> None:
    answers = [
        world.stub.Authorize(orders(pb.Subject(type="user", id=name)), timeout=5)
        for name in ("ana", "carl", "ana", "carl")
    ]
    assert [a.allow for a in answers] == [True, False, True, False]
    assert all(a.cacheable for a in answers)
    assert world.server.running.point.cache_hits == 2


def test_the_pep_client_asks_about_a_person(world: World) -> None:
    with Client(f"127.0.0.1:{world.server.running.port}") as tessera:
        query = Query(
            subject=Subject("user", "ana@example.com"),
            action="db.read",
            resource_type="table",
            resource_id="orders",
        )
        verdict = tessera.authorize(query)
        assert verdict.allow and verdict.decided_by == ("people.analysts_read",)
        guest = Subject("identity", "guest-1", {"roles": ["analyst"]})
        assert tessera.authorize(
            Query(subject=guest, action="db.read", resource_type="table", resource_id="orders")
        ).allow
    with pytest.raises(ValueError, match="names an agent"):
        Query(agent="a", subject=Subject("user", "ana")).to_message()
