"""The resource catalog in the decision plane: bundle files typed by the schema, entries
filling the attributes a request does not send, the store's entries over the bundle's."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from issuer.catalog import CATALOG, MAX_FILE_ENTRIES
from issuer.store import Store
from pdp.decide import DecisionPoint
from pdp.directory import Directory
from pdp.engine import Engine
from pdp.lang.errors import PolicyError
from pdp.lang.values import Money
from pdp.loader import load_directory, load_texts
from pdp.model import Request
from pdp.policytest import run_tests
from pdp.serve.sources import DirectorySource
from tests.test_directory import add_agent

SCHEMA = """
schema {
  agent { owner: string, status: string }
  resource record { title: string, department: string, owner: string, budget: money,
                    tags: set<string> }
}
"""
RULES = """
package records

permit owner_views
  action "view" on record
  when resource.owner == agent.owner

permit legal_reads
  action "read" on record
  when resource.department == "Legal"

forbid frozen_edits
  action "edit" on record
  when resource has tags and resource.tags contains "frozen"
"""
RECORDS = [
    {
        "type": "record",
        "id": "101",
        "properties": {"title": "Hamlet", "department": "Legal", "owner": "alice"},
    },
    {
        "type": "record",
        "id": "102",
        "properties": {"title": "Lear", "department": "Sales", "owner": "bob", "budget": "5 EUR"},
    },
    {"type": "record", "id": "103", "properties": {"owner": "alice", "tags": ["frozen"]}},
]


def texts(records: Any = RECORDS, **more: str) -> dict[str, str]:
    return {
        "schema.pol": SCHEMA,
        "records.pol": RULES,
        "records.resources.json": records if isinstance(records, str) else json.dumps(records),
        **more,
    }


def refusal(records: Any) -> str:
    with pytest.raises(PolicyError) as refused:
        load_texts(texts(records))
    return str(refused.value)


def asking(action: str, record: str, agent_owner: str = "alice", **resource: Any) -> Request:
    return Request.build(
        agent={"id": "bot", "owner": agent_owner},
        action=action,
        resource_type="record",
        resource_id=record,
        resource=resource,
    )


# -- the bundle's files


def test_the_bundles_entries_are_typed_by_the_schema() -> None:
    bundle = load_texts(texts()).bundle
    assert bundle.catalog["record"]["101"] == {
        "type": "record",
        "id": "101",
        "title": "Hamlet",
        "department": "Legal",
        "owner": "alice",
    }
    assert bundle.catalog["record"]["102"]["budget"] == Money(Decimal(5), "EUR")
    assert bundle.catalog["record"]["103"]["tags"] == frozenset({"frozen"})


def test_a_property_of_the_wrong_type_refuses_the_bundle_naming_file_entry_and_property() -> None:
    records = json.dumps([*RECORDS[:1], {"type": "record", "id": "7", "properties": {"owner": 7}}])
    said = refusal(records)
    assert "records.resources.json:1:" in said
    assert "entry 2: record '7': resource.owner: expected a string, got the number 7" in said


def test_a_property_the_schema_does_not_declare_for_the_type_refuses_the_bundle() -> None:
    said = refusal([{"type": "record", "id": "7", "properties": {"colour": "red"}}])
    assert "entry 1: record '7': resource.colour: the schema declares no colour for record" in said
    said = refusal([{"type": "table", "id": "t", "properties": {"owner": "alice"}}])
    assert "resource.owner: the schema declares no owner for table" in said


def test_an_entry_described_twice_refuses_the_bundle() -> None:
    said = refusal(json.dumps([*RECORDS, RECORDS[0]], indent=1))
    assert "entry 4: record '101' is described twice; first at records.resources.json:2:2" in said


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '{"type": "record"}',
            "records.resources.json:1:1: error: a resources file is a JSON array",
        ),
        ('[{"type": "record", "id": "1"},\n oops]', ":2:2: error: not JSON: Expecting value"),
        ('[{"type": "record", "id": "1"} {}]', ":1:32: error: expected , or ] after an entry"),
        ('[{"type": "record", "id": "1", "properties": {"owner": NaN}}]', "NaN is not a JSON"),
        ("[] []", ":1:4: error: text after the array"),
        ('[{"type": "re cord", "id": "1"}]', "entry 1: type: a resource type as policies name it"),
        ('[{"type": "record", "id": ""}]', "entry 1: id: required, a non-empty string"),
        ('[{"type": "record", "id": "1", "owner": "x"}]', "entry 1: owner: unknown"),
        ('[{"type": "record", "id": "1", "properties": {"id": "2"}}]', "properties.id: a prop"),
        ('[{"type": "record", "id": "1", "properties": {"owner": null}}]', "null is not a value"),
    ],
)
def test_a_file_that_is_not_an_array_of_entries_refuses_the_bundle(text: str, message: str) -> None:
    assert message in refusal(text)


def test_a_file_holds_a_bounded_number_of_entries() -> None:
    many = [{"type": "record", "id": str(n)} for n in range(MAX_FILE_ENTRIES)]
    assert len(load_texts(texts(many)).bundle.catalog["record"]) == MAX_FILE_ENTRIES
    said = refusal([*many, {"type": "record", "id": "one-more"}])
    assert f"over the {MAX_FILE_ENTRIES:,} entries a resources file may hold" in said


def test_the_bundle_version_changes_with_its_resources_files(tmp_path: Path) -> None:
    for name, text in texts().items():
        (tmp_path / name).write_text(text)
    source = DirectorySource(tmp_path)
    first = source.load_first().bundle
    (tmp_path / "more").mkdir()
    (tmp_path / "more" / "extra.resources.json").write_text('[{"type": "record", "id": "9"}]')
    again = source.load()
    assert again is not None  # the fingerprint covers resources files, below the root too
    assert again.bundle.version != first.version
    assert set(again.bundle.catalog["record"]) == {"101", "102", "103", "9"}


# -- deciding with the catalog


def test_an_attribute_the_request_does_not_send_comes_from_the_catalog() -> None:
    point = DecisionPoint(Engine(load_texts(texts()).bundle))
    assert point.preview(asking("view", "101")).allow  # alice owns 101
    assert not point.preview(asking("view", "102")).allow  # bob owns 102
    assert point.preview(asking("read", "101", agent_owner="carol")).allow  # Legal's
    assert not point.preview(asking("edit", "103")).allow  # frozen


def test_what_the_request_sends_wins_over_the_catalog() -> None:
    point = DecisionPoint(Engine(load_texts(texts()).bundle))
    # bob owns 102 in the catalog; a request saying carol does is decided on carol
    assert point.preview(asking("view", "102", agent_owner="carol", owner="carol")).allow
    assert not point.preview(asking("view", "102", owner="carol")).allow


def test_a_resource_the_catalog_does_not_hold_is_decided_as_sent() -> None:
    point = DecisionPoint(Engine(load_texts(texts()).bundle))
    missing = point.preview(asking("view", "999"))
    assert not missing.allow
    assert "resource.owner" in missing.errors[0].message  # the permit could not read it
    assert point.preview(asking("view", "999", agent_owner="dan", owner="dan")).allow


def test_policy_tests_read_the_bundles_catalog() -> None:
    test = """
