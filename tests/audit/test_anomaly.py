"""Anomaly alerts: per-agent baselines over the agent trail, alerts on the alert trail.

Most tests write a crafted agent trail through the :class:`AuditWriter` (records with
chosen times: two days of an agent's ordinary work, then something unusual), let an
:class:`AnomalyDetector` read it, and read the alert trail back. The last ones run the
real gRPC service and ``tessera serve``, and wait (bounded) for the alert to appear.
"""

from __future__ import annotations

import json
import random
import re
import time
import urllib.request
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest

from issuer.store import Store, open_store
from pdp.audit.anomaly import AnomalyDetector, AnomalyThresholds
from pdp.audit.baselines import AMOUNT_HISTORY, Baselines, _Amounts
from pdp.audit.query import entries, verify_trail
from pdp.audit.writer import AuditWriter
from pdp.engine import Engine
from pdp.loader import load_directory
from pdp.metrics import Metrics
from pdp.serve.config import ConfigError, load_config
from pdp.serve.proto import authorizer_pb2 as pb
from pdp.serve.proto import authorizer_pb2_grpc as pb_grpc
from pep.cli import main
from tests.conftest import SHIPPED_POLICIES
from tests.servers import Server, tessera_serve

T = TypeVar("T")
WAIT = 10.0  # seconds: the bound on every wait in these tests
DAY = datetime(2026, 11, 20, tzinfo=UTC)
KEYS = {
    "kind",
    "at",
    "alert",
    "agent",
    "severity",
    "message",
    "observed",
    "baseline",
    "decision_id",
    "source_seq",
}

# ------------------------------------------------------------------ crafted trails

_ids = iter(range(1, 10**9))


def decision(
    at: datetime,
    agent: str = "pay-bot",
    tool: str = "search",
    allow: bool = True,
    amount: str | None = None,
    currency: str = "USD",
) -> dict[str, Any]:
    context = {} if amount is None else {"amount": {"amount": amount, "currency": currency}}
    return {
        "kind": "decision",
        "at": at.isoformat(),
        "decision_id": f"d{next(_ids)}",
        "agent": agent,
        "user": None,
        "delegation": [],
        "action": "tool.call",
        "resource": {"type": "tool", "id": tool},
        "context": context,
        "allow": allow,
        "decided_by": ["agents.read_only"] if allow else [],
        "obligations": [],
        "reasons": [],
        "bundle_version": "sha256:test",
        "pep": "ipv4:127.0.0.1:50000",
        "latency_us": 12.5,
    }


