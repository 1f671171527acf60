"""Predicted SGD dynamics near the optimum: the linearised second-moment recursion (docs/sgd.md).

Near ``theta*`` with labels ``y = f*(x) + sigma xi`` the residual is ``J(x)^T delta - sigma xi``
(``J(x) = grad_theta f(x)`` at ``theta*``). One SGD step on a batch of ``B`` fresh inputs is
``delta' = (I - eta H_B) delta + eta sigma/B sum_b J_b xi_b`` with ``H_B = 1/B sum_b J_b J_b^T``,
so ``S_t = E[delta_t delta_t^T]`` obeys::

    S' = S - eta (H S + S H) + eta^2 [(1 - 1/B) H S H + M4(S) / B + sigma^2 / B H]
    M4(S) = E[(J^T S J) J J^T],    E[L_t] = 1/2 tr(H S_t).

The map ``S -> S'`` (without the noise term) is linear and self-adjoint for the Frobenius inner
product (``<X, M4(S)> = E[(J^T S J)(J^T X J)]``), so in orthonormal coordinates it is a symmetric
matrix ``T(eta, B)``: one ``eigh`` gives the whole curve, the stationary loss
``1/2 <H, (I - T)^{-1} b>`` and the spectral radius (the critical learning rate is where it
reaches 1).

Two models of ``M4`` share that machinery (:class:`SecondMomentModel`):

* **spectral** (Gaussian-equivalent) ``M4(S) = 2 H S H + tr(H S) H``, exact when ``J`` is
  Gaussian (linear networks). In the eigenbasis of ``H`` it closes on the diagonal, so it runs
  on the distinct eigenvalues with their multiplicities (:func:`spectral_model`), at any size
  nearopt has a spectrum for. Closed forms: :func:`stationary_factor` ``A``,
  :func:`spectral_stationary_loss` ``A sigma^2 / (2 (1 - A))`` and :func:`spectral_critical_lr`.
* **exact** linearised (:func:`exact_model`): the true fourth moments of ``J`` under
  ``x ~ N(0, I)``. With ``W1 = U S V^T`` of rank ``r``, ``x = Q y + Q_perp z`` (``y ~ N(0, I_r)``
  on the row space, ``z ~ N(0, I_m)`` on its complement, ``m = N_i - r``); in rotated
  coordinates ``J = (J_A(y), c(y) (x) z)`` with ``J_A = (v_a g'(u_a) y, g(u_a))`` and
  ``c_a = v_a g'(u_a)``, ``u = W1 Q y``. Rotations of ``z`` leave the law invariant, so from an
  isotropic start ``S = S_AA (+) C (x) I_m`` for all ``t``, and Wick's theorem on ``z``
  (``E[z z^T] = I``, ``E[|z|^2 z z^T] = (m + 2) I``) leaves expectations over ``y`` only::

      M4_AA = E_y[(a + m b) J_A J_A^T],   M4_C = E_y[(a + (m + 2) b) c c^T],
      a = J_A^T S_AA J_A,   b = c^T C c,

  taken by tensor Gauss-Hermite quadrature in ``r`` dimensions (exact for polynomial
  activations with ``2 deg + 1`` nodes per axis, checked against a finer rule otherwise), or by
  rules over the span of at most four units (:mod:`~nearopt.dynamics.sgd_units`, polynomial in
  ``N_h``; ``exact_model(route=...)``).

Coordinates: the eigenbasis of ``H`` restricted to its range (null directions keep
``S`` constant and carry no loss), symmetric matrices as ``vech`` with off-diagonal entries
times ``sqrt 2``, the ``C`` block times ``sqrt m`` (its copies). Each coordinate ``k`` is a pair
of eigenvalues ``(l_i, l_j)`` of ``H``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.linalg
import scipy.optimize
import torch

from ..curvature.batch import jacobian
from ..curvature.population import PopulationHessian, population_spectrum
from ..errors import NearoptError, require_positive_finite, require_positive_int
from ..gaussian.expectations import gauss_hermite
from ..gaussian.objective import population_loss
from ..model.network import TwoLayerNet
from ..model.problem import Problem, as_problem, require_paper_setting
from ..policy import RankPolicy
from ..resources import dense_bytes, require_memory
from ..spectra.grouping import cluster_labels
from ..spectra.spectrum import Spectrum
from ..tolerances import EPS, ROUNDING_RTOL
from .sgd_units import axis_order, unit_fourth_moments, unit_second_moments, unit_work

__all__ = [
    "check_order", "default_order", "exact_model", "fixed_set_model", "FixedSetModel", "gaussian_m4", "hermite_rule", "MAX_COORDINATES", "MAX_EXACT_COORDINATES", "PENCIL_SIZE",
    "MAX_QUADRATURE_WORK", "MINIMUM_RTOL", "predictions", "problem_spectrum", "QUADRATURE_ORDER", "RANGE_RTOL", "reduced_jacobian", "ReducedJacobian", "ROUTES",
    "SecondMomentModel", "spectral_critical_lr", "spectral_model", "spectral_stationary_loss", "spectrum_model", "SQRT2", "stationary_factor",
    "training_set"
]

SQRT2 = math.sqrt(2.0)
#: eigenvalues of ``H`` below this times ``lambda_max`` are null directions (kept constant, no loss)
RANGE_RTOL = ROUNDING_RTOL
#: default Gauss-Hermite nodes per axis for non-polynomial activations (checked by :func:`check_order`)
QUADRATURE_ORDER = 48
#: the exact route refuses rules costing more than this many multiply-adds (nodes x D^2)
MAX_QUADRATURE_WORK = 1.5e11
#: the spectral recursion groups (and refuses) beyond this many distinct eigenvalues
MAX_COORDINATES = 4000
#: exact models above this many coordinates take their critical rate from one eigenproblem (:meth:`SecondMomentModel.pencil_lr`)
PENCIL_SIZE = 1000
#: the exact route refuses recursions with more coordinates than this (one eigh of D x D per rate: 19 s at 5105)
MAX_EXACT_COORDINATES = 6400
#: the routes to the exact moments (:func:`exact_model`)
ROUTES = ("auto", "tensor", "units")
#: a point is a global minimum when its population loss is below this times E[f*^2]
MINIMUM_RTOL = ROUNDING_RTOL


def _vech(M: np.ndarray) -> np.ndarray:
    """``vech`` of symmetric ``M`` ``(..., n, n)`` with off-diagonals times ``sqrt 2``: ``(..., n(n+1)/2)``."""
    n = M.shape[-1]
    i, j = np.triu_indices(n)
    return M[..., i, j] * np.where(i == j, 1.0, SQRT2)


def _pair_features(F: torch.Tensor) -> torch.Tensor:
    """``vech(f f^T)`` (off-diagonals times ``sqrt 2``) for rows ``f`` of ``F`` ``(Q, n)``: ``(Q, n(n+1)/2)``."""
    n = F.shape[1]
    i, j = np.triu_indices(n)
    scale = torch.as_tensor(np.where(i == j, 1.0, SQRT2), dtype=F.dtype)
    return F[:, i] * F[:, j] * scale


@dataclass
class SecondMomentModel:
    """The recursion ``s' = T(eta, B) s + eta^2 sigma^2 / B h`` in orthonormal coordinates (module docstring).

    ``li``, ``lj`` ``(D,)``: the eigenvalue pair of each coordinate; ``h`` ``(D,)``: ``H`` in these
    coordinates (``E[L] = 1/2 h . s``); ``s0`` ``(D,)``: the start ``S_0 = I`` (times ``sigma0^2``);
    ``m4`` ``(D, D)`` symmetric: ``M4``. ``eigenvalues`` ``(n,)``/``counts``: the spectrum of ``H``
    (with multiplicities) the model was built on.
    """

    kind: str
    li: np.ndarray
    lj: np.ndarray
    h: np.ndarray
    s0: np.ndarray
    m4: np.ndarray
    eigenvalues: np.ndarray
    counts: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> int:
        """``D``, the number of coordinates."""
        return int(self.h.size)

    @property
    def lambda_max(self) -> float:
        return float(self.eigenvalues.max()) if self.eigenvalues.size else 0.0

    @property
    def lambda_min(self) -> float:
        """Smallest eigenvalue of ``H`` on its range."""
        return float(self.eigenvalues.min()) if self.eigenvalues.size else float("nan")

    def operator(self, lr: float, batch: int) -> np.ndarray:
        """``T(eta, B)`` ``(D, D)``: ``I - eta (l_i + l_j) + eta^2 (1 - 1/B) l_i l_j`` on the diagonal, plus ``eta^2/B M4``."""
        lr, batch = _check_rate(lr, batch)
        T = (lr * lr / batch) * self.m4
        T[np.diag_indices_from(T)] += 1.0 - lr * (self.li + self.lj) + lr * lr * (1.0 - 1.0 / batch) * self.li * self.lj
        return T

    def spectral_radius(self, lr: float, batch: int) -> float:
        """``max |eig T(eta, B)|``: the recursion converges iff it is ``< 1``."""
        # every eigenvalue: T is small (one row per distinct eigenvalue of H), and LAPACK's evr
        # driver behind subset_by_index fails on the repeated eigenvalues such spectra have
        w = scipy.linalg.eigvalsh(self.operator(lr, batch))
        return float(max(abs(w[0]), abs(w[-1])))

    def curve(self, lr: float, batch: int, steps, *, sigma0: float, noise: float = 0.0) -> np.ndarray:
        """``E[L_t]`` ``(T,)`` at integer ``steps`` from ``S_0 = sigma0^2 I`` (``inf`` where it overflows).

        ``s_t = V mu^t V^T s_0 sigma0^2 + V (1 - mu^t)/(1 - mu) V^T b`` with ``T = V diag(mu) V^T``.
        """
        return self.curve_function(lr, batch, sigma0=sigma0, noise=noise)(steps)

    def curve_function(self, lr: float, batch: int, *, sigma0: float, noise: float = 0.0):
        """:meth:`curve` as a function of the steps alone, with ``T``'s ``eigh`` done once (for searches over ``t``)."""
        mu, V = scipy.linalg.eigh(self.operator(lr, batch))
        hv, sv = self.h @ V, self.s0 @ V
        b = (lr * lr * noise * noise / batch) * hv  # V^T b (b is along h)

        def at(steps) -> np.ndarray:
            t = np.asarray(steps, dtype=np.float64)
            with np.errstate(over="ignore", invalid="ignore"):
                pw = np.sign(mu)[None, :] ** t[:, None] * np.abs(mu)[None, :] ** t[:, None]  # (T, D)
                gap = 1.0 - mu
                geo = np.where(np.abs(gap) > 1e-13, (1.0 - pw) / np.where(gap == 0, 1.0, gap), t[:, None])
                out = 0.5 * (pw * (hv * sv * sigma0**2)[None, :] + geo * (hv * b)[None, :]).sum(1)
            return np.where(np.isfinite(out), out, np.inf)

        return at

    def stationary_loss(self, lr: float, batch: int, noise: float) -> float:
        """``lim E[L_t] = 1/2 h^T (I - T)^{-1} b`` (``0`` without noise; ``inf`` at or beyond the critical rate)."""
        if noise == 0.0:
            return 0.0 if self.spectral_radius(lr, batch) < 1.0 else math.inf
        mu, V = scipy.linalg.eigh(self.operator(lr, batch))
        if np.max(np.abs(mu)) >= 1.0:
            return math.inf
        hv = self.h @ V
        return float(0.5 * (lr * lr * noise * noise / batch) * np.sum(hv * hv / (1.0 - mu)))

    def critical_lr(self, batch: int, *, method: str = "auto", rtol: float = 1e-10) -> float:
        """Smallest ``eta`` where the spectral radius of ``T(eta, B)`` reaches 1.

        ``method="radius"``: bisection on the spectral radius after a geometric scan, bracketed by
        ``(0, 2 / lambda_max]`` (``<u u^T, T(u u^T)> >= (1 - eta lambda)^2`` by Cauchy-Schwarz on
        ``M4``, so the radius is at least 1 at GD's limit). ``method="pencil"``: one symmetric
        eigenproblem (:meth:`pencil_lr`), exact where the ``+1`` crossing comes first, which holds when
        it lies below ``1 / lambda_max`` (else the radius bisection below it). ``"auto"`` uses the
        pencil for exact models above :data:`PENCIL_SIZE` coordinates, the radius below, and the
        closed form :func:`spectral_critical_lr` (``A(eta) = 1``, ``O(n)`` per evaluation) for the
        spectral one.
        """
        batch = require_positive_int(batch, "batch size")
        if method not in ("auto", "radius", "pencil"):
            raise NearoptError(f"unknown critical-rate method {method!r}; choose auto, radius or pencil")
        if self.size == 0:
            return math.inf
        if method == "auto" and self.kind == "spectral":
            return spectral_critical_lr(self.eigenvalues, self.counts, batch)
        top = 2.0 / self.lambda_max
        if method == "pencil" or (method == "auto" and self.size > PENCIL_SIZE):
            eta = self.pencil_lr(batch)
            if eta * self.lambda_max < 1.0:
                return eta
            top = min(top, eta)
        grid = top * np.geomspace(1e-9, 1.0, 91)
        radius = [self.spectral_radius(e, batch) - 1.0 for e in grid]
        k = next((i for i, r in enumerate(radius) if r >= 0.0), None)
        if k is None:  # the pencil's crossing, where the radius is 1 up to rounding
            return float(top)
        if k == 0:
            return float(grid[0])
        return float(scipy.optimize.brentq(lambda e: self.spectral_radius(e, batch) - 1.0, grid[k - 1], grid[k], xtol=1e-14 * float(grid[k]), rtol=rtol))

    def pencil_lr(self, batch: int) -> float:
        """Smallest ``eta > 0`` where an eigenvalue of ``T(eta, B)`` equals ``+1``.

        ``T = I - eta A + eta^2 C`` with ``A = diag(l_i + l_j) > 0`` and ``C = (1 - 1/B) diag(l_i l_j) + M4 / B``
        (positive semi-definite), so ``T x = x`` iff ``C x = A x / eta``: ``eta = 1 / lambda_max(A^-1/2 C A^-1/2)``.
        No eigenvalue reaches ``-1`` before ``1 / lambda_max`` (``T + I >= 2 I - eta A > 0`` there).
        """
        batch = require_positive_int(batch, "batch size")
        a = self.li + self.lj
        C = self.m4 / batch
        C[np.diag_indices_from(C)] += (1.0 - 1.0 / batch) * self.li * self.lj
        r = 1.0 / np.sqrt(a)
        top = float(scipy.linalg.eigvalsh(r[:, None] * C * r[None, :])[-1])
        return 1.0 / top if top > 0 else math.inf

    def late_rate(self, lr: float, batch: int) -> float:
        """Late-time decay rate of ``E[L_t]`` per step without noise: ``-log(max mu)`` (GD: ``-2 log|1 - eta lambda_min|``)."""
        return float(-math.log(self.spectral_radius(lr, batch)))


