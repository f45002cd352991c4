"""The PDP's directory snapshot: what it resolves, what it refuses, how it keeps up."""

from __future__ import annotations

import time
from typing import Any

import pytest

from issuer.agents import Agent
from issuer.models import AGENT_EXTENSION, AGENT_SCHEMA, REVOKED
from issuer.store import Store, open_store
from pdp.directory import Directory, Identities

ADMIN = "admin"
ENTERPRISE_EXTENSION = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"


def agent_doc(name: str, **extension: Any) -> dict[str, Any]:
    return {
        "schemas": [AGENT_SCHEMA, AGENT_EXTENSION],
        "name": name,
        AGENT_EXTENSION: {
            "owner": "finance",
            "riskLevel": "low",
            "agentType": "background",
            "status": "active",
            **extension,
        },
    }


def add_agent(store: Store, name: str, **extension: Any) -> str:
    doc = agent_doc(name, **extension)
    return store.create("Agent", doc, unique={"name": name}, actor=ADMIN).id


def set_agent(store: Store, id: str, name: str, **extension: Any) -> None:
    store.replace(
        "Agent",
        id,
        agent_doc(name, **extension),
        unique={"name": name},
        expected_version=None,
        actor=ADMIN,
    )


def add_user(store: Store, name: str, **doc: Any) -> str:
    data = {"userName": name, **doc}
    return store.create("User", data, unique={"userName": name}, actor=ADMIN).id


