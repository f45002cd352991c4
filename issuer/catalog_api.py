"""The resource catalog's HTTP API: administrators read, write and delete its entries.

    GET    /resources/v1/{type}?limit=N&after=ID  a page of a type's entries, in id order
    GET    /resources/v1/{type}/{id}              one entry
    PUT    /resources/v1/{type}/{id}              write it: {"properties": {NAME: VALUE, ...}}
    DELETE /resources/v1/{type}/{id}              delete it
    POST   /resources/v1                          a batch, all or none:
                                                  {"put": [ENTRY, ...],
                                                   "delete": [{"type": T, "id": I}, ...]}

An entry is ``{"type", "id", "properties"}`` (:mod:`issuer.catalog`, where its bounds
are). The entries are those of the store, which every replica's decision point follows
(docs/language.md); the bundle's ``*.resources.json`` entries are read from its files and
are neither listed nor changed here. A stored entry takes the place of the bundle's entry
of the same (type, id); deleting it brings the bundle's back. Writing an entry as it is
stored changes nothing (no change on the feed), so a job may push the same batch again.

Every endpoint needs a bearer token with the ``tessera:admin`` scope (RFC 6750), as SCIM
does: 401 without one or with one refused, 403 without the scope, each with its
``WWW-Authenticate`` challenge (RFC 6750 §3.1). Given a :data:`~issuer.catalog.SchemaCheck`
(``tessera serve`` gives the one of the policy schema it decides with), an entry whose
properties the schema does not declare for its type, or declares with another type, is
refused. Errors are ``application/json`` ``{"error": CODE, "message": TEXT}``: 400
``invalid_request`` (the message names the field), 404 ``not_found``, 413 ``too_large``
(a body over 1 MiB, a batch over 1,000 items, an entry over a bound), 408 ``timeout`` (a
body that did not arrive within 10 s), 503 ``unavailable`` (the store did not answer). A
refused request changes nothing.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from anyio import to_thread
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from issuer.catalog import (
    MAX_BATCH,
    CatalogError,
    CatalogStore,
    Entry,
    EntryTooLarge,
    SchemaCheck,
    check_id,
    check_properties,
    check_type,
    entry_from_json,
)
from issuer.errors import IssuerError
from issuer.scim import ADMIN_SCOPE, Authenticator, Principal, bearer_token
from issuer.store import Store, StoreError, Unstorable
from issuer.verify import MISSING, Reason, Refusal
from issuer.wire import WireError, read_body, read_json

log = logging.getLogger("tessera.catalog")

CATALOG_PATH = "/resources/v1"
MAX_BODY = 1 << 20  # bytes
DEFAULT_PAGE = 100
MAX_PAGE = 1_000
CODES = {400: "invalid_request", 404: "not_found", 408: "timeout", 413: "too_large"}

T = TypeVar("T")
Handler = Callable[[Request, Principal], Awaitable[Response]]


class Refused(IssuerError):
    """An error answer: its status, message and headers (the error code follows)."""

    def __init__(
        self, status: int, message: str, headers: dict[str, str] | None = None, code: str = ""
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}
        self.code = code or CODES.get(status, "invalid_request")


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()
    return Response(body, status, headers, media_type="application/json")


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """The catalog's error body, for its own refusals and for the router's (405, 404)."""
    return _answer(Refused(status, message, headers))


def _answer(exc: Refused) -> Response:
    return json_response({"error": exc.code, "message": exc.message}, exc.status, exc.headers)


class CatalogApi:
    """The endpoints over the store; ``authenticate`` checks administrators' bearer
    tokens, ``check`` (when given) holds entries to the policy schema."""

    def __init__(
        self, store: Store, authenticate: Authenticator, check: SchemaCheck | None = None
    ) -> None:
        self.entries = CatalogStore(store)
        self.authenticate = authenticate
        self.check = check

    def routes(self) -> list[BaseRoute]:
        # One route for one path: the router's 405 names the methods of the first
        # route whose path matches.
        by_method = {"GET": self.get, "HEAD": self.get, "PUT": self.put, "DELETE": self.delete}

        async def one(request: Request, who: Principal) -> Response:
            return await by_method[request.method](request, who)

        return [
            Route(CATALOG_PATH, self._guarded(self.batch), methods=["POST"]),
            Route(f"{CATALOG_PATH}/{{type}}", self._guarded(self.list), methods=["GET"]),
            Route(
                f"{CATALOG_PATH}/{{type}}/{{id:path}}",
                self._guarded(one),
                methods=["GET", "PUT", "DELETE"],
            ),
        ]

    def _guarded(self, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                return await handler(request, await self._principal(request))
            except Refused as exc:
                return _answer(exc)
            except (CatalogError, Unstorable) as exc:
                return _answer(Refused(getattr(exc, "status", 400), str(exc)))
            except WireError as exc:
                return _answer(Refused(exc.status, str(exc)))
            except StoreError:
                log.exception("the catalog's store failed")
                return _answer(Refused(503, "the store is unavailable; retry", code="unavailable"))

        return endpoint

    async def _principal(self, request: Request) -> Principal:
        """The administrator calling, or the RFC 6750 §3.1 refusal; why a token was
        refused is logged, not told."""
        token = bearer_token(request.headers.get("authorization", ""))
        found = MISSING if token is None else await self.authenticate(token)
        if isinstance(found, Principal):
            if ADMIN_SCOPE in found.scopes:
                return found
            found = Refusal(Reason.INSUFFICIENT_SCOPE, "")
        if found.reason is Reason.MISSING:
            raise Refused(401, "a bearer token is required", {"WWW-Authenticate": "Bearer"})
        if found.reason is Reason.INSUFFICIENT_SCOPE:
            challenge = f'Bearer error="insufficient_scope", scope="{ADMIN_SCOPE}"'
            message = f"the catalog needs the scope {ADMIN_SCOPE}"
            raise Refused(403, message, {"WWW-Authenticate": challenge}, "insufficient_scope")
        log.info("catalog: token refused: %s", found.message)
        challenge = 'Bearer error="invalid_token"'
        raise Refused(401, "the bearer token is not valid", {"WWW-Authenticate": challenge})

    async def _io(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a store call off the event loop (the loop also serves the PDP)."""
        return await to_thread.run_sync(lambda: fn(*args))

    # -- the endpoints

    async def list(self, request: Request, who: Principal) -> Response:
        rtype = check_type(request.path_params["type"], "the path's type")
        limit, after = _paging(request)
        found = await self._io(self.entries.page, rtype, after, limit + 1)
        more = len(found) > limit
        page = found[:limit]
        next_after = page[-1].id if more else None
        return json_response({"resources": [e.to_json() for e in page], "next": next_after})

    async def get(self, request: Request, who: Principal) -> Response:
        rtype, ident = _key(request)
        entry = await self._io(self.entries.get, rtype, ident)
        if entry is None:
            raise Refused(404, f"the catalog holds no {rtype} {ident!r}")
        return json_response(entry.to_json())

    async def put(self, request: Request, who: Principal) -> Response:
        rtype, ident = _key(request)
        body = await _body(request)
        unknown = sorted(set(body) - {"properties"})
        if unknown:
            raise Refused(400, f'{unknown[0]}: unknown; the body is {{"properties": {{…}}}}')
        entry = Entry(rtype, ident, check_properties(body.get("properties", {})))
        self._checked(entry, "")
        await self._io(self.entries.write, [entry], [], who.subject)
        return json_response(entry.to_json())

    async def delete(self, request: Request, who: Principal) -> Response:
        rtype, ident = _key(request)
        if not await self._io(self.entries.write, [], [(rtype, ident)], who.subject):
            raise Refused(404, f"the catalog holds no {rtype} {ident!r}")
        return Response(status_code=204)

    async def batch(self, request: Request, who: Principal) -> Response:
        body = await _body(request)
        unknown = sorted(set(body) - {"put", "delete"})
        if unknown:
            raise Refused(400, f"{unknown[0]}: unknown; a batch has put and delete")
        puts, deletes = _list(body, "put"), _list(body, "delete")
        if len(puts) + len(deletes) > MAX_BATCH:
            raise EntryTooLarge(
                f"{len(puts) + len(deletes):,} items, over the {MAX_BATCH:,} a batch may have"
            )
        entries = [entry_from_json(raw, f"put[{i}].") for i, raw in enumerate(puts)]
        for index, entry in enumerate(entries):
            self._checked(entry, f"put[{index}]: ")
        gone = [_deleted(raw, f"delete[{i}].") for i, raw in enumerate(deletes)]
        changed = await self._io(self.entries.write, entries, gone, who.subject)
        return json_response({"put": len(entries), "deleted": len(gone), "changed": changed})

    def _checked(self, entry: Entry, where: str) -> None:
        problem = None if self.check is None else self.check(entry)
        if problem is not None:
            raise Refused(400, f"{where}{problem}")


