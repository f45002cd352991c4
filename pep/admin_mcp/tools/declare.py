"""How a tool is declared to the client: its hints (a read, a write, a destructive write),
its refusals answered as its errors, and the confirmation a write asks of the person.

Every write first asks the person at the keyboard to confirm through MCP elicitation (a
client that cannot ask is refused by the SDK); a tool takes the answer as a parameter
resolved by its ``ask_…`` function, so the model never fills it in.
"""

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from mcp.server.mcpserver import AcceptedElicitation, MCPServer
from mcp.types import ToolAnnotations
from pydantic import BaseModel, Field

from pep.admin_mcp.errors import answer_refusals

Tool = TypeVar("Tool", bound=Callable[..., Awaitable[dict[str, Any]]])

READ = ToolAnnotations(read_only_hint=True, open_world_hint=False)
WRITE = ToolAnnotations(read_only_hint=False, destructive_hint=False, open_world_hint=False)
DESTRUCTIVE = ToolAnnotations(read_only_hint=False, destructive_hint=True, open_world_hint=False)


def tool(
    server: MCPServer[Any], hints: ToolAnnotations, description: str
) -> Callable[[Tool], Tool]:
    """Register the decorated function as a tool of ``server``: its name is the
    function's, its input schema comes from its signature, and an AdminError it raises is
    its error answer."""

    def register(fn: Tool) -> Tool:
        server.tool(annotations=hints, description=description)(answer_refusals(fn))
        return fn

    return register


class Confirm(BaseModel):
    """The person's answer to "make this change?"."""

    confirm: bool = Field(description="true to make the change, false to cancel it")


def declined(answer: Any) -> dict[str, Any] | None:
    """The tool's answer when the person did not confirm, else None."""
    if isinstance(answer, AcceptedElicitation) and answer.data.confirm:
        return None
    return {"done": False, "message": "the administrator did not confirm; nothing was changed"}
