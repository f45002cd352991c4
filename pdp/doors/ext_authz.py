"""Envoy's external authorization (``envoy.service.auth.v3.Authorization/Check``).

A gateway that runs Envoy's ``ext_authz`` HTTP filter asks the decision service, on its
gRPC port, about every request it forwards. The answer is Tessera's ordinary decision:

- **who**: the bearer token (an RFC 9068 access token from Tessera's issuer, verified
  with the issuer's keys by :class:`issuer.verify.Verifier`) gives the agent
  (``agent_id``) and, for a token obtained by token exchange (RFC 8693 §4.1, an ``act``
  claim), the user it acts for (``sub``) and the chain of actors. A token bound to a
  certificate (RFC 8705 ``cnf``) is accepted only with that certificate, which Envoy
  passes as the source peer's ``certificate``;
- **what**: the HTTP method and path, mapped to an action and a resource by route
  templates from the configuration (:func:`parse_routes`); a path no template matches is
  action ``http.<METHOD>`` on the resource ``http:<path>``;
- **context**: ``ip``, the client's address as Envoy saw it, and ``acr`` when the token
  carries one.

Envoy itself is a caller of the gRPC port, and shows what every caller there shows
(:mod:`pdp.doors.callers`): a client certificate, or where the port asks for one, a bearer
token of its own; a gateway without is answered UNAUTHENTICATED, which Envoy denies.

The request is then decided by :meth:`DecisionPoint.decide`, exactly as ``Authorize``
is (directory, cache, engine, audit record). Allowed: an
``OkHttpResponse`` whose headers tell the upstream the decision id and who is calling
(set, never appended, so a client cannot smuggle its own), optionally without the
client's ``Authorization`` header. Denied: a ``DeniedHttpResponse``, 403 with a JSON
body, or 401 with ``WWW-Authenticate`` (RFC 6750 §3) when the token is missing or not
acceptable, or when a decision denies only for step-ups (RFC 9470 §3:
``error="insufficient_user_authentication"`` and the levels in ``acr_values``). Only
levels of the issuer's ladder (:data:`issuer.strength.LADDER`) are named: the issuer
gives an agent's token any of them, at the token endpoint with ``acr_values``, and
raises no user's login; a deny whose step-ups are all off the ladder (``step_up("mfa")``)
is a plain 403, since no token the client can get would pass.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import grpc
from cryptography import x509
from envoy.config.core.v3 import base_pb2 as core
from envoy.service.auth.v3 import external_auth_pb2 as auth
from envoy.type.v3 import http_status_pb2 as http_status
from google.rpc import code_pb2, status_pb2

from issuer.keys import KeyRing
from issuer.oauth.mtls import confirmation
from issuer.oauth.tokens import ring_lookup
from issuer.store import Store
from issuer.strength import LADDER
from issuer.verify import Caller, Memory, Reason, Refusal, Verifier, revocations
from pdp.bounds import DEFAULT_BOUNDS, Bounds
from pdp.decide import DecisionPoint
from pdp.doors.callers import OPEN, Callers, Peps, bearer
from pdp.doors.grpc import Calls, add_service, parsed
from pdp.errors import PdpError
from pdp.lang.schema import SchemaModel
from pdp.model import Request, RequestError
from pdp.request import typed_request

log = logging.getLogger("tessera.ext_authz")

CHECK = "ext_authz"  # what the cache keys of Check questions begin with
SERVICE_NAME = auth.DESCRIPTOR.services_by_name["Authorization"].full_name

DECISION_HEADER = "x-tessera-decision-id"
AGENT_HEADER = "x-tessera-agent-id"
USER_HEADER = "x-tessera-user-id"

TOKEN_CACHE_SIZE = 10_000
QUESTION_MEMO_SIZE = 65_536
TEMPLATES_SIZE = 4_096
REVOCATION_RECHECK = 1.0  # seconds a remembered token goes before its revocation is read again

_PIECE = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)(\.\.\.)?\}|[{}]|[^{}]+")
_METHOD = re.compile(r"[A-Z]+")
_RESERVED = frozenset({"method", "path"})


class RouteError(PdpError, ValueError):
    """A route template that cannot be used; the message names the line."""


@dataclass(frozen=True)
class Placeholder:
    """``{name}`` in a template, or ``{name...}`` (``rest``: the rest of the path)."""

    name: str
    rest: bool = False


Piece = str | Placeholder  # literal text, or a placeholder


@dataclass(frozen=True)
class Template:
    """ACTION, TYPE or ID of a route: literal text and placeholders in order."""

    pieces: tuple[Piece, ...]

    def fill(self, values: dict[str, str]) -> str:
        """The text with each placeholder's value put in, in one pass: a value is never
        read as a template again, so braces in a request's path stay as they are."""
        return "".join(p if isinstance(p, str) else values[p.name] for p in self.pieces)


