"""The directory's typed facts: agents and users made from their SCIM documents."""

from __future__ import annotations

from typing import Any

import pytest

from issuer.agents import (
    AGENT_EXTENSION,
    AGENT_SCHEMA,
    ENTERPRISE_ATTRIBUTES,
    ENTERPRISE_EXTENSION,
    EXTENSION_ATTRIBUTES,
    MANAGER,
    Agent,
    AgentStatus,
    AgentType,
    Label,
    RiskLevel,
    User,
    memberships,
)
from issuer.models import Agent as AgentModel
from issuer.models import AgentExtension, AgentResource, EnterpriseUserExtension, UserResource
from issuer.oauth.errors import OAuthError
from issuer.oauth.grants import Grants, agent_claims
from issuer.store import Store
from pdp.lang.values import Risk

FULL = {
    "schemas": [AGENT_SCHEMA, AGENT_EXTENSION],
    "name": "pay-bot",
    "displayName": "Payments bot",
    "roles": [{"value": "payer"}, {"value": "reader", "primary": True}],
    AGENT_EXTENSION: {
        "owner": "finance",
        "purpose": "payments",
        "riskLevel": "medium",
        "agentType": "external",
        "status": "active",
        "model": "m-2",
        "description": "moves money",
        "callbackUrl": "https://pay.example/hook",
        "scopes": ["payments:transfer", "payments:read"],
        "labels": [{"key": "team", "value": "treasury"}, {"key": "tier"}],
    },
}


def test_an_agent_holds_every_attribute_of_its_document() -> None:
    agent = Agent.from_scim("a1", FULL, ["ops", "finance", "ops"])
    assert agent == Agent(
        id="a1",
        name="pay-bot",
        display_name="Payments bot",
        roles=("payer", "reader"),
        groups=("finance", "ops"),
        owner="finance",
        purpose="payments",
        risk="medium",
        type="external",
        status="active",
        model="m-2",
        description="moves money",
        callback_url="https://pay.example/hook",
        scopes=("payments:transfer", "payments:read"),
        labels=(Label("team", "treasury"), Label("tier")),
    )
    assert agent.active


def test_an_agent_gives_policies_the_attributes_they_read() -> None:
    assert Agent.from_scim("a1", FULL, ["ops"]).attributes() == {
        "id": "a1",
        "name": "pay-bot",
        "owner": "finance",
        "purpose": "payments",
        "risk": "medium",
        "status": "active",
        "type": "external",
        "scopes": ["payments:transfer", "payments:read"],
        "labels": {"team": "treasury", "tier": ""},
        "roles": ["payer", "reader"],
        "groups": ["ops"],
    }


def test_an_agent_in_other_groups_is_the_same_agent_otherwise() -> None:
    agent = Agent.from_scim("a1", FULL, ["ops"])
    moved = agent.in_groups(["sales", "audit", "sales"])
    assert moved == Agent.from_scim("a1", FULL, ["audit", "sales"])
    assert moved.attributes()["groups"] == ["audit", "sales"]
    assert agent.attributes()["groups"] == ["ops"]


def test_an_agent_gives_back_its_extension_as_stored() -> None:
    assert Agent.from_scim("a1", FULL).extension() == FULL[AGENT_EXTENSION]


def test_an_agent_without_optional_attributes_gets_the_policy_defaults() -> None:
    agent = Agent.from_scim("a1", {"name": "bare", AGENT_EXTENSION: {}})
    assert agent == Agent(id="a1", name="bare")
    assert not agent.active
    assert agent.attributes() == {
        "id": "a1",
        "name": "bare",
        "status": "unknown",
        "type": "background",
        "scopes": [],
        "labels": {},
        "roles": [],
        "groups": [],
    }
    assert agent.extension() == {}


def test_an_agent_without_its_extension_or_name_is_an_empty_record() -> None:
    agent = Agent.from_scim("a1", {})
    assert agent == Agent(id="a1")
    assert agent.attributes()["name"] == ""
    assert Agent.from_scim("a1", {AGENT_EXTENSION: "not an object"}) == agent


