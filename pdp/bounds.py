"""How large a decision request may be, and how its size is measured, at every door.

A request that is over a bound is refused before it is decided: nothing is counted
against a limit and nothing is recorded. The bounds (docs/limits.md lists them with their
settings and each door's answer):

- a gRPC message: at most ``message_bytes`` (the server's
  ``grpc.max_receive_message_length``; the PEP client sends no larger). gRPC itself
  refuses a larger one, RESOURCE_EXHAUSTED, before it is read whole;
- each attribute map (context, resource attributes, agent and user attributes): at most
  ``attributes`` entries;
- each attribute's value: at most ``value_bytes``, or ``undeclared_bytes`` when the
  schema does not declare the attribute. No rule can read an undeclared attribute (the
  checker refuses one that tries), so such a value only travels to the audit record:
  it is capped far lower, and a larger one is refused, not cut;
- the whole request (its ids, action and every attribute's name and value): at most
  ``request_bytes``.

A value's size is what it carries, the same at every door: the UTF-8 bytes of each
string in it (map keys included) and one byte for each number, bool or other scalar.
That is never more than it takes on any wire (a JSON text, a protobuf message), so a
message no larger than a bound holds no value over it. Refusals are
:class:`RequestTooLarge`, a :class:`RequestError` each door answers as its protocol says
a request is too large (gRPC RESOURCE_EXHAUSTED, HTTP 413).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

from pdp.model import RequestError

SCALAR_BYTES = 1  # a number, bool, risk level, amount, time or address: no wire has less


class RequestTooLarge(RequestError):
    """A request over one of the bounds; the message names the field and the bound."""


@dataclass(frozen=True)
class Bounds:
    """The bounds on one decision request (see the module's text)."""

    message_bytes: int = 1 << 20
    attributes: int = 64
    value_bytes: int = 16 << 10
    undeclared_bytes: int = 1 << 10
    request_bytes: int = 64 << 10

    def problem(self) -> str | None:
        """Why these bounds cannot be used together; None when they can."""
        for name in ("message_bytes", "attributes", "value_bytes", "undeclared_bytes"):
            if getattr(self, name) <= 0:
                return f"max_{name}: a positive number"
        if not self.undeclared_bytes <= self.value_bytes <= self.request_bytes:
            return (
                "max_undeclared_bytes <= max_value_bytes <= max_request_bytes: an attribute "
                "fits in a request, and an undeclared one is capped lower than a declared one"
            )
        if self.request_bytes > self.message_bytes:
            return "max_request_bytes: at most max_message_bytes (a request is one message)"
        return None


DEFAULT_BOUNDS = Bounds()


def size_of(value: Any) -> int:
    """The size of one attribute value (see the module's text), walked without recursion
    so that no nesting can exhaust the stack."""
    if value.__class__ is str:
        return _text_bytes(value)
    total = 0
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            total += _text_bytes(item)
        elif isinstance(item, Mapping):
            stack.extend(str(key) for key in item)
            stack.extend(item.values())
        elif isinstance(item, list | tuple | set | frozenset):
            stack.extend(item)
        else:
            total += SCALAR_BYTES
    return total


def _text_bytes(text: str) -> int:
    # isascii() reads a flag CPython keeps on the string: no pass over a long one
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


class Measure:
    """One request's size as its parts are read, refused as soon as a bound is passed.
    Every request pays for it, so the common case (ASCII text) is measured inline."""

    __slots__ = ("bounds", "total")

    def __init__(self, bounds: Bounds = DEFAULT_BOUNDS) -> None:
        self.bounds = bounds
        self.total = 0

    def text(self, *parts: str | None) -> None:
        """Count ids and the action towards the request's total."""
        total = self.total
        for part in parts:
            if part:
                total += len(part) if part.isascii() else _text_bytes(part)
        self.total = total
        if total > self.bounds.request_bytes:
            self._over()

    def count(self, how_many: int, where: str) -> None:
        """Refuse a map of more attributes than the bound."""
        most = self.bounds.attributes
        if how_many > most:
            raise RequestTooLarge(
                f"{where}: {how_many} attributes, over the {most:,} one map may have "
                "(max_attributes)"
            )

    def value(self, path: str, key: str, value: Any, declared: bool) -> None:
        """Measure one attribute; refuse it over its bound, or the request over its own."""
        size = len(value) if value.__class__ is str and value.isascii() else size_of(value)
        bounds = self.bounds
        if size > (bounds.value_bytes if declared else bounds.undeclared_bytes):
            self._refuse(path, size, declared)
        self.total += size + (len(key) if key.isascii() else _text_bytes(key))
        if self.total > bounds.request_bytes:
            self._over()

    def _refuse(self, path: str, size: int, declared: bool) -> NoReturn:
        bounds = self.bounds
        if declared:
            raise RequestTooLarge(
                f"{path}: {size:,} bytes, over the {bounds.value_bytes:,} an attribute's "
                "value may have (max_value_bytes)"
            )
        raise RequestTooLarge(
            f"{path}: {size:,} bytes, over the {bounds.undeclared_bytes:,} the value of "
            "an attribute the schema does not declare may have (max_undeclared_bytes); "
            "declare it in the schema, or leave it out"
        )

    def _over(self) -> NoReturn:
        raise RequestTooLarge(
            f"the request is over the {self.bounds.request_bytes:,} bytes a decision request "
            "may have (max_request_bytes)"
        )
