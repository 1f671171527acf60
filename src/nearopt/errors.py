"""Exceptions raised for bad user input and for results that are not what was asked.

The CLI turns :class:`NearoptError` into one error line on stderr and exit status 2,
and :class:`ResultFailure` (raised after the partial result has been printed) into
one line and exit status 1; anything else is a bug and keeps its traceback.
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


class ResultFailure(Exception):
    """A computation ran, but its result is not what was asked (diverged, not converged, non-finite).

    Raised by a command after it has printed (or written) the partial result, so
    that the result stays inspectable while the exit status (1) says it is not
    an answer. Not a :class:`NearoptError`: the input was valid.
    """


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


def real_array(values, what: str, *, finite: bool = True) -> np.ndarray:
    """``values`` (array-like or torch tensor) as a float64 array; one-line :class:`NearoptError` otherwise.

    Refuses complex values (even with zero imaginary parts: ``np.asarray(z,
    float)`` would silently drop them), booleans, strings and other
    non-numbers, and with ``finite`` NaN and infinities. ``what`` names the
    argument in the message (``"eigenvalues"``).
    """
    if hasattr(values, "detach"):  # a torch tensor, possibly on a GPU
        values = values.detach().cpu().numpy()
    try:
        arr = np.asarray(values)
    except (TypeError, ValueError) as exc:  # ragged nested lists
        raise NearoptError(f"{what} must be an array of real numbers ({exc})") from None
    if np.iscomplexobj(arr):
        raise NearoptError(f"{what} must be real, got a complex array (dtype {arr.dtype}); pass .real explicitly if that is meant")
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.number):
        raise NearoptError(f"{what} must be real numbers, got dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    if finite:
        require_finite(arr, what)
    return arr
