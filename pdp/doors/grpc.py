"""The gRPC door, ``tessera.v1.Authorizer``: protobuf in, one :class:`Request`, protobuf out.

``Authorize``, ``AuthorizeBatch`` and ``ListAllowed`` each convert their message straight
into typed requests, ask the :class:`DecisionPoint`, and build the response straight from
the decision (:func:`answer_to_bytes`, :func:`answer_to_proto`). ``Authorize`` and
``AuthorizeBatch`` read the common shape of a question from its bytes with a compiled
reader (:func:`read_request`, :mod:`pdp.doors._wire`); every other question is parsed by
protobuf and read from the message (:func:`request_from_proto`), to the same request.
A malformed request is answered INVALID_ARGUMENT naming the field (or, for bytes protobuf
refuses, saying why), never with a traceback or an exception's name; a fault of ours is
logged and answered INTERNAL.

Where the port asks its callers for a bearer token (:mod:`pdp.doors.callers`), each call
without an acceptable one is answered UNAUTHENTICATED, or PERMISSION_DENIED for a token
without ``tessera:decide``, before its message is read. A question may carry the agent's
own token (``agent_token``) instead of naming the agent: it is decided for whom the token
names, and refused UNAUTHENTICATED when the token does not verify.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message

from issuer.verify import Caller
from pdp.bounds import DEFAULT_BOUNDS, Bounds, Measure, RequestTooLarge
from pdp.decide import DecisionPoint
from pdp.doors.callers import OPEN, AgentTokens, CallerRefused, Callers, bearer, named_by
from pdp.lang.schema import AGENT_SUBJECT, PERSONS, SchemaModel, Type
from pdp.metrics import Metrics
from pdp.model import Answer, Decision, Request, RequestError, delegation_for
from pdp.request import typed_attributes, typed_resource, typed_subject
from pdp.serve.proto import authorizer_pb2 as pb

log = logging.getLogger("tessera.serve")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Authorizer"].full_name
INTERNAL = "internal error in the decision service (it is logged)"
IDEMPOTENCY_KEY = "idempotency-key"  # the metadata a PEP keeps across retries of one call

T = TypeVar("T")
M = TypeVar("M", bound=Message)

# Protobuf's default recursion limit (upb's and the Python decoder's alike): messages
# within messages, below the one parsed. Its refusal says so in the implementation's words.
PROTOBUF_DEPTH = 100
_TOO_DEEP = ("MaxDepth", "levels of nesting")
_SCALARS = frozenset(("string", "bool", "risk", "duration", "time", "ip", "number", "integer"))
# Message methods called through their class: a method looked up on a message is first
# looked for among its fields, which costs the hot path more than the call.
_kind = pb.Value.WhichOneof
_has = pb.AuthorizeRequest.HasField

Identify = Callable[[str, str], str]
"""The directory's id of a person named by any of their ids (name, field) -> id."""


# ------------------------------------------------------------------ protobuf -> Request


def plain_value(value: pb.Value, path: str) -> Any:
    """One ``Value`` as the plain value it carries (the schema then types it)."""
    kind = value.WhichOneof("kind")
    if kind in _SCALARS:
        return getattr(value, kind)
    if kind is None:
        raise RequestError(f"{path}: a Value with no kind set")
    if kind == "money":
        return {"amount": value.money.amount, "currency": value.money.currency}
    if kind == "strings":
        return list(value.strings.values)
    if kind == "list":
        return [plain_value(v, f"{path}[{i}]") for i, v in enumerate(value.list.values)]
    return plain_values(value.map.values, path)


def plain_values(attributes: Mapping[str, pb.Value], where: str) -> dict[str, Any]:
    """A map of ``Value`` as plain values."""
    if not attributes:
        return {}
    # Keys, then lookups: a protobuf map's items() iterates in Python, its keys in C.
    return {key: plain_value(attributes[key], f"{where}.{key}") for key in attributes}


def typed_from_proto(
    attributes: Mapping[str, pb.Value], where: str, types: Mapping[str, Type]
) -> dict[str, Any]:
    """A message's attribute map, typed by the schema."""
    return typed_attributes(plain_values(attributes, where), where, types)


