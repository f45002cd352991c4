"""How large a decision request may be: each value, each map, the whole request.

A value's size is the UTF-8 bytes of its strings (map keys included) and one byte per
scalar, the same at every door; over a bound is a :class:`RequestTooLarge` naming the
field and the bound's setting.
"""

from __future__ import annotations

from typing import Any

import pytest

from pdp.bounds import DEFAULT_BOUNDS, Bounds, RequestTooLarge, size_of
from pdp.model import RequestError
from pdp.request import request_from_json, typed_request
from tests.conftest import bundle_of

SCHEMA = bundle_of(
    "", schema="schema { context { note: string, tags: set<string> } resource tool { x: string } }"
).schema


@pytest.mark.parametrize(
    ("value", "size"),
    [
        ("abc", 3),
        ("héllo", 6),  # é is two bytes of UTF-8
        ("😀", 4),
        (42, 1),
        (True, 1),
        (["ab", 1, False], 4),
        ({"key": ["ab", {"k": "v"}]}, 3 + 2 + 1 + 1),
        ([], 0),
    ],
)
def test_a_value_is_the_bytes_of_its_strings_and_a_byte_per_scalar(value: Any, size: int) -> None:
    assert size_of(value) == size


def test_any_nesting_is_measured_without_exhausting_the_stack() -> None:
    deep: Any = "x"
    for _ in range(100_000):
        deep = [deep]
    assert size_of(deep) == 1


def ask(context: dict[str, Any], bounds: Bounds = DEFAULT_BOUNDS, **request: Any) -> Any:
    data = {"agent": {"id": "a"}, "tool": "t", "context": context, **request}
    return request_from_json(data, SCHEMA, bounds)


@pytest.mark.parametrize(
    ("context", "message"),
    [
        (
            {f"a{n}": 1 for n in range(65)},
            "context: 65 attributes, over the 64 one map may have (max_attributes)",
        ),
        (
            {"note": "x" * (16 * 1024 + 1)},
            "context.note: 16,385 bytes, over the 16,384 an attribute's value may have "
            "(max_value_bytes)",
        ),
        (
            {"tags": ["x" * 1_000] * 17},
            "context.tags: 17,000 bytes, over the 16,384",
        ),
        (
            {"other": "é" * 513},
            "context.other: 1,026 bytes, over the 1,024 the value of an attribute the schema "
            "does not declare may have (max_undeclared_bytes)",
        ),
        (
            {"other": {"nested": ["x"] * 1_100}},
            "context.other: 1,106 bytes, over the 1,024",
        ),
        (
            {"note": "x" * 16_000, **{f"n{n}": "y" * 1_000 for n in range(50)}},
            "the request is over the 65,536 bytes a decision request may have (max_request_bytes)",
        ),
    ],
)
def test_request_json_over_a_bound_is_refused_naming_it(
    context: dict[str, Any], message: str
) -> None:
    with pytest.raises(RequestTooLarge) as caught:
        ask(context)
    assert str(caught.value).startswith(message)
    assert isinstance(caught.value, RequestError)  # every door already answers those


def test_ids_and_resource_attributes_count_towards_the_whole_request() -> None:
    bounds = Bounds(request_bytes=2_000, value_bytes=1_500)
    with pytest.raises(RequestTooLarge, match="max_request_bytes"):
        ask({}, bounds, agent={"id": "a" * 1_000}, tool="t" * 1_001)
    with pytest.raises(RequestTooLarge, match=r"resource\.x: 1,501 bytes"):
        typed_request(
            SCHEMA,
            agent={"id": "a"},
            action="tool.call",
            resource_type="tool",
            resource_id="t",
            resource={"x": "y" * 1_501},
            bounds=bounds,
        )


def test_a_request_within_every_bound_is_typed_and_knows_its_size() -> None:
    context = {"note": "x" * 16_384, **{f"n{n}": "y" * 1_000 for n in range(45)}}
    request = ask(context)
    assert request.context["note"] == "x" * 16_384
    assert 16_384 + 45_000 < request.size <= 65_536


@pytest.mark.parametrize(
    ("bounds", "problem"),
    [
        (Bounds(), None),
        (Bounds(attributes=0), "max_attributes: a positive number"),
        (Bounds(undeclared_bytes=32_000), "max_undeclared_bytes <= max_value_bytes"),
        (Bounds(request_bytes=2 << 20), "max_request_bytes: at most max_message_bytes"),
    ],
)
def test_bounds_that_contradict_one_another_say_so(bounds: Bounds, problem: str | None) -> None:
    found = bounds.problem()
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found
