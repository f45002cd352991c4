"""The formatter: one canonical text per tree, stable, and no comment lost or moved out of order."""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import typing
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pdp.lang import ast
from pdp.lang.errors import PolicyError
from pdp.lang.formatter import format_expr, format_module, format_source
from pdp.lang.parser import parse, parse_expression
from pdp.lang.values import Duration, Money, Risk

POLICIES = Path(__file__).resolve().parents[2] / "policies"

# Every construct of the grammar, written untidily on purpose.
RICH = """\
# Header comment of the file.

package agents.payments   # the package

let read_tools    = ["search", "read_file", "summarize", "sql.select"]
let payment_tools = [ "payments.transfer",
    "payments.refund", ]   # the money movers
let office = ip("10.0.0.0/8")
let host = ip("2001:db8::1")
let launch = time("2026-01-31T09:00:00Z")
let empty = []
let labels = { team: "ops", "cost-center": "42", nested: { a: [1, 2.5] } }
let trusted = agent.type == "internal" and agent.risk <= medium


# Forbids first.
forbid inactive_agents when agent.status != "active"

forbid deep_delegation
  when delegation.depth > 2 or (delegation.depth >= 1 and not delegated)
  unless user.roles contains "admin"

permit read_only
  call tool in read_tools
  when agent.risk < high and (agent.owner == "x" or agent has owner)

permit listed call tool ["a", "b"] when autonomous
permit globbed call tool like "fs.write*"
permit named call tool read_tools
permit exact call tool "web.search"
permit inline call tool in ["x", "y"]
permit everything

permit small_transfers
  call tool in payment_tools
  when agent.purpose == "payments" and agent.risk <= medium and context.amount <= 1000.50 USD
  unless context.amount < -5 EUR or context.n == -1.25 or context.m != 0
  limit sum(context.amount) <= 5000 USD per 24h per agent
  limit sum(context.amount) <= 20000 USD per 7d per agent+user
  limit 60 calls per 1m
  limit 10 calls per 500ms per user
  require consent("payments:transfer") if delegated
  require step_up("mfa")

permit analysts
  action "db.read" on table "orders"
  when user.roles contains "analyst" and resource.classification in ["internal", "public"]
permit any_table action ["db.read", "db.export"] on table like "finance_*"
permit any_resource action "http.*" on page
permit bare_action action "ping"
permit named_action action read_actions on table tables

permit odd_paths
  when agent.labels["team-x"] == "ops" and agent.labels.team like "o*"
   and context.ip in office and context.when > launch and context.age < 1.5h
   and agent.labels has "cost-center" and tool has annotations
   and context.s == "tab\\there \\"quoted\\" back\\\\slash" and not not true and false != true
   and context.x == 30s and context.y == 5m and context.risk == critical
   and context.map == { k: low } and context.list == [[1], [], [2, [3]]]

permit set_and_string_operators
  when user.roles intersects ["admin",  "editor"] and [ "viewer" ] subset   of user.roles
   and user.email   endswith "@example.com" and not (user.email startswith "ext-")

schema {
  agent { purpose: string, risk: risk, status: string, type: string, owner: string,
          scopes: set<string>, labels: map<string> }
  user { roles: set<string> }
  context { amount: money<USD>, n: number, ip: ip, time: time, age: duration }
  resource tool { server: string, annotations: set<string> }
  resource table {}
}

test "a delegated transfer without consent asks the user" {
  agent { id: "pay-bot", purpose: "payments", risk: low, status: "active" }
  user  { id: "alice" , roles: ["treasurer"] }
  delegation { depth: 1 }
  context { consents: [], labels: { "a-b": 1 } }
  resource { server: "payments" }
  at   "2026-12-01T10:00:00+01:00"
  call tool "payments.transfer" with { amount: 200 USD } times 3
  expect deny requiring consent("payments:transfer"), step_up("mfa")
  after 25h   after 1.5m
  action "db.read" on table "orders"
  expect allow by analysts, agents.payments.read_only
  at "2026-12-03T00:00:00.250Z"
  call tool "search" with { } times 1 expect allow
}
# The end.
"""