def _pieces(template: str, line: str) -> tuple[Piece, ...]:
    """What a template says: ``{{`` and ``}}`` are a literal brace, ``{name}`` and
    ``{name...}`` placeholders; any other brace is an error."""
    pieces: list[Piece] = []
    for found in _PIECE.finditer(template):
        text = found.group(0)
        if found.group(1) is not None:
            pieces.append(Placeholder(found.group(1), found.group(2) is not None))
            continue
        if text in ("{", "}"):
            raise RouteError(
                f"route {line!r}: unbalanced braces in {template!r}; a literal brace is "
                "written {{ or }}"
            )
        literal = text[0] if text in ("{{", "}}") else text
        previous = pieces[-1] if pieces else None
        if isinstance(previous, str):
            pieces[-1] = previous + literal
        else:
            pieces.append(literal)
    return tuple(pieces)


@dataclass(frozen=True)
class Route:
    """``METHOD PATH ACTION TYPE:ID``: requests whose method and path match become
    ``ACTION`` on the resource ``TYPE:ID``, placeholders filled in."""

    methods: frozenset[str] | None  # None: any method
    path: tuple[Piece, ...] | None  # one per segment: its decoded text, or a placeholder
    action: Template
    resource_type: Template
    resource_id: Template
    text: str

    def match(self, method: str, path: str) -> tuple[str, str, str] | None:
        """(action, resource type, resource id) when this route covers the request."""
        if self.methods is not None and method not in self.methods:
            return None
        values = {} if self.path is None else _match_path(self.path, path)
        if values is None:
            return None
        values["method"], values["path"] = method, path
        return (
            self.action.fill(values),
            self.resource_type.fill(values),
            self.resource_id.fill(values),
        )


def _match_path(segments: tuple[Piece, ...], path: str) -> dict[str, str] | None:
    """The placeholders' values when ``path`` fits the template's segments, else None.
    Each segment of the path is compared percent-decoded, as its value would be given:
    a literal segment ``{{id}}`` matches ``/{id}`` and ``/%7Bid%7D`` alike."""
    if not path.startswith("/"):
        return None
    raw = path[1:].split("/")
    values: dict[str, str] = {}
    for index, segment in enumerate(segments):
        if isinstance(segment, Placeholder) and segment.rest:
            rest = "/".join(raw[index:])
            if not rest:
                return None
            values[segment.name] = unquote(rest)
            return values
        if index >= len(raw):
            return None
        decoded = unquote(raw[index])
        if isinstance(segment, Placeholder):
            if not raw[index]:
                return None
            values[segment.name] = decoded
        elif decoded != segment:
            return None
    return values if len(raw) == len(segments) else None


