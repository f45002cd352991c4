# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""An ``AuthorizeRequest``'s bytes read straight into the plain values the gRPC door
types, without a protobuf message in between (see :mod:`pdp.doors.grpc`).

Reading a upb message from Python makes an object for each message, map and value it
touches, and that was the largest part of the door's cost per call. This reader walks the
Protocol Buffers wire format once and makes only the values the door keeps.

It reads the common shape of a question and nothing else. Anything else makes
:func:`plain_parts` answer None, and the door parses the bytes with protobuf as before:
its answers and errors stay protobuf's. That covers bytes that are not a valid message,
a ``subject`` or a non-empty ``agent_token``, a field number or wire type this file does
not know, a field the message says twice, a ``Value`` with no kind or with two, and
nesting deeper than :data:`MAX_DEPTH`. So what it does answer is what reading the message
parsed by protobuf gives (``tests/doors/test_wire.py`` holds the two to it).
"""

from libc.stdint cimport int64_t, uint64_t
from libc.string cimport memcmp, memcpy

from cpython.unicode cimport PyUnicode_DecodeUTF8


cdef extern from "Python.h":
    Py_ssize_t PyUnicode_GET_LENGTH(object)
    void* PyUnicode_DATA(object)
    bint PyUnicode_IS_ASCII(object)

cdef enum:
    # Values within values (a list in a map in a list...): deeper, protobuf reads them.
    MAX_DEPTH = 16
    # Texts kept to be read again (see text()): how many, how long at most.
    SEEN_SLOTS = 1024
    SEEN_BYTES = 32
    # Wire types (the low three bits of a tag).
    VARINT = 0
    I64 = 1
    LEN = 2


class _Declined(Exception):
    """Bytes this reader leaves to protobuf."""


cdef struct Span:
    const unsigned char* at
    const unsigned char* end


cdef int decline() except -1:
    raise _Declined


cdef int varint(Span* span, uint64_t* out) except -1:
    cdef uint64_t value = 0
    cdef unsigned int shift = 0
    cdef unsigned char byte
    while span.at < span.end and shift < 64:
        byte = span.at[0]
        span.at += 1
        value |= <uint64_t>(byte & 0x7F) << shift
        if byte < 0x80:
            if shift == 63 and byte > 1:
                return decline()  # more than 64 bits
            out[0] = value
            return 0
        shift += 7
    return decline()  # cut short, or longer than ten bytes


cdef int short_varint(Span* span, uint64_t* out) except -1:
    """A tag or a length: protobuf refuses either in more than five bytes, or a length
    of 2 GiB or more."""
    cdef const unsigned char* start = span.at
    varint(span, out)
    if span.at - start > 5 or out[0] >> 31:
        return decline()
    return 0


cdef int tag(Span* span, unsigned int* number, unsigned int* wire) except -1:
    cdef uint64_t key
    short_varint(span, &key)
    if key >> 3 == 0:
        return decline()
    number[0] = <unsigned int>(key >> 3)
    wire[0] = <unsigned int>(key & 7)
    return 0


cdef int inner(Span* span, unsigned int wire, Span* out) except -1:
    """The bytes of a length-delimited field whose tag was just read."""
    cdef uint64_t size
    if wire != LEN:
        return decline()
    short_varint(span, &size)
    if size > <uint64_t>(span.end - span.at):
        return decline()
    out.at = span.at
    out.end = span.at + size
    span.at += size
    return 0


# Short ASCII texts read before, by a hash of their bytes: the same ids, names and
# values come in call after call, and one already made is neither allocated again nor
# hashed again when it is looked up. A slot holds one text; another with the same hash
# replaces it, so the cache never grows and no input can make it slow.
cdef list _seen = [None] * SEEN_SLOTS


cdef str text(Span* span, unsigned int wire):
    """A string field's value (UTF-8, as protobuf requires)."""
    cdef Span value
    cdef Py_ssize_t size
    cdef uint64_t slot = 14695981039346656037ULL  # FNV-1a
    cdef const unsigned char* at
    cdef object seen
    inner(span, wire, &value)
    size = value.end - value.at
    if size <= SEEN_BYTES:
        at = value.at
        while at < value.end:
            slot = (slot ^ at[0]) * 1099511628211ULL
            at += 1
        slot &= SEEN_SLOTS - 1
        seen = _seen[slot]
        if (
            seen is not None
            and PyUnicode_GET_LENGTH(seen) == size
            and memcmp(PyUnicode_DATA(seen), value.at, size) == 0
        ):
            return seen
    try:
        made = PyUnicode_DecodeUTF8(<const char*>value.at, size, NULL)
    except UnicodeDecodeError:
        raise _Declined from None
    if size <= SEEN_BYTES and PyUnicode_IS_ASCII(made):
        _seen[slot] = made
    return made


