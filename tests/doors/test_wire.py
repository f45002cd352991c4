"""The gRPC door's reader of a request's bytes (``pdp/doors/_wire.pyx``) against protobuf.

Whatever the bytes, the reader either leaves them to protobuf (None) or reads what
reading the protobuf-parsed message gives: the same plain parts, then the same typed
request or the same error. Random messages of every field, random bytes, messages cut
short or with bytes changed, and two messages run together (protobuf merges them) are
each held to that.
"""

from __future__ import annotations

import math
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from issuer.verify import Caller
from pdp.bounds import DEFAULT_BOUNDS
from pdp.doors import grpc as door
from pdp.doors.grpc import parsed, parts_of, read_batch, request_from_proto
from pdp.loader import load_directory
from pdp.model import Request, RequestError
from pdp.request import typed_request
from pdp.serve.proto import authorizer_pb2 as pb
from tests.fuzz.messages import messages

SCHEMA = load_directory(Path(__file__).parents[2] / "policies").bundle.schema
MANY = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))


def plain_parts(raw: bytes) -> Any:
    assert door.plain_parts is not None, "pdp/doors/_wire.pyx is not compiled"
    return door.plain_parts(raw)


def read_request(raw: bytes) -> Request | None:
    return door.read_request(raw, SCHEMA, True, DEFAULT_BOUNDS, None)


def same(value: Any) -> Any:
    """``value`` in a form equal only to a value of the same types and bits: a bool is
    no int, a NaN equals a NaN, -0.0 is not 0.0, and key order does not count."""
    if isinstance(value, dict):
        return ("dict", sorted((key, same(item)) for key, item in value.items()))
    if isinstance(value, list | tuple):
        return (type(value).__name__, [same(item) for item in value])
    if isinstance(value, float):
        return ("float", struct.pack("<d", value))
    return (type(value).__name__, value)


def protobuf_parts(raw: bytes) -> Any:
    """What reading the message protobuf parses gives, or the error that stops it."""
    try:
        return same(parts_of(parsed(raw, pb.AuthorizeRequest), True))
    except RequestError as exc:
        return ("refused", str(exc))


def outcome(read: Any) -> Any:
    """A typed request (or the error refusing it) in a comparable form."""
    try:
        request: Request = read()
    except RequestError as exc:
        return ("refused", type(exc).__name__, str(exc))
    fields = ("agent", "user", "delegation", "action", "resource", "context", "size")
    return tuple(same_typed(getattr(request, name)) for name in fields)


