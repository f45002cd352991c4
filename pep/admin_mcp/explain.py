"""A recorded decision explained: what the decision point answered, from its audit record,
and why, rule by rule, when the record's facts reproduce it.

The explanation's decision is always the recorded one, with the recorded reasons,
obligations and limit usage (docs/audit.md). The rule-by-rule trace is given as the
reason only when it reproduces the record: the policies in force now are the bundle that
decided, and the interpreter, deciding the rebuilt request at the recorded time with the
recorded limit usage (:class:`RecordedUsage`, not today's counters, which have moved on),
reaches the recorded answer. Otherwise the explanation says why no trace is shown and
what the record does not tell. Apart from it, ``today`` says how the policies in force
now decide the same request, with the agent and user as the directory holds them now.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

from issuer.store import Store
from pdp.catalog import Resources
from pdp.counters import Amount, Charge, CounterError, Tally
from pdp.engine import Bundle
from pdp.explain import render_explanation, render_rules
from pdp.interpreter import Explanation, Interpreter
from pdp.lang import ast
from pdp.lang.runtime import limit_key_prefix
from pdp.model import Decision, Request, RequestError
from pdp.subjects import PERSONS
from pep.admin_mcp.errors import AdminError
from pep.admin_mcp.replay import Replay, find_decision, rebuilt, record_epoch

DIRECTORY = "directory"  # the deciding "rule" of a refusal by the directory
NOT_KEPT = "the record keeps no limit usage: it was made before decision records kept it"
NOT_READ = (
    "the decision point read no usage for it (a retry of a call counted before, or an "
    "earlier limit of the rule was already reached)"
)
NOT_CHECKED = "the decision point did not check this limit for this decision"


class RecordedUsage:
    """Limit usage as a decision record keeps it, for the interpreter to explain that
    decision with: a :class:`~pdp.counters.CounterStore` that answers :meth:`usage` from
    the record and never charges. A limit the record does not tell is a
    :class:`~pdp.counters.CounterError` saying why, noted in :attr:`unknown`."""

    name = "the limit usage the decision record keeps"
    errors = 0

    def __init__(self, record: Mapping[str, Any], rules: Sequence[ast.Rule]) -> None:
        self.kept = isinstance(record.get("limits"), list)
        self.unknown: list[str] = []
        by_id = {rule.id: rule for rule in rules}
        self._entries: dict[str, Mapping[str, Any]] = {}
        for entry in record.get("limits") or ():
            if not isinstance(entry, dict):
                continue
            rule, position = by_id.get(str(entry.get("rule"))), entry.get("limit")
            if rule is not None and isinstance(position, int) and 0 <= position < len(rule.limits):
                scope = rule.limits[position].scope
                self._entries[limit_key_prefix(rule.id, position, scope)] = entry

    def usage(self, charge: Charge, now: float) -> Amount:
        entry = self._entries.get(charge.key.removesuffix(charge.subject))
        if entry is None:
            raise self._unknown(NOT_KEPT if not self.kept else NOT_CHECKED)
        try:
            window = float(entry["window"])
            used = None if entry.get("used") is None else recorded_amount(entry["used"])
        except (KeyError, TypeError, ValueError, InvalidOperation):
            raise self._unknown("the record's usage of this limit does not read") from None
        if window != charge.window:  # a new cap counts the same usage; a new window not
            raise self._unknown(f"the limit was {entry.get('text')!r} when it was decided")
        if used is None:
            raise self._unknown(NOT_READ)
        return used

    def _unknown(self, why: str) -> CounterError:
        if why not in self.unknown:
            self.unknown.append(why)
        return CounterError(why)

    def charge(
        self, charges: tuple[Charge, ...], now: float, *, record: bool = True, once: str = ""
    ) -> int:
        raise CounterError("a recorded decision is explained, never charged again")

    def tally(
        self, charges: tuple[Charge, ...], now: float, *, record: bool = True, once: str = ""
    ) -> Tally:
        raise CounterError("a recorded decision is explained, never charged again")

    def close(self) -> None:
        """Nothing to let go of."""


def recorded_amount(value: Any) -> Amount:
    """A count or a decimal text of a record's limit, back as the store counts it."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"not an amount: {value!r}")
    return value if isinstance(value, int) else Decimal(value)


