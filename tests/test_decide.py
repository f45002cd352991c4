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


def test_decision_ids_are_unique_across_threads_and_batches() -> None:
    """Ids are made a batch at a time; threads deciding at once (the issuer's exchange
    check runs in worker threads) never get the same id, across many batch boundaries."""
    import gc
    import sys
    import threading

    from pdp.decide import ID_BATCH, decision_ids

    next_id = decision_ids()
    made: list[list[str]] = [[] for _ in range(8)]

    def take(into: list[str]) -> None:
        for _ in range(ID_BATCH * 3):
            into.append(next_id())

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter can
    try:
        threads = [threading.Thread(target=take, args=(into,)) for into in made]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    finally:
        sys.setswitchinterval(interval)
    ids = [i for into in made for i in into]
    assert len(ids) == 8 * ID_BATCH * 3
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    assert len({i[:16] for i in ids}) == 1  # one process, one prefix
    # no batch made twice and dropped: the batches alive are this maker's and the module's
    batches = [
        o
        for o in gc.get_objects()
        if type(o) is list and len(o) == ID_BATCH and isinstance(o[0], str) and len(o[0]) == 32
    ]
    assert len(batches) <= 2
