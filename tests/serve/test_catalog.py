"""The resource catalog served: ``tessera serve`` deciding from a bundle's resources file,
AuthZEN resource search listing the catalog, entries written over ``/resources/v1``
reaching another replica's decisions, and a mistyped bundle refused while the previous
one keeps serving."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from starlette.applications import Starlette

from issuer.keys import KeyRing
from issuer.models import AGENT_EXTENSION, AGENT_SCHEMA
from issuer.oauth.endpoints import AuthorizationServer
from issuer.oauth.tokens import TokenMinter
from issuer.scim import BootstrapToken
from issuer.store import open_store
from pdp.decide import DecisionPoint
from pdp.directory import Directory
from pdp.engine import Engine
from pdp.loader import load_directory
from pdp.model import Request
from pdp.serve.proto import authorizer_pb2 as pb
from pdp.serve.proto import authorizer_pb2_grpc as pb_grpc
from pdp.serve.reload import Reloader
from pdp.server import http_app
from tests.servers import HttpServer, tessera_on
from tests.stores import BACKENDS, store_url
from tests.test_catalog import RULES, SCHEMA
from tests.test_directory import add_agent

TOKEN = "catalog-admin-token-0123456789"
OWNERS = ("alice", "bob", "carol", "dan")
DEPARTMENTS = ("Legal", "Sales", "Research")
TITLES = ("Hamlet", "Lear", "Othello", "Macbeth", "Tempest")
RECORDS = [
    {
        "type": "record",
        "id": str(101 + n),
        "properties": {
            "title": TITLES[n % len(TITLES)],
            "department": DEPARTMENTS[n % len(DEPARTMENTS)],
            "owner": OWNERS[n % len(OWNERS)],
        },
    }
    for n in range(20)
]
ALICES = [r["id"] for r in RECORDS if r["properties"]["owner"] == "alice"]


def write_bundle(directory: Path, records: Any = RECORDS) -> Path:
    """A policy directory: the records' schema and rules, and their resources file."""
    directory.mkdir(exist_ok=True)
    (directory / "schema.pol").write_text(SCHEMA)
    (directory / "records.pol").write_text(RULES)
    text = records if isinstance(records, str) else json.dumps(records, indent=2)
    (directory / "records.resources.json").write_text(text)
    return directory


def until(check: Any, tries: int = 500) -> Any:
    """``check()`` once it is truthy, asking every 10 ms, at most ``tries`` times."""
    for _ in range(tries):
        value = check()
        if value:
            return value
        time.sleep(0.01)
    return check()


# ---------------------------------------------------------------- tessera serve, live


class Live:
    def __init__(self, grpc_port: int, base: str) -> None:
        self.channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
        self.stub = pb_grpc.AuthorizerStub(self.channel)
        headers = {"Authorization": f"Bearer {TOKEN}"}
        self.http = httpx.Client(base_url=base, headers=headers, timeout=10)

    def agent(self, name: str, owner: str) -> str:
        body = {
            "schemas": [AGENT_SCHEMA, AGENT_EXTENSION],
            "name": name,
            AGENT_EXTENSION: {"owner": owner, "riskLevel": "low"},
        }
        created = self.http.post("/scim/v2/Agents", json=body)
        assert created.status_code == 201, created.text
        agent = str(created.json()["id"])
        until(lambda: self.authorize(agent, "view", ALICES[0]).decided_by != ["directory"])
        return agent

    def authorize(self, agent: str, action: str, record: str, **attributes: str) -> Any:
        values = {name: pb.Value(string=value) for name, value in attributes.items()}
        resource = pb.Resource(type="record", id=record, attributes=values)
        call = pb.AuthorizeRequest(agent=pb.Agent(id=agent), action=action, resource=resource)
        return self.stub.Authorize(call, timeout=5)

    def search(self, agent: str, action: str) -> list[str]:
        body = {
            "subject": {"type": "agent", "id": agent},
            "action": {"name": action},
            "resource": {"type": "record"},
        }
        answer = self.http.post("/access/v1/search/resource", json=body)
        assert answer.status_code == 200, answer.text
        return [result["id"] for result in answer.json()["results"]]


