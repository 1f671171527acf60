"""Exact Gaussian moments of ReLU and its derivatives with means: ``E[g^(a)(u) g^(b)(v)]`` and ``E[g^(a)(u)]``.

For ``g = relu``: ``g' = step``, ``g'' = delta``, ``g^(k) = delta^(k - 2)``. With ``u ~ N(m, s^2)`` the
smoothed ramp ``R(beta; s) = E[relu(beta + s z)] = s (t Phi(t) + phi(t))``, ``t = beta / s``, has
``R' = Phi(t)``, ``R'' = phi(t) / s`` and ``R^(k) = s^(1-k) phi^(k-2)(t)`` (:func:`ramp_derivatives`), and
``E[g^(k)(u)] = R^(k)(m; s)`` because ``E[g^(k)(beta + s z)] = d^k/dbeta^k E[g(beta + s z)]``.

A pair ``(u, v) ~ N((m1, m2), C)`` with ``det C > 0``:

* a delta on ``u`` (``a = p + 2 >= 2``): ``E[delta^(p)(u) X(v)] = (-1)^p d^p/du^p [phi_u(u) rho(beta(u))]`` at
  ``u = 0``, with ``phi_u`` the density of ``u``, ``beta(u) = m2 + k (u - m1)``, ``k = c12 / c11``, and
  ``rho(beta) = E[X(beta + s_v z)]`` the conditional expectation (``s_v^2 = c22 (1 - r^2)``). Leibniz:
  ``(-1)^p sum_j C(p, j) phi_u^(p-j)(0) k^j rho^(j)(beta(0))`` (:func:`delta_moments`); for ``X = g^(b)`` of
  ReLU ``rho^(j) = R^(b+j)(.; s_v)`` in closed form, for a smooth ``X`` a one-dimensional expectation
  (:func:`nearopt.gaussian.expectations.derivative_moments`);
* ``a, b <= 1`` (ramps and steps only): the bivariate normal orthant ``Phi2(h, k; r)`` by Owen's ``T``
  (:func:`orthant`) and the truncated first and second moments of Tallis (1961) (:func:`low_pair`).

Collinear pairs (``det C = 0``, zero variances included) are one-dimensional: the ramps and steps (``a, b <= 1``)
are truncated moments of one standard normal on an interval (:func:`collinear_low_pair`); a delta on ``u``
sees ``v = beta0 + k u`` exactly, so ``rho^(j) = g^(b+j)(beta0)`` (a ramp, a step or 0 where ``beta0 != 0``:
:func:`collinear_pair_values`). Where the kinks coincide (``beta0 = 0``: :func:`coincident`, e.g. a student unit
at its teacher unit, or a unit with itself) the delta moments diverge; the population Hessian there is taken
from the kernel's Taylor data in weight space instead (:mod:`nearopt.gaussian.network_objective`).
At zero means the pair values are the arc-cosine pair terms of :mod:`nearopt.model.pair_terms`
(``tests/test_relu_moments.py`` holds them equal).
"""

from __future__ import annotations

import math

import numpy as np
import scipy.special

__all__ = ["coincident", "collinear_low_pair", "collinear_pair_values", "delta_moments", "KINK_TOL", "low_pair", "orthant",
           "ramp_derivatives", "relu_pair_values", "SHARED_GAP"]

#: pairs with a correlation gap ``1 - r^2`` up to this are collinear (one-dimensional formulas): rows parallel to about
#: ``sqrt(eps)``, where the general formulas lose ``eps / sqrt(gap)`` to cancellation and the collinear ones are off by
#: ``O(sqrt(gap))`` (measured against the kink-exact reference in ``tests/test_relu_network.py``: both ``<= 1e-8``)
SHARED_GAP = 1e-16
#: collinear units whose kinks are this close (relative to their scale) share their kink: far above the conditional std
#: ``sqrt(SHARED_GAP)`` of a collinear pair, so that a collinear pair with separate kinks has them ``>= 100`` such stds apart
KINK_TOL = 1e-6

_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def _phi(t):
    return _INV_SQRT_2PI * np.exp(-0.5 * np.square(t))


def _Phi(t):
    return scipy.special.ndtr(t)


