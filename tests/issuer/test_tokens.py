"""RFC 9068 access tokens: what TokenMinter signs and what TokenVerifier accepts.

Unit tests, without a server: a key ring in a SQLite store, tokens minted by the
issuer or forged by hand, checked by a verifier over the ring (as the issuer itself
checks them) with a 30 s leeway.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from issuer.keys import KIND, KeyRing, generate
from issuer.oauth.tokens import (
    ExpiredToken,
    InvalidToken,
    MalformedToken,
    TokenMinter,
    TokenVerifier,
    UnknownKey,
    WrongAudience,
    ring_lookup,
)
from issuer.store import Store
from tests.stores import opened_store

ISSUER = "https://issuer.example.com"
RESOURCE = "https://api.example.com"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with opened_store("sqlite", tmp_path) as opened:
        yield opened


@pytest.fixture
def ring(store: Store) -> KeyRing:
    return KeyRing(store)


@pytest.fixture
def verifier(ring: KeyRing) -> TokenVerifier:
    return TokenVerifier(ring_lookup(ring), ISSUER, audience=RESOURCE)


def mint(ring: KeyRing, **extra: Any) -> str:
    minted = TokenMinter(ring, ISSUER).mint(
        subject="agent-1",
        client_id="client-1",
        audience=[RESOURCE],
        scope=["read"],
        extra={"agent_id": "agent-1", "agent_type": "background", **extra},
    )
    return minted.token


def claims(**changes: Any) -> dict[str, Any]:
    """Valid access token claims; ``changes`` replace them (None removes one)."""
    now = int(time.time())
    valid: dict[str, Any] = {
        "iss": ISSUER,
        "sub": "agent-1",
        "aud": RESOURCE,
        "client_id": "client-1",
        "iat": now,
        "exp": now + 300,
        "jti": "0123456789abcdef",
        "scope": "read",
    }
    return {k: v for k, v in {**valid, **changes}.items() if v is not None}


def sign(ring: KeyRing, payload: dict[str, Any], **header: Any) -> str:
    """``payload`` signed by the ring's current key, as the issuer would (typ at+jwt, kid);
    ``header`` replaces members (None removes one)."""
    key = ring.signing_key()
    members = {
        k: v for k, v in {"typ": "at+jwt", "kid": key.kid, **header}.items() if v is not None
    }
    return jwt.encode(payload, key.private, algorithm=key.alg, headers=members)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def compact(header: dict[str, Any], payload: dict[str, Any], sign: Callable[[bytes], bytes]) -> str:
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(payload).encode())}"
    return f"{signing_input}.{b64url(sign(signing_input.encode()))}"


def refused(verifier: TokenVerifier, token: str) -> str:
    """The verifier refuses ``token``; the reason it gives."""
    with pytest.raises(InvalidToken) as raised:
        verifier.verify(token)
    return str(raised.value)


# ---------------------------------------------------------------- what it accepts


@pytest.mark.parametrize("alg", ["ES256", "RS256", "EdDSA"])
def test_a_minted_token_verifies_for_each_algorithm(store: Store, alg: str) -> None:
    ring = KeyRing(store, alg=alg)
    token = mint(ring)
    header = jwt.get_unverified_header(token)
    assert (header["alg"], header["typ"], header["kid"]) == (alg, "at+jwt", ring.signing_key().kid)

    verified = TokenVerifier(ring_lookup(ring), ISSUER, audience=RESOURCE).verify(token)
    assert verified["iss"] == ISSUER
    assert verified["sub"] == verified["agent_id"] == "agent-1"
    assert verified["aud"] == RESOURCE
    assert verified["client_id"] == "client-1"
    assert verified["scope"] == "read"
    assert verified["agent_type"] == "background"
    assert verified["exp"] - verified["iat"] == 300


def test_the_minter_lists_several_audiences_and_sorts_the_scope(ring: KeyRing) -> None:
    other = "https://ledger.example.com"
    minted = TokenMinter(ring, ISSUER, lifetime=60).mint(
        subject="agent-1",
        client_id="client-1",
        audience=[RESOURCE, other],
        scope=["write", "read", "write"],
    )
    assert minted.expires_in == 60
    verified = TokenVerifier(ring_lookup(ring), ISSUER, audience=other).verify(minted.token)
    assert verified == minted.claims
    assert verified["aud"] == [RESOURCE, other]
    assert verified["scope"] == "read write"


def test_a_verifier_with_several_audiences_takes_any_one_of_them(ring: KeyRing) -> None:
    other = "https://ledger.example.com"
    verifier = TokenVerifier(ring_lookup(ring), ISSUER, audience=[RESOURCE, other])
    assert verifier.verify(sign(ring, claims(aud=[other])))["sub"] == "agent-1"
    with pytest.raises(WrongAudience, match="any of"):
        verifier.verify(sign(ring, claims(aud="https://elsewhere.example.com")))


def test_refusals_a_resource_server_answers_apart_are_typed(
    ring: KeyRing, verifier: TokenVerifier
) -> None:
    now = int(time.time())
    for token, kind in (
        ("not-a-jwt", MalformedToken),
        (sign(ring, claims(), kid="no-such-kid"), UnknownKey),
        (sign(ring, claims(iat=now - 400, exp=now - 60)), ExpiredToken),
        (sign(ring, claims(aud="https://elsewhere.example.com")), WrongAudience),
    ):
        with pytest.raises(kind):
            verifier.verify(token)


def test_a_verifier_without_an_audience_takes_any_audience(ring: KeyRing) -> None:
    token = sign(ring, claims(aud="https://elsewhere.example.com"))
    assert TokenVerifier(ring_lookup(ring), ISSUER).verify(token)["sub"] == "agent-1"


def test_the_media_type_form_of_typ_is_accepted(ring: KeyRing, verifier: TokenVerifier) -> None:
    token = sign(ring, claims(), typ="application/at+jwt")  # RFC 9068 §2.1
    assert verifier.verify(token)["sub"] == "agent-1"


def test_a_token_expired_within_the_leeway_is_accepted(
    ring: KeyRing, verifier: TokenVerifier
) -> None:
    now = int(time.time())
    assert verifier.verify(sign(ring, claims(iat=now - 300, exp=now - 20)))


def test_a_token_valid_soon_within_the_leeway_is_accepted(
    ring: KeyRing, verifier: TokenVerifier
) -> None:
    now = int(time.time())
    assert verifier.verify(sign(ring, claims(nbf=now + 20)))
    assert verifier.verify(sign(ring, claims(iat=now + 20)))


def test_the_same_token_verifies_again(ring: KeyRing, verifier: TokenVerifier) -> None:
    token = mint(ring)
    assert verifier.verify(token) == verifier.verify(token)


# ---------------------------------------------------------------- the header


def test_alg_none_is_refused(ring: KeyRing, verifier: TokenVerifier) -> None:
    header = {"alg": "none", "typ": "at+jwt", "kid": ring.signing_key().kid}
    assert "alg" in refused(verifier, compact(header, claims(), lambda _: b""))


def test_an_alg_other_than_the_keys_is_refused(ring: KeyRing, verifier: TokenVerifier) -> None:
    """The header says RS256 under the kid of an EC key (signed with an RSA key)."""
    rsa = generate("RS256")
    header = {"typ": "at+jwt", "kid": ring.signing_key().kid}
    token = jwt.encode(claims(), rsa, algorithm="RS256", headers=header)
    assert "does not match" in refused(verifier, token)


def test_hs256_keyed_with_the_public_key_is_refused(ring: KeyRing, verifier: TokenVerifier) -> None:
    key = ring.signing_key()
    pem = key.public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = {"alg": "HS256", "typ": "at+jwt", "kid": key.kid}
    token = compact(header, claims(), lambda data: hmac.new(pem, data, hashlib.sha256).digest())
    assert "alg" in refused(verifier, token)


def test_an_unknown_kid_is_refused(ring: KeyRing, verifier: TokenVerifier) -> None:
    assert "kid" in refused(verifier, sign(ring, claims(), kid="no-such-kid"))


def test_a_missing_kid_is_refused(ring: KeyRing, verifier: TokenVerifier) -> None:
    assert "kid" in refused(verifier, sign(ring, claims(), kid=None))


def test_a_key_that_is_not_the_issuers_is_refused(ring: KeyRing, verifier: TokenVerifier) -> None:
    stranger = generate("ES256")
    header = {"typ": "at+jwt", "kid": ring.signing_key().kid}
    token = jwt.encode(claims(), stranger, algorithm="ES256", headers=header)
    assert "signature" in refused(verifier, token)


@pytest.mark.parametrize("typ", ["JWT", "jwt", "at+JWT+x", None])
def test_a_typ_other_than_at_jwt_is_refused(
    ring: KeyRing, verifier: TokenVerifier, typ: str | None
) -> None:
    assert "typ" in refused(verifier, sign(ring, claims(), typ=typ))


def test_a_crit_header_is_refused(ring: KeyRing, verifier: TokenVerifier) -> None:
    assert "crit" in refused(verifier, sign(ring, claims(), crit=["exp"]))


# ---------------------------------------------------------------- the claims


def test_a_token_expired_beyond_the_leeway_is_refused(
    ring: KeyRing, verifier: TokenVerifier
) -> None:
    now = int(time.time())
    assert "expired" in refused(verifier, sign(ring, claims(iat=now - 400, exp=now - 60)))


def test_a_token_with_nbf_beyond_the_leeway_is_refused(
    ring: KeyRing, verifier: TokenVerifier
) -> None:
    now = int(time.time())
    assert "not valid yet" in refused(verifier, sign(ring, claims(nbf=now + 60)))


def test_a_token_issued_in_the_future_is_refused(ring: KeyRing, verifier: TokenVerifier) -> None:
    now = int(time.time())
    assert "not valid yet" in refused(verifier, sign(ring, claims(iat=now + 60, exp=now + 360)))


def test_a_wrong_issuer_is_refused(ring: KeyRing, verifier: TokenVerifier) -> None:
    token = sign(ring, claims(iss="https://evil.example.com"))
    assert "iss" in refused(verifier, token)


def test_an_issuer_with_a_trailing_slash_is_another_issuer(
    ring: KeyRing, verifier: TokenVerifier
) -> None:
    assert "iss" in refused(verifier, sign(ring, claims(iss=ISSUER + "/")))


@pytest.mark.parametrize("aud", ["https://other.example.com", ["https://other.example.com"], None])
def test_a_wrong_or_missing_audience_is_refused(
    ring: KeyRing, verifier: TokenVerifier, aud: Any
) -> None:
    assert "aud" in refused(verifier, sign(ring, claims(aud=aud)))


@pytest.mark.parametrize("name", ["iss", "sub", "exp", "iat", "jti", "client_id"])
def test_a_missing_required_claim_is_refused(
    ring: KeyRing, verifier: TokenVerifier, name: str
) -> None:
    assert name in refused(verifier, sign(ring, claims(**{name: None})))


@pytest.mark.parametrize("value", ["1900000000", True, [1900000000]])
def test_a_non_numeric_exp_is_refused(ring: KeyRing, verifier: TokenVerifier, value: Any) -> None:
    assert "number" in refused(verifier, sign(ring, claims(exp=value)))


def test_a_payload_that_is_not_an_object_is_refused(ring: KeyRing, verifier: TokenVerifier) -> None:
    key = ring.signing_key()
    token = jwt.api_jws.PyJWS().encode(
        b'["not", "an", "object"]',
        key.private,
        algorithm=key.alg,
        headers={"typ": "at+jwt", "kid": key.kid},
    )
    assert "object" in refused(verifier, token)


# ---------------------------------------------------------------- the encoding


def test_a_tampered_payload_is_refused(ring: KeyRing, verifier: TokenVerifier) -> None:
    header, _, signature = mint(ring).split(".")
    payload = b64url(json.dumps(claims(sub="admin-agent")).encode())
    assert "signature" in refused(verifier, f"{header}.{payload}.{signature}")


def test_a_signature_from_another_token_is_refused(ring: KeyRing, verifier: TokenVerifier) -> None:
    first, second = mint(ring).split("."), mint(ring).split(".")
    assert "signature" in refused(verifier, ".".join([*first[:2], second[2]]))


@pytest.mark.parametrize("token", ["", "abc", "a.b", "a.b.c.d", "a.b.c.d.e"])
def test_a_token_that_is_not_three_parts_is_refused(verifier: TokenVerifier, token: str) -> None:
    refused(verifier, token)


@pytest.mark.parametrize("part", [0, 1, 2])
@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda text: text + "=", id="padded"),
        pytest.param(lambda text: text + "==", id="double-padded"),
        pytest.param(lambda text: text[:5] + "!" + text[5:], id="a stray character"),
        pytest.param(lambda text: text[:5] + "!!!!" + text[5:], id="stray characters"),
        pytest.param(lambda text: text[:5] + " " + text[5:], id="a space"),
        pytest.param(lambda text: text[:5] + "\n" + text[5:], id="a line break"),
        pytest.param(lambda text: text[:5] + "é" + text[5:], id="non-ascii"),
        pytest.param(lambda text: text + "A", id="a dangling sextet"),
        pytest.param(lambda text: "", id="empty"),
    ],
)
def test_a_part_that_is_not_base64url_is_refused(
    ring: KeyRing, verifier: TokenVerifier, part: int, damage: Callable[[str], str]
) -> None:
    parts = mint(ring).split(".")
    parts[part] = damage(parts[part])
    refused(verifier, ".".join(parts))


def test_a_signature_in_the_standard_base64_alphabet_is_refused(
    ring: KeyRing, verifier: TokenVerifier
) -> None:
    """One token, one encoding: re-encoding the signature with + and / instead of - and _
    (RFC 4648 §4 instead of §5) must not make another valid token."""
    for _ in range(100):  # bounded: most ES256 signatures hold a - or a _
        token = mint(ring)
        if "-" in token.split(".")[2] or "_" in token.split(".")[2]:
            break
    header, payload, signature = token.split(".")
    standard = signature.replace("-", "+").replace("_", "/")
    assert standard != signature
    refused(verifier, f"{header}.{payload}.{standard}")


def test_a_signature_with_non_zero_pad_bits_is_refused(
    ring: KeyRing, verifier: TokenVerifier
) -> None:
    """An ES256 signature (64 octets) is 86 characters whose last one carries 4 unused
    bits (RFC 4648 §3.5); setting one makes another string for the same signature."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    header, payload, signature = mint(ring).split(".")
    assert len(signature) == 86
    last = alphabet[alphabet.index(signature[-1]) ^ 1]
    variant = signature[:-1] + last
    assert base64.urlsafe_b64decode(variant + "==") == base64.urlsafe_b64decode(signature + "==")
    refused(verifier, f"{header}.{payload}.{variant}")


