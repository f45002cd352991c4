"""The MCP auth proxy's HTTP face: an ASGI application in front of one or more MCP servers.

For each upstream, at its path, the Streamable HTTP transport (POST a JSON-RPC message or
batch; GET the server's stream; DELETE a session), with on every request, in order:

1. the ``Origin`` header, when present, must be this proxy's or an allowed one (DNS
   rebinding); else 403;
2. the bearer token must be valid for this upstream's resource URI (:mod:`tokens`);
   else 401 with the challenge (:mod:`challenges`);
3. the token must carry the upstream's scopes, and for a ``tools/call`` the tool's; else
   403 ``insufficient_scope``;
4. the body must fit ``max_body`` (413), arrive whole within ``body_timeout`` (408),
   be JSON within :mod:`issuer.wire`'s bounds (400, ``-32700``) and JSON-RPC (400,
   ``-32600``), and a batch must be of a protocol revision that has batches (400,
   ``-32600``: none since 2025-06-18, :func:`headers.batch_refusal`);
5. ``Mcp-Method`` and ``Mcp-Name`` headers, when sent, must match the body (400,
   ``-32020``);
6. an ``Mcp-Session-Id`` must belong to the same agent and user that opened it (404);
7. each ``tools/call``, ``prompts/get`` and ``resources/read`` is decided by the PDP
   (:mod:`plan`, :mod:`decisions`): a deny is answered by the proxy (``-32003``, or
   ``-32042`` with a URL to the issuer's consent page when the user can meet what the
   policy asks, consents first, :mod:`consent`; a lone call denied only for step-ups is
   ``401`` with RFC 9470's ``insufficient_user_authentication`` challenge, the ``-32003``
   as its body); ``…/list`` answers keep only what the caller may use or be asked
   consent for.

What is allowed goes to the upstream (:mod:`relay`) with the upstream's own credential
(:mod:`credentials`), never the client's token. The decision ids of the call are in the
``Tessera-Decision-Id`` response header (comma-separated for a batch) and on the PDP's
audit trail. Upstream timeouts and failures become JSON-RPC errors for each request.
Besides the MCP endpoints: each upstream's protected resource metadata (RFC 9728), and
the page the issuer's consent page returns the user to.
"""

from __future__ import annotations

import contextlib
import html
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import httpx
from cachetools import TTLCache
from mcp.server.streamable_http import check_accept_headers
from mcp.shared.inbound import decode_header_value
from starlette.applications import Starlette
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from issuer.oauth.mtls import certificate_from, confirmation
from issuer.wire import TooSlow, WireError, read_body, read_json
from pdp.loader import Loaded
from pep.mcp_proxy import challenges
from pep.mcp_proxy.answers import DECISION_HEADER, answer, json_error
from pep.mcp_proxy.config import ProxyConfig, Upstream
from pep.mcp_proxy.consent import CONSENT_PATH
from pep.mcp_proxy.credentials import Credentials
from pep.mcp_proxy.decisions import Decider, LocalDecider, pdp_credentials
from pep.mcp_proxy.headers import (
    SESSION_HEADER,
    Incoming,
    batch_refusal,
    is_stateless,
    media_type,
)
from pep.mcp_proxy.jsonrpc import (
    HEADER_MISMATCH,
    INVALID_REQUEST,
    PARSE_ERROR,
    Message,
    dumps,
    error,
    invalid,
    valid_id,
)
from pep.mcp_proxy.metrics import ProxyMetrics
from pep.mcp_proxy.plan import Plan, Planner, tool_scopes, unforwardable
from pep.mcp_proxy.relay import Relay
from pep.mcp_proxy.stdio import StdioUpstream
from pep.mcp_proxy.tokens import Caller, Jwks, ResourceServer, Unauthorized
from pep.mcp_proxy.upstream import UpstreamClient

NAME_BEARING = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}
EXPOSED = ("Mcp-Session-Id", "WWW-Authenticate", DECISION_HEADER)  # to browser scripts (CORS)
ENDPOINT_METHODS = ("GET", "POST", "DELETE")
MAX_SESSIONS = 100_000


