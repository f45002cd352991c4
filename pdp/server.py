"""The composition root of ``tessera serve``: it wires the planes and nothing else.

The store and the directory that follows it, the issuer (SCIM, OAuth, keys), the
:class:`~pdp.decide.DecisionPoint`, its doors (gRPC ``tessera.v1``, Envoy ext_authz on the
same port, AuthZEN on the issuer's HTTP port), the audit writer and its jobs, the anomaly
watcher and the policy reloader. Each door only adapts its protocol; what is decided, and
how, lives in :mod:`pdp.decide`. The standard health service reports SERVING once a bundle
is loaded, and server reflection lets generic clients discover the contract. SIGHUP loads
the policy directory at once.

With ``workers`` above 1, :mod:`pdp.workers` runs :func:`serve_forever` in several
processes on the same ports (``SO_REUSEPORT``), each one :class:`Supervised`: the parent
prints the startup lines, serves the metrics of all and runs the anomaly watcher.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIServer

import grpc
from grpc_health.v1 import health, health_pb2
from grpc_reflection.v1alpha import reflection, reflection_pb2
from prometheus_client import Counter
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from issuer.app import (
    SCIM_PATH,
    HttpRunning,
    bind,
    issuer_routes,
    on_stop_signals,
    serve_http,
    unrouted,
)
from issuer.keys import KeyRing, ScheduledRotation
from issuer.netloc import hostport
from issuer.oauth.ciba import HumanHook
from issuer.oauth.endpoints import METADATA_PATH, AuthorizationServer
from issuer.oauth.tokens import IssuedHook
from issuer.scim import BootstrapToken, new_token
from issuer.store import Store, open_store
from pdp.audit.changes import TRAIL as ADMIN_TRAIL
from pdp.audit.changes import ChangeAuditor
from pdp.audit.checkpoints import Checkpointer
from pdp.audit.exclusive import Exclusive
from pdp.audit.records import token_record
from pdp.audit.watch import AlertCounter, Watcher
from pdp.audit.writer import GATHER, AuditWriter
from pdp.bounds import DEFAULT_BOUNDS, Bounds
from pdp.catalog import schema_check
from pdp.counters import open_counters
from pdp.decide import DEFAULT_CACHE_SIZE, DecisionPoint
from pdp.delivery.start import deliver
from pdp.directory import Directory
from pdp.doors import ext_authz
from pdp.doors import grpc as grpc_door
from pdp.doors.authzen import AUTHZEN_PATH, AuthZen
from pdp.doors.callers import NO_AGENT_TOKENS, OPEN, AgentTokens, Callers
from pdp.doors.ext_authz import Gateway
from pdp.engine import Engine
from pdp.metrics import Metrics
from pdp.model import RequestError
from pdp.serve.caller_auth import callers_for, callers_line
from pdp.serve.config import ServeConfig
from pdp.serve.drain import Drained, drain
from pdp.serve.exchange import exchange_check
from pdp.serve.extensions import HttpExtension, HttpParts
from pdp.serve.openapi import HEALTH_PATH, OPENAPI_PATH, serve_document
from pdp.serve.reload import Reloader
from pdp.serve.sources import PolicySource, open_source

NO_HTTP_ISSUER = "urn:tessera:issuer"  # who signs audit checkpoints when no issuer serves

SERVICE_NAME = grpc_door.SERVICE_NAME

# What one call may send the gRPC port besides its message (whose bound is a setting,
# pdp.bounds; docs/limits.md), stated here so it stays put: metadata over its bound is
# refused RESOURCE_EXHAUSTED before it is parsed. gRPC refuses metadata between a soft
# bound (8 KiB) and a hard one (16 KiB) at random; here both are the hard one, so a call
# is refused always or never.
MAX_METADATA = 16 * 1024  # bytes of a call's metadata, as an HTTP request head's bound
GRPC_BOUNDS = (
    ("grpc.max_metadata_size", MAX_METADATA),
    ("grpc.absolute_max_metadata_size", MAX_METADATA),
)

__all__ = [
    "DEFAULT_CACHE_SIZE",
    "SERVICE_NAME",
    "Running",
    "Supervised",
    "serve_forever",
    "start",
    "startup_lines",
    "watch_anomalies",
]


class Health(health.aio.HealthServicer):  # type: ignore[misc]
    """The standard health service, ``List`` included: grpcio-health-checking's servicer
    leaves it to its generated base, which fails with NotImplementedError (UNKNOWN)."""

    async def List(
        self, request: health_pb2.HealthListRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthListResponse:
        """Every service name this server reports, with its status (a snapshot)."""
        return health_pb2.HealthListResponse(
            statuses={
                name: health_pb2.HealthCheckResponse(status=status)
                for name, status in list(self._server_status.items())
            }
        )


HealthMethod = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


def _parsing(method: HealthMethod, kind: type[Any]) -> HealthMethod:
    """``method`` taking its request's bytes, which it parses as the deciding doors do
    (:func:`pdp.doors.grpc.parsed`): bytes that are not a request end INVALID_ARGUMENT,
    not UNKNOWN naming Python's exception (gRPC's answer when it deserializes)."""

    async def handle(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
        try:
            request = grpc_door.parsed(raw, kind)
        except RequestError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return await method(request, context)

    return handle


def _add_health(servicer: Health, server: grpc.aio.Server) -> None:
    """Serve the health service (as ``add_HealthServicer_to_server`` would), each method
    parsing its request itself."""
    response = health_pb2.HealthCheckResponse.SerializeToString
    handlers = {
        "Check": grpc.unary_unary_rpc_method_handler(
            _parsing(servicer.Check, health_pb2.HealthCheckRequest), response_serializer=response
        ),
        "List": grpc.unary_unary_rpc_method_handler(
            _parsing(servicer.List, health_pb2.HealthListRequest),
            response_serializer=health_pb2.HealthListResponse.SerializeToString,
        ),
        "Watch": grpc.unary_stream_rpc_method_handler(
            _parsing(servicer.Watch, health_pb2.HealthCheckRequest), response_serializer=response
        ),
    }
    grpc_door.add_service(server, health.SERVICE_NAME, handlers)


@dataclass
class Running:
    """A started server: where it listens and how to stop it."""

    server: grpc.aio.Server
    port: int
    # asyncio's servicer: the threaded one's Watch holds a thread of the loop's executor
    # until its stream ends, which a stopped server never tells it, and the process could
    # not exit while a health watcher (a load balancer) is connected.
    health: health.aio.HealthServicer
    point: DecisionPoint
    reloader: Reloader | None = None
    metrics_server: WSGIServer | None = None
    _hurry: asyncio.Event = field(default_factory=asyncio.Event, init=False)
    _stopping: asyncio.Future[Drained] | None = field(default=None, init=False)

    async def stop(self, grace: float = 5.0) -> Drained:
        """Drain, then stop: health answers NOT_SERVING for every service name at once,
        new calls and connections are refused, the calls in flight have ``grace`` seconds
        to finish, and those still running then are answered UNAVAILABLE. Stopping again
        waits for the first stop and tells what it did."""
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self._drain(grace))
        return await asyncio.shield(self._stopping)

    def hurry(self) -> None:
        """Stop waiting for the calls in flight: end them UNAVAILABLE now."""
        self._hurry.set()

    async def _drain(self, grace: float) -> Drained:
        await self.health.enter_graceful_shutdown()
        # grpc refuses new calls and connections from the start of its stop; it would wait
        # for every call (health watchers too) and then cancel them, which is the drain's
        # to do: its stop waits a little longer, and only one of grpc's stops runs at once.
        refusing = asyncio.ensure_future(self.server.stop(grace + 1))
        if self.reloader is not None:
            await self.reloader.stop()
        drained = await drain(self.point.metrics.calls_in_flight, grace, self._hurry)
        refusing.cancel()
        await asyncio.wait((refusing,))
        await self.server.stop(0)  # what is left, such as health watchers, is cancelled
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
            self.metrics_server.server_close()
        return drained


async def start(
    engine: Engine,
    host: str = "127.0.0.1",
    port: int = 50051,
    watch: Path | PolicySource | None = None,
    interval: float = 1.0,
    cache_size: int = DEFAULT_CACHE_SIZE,
    metrics_port: int | None = None,
    tls: tuple[bytes, bytes, bytes | None] | None = None,
    directory: Directory | None = None,
    audit: AuditWriter | None = None,
    durability: str = "async",
    gateway: Gateway | None = None,
    metrics_host: str | None = None,
    reuse_port: bool = False,
    bounds: Bounds = DEFAULT_BOUNDS,
    callers: Callers = OPEN,
) -> Running:
    """Start serving ``engine`` on ``host:port`` (port 0 picks a free one); with
    ``watch``, reload from that policy directory (or source) whenever it changes; with
    ``metrics_port``, serve Prometheus metrics on ``metrics_host`` (default ``host``)
    ``:metrics_port/metrics``; with ``reuse_port``, share the port with the other workers
    of ``tessera serve --workers``; with ``tls`` (key, certificate chain, client CA or
    None), serve TLS, and require client certificates from that CA when one is given
    (mutual TLS); with ``directory``, resolve agents and users from it and refuse those it
    does not know or that are inactive; with ``gateway``, also answer Envoy's ext_authz
    ``Check`` on the same port. ``bounds`` are how large a message and a request may be
    (:mod:`pdp.bounds`); ``callers``: what the decision methods ask of their callers
    (default: nothing) and how agent tokens in questions are verified."""
    server, bound = _listen(hostport(host, port), tls, reuse_port, bounds.message_bytes)
    metrics = Metrics()
    point = DecisionPoint(
        engine,
        directory=directory,
        cache_size=cache_size,
        metrics=metrics,
        audit=audit,
        durability=durability,
        bounds=bounds,
    )
    health_servicer, deciding = _add_services(point, server, gateway, callers)
    await server.start()
    # Everything loaded so far lives as long as the server: keep it out of the cyclic
    # collector's way, so collections during calls scan only what calls allocate.
    gc.collect()
    gc.freeze()
    # A bundle is loaded before the server starts, so it serves from the first call.
    for name in ("", *deciding):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reloader = None
    if watch is not None:
        reloader = Reloader(watch, point.use, interval, metrics.reloads, metrics.registry)
        reloader.start()
    where = metrics_host or host
    metrics_server = metrics.serve(metrics_port, where) if metrics_port is not None else None
    return Running(server, bound, health_servicer, point, reloader, metrics_server)


def _add_services(
    point: DecisionPoint, server: grpc.aio.Server, gateway: Gateway | None, callers: Callers
) -> tuple[health.aio.HealthServicer, list[str]]:
    """The deciding services for the callers ``callers`` admits, and the health and
    reflection services, which answer anyone (they decide nothing and tell nothing of
    agents); the health servicer and the names of the deciding services."""
    grpc_door.add_to_server(point, server, callers)
    health_servicer = Health()
    _add_health(health_servicer, server)
    deciding = [SERVICE_NAME]
    if gateway is not None:
        ext_authz.add_to_server(point, gateway, server, callers)
        deciding.append(ext_authz.SERVICE_NAME)
    _add_reflection((*deciding, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    return health_servicer, deciding


def _add_reflection(names: Sequence[str], server: grpc.aio.Server) -> None:
    """Serve server reflection for the services ``names``, as a generic handler only.

    ``reflection.enable_server_reflection`` also registers its method with grpc.aio
    (``add_registered_method_handlers``), and one registered method makes every call of
    the server dearer: 25.7k instructions per ``Authorize`` with 32 in flight, 5% of it."""
    servicer = reflection.aio.ReflectionServicer(names)
    handlers = {
        "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
            servicer.ServerReflectionInfo,
            request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
            response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
        )
    }
    grpc_door.add_service(server, reflection.SERVICE_NAME, handlers)


def _listen(
    address: str,
    tls: tuple[bytes, bytes, bytes | None] | None,
    reuse_port: bool,
    message_bytes: int = DEFAULT_BOUNDS.message_bytes,
) -> tuple[grpc.aio.Server, int]:
    """A gRPC server listening on ``address``, plaintext or (mutual) TLS, and the port
    bound. gRPC sets ``SO_REUSEPORT`` unless told not to; only with ``reuse_port`` is it
    kept, so that a lone server finds a port another process holds taken. A message
    larger than ``message_bytes`` is refused by gRPC itself (RESOURCE_EXHAUSTED), from
    its length prefix, before it is read whole."""
    options = [
        ("grpc.so_reuseport", int(reuse_port)),
        ("grpc.max_receive_message_length", message_bytes),
        *GRPC_BOUNDS,
    ]
    server = grpc.aio.server(options=options)
    if tls is None:
        bound = server.add_insecure_port(address)
    else:
        key, chain, client_ca = tls
        credentials = grpc.ssl_server_credentials(
            [(key, chain)], root_certificates=client_ca, require_client_auth=client_ca is not None
        )
        bound = server.add_secure_port(address, credentials)
    if bound == 0:
        raise OSError(f"cannot listen on {address}")
    return server, int(bound)


def token_trail(audit: AuditWriter | None) -> IssuedHook | None:
    """Put every token the issuer mints on the agent trail (a full queue waits)."""
    if audit is None:
        return None

    def issued(grant: str, claims: dict[str, Any]) -> None:
        audit.put("agent", lambda: token_record(grant, claims))

    return issued


def human_trail(audit: AuditWriter | None) -> HumanHook | None:
    """Put what people do with agents' backchannel requests (CIBA: each request, approval
    and denial) on the admin trail, the trail of people's actions."""
    if audit is None:
        return None

    def told(record: dict[str, Any]) -> None:
        audit.put(ADMIN_TRAIL, record)

    return told


