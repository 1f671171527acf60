"""The Gaussian pair terms of the ReLU and erf activations, each written once for every engine.

For two units ``a``, ``b`` and ``x ~ N(0, I)`` (pre-activation covariance ``C = [[|a|^2, a.b], [a.b, |b|^2]]``)
the pair kernel ``kappa(a, b) = E[g(a.x) g(b.x)]`` and its gradient in ``a``,
``grad_a kappa(a, b) = A a + B b``, are:

* ReLU (arc-cosine kernel), ``t`` the angle of the pair, ``Theta = pi - t``, ``S = sin t``
  (:func:`relu_angles`, :func:`relu_pair`, :func:`relu_kernel`)::

      A = |b| S / (2 pi |a|),   B = Theta / (2 pi),   kappa = A |a|^2 + B a.b = (|a| |b| S + Theta a.b) / (2 pi)

* ``erf(z / s)`` (arcsine kernel, ``k = 2 / s^2``, ``d_i = 1 + k C_ii``, ``rho = k a.b / sqrt(d_a d_b)``,
  ``omega = 1 - rho^2``; :func:`erf_gap`, :func:`erf_pair`)::

      kappa = (2/pi) atan2(rho, sqrt(omega)),   A = -(2k/pi) rho / (d_a sqrt(omega)),   B = (2k/pi) / (sqrt(d_a d_b omega))

Each formula is plain Python over the names :data:`FREE_NAMES` (``arctan2``, ``polar_angle``, ``sqrt``) and the constants
of this module, bound here to NumPy: :meth:`nearopt.model.activations.ReLU.closed_form_moments` and
:meth:`~nearopt.model.activations.Erf.closed_form_moments` evaluate them as they stand, and
:func:`bind` gives the same code object other names (``nearopt.gaussian.kernels`` binds torch for the
batched engine and ``math`` for the numba-compiled one). The inputs are the pair's cosine and
correlation gap ``1 - cos^2`` (``correlation_gap`` of the activations module from the covariance
entries, or :func:`unit_gap` from the cosine of two unit rows), so every engine evaluates the
numerically accurate form: ``omega`` as a sum of non-negative terms (``1 - rho^2`` loses
``log10(k |a|^2)`` digits for a unit with itself), the erf kernel by ``atan2`` (``arcsin`` amplifies
the rounding of ``rho`` by ``1 / sqrt(omega)``), and the ReLU angle by ``polar_angle`` of the sine and
cosine: ``atan2`` for the library, whose sine comes from the covariance entries (``arccos`` would
amplify the rounding of the cosine by ``1 / sin t``); the engines, whose sine is that of their cosine
(points on the unit circle), bind an ``arccos`` of the cosine, exact at the snapped ends.

The ReLU terms are homogeneous: ``A(a, b) = (|b| / |a|) A(a^, b^)``, ``B(a, b) = B(a^, b^)`` (unit rows ``a^``),
so an engine may take :func:`relu_pair` of unit rows (``na = nb = 1``) and scale its sums over ``b`` by the norms.
"""

from __future__ import annotations

import math
import types
from collections.abc import Callable
from typing import Any

import numpy as np

from ..tolerances import EPS

__all__ = [
    "COLLINEAR_SNAP", "FREE_NAMES", "GAP_SNAP", "INV_TWO_PI", "NUMPY", "PI", "TWO_PI", "bind", "erf_gap", "erf_pair", "relu_angles",
    "relu_kernel", "relu_pair", "unit_gap",
]

PI = math.pi
TWO_PI = 2.0 * math.pi
#: ``1 / (2 pi)``: the kernels multiply by it (a division per pair costs more than the rest of the pair's arithmetic)
INV_TWO_PI = 0.5 / math.pi
#: ReLU: a cosine within this of +-1 is rounding of an exactly parallel pair (a few ulps)
COLLINEAR_SNAP = 8 * EPS
#: ... and so is a correlation gap ``1 - cos^2`` up to this (``1 - cos^2 ~ 2 (1 - |cos|)``)
GAP_SNAP = 2 * COLLINEAR_SNAP
#: the names a formula takes from its engine (:func:`bind`); here NumPy's. ``polar_angle(y, x)`` is the angle in
#: ``[0, pi]`` of a point ``(x, y)`` with ``y >= 0`` (``arctan2``; an engine whose points lie on the unit circle may
#: bind ``arccos(x)``, exact at ``y = 0``)
FREE_NAMES = ("arctan2", "polar_angle", "sqrt")
NUMPY: dict[str, Any] = {"arctan2": np.arctan2, "polar_angle": np.arctan2, "sqrt": np.sqrt}
arctan2, polar_angle, sqrt = NUMPY["arctan2"], NUMPY["polar_angle"], NUMPY["sqrt"]


