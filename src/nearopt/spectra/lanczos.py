"""Operator-generic Lanczos machinery: ARPACK extremes, Lanczos tridiagonals and their Gauss quadratures.

They take any symmetric :class:`scipy.sparse.linalg.LinearOperator` (every
:class:`~nearopt.curvature.base.Curvature` is one), as curvlinops keeps its
algorithms apart from the operators they run on.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.linalg
from scipy.sparse.linalg import LinearOperator, aslinearoperator, eigsh

from ..errors import NearoptError, require_positive_int
from ..resources import require_memory


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


def lanczos_tridiagonals(
    op: LinearOperator,
    Q0: np.ndarray,
    steps: int,
    *,
    reorth: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``m`` independent Lanczos runs at once, one per column of ``Q0`` ``(P, m)``: one block product per step.

    Returns ``alpha`` ``(m, steps)``, ``beta`` ``(m, steps - 1)`` and ``length``
    ``(m,)`` (a run that reaches an invariant subspace stops early: its
    tridiagonal is ``alpha[i, :length[i]]``, ``beta[i, :length[i] - 1]``). Float64
    throughout. ``reorth=True`` reorthogonalises each new vector against its own
    run's basis twice (memory ``8 steps P m`` bytes); ``False`` keeps three
    vectors per run: orthogonality then decays, but the Gauss quadrature stays
    that of a nearby matrix (Greenbaum 1989), which is what SLQ needs.
    ``progress(step, steps)`` is called after each step.
    """
    op = aslinearoperator(op)
    Q0 = np.asarray(Q0, dtype=np.float64)
    P, m = Q0.shape
    steps = min(require_positive_int(steps, "Lanczos steps"), P)
    if reorth:
        require_memory(8 * steps * P * m, f"a Lanczos basis of {steps} x {m} vectors of length {P}", "reorth=False")
    alpha, beta = np.zeros((m, steps)), np.zeros((m, max(steps - 1, 0)))
    length = np.full(m, steps)
    q = Q0 / np.linalg.norm(Q0, axis=0)
    q_prev, b_prev = np.zeros_like(q), np.zeros(m)
    basis = np.empty((steps, P, m)) if reorth else None
    active = np.ones(m, dtype=bool)
    for j in range(steps):
        if basis is not None:
            basis[j] = q
        w = np.asarray(op.matmat(q), dtype=np.float64)
        a = np.einsum("pm,pm->m", q, w)
        alpha[:, j] = np.where(active, a, 0.0)
        w -= q * a + q_prev * b_prev
        if basis is not None:
            for _ in range(2):  # twice is enough (Kahan-Parlett)
                c = np.einsum("jpm,pm->jm", basis[: j + 1], w)
                w -= np.einsum("jpm,jm->pm", basis[: j + 1], c)
        if progress is not None:
            progress(j + 1, steps)
        if j + 1 == steps:
            break
        b = np.linalg.norm(w, axis=0)
        scale = np.abs(alpha[:, : j + 1]).max(axis=1)
        stop = active & (b <= 1e-12 * np.maximum(scale, 1e-300))  # invariant subspace: this probe's spectrum is exhausted
        length[stop] = j + 1
        active &= ~stop
        b = np.where(active, b, 0.0)
        beta[:, j] = b
        q_prev, b_prev = q, b
        q = np.divide(w, b, out=np.zeros_like(w), where=active[None, :])
        if not active.any():
            break
    return alpha, beta, length


def gauss_quadrature(alpha: np.ndarray, beta: np.ndarray, length: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights ``(m, steps)`` of each run's Gauss quadrature (NaN / 0 beyond its length).

    Run ``i``: ``theta, S = eigh_tridiagonal(alpha_i, beta_i)``, weights ``S[0]^2`` (sum to 1):
    ``sum_j w_j theta_j^k = q^T H^k q`` exactly for ``k <= 2 length - 1``.
    """
    m, steps = alpha.shape
    nodes, weights = np.full((m, steps), np.nan), np.zeros((m, steps))
    for i in range(m):
        n = int(length[i])
        theta, S = scipy.linalg.eigh_tridiagonal(alpha[i, :n], beta[i, : n - 1])
        nodes[i, :n], weights[i, :n] = theta, S[0] ** 2
    return nodes, weights


