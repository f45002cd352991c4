"""The issuer's part of the OpenAPI 3.1 document of ``tessera serve``'s HTTP port.

SCIM 2.0 (RFC 7643, RFC 7644) under ``/scim/v2``, the resource catalog under
``/resources/v1`` and the OAuth 2 authorization server (RFC 6749, 7009, 7591, 7662, 8414,
8693, 8707) at the root. Built from Python, not kept as
a file, so the values the code decides (resource types, grant types, client
authentication methods, schema URNs, page and body bounds) are the code's own constants
and cannot drift from it. :mod:`pdp.serve.openapi` assembles the whole document; each
schema here says what the service accepts, precisely enough for a fuzzer to generate
requests it takes and requests it refuses.
"""

from __future__ import annotations

from typing import Any

from issuer.agents import (
    AGENT_EXTENSION,
    AGENT_SCHEMA,
    ENTERPRISE_ATTRIBUTES,
    ENTERPRISE_EXTENSION,
    MANAGER,
    AgentStatus,
    AgentType,
    RiskLevel,
)
from issuer.app import SCIM_PATH
from issuer.catalog import (
    MAX_BATCH,
    MAX_ENTRY_BYTES,
    MAX_PROPERTIES,
    MAX_TYPE,
    MAX_VALUE_BYTES,
    TYPE,
)
from issuer.catalog_api import CATALOG_PATH
from issuer.catalog_api import DEFAULT_PAGE as DEFAULT_CATALOG_PAGE
from issuer.catalog_api import MAX_PAGE as CATALOG_PAGE
from issuer.models import MAX_RESULTS
from issuer.oauth.api_keys import API_KEY_TOKEN_TYPE, MAX_LIFETIME
from issuer.oauth.ciba import (
    MAX_BINDING_MESSAGE,
    MAX_EXPIRY,
    MAX_LOGIN_HINT,
    MAX_NOTIFICATION_TOKEN,
)
from issuer.oauth.clients import AUTH_METHODS, DELIVERY_MODES, GRANT_TYPES
from issuer.oauth.endpoints import METADATA_PATH, PATHS
from issuer.oauth.grants import ACCESS_TOKEN_TYPE
from issuer.scim import KINDS, MEDIA_TYPE
from issuer.strength import LADDER

Json = dict[str, Any]

ERROR_URN = "urn:ietf:params:scim:api:messages:2.0:Error"
LIST_URN = "urn:ietf:params:scim:api:messages:2.0:ListResponse"
SEARCH_URN = "urn:ietf:params:scim:api:messages:2.0:SearchRequest"
PATCH_URN = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
USER_URN = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP_URN = "urn:ietf:params:scim:schemas:core:2.0:Group"
FORM = "application/x-www-form-urlencoded"
JSON = "application/json"
HTML = "text/html"

# Who may call what (the security schemes are in pdp.serve.openapi.COMPONENTS).
ADMIN = [{"bearer": ["tessera:admin"]}]
CLIENT: list[Json] = [
    {"clientSecretBasic": []},
    {"mutualTLS": []},
    {},
]  # {}: credentials in the form

STATUS_TEXT = {
    200: "OK",
    201: "created",
    204: "done; no content",
    303: "see the Location header",
    304: "not modified since the entity tag given",
    400: "the request is malformed",
    401: "no credentials, or credentials refused (see WWW-Authenticate)",
    403: "authenticated, but not allowed",
    404: "no such resource",
    409: "a conflict: a unique attribute is taken, or a request was answered before",
    410: "the request expired",
    408: "the body did not arrive whole within 10 seconds",
    412: "the If-Match entity tag is not the resource's current one",
    413: "the body, or a value in it, is over its bound (docs/limits.md)",
    503: "the store did not answer; retry",
}


def ref(name: str) -> Json:
    """A reference to a schema of the document's components."""
    return {"$ref": f"#/components/schemas/{name}"}


def content(schema: Json, *media: str) -> Json:
    return {kind: {"schema": schema} for kind in media}


BODY_BOUNDS = (408, 413)  # what every operation that reads a body may answer (limits.md)


def responses(ok: dict[int, Json], error: Json, *codes: int, body: bool = False) -> Json:
    """``ok`` (status → response) and, for each of ``codes`` (and the body's bounds when
    the operation reads a ``body``), ``error`` as its body."""
    answers: Json = {str(status): answer for status, answer in ok.items()}
    for code in sorted({*codes, *(BODY_BOUNDS if body else ())}):
        answers[str(code)] = {"description": STATUS_TEXT[code], "content": error}
    return answers


