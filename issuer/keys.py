"""The issuer's signing keys: kept in the store, rotated, published as a JWK Set (RFC 7517).

One key signs at a time (the newest). A rotated-out key stays published until every token
it signed has expired, so resource servers that cache the JWKS keep verifying. Key ids
are RFC 7638 thumbprints. ES256 is the default; RS256 and EdDSA (Ed25519) are available.

Every process that serves (a replica, a worker of ``tessera serve --workers``) keeps its
own ring and reads the store again at most once a second when it signs, publishes or
verifies: a rotation made elsewhere (``tessera keys rotate``, another replica) signs and is
published everywhere within that second, not only after a restart. A token whose ``kid``
the ring does not know reads the store at once (at most ten times a second), so a replica
accepts the tokens another one signs with a key made a moment ago.

A retired key stays published for the longest token lifetime plus :data:`PUBLISH_MARGIN`:
a process that read the keys just before the rotation signs with the retired key for up
to :data:`RELOAD_SECONDS` more, and verifiers accept a token :data:`VERIFY_LEEWAY` seconds
past its ``exp``; without the margin such tokens would stop verifying before they expire.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from issuer.store import Store, StoreError

log = logging.getLogger("tessera.keys")

KIND = "SigningKey"
RELOAD_SECONDS = 1.0  # how stale the keys may be: the store is read again at most this often
UNKNOWN_KID_SECONDS = 0.1  # an unknown kid reads the store again at most this often
VERIFY_LEEWAY = 30.0  # seconds past exp a verifier accepts a token (TokenVerifier's leeway)
PUBLISH_MARGIN = RELOAD_SECONDS + VERIFY_LEEWAY + 30.0  # the last term: clocks that differ
ALGORITHMS = ("ES256", "RS256", "EdDSA")

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey


def generate(alg: str) -> PrivateKey:
    """A new private key for a JWS algorithm."""
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if alg == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if alg == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(f"unsupported signing algorithm {alg!r}; use one of {', '.join(ALGORITHMS)}")


def public_jwk(key: PublicKey) -> dict[str, Any]:
    """The public key as a JWK (without kid, use or alg)."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        jwk: dict[str, Any] = ECAlgorithm.to_jwk(key, as_dict=True)
    elif isinstance(key, rsa.RSAPublicKey):
        jwk = RSAAlgorithm.to_jwk(key, as_dict=True)
    else:
        jwk = OKPAlgorithm.to_jwk(key, as_dict=True)
    return jwk


_THUMBPRINT_MEMBERS = {
    "EC": ("crv", "kty", "x", "y"),
    "RSA": ("e", "kty", "n"),
    "OKP": ("crv", "kty", "x"),
}


