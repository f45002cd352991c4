"""Render an interpreter trace for people: why each candidate rule did what it did."""

from __future__ import annotations

from typing import Any

from pdp.interpreter import Explanation, ExprTrace, RuleTrace
from pdp.lang import ast
from pdp.lang.formatter import format_expr
from pdp.lang.values import render

_OUTCOMES = {
    "applies": "applies",
    "condition false": "does not apply",
    "error": "FAILED",
    "over limit": "is over its limit",
    "requires": "waits on an obligation",
    "skipped": "not evaluated: a forbid already decided",
}


def render_explanation(explanation: Explanation, *, show_untargeted: bool = False) -> str:
    """The decision, its reasons and obligations, then every candidate rule's trace."""
    decision = explanation.decision
    lines = [
        f"decision: {'ALLOW' if decision.allow else 'DENY'}"
        + (f"  (bundle {decision.bundle_version})" if decision.bundle_version else "")
    ]
    for reason in decision.reasons:
        lines.append(f"  because {reason}")
    for obligation in decision.obligations:
        lines.append(f"  obligation: {obligation}")
    lines.append("")
    lines.extend(render_rules(explanation, show_untargeted=show_untargeted))
    return "\n".join(lines)


def render_rules(explanation: Explanation, *, show_untargeted: bool = False) -> list[str]:
    """Why each candidate rule did what it did (and, optionally, which rules the request
    is not a target of), without the decision's own lines."""
    targeted = [t for t in explanation.rules if t.outcome != "not targeted"]
    untargeted = [t for t in explanation.rules if t.outcome == "not targeted"]
    lines = [f"candidate rules ({len(targeted)} of {len(explanation.rules)}):"]
    for trace in targeted:
        lines.extend(render_rule(trace))
    if show_untargeted and untargeted:
        lines.append("")
        lines.append("rules whose target does not cover this request:")
        lines.extend(f"  {t.rule.effect} {t.rule.id}" for t in untargeted)
    return lines


def render_rule(trace: RuleTrace) -> list[str]:
    rule = trace.rule
    head = f"  {rule.effect} {rule.id}  ({rule.span}) {_OUTCOMES.get(trace.outcome, trace.outcome)}"
    lines = [head]
    for step in trace.steps:
        if step.trace is None:
            lines.append(f"    {step.clause}: {step.note}")
            continue
        text = format_expr(step.trace.expr)
        lines.append(f"    {step.clause} {text}  →  {_outcome(step.trace)}")
        if step.note:
            lines.append(f"      {step.note}")
        culprit = step.trace.failing()
        if culprit is not step.trace and _decisive(step.clause, step.trace):
            lines.append(f"      because {format_expr(culprit.expr)}  →  {_outcome(culprit)}")
            operands = _operands(culprit)
            if operands:
                lines.append(f"      where {operands}")
    if trace.error and not any(s.trace and s.trace.error for s in trace.steps):
        lines.append(f"    error: {trace.error}")
    return lines


def _decisive(clause: str, trace: ExprTrace) -> bool:
    """Whether this clause is why the rule did not apply (worth drilling into)."""
    if trace.error is not None:
        return True
    if clause == "when":
        return trace.value is False
    if clause == "unless":
        return trace.value is True
    return False


def _outcome(trace: ExprTrace) -> str:
    if trace.error is not None:
        return f"error: {trace.error}"
    return _value(trace.value)


def _value(value: Any) -> str:
    return render(value)


def _operands(trace: ExprTrace) -> str:
    """The values a failing comparison saw, for paths, lets and function calls (literals
    speak for themselves)."""
    parts = []
    for child in trace.children:
        if isinstance(child.expr, ast.Path | ast.Name | ast.Call) and child.error is None:
            parts.append(f"{format_expr(child.expr)} = {_value(child.value)}")
    return ", ".join(parts)
