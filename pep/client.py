"""The PEP client stub: ask Tessera's decision service whether an agent may act.

Sync (:class:`Client`) and asyncio (:class:`AsyncClient`) clients share one typed API::

    with Client("127.0.0.1:50051") as tessera:
        verdict = tessera.authorize(Query(agent="pay-bot", tool="payments.transfer",
                                          user="alice", context={"amount": Money("200", "USD")}))
        if not verdict.allow: ...

Every call has a deadline; UNAVAILABLE is retried with exponential backoff; any other
failure (or running out of retries) is a **deny** carrying the error, unless the client
was built with ``on_error="raise"``. An optional local cache keeps answers the service
marked cacheable (no limit involved) for a few seconds.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal

import grpc
from cachetools import TTLCache

from pdp.lang.values import Duration, Money, Risk
from pdp.serve.proto import authorizer_pb2 as pb
from pdp.serve.proto import authorizer_pb2_grpc as pb_grpc
from pep.errors import PepError

OnError = Literal["deny", "raise"]


@dataclass(frozen=True)
class Query:
    """One question: may this agent do this action on this resource?

    ``tool="x"`` is short for ``action="tool.call", resource_type="tool", resource_id="x"``.
    Attribute values are Python values: str, bool, int, float, :class:`Money`,
    :class:`Risk`, :class:`Duration`, datetime, IP addresses, lists and dicts.
    """

    agent: str
    tool: str | None = None
    action: str = "tool.call"
    resource_type: str = "tool"
    resource_id: str = ""
    user: str | None = None
    chain: tuple[str, ...] | None = None
    context: Mapping[str, Any] = field(default_factory=dict)
    agent_attributes: Mapping[str, Any] = field(default_factory=dict)
    user_attributes: Mapping[str, Any] = field(default_factory=dict)
    resource_attributes: Mapping[str, Any] = field(default_factory=dict)

    def to_message(self) -> pb.AuthorizeRequest:
        message = pb.AuthorizeRequest(
            agent=pb.Agent(id=self.agent, attributes=_values(self.agent_attributes)),
            action="tool.call" if self.tool is not None else self.action,
            resource=pb.Resource(
                type="tool" if self.tool is not None else self.resource_type,
                id=self.tool if self.tool is not None else self.resource_id,
                attributes=_values(self.resource_attributes),
            ),
            context=_values(self.context),
        )
        if self.user is not None:
            message.user.CopyFrom(pb.User(id=self.user, attributes=_values(self.user_attributes)))
        if self.chain is not None:
            message.delegation.CopyFrom(pb.Delegation(chain=list(self.chain)))
        return message


@dataclass(frozen=True)
class Verdict:
    """The answer: allow or deny, what to obtain first, and why."""

    allow: bool
    obligations: tuple[tuple[str, str], ...] = ()  # (kind, value): ("consent", "payments:…")
    decided_by: tuple[str, ...] = ()
    reasons: tuple[str, ...] = ()
    decision_id: str = ""
    bundle_version: str = ""
    error: str | None = None  # set when the service could not be asked: a fail-closed deny
    cached: bool = False

    @classmethod
    def from_message(cls, message: pb.AuthorizeResponse) -> Verdict:
        return cls(
            allow=message.allow,
            obligations=tuple((o.kind, o.value) for o in message.obligations),
            decided_by=tuple(message.decided_by),
            reasons=tuple(message.reasons),
            decision_id=message.decision_id,
            bundle_version=message.bundle_version,
        )

    @classmethod
    def failed(cls, error: str) -> Verdict:
        return cls(allow=False, reasons=(f"fail closed: {error}",), error=error)


class TesseraError(PepError):
    """The service could not answer (raised only with ``on_error="raise"``)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


@dataclass(frozen=True)
class Options:
    """How a client calls: deadline, retries, failure policy, local cache."""

    timeout: float = 0.5  # seconds per attempt
    attempts: int = 3  # tries on UNAVAILABLE, the first included
    backoff: float = 0.05  # seconds before the second try; doubles, with jitter
    on_error: OnError = "deny"
    cache_size: int = 0  # 0: no local cache
    cache_ttl: float = 5.0  # seconds a cacheable answer is kept


class _Common:
    def __init__(self, options: Options) -> None:
        self.options = options
        self._cache: TTLCache[bytes, Verdict] | None = (
            TTLCache(options.cache_size, options.cache_ttl) if options.cache_size > 0 else None
        )

    def _lookup(self, message: pb.AuthorizeRequest) -> tuple[bytes, Verdict | None]:
        if self._cache is None:
            return b"", None
        key = message.SerializeToString(deterministic=True)
        hit = self._cache.get(key)
        return key, (None if hit is None else _replace_cached(hit))

    def _remember(self, key: bytes, response: pb.AuthorizeResponse) -> Verdict:
        verdict = Verdict.from_message(response)
        if self._cache is not None and response.cacheable:
            self._cache[key] = verdict
        return verdict

    def _failure(self, error: grpc.RpcError) -> Verdict:
        code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
        details = error.details() if hasattr(error, "details") else str(error)
        if self.options.on_error == "raise":
            raise TesseraError(code, details or "") from None
        return Verdict.failed(f"{code.name}: {details}")

    def _delay(self, attempt: int) -> float:
        return float(self.options.backoff * (2 ** (attempt - 1)) * (0.5 + random.random()))


