"""Fetching small JSON documents clients point the server at (metadata, JWK Sets).

No redirects are followed, the body is capped, and every failure becomes the caller's
OAuth error: a client's URL must never make the server hang or read without bound.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx

from issuer.oauth.errors import OAuthError

TIMEOUT = 5.0  # seconds


def fetch_json(url: str, max_bytes: int, error: Callable[[str], OAuthError]) -> Any:
    """The JSON document at ``url``, or ``error(description)`` raised."""
    try:
        with (
            httpx.Client(timeout=TIMEOUT, follow_redirects=False) as http,
            http.stream("GET", url, headers={"Accept": "application/json"}) as response,
        ):
            if response.status_code != 200:
                raise error(f"{url} answered {response.status_code}")
            body = b""
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > max_bytes:
                    raise error(f"{url} exceeds {max_bytes} bytes")
    except httpx.HTTPError as exc:
        raise error(f"{url} cannot be fetched: {exc}") from None
    try:
        return json.loads(body)
    except ValueError:
        raise error(f"{url} is not JSON") from None
