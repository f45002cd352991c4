"""The admin MCP server over Streamable HTTP, as an OAuth 2.1 resource server of Tessera's
own issuer.

Every request needs ``Authorization: Bearer <access token>`` (RFC 6750 §2.1): a JWT
access token from Tessera's issuer (RFC 9068, verified offline by
:class:`issuer.verify.Verifier` with the issuer's signing keys from the store, or with
those it publishes) whose audience is this server's resource URI (RFC 8707), with the
``tessera:admin`` scope, issued to an administrating agent acting alone (no ``act``, not
certificate-bound), not revoked, and whose agent is still active. The token's subject is
the administrator every change is recorded for.

The SDK's resource-server support answers the rest: ``401`` with ``WWW-Authenticate:
Bearer error="invalid_token", …, resource_metadata="…"`` for a bad token, ``403`` with
``error="insufficient_scope"`` without the scope (RFC 6750 §3.1), and the protected
resource metadata (RFC 9728 §3) at ``/.well-known/oauth-protected-resource/mcp``, naming
the issuer as the authorization server. :class:`Challenges` adjusts its challenges:
a request without any token gets no error code (RFC 6750 §3.1), and every challenge names
the scope it needs.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import time
from typing import TextIO
from urllib.parse import urlsplit

import httpx
import jwt
from anyio import to_thread
from mcp.server.auth.provider import AccessToken
from mcp.server.auth.settings import AuthSettings
from mcp.server.transport_security import TransportSecuritySettings
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from issuer.app import bind, on_stop_signals, serve_http
from issuer.keys import KeyRing, PublicKey
from issuer.netloc import hostport
from issuer.oauth.tokens import KeyLookup, ring_lookup
from issuer.store import Store
from issuer.verify import KeyRefresh, Refusal, Verifier, agent_statuses, revocations
from pep.admin_mcp.server import ADMIN_SCOPE, Settings, build_server

MCP_PATH = "/mcp"

log = logging.getLogger("tessera.admin_mcp")


class AdminTokens:
    """The SDK's token verifier (``verify_token``) over Tessera's issuer: an agent acting
    alone, its token not revoked, the agent active (:class:`issuer.verify.Verifier`).

    A refused token is None here, which the SDK answers 401 ``invalid_token``; it checks
    the scope itself (403 ``insufficient_scope``) and :class:`Challenges` finishes the
    challenges."""

    def __init__(
        self,
        store: Store,
        issuer: str,
        resource: str,
        keys: KeyLookup,
        refresh_keys: KeyRefresh | None = None,
    ) -> None:
        self.resource = resource
        self.verifier = Verifier(
            keys,
            issuer.rstrip("/"),
            resource,
            refresh_keys=refresh_keys,
            revoked=revocations(store),
            agent_status=agent_statuses(store),
            alone=True,  # a bound token would need its certificate, which is not seen here
        )

    async def verify_token(self, token: str) -> AccessToken | None:
        found = await self.verifier.verify(token)
        if isinstance(found, Refusal):
            log.info("admin MCP: token refused: %s", found.message)
            return None
        claims = found.claims
        return AccessToken(
            token=token,
            client_id=str(claims["client_id"]),
            scopes=str(claims.get("scope", "")).split(),
            expires_at=int(claims["exp"]),
            resource=self.resource,
            subject=str(claims["sub"]),
            claims=dict(claims),
        )


_METADATA = re.compile(r'resource_metadata="([^"]*)"')


class Challenges:
    """Rewrites the SDK's ``WWW-Authenticate`` challenges as RFC 6750 §3 and RFC 9728 §5.1
    want them: ``realm`` and ``scope`` on every one, no error code when the request
    carried no token, and the protected resource metadata URL kept."""

    def __init__(self, app: ASGIApp, realm: str = "tessera") -> None:
        self.app = app
        self.realm = realm

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        tokenless = not any(name == b"authorization" for name, _ in scope["headers"])

        async def challenged(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] in (401, 403):
                message = {**message, "headers": self._rewritten(message, tokenless)}
            await send(message)

        await self.app(scope, receive, challenged)

    def _rewritten(self, message: Message, tokenless: bool) -> list[tuple[bytes, bytes]]:
        headers: list[tuple[bytes, bytes]] = []
        for name, value in message.get("headers", []):
            if name.lower() != b"www-authenticate":
                headers.append((name, value))
                continue
            text = value.decode("latin-1")
            found = _METADATA.search(text)
            parts = [f'realm="{self.realm}"', f'scope="{ADMIN_SCOPE}"']
            if message["status"] == 403:
                parts.append('error="insufficient_scope"')
            elif not tokenless:
                parts.append('error="invalid_token"')
            if found:
                parts.append(f'resource_metadata="{found.group(1)}"')
            headers.append((name, ("Bearer " + ", ".join(parts)).encode("latin-1")))
        return headers


class PublishedKeys:
    """A key lookup over the issuer's published JWK Set (its ``/oauth/jwks``), for a server
    that should not read the signing keys from the store. An unknown kid fetches the set
    again (:meth:`refresh`), at most once per :data:`REFETCH` seconds."""

    REFETCH = 5.0

    def __init__(self, url: str) -> None:
        self.url = url
        self._keys: dict[str, tuple[str, PublicKey]] = {}
        self._fetched = -self.REFETCH
        self._lock = asyncio.Lock()

    def __call__(self, kid: str) -> tuple[str, PublicKey] | None:
        return self._keys.get(kid)

    async def refresh(self) -> None:
        """Fetch the set again (off the event loop), unless that was done lately."""
        async with self._lock:
            if time.monotonic() - self._fetched < self.REFETCH:
                return
            self._fetched = time.monotonic()
            self._keys = await to_thread.run_sync(self._fetch)

    def _fetch(self) -> dict[str, tuple[str, PublicKey]]:
        try:
            response = httpx.get(self.url, timeout=5)
            response.raise_for_status()
            keys = response.json()["keys"]
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            log.warning("cannot read the issuer's keys at %s: %s", self.url, exc)
            return self._keys
        published: dict[str, tuple[str, PublicKey]] = {}
        for jwk in keys:
            try:
                published[str(jwk["kid"])] = (str(jwk["alg"]), jwt.PyJWK(jwk).key)
            except (KeyError, TypeError, jwt.PyJWTError):
                log.warning("skipping an unusable key in %s", self.url)
        return published


def http_app(
    settings: Settings,
    issuer: str,
    resource: str,
    host: str = "127.0.0.1",
    jwks: str | None = None,
) -> ASGIApp:
    """The Streamable HTTP application at :data:`MCP_PATH`, behind the issuer's tokens,
    verified with the signing keys in the store, or with those published at ``jwks``."""
    if jwks:
        published = PublishedKeys(jwks)
        tokens = AdminTokens(settings.store, issuer, resource, published, published.refresh)
    else:
        tokens = AdminTokens(settings.store, issuer, resource, ring_lookup(KeyRing(settings.store)))
    auth = AuthSettings(
        issuer_url=issuer,  # type: ignore[arg-type]
        resource_server_url=resource,  # type: ignore[arg-type]
        required_scopes=[ADMIN_SCOPE],
        validate_token_resource=False,  # AdminTokens checks the audience itself
    )
    server = build_server(settings, auth=auth, token_verifier=tokens)
    app = server.streamable_http_app(
        streamable_http_path=MCP_PATH, host=host, transport_security=host_check(resource)
    )
    return Challenges(app)


def host_check(resource: str) -> TransportSecuritySettings:
    """DNS rebinding protection: the Host (and any Origin) must be a loopback name or the
    resource URI's own host, whatever address the server listens on."""
    parts = urlsplit(resource)
    hosts = ["127.0.0.1:*", "localhost:*", "[::1]:*", parts.netloc]
    origins = ["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"]
    origins.append(f"{parts.scheme}://{parts.netloc}")
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True, allowed_hosts=hosts, allowed_origins=origins
    )


