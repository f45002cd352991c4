"""Everything the MCP proxy talks to, for real, on 127.0.0.1.

- the token issuer (SCIM and OAuth) on a store (:func:`tests.issuer.oauth_server.oauth_service`);
- the PDP's gRPC service on the shipped policies, following the same store's directory
  and consents, and auditing every decision to it;
- an MCP server written with the official SDK (``MCPServer``, Streamable HTTP) that
  remembers the ``Authorization`` header of every request it gets;
- the proxy in front of it, with a static upstream credential, asking the PDP over gRPC
  (or, with ``decisions="local"``, deciding in its own process on the same policies and
  store).
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from issuer.app import HttpRunning, bind, serve_http
from issuer.models import AGENT_EXTENSION, AGENT_SCHEMA
from issuer.oauth.grants import Exchange
from pdp.audit.writer import AuditWriter
from pdp.directory import Directory
from pdp.doors.callers import DECIDE_SCOPE, callers_of
from pdp.engine import Engine
from pdp.loader import load_directory
from pdp.serve.exchange import exchange_check
from pep.mcp_proxy.app import Proxy
from pep.mcp_proxy.config import ContextArgument, ProxyConfig, Upstream
from pep.mcp_proxy.decisions import LocalDecider
from tests.issuer.conftest import unique
from tests.issuer.oauth_server import OAuthService, Registered, oauth_service
from tests.pep.mcp_proxy.tools import upstream_server
from tests.servers import LoopThread, Server

POLICIES = Path(__file__).resolve().parents[3] / "policies"
UPSTREAM_TOKEN = "upstream-own-credential-0123456789"
UPSTREAM_PATH = "/mcp"
PROXY_PATH = "/mcp/tools"
CONSENT_SCOPE = "payments:transfer"
UPSTREAM_AUDIENCE = "https://upstream.internal/mcp"


class Recorder:
    """ASGI middleware that remembers the Authorization header of every request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.seen: list[str | None] = []
        self.lock = threading.Lock()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = dict(scope["headers"])
            value = headers.get(b"authorization")
            with self.lock:
                self.seen.append(value.decode() if value is not None else None)
        await self.app(scope, receive, send)


class Lazy:
    """An exchange check that decides with the PDP once it is running."""

    def __init__(self) -> None:
        self.service: Any = None

    def __call__(self, exchange: Exchange) -> str | None:
        if self.service is None:
            return "the PDP is not running"
        result: str | None = exchange_check(self.service)(exchange)
        return result


@dataclass
class World:
    oauth: OAuthService
    pdp: Server
    directory: Directory
    recorder: Recorder
    upstream_url: str
    proxy: str  # the proxy's origin
    config: ProxyConfig
    thread: LoopThread
    gateway: Proxy
    served: list[HttpRunning] = field(default_factory=list)

    @property
    def directories(self) -> list[Directory]:
        """The PDP's directory, and the proxy's own when it decides locally."""
        decider = self.gateway.decider
        local = [decider.directory] if isinstance(decider, LocalDecider) else []
        return [self.directory, *local]

    @property
    def url(self) -> str:
        """The MCP endpoint clients use."""
        return f"{self.proxy}{PROXY_PATH}"

    def at(self, path: str) -> str:
        return f"{self.proxy}{path}"

    @property
    def resource(self) -> str:
        return self.url

    def add_agent(self, *, purpose: str = "general", risk: str = "low") -> str:
        name = unique("agent")
        document = {
            "schemas": [AGENT_SCHEMA, AGENT_EXTENSION],
            "name": name,
            AGENT_EXTENSION: {
                "owner": "finance",
                "purpose": purpose,
                "riskLevel": risk,
                "agentType": "interactive",
                "status": "active",
            },
        }
        agent = self.oauth.store.create("Agent", document, unique={"name": name}, actor="admin")
        self.wait_for(lambda: all(d.agent(agent.id) is not None for d in self.directories))
        return agent.id

    def add_proxy(self, upstreams: tuple[Upstream, ...], **options: Any) -> str:
        """Another proxy in front of ``upstreams``, on the same issuer and PDP, stopped
        with the world; ``options`` replace the world's proxy settings. Its origin."""
        sock = bind("127.0.0.1", 0)
        origin = f"http://127.0.0.1:{sock.getsockname()[1]}"
        config = replace(self.config, public_url=origin, upstreams=upstreams, **options)
        app = Proxy(config).app()
        self.served.append(self.thread.run(serve_http(app, sock, lifespan=True, httptools=True)))
        return origin

    def serve(self, app: ASGIApp, lifespan: bool = False) -> str:
        """Serve ``app`` on 127.0.0.1 beside the world, stopped with it (with its
        ``lifespan``, as an SDK server needs). Its origin."""
        running = self.thread.run(serve_http(app, bind("127.0.0.1", 0), lifespan=lifespan))
        self.served.append(running)
        return f"http://127.0.0.1:{running.port}"

    def revoke(self, client: Registered, token: str) -> None:
        """Revoke ``client``'s access token at the issuer (RFC 7009)."""
        revoke = {
            "token": token,
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": self.oauth.assertion(client),
        }
        assert self.oauth.http.post("/oauth/revoke", data=revoke).status_code == 200

    def wait_for(self, condition: Any, tries: int = 200) -> None:
        """Wait (bounded) until the directory has caught up."""
        import time

        for _ in range(tries):
            if condition():
                return
            time.sleep(0.02)
        raise AssertionError("the directory did not catch up")


