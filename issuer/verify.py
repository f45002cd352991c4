"""The one resource-server verifier: a bearer token (and the client certificate it may be
bound to) → the typed :class:`Caller`, or a typed :class:`Refusal` each door answers in
its own protocol (an RFC 6750 challenge, an Envoy answer, an HTTP status).

What :meth:`Verifier.verify` checks, in this order:

1. the token (RFC 9068, :class:`issuer.oauth.tokens.TokenVerifier`): the signature by a
   known key with that key's own algorithm (never ``none``, never HMAC, never the one the
   header asks for), ``typ``, ``iss``, ``aud`` (always: a resource server names its
   audience), ``exp``, ``nbf`` and ``iat``. A key id not yet known may fetch the keys
   once. A token that is not a compact JWS is asked about at the issuer (RFC 7662), where
   the door can, and refused otherwise;
2. who calls: the agent (``agent_id``) acting alone (``sub`` is the agent) or, with
   ``act`` (RFC 8693 §4.1), for the user ``sub``, the actors nested outermost first with
   the agent as the current one; a door may take only agents acting alone;
3. the certificate binding (RFC 8705 §3): a token with ``cnf`` is accepted only with the
   certificate whose ``x5t#S256`` it names;
4. the scopes the door needs, all of them;
5. revocation (RFC 7009), as the door learns it (the store, a snapshot of it, or
   introspection): the token's own, or that of a token or grant it came from (its
   ``lineage``, :mod:`issuer.oauth.revocation`), then the agent's status in the
   directory. A check that cannot tell refuses or raises; it never lets a token through.

A :class:`Memory` remembers verified tokens so that steady traffic costs a dictionary
lookup rather than a signature check; it never extends a token's life.
"""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from anyio import to_thread
from cachetools import LRUCache

from issuer.agents import Agent
from issuer.keys import VERIFY_LEEWAY
from issuer.oauth import revocation
from issuer.oauth.tokens import (
    ExpiredToken,
    InvalidToken,
    KeyLookup,
    MalformedToken,
    TokenVerifier,
    UnknownKey,
    WrongAudience,
)
from issuer.store import NotFound, Store

CONFIRMATION = "x5t#S256"  # RFC 8705 §3.1: the certificate's SHA-256 thumbprint
TOKENS = 10_000  # tokens a Memory holds by default


class Reason(enum.Enum):
    """Why a token is refused."""

    MISSING = "missing"  # no token at all
    MALFORMED = "malformed"  # not a JWS with JSON header and payload
    INVALID = "invalid"  # signature, key, typ, issuer, not yet valid, claims missing
    EXPIRED = "expired"
    WRONG_AUDIENCE = "wrong_audience"
    NOT_AN_AGENT = "not_an_agent"  # names no agent as this door takes callers
    UNBOUND = "unbound"  # bound to a certificate, presented without one
    CERT_MISMATCH = "cert_mismatch"  # bound to another certificate than presented
    REVOKED = "revoked"  # revoked, or no longer active at the issuer
    UNCHECKED = "unchecked"  # revocation could not be checked: fail closed
    SUSPENDED = "suspended"  # the agent is not active in the directory
    INSUFFICIENT_SCOPE = "insufficient_scope"


@dataclass(frozen=True)
class Refusal:
    """A token refused: why, and a message for logs (or, where a door tells, clients)."""

    reason: Reason
    message: str

    @property
    def error(self) -> str | None:
        """The RFC 6750 §3.1 error code: none when no token was sent."""
        if self.reason is Reason.MISSING:
            return None
        if self.reason is Reason.INSUFFICIENT_SCOPE:
            return "insufficient_scope"
        return "invalid_token"

    @property
    def status(self) -> int:
        """The HTTP status RFC 6750 §3.1 gives the error: 403 for scopes, else 401."""
        return 403 if self.reason is Reason.INSUFFICIENT_SCOPE else 401


MISSING = Refusal(Reason.MISSING, "no access token")


