"""Named numerical constants shared by every stage: machine precision and the rounding rules built on it.

Tolerances that belong to one algorithm (a Krylov stopping rule, a quadrature's agreement
level) are named beside that algorithm; the ones here say what *float64 rounding* is, so every
stage decides "equal to rounding" the same way.
"""

from __future__ import annotations

import numpy as np

__all__ = ["EPS", "ROUNDING_RTOL", "TINY"]

#: float64 machine epsilon, ``2^-52``
EPS = float(np.finfo(np.float64).eps)
#: a relative difference below this is rounding of sums of ``O(1)`` float64 terms (about ``4500 EPS``)
ROUNDING_RTOL = 1e-12
#: a zero norm divides by this instead of 0 (the quantity it scales is 0 then, so the result is exact)
TINY = 1e-200
