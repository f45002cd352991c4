"""The SCIM 2.0 service (RFC 7643, RFC 7644), over HTTP, on SQLite and PostgreSQL alike.

Every test talks to a real server (see conftest.py). Every refused request is checked
three ways: the HTTP status, the RFC 7644 §3.12 error body, and that the directory is
exactly as it was (no resource changed, no entry added to the change log).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from issuer import wire
from issuer.hashing import verify_password
from issuer.models import AGENT_EXTENSION, AGENT_SCHEMA, MAX_RESULTS
from tests.issuer.conftest import Service, unique
from tests.servers import send_raw

EXT = AGENT_EXTENSION
ERROR = "urn:ietf:params:scim:api:messages:2.0:Error"
LIST = "urn:ietf:params:scim:api:messages:2.0:ListResponse"
SEARCH = "urn:ietf:params:scim:api:messages:2.0:SearchRequest"
PATCH = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
USER = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP = "urn:ietf:params:scim:schemas:core:2.0:Group"
ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
MEDIA_TYPE = "application/scim+json"
ACTOR = "bootstrap-admin"  # the subject of issuer.scim.BootstrapToken's principal
KINDS = ("Agent", "User", "Group")


# ---------------------------------------------------------------- helpers


def agent_payload(name: str, **extension: Any) -> dict[str, Any]:
    """A valid new agent: the required owner and riskLevel, plus ``extension``."""
    return {
        "schemas": [AGENT_SCHEMA, EXT],
        "name": name,
        EXT: {"owner": "alice@example.com", "riskLevel": "high", **extension},
    }


def create(service: Service, endpoint: str, payload: dict[str, Any]) -> dict[str, Any]:
    response = service.client.post(f"/{endpoint}", json=payload)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def new_agent(service: Service, prefix: str = "bot", **extension: Any) -> dict[str, Any]:
    return create(service, "Agents", agent_payload(unique(prefix), **extension))


def new_user(service: Service, **attributes: Any) -> dict[str, Any]:
    return create(service, "Users", {"schemas": [USER], "userName": unique("user"), **attributes})


def new_group(service: Service, *member_ids: str) -> dict[str, Any]:
    payload: dict[str, Any] = {"schemas": [GROUP], "displayName": unique("group")}
    if member_ids:
        payload["members"] = [{"value": id} for id in member_ids]
    return create(service, "Groups", payload)


def patch_op(*operations: dict[str, Any]) -> dict[str, Any]:
    return {"schemas": [PATCH], "Operations": list(operations)}


def assert_error(response: httpx.Response, status: int, scim_type: str | None = None) -> None:
    """An RFC 7644 §3.12 error: the status, also as a string in the body, and the scimType."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == MEDIA_TYPE
    body = response.json()
    assert body["schemas"] == [ERROR]
    assert body["status"] == str(status)
    assert body.get("scimType") == scim_type, body
    assert body.get("detail")


@dataclass(frozen=True)
class Snapshot:
    last_change: int
    records: dict[str, dict[str, tuple[int, dict[str, Any]]]]


def snapshot(service: Service) -> Snapshot:
    store = service.store
    return Snapshot(
        store.last_change(),
        {
            kind: {record.id: (record.version, record.data) for record in store.list(kind)}
            for kind in KINDS
        },
    )


@contextmanager
def untouched(service: Service) -> Iterator[None]:
    """The block changes nothing in the store: same records, no new change log entry."""
    before = snapshot(service)
    yield
    assert snapshot(service) == before


def listed(response: httpx.Response) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["schemas"] == [LIST]
    resources: list[dict[str, Any]] = body.get("Resources", [])
    return resources


# ---------------------------------------------------------------- authentication


PROTECTED = [
    ("GET", "/Agents"),
    ("GET", "/Users/some-id"),
    ("GET", "/ServiceProviderConfig"),
    ("GET", "/ResourceTypes"),
    ("GET", "/Schemas"),
    ("POST", "/.search"),
]


@pytest.mark.parametrize(("method", "path"), PROTECTED)
def test_a_request_without_a_token_is_401_with_a_bearer_challenge(
    service: Service, method: str, path: str
) -> None:
    response = httpx.request(method, f"{service.base}{path}", json={})
    assert_error(response, 401)
    assert response.headers["www-authenticate"] == 'Bearer realm="tessera"'


@pytest.mark.parametrize(("method", "path"), PROTECTED)
def test_a_request_with_a_wrong_token_is_401_invalid_token(
    service: Service, method: str, path: str
) -> None:
    headers = {"Authorization": "Bearer not-the-admin-token-at-all"}
    response = httpx.request(method, f"{service.base}{path}", json={}, headers=headers)
    assert_error(response, 401)
    assert response.headers["www-authenticate"] == 'Bearer realm="tessera", error="invalid_token"'


def test_a_token_in_another_scheme_is_401(service: Service) -> None:
    headers = {"Authorization": f"Basic {service.token}"}
    response = httpx.get(f"{service.base}/Agents", headers=headers)
    assert_error(response, 401)
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_an_unauthenticated_create_stores_nothing(service: Service) -> None:
    name = unique("intruder")
    with untouched(service):
        response = httpx.post(f"{service.base}/Agents", json=agent_payload(name))
    assert_error(response, 401)


# ---------------------------------------------------------------- discovery


def test_service_provider_config_advertises_what_the_service_implements(
    service: Service,
) -> None:
    response = service.client.get("/ServiceProviderConfig")
    assert response.status_code == 200
    assert response.headers["content-type"] == MEDIA_TYPE
    config = response.json()
    assert config["schemas"] == ["urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig"]
    assert config["patch"] == {"supported": True}
    assert config["filter"] == {"supported": True, "maxResults": MAX_RESULTS}
    assert config["sort"] == {"supported": True}
    assert config["etag"] == {"supported": True}
    assert config["bulk"]["supported"] is False
    assert [scheme["type"] for scheme in config["authenticationSchemes"]] == ["oauthbearertoken"]
    assert config["meta"]["location"] == f"{service.base}/ServiceProviderConfig"


def test_resource_types_list_agent_user_and_group_with_the_agent_extension_required(
    service: Service,
) -> None:
    types = {item["id"]: item for item in listed(service.client.get("/ResourceTypes"))}
    assert set(types) == {"Agent", "User", "Group"}
    assert types["Agent"]["endpoint"] == "/Agents"
    assert types["Agent"]["schema"] == AGENT_SCHEMA
    assert types["Agent"]["schemaExtensions"] == [{"schema": EXT, "required": True}]
    assert types["User"]["endpoint"] == "/Users"
    assert types["User"]["schema"] == USER
    assert types["User"]["schemaExtensions"] == [{"schema": ENTERPRISE, "required": False}]
    assert types["Group"]["endpoint"] == "/Groups"
    assert types["Group"]["schema"] == GROUP


def test_a_resource_type_is_served_by_its_id(service: Service) -> None:
    response = service.client.get("/ResourceTypes/Agent")
    assert response.status_code == 200
    assert response.json()["schema"] == AGENT_SCHEMA
    assert_error(service.client.get("/ResourceTypes/Robot"), 404)


def test_schemas_include_both_agent_schemas_and_user_and_group(service: Service) -> None:
    ids = {item["id"] for item in listed(service.client.get("/Schemas"))}
    assert {AGENT_SCHEMA, EXT, USER, ENTERPRISE, GROUP} <= ids


