"""Tool, prompt and resource decisions for MCP calls, asked of the PDP over gRPC.

Each ``tools/call`` is an ``Authorize`` request: the agent and user from the token, action
``tool.call`` on the resource ``tool``/<name> with ``server`` = the upstream's name, the
arguments the upstream's configuration maps into the context (``amount``…), the MCP
method and upstream in the context (``mcp_method``, ``mcp_server``) so the audit record
names the call, and the token's ``acr`` claim as ``context.acr``, which meets a
``step_up`` as it does through Envoy's ext_authz. ``prompts/get`` and ``resources/read``
are decided the same way (actions ``prompt.get`` and ``resource.read`` on resources
``prompt`` and ``resource``). ``ListAllowed`` says what a list may show: what the
caller may use, and what awaits only the user's consents (:class:`Listed`); the planner
asks it again as if the token were from a stronger login to find what would await only
consents after a step-up.
The PDP fills the user's consents from its consent store; the proxy never sends them.

The proxy authenticates to the PDP as its configuration says (:func:`pdp_credentials`):
TLS, a client certificate, and its own ``tessera:decide`` token from the issuer, sent on
``Authorize`` and ``ListAllowed`` calls alike.

The PDP failing to answer is a deny (:class:`pep.client.AsyncClient` fails closed), and
a list it cannot filter is empty; each such failure is logged with the PDP's status and
counted (``tessera_mcp_proxy_pdp_failures_total``). With a decision cache, an answer
the PDP marks cacheable (no limit and no rule reading ``now`` could decide it) is reused
for identical requests for a few seconds: such a call is not audited again, and its
decision id is that of the decision it reused.

With ``decisions = "local"`` (:class:`LocalDecider`) the proxy decides in its own process,
on the policies and the store ``tessera serve`` uses: the PDP's own decision path (the
directory's refusals, the engine, the agent-trail record, with ``mcp-proxy`` as the PEP),
without a network hop per call, following policy changes as the PDP does. A request that
a ``limit`` could decide still goes to the PDP, which keeps the counters.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
from prometheus_client import CollectorRegistry

from issuer.store import open_store
from pdp.audit.writer import GATHER, AuditWriter
from pdp.bounds import RequestTooLarge
from pdp.decide import DecisionPoint
from pdp.directory import Directory
from pdp.engine import Engine
from pdp.lang.schema import SchemaModel
from pdp.lang.values import Duration, Money, parse_amount
from pdp.loader import Loaded, load_directory
from pdp.metrics import Metrics
from pdp.model import Answer, Request, RequestError
from pdp.request import typed_request
from pdp.serve.proto import authorizer_pb2 as pb
from pdp.serve.proto import authorizer_pb2_grpc as pb_grpc
from pdp.serve.reload import Reloader
from pep.client import (
    AUTHORIZATION,
    PLAINTEXT,
    AsyncClient,
    Credentials,
    Options,
    Query,
    Verdict,
    to_value,
)
from pep.client_tokens import AsyncClientCredentialsToken, TokenError
from pep.errors import PepError
from pep.mcp_proxy.config import ContextArgument, ProxyConfig, Upstream
from pep.mcp_proxy.metrics import ProxyMetrics
from pep.mcp_proxy.tokens import Caller

log = logging.getLogger("tessera.mcp_proxy")
PAYMENT = "payment_initiation"  # the RFC 9396 type a person approves a payment with
CURRENCY = re.compile(r"[A-Z]{3}")  # ISO 4217, as the amount grammar writes money


@dataclass(frozen=True)
class Kind:
    """How one kind of named MCP object is decided."""

    action: str
    resource_type: str
    name_key: str  # the params member that names it
    list_key: str  # the list result's member
    item_key: str  # the listed item's member that names it


TOOL = Kind("tool.call", "tool", "name", "tools", "name")
PROMPT = Kind("prompt.get", "prompt", "name", "prompts", "name")
RESOURCE = Kind("resource.read", "resource", "uri", "resources", "uri")

DECIDED = {"tools/call": TOOL, "prompts/get": PROMPT, "resources/read": RESOURCE}
LISTED = {"tools/list": TOOL, "prompts/list": PROMPT, "resources/list": RESOURCE}


@dataclass(frozen=True)
class Listed:
    """What a list may show: the names the caller may use, and those denied only until
    the user consents (every obligation a consent)."""

    allowed: frozenset[str] = frozenset()
    consent_required: frozenset[str] = frozenset()


class ArgumentError(PepError, ValueError):
    """A mapped argument that cannot be put in the context; ``argument`` names it."""

    def __init__(self, argument: str, problem: str) -> None:
        super().__init__(f"argument {argument!r}: {problem}")
        self.argument = argument


def mapped_context(
    mapping: Mapping[str, ContextArgument], arguments: Mapping[str, Any]
) -> dict[str, Any]:
    """The context attributes the configuration takes from a call's arguments. An amount
    is read by the one amount grammar, from text or a JSON number: a call whose amount
    the PDP would refuse is refused here, naming the argument, before anything is asked."""
    context: dict[str, Any] = {}
    for attribute, spec in mapping.items():
        if spec.argument not in arguments:
            continue
        value = arguments[spec.argument]
        if spec.currency is not None:
            try:
                value = Money(parse_amount(value), spec.currency)
            except ValueError as exc:
                raise ArgumentError(spec.argument, str(exc)) from None
        elif value is None:
            continue
        context[attribute] = value
    return context


def pdp_credentials(config: ProxyConfig, http: httpx.AsyncClient) -> Credentials:
    """How the proxy proves to the PDP that it is a PEP: TLS and a client certificate
    from the configured PEM files, and, with ``pdp_token = "client_credentials"``, its own
    ``tessera:decide`` token, got from the issuer through ``http`` and kept until shortly
    before it expires."""
    token = None
    if config.pdp_token == "client_credentials":
        token = AsyncClientCredentialsToken(
            config.issuer, config.client_id, config.client_secret, http
        )

    def pem(path: str) -> bytes | None:
        return Path(path).read_bytes() if path else None

    return Credentials(
        token=token,
        tls=config.pdp_tls,
        root_certificates=pem(config.pdp_ca),
        certificate_chain=pem(config.pdp_cert),
        private_key=pem(config.pdp_key),
    )


class Decider:
    """Asks the PDP, with ``credentials``: one client for ``Authorize``, one stub for
    ``ListAllowed`` on the same channel and with the same bearer token."""

    def __init__(
        self,
        target: str,
        timeout: float = 0.5,
        cache: float = 0.0,
        credentials: Credentials = PLAINTEXT,
        metrics: ProxyMetrics | None = None,
    ) -> None:
        options = Options(timeout=timeout, cache_size=10_000 if cache > 0 else 0, cache_ttl=cache)
        self.channel = credentials.channel(target, aio=True, options=options.channel_options())
        self.client = AsyncClient(target, options, channel=self.channel, credentials=credentials)
        self.stub = pb_grpc.AuthorizerStub(self.channel)  # type: ignore[no-untyped-call]
        self.token = credentials.token
        self.timeout = timeout
        self.metrics = metrics

    async def close(self) -> None:
        await self.channel.close()

    async def decide(
        self,
        caller: Caller,
        upstream: Upstream,
        method: str,
        kind: Kind,
        name: str,
        context: Mapping[str, Any],
    ) -> Verdict:
        query = _query(caller, upstream, method, kind, name, context)
        return self.answered("Authorize", await self.client.authorize(query))

    def answered(self, call: str, verdict: Verdict) -> Verdict:
        """``verdict``, its failure (the PDP did not decide: a deny) logged and counted."""
        if verdict.error is not None and not verdict.refused:
            self._failed(call, verdict.code or "UNKNOWN", verdict.error)
        return verdict

    async def listed(
        self, caller: Caller, upstream: Upstream, kind: Kind, names: Sequence[str]
    ) -> Listed:
        """What ``ListAllowed`` says of ``names``; none when the PDP cannot say."""
        if not names:
            return Listed()
        request = _list_request(caller, upstream, kind, names)
        try:
            metadata = await self._bearer()
            response = await self.stub.ListAllowed(request, timeout=self.timeout, metadata=metadata)
        except TokenError as exc:
            self._failed("ListAllowed", "UNAUTHENTICATED", f"no bearer token to send: {exc}")
            return Listed()  # fail closed: list nothing
        except grpc.RpcError as exc:
            code = exc.code().name if hasattr(exc, "code") else "UNKNOWN"
            details = exc.details() if hasattr(exc, "details") else str(exc)
            self._failed("ListAllowed", code, f"{code}: {details}")
            return Listed()  # fail closed: list nothing
        return Listed(
            frozenset(r.id for r in response.allowed),
            frozenset(r.id for r in response.consent_required),
        )

    async def _bearer(self) -> tuple[tuple[str, str], ...]:
        """The ``authorization`` metadata of a call: the proxy's token, if it has one."""
        if self.token is None:
            return ()
        token = self.token if isinstance(self.token, str) else self.token()
        if not isinstance(token, str):
            token = await token
        return ((AUTHORIZATION, f"Bearer {token}"),)

    def _failed(self, call: str, code: str, error: str) -> None:
        log.warning("the PDP did not answer %s, so the proxy denies (fail closed): %s", call, error)
        if self.metrics is not None:
            self.metrics.pdp_failed(call, code)


