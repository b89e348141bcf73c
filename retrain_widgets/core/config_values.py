"""Checks of a configuration's values: each names the field, the rule and the bad value."""

from __future__ import annotations

from typing import Any

__all__ = ["number"]


def number(name: str, value: Any, *, low: float | None = None, high: float | None = None,
           low_open: bool = False, whole: bool = False, optional: bool = False) -> Any:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"RunConfig.{name} must be a number, got {value!r}")
    if whole:
        if isinstance(value, float):
            if not value.is_integer():
                raise ValueError(f"RunConfig.{name} must be a whole number, got {value!r}")
            value = int(value)
    else:
        value = float(value)
    if value != value or value in (float("inf"), float("-inf")):  # NaN, inf
        raise ValueError(f"RunConfig.{name} must be a finite number, got {value!r}")
    if low is not None and (value <= low if low_open else value < low):
        raise ValueError(f"RunConfig.{name} must be {'>' if low_open else '>='} {low}, got {value!r}")
    if high is not None and value > high:
        raise ValueError(f"RunConfig.{name} must be <= {high}, got {value!r}")
    return value