def test_the_enterprise_schema_requires_none_of_the_managers_attributes(service: Service) -> None:
    """RFC 7643 §4.3 makes value and $ref RECOMMENDED; clients send the manager's id alone."""
    schema = service.client.get(f"/Schemas/{ENTERPRISE}").json()
    (manager,) = [a for a in schema["attributes"] if a["name"] == "manager"]
    assert [(a["name"], a["required"]) for a in manager["subAttributes"]] == [
        ("value", False),
        ("$ref", False),
        ("displayName", False),
    ]


def test_a_schema_is_served_by_its_urn(service: Service) -> None:
    response = service.client.get(f"/Schemas/{EXT}")
    assert response.status_code == 200
    schema = response.json()
    assert schema["id"] == EXT
    attributes = {attribute["name"]: attribute for attribute in schema["attributes"]}
    assert attributes["owner"]["required"] is True
    assert attributes["riskLevel"]["required"] is True
    assert attributes["riskLevel"]["canonicalValues"] == ["low", "medium", "high", "critical"]
    assert attributes["labels"]["multiValued"] is True
    assert schema["meta"]["location"] == f"{service.base}/Schemas/{EXT}"

    core = service.client.get(f"/Schemas/{AGENT_SCHEMA}").json()
    name = next(attribute for attribute in core["attributes"] if attribute["name"] == "name")
    assert name["required"] is True
    assert name["uniqueness"] == "server"


def test_an_unknown_schema_is_404(service: Service) -> None:
    assert_error(service.client.get("/Schemas/urn:example:no:such:schema"), 404)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/ServiceProviderConfig"),
        ("POST", "/ResourceTypes"),
        ("POST", "/Schemas"),
        ("PUT", "/ResourceTypes/Agent"),
        ("PATCH", f"/Schemas/{EXT}"),
        ("DELETE", "/ServiceProviderConfig"),
        ("DELETE", "/ResourceTypes/Agent"),
    ],
)
def test_discovery_endpoints_allow_only_get(service: Service, method: str, path: str) -> None:
    with untouched(service):
        response = service.client.request(method, path, json=agent_payload(unique("bot")))
    assert_error(response, 405)
    assert {method.strip() for method in response.headers["allow"].split(",")} == {"GET", "HEAD"}


def test_filtering_discovery_endpoints_is_403(service: Service) -> None:
    assert_error(service.client.get("/Schemas", params={"filter": "id pr"}), 403)


# ---------------------------------------------------------------- create


def test_creating_an_agent_answers_201_with_location_etag_defaults_and_meta(
    service: Service,
) -> None:
    name = unique("pay-bot")
    response = service.client.post("/Agents", json=agent_payload(name, purpose="payments"))
    assert response.status_code == 201, response.text
    assert response.headers["content-type"] == MEDIA_TYPE
    agent = response.json()
    location = f"{service.base}/Agents/{agent['id']}"
    assert response.headers["location"] == location
    assert response.headers["etag"] == 'W/"1"'
    assert agent["schemas"] == [AGENT_SCHEMA, EXT]
    assert agent["name"] == name
    assert agent[EXT] == {
        "owner": "alice@example.com",
        "riskLevel": "high",
        "purpose": "payments",
        "agentType": "background",
        "status": "active",
    }
    meta = agent["meta"]
    assert meta["resourceType"] == "Agent"
    assert meta["location"] == location
    assert meta["version"] == 'W/"1"'
    assert meta["created"] == meta["lastModified"]

    stored = service.store.get("Agent", agent["id"])
    assert stored.version == 1
    assert stored.data["name"] == name
    assert stored.data[EXT]["status"] == "active"
    assert service.client.get(location).json() == agent


def test_an_agent_keeps_the_type_and_status_it_is_created_with(service: Service) -> None:
    agent = new_agent(service, agentType="interactive", status="suspended")
    assert agent[EXT]["agentType"] == "interactive"
    assert agent[EXT]["status"] == "suspended"


def test_every_agent_attribute_round_trips(service: Service) -> None:
    extension = {
        "owner": "team-payments",
        "purpose": "payments",
        "riskLevel": "critical",
        "agentType": "external",
        "status": "retired",
        "model": "gpt-5",
        "description": "Pays invoices",
        "callbackUrl": "https://example.com/hook",
        "scopes": ["payments:read", "payments:write"],
        "labels": [{"key": "team", "value": "payments"}, {"key": "env", "value": "prod"}],
    }
    payload = {**agent_payload(unique("full")), "displayName": "Full Bot", EXT: extension}
    agent = create(service, "Agents", payload)
    fetched = service.client.get(f"/Agents/{agent['id']}").json()
    assert fetched["displayName"] == "Full Bot"
    assert fetched[EXT] == extension


def test_an_agent_name_is_unique_regardless_of_case(service: Service) -> None:
    name = unique("Pay-Bot")
    create(service, "Agents", agent_payload(name))
    with untouched(service):
        response = service.client.post("/Agents", json=agent_payload(name.upper()))
    assert_error(response, 409, "uniqueness")


def test_malformed_json_is_400_invalid_syntax(service: Service) -> None:
    with untouched(service):
        response = service.client.post(
            "/Agents", content=b'{"name": "x",', headers={"content-type": MEDIA_TYPE}
        )
    assert_error(response, 400, "invalidSyntax")


def test_a_body_that_is_not_an_object_is_400_invalid_syntax(service: Service) -> None:
    with untouched(service):
        response = service.client.post("/Agents", json=[agent_payload(unique("bot"))])
    assert_error(response, 400, "invalidSyntax")


def test_a_body_over_one_mebibyte_is_413(service: Service) -> None:
    payload = agent_payload(unique("big"), description="x" * (1 << 20))
    with untouched(service):
        response = service.client.post("/Agents", json=payload)
    assert_error(response, 413)


DEEP = b'{"a":' * 1000 + b"1" + b"}" * 1000  # nested a thousand levels
LONE_SURROGATE = b'{"schemas": ["' + USER.encode() + b'"], "userName": "\\ud800"}'
BODY_ENDPOINTS = [
    ("POST", "/Agents"),
    ("POST", "/Users"),
    ("PUT", "/Users/{id}"),
    ("PATCH", "/Users/{id}"),
    ("POST", "/Users/.search"),
    ("POST", "/.search"),
]


@pytest.mark.parametrize(("method", "path"), BODY_ENDPOINTS)
@pytest.mark.parametrize("body", [DEEP, LONE_SURROGATE], ids=["deep", "lone-surrogate"])
def test_a_body_that_is_not_json_within_bounds_is_400_invalid_syntax(
    service: Service, method: str, path: str, body: bytes
) -> None:
    user = new_user(service)
    with untouched(service):
        response = service.client.request(
            method,
            path.format(id=user["id"]),
            content=body,
            headers={"content-type": MEDIA_TYPE},
        )
    assert_error(response, 400, "invalidSyntax")
    assert "Error" not in response.json()["detail"]  # no exception's name


