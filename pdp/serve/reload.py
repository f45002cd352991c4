"""Hot reload: watch the policy directory, compile off the hot path, swap atomically.

The watcher polls a cheap fingerprint of the directory (each ``.pol`` file's path, size
and modification time). When it changes, the whole directory is loaded in a worker
thread; a bundle that loads replaces the engine in one assignment, while one that does
not is logged and counted, and the previous bundle keeps serving.

:meth:`Reloader.reload_now` (``tessera serve`` calls it on SIGHUP) loads the directory at
once, whether the fingerprint changed or not: a deployment that copies files with their
old modification times and sizes (``rsync -t``, ``cp -p``) leaves the fingerprint as it
was, and an operator should not have to wait for the next poll anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import Counter

from pdp.lang.errors import PolicyError
from pdp.loader import Loaded, load_directory, policy_files

log = logging.getLogger("tessera.reload")

Fingerprint = tuple[tuple[str, int, int], ...]


def fingerprint(directory: Path) -> Fingerprint:
    """What changes when any policy file is added, removed or written."""
    out = []
    for path in policy_files(directory):
        try:
            stat = path.stat()
        except OSError:
            continue  # removed between listing and stat: the next poll sees it
        out.append((str(path), stat.st_size, stat.st_mtime_ns))
    return tuple(out)


@dataclass
class ReloadStats:
    successes: int = 0
    failures: int = 0
    last_error: str = ""


class Reloader:
    """Calls ``swap`` with each new bundle that ``directory`` loads into."""

    def __init__(
        self,
        directory: str | Path,
        swap: Callable[[Loaded], None],
        interval: float = 1.0,
        counter: Counter | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.counter = counter  # tessera_reloads{result}, when metrics are on
        self.swap = swap
        self.interval = interval
        self.stats = ReloadStats()
        self._seen: Fingerprint = fingerprint(self.directory)
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._forced = False

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def reload_now(self) -> None:
        """Load the directory at once, changed or not (from the event loop's thread, as a
        signal handler runs)."""
        self._forced = True
        self._wake.set()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await self._wake.wait()
            self._wake.clear()
            forced, self._forced = self._forced, False
            await self.check(force=forced)

    async def check(self, force: bool = False) -> bool | None:
        """Reload if the directory changed, or with ``force`` whether it did or not: True
        on a swap, False on a rejected bundle, None when nothing was loaded."""
        current = fingerprint(self.directory)
        if current == self._seen and not force:
            return None
        self._seen = current
        try:
            loaded = await asyncio.to_thread(load_directory, self.directory)
        except PolicyError as exc:
            self.stats.failures += 1
            if self.counter is not None:
                self.counter.labels("failure").inc()
            self.stats.last_error = str(exc)
            log.error("policy reload rejected; the previous bundle keeps serving:\n%s", exc)
            return False
        self.swap(loaded)
        self.stats.successes += 1
        if self.counter is not None:
            self.counter.labels("success").inc()
        self.stats.last_error = ""
        log.info("policy bundle %s loaded from %s", loaded.bundle.version, self.directory)
        return True
