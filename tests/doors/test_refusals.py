"""A question a door cannot decide as asked gets that door's own refusal, and changes
nothing: no decision, no record, no limit used.

Each amount outside the one amount grammar (``pdp.lang.values.parse_amount``) is put to
``tessera.v1.Authorizer/Authorize`` (gRPC INVALID_ARGUMENT), AuthZEN's evaluation (HTTP
400) and the MCP proxy's ``tools/call`` (JSON-RPC ``-32602 Invalid params`` naming the
argument, no decision id), all real servers on 127.0.0.1 over one SQLite store. Envoy's
ext_authz is not asked: an HTTP request through the gateway carries no amount.

Requests over one of the bounds of :mod:`pdp.bounds` (the defaults) are refused the same
way: gRPC RESOURCE_EXHAUSTED, AuthZEN 413, the MCP proxy ``-32602``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest

from pdp.doors.authzen import AUTHZEN_PATH
from pdp.serve.proto import authorizer_pb2 as pb
from pdp.serve.proto import authorizer_pb2_grpc as pb_grpc
from pep.mcp_proxy.app import DECISION_HEADER
from tests.doors.world import Asked, Doors, doors
from tests.issuer.conftest import TIMEOUT, TOKEN
from tests.pep.mcp_proxy.test_proxy import call, modern

TOOL = "payments.transfer"  # limited by the shipped policies: a refusal must use none
LOOSE = [
    (" 100", "whitespace"),
    ("1_000", '"_"'),
    ("1E+3", "exponent"),
    ("١٠٠", "digits other than ASCII 0-9"),
    ("100.00001", "more than 4 decimal places"),
    ("450359962738", "the largest amount"),
]
# JSON numbers the MCP proxy's parser takes although no amount can be made of them
NUMBERS = [("1e20", "largest"), ("-1e20", "largest"), ("0.00001", "decimal places")]
NOT_JSON = ["NaN", "1e400", "-1e400"]  # RFC 8259 has no such number


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Doors]:
    with doors("sqlite", Path(tmp_path_factory.mktemp("refusals"))) as running:
        yield running


@pytest.fixture(scope="module")
def asked(world: Doors) -> Asked:
    return Asked(world.agent(riskLevel="low"), None, TOOL)


def trail_length(world: Doors) -> int:
    return len(world.store.audit("agent", 0, 1_000_000))


@pytest.mark.parametrize(("amount", "reason"), LOOSE)
def test_grpc_refuses_a_loose_amount_invalid_argument(
    world: Doors, asked: Asked, amount: str, reason: str
) -> None:
    before = trail_length(world)
    message = pb.AuthorizeRequest(
        agent=pb.Agent(id=asked.agent),
        action="tool.call",
        resource=pb.Resource(type="tool", id=TOOL),
        context={"amount": pb.Value(money=pb.Money(amount=amount, currency="USD"))},
    )
    stub = pb_grpc.AuthorizerStub(world.pdp.channel)  # type: ignore[no-untyped-call]
    with pytest.raises(grpc.RpcError) as caught:
        stub.Authorize(message, timeout=TIMEOUT)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith(f"context.amount.amount: invalid amount {amount!r}")
    assert reason in caught.value.details()
    assert trail_length(world) == before


@pytest.mark.parametrize(("amount", "reason"), LOOSE)
def test_authzen_refuses_a_loose_amount_400(
    world: Doors, asked: Asked, amount: str, reason: str
) -> None:
    before = trail_length(world)
    response = evaluate(world, asked, f"{amount} USD")
    assert response.status_code == 400
    assert response.text.startswith(f"context.amount: invalid amount {amount!r}")
    assert reason in response.text
    assert trail_length(world) == before


def test_authzen_refuses_an_amount_that_is_no_finite_number_400(world: Doors, asked: Asked) -> None:
    before = trail_length(world)
    response = evaluate(world, asked, {"amount": 1e400, "currency": "USD"}, raw=True)
    assert response.status_code == 400
    # refused as it is read: RFC 8259 has no number a double cannot hold
    assert response.text.startswith("the document is not JSON: number is infinity")
    assert trail_length(world) == before


@pytest.mark.parametrize(("amount", "reason"), LOOSE)
def test_the_mcp_proxy_refuses_a_loose_amount_invalid_params(
    world: Doors, asked: Asked, amount: str, reason: str
) -> None:
    before = trail_length(world)
    error, headers = tools_call(world, asked, json.dumps(amount))
    assert error["code"] == -32602
    assert error["message"].startswith(
        f"Invalid params: argument 'amount': invalid amount {amount!r}"
    )
    assert reason in error["message"]
    assert error["data"] == {"argument": "amount"}
    assert not headers.get(DECISION_HEADER)
    assert trail_length(world) == before


@pytest.mark.parametrize(("number", "reason"), NUMBERS)
def test_the_mcp_proxy_refuses_a_json_number_no_amount_can_be_made_of(
    world: Doors, asked: Asked, number: str, reason: str
) -> None:
    before = trail_length(world)
    error, headers = tools_call(world, asked, number)
    assert error["code"] == -32602
    assert error["message"].startswith("Invalid params: argument 'amount'")
    assert reason in error["message"]
    assert not headers.get(DECISION_HEADER)
    assert trail_length(world) == before


@pytest.mark.parametrize("number", NOT_JSON)
def test_the_mcp_proxy_refuses_a_number_json_does_not_have_as_a_parse_error(
    world: Doors, asked: Asked, number: str
) -> None:
    before = trail_length(world)
    error, headers = tools_call(world, asked, number, status=400)
    assert error["code"] == -32700
    assert not headers.get(DECISION_HEADER)
    assert trail_length(world) == before


# ------------------------------------------------------------------ bounds


def authorize(world: Doors, message: pb.AuthorizeRequest) -> grpc.RpcError:
    """``Authorize`` refused: the error."""
    stub = pb_grpc.AuthorizerStub(world.pdp.channel)  # type: ignore[no-untyped-call]
    with pytest.raises(grpc.RpcError) as caught:
        stub.Authorize(message, timeout=TIMEOUT)
    return caught.value


def search(asked: Asked, **context: pb.Value) -> pb.AuthorizeRequest:
    return pb.AuthorizeRequest(
        agent=pb.Agent(id=asked.agent),
        action="tool.call",
        resource=pb.Resource(type="tool", id="search"),
        context=context,
    )


def text(size: int) -> pb.Value:
    return pb.Value(string="x" * size)


def test_grpc_refuses_a_message_over_max_message_bytes_before_reading_it(
    world: Doors, asked: Asked
) -> None:
    before = trail_length(world)
    refused = authorize(world, search(asked, note=text(3_900_000)))
    assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in refused.details()
    assert trail_length(world) == before


@pytest.mark.parametrize(
    ("context", "resource", "details"),
    [
        (
            {"note": text(1_025)},
            {},
            "context.note: 1,025 bytes, over the 1,024 the value of an attribute the schema "
            "does not declare may have (max_undeclared_bytes); declare it in the schema, or "
            "leave it out",
        ),
        (
            {f"a{n}": pb.Value(bool=True) for n in range(65)},
            {},
            "context: 65 attributes, over the 64 one map may have (max_attributes)",
        ),
        (
            {},
            {"annotations": pb.Value(strings=pb.StringList(values=["y" * 1_000] * 17))},
            "resource.annotations: 17,000 bytes, over the 16,384 an attribute's value may "
            "have (max_value_bytes)",
        ),
        (
            {f"n{n}": text(1_000) for n in range(50)},
            {"annotations": pb.Value(strings=pb.StringList(values=["y" * 1_000] * 16))},
            "the request is over the 65,536 bytes a decision request may have (max_request_bytes)",
        ),
    ],
    ids=["undeclared value", "attributes", "declared value", "whole request"],
)
def test_grpc_refuses_a_request_over_a_bound_resource_exhausted(
    world: Doors,
    asked: Asked,
    context: dict[str, pb.Value],
    resource: dict[str, pb.Value],
    details: str,
) -> None:
    before = trail_length(world)
    message = search(asked, **context)
    for key, value in resource.items():
        message.resource.attributes[key].CopyFrom(value)
    refused = authorize(world, message)
    assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert refused.details() == details
    assert trail_length(world) == before


def test_a_batch_names_the_request_over_a_bound(world: Doors, asked: Asked) -> None:
    before = trail_length(world)
    batch = pb.AuthorizeBatchRequest(requests=[search(asked), search(asked, note=text(2_000))])
    stub = pb_grpc.AuthorizerStub(world.pdp.channel)  # type: ignore[no-untyped-call]
    with pytest.raises(grpc.RpcError) as caught:
        stub.AuthorizeBatch(batch, timeout=TIMEOUT)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert caught.value.details().startswith("requests[1].context.note: 2,000 bytes")
    assert trail_length(world) == before  # nothing of the batch is decided


def test_a_request_within_every_bound_is_decided_and_recorded(world: Doors, asked: Asked) -> None:
    before = trail_length(world)
    message = search(asked, **{f"n{n}": text(1_000) for n in range(60)})
    stub = pb_grpc.AuthorizerStub(world.pdp.channel)  # type: ignore[no-untyped-call]
    response = stub.Authorize(message, timeout=TIMEOUT)
    assert response.allow
    assert trail_length(world) == before + 1
    assert world.record(response.decision_id)["context"]["n59"] == "x" * 1_000


def test_authzen_refuses_a_request_over_a_bound_413(world: Doors, asked: Asked) -> None:
    before = trail_length(world)
    response = evaluate(world, asked, "100 USD", note="x" * 2_000)
    assert response.status_code == 413
    assert response.text.startswith("context.note: 2,000 bytes, over the 1,024")
    assert "(max_undeclared_bytes)" in response.text
    assert trail_length(world) == before


def test_the_mcp_proxy_answers_a_call_over_a_bound_invalid_params(
    world: Doors, asked: Asked
) -> None:
    before = trail_length(world)
    name = "t" * 70_000  # the tool's name is the resource's id
    response = httpx.post(
        world.resource,
        json=call(name, {}),
        headers={
            "Authorization": f"Bearer {world.token(asked)}",
            "Accept": "application/json, text/event-stream",
        },
        timeout=TIMEOUT,
    )
    assert response.status_code == 200, response.text
    error = response.json()["error"]
    assert error["code"] == -32602
    assert error["message"] == (
        "Invalid params: RESOURCE_EXHAUSTED: the request is over the 65,536 bytes a decision "
        "request may have (max_request_bytes)"
    )
    assert not response.headers.get(DECISION_HEADER)
    assert trail_length(world) == before


def evaluate(
    world: Doors, asked: Asked, amount: object, raw: bool = False, **context: object
) -> httpx.Response:
    """An AuthZEN evaluation of the transfer with ``context.amount`` (and ``context``);
    ``raw`` writes the body with Python's encoder, which spells out what strict JSON
    encoders refuse."""
    body = {
        "subject": {"type": "agent", "id": asked.agent},
        "action": {"name": "tool.call"},
        "resource": {"type": "tool", "id": TOOL},
        "context": {"amount": amount, **context},
    }
    text = json.dumps(body).replace("Infinity", "1e400") if raw else json.dumps(body)
    return httpx.post(
        f"{world.authzen_base}{AUTHZEN_PATH}/evaluation",
        content=text,
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        timeout=TIMEOUT,
    )


def tools_call(
    world: Doors, asked: Asked, amount: str, status: int = 200
) -> tuple[dict[str, object], httpx.Headers]:
    """A ``tools/call`` of the transfer whose ``amount`` argument is the JSON text
    ``amount``, answered with HTTP ``status``: the JSON-RPC error it is answered, and the
    response's headers."""
    body = json.dumps(call(TOOL, {"amount": "AMOUNT"})).replace('"AMOUNT"', amount)
    response = httpx.post(
        world.resource,
        content=body,
        headers={
            "Authorization": f"Bearer {world.token(asked)}",
            "Accept": "application/json, text/event-stream",
            "Content-Type": "application/json",
            **modern(TOOL),
        },
        timeout=TIMEOUT,
    )
    assert response.status_code == status, response.text
    error: dict[str, object] = response.json()["error"]
    return error, response.headers
