"""The runtime values of the policy language: risk levels, money, durations, times, IPs.

Every value a policy sees is one of: ``str``, ``bool``, ``int``/``float`` (numbers),
:class:`Risk`, :class:`Money`, :class:`Duration`, ``datetime`` (times), ``date`` (dates),
:class:`Weekday`, ``IPv4Address``/``IPv6Address`` and networks (ips), ``frozenset``
(sets), ``tuple`` (lists) and ``dict`` (maps of strings). Requests are normalized into
these types against the schema before any rule runs, so evaluators never meet a value of
the wrong type.
"""

from __future__ import annotations

import enum
import ipaddress
import math
import re
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from pdp.lang.errors import LanguageError


class Risk(enum.IntEnum):
    """A risk level; ordered low < medium < high < critical."""

    low = 0
    medium = 1
    high = 2
    critical = 3

    def __str__(self) -> str:
        return self.name

    @classmethod
    def parse(cls, text: str) -> Risk:
        try:
            return cls[text]
        except KeyError:
            raise ValueError(
                f"unknown risk level {text!r}; expected one of low, medium, high, critical"
            ) from None


WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_WEEKDAY_INDEX = {name: index for index, name in enumerate(WEEKDAYS)}


class Weekday(str):
    """A day of the week: its lowercase English name, ordered monday < … < sunday.

    It is the string of its name, so it equals ``"saturday"`` and is found in a set of
    day names; ordering it against a string that names no weekday is an error.
    """

    __slots__ = ()

    @classmethod
    def of(cls, index: int) -> Weekday:
        """The weekday of ``date.weekday()`` (0 is monday)."""
        return _DAYS[index]

    def _pair(self, other: object) -> tuple[int, int]:
        index = _WEEKDAY_INDEX.get(other) if isinstance(other, str) else None
        if index is None:
            raise TypeError(f'cannot order a weekday against {other!r}: name a day, "monday"')
        return _WEEKDAY_INDEX[self], index

    def __lt__(self, other: object) -> bool:
        mine, theirs = self._pair(other)
        return mine < theirs

    def __le__(self, other: object) -> bool:
        mine, theirs = self._pair(other)
        return mine <= theirs

    def __gt__(self, other: object) -> bool:
        mine, theirs = self._pair(other)
        return mine > theirs

    def __ge__(self, other: object) -> bool:
        mine, theirs = self._pair(other)
        return mine >= theirs

    __eq__ = str.__eq__
    __ne__ = str.__ne__
    __hash__ = str.__hash__


_DAYS = tuple(Weekday(name) for name in WEEKDAYS)


class _Ordered:
    """Ordering through ``_key(other)``, which raises when the two cannot be compared."""

    __slots__ = ()

    def _key(self, other: object) -> tuple[Any, Any]:
        raise NotImplementedError

    def __lt__(self, other: object) -> bool:
        mine, theirs = self._key(other)
        return bool(mine < theirs)

    def __le__(self, other: object) -> bool:
        mine, theirs = self._key(other)
        return bool(mine <= theirs)

    def __gt__(self, other: object) -> bool:
        mine, theirs = self._key(other)
        return bool(mine > theirs)

    def __ge__(self, other: object) -> bool:
        mine, theirs = self._key(other)
        return bool(mine >= theirs)


class CurrencyMismatch(LanguageError):
    """Two amounts of money in different currencies were compared."""


class Money(_Ordered):
    """An amount in one currency.

    Ordering two currencies (``<``, ``<=``, …) is an error, never false: a cap in USD says
    nothing about an amount in EUR. Equality is plain: 5 EUR is not 5 USD.
    """

    __slots__ = ("amount", "currency")

    amount: Decimal
    currency: str

    def __init__(self, amount: Decimal | int | str, currency: str) -> None:
        # Text is read by the one amount grammar (parse_amount); a Decimal or int made
        # by code is taken as it is.
        value = parse_amount(amount) if isinstance(amount, str) else Decimal(amount)
        object.__setattr__(self, "amount", value)
        object.__setattr__(self, "currency", currency)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Money is immutable")

    def _key(self, other: object) -> tuple[Any, Any]:
        if not isinstance(other, Money):
            raise TypeError(f"cannot compare money with {type_name(other)}")
        if other.currency != self.currency:
            raise CurrencyMismatch(f"cannot compare {self} with {other}: currencies differ")
        return self.amount, other.amount

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Money):
            return NotImplemented
        return self.amount == other.amount and self.currency == other.currency

    def __ne__(self, other: object) -> bool:
        if not isinstance(other, Money):
            return NotImplemented
        return self.amount != other.amount or self.currency != other.currency

    def __hash__(self) -> int:
        return hash((self.amount, self.currency))

    def __repr__(self) -> str:
        return f"Money({format(self.amount, 'f')!r}, {self.currency!r})"

    def __str__(self) -> str:
        return f"{format(self.amount, 'f')} {self.currency}"  # never in exponent form