def workday(day: int, agent: str = "pay-bot") -> list[dict[str, Any]]:
    """A day of ordinary work: a call every 5 minutes from 09:00 to 16:55 UTC, searches
    and transfers of 10 to 100 USD alternating, one call in 25 denied."""
    start = DAY + timedelta(days=day, hours=9)
    calls = []
    for i in range(96):
        at = start + timedelta(minutes=5 * i)
        if i % 2:
            amount = str(10 + (i // 2 % 10) * 10)
            calls.append(decision(at, agent, "payments.transfer", True, amount))
        else:
            calls.append(decision(at, agent, "search", i % 25 != 0))
    return calls


def history(agent: str = "pay-bot") -> list[dict[str, Any]]:
    """Two ordinary days: enough to leave the learning period."""
    return workday(0, agent) + workday(1, agent)


def at(hour: int, minute: int = 0, second: float = 0, day: int = 2) -> datetime:
    return DAY + timedelta(days=day, hours=hour, minutes=minute, seconds=second)


def append(writer: AuditWriter, records: list[dict[str, Any]]) -> None:
    """Append records to the agent trail and wait until they are committed."""
    pending = [writer.submit("agent", record) for record in records]
    if pending:
        pending[-1].result(WAIT)


def alerts(store: Store) -> list[dict[str, Any]]:
    return [json.loads(e.record) for e in entries(store, "alert")]


def detect(
    store: Store,
    records: list[dict[str, Any]],
    thresholds: AnomalyThresholds | None = None,
    metrics: Metrics | None = None,
) -> list[dict[str, Any]]:
    """Append records to the agent trail, let a detector read it; every stored alert."""
    writer = AuditWriter(store)
    try:
        append(writer, records)
        counter = metrics.alerts if metrics is not None else None
        AnomalyDetector(store, writer, thresholds, counter).catch_up()
    finally:
        writer.close(WAIT)
    return alerts(store)


def kinds(found: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(a["alert"], a["agent"]) for a in found]


# ------------------------------------------------------------------ each kind of alert


def test_ordinary_work_raises_no_alert(store: Store) -> None:
    records = history() + workday(2) + history("helper")
    assert detect(store, records) == []


def test_a_tool_never_used_before_raises_new_tool_once(store: Store) -> None:
    records = [
        *history(),
        decision(at(10), tool="shell.exec"),
        decision(at(10, 5), tool="shell.exec"),
    ]
    found = detect(store, records)
    assert len(found) == 1
    alert = found[0]
    assert set(alert) == KEYS
    assert alert == {
        "kind": "alert",
        "at": at(10).isoformat(),
        "alert": "new_tool",
        "agent": "pay-bot",
        "severity": "medium",
        "message": "Agent pay-bot called tool shell.exec, which it had never called before "
        "(the call was allowed).",
        "observed": "shell.exec",
        "baseline": 2,
        "decision_id": records[-2]["decision_id"],
        "source_seq": len(records) - 1,
    }
    assert verify_trail(store, "alert") == (1, [])


def test_a_new_tool_that_was_denied_is_a_low_severity_alert(store: Store) -> None:
    found = detect(store, [*history(), decision(at(10), tool="shell.exec", allow=False)])
    assert [(a["alert"], a["severity"]) for a in found] == [("new_tool", "low")]


def test_a_call_rate_far_above_the_baseline_raises_rate_once_per_cooldown(
    store: Store,
) -> None:
    burst = [decision(at(10, 0, i * 0.5)) for i in range(60)]  # 60 calls in 30 s
    later = [decision(at(11, 0, i * 0.5)) for i in range(60)]  # again, after the cooldown
    found = detect(store, [*history(), *burst, *later])
    assert kinds(found) == [("rate", "pay-bot"), ("rate", "pay-bot")]
    first = found[0]
    # the average is 1 call per active minute: 30 calls (rate_min) is the first to count
    assert (first["observed"], first["baseline"], first["severity"]) == (30, 1.0, "high")
    assert first["decision_id"] == burst[29]["decision_id"]
    assert "30 calls in 60 seconds" in first["message"]


def test_a_rate_below_the_minimum_is_not_an_alert_whatever_the_baseline(store: Store) -> None:
    burst = [decision(at(10, 0, i)) for i in range(29)]
    assert detect(store, [*history(), *burst]) == []


def test_a_burst_of_denials_raises_denials(store: Store) -> None:
    probing = [decision(at(10, 0, i), tool="search", allow=False) for i in range(15)]
    found = detect(store, [*history(), *probing])
    assert kinds(found) == [("denials", "pay-bot")]
    alert = found[0]
    assert alert["observed"] == 10
    assert alert["baseline"] == round(4 / 192, 3)  # its usual denial ratio
    assert alert["severity"] == "high"
    assert alert["decision_id"] == probing[9]["decision_id"]
    assert "denied 10 of 10 calls in 60 seconds" in alert["message"]


def test_denials_spread_out_or_among_many_allowed_calls_are_not_a_burst(store: Store) -> None:
    spread = [decision(at(10, 2 * i), allow=False) for i in range(15)]  # one per 2 minutes
    mixed = [decision(at(12, 0, i), allow=i % 3 != 0) for i in range(30)]  # 2/3 allowed
    thresholds = AnomalyThresholds(rate_min=1000)
    assert detect(store, [*history(), *spread, *mixed], thresholds) == []


def test_an_agent_often_denied_raises_denials_only_at_twice_its_usual_share(
    store: Store,
) -> None:
    usual = [{**r, "allow": i % 2 == 0} for i, r in enumerate(history())]  # half denied
    as_usual = [decision(at(10, 0, i), allow=i % 2 == 0) for i in range(24)]
    all_denied = [decision(at(12, 0, i), allow=False) for i in range(10)]
    found = detect(store, [*usual, *as_usual, *all_denied])
    assert [(a["alert"], a["decision_id"]) for a in found] == [
        ("denials", all_denied[-1]["decision_id"])
    ]
    assert found[0]["baseline"] == 0.5


def test_a_burst_of_denials_needs_no_learning_period(store: Store) -> None:
    probing = [decision(at(3, 0, i, day=0), "newcomer", f"tool{i}", False) for i in range(10)]
    found = detect(store, probing)
    assert kinds(found) == [("denials", "newcomer")]
    assert found[0]["baseline"] is None
    assert "it had no earlier history" in found[0]["message"]


def test_an_amount_far_above_the_agents_history_raises_amount(store: Store) -> None:
    calls = [
        decision(at(10), tool="payments.transfer", amount="250"),  # 2.5 × 100: fine
        decision(at(10, 5), tool="payments.transfer", amount="800"),  # 3.2 × 250
        decision(at(10, 10), tool="payments.transfer", amount="5000", allow=False),
        decision(at(10, 30), tool="payments.transfer", amount="900000", currency="JPY"),
    ]
    found = detect(store, [*history(), *calls], AnomalyThresholds(cooldown=0))
    assert [(a["alert"], a["observed"], a["baseline"], a["severity"]) for a in found] == [
        ("amount", 800.0, 250.0, "medium"),  # 250 was allowed, so it is history now
        ("amount", 5000.0, 800.0, "high"),
    ]
    assert found[0]["message"] == (
        "Agent pay-bot asked to move 800 USD, more than 3 times the largest amount it was "
        "allowed before (250 USD)."
    )


def test_a_refused_amount_does_not_become_the_baseline(store: Store) -> None:
    calls = [
        decision(at(10), tool="payments.transfer", amount="5000", allow=False),
        decision(at(11), tool="payments.transfer", amount="5000", allow=False),
    ]
    found = detect(store, [*history(), *calls], AnomalyThresholds(cooldown=0))
    assert [(a["alert"], a["baseline"]) for a in found] == [("amount", 100.0), ("amount", 100.0)]


def test_activity_at_an_unusual_hour_raises_hours(store: Store) -> None:
    found = detect(store, [*history(), decision(at(3, 15))])
    assert kinds(found) == [("hours", "pay-bot")]
    alert = found[0]
    assert (alert["observed"], alert["baseline"], alert["severity"]) == (3, "09-16 UTC", "medium")
    assert alert["message"] == (
        "Agent pay-bot was active at 03:00-03:59 UTC, an hour in which it had never been active."
    )


def test_a_new_agent_raises_no_baseline_alert_while_it_learns(store: Store) -> None:
    # its first hours: a new tool every call, odd hours, growing amounts, a burst of calls
    start = DAY + timedelta(hours=2)
    calls = [
        decision(start + timedelta(seconds=i), "newcomer", f"tool{i}", True, str(10**i))
        for i in range(8)
    ] + [decision(start + timedelta(minutes=1, seconds=i / 2), "newcomer") for i in range(90)]
    assert detect(store, calls) == []


def test_one_decision_can_raise_several_kinds_in_a_fixed_order(store: Store) -> None:
    odd = decision(at(3), tool="payments.refund", amount="9000")
    found = detect(store, [*history(), odd])
    assert [a["alert"] for a in found] == ["new_tool", "amount", "hours"]
    assert {a["source_seq"] for a in found} == {193}


def test_the_largest_recent_amount_is_the_maximum_of_the_last_1000() -> None:
    rng = random.Random(7)
    amounts, recent = _Amounts(), deque[Decimal](maxlen=AMOUNT_HISTORY)
    for step in range(5_000):
        value = Decimal(rng.randrange(10_000) if step % 700 else 20_000)  # spikes age out
        amounts.add(value)
        recent.append(value)
        assert (amounts.largest(), len(amounts)) == (max(recent), len(recent))


# ------------------------------------------------------------------ restarts


def anomalies(day: int) -> list[dict[str, Any]]:
    """Ordinary work with a new tool, a transfer of 2000 USD and a night call in it."""
    calls = workday(day)
    calls[10] = decision(at(9, 50, day=day), tool=f"export{day}")
    calls[21] = decision(at(10, 45, day=day), tool="payments.transfer", amount="2000")
    calls.append(decision(at(23, 30, day=day)))
    return calls


def expected(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The alerts one detector raises over the whole trail, without restarts."""
    baselines = Baselines()
    return [alert for seq, r in enumerate(records, 1) for alert in baselines.observe(r, seq)]


def test_a_restarted_detector_rebuilds_its_baselines_and_resumes_without_repeats(
    store: Store,
) -> None:
    before = history() + anomalies(2)
    after = anomalies(3) + anomalies(4)
    assert [a["alert"] for a in detect(store, before)] == ["new_tool", "amount", "hours"]
    writer = AuditWriter(store)
    try:
        append(writer, after)
        again = AnomalyDetector(store, writer)
        queued = again.catch_up()
        assert again.catch_up() == []  # nothing more to read
    finally:
        writer.close(WAIT)
    found = alerts(store)
    assert found == expected(before + after)
    assert queued == found[3:]
    assert [a["source_seq"] for a in found] == sorted({a["source_seq"] for a in found})
    assert verify_trail(store, "alert") == (len(found), [])


def test_after_a_crash_between_two_alerts_of_one_decision_only_the_missing_one_is_added(
    store: Store,
) -> None:
    records = [*history(), decision(at(3), tool="payments.refund", amount="9000")]
    raised = expected(records)
    assert len(raised) == 3
    writer = AuditWriter(store)
    try:
        append(writer, records)
        writer.write("alert", raised[0])  # the crash came after the first was stored
        assert AnomalyDetector(store, writer).catch_up() == raised[1:]
    finally:
        writer.close(WAIT)
    assert alerts(store) == raised


def test_records_other_than_decisions_are_passed_over(store: Store) -> None:
    token = {"kind": "token", "at": at(3).isoformat(), "agent": "pay-bot", "client": "c"}
    broken = {"kind": "decision", "at": "not a time", "agent": "pay-bot"}
    found = detect(store, [*history(), token, broken, decision(at(10), tool="shell.exec")])
    assert [(a["alert"], a["source_seq"]) for a in found] == [("new_tool", 195)]


# ------------------------------------------------------------------ thresholds and metrics


def test_thresholds_come_from_the_environment_and_tessera_toml(
    store: Store, tmp_path: Path
) -> None:
    file = tmp_path / "tessera.toml"
    file.write_text("[serve]\nanomaly_window = 10\nanomaly_denial_ratio = 0.9\n")
    environ = {"TESSERA_ANOMALY_DENIAL_BURST": "3"}
    config = load_config({}, environ=environ, config_file=str(file))
    thresholds = config.anomaly_thresholds()
    assert thresholds == AnomalyThresholds(window=10.0, denial_ratio=0.9, denial_burst=3)
    probing = [decision(at(10, 1, i), allow=False) for i in range(3)]
    assert detect(store, [*history(), *probing]) == []  # 3 is no burst by default
    found = detect(store, [], thresholds)  # a fresh detector on the same trail
    assert kinds(found) == [("denials", "pay-bot")]


def test_the_default_thresholds_are_the_documented_ones() -> None:
    assert load_config({}, environ={}).anomaly_thresholds() == AnomalyThresholds(
        learning_decisions=100,
        learning_hours=24.0,
        window=60.0,
        rate_factor=5.0,
        rate_min=30,
        denial_burst=10,
        denial_ratio=0.5,
        amount_factor=3.0,
        hour_share=0.01,
        cooldown=600.0,
    )


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"TESSERA_ANOMALY_RATE_FACTOR": "1"}, "anomaly_rate_factor: must be greater than 1"),
        ({"TESSERA_ANOMALY_WINDOW": "0"}, "anomaly_window: must be greater than 0"),
        ({"TESSERA_ANOMALY_DENIAL_RATIO": "1.5"}, "anomaly_denial_ratio: a share between 0"),
        ({"TESSERA_ANOMALY_HOUR_SHARE": "0"}, "anomaly_hour_share: a share between 0"),
        ({"TESSERA_ANOMALY_COOLDOWN": "-1"}, "anomaly_cooldown: must not be negative"),
        ({"TESSERA_ANOMALY_AMOUNT_FACTOR": "nan"}, "anomaly_amount_factor: a finite number"),
        ({"TESSERA_ANOMALY_DENIAL_BURST": "ten"}, "TESSERA_ANOMALY_DENIAL_BURST: expected int"),
    ],
)
def test_a_bad_threshold_is_a_clear_error_naming_the_setting(
    environ: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config({}, environ=environ, config_file=None)
    assert str(raised.value).startswith(message)


def test_a_bad_threshold_in_the_file_names_the_file_and_setting(tmp_path: Path) -> None:
    file = tmp_path / "tessera.toml"
    file.write_text('[serve]\nanomaly_rate_min = "many"\n')
    with pytest.raises(ConfigError, match=r"serve\.anomaly_rate_min: expected int"):
        load_config({}, environ={}, config_file=str(file))


def test_the_metric_counts_alerts_by_kind(store: Store) -> None:
    metrics = Metrics()
    records = [*history(), decision(at(3), tool="a"), decision(at(10), tool="b")]
    detect(store, records, metrics=metrics)

    def count(kind: str) -> float | None:
        return metrics.registry.get_sample_value("tessera_audit_alerts_total", {"alert": kind})

    assert (count("new_tool"), count("hours"), count("rate")) == (2.0, 1.0, None)


# ------------------------------------------------------------------ tessera audit alerts


@pytest.fixture
def alerted(url: str) -> str:
    """A store whose alert trail holds, in order: new_tool (pay-bot, day 2 10:00), hours
    (pay-bot, day 2 22:00) and denials (helper, day 2 11:00:09: earlier than the one
    before it)."""
    store = open_store(url)
    try:
        records = [
            *history(),
            *history("helper"),
            decision(at(10), tool="shell.exec"),
            decision(at(22), tool="search"),
            *[decision(at(11, 0, i), "helper", allow=False) for i in range(10)],
        ]
        assert kinds(detect(store, records)) == [
            ("new_tool", "pay-bot"),
            ("hours", "pay-bot"),
            ("denials", "helper"),
        ]
    finally:
        store.close()
    return url


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_alerts_lists_every_alert_as_a_table(
    capsys: pytest.CaptureFixture[str], alerted: str
) -> None:
    code, out, err = run(capsys, "audit", "alerts", "--store", alerted)
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].split() == ["SEQ", "TIME", "(UTC)", "SEVERITY", "ALERT", "AGENT", "MESSAGE"]
    assert [line.split()[:5] for line in lines[1:]] == [
        ["1", "2026-11-22T10:00:00", "medium", "new_tool", "pay-bot"],
        ["2", "2026-11-22T22:00:00", "medium", "hours", "pay-bot"],
        ["3", "2026-11-22T11:00:09", "high", "denials", "helper"],
    ]
    assert lines[1].endswith("(the call was allowed).")


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (("--agent", "pay-bot"), [1, 2]),
        (("--agent", "helper"), [3]),
        (("--alert", "hours"), [2]),
        (("--alert", "rate"), []),
        (("--since", "2026-11-22T11:00:00Z"), [2, 3]),
        (("--until", "2026-11-22T11:00:00Z"), [1]),
        (("--agent", "pay-bot", "--alert", "new_tool", "--until", "2026-11-23T00:00Z"), [1]),
    ],
)
def test_alerts_applies_the_filters(
    capsys: pytest.CaptureFixture[str], alerted: str, flags: tuple[str, ...], expected: list[int]
) -> None:
    code, out, _ = run(capsys, "audit", "alerts", "--store", alerted, "--json", *flags)
    assert code == 0
    assert [a["seq"] for a in json.loads(out)] == expected


def test_alerts_json_is_an_array_of_the_stored_records_with_their_seq(
    capsys: pytest.CaptureFixture[str], alerted: str
) -> None:
    code, out, _ = run(capsys, "audit", "alerts", "--store", alerted, "--json")
    assert code == 0
    listed = json.loads(out)
    store = open_store(alerted)
    try:
        stored = alerts(store)
    finally:
        store.close()
    assert listed == [{"seq": seq, **a} for seq, a in enumerate(stored, 1)]
    assert all(set(a) == KEYS | {"seq"} for a in listed)


def test_alerts_on_an_empty_trail_says_so(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    store = f"sqlite:///{tmp_path}/t.db"
    open_store(store).close()
    assert run(capsys, "audit", "alerts", "--store", store) == (0, "no alerts\n", "")
    assert run(capsys, "audit", "alerts", "--store", store, "--json") == (0, "[]\n", "")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("alerts", "--tool", "search"), "tessera audit: --tool does not apply to alerts"),
        (("alerts", "--decision", "deny"), "tessera audit: --decision does not apply to alerts"),
        (("alerts", "--trail", "admin"), "tessera audit: --trail does not apply to alerts"),
        (("query", "--alert", "rate"), "tessera audit: --alert only goes with 'alerts'"),
        (("export", "--json"), "tessera audit: --json only goes with 'alerts'"),
        (("alerts", "--since", "today"), "tessera audit: --since: 'today' is not an RFC 3339"),
    ],
)
def test_alerts_usage_errors_are_clear(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, argv: tuple[str, ...], message: str
) -> None:
    action, *flags = argv
    code, out, err = run(capsys, "audit", action, "--store", f"sqlite:///{tmp_path}/t.db", *flags)
    assert (code, out) == (2, "")
    assert err.startswith(message)


def test_an_unknown_alert_kind_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["audit", "alerts", "--store", f"sqlite:///{tmp_path}/t.db", "--alert", "odd"])
    assert stopped.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


# ------------------------------------------------------------------ end to end


def eventually(probe: Callable[[], T | None], what: str) -> T:
    """The first result of ``probe`` that is not None, polling for at most WAIT seconds."""
    deadline = time.monotonic() + WAIT
    while True:
        result = probe()
        if result is not None:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


def denied_call(agent_id: str, tool: str) -> pb.AuthorizeRequest:
    return pb.AuthorizeRequest(
        agent=pb.Agent(
            id=agent_id,
            attributes={
                "status": pb.Value(string="suspended"),
                "risk": pb.Value(risk="low"),
                "purpose": pb.Value(string="payments"),
            },
        ),
        action="tool.call",
        resource=pb.Resource(type="tool", id=tool),
    )


def metric(port: int, name: str) -> float | None:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=WAIT) as response:
        text = response.read().decode()
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else None


def metrics_port_of(server: Server) -> int:
    metrics_server = server.running.metrics_server
    assert metrics_server is not None
    return int(metrics_server.server_port)


def test_a_burst_of_denied_calls_through_the_grpc_service_raises_a_denials_alert(
    store: Store,
) -> None:
    writer = AuditWriter(store)
    server = Server(Engine(load_directory(SHIPPED_POLICIES).bundle), audit=writer, metrics_port=0)
    detector = AnomalyDetector(
        store, writer, AnomalyThresholds(), server.running.point.metrics.alerts
    )
    detector.start()
    try:
        stub = pb_grpc.AuthorizerStub(server.channel)  # type: ignore[no-untyped-call]
        for i in range(12):  # a suspended agent tries tool after tool
            assert not stub.Authorize(denied_call("prober", f"tool{i}"), timeout=WAIT).allow

        def denials() -> list[dict[str, Any]] | None:
            found = [a for a in alerts(store) if a["alert"] == "denials"]
            return found or None

        found = eventually(denials, "a denials alert")
        counted = eventually(
            lambda: metric(metrics_port_of(server), 'tessera_audit_alerts_total{alert="denials"}'),
            "the alert in the metrics",
        )
    finally:
        detector.stop()
        server.close()
        writer.close(WAIT)
    assert len(found) == 1
    alert = found[0]
    assert (alert["agent"], alert["observed"], alert["severity"]) == ("prober", 10, "high")
    decisions = [json.loads(e.record) for e in entries(store, "agent")]
    assert alert["decision_id"] == decisions[9]["decision_id"]
    assert alert["source_seq"] == 10
    assert counted == 1.0
    assert alerts(store) == found  # only the burst: no learned agent, so no other kind


def test_tessera_serve_raises_alerts_for_its_own_decisions(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/tessera.db"
    with tessera_serve(
        *("--policies", str(SHIPPED_POLICIES), "--store", url),
        *("--port", "0", "--http-port", "-1", "--metrics-port", "0", "--grace", "1"),
        lines=2,
    ) as (_, lines):
        grpc_port = re.search(r"Authorizer on 127\.0\.0\.1:(\d+)", lines[0])
        metrics_port = re.search(r"metrics on http://127\.0\.0\.1:(\d+)/metrics", lines[1])
        assert grpc_port and metrics_port, lines
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port.group(1)}") as channel:
            stub = pb_grpc.AuthorizerStub(channel)  # type: ignore[no-untyped-call]
            for i in range(10):  # an agent the directory does not know
                request = pb.AuthorizeRequest(
                    agent=pb.Agent(id="ghost"),
                    action="tool.call",
                    resource=pb.Resource(type="tool", id=f"tool{i}"),
                )
                assert not stub.Authorize(request, timeout=WAIT).allow
        counted = eventually(
            lambda: metric(
                int(metrics_port.group(1)), 'tessera_audit_alerts_total{alert="denials"}'
            ),
            "the alert in the metrics",
        )
        assert counted == 1.0
    store = open_store(url)
    try:
        assert kinds(alerts(store)) == [("denials", "ghost")]
    finally:
        store.close()
