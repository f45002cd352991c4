"""Generated messages and bytes at every unary gRPC method of a live ``tessera serve``.

``tessera.v1.Authorizer`` (Authorize, AuthorizeBatch, ListAllowed), Envoy's ext_authz
``Check`` and the health ``Check`` get messages with random field values (valid
questions with random fields merged in, too), random bytes as the serialized message,
and valid messages cut short or with bytes changed. Whatever comes, the call ends with a
status that is the caller's fault or none (never UNKNOWN or INTERNAL), within the
client's deadline, with a message that names no Python exception; an ext_authz refusal
is Envoy's denied response with a JSON error; and a refused call leaves every row of the
store as it was.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from envoy.service.auth.v3 import external_auth_pb2 as auth
from google.protobuf import descriptor_pb2, struct_pb2
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from pdp.serve.proto import authorizer_pb2 as pb
from tests.fuzz.live import TIMEOUT, Live, Seeds, difference
from tests.fuzz.messages import messages
from tests.fuzz.operations import PYTHON
from tests.protobuf import field

# No shrinking: a failure is reported as found, so a failing run stays as short as a
# passing one (each example is a round trip to the server and a read of the store).
FUZZ = settings(
    phases=(Phase.explicit, Phase.reuse, Phase.generate),
    max_examples=30,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
FAULTS = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.DEADLINE_EXCEEDED}


def _authorize(seeds: Seeds) -> pb.AuthorizeRequest:
    return pb.AuthorizeRequest(
        agent=pb.Agent(id=seeds.agent),
        user=pb.User(id=seeds.user),
        action="tool.call",
        resource=pb.Resource(type="tool", id="search"),
        context={"amount": pb.Value(money=pb.Money(amount="10", currency="USD"))},
    )


def _check(seeds: Seeds) -> auth.CheckRequest:
    request = auth.CheckRequest()
    http = request.attributes.request.http
    http.method, http.path = "POST", "/tools/search"
    http.headers["authorization"] = f"Bearer {seeds.access_token}"
    request.attributes.source.address.socket_address.address = "192.0.2.10"
    return request


@dataclass(frozen=True)
class Method:
    """A unary method, its request and response types, and a request it answers."""

    path: str
    request: type[Message]
    response: type[Message]
    valid: Callable[[Seeds], Message]

    def __str__(self) -> str:
        return self.path


METHODS = [
    Method(
        "/tessera.v1.Authorizer/Authorize", pb.AuthorizeRequest, pb.AuthorizeResponse, _authorize
    ),
    Method(
        "/tessera.v1.Authorizer/AuthorizeBatch",
        pb.AuthorizeBatchRequest,
        pb.AuthorizeBatchResponse,
        lambda seeds: pb.AuthorizeBatchRequest(requests=[_authorize(seeds)] * 2),
    ),
    Method(
        "/tessera.v1.Authorizer/ListAllowed",
        pb.ListAllowedRequest,
        pb.ListAllowedResponse,
        lambda seeds: pb.ListAllowedRequest(
            agent=pb.Agent(id=seeds.agent),
            action="tool.call",
            candidates=[pb.Resource(type="tool", id="search")],
        ),
    ),
    Method(
        "/envoy.service.auth.v3.Authorization/Check", auth.CheckRequest, auth.CheckResponse, _check
    ),
    Method(
        "/grpc.health.v1.Health/Check",
        health_pb2.HealthCheckRequest,
        health_pb2.HealthCheckResponse,
        lambda _: health_pb2.HealthCheckRequest(service="tessera.v1.Authorizer"),
    ),
    Method(
        "/grpc.health.v1.Health/List",
        health_pb2.HealthListRequest,
        health_pb2.HealthListResponse,
        lambda _: health_pb2.HealthListRequest(),
    ),
]
# Streams are the gRPC library's own services, not a door of ours.
STREAMS = {
    "/grpc.health.v1.Health/Watch",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
}


class Caller:
    """Calls a method with bytes; holds the outcome to the rules and the store to its rows."""

    def __init__(self, live: Live) -> None:
        self.live = live
        self.channel = grpc.insecure_channel(live.grpc_target)
        self.rows = live.settled()

    def call(self, method: Method, raw: bytes) -> None:
        call = self.channel.unary_unary(method.path)
        try:
            answer = call(raw, timeout=TIMEOUT)
        except grpc.RpcError as error:
            code, details = error.code(), error.details() or ""
            said = self.live.last_said()
            assert code not in FAULTS, f"{method} ended {code.name}: {details}\n{said}"
            assert not PYTHON.search(details), f"{method} ended {code.name}: {details}"
            self._unchanged(method)
            return
        self._answered(method, method.response.FromString(answer))

    def _answered(self, method: Method, response: Message) -> None:
        if isinstance(response, auth.CheckResponse) and response.HasField("denied_response"):
            denied = response.denied_response
            error = json.loads(denied.body)
            assert isinstance(error.get("error"), str), denied.body
            assert not PYTHON.search(denied.body), denied.body
            if denied.status.code in (400, 401):  # refused before any decision
                self._unchanged(method)
                return
        self.rows = self.live.settled()

    def _unchanged(self, method: Method) -> None:
        changed = difference(self.rows, self.live.snapshot())
        assert not changed, f"{method} refused, yet changed the store: {changed}"


@pytest.fixture(scope="module")
def caller(live: Live) -> Iterator[Caller]:
    running = Caller(live)
    yield running
    running.channel.close()


def test_every_unary_method_the_server_offers_is_fuzzed(caller: Caller) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(caller.channel)
    asked = reflection_pb2.ServerReflectionRequest(list_services="")
    (listing,) = stub.ServerReflectionInfo(iter([asked]), timeout=TIMEOUT)
    offered = set()
    for service in listing.list_services_response.service:
        found = reflection_pb2.ServerReflectionRequest(file_containing_symbol=service.name)
        (files,) = stub.ServerReflectionInfo(iter([found]), timeout=TIMEOUT)
        offered |= _methods(service.name, files.file_descriptor_response.file_descriptor_proto)
    assert offered - STREAMS == {method.path for method in METHODS}


def _methods(service: str, files: Any) -> set[str]:
    found = set()
    for raw in files:
        proto = descriptor_pb2.FileDescriptorProto.FromString(raw)
        for described in proto.service:
            if f"{proto.package}.{described.name}" == service:
                found |= {f"/{service}/{rpc.name}" for rpc in described.method}
    return found


# ---------------------------------------------------------------- the fuzzers


@pytest.mark.parametrize("method", METHODS, ids=str)
@FUZZ
@given(data=st.data())
def test_a_message_with_any_field_values_is_answered(
    caller: Caller, method: Method, data: st.DataObject
) -> None:
    message = data.draw(messages(method.request.DESCRIPTOR), "message")
    if data.draw(st.booleans(), "merged into a valid one"):
        valid = method.valid(caller.live.seeds)
        valid.MergeFrom(message)
        message = valid
    caller.call(method, message.SerializeToString())


@pytest.mark.parametrize("method", METHODS, ids=str)
@FUZZ
@given(data=st.data())
def test_bytes_that_are_not_the_message_are_refused(
    caller: Caller, method: Method, data: st.DataObject
) -> None:
    valid = method.valid(caller.live.seeds).SerializeToString()
    cut = data.draw(st.integers(0, len(valid)), "cut")
    at = data.draw(st.integers(0, max(len(valid) - 1, 0)), "at")
    flipped = valid[:at] + data.draw(st.binary(min_size=1, max_size=3), "bytes") + valid[at + 1 :]
    raw = data.draw(st.binary(max_size=300) | st.just(valid[:cut]) | st.just(flipped), "raw")
    caller.call(method, raw)


def _deep(depth: int, bottom: bytes, value: Any) -> bytes:
    """A value that is a list holding a list… ``depth`` times, as bytes (a message this deep
    cannot be built in Python: protobuf refuses to copy it)."""
    listed = value.DESCRIPTOR.fields_by_name
    kind = "list" if "list" in listed else "list_value"
    inner = bottom
    for _ in range(depth):
        inner = field(listed[kind].number, field(1, inner))
    return inner


def _entry(key: str, value: bytes) -> bytes:
    return field(1, key.encode()) + field(2, value)


def _nested(method: Method, seeds: Seeds, depth: int) -> bytes:
    """A valid request of ``method`` with a context value nested ``depth`` levels deep."""
    valid = method.valid(seeds).SerializeToString()
    deep = _deep(depth, pb.Value(string="bottom").SerializeToString(), pb.Value())
    context = field(
        pb.AuthorizeRequest.DESCRIPTOR.fields_by_name["context"].number, _entry("deep", deep)
    )
    if method.request is pb.AuthorizeBatchRequest:
        return valid + field(1, _authorize(seeds).SerializeToString() + context)
    if method.request is not auth.CheckRequest:
        return valid + context
    struct = _deep(
        depth, struct_pb2.Value(string_value="x").SerializeToString(), struct_pb2.Value()
    )
    metadata = field(1, _entry("fuzz", field(1, _entry("deep", struct))))  # filter_metadata
    number = auth.AttributeContext.DESCRIPTOR.fields_by_name["metadata_context"].number
    return valid + field(1, field(number, metadata))  # CheckRequest.attributes


@settings(FUZZ, max_examples=10)
@given(depth=st.integers(40, 300), method=st.sampled_from(METHODS[:4]))
def test_messages_nested_past_protobufs_limit_are_refused(
    caller: Caller, depth: int, method: Method
) -> None:
    caller.call(method, _nested(method, caller.live.seeds, depth))
