"""The PEP's own bearer token for the decision service, got from Tessera's issuer.

A decision service that listens beyond loopback asks its callers to prove they are PEPs
(docs/pep-client.md, "Authenticating"). :class:`ClientCredentialsToken` is a token
source for :class:`pep.client.Credentials`: it gets an access token with the
``client_credentials`` grant (RFC 6749 §4.4), authenticating with the client's secret
(``client_secret_basic``, RFC 6749 §2.3.1), for the scope ``tessera:decide``, and keeps
it until :data:`MARGIN` seconds before it expires, so a call costs a clock read and the
token endpoint is asked about once per token lifetime::

    token = ClientCredentialsToken("https://tessera.example.com", "pep-gw", secret)
    client = Client("pdp.internal:50051", credentials=Credentials(token=token, tls=True))

:class:`AsyncClientCredentialsToken` is the same source for :class:`pep.client.AsyncClient`
(the MCP proxy uses it): it asks the issuer without blocking the event loop, and the
calls that find the token due wait for the one request that gets the next.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
from collections.abc import Callable

import httpx

from pep.errors import PepError

DECIDE_SCOPE = "tessera:decide"
TOKEN_PATH = "/oauth/token"
MARGIN = 30.0  # seconds before expiry a kept token is replaced
TIMEOUT = 5.0  # seconds a request to the token endpoint may take


class TokenError(PepError):
    """The issuer did not give a token; the message says why."""


class _Grant:
    """What both token sources share: the token endpoint, the form and the client's
    secret, and when the kept token is to be replaced."""

    def __init__(
        self,
        issuer: str,
        client_id: str,
        client_secret: str,
        *,
        scope: str = DECIDE_SCOPE,
        resource: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.endpoint = issuer.rstrip("/") + TOKEN_PATH
        self.form = {"grant_type": "client_credentials", "scope": scope}
        if resource:
            self.form["resource"] = resource
        self.auth = (client_id, client_secret)
        self.clock = clock
        self._token = ""
        self._until = 0.0  # when the kept token is to be replaced

    def _due(self) -> bool:
        return self.clock() >= self._until

    def _keep(self, token: str, lifetime: float) -> str:
        """Keep ``token`` until :data:`MARGIN` seconds before it expires (half its
        lifetime, for one that lives shorter than twice the margin)."""
        self._token = token
        self._until = self.clock() + max(lifetime - MARGIN, lifetime / 2)
        return token

    def _failed(self, exc: Exception) -> TokenError:
        return TokenError(f"the issuer at {self.endpoint} did not answer: {exc}")


def token_of(response: httpx.Response) -> tuple[str, float]:
    """The access token of the token endpoint's answer and its lifetime in seconds
    (RFC 6749 §5.1), or TokenError saying why there is none (§5.2)."""
    body = response.json()  # ValueError: not JSON, the caller's to report
    if response.status_code != 200 or not isinstance(body, dict):
        error = body.get("error_description") if isinstance(body, dict) else None
        raise TokenError(f"the issuer refused a token: {error or response.status_code}")
    token = body.get("access_token")
    if not isinstance(token, str) or not token:
        raise TokenError("the issuer's answer has no access_token")
    lifetime = body.get("expires_in", 60)
    return token, float(lifetime) if isinstance(lifetime, int | float) else 60.0


class ClientCredentialsToken(_Grant):
    """A callable giving the current access token of an OAuth client of Tessera's
    issuer (at ``issuer`` + ``/oauth/token``), refreshed before it expires; safe to share
    between threads (one of them asks the issuer while the others wait for it).

    ``resource`` (RFC 8707): the audience to ask for; the decision service accepts the
    issuer's own URL, which a token asked for without one names. ``verify``: as httpx
    takes it (a CA bundle's path, an ``ssl.SSLContext``, or True for the system's)."""

    def __init__(
        self,
        issuer: str,
        client_id: str,
        client_secret: str,
        *,
        scope: str = DECIDE_SCOPE,
        resource: str | None = None,
        verify: ssl.SSLContext | str | bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(
            issuer, client_id, client_secret, scope=scope, resource=resource, clock=clock
        )
        self.verify = verify
        self._lock = threading.Lock()

    def __call__(self) -> str:
        """The kept token, or a new one when it is due."""
        if not self._due():
            return self._token
        with self._lock:
            if self._due():  # another thread may have got one meanwhile
                return self._keep(*self._fetch())
            return self._token

    def _fetch(self) -> tuple[str, float]:
        """A new token and its lifetime in seconds, or TokenError."""
        try:
            response = httpx.post(
                self.endpoint, data=self.form, auth=self.auth, verify=self.verify, timeout=TIMEOUT
            )
            return token_of(response)
        except (httpx.HTTPError, ValueError) as exc:
            raise self._failed(exc) from None


class AsyncClientCredentialsToken(_Grant):
    """As :class:`ClientCredentialsToken`, for asyncio: awaited, it gives the current
    token, asking the issuer through ``http`` (an ``httpx.AsyncClient``, shared with the
    caller's other requests) when it is due; concurrent calls wait for that one request."""

    def __init__(
        self,
        issuer: str,
        client_id: str,
        client_secret: str,
        http: httpx.AsyncClient,
        *,
        scope: str = DECIDE_SCOPE,
        resource: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(
            issuer, client_id, client_secret, scope=scope, resource=resource, clock=clock
        )
        self.http = http
        self._lock = asyncio.Lock()

    async def __call__(self) -> str:
        """The kept token, or a new one when it is due."""
        if not self._due():
            return self._token
        async with self._lock:
            if self._due():  # another call may have got one meanwhile
                return self._keep(*await self._fetch())
            return self._token

    async def _fetch(self) -> tuple[str, float]:
        """A new token and its lifetime in seconds, or TokenError."""
        try:
            response = await self.http.post(
                self.endpoint, data=self.form, auth=self.auth, timeout=TIMEOUT
            )
            return token_of(response)
        except (httpx.HTTPError, ValueError) as exc:
            raise self._failed(exc) from None
