"""The PEP client stub: ask Tessera's decision service whether an agent may act.

Sync (:class:`Client`) and asyncio (:class:`AsyncClient`) clients share one typed API::

    with Client("10.0.0.1:50051,10.0.0.2:50051") as tessera:
        verdict = tessera.authorize(Query(agent="pay-bot", tool="payments.transfer",
                                          user="alice", context={"amount": Money("200", "USD")}))
        if not verdict.allow: ...

A client takes one address or several (a list, or one string with commas), and spreads
its calls over them in turn; a DNS name with several records (``dns:///pdp.internal:50051``)
is spread over its addresses by gRPC's ``round_robin`` policy. Every call has one deadline,
all attempts included. A call that fails UNAVAILABLE, or CANCELLED by the server (a replica
that is shutting down), is tried again on the next address after a short backoff, with the
same ``idempotency-key`` metadata, so the service can count a retried call once. Any other
failure, or running out of attempts or time, is a **deny** carrying the error, unless the
client was built with ``on_error="raise"``. An optional local cache keeps answers the service
marked cacheable (no limit and no rule reading ``now`` involved) for a few seconds.

A client proves to the service that it is a PEP (docs/pep-client.md, "Authenticating")
with :class:`Credentials`: a bearer token sent as ``authorization`` metadata on every call
(a string, or a callable that returns the current one, such as
:class:`pep.client_tokens.ClientCredentialsToken`), and TLS with a client certificate. A
:class:`Query` may carry the agent's own access token (``agent_token``) in place of its
id: the service then decides for the agent, and the user, the token names.
"""

from __future__ import annotations

import asyncio
import inspect
import ipaddress
import itertools
import random
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal

import grpc
from cachetools import TTLCache

from pdp.bounds import DEFAULT_BOUNDS
from pdp.lang.values import Duration, Money, Risk
from pdp.serve.proto import authorizer_pb2 as pb
from pdp.serve.proto import authorizer_pb2_grpc as pb_grpc
from pep.errors import PepError

OnError = Literal["deny", "raise"]
Targets = str | Sequence[str]

IDEMPOTENCY_KEY = "idempotency-key"  # the metadata naming one logical call, kept on retries
AUTHORIZATION = "authorization"  # the metadata carrying the PEP's bearer token
# Every channel spreads its calls over the addresses its name resolves to (one address: as
# pick_first would).
CHANNEL_OPTIONS = (("grpc.lb_policy_name", "round_robin"),)
# What the service answers a question it will not decide as asked (no retry helps).
REFUSALS = frozenset(("INVALID_ARGUMENT", "RESOURCE_EXHAUSTED"))
# What grpc says of a call this process cancelled itself (a sync channel closed under it):
# never retried. (grpc.aio raises asyncio.CancelledError for those instead.)
LOCAL_CANCELLATIONS = frozenset(("Locally cancelled by application!", "Channel closed!"))


@dataclass(frozen=True)
class Subject:
    """Whom a question is about when it is no agent (OpenID AuthZEN's subject): a person,
    ``type`` "user" or "identity", named by any id the directory knows them by (SCIM id,
    userName, externalId or an e-mail address: docs/directory.md), or a subject of a type
    the policy schema declares (``subject service { … }``). ``properties``: its
    attributes (a person's ``user.*``, decided on only when the directory does not know
    them; a declared type's ``subject.*``)."""

    type: str
    id: str
    properties: Mapping[str, Any] = field(default_factory=dict)

    def to_message(self) -> pb.Subject:
        return pb.Subject(type=self.type, id=self.id, properties=_values(self.properties))