_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION_RE = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)$")


class Duration(_Ordered):
    """A length of time, kept in seconds and written the way it was (30s, 5m, 24h)."""

    __slots__ = ("seconds", "text")

    seconds: float
    text: str

    def __init__(self, seconds: float, text: str | None = None) -> None:
        object.__setattr__(self, "seconds", seconds)
        object.__setattr__(self, "text", text if text is not None else f"{seconds:g}s")

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Duration is immutable")

    @classmethod
    def parse(cls, text: str) -> Duration:
        match = _DURATION_RE.match(text)
        if match is None:
            raise ValueError(
                f"invalid duration {text!r}; write a number and a unit: 500ms, 30s, 5m, 24h, 7d"
            )
        number, unit = match.groups()
        return cls(float(number) * _DURATION_UNITS[unit], text)

    def _key(self, other: object) -> tuple[Any, Any]:
        if not isinstance(other, Duration):
            raise TypeError(f"cannot compare a duration with {type_name(other)}")
        return self.seconds, other.seconds

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Duration):
            return NotImplemented
        return self.seconds == other.seconds

    def __ne__(self, other: object) -> bool:
        if not isinstance(other, Duration):
            return NotImplemented
        return self.seconds != other.seconds

    def __hash__(self) -> int:
        return hash(self.seconds)

    def __repr__(self) -> str:
        return f"Duration({self.text!r})"

    def __str__(self) -> str:
        return self.text


IP = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_ip(text: str) -> IP:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"invalid IP address {text!r}") from None


def parse_network(text: str) -> Network:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(f"invalid IP network {text!r}; write it as 10.0.0.0/8") from None


def parse_time(text: str) -> datetime:
    """Parse an RFC 3339 timestamp; a timestamp without an offset is an error."""
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"invalid time {text!r}; write it as RFC 3339, e.g. 2026-01-31T09:00:00Z"
        ) from None
    if value.tzinfo is None:
        raise ValueError(f"time {text!r} has no UTC offset; add Z or +01:00")
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"time {text!r} is outside the years 1 to 9999 in UTC") from None


_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}", re.ASCII)


def parse_date(text: str) -> date:
    """Parse a calendar date written ``YYYY-MM-DD`` (RFC 3339's full-date)."""
    if _DATE_RE.fullmatch(text) is None:
        raise ValueError(f"invalid date {text!r}; write it as YYYY-MM-DD, e.g. 2027-03-31")
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"invalid date {text!r}: there is no such day") from None


# ------------------------------------------------------------------ amounts of money
#
# One grammar for every amount that enters Tessera: policy text, request context through
# every door, policy tests, the PEP client. An amount is ASCII digits, an optional leading
# "-" and an optional "." fraction: no spaces, no "_", no exponent, no other script's
# digits. It must fit the limit counters (pdp/counters/units.py), which keep whole
# ten-thousandths below 2**52 so that SQL and Redis's Lua add them exactly: at most
# AMOUNT_PLACES decimal places, and at most MAX_AMOUNT either way.

AMOUNT_PLACES = 4  # the counters keep ten-thousandths
MAX_AMOUNT_UNITS = 2**52  # ten-thousandths a double (Redis's Lua) still adds exactly
MAX_AMOUNT = Decimal(MAX_AMOUNT_UNITS).scaleb(-AMOUNT_PLACES)  # 450359962737.0496
_WHOLE_DIGITS = len(str(int(MAX_AMOUNT)))  # 12: more digits (zeros aside) are too large
_AMOUNT_RE = re.compile(r"-?([0-9]+)(?:\.([0-9]+))?", re.ASCII)
CURRENCY = re.compile(r"[A-Z]{3}", re.ASCII)  # an ISO 4217 code's form
_SHOWN = 40  # characters of a refused text an error message repeats