def serve_http_forever(
    settings: Settings,
    host: str,
    port: int,
    issuer: str,
    resource: str | None,
    err: TextIO,
    jwks: str | None = None,
) -> int:
    """``tessera admin-mcp --http``: serve until SIGINT or SIGTERM."""
    try:
        sock = bind(host, port)
    except OSError as exc:
        print(f"tessera admin-mcp: {exc}", file=err)
        return 2
    bound = sock.getsockname()[1]
    served = f"http://{hostport(host, bound)}{MCP_PATH}"
    resource = resource or served
    app = http_app(settings, issuer, resource, host, jwks)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # in-process SCIM calls, not news
    banner = (
        f"tessera admin-mcp: Streamable HTTP at {served}, tokens from "
        f"{issuer} with scope {ADMIN_SCOPE} and audience {resource}"
    )
    asyncio.run(_until_signalled(app, sock, banner, err))
    return 0


async def _until_signalled(app: ASGIApp, sock: socket.socket, banner: str, err: TextIO) -> None:
    """Serve ``app`` on ``sock`` as every Tessera HTTP door is served (its bounds, the
    peer as connected), say ``banner`` once serving, and stop on SIGINT or SIGTERM."""
    stopping = asyncio.Event()
    on_stop_signals(stopping.set)  # before serving: none is missed
    served = await serve_http(app, sock, lifespan=True)
    print(banner, file=err, flush=True)
    await stopping.wait()
    await served.stop()
