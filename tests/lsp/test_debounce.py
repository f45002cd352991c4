"""Rechecks put off while changes keep coming: only the latest runs."""

from __future__ import annotations

import asyncio

from pdp.lsp.debounce import Debouncer


def test_only_the_latest_action_of_a_key_runs() -> None:
    ran: list[str] = []

    async def scenario() -> None:
        done = asyncio.Event()
        debouncer = Debouncer(delay=0.01)

        def check(text: str) -> None:
            ran.append(text)
            done.set()

        # Scheduled in one go, before the loop runs any timer: only the last survives.
        for text in ("a", "ab", "abc"):
            debouncer.schedule("bundle", lambda text=text: check(text))
        await asyncio.wait_for(done.wait(), 30)

    asyncio.run(scenario())
    assert ran == ["abc"]


def test_flush_runs_the_pending_action_now_and_cancel_drops_it() -> None:
    ran: list[str] = []

    async def scenario() -> None:
        debouncer = Debouncer(delay=60)
        debouncer.schedule("bundle", lambda: ran.append("flushed"))
        debouncer.flush("bundle")
        debouncer.flush("bundle")  # nothing pending any more
        debouncer.schedule("bundle", lambda: ran.append("cancelled"))
        debouncer.cancel("bundle")

    asyncio.run(scenario())
    assert ran == ["flushed"]