@dataclass(frozen=True)
class Query:
    """One question: may this agent do this action on this resource?

    ``tool="x"`` is short for ``action="tool.call", resource_type="tool", resource_id="x"``.
    Attribute values are Python values: str, bool, int, float, :class:`Money`,
    :class:`Risk`, :class:`Duration`, datetime, IP addresses, lists and dicts.
    ``agent_token``: the agent's own access token from Tessera's issuer; the service
    verifies it and decides for the agent (and the user) it names, so ``agent`` may be
    left empty (given, it must be the token's agent, as ``user`` and ``chain`` must be
    its user and actors). ``subject``: a person (or a subject of a declared type) the
    question is about, in place of an agent: ``agent``, ``user``, ``chain`` and
    ``agent_token`` are then left unset.
    """

    agent: str = ""
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
    agent_token: str = ""
    subject: Subject | None = None

    def to_message(self) -> pb.AuthorizeRequest:
        if self.subject is not None:
            return self._about_subject(self.subject)
        # Fields set in place, maps only when not empty: the message every call builds.
        message = pb.AuthorizeRequest(agent_token=self.agent_token)
        message.action = "tool.call" if self.tool is not None else self.action
        agent = message.agent
        agent.SetInParent()
        agent.id = self.agent
        if self.agent_attributes:
            _fill(agent.attributes, self.agent_attributes)
        self._fill_resource(message.resource)
        if self.context:
            _fill(message.context, self.context)
        if self.user is not None:
            user = message.user
            user.SetInParent()
            user.id = self.user
            if self.user_attributes:
                _fill(user.attributes, self.user_attributes)
        if self.chain is not None:
            message.delegation.SetInParent()
            message.delegation.chain.extend(self.chain)
        return message

    def _fill_resource(self, resource: pb.Resource) -> None:
        resource.SetInParent()
        if self.tool is not None:
            resource.type, resource.id = "tool", self.tool
        else:
            resource.type, resource.id = self.resource_type, self.resource_id
        if self.resource_attributes:
            _fill(resource.attributes, self.resource_attributes)

    def _about_subject(self, subject: Subject) -> pb.AuthorizeRequest:
        """The message of a question about ``subject`` (no agent field set)."""
        agent_parts = (self.agent, self.agent_attributes, self.agent_token, self.user)
        if any(agent_parts) or self.user_attributes or self.chain is not None:
            raise ValueError("a query names an agent (and its user) or a subject, not both")
        message = pb.AuthorizeRequest(
            subject=subject.to_message(),
            action="tool.call" if self.tool is not None else self.action,
            context=_values(self.context),
        )
        self._fill_resource(message.resource)
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
    # with ``error``: the gRPC status the service answered (INVALID_ARGUMENT: the question
    # is malformed; RESOURCE_EXHAUSTED: over a bound; UNAVAILABLE, DEADLINE_EXCEEDED, ...)
    code: str = ""

    @classmethod
    def from_message(cls, message: pb.AuthorizeResponse) -> Verdict:
        obligations = message.obligations
        return cls(
            message.allow,
            tuple((o.kind, o.value) for o in obligations) if obligations else (),
            tuple(message.decided_by),
            tuple(message.reasons),
            message.decision_id,
            message.bundle_version,
        )

    @classmethod
    def failed(cls, error: str, code: str = "") -> Verdict:
        return cls(allow=False, reasons=(f"fail closed: {error}",), error=error, code=code)

    @property
    def refused(self) -> bool:
        """Whether the service refused the question itself (malformed, or over a bound):
        asking it again, anywhere, gets the same answer."""
        return self.code in REFUSALS


