"""The SCIM service passes scim2-tester's conformance checks, on SQLite and PostgreSQL.

scim2-tester discovers the service (ServiceProviderConfig, ResourceTypes, Schemas), then
creates, reads, replaces, patches and deletes a resource of every type. Every check must
end in :attr:`Status.SUCCESS`: the weaker verdicts (COMPLIANT, ACCEPTABLE, DEVIATION)
fail too, and so does SKIPPED, since the checker only skips what the service does not
offer (PATCH, here advertised) or what a filter left out (none is given).
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx2
import pytest
from scim2_client.engines.httpx2 import SyncSCIMClient
from scim2_tester import CheckResult, Status, check_server

from tests.issuer.conftest import TIMEOUT, Service

RESOURCE_TYPES = {"Agent", "User", "Group"}
PATCH_TAGS = {"patch:add", "patch:remove", "patch:replace"}
CRUD_TAGS = {"crud:create", "crud:read", "crud:read:attributes", "crud:update", "crud:delete"}


@pytest.fixture(scope="module")
def client(service: Service) -> Iterator[SyncSCIMClient]:
    """A scim2-client that learnt the service from its discovery endpoints."""
    with httpx2.Client(
        base_url=service.base,
        headers={"Authorization": f"Bearer {service.token}"},
        timeout=TIMEOUT,
    ) as http:
        scim = SyncSCIMClient(http)
        scim.discover()
        yield scim


@pytest.fixture(scope="module")
def results(client: SyncSCIMClient) -> list[CheckResult]:
    return check_server(client)


def describe(results: list[CheckResult]) -> str:
    return "\n".join(
        f"{result.status.name} {result.resource_type or '-'} {result.title}: {result.reason}"
        for result in results
    )


def test_every_check_succeeds(results: list[CheckResult]) -> None:
    assert results
    failures = [result for result in results if result.status != Status.SUCCESS]
    assert not failures, f"{len(failures)} of {len(results)} checks failed:\n" + describe(failures)


def test_the_service_is_described_by_its_own_discovery(client: SyncSCIMClient) -> None:
    config = client.provider.config
    assert config is not None
    assert config.patch is not None and config.patch.supported
    names = {resource_type.name for resource_type in client.provider.resource_types}
    assert names == RESOURCE_TYPES


def test_discovery_endpoints_are_checked(results: list[CheckResult]) -> None:
    tags = set().union(*(result.tags for result in results if result.resource_type is None))
    assert {"service-provider-config", "resource-types", "schemas", "misc"} <= tags


@pytest.mark.parametrize("resource_type", sorted(RESOURCE_TYPES))
def test_every_resource_type_is_checked_for_crud_and_the_advertised_patch(
    results: list[CheckResult], resource_type: str
) -> None:
    mine = [result for result in results if result.resource_type == resource_type]
    tags = set().union(*(result.tags for result in mine))
    assert tags >= CRUD_TAGS | PATCH_TAGS, sorted(tags)
    assert all(result.status == Status.SUCCESS for result in mine), describe(mine)
