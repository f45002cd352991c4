"""The MCP server behind the proxy in tests, written with the official SDK: a few tools
that the shipped policies decide, and prompts and resources that test policies decide."""

from __future__ import annotations

import asyncio
from typing import Any

from mcp.server.mcpserver import MCPServer

SLOW = 3.0  # seconds read_file takes: beyond the slow upstream's timeout
PUBLIC_DOCUMENT = "docs://public/readme"
PRIVATE_DOCUMENT = "docs://private/salaries"


def upstream_server() -> MCPServer:
    """The MCP server behind the proxy: a few tools the shipped policies decide."""
    server = MCPServer("tools")

    # metadata of its own, and a consent mark that is not the server's to give
    @server.tool(name="search", meta={"com.example/owner": "search team", "tessera/consent": {}})
    def search(query: str) -> str:
        return f"found {query}"

    @server.tool(name="payments.transfer")
    def transfer(amount: float, currency: str = "USD") -> str:
        return f"sent {amount:g} {currency}"

    @server.tool(name="fs.delete")
    def delete(path: str) -> str:
        return f"deleted {path}"

    @server.tool(name="read_file")
    async def read_file(path: str) -> str:
        await asyncio.sleep(SLOW)
        return f"read {path}"

    @server.prompt(name="summarize")
    def summarize(text: str) -> str:
        return f"Summarize: {text}"

    @server.prompt(name="impersonate")
    def impersonate(person: str) -> str:
        return f"Write as if you were {person}"

    @server.resource(PUBLIC_DOCUMENT, name="readme", mime_type="text/plain")
    def readme() -> str:
        return "the public readme"

    @server.resource(PRIVATE_DOCUMENT, name="salaries", mime_type="text/plain")
    def salaries() -> str:
        return "the salaries"

    return server


def nested(depth: int) -> dict[str, Any]:
    """A JSON object ``depth`` levels deep, built without recursion."""
    value: dict[str, Any] = {"end": True}
    for _ in range(depth - 1):
        value = {"in": value}
    return value


def nesting_server() -> MCPServer:
    """An MCP server whose ``search`` answers a structured result as many levels deep as
    its query says: a server whose answers the proxy must read within its bounds."""
    server = MCPServer("nesting")

    @server.tool(name="search")
    def search(query: str) -> dict[str, Any]:
        return nested(int(query))

    return server
