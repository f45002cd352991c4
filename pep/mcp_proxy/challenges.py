"""What a client learns when it may not pass: RFC 9728 metadata and RFC 6750 challenges.

The protected resource metadata (RFC 9728 §3) of each upstream is served at the
path-inserted well-known URL (``/.well-known/oauth-protected-resource/<path>``) and, when
the proxy has one upstream, also at the root. A request without a token is answered
``401`` with ``WWW-Authenticate: Bearer resource_metadata="…", scope="…"`` (the MCP
authorization specification); a bad token adds ``error="invalid_token"``; a token
without every scope needed is answered ``403`` with ``error="insufficient_scope"`` and
the scopes needed, all of them (RFC 6750 §3.1); a request with two tokens is answered
``400`` with ``error="invalid_request"``. A call the PDP denies only for step-ups is
answered ``401`` with ``error="insufficient_user_authentication"`` and the levels in
``acr_values`` (RFC 9470 §3), its body the JSON-RPC deny (``-32003``) all the same.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from starlette.responses import JSONResponse, Response

from pep.mcp_proxy.answers import answer
from pep.mcp_proxy.config import ProxyConfig, Upstream

WELL_KNOWN = "/.well-known/oauth-protected-resource"


def metadata_url(config: ProxyConfig, upstream: Upstream) -> str:
    return f"{config.public_url}{WELL_KNOWN}{upstream.path}"


def metadata(config: ProxyConfig, upstream: Upstream) -> dict[str, Any]:
    """The RFC 9728 document of one upstream."""
    scopes = sorted({*upstream.scopes, *(s for v in upstream.tool_scopes.values() for s in v)})
    return {
        "resource": config.resource(upstream),
        "authorization_servers": [config.issuer],
        "scopes_supported": scopes,
        "bearer_methods_supported": ["header"],
        "resource_name": upstream.name,
    }


def _quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def challenge(
    config: ProxyConfig,
    upstream: Upstream,
    error: str | None = None,
    description: str | None = None,
    scopes: Iterable[str] | None = None,
) -> str:
    """A ``WWW-Authenticate`` value: ``Bearer`` with the error, the metadata URL and the
    scopes needed."""
    params = []
    if error is not None:
        params.append(f"error={_quoted(error)}")
    if description is not None:
        params.append(f"error_description={_quoted(_printable(description))}")
    params.append(f"resource_metadata={_quoted(metadata_url(config, upstream))}")
    needed = list(upstream.scopes if scopes is None else scopes)
    if needed:
        params.append(f"scope={_quoted(' '.join(needed))}")
    return "Bearer " + ", ".join(params)


def unauthorized(config: ProxyConfig, upstream: Upstream, description: str | None) -> JSONResponse:
    """401: no token (a bare challenge), or a token that is not valid here."""
    if description is None:  # RFC 6750 §3.1: no error code when no token was sent
        header = challenge(config, upstream)
        body = {"error_description": "an access token is required"}
    else:
        header = challenge(config, upstream, "invalid_token", description)
        body = {"error": "invalid_token", "error_description": description}
    return JSONResponse(
        body, 401, headers={"WWW-Authenticate": header, "Cache-Control": "no-store"}
    )


def invalid_request(config: ProxyConfig, upstream: Upstream, description: str) -> JSONResponse:
    """400: the request is malformed, such as two tokens (RFC 6750 §3.1)."""
    header = challenge(config, upstream, "invalid_request", description)
    body = {"error": "invalid_request", "error_description": description}
    return JSONResponse(
        body, 400, headers={"WWW-Authenticate": header, "Cache-Control": "no-store"}
    )


def insufficient_scope(
    config: ProxyConfig, upstream: Upstream, needed: Iterable[str], missing: Iterable[str]
) -> JSONResponse:
    """403: the token lacks scopes; the challenge names every scope the call needs."""
    needed = list(needed)
    description = f"the call needs the scopes {' '.join(needed)}; missing {' '.join(missing)}"
    header = challenge(config, upstream, "insufficient_scope", description, needed)
    body = {"error": "insufficient_scope", "error_description": description}
    return JSONResponse(
        body, 403, headers={"WWW-Authenticate": header, "Cache-Control": "no-store"}
    )


STEP_UP_ERROR = "insufficient_user_authentication"  # RFC 9470 §3


def insufficient_user_authentication(
    config: ProxyConfig,
    upstream: Upstream,
    levels: Iterable[str],
    body: bytes,
    decisions: list[str],
) -> Response:
    """401 for a call the PDP denies only for step-ups: RFC 9470's challenge naming the
    levels (``acr_values``), and the JSON-RPC deny as the body, so that a client that
    reads only JSON-RPC still sees ``-32003`` with the obligations."""
    wanted = " ".join(levels)
    description = f"a stronger authentication is required: {wanted}"
    header = challenge(config, upstream, STEP_UP_ERROR, description, ())
    header += f", acr_values={_quoted(_printable(wanted))}"
    headers = {"WWW-Authenticate": header, "Cache-Control": "no-store"}
    return answer(401, body, decisions, headers)


def _printable(text: str) -> str:
    """RFC 6750 §3: error_description is printable ASCII without quote or backslash."""
    return "".join(c if 0x20 <= ord(c) <= 0x7E and c not in '"\\' else "?" for c in text)
