"""Operator-generic eigenvalue algorithms: ARPACK extremes and stochastic Lanczos quadrature.

They take any symmetric :class:`scipy.sparse.linalg.LinearOperator` (every
:class:`~nearopt.curvature.base.Curvature` is one), as curvlinops keeps its
algorithms apart from the operators they run on.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
from scipy.sparse.linalg import LinearOperator, eigsh

from ..errors import NearoptError, require_positive_int


def extreme_eigenvalues(op: LinearOperator, k: int = 6, which: str = "LA", *, tol: float = 0.0, seed: int = 0) -> np.ndarray:
    """``k`` extreme eigenvalues of a symmetric operator by ARPACK (``scipy.sparse.linalg.eigsh``).

    ``which``: ``"LA"`` (largest), ``"SA"`` (smallest; slow when many
    eigenvalues are near zero, as at the optimum) or ``"BE"`` (both ends).
    The start vector is seeded. Returns ascending ``(k,)``.
    """
    k = require_positive_int(k, "k")
    n = op.shape[0]
    if k >= n:
        raise NearoptError(f"k = {k} must be smaller than the operator size {n} (use a dense route)")
    if which not in ("LA", "SA", "BE"):
        raise NearoptError(f"which must be LA, SA or BE, got {which!r}")
    v0 = np.random.default_rng(seed).standard_normal(n)
    return np.sort(eigsh(op, k=k, which=which, tol=tol, v0=v0, return_eigenvectors=False))


def lanczos_tridiagonal(op: LinearOperator, q: np.ndarray, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Tridiagonal ``(alpha, beta)`` of ``steps`` Lanczos steps from unit ``q``, full reorthogonalisation.

    SciPy does not expose ARPACK's tridiagonal, and SLQ needs exactly it; with
    full reorthogonalisation this is the textbook recursion, nothing tuned.
    """
    Q = np.zeros((steps, q.size))
    alpha, beta = np.zeros(steps), np.zeros(max(steps - 1, 0))
    Q[0] = q
    for j in range(steps):
        w = op.matvec(Q[j])
        alpha[j] = Q[j] @ w
        w -= Q[: j + 1].T @ (Q[: j + 1] @ w)
        w -= Q[: j + 1].T @ (Q[: j + 1] @ w)  # twice is enough (Kahan–Parlett)
        if j + 1 == steps:
            break
        beta[j] = np.linalg.norm(w)
        if beta[j] <= 1e-12 * max(abs(alpha[: j + 1]).max(), 1e-300):  # invariant subspace: spectrum of q exhausted
            return alpha[: j + 1], beta[:j]
        Q[j + 1] = w / beta[j]
    return alpha, beta


def spectral_density(
    op: LinearOperator,
    *,
    n_vectors: int = 10,
    steps: int = 80,
    seed: int = 0,
    grid: np.ndarray | None = None,
    sigma: float | None = None,
) -> dict[str, np.ndarray]:
    """Spectral density of a symmetric operator by stochastic Lanczos quadrature (SLQ).

    Each of ``n_vectors`` seeded Rademacher probes ``q`` gives a Gauss quadrature
    ``(nodes theta_j, weights tau_j^2)`` of ``q^T f(H) q / P`` from ``steps``
    Lanczos steps; averaging gives ``rho(lambda) ≈ (1/n) sum tau_j^2 delta(lambda - theta_j)``,
    smoothed by a Gaussian of width ``sigma`` (default 1% of the spectral range).

    Returns ``{"grid", "density", "nodes", "weights"}``: ``density`` on ``grid``
    integrates to ~1; ``nodes``/``weights`` ``(n_vectors, <=steps)`` (padded with NaN/0)
    give exact quadratures of polynomial moments up to degree ``2 steps - 1``.
    """
    n_vectors = require_positive_int(n_vectors, "number of probe vectors")
    steps = min(require_positive_int(steps, "Lanczos steps"), op.shape[0])
    rng = np.random.default_rng(seed)
    nodes = np.full((n_vectors, steps), np.nan)
    weights = np.zeros((n_vectors, steps))
    for i in range(n_vectors):
        q = rng.choice([-1.0, 1.0], size=op.shape[0]) / np.sqrt(op.shape[0])
        alpha, beta = lanczos_tridiagonal(op, q, steps)
        theta, S = scipy.linalg.eigh_tridiagonal(alpha, beta)
        nodes[i, : theta.size], weights[i, : theta.size] = theta, S[0] ** 2
    lo, hi = np.nanmin(nodes), np.nanmax(nodes)
    width = sigma if sigma is not None else 0.01 * max(hi - lo, abs(hi), 1e-300)
    if grid is None:
        grid = np.linspace(lo - 5 * width, hi + 5 * width, 1000)
    grid = np.asarray(grid, dtype=np.float64)
    ok = weights > 0
    kern = np.exp(-0.5 * ((grid[:, None] - nodes[ok][None, :]) / width) ** 2) / (width * np.sqrt(2 * np.pi))
    density = kern @ weights[ok] / n_vectors
    return {"grid": grid, "density": density, "nodes": nodes, "weights": weights}
