"""Tokens and token exchanges on the agent trail: what the issuer minted, and the PDP's
answer to every exchange."""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from issuer.oauth.grants import Exchange
from issuer.store import Store, open_store
from pdp.audit.query import Filters, records
from pdp.audit.records import token_record
from pdp.audit.writer import AuditWriter
from pdp.decide import DecisionPoint
from pdp.directory import Directory
from pdp.engine import Engine
from pdp.loader import load_directory
from pdp.serve.exchange import exchange_check
from tests.conftest import SHIPPED_POLICIES
from tests.serve.test_exchange import API, consent
from tests.servers import tessera_serve
from tests.stores import BACKENDS, store_url
from tests.test_directory import add_agent, add_user, eventually

TOKEN = "test-admin-token-0123456789"


def trail(store: Store, kind: str) -> list[dict[str, Any]]:
    return [r for _, r in records(store, "agent", Filters()) if r["kind"] == kind]


@pytest.mark.parametrize("backend", BACKENDS)
def test_tessera_serve_records_every_token_it_mints_and_never_the_token(
    backend: str, tmp_path: Path
) -> None:
    with store_url(backend, tmp_path) as url:
        with contextlib.closing(open_store(url)) as store:
            agent = add_agent(store, "reporter")
        with tessera_serve(
            *("--policies", str(SHIPPED_POLICIES), "--store", url),
            *("--port", "0", "--http-port", "0", "--metrics-port", "-1", "--grace", "1"),
            *("--admin-token", TOKEN),
            lines=3,
        ) as (_, lines):
            issuer = re.search(r"OAuth issuer (\S+) ", lines[2])
            assert issuer, lines
            base = issuer.group(1)
            registered = httpx.post(
                f"{base}/oauth/register",
                json={"agent_id": agent, "grant_types": ["client_credentials"], "scope": "read"},
                headers={"Authorization": f"Bearer {TOKEN}"},
                timeout=10,
            )
            assert registered.status_code == 201, registered.text
            client = (registered.json()["client_id"], registered.json()["client_secret"])
            minted = httpx.post(
                f"{base}/oauth/token",
                data={"grant_type": "client_credentials", "resource": API, "scope": "read"},
                auth=client,
                timeout=10,
            )
            assert minted.status_code == 200, minted.text
            refused = httpx.post(
                f"{base}/oauth/token",
                data={"grant_type": "client_credentials", "scope": "write"},
                auth=client,
                timeout=10,
            )
            assert refused.status_code == 400
            token = minted.json()["access_token"]
            with contextlib.closing(open_store(url)) as store:
                tokens = eventually(lambda: trail(store, "token"))
                text = [entry.record for entry in store.audit("agent")]
    claims = jwt.decode(token, options={"verify_signature": False})
    assert tokens == [
        {
            "kind": "token",
            "at": tokens[0]["at"],
            "grant": "client_credentials",
            "agent": agent,
            "user": None,
            "client": client[0],
            "scope": "read",
            "audience": [API],
            "jti": claims["jti"],
            "expires_at": tokens[0]["expires_at"],
            "delegation": [],
            "bound": False,
        }
    ]
    assert all(token not in entry and client[1] not in entry for entry in text)


def test_a_delegated_token_names_the_user_the_agent_and_every_actor_before_it() -> None:
    claims = {
        "sub": "user-1",
        "client_id": "pay-client",
        "agent_id": "pay-bot",
        "aud": ["https://a/", "https://b/"],
        "scope": "pay",
        "jti": "j1",
        "exp": 1_800_000_000,
        "act": {"sub": "pay-bot", "act": {"sub": "planner"}},
        "cnf": {"x5t#S256": "abc"},
    }
    record = token_record("token_exchange", claims)
    assert (record["agent"], record["user"], record["delegation"]) == (
        "pay-bot",
        "user-1",
        ["pay-bot", "planner"],
    )
    assert (record["audience"], record["bound"], record["expires_at"]) == (
        ["https://a/", "https://b/"],
        True,
        "2027-01-15T08:00:00+00:00",
    )


def test_a_users_token_for_an_agent_names_that_agent() -> None:
    claims = {"sub": "user-1", "client_id": "app", "aud": "https://a/", "scope": "read"}
    record = token_record("authorization_code", {**claims, "exp": 0, "may_act": {"sub": "bot"}})
    assert (record["agent"], record["user"], record["delegation"]) == ("bot", "user-1", [])


def test_every_exchange_the_pdp_answers_is_on_the_agent_trail(store: Store) -> None:
    agent, user = add_agent(store, "pay-bot"), add_user(store, "bjensen")
    directory = Directory(store)
    directory.load()
    writer = AuditWriter(store)
    try:
        service = DecisionPoint(
            Engine(load_directory(SHIPPED_POLICIES).bundle), directory=directory, audit=writer
        )
        check = exchange_check(service)
        assert check(Exchange(agent, user, (agent,), (API,), ())) is not None
        consent(store, user, agent)
        directory.load()
        assert check(Exchange(agent, user, (agent,), (API,), ("read",))) is None
        assert check(Exchange("nobody", user, ("nobody",), (API,), ())) is not None
    finally:
        writer.close()
    decisions = trail(store, "decision")
    assert [(d["agent"], d["allow"], d["pep"], d["action"]) for d in decisions] == [
        (agent, False, "issuer", "token.exchange"),
        (agent, True, "issuer", "token.exchange"),
        ("nobody", False, "issuer", "token.exchange"),
    ]
    assert decisions[1]["resource"] == {"type": "audience", "id": API}
    assert decisions[1]["context"]["consents"] and decisions[1]["user"] == user
    assert decisions[2]["decided_by"] == ["directory"]
    assert len({d["decision_id"] for d in decisions}) == 3
    assert json.dumps(decisions)  # plain JSON throughout
