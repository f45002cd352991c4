"""How long one decision takes: the engine against a hand-written floor and against Cedar.

What it measures, in one run:

* the shipped policy set (``policies/``) on a mix of twelve requests that covers each
  path a decision takes: a single permit, a single forbid, default deny, a permit with a
  ``limit`` (counter read and write, per agent and per agent and record), a permit
  waiting on consent, globs, a generic ``db.read`` on a table, a permit that reads the
  decision's time in a zone (``weekday`` and ``hour`` of ``now`` in Europe/Berlin) inside
  its hours and after them; the mix as a whole, then each request alone. The same
  requests are decided by
  - the **floor**: the same logic as a hand-written Python ``if`` chain, which is what the
    logic costs with no engine at all;
  - **cedarpy**: an equivalent Cedar policy set through the fastest pre-parsed path the
    package offers (parsed ``PolicySet`` and ``Entities`` handles, the context already
    serialized), one request per ``is_authorized`` call and 100 per
    ``is_authorized_batch`` call; the faster of the two is the one compared;
* generated sets of 20, 1,000 and 10,000 rules, one rule per tool plus two global forbids,
  on 1,000 requests spread over those tools, and the 10,000-rule set once more on
  requests drawn from 20 tools only (the index's cost apart from touching more rules);
* how long the generated sets take to compile: parse + ``Bundle.build``, and
  ``Bundle.build`` alone, with gc on (as ``load_directory`` runs) and parse + build with
  gc off; without ``--quick`` also the full load with the checker.

Method. Every request is built once, before timing, through ``request_from_json`` against
the shipped schema; Cedar requests and entities are translated from the same ``Request``
objects. Every engine decides on a fixed clock (:data:`CLOCK`: Friday 2027-01-15, 09:00
in Berlin); a case that needs another instant carries it as the request's ``"time"``,
which ``now`` reads first, and the floor and the Cedar context read the same instant, so
no decision depends on when the benchmark runs. Before any timing, the floor and Cedar
must agree with the engine on allow/deny for every benchmark request and for every step
of the shipped policy tests, each at the instant the test's clock reads then, and the
engine must give each request its expected decision over a whole sample. Each case gets
a fresh ``Engine`` (fresh counters, empty candidate memo), is warmed up, then timed with
``time.perf_counter_ns`` over samples of 1,000 decisions (100 for Cedar and for the
one-request rows) until about 0.5 s of samples are collected (0.05 s with ``--quick``).
The garbage collector is collected before and disabled during each case's timing window.
Per-decision median and p99 are taken over the samples' per-decision means, so p99 is a
tail of batches, not of single decisions (a single sub-microsecond call is below what a
clock read resolves). Loop and call overhead are in every row alike; the "no-op call" row
shows how much that is.

Counters: the autonomous transfer is allowed by a permit with a daily cap, so each allow
records 25 USD, and the support read by one with an hourly cap of 100 reads per agent and
record. The counters are cleared between samples, outside the timing window, and one
sample holds at most 84 of each (2,100 USD, under the 5,000 USD cap; 84 reads of one
record, under 100), so no decision changes mid-run (checked before timing).

    python benchmarks/engine.py [--json] [--quick] [--strict]
"""

from __future__ import annotations

import argparse
import gc
import ipaddress
import json
import math
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

from pdp.counters import MemoryCounters
from pdp.engine import Bundle, Engine
from pdp.lang import ast
from pdp.lang.parser import parse
from pdp.lang.schema import SchemaModel
from pdp.lang.values import Duration, Money, Risk
from pdp.loader import load_directory, load_texts
from pdp.model import Request
from pdp.policytest import run_tests
from pdp.request import request_from_json

T = TypeVar("T")

ROOT = Path(__file__).resolve().parent.parent
POLICIES = ROOT / "policies"

DECISIONS_PER_SAMPLE = 1_000
CEDAR_DECISIONS_PER_SAMPLE = 100
GENERATED_SIZES = (20, 1_000, 10_000)
GENERATED_REQUESTS = 1_000

# Must-reach targets (from the issue).
TARGET_SHIPPED_MEDIAN_US = 2.0
TARGET_CEDAR_RATIO = 50.0
TARGET_SCALING_RATIO = 1.5
TARGET_COMPILE_10K_S = 2.0

# Every engine here decides on this clock, so no decision depends on when the benchmark
# runs: 2027-01-15T08:00:00Z, a Friday, 09:00 in Berlin, inside finance_reporting's hours
# (and where the policy tests' clock starts). A case that needs another instant gives
# its request a "time", which `now` reads before the clock; the floor reads it too.
CLOCK = datetime(2027, 1, 15, 8, tzinfo=UTC).timestamp()
BERLIN = ZoneInfo("Europe/Berlin")


def fixed_clock() -> float:
    """The clock of every engine of this benchmark."""
    return CLOCK


def berlin_time(at: datetime | None, clock: float) -> datetime:
    """The decision's instant on Berlin's wall clock: the request's time, else the clock's."""
    return at.astimezone(BERLIN) if at is not None else datetime.fromtimestamp(clock, BERLIN)


# The rules the floor and the Cedar set mirror; if policies/ changes, so must they.
SHIPPED_RULES = frozenset(
    f"agents.{name}"
    for name in (
        "inactive_agents",
        "deep_delegation",
        "risky_writes",
        "read_only",
        "small_transfers",
        "large_transfers",
        "external_search",
        "workspace_writes",
        "draft_mail",
        "send_mail_for_user",
        "analysts_read_orders",
        "finance_reporting",
        "delegated_tokens",
        "support_reads_customers",
    )
)


# ------------------------------------------------------------------ the shipped mix


@dataclass(frozen=True)
class Case:
    """One request of the shipped mix and the decision it must get."""

    name: str
    expect: str  # "allow", "deny", or "consent" (deny carrying a consent obligation)
    data: dict[str, Any]


