"""Protobuf bytes written by hand: messages nested deeper than the library builds or
parses, as a client of another make could send them."""

from __future__ import annotations

from google.protobuf import struct_pb2
from google.protobuf.descriptor import Descriptor

from pdp.doors.grpc import varint
from pdp.serve.proto import authorizer_pb2 as pb


def number(descriptor: Descriptor, name: str) -> int:
    return int(descriptor.fields_by_name[name].number)


def field(tag: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2): its tag, its length, its bytes."""
    return varint(tag << 3 | 2) + varint(len(payload)) + payload


def entry(tag: int, key: str, value: bytes) -> bytes:
    """One entry of a map field: key 1, value 2."""
    return field(tag, field(1, key.encode()) + field(2, value))


def nested_value(lists: int) -> bytes:
    """A ``tessera.v1.Value``: a string in ``lists`` lists, one inside the other."""
    value = field(number(pb.Value.DESCRIPTOR, "string"), b"x")
    for _ in range(lists):
        inner = field(number(pb.ValueList.DESCRIPTOR, "values"), value)
        value = field(number(pb.Value.DESCRIPTOR, "list"), inner)
    return value


def nested_struct(lists: int) -> bytes:
    """A ``google.protobuf.Struct`` holding a string in ``lists`` lists, one inside the
    other, under the key ``deep``."""
    value = field(number(struct_pb2.Value.DESCRIPTOR, "string_value"), b"x")
    for _ in range(lists):
        inner = field(number(struct_pb2.ListValue.DESCRIPTOR, "values"), value)
        value = field(number(struct_pb2.Value.DESCRIPTOR, "list_value"), inner)
    return entry(number(struct_pb2.Struct.DESCRIPTOR, "fields"), "deep", value)