def strict(node: Any) -> Any:
    """A tree as plain tuples that also tell 1 from 1.0 from True, and 5m from 300s."""
    if dataclasses.is_dataclass(node) and not isinstance(node, type):
        return (
            type(node).__name__,
            *(strict(getattr(node, f.name)) for f in dataclasses.fields(node) if f.compare),
        )
    if isinstance(node, tuple):
        return tuple(strict(item) for item in node)
    if isinstance(node, Money):
        return ("Money", format(node.amount, "f"), node.currency)
    if isinstance(node, Duration):
        return ("Duration", node.text)
    if isinstance(node, datetime):
        return ("datetime", node.isoformat())
    return (type(node).__name__, repr(node))


def assert_same_tree(formatted: str, original: ast.Module) -> None:
    again = parse(formatted, original.path)
    assert strict(again) == strict(original)
    assert again == original


# ------------------------------------------------------------------ round trip and stability


def test_formatting_keeps_the_tree_of_every_construct() -> None:
    module = parse(RICH, "rich.pol")
    assert_same_tree(format_module(module), module)


def test_formatting_twice_changes_nothing() -> None:
    once = format_source(RICH)
    assert format_source(once) == once


def test_formatted_text_ends_with_exactly_one_newline() -> None:
    text = format_source(RICH + "\n\n\n")
    assert text.endswith("\n") and not text.endswith("\n\n")


@pytest.mark.parametrize("path", sorted(POLICIES.glob("*.pol")), ids=lambda p: p.name)
def test_the_shipped_policies_are_stable_and_keep_their_tree(path: Path) -> None:
    text = path.read_text()
    module = parse(text, str(path))
    once = format_module(module)
    assert_same_tree(once, module)
    assert format_source(once, str(path)) == once


def test_an_empty_file_formats_to_nothing() -> None:
    assert format_source("") == ""
    assert format_source("\n\n  \n") == ""


def test_bad_input_raises_a_policy_error() -> None:
    with pytest.raises(PolicyError):
        format_source("permit x when", "bad.pol")


# ------------------------------------------------------------------ canonical text


def test_a_messy_rule_becomes_canonical() -> None:
    messy = (
        "package   agents\n"
        "permit small_transfers call tool in payment_tools when agent.risk<=medium "
        "and(context.amount<=1000 USD)   limit sum( context.amount )<=5000 USD per 24h "
        'limit 60 calls per 1m per agent+user require consent( "payments:transfer" ) if delegated'
        '\nforbid   risky_writes call tool like"*write*" when agent.risk>=high'
    )
    assert format_source(messy) == (
        "package agents\n"
        "permit small_transfers\n"
        "  call tool in payment_tools\n"
        "  when agent.risk <= medium and context.amount <= 1000 USD\n"
        "  limit sum(context.amount) <= 5000 USD per 24h per agent\n"
        "  limit 60 calls per 1m per agent+user\n"
        '  require consent("payments:transfer") if delegated\n'
        "forbid risky_writes\n"
        '  call tool like "*write*"\n'
        "  when agent.risk >= high\n"
    )


def test_each_limit_scope_is_written_canonically_and_round_trips() -> None:
    messy = (
        "permit p limit 1 calls per 1m limit 2 calls per 1m  per  user "
        "limit 3 calls per 1m per agent + user limit 4 calls per 1m per agent+resource "
        "limit 5 calls per 1m per owner limit 6 calls per 1m per tool "
        "limit sum(context.amount)<=7 USD per 1m   global"
    )
    canonical = (
        "permit p\n"
        "  limit 1 calls per 1m per agent\n"
        "  limit 2 calls per 1m per user\n"
        "  limit 3 calls per 1m per agent+user\n"
        "  limit 4 calls per 1m per agent+resource\n"
        "  limit 5 calls per 1m per owner\n"
        "  limit 6 calls per 1m per tool\n"
        "  limit sum(context.amount) <= 7 USD per 1m global\n"
    )
    assert format_source(messy) == canonical
    assert format_source(canonical) == canonical
    scopes = [limit.scope for limit in parse(canonical).rules[0].limits]
    assert scopes == ["agent", "user", "agent+user", "agent+resource", "owner", "tool", "global"]


