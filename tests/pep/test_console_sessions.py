"""The console's sessions in the store, on SQLite and PostgreSQL: known to every replica
while they last, and swept once expired, a few at each sign-in."""

from __future__ import annotations

import pytest

from issuer.store import Store, open_store
from pep.console.sessions import KIND, LIFETIME, Sessions


@pytest.fixture
def now(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The clock sessions are made, read and swept by, set by the test (``time.time``,
    which both modules read)."""
    now = [1_000_000.0]
    monkeypatch.setattr("pep.console.sessions.time.time", lambda: now[0])
    return now


def test_a_session_is_known_on_every_replica_until_it_expires(
    store: Store, now: list[float]
) -> None:
    session = Sessions(store).open("op-1", "Ops One")
    other = open_store(store.url)
    try:
        found = Sessions(other).find(session.id)
        assert found is not None and (found.operator, found.name) == ("op-1", "Ops One")
        assert found.checks(session.csrf)
        now[0] += LIFETIME
        assert Sessions(other).find(session.id) is None
    finally:
        other.close()


def test_a_sign_in_sweeps_expired_sessions_and_keeps_live_ones(
    store: Store, now: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    sessions = Sessions(store)
    for _ in range(4):
        sessions.open("op-1", "Ops One")
    now[0] += LIFETIME - 60
    live = sessions.open("op-2", "Ops Two")  # alive past the others' end
    now[0] += 61
    monkeypatch.setattr("issuer.oauth.stored.secrets.token_hex", lambda _: "")  # from the start
    kept = sessions.open("op-3", "Ops Three")
    assert len(store.list(KIND)) == 2
    assert [s.operator for s in (sessions.find(live.id), sessions.find(kept.id)) if s] == [
        "op-2",
        "op-3",
    ]
    swept = [c for c in store.changes(0) if c.kind == KIND and c.actor == "console"]
    assert len(swept) == 4
