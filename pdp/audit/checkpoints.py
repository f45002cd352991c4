"""Signed checkpoints: the issuer's key vouches for the head of every trail.

A hash chain shows that entries were changed, deleted, inserted or reordered, but not
that someone with write access to the database rewrote the whole chain from some entry
on, or cut its newest entries off. A checkpoint closes that gap: every ``interval``
seconds (and once more on stop) the :class:`Checkpointer` signs, for each trail that grew,
a compact JWS over its newest entry with the issuer's current signing key::

    header   {"alg": …, "kid": …, "typ": "tessera-checkpoint+jwt"}
    payload  {"iss": issuer, "trail": "agent", "seq": 18234, "hash": "…", "iat": …}

and appends ``{"kind": "checkpoint", "at", "trail", "seq", "hash", "kid", "jws"}`` to the
``checkpoint`` trail. :func:`verify_checkpoints` checks each signature against a JWK Set
(the issuer's published one, kept by the auditor, or the store's key ring), and that the
trail still holds that exact entry: a rewritten history no longer matches what was
signed, and a trail cut short no longer reaches it.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import Future
from datetime import UTC, datetime
from typing import Any

import jwt

from issuer import jws
from issuer.keys import KeyRing
from issuer.store import Store
from pdp.audit.chain import Problem
from pdp.audit.query import entries
from pdp.audit.writer import AuditWriter

log = logging.getLogger("tessera.audit")

TRAIL = "checkpoint"
CHECKPOINTED = ("agent", "admin", "alert")  # the trails a checkpoint may vouch for
TYPE = "tessera-checkpoint+jwt"
INTERVAL = 60.0  # seconds between checkpoints, by default


class Checkpointer:
    """Signs the heads of the trails every ``interval`` seconds until :meth:`stop`."""

    def __init__(
        self,
        store: Store,
        writer: AuditWriter,
        keys: KeyRing,
        issuer: str,
        interval: float = INTERVAL,
    ) -> None:
        self.store = store
        self.writer = writer
        self.keys = keys
        self.issuer = issuer
        self.interval = interval
        self._signed = _last_signed(store)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="audit-checkpoints", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop, after one last checkpoint of everything written so far."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self.writer.flush()
        for done in self.checkpoint():
            done.result(timeout=10)

    def checkpoint(self) -> list[Future[int]]:
        """Sign the head of every trail that grew since its last checkpoint; the futures
        of the checkpoint records' commits."""
        pending = []
        for trail in CHECKPOINTED:
            tail = self.store.audit_tail(trail)
            if tail is None or tail.seq <= self._signed.get(trail, 0):
                continue
            pending.append(self.writer.submit(TRAIL, self._record(trail, tail.seq, tail.hash)))
            self._signed[trail] = tail.seq
        return pending

    def _record(self, trail: str, seq: int, digest: str) -> dict[str, Any]:
        key = self.keys.signing_key()
        claims = {"iss": self.issuer, "trail": trail, "seq": seq, "hash": digest}
        token = jwt.encode(
            {**claims, "iat": int(time.time())},
            key.private,
            algorithm=key.alg,
            headers={"kid": key.kid, "typ": TYPE},
        )
        at = datetime.now(UTC).isoformat()
        return {"kind": "checkpoint", "at": at, **claims, "kid": key.kid, "jws": token}

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.checkpoint()
            except Exception:
                log.exception("cannot sign an audit checkpoint; trying again next time")


def _last_signed(store: Store) -> dict[str, int]:
    """The seq each trail's newest checkpoint vouches for."""
    signed: dict[str, int] = {}
    tail = store.audit_tail(TRAIL)
    if tail is None:
        return signed
    # Each pass checkpoints each trail at most once, so the last passes name them all.
    for entry in store.audit(TRAIL, max(tail.seq - 4 * len(CHECKPOINTED), 0)):
        record = json.loads(entry.record)
        signed[record["trail"]] = max(signed.get(record["trail"], 0), int(record["seq"]))
    return signed


# -- verification


def verify_checkpoints(
    store: Store, jwk_set: Mapping[str, Any], issuer: str | None = None, trail: str | None = None
) -> tuple[int, int, list[Problem]]:
    """(checkpoints checked, the newest seq they vouch for, every problem) for the
    checkpoints of ``trail`` (all trails when None). Problems name the checkpoint
    trail's entry."""
    keys = {jwk.get("kid"): jwk for jwk in jwk_set.get("keys", []) if isinstance(jwk, dict)}
    problems: list[Problem] = []
    count = newest = 0
    for entry, record in _checkpoints(store, trail):
        count += 1
        where = f"checkpoint of the {record.get('trail')} trail at entry {record.get('seq')}"
        problem = _signature_problem(record, keys, issuer) or _trail_problem(store, record)
        if problem is not None:
            problems.append(Problem(entry, f"{where}: {problem}"))
        else:
            newest = max(newest, int(record["seq"]))
    return count, newest, problems


def _checkpoints(store: Store, trail: str | None) -> Iterator[tuple[int, dict[str, Any]]]:
    for entry in entries(store, TRAIL):
        record = json.loads(entry.record)
        if trail is None or record.get("trail") == trail:
            yield entry.seq, record


def _signature_problem(
    record: Mapping[str, Any], keys: Mapping[Any, Mapping[str, Any]], issuer: str | None
) -> str | None:
    """Why a checkpoint's signature or claims do not hold; None when they do."""
    try:
        header, claims, signing_input, signature = jws.parse(str(record.get("jws", "")))
    except ValueError as exc:
        return f"not a JWS ({exc})"
    jwk = keys.get(header.get("kid"))
    if jwk is None:
        return f"signed by key {header.get('kid')!r}, which is not in the JWK Set"
    alg = jwk.get("alg")
    if header.get("alg") != alg or header.get("typ") != TYPE:
        return f"header {header} does not match key {jwk.get('kid')!r} ({alg})"
    try:
        jws.verify_signature(str(alg), jwt.PyJWK(dict(jwk)).key, signing_input, signature)
    except (jws.BadSignature, jwt.PyJWKError, ValueError) as exc:
        return f"the signature does not verify ({exc or 'bad signature'})"
    if issuer is not None and claims.get("iss") != issuer:
        return f"signed by issuer {claims.get('iss')!r}, not {issuer!r}"
    for name in ("trail", "seq", "hash"):
        if claims.get(name) != record.get(name):
            return f"the record's {name} differs from the signed one"
    return None


def _trail_problem(store: Store, record: Mapping[str, Any]) -> str | None:
    """Why the trail no longer holds the signed entry; None when it does."""
    seq = int(record["seq"])
    found = store.audit(str(record["trail"]), seq - 1, 1)
    if not found or found[0].seq != seq:
        return "the trail no longer reaches that entry: entries were cut off or deleted"
    if found[0].hash != record["hash"]:
        return "the trail's entry differs from the one signed: history was rewritten"
    return None