class Proxy:
    """The proxy: its configuration and state, and the ASGI application that serves it
    (token checks, the plans of the calls and the relay to the upstreams, once started)."""

    def __init__(self, config: ProxyConfig, loaded: Loaded | None = None) -> None:
        self.config = config
        self.loaded = loaded  # local decisions: the policies, when already loaded
        self.decider: Decider | LocalDecider | None = None
        self.tokens: ResourceServer | None = None
        self.stdio: dict[str, StdioUpstream] = {}
        self.clients: dict[str, UpstreamClient] = {}
        self.metrics = ProxyMetrics()
        self.planner: Planner | None = None
        self.relay: Relay | None = None
        # (upstream, Mcp-Session-Id) -> the caller that opened it (agent|user)
        self.sessions: TTLCache[tuple[str, str], str] = TTLCache(MAX_SESSIONS, 24 * 3600)
        origin = urlsplit(config.public_url)
        self.origins = frozenset(
            {f"{origin.scheme}://{origin.netloc}", *(o.rstrip("/") for o in config.allowed_origins)}
        )

    @contextlib.asynccontextmanager
    async def lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        """What the proxy talks to (the PDP, the issuer, the upstreams), open while the
        application runs."""
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=50)
        async with httpx.AsyncClient(timeout=10.0, limits=limits) as http:
            pdp = Decider(
                self.config.pdp,
                self.config.pdp_timeout,
                self.config.decision_cache,
                pdp_credentials(self.config, http),
                self.metrics,
            )
            self.decider = (
                LocalDecider(self.config, pdp, self.metrics.registry, self.loaded)
                if self.config.decisions == "local"
                else pdp
            )
            jwks = Jwks(self.config.jwks, http, self.config.algorithms)
            client = (
                (self.config.client_id, self.config.client_secret)
                if self.config.client_id
                else None
            )
            local = self.decider if isinstance(self.decider, LocalDecider) else None
            self.tokens = ResourceServer(
                self.config.issuer,
                jwks,
                http,
                client,
                self.config.api_keys,
                revoked=local.directory.revoked if local is not None else None,
                keep=self.config.token_cache,
            )
            for upstream in self.config.upstreams:
                if upstream.command:
                    self.stdio[upstream.name] = StdioUpstream(upstream.command, upstream.timeout)
                elif upstream.url:
                    self.clients[upstream.name] = UpstreamClient(upstream.url)
            self.planner = Planner(self.config, self.decider, self.metrics)
            self.relay = Relay(
                self.planner,
                Credentials(self.config, http),
                self.clients,
                self.stdio,
                self.sessions,
                self.metrics,
            )
            try:
                yield
            finally:
                for stdio in self.stdio.values():
                    await stdio.close()
                for pool in self.clients.values():
                    await pool.close()
                await self.decider.close()

    def app(self) -> ASGIApp:
        """The ASGI application: the MCP endpoints, the metadata and the consent page."""
        routes = [Route(CONSENT_PATH, self.consent_done, methods=["GET"])]
        for upstream in self.config.upstreams:
            routes.append(
                Route(
                    f"{challenges.WELL_KNOWN}{upstream.path}",
                    self._metadata(upstream),
                    methods=["GET"],
                )
            )
        if len(self.config.upstreams) == 1:
            only = self.config.upstreams[0]
            routes.append(Route(challenges.WELL_KNOWN, self._metadata(only), methods=["GET"]))
        routed: ASGIApp = Starlette(routes=routes, lifespan=self.lifespan)
        # The MCP endpoints skip the router and its middleware: the hot path
        direct = {u.path: (u.name, self._endpoint(u)) for u in self.config.upstreams}
        metrics = self.metrics

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            found = direct.get(scope["path"]) if scope["type"] == "http" else None
            if found is None:
                await routed(scope, receive, send)
                return
            name, endpoint = found
            if scope["method"] in ENDPOINT_METHODS:
                response = await endpoint(Incoming(scope, receive))
            else:
                allow = ", ".join(ENDPOINT_METHODS)
                response = Response(status_code=405, headers={"Allow": allow})
            metrics.responded(name, response.status_code)
            await response(scope, receive, send)

        if not self.config.allowed_origins:
            return app
        # Browser clients on other origins: CORS preflights answered, and the headers a
        # client needs (the session, the challenge, the decision ids) exposed to them
        return CORSMiddleware(
            app,
            allow_origins=[o.rstrip("/") for o in self.config.allowed_origins],
            allow_methods=ENDPOINT_METHODS,
            allow_headers=["*"],
            expose_headers=EXPOSED,
            max_age=600,
        )

    # -- metadata and consent pages

    def _metadata(self, upstream: Upstream) -> Callable[[Request], Any]:
        """The endpoint of the upstream's protected resource metadata (RFC 9728)."""
        document = challenges.metadata(self.config, upstream)

        async def serve(_request: Request) -> Response:
            return JSONResponse(document, headers={"Cache-Control": "max-age=300"})

        return serve

    async def consent_done(self, request: Request) -> Response:
        """Where the issuer's consent page returns the user; the code is not used."""
        declined = request.query_params.get("error") == "access_denied"
        text = (
            "You declined. The agent will not be allowed to do this."
            if declined
            else "Thank you: your consent is recorded. You can return to your application."
        )
        page = (
            "<!doctype html><html><head><meta charset='utf-8'><title>Tessera</title></head>"
            f"<body><p>{html.escape(text)}</p></body></html>"
        )
        return HTMLResponse(page, headers={"Cache-Control": "no-store"})

    # -- the transport

    def _endpoint(self, upstream: Upstream) -> Callable[[Incoming], Any]:
        """The MCP endpoint of the upstream: the checks every request passes, in order."""

        async def endpoint(request: Incoming) -> Response:
            refused = self._origin(request)
            if refused is not None:
                return refused
            if request.repeated and (twice := request.repeated_singleton()) is not None:
                if twice == "authorization":  # RFC 6750 §3.1
                    return challenges.invalid_request(
                        self.config, upstream, "more than one Authorization header"
                    )
                return json_error(400, None, INVALID_REQUEST, f"{twice} is given more than once")
            assert self.tokens is not None
            resource = self.config.resource(upstream)
            try:
                caller = await self.tokens.authenticate(
                    request.fields.get("authorization"), resource, self._certificate(request)
                )
            except Unauthorized as exc:
                return challenges.unauthorized(self.config, upstream, exc.description)
            missing = [s for s in upstream.scopes if s not in caller.scopes]
            if missing:
                return challenges.insufficient_scope(
                    self.config, upstream, upstream.scopes, missing
                )
            session = request.fields.get(SESSION_HEADER)
            if (
                session is not None
                and not is_stateless(request)
                and self.sessions.get((upstream.name, session)) != caller.key
            ):
                # unknown (expired, or from before a restart) or another caller's: the
                # client starts a new session (MCP Streamable HTTP)
                return json_error(404, None, INVALID_REQUEST, "unknown session")
            if request.method == "POST":
                return await self.post(request, upstream, caller)
            if upstream.command:
                return Response(status_code=405, headers={"Allow": "POST"})
            if request.method == "GET" and not check_accept_headers(request)[1]:
                return json_error(406, None, INVALID_REQUEST, "Accept must allow text/event-stream")
            assert self.relay is not None
            return await self.relay.forward(request, upstream, caller, None, Plan())

        return endpoint

    def _certificate(self, request: Incoming) -> str | None:
        """The ``x5t#S256`` of the client's certificate, as the TLS-terminating proxy in
        front forwards it (``client_cert_header``, believed from ``client_cert_proxies``
        only); None without one."""
        header = self.config.client_cert_header
        if not header:
            return None
        proxies = frozenset(self.config.client_cert_proxies)
        found = certificate_from(request.scope, request.fields, header, proxies)
        return None if found is None else confirmation(found)

    def _origin(self, request: Incoming) -> Response | None:
        """A 403 for an ``Origin`` neither this proxy's nor an allowed one (DNS rebinding)."""
        origin = request.fields.get("origin")
        if origin is None or origin.rstrip("/") in self.origins:
            return None
        return json_error(403, None, INVALID_REQUEST, f"origin {origin!r} is not allowed")

    async def _body(self, request: Incoming) -> bytes | Response:
        """The request's body, or the answer when it is over ``max_body`` (413), has not
        arrived whole within ``body_timeout`` (408) or was cut off."""
        try:
            return await read_body(request, self.config.max_body, self.config.body_timeout)
        except WireError as exc:
            refusal = json_error(exc.status, None, INVALID_REQUEST, str(exc))
            if isinstance(exc, TooSlow):
                # RFC 9110 §15.5.9: the rest of the body may still come, and would be
                # read as the next request
                refusal.headers["Connection"] = "close"
            return refusal

    async def post(self, request: Incoming, upstream: Upstream, caller: Caller) -> Response:
        """A JSON-RPC message or batch checked and planned, and what it may do forwarded."""
        if media_type(request.fields.get("content-type")) != "application/json":
            return json_error(415, None, INVALID_REQUEST, "Content-Type must be application/json")
        if check_accept_headers(request) != (True, True):
            return json_error(
                406,
                None,
                INVALID_REQUEST,
                "Accept must allow application/json and text/event-stream",
            )
        body = await self._body(request)
        if isinstance(body, Response):
            return body
        try:
            parsed = read_json(body)
        except WireError as exc:  # not JSON, or beyond the bounds (depth, digits)
            return json_error(400, None, PARSE_ERROR, str(exc))
        batch = isinstance(parsed, list)
        if batch and (unbatched := batch_refusal(request)) is not None:
            return json_error(400, None, INVALID_REQUEST, unbatched)
        if batch and not parsed:
            return json_error(400, None, INVALID_REQUEST, "the batch is empty")
        messages = []
        refusals = []  # JSON-RPC 2.0 §6: an error for each invalid member of a batch
        for member in parsed if batch else [parsed]:
            why = invalid(member)
            if why is None:
                messages.append(member)
                continue
            id = member.get("id") if isinstance(member, dict) else None
            id = id if valid_id(id) else None  # JSON-RPC 2.0 §5: null when it cannot be had
            if not batch:
                return json_error(400, id, INVALID_REQUEST, why)
            refusals.append(error(id, INVALID_REQUEST, why))
        if not messages:
            return Response(dumps(refusals), 400, media_type="application/json")
        problem = _header_mismatch(request.fields, messages, batch) or unforwardable(messages)
        if problem is not None:
            id = None if batch else messages[0].get("id")
            return json_error(400, id, problem[0], problem[1])
        needed = tool_scopes(upstream, messages)
        missing = [s for s in needed if s not in caller.scopes]
        if missing:
            return challenges.insufficient_scope(
                self.config, upstream, [*upstream.scopes, *needed], missing
            )
        assert self.planner is not None and self.relay is not None
        plan = await self.planner.plan(upstream, caller, messages)
        plan.local[:0] = refusals
        if not plan.forward:
            return self._answered(upstream, plan, batch)
        # What was decided is what goes on, written anew: the upstream's JSON parser never
        # sees another reading of the bytes (a repeated member name, say) than the proxy's
        payload = plan.forward if batch else plan.forward[0]
        return await self.relay.forward(request, upstream, caller, payload, plan)

    def _answered(self, upstream: Upstream, plan: Plan, batch: bool) -> Response:
        """The answer to a POST the proxy answers whole: 200 with the local answers, or,
        for a lone call denied only for step-ups, 401 with RFC 9470's challenge."""
        local: Any = plan.local if batch else plan.local[0]
        if plan.step_up and not batch:
            return challenges.insufficient_user_authentication(
                self.config, upstream, plan.step_up, dumps(local), plan.decisions
            )
        return answer(200, dumps(local), plan.decisions)