@pytest.fixture(scope="module", params=BACKENDS)
def live(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Live]:
    """``tessera serve`` on the records' bundle, once per backend for the module."""
    tmp_path = tmp_path_factory.mktemp("live")
    policies = write_bundle(tmp_path / "policies")
    with (
        store_url(request.param, tmp_path) as url,
        tessera_on(policies, url, TOKEN) as serving,
    ):
        served = Live(serving.grpc_port, serving.http)
        yield served
        served.http.close()
        served.channel.close()


def test_a_rule_reading_the_owner_decides_from_the_bundles_catalog(live: Live) -> None:
    agent = live.agent("viewer", owner="alice")
    mine, theirs = ALICES[0], "102"  # 102 is bob's
    allowed = live.authorize(agent, "view", mine)
    assert allowed.allow, allowed.reasons
    assert list(allowed.decided_by) == ["records.owner_views"]
    assert not live.authorize(agent, "view", theirs).allow
    # what the request sends wins over the catalog
    assert live.authorize(agent, "view", theirs, owner="alice").allow


def test_resource_search_lists_the_catalogs_records_the_agent_may_view(live: Live) -> None:
    agent = live.agent("searcher", owner="alice")
    assert live.search(agent, "view") == sorted(ALICES)
    entry = {"properties": {"owner": "alice", "title": "Cymbeline"}}
    assert live.http.put("/resources/v1/record/900", json=entry).status_code == 200
    assert until(lambda: live.search(agent, "view") == sorted([*ALICES, "900"]))
    assert live.http.delete("/resources/v1/record/900").status_code == 204
    assert until(lambda: live.search(agent, "view") == sorted(ALICES))


# ---------------------------------------------------------------- two replicas, one store


class Replicas:
    """Replica A serves the HTTP port (the catalog API) on its own store connection;
    replica B decides, its directory following the same store on another."""

    def __init__(self, url: str, policies: Path) -> None:
        self.store_a, self.store_b = open_store(url), open_store(url)
        bundle = load_directory(policies).bundle
        self.agent = add_agent(self.store_a, "clerk", owner="alice")
        self.directory = Directory(self.store_b)
        self.directory.start()
        self.point = DecisionPoint(Engine(bundle), directory=self.directory)
        a_point = DecisionPoint(Engine(bundle))

        def build(port: int) -> Starlette:
            base = f"http://127.0.0.1:{port}"
            keys = KeyRing(self.store_a, "ES256")
            self.minter = TokenMinter(keys, base)
            oauth = AuthorizationServer(self.store_a, keys, base, BootstrapToken(TOKEN))
            return http_app(a_point, self.store_a, oauth, (base, base))

        self.server = HttpServer(build)
        base = f"http://127.0.0.1:{self.server.port}"
        headers = {"Authorization": f"Bearer {TOKEN}"}
        self.http = httpx.Client(base_url=base, headers=headers, timeout=10)

    def close(self) -> None:
        self.http.close()
        self.server.close()
        self.directory.stop()
        self.store_a.close()
        self.store_b.close()

    def views(self, record: str) -> bool:
        """Whether replica B lets the agent view the record (a remembered answer counts)."""
        request = Request.build(
            agent={"id": self.agent}, action="view", resource_type="record", resource_id=record
        )
        answer = asyncio.run(self.point.decide(request, key=("view", record)))
        return answer.decision.allow


@pytest.fixture
def replicas(url: str, tmp_path: Path) -> Iterator[Replicas]:
    running = Replicas(url, write_bundle(tmp_path / "policies"))
    yield running
    running.close()


def within_a_second(check: Any) -> bool:
    """Whether ``check()`` holds within 1 s (100 looks, 10 ms apart)."""
    return bool(until(check, tries=100))