Parts = tuple[
    str,  # the agent's id
    dict[str, Any],  # its attributes
    tuple[str, dict[str, Any]] | None,  # the user's id and attributes, when there is a user
    tuple[str, ...] | None,  # the delegation chain, when the message has a delegation
    str,  # the action
    str,  # the resource's type
    str,  # its id
    dict[str, Any],  # its attributes
    dict[str, Any],  # the context
]
"""A question about an agent, every attribute a plain value: what :func:`plain_parts`
reads from a message's bytes and :func:`parts_of` from a parsed message."""

plain_parts: Callable[[bytes], Parts | None] | None
batch_parts: Callable[[bytes], list[tuple[Parts, int]] | None] | None
try:  # compiled at install (setup.py)
    from pdp.doors._wire import batch_parts, plain_parts
except ImportError:  # no C compiler was at hand: protobuf parses every request
    plain_parts = batch_parts = None


def read_request(
    raw: bytes, schema: SchemaModel, trusted: bool, bounds: Bounds, identify: Identify | None
) -> Request | None:
    """The typed request ``raw`` asks, read without parsing a protobuf message, or None
    for a question left to :func:`request_from_proto`: one the reader does not take (see
    :mod:`pdp.doors._wire`), or too large to be within the bounds at a glance."""
    parts = plain_parts(raw) if plain_parts is not None else None
    if parts is None or not _at_a_glance(parts, len(raw), bounds):
        return None
    return request_from_parts(parts, schema, trusted, len(raw), identify)


def read_batch(
    raw: bytes, schema: SchemaModel, trusted: bool, bounds: Bounds, identify: Identify | None
) -> list[Request] | None:
    """The typed requests of an ``AuthorizeBatchRequest``, as :func:`read_request` reads
    one, or None when any of them is left to :func:`request_from_proto`."""
    items = batch_parts(raw) if batch_parts is not None else None
    if items is None or not all(_at_a_glance(*item, bounds) for item in items):
        return None
    typed = []
    for index, (parts, size) in enumerate(items):
        try:
            typed.append(request_from_parts(parts, schema, trusted, size, identify))
        except RequestError as exc:
            raise in_batch(exc, index) from None
    return typed


def in_batch(exc: RequestError, index: int) -> RequestError:
    """``exc`` naming the batch's request it is about."""
    return type(exc)(f"requests[{index}].{exc}")


def _at_a_glance(parts: Parts, size: int, bounds: Bounds) -> bool:
    """Whether a question is within ``bounds`` without measuring its values, as
    :func:`within` finds for a message of this size."""
    most = bounds.attributes
    if size <= 2 * most:
        return True
    user = parts[2]
    return size <= bounds.undeclared_bytes and (
        len(parts[1]) <= most
        and len(parts[7]) <= most
        and len(parts[8]) <= most
        and (user is None or len(user[1]) <= most)
    )


def parts_of(message: pb.AuthorizeRequest, trusted: bool) -> Parts:
    """The parts of a parsed question about an agent; the agent's and user's attributes
    only when ``trusted`` (else they are not read, and may hold anything)."""
    user = None
    if _has(message, "user"):
        user = (message.user.id, _attributes(message.user, "user", trusted))
    chain = tuple(message.delegation.chain) if _has(message, "delegation") else None
    resource = message.resource
    return (
        message.agent.id,
        _attributes(message.agent, "agent", trusted),
        user,
        chain,
        message.action,
        resource.type,
        resource.id,
        plain_values(resource.attributes, "resource"),
        plain_values(message.context, "context"),
    )


def _attributes(entity: pb.Agent | pb.User, where: str, trusted: bool) -> dict[str, Any]:
    """An agent's or user's attributes as plain values; none unless ``trusted``."""
    return plain_values(entity.attributes, where) if trusted else {}


def request_from_parts(
    parts: Parts, schema: SchemaModel, trusted: bool, size: int, identify: Identify | None
) -> Request:
    """The typed request of a question about an agent."""
    agent_id, agent_values, user_parts, chain, action, rtype, rid, resource, context = parts
    if user_parts is None and chain is None and not resource and action and rtype and rid:
        # The agent acting alone on a resource with no attributes of its own: most
        # questions, their delegation and resource written out (no check of them could
        # refuse).
        return Request(
            _entity(agent_id, agent_values, "agent", schema.agent, trusted),
            None,
            {"delegated": False, "depth": 0, "chain": ()},
            action,
            {"type": rtype, "id": rid},
            typed_attributes(context, "context", schema.context) if context else {},
            size,
        )
    agent = _entity(agent_id, agent_values, "agent", schema.agent, trusted)
    user = None
    if user_parts is not None:
        user = _entity(*user_parts, "user", schema.user, trusted)
        if identify is not None:
            user["id"] = identify(user["id"], "user.id")
    return _asked(agent, user, chain, action, rtype, rid, resource, context, schema, size)