def same_typed(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    if isinstance(value, dict):
        return sorted((key, same_typed(item)) for key, item in value.items())
    if isinstance(value, frozenset):
        return ("set", sorted(repr(item) for item in value))
    if isinstance(value, tuple):
        return [same_typed(item) for item in value]
    return repr(value)


def check(raw: bytes) -> bool:
    """Hold the reader to protobuf on ``raw``; whether it read them."""
    parts = plain_parts(raw)
    if parts is None:
        assert read_request(raw) is None
        return False
    assert same(parts) == protobuf_parts(raw)
    if not door._at_a_glance(parts, len(raw), DEFAULT_BOUNDS):
        assert read_request(raw) is None  # protobuf's path measures every value
        return True
    message = parsed(raw, pb.AuthorizeRequest)
    agree(
        outcome(lambda: door.read_request(raw, SCHEMA, False, DEFAULT_BOUNDS, None)),
        outcome(lambda: request_from_proto(message, SCHEMA, False, len(raw))),
    )
    fast = outcome(lambda: read_request(raw))
    if not agree(fast, outcome(lambda: request_from_proto(message, SCHEMA, True, len(raw)))):
        return True
    # The same typed request (or a refusal of the same class) as the doors that have
    # their question in pieces: their size is measured otherwise, their words differ.
    assert fast[:-1] == outcome(lambda: typed_elsewhere(parts))[:-1]
    return True


def agree(fast: Any, slow: Any) -> bool:
    """Assert that the reader's path and protobuf's answer alike; whether each is the
    same to the word."""
    if fast[0] == slow[0] == "refused" and fast != slow:
        # Two faulty values in one map: each path names the first it meets, and
        # protobuf's maps iterate in their hash table's order, not the wire's.
        assert fast[1] == slow[1]
        assert fast[2].split(".")[0] == slow[2].split(".")[0]
        return False
    assert fast == slow
    return True


def typed_elsewhere(parts: Any) -> Request:
    """The question typed by ``pdp.request.typed_request``, as the doors that have their
    question in pieces type it: the oracle for the gRPC door's own typing."""
    agent_id, agent, user, chain, action, rtype, rid, resource, context = parts
    return typed_request(
        SCHEMA,
        agent={**agent, "id": agent_id},
        action=action,
        resource_type=rtype,
        resource_id=rid,
        resource=resource,
        user=None if user is None else {**user[1], "id": user[0]},
        chain=chain,
        context=context,
    )


def deep(levels: int) -> pb.Value:
    value = pb.Value(bool=True)
    for _ in range(levels):
        value = pb.Value(list=pb.ValueList(values=[value]))
    return value


def question(**fields: Any) -> pb.AuthorizeRequest:
    return pb.AuthorizeRequest(
        agent=pb.Agent(id="helper", attributes={"risk": pb.Value(risk="low")}),
        action="tool.call",
        resource=pb.Resource(type="tool", id="search"),
        **fields,
    )


def test_the_reader_is_compiled() -> None:
    """``make`` builds it: without it every request would take the slower protobuf path."""
    assert door.plain_parts is not None
    assert door.batch_parts is not None


def test_a_typical_question_is_read_as_protobuf_reads_it() -> None:
    raw = question(
        user=pb.User(id="alice", attributes={"roles": pb.Value(strings=pb.StringList())}),
        delegation=pb.Delegation(chain=["helper"]),
        context={
            "amount": pb.Value(money=pb.Money(amount="12.50", currency="USD")),
            "n": pb.Value(number=-0.0),
            "i": pb.Value(integer=-(2**63)),
            "b": pb.Value(bool=True),
            "l": pb.Value(list=pb.ValueList(values=[pb.Value(map=pb.ValueMap())])),
        },
    ).SerializeToString()
    assert check(raw)
    request = read_request(raw)
    assert request is not None and request.context["i"] == -(2**63)


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("a subject", pb.AuthorizeRequest(subject=pb.Subject(type="user", id="a"))),
        ("an agent token", question(agent_token="t")),
        ("a Value with no kind", question(context={"x": pb.Value()})),
        ("the agent said twice", question().SerializeToString() * 2),
        ("an unknown field", question().SerializeToString() + b"\x48\x01"),
        ("a string not UTF-8", b"\x22\x02\xc3\x28"),
        ("bytes cut short", question().SerializeToString()[:-1]),
        ("values nested too deep", question(context={"x": deep(20)})),
    ],
)
def test_what_the_reader_leaves_to_protobuf(name: str, raw: pb.AuthorizeRequest | bytes) -> None:
    if isinstance(raw, pb.AuthorizeRequest):
        raw = raw.SerializeToString()
    assert plain_parts(raw) is None
    assert read_request(raw) is None


def test_a_large_question_is_measured_by_the_protobuf_path() -> None:
    many = {f"k{i}": pb.Value(string="v") for i in range(DEFAULT_BOUNDS.attributes + 1)}
    raw = question(context=many).SerializeToString()
    assert check(raw)
    assert plain_parts(raw) is not None
    assert read_request(raw) is None


@MANY
@given(messages(pb.AuthorizeRequest.DESCRIPTOR, depth=5))
def test_random_messages_are_read_as_protobuf_reads_them(message: pb.AuthorizeRequest) -> None:
    check(message.SerializeToString())


