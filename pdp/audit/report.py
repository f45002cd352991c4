"""Compliance reports: what one agent, or every agent, was and did over a period.

:func:`gather` reads the store once into a :class:`Report`: each agent's identity (owner,
purpose, risk, status and how they changed), its credentials (OAuth clients and API keys),
the tokens it got, the users it acted for and the consents they gave, its decisions over
time, its denials and its anomaly alerts, and whether every audit trail's chain verifies.
The three renderings read only that structure: :func:`to_json` (stable keys, documented in
docs/audit.md), :func:`to_markdown` and :func:`pdp.audit.report_html.render` (one
self-contained page: inline CSS, an inline SVG chart, no script, no external URL, every
value escaped); :func:`pdp.audit.report_formats.render` gives the one asked for.

The period is ``since`` (inclusive) to ``until`` (exclusive), either open. An agent's
identity, credentials and consents are shown as they stood at the end of the period, so a
report on a past period says the same whenever it is made; only the chain verification
is of the moment the report is made.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from issuer.agents import Agent
from issuer.keys import every_public_key
from issuer.models import CONSENT
from issuer.store import Change, Store
from pdp.audit.chain import TRAILS
from pdp.audit.checkpoints import CHECKPOINTED, verify_checkpoints
from pdp.audit.checkpoints import TRAIL as CHECKPOINT_TRAIL
from pdp.audit.query import entries, verify_trail
from pdp.errors import PdpError

FORMAT = "tessera.report/1"
"""The JSON report's ``format``; it changes only when a key changes meaning or goes away."""

DENIALS_LISTED = 100  # the most recent denials listed per agent (all are counted)
TOP = 10  # rows in "most denied" and "unknown agents"
PROBLEMS_LISTED = 50  # chain problems listed per trail (all are counted)
HOURLY_UP_TO = timedelta(days=2)
DAILY_UP_TO = timedelta(days=92)

Unit = Literal["hour", "day", "week"]
_CREDENTIAL_KINDS = {"Client": "client", "ApiKey": "api_key"}


class ReportError(PdpError, ValueError):
    """A report that cannot be made as asked (an unknown agent, a period that is empty)."""


# ------------------------------------------------------------------ the report


@dataclass(frozen=True)
class Period:
    """``since`` (inclusive) to ``until`` (exclusive); None is open."""

    since: datetime | None = None
    until: datetime | None = None

    def __post_init__(self) -> None:
        if self.since and self.until and self.since >= self.until:
            raise ReportError("--since must be before --until")

    def holds(self, at: datetime) -> bool:
        return (self.since is None or at >= self.since) and (self.until is None or at < self.until)

    def before_end(self, at: datetime) -> bool:
        return self.until is None or at < self.until

    def overlaps(self, start: datetime, end: datetime | None) -> bool:
        """Whether something that existed from ``start`` until ``end`` (None: still does)
        existed during the period."""
        return self.before_end(start) and (end is None or self.since is None or end >= self.since)


@dataclass(frozen=True)
class StatusChange:
    """One change of an agent's directory entry, with the governance attributes after it."""

    at: datetime
    op: str  # create, replace or delete
    actor: str
    version: int
    status: str | None
    risk: str | None
    owner: str | None


@dataclass(frozen=True)
class Credential:
    """An OAuth client or an API key the agent authenticates with (never its secret)."""

    kind: str  # client or api_key
    id: str  # the client_id, or the API key's prefix (tsk_<key id>)
    name: str | None
    auth_method: str | None
    grant_types: tuple[str, ...]
    scope: str
    created_at: datetime
    created_by: str
    expires_at: datetime | None
    revoked_at: datetime | None
    revoked_by: str | None


@dataclass(frozen=True)
class Delegation:
    """A user the agent acted for, through one chain of actors."""

    user: str
    chain: tuple[str, ...]
    tokens: int  # tokens exchanged for this user and chain
    decisions: int
    first: datetime
    last: datetime


@dataclass(frozen=True)
class Consent:
    """Scopes a user granted a client for the agent, as they stood at the end of the period."""

    user: str
    client: str
    scopes: tuple[str, ...]
    granted_at: datetime