def test_a_body_that_does_not_arrive_in_time_is_408(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(wire, "READ_TIMEOUT", 0.5)
    port = int(service.url.rsplit(":", 1)[1])
    head = (
        "POST /scim/v2/Agents HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {service.token}\r\n"
        f"Content-Type: {MEDIA_TYPE}\r\nContent-Length: 100\r\n\r\n"
    )
    with untouched(service):
        answer = send_raw(port, head.encode() + b'{"name": ')
    status, _, rest = answer.partition(b"\r\n")
    assert status == b"HTTP/1.1 408 Request Timeout", answer
    error = json.loads(rest.partition(b"\r\n\r\n")[2])
    assert (error["status"], error.get("scimType")) == ("408", None)
    assert "did not arrive within 0.5 seconds" in error["detail"]


@pytest.mark.parametrize(
    "where",
    ["core", "extension"],
)
def test_an_unknown_attribute_is_400_and_stores_nothing(service: Service, where: str) -> None:
    payload = agent_payload(unique("bot"))
    if where == "core":
        payload["frobnicate"] = 1
    else:
        payload[EXT]["frobnicate"] = 1
    with untouched(service):
        response = service.client.post("/Agents", json=payload)
    assert_error(response, 400, "invalidSyntax")
    assert "frobnicate" in response.json()["detail"]


@pytest.mark.parametrize(
    ("attribute", "value"),
    [
        ("name", 42),
        ("displayName", {"text": "Bot"}),
        (f"{EXT}:scopes", "payments:read"),
        (f"{EXT}:labels", "team=payments"),
        (f"{EXT}:owner", ["alice", "bob"]),
    ],
)
def test_a_value_of_the_wrong_type_is_400_invalid_value(
    service: Service, attribute: str, value: Any
) -> None:
    payload = agent_payload(unique("bot"))
    if attribute.startswith(EXT):
        payload[EXT][attribute.removeprefix(f"{EXT}:")] = value
    else:
        payload[attribute] = value
    with untouched(service):
        response = service.client.post("/Agents", json=payload)
    assert_error(response, 400, "invalidValue")


@pytest.mark.parametrize(
    ("attribute", "value"),
    [("riskLevel", "extreme"), ("agentType", "robot"), ("status", "deleted")],
)
def test_a_value_outside_the_canonical_ones_is_400_invalid_value(
    service: Service, attribute: str, value: str
) -> None:
    with untouched(service):
        response = service.client.post(
            "/Agents", json=agent_payload(unique("bot"), **{attribute: value})
        )
    assert_error(response, 400, "invalidValue")
    assert attribute in response.json()["detail"]


@pytest.mark.parametrize("missing", ["owner", "riskLevel", "name", "extension"])
def test_a_missing_required_attribute_is_400_and_stores_nothing(
    service: Service, missing: str
) -> None:
    payload = agent_payload(unique("bot"))
    if missing == "name":
        del payload["name"]
    elif missing == "extension":
        del payload[EXT]
        payload["schemas"] = [AGENT_SCHEMA]
    else:
        del payload[EXT][missing]
    with untouched(service):
        response = service.client.post("/Agents", json=payload)
    assert_error(response, 400, "invalidValue")


@pytest.mark.parametrize("blank", ["", "   "])
@pytest.mark.parametrize("attribute", ["name", "owner"])
def test_a_blank_name_or_owner_is_400_invalid_value(
    service: Service, attribute: str, blank: str
) -> None:
    payload = agent_payload(unique("bot"))
    if attribute == "name":
        payload["name"] = blank
    else:
        payload[EXT]["owner"] = blank
    with untouched(service):
        response = service.client.post("/Agents", json=payload)
    assert_error(response, 400, "invalidValue")
    assert "blank" in response.json()["detail"]


def test_read_only_attributes_sent_on_create_are_ignored(service: Service) -> None:
    payload = {
        **agent_payload(unique("bot")),
        "id": "chosen-by-client",
        "meta": {"created": "2000-01-01T00:00:00Z", "version": 'W/"42"'},
    }
    agent = create(service, "Agents", payload)
    assert agent["id"] != "chosen-by-client"
    assert agent["meta"]["version"] == 'W/"1"'
    assert not agent["meta"]["created"].startswith("2000")


def test_text_with_a_nul_character_is_400_invalid_value_and_stores_nothing(
    service: Service,
) -> None:
    with untouched(service):
        named = service.client.post("/Users", json={"userName": unique("nul") + "\x00"})
        titled = service.client.post("/Users", json={"userName": unique("u"), "title": "\x00"})
    assert_error(named, 400, "invalidValue")
    assert_error(titled, 400, "invalidValue")


def test_a_name_too_long_to_index_is_400_invalid_value_and_stores_nothing(
    service: Service,
) -> None:
    with untouched(service):
        response = service.client.post("/Agents", json=agent_payload("a" * 1_025))
    assert_error(response, 400, "invalidValue")
    assert "name is longer than 1,024 bytes" in response.json()["detail"]


# ---------------------------------------------------------------- read


def test_an_agent_is_read_by_id_with_its_etag(service: Service) -> None:
    agent = new_agent(service)
    response = service.client.get(f"/Agents/{agent['id']}")
    assert response.status_code == 200
    assert response.headers["content-type"] == MEDIA_TYPE
    assert response.headers["etag"] == 'W/"1"'
    assert response.json() == agent


def test_an_unknown_id_is_404_with_a_scim_error(service: Service) -> None:
    assert_error(service.client.get("/Agents/00000000-0000-0000-0000-000000000000"), 404)


def test_an_id_of_another_resource_type_is_404(service: Service) -> None:
    user = new_user(service)
    assert_error(service.client.get(f"/Agents/{user['id']}"), 404)


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/Robots"), ("GET", "/Robots/1"), ("POST", "/Robots"), ("GET", "/")],
)
def test_an_unknown_endpoint_is_404_with_a_scim_error(
    service: Service, method: str, path: str
) -> None:
    with untouched(service):
        response = service.client.request(method, path, json=agent_payload(unique("bot")))
    assert_error(response, 404)


def test_attributes_on_get_returns_only_those_and_the_id(service: Service) -> None:
    agent = new_agent(service, purpose="payments")
    response = service.client.get(
        f"/Agents/{agent['id']}", params={"attributes": f"name,{EXT}:owner"}
    )
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"schemas", "id", "name", EXT}
    assert body[EXT] == {"owner": "alice@example.com"}


def test_excluded_attributes_on_get_leaves_them_out(service: Service) -> None:
    agent = new_agent(service)
    response = service.client.get(
        f"/Agents/{agent['id']}", params={"excludedAttributes": "name,meta"}
    )
    body = response.json()
    assert "name" not in body
    assert "meta" not in body
    assert body["id"] == agent["id"]
    assert body[EXT]["owner"] == "alice@example.com"


def test_attributes_and_excluded_attributes_together_are_400(service: Service) -> None:
    agent = new_agent(service)
    response = service.client.get(
        f"/Agents/{agent['id']}", params={"attributes": "name", "excludedAttributes": "name"}
    )
    assert_error(response, 400, "invalidValue")


def test_an_id_with_a_nul_character_is_404(service: Service) -> None:
    for method in ("GET", "PUT", "PATCH", "DELETE"):
        response = service.client.request(method, "/Users/bot%00", json={"userName": "x"})
        assert_error(response, 404)


def test_an_id_with_a_line_break_is_a_scim_404(service: Service) -> None:
    # Starlette's mount matches no path with a line break: the issuer answers for SCIM
    for method in ("GET", "PUT", "DELETE"):
        assert_error(service.client.request(method, "/Agents/a%0Ab", json={}), 404)


