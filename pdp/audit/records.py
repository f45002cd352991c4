"""What goes on the audit trails: one plain JSON object per event.

A decision record says who (agent, the user it acts for, the chain of actors; for a
subject that is no agent, ``agent`` is null and ``subject`` names it as the caller did),
what (action, resource, the request's context), the answer (allow, the deciding rules,
obligations, reasons), when, which PEP asked, how long it took, and the decision id and
bundle version that tie it to the answer the PEP got.

What a record keeps of a request is bounded: an id, an action, a reason or a context
value whose text is longer than :data:`VALUE_BYTES` is kept as a string of its first
:data:`HEAD` characters and a marker with its full length and SHA-256
(:func:`bounded`), so one large request cannot make a large record, and whoever holds the
value can still show it was the one asked. The record is hashed into the chain as stored,
so the chain verifies as it always does.

A decision a ``limit`` took part in also keeps, for each limit the counter store was
asked about (at most :data:`LIMITS`), the rule, the limit, its cap and window, what the
call would add and what the window held before it (:func:`limit_record`): enough to
explain later why a cap allowed or denied, whatever the counters hold by then.

A token record says which grant minted an access token, for which agent, user and client,
with which scopes and audience, and its ``jti`` and expiry (never the token itself).
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson

from pdp.lang.values import Money
from pdp.model import Answer, Decision, LimitUse, Request, json_value

VALUE_BYTES = 1 << 10  # the longest value (its UTF-8 text) a record keeps whole
HEAD = 256  # the characters of a longer value the record keeps
LIMITS = 16  # the limits one record keeps at most (the first asked about)


def decision_record(
    request: Request, answer: Answer, seconds: float, pep: str, when: float | None = None
) -> dict[str, Any]:
    """The agent trail's record of one decision, made at ``when`` (epoch seconds; now by
    default): the request as its caller asked it, whichever door it came through."""
    resource = request.resource
    user = request.user_id
    agent = request.agent_id
    asked: dict[str, Any] = {
        "agent": None if agent is None else bounded(agent),
        "user": None if user is None else bounded(user),
        "delegation": [bounded(actor) for actor in request.delegation["chain"]],
        "action": bounded(request.action),
        "resource": {"type": bounded(resource["type"]), "id": bounded(resource["id"])},
        "context": {
            bounded(key): bounded(record_value(value))
            for key, value in request.context.items()
            if value or key != "consents"  # no consents granted says nothing
        },
    }
    if agent is None:  # a person, or another subject: whom the caller named, as named
        subject = request.subject
        asked["subject"] = {"type": bounded(subject["type"]), "id": bounded(subject["id"])}
    return decided(asked, answer.decision, answer.decision_id, seconds, pep, when)


def record_value(value: Any) -> Any:
    """A typed value as the record keeps it: plain JSON, money as its decimal text and
    currency (no float rounding, and the amount as it was asked)."""
    if isinstance(value, Money):
        return {"amount": format(value.amount, "f"), "currency": value.currency}
    if isinstance(value, dict):
        return {k: record_value(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [record_value(v) for v in value]
    return json_value(value)


def bounded(value: Any) -> Any:
    """``value`` as a record keeps it: whole when its text (a string's own, a list's or
    map's canonical JSON) is at most :data:`VALUE_BYTES` long, else the string
    ``<first HEAD characters>…[truncated: <bytes> bytes, sha256 <hex of the bytes>]``."""
    if isinstance(value, str):
        if len(value) * 4 <= VALUE_BYTES:  # UTF-8 takes at most 4 bytes a character
            return value
        data = value.encode("utf-8", "surrogatepass")
        return value if len(data) <= VALUE_BYTES else _cut(value, data)
    if isinstance(value, list | dict):
        data = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
        return value if len(data) <= VALUE_BYTES else _cut(data.decode(), data)
    return value


def _cut(text: str, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    return f"{text[:HEAD]}…[truncated: {len(data)} bytes, sha256 {digest}]"


def decided(
    asked: dict[str, Any],
    decision: Decision,
    decision_id: str,
    seconds: float,
    pep: str,
    when: float | None = None,
) -> dict[str, Any]:
    """The agent trail's record of one decision: ``asked`` (completed in place) holds the
    request's agent, user, delegation, action, resource (type and id) and context."""
    asked["kind"] = "decision"
    asked["at"] = _now() if when is None else utc_text(when)
    asked["decision_id"] = decision_id
    asked["allow"] = decision.allow
    asked["decided_by"] = list(decision.decided_by)
    asked["obligations"] = [f"{o.kind}:{o.value}" for o in decision.obligations]
    asked["reasons"] = [bounded(reason) for reason in decision.reasons]  # may name an id
    asked["bundle_version"] = decision.bundle_version
    if decision.limits:
        asked["limits"] = [limit_record(use) for use in decision.limits[:LIMITS]]
        if len(decision.limits) > LIMITS:
            asked["limits_left_off"] = len(decision.limits) - LIMITS
    asked["pep"] = pep
    asked["latency_us"] = round(seconds * 1e6, 1)
    return asked


def limit_record(use: LimitUse) -> dict[str, Any]:
    """One limit as a decision record keeps it: ``rule``, ``limit`` (its place in the
    rule, 0 first), ``text`` as written, ``window`` in seconds, and ``cap``, ``amount``
    (what the call adds) and ``used`` (what the window held before the call; null when
    the store read nothing for it): a count's as numbers, a sum's as exact decimal text,
    whichever store counted it."""
    count = isinstance(use.cap, int) and isinstance(use.amount, int)
    shown = _count if count else _decimal
    return {
        "rule": bounded(use.rule),
        "limit": use.position,
        "text": bounded(use.text),
        "window": use.window,
        "cap": shown(use.cap),
        "amount": shown(use.amount),
        "used": None if use.used is None else shown(use.used),
    }


def _count(value: Any) -> Any:
    return value


def _decimal(value: Any) -> str:
    """A sum as its exact text: no exponent, no trailing zeros (``1000.5``); a float as
    its shortest text."""
    exact = Decimal(str(value)) if isinstance(value, float) else Decimal(value)
    return format(exact.normalize(), "f")


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


_second: tuple[int, str] = (-1, "")


def utc_text(when: float) -> str:
    """Epoch seconds as RFC 3339 UTC with microseconds, as ``datetime.isoformat`` writes
    it; the date and time of day are formatted once per second."""
    global _second
    whole = int(when)
    if _second[0] != whole:
        _second = (whole, datetime.fromtimestamp(whole, UTC).strftime("%Y-%m-%dT%H:%M:%S"))
    micros = round((when - whole) * 1e6)
    if micros >= 1_000_000:  # rounding reached the next second
        return utc_text(whole + 1)
    return f"{_second[1]}.{micros:06d}+00:00"
