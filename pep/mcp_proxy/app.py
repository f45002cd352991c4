"""The MCP auth proxy: an ASGI application in front of one or more MCP servers.

For each upstream, at its path, the Streamable HTTP transport (POST a JSON-RPC message or
batch; GET the server's stream; DELETE a session), with on every request, in order:

1. the ``Origin`` header, when present, must be this proxy's or an allowed one (DNS
   rebinding); else 403;
2. the bearer token must be valid for this upstream's resource URI (:mod:`tokens`);
   else 401 with the challenge (:mod:`challenges`);
3. the token must carry the upstream's scopes, and for a ``tools/call`` the tool's; else
   403 ``insufficient_scope``;
4. the body must fit ``max_body`` (413) and be JSON-RPC (400, ``-32700``/``-32600``);
5. ``Mcp-Method`` and ``Mcp-Name`` headers, when sent, must match the body (400,
   ``-32020``);
6. an ``Mcp-Session-Id`` must belong to the same agent and user that opened it (404);
7. each ``tools/call``, ``prompts/get`` and ``resources/read`` is decided by the PDP
   (:mod:`decisions`): a deny is answered by the proxy (``-32003``, or ``-32042`` with a
   URL to the issuer's consent page when the policy asks for the user's consent);
   ``…/list`` answers keep only what the caller may use.

What is allowed goes to the upstream with the upstream's own credential
(:mod:`credentials`), never the client's token. The decision ids of the call are in the
``Tessera-Decision-Id`` response header (comma-separated for a batch) and on the PDP's
audit trail. Upstream timeouts and failures become JSON-RPC errors for each request.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import html
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx
import orjson
from cachetools import TTLCache
from mcp.server.streamable_http import check_accept_headers
from mcp.shared.exceptions import UrlElicitationRequiredError
from mcp.shared.inbound import decode_header_value
from mcp_types import ElicitRequestURLParams
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from starlette.applications import Starlette
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from pdp.loader import Loaded
from pep.client import Verdict
from pep.mcp_proxy import challenges
from pep.mcp_proxy.config import ProxyConfig, Upstream
from pep.mcp_proxy.credentials import CredentialError, Credentials
from pep.mcp_proxy.decisions import (
    DECIDED,
    LISTED,
    TOOL,
    ArgumentError,
    Decider,
    Kind,
    LocalDecider,
    mapped_context,
)
from pep.mcp_proxy.jsonrpc import (
    CONSENT_REQUIRED,
    FORBIDDEN,
    HEADER_MISMATCH,
    INVALID_REQUEST,
    PARSE_ERROR,
    UPSTREAM_ERROR,
    Message,
    SseTooLarge,
    dumps,
    error,
    has_event_id,
    invalid,
    is_comment,
    is_request,
    rewrite_sse,
    sse_event,
    valid_id,
)
from pep.mcp_proxy.metrics import ProxyMetrics
from pep.mcp_proxy.stdio import StdioUpstream, UpstreamFailed
from pep.mcp_proxy.tokens import Caller, Jwks, ResourceServer, Unauthorized
from pep.mcp_proxy.upstream import ANSWER_LIMIT, TooLarge, UpstreamClient, UpstreamError
from pep.mcp_proxy.upstream import Response as UpstreamResponse

log = logging.getLogger("tessera.mcp_proxy")

DECISION_HEADER = "Tessera-Decision-Id"
SESSION_HEADER = "mcp-session-id"
CONSENT_PATH = "/consent/done"
NAME_BEARING = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}
# Request headers the upstream sees; everything else (Authorization, Cookie…) stays here.
FORWARDED = (
    "accept",
    "content-type",
    "mcp-session-id",
    "mcp-protocol-version",
    "mcp-method",
    "mcp-name",
    "last-event-id",
)
FORWARDED_PREFIX = "mcp-param-"  # MCP request metadata headers (Mcp-Param-<Name>)
# A stateless (2026-07-28) request has no session and no stream to resume: an id it names
# is not passed on, so it cannot reach a session of another caller's
STATELESS_FORWARDED = tuple(f for f in FORWARDED if f not in ("mcp-session-id", "last-event-id"))
RETURNED = ("content-type", "mcp-session-id", "cache-control")
# Fields a request may carry once (RFC 9110 §5.3): two differing values would let the proxy
# and the upstream read different ones.
SINGLETONS = frozenset(
    {"authorization", "content-type", "origin", *FORWARDED} - {"accept"}  # lists may repeat
)
EXPOSED = ("Mcp-Session-Id", "WWW-Authenticate", DECISION_HEADER)  # to browser scripts (CORS)
ENDPOINT_METHODS = ("GET", "POST", "DELETE")
SSE_EVENT_LIMIT = ANSWER_LIMIT  # as much in one event as in a JSON answer
MAX_SESSIONS = 100_000


def _id_key(value: Any) -> str:
    """An id as JSON-RPC peers match it: a number by its value (1 and 1.0 are one id to
    a JavaScript server, as are integers past 2**53), anything else by its JSON text."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return f"number {float(value)!r}"
        except OverflowError:
            return f"number {value!r}"
    return json.dumps(value)