def test_messy_lets_schema_and_test_become_canonical() -> None:
    messy = """
let a=[ "x","y", ]
let   b = (1)


schema { agent{purpose:string,risk:risk} resource  tool {server : string,}
  user { } }
test "small transfer" { agent{id:"pay-bot",risk:low}  user{id:"alice"}
  call tool "payments.transfer" with {amount:200 USD,} times 2 expect deny requiring consent("p")
  action "db.read" on table "orders" expect allow by a , b.c
}
"""
    assert format_source(messy) == (
        'let a = ["x", "y"]\n'
        "let b = 1\n"
        "\n"
        "schema {\n"
        "  agent { purpose: string, risk: risk }\n"
        "  resource tool { server: string }\n"
        "  user {}\n"
        "}\n"
        'test "small transfer" {\n'
        '  agent { id: "pay-bot", risk: low }\n'
        '  user { id: "alice" }\n'
        '  call tool "payments.transfer" with { amount: 200 USD } times 2\n'
        '  expect deny requiring consent("p")\n'
        '  action "db.read" on table "orders"\n'
        "  expect allow by a, b.c\n"
        "}\n"
    )


def test_at_and_after_get_a_line_each_and_at_is_written_in_utc() -> None:
    messy = (
        'test "refill" { agent{id:"a"} at   "2026-12-01T10:00:00+01:00" call tool "pay" '
        'expect allow after  24h after 90s  call tool "pay" expect allow }\n'
    )
    formatted = format_source(messy)
    assert formatted == (
        'test "refill" {\n'
        '  agent { id: "a" }\n'
        '  at "2026-12-01T09:00:00Z"\n'
        '  call tool "pay"\n'
        "  expect allow\n"
        "  after 24h\n"
        "  after 90s\n"
        '  call tool "pay"\n'
        "  expect allow\n"
        "}\n"
    )
    assert_same_tree(formatted, parse(messy))
    assert format_source(formatted) == formatted


def test_targets_are_written_in_their_canonical_forms() -> None:
    text = format_source(
        'permit a call tool "x"\npermit b call tool like "g*"\npermit c call tool in read_tools\n'
        'permit d call tool ["a","b"]\npermit e action "db.read" on table "orders"\n'
        'permit f action x on t\npermit g call tool in ["a"]\n'
    )
    targets = [line.strip() for line in text.splitlines() if line.startswith("  ")]
    assert targets == [
        'call tool "x"',
        'call tool like "g*"',
        "call tool in read_tools",
        'call tool ["a", "b"]',
        'action "db.read" on table "orders"',
        "action x on t",
        'call tool in ["a"]',
    ]


def test_a_limit_always_names_its_scope() -> None:
    text = format_source("permit x limit 5 calls per 1m")
    assert text == "permit x\n  limit 5 calls per 1m per agent\n"


def test_literals_are_written_as_an_author_would() -> None:
    text = format_source(
        'let x = [1000.50 USD, 7 EUR, 90s, 1.5h, 500ms, ip("10.0.0.1"), ip("10.0.0.0/8"),\n'
        ' time("2026-01-31T10:00:00+01:00"), low, critical, true, false, -3, 0.25, "a\\"b"]'
    )
    assert text == (
        "let x = [\n"
        "  1000.50 USD,\n"
        "  7 EUR,\n"
        "  90s,\n"
        "  1.5h,\n"
        "  500ms,\n"
        '  ip("10.0.0.1"),\n'
        '  ip("10.0.0.0/8"),\n'
        '  time("2026-01-31T09:00:00Z"),\n'
        "  low,\n"
        "  critical,\n"
        "  true,\n"
        "  false,\n"
        "  -3,\n"
        "  0.25,\n"
        '  "a\\"b",\n'
        "]\n"
    )