@dataclass
class Planes:
    """What ``tessera serve`` runs beside the decision point, when it has a store."""

    store: Store | None = None
    keys: KeyRing | None = None
    directory: Directory | None = None
    audit: AuditWriter | None = None
    gateway: Gateway | None = None
    sock: Any = None  # the issuer's HTTP socket
    base: str = ""  # the issuer's HTTP base URL
    issuer: str = NO_HTTP_ISSUER


def _open_planes(config: ServeConfig, stack: contextlib.AsyncExitStack) -> Planes:
    """Open the store and what follows it (keys, directory, audit writer and its jobs, the
    issuer's socket, ext_authz's gateway); each is closed by ``stack``."""
    planes = Planes(issuer=config.issuer or NO_HTTP_ISSUER)
    if not config.store:
        return planes
    store = planes.store = open_store(config.store)
    stack.callback(store.close)
    keys = planes.keys = KeyRing(store, config.signing_alg, published_for=config.token_lifetime)
    if config.http_port >= 0:
        planes.sock = bind(config.host, config.http_port, reuse_port=config.workers > 1)
        stack.callback(planes.sock.close)
        scheme = "https" if config.tls_cert else "http"
        planes.base = f"{scheme}://{hostport(config.host, planes.sock.getsockname()[1])}"
        planes.issuer = config.issuer or planes.base
    if config.issuer or planes.sock is not None:  # tokens to verify: Envoy's ext_authz
        planes.gateway = ext_authz.gateway_for(
            store,
            keys,
            planes.issuer,
            config.ext_authz_audience,
            config.ext_authz_routes,
            config.ext_authz_strip_headers,
        )
    planes.directory = Directory(store)
    planes.directory.start()
    stack.callback(planes.directory.stop)
    if config.key_rotation_interval > 0:  # one process per deployment rotates
        rotation = Exclusive(
            store, "key-rotation", lambda: ScheduledRotation(keys, config.key_rotation_interval)
        )
        rotation.start()
        stack.callback(rotation.stop)
    if config.audit != "off":
        gather = 0.0 if config.audit == "sync" else GATHER  # sync answers wait
        audit = planes.audit = AuditWriter(
            store, config.audit_queue, gather, config.audit_queue_bytes
        )
        stack.callback(audit.close)
        # One replica follows the change log, and one signs checkpoints; they stop after
        # the last call is answered, and sign what the trails hold then.
        for job in _trail_jobs(store, audit, keys, planes.issuer, config):
            job.start()
            stack.callback(job.stop)
    return planes


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