class Client(_Common):
    """A blocking client; one channel, safe to share between threads."""

    def __init__(self, target: str, options: Options | None = None, *, channel: Any = None):
        super().__init__(options or Options())
        self._channel = channel if channel is not None else grpc.insecure_channel(target)
        self._stub = pb_grpc.AuthorizerStub(self._channel)  # type: ignore[no-untyped-call]

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def authorize(self, query: Query) -> Verdict:
        message = query.to_message()
        key, hit = self._lookup(message)
        if hit is not None:
            return hit
        try:
            response = self._call(self._stub.Authorize, message)
        except grpc.RpcError as error:
            return self._failure(error)
        return self._remember(key, response)

    def authorize_many(self, queries: Sequence[Query]) -> list[Verdict]:
        """Many questions in one call; answers in the same order. On failure, every
        answer is a deny (or TesseraError is raised)."""
        batch = pb.AuthorizeBatchRequest(requests=[q.to_message() for q in queries])
        try:
            response = self._call(self._stub.AuthorizeBatch, batch)
        except grpc.RpcError as error:
            failed = self._failure(error)
            return [failed] * len(queries)
        return [Verdict.from_message(r) for r in response.responses]

    def _call(self, method: Any, message: Any) -> Any:
        for attempt in range(1, self.options.attempts + 1):
            try:
                return method(message, timeout=self.options.timeout)
            except grpc.RpcError as error:
                if error.code() != grpc.StatusCode.UNAVAILABLE or attempt == self.options.attempts:
                    raise
                time.sleep(self._delay(attempt))
        raise AssertionError("unreachable: attempts >= 1")


class AsyncClient(_Common):
    """An asyncio client on a grpc.aio channel."""

    def __init__(self, target: str, options: Options | None = None, *, channel: Any = None):
        super().__init__(options or Options())
        self._channel = channel if channel is not None else grpc.aio.insecure_channel(target)
        self._stub = pb_grpc.AuthorizerStub(self._channel)  # type: ignore[no-untyped-call]

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def authorize(self, query: Query) -> Verdict:
        message = query.to_message()
        key, hit = self._lookup(message)
        if hit is not None:
            return hit
        try:
            response = await self._call(self._stub.Authorize, message)
        except grpc.RpcError as error:
            return self._failure(error)
        return self._remember(key, response)

    async def authorize_many(self, queries: Sequence[Query]) -> list[Verdict]:
        batch = pb.AuthorizeBatchRequest(requests=[q.to_message() for q in queries])
        try:
            response = await self._call(self._stub.AuthorizeBatch, batch)
        except grpc.RpcError as error:
            failed = self._failure(error)
            return [failed] * len(queries)
        return [Verdict.from_message(r) for r in response.responses]

    async def _call(self, method: Any, message: Any) -> Any:
        for attempt in range(1, self.options.attempts + 1):
            try:
                return await method(message, timeout=self.options.timeout)
            except grpc.RpcError as error:
                if error.code() != grpc.StatusCode.UNAVAILABLE or attempt == self.options.attempts:
                    raise
                await asyncio.sleep(self._delay(attempt))
        raise AssertionError("unreachable: attempts >= 1")


def _replace_cached(verdict: Verdict) -> Verdict:
    return replace(verdict, cached=True)


def _values(attributes: Mapping[str, Any]) -> dict[str, pb.Value]:
    return {key: to_value(value) for key, value in attributes.items()}


def to_value(value: Any) -> pb.Value:
    """A Python value as a typed ``Value``."""
    if isinstance(value, bool):
        return pb.Value(bool=value)
    if isinstance(value, Risk):
        return pb.Value(risk=value.name)
    if isinstance(value, int):
        return pb.Value(integer=value)
    if isinstance(value, float):
        return pb.Value(number=value)
    if isinstance(value, str):
        return pb.Value(string=value)
    if isinstance(value, Money):
        return pb.Value(money=pb.Money(amount=str(value.amount), currency=value.currency))
    if isinstance(value, Duration):
        return pb.Value(duration=value.text)
    if isinstance(value, datetime):
        return pb.Value(time=value.isoformat())
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return pb.Value(ip=str(value))
    if isinstance(value, list | tuple | set | frozenset):
        items = list(value)
        if all(isinstance(v, str) for v in items):
            return pb.Value(
                strings=pb.StringList(
                    values=sorted(items) if isinstance(value, set | frozenset) else items
                )
            )
        return pb.Value(list=pb.ValueList(values=[to_value(v) for v in items]))
    if isinstance(value, Mapping):
        return pb.Value(map=pb.ValueMap(values={str(k): to_value(v) for k, v in value.items()}))
    raise TypeError(f"cannot send a {type(value).__name__} as an attribute value")
