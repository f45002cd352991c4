"""The SCIM 2.0 provisioning service (RFC 7643, RFC 7644) for agents, users and groups.

An ASGI application (Starlette) meant to be mounted at ``/scim/v2``. scim2-models
validates every payload against the resource schemas, parses filters, paths and PATCH
operations and shapes every response; this module adds HTTP, the store, ETags and
authorization. Every endpoint needs a bearer token with the ``tessera:admin`` scope
(RFC 6750), discovery included.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import secrets
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar, Union

from anyio import to_thread
from pydantic import ValidationError
from scim2_models import (
    Context,
    Error,
    Group,
    InvalidSyntaxException,
    InvalidValueException,
    ListResponse,
    Meta,
    MutabilityException,
    NotFoundException,
    PatchOp,
    PayloadTooLargeException,
    PreconditionFailedException,
    Resource,
    ResourceType,
    Schema,
    SCIMException,
    SearchRequest,
    UniquenessException,
)
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from issuer.agents import AGENT_EXTENSION, AGENT_TYPE, STATUS, AgentStatus, AgentType
from issuer.errors import IssuerError
from issuer.hashing import hash_password
from issuer.models import MAX_RESULTS, PROVIDER, AgentResource, UserResource
from issuer.store import Conflict, NotFound, Record, Store, Unstorable, VersionMismatch
from issuer.verify import MISSING, Reason, Refusal
from issuer.wire import TooLarge, TooSlow, WireError, read_body, read_json

log = logging.getLogger("tessera.scim")

MEDIA_TYPE = "application/scim+json"
ADMIN_SCOPE = "tessera:admin"
REWRITE_ATTEMPTS = 3  # a PUT or PATCH without If-Match re-reads this often on a race
MAX_BODY = 1 << 20  # bytes; larger requests get 413 (RFC 7644 §3.12)

T = TypeVar("T")


# ---------------------------------------------------------------- authorization


@dataclass(frozen=True)
class Principal:
    """Who is calling and what they may do."""

    subject: str
    scopes: frozenset[str]


Authenticator = Callable[[str], Awaitable[Principal | Refusal]]
"""Maps a bearer token to its principal, or the refusal that says why it is not valid.
Awaited on the event loop: whatever it reads from the store, it reads in a worker thread."""


class BootstrapToken:
    """The administrator token from configuration, until the token issuer exists.

    Only its SHA-256 digest is kept in memory, and tokens are compared in constant time.
    """

    def __init__(self, token: str) -> None:
        if len(token) < 16:
            raise ValueError("the bootstrap admin token must have at least 16 characters")
        self._digest = hashlib.sha256(token.encode()).digest()

    async def __call__(self, token: str) -> Principal | Refusal:
        digest = hashlib.sha256(token.encode()).digest()
        if hmac.compare_digest(digest, self._digest):
            return Principal("bootstrap-admin", frozenset({ADMIN_SCOPE}))
        return Refusal(Reason.INVALID, "not the bootstrap admin token")


def bearer_token(authorization: str) -> str | None:
    """The token of an ``Authorization: Bearer …`` header (RFC 6750 §2.1), or None."""
    scheme, _, token = authorization.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def new_token() -> str:
    """A random bootstrap admin token: 256 bits, URL-safe, with a recognisable prefix (for
    secret scanners, and so it never starts with "-" on a command line)."""
    return "tsa_" + secrets.token_urlsafe(32)


# ---------------------------------------------------------------- responses


class _Unauthorized(SCIMException, IssuerError):
    status = 401
    _default_detail = "a bearer token with the tessera:admin scope is required"

    def __init__(self, challenge: str, detail: str) -> None:
        super().__init__(detail=detail)
        self.challenge = challenge


class _Forbidden(SCIMException, IssuerError):
    status = 403
    _default_detail = "the token lacks the tessera:admin scope"


def _refused(refusal: Refusal) -> SCIMException:
    """A refused token as the SCIM error that carries its challenge: why it was refused is
    logged, not told."""
    if refusal.reason is Reason.MISSING:
        return _Unauthorized(
            'Bearer realm="tessera"', "a bearer token with the tessera:admin scope is required"
        )
    if refusal.reason is Reason.INSUFFICIENT_SCOPE:
        return _Forbidden()
    log.info("SCIM: token refused: %s", refusal.message)
    return _Unauthorized(
        'Bearer realm="tessera", error="invalid_token"', "the bearer token is not valid"
    )


class _MethodNotAllowed(SCIMException, IssuerError):
    status = 405
    _default_detail = "only GET is supported on discovery endpoints"


class _RequestTimeout(SCIMException, IssuerError):
    status = 408  # RFC 9110 §15.5.9; RFC 7644 §3.12 names no scimType for it
    _default_detail = "the request body did not arrive in time"


class _Raced(PreconditionFailedException, IssuerError):
    """The resource changed between reading it and writing it back."""


class _NotModified(Exception):
    def __init__(self, etag: str) -> None:
        self.etag = etag


def scim_response(
    payload: Mapping[str, Any] | None, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    body = b"" if payload is None else json.dumps(payload, ensure_ascii=False).encode()
    media = None if payload is None else MEDIA_TYPE
    return Response(body, status, headers=dict(headers or {}), media_type=media)


def error_response(exc: SCIMException) -> Response:
    """The RFC 7644 §3.12 error body for an exception, with its status."""
    error = exc.to_error()
    headers = {}
    if isinstance(exc, _Unauthorized):
        headers["WWW-Authenticate"] = exc.challenge
    elif isinstance(exc, _Forbidden):
        headers["WWW-Authenticate"] = f'Bearer error="insufficient_scope", scope="{ADMIN_SCOPE}"'
    elif isinstance(exc, _MethodNotAllowed):
        headers["Allow"] = "GET, HEAD"  # RFC 9110 §15.5.6, as Starlette says it
    return scim_response(error.model_dump(), error.status or 400, headers)


def _validation_error(exc: ValidationError) -> SCIMException:
    error = Error.from_validation_errors(exc)[0]
    return SCIMException.from_error(error)


# ---------------------------------------------------------------- resource kinds


@dataclass(frozen=True)
class Kind:
    """One resource type the service serves, and the rules the schemas cannot say."""

    name: str
    endpoint: str
    model: type[Resource[Any]]
    unique: Callable[[Resource[Any]], dict[str, str]]


def _agent_unique(agent: Resource[Any]) -> dict[str, str]:
    return {"name": str(getattr(agent, "name", "")).casefold()}


def _user_unique(user: Resource[Any]) -> dict[str, str]:
    return {"userName": str(getattr(user, "user_name", "")).casefold()}


KINDS = {
    kind.endpoint: kind
    for kind in (
        Kind("Agent", "Agents", AgentResource, _agent_unique),
        Kind("User", "Users", UserResource, _user_unique),
        Kind("Group", "Groups", Group, lambda _group: {}),
    )
}


DISCOVERY = ("ServiceProviderConfig", "ResourceTypes", "Schemas")

MEMBER_KINDS = ("User", "Agent", "Group")
"""The resources a group's members may be."""