def test_odd_values_in_an_agent_document_are_left_out() -> None:
    doc: dict[str, Any] = {
        "name": 7,
        "displayName": None,
        AGENT_EXTENSION: {
            "owner": None,
            "riskLevel": 3,
            "status": ["active"],
            "scopes": "payments:transfer",
            "labels": [{"value": "no key"}, "team", {"key": "team", "value": None}, {"key": 1}],
        },
    }
    agent = Agent.from_scim("a1", doc)
    assert agent == Agent(id="a1", labels=(Label("team"),))
    assert agent.attributes()["labels"] == {"team": ""}
    assert "owner" not in agent.attributes() and "risk" not in agent.attributes()
    assert Agent.from_scim("a1", {AGENT_EXTENSION: {"scopes": ["a", 2, None, "b"]}}).scopes == (
        "a",
        "b",
    )


def test_empty_lists_stay_apart_from_missing_ones() -> None:
    agent = Agent.from_scim("a1", {AGENT_EXTENSION: {"scopes": [], "labels": []}})
    assert (agent.scopes, agent.labels) == ((), ())
    assert agent.extension() == {"scopes": [], "labels": []}


def test_an_agent_from_its_extension_alone() -> None:
    agent = extension("a1", status="suspended", agentType="interactive")
    assert (agent.id, agent.status, agent.type, agent.active) == (
        "a1",
        "suspended",
        "interactive",
        False,
    )


@pytest.mark.parametrize("status", ["suspended", "retired", "unknown", "ACTIVE"])
def test_only_the_status_active_is_active(status: str) -> None:
    assert not extension("a1", status=status).active


def test_a_user_holds_its_names_emails_roles_and_groups() -> None:
    doc = {
        "userName": "bjensen",
        "externalId": "00u1ab",
        "displayName": "Barbara Jensen",
        "emails": [
            {"value": "bj@home.example", "type": "home"},
            {"value": "bjensen@work.example", "type": "work", "primary": True},
        ],
        "roles": [{"value": "treasurer"}, {"value": "approver"}],
        "active": True,
    }
    user = User.from_scim("u1", doc, ["finance", "audit", "finance"])
    assert user == User(
        id="u1",
        user_name="bjensen",
        external_id="00u1ab",
        display_name="Barbara Jensen",
        email="bjensen@work.example",
        emails=("bj@home.example", "bjensen@work.example"),
        roles=("treasurer", "approver"),
        groups=("audit", "finance"),
        active=True,
    )
    assert user.attributes() == {
        "id": "u1",
        "userName": "bjensen",
        "externalId": "00u1ab",
        "displayName": "Barbara Jensen",
        "email": "bjensen@work.example",
        "emails": ["bj@home.example", "bjensen@work.example"],
        "roles": ["treasurer", "approver"],
        "groups": ["audit", "finance"],
    }


def test_a_user_holds_what_the_enterprise_extension_says() -> None:
    doc = {
        "userName": "bjensen",
        ENTERPRISE_EXTENSION: {
            "employeeNumber": "701984",
            "costCenter": "4130",
            "organization": "Universal Studios",
            "division": "Theme Park",
            "department": "Tour Operations",
            "manager": {"value": "26118915-6090-4610-87e4-49d8ca9f808d", "displayName": "J"},
        },
    }
    user = User.from_scim("u1", doc)
    assert user.manager == "26118915-6090-4610-87e4-49d8ca9f808d"
    assert {k: v for k, v in user.attributes().items() if k not in ("id", "userName")} == {
        "employeeNumber": "701984",
        "costCenter": "4130",
        "organization": "Universal Studios",
        "division": "Theme Park",
        "department": "Tour Operations",
        "manager": "26118915-6090-4610-87e4-49d8ca9f808d",
        "emails": [],
        "roles": [],
        "groups": [],
    }


def test_what_a_user_lacks_is_absent_from_its_attributes_not_empty() -> None:
    doc: dict[str, Any] = {
        "userName": "bjensen",
        "externalId": "",
        "displayName": None,
        ENTERPRISE_EXTENSION: {"department": "", "division": 7, "manager": "m1"},
    }
    assert User.from_scim("u1", doc).attributes() == {
        "id": "u1",
        "userName": "bjensen",
        "emails": [],
        "roles": [],
        "groups": [],
    }
    odd = {ENTERPRISE_EXTENSION: "not an object"}
    assert User.from_scim("u1", odd) == User(id="u1")


def test_a_user_without_optional_attributes_is_active_with_nothing_else() -> None:
    user = User.from_scim("u1", {})
    assert user == User(id="u1")
    assert user.active and user.email is None
    assert user.attributes() == {"id": "u1", "emails": [], "roles": [], "groups": []}


