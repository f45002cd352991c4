"""Who may ask a decision door, and which agent an agent token names.

Every door decides for the agent its question names, and records the decision: a caller
that may ask may ask about any agent and fill the audit trail. So a door that other
machines can reach answers only policy enforcement points (PEPs) that prove who they are
(docs/deploy.md, "Authenticated callers"), by one of:

- **mutual TLS**: a client certificate from the CA ``tls_client_ca`` names. On the gRPC
  port the TLS handshake refuses a client without one before any call is read; AuthZEN
  takes a certificate its TLS layer checked against the same CA;
- **a bearer token** (RFC 6750 §2.1: ``authorization: Bearer …``, gRPC metadata or HTTP
  header) of Tessera's issuer, for the PEP's own agent acting alone, with the scope
  ``tessera:decide``, checked by the one resource-server verifier
  (:class:`issuer.verify.Verifier`): signature, issuer, audience, expiry, revocation and
  the PEP agent's status.

A refusal is a :class:`CallerRefused`, which each door maps to its protocol once: gRPC
UNAUTHENTICATED, or PERMISSION_DENIED for a valid token without the scope (RFC 6750 §3.1's
``insufficient_scope``); HTTP 401 with a challenge, or 403.

An **agent token** is the agent's own access token, sent in a question instead of the
agent's id. :class:`AgentTokens` verifies it and gives who it names: the agent
(``agent_id``) and, for a token from token exchange (RFC 8693 §4.1), the user it acts for
(``sub``) and the actors (``act``, outermost first), read by :func:`issuer.verify.caller`
as every resource server reads them; :func:`named_by` then holds what the question says
besides to the token.

Both remember verified tokens (:class:`issuer.verify.Memory`), so a steady caller costs a
dictionary lookup per call; revocations and agents' status come from the directory's
in-memory snapshot (:func:`snapshot_revocations`, :func:`snapshot_statuses`), looked at
again at most every :data:`RECHECK` seconds per token.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from issuer.keys import KeyRing
from issuer.oauth.revocation import revoked_by
from issuer.oauth.tokens import ring_lookup
from issuer.verify import AgentStatus, Caller, Memory, Reason, Refusal, Revocation, Verifier
from pdp.directory import Directory
from pdp.errors import PdpError
from pdp.model import RequestError

log = logging.getLogger("tessera.callers")

DECIDE_SCOPE = "tessera:decide"
AUTHORIZATION = "authorization"  # the gRPC metadata key (lower case, as HTTP/2 sends it)
TOKENS = 10_000  # verified tokens each verifier remembers
RECHECK = 1.0  # seconds a remembered token goes before its revocation is looked at again

# What a refusal tells the caller for the reasons whose verifier message carries detail
# that belongs in the log (which check of the signature or the claims failed).
_TOLD = {
    Reason.MALFORMED: "it is not a JWT",
    Reason.INVALID: "its signature, issuer or claims do not verify",
    Reason.EXPIRED: "it has expired",
    Reason.WRONG_AUDIENCE: "its audience is not this decision service",
    Reason.UNCHECKED: "its revocation could not be checked",
}


class CallerRefused(PdpError):
    """A question refused before it is decided: its caller did not prove it is a PEP, or
    the agent token it carries does not verify. ``message`` says which, for the caller."""

    def __init__(self, refusal: Refusal, message: str) -> None:
        super().__init__(message)
        self.refusal = refusal
        self.message = message

    @property
    def forbidden(self) -> bool:
        """A valid token without the scope (RFC 6750 §3.1: 403), not a missing or bad one."""
        return self.refusal.reason is Reason.INSUFFICIENT_SCOPE


def told(refusal: Refusal) -> str:
    """Why a token was refused, as a caller is told it."""
    return _TOLD.get(refusal.reason, refusal.message)


def bearer(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    """The token of a call's ``authorization: Bearer …`` metadata (RFC 6750 §2.1), or None."""
    for name, value in metadata or ():
        if name == AUTHORIZATION and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            return token.strip() or None if scheme.lower() == "bearer" else None
    return None


class Peps:
    """Bearer tokens of PEPs, on a door whose transport did not authenticate its caller."""

    def __init__(self, verifier: Verifier) -> None:
        self.verifier = verifier

    async def admit(self, token: str | None) -> Caller:
        """The PEP's agent, or :class:`CallerRefused` saying what is missing or wrong."""
        found = await self.verifier.verify(token)
        if isinstance(found, Caller):
            return found
        if found.reason is Reason.MISSING:
            message = (
                f"a bearer token with the scope {DECIDE_SCOPE} is required "
                f"({AUTHORIZATION}: Bearer …)"
            )
        elif found.reason is Reason.INSUFFICIENT_SCOPE:
            message = f"the bearer token lacks the scope {DECIDE_SCOPE}"
        else:
            log.info("caller refused: %s", found.message)
            message = f"the bearer token is not valid: {told(found)}"
        raise CallerRefused(found, message)


