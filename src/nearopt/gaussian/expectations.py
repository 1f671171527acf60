"""Expectations over two-dimensional Gaussians for population Hessians.

Every block of the population Hessian ``H = E_x[J J^T]`` of ``f(x) = W2 g(W1 x)``
involves a pair of hidden units ``a, c`` only through ``z = (u, v) = (w_a.x, w_c.x)``,
a centred Gaussian with covariance ``C = [[w_a.w_a, w_a.w_c], [w_a.w_c, w_c.w_c]]``
(see ``docs/theory.md`` §2.2). By Stein's lemma ``E[phi(Ax) x] = A^T E[grad phi]`` and
``E[phi(Ax) x x^T] = E[phi] I + A^T E[hess phi] A`` with ``A = [w_a; w_c]``, so a pair
is described by the *Stein form* (:class:`PairMoments`)::

    E[g(u) g(v)]           = gg
    E[g'(u) g(v) x]        = b[0] w_a + b[1] w_c             # b = E[grad(g'(u) g(v))]
    E[g'(u) g'(v) x x^T]   = dd I + [w_a w_c] K [w_a w_c]^T   # K = E[hess(g'(u) g'(v))]

which needs no ``C^{-1}`` and stays valid when ``w_a`` and ``w_c`` are parallel
(``a = c`` included). Closed forms (each activation's ``closed_form_moments``, kept in
:mod:`nearopt.model.activations` beside the function they describe) cover polynomials
(Mehler's formula, exact), ``erf(z/s)`` for any scale (arcsine kernel and its
derivatives) and ReLU (arc-cosine kernels; the deltas of ``g''`` are integrated
exactly). They keep every digit at every scale: no difference of nearly equal numbers
(for erf, ``1 - rho^2`` and ``det(I + k C)`` as sums of non-negative terms; for ReLU the
angle by ``atan2`` of an exactly formed ``det C``, :func:`~nearopt.model.activations.correlation_gap`).
A unit's pair with itself enters the Stein form only through ``b_sum = b[0] + b[1]``
and ``K_sum = sum K`` (both directions are ``w_a``); the closed forms give those sums
directly, and :meth:`PairMoments.fold_diagonal` writes the diagonal pairs through them,
so a Stein-form assembly adds no terms that cancel (for erf at variance ``c`` the four
``K`` terms are ``~ dd k c`` each and their total ``~ dd``). Moments that float64 cannot
hold (overflow, or all below the smallest normal number) are one :class:`NearoptError`.
Any other activation goes through a tensor quadrature
(:func:`quadrature_moments`) whose number of nodes grows, pair by pair, until two
successive levels agree to ``tol`` (default ``1e-12``), so the result is checked,
not assumed. For smooth activations the quadrature integrates products of
derivatives, ``E[g^(k)(u) g^(l)(v)]`` (Stein's lemma in ``z``), which stays exact
to rounding for parallel and nearly parallel units; non-smooth ones (``smooth=False``)
use ``y``-moments of ``g`` and ``g'`` only.

The rule (:func:`normal_rule`) is the trapezoidal rule on ``[-L, L]`` with the
Gaussian weight, not Gauss–Hermite: for integrands analytic only in a strip
(``tanh`` has poles at ``±i pi/2``) it converges geometrically in the number of
nodes, while Gauss–Hermite spends most of its nodes far out in the tails (its
largest node grows like ``sqrt(4n)``) and needs about four times as many nodes per
dimension for ``1e-12``. ``L`` grows with the level so that a truncated tail shows
up as a difference between levels and is caught by the same check.

:func:`gaussian_expectations` is the general engine: ``E[phi]``, ``E[phi z]`` and
``E[phi z z^T]`` for any ``phi(u, v)`` and any PSD ``C``.

:func:`gauss_hermite` is the package's one Gauss–Hermite rule, for the integrals whose
integrand is a polynomial (exact at ``2 deg + 1`` nodes) or for which a fixed rule with a
stated accuracy is wanted. The one-dimensional ``E[f(sqrt(c) y)]`` of a unit at variance ``c``
(the asymptotic law's constants) take fixed Gauss–Legendre rules split at 0, for ``f`` with a
kink there (ReLU): :func:`split_normal_rule`, and :func:`graded_normal_rule` for wide units whose
``f`` varies on the scale ``1 / sqrt(c)``, both picked per variance by :func:`variance_rules`; :func:`kernel` is ``E[g(u) g(v)]`` alone (the pair kernel of a
population loss), and :func:`output_power` ``E[f(x)^2]`` of a network.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from ..errors import NearoptError
from ..model.activations import COLLINEAR_TOL, Activation, PairMoments, Polynomial, ReLU, correlation_gap, get_activation, pair_covariance
from ..tolerances import ROUNDING_RTOL
from .relu_moments import SHARED_GAP, coincident, collinear_pair_values, delta_moments, ramp_derivatives, relu_pair_values

__all__ = [
    "check_smooth", "degenerate_relu_error", "derivative_moments", "DerivativeMoments", "gauss_hermite", "gaussian_expectations", "GaussianExpectation", "graded_normal_rule",
    "HALF_NODES", "kernel", "normal_rule", "output_power", "pair_moments", "PANEL_NODES", "product_expectation", "QUAD_CUT", "quadrature_moments",
    "QUADRATURE_ORDERS", "QUADRATURE_TOL", "RELU_PANELS", "SMOOTHNESS_TOL", "split_normal_rule", "TorchFn", "unit_moments", "variance_rules"
]

#: nodes per dimension tried in turn until two successive levels agree (ratio ~1.5: the
#: confirming level, which dominates the cost in two dimensions, is not much finer than needed)
#: (tanh needs ~163 at unit variance and ~1855 at variance ~130: features shrink like 1/std)
QUADRATURE_ORDERS = (33, 49, 73, 109, 163, 245, 367, 551, 825, 1237, 1855, 2783)
#: default agreement required between successive quadrature orders (absolute, on O(1) moments)
QUADRATURE_TOL = 1e-12
_ONE = Polynomial([1.0], name="one")  # h = 1: E[f(u)] as a pair moment (:func:`unit_moments`)
#: quadrature nodes evaluated at once (memory: a few arrays of this many float64)
_QUAD_BLOCK = 2_000_000


@dataclass(frozen=True)
class GaussianExpectation:
    """``E[phi(z)]``, ``E[phi(z) z]`` ``(2,)``, ``E[phi(z) z z^T]`` ``(2, 2)`` for ``z ~ N(0, C)``."""

    mean: float
    first: np.ndarray
    second: np.ndarray
    order: int
    error: float  # max change between the last two quadrature orders


@lru_cache(maxsize=32)
def gauss_hermite(order: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss–Hermite nodes and weights ``(order,)`` for ``E[f(y)]``, ``y ~ N(0, 1)`` (probabilists'; weights sum to 1).

    Exact for polynomials of degree ``<= 2 order - 1``. In float64 (numpy's ``hermegauss``:
    Golub–Welsch polished by one Newton step), measured against the moments
    ``E[y^2k] = (2k - 1)!!`` for ``k < order``: relative error below ``5e-15`` up to 100 nodes;
    nodes agree with :func:`scipy.special.roots_hermitenorm` to ``6e-16`` of the largest node
    and weights to ``1e-14`` of the largest weight up to 300 nodes
    (``tests/test_expectations.py::test_gauss_hermite_*``). For analytic integrands that are not
    polynomials the largest node grows like ``sqrt(4 order)`` and the error is not bounded by the
    rule itself: the checked quadrature (:func:`normal_rule`, :func:`quadrature_moments`) serves those.
    Cached; the arrays are read-only.
    """
    x, w = np.polynomial.hermite_e.hermegauss(_check_order(order, least=1))
    w = w / math.sqrt(2.0 * math.pi)
    x.setflags(write=False)
    w.setflags(write=False)
    return x, w


