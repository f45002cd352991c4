"""The gRPC door: a message becomes one typed request, a decision becomes a response."""

from __future__ import annotations

import pytest

from pdp.doors.grpc import answer_to_bytes, answer_to_proto, parsed, request_from_proto
from pdp.engine import Engine
from pdp.lang.ast import Obligation
from pdp.lang.values import Money, Risk
from pdp.model import Answer, Decision, RequestError, RuleError
from pdp.serve.proto import authorizer_pb2 as pb
from tests.conftest import bundle_of


def transfer(**context: pb.Value) -> pb.AuthorizeRequest:
    return pb.AuthorizeRequest(
        agent=pb.Agent(
            id="pay-bot",
            attributes={"risk": pb.Value(risk="low"), "status": pb.Value(string="active")},
        ),
        user=pb.User(
            id="alice", attributes={"roles": pb.Value(strings=pb.StringList(values=["x"]))}
        ),
        delegation=pb.Delegation(chain=["pay-bot"]),
        action="tool.call",
        resource=pb.Resource(type="tool", id="pay", attributes={"server": pb.Value(string="p")}),
        context=context,
    )


def test_a_message_becomes_a_typed_request() -> None:
    bundle = bundle_of('permit p call tool "pay"')
    message = transfer(amount=pb.Value(money=pb.Money(amount="12.50", currency="EUR")))
    request = request_from_proto(message, bundle.schema)
    assert request.agent == {"id": "pay-bot", "risk": Risk.low, "status": "active"}
    assert request.user == {"id": "alice", "roles": frozenset({"x"})}
    assert request.delegation == {"delegated": True, "depth": 1, "chain": ("pay-bot",)}
    assert request.context["amount"] == Money("12.50", "EUR")
    assert request.tool == {"type": "tool", "id": "pay", "server": "p", "name": "pay"}
    assert Engine(bundle).decide(request).allow


def test_an_absent_user_means_the_agent_acts_alone() -> None:
    bundle = bundle_of('permit p call tool "pay"')
    message = transfer()
    message.ClearField("user")
    message.ClearField("delegation")
    assert request_from_proto(message, bundle.schema).delegation["delegated"] is False


@pytest.mark.parametrize(
    ("context", "error"),
    [
        ({"amount": pb.Value(string="lots")}, "context.amount: invalid money"),
        ({"amount": pb.Value()}, "context.amount: a Value with no kind set"),
        ({"n": pb.Value(string="5")}, "context.n: expected a number"),
    ],
)
def test_bad_values_name_the_field(context: dict[str, pb.Value], error: str) -> None:
    bundle = bundle_of('permit p call tool "pay"')
    with pytest.raises(RequestError, match=error):
        request_from_proto(transfer(**context), bundle.schema)


def test_a_missing_agent_id_is_refused() -> None:
    bundle = bundle_of('permit p call tool "pay"')
    message = transfer()
    message.agent.id = ""
    with pytest.raises(RequestError, match=r"agent\.id: required"):
        request_from_proto(message, bundle.schema)


def test_a_decision_becomes_a_response() -> None:
    decision = Decision(
        False,
        (Obligation("consent", "payments:transfer"),),
        ("agents.small_transfers",),
        ("needs consent",),
        (RuleError("agents.x", "permit", "agent.purpose is absent"),),
        "sha256:abc",
    )
    message = answer_to_proto(Answer(decision, "d-1", False))
    assert not message.allow
    assert [(o.kind, o.value) for o in message.obligations] == [("consent", "payments:transfer")]
    assert list(message.decided_by) == ["agents.small_transfers"]
    assert message.decision_id == "d-1" and message.bundle_version == "sha256:abc"
    assert message.errors[0].message == "agent.purpose is absent"


@pytest.mark.parametrize("cacheable", [True, False])
def test_the_bytes_of_an_answer_parse_as_its_response(cacheable: bool) -> None:
    decision = Decision(
        False,
        (Obligation("consent", "payments:transfer"),),
        ("agents.small_transfers",),
        ("needs consent",),
        (RuleError("agents.x", "permit", "agent.purpose is absent"),),
        "sha256:abc",
    )
    answer = Answer(decision, "d" * 200, cacheable)  # an id whose length takes two bytes
    parsed = pb.AuthorizeResponse.FromString(answer_to_bytes(answer))
    assert parsed == answer_to_proto(answer)
    again = Answer(decision, "e-2", cacheable)  # the decision's part is reused
    assert pb.AuthorizeResponse.FromString(answer_to_bytes(again)) == answer_to_proto(again)


def test_bytes_that_are_not_a_request_are_refused_naming_the_message() -> None:
    with pytest.raises(RequestError, match=r"not a tessera\.v1\.AuthorizeRequest"):
        parsed(b"\xff\xff\xff", pb.AuthorizeRequest)
