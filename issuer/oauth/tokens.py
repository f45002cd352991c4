"""JWT access tokens (RFC 9068): minted by the issuer, verified by anyone with its JWKS.

Claims: ``iss``, ``sub``, ``aud`` (the RFC 8707 resource, or the issuer), ``client_id``,
``iat``, ``exp``, ``jti``, ``scope``, and Tessera's agent claims, so a resource server can
tell an agent from a person:

    agent_id    the agent's directory id (for an agent acting alone, also ``sub``)
    agent_type  interactive, background or external

The header carries ``typ: at+jwt`` (RFC 9068 §2.1) and the signing key's ``kid``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import jwt

from issuer import jws
from issuer.errors import IssuerError
from issuer.keys import VERIFY_LEEWAY, KeyRing, PublicKey
from issuer.wire import read_json

TOKEN_TYPE = "at+jwt"

IssuedHook = Callable[[str, dict[str, Any]], None]
"""Told of every token minted: the grant that minted it and its claims (for the audit
trail). It must not block for long: it runs on the token endpoint's path."""


@dataclass(frozen=True)
class Issued:
    """A minted access token and what it says."""

    token: str
    claims: dict[str, Any]
    expires_in: int


class TokenMinter:
    """Signs access tokens with the key ring's current key."""

    def __init__(
        self,
        keys: KeyRing,
        issuer: str,
        lifetime: int = 300,
        on_issue: IssuedHook | None = None,
    ) -> None:
        self.keys = keys
        self.issuer = issuer
        self.lifetime = lifetime
        self.on_issue = on_issue

    def mint(
        self,
        *,
        subject: str,
        client_id: str,
        audience: Sequence[str],
        scope: Iterable[str],
        extra: dict[str, Any] | None = None,
        grant: str = "client_credentials",
    ) -> Issued:
        """A signed token; ``grant`` names what minted it, for :attr:`on_issue`."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": subject,
            "aud": audience[0] if len(audience) == 1 else list(audience),
            "client_id": client_id,
            "iat": now,
            "exp": now + self.lifetime,
            "jti": uuid.uuid4().hex,
            "scope": " ".join(sorted(set(scope))),
            **(extra or {}),
        }
        key = self.keys.signing_key()
        token = jwt.encode(
            claims, key.private, algorithm=key.alg, headers={"typ": TOKEN_TYPE, "kid": key.kid}
        )
        if self.on_issue is not None:
            self.on_issue(grant, claims)
        return Issued(token, claims, self.lifetime)


class InvalidToken(IssuerError):
    """A token that must not be accepted; the message says why (for logs, not clients)."""


class MalformedToken(InvalidToken):
    """Not a compact JWS with a JSON header and payload and numeric times."""


class UnknownKey(InvalidToken):
    """Signed, or said to be, by a key the lookup does not know (perhaps not fetched yet)."""


class ExpiredToken(InvalidToken):
    """Past its ``exp``, leeway included."""


class WrongAudience(InvalidToken):
    """Its ``aud`` names none of the audiences the verifier accepts (RFC 8707)."""


KeyLookup = Callable[[str], tuple[str, PublicKey] | None]
"""Maps a ``kid`` to (algorithm, public key), or None for an unknown key."""


class TokenVerifier:
    """Checks an RFC 9068 access token: the signature, by a known key with that key's own
    algorithm (the header's ``alg`` must name it; never ``none``, never HMAC), ``typ``,
    ``iss``, ``aud`` (when an audience, or several, is given: one must be in the token's),
    ``exp``, ``nbf`` and ``iat``. Each refusal is an :class:`InvalidToken`, of a subclass
    where a resource server answers it differently (malformed, unknown key, expired,
    another audience).

    It is on the hot path of every resource server, so it verifies the JWS (RFC 7515
    §5.2) directly with ``cryptography`` and remembers each distinct protected header
    (one per signing key) instead of parsing it per token.
    """

    def __init__(
        self,
        keys: KeyLookup,
        issuer: str,
        audience: str | Sequence[str] | None = None,
        leeway: float = VERIFY_LEEWAY,
    ) -> None:
        self.keys = keys
        self.issuer = issuer
        self.audience = audience
        self.audiences = (audience,) if isinstance(audience, str) else tuple(audience or ())
        self.audiences_named = (  # for messages: the one audience, or the several
            repr(audience)
            if isinstance(audience, str)
            else "any of " + ", ".join(repr(a) for a in self.audiences)
        )
        self.leeway = leeway
        # protected header (base64url) -> (kid, alg, key), checked against the
        # lookup on every use, so a key that stops being published stops verifying
        self._headers: dict[str, tuple[str, str, PublicKey]] = {}

    def verify(self, token: str) -> dict[str, Any]:
        """The token's claims, or :class:`InvalidToken`."""
        parts = token.split(".")
        if len(parts) != 3:
            raise MalformedToken("not a compact JWS (three dot-separated parts)")
        header_b64, payload_b64, signature_b64 = parts
        alg, key = self._header(header_b64)
        try:
            signature = jws.b64decode(signature_b64)
        except ValueError:
            raise MalformedToken("the signature is not base64url") from None
        try:
            jws.verify_signature(alg, key, f"{header_b64}.{payload_b64}".encode(), signature)
        except jws.BadSignature as exc:
            raise InvalidToken(str(exc)) from None
        try:
            claims = read_json(jws.b64decode(payload_b64))
        except ValueError:
            raise MalformedToken("the payload is not base64url JSON") from None
        if not isinstance(claims, dict):
            raise MalformedToken("the payload is not a JSON object")
        self._check_claims(claims)
        return claims

    def _header(self, header_b64: str) -> tuple[str, PublicKey]:
        known = self._headers.get(header_b64)
        if known is not None:
            known_kid, known_alg, known_key = known
            current = self.keys(known_kid)
            if current is not None and current[1] is known_key:
                return known_alg, known_key
            self._headers.pop(header_b64, None)
        try:
            header = read_json(jws.b64decode(header_b64))
        except ValueError:
            raise MalformedToken("the header is not base64url JSON") from None
        if not isinstance(header, dict):
            raise MalformedToken("the header is not a JSON object")
        typ = str(header.get("typ", "")).lower()
        if typ not in (TOKEN_TYPE, "application/at+jwt"):
            raise InvalidToken(f"typ {header.get('typ')!r} is not at+jwt")
        if "crit" in header:  # RFC 7515 §4.1.11: no extension is understood here
            raise InvalidToken("crit header parameters are not supported")
        kid = header.get("kid")
        found = self.keys(kid) if isinstance(kid, str) else None
        if found is None or not isinstance(kid, str):
            raise UnknownKey(f"unknown kid {kid!r}")
        alg, key = found
        if header.get("alg") != alg:  # no algorithm confusion: the key decides
            raise InvalidToken(f"alg {header.get('alg')!r} does not match the key's {alg}")
        if len(self._headers) < 64:  # a handful of keys; bounded against junk headers
            self._headers[header_b64] = (kid, alg, key)
        return alg, key

    def _check_claims(self, claims: dict[str, Any]) -> None:
        for name in ("iss", "sub", "exp", "iat", "jti", "client_id"):
            if name not in claims:
                raise InvalidToken(f"the {name} claim is missing")
        if claims["iss"] != self.issuer:
            raise InvalidToken(f"iss {claims['iss']!r} is not {self.issuer!r}")
        now = time.time()
        exp, iat, nbf = claims["exp"], claims["iat"], claims.get("nbf", claims["iat"])
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (exp, iat, nbf)):
            raise MalformedToken("exp, iat and nbf must be numbers")
        if exp <= now - self.leeway:
            raise ExpiredToken("the token has expired")
        if nbf > now + self.leeway or iat > now + self.leeway:
            raise InvalidToken("the token is not valid yet")
        if self.audience is not None:
            aud = claims.get("aud")
            audiences = aud if isinstance(aud, list) else [aud]
            if not any(accepted in audiences for accepted in self.audiences):
                raise WrongAudience(f"aud {aud!r} does not include {self.audiences_named}")


def ring_lookup(ring: KeyRing) -> KeyLookup:
    """Key lookup from the issuer's own key ring."""

    def lookup(kid: str) -> tuple[str, PublicKey] | None:
        key = ring.key(kid)
        return None if key is None else (key.alg, key.public)

    return lookup
