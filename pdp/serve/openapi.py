"""The OpenAPI 3.1 document of ``tessera serve``'s HTTP API, served at ``GET /openapi.json``.

One document for the HTTP port: health, this document, AuthZEN (the decision plane's
door) and the issuer's SCIM and OAuth endpoints (:mod:`issuer.openapi`), plus the
Prometheus metrics of the separate metrics port. It is built from Python rather than
kept as a file so that every enum and bound in it is the code's own constant (AuthZEN's
page and batch bounds, its evaluation semantics, the issuer's grant types…), and built
once: its ``servers`` entry is relative (``/``), so the same bytes describe the API
however the port is reached. ``tests/serve/test_openapi.py`` holds the document's
operations and the application's routes to each other, both ways.
"""

from __future__ import annotations

import json
from functools import cache

from starlette.requests import Request
from starlette.responses import Response

from issuer import openapi as issuer
from issuer.openapi import JSON, STRING, Json, content, ref, responses
from pdp.doors.authzen import (
    AUTHZEN_PATH,
    EXPLAIN,
    ID_FORM,
    MAX_DEPTH,
    MAX_EVALUATIONS,
    MAX_PAGE,
    SEMANTICS,
    WELL_KNOWN,
)
from pdp.subjects import AGENT_SUBJECT, DEFAULT_ID_FORM, ID_FORMS, PERSONS

OPENAPI_PATH = "/openapi.json"
HEALTH_PATH = "/healthz"
METRICS_PATH = "/metrics"
TEXT = "text/plain"

# ---------------------------------------------------------------- AuthZEN

PROPERTIES = {
    "type": "object",
    "description": f"Attribute values, typed by the policy schema; no null, at most "
    f"{MAX_DEPTH} levels of nesting.",
    "additionalProperties": ref("AttributeValue"),
}

AUTHZEN_SCHEMAS: Json = {
    "AttributeValue": {
        "description": "A value a policy can read: anything JSON but null.",
        "anyOf": [
            {"type": "string"},
            {"type": "number"},
            {"type": "boolean"},
            {"type": "array", "items": ref("AttributeValue")},
            {"type": "object", "additionalProperties": ref("AttributeValue")},
        ],
    },
    "Subject": {
        "type": "object",
        "required": ["type", "id"],
        "properties": {
            "type": {
                "type": "string",
                "minLength": 1,
                "description": f"{', '.join(PERSONS)} (a person), {AGENT_SUBJECT}, or a type "
                "the policy schema declares (subject TYPE { … })",
            },
            "id": {
                "type": "string",
                "minLength": 1,
                "description": "an agent's id; a person's SCIM id, userName, externalId or "
                "e-mail address, looked up in that order",
            },
            "properties": {
                "type": "object",
                "description": "an agent's user and delegation; a person's or a declared "
                "type's attributes, typed by the policy schema",
                "properties": {
                    "user": {"type": "string", "minLength": 1},
                    "delegation": {"type": "array", "items": {"type": "string", "minLength": 1}},
                },
                "additionalProperties": ref("AttributeValue"),
            },
        },
    },
    "Action": {
        "type": "object",
        "required": ["name"],
        "properties": {"name": {"type": "string", "minLength": 1}},
    },
    "Resource": {
        "type": "object",
        "required": ["type", "id"],
        "properties": {
            "type": {"type": "string", "minLength": 1},
            "id": {"type": "string", "minLength": 1},
            "properties": PROPERTIES,
        },
    },
    "Context": PROPERTIES,
    "Options": {
        "type": "object",
        "properties": {
            EXPLAIN: {"type": "boolean", "description": "the decision's reasons in context"},
            "evaluations_semantic": {"enum": list(SEMANTICS)},
        },
    },
    "Evaluation": {
        "type": "object",
        "description": "AuthZEN 1.0 §6.1.",
        "required": ["subject", "action", "resource"],
        "properties": {
            "subject": ref("Subject"),
            "action": ref("Action"),
            "resource": ref("Resource"),
            "context": ref("Context"),
            "options": ref("Options"),
        },
    },
    "Evaluations": {
        "type": "object",
        "description": "AuthZEN 1.0 §7.1: each item's missing parts come from the top level.",
        "properties": {
            "subject": ref("Subject"),
            "action": ref("Action"),
            "resource": ref("Resource"),
            "context": ref("Context"),
            "options": ref("Options"),
            "evaluations": {
                "type": "array",
                "maxItems": MAX_EVALUATIONS,
                "items": {
                    "type": "object",
                    "properties": {
                        "subject": ref("Subject"),
                        "action": ref("Action"),
                        "resource": ref("Resource"),
                        "context": ref("Context"),
                    },
                },
            },
        },
    },
    "Decision": {
        "type": "object",
        "required": ["decision"],
        "properties": {"decision": {"type": "boolean"}, "context": {"type": "object"}},
    },
    "Decisions": {
        "type": "object",
        "required": ["evaluations"],
        "properties": {"evaluations": {"type": "array", "items": ref("Decision")}},
    },
    "Page": {
        "type": "object",
        "properties": {
            "token": STRING,
            "limit": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE},
        },
    },
    "SearchResults": {
        "type": "object",
        "required": ["page", "results"],
        "properties": {
            "page": {
                "type": "object",
                "properties": {
                    "next_token": STRING,
                    "count": {"type": "integer"},
                    "total": {"type": "integer"},
                },
            },
            "results": {"type": "array", "items": {"type": "object"}},
        },
    },
    "AuthZenMetadata": {
        "type": "object",
        "required": ["policy_decision_point", "access_evaluation_endpoint"],
        "properties": {"policy_decision_point": STRING, "access_evaluation_endpoint": STRING},
    },
}


