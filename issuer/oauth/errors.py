"""OAuth 2.0 error responses (RFC 6749 §5.2, RFC 7591 §3.2.2, RFC 6750 §3)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from starlette.responses import Response

from issuer.errors import IssuerError

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


class OAuthError(IssuerError):
    """An error the client gets as ``{"error": …, "error_description": …}``."""

    def __init__(
        self,
        error: str,
        description: str,
        status: int = 400,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description
        self.status = status
        self.headers = dict(headers or {})

    def response(self) -> Response:
        body = {"error": self.error, "error_description": self.description}
        return json_response(body, self.status, self.headers)


def json_response(
    body: Mapping[str, Any], status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    """A JSON response that no cache keeps (RFC 6749 §5.1)."""
    return Response(
        json.dumps(body, separators=(",", ":")).encode(),
        status,
        headers={**NO_STORE, **(headers or {})},
        media_type="application/json",
    )


def invalid_client(description: str, basic: bool = False) -> OAuthError:
    """RFC 6749 §5.2: 401, with a Basic challenge when the client used Basic."""
    headers = {"WWW-Authenticate": 'Basic realm="tessera"'} if basic else {}
    return OAuthError("invalid_client", description, 401, headers)