def etag(version: int) -> str:
    """A weak entity tag for a stored version (RFC 7232 §2.3, RFC 7644 §3.14)."""
    return f'W/"{version}"'


def _matches(header: str, version: int) -> bool:
    """Whether an If-Match or If-None-Match header names ``version``, or is ``*``.

    Weak comparison (RFC 9110 §8.8.3.2), as RFC 7644 §3.14 uses weak tags throughout.
    """
    tags = {part.strip() for part in header.split(",")}
    return not tags.isdisjoint({"*", etag(version), f'"{version}"'})


# ---------------------------------------------------------------- the service


class ScimService:
    """The endpoints of RFC 7644 over a :class:`~issuer.store.Store`."""

    def __init__(self, store: Store, authenticate: Authenticator) -> None:
        self.store = store
        self.authenticate = authenticate

    # -- plumbing

    async def _io(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a store call off the event loop (the loop also serves the PDP)."""
        return await to_thread.run_sync(lambda: fn(*args, **kwargs))

    async def _principal(self, request: Request) -> Principal:
        """The administrator calling, or the RFC 6750 §3.1 refusal as a SCIM error."""
        token = bearer_token(request.headers.get("authorization", ""))
        found = MISSING if token is None else await self.authenticate(token)
        if isinstance(found, Refusal):
            raise _refused(found)
        if ADMIN_SCOPE not in found.scopes:
            raise _Forbidden()
        return found

    async def _body(self, request: Request) -> Any:
        """The body's JSON value, read within :mod:`issuer.wire`'s bounds: 413 over
        :data:`MAX_BODY` (RFC 7644 §3.12 gives it no scimType), 408 when it is slow, and
        ``invalidSyntax`` for what is not JSON (too deep, lone surrogates included)."""
        try:
            return read_json(await read_body(request, MAX_BODY))
        except TooLarge as exc:
            raise PayloadTooLargeException(detail=str(exc)) from None
        except TooSlow as exc:
            raise _RequestTimeout(detail=str(exc)) from None
        except WireError as exc:
            raise InvalidSyntaxException(detail=str(exc)) from None

    @staticmethod
    def _kind(request: Request) -> Kind:
        if request.path_params["endpoint"] in DISCOVERY:
            raise _MethodNotAllowed(detail=f"{request.method} is not supported here; use GET")
        kind = KINDS.get(request.path_params["endpoint"])
        if kind is None:
            raise NotFoundException(
                detail=f"no resource type at /{request.path_params['endpoint']}"
            )
        return kind

    def _base(self, request: Request) -> str:
        """The service's absolute base URL, e.g. ``https://host/scim/v2`` (for meta.location)."""
        url = request.url
        return f"{url.scheme}://{url.netloc}{request.scope.get('root_path', '')}"

    # -- records and models

    def _model(self, kind: Kind, record: Record, base: str, groups: list[Record]) -> Any:
        data = dict(record.data)
        data.pop("password", None)  # write-only, and stored hashed
        if kind.name == "User":
            data["groups"] = [
                {"value": g.id, "display": g.data.get("displayName"), "type": "direct"}
                for g in groups
                if any(m.get("value") == record.id for m in g.data.get("members") or ())
            ] or None
        meta = Meta(
            resource_type=kind.name,
            created=record.created,
            last_modified=record.modified,
            location=f"{base}/{kind.endpoint}/{record.id}",
            version=etag(record.version),
        )
        return kind.model.model_validate({**data, "id": record.id, "meta": meta.model_dump()})

    async def _groups(self, kind: Kind) -> list[Record]:
        return await self._io(self.store.list, "Group") if kind.name == "User" else []

    async def _load(self, kind: Kind, id: str) -> Record:
        try:
            return await self._io(self.store.get, kind.name, id)
        except NotFound:
            raise NotFoundException(detail=f"no {kind.name} with id {id!r}") from None

    def _respond(
        self,
        kind: Kind,
        resource: Any,
        context: Context,
        params: Any,
        status: int = 200,
    ) -> Response:
        headers = {"ETag": str(resource.meta.version)}
        if status == 201:
            headers["Location"] = str(resource.meta.location)
        payload = resource.model_dump(scim_ctx=context, response_parameters=params)
        return scim_response(payload, status, headers)

    def _params(self, kind: Kind, request: Request) -> Any:
        query = request.query_params
        raw = {
            key: query[key]
            for key in ("attributes", "excludedAttributes")
            if key in query and query[key].strip()
        }
        try:
            return SearchRequest[kind.model].model_validate(raw)  # type: ignore[name-defined]
        except ValidationError as exc:
            raise _validation_error(exc) from None

    def _document(self, resource: Any, before: Record | None) -> dict[str, Any]:
        """What the store keeps: the validated resource without id and meta, secrets hashed."""
        data: dict[str, Any] = resource.model_dump(
            scim_ctx=None, exclude_none=True, by_alias=True, mode="json"
        )
        for key in ("id", "meta", "groups"):
            data.pop(key, None)
        for value in data.values():  # an extension's "schemas" repeats the resource's
            if isinstance(value, dict):
                value.pop("schemas", None)
        # RFC 7643 §3: "schemas" names the schemas of the attributes present; an optional
        # extension the resource does not use (a user's enterprise one) is not.
        core = str(type(resource).__schema__)
        if isinstance(data.get("schemas"), list):
            data["schemas"] = [urn for urn in data["schemas"] if urn == core or urn in data]
        password = data.get("password")
        if password is not None and (before is None or before.data.get("password") != password):
            data["password"] = hash_password(password)
        return data

    async def _check(self, kind: Kind, data: dict[str, Any]) -> None:
        """The rules the schemas cannot express: group members must exist."""
        if kind.name == "Group":
            for member in data.get("members") or ():
                value = member.get("value")
                if not value or not await self._exists(value):
                    raise InvalidValueException(
                        detail=f"members: no user, agent or group with id {value!r}"
                    )

    async def _exists(self, id: str) -> bool:
        """Whether a group may list ``id``: a user's, an agent's (policies read the groups
        of both) or a group's."""
        for name in MEMBER_KINDS:
            try:
                await self._io(self.store.get, name, id)
                return True
            except NotFound:
                continue
        return False

    def _precondition(self, request: Request, record: Record) -> int | None:
        """The version If-Match pins, or 412 when no listed tag is current (RFC 7232 §3.1)."""
        header = request.headers.get("if-match")
        if header is None:
            return None
        if _matches(header, record.version):
            return record.version
        raise PreconditionFailedException(
            detail=f"the resource is at {etag(record.version)}, not {header}"
        )

    # -- endpoints

    async def create(self, request: Request) -> Response:
        principal = await self._principal(request)
        kind = self._kind(request)
        params = self._params(kind, request)
        payload = _with_defaults(kind, await self._body(request))
        try:
            resource = kind.model.model_validate(
                payload, scim_ctx=Context.RESOURCE_CREATION_REQUEST
            )
        except ValidationError as exc:
            raise _validation_error(exc) from None
        data = await self._io(self._document, resource, None)  # scrypt: off the loop
        await self._check(kind, data)
        try:
            record = await self._io(
                self.store.create,
                kind.name,
                data,
                unique=kind.unique(resource),
                actor=principal.subject,
            )
        except Conflict as exc:
            raise UniquenessException(detail=str(exc)) from None
        model = self._model(kind, record, self._base(request), await self._groups(kind))
        return self._respond(kind, model, Context.RESOURCE_CREATION_RESPONSE, params, 201)

    async def get(self, request: Request) -> Response:
        await self._principal(request)
        kind = self._kind(request)
        params = self._params(kind, request)
        record = await self._load(kind, request.path_params["id"])
        if_none_match = request.headers.get("if-none-match")
        if if_none_match and _matches(if_none_match, record.version):
            raise _NotModified(etag(record.version))
        model = self._model(kind, record, self._base(request), await self._groups(kind))
        return self._respond(kind, model, Context.RESOURCE_QUERY_RESPONSE, params)

    async def replace(self, request: Request) -> Response:
        principal = await self._principal(request)
        kind = self._kind(request)
        params = self._params(kind, request)
        payload = await self._body(request)
        await self._load(kind, request.path_params["id"])  # 404 before any 400
        try:
            replacement = kind.model.model_validate(
                payload, scim_ctx=Context.RESOURCE_REPLACEMENT_REQUEST
            )
        except ValidationError as exc:
            raise _validation_error(exc) from None

        def build(original: Any) -> Any:
            resource = replacement.model_copy(deep=True)
            resource.replace(original)  # read-only copied, immutable checked (RFC 7644 §3.5.1)
            return resource

        return await self._rewrite(request, kind, principal, params, build)

    async def patch(self, request: Request) -> Response:
        principal = await self._principal(request)
        kind = self._kind(request)
        params = self._params(kind, request)
        payload = await self._body(request)
        await self._load(kind, request.path_params["id"])  # 404 before any 400
        try:
            operation = PatchOp[kind.model].model_validate(  # type: ignore[name-defined]
                payload, scim_ctx=Context.RESOURCE_PATCH_REQUEST
            )
        except ValidationError as exc:
            raise _validation_error(exc) from None

        def build(resource: Any) -> Any:
            operation.patch(resource)  # RFC 7644 §3.5.2; raises the SCIM error it deserves
            checked: Any
            try:  # the result must still be a valid resource (required attributes, types)
                checked = kind.model.model_validate(
                    resource.model_dump(
                        scim_ctx=None, exclude_none=True, by_alias=True, mode="json"
                    ),
                    scim_ctx=Context.RESOURCE_REPLACEMENT_REQUEST,
                )
            except ValidationError as exc:
                raise _validation_error(exc) from None
            if kind.name == "User":
                checked.password = resource.password
            return checked

        return await self._rewrite(request, kind, principal, params, build)

    async def _rewrite(
        self,
        request: Request,
        kind: Kind,
        principal: Principal,
        params: Any,
        build: Callable[[Any], Any],
    ) -> Response:
        """Read, rewrite with ``build`` (given the stored resource), store at the version read.

        With If-Match, a change in between is a 412. Without, the request applies to the
        newest version: it is read and rewritten again (a few times at most).
        """
        pinned = "if-match" in request.headers
        base = self._base(request)
        for attempt in range(1, REWRITE_ATTEMPTS + 1):
            before = await self._load(kind, request.path_params["id"])
            expected = self._precondition(request, before) or before.version
            original = self._model(kind, before, base, await self._groups(kind))
            if kind.name == "User":
                original.password = before.data.get("password")
            resource = build(original)
            try:
                return await self._store(
                    request, kind, before, resource, expected, principal, params
                )
            except _Raced:
                if pinned or attempt == REWRITE_ATTEMPTS:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def _store(
        self,
        request: Request,
        kind: Kind,
        before: Record,
        resource: Any,
        expected: int,
        principal: Principal,
        params: Any,
    ) -> Response:
        data = await self._io(self._document, resource, before)  # scrypt: off the loop
        await self._check(kind, data)
        try:
            record = await self._io(
                self.store.replace,
                kind.name,
                before.id,
                data,
                unique=kind.unique(resource),
                expected_version=expected,
                actor=principal.subject,
            )
        except Conflict as exc:
            raise UniquenessException(detail=str(exc)) from None
        except VersionMismatch as exc:
            raise _Raced(detail=f"the resource changed meanwhile: {exc}") from None
        except NotFound:
            raise NotFoundException(detail=f"no {kind.name} with id {before.id!r}") from None
        model = self._model(kind, record, self._base(request), await self._groups(kind))
        return self._respond(kind, model, Context.RESOURCE_REPLACEMENT_RESPONSE, params)

    async def delete(self, request: Request) -> Response:
        principal = await self._principal(request)
        kind = self._kind(request)
        before = await self._load(kind, request.path_params["id"])
        expected = self._precondition(request, before)
        try:
            await self._io(
                self.store.delete,
                kind.name,
                before.id,
                expected_version=expected,
                actor=principal.subject,
            )
        except VersionMismatch as exc:
            raise PreconditionFailedException(
                detail=f"the resource changed meanwhile: {exc}"
            ) from None
        except NotFound:
            raise NotFoundException(detail=f"no {kind.name} with id {before.id!r}") from None
        if kind.name in MEMBER_KINDS:
            await self._leave_groups(before.id, principal.subject)
        return scim_response(None, 204)

    async def _leave_groups(self, id: str, actor: str) -> None:
        """Take a deleted member out of every group, so no member points nowhere."""
        for group in await self._io(self.store.list, "Group"):
            with contextlib.suppress(NotFound):  # a group deleted meanwhile lists nobody
                await self._leave(group, id, actor)

    async def _leave(self, group: Record, id: str, actor: str) -> None:
        """Rewrite the group without the member, at the version read (re-read if it changed)."""
        for _ in range(5):
            members = group.data.get("members") or []
            kept = [member for member in members if member.get("value") != id]
            if len(kept) == len(members):
                return
            data = {key: value for key, value in group.data.items() if key != "members"}
            if kept:
                data["members"] = kept
            try:
                await self._io(
                    self.store.replace,
                    "Group",
                    group.id,
                    data,
                    unique={},
                    expected_version=group.version,
                    actor=actor,
                )
                return
            except VersionMismatch:
                group = await self._io(self.store.get, "Group", group.id)
        log.warning("group %s kept deleted member %s: it kept changing", group.id, id)

    async def search(self, request: Request) -> Response:
        """GET /{endpoint} with query parameters, or POST /{endpoint}/.search (RFC 7644 §3.4)."""
        await self._principal(request)
        kind = self._kind(request)
        return await self._search(request, kind.model, [kind])

    async def search_all(self, request: Request) -> Response:
        """POST /.search at the service root: every resource type at once (RFC 7644 §3.4.3)."""
        await self._principal(request)
        kinds = list(KINDS.values())
        model: Any = Union[tuple(kind.model for kind in kinds)]  # noqa: UP007
        return await self._search(request, model, kinds)

    async def _search(self, request: Request, model: Any, kinds: list[Kind]) -> Response:
        if request.method == "POST":
            raw = await self._body(request)
            if not isinstance(raw, dict):
                raise InvalidSyntaxException(detail="a SearchRequest is a JSON object")
        else:
            raw = dict(request.query_params)
        try:
            query = SearchRequest[model].model_validate(raw, scim_ctx=Context.SEARCH_REQUEST)
        except ValidationError as exc:
            raise _validation_error(exc) from None
        base = self._base(request)
        resources = []
        for kind in kinds:
            groups = await self._groups(kind)
            records = await self._io(self.store.list, kind.name)
            resources += [self._model(kind, record, base, groups) for record in records]
        if query.filter is not None:
            resources = [r for r in resources if query.filter.match(r)]
        if query.sort_by is not None:
            resources = query.sort(resources)
        start = query.start_index_0 or 0
        count = MAX_RESULTS if query.count is None else min(query.count, MAX_RESULTS)
        page = resources[start : start + count]
        listing = ListResponse[model](
            total_results=len(resources),
            start_index=start + 1,
            items_per_page=len(page),
            resources=page,
        )
        payload = listing.model_dump(scim_ctx=Context.SEARCH_RESPONSE, response_parameters=query)
        return scim_response(payload)

    # -- discovery (RFC 7644 §4)

    async def service_provider_config(self, request: Request) -> Response:
        await self._principal(request)
        config = PROVIDER.config
        assert config is not None
        located = config.model_copy(
            update={
                "meta": Meta(
                    resource_type="ServiceProviderConfig",
                    location=f"{self._base(request)}/ServiceProviderConfig",
                )
            }
        )
        return scim_response(located.model_dump(scim_ctx=Context.RESOURCE_QUERY_RESPONSE))

    async def resource_types(self, request: Request) -> Response:
        await self._principal(request)
        return self._discovery_list(request, PROVIDER.resource_types, ResourceType)

    async def resource_type(self, request: Request) -> Response:
        await self._principal(request)
        return self._discovery_item(request, PROVIDER.resource_types, ResourceType)

    async def schemas(self, request: Request) -> Response:
        await self._principal(request)
        return self._discovery_list(request, PROVIDER.schemas, Schema)

    async def schema(self, request: Request) -> Response:
        await self._principal(request)
        return self._discovery_item(request, PROVIDER.schemas, Schema)

    def _located(self, request: Request, items: Iterable[Any], model: type[Any]) -> list[Any]:
        """Discovery resources with their meta (``/ResourceTypes/User``, ``/Schemas/urn…``)."""
        base, name = self._base(request), model.__name__
        return [
            item.model_copy(
                update={"meta": Meta(resource_type=name, location=f"{base}/{name}s/{item.id}")}
            )
            for item in items
        ]

    def _discovery_item(self, request: Request, items: Iterable[Any], model: type[Any]) -> Response:
        wanted = request.path_params["id"]
        for item in self._located(request, items, model):
            if item.id == wanted:
                return scim_response(item.model_dump(scim_ctx=Context.RESOURCE_QUERY_RESPONSE))
        raise NotFoundException(detail=f"no {model.__name__} {wanted!r}")

    def _discovery_list(self, request: Request, items: Iterable[Any], model: type[Any]) -> Response:
        located = self._located(request, items, model)
        if request.query_params.get("filter"):
            raise SCIMException.from_error(
                Error(status=403, detail="filtering is not supported on discovery endpoints")
            )
        listing = ListResponse[model](  # type: ignore[valid-type]
            total_results=len(located),
            start_index=1,
            items_per_page=len(located),
            resources=located,
        )
        return scim_response(listing.model_dump(scim_ctx=Context.RESOURCE_QUERY_RESPONSE))


def _with_defaults(kind: Kind, payload: Any) -> Any:
    """A new agent is active and runs in the background unless the payload says otherwise."""
    if kind.name == "Agent" and isinstance(payload, dict):
        extension = payload.get(AGENT_EXTENSION)
        if isinstance(extension, dict):
            defaults = {STATUS: AgentStatus.active.value, AGENT_TYPE: AgentType.background.value}
            payload = {**payload, AGENT_EXTENSION: {**defaults, **extension}}
    return payload


# ---------------------------------------------------------------- the application

Handler = Callable[[Request], Awaitable[Response]]


def _guarded(handler: Handler) -> Handler:
    """Turn SCIM exceptions into RFC 7644 §3.12 error responses."""

    async def endpoint(request: Request) -> Response:
        try:
            return await handler(request)
        except SCIMException as exc:
            return error_response(exc)
        except Unstorable as exc:  # a value no store holds: RFC 7644 §3.12 invalidValue
            return error_response(InvalidValueException(detail=str(exc)))
        except MutabilityException as exc:  # pragma: no cover - a SCIMException subclass
            return error_response(exc)
        except _NotModified as exc:
            return Response(status_code=304, headers={"ETag": exc.etag})

    return endpoint


def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own errors (no route, method not allowed) as SCIM errors, headers kept."""
    if not isinstance(exc, HTTPException):
        return scim_response(Error(status=500, detail="internal error").model_dump(), 500)
    error = Error(status=exc.status_code, detail=str(exc.detail))
    return scim_response(error.model_dump(), exc.status_code, exc.headers)


def scim_app(store: Store, authenticate: Authenticator) -> Starlette:
    """The SCIM service as an ASGI app; mount it at ``/scim/v2``."""
    service = ScimService(store, authenticate)

    def route(path: str, handler: Handler, methods: Iterable[str]) -> Route:
        return Route(path, _guarded(handler), methods=list(methods))

    routes = [
        route("/ServiceProviderConfig", service.service_provider_config, ["GET"]),
        route("/ResourceTypes", service.resource_types, ["GET"]),
        route("/ResourceTypes/{id}", service.resource_type, ["GET"]),
        route("/Schemas", service.schemas, ["GET"]),
        route("/Schemas/{id:path}", service.schema, ["GET"]),
        route("/.search", service.search_all, ["POST"]),
        route("/{endpoint}", service.search, ["GET"]),
        route("/{endpoint}", service.create, ["POST"]),
        route("/{endpoint}/.search", service.search, ["POST"]),
        route("/{endpoint}/{id}", service.get, ["GET"]),
        route("/{endpoint}/{id}", service.replace, ["PUT"]),
        route("/{endpoint}/{id}", service.patch, ["PATCH"]),
        route("/{endpoint}/{id}", service.delete, ["DELETE"]),
    ]
    return Starlette(routes=routes, exception_handlers={HTTPException: _http_error})
