"""Prometheus metrics of the decision service, served on their own HTTP port.

Every name starts with ``tessera_``. Each service has its own registry, so several
servers in one process (tests, embedding) never share or collide.

With ``tessera serve --workers N`` every worker process keeps its own registry, served on
a private loopback port, and the parent serves one endpoint (the configured metrics
port) that fetches every worker's exposition on each scrape and merges them
(:class:`Gathered`, :func:`merge`): counters, histogram buckets, sums and counts, and
gauges are summed per label set; ``*_created`` keeps the earliest; ``tessera_bundle_info``
is kept once per version (during a reload, workers may briefly report two). The parent adds
its own ``tessera_workers`` (workers serving now) and the anomaly alerts it counts.

Why gather rather than use prometheus_client's multiprocess mode: that mode sees only its
own metric classes, each observation written to a memory-mapped file, while the hot-path
metrics here are custom collectors (:class:`Timings`, :class:`Tally`, the in-flight gauge
read from a plain number) because an observation must cost no more than an append: the
hot path appends what it observed, and the observations are counted together, a batch at
a time (:data:`SETTLE_AT`) and at each scrape (:meth:`Series.settle`). Adapted to that
mode, every decision would pay for writes to a memory-mapped file and the per-label
bookkeeping of its classes. Gathered, a worker pays nothing between scrapes; a scrape,
seconds apart, costs one loopback HTTP fetch and a text parse per worker. No series gains
a ``worker`` label: the merged series are the same as one process's.
"""

from __future__ import annotations

import math
import operator
import threading
from bisect import bisect_left
from collections import Counter as Tallied
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from itertools import repeat
from typing import Any, TypeVar
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Info
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import generate_latest, start_http_server
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from issuer.netloc import bare
from pdp.model import Decision

# Decisions take microseconds; RPCs take tens to hundreds of them.
ENGINE_BUCKETS = (1e-6, 2e-6, 5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 1e-3, 1e-2)
# Distinct decisions counted one by one; decisions come from the policies (a rule's own
# answer, a default deny, a refusal), so this bounds only a pathological bundle.
MAX_DECIDED_KEYS = 10_000
RPC_BUCKETS = (5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 5e-2, 0.1, 1.0)
# Observations the hot path appends before they are counted together (bounded memory).
# Counting them a batch at a time keeps the counting code out of the cache on all calls
# but one in SETTLE_AT, as decision ids are made (pdp.decide.decision_ids); the call that
# counts a batch takes about 0.3 µs more per observation in it (some 70 µs in all).
SETTLE_AT = 256

T = TypeVar("T")


def drained(pending: deque[T]) -> list[T]:
    """What ``pending`` holds, taken out in order by C calls alone: what other threads
    append meanwhile stays for the next time. Call it holding the lock that serializes
    the takers; appending needs none (``deque.append`` is atomic)."""
    return list(map(deque.popleft, repeat(pending, len(pending))))


class Series:
    """One histogram series: counts per bucket and the sum, under one lock, and the
    observations appended since they were last counted."""

    __slots__ = ("bounds", "counts", "lock", "pending", "sum")

    def __init__(self, bounds: tuple[float, ...], lock: threading.Lock | None = None) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last is +Inf
        self.sum = 0.0
        self.lock = lock or threading.Lock()  # a Tally may share it (Tally.timed)
        self.pending: deque[float] = deque()

    def observe(self, value: float) -> None:
        """Record ``value``: appended at once, counted with the others later."""
        pending = self.pending
        pending.append(value)
        if len(pending) >= SETTLE_AT:
            self.settle()

    def settle(self) -> None:
        """Count the observations appended so far."""
        with self.lock:
            self.count(drained(self.pending))

    def count(self, values: Sequence[float]) -> None:
        """Add ``values`` to the buckets and the sum; the caller holds :attr:`lock`."""
        if not values:
            return
        counts = self.counts
        # the first bound >= value ("le") of each, counted by C iterators
        for index, number in Tallied(map(partial(bisect_left, self.bounds), values)).items():
            counts[index] += number
        self.sum += math.fsum(values)

    def cumulative(self) -> tuple[list[tuple[str, float]], float]:
        with self.lock:
            self.count(drained(self.pending))
            counts, total = list(self.counts), self.sum
        buckets, running = [], 0
        for bound, count in zip((*map(str, self.bounds), "+Inf"), counts, strict=True):
            running += count
            buckets.append((bound, float(running)))
        return buckets, total


