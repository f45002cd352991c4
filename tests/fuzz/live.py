"""One live ``tessera serve`` for the fuzzers, on a fresh PostgreSQL schema, with the world
they need to get past the first checks: an agent, a user, a group, an agent's OAuth
client and its access token, a public client and an API key, made over the API itself.

PostgreSQL rather than SQLite: it is the stricter store (its JSON refuses NUL characters,
its driver refuses text that is not UTF-8), so a door that lets such input through to the
store shows here. The audit trail is written synchronously, so an accepted decision is in
the store when its answer arrives, and :meth:`Live.snapshot` tells refused requests, which
must change nothing, from accepted ones.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
import psycopg

from issuer.models import AGENT_EXTENSION, AGENT_SCHEMA
from tests.conftest import SHIPPED_POLICIES
from tests.servers import tessera_serve
from tests.stores import postgres_schema

ADMIN_TOKEN = "fuzz-admin-token-0123456789abcdef"
TIMEOUT = 15.0  # seconds a call may take: the documented 10 s body read timeout, and some
SETTLE_TRIES = 200  # x SETTLE_PAUSE: how long background writes of an accepted call may take
SETTLE_PAUSE = 0.025  # seconds
STARTUP_LINES = 8  # what `tessera serve` prints before it serves, with a given admin token


Rows = dict[str, list[tuple[Any, ...]]]  # a table's name, its rows


@dataclass
class Seeds:
    """What the fuzzers can name so that some of their requests reach deep."""

    agent: str = ""
    user: str = ""
    group: str = ""
    client_id: str = ""
    client_secret: str = ""
    public_client: str = ""
    access_token: str = ""
    api_key: str = ""
    api_key_id: str = ""


@dataclass
class Live:
    """The running server: its addresses, its store, and what was made in it."""

    base: str  # http://127.0.0.1:PORT, the HTTP port
    grpc_target: str  # 127.0.0.1:PORT, the gRPC port (tessera.v1 and ext_authz)
    metrics: str  # the metrics port's /metrics URL
    store_url: str
    http: httpx.Client
    seeds: Seeds = field(default_factory=Seeds)
    said: list[str] = field(default_factory=list)  # what the server wrote to stderr
    connection: psycopg.Connection[Any] | None = None  # the test's own, for snapshots

    def last_said(self, lines: int = 40) -> str:
        """The end of what the server wrote to stderr (a traceback, when it failed)."""
        return "".join(self.said[-lines:])

    def snapshot(self) -> Rows:
        """Every row of every table of the store, in a stable order."""
        if self.connection is None:
            self.connection = psycopg.connect(self.store_url, autocommit=True)
        tables = self.connection.execute(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema = current_schema() ORDER BY table_name"
        ).fetchall()
        # The anomaly watcher, a process of its own, raises alerts on decisions it reads
        # when it gets to them: its trail follows accepted calls, at its own pace.
        where = {"audit": " WHERE trail <> 'alert'"}
        return {
            name: self.connection.execute(
                f"SELECT t::text FROM {name} t{where.get(name, '')} ORDER BY 1"
            ).fetchall()
            for (name,) in tables
            if name != "schema_version"
        }

    def settled(self) -> Rows:
        """The store once what an accepted call queued is written: its audit records, and
        the admin trail's record of each change (which follows the change log within half
        a second); then the same rows twice in a row."""
        last = self.snapshot()
        for _ in range(SETTLE_TRIES):
            time.sleep(SETTLE_PAUSE)
            now = self.snapshot()
            trail = [row for (row,) in now.get("audit", ()) if row.startswith("(admin,")]
            if now == last and len(trail) == len(now.get("changes", ())):
                return now
            last = now
        raise AssertionError("the store kept changing after an accepted call")


def difference(before: Rows, after: Rows) -> list[str]:
    """The rows one snapshot has and the other has not, table by table, for people."""
    said = []
    for table in sorted(set(before) | set(after)):
        old, new = set(before.get(table, ())), set(after.get(table, ()))
        said += [f"{table}: - {row}" for row in old - new]
        said += [f"{table}: + {row}" for row in new - old]
    return said


def _admin(live: Live, method: str, path: str, body: Any) -> Any:
    response = live.http.request(method, path, json=body)
    assert response.status_code in (200, 201), (path, response.status_code, response.text)
    return response.json()


def _seed(live: Live) -> None:
    """An agent (low risk, so it may hold an API key), a user with a password, a group,
    the agent's client with its token, a public client and an API key."""
    seeds = live.seeds
    seeds.agent = _admin(
        live,
        "POST",
        "/scim/v2/Agents",
        {
            "schemas": [AGENT_SCHEMA, AGENT_EXTENSION],
            "name": "fuzz-agent",
            AGENT_EXTENSION: {
                "owner": "fuzz",
                "riskLevel": "low",
                "purpose": "payments",
                "scopes": ["mcp:tools"],
            },
        },
    )["id"]
    seeds.user = _admin(
        live, "POST", "/scim/v2/Users", {"userName": "fuzz-user", "password": "fuzz-password-1"}
    )["id"]
    seeds.group = _admin(
        live,
        "POST",
        "/scim/v2/Groups",
        {"displayName": "fuzzers", "members": [{"value": seeds.user}]},
    )["id"]
    client = _admin(
        live,
        "POST",
        "/oauth/register",
        {
            "grant_types": ["client_credentials"],
            "agent_id": seeds.agent,
            "token_endpoint_auth_method": "client_secret_basic",
            "scope": "mcp:tools tessera:decide",
        },
    )
    seeds.client_id, seeds.client_secret = client["client_id"], client["client_secret"]
    seeds.public_client = _admin(
        live,
        "POST",
        "/oauth/register",
        {
            "token_endpoint_auth_method": "none",
            "grant_types": ["authorization_code"],
            "redirect_uris": ["http://127.0.0.1/callback"],
        },
    )["client_id"]
    token = httpx.post(
        f"{live.base}/oauth/token",
        data={"grant_type": "client_credentials", "scope": "tessera:decide"},
        auth=(seeds.client_id, seeds.client_secret),
        timeout=TIMEOUT,
    )
    assert token.status_code == 200, token.text
    seeds.access_token = token.json()["access_token"]
    key = _admin(live, "POST", "/oauth/api-keys", {"agent_id": seeds.agent, "scope": "mcp:tools"})
    seeds.api_key, seeds.api_key_id = key["api_key"], key["id"]


