"""Hypothesis strategies for protobuf messages, from their descriptors: every field maybe
set, to any value its type can carry (NaN and infinities, the integers' extremes, enum
numbers no enum names, any text, any bytes), nested a few levels deep.

Written here rather than taken from a package: the protobuf strategies on PyPI are
unmaintained (last released 2015 and 2019) and predate protobuf's upb runtime, and a
descriptor walk is a page of code.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import strategies as st

F = FieldDescriptor
INTEGERS = {
    F.TYPE_INT32: (-(2**31), 2**31 - 1),
    F.TYPE_SINT32: (-(2**31), 2**31 - 1),
    F.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    F.TYPE_INT64: (-(2**63), 2**63 - 1),
    F.TYPE_SINT64: (-(2**63), 2**63 - 1),
    F.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    F.TYPE_UINT32: (0, 2**32 - 1),
    F.TYPE_FIXED32: (0, 2**32 - 1),
    F.TYPE_UINT64: (0, 2**64 - 1),
    F.TYPE_FIXED64: (0, 2**64 - 1),
}


def _scalar(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    kind = field.type
    if kind in INTEGERS:
        low, high = INTEGERS[kind]
        return st.integers(low, high) | st.sampled_from([low, high, 0, -1 if low else 1])
    if kind == F.TYPE_DOUBLE:
        return st.floats()
    if kind == F.TYPE_FLOAT:
        return st.floats(width=32)
    if kind == F.TYPE_BOOL:
        return st.booleans()
    if kind == F.TYPE_STRING:
        return st.text(max_size=30)
    if kind == F.TYPE_BYTES:
        return st.binary(max_size=30)
    assert kind == F.TYPE_ENUM, field.full_name
    numbers = [value.number for value in field.enum_type.values]
    return st.sampled_from(numbers) | st.integers(-3, 1_000)


def _single(field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any] | None:
    """Values of one (not repeated) field; None when it is a message too deep to set."""
    if field.type != F.TYPE_MESSAGE:
        return _scalar(field)
    if depth <= 0:
        return None
    return messages(field.message_type, depth - 1)


def _field(field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any] | None:
    message = field.message_type
    if message is not None and message.GetOptions().map_entry:
        keys = _scalar(message.fields_by_name["key"])
        values = _single(message.fields_by_name["value"], depth)
        return None if values is None else st.dictionaries(keys, values, max_size=3)
    single = _single(field, depth)
    if single is None or not field.is_repeated:
        return single
    return st.lists(single, max_size=3)


def messages(descriptor: Descriptor, depth: int = 4) -> st.SearchStrategy[Message]:
    """Messages of ``descriptor``'s type, each field set or not, sub-messages ``depth``
    levels deep at most."""
    kind = GetMessageClass(descriptor)
    fields = {}
    for field in descriptor.fields:
        values = _field(field, depth)
        if values is not None:
            fields[field.name] = values
    return st.fixed_dictionaries({}, optional=fields).map(lambda values: kind(**values))
