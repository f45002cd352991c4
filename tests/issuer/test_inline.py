"""Endpoint work runs on the event loop unless it says it may block."""

from __future__ import annotations

import asyncio
import threading

from issuer.oauth.inline import may_block, run


def test_work_without_io_runs_on_the_loop_thread() -> None:
    async def main() -> tuple[int, int]:
        return threading.get_ident(), await run(threading.get_ident)

    loop_thread, worker = asyncio.run(main())
    assert worker == loop_thread


def test_work_that_may_block_starts_over_in_a_worker_thread() -> None:
    calls: list[int] = []

    def work(value: int) -> int:
        calls.append(threading.get_ident())
        may_block()
        return value * 2

    async def main() -> tuple[int, int]:
        return threading.get_ident(), await run(work, 21)

    loop_thread, result = asyncio.run(main())
    assert result == 42
    assert calls[0] == loop_thread and calls[1] != loop_thread and len(calls) == 2


def test_may_block_outside_run_does_nothing() -> None:
    may_block()
