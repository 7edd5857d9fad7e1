"""Argument checks shared by the library's entry points: a bad value is a ValueError naming it and the fix."""

from __future__ import annotations

import math
import numbers

from .errors import UsageError


def whole_number(value, name: str, minimum: int = 1, allow_none: bool = False) -> int | None:
    """``value`` as an int >= ``minimum`` (None passes where ``allow_none``); floats, booleans and strings are refused."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise UsageError(f"{name}={value!r}: give a whole number of at least {minimum}"
                         + (" (or None for all)" if allow_none else ""))
    if value < minimum:
        raise UsageError(f"{name}={value}: it must be at least {minimum}")
    return int(value)


def positive_finite(value, name: str, hint: str = "") -> float:
    """``value`` as a float in (0, inf); NaN, infinities, booleans and non-numbers are refused."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value < math.inf:
        raise UsageError(f"{name}={value!r}: it must be a positive finite number{hint}")
    return float(value)
