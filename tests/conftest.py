"""Shared fixtures: policies from text, requests from JSON."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from issuer.store import Store
from pdp.engine import Bundle, Engine
from pdp.loader import load_directory, load_texts
from pdp.model import Request
from pdp.request import request_from_json
from tests.stores import BACKENDS, opened_store, store_url

SCHEMA = """
schema {
  agent { risk: risk, status: string, purpose: string, type: string, scopes: set<string>,
          labels: map<string>, owner: string }
  user { roles: set<string> }
  context { amount: money, n: number }
  resource tool { server: string }
  resource table { classification: string }
}
"""


def bundle_of(policy: str, *, schema: str = SCHEMA) -> Bundle:
    """A checked, compiled bundle from policy text (plus the test schema)."""
    return load_texts({"schema.pol": schema, "p.pol": policy}).bundle


def engine_of(policy: str, *, clock: float = 1_000_000.0) -> Engine:
    return Engine(bundle_of(policy), clock=lambda: clock)


def request(bundle: Bundle, **data: Any) -> Request:
    data.setdefault("agent", {"id": "bot", "risk": "low", "status": "active"})
    return request_from_json(data, bundle.schema)


SHIPPED_POLICIES = Path(__file__).resolve().parent.parent / "policies"


@pytest.fixture(scope="module")
def server() -> Iterator[Any]:
    """The decision service on the shipped policies, on 127.0.0.1, for one test module."""
    from tests.servers import Server

    running = Server(Engine(load_directory(SHIPPED_POLICIES).bundle))
    yield running
    running.close()


@pytest.fixture(params=BACKENDS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty store, once per backend, for a test that opens it (perhaps
    more than once, or in another process) itself."""
    with store_url(request.param, tmp_path) as opened:
        yield opened


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """An empty store, once per backend (SQLite, PostgreSQL); a module may narrow it."""
    with opened_store(request.param, tmp_path) as opened:
        yield opened
