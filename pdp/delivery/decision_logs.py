"""The decision log's shape: one JSON object per decision, close to OPA's decision logs.

Made from the agent trail's decision records (:mod:`pdp.audit.records`), nothing else:
``decision_id``, ``timestamp``, ``path`` (``tessera/decide``), ``input`` (the request as
recorded: agent, user, delegation, action, resource, context, and subject when no agent),
``result`` (``allow`` and ``obligations``), ``bundles`` (``{"tessera": {"revision":
<bundle version>}}``), ``labels`` (the shipping replica's ``id`` and the configured
labels), ``metrics`` (``timer_server_handler_ns``), and Tessera's own ``rule_ids``,
``reasons``, ``agent``, ``user``, ``delegation``, ``pep``, ``limits`` and ``seq`` (the
entry's place on the agent trail).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

PATH = "tessera/decide"
_INPUT = ("agent", "user", "delegation", "action", "resource", "context", "subject")


def decision_log(record: Mapping[str, Any], seq: int, labels: Mapping[str, str]) -> dict[str, Any]:
    """The decision-log entry of the decision record at agent-trail entry ``seq``."""
    latency = record.get("latency_us")
    entry: dict[str, Any] = {
        "decision_id": record.get("decision_id"),
        "timestamp": record.get("at"),
        "path": PATH,
        "input": {key: record[key] for key in _INPUT if key in record},
        "result": {"allow": record.get("allow"), "obligations": record.get("obligations", [])},
        "bundles": {"tessera": {"revision": record.get("bundle_version")}},
        "labels": dict(labels),
        "metrics": {"timer_server_handler_ns": None if latency is None else round(latency * 1000)},
        "rule_ids": record.get("decided_by", []),
        "reasons": record.get("reasons", []),
        "agent": record.get("agent"),
        "user": record.get("user"),
        "delegation": record.get("delegation", []),
        "pep": record.get("pep"),
        "seq": seq,
    }
    if "limits" in record:
        entry["limits"] = record["limits"]
    return entry