def ramp_derivatives(beta, s, n: int) -> np.ndarray:
    """``R^(j)(beta; s)``, ``j = 0 .. n``, of ``R(beta; s) = E[relu(beta + s z)]``: shape ``S + (n + 1,)`` (``s > 0``).

    ``R = s (t Phi(t) + phi(t))``, ``R' = Phi(t)``, ``R^(j) = s^(1-j) (-1)^j He_(j-2)(t) phi(t)`` (``t = beta / s``,
    ``He`` the probabilists' Hermite polynomials): the ``j``-th moment ``E[relu^(j)(u)]`` of ``u ~ N(beta, s^2)``.
    """
    beta, s = np.broadcast_arrays(np.asarray(beta, dtype=np.float64), np.asarray(s, dtype=np.float64))
    t = beta / s
    ph = _phi(t)
    out = [s * (t * _Phi(t) + ph), _Phi(t)]
    he_prev, he = np.zeros_like(t), np.ones_like(t)  # He_(-1) (unused), He_0
    for j in range(2, n + 1):
        k = j - 2
        if k >= 1:
            he_prev, he = he, t * he - (k - 1) * he_prev
        out.append((-1.0) ** j * he * ph / s ** (j - 1))
    return np.stack(out[: n + 1], -1)


def delta_moments(m1, s1, k, rho: np.ndarray) -> np.ndarray:
    """``E[delta^(p)(u) X(v)]``, ``p = 0 .. P``, from ``rho^(j)`` ``S + (P + 1,)`` of ``rho(beta) = E[X | u]`` at ``u = 0``.

    ``u ~ N(m1, s1^2)`` (``s1 > 0``), ``E[X | u] = rho(beta(0) + k u)``; the result ``S + (P + 1,)`` is
    ``(-1)^p sum_j C(p, j) phi_u^(p-j)(0) k^j rho^(j)`` (module docstring), with ``phi_u^(i)(0) = R^(i+2)(-m1; s1)``.
    """
    P = rho.shape[-1] - 1
    dens = ramp_derivatives(-np.asarray(m1, dtype=np.float64), s1, P + 2)[..., 2:]  # phi_u^(i)(0), i = 0..P
    k = np.asarray(k, dtype=np.float64)[..., None] ** np.arange(P + 1)  # k^j
    out = np.zeros_like(rho)
    for p in range(P + 1):
        terms = [math.comb(p, j) * dens[..., p - j] * k[..., j] * rho[..., j] for j in range(p + 1)]
        out[..., p] = (-1.0) ** p * np.sum(terms, 0)
    return out


def orthant(h, k, r, gap, dh=None, dk=None):
    """``Phi2(h, k; r) = P(X < h, Y < k)`` for standard normals of correlation ``r``, ``gap = 1 - r^2 > 0``, by Owen's ``T``.

    ``Phi2 = (Phi(h) + Phi(k)) / 2 - T(h, dh / h) - T(k, dk / k) - beta`` with ``dh = (k - r h) / sqrt(gap)``,
    ``dk = (h - r k) / sqrt(gap)`` (pass them when they are known without cancellation: :func:`low_pair`;
    ``T(0, a) = atan(a) / (2 pi)``, ``T(0, +-inf) = +-1/4``), ``beta = 1/2`` where ``h k < 0`` or ``h k = 0 < -(h + k)``;
    at ``h = k = 0`` the limit differs by direction, so ``1/4 + asin(r) / (2 pi)`` is taken there directly.
    """
    h, k, r, gap = np.broadcast_arrays(*(np.asarray(x, dtype=np.float64) for x in (h, k, r, gap)))
    sq = np.sqrt(gap)
    dh = (k - r * h) / sq if dh is None else dh
    dk = (h - r * k) / sq if dk is None else dk
    with np.errstate(divide="ignore", invalid="ignore"):
        ah = np.where(h != 0, dh / h, np.copysign(np.inf, dh))
        ak = np.where(k != 0, dk / k, np.copysign(np.inf, dk))
    beta = np.where((h * k < 0) | ((h * k == 0) & (h + k < 0)), 0.5, 0.0)
    val = 0.5 * (_Phi(h) + _Phi(k)) - scipy.special.owens_t(h, ah) - scipy.special.owens_t(k, ak) - beta
    centre = 0.25 + np.arctan2(r, sq) / (2.0 * math.pi)
    return np.where((h == 0) & (k == 0), centre, val)


