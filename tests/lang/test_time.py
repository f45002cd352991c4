"""Time in policies: ``now``, the parts of a time in a zone, dates, ``size()`` and globs
read from the request.

Each decision is made twice, by the compiled engine and by the reference interpreter (what
``explain`` shows), at a clock the test sets, and the two must agree.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import pytest

from pdp.engine import Engine
from pdp.explain import render_explanation
from pdp.interpreter import Interpreter, _Evaluator
from pdp.lang import ast
from pdp.lang.compiler import compile_rules
from pdp.lang.errors import PolicyError
from pdp.lang.formatter import format_source
from pdp.lang.parser import parse, parse_expression
from pdp.lang.runtime import EvalError
from pdp.lang.values import Weekday
from pdp.model import Decision
from tests.conftest import bundle_of, request

SCHEMA = """
schema {
  agent { tz: string, labels: map<string>, scopes: set<string>, since: date }
  context { at: time, until: date, path: string }
}
"""

# Weekdays 09:00 to 17:00 on the clock of the agent's zone.
BUSINESS_HOURS = """
permit business_hours
  call tool "search"
  when weekday(now, agent.tz) <= "friday"
    and hour(now, agent.tz) >= 9
    and hour(now, agent.tz) < 17
"""

BERLIN = {"id": "bot", "tz": "Europe/Berlin"}


def epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def decide_at(policy: str, at: str, **data: Any) -> Decision:
    """The engine's decision at instant ``at``; the interpreter must give the same one."""
    bundle = bundle_of(policy, schema=SCHEMA)
    data.setdefault("agent", BERLIN)
    data.setdefault("tool", "search")
    asked = request(bundle, **data)
    decision = Engine(bundle, clock=lambda: epoch(at)).decide(asked)
    interpreter = Interpreter(bundle.rules, bundle.lets, bundle.version, clock=lambda: epoch(at))
    assert interpreter.decide(asked) == decision
    return decision


def holds(condition: str, at: str, **data: Any) -> bool:
    return decide_at(f'permit p call tool "search" when {condition}', at, **data).allow


def check_error(policy: str) -> str:
    """The first diagnostic of a policy that does not load, as the CLI prints it."""
    with pytest.raises(PolicyError) as raised:
        bundle_of(policy, schema=SCHEMA)
    return raised.value.diagnostics[0].render()


# ------------------------------------------------------------------ syntax


def test_now_and_calls_parse_as_a_root_and_calls() -> None:
    expr = parse_expression('hour(now, "Europe/Berlin") >= 9')
    assert expr == ast.Compare(
        ">=",
        ast.Call("hour", (ast.Path("now", ()), ast.Literal_("Europe/Berlin"))),
        ast.Literal_(9),
    )
    assert parse_expression("size(agent.scopes)") == ast.Call(
        "size", (ast.Path("agent", ("scopes",)),)
    )


def test_a_date_of_a_string_is_a_literal_and_of_a_time_a_call() -> None:
    assert parse_expression('date("2027-03-31")') == ast.Literal_(date(2027, 3, 31))
    assert parse_expression("date(now)") == ast.Call("date", (ast.Path("now", ()),))


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("houre(now) > 1", "unknown function 'houre'"),
        ("houre(now) > 1", "did you mean 'hour'?"),
        ('date("2027-02-30") > date(now)', "invalid date '2027-02-30': there is no such day"),
        ('date("31.03.2027") > date(now)', "write it as YYYY-MM-DD"),
        ("time(context.path) < now", 'time("2026-01-31T09:00:00Z")'),
    ],
)
def test_syntax_errors_teach(text: str, fragment: str) -> None:
    with pytest.raises(PolicyError) as raised:
        parse_expression(text)
    assert fragment in str(raised.value)


def test_a_limits_cap_stays_a_constant() -> None:
    with pytest.raises(PolicyError, match="a limit's cap is a constant"):
        parse('permit p call tool "x" limit sum(context.n) <= size(agent.scopes) per 1h')


def test_formatting_keeps_calls_and_is_idempotent() -> None:
    source = (
        "permit p\n"
        '  when date(context.at,"Europe/Berlin")<=context.until and size( agent.scopes )>1\n'
        '    and weekday(now) in ["saturday","sunday"] and agent.id like agent.labels.glob\n'
    )
    once = format_source(source)
    assert once == (
        "permit p\n"
        '  when date(context.at, "Europe/Berlin") <= context.until\n'
        "    and size(agent.scopes) > 1\n"
        '    and weekday(now) in ["saturday", "sunday"]\n'
        "    and agent.id like agent.labels.glob\n"
    )
    assert format_source(once) == once
    assert parse(once).items == parse(source).items