def parse_route(line: str) -> Route:
    """One route template, or a :class:`RouteError` saying what is wrong with it.

    ``GET,HEAD /orders/{id} db.read table:orders`` — METHOD is ``*``, a method, or
    several joined by commas; PATH is a path whose segments are literal, ``{name}`` (one
    segment) or, last, ``{name...}`` (the rest of the path); ACTION and TYPE:ID may use
    the path's names, ``{method}`` and ``{path}``. ``{{`` and ``}}`` are literal braces
    anywhere: ``route:/users/{{id}}`` is the resource id ``/users/{id}``.
    """
    parts = line.split()
    if len(parts) != 4:
        raise RouteError(f"route {line!r}: expected METHOD PATH ACTION TYPE:ID")
    method, path, action, resource = parts
    methods = None
    if method != "*":
        listed = method.split(",")
        if not all(_METHOD.fullmatch(name) for name in listed):
            raise RouteError(f"route {line!r}: methods are upper case, e.g. GET or GET,HEAD")
        methods = frozenset(listed)
    if not path.startswith("/"):
        raise RouteError(f"route {line!r}: the path must start with /")
    segments = _path_segments(path, line)
    resource_type, colon, resource_id = resource.partition(":")
    if not colon or not resource_type or not resource_id:
        raise RouteError(f"route {line!r}: the resource is TYPE:ID, e.g. table:{{name}}")
    names = _RESERVED | {s.name for s in segments if isinstance(s, Placeholder)}
    return Route(
        methods,
        segments,
        _template(action, names, line),
        _template(resource_type, names, line),
        _template(resource_id, names, line),
        line,
    )


def _path_segments(path: str, line: str) -> tuple[Piece, ...]:
    """PATH as its segments: each literal text (``{{``, ``}}`` a brace) or a placeholder."""
    segments: list[Piece] = []
    texts = path[1:].split("/")
    for position, text in enumerate(texts):
        pieces = _pieces(text, line)
        literals = [piece for piece in pieces if isinstance(piece, str)]
        if len(literals) == len(pieces):
            segments.append("".join(literals))
            continue
        if len(pieces) != 1:
            raise RouteError(
                f"route {line!r}: {text!r} must be a whole segment, {{name}} or {{name...}}"
            )
        placeholder = pieces[0]
        assert isinstance(placeholder, Placeholder)
        name = placeholder.name
        if name in _RESERVED | {s.name for s in segments if isinstance(s, Placeholder)}:
            raise RouteError(f"route {line!r}: {{{name}}} is used twice or is reserved")
        if placeholder.rest and position != len(texts) - 1:
            raise RouteError(f"route {line!r}: {{{name}...}} must be the last segment")
        segments.append(placeholder)
    return tuple(segments)


def _template(text: str, names: frozenset[str], line: str) -> Template:
    """ACTION, TYPE or ID, whose placeholders must be names of the path."""
    pieces = _pieces(text, line)
    for piece in pieces:
        if isinstance(piece, Placeholder) and (piece.rest or piece.name not in names):
            shown = f"{{{piece.name}{'...' if piece.rest else ''}}}"
            raise RouteError(f"route {line!r}: {shown} is not a name of the path")
    return Template(pieces)


FALLBACK = Route(
    None,
    None,
    Template(("http.", Placeholder("method"))),
    Template(("http",)),
    Template((Placeholder("path"),)),
    "(the fallback)",
)


def parse_routes(text: str) -> tuple[Route, ...]:
    """Route templates, one per line (or separated by ``;``); blank lines and ``#``
    comments are skipped. The first that matches a request maps it; the fallback
    (``http.<METHOD>`` on ``http:<path>``) comes last."""
    routes = []
    for raw in text.replace(";", "\n").splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            routes.append(parse_route(line))
    return (*routes, FALLBACK)


def ambiguous(path: str) -> str | None:
    """Why ``path`` could reach the upstream as another path than the one decided on, or
    None: a ``.`` or ``..`` segment, or a segment that decodes to one or to a ``/`` or
    ``\\`` (``%2F``, ``%5C``, ``%2E%2E``). Such paths are refused, not decided: policy
    globs match across ``/``, and an upstream that decodes and resolves them would serve
    what no rule allowed."""
    for segment in path.split("?", 1)[0].split("#", 1)[0].split("/"):
        decoded = unquote(segment)
        if decoded in (".", "..") or "/" in decoded or "\\" in decoded:
            return f"the path segment {segment!r} is a dot segment or hides a separator"
    return None


def route(routes: Iterable[Route], method: str, path: str) -> tuple[str, str, str]:
    """(action, resource type, resource id) for a request; the query string is not part
    of the path."""
    path = path.split("?", 1)[0].split("#", 1)[0] or "/"
    for candidate in routes:
        found = candidate.match(method, path)
        if found is not None:
            return found
    raise AssertionError("the fallback route matches every path")  # pragma: no cover


