"""An MCP server over stdio, written with the official SDK, for the proxy to start."""

from tests.pep.mcp_proxy.tools import upstream_server

if __name__ == "__main__":
    upstream_server().run("stdio")
