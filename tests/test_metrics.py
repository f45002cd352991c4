"""Several workers' metrics as one: what the parent of ``tessera serve --workers N`` serves."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from pdp.metrics import Gathered, Metrics, WorkerMetrics
from pdp.model import Decision

ALLOW = Decision(True, (), ("agents.read_only",), (), (), "sha256:aaa")
DENY = Decision(False, (), (), (), (), "sha256:aaa")


def exposition(metrics: Metrics) -> str:
    return generate_latest(metrics.registry).decode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, labels) -> value, from a text exposition."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def gathered(*texts: str) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Gathered(lambda: texts))
    return generate_latest(registry).decode()


def two_workers() -> tuple[Metrics, Metrics]:
    one, two = Metrics(), Metrics()
    for decision in (ALLOW, ALLOW, DENY):
        one.decided(decision)
    two.decided(ALLOW)
    one.engine_seconds.observe(3e-6)
    two.engine_seconds.observe(3e-6)
    two.engine_seconds.observe(2e-3)
    one.rpc_seconds.labels("Authorize").observe(4e-4)
    two.rpc_seconds.labels("Check").observe(4e-4)
    # The calls in flight are kept as their tasks; any objects stand for two and three.
    one.calls_in_flight.update((object(), object()))
    two.calls_in_flight.update((object(), object(), object()))
    one.bundle.info({"version": "sha256:aaa"})
    two.bundle.info({"version": "sha256:aaa"})
    one.reloads.labels("success").inc()
    return one, two


def test_counters_histograms_and_gauges_are_summed_per_label_set() -> None:
    one, two = two_workers()
    merged = samples(gathered(exposition(one), exposition(two)))
    decided = {k: v for k, v in merged.items() if k[0] == "tessera_decisions_total"}
    assert decided == {
        ("tessera_decisions_total", (("result", "allow"), ("rule", "agents.read_only"))): 3,
        ("tessera_decisions_total", (("result", "deny"), ("rule", ""))): 1,
    }
    assert merged[("tessera_engine_seconds_count", ())] == 3
    assert merged[("tessera_engine_seconds_bucket", (("le", "5e-06"),))] == 2
    assert merged[("tessera_engine_seconds_bucket", (("le", "+Inf"),))] == 3
    assert abs(merged[("tessera_engine_seconds_sum", ())] - 2.006e-3) < 1e-12
    assert merged[("tessera_rpc_seconds_count", (("method", "Authorize"),))] == 1
    assert merged[("tessera_rpc_seconds_count", (("method", "Check"),))] == 1
    assert merged[("tessera_rpc_in_flight", ())] == 5
    assert merged[("tessera_reloads_total", (("result", "success"),))] == 1


def test_the_bundle_is_kept_once_per_version() -> None:
    one, two = two_workers()
    three = Metrics()
    three.bundle.info({"version": "sha256:bbb"})  # reloaded before the others
    merged = samples(gathered(exposition(one), exposition(two), exposition(three)))
    bundles = {k: v for k, v in merged.items() if k[0] == "tessera_bundle_info"}
    assert bundles == {
        ("tessera_bundle_info", (("version", "sha256:aaa"),)): 1,
        ("tessera_bundle_info", (("version", "sha256:bbb"),)): 1,
    }


def test_created_keeps_the_earliest() -> None:
    one, two = two_workers()
    two.reloads.labels("success").inc()  # created later than one's
    key = ("tessera_reloads_created", (("result", "success"),))
    first = samples(exposition(one))[key]
    assert samples(gathered(exposition(two), exposition(one)))[key] == first


def test_the_merged_exposition_reads_as_one_process_would_report() -> None:
    one, two = two_workers()
    text = gathered(exposition(one), exposition(two))
    names = [family.name for family in text_string_to_metric_families(text)]
    assert names == [family.name for family in text_string_to_metric_families(exposition(one))]
    assert "worker" not in text


def test_the_parent_adds_its_workers_gauge_and_alerts() -> None:
    one, two = two_workers()
    parent = WorkerMetrics(lambda: [exposition(one), exposition(two)])
    parent.workers.set(2)
    parent.alerts.labels("rate").inc()
    merged = samples(generate_latest(parent.registry).decode())
    assert merged[("tessera_workers", ())] == 2
    assert merged[("tessera_audit_alerts_total", (("alert", "rate"),))] == 1
    assert merged[("tessera_rpc_in_flight", ())] == 5


def test_hot_path_records_are_all_counted_at_each_scrape_from_several_threads() -> None:
    """Decisions, engine times and call times are appended on the hot path and counted
    in batches: while four threads record at once (switching every microsecond) and
    scrapes run beside them, every scrape counts no fewer than the one before, and the
    last counts every record, exactly."""
    import sys
    import threading

    from pdp.metrics import SETTLE_AT

    metrics = Metrics()
    calls = metrics.rpc_seconds.labels("Authorize")
    per_thread, threads_n = 200 * SETTLE_AT + 100, 4  # batches, and a part of one left
    start = threading.Barrier(threads_n + 1)

    def record() -> None:
        start.wait(timeout=30)
        for index in range(per_thread):
            decision = ALLOW if index % 3 else DENY
            metrics.decisions.timed(decision, 3e-6 if index % 2 else 2e-3)
            calls.observe(4e-4)

    threads = [threading.Thread(target=record) for _ in range(threads_n)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for thread in threads:
            thread.start()
        start.wait(timeout=30)
        seen = []
        while any(thread.is_alive() for thread in threads):  # scrapes while they record
            seen.append(samples(exposition(metrics))[("tessera_rpc_seconds_count", CALL)])
        for thread in threads:
            thread.join(timeout=60)
    finally:
        sys.setswitchinterval(interval)
    assert len(seen) > 1 and seen == sorted(seen)  # scraped meanwhile; counts only grow

    got, total = samples(exposition(metrics)), threads_n * per_thread
    denied = threads_n * len(range(0, per_thread, 3))
    assert got[("tessera_decisions_total", (("result", "deny"), ("rule", "")))] == denied
    allowed = (("result", "allow"), ("rule", "agents.read_only"))
    assert got[("tessera_decisions_total", allowed)] == total - denied
    assert got[("tessera_engine_seconds_count", ())] == total
    assert got[("tessera_engine_seconds_bucket", (("le", "5e-06"),))] == total // 2
    expected_sum = (total // 2) * (3e-6 + 2e-3)
    assert abs(got[("tessera_engine_seconds_sum", ())] - expected_sum) < 1e-9
    assert got[("tessera_rpc_seconds_count", CALL)] == total
    assert got[("tessera_rpc_seconds_bucket", (("le", "0.0005"), ("method", "Authorize")))] == total
    assert abs(got[("tessera_rpc_seconds_sum", CALL)] - total * 4e-4) < 1e-9


CALL = (("method", "Authorize"),)
