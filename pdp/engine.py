"""The decision engine: an indexed bundle of compiled rules that answers requests.

A request touches only its candidate rules: the index goes by action, then resource type,
then exact resource id or glob prefix; candidate lists are memoized per (action, type,
id). Forbids run first; any that matches, or fails, denies. Then permits: one that applies
allows; one that waits on an obligation gives a deny carrying it; otherwise default deny.
A permit with limits whose obligations are met asks the counter store once, atomically:
do this call's charges fit, and if so record them (only a call being decided records; a
preview only asks). The store being unreachable makes that permit fail with the reason.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pdp.counters import FITS, Charge, CounterError, CounterStore, MemoryCounters, Tally
from pdp.interpreter import Interpreter
from pdp.lang import ast
from pdp.lang.compiler import CompiledLimit, CompiledRule, compile_rules
from pdp.lang.runtime import (
    EvalError,
    limit_amount,
    limit_subject,
    matches_pattern,
    obligation_met,
    pattern_globs,
)
from pdp.lang.values import Money
from pdp.model import DEFAULT_DENY_REASON, Decision, LimitUse, Request, RuleError, combine

Lets = Mapping[tuple[str, str], ast.Expr]
CandidateKey = tuple[str, str, str]
T = TypeVar("T")
Candidates = tuple[tuple[CompiledRule, ...], tuple[CompiledRule, ...]]
Traits = tuple[bool, bool]  # a limit could decide; the decision holds for this moment only
# What a gated permit did: ("applies", ()), ("requires", unmet obligations) or ("over",
# the limit's text), with the limits the counter store was asked about.
Gate = tuple[str, Any, tuple[LimitUse, ...]]

# Memoized candidate lists; past this many distinct (action, type, id) keys the memo is
# dropped and rebuilt, so a stream of unique ids cannot grow memory without bound.
CANDIDATE_MEMO_SIZE = 65_536

log = logging.getLogger("tessera.engine")


@dataclass
class _IdIndex:
    """Rules of one (action, resource type) by resource id: exact, glob prefix, any."""

    exact: dict[str, list[CompiledRule]] = field(default_factory=dict)
    prefixes: dict[str, list[tuple[CompiledRule, str]]] = field(default_factory=dict)
    lengths: list[int] = field(default_factory=list)
    any: list[CompiledRule] = field(default_factory=list)

    def add(self, rule: CompiledRule, alternatives: tuple[tuple[str, bool], ...] | None) -> None:
        if alternatives is None:
            self.any.append(rule)
            return
        for text, is_glob in alternatives:
            if not is_glob or ("*" not in text and "?" not in text):
                self.exact.setdefault(text, []).append(rule)  # `like "x"` is just "x"
                continue
            prefix = text[: min(i for i in (text.find("*"), text.find("?")) if i >= 0)]
            self.prefixes.setdefault(prefix, []).append((rule, text))
            if len(prefix) not in self.lengths:
                self.lengths.append(len(prefix))
                self.lengths.sort()

    def lookup(self, resource_id: str, out: dict[int, CompiledRule]) -> None:
        for rule in self.exact.get(resource_id, ()):
            out[rule.position] = rule
        for length in self.lengths:
            if length > len(resource_id):
                break
            for rule, pattern in self.prefixes.get(resource_id[:length], ()):
                if matches_pattern(((pattern, True),), resource_id):
                    out[rule.position] = rule
        for rule in self.any:
            out[rule.position] = rule


@dataclass
class _TypeIndex:
    """Rules of one action by resource type (None: any type)."""

    by_type: dict[str | None, _IdIndex] = field(default_factory=dict)

    def add(
        self,
        rule: CompiledRule,
        resource_type: str | None,
        alternatives: tuple[tuple[str, bool], ...] | None,
    ) -> None:
        self.by_type.setdefault(resource_type, _IdIndex()).add(rule, alternatives)

    def lookup(self, resource_type: str, resource_id: str, out: dict[int, CompiledRule]) -> None:
        for key in (resource_type, None):
            index = self.by_type.get(key)
            if index is not None:
                index.lookup(resource_id, out)


class Index:
    """Where each rule can apply, so a request only meets its candidates."""

    def __init__(self, rules: Iterable[CompiledRule], lets: Lets) -> None:
        self.by_action: dict[str, _TypeIndex] = {}
        self.action_globs: list[tuple[str, _TypeIndex]] = []
        self.any_action = _TypeIndex()
        for rule in rules:
            if rule.never:
                continue  # its condition is constant false
            self._add(rule, lets)

    def _add(self, rule: CompiledRule, lets: Lets) -> None:
        target = rule.rule.target
        package = rule.rule.package
        if target is None:
            self.any_action.add(rule, None, None)
            return
        resources = (
            pattern_globs(target.resource, lets, package) if target.resource is not None else None
        )
        if target.form == "call":
            actions: tuple[tuple[str, bool], ...] = ((ast.CALL_ACTION, False),)
        else:
            assert target.action is not None
            actions = pattern_globs(target.action, lets, package)
        for action, is_glob in actions:
            if is_glob:
                index = _TypeIndex()
                self.action_globs.append((action, index))
            else:
                index = self.by_action.setdefault(action, _TypeIndex())
            index.add(rule, target.resource_type, resources)

    def candidates(self, action: str, resource_type: str, resource_id: str) -> Candidates:
        found: dict[int, CompiledRule] = {}
        exact = self.by_action.get(action)
        if exact is not None:
            exact.lookup(resource_type, resource_id, found)
        for pattern, index in self.action_globs:
            if matches_pattern(((pattern, True),), action):
                index.lookup(resource_type, resource_id, found)
        self.any_action.lookup(resource_type, resource_id, found)
        ordered = [found[p] for p in sorted(found)]
        return (
            tuple(r for r in ordered if r.effect == "forbid"),
            tuple(r for r in ordered if r.effect == "permit"),
        )


@dataclass(frozen=True)
class Bundle:
    """A checked, compiled policy set: what a PDP decides with."""

    version: str
    rules: tuple[ast.Rule, ...]
    lets: Mapping[tuple[str, str], ast.Expr]
    compiled: tuple[CompiledRule, ...]
    index: Index
    tests: tuple[ast.Test, ...] = ()
    schema: Any = None  # pdp.lang.schema.SchemaModel
    # the resource catalog's entries of the bundle's files (pdp.catalog): typed resources
    # by type, then id
    catalog: Mapping[str, Mapping[str, dict[str, Any]]] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        rules: Sequence[ast.Rule],
        lets: Lets,
        version: str = "",
        tests: Sequence[ast.Test] = (),
        schema: Any = None,
        catalog: Mapping[str, Mapping[str, dict[str, Any]]] | None = None,
    ) -> Bundle:
        compiled = tuple(compile_rules(rules, lets))
        for rule in compiled:
            # What the rule answers when it alone decides, built once, shared by every call.
            verb = "applies" if rule.effect == "permit" else "matched"
            rule.decision = Decision(
                rule.effect == "permit",
                (),
                (rule.id,),
                (f"{rule.effect} {rule.id} {verb}",),
                (),
                version,
            )
        index = Index(compiled, lets)
        return cls(
            version, tuple(rules), lets, compiled, index, tuple(tests), schema, catalog or {}
        )


class Engine:
    """Decides requests against one bundle. Thread-compatible; no I/O."""

    def __init__(
        self,
        bundle: Bundle,
        counters: CounterStore | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.bundle = bundle
        self.version = bundle.version
        self.counters = counters if counters is not None else MemoryCounters()
        self.clock = clock or time.time
        self._memo: dict[CandidateKey, Candidates] = {}
        self._traits: dict[CandidateKey, Traits] = {}
        # Whether any rule reads `now`: then each decision fixes its time (decide).
        self._reads_now = any(rule.reads_now for rule in bundle.compiled)
        self._interpreter = Interpreter(
            bundle.rules, bundle.lets, bundle.version, self.counters, self.clock
        )
        self._default_deny = Decision(False, (), (), (DEFAULT_DENY_REASON,), (), bundle.version)
        self._pending: dict[tuple[int, tuple[ast.Obligation, ...]], Decision] = {}

    def candidates(self, request: Request) -> Candidates:
        """The forbids and permits whose target covers this request, in rule order."""
        return self._remembered(self._memo, _key(request), self._find)

    def touches_limits(self, request: Request) -> bool:
        """Whether a rule with a ``limit`` could decide this request (then its decision
        depends on counters and must not be cached)."""
        return self.traits(request)[0]

    def reads_now(self, request: Request) -> bool:
        """Whether a rule that reads ``now`` could decide this request (then the same
        request may be decided otherwise a moment later, and must not be cached)."""
        return self._reads_now and self._any_timed(_key(request))

    def traits(self, request: Request) -> Traits:
        """:meth:`touches_limits`, and whether the decision holds for this moment only (a
        limit or a rule reading ``now`` could decide it), in one look: the hot path's."""
        resource = request.resource
        key = (request.action, resource["type"], resource["id"])
        found = self._traits.get(key)
        if found is None:
            found = self._remembered(self._traits, key, self._traits_of)
        return found

    def _traits_of(self, key: CandidateKey) -> Traits:
        limited = any(rule.limits for rule in self._remembered(self._memo, key, self._find)[1])
        return limited, limited or (self._reads_now and self._any_timed(key))

    def _find(self, key: CandidateKey) -> Candidates:
        return self.bundle.index.candidates(*key)

    def _any_timed(self, key: CandidateKey) -> bool:
        forbids, permits = self._remembered(self._memo, key, self._find)
        return any(rule.reads_now for rule in forbids + permits)

    @staticmethod
    def _remembered(
        memo: dict[CandidateKey, T], key: CandidateKey, make: Callable[[CandidateKey], T]
    ) -> T:
        """``memo[key]``, made the first time; the memo is emptied when it is full."""
        found = memo.get(key)
        if found is None:
            if len(memo) >= CANDIDATE_MEMO_SIZE:
                memo.clear()
            found = memo[key] = make(key)
        return found

    # One function on purpose: the hot path (~1.4 µs); a call per step costs more than the steps.
    def decide(self, request: Request, commit: bool = True, once: str = "") -> Decision:
        """The decision for one request. Never raises for a well-formed request.

        ``commit=False`` decides without recording limit usage: for questions such as
        "which tools may this agent use?", which are not calls. ``once`` is the call's
        idempotency key: a retried call's usage is recorded once.
        """
        if self._reads_now:  # `now` is the request's time, else the clock's, read once
            at = request.now = request.time
            request.epoch = self.clock() if at is None else at.timestamp()
        resource = request.resource
        found = self._memo.get((request.action, resource["type"], resource["id"]))
        if found is None:
            found = self.candidates(request)
        forbids, permits = found

        forbidden: list[CompiledRule] | None = None
        failed: list[tuple[CompiledRule, Exception]] | None = None
        for rule in forbids:
            test = rule.test
            try:
                if test is None or test(request):
                    if forbidden is None:
                        forbidden = [rule]
                    else:
                        forbidden.append(rule)
            except Exception as exc:  # a forbid that fails denies: fail closed
                if failed is None:
                    failed = []
                failed.append((rule, exc))
        if failed is not None:
            return self._slow(request, forbidden or [], failed, [], [], [])
        if forbidden is not None:
            if len(forbidden) == 1:
                decision: Decision = forbidden[0].decision
                return decision
            return self._slow(request, forbidden, [], [], [], [])

        applied: list[CompiledRule] | None = None
        gated: list[CompiledRule] | None = None
        permit_failed: list[tuple[CompiledRule, Exception]] | None = None
        for rule in permits:
            test = rule.test
            if test is not None:
                try:
                    if not test(request):
                        continue
                except Exception as exc:  # a permit that fails does not apply
                    if permit_failed is None:
                        permit_failed = []
                    permit_failed.append((rule, exc))
                    continue
            if rule.gated:
                if gated is None:
                    gated = [rule]
                else:
                    gated.append(rule)
            elif applied is None:
                applied = [rule]
            else:
                applied.append(rule)
        if permit_failed is None:
            if gated is None:
                if applied is None:
                    return self._default_deny
                if len(applied) == 1:
                    decision = applied[0].decision
                    return decision
            elif applied is None and len(gated) == 1:
                return self._one_gated(request, gated[0], commit, once)
        return self._slow(
            request, [], [], applied or [], gated or [], permit_failed or [], commit, once
        )

    def _one_gated(self, request: Request, rule: CompiledRule, commit: bool, once: str) -> Decision:
        """The common case of a permit with limits or obligations that alone matched."""
        try:
            kind, payload, counted = self._gate(rule, request, self.clock(), commit, once)
        except CounterError as exc:
            return combine(self.version, [], [], [], [], [_unreachable(rule, exc)], [])
        except Exception:
            return self._slow(request, [], [], [], [rule], [], commit, once)
        if kind == "applies":
            decision: Decision = rule.decision
            return decision.counted(counted)
        if kind == "requires":
            cached = self._pending.get((rule.position, payload))
            if cached is None:
                cached = combine(self.version, [], [], [], [(rule.id, payload)], [], [])
                if len(self._pending) < CANDIDATE_MEMO_SIZE:
                    self._pending[(rule.position, payload)] = cached
            return cached.counted(counted)
        return combine(self.version, [], [], [], [], [], [(rule.id, payload)]).counted(counted)

    def _slow(
        self,
        request: Request,
        forbidden: list[CompiledRule],
        forbid_failed: list[tuple[CompiledRule, Exception]],
        applied: list[CompiledRule],
        gated: list[CompiledRule],
        permit_failed: list[tuple[CompiledRule, Exception]],
        commit: bool = True,
        once: str = "",
    ) -> Decision:
        """Everything beyond one clean match: errors, several rules, limits, obligations.

        Gated permits are reached only when no forbid matched or failed, so a permit whose
        charges fit (and are recorded) makes the decision an allow."""
        now = self.clock()
        applied = list(applied)
        pending: list[tuple[CompiledRule, tuple[ast.Obligation, ...]]] = []
        over: list[tuple[str, str]] = []
        failures = list(permit_failed)
        counted: list[LimitUse] = []
        for rule in gated:
            try:
                kind, payload, uses = self._gate(rule, request, now, commit, once)
            except Exception as exc:
                failures.append((rule, exc))
                continue
            counted.extend(uses)
            if kind == "over":
                over.append((rule.id, payload))
            elif kind == "requires":
                pending.append((rule, payload))
            else:
                applied.append(rule)
        applied.sort(key=_position)
        pending.sort(key=lambda p: p[0].position)
        failures.sort(key=lambda f: f[0].position)
        return combine(
            self.version,
            [r.id for r in forbidden],
            [self._error(r, request, exc) for r, exc in forbid_failed],
            [r.id for r in applied],
            [(r.id, needs) for r, needs in pending],
            [self._error(r, request, exc) for r, exc in failures],
            over,
        ).counted(tuple(counted))

    def _gate(
        self, rule: CompiledRule, request: Request, now: float, commit: bool, once: str
    ) -> Gate:
        """A matching permit's limits, then its obligations: ("applies", ()), ("requires",
        unmet obligations) or ("over", the limit's description), with the usage the store
        found. Its charges are recorded when they fit, its obligations are met and
        ``commit`` is true; otherwise the store is only asked whether they would fit: a
        limit reached is told first, as the limits come first in a rule."""
        charges: tuple[Charge, ...] = ()
        if rule.limits:
            charges, reached = self._charges(rule, request, now)
            if reached is not None:
                return _over(rule, charges, reached)
        try:
            unmet = _unmet(rule, request)
        except Exception:
            tally = self._peek(charges, now)
            if tally.answer != FITS:
                return _over(rule, charges, tally)
            raise
        if unmet:
            tally = self._peek(charges, now)
            if tally.answer != FITS:
                return _over(rule, charges, tally)
            return ("requires", unmet, _uses(rule, charges, tally))
        if not charges:
            return ("applies", (), ())
        tally = self.counters.tally(charges, now, record=commit, once=once)
        if tally.answer != FITS:
            return _over(rule, charges, tally)
        return ("applies", (), _uses(rule, charges, tally))

    def _peek(self, charges: tuple[Charge, ...], now: float) -> Tally:
        """Whether ``charges`` would fit, recording nothing; a store that cannot answer
        leaves what else is missing to be told first (and the usage unknown)."""
        if not charges:
            return NOTHING_ASKED
        try:
            return self.counters.tally(charges, now, record=False)
        except CounterError:
            return NOTHING_ASKED

    def _charges(
        self, rule: CompiledRule, request: Request, now: float
    ) -> tuple[tuple[Charge, ...], Tally | None]:
        """The call's charge under each of the permit's limits, and None. A limit that
        cannot be worked out for this request fails the permit, unless an earlier limit is
        already reached: then the charges before it and the store's tally of them (limits
        are told in the order they are written)."""
        charges: list[Charge] = []
        for limit in rule.limits:
            try:
                charges.append(_charge(limit, request))
            except Exception:
                if charges:
                    tally = self.counters.tally(tuple(charges), now, record=False)
                    if tally.answer != FITS:
                        return tuple(charges), tally
                raise
        return tuple(charges), None

    def _error(self, rule: CompiledRule, request: Request, exc: Exception) -> RuleError:
        """Why a rule failed, in the interpreter's words (the rare path)."""
        if isinstance(exc, CounterError):
            return _unreachable(rule, exc)
        at = request.epoch  # the decision's time, when a rule reads `now`
        trace = self._interpreter.evaluate_rule(
            rule.rule, request, at if at is not None else self.clock()
        )
        if trace.error:
            return RuleError(rule.id, rule.effect, trace.error)
        # the compiled rule failed where the interpreter does not: a fault of Tessera's,
        # logged with its traceback; the rule fails closed, its reason names no internals
        log.error("rule %s failed in compiled code only", rule.id, exc_info=exc)
        return RuleError(rule.id, rule.effect, "an internal error (logged) stopped the rule")