def _asked(
    agent: dict[str, Any],
    user: dict[str, Any] | None,
    chain: tuple[str, ...] | None,
    action: str,
    rtype: str,
    rid: str,
    resource: dict[str, Any],
    context: dict[str, Any],
    schema: SchemaModel,
    size: int,
) -> Request:
    """The request once its agent and user are typed: the action, resource and context
    checked and typed."""
    if not action:
        raise RequestError('action: required, a non-empty string such as "tool.call"')
    return Request(
        agent,
        user,
        delegation_for(agent["id"], user, chain),
        action,
        typed_resource(rtype, rid, resource, schema),
        typed_attributes(context, "context", schema.context) if context else {},
        size,
    )


def _entity(
    ident: str, values: dict[str, Any], where: str, types: Mapping[str, Type], trusted: bool
) -> dict[str, Any]:
    """An agent or user: its id, and its attributes typed when the caller is trusted."""
    if not ident:
        raise RequestError(f"{where}.id: required, a non-empty string (or an agent_token)")
    if not (trusted and values):
        return {"id": ident}
    typed = typed_attributes(values, where, types)
    typed["id"] = ident
    return typed


def request_from_proto(
    message: pb.AuthorizeRequest,
    schema: SchemaModel,
    trust_callers: bool = True,
    size: int | None = None,
    bounds: Bounds = DEFAULT_BOUNDS,
    who: Caller | None = None,
    identify: Identify | None = None,
) -> Request:
    """The typed request an ``AuthorizeRequest`` asks, or a :class:`RequestError` naming
    the field (:class:`RequestTooLarge` over one of ``bounds``). ``size`` is the message's
    serialized size when the caller has it. Unless ``trust_callers``, the agent's and
    user's attributes are left out (the directory's replace them). ``who``: the caller
    its verified ``agent_token`` names, whom the request is then about. ``identify``: the
    directory's id for a person named by another of their ids
    (:meth:`DecisionPoint.identify`); without it, ids are taken as sent."""
    if size is None:
        size = message.ByteSize()
    within(message, schema, size, bounds)
    if _has(message, "subject"):
        if _has(message, "agent"):
            raise RequestError("agent: the subject is named in agent or in subject, not both")
        if message.subject.type != AGENT_SUBJECT:
            return _other_request(message, schema, size, identify)
        message = _as_agent(message)
    if who is None:
        if message.agent_token:  # never decided for an agent token not verified
            raise RequestError("agent_token: not taken here; name the agent in agent.id")
        parts = parts_of(message, trust_callers)
        return request_from_parts(parts, schema, trust_callers, size, identify)
    # A question with an agent token: about whom the token names (``who``), which what
    # the question names must agree with (named_by); the attributes of whom it keeps.
    parts = parts_of(message, False)  # the attributes read below, of whom is kept
    given_user = (parts[2][0] or None) if parts[2] is not None else None
    agent_id, user_id, chain = named_by(who, parts[0], given_user, parts[3])
    agent_values = _attributes(message.agent, "agent", trust_callers)
    agent = _entity(agent_id, agent_values, "agent", schema.agent, trust_callers)
    user = None
    if user_id is not None:
        user_values = _attributes(message.user, "user", trust_callers)
        user = _entity(user_id, user_values, "user", schema.user, trust_callers)
    return _asked(agent, user, chain, *parts[4:], schema, size)


def _as_agent(message: pb.AuthorizeRequest) -> pb.AuthorizeRequest:
    """A question whose ``subject`` is an agent, asked as ``agent``: the subject's id,
    its properties the agent's attributes."""
    asked = pb.AuthorizeRequest()
    asked.CopyFrom(message)
    asked.ClearField("subject")
    asked.agent.id = message.subject.id
    asked.agent.attributes.MergeFrom(message.subject.properties)
    return asked


