"""The composition root of ``tessera serve``: it wires the planes and nothing else.

The store and the directory that follows it, the issuer (SCIM, OAuth, keys), the
:class:`~pdp.decide.DecisionPoint`, its doors (gRPC ``tessera.v1``, Envoy ext_authz on the
same port, AuthZEN on the issuer's HTTP port), the audit writer and its jobs, the anomaly
watcher and the policy reloader. Each door only adapts its protocol; what is decided, and
how, lives in :mod:`pdp.decide`. The standard health service reports SERVING once a bundle
is loaded, and server reflection lets generic clients discover the contract.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIServer

import grpc
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
from pdp.audit.records import token_record
from pdp.audit.watch import AlertCounter, Watcher
from pdp.audit.writer import GATHER, AuditWriter
from pdp.counters import open_counters
from pdp.decide import DEFAULT_CACHE_SIZE, DecisionPoint
from pdp.directory import Directory
from pdp.doors import ext_authz
from pdp.doors import grpc as grpc_door
from pdp.doors.authzen import AUTHZEN_PATH, AuthZen
from pdp.doors.ext_authz import Gateway
from pdp.engine import Engine
from pdp.metrics import Metrics
from pdp.serve.config import ServeConfig
from pdp.serve.exchange import exchange_check
from pdp.serve.reload import Reloader

NO_HTTP_ISSUER = "urn:tessera:issuer"  # who signs audit checkpoints when no issuer serves

SERVICE_NAME = grpc_door.SERVICE_NAME

__all__ = ["DEFAULT_CACHE_SIZE", "SERVICE_NAME", "Running", "serve_forever", "start"]


@dataclass
class Running:
    """A started server: where it listens and how to stop it."""

    server: grpc.aio.Server
    port: int
    health: health.HealthServicer
    point: DecisionPoint
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
    metrics = Metrics()
    point = DecisionPoint(
        engine,
        directory=directory,
        cache_size=cache_size,
        metrics=metrics,
        audit=audit,
        durability=durability,
    )
    server = grpc.aio.server()
    grpc_door.add_to_server(point, server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    deciding = [SERVICE_NAME]
    if gateway is not None:
        ext_authz.add_to_server(point, gateway, server)
        deciding.append(ext_authz.SERVICE_NAME)
    reflection.enable_server_reflection(
        (*deciding, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    bound = _listen(server, f"{host}:{port}", tls)
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
        reloader = Reloader(watch, point.use, interval, metrics.reloads)
        reloader.start()
    metrics_server = metrics.serve(metrics_port, host) if metrics_port is not None else None
    return Running(server, bound, health_servicer, point, reloader, metrics_server)


def _listen(
    server: grpc.aio.Server, address: str, tls: tuple[bytes, bytes, bytes | None] | None
) -> int:
    """Listen on ``address``, plaintext or (mutual) TLS; the port bound."""
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
    return int(bound)


def token_trail(audit: AuditWriter | None) -> IssuedHook | None:
    """Put every token the issuer mints on the agent trail (a full queue waits)."""
    if audit is None:
        return None

    def issued(grant: str, claims: dict[str, Any]) -> None:
        audit.put("agent", lambda: token_record(grant, claims))

    return issued


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
        planes.sock = bind(config.host, config.http_port)
        stack.callback(planes.sock.close)
        scheme = "https" if config.tls_cert else "http"
        planes.base = f"{scheme}://{config.host}:{planes.sock.getsockname()[1]}"
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
    if config.audit != "off":
        gather = 0.0 if config.audit == "sync" else GATHER  # sync answers wait
        audit = planes.audit = AuditWriter(store, config.audit_queue, gather)
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
    """Anomaly detection runs in a process of its own (off this one's interpreter lock);
    this one counts the alerts it raises."""
    if planes.store is None or planes.audit is None:
        return
    watcher = Watcher(config.store, config.anomaly_thresholds())
    watcher.start()
    stack.callback(watcher.stop)
    counter = AlertCounter(planes.store, running.point.metrics.alerts)
    counter.start()
    stack.callback(counter.stop)


async def _serve_issuer(
    config: ServeConfig, planes: Planes, point: DecisionPoint, stack: contextlib.AsyncExitStack
) -> None:
    """The issuer's HTTP service (SCIM, OAuth) with AuthZEN beside it, on ``planes.sock``."""
    store, keys, issuer, base = planes.store, planes.keys, planes.issuer, planes.base
    assert store is not None and keys is not None
    token = config.admin_token or new_token()
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
    )
    tls = (config.tls_cert, config.tls_key) if config.tls_cert else None
    scim_admins = oauth.administrators([issuer, f"{issuer}{SCIM_PATH}"])
    authzen = AuthZen(point, oauth.administrators([issuer, f"{base}{AUTHZEN_PATH}"]), base)
    app = Starlette(
        routes=[*authzen.routes(), Mount("", app=issuer_app(store, scim_admins, oauth))]
    )
    http = await serve_http(app, planes.sock, tls, config.tls_client_ca or None)
    stack.push_async_callback(http.stop)
    _say(f"SCIM 2.0 at {base}{SCIM_PATH}, directory in {config.store}")
    _say(f"OAuth issuer {issuer} (metadata at {base}{METADATA_PATH})")
    _say(f"AuthZEN at {base}{AUTHZEN_PATH}")
    if not config.admin_token:
        _say(f"bootstrap admin token (random; set TESSERA_ADMIN_TOKEN to choose one): {token}")


def _say(line: str) -> None:
    print(f"tessera: {line}", flush=True)


async def serve_forever(engine: Engine, config: ServeConfig, announce: Sequence[str] = ()) -> None:
    """Serve until SIGINT or SIGTERM, then drain in-flight calls and stop.

    With a store: the directory snapshot follows it, and the issuer's HTTP service (SCIM)
    runs beside the decision service in this event loop. Whatever started is stopped
    again, also when a later part fails to start.
    """
    async with contextlib.AsyncExitStack() as stack:
        planes = _open_planes(config, stack)
        counters = open_counters(config.counter_store, timeout=config.counters_timeout)
        stack.callback(counters.close)
        running = await start(
            Engine(engine.bundle, counters, engine.clock),
            config.host,
            config.port,
            watch=Path(config.policies),
            interval=config.reload_interval,
            cache_size=config.cache_size,
            metrics_port=config.metrics_port if config.metrics else None,
            tls=config.credentials(),
            directory=planes.directory,
            audit=planes.audit,
            durability=config.audit,
            gateway=planes.gateway,
        )
        stack.push_async_callback(running.stop, config.grace)
        _watch_anomalies(config, planes, running, stack)
        scheme = "TLS" if config.tls_cert else "plaintext"
        if config.tls_client_ca:
            scheme = "mutual TLS"
        _say(f"serving tessera.v1.Authorizer on {config.host}:{running.port} ({scheme})")
        if running.metrics_server is not None:
            where = f"{config.host}:{running.metrics_server.server_port}"
            _say(f"metrics on http://{where}/metrics")
        if planes.sock is not None:
            await _serve_issuer(config, planes, running.point, stack)
        elif planes.store is None:
            _say("no store: deciding on the agent attributes callers send")
        if planes.gateway is not None:
            _say(f"Envoy ext_authz ({ext_authz.SERVICE_NAME}) on port {running.port}")
        if planes.audit is not None:
            _say(f"every decision is audited ({config.audit})")
        _say(f"limits counted in {counters.name}")
        for line in announce:
            print(line, flush=True)
        await _until_signalled()
        _say("draining in-flight calls, then stopping")


async def _until_signalled() -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