test "alice views what she owns and not what bob does" {
  agent { id: "bot", owner: "alice" }
  action "view" on record "101"
  expect allow
  action "view" on record "102"
  expect deny
}
"""
    results = run_tests(load_texts(texts(**{"t.pol": "package records\n" + test})).bundle)
    assert [result.failure for result in results] == [None]


# -- the store's entries, followed through the directory


def put(store: Store, rtype: str, id: str, **properties: Any) -> None:
    document = {"type": rtype, "id": id, "properties": properties}
    store.put(CATALOG, {f"{rtype}/{id}": document}, actor="admin")


def delete(store: Store, rtype: str, id: str) -> None:
    store.put(CATALOG, {f"{rtype}/{id}": None}, actor="admin")


def stored_point(store: Store) -> tuple[DecisionPoint, Directory, str]:
    agent = add_agent(store, "bot", owner="alice")
    directory = Directory(store)
    directory.load()
    return DecisionPoint(Engine(load_texts(texts()).bundle), directory=directory), directory, agent


def view(point: DecisionPoint, agent: str, record: str) -> Any:
    request = Request.build(
        agent={"id": agent}, action="view", resource_type="record", resource_id=record
    )
    return asyncio.run(point.decide(request, key=("view", record))).decision


def test_a_stored_entry_takes_the_place_of_the_bundles_and_its_deletion_brings_it_back(
    store: Store,
) -> None:
    point, directory, agent = stored_point(store)
    assert view(point, agent, "101").allow
    assert view(point, agent, "101").allow  # remembered
    put(store, "record", "101", owner="bob")  # the whole entry: no title, no department
    directory.refresh()
    assert not view(point, agent, "101").allow  # the cached allow was forgotten
    delete(store, "record", "101")
    directory.refresh()
    assert view(point, agent, "101").allow
    put(store, "record", "500", owner="alice")
    directory.refresh()
    assert view(point, agent, "500").allow
    assert point.resources.ids("record") == ["101", "102", "103", "500"]


def test_a_stored_entry_that_does_not_fit_the_schema_refuses_the_request(store: Store) -> None:
    point, directory, agent = stored_point(store)
    put(store, "record", "101", owner=["alice"])  # written before the schema said string
    directory.refresh()
    refused = view(point, agent, "101")
    assert not refused.allow
    assert refused.decided_by == ("directory",)
    assert refused.reasons == (
        "the catalog's entry for record '101' does not fit the policy schema: "
        "resource.owner: expected a string, got a list",
    )


def test_the_directory_loads_the_stored_entries(store: Store) -> None:
    put(store, "record", "7", owner="carol")
    put(store, "doc", "x")
    delete(store, "doc", "x")
    directory = Directory(store)
    directory.load()
    assert directory.catalog.by_type == {"record": {"7": {"owner": "carol"}}}


def test_a_catalog_file_in_a_policy_directory_is_part_of_the_bundle(tmp_path: Path) -> None:
    for name, text in texts().items():
        (tmp_path / name).write_text(text)
    assert set(load_directory(tmp_path).bundle.catalog["record"]) == {"101", "102", "103"}


def test_the_admin_servers_simulation_reads_the_catalog_and_versions_as_the_pdp(
    tmp_path: Path, store: Store
) -> None:
    from pep.admin_mcp.policies import Policies

    for name, text in texts().items():
        (tmp_path / name).write_text(text)
    policies = Policies(tmp_path)
    assert policies.current().bundle.version == load_directory(tmp_path).bundle.version
    viewing = {"agent": {"id": "bot", "owner": "alice"}, "action": "view"}
    mine = policies.simulate({**viewing, "resource": {"type": "record", "id": "101"}})
    assert mine["decision"] == "allow"
    _, directory, agent = stored_point(store)
    put(store, "record", "101", owner="bob")
    directory.refresh()
    taken = {"agent": {"id": agent}, "action": "view", "resource": {"type": "record", "id": "101"}}
    assert policies.simulate(taken, directory=directory)["decision"] == "deny"


def test_a_resources_file_of_a_bundle_of_its_own_stays_out(tmp_path: Path) -> None:
    for name, text in texts().items():
        (tmp_path / name).write_text(text)
    inner = tmp_path / "examples" / "search"
    inner.mkdir(parents=True)
    (inner / "bundle.toml").write_text("")
    (inner / "other.resources.json").write_text('[{"type": "table", "id": "t"}]')
    assert set(load_directory(tmp_path).bundle.catalog) == {"record"}


def test_an_attribute_only_the_catalog_sets_is_not_reported_unused() -> None:
    assert load_texts(texts()).warnings == ()
    unset = [{"type": "record", "id": "101", "properties": {"owner": "alice"}}]
    assert [w.message for w in load_texts(texts(unset)).warnings] == [
        "resource.title is declared but no rule reads it",
        "resource.budget is declared but no rule reads it",
    ]
