"""``tessera serve --workers N``: N processes serve the same ports, and one parent keeps them.

One Python process decides on one core at a time (the interpreter lock), so a machine with
more cores runs several worker processes, each a whole server
(:func:`pdp.server.serve_forever`) listening on the same gRPC and HTTP ports with
``SO_REUSEPORT``: the kernel spreads new connections over the workers that listen. Each
worker is a fresh interpreter (``python -m pdp.workers``), not a fork: gRPC's core does not
survive ``fork``.

The parent does once what must happen once, before any worker starts:

* the settings and the policies are checked by ``tessera serve`` as for one process (a
  clear error and exit code 2);
* the store is opened once, so its migrations run and the first signing key is made by one
  process, not raced by N;
* the bootstrap admin token is chosen once (every worker accepts it; it is printed once);
* the ports are bound once (:func:`reserve`): port 0 becomes one concrete port every worker
  then binds, and a port another program holds is an error here. The parent's sockets stay
  bound but never listen, so the kernel hands them no connection, and no other program can
  take a port while a worker restarts;
* the metrics port is the parent's: it serves every worker's metrics summed
  (:mod:`pdp.metrics` says how and why), with ``tessera_workers``;
* the anomaly watcher runs once, beside the parent, which counts its alerts.

Each worker gets its settings (concrete ports, the one admin token) on its standard input,
tells the parent on a pipe once it serves and where its private metrics are, and stops
when its parent is gone. Jobs that must run once per store (the admin trail, checkpoints)
already take the store's lease (:mod:`pdp.audit.exclusive`), so one worker runs each.
Policy reloads, the directory's change feed and the signing keys are each worker's own,
as for replicas: every worker follows the same policy directory (or the same ref of the
same git repository, in a clone of its own) and store.

Supervision: a worker that dies is replaced after a back-off that doubles (from
:data:`BACKOFF` to :data:`BACKOFF_MAX`) while replacements keep dying within
:data:`STABLE` seconds of their start; after :data:`MAX_QUICK_DEATHS` such deaths in a row
everything stops with an error instead of restarting forever. SIGTERM and SIGINT are passed
on to every worker, which drains its calls within the grace period; the parent waits
``grace`` + :data:`STOP_MARGIN` seconds, then kills what is left. SIGHUP is passed on: each
worker loads its policies at once. Workers run in a process group of their own, so a
terminal's Ctrl-C reaches them once, through the parent.

    python -m pdp.workers --report-fd FD --parent PID --number N   (settings JSON on stdin)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import http.client
import json
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TextIO

from issuer.keys import KeyRing
from issuer.netloc import bare, hostport
from issuer.scim import new_token
from issuer.store import Store, StoreError, open_store
from pdp.counters import open_counters
from pdp.delivery.start import deliver
from pdp.engine import Engine
from pdp.lang.errors import PolicyError
from pdp.metrics import WorkerMetrics
from pdp.serve.config import ServeConfig
from pdp.serve.extensions import HttpExtension
from pdp.serve.reload import log_reloads
from pdp.serve.sources import SourceError, open_source
from pdp.server import (
    PRIVATE_HOST,
    Running,
    Supervised,
    serve_forever,
    startup_lines,
    watch_anomalies,
)

OK, FAILED = 0, 1
WORKER = "pdp.workers"  # the module a worker runs, unless the layer above names its own
STARTUP_TIMEOUT = 120.0  # seconds a worker may take to serve (it compiles the policies)
STABLE = 10.0  # a worker that lived this long was not dying at its start
MAX_QUICK_DEATHS = 5  # deaths in a row within STABLE seconds of starting that stop everything
BACKOFF = 0.1  # seconds before the first restart; doubled for each quick death
BACKOFF_MAX = 5.0
STOP_MARGIN = 5.0  # seconds past the grace period before the parent kills a worker
SCRAPE_TIMEOUT = 2.0  # seconds one worker's metrics may take
PARENT_POLL = 0.5  # seconds between a worker's looks at whether its parent lives


def reserve(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` (0 picks a free port) that workers may bind too.

    It is bound without ``SO_REUSEPORT`` first, so a port any other socket listens on is an
    error here, then marked with it, so that the workers' sockets (``SO_REUSEPORT``) bind
    beside it. It never listens: the kernel gives connections only to listening sockets."""
    address = bare(host)
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen on {hostport(host, port)}: {exc.strerror}") from None
    return sock


@dataclass
class Plan:
    """What the parent settled before starting workers."""

    config: ServeConfig  # as configured
    settings: ServeConfig  # what each worker gets: concrete ports, the one admin token
    http_port: int | None  # None when the issuer does not serve HTTP
    token: str | None  # the generated admin token, to print; None when one is configured
    store: Store | None  # kept open for the alert counter when decisions are audited
    counters: str  # the name of the store limits are counted in


