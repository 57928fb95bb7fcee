"""Input validation shared by the losses: one clear error naming what is wrong."""

from __future__ import annotations

import math

__all__ = ["check_choice", "check_open_unit"]


def check_open_unit(name: str, value: float) -> float:
    """Return ``value`` as float if it lies in the open interval (0, 1), else raise ValueError."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in (0, 1), got {value!r}") from None
    if not (0.0 < value < 1.0) or math.isnan(value):
        raise ValueError(f"{name} must be in (0, 1), got {value}")
    return value


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    """Raise ValueError unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; expected one of {', '.join(choices)}")
    return value