class AgentTokens:
    """Agents' own access tokens in questions; ``verifier`` None where no issuer's tokens
    can be verified (no store, or no issuer URL), and every agent token is refused."""

    def __init__(self, verifier: Verifier | None) -> None:
        self.verifier = verifier

    async def caller(self, token: str) -> Caller:
        """Who the token names, or :class:`CallerRefused` (never "forbidden": no scope is
        asked of an agent token; the policies decide what its agent may do)."""
        if self.verifier is None:
            why = (
                "this decision service verifies no agent tokens: it knows no issuer "
                "(that needs a store, and the HTTP port or issuer)"
            )
            raise CallerRefused(Refusal(Reason.UNCHECKED, why), why)
        found = await self.verifier.verify(token)
        if isinstance(found, Caller):
            return found
        log.info("agent token refused: %s", found.message)
        raise CallerRefused(found, f"the agent token is not valid: {told(found)}")


NO_AGENT_TOKENS = AgentTokens(None)


@dataclass(frozen=True)
class Callers:
    """What a door asks of its callers: ``peps`` None where the transport authenticated
    them already (mutual TLS) or nothing is asked (loopback); ``agent_tokens``, how agent
    tokens in questions are verified."""

    peps: Peps | None = None
    agent_tokens: AgentTokens = NO_AGENT_TOKENS


OPEN = Callers()

Fields = tuple[str, str, str]
GRPC_FIELDS: Fields = ("agent.id", "user.id", "delegation.chain")


def named_by(
    who: Caller,
    agent: str,
    user: str | None,
    chain: Sequence[str] | None,
    fields: Fields = GRPC_FIELDS,
) -> tuple[str, str | None, tuple[str, ...] | None]:
    """(agent, user, delegation chain) that a question with an agent token is about: the
    token's. What the question names besides ("" or None: nothing) must agree with it,
    else a :class:`RequestError` naming the field (``fields``: the agent's, the user's and
    the chain's names in the door's protocol)."""
    agent_field, user_field, chain_field = fields
    if agent and agent != who.agent:
        raise RequestError(
            f"{agent_field}: {agent!r} is not the agent the agent token names ({who.agent!r})"
        )
    if user is not None and user != who.user:
        if who.user is None:
            raise RequestError(f"{user_field}: {user!r}, but the agent token's agent acts alone")
        raise RequestError(
            f"{user_field}: {user!r} is not the user the agent token acts for ({who.user!r})"
        )
    actors = who.chain if who.user is not None else None
    if chain is not None and tuple(chain) != (actors or ()):
        raise RequestError(
            f"{chain_field}: {list(chain)!r} is not the agent token's actors "
            f"({list(actors or ())!r})"
        )
    return who.agent, who.user, actors


# ------------------------------------------------------------------ building the verifiers


def snapshot_revocations(directory: Directory) -> Revocation:
    """Revocations (RFC 7009) as the directory's snapshot holds them: the token's own, or
    one of the tokens or the grant it came from (its lineage); a snapshot that may miss
    changes cannot tell, and refuses (fail closed)."""

    async def revoked(token: str, who: Caller) -> Refusal | None:
        stale = directory.stale()
        if stale is not None:
            return Refusal(Reason.UNCHECKED, stale)
        if revoked_by(directory.revoked, who.claims):
            return Refusal(Reason.REVOKED, "the token was revoked")
        return None

    return revoked


def snapshot_statuses(directory: Directory) -> AgentStatus:
    """Agents' status as the directory's snapshot holds it."""

    async def status(agent: str) -> str | None:
        record = directory.agent_record(agent)
        if record is None:
            return None
        return record.status or "of unknown status"

    return status


def callers_of(
    keys: KeyRing,
    issuer: str,
    directory: Directory,
    *,
    peps: bool,
    agent_audiences: Sequence[str] = (),
) -> Callers:
    """The verifiers of tokens of ``issuer`` (signed by ``keys``): with ``peps``, PEPs'
    tokens (an agent acting alone, audience the issuer, scope ``tessera:decide``, its
    agent active); always, agent tokens (audience one of ``agent_audiences``, default the
    issuer). Both refuse revoked tokens."""
    issuer = issuer.rstrip("/")
    lookup = ring_lookup(keys)
    revoked = snapshot_revocations(directory)
    pep_verifier = None
    if peps:
        pep_verifier = Verifier(
            lookup,
            issuer,
            issuer,
            revoked=revoked,
            agent_status=snapshot_statuses(directory),
            alone=True,
            scopes=(DECIDE_SCOPE,),
            memory=Memory(TOKENS, recheck=RECHECK),
        )
    agents = Verifier(
        lookup,
        issuer,
        list(agent_audiences) or issuer,
        revoked=revoked,
        memory=Memory(TOKENS, recheck=RECHECK),
    )
    return Callers(None if pep_verifier is None else Peps(pep_verifier), AgentTokens(agents))
