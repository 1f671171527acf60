"""The Gaussian integrals of the committee-machine ODEs, for any activation.

For zero-mean jointly Gaussian ``u1 .. u4`` with covariance entries ``cij = E[u_i u_j]``
(Saad & Solla 1995; Goldt et al. 2019)::

    I2 = E[g(u1) g(u2)]                 the pair kernel            (PairMoments.gg)
    J2 = E[g'(u1) g'(u2)]                                          (PairMoments.dd)
    I3 = E[g'(u1) u2 g(u3)] = c12 E[g''(u1) g(u3)] + c23 E[g'(u1) g'(u3)]
    I4 = E[g'(u1) g'(u2) g(u3) g(u4)]

``I3`` is Stein's lemma in ``u2``: two pair moments of ``(u1, u3)`` (``PairMoments.b[..., 0]`` and
``dd``). ``I2``, ``J2`` and those pair moments are the activation's own
(:meth:`~nearopt.model.activations.Activation.closed_form_moments`: erf at any scale, ReLU, polynomials;
the checked quadrature of :mod:`nearopt.gaussian.expectations` for any other smooth activation), so the
ODE's error is the population loss of :mod:`nearopt.gaussian.objective` to rounding. ``I4`` per activation
(:func:`fourth_integral`):

* ``erf(z / s)``: Saad & Solla's closed form for ``erf(z / sqrt 2)`` at the covariance ``k C``,
  ``k = 2 / s^2``, times ``k`` (``g(z) = g0(sqrt(k) z)``);
* polynomials (``linear``: ``I4 = c34``): Gauss–Hermite on the ``4``-dimensional factor, ``2p`` nodes a
  dimension (exact for the integrand's degree ``4p - 2``: rounding only);
* ReLU (``docs/theory.md`` §14): no elementary closed form (``d I4 / d c34`` is a four-dimensional orthant
  probability). By homogeneity ``I4(C) = sqrt(c33 c44) I4(corr C)``; factor ``u = L y`` (lower triangular,
  ``y ~ N(0, I_4)``); ``E[relu(u3) relu(u4) | y1, y2]`` is closed (``_relu_pair_given``: Owen's ``T`` for
  the bivariate normal probability) and ``theta(u1) theta(u2)`` restricts ``(y1, y2)`` to a wedge. The wedge
  is integrated in Cartesian coordinates (``y1 > 0``, ``y2`` above its bound, each half-line mapped to
  ``(0, 1)`` by the normal quantile ``y = -Phi^{-1}(q s)``, ``q = Phi(-b)``: the weight becomes 1) or, where
  ``u1`` and ``u2`` are within 45 degrees of parallel or antiparallel (the Cartesian bound is sharp there),
  in polar coordinates (the wedge's angle, and the radius by the Rayleigh quantile); each one-dimensional
  integral by the tanh-sinh rule, exponentially convergent despite the logarithmic growth at ``s -> 0``.
  Exactly collinear fields (a unit with itself, a student unit equal to a teacher unit) have a zero pivot:
  their ``theta`` is an indicator on the earlier variables, constant on the domain for duplicates (the
  ODEs' case). The step is halved per covariance until two levels agree to ``tol`` (:data:`RELU_TOL`,
  ``1e-7``; :data:`RELU_STEPS`). Measured against a step of ``1/48`` on random covariances, where the two
  routes agree to ``3e-17``: Cartesian ``2e-8``, ``2e-11`` and ``4e-17`` at steps ``1/6``, ``1/12``, ``1/24``
  (43, 85 and 169 nodes a dimension), polar ``4e-7``, ``3e-9`` and ``7e-13``; about 2 ms a covariance at 43 nodes;
* any other smooth activation: the tensor trapezoid rule of
  :func:`~nearopt.gaussian.expectations.normal_rule` on the factor ``u = L y``, refined until two
  levels agree to ``tol`` (:data:`SMOOTH_I4_TOL`, ``1e-7`` relative); ``n^4`` evaluations a covariance
  (:data:`SMOOTH_I4_ORDERS`: 33 to 49 nodes for tanh at unit variances, up to 0.1 s a covariance; a second or more a right-hand side).

Arrays broadcast to a common shape ``S``; :func:`fourth_integral` takes the ``(4, 4)`` covariances
stacked, ``S + (4, 4)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy import special

from ..errors import NearoptError
from ..model.activations import Activation, Erf, PairMoments, ReLU, get_activation
from ..tolerances import EPS
from .expectations import gauss_hermite, normal_rule, quadrature_moments

__all__ = [
    "FourthIntegral", "fourth_integral", "i2", "i3", "i4", "j2", "pair_integrals", "PIVOT_TOL", "RELU_STEPS", "RELU_TOL", "SMOOTH_I4_ORDERS",
    "SMOOTH_I4_TOL"
]

#: a pivot of the ``u = L y`` factor with ``L_ii^2`` below this (relative to ``c_ii``) is zero: the field is
#: collinear with the earlier ones to rounding (dropping it moves ReLU's ``I4`` by at most ``sqrt`` of it, ``~1e-7``)
PIVOT_TOL = 64 * EPS
#: tanh-sinh steps of ReLU's ``I4``, halved in turn until two agree (nodes a dimension: 21, 43, 85, 169); the
#: change between two levels bounds the coarser one's error (measured accuracies: module docstring)
RELU_STEPS = (1 / 3, 1 / 6, 1 / 12, 1 / 24)
#: agreement between two levels of ReLU's ``I4`` (absolute, on the unit-variance integral, which is at most 1/2)
RELU_TOL = 1e-7
#: tanh-sinh abscissae run over ``|t| <= 3.5``: the fractions ``s`` reach ``e^(-pi sinh 3.5) ~ 3e-23`` of either end
_TANH_SINH_RANGE = 3.5
#: the quantile map's smallest tail mass (a node where the truncated mass underflows; its weight is 0 there)
_SMALLEST = float(np.finfo(np.float64).tiny)
#: nodes a dimension of the smooth activations' tensor rule, in turn
SMOOTH_I4_ORDERS = (17, 25, 33, 49, 73)
#: agreement between two levels of the smooth activations' ``I4`` (relative to ``max(1, |I4|)``)
SMOOTH_I4_TOL = 1e-7


def pair_integrals(activation: str | Activation, c11, c12, c22) -> PairMoments:
    """The activation's pair moments for ``(u1, u2) ~ N(0, [[c11, c12], [c12, c22]])`` (shape ``S``): closed form or checked quadrature.

    Raises :class:`NearoptError` for a non-smooth activation without a closed form (its quadrature
    converges only algebraically).
    """
    act = get_activation(activation)
    c11, c12, c22 = np.broadcast_arrays(*(np.asarray(c, dtype=np.float64) for c in (c11, c12, c22)))
    exact = act.closed_form_moments(c11, c12, c22)
    if exact is not None:
        return exact
    if not act.is_smooth:
        raise NearoptError(f"activation {act.name!r} has a kink and no closed form: the ODEs' Gaussian integrals are available for "
                           "erf, ReLU, polynomials and smooth activations")
    return quadrature_moments(act, c11, c12, c22)[0]


def i2(c11, c12, c22, activation: str | Activation = "erf") -> np.ndarray:
    """``I2 = E[g(u1) g(u2)]``; for erf ``(2/pi) arcsin(c12 / sqrt((1 + c11)(1 + c22)))``."""
    return pair_integrals(activation, c11, c12, c22).gg


def j2(c11, c12, c22, activation: str | Activation = "erf") -> np.ndarray:
    """``J2 = E[g'(u1) g'(u2)]``; for erf ``(2/pi) ((1 + c11)(1 + c22) - c12^2)^(-1/2)``."""
    return pair_integrals(activation, c11, c12, c22).dd


def i3(c11, c12, c13, c23, c33, activation: str | Activation = "erf") -> np.ndarray:
    """``I3 = E[g'(u1) u2 g(u3)] = c12 E[g''(u1) g(u3)] + c23 E[g'(u1) g'(u3)]`` (Stein's lemma in ``u2``).

    For erf ``(2/pi) (c23 (1 + c11) - c12 c13) / ((1 + c11) sqrt((1 + c11)(1 + c33) - c13^2))``.
    """
    m = pair_integrals(activation, c11, c13, c33)
    return np.asarray(c12) * m.b[..., 0] + np.asarray(c23) * m.dd


def i4(c11, c12, c22, c13, c14, c23, c24, c33, c34, c44, activation: str | Activation = "erf", *, tol: float | None = None) -> np.ndarray:
    """``I4 = E[g'(u1) g'(u2) g(u3) g(u4)]`` from the ten covariance entries (shape ``S``): :func:`fourth_integral`."""
    e = np.broadcast_arrays(*(np.asarray(c, dtype=np.float64) for c in (c11, c12, c22, c13, c14, c23, c24, c33, c34, c44)))
    c11, c12, c22, c13, c14, c23, c24, c33, c34, c44 = e
    C = np.stack([np.stack(r, -1) for r in ((c11, c12, c13, c14), (c12, c22, c23, c24), (c13, c23, c33, c34), (c14, c24, c34, c44))], -2)
    return fourth_integral(activation, C, tol=tol).values


@dataclass(frozen=True)
class FourthIntegral:
    """The values of ``I4`` and how they were obtained.

    ``values`` (shape ``S``), the ``method`` (``closed-form``, ``gauss-hermite``, ``tanh-sinh``, ``trapezoid``),
    the finest ``nodes`` a dimension and the largest ``change`` between the last two levels (0 where exact).
    """

    values: np.ndarray
    method: str
    nodes: int = 0
    change: float = 0.0


def fourth_integral(activation: str | Activation, C, *, tol: float | None = None) -> FourthIntegral:
    """``I4 = E[g'(u1) g'(u2) g(u3) g(u4)]`` for ``u ~ N(0, C)``, ``C`` of shape ``S + (4, 4)`` (module docstring)."""
    act = get_activation(activation)
    C = np.asarray(C, dtype=np.float64)
    if C.shape[-2:] != (4, 4):
        raise NearoptError(f"I4 takes 4 x 4 covariances, got shape {C.shape}")
    shape = C.shape[:-2]
    flat = C.reshape(-1, 4, 4)
    if isinstance(act, Erf):
        out = FourthIntegral(_erf_i4(flat, 2.0 / act.scale**2), "closed-form")
    elif act.polynomial_coefficients is not None:
        out = FourthIntegral(_polynomial_i4(act, flat), "gauss-hermite", 2 * (act.polynomial_coefficients.size - 1))
    elif isinstance(act, ReLU):
        out = _relu_i4(flat, RELU_TOL if tol is None else tol)
    elif act.is_smooth:
        out = _smooth_i4(act, flat, SMOOTH_I4_TOL if tol is None else tol)
    else:
        raise NearoptError(f"activation {act.name!r} has a kink and no closed form: I4 is available for erf, ReLU, polynomials "
                           "and smooth activations")
    return FourthIntegral(out.values.reshape(shape), out.method, out.nodes, out.change)


def _erf_i4(C: np.ndarray, k: float) -> np.ndarray:
    """Saad & Solla's ``(4/pi^2) Lambda4^(-1/2) arcsin(Lambda0 / sqrt(Lambda1 Lambda2))`` at ``k C``, times ``k`` (``(m, 4, 4)`` -> ``(m,)``)."""
    c = k * C
    d1, d2, d3, d4 = (1 + c[:, i, i] for i in range(4))
    c12, c13, c14, c23, c24, c34 = c[:, 0, 1], c[:, 0, 2], c[:, 0, 3], c[:, 1, 2], c[:, 1, 3], c[:, 2, 3]
    lam4 = d1 * d2 - c12**2
    lam0 = lam4 * c34 - c23 * c24 * d1 - c13 * c14 * d2 + c12 * c13 * c24 + c12 * c14 * c23
    lam1 = lam4 * d3 - c23**2 * d1 - c13**2 * d2 + 2 * c12 * c13 * c23
    lam2 = lam4 * d4 - c24**2 * d1 - c14**2 * d2 + 2 * c12 * c14 * c24
    return k * (4 / np.pi**2) / np.sqrt(lam4) * np.arcsin(np.clip(lam0 / np.sqrt(lam1 * lam2), -1.0, 1.0))


