"""Generated requests at every operation of a live ``tessera serve``'s HTTP port.

Each door (SCIM, OAuth's JSON endpoints, the sign-in pages, AuthZEN, the resource catalog)
gets bodies of any shape, valid bodies with one part made wrong, bytes that are not JSON,
huge strings within its limits, documents nested past the bound and text with lone
surrogates, from every kind of caller and under wrong content types. Whatever comes, the
answer is one the OpenAPI document gives the operation (never a 5xx), an error is in its
protocol's shape and names no Python exception, it comes within the client's timeout, and
a refused request leaves every row of the store as it was.

Reproducible: Hypothesis derandomized, without its example database.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.fuzz import strategies as gen
from tests.fuzz.live import TIMEOUT, Live, difference
from tests.fuzz.operations import (
    CALLERS,
    DOORS,
    OPERATIONS,
    PYTHON,
    Operation,
    best_caller,
    check_answer,
    credentials,
    examples,
    of_door,
)

# No shrinking: a failure is reported as found, so a failing run stays as short as a
# passing one (each example is a round trip to the server and a read of the store).
FUZZ = settings(
    phases=(Phase.explicit, Phase.reuse, Phase.generate),
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
JSON_LIMIT = (1 << 20) - 4_096  # bytes: within SCIM's, AuthZEN's and the catalog's 1 MiB
CATALOG_TYPE = "table"  # the resource type a catalog path names (the shipped schema's)
FORM_LIMIT = 60_000  # bytes: within the OAuth endpoints' 64 KiB (forms and JSON)


class Fuzzer:
    """Sends one request and holds the answer to the document and the store to its rows."""

    def __init__(self, live: Live) -> None:
        self.live = live
        self.client = httpx.Client(base_url=live.base, timeout=TIMEOUT)
        self.rows = live.settled()

    def send(
        self,
        operation: Operation,
        body: bytes | None,
        content_type: str | None = None,
        caller: str = "none",
        target: str | None = None,
        query: dict[str, str] | None = None,
    ) -> httpx.Response:
        """Send, check the answer; a refusal must have changed nothing in the store."""
        headers = credentials(self.live, caller)
        if content_type is not None:
            headers["Content-Type"] = content_type
        # Dots percent-encoded: httpx would resolve an id of ".." as a dot segment (RFC
        # 3986 §5.2.4) and ask another path than the operation's.
        ident = quote(target or self.live.seeds.user, safe="").replace(".", "%2E")
        path = operation.path.replace("{id}", ident).replace("{type}", CATALOG_TYPE)
        try:
            response = self.client.request(
                operation.method, path, content=body, headers=headers, params=query
            )
        except httpx.TimeoutException:
            pytest.fail(f"{operation} gave no answer within {TIMEOUT} s")
        if response.status_code >= 500:
            pytest.fail(f"{operation} answered {response.status_code}:\n{self.live.last_said()}")
        check_answer(operation, response)
        if response.status_code >= 400:
            changed = difference(self.rows, self.live.snapshot())
            assert not changed, f"{operation} refused, yet changed the store: {changed}"
        elif operation.method != "GET":  # GET changes nothing, and is not waited for
            self.rows = self.live.settled()
        return response

    def valid(self, operation: Operation) -> Any:
        return examples(self.live.seeds)[str(operation)]

    def encode(self, operation: Operation, body: Any) -> bytes:
        """A body as the operation's documented media type carries it."""
        if operation.body == "application/x-www-form-urlencoded" and isinstance(body, dict):
            return urlencode(
                {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in body.items()}
            ).encode()
        return json.dumps(body).encode()


@pytest.fixture(scope="module")
def fuzzer(live: Live) -> Iterator[Fuzzer]:
    running = Fuzzer(live)
    yield running
    running.client.close()


def with_bodies(door: str) -> list[Operation]:
    return [operation for operation in of_door(door) if operation.body is not None]


def targets(live: Live) -> st.SearchStrategy[str]:
    """What a path's {id} is: a seed's id, or anything."""
    seeds = live.seeds
    known = [seeds.agent, seeds.user, seeds.group, seeds.api_key_id, "urn:nothing"]
    return st.sampled_from(known) | gen.IDS


# ---------------------------------------------------------------- the fuzzers


@pytest.mark.parametrize("door", (*DOORS, "open"))
@FUZZ
@given(data=st.data())
def test_a_body_of_any_shape_is_answered_as_documented(
    fuzzer: Fuzzer, door: str, data: st.DataObject
) -> None:
    operation = data.draw(st.sampled_from(of_door(door)), "operation")
    body = data.draw(gen.json_values(), "body")
    fuzzer.send(
        operation,
        json.dumps(body).encode(),
        data.draw(gen.CONTENT_TYPES, "content type"),
        data.draw(st.sampled_from(CALLERS), "caller"),
        data.draw(targets(fuzzer.live), "id"),
        data.draw(gen.QUERY, "query"),
    )


@pytest.mark.parametrize("door", DOORS)
@FUZZ
@given(data=st.data())
def test_a_valid_body_with_one_part_wrong_is_answered_as_documented(
    fuzzer: Fuzzer, door: str, data: st.DataObject
) -> None:
    operation = data.draw(st.sampled_from(with_bodies(door)), "operation")
    body = data.draw(gen.mutated(fuzzer.valid(operation), gen.json_values(10)), "body")
    fuzzer.send(operation, fuzzer.encode(operation, body), operation.body, best_caller(operation))