def scim_answer(schema: Json, description: str = "OK", **headers: Json) -> Json:
    answer: Json = {"description": description, "content": content(schema, MEDIA_TYPE)}
    if headers:
        answer["headers"] = headers
    return answer


SCIM_ERROR = content(ref("ScimError"), MEDIA_TYPE)
OAUTH_ERROR = content(ref("OAuthError"), JSON)
ETAG = {"description": "the resource's weak entity tag", "schema": {"type": "string"}}
LOCATION = {"description": "where the resource is", "schema": {"type": "string"}}
STRING = {"type": "string"}
STRINGS = {"type": "array", "items": STRING}


# ---------------------------------------------------------------- SCIM schemas


def _multi_valued(value: Json, *extra: str) -> Json:
    """A multi-valued attribute of RFC 7643 §2.4 (emails, roles…)."""
    fields = {"value": value, "display": STRING, "type": STRING, "primary": {"type": "boolean"}}
    fields.update({name: STRING for name in extra})
    return {"type": "array", "items": {"type": "object", "properties": fields}}


NAME_PARTS = (
    "formatted",
    "familyName",
    "givenName",
    "middleName",
    "honorificPrefix",
    "honorificSuffix",
)
USER_STRINGS = (
    "displayName",
    "nickName",
    "title",
    "userType",
    "preferredLanguage",
    "locale",
    "timezone",
)
READ_ONLY = {
    "id": {"type": "string", "readOnly": True},
    "meta": {"$ref": "#/components/schemas/ScimMeta", "readOnly": True},
}

USER = {
    "type": "object",
    "description": "RFC 7643 §4.1; groups is read-only, derived from group membership.",
    "required": ["userName"],
    "properties": {
        "schemas": {"type": "array", "items": {"enum": [USER_URN, ENTERPRISE_EXTENSION]}},
        **READ_ONLY,
        "externalId": STRING,
        "userName": {"type": "string", "minLength": 1, "pattern": r"\S"},
        "name": {
            "type": "object",
            "properties": {key: STRING for key in NAME_PARTS},
        },
        **{key: STRING for key in USER_STRINGS},
        "profileUrl": {"type": "string", "format": "uri"},
        "active": {"type": "boolean"},
        "password": {"type": "string", "writeOnly": True},
        "emails": _multi_valued({"type": "string", "format": "email"}),
        "phoneNumbers": _multi_valued(STRING),
        "roles": _multi_valued(STRING),
        "groups": {**_multi_valued(STRING, "$ref"), "readOnly": True},
        ENTERPRISE_EXTENSION: ref("EnterpriseUser"),
    },
}

ENTERPRISE_USER = {
    "type": "object",
    "description": "The enterprise user extension (RFC 7643 §4.3); optional.",
    "properties": {
        **{name: STRING for name in ENTERPRISE_ATTRIBUTES},
        MANAGER: {
            "type": "object",
            "description": "The manager's User: value is its id.",
            "properties": {
                "value": STRING,
                "$ref": STRING,
                "displayName": {"type": "string", "readOnly": True},
            },
        },
    },
}

AGENT_EXTENSION_SCHEMA = {
    "type": "object",
    "description": "Tessera's agent extension: what governance needs.",
    "required": ["owner", "riskLevel"],
    "properties": {
        "owner": {"type": "string", "minLength": 1, "pattern": r"\S"},
        "purpose": STRING,
        "riskLevel": {"enum": [level.value for level in RiskLevel]},
        "agentType": {"enum": [kind.value for kind in AgentType], "default": "background"},
        "status": {"enum": [status.value for status in AgentStatus], "default": "active"},
        "model": STRING,
        "description": STRING,
        "callbackUrl": STRING,
        "scopes": STRINGS,
        "labels": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["key"],
                "properties": {"key": {"type": "string", "minLength": 1}, "value": STRING},
            },
        },
        "minimumAcr": {"enum": list(LADDER)},
    },
}

AGENT = {
    "type": "object",
    "description": "An AI agent: Tessera's own resource type (RFC 7643 §6).",
    "required": ["name", AGENT_EXTENSION],
    "properties": {
        "schemas": {"type": "array", "items": {"enum": [AGENT_SCHEMA, AGENT_EXTENSION]}},
        **READ_ONLY,
        "externalId": STRING,
        "name": {"type": "string", "minLength": 1, "pattern": r"\S"},
        "displayName": STRING,
        "roles": _multi_valued(STRING),
        AGENT_EXTENSION: ref("AgentExtension"),
    },
}

GROUP = {
    "type": "object",
    "description": "RFC 7643 §4.2; each member is a user, agent or group of the directory.",
    "required": ["displayName"],
    "properties": {
        "schemas": {"type": "array", "items": {"const": GROUP_URN}},
        **READ_ONLY,
        "externalId": STRING,
        "displayName": {"type": "string", "minLength": 1},
        "members": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["value"],
                "properties": {"value": STRING, "display": STRING, "type": STRING},
            },
        },
    },
}

