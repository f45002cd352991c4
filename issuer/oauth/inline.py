"""Run endpoint work on the event loop when it needs no I/O, in a worker thread when it does.

Handing every request to a thread costs more than the work itself (the loop and the
thread contend for the GIL). Work that may block calls :func:`may_block` first, before
any side effect; run inline, that raises :class:`WouldBlock` and the work starts over in a
worker thread, where it proceeds. So the common case (cached clients and keys, the agent
in the directory snapshot) never leaves the loop, and I/O never blocks it.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from typing import TypeVar

from anyio import to_thread

T = TypeVar("T")

_INLINE: ContextVar[bool] = ContextVar("tessera_inline", default=False)


class WouldBlock(Exception):
    """Raised by :func:`may_block` when running inline on the event loop."""


def may_block() -> None:
    """Say that blocking I/O follows; it must come before any side effect."""
    if _INLINE.get():
        raise WouldBlock


async def run(fn: Callable[..., T], *args: object) -> T:
    """``fn(*args)`` on the loop if it does no I/O, else in a worker thread."""
    token = _INLINE.set(True)
    try:
        return fn(*args)
    except WouldBlock:
        pass
    finally:
        _INLINE.reset(token)
    return await to_thread.run_sync(fn, *args)
