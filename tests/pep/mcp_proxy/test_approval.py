"""What a person approved, as the proxy puts it in a decision's context: only from a
token a human approval gave (``amr`` has ``human``), the first ``payment_initiation`` of
its ``authorization_details`` as money and a creditor, and the approval's age."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from pdp.lang.values import Duration, Money
from pep.mcp_proxy.decisions import approval

PAYMENT = {
    "type": "payment_initiation",
    "instructedAmount": {"currency": "USD", "amount": "4200.50"},
    "creditorName": "ACME",
}
NOW = 1_800_000_000


def approved(**claims: Any) -> dict[str, Any]:
    base = {
        "amr": ["human", "mtls", "pkjwt"],
        "auth_time": NOW - 42,
        "authorization_details": [{"type": "account_information"}, PAYMENT],
    }
    return approval({**base, **claims}, NOW)


def test_a_human_approval_gives_the_payment_and_its_age() -> None:
    assert approved() == {
        "approved_amount": Money(Decimal("4200.50"), "USD"),
        "approved_creditor": "ACME",
        "approval_age": Duration(42),
    }


@pytest.mark.parametrize("amr", [["mtls", "pkjwt"], "human", None])
def test_a_token_no_person_approved_gives_nothing(amr: Any) -> None:
    """Client credentials copy any authorization_details the client asks for."""
    assert approved(amr=amr) == {}


@pytest.mark.parametrize(
    "instructed",
    [
        {"currency": "usd", "amount": "4200"},
        {"currency": "USD", "amount": "1E+3"},
        {"currency": "USD", "amount": None},
        {"currency": "USD"},
        "4200 USD",
    ],
)
def test_an_amount_that_cannot_be_read_is_left_out(instructed: Any) -> None:
    details = [{**PAYMENT, "instructedAmount": instructed}]
    assert "approved_amount" not in approved(authorization_details=details)
    assert approved(authorization_details=details)["approved_creditor"] == "ACME"


@pytest.mark.parametrize("details", [None, [], "payment", [{"type": "account_information"}]])
def test_without_a_payment_only_the_age_is_given(details: Any) -> None:
    assert approved(authorization_details=details) == {"approval_age": Duration(42)}


def test_an_approval_stamped_ahead_of_the_clock_is_of_age_zero() -> None:
    assert approved(auth_time=NOW + 3, authorization_details=None)["approval_age"] == Duration(0)
    assert "approval_age" not in approved(auth_time="recently")
