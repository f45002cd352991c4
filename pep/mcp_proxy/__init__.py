"""The OAuth 2.1 resource server that puts any MCP server behind Tessera.

A request to an MCP endpoint goes through three modules in turn. :mod:`pep.mcp_proxy.app`
is the HTTP face: the Starlette application, its routes and the checks every request passes
(origin, header fields given twice, token and scopes, sessions, media types, the body),
the protected resource metadata and the consent page; :mod:`pep.mcp_proxy.headers` holds
the transport's header fields and :mod:`pep.mcp_proxy.answers` the answers the proxy
writes itself. :mod:`pep.mcp_proxy.plan` is the per-call plan: which calls of a message or
batch are decided, the answer to each deny (consent asked for, or refused), the lists to
filter. :mod:`pep.mcp_proxy.relay` is the upstream relay: what the plan forwards sent on,
and the answer brought back, rewritten, or turned into errors when the upstream fails.

Around them: :mod:`~pep.mcp_proxy.tokens` (who is calling), :mod:`~pep.mcp_proxy.challenges`
(the 401 and 403 answers), :mod:`~pep.mcp_proxy.decisions` (asking the PDP, or deciding in
process), :mod:`~pep.mcp_proxy.consent` (what a user can be asked for: consents first, then
a step-up), :mod:`~pep.mcp_proxy.credentials` (the upstream's own credential),
:mod:`~pep.mcp_proxy.upstream` and :mod:`~pep.mcp_proxy.stdio` (the two kinds of
upstream), :mod:`~pep.mcp_proxy.jsonrpc` (messages and SSE), :mod:`~pep.mcp_proxy.config`,
:mod:`~pep.mcp_proxy.metrics`, :mod:`~pep.mcp_proxy.serve` and :mod:`~pep.mcp_proxy.cli`.
See docs/mcp.md.
"""
