"""``tessera admin-mcp``: an MCP server to administer Tessera from an IDE's AI chat.

:mod:`pep.admin_mcp.server` holds the tools and resources, :mod:`pep.admin_mcp.directory`
the directory and credential operations, :mod:`pep.admin_mcp.policies` the policy
proposals, replays and explanations, and :mod:`pep.admin_mcp.http` the Streamable HTTP
transport behind Tessera's own OAuth. See docs/admin-mcp.md.
"""
