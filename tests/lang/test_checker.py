"""The static checker: what `tessera check` rejects, what it warns about, and where."""

from __future__ import annotations

import dataclasses

import pytest

from pdp.lang import ast
from pdp.lang.checker import CheckResult, check, inline_lets
from pdp.lang.errors import Diagnostic, Sources
from pdp.lang.parser import parse
from pdp.lang.schema import Type
from pdp.lang.values import Risk

SCHEMA = """\
schema {
  agent    { purpose: string, risk: risk, status: string, type: string, owner: string,
             scopes: set<string>, labels: map<string>, budget: money<USD> }
  user     { roles: set<string>, groups: set<string> }
  context  { amount: money, risk_score: number, ip: ip, fee: money<EUR>,
             age: duration, at: time }
  resource tool { server: string, annotations: set<string> }
  resource table { schema_name: string }
}
"""

# The tour's example from LANGUAGE.md, plus a policy test.
AGENTS = """\
package agents

let read_tools    = ["search", "read_file", "summarize", "sql.select"]
let payment_tools = ["payments.transfer", "payments.refund"]

forbid inactive_agents
  when not (agent has status) or agent.status != "active"

permit read_only
  call tool in read_tools
  when agent.risk < high

permit small_transfers
  call tool in payment_tools
  when agent.purpose == "payments" and agent.risk <= medium
   and context.amount <= 1000 USD
  limit sum(context.amount) <= 5000 USD per 24h per agent
  require consent("payments:transfer") if delegated

forbid risky_writes
  call tool like "*write*"
  when not (agent has risk) or agent.risk >= high

forbid deep_delegation
  when delegation.depth > 2

permit external_search
  call tool "web.search"
  when agent.type == "external"
  limit 60 calls per 1m per agent

permit analysts_read_orders
  action "db.read" on table "orders"
  when user.roles contains "analyst"

test "a delegated transfer without consent asks the user" {
  agent { id: "pay-bot", purpose: "payments", risk: low, status: "active" }
  user  { id: "alice" }
  call tool "payments.transfer" with { amount: 200 USD }
  expect deny requiring consent("payments:transfer")
}
"""


def run(*texts: str, schema: str | None = SCHEMA) -> CheckResult:
    """Check policy texts (p0.pol, p1.pol, ...) together with a schema file; the shared
    ``SCHEMA`` declares more than any one test reads, so its unused attributes are not
    reported (``check_all`` reports them)."""
    result = check_all(*texts, schema=schema)
    if schema is not SCHEMA:
        return result
    kept = tuple(d for d in result.diagnostics if not _unused_in_schema(d))
    return dataclasses.replace(result, diagnostics=kept)


def _unused_in_schema(d: Diagnostic) -> bool:
    return d.span.file == "schema.pol" and d.message.endswith("but no rule reads it")


def check_all(*texts: str, schema: str | None = SCHEMA) -> CheckResult:
    """Check policy texts together with a schema file, reporting everything."""
    sources = Sources()
    modules = []
    files = [("schema.pol", schema)] if schema is not None else []
    files += [(f"p{i}.pol", text) for i, text in enumerate(texts)]
    for path, text in files:
        sources.add(path, text)
        modules.append(parse(text, path))
    return check(modules, sources)


def one_error(result: CheckResult) -> Diagnostic:
    assert len(result.errors) == 1, [d.render() for d in result.diagnostics]
    return result.errors[0]


def one_warning(result: CheckResult) -> Diagnostic:
    assert not result.errors, [d.render() for d in result.errors]
    assert len(result.warnings) == 1, [d.render() for d in result.diagnostics]
    return result.warnings[0]


def at(diagnostic: Diagnostic) -> tuple[str, int, int, int]:
    """File, line, column and width of the caret."""
    span = diagnostic.span
    return span.file, span.line, span.column, span.end_column - span.column


def messages(result: CheckResult) -> list[str]:
    return [d.message for d in result.diagnostics]


# ------------------------------------------------------------------ a clean bundle


def test_the_language_tour_with_a_schema_is_clean() -> None:
    result = run(AGENTS)
    assert result.diagnostics == (), [d.render() for d in result.diagnostics]


def test_the_result_carries_the_schema() -> None:
    result = run(AGENTS)
    assert result.schema.agent["risk"] == Type("risk")
    assert result.schema.resources["table"]["schema_name"] == Type("string")


def test_a_bundle_without_schema_knows_only_builtin_attributes() -> None:
    clean = run('permit p when agent.id == "a" and delegation.depth < 2', schema=None)
    assert clean.diagnostics == ()
    error = one_error(run('permit p when agent.owner == "a"', schema=None))
    assert error.message == "agent has no attribute 'owner'"
    assert error.hint == "declare it in the schema: agent { owner: string }"


def test_what_the_directory_knows_of_everyone_is_built_in() -> None:
    clean = run(
        'permit p when user.email endswith "@example.com" and user.userName != ""\n'
        '  and user.displayName != "" and user.externalId != "" and user.emails != []\n'
        '  and user.roles intersects ["a"] and user.groups contains "g"\n'
        '  and agent.name == "bot" and agent.roles contains "r" and agent.groups == []',
        schema=None,
    )
    assert clean.diagnostics == ()
    error = one_error(run('permit p when user.department == "x"', schema=None))
    assert error.hint == "declare it in the schema: user { department: string }"


def test_a_built_in_attribute_is_declared_again_only_with_its_own_type() -> None:
    assert run("permit p", schema="schema { user { roles: set<string> } }").diagnostics == ()
    error = one_error(run("permit p", schema="schema { user { roles: list<string> } }"))
    assert error.message == "user.roles is built in as set<string>"


def test_schema_errors_are_reported() -> None:
    error = one_error(run("permit p", schema="schema { agent { risk: rsk } }"))
    assert error.message == "unknown type 'rsk'"
    assert error.span.file == "schema.pol"