def _factor(C: np.ndarray) -> np.ndarray:
    """``L`` ``(m, 4, 4)`` lower triangular with ``L L^T = C`` for PSD ``C`` (``(m, 4, 4)``); a pivot below :data:`PIVOT_TOL` is 0 with its column."""
    m, n, _ = C.shape
    L = np.zeros_like(C)
    for i in range(n):
        piv2 = C[:, i, i] - (L[:, i, :i] ** 2).sum(-1)
        live = piv2 > PIVOT_TOL * np.maximum(C[:, i, i], np.finfo(np.float64).tiny)
        piv = np.where(live, np.sqrt(np.where(live, piv2, 1.0)), 0.0)
        L[:, i, i] = piv
        for r in range(i + 1, n):
            L[:, r, i] = np.where(live, (C[:, r, i] - (L[:, r, :i] * L[:, i, :i]).sum(-1)) / np.where(live, piv, 1.0), 0.0)
    return L


def _polynomial_i4(act: Activation, C: np.ndarray) -> np.ndarray:
    """Exact ``I4`` of a polynomial ``g`` of degree ``p``: Gauss–Hermite with ``2p`` nodes a dimension on ``u = L y``."""
    coefficients = act.polynomial_coefficients
    assert coefficients is not None  # the caller's dispatch
    return _tensor_level(act, _factor(C), *gauss_hermite(max(1, 2 * (coefficients.size - 1))))