class Timings:
    """A Prometheus histogram for the hot path: an observation is an append (its bucket
    found with others later, by ``bisect``), where prometheus_client's ``Histogram``
    takes two locks and scans the buckets in Python. Exposed in the registry exactly as a
    ``Histogram`` of the same name."""

    def __init__(
        self,
        name: str,
        documentation: str,
        buckets: Sequence[float],
        registry: CollectorRegistry,
        labelnames: Sequence[str] = (),
        lock: threading.Lock | None = None,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._bounds = tuple(sorted(buckets))
        self._series: dict[tuple[str, ...], Series] = {}
        self._lock = threading.Lock()
        self._series_lock = lock  # every series' own lock, when given (else one each)
        if not self.labelnames:
            self._unlabelled = self.labels()
        registry.register(self)

    def labels(self, *values: str) -> Series:
        """The series of these label values (made once)."""
        series = self._series.get(values)
        if series is None:
            with self._lock:
                series = self._series.setdefault(values, Series(self._bounds, self._series_lock))
        return series

    def observe(self, value: float) -> None:
        self._unlabelled.observe(value)

    def describe(self) -> Iterable[Metric]:
        return [HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)]

    def collect(self) -> list[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, series in list(self._series.items()):
            buckets, total = series.cumulative()
            family.add_metric(list(values), buckets, total)
        return [family]


class Tally:
    """``tessera_decisions_total`` by result and deciding rule, counted per decision: the
    hot path adds one to the count of a decision object (most are shared by every call a
    rule decides alone); the labels are worked out when scraped."""

    NAME = "tessera_decisions"
    HELP = "Decisions by result (allow, deny) and deciding rule ('' for default deny)."

    def __init__(self, registry: CollectorRegistry, timing: Series) -> None:
        self._counts: dict[Decision, int] = {}
        self._folded: dict[tuple[str, str], float] = {}  # counts of decisions let go
        self._timing = timing  # the engine's time per decision (Timings' series)
        self._lock = timing.lock
        self._pending: deque[Decision] = deque()  # decided since last counted
        registry.register(self)

    def add(self, decision: Decision) -> None:
        with self._lock:
            self._add(decision)

    def timed(self, decision: Decision, seconds: float) -> None:
        """Count a decision the engine took ``seconds`` to make, and observe that time:
        the hot path's two records, appended (:meth:`settle` counts them)."""
        self._timing.pending.append(seconds)
        pending = self._pending
        pending.append(decision)
        if len(pending) >= SETTLE_AT:
            self.settle()

    def settle(self) -> None:
        """Count the decisions and engine times appended so far (the timing series
        shares this lock)."""
        with self._lock:
            timing = self._timing
            timing.count(drained(timing.pending))
            for decision, number in Tallied(drained(self._pending)).items():
                self._add(decision, number)

    def _add(self, decision: Decision, number: int = 1) -> None:
        counts = self._counts
        count = counts.get(decision)
        if count is not None:
            counts[decision] = count + number
        elif len(counts) < MAX_DECIDED_KEYS:
            counts[decision] = number
        else:  # a bundle with endless distinct decisions: fold them into labels
            self._fold(decision, number)

    def _fold(self, decision: Decision, count: int) -> None:
        result = "allow" if decision.allow else "deny"
        for rule in decision.decided_by or ("",):
            key = (result, rule)
            self._folded[key] = self._folded.get(key, 0) + count

    def describe(self) -> Iterable[Metric]:
        return [CounterMetricFamily(self.NAME, self.HELP, labels=("result", "rule"))]

    def collect(self) -> list[Metric]:
        self.settle()
        with self._lock:
            counts = list(self._counts.items())
            totals = dict(self._folded)
        for decision, count in counts:
            result = "allow" if decision.allow else "deny"
            for rule in decision.decided_by or ("",):
                totals[(result, rule)] = totals.get((result, rule), 0) + count
        family = CounterMetricFamily(self.NAME, self.HELP, labels=("result", "rule"))
        for labels, total in sorted(totals.items()):
            family.add_metric(list(labels), float(total))
        return [family]


def alert_counter(registry: CollectorRegistry) -> Counter:
    """``tessera_audit_alerts_total``: counted by the process that runs the anomaly watcher
    (the server, or the parent of several workers)."""
    return Counter(
        "tessera_audit_alerts",
        "Anomaly alerts raised on agents, by kind (new_tool, rate, denials, amount, hours).",
        ["alert"],
        registry=registry,
    )


class Reading:
    """A counter whose owner keeps the number (a plain int): read when scraped."""

    def __init__(
        self, name: str, documentation: str, read: Callable[[], int], registry: CollectorRegistry
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.read = read
        registry.register(self)

    def describe(self) -> Iterable[Metric]:
        return [CounterMetricFamily(self.name, self.documentation)]

    def collect(self) -> list[Metric]:
        return [CounterMetricFamily(self.name, self.documentation, value=float(self.read()))]


class Metrics:
    """The service's counters, histograms and gauges, in one registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        decided = threading.Lock()  # a decision's count and its engine time: Tally.timed
        self.engine_seconds = Timings(
            "tessera_engine_seconds",
            "Time the engine took per decision.",
            ENGINE_BUCKETS,
            r,
            lock=decided,
        )
        self.decisions = Tally(r, self.engine_seconds.labels())
        self.rpc_seconds = Timings(
            "tessera_rpc_seconds", "Time per gRPC call, by method.", RPC_BUCKETS, r, ["method"]
        )
        # The calls in flight, kept by the doors on the event loop's thread (each by its
        # gRPC servicer context): the gauge reads their number when scraped, and a drain
        # answers those that outlast it.
        self.calls_in_flight: set[Any] = set()
        self.in_flight = Gauge("tessera_rpc_in_flight", "gRPC calls being served now.", registry=r)
        self.in_flight.set_function(lambda: len(self.calls_in_flight))
        self.bundle = Info(
            "tessera_bundle", "The policy bundle decisions are made with.", registry=r
        )
        self.reloads = Counter(
            "tessera_reloads",
            "Policy reloads by result (success, failure).",
            ["result"],
            registry=r,
        )
        self.cache = Counter(
            "tessera_decision_cache",
            "Decision cache lookups by result (hit, miss).",
            ["result"],
            registry=r,
        )
        self.alerts = alert_counter(r)

        # Set by the decision point to read its counter store's failures.
        self.counter_store_errors: Callable[[], int] = lambda: 0
        Reading(
            "tessera_limit_counter_errors",
            "Limit checks the counter store could not answer (each denied what it decided).",
            lambda: self.counter_store_errors(),
            r,
        )

        # Set by the decision point to read its audit writer's drops.
        self.audit_dropped: Callable[[], int] = lambda: 0
        Reading(
            "tessera_audit_dropped",
            "Decision records dropped because the audit queue was full (audit = async).",
            lambda: self.audit_dropped(),
            r,
        )

        self._hit = self.cache.labels("hit")
        self._miss = self.cache.labels("miss")

    def decided(self, decision: Decision) -> None:
        """Count a decision under its result and each rule that decided it."""
        self.decisions.add(decision)

    def cached(self, decision: Decision | None) -> None:
        """Count a decision cache lookup: a hit (then the decision, too) or a miss."""
        if decision is None:
            self._miss.inc()
        else:
            self._hit.inc()
            self.decided(decision)

    def serve(self, port: int, host: str = "127.0.0.1") -> WSGIServer:
        """Serve ``/metrics`` on ``host:port`` (0 picks a free port) in a daemon thread."""
        return serve_registry(self.registry, port, host)


def serve_registry(registry: CollectorRegistry, port: int, host: str) -> WSGIServer:
    """Serve ``registry`` at ``/metrics`` on ``host:port`` (0 picks a free port; an IPv6
    host bare or in brackets) in a daemon thread."""
    server, _ = start_http_server(port, bare(host), registry=registry)
    return server


def merge(expositions: Iterable[str]) -> list[Metric]:
    """The families of several processes' text expositions as one set: each sample summed
    over the processes that report its name and labels, except ``*_created`` (the
    earliest) and ``*_info`` (present or not: kept once per label set)."""
    families: dict[str, Metric] = {}
    samples: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], Sample]] = {}
    for text in expositions:
        for family in text_string_to_metric_families(text):
            if family.name not in families:
                families[family.name] = Metric(family.name, family.documentation, family.type)
                samples[family.name] = {}
            combine = _combiner(family.name)
            merged = samples[family.name]
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                seen = merged.get(key)
                if seen is None:
                    merged[key] = Sample(sample.name, sample.labels, sample.value)
                else:
                    merged[key] = seen._replace(value=combine(seen.value, sample.value))
    for name, family in families.items():
        family.samples = list(samples[name].values())
    return list(families.values())


def _combiner(name: str) -> Callable[[float, float], float]:
    if name.endswith("_created"):
        return min
    if name.endswith("_info"):
        return max
    return operator.add


class Gathered:
    """A collector that is every worker's metrics as one: each scrape asks
    ``expositions`` for their texts and :func:`merge` s them."""

    def __init__(self, expositions: Callable[[], Iterable[str]]) -> None:
        self.expositions = expositions

    def describe(self) -> Iterable[Metric]:
        return []  # the names are the workers': known when scraped

    def collect(self) -> list[Metric]:
        return merge(self.expositions())


class WorkerMetrics:
    """What the parent of ``tessera serve --workers N`` serves: its own
    ``tessera_workers`` and alert counts, merged with the texts ``scrape`` fetches from the
    workers."""

    def __init__(self, scrape: Callable[[], Iterable[str]]) -> None:
        self.own = CollectorRegistry()
        self.workers = Gauge(
            "tessera_workers",
            "Worker processes serving now (tessera serve --workers).",
            registry=self.own,
        )
        self.alerts = alert_counter(self.own)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(Gathered(lambda: [generate_latest(self.own).decode(), *scrape()]))

    def serve(self, port: int, host: str = "127.0.0.1") -> WSGIServer:
        """Serve ``/metrics`` on ``host:port`` (0 picks a free port) in a daemon thread."""
        return serve_registry(self.registry, port, host)