def low_pair(m1, m2, c11, c12, c22, gap) -> np.ndarray:
    """``E[g^(a)(u) g^(b)(v)]`` for ``a, b <= 1`` (ramp, step) of a non-collinear pair: shape ``S + (2, 2)``.

    ``u = m1 + s1 X``, ``v = m2 + s2 Y``, ``corr(X, Y) = r``, ``gap = 1 - r^2 > 0``; with ``A = m1 / s1``,
    ``B = m2 / s2``, ``L = Phi2(A, B; r)``, ``da = (B - r A) / sqrt(gap)``, ``db = (A - r B) / sqrt(gap)``,
    ``qa = phi(A) Phi(da)``, ``qb = phi(B) Phi(db)`` (Tallis 1961): ``E[X 1] = qa + r qb``, ``E[Y 1] = qb + r qa``,
    ``E[X Y 1] = r L - r (A qa + B qb) + sqrt(gap) phi(0) phi(q)`` with ``q^2 = (A^2 - 2 r A B + B^2) / gap = db^2 + B^2``,
    ``1 = 1{u > 0, v > 0}``. ``da = (m2 - (c12 / c11) m1) / (s2 sqrt(gap))`` (and ``db`` alike): the kinks' distance over the
    conditional std, formed without the cancellation of ``B - r A`` near a shared kink.
    """
    s1, s2 = np.sqrt(c11), np.sqrt(c22)
    A, B, r = m1 / s1, m2 / s2, c12 / (s1 * s2)
    sq = np.sqrt(gap)
    da, db = (m2 - (c12 / c11) * m1) / (s2 * sq), (m1 - (c12 / c22) * m2) / (s1 * sq)
    L = orthant(A, B, r, gap, da, db)
    qa, qb = _phi(A) * _Phi(da), _phi(B) * _Phi(db)
    ex, ey = qa + r * qb, qb + r * qa
    exy = r * L - r * (A * qa + B * qb) + sq * _INV_SQRT_2PI * _phi(np.sqrt(db * db + B * B))
    rr = m1 * m2 * L + m1 * s2 * ey + m2 * s1 * ex + s1 * s2 * exy
    rs, sr = m1 * L + s1 * ex, m2 * L + s2 * ey
    return np.stack([np.stack([rr, rs], -1), np.stack([sr, L], -1)], -2)