@dataclass(frozen=True)
class ConsentChange:
    at: datetime
    op: str  # granted, widened or revoked
    user: str
    client: str
    scopes: tuple[str, ...]
    actor: str


@dataclass(frozen=True)
class Bucket:
    """Decisions in one hour, day or week starting at ``start``."""

    start: datetime
    allowed: int
    denied: int


@dataclass(frozen=True)
class Denial:
    at: datetime
    decision_id: str
    action: str
    resource: str  # type:id
    user: str | None
    decided_by: tuple[str, ...]
    reasons: tuple[str, ...]
    obligations: tuple[str, ...]


@dataclass(frozen=True)
class Denied:
    """How often one action on one resource was denied."""

    action: str
    resource: str
    count: int


@dataclass(frozen=True)
class Alert:
    at: datetime
    alert: str
    severity: str
    message: str
    observed: Any
    baseline: Any
    decision_id: str | None


@dataclass(frozen=True)
class Decisions:
    total: int
    allowed: int
    denied: int
    timeline: tuple[Bucket, ...]


@dataclass(frozen=True)
class AgentReport:
    id: str
    name: str
    display_name: str | None
    owner: str | None
    purpose: str | None
    risk: str | None
    type: str | None
    status: str | None
    deleted: bool  # gone from the directory by the end of the period
    status_history: tuple[StatusChange, ...]
    credentials: tuple[Credential, ...]
    tokens: Mapping[str, int]  # tokens issued in the period, by grant
    delegations: tuple[Delegation, ...]
    consents: tuple[Consent, ...]
    consent_history: tuple[ConsentChange, ...]
    decisions: Decisions
    most_denied: tuple[Denied, ...]
    denials: tuple[Denial, ...]  # the most recent DENIALS_LISTED, newest first
    alerts: tuple[Alert, ...]


@dataclass(frozen=True)
class UnknownAgent:
    """An agent id decisions were asked for that the directory never held."""

    id: str
    decisions: int
    denied: int


@dataclass(frozen=True)
class TrailCheck:
    """One trail's hash chain and the signed checkpoints that vouch for it."""

    trail: str
    entries: int
    checkpoints: int  # signed checkpoints of this trail that verified
    vouched: int  # the newest entry a verified checkpoint vouches for (0: none)
    problems: tuple[str, ...]  # the first PROBLEMS_LISTED
    problem_count: int

    @property
    def intact(self) -> bool:
        return self.problem_count == 0


@dataclass(frozen=True)
class Report:
    generated_at: datetime
    scope: str  # "agent" (one) or "all"
    period: Period
    unit: Unit  # the timeline's bucket
    agents: tuple[AgentReport, ...]
    unknown_agents: tuple[UnknownAgent, ...]
    decisions: Decisions  # over every agent in the report
    verification: tuple[TrailCheck, ...]

    @property
    def intact(self) -> bool:
        return all(check.intact for check in self.verification)


# ------------------------------------------------------------------ gathering


def verify(
    store: Store, jwk_set: Mapping[str, Any] | None = None, issuer: str | None = None
) -> tuple[TrailCheck, ...]:
    """Whether each audit trail holds, as ``tessera audit verify`` checks it: its hash
    chain, then the signed checkpoints of it, with ``jwk_set`` (default: every key the
    store ever held) and, when given, the issuer they must name."""
    keys = every_public_key(store) if jwk_set is None else jwk_set
    checks = []
    for trail in TRAILS:
        count, broken = verify_trail(store, trail)
        problems = [f"{trail} trail, {p}" for p in broken]
        signed = vouched = 0
        if trail in CHECKPOINTED:
            signed, vouched, refused = verify_checkpoints(store, keys, issuer, trail)
            problems += [f"{CHECKPOINT_TRAIL} trail, {p}" for p in refused]
            signed -= len(refused)
        listed = tuple(problems[:PROBLEMS_LISTED])
        checks.append(TrailCheck(trail, count, signed, vouched, listed, len(problems)))
    return tuple(checks)


