"""The enforcement plane's errors: one root, so that a door can map them in one place.

Every error the enforcement plane raises on purpose derives from :class:`PepError`: the
PEP client's :class:`pep.client.TesseraError` (the decision service could not answer),
the admin MCP server's :class:`pep.admin_mcp.errors.AdminError`, and the MCP auth
proxy's: a setting that cannot be used, a token refused, a tool argument that cannot be
put in the decision's context, an upstream (or its credential) that fails, an answer
over the size limit. Those that callers catch as ``ValueError`` still are one.

Where they become a protocol's error: the admin MCP server answers an AdminError as the
tool's or the read's error (:mod:`pep.admin_mcp.errors`); the MCP proxy answers a refused
token with an RFC 6750 §3.1 challenge, an unusable argument with JSON-RPC ``-32602`` and
an upstream that fails with JSON-RPC ``-32603``; ``tessera mcp-proxy`` prints a setting
that cannot be used and exits. The PEP client is no door: it raises TesseraError to the
program that embeds it, when built with ``on_error="raise"``.
"""

from __future__ import annotations


class PepError(Exception):
    """The root of the enforcement plane's errors."""