PAY_BOT = {"id": "pay-bot", "purpose": "payments", "risk": "low", "status": "active"}
HELPER = {"id": "helper", "risk": "low", "status": "active"}
FIN_REPORT = {
    "id": "fin-report",
    "risk": "low",
    "status": "active",
    "owner": "finance",
    "purpose": "reporting",
}
FINANCE_EXPORT = {
    "agent": FIN_REPORT,
    "action": "db.export",
    "resource": {"type": "table", "id": "finance_ledger", "classification": "internal"},
    "context": {"session_age": "10m"},
}
TRANSFER_AMOUNT = "25 USD"  # at most 84 per 1,000-decision sample: 2,100 USD, under the cap

SHIPPED_CASES: tuple[Case, ...] = (
    Case("read tool", "allow", {"agent": HELPER, "tool": "search"}),
    Case(
        "autonomous small transfer (limit)",
        "allow",
        {"agent": PAY_BOT, "tool": "payments.transfer", "context": {"amount": TRANSFER_AMOUNT}},
    ),
    Case(
        "delegated transfer, no consent",
        "consent",
        {
            "agent": PAY_BOT,
            "user": {"id": "alice", "roles": ["employee"]},
            "tool": "payments.transfer",
            "context": {"amount": "200 USD"},
        },
    ),
    Case(
        "suspended agent",
        "deny",
        {"agent": {"id": "old-helper", "risk": "low", "status": "suspended"}, "tool": "search"},
    ),
    Case("no permit (default deny)", "deny", {"agent": HELPER, "tool": "shell.exec"}),
    Case(
        "db.read on a table",
        "allow",
        {
            "agent": {"id": "bi-bot", "risk": "low", "status": "active"},
            "user": {"id": "ana", "roles": ["analyst"]},
            "action": "db.read",
            "resource": {"type": "table", "id": "orders", "classification": "internal"},
        },
    ),
    Case(
        "workspace write (glob, ip)",
        "allow",
        {
            "agent": {"id": "ws", "risk": "medium", "status": "active", "labels": {"team": "docs"}},
            "tool": "fs.write_file",
            "context": {"ip": "10.1.2.3"},
        },
    ),
    Case(
        "high-risk write (glob forbid)",
        "deny",
        {
            "agent": {"id": "ops", "risk": "critical", "status": "active", "labels": {"team": "x"}},
            "tool": "fs.write_file",
            "context": {"ip": "10.1.2.3"},
        },
    ),
    Case("finance export (table glob, Berlin hours)", "allow", FINANCE_EXPORT),
    # 19:00 in Berlin in winter: the first minute finance_reporting no longer allows.
    Case(
        "finance export at 19:00 Berlin (after hours)",
        "deny",
        {**FINANCE_EXPORT, "time": "2027-01-15T18:00:00Z"},
    ),
    Case(
        "background agent drafts mail",
        "allow",
        {
            "agent": {
                "id": "mailer",
                "risk": "low",
                "status": "active",
                "type": "background",
                "scopes": ["mail:send"],
            },
            "tool": "mail.draft",
        },
    ),
    Case(
        "support reads a customer (limit per record)",
        "allow",
        {
            "agent": {"id": "helpdesk", "risk": "low", "status": "active", "purpose": "support"},
            "action": "crm.read",
            "resource": {"type": "customer", "id": "c-1"},
        },
    ),
)


# ------------------------------------------------------------------ the floor

READ_TOOLS = frozenset({"search", "read_file", "summarize", "sql.select"})
PAYMENT_TOOLS = frozenset({"payments.transfer", "payments.refund"})
OFFICE_NETWORK = ipaddress.ip_network("10.0.0.0/8")
ANALYST_CLASSIFICATIONS = frozenset({"internal", "public"})
ANALYST_ROLES = frozenset({"analyst", "auditor"})
NO_ITEMS: frozenset[str] = frozenset()


def floor_decide(q: Request, clock: float = CLOCK) -> bool:
    """policies/agents.pol as a hand-written if chain: what its logic costs without an engine.

    It follows the rules for requests that carry the attributes the rules read; the
    ``limit`` caps are not counted (the floor keeps no counters), obligations are a plain
    deny, and it names no deciding rule. ``now`` is the request's time, else ``clock``
    (the engines' fixed clock unless a policy test's clock is given).
    """
    agent = q.agent
    if agent.get("status") != "active" or q.delegation["depth"] > 2:
        return False
    delegated = q.delegation["delegated"]
    context = q.context
    if q.action == "tool.call":
        tool = q.resource["id"]
        if "write" in tool and agent.get("risk", Risk.critical) >= Risk.high:
            return False
        if tool in READ_TOOLS:
            return bool(agent["risk"] < Risk.high)
        if tool in PAYMENT_TOOLS:
            amount = context.get("amount")
            if agent.get("purpose") != "payments" or amount is None or amount.currency != "USD":
                return False
            consented = "payments:transfer" in context.get("consents", NO_ITEMS)
            if (
                agent["risk"] <= Risk.medium
                and amount.amount <= 1000
                and (consented or not delegated)
            ):
                return True
            return bool(
                tool == "payments.transfer"
                and delegated
                and amount.amount <= 10000
                and "treasurer" in (q.user or {}).get("roles", NO_ITEMS)
                and consented
                and context.get("acr") == "mfa"
            )
        if tool == "web.search":
            return bool(agent.get("type") == "external")
        if tool.startswith("fs.write"):
            ip = context.get("ip")
            return (
                "team" in agent.get("labels", {})
                and ip is not None
                and ip in OFFICE_NETWORK
                and "destructive" not in q.resource.get("annotations", NO_ITEMS)
            )
        if tool == "mail.draft":
            return not delegated and agent.get("type") == "background"
        if tool == "mail.send":
            return bool(delegated and "mail:send" in agent.get("scopes", NO_ITEMS))
        return False
    if q.action == "token.exchange" and q.resource["type"] == "audience":
        return bool(
            delegated
            and agent.get("risk", Risk.critical) < Risk.critical
            and context.get("consents", NO_ITEMS)
        )
    if q.resource["type"] == "table":
        table = q.resource["id"]
        if (
            q.action == "db.read"
            and table == "orders"
            and q.user is not None
            and not ANALYST_ROLES.isdisjoint(q.user.get("roles", NO_ITEMS))
            and q.resource.get("classification") in ANALYST_CLASSIFICATIONS
        ):
            return True
        age = context.get("session_age")
        return (
            q.action in ("db.read", "db.export")
            and table.startswith("finance_")
            and agent.get("owner") == "finance"
            and agent.get("purpose", "").startswith("report")
            and age is not None
            and age.seconds < 1800
            and finance_hours(berlin_time(q.time, clock))
        )
    if q.action == "crm.read" and q.resource["type"] == "customer":
        return bool(agent.get("purpose") == "support")
    return False


