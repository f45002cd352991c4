"""Rich authorization requests (RFC 9396): what an agent asks to do, exactly.

``authorization_details`` is a JSON array of objects, each with a ``type`` (§2) naming
the kind of action; the rest of the object says which one (an amount, a creditor…). It
comes with a token request for an agent (client credentials, token exchange, an API
key's exchange: §6.1), and the token carries it as its ``authorization_details`` claim
(§9.1) with the token response repeating it (§7); or with a backchannel authentication
request (CIBA), where a person approves it on the approval page first.

One reading serves both: the server refuses what it cannot show a person faithfully —
an array that is too long, too large or too deep, an entry without a type, a
``payment_initiation`` whose amount is not a decimal in a three-letter currency or that
names no creditor, a string with control or bidirectional formatting characters
(:mod:`issuer.oauth.plain_text`). The JSON is read within :mod:`issuer.wire`'s bounds. The error is
``invalid_authorization_details`` (§5), as it is for an entry whose type is not one the
server accepts (:func:`check_types`: the ``authorization_details_types`` setting, by
default ``payment_initiation`` alone, which the metadata advertises). Tessera does not
interpret other accepted types: the policies and resource servers that read the claim do.

:func:`describe` puts an entry in plain words for the approval page: "Pay 4200 USD to
ACME" for a payment, else the type and each field, flattened.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Mapping
from typing import Any

from issuer.oauth.errors import OAuthError
from issuer.oauth.plain_text import REFUSED, is_plain
from issuer.wire import WireError, read_json

MAX_DETAILS = 10  # entries in one request
MAX_DETAILS_BYTES = 4_096  # of the parameter's JSON text
MAX_DEPTH = 4  # objects and arrays nested inside an entry
MAX_TYPE = 64  # characters of a type
PAYMENT = "payment_initiation"
_TYPE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/-]*$")
_CURRENCY = re.compile(r"^[A-Z]{3}$")  # ISO 4217
_AMOUNT = re.compile(r"^(0|[1-9][0-9]{0,14})(\.[0-9]{1,5})?$")


def _bad(description: str) -> OAuthError:
    return OAuthError("invalid_authorization_details", description)


def authorization_details(form: Mapping[str, str]) -> dict[str, Any]:
    """The ``authorization_details`` claim a token request asks for, checked; none when
    the request has no such parameter."""
    details = parse(form.get("authorization_details"))
    return {"authorization_details": details} if details else {}


def parse(text: str | None) -> list[dict[str, Any]]:
    """The checked entries of an ``authorization_details`` parameter (none when absent)."""
    if text is None:
        return []
    if len(text.encode("utf-8", "surrogatepass")) > MAX_DETAILS_BYTES:
        raise _bad(f"authorization_details is longer than {MAX_DETAILS_BYTES:,} bytes")
    try:  # the array and each entry's own levels
        details = read_json(text, MAX_DEPTH + 1)
    except WireError as exc:
        raise _bad(f"authorization_details: {exc}; a JSON array of objects") from None
    if not isinstance(details, list) or not details:
        raise _bad("authorization_details is a non-empty JSON array of objects (RFC 9396 §2)")
    if len(details) > MAX_DETAILS:
        raise _bad(f"authorization_details has more than {MAX_DETAILS} entries")
    for index, detail in enumerate(details):
        _check_text(detail, f"authorization_details[{index}]")
        _check(detail, f"authorization_details[{index}]")
    return details


def check_types(form: Mapping[str, str], accepted: Collection[str]) -> None:
    """Refuse an ``authorization_details`` whose entries are not all of a type the
    server accepts (the ``authorization_details_types`` setting, which its metadata
    advertises): ``invalid_authorization_details`` (RFC 9396 §5)."""
    for index, detail in enumerate(parse(form.get("authorization_details"))):
        if detail["type"] not in accepted:
            kinds = " ".join(sorted(accepted)) or "none"
            raise _bad(
                f"authorization_details[{index}].type {detail['type']!r} is not accepted "
                f"here; the accepted types are: {kinds}"
            )


def _check_text(value: Any, where: str) -> None:
    """Every string, names included, is plain text: a person may read it on the approval
    page (:mod:`issuer.oauth.plain_text`)."""
    if isinstance(value, str) and not is_plain(value):
        raise _bad(f"{where} has {REFUSED}: plain text only")
    if isinstance(value, list):
        for index, item in enumerate(value):
            _check_text(item, f"{where}[{index}]")
    if isinstance(value, dict):
        for name, item in value.items():
            _check_text(name, f"{where} (a member's name)")
            _check_text(item, f"{where}.{name}")


def _check(detail: Any, where: str) -> None:
    if not isinstance(detail, dict):
        raise _bad(f"{where} is not a JSON object")
    kind = detail.get("type")
    if not isinstance(kind, str) or not _TYPE.match(kind) or len(kind) > MAX_TYPE:
        raise _bad(f"{where}.type is required (RFC 9396 §2): a name such as {PAYMENT!r}")
    if kind == PAYMENT:
        _check_payment(detail, where)


def _check_payment(detail: dict[str, Any], where: str) -> None:
    """A payment must say how much, in what, and to whom, so a person can check it."""
    amount = detail.get("instructedAmount")
    if not isinstance(amount, dict):
        raise _bad(f'{where}.instructedAmount is required: {{"currency": "USD", "amount": "10"}}')
    if not isinstance(amount.get("currency"), str) or not _CURRENCY.match(amount["currency"]):
        raise _bad(f"{where}.instructedAmount.currency is a three-letter ISO 4217 code")
    if not isinstance(amount.get("amount"), str) or not _AMOUNT.match(amount["amount"]):
        raise _bad(f'{where}.instructedAmount.amount is a decimal string, e.g. "4200.00"')
    creditor = detail.get("creditorName")
    if not isinstance(creditor, str) or not creditor.strip():
        raise _bad(f"{where}.creditorName is required: who is paid")


def describe(detail: dict[str, Any]) -> str:
    """One entry in plain words, for a person to approve."""
    if detail.get("type") == PAYMENT:
        amount = detail["instructedAmount"]
        words = f"Pay {amount['amount']} {amount['currency']} to {detail['creditorName']}"
        account = (detail.get("creditorAccount") or {}).get("iban")
        return f"{words} (account {account})" if isinstance(account, str) else words
    fields = [f"{name}: {_plain(value)}" for name, value in detail.items() if name != "type"]
    return f"{detail['type']}" + (f" ({'; '.join(fields)})" if fields else "")


def _plain(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} {_plain(v)}" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(_plain(v) for v in value)
    return json.dumps(value) if not isinstance(value, str) else value
