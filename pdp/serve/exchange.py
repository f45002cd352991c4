"""The PDP's answer to the token issuer: may this agent get a token to act for this user?

The issuer asks before every token exchange (RFC 8693). The question is an ordinary
request, decided by the same engine, directory and policies as any other: action
``token.exchange`` on a resource of type ``audience`` (one request per audience, all
must be allowed), the agent and user from the directory, the actor chain as delegation,
and the user's consents to that agent in the context.
"""

from __future__ import annotations

from typing import Protocol

from issuer.oauth.grants import Exchange, ExchangeCheck
from pdp.directory import Directory
from pdp.engine import Engine
from pdp.request import RequestError, request_from_json

ACTION = "token.exchange"
RESOURCE_TYPE = "audience"


class Deciding(Protocol):
    """What the check needs of the decision service: its current engine and directory."""

    engine: Engine
    directory: Directory | None


def exchange_check(service: Deciding) -> ExchangeCheck:
    """An exchange check deciding with the service's current engine and directory."""

    def check(exchange: Exchange) -> str | None:
        directory = service.directory
        if directory is None:
            return "the decision point has no directory"
        identities = directory.resolve(exchange.agent_id, exchange.user_id, exchange.chain)
        if isinstance(identities, str):
            return identities
        engine = service.engine
        for audience in exchange.audience:
            data = {
                "agent": identities.agent,
                "user": identities.user,
                "delegation": {"chain": list(exchange.chain)},
                "action": ACTION,
                "resource": {"type": RESOURCE_TYPE, "id": audience},
                "context": {"consents": list(identities.consents)},
            }
            try:
                request = request_from_json(data, engine.bundle.schema)
            except RequestError as exc:
                return f"the exchange cannot be decided: {exc}"
            decision = engine.decide(request, True)
            if not decision.allow:
                return "; ".join(decision.reasons)
        return None

    return check