def test_diagnostics_are_sorted_by_file_and_position() -> None:
    result = run("permit b when agent.x == 1\npermit a when agent.y == 1", "permit c when 1")
    keys = [(d.span.file, d.span.line, d.span.column) for d in result.diagnostics]
    assert keys == sorted(keys)
    assert [d.span.file for d in result.diagnostics] == ["p0.pol", "p0.pol", "p1.pol"]


def test_diagnostics_quote_their_line() -> None:
    error = one_error(run('permit p\n  when agent.ownr == "x"'))
    assert error.line_text == '  when agent.ownr == "x"'
    assert "^^^^^^^^^^" in error.render()


# ------------------------------------------------------------------ lets


def test_lets_are_inlined_through_other_lets() -> None:
    result = run('package p\nlet a = ["x"]\nlet b = a\nlet c = not (agent.id in b)')
    assert [d.message for d in result.diagnostics] == ["let c is never used"]
    assert result.lets[("p", "b")] == ast.ListExpr((ast.Literal_("x"),))
    assert result.lets[("p", "c")] == ast.Not(
        ast.Compare("in", ast.Path("agent", ("id",)), ast.ListExpr((ast.Literal_("x"),)))
    )


def test_inline_lets_replaces_known_names_and_keeps_unknown_ones() -> None:
    lets: dict[tuple[str, str], ast.Expr] = {("p", "lvl"): ast.Literal_(Risk.high)}
    expr = ast.BoolOp(
        "and",
        (
            ast.Compare("<", ast.Path("agent", ("risk",)), ast.Name("lvl")),
            ast.Name("other"),
        ),
    )
    inlined = inline_lets(expr, "p", lets)
    assert inlined == ast.BoolOp(
        "and",
        (
            ast.Compare("<", ast.Path("agent", ("risk",)), ast.Literal_(Risk.high)),
            ast.Name("other"),
        ),
    )
    assert inline_lets(expr, "q", lets) == expr


def test_lets_are_scoped_per_package() -> None:
    error = one_error(run('package a\nlet tools = ["x"]', "package b\npermit p call tool in tools"))
    assert error.message == "unknown name 'tools'"
    assert at(error) == ("p1.pol", 2, 23, 5)
    assert "defined in package a" in error.hint


def test_lets_of_one_package_are_shared_across_files() -> None:
    result = run('package a\nlet tools = ["x"]', "package a\npermit p call tool in tools")
    assert result.diagnostics == ()


def test_duplicate_let_points_at_the_second_name() -> None:
    error = one_error(run("package p\nlet x = 1\n\nlet   x = 2"))
    assert error.message == "let x is defined twice in package p"
    assert at(error) == ("p0.pol", 4, 7, 1)
    assert error.hint == "the first is at p0.pol:2; rename or remove one"


@pytest.mark.parametrize(
    ("name", "what"),
    [
        ("agent", "an attribute root"),
        ("action", "an attribute root"),
        ("medium", "a risk level"),
        ("true", "a boolean"),
        ("delegated", "a delegation flag"),
    ],
)
def test_a_let_cannot_take_a_reserved_name(name: str, what: str) -> None:
    error = one_error(run(f"let {name} = 1"))
    assert error.message == f"a let cannot be named '{name}': it is {what}"
    assert at(error) == ("p0.pol", 1, 5, len(name))


def test_a_cycle_between_lets_is_reported_once() -> None:
    result = run("let a = b\nlet b = c\nlet c = a and true")
    error = one_error(result)
    assert error.message == "let a refers to itself through b, c"
    assert at(error) == ("p0.pol", 1, 9, 1)


def test_a_let_referring_to_itself_is_a_cycle() -> None:
    error = one_error(run("let a = [a]"))
    assert error.message == "let a refers to itself"
    assert at(error) == ("p0.pol", 1, 10, 1)


def test_unknown_name_suggests_a_risk_level() -> None:
    error = one_error(run("permit p\n  when agent.risk < meduim"))
    assert error.message == "unknown name 'meduim'"
    assert error.hint == "did you mean 'medium'?"
    assert at(error) == ("p0.pol", 2, 21, 6)


def test_unknown_name_suggests_a_let_of_the_package() -> None:
    error = one_error(run('let read_tools = ["a"]\npermit p call tool in read_tool'))
    assert error.hint == "did you mean 'read_tools'?"


def test_unknown_name_suggests_a_root() -> None:
    error = one_error(run("permit p when agnt has owner"))
    assert error.message == "unknown name 'agnt'"
    assert error.hint == "did you mean 'agent'?"


def test_a_bare_word_suggests_quoting_it() -> None:
    error = one_error(run("permit p when agent.status == suspended"))
    assert "quote it" in error.hint and '"suspended"' in error.hint


# ------------------------------------------------------------------ rules


def test_duplicate_rule_names_point_at_the_second() -> None:
    result = run("package p\npermit r\n", "package p\n\nforbid r\n")
    error = one_error(result)
    assert error.message == "rule r is defined twice in package p"
    assert at(error) == ("p1.pol", 3, 8, 1)
    assert "p0.pol:2" in error.hint


def test_the_same_rule_name_in_two_packages_is_fine() -> None:
    assert run("package a\npermit r", "package b\npermit r").diagnostics == ()


# ------------------------------------------------------------------ paths


def test_unknown_attribute_suggests_the_close_one() -> None:
    error = one_error(run('permit p\n  when agent.ownr == "x"'))
    assert error.message == "agent has no attribute 'ownr'"
    assert error.hint == "did you mean 'agent.owner'?"
    assert at(error) == ("p0.pol", 2, 8, 10)


def test_unknown_attribute_without_a_close_one_says_how_to_declare_it() -> None:
    error = one_error(run("permit p when user.department == 1"))
    assert error.hint == "declare it in the schema: user { department: string }"


def test_unknown_resource_attribute_names_the_resource_type() -> None:
    error = one_error(run('permit p action "db.read" on table when resource.owner == "x"'))
    assert error.message == "resource table has no attribute 'owner'"
    assert error.hint == (
        "owner is declared under agent at schema.pol:2; move it to resource { … }, "
        "or read agent.owner"
    )
    error = one_error(run('permit p action "db.read" on table when resource.ownr == "x"'))
    assert error.hint == "declare it in the schema: resource table { ownr: string }"