SCIM_SCHEMAS: Json = {
    "ScimError": {
        "type": "object",
        "description": "RFC 7644 §3.12.",
        "required": ["schemas", "status"],
        "properties": {
            "schemas": {"type": "array", "items": {"const": ERROR_URN}},
            "status": {"type": "string", "pattern": "^[1-5][0-9][0-9]$"},
            "scimType": STRING,
            "detail": STRING,
        },
    },
    "ScimMeta": {
        "type": "object",
        "properties": {
            key: STRING for key in ("resourceType", "created", "lastModified", "location")
        }
        | {"version": STRING},
    },
    "User": USER,
    "EnterpriseUser": ENTERPRISE_USER,
    "Agent": AGENT,
    "AgentExtension": AGENT_EXTENSION_SCHEMA,
    "Group": GROUP,
    "PatchOp": {
        "type": "object",
        "description": "RFC 7644 §3.5.2.",
        "required": ["schemas", "Operations"],
        "properties": {
            "schemas": {"type": "array", "items": {"const": PATCH_URN}, "minItems": 1},
            "Operations": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["op"],
                    "properties": {
                        "op": {"enum": ["add", "remove", "replace"]},
                        "path": STRING,
                        "value": {},
                    },
                },
            },
        },
    },
    "SearchRequest": {
        "type": "object",
        "description": "RFC 7644 §3.4.3.",
        "properties": {
            "schemas": {"type": "array", "items": {"const": SEARCH_URN}},
            "attributes": STRINGS,
            "excludedAttributes": STRINGS,
            "filter": STRING,
            "sortBy": STRING,
            "sortOrder": {"enum": ["ascending", "descending"]},
            "startIndex": {"type": "integer", "minimum": 1},
            "count": {"type": "integer", "minimum": 0},
        },
    },
    "ListResponse": {
        "type": "object",
        "description": f"RFC 7644 §3.4.2; at most {MAX_RESULTS} resources a page.",
        "required": ["schemas", "totalResults"],
        "properties": {
            "schemas": {"type": "array", "items": {"const": LIST_URN}},
            "totalResults": {"type": "integer", "minimum": 0},
            "startIndex": {"type": "integer", "minimum": 1},
            "itemsPerPage": {"type": "integer", "minimum": 0},
            "Resources": {"type": "array", "items": {"type": "object"}},
        },
    },
    "ScimDiscovery": {
        "type": "object",
        "description": "A discovery resource (RFC 7644 §4): ServiceProviderConfig, "
        "a ResourceType or a Schema.",
        "required": ["schemas"],
        "properties": {"schemas": STRINGS},
    },
}


# ---------------------------------------------------------------- SCIM paths


def _parameter(name: str, where: str, schema: Json, description: str) -> Json:
    return {"name": name, "in": where, "schema": schema, "description": description}


PROJECTION = [
    _parameter("attributes", "query", STRING, "the attributes to return, comma-separated"),
    _parameter("excludedAttributes", "query", STRING, "the attributes to leave out"),
]
LISTING = [
    _parameter("filter", "query", STRING, "an RFC 7644 §3.4.2.2 filter"),
    _parameter("sortBy", "query", STRING, "the attribute to sort by"),
    _parameter("sortOrder", "query", {"enum": ["ascending", "descending"]}, "the order"),
    _parameter("startIndex", "query", {"type": "integer", "minimum": 1}, "the first, 1-based"),
    _parameter("count", "query", {"type": "integer", "minimum": 0}, "at most this many"),
    *PROJECTION,
]
ID = {**_parameter("id", "path", {"type": "string", "minLength": 1}, "the id"), "required": True}
IF_MATCH = _parameter("If-Match", "header", STRING, "the entity tag the change applies to")
IF_NONE_MATCH = _parameter("If-None-Match", "header", STRING, "answer 304 when it is current")


def _scim_operation(summary: str, ok: dict[int, Json], *codes: int, **more: Any) -> Json:
    return {
        "tags": ["SCIM"],
        "summary": summary,
        "security": ADMIN,
        "responses": responses(ok, SCIM_ERROR, 401, 403, *codes, body="requestBody" in more),
        **more,
    }


def _scim_body(schema: Json) -> Json:
    return {"required": True, "content": content(schema, MEDIA_TYPE, JSON)}


WRITE_ERRORS = (400, 404, 408, 409, 412, 413)  # a PUT's or PATCH's


