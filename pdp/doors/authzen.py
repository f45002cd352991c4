"""The OpenID AuthZEN Authorization API 1.0, HTTPS JSON binding, beside the issuer.

Endpoints (AuthZEN 1.0 §10.1, "API Endpoint Overview"), all ``POST`` with a JSON object:

    /access/v1/evaluation         one decision: {"decision": true}
    /access/v1/evaluations        many, with the three evaluations_semantic options (§7.1.2)
    /access/v1/search/subject     the subjects of a type that may do an action on a resource
    /access/v1/search/resource    the resources of a type a subject may act on
    /access/v1/search/action      the actions a subject may take on a resource

and ``GET /.well-known/authzen-configuration``, the PDP metadata (§9).

How AuthZEN's information model maps onto a Tessera request:

    subject   {"type": "agent", "id": AGENT_ID, "properties": {"user": USER,
                                                              "delegation": [ACTOR, ...]}}
              an agent; the directory gives its attributes (other properties are
              ignored, as agent attributes a caller sends are); USER is any id of the
              person it acts for (as a person's id, below)
              or {"type": "agent", "properties": {"token": AGENT_ACCESS_TOKEN}}: the
              agent, user and delegation the verified token names (id, user and
              delegation, when also given, must say the same; else a 400)
              or {"type": "user" | "identity", "id": ID, "properties": {ATTRIBUTE: …}}:
              a person, ID their SCIM id, userName, externalId or e-mail address
              (:mod:`pdp.subjects`; two users answer to it: a 400 naming subject.id);
              the directory's user when it knows them, else the properties (user.*)
              or {"type": TYPE, "id": ID, "properties": {…}} for a TYPE the schema
              declares (subject TYPE { … }): the properties are its subject.*
    action    {"name": ACTION}                           e.g. "tool.call", "db.read"
    resource  {"type": TYPE, "id": ID, "properties": {ATTRIBUTE: VALUE, ...}}
    context   {ATTRIBUTE: VALUE, ...}                    e.g. {"amount": "200 USD"}

Values are typed by the policy schema as request JSON is (see README.md); consents come
from the consent store. Each evaluation is decided by :meth:`DecisionPoint.decide`,
as ``Authorize`` is (directory, limits, audit record). Searches decide each
candidate without using up limits or leaving a record (as ``ListAllowed``); their
candidates are the directory's agents or users (named in the form
``subject.properties.id_form`` asks: id, userName, the default, externalId or email), the
resource ids the policies' targets spell out exactly (a glob cannot be listed) and those
the resource catalog holds, or the action names the targets spell out.

A response is exactly ``{"decision": true}`` (or ``false``) unless the request's
``options`` ask for ``"tessera_explain": true``; then ``context`` carries the decision
id, the deciding rules, the reasons and the obligations. Callers authenticate with a
bearer token from Tessera's issuer with the scope ``tessera:decide`` (or an
administrator's), or over mutual TLS with a client certificate the TLS layer checked
against ``tls_client_ca``; ``X-Request-ID`` is echoed; errors are 400, 401, 403, 413 (a
request over one of the bounds of :mod:`pdp.bounds`) or 500 with a plain-text message
(§10.1.2), and 408 or 413 for a body too slow or too large (read by :mod:`issuer.wire`: at
most :data:`MAX_BODY` bytes, JSON nested at most 64 levels, no lone surrogate). A known
path asked with another method is 405 with ``Allow``, from the router the endpoints share
with the issuer's (:func:`issuer.app.issuer_routes`). An agent token that does not verify
is a 400 naming ``subject.properties.token``, not a 401: a 401 would tell the PEP that its
own credentials failed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from issuer.scim import ADMIN_SCOPE, Authenticator, Principal, bearer_token
from issuer.verify import MISSING, Reason, Refusal
from issuer.wire import WireError, read_body, read_json
from pdp.bounds import DEFAULT_BOUNDS, Bounds, RequestTooLarge
from pdp.decide import DecisionPoint
from pdp.doors.callers import NO_AGENT_TOKENS, AgentTokens, CallerRefused, named_by
from pdp.engine import Bundle
from pdp.errors import PdpError
from pdp.lang import ast
from pdp.lang.runtime import matches_pattern, pattern_globs
from pdp.lang.schema import SchemaModel
from pdp.model import Decision, RequestError
from pdp.model import Request as Asked
from pdp.request import typed_request
from pdp.subjects import AGENT_SUBJECT, DEFAULT_ID_FORM, ID_FORMS, PERSONS, Subject

log = logging.getLogger("tessera.authzen")

AUTHZEN_PATH = "/access/v1"
WELL_KNOWN = "/.well-known/authzen-configuration"
AUTHZEN_SCOPE = "tessera:decide"
TOKEN_PROPERTY = "token"  # subject.properties.token: the agent's own access token
ID_FORM = "id_form"  # subject.properties.id_form: how a subject search names persons
SEMANTICS = ("execute_all", "deny_on_first_deny", "permit_on_first_permit")
EXPLAIN = "tessera_explain"
DEFAULT_PAGE = 100
MAX_PAGE = 1_000
MAX_EVALUATIONS = 1_000
MAX_CANDIDATES = 10_000  # subjects or resources one search may decide on
MAX_BODY = 1 << 20  # bytes
MAX_DEPTH = 32  # levels of nested lists and objects in an attribute value
INT64 = 1 << 63

Json = dict[str, Any]
T = TypeVar("T")
Peer = Callable[[], str]


@dataclass(frozen=True)
class Caller:
    """Who asks, for the audit record (``peer``), and the request's ``Idempotency-Key``
    header ("" without one): a client retrying an evaluation sends the same key, so a
    limit records its usage once."""

    peer: Peer
    idempotency_key: str = ""

    def once(self, index: int | None = None) -> str:
        """The key of the request, or of one evaluation of a batch."""
        if not self.idempotency_key or index is None:
            return self.idempotency_key
        return f"{self.idempotency_key}#{index}"


class Failure(PdpError):
    """An error answer: its HTTP status, the message (the body) and extra headers."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def bad(message: str) -> Failure:
    return Failure(400, message)


