"""Hot reload: follow the policy source, compile off the hot path, swap atomically.

Every ``interval`` seconds the reloader asks its source (:mod:`pdp.serve.sources`) for
what changed: a directory compares a cheap fingerprint of its files (each ``.pol`` file's
path, size and modification time); a git repository fetches its ref and looks at the
commit it names. What changed is loaded in a worker thread; a bundle that loads replaces
the engine in one assignment, while one that does not, or a fetch that fails, is logged
and counted (``tessera_reloads_total{result="failure"}``), and the previous bundle keeps
serving.

:meth:`Reloader.reload_now` (``tessera serve`` calls it on SIGHUP) looks at once. A
directory is then loaded whether its fingerprint changed or not: a deployment that copies
files with their old modification times and sizes (``rsync -t``, ``cp -p``) leaves the
fingerprint as it was, and an operator should not have to wait for the next poll anyway. A
repository is fetched at once, and its commit loaded when it is not the one serving.

With a git source the commit serving is shown in the reload log line and as
``tessera_policy_source_info{source, ref, commit}``; the bundle's version stays the
version of its content, as decisions and audit records carry it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from prometheus_client import CollectorRegistry, Counter, Info

from pdp.lang.errors import PolicyError
from pdp.loader import Loaded
from pdp.serve.sources import DirectorySource, PolicySource, SourceError

log = logging.getLogger("tessera.reload")


def log_reloads(stream: TextIO, prefix: str = "tessera: ") -> None:
    """Show each reload, loaded or rejected, on ``stream`` (a server's standard error):
    the operator sees which bundle, and which commit, a process decides with."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(f"{prefix}%(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


@dataclass
class ReloadStats:
    successes: int = 0
    failures: int = 0
    last_error: str = ""


class Reloader:
    """Calls ``swap`` with each new bundle its source (a directory, given as a path, or
    any :class:`~pdp.serve.sources.PolicySource`) loads into."""

    def __init__(
        self,
        source: str | Path | PolicySource,
        swap: Callable[[Loaded], None],
        interval: float = 1.0,
        counter: Counter | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.source = DirectorySource(source) if isinstance(source, str | Path) else source
        self.counter = counter  # tessera_reloads{result}, when metrics are on
        self.swap = swap
        self.interval = interval
        self.stats = ReloadStats()
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._forced = False
        self._lock = asyncio.Lock()  # one look at the source at a time
        self.info: Info | None = None  # tessera_policy_source_info, for sources with commits
        if registry is not None and self.source.labels() is not None:
            self.info = Info(
                "tessera_policy_source",
                "Where the policies come from, and the commit of the bundle decided with.",
                registry=registry,
            )
            self._show_source()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop looking, and let go of what the source keeps on disk."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        # A look still running in its thread (a fetch over a slow link) is cut short: the
        # source kills its git command, and what it would have loaded is never swapped in.
        self.source.close()

    def reload_now(self) -> None:
        """Look at the source at once (from the event loop's thread, as a signal handler
        runs): a directory is loaded changed or not, a repository fetched."""
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
        """Reload if the source changed, or with ``force`` look harder (see
        :meth:`reload_now`): True on a swap, False on a rejected bundle or a failed
        fetch, None when nothing was loaded."""
        async with self._lock:
            try:
                loaded = await asyncio.to_thread(self.source.load, force)
            except PolicyError as exc:
                self._failed(exc, f"the policies of {self.source.trying} do not load:\n{exc}")
                return False
            except SourceError as exc:
                self._failed(exc, str(exc))
                return False
            if loaded is None:
                return None
            self.swap(loaded)
            self.stats.successes += 1
            if self.counter is not None:
                self.counter.labels("success").inc()
            self.stats.last_error = ""
            self._show_source()
            log.info("policy bundle %s loaded from %s", loaded.bundle.version, self.source.where)
            return True

    def _failed(self, exc: Exception, message: str) -> None:
        self.stats.failures += 1
        if self.counter is not None:
            self.counter.labels("failure").inc()
        self.stats.last_error = str(exc)
        log.error("policy reload rejected; the previous bundle keeps serving: %s", message)

    def _show_source(self) -> None:
        labels = self.source.labels()
        if self.info is not None and labels is not None:
            self.info.info(labels)