def _declared() -> st.SearchStrategy[pb.Value]:
    """Values of the kinds a policy's declared attributes take, right and wrong."""
    text = st.sampled_from(["low", "high", "active", "", "12.50", "5m", "10.0.0.1", "x"])
    return st.one_of(
        text.map(lambda t: pb.Value(string=t)),
        text.map(lambda t: pb.Value(risk=t)),
        st.floats().map(lambda n: pb.Value(number=n)),
        st.booleans().map(lambda b: pb.Value(bool=b)),
        st.tuples(text, st.sampled_from(["USD", "EUR", ""])).map(
            lambda m: pb.Value(money=pb.Money(amount=m[0], currency=m[1]))
        ),
        st.lists(text, max_size=3).map(lambda v: pb.Value(strings=pb.StringList(values=v))),
    )


def _attributes(types: Any) -> st.SearchStrategy[dict[str, pb.Value]]:
    """Attributes the schema declares, and one it does not (not ``id``: the message says
    that apart, and the oracle below takes it from there)."""
    names = [name for name in types if name != "id"]
    return st.dictionaries(st.sampled_from([*names, "other"]), _declared(), max_size=4)


@MANY
@given(
    agent=_attributes(SCHEMA.agent),
    user=st.none() | _attributes(SCHEMA.user),
    context=_attributes(SCHEMA.context),
    chain=st.none() | st.lists(st.sampled_from(["helper", "other", ""]), max_size=2),
    action=st.sampled_from(["tool.call", "", "db.read"]),
)
def test_typed_questions_are_decided_on_the_same_request(
    agent: dict[str, pb.Value],
    user: dict[str, pb.Value] | None,
    context: dict[str, pb.Value],
    chain: list[str] | None,
    action: str,
) -> None:
    message = pb.AuthorizeRequest(
        agent=pb.Agent(id="helper", attributes=agent),
        action=action,
        resource=pb.Resource(type="tool", id="search"),
        context=context,
    )
    if user is not None:
        message.user.CopyFrom(pb.User(id="alice", attributes=user))
    if chain is not None:
        message.delegation.chain.extend(chain)
    assert check(message.SerializeToString())


@MANY
@given(
    messages(pb.AuthorizeRequest.DESCRIPTOR, depth=3),
    st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), min_size=1, max_size=4),
    st.integers(0, 400),
)
def test_changed_or_cut_bytes_are_read_as_protobuf_reads_them(
    message: pb.AuthorizeRequest, changes: list[tuple[int, int]], cut: int
) -> None:
    raw = bytearray(message.SerializeToString() or b"\x22\x00")
    for at, byte in changes:
        raw[at % len(raw)] = byte
    check_any(bytes(raw[: max(1, len(raw) - cut % 4)]))


@MANY
@given(st.binary(max_size=64))
def test_random_bytes_are_read_as_protobuf_reads_them(raw: bytes) -> None:
    check_any(raw)


def check_any(raw: bytes) -> None:
    """Bytes protobuf refuses are left to it; the others are read as it reads them."""
    try:
        parsed(raw, pb.AuthorizeRequest)
    except RequestError:
        assert plain_parts(raw) is None
        return
    check(raw)


@MANY
@given(
    messages(pb.AuthorizeRequest.DESCRIPTOR, depth=3),
    messages(pb.AuthorizeRequest.DESCRIPTOR, depth=3),
)
def test_two_messages_run_together_are_read_as_protobuf_merges_them(
    first: pb.AuthorizeRequest, second: pb.AuthorizeRequest
) -> None:
    check(first.SerializeToString() + second.SerializeToString())


def test_a_batch_is_read_as_protobuf_reads_it() -> None:
    items = [question(), question(user=pb.User(id="alice")), question()]
    items[2].action = ""
    raw = pb.AuthorizeBatchRequest(requests=items[:2]).SerializeToString()
    fast = read_batch(raw, SCHEMA, True, DEFAULT_BOUNDS, None)
    assert fast is not None
    slow = [request_from_proto(item, SCHEMA, True) for item in items[:2]]
    assert [outcome(lambda r=r: r) for r in fast] == [outcome(lambda r=r: r) for r in slow]
    refused = pb.AuthorizeBatchRequest(requests=items).SerializeToString()
    with pytest.raises(RequestError, match=r"^requests\[2\]\.action: required"):
        read_batch(refused, SCHEMA, True, DEFAULT_BOUNDS, None)
    with_token = pb.AuthorizeBatchRequest(requests=[question(agent_token="t")])
    assert read_batch(with_token.SerializeToString(), SCHEMA, True, DEFAULT_BOUNDS, None) is None