def _drain(stream: IO[str] | None, into: list[str]) -> None:
    """Read what the server writes, so that a full pipe never blocks it."""
    assert stream is not None

    def read() -> None:
        for line in stream:
            into.append(line)

    threading.Thread(target=read, daemon=True).start()


def _addresses(lines: list[str]) -> tuple[str, str, str]:
    """The HTTP base, the gRPC target and the metrics URL `tessera serve` announced."""
    said = "".join(lines)
    grpc = re.search(r"Authorizer on (127\.0\.0\.1:\d+)", said)
    metrics = re.search(r"metrics on (http://127\.0\.0\.1:\d+/metrics)", said)
    http = re.search(r"SCIM 2\.0 at (http://127\.0\.0\.1:\d+)/scim/v2", said)
    assert grpc and metrics and http, lines
    return http.group(1), grpc.group(1), metrics.group(1)


# Decisions answered once recorded; no checkpoint signed while the fuzzers run.
CONFIG = """
[serve]
audit = "sync"
audit_checkpoint_interval = 3600.0
"""


@contextmanager
def live_server(folder: Path) -> Iterator[Live]:
    """``tessera serve`` on the shipped policies and a fresh PostgreSQL schema, seeded;
    its configuration file is written in ``folder``."""
    config = folder / "tessera.toml"
    config.write_text(CONFIG)
    with (
        postgres_schema() as url,
        tessera_serve(
            *("--config", str(config), "--policies", str(SHIPPED_POLICIES), "--store", url),
            *("--port", "0", "--http-port", "0", "--metrics-port", "0", "--grace", "1"),
            *("--admin-token", ADMIN_TOKEN),
            lines=STARTUP_LINES,
        ) as (process, lines),
    ):
        base, target, metrics = _addresses(lines)
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        with httpx.Client(base_url=base, headers=headers, timeout=TIMEOUT) as http:
            live = Live(base, target, metrics, url, http)
            _drain(process.stdout, [])
            _drain(process.stderr, live.said)
            _seed(live)
            try:
                yield live
            finally:
                if live.connection is not None:
                    live.connection.close()