def gather(
    store: Store,
    *,
    agent: str | None = None,
    period: Period | None = None,
    now: datetime | None = None,
    jwk_set: Mapping[str, Any] | None = None,
    issuer: str | None = None,
) -> Report:
    """The report on one agent (its id or name), or on every agent when ``agent`` is None.

    With every agent, the report holds those that existed at some time in the period.
    ``jwk_set`` and ``issuer`` are for checking the signed checkpoints (see :func:`verify`).
    :class:`ReportError` when the directory never held the agent asked for.
    """
    period = period or Period()
    histories, credentials, consents = _read_changes(store)
    ids = _agent_ids(agent, histories, period)
    activity = {i: _Activity() for i in ids}
    unknown: dict[str, list[int]] | None = {} if agent is None else None
    first, last = _read_agent_trail(store, period, activity, unknown)
    _read_alerts(store, period, activity)
    unit, starts = _buckets(period, first, last)
    agents = tuple(
        _agent_report(
            i,
            histories[i],
            credentials.get(i, []),
            consents.get(i, []),
            activity[i],
            period,
            unit,
            starts,
        )
        for i in ids
    )
    every: Counter[tuple[datetime, bool]] = Counter()
    for found in activity.values():
        every.update(found.hourly)
    return Report(
        generated_at=(now or datetime.now(UTC)).astimezone(UTC),
        scope="all" if agent is None else "agent",
        period=period,
        unit=unit,
        agents=agents,
        unknown_agents=_unknown_agents(unknown or {}),
        decisions=_decisions(every, unit, starts),
        verification=verify(store, jwk_set, issuer),
    )


def _agent_ids(
    agent: str | None, histories: Mapping[str, list[Change]], period: Period
) -> list[str]:
    """The store ids of the agents the report is on: the one asked for (by id or name), or
    every agent that existed at some time in the period."""
    if agent is None:
        return [i for i, h in histories.items() if _existed(h, period)]
    wanted = _resolve(agent, histories)
    if not any(period.before_end(c.at) for c in histories[wanted]):
        raise ReportError(f"agent {agent!r} was created after --until")
    return [wanted]


def _read_agent_trail(
    store: Store,
    period: Period,
    activity: Mapping[str, _Activity],
    unknown: dict[str, list[int]] | None,
) -> tuple[datetime | None, datetime | None]:
    """One pass over the agent trail: each reported agent's decisions and tokens in the
    period, and, when ``unknown`` is given, the decisions (total, denied) for agents the
    directory never held. The first and last decision's times, for an open period."""
    first: datetime | None = None
    last: datetime | None = None
    for record in _records(store, "agent"):
        at = _time(record.get("at"))
        if at is None or not period.holds(at):
            continue
        owner = record.get("agent")
        found = activity.get(owner) if isinstance(owner, str) else None
        kind = record.get("kind")
        if found is None:
            if kind == "decision" and unknown is not None and isinstance(owner, str):
                counts = unknown.setdefault(owner, [0, 0])
                counts[0] += 1
                counts[1] += record.get("allow") is not True
            continue
        if kind == "decision":
            found.decision(at, record)
            first = at if first is None else min(first, at)
            last = at if last is None else max(last, at)
        elif kind == "token":
            found.token(at, record)
    return first, last


def _read_alerts(store: Store, period: Period, activity: Mapping[str, _Activity]) -> None:
    """The anomaly alerts raised in the period about each reported agent."""
    for record in _records(store, "alert"):
        at = _time(record.get("at"))
        owner = record.get("agent")
        found = activity.get(owner) if isinstance(owner, str) else None
        if record.get("kind") == "alert" and found and at and period.holds(at):
            found.alert(at, record)


def _unknown_agents(unknown: Mapping[str, list[int]]) -> tuple[UnknownAgent, ...]:
    """The TOP agent ids the directory never held, by decisions asked for them."""
    return tuple(
        UnknownAgent(i, total, denied)
        for i, (total, denied) in sorted(unknown.items(), key=lambda kv: (-kv[1][0], kv[0]))[:TOP]
    )


