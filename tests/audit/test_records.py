"""What a decision record keeps of its request: bounded, whatever the request held.

An id, an action, a reason or a context value whose text is longer than
``VALUE_BYTES`` is kept as its first ``HEAD`` characters and a marker with its full
length and SHA-256, so whoever holds the value can show it was the one asked; the
record is hashed into the chain as stored.
"""

from __future__ import annotations

import hashlib
import re
from decimal import Decimal
from typing import Any

import pytest

from pdp.audit.chain import canonical
from pdp.audit.records import HEAD, LIMITS, VALUE_BYTES, bounded, decision_record
from pdp.model import Answer, Decision, LimitUse, Request

MARKER = re.compile(r"…\[truncated: (\d+) bytes, sha256 ([0-9a-f]{64})\]$")


def cut(value: str) -> tuple[str, int, str]:
    """A cut value's head, and the length and hash its marker states."""
    found = MARKER.search(value)
    assert found is not None, value
    return value[: found.start()], int(found.group(1)), found.group(2)


@pytest.mark.parametrize(
    "value",
    ["", "short", "x" * VALUE_BYTES, "é" * (VALUE_BYTES // 2), ["a"] * 100, {"k": "v"}, 42, None],
)
def test_a_value_within_the_bound_is_kept_whole(value: Any) -> None:
    assert bounded(value) == value


def test_a_long_string_keeps_its_head_its_length_and_its_hash() -> None:
    value = "é" * 3_000  # 6,000 bytes of UTF-8
    head, size, digest = cut(bounded(value))
    assert head == "é" * HEAD
    assert size == 6_000
    assert digest == hashlib.sha256(value.encode()).hexdigest()


def test_a_long_list_or_map_keeps_the_head_of_its_canonical_json() -> None:
    value = {"b": ["y" * 700], "a": ["x" * 700]}
    text = canonical(value)
    head, size, digest = cut(bounded(value))
    assert head == text[:HEAD]
    assert (size, digest) == (len(text), hashlib.sha256(text.encode()).hexdigest())


def test_a_record_of_a_huge_request_is_small_and_still_names_what_was_asked() -> None:
    huge = "x" * 3_900_000
    request = Request.build(
        agent={"id": "a" * 70_000},
        action="tool.call",
        resource_type="tool",
        resource_id=huge,
        user={"id": "u" * 5_000},
        chain=("c" * 5_000,),
        context={"note": huge, "amount": "200 USD", "k" * 2_000: 1},
    )
    decision = Decision(False, (), (), (f"agent {'a' * 70_000!r} is unknown",), (), "v")
    record = decision_record(request, Answer(decision, "id", False), 0.001, "pep")
    text = canonical(record)
    assert len(text) < 12 * (HEAD * 4 + 200)  # a few heads and markers, whatever was asked
    assert cut(record["resource"]["id"])[1:] == (
        len(huge),
        hashlib.sha256(huge.encode()).hexdigest(),
    )
    assert cut(record["context"]["note"])[1] == len(huge)
    assert record["context"]["amount"] == "200 USD"  # what fits is kept whole
    assert cut(record["agent"])[1] == 70_000
    assert cut(record["user"])[1] == 5_000
    assert cut(record["delegation"][0])[1] == 5_000
    assert cut(record["reasons"][0])[1] > 70_000
    assert any(cut(key)[1] == 2_000 for key in record["context"] if len(key) > 100)


def test_a_limited_decision_keeps_the_usage_each_limit_was_checked_on() -> None:
    request = Request.build(
        agent={"id": "pay-bot"}, action="tool.call", resource_type="tool", resource_id="pay"
    )
    spent = LimitUse(
        "agents.p",
        1,
        "sum <= 5000 USD per 24h per agent",
        86_400.0,
        Decimal("5000"),
        Decimal("1000.50"),
        Decimal("4500.0000"),
    )
    calls = LimitUse("agents.p", 0, "3 calls per 1h per agent", 3_600.0, 3, 1, None)
    decision = Decision(False, (), (), ("permit agents.p is over its limit: …",), (), "v")
    record = decision_record(
        request, Answer(decision.counted((calls, spent)), "id", False), 0.001, "pep"
    )
    assert record["limits"] == [
        {
            "rule": "agents.p",
            "limit": 0,
            "text": "3 calls per 1h per agent",
            "window": 3_600.0,
            "cap": 3,
            "amount": 1,
            "used": None,
        },
        {
            "rule": "agents.p",
            "limit": 1,
            "text": "sum <= 5000 USD per 24h per agent",
            "window": 86_400.0,
            "cap": "5000",
            "amount": "1000.5",
            "used": "4500",
        },
    ]
    canonical(record)  # plain JSON, hashed into the chain as stored
    from_memory = spent._replace(used=0)  # the memory store's sum of no buckets
    counted = decision_record(
        request, Answer(decision.counted((from_memory,)), "id", False), 0.001, "pep"
    )
    assert counted["limits"][0]["used"] == "0"  # a sum's text, whichever store counted
    many = decision.counted((calls,) * (LIMITS + 3))
    kept = decision_record(request, Answer(many, "id", False), 0.001, "pep")
    assert len(kept["limits"]) == LIMITS and kept["limits_left_off"] == 3
    unlimited = decision_record(request, Answer(decision, "id", False), 0.001, "pep")
    assert "limits" not in unlimited
