"""One replica at a time: a job that must not run twice on one database.

Several ``tessera serve`` processes may share a store. Every one of them records its own
decisions, but jobs that follow a shared source onto a trail (the change log onto the
admin trail, the trails' heads onto the checkpoint trail) would record everything once per
replica. :class:`Exclusive` runs such a job only in the process that holds the store's
lease of that name; the others try again every ``retry`` seconds and take over when the
holder stops or dies.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Protocol

from issuer.store import Lease, Store

log = logging.getLogger("tessera.audit")

RETRY = 2.0  # seconds between attempts to take the lease


class Job(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...


class Exclusive:
    """Runs the job ``make()`` builds while this process holds the lease ``name``."""

    def __init__(
        self, store: Store, name: str, make: Callable[[], Job], retry: float = RETRY
    ) -> None:
        self.store = store
        self.name = name
        self.make = make
        self.retry = retry
        self.job: Job | None = None
        self._lease: Lease | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{name}", daemon=True)

    def start(self) -> None:
        """Take the lease now if it is free (so the job runs from the start), else keep
        trying in the background."""
        self._try()
        if self.job is None:
            self._thread.start()

    def stop(self) -> None:
        """Stop the job, if it runs here, and give the lease up."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.retry + 5)
        if self.job is not None:
            self.job.stop()
            self.job = None
        if self._lease is not None:
            self._lease.release()
            self._lease = None

    def _try(self) -> None:
        try:
            lease = self.store.lease(self.name)
        except Exception:
            log.exception("cannot take the %s lease; trying again", self.name)
            return
        if lease is None:
            return
        try:
            job = self.make()  # made once the lease is held: it resumes after the last holder
            job.start()
        except BaseException:
            lease.release()
            raise
        self._lease, self.job = lease, job
        log.info("this replica runs %s", self.name)

    def _run(self) -> None:
        while self.job is None and not self._stop.wait(self.retry):
            self._try()