def _check_rate(lr: float, batch: int) -> tuple[float, int]:
    lr = require_positive_finite(lr, "learning rate")
    return float(lr), require_positive_int(batch, "batch size")


# --------------------------------------------------------------------------- spectral (Gaussian-equivalent)
def gaussian_m4(li: np.ndarray, lj: np.ndarray, h: np.ndarray) -> np.ndarray:
    """``M4(S) = 2 H S H + tr(H S) H`` in the eigen-coordinates: ``2 diag(l_i l_j) + h h^T`` ``(D, D)``."""
    return 2.0 * np.diag(li * lj) + np.outer(h, h)


def spectral_model(eigenvalues, counts=None, *, rtol: float = RANGE_RTOL) -> SecondMomentModel:
    """The Gaussian-equivalent recursion on distinct eigenvalues ``(n,)`` with multiplicities ``counts`` ``(n,)``.

    In the eigenbasis ``S`` stays diagonal; eigenvalues shared by ``n_k`` directions share one
    coordinate ``sqrt(n_k) s_k`` (so ``h_k = sqrt(n_k) lambda_k``). Eigenvalues below
    ``rtol lambda_max`` are null directions and are left out.
    """
    lam = np.asarray(eigenvalues, dtype=np.float64).ravel()
    n = np.ones(lam.size) if counts is None else np.asarray(counts, dtype=np.float64).ravel()
    if n.shape != lam.shape or not np.all(np.isfinite(lam)):
        raise NearoptError("eigenvalues must be finite, with one multiplicity each")
    if lam.size == 0 or lam.max() <= 0:
        raise NearoptError("the Hessian is zero: SGD does not move near the optimum")
    keep = lam > rtol * lam.max()
    lam, n = lam[keep], n[keep]
    if lam.size > MAX_COORDINATES:  # group equal values (dense spectra with rounding-level splits)
        lam, n = _group(lam, n)
    h = np.sqrt(n) * lam
    return SecondMomentModel("spectral", lam, lam, h, np.sqrt(n), gaussian_m4(lam, lam, h), lam, n.astype(np.int64))


