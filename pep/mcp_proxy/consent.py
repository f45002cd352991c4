"""What the proxy asks a caller's user for, and in what order: consents first, then the
step-up.

A deny carries the obligations of the permits that would allow the call
(:func:`pdp.model.combine`). The proxy knows which of them the user can meet:

- a consent (``consent("payments:transfer")``), when the token acts for a user (RFC 8693
  ``act``) and ``consent_client_id`` names the public client of the issuer's consent page;
- a step-up (``step_up("mfa")``), when the token acts for a user and ``step_up_acrs``
  says the issuer can raise that user's login to that ``acr`` (or, for a level of the
  ladder, to one at or above it): the client comes back with a token from the stronger
  login.

Nobody can meet anything else: an obligation of a kind the proxy does not know, or a
step-up the issuer cannot do. A deny whose obligations the user can all meet, one of them
at least a consent, is answered with the consents to give (a URL-mode elicitation of the
issuer's consent page, ``-32042``, MCP 2025-11-25 "URL mode elicitation"). Once they are
given, the same call meets the step-up's answer: ``-32003`` naming it. Any other deny is
``-32003``. Lists follow the same rule: a tool whose call would ask for consents is listed,
marked ``_meta["tessera/consent"]``.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import replace
from typing import Any
from urllib.parse import urlencode

from mcp.shared.exceptions import UrlElicitationRequiredError
from mcp_types import ElicitRequestURLParams

from issuer.strength import LADDER, at_least
from pep.client import Verdict
from pep.mcp_proxy.config import ProxyConfig
from pep.mcp_proxy.jsonrpc import CONSENT_REQUIRED, Message, error
from pep.mcp_proxy.tokens import Caller

CONSENT_PATH = "/consent/done"  # where the issuer's consent page sends the user back
# MCP "_meta" keys: an optional prefix, a slash, a name; the prefix is the project's own
# (MCP reserves those whose second label is "modelcontextprotocol" or "mcp")
CONSENT_META = "tessera/consent"


class ConsentFlow:
    """The proxy's rule for what a caller's user can be asked (see the module's text),
    and the answers and list marks that ask."""

    def __init__(self, config: ProxyConfig) -> None:
        self.config = config
        self.step_up_acrs = frozenset(config.step_up_acrs)

    def may_ask(self, caller: Caller) -> bool:
        """Whether the caller has a user the proxy can send to the consent page."""
        return caller.user is not None and bool(self.config.consent_client_id)

    def consents_to_ask(self, caller: Caller, obligations: Iterable[tuple[str, str]]) -> list[str]:
        """The consents to ask the caller's user for before the others, in order: none
        unless the user can meet every obligation and one at least is a consent."""
        if not self.may_ask(caller):
            return []
        consents = []
        for kind, value in obligations:
            if kind == "consent":
                consents.append(value)
            elif kind != "step_up" or not self.can_step_up(value):
                return []  # nobody can meet it: the deny stands
        return consents

    def can_step_up(self, acr: str) -> bool:
        """Whether the issuer can raise a user's login to ``acr`` or, for a level of the
        ladder, above it (:func:`issuer.strength.at_least`)."""
        return any(at_least(given, acr) for given in self.step_up_acrs)

    def grantable(self, levels: Iterable[str]) -> tuple[str, ...]:
        """The step-up levels a client can get a token at, to name in RFC 9470's
        ``acr_values``: a level of the issuer's ladder (an agent's client authentication
        reaches it) or one the issuer can raise a user's login to (:meth:`can_step_up`).
        Others, off the ladder and not in ``step_up_acrs``, nobody can meet."""
        return tuple(level for level in levels if level in LADDER or self.can_step_up(level))

    def stepped_up(self, caller: Caller) -> Iterator[tuple[str, Caller]]:
        """The caller as if from each stronger login the issuer can give its user: the
        ``acr`` and the caller with it (what a list asks about, to find the tools that
        would await only consents then): none the caller's ``acr`` already meets, at or
        above it on the ladder (:func:`issuer.strength.at_least`)."""
        if not self.may_ask(caller):
            return
        current = caller.claims.get("acr")
        for acr in sorted(self.step_up_acrs):
            if not isinstance(current, str) or not at_least(current, acr):
                yield acr, replace(caller, claims={**caller.claims, "acr": acr})

    def elicitation(
        self, id: Any, caller: Caller, method: str, name: str, verdict: Verdict
    ) -> Message:
        """``-32042``: the issuer's consent page for the consents the deny awaits, with the
        deny's obligations (a step-up to come after them, say)."""
        scope = " ".join(self.consents_to_ask(caller, verdict.obligations))
        elicitation = ElicitRequestURLParams(
            message=f"Allow the agent to use {name} for you ({scope})",
            url=self.consent_url(caller, scope, verdict.decision_id),
            elicitation_id=verdict.decision_id or secrets.token_urlsafe(16),
        )
        found = UrlElicitationRequiredError(
            [elicitation], f"{method} {name!r} needs your consent: {scope}"
        )
        data = {
            **found.error.data,
            "decision_id": verdict.decision_id,
            "obligations": obligations_json(verdict.obligations),
        }
        return error(id, CONSENT_REQUIRED, found.error.message, data)

    def consent_url(self, caller: Caller, scope: str, state: str) -> str:
        """The issuer's consent page for this user, agent and scope (an authorization
        request whose code nobody redeems: the challenge's verifier is thrown away)."""
        verifier = secrets.token_urlsafe(32)
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
        query = {
            "response_type": "code",
            "client_id": self.config.consent_client_id,
            "redirect_uri": f"{self.config.public_url}{CONSENT_PATH}",
            "scope": scope,
            "requested_actor": caller.agent,
            "code_challenge": challenge.rstrip(b"=").decode(),
            "code_challenge_method": "S256",
            "state": state or secrets.token_urlsafe(16),
        }
        return f"{self.config.issuer}/oauth/authorize?{urlencode(query)}"


def obligations_json(obligations: Iterable[tuple[str, str]]) -> list[dict[str, str]]:
    """Obligations as a deny's ``data`` names them."""
    return [{"kind": kind, "value": value} for kind, value in obligations]


def marked(item: Mapping[str, Any], mark: Mapping[str, str] | None) -> Mapping[str, Any]:
    """A listed item with the proxy's mark (``_meta["tessera/consent"]``: calling it asks
    for consents first), or without one when ``mark`` is None. The key is the proxy's:
    one the upstream sent is dropped, so a server cannot mark a tool as it pleases."""
    meta = item.get("_meta")
    if mark is None and not (isinstance(meta, dict) and CONSENT_META in meta):
        return item
    kept = {k: v for k, v in meta.items() if k != CONSENT_META} if isinstance(meta, dict) else {}
    if mark is not None:
        kept[CONSENT_META] = dict(mark)
    return {**item, "_meta": kept}
