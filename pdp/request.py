"""The request a decision is made on, and how request JSON becomes one.

A :class:`Request` holds plain, typed values: every attribute the schema declares has been
converted (``"low"`` → ``Risk.low``, ``"200 USD"`` → ``Money``), so evaluators compare
values without checking types. :func:`request_from_json` is the one place that accepts
untrusted input; it raises :class:`RequestError` naming the offending field.

The JSON format (documented in README.md)::

    {
      "agent":      {"id": "pay-bot", "risk": "low", ...},
      "user":       {"id": "alice", "roles": ["analyst"]},        # optional
      "delegation": {"chain": ["pay-bot"]},                        # optional
      "action":     "tool.call",
      "resource":   {"type": "tool", "id": "payments.transfer", "server": "pay"},
      "context":    {"amount": "200 USD", "consents": ["payments:transfer"]},
      "time":       "2026-03-30T07:30:00Z"                          # optional
    }

``"tool": "payments.transfer"`` is short for action ``tool.call`` on that tool. ``"time"``
is the decision time (RFC 3339 with an offset) for a question about another moment than
now: what ``now`` reads in the rules.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from datetime import date, datetime
from decimal import Decimal
from ipaddress import IPv4Address, IPv6Address
from typing import Any

from pdp.bounds import DEFAULT_BOUNDS, Bounds, Measure
from pdp.lang.ast import CALL_ACTION, TOOL_TYPE
from pdp.lang.schema import AGENT_SUBJECT, PERSONS, SchemaModel, Type
from pdp.lang.values import (
    CURRENCY,
    Duration,
    Money,
    Risk,
    parse_amount,
    parse_date,
    parse_ip,
    parse_money,
    parse_time,
    shown,
)
from pdp.model import Request, RequestError, delegation_for

# ------------------------------------------------------------------ JSON → Request

_TOP_LEVEL = (
    "agent",
    "user",
    "delegation",
    "action",
    "resource",
    "context",
    "tool",
    "subject",
    "time",
)


def request_from_json(data: Any, schema: SchemaModel, bounds: Bounds = DEFAULT_BOUNDS) -> Request:
    """Validate and type a request JSON object against the schema, within ``bounds``."""
    if not isinstance(data, dict):
        raise RequestError("a request is a JSON object")
    unknown = sorted(set(data) - set(_TOP_LEVEL))
    if unknown:
        raise RequestError(
            f"unknown top-level field {unknown[0]!r}; a request has " + ", ".join(_TOP_LEVEL)
        )
    measure = Measure(bounds)
    agent, user, subject = _who(data, schema, measure)

    if "tool" in data:
        if "resource" in data or "action" in data:
            raise RequestError("'tool' is short for action and resource: give one or the other")
        tool = data["tool"]
        if not isinstance(tool, str) or not tool:
            raise RequestError("tool: expected a tool name (string)")
        action = CALL_ACTION
        raw_resource: Any = {"type": TOOL_TYPE, "id": tool}
    else:
        raw_action = data.get("action")
        if not isinstance(raw_action, str) or not raw_action:
            raise RequestError('action: required, a non-empty string such as "tool.call"')
        action = raw_action
        raw_resource = data.get("resource")
    measure.text(action)
    resource = _resource(raw_resource, schema, measure)

    chain: tuple[str, ...] | None = None
    raw_delegation = data.get("delegation")
    if raw_delegation is not None:
        if not isinstance(raw_delegation, dict):
            raise RequestError("delegation: expected an object with 'chain'")
        extra = sorted(set(raw_delegation) - {"chain"})
        if extra:
            raise RequestError(
                f"delegation.{extra[0]}: not settable; delegated and depth follow from "
                "the user and the chain"
            )
        raw_chain = raw_delegation.get("chain", [])
        if not isinstance(raw_chain, list) or not all(isinstance(a, str) for a in raw_chain):
            raise RequestError("delegation.chain: expected a list of actor ids (strings)")
        chain = tuple(raw_chain)
        measure.text(*chain)

    context = typed_attributes(data.get("context", {}), "context", schema.context, measure)
    return Request(
        agent,
        user,
        delegation_for(None if agent is None else agent["id"], user, chain),
        action,
        resource,
        context,
        measure.total,
        subject,
        _decision_time(data.get("time")),
    )


def _decision_time(raw: Any) -> datetime | None:
    """A request's ``"time"``: when it is to be decided as of (None: when it is decided)."""
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise RequestError('time: expected an RFC 3339 time ("2026-01-31T09:00:00Z")')
    at: datetime = _parsed(parse_time, raw, "time")
    return at