def _group(lam: np.ndarray, n: np.ndarray, rtol: float = ROUNDING_RTOL) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues ``lam`` ``(m,)`` of multiplicities ``n`` merged by :func:`~nearopt.spectra.grouping.cluster_labels` (gaps
    ``> rtol max lam``): each cluster's total multiplicity and its multiplicity-weighted mean value."""
    lab = cluster_labels(lam, rtol * lam.max())
    counts = np.bincount(lab, weights=n).round().astype(np.int64)
    values = np.bincount(lab, weights=lam * n) / counts
    if values.size > MAX_COORDINATES:
        raise NearoptError(f"{values.size} distinct eigenvalues: the spectral recursion handles at most {MAX_COORDINATES} (use the structured spectrum)")
    return values, counts


def spectrum_model(spec: Spectrum) -> SecondMomentModel:
    """:func:`spectral_model` of a :class:`Spectrum` (its ``multiplicities`` when it has them)."""
    if spec.partial:
        raise NearoptError("the spectral SGD prediction needs every eigenvalue (not a Lanczos subset)")
    if spec.multiplicities is not None:
        return spectral_model(*spec.multiplicities)
    return spectral_model(spec.eigenvalues)


def problem_spectrum(problem: Problem | TwoLayerNet) -> Spectrum:
    """The population spectrum the spectral prediction runs on: the ``structured`` route (any ``P``)."""
    return population_spectrum(as_problem(problem), method="structured")


