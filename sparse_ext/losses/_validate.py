"""Validation of the losses' settings: one ValueError that names the setting and its range.

Used by the functional losses on every call, by the loss modules at construction (so that a bad
value fails when the model is built, not at the first step) and by the framework adapters.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Optional

__all__ = [
    "check_choice",
    "check_fraction",
    "check_finite",
    "check_nonnegative",
    "check_open_unit",
    "check_positive",
    "check_range",
    "check_schedule",
    "check_unit",
]

# Progress values at which a schedule without known bounds is evaluated.
_PROGRESS_GRID = tuple(i / 20 for i in range(21))


def _interval(low: Optional[float], high: Optional[float], low_open: bool, high_open: bool) -> str:
    if high is None:
        return f"a finite number {'>' if low_open else '>='} {low:g}"
    if low is None:
        return f"a finite number {'<' if high_open else '<='} {high:g}"
    return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"


def _number(name: str, value: Any, expected: str) -> float:
    # bools and strings convert to float but are never meant as a number here
    if isinstance(value, (bool, str, bytes)) or value is None:
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"{name} must be {expected}, got {value!r}") from None


def check_range(
    name: str,
    value: Any,
    low: Optional[float] = None,
    high: Optional[float] = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """``value`` as a float if it is a finite number in the interval, else ValueError.

    The interval is [low, high] (open ends with ``low_open``/``high_open``; None: unbounded);
    the message reads e.g. ``rho must be in [0, 1], got 1.5``.
    """
    interval = _interval(low, high, low_open, high_open)
    number = _number(
        name, value, interval if low is None or high is None else f"a number {interval}"
    )
    inside = math.isfinite(number)
    if inside and low is not None:
        inside = number > low if low_open else number >= low
    if inside and high is not None:
        inside = number < high if high_open else number <= high
    if not inside:
        raise ValueError(f"{name} must be {interval}, got {number:g}")
    return number


def check_unit(name: str, value: Any) -> float:
    """A number in [0, 1] (a probability, a fraction)."""
    return check_range(name, value, 0.0, 1.0)


def check_open_unit(name: str, value: Any) -> float:
    """A number in (0, 1)."""
    return check_range(name, value, 0.0, 1.0, low_open=True, high_open=True)


def check_fraction(name: str, value: Any) -> float:
    """A share of the objects in (0, 1] (an annotated fraction: none annotated is no data)."""
    return check_range(name, value, 0.0, 1.0, low_open=True)


def check_positive(name: str, value: Any) -> float:
    """A finite number > 0."""
    return check_range(name, value, 0.0, low_open=True)


def check_nonnegative(name: str, value: Any) -> float:
    """A finite number >= 0."""
    return check_range(name, value, 0.0)


def check_finite(name: str, value: Any) -> float:
    """Any finite number."""
    number = _number(name, value, "a finite number")
    if not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number, got {number:g}")
    return number


def check_choice(name: str, value: Any, choices: Iterable[str]) -> str:
    """``value`` if it is one of ``choices``, else ValueError listing them."""
    choices = tuple(choices)
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"unknown {name} {value!r}; expected one of {', '.join(choices)}")
    return value


def check_schedule(
    name: str,
    schedule: Callable[[float], float],
    low: Optional[float] = None,
    high: Optional[float] = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    """Check every value a schedule takes over training progress p in [0, 1].

    Schedules that know what bounds their values (``bounds()``: e.g. ``{"start": .., "end": ..}``,
    see :mod:`sparse_ext.losses.schedules`) have those checked, as ``"<name> start"`` and so on;
    any schedule is also evaluated on a grid of progress values.
    """
    bounds = getattr(schedule, "bounds", None)
    if callable(bounds):
        for field, value in bounds().items():
            check_range(f"{name} {field}", value, low, high, low_open=low_open, high_open=high_open)
    for p in _PROGRESS_GRID:
        check_range(
            f"{name} value at progress {p:g}",
            schedule(p),
            low,
            high,
            low_open=low_open,
            high_open=high_open,
        )
