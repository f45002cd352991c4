"""Subjects that are no agent: persons looked up in the directory by any of their ids,
and subject types a schema declares, decided by the DecisionPoint on a real store."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import generate_latest

from issuer.store import Store
from pdp.audit.baselines import Baselines
from pdp.audit.query import entries
from pdp.audit.report import gather
from pdp.audit.writer import AuditWriter
from pdp.decide import DecisionPoint
from pdp.directory import Directory
from pdp.engine import Bundle, Engine
from pdp.interpreter import Interpreter
from pdp.loader import load_texts
from pdp.model import Request, RequestError
from pdp.request import request_from_json, typed_request
from tests.test_directory import ADMIN, add_agent, add_user

PEOPLE_SCHEMA = """
schema {
  agent { risk: risk, status: string }
  user { roles: set<string>, department: string }
  context { amount: money }
  resource table { classification: string }
  subject service { team: string }
}
"""

PEOPLE_POLICY = """
package people

permit analysts_read
  action "db.read" on table "orders"
  when user.roles contains "analyst"

forbid risky_agents_export
  action "db.export" on table
  when agent.risk >= high

permit export
  action "db.export" on table

permit low_risk_agents_list
  action "db.list" on table
  when agent.risk < high

permit ops_services
  action "db.read" on table "metrics"
  when subject.type == "service" and subject.team == "ops"

permit persons_by_name
  action "db.read" on table "people"
  when subject.type in ["user", "identity"] and subject.id like "*@example.com"

permit alone
  action "job.run" on table
  when autonomous

permit for_someone
  action "mail.send" on table
  when delegated

permit per_user
  action "db.query" on table
  limit 2 calls per 1h per user

permit per_agent
  action "db.scan" on table
  limit 2 calls per 1h per agent
"""


def people_bundle() -> Bundle:
    return load_texts({"schema.pol": PEOPLE_SCHEMA, "people.pol": PEOPLE_POLICY}).bundle


def person(
    bundle: Bundle, name: str, action: str = "db.read", table: str = "orders", **user: Any
) -> Request:
    """A question about the person ``name`` (type "user"), as a door without a directory
    would ask it: the id as sent, the properties given."""
    return typed_request(
        bundle.schema,
        agent=None,
        user={**user, "id": name},
        subject={"type": "user", "id": name},
        action=action,
        resource_type="table",
        resource_id=table,
    )


class World:
    """A decision point over a directory on a real store, with a synchronous audit."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.directory = Directory(store)
        self.directory.load()
        self.bundle = people_bundle()
        self.writer = AuditWriter(store, 1_000, 0.0)
        self.point = DecisionPoint(
            Engine(self.bundle), directory=self.directory, audit=self.writer, durability="sync"
        )

    def user(self, name: str, **doc: Any) -> str:
        ident = add_user(self.store, name, **doc)
        self.directory.refresh()
        return ident

    def ask(self, name: str, action: str = "db.read", table: str = "orders", **user: Any) -> Any:
        """Decide a question about the person named ``name``, identified as a door does."""
        who = self.point.identify(name, "subject.id")
        request = typed_request(
            self.bundle.schema,
            agent=None,
            user={**user, "id": who},
            subject={"type": "user", "id": name},
            action=action,
            resource_type="table",
            resource_id=table,
        )
        decision, _, _ = asyncio.run(self.point.decide(request, "test"))
        return decision

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(entry.record) for entry in entries(self.store, "agent")]


@pytest.fixture
def world(store: Store) -> Iterator[World]:
    made = World(store)
    yield made
    made.writer.close(10)


def test_a_person_is_found_by_scim_id_username_external_id_or_email(world: World) -> None:
    ana = world.user(
        "ana",
        externalId="HR-0042",
        emails=[{"value": "ana@example.com", "primary": True}, {"value": "a.k@corp.example"}],
        roles=[{"value": "analyst"}],
    )
    world.user("bob", emails=[{"value": "bob@example.com"}])
    for name in (
        ana,
        "ana",
        "ANA",
        "HR-0042",
        "ana@example.com",
        "Ana@Example.COM",
        "a.k@corp.example",
    ):
        assert world.point.identify(name, "subject.id") == ana, name
        decision = world.ask(name)
        assert decision.allow and decision.decided_by == ("people.analysts_read",), name
    assert world.point.identify("hr-0042", "subject.id") == "hr-0042"  # externalId: case-exact


def test_the_first_step_that_finds_someone_decides(world: World) -> None:
    # carol's userName is dave's e-mail address: the userName step comes first.
    carol = world.user("dave@example.com", roles=[{"value": "analyst"}])
    world.user("dave", emails=[{"value": "dave@example.com"}])
    assert world.point.identify("dave@example.com", "subject.id") == carol
    assert world.ask("dave@example.com").allow


