"""The identity store's contract, run against SQLite and PostgreSQL alike.

PostgreSQL tests connect to ``TESSERA_TEST_POSTGRES`` (default
``postgresql://postgres@127.0.0.1:5432/test``), each in a fresh schema dropped
afterwards (see tests/stores.py).
"""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from datetime import UTC, timedelta
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from issuer.store import (
    Conflict,
    MissingStore,
    NotFound,
    Record,
    Store,
    StoreError,
    Unstorable,
    VersionMismatch,
    open_store,
)
from tests.stores import POSTGRES_URL, admin_connection, postgres_schema

ADMIN = "admin@example.com"
AGENT = {"name": "bot", "labels": {"team": "payments"}}


@pytest.fixture
def postgres_store() -> Iterator[Store]:
    with postgres_schema() as url:
        opened = open_store(url)
        yield opened
        opened.close()


@contextmanager
def opened(url: str, create: bool = True) -> Iterator[Store]:
    second = open_store(url, create=create)
    try:
        yield second
    finally:
        second.close()


def create(store: Store, name: str, /, kind: str = "Agent", **unique: str) -> Record:
    return store.create(kind, {"name": name}, unique=unique, actor=ADMIN)


def in_a_moment(action: Callable[[], object], delay: float = 0.2) -> threading.Thread:
    """Run ``action`` on another thread after ``delay`` seconds."""

    def later() -> None:
        time.sleep(delay)
        action()

    thread = threading.Thread(target=later)
    thread.start()
    return thread


# --- create and get


def test_create_assigns_a_uuid_version_1_and_equal_utc_timestamps(store: Store) -> None:
    record = store.create("Agent", AGENT, unique={}, actor=ADMIN)

    assert str(uuid.UUID(record.id)) == record.id
    assert record.kind == "Agent"
    assert record.version == 1
    assert record.data == AGENT
    assert record.created == record.modified
    assert record.created.utcoffset() == timedelta(0)
    assert record.created.tzinfo is UTC


def test_create_assigns_a_new_id_each_time(store: Store) -> None:
    assert create(store, "a").id != create(store, "b").id


def test_get_returns_what_create_returned(store: Store) -> None:
    record = store.create("Agent", AGENT, unique={"name": "bot"}, actor=ADMIN)

    fetched = store.get("Agent", record.id)

    assert fetched == record
    assert fetched.created.tzinfo is UTC


def test_get_of_an_unknown_id_raises_not_found(store: Store) -> None:
    with pytest.raises(NotFound):
        store.get("Agent", str(uuid.uuid4()))


@pytest.mark.parametrize(
    "data", [{"name": "a\x00b"}, {"labels": {"te\x00am": "x"}}, {"tags": ["ok", "\x00"]}]
)
def test_a_document_with_a_nul_character_is_refused_on_every_backend(
    store: Store, data: dict[str, Any]
) -> None:
    with pytest.raises(Unstorable, match="NUL"):
        store.create("Agent", data, unique={}, actor=ADMIN)
    record = store.create("Agent", AGENT, unique={}, actor=ADMIN)
    with pytest.raises(Unstorable, match="NUL"):
        store.replace("Agent", record.id, data, unique={}, expected_version=None, actor=ADMIN)
    assert store.list("Agent") == [record]


def test_the_text_backslash_u0000_is_not_a_nul_character(store: Store) -> None:
    record = store.create("Agent", {"name": "\\u0000"}, unique={}, actor=ADMIN)
    assert store.get("Agent", record.id).data == {"name": "\\u0000"}


def test_a_unique_value_with_a_nul_or_too_long_to_index_is_refused(store: Store) -> None:
    with pytest.raises(Unstorable, match="name: text with a NUL"):
        store.create("Agent", AGENT, unique={"name": "bot\x00"}, actor=ADMIN)
    with pytest.raises(Unstorable, match="name is longer than 1,024 bytes"):
        store.create("Agent", AGENT, unique={"name": "é" * 513}, actor=ADMIN)
    store.create("Agent", AGENT, unique={"name": "é" * 512}, actor=ADMIN)  # 1,024 bytes


