"""The set and string operators: ``intersects``, ``subset of``, ``startswith``, ``endswith``.

Each case is decided three ways that must agree: by the compiled engine, by the reference
interpreter (what ``explain`` shows) and, with every operand a literal, by constant folding.
"""

from __future__ import annotations

from typing import Any

import pytest

from pdp.engine import Engine
from pdp.explain import render_explanation
from pdp.interpreter import Interpreter, _Evaluator
from pdp.lang import ast
from pdp.lang.compiler import compile_rules
from pdp.lang.parser import parse_expression
from pdp.lang.rewrite import fold
from pdp.lang.runtime import EvalError
from tests.conftest import bundle_of, request

SCHEMA = """
schema {
  agent { purpose: string, scopes: set<string>, tags: list<string>, sizes: list<number> }
  user { roles: set<string>, email: string }
}
"""

USER = {"id": "alice", "roles": ["analyst", "viewer"], "email": "alice@example.com"}
AGENT = {
    "id": "bot",
    "purpose": "payments",
    "scopes": ["read", "write"],
    "tags": ["a", "b", "a"],
    "sizes": [1, 2.5],
}


def both(condition: str, **data: Any) -> tuple[bool, bool]:
    """Whether ``permit p when CONDITION`` allows, by the engine and by the interpreter."""
    bundle = bundle_of(f"permit p when {condition}", schema=SCHEMA)
    data.setdefault("agent", AGENT)
    data.setdefault("user", USER)
    data.setdefault("tool", "search")
    req = request(bundle, **data)
    engine = Engine(bundle, clock=lambda: 0.0)
    interpreter = Interpreter(bundle.rules, bundle.lets, bundle.version, clock=lambda: 0.0)
    return engine.decide(req).allow, interpreter.decide(req).allow


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ('user.roles intersects ["admin", "analyst"]', True),
        ('user.roles intersects ["admin", "editor"]', False),
        ("user.roles intersects []", False),
        ("user.roles intersects agent.scopes", False),
        ('agent.tags intersects ["b"]', True),  # a list and a list
        ('["read"] intersects agent.scopes', True),
        ("agent.sizes intersects [2.5, 7]", True),
        ('["analyst"] subset of user.roles', True),
        ('["analyst", "admin"] subset of user.roles', False),
        ("[] subset of user.roles", True),  # the empty set is a subset of anything
        ('user.roles subset of ["analyst", "viewer", "admin"]', True),
        ('agent.tags subset of ["a", "b"]', True),  # repeated members count once
        ("agent.scopes subset of agent.scopes", True),
        ('user.email endswith "@example.com"', True),
        ('user.email endswith "@example.org"', False),
        ('user.email startswith "alice@"', True),
        ('user.email startswith ""', True),
        ('agent.purpose startswith "pay" and agent.purpose endswith "ments"', True),
        ('"pay" startswith agent.purpose', False),
        ("user.email startswith user.email", True),
    ],
)
def test_engine_and_interpreter_agree_on_each_operator(condition: str, expected: bool) -> None:
    assert both(condition) == (expected, expected)


def test_an_operand_that_is_absent_is_an_error_in_both() -> None:
    bundle = bundle_of('permit p when user.email endswith "@example.com"', schema=SCHEMA)
    req = request(bundle, agent=AGENT, user={"id": "bob"}, tool="search")
    engine = Engine(bundle, clock=lambda: 0.0).decide(req)
    interpreter = Interpreter(bundle.rules, bundle.lets, clock=lambda: 0.0).decide(req)
    assert not engine.allow and not interpreter.allow
    assert [e.message for e in engine.errors] == ["user.email is absent from the request"]
    assert [e.message for e in interpreter.errors] == [e.message for e in engine.errors]


def test_explain_shows_the_operator_that_failed() -> None:
    bundle = bundle_of(
        'permit p when user.email endswith "@example.com" and user.roles intersects ["admin"]',
        schema=SCHEMA,
    )
    req = request(bundle, agent=AGENT, user=USER, tool="search")
    interpreter = Interpreter(bundle.rules, bundle.lets, clock=lambda: 0.0)
    text = render_explanation(interpreter.explain(req))
    assert 'because user.roles intersects ["admin"]  →  false' in text
    assert 'where user.roles = ["analyst", "viewer"]' in text


@pytest.mark.parametrize(
    ("expression", "value"),
    [
        ('["a", "b"] intersects ["b", "c"]', True),
        ('["a"] intersects ["b"]', False),
        ('["a"] subset of ["a", "b"]', True),
        ('["a", "c"] subset of ["a", "b"]', False),
        ('"payments" startswith "pay"', True),
        ('"payments" endswith "pay"', False),
    ],
)
def test_literal_operands_fold_to_the_same_value(expression: str, value: bool) -> None:
    assert fold(parse_expression(expression)) == ast.Literal_(value)


@pytest.mark.parametrize(
    "expression",
    [
        '"abc" intersects ["a"]',  # a string is no collection, never a set of characters
        '["a"] subset of "abc"',
        '["a"] startswith "a"',
        '"abc" endswith ["c"]',  # Python's endswith would take a tuple of suffixes
    ],
)
def test_operands_of_the_wrong_type_are_an_error_never_a_python_meaning(expression: str) -> None:
    """The checker refuses these; were one to run, both evaluators fail alike, and folding
    keeps it for them to fail on."""
    expr = fold(parse_expression(expression))
    assert isinstance(expr, ast.Compare)
    req = request(bundle_of("", schema=SCHEMA), tool="search")
    (compiled,) = compile_rules([ast.Rule("permit", "p", None, expr, None, (), ())], {})
    assert compiled.test is not None
    with pytest.raises(EvalError) as raised:
        compiled.test(req)
    assert f"'{expr.op}' needs" in str(raised.value)
    assert _Evaluator(req, {}, "").eval(expr).error == str(raised.value)
