"""OpenID Client-Initiated Backchannel Authentication (CIBA Core 1.0): poll and ping modes.

An agent's client asks to act for a person at the backchannel authentication endpoint
(§7.1), naming the person by ``login_hint`` (a directory userName or e-mail address),
with a ``binding_message`` and the RFC 9396 ``authorization_details`` the person is to
approve. The answer is an ``auth_req_id`` (§7.3). The person approves or denies on
Tessera's approval page (:mod:`issuer.oauth.approvals`); the client redeems the id at the
token endpoint with the grant :data:`~issuer.oauth.clients.CIBA` (§10.1), polling (poll
mode) or when Tessera pings its notification endpoint (ping mode, §10.2,
:mod:`issuer.oauth.ping`). Push mode and signed requests (§7.1.1) are not offered.

Requests live in the store's backchannel table, so replicas agree; the ``auth_req_id``
is kept only as a SHA-256 hash. A ping-mode request also keeps what the ping must send
(the id and the client's ``client_notification_token``) until the ping is sent or the
request ends: whichever replica takes the answer calls the client back, and neither value
gets anything from Tessera without the client's own credentials.

The token carries ``sub`` = the person, ``act`` = the agent (as token exchange does,
RFC 8693 §4.1), the approved ``authorization_details``, ``amr`` = the client's own
factors and ``human``, ``acr`` from the ladder, and ``auth_time`` = the approval.

Such a token lets the agent act for the person, as a token exchange's does, so the PDP
is asked the same question (action ``token.exchange``, :class:`~issuer.oauth.grants.Exchange`)
twice: before the person is bothered (a refusal is ``access_denied``) and again at
redemption, since policies and the directory may have changed meanwhile. The agent's
minimum strength and the request's ``acr_values`` (§7.1, kept with the request) are
checked likewise at both ends. Every check at redemption comes before the request is
marked redeemed: a refusal changes nothing, and the approval stays for a later poll
until it expires.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Any

from issuer import strength
from issuer.agents import User
from issuer.oauth import authorization_details
from issuer.oauth.clients import CIBA, DELIVERY_MODES, PING, Client
from issuer.oauth.errors import OAuthError
from issuer.oauth.grants import (
    Exchange,
    Grants,
    agent_claims,
    narrowed,
    resources,
    token_response,
)
from issuer.oauth.plain_text import REFUSED, is_plain
from issuer.oauth.token_strength import strength_claims
from issuer.store import BackchannelRecord, NotFound, Store

PENDING, APPROVED, DENIED, REDEEMED = "pending", "approved", "denied", "redeemed"

MAX_BINDING_MESSAGE = 100  # characters
MAX_LOGIN_HINT = 256  # characters
MAX_NOTIFICATION_TOKEN = 1_024  # characters (§7.1)
DEFAULT_EXPIRY = 300  # seconds a request waits for its answer
MIN_EXPIRY, MAX_EXPIRY = 10, 1_800  # the bounds of requested_expiry
INTERVAL = 5  # seconds between polls (§7.3); slow_down adds SLOW_DOWN (§11)
SLOW_DOWN = 5
MAX_PENDING_PER_CLIENT = 100
MAX_PENDING = 10_000
KEEP_EXPIRED = 3_600  # seconds an expired request still answers expired_token
_EXPIRY = re.compile(r"^[0-9]{1,9}$")  # ASCII digits only: no "²", no 5,000-digit number
_BEARER = re.compile(r"^[A-Za-z0-9._~+/-]+=*$")  # RFC 6750 §2.1 b64token

HumanHook = Callable[[dict[str, Any]], None]
"""Told of each request, approval and denial (for the audit trail's human actions)."""

Clock = Callable[[], float]


@dataclass(frozen=True)
class BackchannelRequest:
    """One request, as the store keeps it (its ``auth_req_id`` only as ``id_hash``)."""

    id_hash: str
    client_id: str
    client_name: str | None
    agent_id: str
    agent_name: str
    owner: str | None
    purpose: str | None
    risk: str | None
    user_id: str
    scopes: tuple[str, ...]
    resources: tuple[str, ...]
    details: tuple[dict[str, Any], ...]
    binding_message: str | None
    mode: str
    created_at: int
    expires_at: int
    interval: int
    status: str = PENDING
    last_poll: float | None = None
    answered_at: int | None = None  # auth_time
    answered_by: str | None = None
    ping: tuple[str, str, str] | None = None  # endpoint, token, auth_req_id: until sent
    acr_values: tuple[str, ...] = ()  # §7.1: the levels the token must reach
    version: int = 1

    @classmethod
    def from_record(cls, record: BackchannelRecord) -> BackchannelRequest:
        data = dict(record.data)
        for name in ("scopes", "resources", "details", "acr_values"):
            data[name] = tuple(data.get(name, ()))
        data["ping"] = tuple(data["ping"]) if data.get("ping") else None
        return cls(**data, version=record.version)

    def record(self) -> BackchannelRecord:
        data = asdict(self)
        del data["version"]
        return BackchannelRecord(
            self.id_hash, self.client_id, self.user_id, self.expires_at, self.version, data
        )

    def plain_details(self) -> list[str]:
        """The authorization details in plain words, one line each."""
        return [authorization_details.describe(d) for d in self.details]


@dataclass(frozen=True)
class Answer:
    """What became of a person's approval or denial."""

    outcome: str  # "answered", "unknown", "not_yours", "answered_before" or "expired"
    request: BackchannelRequest | None = None  # before the answer (with its ping)


def id_hash(auth_req_id: str) -> str:
    """The stored form of an ``auth_req_id``: 256 random bits need no slow hash."""
    return hashlib.sha256(auth_req_id.encode()).hexdigest()


class Backchannel:
    """Backchannel requests: made, answered and redeemed, over the store."""

    def __init__(
        self,
        store: Store,
        grants: Grants,
        clock: Clock = time.time,
        on_human: HumanHook | None = None,
    ) -> None:
        self.store = store
        self.grants = grants
        self.clock = clock
        self.on_human = on_human

    # -- §7: the backchannel authentication endpoint

    def start(
        self, client: Client, form: dict[str, str], amr: Sequence[str] = ()
    ) -> dict[str, Any]:
        """Check an authentication request (§7.2) and store it; the acknowledgement
        (§7.3). ``amr``: the factors of the client's authentication on this request.
        Errors are §13's."""
        mode = _delivery_mode(client)
        agent = self.grants.active_agent(client.agent_id or "")
        # as at redemption, with the approval to come: refused now, before a person is asked
        strength_claims(agent, [*amr, strength.HUMAN], form, "unauthorized_client")
        user_id = self._user(_login_hint(form))
        scopes = tuple(narrowed(_scope(form), client.scopes))
        audience = tuple(resources(form))
        self._allowed(agent.id, user_id, audience, scopes)
        auth_req_id = secrets.token_urlsafe(32)
        now = int(self.clock())
        request = BackchannelRequest(
            id_hash=id_hash(auth_req_id),
            client_id=client.client_id,
            client_name=client.name,
            agent_id=agent.id,
            agent_name=agent.display_name or agent.name,
            owner=agent.owner,
            purpose=agent.purpose,
            risk=agent.risk,
            user_id=user_id,
            scopes=scopes,
            resources=audience,
            details=tuple(authorization_details.parse(form.get("authorization_details"))),
            binding_message=_binding_message(form.get("binding_message")),
            mode=mode,
            created_at=now,
            expires_at=now + _expiry(form.get("requested_expiry")),
            interval=INTERVAL,
            ping=_ping(client, form, auth_req_id),
            acr_values=strength.requested(form.get("acr_values")),  # valid: checked above
        )
        added = self.store.add_backchannel(
            request.record(),
            now=now,
            per_client=MAX_PENDING_PER_CLIENT,
            total=MAX_PENDING,
            keep=KEEP_EXPIRED,
        )
        if not added:
            raise OAuthError(
                "invalid_request",
                f"too many pending requests (at most {MAX_PENDING_PER_CLIENT} per client, "
                f"{MAX_PENDING:,} in all): wait for answers or expiry",
            )
        self._tell("backchannel.request", request, actor=agent.id)
        return {
            "auth_req_id": auth_req_id,
            "expires_in": request.expires_at - now,
            "interval": request.interval,
        }

    def _user(self, hint: str) -> str:
        """The active user a ``login_hint`` names: a userName, else the one user with that
        e-mail address; ``unknown_user_id`` (§13) otherwise."""
        try:
            record = self.store.find("User", "userName", hint.casefold())
            user = User.from_scim(record.id, record.data)
        except NotFound:
            wanted = hint.casefold()
            found = [
                User.from_scim(r.id, r.data)
                for r in self.store.list("User")
                if "@" in hint
                and any(e.casefold() == wanted for e in User.from_scim(r.id, r.data).emails)
            ]
            if len(found) != 1:
                raise OAuthError("unknown_user_id", "login_hint names no one user") from None
            user = found[0]
        if not user.active:
            raise OAuthError("unknown_user_id", "login_hint names no active user")
        return user.id

    def _allowed(
        self, agent_id: str, user_id: str, audience: Sequence[str], scopes: Sequence[str]
    ) -> None:
        """The PDP's ``token.exchange`` answer for the agent acting for the person, as
        for a token exchange; ``access_denied`` when it refuses."""
        exchange = Exchange(
            agent_id,
            user_id,
            (agent_id,),
            tuple(audience) or (self.grants.minter.issuer,),
            tuple(scopes),
        )
        refusal = self.grants.exchange_check(exchange)
        if refusal is not None:
            raise OAuthError("access_denied", f"the agent may not act for this person: {refusal}")

    # -- the approval page

    def get(self, hashed: str) -> BackchannelRequest | None:
        record = self.store.backchannel(hashed)
        return None if record is None else BackchannelRequest.from_record(record)

    def pending_for(self, user_id: str) -> list[BackchannelRequest]:
        """The user's requests that wait for an answer."""
        now = int(self.clock())
        found = map(BackchannelRequest.from_record, self.store.backchannel_of_user(user_id, now))
        return [r for r in found if r.status == PENDING]

    def answer(self, hashed: str, user_id: str, approve: bool) -> Answer:
        """Approve or deny, once, as the person the request names; anything else changes
        nothing. A ping-mode request forgets its ping secrets with the answer."""
        found = self.get(hashed)
        if found is None:
            return Answer("unknown")
        if found.user_id != user_id:
            return Answer("not_yours", found)
        now = self.clock()
        if found.status != PENDING:
            return Answer("answered_before", found)
        if now >= found.expires_at:
            return Answer("expired", found)
        status = APPROVED if approve else DENIED
        answered = replace(
            found, status=status, answered_at=int(now), answered_by=user_id, ping=None
        )
        if not self.store.update_backchannel(hashed, answered.record().data, found.version):
            return Answer("answered_before", found)  # another answer came first
        action = "backchannel.approve" if approve else "backchannel.deny"
        self._tell(action, answered, actor=user_id)
        return Answer("answered", found)

    # -- §10.1: the token endpoint's grant

    def redeem(
        self,
        client: Client,
        form: dict[str, str],
        bound_to: str | None = None,
        amr: Sequence[str] = (),
    ) -> dict[str, Any]:
        """The token response for an approved request, once; else §11's error."""
        auth_req_id = form.get("auth_req_id")
        if not auth_req_id:
            raise OAuthError("invalid_request", "auth_req_id is required")
        hashed = id_hash(auth_req_id)
        for _ in range(3):  # a concurrent poll or answer changed it: read it again
            found = self.get(hashed)
            if found is None or found.client_id != client.client_id:
                raise OAuthError("invalid_grant", "auth_req_id is unknown or not this client's")
            after, error = _polled(found, self.clock())
            # an approval is redeemed only once every check passed: a refusal changes nothing
            claims = self._claims(found, form, bound_to, amr) if error is None else {}
            if after is not None and not self.store.update_backchannel(
                hashed, after.record().data, found.version
            ):
                continue
            if error is not None:
                raise error
            return self._token(client, found, claims)
        raise OAuthError("slow_down", "polled concurrently: wait the interval between polls")

    def _claims(
        self,
        approved: BackchannelRequest,
        form: dict[str, str],
        bound_to: str | None,
        amr: Sequence[str],
    ) -> dict[str, Any]:
        """The claims of the token an approved request gives, once the agent and the person
        are still active, the strength is enough and the PDP still allows it."""
        agent = self.grants.active_agent(approved.agent_id)
        try:
            user = User.from_scim(approved.user_id, self.store.get("User", approved.user_id).data)
        except NotFound:
            raise OAuthError("invalid_grant", "the user no longer exists") from None
        if not user.active:
            raise OAuthError("invalid_grant", "the user is not active")
        # The client's own factors on this request and the person's approval: held to the
        # agent's minimum, the request's acr_values and any on this poll, like every other
        # token for the agent.
        factors = [*amr, strength.HUMAN]
        asked = {"acr_values": " ".join(approved.acr_values)} if approved.acr_values else {}
        strength_claims(agent, factors, asked, "unauthorized_client")
        level = strength_claims(agent, factors, form, "unauthorized_client")
        self._allowed(agent.id, user.id, approved.resources, approved.scopes)
        claims: dict[str, Any] = {
            **agent_claims(agent),
            "act": {"sub": agent.id},
            **level,
            "auth_time": approved.answered_at,
        }
        if approved.details:
            claims["authorization_details"] = list(approved.details)
        if bound_to is not None:
            claims["cnf"] = {"x5t#S256": bound_to}  # RFC 8705 §3.1
        return claims

    def _token(
        self, client: Client, approved: BackchannelRequest, claims: dict[str, Any]
    ) -> dict[str, Any]:
        issued = self.grants.minter.mint(
            subject=approved.user_id,
            client_id=client.client_id,
            audience=list(approved.resources) or [self.grants.minter.issuer],
            scope=approved.scopes,
            extra=claims,
            grant="ciba",
        )
        return token_response(issued)

    def _tell(self, action: str, request: BackchannelRequest, actor: str) -> None:
        if self.on_human is None:
            return
        self.on_human(
            {
                "kind": "human",
                "at": datetime.fromtimestamp(self.clock(), UTC).isoformat(),
                "action": action,
                "actor": actor,
                "user": request.user_id,
                "agent": request.agent_id,
                "client": request.client_id,
                "request": request.id_hash,
                "binding_message": request.binding_message,
                "authorization_details": list(request.details),
                "scope": " ".join(request.scopes),
            }
        )


def _polled(
    found: BackchannelRequest, now: float
) -> tuple[BackchannelRequest | None, OAuthError | None]:
    """A poll's effect (§10.1, §11): the request's next state (None: unchanged) and the
    error the client gets (None: the token)."""
    if found.status == REDEEMED:  # §11 invalid_grant: a replayed redemption changes nothing
        return None, OAuthError("invalid_grant", "this auth_req_id was redeemed already")
    if found.status == DENIED:
        return None, OAuthError("access_denied", "the user denied the request")
    if now >= found.expires_at:
        return None, OAuthError("expired_token", "the request expired: make a new one")
    if found.status == APPROVED:
        return replace(found, status=REDEEMED, last_poll=now), None
    if found.last_poll is not None and now - found.last_poll < found.interval:
        slower = found.interval + SLOW_DOWN  # §11: for this and every later poll
        return replace(found, last_poll=now, interval=slower), OAuthError(
            "slow_down", f"poll at most every {slower} s"
        )
    return replace(found, last_poll=now), OAuthError(
        "authorization_pending", "the user has not answered yet"
    )


def _delivery_mode(client: Client) -> str:
    """§4: the client's delivery mode; only a client registered for CIBA, with a mode
    Tessera offers, asks."""
    mode = client.delivery_mode
    if CIBA not in client.grant_types or mode is None or mode not in DELIVERY_MODES:
        raise OAuthError(
            "unauthorized_client",
            f"this client is not registered for CIBA: grant_types must include {CIBA} "
            "and backchannel_token_delivery_mode be poll or ping",
        )
    return mode


def _login_hint(form: dict[str, str]) -> str:
    """§7.1: exactly one hint; Tessera takes ``login_hint`` (a userName or an e-mail)."""
    hints = [name for name in ("login_hint", "login_hint_token", "id_token_hint") if name in form]
    if len(hints) != 1:
        raise OAuthError(
            "invalid_request",
            "give exactly one of login_hint, login_hint_token and id_token_hint (§7.1)",
        )
    if hints[0] != "login_hint":
        raise OAuthError("invalid_request", f"{hints[0]} is not supported: use login_hint")
    for unsupported in ("user_code", "request"):
        if unsupported in form:
            raise OAuthError("invalid_request", f"{unsupported} is not supported")
    hint = form["login_hint"].strip()
    if not hint or len(hint) > MAX_LOGIN_HINT:
        raise OAuthError(
            "invalid_request", f"login_hint is a userName or e-mail of 1 to {MAX_LOGIN_HINT} chars"
        )
    return hint


def _scope(form: dict[str, str]) -> str:
    """The requested scopes without ``openid``, which §7.1 requires ("CIBA authentication
    requests MUST therefore contain the openid scope value") and which grants nothing
    here: Tessera gives no ID token."""
    scopes = form.get("scope", "").split()
    if "openid" not in scopes:
        raise OAuthError("invalid_request", "scope is required and contains openid (§7.1)")
    return " ".join(s for s in scopes if s != "openid")


def _binding_message(message: str | None) -> str | None:
    """§7.1: short plain text, shown to the person on the approval page."""
    if message is None:
        return None
    if len(message) > MAX_BINDING_MESSAGE or not is_plain(message):
        raise OAuthError(
            "invalid_binding_message",
            f"binding_message is plain text of at most {MAX_BINDING_MESSAGE} characters, "
            f"without {REFUSED}",
        )
    return message


def _expiry(requested: str | None) -> int:
    """§7.1 requested_expiry: a positive integer, held to the server's bounds."""
    if requested is None:
        return DEFAULT_EXPIRY
    if not _EXPIRY.match(requested) or int(requested) == 0:
        raise OAuthError(
            "invalid_request", "requested_expiry is a positive integer of at most 9 digits (s)"
        )
    return max(MIN_EXPIRY, min(int(requested), MAX_EXPIRY))


def _ping(client: Client, form: dict[str, str], auth_req_id: str) -> tuple[str, str, str] | None:
    """What a ping-mode request's ping sends (§7.1 client_notification_token, §10.2)."""
    token = form.get("client_notification_token")
    if client.delivery_mode != PING:
        return None
    if not token or len(token) > MAX_NOTIFICATION_TOKEN or not _BEARER.match(token):
        raise OAuthError(
            "invalid_request",
            "a ping-mode client sends client_notification_token: an RFC 6750 bearer token "
            f"of at most {MAX_NOTIFICATION_TOKEN} characters",
        )
    assert client.notification_endpoint is not None  # registration requires it
    return client.notification_endpoint, token, auth_req_id
