"""Schemathesis against a live ``tessera serve``, from the OpenAPI document it serves.

Every operation of ``GET /openapi.json`` (the metrics port's aside) gets requests the
document calls valid and requests it calls invalid, from the caller the operation needs;
each answer must not be a server error, and its status code and content type must be
ones the document gives the operation. Reproducible: deterministic generation, no
example database.
"""

from __future__ import annotations

from typing import Any

import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    status_code_conformance,
)

from pdp.serve.openapi import METRICS_PATH, document
from tests.fuzz.live import TIMEOUT, Live
from tests.fuzz.operations import OPERATIONS, best_caller, credentials

CONFIG = schemathesis.Config.from_dict(
    {
        "generation": {
            "max-examples": 8,
            "deterministic": True,
            "database": "none",
            "no-shrink": True,
        },
        "phases": {"coverage": {"enabled": False}, "stateful": {"enabled": False}},
    }
)
SCHEMA = schemathesis.openapi.from_dict(document(), config=CONFIG).exclude(path=METRICS_PATH)
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance]
CALLERS = {(operation.method, operation.path): best_caller(operation) for operation in OPERATIONS}


@SCHEMA.parametrize()
def test_every_operation_answers_as_its_document_says(case: Any, live: Live) -> None:
    caller = CALLERS[(case.operation.method.upper(), case.operation.path)]
    case.call_and_validate(
        base_url=live.base,
        headers=credentials(live, caller),
        checks=CHECKS,
        timeout=TIMEOUT,
    )