def _other_request(
    message: pb.AuthorizeRequest, schema: SchemaModel, size: int, identify: Identify | None
) -> Request:
    """The typed request of a question about a subject that is no agent: a person (its
    id identified, its properties the person's attributes) or a declared type."""
    subject = message.subject
    given = [name for name in ("user", "delegation") if message.HasField(name)]
    if message.agent_token:
        given.append("agent_token")
    if given:
        raise RequestError(
            f"{given[0]}: only an agent acts for a user, through agents or with an agent "
            f"token, and the subject is a {subject.type or 'subject of no type'}"
        )
    for reserved in ("id", "type"):
        if reserved in subject.properties:
            raise RequestError(
                f"subject.properties.{reserved}: the subject's {reserved} is subject.{reserved}"
            )
    user = None
    if subject.type in PERSONS:
        named = typed_subject({"type": subject.type, "id": subject.id}, schema)
        user = typed_from_proto(subject.properties, "subject.properties", schema.user)
        user["id"] = subject.id if identify is None else identify(subject.id, "subject.id")
    else:
        values = plain_values(subject.properties, "subject.properties")
        raw = {**values, "type": subject.type, "id": subject.id}
        named = typed_subject(raw, schema, where="subject.properties")
    if not message.action:
        raise RequestError('action: required, a non-empty string such as "tool.call"')
    context = message.context
    return Request(
        None,
        user,
        delegation_for(None, user, None),
        message.action,
        typed_resource(
            message.resource.type,
            message.resource.id,
            plain_values(message.resource.attributes, "resource"),
            schema,
        ),
        typed_from_proto(context, "context", schema.context) if context else {},
        size,
        named,
    )


def within(message: pb.AuthorizeRequest, schema: SchemaModel, size: int, bounds: Bounds) -> None:
    """Refuse a message over the request's bounds. A value's size never exceeds its
    bytes in the message, so a message no larger than ``undeclared_bytes`` (the smallest
    bound) holds nothing over a bound but, perhaps, too many attributes; and a map entry
    takes two bytes at least, so the smallest messages (most) need no look at all."""
    most = bounds.attributes
    if size <= 2 * most:
        return
    if size <= bounds.undeclared_bytes and (
        len(message.context) <= most
        and len(message.resource.attributes) <= most
        and len(message.agent.attributes) <= most
        and len(message.user.attributes) <= most
        and len(message.subject.properties) <= most
    ):
        return
    measure = Measure(bounds)
    maps = _attribute_maps(message, schema)
    for where, attributes, _ in maps:
        measure.count(len(attributes), where)
    resource = message.resource
    measure.text(message.agent.id, message.user.id, message.action, resource.type, resource.id)
    measure.text(message.subject.type, message.subject.id)
    measure.text(*message.delegation.chain)
    for where, attributes, types in maps:
        for key in attributes:
            path = f"{where}.{key}"
            measure.value(path, key, plain_value(attributes[key], path), key in types)


def _attribute_maps(
    message: pb.AuthorizeRequest, schema: SchemaModel
) -> tuple[tuple[str, Mapping[str, pb.Value], Mapping[str, Type]], ...]:
    """Each attribute map of a message: where it is, its values, their declared types."""
    resource = message.resource
    subject = message.subject
    if subject.type in PERSONS:
        subject_types = schema.user
    elif subject.type == AGENT_SUBJECT:
        subject_types = schema.agent
    else:
        subject_types = schema.subject_attrs(subject.type)
    return (
        ("agent", message.agent.attributes, schema.agent),
        ("user", message.user.attributes, schema.user),
        ("subject.properties", subject.properties, subject_types),
        ("resource", resource.attributes, schema.request_types(resource.type)),
        ("context", message.context, schema.context),
    )


# ------------------------------------------------------------------ Decision -> protobuf


def answer_to_proto(answer: Answer) -> pb.AuthorizeResponse:
    """The response telling ``answer``: the decision's part made once per decision (most
    are shared by every call a rule decides alone), the call's id and cacheability added."""
    response = pb.AuthorizeResponse()
    response.CopyFrom(_prepared(answer.decision)[0])
    response.decision_id = answer.decision_id
    response.cacheable = answer.cacheable
    return response