# ------------------------------------------------------------------ checking


@pytest.mark.parametrize(
    ("condition", "message", "hint"),
    [
        (
            'hour(now, "Europe/Berln") >= 9',
            'unknown time zone "Europe/Berln"',
            'did you mean "Europe/Berlin"?',
        ),
        ('weekday(now) == "Saturday"', '"Saturday" is not a weekday', 'did you mean "saturday"?'),
        ('weekday(now) in ["sat", "sunday"]', '"sat" is not a weekday', 'did you mean "saturday"?'),
        ("weekday(now) > 3", "cannot compare a weekday with a number", "the name of a day"),
        ("date(now) < now", "cannot compare a date with a time", "take the date of the time"),
        ('now > date("2027-03-31")', "cannot compare a time with a date", "a date with a date"),
        ('date(now) == "2027-03-31"', "cannot compare a date with a string", 'date("2027-03-31")'),
        ("hour() > 1", "hour() takes 1 or 2 arguments; this gives 0", "write: hour(now"),
        ('size(agent.scopes, "x") > 1', "size() takes 1 argument; this gives 2", "size(agent"),
        ("hour(agent.since) > 1", "hour() reads a time; this is a date", "a date has no hour"),
        ("date(agent.tz) == agent.since", "date() reads a time; this is a string", "date(t)"),
        ("size(1) > 1", "size() reads a list, a set, a map or a string; this is a number", ""),
        ("hour(now, 1) > 1", "a time zone is a string naming a zone; this is a number", ""),
        ("now.hour == 1", "now is a time (the decision's); it has no attributes", "hour(now"),
        ("agent.id like agent.scopes", "like takes a glob; this is a set<string>", "a glob is"),
    ],
)
def test_the_checker_refuses_with_a_hint(condition: str, message: str, hint: str) -> None:
    shown = check_error(f"permit p when {condition}")
    assert f"error: {message}\n" in shown
    assert hint in shown.split("hint: ", 1)[1]


def test_a_zone_in_a_let_is_checked_where_it_is_used() -> None:
    shown = check_error('let zone = "Europe/Pariss"\npermit p when hour(now, zone) > 8')
    assert 'unknown time zone "Europe/Pariss"' in shown
    assert 'did you mean "Europe/Paris"?' in shown


def test_a_let_cannot_be_named_now() -> None:
    assert "a let cannot be named 'now'" in check_error("let now = 1\npermit p when true")


def test_what_the_checker_accepts() -> None:
    bundle_of(
        """
let zone = "America/New_York"
permit p
  when hour(now, zone) < 12 and minute(context.at) >= 30
    and weekday(now, agent.tz) in ["saturday", "sunday"]
    and weekday(time("2026-03-29T12:00:00Z")) > "friday"
    and date(now, agent.tz) <= date("2027-03-31") and agent.since < context.until
    and size(agent.labels) + 0 == 0 or size("abc") == 3
    and context.path like agent.labels.glob
""".replace(" + 0", ""),
        schema=SCHEMA,
    )


# ------------------------------------------------------------------ evaluation


@pytest.mark.parametrize(
    ("at", "allowed"),
    [
        ("2026-03-30T07:30:00Z", True),  # Monday 09:30 in Berlin (summer time)
        ("2026-03-30T06:59:59Z", False),  # Monday 08:59:59
        ("2026-03-30T14:59:59Z", True),  # Monday 16:59:59
        ("2026-03-30T15:00:00Z", False),  # Monday 17:00
        ("2026-03-28T09:00:00Z", False),  # Saturday 10:00
        ("2026-03-27T22:30:00Z", False),  # Friday 22:30 in UTC, Friday 23:30 in Berlin
    ],
)
def test_business_hours_on_the_clock_of_the_agents_zone(at: str, allowed: bool) -> None:
    assert decide_at(BUSINESS_HOURS, at).allow is allowed


