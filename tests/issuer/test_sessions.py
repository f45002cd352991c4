"""People's sign-in sessions at the issuer, in the store, on SQLite and PostgreSQL: known
to every replica while they last, kept under a digest of the cookie, swept once expired."""

from __future__ import annotations

import pytest

from issuer.oauth.sessions import KIND, LIFETIME, Sessions
from issuer.oauth.stored import MAX_SECRET
from issuer.store import Store, open_store


def test_a_session_is_known_on_every_replica_until_it_expires(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [1_000_000.0]
    monkeypatch.setattr("issuer.oauth.sessions.time.time", lambda: now[0])
    session = Sessions(store).open("user-1")
    other = open_store(store.url)
    try:
        assert Sessions(other).user(session) == "user-1"
        now[0] += LIFETIME
        assert Sessions(other).user(session) is None
    finally:
        other.close()


def test_the_store_keeps_a_digest_of_the_cookie_and_odd_cookies_are_nobody(
    store: Store,
) -> None:
    sessions = Sessions(store)
    session = sessions.open("user-1")
    (record,) = store.list(KIND)
    assert session not in record.id and session not in str(record.data)
    for cookie in ("", "x" * (MAX_SECRET + 1), session[:-1]):
        assert sessions.user(cookie) is None


def test_a_sign_in_sweeps_expired_sessions(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1_000_000.0]
    monkeypatch.setattr("issuer.oauth.sessions.time.time", lambda: now[0])
    sessions = Sessions(store)
    for _ in range(4):
        sessions.open("user-1")
    now[0] += LIFETIME + 1
    monkeypatch.setattr("issuer.oauth.stored.secrets.token_hex", lambda _: "")  # from the start
    kept = sessions.open("user-2")
    assert len(store.list(KIND)) == 1
    assert sessions.user(kept) == "user-2"