def test_an_entry_written_over_the_api_decides_on_another_replica_within_a_second(
    replicas: Replicas,
) -> None:
    assert not replicas.views("777")  # not in the catalog: no owner to read
    added = replicas.http.put("/resources/v1/record/777", json={"properties": {"owner": "alice"}})
    assert added.status_code == 200, added.text
    assert within_a_second(lambda: replicas.views("777"))

    changed = replicas.http.put("/resources/v1/record/777", json={"properties": {"owner": "bob"}})
    assert changed.status_code == 200
    assert within_a_second(lambda: not replicas.views("777"))

    assert replicas.views(ALICES[0])  # the bundle's entry
    taken = {"put": [{"type": "record", "id": ALICES[0], "properties": {"owner": "bob"}}]}
    assert replicas.http.post("/resources/v1", json=taken).json()["changed"] == 1
    assert within_a_second(lambda: not replicas.views(ALICES[0]))  # the store's wins

    gone = {"delete": [{"type": "record", "id": "777"}, {"type": "record", "id": ALICES[0]}]}
    assert replicas.http.post("/resources/v1", json=gone).json()["changed"] == 2
    assert within_a_second(lambda: replicas.views(ALICES[0]))  # the bundle's is back
    assert not replicas.views("777")


# ---------------------------------------------------------------- the API's refusals


def test_the_api_reads_writes_lists_and_deletes_entries(replicas: Replicas) -> None:
    http = replicas.http
    for n in range(5):
        entry = {"properties": {"owner": OWNERS[n % 4], "department": "Legal"}}
        assert http.put(f"/resources/v1/record/r{n}", json=entry).status_code == 200
    assert http.put("/resources/v1/record/a%2Fb", json={}).status_code == 200  # an id with /
    one = http.get("/resources/v1/record/r1")
    assert one.json() == {
        "type": "record",
        "id": "r1",
        "properties": {"owner": "bob", "department": "Legal"},
    }
    assert http.get("/resources/v1/record/a/b").json()["id"] == "a/b"
    first = http.get("/resources/v1/record", params={"limit": 4}).json()
    assert [e["id"] for e in first["resources"]] == ["a/b", "r0", "r1", "r2"]
    rest = http.get("/resources/v1/record", params={"limit": 4, "after": first["next"]}).json()
    assert [e["id"] for e in rest["resources"]] == ["r3", "r4"]
    assert rest["next"] is None
    assert http.delete("/resources/v1/record/r1").status_code == 204
    for answer in (http.get("/resources/v1/record/r1"), http.delete("/resources/v1/record/r1")):
        assert answer.status_code == 404
        assert answer.json() == {
            "error": "not_found",
            "message": "the catalog holds no record 'r1'",
        }


def test_the_api_needs_an_administrators_token(replicas: Replicas) -> None:
    url = f"{replicas.http.base_url}/resources/v1/record"
    anonymous = httpx.get(url)
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"] == "Bearer"
    forged = httpx.get(url, headers={"Authorization": "Bearer nope"})
    assert forged.status_code == 401
    assert forged.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    issued = replicas.minter.mint(
        subject=replicas.agent,
        client_id="pep",
        audience=[str(replicas.http.base_url)],
        scope=["tessera:decide"],
        extra={"agent_id": replicas.agent, "agent_type": "background"},
    )
    decider = httpx.put(
        f"{url}/x", json={}, headers={"Authorization": f"Bearer {issued.token}"}, timeout=10
    )
    assert decider.status_code == 403
    assert decider.json()["error"] == "insufficient_scope"
    assert replicas.store_a.page("CatalogEntry", "", "", 10) == []


