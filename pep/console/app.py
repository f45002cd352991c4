"""The console's routes, mounted at ``/console`` on the HTTP port of ``tessera serve``."""

from __future__ import annotations

from collections.abc import Sequence

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import BaseRoute, Mount

from pdp.serve.extensions import HttpParts
from pep.admin_mcp.directory import DirectoryAdmin
from pep.console.agents import AgentPages
from pep.console.alerts import AlertPages
from pep.console.audit import AuditPages
from pep.console.decisions import DecisionPages
from pep.console.policies import PolicyPages
from pep.console.render import STATIC_ROUTE, Renderer
from pep.console.security import Hardened
from pep.console.sessions import Sessions
from pep.console.signin import SignIn, console_client

PATH = "/console"


def console(parts: HttpParts) -> Sequence[BaseRoute]:
    """The console, on the store and issuer ``tessera serve`` opened (an HTTP extension:
    :data:`pdp.serve.extensions.HttpExtension`)."""
    issuer = console_client(parts.store, parts.oauth, parts.issuer)
    sessions = Sessions(parts.store)
    render = Renderer()
    pages = [
        *SignIn(issuer, sessions, render).routes(),
        *AgentPages(DirectoryAdmin(parts.store), sessions, render).routes(),
        *DecisionPages(parts.store, parts.point, sessions, render).routes(),
        *PolicyPages(parts.point, parts.store, parts.config.policies, sessions, render).routes(),
        *AuditPages(parts.store, parts.issuer, sessions, render).routes(),
        *AlertPages(parts.store, sessions, render).routes(),
        STATIC_ROUTE,
    ]
    app = Starlette(routes=pages, middleware=[Middleware(Hardened)])
    return [Mount(PATH, app=app)]