def eventually(check: Any, timeout: float = 5.0) -> Any:
    """Poll ``check`` until it returns a truthy value; bounded by ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.01)


def test_an_agent_resolves_to_the_attributes_policies_read(store: Store) -> None:
    id = add_agent(
        store,
        "pay-bot",
        purpose="payments",
        riskLevel="medium",
        agentType="external",
        scopes=["payments:transfer"],
        labels=[{"key": "team", "value": "treasury"}],
    )
    directory = Directory(store)
    directory.load()
    resolved = directory.resolve(id, None)
    assert resolved == Identities(
        {
            "id": id,
            "name": "pay-bot",
            "owner": "finance",
            "purpose": "payments",
            "risk": "medium",
            "status": "active",
            "type": "external",
            "scopes": ["payments:transfer"],
            "labels": {"team": "treasury"},
            "roles": [],
            "groups": [],
        },
        None,
    )


def test_an_unknown_agent_is_refused(store: Store) -> None:
    directory = Directory(store)
    directory.load()
    assert directory.resolve("nobody", None) == "agent 'nobody' is not in the directory"


@pytest.mark.parametrize("status", ["suspended", "retired"])
def test_an_agent_that_is_not_active_is_refused(store: Store, status: str) -> None:
    id = add_agent(store, "bot", status=status)
    directory = Directory(store)
    directory.load()
    assert directory.resolve(id, None) == f"agent {id!r} is {status}"


def test_a_user_resolves_with_roles_and_the_names_of_their_groups(store: Store) -> None:
    agent = add_agent(store, "bot")
    user = add_user(store, "bjensen", roles=[{"value": "treasurer"}, {"value": "approver"}])
    store.create(
        "Group", {"displayName": "finance", "members": [{"value": user}]}, unique={}, actor=ADMIN
    )
    store.create("Group", {"displayName": "empty"}, unique={}, actor=ADMIN)
    directory = Directory(store)
    directory.load()
    resolved = directory.resolve(agent, user)
    assert isinstance(resolved, Identities)
    assert resolved.user == {
        "id": user,
        "userName": "bjensen",
        "emails": [],
        "roles": ["treasurer", "approver"],
        "groups": ["finance"],
    }


def test_an_unknown_or_inactive_user_is_refused(store: Store) -> None:
    agent = add_agent(store, "bot")
    inactive = add_user(store, "gone", active=False)
    directory = Directory(store)
    directory.load()
    assert directory.resolve(agent, "nobody") == "user 'nobody' is not in the directory"
    assert directory.resolve(agent, inactive) == f"user {inactive!r} is not active"


def test_refresh_applies_creates_replaces_and_deletes_in_order(store: Store) -> None:
    directory = Directory(store)
    directory.load()
    id = add_agent(store, "bot")
    assert directory.refresh()
    assert isinstance(directory.resolve(id, None), Identities)
    set_agent(store, id, "bot", status="suspended")
    directory.refresh()
    assert directory.resolve(id, None) == f"agent {id!r} is suspended"
    store.delete("Agent", id, expected_version=None, actor=ADMIN)
    directory.refresh()
    assert directory.resolve(id, None) == f"agent {id!r} is not in the directory"
    assert directory.version == store.last_change()
    assert not directory.refresh()


def test_revoked_access_tokens_are_known_until_they_expire(store: Store) -> None:
    now = time.time()
    store.create(REVOKED, {"jti": "early", "exp": now + 60, "sub": "a"}, unique={}, actor=ADMIN)
    store.create(REVOKED, {"jti": "expired", "exp": now - 1, "sub": "a"}, unique={}, actor=ADMIN)
    directory = Directory(store)
    directory.load()
    assert (directory.revoked("early"), directory.revoked("expired")) == (True, False)
    later = store.create(
        REVOKED, {"jti": "later", "exp": now + 60, "sub": "a"}, unique={}, actor=ADMIN
    )
    assert not directory.revoked("later")
    directory.refresh()
    assert directory.revoked("later")
    store.delete(REVOKED, later.id, expected_version=None, actor=ADMIN)
    directory.refresh()
    assert not directory.revoked("later")
    assert not directory.revoked("never")


def test_group_changes_reach_the_users_groups(store: Store) -> None:
    agent = add_agent(store, "bot")
    user = add_user(store, "bjensen")
    directory = Directory(store)
    directory.load()
    group = store.create(
        "Group", {"displayName": "finance", "members": [{"value": user}]}, unique={}, actor=ADMIN
    )
    directory.refresh()
    bjensen = {"id": user, "userName": "bjensen", "emails": [], "roles": []}
    assert directory.resolve(agent, user) == Identities(
        directory.agent(agent) or {}, {**bjensen, "groups": ["finance"]}
    )
    store.delete("Group", group.id, expected_version=None, actor=ADMIN)
    directory.refresh()
    assert directory.user(user) == {**bjensen, "groups": []}


def test_a_user_resolves_with_email_names_and_the_enterprise_extension(store: Store) -> None:
    agent = add_agent(store, "bot")
    user = add_user(
        store,
        "bjensen",
        externalId="00u1ab",
        displayName="Barbara Jensen",
        emails=[{"value": "bj@home.example"}, {"value": "bj@example.com", "primary": True}],
        **{ENTERPRISE_EXTENSION: {"department": "Finance", "manager": {"value": "m-1"}}},
    )
    directory = Directory(store)
    directory.load()
    resolved = directory.resolve(agent, user)
    assert isinstance(resolved, Identities)
    assert resolved.user == {
        "id": user,
        "userName": "bjensen",
        "externalId": "00u1ab",
        "displayName": "Barbara Jensen",
        "email": "bj@example.com",
        "emails": ["bj@home.example", "bj@example.com"],
        "roles": [],
        "groups": [],
        "department": "Finance",
        "manager": "m-1",
    }


def test_an_agent_resolves_with_its_roles_and_groups_as_they_change(store: Store) -> None:
    id = store.create(
        "Agent",
        {**agent_doc("bot"), "roles": [{"value": "reader"}]},
        unique={"name": "bot"},
        actor=ADMIN,
    ).id
    other = add_agent(store, "other")
    ops = store.create(
        "Group", {"displayName": "ops", "members": [{"value": id}]}, unique={}, actor=ADMIN
    )
    directory = Directory(store)
    directory.load()
    agent = directory.agent(id) or {}
    assert (agent["roles"], agent["groups"]) == (["reader"], ["ops"])
    assert (directory.agent(other) or {})["groups"] == []

    store.create(
        "Group",
        {"displayName": "audit", "members": [{"value": id}, {"value": other}]},
        unique={},
        actor=ADMIN,
    )
    directory.refresh()
    assert (directory.agent(id) or {})["groups"] == ["audit", "ops"]
    assert (directory.agent(other) or {})["groups"] == ["audit"]

    set_agent(store, id, "bot", purpose="reports")  # a change to the agent keeps its groups
    store.delete("Group", ops.id, expected_version=None, actor=ADMIN)
    directory.refresh()
    assert (directory.agent(id) or {})["groups"] == ["audit"]
    assert (directory.agent(id) or {})["purpose"] == "reports"


def test_the_follower_sees_a_suspension_made_through_another_store_object(
    store: Store,
) -> None:
    """How a PDP replica follows the directory another process writes."""
    id = add_agent(store, "bot")
    directory = Directory(open_store(store.url))
    directory.start()
    try:
        assert isinstance(directory.resolve(id, None), Identities)
        set_agent(store, id, "bot", status="suspended")
        refused = eventually(lambda: isinstance(directory.resolve(id, None), str))
        assert refused, "the follower never applied the suspension"
    finally:
        directory.stop()
        directory.store.close()


def test_stop_ends_the_follower_thread(store: Store) -> None:
    directory = Directory(store)
    directory.start()
    thread = directory._thread
    directory.stop()
    assert thread is not None and not thread.is_alive()


def test_a_suspended_or_unknown_agent_in_the_delegation_chain_is_refused(store: Store) -> None:
    agent = add_agent(store, "bot")
    upstream = add_agent(store, "planner", status="suspended")
    directory = Directory(store)
    directory.load()
    assert isinstance(directory.resolve(agent, None, [agent]), Identities)
    assert directory.resolve(agent, None, [upstream, agent]) == (
        f"delegating agent {upstream!r} is suspended"
    )
    assert directory.resolve(agent, None, ["ghost", agent]) == (
        "delegating agent 'ghost' is not in the directory"
    )


def test_an_agent_document_without_a_status_is_refused(store: Store) -> None:
    doc = agent_doc("bot")
    del doc[AGENT_EXTENSION]["status"]
    id = store.create("Agent", doc, unique={"name": "bot"}, actor=ADMIN).id
    directory = Directory(store)
    directory.load()
    assert directory.resolve(id, None) == f"agent {id!r} is unknown"


def test_the_directory_holds_each_agent_as_its_record(store: Store) -> None:
    id = add_agent(store, "bot", purpose="ops")
    directory = Directory(store)
    directory.load()
    record = directory.agent_record(id)
    assert record == Agent.from_scim(id, store.get("Agent", id).data)
    assert directory.agent(id) is record.attributes()  # made once per change, not per read
    assert directory.agent_record("nobody") is None


def test_an_odd_agent_document_does_not_stop_the_directory(store: Store) -> None:
    odd = add_agent(store, "odd", labels=[{"value": "no key"}], scopes="one")
    fine = add_agent(store, "fine")
    directory = Directory(store)
    directory.load()
    resolved = directory.resolve(odd, None)
    assert isinstance(resolved, Identities)
    assert (resolved.agent["labels"], resolved.agent["scopes"]) == ({}, [])
    assert isinstance(directory.resolve(fine, None), Identities)


def test_a_follower_that_cannot_reach_the_store_refuses_everyone(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fail closed: a suspension made elsewhere might be missing from a stale snapshot."""
    import pdp.directory

    id = add_agent(store, "bot")
    directory = Directory(store)
    directory.start()
    try:
        assert isinstance(directory.resolve(id, None), Identities)
        monkeypatch.setattr(pdp.directory, "MAX_STALENESS", 0.2)

        def unreachable(since: int, timeout: float) -> int:
            raise RuntimeError("connection lost")

        monkeypatch.setattr(store, "wait_for_change", unreachable)
        refused = eventually(lambda: isinstance(directory.resolve(id, None), str))
        assert refused
        assert directory.resolve(id, None) == (
            "the directory has not been refreshed for over 0.2 s"
        )
    finally:
        directory.stop()


def test_consents_granted_to_an_agent_come_with_the_user(store: Store) -> None:
    from issuer.models import CONSENT

    agent = add_agent(store, "pay-bot")
    other = add_agent(store, "other-bot")
    user = add_user(store, "bjensen")
    directory = Directory(store)
    directory.load()
    assert directory.resolve(agent, user) == Identities(
        directory.agent(agent) or {}, directory.user(user), ()
    )
    grant = {"user_id": user, "agent_id": agent, "client_id": "c", "scopes": ["payments:transfer"]}
    record = store.create(CONSENT, grant, unique={"grant": f"{user}|c|{agent}"}, actor=user)
    directory.refresh()
    resolved = directory.resolve(agent, user)
    assert isinstance(resolved, Identities)
    assert resolved.consents == ("payments:transfer",)
    other_resolved = directory.resolve(other, user)
    assert isinstance(other_resolved, Identities) and other_resolved.consents == ()
    store.delete(CONSENT, record.id, expected_version=None, actor=user)
    directory.refresh()
    revoked = directory.resolve(agent, user)
    assert isinstance(revoked, Identities) and revoked.consents == ()