def test_an_id_or_unique_value_with_a_nul_character_is_found_nowhere(store: Store) -> None:
    record = store.create("Agent", AGENT, unique={"name": "bot"}, actor=ADMIN)
    with pytest.raises(NotFound):
        store.get("Agent", record.id + "\x00")
    with pytest.raises(NotFound):
        store.find("Agent", "name", "bot\x00")
    with pytest.raises(NotFound):
        store.delete("Agent", "\x00", expected_version=None, actor=ADMIN)
    assert store.history("Agent", "\x00") == []


def test_get_with_the_wrong_kind_raises_not_found(store: Store) -> None:
    record = create(store, "bot")

    with pytest.raises(NotFound):
        store.get("User", record.id)


def test_stored_document_is_not_affected_by_later_changes_to_the_caller_dict(
    store: Store,
) -> None:
    data: dict[str, Any] = {"name": "bot", "scopes": ["read"]}
    record = store.create("Agent", data, unique={}, actor=ADMIN)

    data["scopes"].append("write")
    record.data["name"] = "changed"

    assert store.get("Agent", record.id).data == {"name": "bot", "scopes": ["read"]}


def test_documents_round_trip_as_json(store: Store) -> None:
    data = {
        "displayName": "Zoë 機械 🤖",
        "nested": {"deeper": {"list": [1, 2.5, "three", None, True, False, {"k": []}]}},
        "emails": [{"value": "zoë@example.com", "primary": True}],
        "quote": 'it\'s "quoted" \\ and ? and %s',
        "empty": {},
        "big": 2**53,
    }

    record = store.create("User", data, unique={}, actor=ADMIN)

    assert store.get("User", record.id).data == data
    assert store.history("User", record.id)[0].data == data


# --- list


def test_list_returns_one_kind_oldest_first(store: Store) -> None:
    first = create(store, "first")
    create(store, "someone", kind="User")
    second = create(store, "second")
    third = create(store, "third")
    store.replace(
        "Agent", first.id, {"name": "first, again"}, unique={}, expected_version=1, actor=ADMIN
    )

    assert [r.id for r in store.list("Agent")] == [first.id, second.id, third.id]
    assert [r.data["name"] for r in store.list("User")] == ["someone"]


def test_list_of_a_kind_without_resources_is_empty(store: Store) -> None:
    create(store, "bot")

    assert store.list("Group") == []


# --- replace


def test_replace_bumps_the_version_keeps_created_and_updates_modified(store: Store) -> None:
    record = create(store, "bot")

    replaced = store.replace(
        "Agent", record.id, {"name": "bot-2"}, unique={}, expected_version=1, actor=ADMIN
    )

    assert replaced.version == 2
    assert replaced.data == {"name": "bot-2"}
    assert replaced.created == record.created
    assert replaced.modified > record.modified
    assert replaced.modified.tzinfo is UTC
    assert store.get("Agent", record.id) == replaced


def test_replace_without_expected_version_always_applies(store: Store) -> None:
    record = create(store, "bot")
    store.replace("Agent", record.id, {"name": "v2"}, unique={}, expected_version=None, actor=ADMIN)

    replaced = store.replace(
        "Agent", record.id, {"name": "v3"}, unique={}, expected_version=None, actor=ADMIN
    )

    assert replaced.version == 3
    assert store.get("Agent", record.id).data == {"name": "v3"}


def test_replace_with_stale_version_changes_nothing(store: Store) -> None:
    record = create(store, "bot", name="bot")
    current = store.replace(
        "Agent",
        record.id,
        {"name": "bot-2"},
        unique={"name": "bot-2"},
        expected_version=1,
        actor=ADMIN,
    )
    seq = store.last_change()

    with pytest.raises(VersionMismatch) as raised:
        store.replace(
            "Agent",
            record.id,
            {"name": "bot-3"},
            unique={"name": "bot-3"},
            expected_version=1,
            actor=ADMIN,
        )

    assert (raised.value.expected, raised.value.actual) == (1, 2)
    assert store.get("Agent", record.id) == current
    assert store.last_change() == seq
    create(store, "other", name="bot-3")  # the value the failed replace wanted is still free


def test_replace_of_an_unknown_id_raises_not_found_and_logs_nothing(store: Store) -> None:
    with pytest.raises(NotFound):
        store.replace(
            "Agent",
            str(uuid.uuid4()),
            {"name": "x"},
            unique={},
            expected_version=None,
            actor=ADMIN,
        )

    assert store.last_change() == 0