def normal_rule(order: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights ``(order,)`` for ``E[f(y)]``, ``y ~ N(0, 1)``: trapezoid on ``[-L, L]``.

    ``L = 7 + log2(order / 33)`` (7 at 33 nodes, 13.4 at 2783): finer levels also reach
    further into the tail, so a truncated tail shows up as a change between levels.
    An odd ``order`` puts a node at 0.
    """
    half = 7.0 + max(0.0, math.log2(order / 33.0))
    h = 2.0 * half / (order - 1)  # not x[1] - x[0]: that difference loses ~log2(L / h) bits
    x = h * (np.arange(order) - (order - 1) / 2)
    w = h * np.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)
    return x, w


#: Gauss–Legendre nodes per half-line of :func:`split_normal_rule`
HALF_NODES = 128
#: the half-lines of :func:`split_normal_rule` and :func:`graded_normal_rule` end at ``|y| = QUAD_CUT`` (``phi(13) ~ 1e-37``)
QUAD_CUT = 13.0
#: Gauss–Legendre nodes per panel of :func:`graded_normal_rule`
PANEL_NODES = 32


@lru_cache(maxsize=4)
def split_normal_rule(half_nodes: int = HALF_NODES, cut: float = QUAD_CUT) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights ``(2 half_nodes,)`` (summing to 1) for ``E[f(y)]``, ``y ~ N(0, 1)``, ``f`` with a kink or a jump at 0.

    Gauss–Legendre on ``[-cut, 0]`` and ``[0, cut]`` with the Gaussian weight folded into the
    weights (renormalised to sum 1): the split at 0 integrates ReLU's kink and the jump of its
    ``g'`` exactly. Measured with the defaults (``tests/test_expectations.py::test_split_normal_rule_accuracy``):
    ``E[1{y > 0}] = 1/2`` exactly, ``E|y|^k`` for ``k <= 20`` to ``4e-14`` relative (the weights'
    normalisation, the same factor for every ``k``), ``E[exp(-c y^2 / 2)] = (1 + c)^(-1/2)`` for ``c <= 1`` to ``2e-14``.
    A feature of width ``1 / std`` (``f(y) = g(std y)`` for saturating ``g``) is missed once ``std``
    exceeds the node spacing near 0: :func:`graded_normal_rule` serves those. Cached; read-only arrays.
    """
    x, w = np.polynomial.legendre.leggauss(_check_order(half_nodes, least=1))
    x, w = 0.5 * cut * (x + 1.0), 0.5 * cut * w * np.exp(-0.125 * cut**2 * (x + 1.0) ** 2)
    z, wz = np.concatenate([-x[::-1], x]), np.concatenate([w[::-1], w])
    wz = wz / wz.sum()
    z.setflags(write=False)
    wz.setflags(write=False)
    return z, wz


def graded_normal_rule(std: float) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights (summing to 1) for ``E[f(y)]``, ``y ~ N(0, 1)``, ``f`` that varies on the scale ``1 / std`` too (``std > 1``).

    ``g(std y)`` changes on ``|y| ~ 1 / std`` (erf and tanh saturate there, ``g'`` is a spike of that
    width): :func:`split_normal_rule` misses it once ``std`` exceeds its node spacing near 0 (``E g'``
    of erf is off by 20 % at ``std^2 = 1e6`` and 0 beyond). Panels ``[2^(j-1), 2^j] / std`` in ``y``
    (``[0, 1 / std]`` first), up to :data:`QUAD_CUT`, each with :data:`PANEL_NODES` Gauss–Legendre
    nodes, resolve both scales: ``log2(QUAD_CUT std)`` panels per half-line. Measured
    (``tests/test_expectations.py::test_graded_normal_rule_accuracy``): ``E[exp(-std^2 y^2 / 2)] = (1 + std^2)^(-1/2)``
    and ``E|y|^k`` for ``k <= 20`` to ``2e-15`` relative for ``std^2`` from 1.5 to ``1e100``.
    """
    inner = [2.0**j / std for j in range(int(np.ceil(np.log2(QUAD_CUT * std))))]
    edges = np.unique(np.clip(np.array([0.0, *inner, QUAD_CUT]), 0.0, QUAD_CUT))
    x, w = np.polynomial.legendre.leggauss(PANEL_NODES)
    lo, hi = edges[:-1, None], edges[1:, None]
    z = (0.5 * (hi - lo) * (x + 1.0) + lo).ravel()
    wz = (0.5 * (hi - lo) * w).ravel() * np.exp(-0.5 * z * z)
    z, wz = np.concatenate([-z[::-1], z]), np.concatenate([wz[::-1], wz])
    return z, wz / wz.sum()


def variance_rules(variance) -> tuple[np.ndarray, np.ndarray]:
    """Nodes ``Y`` and weights ``W``, ``(len(c), n)`` each, for ``E[f(sqrt(c_i) y)]``, ``y ~ N(0, 1)``, at every variance ``c_i > 0``.

    ``c <= 1``: :func:`split_normal_rule`; wider: :func:`graded_normal_rule` at ``std = sqrt(c)`` (rows
    padded with zero weights to one length). The nodes are those of ``y``; scale them by ``sqrt(c_i)``.
    """
    rules = [split_normal_rule() if ci <= 1.0 else graded_normal_rule(float(np.sqrt(ci))) for ci in np.ravel(np.asarray(variance, dtype=np.float64))]
    n = max(z.size for z, _ in rules)
    Y, W = np.zeros((len(rules), n)), np.zeros((len(rules), n))
    for i, (z, w) in enumerate(rules):
        Y[i, : z.size], W[i, : w.size] = z, w
    return Y, W


# --------------------------------------------------------------------------- general engine
def gaussian_expectations(phi: Callable[[np.ndarray, np.ndarray], np.ndarray], C, *, order: int | None = None, tol: float = QUADRATURE_TOL) -> GaussianExpectation:
    """``E[phi]``, ``E[phi z]``, ``E[phi z z^T]`` for ``z = (u, v) ~ N(0, C)`` by tensor quadrature.

    Parameters
    ----------
    phi : callable
        ``phi(u, v)`` on float64 arrays of equal shape, elementwise.
    C : array_like, shape (2, 2)
        Symmetric positive semi-definite covariance (singular allowed).
    order : int, optional
        Fixed nodes per dimension. Default: the first of :data:`QUADRATURE_ORDERS` whose
        result agrees with the next order to ``tol`` (relative to the largest
        moment, at least 1); raises :class:`NearoptError` if none does.
    """
    C = np.asarray(C, dtype=np.float64)
    if C.shape != (2, 2) or not np.allclose(C, C.T) or not np.all(np.isfinite(C)):
        raise NearoptError(f"C must be a finite symmetric 2x2 matrix, got {C!r}")
    lam, V = np.linalg.eigh(C)
    if lam[0] < -ROUNDING_RTOL * max(lam[1], 1.0):
        raise NearoptError(f"C must be positive semi-definite, eigenvalues {lam}")
    F = V * np.sqrt(np.clip(lam, 0.0, None))  # z = F y, y ~ N(0, I)

    def at(_idx: np.ndarray, n: int) -> np.ndarray:  # one "pair": flat moments (1, 7)
        x, w = normal_rule(n)
        y1, y2 = np.meshgrid(x, x, indexing="ij")
        wt = np.outer(w, w)
        z = np.einsum("ij,jab->iab", F, np.stack([y1, y2]))
        p = np.asarray(phi(z[0], z[1]), dtype=np.float64) * wt
        first = np.array([(p * z[0]).sum(), (p * z[1]).sum()])
        second = np.array([[(p * z[0] ** 2).sum(), (p * z[0] * z[1]).sum()], [0.0, (p * z[1] ** 2).sum()]])
        second[1, 0] = second[0, 1]
        return np.concatenate([[p.sum()], first, second.ravel()])[None]

    flat, n, err = _converge_pairs(at, 1, order, tol)
    flat = flat[0]
    return GaussianExpectation(float(flat[0]), flat[1:3], flat[3:].reshape(2, 2), n, err)


def _check_order(order, least: int = 2) -> int:
    if isinstance(order, bool) or not isinstance(order, (int, float, np.integer, np.floating)) or not math.isfinite(order) or int(order) != order or order < least:
        raise NearoptError(f"quadrature order must be an integer >= {least}, got {order!r}")
    return int(order)


def _not_converged(tol: float, err: float) -> NearoptError:
    return NearoptError(
        f"quadrature did not converge to {tol:g} by {QUADRATURE_ORDERS[-1]} nodes per dimension (last change {err:.3g}); "
        "the activation may be non-smooth, or the pre-activations very wide (std >> 10): pass an explicit order or register a closed form"
    )


# --------------------------------------------------------------------------- quadrature
def _quad_block(act: Activation, c11, c12, c22, n: int) -> np.ndarray:
    """Flat moments ``(m, 10)`` for ``m`` pairs with ``n`` nodes per dimension.

    Columns: gg, b0, b1, dd, K00, K01, K10, K11, br0, br1 where ``br`` is ``b`` of the
    reversed pair ``(c, a)``. Pairs are parametrised by the Cholesky factor,
    ``u = l11 y1``, ``v = l21 y1 + l22 y2``; collinear ones (``l22 = 0``, ``a = c``
    included) need only the one-dimensional rule. Smooth activations go through
    :func:`_stein_pairs`, others through :func:`_quad_pairs_2d` /
    :func:`_quad_pairs_collinear`.
    """
    x, w = normal_rule(n)
    l11 = np.sqrt(c11)
    l21 = np.divide(c12, l11, out=np.zeros_like(l11), where=l11 > 0)
    l22sq = np.clip(c22 - l21**2, 0.0, None)
    flat = np.zeros((c11.size, 10))
    coll = l22sq <= COLLINEAR_TOL * np.maximum(c22, 1e-300)
    two = np.flatnonzero(~coll)
    step = max(1, _QUAD_BLOCK // (n * n))
    for start in range(0, two.size, step):
        sel = two[start : start + step]
        a11, a21, a22 = l11[sel], l21[sel], np.sqrt(l22sq[sel])
        flat[sel] = _stein_pairs(act, a11, a21, a22, x, w) if act.is_smooth else _quad_pairs_2d(act, a11, a21, a22, x, w)
    one = np.flatnonzero(coll)
    if one.size:
        flat[one] = _stein_pairs(act, l11[one], l21[one], None, x, w) if act.is_smooth else _quad_pairs_collinear(act, l11[one], l21[one], x, w)
    return flat


def _stein_pairs(act: Activation, a11, a21, a22, x, w) -> np.ndarray:
    """Flat moments ``(m, 10)`` of a smooth ``g`` from expectations of its derivatives.

    Stein's lemma in ``z``-space gives the Stein form directly: ``b = (E[g''(u) g(v)],
    E[g'(u) g'(v)])``, ``K = [[E[g^(3)(u) g'(v)], E[g''(u) g''(v)]], [., E[g'(u) g^(3)(v)]]]``.
    Every moment is ``E[f(u) h(v)]``: no ``y``-weights to cancel and no ``L^{-1}`` to
    amplify rounding, so nearly parallel units are as accurate as any others
    (a moment-based route loses ``eps / (1 - rho**2)``). ``u`` depends on ``y1`` only,
    so the ``y2``-sums are matrix products of ``g^(k)(v)`` ``(m, n, n)`` with ``w``;
    ``a22=None`` marks collinear pairs (``v = a21 y1``, one dimension).
    """
    xt, wt = torch.as_tensor(x), torch.as_tensor(w)
    A11, A21 = (torch.as_tensor(t)[:, None] for t in (a11, a21))
    fu = act.derivatives(A11 * xt, 3)  # 4 x (m, n)
    if a22 is None:
        R = torch.stack(act.derivatives(A21 * xt, 3), -1)  # (m, n, 4): v on the same node
    else:
        A22 = torch.as_tensor(a22)[:, None, None]
        v = (A21 * xt)[:, :, None] + A22 * xt  # (m, n, n): [pair, y1, y2]
        R = torch.stack([h @ wt for h in act.derivatives(v, 3)], -1)  # (m, n, 4): sum_j w_j g^(k)(v_ij)

    def E(k: int, j: int) -> np.ndarray:  # E[g^(k)(u) g^(j)(v)]
        return (wt * fu[k] * R[..., j]).sum(-1).numpy()

    dd, k12 = E(1, 1), E(2, 2)
    return np.column_stack([E(0, 0), E(2, 0), dd, dd, E(3, 1), k12, k12, E(1, 3), E(0, 2), dd])


def _quad_pairs_2d(act: Activation, a11, a21, a22, x, w) -> np.ndarray:
    """Flat moments ``(m, 10)`` of non-collinear pairs ``u = a11 y1``, ``v = a21 y1 + a22 y2``, any ``g``.

    Uses only ``g`` and ``g'`` (so it converges, algebraically, for kinks):
    ``y``-moments of ``g'(u) g(v)`` and ``g'(u) g'(v)`` mapped to the Stein form with
    ``L^{-T}``, which costs ``eps / (1 - rho**2)`` for nearly parallel units. ``u``
    depends on ``y1`` only, so the ``y2``-sums are matrix products of ``g(v)``,
    ``g'(v)`` ``(m, n, n)`` with ``w * y2**k``.
    """
    xt, wt = torch.as_tensor(x), torch.as_tensor(w)
    A11, A21, A22 = (torch.as_tensor(t)[:, None] for t in (a11, a21, a22))
    u = A11 * xt  # (m, n)
    v = (A21 * xt)[:, :, None] + A22[:, :, None] * xt  # (m, n, n): [pair, y1, y2]
    gu, du = act(u), act.derivative(u)
    Rg = act(v) @ torch.stack([wt, wt * xt], -1)  # (m, n, 2): sum_j w_j y2_j^k g(v_ij)
    Rd = act.derivative(v) @ torch.stack([wt, wt * xt, wt * xt * xt], -1)  # (m, n, 3)
    w1, wy, wyy = wt, wt * xt, wt * xt * xt

    def E(weight, f, R):  # sum_i weight_i f_i R_i
        return (weight * f * R).sum(-1).numpy()

    gg = E(w1, gu, Rg[..., 0])
    m1 = np.stack([E(wy, du, Rg[..., 0]), E(w1, du, Rg[..., 1])], -1)  # E[g'(u) g(v) y]
    m1r = np.stack([E(wy, gu, Rd[..., 0]), E(w1, gu, Rd[..., 1])], -1)  # E[g(u) g'(v) y]
    e2 = E(w1, du, Rd[..., 0])
    s11, s12, s22 = E(wyy, du, Rd[..., 0]) - e2, E(wy, du, Rd[..., 1]), E(w1, du, Rd[..., 2]) - e2
    Li = np.zeros((a11.size, 2, 2))  # L^{-T}: moments in y -> Stein form in z
    Li[:, 0, 0], Li[:, 0, 1], Li[:, 1, 1] = 1 / a11, -a21 / (a11 * a22), 1 / a22
    K = Li @ pair_covariance(s11, s12, s22) @ Li.transpose(0, 2, 1)
    b = np.einsum("mij,mj->mi", Li, m1)
    br = np.einsum("mij,mj->mi", Li, m1r)[:, ::-1]
    return np.column_stack([gg, b, e2, K.reshape(-1, 4), br])


def _quad_pairs_collinear(act: Activation, s, a21, x, w) -> np.ndarray:
    """Flat moments ``(m, 10)`` of collinear pairs ``u = s y``, ``v = (a21 / s) u`` (1-D rule, any ``g``)."""
    xt, wt = torch.as_tensor(x), torch.as_tensor(w)
    ratio = np.divide(a21, s, out=np.zeros_like(s), where=s > 0)
    u = torch.as_tensor(s)[:, None] * xt[None, :]
    vv = torch.as_tensor(ratio)[:, None] * u
    gu, du, gv, dv = act(u), act.derivative(u), act(vv), act.derivative(vv)

    def E1(F):
        return (F * wt).sum(1).numpy()

    p2 = du * dv
    e2 = E1(p2)
    sp = np.where(s > 0, s, 1.0)
    # in the direction w_a: E[phi x] = (E[phi y]/s) w_a, E[phi x x^T] = E[phi] I + (E[phi y^2]-E[phi])/s^2 w_a w_a^T
    b0 = np.where(s > 0, E1(du * gv * xt) / sp, 0.0)
    br1 = np.where(s > 0, E1(gu * dv * xt) / sp, 0.0)  # reversed pair (w_c, w_a): on w_a, the 2nd slot
    k00 = np.where(s > 0, (E1(p2 * xt * xt) - e2) / sp**2, 0.0)
    zero = np.zeros_like(b0)
    return np.column_stack([E1(gu * gv), b0, zero, e2, k00, zero, zero, zero, zero, br1])


#: Stein's identity must hold to this (relative) for an activation marked smooth
SMOOTHNESS_TOL = 1e-9


def check_smooth(activation: str | Activation, variances) -> None:
    """Raise if ``g`` is marked smooth but its autograd derivatives miss a kink or jump.

    The derivative route (:func:`_stein_pairs`) trusts ``g'', g^(3)``; a kink makes
    autograd return a derivative without its delta, and the quadrature would then
    converge to a wrong value. Stein's identity ``E[h(s y) y] = s E[h'(s y)]`` for
    ``h = g, g', g''`` at every scale ``s = sqrt(variance)`` catches that.
    """
    act = get_activation(activation)
    s = np.sqrt(np.unique(np.asarray(variances, dtype=np.float64)))
    x, w = normal_rule(QUADRATURE_ORDERS[-1])
    xt, wt = torch.as_tensor(x), torch.as_tensor(w)
    d = act.derivatives(torch.as_tensor(s)[:, None] * xt, 3)
    for k in range(3):
        lhs = (wt * xt * d[k]).sum(-1).numpy()
        rhs = s * (wt * d[k + 1]).sum(-1).numpy()
        scale = np.maximum(1.0, (wt * (xt * d[k]).abs()).sum(-1).numpy())
        off = np.abs(lhs - rhs) / scale
        if off.max() > SMOOTHNESS_TOL:
            i = int(np.argmax(off))
            raise NearoptError(
                f"activation {act.name!r} is marked smooth, but Stein's identity between its derivatives of order {k} and "
                f"{k + 1} fails by {abs(lhs[i] - rhs[i]):.2g} at pre-activation std {s[i]:.3g}: it has a kink or jump (register it "
                "with smooth=False: quadrature then uses g and g' only, or give it a closed form), or that std is too wide for the quadrature"
            )


def _converge_pairs(evaluate: Callable[[np.ndarray, int], np.ndarray], m: int, order: int | None, tol: float) -> tuple[np.ndarray, int, float]:
    """Per-pair refinement: ``evaluate(idx, n)`` ``(len(idx), k)`` until each pair's two last levels agree.

    A pair is done once its change is ``<= tol * max(1, max|moment|)``; only the pairs
    still open are evaluated at the next level (the diagonal pairs, one-dimensional,
    often need more nodes than the rest). Returns the moments, the largest level
    used and the largest accepted change.
    """
    if order is not None:
        n = _check_order(order)
        return evaluate(np.arange(m), n), n, float("nan")
    open_ = np.arange(m)
    prev = evaluate(open_, QUADRATURE_ORDERS[0])
    out, used, worst = np.zeros_like(prev), QUADRATURE_ORDERS[0], 0.0
    err = np.zeros(m)
    for n in QUADRATURE_ORDERS[1:]:
        if not open_.size:
            break
        cur = evaluate(open_, n)
        err = np.abs(cur - prev).max(1)
        ok = err <= tol * np.maximum(1.0, np.abs(cur).max(1))
        out[open_[ok]] = cur[ok]
        if ok.any():
            used, worst = n, max(worst, float(err[ok].max()))
        open_, prev = open_[~ok], cur[~ok]
    if open_.size:
        raise _not_converged(tol, float(err.max()))
    return out, used, worst


def quadrature_moments(activation: str | Activation, c11, c12, c22, *, order: int | None = None, tol: float = QUADRATURE_TOL) -> tuple[PairMoments, PairMoments]:
    """Stein-form moments by tensor quadrature for pairs ``(a, c)`` and the reversed ``(c, a)``.

    ``c11, c12, c22`` broadcast to a shape ``S``; returns the moments of ``(a, c)``
    and of ``(c, a)`` (covariance with ``c11`` and ``c22`` swapped). Each pair is
    refined until two successive levels agree (:func:`_converge_pairs`) unless an
    ``order`` (nodes per dimension) is given; ``order`` on the result is the largest
    level any pair needed, ``error`` the largest accepted change.
    """
    act = get_activation(activation)
    shape = np.broadcast_shapes(np.shape(c11), np.shape(c12), np.shape(c22))
    c11, c12, c22 = (np.asarray(c, dtype=np.float64).ravel() for c in np.broadcast_arrays(c11, c12, c22))
    if act.is_smooth:
        check_smooth(act, np.concatenate([c11, c22]))
    elif order is None:  # a kink converges only algebraically: refining to 1e-12 would run for hours
        raise NearoptError(
            f"activation {act.name!r} is not smooth: its quadrature converges only algebraically; "
            "pass an explicit order (e.g. 400 nodes: error ~1e-3) or register a closed form"
        )
    flat, n, err = _converge_pairs(lambda idx, m: _quad_block(act, c11[idx], c12[idx], c22[idx], m), c11.size, order, tol)
    flat = flat.reshape(shape + (10,))
    K = flat[..., 4:8].reshape(flat.shape[:-1] + (2, 2))
    fwd = PairMoments(flat[..., 0], flat[..., 1:3], flat[..., 3], K, "quadrature", n, err)
    rev = PairMoments(flat[..., 0], flat[..., 8:10], flat[..., 3], K[..., ::-1, ::-1], "quadrature", n, err)
    return fwd, rev


#: variances below this have a product with each other that float64 cannot hold (``sqrt`` of the smallest normal)
_PRODUCT_TINY = float(np.sqrt(np.finfo(np.float64).tiny))


def _require_representable(m: PairMoments, act: Activation, variances: np.ndarray) -> None:
    """Moments float64 cannot hold are one clear error, not a NaN or all-zero spectrum.

    Overflow: any moment not finite (``monomial:1000``, huge weights). Underflow: every
    moment below the smallest normal number although some unit has a positive
    variance (``monomial:25`` at variance ``1e-18``): then the Hessian's own scale is
    lost, while a few moments under that scale only round to zero relative to it.
    """
    parts = [m.gg, m.b, m.dd, m.K] + [x for x in (m.b_sum, m.K_sum) if x is not None]
    live = variances[variances > 0]
    if not all(np.all(np.isfinite(x)) for x in parts) and live.size and live.min() < _PRODUCT_TINY:
        # a closed form divides by a product of two variances (ReLU's K ~ 1 / (c sqrt(det C))): it underflows first
        raise NearoptError(
            f"the Gaussian moments of {act.name!r} overflow float64 because the weights are too small: the smallest "
            f"pre-activation variance {float(live.min()):.3g} times another underflows (variances below {_PRODUCT_TINY:.3g}); "
            "multiply the first-layer weights by a power of ten (ReLU's first-layer block does not depend on their scale)"
        )
    if not all(np.all(np.isfinite(x)) for x in parts):
        raise NearoptError(
            f"the Gaussian moments of {act.name!r} overflow float64 at these pre-activation variances "
            "(too high a degree or too large weights); rescale the weights or lower the degree"
        )
    if np.any(variances > 0) and max(float(np.abs(x).max(initial=0.0)) for x in parts) < np.finfo(np.float64).tiny:
        raise NearoptError(
            f"the Gaussian moments of {act.name!r} underflow float64 at these pre-activation variances "
            f"(largest variance {float(variances.max()):.3g}: too small weights for this degree); rescale the weights or lower the degree"
        )


def pair_moments(activation: str | Activation, gram: np.ndarray, *, order: int | None = None, tol: float = QUADRATURE_TOL) -> PairMoments:
    """Moments of all ordered pairs of hidden units from the Gram matrix ``W1 W1^T`` ``(N_h, N_h)``.

    Closed form when the activation has one, else quadrature on the upper
    triangle (the reversed pair comes from the same nodes). Arrays are
    ``(N_h, N_h)`` (``b``: ``(N_h, N_h, 2)``, ``K``: ``(N_h, N_h, 2, 2)``); the entries
    are true expectations (``b[a, a, 0] = E[g''(u_a) g(u_a)]``): an assembly of the
    Hessian takes :meth:`PairMoments.fold_diagonal` of them. Raises
    :class:`NearoptError` if float64 cannot hold the moments.
    """
    act = get_activation(activation)
    G = np.asarray(gram, dtype=np.float64)
    d = np.diag(G)
    c11, c12, c22 = d[:, None] * np.ones_like(G), G, d[None, :] * np.ones_like(G)
    try:
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported as one error below
            exact = act.closed_form_moments(c11, c12, c22)
    except OverflowError as exc:  # e.g. k! of a degree-1000 polynomial does not fit a float
        raise NearoptError(f"the Gaussian moments of {act.name!r} overflow float64 (too high a degree)") from exc
    if exact is not None:
        _require_representable(exact, act, d)
        return exact
    n_h = G.shape[0]
    iu, ju = np.triu_indices(n_h)
    fwd, rev = quadrature_moments(act, d[iu], G[iu, ju], d[ju], order=order, tol=tol)
    gg, dd = np.zeros((n_h, n_h)), np.zeros((n_h, n_h))
    b, K = np.zeros((n_h, n_h, 2)), np.zeros((n_h, n_h, 2, 2))
    for m, (i, j) in ((fwd, (iu, ju)), (rev, (ju, iu))):
        gg[i, j], dd[i, j], b[i, j], K[i, j] = m.gg, m.dd, m.b, m.K
    # diagonal: both fwd and rev were written; fwd is the canonical one
    gg[iu, ju], dd[iu, ju], b[iu, ju], K[iu, ju] = fwd.gg, fwd.dd, fwd.b, fwd.K
    return PairMoments(gg, b, dd, K, "quadrature", fwd.order, fwd.error)


# --------------------------------------------------------------------------- the pair kernel alone
TorchFn = Callable[[torch.Tensor], torch.Tensor]


def _product_block(f: TorchFn, h: TorchFn, l11, l21, l22, coll, n: int) -> np.ndarray:
    """``E[f(u) h(v)]`` ``(m, 1)`` on ``n`` nodes per dimension, ``u = l11 y1``, ``v = l21 y1 + l22 y2``.

    ``u`` depends on ``y1`` only, so the ``y2``-sum is a product of ``h(v)`` ``(m, n, n)`` with
    the weights; collinear pairs (``coll``) take ``v`` on the same node (one dimension).
    """
    x, w = normal_rule(n)
    xt, wt = torch.as_tensor(x), torch.as_tensor(w)
    out = np.empty((l11.size, 1))
    step = max(1, _QUAD_BLOCK // (n * n))
    for start in range(0, l11.size, step):
        sl = slice(start, start + step)
        a11, a21, a22 = (torch.as_tensor(t[sl])[:, None] for t in (l11, l21, l22))
        fu = f(a11 * xt)  # (m, n)
        inner = torch.where(torch.as_tensor(coll[sl])[:, None], h(a21 * xt), h((a21 * xt)[:, :, None] + a22[:, :, None] * xt) @ wt)
        out[sl, 0] = (wt * fu * inner).sum(-1).numpy()
    return out


def product_expectation(f: TorchFn, h: TorchFn, c11, c12, c22, *, order: int | None = None, tol: float = QUADRATURE_TOL) -> np.ndarray:
    """``E[f(u) h(v)]`` for ``(u, v) ~ N(0, [[c11, c12], [c12, c22]])``, broadcast shape ``S``, by checked tensor quadrature.

    Cholesky ``u = l11 y1``, ``v = l21 y1 + l22 y2`` on :func:`normal_rule` (collinear pairs on
    the one-dimensional rule), refined pair by pair until two levels agree to ``tol``
    (:func:`_converge_pairs`) unless an ``order`` is given. ``f`` and ``h`` map float64 tensors
    elementwise; for the result to be checked they should be smooth (a kink converges only
    algebraically, and the refinement then raises).
    """
    shape = np.broadcast_shapes(np.shape(c11), np.shape(c12), np.shape(c22))
    c11, c12, c22 = (np.asarray(c, dtype=np.float64).ravel() for c in np.broadcast_arrays(c11, c12, c22))
    l11 = np.sqrt(c11)
    l21 = np.divide(c12, l11, out=np.zeros_like(l11), where=l11 > 0)
    l22sq = np.clip(c22 - l21**2, 0.0, None)
    coll = l22sq <= COLLINEAR_TOL * np.maximum(c22, 1e-300)
    l22 = np.where(coll, 0.0, np.sqrt(l22sq))
    flat, _, _ = _converge_pairs(lambda idx, n: _product_block(f, h, l11[idx], l21[idx], l22[idx], coll[idx], n), c11.size, order, tol)
    return flat[:, 0].reshape(shape)


def kernel(activation: str | Activation, c11, c12, c22, *, order: int | None = None, tol: float = QUADRATURE_TOL) -> np.ndarray:
    """The pair kernel ``E[g(u) g(v)]`` for ``(u, v) ~ N(0, [[c11, c12], [c12, c22]])``, broadcast shape ``S``.

    The activation's closed form (:meth:`~nearopt.model.activations.Activation.closed_form_moments`,
    its ``gg``) when it has one; otherwise the checked quadrature of this one moment
    (:func:`product_expectation`), or the fixed ``order`` given. Like
    :func:`quadrature_moments`, a non-smooth activation without a closed form needs an explicit
    ``order`` (a kink converges only algebraically). Raises :class:`NearoptError` where float64
    cannot hold the kernel.
    """
    act = get_activation(activation)
    shape = np.broadcast_shapes(np.shape(c11), np.shape(c12), np.shape(c22))
    c11, c12, c22 = (np.asarray(c, dtype=np.float64).ravel() for c in np.broadcast_arrays(c11, c12, c22))
    try:
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported as one error below
            exact = act.closed_form_moments(c11, c12, c22)
    except OverflowError as exc:
        raise NearoptError(f"the Gaussian moments of {act.name!r} overflow float64 (too high a degree)") from exc
    if exact is not None:
        gg = np.asarray(exact.gg, dtype=np.float64)
    else:
        if not act.is_smooth and order is None:
            raise NearoptError(
                f"activation {act.name!r} is not smooth: its quadrature converges only algebraically; "
                "pass an explicit order (e.g. 400 nodes: error ~1e-3) or register a closed form"
            )
        gg = product_expectation(act, act, c11, c12, c22, order=order, tol=tol)
    if not np.all(np.isfinite(gg)):
        raise NearoptError(
            f"the Gaussian moments of {act.name!r} overflow float64 at these pre-activation variances "
            "(too high a degree or too large weights); rescale the weights or lower the degree"
        )
    return gg.reshape(shape)


# --------------------------------------------------------------------------- derivative moments with means
def _derivative_block(f: Activation, h: Activation, na: int, nb: int, m1, m2, l11, l21, l22, coll, n: int) -> np.ndarray:
    """``E[f^(a)(u) h^(b)(v)]`` ``(m, na nb)`` on ``n`` nodes per dimension, ``u = m1 + l11 y1``, ``v = m2 + l21 y1 + l22 y2``."""
    x, w = normal_rule(n)
    xt, wt = torch.as_tensor(x), torch.as_tensor(w)
    out = np.empty((l11.size, na * nb))
    step = max(1, _QUAD_BLOCK // (n * n * nb))
    for start in range(0, l11.size, step):
        sl = slice(start, start + step)
        b1, b2, a11, a21, a22 = (torch.as_tensor(t[sl])[:, None] for t in (m1, m2, l11, l21, l22))
        fu = torch.stack(f.derivatives(b1 + a11 * xt, na - 1), 1)  # (m, na, n)
        c = torch.as_tensor(coll[sl])
        v2 = (b2 + a21 * xt)[:, :, None] + a22[:, :, None] * xt  # (m, n, n)
        hv = torch.stack(h.derivatives(v2, nb - 1), 1) @ wt  # (m, nb, n): the y2-sum
        hv = torch.where(c[:, None, None], torch.stack(h.derivatives(b2 + a21 * xt, nb - 1), 1), hv)
        out[sl] = torch.einsum("map,mbp,p->mab", fu, hv, wt).reshape(-1, na * nb).numpy()
    return out


@dataclass(frozen=True)
class DerivativeMoments:
    """``E[f^(a)(u) h^(b)(v)]`` for ``a < na``, ``b < nb``: ``values`` of shape ``S + (na, nb)``.

    ``nodes`` is the finest quadrature level used and ``change`` the largest change between
    the last two levels of an accepted pair (the accuracy reached; ``nan`` for a fixed order).
    """

    values: np.ndarray
    nodes: int
    change: float


def derivative_moments(f: str | Activation, h: str | Activation, m1, m2, c11, c12, c22, *, orders: tuple[int, int] = (4, 4),
                       order: int | None = None, tol: float = QUADRATURE_TOL) -> DerivativeMoments:
    """``E[f^(a)(u) h^(b)(v)]``, ``a <= orders[0]``, ``b <= orders[1]``, for ``(u, v) ~ N((m1, m2), [[c11, c12], [c12, c22]])``.

    The means are the biases of the units. The arrays broadcast to a shape ``S``. By Price's
    theorem these are every derivative of the pair kernel ``E[f(u) h(v)]`` in its means and
    covariances (``d/dm1 -> a + 1``, ``d/dc12 -> (a + 1, b + 1)``, ``d/dc11 -> 1/2 (a + 2)``), which
    is what the population loss of any two-layer network needs
    (:mod:`nearopt.gaussian.network_objective`). Smooth pairs: checked tensor quadrature (Cholesky on
    :func:`normal_rule`, collinear pairs on one dimension, refined per pair until two levels agree
    to ``tol``: :func:`_converge_pairs`) unless an ``order`` is given; derivatives by
    :meth:`~nearopt.model.activations.Activation.derivatives`. ReLU (``g' = step``, ``g'' = delta``, ...):
    :func:`_relu_moments` (closed forms, a one-dimensional checked quadrature against a smooth partner).
    Another kinked activation raises :class:`NearoptError`.
    """
    f, h = get_activation(f), get_activation(h)
    for act in (f, h):
        if not act.is_smooth and not isinstance(act, ReLU):
            raise NearoptError(f"activation {act.name!r} has a kink: the derivative moments with means that networks with biases, "
                               "several outputs or a teacher of another activation need exist here for smooth activations and ReLU only; "
                               "use the batch route")
    shape = np.broadcast_shapes(*(np.shape(c) for c in (m1, m2, c11, c12, c22)))
    m1, m2, c11, c12, c22 = (np.asarray(c, dtype=np.float64).ravel() for c in np.broadcast_arrays(m1, m2, c11, c12, c22))
    na, nb = orders[0] + 1, orders[1] + 1
    if m1.size == 0:
        return DerivativeMoments(np.zeros((*shape, na, nb)), 0, 0.0)
    if isinstance(h, ReLU) and not isinstance(f, ReLU):  # the ReLU unit first
        r = _relu_moments(h, f, nb, na, m2, m1, c22, c12, c11, order, tol)
        return DerivativeMoments(np.swapaxes(r.values, -1, -2).reshape(*shape, na, nb), r.nodes, r.change)
    if isinstance(f, ReLU):
        r = _relu_moments(f, h, na, nb, m1, m2, c11, c12, c22, order, tol)
        return DerivativeMoments(r.values.reshape(*shape, na, nb), r.nodes, r.change)
    l11 = np.sqrt(np.maximum(c11, 0.0))
    l21 = np.divide(c12, l11, out=np.zeros_like(l11), where=l11 > 0)
    l22sq = np.clip(c22 - l21**2, 0.0, None)
    coll = l22sq <= COLLINEAR_TOL * np.maximum(c22, 1e-300)
    l22 = np.where(coll, 0.0, np.sqrt(l22sq))
    flat, used, change = _converge_pairs(
        lambda idx, n: _derivative_block(f, h, na, nb, m1[idx], m2[idx], l11[idx], l21[idx], l22[idx], coll[idx], n), m1.size, order, tol)
    return DerivativeMoments(flat.reshape(*shape, na, nb), used, change)


def degenerate_relu_error(what: str) -> NearoptError:
    """The one refusal of the exact ReLU moments: a delta moment that diverges or is undefined (units sharing their kink, a unit of zero variance)."""
    return NearoptError(
        f"the exact population moments of ReLU do not cover {what}: their delta moments diverge or are undefined "
        "(the population Hessian of a network takes units that share their kink through its own route); "
        "use the batch route (spectrum without --population, BatchHessian) for this pair"
    )


#: Gauss–Legendre panels of the half-line ``y > y0`` (up to :data:`QUAD_CUT`) of :func:`_relu_smooth_block`
RELU_PANELS = 26


def _relu_smooth_block(h: Activation, na: int, nb: int, m1, m2, s1, k, sv, n: int) -> np.ndarray:
    """``E[relu^(a)(u) h^(b)(v)]`` ``(m, na nb)`` at level ``n``, conditioned on the ReLU unit ``u = m1 + s1 y``.

    Given ``u``, ``v = m2 + k (u - m1) + sv z`` (``k = c12 / c11``, ``sv^2 = c22 (1 - r^2)``, ``sv = 0`` for a collinear pair).
    A delta on ``u`` (``a >= 2``): :func:`~nearopt.gaussian.relu_moments.delta_moments` with
    ``rho^(j) = E[h^(b+j)(m2 - k m1 + sv z)]`` (:func:`normal_rule` in ``z``). A ramp or a step (``a <= 1``): ``y`` on the
    half-line ``y > -m1 / s1`` where the unit is on (:data:`RELU_PANELS` Gauss–Legendre panels of ``ceil(n / 6)`` nodes up to
    :data:`QUAD_CUT`), ``z`` on :func:`normal_rule`: both integrands analytic, so the levels converge geometrically,
    for nearly collinear and collinear pairs too (the ``z``-dependence then fades).
    """
    x, w = normal_rule(n)
    out = np.zeros((m1.size, na, nb))
    if na > 2:
        V = torch.as_tensor((m2 - k * m1)[:, None] + sv[:, None] * x)
        rho = torch.stack(h.derivatives(V, nb + na - 4), 1).numpy() @ w  # (m, orders)
        for b in range(nb):
            out[:, 2:, b] = delta_moments(m1, s1, k, rho[:, b : b + na - 2])
    t, wt = np.polynomial.legendre.leggauss(max(4, math.ceil(n / 6)))
    y0 = np.clip(-m1 / s1, -QUAD_CUT, QUAD_CUT)
    width = (QUAD_CUT - y0) / RELU_PANELS  # (m,)
    left = y0[:, None] + width[:, None] * np.arange(RELU_PANELS)  # (m, panels)
    Y = (left[:, :, None] + 0.5 * width[:, None, None] * (t + 1.0)).reshape(m1.size, -1)  # (m, Ny)
    WY = (0.5 * width[:, None, None] * wt * np.ones((1, RELU_PANELS, 1))).reshape(m1.size, -1) * np.exp(-0.5 * Y * Y) / math.sqrt(2 * math.pi)
    xt, wz = torch.as_tensor(x), torch.as_tensor(w)
    step = max(1, _QUAD_BLOCK // (Y.shape[1] * n * nb))
    for start in range(0, m1.size, step):
        sl = slice(start, start + step)
        vy = torch.as_tensor(m2[sl, None] + (k * s1)[sl, None] * Y[sl])  # (m', Ny)
        v = vy[:, :, None] + torch.as_tensor(sv[sl])[:, None, None] * xt  # (m', Ny, n)
        Hv = (torch.stack(h.derivatives(v, nb - 1), 1) @ wz).numpy()  # (m', nb, Ny): the z-sum
        u = m1[sl, None] + s1[sl, None] * Y[sl]
        out[sl, 0, :] = np.einsum("my,mby->mb", WY[sl] * u, Hv)
        if na > 1:
            out[sl, 1, :] = np.einsum("my,mby->mb", WY[sl], Hv)
    return out.reshape(-1, na * nb)


def _relu_moments(f: Activation, h: Activation, na: int, nb: int, m1, m2, c11, c12, c22, order: int | None, tol: float) -> DerivativeMoments:
    """``E[relu^(a)(u) h^(b)(v)]`` ``(m, na, nb)`` for flat pairs, ``f`` ReLU (:mod:`nearopt.gaussian.relu_moments`).

    ``h`` ReLU: closed forms (exact; ``nodes = 0``), collinear pairs included where their kinks differ. ``h`` smooth:
    the checked quadrature of :func:`_relu_smooth_block`, conditioned on the ReLU unit (collinear pairs included).
    Units that share their kink (:func:`~nearopt.gaussian.relu_moments.coincident`) or have zero variance take only
    ramps and steps (``a, b <= 1``), and a ReLU unit of zero variance against a smooth one nothing: otherwise
    :func:`degenerate_relu_error`.
    """
    gap = correlation_gap(c11, c12, c22)
    coll = gap <= SHARED_GAP
    if isinstance(h, ReLU):
        out = np.zeros((m1.size, na, nb))
        two = ~coll
        if two.any():
            out[two] = relu_pair_values(m1[two], m2[two], c11[two], c12[two], c22[two], gap[two], na, nb)
        if coll.any():
            deltas = na > 2 or nb > 2
            if deltas and (np.any(coincident(m1, m2, c11, c12, c22, gap)) or np.any((c11[coll] == 0) | (c22[coll] == 0))):
                raise degenerate_relu_error(f"derivative orders ({na - 1}, {nb - 1}) of units that share their kink, or of zero variance")
            out[coll] = collinear_pair_values(m1[coll], m2[coll], c11[coll], c12[coll], c22[coll], na, nb)
        return DerivativeMoments(out, 0, 0.0)
    if np.any(c11 <= 0):
        raise degenerate_relu_error("a ReLU unit of zero variance (a zero row of W1)")
    s1, k = np.sqrt(c11), c12 / c11
    sv = np.sqrt(np.maximum(c22, 0.0) * gap)
    flat, used, change = _converge_pairs(
        lambda idx, n: _relu_smooth_block(h, na, nb, m1[idx], m2[idx], s1[idx], k[idx], sv[idx], n), m1.size, order, tol)
    return DerivativeMoments(flat.reshape(-1, na, nb), used, change)


def unit_moments(f: str | Activation, mean, variance, *, orders: int = 4, order: int | None = None, tol: float = QUADRATURE_TOL) -> DerivativeMoments:
    """``E[f^(a)(u)]``, ``a <= orders``, for ``u ~ N(mean, variance)``: ``values`` of shape ``S + (orders + 1,)``.

    The pair moments of :func:`derivative_moments` against the constant 1 (one quadrature module); ReLU's in
    closed form (:func:`~nearopt.gaussian.relu_moments.ramp_derivatives`).
    """
    f = get_activation(f)
    if isinstance(f, ReLU):  # closed form: the smoothed ramp's derivatives
        mean, variance = np.broadcast_arrays(np.asarray(mean, dtype=np.float64), np.asarray(variance, dtype=np.float64))
        if np.any(variance <= 0):
            raise degenerate_relu_error("a ReLU unit of zero variance (a zero row of W1)")
        return DerivativeMoments(ramp_derivatives(mean, np.sqrt(variance), orders), 0, 0.0)
    r = derivative_moments(f, _ONE, mean, 0.0, variance, 0.0, 0.0, orders=(orders, 0), order=order, tol=tol)
    return DerivativeMoments(r.values[..., 0], r.nodes, r.change)


def output_power(net, inputs=None, *, order: int | None = None, tol: float = QUADRATURE_TOL) -> float:
    """``E[|f(x)|^2]`` of a two-layer network ``f(x) = W2 g(W1 x + b1) + b2``, ``x ~ N(0, Sigma)`` (biases optional).

    ``net`` has ``W1`` ``(N_h, N_i)``, ``W2`` ``(N_o, N_h)`` and an ``activation``; ``inputs`` a
    :class:`~nearopt.model.problem.GaussianInputs` (``None``: ``Sigma = I``). Equals
    ``sum_o W2[o] Phi W2[o]^T`` with the pair kernel ``Phi = E[g(u_a) g(u_c)]`` (:func:`kernel`) on
    the Gram matrix ``W1 Sigma W1^T``: the teacher's output power, which scales every "zero loss"
    decision. A sum of ``O(N_h^2)`` terms of size up to ``max Phi |W2|^2``: exact to a few ``eps``
    of that (it cancels only where the units' contributions do).
    """
    W1 = np.asarray(net.W1, dtype=np.float64)
    G = W1 @ W1.T if inputs is None or inputs.isotropic else inputs.matmul(W1) @ W1.T
    d = np.diag(G)
    iu, ju = np.triu_indices(W1.shape[0])
    phi = np.zeros_like(G)
    b1, b2 = getattr(net, "b1", None), getattr(net, "b2", None)
    c12 = 0.5 * (G[iu, ju] + G[ju, iu])
    if b1 is None:
        phi[iu, ju] = kernel(net.activation, d[iu], c12, d[ju], order=order, tol=tol)
    else:  # non-centred pre-activations: the kernel with means
        phi[iu, ju] = derivative_moments(net.activation, net.activation, b1[iu], b1[ju], d[iu], c12, d[ju], orders=(0, 0), order=order, tol=tol).values[:, 0, 0]
    phi[ju, iu] = phi[iu, ju]
    W2 = np.asarray(net.W2, dtype=np.float64).reshape(-1, W1.shape[0])
    power = float(np.einsum("oi,ij,oj->", W2, phi, W2))
    if b2 is None:
        return power
    mean = unit_moments(net.activation, 0.0 if b1 is None else b1, d, orders=0, order=order, tol=tol).values[:, 0]
    return power + float(2.0 * b2 @ (W2 @ mean) + b2 @ b2)
