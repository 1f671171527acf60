"""Exceptions raised for bad user input.

The CLI turns :class:`NearoptError` into one error line on stderr and exit status 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class NearoptError(ValueError):
    """Invalid input or an impossible option (reported to users as one line)."""


def require(condition: bool, message: str) -> None:
    """Raise :class:`NearoptError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise NearoptError(message)


def require_positive_int(value, name: str) -> int:
    """Return ``value`` as an int, or raise if it is not an integer ``>= 1``."""
    if isinstance(value, bool) or int(value) != value or int(value) < 1:
        raise NearoptError(f"{name} must be a positive integer, got {value!r}")
    return int(value)
