"""Replicas on one database: the change log goes onto the admin trail once, and a replica
takes over the job when the one running it stops."""

from __future__ import annotations

import json

import pytest

from issuer.store import Store, open_store
from pdp.audit.changes import ChangeAuditor
from pdp.audit.exclusive import Exclusive
from pdp.audit.query import verify_trail
from pdp.audit.writer import AuditWriter
from tests.test_directory import add_agent, eventually


class Replica:
    """What one ``tessera serve`` runs against the shared store for the admin trail."""

    def __init__(self, url: str) -> None:
        self.store = open_store(url)
        self.writer = AuditWriter(self.store)
        self.job = Exclusive(
            self.store, "admin-trail", lambda: ChangeAuditor(self.store, self.writer), retry=0.05
        )
        self.job.start()

    def close(self) -> None:
        self.job.stop()
        self.writer.close()
        self.store.close()


def admin_changes(store: Store) -> list[int]:
    return [json.loads(e.record)["change_seq"] for e in store.audit("admin")]


def test_two_replicas_put_each_change_on_the_admin_trail_once(url: str) -> None:
    first, second = Replica(url), Replica(url)
    try:
        assert (first.job.job is not None, second.job.job is not None) == (True, False)
        add_agent(first.store, "one")
        add_agent(second.store, "two")
        assert eventually(lambda: len(admin_changes(first.store)) >= 2)
        first.close()  # the second replica takes over, after the last change recorded
        assert eventually(lambda: second.job.job is not None)
        add_agent(second.store, "three")
        assert eventually(lambda: len(admin_changes(second.store)) >= 3)
        second.writer.flush()
        assert admin_changes(second.store) == [1, 2, 3]
        assert verify_trail(second.store, "admin") == (3, [])
    finally:
        second.close()
        if first.job.job is not None:
            first.close()


def test_a_job_that_fails_to_start_gives_the_lease_back(url: str) -> None:
    store = open_store(url)
    try:

        def broken() -> ChangeAuditor:
            raise RuntimeError("cannot start")

        with pytest.raises(RuntimeError, match="cannot start"):
            Exclusive(store, "admin-trail", broken).start()
        lease = store.lease("admin-trail")
        assert lease is not None
        lease.release()
    finally:
        store.close()


def test_a_released_lease_can_be_taken_again_at_once(url: str) -> None:
    first, second = open_store(url), open_store(url)
    try:
        for _ in range(20):
            lease = first.lease("admin-trail")
            assert lease is not None
            assert second.lease("admin-trail") is None
            lease.release()
            again = second.lease("admin-trail")
            assert again is not None
            again.release()
    finally:
        first.close()
        second.close()