class LocalDecider:
    """Decides in this process what no ``limit`` could decide (see the module's text);
    asks ``remote``, the PDP, for the rest."""

    PEP = "mcp-proxy"

    def __init__(
        self,
        config: ProxyConfig,
        remote: Decider,
        registry: CollectorRegistry | None = None,
        loaded: Loaded | None = None,
    ) -> None:
        if loaded is None:
            loaded = load_directory(config.policies)  # PolicyError: nothing is served
        self.remote = remote
        self.store = open_store(config.store)
        try:
            self.directory = Directory(self.store)
            self.directory.start()
        except BaseException:
            self.store.close()
            raise
        # as the PDP records: async (the default), sync (answered once committed) or off
        self.audit = (
            None
            if config.audit == "off"
            else AuditWriter(self.store, gather=0.0 if config.audit == "sync" else GATHER)
        )
        metrics = Metrics(registry)
        self.point = DecisionPoint(
            Engine(loaded.bundle),
            directory=self.directory,
            metrics=metrics,
            audit=self.audit,
            durability=config.audit,
        )
        self.reloader = Reloader(
            config.policies, self.point.use, config.reload_interval, metrics.reloads
        )
        self.reloader.start()
        self._warned: set[tuple[str, str]] = set()

    async def close(self) -> None:
        await self.reloader.stop()
        if self.audit is not None:
            self.audit.close()
        self.directory.stop()
        self.store.close()
        await self.remote.close()

    async def decide(
        self,
        caller: Caller,
        upstream: Upstream,
        method: str,
        kind: Kind,
        name: str,
        context: Mapping[str, Any],
    ) -> Verdict:
        query = _query(caller, upstream, method, kind, name, context)
        try:
            request = _request(self.point.schema, query)
            answer = await self.point.decide_without_limits(request, self.PEP)
        except RequestError as exc:  # fail closed, as the PDP's refusal
            code = "RESOURCE_EXHAUSTED" if isinstance(exc, RequestTooLarge) else "INVALID_ARGUMENT"
            return Verdict.failed(f"{code}: {exc}", code)
        if answer is None:
            verdict = self.remote.answered("Authorize", await self.remote.client.authorize(query))
            self._compare(verdict.bundle_version)
            return verdict
        return _verdict(answer)

    def _compare(self, theirs: str) -> None:
        """Warn (once per pair) when the PDP decides with another bundle than this proxy:
        ``policies`` should be the directory the PDP loads."""
        mine = self.point.version
        if theirs and theirs != mine and (mine, theirs) not in self._warned:
            self._warned.add((mine, theirs))
            log.warning(
                "the PDP decides with bundle %s and this proxy with %s: is policies the "
                "PDP's directory? (a reload in progress also shows this, once)",
                theirs,
                mine,
            )

    async def listed(
        self, caller: Caller, upstream: Upstream, kind: Kind, names: Sequence[str]
    ) -> Listed:
        """As ``ListAllowed``: what a call would be answered, using up no limit. A list
        with a name a ``limit`` could decide is the PDP's to filter (the counters are
        there)."""
        allowed = set()
        consent_required = set()
        method = f"{kind.list_key}/list"
        for name in names:
            try:
                query = _query(caller, upstream, method, kind, name, {})
                request = _request(self.point.schema, query)
                decision = self.point.preview_without_limits(request)
            except RequestError:
                continue  # fail closed: not listed
            if decision is None:
                return await self.remote.listed(caller, upstream, kind, names)
            if decision.allow:
                allowed.add(name)
            elif decision.awaits_consent:
                consent_required.add(name)
        return Listed(frozenset(allowed), frozenset(consent_required))


