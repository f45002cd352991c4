"""``tessera admin-mcp``: an MCP server to administer Tessera from an IDE's AI chat.

:mod:`pep.admin_mcp.server` builds the server and serves it over stdio;
:mod:`pep.admin_mcp.tools` holds its tools, one module per concern (the directory, agents,
credentials, policies, decisions, the audit trails), and :mod:`pep.admin_mcp.resources`
its resources. :mod:`pep.admin_mcp.directory` holds the directory and credential
operations, :mod:`pep.admin_mcp.naming` how every tool resolves an agent's id or name,
:mod:`pep.admin_mcp.policies` the policy proposals and what-if,
:mod:`pep.admin_mcp.replay` past requests rebuilt from the trail,
:mod:`pep.admin_mcp.explain` a recorded decision explained,
:mod:`pep.admin_mcp.errors` the package's one root error and where it becomes each MCP
error, and :mod:`pep.admin_mcp.http` the Streamable HTTP transport behind Tessera's own
OAuth. See docs/admin-mcp.md.
"""
