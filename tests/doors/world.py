"""Every door of the decision point, for real, on 127.0.0.1, over one store.

- the issuer (SCIM and OAuth) on a fresh store (:func:`tests.issuer.oauth_server.oauth_service`);
- the decision service on the shipped policies with a directory following that store, an
  agent trail answered once committed, and Envoy's ext_authz beside ``tessera.v1`` on its
  gRPC port (routes: ``POST /tools/{name}`` is ``tool.call`` on ``tool:{name}``);
- AuthZEN over the same decision point, authenticating callers with the issuer;
- the MCP proxy in front of an MCP server written with the official SDK, deciding in its
  own process (``decisions = "local"``) on the same policies and store, and asking the
  decision service above for what a ``limit`` could decide.

Each door is asked through its own client (a gRPC stub, httpx, Envoy's stubs, a
JSON-RPC ``tools/call``), and what it answered is read into a :class:`Said`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from envoy.service.auth.v3 import external_auth_pb2 as auth
from envoy.service.auth.v3 import external_auth_pb2_grpc as auth_grpc
from google.rpc import code_pb2
from starlette.applications import Starlette

from issuer.app import HttpRunning, bind, serve_http
from issuer.oauth.tokens import TokenMinter
from issuer.store import Store
from pdp.audit.query import entries
from pdp.audit.writer import AuditWriter
from pdp.decide import DecisionPoint
from pdp.directory import Directory
from pdp.doors.authzen import AUTHZEN_PATH, AuthZen
from pdp.doors.ext_authz import DECISION_HEADER, gateway_for
from pdp.engine import Engine
from pdp.loader import load_directory
from pdp.serve.proto import authorizer_pb2 as pb
from pdp.serve.proto import authorizer_pb2_grpc as pb_grpc
from pep.mcp_proxy.app import DECISION_HEADER as MCP_DECISION_HEADER
from pep.mcp_proxy.app import Proxy
from pep.mcp_proxy.config import ContextArgument, ProxyConfig, Upstream
from pep.mcp_proxy.decisions import LocalDecider
from tests.conftest import SHIPPED_POLICIES
from tests.issuer.conftest import TIMEOUT, TOKEN, unique
from tests.issuer.oauth_server import OAuthService, oauth_service
from tests.pep.mcp_proxy.test_proxy import call, modern
from tests.pep.mcp_proxy.tools import upstream_server
from tests.servers import HttpServer, LoopThread, Server
from tests.test_directory import add_agent, add_user

API = "https://api.example.com"  # the audience of the gateway Envoy guards
ROUTES = "POST /tools/{name} tool.call tool:{name}"
UPSTREAM = "tools"  # the MCP upstream's name: the proxy's `server` and `mcp_server`
UPSTREAM_PATH = "/mcp"
PROXY_PATH = "/mcp/tools"
UPSTREAM_TOKEN = "upstream-own-credential-0123456789"
SCOPE = "mcp:tools"
CLIENT_ADDRESS = "192.0.2.10"  # the HTTP client Envoy saw (documentation range)
WAIT_TRIES = 250  # x 0.02 s: how long a directory may take to follow the store


@dataclass(frozen=True)
class Asked:
    """One authorization question, in the terms every door is told it: the agent, the
    user it acts for (None: alone), the MCP tool it calls, and the call's ``amount`` in
    USD (None: no amount)."""

    agent: str
    user: str | None
    tool: str
    amount: int | None = None


@dataclass(frozen=True)
class Said:
    """What a door answered. ``decision_id`` and ``allow`` every door tells; the rest is
    None where the door's protocol does not carry it."""

    door: str
    allow: bool
    decision_id: str
    decided_by: tuple[str, ...] | None = None
    reasons: tuple[str, ...] | None = None
    obligations: tuple[tuple[str, str], ...] | None = None
    bundle_version: str | None = None


