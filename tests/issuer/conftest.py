"""A real SCIM service on 127.0.0.1 for each store backend, shared by one test module.

The server runs in its own event loop thread (:class:`tests.servers.HttpServer`),
on a store from :func:`tests.stores.store_url`. Tests share it, so each one names its
resources uniquely (see :func:`unique`).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from issuer.app import issuer_app
from issuer.scim import BootstrapToken
from issuer.store import Store, open_store
from tests.servers import HttpServer
from tests.stores import BACKENDS, store_url

TOKEN = "test-admin-token-0123456789abcdef"
TIMEOUT = 10.0  # seconds, for starting and stopping the server and for each HTTP call


class ScimServer(HttpServer):
    """The issuer's HTTP application (SCIM) on a free port of 127.0.0.1."""

    def __init__(self, store: Store) -> None:
        super().__init__(lambda _port: issuer_app(store, BootstrapToken(TOKEN)))
        self.url = f"http://127.0.0.1:{self.port}"


@dataclass
class Service:
    """What a test talks to: the server's URLs, its store and an authorized client."""

    backend: str
    url: str  # e.g. http://127.0.0.1:PORT
    base: str  # the SCIM root, url + /scim/v2
    store: Store
    client: httpx.Client  # base_url is the SCIM root; sends the admin bearer token
    token: str = TOKEN


@pytest.fixture(scope="module", params=BACKENDS)
def service(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    """The SCIM service on a fresh store of each backend, for one test module."""
    backend: str = request.param
    with store_url(backend, tmp_path_factory.mktemp(backend)) as url:
        store = open_store(url)
        try:
            server = ScimServer(store)
            try:
                base = f"{server.url}/scim/v2"
                with httpx.Client(
                    base_url=base,
                    headers={"Authorization": f"Bearer {TOKEN}"},
                    timeout=TIMEOUT,
                ) as client:
                    yield Service(backend, server.url, base, store, client)
            finally:
                server.close()
        finally:
            store.close()


def unique(prefix: str) -> str:
    """A name no other test uses, e.g. ``pay-bot-1f3a…``."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"