def test_an_id_two_users_answer_to_is_an_error_naming_the_field(world: World) -> None:
    world.user("eve", externalId="shared", emails=[{"value": "team@example.com"}])
    world.user("fay", externalId="shared", emails=[{"value": "TEAM@example.com"}])
    for name, step in (("shared", "externalId"), ("team@example.com", "email")):
        with pytest.raises(RequestError) as raised:
            world.point.identify(name, "subject.id")
        assert str(raised.value) == (
            f"subject.id: {name!r} names 2 users in the directory (by {step}); "
            "name one by its SCIM id or userName"
        )


def test_the_indexes_follow_the_users_changes(world: World) -> None:
    ident = world.user("gil", emails=[{"value": "gil@example.com"}])
    assert world.point.identify("gil@example.com", "subject.id") == ident
    world.store.replace(
        "User",
        ident,
        {"userName": "gil", "emails": [{"value": "gil@elsewhere.example"}]},
        unique={"userName": "gil"},
        expected_version=None,
        actor=ADMIN,
    )
    world.directory.refresh()
    assert world.point.identify("gil@example.com", "subject.id") == "gil@example.com"
    assert world.point.identify("gil@elsewhere.example", "subject.id") == ident
    world.store.delete("User", ident, expected_version=None, actor=ADMIN)
    world.directory.refresh()
    assert world.point.identify("gil", "subject.id") == "gil"


def test_a_known_person_is_decided_on_the_directory_not_on_what_was_sent(world: World) -> None:
    world.user("hal", roles=[{"value": "clerk"}])
    assert not world.ask("hal", roles=["analyst"]).allow
    (record,) = world.records()
    assert record["user"] != "hal" and record["subject"] == {"type": "user", "id": "hal"}


def test_an_unknown_person_is_decided_on_the_properties_sent(world: World) -> None:
    assert world.ask("ivy@partner.example", roles=["analyst"]).allow
    assert not world.ask("ivy@partner.example", roles=["clerk"]).allow
    assert not world.ask("ivy@partner.example").allow


def test_an_inactive_person_is_refused_with_a_reason(world: World) -> None:
    ident = world.user("jon", roles=[{"value": "analyst"}], active=False)
    decision = world.ask("jon")
    assert not decision.allow
    assert decision.decided_by == ("directory",)
    assert decision.reasons == (f"user {ident!r} is not active",)


def test_a_person_has_no_agent(world: World) -> None:
    world.user("kim")
    denied = world.ask("kim", "db.export")  # the forbid reading agent.* fails: it denies
    assert denied.decided_by == ("people.risky_agents_export",)
    assert "no agent: the subject is a user" in denied.reasons[0]
    listed = world.ask("kim", "db.list")  # the permit reading agent.* fails: no allow
    assert not listed.allow
    assert "permit people.low_risk_agents_list failed" in listed.reasons[1]


def test_a_person_is_neither_autonomous_nor_delegated(world: World) -> None:
    world.user("lea")
    assert not world.ask("lea", "job.run").allow
    assert not world.ask("lea", "mail.send").allow


def test_a_persons_limit_counts_per_user_and_one_per_agent_fails(world: World) -> None:
    world.user("max", emails=[{"value": "max@example.com"}])
    answers = [world.ask(name, "db.query").allow for name in ("max", "max@example.com", "max")]
    assert answers == [True, True, False]  # one person, by two of their ids
    scan = world.ask("max", "db.scan")
    assert not scan.allow
    assert "limit per agent needs an agent" in scan.reasons[1]


def test_policies_read_the_subject_as_the_caller_named_it(world: World) -> None:
    world.user("ned", emails=[{"value": "ned@example.com"}])
    assert world.ask("ned@example.com", table="people").allow
    assert not world.ask("ned", table="people").allow


def test_a_persons_decision_is_recorded_with_no_agent_and_counted(world: World) -> None:
    ident = world.user("oda", emails=[{"value": "oda@example.com"}], roles=[{"value": "analyst"}])
    assert world.ask("oda@example.com").allow
    (record,) = world.records()
    assert record["agent"] is None
    assert record["user"] == ident
    assert record["subject"] == {"type": "user", "id": "oda@example.com"}
    assert record["delegation"] == [] and record["decided_by"] == ["people.analysts_read"]
    metrics = generate_latest(world.point.metrics.registry).decode()
    assert 'tessera_decisions_total{result="allow",rule="people.analysts_read"} 1.0' in metrics


def test_a_subject_of_a_declared_type_is_decided_on_its_properties(world: World) -> None:
    schema = world.bundle.schema
    for team, allowed in (("ops", True), ("sales", False)):
        request = typed_request(
            schema,
            agent=None,
            subject={"type": "service", "id": "billing", "team": team},
            action="db.read",
            resource_type="table",
            resource_id="metrics",
        )
        assert world.point.preview(request).allow is allowed
    with pytest.raises(RequestError, match=r"subject\.team: expected a string"):
        typed_request(
            schema,
            agent=None,
            subject={"type": "service", "id": "billing", "team": 7},
            action="db.read",
            resource_type="table",
            resource_id="metrics",
        )


