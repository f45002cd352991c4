"""The issuer's signing keys: kept in the store, rotated, published as a JWK Set.

On SQLite and PostgreSQL. Key ids are RFC 7638 thumbprints, checked against the RFCs'
own examples.
"""

from __future__ import annotations

import time
from datetime import timedelta

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from issuer import keys
from issuer.keys import KIND, KeyRing, ScheduledRotation, generate, public_jwk, thumbprint
from issuer.store import Store

PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}

# RFC 7638 §3.1: the RSA key of RFC 7517 Appendix A.1, and its SHA-256 thumbprint
RFC7638_KEY = {
    "kty": "RSA",
    "n": (
        "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_B"
        "JECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_F"
        "DW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI"
        "4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
    ),
    "e": "AQAB",
    "alg": "RS256",
    "kid": "2011-04-29",
}
RFC7638_THUMBPRINT = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"

# RFC 8037 Appendix A.3: the Ed25519 key of A.2, and its SHA-256 thumbprint
RFC8037_KEY = {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}
RFC8037_THUMBPRINT = "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"


def kids(ring: KeyRing) -> list[str]:
    return [key["kid"] for key in ring.jwks()["keys"]]


# ---------------------------------------------------------------- thumbprints (RFC 7638)


def test_the_thumbprint_of_the_rfc_7638_example_key_is_the_rfcs() -> None:
    assert thumbprint(RFC7638_KEY) == RFC7638_THUMBPRINT


def test_the_thumbprint_of_the_rfc_8037_ed25519_example_key_is_the_rfcs() -> None:
    assert thumbprint(RFC8037_KEY) == RFC8037_THUMBPRINT


def test_the_thumbprint_ignores_optional_members_and_their_order() -> None:
    required_only = {"e": RFC7638_KEY["e"], "kty": "RSA", "n": RFC7638_KEY["n"]}
    assert thumbprint(required_only) == RFC7638_THUMBPRINT
    with_extras = {**RFC7638_KEY, "use": "sig", "key_ops": ["verify"]}
    assert thumbprint(dict(reversed(list(with_extras.items())))) == RFC7638_THUMBPRINT


def test_the_thumbprint_of_an_ec_key_covers_crv_kty_x_and_y() -> None:
    jwk = public_jwk(generate("ES256").public_key())
    assert set(jwk) >= {"crv", "kty", "x", "y"}
    other = public_jwk(generate("ES256").public_key())
    assert thumbprint(jwk) != thumbprint({**jwk, "y": other["y"]})
    assert thumbprint(jwk) == thumbprint({**jwk, "kid": "ignored"})


# ---------------------------------------------------------------- generating keys


@pytest.mark.parametrize(
    ("alg", "kind"),
    [
        ("ES256", ec.EllipticCurvePrivateKey),
        ("RS256", rsa.RSAPrivateKey),
        ("EdDSA", ed25519.Ed25519PrivateKey),
    ],
)
def test_each_supported_algorithm_generates_its_kind_of_key(alg: str, kind: type) -> None:
    assert isinstance(generate(alg), kind)


def test_es256_keys_are_on_p_256_and_rs256_keys_have_2048_bits() -> None:
    es256 = generate("ES256")
    rs256 = generate("RS256")
    assert isinstance(es256, ec.EllipticCurvePrivateKey)
    assert isinstance(es256.curve, ec.SECP256R1)
    assert isinstance(rs256, rsa.RSAPrivateKey)
    assert rs256.key_size >= 2048


@pytest.mark.parametrize("alg", ["HS256", "none", "PS256", "ES384", "es256", ""])
def test_an_unsupported_algorithm_is_a_value_error(alg: str) -> None:
    with pytest.raises(ValueError, match="unsupported signing algorithm"):
        generate(alg)


# ---------------------------------------------------------------- the ring in the store