# --- unique values


def test_create_with_a_taken_unique_value_conflicts_and_stores_nothing(store: Store) -> None:
    taken = create(store, "bot", name="bot", client="c1")
    seq = store.last_change()

    with pytest.raises(Conflict) as raised:
        create(store, "other", name="other", client="c1")

    assert (raised.value.attribute, raised.value.value) == ("client", "c1")
    assert store.list("Agent") == [taken]
    assert store.last_change() == seq
    create(store, "other", name="other")  # "other" was not claimed by the failed create


def test_unique_values_are_per_kind_and_per_attribute(store: Store) -> None:
    create(store, "x", kind="Agent", name="x")

    create(store, "x", kind="User", name="x")
    create(store, "x", kind="Agent", displayName="x")

    assert len(store.list("Agent")) == 2


def test_replace_to_a_taken_unique_value_conflicts_and_changes_nothing(store: Store) -> None:
    holder = create(store, "alice", name="alice")
    mover = create(store, "bob", name="bob")
    seq = store.last_change()

    with pytest.raises(Conflict) as raised:
        store.replace(
            "Agent",
            mover.id,
            {"name": "alice"},
            unique={"name": "alice"},
            expected_version=1,
            actor=ADMIN,
        )

    assert raised.value.attribute == "name"
    assert store.list("Agent") == [holder, mover]
    assert store.last_change() == seq
    with pytest.raises(Conflict):
        create(store, "bob again", name="bob")  # mover still holds its old value


def test_replace_may_keep_its_own_unique_value(store: Store) -> None:
    record = create(store, "bot", name="bot")

    replaced = store.replace(
        "Agent",
        record.id,
        {"name": "bot", "note": "x"},
        unique={"name": "bot"},
        expected_version=1,
        actor=ADMIN,
    )

    assert replaced.version == 2
    with pytest.raises(Conflict):
        create(store, "bot", name="bot")


def test_replace_releases_unique_values_it_changes_or_drops(store: Store) -> None:
    record = create(store, "bot", name="bot", client="c1")

    store.replace(
        "Agent",
        record.id,
        {"name": "bot-2"},
        unique={"name": "bot-2"},
        expected_version=1,
        actor=ADMIN,
    )

    create(store, "new", name="bot", client="c1")
    with pytest.raises(Conflict):
        create(store, "newer", name="bot-2")


def test_delete_frees_the_unique_values(store: Store) -> None:
    record = create(store, "bot", name="bot")

    store.delete("Agent", record.id, expected_version=None, actor=ADMIN)

    assert create(store, "bot", name="bot").version == 1


