"""The header fields of the Streamable HTTP transport, as the proxy reads and passes them.

A request's fields are decoded once (:class:`Incoming`): a call reads a dozen of them.
Which fields go on to the upstream (:data:`FORWARDED`) and which come back
(:data:`RETURNED`) is fixed here; everything else (``Authorization``, ``Cookie``…) stays
with the proxy. A field that must be given once (:data:`SINGLETONS`, RFC 9110 §5.3) and is
given twice is refused, so the proxy and the upstream never read different values.
"""

from __future__ import annotations

from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from starlette.requests import Request
from starlette.types import Receive, Scope

SESSION_HEADER = "mcp-session-id"
# Request headers the upstream sees; everything else (Authorization, Cookie…) stays here.
FORWARDED = (
    "accept",
    "content-type",
    "mcp-session-id",
    "mcp-protocol-version",
    "mcp-method",
    "mcp-name",
    "last-event-id",
)
FORWARDED_PREFIX = "mcp-param-"  # MCP request metadata headers (Mcp-Param-<Name>)
# A stateless (2026-07-28) request has no session and no stream to resume: an id it names
# is not passed on, so it cannot reach a session of another caller's
STATELESS_FORWARDED = tuple(f for f in FORWARDED if f not in ("mcp-session-id", "last-event-id"))
RETURNED = ("content-type", "mcp-session-id", "cache-control")
# Fields a request may carry once (RFC 9110 §5.3): two differing values would let the proxy
# and the upstream read different ones.
SINGLETONS = frozenset(
    {"authorization", "content-type", "origin", *FORWARDED} - {"accept"}  # lists may repeat
)


class Incoming(Request):
    """A request to an MCP endpoint, its header fields decoded once into a dict (the first
    of a repeated name, as ``headers.get`` gives): a call reads a dozen of them."""

    def __init__(self, scope: Scope, receive: Receive) -> None:
        super().__init__(scope, receive)
        headers = scope["headers"]
        self.fields = {
            name.decode("latin-1"): value.decode("latin-1") for name, value in reversed(headers)
        }
        self.repeated = len(self.fields) != len(headers)

    def repeated_singleton(self) -> str | None:
        """A field that must be given once but is given more than once, if any."""
        seen: set[str] = set()
        for raw, _ in self.scope["headers"]:
            name: str = raw.decode("latin-1")
            if name in seen and (name in SINGLETONS or name.startswith(FORWARDED_PREFIX)):
                return name
            seen.add(name)
        return None


def is_stateless(request: Incoming) -> bool:
    """Whether the request speaks a stateless protocol revision (2026-07-28 on): no
    sessions, no resumable streams, so ``Mcp-Session-Id`` means nothing."""
    return request.fields.get("mcp-protocol-version") in MODERN_PROTOCOL_VERSIONS


def media_type(content_type: str | None) -> str:
    """The media type of a ``Content-Type`` value, without its parameters."""
    return (content_type or "").partition(";")[0].strip().lower()
