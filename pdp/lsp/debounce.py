"""Rechecks of a bundle put off while the editor's changes keep coming.

An editor sends a change per keystroke; checking the bundle for each would publish
diagnostics of text already gone. A change waits :data:`DELAY` seconds, and a newer
change of the same bundle in that time takes its place, so only the latest is checked.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

DELAY = 0.15
"""Seconds a change waits for the next before its bundle is checked."""

Action = Callable[[], object]


class Debouncer:
    """At most one pending action per key, run :attr:`delay` seconds after its last
    :meth:`schedule`, on the running event loop."""

    def __init__(self, delay: float = DELAY) -> None:
        self.delay = delay
        self._pending: dict[str, tuple[asyncio.TimerHandle, Action]] = {}

    def schedule(self, key: str, action: Action) -> None:
        """Run ``action`` after the delay, in place of any action pending for ``key``."""
        self.cancel(key)
        handle = asyncio.get_running_loop().call_later(self.delay, self._run, key)
        self._pending[key] = (handle, action)

    def cancel(self, key: str) -> None:
        """Drop the action pending for ``key``, if any (a newer check makes it moot)."""
        pending = self._pending.pop(key, None)
        if pending is not None:
            pending[0].cancel()

    def flush(self, key: str) -> None:
        """Run the action pending for ``key`` now, if any (a reader needs its result)."""
        if key in self._pending:
            self._pending[key][0].cancel()
            self._run(key)

    def _run(self, key: str) -> None:
        _, action = self._pending.pop(key)
        action()