def _watch_anomalies(
    config: ServeConfig, planes: Planes, running: Running, stack: contextlib.AsyncExitStack
) -> None:
    """Anomaly detection, webhooks and the decision log beside this server, when it
    audits."""
    if planes.store is None or planes.audit is None:
        return
    watch_anomalies(config, planes.store, running.point.metrics.alerts, stack)
    deliver(config, planes.store, running.point.metrics.registry, stack)


def watch_anomalies(
    config: ServeConfig, store: Store, alerts: Counter, stack: contextlib.AsyncExitStack
) -> None:
    """Anomaly detection runs in a process of its own (off this one's interpreter lock);
    this one counts the alerts it raises into ``alerts``. Both are stopped by ``stack``."""
    watcher = Watcher(config.store, config.anomaly_thresholds())
    watcher.start()
    stack.callback(watcher.stop)
    counter = AlertCounter(store, alerts)
    counter.start()
    stack.callback(counter.stop)


async def _serve_issuer(
    config: ServeConfig,
    planes: Planes,
    point: DecisionPoint,
    stack: contextlib.AsyncExitStack,
    token: str,
    callers: Callers,
    extensions: Sequence[HttpExtension] = (),
) -> HttpRunning:
    """The issuer's HTTP service (SCIM, OAuth) with AuthZEN beside it, on ``planes.sock``;
    ``token`` is the bootstrap admin token, ``callers`` how agent tokens are verified,
    ``extensions`` what the layer above adds (the operator console)."""
    store, keys, issuer, base = planes.store, planes.keys, planes.issuer, planes.base
    assert store is not None and keys is not None
    oauth = AuthorizationServer(
        store,
        keys,
        issuer,
        BootstrapToken(token),
        config.token_lifetime,
        exchange_check=exchange_check(point),
        client_cert_header=config.client_cert_header or None,
        client_cert_proxies=frozenset(
            p.strip() for p in config.client_cert_proxies.split(",") if p.strip()
        ),
        agents=planes.directory.agent_record if planes.directory is not None else None,
        on_issue=token_trail(planes.audit),
        on_human=human_trail(planes.audit),
        authorization_details_types=config.authorization_details_type_list,
    )
    tls = (config.tls_cert, config.tls_key) if config.tls_cert else None
    app = http_app(
        point,
        store,
        oauth,
        (issuer, base),
        certificates=bool(tls and config.tls_client_ca),
        agent_tokens=callers.agent_tokens,
        extra=[
            route
            for extend in extensions
            for route in extend(HttpParts(point, store, oauth, planes.audit, config, base, issuer))
        ],
    )
    http = await serve_http(app, planes.sock, tls, config.tls_client_ca or None)
    stack.push_async_callback(http.stop)
    return http


