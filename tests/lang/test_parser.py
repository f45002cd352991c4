"""The parser: every construct of the language becomes the right tree; errors teach."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from pdp.lang import ast
from pdp.lang.errors import PolicyError
from pdp.lang.parser import parse, parse_expression
from pdp.lang.values import Duration, Money, Risk


def error_of(text: str) -> str:
    with pytest.raises(PolicyError) as caught:
        parse(text, "p.pol")
    return str(caught.value)


def test_a_rule_with_every_clause_parses_in_order() -> None:
    module = parse(
        """package agents
        permit small_transfers
          call tool in payment_tools
          when agent.risk <= medium and context.amount <= 1000 USD
          unless agent.status == "retired"
          limit sum(context.amount) <= 5000 USD per 24h per agent
          limit 60 calls per 1m per agent+user
          require consent("payments:transfer") if delegated
          require step_up("mfa")
        """,
        "a.pol",
    )
    (rule,) = module.rules
    assert rule.id == "agents.small_transfers"
    assert rule.effect == "permit"
    assert rule.target == ast.Target(
        "call", None, "tool", ast.Pattern("in", ast.Name("payment_tools"))
    )
    assert isinstance(rule.when, ast.BoolOp) and rule.when.op == "and"
    assert rule.when.operands[1] == ast.Compare(
        "<=", ast.Path("context", ("amount",)), ast.Literal_(Money(Decimal(1000), "USD"))
    )
    assert rule.unless == ast.Compare("==", ast.Path("agent", ("status",)), ast.Literal_("retired"))
    sum_limit, count_limit = rule.limits
    assert (sum_limit.kind, sum_limit.scope) == ("sum", "agent")
    assert sum_limit.window == ast.Literal_(Duration.parse("24h"))
    assert (count_limit.kind, count_limit.cap, count_limit.scope) == (
        "count",
        ast.Literal_(60),
        "agent+user",
    )
    consent, step_up = rule.requires
    assert consent.obligation == ast.Obligation("consent", "payments:transfer")
    assert consent.condition == ast.Flag("delegated")
    assert step_up.obligation == ast.Obligation("step_up", "mfa") and step_up.condition is None


@pytest.mark.parametrize(
    ("written", "scope"),
    [
        ("per agent", "agent"),
        ("per user", "user"),
        ("per agent+user", "agent+user"),
        ("per agent+resource", "agent+resource"),
        ("per owner", "owner"),
        ("per tool", "tool"),
        ("global", "global"),
        ("", "agent"),
    ],
)
def test_a_limit_names_what_it_counts_per(written: str, scope: str) -> None:
    (rule,) = parse(f"permit p limit 5 calls per 1m {written}").rules
    assert rule.limits[0].scope == scope


def test_an_unknown_scope_lists_every_scope() -> None:
    message = error_of("permit x limit 5 calls per 1m per team")
    assert message.endswith(
        "hint: a limit counts per agent, per user, per agent+user, per agent+resource, "
        "per owner, per tool or global"
    )


def test_spans_point_at_the_source() -> None:
    module = parse("permit x\n  when agent.risk < high\n", "s.pol")
    when = module.rules[0].when
    assert isinstance(when, ast.Compare)
    assert (when.span.line, when.span.column) == (2, 8)
    assert (when.left.span.line, when.left.span.column, when.left.span.end_column) == (2, 8, 18)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("low", ast.Literal_(Risk.low)),
        ("critical", ast.Literal_(Risk.critical)),
        ("true", ast.Literal_(True)),
        ("42", ast.Literal_(42)),
        ("-1.5", ast.Literal_(-1.5)),
        ("5m", ast.Literal_(Duration.parse("5m"))),
        ("12.50 EUR", ast.Literal_(Money(Decimal("12.50"), "EUR"))),
        ('"a\\"b"', ast.Literal_('a"b')),
        ("autonomous", ast.Flag("autonomous")),
        ("read_tools", ast.Name("read_tools")),
        ("action", ast.Path("action", ())),
        ('agent.labels["cost-center"]', ast.Path("agent", ("labels", "cost-center"))),
        ("tool.name", ast.Path("tool", ("name",))),
    ],
)
def test_atoms(text: str, expected: ast.Expr) -> None:
    assert parse_expression(text) == expected


def test_precedence_or_below_and_below_not_below_comparison() -> None:
    expr = parse_expression("not a == 1 and b or c")
    assert expr == ast.BoolOp(
        "or",
        (
            ast.BoolOp(
                "and",
                (ast.Not(ast.Compare("==", ast.Name("a"), ast.Literal_(1))), ast.Name("b")),
            ),
            ast.Name("c"),
        ),
    )


def test_in_contains_like_has() -> None:
    assert parse_expression('tool.name in ["a", "b"]') == ast.Compare(
        "in", ast.Path("tool", ("name",)), ast.ListExpr((ast.Literal_("a"), ast.Literal_("b")))
    )
    assert parse_expression('user.roles contains "analyst"').op == "contains"  # type: ignore[union-attr]
    assert parse_expression('agent.purpose like "pay*"').op == "like"  # type: ignore[union-attr]
    assert parse_expression("agent has owner") == ast.Has(ast.Path("agent", ()), "owner")
    assert parse_expression('agent.labels has "team"') == ast.Has(
        ast.Path("agent", ("labels",)), "team"
    )


def test_set_and_string_operators() -> None:
    roles, admins = ast.Path("user", ("roles",)), ast.ListExpr((ast.Literal_("admin"),))
    assert parse_expression('user.roles intersects ["admin"]') == ast.Compare(
        "intersects", roles, admins
    )
    assert parse_expression('["admin"]  subset\n of user.roles') == ast.Compare(
        "subset of", admins, roles
    )
    email = ast.Path("user", ("email",))
    assert parse_expression('user.email startswith "a"') == ast.Compare(
        "startswith", email, ast.Literal_("a")
    )
    assert parse_expression("user.email endswith domain") == ast.Compare(
        "endswith", email, ast.Name("domain")
    )


def test_the_new_operator_words_still_name_lets_and_attributes() -> None:
    """The words are keywords only where an operator goes (the lexer is contextual)."""
    module = parse("let subset = [1]\nlet of = 1\npermit p when of in subset and agent.endswith")
    assert [let.name for let in module.lets] == ["subset", "of"]
    when = module.rules[0].when
    assert isinstance(when, ast.BoolOp)
    assert when.operands[1] == ast.Path("agent", ("endswith",))


def test_generic_targets() -> None:
    module = parse(
        'permit a action "db.read" on table "orders"\n'
        'permit b action ["db.read", "db.export"] on table like "finance_*"\n'
        'permit c action "http.*"\n',
        "t.pol",
    )
    a, b, c = (rule.target for rule in module.rules)
    assert a == ast.Target(
        "action",
        ast.Pattern("string", ast.Literal_("db.read")),
        "table",
        ast.Pattern("string", ast.Literal_("orders")),
    )
    assert b is not None and b.resource == ast.Pattern("like", ast.Literal_("finance_*"))
    assert c == ast.Target("action", ast.Pattern("string", ast.Literal_("http.*")), None, None)


def test_schema_and_test_blocks() -> None:
    module = parse(
        """schema {
          agent { risk: risk, scopes: set<string>, spend: money<USD> }
          resource tool { server: string }
        }
        test "small transfer" {
          agent { id: "pay-bot", risk: low }
          user { id: "alice" }
          call tool "payments.transfer" with { amount: 200 USD } times 3
          expect deny by small_transfers requiring consent("payments:transfer")
          action "db.read" on table "orders"
          expect allow
        }""",
        "s.pol",
    )
    (schema,) = module.schemas
    agent, tool = schema.entities
    assert [a.name for a in agent.attrs] == ["risk", "scopes", "spend"]
    assert str(agent.attrs[1].type) == "set<string>"
    assert str(agent.attrs[2].type) == "money<USD>"
    assert tool.kind == "resource" and tool.resource_type == "tool"
    (test,) = module.tests
    first, second = test.steps
    assert (first.action, first.resource_id, first.times) == ("tool.call", "payments.transfer", 3)
    assert first.expect.by == ("small_transfers",)
    assert first.expect.requiring == (ast.Obligation("consent", "payments:transfer"),)
    assert (second.action, second.resource_type, second.resource_id) == (
        "db.read",
        "table",
        "orders",
    )
    assert second.expect.allow


def test_at_and_after_go_with_the_step_they_come_before() -> None:
    module = parse(
        """test "refill" {
          agent { id: "pay-bot" }
          at "2026-12-01T10:00:00+01:00"
          call tool "pay" expect allow
          after 24h
          after 30m
          at "2026-12-03T00:00:00Z"
          call tool "pay" expect allow
          call tool "pay" expect deny
        }""",
        "t.pol",
    )
    first, second, third = module.tests[0].steps
    assert first.clock == (ast.ClockSet(datetime(2026, 12, 1, 9, tzinfo=UTC)),)
    assert second.clock == (
        ast.ClockAdvance(Duration.parse("24h")),
        ast.ClockAdvance(Duration.parse("30m")),
        ast.ClockSet(datetime(2026, 12, 3, tzinfo=UTC)),
    )
    assert third.clock == ()
    assert str(first.clock[0].span) == "t.pol:3:11"


def test_before_the_first_step_at_may_name_any_instant() -> None:
    module = parse(
        'test "t" { at "2030-01-01T00:00:00Z" at "2000-01-01T00:00:00Z" '
        'call tool "a" expect allow }'
    )
    assert len(module.tests[0].steps[0].clock) == 2


def test_the_clock_cannot_go_back_once_a_step_has_run() -> None:
    message = error_of(
        'test "t" {\n'
        '  at "2026-12-02T00:00:00Z"\n'
        '  call tool "a" expect allow\n'
        "  after 1h\n"
        '  at "2026-12-02T00:59:59Z"\n'
        '  call tool "a" expect allow\n'
        "}\n"
    )
    assert message.startswith(
        "p.pol:5:3: error: the clock cannot go back: it already reads 2026-12-02T01:00:00Z\n"
        '5 |   at "2026-12-02T00:59:59Z"\n'
        "      ^^^^^^^^^^^^^^^^^^^^^^^^^\n"
        "  hint: once a step has run, a test's clock only moves forward"
    )


def test_an_at_equal_to_the_clock_is_allowed() -> None:
    module = parse(
        'test "t" { at "2026-12-02T00:00:00Z" call tool "a" expect allow '
        'after 1h at "2026-12-02T01:00:00Z" call tool "a" expect allow }'
    )
    assert len(module.tests[0].steps) == 2


def test_the_default_clock_counts_as_the_clock_an_at_may_not_go_back_from() -> None:
    message = error_of(
        'test "t" { call tool "a" expect allow at "2027-01-15T07:59:59Z" '
        'call tool "a" expect allow }'
    )
    assert "it already reads 2027-01-15T08:00:00Z" in message


def test_comments_are_kept_with_their_place() -> None:
    module = parse("# head\npermit x # trailing\n", "c.pol")
    assert [(c.text, c.span.line, c.span.column) for c in module.comments] == [
        ("# head", 1, 1),
        ("# trailing", 2, 10),
    ]


def test_error_shows_location_line_caret_and_hint() -> None:
    message = error_of("permit x\n  when agent.risk = low\n")
    assert message == (
        "p.pol:2:19: error: unexpected '='\n"
        "2 |   when agent.risk = low\n"
        "                      ^\n"
        "  hint: compare with '==' ('=' only appears in let)"
    )


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("permit x when a && b", "write 'and' and 'or'"),
        ("permit x when context.amount <= 100 usd", "three-letter code in capitals"),
        ("permit x when context.amount <= ١٠٠ USD", "digits other than ASCII 0-9"),
        ("permit x when context.amount <= 0.00001 USD", "more than 4 decimal places"),
        ("permit x when context.amount <= 450359962738 USD", "the largest amount"),
        ("permit x when agnt.risk < high", "did you mean 'agent'?"),
        ('permit x when "open', "this string is not closed"),
        ("permit x unless a when b", "target, when, unless, limit, require"),
        ("permit x when (a", "expected ')'"),
        ("permit x when a subset b", "expected 'of'"),
        ('forbid x call tool "a" limit 5 calls per 1m', "a forbid cannot carry 'limit'"),
        ('permit x require consnt("a")', "did you mean 'consent'?"),
        ('permit x call tool "a" limit 0 calls per 1m', "positive whole number"),
        ('permit x call tool "a" limit 5 calls per 1m per team', "per agent, per user"),
        ("permit x limit 5 calls per 1m per ownr", "did you mean 'per owner'?"),
        ("permit x limit 5 calls per 1m per agent+resorce", "did you mean 'per agent+resource'?"),
        ("permit x limit 5 calls per 1m globl", "did you mean 'global'?"),
        ("permit x limit 5 calls per 1m per global", "global takes no per"),
        ("permit x limit 5 calls per 1m tool", "written with per: per tool"),
        ('permit x when context.ip in ip("10.0.0.0/33")', "invalid IP network"),
        ('permit x when context.t < time("yesterday")', "RFC 3339"),
        ('permit x when context.t < dat("2026-01-01")', "did you mean 'date'?"),
        ('permit x when context.t < date("2026-02-30")', "no such day"),
        ("permit x when ip(context.host)", 'ip("10.0.0.0/8")'),
        ('test "t" { agent { id: "a" } }', "has no step"),
        ('test "t" { at "2026-12-01T09:00:00Z" }', "has no step"),
        ('test "t" { call tool "a" expect alow }', "a test expects allow or deny"),
        ('test "t" { call tool "a" expect allow requiring consent("x") }', "an allow carries"),
        ("schema { agnt { x: string } }", "did you mean 'agent'?"),
        ("schema { resource { x: string } }", "needs a type name"),
        ('test "t" { agnet { id: "a" } call tool "a" expect allow }', "did you mean 'agent'?"),
        ('test "t" { at "2026-12-01T09:00:00" call tool "a" expect allow }', "no UTC offset"),
        ('test "t" { at "tomorrow" call tool "a" expect allow }', "RFC 3339"),
        (
            'test "t" { call tool "a" expect allow after 0h call tool "a" expect allow }',
            "after 0h does not move the clock",
        ),
        (
            'test "t" { call tool "a" expect allow after -5h call tool "a" expect allow }',
            "after takes a positive duration",
        ),
        (
            'test "t" { call tool "a" expect allow after 5 call tool "a" expect allow }',
            "after takes a positive duration",
        ),
        (
            'test "t" { call tool "a" expect allow after 5h }',
            "'after' after the last step changes nothing",
        ),
        (
            'test "t" { at "9999-12-31T00:00:00Z" after 2d call tool "a" expect allow }',
            "past the year 9999",
        ),
        (
            'test "t" { at "9999-12-31T23:59:59.5Z" after 500ms call tool "a" expect allow }',
            "past the year 9999",
        ),
        (
            'test "t" { at "2026-12-01T09:00:00Z" agent { id: "a" } call tool "a" expect allow }',
            "agent block goes before its steps",
        ),
    ],
)
def test_errors_teach(text: str, fragment: str) -> None:
    message = error_of(text)
    assert fragment in message
    assert message.startswith("p.pol:1:")
    assert "Traceback" not in message and "lark" not in message.lower()


def test_unexpected_end_of_file_points_past_the_last_line() -> None:
    message = error_of("permit x when\n")
    assert message.startswith("p.pol:1:14: error: unexpected end of file")


def test_deep_nesting_is_refused_with_a_policy_error() -> None:
    message = error_of("permit p when " + "not " * 400 + "delegated")
    assert "nests more than" in message


def test_nesting_within_the_limit_parses_checks_and_compiles() -> None:
    from tests.conftest import engine_of, request

    engine = engine_of(
        'permit p call tool "x" when ' + "not " * 61 + "delegated"
    )  # odd: autonomous
    assert engine.decide(request(engine.bundle, tool="x")).allow


@pytest.mark.parametrize(
    ("text", "caret", "hint"),
    [
        ('permit\n  call tool "x"', (2, 3, 4), "permit read_tools call …"),
        ('forbid\n  when agent.id == "a"', (2, 3, 4), "forbid read_tools when …"),
        ('permit\n  action "db.read" on table', (2, 3, 6), "permit read_tools action …"),
    ],
)
def test_a_rule_without_a_name_says_so(text: str, caret: tuple[int, int, int], hint: str) -> None:
    with pytest.raises(PolicyError) as exc:
        parse(text, "p.pol")
    (d,) = exc.value.diagnostics
    assert d.message == f"a rule needs a name: {text.split()[0]} NAME …"
    assert (d.span.line, d.span.column, d.span.end_column - d.span.column) == caret
    assert d.hint.endswith(hint)


@pytest.mark.parametrize(
    "text",
    [
        'permit a call tool "x"\n# only permit when\n)',
        'permit a call tool "permit when"\n)',
        'permit a call tool "x" # forbid call\n)',
    ],
)
def test_words_in_comments_and_strings_are_no_rule_without_a_name(text: str) -> None:
    with pytest.raises(PolicyError) as exc:
        parse(text, "p.pol")
    (d,) = exc.value.diagnostics
    assert d.message == "unexpected ')'"
    assert (d.span.line, d.span.column) == (text.count("\n") + 1, 1)


def test_a_comment_between_the_effect_and_a_clause_is_still_a_rule_without_a_name() -> None:
    with pytest.raises(PolicyError) as exc:
        parse('permit # reads\n  call tool "x"', "p.pol")
    (d,) = exc.value.diagnostics
    assert d.message == "a rule needs a name: permit NAME …"
    assert (d.span.line, d.span.column) == (2, 3)


@pytest.mark.parametrize("keyword", ["when", "unless", "limit", "require", "call", "action"])
@pytest.mark.parametrize("effect", ["permit", "forbid"])
def test_a_clause_keyword_names_no_rule(effect: str, keyword: str) -> None:
    with pytest.raises(PolicyError) as exc:
        parse(f'{effect} {keyword}\npermit other call tool "x"', "p.pol")
    (d,) = exc.value.diagnostics
    assert d.message == f"a rule needs a name: {effect} NAME …"
    assert d.hint == f"name the rule before its {keyword} clause: {effect} read_tools {keyword} …"
    assert (d.span.line, d.span.column, d.span.end_column) == (
        1,
        len(effect) + 2,
        len(effect) + 2 + len(keyword),
    )


def test_a_condition_without_when_says_so() -> None:
    with pytest.raises(PolicyError) as exc:
        parse('permit p\n  call tool "x"\n  agent.risk < high', "p.pol")
    (d,) = exc.value.diagnostics
    assert d.message == "a condition starts with when (or unless)"
    assert d.hint == "write: when agent.risk < high"
    assert (d.span.line, d.span.column) == (3, 3)
