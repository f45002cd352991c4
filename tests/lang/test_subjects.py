"""The language's subjects: ``subject.type`` and ``subject.id`` built in, subject types a
schema declares (``subject TYPE { … }``), policy tests about a person, and requests
without an agent evaluated alike by the compiled rules and the interpreter."""

from __future__ import annotations

import pytest

from pdp.engine import Engine
from pdp.interpreter import Interpreter
from pdp.lang.errors import PolicyError
from pdp.lang.formatter import format_source
from pdp.lang.parser import parse
from pdp.lang.schema import STRING, Type
from pdp.loader import load_texts
from pdp.policytest import run_tests
from pdp.request import request_from_json
from tests.lang.test_checker import messages, one_error, run

SUBJECTS = """\
schema {
  subject service { team: string, tier: number }
  subject device { owner: string }
}
"""


def test_subject_type_and_id_are_built_in() -> None:
    result = run('permit p when subject.type == "user" and subject.id like "*@example.com"')
    assert result.diagnostics == ()
    assert result.schema.subject_attrs() == {"type": STRING, "id": STRING}


def test_a_schema_declares_subject_types_and_their_attributes() -> None:
    result = run(
        'permit p when subject.team == "ops" and subject has owner and subject.tier > 1',
        schema=SUBJECTS,
    )
    assert result.diagnostics == ()
    assert result.schema.subjects == {
        "service": {"team": STRING, "tier": Type("number")},
        "device": {"owner": STRING},
    }
    assert result.schema.subject_types() == ("agent", "user", "identity", "device", "service")


def test_an_undeclared_subject_attribute_is_an_error_with_a_hint() -> None:
    error = one_error(run('permit p when subject.team == "ops"', schema=None))
    assert error.message == "subject has no attribute 'team'"
    assert error.hint == "declare it in the schema: subject TYPE { team: string }"


@pytest.mark.parametrize(
    ("name", "block"), [("agent", "agent"), ("user", "user"), ("identity", "user")]
)
def test_a_subject_block_cannot_name_a_built_in_type(name: str, block: str) -> None:
    error = one_error(run("permit p", schema=f"schema {{ subject {name} {{ x: string }} }}"))
    assert error.message == f"subject {name} is built in: its attributes are {block}.*"


def test_a_subject_block_needs_its_type_name() -> None:
    with pytest.raises(PolicyError) as raised:
        parse("schema { subject { team: string } }", "schema.pol")
    assert "a subject block needs a type name" in str(raised.value)


def test_a_subject_block_formats_as_written() -> None:
    assert format_source(SUBJECTS, "schema.pol") == SUBJECTS


def test_a_policy_test_may_be_about_a_person_or_a_declared_subject() -> None:
    policy = """
package p
permit analysts action "db.read" on table "orders" when user.roles contains "analyst"
permit ops action "db.read" on table "metrics" when subject.team == "ops"
forbid risky action "db.read" on table when agent.risk > low

test "an analyst reads orders" {
  subject { type: "user", id: "ana@example.com" }
  user { roles: ["analyst"] }
  action "db.read" on table "orders" expect deny by risky
}

test "an ops service reads metrics" {
  subject { type: "service", id: "billing", team: "ops" }
  action "db.read" on table "metrics" expect deny by risky
}
"""
    bundle = load_texts(
        {
            "schema.pol": SUBJECTS + "schema { user { roles: set<string> } agent { risk: risk } }",
            "p.pol": policy,
        }
    ).bundle
    assert [(r.test.name, r.failure) for r in run_tests(bundle)] == [
        ("an analyst reads orders", None),
        ("an ops service reads metrics", None),
    ]


def test_a_policy_test_names_an_agent_or_a_subject_with_a_type_and_an_id() -> None:
    both = run(
        'test "t" {\n  agent { id: "a" }\n  subject { type: "user", id: "u" }\n'
        '  call tool "x" expect deny\n}'
    )
    assert messages(both) == ['test "t" names an agent and a subject']
    untyped = run('test "t" {\n  subject { id: "u" }\n  call tool "x" expect deny\n}')
    assert messages(untyped) == ["the subject block needs a type"]
    person = run(
        'test "t" {\n  subject { type: "user", id: "u" }\n  user { }\n'
        '  call tool "x" expect deny\n}'
    )
    assert person.diagnostics == ()  # the user block of a person takes the subject's id


POLICY = """
package p
permit has_agent action "a" on thing when agent has risk
permit no_agent action "a" on thing unless agent has risk
permit alone action "b" on thing when autonomous
permit for_someone action "b" on thing when delegated
permit named action "c" on thing when subject.id == "ana"
"""


@pytest.mark.parametrize(
    ("action", "decided_by"),
    [("a", ("p.no_agent",)), ("b", ()), ("c", ("p.named",))],
)
def test_compiled_rules_and_the_interpreter_agree_on_a_person(
    action: str, decided_by: tuple[str, ...]
) -> None:
    bundle = load_texts({"schema.pol": "schema { agent { risk: risk } }", "p.pol": POLICY}).bundle
    request = request_from_json(
        {
            "subject": {"type": "user", "id": "ana"},
            "action": action,
            "resource": {"type": "thing", "id": "t"},
        },
        bundle.schema,
    )
    compiled = Engine(bundle).decide(request)
    interpreted = Interpreter(bundle.rules, bundle.lets, bundle.version).decide(request)
    assert compiled == interpreted
    assert compiled.decided_by == decided_by
