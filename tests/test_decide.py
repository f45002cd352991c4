"""The decision point's cache: an answer is remembered only while nothing can change it."""

from __future__ import annotations

import asyncio
from datetime import datetime

from pdp.decide import DecisionPoint
from pdp.engine import Engine
from pdp.model import Answer, Request
from tests.conftest import bundle_of

POLICY = """
permit business_hours
  call tool "search"
  when hour(now, "Europe/Berlin") >= 9 and hour(now, "Europe/Berlin") < 17

permit always
  call tool "read_file"
"""


def epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class Clock:
    """A clock the test moves."""

    def __init__(self, at: str) -> None:
        self.now = epoch(at)

    def __call__(self) -> float:
        return self.now


def ask(point: DecisionPoint, tool: str) -> Answer:
    """The same question each time, under the same cache key."""
    request = Request.build(
        agent={"id": "bot"}, action="tool.call", resource_type="tool", resource_id=tool
    )
    return asyncio.run(point.decide(request, key=("bot", tool)))


def test_a_decision_that_reads_now_is_not_served_at_another_time() -> None:
    clock = Clock("2026-03-30T07:30:00Z")  # Monday 09:30 in Berlin
    point = DecisionPoint(Engine(bundle_of(POLICY), clock=clock))
    first = ask(point, "search")
    assert first.decision.allow
    assert not first.cacheable  # a PEP must not keep it either
    clock.now = epoch("2026-03-30T16:00:00Z")  # 18:00: closed
    later = ask(point, "search")
    assert not later.decision.allow
    assert point.cache_hits == 0


def test_a_decision_no_rule_reading_now_can_make_is_still_remembered() -> None:
    clock = Clock("2026-03-30T07:30:00Z")
    point = DecisionPoint(Engine(bundle_of(POLICY), clock=clock))
    assert ask(point, "read_file").cacheable
    clock.now = epoch("2026-03-30T16:00:00Z")
    again = ask(point, "read_file")
    assert again.decision.allow and again.cacheable
    assert point.cache_hits == 1