def test_concurrent_creates_of_one_unique_value_admit_exactly_one(store: Store) -> None:
    outcomes: list[str] = []

    def attempt(n: int) -> None:
        try:
            create(store, f"bot-{n}", name="bot")
            outcomes.append("created")
        except Conflict:
            outcomes.append("conflict")

    threads = [threading.Thread(target=attempt, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(outcomes) == ["conflict"] * 7 + ["created"]
    assert len(store.list("Agent")) == 1


# --- delete and the change log


def test_delete_removes_the_resource_but_keeps_its_history(store: Store) -> None:
    record = store.create("Agent", {"name": "bot"}, unique={}, actor="alice")
    store.replace("Agent", record.id, {"name": "bot-2"}, unique={}, expected_version=1, actor="bob")

    store.delete("Agent", record.id, expected_version=2, actor="carol")

    with pytest.raises(NotFound):
        store.get("Agent", record.id)
    assert store.list("Agent") == []
    history = store.history("Agent", record.id)
    assert [(c.op, c.actor, c.version, c.data) for c in history] == [
        ("create", "alice", 1, {"name": "bot"}),
        ("replace", "bob", 2, {"name": "bot-2"}),
        ("delete", "carol", 2, None),
    ]
    assert all(c.kind == "Agent" and c.id == record.id for c in history)
    assert [c.seq for c in history] == sorted({c.seq for c in history})
    assert all(c.at.tzinfo is UTC for c in history)
    assert history[0].at == record.created
    assert store.changes(0) == history


def test_delete_with_stale_version_changes_nothing(store: Store) -> None:
    record = create(store, "bot")
    seq = store.last_change()

    with pytest.raises(VersionMismatch):
        store.delete("Agent", record.id, expected_version=7, actor=ADMIN)

    assert store.get("Agent", record.id) == record
    assert store.last_change() == seq


def test_delete_of_an_unknown_id_raises_not_found(store: Store) -> None:
    with pytest.raises(NotFound):
        store.delete("Agent", str(uuid.uuid4()), expected_version=None, actor=ADMIN)


def test_history_of_one_resource_leaves_out_the_others(store: Store) -> None:
    mine = create(store, "mine")
    create(store, "other")
    create(store, "someone", kind="User")

    assert [c.id for c in store.history("Agent", mine.id)] == [mine.id]
    assert store.history("User", mine.id) == []


def test_last_change_is_0_on_an_empty_store(store: Store) -> None:
    assert store.last_change() == 0
    assert store.changes(0) == []


def test_changes_after_since_come_oldest_first_up_to_limit(store: Store) -> None:
    records = [create(store, f"bot-{n}") for n in range(5)]
    everything = store.changes(0)

    assert [c.id for c in everything] == [r.id for r in records]
    seqs = [c.seq for c in everything]
    assert seqs == sorted(set(seqs))
    assert store.last_change() == seqs[-1]
    assert store.changes(seqs[1], limit=2) == everything[2:4]
    assert store.changes(seqs[-1]) == []
    assert store.changes(0, limit=0) == []


def test_every_write_appends_exactly_one_change(store: Store) -> None:
    record = create(store, "bot")
    after_create = store.last_change()
    store.replace("Agent", record.id, {"name": "v2"}, unique={}, expected_version=1, actor=ADMIN)
    after_replace = store.last_change()
    store.delete("Agent", record.id, expected_version=2, actor=ADMIN)

    assert [c.op for c in store.changes(0)] == ["create", "replace", "delete"]
    assert 0 < after_create < after_replace < store.last_change()


# --- put and page: resources whose ids the caller names


def test_put_creates_replaces_and_deletes_in_one_go_and_logs_each_change(store: Store) -> None:
    assert store.put("Entry", {"a/1": {"n": 1}, "a/2": {"n": 2}}, actor=ADMIN) == 2
    assert store.put("Entry", {"a/1": {"n": 10}, "a/2": None, "a/3": {}}, actor=ADMIN) == 3
    assert store.get("Entry", "a/1").data == {"n": 10}
    assert store.get("Entry", "a/1").version == 2
    with pytest.raises(NotFound):
        store.get("Entry", "a/2")
    ops = [(c.op, c.id, c.version, c.actor) for c in store.changes(0)]
    assert ops == [
        ("create", "a/1", 1, ADMIN),
        ("create", "a/2", 1, ADMIN),
        ("replace", "a/1", 2, ADMIN),
        ("delete", "a/2", 1, ADMIN),
        ("create", "a/3", 1, ADMIN),
    ]


def test_put_of_what_is_stored_changes_nothing(store: Store) -> None:
    store.put("Entry", {"a/1": {"n": 1, "tags": ["x"]}}, actor=ADMIN)
    seq = store.last_change()
    assert store.put("Entry", {"a/1": {"tags": ["x"], "n": 1}, "a/9": None}, actor=ADMIN) == 0
    assert store.last_change() == seq
    assert store.get("Entry", "a/1").version == 1


def test_put_with_an_unstorable_document_writes_none_of_the_batch(store: Store) -> None:
    with pytest.raises(Unstorable):
        store.put("Entry", {"a/1": {"n": 1}, "a/2": {"text": "nul\x00"}}, actor=ADMIN)
    with pytest.raises(Unstorable):
        store.put("Entry", {"a/\x00": {"n": 1}}, actor=ADMIN)
    assert store.list("Entry") == []
    assert store.last_change() == 0


def test_page_lists_the_ids_with_a_prefix_in_order_after_a_cursor(store: Store) -> None:
    ids = ["record/3", "record/10", "record/2", "record0", "recordx/1", "doc/1", "record/é"]
    store.put("Entry", {id: {"id": id} for id in ids}, actor=ADMIN)
    first = store.page("Entry", "record/", "", 2)
    assert [r.id for r in first] == ["record/10", "record/2"]
    rest = store.page("Entry", "record/", first[-1].id, 10)
    assert [r.id for r in rest] == ["record/3", "record/é"]
    assert store.page("Entry", "record/", "record/é", 10) == []
    assert store.page("Other", "record/", "", 10) == []
    assert store.page("Entry", "record/", "\x00", 10) == []


# --- waiting for changes


def test_wait_for_change_returns_promptly_when_another_thread_changes(store: Store) -> None:
    since = store.last_change()
    thread = in_a_moment(lambda: create(store, "bot"))
    started = time.monotonic()

    seq = store.wait_for_change(since, timeout=10)

    elapsed = time.monotonic() - started
    thread.join()
    assert seq > since
    assert seq == store.last_change()
    assert elapsed < 5


def test_wait_for_change_returns_the_unchanged_seq_after_the_timeout(store: Store) -> None:
    create(store, "bot")
    since = store.last_change()
    started = time.monotonic()

    seq = store.wait_for_change(since, timeout=0.3)

    elapsed = time.monotonic() - started
    assert seq == since
    assert 0.25 <= elapsed < 5


def test_wait_for_change_returns_at_once_when_a_newer_change_exists(store: Store) -> None:
    create(store, "bot")
    started = time.monotonic()

    seq = store.wait_for_change(0, timeout=10)

    assert seq == store.last_change()
    assert time.monotonic() - started < 2


def test_wait_for_change_can_be_called_again_and_again(store: Store) -> None:
    since = store.last_change()
    for n in range(3):
        thread = in_a_moment(partial(create, store, f"bot-{n}"), delay=0.05)
        seq = store.wait_for_change(since, timeout=10)
        thread.join()
        assert seq > since
        since = seq
    assert store.wait_for_change(since, timeout=0.1) == since


# --- several store objects, reopening


def test_a_second_store_sees_the_first_stores_changes(store: Store) -> None:
    with opened(store.url) as replica:
        since = replica.last_change()
        thread = in_a_moment(lambda: create(store, "bot", name="bot"))

        seq = replica.wait_for_change(since, timeout=10)

        thread.join()
        assert seq > since
        (change,) = replica.changes(since)
        assert replica.get("Agent", change.id).data == {"name": "bot"}
        with pytest.raises(Conflict):
            create(replica, "bot", name="bot")


def test_reopening_keeps_the_data_and_migrations_are_idempotent(store: Store) -> None:
    record = create(store, "bot", name="bot")
    store.close()

    with opened(store.url) as again, opened(store.url) as once_more:
        assert again.get("Agent", record.id) == record
        assert once_more.list("Agent") == [record]
        assert once_more.last_change() == again.last_change() > 0


def test_a_closed_store_raises_store_error(store: Store) -> None:
    store.close()

    with pytest.raises(StoreError):
        store.last_change()


# --- URLs


@pytest.mark.parametrize("url", ["mysql://localhost/db", "tessera.db", ""])
def test_open_store_rejects_an_unknown_url(url: str) -> None:
    with pytest.raises(StoreError):
        open_store(url)


def test_sqlite_relative_url_creates_parent_directories(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)

    with opened("sqlite:///var/deep/tessera.db") as relative:
        create(relative, "bot")

    assert (tmp_path / "var" / "deep" / "tessera.db").is_file()


def test_sqlite_absolute_url_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "abs.db"

    with opened(f"sqlite:///{path}") as absolute:
        create(absolute, "bot")

    assert path.is_file()


def test_sqlite_memory_url_keeps_data_for_the_store_lifetime() -> None:
    with opened("sqlite:///:memory:") as memory:
        record = create(memory, "bot")
        assert memory.get("Agent", record.id) == record


def test_sqlite_url_without_a_path_is_rejected() -> None:
    with pytest.raises(StoreError):
        open_store("sqlite://")


# --- opening existing stores only


def test_an_existing_store_only_opens_what_is_there(url: str) -> None:
    """``create=False``: a URL naming no store is refused, and nothing is made there;
    once a store is made, it opens with its data."""
    with pytest.raises(MissingStore) as refused:
        open_store(url, create=False)
    assert str(refused.value).startswith(f"no store at {url}: ")
    with opened(url) as made:
        agent = create(made, "bot")
    with opened(url, create=False) as existing:
        assert existing.get("Agent", agent.id) == agent


def test_an_existing_sqlite_store_only_leaves_a_missing_path_alone(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/var/tessera.db"
    with pytest.raises(MissingStore) as refused:
        open_store(url, create=False)
    assert str(refused.value) == (
        f"no store at {url}: the file {tmp_path}/var/tessera.db does not exist"
    )
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(MissingStore):
        open_store("sqlite:///:memory:", create=False)


def test_an_existing_sqlite_store_only_refuses_a_file_that_is_not_one(tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    with closing(sqlite3.connect(other)) as db:
        db.execute("CREATE TABLE notes (text TEXT)")
    before = other.read_bytes()
    with pytest.raises(MissingStore, match=r"other\.db has no Tessera tables"):
        open_store(f"sqlite:///{other}", create=False)
    assert other.read_bytes() == before  # not even switched to WAL
    assert [p.name for p in tmp_path.iterdir()] == ["other.db"]


# --- PostgreSQL only


def test_postgres_url_with_a_missing_schema_is_rejected() -> None:
    admin_connection().close()
    missing = quote(f"-c search_path=t_missing_{uuid.uuid4().hex}")

    with pytest.raises(StoreError):
        open_store(f"{POSTGRES_URL}?options={missing}")


def test_postgres_unreachable_server_fails_with_store_error() -> None:
    with pytest.raises(StoreError):
        open_store("postgresql://postgres@127.0.0.1:1/test?connect_timeout=2")


def test_postgres_stores_in_other_schemas_do_not_wake_each_other(postgres_store: Store) -> None:
    with postgres_schema() as other_url, opened(other_url) as other:
        since = postgres_store.last_change()
        thread = in_a_moment(lambda: create(other, "bot"), delay=0.05)

        seq = postgres_store.wait_for_change(since, timeout=0.5)

        thread.join()
        assert seq == since == 0
        assert other.last_change() > 0
        assert postgres_store.list("Agent") == []


def _terminate(store: Store, *, only_listener: bool = False) -> None:
    """Make the server drop the store's connections (or only its LISTEN connection)."""
    name = dict(part.split("=", 1) for part in store.url.split("?", 1)[1].split("&"))
    with admin_connection() as admin:
        rows = admin.execute(
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity"
            " WHERE application_name = %s AND (NOT %s OR query LIKE 'LISTEN%%')",
            (name["application_name"], only_listener),
        ).fetchall()
    assert rows and all(ok for (ok,) in rows)


def test_postgres_dropped_connection_fails_with_store_error_then_reconnects(
    postgres_store: Store,
) -> None:
    record = create(postgres_store, "bot")
    _terminate(postgres_store)

    with pytest.raises(StoreError):
        postgres_store.get("Agent", record.id)

    assert postgres_store.get("Agent", record.id) == record


def test_postgres_dropped_listener_fails_with_store_error_then_listens_again(
    postgres_store: Store,
) -> None:
    since = postgres_store.wait_for_change(0, timeout=0.01)
    _terminate(postgres_store, only_listener=True)
    started = time.monotonic()

    with pytest.raises(StoreError):
        postgres_store.wait_for_change(since, timeout=10)

    assert time.monotonic() - started < 5
    thread = in_a_moment(lambda: create(postgres_store, "bot"))
    assert postgres_store.wait_for_change(since, timeout=10) > since
    thread.join()


def test_find_looks_a_resource_up_by_a_unique_value(store: Store) -> None:
    made = store.create("Client", {"n": 1}, unique={"client_id": "abc"}, actor=ADMIN)
    store.create("Client", {"n": 2}, unique={"client_id": "xyz"}, actor=ADMIN)
    assert store.find("Client", "client_id", "abc") == made
    with pytest.raises(NotFound):
        store.find("Client", "client_id", "nope")
    with pytest.raises(NotFound):
        store.find("Agent", "client_id", "abc")
    store.delete("Client", made.id, expected_version=None, actor=ADMIN)
    with pytest.raises(NotFound):
        store.find("Client", "client_id", "abc")
