"""Policies read what SCIM provisioned: users' e-mail, names, enterprise attributes and
roles, agents' roles and groups, decided by ``tessera serve`` over its own SCIM service."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from issuer.models import AGENT_EXTENSION, AGENT_SCHEMA
from pdp.serve.proto import authorizer_pb2 as pb
from pdp.serve.proto import authorizer_pb2_grpc as pb_grpc
from tests.servers import tessera_on
from tests.stores import BACKENDS, store_url

TOKEN = "test-admin-token-0123456789"
USER = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP = "urn:ietf:params:scim:schemas:core:2.0:Group"
ENTERPRISE_EXTENSION = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
PATCH = "urn:ietf:params:scim:api:messages:2.0:PatchOp"

SCHEMA = """
schema {
  agent { status: string }
  user { department: string }
}
"""

POLICY = """
forbid inactive_agents
  when agent.status != "active"

forbid quarantined_agents
  when agent.groups contains "quarantine"

permit finance_reads_ledgers
  action "db.read" on table "ledger"
  when user.department == "Finance"
    and user.email endswith "@example.com"
    and user.userName startswith "fin-"
    and user.roles intersects ["accountant", "controller"]
    and agent.roles contains "ledger-reader"
"""


class Served:
    def __init__(self, grpc_port: int, scim: str) -> None:
        self.channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
        self.stub = pb_grpc.AuthorizerStub(self.channel)
        self.http = httpx.Client(
            base_url=scim, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10
        )

    def create(self, endpoint: str, payload: dict[str, Any]) -> str:
        response = self.http.post(f"/{endpoint}", json=payload)
        assert response.status_code == 201, response.text
        id: str = response.json()["id"]
        return id


@pytest.fixture(params=BACKENDS)
def served(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Served]:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "schema.pol").write_text(SCHEMA)
    (policies / "ledgers.pol").write_text(POLICY)
    with (
        store_url(request.param, tmp_path) as url,
        tessera_on(policies, url, TOKEN) as serving,
    ):
        served = Served(serving.grpc_port, f"{serving.http}/scim/v2")
        yield served
        served.http.close()
        served.channel.close()


def agent(name: str, *roles: str) -> dict[str, Any]:
    return {
        "schemas": [AGENT_SCHEMA, AGENT_EXTENSION],
        "name": name,
        "roles": [{"value": role} for role in roles],
        AGENT_EXTENSION: {"owner": "finance", "riskLevel": "low"},
    }


def person(user_name: str, email: str, department: str | None, *roles: str) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "schemas": [USER],
        "userName": user_name,
        "emails": [{"value": "home@home.example"}, {"value": email, "primary": True}],
        "roles": [{"value": role} for role in roles],
    }
    if department is not None:
        doc["schemas"] = [USER, ENTERPRISE_EXTENSION]
        doc[ENTERPRISE_EXTENSION] = {"department": department, "costCenter": "4130"}
    return doc


def read_ledger(agent_id: str, user_id: str) -> pb.AuthorizeRequest:
    return pb.AuthorizeRequest(
        agent=pb.Agent(id=agent_id),
        user=pb.User(id=user_id),
        action="db.read",
        resource=pb.Resource(type="table", id="ledger"),
    )


def decided(served: Served, agent_id: str, user_id: str, by: list[str]) -> pb.AuthorizeResponse:
    """Ask until the answer is decided by ``by`` (the change feed takes well under 1 s),
    bounded at 5 s; then the last answer."""
    deadline = time.monotonic() + 5
    while True:
        response = served.stub.Authorize(read_ledger(agent_id, user_id), timeout=5)
        if list(response.decided_by) == by or time.monotonic() > deadline:
            return response
        time.sleep(0.01)


def test_policies_decide_on_the_attributes_scim_provisioned(served: Served) -> None:
    reader = served.create("Agents", agent("ledger-bot", "ledger-reader"))
    plain = served.create("Agents", agent("plain-bot", "summarizer"))
    finance = served.create(
        "Users", person("fin-bjensen", "bj@example.com", "Finance", "auditor", "controller")
    )

    allowed = decided(served, reader, finance, ["finance_reads_ledgers"])
    assert allowed.allow, allowed.reasons
    # The same user through an agent without the role: no permit applies.
    assert not decided(served, plain, finance, []).allow

    cases = {
        "another department": person("fin-sales", "s@example.com", "Sales", "controller"),
        "another domain": person("fin-ext", "ext@example.org", "Finance", "controller"),
        "another userName": person("sales-amy", "amy@example.com", "Finance", "controller"),
        "none of the roles": person("fin-eng", "eng@example.com", "Finance", "engineer"),
        "no enterprise extension": person("fin-new", "new@example.com", None, "controller"),
    }
    for case, doc in cases.items():
        user = served.create("Users", doc)
        denied = decided(served, reader, user, [])
        assert not denied.allow, case


def test_a_change_over_scim_changes_the_decision(served: Served) -> None:
    reader = served.create("Agents", agent("ledger-bot", "ledger-reader"))
    user = served.create("Users", person("fin-amy", "amy@example.com", "Sales", "accountant"))
    assert not decided(served, reader, user, []).allow

    move = {
        "schemas": [PATCH],
        "Operations": [
            {"op": "replace", "path": f"{ENTERPRISE_EXTENSION}:department", "value": "Finance"}
        ],
    }
    assert served.http.patch(f"/Users/{user}", json=move).status_code == 200
    assert decided(served, reader, user, ["finance_reads_ledgers"]).allow

    # A group listing the agent reaches agent.groups: the forbid stops it.
    group = {"schemas": [GROUP], "displayName": "quarantine", "members": [{"value": reader}]}
    quarantine = served.create("Groups", group)
    denied = decided(served, reader, user, ["quarantined_agents"])
    assert not denied.allow
    assert served.http.delete(f"/Groups/{quarantine}").status_code == 204
    assert decided(served, reader, user, ["finance_reads_ledgers"]).allow
