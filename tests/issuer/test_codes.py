"""Authorization codes in the store, on SQLite and PostgreSQL: redeemed once whichever
replica the token request reaches, a replay known on every replica, the store holding
no code anyone could redeem, and old codes swept."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from issuer.oauth.codes import KIND, REDEEMED_LIFETIME, CodeReplayed, Codes, Grant, Issued
from issuer.oauth.errors import OAuthError
from issuer.store import NotFound, Store, open_store

ISSUED = Issued(
    Grant("app", "user-1", ("read",), ("https://api.example",), None),
    "https://app.example/cb",
    True,
    "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
)


@pytest.fixture
def replica(store: Store) -> Iterator[Codes]:
    """The codes as another replica sees them: the same store, opened anew."""
    other = open_store(store.url)
    try:
        yield Codes(other)
    finally:
        other.close()


def test_a_code_is_redeemed_on_another_replica_and_a_replay_is_known_on_both(
    store: Store, replica: Codes
) -> None:
    here = Codes(store)
    code = here.issue(ISSUED)
    assert replica.take(code) == ISSUED
    for codes in (here, replica):
        with pytest.raises(CodeReplayed) as replayed:
            codes.take(code)
        assert replayed.value.grant_id == ISSUED.grant.grant_id
        assert replayed.value.user_id == "user-1"


def test_of_two_racing_redemptions_one_gets_the_grant_and_one_a_replay(
    store: Store, replica: Codes
) -> None:
    code = Codes(store).issue(ISSUED)
    start = threading.Barrier(2)
    outcomes: list[object] = []

    def redeem(codes: Codes) -> None:
        start.wait(timeout=10)
        try:
            outcomes.append(codes.take(code))
        except OAuthError as exc:
            outcomes.append(type(exc))

    threads = [threading.Thread(target=redeem, args=(c,)) for c in (Codes(store), replica)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(map(str, outcomes)) == sorted(map(str, [ISSUED, CodeReplayed]))


def test_the_store_keeps_a_digest_of_the_code_never_the_code(store: Store) -> None:
    code = Codes(store).issue(ISSUED)
    with pytest.raises(NotFound):
        store.get(KIND, code)
    (record,) = store.list(KIND)
    assert code not in record.id and code not in str(record.data)


def test_an_unknown_an_expired_and_a_long_redeemed_code_are_invalid_grant(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    codes = Codes(store)
    with pytest.raises(OAuthError, match="unknown") as unknown:
        codes.take("no-such-code")
    assert not isinstance(unknown.value, CodeReplayed)
    now = [1_000_000.0]
    monkeypatch.setattr("issuer.oauth.codes.time.time", lambda: now[0])
    late = codes.issue(ISSUED)
    now[0] += 61  # past the code's minute
    with pytest.raises(OAuthError, match="unknown") as expired:
        codes.take(late)
    assert not isinstance(expired.value, CodeReplayed)
    used = codes.issue(ISSUED)
    codes.take(used)
    now[0] += REDEEMED_LIFETIME  # a replay a day later: merely unknown
    with pytest.raises(OAuthError, match="unknown") as forgotten:
        codes.take(used)
    assert not isinstance(forgotten.value, CodeReplayed)


def test_a_sweep_removes_the_codes_past_their_day_and_keeps_the_rest(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [1_000_000.0]
    monkeypatch.setattr("issuer.oauth.codes.time.time", lambda: now[0])
    codes = Codes(store)
    for _ in range(5):
        codes.issue(ISSUED)
    now[0] += REDEEMED_LIFETIME
    monkeypatch.setattr("issuer.oauth.stored.secrets.token_hex", lambda _: "")  # from the start
    fresh = {codes.issue(ISSUED) for _ in range(3)}  # each issuance sweeps from the start
    assert len(store.list(KIND)) == 3
    for code in fresh:
        assert codes.take(code) == ISSUED
