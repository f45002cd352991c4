"""The PDP's answer to the token issuer: may this agent get a token to act for this user?

The issuer asks before every token exchange (RFC 8693). The question is an ordinary
request, decided by the same engine, directory and policies as any other: action
``token.exchange`` on a resource of type ``audience`` (one request per audience, all
must be allowed), the agent and user from the directory, the actor chain as delegation,
and the user's consents to that agent in the context. Each answer is on the agent trail
like any other decision, with ``pep`` ``issuer``.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

from issuer.oauth.grants import Exchange, ExchangeCheck
from pdp.audit.records import decided, new_decision_id
from pdp.audit.writer import AuditWriter
from pdp.directory import Directory
from pdp.engine import Engine
from pdp.model import Decision, RequestError
from pdp.request import request_from_json

ACTION = "token.exchange"
RESOURCE_TYPE = "audience"


class Deciding(Protocol):
    """What the check needs of the decision service: its current engine, directory and
    audit writer."""

    engine: Engine
    directory: Directory | None
    audit: AuditWriter | None


def exchange_check(service: Deciding) -> ExchangeCheck:
    """An exchange check deciding with the service's current engine and directory."""

    def check(exchange: Exchange) -> str | None:
        directory = service.directory
        if directory is None:
            return "the decision point has no directory"
        engine = service.engine
        identities = directory.resolve(exchange.agent_id, exchange.user_id, exchange.chain)
        for audience in exchange.audience:
            started = time.perf_counter()
            asked: dict[str, Any] = {
                "agent": exchange.agent_id,
                "user": exchange.user_id,
                "delegation": list(exchange.chain),
                "action": ACTION,
                "resource": {"type": RESOURCE_TYPE, "id": audience},
                "context": {},
            }
            if isinstance(identities, str):
                refusal: str | None = identities
                decision = Decision(False, (), ("directory",), (identities,), (), engine.version)
            else:
                asked["context"] = {"consents": list(identities.consents)}
                data = {
                    **asked,
                    "agent": identities.agent,
                    "user": identities.user,
                    "delegation": {"chain": list(exchange.chain)},
                }
                try:
                    request = request_from_json(data, engine.bundle.schema)
                except RequestError as exc:
                    return f"the exchange cannot be decided: {exc}"
                decision = engine.decide(request, True)
                refusal = None if decision.allow else "; ".join(decision.reasons)
            _record(service.audit, asked, decision, time.perf_counter() - started)
            if refusal is not None:
                return refusal
        return None

    return check


def _record(
    audit: AuditWriter | None, asked: dict[str, Any], decision: Decision, seconds: float
) -> None:
    if audit is not None:
        decision_id = new_decision_id()
        audit.put("agent", lambda: decided(asked, decision, decision_id, seconds, "issuer"))
