"""AuthZEN subjects of any type over real HTTP: persons named by any id the directory
knows them by, decided on its facts, and subject search returning users, on both stores."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from issuer.store import Store
from pdp.loader import load_texts
from tests.serve.test_authzen import Pdp
from tests.test_directory import add_user

SCHEMA = """
schema {
  agent { risk: risk, status: string }
  user { roles: set<string>, department: string }
  resource table { classification: string }
  subject service { team: string }
}
"""

POLICY = """
package people

permit analysts_read
  action "db.read" on table "orders"
  when user.roles contains "analyst"

permit low_risk_agents_for_analysts
  action "db.export" on table "orders"
  when agent.risk < high and delegated and user.roles contains "analyst"

permit ops_services
  action "db.read" on table "metrics"
  when subject.type == "service" and subject.team == "ops"

permit capped
  action "db.query" on table
  limit 1 calls per 1h per user
"""


@pytest.fixture
def pdp(store: Store) -> Iterator[Pdp]:
    bundle = load_texts({"schema.pol": SCHEMA, "people.pol": POLICY}).bundle
    running = Pdp(store, bundle=bundle)
    yield running
    running.close()


def read_orders(kind: str, ident: str, **properties: Any) -> dict[str, Any]:
    subject: dict[str, Any] = {"type": kind, "id": ident}
    if properties:
        subject["properties"] = properties
    return {
        "subject": subject,
        "action": {"name": "db.read"},
        "resource": {"type": "table", "id": "orders"},
        "options": {"tessera_explain": True},
    }


def people(pdp: Pdp) -> dict[str, str]:
    """Three users: an analyst with every kind of id, a clerk, and an inactive analyst."""
    ids = {
        "ana": add_user(
            pdp.store,
            "ana",
            externalId="HR-0042",
            emails=[{"value": "Ana.Lyst@Example.com", "primary": True}],
            roles=[{"value": "analyst"}],
        ),
        "carl": add_user(pdp.store, "carl", emails=[{"value": "carl@example.com"}]),
        "old": add_user(pdp.store, "old", roles=[{"value": "analyst"}], active=False),
    }
    pdp.directory.refresh()
    return ids


@pytest.mark.parametrize("kind", ["user", "identity"])
def test_a_person_named_by_any_id_is_decided_on_the_directorys_roles(pdp: Pdp, kind: str) -> None:
    ids = people(pdp)
    for name in (ids["ana"], "ana", "HR-0042", "ana.lyst@example.com"):
        answer = pdp.ok("/evaluation", read_orders(kind, name))
        assert answer["decision"] is True, (name, answer)
        assert answer["context"]["decided_by"] == ["people.analysts_read"]
    clerk = pdp.ok("/evaluation", read_orders(kind, "carl@example.com", roles=["analyst"]))
    assert clerk["decision"] is False  # the directory's roles, not the properties sent
    records = pdp.records()
    assert [r["user"] for r in records] == [ids["ana"]] * 4 + [ids["carl"]]
    assert [r["subject"]["id"] for r in records][2:] == [
        "HR-0042",
        "ana.lyst@example.com",
        "carl@example.com",
    ]
    assert {r["subject"]["type"] for r in records} == {kind}
    assert {r["agent"] for r in records} == {None}


def test_an_id_two_users_answer_to_is_400_naming_subject_id(pdp: Pdp) -> None:
    add_user(pdp.store, "twin-1", externalId="T-1", roles=[{"value": "analyst"}])
    add_user(pdp.store, "twin-2", externalId="T-1")
    pdp.directory.refresh()
    response = pdp.post("/evaluation", read_orders("user", "T-1"))
    assert response.status_code == 400
    assert response.text == (
        "subject.id: 'T-1' names 2 users in the directory (by externalId); "
        "name one by its SCIM id or userName"
    )
    batch = {
        "action": {"name": "db.read"},
        "resource": {"type": "table", "id": "orders"},
        "evaluations": [
            {"subject": {"type": "user", "id": "twin-1"}},
            {"subject": {"type": "user", "id": "T-1"}},
        ],
    }
    refused = pdp.post("/evaluations", batch)
    assert refused.status_code == 400
    assert refused.text.startswith("evaluations[1].subject.id: 'T-1' names 2 users")
    assert pdp.records() == []  # bad input decides nothing, not even the good item


def test_an_unknown_person_is_decided_on_the_properties_sent(pdp: Pdp) -> None:
    guest = "CiRmZDA2MTRkMy1jMzlhLTQ3ODEtYjdiZC04Yjk2ZjVhNTEwMGQSBWxvY2Fs"
    assert pdp.ok("/evaluation", read_orders("identity", guest, roles=["analyst"]))["decision"]
    assert not pdp.ok("/evaluation", read_orders("identity", guest))["decision"]
    bad = pdp.post("/evaluation", read_orders("user", guest, roles="analyst"))
    assert bad.status_code == 400
    assert bad.text.startswith("subject.properties.roles: expected a list of string")
    (allowed, denied) = pdp.records()
    assert allowed["user"] == guest and allowed["subject"] == {"type": "identity", "id": guest}
    assert not denied["allow"]


def test_an_inactive_person_is_refused_by_the_directory(pdp: Pdp) -> None:
    ids = people(pdp)
    answer = pdp.ok("/evaluation", read_orders("user", "old"))
    assert answer["decision"] is False
    assert answer["context"]["decided_by"] == ["directory"]
    assert answer["context"]["reasons"] == [f"user {ids['old']!r} is not active"]


def test_an_agent_names_its_user_by_any_of_their_ids(pdp: Pdp) -> None:
    ids = people(pdp)
    agent = pdp.agent("exporter")
    body = {
        "subject": {"type": "agent", "id": agent, "properties": {"user": "Ana.Lyst@example.com"}},
        "action": {"name": "db.export"},
        "resource": {"type": "table", "id": "orders"},
    }
    assert pdp.ok("/evaluation", body) == {"decision": True}
    (record,) = pdp.records()
    assert (record["agent"], record["user"], record["delegation"]) == (agent, ids["ana"], [agent])
    assert "subject" not in record


def test_a_limit_per_user_counts_one_person_by_whichever_id(pdp: Pdp) -> None:
    people(pdp)
    query = read_orders("user", "ana")
    query["action"] = {"name": "db.query"}
    assert pdp.ok("/evaluation", query)["decision"] is True
    query["subject"]["id"] = "HR-0042"
    second = pdp.ok("/evaluation", query)
    assert second["decision"] is False
    assert second["context"]["reasons"] == [
        "no permit applies (default deny)",
        "permit people.capped is over its limit: 1 calls per 1h per user",
    ]


def test_a_subject_of_a_type_the_schema_declares_is_decided_on_its_properties(pdp: Pdp) -> None:
    def metrics(team: Any) -> dict[str, Any]:
        return {
            "subject": {"type": "service", "id": "billing", "properties": {"team": team}},
            "action": {"name": "db.read"},
            "resource": {"type": "table", "id": "metrics"},
        }

    assert pdp.ok("/evaluation", metrics("ops")) == {"decision": True}
    assert pdp.ok("/evaluation", metrics("sales")) == {"decision": False}
    wrong = pdp.post("/evaluation", metrics(["ops"]))
    assert wrong.status_code == 400
    assert wrong.text.startswith("subject.properties.team: expected a string")
    robot = pdp.post("/evaluation", {**metrics("ops"), "subject": {"type": "robot", "id": "r"}})
    assert robot.status_code == 400
    assert (
        'Tessera decides for subjects of type "agent", "user", "identity", "service"' in robot.text
    )


@pytest.mark.parametrize(
    ("subject", "message"),
    [
        (
            {"type": "user", "id": "x", "properties": {"token": "t"}},
            "subject.properties.token: an agent token names an agent",
        ),
        (
            {"type": "user", "id": "x", "properties": {"id": "y"}},
            "subject.properties.id: the subject's id is subject.id",
        ),
        ({"type": "user"}, "subject.id is required"),
    ],
)
def test_a_malformed_person_subject_is_400(pdp: Pdp, subject: dict[str, Any], message: str) -> None:
    response = pdp.post("/evaluation", {**read_orders("user", "x"), "subject": subject})
    assert response.status_code == 400
    assert response.text.startswith(message), response.text


def test_subject_search_returns_the_users_allowed_in_the_id_form_asked(pdp: Pdp) -> None:
    ids = people(pdp)
    plain = add_user(pdp.store, "plain", roles=[{"value": "analyst"}])  # no e-mail, no externalId
    pdp.directory.refresh()
    body: dict[str, Any] = {
        "subject": {"type": "user"},
        "action": {"name": "db.read"},
        "resource": {"type": "table", "id": "orders"},
    }
    allowed = sorted([ids["ana"], plain])  # carl is a clerk, old is inactive
    by_form = {
        None: {ids["ana"]: "ana", plain: "plain"},
        "id": {ids["ana"]: ids["ana"], plain: plain},
        "userName": {ids["ana"]: "ana", plain: "plain"},
        "externalId": {ids["ana"]: "HR-0042", plain: plain},
        "email": {ids["ana"]: "Ana.Lyst@Example.com", plain: plain},
    }
    for form, names in by_form.items():
        if form is not None:
            body["subject"]["properties"] = {"id_form": form}
        found = pdp.ok("/search/subject", body)
        given = sorted(names[i] for i in allowed)  # in the order of the ids given back
        assert found["results"] == [{"type": "user", "id": name} for name in given], form
        for result in found["results"]:  # each id given back names its user
            assert pdp.ok("/evaluation", read_orders("user", result["id"]))["decision"] is True
    body["subject"] = {"type": "identity", "properties": {"id_form": "externalId"}}
    identities = pdp.ok("/search/subject", body)["results"]
    given = sorted(by_form["externalId"][i] for i in allowed)
    assert identities == [{"type": "identity", "id": name} for name in given]
    body["subject"]["properties"] = {"id_form": "nickname"}
    assert pdp.post("/search/subject", body).status_code == 400
    body["subject"] = {"type": "service"}
    assert pdp.ok("/search/subject", body)["results"] == []  # the directory holds none


def test_resource_and_action_search_take_a_person_subject(pdp: Pdp) -> None:
    people(pdp)
    subject = {"type": "user", "id": "ana.lyst@example.com"}
    resources = {
        "subject": subject,
        "action": {"name": "db.read"},
        "resource": {"type": "table"},
    }
    assert pdp.ok("/search/resource", resources)["results"] == [{"type": "table", "id": "orders"}]
    actions = {"subject": subject, "resource": {"type": "table", "id": "orders"}}
    found = pdp.ok("/search/action", actions)["results"]
    assert found == [{"name": "db.query"}, {"name": "db.read"}]  # not db.export: no agent