def test_resource_attributes_follow_the_target() -> None:
    clean = run(
        'permit a action "db.read" on table when resource.schema_name == "x"\n'
        'permit b call tool "x" when resource.server == "s" and tool.name == "x"\n'
        'permit c when resource.server == "s" or resource.schema_name == "t"\n'
    )
    assert clean.diagnostics == ()
    error = one_error(run('permit p call tool "x" when resource.schema_name == "x"'))
    assert error.message == "resource tool has no attribute 'schema_name'"


def test_tool_attributes_in_a_rule_on_other_resources_are_an_error() -> None:
    error = one_error(run('permit p action "db.read" on table "o" when tool.server == "x"'))
    assert error.message == "this rule targets `table` resources; tool.* is never present here"
    assert at(error) == ("p0.pol", 1, 45, 11)


def test_tool_attributes_through_a_let_in_a_rule_on_other_resources_are_an_error() -> None:
    error = one_error(run('let mcp = tool.server == "x"\npermit p action "a" on table when mcp'))
    assert "let mcp reads tool.*" in error.message
    assert at(error) == ("p0.pol", 2, 35, 3)


def test_tool_attributes_are_fine_in_rules_without_a_resource_type() -> None:
    assert run('permit p action "x" when tool.server == "s"').diagnostics == ()


def test_a_whole_entity_is_not_a_value() -> None:
    error = one_error(run('permit p when agent == "x"'))
    assert error.message == "agent is the whole agent; compare an attribute such as agent.id"
    assert at(error) == ("p0.pol", 1, 15, 5)


def test_action_is_a_string_without_attributes() -> None:
    assert run('permit p when action == "db.read"').diagnostics == ()
    error = one_error(run('permit p when action.name == "x"'))
    assert error.message == "action is a string (the action's name); it has no attributes"


def test_map_attributes_take_keys_and_other_attributes_do_not() -> None:
    assert run('permit p when agent.labels["team"] == "x"').diagnostics == ()
    error = one_error(run('permit p when agent.owner.name == "x"'))
    assert error.message == "agent.owner is a string, not a map; it has no 'name'"


# ------------------------------------------------------------------ has


def test_has_asks_entities_and_maps_without_errors() -> None:
    result = run('permit p when agent has owner and agent.labels has "team" and user has roles')
    assert result.diagnostics == ()


def test_has_on_an_attribute_outside_the_schema_can_only_be_false() -> None:
    warning = one_warning(run("permit p when agent has ownr"))
    assert warning.message == "agent has ownr can only be false: ownr is not in the schema"
    assert warning.hint == "did you mean 'agent.owner'?"
    assert at(warning) == ("p0.pol", 1, 15, 14)


def test_has_on_a_plain_attribute_is_an_error() -> None:
    error = one_error(run('permit p when agent.owner has "x"'))
    assert error.message == "has asks whether a map holds a key; agent.owner is a string"
    assert at(error) == ("p0.pol", 1, 15, 11)


def test_has_on_delegation_is_an_error() -> None:
    error = one_error(run("permit p when delegation has depth"))
    assert error.hint == "delegation always has delegated, depth and chain"


# ------------------------------------------------------------------ comparisons


def test_risk_compared_with_a_string_suggests_the_word() -> None:
    error = one_error(run('permit p when agent.risk == "low"'))
    assert error.message == "cannot compare a risk level with a string"
    assert error.hint == "risk levels are words, not strings: write low without quotes"
    assert at(error) == ("p0.pol", 1, 15, 19)


def test_a_list_equals_a_set_of_the_same_items() -> None:
    result = run('permit p when user.roles == ["a"] and user.groups != [] and [] == []')
    assert [d.message for d in result.diagnostics] == [
        "[] == [] is always true: both sides are constants"
    ]


def test_ordering_strings_is_an_error_with_a_hint() -> None:
    error = one_error(run('permit p when agent.status < "b"'))
    assert error.message.startswith("< orders numbers, money, risk levels")
    assert error.message.endswith("this is a string")
    assert "like" in error.hint
    assert at(error) == ("p0.pol", 1, 15, 12)


@pytest.mark.parametrize(
    "condition",
    [
        "context.risk_score >= 0.5",
        "context.amount > 10 USD",
        "agent.risk <= medium",
        "context.age < 5m",
        'context.at < time("2026-01-31T09:00:00Z")',
    ],
)
def test_ordered_types_can_be_ordered(condition: str) -> None:
    assert run(f"permit p when {condition}").diagnostics == ()


def test_currency_mismatch_is_an_error() -> None:
    error = one_error(run("permit p when agent.budget > 10 EUR"))
    assert error.message == "currency mismatch: USD vs EUR"
    assert at(error) == ("p0.pol", 1, 15, 21)


def test_money_of_any_currency_compares_with_any_amount() -> None:
    assert run("permit p when context.amount > 10 EUR").diagnostics == ()


def test_money_compared_with_a_number_suggests_a_currency() -> None:
    error = one_error(run("permit p when agent.budget > 10"))
    assert error.message == "cannot compare money in USD with a number"
    assert error.hint == "write the amount with its currency: 1000 USD"


def test_in_looks_in_lists_sets_and_networks() -> None:
    clean = run(
        'permit p when agent.owner in ["a", "b"] and "x" in agent.scopes\n'
        '  and context.ip in ip("10.0.0.0/8")\n'
        '  and context.ip in [ip("10.0.0.0/8"), ip("192.168.0.0/16")]'
    )
    assert clean.diagnostics == ()


def test_in_a_string_suggests_contains() -> None:
    error = one_error(run('permit p when "pay" in agent.purpose'))
    assert error.message == "in needs a list or a set on its right; this is a string"
    assert "contains" in error.hint
    assert at(error) == ("p0.pol", 1, 24, 13)


