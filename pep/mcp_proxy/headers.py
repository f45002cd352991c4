"""The header fields of the Streamable HTTP transport, as the proxy reads and passes them.

A request's fields are decoded once (:class:`Incoming`): a call reads a dozen of them.
Which fields go on to the upstream (:data:`FORWARDED`) and which come back
(:data:`RETURNED`) is fixed here; everything else (``Authorization``, ``Cookie``…) stays
with the proxy. A field that must be given once (:data:`SINGLETONS`, RFC 9110 §5.3) and is
given twice is refused, so the proxy and the upstream never read different values.

``MCP-Protocol-Version`` says which revision a request speaks; without it a server
assumes 2025-03-26 (MCP 2025-06-18, Streamable HTTP, "Protocol Version Header"). JSON-RPC
batches are part of the revisions before 2025-06-18 only (:data:`BATCHING_VERSIONS`).
"""

from __future__ import annotations

from mcp_types.version import KNOWN_PROTOCOL_VERSIONS, MODERN_PROTOCOL_VERSIONS
from starlette.requests import Request
from starlette.types import Receive, Scope

SESSION_HEADER = "mcp-session-id"
VERSION_HEADER = "mcp-protocol-version"
ASSUMED_VERSION = "2025-03-26"  # without the header (MCP 2025-06-18, Streamable HTTP)
# MCP 2025-06-18 removed JSON-RPC batching: the revisions before it keep it, and a revision
# the proxy does not know is not taken to have it
BATCHING_VERSIONS = KNOWN_PROTOCOL_VERSIONS[: KNOWN_PROTOCOL_VERSIONS.index("2025-06-18")]
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
    return request.fields.get(VERSION_HEADER) in MODERN_PROTOCOL_VERSIONS


def batch_refusal(request: Incoming) -> str | None:
    """Why the request's protocol revision has no JSON-RPC batches; None when it has them
    (revisions before 2025-06-18, and a request without ``MCP-Protocol-Version``)."""
    version = request.fields.get(VERSION_HEADER, ASSUMED_VERSION)
    if version in BATCHING_VERSIONS:
        return None
    if version in KNOWN_PROTOCOL_VERSIONS:
        return f"MCP {version} has no JSON-RPC batches (removed in 2025-06-18): send each alone"
    return f"MCP-Protocol-Version {version!r} is not a revision known to have JSON-RPC batches"


def media_type(content_type: str | None) -> str:
    """The media type of a ``Content-Type`` value, without its parameters."""
    return (content_type or "").partition(";")[0].strip().lower()
