"""The grants the token endpoint serves, each a function from a request to an access token.

- ``client_credentials`` (RFC 6749 §4.4): an agent alone; ``sub`` is the agent.
- ``authorization_code`` (RFC 6749 §4.1 with PKCE): a user, through a client; with
  ``requested_actor``, the token carries ``may_act`` naming the agent. A code presented
  again revokes every token it gave (RFC 6749 §4.1.2, OAuth 2.1 §4.1.3).
- ``refresh_token`` (RFC 6749 §6): rotated on every use; a reused refresh token revokes
  its whole family (OAuth 2.1 §4.3.1) and the access tokens it gave.
- token exchange (RFC 8693): a user's token as ``subject_token`` and the agent's as
  ``actor_token`` give a token with ``sub`` = the user and ``act`` = the agent, prior
  actors nested inside; ``may_act`` is honoured; scopes narrow to the intersection of
  the subject token's and the agent client's; the audience narrows to the requested
  resource. The PDP authorizes every exchange (action ``token.exchange``).

The tokens a code, a refresh or an exchange gives name what they come from in their
``lineage`` claim, so that revoking any of it revokes them (:mod:`issuer.oauth.revocation`):
a user's tokens name their grant and the consent it was given under, so the user's
withdrawal of the consent revokes them and what was exchanged from them.

RFC 8693 §2.2.2 picks the exchange's errors: a subject or actor token that is missing,
invalid, revoked, bound to another certificate or unacceptable by policy (``may_act``,
the PDP) is ``invalid_request``; an audience or resource it will not issue for is
``invalid_target``. The other grants answer a bad code or refresh token ``invalid_grant``
(RFC 6749 §5.2).

Every agent token (client credentials, token exchange, an API key's) states how its
client authenticated, ``amr`` and ``acr``, and is refused when that is below the agent's
minimum or the request's ``acr_values`` (:mod:`issuer.oauth.token_strength`); it carries
the request's RFC 9396 ``authorization_details`` (:mod:`issuer.oauth.authorization_details`).
"""

from __future__ import annotations

import contextlib
import hashlib
import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from issuer import strength
from issuer.agents import Agent, User
from issuer.oauth import revocation
from issuer.oauth.api_keys import ApiKeys
from issuer.oauth.authorization_details import authorization_details
from issuer.oauth.authorize import AuthorizationEndpoint, check_resources
from issuer.oauth.clients import TOKEN_EXCHANGE, Client
from issuer.oauth.codes import CodeReplayed
from issuer.oauth.consent import Consent
from issuer.oauth.errors import OAuthError
from issuer.oauth.inline import may_block
from issuer.oauth.token_strength import strength_claims
from issuer.oauth.tokens import InvalidToken, Issued, TokenMinter, TokenVerifier
from issuer.store import NotFound, Store, VersionMismatch

ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
REFRESH_KIND = "RefreshToken"
REFRESH_LIFETIME = 30 * 24 * 3600  # seconds
API_KEY_CLIENT_PREFIX = "api-key:"  # the client_id of tokens traded for an API key


@dataclass(frozen=True)
class Exchange:
    """What the PDP is asked about a token exchange."""

    agent_id: str  # the actor that will hold the new token
    user_id: str  # the subject it acts for
    chain: tuple[str, ...]  # every actor, outermost (the new one) first
    audience: tuple[str, ...]
    scopes: tuple[str, ...]


@dataclass(frozen=True)
class Lineage:
    """What a user's tokens hang on: the grant (the code's id, the refresh tokens'
    family) and the consent it was given under (None for grants made before consents
    were named)."""

    family: str
    consent: str | None = None

    def ids(self) -> list[str]:
        return [self.family] if self.consent is None else [self.family, self.consent]


ExchangeCheck = Callable[[Exchange], str | None]
"""Answers why an exchange is refused, or None to allow it."""


AgentLookup = Callable[[str], Agent | None]
"""An agent by id from an in-memory snapshot, or None when the snapshot does not have it
(then the store is read). The snapshot may give the agent's record or only its extension
attributes by their SCIM names (``status``, ``agentType``…)."""


def refuse_all(exchange: Exchange) -> str | None:
    """Without a PDP, no exchange is allowed (fail closed)."""
    return "no decision point is configured for token exchange"