def test_the_first_ring_on_an_empty_store_creates_one_es256_key(store: Store) -> None:
    ring = KeyRing(store)
    records = store.list(KIND)
    assert len(records) == 1
    key = ring.signing_key()
    assert (key.alg, key.retired) == ("ES256", None)
    assert records[0].data["kid"] == key.kid
    assert ring.jwks() == {"keys": [key.jwk]}
    assert (key.jwk["kty"], key.jwk["crv"], key.jwk["alg"], key.jwk["use"]) == (
        "EC",
        "P-256",
        "ES256",
        "sig",
    )
    assert key.kid == key.jwk["kid"] == thumbprint(key.jwk)


def test_a_second_ring_on_the_same_store_reuses_the_key(store: Store) -> None:
    first = KeyRing(store)
    second = KeyRing(store)
    assert second.signing_key().kid == first.signing_key().kid
    assert len(store.list(KIND)) == 1
    assert second.jwks() == first.jwks()


def test_a_key_read_back_from_the_store_signs_what_the_published_key_verifies(
    store: Store,
) -> None:
    KeyRing(store)
    reread = KeyRing(store).signing_key()
    token = jwt.encode({"sub": "x"}, reread.private, algorithm=reread.alg)
    published = jwt.PyJWK(reread.jwk)
    assert jwt.decode(token, published.key, algorithms=[reread.alg]) == {"sub": "x"}


@pytest.mark.parametrize(("alg", "kty"), [("RS256", "RSA"), ("EdDSA", "OKP")])
def test_a_ring_can_sign_with_rs256_or_eddsa(store: Store, alg: str, kty: str) -> None:
    key = KeyRing(store, alg=alg).signing_key()
    assert (key.alg, key.jwk["alg"], key.jwk["kty"]) == (alg, alg, kty)
    assert key.kid == thumbprint(key.jwk)


def test_an_unsupported_algorithm_for_a_ring_is_a_value_error(store: Store) -> None:
    with pytest.raises(ValueError, match="unsupported signing algorithm"):
        KeyRing(store, alg="HS256")
    assert store.list(KIND) == []  # refused before creating anything
    ring = KeyRing(store)
    with pytest.raises(ValueError, match="unsupported signing algorithm"):
        ring.rotate("none")
    assert kids(ring) == [ring.signing_key().kid]


# ---------------------------------------------------------------- rotation


def test_rotate_makes_a_new_current_key_and_keeps_the_old_one_published(store: Store) -> None:
    ring = KeyRing(store)
    old = ring.signing_key()
    new = ring.rotate()
    assert new.kid != old.kid
    assert ring.signing_key() == new
    assert kids(ring) == [old.kid, new.kid]
    published_old = ring.key(old.kid)
    assert published_old is not None and published_old.retired is not None
    assert ring.key(new.kid) == new

    by_kid = {record.data["kid"]: record.data for record in store.list(KIND)}
    assert by_kid[old.kid]["retired"] is not None
    assert by_kid[new.kid]["retired"] is None


def test_rotate_can_change_the_algorithm(store: Store) -> None:
    ring = KeyRing(store)
    new = ring.rotate("RS256")
    assert new.alg == "RS256"
    assert [key["alg"] for key in ring.jwks()["keys"]] == ["ES256", "RS256"]