def _resource_paths(endpoint: str, model: str) -> Json:
    """The seven operations on one resource type (RFC 7644 §3.2 to §3.6)."""
    one = ref(model)
    listing = scim_answer(ref("ListResponse"))
    created = scim_answer(one, "created", ETag=ETAG, Location=LOCATION)
    search = _scim_body(ref("SearchRequest"))
    return {
        f"/{endpoint}": {
            "get": _scim_operation(
                f"List or filter {endpoint}", {200: listing}, 400, 413, parameters=LISTING
            ),
            "post": _scim_operation(
                f"Create a {model}",
                {201: created},
                *(400, 409, 413),
                parameters=PROJECTION,
                requestBody=_scim_body(one),
            ),
        },
        f"/{endpoint}/.search": {
            "post": _scim_operation(
                f"Search {endpoint}", {200: listing}, 400, 408, 413, requestBody=search
            ),
        },
        f"/{endpoint}/{{id}}": _item_paths(model),
    }


def _item_paths(model: str) -> Json:
    """Read, replace, modify and delete one resource, by its id."""
    one = ref(model)
    stored = scim_answer(one, "the resource", ETag=ETAG)
    unchanged = {"description": STATUS_TEXT[304], "headers": {"ETag": ETAG}}
    writes = [ID, *PROJECTION, IF_MATCH]
    return {
        "get": _scim_operation(
            f"Read a {model}",
            {200: stored, 304: unchanged},
            400,
            404,
            parameters=[ID, *PROJECTION, IF_NONE_MATCH],
        ),
        "put": _scim_operation(
            f"Replace a {model}",
            {200: stored},
            *WRITE_ERRORS,
            parameters=writes,
            requestBody=_scim_body(one),
        ),
        "patch": _scim_operation(
            f"Modify a {model}",
            {200: stored},
            *WRITE_ERRORS,
            parameters=writes,
            requestBody=_scim_body(ref("PatchOp")),
        ),
        "delete": _scim_operation(
            f"Delete a {model}",
            {204: {"description": STATUS_TEXT[204]}},
            404,
            412,
            parameters=[ID, IF_MATCH],
        ),
    }


def _discovery_paths() -> Json:
    """RFC 7644 §4: what the service supports, its resource types and their schemas."""
    discovered = scim_answer(ref("ScimDiscovery"))
    listing = scim_answer(ref("ListResponse"))
    filtered = [_parameter("filter", "query", STRING, "refused: 403, as RFC 7644 §4 says")]
    return {
        "/ServiceProviderConfig": {
            "get": _scim_operation("The service's features", {200: discovered})
        },
        "/ResourceTypes": {
            "get": _scim_operation("The resource types", {200: listing}, parameters=filtered)
        },
        "/ResourceTypes/{id}": {
            "get": _scim_operation("One resource type", {200: discovered}, 404, parameters=[ID])
        },
        "/Schemas": {"get": _scim_operation("The schemas", {200: listing}, parameters=filtered)},
        "/Schemas/{id}": {
            "get": _scim_operation(
                "One schema, by its URN", {200: discovered}, 404, parameters=[ID]
            )
        },
        "/.search": {
            "post": _scim_operation(
                "Search every resource type",
                {200: scim_answer(ref("ListResponse"))},
                400,
                413,
                requestBody=_scim_body(ref("SearchRequest")),
            )
        },
    }


MODELS = {"Agents": "Agent", "Users": "User", "Groups": "Group"}


def scim_paths() -> Json:
    """Every SCIM operation, under ``/scim/v2``."""
    found: Json = _discovery_paths()
    for endpoint in KINDS:
        found.update(_resource_paths(endpoint, MODELS[endpoint]))
    return {f"{SCIM_PATH}{path}": item for path, item in found.items()}


# ---------------------------------------------------------------- OAuth schemas