def test_numbers_never_use_exponent_form() -> None:
    assert format_expr(ast.Literal_(1e20)) == "100000000000000000000.0"
    assert format_expr(ast.Literal_(1e-7)) == "0.0000001"
    assert format_expr(ast.Literal_(Money(Decimal("1E-7"), "USD"))) == "0.0000001 USD"
    assert parse_expression(format_expr(ast.Literal_(1e-7))) == ast.Literal_(1e-7)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("a and b and c", "a and b and c"),
        ("a and (b and c)", "a and (b and c)"),
        ("(a and b) and c", "(a and b) and c"),
        ("(a or b) and c", "(a or b) and c"),
        ("a or (b and c)", "a or b and c"),
        ("(a or b) or c", "(a or b) or c"),
        ("not (a or b)", "not (a or b)"),
        ("not (not a)", "not not a"),
        ("(not a) and b", "not a and b"),
        ("not (a == b)", "not a == b"),
        ("(a == b) == c", "(a == b) == c"),
        ('user.roles   intersects ["a","b"]', 'user.roles intersects ["a", "b"]'),
        ("[a]  subset\n   of  b", "[a] subset of b"),
        ("not (a startswith b)", "not a startswith b"),
        ("(a endswith b) == (c subset of d)", "(a endswith b) == (c subset of d)"),
        ("a == (b has c)", "a == (b has c)"),
        ("(not a) == b", "(not a) == b"),
        ("[(a or b), (c)]", "[a or b, c]"),
        ("{k: (a and b)}", "{ k: a and b }"),
        ("(agent has owner)", "agent has owner"),
        ('agent.labels["team-x"].y', 'agent.labels["team-x"].y'),
        ('agent["labels"]["team"]', "agent.labels.team"),
        ('agent.labels["when"].in', "agent.labels.when.in"),
        ('agent has "and" and { "or": 1 } == x', "agent has and and { or: 1 } == x"),
        ('agent has "cost-center"', 'agent has "cost-center"'),
        ('agent has "owner"', "agent has owner"),
        ('{ "a": 1, "b c": [] }', '{ a: 1, "b c": [] }'),
        ("{}", "{}"),
        ("[]", "[]"),
        ("delegated and autonomous", "delegated and autonomous"),
    ],
)
def test_expressions_get_the_fewest_parentheses_that_keep_the_tree(
    source: str, expected: str
) -> None:
    expr = parse_expression(source)
    assert format_expr(expr) == expected
    assert parse_expression(expected) == expr


# ------------------------------------------------------------------ line breaking


def test_a_long_when_breaks_before_each_operator() -> None:
    text = format_source(
        'permit x\n  when agent.purpose == "payments" and agent.risk <= medium'
        " and context.amount <= 1000 USD and (delegated or autonomous)\n"
    )
    assert text == (
        "permit x\n"
        '  when agent.purpose == "payments"\n'
        "    and agent.risk <= medium\n"
        "    and context.amount <= 1000 USD\n"
        "    and (delegated or autonomous)\n"
    )


def test_unless_and_require_if_break_the_same_way() -> None:
    long_or = " or ".join(f'agent.type == "kind_number_{i}"' for i in range(4))
    text = format_source(f'permit x\n  unless {long_or}\n  require consent("s") if {long_or}\n')
    assert text == (
        "permit x\n"
        '  unless agent.type == "kind_number_0"\n'
        '    or agent.type == "kind_number_1"\n'
        '    or agent.type == "kind_number_2"\n'
        '    or agent.type == "kind_number_3"\n'
        '  require consent("s") if agent.type == "kind_number_0"\n'
        '    or agent.type == "kind_number_1"\n'
        '    or agent.type == "kind_number_2"\n'
        '    or agent.type == "kind_number_3"\n'
    )


def test_a_condition_of_exactly_88_characters_stays_on_one_line() -> None:
    head = "  when agent.a == 1 and "
    name = "x" * (88 - len(head) - len("context. == 1"))
    line = f"{head}context.{name} == 1"
    assert len(line) == 88
    assert format_source(f"permit x\n{line}\n") == f"permit x\n{line}\n"
    longer = line.replace("context.", "context.y")
    assert format_source(f"permit x\n{longer}\n").count("\n") == 3


def test_a_long_condition_that_is_not_and_or_stays_on_one_line() -> None:
    long_list = ", ".join(f'"tool_number_{i}"' for i in range(10))
    text = format_source(f"permit x when tool.name in [{long_list}]")
    assert text == f"permit x\n  when tool.name in [{long_list}]\n"


def test_a_short_let_list_stays_on_one_line_and_a_long_one_breaks() -> None:
    assert format_source('let a = [ "x",\n "y" ]') == 'let a = ["x", "y"]\n'
    items = [f'"tool_number_{i}"' for i in range(8)]
    text = format_source(f"let tools = [{', '.join(items)}]")
    assert text == "let tools = [\n" + "".join(f"  {item},\n" for item in items) + "]\n"