def _prepared(decision: Decision) -> tuple[pb.AuthorizeResponse, bytes]:
    """The decision's part of a response, as a message and serialized, made once."""
    prepared = _by_decision.get(decision)
    if prepared is None:
        template = _response(decision)
        prepared = (template, template.SerializeToString())
        if len(_by_decision) >= TEMPLATES_SIZE:
            _by_decision.clear()
        _by_decision[decision] = prepared
    return prepared


def _response(decision: Decision) -> pb.AuthorizeResponse:
    return pb.AuthorizeResponse(
        allow=decision.allow,
        obligations=[pb.Obligation(kind=o.kind, value=o.value) for o in decision.obligations],
        decided_by=decision.decided_by,
        reasons=decision.reasons,
        bundle_version=decision.bundle_version,
        errors=[
            pb.RuleError(rule=e.rule, effect=e.effect, message=e.message) for e in decision.errors
        ],
    )


TEMPLATES_SIZE = 4_096  # decisions whose response part is remembered (bounded memory)
_by_decision: dict[Decision, tuple[pb.AuthorizeResponse, bytes]] = {}

# AuthorizeResponse fields 5 (decision_id, length-delimited) and 8 (cacheable, varint):
# their tags on the wire (field number << 3 | wire type).
_DECISION_ID_TAG = bytes([5 << 3 | 2])
_CACHEABLE_TRUE = bytes([8 << 3 | 0, 1])
_SHORT = [bytes([n]) for n in range(128)]  # the varints of lengths below 128: one byte


def answer_to_bytes(answer: Answer) -> bytes:
    """The serialized response telling ``answer``: the decision's fields serialized once
    per decision, then the call's decision id and cacheability appended. Protocol
    Buffers read fields in any order, so this parses as :func:`answer_to_proto` does."""
    head = _prepared(answer.decision)[1]
    ident = answer.decision_id.encode()
    size = len(ident)
    length = _SHORT[size] if size < 128 else varint(size)
    tail = _CACHEABLE_TRUE if answer.cacheable else b""
    return b"".join((head, _DECISION_ID_TAG, length, ident, tail))


def varint(value: int) -> bytes:
    """``value`` as a protobuf base-128 varint."""
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def parsed(raw: bytes, kind: type[M]) -> M:
    """A message of ``kind`` from its bytes, or a RequestError saying why they are not one.

    Every door parses its requests itself, from bytes: gRPC, left to deserialize them,
    would answer a failure UNKNOWN, naming Python's exception class. Protobuf refuses a
    message nested deeper than :data:`PROTOBUF_DEPTH` (a ``Value`` list in a list…, or
    Envoy's ``Struct``) as it refuses bytes that are not a message; the answer says which."""
    try:
        message: M = kind.FromString(raw)
    except DecodeError as exc:
        if any(sign in str(exc) for sign in _TOO_DEEP):
            raise RequestError(
                f"the request nests deeper than protobuf's limit of {PROTOBUF_DEPTH} levels"
            ) from None
        raise RequestError(
            f"the request is not a valid {kind.DESCRIPTOR.full_name} message"
        ) from None
    return message


def idempotency_key(context: grpc.aio.ServicerContext) -> str:
    """The call's ``idempotency-key`` metadata ("" without one): the PEP sends the same
    key on each retry of one call, so a limit records the call's usage once."""
    for name, value in context.invocation_metadata() or ():
        if name == IDEMPOTENCY_KEY and isinstance(value, str):
            return value
    return ""


# ------------------------------------------------------------------ the servicer