def test_the_same_instant_is_another_hour_elsewhere() -> None:
    at = "2026-03-30T13:30:00Z"  # Berlin 15:30, New York 09:30, Kolkata 19:00
    assert decide_at(BUSINESS_HOURS, at, agent={"id": "b", "tz": "America/New_York"}).allow
    assert not decide_at(BUSINESS_HOURS, at, agent={"id": "b", "tz": "Asia/Kolkata"}).allow


def test_without_a_zone_the_parts_are_utcs() -> None:
    at = "2026-03-29T23:30:00Z"  # Monday 01:30 in Berlin
    assert holds('hour(now) == 23 and minute(now) == 30 and weekday(now) == "sunday"', at)
    assert holds('date(now) == date("2026-03-29")', at)
    assert holds('date(now, "Europe/Berlin") == date("2026-03-30")', at)
    assert holds('weekday(now, "Europe/Berlin") == "monday"', at)


@pytest.mark.parametrize(
    ("at", "hour"),
    [
        ("2026-03-29T00:59:59Z", 1),  # 01:59:59 CET, the last second before the change
        ("2026-03-29T01:00:00Z", 3),  # 03:00 CEST: 02:00 to 02:59 never happens that day
        ("2026-10-25T00:30:00Z", 2),  # 02:30 CEST
        ("2026-10-25T01:30:00Z", 2),  # 02:30 CET: the hour happens twice
    ],
)
def test_daylight_saving_time_in_berlin(at: str, hour: int) -> None:
    assert holds(f'hour(now, "Europe/Berlin") == {hour}', at)


def test_weekdays_are_ordered_monday_first() -> None:
    at = "2026-03-29T12:00:00Z"  # a Sunday
    assert holds('weekday(now) > "saturday" and weekday(now) >= "monday"', at)
    assert not holds('weekday(now) < "monday"', at)
    assert holds('weekday(now) in ["saturday", "sunday"]', at)
    assert holds('["sunday"] contains weekday(now)', at)


def test_a_grant_that_expires_at_the_end_of_a_day_in_a_zone() -> None:
    policy = """
permit until_the_end_of_march
  call tool "search"
  when date(now, agent.tz) <= date("2027-03-31") and date(now, agent.tz) <= context.until
"""
    context = {"until": "2027-12-31"}
    assert decide_at(policy, "2027-03-31T21:59:59Z", context=context).allow  # 23:59:59 CEST
    assert not decide_at(policy, "2027-03-31T22:00:00Z", context=context).allow
    assert not decide_at(policy, "2027-01-01T00:00:00Z", context={"until": "2026-12-31"}).allow


def test_parts_of_a_time_from_the_request() -> None:
    assert holds('hour(context.at, "Asia/Kolkata") == 12', "2000-01-01T00:00:00Z",
                 context={"at": "2026-03-29T06:30:00Z"})  # fmt: skip


def test_now_is_the_time_the_request_carries_when_it_carries_one() -> None:
    # The clock says Saturday; the request asks about a Monday morning.
    assert decide_at(BUSINESS_HOURS, "2026-03-28T09:00:00Z", time="2026-03-30T07:30:00Z").allow


def test_size_counts_members_and_characters() -> None:
    at = "2026-03-29T12:00:00Z"
    agent = {"id": "bot", "scopes": ["a", "b", "a"], "labels": {"x": "1", "y": "2"}}
    assert holds("size(agent.scopes) == 2 and size(agent.labels) == 2", at, agent=agent)
    assert holds('size(agent.id) == 3 and size(["a", "a"]) == 2 and size("") == 0', at, agent=agent)


def test_like_reads_its_glob_from_the_request() -> None:
    at = "2026-03-29T12:00:00Z"
    agent = {"id": "bot", "labels": {"allowed": "/srv/docs/*"}}
    assert holds("context.path like agent.labels.allowed", at, agent=agent,
                 context={"path": "/srv/docs/a.txt"})  # fmt: skip
    assert not holds("context.path like agent.labels.allowed", at, agent=agent,
                     context={"path": "/etc/passwd"})  # fmt: skip


# ------------------------------------------------------------------ fail closed


def test_a_zone_that_is_no_zone_fails_the_rule_closed() -> None:
    mars = {"id": "bot", "tz": "Mars/Olympus"}
    permit = decide_at(BUSINESS_HOURS, "2026-03-30T07:30:00Z", agent=mars)
    assert not permit.allow
    assert permit.errors[0].rule == "business_hours"
    assert permit.errors[0].message.startswith('unknown time zone "Mars/Olympus"')
    forbid = decide_at(
        'permit p call tool "search"\nforbid nights when hour(now, agent.tz) >= 22',
        "2026-03-30T07:30:00Z",
        agent=mars,
    )
    assert not forbid.allow
    assert forbid.decided_by == ("nights",)