def thumbprint(jwk: dict[str, Any]) -> str:
    """The RFC 7638 SHA-256 thumbprint of a public JWK, base64url without padding."""
    members = _THUMBPRINT_MEMBERS[jwk["kty"]]
    canonical = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    digest = hashlib.sha256(canonical.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


@dataclass(frozen=True)
class SigningKey:
    """One key of the ring."""

    kid: str
    alg: str
    private: PrivateKey
    jwk: dict[str, Any]  # public, with kid, alg and use
    created: datetime
    retired: datetime | None  # when it stopped signing; None for the current key
    public: PublicKey


class KeyRing:
    """The signing keys in the store, with the current one cached in memory.

    ``published_for`` is the longest lifetime of a token a key may sign; a retired key
    stays in the JWKS that long plus ``margin`` (:data:`PUBLISH_MARGIN`), the whole of
    which is :attr:`published_for`.
    """

    def __init__(
        self,
        store: Store,
        alg: str = "ES256",
        published_for: float = 3600.0,
        margin: float = PUBLISH_MARGIN,
    ) -> None:
        if alg not in ALGORITHMS:
            raise ValueError(f"unsupported signing algorithm {alg!r}; use {', '.join(ALGORITHMS)}")
        self.store = store
        self.alg = alg
        self.published_for = timedelta(seconds=published_for + margin)
        self._lock = threading.Lock()
        self._keys: list[SigningKey] = []
        self._by_kid: dict[str, SigningKey] = {}
        self._loaded = 0.0
        self._unknown_loaded = 0.0  # when an unknown kid last read the store
        self.load()
        if self.current() is None:
            self.rotate()

    def load(self) -> None:
        """Read the keys from the store (another replica may have rotated); a key read
        before is not parsed again unless it was retired since."""
        known = {(key.kid, key.retired): key for key in self._keys}
        keys = []
        for record in self.store.list(KIND):
            retired = record.data.get("retired")
            seen = known.get((record.data["kid"], retired and datetime.fromisoformat(retired)))
            keys.append(seen or _from_record(record.data))
        with self._lock:
            self._keys = keys
            self._by_kid = {key.kid: key for key in keys}
            self._loaded = time.monotonic()

    def all(self) -> list[SigningKey]:
        """Every key in the store, oldest first (retired and expired ones included)."""
        return list(self._keys)

    def current(self) -> SigningKey | None:
        """The key that signs now: the newest one not retired."""
        active = [key for key in self._keys if key.retired is None]
        return active[-1] if active else None

    def _fresh(self) -> None:
        """Read the store again when the keys are older than :data:`RELOAD_SECONDS`."""
        if time.monotonic() - self._loaded > RELOAD_SECONDS:
            self._reload()

    def _reload(self) -> None:
        """Read the store again; while it cannot be read, the keys already read serve."""
        try:
            self.load()
        except StoreError as exc:
            self._loaded = time.monotonic()  # not again at once: the next second tries
            log.warning("cannot read the signing keys; the ones read before serve: %s", exc)

    def signing_key(self) -> SigningKey:
        self._fresh()
        key = self.current()
        if key is None:
            raise RuntimeError("no signing key; rotate() makes one")
        return key

    def key(self, kid: str) -> SigningKey | None:
        """A published key by its id (for verifying tokens this issuer signed), as of the
        store at most a second ago; a kid not known yet reads the store at once (another
        replica may have rotated a moment ago), at most every :data:`UNKNOWN_KID_SECONDS`
        so that junk kids cannot make every request read the store."""
        self._fresh()
        key = self._by_kid.get(kid)
        now = time.monotonic()
        if key is None and now - self._unknown_loaded > UNKNOWN_KID_SECONDS:
            self._unknown_loaded = now
            self._reload()
            key = self._by_kid.get(kid)
        if key is None or not self._published(key, datetime.now(UTC)):
            return None
        return key

    def rotate(self, alg: str | None = None) -> SigningKey:
        """Make a new current key; the previous one stops signing but stays published."""
        alg = alg or self.alg
        private = generate(alg)
        jwk = public_jwk(private.public_key())
        kid = thumbprint(jwk)
        now = datetime.now(UTC)
        pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        for record in self.store.list(KIND):
            if record.data.get("retired") is None:
                data = {**record.data, "retired": now.isoformat()}
                self.store.replace(
                    KIND,
                    record.id,
                    data,
                    unique={"kid": record.data["kid"]},
                    expected_version=record.version,
                    actor="issuer",
                )
        document = {
            "kid": kid,
            "alg": alg,
            "private": pem,
            "jwk": {**jwk, "kid": kid, "alg": alg, "use": "sig"},
            "created": now.isoformat(),
            "retired": None,
        }
        self.store.create(KIND, document, unique={"kid": kid}, actor="issuer")
        self.load()
        return self.signing_key()

    def jwks(self) -> dict[str, Any]:
        """The JWK Set to publish: the current key and retired keys still in use."""
        self._fresh()
        now = datetime.now(UTC)
        return {"keys": [key.jwk for key in self._keys if self._published(key, now)]}

    def published_until(self, key: SigningKey) -> datetime | None:
        """Until when a key is published: None while it signs, else its retirement plus
        :attr:`published_for`."""
        return None if key.retired is None else key.retired + self.published_for

    def _published(self, key: SigningKey, now: datetime) -> bool:
        until = self.published_until(key)
        return until is None or until > now


def every_public_key(store: Store) -> dict[str, Any]:
    """A JWK Set of every key the store ever held, retired ones included (what verifies
    old audit checkpoints when no published JWK Set was kept). Creates nothing."""
    return {"keys": [record.data["jwk"] for record in store.list(KIND)]}


def _from_record(data: dict[str, Any]) -> SigningKey:
    private = serialization.load_pem_private_key(data["private"].encode(), password=None)
    assert isinstance(
        private, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    )
    retired = data.get("retired")
    return SigningKey(
        kid=data["kid"],
        alg=data["alg"],
        private=private,
        jwk=data["jwk"],
        created=datetime.fromisoformat(data["created"]),
        retired=None if retired is None else datetime.fromisoformat(retired),
        public=private.public_key(),
    )


class ScheduledRotation:
    """Makes a new signing key whenever the current one is older than ``every`` seconds,
    looking every ``check`` seconds; ``start``/``stop`` run it in a thread of its own.

    ``tessera serve`` runs it in one process per deployment (it holds the store's
    ``key-rotation`` lease), so replicas never rotate twice; the others see the new key
    through the store."""

    def __init__(self, keys: KeyRing, every: float, check: float | None = None) -> None:
        if every <= 0:
            raise ValueError("a rotation period is a positive number of seconds")
        self.keys = keys
        self.every = timedelta(seconds=every)
        self.check = check if check is not None else min(60.0, every / 10)
        self.rotations = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="key-rotation", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.check + 5)

    def due(self, now: datetime | None = None) -> bool:
        """Whether the current key (as the store has it now) has signed long enough."""
        self.keys.load()
        current = self.keys.current()
        return current is None or current.created + self.every <= (now or datetime.now(UTC))

    def _run(self) -> None:
        while True:
            try:
                if self.due():
                    self.keys.rotate()
                    self.rotations += 1
            except Exception:  # a store that cannot be reached now: try at the next check
                logging.getLogger("tessera.keys").exception("scheduled key rotation failed")
            if self._stop.wait(self.check):
                return
