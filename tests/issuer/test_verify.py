"""The resource-server verifier: every caller it accepts and every refusal, with tokens
minted by the issuer's key ring in a SQLite store (or forged by hand), revocations and
agents in that store, and a clock of the test's own for what it remembers."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import math
from collections.abc import Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from issuer.keys import KeyRing, PublicKey, generate
from issuer.models import REVOKED
from issuer.oauth import revocation
from issuer.oauth.tokens import TokenMinter, ring_lookup
from issuer.store import Store
from issuer.verify import (
    Caller,
    Memory,
    Reason,
    Refusal,
    Verifier,
    agent_statuses,
    revocations,
)
from tests.issuer.test_tokens import claims, compact, sign
from tests.stores import opened_store
from tests.test_directory import add_agent, set_agent

ISSUER = "https://issuer.example.com"
RESOURCE = "https://api.example.com"
BOUND = "bm90LWEtcmVhbC10aHVtYnByaW50LWJ1dC1sb25nLWVub3VnaA"  # a certificate's x5t#S256


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with opened_store("sqlite", tmp_path) as opened:
        yield opened


@pytest.fixture
def ring(store: Store) -> KeyRing:
    return KeyRing(store)


def mint(ring: KeyRing, agent: str = "agent-1", lifetime: int = 300, **extra: Any) -> str:
    """A token as the issuer mints it for ``agent`` acting alone; ``extra`` adds claims
    (``sub``, ``aud`` and ``scope`` among them)."""
    subject = extra.pop("sub", agent)
    audience = extra.pop("aud", [RESOURCE])
    scope = extra.pop("scope", ["read"])
    extra = {"agent_id": agent, "agent_type": "background", **extra}
    return (
        TokenMinter(ring, ISSUER, lifetime)
        .mint(subject=subject, client_id="client-1", audience=audience, scope=scope, extra=extra)
        .token
    )


def verify(verifier: Verifier, token: str | None, thumbprint: str | None = None) -> Any:
    return asyncio.run(verifier.verify(token, thumbprint))


def refusal(verifier: Verifier, token: str | None, thumbprint: str | None = None) -> Refusal:
    found = verify(verifier, token, thumbprint)
    assert isinstance(found, Refusal), found
    return found


class Counted:
    """A key lookup over the ring that counts its calls (one per signature checked)."""

    def __init__(self, ring: KeyRing) -> None:
        self.lookup = ring_lookup(ring)
        self.calls = 0
        self.known = True

    def __call__(self, kid: str) -> tuple[str, PublicKey] | None:
        self.calls += 1
        return self.lookup(kid) if self.known else None


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


# ---------------------------------------------------------------- what it accepts


def test_an_agent_acting_alone_is_the_caller_with_its_scopes(ring: KeyRing) -> None:
    token = mint(ring, scope=["read", "write"], acr="urn:mace:incommon:iap:silver")
    found = verify(Verifier(ring_lookup(ring), ISSUER, RESOURCE), token)
    assert found == Caller("agent-1", None, (), frozenset({"read", "write"}), None)
    assert found.claims["acr"] == "urn:mace:incommon:iap:silver"
    assert found.key == "agent-1|"


def test_a_delegated_token_names_the_user_and_the_actors_outermost_first(ring: KeyRing) -> None:
    act = {"sub": "agent-1", "act": {"sub": "orchestrator"}}
    token = mint(ring, sub="user-7", act=act)
    found = verify(Verifier(ring_lookup(ring), ISSUER, RESOURCE), token)
    assert (found.agent, found.user, found.chain) == (
        "agent-1",
        "user-7",
        ("agent-1", "orchestrator"),
    )
    assert found.key == "agent-1|user-7"


def test_a_bound_token_is_accepted_with_its_certificate(ring: KeyRing) -> None:
    token = mint(ring, cnf={"x5t#S256": BOUND})
    found = verify(Verifier(ring_lookup(ring), ISSUER, RESOURCE), token, BOUND)
    assert isinstance(found, Caller) and found.cnf == BOUND


def test_a_token_for_any_one_of_several_audiences_is_accepted(ring: KeyRing) -> None:
    verifier = Verifier(ring_lookup(ring), ISSUER, [RESOURCE, f"{RESOURCE}/scim"])
    assert isinstance(verify(verifier, mint(ring, aud=[f"{RESOURCE}/scim"])), Caller)
    refused = refusal(verifier, mint(ring, aud=["https://elsewhere.example"]))
    assert refused.reason is Reason.WRONG_AUDIENCE
    assert refused.message.endswith(f"any of {RESOURCE!r}, '{RESOURCE}/scim'")


def test_the_scopes_a_door_needs_must_all_be_granted(ring: KeyRing) -> None:
    verifier = Verifier(ring_lookup(ring), ISSUER, RESOURCE, scopes=["read", "write"])
    assert isinstance(verify(verifier, mint(ring, scope=["write", "read", "x"])), Caller)
    refused = refusal(verifier, mint(ring, scope=["read"]))
    assert refused == Refusal(Reason.INSUFFICIENT_SCOPE, "the token lacks write")
    assert (refused.error, refused.status) == ("insufficient_scope", 403)


def test_an_unknown_kid_fetches_the_keys_once_and_then_verifies(ring: KeyRing) -> None:
    lookup = Counted(ring)
    lookup.known = False
    fetched = []

    async def refresh() -> None:
        fetched.append(True)
        lookup.known = True

    verifier = Verifier(lookup, ISSUER, RESOURCE, refresh_keys=refresh)
    assert isinstance(verify(verifier, mint(ring)), Caller)
    assert fetched == [True]


def test_an_opaque_token_is_the_caller_its_introspection_describes(ring: KeyRing) -> None:
    asked: list[str] = []

    async def introspect(token: str) -> Mapping[str, Any] | Refusal:
        asked.append(token)
        if token == "gone":
            return Refusal(Reason.REVOKED, "the token is not active")
        issuer = "https://other.example" if token == "foreign" else ISSUER
        aud = "https://elsewhere.example" if token == "misdirected" else [RESOURCE]
        return {"active": True, **claims(iss=issuer, aud=aud), "agent_id": "agent-1"}

    async def never(token: str, who: Caller) -> Refusal | None:
        raise AssertionError("introspection answers for revocation")

    memory = Memory()
    verifier = Verifier(
        ring_lookup(ring), ISSUER, RESOURCE, introspect=introspect, revoked=never, memory=memory
    )
    found = verify(verifier, "opaque-1")
    assert found == Caller("agent-1", None, (), frozenset({"read"}), None)
    assert verify(verifier, "opaque-1") == found
    assert asked == ["opaque-1", "opaque-1"] and len(memory) == 0  # asked each time
    assert refusal(verifier, "gone") == Refusal(Reason.REVOKED, "the token is not active")
    assert refusal(verifier, "foreign").message == "the token is from another issuer"
    assert refusal(verifier, "misdirected").reason is Reason.WRONG_AUDIENCE


# ---------------------------------------------------------------- the token itself


def test_no_token_is_missing_with_no_error_code(ring: KeyRing) -> None:
    verifier = Verifier(ring_lookup(ring), ISSUER, RESOURCE)
    for token in (None, ""):
        refused = refusal(verifier, token)
        assert refused.reason is Reason.MISSING
        assert (refused.error, refused.status) == (None, 401)


@pytest.mark.parametrize("token", ["not-a-jwt", "a.b.c", "eyJ9.e30.AA"])
def test_what_is_not_a_jws_is_malformed(ring: KeyRing, token: str) -> None:
    refused = refusal(Verifier(ring_lookup(ring), ISSUER, RESOURCE), token)
    assert refused.reason is Reason.MALFORMED
    assert (refused.error, refused.status) == ("invalid_token", 401)


def test_alg_none_and_algorithm_confusion_are_invalid(ring: KeyRing) -> None:
    verifier = Verifier(ring_lookup(ring), ISSUER, RESOURCE)
    key = ring.signing_key()
    unsigned = compact({"alg": "none", "typ": "at+jwt", "kid": key.kid}, claims(), lambda _: b"")
    pem = key.public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    hs256 = compact(
        {"alg": "HS256", "typ": "at+jwt", "kid": key.kid},
        claims(),
        lambda data: hmac.new(pem, data, hashlib.sha256).digest(),
    )
    rs256 = jwt.encode(
        claims(), generate("RS256"), algorithm="RS256", headers={"typ": "at+jwt", "kid": key.kid}
    )
    for token in (unsigned, hs256, rs256):
        refused = refusal(verifier, token)
        assert refused.reason is Reason.INVALID and "alg" in refused.message


def test_a_broken_signature_another_issuer_or_an_unknown_key_is_invalid(ring: KeyRing) -> None:
    verifier = Verifier(ring_lookup(ring), ISSUER, RESOURCE)
    foreign = TokenMinter(ring, "https://elsewhere.example").mint(
        subject="agent-1", client_id="c", audience=[RESOURCE], scope=[], extra={}
    )
    for token, says in (
        (mint(ring)[:-4] + "AAAA", "signature"),
        (foreign.token, "iss"),
        (sign(ring, claims(), kid="no-such-kid"), "unknown kid"),
        (sign(ring, claims(), typ="JWT"), "typ"),
        (sign(ring, claims(nbf=claims()["iat"] + 600)), "not valid yet"),
    ):
        refused = refusal(verifier, token)
        assert refused.reason is Reason.INVALID and says in refused.message


def test_an_expired_token_is_expired(ring: KeyRing) -> None:
    refused = refusal(Verifier(ring_lookup(ring), ISSUER, RESOURCE), mint(ring, lifetime=-31))
    assert refused == Refusal(Reason.EXPIRED, "the token has expired")


def test_a_token_for_another_audience_is_wrong_audience(ring: KeyRing) -> None:
    token = mint(ring, aud=["https://other-api.example"])
    refused = refusal(Verifier(ring_lookup(ring), ISSUER, RESOURCE), token)
    assert refused == Refusal(
        Reason.WRONG_AUDIENCE, f"aud 'https://other-api.example' does not include {RESOURCE!r}"
    )


def test_a_verifier_always_names_its_issuer_and_audience(ring: KeyRing) -> None:
    for issuer, audience in (("", RESOURCE), (ISSUER, ""), (ISSUER, []), (ISSUER, [RESOURCE, ""])):
        with pytest.raises(ValueError):
            Verifier(ring_lookup(ring), issuer, audience)


# ---------------------------------------------------------------- who calls


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        ({"agent_id": None}, "the token names no agent"),
        ({"agent_id": None, "sub": "user-7", "may_act": {"sub": "agent-1"}}, "a user's token"),
        ({"sub": "someone-else"}, "sub and agent_id differ"),
        ({"sub": "user-7", "act": {"sub": "another-agent"}}, "the act claim does not name"),
        ({"sub": "user-7", "act": {}}, "the act claim does not name"),
        ({"sub": "user-7", "act": {"sub": "agent-1", "act": "x"}}, "the act claim does not name"),
    ],
)
def test_a_token_that_names_no_agent_as_the_caller_is_not_an_agent(
    ring: KeyRing, extra: dict[str, Any], says: str
) -> None:
    refused = refusal(Verifier(ring_lookup(ring), ISSUER, RESOURCE), mint(ring, **extra))
    assert refused.reason is Reason.NOT_AN_AGENT and refused.message.startswith(says)


def test_a_door_for_agents_acting_alone_refuses_a_delegated_token(ring: KeyRing) -> None:
    verifier = Verifier(ring_lookup(ring), ISSUER, RESOURCE, alone=True)
    assert isinstance(verify(verifier, mint(ring)), Caller)
    refused = refusal(verifier, mint(ring, sub="user-7", act={"sub": "agent-1"}))
    assert refused.reason is Reason.NOT_AN_AGENT


def test_a_bound_token_without_its_certificate_is_refused(ring: KeyRing) -> None:
    verifier = Verifier(ring_lookup(ring), ISSUER, RESOURCE)
    token = mint(ring, cnf={"x5t#S256": BOUND})
    assert refusal(verifier, token).reason is Reason.UNBOUND
    assert refusal(verifier, token, "another-thumbprint").reason is Reason.CERT_MISMATCH
    for cnf in ({"jkt": "a-dpop-key"}, "x", {"x5t#S256": 7}):  # bound in a way not checked here
        assert refusal(verifier, mint(ring, cnf=cnf), BOUND).reason is Reason.INVALID


# ---------------------------------------------------------------- revocation and status


def test_a_token_revoked_in_the_store_is_revoked(store: Store, ring: KeyRing) -> None:
    verifier = Verifier(ring_lookup(ring), ISSUER, RESOURCE, revoked=revocations(store))
    token = mint(ring)
    assert isinstance(verify(verifier, token), Caller)
    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    store.create(REVOKED, {"jti": jti, "exp": 0, "sub": "agent-1"}, unique={"jti": jti}, actor="c")
    assert refusal(verifier, token) == Refusal(Reason.REVOKED, "the token was revoked")


def test_a_token_whose_lineage_names_a_revoked_token_or_grant_is_revoked(
    store: Store, ring: KeyRing
) -> None:
    """A token exchanged from another, or given by a grant, names them in ``lineage``:
    revoking any of them revokes it (RFC 7009 with RFC 8693)."""
    verifier = Verifier(ring_lookup(ring), ISSUER, RESOURCE, revoked=revocations(store))
    token = mint(ring, lineage=["a-grant", "a-parent-jti"])
    sibling = mint(ring, lineage=["a-grant", "another-parent-jti"])
    assert isinstance(verify(verifier, token), Caller)
    revocation.revoke(store, "a-parent-jti", subject="u", exp=0, lifetime=300, actor="c")
    assert refusal(verifier, token) == Refusal(Reason.REVOKED, "the token was revoked")
    assert isinstance(verify(verifier, sibling), Caller)
    revocation.revoke(store, "a-grant", subject="u", exp=0, lifetime=300, actor="c")
    assert refusal(verifier, sibling).reason is Reason.REVOKED


@pytest.mark.parametrize("lineage", ["a-grant", [1], {"jti": "x"}, None])
def test_a_token_whose_lineage_is_not_a_list_of_ids_is_refused(
    store: Store, ring: KeyRing, lineage: Any
) -> None:
    verifier = Verifier(ring_lookup(ring), ISSUER, RESOURCE, revoked=revocations(store))
    assert refusal(verifier, mint(ring, lineage=lineage)).reason is Reason.REVOKED


def test_when_revocation_cannot_be_checked_the_token_is_refused(ring: KeyRing) -> None:
    async def unknown(token: str, who: Caller) -> Refusal | None:
        return Refusal(Reason.UNCHECKED, "the issuer could not be asked")

    async def broken(token: str, who: Caller) -> Refusal | None:
        raise OSError("the store is down")

    token = mint(ring)
    verifier = Verifier(ring_lookup(ring), ISSUER, RESOURCE, revoked=unknown, memory=Memory())
    assert refusal(verifier, token).reason is Reason.UNCHECKED
    verifier = Verifier(ring_lookup(ring), ISSUER, RESOURCE, revoked=broken, memory=Memory())
    with pytest.raises(OSError):
        verify(verifier, token)
    with pytest.raises(OSError):  # nothing was remembered as checked
        verify(verifier, token)


def test_an_agent_not_active_in_the_directory_is_suspended(store: Store, ring: KeyRing) -> None:
    agent = add_agent(store, "reader")
    verifier = Verifier(ring_lookup(ring), ISSUER, RESOURCE, agent_status=agent_statuses(store))
    assert isinstance(verify(verifier, mint(ring, agent)), Caller)
    set_agent(store, agent, "reader", status="suspended")
    assert refusal(verifier, mint(ring, agent)) == Refusal(
        Reason.SUSPENDED, f"the agent {agent!r} is suspended"
    )
    refused = refusal(verifier, mint(ring, "no-such-agent"))
    assert refused.message == "the agent 'no-such-agent' is not in the directory"


# ---------------------------------------------------------------- what it remembers


def remembering(
    ring: KeyRing, memory: Memory, revoked: Callable[[str, Caller], Awaitable[Refusal | None]]
) -> tuple[Verifier, Counted]:
    lookup = Counted(ring)
    return Verifier(lookup, ISSUER, RESOURCE, revoked=revoked, memory=memory), lookup


def test_a_remembered_token_is_not_verified_again_and_its_revocation_is_reread(
    ring: KeyRing,
) -> None:
    clock, revoked = Clock(), set[str]()

    async def check(token: str, who: Caller) -> Refusal | None:
        return Refusal(Reason.REVOKED, "revoked") if token in revoked else None

    verifier, lookup = remembering(ring, Memory(recheck=1.0, clock=clock), check)
    token = mint(ring)
    assert isinstance(verify(verifier, token), Caller)
    assert isinstance(verify(verifier, token), Caller)
    assert lookup.calls == 1  # one signature checked
    revoked.add(token)
    clock.now += 0.5
    assert isinstance(verify(verifier, token), Caller)  # revocation not read again yet
    clock.now += 0.5
    assert refusal(verifier, token).reason is Reason.REVOKED
    revoked.clear()
    assert isinstance(verify(verifier, token), Caller)
    assert lookup.calls == 2  # a revoked token is forgotten, so verified again


def test_a_remembered_token_is_verified_again_from_its_exp_and_after_keep(ring: KeyRing) -> None:
    async def unrevoked(token: str, who: Caller) -> Refusal | None:
        return None

    clock = Clock()
    verifier, lookup = remembering(ring, Memory(keep=60, clock=clock), unrevoked)
    token = mint(ring)
    exp = float(jwt.decode(token, options={"verify_signature": False})["exp"])
    clock.now = exp - 100
    verify(verifier, token)
    clock.now += 59
    verify(verifier, token)
    assert lookup.calls == 1
    clock.now += 1  # kept 60 s
    verify(verifier, token)
    assert lookup.calls == 2
    clock.now = exp  # its exp by this clock, though not yet by the verifier's
    lookup.known = False
    assert "unknown kid" in refusal(verifier, token).message  # so it was verified again


def test_a_remembered_bound_token_needs_its_certificate_every_time(ring: KeyRing) -> None:
    verifier = Verifier(ring_lookup(ring), ISSUER, RESOURCE, memory=Memory())
    token = mint(ring, cnf={"x5t#S256": BOUND})
    assert isinstance(verify(verifier, token, BOUND), Caller)
    assert refusal(verifier, token).reason is Reason.UNBOUND
    assert isinstance(verify(verifier, token, BOUND), Caller)


def test_a_fresh_token_is_neither_remembered_nor_asked_about(ring: KeyRing) -> None:
    async def revoked(token: str, who: Caller) -> Refusal | None:
        return Refusal(Reason.REVOKED, "revoked")

    memory = Memory()
    verifier, _ = remembering(ring, memory, revoked)
    found = asyncio.run(verifier.verify(mint(ring), fresh=True))
    assert isinstance(found, Caller) and len(memory) == 0


def test_verifiers_sharing_a_memory_keep_their_tokens_apart(ring: KeyRing) -> None:
    memory = Memory(size=2, keep=60, recheck=math.inf)
    here = Verifier(ring_lookup(ring), ISSUER, RESOURCE, memory=memory)
    there = Verifier(ring_lookup(ring), ISSUER, "https://other-api.example", memory=memory)
    token = mint(ring)
    assert isinstance(verify(here, token), Caller)
    assert refusal(there, token).reason is Reason.WRONG_AUDIENCE
    for _ in range(3):
        verify(here, mint(ring))
    assert len(memory) == 2  # bounded