@dataclass
class Doors:
    """The running world; see the module's text."""

    oauth: OAuthService
    pdp: Server
    directory: Directory
    authzen_server: HttpServer
    authzen_base: str
    proxy: Proxy
    proxy_origin: str
    thread: LoopThread
    served: list[HttpRunning] = field(default_factory=list)

    @property
    def store(self) -> Store:
        return self.oauth.store

    @property
    def point(self) -> DecisionPoint:
        """The decision point behind gRPC, ext_authz and AuthZEN."""
        return self.pdp.running.point

    @property
    def local(self) -> LocalDecider:
        decider = self.proxy.decider
        assert isinstance(decider, LocalDecider)
        return decider

    @property
    def resource(self) -> str:
        """The proxy's resource URI: where MCP clients reach the upstream."""
        return f"{self.proxy_origin}{PROXY_PATH}"

    # -- the directory

    def agent(self, **extension: Any) -> str:
        """A new agent (SCIM extension attributes as given), once both directories know it."""
        agent = add_agent(self.store, unique("agent"), **extension)
        self._wait(lambda d: d.agent(agent) is not None)
        return agent

    def user(self) -> str:
        """A new active user, once both directories know them."""
        user = add_user(self.store, unique("user"))
        self._wait(lambda d: d.user(user) is not None)
        return user

    def _wait(self, known: Any) -> None:
        directories = (self.directory, self.local.directory)
        for _ in range(WAIT_TRIES):
            if all(known(d) for d in directories):
                return
            time.sleep(0.02)
        raise AssertionError("a directory did not follow the store")

    def token(self, asked: Asked) -> str:
        """An access token as the issuer mints it for the agent (acting for the user after
        a token exchange, RFC 8693 ``act``), for the gateway's API and the proxy."""
        extra: dict[str, Any] = {"agent_id": asked.agent, "agent_type": "background"}
        if asked.user is not None:
            extra["act"] = {"sub": asked.agent}
        minter = TokenMinter(self.oauth.keys, self.oauth.issuer)
        return minter.mint(
            subject=asked.user or asked.agent,
            client_id="same-answer-test",
            audience=[API, self.resource],
            scope=[SCOPE],
            extra=extra,
        ).token

    # -- the doors

    def grpc(self, asked: Asked) -> Said:
        """``tessera.v1.Authorizer/Authorize``. The agent attributes sent are made up: with
        a directory they are ignored, so they must change nothing."""
        message = pb.AuthorizeRequest(
            agent=pb.Agent(
                id=asked.agent,
                attributes={"risk": pb.Value(risk="low"), "status": pb.Value(string="active")},
            ),
            action="tool.call",
            resource=pb.Resource(
                type="tool", id=asked.tool, attributes={"server": pb.Value(string=UPSTREAM)}
            ),
        )
        if asked.user is not None:
            message.user.CopyFrom(pb.User(id=asked.user))
            message.delegation.CopyFrom(pb.Delegation(chain=[asked.agent]))
        if asked.amount is not None:
            money = pb.Money(amount=str(asked.amount), currency="USD")
            message.context["amount"].CopyFrom(pb.Value(money=money))
        stub = pb_grpc.AuthorizerStub(self.pdp.channel)  # type: ignore[no-untyped-call]
        response = stub.Authorize(message, timeout=TIMEOUT)
        return Said(
            "grpc",
            response.allow,
            response.decision_id,
            tuple(response.decided_by),
            tuple(response.reasons),
            tuple((o.kind, o.value) for o in response.obligations),
            response.bundle_version,
        )

    def authzen(self, asked: Asked) -> Said:
        """``POST /access/v1/evaluation``, explained."""
        properties: dict[str, Any] = {}
        if asked.user is not None:
            properties = {"user": asked.user, "delegation": [asked.agent]}
        body: dict[str, Any] = {
            "subject": {"type": "agent", "id": asked.agent, "properties": properties},
            "action": {"name": "tool.call"},
            "resource": {"type": "tool", "id": asked.tool, "properties": {"server": UPSTREAM}},
            "options": {"tessera_explain": True},
        }
        if asked.amount is not None:
            body["context"] = {"amount": f"{asked.amount} USD"}
        response = httpx.post(
            f"{self.authzen_base}{AUTHZEN_PATH}/evaluation",
            json=body,
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=TIMEOUT,
        )
        assert response.status_code == 200, response.text
        answer = response.json()
        context = answer["context"]
        return Said(
            "authzen",
            answer["decision"],
            context["decision_id"],
            tuple(context["decided_by"]),
            tuple(context["reasons"]),
            tuple((o["kind"], o["value"]) for o in context["obligations"]),
            context["bundle_version"],
        )

    def ext_authz(self, asked: Asked) -> Said:
        """Envoy's ``Check`` for ``POST /tools/<tool>`` with the agent's bearer token. An
        HTTP request carries no call arguments: ``amount`` cannot be told this door."""
        assert asked.amount is None, "ext_authz cannot carry an amount"
        request = auth.CheckRequest()
        source = request.attributes.source
        source.address.socket_address.address = CLIENT_ADDRESS
        source.address.socket_address.port_value = 40_000
        http = request.attributes.request.http
        http.method, http.path, http.host = "POST", f"/tools/{asked.tool}", "api.example.com"
        http.headers.update({"authorization": f"Bearer {self.token(asked)}"})
        stub = auth_grpc.AuthorizationStub(self.pdp.channel)
        response = stub.Check(request, timeout=TIMEOUT)
        if response.status.code == code_pb2.OK:
            headers = {o.header.key: o.header.value for o in response.ok_response.headers}
            return Said("ext_authz", True, headers[DECISION_HEADER])
        # 401 with RFC 9470's challenge when only step-ups stand in the way
        assert response.denied_response.status.code in (401, 403), response
        body = json.loads(response.denied_response.body)
        obligations = tuple((o["kind"], o["value"]) for o in body["obligations"])
        return Said("ext_authz", False, body["decision_id"], obligations=obligations)

    def mcp(self, asked: Asked) -> Said:
        """A ``tools/call`` through the MCP proxy with the agent's bearer token."""
        arguments: dict[str, Any] = {"query": "same answer"}
        if asked.amount is not None:
            arguments = {"amount": asked.amount}
        response = httpx.post(
            self.resource,
            json=call(asked.tool, arguments),
            headers={
                "Authorization": f"Bearer {self.token(asked)}",
                "Accept": "application/json, text/event-stream",
                **modern(asked.tool),
            },
            timeout=TIMEOUT,
        )
        assert response.status_code in (200, 401), response.text  # 401: a step-up challenge
        decision_id = response.headers[MCP_DECISION_HEADER]
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            return Said("mcp", True, decision_id)  # forwarded: the upstream answered
        answer = response.json()
        if "error" not in answer:
            return Said("mcp", True, decision_id)
        data = answer["error"]["data"]
        assert data["decision_id"] == decision_id
        return Said(
            "mcp",
            False,
            decision_id,
            reasons=tuple(data["reasons"]),
            obligations=tuple((o["kind"], o["value"]) for o in data["obligations"]),
        )

    # -- the trail

    def record(self, decision_id: str) -> dict[str, Any]:
        """The agent trail's record of a decision: there already, as every writer here
        answers only once its record is committed."""
        found: list[dict[str, Any]] = [
            data
            for entry in entries(self.store, "agent")
            if (data := json.loads(entry.record)).get("decision_id") == decision_id
        ]
        assert len(found) == 1, f"{len(found)} records of {decision_id}"
        return found[0]