def http_app(
    point: DecisionPoint,
    store: Store,
    oauth: AuthorizationServer,
    urls: tuple[str, str],
    *,
    certificates: bool = False,
    agent_tokens: AgentTokens = NO_AGENT_TOKENS,
    extra: Sequence[BaseRoute] = (),
) -> Starlette:
    """What ``tessera serve`` answers on its HTTP port: health and the API's OpenAPI
    document (no token needed), AuthZEN, and the issuer's SCIM, resource catalog (its
    entries held to the policy schema decided with) and OAuth endpoints.
    ``urls`` are the issuer's URL and the port's own (AuthZEN's tokens may name either);
    ``certificates``: AuthZEN takes a PEP's client certificate the TLS layer checked;
    ``agent_tokens``: how AuthZEN verifies agent tokens in subjects; ``extra``: routes
    the layer above adds (:mod:`pdp.serve.extensions`)."""
    issuer, base = urls
    scim_admins = oauth.administrators([issuer, f"{issuer}{SCIM_PATH}"])
    authzen = AuthZen(
        point,
        oauth.administrators([issuer, f"{base}{AUTHZEN_PATH}"]),
        base,
        certificates=certificates,
        agent_tokens=agent_tokens,
    )
    return Starlette(
        routes=[
            Route(HEALTH_PATH, _health(point), methods=["GET"]),
            Route(OPENAPI_PATH, serve_document, methods=["GET"]),
            *authzen.routes(),
            *issuer_routes(store, scim_admins, oauth, schema_check(lambda: point.schema)),
            *extra,
        ],
        exception_handlers={HTTPException: unrouted},
    )