# ---------------------------------------------------------------- list and search


@dataclass(frozen=True)
class Fleet:
    """Four agents sharing a unique prefix; filters are scoped to it with ``name sw``."""

    prefix: str
    ids: dict[str, str]  # short name ("alpha") -> id

    def name(self, short: str) -> str:
        return f"{self.prefix}-{short}"

    def scoped(self, expression: str) -> str:
        return f'name sw "{self.prefix}-" and ({expression})'

    def shorts(self, resources: list[dict[str, Any]]) -> list[str]:
        return [resource["name"].removeprefix(f"{self.prefix}-") for resource in resources]


@pytest.fixture(scope="module")
def fleet(service: Service) -> Fleet:
    """Created once per backend, then only read."""
    prefix = unique("fleet")
    specs: dict[str, dict[str, Any]] = {
        "alpha": {
            "riskLevel": "low",
            "agentType": "interactive",
            "purpose": "payments",
            "model": "gpt-5",
            "labels": [{"key": "team", "value": "pay"}],
        },
        "bravo": {
            "riskLevel": "medium",
            "status": "suspended",
            "purpose": "support",
            "labels": [{"key": "team", "value": "ops"}, {"key": "env", "value": "prod"}],
        },
        "charlie": {"riskLevel": "high", "agentType": "external", "description": "Charlie"},
        "delta": {"riskLevel": "critical", "purpose": "payments", "scopes": ["read"]},
    }
    ids = {
        short: create(service, "Agents", agent_payload(f"{prefix}-{short}", **spec))["id"]
        for short, spec in specs.items()
    }
    return Fleet(prefix, ids)


def search(service: Service, **params: Any) -> list[dict[str, Any]]:
    return listed(service.client.get("/Agents", params=params))


FILTERS = [
    ('name eq "{p}-alpha"', ["alpha"]),
    ('name eq "{P}-ALPHA"', ["alpha"]),  # name is case-insensitive
    ('name ne "{p}-alpha"', ["bravo", "charlie", "delta"]),
    ('name co "arl"', ["charlie"]),
    ('name sw "{p}-b"', ["bravo"]),
    ('name ew "ta"', ["delta"]),
    ('name gt "{p}-bravo"', ["charlie", "delta"]),
    ('name ge "{p}-bravo"', ["bravo", "charlie", "delta"]),
    ('name lt "{p}-bravo"', ["alpha"]),
    ('name le "{p}-bravo"', ["alpha", "bravo"]),
    ("{x}:purpose pr", ["alpha", "bravo", "delta"]),
    ("{x}:model pr", ["alpha"]),
    ('{x}:riskLevel eq "high"', ["charlie"]),
    ('{x}:status eq "suspended"', ["bravo"]),
    ('{x}:agentType eq "background"', ["bravo", "delta"]),
    ('{x}:scopes eq "read"', ["delta"]),
    ('{x}:labels.value eq "pay"', ["alpha"]),
    ('{x}:labels[key eq "team" and value eq "ops"]', ["bravo"]),
    ('{x}:purpose eq "payments" and {x}:riskLevel eq "critical"', ["delta"]),
    ('{x}:riskLevel eq "low" or {x}:riskLevel eq "high"', ["alpha", "charlie"]),
    ('not ({x}:purpose eq "payments")', ["bravo", "charlie"]),
    ('name eq "{p}-alpha" or name eq "{p}-bravo" and {x}:riskLevel eq "high"', ["alpha"]),
    ('(name eq "{p}-alpha" or name eq "{p}-bravo") and {x}:riskLevel eq "medium"', ["bravo"]),
    ('meta.created gt "2000-01-01T00:00:00Z"', ["alpha", "bravo", "charlie", "delta"]),
    ('meta.resourceType eq "User"', []),
]


@pytest.mark.parametrize(("expression", "expected"), FILTERS)
def test_a_filter_selects_the_matching_agents(
    service: Service, fleet: Fleet, expression: str, expected: list[str]
) -> None:
    text = expression.format(p=fleet.prefix, P=fleet.prefix.upper(), x=EXT)
    found = fleet.shorts(search(service, filter=fleet.scoped(text)))
    assert sorted(found) == expected


def test_a_filter_on_the_id_finds_that_agent(service: Service, fleet: Fleet) -> None:
    found = search(service, filter=f'id eq "{fleet.ids["charlie"]}"')
    assert fleet.shorts(found) == ["charlie"]


@pytest.mark.parametrize(
    "expression",
    ["name eq", 'name foo "x"', '(name eq "x"', 'name eq "x" and', "bogus pr", 'name eq "x" "y"'],
)
def test_an_invalid_filter_is_400_invalid_filter(service: Service, expression: str) -> None:
    assert_error(service.client.get("/Agents", params={"filter": expression}), 400, "invalidFilter")


def test_sort_by_name_ascending_and_descending(service: Service, fleet: Fleet) -> None:
    scope = fleet.scoped("name pr")
    ascending = search(service, filter=scope, sortBy="name")
    assert fleet.shorts(ascending) == ["alpha", "bravo", "charlie", "delta"]
    descending = search(service, filter=scope, sortBy="name", sortOrder="descending")
    assert fleet.shorts(descending) == ["delta", "charlie", "bravo", "alpha"]


def test_sort_by_an_extension_attribute_orders_its_values_as_strings(
    service: Service, fleet: Fleet
) -> None:
    found = search(service, filter=fleet.scoped("name pr"), sortBy=f"{EXT}:riskLevel")
    # RFC 7644 §3.4.2.3: strings sort lexically (critical < high < low < medium).
    assert fleet.shorts(found) == ["delta", "charlie", "alpha", "bravo"]


def test_sort_by_an_unknown_attribute_is_400(service: Service) -> None:
    assert_error(service.client.get("/Agents", params={"sortBy": "bogus"}), 400, "invalidPath")


def test_pagination_reports_total_results_items_per_page_and_start_index(
    service: Service, fleet: Fleet
) -> None:
    params = {"filter": fleet.scoped("name pr"), "sortBy": "name"}
    body = service.client.get("/Agents", params={**params, "startIndex": 2, "count": 2}).json()
    assert body["totalResults"] == 4
    assert body["itemsPerPage"] == 2
    assert body["startIndex"] == 2
    assert fleet.shorts(body["Resources"]) == ["bravo", "charlie"]

    last = service.client.get("/Agents", params={**params, "startIndex": 4, "count": 10}).json()
    assert (last["totalResults"], last["itemsPerPage"], last["startIndex"]) == (4, 1, 4)
    assert fleet.shorts(last["Resources"]) == ["delta"]

    beyond = service.client.get("/Agents", params={**params, "startIndex": 9}).json()
    assert (beyond["totalResults"], beyond["itemsPerPage"]) == (4, 0)
    assert beyond.get("Resources", []) == []


def test_count_zero_gives_only_the_total(service: Service, fleet: Fleet) -> None:
    params: dict[str, str | int] = {"filter": fleet.scoped("name pr"), "count": 0}
    body = service.client.get("/Agents", params=params).json()
    assert (body["totalResults"], body["itemsPerPage"]) == (4, 0)
    assert body.get("Resources", []) == []


