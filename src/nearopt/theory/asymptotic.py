"""Asymptotic law of the pooled population Hessian spectrum of non-linear networks (docs/asymptotic.md).

Setting: ``f(x) = W2 g(W1 x)`` at its optimum, ``x ~ N(0, I)``, a random teacher with
``W1 ~ N(0, sigma1**2)`` (default ``1/N_i``) and ``W2 ~ N(0, sigma2**2)`` (default
``1/N_h``). Write ``c_a = |w_a|**2`` (law ``sigma1**2 chi2_{N_i}``, concentrated at 1),
``u = w_a.x``, ``z = u / sqrt(c_a)``.

The ``P = N_h (N_i + 1)`` eigenvalues split into families (derivation in ``docs/asymptotic.md``;
every constant is a 1-D Gaussian expectation; ``t ~ chi2_1`` is ``v_a**2/sigma2**2``):

* bulk, ``P - N_i - 2 N_h`` eigenvalues: to first order ``sigma2**2 delta(c) t``, ``delta = Var g'(u)``;
* radial (``w_a -> s w_a``), ``N_h``: ``sigma2**2 delta_rad(c) t``;
* readout (``W2``), ``N_h``: ``nu(c) + sigma2**2 e(c) t``;
* linear, ``N_i``: ``mu1**2 (s + m)``, the linear-network law, ``mu1 = E g'(u)``;
* for ``g`` not odd, one constant mode (the degree-0 parts of the readout and radial features).

with, for ``f1 = g(u) - E[g(u) z] z`` and ``f2 = g'(u) z - E[g'(u) z**2] z`` (the non-linear parts of
the readout feature ``g(u_a)`` and of the radial feature ``v_a g'(u_a) z``, centred when ``g`` is not
odd), ``nu = Var f1``, ``e = Cov(f1, f2)**2 / nu`` and ``delta_rad = Var f2 - e``.

Why: the block ``H[w_a, w_c] = v_a v_c E[g'(u_a) g'(u_c) x x^T]``, and Mehler's expansion
``E g'(u_a) g'(u_c) = sum_k h_k(c_a) h_k(c_c) rho~_ac**k / k!`` (:func:`hermite_coefficients`).
The order 0 is the rank-one part ``b b^T`` (the linear family's outliers), the order ``k`` the Gram
matrix of the tensor powers ``w^_a^{⊗k}``. Orders 1 and 2 (:data:`DYSON_ORDERS`) are kept as Gram
terms and solved by a vector Dyson equation (:class:`GramDyson`, :class:`DysonBulk`); the higher
orders act as a scalar. For odd ``g`` only even orders occur, the order 2 is a correction of relative
size ``O(N^{-1/2})``, and ``N_h lambda`` of a pooled eigenvalue converges in law to ``delta(1) chi2_1``
(:attr:`AsymptoticLaw.scaled_limit`) at every ratio. When ``E g'' != 0`` (ReLU, even parts) the order
1 is of order one at every size. The swap term of the reduced block belongs to the same Gram terms
(the degree-``k+1`` Hermite features ``S(w^_a^{⊗k} ⊗ x)``); in the reduced copies it is modelled by the
dimension of ``Sym^{k+1}`` of the row space. With ``dyson=False`` the first-order corrections of odd
``g`` are used instead: :class:`Interlacing` (each copy's bulk interlaced with its rank-one outlier)
and :class:`SwapPairs` (the swap term's pair coupling); for other ``g`` that is a baseline, the
odd-activation formulas.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from numpy.polynomial import hermite_e
from scipy import integrate, special, stats
from scipy.interpolate import PchipInterpolator

from ..errors import NearoptError, require_positive_int
from ..gaussian.expectations import split_normal_rule, variance_rules
from ..model.activations import Activation, get_activation
from ..tolerances import ROUNDING_RTOL
from .distributions import ChiSquareMPConvolution, SpectralLaw, TabulatedCDF, gamma_gauss_rule

__all__ = [
    "asymptotic_law", "AsymptoticLaw", "C_NODES", "DYSON_C_NODES", "DYSON_DAMP", "DYSON_ETA", "DYSON_ORDERS", "DYSON_POINTS", "DYSON_STEPS", "DYSON_TOL",
    "DysonBulk", "EigenvalueFamily", "GramDyson", "hermite_coefficients", "Interlacing", "is_odd", "LINEAR_EPSREL", "ODD_TOL", "PAIR_GRID",
    "PAIR_GRID_XI", "PAIR_KNOTS", "PPF_STEPS", "require_odd", "SwapPairs", "TABLE_POINTS", "unit_constants", "UnitConstants"
]

#: Gauss nodes of the law of ``c = |w_a|^2 = sigma1^2 chi2_{N_i}`` (generalised Gauss–Laguerre: exact moments)
C_NODES = 48
#: ``|g(z) + g(-z)|`` above this (relative to ``max |g|``) on the quadrature nodes: not odd
ODD_TOL = 1e-10
#: grid points of the tabulated linear family (and of the ppf table)
TABLE_POINTS = 3001
#: quantile grid of the swap-pair law (values of ``d_a`` and of ``d_c``; of ``|xi|``)
PAIR_GRID = 160
PAIR_GRID_XI = 48
#: equal-mass knots of the tabulated swap-pair cdf (monotone cubic between them)
PAIR_KNOTS = 201
#: relative tolerance of the linear family's quadrature (its tabulated cdf moves by < 1e-9 against 1e-10)
LINEAR_EPSREL = 1e-8
#: safeguarded Newton/bisection steps of ppf after the table bracket (measured ``|cdf(ppf(p)) - p| < 1e-6``)
PPF_STEPS = 12

#: Mehler orders of ``E g'(u_a) g'(u_c)`` solved by the Gram Dyson equation (:class:`GramDyson`); the
#: higher orders act on the bulk as a scalar (their Gram matrices are near the identity)
DYSON_ORDERS = (1, 2)
#: geometric grid of the Dyson tables, and the relative imaginary part ``eta`` of ``z = x (1 + i eta)``
DYSON_POINTS = 1000
DYSON_ETA = 1e-6
#: Gauss nodes of the law of ``c`` in the Dyson solve (exact moments to order 23; ``h_k(c)`` is smooth in ``c``)
DYSON_C_NODES = 12
#: damped fixed-point iteration of the Dyson equation: steps, damping, tolerance on ``|gamma|``
DYSON_STEPS = 4000
DYSON_DAMP = 0.5
DYSON_TOL = 1e-11


@dataclass(frozen=True)
class UnitConstants:
    """One-unit Gaussian constants at variances ``c`` (arrays of the shape of ``c``).

    ``mu1 = E g'(u)``; ``delta = Var g'(u)`` (bulk); ``nu = E f1**2`` (readout);
    ``cross = E f1 f2``; ``radial_total = E f2**2``; ``readout_slope = cross**2/nu``;
    ``radial = radial_total - readout_slope`` (module docstring for ``f1``, ``f2``);
    ``readout_linear = E g(u) z`` and ``radial_linear = E g'(u) z**2``: the linear parts
    of the readout and radial features (they set the scales of the linear family);
    ``readout_mean = E g(u)`` and ``radial_mean = E g'(u) z``: their degree-0 parts (0 for odd ``g``).
    """

    variance: np.ndarray
    mu1: np.ndarray
    delta: np.ndarray
    nu: np.ndarray
    cross: np.ndarray
    radial_total: np.ndarray
    readout_linear: np.ndarray
    radial_linear: np.ndarray
    readout_mean: np.ndarray
    radial_mean: np.ndarray

    def centred(self) -> UnitConstants:
        """The constants of the centred features ``f1 - E f1`` and ``f2 - E f2``.

        The means (``E g(u)`` and ``E g'(u) z``, zero for odd ``g``) are the degree-0 Hermite parts of
        the readout and radial features; over all units they form one rank-one Gram term, a single
        outlier (the constant mode), and the ``N_h - 1`` others see only the centred Gram.
        """
        m1, m2 = self.readout_mean, self.radial_mean
        nu = np.where(self.nu - m1**2 > ROUNDING_RTOL * self.nu, self.nu - m1**2, 0.0)
        rad = np.where(self.radial_total - m2**2 > ROUNDING_RTOL * self.radial_total, self.radial_total - m2**2, 0.0)
        return UnitConstants(self.variance, self.mu1, self.delta, nu, self.cross - m1 * m2, rad, self.readout_linear,
                             self.radial_linear, np.zeros_like(nu), np.zeros_like(nu))

    @property
    def readout_slope(self) -> np.ndarray:
        return np.divide(self.cross**2, self.nu, out=np.zeros_like(self.nu), where=self.nu > 0)

    @property
    def radial(self) -> np.ndarray:
        """``E f2**2 - e``; exactly 0 for homogeneous polynomials (``f2`` ∝ ``f1``): cancellation
        below ``1e-10 E f2**2`` is rounding and is set to 0 (a genuine atom)."""
        r = self.radial_total - self.readout_slope
        return np.where(r > 1e-10 * self.radial_total, r, 0.0)


def _g_and_gprime(act: Activation, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    g, gp = act.derivatives(torch.from_numpy(np.ascontiguousarray(u, dtype=np.float64)), order=1)[:2]
    return g.detach().numpy().astype(np.float64), gp.detach().numpy().astype(np.float64)


def is_odd(activation: str | Activation) -> bool:
    """Whether ``g(-z) = -g(z)`` on the quadrature nodes (and three times them), to :data:`ODD_TOL`."""
    act = get_activation(activation)
    z0, _ = split_normal_rule()
    z = np.concatenate([z0, 3.0 * z0])
    g_pos, _ = _g_and_gprime(act, z)
    g_neg, _ = _g_and_gprime(act, -z)
    scale = max(1.0, float(np.max(np.abs(g_pos))))
    return bool(np.all(np.isfinite(g_pos)) and np.max(np.abs(g_pos + g_neg)) <= ODD_TOL * scale)


def require_odd(activation: str | Activation) -> Activation:
    """The activation, or a :class:`NearoptError` if it is not odd (the odd-activation formulas of
    ``asymptotic_law(..., dyson=False)`` assume ``g(-z) = -g(z)``)."""
    act = get_activation(activation)
    if not is_odd(act):
        raise NearoptError(
            f"{act.name!r} is not odd: its even part makes the swap term of order one, which only the Dyson bulk "
            "of asymptotic_law (dyson=True) models (docs/asymptotic.md)"
        )
    return act


def unit_constants(activation: str | Activation, variance) -> UnitConstants:
    """:class:`UnitConstants` at each variance ``c > 0`` (:func:`nearopt.gaussian.expectations.variance_rules`: exact to rounding at any ``c`` float64 holds).

    Constants float64 cannot hold (a polynomial at huge variance) are one :class:`NearoptError`.
    """
    act = get_activation(activation)
    c = np.atleast_1d(np.asarray(variance, dtype=np.float64))
    if not np.all(np.isfinite(c) & (c > 0)):
        raise NearoptError("unit variances must be finite and > 0")
    z, wz = variance_rules(c)
    g, gp = _g_and_gprime(act, np.sqrt(c)[:, None] * z)

    def E(f):
        return np.sum(f * wz, axis=1)

    with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported as one error
        mu1, second, g2 = E(gp), E(gp**2), E(g**2)
    if not all(np.all(np.isfinite(x)) for x in (mu1, second, g2)):
        raise NearoptError(
            f"the Gaussian constants of {act.name!r} overflow float64 at unit variances up to {float(c.max()):.3g} "
            "(too large weights for this activation): the asymptotic law cannot be evaluated there; lower sigma1"
        )
    delta = second - mu1**2
    delta = np.where(delta > ROUNDING_RTOL * second, delta, 0.0)  # g' constant (linear g): exact 0, not rounding
    kappa = E(g * z)
    f1 = g - kappa[:, None] * z
    nu = E(f1**2)
    nu = np.where(nu > ROUNDING_RTOL * g2, nu, 0.0)  # g linear: f1 = 0 exactly, the rest is rounding
    phi = gp * z
    mu_rad = E(phi * z)
    f2 = phi - mu_rad[:, None] * z
    rad = E(f2**2)
    rad = np.where(rad > ROUNDING_RTOL * E(phi**2), rad, 0.0)  # g linear: f2 = 0 exactly
    return UnitConstants(c, mu1, delta, nu, E(f1 * f2), rad, kappa, mu_rad, E(g), E(gp * z))


def hermite_coefficients(activation: str | Activation, variance, orders) -> np.ndarray:
    """``h_k(c) = E[g'(sqrt(c) z) He_k(z)]`` at each variance ``c`` and order ``k``: shape ``(len(c), len(orders))``.

    Mehler: ``E g'(u_a) g'(u_c) = sum_k h_k(c_a) h_k(c_c) rho~_ac**k / k!`` (``rho~`` the cosine of
    ``w_a, w_c``), and ``sum_{k >= 1} h_k**2 / k! = Var g'(u) = delta``. For ReLU ``h_0 = 1/2`` and
    ``h_k = He_{k-1}(0) phi(0)``, e.g. ``h_1 = 1/sqrt(2 pi)``; for odd ``g`` the odd orders vanish.
    """
    act = get_activation(activation)
    c = np.atleast_1d(np.asarray(variance, dtype=np.float64))
    z, wz = variance_rules(c)
    _, gp = _g_and_gprime(act, np.sqrt(c)[:, None] * z)
    ks = [int(k) for k in orders]
    if not ks:
        return np.zeros((c.size, 0))
    H = np.stack([hermite_e.hermeval(z, np.eye(k + 1)[k]) for k in ks], -1)  # (len(c), nodes, K)
    return np.einsum("cn,cnk->ck", gp * wz, H)


@dataclass(frozen=True)
class EigenvalueFamily:
    """A family of eigenvalues ``lambda = a_k + b_k t`` (``t ~ chi2_1``) at node ``k`` of ``c`` (weight ``w_k``).

    ``weight`` is its share of the ``P`` eigenvalues; ``a``, ``b``, ``w`` ``(C_NODES,)``,
    ``sum(w) = 1``. Nodes with ``b_k = 0`` are point masses at ``a_k``.
    """

    name: str
    weight: float
    a: np.ndarray
    b: np.ndarray
    w: np.ndarray

    @property
    def _cont(self) -> np.ndarray:
        return self.b > 1e-14 * np.maximum(np.abs(self.a), 1e-300)

    def cdf(self, x: np.ndarray, left: bool = False) -> np.ndarray:
        """The family's cdf at ``x`` (any shape); ``left=True`` gives ``P(lambda < x)``."""
        x = np.asarray(x, dtype=np.float64)
        out = np.zeros(x.shape)
        cont = self._cont
        for ak, bk, wk in zip(self.a[cont], self.b[cont], self.w[cont]):
            y = np.clip((x - ak) / bk, 0.0, None)
            out += wk * special.erf(np.sqrt(0.5 * y))  # chi2_1 cdf
        for ak, wk in zip(self.a[~cont], self.w[~cont]):
            out += wk * ((x > ak) if left else (x >= ak))
        return out

    def pdf(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        out = np.zeros(x.shape)
        cont = self._cont
        with np.errstate(divide="ignore", invalid="ignore"):
            for ak, bk, wk in zip(self.a[cont], self.b[cont], self.w[cont]):
                y = (x - ak) / bk
                yp = np.where(y > 0, y, 1.0)
                out += wk * np.where(y > 0, np.exp(-0.5 * yp) / np.sqrt(2.0 * np.pi * yp), 0.0) / bk
        return out

    def moments(self) -> tuple[float, float]:
        """``(E lambda, E lambda**2)``: ``E t = 1``, ``E t**2 = 3``."""
        a, b, w = self.a, self.b, self.w
        return float(w @ (a + b)), float(w @ (a**2 + 2 * a * b + 3 * b**2))

    @property
    def atoms(self) -> tuple[tuple[float, float], ...]:
        """``(location, mass within the family)`` of the point-mass nodes, merged by location."""
        locs = self.a[~self._cont]
        u, inv = np.unique(locs, return_inverse=True)
        mass = np.bincount(inv, self.w[~self._cont], minlength=u.size)
        return tuple((float(x), float(m)) for x, m in zip(u, mass))


def _chi2_resolvent(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``G(y) = E[t / (t - y - i0)]`` for ``t ~ chi2_1`` and ``y >= 0``, and ``dG/dy``.

    ``G = 1 + y m(y + i0)`` with the Stieltjes transform ``m``: ``Re G = 1 - 2u F(u)``
    (``u = sqrt(y/2)``, ``F`` Dawson's integral: the Hilbert transform of a Gaussian) and
    ``Im G = pi y p(y) = sqrt(pi y / 2) e^{-y/2}`` (``p`` the ``chi2_1`` density).
    """
    y = np.clip(np.asarray(y, dtype=np.float64), 1e-300, None)
    u = np.sqrt(0.5 * y)
    F = special.dawsn(u)
    G = (1.0 - 2.0 * u * F) + 1j * np.sqrt(0.5 * np.pi * y) * np.exp(-0.5 * y)
    # d/dy (2 u F(u)) = (2F + 2u - 4u^2 F) / (4u), using F' = 1 - 2uF
    dre = -(2.0 * F + 2.0 * u - 4.0 * u * u * F) / (4.0 * u)
    dim = np.sqrt(0.5 * np.pi) * np.exp(-0.5 * y) * (0.5 / np.sqrt(y) - 0.5 * np.sqrt(y))
    return G, dre + 1j * dim


@dataclass(frozen=True)
class Interlacing:
    """Finite-``N_h`` correction of the bulk for the rank-one part ``b b^T`` of ``E g'(u_a) g'(u_c)``.

    The bulk of ``H`` on the first-layer weights is ``M ⊗ I_{N_i}`` with
    ``M = diag(v)(b b^T + Delta) diag(v)`` (step 2 of the derivation). In each of its ``N_i``
    copies the ``N_h - 1`` bulk eigenvalues interlace the ``d_a = sigma2**2 delta(c_a) t_a``
    (``t_a = v_a**2 / sigma2**2``) pushed up by ``z z^T``, ``z_a = v_a b(c_a)``. By Sylvester's
    inertia, ``#{lambda < x} = #{d < x} - 1[f(x) < 0]`` with the secular function
    ``f(x) = 1 + sum_a z_a**2 / (d_a - x)``. For many units the sum is a stable (Cauchy) law
    whose location and scale are the real and imaginary parts of ``N_h A(x)``,
    ``A(x) = E[z**2 / (d - x - i0)] = E_c[(b**2/delta) G(x / (sigma2**2 delta))]``
    (:func:`_chi2_resolvent`), so below the outlier ``P(f(x) < 0) = arg A(x) / pi =: pi(x)``
    and the expected cdf of those eigenvalues is ``(N_h F(x) - pi(x)) / (N_h - 1)``.
    Relative to the bulk family's ``F`` this adds ``weight * (F - pi)`` to the law's cdf, a
    signed measure of total mass 0 (``weight = N_i / P``). Exact for the ``N_i - N_h``
    copies of the complement block; in the reduced block (``N_h`` copies) the low-rank and swap
    terms act as well, and the same correction is kept there (measured: docs/asymptotic.md).
    """

    weight: float
    n_hidden: int
    scale: np.ndarray  # (C_NODES,) sigma2**2 delta(c_k)
    ratio: np.ndarray  # (C_NODES,) b(c_k)**2 / delta(c_k)
    w: np.ndarray  # (C_NODES,) weights of the c nodes
    bulk: EigenvalueFamily

    def _A(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        A = np.zeros(x.shape, dtype=np.complex128)
        dA = np.zeros(x.shape, dtype=np.complex128)
        for sk, rk, wk in zip(self.scale, self.ratio, self.w):
            G, dG = _chi2_resolvent(x / sk)
            A += wk * rk * G
            dA += wk * rk * dG / sk
        return A, dA

    def _bounds(self, F: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact bounds on ``P(f(x) < 0)`` from the ``N_h`` iid ``d_a`` of cdf ``F``: ``f < 0`` needs some
        ``d_a < x`` and holds when all are (every term negative); the Cauchy form misses both tails."""
        return F**self.n_hidden, 1.0 - (1.0 - F) ** self.n_hidden

    def pi(self, x) -> np.ndarray:
        """``P(f(x) < 0)``: ``arg A(x) / pi`` within the exact bounds of :meth:`_bounds`."""
        x = np.asarray(x, dtype=np.float64)
        raw = np.where(x > 0, np.angle(self._A(np.where(x > 0, x, 1.0))[0]) / np.pi, 0.0)
        lo, hi = self._bounds(self.bulk.cdf(x))
        return np.clip(raw, lo, hi)

    def cdf(self, x) -> np.ndarray:
        """Contribution to the law's cdf: ``weight (F_bulk - pi)`` (any shape)."""
        x = np.asarray(x, dtype=np.float64)
        return self.weight * (self.bulk.cdf(x) - self.pi(x))

    def pdf(self, x) -> np.ndarray:
        """Its derivative: ``weight (f_bulk - pi')``, ``pi' = Im(A'/A) / pi`` (or the active bound's derivative)."""
        x = np.asarray(x, dtype=np.float64)
        xp = np.where(x > 0, x, 1.0)
        A, dA = self._A(xp)
        raw, d_raw = np.angle(A) / np.pi, np.imag(dA / A) / np.pi
        F, f = self.bulk.cdf(xp), self.bulk.pdf(xp)
        lo, hi = self._bounds(F)
        n = self.n_hidden
        d_pi = np.where(raw < lo, n * F ** (n - 1) * f, np.where(raw > hi, n * (1.0 - F) ** (n - 1) * f, d_raw))
        return np.where(x > 0, self.weight * (f - d_pi), 0.0)

    def moments(self) -> tuple[float, float]:
        """Contributions ``(weight int x d(F - pi), weight int x**2 d(F - pi))``, by quadrature.

        ``int x^k d(F - pi) = k int x^(k-1) (pi - F) dx``; ``pi - F`` decays like ``e^{-y/2}``.
        """
        hi = float(np.max(self.scale)) * 200.0
        x = np.concatenate([[0.0], np.geomspace(1e-12 * hi, hi, 20_001)])
        gap = self.pi(x) - self.bulk.cdf(x)
        return (self.weight * float(integrate.trapezoid(gap, x)), self.weight * float(integrate.trapezoid(2.0 * x * gap, x)))


class SwapPairs:
    """Finite-size law of the bulk eigenvalues of the reduced block under the swap term.

    For odd ``g`` the swap term of ``H`` couples ``e_a ⊗ ŵ_c`` with ``e_c ⊗ ŵ_a`` (``a != c``) with
    ``kappa_ac = v_a v_c c_a c_c E g'''(u_a) E g'''(u_c) rho~_ac`` (first Mehler order of
    ``E[g''(u_a) g''(u_c)]``; ``rho~`` the cosine of ``w_a, w_c``, variance ``1/N_i``). On that pair
    the bulk is the 2 x 2 matrix ``[[d_a, kappa], [kappa, d_c]]``, so

        lambda± = (d_a + d_c)/2 ± sqrt((d_a - d_c)**2/4 + r**2 d_a d_c xi**2 / N_i),

    ``d ~ F`` (the bulk family), ``xi ~ N(0, 1)`` and ``r = gamma/delta`` at ``c = sigma1**2 N_i``,
    ``gamma = c**2 (E g''')**2 = E[g'(u)(z**2 - 1)]**2`` (Stein: ``c E g''' = E[g'(u) He_2(z)]``).
    ``H`` is positive semi-definite, while ``lambda- < 0`` when ``r**2 xi**2 > N_i``: there the
    first-order pair model breaks down (small ``N_i``), and ``xi`` is conditioned on
    ``|xi| < sqrt(N_i)/r`` (for erf ``r = 1.62``: ``|xi| > 2.1``, a mass 0.03, at ``N_i = 12``). The law of
    ``lambda±`` is tabulated from a deterministic quantile grid (:data:`PAIR_GRID` values of
    ``d_a`` and of ``d_c``, :data:`PAIR_GRID_XI` of ``|xi|``). It replaces ``F`` for the bulk of
    the reduced copies: the law's cdf gains ``weight (F_pair - F)``, a signed part of mass 0 and
    mean 0 (``lambda+ + lambda- = d_a + d_c``).
    """

    def __init__(self, weight: float, ratio: float, n_inputs: int, bulk: EigenvalueFamily):
        self.weight, self.ratio, self.bulk = float(weight), float(ratio), bulk
        scale = float(np.max(bulk.b))
        grid = np.concatenate([[0.0], np.geomspace(1e-14 * scale, 80.0 * scale, 6001)])
        F = np.maximum.accumulate(bulk.cdf(grid))
        u = (np.arange(PAIR_GRID) + 0.5) / PAIR_GRID
        d = np.interp(u, F, grid)  # quantiles of the bulk family
        # |xi| quantiles, truncated where the first-order pair model would give lambda- < 0
        top = 2.0 * stats.norm.cdf(np.sqrt(n_inputs) / self.ratio) - 1.0 if self.ratio > 0 else 1.0
        xi = stats.norm.ppf(0.5 + 0.5 * top * (np.arange(PAIR_GRID_XI) + 0.5) / PAIR_GRID_XI)
        da, dc = d[:, None, None], d[None, :, None]
        mid = 0.5 * (da + dc)
        rad = np.sqrt(0.25 * (da - dc) ** 2 + (self.ratio**2 / n_inputs) * da * dc * xi[None, None, :] ** 2)
        lam = np.sort(np.concatenate([np.maximum(mid - rad, 0.0).ravel(), (mid + rad).ravel()]))  # max: rounding only
        self.second = float(np.mean(lam**2) - np.mean(d**2))  # E lambda^2 - E d^2 on the grid
        # knots at equal-mass quantiles: the grid's lattice of values would make a finer table's slope spiky
        knots = lam[np.round(np.linspace(0, lam.size - 1, PAIR_KNOTS)).astype(np.int64)]
        x, first = np.unique(np.concatenate([[0.0], knots]), return_index=True)
        Fp = np.concatenate([[0.0], np.linspace(0.0, 1.0, PAIR_KNOTS)])[first]
        Fp[0] = 0.0
        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
            self._F = PchipInterpolator(x, Fp, extrapolate=False)
            self._f = self._F.derivative()
        self._hi = float(x[-1])

    def _pair_cdf(self, x: np.ndarray) -> np.ndarray:
        return np.where(x >= self._hi, 1.0, np.nan_to_num(self._F(np.clip(x, 0.0, self._hi)), nan=0.0))

    def cdf(self, x) -> np.ndarray:
        """Contribution to the law's cdf, ``weight (F_pair - F)`` (any shape)."""
        x = np.asarray(x, dtype=np.float64)
        return self.weight * (self._pair_cdf(x) - self.bulk.cdf(x))

    def pdf(self, x) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        f = np.where((x > 0) & (x < self._hi), np.nan_to_num(self._f(np.clip(x, 0.0, self._hi)), nan=0.0), 0.0)
        return self.weight * (np.clip(f, 0.0, None) - self.bulk.pdf(x))

    def moments(self) -> tuple[float, float]:
        """Contributions to ``(E lambda, E lambda**2)``: ``(0, weight (E lambda±**2 - E d**2))``."""
        return 0.0, self.weight * self.second


def _chi2_stieltjes(y: np.ndarray) -> np.ndarray:
    """``m(y) = E[1/(t - y)]`` for ``t ~ chi2_1`` and complex ``y`` off ``[0, inf)``.

    With ``t = xi**2`` and ``s = sqrt(y)``, ``Im s > 0``: ``m = E[1/(xi - s)] / s`` and
    ``E[1/(xi - s)] = i sqrt(pi/2) w(s/sqrt 2)`` (``w`` the Faddeeva function).
    """
    s = np.sqrt(np.asarray(y, dtype=np.complex128))
    s = np.where(s.imag < 0, -s, s)
    return 1j * np.sqrt(0.5 * np.pi) * special.wofz(s / np.sqrt(2.0)) / s


class GramDyson:
    """Bulk law of one copy of ``M = sum_k Y_k Y_k^T + diag(r)`` (``N_h x N_h``) by the vector Dyson equation.

    Row ``a`` of ``Y_k`` has squared norm ``s_{a,k} = sigma2**2 t_a coef_k(c_a)`` (``t_a ~ chi2_1``) and
    is spread isotropically over ``D_k`` dimensions; ``r_a = sigma2**2 t_a rest(c_a)``. The resolvent's
    diagonal solves

        G_aa(z) = 1 / (r_a - z + sum_k s_{a,k} / (1 + gamma_k(z))),   gamma_k = (1/D_k) sum_c s_{c,k} G_cc,

    so ``G(t, c; z) = 1 / (sigma2**2 t beta(c; z) - z)`` with ``beta = rest + sum_k coef_k / (1 + gamma_k)``.
    The average over ``t`` is closed form (:func:`_chi2_stieltjes`), the one over ``c`` the Gauss rule,
    and ``gamma_k = ratio_k E_c[coef_k / beta * (1 + y m(y))]``, ``y = z / (sigma2**2 beta)``,
    ``ratio_k = N_h / D_k``: one complex scalar per order, solved by damped fixed-point iteration on
    ``z = x (1 + i eta)``. The density ``Im E G / pi`` is tabulated and integrated to a cdf; ``atom`` is
    the mass at 0 (``1 - sum_k 1/ratio_k`` when ``rest = 0`` and the orders have fewer dimensions than rows).

    Interlacing with the rank-one part ``z z^T``, ``z_a = v_a sqrt(outlier(c_a))`` (:class:`Interlacing`,
    with ``delta`` replaced by the complex ``beta``): ``pi(x) = arg A(x) / pi``,
    ``A = E_c[outlier / beta * (1 + y m(y))]``, clipped to ``[F**N_h, 1 - (1 - F)**N_h]`` and kept such that
    ``slots F - pi`` (the count of a copy's bulk eigenvalues below ``x``; ``slots`` defaults to ``N_h``) never decreases
    nor exceeds ``slots - 1``.
    """

    def __init__(self, scale: float, c_weights: np.ndarray, rest: np.ndarray, coef: np.ndarray, ratio: np.ndarray,
                 outlier: np.ndarray, n_hidden: int, atom: float = 0.0, slots: float | None = None):
        self.scale, self.n_hidden, self.atom = float(scale), int(n_hidden), float(atom)
        self.ratio = np.asarray(ratio, dtype=np.float64)
        top = float(np.max(rest + coef.sum(1)))
        hi = 60.0 * self.scale * top * (1.0 + np.sqrt(max(1.0, float(self.ratio.max(initial=0.0))))) ** 2
        x = np.geomspace(1e-10 * self.scale * top, hi, DYSON_POINTS)
        z = x * (1.0 + 1j * DYSON_ETA)
        beta, self.steps, self.residual = self._solve(z, c_weights, rest, coef)
        y = z[:, None] / (self.scale * beta)
        m = _chi2_stieltjes(y)
        dens = np.clip((c_weights[None, :] * m / (self.scale * beta)).sum(1).imag / np.pi, 0.0, None)
        fx = dens * x  # d F / d log x
        cum = np.concatenate([[0.0], np.cumsum(0.5 * (fx[1:] + fx[:-1]) * np.diff(np.log(x)))]) + 2.0 * fx[0]  # x^-1/2 below x[0]
        self.mass = float(cum[-1])  # measured against 1 - atom: the tables' quadrature error
        F = self.atom + (1.0 - self.atom) * cum / cum[-1]
        A = (c_weights[None, :] * outlier[None, :] * (1.0 + y * m) / beta).sum(1)
        if np.any(outlier > 0):
            pi = np.clip(np.angle(A) / np.pi, F**self.n_hidden, 1.0 - (1.0 - F) ** self.n_hidden)
            # a copy's count of bulk eigenvalues below x, slots F - pi, cannot decrease; the Cauchy form of pi
            # can outrun it far in the tail, where it is rearranged
            n = float(self.n_hidden if slots is None else slots)
            pi = np.maximum(pi, 1.0 - n * (1.0 - F))  # and it never exceeds the n - 1 bulk eigenvalues of a copy
            pi = n * F - np.maximum.accumulate(n * F - pi)
        else:  # no rank-one part: nothing to interlace
            pi = F.copy()
        grid = np.concatenate([[0.0], x])
        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
            self._F = PchipInterpolator(grid, np.concatenate([[self.atom], F]), extrapolate=False)
            self._pi = PchipInterpolator(grid, np.concatenate([[0.0], pi]), extrapolate=False)
            self._f, self._dpi = self._F.derivative(), self._pi.derivative()
        self.grid = grid

    def _solve(self, z: np.ndarray, cw: np.ndarray, rest: np.ndarray, coef: np.ndarray):
        """``beta(c; z)`` ``(n_z, n_c)`` from the fixed point in ``gamma`` ``(n_z, K)``; steps and final change."""
        gam = np.zeros((z.size, coef.shape[1]), dtype=np.complex128)
        act = np.arange(z.size)  # only the points not yet converged are iterated
        err, step = 0.0, 0
        for step in range(1, DYSON_STEPS + 1):
            g = gam[act]
            beta = rest[None, :] + (1.0 / (1.0 + g)) @ coef.T
            y = z[act, None] / (self.scale * beta)
            e = (1.0 + y * _chi2_stieltjes(y)) / beta
            new = self.ratio[None, :] * ((cw[None, :] * e) @ coef)
            change = np.max(np.abs(new - g), axis=1, initial=0.0)
            gam[act] = (1.0 - DYSON_DAMP) * g + DYSON_DAMP * new
            err = max(err, float(change.max(initial=0.0))) if step == DYSON_STEPS else err
            act = act[change >= DYSON_TOL]
            if act.size == 0:
                break
        return rest[None, :] + (1.0 / (1.0 + gam)) @ coef.T, step, err

    def _eval(self, fn, x, hi_value: float) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        out = np.nan_to_num(fn(np.clip(x, 0.0, self.grid[-1])), nan=0.0)
        return np.where(x < 0, 0.0, np.where(x > self.grid[-1], hi_value, out))

    def cdf(self, x) -> np.ndarray:
        return self._eval(self._F, x, 1.0)

    def pdf(self, x) -> np.ndarray:
        """Density of the continuous part (derivative of the table)."""
        x = np.asarray(x, dtype=np.float64)
        return np.where(x > 0, np.clip(self._eval(self._f, x, 0.0), 0.0, None), 0.0)

    def pi(self, x) -> np.ndarray:
        return self._eval(self._pi, x, 1.0)

    def dpi(self, x) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        return np.where(x > 0, self._eval(self._dpi, x, 0.0), 0.0)

    def interlacing_gain(self) -> float:
        """Per copy, ``int x d(F - pi) = int (pi - F) dx``: what the bulk gains from the rank-one part."""
        g = self.grid
        return float(integrate.trapezoid(self.pi(g) - self.cdf(g), g))


class DysonBulk:
    """The bulk of the law from :class:`GramDyson`, as a signed correction of the bulk family (total mass 0).

    Copies (docs/asymptotic.md): ``n_c = max(N_i - N_h, 0)`` copies of the complement block, each with
    ``N_h - 1`` bulk eigenvalues interlaced with its outlier (cdf ``N_h F_c - pi_c``); and
    ``n_r = min(N_i, N_h)`` reduced copies, holding the rest of the bulk, whose Mehler order-``k`` features
    live in ``Sym^{k+1}`` of the ``n_r``-dimensional row space (``ratio_k = N_h n_r / C(n_r + k, k + 1)``),
    also interlaced. The contribution to the law's cdf is

        (n_c (N_h F_c - pi_c) + (n_bulk - n_c (N_h - 1)) F_r + n_r (F_r - pi_r) - n_bulk F) / P.
    """

    def __init__(self, complement: GramDyson | None, reduced: GramDyson, n_inputs: int, n_hidden: int, n_bulk: int,
                 n_params: int, bulk: EigenvalueFamily):
        self.complement, self.reduced, self.bulk = complement, reduced, bulk
        self.n_c = max(n_inputs - n_hidden, 0) if complement is not None else 0
        self.n_r = min(n_inputs, n_hidden)
        self.n_hidden, self.n_bulk, self.n_params = n_hidden, n_bulk, n_params
        self.n_red_bulk = n_bulk - self.n_c * (n_hidden - 1)
        self.gain = (self.n_c * complement.interlacing_gain() if complement is not None else 0.0) + self.n_r * reduced.interlacing_gain()
        hi = max(reduced.grid[-1], complement.grid[-1] if complement is not None else 0.0)
        self._grid = np.concatenate([[0.0], np.geomspace(1e-12 * hi, hi, 6001)])
        d = self.cdf(self._grid)
        self._moments = (-float(integrate.trapezoid(d, self._grid)), -float(integrate.trapezoid(2.0 * self._grid * d, self._grid)))

    def _combine(self, x, value: str, interlace: str) -> np.ndarray:
        """The correction's ``value`` (``cdf`` or ``pdf``) at ``x``, with the interlacing term ``interlace``
        (``pi`` or its derivative ``dpi``) of each copy."""
        x = np.asarray(x, dtype=np.float64)
        r = self.reduced
        out = (self.n_red_bulk * getattr(r, value)(x) + self.n_r * (getattr(r, value)(x) - getattr(r, interlace)(x))
               - self.n_bulk * getattr(self.bulk, value)(x))
        if self.complement is not None and self.n_c > 0:
            c = self.complement
            out = out + self.n_c * (self.n_hidden * getattr(c, value)(x) - getattr(c, interlace)(x))
        return out / self.n_params

    def cdf(self, x) -> np.ndarray:
        return self._combine(x, "cdf", "pi")

    def pdf(self, x) -> np.ndarray:
        return self._combine(x, "pdf", "dpi")

    @property
    def atoms(self) -> tuple[tuple[float, float], ...]:
        """The zero modes of the reduced copies' Gram part (``rest = 0``), as a mass in the law."""
        m = self.reduced.atom * (self.n_red_bulk + self.n_r) / self.n_params
        return ((0.0, m),) if m > 0 else ()

    def moments(self) -> tuple[float, float]:
        """Contributions ``(int x dDelta, int x**2 dDelta)`` of the correction ``Delta`` (quadrature of its cdf)."""
        return self._moments

class AsymptoticLaw(SpectralLaw):
    """Law of one pooled population-Hessian eigenvalue of a random teacher at its optimum.

    A mixture of families (module docstring): ``bulk``, ``radial``, ``readout``
    (each an average over the exact law of ``c = |w_a|^2`` of ``a(c) + b(c) chi2_1``),
    ``constant`` (``g`` not odd: one eigenvalue) and ``linear`` (``mu1**2`` times the linear-network law
    :class:`~nearopt.theory.distributions.ChiSquareMPConvolution` with its MP part
    rescaled to ``E d_a``, tabulated), with the bulk replaced by the :class:`DysonBulk` (default).
    A :class:`~nearopt.theory.distributions.SpectralLaw`: ``pdf`` (density of the continuous
    part; it integrates to ``1 - atom_mass``), ``cdf``, ``cdf_left``, ``sf``, ``ppf``
    (left-continuous inverse), ``rvs``, ``mean``, ``var``, ``std``, ``support`` and the
    property ``atoms``. Vectorised: ``cdf`` at ``1e5`` points takes well under a second.

    Attributes
    ----------
    n_inputs, n_hidden, n_params : int
    activation : Activation
    families : list[EigenvalueFamily]  (the linear family is listed with empty nodes)
    constants : UnitConstants at the ``c`` nodes
    dyson : DysonBulk or None
        The Dyson bulk (``None`` with ``dyson=False``, or without a bulk).
    interlacing : Interlacing or None
        The first-order interlacing correction (``dyson=False`` only; ``None`` when switched off or without a bulk).
    swap_pairs : SwapPairs or None
        The swap-pair correction (``dyson=False`` only; ``None`` when switched off or when ``E g''' = 0``).
    linear_shift : float
        Shift of the linear family that keeps the trace with the interlacing correction.
    scaled_limit : frozen ``scipy.stats.chi2`` or None
        The ``N -> inf`` law of ``lambda / sigma2**2`` (``= N_h lambda`` by default):
        ``delta(c0) chi2_1`` with ``c0 = sigma1**2 N_i`` (``None`` when ``delta = 0``, i.e. ``g`` linear).
    """

    def __init__(self, activation, n_inputs: int, n_hidden: int, sigma1: float | None = None, sigma2: float | None = None,
                 interlacing: bool = True, swap_pairs: bool = True, dyson: bool = True, dyson_orders=DYSON_ORDERS):
        self.n_inputs = require_positive_int(n_inputs, "N_i")
        self.n_hidden = require_positive_int(n_hidden, "N_h")
        self.activation = get_activation(activation)
        self.sigma1 = _scale(sigma1, self.n_inputs, "sigma1")
        self.sigma2 = _scale(sigma2, self.n_hidden, "sigma2")
        ni, nh = self.n_inputs, self.n_hidden
        self.n_params = nh * ni + nh
        n_bulk = self.n_params - ni - 2 * nh
        if n_bulk < 0:
            raise NearoptError(f"the family decomposition needs N_h N_i >= N_i + N_h (got N_i={ni}, N_h={nh})")
        s2 = self.sigma2**2
        # c = 2 sigma1^2 y, y ~ Gamma(N_i/2): Gauss rule of the Gamma law (no overflow at any N_i)
        y, wc = gamma_gauss_rule(0.5 * ni, C_NODES)
        c = 2.0 * self.sigma1**2 * y
        self.c_nodes, self.c_weights = c, wc
        raw = unit_constants(self.activation, c)
        k = raw.centred() if dyson else raw
        self.constants = k
        zeros = np.zeros_like(c)
        P = self.n_params
        # the degree-0 parts of the readout and radial features: one rank-one outlier, |m|^2 = sum_a (E g)^2 + v_a^2 (E g' z)^2
        const = float(nh * (wc @ raw.readout_mean**2 + s2 * (wc @ raw.radial_mean**2))) if dyson else 0.0
        scale = float(wc @ (raw.nu + raw.readout_linear**2) + s2 * (wc @ (raw.radial_total + raw.radial_linear**2)))
        has_const = const > ROUNDING_RTOL * nh * scale  # odd g: E g = E g' z = 0 up to rounding
        self.families = [
            EigenvalueFamily("bulk", n_bulk / P, zeros, s2 * k.delta, wc),
            EigenvalueFamily("radial", nh / P, zeros, s2 * k.radial, wc),
            EigenvalueFamily("readout", (nh - has_const) / P, k.nu, s2 * k.readout_slope, wc),
        ]
        if has_const:
            self.families.append(EigenvalueFamily("constant", 1.0 / P, np.array([const]), np.zeros(1), np.ones(1)))
        # linear family: spec(s~ I + sum_a d_a w^_a w^_a^T), s~ = sum_a v_a^2 mu1_a^2 and
        # d_a = v_a^2 (mu_rad^2 - mu1^2) + kappa^2 (docs/asymptotic.md §4), with d_a replaced
        # by its mean: a * (chi2 part) + MP part of the right scale
        self.mu1_sq = float(wc @ k.mu1**2)
        d_mean = float(s2 * (wc @ (k.radial_linear**2 - k.mu1**2)) + wc @ k.readout_linear**2)
        self.linear_weight = ni / P
        sigma1_lin = np.sqrt(d_mean / (self.mu1_sq * ni)) if self.mu1_sq > 0 and d_mean > 0 else self.sigma1
        self.linear_law = ChiSquareMPConvolution(ni, nh, sigma1_lin, self.sigma2, epsrel=LINEAR_EPSREL)
        delta0 = float(unit_constants(self.activation, self.sigma1**2 * ni).delta[0])
        self.scaled_limit = stats.chi2(1, scale=delta0) if delta0 > 0 else None  # None: g linear, no bulk
        self.dyson = self._dyson(tuple(dyson_orders), interlacing) if dyson and n_bulk > 0 and np.all(k.delta > 0) else None
        copies = ni if interlacing and self.dyson is None else 0
        self.interlacing = self._interlacing(copies / P) if copies > 0 and np.all(k.delta > 0) and np.all(k.mu1 != 0) else None
        # tr M is fixed: what interlacing adds to a copy's N_h - 1 bulk eigenvalues its top one (a linear-family
        # eigenvalue) loses, so the linear family is shifted by minus the per-copy gain
        # and without interlacing each copy's outlier still carries its share E d = sigma2^2 E delta of tr M
        # (the family law counts N_h - 1 bulk eigenvalues per copy of trace N_h E d + |v∘b|^2)
        self.outlier_shift = s2 * float(wc @ k.delta) if self.mu1_sq > 0 else 0.0
        self._inter_moments = self.interlacing.moments() if self.interlacing is not None else (0.0, 0.0)
        self.linear_shift = self.outlier_shift - (self._inter_moments[0] / self.interlacing.weight if self.interlacing is not None else 0.0)
        if self.dyson is not None:
            self._inter_moments = self.dyson.moments()
            self.linear_shift = self.outlier_shift - self.dyson.gain / ni
        self.swap_pairs = self._swap_pairs() if swap_pairs and n_bulk > 0 and self.dyson is None else None
        self._tabulate_linear()
        self._ppf_table = None

    def _dyson(self, orders: tuple[int, ...], interlacing: bool) -> DysonBulk:
        """:class:`DysonBulk` with the Mehler ``orders`` (``k >= 1``) solved, the others acting as a scalar.

        Complement copies: ``D_k = C(N_i + k - 1, k)`` (the span of ``w^_a^{⊗k}``), ``ratio_k = N_h / D_k``.
        Reduced copies: the order-``k`` features ``S(w^_a^{⊗k} ⊗ x_a)`` of the ``N_h n_r`` reduced
        directions span ``Sym^{k+1}`` of the row space, ``D_k = C(n_r + k, k + 1)``. Orders with
        ``h_k = 0`` (the odd orders of an odd ``g``) are dropped.
        """
        if any(int(o) < 1 for o in orders) or len({int(o) for o in orders}) != len(orders):
            raise NearoptError(f"dyson_orders must be distinct integers >= 1, got {orders}")
        ni, nh = self.n_inputs, self.n_hidden
        y, wc = gamma_gauss_rule(0.5 * ni, DYSON_C_NODES)  # a coarser rule of the law of c: the solve's cost is per node
        s2, c = self.sigma2**2, 2.0 * self.sigma1**2 * y
        raw = unit_constants(self.activation, c)
        k = raw.centred()
        ks = [int(o) for o in orders]
        h = hermite_coefficients(self.activation, c, ks) if ks else np.zeros((c.size, 0))
        coef = h**2 / special.factorial(np.array(ks, dtype=np.float64))[None, :] if ks else h
        keep = np.max(coef, axis=0) > ROUNDING_RTOL * float(np.max(k.delta)) if ks else np.zeros(0, bool)
        ks, coef = [o for o, kp in zip(ks, keep) if kp], coef[:, keep]
        rest = k.delta - coef.sum(1)
        rest = np.where(rest > 1e-10 * k.delta, rest, 0.0)  # g' a polynomial of degree <= max order: exactly 0
        outlier = k.mu1**2 if interlacing else np.zeros_like(c)
        nr = min(ni, nh)
        ratio_r = np.array([nh * nr / special.comb(nr + o, o + 1) for o in ks])
        atom = max(0.0, 1.0 - float(np.sum(1.0 / ratio_r))) if np.all(rest == 0) and ks else 0.0
        n_bulk = self.n_params - ni - 2 * nh
        n_c = max(ni - nh, 0)
        reduced = GramDyson(s2, wc, rest, coef, ratio_r, outlier, nh, atom, slots=(n_bulk - n_c * (nh - 1) + nr) / nr)
        complement = None
        if ni > nh:
            ratio_c = np.array([nh / special.comb(ni + o - 1, o) for o in ks])
            complement = GramDyson(s2, wc, rest, coef, ratio_c, outlier, nh)
        return DysonBulk(complement, reduced, ni, nh, n_bulk, self.n_params, self.families[0])

    def _interlacing(self, weight: float) -> Interlacing:
        """:class:`Interlacing` on the same ``c`` nodes as the families."""
        k = self.constants
        return Interlacing(weight, self.n_hidden, self.sigma2**2 * k.delta, k.mu1**2 / k.delta, self.c_weights, self.families[0])

    def _swap_pairs(self) -> SwapPairs | None:
        """:class:`SwapPairs` for the bulk of the ``min(N_i, N_h)`` reduced copies (``None`` when ``E g''' = 0``)."""
        c0 = self.sigma1**2 * self.n_inputs
        z, wz = variance_rules(np.array([c0]))
        _, gp = _g_and_gprime(self.activation, np.sqrt(c0) * z)
        gamma = float(np.sum(gp * (z * z - 1.0) * wz)) ** 2
        delta = float(unit_constants(self.activation, c0).delta[0])
        if delta <= 0 or gamma <= 1e-14 * delta**2:
            return None
        n_bulk = self.n_params - self.n_inputs - 2 * self.n_hidden
        weight = n_bulk * min(self.n_inputs, self.n_hidden) / self.n_inputs / self.n_params
        return SwapPairs(weight, gamma / delta, self.n_inputs, self.families[0])

    def family_law(self) -> AsymptoticLaw:
        """The same law without the Dyson bulk, interlacing and swap-pair corrections, sharing the tables (no new quadrature)."""
        out = copy.copy(self)
        out.swap_pairs, out._ppf_table = None, None
        if self.dyson is not None:
            out.dyson, out._inter_moments = None, (0.0, 0.0)
            if self._lin is not None:
                out._lin_range = (self._lin_range[0] - self.linear_shift + self.outlier_shift, self._lin_range[1] - self.linear_shift + self.outlier_shift)
            out.linear_shift = self.outlier_shift
        if self.interlacing is not None:
            out.interlacing, out._inter_moments, out._ppf_table = None, (0.0, 0.0), None
            if self._lin is not None:
                out._lin_range = (self._lin_range[0] - self.linear_shift + self.outlier_shift, self._lin_range[1] - self.linear_shift + self.outlier_shift)
            out.linear_shift = self.outlier_shift
        return out

    def __repr__(self) -> str:
        return f"AsymptoticLaw({self.activation.name!r}, n_inputs={self.n_inputs}, n_hidden={self.n_hidden})"

    # ------------------------------------------------------------ linear family
    def _tabulate_linear(self) -> None:
        """The range of ``mu1**2 (s + m)`` and its table's parameters: its exact cdf/pdf cost ~0.1-1 s per call (quad_vec)."""
        if self.mu1_sq <= 0:
            self._lin = None
            return
        law = self.linear_law
        lo = float(law.a)
        # cover both components: s alone (mass 1 - 1/q) and s + mu, mu up to the MP edge
        hi = float(max(law.mean() + 14.0 * law.std(), law.chi2.isf(1e-15) + law.mp.bulk_edges[1]))
        self._lin_range = (lo * self.mu1_sq + self.linear_shift, hi * self.mu1_sq + self.linear_shift)
        self._lin_args = (law.n_inputs, law.n_hidden, law.sigma1, law.sigma2, lo, hi)
        self._lin = law

    @property
    def _lin_cdf(self) -> TabulatedCDF:
        """The linear family's table (density: its derivative), built on first use: ``mean``/``var`` do not need it."""
        return _linear_table(*self._lin_args)

    def _linear_cdf(self, x: np.ndarray) -> np.ndarray:
        if self._lin is None:
            return (x >= 0).astype(np.float64)
        return self._lin_cdf((x - self.linear_shift) / self.mu1_sq)

    def _linear_pdf(self, x: np.ndarray) -> np.ndarray:
        if self._lin is None:
            return np.zeros(np.shape(x))
        return self._lin_cdf.density((np.asarray(x, dtype=np.float64) - self.linear_shift) / self.mu1_sq) / self.mu1_sq

    # ------------------------------------------------------------ scipy-style API
    @property
    def atoms(self) -> tuple[tuple[float, float], ...]:
        """``(location, mass)`` of the point masses of the whole law (e.g. zero modes of ``z**3``)."""
        out: dict[float, float] = {}
        for fam in self.families:
            for loc, m in fam.atoms:
                out[loc] = out.get(loc, 0.0) + fam.weight * m
        if self._lin is None:
            out[0.0] = out.get(0.0, 0.0) + self.linear_weight
        for loc, m in (self.dyson.atoms if self.dyson is not None else ()):
            out[loc] = out.get(loc, 0.0) + m
        return tuple(sorted(out.items()))

    def pdf(self, x):
        """Density of the continuous part (integrates to ``1 -`` the atom masses); NaN at NaN, 0 at ``±inf``."""
        return self._on_reals(self._pdf_real, x, 0.0, 0.0)

    def cdf(self, x):
        """``P(lambda <= x)`` (atoms included); NaN at NaN, exactly 0 and 1 at ``-inf`` and ``+inf``."""
        return self._on_reals(self._cdf_real, x, 0.0, 1.0)

    def cdf_left(self, x):
        """``P(lambda < x)`` (differs from :meth:`cdf` at atoms only)."""
        return self._on_reals(self._cdf_left_real, x, 0.0, 1.0)

    def _pdf_real(self, x):
        x = np.asarray(x, dtype=np.float64)
        out = sum(f.weight * f.pdf(x) for f in self.families) + self.linear_weight * self._linear_pdf(x)
        for corr in (self.interlacing, self.swap_pairs, self.dyson):
            out = out if corr is None else out + corr.pdf(x)
        return np.clip(out, 0.0, None)

    def _cdf_real(self, x):
        x = np.asarray(x, dtype=np.float64)
        out = sum(f.weight * f.cdf(x) for f in self.families) + self.linear_weight * self._linear_cdf(x)
        return np.clip(out + self._corrections(x), 0.0, 1.0)

    def _cdf_left_real(self, x):
        x = np.asarray(x, dtype=np.float64)
        lin = self._linear_cdf(x) if self._lin is not None else (x > 0).astype(np.float64)
        out = sum(f.weight * f.cdf(x, left=True) for f in self.families) + self.linear_weight * lin
        for loc, mass in (self.dyson.atoms if self.dyson is not None else ()):
            out = out - mass * (x == loc)
        return np.clip(out + self._corrections(x), 0.0, 1.0)

    def _corrections(self, x: np.ndarray):
        """Cdf contributions of the interlacing and swap-pair corrections (continuous, zero total mass)."""
        return sum((c.cdf(x) for c in (self.interlacing, self.swap_pairs, self.dyson) if c is not None), 0.0)

    def support(self) -> tuple[float, float]:
        return 0.0, np.inf

    def mean(self) -> float:
        m1 = sum(f.weight * f.moments()[0] for f in self.families)
        m1 += self._inter_moments[0]
        return float(m1 + self.linear_weight * (self.mu1_sq * self.linear_law.mean() + self.linear_shift))

    def _second(self) -> float:
        m2 = sum(f.weight * f.moments()[1] for f in self.families)
        m2 += self._inter_moments[1] + (self.swap_pairs.moments()[1] if self.swap_pairs is not None else 0.0)
        lin = self.linear_law
        mean_lin = self.mu1_sq * lin.mean() + self.linear_shift
        return float(m2 + self.linear_weight * (self.mu1_sq**2 * lin.var() + mean_lin**2))

    def var(self) -> float:
        return self._second() - self.mean() ** 2

    def _table(self):
        """Monotone table ``(F, lambda)`` on a log grid covering all families, for :meth:`ppf`."""
        if self._ppf_table is None:
            scales = [f.b[f.b > 0].min() for f in self.families if np.any(f.b > 0)]
            lo = 1e-14 * (min(scales) if scales else 1.0)
            hi = max(self._lin_range[1] if self._lin is not None else 0.0, max(np.max(f.a + 60 * f.b) for f in self.families))
            grid = np.concatenate([[0.0], np.geomspace(lo, hi, 8 * TABLE_POINTS)])
            self._ppf_table = (np.maximum.accumulate(self.cdf(grid)), grid)
        return self._ppf_table

    def ppf(self, p):
        """Left-continuous inverse of :meth:`cdf`: table bracket, then safeguarded Newton steps."""
        p = self._probabilities(p)
        F, grid = self._table()
        idx = np.clip(np.searchsorted(F, p, side="left"), 1, grid.size - 1)
        lo, hi = grid[idx - 1], grid[idx]
        x = np.where(F[idx] > F[idx - 1], lo + (hi - lo) * np.clip((p - F[idx - 1]) / np.where(F[idx] > F[idx - 1], F[idx] - F[idx - 1], 1.0), 0, 1), hi)
        x, lo, hi = np.ravel(x).copy(), np.ravel(lo).copy(), np.ravel(hi).copy()
        pa = np.ravel(p)
        act = np.arange(x.size)
        for _ in range(PPF_STEPS):  # only points not yet converged (|F(x) - p| > 1e-13) are iterated
            f = self.cdf(x[act]) - pa[act]
            keep = np.abs(f) > 1e-13
            act, f = act[keep], f[keep]
            if act.size == 0:
                break
            xa = x[act]
            lo[act] = np.where(f < 0, xa, lo[act])
            hi[act] = np.where(f >= 0, xa, hi[act])
            with np.errstate(divide="ignore", invalid="ignore"):
                step = xa - f / self.pdf(xa)
            x[act] = np.where(np.isfinite(step) & (step > lo[act]) & (step < hi[act]), step, 0.5 * (lo[act] + hi[act]))
        x = x.reshape(np.shape(p))
        x = np.where(p <= F[0], 0.0, x)
        return np.where(p >= 1.0, np.inf, x)

    def rvs(self, size=None, random_state=None) -> np.ndarray | float:
        """Independent draws: the mixture sampled exactly (families, ``c`` nodes, ``chi2_1``); with the
        interlacing correction (a signed part), by inverse transform through :meth:`ppf`."""
        if self.interlacing is not None or self.swap_pairs is not None or self.dyson is not None:
            return super().rvs(size, random_state)
        rng = random_state if hasattr(random_state, "choice") else np.random.default_rng(random_state)
        n = int(np.prod(size)) if size is not None else 1
        weights = np.array([f.weight for f in self.families] + [self.linear_weight])
        which = rng.choice(weights.size, size=n, p=weights / weights.sum())
        out = np.empty(n)
        for j, fam in enumerate(self.families):
            sel = which == j
            node = rng.choice(fam.a.size, size=sel.sum(), p=fam.w)
            out[sel] = fam.a[node] + fam.b[node] * rng.chisquare(1, size=sel.sum())
        sel = which == len(self.families)
        out[sel] = (self.mu1_sq * np.asarray(self.linear_law.rvs(size=int(sel.sum()), random_state=rng)) + self.linear_shift
                    if self._lin is not None else 0.0)
        return out.reshape(size) if size is not None else float(out[0])


@lru_cache(maxsize=32)
def _linear_table(n_inputs: int, n_hidden: int, sigma1: float, sigma2: float, lo: float, hi: float) -> TabulatedCDF:
    """The tabulated linear-family cdf, shared by laws of the same size (with and without the Dyson bulk)."""
    law = ChiSquareMPConvolution(n_inputs, n_hidden, sigma1, sigma2, epsrel=LINEAR_EPSREL)
    return TabulatedCDF(law.cdf, lo, hi, n=TABLE_POINTS)


def _scale(sigma, n: int, name: str) -> float:
    s = 1.0 / np.sqrt(n) if sigma is None else float(sigma)
    if not (np.isfinite(s) and s > 0):
        raise NearoptError(f"{name} must be a finite number > 0, got {sigma}")
    return s


def asymptotic_law(activation, n_inputs: int, n_hidden: int, sigma1: float | None = None, sigma2: float | None = None,
                   interlacing: bool = True, swap_pairs: bool = True, dyson: bool = True, dyson_orders=DYSON_ORDERS) -> AsymptoticLaw:
    """The law of a pooled population-Hessian eigenvalue at the optimum (:class:`AsymptoticLaw`).

    ``activation``: any (``erf``, ``tanh``, ``relu``, polynomials, ...). ``sigma1``/``sigma2``: teacher
    weight standard deviations (defaults ``1/sqrt(N_i)``, ``1/sqrt(N_h)``). ``dyson``: the bulk from the
    Gram Dyson equation with the Mehler ``dyson_orders`` (:class:`DysonBulk`; default); ``interlacing``:
    interlace each copy's bulk with its rank-one outlier. With ``dyson=False`` the first-order corrections
    of odd activations are used: :class:`Interlacing` and (``swap_pairs``) :class:`SwapPairs`.
    """
    return AsymptoticLaw(activation, n_inputs, n_hidden, sigma1, sigma2, interlacing, swap_pairs, dyson, dyson_orders)