def test_a_user_without_a_primary_email_has_the_first_as_email() -> None:
    doc = {"emails": [{"type": "work"}, {"value": "a@x.example"}, {"value": "b@x.example"}]}
    assert User.from_scim("u1", doc).email == "a@x.example"


def test_odd_values_in_a_user_document_are_left_out() -> None:
    doc: dict[str, Any] = {
        "userName": ["bjensen"],
        "emails": "bj@x.example",
        "roles": [{"value": "treasurer"}, {"value": None}, {"display": "no value"}, "admin"],
        "active": None,
    }
    user = User.from_scim("u1", doc)
    assert user == User(id="u1", roles=("treasurer",))


def test_only_active_false_makes_a_user_inactive() -> None:
    assert not User.from_scim("u1", {"active": False}).active
    assert User.from_scim("u1", {"active": "false"}).active


def test_memberships_name_each_users_groups() -> None:
    groups = [
        {"displayName": "finance", "members": [{"value": "u1"}, {"value": "u2"}]},
        {"displayName": "audit", "members": [{"value": "u1"}, "odd"]},
        {"displayName": "empty"},
    ]
    assert memberships(groups) == {"u1": {"finance", "audit"}, "u2": {"finance"}}


def test_the_attribute_names_are_the_published_schemas() -> None:
    extension = AgentExtension.to_schema()
    assert extension.id == AGENT_EXTENSION
    assert tuple(a.name for a in extension.attributes or ()) == EXTENSION_ATTRIBUTES
    assert AgentModel.to_schema().id == AGENT_SCHEMA


def test_the_enterprise_attribute_names_are_the_published_schema() -> None:
    extension = EnterpriseUserExtension.to_schema()
    assert extension.id == ENTERPRISE_EXTENSION
    assert tuple(a.name for a in extension.attributes or ()) == (*ENTERPRISE_ATTRIBUTES, MANAGER)


def test_a_document_the_scim_schemas_accept_makes_the_same_agent() -> None:
    resource = AgentResource.model_validate(FULL)
    assert Agent.from_scim("a1", resource.model_dump()) == Agent.from_scim("a1", FULL)


def test_a_document_the_scim_schemas_accept_makes_the_same_user() -> None:
    doc = {
        "userName": "bj",
        "externalId": "x1",
        "emails": [{"value": "bj@example.com"}],
        ENTERPRISE_EXTENSION: {"department": "Ops", "manager": {"value": "m1"}},
    }
    resource = UserResource.model_validate(doc)
    dumped = resource.model_dump(scim_ctx=None, exclude_none=True, by_alias=True, mode="json")
    assert User.from_scim("u1", dumped) == User.from_scim("u1", doc)
    assert User.from_scim("u1", dumped).attributes()["department"] == "Ops"


def test_the_risk_levels_are_the_ones_policies_order() -> None:
    assert [r.value for r in RiskLevel] == list(Risk.__members__)


def test_the_types_and_statuses_are_the_documented_ones() -> None:
    assert [t.value for t in AgentType] == ["interactive", "background", "external"]
    assert [s.value for s in AgentStatus] == ["active", "suspended", "retired"]


def extension(id: str, **attributes: str) -> Agent:
    return Agent.from_scim(id, {AGENT_EXTENSION: attributes})


def test_the_token_endpoint_takes_the_agent_from_a_snapshot(store: Store) -> None:
    stored = store.create("Agent", FULL, unique={}, actor="admin").id
    snapshot = {
        "record": extension("record", status="active", agentType="external"),
        "extension": extension("extension", status="active", agentType="interactive"),
        "suspended": extension("suspended", status="suspended"),
    }
    grants = Grants(store, None, None, None, agents=snapshot.get)  # type: ignore[arg-type]
    assert agent_claims(grants.active_agent("record")) == {
        "agent_id": "record",
        "agent_type": "external",
    }
    assert grants.active_agent("extension").type == "interactive"
    assert grants.active_agent(stored).type == "external"  # not in the snapshot: the store
    with pytest.raises(OAuthError, match="'suspended' is suspended"):
        grants.active_agent("suspended")
    with pytest.raises(OAuthError, match="'nobody' does not exist"):
        grants.active_agent("nobody")
