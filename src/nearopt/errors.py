"""Exceptions raised for bad user input and for results that are not what was asked.

The CLI turns :class:`NearoptError` into one error line on stderr and exit status 2,
and :class:`ResultFailure` (raised after the partial result has been printed) into
one line and exit status 1; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "NearoptError", "real_array", "require", "require_finite", "require_nonneg_finite", "require_positive_finite", "require_positive_int",
    "require_product_finite", "require_squarable", "ResourceError", "ResultFailure", "SQUARE_LIMIT"
]


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


#: largest magnitude whose square float64 holds (about 1.34e154): a setting above it overflows
#: in the first product it enters (a variance sigma^2, a step lr times lr, a weight times itself)
SQUARE_LIMIT = math.sqrt(float(np.finfo(np.float64).max))


def _real_number(value, name: str, kind: str) -> float:
    """``value`` as a float, or one line naming ``kind`` for anything that is not one real number."""
    if value is None or isinstance(value, (bool, np.bool_, str, bytes, complex)) or np.iscomplexobj(value):
        raise NearoptError(f"{name} must be {kind}, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise NearoptError(f"{name} must be {kind}, got {value!r}") from None


def require_positive_finite(value, name: str) -> float:
    """Return ``value`` as a float, or raise unless it is a real, finite number ``> 0``.

    Rejects ``None``, booleans, strings, complex numbers, NaN, infinities, zero
    and negative values: a tolerance such as ``rtol = nan`` would otherwise
    compare false everywhere and mark a wrong rank as clear.
    """
    x = _real_number(value, name, "a finite number > 0")
    if not (math.isfinite(x) and x > 0):
        raise NearoptError(f"{name} must be a finite number > 0, got {value!r}")
    return x


def require_nonneg_finite(value, name: str) -> float:
    """Return ``value`` as a float, or raise unless it is a real, finite number ``>= 0`` (as :func:`require_positive_finite`)."""
    x = _real_number(value, name, "a finite number >= 0")
    if not (math.isfinite(x) and x >= 0):
        raise NearoptError(f"{name} must be a finite number >= 0, got {value!r}")
    return x


def require_squarable(value: float, name: str) -> float:
    """Return ``value``, or raise if its square overflows float64 (``|value| >`` :data:`SQUARE_LIMIT`).

    Every real setting of nearopt enters a product with itself or with a
    quantity of order one (a weight's variance, ``lr**2`` in the SGD operator),
    so a value this large gives infinities inside the computation, not an answer.
    """
    if abs(value) > SQUARE_LIMIT:
        raise NearoptError(f"{name} is too large for float64 ({value:g}: its square overflows; at most {SQUARE_LIMIT:.3g})")
    return value


def require_product_finite(factors: dict[str, float], what: str, advice: str, power: int = 1) -> None:
    """Raise unless ``(product of the non-negative factors) ** power`` is finite in float64.

    ``factors`` maps a name to a value (``{"max |W2|": 1e200}``); ``what`` names the
    quantity the product bounds (``"Hessian entries"``). Computed in logarithms, so
    the check itself cannot overflow, and the message names the factors so that
    the user sees which input is too large.
    """
    log10 = power * sum(math.log10(v) if v > 0 else -math.inf for v in factors.values())
    if log10 >= math.log10(float(np.finfo(np.float64).max)):
        named = ", ".join(f"{k} = {v:.3g}" for k, v in factors.items())
        raise NearoptError(f"{what} overflow float64: they reach about 1e{log10:.0f} ({named}); {advice}")


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