@dataclass
class _Activity:
    """What one agent did in the period, as the trails are read."""

    hourly: Counter[tuple[datetime, bool]] = field(default_factory=Counter)  # (hour, allowed)
    denials: deque[Denial] = field(default_factory=lambda: deque(maxlen=DENIALS_LISTED))
    most_denied: Counter[tuple[str, str]] = field(default_factory=Counter)
    tokens: Counter[str] = field(default_factory=Counter)
    delegations: dict[tuple[str, tuple[str, ...]], list[Any]] = field(default_factory=dict)
    alerts: list[Alert] = field(default_factory=list)

    def decision(self, at: datetime, record: Mapping[str, Any]) -> None:
        allowed = record.get("allow") is True
        self.hourly[_floor(at, "hour"), allowed] += 1
        resource = record.get("resource") or {}
        user = _text_or_none(record.get("user"))
        if user:
            self._delegated(at, user, record.get("delegation"), tokens=0)
        if not allowed:
            action = str(record.get("action", ""))
            target = f"{resource.get('type', '')}:{resource.get('id', '')}"
            self.most_denied[action, target] += 1
            self.denials.append(
                Denial(
                    at=at,
                    decision_id=str(record.get("decision_id", "")),
                    action=action,
                    resource=target,
                    user=user,
                    decided_by=_texts(record.get("decided_by")),
                    reasons=_texts(record.get("reasons")),
                    obligations=_texts(record.get("obligations")),
                )
            )

    def token(self, at: datetime, record: Mapping[str, Any]) -> None:
        grant = str(record.get("grant", "unknown"))
        self.tokens[grant] += 1
        user = _text_or_none(record.get("user"))
        if grant == "token_exchange" and user:
            self._delegated(at, user, record.get("delegation"), tokens=1)

    def alert(self, at: datetime, record: Mapping[str, Any]) -> None:
        self.alerts.append(
            Alert(
                at=at,
                alert=str(record.get("alert", "")),
                severity=str(record.get("severity", "")),
                message=str(record.get("message", "")),
                observed=record.get("observed"),
                baseline=record.get("baseline"),
                decision_id=_text_or_none(record.get("decision_id")),
            )
        )

    def _delegated(self, at: datetime, user: str, chain: Any, tokens: int) -> None:
        key = (user, _texts(chain))
        seen = self.delegations.setdefault(key, [0, 0, at, at])
        seen[0] += tokens
        seen[1] += 1 - tokens
        seen[2] = min(seen[2], at)
        seen[3] = max(seen[3], at)


def _read_changes(
    store: Store,
) -> tuple[
    dict[str, list[Change]],
    dict[str, list[tuple[Change, Change | None]]],
    dict[str, list[tuple[Change, dict[str, Any] | None]]],
]:
    """One pass over the change log: each agent's changes, each agent's credentials (their
    creation and deletion), and the changes of each agent's consents (with the consent
    before the change)."""
    histories: dict[str, list[Change]] = {}
    credentials: dict[str, list[tuple[Change, Change | None]]] = {}
    consents: dict[str, list[tuple[Change, dict[str, Any] | None]]] = {}
    created: dict[str, Change] = {}  # credentials by store id
    consent_state: dict[str, dict[str, Any]] = {}
    for change in _changes(store):
        if change.kind == "Agent":
            histories.setdefault(change.id, []).append(change)
        elif change.kind in _CREDENTIAL_KINDS:
            if change.op == "create" and change.data:
                created[change.id] = change
                agent_id = change.data.get("agent_id")
                if isinstance(agent_id, str):
                    credentials.setdefault(agent_id, []).append((change, None))
            elif change.op == "delete" and change.id in created:
                origin = created[change.id]
                owned = credentials.get(str((origin.data or {}).get("agent_id")), [])
                for index, (first, _) in enumerate(owned):
                    if first is origin:
                        owned[index] = (origin, change)
        elif change.kind == CONSENT:
            before = consent_state.get(change.id)
            data = change.data if change.data is not None else before
            if change.data is not None:
                consent_state[change.id] = change.data
            else:
                consent_state.pop(change.id, None)
            agent_id = (data or {}).get("agent_id")
            if isinstance(agent_id, str):
                consents.setdefault(agent_id, []).append((change, before))
    return histories, credentials, consents


def _changes(store: Store) -> Iterator[Change]:
    after = 0
    while True:
        page = store.changes(after)
        yield from page
        if not page:
            return
        after = page[-1].seq