def _search(*required: str, subject: Json | None = None, resource: Json | None = None) -> Json:
    """A search request (§8): ``required`` parts, with the subject's or resource's id
    optional where the search lists them."""
    return {
        "type": "object",
        "required": list(required),
        "properties": {
            "subject": subject or ref("Subject"),
            "action": ref("Action"),
            "resource": resource or ref("Resource"),
            "context": ref("Context"),
            "page": ref("Page"),
        },
    }


ANY_SUBJECT = {
    "type": "object",
    "required": ["type"],
    "properties": {
        "type": AUTHZEN_SCHEMAS["Subject"]["properties"]["type"],
        "properties": {
            **AUTHZEN_SCHEMAS["Subject"]["properties"]["properties"],
            "properties": {
                **AUTHZEN_SCHEMAS["Subject"]["properties"]["properties"]["properties"],
                ID_FORM: {
                    "enum": list(ID_FORMS),
                    "description": f"how persons are named in the results ({DEFAULT_ID_FORM} "
                    "by default; the SCIM id for a user without one)",
                },
            },
        },
    },
}
ANY_RESOURCE = {
    "type": "object",
    "required": ["type"],
    "properties": {"type": {"type": "string", "minLength": 1}, "properties": PROPERTIES},
}

AUTHZEN_ERROR = content({"type": "string", "minLength": 1}, TEXT)
REQUEST_ID = {
    "name": "X-Request-ID",
    "in": "header",
    "schema": STRING,
    "description": "echoed in the answer (§10.1.3)",
}
DECIDE = [{"bearer": ["tessera:decide"]}, {"bearer": ["tessera:admin"]}]


def _authzen(summary: str, body: Json, answer: str) -> Json:
    return {
        "post": {
            "tags": ["AuthZEN"],
            "summary": summary,
            "security": DECIDE,
            "parameters": [REQUEST_ID],
            "requestBody": {"required": True, "content": content(body, JSON)},
            "responses": responses(
                {200: {"description": "the answer", "content": content(ref(answer), JSON)}},
                AUTHZEN_ERROR,
                400,
                401,
                403,
                body=True,
            ),
        }
    }