def _verdict(answer: Answer) -> Verdict:
    decision, decision_id = answer.decision, answer.decision_id
    return Verdict(
        allow=decision.allow,
        obligations=tuple((o.kind, o.value) for o in decision.obligations),
        decided_by=decision.decided_by,
        reasons=decision.reasons,
        decision_id=decision_id,
        bundle_version=decision.bundle_version,
    )


def _query(
    caller: Caller,
    upstream: Upstream,
    method: str,
    kind: Kind,
    name: str,
    context: Mapping[str, Any],
) -> Query:
    return Query(
        agent=caller.agent,
        user=caller.user,
        chain=caller.chain or None,
        action=kind.action,
        resource_type=kind.resource_type,
        resource_id=name,
        resource_attributes={"server": upstream.name} if kind is TOOL else {},
        context=_context(caller, upstream, method, context),
    )


def _request(schema: SchemaModel, query: Query) -> Request:
    """The one typed request ``query`` stands for: what the PDP would be asked, decided
    in this process."""
    return typed_request(
        schema,
        agent={"id": query.agent},
        user=None if query.user is None else {"id": query.user},
        chain=query.chain,
        action=query.action,
        resource_type=query.resource_type,
        resource_id=query.resource_id,
        resource=query.resource_attributes,
        context=query.context,
    )