def _who(
    data: dict[str, Any], schema: SchemaModel, measure: Measure
) -> tuple[dict[str, Any] | None, dict[str, Any] | None, dict[str, Any] | None]:
    """The agent and user of request JSON, or its other subject (``"subject"``): a person,
    whose attributes the ``user`` object gives (its id defaults to the subject's), or a
    subject of a type the schema declares."""
    raw = data.get("subject")
    if raw is None:
        agent = _entity(data.get("agent"), "agent", schema.agent, measure, required=True)
        user = _entity(data.get("user"), "user", schema.user, measure, required=False)
        return agent, user, None
    if "agent" in data:
        raise RequestError("subject: a request is about an agent or another subject, not both")
    if not isinstance(raw, dict):
        raise RequestError('subject: expected an object such as {"type": "user", "id": "alice"}')
    subject = typed_subject(raw, schema, measure)
    if subject["type"] not in PERSONS:
        if "user" in data:
            raise RequestError(f"user: a {subject['type']} is no person and acts for no one")
        return None, None, subject
    raw_user = data.get("user", {})
    if not isinstance(raw_user, dict):
        raise RequestError("user: expected an object")
    user = typed_entity({"id": subject["id"], **raw_user}, "user", schema.user, measure)
    return None, user, subject


def typed_request(
    schema: SchemaModel,
    *,
    agent: Mapping[str, Any] | None,
    action: str,
    resource_type: str,
    resource_id: str,
    resource: Mapping[str, Any] | None = None,
    user: Mapping[str, Any] | None = None,
    chain: Sequence[str] | None = None,
    context: Mapping[str, Any] | None = None,
    bounds: Bounds = DEFAULT_BOUNDS,
    subject: Mapping[str, Any] | None = None,
    subject_at: str = "subject",
) -> Request:
    """A request from its parts in plain Python values (JSON values, or already typed
    ones such as :class:`Money`), typed by the schema within ``bounds``: how a door that
    has its question in pieces (the MCP proxy, Envoy's check, AuthZEN) builds its one
    :class:`Request`. Without an ``agent``, ``subject`` names whom it is about (a person,
    whose attributes ``user`` gives, or a declared subject type: :func:`typed_subject`);
    errors name their attributes as found at ``subject_at`` in the door's protocol."""
    measure = Measure(bounds)
    agent_values = None
    subject_values = None
    user_at = "user"
    if agent is not None:
        agent_values = typed_entity(agent, "agent", schema.agent, measure)
    else:
        subject_values = typed_subject(subject or {}, schema, measure, subject_at)
        user_at = subject_at
    user_values = None if user is None else typed_entity(user, user_at, schema.user, measure)
    if not isinstance(action, str) or not action:
        raise RequestError('action: required, a non-empty string such as "tool.call"')
    measure.text(action, *(chain or ()))
    typed_context = typed_attributes(context or {}, "context", schema.context, measure)
    agent_id = None if agent_values is None else agent_values["id"]
    return Request(
        agent_values,
        user_values,
        delegation_for(agent_id, user_values, None if chain is None else tuple(chain)),
        action,
        typed_resource(resource_type, resource_id, resource or {}, schema, measure),
        typed_context,
        measure.total,
        subject_values,
    )


def typed_subject(
    raw: Mapping[str, Any],
    schema: SchemaModel,
    measure: Measure | None = None,
    where: str = "subject",
) -> dict[str, Any]:
    """A subject that is no agent, typed: its ``type`` (a person's, :data:`PERSONS`, or
    one the schema declares with ``subject TYPE { … }``), its ``id``, and, for a declared
    type, its attributes (a person's are the user's), named at ``where`` in errors."""
    kind, ident = raw.get("type"), raw.get("id")
    if not isinstance(kind, str) or not kind:
        raise RequestError('subject.type: required, a non-empty string such as "user"')
    if kind == AGENT_SUBJECT:
        raise RequestError("subject.type: an agent is named as the request's agent")
    if kind not in PERSONS and kind not in schema.subjects:
        known = ", ".join(t for t in schema.subject_types() if t != AGENT_SUBJECT)
        raise RequestError(
            f"subject.type: {shown(kind)} is not a subject type the policies know "
            f"(here: {known}; another is declared in the schema: subject TYPE {{ … }})"
        )
    if not isinstance(ident, str) or not ident:
        raise RequestError("subject.id: required, a non-empty string")
    attributes = {key: value for key, value in raw.items() if key not in ("type", "id")}
    if attributes and kind in PERSONS:
        raise RequestError(f"subject.{next(iter(attributes))}: a person's attributes are user.*")
    if measure is not None:
        measure.text(kind, ident)
    if not attributes:
        return {"type": kind, "id": ident}
    types = {**schema.subject_attrs(), **schema.subjects[kind]}
    values = typed_attributes(attributes, where, types, measure)
    values["type"] = kind
    values["id"] = ident
    return values