def test_another_ring_sees_a_rotation_after_load(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(keys, "RELOAD_SECONDS", 3600.0)
    ring = KeyRing(store)
    other = KeyRing(store)
    new = ring.rotate()
    assert other.signing_key().kid != new.kid  # each ring caches its keys
    other.load()
    assert other.signing_key().kid == new.kid
    assert kids(other) == kids(ring)


def test_a_rotation_elsewhere_signs_and_is_published_once_the_keys_are_stale(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process (``tessera keys rotate``, another replica or worker) rotated: this
    ring signs with the new key and publishes it once its keys are older than
    RELOAD_SECONDS, without a restart."""
    ring = KeyRing(store)
    old = ring.signing_key()
    new = KeyRing(store).rotate()
    monkeypatch.setattr(keys, "RELOAD_SECONDS", 0.0)
    assert ring.signing_key().kid == new.kid
    assert kids(ring) == [old.kid, new.kid]
    retired = ring.key(old.kid)
    assert retired is not None and retired.retired is not None
    ring.load()
    again = ring.key(old.kid)
    assert again is not None and again.private is retired.private  # not parsed again


def test_a_retired_key_leaves_the_jwks_once_published_for_has_passed(store: Store) -> None:
    ring = KeyRing(store, published_for=0.0, margin=0.0)
    old = ring.signing_key().kid
    new = ring.rotate().kid
    assert kids(ring) == [new]
    assert ring.key(old) is None
    assert ring.key(new) is not None


def test_a_retired_key_stays_published_past_the_tokens_a_stale_process_signs_with_it(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process that read the keys just before a rotation elsewhere signs with the
    retired key until it reads them again; those tokens expire a token lifetime later and
    verifiers take them VERIFY_LEEWAY past that: the key stays published until then."""
    lifetime = 300
    stale = KeyRing(store, published_for=lifetime)
    monkeypatch.setattr(keys, "RELOAD_SECONDS", 3600.0)  # it does not read them again
    rotating = KeyRing(store, published_for=lifetime)
    old = stale.signing_key()
    rotating.rotate()
    signed_at = time.time()
    assert stale.signing_key().kid == old.kid
    retired = rotating.key(old.kid)
    assert retired is not None and retired.retired is not None
    until = rotating.published_until(retired)
    assert until is not None
    last_accepted = signed_at + lifetime + keys.VERIFY_LEEWAY
    assert until.timestamp() >= last_accepted
    assert rotating.published_until(rotating.signing_key()) is None


def test_a_kid_made_elsewhere_a_moment_ago_is_known_at_once(store: Store) -> None:
    """Another replica rotated and signs with the new key; this ring read the store just
    before: the unknown kid reads it again rather than refusing for up to a second."""
    ring = KeyRing(store)
    new = KeyRing(store).rotate()
    found = ring.key(new.kid)
    assert found is not None and found.kid == new.kid


def test_unknown_kids_read_the_store_at_most_every_unknown_kid_seconds(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(keys, "UNKNOWN_KID_SECONDS", 3600.0)
    ring = KeyRing(store)
    assert ring.key("junk-1") is None  # read the store
    new = KeyRing(store).rotate()
    assert ring.key(new.kid) is None  # not read again so soon
    ring.load()
    assert ring.key(new.kid) is not None


def test_an_unknown_kid_is_no_key(store: Store) -> None:
    assert KeyRing(store).key("no-such-kid") is None


@pytest.mark.parametrize("alg", ["ES256", "RS256", "EdDSA"])
def test_the_jwks_holds_no_private_member(store: Store, alg: str) -> None:
    ring = KeyRing(store, alg=alg)
    ring.rotate()
    for key in ring.jwks()["keys"]:
        assert not PRIVATE_MEMBERS & set(key), key


def test_a_scheduled_rotation_makes_a_new_key_once_the_current_one_is_old(store: Store) -> None:
    ring = KeyRing(store)
    first = ring.signing_key().kid
    rotation = ScheduledRotation(ring, every=3600, check=0.01)
    assert not rotation.due()
    later = ring.signing_key().created + timedelta(seconds=3600)
    assert rotation.due(later)

    quick = ScheduledRotation(ring, every=0.05, check=0.01)
    quick.start()
    try:
        for _ in range(500):  # bounded: the key is 50 ms old after 50 ms
            if quick.rotations:
                break
            time.sleep(0.01)
    finally:
        quick.stop()
    assert quick.rotations >= 1
    assert ring.signing_key().kid != first
    assert first in kids(ring)  # the old key stays published for its tokens


def test_a_rotation_period_must_be_positive(store: Store) -> None:
    with pytest.raises(ValueError, match="positive number of seconds"):
        ScheduledRotation(KeyRing(store), every=0)
