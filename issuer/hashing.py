"""Secrets at rest: users' passwords are kept only as scrypt hashes (RFC 7914).

(Secrets the server generates itself, client secrets and API keys, have 256 bits of
entropy and are kept as SHA-256 hashes; see ``issuer.oauth.clients.hash_secret``.)

A secret or token a request presents is compared with :func:`same_text`."""

from __future__ import annotations

import hashlib
import hmac
import secrets


def hash_password(password: str) -> str:
    """scrypt (RFC 7914) with a random salt, in ``scrypt$n$r$p$salt$hash`` form."""
    salt = secrets.token_bytes(16)
    n, r, p = 2**14, 8, 1
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=32)
    return f"scrypt${n}${r}${p}${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str) -> bool:
    """Whether a password matches a :func:`hash_password` value (constant time)."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
    except ValueError:
        return False
    if scheme != "scrypt":
        return False
    computed = hashlib.scrypt(
        password.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p), dklen=32
    )
    return hmac.compare_digest(computed, bytes.fromhex(digest))


def same_text(given: str, expected: str) -> bool:
    """Whether ``given`` is ``expected``, in time that does not tell where they differ.
    Any text: ``hmac.compare_digest`` raises for strings with a non-ASCII character, which
    a form, a query or a header may carry."""
    return hmac.compare_digest(
        given.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass")
    )