def test_a_long_schema_entity_gets_one_attribute_per_line() -> None:
    attrs = ", ".join(f"attribute_{i}: string" for i in range(6))
    text = format_source(f"schema {{ agent {{ {attrs} }} user {{ roles: set<string> }} }}")
    assert text == (
        "schema {\n"
        "  agent {\n" + "".join(f"    attribute_{i}: string,\n" for i in range(6)) + "  }\n"
        "  user { roles: set<string> }\n"
        "}\n"
    )


def test_long_test_records_and_with_blocks_break_like_entities() -> None:
    fields = ", ".join(f'field_{i}: "value number {i}"' for i in range(4))
    text = format_source(
        f'test "t" {{ agent {{ {fields} }} call tool "x" with {{ {fields} }} times 2'
        " expect allow }"
    )
    body = "".join(f'    field_{i}: "value number {i}",\n' for i in range(4))
    assert text == (
        'test "t" {\n'
        "  agent {\n" + body + "  }\n"
        '  call tool "x" with {\n' + body + "  } times 2\n"
        "  expect allow\n"
        "}\n"
    )


# ------------------------------------------------------------------ blank lines


def test_adjacent_lets_stay_grouped_and_blank_runs_collapse_to_one() -> None:
    text = format_source("let a = 1\nlet b = 2\n\n\n\nlet c = 3\npermit x\n\npermit y\n")
    assert text == "let a = 1\nlet b = 2\n\nlet c = 3\npermit x\n\npermit y\n"


def test_a_comment_between_adjacent_items_sets_them_apart() -> None:
    text = format_source("let a = 1\n# about b\nlet b = 2\n")
    assert text == "let a = 1\n\n# about b\nlet b = 2\n"


def test_blank_lines_inside_a_comment_block_are_kept() -> None:
    source = "# Copyright\n\n# About the package.\npackage p\n\n# Section\n\n# About x.\npermit x\n"
    assert format_source(source) == source


def test_blank_lines_inside_blocks_are_removed() -> None:
    source = 'test "t" {\n\n  agent { id: "a" }\n\n  call tool "x"\n\n  expect allow\n\n}\n'
    assert format_source(source) == (
        'test "t" {\n  agent { id: "a" }\n  call tool "x"\n  expect allow\n}\n'
    )


def test_a_tree_built_in_code_gets_blank_lines_between_all_but_lets() -> None:
    let_a = ast.Let("a", ast.Literal_(1))
    let_b = ast.Let("b", ast.ListExpr((ast.Literal_("x"),)))
    rule = ast.Rule("permit", "r", None, ast.Flag("delegated"), None, (), ())
    module = ast.Module("<code>", "p", (let_a, let_b, rule, rule))
    assert format_module(module) == (
        'package p\n\nlet a = 1\nlet b = ["x"]\n\npermit r\n  when delegated\n\npermit r\n'
        "  when delegated\n"
    )


# ------------------------------------------------------------------ comments


def comment_texts(text: str) -> list[str]:
    return [c.text.rstrip() for c in parse(text).comments]


def test_comments_on_their_own_line_go_before_the_next_line_of_code() -> None:
    source = """\
# about the file
package p
# about x
permit x
      # about the target
  call tool "x"
# about when
  when a
test "t" {
    # about the record
  agent { id: "a" }
        # about the step
  call tool "x"
  # about expect
  expect allow
   # before the closing brace
}
# the end
"""
    assert (
        format_source(source)
        == """\
# about the file
package p

# about x
permit x
  # about the target
  call tool "x"
  # about when
  when a
test "t" {
  # about the record
  agent { id: "a" }
  # about the step
  call tool "x"
  # about expect
  expect allow
  # before the closing brace
}
# the end
"""
    )