@dataclass(frozen=True)
class Gateway:
    """How Check answers: the tokens it accepts, its route templates, and the request
    headers removed before the request goes upstream (lower case)."""

    tokens: Verifier
    routes: tuple[Route, ...] = (FALLBACK,)
    strip: tuple[str, ...] = ("authorization",)


def _option(name: str, value: str) -> core.HeaderValueOption:
    """A header set on the request or response, replacing any of the same name."""
    return core.HeaderValueOption(
        header=core.HeaderValue(key=name, value=value),
        append_action=core.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
    )


_set = functools.lru_cache(maxsize=4096)(_option)  # agents and users come back


_JSON = _set("content-type", "application/json")
_DECISION = _option(DECISION_HEADER, "")


def _denied(
    status: int, code: int, body: dict[str, Any], headers: Iterable[core.HeaderValueOption]
) -> auth.CheckResponse:
    return auth.CheckResponse(
        status=status_pb2.Status(code=code),
        denied_response=auth.DeniedHttpResponse(
            status=http_status.HttpStatus(code=status),  # type: ignore[arg-type]
            headers=[_JSON, *headers],
            body=json.dumps(body, separators=(",", ":")),
        ),
    )


STEP_UP_ERROR = "insufficient_user_authentication"  # RFC 9470 §3


def unauthorized(description: str, invalid: bool = True) -> auth.CheckResponse:
    """401 with RFC 6750 §3's challenge: ``invalid_token`` for a token that was sent."""
    challenge = 'Bearer error="invalid_token"' if invalid else "Bearer"
    body = {"error": "invalid_token" if invalid else "unauthorized"}
    body["error_description"] = description
    return _denied(401, code_pb2.UNAUTHENTICATED, body, [_set("www-authenticate", challenge)])


def denied(decision_id: str, obligations: Sequence[tuple[str, str]]) -> auth.CheckResponse:
    """A deny: 401 with RFC 9470's ``insufficient_user_authentication`` challenge when
    only step-ups stand between the token and the call and some are levels of the
    ladder (a stronger authentication would pass; only those are named), else 403; the
    body names the obligations either way."""
    body: dict[str, Any] = {
        "error": "access_denied",
        "decision_id": decision_id,
        "obligations": [{"kind": kind, "value": value} for kind, value in obligations],
    }
    headers = [_option(DECISION_HEADER, decision_id)]
    steps = dict.fromkeys(value for kind, value in obligations if kind == "step_up")
    levels = [value for value in steps if value in LADDER]  # what a token can be got at
    if not levels or any(kind != "step_up" for kind, _ in obligations):
        return _denied(403, code_pb2.PERMISSION_DENIED, body, headers)
    body["error"] = STEP_UP_ERROR
    body["error_description"] = "a stronger authentication is required"
    challenge = (
        f'Bearer error="{STEP_UP_ERROR}", error_description="{body["error_description"]}", '
        f'acr_values="{_quoted(" ".join(levels))}"'
    )
    headers.append(_option("www-authenticate", challenge))
    return _denied(401, code_pb2.UNAUTHENTICATED, body, headers)


def _quoted(value: str) -> str:
    """A value fit for a quoted-string (RFC 9110 §5.6.4): printable ASCII without quote
    or backslash; anything else becomes ``?``."""
    return "".join(c if 0x20 <= ord(c) <= 0x7E and c not in '"\\' else "?" for c in value)


def _bearer(http: Any) -> str | None:
    value = http.headers.get("authorization")
    if value is None:  # Envoy sends header_map instead with encode_raw_headers
        for header in http.header_map.headers:
            if header.key.lower() == "authorization":
                value = header.value or header.raw_value.decode("utf-8", "replace")
                break
    if not value:
        return None
    scheme, _, token = value.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def token_refused(refusal: Refusal) -> auth.CheckResponse:
    """The 401 a refused token gets (RFC 6750 §3): a bare challenge without one; why a
    token was refused is logged, not told (a certificate binding aside)."""
    if refusal.reason is Reason.MISSING:
        return unauthorized("a bearer token is required", invalid=False)
    log.info("ext_authz: token refused: %s", refusal.message)
    if refusal.reason in (Reason.UNBOUND, Reason.CERT_MISMATCH):
        return unauthorized("the access token is bound to another certificate")
    return unauthorized("the access token is not valid")


