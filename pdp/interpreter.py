"""The reference interpreter: walks the syntax tree and records why each rule decided.

It defines what a policy means. The compiled engine must give the same decisions (the
property tests check it on random policies and requests); ``tessera explain`` prints the
trace this module records, down to the sub-expression that failed.

Evaluation rules:

- ``now`` is the decision's time: the one the request carries, else the clock's when
  the decision is made, the same for every rule of one decision.
- A path to an attribute that is absent is an error, as is ``user.…`` when the agent
  acts alone, ``agent.…`` when the subject is no agent (a person, say) and ``tool.…``
  when the resource is not a tool. ``has`` never errors.
- ``and`` / ``or`` evaluate left to right and stop at the first operand that decides;
  an error in an operand that is reached is the error of the whole expression.
- Comparisons evaluate both sides. Ordering money of two currencies is an error.
- A rule applies when its target matches, ``when`` is true and ``unless`` is false; for a
  permit, every ``limit`` must also have room and every ``require`` must be met.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pdp.counters import Charge, CounterError, CounterStore, MemoryCounters
from pdp.lang import ast
from pdp.lang.functions import call
from pdp.lang.runtime import (
    EvalError,
    compare,
    describe_limit,
    limit_amount,
    limit_cap,
    limit_key_prefix,
    limit_subject,
    limit_window,
    matches_pattern,
    obligation_met,
    pattern_globs,
)
from pdp.lang.values import CurrencyMismatch
from pdp.model import Decision, Request, RuleError, combine

Lets = Mapping[tuple[str, str], ast.Expr]


@dataclass(frozen=True)
class ExprTrace:
    """One evaluated sub-expression: its value or its error, and what it was made of."""

    expr: ast.Expr
    value: Any = None
    error: str | None = None
    children: tuple[ExprTrace, ...] = ()

    def failing(self) -> ExprTrace:
        """The deepest sub-expression responsible for this node's value or error."""
        for child in self.children:
            if self.error is not None and child.error == self.error:
                return child.failing()
        if isinstance(self.expr, ast.BoolOp) and self.children:
            return self.children[-1].failing()
        if isinstance(self.expr, ast.Not | ast.Name) and self.children:
            return self.children[0].failing()
        return self


@dataclass(frozen=True)
class Step:
    """One clause of a rule as evaluated: ``when``, ``unless``, ``limit``, ``require``."""

    clause: str
    trace: ExprTrace | None
    note: str = ""


@dataclass(frozen=True)
class RuleTrace:
    rule: ast.Rule
    # applies | not targeted | condition false | error | over limit | requires | skipped
    outcome: str
    steps: tuple[Step, ...] = ()
    error: str | None = None
    obligations: tuple[ast.Obligation, ...] = ()


@dataclass(frozen=True)
class Explanation:
    decision: Decision
    rules: tuple[RuleTrace, ...] = field(default=())


_MISSING = object()