def test_a_start_index_below_one_counts_as_one(service: Service, fleet: Fleet) -> None:
    params: dict[str, str | int] = {
        "filter": fleet.scoped("name pr"),
        "sortBy": "name",
        "startIndex": 0,
    }
    body = service.client.get("/Agents", params=params).json()
    assert body["startIndex"] == 1
    assert fleet.shorts(body["Resources"])[0] == "alpha"


def test_a_non_numeric_count_is_400(service: Service) -> None:
    assert_error(service.client.get("/Agents", params={"count": "ten"}), 400, "invalidValue")


def test_attributes_on_a_list_returns_only_those_and_the_id(service: Service, fleet: Fleet) -> None:
    params = {"filter": fleet.scoped("name pr"), "attributes": f"{EXT}:riskLevel"}
    for resource in search(service, **params):
        assert set(resource) == {"schemas", "id", EXT}
        assert set(resource[EXT]) == {"riskLevel"}


def test_excluded_attributes_on_a_list_leaves_them_out(service: Service, fleet: Fleet) -> None:
    found = search(service, filter=fleet.scoped("name pr"), excludedAttributes=EXT)
    assert len(found) == 4
    for resource in found:
        assert EXT not in resource
        assert resource["name"].startswith(fleet.prefix)
        assert "meta" in resource


def test_post_search_on_an_endpoint_takes_the_query_in_the_body(
    service: Service, fleet: Fleet
) -> None:
    request = {
        "schemas": [SEARCH],
        "filter": fleet.scoped(f'{EXT}:purpose eq "payments"'),
        "sortBy": "name",
        "sortOrder": "descending",
        "attributes": ["name"],
        "startIndex": 1,
        "count": 10,
    }
    response = service.client.post("/Agents/.search", json=request)
    body = response.json()
    assert body["totalResults"] == 2
    assert fleet.shorts(listed(response)) == ["delta", "alpha"]
    assert all(set(resource) == {"schemas", "id", "name"} for resource in body["Resources"])


def test_post_search_with_an_invalid_filter_is_400_invalid_filter(service: Service) -> None:
    response = service.client.post("/Agents/.search", json={"schemas": [SEARCH], "filter": "(("})
    assert_error(response, 400, "invalidFilter")


def test_post_search_with_an_unknown_member_is_400_invalid_syntax(service: Service) -> None:
    response = service.client.post("/Agents/.search", json={"schemas": [SEARCH], "sort": "name"})
    assert_error(response, 400, "invalidSyntax")


def test_post_search_at_the_root_spans_every_resource_type(service: Service) -> None:
    agent = new_agent(service)
    user = new_user(service)
    group = new_group(service, user["id"])
    request = {
        "schemas": [SEARCH],
        "filter": (f'id eq "{agent["id"]}" or id eq "{user["id"]}" or id eq "{group["id"]}"'),
    }
    found = listed(service.client.post("/.search", json=request))
    assert {(r["meta"]["resourceType"], r["id"]) for r in found} == {
        ("Agent", agent["id"]),
        ("User", user["id"]),
        ("Group", group["id"]),
    }


def test_post_search_at_the_root_filters_on_attributes_of_one_type(service: Service) -> None:
    user = new_user(service)
    request = {"schemas": [SEARCH], "filter": f'userName eq "{user["userName"]}"'}
    found = listed(service.client.post("/.search", json=request))
    assert [(r["meta"]["resourceType"], r["id"]) for r in found] == [("User", user["id"])]


# ---------------------------------------------------------------- replace (PUT)


def full(agent: dict[str, Any]) -> dict[str, Any]:
    """What a client PUTs back after a GET: the resource as read, meta and all (a copy)."""
    return copy.deepcopy(agent)


def test_put_replaces_the_agent_bumps_the_version_and_changes_the_etag(
    service: Service,
) -> None:
    agent = new_agent(service, purpose="payments")
    replacement = agent_payload(agent["name"], riskLevel="low", agentType="interactive")
    replacement[EXT]["status"] = "active"
    replacement["displayName"] = "Pay Bot"
    response = service.client.put(f"/Agents/{agent['id']}", json=replacement)
    assert response.status_code == 200, response.text
    assert response.headers["etag"] == 'W/"2"'
    replaced = response.json()
    assert replaced["meta"]["version"] == 'W/"2"'
    assert replaced["displayName"] == "Pay Bot"
    assert replaced[EXT]["riskLevel"] == "low"
    assert replaced[EXT]["agentType"] == "interactive"
    assert "purpose" not in replaced[EXT]  # PUT replaces: what is left out is gone
    assert replaced["meta"]["created"] == agent["meta"]["created"]
    assert replaced["meta"]["lastModified"] >= agent["meta"]["lastModified"]

    assert service.client.get(f"/Agents/{agent['id']}").json() == replaced
    stored = service.store.get("Agent", agent["id"])
    assert stored.version == 2
    assert "purpose" not in stored.data[EXT]


def test_put_ignores_read_only_attributes(service: Service) -> None:
    agent = new_agent(service)
    replacement = full(agent)
    replacement["id"] = "another-id"
    replacement["meta"] = {
        **agent["meta"],
        "created": "2000-01-01T00:00:00Z",
        "version": 'W/"99"',
        "resourceType": "User",
    }
    replacement["displayName"] = "Renamed"
    response = service.client.put(f"/Agents/{agent['id']}", json=replacement)
    assert response.status_code == 200, response.text
    replaced = response.json()
    assert replaced["id"] == agent["id"]
    assert replaced["displayName"] == "Renamed"
    assert replaced["meta"]["created"] == agent["meta"]["created"]
    assert replaced["meta"]["version"] == 'W/"2"'
    assert replaced["meta"]["resourceType"] == "Agent"
    assert service.client.get("/Agents/another-id").status_code == 404


def test_put_without_status_is_refused_rather_than_reactivating_the_agent(
    service: Service,
) -> None:
    agent = new_agent(service, status="suspended")
    replacement = full(agent)
    del replacement[EXT]["status"]
    with untouched(service):
        response = service.client.put(f"/Agents/{agent['id']}", json=replacement)
    assert_error(response, 400, "invalidValue")
    assert service.client.get(f"/Agents/{agent['id']}").json()[EXT]["status"] == "suspended"


def test_put_to_a_name_another_agent_has_is_409_and_changes_nothing(service: Service) -> None:
    taken = new_agent(service)
    agent = new_agent(service)
    replacement = {**full(agent), "name": taken["name"].upper()}
    with untouched(service):
        response = service.client.put(f"/Agents/{agent['id']}", json=replacement)
    assert_error(response, 409, "uniqueness")


def test_put_with_an_invalid_value_is_400_and_changes_nothing(service: Service) -> None:
    agent = new_agent(service)
    replacement = full(agent)
    replacement[EXT] = {**agent[EXT], "riskLevel": "extreme"}
    with untouched(service):
        response = service.client.put(f"/Agents/{agent['id']}", json=replacement)
    assert_error(response, 400, "invalidValue")
    assert service.client.get(f"/Agents/{agent['id']}").json() == agent


def test_put_with_malformed_json_is_400_and_changes_nothing(service: Service) -> None:
    agent = new_agent(service)
    with untouched(service):
        response = service.client.put(f"/Agents/{agent['id']}", content=b"{")
    assert_error(response, 400, "invalidSyntax")