def test_comments_after_code_stay_at_the_end_of_their_line() -> None:
    source = """\
package p   # the package
let a = 1 # one
permit x    # header
  call tool "x"   # target
  when a and b    # condition
  limit 5 calls per 1m   # limit
schema { # schema
  agent { a: string }   # agent
}  # closed
test "t" {   # test
  agent { id: "a" }  # record
  call tool "x" times 2  # step
  expect allow  # expect
}   # done
"""
    assert (
        format_source(source)
        == """\
package p  # the package
let a = 1  # one
permit x  # header
  call tool "x"  # target
  when a and b  # condition
  limit 5 calls per 1m per agent  # limit
schema {  # schema
  agent { a: string }  # agent
}  # closed
test "t" {  # test
  agent { id: "a" }  # record
  call tool "x" times 2  # step
  expect allow  # expect
}  # done
"""
    )


def test_a_comment_inside_a_condition_keeps_it_broken_at_that_operand() -> None:
    source = """\
permit x
  when agent.purpose == "payments"  # only payment bots
   and agent.risk <= medium
   # and never after hours
   and context.hour < 18
"""
    expected = """\
permit x
  when agent.purpose == "payments"  # only payment bots
    and agent.risk <= medium
    # and never after hours
    and context.hour < 18
"""
    assert format_source(source) == expected
    assert format_source(expected) == expected


def test_a_comment_inside_a_list_keeps_it_one_item_per_line() -> None:
    source = 'let tools = ["search",  # web\n  "read_file"]  # local\n'
    expected = 'let tools = [\n  "search",  # web\n  "read_file",\n]  # local\n'
    assert format_source(source) == expected


def test_a_comment_inside_a_line_that_cannot_break_moves_above_it() -> None:
    source = "permit x\n  when not (a  # why\n    and b)  # after\n"
    expected = "permit x\n  # why\n  when not (a and b)  # after\n"
    assert format_source(source) == expected
    assert format_source(expected) == expected


def test_comments_keep_their_order_and_are_never_duplicated() -> None:
    once = format_source(RICH)
    assert comment_texts(once) == comment_texts(RICH)
    assert once.count("# the money movers") == 1


def test_trailing_whitespace_of_a_comment_is_dropped() -> None:
    assert format_source("let a = 1   # note   \n") == "let a = 1  # note\n"


# ------------------------------------------------------------------ property tests

KEYWORDS = {
    *("package", "let", "permit", "forbid", "call", "tool", "action", "on", "like", "in"),
    *("when", "unless", "limit", "sum", "per", "calls", "require", "if", "or", "and", "not"),
    *("has", "contains", "schema", "test", "with", "times", "expect", "by", "requiring"),
    *("intersects", "subset", "of", "startswith", "endswith", "at", "after"),
}
RESERVED = (
    KEYWORDS
    | set(ast.ROOTS)
    | set(Risk.__members__)
    | {"true", "false", "delegated", "autonomous", "ip", "time"}
)

names = st.from_regex(r"[a-z_][a-z0-9_]{0,7}", fullmatch=True).filter(lambda n: n not in RESERVED)
# Where the grammar expects a name (path parts, keys, fields), keywords are names too.
keys = names | st.sampled_from(sorted(KEYWORDS)) | st.text(max_size=8)
texts = st.text(max_size=8)
durations = st.from_regex(r"[0-9]{1,4}(\.[0-9]{1,2})?(ms|s|m|h|d)", fullmatch=True).map(
    Duration.parse
)
moneys = st.builds(
    Money,
    st.from_regex(r"-?[0-9]{1,7}(\.[0-9]{1,3})?", fullmatch=True).map(Decimal),
    st.sampled_from(["USD", "EUR", "JPY"]),
)
times = st.datetimes(
    min_value=datetime(1970, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)
networks = st.builds(
    lambda address, prefix: ipaddress.ip_network(
        f"{address}/{min(prefix, address.max_prefixlen)}", strict=False
    ),
    st.ip_addresses(),
    st.integers(0, 128),
)
# The literals a `limit sum(...) <= CAP` may take: the grammar's `literal`.
cap_values = st.one_of(
    texts,
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=False, allow_infinity=False),
    moneys,
    durations,
    times,
    st.ip_addresses(),
    networks,
)
literal_values = st.one_of(cap_values, st.booleans(), st.sampled_from(list(Risk)))

atoms: st.SearchStrategy[ast.Expr] = st.one_of(
    literal_values.map(ast.Literal_),
    st.builds(ast.Path, st.sampled_from(ast.ROOTS), st.lists(keys, max_size=3).map(tuple)),
    names.map(ast.Name),
    st.sampled_from(["delegated", "autonomous"]).map(lambda kind: ast.Flag(kind)),  # type: ignore[arg-type]
)


