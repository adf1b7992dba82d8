"""Validation of numbers at the package's boundaries (constructors, samplers, the CLI).

``x < 0`` is False for NaN, so a check written that way lets NaN through, and ``x > 0`` lets +inf
through; both then turn into all-NaN images or weights with no error. :func:`check_number` accepts
only finite real numbers in range and names the argument when it refuses one. Used throughout.
"""
from __future__ import annotations

import math
from numbers import Real
from typing import Any

__all__ = ["check_number"]


def check_number(name: str, value: Any, *, minimum: float | None = None, strict: bool = False,
                 maximum: float | None = None) -> float:
    """``float(value)`` if ``value`` is a finite real number (not a bool) with ``value >= minimum``
    (``> minimum`` when ``strict``) and ``value <= maximum``; else a one-line ValueError naming ``name``."""
    bound = "" if minimum is None else f" {'>' if strict else '>='} {minimum:g}"
    bound += "" if maximum is None else f"{' and' if bound else ''} <= {maximum:g}"
    if isinstance(value, bool) or not isinstance(value, Real):
        try:  # 0-d tensors and numpy scalars
            value = value.item() if hasattr(value, "item") and not isinstance(value, bool) else value
        except (TypeError, ValueError, RuntimeError):
            pass
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(float(value)):
        raise ValueError(f"{name} must be a finite number{bound}, got {value!r}")
    v = float(value)
    if minimum is not None and (v <= minimum if strict else v < minimum) or maximum is not None and v > maximum:
        raise ValueError(f"{name} must be a finite number{bound}, got {value!r}")
    return v
