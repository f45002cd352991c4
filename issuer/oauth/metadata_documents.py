"""Client ID Metadata Documents: a client whose ``client_id`` is an HTTPS URL describes
itself in the JSON document at that URL (draft-ietf-oauth-client-id-metadata-document,
as the MCP authorization specification uses it).

The document must name the same ``client_id``, list its ``redirect_uris`` and use
``token_endpoint_auth_method`` ``none`` (a public client). It is fetched without
following redirects, within a short timeout and a size limit, and kept for
:data:`CACHE_SECONDS`. Plain ``http`` is accepted only for loopback hosts, and only by a
development issuer (:class:`issuer.oauth.fetch.Reach`).
"""

from __future__ import annotations

import threading
from typing import Any
from urllib.parse import urlsplit

from cachetools import TTLCache

from issuer.oauth.clients import RESERVED_PREFIX, Client, check_redirect_uris
from issuer.oauth.errors import OAuthError
from issuer.oauth.fetch import PUBLIC, Reach, fetch_json
from issuer.oauth.inline import may_block

CACHE_SECONDS = 300
MAX_BYTES = 5 * 1024


class MetadataDocuments:
    """Fetches and caches clients described by their metadata documents."""

    def __init__(self, reach: Reach = PUBLIC) -> None:
        self.reach = reach
        self._cache: TTLCache[str, Client] = TTLCache(maxsize=10_000, ttl=CACHE_SECONDS)
        self._lock = threading.Lock()

    def describes(self, client_id: str) -> bool:
        """Whether a client_id names a metadata document (an https URL with a path)."""
        try:
            parts = urlsplit(client_id)
        except ValueError:  # not a URL: an ordinary (unknown) client_id
            return False
        secure = parts.scheme == "https" and bool(parts.netloc)
        return (secure or self.reach.plain(client_id)) and bool(parts.path.strip("/"))

    def client(self, url: str) -> Client:
        with self._lock:
            cached = self._cache.get(url)
        if cached is not None:
            return cached
        may_block()
        client = _client(url, fetch_json(url, MAX_BYTES, _bad, self.reach))
        with self._lock:
            self._cache[url] = client
        return client


def _client(url: str, document: Any) -> Client:
    if not isinstance(document, dict):
        raise _bad("the client metadata document is not a JSON object")
    if document.get("client_id") != url:
        raise _bad("the document's client_id is not its own URL")
    method = document.get("token_endpoint_auth_method", "none")
    if method != "none":
        raise _bad("a client described by a metadata document is public (auth method none)")
    grant_types = document.get("grant_types", ["authorization_code"])
    if not isinstance(grant_types, list) or not set(grant_types) <= {
        "authorization_code",
        "refresh_token",
    }:
        raise _bad("grant_types may only be authorization_code and refresh_token")
    try:
        redirect_uris = check_redirect_uris(document.get("redirect_uris"), grant_types)
    except OAuthError as exc:
        raise _bad(exc.description) from None
    scope = document.get("scope", "")
    if any(s.startswith(RESERVED_PREFIX) for s in str(scope).split()):
        raise _bad("a client metadata document may not ask for Tessera's own scopes")
    name = document.get("client_name")
    return Client(
        client_id=url,
        auth_method="none",
        agent_id=None,
        scopes=frozenset(str(scope).split()),
        grant_types=tuple(grant_types),
        jwks=(),
        secret_hash=None,
        name=name if isinstance(name, str) else None,
        redirect_uris=tuple(redirect_uris),
    )


def _bad(description: str) -> OAuthError:
    return OAuthError("invalid_client", description, 400)