# ------------------------------------------------------------------ reading requests


def _object(body: Json, key: str, where: str, required: bool = True) -> Json | None:
    value = body.get(key)
    if value is None:
        if required:
            raise bad(f"{where}{key} is required")
        return None
    if not isinstance(value, dict):
        raise bad(f"{where}{key} must be an object")
    return value


def _string(entity: Json, key: str, where: str) -> str:
    value = entity.get(key)
    if not isinstance(value, str) or not value:
        raise bad(f"{where}.{key} is required and must be a non-empty string")
    return value


def plain(value: Any, where: str, depth: int = 0) -> Any:
    """A JSON value checked as an attribute value (the schema types it further): no null,
    bounded nesting, integers beyond 64 bits as numbers."""
    if depth > MAX_DEPTH:
        raise bad(f"{where}: nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, bool | str | float):
        return value
    if isinstance(value, int):
        return value if -INT64 <= value < INT64 else float(value)
    if isinstance(value, list):
        return [plain(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: plain(v, f"{where}.{k}", depth + 1) for k, v in value.items()}
    raise bad(f"{where}: null is not a value a policy can read")


def _attributes(values: Json, where: str) -> Json:
    return {key: plain(value, f"{where}.{key}") for key, value in values.items()}


def _subject(schema: SchemaModel, subject: Json, where: str, need_id: bool = True) -> Subject:
    """An AuthZEN subject (§5.1) as read: an agent, with the user it acts for and its
    delegation; a person (``user``, ``identity``) or a subject of a type the schema
    declares, with the attributes its properties give."""
    kind = _string(subject, "type", f"{where}subject")
    if kind != AGENT_SUBJECT and kind not in PERSONS and kind not in schema.subjects:
        known = ", ".join(f'"{name}"' for name in schema.subject_types())
        raise bad(
            f"{where}subject.type: Tessera decides for subjects of type {known} (the "
            f"policy schema may declare more: subject TYPE {{ … }}), not {kind!r}"
        )
    ident = _string(subject, "id", f"{where}subject") if need_id else ""
    properties = _object(subject, "properties", f"{where}subject.", required=False) or {}
    if kind != AGENT_SUBJECT:
        return _other(kind, ident, properties, f"{where}subject.properties")
    user = properties.get("user")
    if user is not None and (not isinstance(user, str) or not user):
        raise bad(f"{where}subject.properties.user must be a user id (a non-empty string)")
    chain = properties.get("delegation", [])
    if not isinstance(chain, list) or not all(isinstance(a, str) and a for a in chain):
        raise bad(f"{where}subject.properties.delegation must be a list of agent ids")
    return Subject(kind, ident, user, tuple(chain))


def _other(kind: str, ident: str, properties: Json, where: str) -> Subject:
    """A subject that is no agent: its properties are its attributes (a person's user.*,
    a declared type's subject.*), all but the id and type its subject names."""
    if TOKEN_PROPERTY in properties:
        raise bad(f'{where}.{TOKEN_PROPERTY}: an agent token names an agent; send type "agent"')
    for reserved in ("id", "type"):
        if reserved in properties:
            raise bad(f"{where}.{reserved}: the subject's {reserved} is subject.{reserved}")
    values = _attributes(properties, where)
    return Subject(kind, ident, ident if kind in PERSONS else None, (), values)


def _request(
    schema: SchemaModel,
    subject: Subject,
    action: str,
    resource: tuple[str, str, Json],
    context: Json | None,
    where: str,
    bounds: Bounds = DEFAULT_BOUNDS,
) -> Asked:
    """The one typed request an AuthZEN question stands for; a 400 naming the field, or
    a 413 when it is over one of ``bounds``."""
    resource_type, resource_id, properties = resource
    try:
        return typed_request(
            schema,
            **subject.parts(),
            action=action,
            resource_type=resource_type,
            resource_id=resource_id,
            resource=_attributes(properties, f"{where}resource.properties"),
            context=_attributes(context or {}, f"{where}context"),
            bounds=bounds,
            subject_at="subject.properties",
        )
    except RequestError as exc:
        message = f"{where[:-1]}: {exc}" if where else str(exc)
        raise Failure(413 if isinstance(exc, RequestTooLarge) else 400, message) from None


def _resource(resource: Json, where: str, need_id: bool = True) -> tuple[str, str, Json]:
    kind = _string(resource, "type", f"{where}resource")
    ident = _string(resource, "id", f"{where}resource") if need_id else ""
    properties = _object(resource, "properties", f"{where}resource.", required=False) or {}
    return kind, ident, properties


def _action(action: Json, where: str) -> str:
    return _string(action, "name", f"{where}action")


def evaluation_request(
    schema: SchemaModel,
    body: Json,
    where: str = "",
    bounds: Bounds = DEFAULT_BOUNDS,
    named: Subject | None = None,
) -> Asked:
    """The request an Access Evaluation Request (§6.1) stands for; ``named``: its
    subject, as its agent token names it (:meth:`AuthZen.named`) or the directory knows
    its person (:meth:`AuthZen.identified`); else the subject as sent."""
    subject = _object(body, "subject", where)
    action = _object(body, "action", where)
    resource = _object(body, "resource", where)
    assert subject is not None and action is not None and resource is not None
    return _request(
        schema,
        named or _subject(schema, subject, where),
        _action(action, where),
        _resource(resource, where),
        _object(body, "context", where, required=False),
        where,
        bounds,
    )


def _explain(body: Json) -> bool:
    options = body.get("options")
    return isinstance(options, dict) and options.get(EXPLAIN) is True


def answer(decision: Decision, decision_id: str, explain: bool) -> Json:
    """A Decision (§5.5): exactly ``{"decision": …}`` unless explaining was asked for."""
    if not explain:
        return {"decision": decision.allow}
    return {
        "decision": decision.allow,
        "context": {
            "decision_id": decision_id,
            "decided_by": list(decision.decided_by),
            "reasons": list(decision.reasons),
            "obligations": [{"kind": o.kind, "value": o.value} for o in decision.obligations],
            "bundle_version": decision.bundle_version,
        },
    }


# ------------------------------------------------------------------ search candidates


def _targets(
    bundle: Bundle,
) -> list[tuple[tuple[tuple[str, bool], ...], str | None, tuple[tuple[str, bool], ...] | None]]:
    """Each rule target as (action alternatives, resource type or None, id alternatives or
    None for any id)."""
    found = []
    for rule in bundle.compiled:
        target = rule.rule.target
        if rule.never or target is None:
            continue
        package = rule.rule.package
        ids = None
        if target.resource is not None:
            ids = pattern_globs(target.resource, bundle.lets, package)
        if target.form == "call":
            actions: tuple[tuple[str, bool], ...] = ((ast.CALL_ACTION, False),)
        else:
            assert target.action is not None
            actions = pattern_globs(target.action, bundle.lets, package)
        found.append((actions, target.resource_type, ids))
    return found


def named_resources(bundle: Bundle, action: str, resource_type: str) -> list[str]:
    """The resource ids of a type that rule targets for ``action`` name exactly."""
    names: set[str] = set()
    for actions, kind, ids in _targets(bundle):
        if ids is None or kind not in (None, resource_type):
            continue
        if matches_pattern(actions, action):
            names.update(text for text, is_glob in ids if not is_glob)
    return sorted(names)


def named_actions(bundle: Bundle, resource_type: str, resource_id: str) -> list[str]:
    """The action names rule targets that cover the resource spell out exactly."""
    names: set[str] = set()
    for actions, kind, ids in _targets(bundle):
        if kind not in (None, resource_type):
            continue
        if ids is None or matches_pattern(ids, resource_id):
            names.update(text for text, is_glob in actions if not is_glob)
    return sorted(names)


# ------------------------------------------------------------------ paging


def _page(body: Json) -> tuple[int, int]:
    """(offset, limit) of a search request (§8.2.1); a token must come from the same
    search, asked with the same limit."""
    page = _object(body, "page", "", required=False) or {}
    limit = page.get("limit", DEFAULT_PAGE)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
        raise bad(f"page.limit must be an integer from 1 to {MAX_PAGE}")
    token = page.get("token")
    if token is None or token == "":
        return 0, limit
    if not isinstance(token, str):
        raise bad("page.token must be a string")
    try:
        decoded = read_json(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        offset, search = decoded["o"], decoded["s"]
    except (WireError, ValueError, binascii.Error, KeyError, TypeError):
        raise bad("page.token is not a token this PDP issued") from None
    if not isinstance(offset, int) or offset < 0 or search != _fingerprint(body):
        raise bad("page.token belongs to another search; send the same request with it")
    return offset, limit


def _fingerprint(body: Json) -> str:
    """What must not change between the pages of one search: everything but the token."""
    page = {k: v for k, v in (body.get("page") or {}).items() if k != "token"}
    same = {k: v for k, v in body.items() if k != "page"}
    canonical = json.dumps([same, page], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def _paged(body: Json, results: list[Json], offset: int, limit: int) -> Json:
    chunk = results[offset : offset + limit]
    next_token = ""
    if offset + limit < len(results):
        state = json.dumps({"o": offset + limit, "s": _fingerprint(body)}, separators=(",", ":"))
        next_token = base64.urlsafe_b64encode(state.encode()).rstrip(b"=").decode()
    return {
        "page": {"next_token": next_token, "count": len(chunk), "total": len(results)},
        "results": chunk,
    }


# ------------------------------------------------------------------ the endpoints


def _caller(request: Request) -> Caller:
    def peer() -> str:
        if request.client is None:
            return "http:unknown"
        host, port = request.client.host, request.client.port
        return f"ipv6:[{host}]:{port}" if ":" in host else f"ipv4:{host}:{port}"

    return Caller(peer, request.headers.get("idempotency-key", ""))


def _json(data: Json, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps(data, separators=(",", ":")).encode()
    return Response(body, status, headers, media_type="application/json")


class AuthZen:
    """The AuthZEN endpoints over a decision service; ``base`` is the URL they are served
    under (the metadata's ``policy_decision_point``). ``authenticate`` checks callers'
    bearer tokens; with ``certificates``, a client certificate on the TLS connection
    (which the TLS layer checked against ``tls_client_ca``) is a PEP's credential too;
    ``agent_tokens`` verifies the agents' tokens subjects carry."""

    def __init__(
        self,
        point: DecisionPoint,
        authenticate: Authenticator,
        base: str,
        *,
        certificates: bool = False,
        agent_tokens: AgentTokens = NO_AGENT_TOKENS,
    ):
        self.point = point
        self.authenticate = authenticate
        self.base = base.rstrip("/")
        self.certificates = certificates
        self.agent_tokens = agent_tokens

    def metadata(self) -> Json:
        """The PDP metadata (§9.1), every endpoint named."""
        api = f"{self.base}{AUTHZEN_PATH}"
        return {
            "policy_decision_point": self.base,
            "access_evaluation_endpoint": f"{api}/evaluation",
            "access_evaluations_endpoint": f"{api}/evaluations",
            "search_subject_endpoint": f"{api}/search/subject",
            "search_resource_endpoint": f"{api}/search/resource",
            "search_action_endpoint": f"{api}/search/action",
        }

    def routes(self) -> list[BaseRoute]:
        async def well_known(request: Request) -> Response:
            return _json(self.metadata())

        endpoints: list[tuple[str, Callable[[Json, Caller], Awaitable[Json]]]] = [
            ("/evaluation", self.evaluation),
            ("/evaluations", self.evaluations),
            ("/search/subject", self.search_subject),
            ("/search/resource", self.search_resource),
            ("/search/action", self.search_action),
        ]
        return [
            Route(WELL_KNOWN, well_known, methods=["GET"]),
            *(
                Route(f"{AUTHZEN_PATH}{path}", self._endpoint(handler), methods=["POST"])
                for path, handler in endpoints
            ),
        ]

    def _endpoint(
        self, handler: Callable[[Json, Caller], Awaitable[Json]]
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                await self._authenticated(request)
                response = _json(await handler(await _body(request), _caller(request)))
            except Failure as exc:
                response = Response(exc.message, exc.status, exc.headers, media_type="text/plain")
            except Exception:
                log.exception("AuthZEN %s failed", request.url.path)
                response = Response(
                    "internal error in the decision service (it is logged)",
                    500,
                    media_type="text/plain",
                )
            request_id = request.headers.get("x-request-id")
            if request_id is not None:  # §10.1.3: the same identifier in the response
                response.headers["X-Request-ID"] = request_id
            return response

        return endpoint

    async def _authenticated(self, request: Request) -> None:
        """The caller may ask for decisions; else the RFC 6750 §3.1 answer, 401 without a
        token or with one refused, 403 without the scope. Why a token was refused is
        logged, not told. A client certificate is enough where the server asks for one:
        the TLS handshake checked it against the CA, and a caller with none falls back to
        a token."""
        if self.certificates and _client_certificate(request):
            return
        token = bearer_token(request.headers.get("authorization", ""))
        found = MISSING if token is None else await self.authenticate(token)
        if isinstance(found, Principal):
            if found.scopes & {AUTHZEN_SCOPE, ADMIN_SCOPE}:
                return
            why = f"asking for decisions needs the scope {AUTHZEN_SCOPE}"
            found = Refusal(Reason.INSUFFICIENT_SCOPE, why)
        if found.reason is Reason.MISSING:
            message, challenge = "a bearer token is required", "Bearer"
        elif found.reason is Reason.INSUFFICIENT_SCOPE:
            message = found.message
            challenge = f'Bearer error="insufficient_scope", scope="{AUTHZEN_SCOPE}"'
        else:
            log.info("AuthZEN: token refused: %s", found.message)
            message, challenge = "the bearer token is not valid", f'Bearer error="{found.error}"'
        raise Failure(found.status, message, {"WWW-Authenticate": challenge})

    async def _decide(
        self, request: Asked, caller: Caller, index: int | None = None
    ) -> tuple[Decision, str]:
        try:
            decision, decision_id, _ = await self.point.decide(
                request, caller.peer, once=caller.once(index)
            )
        except RequestError as exc:
            raise bad(str(exc)) from None
        return decision, decision_id

    def _allowed(self, request: Asked) -> bool:
        try:
            return self.point.preview(request).allow
        except RequestError as exc:
            raise bad(str(exc)) from None

    async def who(self, body: Json, where: str = "") -> Subject:
        """Whom a request is about: the subject its agent token names (:meth:`named`), or
        the subject as sent, its person named by the directory's id (:meth:`identified`)."""
        named = await self.named(body, where)
        if named is not None:
            return named
        subject = _object(body, "subject", where)
        assert subject is not None
        return self.identified(_subject(self.point.schema, subject, where), where)

    def identified(self, subject: Subject, where: str = "") -> Subject:
        """``subject`` with its person (an agent's user, or the person it is) named by the
        directory's id for them (:meth:`DecisionPoint.identify`); a 400 naming the field
        when the id sent names several users."""
        if subject.user is None:
            return subject
        field = "subject.id" if subject.is_person else "subject.properties.user"
        try:
            user = self.point.identify(subject.user, f"{where}{field}")
        except RequestError as exc:
            raise bad(str(exc)) from None
        return subject if user == subject.user else replace(subject, user=user)

    async def named(self, body: Json, where: str = "") -> Subject | None:
        """The subject the agent token in ``subject.properties.token`` names, what the
        subject says besides held to it (:func:`named_by`); None without a token. The
        token's ``acr`` becomes ``body``'s ``context.acr`` (:func:`_token_acr`)."""
        subject = body.get("subject")
        properties = subject.get("properties") if isinstance(subject, dict) else None
        if not isinstance(properties, dict) or TOKEN_PROPERTY not in properties:
            return None
        assert isinstance(subject, dict)
        field = f"{where}subject.properties.{TOKEN_PROPERTY}"
        token = properties[TOKEN_PROPERTY]
        if not isinstance(token, str) or not token:
            raise bad(f"{field} must be the agent's access token (a non-empty string)")
        ident = subject.get("id", "")
        if not isinstance(ident, str):
            raise bad(f"{where}subject.id must be a string")
        # The user may be named by any of their ids; the token names them by the directory's.
        given = self.identified(_subject(self.point.schema, subject, where, need_id=False), where)
        try:
            who = await self.agent_tokens.caller(token)
        except CallerRefused as exc:
            raise bad(f"{field}: {exc.message}") from None
        chain = given.chain if "delegation" in properties else None
        fields = (
            f"{where}subject.id",
            f"{where}subject.properties.user",
            f"{where}subject.properties.delegation",
        )
        try:
            agent, user, actors = named_by(who, ident, given.user, chain, fields)
        except RequestError as exc:
            raise bad(str(exc)) from None
        _token_acr(body, who.claims.get("acr"), where)
        return Subject(AGENT_SUBJECT, agent, user, tuple(actors or ()))

    async def evaluation(self, body: Json, caller: Caller) -> Json:
        """Access Evaluation (§6)."""
        request = evaluation_request(
            self.point.schema, body, bounds=self.point.bounds, named=await self.who(body)
        )
        decision, decision_id = await self._decide(request, caller)
        return answer(decision, decision_id, _explain(body))

    async def evaluations(self, body: Json, caller: Caller) -> Json:
        """Access Evaluations (§7): every item checked before any is decided, so a bad
        item changes nothing (no limit used, no record); then decided in order, stopping
        as the semantic says."""
        items = body.get("evaluations")
        if items is None or items == []:  # §7.1: as a single evaluation
            return await self.evaluation(body, caller)
        if not isinstance(items, list):
            raise bad("evaluations must be an array")
        if len(items) > MAX_EVALUATIONS:
            raise bad(f"at most {MAX_EVALUATIONS} evaluations per request")
        options = _object(body, "options", "", required=False) or {}
        semantic = options.get("evaluations_semantic", "execute_all")
        if semantic not in SEMANTICS:
            raise bad(f"options.evaluations_semantic must be one of {', '.join(SEMANTICS)}")
        schema = self.point.schema
        requests = []
        for index, item in enumerate(items):
            where = f"evaluations[{index}]."
            if not isinstance(item, dict):
                raise bad(f"evaluations[{index}] must be an object")
            merged = {
                key: item[key] if key in item else body.get(key)
                for key in ("subject", "action", "resource", "context")
            }
            named = await self.who(merged, where)
            requests.append(evaluation_request(schema, merged, where, self.point.bounds, named))
        explain = _explain(body)
        results = []
        for index, request in enumerate(requests):
            decision, decision_id = await self._decide(request, caller, index)
            results.append(answer(decision, decision_id, explain))
            if semantic == "deny_on_first_deny" and not decision.allow:
                break
            if semantic == "permit_on_first_permit" and decision.allow:
                break
        return {"evaluations": results}

    async def search_subject(self, body: Json, caller: Caller) -> Json:
        """Subject Search (§8.4): the subjects of the type asked allowed the action on the
        resource: the directory's agents (the subject's properties user and delegation
        kept), or its users for a person type, each named in the form
        ``subject.properties.id_form`` asks (:data:`ID_FORMS`; userName by default). The
        subject's id is ignored; the directory holds no subject of a declared type."""
        offset, limit = _page(body)
        subject = _object(body, "subject", "")
        action = _object(body, "action", "")
        resource = _object(body, "resource", "")
        assert subject is not None and action is not None and resource is not None
        properties = _object(subject, "properties", "subject.", required=False) or {}
        if TOKEN_PROPERTY in properties:
            raise bad("subject.properties.token: a subject search finds subjects; send no token")
        form = properties.get(ID_FORM, DEFAULT_ID_FORM)
        rest = {key: value for key, value in properties.items() if key != ID_FORM}
        asked = _subject(self.point.schema, {**subject, "properties": rest}, "", need_id=False)
        if ID_FORM in properties and (not asked.is_person or form not in ID_FORMS):
            raise bad(
                f"subject.properties.{ID_FORM}: a person's id comes in the forms "
                f"{', '.join(ID_FORMS)}; other subjects have one"
            )
        name, target = _action(action, ""), _resource(resource, "")
        context = _object(body, "context", "", required=False)
        results = []
        schema, bounds = self.point.schema, self.point.bounds
        for candidate in _bounded(self._candidates(asked, form), "subjects"):
            request = _request(schema, candidate, name, target, context, "", bounds)
            if self._allowed(request):
                results.append({"type": candidate.type, "id": candidate.id})
        return _paged(body, results, offset, limit)

    def _candidates(self, asked: Subject, form: str) -> list[Subject]:
        """The subjects a search for ``asked``'s type considers: the directory's agents
        (its user identified), or its users named in ``form``, in the order of the ids
        given back."""
        directory = self.point.directory
        if directory is None or not (asked.is_agent or asked.is_person):
            return []
        if asked.is_agent:
            user = self.identified(asked).user
            return [replace(asked, id=agent, user=user) for agent in directory.agent_ids()]
        people = directory.people
        named = [
            Subject(asked.type, people.name_of(user, form), user.id) for user in directory.users()
        ]
        return sorted(named, key=lambda person: (person.id, person.user or ""))

    async def search_resource(self, body: Json, caller: Caller) -> Json:
        """Resource Search (§8.5): the ids of the resource type that the policies name for
        the action, or that the resource catalog holds, and that the subject is allowed."""
        offset, limit = _page(body)
        subject = _object(body, "subject", "")
        action = _object(body, "action", "")
        resource = _object(body, "resource", "")
        assert subject is not None and action is not None and resource is not None
        who, name = await self.who(body), _action(action, "")
        kind, _, properties = _resource(resource, "", need_id=False)
        context = _object(body, "context", "", required=False)
        results = []
        schema, bounds = self.point.schema, self.point.bounds
        named = named_resources(self.point.engine.bundle, name, kind)
        for ident in _bounded(sorted({*named, *self.point.resources.ids(kind)}), "resources"):
            asked = _request(schema, who, name, (kind, ident, properties), context, "", bounds)
            if self._allowed(asked):
                results.append({"type": kind, "id": ident})
        return _paged(body, results, offset, limit)

    async def search_action(self, body: Json, caller: Caller) -> Json:
        """Action Search (§8.6): the actions the policies name for the resource that the
        subject is allowed."""
        offset, limit = _page(body)
        subject = _object(body, "subject", "")
        resource = _object(body, "resource", "")
        assert subject is not None and resource is not None
        who, target = await self.who(body), _resource(resource, "")
        context = _object(body, "context", "", required=False)
        results = []
        schema, bounds = self.point.schema, self.point.bounds
        for name in named_actions(self.point.engine.bundle, target[0], target[1]):
            if self._allowed(_request(schema, who, name, target, context, "", bounds)):
                results.append({"name": name})
        return _paged(body, results, offset, limit)


def _token_acr(body: Json, acr: Any, where: str) -> None:
    """Put the agent token's ``acr`` into ``body``'s context as ``context.acr``, as
    ext_authz and the MCP proxy do: a step-up (``require step_up(…)``) is then met by how
    the agent authenticated, never by the caller's word, which is refused (400)."""
    context = _object(body, "context", where, required=False) or {}
    if "acr" in context:
        raise bad(
            f"{where}context.acr: the agent token says how its agent authenticated; "
            "send no acr with a token subject"
        )
    if isinstance(acr, str):
        body["context"] = {**context, "acr": acr}


def _bounded(candidates: list[T], what: str) -> list[T]:
    """The candidates of a search, refused (413) when deciding on each would make one
    request cost more than :data:`MAX_CANDIDATES` decisions."""
    if len(candidates) > MAX_CANDIDATES:
        raise Failure(
            413,
            f"the search would decide on {len(candidates):,} {what}, over the "
            f"{MAX_CANDIDATES:,} one search may consider; ask about fewer (one resource "
            "or subject type with fewer entries) or use evaluations",
        )
    return candidates


def _client_certificate(request: Request) -> bool:
    """Whether the request came over TLS with a client certificate (the ASGI ``tls``
    extension Tessera's HTTP server fills in; never a header a proxy could be sent)."""
    extensions = request.scope.get("extensions") or {}
    return bool((extensions.get("tls") or {}).get("client_cert_chain"))


async def _body(request: Request) -> Json:
    """The request's JSON object (§10.1: Content-Type application/json), read within
    :mod:`issuer.wire`'s bounds: 413 over :data:`MAX_BODY`, 408 when it is slow, 400 for
    what is not JSON (nested too deeply or holding a lone surrogate included)."""
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media != "application/json":
        raise bad("Content-Type must be application/json")
    try:
        body = read_json(await read_body(request, MAX_BODY))
    except WireError as exc:
        raise Failure(exc.status, str(exc)) from None
    if not isinstance(body, dict):
        raise bad("the body must be a JSON object")
    return body
