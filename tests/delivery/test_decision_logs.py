"""Decision logs: the agent trail's decisions as JSON lines, in batches, to a file and to
an HTTP collector."""

from __future__ import annotations

from pathlib import Path

import orjson
from prometheus_client import CollectorRegistry, Counter

from issuer.store import Store
from pdp.audit.writer import AuditWriter
from pdp.delivery.streaming import Batching, DecisionLogStreamer, open_sink
from tests.delivery.receivers import receiver

FIELDS = {"decision_id", "timestamp", "path", "input", "result", "bundles", "labels"}
FIELDS |= {"metrics", "rule_ids", "reasons", "agent", "user", "delegation"}


def decision(n: int) -> dict[str, object]:
    return {
        "kind": "decision",
        "at": "2025-01-01T00:00:00+00:00",
        "decision_id": f"d-{n}",
        "agent": "agent-1",
        "user": "user-1",
        "delegation": ["user-1"],
        "action": "tool.call",
        "resource": {"type": "tool", "id": "search"},
        "context": {},
        "allow": n % 2 == 0,
        "decided_by": ["allow_search"],
        "obligations": [],
        "reasons": ["because"],
        "bundle_version": "v1",
        "pep": "gateway",
        "latency_us": 12.5,
    }


def stream(store: Store, where: str, records: int, gzip: bool = False) -> CollectorRegistry:
    """Write ``records`` decisions and stream them to ``where`` in batches of 2."""
    registry = CollectorRegistry()
    sent = Counter("tessera_decision_logs_sent", "", registry=registry)
    dropped = Counter("tessera_decision_logs_dropped", "", registry=registry)
    streamer = DecisionLogStreamer(
        store,
        open_sink(where, gzip),
        Batching(size=2, interval=0.2, attempts=3, backoff=0.05),
        {"id": "replica-1"},
        (sent, dropped),
    )
    streamer.start()
    writer = AuditWriter(store)
    for n in range(records):
        writer.write("agent", decision(n))
    writer.write("agent", {"kind": "token", "at": "2025-01-01T00:00:00+00:00"})
    writer.close()
    streamer.stop()  # ships what is pending
    return registry


def test_decisions_arrive_in_a_file_as_json_lines_with_the_documented_fields(
    store: Store, tmp_path: Path
) -> None:
    path = tmp_path / "decisions.jsonl"
    registry = stream(store, f"file://{path}", 3)
    lines = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    assert [line["decision_id"] for line in lines] == ["d-0", "d-1", "d-2"]
    assert lines[0].keys() >= FIELDS
    assert lines[0]["result"]["allow"] is True
    assert lines[0]["bundles"] == {"tessera": {"revision": "v1"}}
    assert lines[0]["labels"] == {"id": "replica-1"}
    assert lines[0]["rule_ids"] == ["allow_search"]
    assert lines[0]["input"]["resource"] == {"type": "tool", "id": "search"}
    assert registry.get_sample_value("tessera_decision_logs_sent_total") == 3


def test_decisions_arrive_at_a_collector_in_gzip_batches_after_a_retry(store: Store) -> None:
    with receiver([503]) as got:
        stream(store, got.url, 5, gzip=True)
    batches = [body.splitlines() for _, body in got.posts]
    assert [len(batch) for batch in batches] == [2, 2, 1]
    assert got.tried == 4  # the first batch once refused, then each accepted
    ids = [orjson.loads(line)["decision_id"] for batch in batches for line in batch]
    assert ids == [f"d-{n}" for n in range(5)]
    assert got.posts[0][0]["content-type"] == "application/x-ndjson"


def test_a_collector_that_stays_down_drops_the_batch_with_a_metric(store: Store) -> None:
    with receiver([500] * 30) as got:
        registry = stream(store, got.url, 2)
    assert got.posts == []
    assert registry.get_sample_value("tessera_decision_logs_dropped_total") == 2
    assert store.cursor("decision-log") == 3  # moved on past the dropped batch
