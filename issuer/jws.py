"""Compact JWS (RFC 7515) checked directly with ``cryptography``: strict base64url, a
signature by a given key with a given algorithm (RFC 7518 §3), nothing else.

Access token verification and client assertions are on hot paths; PyJWT's generality
(three parses per token, a Python loop over every base64url character) costs more than
the signature itself. Callers decide the algorithm from the key, never from the header.
"""

from __future__ import annotations

import base64
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from issuer.errors import IssuerError
from issuer.wire import read_json

ALGORITHMS = ("ES256", "ES384", "RS256", "PS256", "EdDSA")

_ES256 = ec.ECDSA(hashes.SHA256())
_ES384 = ec.ECDSA(hashes.SHA384())
_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)  # RFC 7518 §3.5


class BadSignature(IssuerError):
    """The JWS is malformed, or its signature does not verify with the key."""


def b64decode(text: str) -> bytes:
    """base64url without padding (RFC 7515 §2); ValueError on anything else.

    Only the canonical encoding is accepted (the decoder alone would skip stray
    characters, take ``+`` and ``/``, and ignore pad bits), so one token has one string.
    """
    if not text or "=" in text:
        raise ValueError("empty or padded base64url")
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if base64.urlsafe_b64encode(data).rstrip(b"=") != text.encode():
        raise ValueError("not canonical base64url")
    return data


def parse(token: str) -> tuple[dict[str, Any], dict[str, Any], bytes, bytes]:
    """(header, claims, signing input, signature) of a compact JWS with JSON object
    header and payload; ValueError when it is not one."""
    parts = token.split(".")
    if len(parts) != 3:
        raise ValueError("not a compact JWS (three dot-separated parts)")
    header = read_json(b64decode(parts[0]))  # a NotJson is a ValueError
    claims = read_json(b64decode(parts[1]))
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise ValueError("the header and the payload must be JSON objects")
    return header, claims, f"{parts[0]}.{parts[1]}".encode(), b64decode(parts[2])


def verify_signature(alg: str, key: Any, signing_input: bytes, signature: bytes) -> None:
    """Check ``signature`` over ``signing_input`` with ``key`` and ``alg``, or raise
    :class:`BadSignature` (also when the key does not fit the algorithm)."""
    try:
        if alg in ("ES256", "ES384") and isinstance(key, ec.EllipticCurvePublicKey):
            size = 32 if alg == "ES256" else 48
            if len(signature) != 2 * size:  # RFC 7518 §3.4: R and S, fixed length
                raise BadSignature(f"an {alg} signature has {2 * size} octets")
            r = int.from_bytes(signature[:size], "big")
            s = int.from_bytes(signature[size:], "big")
            curve = _ES256 if alg == "ES256" else _ES384
            key.verify(encode_dss_signature(r, s), signing_input, curve)
        elif alg == "RS256" and isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, signing_input, padding.PKCS1v15(), hashes.SHA256())
        elif alg == "PS256" and isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, signing_input, _PSS, hashes.SHA256())
        elif alg == "EdDSA" and isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, signing_input)
        else:
            raise BadSignature(f"alg {alg!r} does not fit the key")
    except InvalidSignature:
        raise BadSignature("the signature does not verify") from None
