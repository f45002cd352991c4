"""The admin MCP server's one root error, and where it becomes each MCP answer's error.

Everything the server refuses (an unknown agent, a proposal that does not parse, a bad
time filter, a change the directory rejects) is an :class:`AdminError` whose message says
why and how to fix it. It is turned into the protocol's error here and nowhere else: a
tool answers it as its error result (the SDK's ``ToolError``, which the client sees as
``Error executing tool <name>: <message>``), a resource read as a ``ResourceError``
carrying the same message. Any other exception stays a crash, which the SDK logs and
answers without its text.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar, cast

from mcp.server.mcpserver.exceptions import ResourceError, ToolError

from pep.errors import PepError

P = ParamSpec("P")
R = TypeVar("R")


class AdminError(PepError):
    """A request the server refuses; the message says why and how to fix it."""


def answer_refusals(fn: Callable[P, R]) -> Callable[P, R]:
    """``fn`` (a tool or the resolver of a tool's parameter, plain or async) answering the
    AdminError it raises as the tool's error."""
    return _mapped(fn, ToolError)


def answer_refused_reads(fn: Callable[P, R]) -> Callable[P, R]:
    """``fn`` (a resource's reader) answering the AdminError it raises as the read's error."""
    return _mapped(fn, ResourceError)


def _mapped(fn: Callable[P, R], error: type[Exception]) -> Callable[P, R]:
    """``fn`` raising ``error`` with the message of an AdminError. ``functools.wraps`` keeps
    the name, signature and annotations the SDK reads to describe and resolve it."""
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def refusing_async(*args: Any, **kwargs: Any) -> Any:
            try:
                return await fn(*args, **kwargs)
            except AdminError as exc:
                raise error(str(exc)) from None

        return cast(Callable[P, R], refusing_async)

    @functools.wraps(fn)
    def refusing(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except AdminError as exc:
            raise error(str(exc)) from None

    return refusing