class _Evaluator:
    """Evaluates expressions of one package against one request at one decision time
    (``now``), building traces."""

    def __init__(
        self, request: Request, lets: Lets, package: str, now: datetime | None = None
    ) -> None:
        self.request = request
        self.lets = lets
        self.package = package
        self._now = now

    @property
    def now(self) -> datetime:
        """The decision's time: as given, else the request's, else the wall clock's."""
        if self._now is None:
            self._now = decision_time(self.request, time.time())
        return self._now

    def eval(self, expr: ast.Expr) -> ExprTrace:
        try:
            method = getattr(self, "_" + type(expr).__name__.rstrip("_").lower())
            result: ExprTrace = method(expr)
            return result
        except (EvalError, CurrencyMismatch, TypeError, ValueError) as exc:
            return ExprTrace(expr, error=str(exc))

    def _literal(self, expr: ast.Literal_) -> ExprTrace:
        return ExprTrace(expr, expr.value)

    def _listexpr(self, expr: ast.ListExpr) -> ExprTrace:
        children = []
        for item in expr.items:
            child = self.eval(item)
            children.append(child)
            if child.error is not None:
                return ExprTrace(expr, error=child.error, children=tuple(children))
        return ExprTrace(expr, tuple(c.value for c in children), children=tuple(children))

    def _mapexpr(self, expr: ast.MapExpr) -> ExprTrace:
        children = []
        for _, value in expr.entries:
            child = self.eval(value)
            children.append(child)
            if child.error is not None:
                return ExprTrace(expr, error=child.error, children=tuple(children))
        mapping = {key: c.value for (key, _), c in zip(expr.entries, children, strict=True)}
        return ExprTrace(expr, mapping, children=tuple(children))

    def _name(self, expr: ast.Name) -> ExprTrace:
        target = self.lets.get((self.package, expr.name))
        if target is None:
            raise EvalError(f"unknown let '{expr.name}'")
        child = self.eval(target)
        return ExprTrace(expr, child.value, child.error, (child,))

    def _flag(self, expr: ast.Flag) -> ExprTrace:
        delegated = bool(self.request.delegation["delegated"])
        if expr.kind == "delegated":
            return ExprTrace(expr, delegated)
        # A subject that is no agent neither acts alone nor for someone.
        return ExprTrace(expr, self.request.agent is not None and not delegated)

    def _not(self, expr: ast.Not) -> ExprTrace:
        child = self.eval(expr.operand)
        if child.error is not None:
            return ExprTrace(expr, error=child.error, children=(child,))
        return ExprTrace(expr, not child.value, children=(child,))

    def _boolop(self, expr: ast.BoolOp) -> ExprTrace:
        stop = expr.op == "or"  # the operand value that decides the whole
        children = []
        for operand in expr.operands:
            child = self.eval(operand)
            children.append(child)
            if child.error is not None:
                return ExprTrace(expr, error=child.error, children=tuple(children))
            if bool(child.value) is stop:
                return ExprTrace(expr, stop, children=tuple(children))
        return ExprTrace(expr, not stop, children=tuple(children))

    def _compare(self, expr: ast.Compare) -> ExprTrace:
        left = self.eval(expr.left)
        if left.error is not None:
            return ExprTrace(expr, error=left.error, children=(left,))
        right = self.eval(expr.right)
        if right.error is not None:
            return ExprTrace(expr, error=right.error, children=(left, right))
        children = (left, right)
        try:
            value = compare(expr.op, left.value, right.value)
        except (EvalError, CurrencyMismatch, TypeError) as exc:
            return ExprTrace(expr, error=str(exc), children=children)
        return ExprTrace(expr, value, children=children)

    def _has(self, expr: ast.Has) -> ExprTrace:
        base = self.eval(expr.base)
        if base.error is not None or not isinstance(base.value, dict):
            return ExprTrace(expr, False, children=(base,))
        return ExprTrace(expr, expr.name in base.value, children=(base,))

    def _path(self, expr: ast.Path) -> ExprTrace:
        if expr.root == "now":
            if expr.parts:
                raise EvalError("now is a time and has no attributes")
            return ExprTrace(expr, self.now)
        return ExprTrace(expr, resolve(self.request, expr))

    def _call(self, expr: ast.Call) -> ExprTrace:
        """A function: its arguments left to right, the first that fails fails it."""
        children = []
        for arg in expr.args:
            child = self.eval(arg)
            children.append(child)
            if child.error is not None:
                return ExprTrace(expr, error=child.error, children=tuple(children))
        try:
            value = call(expr.name, tuple(c.value for c in children))
        except (EvalError, TypeError, ValueError) as exc:
            return ExprTrace(expr, error=str(exc), children=tuple(children))
        return ExprTrace(expr, value, children=tuple(children))


