"""The drain of ``tessera serve``: let the calls in flight finish, answer the rest UNAVAILABLE.

When the server stops (SIGTERM on a deploy), gRPC refuses new calls and connections and
gives the calls it has the grace period; at its end grpc would cancel them, and their
callers would see a cancellation, or an error naming no cause. So the doors keep the
context of each call in flight (:class:`pdp.doors.grpc.Calls`), and just before the grace
period ends the drain answers the calls still running UNAVAILABLE, with
:data:`SHUTTING_DOWN`: the status clients retry on another replica. (A call answered so
may still be deciding; what it decides is not sent.)
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import grpc

SHUTTING_DOWN = "the server is shutting down; retry on another replica"
# The end of the grace period kept for answering the calls that outlast it: at most this
# long, and at most a tenth of the period (a short period is mostly given to the calls).
ENDING = 0.25  # seconds
LOOK = 0.01  # seconds between looks at the calls in flight


@dataclass(frozen=True)
class Drained:
    """What a drain did: calls that finished during it, and calls it answered UNAVAILABLE."""

    finished: int
    ended: int


async def drain(in_flight: set[Any], grace: float, hurry: asyncio.Event) -> Drained:
    """Wait until no call is in flight, or until shortly before ``grace`` seconds are up,
    or until ``hurry`` is set; then answer the calls still running UNAVAILABLE.

    ``in_flight`` is the live set of servicer contexts the doors keep (calls leave it as
    they end)."""
    loop = asyncio.get_running_loop()
    until = loop.time() + max(grace - min(ENDING, grace / 10), 0.0)
    seen: set[Any] = set()
    while in_flight and not hurry.is_set():
        seen |= in_flight
        remaining = until - loop.time()
        if remaining <= 0:
            break
        await asyncio.sleep(min(LOOK, remaining))
    late = set(in_flight)
    seen |= late
    ended = 0
    for context in late:
        ended += await _unavailable(context)
    return Drained(finished=len(seen) - ended, ended=ended)


async def _unavailable(context: grpc.aio.ServicerContext) -> int:
    """Answer a call UNAVAILABLE: 1, or 0 when it was answered meanwhile."""
    if context.done():
        return 0
    try:
        await context.abort(grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)
    except grpc.aio.AbortError:  # how an abort ends, in its caller too
        return 1
    except Exception:  # the call was being answered (or aborted) as the drain came
        return 0
    return 1