def _entity(
    raw: Any, where: str, types: Mapping[str, Type], measure: Measure, *, required: bool
) -> dict[str, Any] | None:
    if raw is None:
        if required:
            raise RequestError(f"{where}: required, an object with at least an 'id'")
        return None
    return typed_entity(raw, where, types, measure)


def typed_entity(
    raw: Any, where: str, types: Mapping[str, Type], measure: Measure | None = None
) -> dict[str, Any]:
    """An agent's or user's attributes (with its ``id``), typed by the schema; with a
    ``measure``, within its bounds (a caller's; the directory's own facts are not)."""
    values = typed_attributes(raw, where, types, measure)
    ident = values.get("id")
    if not isinstance(ident, str) or not ident:
        raise RequestError(f"{where}.id: required, a non-empty string")
    return values


def _resource(raw: Any, schema: SchemaModel, measure: Measure) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise RequestError("resource: required, an object with 'type' and 'id'")
    attrs = raw.get("attributes", {})
    rest = {k: v for k, v in raw.items() if k not in ("type", "id", "attributes")}
    if not isinstance(attrs, dict):
        raise RequestError("resource.attributes: expected an object")
    return typed_resource(raw.get("type"), raw.get("id"), {**rest, **attrs}, schema, measure)


def typed_resource(
    rtype: Any,
    rid: Any,
    merged: Mapping[str, Any],
    schema: SchemaModel,
    measure: Measure | None = None,
) -> dict[str, Any]:
    """A resource's type, id and attributes, typed by the schema (within the bounds of
    ``measure``, when given)."""
    if not isinstance(rtype, str) or not rtype:
        raise RequestError('resource.type: required, a non-empty string such as "tool"')
    if not isinstance(rid, str) or not rid:
        raise RequestError("resource.id: required, a non-empty string")
    if "name" in merged:
        raise RequestError("resource.name: reserved; a tool's name is the resource id")
    if measure is not None:
        measure.text(rtype, rid)
    if not merged:
        return {"type": rtype, "id": rid}
    # A rule without a resource type reads resource attributes typed by any resource
    # type that declares them; type them the same way here, so no rule ever meets an
    # attribute of another type than the checker assumed.
    values = typed_attributes(merged, "resource", schema.request_types(rtype), measure)
    values["type"] = rtype
    values["id"] = rid
    return values


def typed_attributes(
    raw: Any, where: str, types: Mapping[str, Type], measure: Measure | None = None
) -> dict[str, Any]:
    """Attributes (a mapping of plain values) typed by the schema's declarations of them;
    with a ``measure``, each measured against the request's bounds before it is typed."""
    if raw.__class__ is not dict and not isinstance(raw, Mapping):  # a dict: no ABC check
        raise RequestError(f"{where}: expected an object")
    if measure is not None:
        measure.count(len(raw), where)
    out: dict[str, Any] = {}
    for key, value in raw.items():
        declared = types.get(key)
        # The common cases, without making the path only an error would name: a string
        # declared a string or not at all, and a risk level given by its name.
        if measure is None and value.__class__ is str:
            if declared is None or declared.name == "string":
                out[key] = value
                continue
            if declared.name == "risk":
                risk = RISKS.get(value)
                if risk is not None:
                    out[key] = risk
                    continue
        path = f"{where}.{key}"
        if value is None:
            raise RequestError(f"{path}: null is not a value; leave the attribute out instead")
        if measure is not None:
            measure.value(path, str(key), value, declared is not None)
        out[key] = convert(value, declared, path) if declared else untyped(value, path)
    return out


def convert(value: Any, declared: Type, path: str) -> Any:
    """One plain value (JSON, or already of a Tessera type) as the declared type, or a
    RequestError naming ``path``."""
    name = declared.name
    if value.__class__ is str:  # the common case first: a text form
        if name == "string":
            return value
        if name == "risk":
            risk = RISKS.get(value)
            if risk is not None:
                return risk
    if isinstance(value, _TYPED.get(name, ())):
        return _checked_typed(value, declared, path)
    if name == "string":
        if isinstance(value, str):
            return value
    elif name == "number":
        if isinstance(value, int | float) and not isinstance(value, bool):
            if isinstance(value, float) and not math.isfinite(value):
                raise RequestError(f"{path}: expected a finite number, got {value}")
            return value
    elif name == "bool":
        if isinstance(value, bool):
            return value
    elif name == "risk":
        if isinstance(value, str):
            return _parsed(Risk.parse, value, path)
    elif name == "money":
        money = _money(value, path)
        if declared.currency is not None and money.currency != declared.currency:
            raise RequestError(f"{path}: expected an amount in {declared.currency}, got {money}")
        return money
    elif name == "duration":
        if isinstance(value, int | float) and not isinstance(value, bool):
            try:
                seconds = float(value)
            except OverflowError:
                seconds = math.inf
            if not math.isfinite(seconds) or seconds < 0:
                raise RequestError(
                    f"{path}: a duration is a finite, non-negative number of seconds"
                )
            return Duration(seconds)
        if isinstance(value, str):
            return _parsed(Duration.parse, value, path)
    elif name in _TEXT_FORMS:
        if isinstance(value, str):
            return _parsed(_TEXT_FORMS[name], value, path)
    elif name in ("set", "list"):
        if isinstance(value, list):
            assert declared.arg is not None
            items = [convert(v, declared.arg, f"{path}[{i}]") for i, v in enumerate(value)]
            return frozenset(items) if name == "set" else tuple(items)
    elif name == "map" and isinstance(value, dict):
        assert declared.arg is not None
        return {str(k): convert(v, declared.arg, f"{path}.{k}") for k, v in value.items()}
    raise RequestError(f"{path}: expected {_described(declared)}, got {_json_type(value)}")