cdef object plain_value(Span* span, unsigned int wire, int depth):
    """One ``Value`` message as the plain value it carries (its one kind set)."""
    cdef Span value, item
    cdef unsigned int number, item_wire
    cdef uint64_t bits
    cdef double number_value
    cdef int byte
    cdef object out = None
    cdef bint seen = False
    if depth > MAX_DEPTH:
        decline()
    inner(span, wire, &value)
    while value.at < value.end:
        tag(&value, &number, &item_wire)
        if seen:
            decline()  # two kinds, or one twice: protobuf keeps the last
        seen = True
        if number == 1 or 5 <= number <= 8:  # string, risk, duration, time, ip
            out = text(&value, item_wire)
        elif number == 2:  # number: a little-endian double
            if item_wire != I64 or value.end - value.at < 8:
                decline()
            bits = 0
            for byte in range(7, -1, -1):
                bits = bits << 8 | value.at[byte]
            memcpy(&number_value, &bits, 8)
            value.at += 8
            out = number_value
        elif number == 3:  # bool
            if item_wire != VARINT:
                decline()
            varint(&value, &bits)
            out = bits != 0
        elif number == 12:  # integer: a two's complement int64
            if item_wire != VARINT:
                decline()
            varint(&value, &bits)
            out = <int64_t>bits
        elif number == 4:  # money
            inner(&value, item_wire, &item)
            out = money(&item)
        elif number == 9:  # strings
            out = repeated(&value, item_wire, -1)
        elif number == 10:  # list
            out = repeated(&value, item_wire, depth + 1)
        elif number == 11:  # map
            inner(&value, item_wire, &item)
            out = {}
            while item.at < item.end:
                tag(&item, &number, &item_wire)
                if number != 1:
                    decline()
                entry(&item, item_wire, out, depth + 1)
        else:
            decline()
    if not seen:
        decline()  # no kind set: protobuf's reading names the field
    return out


cdef list repeated(Span* span, unsigned int wire, int depth):
    """A ``StringList``'s or a ``Delegation``'s texts (``depth`` -1), or a ``ValueList``'s
    plain values: the message's field 1, repeated."""
    cdef Span item
    cdef unsigned int number, item_wire
    cdef list values = []
    inner(span, wire, &item)
    while item.at < item.end:
        tag(&item, &number, &item_wire)
        if number != 1:
            decline()
        if depth < 0:
            values.append(text(&item, item_wire))
        else:
            values.append(plain_value(&item, item_wire, depth))
    return values


cdef dict money(Span* span):
    cdef unsigned int number, wire
    cdef object amount = None, currency = None
    while span.at < span.end:
        tag(span, &number, &wire)
        if number == 1 and amount is None:
            amount = text(span, wire)
        elif number == 2 and currency is None:
            currency = text(span, wire)
        else:
            decline()
    return {"amount": amount or "", "currency": currency or ""}