def proxy_config(
    issuer: str,
    proxy: str,
    upstream_url: str,
    consent_client: str,
    own: tuple[str, str],
    **options: Any,
) -> ProxyConfig:
    """The proxy in front of the SDK server four ways (static credential; the proxy's own
    token from the issuer; a short timeout; over stdio), of a program that is no MCP
    server at all, and of a port nobody listens on."""
    upstream = Upstream(
        name="tools",
        path=PROXY_PATH,
        url=upstream_url,
        scopes=("mcp:tools",),
        tool_scopes={"fs.delete": ("fs:write",)},
        context={"amount": ContextArgument("amount", "USD")},
        credential="static",
        token=UPSTREAM_TOKEN,
        timeout=5.0,
    )
    own_credential = replace(
        upstream,
        name="own",
        path="/mcp/own",
        credential="client_credentials",
        token="",
        audience=UPSTREAM_AUDIENCE,
    )
    slow = replace(upstream, name="slow", path="/mcp/slow", timeout=0.5)
    local = replace(
        upstream,
        name="local",
        path="/mcp/local",
        url=None,
        command=(sys.executable, "-m", "tests.pep.mcp_proxy.stdio_server"),
        credential="none",
        token="",
    )
    broken = replace(
        local, name="broken", path="/mcp/broken", command=(sys.executable, "-c", "pass")
    )
    closed = bind("127.0.0.1", 0)  # a port nobody listens on
    gone = replace(
        upstream, name="gone", path="/mcp/gone", url=f"http://127.0.0.1:{closed.getsockname()[1]}/"
    )
    closed.close()
    config = ProxyConfig(
        public_url=proxy,
        issuer=issuer,
        upstreams=(upstream, own_credential, slow, local, broken, gone),
        pdp="",
        consent_client_id=consent_client,
        client_id=own[0],
        client_secret=own[1],
        api_keys=True,
    )
    return replace(config, **options)


@contextmanager
def world(
    backend: str,
    tmp_path: Path,
    policies: Path = POLICIES,
    callers: bool = False,
    issuer: dict[str, Any] | None = None,
    **options: Any,
) -> Iterator[World]:
    """The world on a fresh ``backend`` store, its PDP deciding with the ``policies``
    directory (the shipped policies by default); ``options`` change the proxy's
    configuration (``decisions="local"`` decides on the same policies and the issuer's
    store unless told otherwise). With ``callers``, the PDP asks every caller for a PEP's
    bearer token, as ``caller_auth = "required"`` does, and the proxy's own client at the
    issuer may ask for one (scope ``tessera:decide``). ``issuer`` options go to the
    authorization server (``client_cert_header``, a CIBA ``clock``, ``on_human``)."""
    lazy = Lazy()
    with oauth_service(backend, tmp_path, exchange_check=lazy, **(issuer or {})) as oauth:
        directory = Directory(oauth.store)
        directory.start()
        audit = AuditWriter(oauth.store, 1000, 0.0)
        engine = Engine(load_directory(policies).bundle)
        asking = {"callers": callers_of(oauth.keys, oauth.issuer, directory, peps=True)}
        pdp = Server(
            engine,
            directory=directory,
            audit=audit,
            durability="sync",
            **(asking if callers else {}),
        )
        lazy.service = pdp.running.point
        thread = LoopThread()
        served: list[HttpRunning] = []
        try:
            recorder = Recorder(
                upstream_server().streamable_http_app(streamable_http_path=UPSTREAM_PATH)
            )
            up = thread.run(serve_http(recorder, bind("127.0.0.1", 0), lifespan=True))
            served.append(up)
            upstream_url = f"http://127.0.0.1:{up.port}{UPSTREAM_PATH}"
            sock = bind("127.0.0.1", 0)
            proxy = f"http://127.0.0.1:{sock.getsockname()[1]}"
            consent_app = register_consent_app(oauth, proxy)
            own = oauth.secret_client(scope=DECIDE_SCOPE if callers else "")
            assert own.secret is not None
            config = proxy_config(
                oauth.issuer,
                proxy,
                upstream_url,
                consent_app,
                (own.client_id, own.secret),
                pdp=f"127.0.0.1:{pdp.running.port}",
                **{"policies": str(policies), "store": oauth.url, **options},
            )
            gateway = Proxy(config)
            served.append(
                thread.run(serve_http(gateway.app(), sock, lifespan=True, httptools=True))
            )
            yield World(
                oauth,
                pdp,
                directory,
                recorder,
                upstream_url,
                proxy,
                config,
                thread,
                gateway,
                served,
            )
        finally:
            for item in reversed(served):
                thread.run(item.stop())
            thread.stop()
            pdp.close()
            audit.close()
            directory.stop()


def register_consent_app(oauth: OAuthService, proxy: str) -> str:
    """The public client whose consent page users see when the proxy asks."""
    metadata = {
        "token_endpoint_auth_method": "none",
        "grant_types": ["authorization_code"],
        "redirect_uris": [f"{proxy}/consent/done"],
        "scope": f"{CONSENT_SCOPE} mcp:tools",
        "client_name": "Tessera MCP proxy",
    }
    response = oauth.register(metadata, token=None)
    assert response.status_code == 201, response.text
    client_id: str = response.json()["client_id"]
    return client_id


def run(coroutine: Any) -> Any:
    """Run a client coroutine to completion in a fresh event loop."""
    return asyncio.run(coroutine)
