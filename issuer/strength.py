"""How strongly a token's holder authenticated: ``amr`` factors and the ``acr`` ladder.

Every access token the issuer mints for an agent says how its client authenticated, as
RFC 8176-style ``amr`` values (sorted) and one ``acr`` level from :data:`LADDER`:

=============  ==============================================================
``amr``        the factor
=============  ==============================================================
``apikey``     an API key traded for the token
``pkjwt``      a private_key_jwt client assertion (RFC 7523)
``secret``     a client secret (RFC 6749 §2.3.1)
``mtls``       a client certificate bound to the client (RFC 8705); a private_key_jwt
               client's only when its key is not the assertion's
``human``      a person approved this grant
=============  ==============================================================

The ``acr`` is the highest level of the ladder whose factors are all present:

- ``urn:tessera:acr:apikey``: the floor, whatever was presented;
- ``urn:tessera:acr:key``: a key the client holds, ``pkjwt`` or ``secret``; a client that
  authenticates with its certificate alone (``mtls``, RFC 8705 §2) proves a private key
  too and reaches this level, not the next;
- ``urn:tessera:acr:key+mtls``: ``pkjwt`` or ``secret``, and ``mtls`` besides (the
  token is then bound to the certificate);
- ``urn:tessera:acr:key+mtls+human``: all of that and ``human``.

A directory record may ask a minimum level of an agent (``minimumAcr``); without one,
high- and critical-risk agents and external agents need ``urn:tessera:acr:key``
(:func:`minimum_for`). The policy language keeps the same ladder as data
(``pdp.lang.runtime.ACR_LADDER``, which may not import the issuer); a test holds the two
equal.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum

from issuer.errors import IssuerError

APIKEY = "apikey"
PKJWT = "pkjwt"
SECRET = "secret"
MTLS = "mtls"
HUMAN = "human"
AMR_VALUES = (APIKEY, PKJWT, SECRET, MTLS, HUMAN)


class AcrLevel(StrEnum):
    """The levels, weakest first (the directory's ``minimumAcr`` takes these values)."""

    apikey = "urn:tessera:acr:apikey"
    key = "urn:tessera:acr:key"
    key_mtls = "urn:tessera:acr:key+mtls"
    key_mtls_human = "urn:tessera:acr:key+mtls+human"


ACR_APIKEY = AcrLevel.apikey.value
ACR_KEY = AcrLevel.key.value
ACR_KEY_MTLS = AcrLevel.key_mtls.value
ACR_KEY_MTLS_HUMAN = AcrLevel.key_mtls_human.value
LADDER = (ACR_APIKEY, ACR_KEY, ACR_KEY_MTLS, ACR_KEY_MTLS_HUMAN)
"""The levels as plain strings, weakest first."""

MAX_ACR_VALUES = 512  # characters of a requested ``acr_values``: the ladder fits many times

_METHOD_FACTORS = {
    "private_key_jwt": PKJWT,
    "client_secret_basic": SECRET,
    "client_secret_post": SECRET,
    "tls_client_auth": MTLS,
    "self_signed_tls_client_auth": MTLS,
}


def amr_for(auth_method: str, certificate_bound: bool = False) -> list[str]:
    """The factors of a client authentication method (sorted), with ``mtls`` when the
    client also presented a certificate bound to it."""
    factors = {_METHOD_FACTORS[auth_method]} if auth_method in _METHOD_FACTORS else set()
    if certificate_bound:
        factors.add(MTLS)
    return sorted(factors)


def acr_for(amr: Iterable[str]) -> str:
    """The highest level of :data:`LADDER` whose factors ``amr`` has."""
    factors = set(amr)
    key = bool(factors & {PKJWT, SECRET})
    if key and MTLS in factors:
        return ACR_KEY_MTLS_HUMAN if HUMAN in factors else ACR_KEY_MTLS
    if key or MTLS in factors:
        return ACR_KEY
    return ACR_APIKEY


def at_least(acr: str, minimum: str) -> bool:
    """Whether ``acr`` is ``minimum`` or above on the ladder; a value off the ladder is
    met only by itself."""
    if acr in LADDER and minimum in LADDER:
        return LADDER.index(acr) >= LADDER.index(minimum)
    return acr == minimum


def minimum_for(risk: str | None, agent_type: str | None, declared: str | None) -> str:
    """The lowest level an agent's tokens may have: the directory's ``minimumAcr`` when it
    names a level, else ``urn:tessera:acr:key`` for high- and critical-risk agents and for
    external agents (no API key alone), else the floor. A declared minimum never lowers
    the default of a high-risk or external agent."""
    default = ACR_KEY if risk in ("high", "critical") or agent_type == "external" else ACR_APIKEY
    if declared in LADDER and not at_least(default, declared):
        return declared
    return default


class BadAcrValues(IssuerError, ValueError):
    """An ``acr_values`` parameter that is too long or names a level not on the ladder."""


def requested(acr_values: str | None) -> tuple[str, ...]:
    """The levels an ``acr_values`` parameter asks for (space-separated, OpenID Connect
    Core §3.1.2.1 and RFC 9470 §4), in order; none when it is absent or empty."""
    if acr_values is None:
        return ()
    if len(acr_values) > MAX_ACR_VALUES:
        raise BadAcrValues(f"acr_values is longer than {MAX_ACR_VALUES} characters")
    values = tuple(acr_values.split())
    unknown = [value for value in values if value not in LADDER]
    if unknown:
        raise BadAcrValues(
            f"acr_values names {unknown[0]!r}, not a level; the levels are {' '.join(LADDER)}"
        )
    return values
