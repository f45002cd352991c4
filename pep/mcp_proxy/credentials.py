"""The upstream's own credential: the client's token never passes through.

The MCP authorization specification forbids token passthrough: the proxy validates the
client's token for itself and calls the upstream with a credential for the upstream's
own audience. Per upstream, one of:

- ``static``: a bearer token configured for the upstream (from the environment);
- ``client_credentials``: a token the proxy gets from the issuer as its own client, for
  the upstream's ``audience`` (RFC 6749 §4.4, RFC 8707), kept until shortly before expiry;
- ``token_exchange``: a token for the upstream's audience that acts for the same user,
  obtained by exchanging the client's token at the issuer (RFC 8693), the proxy's own
  token as the actor token; kept per client token until shortly before expiry;
- ``none``: no credential.
"""

from __future__ import annotations

import time

import httpx
from cachetools import TTLCache

from pep.errors import PepError
from pep.mcp_proxy.config import ProxyConfig, Upstream
from pep.mcp_proxy.tokens import TOKEN_EXCHANGE, token_digest

ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
MARGIN = 30.0  # seconds before expiry a kept token is replaced


class CredentialError(PepError):
    """The upstream's credential could not be obtained; the message says why."""


class Credentials:
    """Obtains and keeps upstream credentials."""

    def __init__(self, config: ProxyConfig, http: httpx.AsyncClient) -> None:
        self.config = config
        self.http = http
        self._own: dict[str, tuple[str, float]] = {}  # audience -> (token, expires)
        self._exchanged: TTLCache[tuple[str, str], tuple[str, float]] = TTLCache(10_000, 3600)

    async def authorization(self, upstream: Upstream, client_token: str) -> str | None:
        """The ``Authorization`` header value for a call to ``upstream``, if any."""
        if upstream.credential == "static":
            return f"Bearer {upstream.token}"
        if upstream.credential == "client_credentials":
            return f"Bearer {await self._client_credentials(upstream.audience)}"
        if upstream.credential == "token_exchange":
            return f"Bearer {await self._exchange(upstream.audience, client_token)}"
        return None

    def forget(self, upstream: Upstream, client_token: str) -> None:
        """Drop the credential kept for ``upstream`` (it refused it): the next call gets a
        new one."""
        if upstream.credential == "client_credentials":
            self._own.pop(upstream.audience, None)
        elif upstream.credential == "token_exchange":
            self._exchanged.pop((token_digest(client_token), upstream.audience), None)

    async def _client_credentials(self, audience: str) -> str:
        kept = self._own.get(audience)
        if kept is not None and kept[1] > time.time():
            return kept[0]
        form = {"grant_type": "client_credentials", "resource": audience}
        token, expires = await self._token(form)
        self._own[audience] = (token, expires)
        return token

    async def _exchange(self, audience: str, client_token: str) -> str:
        key = (token_digest(client_token), audience)
        kept = self._exchanged.get(key)
        if kept is not None and kept[1] > time.time():
            return kept[0]
        actor = await self._client_credentials(self.config.issuer)
        form = {
            "grant_type": TOKEN_EXCHANGE,
            "subject_token": client_token,
            "subject_token_type": ACCESS_TOKEN_TYPE,
            "actor_token": actor,
            "actor_token_type": ACCESS_TOKEN_TYPE,
            "resource": audience,
        }
        token, expires = await self._token(form)
        self._exchanged[key] = (token, expires)
        return token

    async def _token(self, form: dict[str, str]) -> tuple[str, float]:
        auth = (self.config.client_id, self.config.client_secret)
        try:
            response = await self.http.post(
                f"{self.config.issuer}/oauth/token", data=form, auth=auth
            )
            body = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise CredentialError(f"the issuer did not answer: {exc}") from None
        if response.status_code != 200 or not isinstance(body, dict):
            error = body.get("error_description") if isinstance(body, dict) else None
            raise CredentialError(f"the issuer refused: {error or response.status_code}")
        lifetime = float(body.get("expires_in", 60))
        return str(body["access_token"]), time.time() + max(lifetime - MARGIN, 1.0)