def test_in_a_list_of_another_type_is_an_error() -> None:
    error = one_error(run("permit p when agent.risk in [1, 2]"))
    assert error.message == "cannot look for a risk level in a list<number>"


def test_contains_looks_in_collections_and_strings() -> None:
    clean = run('permit p when agent.scopes contains "a" and agent.purpose contains "pay"')
    assert clean.diagnostics == ()
    error = one_error(run("permit p when agent.scopes contains 1"))
    assert error.message == "cannot look for a number in a set<string>"
    assert error.hint == "the item must be a string"
    error = one_error(run("permit p when agent.risk contains low"))
    assert error.message == "contains looks in a list, a set or a string; this is a risk level"


def test_intersects_and_subset_of_compare_two_collections_of_one_type() -> None:
    result = run(
        'permit p when user.roles intersects ["admin", "editor"]\n'
        "  and user.groups subset of agent.scopes and [] subset of user.roles\n"
        "  and [context.amount] intersects [1 USD, 2 USD] and user.roles intersects []"
    )
    assert [d.message for d in result.diagnostics] == [
        "user.roles intersects [] is always false: nothing is in an empty list"
    ]


def test_intersects_with_one_value_says_to_use_a_list_or_contains() -> None:
    error = one_error(run('permit p when user.roles intersects "admin"'))
    assert error.message == "intersects compares two lists or sets; this is a string"
    assert error.hint == (
        'to ask for one member, write: user.roles contains "admin"; '
        'or use a list: user.roles intersects ["admin"]'
    )
    assert at(error) == ("p0.pol", 1, 37, 7)


def test_subset_of_with_one_value_says_to_use_a_list_or_in() -> None:
    error = one_error(run('permit p when "admin" subset of user.roles'))
    assert error.message == "subset of compares two lists or sets; this is a string"
    assert error.hint == (
        'to ask for one member, write: "admin" in user.roles; '
        'or use a list: ["admin"] subset of user.roles'
    )
    error = one_error(run('permit p when user.roles subset of "admin"'))
    assert error.hint == 'use a list: user.roles subset of ["admin"]'
    error = one_error(run('permit p when agent.purpose intersects "pay"'))
    assert error.hint == 'to compare two values, write: agent.purpose == "pay"'


def test_set_operators_need_members_of_one_type_and_currency() -> None:
    error = one_error(run("permit p when user.roles intersects [1, 2]"))
    assert error.message == "cannot compare a set<string> with a list<number>"
    assert at(error) == ("p0.pol", 1, 15, 28)
    error = one_error(run("permit p when [agent.budget] subset of [5 EUR]"))
    assert error.message == "currency mismatch: USD vs EUR"


def test_startswith_and_endswith_match_strings() -> None:
    clean = run('permit p when agent.owner startswith "fin" and agent.purpose endswith agent.type')
    assert clean.diagnostics == ()
    error = one_error(run('permit p when agent.scopes startswith "pay"'))
    assert error.message == "startswith matches strings; this is a set<string>"
    assert "contains" in error.hint
    assert at(error) == ("p0.pol", 1, 15, 12)
    error = one_error(run('permit p when agent.owner endswith ["a", "b"]'))
    assert error.message == "endswith matches strings; this is a list<string>"
    assert error.hint == "test one string at a time: agent.owner endswith ... or ..."
    error = one_error(run("permit p when agent.owner endswith 1"))
    assert error.message == "endswith matches strings; this is a number"


def test_like_needs_a_string_and_a_glob_that_is_a_string() -> None:
    assert run('let g = "pay*"\npermit p when agent.purpose like g').diagnostics == ()
    assert run("permit p when agent.purpose like agent.status").diagnostics == ()
    error = one_error(run("permit p when agent.purpose like agent.risk"))
    assert error.message == "like takes a glob; this is a risk level"
    assert error.hint == 'a glob is a string: "*write*", or an attribute that holds one'
    assert at(error) == ("p0.pol", 1, 34, 10)
    error = one_error(run('permit p when agent.risk like "l*"'))
    assert error.message == "like matches strings against a glob; this is a risk level"


def test_a_list_holds_one_type() -> None:
    error = one_error(run('permit p when agent.owner in ["a", 2]'))
    assert error.message == (
        "a list holds one type: the first item is a string, this one is a number"
    )
    assert at(error) == ("p0.pol", 1, 36, 1)


def test_a_list_holds_one_currency() -> None:
    error = one_error(run("permit p when context.amount in [1 USD, 2 EUR]"))
    assert error.message == "currency mismatch: USD vs EUR"
    assert at(error) == ("p0.pol", 1, 41, 5)


# ------------------------------------------------------------------ conditions


def test_a_condition_must_be_a_bool() -> None:
    error = one_error(run("permit p\n  when agent.status"))
    assert error.message == "a condition must be true or false; this is a string"
    assert error.hint == 'compare it: agent.status == "..."'
    assert at(error) == ("p0.pol", 2, 8, 12)


def test_unless_and_require_conditions_must_be_bools() -> None:
    result = run('permit p unless agent.scopes require consent("x") if context.risk_score')
    assert messages(result) == [
        "a condition must be true or false; this is a set<string>",
        "a condition must be true or false; this is a number",
    ]


def test_not_and_or_need_conditions() -> None:
    result = run("permit p when not agent.owner or delegated and 3")
    assert messages(result) == [
        "not applies to a condition (true or false); this is a string",
        "'and' joins conditions (true or false); this is a number",
    ]


def test_a_let_used_as_a_condition_is_typed_by_its_expression() -> None:
    assert run("let ok = agent.risk < high\npermit p when ok").diagnostics == ()
    error = one_error(run('let name = "x"\npermit p when name'))
    assert error.message == "a condition must be true or false; this is a string"


# ------------------------------------------------------------------ limits