@dataclass(frozen=True)
class Caller:
    """Who a verified token says is calling: the agent, the user it acts for, the actors
    (outermost first, the agent first of all), its scopes and the certificate it is
    bound to; ``claims`` for what a door needs besides (``acr``, ``client_id``)."""

    agent: str
    user: str | None
    chain: tuple[str, ...]
    scopes: frozenset[str]
    cnf: str | None
    claims: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def key(self) -> str:
        """The agent and the user as one string: what sessions belong to."""
        return f"{self.agent}|{self.user or ''}"


def caller(claims: Mapping[str, Any], alone: bool = False) -> Caller | Refusal:
    """The caller a token's claims name, or why they name none; ``alone``: only an agent
    acting alone (no ``act``) is taken."""
    agent = claims.get("agent_id")
    if not isinstance(agent, str) or not agent:
        if "may_act" in claims:  # its holder may be any client the user signed in to
            why = "a user's token must be exchanged by its agent first (RFC 8693)"
        else:
            why = "the token names no agent (no agent_id claim)"
        return Refusal(Reason.NOT_AN_AGENT, why)
    bound = bound_to(claims)
    if isinstance(bound, Refusal):
        return bound
    scopes = frozenset(str(claims.get("scope", "")).split())
    act = claims.get("act")
    if act is None:
        if claims.get("sub") != agent:
            return Refusal(Reason.NOT_AN_AGENT, "sub and agent_id differ in a token without act")
        return Caller(agent, None, (), scopes, bound, claims)
    if alone:
        why = "the token acts for a user; only agents acting alone are accepted here"
        return Refusal(Reason.NOT_AN_AGENT, why)
    chain = []
    while isinstance(act, dict) and isinstance(act.get("sub"), str):
        chain.append(act["sub"])
        act = act.get("act")
    if act is not None or not chain or chain[0] != agent:
        why = "the act claim does not name the agent as the current actor"
        return Refusal(Reason.NOT_AN_AGENT, why)
    return Caller(agent, str(claims.get("sub", "")), tuple(chain), scopes, bound, claims)


def bound_to(claims: Mapping[str, Any]) -> str | Refusal | None:
    """The certificate thumbprint a token is bound to (RFC 8705 §3.1), None when it is
    not bound, or a refusal for a confirmation this verifier cannot check."""
    if "cnf" not in claims:
        return None
    thumbprint = claims["cnf"].get(CONFIRMATION) if isinstance(claims["cnf"], dict) else None
    if not isinstance(thumbprint, str):
        why = "the token is bound by a confirmation that cannot be checked here"
        return Refusal(Reason.INVALID, why)
    return thumbprint


def binding(bound: str | None, presented: str | None) -> Refusal | None:
    """RFC 8705 §3: a bound token only with its certificate."""
    if bound is None or bound == presented:
        return None
    if presented is None:
        why = "a certificate-bound token is not accepted without its certificate"
        return Refusal(Reason.UNBOUND, why)
    return Refusal(Reason.CERT_MISMATCH, "the token is bound to another certificate")


Introspection = Callable[[str], Awaitable[Mapping[str, Any] | Refusal]]
"""RFC 7662: an opaque token's claims when the issuer says it is active, else why not."""

Revocation = Callable[[str, Caller], Awaitable[Refusal | None]]
"""Whether a verified token was revoked (given the token itself, for introspection):
None, or the refusal, :data:`Reason.UNCHECKED` when it cannot tell."""

AgentStatus = Callable[[str], Awaitable[str | None]]
"""An agent's status in the directory (``active``, ``suspended``…), None when absent."""

KeyRefresh = Callable[[], Awaitable[None]]
"""Fetches the issuer's keys again, for a key id not yet known (rate-limited by it)."""


class _Known(NamedTuple):
    caller: Caller
    until: float  # used until then (exp, or verified + keep), then verified again
    checked: float  # when revocation and agent status were last asked