def explain_decision(store: Store, bundle: Bundle, decision_id: str) -> dict[str, Any]:
    """A past decision by its id, explained with ``bundle``, the policies in force now."""
    found = find_decision(store, decision_id)
    if found is None:
        raise AdminError(
            f"no decision {decision_id!r} on the agent trail; decision ids are the 32 hex "
            "digits the PDP answered with"
        )
    seq, record = found
    replay = Replay(store)
    resources = Resources(bundle, replay.directory)  # the catalog, as the PDP's fills it
    lines = recorded_lines(record)
    unknown: list[str] = []
    reproduced = False
    if record.get("decided_by") == [DIRECTORY]:
        lines.append("the directory refused the request before any policy ran")
        reproduced = True
    else:
        usage = RecordedUsage(record, bundle.rules)
        asked = replay.request(record, recorded_consents=True)
        then = trace(bundle, resources, asked, record, usage)
        same_bundle = record.get("bundle_version") == bundle.version
        reproduced = same_bundle and isinstance(then, Explanation) and same(then.decision, record)
        if isinstance(then, Explanation) and reproduced:
            lines += ["", *render_rules(then)]
        else:
            lines += ["", "no rule-by-rule account: " + why_not(then, record, bundle)]
        unknown = usage.unknown + who_unknown(replay, record)
    return {
        "seq": seq,
        "record": record,
        "decision": "allow" if record.get("allow") is True else "deny",
        "explanation": "\n".join(lines),
        "reproduced": reproduced,
        "unknown": unknown,
        "bundle": bundle_note(record, bundle),
        "today": today(bundle, resources, replay, record),
    }


def who_unknown(replay: Replay, record: Mapping[str, Any]) -> list[str]:
    """What the record does not tell about who asked, read otherwise to rebuild it."""
    subject = record.get("subject") if record.get("agent") is None else None
    if isinstance(subject, dict) and replay.person(record) is None:
        named = f"{subject.get('type')} {subject.get('id')!r}"
        held = ", and the directory holds no such user" if subject.get("type") in PERSONS else ""
        return [
            f"the properties sent with the {named}: the record does not keep them{held}; "
            "read as none"
        ]
    if record.get("user"):
        return ["the user's roles and groups then: read as the directory holds them now"]
    return []


def recorded_lines(record: Mapping[str, Any]) -> list[str]:
    """The recorded answer: decision, reasons, obligations, and the limits as checked."""
    allow = record.get("allow") is True
    lines = [
        f"decision: {'ALLOW' if allow else 'DENY'}  (as recorded at {record.get('at')}, "
        f"bundle {record.get('bundle_version')})"
    ]
    lines += [f"  because {reason}" for reason in record.get("reasons") or ()]
    lines += [f"  obligation: {obligation}" for obligation in record.get("obligations") or ()]
    limits = record.get("limits")
    if isinstance(limits, list) and limits:
        lines.append("limits, as the counter store found them when it decided:")
        lines += [f"  {limit_line(entry)}" for entry in limits if isinstance(entry, dict)]
        if record.get("limits_left_off"):
            lines.append(f"  and {record['limits_left_off']} more the record leaves off")
    elif any("over its limit" in str(reason) for reason in record.get("reasons") or ()):
        lines.append(f"limits: how much the window held is unknown; {NOT_KEPT}")
    return lines


def limit_line(entry: Mapping[str, Any]) -> str:
    """One recorded limit: its rule and text, the usage before the call, the call's
    amount, and whether the two fit under the cap."""
    head = f"permit {entry.get('rule')}: {entry.get('text')}"
    if entry.get("used") is None:
        return f"{head}: usage not read ({NOT_READ.removeprefix('the decision point ')})"
    try:
        used, amount = recorded_amount(entry["used"]), recorded_amount(entry["amount"])
        fits = used + amount <= recorded_amount(entry["cap"])
    except (KeyError, ValueError, InvalidOperation):
        return f"{head}: the record's usage does not read"
    verdict = "fits under the cap" if fits else "over the cap"
    return f"{head}: used {entry['used']} before this call, this call {entry['amount']}: {verdict}"


