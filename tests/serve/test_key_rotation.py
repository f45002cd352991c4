"""``tessera keys rotate`` against the store of running servers: every replica and every
worker signs with the new key and publishes both within 5 s, tokens of the previous key
keep verifying, and a replica started after the rotation accepts what the others issue.

Each test runs real ``tessera serve`` processes on loopback and the real ``tessera keys``
command on their store; nothing is restarted between the rotation and the checks.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
from envoy.service.auth.v3 import external_auth_pb2 as auth
from envoy.service.auth.v3 import external_auth_pb2_grpc as auth_grpc

from issuer.jws import parse
from issuer.models import AGENT_EXTENSION, AGENT_SCHEMA
from pdp.doors.ext_authz import DECISION_HEADER
from tests.conftest import SHIPPED_POLICIES
from tests.serve.test_scale_out import Replica, replica
from tests.serve.test_workers import WORKERS, Served, started
from tests.servers import tessera_serve
from tests.stores import postgres_schema

TOKEN = "test-admin-token-0123456789"  # the admin token replica() and the workers use
ISSUER = "https://tessera.example"  # one issuer behind every replica, as deployed
EXE = Path(sys.executable).parent / "tessera"
WITHIN = 5.0  # seconds a rotation may take to reach every serving process
IN_A_ROW = 24  # tokens on fresh connections that must all carry the new key (workers)
CALLS = 400  # ext_authz calls on fresh connections before giving up on seeing each worker


@dataclass(frozen=True)
class Client:
    """An agent's client_secret_basic client, for client_credentials and introspection."""

    client_id: str
    secret: str

    @property
    def basic(self) -> tuple[str, str]:
        return (self.client_id, self.secret)


@dataclass(frozen=True)
class Issuer:
    """One serving process's (or one port's) OAuth endpoints; every call is made on a
    connection of its own, so with workers the kernel hands it to either of them."""

    base: str

    def agent_client(self) -> Client:
        admin = {"Authorization": f"Bearer {TOKEN}"}
        agent = httpx.post(
            f"{self.base}/scim/v2/Agents",
            headers=admin,
            json={
                "schemas": [AGENT_SCHEMA, AGENT_EXTENSION],
                "name": "rotation-watcher",
                AGENT_EXTENSION: {"owner": "security", "riskLevel": "low"},
            },
            timeout=10,
        )
        assert agent.status_code == 201, agent.text
        metadata = {
            "agent_id": agent.json()["id"],
            "grant_types": ["client_credentials"],
            "token_endpoint_auth_method": "client_secret_basic",
        }
        registered = httpx.post(
            f"{self.base}/oauth/register", headers=admin, json=metadata, timeout=10
        )
        assert registered.status_code == 201, registered.text
        body = registered.json()
        return Client(body["client_id"], body["client_secret"])

    def token(self, client: Client) -> str:
        response = httpx.post(
            f"{self.base}/oauth/token",
            data={"grant_type": "client_credentials"},
            auth=client.basic,
            timeout=10,
        )
        assert response.status_code == 200, response.text
        token: str = response.json()["access_token"]
        return token

    def published(self) -> set[str]:
        """The key ids of the JWK Set this process publishes now."""
        response = httpx.get(f"{self.base}/oauth/jwks", timeout=10)
        assert response.status_code == 200, response.text
        return {key["kid"] for key in response.json()["keys"]}

    def active(self, client: Client, token: str) -> bool:
        """Whether this process's introspection (RFC 7662) takes the token."""
        response = httpx.post(
            f"{self.base}/oauth/introspect", data={"token": token}, auth=client.basic, timeout=10
        )
        assert response.status_code == 200, response.text
        return bool(response.json()["active"])


def of(served: Replica | Served) -> Issuer:
    return Issuer(served.scim.removesuffix("/scim/v2"))


def kid(token: str) -> str:
    return str(parse(token)[0]["kid"])


def rotate(store: str, place: Path) -> str:
    """``tessera keys rotate`` on ``store`` (run where no tessera.toml is); the new kid."""
    result = subprocess.run(
        [str(EXE), "keys", "rotate", "--store", store],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=place,
    )
    assert result.returncode == 0, result.stderr
    made = re.search(r"^new signing key (\S+) \(ES256\)$", result.stdout, re.MULTILINE)
    assert made, result.stdout
    return made.group(1)


