"""What the engine answers: allow or deny, with obligations, deciding rules and reasons."""

from __future__ import annotations

from typing import Any, NamedTuple

from pdp.lang.ast import Obligation


class RuleError(NamedTuple):
    """A rule whose evaluation failed; a forbid that errors denies, a permit does not apply."""

    rule: str
    effect: str
    message: str


class Decision(NamedTuple):
    """The answer to one request. Immutable; cheap to build on the hot path."""

    allow: bool
    obligations: tuple[Obligation, ...]
    decided_by: tuple[str, ...]
    reasons: tuple[str, ...]
    errors: tuple[RuleError, ...]
    bundle_version: str

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