class TesseraError(PepError):
    """The service could not answer (raised only with ``on_error="raise"``)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


@dataclass(frozen=True)
class Options:
    """How a client calls: deadline, retries, failure policy, local cache."""

    timeout: float = 0.5  # seconds per call: every attempt and every pause between them
    attempts: int = 3  # tries of one call, the first included, each on the next address
    backoff: float = 0.02  # seconds before the second try; doubles, with jitter
    on_error: OnError = "deny"
    cache_size: int = 0  # 0: no local cache
    cache_ttl: float = 5.0  # seconds a cacheable answer is kept
    # the largest message sent, as the service's max_message_bytes: a larger question is
    # refused here (RESOURCE_EXHAUSTED, a deny) without being sent
    max_message_bytes: int = DEFAULT_BOUNDS.message_bytes

    def channel_options(self) -> tuple[tuple[str, Any], ...]:
        """The gRPC options of every channel a client opens."""
        return (*CHANNEL_OPTIONS, ("grpc.max_send_message_length", self.max_message_bytes))


TokenSource = Callable[[], str | Awaitable[str]]
"""A callable returning the PEP's current bearer token (the async client awaits an
awaitable it returns). It is called once per call: return a kept token, and get a new one
before it expires (:class:`pep.client_tokens.ClientCredentialsToken` does)."""


@dataclass(frozen=True)
class Credentials:
    """How a client proves to the decision service that it is a PEP, and keeps its calls
    private (docs/pep-client.md, "Authenticating").

    ``token``: a bearer token from Tessera's issuer with the scope ``tessera:decide``, sent
    as ``authorization: Bearer …`` metadata on every call: a string, or a
    :data:`TokenSource`. ``tls``: call over TLS, checking the service's certificate
    against ``root_certificates`` (PEM; None: the system's roots); ``certificate_chain``
    and ``private_key`` (PEM) are the client certificate a service with ``tls_client_ca``
    asks for (mutual TLS). Any of the three certificate fields turns TLS on.
    ``server_name``: the name the service's certificate must carry, when the address
    does not (an IP address, say)."""

    token: str | TokenSource | None = None
    tls: bool = False
    root_certificates: bytes | None = None
    certificate_chain: bytes | None = None
    private_key: bytes | None = None
    server_name: str | None = None

    def channel_credentials(self) -> grpc.ChannelCredentials | None:
        """TLS for the channels, or None for plaintext."""
        if not (self.tls or self.root_certificates or self.certificate_chain or self.private_key):
            return None
        if (self.certificate_chain is None) != (self.private_key is None):
            raise ValueError("a client certificate needs both certificate_chain and private_key")
        return grpc.ssl_channel_credentials(
            self.root_certificates, self.private_key, self.certificate_chain
        )

    def channel(
        self, target: str, aio: bool = False, options: tuple[tuple[str, Any], ...] = CHANNEL_OPTIONS
    ) -> Any:
        """A channel to ``target`` with gRPC ``options``: plaintext, or TLS as these
        credentials say."""
        module = grpc.aio if aio else grpc
        secure = self.channel_credentials()
        if secure is None:
            return module.insecure_channel(target, options=options)
        if self.server_name:
            options = (*options, ("grpc.ssl_target_name_override", self.server_name))
        return module.secure_channel(target, secure, options=options)


PLAINTEXT = Credentials()


class NoToken(PepError):
    """The token source failed: no bearer token to send, so the call is not made."""


def addresses(targets: Targets) -> tuple[str, ...]:
    """The addresses a client calls: a list of them, or one string with commas between.
    Each is anything gRPC takes as a target (``host:port``, ``dns:///name:port``)."""
    items = targets.split(",") if isinstance(targets, str) else targets
    found = tuple(item.strip() for item in items if item.strip())
    if not found:
        raise ValueError("no address to call: give host:port, several, or dns:///name:port")
    return found


def retryable(error: grpc.RpcError) -> bool:
    """Whether a failed call may be tried again elsewhere: the service was unavailable, or
    the server cancelled the call (as a replica that is shutting down does to the calls it
    had not begun). A deadline or this process's own cancellation is final."""
    code = error.code() if hasattr(error, "code") else None
    if code == grpc.StatusCode.UNAVAILABLE:
        return True
    return code == grpc.StatusCode.CANCELLED and error.details() not in LOCAL_CANCELLATIONS


class _Common:
    """What both clients share: the addresses' stubs in turn, the per-call key, retries'
    pauses, the cache, and the fail-closed verdict."""

    _aio = False  # whether the channels are grpc.aio's

    def __init__(
        self,
        target: Targets,
        options: Options | None = None,
        *,
        channel: Any = None,
        credentials: Credentials = PLAINTEXT,
    ):
        self.options = options = options or Options()
        opened = options.channel_options()
        channels = (
            [channel]
            if channel is not None
            else [credentials.channel(a, self._aio, opened) for a in addresses(target)]
        )
        self._channels = channels
        token = credentials.token
        # A fixed token's metadata is made once; a source's, on each call.
        self._token_source = None if token is None or isinstance(token, str) else token
        self._bearer: tuple[tuple[str, str], ...] = ()
        if isinstance(token, str):
            self._bearer = ((AUTHORIZATION, f"Bearer {token}"),)
        stubs = [pb_grpc.AuthorizerStub(c) for c in channels]  # type: ignore[no-untyped-call]
        self._authorize: list[Callable[..., Any]] = [stub.Authorize for stub in stubs]
        self._batch: list[Callable[..., Any]] = [stub.AuthorizeBatch for stub in stubs]
        # Logical calls are numbered: the number picks the address (in turn) and, after a
        # random prefix of this client's, makes the call's idempotency key; no system call
        # per call, and next() on a count is atomic, so threads may share a client.
        self._numbers = itertools.count()
        self._prefix = secrets.token_hex(8) + "."
        self._closed = False
        self._cache: TTLCache[bytes, Verdict] | None = (
            TTLCache(options.cache_size, options.cache_ttl) if options.cache_size > 0 else None
        )

    def _lookup(self, message: pb.AuthorizeRequest) -> tuple[bytes, Verdict | None]:
        """The message's cache key, and the cached verdict for it (None: not cached)."""
        assert self._cache is not None
        key = message.SerializeToString(deterministic=True)
        hit = self._cache.get(key)
        return key, (None if hit is None else _replace_cached(hit))

    def _remember(self, key: bytes, response: pb.AuthorizeResponse) -> Verdict:
        """The response's verdict, kept under ``key`` (b"": no cache) when cacheable."""
        verdict = Verdict.from_message(response)
        if key and response.cacheable and self._cache is not None:
            self._cache[key] = verdict
        return verdict

    def _failure(self, error: grpc.RpcError | NoToken) -> Verdict:
        if isinstance(error, NoToken):
            code, details = grpc.StatusCode.UNAUTHENTICATED, str(error)
        else:
            code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
            details = error.details() if hasattr(error, "details") else str(error)
        if self.options.on_error == "raise":
            raise TesseraError(code, details or "") from None
        return Verdict.failed(f"{code.name}: {details}", code.name)

    def _metadata(self, number: int, token: str | None) -> tuple[tuple[str, str], ...]:
        """A logical call's metadata: its idempotency key, and the bearer token."""
        key = ((IDEMPOTENCY_KEY, f"{self._prefix}{number:x}"),)
        if token is None:
            return key + self._bearer
        return (*key, (AUTHORIZATION, f"Bearer {token}"))

    def _sourced(self, source: TokenSource) -> str | Awaitable[str]:
        """What the token source gives for this call; NoToken when it fails, so that the
        call fails closed without being made."""
        try:
            return source()
        except Exception as exc:
            raise NoToken(f"the bearer token could not be had: {exc}") from exc

    def _pause(self, error: grpc.RpcError, attempt: int, deadline: float) -> float | None:
        """Seconds to wait before try ``attempt`` (2, 3…) of a call that failed with
        ``error``; None when it is not to be tried again: the failure is final, the client
        is closed, or the deadline would pass first."""
        if self._closed or not retryable(error):
            return None
        pause = float(self.options.backoff * (2 ** (attempt - 2)) * (0.5 + random.random()))
        if time.monotonic() + pause >= deadline:
            return None
        return pause


class Client(_Common):
    """A blocking client: a channel per address, safe to share between threads; with
    ``credentials``, over TLS and with a bearer token as they say. ``channel``: one
    channel made by the caller, in place of the addresses'."""

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._closed = True
        for channel in self._channels:
            channel.close()

    def authorize(self, query: Query) -> Verdict:
        message = query.to_message()
        key = b""
        if self._cache is not None:
            key, hit = self._lookup(message)
            if hit is not None:
                return hit
        try:
            response = self._call(self._authorize, message)
        except (grpc.RpcError, NoToken) as error:
            return self._failure(error)
        return self._remember(key, response)

    def authorize_many(self, queries: Sequence[Query]) -> list[Verdict]:
        """Many questions in one call; answers in the same order. On failure, every
        answer is a deny (or TesseraError is raised)."""
        batch = pb.AuthorizeBatchRequest(requests=[q.to_message() for q in queries])
        try:
            response = self._call(self._batch, batch)
        except (grpc.RpcError, NoToken) as error:
            failed = self._failure(error)
            return [failed] * len(queries)
        return [Verdict.from_message(r) for r in response.responses]

    def _call(self, methods: list[Callable[..., Any]], message: Any) -> Any:
        """One logical call: on the next address, then, if it fails so, on the ones after."""
        number = next(self._numbers)
        metadata = self._metadata(number, self._token())
        timeout = self.options.timeout
        deadline = time.monotonic() + timeout
        try:
            return methods[number % len(methods)](message, timeout=timeout, metadata=metadata)
        except grpc.RpcError as error:
            failed = error
        for attempt in range(2, self.options.attempts + 1):
            pause = self._pause(failed, attempt, deadline)
            if pause is None:
                break
            time.sleep(pause)
            method = methods[(number + attempt - 1) % len(methods)]
            try:
                return method(message, timeout=deadline - time.monotonic(), metadata=metadata)
            except grpc.RpcError as error:
                failed = error
        raise failed

    def _token(self) -> str | None:
        """This call's token from the source, if there is one."""
        if self._token_source is None:
            return None
        token = self._sourced(self._token_source)
        if inspect.isawaitable(token):
            if inspect.iscoroutine(token):
                token.close()  # never awaited: say so here rather than in a warning
            raise NoToken("the token source is asynchronous; a blocking Client needs a plain one")
        return _checked(token)


class AsyncClient(_Common):
    """An asyncio client: a grpc.aio channel per address (as :class:`Client`, whose
    arguments it takes); its token source may be asynchronous."""

    _aio = True

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        self._closed = True
        for channel in self._channels:
            await channel.close()

    async def authorize(self, query: Query) -> Verdict:
        message = query.to_message()
        key = b""
        if self._cache is not None:
            key, hit = self._lookup(message)
            if hit is not None:
                return hit
        try:
            response = await self._call(self._authorize, message)
        except (grpc.RpcError, NoToken) as error:
            return self._failure(error)
        return self._remember(key, response)

    async def authorize_many(self, queries: Sequence[Query]) -> list[Verdict]:
        batch = pb.AuthorizeBatchRequest(requests=[q.to_message() for q in queries])
        try:
            response = await self._call(self._batch, batch)
        except (grpc.RpcError, NoToken) as error:
            failed = self._failure(error)
            return [failed] * len(queries)
        return [Verdict.from_message(r) for r in response.responses]

    async def _call(self, methods: list[Callable[..., Any]], message: Any) -> Any:
        """As :meth:`Client._call`; the caller's own cancellation ends it at once."""
        number = next(self._numbers)
        metadata = self._metadata(number, await self._token())
        timeout = self.options.timeout
        deadline = time.monotonic() + timeout
        try:
            return await methods[number % len(methods)](message, timeout=timeout, metadata=metadata)
        except grpc.RpcError as error:
            failed = error
        for attempt in range(2, self.options.attempts + 1):
            pause = self._pause(failed, attempt, deadline)
            if pause is None:
                break
            await asyncio.sleep(pause)
            method = methods[(number + attempt - 1) % len(methods)]
            try:
                return await method(message, timeout=deadline - time.monotonic(), metadata=metadata)
            except grpc.RpcError as error:
                failed = error
        raise failed

    async def _token(self) -> str | None:
        """This call's token from the source, if there is one, awaited when it must be."""
        if self._token_source is None:
            return None
        token = self._sourced(self._token_source)
        if inspect.isawaitable(token):
            try:
                token = await token
            except Exception as exc:
                raise NoToken(f"the bearer token could not be had: {exc}") from exc
        return _checked(token)


def _checked(token: object) -> str:
    """A token source's answer, which must be a token: a non-empty string."""
    if isinstance(token, str) and token:
        return token
    raise NoToken(f"the token source gave {token!r}, not a token")


def _replace_cached(verdict: Verdict) -> Verdict:
    return replace(verdict, cached=True)


def _values(attributes: Mapping[str, Any]) -> dict[str, pb.Value]:
    return {key: to_value(value) for key, value in attributes.items()}


def _fill(target: Any, attributes: Mapping[str, Any]) -> None:
    """Put ``attributes`` into a message's attribute map, as typed values."""
    for key, value in attributes.items():
        target[key].CopyFrom(to_value(value))


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
        amount = format(value.amount, "f")  # the amount grammar has no exponent form
        return pb.Value(money=pb.Money(amount=amount, currency=value.currency))
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