def _compound(children: st.SearchStrategy[ast.Expr]) -> st.SearchStrategy[ast.Expr]:
    return st.one_of(
        st.lists(children, max_size=3).map(lambda items: ast.ListExpr(tuple(items))),
        st.lists(st.tuples(keys, children), max_size=3, unique_by=lambda kv: kv[0]).map(
            lambda entries: ast.MapExpr(tuple(entries))
        ),
        children.map(ast.Not),
        st.builds(
            ast.BoolOp,
            st.sampled_from(["and", "or"]),
            st.lists(children, min_size=2, max_size=4).map(tuple),
        ),
        st.builds(
            ast.Compare,
            st.sampled_from(typing.get_args(ast.CompareOp)),
            children,
            children,
        ),
        st.builds(ast.Has, children, keys),
        st.builds(
            ast.Call,
            st.sampled_from(["hour", "minute", "weekday", "size"]),
            st.lists(children, max_size=3).map(tuple),
        ),
    )


exprs = st.recursive(atoms, _compound, max_leaves=10)


def _pattern(form: str) -> st.SearchStrategy[ast.Pattern]:
    strings = st.lists(texts.map(ast.Literal_), max_size=3).map(
        lambda items: ast.ListExpr(tuple(items))
    )
    if form in ("string", "like"):
        return texts.map(lambda s: ast.Pattern(form, ast.Literal_(s)))  # type: ignore[arg-type]
    if form == "in":
        return (names.map(ast.Name) | strings).map(lambda e: ast.Pattern("in", e))
    if form == "list":
        return strings.map(lambda e: ast.Pattern("list", e))
    return names.map(lambda n: ast.Pattern("name", ast.Name(n)))


patterns = st.sampled_from(["string", "like", "in", "list", "name"]).flatmap(_pattern)


@st.composite
def targets(draw: st.DrawFn) -> ast.Target:
    if draw(st.booleans()):
        return ast.Target("call", None, ast.TOOL_TYPE, draw(patterns))
    resource_type = draw(st.none() | names)
    resource = draw(st.none() | patterns) if resource_type else None
    return ast.Target("action", draw(patterns), resource_type, resource)


@st.composite
def limits(draw: st.DrawFn) -> ast.Limit:
    window = ast.Literal_(draw(durations))
    scope = draw(st.sampled_from((*ast.PER_SCOPES, ast.GLOBAL_SCOPE)))
    if draw(st.booleans()):
        cap = ast.Literal_(draw(cap_values))
        return ast.Limit("sum", draw(exprs), cap, window, scope)  # type: ignore[arg-type]
    count = ast.Literal_(draw(st.integers(1, 10**6)))
    return ast.Limit("count", None, count, window, scope)  # type: ignore[arg-type]


obligations = st.builds(ast.Obligation, st.sampled_from(["consent", "step_up"]), texts)


@st.composite
def rules(draw: st.DrawFn) -> ast.Rule:
    effect = draw(st.sampled_from(["permit", "forbid"]))
    permit = effect == "permit"
    return ast.Rule(
        effect,  # type: ignore[arg-type]
        draw(names),
        draw(st.none() | targets()),
        draw(st.none() | exprs),
        draw(st.none() | exprs),
        tuple(draw(st.lists(limits(), max_size=2))) if permit else (),
        tuple(draw(st.lists(st.builds(ast.Require, obligations, st.none() | exprs), max_size=2)))
        if permit
        else (),
    )


field_names = names | st.sampled_from(sorted(KEYWORDS))
fields = st.lists(st.builds(ast.Field, field_names, exprs), max_size=3)


instants = st.datetimes(
    min_value=datetime(1970, 1, 2), max_value=datetime(9000, 1, 1), timezones=st.just(UTC)
)


@st.composite
def clock_moves(draw: st.DrawFn, first: bool) -> tuple[ast.ClockMove, ...]:
    """``at`` and ``after`` before a step; an ``at`` only before the first (later ones
    must not go back, which a random instant would)."""
    moves: list[ast.ClockMove] = []
    if first and draw(st.booleans()):
        moves.append(ast.ClockSet(draw(instants)))
    positive = durations.filter(lambda d: d.seconds > 0)
    moves += [ast.ClockAdvance(d) for d in draw(st.lists(positive, max_size=2))]
    return tuple(moves)