BIG = "x" * (16 << 10)


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "message"),
    [
        ("PUT", "record/1", {"properties": {"title": BIG}}, 413, "properties.title: 16,386 bytes"),
        ("PUT", "record/1", {"properties": {f"p{n}": 1 for n in range(65)}}, 413, "65 properties"),
        ("PUT", "record/" + "i" * 1025, {}, 413, "the path's id: 1,025 bytes"),
        ("PUT", "re-cord/1", {}, 400, "the path's type: a resource type as policies name it"),
        ("PUT", "record/1", {"properties": {"owner": None}}, 400, "null is not a value"),
        ("PUT", "record/1", {"properties": {"owner": 7}}, 400, "resource.owner: expected a string"),
        (
            "PUT",
            "record/1",
            {"properties": {"colour": "red"}},
            400,
            "declares no colour for record",
        ),
        ("PUT", "record/1", {"owner": "alice"}, 400, "owner: unknown"),
        ("PUT", "record/1", [], 400, "the body must be a JSON object"),
        (
            "POST",
            "",
            {"put": [{"type": "record", "id": str(n)} for n in range(1001)]},
            413,
            "1,001",
        ),
        ("POST", "", {"put": [{"type": "record", "id": "1"}, {"id": "2"}]}, 400, "put[1].type"),
        ("POST", "", {"delete": [{"type": "record"}]}, 400, "delete[0].id: required"),
        ("POST", "", {"put": [{"type": "record", "id": "1"}] * 2}, 400, "the same entry twice"),
        ("POST", "", {"upsert": []}, 400, "upsert: unknown"),
        ("GET", "record?limit=0", None, 400, "limit: an integer from 1 to 1000"),
    ],
)
def test_a_request_over_a_bound_or_malformed_is_refused_and_changes_nothing(
    replicas: Replicas, method: str, path: str, body: Any, status: int, message: str
) -> None:
    before = replicas.store_a.last_change()
    content = None if body is None else json.dumps(body)
    headers = {"Content-Type": "application/json"}
    path = f"/resources/v1/{path}" if path else "/resources/v1"
    answer = replicas.http.request(method, path, content=content, headers=headers)
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/json"
    assert message in answer.json()["message"], answer.json()
    assert replicas.store_a.last_change() == before


def test_a_body_that_is_not_json_or_too_large_is_refused(replicas: Replicas) -> None:
    http = replicas.http
    not_json = http.put(
        "/resources/v1/record/1", content=b"{", headers={"Content-Type": "application/json"}
    )
    assert not_json.status_code == 400
    assert not_json.json()["error"] == "invalid_request"
    text = http.put("/resources/v1/record/1", content=b"{}", headers={"Content-Type": "text/plain"})
    assert text.json()["message"] == "Content-Type must be application/json"
    huge = http.post("/resources/v1", json={"put": [], "pad": "x" * (1 << 20)})
    assert huge.status_code == 413
    assert huge.json()["error"] == "too_large"
    wrong = http.patch("/resources/v1/record/1", json={})
    assert wrong.status_code == 405
    allowed = {method.strip() for method in wrong.headers["allow"].split(",")}
    assert allowed == {"GET", "HEAD", "PUT", "DELETE"}
    assert wrong.json()["message"].startswith("this endpoint takes ")


# ---------------------------------------------------------------- reloading the bundle


def test_a_mistyped_bundle_is_refused_and_the_previous_one_keeps_serving(tmp_path: Path) -> None:
    policies = write_bundle(tmp_path / "policies")
    point = DecisionPoint(Engine(load_directory(policies).bundle))
    reloader = Reloader(policies, point.use, interval=60)

    def views(record: str) -> bool:
        request = Request.build(
            agent={"id": "bot", "owner": "alice"},
            action="view",
            resource_type="record",
            resource_id=record,
        )
        return point.preview(request).allow

    async def scenario() -> None:
        good = point.version
        assert views(ALICES[0])
        mistyped = [*RECORDS[1:], {"type": "record", "id": "999", "properties": {"owner": 1}}]
        write_bundle(policies, mistyped)
        assert await reloader.check() is False
        assert point.version == good
        assert views(ALICES[0])  # the previous catalog still decides
        assert "records.resources.json:" in reloader.stats.last_error
        assert (
            "entry 20: record '999': resource.owner: expected a string" in reloader.stats.last_error
        )

        write_bundle(policies, RECORDS[1:])  # the first record taken out of the file
        assert await reloader.check() is True
        assert point.version != good
        assert not views(ALICES[0])  # gone with the new version

    asyncio.run(scenario())
