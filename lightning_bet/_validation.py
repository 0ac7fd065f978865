"""Argument checks shared across the package: one predicate and one message per kind of value.

Every check raises ``ValueError("Expected `name` to be <what is valid>, but got <value>")``;
the predicates serve callers whose message needs more context (a schedule's epoch, a config).
"""

from __future__ import annotations

import numbers
from typing import Any

__all__ = [
    "check_positive_int",
    "check_probability",
    "is_int",
    "is_positive_int",
    "is_probability",
]


def is_int(value: Any) -> bool:
    """Whether ``value`` is an integer (a Python or numpy int, never a bool)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_probability(value: Any) -> bool:
    """Whether ``value`` is a real number (not a bool) in [0, 1]; NaN is not."""
    return not isinstance(value, bool) and isinstance(value, int | float) and 0.0 <= value <= 1.0


def check_probability(name: str, value: Any) -> float:
    """``value`` as a float if :func:`is_probability`, else ``ValueError`` naming ``name``."""
    if not is_probability(value):
        raise ValueError(f"Expected `{name}` to be a float in [0, 1], but got {value!r}")
    return float(value)


def is_positive_int(value: Any, types: type | tuple[type, ...] = int) -> bool:
    """Whether ``value`` is an integer of ``types`` (never a bool) that is at least 1."""
    return not isinstance(value, bool) and isinstance(value, types) and value >= 1


def check_positive_int(
    name: str, value: Any, valid: str = "a positive int", types: type | tuple[type, ...] = int
) -> int:
    """``value`` as an int if :func:`is_positive_int`, else ``ValueError`` naming ``name``.

    Args:
        name: the argument's name, as the caller spells it.
        value: the value to check.
        valid: how the message states what is valid (e.g. ``"an int >= 1"``).
        types: accepted integer types (``int``, or ``(int, np.integer)``).

    """
    if not is_positive_int(value, types):
        raise ValueError(f"Expected `{name}` to be {valid}, but got {value!r}")
    return int(value)
