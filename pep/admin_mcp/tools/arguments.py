"""The argument types several tools share, each with the description the model reads in
the tool's input schema, and the audit trail filters made from them."""

from typing import Annotated, Literal

from pydantic import BaseModel, Field
from pydantic.fields import FieldInfo

from pdp.audit.query import Filters
from pep.admin_mcp.errors import AdminError

AgentRef = Annotated[
    str, Field(description="the agent's directory id, or its unique name (e.g. 'pay-bot')")
]


def trail_agent(what: str) -> FieldInfo:
    """The description of a trail tool's optional agent filter: ``what`` of one agent."""
    field: FieldInfo = Field(
        description=f"only this agent's {what}: its directory id or its name (e.g. "
        "'pay-bot'), also one deleted or renamed since"
    )
    return field


Risk = Literal["low", "medium", "high", "critical"]
AgentType = Literal["interactive", "background", "external"]
Since = Annotated[
    str | None, Field(description="RFC 3339 time, inclusive, e.g. '2026-11-28T10:00:00Z'")
]
Until = Annotated[str | None, Field(description="RFC 3339 time, exclusive")]


class Label(BaseModel):
    key: str = Field(description="the label's name, e.g. 'team'")
    value: str = Field(description="the label's value, e.g. 'finance'")


class FileChange(BaseModel):
    """One file of a proposed policy change."""

    file: str = Field(
        description="the policy file's path relative to the policy directory, ending in .pol, "
        "e.g. 'agents.pol' (list_policies names the existing files)"
    )
    text: str | None = Field(
        description="the file's complete new text in Tessera's policy language; null deletes "
        "the file"
    )


Proposal = Annotated[
    list[FileChange],
    Field(
        description="the proposed change: the files to add, replace or delete; every other "
        "policy file stays as it is",
        min_length=1,
    ),
]


def labels_of(labels: list[Label] | None) -> list[dict[str, str]] | None:
    """Labels as the directory stores them (None leaves them as they are)."""
    return None if labels is None else [label.model_dump() for label in labels]


def filters(**given: str | None) -> Filters:
    """Audit trail filters from a tool's arguments; AdminError when a time is not RFC 3339."""
    fields = {name: given.get(name) for name in ("agent", "user", "decision", "tool")}
    try:
        return Filters.parse(**fields, since=given.get("since"), until=given.get("until"))
    except ValueError as exc:
        # the message names the command line's flags (--since); a tool's arguments have no dashes
        raise AdminError(str(exc).replace("--", "")) from None