def test_put_on_an_unknown_id_is_404(service: Service) -> None:
    with untouched(service):
        response = service.client.put("/Agents/no-such-id", json=agent_payload(unique("bot")))
    assert_error(response, 404)


# ---------------------------------------------------------------- PATCH


def test_patch_replaces_the_status_through_its_extension_path(service: Service) -> None:
    agent = new_agent(service)
    operation = patch_op({"op": "replace", "path": f"{EXT}:status", "value": "suspended"})
    response = service.client.patch(f"/Agents/{agent['id']}", json=operation)
    assert response.status_code == 200, response.text
    assert response.headers["etag"] == 'W/"2"'
    patched = response.json()
    assert patched[EXT]["status"] == "suspended"
    assert patched[EXT]["owner"] == agent[EXT]["owner"]
    assert service.client.get(f"/Agents/{agent['id']}").json()[EXT]["status"] == "suspended"
    assert service.store.get("Agent", agent["id"]).data[EXT]["status"] == "suspended"


def test_patch_adds_a_label_and_a_display_name(service: Service) -> None:
    agent = new_agent(service, labels=[{"key": "team", "value": "pay"}])
    operation = patch_op(
        {"op": "add", "path": f"{EXT}:labels", "value": [{"key": "env", "value": "prod"}]},
        {"op": "add", "path": "displayName", "value": "Pay Bot"},
    )
    patched = service.client.patch(f"/Agents/{agent['id']}", json=operation).json()
    assert patched["displayName"] == "Pay Bot"
    assert patched[EXT]["labels"] == [
        {"key": "team", "value": "pay"},
        {"key": "env", "value": "prod"},
    ]
    assert patched["meta"]["version"] == 'W/"2"'  # one PATCH, one version


def test_patch_without_a_path_merges_the_value(service: Service) -> None:
    agent = new_agent(service)
    operation = patch_op({"op": "replace", "value": {"displayName": "Merged"}})
    patched = service.client.patch(f"/Agents/{agent['id']}", json=operation).json()
    assert patched["displayName"] == "Merged"
    assert patched["name"] == agent["name"]


def test_patch_removes_only_the_labels_a_value_path_selects(service: Service) -> None:
    labels = [
        {"key": "team", "value": "pay"},
        {"key": "env", "value": "prod"},
        {"key": "team", "value": "ops"},
    ]
    agent = new_agent(service, labels=labels)
    operation = patch_op({"op": "remove", "path": f'{EXT}:labels[key eq "team"]'})
    response = service.client.patch(f"/Agents/{agent['id']}", json=operation)
    assert response.status_code == 200, response.text
    assert response.json()[EXT]["labels"] == [{"key": "env", "value": "prod"}]
    assert service.store.get("Agent", agent["id"]).data[EXT]["labels"] == [
        {"key": "env", "value": "prod"}
    ]


def test_patch_replaces_a_value_path_sub_attribute(service: Service) -> None:
    agent = new_agent(service, labels=[{"key": "env", "value": "dev"}])
    operation = patch_op(
        {"op": "replace", "path": f'{EXT}:labels[key eq "env"].value', "value": "prod"}
    )
    patched = service.client.patch(f"/Agents/{agent['id']}", json=operation).json()
    assert patched[EXT]["labels"] == [{"key": "env", "value": "prod"}]


def test_patch_removes_an_optional_attribute(service: Service) -> None:
    agent = new_agent(service, purpose="payments")
    operation = patch_op({"op": "remove", "path": f"{EXT}:purpose"})
    patched = service.client.patch(f"/Agents/{agent['id']}", json=operation).json()
    assert "purpose" not in patched[EXT]
    assert "purpose" not in service.store.get("Agent", agent["id"]).data[EXT]


@pytest.mark.parametrize("path", [f"{EXT}:owner", f"{EXT}:riskLevel", "name"])
def test_patch_removing_a_required_attribute_is_refused_and_changes_nothing(
    service: Service, path: str
) -> None:
    agent = new_agent(service)
    with untouched(service):
        response = service.client.patch(
            f"/Agents/{agent['id']}", json=patch_op({"op": "remove", "path": path})
        )
    assert_error(response, 400, "mutability")
    assert service.client.get(f"/Agents/{agent['id']}").json() == agent


@pytest.mark.parametrize(
    ("operation", "scim_type"),
    [
        ({"op": "replace", "path": f"{EXT}:riskLevel", "value": "extreme"}, "invalidValue"),
        ({"op": "replace", "path": f"{EXT}:owner", "value": " "}, "invalidValue"),
        ({"op": "replace", "path": "name", "value": ""}, "invalidValue"),
        ({"op": "replace", "path": "bogus", "value": "x"}, "invalidPath"),
        ({"op": "replace", "path": "id", "value": "mine"}, "mutability"),
        ({"op": "replace", "path": "meta.created", "value": "2000-01-01T00:00:00Z"}, "mutability"),
        ({"op": "remove"}, "noTarget"),
        ({"op": "frobnicate", "path": "displayName", "value": "x"}, "invalidValue"),
    ],
)
def test_an_invalid_patch_operation_is_400_and_changes_nothing(
    service: Service, operation: dict[str, Any], scim_type: str
) -> None:
    agent = new_agent(service)
    with untouched(service):
        response = service.client.patch(f"/Agents/{agent['id']}", json=patch_op(operation))
    assert_error(response, 400, scim_type)
    assert service.client.get(f"/Agents/{agent['id']}").json() == agent


def test_a_patch_is_all_or_nothing(service: Service) -> None:
    agent = new_agent(service)
    operation = patch_op(
        {"op": "replace", "path": "displayName", "value": "Applied?"},
        {"op": "remove", "path": f"{EXT}:owner"},
    )
    with untouched(service):
        response = service.client.patch(f"/Agents/{agent['id']}", json=operation)
    assert_error(response, 400, "mutability")
    assert "displayName" not in service.client.get(f"/Agents/{agent['id']}").json()


def test_patch_renaming_to_a_taken_name_is_409_and_changes_nothing(service: Service) -> None:
    taken = new_agent(service)
    agent = new_agent(service)
    operation = patch_op({"op": "replace", "path": "name", "value": taken["name"]})
    with untouched(service):
        response = service.client.patch(f"/Agents/{agent['id']}", json=operation)
    assert_error(response, 409, "uniqueness")


def test_patch_with_an_empty_operation_list_is_400(service: Service) -> None:
    agent = new_agent(service)
    with untouched(service):
        response = service.client.patch(f"/Agents/{agent['id']}", json=patch_op())
    assert_error(response, 400, "invalidValue")


def test_patch_on_an_unknown_id_is_404(service: Service) -> None:
    operation = patch_op({"op": "replace", "path": "displayName", "value": "x"})
    with untouched(service):
        response = service.client.patch("/Agents/no-such-id", json=operation)
    assert_error(response, 404)


# ---------------------------------------------------------------- ETags


def send(service: Service, method: str, agent: dict[str, Any], if_match: str) -> httpx.Response:
    """A PUT, PATCH or DELETE of the agent carrying ``If-Match``."""
    url = f"/Agents/{agent['id']}"
    headers = {"If-Match": if_match}
    if method == "PUT":
        return service.client.put(url, json={**full(agent), "displayName": "x"}, headers=headers)
    if method == "PATCH":
        operation = patch_op({"op": "replace", "path": "displayName", "value": "x"})
        return service.client.patch(url, json=operation, headers=headers)
    return service.client.delete(url, headers=headers)