def _presented(source: Any) -> str | None:
    """The thumbprint of the client certificate Envoy passes (URL-encoded PEM), if any."""
    return _thumbprint(source.certificate) if source.certificate else None


@functools.lru_cache(maxsize=1024)  # a gateway sees the same clients again and again
def _thumbprint(certificate: str) -> str | None:
    """RFC 8705 §3.1: the certificate's ``x5t#S256``; None when it cannot be read."""
    try:
        return confirmation(x509.load_pem_x509_certificate(unquote(certificate).encode()))
    except ValueError:
        return None


def _client_ip(source: Any) -> str | None:
    address = source.address.socket_address.address
    return _ip(address) if address else None


@functools.lru_cache(maxsize=4096)  # a gateway sees the same clients again and again
def _ip(address: str) -> str | None:
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        return None


def question(
    schema: SchemaModel,
    who: Caller,
    action: str,
    resource_type: str,
    resource_id: str,
    ip: str | None,
    acr: Any,
    bounds: Bounds = DEFAULT_BOUNDS,
) -> Request:
    """The one typed request a gateway request stands for."""
    context: dict[str, Any] = {}
    if ip is not None:
        context["ip"] = ip
    if isinstance(acr, str):
        context["acr"] = acr
    return typed_request(
        schema,
        agent={"id": who.agent},
        user=None if who.user is None else {"id": who.user},
        chain=who.chain if who.user is not None else None,
        action=action,
        resource_type=resource_type,
        resource_id=resource_id,
        context=context,
        bounds=bounds,
    )