def _header_mismatch(
    headers: Mapping[str, str], messages: list[Message], batch: bool
) -> tuple[int, str] | None:
    """Whether ``Mcp-Method`` / ``Mcp-Name`` disagree with the body (they route and are
    logged by intermediaries, so they must say what the body does): the JSON-RPC error."""
    method = headers.get("mcp-method")
    raw_name = headers.get("mcp-name")
    if method is None and raw_name is None:
        return None
    if batch:
        return HEADER_MISMATCH, "Mcp-Method and Mcp-Name cannot describe a batch"
    name = decode_header_value(raw_name)  # printable ASCII as is, else =?base64?…?=
    if raw_name is not None and name is None:
        return HEADER_MISMATCH, "the Mcp-Name header is not valid =?base64?…?= UTF-8"
    message = messages[0]
    if method is not None and method != message.get("method"):
        return HEADER_MISMATCH, "the Mcp-Method header does not match the body's method"
    key = NAME_BEARING.get(str(message.get("method")))
    params = message.get("params")
    value = params.get(key) if key is not None and isinstance(params, dict) else None
    if key is not None and value is not None and name != value:
        return HEADER_MISMATCH, f"the Mcp-Name header does not match the body's params.{key}"
    if key is None and name is not None:
        return HEADER_MISMATCH, "Mcp-Name is only for tools/call, prompts/get and resources/read"
    return None
