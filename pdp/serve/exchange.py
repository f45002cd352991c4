"""The PDP's answer to the token issuer: may this agent get a token to act for this user?

The issuer asks before every token exchange (RFC 8693), and before it takes and redeems
a CIBA request, whose token lets the agent act for the person likewise. The question is an ordinary
request, decided by the same decision point as any other: action ``token.exchange`` on a
resource of type ``audience`` (one request per audience, all must be allowed), the agent
and user from the directory, the actor chain as delegation, and the user's consents to
that agent in the context. Each answer is on the agent trail like any other decision,
with ``pep`` ``issuer``.
"""

from __future__ import annotations

from issuer.oauth.grants import Exchange, ExchangeCheck
from pdp.decide import DecisionPoint
from pdp.model import RequestError
from pdp.request import typed_request

ACTION = "token.exchange"
RESOURCE_TYPE = "audience"
PEP = "issuer"


def exchange_check(point: DecisionPoint) -> ExchangeCheck:
    """An exchange check deciding with ``point`` (which must have a directory)."""

    def check(exchange: Exchange) -> str | None:
        if point.directory is None:
            return "the decision point has no directory"
        for audience in exchange.audience:
            try:
                request = typed_request(
                    point.schema,
                    agent={"id": exchange.agent_id},
                    user={"id": exchange.user_id},
                    chain=exchange.chain,
                    action=ACTION,
                    resource_type=RESOURCE_TYPE,
                    resource_id=audience,
                )
                decision = point.decide_now(request, PEP).decision
            except RequestError as exc:
                return f"the exchange cannot be decided: {exc}"
            if not decision.allow:
                return "; ".join(decision.reasons)
        return None

    return check