def _records(store: Store, trail: str) -> Iterator[dict[str, Any]]:
    for entry in entries(store, trail):
        try:
            record = json.loads(entry.record)
        except ValueError:  # verification reports it
            continue
        if isinstance(record, dict):
            yield record


def _resolve(agent: str, histories: Mapping[str, list[Change]]) -> str:
    """The store id of an agent named by id or by name (case-insensitive)."""
    if agent in histories:
        return agent
    named = [
        i
        for i, history in histories.items()
        if any(Agent.from_scim(i, c.data or {}).name.lower() == agent.lower() for c in history)
    ]
    if len(named) == 1:
        return named[0]
    if len(named) > 1:
        raise ReportError(f"more than one agent was named {agent!r}: give its id")
    raise ReportError(f"no agent {agent!r} in the directory (by id or name), now or before")


def _existed(history: list[Change], period: Period) -> bool:
    deleted = history[-1].at if history[-1].op == "delete" else None
    return period.overlaps(history[0].at, deleted)


def _agent_report(
    agent_id: str,
    history: list[Change],
    credentials: list[tuple[Change, Change | None]],
    consents: list[tuple[Change, dict[str, Any] | None]],
    activity: _Activity,
    period: Period,
    unit: Unit,
    starts: list[datetime],
) -> AgentReport:
    known = [c for c in history if period.before_end(c.at)]
    last_data = next((c.data for c in reversed(known) if c.data is not None), {})
    last = Agent.from_scim(agent_id, last_data)
    denials = sorted(activity.denials, key=lambda d: d.at, reverse=True)
    return AgentReport(
        id=agent_id,
        name=last.name or agent_id,
        display_name=last.display_name,
        owner=last.owner,
        purpose=last.purpose,
        risk=last.risk,
        type=last.type,
        status=last.status,
        deleted=known[-1].op == "delete",
        status_history=_status_history(agent_id, known, last),
        credentials=tuple(
            _credential(created, deleted, period)
            for created, deleted in credentials
            if period.overlaps(created.at, deleted.at if deleted else None)
        ),
        tokens=dict(sorted(activity.tokens.items())),
        delegations=_delegations(activity),
        consents=_consents_at_end(consents, period),
        consent_history=tuple(
            _consent_change(change, before)
            for change, before in consents
            if period.holds(change.at)
        ),
        decisions=_decisions(activity.hourly, unit, starts),
        most_denied=tuple(Denied(a, r, n) for (a, r), n in activity.most_denied.most_common(TOP)),
        denials=tuple(denials),
        alerts=tuple(sorted(activity.alerts, key=lambda a: a.at)),
    )


def _status_history(agent_id: str, known: list[Change], last: Agent) -> tuple[StatusChange, ...]:
    """Each change of the agent up to the end of the period, with the governance
    attributes after it (``last``: the ones it ended with)."""
    statuses = []
    for change in known:
        # a deletion keeps the attributes the agent ended with
        then = last if change.data is None else Agent.from_scim(agent_id, change.data)
        statuses.append(
            StatusChange(
                change.at,
                change.op,
                change.actor,
                change.version,
                then.status,
                then.risk,
                then.owner,
            )
        )
    return tuple(statuses)


def _delegations(activity: _Activity) -> tuple[Delegation, ...]:
    """The users the agent acted for, by user and actor chain."""
    return tuple(
        Delegation(user, chain, tokens, decisions, first, last)
        for (user, chain), (tokens, decisions, first, last) in sorted(activity.delegations.items())
    )


def _credential(created: Change, deleted: Change | None, period: Period) -> Credential:
    data = created.data or {}
    revoked = deleted if deleted is not None and period.before_end(deleted.at) else None
    if created.kind == "Client":
        kind, ident = "client", str(data.get("client_id", created.id))
        grants = _texts(data.get("grant_types"))
    else:
        kind, ident, grants = "api_key", f"tsk_{data.get('key_id', '')}", ()
    expires = data.get("expires_at")
    return Credential(
        kind=kind,
        id=ident,
        name=_text_or_none(data.get("client_name")),
        auth_method=_text_or_none(data.get("token_endpoint_auth_method")),
        grant_types=grants,
        scope=str(data.get("scope") or ""),
        created_at=created.at,
        created_by=created.actor,
        expires_at=datetime.fromtimestamp(expires, UTC) if isinstance(expires, int) else None,
        revoked_at=revoked.at if revoked else None,
        revoked_by=revoked.actor if revoked else None,
    )