def prepare(config: ServeConfig, stack: contextlib.ExitStack) -> Plan:
    """Do once what the workers must share: the store migrated with its first signing key,
    the admin token, the ports. OSError or StoreError when one of them cannot be had."""
    store = None
    if config.store:
        with contextlib.ExitStack() as opened:
            store = open_store(config.store)
            opened.callback(store.close)
            KeyRing(store, config.signing_alg, published_for=config.token_lifetime)
            if config.audit == "off":
                store = None  # closed now: only the alert counter needs it later
            else:
                stack.push(opened.pop_all())
    grpc_port = stack.enter_context(reserve(config.host, config.port)).getsockname()[1]
    http_port = None
    if config.store and config.http_port >= 0:
        http = stack.enter_context(reserve(config.host, config.http_port))
        http_port = http.getsockname()[1]
    token = None if config.admin_token else new_token()
    counters = open_counters(config.counter_store, timeout=config.counters_timeout)
    counters.close()  # opened for its name: each worker opens its own
    settings = dataclasses.replace(
        config,
        port=grpc_port,
        http_port=http_port if http_port is not None else config.http_port,
        admin_token=config.admin_token or token or "",
    )
    return Plan(config, settings, http_port, token, store, counters.name)


@dataclass
class Slot:
    """One of the N workers, across its restarts."""

    number: int  # 1 to N
    process: asyncio.subprocess.Process | None = None
    serving: bool = False
    metrics_port: int | None = None
    started: float = 0.0  # monotonic seconds
    quick_deaths: int = 0  # in a row, each within STABLE seconds of its start


def supervise(
    config: ServeConfig, announce: Sequence[str], err: TextIO, worker: str = WORKER
) -> int:
    """Run ``config.workers`` workers until SIGINT or SIGTERM; the exit code: 0 once every
    worker stopped by itself, 1 when workers could not start, kept dying, or had to be
    killed. OSError or StoreError when the store or a port cannot be had. ``worker`` is
    the module each worker runs (``python -m``): this one, or one of the layer above
    that calls :func:`main` with its HTTP extensions."""
    with contextlib.ExitStack() as stack:
        plan = prepare(config, stack)
        supervisor = Supervisor(plan, announce, err)
        supervisor.worker = worker
        return asyncio.run(supervisor.run())


