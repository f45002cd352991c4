"""What goes on the audit trails: one plain JSON object per event.

A decision record says who (agent, the user it acts for, the delegation chain), what
(action, resource, the request's context), the answer (allow, the deciding rules,
obligations, reasons), when, which PEP asked, how long it took, and the decision id and
bundle version that tie it to the answer the PEP got.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pdp.decision import Decision
from pdp.serve.convert import attributes_to_json
from pdp.serve.proto import authorizer_pb2 as pb


def decision_record(
    message: pb.AuthorizeRequest,
    decision: Decision,
    decision_id: str,
    seconds: float,
    pep: str,
) -> dict[str, Any]:
    """The agent trail's record of one decision."""
    return {
        "kind": "decision",
        "at": datetime.now(UTC).isoformat(),
        "decision_id": decision_id,
        "agent": message.agent.id,
        "user": message.user.id if message.HasField("user") else None,
        "delegation": list(message.delegation.chain),
        "action": message.action,
        "resource": {"type": message.resource.type, "id": message.resource.id},
        "context": attributes_to_json(message.context, "context"),
        "allow": decision.allow,
        "decided_by": list(decision.decided_by),
        "obligations": [f"{o.kind}:{o.value}" for o in decision.obligations],
        "reasons": list(decision.reasons),
        "bundle_version": decision.bundle_version,
        "pep": pep,
        "latency_us": round(seconds * 1e6, 1),
    }