def finance_hours(berlin: datetime) -> bool:
    """finance_reporting's hours: Monday to Friday, from 7 to 19 o'clock in Berlin."""
    return berlin.weekday() <= 4 and 7 <= berlin.hour < 19


# ------------------------------------------------------------------ Cedar

# policies/agents.pol in Cedar, as far as Cedar goes. Risk is a Long 0..3, money a record
# {cents: Long, currency: String}, durations Longs in seconds, the user an entity named in
# the context, consents a set in the context, delegation facts context fields. Cedar skips
# a policy whose evaluation errors, so the forbids guard with `has` to fail closed as
# Tessera's do. Not in Cedar: `limit` caps (no counters: out of scope here, as they are
# for the floor), obligations (a permit that waits on consent or a step-up simply does
# not apply, so allow/deny still match) and time zones (Cedar has no clock and no zone
# database: the harness computes the decision's weekday, 1 = Monday, and hour on Berlin's
# wall clock and passes them as context.berlin_weekday and context.berlin_hour, as it
# passes the delegation facts).
CEDAR_POLICIES = """
@id("inactive_agents")
forbid (principal, action, resource)
unless { principal has status && principal.status == "active" };

@id("deep_delegation")
forbid (principal, action, resource)
when { context.depth > 2 };

@id("risky_writes")
forbid (principal, action == Action::"tool.call", resource is Tool)
when { resource.name like "*write*" && (!(principal has risk) || principal.risk >= 2) };

@id("read_only")
permit (principal, action == Action::"tool.call", resource)
when {
  resource in [Tool::"search", Tool::"read_file", Tool::"summarize", Tool::"sql.select"] &&
  principal.risk < 2
};

@id("small_transfers")
permit (principal, action == Action::"tool.call", resource)
when {
  resource in [Tool::"payments.transfer", Tool::"payments.refund"] &&
  principal.purpose == "payments" && principal.risk <= 1 &&
  context.amount.currency == "USD" && context.amount.cents <= 100000 &&
  (!context.delegated || context.consents.contains("payments:transfer"))
};

@id("large_transfers")
permit (principal, action == Action::"tool.call", resource == Tool::"payments.transfer")
when {
  principal.purpose == "payments" && context.delegated &&
  context.amount.currency == "USD" && context.amount.cents <= 1000000 &&
  context.user.roles.contains("treasurer") &&
  context.consents.contains("payments:transfer") &&
  context has acr && context.acr == "mfa"
};

@id("external_search")
permit (principal, action == Action::"tool.call", resource == Tool::"web.search")
when { principal.type == "external" };

@id("workspace_writes")
permit (principal, action == Action::"tool.call", resource is Tool)
when {
  resource.name like "fs.write*" &&
  principal has labels && principal.labels has team &&
  context.ip.isInRange(ip("10.0.0.0/8"))
}
unless { resource has annotations && resource.annotations.contains("destructive") };

@id("draft_mail")
permit (principal, action == Action::"tool.call", resource == Tool::"mail.draft")
when { !context.delegated && principal.type == "background" };

@id("send_mail_for_user")
permit (principal, action == Action::"tool.call", resource == Tool::"mail.send")
when { context.delegated && principal.scopes.contains("mail:send") };

@id("analysts_read_orders")
permit (principal, action == Action::"db.read", resource == Table::"orders")
when {
  context.user.roles.containsAny(["analyst", "auditor"]) &&
  ["internal", "public"].contains(resource.classification)
};

@id("finance_reporting")
permit (principal, action in [Action::"db.read", Action::"db.export"], resource is Table)
when {
  resource.name like "finance_*" &&
  principal.owner == "finance" && principal.purpose like "report*" &&
  context.session_age < 1800 &&
  context.berlin_weekday <= 5 && context.berlin_hour >= 7 && context.berlin_hour < 19
};

@id("delegated_tokens")
permit (principal, action == Action::"token.exchange", resource is Audience)
when { context.delegated && principal.risk < 3 && !context.consents.isEmpty() };

@id("support_reads_customers")
permit (principal, action == Action::"crm.read", resource is Customer)
when { principal.purpose == "support" };
"""

CEDAR_TYPES = {"tool": "Tool", "table": "Table", "audience": "Audience", "customer": "Customer"}


def load_cedarpy() -> Any:
    """The cedarpy module, or None when the bench extra is not installed."""
    try:
        import cedarpy
    except ImportError:
        return None
    return cedarpy


def cedar_value(value: Any) -> Any:
    """A typed request value as Cedar JSON."""
    if isinstance(value, bool | str):
        return value
    if isinstance(value, Risk):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, Money):
        cents = value.amount * 100
        if cents != cents.to_integral_value():
            raise ValueError(f"{value}: Cedar amounts are whole cents")
        return {"cents": int(cents), "currency": value.currency}
    if isinstance(value, Duration):
        return int(value.seconds)
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return {"__extn": {"fn": "ip", "arg": str(value)}}
    if isinstance(value, frozenset):
        return sorted(cedar_value(v) for v in value)
    if isinstance(value, tuple):
        return [cedar_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): cedar_value(v) for k, v in value.items()}
    raise TypeError(f"no Cedar form for {value!r}")


