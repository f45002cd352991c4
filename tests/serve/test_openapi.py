"""The OpenAPI document of ``tessera serve``'s HTTP port, held to the application it
describes: every route it mounts is in the document and every operation of the document
is a route, so neither can drift; and the document is valid OpenAPI 3.1."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from jsonschema import Draft202012Validator
from schemathesis.specs.openapi.definitions import OPENAPI_31_VALIDATOR
from starlette.applications import Starlette
from starlette.routing import BaseRoute, Mount, Route

from issuer.keys import KeyRing
from issuer.oauth.endpoints import AuthorizationServer
from issuer.scim import KINDS, BootstrapToken
from issuer.store import Store, open_store
from pdp.decide import DecisionPoint
from pdp.engine import Engine
from pdp.loader import load_directory
from pdp.serve.openapi import document
from pdp.server import http_app
from tests.conftest import SHIPPED_POLICIES
from tests.servers import HttpServer

TOKEN = "openapi-admin-token-0123456789"
BASE = "http://127.0.0.1:8080"


def application(store: Store, base: str = BASE) -> Starlette:
    """The HTTP application ``tessera serve`` runs, on ``store``."""
    oauth = AuthorizationServer(store, KeyRing(store, "ES256"), base, BootstrapToken(TOKEN))
    point = DecisionPoint(Engine(load_directory(SHIPPED_POLICIES).bundle))
    return http_app(point, store, oauth, (base, base))


@pytest.fixture
def sqlite(tmp_path: Path) -> Iterator[Store]:
    store = open_store(f"sqlite:///{tmp_path}/tessera.db")
    yield store
    store.close()


def served(routes: list[BaseRoute], prefix: str = "") -> set[tuple[str, str]]:
    """(method, path) of every route, mounted applications' included; a SCIM path's
    ``{endpoint}`` stands for each resource type's, and HEAD (Starlette's, with each GET)
    is left out."""
    found: set[tuple[str, str]] = set()
    for route in routes:
        if isinstance(route, Mount):
            found |= served(route.routes, prefix + route.path)
        elif isinstance(route, Route):
            path = re.sub(r"\{(\w+):\w+\}", r"{\1}", prefix + route.path)
            paths = (
                [path.replace("{endpoint}", kind) for kind in KINDS]
                if "{endpoint}" in path
                else [path]
            )
            methods = (route.methods or set()) - {"HEAD"}
            found |= {(method, each) for method in methods for each in paths}
    return found


def documented(on_this_port: bool = True) -> set[tuple[str, str]]:
    """(method, path) of every operation of the document; with ``on_this_port``, those
    on the HTTP port only (not the metrics port's)."""
    return {
        (method.upper(), path)
        for path, item in document()["paths"].items()
        for method, operation in item.items()
        if not on_this_port or "servers" not in operation
    }


def test_every_route_is_documented_and_every_operation_is_a_route(sqlite: Store) -> None:
    routes = served(application(sqlite).routes)
    assert routes - documented() == set(), "routes the document does not describe"
    assert documented() - routes == set(), "operations no route serves"


def test_only_the_metrics_are_on_another_port() -> None:
    assert documented(on_this_port=False) - documented() == {("GET", "/metrics")}


def test_the_document_is_valid_openapi_3_1() -> None:
    errors = [error.message for error in OPENAPI_31_VALIDATOR.iter_errors(document())]
    assert errors == []
    for schema in document()["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)  # raises, naming what is wrong


def test_every_reference_names_a_schema_of_the_document() -> None:
    schemas = document()["components"]["schemas"]
    references = set(re.findall(r'"#/components/schemas/([^"]+)"', json.dumps(document())))
    assert references - set(schemas) == set()
    assert set(schemas) - references == set(), "schemas nothing uses"


def test_the_document_is_served_at_openapi_json_without_a_token(sqlite: Store) -> None:
    server = HttpServer(lambda port: application(sqlite, f"http://127.0.0.1:{port}"))
    try:
        response = httpx.get(f"http://127.0.0.1:{server.port}/openapi.json", timeout=10)
    finally:
        server.close()
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == document()
    assert response.json()["servers"] == [{"url": "/"}]  # wherever the port is reached