def test_a_header_that_is_not_json_is_refused(ring: KeyRing, verifier: TokenVerifier) -> None:
    _, payload, signature = mint(ring).split(".")
    refused(verifier, f"{b64url(b'not json')}.{payload}.{signature}")


# ---------------------------------------------------------------- key rotation


def test_a_rotated_out_key_verifies_while_published_and_not_after(
    store: Store, ring: KeyRing, verifier: TokenVerifier
) -> None:
    token = mint(ring)
    old = ring.signing_key().kid
    ring.rotate()
    assert ring.signing_key().kid != old
    assert verifier.verify(token)["sub"] == "agent-1"  # still published
    assert verifier.verify(mint(ring))["sub"] == "agent-1"  # the new key signs

    # the retirement was longer ago than published_for (an hour): unpublished
    record = next(r for r in store.list(KIND) if r.data["kid"] == old)
    retired = datetime.now(UTC) - ring.published_for - timedelta(seconds=1)
    store.replace(
        KIND,
        record.id,
        {**record.data, "retired": retired.isoformat()},
        unique={"kid": old},
        expected_version=record.version,
        actor="test",
    )
    ring.load()
    assert old not in {key["kid"] for key in ring.jwks()["keys"]}
    assert "kid" in refused(verifier, token)  # the verifier's header cache notices too


def test_a_retired_key_stops_verifying_once_published_for_has_passed(store: Store) -> None:
    ring = KeyRing(store, published_for=0.3, margin=0.0)
    verifier = TokenVerifier(ring_lookup(ring), ISSUER, audience=RESOURCE)
    token = mint(ring)
    ring.rotate()
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        try:
            verifier.verify(token)
        except InvalidToken:
            break
        time.sleep(0.05)
    assert "kid" in refused(verifier, token)
    assert verifier.verify(mint(ring))["sub"] == "agent-1"