@st.composite
def policy_tests(draw: st.DrawFn) -> ast.Test:
    records = tuple(
        ast.Record(kind, tuple(draw(fields)))  # type: ignore[arg-type]
        for kind in draw(
            st.lists(
                st.sampled_from(["agent", "user", "delegation", "context", "resource"]),
                max_size=3,
            )
        )
    )
    steps = []
    for _ in range(draw(st.integers(1, 3))):
        allow = draw(st.booleans())
        dotted = st.lists(names, min_size=1, max_size=2).map(".".join)
        expect = ast.Expect(
            allow,
            tuple(draw(st.lists(dotted, max_size=2))),
            () if allow else tuple(draw(st.lists(obligations, max_size=2))),
        )
        if draw(st.booleans()):
            head = ("call", ast.CALL_ACTION, ast.TOOL_TYPE, draw(texts))
        else:
            head = ("action", draw(texts), draw(names), draw(texts))
        form, action, resource_type, resource_id = head
        steps.append(
            ast.Step(
                action,
                resource_type,
                resource_id,
                form,  # type: ignore[arg-type]
                tuple(draw(fields)),
                draw(st.integers(1, 50)),
                expect,
                clock=draw(clock_moves(first=not steps)),
            )
        )
    return ast.Test(draw(texts), records, tuple(steps))


type_refs = st.recursive(
    names.map(ast.TypeRef), lambda inner: st.builds(ast.TypeRef, names, inner), max_leaves=3
)


@st.composite
def schemas(draw: st.DrawFn) -> ast.Schema:
    entities = []
    for kind in draw(st.lists(st.sampled_from(["agent", "user", "context", "resource"]))):
        resource_type = draw(names) if kind == "resource" else None
        attrs = draw(st.lists(st.builds(ast.AttrDecl, names, type_refs), max_size=4))
        entities.append(ast.EntityDecl(kind, resource_type, tuple(attrs)))  # type: ignore[arg-type]
    return ast.Schema(tuple(entities))


items = st.one_of(st.builds(ast.Let, names, exprs), rules(), policy_tests(), schemas())


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(exprs)
def test_any_expression_formats_to_text_that_parses_back_to_it(expr: ast.Expr) -> None:
    text = format_expr(expr)
    assert "\n" not in text
    again = parse_expression(text)
    assert strict(again) == strict(expr)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(items, max_size=4))
def test_any_file_built_in_code_formats_to_text_that_parses_back_to_it(
    built: list[ast.Item],
) -> None:
    module = ast.Module("<string>", "", tuple(built))
    text = format_module(module)
    assert_same_tree(text, module)
    assert format_source(text) == text


def _comment_spots(text: str) -> list[int]:
    """Offsets where a comment may go: whitespace outside strings and amounts of money."""
    strings = [m.span() for m in re.finditer(r'"(?:\\.|[^"\\\n])*"', text)]
    money = [m.span() for m in re.finditer(r"\d[ \t]+[A-Z]{3}\b", text)]
    return [
        offset
        for offset, char in enumerate(text)
        if char.isspace() and not any(start <= offset < end for start, end in strings + money)
    ]


BARE = re.sub(r'("(?:\\.|[^"\\\n])*")|#[^\n]*', lambda m: m.group(1) or "", RICH)
SPOTS = _comment_spots(BARE)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(SPOTS), st.booleans()), min_size=1, max_size=12, unique=True)
)
def test_comments_anywhere_survive_in_order_and_formatting_stays_stable(
    spots: list[tuple[int, bool]],
) -> None:
    text = BARE
    for number, (offset, own_line) in enumerate(sorted(spots, reverse=True)):
        comment = f"# c{len(spots) - number}"
        insert = f"\n{comment}\n" if own_line else f" {comment}\n"
        text = text[:offset] + insert + text[offset:]
    once = format_source(text)
    assert comment_texts(once) == comment_texts(text)
    assert_same_tree(once, parse(text))
    assert format_source(once) == once
