"""The per-call plan: what a JSON-RPC message or batch asks, and what the PDP says to it.

Each ``tools/call``, ``prompts/get`` and ``resources/read`` is decided (:mod:`decisions`):
what is allowed is forwarded, what is denied is answered here, with ``-32003``, or with
``-32042`` and a URL to the issuer's consent page when the user can meet every
obligation of the deny and one is a consent (:mod:`consent`), and a deny awaiting
step-ups only is noted (:attr:`Plan.step_up`, the levels a token can be got at:
:meth:`ConsentFlow.grantable`) so that a lone call is answered with RFC 9470's challenge
(:func:`challenges.insufficient_user_authentication`); a call without the name it
is about, or with arguments the context cannot be made of, gets ``-32602``. Everything
else is forwarded, and a ``…/list`` request is marked so that its answer keeps only what
the caller may use, and what a call to would ask its user's consent for, marked so
(:meth:`Planner.filtered`). The decision ids go with the answer.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pep.client import Verdict
from pep.mcp_proxy.config import ProxyConfig, Upstream
from pep.mcp_proxy.consent import ConsentFlow, marked, obligations_json
from pep.mcp_proxy.decisions import (
    DECIDED,
    LISTED,
    TOOL,
    ArgumentError,
    Decider,
    Kind,
    LocalDecider,
    mapped_context,
)
from pep.mcp_proxy.jsonrpc import (
    FORBIDDEN,
    INVALID_REQUEST,
    Message,
    dumps,
    error,
    is_request,
)
from pep.mcp_proxy.metrics import ProxyMetrics
from pep.mcp_proxy.tokens import Caller

INVALID_PARAMS = -32602


def invalid_params(id: Any, problem: str, argument: str | None = None) -> Message:
    """JSON-RPC 2.0 §5.1 ``-32602 Invalid params``: what is wrong, and the argument."""
    data = None if argument is None else {"argument": argument}
    return error(id, INVALID_PARAMS, f"Invalid params: {problem}", data)


def id_key(value: Any) -> str:
    """An id as JSON-RPC peers match it: a number by its value (1 and 1.0 are one id to
    a JavaScript server, as are integers past 2**53), anything else by its JSON text."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return f"number {float(value)!r}"
        except OverflowError:
            return f"number {value!r}"
    return json.dumps(value)


@dataclass
class Plan:
    """What one POST becomes: local answers, messages to forward, lists to filter."""

    local: list[Message] = field(default_factory=list)
    forward: list[Message] = field(default_factory=list)
    filters: dict[str, Kind] = field(default_factory=dict)
    decisions: list[str] = field(default_factory=list)
    step_up: tuple[str, ...] = ()  # the levels of the last deny that awaits step-ups only


def step_up_only(obligations: Sequence[tuple[str, str]]) -> tuple[str, ...]:
    """The levels a deny awaits when it awaits step-ups and nothing else (RFC 9470: a
    stronger authentication would pass), in order, once each; none otherwise."""
    levels = tuple(dict.fromkeys(value for kind, value in obligations if kind == "step_up"))
    if levels and all(kind == "step_up" for kind, _ in obligations):
        return levels
    return ()


def tool_scopes(upstream: Upstream, messages: list[Message]) -> list[str]:
    """The scopes the ``tools/call`` messages need beyond the upstream's, in order, once."""
    needed: list[str] = []
    for message in messages:
        if message.get("method") == "tools/call":
            params = message.get("params")
            name = params.get("name") if isinstance(params, dict) else None
            for scope in upstream.tool_scopes.get(str(name), ()):
                if scope not in needed:
                    needed.append(scope)
    return needed


def unforwardable(messages: list[Message]) -> tuple[int, str] | None:
    """A message the proxy cannot decide and answer as it must: a call that is decided
    but sent as a notification (no id, so no answer for a deny, and the upstream might
    act on it), or a request id given twice in a batch (answers are matched by id)."""
    ids = set()
    for message in messages:
        method = message.get("method")
        if method in DECIDED and "id" not in message:
            return INVALID_REQUEST, f"{method} is a request: it needs an id"
        if is_request(message):
            key = id_key(message["id"])
            if key in ids:
                return (
                    INVALID_REQUEST,
                    f"the batch gives the request id {dumps(message['id']).decode()} twice",
                )
            ids.add(key)
    return None