class Supervisor:
    """The parent's event loop: starts the workers, replaces those that die, passes
    signals on, serves the gathered metrics."""

    def __init__(self, plan: Plan, announce: Sequence[str], err: TextIO) -> None:
        self.plan = plan
        self.announce = announce
        self.err = err
        self.slots = [Slot(n) for n in range(1, plan.config.workers + 1)]
        self.code = OK
        self.stopping = asyncio.Event()
        self.all_serving = asyncio.Event()
        self.started = False  # every worker served once: deaths from now on are restarts
        self.metrics = WorkerMetrics(self._scrape)
        self._pool = ThreadPoolExecutor(len(self.slots), thread_name_prefix="scrape")
        self.worker = WORKER  # the module each worker runs

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stop, sig)
        loop.add_signal_handler(signal.SIGHUP, self.forward, signal.SIGHUP)
        async with contextlib.AsyncExitStack() as stack:
            stack.callback(self._pool.shutdown, cancel_futures=True)
            metrics_port = self._serve_metrics(stack)
            tasks = [asyncio.create_task(self._keep(slot)) for slot in self.slots]
            await _first(self.all_serving, self.stopping)
            if self.all_serving.is_set() and not self.stopping.is_set():
                self.started = True
                self._announce(metrics_port)
            await self.stopping.wait()
            await self._drain(tasks)
        return self.code

    def _serve_metrics(self, stack: contextlib.AsyncExitStack) -> int | None:
        """The anomaly watcher, whose alerts the parent counts, and the parent's metrics
        endpoint when metrics are on: its port."""
        config = self.plan.config
        if self.plan.store is not None:
            watch_anomalies(config, self.plan.store, self.metrics.alerts, stack)
            deliver(config, self.plan.store, self.metrics.own, stack)
        if not config.metrics:
            return None
        server = self.metrics.serve(config.metrics_port, config.host)
        stack.callback(server.server_close)
        stack.callback(server.shutdown)
        return int(server.server_port)

    def _scrape(self) -> list[str]:
        """Every serving worker's metrics text (a worker that does not answer in time is
        left out of this scrape), fetched in parallel."""
        ports = [slot.metrics_port for slot in self.slots if slot.serving and slot.metrics_port]
        texts = self._pool.map(_fetch_metrics, ports)
        return [text for text in texts if text is not None]

    def _announce(self, metrics_port: int | None) -> None:
        plan = self.plan
        lines = startup_lines(
            plan.config, plan.settings.port, metrics_port, plan.http_port, plan.token, plan.counters
        )
        total = len(self.slots)
        for slot in self.slots:
            pid = slot.process.pid if slot.process is not None else "?"
            lines.append(f"tessera: worker {slot.number} of {total} serving, pid {pid}")
        for line in (*lines, *self.announce):
            print(line, flush=True)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop: pass ``sig`` on to every worker (again, when asked again)."""
        self.stopping.set()
        self.forward(sig)

    def forward(self, sig: int) -> None:
        for slot in self.slots:
            process = slot.process
            if process is not None and process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(sig)

    def _fail(self, message: str) -> None:
        print(f"tessera serve: {message}", file=self.err, flush=True)
        self.code = FAILED
        self.stop(signal.SIGTERM)

    async def _keep(self, slot: Slot) -> None:
        """Run the worker of ``slot`` and replace it whenever it dies, until stopping."""
        while not self.stopping.is_set():
            report = await self._spawn(slot)
            assert slot.process is not None
            await self._await_serving(slot, report)
            returncode = await slot.process.wait()
            self._set_serving(slot, False)
            if self.stopping.is_set():
                if returncode not in (0, -signal.SIGTERM, -signal.SIGINT):
                    self.code = FAILED
                return
            delay = self._after_death(slot, returncode)
            if delay is None:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), delay)

    def _after_death(self, slot: Slot, returncode: int) -> float | None:
        """Log an unexpected death; seconds to wait before the replacement, or None when
        there is to be none (everything stops)."""
        assert slot.process is not None
        how = f"signal {signal.Signals(-returncode).name}" if returncode < 0 else returncode
        pid = slot.process.pid
        if not self.started:
            self._fail(f"worker {slot.number} (pid {pid}) exited ({how}) before serving")
            return None
        quick = time.monotonic() - slot.started < STABLE
        slot.quick_deaths = slot.quick_deaths + 1 if quick else 0
        if slot.quick_deaths >= MAX_QUICK_DEATHS:
            self._fail(
                f"worker {slot.number} died {slot.quick_deaths} times in a row within "
                f"{STABLE:g} s of starting (last: pid {pid}, {how}); stopping"
            )
            return None
        delay: float = min(BACKOFF * 2.0**slot.quick_deaths, BACKOFF_MAX)
        print(
            f"tessera serve: worker {slot.number} (pid {pid}) died ({how}); "
            f"starting another in {delay:g} s",
            file=self.err,
            flush=True,
        )
        return delay

    async def _spawn(self, slot: Slot) -> int:
        """Start the worker of ``slot`` and hand it its settings; the pipe on which it will
        say that it serves."""
        read, write = os.pipe()
        try:
            # -P: the working directory is not put on the path, so a file there named like
            # one of Tessera's packages (issuer.py) cannot stand in for it.
            slot.process = await asyncio.create_subprocess_exec(
                *(sys.executable, "-P", "-m", self.worker, "--report-fd", str(write)),
                *("--parent", str(os.getpid()), "--number", str(slot.number)),
                stdin=asyncio.subprocess.PIPE,
                pass_fds=(write,),
                process_group=0,  # signals reach it through this process only
            )
        except BaseException:
            os.close(read)
            raise
        finally:
            os.close(write)
        slot.started = time.monotonic()
        stdin = slot.process.stdin
        assert stdin is not None
        stdin.write(json.dumps(dataclasses.asdict(self.plan.settings)).encode())
        with contextlib.suppress(ConnectionError):  # it died already: its exit tells
            await stdin.drain()
            stdin.close()
        if self.stopping.is_set():
            slot.process.terminate()
        return read

    async def _await_serving(self, slot: Slot, pipe: int) -> None:
        """Wait for the worker's word on ``pipe`` that it serves (nothing comes if it dies
        first)."""
        assert slot.process is not None
        report = await _read_report(pipe, STARTUP_TIMEOUT)
        if report is None:
            if slot.process.returncode is None:  # silent for too long: replaced
                with contextlib.suppress(ProcessLookupError):
                    slot.process.kill()
            return
        slot.metrics_port = report.get("metrics_port")
        self._set_serving(slot, True)
        if self.started:
            print(
                f"tessera: worker {slot.number} serving again, pid {slot.process.pid}",
                file=self.err,
                flush=True,
            )

    def _set_serving(self, slot: Slot, serving: bool) -> None:
        slot.serving = serving
        count = sum(s.serving for s in self.slots)
        self.metrics.workers.set(count)
        if count == len(self.slots):
            self.all_serving.set()

    async def _drain(self, tasks: list[asyncio.Task[None]]) -> None:
        """Wait for the workers to stop within the grace period and a margin; kill the
        rest."""
        timeout = self.plan.config.grace + STOP_MARGIN
        _, pending = await asyncio.wait(tasks, timeout=timeout)
        if pending:
            self.code = FAILED
            late = [s for s in self.slots if s.process and s.process.returncode is None]
            for slot in late:
                assert slot.process is not None
                print(
                    f"tessera serve: worker {slot.number} (pid {slot.process.pid}) did not "
                    f"stop within {timeout:g} s; killed",
                    file=self.err,
                    flush=True,
                )
                with contextlib.suppress(ProcessLookupError):
                    slot.process.kill()
            await asyncio.wait(pending, timeout=STOP_MARGIN)


async def _first(*events: asyncio.Event) -> None:
    """Wait until one of ``events`` is set."""
    waits = [asyncio.create_task(event.wait()) for event in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()


async def _read_report(fd: int, timeout: float) -> dict[str, Any] | None:
    """The one line a worker writes on ``fd`` once it serves, or None when it closed the
    pipe (it died) or said nothing within ``timeout`` seconds. Closes ``fd``."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    pipe = os.fdopen(fd, "rb", buffering=0)
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
    try:
        line = await asyncio.wait_for(reader.readline(), timeout)
    except TimeoutError:
        return None
    finally:
        transport.close()
    if not line:
        return None
    report: dict[str, Any] = json.loads(line)
    return report


