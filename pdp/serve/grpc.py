"""The gRPC decision service, ``tessera.v1.Authorizer``, on grpc.aio.

It adapts messages to the engine and back (:mod:`pdp.serve.convert`); a malformed
request is answered with INVALID_ARGUMENT naming the field, never a traceback. The
standard health service reports SERVING once a bundle is loaded, and server reflection
lets generic clients discover the contract. Envoy's ext_authz ``Check``
(:mod:`pdp.serve.ext_authz`) can share the port, and AuthZEN (:mod:`pdp.serve.authzen`)
rides on the issuer's HTTP port; both decide through :meth:`AuthorizerService.decide`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIServer

import grpc
from cachetools import LRUCache
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from starlette.applications import Starlette
from starlette.routing import Mount

from issuer.app import SCIM_PATH, bind, issuer_app, serve_http
from issuer.keys import KeyRing
from issuer.oauth.endpoints import METADATA_PATH, AuthorizationServer
from issuer.oauth.tokens import IssuedHook
from issuer.scim import BootstrapToken, new_token
from issuer.store import Store, open_store
from pdp.audit.changes import ChangeAuditor
from pdp.audit.checkpoints import Checkpointer
from pdp.audit.exclusive import Exclusive
from pdp.audit.records import decision_record, new_decision_id, token_record
from pdp.audit.watch import AlertCounter, Watcher
from pdp.audit.writer import GATHER, AuditWriter, Record
from pdp.directory import Directory, Identities
from pdp.engine import Engine
from pdp.loader import Loaded
from pdp.metrics import Metrics
from pdp.model import Decision, Request, RequestError
from pdp.serve import ext_authz
from pdp.serve.authzen import AUTHZEN_PATH, AuthZen
from pdp.serve.config import ServeConfig
from pdp.serve.convert import decision_to_message, request_from_message
from pdp.serve.exchange import exchange_check
from pdp.serve.ext_authz import Gateway
from pdp.serve.proto import authorizer_pb2 as pb
from pdp.serve.proto import authorizer_pb2_grpc as pb_grpc
from pdp.serve.reload import Reloader

log = logging.getLogger("tessera.serve")

DEFAULT_CACHE_SIZE = 10_000
NO_HTTP_ISSUER = "urn:tessera:issuer"  # who signs audit checkpoints when no issuer serves

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Authorizer"].full_name


class AuthorizerService(pb_grpc.AuthorizerServicer):  # type: ignore[misc]
    """Authorize, AuthorizeBatch and ListAllowed against the current engine."""

    def __init__(
        self,
        engine: Engine,
        cache_size: int = DEFAULT_CACHE_SIZE,
        metrics: Metrics | None = None,
        directory: Directory | None = None,
        audit: AuditWriter | None = None,
        durability: str = "async",
    ) -> None:
        self.engine = engine
        # Every decision is recorded on the agent trail; with "sync" durability a decision
        # is answered only once its record is committed.
        self.audit = audit
        self.durability = durability
        # With a directory, agents and users are who it says they are, and an agent it
        # does not know or that is not active is refused whatever the policies say.
        self.directory = directory
        self._directory_version = -1
        self.metrics = metrics if metrics is not None else Metrics()
        self.metrics.bundle.info({"version": engine.version})
        # Decisions by the request's deterministic encoding, for requests whose candidate
        # rules have no limit (their answer cannot depend on counters). Each response
        # still gets its own decision id.
        self.cache: LRUCache[bytes, Decision] | None = (
            LRUCache(maxsize=cache_size) if cache_size > 0 else None
        )
        self.cache_hits = 0
        self.cache_misses = 0

    def use(self, loaded: Loaded) -> None:
        """Decide with a new bundle from the next call on; limits carry over."""
        old = self.engine
        self.engine = Engine(loaded.bundle, old.counters, old.clock)
        self.metrics.bundle.info({"version": self.engine.version})
        if self.cache is not None:
            self.cache.clear()

    def _identities(self, message: pb.AuthorizeRequest) -> Identities | str | None:
        """The directory's view of the request's agent and user: their attributes, or
        why they are refused; None without a directory."""
        directory = self.directory
        if directory is None:
            return None
        if directory.version != self._directory_version:
            # A decision remembered before this change may no longer hold.
            self._directory_version = directory.version
            if self.cache is not None:
                self.cache.clear()
        user = message.user.id if message.HasField("user") else None
        return directory.resolve(message.agent.id, user, message.delegation.chain)

    def _refused(self, engine: Engine, reason: str) -> Decision:
        decision = Decision(False, (), ("directory",), (reason,), (), engine.version)
        self.metrics.decided(decision)
        return decision

    def _decide(self, message: pb.AuthorizeRequest, typed: Request) -> tuple[Decision, bool]:
        """Decide, remembering the answer when no limit can change it; say whether."""
        engine = self.engine
        decision = self._timed(engine, typed, True)
        cacheable = not engine.touches_limits(typed)
        if self.cache is not None and cacheable:
            self.cache[message.SerializeToString(deterministic=True)] = decision
        return decision, cacheable

    def _timed(self, engine: Engine, typed: Request, commit: bool) -> Decision:
        start = time.perf_counter()
        decision = engine.decide(typed, commit)
        self.metrics.engine_seconds.observe(time.perf_counter() - start)
        self.metrics.decided(decision)
        return decision

    def _cached(self, message: pb.AuthorizeRequest) -> Decision | None:
        if self.cache is None:
            return None
        decision = self.cache.get(message.SerializeToString(deterministic=True))
        if decision is None:
            self.cache_misses += 1
            self.metrics.cache.labels("miss").inc()
        else:
            self.cache_hits += 1
            self.metrics.cache.labels("hit").inc()
            self.metrics.decided(decision)
        return decision

    def _record(
        self,
        message: pb.AuthorizeRequest,
        decision: Decision,
        decision_id: str,
        started: float,
        pep: str,
    ) -> Record:
        """The decision's agent-trail record, as a function the writer thread calls (the
        hot path only notes the time)."""
        seconds, when = time.perf_counter() - started, time.time()
        return lambda: decision_record(message, decision, decision_id, seconds, pep, when)

    async def _audited(self, records: list[Record]) -> None:
        """Put the records on the agent trail, never dropping one. Async durability only
        queues them (a full queue waits, off the loop); sync answers once they are
        committed."""
        audit = self.audit
        if audit is None:
            return
        if self.durability != "sync":
            for record in records:
                if not audit.offer("agent", record):
                    await asyncio.to_thread(audit.submit, "agent", record)
            return
        pending = []
        for record in records:
            done = audit.submit_nowait("agent", record)
            if done is None:
                done = await asyncio.to_thread(audit.submit, "agent", record)
            pending.append(done)
        for done in pending:
            await asyncio.wrap_future(done)

    async def decide(
        self, message: pb.AuthorizeRequest, peer: Callable[[], str]
    ) -> tuple[Decision, str, bool]:
        """Decide one request the way ``Authorize`` does, for every front door (gRPC,
        Envoy ext_authz, AuthZEN): the directory's refusals, the decision cache, the
        engine (using up limits), and the audit record naming ``peer()`` as the PEP.
        Returns the decision, its id and whether it may be cached; a malformed request
        raises :class:`RequestError` naming the field."""
        decided = await self._answer(message, peer, counters=True)
        assert decided is not None  # with the counters here, every request is answered
        return decided

    async def decide_without_limits(
        self, message: pb.AuthorizeRequest, peer: Callable[[], str]
    ) -> tuple[Decision, str, bool] | None:
        """As :meth:`decide`, but None, with nothing recorded, for a request a ``limit``
        could decide: its counters are kept by another process (the PDP that an embedded
        decider, such as the MCP proxy's, defers to)."""
        return await self._answer(message, peer, counters=False)

    async def _answer(
        self, message: pb.AuthorizeRequest, peer: Callable[[], str], counters: bool
    ) -> tuple[Decision, str, bool] | None:
        started = time.perf_counter()
        identities = self._identities(message)
        if isinstance(identities, str):
            decision, cacheable = self._refused(self.engine, identities), False
        else:
            cached = self._cached(message)
            cacheable = cached is not None
            if cached is None:
                typed = request_from_message(message, self.engine.bundle.schema, identities)
                if not counters and self.engine.touches_limits(typed):
                    return None
                decision, cacheable = self._decide(message, typed)
            else:
                decision = cached
        decision_id = new_decision_id()
        if self.audit is not None:
            await self._audited([self._record(message, decision, decision_id, started, peer())])
        return decision, decision_id, cacheable

    def preview(self, message: pb.AuthorizeRequest) -> Decision:
        """What the request would be answered, without using up any limit and without a
        record: listing and searching are not calling (as ``ListAllowed``). A malformed
        request raises :class:`RequestError`."""
        decision = self._preview(message, counters=True)
        assert decision is not None  # with the counters here, every request is answered
        return decision

    def preview_without_limits(self, message: pb.AuthorizeRequest) -> Decision | None:
        """As :meth:`preview`, but None for a request a ``limit`` could decide (see
        :meth:`decide_without_limits`)."""
        return self._preview(message, counters=False)

    def _preview(self, message: pb.AuthorizeRequest, counters: bool) -> Decision | None:
        identities = self._identities(message)
        engine = self.engine
        if isinstance(identities, str):
            return self._refused(engine, identities)
        typed = request_from_message(message, engine.bundle.schema, identities)
        if not counters and engine.touches_limits(typed):
            return None
        return self._timed(engine, typed, False)

    @contextlib.asynccontextmanager
    async def _rpc(self, method: str, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
        """Count the call in flight and time it. A fault of ours is logged with its
        traceback and answered INTERNAL without one."""
        metrics = self.metrics
        with metrics.in_flight.track_inprogress(), metrics.rpc_seconds.labels(method).time():
            try:
                yield
            except (grpc.aio.AbortError, asyncio.CancelledError):
                raise
            except Exception:
                log.exception("%s failed", method)
                await context.abort(
                    grpc.StatusCode.INTERNAL,
                    "internal error in the decision service (it is logged)",
                )

    async def Authorize(  # the contract names the methods
        self, request: pb.AuthorizeRequest, context: grpc.aio.ServicerContext
    ) -> pb.AuthorizeResponse:
        async with self._rpc("Authorize", context):
            try:
                decision, decision_id, cacheable = await self.decide(request, context.peer)
            except RequestError as exc:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
                raise  # abort raises; this line only tells type checkers so
            return decision_to_message(decision, decision_id, cacheable)

    async def AuthorizeBatch(
        self, request: pb.AuthorizeBatchRequest, context: grpc.aio.ServicerContext
    ) -> pb.AuthorizeBatchResponse:
        async with self._rpc("AuthorizeBatch", context):
            engine = self.engine
            typed: list[Request | str] = []
            for index, item in enumerate(request.requests):
                identities = self._identities(item)
                if isinstance(identities, str):
                    typed.append(identities)
                else:
                    typed.append(
                        await _typed(item, engine, context, f"requests[{index}].", identities)
                    )
            responses = []
            records = []
            pep = context.peer() if self.audit is not None else ""
            for item, r in zip(request.requests, typed, strict=True):
                started = time.perf_counter()
                decision_id = new_decision_id()
                if isinstance(r, str):
                    decision, cacheable = self._refused(engine, r), False
                else:
                    decision = self._timed(engine, r, True)
                    cacheable = not engine.touches_limits(r)
                if self.audit is not None:
                    records.append(self._record(item, decision, decision_id, started, pep))
                responses.append(decision_to_message(decision, decision_id, cacheable))
            await self._audited(records)
            return pb.AuthorizeBatchResponse(responses=responses)

    async def ListAllowed(
        self, request: pb.ListAllowedRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListAllowedResponse:
        async with self._rpc("ListAllowed", context):
            engine = self.engine
            response = pb.ListAllowedResponse(bundle_version=engine.version)
            identities = self._identities(listed_question(request))
            if isinstance(identities, str):  # a refused agent may call nothing
                return response
            for index, candidate in enumerate(request.candidates):
                question = listed_question(request, candidate)
                typed = await _typed(
                    question, engine, context, f"candidates[{index}]: ", identities
                )
                # Listing is not calling: it must not use up any limit.
                decision = self._timed(engine, typed, False)
                if decision.allow:
                    response.allowed.append(candidate)
                elif decision.awaits_consent:
                    response.consent_required.append(candidate)
            return response


def listed_question(
    request: pb.ListAllowedRequest, candidate: pb.Resource | None = None
) -> pb.AuthorizeRequest:
    """The ``Authorize`` question a ``ListAllowed`` request asks about one candidate; without
    one, only who asks (its agent, user and delegation)."""
    if candidate is None:
        question = pb.AuthorizeRequest(agent=request.agent)
    else:
        question = pb.AuthorizeRequest(
            agent=request.agent,
            action=request.action,
            resource=candidate,
            context=request.context,
        )
    if request.HasField("user"):
        question.user.CopyFrom(request.user)
    if request.HasField("delegation"):
        question.delegation.CopyFrom(request.delegation)
    return question


async def _typed(
    message: pb.AuthorizeRequest,
    engine: Engine,
    context: grpc.aio.ServicerContext,
    where: str,
    identities: Identities | None,
) -> Request:
    """The typed request, or the call ends with INVALID_ARGUMENT naming the field."""
    try:
        return request_from_message(message, engine.bundle.schema, identities)
    except RequestError as exc:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{where}{exc}")
        raise  # abort raises; this line only tells type checkers so


@dataclass
class Running:
    """A started server: where it listens and how to stop it."""

    server: grpc.aio.Server
    port: int
    health: health.HealthServicer
    service: AuthorizerService
    reloader: Reloader | None = None
    metrics_server: WSGIServer | None = None

    async def stop(self, grace: float = 5.0) -> None:
        """Refuse new calls, let in-flight ones finish for ``grace`` seconds, then stop."""
        if self.reloader is not None:
            await self.reloader.stop()
        self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
            self.metrics_server.server_close()


async def start(
    engine: Engine,
    host: str = "127.0.0.1",
    port: int = 50051,
    watch: Path | None = None,
    interval: float = 1.0,
    cache_size: int = DEFAULT_CACHE_SIZE,
    metrics_port: int | None = None,
    tls: tuple[bytes, bytes, bytes | None] | None = None,
    directory: Directory | None = None,
    audit: AuditWriter | None = None,
    durability: str = "async",
    gateway: Gateway | None = None,
) -> Running:
    """Start serving ``engine`` on ``host:port`` (port 0 picks a free one); with
    ``watch``, reload from that policy directory whenever it changes; with
    ``metrics_port``, serve Prometheus metrics on ``host:metrics_port/metrics``; with
    ``tls`` (key, certificate chain, client CA or None), serve TLS, and require client
    certificates from that CA when one is given (mutual TLS); with ``directory``, resolve
    agents and users from it and refuse those it does not know or that are inactive; with
    ``gateway``, also answer Envoy's ext_authz ``Check`` on the same port."""
    server = grpc.aio.server()
    metrics = Metrics()
    service = AuthorizerService(engine, cache_size, metrics, directory, audit, durability)
    pb_grpc.add_AuthorizerServicer_to_server(service, server)  # type: ignore[no-untyped-call]
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    deciding = [SERVICE_NAME]
    if gateway is not None:
        ext_authz.add_to_server(service, gateway, server)
        deciding.append(ext_authz.SERVICE_NAME)
    reflection.enable_server_reflection(
        (*deciding, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    address = f"{host}:{port}"
    if tls is None:
        bound = server.add_insecure_port(address)
    else:
        key, chain, client_ca = tls
        credentials = grpc.ssl_server_credentials(
            [(key, chain)], root_certificates=client_ca, require_client_auth=client_ca is not None
        )
        bound = server.add_secure_port(address, credentials)
    if bound == 0:
        raise OSError(f"cannot listen on {host}:{port}")
    await server.start()
    # Everything loaded so far lives as long as the server: keep it out of the cyclic
    # collector's way, so collections during calls scan only what calls allocate.
    gc.collect()
    gc.freeze()
    # A bundle is loaded before the server starts, so it serves from the first call.
    for name in ("", *deciding):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reloader = None
    if watch is not None:
        reloader = Reloader(watch, service.use, interval, metrics.reloads)
        reloader.start()
    metrics_server = metrics.serve(metrics_port, host) if metrics_port is not None else None
    return Running(server, bound, health_servicer, service, reloader, metrics_server)


def agent_facts(directory: Directory | None) -> Callable[[str], dict[str, Any] | None]:
    """The issuer's view of an agent's status and type, from the PDP's directory snapshot
    (no database read when a token is issued)."""

    def lookup(agent_id: str) -> dict[str, Any] | None:
        agent = directory.agent(agent_id) if directory is not None else None
        if agent is None:
            return None
        return {"status": agent["status"], "agentType": agent["type"]}

    return lookup


def token_trail(audit: AuditWriter | None) -> IssuedHook | None:
    """Put every token the issuer mints on the agent trail (a full queue waits)."""
    if audit is None:
        return None

    def issued(grant: str, claims: dict[str, Any]) -> None:
        audit.put("agent", lambda: token_record(grant, claims))

    return issued


def _trail_jobs(
    store: Store, audit: AuditWriter, keys: KeyRing, issuer: str, config: ServeConfig
) -> list[Exclusive]:
    """The jobs that follow shared sources onto the trails, each run by one replica."""
    return [
        Exclusive(store, "admin-trail", lambda: ChangeAuditor(store, audit)),
        Exclusive(
            store,
            "checkpoints",
            lambda: Checkpointer(store, audit, keys, issuer, config.audit_checkpoint_interval),
        ),
    ]


async def serve_forever(engine: Engine, config: ServeConfig, announce: Sequence[str] = ()) -> None:
    """Serve until SIGINT or SIGTERM, then drain in-flight calls and stop.

    With a store: the directory snapshot follows it, and the issuer's HTTP service (SCIM)
    runs beside the decision service in this event loop. Whatever started is stopped
    again, also when a later part fails to start.
    """
    async with contextlib.AsyncExitStack() as stack:
        store = open_store(config.store) if config.store else None
        directory = None
        audit = None
        keys = None
        sock = None
        base = ""
        gateway = None
        issuer = config.issuer or NO_HTTP_ISSUER
        tls = (config.tls_cert, config.tls_key) if config.tls_cert else None
        if store is not None:
            stack.callback(store.close)
            keys = KeyRing(store, config.signing_alg, published_for=config.token_lifetime)
            if config.http_port >= 0:
                sock = bind(config.host, config.http_port)
                stack.callback(sock.close)
                base = f"{'https' if tls else 'http'}://{config.host}:{sock.getsockname()[1]}"
                issuer = config.issuer or base
            if config.issuer or sock is not None:  # tokens to verify: Envoy's ext_authz
                gateway = ext_authz.gateway_for(
                    store,
                    keys,
                    issuer,
                    config.ext_authz_audience,
                    config.ext_authz_routes,
                    config.ext_authz_strip_headers,
                )
            directory = Directory(store)
            directory.start()
            stack.callback(directory.stop)
            if config.audit != "off":
                gather = 0.0 if config.audit == "sync" else GATHER  # sync answers wait
                audit = AuditWriter(store, config.audit_queue, gather)
                stack.callback(audit.close)
                # One replica follows the change log, and one signs checkpoints; they stop
                # after the last call is answered, and sign what the trails hold then.
                for job in _trail_jobs(store, audit, keys, issuer, config):
                    job.start()
                    stack.callback(job.stop)
        running = await start(
            engine,
            config.host,
            config.port,
            watch=Path(config.policies),
            interval=config.reload_interval,
            cache_size=config.cache_size,
            metrics_port=config.metrics_port if config.metrics else None,
            tls=config.credentials(),
            directory=directory,
            audit=audit,
            durability=config.audit,
            gateway=gateway,
        )
        stack.push_async_callback(running.stop, config.grace)
        if store is not None and audit is not None:
            # Anomaly detection runs in a process of its own (off this one's interpreter
            # lock); this one counts the alerts it raises (after start(): its metrics).
            watcher = Watcher(config.store, config.anomaly_thresholds())
            watcher.start()
            stack.callback(watcher.stop)
            counter = AlertCounter(store, running.service.metrics.alerts)
            counter.start()
            stack.callback(counter.stop)
        scheme = "TLS" if config.tls_cert else "plaintext"
        if config.tls_client_ca:
            scheme = "mutual TLS"
        print(
            f"tessera: serving tessera.v1.Authorizer on {config.host}:{running.port} ({scheme})",
            flush=True,
        )
        if running.metrics_server is not None:
            where = f"{config.host}:{running.metrics_server.server_port}"
            print(f"tessera: metrics on http://{where}/metrics", flush=True)
        if store is not None and keys is not None and sock is not None:
            token = config.admin_token or new_token()
            admin = BootstrapToken(token)
            oauth = AuthorizationServer(
                store,
                keys,
                issuer,
                admin,
                config.token_lifetime,
                exchange_check=exchange_check(running.service),
                client_cert_header=config.client_cert_header or None,
                client_cert_proxies=frozenset(
                    p.strip() for p in config.client_cert_proxies.split(",") if p.strip()
                ),
                agents=agent_facts(directory),
                on_issue=token_trail(audit),
            )
            client_ca = config.tls_client_ca or None
            scim_admins = oauth.administrators([issuer, f"{issuer}{SCIM_PATH}"])
            authzen = AuthZen(
                running.service, oauth.administrators([issuer, f"{base}{AUTHZEN_PATH}"]), base
            )
            app = Starlette(
                routes=[*authzen.routes(), Mount("", app=issuer_app(store, scim_admins, oauth))]
            )
            http = await serve_http(app, sock, tls, client_ca)
            stack.push_async_callback(http.stop)
            print(
                f"tessera: SCIM 2.0 at {base}{SCIM_PATH}, directory in {config.store}", flush=True
            )
            print(f"tessera: OAuth issuer {issuer} (metadata at {base}{METADATA_PATH})", flush=True)
            print(f"tessera: AuthZEN at {base}{AUTHZEN_PATH}", flush=True)
            if not config.admin_token:
                print(
                    f"tessera: bootstrap admin token (random; set TESSERA_ADMIN_TOKEN to "
                    f"choose one): {token}",
                    flush=True,
                )
        elif store is None:
            print("tessera: no store: deciding on the agent attributes callers send", flush=True)
        if gateway is not None:
            print(
                f"tessera: Envoy ext_authz ({ext_authz.SERVICE_NAME}) on port {running.port}",
                flush=True,
            )
        if audit is not None:
            print(f"tessera: every decision is audited ({config.audit})", flush=True)
        for line in announce:
            print(line, flush=True)
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stopping.set)
        await stopping.wait()
        print("tessera: draining in-flight calls, then stopping", flush=True)