class CedarTranslation:
    """Cedar requests for Tessera requests, and the one entity store they all share."""

    def __init__(self) -> None:
        self.entities: dict[tuple[str, str], dict[str, Any]] = {}

    def _entity(self, kind: str, ident: str, attrs: dict[str, Any]) -> str:
        known = self.entities.setdefault((kind, ident), attrs)
        if known != attrs:
            raise ValueError(f"{kind}::{ident} appears with different attributes; use other ids")
        return f"{kind}::{json.dumps(ident)}"

    def request(self, q: Request, clock: float = CLOCK) -> dict[str, str]:
        """A Cedar request with its context already serialized (no per-call json.dumps);
        its instant is the request's time, else ``clock``, as for the floor."""
        agent = {k: cedar_value(v) for k, v in q.agent.items() if k != "id"}
        principal = self._entity("Agent", q.agent_id, agent)
        context = {k: cedar_value(v) for k, v in q.context.items()}
        context.setdefault("consents", [])
        context["delegated"] = q.delegation["delegated"]
        context["depth"] = q.delegation["depth"]
        berlin = berlin_time(q.time, clock)
        context["berlin_weekday"] = berlin.isoweekday()
        context["berlin_hour"] = berlin.hour
        if q.user is not None:
            user = {k: cedar_value(v) for k, v in q.user.items() if k != "id"}
            self._entity("User", str(q.user["id"]), user)
            context["user"] = {"__entity": {"type": "User", "id": q.user["id"]}}
        attrs = {k: cedar_value(v) for k, v in q.resource.items() if k not in ("type", "id")}
        attrs["name"] = q.resource["id"]
        resource = self._entity(CEDAR_TYPES[q.resource["type"]], q.resource["id"], attrs)
        return {
            "principal": principal,
            "action": f"Action::{json.dumps(q.action)}",
            "resource": resource,
            "context": json.dumps(context),
        }

    def entities_json(self) -> str:
        return json.dumps(
            [
                {"uid": {"type": kind, "id": ident}, "attrs": attrs, "parents": []}
                for (kind, ident), attrs in self.entities.items()
            ]
        )


# ------------------------------------------------------------------ generated sets


def generated_policy(rules: int) -> str:
    """``rules`` permits, one per tool, after two forbids that apply to every request."""
    lines = [
        "package generated",
        "",
        'forbid inactive_agents when agent.status != "active"',
        "forbid deep_delegation when delegation.depth > 2",
        "",
    ]
    lines += [
        f'permit rule_{i} call tool "tool_{i}" when agent.risk < high and agent.status == "active"'
        for i in range(rules)
    ]
    return "\n".join(lines) + "\n"


def generated_requests(
    rules: int, schema: SchemaModel, tools: int | None = None
) -> tuple[list[Request], list[tuple[bool, str | None]]]:
    """Requests spread at random over the tools (or the first ``tools`` of them): 85%
    allowed, 5% each of a suspended agent, a high-risk agent and a tool no rule names.
    Same seed for every size."""
    rng = random.Random(20_000)
    requests: list[Request] = []
    expected: list[tuple[bool, str | None]] = []
    for i in range(GENERATED_REQUESTS):
        kind = i % 20
        tool = rng.randrange(rules if tools is None else tools)
        agent = {"id": f"agent-{i % 50}", "risk": "low", "status": "active"}
        name = f"tool_{tool}"
        allow = True
        by: str | None = f"generated.rule_{tool}"
        if kind == 0:
            agent = {**agent, "id": "suspended-agent", "status": "suspended"}
            allow, by = False, "generated.inactive_agents"
        elif kind == 1:
            agent = {**agent, "id": "risky-agent", "risk": "high"}
            allow, by = False, None
        elif kind == 2:
            name = f"unlisted_{i % 7}"
            allow, by = False, None
        requests.append(request_from_json({"agent": agent, "tool": name}, schema))
        expected.append((allow, by))
    return requests, expected


# ------------------------------------------------------------------ timing


@dataclass(frozen=True)
class Timing:
    """Per-decision statistics of one case, in microseconds."""

    median_us: float
    p99_us: float
    samples: int
    decisions_per_sample: int

    def as_json(self) -> dict[str, Any]:
        return {
            "median_us": round(self.median_us, 4),
            "p99_us": round(self.p99_us, 4),
            "samples": self.samples,
            "decisions_per_sample": self.decisions_per_sample,
        }


@dataclass(frozen=True)
class Budget:
    """How long to warm up and to sample each case."""

    sample_s: float
    warmup_s: float
    min_samples: int


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def measure(
    run: Callable[[], object],
    decisions: int,
    budget: Budget,
    between: Callable[[], None] | None = None,
) -> Timing:
    """Time ``run`` (which makes ``decisions`` decisions) until the budget is spent.

    ``between`` runs before every sample, outside the timing window (to reset counters).
    """
    clock = time.perf_counter_ns
    warm_until = clock() + int(budget.warmup_s * 1e9)
    warm = 0
    while warm < 2 or clock() < warm_until:
        if between is not None:
            between()
        run()
        warm += 1
    samples: list[int] = []
    spent = 0
    goal = int(budget.sample_s * 1e9)
    gc.collect()
    gc.disable()
    try:
        while spent < goal or len(samples) < budget.min_samples:
            if between is not None:
                between()
            start = clock()
            run()
            elapsed = clock() - start
            samples.append(elapsed)
            spent += elapsed
    finally:
        gc.enable()
    per_decision = [s / decisions / 1_000 for s in samples]
    return Timing(
        statistics.median(per_decision), percentile(per_decision, 0.99), len(samples), decisions
    )


def decide_loop(decide: Callable[[T], object], batch: Sequence[T]) -> Callable[[], None]:
    """One sample: every request of the batch, decided in order."""

    def run() -> None:
        for request in batch:
            decide(request)

    return run


def no_op(request: Request) -> None:
    """The cheapest possible decision: what the timing loop and one call cost."""


def cycled(items: Sequence[Any], length: int) -> list[Any]:
    return [items[i % len(items)] for i in range(length)]


# ------------------------------------------------------------------ the run


@dataclass
class Target:
    name: str
    limit: str
    value: float | None
    passed: bool | None  # None: could not be measured
    why: str | None = None  # why it could not be measured

    @property
    def verdict(self) -> str:
        return "SKIP" if self.passed is None else ("PASS" if self.passed else "FAIL")

    def to_json(self, digits: int | None = None) -> dict[str, Any]:
        value = self.value if self.value is None or digits is None else round(self.value, digits)
        out = {
            "name": self.name,
            "limit": self.limit,
            "value": value,
            "pass": self.passed,
            "verdict": self.verdict,
        }
        return out if self.why is None else {**out, "why": self.why}


