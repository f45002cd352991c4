"""The decision point: one place where every door's question is decided.

:class:`DecisionPoint` owns what a decision needs besides the request: the loaded policy
bundle (through its :class:`~pdp.engine.Engine`), the directory's facts about agents and
users, the limit counters, the decision cache, the metrics and the hand-off to the audit
trail. gRPC ``Authorize``/``AuthorizeBatch``/``ListAllowed``, AuthZEN, Envoy ext_authz,
the issuer's token-exchange check, the MCP proxy's local mode and the admin server's
what-if all decide through it, each after converting its wire form once into a
:class:`~pdp.model.Request`.

It knows no transport: no gRPC, no HTTP, no protobuf and no JSON documents. A request it
cannot decide (a malformed attribute) raises :class:`~pdp.model.RequestError`, which each
door maps to its protocol's error.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import Awaitable, Callable, Hashable, Iterable, Mapping, Sequence
from functools import partial
from typing import Any, NamedTuple

from cachetools import LRUCache

from pdp.audit.records import decision_record
from pdp.audit.writer import RECORD_BYTES, AuditWriter
from pdp.bounds import DEFAULT_BOUNDS, Bounds
from pdp.catalog import Resources
from pdp.directory import Directory
from pdp.engine import Engine
from pdp.loader import Loaded
from pdp.metrics import Metrics
from pdp.model import Answer, Decision, Request
from pdp.request import typed_entity, typed_value

DEFAULT_CACHE_SIZE = 10_000
DIRECTORY = "directory"  # the deciding "rule" of a refusal by the directory

Pep = str | Callable[[], str]
"""Who asked, for the audit record: a name, or a function that tells it (called only
when a record is made)."""

Once = str | Callable[[], str]
"""A call's idempotency key, kept by the caller across retries so a limit records the
call's usage once: a key, or a function that tells it (called only when a limit could
decide); "" when the caller sent none."""


ID_BATCH = 1024  # decision ids made at once


def decision_ids() -> Callable[[], str]:
    """Unique decision ids, the keys of audit records: 32 hex digits, a random per-process
    prefix then a counter from a random start, so ids never repeat across processes and
    replicas and cost no system call each.

    They are formatted :data:`ID_BATCH` at a time (formatting one per call brought the
    formatting code back into the cache on every call), by C iterators alone: no Python
    code runs while a batch is made, so the interpreter lock is held throughout and
    threads deciding at once (the issuer's exchange check) never make a batch twice."""
    template = os.urandom(8).hex() + "%016x"
    start = int.from_bytes(os.urandom(4), "big")
    ranges = map(
        range, itertools.count(start, ID_BATCH), itertools.count(start + ID_BATCH, ID_BATCH)
    )
    batches = map(list, map(partial(map, template.__mod__), ranges))
    return itertools.chain.from_iterable(batches).__next__


new_decision_id = decision_ids()


class DecisionPoint:
    """Decides requests against the current bundle, with the directory's facts.

    With a ``directory``, agents and users are who it says they are: an agent it does not
    know or that is not active is refused whatever the policies say, and the attributes a
    caller sent for them are ignored; ``context.consents`` are the consent store's. Every
    decision is recorded on the agent trail when ``audit`` is given; with ``"sync"``
    durability a decision is answered only once its record is committed.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        directory: Directory | None = None,
        cache_size: int = DEFAULT_CACHE_SIZE,
        metrics: Metrics | None = None,
        audit: AuditWriter | None = None,
        durability: str = "async",
        bounds: Bounds = DEFAULT_BOUNDS,
    ) -> None:
        self.engine = engine
        self.directory = directory
        self.audit = audit
        self.durability = durability
        self.bounds = bounds  # how large a request the doors let through
        self.metrics = metrics if metrics is not None else Metrics()
        self.metrics.bundle.info({"version": engine.version})
        self.metrics.counter_store_errors = lambda: self.engine.counters.errors
        if audit is not None:
            self.metrics.audit_dropped = lambda: audit.dropped
        # The hot path's record of a decision and the engine's time, bound once.
        self._timed = self.metrics.decisions.timed
        # Decisions by a key the door derives from its question, for requests whose
        # candidate rules have no limit and do not read `now` (their answer cannot depend
        # on counters or the time).
        self.cache: LRUCache[Hashable, Decision] | None = (
            LRUCache(maxsize=cache_size) if cache_size > 0 else None
        )
        self.cache_hits = 0
        self.cache_misses = 0
        self._seen_directory = -1  # the directory version the cache and facts are of
        self._facts: dict[tuple[str, str], dict[str, Any]] = {}  # typed, by (kind, id)
        self.resources = Resources(engine.bundle, directory)  # the resource catalog

    # -- what it decides with

    @property
    def schema(self) -> Any:
        """The policy schema requests are typed against (``SchemaModel``)."""
        return self.engine.bundle.schema

    @property
    def version(self) -> str:
        """The version of the bundle decisions are made with."""
        return self.engine.version

    @property
    def trusts_callers(self) -> bool:
        """Whether the agent and user attributes a caller sends are decided on (no
        directory); doors skip converting them otherwise."""
        return self.directory is None

    def use(self, loaded: Loaded) -> None:
        """Decide with a new bundle from the next call on; limits carry over."""
        old = self.engine
        self.engine = Engine(loaded.bundle, old.counters, old.clock)
        self.metrics.bundle.info({"version": self.engine.version})
        self._forget()

    def _forget(self) -> None:
        if self.cache is not None:
            self.cache.clear()
        self._facts = {}
        self.resources = Resources(self.engine.bundle, self.directory)

    # -- deciding

    async def decide(
        self, request: Request, pep: Pep = "", *, key: Hashable | None = None, once: Once = ""
    ) -> Answer:
        """Decide one request, using up limits, and hand its record to the audit trail.

        ``key`` (any hashable the door derives from its question, e.g. the serialized
        message) lets the answer be remembered when no limit can change it; ``once`` is
        the call's idempotency key."""
        answered = self._answer(request, pep, key, limits=True, once=once)
        assert answered is not None  # with limits decided here, every request is answered
        answer, record = answered
        if record is not None:  # _recorded's steps, without a second coroutine per call
            committed = self.hand_over(record)
            if committed is not None:
                await committed
        return answer

    def answer(
        self, request: Request, pep: Pep = "", *, key: Hashable | None = None, once: Once = ""
    ) -> tuple[Answer, Pending | None]:
        """:meth:`decide` without its hand-off: the answer, and the record the caller hands
        over with :meth:`hand_over` (None without an audit trail). The gRPC door's hot
        path: no coroutine of its own per call."""
        answered = self._answer(request, pep, key, limits=True, once=once)
        assert answered is not None  # with limits decided here, every request is answered
        return answered

    async def decide_without_limits(
        self, request: Request, pep: Pep = "", *, key: Hashable | None = None
    ) -> Answer | None:
        """As :meth:`decide`, but None, with nothing recorded, for a request a ``limit``
        could decide: its counters are kept by another process (the PDP an embedded
        decision point, such as the MCP proxy's, defers to)."""
        answered = self._answer(request, pep, key, limits=False)
        if answered is None:
            return None
        answer, record = answered
        if record is not None:
            await self._recorded(record)
        return answer

    def decide_now(self, request: Request, pep: Pep = "", once: Once = "") -> Answer:
        """As :meth:`decide`, for a caller outside the event loop (the issuer's token
        exchange check runs in a worker thread): a full audit queue, or sync durability,
        blocks this thread."""
        answered = self._answer(request, pep, None, limits=True, once=once)
        assert answered is not None  # with limits decided here, every request is answered
        answer, record = answered
        audit = self.audit
        if audit is not None and record is not None:
            if self.durability == "sync":
                audit.write("agent", record.build, weight=record.weight)
            else:
                audit.offer_or_drop("agent", record.build, record.weight)
        return answer

    async def decide_many(
        self, requests: Sequence[Request], pep: Pep = "", once: Once = ""
    ) -> list[Answer]:
        """Decide requests in order, each using up limits as it is allowed; their records
        are handed over together. ``once`` keys the batch; each request's key is it with
        the request's position."""
        answers = []
        records: list[Pending] = []
        batch = once() if callable(once) else once
        for index, request in enumerate(requests):
            answered = self._answer(
                request, pep, None, limits=True, once=f"{batch}#{index}" if batch else ""
            )
            assert answered is not None  # with limits decided here, every one is answered
            answer, record = answered
            answers.append(answer)
            if record is not None:
                records.append(record)
        await self._recorded(*records)
        return answers

    def preview(self, request: Request) -> Decision:
        """What the request would be answered, without using up any limit and without a
        record: listing and searching are not calling."""
        decision = self._preview(request, limits=True)
        assert decision is not None
        return decision

    def preview_without_limits(self, request: Request) -> Decision | None:
        """As :meth:`preview`, but None for a request a ``limit`` could decide."""
        return self._preview(request, limits=False)

    def allowed(self, requests: Iterable[Request]) -> tuple[list[int], list[int]]:
        """Which of ``requests`` would be allowed, and which are denied only until the
        user consents (every obligation of the deny is a consent), by position; nothing
        is used up or recorded (``ListAllowed``, ``tools/list``)."""
        allowed, consent = [], []
        for index, request in enumerate(requests):
            decision = self.preview(request)
            if decision.allow:
                allowed.append(index)
            elif decision.awaits_consent:
                consent.append(index)
        return allowed, consent

    # -- the steps

    def resolve(self, request: Request) -> Request | str:
        """The request as the directory knows who asks and the catalog its resource (the
        attributes the request does not send), or why it is refused (a string).

        Without a directory, the request as the caller sent it, with the bundle's catalog."""
        directory = self.directory
        if directory is None:
            return self.resources.request(request)
        if directory.version != self._seen_directory:
            # A decision or a fact remembered before this change may no longer hold.
            self._seen_directory = directory.version
            self._forget()
        if request.agent_id is None:
            return self._other_subject(directory, request)
        delegation = request.delegation
        identities = directory.resolve(request.agent_id, request.user_id, delegation["chain"])
        if isinstance(identities, str):
            return identities
        schema = self.schema
        agent = self._typed("agent", identities.agent, schema.agent)
        user = None
        if identities.user is not None:
            user = self._typed("user", identities.user, schema.user)
        context = dict(request.context)
        context["consents"] = self._consents(identities.consents)
        resource = self.resources.resource(request.resource)
        if isinstance(resource, str):
            return resource
        return Request(
            agent,
            user,
            delegation,
            request.action,
            resource,
            context,
            request.size,
            None,  # an agent's request names no other subject
            request.time,
        )

    def _other_subject(self, directory: Directory, request: Request) -> Request | str:
        """A request about a subject that is no agent, as the directory knows it: a person
        it knows is decided on its facts (refused when not active), whatever was sent for
        them; a person it does not know, or a subject of a declared type, on the
        attributes sent. Nobody's consents but the consent store's (none: it holds an
        agent's); the resource as the catalog describes it."""
        stale = directory.stale()
        if stale is not None:
            return stale
        user = request.user
        if request.user_id is not None:
            known = directory.person(request.user_id)
            if known is not None and not known.active:
                return f"user {request.user_id!r} is not active"
            if known is not None:
                user = self._typed("user", known.attributes(), self.schema.user)
        context = dict(request.context)
        context["consents"] = self._consents(())
        resource = self.resources.resource(request.resource)
        if isinstance(resource, str):
            return resource
        return Request(
            None,
            user,
            request.delegation,
            request.action,
            resource,
            context,
            request.size,
            request.subject,
            request.time,
        )

    def identify(self, name: str, where: str) -> str:
        """The directory's id of the person ``name`` names (by SCIM id, userName,
        externalId or e-mail, in that order: :class:`pdp.subjects.People`), or ``name``
        when the directory knows no one by it or there is none; a RequestError naming
        ``where`` when it names several users."""
        directory = self.directory
        return name if directory is None else directory.people.identify(name, where)

    def _typed(
        self, kind: str, attributes: Mapping[str, Any], types: Mapping[str, Any]
    ) -> dict[str, Any]:
        """The directory's attributes of an agent or user, typed once per change."""
        key = (kind, attributes["id"])
        typed = self._facts.get(key)
        if typed is None:
            typed = self._facts[key] = typed_entity(attributes, kind, types)
        return typed

    def _consents(self, granted: tuple[str, ...]) -> Any:
        declared = self.schema.context.get("consents")
        if declared is None:
            return granted
        return typed_value(list(granted), declared, "context.consents")

    def _decided(
        self, engine: Engine, request: Request | str, commit: bool, once: Once = ""
    ) -> tuple[Decision, bool]:
        """The engine's decision (or the directory's refusal) and whether it is cacheable;
        ``commit`` records the limits an allow uses up, once per ``once``."""
        if isinstance(request, str):
            return self._refused(engine, request), False
        limited, momentary = engine.traits(request)
        idempotency = ""
        if limited and once:
            idempotency = once() if callable(once) else once
        start = time.perf_counter()
        decision = engine.decide(request, commit, idempotency)
        self._timed(decision, time.perf_counter() - start)
        return decision, not momentary

    def _refused(self, engine: Engine, reason: str) -> Decision:
        decision = Decision(False, (), (DIRECTORY,), (reason,), (), engine.version)
        self.metrics.decided(decision)
        return decision

    def _answer(
        self, request: Request, pep: Pep, key: Hashable | None, limits: bool, once: Once = ""
    ) -> tuple[Answer, Pending | None] | None:
        """The answer and its audit record (None without an audit trail); None when
        ``limits`` is false and a limit could decide."""
        started = time.perf_counter() if self.audit is not None else 0.0
        engine = self.engine
        resolved = self.resolve(request)
        decision = None
        if key is not None and self.cache is not None and not isinstance(resolved, str):
            decision = self._remembered(key)
        if decision is not None:
            cacheable = True
        elif not limits and not isinstance(resolved, str) and engine.touches_limits(resolved):
            return None
        else:
            decision, cacheable = self._decided(engine, resolved, True, once)
            if cacheable and key is not None and self.cache is not None:
                self.cache[key] = decision
        answer = Answer(decision, new_decision_id(), cacheable)
        if self.audit is None:
            return answer, None
        return answer, self._record(_asked(request, resolved), answer, started, pep)

    def _remembered(self, key: Hashable) -> Decision | None:
        assert self.cache is not None
        decision = self.cache.get(key)
        self.metrics.cached(decision)
        if decision is None:
            self.cache_misses += 1
        else:
            self.cache_hits += 1
        return decision

    def _preview(self, request: Request, limits: bool) -> Decision | None:
        engine = self.engine
        resolved = self.resolve(request)
        if isinstance(resolved, str):
            return self._refused(engine, resolved)
        if not limits and engine.touches_limits(resolved):
            return None
        return self._decided(engine, resolved, False)[0]

    # -- the audit hand-off

    def _record(self, request: Request, answer: Answer, started: float, pep: Pep) -> Pending:
        """The decision's agent-trail record, as a function the writer thread calls (the
        hot path only notes the time and who asked), weighed by the request's size."""
        seconds, when = time.perf_counter() - started, time.time()
        who = pep if isinstance(pep, str) else pep()
        return Pending(
            lambda: decision_record(request, answer, seconds, who, when),
            request.size + RECORD_BYTES,
        )

    def hand_over(self, *records: Pending) -> Awaitable[None] | None:
        """Put the records on the agent trail. Async durability only queues them, and
        drops (counted and logged) those that find the queue full: None, nothing to
        wait for. Sync durability: what to await, which ends once they are committed (a
        full queue waiting for room off the loop)."""
        audit = self.audit
        if audit is None or not records:
            return None
        if self.durability != "sync":
            for record in records:
                audit.offer_or_drop("agent", record.build, record.weight)
            return None
        return self._committed(audit, records)

    async def _recorded(self, *records: Pending) -> None:
        """Hand the records over, and wait for them as the durability says."""
        committed = self.hand_over(*records)
        if committed is not None:
            await committed

    async def _committed(self, audit: AuditWriter, records: Sequence[Pending]) -> None:
        pending = []
        for record in records:
            done = audit.submit_nowait("agent", record.build, record.weight)
            if done is None:
                done = await asyncio.to_thread(
                    audit.submit, "agent", record.build, weight=record.weight
                )
            pending.append(done)
        for done in pending:
            await asyncio.wrap_future(done)


class Pending(NamedTuple):
    """A decision's record on its way to the writer: what builds it, and its weight in
    the writer's queue (bytes)."""

    build: Callable[[], Mapping[str, Any]]
    weight: int


def _asked(request: Request, resolved: Request | str) -> Request:
    """What a record tells of the request: as decided on (with the directory's consents),
    or as asked when the directory refused it."""
    return request if isinstance(resolved, str) else resolved