def stationary_factor(eigenvalues, counts, lr: float, batch: int) -> float:
    """``A = (eta/B) sum_k n_k lambda_k / (2 - eta lambda_k (1 + 1/B))`` (``inf`` once a denominator is ``<= 0``)."""
    lr, batch = _check_rate(lr, batch)
    lam = np.asarray(eigenvalues, dtype=np.float64)
    n = np.ones_like(lam) if counts is None else np.asarray(counts, dtype=np.float64)
    den = 2.0 - lr * lam * (1.0 + 1.0 / batch)
    if np.any(den[lam > 0] <= 0):
        return math.inf
    return float(lr / batch * np.sum(np.where(lam > 0, n * lam / np.where(den > 0, den, 1.0), 0.0)))


def spectral_stationary_loss(eigenvalues, counts, lr: float, batch: int, noise: float) -> float:
    """Closed form ``A sigma^2 / (2 (1 - A))`` of the Gaussian-equivalent stationary excess loss (``inf`` for ``A >= 1``)."""
    A = stationary_factor(eigenvalues, counts, lr, batch)
    if A >= 1.0:
        return math.inf
    return 0.5 * A * noise * noise / (1.0 - A)


def spectral_critical_lr(eigenvalues, counts, batch: int) -> float:
    """The ``eta`` with ``A(eta) = 1`` (``A`` grows from 0 to ``inf`` on ``(0, 2 / (lambda_max (1 + 1/B)))``).

    For a non-negative ``T = D + c w w^T`` with ``D < 1`` the spectral radius is below 1 iff
    ``c w^T (I - D)^{-1} w = A < 1``.
    """
    batch = require_positive_int(batch, "batch size")
    lam = np.asarray(eigenvalues, dtype=np.float64)
    top = 2.0 / (float(lam.max()) * (1.0 + 1.0 / batch))
    f = lambda e: stationary_factor(eigenvalues, counts, e, batch) - 1.0
    lo, hi = 0.0, top
    # bisect on the open interval: A is finite and increasing below ``top``
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        if f(mid) < 0:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