def test_a_sum_limit_adds_money_or_numbers() -> None:
    clean = run(
        "permit a limit sum(context.amount) <= 5000 USD per 24h per user\n"
        "permit b limit sum(context.risk_score) <= 10 per 1h per agent+user"
    )
    assert clean.diagnostics == ()
    error = one_error(run("permit p limit sum(agent.owner) <= 5 per 1h"))
    assert error.message == "sum adds up money or numbers; this is a string"
    assert at(error) == ("p0.pol", 1, 20, 11)


def test_a_sum_limit_cap_has_the_kind_of_the_sum() -> None:
    error = one_error(run("permit p limit sum(context.amount) <= 5000 per 24h"))
    assert error.message == "the cap must be money like the sum; this is a number"
    assert error.hint == "write the cap with its currency: 5000 USD"
    assert at(error) == ("p0.pol", 1, 39, 4)


def test_a_sum_limit_cap_has_the_currency_of_the_sum() -> None:
    error = one_error(run("permit p limit sum(context.fee) <= 5000 USD per 24h"))
    assert error.message == "currency mismatch: EUR vs USD"
    assert at(error) == ("p0.pol", 1, 36, 8)


def test_a_count_limit_needs_nothing_more() -> None:
    assert run("permit p limit 60 calls per 1m per user").diagnostics == ()


def test_a_limit_per_owner_needs_the_owner_declared_a_string() -> None:
    assert run("permit p limit 60 calls per 1m per owner").diagnostics == ()
    schema = "schema { agent { owner: number } }"
    error = one_error(run("permit p limit 60 calls per 1m per owner", schema=schema))
    assert error.message == (
        "limit per owner counts by agent.owner, a string; the schema declares a number"
    )
    assert error.hint == "declare it: schema { agent { owner: string } }"
    error = one_error(run("permit p\n  limit 5 calls per 1h per owner", schema=None))
    assert error.message.endswith("the schema does not declare it")
    assert at(error) == ("p0.pol", 2, 3, 30)  # the whole limit


# ------------------------------------------------------------------ targets


def test_a_target_let_must_be_a_list_of_strings() -> None:
    error = one_error(run("let n = [1, 2]\npermit p call tool in n"))
    assert error.message == "let n is not a list of strings, so it cannot be a target"
    assert at(error) == ("p0.pol", 2, 23, 1)


def test_a_target_let_may_be_named_bare_or_after_in() -> None:
    text = 'let t = ["a", "b"]\npermit p call tool t\npermit q action in t on table "x"'
    assert run(text).diagnostics == ()


def test_a_target_list_holds_strings() -> None:
    error = one_error(run('permit p call tool ["a", low]'))
    assert error.message == "a target lists names as strings; this is a risk level"
    assert at(error) == ("p0.pol", 1, 26, 3)


def test_an_unknown_target_let_is_an_error() -> None:
    error = one_error(run('let read_tools = ["a"]\npermit p call tool in read_tool'))
    assert error.message == "unknown name 'read_tool'"


def test_an_empty_target_list_can_never_apply() -> None:
    warning = one_warning(run("permit p call tool []"))
    assert warning.message == "permit p can never apply: its target list is empty"


# ------------------------------------------------------------------ rules that never apply


def test_a_constant_false_when_can_never_apply() -> None:
    warning = one_warning(run('let mode = "strict"\npermit p\n  when mode == "lenient"'))
    assert warning.message == "permit p can never apply: its when is always false"
    assert at(warning) == ("p0.pol", 3, 8, 17)


def test_a_constant_true_unless_can_never_apply() -> None:
    warning = one_warning(run("forbid f unless not (1 > 2)"))
    assert warning.message == "forbid f can never apply: its unless is always true"


@pytest.mark.parametrize(
    "condition",
    [
        "false",
        "not true",
        "true and false",
        'agent.risk < high and "a" in ["b", "c"]',
        'false or ["a"] contains "b"',
        'not ("pay.x" like "pay.*")',
        "1 USD > 2 USD",
    ],
)
def test_constant_folding_sees_the_obvious_cases(condition: str) -> None:
    warning = one_warning(run(f"permit p when {condition}"))
    assert "can never apply" in warning.message


@pytest.mark.parametrize(
    "condition",
    ["agent.risk < high", 'false or agent.owner == "x"', "delegated", "true", '"a" in ["a"]'],
)
def test_conditions_that_depend_on_the_request_are_not_folded(condition: str) -> None:
    assert run(f"permit p when {condition}").diagnostics == ()


def test_a_permit_overridden_by_an_unconditional_forbid_on_its_target() -> None:
    warning = one_warning(
        run('forbid no_shell call tool "shell"\n\npermit shell call tool "shell"')
    )
    assert warning.message == (
        "permit shell can never apply: forbid no_shell denies the same target unconditionally"
    )
    assert at(warning) == ("p0.pol", 3, 8, 5)
    assert "p0.pol:1" in warning.hint


def test_a_forbid_without_target_or_condition_overrides_every_permit() -> None:
    result = run('forbid everything\npermit a call tool "x"\npermit b action "y"')
    assert not result.errors
    assert [w.message for w in result.warnings] == [
        "permit a can never apply: forbid everything denies every request unconditionally",
        "permit b can never apply: forbid everything denies every request unconditionally",
    ]


def test_targets_are_compared_after_inlining_lets() -> None:
    result = run(
        'package a\nlet t = ["x"]\nforbid f call tool in t',
        'package b\nlet u = ["x"]\npermit p call tool in u',
    )
    assert one_warning(result).message.startswith("permit p can never apply: forbid a.f")


def test_a_conditional_forbid_or_another_target_overrides_nothing() -> None:
    result = run(
        'forbid f call tool "x" when delegation.depth > 1\n'
        'forbid g call tool "y"\n'
        'forbid h call tool "x" unless delegated\n'
        'permit p call tool "x"'
    )
    assert result.diagnostics == ()


def test_a_forbid_with_a_constant_true_when_is_unconditional() -> None:
    result = run('forbid f call tool "x" when 1 < 2\npermit p call tool "x"')
    assert one_warning(result).message.startswith("permit p can never apply: forbid f")


