"""The audit trails' hash chain: each entry carries the previous entry's hash.

An entry's hash is SHA-256 over the previous hash, a newline and the record's canonical
JSON (sorted keys, no spaces, UTF-8). Any changed, deleted, inserted or reordered entry
breaks the chain at a place :func:`verify` names. The first entry links to
:data:`GENESIS`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from issuer.store import AuditEntry

GENESIS = "0" * 64
# agents' activity, human administrators' activity, anomaly alerts raised on agents, and
# signed checkpoints of the other trails
TRAILS = ("agent", "admin", "alert", "checkpoint")


def canonical(record: Mapping[str, Any]) -> str:
    """The one text a record is hashed and stored as: JSON with sorted keys, no spaces,
    UTF-8 (orjson: several times faster than the json module on the writer's path).
    TypeError for anything that is not plain JSON."""
    return orjson.dumps(record, option=orjson.OPT_SORT_KEYS).decode()


def link(prev_hash: str, text: str) -> str:
    return hashlib.sha256(f"{prev_hash}\n{text}".encode()).hexdigest()


@dataclass(frozen=True)
class Problem:
    """Where the chain breaks, and how."""

    seq: int
    message: str

    def __str__(self) -> str:
        return f"entry {self.seq}: {self.message}"


def verify(entries: Iterable[AuditEntry], after: AuditEntry | None = None) -> list[Problem]:
    """Every break in a trail's entries (in seq order); empty when the chain holds.

    ``after`` is the entry before the first one given (to verify a trail in pages).
    """
    problems: list[Problem] = []
    expected_seq = 1 if after is None else after.seq + 1
    prev_hash = GENESIS if after is None else after.hash
    for entry in entries:
        if entry.seq > expected_seq:
            missing = (
                f"entry {expected_seq} is"
                if entry.seq == expected_seq + 1
                else f"entries {expected_seq}-{entry.seq - 1} are"
            )
            problems.append(Problem(entry.seq, f"{missing} missing (deleted)"))
        elif entry.seq < expected_seq:
            problems.append(Problem(entry.seq, "out of order (reordered or inserted)"))
        if entry.prev_hash != prev_hash:
            problems.append(
                Problem(
                    entry.seq,
                    "does not link to the entry before it (inserted, deleted or reordered)",
                )
            )
        if link(entry.prev_hash, entry.record) != entry.hash:
            problems.append(Problem(entry.seq, "its content was changed (hash mismatch)"))
        else:
            try:
                json.loads(entry.record)
            except ValueError:
                problems.append(Problem(entry.seq, "its record is not JSON"))
        # An entry out of order does not take back what came before it: the entries
        # between it and the highest seq seen are not missing.
        expected_seq = max(expected_seq, entry.seq + 1)
        prev_hash = entry.hash
    return problems