def trace(
    bundle: Bundle,
    resources: Resources,
    asked: dict[str, Any] | str,
    record: Mapping[str, Any],
    usage: RecordedUsage,
) -> Explanation | str:
    """The interpreter's account of ``asked``, its resource as the catalog describes it,
    at the record's time with the recorded limit usage, or why there is none."""
    if isinstance(asked, str):
        return f"the request cannot be rebuilt: {asked}"
    try:
        typed = rebuilt(asked, bundle, resources)
    except RequestError as exc:
        return f"the policies' schema does not accept the recorded request: {exc}"
    if isinstance(typed, str):
        return f"the directory refuses the rebuilt request: {typed}"
    return explained(bundle, typed, record, usage)


def explained(
    bundle: Bundle, typed: Request, record: Mapping[str, Any], usage: RecordedUsage
) -> Explanation:
    """The interpreter's account of a typed request at the record's time."""
    at = record_epoch(record.get("at"))
    interpreter = Interpreter(bundle.rules, bundle.lets, bundle.version, usage, lambda: at)
    return interpreter.explain(typed, commit=False)


def same(decision: Decision, record: Mapping[str, Any]) -> bool:
    """Whether a decision is the recorded answer: allow or deny, the deciding rules, the
    obligations, and the reasons (the interpreter's may add to each the usage it read)."""
    recorded = [str(reason) for reason in record.get("reasons") or ()]
    return (
        decision.allow is (record.get("allow") is True)
        and list(decision.decided_by) == record.get("decided_by")
        and [f"{o.kind}:{o.value}" for o in decision.obligations] == record.get("obligations")
        and len(decision.reasons) == len(recorded)
        and all(
            mine.startswith(theirs) for mine, theirs in zip(decision.reasons, recorded, strict=True)
        )
    )


def why_not(then: Explanation | str, record: Mapping[str, Any], bundle: Bundle) -> str:
    """Why the interpreter's account of the record is not the recorded decision's."""
    if isinstance(then, str):
        return then
    if record.get("bundle_version") != bundle.version:
        return (
            f"it was decided with bundle {record.get('bundle_version')}, and the policy "
            f"directory now holds bundle {bundle.version} (see today)"
        )
    answer = "ALLOW" if then.decision.allow else "DENY"
    return (
        f"deciding the request again from what the record keeps gives {answer} ("
        + "; ".join(then.decision.reasons)
        + "), not the recorded answer: the record does not keep everything a rule may "
        "read (see unknown)"
    )


def bundle_note(record: Mapping[str, Any], bundle: Bundle) -> str:
    """Which policies decided, against those in force now."""
    if record.get("bundle_version") == bundle.version:
        return "the decision was made with the bundle in force now"
    return (
        f"the decision was made with bundle {record.get('bundle_version')}; the bundle in "
        f"force now is {bundle.version}"
    )


def today(
    bundle: Bundle, resources: Resources, replay: Replay, record: Mapping[str, Any]
) -> dict[str, Any]:
    """How the policies in force now decide the recorded request, with the agent, user
    and consents as the directory holds them now, the resource as the catalog describes
    it now, and the limit usage as recorded."""
    basis = (
        f"the policies in force now (bundle {bundle.version}), the agent, user and consents "
        "as the directory holds them now, the recorded action, resource and context, the "
        "resource catalog now, and the limit usage as recorded (not today's counters)"
    )
    asked = replay.request_now(record)
    try:
        typed = asked if isinstance(asked, str) else rebuilt(asked, bundle, resources)
    except RequestError as exc:
        why = f"the policies' schema does not accept the recorded request: {exc}"
        return {"decision": None, "explanation": f"today: {why}", "basis": basis}
    if isinstance(typed, str):
        return {
            "decision": "deny",
            "decided_by": [DIRECTORY],
            "explanation": f"today: DENY: the directory refuses it now: {typed}",
            "basis": basis,
        }
    now = explained(bundle, typed, record, RecordedUsage(record, bundle.rules))
    return {
        "decision": "allow" if now.decision.allow else "deny",
        "decided_by": list(now.decision.decided_by),
        "same_as_recorded": same(now.decision, record),
        "explanation": "today: " + render_explanation(now),
        "basis": basis,
    }