def startup_lines(
    config: ServeConfig,
    port: int,
    metrics_port: int | None,
    http_port: int | None,
    token: str | None,
    counters: str,
) -> list[str]:
    """What ``tessera serve`` says once it serves, from the ports it took: ``metrics_port``
    None when metrics are off, ``http_port`` None when the issuer does not serve, ``token``
    the generated bootstrap admin token (None when one is configured), ``counters`` the
    name of the store limits are counted in. A lone server and the parent of several
    workers say the same."""
    scheme = "plaintext"
    if config.tls_cert:
        scheme = "mutual TLS" if config.tls_client_ca else "TLS"
    lines = [f"serving tessera.v1.Authorizer on {hostport(config.host, port)} ({scheme})"]
    issuer = config.issuer
    if metrics_port is not None:
        lines.append(f"metrics on http://{hostport(config.host, metrics_port)}/metrics")
    if http_port is not None:
        base = f"{'https' if config.tls_cert else 'http'}://{hostport(config.host, http_port)}"
        issuer = config.issuer or base
        lines += [
            f"SCIM 2.0 at {base}{SCIM_PATH}, directory in {config.store}",
            f"OAuth issuer {issuer} (metadata at {base}{METADATA_PATH})",
            f"AuthZEN at {base}{AUTHZEN_PATH}",
        ]
        if token is not None:
            lines.append(
                f"bootstrap admin token (random; set TESSERA_ADMIN_TOKEN to choose one): {token}"
            )
    elif not config.store:
        lines.append("no store: deciding on the agent attributes callers send")
    if config.store and (config.issuer or http_port is not None):
        lines.append(f"Envoy ext_authz ({ext_authz.SERVICE_NAME}) on port {port}")
    if config.store and config.audit != "off":
        lines.append(f"every decision is audited ({config.audit})")
    lines.append(f"limits counted in {counters}")
    lines.append(callers_line(config, port, issuer))
    return [f"tessera: {line}" for line in lines]