# ------------------------------------------------------------------ policy tests


def test_test_records_are_typed_against_the_schema() -> None:
    result = run(
        'test "t" {\n'
        '  agent { id: "a", risk: "low", scopes: ["x"], budget: 3 EUR }\n'
        '  call tool "x" expect deny\n'
        "}"
    )
    assert messages(result) == [
        "agent.risk is a risk level; this is a string",
        "currency mismatch: USD vs EUR",
    ]
    assert at(result.errors[0]) == ("p0.pol", 2, 26, 5)


def test_test_records_reject_unknown_attributes() -> None:
    error = one_error(
        run('test "t" {\n  agent { id: "a", ownr: "b" }\n  call tool "x" expect deny\n}')
    )
    assert error.message == "agent has no attribute 'ownr'"
    assert error.hint == "did you mean 'agent.owner'?"
    assert at(error) == ("p0.pol", 2, 20, 4)


def test_test_values_must_be_constants() -> None:
    error = one_error(
        run('test "t" {\n  agent { id: "a", owner: agent.id }\n  call tool "x" expect deny\n}')
    )
    assert error.message == "a test gives values, not expressions"
    assert at(error) == ("p0.pol", 2, 27, 8)


def test_test_values_may_be_lets_of_constants() -> None:
    text = 'let bot = "pay-bot"\ntest "t" {\n  agent { id: bot }\n  call tool "x" expect deny\n}'
    assert run(text).diagnostics == ()


def test_test_ips_and_times_may_be_written_as_strings_like_request_json() -> None:
    ok = (
        'test "t" {\n  agent { id: "a" }\n'
        '  context { ip: "10.1.2.3", at: "2026-01-31T09:00:00Z" }\n'
    )
    assert run(ok + '  call tool "x" expect deny\n}').diagnostics == ()
    bad = 'test "t" {\n  agent { id: "a" }\n  context { ip: "10.1.2" }\n'
    error = one_error(run(bad + '  call tool "x" expect deny\n}'))
    assert error.message == "invalid IP address '10.1.2'"
    assert at(error) == ("p0.pol", 3, 17, 8)


def test_a_test_needs_an_agent_with_an_id() -> None:
    result = run('test "t" {\n  user { roles: ["a"] }\n  call tool "x" expect deny\n}')
    assert messages(result) == ['test "t" has no agent', "the user block needs an id"]
    assert at(result.errors[0]) == ("p0.pol", 1, 1, 4)
    assert at(result.errors[1]) == ("p0.pol", 2, 3, 4)
    error = one_error(run('test "t" {\n  agent { risk: low }\n  call tool "x" expect deny\n}'))
    assert error.message == "the agent block needs an id"


def test_a_test_delegation_sets_only_the_chain() -> None:
    ok = 'test "t" {\n  agent { id: "a" }\n  delegation { chain: ["a", "b"] }\n'
    assert run(ok + '  call tool "x" expect deny\n}').diagnostics == ()
    bad = 'test "t" {\n  agent { id: "a" }\n  delegation { depth: 2 }\n'
    error = one_error(run(bad + '  call tool "x" expect deny\n}'))
    assert error.message == "delegation.depth cannot be set in a test"


def test_test_step_context_is_typed_against_the_schema() -> None:
    result = run(
        'test "t" {\n  agent { id: "a" }\n'
        '  call tool "x" with { amount: 200 USD, risk_score: "high", bogus: 1 } expect deny\n'
        "}"
    )
    assert messages(result) == [
        "context.risk_score is a number; this is a string",
        "context has no attribute 'bogus'",
    ]


def test_expect_by_must_name_an_existing_rule() -> None:
    result = run(
        'package p\npermit read_only\ntest "t" {\n  agent { id: "a" }\n'
        '  call tool "x" expect allow by read_only, raed_only\n}'
    )
    error = one_error(result)
    assert error.message == "expect names rule raed_only, which does not exist"
    assert error.hint == "did you mean 'read_only'?"
    assert at(error) == ("p0.pol", 5, 44, 9)


def test_expect_by_looks_in_the_test_package_only() -> None:
    result = run(
        "package a\npermit r",
        'package b\ntest "t" {\n  agent { id: "x" }\n  call tool "x" expect allow by r\n}',
    )
    assert one_error(result).message == "expect names rule r, which does not exist"


# ------------------------------------------------------------------ root causes first


def test_an_unknown_type_comes_first_with_the_reads_it_breaks_folded() -> None:
    result = check_all(
        'forbid f when agent.status != "active"\npermit p when agent.status == "active"',
        'test "t" {\n  agent { id: "a", status: "active" }\n  call tool "x" expect deny\n}',
        schema="schema { agent { status: strng } }",
    )
    assert len(result.errors) == 1
    root = result.errors[0]
    assert root.message == "unknown type 'strng'"
    assert [str(d.span) for d in root.follow_ons] == ["p0.pol:1:15", "p0.pol:2:15", "p1.pol:2:20"]
    assert {d.message for d in root.follow_ons} == {"agent has no attribute 'status'"}
    assert root.render().endswith(
        "\n  … and 3 more caused by this: p0.pol:1:15, p0.pol:2:15, p1.pol:2:20"
    )


def test_two_roots_of_one_cause_fold_each_follow_on_into_the_first_only() -> None:
    result = check_all(
        "schema { agent { x: strng } }",
        "schema { agent { x: strng } }",
        'permit p when agent.x == "1"\npermit q when agent.x == "2"',
        schema=None,
    )
    assert [(str(d.span), d.message) for d in result.errors] == [
        ("p0.pol:1:21", "unknown type 'strng'"),
        ("p1.pol:1:21", "unknown type 'strng'"),
    ]
    first, second = result.errors
    assert [str(d.span) for d in first.follow_ons] == ["p2.pol:1:15", "p2.pol:2:15"]
    assert second.follow_ons == ()


