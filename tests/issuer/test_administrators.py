"""Who may administer SCIM, AuthZEN and the issuer's admin endpoints
(``AuthorizationServer.administrators``): the bootstrap token first, then an access token
of this issuer checked by the resource-server verifier, for the agent acting alone, for
one of the audiences given, not revoked, its agent active, not bound to a certificate.
Each refusal says why; the doors answer it in their own protocols."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest

from issuer.keys import KeyRing
from issuer.models import REVOKED
from issuer.oauth.endpoints import AuthorizationServer
from issuer.scim import ADMIN_SCOPE, Authenticator, BootstrapToken, Principal
from issuer.store import Store
from issuer.verify import Reason, Refusal
from tests.issuer.test_verify import BOUND, ISSUER, mint
from tests.stores import opened_store
from tests.test_directory import add_agent, set_agent

BOOTSTRAP = "bootstrap-admin-token-0123456789"
SCIM = f"{ISSUER}/scim/v2"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with opened_store("sqlite", tmp_path) as opened:
        yield opened


@pytest.fixture
def ring(store: Store) -> KeyRing:
    return KeyRing(store)


@pytest.fixture
def admins(store: Store, ring: KeyRing) -> Authenticator:
    server = AuthorizationServer(store, ring, ISSUER, BootstrapToken(BOOTSTRAP))
    return server.administrators([ISSUER, SCIM])


def found(admins: Authenticator, token: str) -> Principal | Refusal:
    return asyncio.run(admins(token))


def admin_token(ring: KeyRing, agent: str, **extra: Any) -> str:
    return mint(ring, agent, aud=[SCIM], scope=[ADMIN_SCOPE, "read"], **extra)


def test_the_bootstrap_token_administers(admins: Authenticator) -> None:
    assert found(admins, BOOTSTRAP) == Principal("bootstrap-admin", frozenset({ADMIN_SCOPE}))


def test_an_agents_own_token_for_one_of_the_audiences_administers_with_its_scopes(
    admins: Authenticator, store: Store, ring: KeyRing
) -> None:
    agent = add_agent(store, "provisioner")
    assert found(admins, admin_token(ring, agent)) == Principal(
        agent, frozenset({ADMIN_SCOPE, "read"})
    )
    for_the_issuer = mint(ring, agent, aud=[ISSUER], scope=["read"])
    assert found(admins, for_the_issuer) == Principal(agent, frozenset({"read"}))


def test_each_token_that_may_not_administer_is_refused_saying_why(
    admins: Authenticator, store: Store, ring: KeyRing
) -> None:
    agent = add_agent(store, "provisioner")
    refused = {
        "not-the-bootstrap-token-nor-a-jwt": Reason.MALFORMED,
        mint(ring, agent, aud=["https://api.example.com"]): Reason.WRONG_AUDIENCE,
        admin_token(ring, agent, sub="user-1", act={"sub": agent}): Reason.NOT_AN_AGENT,
        admin_token(ring, agent, cnf={"x5t#S256": BOUND}): Reason.UNBOUND,
        admin_token(ring, "no-such-agent"): Reason.SUSPENDED,
    }
    for token, reason in refused.items():
        answer = found(admins, token)
        assert isinstance(answer, Refusal) and answer.reason is reason, (reason, answer)


def test_a_revoked_token_and_a_suspended_agents_token_stop_administering(
    admins: Authenticator, store: Store, ring: KeyRing
) -> None:
    agent = add_agent(store, "provisioner")
    token = admin_token(ring, agent)
    assert isinstance(found(admins, token), Principal)
    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    store.create(REVOKED, {"jti": jti, "exp": 0, "sub": agent}, unique={"jti": jti}, actor="c")
    assert found(admins, token) == Refusal(Reason.REVOKED, "the token was revoked")

    other = admin_token(ring, agent)
    set_agent(store, agent, "provisioner", status="suspended")
    assert found(admins, other) == Refusal(Reason.SUSPENDED, f"the agent {agent!r} is suspended")