def _announce(
    config: ServeConfig,
    running: Running,
    planes: Planes,
    token_and_counters: tuple[str, str],
    announce: Sequence[str],
) -> None:
    """Print the startup lines of a lone server, then ``announce``; the bootstrap admin
    token and the name of the counter store come as a pair."""
    token, counters = token_and_counters
    metrics = running.metrics_server
    lines = startup_lines(
        config,
        running.port,
        metrics.server_port if metrics is not None else None,
        planes.sock.getsockname()[1] if planes.sock is not None else None,
        None if config.admin_token else token,
        counters,
    )
    for line in (*lines, *announce):
        print(line, flush=True)


def _health(point: DecisionPoint) -> Callable[[Request], Awaitable[Response]]:
    """``GET /healthz`` for HTTP load balancers and operators: this process serves, and
    the bundle it decides with (a process draining no longer accepts connections)."""

    async def health(_: Request) -> Response:
        body = {"status": "SERVING", "bundle_version": point.version, "pid": os.getpid()}
        return JSONResponse(body, headers={"Cache-Control": "no-store"})

    return health


def _say(line: str) -> None:
    print(f"tessera: {line}", flush=True)


@dataclass(frozen=True)
class Supervised:
    """What changes when this process is one worker of ``tessera serve --workers N``: its
    parent prints the startup lines, serves the metrics of all workers and runs the
    anomaly watcher, so this one serves its own metrics on a private loopback port and
    calls ``ready`` once it serves."""

    ready: Callable[[Running], None]


