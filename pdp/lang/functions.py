"""The language's built-in functions: ``hour``, ``minute``, ``weekday``, ``date`` and ``size``.

Each is defined once here, for the checker (what it takes and gives) and for both
evaluators (what it computes, raising :class:`EvalError` on an argument of the wrong kind,
as the interpreter reports it). Time zones are IANA names read through the standard
library's :mod:`zoneinfo`; without one, the parts of a time are those of UTC.

The time parts are on the decision's hot path (``hour(now, "Europe/Berlin") >= 9``), so
zones are looked up once per name, and the local time of the last instant asked about in
each zone is kept: the several parts a business-hours rule reads of one ``now`` convert it
once.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, tzinfo
from functools import cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from pdp.lang.runtime import EvalError
from pdp.lang.schema import DATE, NUMBER, WEEKDAY, Type
from pdp.lang.values import Weekday, type_name

ZONE = "zone"
"""A parameter that is a time zone: a string naming an IANA zone."""


@dataclass(frozen=True)
class Function:
    """A built-in function: the kinds of value each parameter takes (type names, or
    :data:`ZONE`), how many are required, what it gives, and what it computes."""

    name: str
    params: tuple[tuple[str, ...], ...]
    required: int
    result: Type
    run: Callable[..., Any]
    example: str


# ------------------------------------------------------------------ time zones

_ZONES: dict[str, tzinfo] = {"UTC": UTC}
# The last instant converted to each zone, and its local time there.
_LOCAL: dict[str, tuple[datetime, datetime]] = {}
# The last whole second of the decision time shown in each zone, and its local time.
_SECOND: dict[str, tuple[int, datetime]] = {}


def zone(name: Any) -> tzinfo:
    """The time zone ``name`` names, or an :class:`EvalError` saying why there is none."""
    found = _ZONES.get(name) if isinstance(name, str) else None
    if found is not None:
        return found
    if not isinstance(name, str):
        raise EvalError(f'a time zone is a name such as "Europe/Berlin", got {type_name(name)}')
    problem = unknown_zone(name)
    if problem:
        raise EvalError(problem)
    found = _ZONES[name] = ZoneInfo(name)  # bounded: only names of real zones are kept
    return found


def unknown_zone(name: str) -> str:
    """Why ``name`` is not a time zone ("" when it is one), with a did-you-mean."""
    if is_zone(name):
        return ""
    return f'unknown time zone "{name}"; {zone_hint(name)}'


def is_zone(name: str) -> bool:
    """Whether ``name`` names a time zone the standard library knows."""
    if name in _ZONES:
        return True
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return False
    return True


def zone_hint(name: str) -> str:
    """The zone ``name`` was likely meant to be, or how zones are named."""
    close = difflib.get_close_matches(name, _zone_names(), n=1)
    if close:
        return f'did you mean "{close[0]}"?'
    return 'a time zone is an IANA name such as "Europe/Berlin" or "America/New_York"'


@cache
def _zone_names() -> list[str]:
    return sorted(available_timezones())


def local(value: Any, name: Any, function: str) -> datetime:
    """``value`` (a time) as the wall clock shows it in zone ``name`` (UTC when None)."""
    if not isinstance(value, datetime):
        raise EvalError(f"{function}() reads a time, got {type_name(value)}")
    if name is None:
        return value if value.tzinfo is UTC else value.astimezone(UTC)
    last = _LOCAL.get(name) if name.__class__ is str else None
    if last is not None and last[0] == value:
        return last[1]
    shown = value.astimezone(zone(name))
    _LOCAL[name] = (value, shown)
    return shown


Parts = tuple[int, int, Weekday, date, int]
"""What a policy reads of a time in a zone: hour, minute, weekday, date, and the
weekday's number (0 is monday)."""

# The last whole second of a decision time shown in each zone (None: UTC): from, until,
# and its parts there.
_SECONDS: dict[str | None, tuple[float, float, Parts]] = {}


def parts_of_now(epoch: float, name: Any) -> Parts:
    """The parts of the decision time ``epoch`` (in seconds) in zone ``name``: those of
    its whole second, which every decision of that second shares (a lookup)."""
    last = _SECONDS.get(name)
    if last is not None and last[0] <= epoch < last[1]:
        return last[2]
    second = math.floor(epoch)
    shown = datetime.fromtimestamp(second, zone("UTC" if name is None else name))
    day = shown.weekday()
    parts = (shown.hour, shown.minute, Weekday.of(day), shown.date(), day)
    _SECONDS[name] = (second, second + 1.0, parts)  # only names of real zones get here
    return parts


def weekday_number(value: Any, name: Any = None) -> int:
    """The number of the day of the week of a time in a zone (0 is monday), for
    comparisons with a named day."""
    return local(value, name, "weekday").weekday()


NOW_PARTS = {"hour": 0, "minute": 1, "weekday": 2, "date": 3}
"""Where each function's part of ``now`` is in :data:`Parts`: the compiled code reads
``now``'s parts from the decision time in seconds, without making ``now`` a datetime."""
WEEKDAY_NUMBER = 4


# ------------------------------------------------------------------ the functions


def hour(value: Any, name: Any = None) -> int:
    """The hour, 0 to 23, of a time on the clock of a zone."""
    return local(value, name, "hour").hour


def minute(value: Any, name: Any = None) -> int:
    """The minute, 0 to 59, of a time on the clock of a zone."""
    return local(value, name, "minute").minute


def weekday(value: Any, name: Any = None) -> Weekday:
    """The day of the week of a time in a zone."""
    return Weekday.of(local(value, name, "weekday").weekday())


def day(value: Any, name: Any = None) -> date:
    """The calendar date of a time in a zone."""
    return local(value, name, "date").date()


def size(value: Any) -> int:
    """The number of members of a list, set or map, or of characters of a string."""
    if isinstance(value, str | tuple | frozenset | dict):
        return len(value)
    raise EvalError(f"size() counts a list, a set, a map or a string, got {type_name(value)}")


_TIME = ("time",)
_PART = (_TIME, (ZONE,))
_COUNTED = ("list", "set", "map", "string")

FUNCTIONS: dict[str, Function] = {
    f.name: f
    for f in (
        Function("hour", _PART, 1, NUMBER, hour, 'hour(now, "Europe/Berlin") >= 9'),
        Function("minute", _PART, 1, NUMBER, minute, "minute(now) < 30"),
        Function("weekday", _PART, 1, WEEKDAY, weekday, 'weekday(now) != "sunday"'),
        Function("date", _PART, 1, DATE, day, 'date(now) <= date("2027-03-31")'),
        Function("size", (_COUNTED,), 1, NUMBER, size, "size(agent.scopes) <= 3"),
    )
}


def call(name: str, args: tuple[Any, ...]) -> Any:
    """Apply the built-in ``name`` (the interpreter's and the folder's way in)."""
    function = FUNCTIONS.get(name)
    if function is None:
        raise EvalError(f"unknown function '{name}'")
    if not function.required <= len(args) <= len(function.params):
        raise EvalError(f"{name}() takes {arity(function)}, got {len(args)}")
    return function.run(*args)


def arity(function: Function) -> str:
    """How many arguments ``function`` takes, in words."""
    most = len(function.params)
    if function.required == most:
        return f"{most} argument{'s' if most > 1 else ''}"
    return f"{function.required} or {most} arguments"