class Incoming(Request):
    """A request to an MCP endpoint, its header fields decoded once into a dict (the first
    of a repeated name, as ``headers.get`` gives): a call reads a dozen of them."""

    def __init__(self, scope: Scope, receive: Receive) -> None:
        super().__init__(scope, receive)
        headers = scope["headers"]
        self.fields = {
            name.decode("latin-1"): value.decode("latin-1") for name, value in reversed(headers)
        }
        self.repeated = len(self.fields) != len(headers)

    def repeated_singleton(self) -> str | None:
        """A field that must be given once but is given more than once, if any."""
        seen: set[str] = set()
        for raw, _ in self.scope["headers"]:
            name: str = raw.decode("latin-1")
            if name in seen and (name in SINGLETONS or name.startswith(FORWARDED_PREFIX)):
                return name
            seen.add(name)
        return None


@dataclass
class Plan:
    """What one POST becomes: local answers, messages to forward, lists to filter."""

    local: list[Message] = field(default_factory=list)
    forward: list[Message] = field(default_factory=list)
    filters: dict[str, Kind] = field(default_factory=dict)
    decisions: list[str] = field(default_factory=list)


class Proxy:
    """The proxy's state: configuration, token checks, the PDP, upstream connections."""

    def __init__(self, config: ProxyConfig, loaded: Loaded | None = None) -> None:
        self.config = config
        self.loaded = loaded  # local decisions: the policies, when already loaded
        self.by_path = {u.path: u for u in config.upstreams}
        self.http: httpx.AsyncClient | None = None
        self.decider: Decider | LocalDecider | None = None
        self.tokens: ResourceServer | None = None
        self.credentials: Credentials | None = None
        self.stdio: dict[str, StdioUpstream] = {}
        self.clients: dict[str, UpstreamClient] = {}
        self.metrics = ProxyMetrics()
        # (upstream, Mcp-Session-Id) -> the caller that opened it (agent|user)
        self.sessions: TTLCache[tuple[str, str], str] = TTLCache(MAX_SESSIONS, 24 * 3600)
        origin = urlsplit(config.public_url)
        self.origins = frozenset(
            {f"{origin.scheme}://{origin.netloc}", *(o.rstrip("/") for o in config.allowed_origins)}
        )

    @contextlib.asynccontextmanager
    async def lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=50)
        async with httpx.AsyncClient(timeout=10.0, limits=limits) as http:
            self.http = http
            pdp = Decider(self.config.pdp, self.config.pdp_timeout, self.config.decision_cache)
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
            self.credentials = Credentials(self.config, http)
            for upstream in self.config.upstreams:
                if upstream.command:
                    self.stdio[upstream.name] = StdioUpstream(upstream.command, upstream.timeout)
                elif upstream.url:
                    self.clients[upstream.name] = UpstreamClient(upstream.url)
            try:
                yield
            finally:
                for stdio in self.stdio.values():
                    await stdio.close()
                for pool in self.clients.values():
                    await pool.close()
                await self.decider.close()

    def app(self) -> ASGIApp:
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
        async def endpoint(request: Incoming) -> Response:
            refused = self._origin(request)
            if refused is not None:
                return refused
            if request.repeated and (twice := request.repeated_singleton()) is not None:
                if twice == "authorization":  # RFC 6750 §3.1
                    return challenges.invalid_request(
                        self.config, upstream, "more than one Authorization header"
                    )
                return _json_error(400, None, INVALID_REQUEST, f"{twice} is given more than once")
            assert self.tokens is not None
            resource = self.config.resource(upstream)
            try:
                caller = await self.tokens.authenticate(
                    request.fields.get("authorization"), resource
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
                and not _stateless(request)
                and self.sessions.get((upstream.name, session)) != caller.key
            ):
                # unknown (expired, or from before a restart) or another caller's: the
                # client starts a new session (MCP Streamable HTTP)
                return _json_error(404, None, INVALID_REQUEST, "unknown session")
            if request.method == "POST":
                return await self.post(request, upstream, caller)
            if upstream.command:
                return Response(status_code=405, headers={"Allow": "POST"})
            if request.method == "GET" and not check_accept_headers(request)[1]:
                return _json_error(
                    406, None, INVALID_REQUEST, "Accept must allow text/event-stream"
                )
            return await self.relay(request, upstream, caller, None, Plan())

        return endpoint

    def _origin(self, request: Incoming) -> Response | None:
        origin = request.fields.get("origin")
        if origin is None or origin.rstrip("/") in self.origins:
            return None
        return _json_error(403, None, INVALID_REQUEST, f"origin {origin!r} is not allowed")

    async def _body(self, request: Incoming) -> bytes | Response:
        limit = self.config.max_body
        declared = request.fields.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return _json_error(413, None, INVALID_REQUEST, f"the body is over {limit} bytes")
        chunks = []
        size = 0
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    return _json_error(
                        413, None, INVALID_REQUEST, f"the body is over {limit} bytes"
                    )
                chunks.append(chunk)
        except ClientDisconnect:
            return Response(status_code=400)
        return b"".join(chunks)

    async def post(self, request: Incoming, upstream: Upstream, caller: Caller) -> Response:
        if _media_type(request.fields.get("content-type")) != "application/json":
            return _json_error(415, None, INVALID_REQUEST, "Content-Type must be application/json")
        if check_accept_headers(request) != (True, True):
            return _json_error(
                406,
                None,
                INVALID_REQUEST,
                "Accept must allow application/json and text/event-stream",
            )
        body = await self._body(request)
        if isinstance(body, Response):
            return body
        try:
            parsed = _loads(body)
        except ValueError:
            return _json_error(400, None, PARSE_ERROR, "the body is not JSON")
        batch = isinstance(parsed, list)
        if batch and not parsed:
            return _json_error(400, None, INVALID_REQUEST, "the batch is empty")
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
                return _json_error(400, id, INVALID_REQUEST, why)
            refusals.append(error(id, INVALID_REQUEST, why))
        if not messages:
            return Response(dumps(refusals), 400, media_type="application/json")
        problem = _header_mismatch(request.fields, messages, batch) or _unforwardable(messages)
        if problem is not None:
            id = None if batch else messages[0].get("id")
            return _json_error(400, id, problem[0], problem[1])
        needed = self._tool_scopes(upstream, messages)
        missing = [s for s in needed if s not in caller.scopes]
        if missing:
            return challenges.insufficient_scope(
                self.config, upstream, [*upstream.scopes, *needed], missing
            )
        plan = await self._plan(upstream, caller, messages)
        plan.local[:0] = refusals
        if not plan.forward:
            local: Any = plan.local if batch else plan.local[0]
            return _answer(200, dumps(local), plan)
        # What was decided is what goes on, written anew: the upstream's JSON parser never
        # sees another reading of the bytes (a repeated member name, say) than the proxy's
        payload = plan.forward if batch else plan.forward[0]
        return await self.relay(request, upstream, caller, payload, plan)

    def _tool_scopes(self, upstream: Upstream, messages: list[Message]) -> list[str]:
        needed: list[str] = []
        for message in messages:
            if message.get("method") == "tools/call":
                params = message.get("params")
                name = params.get("name") if isinstance(params, dict) else None
                for scope in upstream.tool_scopes.get(str(name), ()):
                    if scope not in needed:
                        needed.append(scope)
        return needed

    async def _plan(self, upstream: Upstream, caller: Caller, messages: list[Message]) -> Plan:
        plan = Plan()
        assert self.decider is not None
        for message in messages:
            method = message.get("method")
            if not is_request(message) or not isinstance(method, str):
                plan.forward.append(message)
                continue
            kind = DECIDED.get(method)
            if kind is None:
                listed = LISTED.get(method)
                if listed is not None:
                    plan.filters[_id_key(message["id"])] = listed
                plan.forward.append(message)
                continue
            params = message.get("params")
            params = params if isinstance(params, dict) else {}
            name = params.get(kind.name_key)
            if not isinstance(name, str) or not name:
                plan.local.append(
                    error(message["id"], -32602, f"{method} needs params.{kind.name_key}")
                )
                continue
            arguments = params.get("arguments")
            try:
                context = (
                    mapped_context(
                        upstream.context, arguments if isinstance(arguments, dict) else {}
                    )
                    if kind is TOOL
                    else {}
                )
            except ArgumentError as exc:
                plan.local.append(error(message["id"], -32602, str(exc)))
                continue
            verdict = await self.decider.decide(caller, upstream, method, kind, name, context)
            self.metrics.decided(upstream.name, method, verdict.allow)
            if verdict.decision_id:
                plan.decisions.append(verdict.decision_id)
            if verdict.allow:
                plan.forward.append(message)
            else:
                plan.local.append(self._denied(message["id"], caller, method, name, verdict))
        return plan

    def _denied(self, id: Any, caller: Caller, method: str, name: str, verdict: Verdict) -> Message:
        consents = [value for kind, value in verdict.obligations if kind == "consent"]
        others = [kind for kind, _ in verdict.obligations if kind != "consent"]
        if consents and not others and self._may_ask(caller):
            scope = " ".join(consents)
            elicitation = ElicitRequestURLParams(
                message=f"Allow the agent to use {name} for you ({scope})",
                url=self._consent_url(caller, scope, verdict.decision_id),
                elicitation_id=verdict.decision_id or secrets.token_urlsafe(16),
            )
            found = UrlElicitationRequiredError(
                [elicitation], f"{method} {name!r} needs your consent: {scope}"
            )
            data = {**found.error.data, "decision_id": verdict.decision_id}
            return error(id, CONSENT_REQUIRED, found.error.message, data)
        data = {
            "decision_id": verdict.decision_id,
            "reasons": list(verdict.reasons),
            "obligations": [{"kind": k, "value": v} for k, v in verdict.obligations],
        }
        return error(id, FORBIDDEN, f"{method} {name!r} is not allowed", data)

    def _may_ask(self, caller: Caller) -> bool:
        """Whether a deny awaiting consents can be put to the caller's user (a URL-mode
        elicitation to the issuer's consent page)."""
        return caller.user is not None and bool(self.config.consent_client_id)

    def _consent_url(self, caller: Caller, scope: str, state: str) -> str:
        """The issuer's consent page for this user, agent and scope (an authorization
        request whose code nobody redeems: the challenge's verifier is thrown away)."""
        verifier = secrets.token_urlsafe(32)
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
        query = {
            "response_type": "code",
            "client_id": self.config.consent_client_id,
            "redirect_uri": f"{self.config.public_url}{CONSENT_PATH}",
            "scope": scope,
            "requested_actor": caller.agent,
            "code_challenge": challenge.rstrip(b"=").decode(),
            "code_challenge_method": "S256",
            "state": state or secrets.token_urlsafe(16),
        }
        return f"{self.config.issuer}/oauth/authorize?{urlencode(query)}"

    # -- talking to the upstream

    async def relay(
        self,
        request: Incoming,
        upstream: Upstream,
        caller: Caller,
        payload: Any,
        plan: Plan,
    ) -> Response:
        """Send the request on (POST ``payload``, or GET and DELETE as they are) and
        answer with the upstream's response, rewritten where the plan says."""
        if upstream.command:
            return await self._relay_stdio(upstream, caller, payload, plan)
        assert self.http is not None and self.credentials is not None and upstream.url
        stateless = _stateless(request)
        headers = {
            k: v
            for k in (STATELESS_FORWARDED if stateless else FORWARDED)
            if (v := request.fields.get(k)) is not None
        }
        headers.update((k, v) for k, v in request.fields.items() if k.startswith(FORWARDED_PREFIX))
        token = request.fields.get("authorization", "").partition(" ")[2].strip()
        try:
            credential = await self.credentials.authorization(upstream, token)
        except CredentialError as exc:
            log.warning("upstream %s: no credential: %s", upstream.name, exc)
            return self._failed(
                upstream,
                payload,
                plan,
                "credential",
                f"no credential for upstream {upstream.name!r}",
            )
        if credential is not None:
            headers["authorization"] = credential
        content = dumps(payload) if payload is not None else None
        client = self.clients[upstream.name]
        started = time.perf_counter()
        try:
            response = await client.request(request.method, headers, content, upstream.timeout)
            self.metrics.waited(upstream.name, time.perf_counter() - started)
        except TimeoutError:
            return self._failed(
                upstream, payload, plan, "timeout", f"upstream {upstream.name!r} timed out"
            )
        except UpstreamError as exc:
            log.warning("upstream %s: %s", upstream.name, exc)
            return self._failed(
                upstream, payload, plan, "unreachable", f"upstream {upstream.name!r} is unreachable"
            )
        if response.status in (401, 403):  # the upstream refused the proxy's credential
            await response.aclose()
            self.credentials.forget(upstream, token)
            log.warning("upstream %s refused the credential (%d)", upstream.name, response.status)
            return self._failed(
                upstream,
                payload,
                plan,
                "credential",
                f"upstream {upstream.name!r} refused the proxy's credential",
            )
        session = response.headers.get(SESSION_HEADER)
        if stateless:
            pass  # no sessions: none is ended, none is opened
        elif request.method == "DELETE":
            # ended when the upstream says so (2xx), or when it no longer knows it (404); a
            # server that does not let clients end sessions (405) keeps it
            if response.status < 300 or response.status == 404:
                ended = session or request.fields.get(SESSION_HEADER, "")
                self.sessions.pop((upstream.name, ended), None)
        elif session is not None:
            self.sessions[(upstream.name, session)] = caller.key
        returned = {k: v for k in RETURNED if (v := response.headers.get(k)) is not None}
        if plan.decisions:
            returned[DECISION_HEADER] = ",".join(plan.decisions)
        kind = _media_type(response.headers.get("content-type"))
        if kind == "text/event-stream" and payload is not None:
            stream = self._answer_stream(response, upstream, caller, plan, payload, not stateless)
            return StreamingResponse(stream, response.status, headers=returned)
        if kind == "text/event-stream" or request.method == "GET":
            return StreamingResponse(_chunks(response), response.status, headers=returned)
        try:
            async with asyncio.timeout(upstream.timeout):
                raw = await response.read()
        except TooLarge as exc:
            return self._failed(
                upstream, payload, plan, "too_large", f"upstream {upstream.name!r} sent {exc}"
            )
        except (TimeoutError, UpstreamError):
            await response.aclose()
            return self._failed(
                upstream, payload, plan, "broken", f"upstream {upstream.name!r} failed mid-answer"
            )
        if response.status >= 500 and payload is not None:
            return self._failed(
                upstream, payload, plan, "5xx", f"upstream {upstream.name!r} failed"
            )
        if kind == "application/json" and (plan.filters or plan.local) and raw:
            try:
                answer = json.loads(raw)
            except ValueError:
                return self._failed(
                    upstream, payload, plan, "bad_json", f"upstream {upstream.name!r} sent bad JSON"
                )
            rewritten = await self._rewrite_all(upstream, caller, plan, answer)
            return _answer(response.status, dumps(rewritten), plan, returned)
        if not raw and plan.local:  # only notifications were forwarded
            local: Any = plan.local
            return _answer(200, dumps(local), plan, returned)
        return Response(raw, response.status, headers=returned)

    async def _rewrite_all(
        self, upstream: Upstream, caller: Caller, plan: Plan, answer: Any
    ) -> Any:
        filtered = await self._filter_many(upstream, caller, plan, answer)
        if isinstance(filtered, list):
            return [*plan.local, *filtered]
        if plan.local:
            return [*plan.local, filtered]
        return filtered

    async def _filter_many(
        self, upstream: Upstream, caller: Caller, plan: Plan, answer: Any
    ) -> Any:
        if isinstance(answer, list):
            return [await self._filtered(upstream, caller, plan, m) for m in answer]
        return await self._filtered(upstream, caller, plan, answer)

    async def _answer_stream(
        self,
        response: UpstreamResponse,
        upstream: Upstream,
        caller: Caller,
        plan: Plan,
        payload: Any,
        may_resume: bool,
    ) -> AsyncIterator[bytes]:
        """An SSE answer to a POST, event by event: the proxy's own answers first, then
        the upstream's events, lists filtered. A request the stream leaves unanswered gets
        a JSON-RPC error event: when the upstream is quiet for its ``timeout``, breaks off,
        sends an event over the size limit, or ends the stream without having given an
        event id. With one, and ``may_resume`` (protocol revisions before 2026-07-28), the
        client can resume the stream with ``Last-Event-ID``."""
        sent = payload if isinstance(payload, list) else [payload]
        pending = {_id_key(m["id"]): m["id"] for m in sent if is_request(m)}
        resumable = False

        async def rewrite(message: Any) -> Any:
            for answer in message if isinstance(message, list) else [message]:
                if isinstance(answer, dict) and "id" in answer and "method" not in answer:
                    pending.pop(_id_key(answer["id"]), None)
            return await self._filter_many(upstream, caller, plan, message)

        why = "ended the stream without answering"
        events = rewrite_sse(response.chunks(), rewrite, plan.local, SSE_EVENT_LIMIT)
        loop = asyncio.get_running_loop()
        quiet_until = loop.time() + upstream.timeout
        try:
            while True:
                # quiet: no event for the upstream's timeout (comments, such as the SDK's
                # keep-alive pings, do not count: they say nothing of the requests)
                async with asyncio.timeout_at(quiet_until):
                    try:
                        event = await anext(events)
                    except StopAsyncIteration:
                        break
                if not is_comment(event):
                    quiet_until = loop.time() + upstream.timeout
                resumable = resumable or (may_resume and has_event_id(event))
                yield event
        except TimeoutError:
            why, resumable = "timed out", False
        except UpstreamError:
            why = "broke off"
            log.warning("upstream %s: the stream broke off", upstream.name)
        except SseTooLarge:
            why, resumable = "sent an event over the size limit", False
        finally:
            await events.aclose()
            await response.aclose()
        if pending and not resumable:
            self.metrics.failed(upstream.name, "stream")
            reason = f"upstream {upstream.name!r} {why}"
            for id in pending.values():
                yield sse_event(error(id, UPSTREAM_ERROR, reason))

    async def _filtered(self, upstream: Upstream, caller: Caller, plan: Plan, message: Any) -> Any:
        """A ``…/list`` result with only the items the caller may use."""
        if not isinstance(message, dict) or "id" not in message:
            return message
        kind = plan.filters.get(_id_key(message["id"]))
        result = message.get("result")
        if kind is None or not isinstance(result, dict):
            return message
        items = result.get(kind.list_key)
        if not isinstance(items, list):
            return message
        names = [str(i.get(kind.item_key)) for i in items if isinstance(i, dict)]
        assert self.decider is not None
        listed = await self.decider.listed(caller, upstream, kind, names)
        shown = listed.allowed
        if self._may_ask(caller):  # the call will ask the user for the consents
            shown = shown | listed.consent_required
        kept = [i for i in items if isinstance(i, dict) and str(i.get(kind.item_key)) in shown]
        return {**message, "result": {**result, kind.list_key: kept}}

    async def _relay_stdio(
        self, upstream: Upstream, caller: Caller, payload: Any, plan: Plan
    ) -> Response:
        stdio = self.stdio[upstream.name]
        try:
            answer = await stdio.send(payload, caller.key)
        except UpstreamFailed as exc:
            return self._failed(
                upstream, payload, plan, "stdio", f"upstream {upstream.name!r} {exc}"
            )
        if answer is None:
            if plan.local:
                return _answer(200, dumps(plan.local), plan)
            return Response(status_code=202)
        rewritten = await self._rewrite_all(upstream, caller, plan, answer)
        return _answer(200, dumps(rewritten), plan)

    def _failed(
        self, upstream: Upstream, payload: Any, plan: Plan, why: str, reason: str
    ) -> Response:
        """Each forwarded request answered with a JSON-RPC error (with the local answers);
        ``why`` is the metric's label, ``reason`` the message."""
        self.metrics.failed(upstream.name, why)
        messages = payload if isinstance(payload, list) else [payload] if payload else []
        errors = [error(m["id"], UPSTREAM_ERROR, reason) for m in messages if is_request(m)]
        answers = [*plan.local, *errors]
        if not answers:
            return _json_error(502, None, UPSTREAM_ERROR, reason)
        body: Any = answers if isinstance(payload, list) or len(answers) > 1 else answers[0]
        return _answer(200, dumps(body), plan)


