"""Exceptions raised for bad user input.

The CLI turns :class:`NearoptError` into one error line on stderr and exit status 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import math

import numpy as np


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


class ResourceError(NearoptError):
    """A computation that the machine cannot hold (memory, device): refused before it starts."""


def require_positive_finite(value, name: str) -> float:
    """Return ``value`` as a float, or raise unless it is a real, finite number ``> 0``.

    Rejects ``None``, booleans, strings, complex numbers, NaN, infinities, zero
    and negative values: a tolerance such as ``rtol = nan`` would otherwise
    compare false everywhere and mark a wrong rank as clear.
    """
    if value is None or isinstance(value, (bool, np.bool_, str, bytes, complex)) or np.iscomplexobj(value):
        raise NearoptError(f"{name} must be a finite number > 0, got {value!r}")
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise NearoptError(f"{name} must be a finite number > 0, got {value!r}") from None
    if not (math.isfinite(x) and x > 0):
        raise NearoptError(f"{name} must be a finite number > 0, got {value!r}")
    return x


def require_finite(values, what: str, cause: str = "") -> None:
    """Raise :class:`NearoptError` if ``values`` (a number or array-like) holds NaN or an infinity.

    ``what`` names the result (``"Hessian eigenvalues"``), ``cause`` the input
    that produced it, so the message says where to look instead of printing
    ``nan`` as if it were a result.
    """
    if hasattr(values, "detach"):  # a torch tensor, possibly on a GPU
        values = values.detach().cpu().numpy()
    arr = np.asarray(values)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise NearoptError(f"{what}: expected numbers, got {arr.dtype} values")
    bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
    if bad:
        where = f" ({cause})" if cause else ""
        raise NearoptError(f"{what}: {bad} of {arr.size} value(s) are NaN or infinite{where}")