def unit_gap(c: Any) -> Any:
    """The correlation gap ``1 - c^2`` of the cosine ``c`` of two unit rows, to a few ulps of itself (``1 - c`` is exact near ``c = 1``).

    ``>= +0`` for ``c`` in ``[-1, 1]``; the formulas take a gap up to :data:`GAP_SNAP` for 0 (rows parallel
    to rounding, their cosine a few ulps off ``+-1``, or beyond it: a negative gap).
    """
    return (1.0 - c) * (1.0 + c)


def relu_angles(cos: Any, gap: Any) -> tuple[Any, Any]:
    """``(Theta, S) = (pi - t, sin t)`` of a pair with cosine ``cos`` and correlation gap ``gap = 1 - cos^2 = sin^2 t >= +0``.

    ``Theta = polar_angle(S, -cos) = atan2(S, -cos)``: with ``S`` from an accurate gap (the covariance entries'
    ``correlation_gap``) no amplified rounding near ``t = 0`` or ``pi`` (``arccos`` amplifies the rounding of
    ``cos`` by ``1 / S``). A gap up to :data:`GAP_SNAP` is rounding of a parallel or antiparallel pair:
    ``S = 0`` and ``Theta`` exactly ``pi`` or ``0``.
    """
    S = sqrt(gap * (gap > GAP_SNAP))
    return polar_angle(S, -cos), S


def relu_pair(theta: Any, S: Any, na: Any, nb: Any) -> tuple[Any, Any]:
    """ReLU ``(A, B)`` of ``grad_a kappa(a, b) = A a + B b`` from :func:`relu_angles`: ``na = |a| > 0``, ``nb = |b|``."""
    # the norms' factor first: for unit rows (na = nb = 1, Python floats) each output is one tensor operation
    return S * (nb / na * INV_TWO_PI), theta * INV_TWO_PI


def relu_kernel(A: Any, b_dot: Any, na2: Any) -> Any:
    """ReLU ``kappa(a, b) = A |a|^2 + B a.b`` (Euler: ``kappa`` is homogeneous of degree 1 in ``a``): ``b_dot = B a.b``, ``na2 = |a|^2``.

    Linear in ``(A, B a.b)``: a weighted sum over units ``b`` is the same formula of the weighted sums
    (``A`` summed, ``B b`` summed and dotted with ``a``).
    """
    return A * na2 + b_dot


def erf_gap(kca: Any, kcb: Any, gap: Any) -> Any:
    """``omega = 1 - rho^2 = det(I + k C) / (d_a d_b)`` of ``erf(z / s)`` as a sum of non-negative terms (no cancellation).

    ``kca = k |a|^2``, ``kcb = k |b|^2``, ``gap = 1 - cos^2`` of the pair. ``det(I + k C) = 1 + k C_aa + k C_bb +
    k^2 det C``, so with ``x = k C_ii / d_i``: ``omega = 1 / (d_a d_b) + x_a / d_b + x_b / d_a + x_a x_b gap``,
    each term to a few ulps, hence ``omega`` too (``>= 1 / (d_a d_b) > 0``; no overflow up to ``k C ~ 1e300``).
    A gap up to :data:`GAP_SNAP` is rounding of a parallel or antiparallel pair: 0 (at ``k C ~ 1e150`` it would
    otherwise set ``omega``, ``~ 1 / (k C)`` for a parallel pair).
    """
    da, db = 1.0 + kca, 1.0 + kcb
    xa, xb = kca / da, kcb / db
    return (1.0 / da) * (1.0 / db) + xa / db + xb / da + xa * xb * (gap * (gap > GAP_SNAP))


def erf_pair(rho: Any, omega: Any, da: Any, root: Any, k: float) -> tuple[Any, Any, Any]:
    """``erf(z / s)`` ``(kappa, A, B)`` of a pair: ``rho``, ``omega`` (:func:`erf_gap`), ``da = 1 + k |a|^2``, ``root = sqrt(d_a d_b)``, ``k = 2 / s^2``.

    ``kappa = (2/pi) atan2(rho, sqrt(omega))`` is ``(2/pi) arcsin(rho)`` without the amplified rounding near ``|rho| = 1``.
    """
    so = sqrt(omega)
    amp = 2.0 * k / PI
    return (2.0 / PI) * arctan2(rho, so), -amp * rho / (da * so), amp / (root * so)


#: the constants a formula reads besides its free names
_CONSTANTS = {"PI": PI, "INV_TWO_PI": INV_TWO_PI, "GAP_SNAP": GAP_SNAP}


def bind(f: Callable[..., Any], namespace: dict[str, Any]) -> Callable[..., Any]:
    """The formula ``f`` (a function of this module) with its :data:`FREE_NAMES` taken from ``namespace``: the same code object."""
    missing = set(FREE_NAMES) - set(namespace)
    if missing:
        raise KeyError(f"namespace lacks {sorted(missing)}")
    return types.FunctionType(f.__code__, {**_CONSTANTS, **namespace}, f.__name__, f.__defaults__)