def padded(number: int, wire: int, extra: int) -> bytes:
    """A tag written in ``extra`` more bytes than it needs (its varint padded)."""
    key = number << 3 | wire
    out = bytearray()
    while key > 0x7F:
        out.append(key & 0x7F | 0x80)
        key >>= 7
    out.append(key)
    out[-1] |= 0x80
    out.extend([0x80] * (extra - 1))
    out.append(0)
    return bytes(out)


@pytest.mark.parametrize("extra", [1, 3, 4, 5, 9])
def test_tags_and_lengths_are_taken_in_at_most_five_bytes_as_protobuf_takes_them(
    extra: int,
) -> None:
    """Protobuf reads a tag or a length of up to five bytes, however padded, and refuses
    a longer one: so does the reader (it leaves the longer ones to protobuf)."""
    unasked = question()
    unasked.ClearField("action")
    asked = unasked.SerializeToString()
    by_tag = asked + padded(4, 2, extra) + b"\x09tool.call"
    by_length = asked + b"\x22" + bytes([0x89] + [0x80] * (extra - 1) + [0]) + b"tool.call"
    for raw in (by_tag, by_length):
        size = len(raw) - len(asked) - 10  # the bytes of the tag or the length
        if size <= 5:
            assert check(raw)
        else:
            with pytest.raises(RequestError):
                parsed(raw, pb.AuthorizeRequest)
            assert plain_parts(raw) is None


@MANY
@given(st.lists(messages(pb.AuthorizeRequest.DESCRIPTOR, depth=3), max_size=4))
def test_random_batches_are_read_as_protobuf_reads_them(items: list[pb.AuthorizeRequest]) -> None:
    raw = pb.AuthorizeBatchRequest(requests=items).SerializeToString()
    read = door.batch_parts(raw) if door.batch_parts is not None else None
    each = [plain_parts(item.SerializeToString()) for item in items]
    if read is None:
        assert None in each
        return
    assert [same(parts) for parts, _ in read] == [same(parts) for parts in each]
    assert [size for _, size in read] == [item.ByteSize() for item in items]


def test_a_token_question_reads_only_the_user_it_keeps() -> None:
    """An agent token naming an agent acting alone: a user the question names without an
    id is not read, whatever its attributes hold."""
    message = question(user=pb.User(id="", attributes={"x": pb.Value()}))
    who = Caller("helper", None, ("helper",), frozenset(), None)
    request = request_from_proto(message, SCHEMA, True, who=who)
    assert request.user is None and request.agent["id"] == "helper"


def test_short_ascii_texts_read_again_are_the_texts_read_before() -> None:
    """What the reader's text cache is for: a repeated id or name is not made again. A
    longer text, or one not ASCII, is made each time, and every one reads as sent."""
    raw = question().SerializeToString()
    first, again = plain_parts(raw), plain_parts(raw)
    assert first[4] == "tool.call" and again[4] is first[4]
    for action in ("x" * 32, "y" * 33, "é" * 3, "tool.call"):
        asked = question()
        asked.action = action
        parts = [plain_parts(asked.SerializeToString()) for _ in "ab"]
        assert parts[0][4] == parts[1][4] == action
        assert (parts[0][4] is parts[1][4]) == (len(action) <= 32 and action.isascii())


def test_texts_that_share_a_cache_slot_read_as_sent() -> None:
    """More texts of one length than the cache has slots: some share a slot, and each
    still reads as sent, however often it comes."""
    asked = question()
    for _ in range(2):
        for number in range(3_000):
            asked.action = f"t{number:04}"
            assert plain_parts(asked.SerializeToString())[4] == asked.action