def _context(
    caller: Caller, upstream: Upstream, method: str, context: Mapping[str, Any]
) -> dict[str, Any]:
    """A decision's context: the mapped arguments, the MCP method and upstream, the
    token's ``acr`` (what ``step_up`` is met by), passed as Envoy's ext_authz passes it,
    and what a person approved (:func:`approval`)."""
    full = {**context, "mcp_method": method, "mcp_server": upstream.name}
    acr = caller.claims.get("acr")
    if isinstance(acr, str):
        full["acr"] = acr
    full.update(approval(caller.claims, time.time()))
    return full


def approval(claims: Mapping[str, Any], now: float) -> dict[str, Any]:
    """What a person approved, from a token a human approval gave (``amr`` has
    ``human``: OpenID CIBA): its first ``payment_initiation`` (RFC 9396) as
    ``approved_amount`` (money) and ``approved_creditor``, and the approval's age
    (``auth_time``) as ``approval_age``. A token of any other grant carries whatever
    ``authorization_details`` its client asked for, which no person saw: nothing. A part
    that cannot be read is left out, so a rule that reads it fails (closed)."""
    amr = claims.get("amr")
    if not isinstance(amr, list) or "human" not in amr:
        return {}
    found: dict[str, Any] = {}
    auth_time = claims.get("auth_time")
    if isinstance(auth_time, int) and not isinstance(auth_time, bool):
        found["approval_age"] = Duration(max(0, int(now) - auth_time))
    payment = _first_payment(claims.get("authorization_details"))
    instructed = payment.get("instructedAmount")
    if isinstance(instructed, dict) and CURRENCY.fullmatch(str(instructed.get("currency"))):
        try:
            amount = parse_amount(instructed.get("amount"))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            pass  # not an amount: left out
        else:
            found["approved_amount"] = Money(amount, instructed["currency"])
    if isinstance(payment.get("creditorName"), str):
        found["approved_creditor"] = payment["creditorName"]
    return found


def _first_payment(details: Any) -> Mapping[str, Any]:
    """The first ``payment_initiation`` of an ``authorization_details`` claim; {} when
    there is none."""
    if isinstance(details, list):
        for detail in details:
            if isinstance(detail, dict) and detail.get("type") == PAYMENT:
                return detail
    return {}


def _list_request(
    caller: Caller, upstream: Upstream, kind: Kind, names: Sequence[str]
) -> pb.ListAllowedRequest:
    request = pb.ListAllowedRequest(
        agent=pb.Agent(id=caller.agent),
        action=kind.action,
        candidates=[
            pb.Resource(
                type=kind.resource_type,
                id=name,
                attributes={"server": to_value(upstream.name)} if kind is TOOL else {},
            )
            for name in names
        ],
        context={
            name: to_value(value)
            for name, value in _context(caller, upstream, f"{kind.list_key}/list", {}).items()
        },
    )
    if caller.user is not None:
        request.user.CopyFrom(pb.User(id=caller.user))
    if caller.chain:
        request.delegation.CopyFrom(pb.Delegation(chain=list(caller.chain)))
    return request
