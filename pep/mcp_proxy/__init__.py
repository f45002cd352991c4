"""The OAuth 2.1 resource server that puts any MCP server behind Tessera."""
