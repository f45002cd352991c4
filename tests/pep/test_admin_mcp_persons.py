"""The admin tools on decisions about persons and on resources the catalog describes:
a person's recorded decision is explained and replayed by what-if, a decision that read
the resource catalog is reproduced, and simulate_request takes a person named by any id
the decision point accepts, deciding on the directory's facts about them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from issuer.store import Store
from pdp.audit.writer import AuditWriter
from pdp.directory import Directory
from pdp.engine import Engine
from pdp.loader import load_directory
from pdp.serve.proto import authorizer_pb2 as pb
from pdp.serve.proto import authorizer_pb2_grpc as pb_grpc
from tests.pep.test_admin_mcp import call
from tests.pep.test_admin_mcp_errors import in_process
from tests.serve.test_authzen_subjects import SCHEMA
from tests.serve.test_grpc_subjects import roles
from tests.servers import Server
from tests.stores import opened_store
from tests.test_directory import add_agent, add_user

PEOPLE = """package people

permit analysts_read
  action "db.read" on table "orders"
  when user.roles contains "analyst"

permit public_tables
  action "db.list" on table
  when resource.classification == "public"
"""
STRICTER = PEOPLE.replace('contains "analyst"', 'contains "auditor"')
CATALOG = [{"type": "table", "id": "metrics", "properties": {"classification": "public"}}]


class Recorded:
    """A policy directory, a directory with ana (an analyst, named by her userName) and a
    reporting agent, and their decisions as a real decision point recorded them."""

    def __init__(self, store: Store, policies: Path) -> None:
        self.store, self.policies = store, policies
        self.ana = add_user(store, "ana", roles=[{"value": "analyst"}])
        self.bot = add_agent(store, "report-bot")
        directory = Directory(store)
        directory.load()
        writer = AuditWriter(store, 1_000, 0.0)
        engine = Engine(load_directory(policies).bundle)
        server = Server(engine, directory=directory, audit=writer, durability="sync")
        try:
            stub = pb_grpc.AuthorizerStub(server.channel)
            read = pb.AuthorizeRequest(
                action="db.read", resource=pb.Resource(type="table", id="orders")
            )
            read.subject.CopyFrom(pb.Subject(type="user", id="ana"))
            listing = pb.AuthorizeRequest(
                agent=pb.Agent(id=self.bot),
                action="db.list",
                resource=pb.Resource(type="table", id="metrics"),
            )
            self.person = stub.Authorize(read, timeout=5)
            read.subject.CopyFrom(pb.Subject(type="user", id="guest", properties=roles("analyst")))
            self.guest = stub.Authorize(read, timeout=5)
            self.catalogued = stub.Authorize(listing, timeout=5)
        finally:
            server.close()
            writer.close(10)
        assert self.person.allow and self.guest.allow and self.catalogued.allow


@pytest.fixture
def recorded(tmp_path: Path) -> Iterator[Recorded]:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "schema.pol").write_text(SCHEMA)
    (policies / "people.pol").write_text(PEOPLE)
    (policies / "tables.resources.json").write_text(json.dumps(CATALOG))
    with opened_store("sqlite", tmp_path) as store:
        yield Recorded(store, policies)


def test_a_persons_recorded_decision_is_explained_and_reproduced(recorded: Recorded) -> None:
    async def body(client: Client) -> Any:
        return (
            await call(client, "explain_decision", decision_id=recorded.person.decision_id),
            await call(client, "explain_decision", decision_id=recorded.guest.decision_id),
        )

    explained, guest = in_process(recorded.store, body, recorded.policies)
    assert explained["record"]["agent"] is None
    assert explained["record"]["subject"] == {"type": "user", "id": "ana"}
    assert explained["decision"] == "allow" and explained["reproduced"] is True
    assert "permit people.analysts_read" in explained["explanation"]
    assert explained["today"]["decision"] == "allow"
    assert explained["today"]["same_as_recorded"] is True
    # a person the directory does not know was decided on properties the record does not keep
    assert guest["decision"] == "allow" and guest["reproduced"] is False
    assert "no rule-by-rule account: deciding the request again" in guest["explanation"]
    assert guest["unknown"] == [
        "the properties sent with the user 'guest': the record does not keep them, and the "
        "directory holds no such user; read as none"
    ]


def test_what_if_lists_a_persons_decision_the_change_flips(recorded: Recorded) -> None:
    async def body(client: Client) -> Any:
        return await call(
            client, "what_if_policy_change", changes=[{"file": "people.pol", "text": STRICTER}]
        )

    answer = in_process(recorded.store, body, recorded.policies)
    assert answer["replayed"] == 3 and answer["changed"] == 1
    [flipped] = answer["decisions"]
    assert flipped["decision_id"] == recorded.person.decision_id
    assert flipped["agent"] is None and flipped["user"] == recorded.ana
    assert flipped["current"]["decision"] == "allow"
    assert flipped["current"]["decided_by"] == ["people.analysts_read"]
    assert flipped["proposed"]["decision"] == "deny"


def test_a_decision_on_the_catalogs_attributes_is_reproduced(recorded: Recorded) -> None:
    async def body(client: Client) -> Any:
        return await call(client, "explain_decision", decision_id=recorded.catalogued.decision_id)

    explained = in_process(recorded.store, body, recorded.policies)
    assert explained["decision"] == "allow" and explained["reproduced"] is True
    assert "permit people.public_tables" in explained["explanation"]
    assert explained["today"]["decision"] == "allow"


def test_simulate_decides_a_person_named_by_username_on_the_directorys_facts(
    recorded: Recorded,
) -> None:
    add_user(recorded.store, "carl", emails=[{"value": "carl@example.com"}])
    add_user(recorded.store, "old", roles=[{"value": "analyst"}], active=False)

    def read(name: str, roles: list[str]) -> dict[str, Any]:
        return {
            "subject": {"type": "user", "id": name},
            "user": {"roles": roles},
            "action": "db.read",
            "resource": {"type": "table", "id": "orders"},
        }

    for_ana = {  # an agent acting for ana, named by her userName
        "agent": {"id": recorded.bot},
        "user": {"id": "ana"},
        "action": "db.read",
        "resource": {"type": "table", "id": "orders"},
    }

    async def body(client: Client) -> Any:
        return [
            await call(client, "simulate_request", request=read("ANA", [])),
            await call(client, "simulate_request", request=read("carl@example.com", ["analyst"])),
            await call(client, "simulate_request", request=read("old", ["analyst"])),
            await call(client, "simulate_request", request=for_ana),
            await call(client, "simulate_request", request=read("guest", ["analyst"])),
        ]

    ana, clerk, inactive, agent, guest = in_process(recorded.store, body, recorded.policies)
    assert ana["decision"] == "allow"  # her roles are the directory's, not the empty ones sent
    assert ana["decided_by"] == ["people.analysts_read"]
    assert clerk["decision"] == "deny"  # carl is no analyst, whatever was sent
    assert inactive["decision"] == "deny" and inactive["decided_by"] == ["directory"]
    assert "is not active" in inactive["reasons"][0]
    assert agent["decision"] == "allow" and agent["decided_by"] == ["people.analysts_read"]
    assert guest["decision"] == "allow"  # unknown to the directory: the properties sent