class Calls:
    """Each call kept in flight (its context, which a drain answers when the call outlasts
    it) and timed by method; a malformed request answered INVALID_ARGUMENT naming the
    field, and a fault of ours logged with its traceback and answered INTERNAL without
    one."""

    def __init__(self, metrics: Metrics, method: str) -> None:
        self.metrics = metrics
        self.in_flight = metrics.calls_in_flight
        self.seconds = metrics.rpc_seconds.labels(method)
        self.method = method

    async def run(self, work: Callable[[], Awaitable[T]], context: grpc.aio.ServicerContext) -> T:
        started = self.begin(context)
        try:
            return await work()
        except Exception as exc:
            await self.failed(exc, context)
            raise  # failed() aborts the call; this line only tells type checkers so
        finally:
            self.end(started, context)

    def begin(self, context: grpc.aio.ServicerContext) -> float:
        """Keep a call in flight; when it started."""
        self.in_flight.add(context)
        return time.perf_counter()

    def end(self, started: float, context: grpc.aio.ServicerContext) -> None:
        """The call is over: no longer in flight, and timed."""
        self.in_flight.discard(context)
        self.seconds.observe(time.perf_counter() - started)

    async def failed(self, exc: Exception, context: grpc.aio.ServicerContext) -> None:
        """End the call with the status ``exc`` stands for (an abort passes through)."""
        if isinstance(exc, grpc.aio.AbortError):
            return
        if isinstance(exc, CallerRefused):
            code = grpc.StatusCode.UNAUTHENTICATED
            if exc.forbidden:
                code = grpc.StatusCode.PERMISSION_DENIED
            await context.abort(code, exc.message)
        if isinstance(exc, RequestError):
            # The abort's exception outlives the call in a reference cycle through grpc's
            # frames, until the cyclic collector runs: let it keep none of the request.
            exc.__traceback__ = None
            code = grpc.StatusCode.INVALID_ARGUMENT
            if isinstance(exc, RequestTooLarge):
                code = grpc.StatusCode.RESOURCE_EXHAUSTED
            await context.abort(code, str(exc))
        log.error("%s failed", self.method, exc_info=exc)
        await context.abort(grpc.StatusCode.INTERNAL, INTERNAL)