class Grants:
    """The token endpoint's grants over the store, the minter and the verifier."""

    def __init__(
        self,
        store: Store,
        minter: TokenMinter,
        verifier: TokenVerifier,
        authorization: AuthorizationEndpoint,
        exchange_check: ExchangeCheck = refuse_all,
        agents: AgentLookup | None = None,
    ) -> None:
        self.store = store
        self.agents = agents
        self.minter = minter
        self.verifier = verifier
        self.authorization = authorization
        self.exchange_check = exchange_check

    def api_key(self, form: dict[str, str], keys: ApiKeys) -> dict[str, Any]:
        """Trade an API key for a short-lived access token (the key is the credential:
        no client authentication). ``sub`` is the key's agent; scopes narrow to the key's;
        ``amr`` is ``apikey``, which an agent that needs more cannot use (RFC 8693
        §2.2.2: the key, the subject token, is then unacceptable: ``invalid_request``)."""
        key = keys.check(form.get("subject_token", ""))
        agent = self.active_agent(key.agent_id)
        level = strength_claims(agent, [strength.APIKEY], form, "invalid_request")
        issued = self.minter.mint(
            subject=key.agent_id,
            client_id=f"{API_KEY_CLIENT_PREFIX}{key.id}",
            audience=resources(form) or [self.minter.issuer],
            scope=narrowed(form.get("scope"), key.scopes),
            extra={**agent_claims(agent), **level, **authorization_details(form)},
            grant="api_key",
        )
        response = token_response(issued)
        response["issued_token_type"] = ACCESS_TOKEN_TYPE
        return response

    def issue(
        self,
        grant: str,
        client: Client,
        form: dict[str, str],
        bound_to: str | None = None,
        presented: str | None = None,
        amr: Sequence[str] = (),
    ) -> dict[str, Any]:
        """The token response for an authenticated client (RFC 6749 §5.1); ``bound_to`` is
        the certificate thumbprint of a client whose certificate is bound to it, which its
        agent tokens carry as ``cnf`` (RFC 8705 §3.1); ``presented`` is the thumbprint of
        the certificate on the request, which certificate-bound tokens given to the
        exchange must match; ``amr`` the factors of the client's authentication."""
        if grant == "client_credentials":
            return token_response(self.client_credentials(client, form, bound_to, amr))
        if grant == "authorization_code":
            return self.authorization_code(client, form)
        if grant == "refresh_token":
            return self.refresh(client, form)
        if grant == TOKEN_EXCHANGE:
            response = token_response(self.exchange(client, form, bound_to, presented, amr))
            response["issued_token_type"] = ACCESS_TOKEN_TYPE
            return response
        raise OAuthError("unsupported_grant_type", f"grant_type {grant!r} is not supported")

    # -- an agent alone

    def client_credentials(
        self,
        client: Client,
        form: dict[str, str],
        bound_to: str | None = None,
        amr: Sequence[str] = (),
    ) -> Issued:
        agent_id = _agent_of(client)
        agent = self.active_agent(agent_id)
        level = strength_claims(agent, amr, form, "unauthorized_client")
        return self.minter.mint(
            subject=agent_id,
            client_id=client.client_id,
            audience=resources(form) or [self.minter.issuer],
            scope=narrowed(form.get("scope"), client.scopes),
            extra={
                **agent_claims(agent),
                **level,
                **_confirmation(bound_to),
                **authorization_details(form),
            },
        )

    def active_agent(self, agent_id: str) -> Agent:
        """The agent, for its claims (its type), if it exists and is active; from the
        directory snapshot when there is one, else from the store."""
        found = self.agents(agent_id) if self.agents is not None else None
        if found is None:
            may_block()
            try:
                agent = Agent.from_scim(agent_id, self.store.get("Agent", agent_id).data)
            except NotFound:
                raise OAuthError(
                    "unauthorized_client", f"agent {agent_id!r} does not exist"
                ) from None
        else:
            agent = found
        if not agent.active:
            raise OAuthError("unauthorized_client", f"agent {agent_id!r} is {agent.status}")
        return agent

    # -- a user, through an application

    def authorization_code(self, client: Client, form: dict[str, str]) -> dict[str, Any]:
        code, verifier = form.get("code"), form.get("code_verifier")
        if not code or not verifier:
            raise OAuthError("invalid_request", "code and code_verifier are required")
        try:
            grant = self.authorization.redeem(
                code, client.client_id, form.get("redirect_uri"), verifier
            )
        except CodeReplayed as replayed:  # RFC 6749 §4.1.2: what the code gave is revoked
            self._revoke_family(replayed.grant_id, replayed.user_id, client.client_id)
            raise
        return self._user_tokens(
            client,
            grant.user_id,
            grant.scopes,
            grant.resources,
            grant.actor,
            Lineage(grant.grant_id, grant.consent_id),
            grant.scopes,
            "authorization_code",
        )

    def _user_tokens(
        self,
        client: Client,
        user_id: str,
        scopes: Iterable[str],
        audience: Iterable[str],
        actor: str | None,
        lineage: Lineage,
        refresh_scopes: Iterable[str],
        grant: str,
    ) -> dict[str, Any]:
        """An access token with ``scopes`` and, for a client that may refresh, a refresh
        token with ``refresh_scopes`` (RFC 6749 §6: a narrower access token keeps them);
        both hang on ``lineage``: the grant's id and the consent it was given under."""
        self._active_user(user_id)
        if lineage.consent is not None and revocation.is_recorded(self.store, lineage.consent):
            raise OAuthError("invalid_grant", "the user withdrew the consent")
        extra: dict[str, Any] = revocation.lineage_claim(lineage.ids())
        if actor is not None:
            extra["may_act"] = {"sub": actor}  # RFC 8693 §4.4
        issued = self.minter.mint(
            subject=user_id,
            client_id=client.client_id,
            audience=list(audience) or [self.minter.issuer],
            scope=scopes,
            extra=extra,
            grant=grant,
        )
        response = token_response(issued)
        if "refresh_token" in client.grant_types:
            response["refresh_token"] = self._new_refresh(
                client.client_id,
                user_id,
                sorted(set(refresh_scopes)),
                list(audience),
                actor,
                lineage,
            )
        return response

    def _active_user(self, user_id: str, error: str = "invalid_grant") -> None:
        """The user exists and is active, or ``error``: the grant (a code, a refresh
        token) or, for an exchange, the subject token is no longer good."""
        try:
            user = User.from_scim(user_id, self.store.get("User", user_id).data)
        except NotFound:
            raise OAuthError(error, "the user no longer exists") from None
        if not user.active:
            raise OAuthError(error, "the user is not active")

    def _new_refresh(
        self,
        client_id: str,
        user_id: str,
        scopes: list[str],
        audience: list[str],
        actor: str | None,
        lineage: Lineage,
    ) -> str:
        token = secrets.token_urlsafe(32)
        document = {
            "client_id": client_id,
            "user_id": user_id,
            "scopes": scopes,
            "audience": audience,
            "actor": actor,
            "family": lineage.family,
            "consent": lineage.consent,
            "expires_at": int(time.time()) + REFRESH_LIFETIME,
            "used": False,
        }
        record = self.store.create(
            REFRESH_KIND, document, unique={"hash": _digest(token)}, actor=client_id
        )
        # a family revoked meanwhile (a reuse, a code replay or a withdrawn consent raced
        # this) gets no member
        if not any(revocation.is_recorded(self.store, id_) for id_ in lineage.ids()):
            return token
        with contextlib.suppress(NotFound):
            self.store.delete(REFRESH_KIND, record.id, expected_version=None, actor=client_id)
        raise OAuthError("invalid_grant", "the grant was revoked meanwhile")

    def refresh(self, client: Client, form: dict[str, str]) -> dict[str, Any]:
        token = form.get("refresh_token")
        if not token:
            raise OAuthError("invalid_request", "refresh_token is required")
        try:
            record = self.store.find(REFRESH_KIND, "hash", _digest(token))
        except NotFound:
            raise OAuthError("invalid_grant", "unknown refresh token") from None
        data = record.data
        if data["client_id"] != client.client_id:
            raise OAuthError("invalid_grant", "the refresh token was issued to another client")
        if data["used"]:
            self._revoke_family(data["family"], data["user_id"], client.client_id)
            raise OAuthError("invalid_grant", "refresh token reused: its family is revoked")
        if data["expires_at"] < time.time():
            raise OAuthError("invalid_grant", "the refresh token has expired")
        scopes = data["scopes"]
        requested = form.get("scope")
        if requested is not None:  # RFC 6749 §6: may narrow, never widen (checked before use)
            scopes = narrowed(requested, frozenset(scopes))
        try:
            self.store.replace(
                REFRESH_KIND,
                record.id,
                {**data, "used": True},
                unique={"hash": _digest(token)},
                expected_version=record.version,
                actor=client.client_id,
            )
        except (VersionMismatch, NotFound):  # used by a concurrent request just now
            self._revoke_family(data["family"], data["user_id"], client.client_id)
            raise OAuthError(
                "invalid_grant", "refresh token reused: its family is revoked"
            ) from None
        return self._user_tokens(
            client,
            data["user_id"],
            scopes,
            data["audience"],
            data["actor"],
            Lineage(data["family"], data.get("consent")),
            data["scopes"],
            "refresh_token",
        )

    def _revoke_family(self, family: str, user_id: str, actor: str) -> None:
        """Revoke a grant: its refresh tokens, and the access tokens it gave with what was
        exchanged from them (they name the family in their lineage). The revocation is
        recorded first, then the members deleted: a member created while this runs either
        is deleted here or sees the record and deletes itself."""
        self._revoke_lineage(family, user_id, lambda data: data.get("family") == family, actor)

    def revoke_refresh_token(self, token: str, client_id: str) -> None:
        """RFC 7009: revoke a refresh token (and the family it belongs to), if it is one of
        this client's; anything else is ignored."""
        try:
            record = self.store.find(REFRESH_KIND, "hash", _digest(token))
        except NotFound:
            return
        if record.data.get("client_id") != client_id:
            raise OAuthError("unauthorized_client", "the token was issued to another client")
        self._revoke_family(str(record.data["family"]), str(record.data["user_id"]), client_id)

    def consent_withdrawn(self, consent: Consent, actor: str) -> None:
        """Revoke what a consent the user withdrew made possible: every token that names
        it in its lineage (access tokens, and those exchanged from them), codes not yet
        redeemed, and the refresh tokens for the same user, client and agent. As for a
        family, the revocation is recorded first, then the refresh tokens deleted."""
        self._revoke_lineage(
            consent.id,
            consent.user_id,
            lambda data: (
                data.get("consent") in (consent.id, None)  # None: made before consents were named
                and (data.get("user_id"), data.get("client_id"), data.get("actor"))
                == (consent.user_id, consent.client_id, consent.agent_id)
            ),
            actor,
        )

    def _revoke_lineage(
        self, id_: str, user_id: str, matches: Callable[[dict[str, Any]], bool], actor: str
    ) -> None:
        """Record ``id_`` (of a lineage) revoked for ``user_id``, then delete the refresh
        tokens that ``matches``: the steps of revoking a family and a consent alike."""
        revocation.revoke(
            self.store, id_, subject=user_id, exp=0, lifetime=self.minter.lifetime, actor=actor
        )
        self._revoke_refresh(matches, actor)

    def _revoke_refresh(self, matches: Callable[[dict[str, Any]], bool], actor: str) -> None:
        for record in self.store.list(REFRESH_KIND):
            if matches(record.data):
                try:
                    self.store.delete(REFRESH_KIND, record.id, expected_version=None, actor=actor)
                except NotFound:
                    continue

    # -- an agent for a user

    def exchange(
        self,
        client: Client,
        form: dict[str, str],
        bound_to: str | None = None,
        presented: str | None = None,
        amr: Sequence[str] = (),
    ) -> Issued:
        agent_id = _agent_of(client)
        agent = self.active_agent(agent_id)
        # the actor's own authentication now, never what the subject or actor token says
        level = strength_claims(agent, amr, form, "unauthorized_client")
        details = authorization_details(form)
        subject, actor = self._parties(agent_id, form, presented)
        user_id = str(subject["sub"])
        self._active_user(user_id, "invalid_request")
        available = frozenset(str(subject.get("scope", "")).split()) & client.scopes
        scopes = narrowed(form.get("scope"), available)
        audience = _narrowed_audience(form, subject.get("aud"))
        prior = subject.get("act")
        chain = (agent_id, *_actors(prior))
        refusal = self.exchange_check(
            Exchange(agent_id, user_id, chain, tuple(audience), tuple(scopes))
        )
        if refusal is not None:  # RFC 8693 §2.2.2: tokens unacceptable by policy
            raise OAuthError("invalid_request", f"the exchange is not allowed: {refusal}")
        act: dict[str, Any] = {"sub": agent_id}
        if isinstance(prior, dict):
            act["act"] = prior
        lineage = revocation.lineage_claim(revocation.descended(subject, actor))
        return self.minter.mint(
            subject=user_id,
            client_id=client.client_id,
            audience=audience,
            scope=scopes,
            extra={
                **agent_claims(agent),
                **level,
                "act": act,
                **_confirmation(bound_to),
                **lineage,
                **details,
            },
            grant="token_exchange",
        )

    def _parties(
        self, agent_id: str, form: dict[str, str], presented: str | None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The subject and actor tokens' claims, each valid and acceptable for this agent
        to act for the subject's user; ``invalid_request`` else (RFC 8693 §2.2.2)."""
        subject = self._valid(form, "subject_token", presented)
        actor = self._valid(form, "actor_token", presented)
        if actor.get("sub") != agent_id:
            raise OAuthError("invalid_request", "the actor_token is not this client's agent's")
        may_act = subject.get("may_act")
        if isinstance(may_act, dict) and may_act.get("sub") != agent_id:
            raise OAuthError("invalid_request", "the subject token's may_act names another actor")
        if "agent_id" in subject and "act" not in subject:
            raise OAuthError(
                "invalid_request",
                "the subject_token is an agent's own token: an agent acts for a user by "
                "exchanging that user's token",
            )
        return subject, actor

    def _valid(self, form: dict[str, str], name: str, presented: str | None) -> dict[str, Any]:
        """A subject or actor token's claims: present, of the access token type, valid,
        with its certificate when bound, and not revoked (its lineage included)."""
        token = form.get(name)
        if not token:
            raise OAuthError("invalid_request", f"{name} is required")
        kind = form.get(f"{name}_type")
        if kind != ACCESS_TOKEN_TYPE:
            raise OAuthError("invalid_request", f"{name}_type must be {ACCESS_TOKEN_TYPE}")
        try:
            claims = self.verifier.verify(token)
        except InvalidToken as exc:
            raise OAuthError("invalid_request", f"the {name} is not valid: {exc}") from None
        bound = (claims.get("cnf") or {}).get("x5t#S256")
        if bound is not None and bound != presented:  # RFC 8705 §3: its certificate too
            raise OAuthError("invalid_request", f"the {name} is bound to another certificate")
        if revocation.revoked(self.store, claims):
            raise OAuthError("invalid_request", f"the {name} was revoked")
        return claims


def agent_claims(agent: Agent) -> dict[str, Any]:
    """Tessera's agent claims: which agent holds the token, and what kind of agent it is."""
    return {"agent_id": agent.id, "agent_type": agent.type}


def narrowed(requested: str | None, allowed: frozenset[str]) -> list[str]:
    """RFC 6749 §3.3: the requested scopes, all of which must be allowed; all the allowed
    ones when none is requested."""
    if requested is None:
        return sorted(allowed)
    wanted = requested.split()
    denied = sorted(set(wanted) - allowed)
    if denied:
        raise OAuthError("invalid_scope", f"scope {denied[0]!r} is not allowed here")
    return wanted


def resources(form: dict[str, str]) -> list[str]:
    """The form's RFC 8707 ``resource`` parameters, each checked."""
    return check_resources(form.get("resource", "").split())


def _narrowed_audience(form: dict[str, str], subject_aud: Any) -> list[str]:
    """The exchanged token's audience: the requested resources and audiences, each one
    the subject token has (RFC 8693 §2.1: it only narrows the user's), else the subject
    token's; ``invalid_target`` for one it lacks (§2.2.2)."""
    granted = subject_aud if isinstance(subject_aud, list) else [str(subject_aud)]
    audience = resources(form) + form.get("audience", "").split()
    wider = sorted(set(audience) - set(granted))
    if wider:
        raise OAuthError("invalid_target", f"{wider[0]!r} is not an audience of the subject token")
    return audience or granted


def _agent_of(client: Client) -> str:
    if client.agent_id is None:
        raise OAuthError("unauthorized_client", "this client is not an agent")
    return client.agent_id


def _actors(act: Any) -> list[str]:
    """The actor ids of a nested ``act`` claim, outermost first (RFC 8693 §4.1)."""
    found = []
    while isinstance(act, dict) and isinstance(act.get("sub"), str):
        found.append(act["sub"])
        act = act.get("act")
    return found


def _confirmation(bound_to: str | None) -> dict[str, Any]:
    return {} if bound_to is None else {"cnf": {"x5t#S256": bound_to}}


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def token_response(issued: Issued) -> dict[str, Any]:
    """RFC 6749 §5.1's answer for an access token, with its RFC 9396 details (§7)."""
    response = {
        "access_token": issued.token,
        "token_type": "Bearer",
        "expires_in": issued.expires_in,
        "scope": issued.claims["scope"],
    }
    if "authorization_details" in issued.claims:  # RFC 9396 §7
        response["authorization_details"] = issued.claims["authorization_details"]
    return response