def _position(rule: CompiledRule) -> int:
    return rule.position


NOTHING_ASKED = Tally(FITS, ())


def _over(rule: CompiledRule, charges: tuple[Charge, ...], tally: Tally) -> Gate:
    """A permit whose limit at ``tally.answer`` is reached."""
    return ("over", rule.limits[tally.answer].text, _uses(rule, charges, tally))


def _uses(rule: CompiledRule, charges: tuple[Charge, ...], tally: Tally) -> tuple[LimitUse, ...]:
    """The permit's limits the store was asked about, each with the usage it found (None
    where it read none)."""
    used, limits, uses = tally.used, rule.limits, []
    for index, charge in enumerate(charges):
        found = used[index] if index < len(used) else None
        text = limits[index].text
        uses.append(LimitUse(rule.id, index, text, charge.window, charge.cap, charge.amount, found))
    return tuple(uses)


def _key(request: Request) -> CandidateKey:
    """What the candidate rules of a request depend on: its action and resource."""
    resource = request.resource
    return (request.action, resource["type"], resource["id"])


def _charge(limit: CompiledLimit, request: Request) -> Charge:
    """What one call adds under one limit, checked against the cap's kind."""
    subject = limit_subject(limit.scope, request)
    if limit.amount is None:
        amount: Any = 1
    else:
        value = limit.amount(request)
        if (
            limit.currency is not None
            and type(value) is Money
            and value.currency == limit.currency
            and value.amount >= 0
        ):
            amount = value.amount
        else:
            amount = limit_amount(limit.limit, value)  # checks, and explains errors
    return Charge(limit.key_prefix + subject, subject, limit.window, amount, limit.cap)


def _unmet(rule: CompiledRule, request: Request) -> tuple[ast.Obligation, ...]:
    """The obligations of a matching permit that this request does not meet yet."""
    unmet: tuple[ast.Obligation, ...] = ()
    for require in rule.requires:
        if require.condition is not None and not require.condition(request):
            continue
        if not obligation_met(require.obligation, request.context):
            unmet += (require.obligation,)
    return unmet


def _unreachable(rule: CompiledRule, exc: CounterError) -> RuleError:
    """A limited permit the counter store could not check: it does not apply (fail
    closed), and the decision says why."""
    return RuleError(rule.id, "permit", f"its limit could not be checked: {exc}")


__all__ = ["Bundle", "Decision", "Engine", "EvalError", "Index", "Request"]