def _media_type(content_type: str | None) -> str:
    """The media type of a ``Content-Type`` value, without its parameters."""
    return (content_type or "").partition(";")[0].strip().lower()


def _stateless(request: Incoming) -> bool:
    """Whether the request speaks a stateless protocol revision (2026-07-28 on): no
    sessions, no resumable streams, so ``Mcp-Session-Id`` means nothing."""
    return request.fields.get("mcp-protocol-version") in MODERN_PROTOCOL_VERSIONS


def _loads(body: bytes) -> Any:
    """JSON text as Python values: orjson, or (for what it refuses that JSON allows, such
    as integers beyond 64 bits) the standard parser."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return json.loads(body)


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


def _unforwardable(messages: list[Message]) -> tuple[int, str] | None:
    """A message the proxy cannot decide and answer as it must: a call that is decided
    but sent as a notification (no id, so no answer for a deny, and the upstream might
    act on it), or a request id given twice in a batch (answers are matched by id)."""
    ids = set()
    for message in messages:
        method = message.get("method")
        if method in DECIDED and "id" not in message:
            return INVALID_REQUEST, f"{method} is a request: it needs an id"
        if is_request(message):
            key = _id_key(message["id"])
            if key in ids:
                return (
                    INVALID_REQUEST,
                    f"the batch gives the request id {dumps(message['id']).decode()} twice",
                )
            ids.add(key)
    return None


async def _chunks(response: UpstreamResponse) -> AsyncIterator[bytes]:
    """The upstream's body as it arrives; a failure mid-stream ends the stream."""
    try:
        async for chunk in response.chunks():
            yield chunk
    except UpstreamError:
        log.warning("upstream stream broke off")
    finally:
        await response.aclose()


def _answer(
    status: int, body: bytes, plan: Plan, headers: Mapping[str, str] | None = None
) -> Response:
    out = {**(headers or {}), "content-type": "application/json"}
    if plan.decisions:
        out[DECISION_HEADER] = ",".join(plan.decisions)
    return Response(body, status, headers=out)


def _json_error(status: int, id: Any, code: int, message: str) -> Response:
    return Response(dumps(error(id, code, message)), status, media_type="application/json")