def _key(request: Request) -> tuple[str, str]:
    return (
        check_type(request.path_params["type"], "the path's type"),
        check_id(request.path_params["id"], "the path's id"),
    )


def _paging(request: Request) -> tuple[int, str]:
    """(limit, after) of a listing's query; a token of paging is the last id seen."""
    raw = request.query_params.get("limit", str(DEFAULT_PAGE))
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_PAGE:
        raise Refused(400, f"limit: an integer from 1 to {MAX_PAGE}")
    after = request.query_params.get("after", "")
    return int(raw), check_id(after, "after") if after else ""


async def _body(request: Request) -> dict[str, Any]:
    """The request's JSON object, read within :mod:`issuer.wire`'s bounds."""
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media != "application/json":
        raise Refused(400, "Content-Type must be application/json")
    body = read_json(await read_body(request, MAX_BODY))
    if not isinstance(body, dict):
        raise Refused(400, "the body must be a JSON object")
    return body


def _list(body: dict[str, Any], name: str) -> Sequence[Any]:
    items = body.get(name, [])
    if not isinstance(items, list):
        raise Refused(400, f"{name}: expected a list")
    return items


def _deleted(raw: Any, where: str) -> tuple[str, str]:
    if not isinstance(raw, dict) or set(raw) - {"type", "id"}:
        raise Refused(400, f'{where.rstrip(".")}: expected {{"type", "id"}}')
    return check_type(raw.get("type"), f"{where}type"), check_id(raw.get("id"), f"{where}id")