def environment(quick: bool, **versions: str) -> dict[str, Any]:
    """Where a benchmark ran, for its JSON: the interpreter, the machine, the versions of
    what it measures, whether it was a quick run, and when."""
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "machine": f"{platform.system()} {platform.machine()}",
        "cpus": os.cpu_count(),
        **versions,
        "quick": quick,
        "when": datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def print_targets(targets: Sequence[Target], seconds: float) -> None:
    """The report's last lines: each target's verdict, and how long the run took."""
    print("\ntargets")
    for t in targets:
        note = f"; not measured: {t.why}" if t.passed is None and t.why else ""
        print(f"  {t.verdict:4}  {t.name}: {fmt(t.value, 2)} ({t.limit}){note}")
    print(f"\n{seconds} s")


def benchmark_parser(description: str, quick: str) -> argparse.ArgumentParser:
    """A benchmark's command line with the flags every one takes: --json, --quick (whose
    help says what it shortens) and --strict."""
    parser = argparse.ArgumentParser(
        description=description,
        epilog="Method and caveats: see the module docstring and benchmarks/README.md.",
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object with every number instead"
    )
    parser.add_argument("--quick", action="store_true", help=quick)
    parser.add_argument(
        "--strict",
        action="store_true",
        help="exit 1 when a target is missed, or a row or target could not be measured "
        "(default: exit 0)",
    )
    return parser


def finish(
    result: dict[str, Any],
    targets: Sequence[Target],
    args: argparse.Namespace,
    report: Callable[[dict[str, Any]], None],
    skipped: dict[str, str] | None = None,
) -> None:
    """Print the result (JSON with --json, else the report), then on standard error each
    row in ``skipped`` (its name: why it could not run), whatever the flags, so a missing
    row is never silent. With --strict, exit 1, saying why, when a target was missed or
    not measured or a row was skipped: a run that measured less than it names fails."""
    skipped = skipped or {}
    if skipped:
        result.setdefault("skipped", skipped)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        report(result)
    for row, why in skipped.items():
        print(f"skipped: {row}: {why}", file=sys.stderr)
    if args.strict:
        strict_exit(targets, skipped)


def refuse_skips(args: argparse.Namespace, skipped: dict[str, str]) -> None:
    """Before measuring: with --strict, exit 1 at once when a row cannot run, naming it
    and why (the run could not pass, so it does not spend minutes first); without, say
    on standard error which rows will be missing."""
    for row, why in skipped.items():
        prefix = "--strict" if args.strict else "skipping"
        print(f"{prefix}: {row}: could not run: {why}", file=sys.stderr)
    if args.strict and skipped:
        sys.exit(1)


def strict_exit(targets: Sequence[Target], skipped: dict[str, str]) -> None:
    """--strict: exit 1, naming each target missed or not measured and each row skipped."""
    problems = [
        f"{t.name}: {fmt(t.value, 3)} ({t.limit}): missed" for t in targets if t.passed is False
    ]
    problems += [
        f"{t.name}: not measured: {t.why or 'no value'}" for t in targets if t.passed is None
    ]
    problems += [f"{row}: could not run: {why}" for row, why in skipped.items()]
    for problem in problems:
        print(f"--strict: {problem}", file=sys.stderr)
    if problems:
        sys.exit(1)


def check_shipped(bundle: Bundle) -> None:
    ids = {rule.id for rule in bundle.rules}
    if ids != SHIPPED_RULES:
        raise SystemExit(
            "policies/ no longer has the rules this benchmark mirrors "
            f"(added: {sorted(ids - SHIPPED_RULES)}, gone: {sorted(SHIPPED_RULES - ids)}); "
            "update floor_decide and CEDAR_POLICIES in benchmarks/engine.py"
        )


def expectation_met(expect: str, decision: Any) -> bool:
    if expect == "allow":
        return bool(decision.allow)
    if expect == "consent":
        kinds = {(o.kind, o.value) for o in decision.obligations}
        return not decision.allow and ("consent", "payments:transfer") in kinds
    return not decision.allow and not decision.obligations


def cross_check_tests(bundle: Bundle) -> int:
    """Floor and Cedar against the engine on every step of the shipped policy tests, at
    the instant the test's clock reads at that step (tests move it with ``at``/``after``).

    The tests run as ``tessera test`` runs them; before a step's decision, its request is
    decided once more by a fresh engine whose clock reads the step's instant (fresh
    counters, so no ``limit`` is reached: the floor and Cedar count none either), and by
    the floor and Cedar at the same instant. A step repeated with ``times`` is compared
    once. Returns how many requests were compared.
    """
    cedarpy = load_cedarpy()
    policies = None if cedarpy is None else cedarpy.PolicySet.from_str(CEDAR_POLICIES)
    compared: list[Request] = []

    def compare(test: ast.Test, request: Request, engine: Engine) -> None:
        if compared and compared[-1] is request:
            return  # the same step, once more
        compared.append(request)
        instant = engine.clock()
        allow = Engine(bundle, clock=lambda: instant).decide(request).allow
        at = datetime.fromtimestamp(instant, UTC).isoformat().replace("+00:00", "Z")
        where = f"test {test.name!r}, step {len(compared)} compared, clock {at}"
        if floor_decide(request, instant) != allow:
            raise SystemExit(f"floor and engine disagree on {where}")
        if cedarpy is not None:
            translation = CedarTranslation()
            cedar_request = translation.request(request, instant)
            entities = cedarpy.Entities.from_json_str(translation.entities_json())
            if cedarpy.is_authorized(cedar_request, policies, entities).allowed != allow:
                raise SystemExit(f"cedar and engine disagree on {where}")

    failed = [
        result.test.name for result in run_tests(bundle, observe=compare) if not result.passed
    ]
    if failed:
        raise SystemExit(
            f"the shipped policy tests fail ({', '.join(map(repr, failed))}), so their later "
            "steps cannot be cross-checked; `make check-policies` says why"
        )
    return len(compared)


