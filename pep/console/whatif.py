"""The Policies page's what-if: one request, typed from a form, decided and explained.

The request is decided by :func:`pep.admin_mcp.policies.simulate`, the code of the admin
MCP server's ``simulate_request`` with the directory, so the console and the MCP tool
answer alike. Nothing is used up, nothing is written: no limit counts the request, no
decision is audited, and the what-if itself is a read (as the MCP tool's is), so the
admin trail, which records changes, records nothing either.

Context values come as ``name=value`` lines, each typed by the schema's declaration of
``name``: a number or a bool from its text, a set or list from comma-separated items,
anything else (money, duration, time, risk, …) as the text the request format takes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pdp.directory import Directory
from pdp.engine import Bundle
from pdp.lang.schema import Type
from pep.admin_mcp.errors import AdminError
from pep.admin_mcp.naming import AgentNames, UnknownAgent
from pep.admin_mcp.policies import simulate

MAX_LINES = 64  # context lines of one what-if
FIELDS = ("agent", "user", "tool", "action", "resource_type", "resource_id", "context")


class FormError(AdminError):
    """A what-if form that does not make a request; the message says which field."""


@dataclass(frozen=True)
class Asked:
    """A what-if as the form asked it (shown again with the answer)."""

    agent: str = ""
    user: str = ""
    tool: str = ""
    action: str = ""
    resource_type: str = ""
    resource_id: str = ""
    context: str = ""

    @classmethod
    def from_form(cls, form: dict[str, str]) -> Asked:
        return cls(**{name: form.get(name, "").strip() for name in FIELDS})


def context_value(text: str, declared: Type | None) -> Any:
    """One context value from its text, as the schema declares ``declared``."""
    if declared is None or declared.name in ("string", "money", "duration", "risk"):
        return text
    if declared.name == "number":
        try:
            number = float(text)
        except ValueError:
            raise FormError(f"expected a number, got {text!r}") from None
        return int(number) if number.is_integer() and "." not in text else number
    if declared.name == "bool":
        if text not in ("true", "false"):
            raise FormError(f"expected true or false, got {text!r}")
        return text == "true"
    if declared.is_collection:
        items = [item.strip() for item in text.split(",") if item.strip()]
        return [context_value(item, declared.arg) for item in items]
    return text


def context_from(lines: str, declared: dict[str, Type]) -> dict[str, Any]:
    """The context of ``name=value`` lines (blank lines skipped), typed by the schema."""
    context: dict[str, Any] = {}
    rows = lines.splitlines()
    if len(rows) > MAX_LINES:
        raise FormError(f"context: at most {MAX_LINES} lines")
    for number, row in enumerate(rows, start=1):
        if not row.strip():
            continue
        name, equals, value = row.partition("=")
        name = name.strip()
        if not equals or not name:
            raise FormError(f"context line {number}: write name=value, e.g. amount=200 USD")
        try:
            context[name] = context_value(value.strip(), declared.get(name))
        except FormError as exc:
            raise FormError(f"context line {number} ({name}): {exc}") from None
    return context


def request_of(asked: Asked, bundle: Bundle, names: AgentNames) -> dict[str, Any]:
    """The request JSON a what-if asks about: the agent by its id (or name), a tool or an
    action on a resource, the context typed by the bundle's schema."""
    if not asked.agent:
        raise FormError("agent: pick the agent that asks (its id or name)")
    try:
        agent_id = names.now(asked.agent).id
    except UnknownAgent:
        agent_id = asked.agent  # refused as the decision point refuses an unknown agent
    request: dict[str, Any] = {"agent": {"id": agent_id}}
    if asked.user:
        request["user"] = {"id": asked.user}
    if asked.tool:
        request["tool"] = asked.tool
    elif asked.action and asked.resource_type and asked.resource_id:
        request["action"] = asked.action
        request["resource"] = {"type": asked.resource_type, "id": asked.resource_id}
    else:
        raise FormError("name a tool, or an action with a resource type and id")
    request["context"] = context_from(asked.context, bundle.schema.context)
    return request


def what_if(asked: Asked, bundle: Bundle, directory: Directory, names: AgentNames) -> Any:
    """The decision and its explanation (blocks: run it off the event loop)."""
    return simulate(bundle, request_of(asked, bundle, names), directory)
