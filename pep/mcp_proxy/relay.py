"""The upstream relay: what a plan forwards, sent on, and the upstream's answer brought back.

A Streamable HTTP upstream gets the request's MCP header fields (:mod:`headers`) and the
upstream's own credential (:mod:`credentials`), never the client's token; a stdio
upstream gets the messages on its standard input (:mod:`stdio`). The answer comes back
rewritten where the plan says: the proxy's own answers merged in, ``…/list`` results
filtered; a JSON answer whole, an SSE answer event by event as it streams. The sessions
the upstream opens are kept for the caller that opened them, and forgotten when ended.

An upstream that times out, cannot be reached, refuses the proxy's credential, fails
(5xx), breaks off, or sends what is not its answer (JSON the proxy cannot read within the
bounds of :func:`issuer.wire.read_json`, over the size limit) leaves each forwarded
request answered with a JSON-RPC error (``-32603``), and is counted in
``tessera_mcp_proxy_upstream_failures_total`` by why. An upstream that refuses a request
(4xx) without naming its id (``id: null``, or no JSON-RPC at all) has its error given to
each request it refused, with that request's id.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from cachetools import TTLCache
from starlette.responses import Response, StreamingResponse

from issuer.wire import WireError, read_json
from pep.mcp_proxy.answers import DECISION_HEADER, answer, json_error
from pep.mcp_proxy.config import Upstream
from pep.mcp_proxy.credentials import CredentialError, Credentials
from pep.mcp_proxy.headers import (
    FORWARDED,
    FORWARDED_PREFIX,
    RETURNED,
    SESSION_HEADER,
    STATELESS_FORWARDED,
    Incoming,
    is_stateless,
    media_type,
)
from pep.mcp_proxy.jsonrpc import (
    UPSTREAM_ERROR,
    Message,
    SseTooLarge,
    SseUnreadable,
    dumps,
    error,
    has_event_id,
    is_comment,
    is_request,
    rewrite_sse,
    sse_event,
)
from pep.mcp_proxy.metrics import ProxyMetrics
from pep.mcp_proxy.plan import Plan, Planner, id_key
from pep.mcp_proxy.stdio import StdioUpstream, UpstreamFailed
from pep.mcp_proxy.tokens import Caller
from pep.mcp_proxy.upstream import ANSWER_LIMIT, TooLarge, UpstreamClient, UpstreamError
from pep.mcp_proxy.upstream import Response as UpstreamResponse

log = logging.getLogger("tessera.mcp_proxy")

SSE_EVENT_LIMIT = ANSWER_LIMIT  # as much in one event as in a JSON answer


class Relay:
    """Sends what the plans forward to the upstreams, and answers with what comes back."""

    def __init__(
        self,
        planner: Planner,
        credentials: Credentials,
        clients: dict[str, UpstreamClient],
        stdio: dict[str, StdioUpstream],
        sessions: TTLCache[tuple[str, str], str],
        metrics: ProxyMetrics,
    ) -> None:
        self.planner = planner
        self.credentials = credentials
        self.clients = clients  # Streamable HTTP upstreams, by name
        self.stdio = stdio  # stdio upstreams, by name
        self.sessions = sessions  # (upstream, Mcp-Session-Id) -> the caller that opened it
        self.metrics = metrics

    async def forward(
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
            return await self._forward_stdio(upstream, caller, payload, plan)
        assert upstream.url
        stateless = is_stateless(request)
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
            reason = f"no credential for upstream {upstream.name!r}"
            return self._failed(upstream, payload, plan, "credential", reason)
        if credential is not None:
            headers["authorization"] = credential
        content = dumps(payload) if payload is not None else None
        client = self.clients[upstream.name]
        started = time.perf_counter()
        try:
            response = await client.request(request.method, headers, content, upstream.timeout)
            self.metrics.waited(upstream.name, time.perf_counter() - started)
        except TimeoutError:
            reason = f"upstream {upstream.name!r} timed out"
            return self._failed(upstream, payload, plan, "timeout", reason)
        except UpstreamError as exc:
            log.warning("upstream %s: %s", upstream.name, exc)
            reason = f"upstream {upstream.name!r} is unreachable"
            return self._failed(upstream, payload, plan, "unreachable", reason)
        if response.status in (401, 403):  # the upstream refused the proxy's credential
            await response.aclose()
            self.credentials.forget(upstream, token)
            log.warning("upstream %s refused the credential (%d)", upstream.name, response.status)
            reason = f"upstream {upstream.name!r} refused the proxy's credential"
            return self._failed(upstream, payload, plan, "credential", reason)
        if not stateless:  # a stateless request ends no session and opens none
            self._keep_session(request, upstream, caller, response)
        return await self._answer(request, upstream, caller, payload, plan, response, stateless)

    def _keep_session(
        self, request: Incoming, upstream: Upstream, caller: Caller, response: UpstreamResponse
    ) -> None:
        """The session the upstream opens kept for the caller, or the one ended forgotten."""
        session = response.headers.get(SESSION_HEADER)
        if request.method == "DELETE":
            # ended when the upstream says so (2xx), or when it no longer knows it (404); a
            # server that does not let clients end sessions (405) keeps it
            if response.status < 300 or response.status == 404:
                ended = session or request.fields.get(SESSION_HEADER, "")
                self.sessions.pop((upstream.name, ended), None)
        elif session is not None:
            self.sessions[(upstream.name, session)] = caller.key

    async def _answer(
        self,
        request: Incoming,
        upstream: Upstream,
        caller: Caller,
        payload: Any,
        plan: Plan,
        response: UpstreamResponse,
        stateless: bool,
    ) -> Response:
        """The upstream's response as the client gets it: a stream passed on (rewritten
        event by event when it answers a POST), JSON read whole and rewritten where the
        plan says, the proxy's own answers merged in."""
        returned = {k: v for k in RETURNED if (v := response.headers.get(k)) is not None}
        if plan.decisions:
            returned[DECISION_HEADER] = ",".join(plan.decisions)
        kind = media_type(response.headers.get("content-type"))
        if kind == "text/event-stream" and payload is not None:
            stream = self._answer_stream(response, upstream, caller, plan, payload, not stateless)
            return StreamingResponse(stream, response.status, headers=returned)
        if kind == "text/event-stream" or request.method == "GET":
            return StreamingResponse(_chunks(response), response.status, headers=returned)
        try:
            raw = await _read(response, upstream.timeout)
        except TooLarge as exc:
            reason = f"upstream {upstream.name!r} sent {exc}"
            return self._failed(upstream, payload, plan, "too_large", reason)
        except (TimeoutError, UpstreamError):
            await response.aclose()
            reason = f"upstream {upstream.name!r} failed mid-answer"
            return self._failed(upstream, payload, plan, "broken", reason)
        if response.status >= 500 and payload is not None:
            reason = f"upstream {upstream.name!r} failed"
            return self._failed(upstream, payload, plan, "5xx", reason)
        if 400 <= response.status < 500 and payload is not None:
            refused = self._refused(upstream, payload, plan, response.status, raw, returned)
            if refused is not None:
                return refused
        if kind == "application/json" and (plan.filters or plan.local) and raw:
            try:
                parsed = read_json(raw)
            except WireError as exc:
                reason = f"upstream {upstream.name!r} sent an answer the proxy cannot read ({exc})"
                return self._failed(upstream, payload, plan, "bad_json", reason)
            rewritten = await self._rewrite_all(upstream, caller, plan, parsed)
            return answer(response.status, dumps(rewritten), plan.decisions, returned)
        if not raw and plan.local:  # only notifications were forwarded
            local: Any = plan.local
            return answer(200, dumps(local), plan.decisions, returned)
        return Response(raw, response.status, headers=returned)

    async def _rewrite_all(
        self, upstream: Upstream, caller: Caller, plan: Plan, answered: Any
    ) -> Any:
        """The upstream's answer, lists filtered, after the proxy's own answers."""
        filtered = await self._filter_many(upstream, caller, plan, answered)
        if isinstance(filtered, list):
            return [*plan.local, *filtered]
        if plan.local:
            return [*plan.local, filtered]
        return filtered

    async def _filter_many(
        self, upstream: Upstream, caller: Caller, plan: Plan, answered: Any
    ) -> Any:
        """An answer or a batch of answers, each ``…/list`` result filtered."""
        if isinstance(answered, list):
            return [await self.planner.filtered(upstream, caller, plan, m) for m in answered]
        return await self.planner.filtered(upstream, caller, plan, answered)

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
        pending = {id_key(m["id"]): m["id"] for m in sent if is_request(m)}
        resumable = False

        async def rewrite(message: Any) -> Any:
            for reply in message if isinstance(message, list) else [message]:
                if isinstance(reply, dict) and "id" in reply and "method" not in reply:
                    pending.pop(id_key(reply["id"]), None)
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
        except SseUnreadable as exc:
            why, resumable = str(exc), False
        finally:
            await events.aclose()
            await response.aclose()
        if pending and not resumable:
            self.metrics.failed(upstream.name, "stream")
            reason = f"upstream {upstream.name!r} {why}"
            for id in pending.values():
                yield sse_event(error(id, UPSTREAM_ERROR, reason))

    async def _forward_stdio(
        self, upstream: Upstream, caller: Caller, payload: Any, plan: Plan
    ) -> Response:
        """The payload written to a stdio upstream, and its answer rewritten."""
        stdio = self.stdio[upstream.name]
        try:
            answered = await stdio.send(payload, caller.key)
        except UpstreamFailed as exc:
            return self._failed(
                upstream, payload, plan, "stdio", f"upstream {upstream.name!r} {exc}"
            )
        if answered is None:
            if plan.local:
                return answer(200, dumps(plan.local), plan.decisions)
            return Response(status_code=202)
        rewritten = await self._rewrite_all(upstream, caller, plan, answered)
        return answer(200, dumps(rewritten), plan.decisions)

    def _refused(
        self,
        upstream: Upstream,
        payload: Any,
        plan: Plan,
        status: int,
        raw: bytes,
        headers: dict[str, str],
    ) -> Response | None:
        """An upstream's 4xx answer that names no request (a JSON-RPC error with ``id:
        null``, as the Streamable HTTP transport allows, or no JSON-RPC at all) given to
        each request forwarded, with its own id and the upstream's status; None when the
        answer names its requests, or none was forwarded."""
        sent = payload if isinstance(payload, list) else [payload]
        requests = [m for m in sent if is_request(m)]
        try:
            said = read_json(raw) if raw else None
        except WireError:
            said = None
        if not requests or isinstance(said, list) or _names_an_id(said):
            return None
        said_error: Any = said.get("error") if isinstance(said, dict) else None
        if _is_error_object(said_error):
            kept = {k: said_error[k] for k in ("code", "message", "data") if k in said_error}
        else:
            reason = f"upstream {upstream.name!r} refused the request (HTTP {status})"
            kept = {"code": UPSTREAM_ERROR, "message": reason}
        answers: list[Message] = [
            *plan.local,
            *({"jsonrpc": "2.0", "id": m["id"], "error": kept} for m in requests),
        ]
        body: Any = answers if isinstance(payload, list) or len(answers) > 1 else answers[0]
        return answer(status, dumps(body), plan.decisions, headers)

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
            return json_error(502, None, UPSTREAM_ERROR, reason)
        body: Any = answers if isinstance(payload, list) or len(answers) > 1 else answers[0]
        return answer(200, dumps(body), plan.decisions)


async def _read(response: UpstreamResponse, timeout: float) -> bytes:
    """The upstream's whole answer, waited for at most ``timeout`` seconds; one that has
    arrived whole with its head (the usual small answer) is taken without arming a
    timer, which costs about as much as the rest of reading it."""
    if response.whole:
        return await response.read()
    async with asyncio.timeout(timeout):
        return await response.read()


def _names_an_id(message: Any) -> bool:
    """Whether ``message`` is a JSON-RPC answer to a request it names by id."""
    return isinstance(message, dict) and message.get("id") is not None


def _is_error_object(value: Any) -> bool:
    """Whether ``value`` is a JSON-RPC error object (JSON-RPC 2.0 §5.1): an integer code
    and a string message."""
    return (
        isinstance(value, dict)
        and type(value.get("code")) is int
        and isinstance(value.get("message"), str)
    )


async def _chunks(response: UpstreamResponse) -> AsyncIterator[bytes]:
    """The upstream's body as it arrives; a failure mid-stream ends the stream."""
    try:
        async for chunk in response.chunks():
            yield chunk
    except UpstreamError:
        log.warning("upstream stream broke off")
    finally:
        await response.aclose()
