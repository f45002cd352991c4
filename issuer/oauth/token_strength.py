"""The authentication strength an agent's token states, and the rules it must meet.

Every token minted for an agent carries ``amr`` (the factors of the authentication that
got it, sorted) and ``acr`` (the level they reach on :data:`issuer.strength.LADDER`):
client credentials and token exchange take the factors of the client's authentication on
this very request (a token exchange's new token is never stronger than what its actor
presented now, whatever the subject or actor token said); an API key gives ``apikey``.

Two rules refuse a token request whose authentication is too weak:

- the agent's minimum (:func:`issuer.strength.minimum_for`: its directory record's
  ``minimumAcr``, by default ``urn:tessera:acr:key`` for high- and critical-risk and
  external agents);
- the request's ``acr_values`` (OpenID Connect Core §3.1.2.1, RFC 9470 §4): the level
  reached must be one of those asked for, or above one of them.

Either refusal is ``unauthorized_client`` (RFC 6749 §5.2: "the authenticated client is
not authorized to use this authorization grant type"): the client did authenticate, so it
is not ``invalid_client``, and nothing in the grant is invalid, expired or revoked, so it
is not ``invalid_grant``; what it lacks is the authority to get this agent's token with
that authentication. An API key, which is no client authentication but the subject token
of an exchange, is refused ``invalid_request`` instead (RFC 8693 §2.2.2: a subject token
unacceptable by policy). A malformed ``acr_values`` (over
:data:`issuer.strength.MAX_ACR_VALUES` characters, or naming a level not on the ladder)
is ``invalid_request``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from issuer import strength
from issuer.agents import Agent
from issuer.oauth.errors import OAuthError


def strength_claims(
    agent: Agent, amr: Sequence[str], form: Mapping[str, str], refusal: str
) -> dict[str, Any]:
    """The ``amr`` and ``acr`` claims of a token for ``agent`` got with the factors
    ``amr``, once the agent's minimum and the request's ``acr_values`` are met; else the
    OAuth error ``refusal``."""
    try:
        asked = strength.requested(form.get("acr_values"))
    except strength.BadAcrValues as exc:
        raise OAuthError("invalid_request", str(exc)) from None
    acr = strength.acr_for(amr)
    minimum = strength.minimum_for(agent.risk, agent.type, agent.minimum_acr)
    if not strength.at_least(acr, minimum):
        raise OAuthError(
            refusal,
            f"agent {agent.id!r} needs authentication of at least {minimum}; "
            f"{_presented(amr)} reaches {acr}",
        )
    if asked and not any(strength.at_least(acr, level) for level in asked):
        raise OAuthError(
            refusal,
            f"acr_values asks for {' or '.join(asked)}; {_presented(amr)} reaches {acr}",
        )
    return {"amr": sorted(set(amr)), "acr": acr}


def _presented(amr: Sequence[str]) -> str:
    factors = " and ".join(sorted(set(amr))) or "no factor"
    return f"the client's authentication ({factors})"