class AuthorizerDoor:
    """``tessera.v1.Authorizer`` over a decision point, for the callers ``callers`` admits.

    ``Authorize``, the hot path, takes and returns the message bytes: it parses the
    request itself (its bytes are the decision cache's key) and writes the response from
    bytes made once per decision (:func:`answer_to_bytes`)."""

    def __init__(self, point: DecisionPoint, callers: Callers = OPEN) -> None:
        self.point = point
        self._peps = callers.peps
        self._agent_tokens: AgentTokens = callers.agent_tokens
        # Persons named by any of their ids, where a directory knows them.
        self._identify = point.identify if point.directory is not None else None
        metrics = point.metrics
        self._calls = {m: Calls(metrics, m) for m in ("Authorize", "AuthorizeBatch", "ListAllowed")}

    async def _admit(self, context: grpc.aio.ServicerContext) -> None:
        """Let the call in when its caller need not, or did, show a PEP's bearer token."""
        if self._peps is not None:
            await self._peps.admit(bearer(context.invocation_metadata()))

    async def _named(self, token: str) -> Caller | None:
        """Whom a question's agent token names (None without one)."""
        return await self._agent_tokens.caller(token) if token else None

    async def Authorize(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        # Calls.run's steps written out: no closure and no second coroutine per call.
        calls = self._calls["Authorize"]
        started = calls.begin(context)
        try:
            if self._peps is not None:
                await self._peps.admit(bearer(context.invocation_metadata()))
            point = self.point
            request = read_request(
                raw, point.schema, point.trusts_callers, point.bounds, self._identify
            )
            if request is None:  # a question the reader leaves to protobuf
                message = parsed(raw, pb.AuthorizeRequest)
                who = await self._named(message.agent_token) if message.agent_token else None
                request = request_from_proto(
                    message,
                    point.schema,
                    point.trusts_callers,
                    len(raw),
                    point.bounds,
                    who,
                    self._identify,
                )
            key = raw if point.cache is not None else None
            once = partial(idempotency_key, context)
            # DecisionPoint.decide's steps written out too: the answer at once, and a wait
            # only for a record that sync durability must see committed.
            answer, record = point.answer(request, context.peer, key=key, once=once)
            if record is not None:
                committed = point.hand_over(record)
                if committed is not None:
                    await committed
            return answer_to_bytes(answer)
        except Exception as exc:
            raw = b""  # this frame, too, outlives the call until collected (see failed)
            await calls.failed(exc, context)
            raise
        finally:
            calls.end(started, context)

    async def AuthorizeBatch(
        self, raw: bytes, context: grpc.aio.ServicerContext
    ) -> pb.AuthorizeBatchResponse:
        point = self.point

        async def work() -> pb.AuthorizeBatchResponse:
            await self._admit(context)
            schema, trusted, bounds = point.schema, point.trusts_callers, point.bounds
            identify = self._identify
            # Every question checked before any is decided.
            typed = read_batch(raw, schema, trusted, bounds, identify)
            if typed is None:  # a question the reader leaves to protobuf
                typed = []
                for index, item in enumerate(parsed(raw, pb.AuthorizeBatchRequest).requests):
                    try:
                        who = await self._named(item.agent_token)
                        typed.append(
                            request_from_proto(item, schema, trusted, None, bounds, who, identify)
                        )
                    except RequestError as exc:
                        raise in_batch(exc, index) from None
                    except CallerRefused as exc:
                        message = f"requests[{index}]: {exc.message}"
                        raise CallerRefused(exc.refusal, message) from None
            answers = await point.decide_many(typed, context.peer, idempotency_key(context))
            return pb.AuthorizeBatchResponse(responses=[answer_to_proto(a) for a in answers])

        return await self._calls["AuthorizeBatch"].run(work, context)

    async def ListAllowed(
        self, raw: bytes, context: grpc.aio.ServicerContext
    ) -> pb.ListAllowedResponse:
        point = self.point

        async def work() -> pb.ListAllowedResponse:
            await self._admit(context)
            request = parsed(raw, pb.ListAllowedRequest)
            who = await self._named(request.agent_token)
            response = pb.ListAllowedResponse(bundle_version=point.version)
            schema, trusted, bounds = point.schema, point.trusts_callers, point.bounds
            questions = []
            for index, candidate in enumerate(request.candidates):
                question = listed_question(request, candidate)
                try:
                    questions.append(
                        request_from_proto(
                            question, schema, trusted, None, bounds, who, self._identify
                        )
                    )
                except RequestError as exc:
                    raise type(exc)(f"candidates[{index}]: {exc}") from None
            allowed, consent = point.allowed(questions)
            response.allowed.extend(request.candidates[i] for i in allowed)
            response.consent_required.extend(request.candidates[i] for i in consent)
            return response

        return await self._calls["ListAllowed"].run(work, context)


def listed_question(request: pb.ListAllowedRequest, candidate: pb.Resource) -> pb.AuthorizeRequest:
    """The ``Authorize`` question a ``ListAllowed`` request asks about one candidate (a
    refused agent is denied each, so it may call nothing)."""
    question = pb.AuthorizeRequest(
        action=request.action,
        resource=candidate,
        context=request.context,
        agent_token=request.agent_token,
    )
    if request.HasField("agent"):
        question.agent.CopyFrom(request.agent)
    if request.HasField("subject"):
        question.subject.CopyFrom(request.subject)
    if request.HasField("user"):
        question.user.CopyFrom(request.user)
    if request.HasField("delegation"):
        question.delegation.CopyFrom(request.delegation)
    return question


def add_to_server(
    point: DecisionPoint, server: grpc.aio.Server, callers: Callers = OPEN
) -> AuthorizerDoor:
    """Serve ``tessera.v1.Authorizer`` over ``point`` on ``server`` to the callers
    ``callers`` admits (as the generated ``add_AuthorizerServicer_to_server`` would, but
    each method taking the request's bytes, which it parses itself: see :func:`parsed`)."""
    door = AuthorizerDoor(point, callers)
    handlers = {
        "Authorize": grpc.unary_unary_rpc_method_handler(door.Authorize),
        "AuthorizeBatch": grpc.unary_unary_rpc_method_handler(
            door.AuthorizeBatch,
            response_serializer=pb.AuthorizeBatchResponse.SerializeToString,
        ),
        "ListAllowed": grpc.unary_unary_rpc_method_handler(
            door.ListAllowed,
            response_serializer=pb.ListAllowedResponse.SerializeToString,
        ),
    }
    add_service(server, SERVICE_NAME, handlers)
    return door


def add_service(
    server: grpc.aio.Server, name: str, handlers: Mapping[str, grpc.RpcMethodHandler]
) -> None:
    """Serve the methods ``handlers`` of service ``name`` on ``server``.

    As a generic handler only: grpc.aio's registered methods (what generated code adds
    too) cost each call of the server more CPU, the more of them there are (measured with
    a fixed answer: the PDP's six registered methods, about 6% of a bare echo call)."""
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, handlers),))
