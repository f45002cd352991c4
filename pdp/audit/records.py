"""What goes on the audit trails: one plain JSON object per event.

A decision record says who (agent, the user it acts for, the delegation chain), what
(action, resource, the request's context), the answer (allow, the deciding rules,
obligations, reasons), when, which PEP asked, how long it took, and the decision id and
bundle version that tie it to the answer the PEP got.

A token record says which grant minted an access token, for which agent, user and client,
with which scopes and audience, and its ``jti`` and expiry (never the token itself).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from pdp.decision import Decision
from pdp.serve.convert import attributes_to_json
from pdp.serve.proto import authorizer_pb2 as pb


def new_decision_id() -> str:
    """A unique id for one decision; the key of its audit record."""
    return uuid.uuid4().hex


def decision_record(
    message: pb.AuthorizeRequest,
    decision: Decision,
    decision_id: str,
    seconds: float,
    pep: str,
) -> dict[str, Any]:
    """The agent trail's record of one decision asked over gRPC."""
    return decided(
        {
            "agent": message.agent.id,
            "user": message.user.id if message.HasField("user") else None,
            "delegation": list(message.delegation.chain),
            "action": message.action,
            "resource": {"type": message.resource.type, "id": message.resource.id},
            "context": attributes_to_json(message.context, "context"),
        },
        decision,
        decision_id,
        seconds,
        pep,
    )


def decided(
    asked: dict[str, Any], decision: Decision, decision_id: str, seconds: float, pep: str
) -> dict[str, Any]:
    """The agent trail's record of one decision: ``asked`` holds the request's agent,
    user, delegation, action, resource (type and id) and context."""
    return {
        "kind": "decision",
        "at": _now(),
        "decision_id": decision_id,
        **asked,
        "allow": decision.allow,
        "decided_by": list(decision.decided_by),
        "obligations": [f"{o.kind}:{o.value}" for o in decision.obligations],
        "reasons": list(decision.reasons),
        "bundle_version": decision.bundle_version,
        "pep": pep,
        "latency_us": round(seconds * 1e6, 1),
    }


def token_record(grant: str, claims: dict[str, Any]) -> dict[str, Any]:
    """The agent trail's record of one access token the issuer minted."""
    act = claims.get("act")
    chain = []
    while isinstance(act, dict):
        chain.append(str(act.get("sub")))
        act = act.get("act")
    agent = claims.get("agent_id")
    may_act = claims.get("may_act")
    if agent is None and isinstance(may_act, dict):
        agent = may_act.get("sub")  # a user's token for an agent to exchange
    subject = claims.get("sub")
    audience = claims.get("aud")
    return {
        "kind": "token",
        "at": _now(),
        "grant": grant,
        "agent": agent,
        "user": None if subject == claims.get("agent_id") else subject,
        "client": claims.get("client_id"),
        "scope": claims.get("scope", ""),
        "audience": audience if isinstance(audience, list) else [audience],
        "jti": claims.get("jti"),
        "expires_at": datetime.fromtimestamp(int(claims["exp"]), UTC).isoformat(),
        "delegation": chain,
        "bound": "cnf" in claims,
    }


def _now() -> str:
    return datetime.now(UTC).isoformat()
