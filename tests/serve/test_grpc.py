"""The decision service over real gRPC on loopback: decisions, errors, health, listing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pdp.bounds import DEFAULT_BOUNDS
from pdp.doors.grpc import PROTOBUF_DEPTH
from pdp.serve.proto import authorizer_pb2 as pb
from pdp.serve.proto import authorizer_pb2_grpc as pb_grpc
from pdp.server import MAX_METADATA
from tests.protobuf import entry, field, nested_value, number
from tests.servers import Server, tessera_serve

POLICIES = Path(__file__).resolve().parents[2] / "policies"


@pytest.fixture
def stub(server: Server) -> pb_grpc.AuthorizerStub:
    return pb_grpc.AuthorizerStub(server.channel)


def agent(status: str = "active", risk: str = "low") -> pb.Agent:
    return pb.Agent(
        id="pay-bot",
        attributes={
            "status": pb.Value(string=status),
            "risk": pb.Value(risk=risk),
            "purpose": pb.Value(string="payments"),
        },
    )


def call(tool: str, **context: pb.Value) -> pb.AuthorizeRequest:
    return pb.AuthorizeRequest(
        agent=agent(),
        action="tool.call",
        resource=pb.Resource(type="tool", id=tool),
        context=context,
    )


def test_authorize_allows_and_names_the_rule(stub: pb_grpc.AuthorizerStub) -> None:
    response = stub.Authorize(call("search"), timeout=5)
    assert response.allow
    assert list(response.decided_by) == ["agents.read_only"]
    assert response.bundle_version.startswith("sha256:")
    assert len(response.decision_id) == 32


def test_authorize_carries_obligations(stub: pb_grpc.AuthorizerStub) -> None:
    request = call(
        "payments.transfer", amount=pb.Value(money=pb.Money(amount="200", currency="USD"))
    )
    request.user.id = "alice"
    response = stub.Authorize(request, timeout=5)
    assert not response.allow
    assert [(o.kind, o.value) for o in response.obligations] == [("consent", "payments:transfer")]


def test_a_malformed_request_is_invalid_argument_naming_the_field(
    stub: pb_grpc.AuthorizerStub,
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stub.Authorize(call("payments.transfer", amount=pb.Value(string="lots")), timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith("context.amount: invalid money")


def test_batch_answers_in_order(stub: pb_grpc.AuthorizerStub) -> None:
    suspended = call("search")
    suspended.agent.attributes["status"].string = "suspended"
    batch = pb.AuthorizeBatchRequest(requests=[call("search"), suspended, call("rm -rf")])
    responses = stub.AuthorizeBatch(batch, timeout=5).responses
    assert [r.allow for r in responses] == [True, False, False]
    assert list(responses[1].decided_by) == ["agents.inactive_agents"]
    assert len({r.decision_id for r in responses}) == 3


def test_batch_names_the_bad_request(stub: pb_grpc.AuthorizerStub) -> None:
    bad = call("search")
    bad.agent.id = ""
    with pytest.raises(grpc.RpcError) as caught:
        stub.AuthorizeBatch(pb.AuthorizeBatchRequest(requests=[call("search"), bad]), timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith("requests[1].agent.id: required")


def test_list_allowed_filters_tools_without_using_limits(stub: pb_grpc.AuthorizerStub) -> None:
    external = pb.Agent(
        id="partner",
        attributes={
            "status": pb.Value(string="active"),
            "risk": pb.Value(risk="medium"),
            "type": pb.Value(string="external"),
        },
    )
    tools = ["web.search", "search", "payments.transfer", "fs.write_file"]
    listing = pb.ListAllowedRequest(
        agent=external,
        action="tool.call",
        candidates=[pb.Resource(type="tool", id=t) for t in tools],
    )
    for _ in range(70):  # more than the 60-a-minute limit on web.search: listing is free
        allowed = stub.ListAllowed(listing, timeout=5)
    assert [r.id for r in allowed.allowed] == ["web.search", "search"]


def test_list_allowed_names_what_awaits_only_the_users_consent(
    stub: pb_grpc.AuthorizerStub,
) -> None:
    money = pb.Value(money=pb.Money(amount="200", currency="USD"))
    listing = pb.ListAllowedRequest(
        agent=agent(),
        user=pb.User(id="alice"),
        action="tool.call",
        candidates=[pb.Resource(type="tool", id=t) for t in ("search", "payments.transfer")],
        context={"amount": money},
    )
    response = stub.ListAllowed(listing, timeout=5)
    assert [r.id for r in response.allowed] == ["search"]
    assert [r.id for r in response.consent_required] == ["payments.transfer"]
    consented = pb.Value(strings=pb.StringList(values=["payments:transfer"]))
    listing.context["consents"].CopyFrom(consented)
    response = stub.ListAllowed(listing, timeout=5)
    assert [r.id for r in response.allowed] == ["search", "payments.transfer"]
    assert list(response.consent_required) == []


def test_a_deny_that_needs_more_than_consent_is_not_awaiting_consent(
    stub: pb_grpc.AuthorizerStub,
) -> None:
    """large_transfers asks a treasurer for a consent and a step-up: consent is not enough."""
    treasurer = pb.User(
        id="tess", attributes={"roles": pb.Value(strings=pb.StringList(values=["treasurer"]))}
    )
    listing = pb.ListAllowedRequest(
        agent=agent(),
        user=treasurer,
        action="tool.call",
        candidates=[pb.Resource(type="tool", id="payments.transfer")],
        context={"amount": pb.Value(money=pb.Money(amount="5000", currency="USD"))},
    )
    response = stub.ListAllowed(listing, timeout=5)
    assert (list(response.allowed), list(response.consent_required)) == ([], [])
    question = pb.AuthorizeRequest(
        agent=listing.agent,
        user=treasurer,
        action="tool.call",
        resource=listing.candidates[0],
        context=listing.context,
    )
    denied = stub.Authorize(question, timeout=5)
    assert [(o.kind, o.value) for o in denied.obligations] == [
        ("consent", "payments:transfer"),
        ("step_up", "mfa"),
    ]


def test_health_is_serving(server: Server) -> None:
    health = health_pb2_grpc.HealthStub(server.channel)
    for service in ("", "tessera.v1.Authorizer"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_health_lists_every_service_it_reports_on(server: Server) -> None:
    health = health_pb2_grpc.HealthStub(server.channel)
    reply = health.List(health_pb2.HealthListRequest(), timeout=5)
    serving = health_pb2.HealthCheckResponse.SERVING
    assert {name: status.status for name, status in reply.statuses.items()} == {
        "": serving,
        "tessera.v1.Authorizer": serving,
    }


@pytest.mark.parametrize("method", ["Check", "List", "Watch"])
def test_health_answers_bytes_that_are_no_request_invalid_argument(
    server: Server, method: str
) -> None:
    path = f"/grpc.health.v1.Health/{method}"
    if method == "Watch":
        call: Any = server.channel.unary_stream(path)
        with pytest.raises(grpc.RpcError) as refused:
            next(iter(call(b"\x00\x15tessera", timeout=5)))
    else:
        with pytest.raises(grpc.RpcError) as refused:
            server.channel.unary_unary(path)(b"\x00\x15tessera", timeout=5)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details() == "the request is not a valid " + (
        "grpc.health.v1.HealthListRequest message"
        if method == "List"
        else "grpc.health.v1.HealthCheckRequest message"
    )


def test_tessera_serve_prints_where_it_listens_and_stops_on_sigterm() -> None:
    import re
    import urllib.request

    with tessera_serve(
        *("--policies", str(POLICIES)),
        *("--port", "0", "--metrics-port", "0", "--grace", "1", "--store", ""),
        lines=2,
    ) as (_, (first, metrics_line)):
        match = re.match(r"tessera: serving tessera\.v1\.Authorizer on 127\.0\.0\.1:(\d+)", first)
        assert match, first
        metrics = re.match(r"tessera: metrics on (http://127\.0\.0\.1:\d+/metrics)", metrics_line)
        assert metrics, metrics_line
        with grpc.insecure_channel(f"127.0.0.1:{match.group(1)}") as channel:
            reply = pb_grpc.AuthorizerStub(channel).Authorize(call("search"), timeout=10)
            assert reply.allow
        with urllib.request.urlopen(metrics.group(1), timeout=10) as page:
            text = page.read().decode()
        assert 'tessera_decisions_total{result="allow",rule="agents.read_only"} 1.0' in text
        assert 'tessera_rpc_seconds_count{method="Authorize"} 1.0' in text
        assert "tessera_bundle_info{version=" in text


def test_repeated_requests_come_from_the_cache_with_fresh_ids(server: Server) -> None:
    stub = pb_grpc.AuthorizerStub(server.channel)
    service = server.running.point
    question = call("summarize")
    hits = service.cache_hits
    first = stub.Authorize(question, timeout=5)
    second = stub.Authorize(question, timeout=5)
    assert service.cache_hits == hits + 1
    assert first.allow and second.allow
    assert first.decision_id != second.decision_id


def web_search(agent_id: str) -> pb.AuthorizeRequest:
    """An outside agent calling web.search, which external_search limits to 60 a minute."""
    agent = pb.Agent(
        id=agent_id,
        attributes={
            "status": pb.Value(string="active"),
            "risk": pb.Value(risk="low"),
            "type": pb.Value(string="external"),
        },
    )
    return pb.AuthorizeRequest(
        agent=agent, action="tool.call", resource=pb.Resource(type="tool", id="web.search")
    )


def test_requests_that_meet_a_limit_are_never_cached(server: Server) -> None:
    stub = pb_grpc.AuthorizerStub(server.channel)
    service = server.running.point
    question = web_search("cache-partner")
    hits = service.cache_hits
    answers = [stub.Authorize(question, timeout=5).allow for _ in range(61)]
    assert answers == [True] * 60 + [False]  # the 60-a-minute limit still counts
    assert service.cache_hits == hits


def test_a_retried_call_uses_up_its_limit_once(server: Server) -> None:
    stub = pb_grpc.AuthorizerStub(server.channel)
    question = web_search("retrying-partner")

    def ask(key: str) -> bool:
        metadata = (("idempotency-key", key),) if key else ()
        answer: pb.AuthorizeResponse = stub.Authorize(question, timeout=5, metadata=metadata)
        return answer.allow

    # The first call is sent three times (a PEP retrying it): it counts once.
    assert [ask("call-0"), ask("call-0"), ask("call-0")] == [True, True, True]
    assert [ask(f"call-{n}") for n in range(1, 60)] == [True] * 59  # 60 a minute in all
    assert ask("call-60") is False
    assert ask("") is False  # without a key, a call is a new call
    assert ask("call-0") is True  # its usage is already counted: a retry stays allowed


def test_metrics_count_decisions_cache_and_calls(server: Server) -> None:
    from prometheus_client import generate_latest

    stub = pb_grpc.AuthorizerStub(server.channel)
    stub.Authorize(call("read_file"), timeout=5)
    stub.Authorize(call("read_file"), timeout=5)
    text = generate_latest(server.running.point.metrics.registry).decode()
    names = {
        line.split("{")[0].split(" ")[0]
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    assert names and all(name.startswith("tessera_") for name in names)
    assert 'tessera_decision_cache_total{result="hit"}' in text
    assert 'tessera_decisions_total{result="allow",rule="agents.read_only"}' in text
    assert "tessera_engine_seconds_bucket" in text
    assert "tessera_rpc_in_flight 0.0" in text


def test_a_fault_of_the_service_is_internal_without_a_traceback(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = server.running.point

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(service, "_decided", broken)
    monkeypatch.setattr(service, "cache", None)  # not answered from a remembered decision
    stub = pb_grpc.AuthorizerStub(server.channel)
    with pytest.raises(grpc.RpcError) as caught:
        stub.Authorize(call("search"), timeout=5)
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert caught.value.details() == "internal error in the decision service (it is logged)"
    assert "Traceback" not in caught.value.details()


def test_bytes_that_are_not_a_request_are_invalid_argument(server: Server) -> None:
    raw = server.channel.unary_unary("/tessera.v1.Authorizer/Authorize")
    with pytest.raises(grpc.RpcError) as caught:
        raw(b"\xff\xff\xff", timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid tessera.v1.AuthorizeRequest message" in caught.value.details()


def test_a_health_watcher_does_not_keep_tessera_serve_from_stopping() -> None:
    import re

    with tessera_serve(
        *("--policies", str(POLICIES)),
        *("--port", "0", "--metrics-port", "-1", "--grace", "1", "--store", ""),
        lines=1,
    ) as (_, (first,)):
        match = re.match(r"tessera: serving tessera\.v1\.Authorizer on 127\.0\.0\.1:(\d+)", first)
        assert match, first
        channel = grpc.insecure_channel(f"127.0.0.1:{match.group(1)}")
        # A load balancer's watch, open while SIGTERM arrives: the process still exits.
        watcher = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=""), timeout=60
        )
        assert next(watcher).status == health_pb2.HealthCheckResponse.SERVING
    channel.close()


# ------------------------------------------------------------------ what a call may send


def deep_question(lists: int) -> bytes:
    """An ``Authorize`` question whose context holds a value in ``lists`` lists."""
    question = call("search")
    question.ClearField("context")
    context = number(pb.AuthorizeRequest.DESCRIPTOR, "context")
    return question.SerializeToString() + entry(context, "deep", nested_value(lists))


def deep_listing(lists: int) -> bytes:
    listing = pb.ListAllowedRequest(
        agent=agent(), action="tool.call", candidates=[pb.Resource(type="tool", id="search")]
    )
    context = number(pb.ListAllowedRequest.DESCRIPTOR, "context")
    return listing.SerializeToString() + entry(context, "deep", nested_value(lists))


def deep_batch(lists: int) -> bytes:
    requests = number(pb.AuthorizeBatchRequest.DESCRIPTOR, "requests")
    return field(requests, deep_question(lists))


@pytest.mark.parametrize(
    ("method", "message"),
    [("Authorize", deep_question), ("AuthorizeBatch", deep_batch), ("ListAllowed", deep_listing)],
)
def test_a_request_nested_deeper_than_protobuf_parses_is_invalid_argument(
    server: Server, method: str, message: Any
) -> None:
    raw = server.channel.unary_unary(f"/tessera.v1.Authorizer/{method}")
    with pytest.raises(grpc.RpcError) as caught:
        raw(message(60), timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == (
        f"the request nests deeper than protobuf's limit of {PROTOBUF_DEPTH} levels"
    )


def test_a_request_nested_up_to_protobufs_limit_is_decided(server: Server) -> None:
    # AuthorizeRequest > context entry > Value > (ValueList > Value) × 49: 100 levels
    raw = server.channel.unary_unary(
        "/tessera.v1.Authorizer/Authorize", response_deserializer=pb.AuthorizeResponse.FromString
    )
    answer = raw(deep_question(49), timeout=5)
    assert answer.decided_by and answer.decision_id


@pytest.mark.parametrize("method", ["AuthorizeBatch", "ListAllowed"])
def test_bytes_that_are_not_a_batch_or_a_listing_are_invalid_argument(
    server: Server, method: str
) -> None:
    raw = server.channel.unary_unary(f"/tessera.v1.Authorizer/{method}")
    with pytest.raises(grpc.RpcError) as caught:
        raw(b"\xff\xff\xff", timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid tessera.v1." in caught.value.details()
    assert "Error" not in caught.value.details()  # no exception's name


def test_metadata_over_its_bound_is_refused_every_time(server: Server) -> None:
    stub = pb_grpc.AuthorizerStub(server.channel)
    assert stub.Authorize(call("search"), metadata=[("x-pad", "a" * 12_000)], timeout=5).allow
    for _ in range(3):  # over the bound: refused always, not at random
        with pytest.raises(grpc.RpcError) as caught:
            stub.Authorize(call("search"), metadata=[("x-pad", "a" * MAX_METADATA)], timeout=5)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_a_message_over_its_bound_is_resource_exhausted(server: Server) -> None:
    question = call("search")
    question.resource.attributes["pad"].string = "a" * DEFAULT_BOUNDS.message_bytes
    unbounded = [("grpc.max_send_message_length", -1)]
    address = f"127.0.0.1:{server.running.port}"
    with (
        grpc.insecure_channel(address, options=unbounded) as channel,
        pytest.raises(grpc.RpcError) as caught,
    ):
        pb_grpc.AuthorizerStub(channel).Authorize(question, timeout=5)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