class Memory:
    """Verified tokens, so a token is verified once and then looked up.

    At most ``size`` tokens (the least recently used go first). A token is used until its
    ``exp`` and at most ``keep`` seconds after it was verified, then verified again (so a
    token is never accepted longer than the verifier would accept it); its revocation and
    its agent's status are asked again once ``recheck`` seconds have passed since they
    last were (0: every time; ``math.inf``: only when it is verified again). Verifiers
    may share one: each remembers under its own key.
    """

    def __init__(
        self,
        size: int = TOKENS,
        keep: float | None = None,
        recheck: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.keep = math.inf if keep is None else keep
        self.recheck = recheck
        self.clock = clock
        self._known: LRUCache[tuple[object, str], _Known] = LRUCache(size)

    def recall(self, owner: object, token: str, now: float) -> _Known | None:
        known = self._known.get((owner, token))
        if known is not None and now >= known.until:
            self._known.pop((owner, token), None)
            return None
        return known

    def remember(self, owner: object, token: str, known: _Known) -> None:
        self._known[(owner, token)] = known

    def forget(self, owner: object, token: str) -> None:
        self._known.pop((owner, token), None)

    def __len__(self) -> int:
        return len(self._known)


class Verifier:
    """Bearer tokens of one issuer for one resource server, checked as the module says;
    what differs from one door to another is configured here.

    ``audience``: the audience (or audiences, one of which) a token must name;
    ``refresh_keys``: fetch the keys again for an unknown key id; ``introspect``: what
    an opaque token is asked about (RFC 7662; its answer stands for revocation and the
    agent's status); ``revoked`` and ``agent_status``: asked after the checks of the token
    itself, ``revoked`` first; ``alone``: only agents acting alone; ``scopes``: needed,
    all of them; ``memory``: where verified tokens are remembered.
    """

    def __init__(
        self,
        keys: KeyLookup,
        issuer: str,
        audience: str | Sequence[str],
        *,
        leeway: float = VERIFY_LEEWAY,
        refresh_keys: KeyRefresh | None = None,
        introspect: Introspection | None = None,
        revoked: Revocation | None = None,
        agent_status: AgentStatus | None = None,
        alone: bool = False,
        scopes: Collection[str] = (),
        memory: Memory | None = None,
    ) -> None:
        if not issuer:
            raise ValueError("a verifier needs the issuer whose tokens it accepts")
        named = [audience] if isinstance(audience, str) else list(audience)
        if not named or not all(named):
            raise ValueError("a verifier needs the audience its tokens must name (RFC 8707)")
        self.tokens = TokenVerifier(keys, issuer, audience, leeway)
        self.issuer = issuer
        self.refresh_keys = refresh_keys
        self.introspect = introspect
        self.revoked = revoked
        self.agent_status = agent_status
        self.alone = alone
        self.scopes = tuple(scopes)
        self.memory = memory

    async def verify(
        self, token: str | None, certificate_thumbprint: str | None = None, *, fresh: bool = False
    ) -> Caller | Refusal:
        """The caller, or why not. ``certificate_thumbprint``: the ``x5t#S256`` of the
        client certificate the request came with (RFC 8705), if any; ``fresh``: the token
        was issued for this very request (an API key traded for it), so it is neither
        remembered nor asked about again."""
        if not token:
            return MISSING
        if self.introspect is not None and token.count(".") != 2:
            return await self._introspected(token, certificate_thumbprint)
        memory = None if fresh else self.memory
        now = time.time() if memory is None else memory.clock()
        known = None if memory is None else memory.recall(self, token, now)
        new = known is None
        if known is None:
            verified = await self._verified(token, now)
            if isinstance(verified, Refusal):
                return verified
            known = verified
        elif (
            memory is not None and known.caller.cnf is None and now - known.checked < memory.recheck
        ):
            return known.caller  # the hot path: remembered, unbound, checked lately
        refused = binding(known.caller.cnf, certificate_thumbprint)
        if refused is not None:
            return refused
        recheck = 0.0 if memory is None else memory.recheck
        if fresh or now - known.checked < recheck:
            return known.caller
        refused = await self._still_valid(token, known.caller)
        if refused is not None:
            if memory is not None:
                memory.forget(self, token)
            return refused
        if memory is not None and known.until > now and (new or recheck > 0):
            memory.remember(self, token, known._replace(checked=now))
        return known.caller

    async def _verified(self, token: str, now: float) -> _Known | Refusal:
        """A JWT's caller, and until when it may be remembered."""
        claims = await self._claims(token)
        if isinstance(claims, Refusal):
            return claims
        found = self._accepted(claims)
        if isinstance(found, Refusal):
            return found
        keep = math.inf if self.memory is None else self.memory.keep
        return _Known(found, min(float(claims["exp"]), now + keep), -math.inf)

    async def _claims(self, token: str) -> dict[str, Any] | Refusal:
        """The JWT's claims; an unknown key id fetches the keys once, where that helps."""
        try:
            return self.tokens.verify(token)
        except UnknownKey as exc:
            if self.refresh_keys is None:
                return _refusal(exc)
        except InvalidToken as exc:
            return _refusal(exc)
        await self.refresh_keys()
        try:
            return self.tokens.verify(token)
        except InvalidToken as exc:
            return _refusal(exc)

    def _accepted(self, claims: Mapping[str, Any]) -> Caller | Refusal:
        """The caller the claims name, with the scopes this door needs."""
        found = caller(claims, self.alone)
        if isinstance(found, Refusal) or not self.scopes:
            return found
        missing = [scope for scope in self.scopes if scope not in found.scopes]
        if missing:
            return Refusal(Reason.INSUFFICIENT_SCOPE, f"the token lacks {' '.join(missing)}")
        return found

    async def _introspected(
        self, token: str, certificate_thumbprint: str | None
    ) -> Caller | Refusal:
        """An opaque token, as the issuer describes it (RFC 7662 §2.2); never remembered."""
        assert self.introspect is not None
        claims = await self.introspect(token)
        if isinstance(claims, Refusal):
            return claims
        if claims.get("iss") != self.issuer:
            return Refusal(Reason.INVALID, "the token is from another issuer")
        aud = claims.get("aud")
        audiences = aud if isinstance(aud, list) else [aud]
        if not any(accepted in audiences for accepted in self.tokens.audiences):
            why = f"the token's audience does not include {self.tokens.audiences_named}"
            return Refusal(Reason.WRONG_AUDIENCE, why)
        found = self._accepted(claims)
        if isinstance(found, Refusal):
            return found
        return binding(found.cnf, certificate_thumbprint) or found

    async def _still_valid(self, token: str, who: Caller) -> Refusal | None:
        """Revocation, then the agent's status."""
        if self.revoked is not None:
            refused = await self.revoked(token, who)
            if refused is not None:
                return refused
        if self.agent_status is not None:
            status = await self.agent_status(who.agent)
            if status != "active":
                state = status or "not in the directory"
                return Refusal(Reason.SUSPENDED, f"the agent {who.agent!r} is {state}")
        return None


def _refusal(exc: InvalidToken) -> Refusal:
    if isinstance(exc, MalformedToken):
        return Refusal(Reason.MALFORMED, str(exc))
    if isinstance(exc, ExpiredToken):
        return Refusal(Reason.EXPIRED, str(exc))
    if isinstance(exc, WrongAudience):
        return Refusal(Reason.WRONG_AUDIENCE, str(exc))
    return Refusal(Reason.INVALID, str(exc))


def revocations(store: Store) -> Revocation:
    """Revocations (RFC 7009) as the store records them, read in a worker thread: the
    token's own, or one of the tokens or the grant it came from (its lineage)."""

    async def revoked(token: str, who: Caller) -> Refusal | None:
        if await to_thread.run_sync(revocation.revoked, store, who.claims):
            return Refusal(Reason.REVOKED, "the token was revoked")
        return None

    return revoked


def agent_statuses(store: Store) -> AgentStatus:
    """Agents' status as the store's directory has it, read in a worker thread."""

    def read(agent: str) -> str | None:
        try:
            data = store.get("Agent", agent).data
        except NotFound:
            return None
        status = Agent.from_scim(agent, data).status
        return status if status else "of unknown status"

    async def status(agent: str) -> str | None:
        return await to_thread.run_sync(read, agent)

    return status