def _truncated(lo, hi) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``E[z^i 1{lo < z < hi}]``, ``i = 0, 1, 2``, for ``z ~ N(0, 1)`` (``lo <= hi``, infinite ends allowed)."""
    T0 = np.maximum(_Phi(hi) - _Phi(lo), 0.0)
    plo, phi_ = _phi(lo), _phi(hi)
    T1 = plo - phi_
    lp = np.where(np.isfinite(lo), lo, 0.0) * plo  # z phi(z) -> 0 at the infinite ends
    hp = np.where(np.isfinite(hi), hi, 0.0) * phi_
    return T0, T1, T0 + lp - hp


def _half_line(m, s) -> tuple[np.ndarray, np.ndarray]:
    """The set ``{z : m + s z > 0}`` as an interval ``(lo, hi)`` (``s`` of either sign or 0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        root = np.where(s != 0, -m / np.where(s != 0, s, 1.0), 0.0)
    lo = np.where(s > 0, root, np.where((s == 0) & (m > 0), -np.inf, np.where(s < 0, -np.inf, np.inf)))
    hi = np.where(s < 0, root, np.where((s == 0) & (m <= 0), -np.inf, np.inf))
    return lo, hi


def collinear_low_pair(m1, m2, s1, s2) -> np.ndarray:
    """``E[g^(a)(u) g^(b)(v)]``, ``a, b <= 1``, for ``u = m1 + s1 z``, ``v = m2 + s2 z`` (one ``z ~ N(0, 1)``): ``S + (2, 2)``.

    ``s2`` carries the sign of the pair's covariance (either may be 0: a constant unit). The product of the
    two factors (``m + s z`` for a ramp, 1 for a step) is a polynomial of degree <= 2 in ``z``, integrated over
    the interval where both units are on (:func:`_truncated`).
    """
    m1, m2, s1, s2 = np.broadcast_arrays(*(np.asarray(x, dtype=np.float64) for x in (m1, m2, s1, s2)))
    lo1, hi1 = _half_line(m1, s1)
    lo2, hi2 = _half_line(m2, s2)
    lo, hi = np.maximum(lo1, lo2), np.minimum(hi1, hi2)
    hi = np.maximum(hi, lo)
    T0, T1, T2 = _truncated(lo, hi)
    rr = m1 * m2 * T0 + (m1 * s2 + m2 * s1) * T1 + s1 * s2 * T2
    rs, sr = m1 * T0 + s1 * T1, m2 * T0 + s2 * T1
    return np.stack([np.stack([rr, rs], -1), np.stack([sr, T0], -1)], -2)


def relu_pair_values(m1, m2, c11, c12, c22, gap, na: int, nb: int) -> np.ndarray:
    """``E[g^(a)(u) g^(b)(v)]`` of ReLU, ``a < na``, ``b < nb``, for non-collinear pairs (``gap = 1 - r^2 > 0``): ``S + (na, nb)``.

    ``a >= 2``: a delta on ``u`` (:func:`delta_moments` with ``rho^(j) = R^(b+j)``, conditional std ``sqrt(c22 gap)``);
    ``a <= 1 < b``: the same on ``v``; ``a, b <= 1``: :func:`low_pair`.
    """
    s1, s2 = np.sqrt(c11), np.sqrt(c22)
    out = np.zeros(np.shape(m1) + (na, nb))
    lo = low_pair(m1, m2, c11, c12, c22, gap)
    out[..., : min(na, 2), : min(nb, 2)] = lo[..., : min(na, 2), : min(nb, 2)]
    if na > 2:  # condition on u: rho^(j)(beta) = R^(b + j)(beta; s_v), beta(0) = m2 - k m1
        k = c12 / c11
        ramp = ramp_derivatives(m2 - k * m1, np.sqrt(c22 * gap), nb + na - 3)
        for b in range(nb):
            out[..., 2:, b] = delta_moments(m1, s1, k, ramp[..., b : b + na - 2])
    if nb > 2:  # condition on v, for the rows a <= 1 (the rest is done)
        k = c12 / c22
        ramp = ramp_derivatives(m1 - k * m2, np.sqrt(c11 * gap), min(na, 2) + nb - 3)
        for a in range(min(na, 2)):
            out[..., a, 2:] = delta_moments(m2, s2, k, ramp[..., a : a + nb - 2])
    return out


def coincident(m1, m2, c11, c12, c22, gap) -> np.ndarray:
    """Pairs whose units are one affine function up to a factor, ``v = (c12 / c11) u`` (collinear, kinks within :data:`KINK_TOL`)."""
    live = c11 > 0
    k = np.divide(c12, c11, out=np.zeros_like(c12), where=live)
    beta0 = m2 - k * m1
    return live & (gap <= SHARED_GAP) & (np.abs(beta0) <= KINK_TOL * (np.abs(m2) + np.abs(k * m1) + np.sqrt(c22)))


def _point_ramp(beta0, n: int) -> np.ndarray:
    """``relu^(j)(beta0)``, ``j = 0 .. n``: ``(relu, step, 0, ...)`` at ``beta0 != 0`` (``S + (n + 1,)``)."""
    out = np.zeros(np.shape(beta0) + (n + 1,))
    out[..., 0] = np.maximum(beta0, 0.0)
    if n >= 1:
        out[..., 1] = beta0 > 0
    return out


def collinear_pair_values(m1, m2, c11, c12, c22, na: int, nb: int) -> np.ndarray:
    """``E[g^(a)(u) g^(b)(v)]`` of ReLU for collinear pairs whose kinks differ (not :func:`coincident`): ``S + (na, nb)``.

    ``a, b <= 1``: :func:`collinear_low_pair`; a delta on ``u`` (``c11 > 0``): :func:`delta_moments` with ``rho^(j)``
    the point values of :func:`_point_ramp` at ``beta0 = m2 - (c12 / c11) m1``; on ``v`` the same, roles exchanged.
    """
    s1, s2 = np.sqrt(c11), np.sqrt(c22)
    out = np.zeros(np.shape(m1) + (na, nb))
    lo = collinear_low_pair(m1, m2, s1, np.copysign(s2, c12))
    out[..., : min(na, 2), : min(nb, 2)] = lo[..., : min(na, 2), : min(nb, 2)]
    if na > 2:
        k = c12 / c11
        point = _point_ramp(m2 - k * m1, nb + na - 3)
        for b in range(nb):
            out[..., 2:, b] = delta_moments(m1, s1, k, point[..., b : b + na - 2])
    if nb > 2:
        k = c12 / c22
        point = _point_ramp(m1 - k * m2, min(na, 2) + nb - 3)
        for a in range(min(na, 2)):
            out[..., a, 2:] = delta_moments(m2, s2, k, point[..., a : a + nb - 2])
    return out