def parse_amount(value: str | int | float | Decimal) -> Decimal:
    """An amount of money as the one grammar reads it, from text or a JSON number; a
    ValueError saying exactly what is wrong otherwise."""
    if isinstance(value, str):
        match = _AMOUNT_RE.fullmatch(value)
        if match is None:
            raise ValueError(f"invalid amount {shown(value)}: {_why_not_amount(value)}")
        whole, places = match.group(1), match.group(2) or ""
        if len(whole.lstrip("0")) > _WHOLE_DIGITS:
            raise ValueError(_too_large(shown(value)))
        amount = Decimal(value)
    elif isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        raise ValueError(f"invalid amount {shown(value)}: an amount is text or a number")
    elif isinstance(value, int):
        if abs(value) > MAX_AMOUNT:
            raise ValueError(_too_large(shown(value)))
        return Decimal(value)
    else:
        if not _finite(value):
            raise ValueError(f"invalid amount {value}: an amount is a finite number")
        amount = Decimal(repr(value)) if isinstance(value, float) else value
        places = "0" * max(0, -_exponent(amount))
    if abs(amount) > MAX_AMOUNT:
        raise ValueError(_too_large(shown(value)))
    if len(places) > AMOUNT_PLACES:
        raise ValueError(
            f"invalid amount {shown(value)}: more than {AMOUNT_PLACES} decimal places "
            "(amounts are kept to ten-thousandths)"
        )
    return amount


def _finite(value: float | Decimal) -> bool:
    return value.is_finite() if isinstance(value, Decimal) else math.isfinite(value)


def _exponent(amount: Decimal) -> int:
    exponent = amount.as_tuple().exponent
    return exponent if isinstance(exponent, int) else 0


def _too_large(text: str) -> str:
    return (
        f"invalid amount {text}: its size is beyond {MAX_AMOUNT}, the largest amount "
        "the limit counters keep exactly"
    )


def _why_not_amount(text: str) -> str:
    """What keeps ``text`` from being an amount, in the words of the grammar."""
    if not text:
        return "it is empty"
    if any(c.isspace() for c in text):
        return "it has whitespace; write the digits alone"
    if "_" in text:
        return 'it has "_"; write the digits without separators'
    if any(c in "eE" for c in text):
        return "it has an exponent; write every digit, such as 1000"
    if any(c.isdigit() and not c.isascii() for c in text):
        return "it has digits other than ASCII 0-9"
    return 'write ASCII digits, an optional leading "-" and an optional ".fraction": 12.50'


def shown(value: object) -> str:
    """A value as an error message repeats it: its repr, cut short when long (a refused
    request must not be echoed back whole)."""
    text = repr(value)
    return text if len(text) <= _SHOWN else f"{text[:_SHOWN]}… ({len(text)} characters)"


def parse_money(text: str) -> Money:
    """Money in its text form: an amount, one space, a three-letter currency code."""
    amount, space, currency = text.rpartition(" ")
    if not space or CURRENCY.fullmatch(currency) is None:
        raise ValueError(f"invalid money {shown(text)}; write an amount and a currency: 200 USD")
    return Money(parse_amount(amount), currency)


def type_name(value: Any) -> str:
    """The policy-language name of a runtime value's type, for error messages."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, Risk):
        return "risk"
    if isinstance(value, Weekday):
        return "weekday"
    if isinstance(value, (int, float, Decimal)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Money):
        return "money"
    if isinstance(value, Duration):
        return "duration"
    if isinstance(value, datetime):
        return "time"
    if isinstance(value, date):
        return "date"
    if isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return "ip"
    if isinstance(value, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        return "network"
    if isinstance(value, frozenset):
        return "set"
    if isinstance(value, tuple):
        return "list"
    if isinstance(value, dict):
        return "map"
    return type(value).__name__


def render(value: Any) -> str:
    """A value written the way a policy author would write it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return quote(value)
    if isinstance(value, (Risk, Money, Duration)):
        return str(value)
    if isinstance(value, datetime):
        return f'time("{value.isoformat().replace("+00:00", "Z")}")'
    if isinstance(value, date):
        return f'date("{value.isoformat()}")'
    if isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return f'ip("{value}")'
    if isinstance(value, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        return f'ip("{value}")'
    if isinstance(value, frozenset):
        return "[" + ", ".join(sorted(render(v) for v in value)) + "]"
    if isinstance(value, tuple):
        return "[" + ", ".join(render(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {render(v)}" for k, v in sorted(value.items())) + "}"
    if value is None:
        return "(absent)"
    return repr(value)


def quote(text: str) -> str:
    """A double-quoted string literal with the language's escapes."""
    out = text.replace("\\", "\\\\").replace('"', '\\"')
    out = out.replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")
    return f'"{out}"'