@contextmanager
def doors(backend: str, tmp_path: Path) -> Iterator[Doors]:
    """The world on a fresh ``backend`` store; everything stops when the block ends."""
    with oauth_service(backend, tmp_path) as oauth:
        directory = Directory(oauth.store)
        directory.start()
        writer = AuditWriter(oauth.store, 1_000, 0.0)
        gateway = gateway_for(oauth.store, oauth.keys, oauth.issuer, API, ROUTES)
        thread = LoopThread()
        served: list[HttpRunning] = []
        pdp: Server | None = None
        authzen: HttpServer | None = None
        try:
            pdp = Server(
                Engine(load_directory(SHIPPED_POLICIES).bundle),
                directory=directory,
                audit=writer,
                durability="sync",
                gateway=gateway,
            )
            authzen, base = _authzen(oauth, pdp.running.point)
            proxy, origin = _proxy(oauth, pdp, thread, served)
            yield Doors(oauth, pdp, directory, authzen, base, proxy, origin, thread, served)
        finally:
            for running in reversed(served):
                thread.run(running.stop())
            thread.stop()
            if authzen is not None:
                authzen.close()
            if pdp is not None:
                pdp.close()
            writer.close(10)
            directory.stop()


def _authzen(oauth: OAuthService, point: DecisionPoint) -> tuple[HttpServer, str]:
    """AuthZEN over ``point``, its callers authenticated by the issuer; and its URL."""
    bases: list[str] = []

    def build(port: int) -> Starlette:
        base = f"http://127.0.0.1:{port}"
        bases.append(base)
        callers = oauth.server.administrators([base, f"{base}{AUTHZEN_PATH}"])
        return Starlette(routes=AuthZen(point, callers, base).routes())

    server = HttpServer(build)
    return server, bases[0]


def _proxy(
    oauth: OAuthService, pdp: Server, thread: LoopThread, served: list[HttpRunning]
) -> tuple[Proxy, str]:
    """The SDK's MCP server, and the proxy deciding locally in front of it; the proxy and
    its origin."""
    upstream_app = upstream_server().streamable_http_app(streamable_http_path=UPSTREAM_PATH)
    up = thread.run(serve_http(upstream_app, bind("127.0.0.1", 0), lifespan=True))
    served.append(up)
    sock = bind("127.0.0.1", 0)
    origin = f"http://127.0.0.1:{sock.getsockname()[1]}"
    upstream = Upstream(
        name=UPSTREAM,
        path=PROXY_PATH,
        url=f"http://127.0.0.1:{up.port}{UPSTREAM_PATH}",
        scopes=(SCOPE,),
        context={"amount": ContextArgument("amount", "USD")},
        credential="static",
        token=UPSTREAM_TOKEN,
        timeout=5.0,
    )
    config = ProxyConfig(
        public_url=origin,
        issuer=oauth.issuer,
        upstreams=(upstream,),
        pdp=f"127.0.0.1:{pdp.running.port}",
        decisions="local",
        policies=str(SHIPPED_POLICIES),
        store=oauth.url,
        audit="sync",
        pdp_timeout=TIMEOUT,  # a remote decision must not fail closed on a busy machine
    )
    proxy = Proxy(config)
    served.append(thread.run(serve_http(proxy.app(), sock, lifespan=True, httptools=True)))
    return proxy, origin
