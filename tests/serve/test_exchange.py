"""The PDP's check of a token exchange: the shipped policies, the directory, the consents."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from issuer.models import CONSENT
from issuer.oauth.grants import Exchange
from issuer.store import Store
from pdp.decide import DecisionPoint
from pdp.directory import Directory
from pdp.engine import Engine
from pdp.loader import load_directory
from pdp.serve.exchange import exchange_check
from tests.conftest import SHIPPED_POLICIES
from tests.stores import opened_store
from tests.test_directory import add_agent, add_user, set_agent

API = "https://api.example.com/"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with opened_store("sqlite", tmp_path) as opened:
        yield opened


def service_on(store: Store) -> DecisionPoint:
    directory = Directory(store)
    directory.load()
    return DecisionPoint(Engine(load_directory(SHIPPED_POLICIES).bundle), directory=directory)


def consent(store: Store, user: str, agent: str) -> None:
    grant = {"user_id": user, "agent_id": agent, "client_id": "app", "scopes": ["read"]}
    store.create(CONSENT, grant, unique={"grant": f"{user}|app|{agent}"}, actor=user)


def test_an_exchange_the_user_consented_to_is_allowed(store: Store) -> None:
    agent, user = add_agent(store, "pay-bot"), add_user(store, "bjensen")
    consent(store, user, agent)
    check = exchange_check(service_on(store))
    assert check(Exchange(agent, user, (agent,), (API,), ("read",))) is None


def test_without_consent_the_policies_deny_the_exchange(store: Store) -> None:
    agent, user = add_agent(store, "pay-bot"), add_user(store, "bjensen")
    refusal = exchange_check(service_on(store))(Exchange(agent, user, (agent,), (API,), ()))
    assert refusal == "no permit applies (default deny)"


def test_a_critical_risk_agent_is_refused_even_with_consent(store: Store) -> None:
    agent, user = add_agent(store, "root-bot", riskLevel="critical"), add_user(store, "bjensen")
    consent(store, user, agent)
    refusal = exchange_check(service_on(store))(Exchange(agent, user, (agent,), (API,), ()))
    assert refusal == "no permit applies (default deny)"


def test_a_suspended_agent_or_a_suspended_actor_in_the_chain_is_refused(store: Store) -> None:
    agent, other, user = add_agent(store, "a"), add_agent(store, "b"), add_user(store, "bj")
    consent(store, user, agent)
    set_agent(store, other, "b", status="suspended")
    check = exchange_check(service_on(store))
    assert check(Exchange(agent, user, (agent, other), (API,), ())) == (
        f"delegating agent {other!r} is suspended"
    )
    set_agent(store, agent, "a", status="suspended")
    assert exchange_check(service_on(store))(Exchange(agent, user, (agent,), (API,), ())) == (
        f"agent {agent!r} is suspended"
    )