class Planner:
    """Decides the calls of each message or batch, and filters the lists answered to it."""

    def __init__(
        self, config: ProxyConfig, decider: Decider | LocalDecider, metrics: ProxyMetrics
    ) -> None:
        self.config = config
        self.decider = decider
        self.metrics = metrics
        self.consent = ConsentFlow(config)

    async def plan(self, upstream: Upstream, caller: Caller, messages: list[Message]) -> Plan:
        """Each message decided, answered here, or forwarded, in the order given."""
        plan = Plan()
        for message in messages:
            method = message.get("method")
            if not is_request(message) or not isinstance(method, str):
                plan.forward.append(message)
                continue
            kind = DECIDED.get(method)
            if kind is None:
                listed = LISTED.get(method)
                if listed is not None:
                    plan.filters[id_key(message["id"])] = listed
                plan.forward.append(message)
                continue
            params = message.get("params")
            params = params if isinstance(params, dict) else {}
            name = params.get(kind.name_key)
            if not isinstance(name, str) or not name:
                plan.local.append(
                    error(message["id"], INVALID_PARAMS, f"{method} needs params.{kind.name_key}")
                )
                continue
            arguments = params.get("arguments")
            try:
                context = (
                    mapped_context(
                        upstream.context, arguments if isinstance(arguments, dict) else {}
                    )
                    if kind is TOOL
                    else {}
                )
            except ArgumentError as exc:
                plan.local.append(invalid_params(message["id"], str(exc), exc.argument))
                continue
            verdict = await self.decider.decide(caller, upstream, method, kind, name, context)
            if verdict.refused:  # the PDP will not decide the call as asked: bad params
                plan.local.append(invalid_params(message["id"], verdict.error or ""))
                continue
            self.metrics.decided(upstream.name, method, verdict.allow)
            if verdict.decision_id:
                plan.decisions.append(verdict.decision_id)
            if verdict.allow:
                plan.forward.append(message)
            else:
                plan.local.append(self._denied(message["id"], caller, method, name, verdict))
                plan.step_up = self.consent.grantable(step_up_only(verdict.obligations))
        return plan

    def _denied(self, id: Any, caller: Caller, method: str, name: str, verdict: Verdict) -> Message:
        """The answer to a denied call: the consents to ask the user for first
        (``-32042``, :mod:`consent`), or the deny with its reasons and obligations
        (``-32003``)."""
        if self.consent.consents_to_ask(caller, verdict.obligations):
            return self.consent.elicitation(id, caller, method, name, verdict)
        data = {
            "decision_id": verdict.decision_id,
            "reasons": list(verdict.reasons),
            "obligations": obligations_json(verdict.obligations),
        }
        return error(id, FORBIDDEN, f"{method} {name!r} is not allowed", data)

    async def filtered(self, upstream: Upstream, caller: Caller, plan: Plan, message: Any) -> Any:
        """A ``…/list`` result with only the items the caller may use, and those a call
        to would ask its user for consents first, marked so (:mod:`consent`)."""
        if not isinstance(message, dict) or "id" not in message:
            return message
        kind = plan.filters.get(id_key(message["id"]))
        result = message.get("result")
        if kind is None or not isinstance(result, dict):
            return message
        items = result.get(kind.list_key)
        if not isinstance(items, list):
            return message
        names = [str(i.get(kind.item_key)) for i in items if isinstance(i, dict)]
        allowed, marks = await self._listable(upstream, caller, kind, names)
        kept = []
        for item in items:
            name = str(item.get(kind.item_key)) if isinstance(item, dict) else None
            if name in allowed or name in marks:
                kept.append(marked(item, marks.get(str(name))))
        return {**message, "result": {**result, kind.list_key: kept}}

    async def _listable(
        self, upstream: Upstream, caller: Caller, kind: Kind, names: Sequence[str]
    ) -> tuple[frozenset[str], dict[str, dict[str, str]]]:
        """The names the caller may use, and the marks of those whose call would ask the
        user for consents first: as the caller is (awaiting only consents), or as it
        would be after a step-up the issuer can do (awaiting only consents then)."""
        listed = await self.decider.listed(caller, upstream, kind, names)
        if not self.consent.may_ask(caller):
            return listed.allowed, {}
        marks: dict[str, dict[str, str]] = {name: {} for name in listed.consent_required}
        rest = [n for n in names if n not in listed.allowed and n not in marks]
        for acr, stronger in self.consent.stepped_up(caller):
            if not rest:
                break
            then = await self.decider.listed(stronger, upstream, kind, rest)
            marks.update((name, {"stepUp": acr}) for name in then.consent_required)
            rest = [n for n in rest if n not in marks]
        return listed.allowed, marks