NOT_JSON = (
    st.binary(max_size=300)
    | st.sampled_from([b"NaN", b'{"a": Infinity}', b"[1,]", b'{"a":1}x', b"\xef\xbb\xbf{}", b""])
    | st.text(max_size=50).map(lambda t: t.encode("utf-16"))
)


@pytest.mark.parametrize("door", DOORS)
@FUZZ
@given(data=st.data())
def test_bytes_that_are_not_json_are_refused_as_documented(
    fuzzer: Fuzzer, door: str, data: st.DataObject
) -> None:
    operation = data.draw(st.sampled_from(with_bodies(door)), "operation")
    valid = fuzzer.encode(operation, fuzzer.valid(operation))
    cut = data.draw(st.integers(0, len(valid) - 1), "cut")
    body = data.draw(NOT_JSON | st.just(valid[:cut]), "body")
    fuzzer.send(operation, body, operation.body, best_caller(operation))


@pytest.mark.parametrize("door", DOORS)
@FUZZ
@given(data=st.data())
def test_huge_strings_within_the_limits_are_answered_as_documented(
    fuzzer: Fuzzer, door: str, data: st.DataObject
) -> None:
    operation = data.draw(st.sampled_from(with_bodies(door)), "operation")
    limit = FORM_LIMIT if operation.door in ("oauth", "page") else JSON_LIMIT
    huge = data.draw(gen.huge_strings(limit // 2), "string")
    body = fuzzer.encode(operation, data.draw(gen.mutated(fuzzer.valid(operation), st.just(huge))))
    if len(body) > limit:  # escapes made it longer: cut the string to fit
        huge = huge[: max(len(huge) * limit // len(body) - 64, 0)]
        body = fuzzer.encode(
            operation, data.draw(gen.mutated(fuzzer.valid(operation), st.just(huge)))
        )
    fuzzer.send(operation, body[:limit], operation.body, best_caller(operation))


JSON_DOORS = ("scim", "oauth", "authzen", "catalog")


def with_json_bodies(door: str) -> list[Operation]:
    return [operation for operation in with_bodies(door) if "json" in str(operation.body)]


@pytest.mark.parametrize("door", JSON_DOORS)
@settings(FUZZ, max_examples=15)
@given(data=st.data())
def test_json_nested_past_the_bound_is_refused_as_documented(
    fuzzer: Fuzzer, door: str, data: st.DataObject
) -> None:
    operation = data.draw(st.sampled_from(with_json_bodies(door)), "operation")
    body = data.draw(gen.nested(), "body")
    fuzzer.send(operation, body, operation.body, best_caller(operation))


@pytest.mark.parametrize("door", JSON_DOORS)
@settings(FUZZ, max_examples=25)
@given(data=st.data())
def test_text_with_a_lone_surrogate_is_refused_as_documented(
    fuzzer: Fuzzer, door: str, data: st.DataObject
) -> None:
    operation = data.draw(st.sampled_from(with_json_bodies(door)), "operation")
    body = data.draw(gen.with_surrogates(fuzzer.valid(operation)), "body")
    response = fuzzer.send(operation, body, operation.body, best_caller(operation))
    assert response.status_code >= 400, f"{operation} took a lone surrogate"


@FUZZ
@given(data=st.data())
def test_scim_filters_of_any_form_are_answered_as_documented(
    fuzzer: Fuzzer, data: st.DataObject
) -> None:
    listing = [
        o
        for o in OPERATIONS
        if o.door == "scim"
        and o.method == "GET"
        and o.path.endswith(("/Users", "/Agents", "/Groups"))
    ]
    operation = data.draw(st.sampled_from(listing), "operation")
    query = {"filter": data.draw(gen.FILTERS, "filter")}
    query.update(data.draw(gen.QUERY, "more"))
    fuzzer.send(operation, None, None, "admin", query=query)


METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


@pytest.mark.parametrize("door", ("oauth", "page", "authzen", "catalog"))
def test_a_method_a_path_does_not_take_is_405_naming_those_it_takes(
    fuzzer: Fuzzer, door: str
) -> None:
    paths = {operation.path for operation in of_door(door)}
    for path in sorted(paths):
        taken = {o.method for o in OPERATIONS if o.path == path}
        url = path.replace("{id}", "fuzz").replace("{type}", CATALOG_TYPE)
        for method in sorted(set(METHODS) - taken):
            response = fuzzer.client.request(method, url, headers=credentials(fuzzer.live, "admin"))
            assert response.status_code == 405, f"{method} {path}: {response.status_code}"
            allowed = {m.strip() for m in response.headers.get("allow", "").split(",")}
            assert taken <= allowed, f"{method} {path}: Allow {allowed}"
            assert not PYTHON.search(response.text)
            if door != "authzen":
                assert response.json()["error"] == "invalid_request", response.text


def test_a_method_a_scim_path_does_not_take_is_refused_in_scims_error_shape(fuzzer: Fuzzer) -> None:
    seeds = fuzzer.live.seeds
    for operation in of_door("scim"):
        taken = {o.method for o in OPERATIONS if o.path == operation.path}
        url = operation.path.replace("{id}", seeds.user)
        for method in sorted(set(METHODS) - taken):
            response = fuzzer.client.request(method, url, headers=credentials(fuzzer.live, "admin"))
            # a template may take it (PUT /Users/.search is a PUT of the user ".search")
            assert 400 <= response.status_code < 500, f"{method} {url}: {response.status_code}"
            assert response.headers["content-type"] == "application/scim+json", url