def _consents_at_end(
    consents: list[tuple[Change, dict[str, Any] | None]], period: Period
) -> tuple[Consent, ...]:
    standing: dict[str, Consent] = {}
    for change, before in consents:
        if not period.before_end(change.at):
            break
        if change.data is None:
            standing.pop(change.id, None)
            continue
        granted = standing[change.id].granted_at if before and change.id in standing else change.at
        standing[change.id] = Consent(
            str(change.data.get("user_id", "")),
            str(change.data.get("client_id", "")),
            _texts(change.data.get("scopes")),
            granted,
        )
    return tuple(standing.values())


def _consent_change(change: Change, before: dict[str, Any] | None) -> ConsentChange:
    data = change.data if change.data is not None else (before or {})
    op = "revoked" if change.data is None else ("widened" if before else "granted")
    return ConsentChange(
        change.at,
        op,
        str(data.get("user_id", "")),
        str(data.get("client_id", "")),
        _texts(data.get("scopes")),
        change.actor,
    )


def _buckets(
    period: Period, first: datetime | None, last: datetime | None
) -> tuple[Unit, list[datetime]]:
    """The timeline's unit and the start of each bucket, over the period (or, where it is
    open, from the first or to the last decision)."""
    start = period.since or first
    end = period.until or (last + timedelta(microseconds=1) if last else None)
    if start is None or end is None:
        return "day", []
    span = end - start
    unit: Unit = "hour" if span <= HOURLY_UP_TO else "day" if span <= DAILY_UP_TO else "week"
    start = _floor(start, unit)
    step = _STEP[unit]
    starts = []
    while start < end:
        starts.append(start)
        start += step
    return unit, starts


_STEP = {"hour": timedelta(hours=1), "day": timedelta(days=1), "week": timedelta(weeks=1)}


def _floor(at: datetime, unit: Unit) -> datetime:
    at = at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    if unit == "hour":
        return at
    at = at.replace(hour=0)
    return at if unit == "day" else at - timedelta(days=at.weekday())


def _decisions(
    hourly: Mapping[tuple[datetime, bool], int], unit: Unit, starts: list[datetime]
) -> Decisions:
    """Counts and timeline from decisions counted per hour and verdict."""
    index = {start: i for i, start in enumerate(starts)}
    allowed = [0] * len(starts)
    denied = [0] * len(starts)
    total = allows = 0
    for (hour, allow), count in hourly.items():
        total += count
        allows += count if allow else 0
        slot = index.get(_floor(hour, unit))
        if slot is not None:
            (allowed if allow else denied)[slot] += count
    return Decisions(
        total,
        allows,
        total - allows,
        tuple(Bucket(s, a, d) for s, a, d in zip(starts, allowed, denied, strict=True)),
    )


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        at = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return at.astimezone(UTC) if at.tzinfo else None


def _texts(value: Any) -> tuple[str, ...]:
    return tuple(str(v) for v in value) if isinstance(value, list) else ()


def _text_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


# ------------------------------------------------------------------ JSON


def to_json(report: Report) -> dict[str, Any]:
    """The report as plain JSON values, with the keys docs/audit.md lists."""
    body = _plain(dataclasses.asdict(report))
    body["verification"] = {
        "intact": report.intact,
        "trails": [
            {**_plain(dataclasses.asdict(check)), "intact": check.intact}
            for check in report.verification
        ],
    }
    return {"format": FORMAT, **body}


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def render_json(report: Report) -> str:
    return json.dumps(to_json(report), indent=2, ensure_ascii=False) + "\n"


# ------------------------------------------------------------------ Markdown

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]<>()#+!|~&])")


def md(value: Any) -> str:
    """Text that Markdown shows as written: punctuation escaped, on one line."""
    if value is None or value == "":
        return "–"
    if isinstance(value, datetime):
        return when(value)
    text = " ".join(str(value).split())
    return _MD_SPECIAL.sub(r"\\\1", text)