def test_an_attribute_under_the_wrong_entity_is_reported_once_with_its_declaration() -> None:
    result = check_all(
        "permit a when agent.risk < high\npermit b when agent.risk <= medium\n"
        "permit c when agent.risk == low",
        schema="schema {\n  user { risk: risk }\n}",
    )
    (error,) = result.errors
    assert error.message == "agent has no attribute 'risk'"
    assert error.hint == (
        "risk is declared under user at schema.pol:2; move it to agent { … }, or read user.risk"
    )
    assert at(error) == ("p0.pol", 1, 15, 10)
    assert [str(d.span) for d in error.follow_ons] == ["p0.pol:2:15", "p0.pol:3:15"]


def test_an_undefined_let_is_reported_at_its_first_use_only() -> None:
    (error,) = run(
        "permit a call tool in read_tols\npermit b call tool in read_tols\n"
        "permit c when agent.id in read_tols"
    ).errors
    assert error.message == "unknown name 'read_tols'"
    assert at(error) == ("p0.pol", 1, 23, 9)
    assert len(error.follow_ons) == 2


def test_roots_with_follow_ons_come_before_other_errors_whatever_the_file() -> None:
    result = check_all(
        'permit a when agent.purpose == 1\npermit b when agent.status == "x"\n'
        'permit c when agent.status == "y"',
        schema="schema { agent { purpose: string, status: strng } }",
    )
    assert [(d.span.file, d.message) for d in result.errors] == [
        ("schema.pol", "unknown type 'strng'"),
        ("p0.pol", "cannot compare a string with a number"),
    ]


def test_a_misspelled_resource_type_folds_its_reads_and_suggests_the_type() -> None:
    (error,) = run(
        'permit a action "db.read" on tabel when resource.schema_name == "x"\n'
        'permit b action "db.write" on tabel when resource.schema_name == "y"'
    ).errors
    assert error.message == "resource tabel has no attribute 'schema_name'"
    assert error.hint == "no schema block declares resource tabel: did you mean 'table'?"
    assert len(error.follow_ons) == 1


# ------------------------------------------------------------------ comparisons with one answer


@pytest.mark.parametrize(
    ("condition", "message"),
    [
        ("agent.risk > critical", "always false: risk levels go from low to critical"),
        ("agent.risk < low", "always false: risk levels go from low to critical"),
        ("critical < agent.risk", "always false: risk levels go from low to critical"),
        ("agent.risk >= low", "always true: risk levels go from low to critical"),
        ("agent.risk <= critical", "always true: risk levels go from low to critical"),
        ("delegation.depth < 0", "always false: delegation.depth counts actors: 0 or more"),
        ("delegation.depth >= 0", "always true: delegation.depth counts actors: 0 or more"),
        ("agent.id in []", "always false: nothing is in an empty list"),
        ('subject.type == "servce"', "always false: the subject types are agent, user, identity"),
        ('subject.type != "servce"', "always true: the subject types are agent, user, identity"),
    ],
)
def test_a_comparison_that_cannot_change_is_a_warning(condition: str, message: str) -> None:
    warning = one_warning(run(f'permit p\n  call tool "x"\n  when agent.id == "a" and {condition}'))
    assert warning.message == f"{condition} is {message}"
    assert at(warning)[:3] == ("p0.pol", 3, 28)


def test_a_comparison_of_two_constants_is_a_warning() -> None:
    warning = one_warning(run('permit p when agent.id == "a" or "strict" == "x"'))
    assert warning.message == '"strict" == "x" is always false: both sides are constants'


@pytest.mark.parametrize(
    "policy",
    [
        "let suspended = []\nforbid blocked when agent.id in suspended",
        "let strict = true\npermit p when strict == true and agent.risk > high",
        'let mode = "strict"\npermit p when agent.id == "a" or mode == "x"',
        "let none = []\nlet blocked = none\nforbid b when none contains agent.id or "
        "agent.id in blocked",
        'let on = true\nlet check = on == true\npermit p when check and agent.id == "a"',
    ],
)
def test_constants_a_let_gives_are_configuration_not_warnings(policy: str) -> None:
    assert list(run(policy).diagnostics) == []


def test_constants_written_in_a_let_are_warnings_where_they_are_written() -> None:
    warning = one_warning(run('let check = true == true\npermit p when check and agent.id == "a"'))
    assert warning.message == "true == true is always true: both sides are constants"
    assert at(warning)[:3] == ("p0.pol", 1, 13)


def test_a_let_outside_a_range_is_still_a_warning() -> None:
    warning = one_warning(run("let top = critical\npermit p when agent.risk > top"))
    assert (
        warning.message == "agent.risk > top is always false: risk levels go from low to critical"
    )


def test_a_comparison_on_the_wrong_resource_type_is_a_warning() -> None:
    warning = one_warning(run('permit p action "db.read" on table when resource.type == "tool"'))
    assert warning.message == (
        'resource.type == "tool" is always false: this rule\'s target is on table resources'
    )


@pytest.mark.parametrize(
    "condition",
    [
        "agent.risk > high",
        "agent.risk >= medium",
        "delegation.depth > 0",
        'subject.type == "agent"',
        'agent.id in ["a"]',
        'resource.type == "tool"',
    ],
)
def test_comparisons_a_request_can_change_are_fine(condition: str) -> None:
    result = run(f"permit p when {condition}\npermit q when agent.risk > critical")
    assert [w.message for w in result.diagnostics] == [
        "agent.risk > critical is always false: risk levels go from low to critical"
    ]


# ------------------------------------------------------------------ forbids on absent attributes


def test_a_forbid_on_an_attribute_a_request_may_lack_is_a_warning() -> None:
    warning = one_warning(run('forbid inactive\n  when agent.status != "active"'))
    assert warning.message == (
        "forbid inactive denies every request that lacks agent.status: reading an absent "
        "attribute fails, and a forbid that fails denies"
    )
    assert warning.hint == (
        'if that is meant, say so: not (agent has status) or agent.status != "active"; '
        'if not, guard it: agent has status and agent.status != "active"'
    )
    assert at(warning) == ("p0.pol", 2, 8, 12)


