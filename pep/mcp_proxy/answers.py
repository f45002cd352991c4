"""The answers the proxy writes itself: JSON-RPC bodies with the call's decision ids.

Whatever the proxy answers on a client's behalf (a refusal of the request, a deny, an
upstream's failure, an upstream's answer rewritten) is JSON, and names the decisions it
rests on in the ``Tessera-Decision-Id`` header (comma-separated for a batch), as the PDP's
audit trail names them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from starlette.responses import Response

from pep.mcp_proxy.jsonrpc import dumps, error

DECISION_HEADER = "Tessera-Decision-Id"


def answer(
    status: int, body: bytes, decisions: list[str], headers: Mapping[str, str] | None = None
) -> Response:
    """A JSON answer with ``headers`` and the ids of the ``decisions`` it rests on."""
    out = {**(headers or {}), "content-type": "application/json"}
    if decisions:
        out[DECISION_HEADER] = ",".join(decisions)
    return Response(body, status, headers=out)


def json_error(status: int, id: Any, code: int, message: str) -> Response:
    """A JSON-RPC error alone, with its HTTP status and no decision ids."""
    return Response(dumps(error(id, code, message)), status, media_type="application/json")