def within(seconds: float, condition: Callable[[], bool], what: str) -> None:
    """Polls ``condition`` until it holds, for at most ``seconds``."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"not within {seconds} s: {what}"
        time.sleep(0.05)


def test_a_rotation_reaches_every_replica_and_the_previous_keys_tokens_keep_verifying(
    tmp_path: Path,
) -> None:
    with (
        postgres_schema() as store,
        replica(store, "--issuer", ISSUER) as one,
        replica(store, "--issuer", ISSUER) as two,
    ):
        first, second = of(one), of(two)
        client = first.agent_client()
        old = [first.token(client), second.token(client)]
        [old_kid] = {kid(token) for token in old}

        new_kid = rotate(store, tmp_path)

        def rotated(issuer: Issuer) -> bool:
            return kid(issuer.token(client)) == new_kid and issuer.published() == {
                old_kid,
                new_kid,
            }

        within(WITHIN, lambda: rotated(first) and rotated(second), "both replicas rotated")
        fresh = [first.token(client), second.token(client)]
        assert {kid(token) for token in fresh} == {new_kid}
        for issuer in (first, second):
            for token in old + fresh:
                assert issuer.active(client, token)


def test_a_replica_started_after_a_rotation_accepts_what_earlier_replicas_issue(
    tmp_path: Path,
) -> None:
    with postgres_schema() as store, replica(store, "--issuer", ISSUER) as one:
        before = of(one)
        client = before.agent_client()
        old = before.token(client)
        new_kid = rotate(store, tmp_path)
        # at once, before the earlier replica may have read the store again
        with replica(store, "--issuer", ISSUER) as three:
            after = of(three)
            late = after.token(client)
            assert kid(late) == new_kid
            assert after.published() == {kid(old), new_kid}
            assert after.active(client, old)
            assert before.active(client, late)  # an unknown kid reads the store at once
            within(WITHIN, lambda: kid(before.token(client)) == new_kid, "the earlier signs")
            assert after.active(client, before.token(client))


@contextmanager
def workers(store: str) -> Iterator[Served]:
    """``tessera serve --workers 2`` on ``store``, as tests/serve/test_workers.py runs it."""
    with tessera_serve(
        *("--workers", str(WORKERS), "--policies", str(SHIPPED_POLICIES)),
        *("--store", store, "--admin-token", TOKEN),
        *("--port", "0", "--http-port", "0", "--metrics-port", "0", "--grace", "1"),
        lines=8 + WORKERS + 1,
    ) as (process, lines):
        yield started(process, lines, SHIPPED_POLICIES)


def decided_by(port: int, token: str) -> str:
    """Which worker decided an ext_authz Check with ``token`` (the 16 hex digits of its
    decision ids), on a connection of its own; a refused token has no decision."""
    request = auth.CheckRequest()
    http = request.attributes.request.http
    http.method, http.path, http.host = "GET", "/rotation", "api.example.com"
    http.headers.update(
        {":method": "GET", ":path": "/rotation", "authorization": f"Bearer {token}"}
    )
    options = [("grpc.use_local_subchannel_pool", 1)]
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
        answer = auth_grpc.AuthorizationStub(channel).Check(request, timeout=10)
    headers = list(answer.ok_response.headers) + list(answer.denied_response.headers)
    decision = [h.header.value for h in headers if h.header.key == DECISION_HEADER]
    assert decision, f"the token was refused: {answer.denied_response.body}"
    return decision[0][:16]


def test_a_rotation_reaches_every_worker(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path}/tessera.db"
    with workers(store) as served:
        issuer = of(served)
        client = issuer.agent_client()
        old = issuer.token(client)
        new_kid = rotate(store, tmp_path)
        both = {kid(old), new_kid}
        signed: list[str] = []

        def every_one_new() -> bool:
            token = issuer.token(client)
            signed[:] = [*signed, token] if kid(token) == new_kid else []
            return len(signed) >= IN_A_ROW and issuer.published() == both

        within(WITHIN, every_one_new, f"{IN_A_ROW} tokens in a row with the new key")
        for token in (old, signed[-1]):
            seen = {decided_by(served.grpc_port, token) for _ in range(WORKERS)}
            for _ in range(CALLS):
                if len(seen) == WORKERS:
                    break
                seen.add(decided_by(served.grpc_port, token))
            assert len(seen) == WORKERS
