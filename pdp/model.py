"""What is decided: the typed :class:`Request` every door builds once, and the :class:`Decision`.

The engine, every protocol door (gRPC, AuthZEN, Envoy ext_authz, the MCP proxy), the audit
trail and the admin tools share these types. They hold plain, typed Python values (risk
levels, money, durations, frozensets); no protobuf message and no JSON document travels
inside the decision plane. Doors convert their wire form straight into a :class:`Request`
and build their answer straight from a :class:`Decision`.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Literal, NamedTuple

from pdp.errors import PdpError
from pdp.lang.ast import CALL_ACTION, TOOL_TYPE, Obligation
from pdp.lang.schema import AGENT_SUBJECT
from pdp.lang.values import Duration, Money, Risk

__all__ = [
    "CALL_ACTION",
    "DEFAULT_DENY_REASON",
    "TOOL_TYPE",
    "Answer",
    "CountedDecision",
    "Decision",
    "LimitUse",
    "Obligation",
    "Request",
    "RequestError",
    "RuleError",
    "combine",
    "delegation_for",
    "json_value",
]


class RequestError(PdpError, ValueError):
    """A request that cannot be decided on: the message names the field and the problem."""


class Request:
    """One authorization question, in typed values. Build it with :meth:`build`.

    Its subject is an agent (``agent``; then ``user`` is the person it acts for, if any),
    or, with no agent, a person (``user``) or a subject of a type the schema declares:
    ``subject`` says which, as the caller named it (``subject.type``, ``subject.id``).

    ``time`` is the decision time the request carries (a replayed or what-if question),
    None for "when it is decided". ``epoch`` and ``now`` belong to the engine: before it
    evaluates rules that read ``now`` it sets ``epoch`` to the decision time in seconds
    (``time``'s, else its clock's) and ``now`` to ``time``; the first rule to read ``now``
    as a time makes it one from ``epoch``."""

    __slots__ = (
        "_subject",
        "_tool",
        "action",
        "agent",
        "agent_id",
        "context",
        "delegation",
        "epoch",
        "now",
        "resource",
        "size",
        "time",
        "user",
        "user_id",
    )

    agent: dict[str, Any] | None
    user: dict[str, Any] | None
    delegation: dict[str, Any]
    action: str
    resource: dict[str, Any]
    context: dict[str, Any]
    time: datetime | None
    now: datetime | None
    epoch: float | None

    def __init__(
        self,
        agent: dict[str, Any] | None,
        user: dict[str, Any] | None,
        delegation: dict[str, Any],
        action: str,
        resource: dict[str, Any],
        context: dict[str, Any],
        size: int = 0,
        subject: dict[str, Any] | None = None,
        time: datetime | None = None,
    ) -> None:
        self.agent = agent
        self.user = user
        self.delegation = delegation
        self.action = action
        self.resource = resource
        self.context = context
        # How large the request was as its door read it (bytes; 0 when not measured): what
        # its audit record weighs in the writer's queue until the record is built.
        self.size = size
        self.time = time
        self.now = time
        self.epoch: float | None = None
        if agent is None:
            if subject is None:
                raise RequestError("a request is about an agent or names another subject")
            self.agent_id: str | None = None
        else:
            self.agent_id = str(agent.get("id", ""))
        self.user_id: str | None = None if user is None else str(user.get("id", ""))
        # None for an agent's request: :attr:`subject` is then made when a rule reads it.
        self._subject = subject
        self._tool: dict[str, Any] | Literal[False] | None = False  # False: not made yet

    @property
    def tool(self) -> dict[str, Any] | None:
        """``tool.name`` and the tool's attributes when the resource is a tool, else None;
        made when a rule first reads it (most decide on the tool's name from the index)."""
        tool = self._tool
        if tool is False:
            resource = self.resource
            tool = None
            if resource.get("type") == TOOL_TYPE:
                tool = {**resource, "name": resource.get("id")}
            self._tool = tool
        return tool

    @property
    def subject(self) -> dict[str, Any]:
        """Whom the request is about, as its caller named them: ``type`` ("agent", "user",
        "identity" or a type the schema declares) and ``id``, and a declared type's
        attributes. An agent's: its type and its id."""
        subject = self._subject
        if subject is None:
            subject = self._subject = {"type": AGENT_SUBJECT, "id": self.agent_id}
        return subject

    @classmethod
    def build(
        cls,
        *,
        agent: dict[str, Any] | None,
        action: str,
        resource_type: str,
        resource_id: str,
        resource: dict[str, Any] | None = None,
        user: dict[str, Any] | None = None,
        chain: tuple[str, ...] | None = None,
        context: dict[str, Any] | None = None,
        subject: dict[str, Any] | None = None,
        time: datetime | None = None,
    ) -> Request:
        """A request from already-typed values (tests, the gRPC adapter)."""
        return cls(
            agent,
            user,
            delegation_for(None if agent is None else agent.get("id"), user, chain),
            action,
            {**(resource or {}), "type": resource_type, "id": resource_id},
            dict(context or {}),
            subject=subject,
            time=time,
        )

    def to_json(self) -> dict[str, Any]:
        """The request back in its JSON form (for traces and audit)."""
        data = {
            "agent": json_value(self.agent) if self.agent is not None else None,
            "user": json_value(self.user) if self.user is not None else None,
            "delegation": json_value(self.delegation),
            "action": self.action,
            "resource": json_value(self.resource),
            "context": json_value(self.context),
        }
        if self.agent is None:
            data["subject"] = json_value(self.subject)
        if self.time is not None:
            data["time"] = json_value(self.time)
        return data


def delegation_for(
    agent_id: str | None, user: Mapping[str, Any] | None, chain: tuple[str, ...] | None
) -> dict[str, Any]:
    """Delegation facts: delegated when an agent acts for a user; depth is the actor
    chain's length. No agent (``agent_id`` None): nothing is delegated."""
    if agent_id is None:
        if chain:
            raise RequestError("delegation.chain: only an agent acts through other agents")
        return {"delegated": False, "depth": 0, "chain": ()}
    if chain is None:
        chain = (agent_id,) if (user is not None and agent_id) else ()
    delegated = user is not None
    return {"delegated": delegated, "depth": len(chain), "chain": tuple(chain)}


class RuleError(NamedTuple):
    """A rule whose evaluation failed; a forbid that errors denies, a permit does not apply."""

    rule: str
    effect: str
    message: str


class LimitUse(NamedTuple):
    """One ``limit`` a decision checked, as the counter store found it: the audit record
    keeps it, so a past decision can be explained with the usage it was made on.

    ``position`` is the limit's place among its rule's limits (0 first); ``text`` the limit
    as written (``sum <= 5000 USD per 24h per agent``); ``window`` in seconds; ``cap`` and
    ``amount`` (what this call adds) in the limit's terms, a count or a decimal. ``used``
    is what the window held before this call, read in the same atomic step as the check,
    or None when the store read nothing for it (a retry of a call counted before, or a
    limit after one already reached)."""

    rule: str
    position: int
    text: str
    window: float
    cap: Decimal | int
    amount: Decimal | int
    used: Decimal | int | None


class Decision(NamedTuple):
    """The answer to one request. Immutable; cheap to build on the hot path."""

    allow: bool
    obligations: tuple[Obligation, ...]
    decided_by: tuple[str, ...]
    reasons: tuple[str, ...]
    errors: tuple[RuleError, ...]
    bundle_version: str

    @property
    def limits(self) -> tuple[LimitUse, ...]:
        """The limits the counter store was asked about, with the usage it found: none
        for a decision no limit took part in."""
        return ()

    def counted(self, limits: tuple[LimitUse, ...]) -> Decision:
        """This decision, made on the limit usage ``limits`` (:class:`CountedDecision`)."""
        return CountedDecision(self, limits) if limits else self

    @property
    def awaits_consent(self) -> bool:
        """A deny that only a user's consent stands in the way of: it carries obligations,
        and all of them are consents."""
        return (
            not self.allow
            and bool(self.obligations)
            and all(o.kind == "consent" for o in self.obligations)
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "decision": "allow" if self.allow else "deny",
            "obligations": [
                {"kind": o.kind, "value": o.value, "text": str(o)} for o in self.obligations
            ],
            "decided_by": list(self.decided_by),
            "reasons": list(self.reasons),
            "errors": [e._asdict() for e in self.errors],
            "bundle_version": self.bundle_version,
        }


class CountedDecision(Decision):
    """A decision with the limit usage it was made on (:attr:`limits`, for its audit
    record). It is equal to, and hashes as, the same answer without it: the per-answer
    caches and counts of the doors and the metrics share one entry for every call a rule
    decides alike, whatever each call found in the counters."""

    _limits: tuple[LimitUse, ...]

    def __new__(cls, decision: Decision, limits: tuple[LimitUse, ...]) -> CountedDecision:
        made = tuple.__new__(cls, decision)
        made._limits = limits
        return made

    def __getnewargs__(self) -> tuple[Any, ...]:
        return (Decision(*self), self._limits)

    @property
    def limits(self) -> tuple[LimitUse, ...]:
        return getattr(self, "_limits", ())  # ``_replace`` makes one without


DEFAULT_DENY_REASON = "no permit applies (default deny)"


def combine(
    version: str,
    forbidden: list[str],
    forbid_errors: list[RuleError],
    applied: list[str],
    pending: list[tuple[str, tuple[Obligation, ...]]],
    permit_errors: list[RuleError],
    over_limit: list[tuple[str, str]],
) -> Decision:
    """Combine rule outcomes: any forbid (matched or failed) denies; then any applying permit
    allows; then a permit waiting on obligations denies carrying them; else default deny."""
    errors = tuple(forbid_errors) + tuple(permit_errors)
    if forbidden or forbid_errors:
        reasons = [f"forbid {rule} matched" for rule in forbidden]
        reasons += [f"forbid {e.rule} failed, so it denies: {e.message}" for e in forbid_errors]
        decided = tuple(forbidden) + tuple(e.rule for e in forbid_errors)
        return Decision(False, (), decided, tuple(reasons), errors, version)
    if applied:
        reasons = [f"permit {rule} applies" for rule in applied]
        return Decision(True, (), tuple(applied), tuple(reasons), errors, version)
    extra = [f"permit {e.rule} failed and does not apply: {e.message}" for e in permit_errors]
    extra += [f"permit {rule} is over its limit: {text}" for rule, text in over_limit]
    if pending:
        obligations: list[Obligation] = []
        reasons = []
        for rule, needs in pending:
            reasons.append(f"permit {rule} requires " + ", ".join(str(o) for o in needs))
            obligations.extend(o for o in needs if o not in obligations)
        decided = tuple(rule for rule, _ in pending)
        return Decision(False, tuple(obligations), decided, tuple(reasons + extra), errors, version)
    return Decision(False, (), (), (DEFAULT_DENY_REASON, *extra), errors, version)


class Answer(NamedTuple):
    """A decision as one caller got it: the decision, the id of its audit record, and
    whether the same question gets the same answer until the policies change (no limit
    could decide it), so that a PEP may cache it briefly."""

    decision: Decision
    decision_id: str
    cacheable: bool


def json_value(value: Any) -> Any:
    """A typed value back as plain JSON (sets sorted, money and durations as text)."""
    if isinstance(value, dict):
        return {k: json_value(v) for k, v in value.items()}
    if isinstance(value, frozenset):
        return sorted(json_value(v) for v in value)
    if isinstance(value, tuple):
        return [json_value(v) for v in value]
    if isinstance(value, Risk):
        return value.name
    if isinstance(value, Money | Duration):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, bool | int | float | str):
        return value
    return str(value)
