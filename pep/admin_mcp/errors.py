"""The admin MCP server's one root error, and where it becomes each MCP answer's error.

Everything the server refuses (an unknown agent, a proposal that does not parse, a bad
time filter, a change the directory rejects) is an :class:`AdminError` whose message says
why and how to fix it. It is turned into the protocol's error here and nowhere else: a
tool answers it as its error result (the SDK's ``ToolError``, which the client sees as
``Error executing tool <name>: <message>``), a resource read as a ``ResourceError``
carrying the same message. Any other exception stays a crash, which the SDK logs and
answers without its text.

The SDK refuses on its own too: arguments that do not fit a tool's schema, in pydantic's
words (its generated model ``suspend_agentArguments``, Python type names, a link), and
the confirmation a write asks for, naming the confirming function
(``_suspend_agent.<locals>.ask_suspend``). :func:`in_plain_words` rewrites those for
:class:`pep.admin_mcp.server.AdminServer`, so no answer carries a name of this code.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar, cast

from mcp.server.mcpserver.exceptions import ResourceError, ToolError, UnexpectedToolError
from mcp.shared.exceptions import MCPError
from mcp.types import MISSING_REQUIRED_CLIENT_CAPABILITY
from pydantic import ValidationError

from pep.errors import PepError

P = ParamSpec("P")
R = TypeVar("R")


class AdminError(PepError):
    """A request the server refuses; the message says why and how to fix it."""


class Refused(ToolError, PepError):
    """An AdminError as the SDK's tool error: what :func:`in_plain_words` leaves alone."""


CANNOT_CONFIRM = (
    "{tool} changes Tessera, so it first asks the administrator to confirm the change, and "
    "this MCP client cannot ask: it does not support elicitation (form mode). Nothing was "
    "changed. Make the change from an MCP client that supports elicitation; no tool "
    "argument can stand in for the confirmation, which must come from the person."
)
UNREADABLE_ANSWER = (
    "Error executing tool {tool}: the client's answer to the confirmation question does not "
    "fit it (an accepted answer carries confirm: true or false); nothing was changed"
)


def in_plain_words(tool: str, exc: Exception) -> Exception:
    """The error to answer for ``exc``, raised calling ``tool``: the SDK's own refusals
    (bad arguments, the confirmation) reworded without its internal names, a missing
    elicitation capability keeping its JSON-RPC code and the ``requiredCapabilities``
    data a client reads; anything else as it is."""
    if isinstance(exc, MCPError) and exc.code == MISSING_REQUIRED_CLIENT_CAPABILITY:
        return MCPError(exc.code, CANNOT_CONFIRM.format(tool=tool), exc.data)
    if not isinstance(exc, ToolError) or isinstance(exc, UnexpectedToolError):
        return exc  # a crash's answer already says nothing of it
    cause = exc.__cause__
    if isinstance(cause, ValidationError):
        problems = "; ".join(_problem(error) for error in cause.errors())
        return ToolError(f"Error executing tool {tool}: bad arguments: {problems}")
    if isinstance(cause, ToolError) and not isinstance(cause, Refused | UnexpectedToolError):
        return ToolError(UNREADABLE_ANSWER.format(tool=tool))  # the confirmation's resolver
    return exc


def _problem(error: Any) -> str:
    """One argument pydantic refused: where, why, and the value sent when it is a short
    plain one (a long text or a whole object is not repeated back)."""
    where = ".".join(str(part) for part in error["loc"])
    value = error.get("input")
    shown = isinstance(value, str | int | float) and len(repr(value)) <= 40
    return f"{where}: {error['msg']}" + (f", not {value!r}" if shown else "")


def answer_refusals(fn: Callable[P, R]) -> Callable[P, R]:
    """``fn`` (a tool or the resolver of a tool's parameter, plain or async) answering the
    AdminError it raises as the tool's error."""
    return _mapped(fn, Refused)


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