def _tanh_sinh(h: float) -> tuple[np.ndarray, np.ndarray]:
    """Fractions ``s`` in ``(0, 1)`` and weights ``(n,)`` of the tanh-sinh rule of step ``h`` for ``int_0^1 f(s) ds``."""
    t = h * np.arange(-round(_TANH_SINH_RANGE / h), round(_TANH_SINH_RANGE / h) + 1)
    a = np.pi * np.sinh(t)
    s = np.minimum(special.expit(a), 1.0 - EPS)  # below 1: a whole line's quantile stays finite
    return s, h * np.pi * np.cosh(t) * s * special.expit(-a)


def _truncated(partial: np.ndarray, piv: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mass ``q = P(partial + piv y > 0)`` ``(...)`` and nodes ``y`` ``(..., n)`` of ``y ~ N(0, 1)`` there, at the fractions ``s``.

    ``piv`` broadcasts against ``partial``; a zero pivot is an indicator on the earlier variables (``y`` on the whole line).
    """
    live = piv > 0
    q = np.where(live, special.ndtr(partial / np.where(live, piv, 1.0)), partial > 0)
    y = -special.ndtri(np.maximum(np.where(live, q, 1.0)[..., None] * s, _SMALLEST))  # q = 0: any finite node (weight 0)
    return q, y


def _normal_pdf(z: np.ndarray) -> np.ndarray:
    return np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)


def _relu_mean(m: np.ndarray, s: np.ndarray) -> np.ndarray:
    """``E[relu(m + s Z)]`` ``= m Phi(m / s) + s phi(m / s)`` (``relu(m)`` where ``s = 0``)."""
    live = s > 0
    z = m / np.where(live, s, 1.0)
    return np.where(live, m * special.ndtr(z) + s * _normal_pdf(z), np.maximum(m, 0.0))


def _bivariate_cdf(h: np.ndarray, k: np.ndarray, rho: np.ndarray, s: np.ndarray) -> np.ndarray:
    """``Phi2(h, k; rho) = P(Z1 < h, Z2 < k)``, ``|rho| < 1``, ``s = sqrt(1 - rho^2) > 0``, by Owen's T (Owen 1956).

    ``Phi2 = (Phi(h) + Phi(k)) / 2 - T(h, (k - rho h) / (h s)) - T(k, (h - rho k) / (k s)) - [h k < 0] / 2``;
    a zero ``h`` or ``k`` is taken as ``+1e-300`` (the formula's limit from above, ``T(0, a) = atan(a) / (2 pi)``).
    """
    h = np.where(h == 0, 1e-300, h)
    k = np.where(k == 0, 1e-300, k)
    big = 1e300
    ah = np.clip((k - rho * h) / (h * s), -big, big)
    ak = np.clip((h - rho * k) / (k * s), -big, big)
    return 0.5 * (special.ndtr(h) + special.ndtr(k)) - special.owens_t(h, ah) - special.owens_t(k, ak) - 0.5 * (h * k < 0)


def _relu_pair_given(p: np.ndarray, a: np.ndarray, m: np.ndarray, c: np.ndarray, d: np.ndarray) -> np.ndarray:
    """``E[relu(p + a y3) relu(m + c y3 + d y4)]`` for ``y3, y4 ~ N(0, 1)``, ``a, d >= 0`` (arrays broadcast): closed forms.

    ``a, d > 0``: with ``h = p / a``, ``k = m / s_y``, ``s_y^2 = c^2 + d^2``, ``rho = c / s_y``, ``s = d / s_y``,
    ``A = (k - rho h) / s``, ``B = (h - rho k) / s`` it is ``a s_y F`` with (Stein's lemma twice)
    ``F = (h k + rho) Phi2(h, k; rho) + h phi(k) Phi(B) + k phi(h) Phi(A) + s phi(h) phi(A)``.
    ``d = 0`` (the second field a function of the first: collinear): the moments of ``y3`` over the interval where both
    are positive. ``a = 0``: ``relu(p) E[relu(m + s_y Z)]``.
    """
    sy = np.sqrt(c * c + d * d)
    live = (a > 0) & (d > 0)
    a_, sy_ = np.where(live, a, 1.0), np.where(live, sy, 1.0)
    h, k = p / a_, m / sy_
    rho, s = c / sy_, np.where(live, d, 1.0) / sy_
    A, B = (k - rho * h) / s, (h - rho * k) / s
    F = (h * k + rho) * _bivariate_cdf(h, k, rho, s) + h * _normal_pdf(k) * special.ndtr(B) + k * _normal_pdf(h) * special.ndtr(A) \
        + s * _normal_pdf(h) * _normal_pdf(A)
    out = np.where(live, a_ * sy_ * F, 0.0)
    out = np.where(a > 0, out, np.maximum(p, 0.0) * _relu_mean(m, sy))
    return np.where((a > 0) & (d == 0), _relu_collinear(p, a, m, c), out)


def _relu_collinear(p: np.ndarray, a: np.ndarray, m: np.ndarray, c: np.ndarray) -> np.ndarray:
    """``E[relu(p + a y) relu(m + c y)]``, ``y ~ N(0, 1)``, ``a > 0``: ``E[(p + a y)(m + c y)]`` over the interval where both are positive."""
    a_ = np.where(a > 0, a, 1.0)
    cpos, cneg = c > 0, c < 0
    c_ = np.where(c != 0, c, 1.0)
    lo = np.maximum(-p / a_, np.where(cpos, -m / c_, -np.inf))
    hi = np.where(cneg, -m / c_, np.inf)
    hi = np.where((c == 0) & (m <= 0), lo, np.maximum(hi, lo))  # c = 0: the second factor is relu(m)
    lo_f, hi_f = np.where(np.isfinite(lo), lo, 0.0), np.where(np.isfinite(hi), hi, 0.0)
    pl, ph = np.where(np.isfinite(lo), _normal_pdf(lo_f), 0.0), np.where(np.isfinite(hi), _normal_pdf(hi_f), 0.0)
    m0 = np.where(lo > 0, special.ndtr(-lo) - special.ndtr(-hi), special.ndtr(hi) - special.ndtr(lo))  # no cancellation in a tail
    m1 = pl - ph
    m2 = m0 + lo_f * pl - hi_f * ph
    return p * m * m0 + (p * c + a * m) * m1 + a * c * m2


def _relu_cartesian(L: np.ndarray, s: np.ndarray, w: np.ndarray) -> np.ndarray:
    """ReLU's ``I4`` at unit variances ``(m,)``: ``y1 > 0`` and ``y2`` above its bound by the normal quantile (fractions ``s``, weights ``w``)."""
    y1 = -special.ndtri(0.5 * s)  # (n,): u1 = y1 > 0, mass 1/2
    q2, y2 = _truncated(L[:, 1, 0, None] * y1, L[:, 1, 1, None], s)  # (m, n), (m, n, n)
    y1 = np.broadcast_to(y1[None, :, None], y2.shape)
    return 0.5 * ((_relu_given(L, y1, y2) @ w) * q2) @ w


def _relu_polar(L: np.ndarray, s: np.ndarray, w: np.ndarray) -> np.ndarray:
    """ReLU's ``I4`` at unit variances ``(m,)`` with ``(y1, y2)`` in polar coordinates.

    ``u1, u2 > 0`` is the wedge ``phi in (psi - pi/2, pi/2)``, ``psi = atan2(L22, L21)``, and the radius the
    Rayleigh quantile ``r = sqrt(-2 log s)`` (the weight ``r exp(-r^2 / 2) dr`` becomes ``ds``): no sharp
    feature where ``u1`` and ``u2`` are nearly parallel or antiparallel (there the Cartesian bound of ``y2``
    jumps across ``y1 = 0``).
    """
    r = np.sqrt(-2.0 * np.log(s))  # (n,)
    psi = np.arctan2(L[:, 1, 1], L[:, 1, 0])  # (m,) in [0, pi]
    width = np.pi - psi
    phi = (psi - 0.5 * np.pi)[:, None] + width[:, None] * s  # (m, n)
    y1, y2 = np.cos(phi)[:, :, None] * r, np.sin(phi)[:, :, None] * r  # (m, n_phi, n_r)
    return width / (2 * np.pi) * ((_relu_given(L, y1, y2) @ w) @ w)


def _relu_given(L: np.ndarray, y1: np.ndarray, y2: np.ndarray) -> np.ndarray:
    """``E[relu(u3) relu(u4) | y1, y2]`` ``(m, n, n)`` (:func:`_relu_pair_given`) at nodes ``y1``, ``y2`` ``(m, n, n)``."""

    def lin(i):  # the part of u_i from (y1, y2)
        return L[:, i, 0, None, None] * y1 + L[:, i, 1, None, None] * y2

    return _relu_pair_given(lin(2), L[:, 2, 2, None, None], lin(3), L[:, 3, 2, None, None], L[:, 3, 3, None, None])


def _relu_level(L: np.ndarray, h: float) -> np.ndarray:
    """ReLU's ``I4`` at unit variances ``(m,)`` from the factor ``L`` ``(m, 4, 4)``, tanh-sinh step ``h``: polar where
    ``u1`` and ``u2`` are within 45 degrees of parallel or antiparallel but not collinear (``0 < L22 < |L21|``), Cartesian elsewhere."""
    s, w = _tanh_sinh(h)
    polar = (L[:, 1, 1] > 0) & (L[:, 1, 1] < np.abs(L[:, 1, 0]))  # exact duplicates (L22 = 0) stay Cartesian: an exact indicator
    out = np.empty(L.shape[0])
    if polar.any():
        out[polar] = _relu_polar(L[polar], s, w)
    if (~polar).any():
        out[~polar] = _relu_cartesian(L[~polar], s, w)
    return out


def _relu_i4(C: np.ndarray, tol: float) -> FourthIntegral:
    """ReLU's ``I4`` ``(m,)``: ``sqrt(c33 c44) I4(corr C)``, the step halved for each covariance until two levels agree to ``tol``."""
    d = np.sqrt(np.clip(np.diagonal(C, axis1=1, axis2=2), 0.0, None))  # (m, 4)
    live = np.flatnonzero(np.all(d > 0, axis=1))  # theta(0) = relu(0) = 0: a dead field gives 0
    out = np.zeros(C.shape[0])
    if not live.size:
        return FourthIntegral(out, "tanh-sinh")
    dl = d[live]
    L = _factor(C[live] / (dl[:, :, None] * dl[:, None, :]))
    open_ = np.arange(live.size)
    prev = _relu_level(L, RELU_STEPS[0])
    used, worst, change = 0, 0.0, np.inf
    for h in RELU_STEPS[1:]:
        cur = _relu_level(L[open_], h)
        diff = np.abs(cur - prev)
        ok = diff <= tol
        done = open_[ok]
        out[live[done]] = dl[done, 2] * dl[done, 3] * cur[ok]
        if ok.any():
            used, worst = max(used, int(2 * round(_TANH_SINH_RANGE / h) + 1)), max(worst, float(diff[ok].max()))
        change = float(diff.max())
        open_, prev = open_[~ok], cur[~ok]
        if not open_.size:
            return FourthIntegral(out, "tanh-sinh", used, worst)
    raise NearoptError(f"ReLU's I4 did not converge: two tanh-sinh levels differ by {change:.2g} > {tol:g} "
                       "(fields collinear with a combination of others, to rounding)")


#: nodes of a four-dimensional tensor rule evaluated at once (memory: a few arrays of this many float64)
_TENSOR_BLOCK = 2_000_000


def _tensor_level(act: Activation, L: np.ndarray, x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``I4`` ``(m,)`` on the tensor rule ``(x, w)`` of ``u = L y`` (nested sums, innermost ``y4``; ``y1`` in blocks)."""
    xt, wt = torch.tensor(x), torch.tensor(w)  # copies: the Gauss–Hermite arrays are read-only
    n = xt.numel()
    step = max(1, _TENSOR_BLOCK // n**3)
    out = np.zeros(L.shape[0])
    for i, Li in enumerate(torch.as_tensor(L)):
        for start in range(0, n, step):
            y1, w1 = xt[start : start + step, None, None], wt[start : start + step]
            u2 = Li[1, 0] * y1[:, :, 0] + Li[1, 1] * xt  # (b, n)
            u3 = Li[2, 0] * y1 + Li[2, 1] * xt[:, None] + Li[2, 2] * xt  # (b, n, n)
            u4 = (Li[3, 0] * y1 + Li[3, 1] * xt[:, None] + Li[3, 2] * xt)[..., None] + Li[3, 3] * xt  # (b, n, n, n)
            e3 = (act(u3) * (act(u4) @ wt)) @ wt  # (b, n)
            out[i] += float((w1 * act.derivative(Li[0, 0] * y1[:, 0, 0]) * ((act.derivative(u2) * e3) @ wt)).sum())
    return out


def _smooth_i4(act: Activation, C: np.ndarray, tol: float) -> FourthIntegral:
    """``I4`` ``(m,)`` of a smooth ``g`` by the tensor trapezoid rule, each covariance refined until two levels agree to ``tol * max(1, |I4|)``."""
    L = _factor(C)
    open_ = np.arange(C.shape[0])
    prev = _tensor_level(act, L, *normal_rule(SMOOTH_I4_ORDERS[0]))
    out, used, worst, change = np.zeros(C.shape[0]), SMOOTH_I4_ORDERS[0], 0.0, np.inf
    for n in SMOOTH_I4_ORDERS[1:]:
        cur = _tensor_level(act, L[open_], *normal_rule(n))
        diff = np.abs(cur - prev)
        ok = (diff <= tol * np.maximum(1.0, np.abs(cur))) & np.isfinite(cur)
        out[open_[ok]] = cur[ok]
        if ok.any():
            used, worst = n, max(worst, float(diff[ok].max()))
        change = float(diff.max())
        open_, prev = open_[~ok], cur[~ok]
        if not open_.size:
            return FourthIntegral(out, "trapezoid", used, worst)
    raise NearoptError(f"I4 of {act.name!r} did not converge: two trapezoid levels differ by {change:.2g} "
                       f"(at {SMOOTH_I4_ORDERS[-1]} nodes a dimension); the pre-activation variances are too large for the rule")
