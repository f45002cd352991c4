"""The authorization server's request bodies, read within :mod:`issuer.wire`'s bounds.

Forms (``application/x-www-form-urlencoded``, RFC 6749 §3.2 and the login and consent
pages) and JSON documents (client registration, RFC 7591; API keys) are at most
:data:`MAX_BODY` bytes and arrive within :data:`issuer.wire.READ_TIMEOUT` seconds. A
refusal is the OAuth error body (RFC 6749 §5.2): ``invalid_request`` with 413 for a body
too large, 408 for one too slow, 400 otherwise; a registration whose body is not JSON is
``invalid_client_metadata`` (RFC 7591 §3.2.2), as one whose body is not an object is.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request

from issuer.oauth.errors import OAuthError
from issuer.wire import NotJson, WireError, read_body, read_json

MULTI_VALUED = frozenset({"resource", "audience"})  # RFC 8707 §2, RFC 8693 §2.1
MAX_BODY = 64 * 1024  # bytes, a form or a JSON document


async def read_bytes(request: Request) -> bytes:
    """The whole body, or the OAuth error its refusal stands for."""
    try:
        return await read_body(request, MAX_BODY)
    except WireError as exc:
        raise OAuthError("invalid_request", str(exc), exc.status) from None


async def read_document(request: Request, not_json: str = "invalid_request") -> Any:
    """The body's JSON value; a body that is not JSON is the error ``not_json``."""
    raw = await read_bytes(request)
    try:
        return read_json(raw)
    except NotJson as exc:
        raise OAuthError(not_json, str(exc)) from None


async def read_form(request: Request) -> dict[str, str]:
    """An application/x-www-form-urlencoded body; a parameter may appear once (RFC 6749
    §3.2), except the multi-valued ones, which come back space-joined."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        raise OAuthError("invalid_request", "the body must be application/x-www-form-urlencoded")
    body = await read_bytes(request)
    try:
        pairs = parse_qsl(body.decode(), keep_blank_values=True, strict_parsing=bool(body))
    except (UnicodeDecodeError, ValueError):
        raise OAuthError("invalid_request", "the body is not form-urlencoded") from None
    form: dict[str, str] = {}
    for name, value in pairs:
        if name in form:
            if name not in MULTI_VALUED:
                raise OAuthError("invalid_request", f"{name} is given more than once")
            form[name] += " " + value
        else:
            form[name] = value
    return form