def resolve(request: Request, path: ast.Path) -> Any:
    """The value a path names in a request, or an :class:`EvalError` saying what is absent."""
    root = path.root
    if root == "action":
        if path.parts:
            raise EvalError("action is a name and has no attributes")
        return request.action
    base: Any
    if root == "agent":
        if request.agent is None:
            raise EvalError(
                f"no agent: the subject is a {request.subject['type']}, so agent attributes "
                "are absent"
            )
        base = request.agent
    elif root == "user":
        if request.user is None:
            if request.agent is None:
                raise EvalError(
                    f"no user: the subject is a {request.subject['type']}, not a person, so "
                    "user attributes are absent"
                )
            raise EvalError("no user: the agent acts alone, so user attributes are absent")
        base = request.user
    elif root == "tool":
        if request.tool is None:
            raise EvalError(
                f"the resource is a {request.resource.get('type')}, not a tool, "
                "so tool attributes are absent"
            )
        base = request.tool
    else:
        base = getattr(request, root)
    walked = root
    for part in path.parts:
        if not isinstance(base, dict) or part not in base:
            raise EvalError(f"{walked}.{part} is absent from the request")
        base = base[part]
        walked = f"{walked}.{part}"
    return base


class Interpreter:
    """Decides by walking the tree; slow, simple, and the definition of the semantics."""

    def __init__(
        self,
        rules: Sequence[ast.Rule],
        lets: Lets,
        version: str = "",
        counters: CounterStore | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.rules = tuple(rules)
        self._position = {id(rule): i for i, rule in enumerate(self.rules)}
        self.lets = lets
        self.version = version
        self.counters = counters if counters is not None else MemoryCounters()
        self.clock = clock or time.time

    def targeted(self, rule: ast.Rule, request: Request) -> bool:
        return target_matches(rule, request, self.lets)

    def decide(self, request: Request) -> Decision:
        return self.explain(request).decision

    def explain(self, request: Request, *, commit: bool = True) -> Explanation:
        now = self.clock()
        traces = [
            self.evaluate_rule(rule, request, now) for rule in self.rules if rule.effect == "forbid"
        ]
        if any(t.outcome in ("applies", "error") for t in traces):
            # A forbid decided: permits are not evaluated (the engine does not run them).
            traces += [RuleTrace(r, "skipped") for r in self.rules if r.effect == "permit"]
        else:
            traces += [
                self.evaluate_rule(rule, request, now)
                for rule in self.rules
                if rule.effect == "permit"
            ]
        traces.sort(key=lambda t: self._position[id(t.rule)])
        forbidden: list[str] = []
        forbid_errors: list[RuleError] = []
        applied: list[str] = []
        pending: list[tuple[str, tuple[ast.Obligation, ...]]] = []
        permit_errors: list[RuleError] = []
        over_limit: list[tuple[str, str]] = []
        for trace in traces:
            rule = trace.rule
            if trace.outcome == "error":
                error = RuleError(rule.id, rule.effect, trace.error or "")
                (forbid_errors if rule.effect == "forbid" else permit_errors).append(error)
            elif trace.outcome == "applies":
                (forbidden if rule.effect == "forbid" else applied).append(rule.id)
            elif trace.outcome == "requires":
                pending.append((rule.id, trace.obligations))
            elif trace.outcome == "over limit":
                over_limit.append((rule.id, trace.steps[-1].note))
        decision = combine(
            self.version, forbidden, forbid_errors, applied, pending, permit_errors, over_limit
        )
        if decision.allow and commit:
            self._commit(applied, request, now)
        return Explanation(decision, tuple(traces))

    def _commit(self, applied: list[str], request: Request, now: float) -> None:
        by_id = {rule.id: rule for rule in self.rules}
        for rule_id in applied:
            rule = by_id[rule_id]
            evaluator = _Evaluator(request, self.lets, rule.package, decision_time(request, now))
            for index, limit in enumerate(rule.limits):
                amount: Any = 1
                if limit.kind == "sum":
                    assert limit.amount is not None
                    amount = limit_amount(limit, evaluator.eval(limit.amount).value)
                charge = _charge(rule, index, limit, request, amount, math.inf)
                self.counters.charge((charge,), now)

    def evaluate_rule(self, rule: ast.Rule, request: Request, now: float) -> RuleTrace:
        """Evaluate one rule and say what it did, clause by clause."""
        if not target_matches(rule, request, self.lets):
            return RuleTrace(rule, "not targeted")
        evaluator = _Evaluator(request, self.lets, rule.package, decision_time(request, now))
        steps: list[Step] = []
        for clause, expr, wanted in (("when", rule.when, True), ("unless", rule.unless, False)):
            if expr is None:
                continue
            condition = evaluator.eval(expr)
            steps.append(Step(clause, condition))
            if condition.error is not None:
                return RuleTrace(rule, "error", tuple(steps), condition.failing().error)
            if bool(condition.value) is not wanted:
                return RuleTrace(rule, "condition false", tuple(steps))
        for index, limit in enumerate(rule.limits):
            try:
                amount: Any = 1
                trace: ExprTrace | None = None
                if limit.kind == "sum":
                    assert limit.amount is not None
                    trace = evaluator.eval(limit.amount)
                    if trace.error is not None:
                        steps.append(Step("limit", trace))
                        return RuleTrace(rule, "error", tuple(steps), trace.failing().error)
                    amount = limit_amount(limit, trace.value)
                charge = _charge(rule, index, limit, request, amount, limit_cap(limit))
            except EvalError as exc:
                steps.append(Step("limit", None, str(exc)))
                return RuleTrace(rule, "error", tuple(steps), str(exc))
            cap = charge.cap
            text = describe_limit(limit)
            try:
                used = self.counters.usage(charge, now)
            except CounterError as exc:
                steps.append(Step("limit", trace, f"{text}: usage unknown ({exc})"))
                return RuleTrace(rule, "error", tuple(steps), str(exc))
            if used + amount > cap:
                steps.append(Step("limit", trace, f"{text}: used {used}, this call {amount}"))
                return RuleTrace(rule, "over limit", tuple(steps))
            steps.append(
                Step("limit", trace, f"{text}: used {used}, this call {amount}, room left")
            )
        unmet: list[ast.Obligation] = []
        for require in rule.requires:
            if require.condition is not None:
                gate = evaluator.eval(require.condition)
                steps.append(Step("require if", gate, str(require.obligation)))
                if gate.error is not None:
                    return RuleTrace(rule, "error", tuple(steps), gate.failing().error)
                if not gate.value:
                    continue
            if obligation_met(require.obligation, request.context):
                steps.append(Step("require", None, f"{require.obligation} is met"))
            else:
                steps.append(Step("require", None, f"{require.obligation} is not met"))
                unmet.append(require.obligation)
        if unmet:
            return RuleTrace(rule, "requires", tuple(steps), obligations=tuple(unmet))
        return RuleTrace(rule, "applies", tuple(steps))


def decision_time(request: Request, now: float) -> datetime:
    """``now`` in a rule: the time the request carries, else ``now`` (the clock's)."""
    return request.time if request.time is not None else datetime.fromtimestamp(now, UTC)


def target_matches(rule: ast.Rule, request: Request, lets: Lets) -> bool:
    """Whether a rule's target covers the request's action and resource."""
    target = rule.target
    if target is None:
        return True
    if target.form == "call":
        if request.action != ast.CALL_ACTION:
            return False
    else:
        assert target.action is not None
        if not matches_pattern(pattern_globs(target.action, lets, rule.package), request.action):
            return False
    if target.resource_type is not None and request.resource["type"] != target.resource_type:
        return False
    if target.resource is not None:
        alternatives = pattern_globs(target.resource, lets, rule.package)
        if not matches_pattern(alternatives, request.resource["id"]):
            return False
    return True


def _charge(
    rule: ast.Rule, index: int, limit: ast.Limit, request: Request, amount: Any, cap: Any
) -> Charge:
    """One limit's share of one call, keyed as the engine keys it."""
    subject = limit_subject(limit.scope, request)
    key = limit_key_prefix(rule.id, index, limit.scope) + subject
    return Charge(key, subject, limit_window(limit), amount, cap)