class ExtAuthzService:
    """``envoy.service.auth.v3.Authorization`` over the decision point."""

    def __init__(self, point: DecisionPoint, gateway: Gateway, peps: Peps | None = None) -> None:
        self.point = point
        self.gateway = gateway
        self._peps = peps  # the gateway shows a bearer token, where the port asks for one
        self._calls = Calls(point.metrics, "Check")
        self._strip = list(gateway.strip)
        self._strip_with_user = [*gateway.strip, USER_HEADER]
        self._questions: dict[tuple[Any, ...], Request] = {}
        self._schema: Any = None  # the schema the remembered questions are typed by
        self._templates: dict[Caller, auth.CheckResponse] = {}

    async def Check(  # the contract names the method
        self, raw: bytes, context: grpc.aio.ServicerContext
    ) -> auth.CheckResponse:
        """Parsed here, not by gRPC, so bytes protobuf refuses (a ``Struct`` of metadata
        nested too deeply) are answered INVALID_ARGUMENT saying why; and only once the
        gateway is admitted, where the port asks for a token."""

        async def work() -> auth.CheckResponse:
            if self._peps is not None:
                await self._peps.admit(bearer(context.invocation_metadata()))
            return await self._check(parsed(raw, auth.CheckRequest), context)

        return await self._calls.run(work, context)

    async def _check(
        self, request: auth.CheckRequest, context: grpc.aio.ServicerContext
    ) -> auth.CheckResponse:
        attributes = request.attributes
        http = attributes.request.http
        who = await self.gateway.tokens.verify(_bearer(http), _presented(attributes.source))
        if isinstance(who, Refusal):
            return token_refused(who)
        why = ambiguous(http.path)
        if why is not None:
            bad = {"error": "invalid_request", "error_description": why}
            return _denied(400, code_pb2.INVALID_ARGUMENT, bad, ())
        try:
            key, asked = self._question(who, http.method, http.path, attributes.source)
            decision, decision_id, _ = await self.point.decide(asked, context.peer, key=key)
        except RequestError as exc:  # the routes make requests the schema refuses
            log.warning("ext_authz: %s %s cannot be decided: %s", http.method, http.path, exc)
            refused = {"error": "access_denied", "error_description": str(exc)}
            return _denied(403, code_pb2.PERMISSION_DENIED, refused, ())
        if not decision.allow:
            obligations = [(o.kind, o.value) for o in decision.obligations]
            return denied(decision_id, obligations)
        return self._allowed(decision_id, who)

    def _question(
        self, who: Caller, method: str, path: str, source: Any
    ) -> tuple[tuple[Any, ...], Request]:
        """The request to decide (and its cache key), remembered for recent (caller,
        method, path, client) while the schema stays: nothing downstream changes a
        request, so one can be decided again."""
        schema = self.point.schema
        if schema is not self._schema:
            self._questions.clear()
            self._schema = schema
        acr = who.claims.get("acr")
        key = (CHECK, who, method, path, source.address.socket_address.address, acr)
        asked = self._questions.get(key)
        if asked is None:
            action, resource_type, resource_id = route(self.gateway.routes, method, path)
            ip = _client_ip(source)
            bounds = self.point.bounds
            asked = question(schema, who, action, resource_type, resource_id, ip, acr, bounds)
            if len(self._questions) >= QUESTION_MEMO_SIZE:  # bounded whatever the traffic
                self._questions.clear()
            self._questions[key] = asked
        return key, asked

    def _allowed(self, decision_id: str, who: Caller) -> auth.CheckResponse:
        """The OkHttpResponse: the caller's part built once, the decision id added."""
        template = self._templates.get(who)
        if template is None:
            template = auth.CheckResponse()
            template.status.SetInParent()  # code 0: OK
            ok = template.ok_response
            ok.SetInParent()
            ok.headers.append(_set(AGENT_HEADER, who.agent))
            if who.user is not None:
                ok.headers.append(_set(USER_HEADER, who.user))
                ok.headers_to_remove.extend(self._strip)
            else:  # no user: a client's own x-tessera-user-id must not reach the upstream
                ok.headers_to_remove.extend(self._strip_with_user)
            if len(self._templates) >= TEMPLATES_SIZE:
                self._templates.clear()
            self._templates[who] = template
        response = auth.CheckResponse()
        response.MergeFrom(template)
        header = response.ok_response.headers.add()
        header.MergeFrom(_DECISION)
        header.header.value = decision_id
        return response


def add_to_server(
    point: DecisionPoint, gateway: Gateway, server: grpc.aio.Server, callers: Callers = OPEN
) -> None:
    """Serve Check, deciding with ``point``, on ``server``, to the gateways ``callers``
    admits (as ``tessera.v1.Authorizer`` on the same port; as the generated
    ``add_AuthorizationServicer_to_server`` would, but ``Check`` taking the bytes)."""
    service = ExtAuthzService(point, gateway, callers.peps)
    handlers = {
        "Check": grpc.unary_unary_rpc_method_handler(
            service.Check, response_serializer=auth.CheckResponse.SerializeToString
        )
    }
    add_service(server, SERVICE_NAME, handlers)


def gateway_for(
    store: Store,
    keys: KeyRing,
    issuer: str,
    audience: str = "",
    routes: str = "",
    strip: str = "authorization",
) -> Gateway:
    """Check's settings for ``tessera serve``: tokens of ``issuer`` signed by ``keys``,
    for ``audience`` (default: the issuer itself), revocations read from ``store``, the
    route templates and the comma-separated headers to strip (see :mod:`pdp.serve.config`).

    A verified token is remembered (at most :data:`TOKEN_CACHE_SIZE` of them) until it
    expires, and its revocation read again when it was last read more than
    :data:`REVOCATION_RECHECK` seconds ago; the directory, not the token, says whether
    its agent is suspended (a decision, answered 403)."""
    issuer = issuer.rstrip("/")
    tokens = Verifier(
        ring_lookup(keys),
        issuer,
        audience or issuer,
        revoked=revocations(store),
        memory=Memory(TOKEN_CACHE_SIZE, recheck=REVOCATION_RECHECK),
    )
    return Gateway(
        tokens,
        parse_routes(routes),
        tuple(name.strip().lower() for name in strip.split(",") if name.strip()),
    )