PRIVATE_HOST = "127.0.0.1"  # where a worker serves its metrics for its parent to gather


async def serve_forever(
    engine: Engine,
    config: ServeConfig,
    announce: Sequence[str] = (),
    supervised: Supervised | None = None,
    policies: PolicySource | None = None,
    extensions: Sequence[HttpExtension] = (),
) -> None:
    """Serve until SIGINT or SIGTERM, then drain in-flight calls and stop; SIGHUP loads the
    policies at once. ``policies`` is the source ``engine``'s bundle was loaded from
    (default: the one ``config.policies`` names); it is followed, and closed on the way out.

    With a store: the directory snapshot follows it, and the issuer's HTTP service (SCIM)
    runs beside the decision service in this event loop. Whatever started is stopped
    again, also when a later part fails to start. With ``supervised``, this process is one
    of several workers on the same ports. ``extensions`` add routes to the HTTP port
    (:mod:`pdp.serve.extensions`).
    """
    async with contextlib.AsyncExitStack() as stack:
        planes = _open_planes(config, stack)
        counters = open_counters(config.counter_store, timeout=config.counters_timeout)
        stack.callback(counters.close)
        callers = callers_for(config, planes.keys, planes.issuer, planes.directory)
        running = await start(
            Engine(engine.bundle, counters, engine.clock),
            config.host,
            config.port,
            watch=policies if policies is not None else open_source(config.policies),
            interval=config.policies_interval,
            cache_size=config.cache_size,
            metrics_port=(0 if supervised else config.metrics_port) if config.metrics else None,
            tls=config.credentials(),
            directory=planes.directory,
            audit=planes.audit,
            durability=config.audit,
            gateway=planes.gateway,
            metrics_host=PRIVATE_HOST if supervised else None,
            reuse_port=config.workers > 1,
            bounds=config.bounds(),
            callers=callers,
        )
        stack.push_async_callback(running.stop, config.grace)
        token = config.admin_token or new_token()
        http = None
        if planes.sock is not None:
            http = await _serve_issuer(
                config, planes, running.point, stack, token, callers, extensions
            )
        if supervised is None:
            _watch_anomalies(config, planes, running, stack)
            _announce(config, running, planes, (token, counters.name), announce)
        else:
            supervised.ready(running)
        _reload_on_hangup(running)
        await _until_signalled(running, http)
        await _drain(running, http, config.grace)


def _reload_on_hangup(running: Running) -> None:
    """SIGHUP loads the policy directory now: ``kill -HUP``, or the parent of several
    workers passing it on."""
    if running.reloader is not None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, running.reloader.reload_now)


async def _until_signalled(running: Running, http: HttpRunning | None) -> None:
    """Wait for SIGINT or SIGTERM; after it, a second one ends the drain at once."""
    stopping = asyncio.Event()
    on_stop_signals(stopping.set)
    await stopping.wait()

    def at_once() -> None:
        _say("stopping now: the calls still in flight are ended UNAVAILABLE")
        running.hurry()
        if http is not None:
            http.hurry()

    on_stop_signals(at_once)


async def _drain(running: Running, http: HttpRunning | None, grace: float) -> None:
    """Drain gRPC and HTTP side by side, within the one grace period, saying so."""
    _say(f"draining: health NOT_SERVING, no new calls; those in flight have {grace:g} s")
    began = time.monotonic()
    drained, _ = await asyncio.gather(
        running.stop(grace), http.stop(grace) if http is not None else asyncio.sleep(0)
    )
    _say(
        f"drained in {time.monotonic() - began:.1f} s: {drained.finished} calls finished, "
        f"{drained.ended} ended UNAVAILABLE"
    )
