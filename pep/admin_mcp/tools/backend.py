"""What the tools work on: the directory, the policies and the store, and who the
administrator is.

Every change is made through the store with the administrator as actor, so the admin
trail records it as theirs. Over stdio the administrator is the one configured
(``--admin``); over Streamable HTTP it is the subject of the bearer token (see
:mod:`pep.admin_mcp.http`).
"""

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from anyio import to_thread
from mcp.server.auth.middleware.auth_context import get_access_token

from issuer.store import Store
from pep.admin_mcp.directory import Admin, DirectoryAdmin
from pep.admin_mcp.policies import Policies

T = TypeVar("T")


class Backend:
    """The directory and policies over one store and policy directory, shared by every
    tool group."""

    def __init__(self, store: Store, policies: Path, admin: str) -> None:
        self.store = store
        self.directory = DirectoryAdmin(store)
        self.names = self.directory.names  # how every tool resolves an agent's id or name
        self.policies = Policies(policies)
        self._admin = admin  # the actor recorded for changes made over stdio

    def admin(self) -> Admin:
        """The administrator of the current request: the bearer token's subject over
        HTTP, the configured one over stdio."""
        token = get_access_token()
        if token is not None:
            return Admin(token.subject or token.client_id)
        return Admin(self._admin)

    def agent_named(self, agent: str) -> str:
        """How a confirmation names an agent (its name and id), or AdminError."""
        record = self.directory.find_agent(agent)
        return f"{record.data.get('name')!r} ({record.id})"


async def in_thread(fn: Callable[[], T]) -> T:
    """``fn``'s result, computed in a worker thread: the store and the policy engine block."""
    return await to_thread.run_sync(fn)