def when(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def period_text(period: Period) -> str:
    since = when(period.since) if period.since else "the first record"
    until = when(period.until) if period.until else "now"
    return f"from {since} to {until}"


def _table(header: Iterable[str], rows: Iterable[Iterable[Any]]) -> list[str]:
    head = list(header)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(md(cell) for cell in row) + " |" for row in rows]
    return [*lines, ""]


def to_markdown(report: Report) -> str:
    """The report as Markdown: headings, lists and tables."""
    lines = [
        "# Tessera compliance report",
        "",
        f"- **Period**: {md(period_text(report.period))}",
        f"- **Generated**: {md(report.generated_at)}",
        f"- **Agents**: {len(report.agents)}",
        f"- **Decisions**: {counts_text(report.decisions)}",
        f"- **Audit chain**: {verdict(report)}",
        "",
    ]
    for agent in report.agents:
        lines += _agent_markdown(agent, report.unit)
    if report.unknown_agents:
        lines += ["## Decisions for agents not in the directory", ""]
        lines += _table(
            ["agent id", "decisions", "denied"],
            [(u.id, u.decisions, u.denied) for u in report.unknown_agents],
        )
    lines += ["## Audit chain verification", "", verdict(report), ""]
    lines += _table(
        ["trail", "entries", "result", "signed"],
        [(c.trail, c.entries, result_text(c), signed_text(c)) for c in report.verification],
    )
    for check in report.verification:
        lines += [f"- {md(problem)}" for problem in check.problems]
    return "\n".join(lines).rstrip("\n") + "\n"


def counts_text(decisions: Decisions) -> str:
    return f"{decisions.total} ({decisions.allowed} allowed, {decisions.denied} denied)"


def verdict(report: Report) -> str:
    if report.intact:
        total = sum(c.entries for c in report.verification)
        signed = sum(c.checkpoints for c in report.verification)
        return (
            f"every trail verifies ({total} entries, chains intact; "
            f"{signed} signed checkpoint(s) verified)"
        )
    broken = [c.trail for c in report.verification if not c.intact]
    return f"BROKEN: the {', '.join(broken)} trail(s) do not verify"


def result_text(check: TrailCheck) -> str:
    return "intact" if check.intact else f"BROKEN: {check.problem_count} problem(s)"


def signed_text(check: TrailCheck) -> str:
    """What the signed checkpoints vouch for on one trail."""
    if check.trail == CHECKPOINT_TRAIL:
        return "holds the checkpoints"
    if not check.checkpoints:
        return "no signed checkpoint"
    return f"{check.checkpoints} checkpoint(s), up to entry {check.vouched}"


def _agent_markdown(agent: AgentReport, unit: Unit) -> list[str]:
    """One agent's part of the Markdown report, a section per concern."""
    title = agent.name + (" (deleted)" if agent.deleted else "")
    return [
        f"## Agent {md(title)}",
        "",
        *_identity_markdown(agent),
        *_credentials_markdown(agent),
        *_delegations_markdown(agent),
        *_consents_markdown(agent),
        *_decisions_markdown(agent, unit),
        *_denials_markdown(agent),
        *_anomalies_markdown(agent),
    ]


def _identity_markdown(agent: AgentReport) -> list[str]:
    """Who the agent is at the end of the period, and how that changed."""
    return [
        "### Identity",
        "",
        f"- **Id**: {md(agent.id)}",
        f"- **Display name**: {md(agent.display_name)}",
        f"- **Owner**: {md(agent.owner)}",
        f"- **Purpose**: {md(agent.purpose)}",
        f"- **Risk**: {md(agent.risk)}",
        f"- **Type**: {md(agent.type)}",
        f"- **Status**: {md(agent.status)}",
        "",
        "#### Status history",
        "",
        *_table(
            ["when", "change", "by", "version", "status", "risk", "owner"],
            [
                (s.at, s.op, s.actor, s.version, s.status, s.risk, s.owner)
                for s in agent.status_history
            ],
        ),
    ]


