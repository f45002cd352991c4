"""Between the gRPC contract (tessera.v1) and the engine's plain values.

A request message becomes request JSON and goes through :func:`pdp.request.request_from_json`,
so gRPC and JSON requests are typed and validated by one path and their errors name the
same fields. A decision becomes an ``AuthorizeResponse``.
"""

from __future__ import annotations

from typing import Any

from pdp.directory import Identities
from pdp.model import Decision, Request, RequestError
from pdp.request import request_from_json
from pdp.serve.proto import authorizer_pb2 as pb


def value_to_json(value: pb.Value, path: str) -> Any:
    """One typed attribute value as the JSON the request loader reads."""
    kind = value.WhichOneof("kind")
    if kind is None:
        raise RequestError(f"{path}: a Value with no kind set")
    if kind in ("string", "bool", "risk", "duration", "time", "ip"):
        return getattr(value, kind)
    if kind == "number":
        return value.number
    if kind == "integer":
        return value.integer
    if kind == "money":
        return {"amount": value.money.amount, "currency": value.money.currency}
    if kind == "strings":
        return list(value.strings.values)
    if kind == "list":
        return [value_to_json(v, f"{path}[{i}]") for i, v in enumerate(value.list.values)]
    return {k: value_to_json(v, f"{path}.{k}") for k, v in value.map.values.items()}


def attributes_to_json(attributes: Any, path: str) -> dict[str, Any]:
    return {key: value_to_json(value, f"{path}.{key}") for key, value in attributes.items()}


def request_to_json(
    message: pb.AuthorizeRequest, identities: Identities | None = None
) -> dict[str, Any]:
    """An ``AuthorizeRequest`` as request JSON (see README.md for the format).

    With ``identities`` from the directory, the agent's and user's attributes are the
    directory's; whatever the caller sent for them is ignored.
    """
    data: dict[str, Any] = {
        "agent": {**attributes_to_json(message.agent.attributes, "agent"), "id": message.agent.id},
        "action": message.action,
        "resource": {
            **attributes_to_json(message.resource.attributes, "resource"),
            "type": message.resource.type,
            "id": message.resource.id,
        },
        "context": attributes_to_json(message.context, "context"),
    }
    if message.HasField("user"):
        data["user"] = {
            **attributes_to_json(message.user.attributes, "user"),
            "id": message.user.id,
        }
    if message.HasField("delegation"):
        data["delegation"] = {"chain": list(message.delegation.chain)}
    if identities is not None:
        data["agent"] = identities.agent
        if identities.user is not None:
            data["user"] = identities.user
        # consents come from the consent store, never from the caller
        data["context"]["consents"] = list(identities.consents)
    return data


def request_from_message(
    message: pb.AuthorizeRequest, schema: Any, identities: Identities | None = None
) -> Request:
    """A typed request from a message, or a :class:`RequestError` naming the field."""
    return request_from_json(request_to_json(message, identities), schema)


def decision_to_message(
    decision: Decision, decision_id: str, cacheable: bool = False
) -> pb.AuthorizeResponse:
    return pb.AuthorizeResponse(
        cacheable=cacheable,
        allow=decision.allow,
        obligations=[pb.Obligation(kind=o.kind, value=o.value) for o in decision.obligations],
        decided_by=decision.decided_by,
        reasons=decision.reasons,
        decision_id=decision_id,
        bundle_version=decision.bundle_version,
        errors=[
            pb.RuleError(rule=e.rule, effect=e.effect, message=e.message) for e in decision.errors
        ],
    )
