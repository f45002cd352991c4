"""How the shared stores write amounts: whole units of 1/10,000, exact in SQL and in Lua.

A store shared by processes cannot keep Python's :class:`~decimal.Decimal`: SQL columns
and Redis hashes hold integers, and Redis's Lua adds numbers as doubles. So every amount
and cap becomes an integer count of :data:`SCALE`-ths: 100.10 USD is 1,001,000 units and
50 of them sum to exactly the 50,050,000 units of a 5,005.00 USD cap. A count of calls is
the same, times :data:`SCALE`, so money and counts share one column and one script.

An amount with more than four decimals is rounded *up* (a charge never counts less than
it costs) and a cap *down* (a limit never lets more through than it says). Doubles hold
every integer below 2**53 exactly; a total is at most a cap plus one amount, so caps and
amounts are kept to :data:`MAX_UNITS` = 2**52 units, 450,359,962,737.0496 of either kind.
A larger one raises :class:`~pdp.counters.base.CounterError` rather than count inexactly.
"""

from __future__ import annotations

from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

from pdp.counters.base import Amount, Charge, CounterError
from pdp.lang.values import AMOUNT_PLACES, MAX_AMOUNT, MAX_AMOUNT_UNITS

# The amount grammar (pdp.lang.values.parse_amount) refuses any amount these cannot hold:
# policy text and requests never bring one that would be rounded or refused here.
SCALE: int = 10**AMOUNT_PLACES
MAX_UNITS = MAX_AMOUNT_UNITS
LARGEST = MAX_AMOUNT  # 450359962737.0496, in the amount's own terms


def amount_units(amount: Amount) -> int:
    """An amount in units, rounded up."""
    return _units(amount, ROUND_CEILING, "amount")


def cap_units(cap: Amount) -> int:
    """A cap in units, rounded down."""
    return _units(cap, ROUND_FLOOR, "cap")


def _units(value: Amount, rounding: str, what: str) -> int:
    if isinstance(value, int):
        units = value * SCALE
    elif isinstance(value, Decimal) and value.is_finite():
        units = int((value * SCALE).to_integral_value(rounding=rounding))
    else:
        raise CounterError(f"a limit's {what} must be a whole number or a decimal, not {value!r}")
    if not -MAX_UNITS <= units <= MAX_UNITS:
        raise CounterError(
            f"a limit's {what} of {value} is beyond {LARGEST}, the largest a shared "
            "counter store keeps exactly"
        )
    return units


def from_units(units: int, charge: Charge) -> Amount:
    """Units back in the charge's own terms: a whole count stays an ``int``."""
    if isinstance(charge.amount, int) and isinstance(charge.cap, int) and units % SCALE == 0:
        return units // SCALE
    return Decimal(units).scaleb(-4)
