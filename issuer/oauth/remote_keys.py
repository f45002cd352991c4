"""Clients' keys published at a ``jwks_uri`` (RFC 7591 §2), fetched and cached.

A JWK Set is kept for :data:`CACHE_SECONDS`; an unknown ``kid`` fetches it again, at
most once per :data:`REFETCH_SECONDS`, so a client can rotate keys without re-registering
and a stream of bogus kids cannot make the server fetch without pause.
"""

from __future__ import annotations

import dataclasses
import threading
import time

from issuer.oauth.clients import Client, check_jwks
from issuer.oauth.errors import invalid_client
from issuer.oauth.fetch import PUBLIC, Reach, fetch_json
from issuer.oauth.inline import may_block

CACHE_SECONDS = 300
REFETCH_SECONDS = 30
MAX_BYTES = 64 * 1024


class RemoteKeys:
    """JWK Sets by URL."""

    def __init__(self, reach: Reach = PUBLIC) -> None:
        self.reach = reach
        self._sets: dict[str, tuple[float, tuple[dict[str, object], ...]]] = {}
        self._lock = threading.Lock()

    def resolve(self, client: Client, kid: str | None = None) -> Client:
        """The client with its current keys in ``jwks`` (unchanged without a jwks_uri)."""
        if client.jwks_uri is None:
            return client
        now = time.monotonic()
        with self._lock:
            fetched_at, keys = self._sets.get(client.jwks_uri, (0.0, ()))
        known = kid is None or any(k.get("kid") == kid for k in keys)
        age = now - fetched_at
        if not keys or age > CACHE_SECONDS or (not known and age > REFETCH_SECONDS):
            may_block()
            document = fetch_json(client.jwks_uri, MAX_BYTES, invalid_client, self.reach)
            try:
                keys = check_jwks(document)
            except Exception as exc:  # the document's own faults, named for the client
                raise invalid_client(f"the keys at jwks_uri are not usable: {exc}") from None
            with self._lock:
                self._sets[client.jwks_uri] = (now, keys)
        return dataclasses.replace(client, jwks=keys)