@pytest.mark.parametrize(
    "rule",
    [
        'forbid f when not (agent has status) or agent.status != "active"',
        'forbid f when agent has status and agent.status != "active"',
        "forbid f when agent has risk and (agent.risk > high or delegation.depth > 1)",
        'forbid f when agent has status unless agent.status == "active"',
        "forbid f when delegation.depth > 2",
        'forbid f when agent.id == "bot" or subject.id == "x" or resource.type == "t"',
        'forbid f when action == "x" and resource.id == "y" and subject.type == "user"',
        'forbid f call tool "x" when tool.name like "*rm*"',
        'forbid f when delegated and user.id == "mallory"',
        'forbid f when subject.type == "user" and user.id == "mallory"',
        'forbid f when "identity" == subject.type and user.id == "mallory"',
        'forbid f when subject.type in ["user", "identity"] and user.id == "mallory"',
        'forbid f when subject.type != "user" or user.id == "mallory"',
        'forbid f when subject.type == "user" unless user.id == "alice"',
        'let persons = ["user", "identity"]\nforbid f when subject.type in persons and '
        'user.id == "x"',
        'forbid f when agent.labels has "team" and agent.labels.team == "x"',
        'permit p when agent.status == "active"',
    ],
)
def test_reads_known_to_be_present_are_fine_in_a_forbid(rule: str) -> None:
    result = run(f'{rule}\nforbid unguarded when agent.owner == "x"')
    assert [w.message.split(":")[0] for w in result.diagnostics] == [
        "forbid unguarded denies every request that lacks agent.owner"
    ]


@pytest.mark.parametrize(
    ("rule", "attribute"),
    [
        ('forbid f when tool.name like "*rm*"', "tool.name"),
        ('forbid f when user.id == "mallory"', "user.id"),
        ('forbid f when subject.type == "user" or user.id == "mallory"', "user.id"),
        ('forbid f when subject.type in ["user", "service"] and user.id == "m"', "user.id"),
        ('forbid f when subject.type == "user" and user.email == "m"', "user.email"),
        ('forbid f when agent has risk or agent.status == "x"', "agent.status"),
        ('forbid f when agent.risk > high unless agent.status == "x"', "agent.risk"),
        ("forbid f when context.amount > 100 USD", "context.amount"),
    ],
)
def test_unguarded_reads_in_a_forbid_are_warnings(rule: str, attribute: str) -> None:
    warnings = run(rule).warnings
    assert warnings
    assert f"lacks {attribute}:" in warnings[0].message


# ------------------------------------------------------------------ shadowed permits


@pytest.mark.parametrize(
    ("forbid", "permit"),
    [
        ['forbid no_fs call tool like "fs.*"', 'permit p call tool "fs.write"'],
        ['forbid no_fs call tool "fs.*"', 'permit p call tool like "fs.write*"'],
        ['forbid no_fs call tool ["a", "fs.*"]', 'permit p call tool ["fs.x", "a"]'],
        ['forbid no_fs action "db.*"', 'permit p action "db.read" on table "orders"'],
        ['forbid no_fs action "tool.call" on tool', 'permit p call tool "x"'],
    ],
)
def test_a_permit_under_an_unconditional_forbid_with_a_wider_target_never_applies(
    forbid: str, permit: str
) -> None:
    warning = one_warning(run(f"{forbid}\n{permit}"))
    assert warning.message == (
        "permit p can never apply: forbid no_fs denies a target covering this one unconditionally"
    )


@pytest.mark.parametrize(
    ("forbid", "permit"),
    [
        ['forbid f call tool "fs.write*"', 'permit p call tool like "fs.*"'],
        ['forbid f call tool ["a"]', 'permit p call tool ["a", "b"]'],
        ['forbid f action "db.read" on table "x"', 'permit p action "db.read" on table'],
        ['forbid f action "db.*" on view', 'permit p action "db.read" on table'],
    ],
)
def test_a_forbid_with_a_narrower_target_shadows_nothing(forbid: str, permit: str) -> None:
    result = run(f'{forbid}\n{permit}\nforbid w action "x.*"\npermit q action "x.y"')
    assert [w.message for w in result.diagnostics] == [
        "permit q can never apply: forbid w denies a target covering this one unconditionally"
    ]


# ------------------------------------------------------------------ unused declarations


def test_an_unused_let_is_a_warning_at_its_name() -> None:
    warning = one_warning(run('let write_tools = ["fs.write"]\npermit p call tool "x"'))
    assert warning.message == "let write_tools is never used"
    assert warning.hint == "use it in a rule or a test, or remove it"
    assert at(warning) == ("p0.pol", 1, 5, 11)


def test_a_let_used_by_a_test_or_another_let_is_used() -> None:
    result = run(
        'let who = "a"\nlet names = [who]\npermit p call tool names\n'
        'let amount = 5 USD\ntest "t" {\n  agent { id: who }\n'
        '  call tool "x" with { amount: amount } expect deny\n}\nlet spare = 1'
    )
    assert [w.message for w in result.diagnostics] == ["let spare is never used"]


def test_a_schema_attribute_no_rule_reads_is_a_warning_at_its_declaration() -> None:
    result = check_all(
        'permit p when context.amount < 5 USD and resource.owner == "x" and agent.risk < high\n'
        'test "t" {\n  agent { id: "a" }\n  context { amout: 1 USD }\n'
        '  call tool "x" expect deny\n}',
        schema=(
            "schema {\n  agent { risk: risk, purpose: string }\n"
            "  context { amount: money, amout: money }\n"
            "  resource doc { owner: string, title: string }\n"
            "  resource tool { server: string }\n}"
        ),
    )
    assert not result.errors
    assert [(w.message, at(w)) for w in result.warnings] == [
        ("context.amout is declared but no rule reads it", ("schema.pol", 3, 28, 5)),
        ("resource.title is declared but no rule reads it", ("schema.pol", 4, 33, 5)),
    ]
