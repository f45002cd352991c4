"""What a layer above the decision plane may add to the HTTP port of ``tessera serve``.

The composition root lives in the decision plane, yet some pages read every plane (the
operator console, :mod:`pep.console`). They cannot be imported from here (planes point
down only), so the top layer hands the server a builder: given the parts the server
opened, it answers the routes to mount beside SCIM, OAuth and AuthZEN.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from starlette.routing import BaseRoute

from issuer.oauth.endpoints import AuthorizationServer
from issuer.store import Store
from pdp.audit.writer import AuditWriter
from pdp.decide import DecisionPoint
from pdp.serve.config import ServeConfig


@dataclass(frozen=True)
class HttpParts:
    """What the server opened that an extension may use: the decision point, the store,
    the issuer, the audit writer (None when not auditing), the settings, and the port's
    base URL and the issuer's URL."""

    point: DecisionPoint
    store: Store
    oauth: AuthorizationServer
    audit: AuditWriter | None
    config: ServeConfig
    base: str
    issuer: str


HttpExtension = Callable[[HttpParts], Sequence[BaseRoute]]
"""Builds routes for the HTTP port, once per serving process."""
