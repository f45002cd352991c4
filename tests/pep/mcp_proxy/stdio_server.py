"""An MCP server over stdio, written with the official SDK, for the proxy to start; with
the argument ``nesting``, the SDK server whose answers are as deep as asked; or, with the
argument ``echo``, a bare JSON-RPC server that answers each request with the message it
got and the others it got since its last answer, so that a test sees what the proxy
passed on."""

import json
import sys
from typing import Any

from tests.pep.mcp_proxy.tools import nesting_server, upstream_server


def echo() -> None:
    """Answer each request with the message as it arrived, and those before it that were
    no requests."""
    before: list[Any] = []
    for line in sys.stdin:
        message = json.loads(line)
        if "method" in message and "id" in message:
            result = {"received": message, "before": before}
            print(json.dumps({"jsonrpc": "2.0", "id": message["id"], "result": result}), flush=True)
            before = []
        else:
            before.append(message)


if __name__ == "__main__":
    if sys.argv[1:] == ["echo"]:
        echo()
    elif sys.argv[1:] == ["nesting"]:
        nesting_server().run("stdio")
    else:
        upstream_server().run("stdio")