WRITES = ["PUT", "PATCH", "DELETE"]


@pytest.mark.parametrize("method", WRITES)
def test_a_stale_if_match_is_412_and_changes_nothing(service: Service, method: str) -> None:
    agent = new_agent(service)
    service.client.patch(
        f"/Agents/{agent['id']}",
        json=patch_op({"op": "replace", "path": "displayName", "value": "v2"}),
    )
    current = service.client.get(f"/Agents/{agent['id']}").json()
    with untouched(service):
        response = send(service, method, agent, 'W/"1"')
    assert_error(response, 412)
    assert service.client.get(f"/Agents/{agent['id']}").json() == current


@pytest.mark.parametrize("method", WRITES)
@pytest.mark.parametrize("if_match", ['W/"1"', '"1"', "*", 'W/"7", W/"1"'])
def test_a_current_if_match_lets_the_write_through(
    service: Service, method: str, if_match: str
) -> None:
    agent = new_agent(service)
    response = send(service, method, agent, if_match)
    assert response.status_code == (204 if method == "DELETE" else 200), response.text
    if method != "DELETE":
        assert response.headers["etag"] == 'W/"2"'


@pytest.mark.parametrize("if_none_match", ['W/"1"', '"1"', "*"])
def test_get_with_a_current_if_none_match_is_304_without_a_body(
    service: Service, if_none_match: str
) -> None:
    agent = new_agent(service)
    response = service.client.get(
        f"/Agents/{agent['id']}", headers={"If-None-Match": if_none_match}
    )
    assert response.status_code == 304
    assert response.content == b""
    assert response.headers["etag"] == 'W/"1"'


def test_get_with_a_stale_if_none_match_returns_the_resource(service: Service) -> None:
    agent = new_agent(service)
    operation = patch_op({"op": "replace", "path": "displayName", "value": "v2"})
    service.client.patch(f"/Agents/{agent['id']}", json=operation)
    response = service.client.get(f"/Agents/{agent['id']}", headers={"If-None-Match": 'W/"1"'})
    assert response.status_code == 200
    assert response.headers["etag"] == 'W/"2"'
    assert response.json()["displayName"] == "v2"


# ---------------------------------------------------------------- delete and history


def test_delete_is_204_then_the_agent_is_404(service: Service) -> None:
    agent = new_agent(service)
    response = service.client.delete(f"/Agents/{agent['id']}")
    assert response.status_code == 204
    assert response.content == b""
    assert_error(service.client.get(f"/Agents/{agent['id']}"), 404)
    assert_error(service.client.delete(f"/Agents/{agent['id']}"), 404)
    assert all(record.id != agent["id"] for record in service.store.list("Agent"))


def test_the_audit_trail_survives_deletion_with_the_actor(service: Service) -> None:
    agent = new_agent(service)
    operation = patch_op({"op": "replace", "path": f"{EXT}:status", "value": "retired"})
    assert service.client.patch(f"/Agents/{agent['id']}", json=operation).status_code == 200
    assert service.client.delete(f"/Agents/{agent['id']}").status_code == 204

    history = service.store.history("Agent", agent["id"])
    assert [(change.op, change.version, change.actor) for change in history] == [
        ("create", 1, ACTOR),
        ("replace", 2, ACTOR),
        ("delete", 2, ACTOR),
    ]
    assert history[0].data is not None
    assert history[0].data[EXT]["status"] == "active"
    assert history[1].data is not None
    assert history[1].data[EXT]["status"] == "retired"
    assert history[2].data is None


def test_a_deleted_name_can_be_used_again(service: Service) -> None:
    agent = new_agent(service)
    service.client.delete(f"/Agents/{agent['id']}")
    again = create(service, "Agents", agent_payload(agent["name"]))
    assert again["id"] != agent["id"]


# ---------------------------------------------------------------- users


def test_a_password_is_never_returned_and_is_stored_scrypt_hashed(service: Service) -> None:
    password = "correct horse battery staple"
    response = service.client.post(
        "/Users", json={"schemas": [USER], "userName": unique("amy"), "password": password}
    )
    assert response.status_code == 201
    user = response.json()
    assert "password" not in user
    url = f"/Users/{user['id']}"
    assert "password" not in service.client.get(url).json()
    assert "password" not in service.client.get(url, params={"attributes": "password"}).json()
    found = listed(service.client.get("/Users", params={"filter": f'id eq "{user["id"]}"'}))
    assert ["password" in resource for resource in found] == [False]
    assert listed(service.client.get("/Users", params={"filter": "password pr"})) == []

    stored = service.store.get("User", user["id"]).data["password"]
    assert stored.startswith("scrypt$")
    assert password not in stored
    assert verify_password(password, stored)
    assert not verify_password("wrong", stored)


def test_a_changed_password_is_hashed_anew_and_a_put_without_one_keeps_it(
    service: Service,
) -> None:
    user = new_user(service, password="first-password")
    url = f"/Users/{user['id']}"
    operation = patch_op({"op": "replace", "path": "password", "value": "second-password"})
    response = service.client.patch(url, json=operation)
    assert response.status_code == 200
    assert "password" not in response.json()
    stored = service.store.get("User", user["id"]).data["password"]
    assert verify_password("second-password", stored)

    response = service.client.put(url, json={"schemas": [USER], "userName": user["userName"]})
    assert response.status_code == 200
    assert service.store.get("User", user["id"]).data["password"] == stored


def test_user_roles_round_trip(service: Service) -> None:
    roles = [{"value": "approver", "primary": True}, {"value": "auditor", "type": "finance"}]
    user = new_user(service, roles=roles, displayName="Amy")
    assert user["roles"] == roles
    assert service.client.get(f"/Users/{user['id']}").json()["roles"] == roles
    found = listed(service.client.get("/Users", params={"filter": 'roles.value eq "auditor"'}))
    assert user["id"] in [resource["id"] for resource in found]


def test_a_user_with_the_enterprise_extension_is_stored_returned_and_found(
    service: Service,
) -> None:
    department = unique("dept")
    enterprise = {
        "employeeNumber": "701984",
        "costCenter": "4130",
        "organization": "Universal Studios",
        "division": "Theme Park",
        "department": department,
        "manager": {"value": "26118915-6090-4610-87e4-49d8ca9f808d"},
    }
    user = create(
        service,
        "Users",
        {"schemas": [USER, ENTERPRISE], "userName": unique("user"), ENTERPRISE: enterprise},
    )
    assert user[ENTERPRISE] == enterprise
    assert ENTERPRISE in user["schemas"]
    assert service.client.get(f"/Users/{user['id']}").json()[ENTERPRISE] == enterprise
    assert service.store.get("User", user["id"]).data[ENTERPRISE] == enterprise

    by_department = f'{ENTERPRISE}:department eq "{department}"'
    by_manager = f'{ENTERPRISE}:manager.value eq "26118915-6090-4610-87e4-49d8ca9f808d"'
    for filter in (by_department, by_manager):
        found = listed(service.client.get("/Users", params={"filter": filter}))
        assert user["id"] in [resource["id"] for resource in found], filter
    found = listed(service.client.get("/Users", params={"filter": by_department}))
    assert [resource["id"] for resource in found] == [user["id"]]