typed_value = convert

RISKS = {risk.name: risk for risk in Risk}  # risk levels by name, read without parsing

# Types whose JSON form is a text to parse.
_TEXT_FORMS: dict[str, Callable[[str], Any]] = {
    "time": parse_time,
    "date": parse_date,
    "ip": parse_ip,
}

# Values already of the declared type (a PEP that holds Money, a set of consents).
_TYPED: dict[str, tuple[type, ...]] = {
    "risk": (Risk,),
    "money": (Money,),
    "duration": (Duration,),
    "time": (datetime,),
    "date": (date,),
    "ip": (IPv4Address, IPv6Address),
    "set": (frozenset, set, tuple),
    "list": (tuple,),
}


def _checked_typed(value: Any, declared: Type, path: str) -> Any:
    name = declared.name
    if name in ("set", "list"):
        assert declared.arg is not None
        items = [convert(v, declared.arg, f"{path}[{i}]") for i, v in enumerate(value)]
        return frozenset(items) if name == "set" else tuple(items)
    if name == "money" and declared.currency is not None and value.currency != declared.currency:
        raise RequestError(f"{path}: expected an amount in {declared.currency}, got {value}")
    if name == "money":
        _parsed(parse_amount, value.amount, path)  # money made in code meets the grammar too
    if name == "time" and value.tzinfo is None:
        raise RequestError(f"{path}: a time needs a time zone")
    if name == "date" and isinstance(value, datetime):
        raise RequestError(f"{path}: expected a date (2027-03-31), got a time")
    return value


def _parsed(parse: Callable[[Any], Any], text: Any, path: str) -> Any:
    """A value parsed from its text form, or a RequestError naming ``path``."""
    try:
        return parse(text)
    except ValueError as exc:
        raise RequestError(f"{path}: {exc}") from None


def _money(value: Any, path: str) -> Money:
    """Money as "200 USD" or {"amount": "200", "currency": "USD"} (the amount text or a
    JSON number), read by the one amount grammar (:func:`parse_amount`)."""
    if isinstance(value, str):
        money: Money = _parsed(parse_money, value, path)
        return money
    if isinstance(value, dict) and set(value) == {"amount", "currency"}:
        currency = value["currency"]
        if not isinstance(currency, str) or not CURRENCY.fullmatch(currency):
            raise RequestError(f"{path}.currency: a three-letter code in capitals, such as USD")
        amount: Decimal = _parsed(parse_amount, value["amount"], f"{path}.amount")
        return Money(amount, currency)
    raise RequestError(
        f'{path}: expected money, "200 USD" or {{"amount": "200", "currency": "USD"}}'
    )


def untyped(value: Any, path: str) -> Any:
    """Attributes no schema declares pass through as plain, immutable JSON values."""
    if isinstance(value, list):
        return tuple(untyped(v, f"{path}[{i}]") for i, v in enumerate(value))
    if isinstance(value, dict):
        return {str(k): untyped(v, f"{path}.{k}") for k, v in value.items()}
    if value is None:
        raise RequestError(f"{path}: null is not a value; leave the attribute out instead")
    return value


def _described(declared: Type) -> str:
    examples = {
        "risk": 'a risk level ("low", "medium", "high" or "critical")',
        "duration": 'a duration ("30s", "5m") or a number of seconds',
        "time": 'an RFC 3339 time ("2026-01-31T09:00:00Z")',
        "date": 'a date ("2027-03-31")',
        "ip": 'an IP address ("10.1.2.3")',
        "set": f"a list of {declared.arg}",
        "list": f"a list of {declared.arg}",
        "map": f"an object of {declared.arg}",
        "bool": "true or false",
    }
    return examples.get(declared.name, f"a {declared.name}")


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return f"the number {value}"
    if isinstance(value, str):
        return f"the string {shown(value)}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