def test_a_subject_type_the_schema_does_not_declare_is_refused() -> None:
    schema = people_bundle().schema
    with pytest.raises(RequestError) as raised:
        typed_request(
            schema,
            agent=None,
            subject={"type": "robot", "id": "r2"},
            action="db.read",
            resource_type="table",
            resource_id="metrics",
        )
    assert "'robot' is not a subject type the policies know (here: user, identity, service" in (
        str(raised.value)
    )


def test_explain_tells_why_an_agent_rule_gave_a_person_nothing() -> None:
    bundle = people_bundle()
    explained = Interpreter(bundle.rules, bundle.lets, bundle.version).explain(
        person(bundle, "pia", "db.list")
    )
    (trace,) = [t for t in explained.rules if t.rule.id == "people.low_risk_agents_list"]
    assert trace.outcome == "error"
    assert trace.error == "no agent: the subject is a user, so agent attributes are absent"


def test_without_a_directory_a_person_is_decided_on_what_was_sent() -> None:
    bundle = people_bundle()
    point = DecisionPoint(Engine(bundle))
    assert point.identify("quinn@example.com", "subject.id") == "quinn@example.com"
    assert point.preview(person(bundle, "quinn@example.com", roles=["analyst"])).allow
    assert not point.preview(person(bundle, "quinn@example.com", roles=["clerk"])).allow


def test_request_json_names_a_person_or_a_declared_subject() -> None:
    schema = people_bundle().schema
    asked = request_from_json(
        {
            "subject": {"type": "identity", "id": "CiRmZDA2MTRk"},
            "user": {"roles": ["analyst"]},
            "action": "db.read",
            "resource": {"type": "table", "id": "orders"},
        },
        schema,
    )
    assert asked.agent is None and asked.agent_id is None
    assert asked.user == {"id": "CiRmZDA2MTRk", "roles": frozenset({"analyst"})}
    assert asked.subject == {"type": "identity", "id": "CiRmZDA2MTRk"}
    assert asked.delegation == {"delegated": False, "depth": 0, "chain": ()}
    assert asked.to_json()["subject"] == {"type": "identity", "id": "CiRmZDA2MTRk"}
    for data, message in (
        ({"agent": {"id": "a"}}, "subject: a request is about an agent or another subject"),
        ({"delegation": {"chain": ["a"]}}, "delegation.chain: only an agent acts through"),
    ):
        with pytest.raises(RequestError, match=message):
            request_from_json(
                {
                    "subject": {"type": "user", "id": "x"},
                    "action": "db.read",
                    "resource": {"type": "table", "id": "orders"},
                    **data,
                },
                schema,
            )


def test_an_agents_request_names_the_agent_as_its_subject(world: World) -> None:
    agent = add_agent(world.store, "lister")
    world.directory.refresh()
    request = typed_request(
        world.bundle.schema,
        agent={"id": agent},
        action="db.list",
        resource_type="table",
        resource_id="orders",
    )
    assert request.subject == {"type": "agent", "id": agent}
    assert world.point.preview(request).allow


def test_anomaly_baselines_and_the_report_pass_over_a_persons_decisions(world: World) -> None:
    agent = add_agent(world.store, "lister")
    world.user("rio", roles=[{"value": "analyst"}])
    world.directory.refresh()
    assert world.ask("rio").allow
    request = typed_request(
        world.bundle.schema,
        agent={"id": agent},
        action="db.list",
        resource_type="table",
        resource_id="orders",
    )
    asyncio.run(world.point.decide(request, "test"))
    person_record, agent_record = world.records()
    baselines = Baselines()
    assert baselines.observe(person_record, 1) == []
    baselines.observe(agent_record, 2)
    assert list(baselines.agents) == [agent]  # the person is no agent with a baseline
    report = gather(world.store)
    assert [a.id for a in report.agents] == [agent]
    assert report.unknown_agents == ()


def test_a_persons_request_reads_the_resource_catalog(store: Store) -> None:
    texts = {
        "schema.pol": "schema { resource record { owner: string } }",
        "records.pol": 'permit owners action "view" on record when resource.owner == user.userName',
        "records.resources.json": json.dumps(
            [
                {"type": "record", "id": "101", "properties": {"owner": "ana"}},
                {"type": "record", "id": "102", "properties": {"owner": "bob"}},
            ]
        ),
    }
    bundle = load_texts(texts).bundle
    add_user(store, "ana")
    directory = Directory(store)
    directory.load()
    for point in (
        DecisionPoint(Engine(bundle), directory=directory),
        DecisionPoint(Engine(bundle)),
    ):
        answers = []
        for record in ("101", "102"):
            request = typed_request(
                bundle.schema,
                agent=None,
                user={"id": point.identify("ana", "subject.id"), "userName": "ana"},
                subject={"type": "user", "id": "ana"},
                action="view",
                resource_type="record",
                resource_id=record,
            )
            answers.append(point.preview(request).allow)
        assert answers == [True, False]