def test_an_empty_zone_and_a_path_are_no_zones() -> None:
    for tz in ("", "../../etc/passwd", "/usr/share/zoneinfo/UTC"):
        decision = decide_at(BUSINESS_HOURS, "2026-03-30T07:30:00Z", agent={"id": "b", "tz": tz})
        assert not decision.allow
        assert "unknown time zone" in decision.errors[0].message


@pytest.mark.parametrize(
    ("condition", "message"),
    [
        ("agent.id like agent.n", "'like' needs a glob (a string) on its right, got number"),
        ("hour(agent.id) == 1", "hour() reads a time, got string"),
        ("size(agent.n) == 1", "size() counts a list, a set, a map or a string, got number"),
    ],
)
def test_an_operand_of_the_wrong_type_is_an_error_in_both_evaluators(
    condition: str, message: str
) -> None:
    """The checker refuses these; were one to run (an attribute the schema does not type),
    both evaluators fail alike."""
    bundle = bundle_of("", schema=SCHEMA)
    asked = request(bundle, agent={"id": "bot", "n": 3}, tool="search")
    expr = parse_expression(condition)
    (compiled,) = compile_rules([ast.Rule("permit", "p", None, expr, None, (), ())], {})
    assert compiled.test is not None
    with pytest.raises(EvalError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        compiled.test(asked)
    assert _Evaluator(asked, {}, "").eval(expr).error == message


# ------------------------------------------------------------------ the engine and explain


def test_one_decision_reads_the_clock_once() -> None:
    """Every rule of a decision sees the same `now`, even as the clock moves on."""
    ticks = iter([epoch("2026-03-30T06:59:59.9999Z"), epoch("2026-03-30T07:00:00Z")])
    policy = """
permit before_nine call tool "search" when hour(now, "Europe/Berlin") < 9
permit from_nine call tool "search" when hour(now, "Europe/Berlin") >= 9
"""
    bundle = bundle_of(policy, schema=SCHEMA)
    decision = Engine(bundle, clock=lambda: next(ticks)).decide(request(bundle, tool="search"))
    assert decision.decided_by == ("before_nine",)


def test_rules_that_read_now_are_known_to_the_engine() -> None:
    policy = """
permit timed call tool "search" when hour(now) < 9
permit plain call tool "read_file"
"""
    bundle = bundle_of(policy, schema=SCHEMA)
    engine = Engine(bundle)
    assert engine.reads_now(request(bundle, tool="search"))
    assert not engine.reads_now(request(bundle, tool="read_file"))
    assert not Engine(bundle_of(policy.split("\n", 2)[2], schema=SCHEMA)).reads_now(
        request(bundle, tool="search")
    )


def test_explain_shows_the_hour_and_the_zone_it_read() -> None:
    bundle = bundle_of(BUSINESS_HOURS, schema=SCHEMA)
    interpreter = Interpreter(
        bundle.rules, bundle.lets, clock=lambda: epoch("2026-03-30T06:30:00Z")
    )
    text = render_explanation(interpreter.explain(request(bundle, agent=BERLIN, tool="search")))
    assert "because hour(now, agent.tz) >= 9  →  false" in text
    assert "where hour(now, agent.tz) = 8" in text
    mars = request(bundle, agent={"id": "bot", "tz": "Mars/Olympus"}, tool="search")
    text = render_explanation(interpreter.explain(mars))
    assert 'because weekday(now, agent.tz)  →  error: unknown time zone "Mars/Olympus"' in text
    assert 'where now = time("2026-03-30T06:30:00Z"), agent.tz = "Mars/Olympus"' in text


def test_a_weekday_is_the_string_of_its_name() -> None:
    saturday = Weekday.of(5)
    assert saturday == "saturday" and saturday in frozenset({"saturday"})
    assert Weekday.of(0) < "sunday" and not "sunday" < saturday  # noqa: SIM300
    with pytest.raises(TypeError):
        _ = saturday < "Saturday"
    assert datetime(2026, 3, 28, tzinfo=UTC).weekday() == 5
