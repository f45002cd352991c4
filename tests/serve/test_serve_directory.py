"""``tessera serve`` with a store, end to end: SCIM provisioning reaches the PDP."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest

from issuer.models import AGENT_EXTENSION, AGENT_SCHEMA
from pdp.serve.proto import authorizer_pb2 as pb
from pdp.serve.proto import authorizer_pb2_grpc as pb_grpc
from tests.conftest import SHIPPED_POLICIES
from tests.servers import tessera_on
from tests.stores import BACKENDS, store_url

TOKEN = "test-admin-token-0123456789"
PATCH = "urn:ietf:params:scim:api:messages:2.0:PatchOp"


class Served:
    def __init__(self, process: subprocess.Popen[str], grpc_port: int, scim: str) -> None:
        self.process = process
        self.channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
        self.stub = pb_grpc.AuthorizerStub(self.channel)
        self.http = httpx.Client(
            base_url=scim, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10
        )


@pytest.fixture(params=BACKENDS)
def served(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Served]:
    with (
        store_url(request.param, tmp_path) as url,
        tessera_on(SHIPPED_POLICIES, url, TOKEN) as serving,
    ):
        served = Served(serving.process, serving.grpc_port, f"{serving.http}/scim/v2")
        yield served
        served.http.close()
        served.channel.close()


def read_call(agent_id: str) -> pb.AuthorizeRequest:
    return pb.AuthorizeRequest(
        agent=pb.Agent(id=agent_id),
        action="tool.call",
        resource=pb.Resource(type="tool", id="search"),
    )


def answer_until(
    stub: pb_grpc.AuthorizerStub, agent_id: str, reasons: list[str]
) -> pb.AuthorizeResponse:
    """Ask until the answer gives these reasons; bounded at 5 s (the feed takes well under
    1 s), then the last answer."""
    deadline = time.monotonic() + 5
    while True:
        response = stub.Authorize(read_call(agent_id), timeout=5)
        if list(response.reasons) == reasons or time.monotonic() > deadline:
            return response
        time.sleep(0.01)


def test_an_agent_provisioned_over_scim_is_decided_then_suspension_stops_it(
    served: Served,
) -> None:
    created = served.http.post(
        "/Agents",
        json={
            "schemas": [AGENT_SCHEMA, AGENT_EXTENSION],
            "name": "reporter",
            AGENT_EXTENSION: {"owner": "finance", "riskLevel": "low"},
        },
    )
    assert created.status_code == 201, created.text
    id = created.json()["id"]
    allowed = answer_until(served.stub, id, ["permit agents.read_only applies"])
    assert allowed.allow

    suspend = {
        "schemas": [PATCH],
        "Operations": [
            {"op": "replace", "path": f"{AGENT_EXTENSION}:status", "value": "suspended"}
        ],
    }
    assert served.http.patch(f"/Agents/{id}", json=suspend).status_code == 200
    denied = answer_until(served.stub, id, [f"agent {id!r} is suspended"])
    assert not denied.allow
    assert list(denied.reasons) == [f"agent {id!r} is suspended"]

    assert served.http.delete(f"/Agents/{id}").status_code == 204
    gone = answer_until(served.stub, id, [f"agent {id!r} is not in the directory"])
    assert not gone.allow
    assert list(gone.reasons) == [f"agent {id!r} is not in the directory"]


def test_health_over_http_names_the_bundle_without_a_token(served: Served) -> None:
    base = str(served.http.base_url).removesuffix("/scim/v2/")
    response = httpx.get(f"{base}/healthz", timeout=10)
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "SERVING"
    assert body["bundle_version"] == served.stub.ListAllowed(pb.ListAllowedRequest()).bundle_version
    assert response.headers["cache-control"] == "no-store"


def test_scim_refuses_a_caller_without_the_admin_token(served: Served) -> None:
    response = httpx.get(f"{served.http.base_url}Agents", timeout=10)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer realm="tessera"'


def test_a_taken_http_port_is_a_clear_error_and_nothing_keeps_running(tmp_path: Path) -> None:
    import socket

    exe = Path(sys.executable).parent / "tessera"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [
                *(str(exe), "serve", "--policies", str(SHIPPED_POLICIES)),
                *("--store", f"sqlite:///{tmp_path}/t.db", "--admin-token", TOKEN),
                *("--port", "0", "--http-port", str(port), "--metrics-port", "-1"),
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode == 2
    assert f"tessera serve: cannot serve HTTP on 127.0.0.1:{port}" in result.stderr


def test_an_agent_with_the_admin_scope_administers_scim_with_an_issued_token(
    served: Served,
) -> None:
    issuer = str(served.http.base_url).removesuffix("/scim/v2/").removesuffix("/scim/v2")
    created = served.http.post(
        "/Agents",
        json={
            "schemas": [AGENT_SCHEMA, AGENT_EXTENSION],
            "name": "provisioner",
            AGENT_EXTENSION: {"owner": "it", "riskLevel": "medium"},
        },
    )
    agent = created.json()["id"]
    admin = {"Authorization": f"Bearer {TOKEN}"}
    clients = {}
    for scope in ("tessera:admin", "read"):
        registered = httpx.post(
            f"{issuer}/oauth/register",
            json={"agent_id": agent, "grant_types": ["client_credentials"], "scope": scope},
            headers=admin,
            timeout=10,
        )
        assert registered.status_code == 201, registered.text
        clients[scope] = (registered.json()["client_id"], registered.json()["client_secret"])

    def token_for(scope: str, resource: str) -> str:
        response = httpx.post(
            f"{issuer}/oauth/token",
            data={"grant_type": "client_credentials", "resource": resource},
            auth=clients[scope],
            timeout=10,
        )
        assert response.status_code == 200, response.text
        access: str = response.json()["access_token"]
        return access

    scim = f"{issuer}/scim/v2/Agents"
    good = token_for("tessera:admin", f"{issuer}/scim/v2")
    assert httpx.get(scim, headers={"Authorization": f"Bearer {good}"}, timeout=10).is_success
    narrow = token_for("read", f"{issuer}/scim/v2")
    refused = httpx.get(scim, headers={"Authorization": f"Bearer {narrow}"}, timeout=10)
    assert refused.status_code == 403
    elsewhere = token_for("tessera:admin", "https://api.example.com/")
    assert (
        httpx.get(scim, headers={"Authorization": f"Bearer {elsewhere}"}, timeout=10).status_code
        == 401
    )

    suspend = {
        "schemas": [PATCH],
        "Operations": [
            {"op": "replace", "path": f"{AGENT_EXTENSION}:status", "value": "suspended"}
        ],
    }
    assert served.http.patch(f"/Agents/{agent}", json=suspend).status_code == 200
    after = httpx.get(scim, headers={"Authorization": f"Bearer {good}"}, timeout=10)
    assert after.status_code == 401
