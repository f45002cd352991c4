"""The audit hash chain: canonical text, links, and verify naming every break.

Entries are built in memory with :func:`link`, exactly as the writer chains them, then
tampered with the way someone with write access to the table could.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from issuer.store import AuditEntry
from pdp.audit.chain import GENESIS, Problem, canonical, link, verify

AT = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)

CHANGED = "its content was changed (hash mismatch)"
UNLINKED = "does not link to the entry before it (inserted, deleted or reordered)"
OUT_OF_ORDER = "out of order (reordered or inserted)"


def record(n: int) -> dict[str, Any]:
    return {"kind": "decision", "n": n, "agent": "pay-bot", "allow": n % 2 == 0}


def chain(count: int, after: AuditEntry | None = None) -> list[AuditEntry]:
    """``count`` entries chained as the writer chains them (after ``after``, if given)."""
    seq, prev = (0, GENESIS) if after is None else (after.seq, after.hash)
    entries = []
    for _ in range(count):
        seq += 1
        text = canonical(record(seq))
        digest = link(prev, text)
        entries.append(AuditEntry(seq, AT, text, prev, digest))
        prev = digest
    return entries


def forged(seq: int, prev: AuditEntry, data: dict[str, Any]) -> AuditEntry:
    """An entry made by someone who knows the scheme: correctly hashed and linked."""
    text = canonical(data)
    return AuditEntry(seq, AT, text, prev.hash, link(prev.hash, text))


def renumbered(entries: list[AuditEntry], by: int) -> list[AuditEntry]:
    return [dataclasses.replace(e, seq=e.seq + by) for e in entries]


# ------------------------------------------------------------------ the scheme


def test_an_entry_hash_is_sha256_of_the_previous_hash_a_newline_and_the_record_text() -> None:
    text = canonical(record(1))
    expected = hashlib.sha256(f"{GENESIS}\n{text}".encode()).hexdigest()
    assert link(GENESIS, text) == expected
    assert GENESIS == "0" * 64


def test_the_first_entry_links_to_genesis_and_each_next_to_the_one_before() -> None:
    entries = chain(3)
    assert entries[0].prev_hash == GENESIS
    assert entries[1].prev_hash == entries[0].hash
    assert entries[2].prev_hash == entries[1].hash


def test_canonical_text_does_not_depend_on_key_order() -> None:
    one = {"b": 1, "a": {"d": [1, 2], "c": None}, "allow": True}
    other = {"allow": True, "a": {"c": None, "d": [1, 2]}, "b": 1}
    assert canonical(one) == canonical(other)
    assert canonical(one) == '{"a":{"c":null,"d":[1,2]},"allow":true,"b":1}'


def test_canonical_text_is_utf8_not_escaped_and_hashed_as_utf8() -> None:
    data = {"user": "Zoë", "reason": "naïve ✓ 支払い"}
    text = canonical(data)
    assert text == '{"reason":"naïve ✓ 支払い","user":"Zoë"}'
    assert "\\u" not in text
    assert json.loads(text) == data
    assert (
        link(GENESIS, text) == hashlib.sha256((GENESIS + "\n" + text).encode("utf-8")).hexdigest()
    )


def test_a_problem_reads_as_the_entry_and_what_is_wrong() -> None:
    assert str(Problem(3, CHANGED)) == f"entry 3: {CHANGED}"


# ------------------------------------------------------------------ intact chains


def test_an_intact_chain_has_no_problems() -> None:
    assert verify(chain(20)) == []


def test_an_empty_chain_has_no_problems() -> None:
    assert verify([]) == []


def test_cutting_off_the_newest_entries_alone_is_not_visible_in_the_chain() -> None:
    # A known limit (docs/audit.md): what remains is a valid, shorter chain.
    assert verify(chain(10)[:7]) == []


# ------------------------------------------------------------------ changed entries


def test_a_changed_record_is_reported_at_its_entry_as_changed_content() -> None:
    entries = chain(5)
    entries[2] = dataclasses.replace(entries[2], record=canonical({**record(3), "allow": True}))
    assert verify(entries) == [Problem(3, CHANGED)]


def test_a_record_changed_only_in_formatting_is_reported_as_changed() -> None:
    entries = chain(3)
    entries[1] = dataclasses.replace(entries[1], record=json.dumps(record(2), indent=1))
    assert verify(entries) == [Problem(2, CHANGED)]


def test_a_changed_hash_is_reported_at_its_entry_and_the_next_one_no_longer_links() -> None:
    entries = chain(5)
    entries[2] = dataclasses.replace(entries[2], hash="f" * 64)
    assert verify(entries) == [Problem(3, CHANGED), Problem(4, UNLINKED)]


def test_a_changed_newest_hash_is_reported_at_the_newest_entry() -> None:
    entries = chain(4)
    entries[3] = dataclasses.replace(entries[3], hash="0" * 64)
    assert verify(entries) == [Problem(4, CHANGED)]


def test_a_rewritten_entry_with_a_fresh_hash_breaks_the_link_of_the_entry_after_it() -> None:
    entries = chain(5)
    entries[2] = forged(3, entries[1], {**record(3), "allow": True})
    assert verify(entries) == [Problem(4, UNLINKED)]


def test_a_changed_previous_hash_is_reported_as_both_unlinked_and_changed() -> None:
    entries = chain(4)
    entries[1] = dataclasses.replace(entries[1], prev_hash="a" * 64)
    assert verify(entries) == [Problem(2, UNLINKED), Problem(2, CHANGED)]


def test_a_hashed_record_that_is_not_json_is_reported() -> None:
    entries = chain(2)
    text = "not json {"
    entries.append(AuditEntry(3, AT, text, entries[1].hash, link(entries[1].hash, text)))
    assert verify(entries) == [Problem(3, "its record is not JSON")]


# ------------------------------------------------------------------ deleted entries


def test_a_deleted_middle_entry_is_reported_missing_at_the_entry_after_it() -> None:
    entries = chain(5)
    del entries[2]
    assert verify(entries) == [
        Problem(4, "entry 3 is missing (deleted)"),
        Problem(4, UNLINKED),
    ]


def test_several_deleted_entries_are_reported_as_a_range() -> None:
    entries = chain(8)
    del entries[2:5]
    assert verify(entries) == [
        Problem(6, "entries 3-5 are missing (deleted)"),
        Problem(6, UNLINKED),
    ]


def test_a_deleted_first_entry_is_reported_at_the_entry_after_it() -> None:
    entries = chain(4)
    del entries[0]
    assert verify(entries) == [
        Problem(2, "entry 1 is missing (deleted)"),
        Problem(2, UNLINKED),
    ]


def test_a_deleted_newest_entry_shows_once_the_next_entry_is_written() -> None:
    entries = chain(5)
    next_entry = chain(1, after=entries[-1])[0]  # the writer still chains onto entry 5
    del entries[-1]
    entries.append(next_entry)
    assert verify(entries) == [
        Problem(6, "entry 5 is missing (deleted)"),
        Problem(6, UNLINKED),
    ]


def test_a_deleted_and_renumbered_entry_breaks_the_link_of_the_entry_after_it() -> None:
    entries = chain(5)
    entries = entries[:2] + renumbered(entries[3:], -1)
    assert verify(entries) == [Problem(3, UNLINKED)]


# ------------------------------------------------------------------ inserted entries


def test_an_inserted_entry_with_the_rest_renumbered_breaks_the_link_after_it() -> None:
    entries = chain(5)
    inserted = forged(3, entries[1], {"kind": "decision", "n": 99, "allow": True})
    entries = [*entries[:2], inserted, *renumbered(entries[2:], 1)]
    assert verify(entries) == [Problem(4, UNLINKED)]


def test_an_inserted_entry_that_reuses_a_seq_is_reported_out_of_order() -> None:
    entries = chain(5)
    inserted = forged(3, entries[1], {"kind": "decision", "n": 99, "allow": True})
    entries.insert(2, inserted)
    # The forged entry takes seq 3's place in the chain; the real entry 3 then comes
    # out of order and no longer links, and entry 4 still links to the real entry 3.
    assert verify(entries) == [Problem(3, OUT_OF_ORDER), Problem(3, UNLINKED)]


def test_an_inserted_entry_with_a_made_up_hash_is_reported_changed_and_unlinked_after() -> None:
    entries = chain(5)
    text = canonical({"kind": "decision", "n": 99})
    inserted = AuditEntry(3, AT, text, entries[1].hash, "b" * 64)
    entries = [*entries[:2], inserted, *renumbered(entries[2:], 1)]
    assert verify(entries) == [Problem(3, CHANGED), Problem(4, UNLINKED)]


# ------------------------------------------------------------------ reordered entries


def test_two_entries_swapped_in_place_break_the_links_at_both_and_after() -> None:
    # Rows keep their seq (the table's key) while their contents trade places.
    entries = chain(6)
    third, fourth = entries[2], entries[3]
    entries[2] = dataclasses.replace(fourth, seq=3)
    entries[3] = dataclasses.replace(third, seq=4)
    assert verify(entries) == [Problem(3, UNLINKED), Problem(4, UNLINKED), Problem(5, UNLINKED)]


def test_two_entries_given_in_swapped_order_are_each_reported() -> None:
    entries = chain(5)
    entries[2], entries[3] = entries[3], entries[2]
    assert verify(entries) == [
        Problem(4, "entry 3 is missing (deleted)"),
        Problem(4, UNLINKED),
        Problem(3, OUT_OF_ORDER),
        Problem(3, UNLINKED),
        Problem(5, UNLINKED),  # seq 5 follows seq 4 as it should: only the link is off
    ]


def test_a_repeated_entry_is_reported_out_of_order_and_unlinked() -> None:
    entries = chain(4)
    entries.insert(3, entries[1])
    assert verify(entries) == [
        Problem(2, OUT_OF_ORDER),
        Problem(2, UNLINKED),
        Problem(4, UNLINKED),
    ]


# ------------------------------------------------------------------ verifying in pages


def tampered_chain() -> list[AuditEntry]:
    """A chain with a changed record, a deleted entry and a changed hash."""
    entries = chain(30)
    entries[4] = dataclasses.replace(entries[4], record=canonical({"kind": "forged"}))
    entries[17] = dataclasses.replace(entries[17], hash="c" * 64)
    del entries[10]
    return entries


@pytest.mark.parametrize("entries", [chain(30), tampered_chain()], ids=["intact", "tampered"])
def test_verifying_in_pages_finds_what_verifying_at_once_finds(
    entries: list[AuditEntry],
) -> None:
    at_once = verify(entries)
    for size in (1, 2, 3, 7, 29, 30):
        paged: list[Problem] = []
        previous: AuditEntry | None = None
        for start in range(0, len(entries), size):
            page = entries[start : start + size]
            paged += verify(page, previous)
            previous = page[-1]
        assert paged == at_once, f"pages of {size}"


def test_a_page_is_checked_against_the_entry_before_it() -> None:
    entries = chain(6)
    assert verify(entries[3:], after=entries[2]) == []
    assert verify(entries[3:], after=entries[1]) == [
        Problem(4, "entry 3 is missing (deleted)"),
        Problem(4, UNLINKED),
    ]


def test_the_tampered_chain_reports_each_break_where_it_is() -> None:
    assert verify(tampered_chain()) == [
        Problem(5, CHANGED),
        Problem(12, "entry 11 is missing (deleted)"),
        Problem(12, UNLINKED),
        Problem(18, CHANGED),
        Problem(19, UNLINKED),
    ]