def _fetch_metrics(port: int) -> str | None:
    """One worker's metrics text from its private port, or None when it does not answer."""
    connection = http.client.HTTPConnection(PRIVATE_HOST, port, timeout=SCRAPE_TIMEOUT)
    try:
        connection.request("GET", "/metrics")
        response = connection.getresponse()
        body = response.read()
        return body.decode() if response.status == 200 else None
    except OSError:
        return None
    finally:
        connection.close()


def _follow_parent(parent: int) -> None:
    """Stop this worker (as SIGTERM would: drained) once ``parent`` is gone, whichever way
    it went: a parent killed outright cannot pass a signal on."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _report_when_serving(fd: int) -> Supervised:
    """How this worker tells its parent that it serves, and where its metrics are."""

    def ready(running: Running) -> None:
        metrics = running.metrics_server
        report = {"pid": os.getpid(), "metrics_port": metrics.server_port if metrics else None}
        with os.fdopen(fd, "w") as pipe:
            pipe.write(json.dumps(report) + "\n")

    return Supervised(ready)


def main(argv: Sequence[str] | None = None, extensions: Sequence[HttpExtension] = ()) -> int:
    """A worker: serve with the settings on standard input until SIGTERM or SIGINT, or
    until the parent is gone; ``extensions`` add routes to its HTTP port."""
    parser = argparse.ArgumentParser(prog="python -m pdp.workers")
    parser.add_argument("--report-fd", type=int, required=True)
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--number", type=int, required=True)
    args = parser.parse_args(argv)
    # Until the server's own handlers are in: a stop ends a starting worker at once, and a
    # reload asked of one that has not loaded yet is moot.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    _follow_parent(args.parent)
    settings = ServeConfig(**json.loads(sys.stdin.read()))
    return _serve(settings, args.number, _report_when_serving(args.report_fd), extensions)


def _serve(
    settings: ServeConfig,
    number: int,
    supervised: Supervised,
    extensions: Sequence[HttpExtension] = (),
) -> int:
    """Load the policies and serve; the exit code (2 when this worker cannot serve). The
    worker follows the policies with a source of its own (for a repository: its own
    clone), as a replica does."""
    where = f"tessera serve: worker {number} (pid {os.getpid()})"
    log_reloads(sys.stderr, f"tessera: worker {number}: ")
    try:
        source = open_source(settings.policies)
    except (OSError, SourceError) as exc:
        print(f"{where}: {exc}", file=sys.stderr)
        return 2
    with contextlib.closing(source):
        try:
            bundle = source.load_first().bundle
        except (PolicyError, SourceError) as exc:
            print(f"{where}: the policies do not load:\n{exc}", file=sys.stderr)
            return 2
        try:
            serving = serve_forever(
                Engine(bundle),
                settings,
                supervised=supervised,
                policies=source,
                extensions=extensions,
            )
            asyncio.run(serving)
        except (OSError, StoreError) as exc:
            print(f"{where}: {exc}", file=sys.stderr)
            return 2
    return OK


if __name__ == "__main__":
    sys.exit(main())