# --------------------------------------------------------------------------- exact linearised
@dataclass(frozen=True)
class ReducedJacobian:
    """``J`` in rotated coordinates: ``J_A(y)`` from the row space of ``W1`` and ``c(y)`` on its complement.

    ``Wr`` ``(K, r)``: ``W1`` in an orthonormal basis of its row space; ``v`` ``(K,)``; ``m = N_i - r``
    complement copies; ``first``/``second``: which layers train.
    """

    activation: Any
    Wr: np.ndarray
    v: np.ndarray
    m: int
    first: bool
    second: bool

    @property
    def rank(self) -> int:
        return int(self.Wr.shape[1])

    @property
    def size_a(self) -> int:
        K, r = self.Wr.shape
        return K * r * self.first + K * self.second

    @property
    def size_c(self) -> int:
        return self.Wr.shape[0] if (self.first and self.m > 0) else 0

    def features(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``J_A`` ``(Q, size_a)`` and ``c`` ``(Q, size_c)`` at row-space points ``y`` ``(Q, r)``."""
        Wr, v = torch.as_tensor(self.Wr), torch.as_tensor(self.v)
        u = y @ Wr.T  # (Q, K)
        parts, c = [], y.new_zeros((y.shape[0], 0))
        if self.first:
            gp = self.activation.derivative(u) * v
            parts.append((gp[:, :, None] * y[:, None, :]).reshape(y.shape[0], -1))
            if self.m > 0:
                c = gp
        if self.second:
            parts.append(self.activation(u))
        return torch.cat(parts, 1), c


def reduced_jacobian(problem: Problem) -> ReducedJacobian:
    """:class:`ReducedJacobian` of the problem's point (``W1 = U S V^T``, ``Wr = U S`` on the rank-``r`` part)."""
    net = problem.point
    U, S, _ = scipy.linalg.svd(net.W1, full_matrices=False)
    tol = max(net.W1.shape) * EPS * (S[0] if S.size else 0.0)
    r = int(np.count_nonzero(S > tol))
    return ReducedJacobian(net.activation, U[:, :r] * S[:r], net.W2.ravel().astype(np.float64), net.n_inputs - r,
                           problem.trained in ("both", "first"), problem.trained in ("both", "second"))


def hermite_rule(order: int, dim: int, chunk: int):
    """Tensor product of :func:`~nearopt.gaussian.expectations.gauss_hermite` for ``E[f(y)]``, ``y ~ N(0, I_dim)``: yields ``(nodes (c, dim), weights (c,))`` chunks."""
    x, w = gauss_hermite(order)
    total = order**dim
    for start in range(0, total, chunk):
        idx = np.arange(start, min(total, start + chunk))
        digits = (idx[:, None] // order ** np.arange(dim)[None, :]) % order
        yield torch.as_tensor(x[digits]), torch.as_tensor(np.prod(w[digits], axis=1))


def default_order(activation) -> tuple[int, bool]:
    """Nodes per axis and whether the rule is exact (``2 deg + 1`` for a polynomial of degree ``deg``)."""
    c = activation.polynomial_coefficients
    if c is not None:
        return 2 * max(len(c) - 1, 1) + 1, True
    return QUADRATURE_ORDER, False


def _second_moments(rj: ReducedJacobian, order: int, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    HA = torch.zeros((rj.size_a, rj.size_a), dtype=torch.float64)
    M = torch.zeros((rj.size_c, rj.size_c), dtype=torch.float64)
    for y, w in hermite_rule(order, rj.rank, chunk):
        JA, c = rj.features(y)
        HA += JA.T @ (w[:, None] * JA)
        M += c.T @ (w[:, None] * c)
    return HA.numpy(), M.numpy()


def _ranges(blocks: tuple[np.ndarray, ...], rtol: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """The range ``(lambda (r,), U (n, r))`` of each symmetric block, cut by the one rank policy on all of them together:
    eigenvalues ``<= rtol * max |lambda|`` over the blocks are null directions (the policy's ``rtol`` applies to ``sqrt(lambda)``)."""
    pairs = [scipy.linalg.eigh(0.5 * (H + H.T)) if H.size else (np.zeros(0), np.zeros((0, 0))) for H in blocks]
    decision = RankPolicy(rtol=math.sqrt(rtol)).from_eigenvalues(np.concatenate([lam for lam, _ in pairs]))
    return [(lam[lam > decision.eigenvalue_tolerance], U[:, lam > decision.eigenvalue_tolerance]) for lam, U in pairs]


def _fourth_moments(rj: ReducedJacobian, UA: np.ndarray, UC: np.ndarray, order: int, chunk: int) -> np.ndarray:
    """``M4`` ``(D, D)`` in the coordinates ``(vech_w(S_AA), sqrt(m) vech_w(C))`` of the eigenbases ``UA``, ``UC``."""
    ka, kc = UA.shape[1], UC.shape[1]
    da, dc = ka * (ka + 1) // 2, kc * (kc + 1) // 2
    M4 = torch.zeros((da + dc, da + dc), dtype=torch.float64)
    UA_t, UC_t = torch.as_tensor(UA), torch.as_tensor(UC)
    rm = math.sqrt(rj.m)
    for y, w in hermite_rule(order, rj.rank, chunk):
        JA, c = rj.features(y)
        phi = _pair_features(JA @ UA_t)
        if dc:
            psi = _pair_features(c @ UC_t)
            F = torch.cat([phi, rm * psi], 1)
            M4 += F.T @ (w[:, None] * F)
            M4[da:, da:] += 2.0 * psi.T @ (w[:, None] * psi)  # (m + 2) - m: the Wick term E[|z|^2 z z^T] - m E[z z^T]
        else:
            M4 += phi.T @ (w[:, None] * phi)
    out = M4.numpy()
    return 0.5 * (out + out.T)


def _require_minimum(problem: Problem) -> None:
    if not problem.inputs.isotropic:
        raise NearoptError("the exact SGD prediction is implemented for isotropic inputs x ~ N(0, I); the spectral prediction handles --input-cov")
    if problem.at_teacher:
        return
    zero = TwoLayerNet(problem.teacher.W1[:1], np.zeros((1, 1)), problem.activation)
    power = 2.0 * population_loss(Problem(problem.teacher, student=zero))
    loss = population_loss(problem)
    if loss > MINIMUM_RTOL * max(power, 1e-300) + 1e3 * EPS * power:
        raise NearoptError(f"the student is not at a global minimum (population loss {loss:.3g}): the linearised SGD prediction needs a zero residual")


def exact_model(problem: Problem | TwoLayerNet, *, order: int | None = None, check: bool | str = True,
                closed_form: bool = True, chunk: int = 8192, rtol: float = RANGE_RTOL, route: str = "auto") -> SecondMomentModel:
    """The exact linearised recursion: true fourth moments of ``J`` (module docstring).

    ``order``: Gauss-Hermite nodes per axis (default: exact for polynomials, else
    :data:`QUADRATURE_ORDER`, lowered to fit :data:`MAX_QUADRATURE_WORK`); ``check`` repeats a
    non-exact rule at :func:`check_order` and reports ``info["quadrature_error"]`` (max relative
    change of ``M4`` and ``H``; ``None`` unchecked); ``check="auto"`` checks where the check fits the
    budget and otherwise builds the rule alone, saying so in ``info["check_skipped"]``; ``closed_form``: for linear activations use ``M4 = 2HSH + tr(HS)H`` (``J`` is
    Gaussian) instead of the rule. ``info["hessian"]`` is ``H``'s eigenvalues with multiplicities.
    ``route``: ``"tensor"`` (one rule in the ``r`` dimensions of the row space), ``"units"`` (rules over
    the span of at most four units, :mod:`~nearopt.dynamics.sgd_units`: polynomial in ``N_h``) or
    ``"auto"`` (the cheaper at the default order); ``info["route"]`` says which ran.
    """
    pr = as_problem(problem)
    require_paper_setting(pr, "the SGD predictions")
    _require_minimum(pr)
    if route not in ROUTES:
        raise NearoptError(f"unknown exact-moment route {route!r}; choose {', '.join(ROUTES)}")
    rj = reduced_jacobian(pr)
    auto, exact_rule = default_order(rj.activation)
    if order is not None:
        require_positive_int(order, "quadrature order")
    if rj.size_a == 0:
        raise NearoptError("no trained parameters")
    # refuse before any quadrature: the coordinates are at most those of the full reduced blocks
    bound = rj.size_a * (rj.size_a + 1) // 2 + rj.size_c * (rj.size_c + 1) // 2
    if check not in (True, False, "auto"):
        raise NearoptError(f"check must be True, False or 'auto', got {check!r}")
    checked = bool(check) and not exact_rule
    asked = route
    route, n, work = _plan(rj, asked, order, auto, exact_rule, checked, bound)
    skipped = False
    if check == "auto" and checked and work > MAX_QUADRATURE_WORK and bound <= MAX_EXACT_COORDINATES:
        plan = _plan(rj, asked, order, auto, exact_rule, False, bound)
        if plan[2] <= MAX_QUADRATURE_WORK:  # the rule fits, its check does not: build it unchecked, and say so
            (route, n, work), checked, skipped = plan, False, True
    n2 = check_order(n)
    if bound > MAX_EXACT_COORDINATES or work > MAX_QUADRATURE_WORK:
        unchecked = checked and bound <= MAX_EXACT_COORDINATES and _plan(rj, asked, order, auto, exact_rule, False, bound)[2] <= MAX_QUADRATURE_WORK
        hint = "; without the check rule it fits (exact_model(..., check=False or 'auto'))" if unchecked else ""
        raise NearoptError(
            f"the exact SGD recursion is out of reach here (N_h = {pr.point.n_hidden}, rank W1 = {rj.rank}: up to {bound} coordinates, "
            f"{_describe_rule(route, n, rj.rank)}, {work:.2g} operations{hint}); use a smaller N_h or the spectral prediction")
    if route == "units":
        F = rj.Wr.shape[0] * (rj.rank + 1)
        require_memory(dense_bytes((F**4 + F**2 * rj.size_c**2 + F**3 * rj.size_a,), np.float64), "the exact SGD moments by units", "the spectral prediction")
    HA, M = _moments2(route, rj, n, chunk)
    (lamA, UA), (lamC, UC) = _ranges((HA, M), rtol)
    D = lamA.size * (lamA.size + 1) // 2 + lamC.size * (lamC.size + 1) // 2
    if D > MAX_EXACT_COORDINATES:
        raise NearoptError(f"the exact SGD recursion has {D} coordinates (N_h = {pr.point.n_hidden}, rank W1 = {rj.rank}); "
                           f"at most {MAX_EXACT_COORDINATES}: use the spectral prediction")
    require_memory(dense_bytes(D, np.float64, 4), f"the exact SGD recursion ({D} x {D})", "the spectral prediction")
    li, lj, h, s0 = _coordinates(lamA, lamC, rj.m)
    linear = rj.activation.polynomial_coefficients is not None and len(rj.activation.polynomial_coefficients) <= 2
    info: dict[str, Any] = {"row_rank": rj.rank, "complement_multiplicity": rj.m, "coordinates": D, "route": route}
    if skipped:
        info["check_skipped"] = f"the check rule ({check_order(n)} nodes per axis) is over the budget: no quadrature error estimate"
    if linear and closed_form:
        m4 = gaussian_m4(li, lj, h)
        info.update(method="closed-form (J is Gaussian for a linear network)", quadrature_error=0.0)
    else:
        m4 = _moments4(route, rj, UA, UC, n, chunk)
        # an unchecked rule for a non-polynomial activation has no error estimate
        info.update(method="gauss-hermite (exact for this polynomial)" if exact_rule else "gauss-hermite", order=n,
                    quadrature_error=0.0 if exact_rule else None)
        if checked:
            HA2, M2 = _moments2(route, rj, n2, chunk)
            m4b = _moments4(route, rj, UA, UC, n2, chunk)
            err_h = max(_rel(HA, HA2), _rel(M, M2))
            info.update(quadrature_error=max(_rel(m4, m4b), err_h), check_order=n2)
            m4 = m4b  # keep the finer rule: the change from the coarser one bounds its error
    eig, cnt = _merge_spectrum(lamA, lamC, rj.m)
    model = SecondMomentModel("exact", li, lj, h, s0, m4, eig, cnt, info)
    return model


def _plan(rj: ReducedJacobian, route: str, order: int | None, auto: int, exact_rule: bool, checked: bool, bound: int) -> tuple[str, int, float]:
    """The route (``auto``: the one reaching the finer rule within :data:`MAX_QUADRATURE_WORK`, then the cheaper),
    its nodes per axis (lowered to fit the budget unless given) and its work with the check rule."""
    width = bound + rj.size_a

    def work(r: str, n: int) -> float:
        one = _unit_route_work(rj, n) if r == "units" else _work(n, rj.rank, width)
        return one + ((_unit_route_work(rj, check_order(n)) if r == "units" else _work(check_order(n), rj.rank, width)) if checked else 0.0)

    def fit(r: str) -> int:
        if order is not None or exact_rule:
            return auto if order is None else order
        return next((k for k in range(QUADRATURE_ORDER, 15, -4) if work(r, k) <= MAX_QUADRATURE_WORK), 16)

    if route == "auto":  # the finer rule within the budget, then the cheaper
        route = min(ROUTES[1:], key=lambda r: (-fit(r) if work(r, fit(r)) <= MAX_QUADRATURE_WORK else 0, work(r, fit(r))))
    n = fit(route)
    return route, n, work(route, n)


def _unit_route_work(rj: ReducedJacobian, n: int) -> float:
    K = rj.Wr.shape[0]
    return unit_work(K, rj.rank, n, rj.size_a, rj.size_c) + _unit_pairs_work(K, rj.rank, n)


def _unit_pairs_work(K: int, r: int, n: int) -> float:
    return K * (K + 1) / 2 * float(axis_order(n, min(2, r))) ** min(2, r) * 9


def _describe_rule(route: str, n: int, r: int) -> str:
    if route == "units":
        return f"rules of up to {n}^{min(4, r)} nodes over up to four units"
    return f"a {n}^{r}-node rule"


def _moments2(route: str, rj: ReducedJacobian, order: int, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """``H_A`` and ``E[c c^T]`` by the tensor rule or by pairs of units."""
    if route == "units":
        return unit_second_moments(rj.activation, rj.Wr, rj.v, rj.first, rj.second, rj.size_c > 0, order)
    return _second_moments(rj, order, chunk)


def _moments4(route: str, rj: ReducedJacobian, UA: np.ndarray, UC: np.ndarray, order: int, chunk: int) -> np.ndarray:
    """``M4`` by the tensor rule or by multisets of at most four units."""
    if route == "units":
        return unit_fourth_moments(rj.activation, rj.Wr, rj.v, rj.first, rj.second, rj.m, UA, UC, order)
    return _fourth_moments(rj, UA, UC, order, chunk)


def _work(order: int, dim: int, width: int) -> float:
    """Multiply-adds of a ``order^dim``-node rule accumulating ``width x width`` moments."""
    return float(order) ** dim * width * width


def check_order(order: int) -> int:
    """The finer rule checking ``order`` nodes per axis: ``order + ceil(order / 3)`` (48 -> 64)."""
    return order + -(-order // 3)


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    if a.size == 0:
        return 0.0
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def _coordinates(lamA: np.ndarray, lamC: np.ndarray, m: int) -> tuple[np.ndarray, ...]:
    """Eigenvalue pairs, ``h`` and ``s0`` of the coordinates ``(vech_w(S_AA), sqrt(m) vech_w(C))``."""
    ia, ja = np.triu_indices(lamA.size)
    ic, jc = np.triu_indices(lamC.size)
    li = np.concatenate([lamA[ia], lamC[ic]])
    lj = np.concatenate([lamA[ja], lamC[jc]])
    diag = np.concatenate([ia == ja, ic == jc])
    weight = np.concatenate([np.ones(ia.size), np.full(ic.size, math.sqrt(m))])
    h = np.where(diag, li, 0.0) * weight
    s0 = np.where(diag, 1.0, 0.0) * weight
    return li, lj, h, s0


def _merge_spectrum(lamA: np.ndarray, lamC: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    values = np.concatenate([lamA, lamC])
    counts = np.concatenate([np.ones(lamA.size, dtype=np.int64), np.full(lamC.size, m, dtype=np.int64)])
    order = np.argsort(values)
    return values[order], counts[order]


# --------------------------------------------------------------------------- summaries
def predictions(model: SecondMomentModel, lr: float, batch: int, steps, *, sigma0: float, noise: float) -> dict[str, Any]:
    """Curve, stationary loss, critical rate and late-time rate of one model at ``(eta, B, sigma)``."""
    radius = model.spectral_radius(lr, batch)
    return {
        "curve": model.curve(lr, batch, steps, sigma0=sigma0, noise=noise),
        "stationary_loss": model.stationary_loss(lr, batch, noise),
        "critical_lr": model.critical_lr(batch),
        "spectral_radius": radius,
        "late_rate": -math.log(radius) if 0 < radius < 1 else float("nan"),
    }


# --------------------------------------------------------------------------- a fixed training set
def training_set(problem: Problem, samples: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The fixed training set of :func:`~nearopt.dynamics.sgd.simulate_sgd`: inputs ``(N, N_i)`` and label noise ``(N,)``.

    Drawn by NumPy from ``seed`` (the same on every device), inputs ``x ~ N(0, Sigma)`` of the problem.
    """
    rng = np.random.default_rng([int(seed), 0x7A])
    X = rng.standard_normal((samples, problem.n_inputs))
    if not problem.inputs.isotropic:
        X = X @ problem.inputs.sqrt_factor()
    return X, noise * rng.standard_normal(samples)


@dataclass
class FixedSetModel:
    """The linearised first- and second-moment recursion of SGD with replacement on a fixed training set.

    With ``J_n = J(x_n)`` ``(N, P)``, fixed label noise ``eps_n`` and ``delta' = (I - eta H_b) delta + eta g_b``
    (``H_b``, ``g_b = 1/B sum_b J_b eps_b`` over ``B`` draws with replacement), ``m = E delta`` and
    ``S = E[delta delta^T]`` obey::

        m' = m - eta (H m - g)
        S' = S - eta (H S + S H) + eta^2 [(1 - 1/B) H S H + K4(S) / B]
             + eta (m g^T + g m^T) - eta^2 [(1 - 1/B)(H m g^T + g m^T H) + (K3(m) + K3(m)^T) / B]
             + eta^2 [(1 - 1/B) g g^T + G2 / B]

    with the training-set averages ``H = <J J^T>``, ``g = <eps J>``, ``K4(S) = <(J^T S J) J J^T>``,
    ``K3(m) = <eps (J^T m) J J^T>``, ``G2 = <eps^2 J J^T>``; the excess population loss is
    ``1/2 tr(H_pop S)`` (the population Hessian: the fit of the label noise counts). Dense ``P x P``,
    stepped one SGD step at a time (``O(N P^2)`` per step).
    """

    J: np.ndarray
    eps: np.ndarray
    H_pop: np.ndarray

    def curve(self, lr: float, batch: int, steps, *, sigma0: float) -> np.ndarray:
        """``E[L_t]`` ``(T,)`` at ascending integer ``steps`` from ``S_0 = sigma0^2 I``, ``m_0 = 0``."""
        lr, batch = _check_rate(lr, batch)
        J, eps = self.J, self.eps
        N, P = J.shape
        H = J.T @ J / N
        g = J.T @ eps / N
        G2 = (J * (eps * eps)[:, None]).T @ J / N
        c = 1.0 - 1.0 / batch
        m, S = np.zeros(P), sigma0**2 * np.eye(P)
        want = np.asarray(steps, dtype=np.int64)
        out = np.full(want.size, np.inf)
        t = 0
        for i, target in enumerate(want):
            while t < target:
                a = np.einsum("np,pq,nq->n", J, S, J)
                K4 = (J * a[:, None]).T @ J / N
                K3 = (J * (eps * (J @ m))[:, None]).T @ J / N
                Hm = H @ m
                cross = np.outer(m, g) - lr * (c * np.outer(Hm, g) + K3 / batch)
                S = (S - lr * (H @ S + S @ H) + lr * lr * (c * H @ S @ H + K4 / batch)
                     + lr * (cross + cross.T) + lr * lr * (c * np.outer(g, g) + G2 / batch))
                m = m - lr * (Hm - g)
                t += 1
                if not np.all(np.isfinite(S)):
                    return out
            out[i] = 0.5 * float(np.sum(self.H_pop * S))
        return out


def fixed_set_model(problem: Problem | TwoLayerNet, X: np.ndarray, eps: np.ndarray) -> FixedSetModel:
    """:class:`FixedSetModel` of the training set ``X`` ``(N, N_i)`` with label noise ``eps`` ``(N,)`` (dense; ``P <= 2000``)."""
    pr = as_problem(problem)
    require_paper_setting(pr, "the SGD predictions")
    if not pr.at_teacher:
        raise NearoptError("the fixed-training-set prediction is implemented at the teacher (student = teacher)")
    P = pr.n_params
    if P > 2000:
        raise NearoptError(f"the fixed-training-set prediction is dense in P = {P}: at most 2000")
    require_memory(dense_bytes((X.shape[0], P), np.float64, 4) + dense_bytes(P, np.float64, 8), f"the fixed-set recursion (N = {X.shape[0]}, P = {P})", "fewer samples")
    idx = pr.trained_indices
    J = np.asarray(jacobian(pr.point, X))[:, idx]
    H_pop = PopulationHessian(pr).to_dense()
    return FixedSetModel(J, np.asarray(eps, dtype=np.float64), 0.5 * (H_pop + H_pop.T))