def authzen_paths() -> Json:
    """AuthZEN 1.0's endpoints (§10.1) and its metadata (§9)."""
    api = AUTHZEN_PATH
    return {
        WELL_KNOWN: {
            "get": {
                "tags": ["AuthZEN"],
                "summary": "The PDP metadata (AuthZEN 1.0 §9)",
                "responses": {"200": _json_answer(ref("AuthZenMetadata"))},
            }
        },
        f"{api}/evaluation": _authzen("One decision", ref("Evaluation"), "Decision"),
        f"{api}/evaluations": _authzen("Many decisions", ref("Evaluations"), "Decisions"),
        f"{api}/search/subject": _authzen(
            "The subjects allowed",
            _search("subject", "action", "resource", subject=ANY_SUBJECT),
            "SearchResults",
        ),
        f"{api}/search/resource": _authzen(
            "The resources allowed",
            _search("subject", "action", "resource", resource=ANY_RESOURCE),
            "SearchResults",
        ),
        f"{api}/search/action": _authzen(
            "The actions allowed", _search("subject", "resource"), "SearchResults"
        ),
    }


# ---------------------------------------------------------------- operations


def _json_answer(schema: Json, description: str = "OK") -> Json:
    return {"description": description, "content": content(schema, JSON)}


def _operations_paths() -> Json:
    """Health, this document, and the metrics (on the metrics port)."""
    health = {
        "type": "object",
        "required": ["status", "bundle_version", "pid"],
        "properties": {
            "status": {"const": "SERVING"},
            "bundle_version": STRING,
            "pid": {"type": "integer"},
        },
    }
    metrics_port = {
        "url": "http://{host}:{port}",
        "description": "the metrics port (--metrics-port), not the HTTP port",
        "variables": {"host": {"default": "127.0.0.1"}, "port": {"default": "9464"}},
    }
    return {
        HEALTH_PATH: {
            "get": {
                "tags": ["Operations"],
                "summary": "This process serves, and its bundle",
                "responses": {"200": _json_answer(health)},
            }
        },
        OPENAPI_PATH: {
            "get": {
                "tags": ["Operations"],
                "summary": "This document",
                "responses": {
                    "200": {
                        "description": "OpenAPI 3.1",
                        "content": content({"type": "object"}, JSON),
                    }
                },
            }
        },
        METRICS_PATH: {
            "get": {
                "tags": ["Operations"],
                "summary": "Prometheus metrics",
                "servers": [metrics_port],
                "responses": {
                    "200": {
                        "description": "the text exposition format",
                        "content": content(STRING, TEXT),
                    }
                },
            }
        },
    }


COMPONENTS: Json = {
    "securitySchemes": {
        "bearer": {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": "An access token of this issuer (RFC 9068) with the scope the "
            "operation names, or the bootstrap admin token (tessera:admin).",
        },
        "clientSecretBasic": {
            "type": "http",
            "scheme": "basic",
            "description": "client_secret_basic (RFC 6749 §2.3.1); client_secret_post, "
            "private_key_jwt and public clients send their credentials in the form.",
        },
        "mutualTLS": {
            "type": "mutualTLS",
            "description": "tls_client_auth and self_signed_tls_client_auth (RFC 8705).",
        },
    },
}


@cache
def document() -> Json:
    """The whole OpenAPI 3.1 document (made once; callers must not change it)."""
    schemas = {
        **issuer.SCIM_SCHEMAS,
        **issuer.OAUTH_SCHEMAS,
        **issuer.CATALOG_SCHEMAS,
        **AUTHZEN_SCHEMAS,
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Tessera",
            "version": "1",
            "description": "Identity and authorization for AI agents: the HTTP port of "
            "`tessera serve` (SCIM 2.0, OAuth 2, AuthZEN 1.0, the resource catalog, "
            "health). Errors come in each protocol's own shape: SCIM's error document, "
            "OAuth's and the catalog's JSON error, AuthZEN's plain text.",
        },
        "servers": [{"url": "/"}],
        "tags": [{"name": name} for name in ("SCIM", "OAuth", "AuthZEN", "Catalog", "Operations")],
        "paths": {
            **_operations_paths(),
            **authzen_paths(),
            **issuer.oauth_paths(),
            **issuer.scim_paths(),
            **issuer.catalog_paths(),
        },
        "components": {"schemas": schemas, **COMPONENTS},
    }


@cache
def _encoded() -> bytes:
    return json.dumps(document(), separators=(",", ":")).encode()


async def serve_document(_: Request) -> Response:
    """``GET /openapi.json``: the document, which any client may read."""
    return Response(_encoded(), media_type=JSON, headers={"Cache-Control": "max-age=300"})
