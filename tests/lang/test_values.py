"""Amounts of money: one grammar, wherever an amount enters Tessera.

An amount is ASCII digits, an optional leading ``-`` and an optional ``.`` fraction, with
no more decimal places and no larger size than the limit counters keep exactly
(ten-thousandths, below 2**52 of them). Text in any other form, and JSON numbers that
are not finite or are out of range, are refused with the reason.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from pdp.counters.units import LARGEST, MAX_UNITS, SCALE
from pdp.lang.values import MAX_AMOUNT, Money, parse_amount, parse_money

LOOSE = [
    (" 100", "whitespace"),
    ("100 ", "whitespace"),
    ("1 000", "whitespace"),
    ("\u00a0100", "whitespace"),
    ("1_000", '"_"'),
    ("1E+3", "exponent"),
    ("1e3", "exponent"),
    ("١٠٠", "digits other than ASCII 0-9"),  # Arabic-Indic
    ("１００", "digits other than ASCII 0-9"),  # fullwidth
    ("+100", "ASCII digits"),
    ("1.", "ASCII digits"),
    (".5", "ASCII digits"),
    ("0x10", "ASCII digits"),
    ("NaN", "ASCII digits"),
    ("Infinity", "ASCII digits"),
    ("", "empty"),
    ("0.00001", "more than 4 decimal places"),
    ("1.00000", "more than 4 decimal places"),
    ("450359962737.0497", "the largest amount"),
    ("-450359962737.0497", "the largest amount"),
    ("1" + "0" * 400, "the largest amount"),
]


@pytest.mark.parametrize(("text", "reason"), LOOSE)
def test_text_outside_the_grammar_is_refused_with_its_reason(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match="invalid amount") as caught:
        parse_amount(text)
    assert reason in str(caught.value)
    assert len(str(caught.value)) < 200  # a long refused text is not repeated whole


@pytest.mark.parametrize(
    ("text", "amount"),
    [
        ("0", Decimal(0)),
        ("200", Decimal(200)),
        ("-3", Decimal(-3)),
        ("12.50", Decimal("12.50")),
        ("0.0001", Decimal("0.0001")),
        ("000100", Decimal(100)),
        ("450359962737.0496", MAX_AMOUNT),
        ("-450359962737.0496", -MAX_AMOUNT),
    ],
)
def test_text_in_the_grammar_is_its_exact_amount(text: str, amount: Decimal) -> None:
    assert parse_amount(text) == amount


@pytest.mark.parametrize(
    ("number", "reason"),
    [
        (float("nan"), "finite"),
        (float("inf"), "finite"),
        (float("-inf"), "finite"),
        (1e16, "the largest amount"),
        (10**400, "the largest amount"),
        (-(2**60), "the largest amount"),
        (0.1 + 0.2, "more than 4 decimal places"),
        (1e-5, "more than 4 decimal places"),
        (Decimal("NaN"), "finite"),
        (True, "text or a number"),
        (None, "text or a number"),
        ([100], "text or a number"),
    ],
)
def test_json_numbers_not_finite_or_out_of_range_are_refused(number: Any, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_amount(number)


@pytest.mark.parametrize(
    ("number", "amount"),
    [(100, Decimal(100)), (12.5, Decimal("12.5")), (-0.25, Decimal("-0.25")), (1e3, 1000)],
)
def test_json_numbers_in_range_are_their_amounts(number: Any, amount: Decimal) -> None:
    assert parse_amount(number) == amount


def test_the_largest_amount_is_the_largest_the_counters_keep() -> None:
    assert MAX_AMOUNT == LARGEST == Decimal(MAX_UNITS) / SCALE


def test_money_from_text_meets_the_grammar() -> None:
    assert Money("12.50", "EUR").amount == Decimal("12.50")
    with pytest.raises(ValueError, match='"_"'):
        Money("1_000", "USD")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("200 USD", None),
        (" 200 USD", "whitespace"),
        ("200  USD", "whitespace"),
        ("200 USD ", "write an amount and a currency"),
        ("200\tUSD", "write an amount and a currency"),
        ("200 usd", "write an amount and a currency"),
        ("200 ＵＳＤ", "write an amount and a currency"),
        ("2e2 USD", "exponent"),
    ],
)
def test_money_text_is_an_amount_one_space_and_a_currency(text: str, reason: str | None) -> None:
    if reason is None:
        assert parse_money(text) == Money(Decimal(200), "USD")
        return
    with pytest.raises(ValueError, match=reason):
        parse_money(text)


def test_money_never_prints_in_exponent_form() -> None:
    money = Money(Decimal("1E+3"), "USD")  # made in code: taken as it is
    assert str(money) == "1000 USD"
    assert parse_money(str(money)) == money
