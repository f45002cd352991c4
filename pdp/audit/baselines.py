"""Per-agent baselines of behaviour, and the alerts raised when an agent steps off them.

This is the pure core of anomaly detection: :class:`Baselines` takes the agent trail's
decision records one at a time, in trail order, and returns the alerts each one raises.
It reads no clock (every time is the record's own ``at``), so the same records always
give the same alerts: that is what lets a restarted detector rebuild its baselines by
reading the trail again.

An agent's baseline holds the tools it has called, its calls per window when active, its
denials (in the current window and over its history), its calls per hour of the day (UTC)
and the amounts it was allowed to move, per currency. Five kinds of alert:

- ``new_tool``: a call of a tool the agent has never called before;
- ``rate``: more calls in the sliding window than ``rate_factor`` times the agent's
  average per active window (and at least ``rate_min`` calls);
- ``denials``: at least ``denial_burst`` denials in the sliding window, making up at least
  ``denial_ratio`` of its calls there and at least twice their share in its history
  before (privilege probing);
- ``amount``: an amount more than ``amount_factor`` times the largest the agent was
  allowed to move in that currency;
- ``hours``: a call in an hour of the day (UTC) that holds less than ``hour_share`` of the
  agent's calls.

A learning period keeps new agents from flooding alerts: until an agent has made
``learning_decisions`` decisions over at least ``learning_hours``, only ``denials`` (which
needs no baseline) can fire; the baselines learn all the same. After an alert, the agent
gets no other alert of that kind for ``cooldown`` seconds, except ``new_tool``, which
fires once per tool.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from cachetools import LRUCache

ALERTS = ("new_tool", "rate", "denials", "amount", "hours")
SEVERITIES = ("low", "medium", "high")

# Memory bounds: how much history each agent keeps, and how many agents are followed at
# once (the least recently active agent's baseline is forgotten first).
MAX_AGENTS = 100_000
MAX_TOOLS = 10_000  # tools remembered per agent
RATE_HISTORY = 1_440  # active windows averaged for the rate baseline (a day of minutes)
AMOUNT_HISTORY = 1_000  # allowed amounts kept per agent and currency
MIN_AMOUNTS = 5  # allowed amounts in a currency before amounts in it are judged
DENIALS_OVER_HISTORY = 2  # a burst's denied share must be this many times the usual one


@dataclass(frozen=True)
class AnomalyThresholds:
    """When an agent's behaviour is far enough from its baseline to raise an alert."""

    learning_decisions: int = 100  # decisions an agent makes before baseline alerts
    learning_hours: float = 24.0  # and how long its history must span
    window: float = 60.0  # seconds of the sliding window for rate and denials
    rate_factor: float = 5.0  # calls in the window above this × the active average
    rate_min: int = 30  # fewer calls than this in the window never raise "rate"
    denial_burst: int = 10  # denials in the window that make a burst
    denial_ratio: float = 0.5  # share of the window's calls that must be denied
    amount_factor: float = 3.0  # an amount above this × the largest allowed before
    hour_share: float = 0.01  # an hour of the day with less than this share is unusual
    cooldown: float = 600.0  # seconds before the same agent gets the same kind again

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{f.name}: a number, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"{f.name}: a finite number, got {value!r}")
        positive = ("window", "denial_burst", "rate_min")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}: must be greater than 0, got {getattr(self, name)!r}")
        for name in ("learning_decisions", "learning_hours", "cooldown"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must not be negative, got {getattr(self, name)!r}")
        for name in ("rate_factor", "amount_factor"):
            if getattr(self, name) <= 1:
                raise ValueError(f"{name}: must be greater than 1, got {getattr(self, name)!r}")
        for name in ("denial_ratio", "hour_share"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(
                    f"{name}: a share between 0 (excluded) and 1, got {getattr(self, name)!r}"
                )
        for name in ("learning_decisions", "rate_min", "denial_burst"):
            if not isinstance(getattr(self, name), int):
                raise ValueError(f"{name}: a whole number, got {getattr(self, name)!r}")


class _Amounts:
    """The last :data:`AMOUNT_HISTORY` allowed amounts of one currency: how many, and the
    largest (a sliding-window maximum: each amount is pushed and dropped once)."""

    def __init__(self) -> None:
        self.count = 0
        self._peaks: deque[tuple[int, Decimal]] = deque()  # (index, amount), decreasing

    def __len__(self) -> int:
        return min(self.count, AMOUNT_HISTORY)

    def largest(self) -> Decimal:
        return self._peaks[0][1]

    def add(self, value: Decimal) -> None:
        peaks = self._peaks
        while peaks and peaks[-1][1] <= value:
            peaks.pop()
        peaks.append((self.count, value))
        self.count += 1
        if peaks[0][0] <= self.count - 1 - AMOUNT_HISTORY:
            peaks.popleft()


@dataclass
class _Agent:
    """What one agent has done so far."""

    first: float
    last: float
    decisions: int = 0
    denials: int = 0
    tools: set[str] = field(default_factory=set)
    # the sliding window, by second: [second, calls, denials]
    seconds: deque[list[int]] = field(default_factory=deque)
    window_calls: int = 0
    window_denials: int = 0
    # calls per fixed window of activity, oldest first, and the one being counted
    active: deque[int] = field(default_factory=lambda: deque(maxlen=RATE_HISTORY))
    active_total: int = 0
    bucket: int = -1
    bucket_calls: int = 0
    hours: list[int] = field(default_factory=lambda: [0] * 24)
    amounts: dict[str, _Amounts] = field(default_factory=dict)
    quiet_until: dict[str, float] = field(default_factory=dict)


class Baselines:
    """Every agent's baseline; :meth:`observe` learns from a record and says what it raises."""

    def __init__(self, thresholds: AnomalyThresholds | None = None) -> None:
        self.thresholds = thresholds if thresholds is not None else AnomalyThresholds()
        self.agents: LRUCache[str, _Agent] = LRUCache(maxsize=MAX_AGENTS)
        self._amount_factor = Decimal(str(self.thresholds.amount_factor))

    def observe(self, record: dict[str, Any], seq: int) -> list[dict[str, Any]]:
        """Learn from one agent-trail record (seq ``seq``); the alerts it raises, in the
        order of :data:`ALERTS`. Records other than decisions, and decisions without an
        agent or a readable time, are passed over."""
        if record.get("kind") != "decision":
            return []
        agent_id = record.get("agent")
        at = _time(record.get("at"))
        if not isinstance(agent_id, str) or not agent_id or at is None:
            return []
        t = at.timestamp()
        agent = self.agents.get(agent_id)
        if agent is None:
            agent = self.agents[agent_id] = _Agent(first=t, last=t)
        t = max(t, agent.last)  # a record a little out of time order counts as now
        agent.last = t
        allow = record.get("allow") is True
        raise_ = _Raiser(self.thresholds, agent, agent_id, t, record, seq)
        learned = self._learned(agent, t)

        resource = record.get("resource")
        tool = None
        if isinstance(resource, dict) and resource.get("type") == "tool":
            tool = resource.get("id") if isinstance(resource.get("id"), str) else None
        if tool is not None and tool not in agent.tools:
            if learned:
                raise_.new_tool(tool, len(agent.tools))
            if len(agent.tools) < MAX_TOOLS:
                agent.tools.add(tool)

        amount = _amount(record.get("context"))
        if amount is not None:
            value, currency = amount
            history = agent.amounts.get(currency)
            if learned and history is not None and len(history) >= MIN_AMOUNTS:
                largest = history.largest()
                if value > largest * self._amount_factor:
                    raise_.amount(value, currency, largest)
            if allow:  # a refused amount must not teach the baseline to expect it
                if history is None:
                    history = agent.amounts[currency] = _Amounts()
                history.add(value)

        self._count(agent, t, allow)
        if learned:
            self._rate(agent, raise_)
        if not allow:
            self._denials(agent, raise_)

        hour = at.astimezone(UTC).hour
        if learned and agent.decisions > 0:
            share = agent.hours[hour] / agent.decisions
            if share < self.thresholds.hour_share:
                raise_.hours(hour, share)
        agent.hours[hour] += 1
        agent.decisions += 1
        agent.denials += 0 if allow else 1
        return raise_.alerts

    def _learned(self, agent: _Agent, t: float) -> bool:
        th = self.thresholds
        return (
            agent.decisions >= th.learning_decisions and t - agent.first >= th.learning_hours * 3600
        )

    def _count(self, agent: _Agent, t: float, allow: bool) -> None:
        """Count a call in the sliding window and in its fixed window of activity."""
        window = self.thresholds.window
        second = math.floor(t)
        seconds = agent.seconds
        while seconds and seconds[0][0] <= t - window:
            _, calls, denials = seconds.popleft()
            agent.window_calls -= calls
            agent.window_denials -= denials
        if seconds and seconds[-1][0] == second:
            seconds[-1][1] += 1
            seconds[-1][2] += 0 if allow else 1
        else:
            seconds.append([second, 1, 0 if allow else 1])
        agent.window_calls += 1
        agent.window_denials += 0 if allow else 1
        bucket = math.floor(t / window)
        if bucket != agent.bucket:
            if agent.bucket_calls:
                if len(agent.active) == agent.active.maxlen:
                    agent.active_total -= agent.active[0]
                agent.active.append(agent.bucket_calls)
                agent.active_total += agent.bucket_calls
            agent.bucket, agent.bucket_calls = bucket, 0
        agent.bucket_calls += 1

    def _rate(self, agent: _Agent, raise_: _Raiser) -> None:
        th = self.thresholds
        if agent.window_calls < th.rate_min or not agent.active:
            return
        average = agent.active_total / len(agent.active)
        if agent.window_calls > th.rate_factor * average:
            raise_.rate(agent.window_calls, average)

    def _denials(self, agent: _Agent, raise_: _Raiser) -> None:
        th = self.thresholds
        denials, calls = agent.window_denials, agent.window_calls
        if denials < th.denial_burst or denials / calls < th.denial_ratio:
            return
        before = agent.decisions - (calls - 1)  # decisions outside the window
        history = (agent.denials - (denials - 1)) / before if before > 0 else None
        if history is None or denials / calls >= DENIALS_OVER_HISTORY * history:
            raise_.denials(denials, calls, history)


class _Raiser:
    """Builds the alerts one record raises, minding each kind's cooldown."""

    def __init__(
        self,
        thresholds: AnomalyThresholds,
        agent: _Agent,
        agent_id: str,
        t: float,
        record: dict[str, Any],
        seq: int,
    ) -> None:
        self.thresholds = thresholds
        self.agent = agent
        self.agent_id = agent_id
        self.t = t
        self.record = record
        self.seq = seq
        self.alerts: list[dict[str, Any]] = []

    def new_tool(self, tool: str, known: int) -> None:
        denied = self.record.get("allow") is not True
        outcome = "was denied" if denied else "was allowed"
        self._add(
            "new_tool",
            "low" if denied else "medium",
            f"Agent {self.agent_id} called tool {tool}, which it had never called before "
            f"(the call {outcome}).",
            tool,
            known,
        )

    def amount(self, value: Decimal, currency: str, largest: Decimal) -> None:
        factor = Decimal(str(self.thresholds.amount_factor))
        severity = "high" if value > largest * factor * 2 else "medium"
        unit = f" {currency}" if currency else ""
        self._add(
            "amount",
            severity,
            f"Agent {self.agent_id} asked to move {value}{unit}, more than "
            f"{self.thresholds.amount_factor:g} times the largest amount it was allowed "
            f"before ({largest}{unit}).",
            float(value),
            float(largest),
        )

    def rate(self, calls: int, average: float) -> None:
        factor = self.thresholds.rate_factor
        severity = "high" if calls > average * factor * 2 else "medium"
        self._add(
            "rate",
            severity,
            f"Agent {self.agent_id} made {calls} calls in {self.thresholds.window:g} seconds, "
            f"more than {factor:g} times its average of {average:.1f} per active window.",
            calls,
            round(average, 2),
        )

    def denials(self, denials: int, calls: int, history: float | None) -> None:
        ratio = denials / calls
        severity = "high" if ratio >= 0.9 else "medium"
        usual = "it had no earlier history" if history is None else f"usually {history:.0%}"
        self._add(
            "denials",
            severity,
            f"Agent {self.agent_id} was denied {denials} of {calls} calls in "
            f"{self.thresholds.window:g} seconds ({usual}), which looks like privilege probing.",
            denials,
            None if history is None else round(history, 3),
        )

    def hours(self, hour: int, share: float) -> None:
        severity = "medium" if share == 0 else "low"
        usual = (
            "an hour in which it had never been active"
            if share == 0
            else f"an hour that holds only {share:.1%} of its calls"
        )
        self._add(
            "hours",
            severity,
            f"Agent {self.agent_id} was active at {hour:02d}:00-{hour:02d}:59 UTC, {usual}.",
            hour,
            _hours_text(self.agent.hours, self.agent.decisions, self.thresholds.hour_share),
        )

    def _add(self, kind: str, severity: str, message: str, observed: Any, baseline: Any) -> None:
        quiet = self.agent.quiet_until
        if kind != "new_tool":
            if self.t < quiet.get(kind, -math.inf):
                return
            quiet[kind] = self.t + self.thresholds.cooldown
        self.alerts.append(
            {
                "kind": "alert",
                "at": datetime.fromtimestamp(self.t, UTC).isoformat(),
                "alert": kind,
                "agent": self.agent_id,
                "severity": severity,
                "message": message,
                "observed": observed,
                "baseline": baseline,
                "decision_id": self.record.get("decision_id"),
                "source_seq": self.seq,
            }
        )


def _time(value: Any) -> datetime | None:
    """A record's time (UTC when it names no zone), or None when it does not read as one."""
    if not isinstance(value, str):
        return None
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        return None
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at


def _amount(context: Any) -> tuple[Decimal, str] | None:
    """(amount, currency) of a decision's ``context.amount``: money, or a plain number
    (currency ''). None when there is none, or it is not a finite, non-negative amount."""
    if not isinstance(context, dict):
        return None
    raw = context.get("amount")
    currency = ""
    if isinstance(raw, dict):
        named = raw.get("currency")
        currency = named if isinstance(named, str) else ""
        raw = raw.get("amount")
    if isinstance(raw, bool) or not isinstance(raw, int | float | str):
        return None
    try:
        value = Decimal(str(raw))
    except InvalidOperation:
        return None
    if not value.is_finite() or value < 0:
        return None
    return value, currency


def _hours_text(hours: list[int], total: int, share: float) -> str:
    """The agent's usual hours of the day, e.g. "08-11, 14 UTC"."""
    usual = [h for h in range(24) if total and hours[h] / total >= share]
    if not usual:
        return "none yet"
    runs: list[list[int]] = []
    for h in usual:
        if runs and runs[-1][-1] == h - 1:
            runs[-1].append(h)
        else:
            runs.append([h])
    return (
        ", ".join(f"{r[0]:02d}" if len(r) == 1 else f"{r[0]:02d}-{r[-1]:02d}" for r in runs)
        + " UTC"
    )
