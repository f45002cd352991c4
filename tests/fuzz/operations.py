"""The HTTP API as the fuzzers see it: each operation of the OpenAPI document, the door it
belongs to, a request it accepts, and what its answers must look like.

An operation's answers are held to the document: a status the document does not give
the operation fails, and so does an error whose body is not in its protocol's shape
(SCIM's error document, OAuth's JSON error, AuthZEN's plain text, the sign-in pages'
HTML) or that names a Python exception.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from issuer.models import AGENT_EXTENSION, AGENT_SCHEMA
from issuer.openapi import ERROR_URN, PATCH_URN, SEARCH_URN
from pdp.serve.openapi import document
from tests.fuzz.live import Live, Seeds

# Words that only a Python exception leaking into an answer would put there.
PYTHON = re.compile(r"Traceback|<class |\b[A-Z][A-Za-z]*(Error|Exception)\b|\bException\b")


@dataclass(frozen=True)
class Operation:
    """One method on one path of the document."""

    path: str  # the document's template, e.g. /scim/v2/Users/{id}
    method: str  # upper case
    spec: dict[str, Any]

    @property
    def door(self) -> str:
        """scim, authzen, catalog, oauth (JSON), page (HTML for people) or open (health,
        this document, the metadata: no errors)."""
        if self.path.startswith("/scim/v2"):
            return "scim"
        if self.path.startswith("/access/v1"):
            return "authzen"
        if self.path.startswith("/resources/v1"):
            return "catalog"
        if self.path in ("/oauth/authorize", "/oauth/login", "/oauth/consent"):
            return "page"
        return "oauth" if self.path.startswith("/oauth/") else "open"

    @property
    def body(self) -> str | None:
        """The media type of its body, if it takes one."""
        body = self.spec.get("requestBody")
        return None if body is None else next(iter(body["content"]))

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


def operations() -> list[Operation]:
    """Every operation served on the HTTP port (not the metrics port's)."""
    found = []
    for path, item in document()["paths"].items():
        for method, spec in item.items():
            if "servers" not in spec:
                found.append(Operation(path, method.upper(), spec))
    return found


OPERATIONS = operations()
DOORS = ("scim", "oauth", "page", "authzen", "catalog")


def of_door(door: str) -> list[Operation]:
    return [operation for operation in OPERATIONS if operation.door == door]


# ---------------------------------------------------------------- requests it accepts


def _agent(name: str) -> dict[str, Any]:
    return {
        "schemas": [AGENT_SCHEMA, AGENT_EXTENSION],
        "name": name,
        AGENT_EXTENSION: {"owner": "fuzz", "riskLevel": "low", "scopes": ["mcp:tools"]},
    }


def _question(seeds: Seeds) -> dict[str, Any]:
    return {
        "subject": {"type": "agent", "id": seeds.agent, "properties": {"user": seeds.user}},
        "action": {"name": "tool.call"},
        "resource": {"type": "tool", "id": "search", "properties": {"server": "tools"}},
        "context": {"amount": "10 USD"},
    }


def _scim_examples(seeds: Seeds) -> dict[str, Any]:
    name = f"fuzz-{uuid.uuid4().hex[:8]}"
    search = {"schemas": [SEARCH_URN], "filter": 'userName sw "fuzz"', "count": 5}
    patch = {
        "schemas": [PATCH_URN],
        "Operations": [{"op": "replace", "path": "displayName", "value": name}],
    }
    found: dict[str, Any] = {"POST /scim/v2/.search": search}
    for endpoint, body in (
        ("Users", {"userName": name, "emails": [{"value": f"{name}@example.com"}]}),
        ("Agents", _agent(name)),
        ("Groups", {"displayName": name, "members": [{"value": seeds.user}]}),
    ):
        found[f"POST /scim/v2/{endpoint}"] = body
        found[f"PUT /scim/v2/{endpoint}/{{id}}"] = body
        found[f"PATCH /scim/v2/{endpoint}/{{id}}"] = patch
        found[f"POST /scim/v2/{endpoint}/.search"] = search
    return found


def examples(seeds: Seeds) -> dict[str, Any]:
    """A body each operation that takes one accepts (or would, with its credentials)."""
    question = _question(seeds)
    lookup = {k: question[k] for k in ("subject", "action", "resource")}
    return {
        **_scim_examples(seeds),
        "POST /oauth/token": {"grant_type": "client_credentials", "scope": "mcp:tools"},
        "POST /oauth/introspect": {"token": seeds.access_token},
        "POST /oauth/revoke": {"token": "not-a-token-of-ours"},
        "POST /oauth/register": {
            "token_endpoint_auth_method": "none",
            "grant_types": ["authorization_code"],
            "redirect_uris": ["https://app.example.com/callback"],
            "client_name": "fuzzed",
        },
        "POST /oauth/api-keys": {"agent_id": seeds.agent, "scope": "mcp:tools", "expires_in": 60},
        "POST /oauth/login": {"request": "expired", "username": "fuzz-user", "password": "x"},
        "POST /oauth/consent": {"request": "expired", "csrf": "x", "decision": "deny"},
        "POST /oauth/bc-authorize": {
            "scope": "openid mcp:tools",
            "login_hint": "fuzz-user",
            "binding_message": "fuzz 42",
        },
        "POST /oauth/approvals/{id}": {"csrf": "x", "decision": "deny"},
        "POST /access/v1/evaluation": question,
        "POST /access/v1/evaluations": {
            **lookup,
            "evaluations": [{"resource": {"type": "tool", "id": "payments.transfer"}}, {}],
            "options": {"evaluations_semantic": "deny_on_first_deny", "tessera_explain": True},
        },
        "POST /access/v1/search/subject": {**lookup, "subject": {"type": "agent"}},
        "POST /access/v1/search/resource": {**lookup, "resource": {"type": "tool"}},
        "POST /access/v1/search/action": {
            "subject": question["subject"],
            "resource": question["resource"],
            "page": {"limit": 2},
        },
        "PUT /resources/v1/{type}/{id}": {"properties": {"classification": "internal"}},
        "POST /resources/v1": {
            "put": [{"type": "table", "id": "fuzz", "properties": {"classification": "public"}}],
            "delete": [{"type": "table", "id": "gone"}],
        },
    }


def credentials(live: Live, kind: str) -> dict[str, str]:
    """The headers of one kind of caller: none, the administrator, the agent's token, a
    token that is not one, the agent's client (Basic) or a client that is not one."""
    seeds = live.seeds
    basic = httpx.BasicAuth(seeds.client_id, seeds.client_secret)
    forged = httpx.BasicAuth("nobody", "nothing")
    headers = {
        "none": {},
        "admin": {"Authorization": live.http.headers["Authorization"]},
        "agent": {"Authorization": f"Bearer {seeds.access_token}"},
        "forged": {"Authorization": "Bearer eyJhbGciOiJub25lIn0.e30."},
        "client": {"Authorization": basic._auth_header},
        "stranger": {"Authorization": forged._auth_header},
    }
    return headers[kind]


CALLERS = ("none", "admin", "agent", "forged", "client", "stranger")


def best_caller(operation: Operation) -> str:
    """The caller an operation's valid request needs."""
    if operation.door in ("authzen", "scim", "catalog"):
        return "admin"
    if operation.path in ("/oauth/token", "/oauth/introspect", "/oauth/revoke"):
        return "client"
    if operation.path.startswith("/oauth/api-keys"):
        return "admin"
    return "none"


# ---------------------------------------------------------------- answers


def _documented(operation: Operation, status: int) -> dict[str, Any]:
    responses = operation.spec["responses"]
    answer = responses.get(str(status)) or responses.get(f"{status // 100}XX")
    assert answer is not None, f"{operation} answered {status}, which it does not document"
    return dict(answer)


def _scim_error(body: bytes, status: int) -> None:
    error = json.loads(body)
    assert error["schemas"] == [ERROR_URN], error
    assert error["status"] == str(status), error


def _oauth_error(body: bytes, status: int) -> None:
    error = json.loads(body)
    assert isinstance(error.get("error"), str) and error["error"], error


def _text(body: bytes, status: int) -> None:
    assert body.decode().strip(), "an error without a message"


def _page(body: bytes, status: int) -> None:
    assert body.startswith(b"<!doctype html>"), body[:200]


SHAPES: dict[str, Callable[[bytes, int], None]] = {
    "application/scim+json": _scim_error,
    "application/json": _oauth_error,
    "text/plain": _text,
    "text/html": _page,
}


def check_answer(operation: Operation, response: httpx.Response) -> None:
    """The answer is one the document gives the operation: a documented status, the
    documented media type, and an error in its protocol's shape without Python's names."""
    status = response.status_code
    assert status < 500, f"{operation} answered {status}: {response.text[:500]}"
    answer = _documented(operation, status)
    media = response.headers.get("content-type", "").split(";")[0].strip()
    documented = answer.get("content") or {}
    if documented:
        assert media in documented, f"{operation} {status} answered {media!r}"
    if status >= 400:
        text = response.text
        assert not PYTHON.search(text), f"{operation} {status} names Python: {text[:500]}"
        SHAPES[media](response.content, status)
