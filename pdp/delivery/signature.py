"""The webhook signature: HMAC-SHA256 over the timestamp and the exact body.

``Tessera-Signature: t=<unix seconds>,v1=<hex>`` where ``<hex>`` is the HMAC-SHA256, keyed
with the shared secret, of ``"<t>." + body`` (the body's bytes as sent). A receiver
recomputes it, compares in constant time, and refuses a ``t`` too far from its clock
(replays), the scheme common webhook senders use.
"""

from __future__ import annotations

import hashlib
import hmac

from issuer.hashing import same_text

HEADER = "Tessera-Signature"
TOLERANCE = 300  # seconds a receiver accepts between t and its own clock


def signature(secret: str, body: bytes, t: int) -> str:
    """The header's value for ``body`` sent at ``t`` (unix seconds)."""
    digest = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={digest}"


def verify(secret: str, body: bytes, header: str, now: int, tolerance: int = TOLERANCE) -> bool:
    """Whether ``header`` signs ``body`` with ``secret`` within ``tolerance`` of ``now``."""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        t = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs(now - t) > tolerance:
        return False
    expected = signature(secret, body, t).split("v1=", 1)[1]
    return same_text(parts.get("v1", ""), expected)
