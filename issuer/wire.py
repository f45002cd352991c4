"""What arrives over HTTP, read within bounds: request bodies and JSON documents.

Every HTTP door reads its body and parses its JSON here (SCIM, OAuth, AuthZEN, the MCP
proxy), so the bounds are one set and are documented once, in docs/limits.md:

- a body is at most the door's byte limit (413 beyond it) and arrives whole within
  :data:`READ_TIMEOUT` seconds (408, RFC 9110 §15.5.9, for a slow or short body);
- a JSON document is RFC 8259 text in UTF-8 with no NaN or Infinity, no lone surrogate
  (RFC 8259 §8.2: such text is not interoperable), no number a double cannot hold, and at
  most :data:`MAX_DEPTH` arrays and objects inside one another.

Integers are read exactly, up to :data:`MAX_DIGITS` digits, so a document relayed after
reading says what it said. Each refusal is a :class:`WireError`
whose ``status`` is the HTTP status that fits; each door answers it in its protocol's
own error (SCIM ``invalidSyntax``, OAuth ``invalid_request``, JSON-RPC −32700).
"""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

import orjson
from starlette.requests import ClientDisconnect, Request

from issuer.errors import IssuerError

MAX_DEPTH = 64  # arrays and objects inside one another
MAX_DIGITS = 4300  # of an integer (Python's own bound on converting text to int)
READ_TIMEOUT = 10.0  # seconds for a whole body, from the first read

# orjson reads an integer outside [-2**63, 2**64) as a double, losing digits: a document
# with a run of 19 digits or more (rare: long ids, big numbers; -2**63 - 1 has 19) is read
# by the exact parser. The run is found by mapping every digit to "0" and all else to " "
# (5× a regex's speed).
_DIGITS_AS_ZEROS = bytes(0x30 if 0x30 <= b <= 0x39 else 0x20 for b in range(256))
_LONG_RUN = b"0" * 19


class WireError(IssuerError, ValueError):
    """A body or a JSON document refused; ``status`` is the HTTP status that fits."""

    status = 400


class NotJson(WireError):
    """The body is not JSON as RFC 8259 and these bounds define it."""


class TooDeep(NotJson):
    """The document nests deeper than the bound."""


class TooLong(NotJson):
    """A number with more digits than the bound."""


class TooLarge(WireError):
    """The body is larger than the door takes."""

    status = 413


class TooSlow(WireError):
    """The body did not arrive whole in time."""

    status = 408


class ClientGone(WireError):
    """The client closed the connection before its body arrived whole."""


def read_json(raw: bytes | bytearray | str, max_depth: int = MAX_DEPTH) -> Any:
    """The JSON value of ``raw``; :class:`NotJson` or :class:`TooDeep` when it is not
    one within the bounds."""
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    if _LONG_RUN in data.translate(_DIGITS_AS_ZEROS):
        return _read_exactly(bytes(data), max_depth)
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        if "depth" in str(exc):
            raise TooDeep(f"the document nests deeper than {max_depth} levels") from None
        raise NotJson(f"the document is not JSON: {exc}") from None
    # each level opens with a bracket: no more brackets than levels, no walk needed
    if data.count(b"[") + data.count(b"{") > max_depth:
        _walk(value, max_depth, strings=False)
    return value


def _read_exactly(data: bytes, max_depth: int) -> Any:
    """The standard parser, exact for big integers, held to what orjson refuses."""
    try:
        value = json.loads(data, parse_constant=_no_constant, parse_float=_finite, parse_int=_int)
    except WireError:
        raise
    except RecursionError:
        raise TooDeep(f"the document nests deeper than {max_depth} levels") from None
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError included
        raise NotJson(f"the document is not JSON: {exc}") from None
    _walk(value, max_depth, strings=True)
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def _int(text: str) -> int:
    digits = len(text.lstrip("-"))
    if digits > MAX_DIGITS:
        raise TooLong(f"the document holds a number of {digits:,} digits; at most {MAX_DIGITS:,}")
    return int(text)


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"the number {text[:20]}… is too large for a double")
    return number


def _walk(value: Any, max_depth: int, strings: bool) -> None:
    """Refuse ``value`` if it nests deeper than ``max_depth`` or (with ``strings``) holds
    a string with a lone surrogate; iterative, so no depth exhausts the stack."""
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict):
            children: Any = item.values()
            if strings:
                children = [*item.keys(), *children]
        elif isinstance(item, list):
            children = item
        else:
            if strings and isinstance(item, str) and not _encodable(item):
                raise NotJson("the document is not JSON: a string holds a lone surrogate")
            continue
        if depth > max_depth:
            raise TooDeep(f"the document nests deeper than {max_depth} levels")
        pending.extend((child, depth + 1) for child in children)


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


async def read_body(request: Request, limit: int, timeout: float | None = None) -> bytes:
    """The request's whole body: :class:`TooLarge` over ``limit`` bytes (declared or
    sent), :class:`TooSlow` when it has not arrived whole within ``timeout`` seconds
    (:data:`READ_TIMEOUT`, read when called, unless given)."""
    timeout = READ_TIMEOUT if timeout is None else timeout
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"the body is larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():  # bounded also without a Content-Length
                size += len(chunk)
                if size > limit:
                    raise TooLarge(f"the body is larger than {limit} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise TooSlow(f"the body did not arrive within {timeout:g} seconds") from None
    except ClientDisconnect:
        raise ClientGone("the client closed the connection before its body arrived") from None
    return b"".join(chunks)