def test_a_user_without_the_enterprise_extension_does_not_name_it(service: Service) -> None:
    user = new_user(service)
    assert user["schemas"] == [USER] and ENTERPRISE not in user
    assert service.store.get("User", user["id"]).data["schemas"] == [USER]


def test_the_enterprise_extension_is_patched_by_its_urn(service: Service) -> None:
    user = new_user(service)
    operation = patch_op(
        {"op": "add", "path": f"{ENTERPRISE}:department", "value": "Finance"},
        {"op": "add", "path": f"{ENTERPRISE}:manager", "value": {"value": "m-1"}},
    )
    response = service.client.patch(f"/Users/{user['id']}", json=operation)
    assert response.status_code == 200, response.text
    assert response.json()[ENTERPRISE] == {"department": "Finance", "manager": {"value": "m-1"}}
    assert service.store.get("User", user["id"]).data[ENTERPRISE]["department"] == "Finance"


def test_an_enterprise_attribute_of_the_wrong_type_is_400_and_changes_nothing(
    service: Service,
) -> None:
    payload = {"schemas": [USER, ENTERPRISE], "userName": unique("u"), ENTERPRISE: {"manager": 7}}
    with untouched(service):
        response = service.client.post("/Users", json=payload)
    assert_error(response, 400, "invalidValue")


def test_agent_roles_round_trip_and_filter(service: Service) -> None:
    roles = [{"value": "reader", "primary": True}, {"value": unique("role")}]
    agent = create(service, "Agents", {**agent_payload(unique("bot")), "roles": roles})
    assert agent["roles"] == roles
    assert service.client.get(f"/Agents/{agent['id']}").json()["roles"] == roles
    query = {"filter": f'roles.value eq "{roles[1]["value"]}"'}
    found = listed(service.client.get("/Agents", params=query))
    assert [resource["id"] for resource in found] == [agent["id"]]


def test_a_user_name_is_unique_regardless_of_case(service: Service) -> None:
    user = new_user(service)
    with untouched(service):
        response = service.client.post(
            "/Users", json={"schemas": [USER], "userName": user["userName"].upper()}
        )
    assert_error(response, 409, "uniqueness")


# ---------------------------------------------------------------- groups


def test_a_group_member_must_exist(service: Service) -> None:
    payload = {
        "schemas": [GROUP],
        "displayName": unique("group"),
        "members": [{"value": "00000000-0000-0000-0000-000000000000"}],
    }
    with untouched(service):
        response = service.client.post("/Groups", json=payload)
    assert_error(response, 400, "invalidValue")


def test_a_group_may_list_an_agent_until_the_agent_is_deleted(service: Service) -> None:
    """Policies read an agent's groups (agent.groups), so groups list agents too."""
    agent, user = new_agent(service), new_user(service)
    members = [{"value": agent["id"], "type": "Agent"}, {"value": user["id"]}]
    payload = {"schemas": [GROUP], "displayName": unique("g"), "members": members}
    group = create(service, "Groups", payload)
    assert [m["value"] for m in group["members"]] == [agent["id"], user["id"]]

    assert service.client.delete(f"/Agents/{agent['id']}").status_code == 204
    after = service.client.get(f"/Groups/{group['id']}").json()
    assert [m["value"] for m in after["members"]] == [user["id"]]


def test_adding_an_unknown_member_by_patch_is_400_and_changes_nothing(service: Service) -> None:
    group = new_group(service, new_user(service)["id"])
    operation = patch_op({"op": "add", "path": "members", "value": [{"value": "nobody"}]})
    with untouched(service):
        response = service.client.patch(f"/Groups/{group['id']}", json=operation)
    assert_error(response, 400, "invalidValue")


def test_a_users_groups_lists_the_groups_that_have_them_as_member(service: Service) -> None:
    user = new_user(service)
    assert "groups" not in user
    first = new_group(service, user["id"])
    second = new_group(service, user["id"], new_user(service)["id"])
    new_group(service, new_user(service)["id"])  # not theirs

    groups = service.client.get(f"/Users/{user['id']}").json()["groups"]
    assert sorted((g["value"], g["display"]) for g in groups) == sorted(
        [(first["id"], first["displayName"]), (second["id"], second["displayName"])]
    )
    found = listed(
        service.client.get("/Users", params={"filter": f'groups.value eq "{first["id"]}"'})
    )
    assert [resource["id"] for resource in found] == [user["id"]]

    operation = patch_op({"op": "remove", "path": f'members[value eq "{user["id"]}"]'})
    assert service.client.patch(f"/Groups/{first['id']}", json=operation).status_code == 200
    groups = service.client.get(f"/Users/{user['id']}").json()["groups"]
    assert [g["value"] for g in groups] == [second["id"]]


def test_a_users_groups_is_read_only(service: Service) -> None:
    user = new_user(service)
    group = new_group(service)
    operation = patch_op({"op": "add", "path": "groups", "value": [{"value": group["id"]}]})
    with untouched(service):
        response = service.client.patch(f"/Users/{user['id']}", json=operation)
    assert_error(response, 400, "mutability")


def test_a_group_can_have_a_group_as_member(service: Service) -> None:
    inner = new_group(service, new_user(service)["id"])
    outer = new_group(service, inner["id"])
    assert outer["members"] == [{"value": inner["id"]}]


def test_deleting_a_user_takes_them_out_of_their_groups(service: Service) -> None:
    user = new_user(service)
    other = new_user(service)
    group = new_group(service, user["id"], other["id"])
    assert service.client.delete(f"/Users/{user['id']}").status_code == 204

    after = service.client.get(f"/Groups/{group['id']}").json()
    assert after["members"] == [{"value": other["id"]}]
    assert after["meta"]["version"] == 'W/"2"'
    change = service.store.history("Group", group["id"])[-1]
    assert (change.op, change.actor) == ("replace", ACTOR)
    operation = patch_op({"op": "replace", "path": "displayName", "value": unique("renamed")})
    assert service.client.patch(f"/Groups/{group['id']}", json=operation).status_code == 200


def test_deleting_a_groups_last_member_leaves_it_without_members(service: Service) -> None:
    inner = new_group(service)
    outer = new_group(service, inner["id"])
    assert service.client.delete(f"/Groups/{inner['id']}").status_code == 204
    assert "members" not in service.client.get(f"/Groups/{outer['id']}").json()


def test_concurrent_patches_without_if_match_both_apply(service: Service) -> None:
    """Without If-Match a PATCH applies to the newest version: a race is re-read, not lost."""
    from concurrent.futures import ThreadPoolExecutor

    agent = new_agent(service)
    for round in range(5):
        operations = [
            patch_op({"op": "add", "path": f"{EXT}:labels", "value": [{"key": f"k{round}{n}"}]})
            for n in range(2)
        ]
        with ThreadPoolExecutor(2) as pool:
            responses = list(
                pool.map(
                    lambda op: service.client.patch(f"/Agents/{agent['id']}", json=op), operations
                )
            )
        assert [r.status_code for r in responses] == [200, 200]
    labels = service.client.get(f"/Agents/{agent['id']}").json()[EXT]["labels"]
    assert sorted(label["key"] for label in labels) == sorted(
        f"k{round}{n}" for round in range(5) for n in range(2)
    )
