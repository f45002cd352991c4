"""Tessera enforcement plane: the PEP client stub, the MCP auth proxy, the admin MCP server."""