def check_decisions(bundle: Bundle, requests: Sequence[Request]) -> tuple[list[bool], int]:
    """Before any timing: the engine gives every request of the mix its expected decision
    over one whole sample (so a counter filling up within a sample would show), the floor
    agrees with it on each, and the floor and Cedar agree with it on the policy tests.
    Returns the engine's allow for each request and how many test requests were compared.
    """
    batch = cycled(requests, DECISIONS_PER_SAMPLE)
    expects = cycled([case.expect for case in SHIPPED_CASES], DECISIONS_PER_SAMPLE)
    engine = Engine(bundle, MemoryCounters(), fixed_clock)
    for expect, request in zip(expects, batch, strict=True):
        decision = engine.decide(request)
        if not expectation_met(expect, decision):
            raise SystemExit(f"engine: expected {expect}, got {decision} for {request.to_json()}")
    engine_allow = [Engine(bundle, clock=fixed_clock).decide(r).allow for r in requests]
    for case, request, allow in zip(SHIPPED_CASES, requests, engine_allow, strict=True):
        if floor_decide(request) != allow:
            raise SystemExit(f"floor and engine disagree on {case.name!r}")
    return engine_allow, cross_check_tests(bundle)


def run_shipped(budget: Budget) -> dict[str, Any]:
    loaded = load_directory(POLICIES)
    bundle = loaded.bundle
    check_shipped(bundle)
    requests = [request_from_json(case.data, bundle.schema) for case in SHIPPED_CASES]
    batch = cycled(requests, DECISIONS_PER_SAMPLE)
    engine_allow, test_requests = check_decisions(bundle, requests)

    out: dict[str, Any] = {
        "policies": str(POLICIES.relative_to(ROOT)),
        "bundle_version": bundle.version,
        "rules": len(bundle.rules),
        "test_requests_cross_checked": test_requests,
        "requests": [
            {"name": case.name, "expect": case.expect, "allow": allow}
            for case, allow in zip(SHIPPED_CASES, engine_allow, strict=True)
        ],
    }
    out["no_op_call"] = measure(decide_loop(no_op, batch), len(batch), budget).as_json()
    out["floor"] = measure(decide_loop(floor_decide, batch), len(batch), budget).as_json()
    counters = MemoryCounters()
    engine = Engine(bundle, counters, fixed_clock)
    out["engine"] = measure(
        decide_loop(engine.decide, batch), len(batch), budget, counters.clear
    ).as_json()
    out["cedarpy"] = run_cedar(requests, engine_allow, budget)

    per_request = Budget(budget.sample_s / 4, budget.warmup_s / 4, budget.min_samples)
    rows = []
    for case, request in zip(SHIPPED_CASES, requests, strict=True):
        # As many of one request per sample as the mix has: 83 transfers of 25 USD stay
        # under the daily cap and 83 reads of one record under its hourly cap, so the
        # limited allows stay allows.
        same = [request] * (DECISIONS_PER_SAMPLE // len(SHIPPED_CASES))
        counters = MemoryCounters()
        engine = Engine(bundle, counters, fixed_clock)
        timing = measure(decide_loop(engine.decide, same), len(same), per_request, counters.clear)
        floor = measure(decide_loop(floor_decide, same), len(same), per_request)
        rows.append(
            {
                "name": case.name,
                "expect": case.expect,
                "engine": timing.as_json(),
                "floor": floor.as_json(),
            }
        )
    out["by_request"] = rows
    return out


def run_cedar(
    requests: Sequence[Request], engine_allow: Sequence[bool], budget: Budget
) -> dict[str, Any]:
    cedarpy = load_cedarpy()
    if cedarpy is None:
        return {"skipped": "cedarpy is not installed (pip install -e '.[bench]')"}
    translation = CedarTranslation()
    cedar_requests = [translation.request(q) for q in requests]
    policies = cedarpy.PolicySet.from_str(CEDAR_POLICIES)
    entities = cedarpy.Entities.from_json_str(translation.entities_json())
    for case, request, allow in zip(SHIPPED_CASES, cedar_requests, engine_allow, strict=True):
        result = cedarpy.is_authorized(request, policies, entities)
        if result.diagnostics.errors:
            raise SystemExit(f"cedar: {case.name!r} raised {result.diagnostics.errors}")
        if result.allowed != allow:
            raise SystemExit(f"cedar and engine disagree on {case.name!r}")
    batch = cycled(cedar_requests, CEDAR_DECISIONS_PER_SAMPLE)
    single = partial(cedarpy.is_authorized, policies=policies, entities=entities)
    one = measure(decide_loop(single, batch), len(batch), budget)
    many = measure(
        partial(cedarpy.is_authorized_batch, batch, policies, entities), len(batch), budget
    )
    fastest = "is_authorized_batch" if many.median_us < one.median_us else "is_authorized"
    return {
        "version": metadata.version("cedarpy"),
        "path": "PolicySet.from_str + Entities.from_json_str handles, context pre-serialized",
        "is_authorized": one.as_json(),
        "is_authorized_batch": many.as_json(),
        "fastest": fastest,
        "limits": "out of scope for Cedar: no counters, so limit caps are not evaluated",
    }


def compile_times(rules: int, schema_text: str, repeats: int, with_check: bool) -> dict[str, Any]:
    """Seconds to load a generated set the way ``load_directory`` does (parse + check +
    compile, the cyclic gc paused by the loader), and its parts: parse + build with gc on
    and off, and ``Bundle.build`` (the compiler and the index) alone. Medians of
    ``repeats``.
    """
    text = generated_policy(rules)
    totals: list[float] = []
    builds: list[float] = []
    quiet: list[float] = []
    for _ in range(repeats):
        gc.collect()
        start = time.perf_counter()
        module = parse(text, f"generated_{rules}.pol")
        parsed = time.perf_counter()
        Bundle.build(module.rules, {}, f"generated-{rules}")
        built = time.perf_counter()
        totals.append(built - start)
        builds.append(built - parsed)
        del module
        gc.collect()
        gc.disable()
        try:
            start = time.perf_counter()
            Bundle.build(parse(text, f"generated_{rules}.pol").rules, {}, f"generated-{rules}")
            quiet.append(time.perf_counter() - start)
        finally:
            gc.enable()
    out: dict[str, Any] = {
        "parse_build_s": round(statistics.median(totals), 4),
        "build_s": round(statistics.median(builds), 4),
        "parse_build_gc_off_s": round(statistics.median(quiet), 4),
        "repeats": repeats,
        "load_with_check_s": None,
    }
    if with_check:
        loads = []
        for _ in range(repeats):
            gc.collect()
            start = time.perf_counter()
            load_texts({"generated.pol": text, "schema.pol": schema_text})
            loads.append(time.perf_counter() - start)
        out["load_with_check_s"] = round(statistics.median(loads), 4)
    return out


def check_generated(engine: Engine, requests: list[Request], expected: list[Any]) -> None:
    for request, (allow, by) in zip(requests, expected, strict=True):
        decision = engine.decide(request)
        if decision.allow != allow or (by is not None and decision.decided_by != (by,)):
            raise SystemExit(f"generated set: unexpected {decision} for {request.to_json()}")


def run_generated(budget: Budget, repeats: int, with_check: bool) -> dict[str, Any]:
    schema_text = (POLICIES / "schema.pol").read_text(encoding="utf-8")
    schema = load_directory(POLICIES).bundle.schema
    rows = []
    bundle: Bundle | None = None
    for rules in GENERATED_SIZES:
        compiled = compile_times(rules, schema_text, repeats, with_check)
        bundle = Bundle.build(parse(generated_policy(rules), "generated.pol").rules, {}, "gen")
        requests, expected = generated_requests(rules, schema)
        check_generated(Engine(bundle, clock=fixed_clock), requests, expected)
        engine = Engine(bundle, clock=fixed_clock)
        timing = measure(decide_loop(engine.decide, requests), len(requests), budget)
        rows.append({"rules": rules + 2, "permits": rules, "engine": timing.as_json(), **compiled})
    # The largest set again, its requests drawn from only as many tools as the smallest
    # set has: this separates the index's cost from the cost of touching more rules.
    assert bundle is not None
    tools = GENERATED_SIZES[0]
    requests, expected = generated_requests(GENERATED_SIZES[-1], schema, tools)
    check_generated(Engine(bundle, clock=fixed_clock), requests, expected)
    engine = Engine(bundle, clock=fixed_clock)
    timing = measure(decide_loop(engine.decide, requests), len(requests), budget)
    narrow = {
        "rules": GENERATED_SIZES[-1] + 2,
        "permits": GENERATED_SIZES[-1],
        "tools_used": tools,
        "engine": timing.as_json(),
    }
    return {"sets": rows, "largest_set_few_tools": narrow}


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def evaluate(shipped: dict[str, Any], generated: dict[str, Any]) -> dict[str, Any]:
    engine = shipped["engine"]["median_us"]
    cedar = shipped["cedarpy"]
    cedar_median = None if "skipped" in cedar else cedar[cedar["fastest"]]["median_us"]
    by_size = {row["permits"]: row for row in generated["sets"]}
    small = by_size[GENERATED_SIZES[0]]["engine"]["median_us"]
    large = by_size[GENERATED_SIZES[-1]]["engine"]["median_us"]
    narrow = generated["largest_set_few_tools"]["engine"]["median_us"]
    ratios = {
        "engine_over_floor": ratio(engine, shipped["floor"]["median_us"]),
        "cedarpy_over_engine": ratio(cedar_median, engine),
        "rules_10000_over_20": ratio(large, small),
        "rules_10000_on_20_tools_over_20": ratio(narrow, small),
    }
    compile_10k = by_size[10_000]["load_with_check_s"]
    cedar_ratio = ratios["cedarpy_over_engine"]
    targets = [
        Target(
            "median per decision, shipped set",
            f"<= {TARGET_SHIPPED_MEDIAN_US:g} us",
            engine,
            engine <= TARGET_SHIPPED_MEDIAN_US,
        ),
        Target(
            "faster than cedarpy (fastest path)",
            f">= {TARGET_CEDAR_RATIO:g}x",
            cedar_ratio,
            None if cedar_ratio is None else cedar_ratio >= TARGET_CEDAR_RATIO,
            cedar.get("skipped"),
        ),
        Target(
            "10,000-rule median / 20-rule median",
            f"<= {TARGET_SCALING_RATIO:g}x",
            ratios["rules_10000_over_20"],
            ratios["rules_10000_over_20"] is not None
            and ratios["rules_10000_over_20"] <= TARGET_SCALING_RATIO,
        ),
        Target(
            "load 10,000 rules (parse + check + compile)",
            f"< {TARGET_COMPILE_10K_S:g} s",
            compile_10k,
            compile_10k < TARGET_COMPILE_10K_S,
        ),
    ]
    return {"ratios": ratios, "targets": targets}


NOTES = (
    "gc is collected before and disabled during each timing window; compile times run "
    "with gc enabled, as load_directory does, and again with gc disabled",
    "p99 is over per-sample means (1,000 decisions a sample; 100 for cedarpy and for the "
    "by-request rows), not over single decisions",
    "each case has a fresh Engine; warm-up fills its candidate memo (steady state)",
    "every engine decides on a fixed clock, 2027-01-15T08:00:00Z (Friday 09:00 in Berlin); "
    "the after-hours finance export carries its own time (19:00 in Berlin); the floor and "
    "cedarpy read the same instants",
    "the limited transfer and support read allows record usage in MemoryCounters; counters "
    "are cleared between samples, outside the timing window, so no cap is reached",
    "cedarpy: limits are out of scope for Cedar (no counters); consent and step-up "
    "obligations are a plain deny there; it has no time zones, so the harness gives it "
    "the Berlin weekday and hour as context fields",
    "the floor counts no limits either and returns a bool, not a Decision",
    "the '20 tools used' row decides the 10,000-rule set on requests drawn from 20 tools: "
    "it separates the index's cost from the cost of touching ~1,000 different rules",
)


def fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def print_report(result: dict[str, Any]) -> None:
    env = result["environment"]
    shipped = result["shipped"]
    cedar = shipped["cedarpy"]
    print(
        f"Tessera engine benchmark  (Python {env['python']}, {env['machine']}, "
        f"cedarpy {cedar.get('version', 'not installed')}{', quick' if env['quick'] else ''})"
    )
    print("µs per decision; median and p99 over per-sample means; gc off while timing\n")
    header = f"{'case':58s} {'median':>9s} {'p99':>9s} {'samples':>8s}"

    def row(label: str, timing: dict[str, Any]) -> None:
        print(
            f"{label:58s} {fmt(timing['median_us']):>9s} {fmt(timing['p99_us']):>9s} "
            f"{timing['samples']:>8d}"
        )

    print(
        f"shipped set: {shipped['rules']} rules, mix of {len(shipped['requests'])} requests; "
        f"floor and cedarpy agree with the engine on them and on the "
        f"{shipped['test_requests_cross_checked']} requests of the policy tests"
    )
    print(header)
    row("  no-op call (loop + one Python call)", shipped["no_op_call"])
    row("  floor: hand-written if chain", shipped["floor"])
    row("  engine", shipped["engine"])
    if "skipped" in cedar:
        print(f"  cedarpy: {cedar['skipped']}")
    else:
        row("  cedarpy is_authorized, one request per call", cedar["is_authorized"])
        row(
            f"  cedarpy is_authorized_batch, {CEDAR_DECISIONS_PER_SAMPLE} requests per call",
            cedar["is_authorized_batch"],
        )
        print(f"  cedarpy path: {cedar['path']}; fastest: {cedar['fastest']}")
        print(f"  cedarpy: {cedar['limits']}")

    print("\nshipped set by request (engine / floor median)")
    for item in shipped["by_request"]:
        print(
            f"  {item['name']:44s} {item['expect']:8s} {fmt(item['engine']['median_us']):>9s}"
            f" {fmt(item['floor']['median_us']):>9s}"
        )

    print(
        f"\ngenerated sets: one permit per tool + 2 global forbids, "
        f"{GENERATED_REQUESTS:,} requests spread over the tools"
    )
    print(
        f"{'rules':>22s} {'median':>9s} {'p99':>9s} {'samples':>8s}"
        f" {'parse+build s':>14s} {'build s':>8s} {'gc off s':>9s} {'load+check s':>13s}"
    )
    for item in result["generated"]["sets"]:
        engine = item["engine"]
        print(
            f"{item['rules']:>22,d} {fmt(engine['median_us']):>9s} {fmt(engine['p99_us']):>9s}"
            f" {engine['samples']:>8d} {fmt(item['parse_build_s']):>14s}"
            f" {fmt(item['build_s']):>8s} {fmt(item['parse_build_gc_off_s']):>9s}"
            f" {fmt(item['load_with_check_s']):>13s}"
        )
    narrow = result["generated"]["largest_set_few_tools"]
    engine = narrow["engine"]
    label = f"{narrow['rules']:,d} ({narrow['tools_used']} tools used)"
    print(
        f"{label:>22s} {fmt(engine['median_us']):>9s} {fmt(engine['p99_us']):>9s}"
        f" {engine['samples']:>8d}"
    )
    print("  (parse+build and build with gc on; 'gc off s' is parse+build with gc disabled)")

    ratios = result["ratios"]
    print("\nratios")
    print(f"  engine vs floor:      engine is {fmt(ratios['engine_over_floor'], 1)}x slower")
    print(f"  cedarpy vs engine:    engine is {fmt(ratios['cedarpy_over_engine'], 1)}x faster")
    print(f"  10,000 vs 20 rules:   median ratio {fmt(ratios['rules_10000_over_20'], 2)}x")
    print(
        "  10,000 rules on 20 tools vs 20 rules: median ratio "
        f"{fmt(ratios['rules_10000_on_20_tools_over_20'], 2)}x"
    )

    print("\ntargets")
    for target in result["targets"]:
        why = f"; not measured: {target['why']}" if "why" in target else ""
        print(
            f"  {target['verdict']:4s}  {target['name']:44s} {target['limit']:>10s}"
            f"   measured {fmt(target['value'], 3)}{why}"
        )
    print("\nnotes")
    for note in result["notes"]:
        print(f"  - {note}")


def main() -> None:
    parser = benchmark_parser(
        "Time Tessera decisions: the shipped policies against a hand-written floor and "
        "cedarpy, generated sets of 20 to 10,000 rules, and their compile times. "
        "Prints PASS/FAIL against the project's targets.",
        quick="short timing windows and one compile run (a smoke test; numbers are noisy)",
    )
    args = parser.parse_args()

    budget = Budget(0.05, 0.01, 5) if args.quick else Budget(0.5, 0.1, 30)
    started = time.perf_counter()
    shipped = run_shipped(budget)
    generated = run_generated(budget, 1 if args.quick else 3, with_check=True)
    verdict = evaluate(shipped, generated)
    targets: list[Target] = verdict["targets"]
    result: dict[str, Any] = {
        "benchmark": "engine",
        "environment": environment(args.quick),
        "method": {
            "timer": "time.perf_counter_ns",
            "decisions_per_sample": DECISIONS_PER_SAMPLE,
            "cedar_decisions_per_sample": CEDAR_DECISIONS_PER_SAMPLE,
            "sample_seconds_per_case": budget.sample_s,
            "warmup_seconds_per_case": budget.warmup_s,
            "gc_disabled_while_timing": True,
            "engine_clock": datetime.fromtimestamp(CLOCK, UTC).isoformat(),
        },
        "shipped": shipped,
        "generated": generated,
        "ratios": {k: None if v is None else round(v, 3) for k, v in verdict["ratios"].items()},
        "targets": [t.to_json(4) for t in targets],
        "notes": list(NOTES),
        "seconds": round(time.perf_counter() - started, 1),
    }
    cedar = shipped["cedarpy"]
    skipped = {"cedarpy rows": cedar["skipped"]} if "skipped" in cedar else {}
    finish(result, targets, args, print_report, skipped)


if __name__ == "__main__":
    main()
