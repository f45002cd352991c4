"""Rich authorization requests at the token endpoint (RFC 9396).

A token request for an agent may carry ``authorization_details`` (RFC 9396 §6.1): a JSON
array of objects, each with a ``type`` string (§2). The token carries the array as its
``authorization_details`` claim (§9.1) and the token response repeats it (§7). Tessera
does not interpret the types: the policies and resource servers that read the claim do.

The parameter is bounded (:data:`MAX_LENGTH` characters, :data:`MAX_ENTRIES` objects,
JSON within :mod:`issuer.wire`'s bounds); anything else is refused with
``invalid_authorization_details`` (RFC 9396 §5).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from issuer.oauth.errors import OAuthError
from issuer.wire import WireError, read_json

MAX_LENGTH = 8192  # characters of the parameter
MAX_ENTRIES = 16  # objects in the array
MAX_DEPTH = 8  # arrays and objects inside one another
INVALID = "invalid_authorization_details"


def authorization_details(form: Mapping[str, str]) -> dict[str, Any]:
    """The ``authorization_details`` claim the request asks for, checked; none when the
    request has no such parameter."""
    raw = form.get("authorization_details")
    if raw is None:
        return {}
    if len(raw) > MAX_LENGTH:
        raise OAuthError(INVALID, f"authorization_details is longer than {MAX_LENGTH} characters")
    try:
        details = read_json(raw, MAX_DEPTH)
    except WireError as exc:
        raise OAuthError(INVALID, f"authorization_details: {exc}") from None
    if not isinstance(details, list) or not 0 < len(details) <= MAX_ENTRIES:
        raise OAuthError(
            INVALID, f"authorization_details is a JSON array of 1 to {MAX_ENTRIES} objects"
        )
    for index, entry in enumerate(details):
        kind = entry.get("type") if isinstance(entry, dict) else None
        if not isinstance(kind, str) or not kind:
            raise OAuthError(
                INVALID, f"authorization_details[{index}] is not an object with a type string"
            )
    return {"authorization_details": details}