cdef int entry(Span* span, unsigned int wire, dict into, int depth) except -1:
    """One entry of a ``map<string, Value>`` into ``into`` (a later key replaces an
    earlier one, as in protobuf)."""
    cdef Span item
    cdef unsigned int number, item_wire
    cdef object key = None, value = None
    cdef bint has_value = False
    inner(span, wire, &item)
    while item.at < item.end:
        tag(&item, &number, &item_wire)
        if number == 1 and key is None:
            key = text(&item, item_wire)
        elif number == 2 and not has_value:
            value = plain_value(&item, item_wire, depth)
            has_value = True
        else:
            decline()
    if not has_value:
        decline()  # an entry without a value holds an empty Value
    into["" if key is None else key] = value
    return 0


cdef tuple entity(Span* span, unsigned int wire, unsigned int id_field):
    """An ``Agent`` or ``User`` (id 1, attributes 2) or a ``Resource``'s id and attributes
    (type 1, id 2, attributes 3): (type, id, attributes)."""
    cdef Span item
    cdef unsigned int number, item_wire
    cdef object kind = None, ident = None
    cdef dict attributes = {}
    inner(span, wire, &item)
    while item.at < item.end:
        tag(&item, &number, &item_wire)
        if number == id_field and ident is None:
            ident = text(&item, item_wire)
        elif number == id_field + 1:
            entry(&item, item_wire, attributes, 0)
        elif number == 1 and id_field == 2 and kind is None:
            kind = text(&item, item_wire)
        else:
            decline()
    return (kind or "", ident or "", attributes)


cdef tuple request_parts(Span* span):
    """An ``AuthorizeRequest``'s parts (see :func:`plain_parts`)."""
    cdef unsigned int number, wire
    cdef tuple agent = None, user = None, resource = None, actors = None
    cdef object action = None
    cdef dict context = {}
    while span.at < span.end:
        tag(span, &number, &wire)
        if number == 1 and agent is None:
            agent = entity(span, wire, 1)
        elif number == 2 and user is None:
            user = entity(span, wire, 1)
        elif number == 3 and actors is None:
            actors = tuple(repeated(span, wire, -1))  # a Delegation's chain
        elif number == 4 and action is None:
            action = text(span, wire)
        elif number == 5 and resource is None:
            resource = entity(span, wire, 2)
        elif number == 6:
            entry(span, wire, context, 0)
        elif number == 7 and not text(span, wire):
            continue  # an empty agent_token is no token
        else:
            decline()  # a subject, an agent token, a field said twice, or unknown
    if agent is None:
        agent = ("", "", {})
    if resource is None:
        resource = ("", "", {})
    return (
        agent[1],
        agent[2],
        None if user is None else (user[1], user[2]),
        actors,
        action or "",
        resource[0],
        resource[1],
        resource[2],
        context,
    )


cdef int whole(bytes raw, Span* span) except -1:
    cdef const char* data = raw
    span.at = <const unsigned char*>data
    span.end = span.at + len(raw)
    return 0


def plain_parts(bytes raw not None):
    """``raw``, an ``AuthorizeRequest``, as ``(agent id, agent attributes, user,
    delegation chain, action, resource type, resource id, resource attributes, context)``
    with every attribute a plain value: ``user`` is None or ``(id, attributes)`` and the
    chain None when the message has no ``delegation``. None when the bytes are not of the
    shape read here (see the module's text); protobuf then reads them."""
    cdef Span span
    whole(raw, &span)
    try:
        return request_parts(&span)
    except _Declined:
        return None


def batch_parts(bytes raw not None):
    """``raw``, an ``AuthorizeBatchRequest``, as a list of each request's parts (as
    :func:`plain_parts` reads them) and its size in bytes; None when any of them, or the
    batch, is not of the shape read here."""
    cdef Span span, item
    cdef unsigned int number, wire
    cdef list requests = []
    cdef Py_ssize_t size
    whole(raw, &span)
    try:
        while span.at < span.end:
            tag(&span, &number, &wire)
            if number != 1:
                return None
            inner(&span, wire, &item)
            size = item.end - item.at
            requests.append((request_parts(&item), size))
    except _Declined:
        return None
    return requests