def _credentials_markdown(agent: AgentReport) -> list[str]:
    """The agent's clients and API keys, and the tokens it was issued."""
    lines = ["### Credentials", ""]
    if agent.credentials:
        lines += _table(
            ["kind", "id", "name", "method", "scope", "created", "by", "expires", "revoked"],
            [
                (
                    c.kind,
                    c.id,
                    c.name,
                    c.auth_method,
                    c.scope,
                    c.created_at,
                    c.created_by,
                    c.expires_at,
                    f"{when(c.revoked_at)} by {c.revoked_by}" if c.revoked_at else None,
                )
                for c in agent.credentials
            ],
        )
    else:
        lines += ["None.", ""]
    tokens = ", ".join(f"{grant}: {n}" for grant, n in agent.tokens.items()) or "none"
    return [*lines, f"Tokens issued in the period: {md(tokens)}.", ""]


def _delegations_markdown(agent: AgentReport) -> list[str]:
    """The users the agent acted for."""
    if not agent.delegations:
        return ["### Delegations", "", "The agent acted for no user in the period.", ""]
    return [
        "### Delegations",
        "",
        *_table(
            ["user", "actor chain", "tokens exchanged", "decisions", "first", "last"],
            [
                (d.user, " → ".join(d.chain), d.tokens, d.decisions, d.first, d.last)
                for d in agent.delegations
            ],
        ),
    ]


def _consents_markdown(agent: AgentReport) -> list[str]:
    """The consents standing at the end of the period, then their changes in it."""
    lines = ["### Consents", ""]
    if agent.consents:
        lines += _table(
            ["user", "client", "scopes", "since"],
            [(c.user, c.client, " ".join(c.scopes), c.granted_at) for c in agent.consents],
        )
    else:
        lines += ["No consent stood at the end of the period.", ""]
    if agent.consent_history:
        lines += _table(
            ["when", "change", "user", "client", "scopes", "by"],
            [
                (c.at, c.op, c.user, c.client, " ".join(c.scopes), c.actor)
                for c in agent.consent_history
            ],
        )
    return lines


def _decisions_markdown(agent: AgentReport, unit: Unit) -> list[str]:
    """The agent's decision counts, and the timeline's buckets that hold any."""
    return [
        "### Decisions",
        "",
        f"{counts_text(agent.decisions)}, per {unit}:",
        "",
        *_table(
            [unit, "allowed", "denied"],
            [
                (bucket_label(b.start, unit), b.allowed, b.denied)
                for b in agent.decisions.timeline
                if b.allowed or b.denied
            ],
        ),
    ]


def _denials_markdown(agent: AgentReport) -> list[str]:
    """What was denied most often, then the most recent denials."""
    if not agent.denials:
        return ["### Denials", "", "No denial in the period.", ""]
    lines = ["### Denials", ""]
    lines += _table(
        ["action", "resource", "denied"],
        [(d.action, d.resource, d.count) for d in agent.most_denied],
    )
    shown = (
        f" (the {len(agent.denials)} most recent)"
        if len(agent.denials) < (agent.decisions.denied)
        else ""
    )
    lines += [f"Denials{shown}:", ""]
    lines += _table(
        ["when", "decision", "action", "resource", "user", "decided by", "reasons"],
        [
            (
                d.at,
                d.decision_id,
                d.action,
                d.resource,
                d.user,
                ", ".join(d.decided_by),
                "; ".join(d.reasons + d.obligations),
            )
            for d in agent.denials
        ],
    )
    return lines


def _anomalies_markdown(agent: AgentReport) -> list[str]:
    """The anomaly alerts raised about the agent."""
    if not agent.alerts:
        return ["### Anomalies", "", "No anomaly alert in the period.", ""]
    return [
        "### Anomalies",
        "",
        *_table(
            ["when", "alert", "severity", "message", "observed", "baseline", "decision"],
            [
                (a.at, a.alert, a.severity, a.message, a.observed, a.baseline, a.decision_id)
                for a in agent.alerts
            ],
        ),
    ]


def bucket_label(start: datetime, unit: Unit) -> str:
    if unit == "hour":
        return start.strftime("%Y-%m-%d %H:00")
    return start.strftime("%Y-%m-%d") if unit == "day" else start.strftime("week of %Y-%m-%d")