CLIENT_FIELDS = {
    "client_id": STRING,
    "client_secret": {"type": "string", "description": "client_secret_post"},
    "client_assertion_type": {"const": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"},
    "client_assertion": {"type": "string", "description": "private_key_jwt (RFC 7523)"},
}

OAUTH_SCHEMAS: Json = {
    "OAuthError": {
        "type": "object",
        "description": "RFC 6749 §5.2 (and RFC 6750 §3, RFC 7591 §3.2.2).",
        "required": ["error"],
        "properties": {"error": {"type": "string", "minLength": 1}, "error_description": STRING},
    },
    "TokenRequest": {
        "type": "object",
        "description": "RFC 6749 §4.1.3, §4.4.2, §6; RFC 8693 §2.1 (resource and audience "
        "may repeat). An API key is traded with the token exchange grant and "
        f"subject_token_type {API_KEY_TOKEN_TYPE}.",
        "required": ["grant_type"],
        "properties": {
            "grant_type": {"enum": list(GRANT_TYPES)},
            "scope": STRING,
            "resource": {"type": "string", "format": "uri"},
            "audience": STRING,
            "code": STRING,
            "code_verifier": {"type": "string", "pattern": "^[A-Za-z0-9._~-]{43,128}$"},
            "redirect_uri": STRING,
            "refresh_token": STRING,
            "subject_token": STRING,
            "subject_token_type": {"enum": [ACCESS_TOKEN_TYPE, API_KEY_TOKEN_TYPE]},
            "actor_token": STRING,
            "actor_token_type": {"const": ACCESS_TOKEN_TYPE},
            "auth_req_id": {"type": "string", "description": "OpenID CIBA §10.1"},
            **CLIENT_FIELDS,
        },
    },
    "BackchannelRequest": {
        "type": "object",
        "description": "OpenID CIBA §7.1: exactly one hint, and Tessera takes login_hint "
        "(a userName or e-mail address).",
        "required": ["login_hint"],
        "properties": {
            "login_hint": {"type": "string", "minLength": 1, "maxLength": MAX_LOGIN_HINT},
            "binding_message": {"type": "string", "maxLength": MAX_BINDING_MESSAGE},
            "authorization_details": {"type": "string", "description": "RFC 9396 JSON array"},
            "scope": STRING,
            "resource": {"type": "string", "format": "uri"},
            "requested_expiry": {"type": "integer", "minimum": 1, "maximum": MAX_EXPIRY},
            "client_notification_token": {
                "type": "string",
                "maxLength": MAX_NOTIFICATION_TOKEN,
                "description": "ping mode: the bearer token of the callback",
            },
            **CLIENT_FIELDS,
        },
    },
    "BackchannelAcknowledgement": {
        "type": "object",
        "description": "OpenID CIBA §7.3.",
        "required": ["auth_req_id", "expires_in", "interval"],
        "properties": {
            "auth_req_id": STRING,
            "expires_in": {"type": "integer"},
            "interval": {"type": "integer"},
        },
    },
    "ApprovalForm": {
        "type": "object",
        "properties": {"csrf": STRING, "decision": {"enum": ["approve", "deny"]}},
    },
    "TokenResponse": {
        "type": "object",
        "required": ["access_token", "token_type", "expires_in"],
        "properties": {
            "access_token": STRING,
            "token_type": {"const": "Bearer"},
            "expires_in": {"type": "integer"},
            "scope": STRING,
            "refresh_token": STRING,
            "issued_token_type": STRING,
        },
    },
    "TokenForm": {
        "type": "object",
        "description": "RFC 7662 §2.1 and RFC 7009 §2.1.",
        "required": ["token"],
        "properties": {
            "token": {"type": "string", "minLength": 1},
            "token_type_hint": {"enum": ["access_token", "refresh_token"]},
            **CLIENT_FIELDS,
        },
    },
    "Introspection": {
        "type": "object",
        "description": "RFC 7662 §2.2: the token's claims when active.",
        "required": ["active"],
        "properties": {"active": {"type": "boolean"}},
    },
    "ClientMetadata": {
        "type": "object",
        "description": "RFC 7591 §2. Without an admin token, only public clients "
        "(token_endpoint_auth_method none, user grants, no agent_id) register.",
        "properties": {
            "token_endpoint_auth_method": {"enum": list(AUTH_METHODS)},
            "grant_types": {"type": "array", "minItems": 1, "items": {"enum": list(GRANT_TYPES)}},
            "agent_id": {"type": "string", "minLength": 1},
            "redirect_uris": {"type": "array", "minItems": 1, "items": STRING},
            "scope": STRING,
            "jwks": {
                "type": "object",
                "required": ["keys"],
                "properties": {
                    "keys": {"type": "array", "minItems": 1, "items": {"type": "object"}}
                },
            },
            "jwks_uri": STRING,
            "tls_client_auth_subject_dn": STRING,
            "client_name": STRING,
            "backchannel_token_delivery_mode": {"enum": list(DELIVERY_MODES)},
            "backchannel_client_notification_endpoint": STRING,
        },
    },
    "ClientRegistration": {
        "type": "object",
        "description": "RFC 7591 §3.2.1; the secret is shown this once.",
        "required": ["client_id", "token_endpoint_auth_method", "grant_types"],
        "properties": {
            "client_id": STRING,
            "client_secret": STRING,
            "client_secret_expires_at": {"type": "integer"},
            "client_id_issued_at": {"type": "integer"},
            "token_endpoint_auth_method": STRING,
            "grant_types": STRINGS,
        },
    },
    "ApiKeyRequest": {
        "type": "object",
        "required": ["agent_id"],
        "properties": {
            "agent_id": {"type": "string", "minLength": 1, "description": "a low-risk agent"},
            "scope": STRING,
            "expires_in": {"type": "integer", "minimum": 1, "maximum": MAX_LIFETIME},
        },
    },
    "ApiKey": {
        "type": "object",
        "required": ["id", "prefix", "agent_id", "scope", "expires_at", "created_at"],
        "properties": {
            "id": STRING,
            "prefix": STRING,
            "agent_id": STRING,
            "scope": STRING,
            "expires_at": {"type": "integer"},
            "created_at": {"type": "integer"},
            "api_key": {"type": "string", "description": "only when created: shown once"},
        },
    },
    "Metadata": {
        "type": "object",
        "description": "RFC 8414 §2.",
        "required": ["issuer", "token_endpoint", "jwks_uri"],
        "properties": {"issuer": STRING, "token_endpoint": STRING, "jwks_uri": STRING},
    },
    "JwkSet": {
        "type": "object",
        "required": ["keys"],
        "properties": {"keys": {"type": "array", "items": {"type": "object"}}},
    },
    "LoginForm": {
        "type": "object",
        "properties": {"request": STRING, "username": STRING, "password": STRING},
    },
    "ConsentForm": {
        "type": "object",
        "properties": {
            "request": STRING,
            "csrf": STRING,
            "decision": {"enum": ["allow", "deny"]},
        },
    },
}


# ---------------------------------------------------------------- OAuth paths


def oauth_answer(schema: Json, description: str = "OK") -> Json:
    return {"description": description, "content": content(schema, JSON)}


def _oauth(summary: str, ok: dict[int, Json], *codes: int, **more: Any) -> Json:
    return {
        "tags": ["OAuth"],
        "summary": summary,
        "responses": responses(ok, OAUTH_ERROR, *codes, body="requestBody" in more),
        **more,
    }


def _form(schema: str) -> Json:
    return {"required": True, "content": content(ref(schema), FORM)}


PAGE = {"description": "a page for people", "content": content(STRING, HTML)}
REDIRECT = {"description": STATUS_TEXT[303]}
PAGE_ERROR = {"content": content(STRING, HTML)}
REQUEST_ID = _parameter("request", "query", STRING, "the pending authorization request")
AUTHORIZE = [
    {**_parameter("client_id", "query", STRING, "a registered client"), "required": True},
    _parameter("response_type", "query", {"const": "code"}, "only code"),
    _parameter("redirect_uri", "query", STRING, "one the client registered, exactly"),
    _parameter("scope", "query", STRING, "space-separated"),
    _parameter("state", "query", STRING, "returned as is"),
    _parameter("code_challenge", "query", {"pattern": "^[A-Za-z0-9_-]{43}$"}, "PKCE"),
    _parameter("code_challenge_method", "query", {"const": "S256"}, "PKCE, S256 only"),
    _parameter("resource", "query", STRING, "RFC 8707"),
    _parameter("requested_actor", "query", STRING, "the agent that will act for the user"),
]


def _html(summary: str, ok: dict[int, Json], *codes: int, **more: Any) -> Json:
    answers = responses(ok, PAGE_ERROR["content"], *codes, body="requestBody" in more)
    return {"tags": ["OAuth"], "summary": summary, "responses": answers, **more}


def _user_pages() -> Json:
    """The authorization code flow's pages (RFC 6749 §4.1), and a user's consents."""
    consents = {
        "type": "object",
        "required": ["consents"],
        "properties": {"consents": {"type": "array", "items": {"type": "object"}}},
    }
    session = "the tessera_session cookie of a signed-in user"
    return {
        PATHS.authorize: {
            "get": _html(
                "Start the authorization code flow", {303: REDIRECT}, 400, parameters=AUTHORIZE
            )
        },
        PATHS.login: {
            "get": _html("The sign-in page", {200: PAGE}, 400, parameters=[REQUEST_ID]),
            "post": _html(
                "Sign in",
                {303: REDIRECT},
                400,
                401,
                requestBody={"required": True, "content": content(ref("LoginForm"), FORM)},
            ),
        },
        PATHS.consent: {
            "get": _html(
                "The consent page", {200: PAGE, 303: REDIRECT}, 400, parameters=[REQUEST_ID]
            ),
            "post": _html(
                "Allow or deny",
                {303: REDIRECT},
                400,
                requestBody={"required": True, "content": content(ref("ConsentForm"), FORM)},
            ),
        },
        PATHS.consents: {
            "get": _oauth(
                "The signed-in user's consents",
                {200: oauth_answer(consents)},
                401,
                description=session,
            )
        },
        PATHS.consents + "/{id}": {
            "delete": _oauth(
                "Revoke one of the signed-in user's consents",
                {204: {"description": "revoked"}},
                401,
                404,
                parameters=[ID],
                description=session,
            )
        },
    }


def _admin_paths() -> Json:
    """Registration (RFC 7591) and API keys: an administrator's."""
    listing = {
        "type": "object",
        "required": ["api_keys"],
        "properties": {"api_keys": {"type": "array", "items": ref("ApiKey")}},
    }
    agent = _parameter("agent_id", "query", STRING, "only this agent's keys")
    return {
        PATHS.register: {
            "post": _oauth(
                "Register a client",
                {201: oauth_answer(ref("ClientRegistration"), "registered")},
                400,
                401,
                403,
                security=[*ADMIN, {}],
                requestBody={"required": True, "content": content(ref("ClientMetadata"), JSON)},
            )
        },
        PATHS.api_keys: {
            "get": _oauth(
                "List API keys",
                {200: oauth_answer(listing)},
                401,
                403,
                security=ADMIN,
                parameters=[agent],
            ),
            "post": _oauth(
                "Create an API key (shown once)",
                {201: oauth_answer(ref("ApiKey"), "created")},
                400,
                401,
                403,
                security=ADMIN,
                requestBody={"required": True, "content": content(ref("ApiKeyRequest"), JSON)},
            ),
        },
        PATHS.api_keys + "/{id}": {
            "delete": _oauth(
                "Revoke an API key",
                {204: {"description": "revoked"}},
                401,
                403,
                404,
                security=ADMIN,
                parameters=[ID],
            )
        },
    }


def oauth_paths() -> Json:
    """Every endpoint of the authorization server."""
    metadata = {
        "get": _oauth(
            "Authorization server metadata (RFC 8414)", {200: oauth_answer(ref("Metadata"))}
        )
    }
    return {
        METADATA_PATH: metadata,
        "/.well-known/openid-configuration": metadata,
        PATHS.jwks: {
            "get": _oauth("The signing keys (RFC 7517)", {200: oauth_answer(ref("JwkSet"))})
        },
        PATHS.token: {
            "post": _oauth(
                "Issue an access token",
                {200: oauth_answer(ref("TokenResponse"))},
                400,
                401,
                403,
                security=CLIENT,
                requestBody=_form("TokenRequest"),
            )
        },
        PATHS.introspect: {
            "post": _oauth(
                "Introspect a token (RFC 7662)",
                {200: oauth_answer(ref("Introspection"))},
                400,
                401,
                security=CLIENT,
                requestBody=_form("TokenForm"),
            )
        },
        PATHS.revoke: {
            "post": _oauth(
                "Revoke a token (RFC 7009)",
                {200: {"description": "revoked, or not a token (RFC 7009 §2.2)"}},
                400,
                401,
                security=CLIENT,
                requestBody=_form("TokenForm"),
            )
        },
        PATHS.bc_authorize: {
            "post": _oauth(
                "Ask a person's approval out of band (OpenID CIBA §7)",
                {200: oauth_answer(ref("BackchannelAcknowledgement"))},
                400,
                401,
                403,
                security=CLIENT,
                requestBody=_form("BackchannelRequest"),
            )
        },
        **_admin_paths(),
        **_user_pages(),
        **_approval_pages(),
    }


def _approval_pages() -> Json:
    """The pages where a person answers agents' backchannel requests (CIBA §8)."""
    session = "the tessera_session cookie of a signed-in user; else a redirect to sign in"
    return {
        PATHS.approvals: {
            "get": _html(
                "The signed-in person's requests awaiting approval",
                {200: PAGE, 303: REDIRECT},
                description=session,
            )
        },
        PATHS.approvals + "/{id}": {
            "get": _html(
                "One request, to approve or deny",
                {200: PAGE, 303: REDIRECT},
                403,
                404,
                409,
                410,
                parameters=[ID],
                description=session,
            ),
            "post": _html(
                "Approve or deny",
                {200: PAGE, 303: REDIRECT},
                400,
                403,
                404,
                409,
                410,
                parameters=[ID],
                description=session,
                requestBody={"required": True, "content": content(ref("ApprovalForm"), FORM)},
            ),
        },
    }


# ---------------------------------------------------------------- the resource catalog

CATALOG_ERROR = content(ref("CatalogError"), JSON)
TYPE_PATTERN = f"^{TYPE.pattern}$"

CATALOG_SCHEMAS: Json = {
    "PropertyValue": {
        "description": "A value a policy can read: anything JSON but null.",
        "anyOf": [
            {"type": "string"},
            {"type": "number"},
            {"type": "boolean"},
            {"type": "array", "items": ref("PropertyValue")},
            {"type": "object", "additionalProperties": ref("PropertyValue")},
        ],
    },
    "Properties": {
        "type": "object",
        "description": f"At most {MAX_PROPERTIES} properties (not type, id or name), each "
        f"value at most {MAX_VALUE_BYTES:,} bytes of JSON and all at most "
        f"{MAX_ENTRY_BYTES:,}; typed by the policy schema's resource TYPE {{ … }}.",
        "maxProperties": MAX_PROPERTIES,
        "additionalProperties": ref("PropertyValue"),
    },
    "CatalogEntry": {
        "type": "object",
        "required": ["type", "id"],
        "properties": {
            "type": {"type": "string", "pattern": TYPE_PATTERN, "maxLength": MAX_TYPE},
            "id": {"type": "string", "minLength": 1},
            "properties": ref("Properties"),
        },
        "additionalProperties": False,
    },
    "CatalogWrite": {
        "type": "object",
        "properties": {"properties": ref("Properties")},
        "additionalProperties": False,
    },
    "CatalogBatch": {
        "type": "object",
        "description": f"At most {MAX_BATCH:,} items in all; written in one transaction.",
        "properties": {
            "put": {"type": "array", "items": ref("CatalogEntry"), "maxItems": MAX_BATCH},
            "delete": {
                "type": "array",
                "maxItems": MAX_BATCH,
                "items": {
                    "type": "object",
                    "required": ["type", "id"],
                    "properties": {
                        "type": {"type": "string", "pattern": TYPE_PATTERN},
                        "id": {"type": "string", "minLength": 1},
                    },
                    "additionalProperties": False,
                },
            },
        },
        "additionalProperties": False,
    },
    "CatalogBatchResult": {
        "type": "object",
        "required": ["put", "deleted", "changed"],
        "properties": {
            "put": {"type": "integer"},
            "deleted": {"type": "integer"},
            "changed": {"type": "integer", "description": "entries that changed"},
        },
    },
    "CatalogPage": {
        "type": "object",
        "required": ["resources", "next"],
        "properties": {
            "resources": {"type": "array", "items": ref("CatalogEntry")},
            "next": {
                "type": ["string", "null"],
                "description": "pass it as after for the next page; null on the last",
            },
        },
    },
    "CatalogError": {
        "type": "object",
        "required": ["error", "message"],
        "properties": {"error": STRING, "message": STRING},
    },
}

TYPE_PARAMETER = {
    **_parameter("type", "path", {"type": "string", "pattern": TYPE_PATTERN}, "resource type"),
    "required": True,
}
ENTRY_KEY = [TYPE_PARAMETER, ID]
PAGING = [
    _parameter(
        "limit",
        "query",
        {"type": "integer", "minimum": 1, "maximum": CATALOG_PAGE},
        f"at most this many (default {DEFAULT_CATALOG_PAGE})",
    ),
    _parameter("after", "query", STRING, "the last id of the previous page"),
]


def _catalog(summary: str, ok: dict[int, Json], *codes: int, **more: Any) -> Json:
    return {
        "tags": ["Catalog"],
        "summary": summary,
        "security": ADMIN,
        "responses": responses(
            ok, CATALOG_ERROR, 400, 401, 403, 413, 503, *codes, body="requestBody" in more
        ),
        **more,
    }


def catalog_paths() -> Json:
    """The resource catalog's entries made over the API (issuer/catalog_api.py)."""
    entry = oauth_answer(ref("CatalogEntry"), "the entry")
    written = {"required": True, "content": content(ref("CatalogWrite"), JSON)}
    batch = {"required": True, "content": content(ref("CatalogBatch"), JSON)}
    return {
        CATALOG_PATH: {
            "post": _catalog(
                "Write and delete entries, all or none",
                {200: oauth_answer(ref("CatalogBatchResult"))},
                requestBody=batch,
            )
        },
        f"{CATALOG_PATH}/{{type}}": {
            "get": _catalog(
                "A page of a type's entries, in id order",
                {200: oauth_answer(ref("CatalogPage"))},
                parameters=[TYPE_PARAMETER, *PAGING],
            )
        },
        f"{CATALOG_PATH}/{{type}}/{{id}}": {
            "get": _catalog("Read an entry", {200: entry}, 404, parameters=ENTRY_KEY),
            "put": _catalog(
                "Write an entry", {200: entry}, parameters=ENTRY_KEY, requestBody=written
            ),
            "delete": _catalog(
                "Delete an entry",
                {204: {"description": STATUS_TEXT[204]}},
                404,
                parameters=ENTRY_KEY,
            ),
        },
    }
