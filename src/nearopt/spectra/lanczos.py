"""Operator-generic Lanczos machinery: ARPACK extremes, a thick-restart Lanczos in torch (the top
end on a GPU), Lanczos tridiagonals and their Gauss quadratures (SLQ).

They take any symmetric :class:`scipy.sparse.linalg.LinearOperator` (every
:class:`~nearopt.curvature.base.Curvature` is one), as curvlinops keeps its
algorithms apart from the operators they run on; the torch ones run on the operator's
device (:mod:`nearopt.spectra.torch_ops`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import torch
from scipy.sparse.linalg import LinearOperator, aslinearoperator, eigsh

from ..errors import NearoptError, require_positive_int
from ..resources import require_memory
from ..tolerances import EPS
from .torch_ops import Counter, TorchMatmat, generator, row_chunk, torch_side

__all__ = ["extreme_eigenvalues", "gauss_quadrature", "lanczos_tridiagonal", "lanczos_tridiagonals", "RitzPairs", "thick_restart_lanczos"]

#: float64 machine epsilon


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

    The recurrence runs in torch on the operator's device (:func:`~nearopt.spectra.torch_ops.torch_side`):
    a CUDA population Hessian keeps every Lanczos vector on the GPU.
    """
    matmat, device = torch_side(aslinearoperator(op))
    Q0 = np.asarray(Q0, dtype=np.float64)
    P, m = Q0.shape
    steps = min(require_positive_int(steps, "Lanczos steps"), P)
    if reorth:
        require_memory(8 * steps * P * m, f"a Lanczos basis of {steps} x {m} vectors of length {P}", "reorth=False", device=device)
    alpha, beta = np.zeros((m, steps)), np.zeros((m, max(steps - 1, 0)))
    length = np.full(m, steps)
    q = torch.as_tensor(Q0, device=device)
    q = q / torch.linalg.norm(q, dim=0)
    q_prev, b_prev = torch.zeros_like(q), torch.zeros(m, dtype=torch.float64, device=device)
    basis = torch.empty((steps, P, m), dtype=torch.float64, device=device) if reorth else None
    active = np.ones(m, dtype=bool)
    for j in range(steps):
        if basis is not None:
            basis[j] = q
        w = matmat(q)
        a = (q * w).sum(0)
        alpha[:, j] = np.where(active, a.cpu().numpy(), 0.0)
        w -= q * a + q_prev * b_prev
        if basis is not None:
            for _ in range(2):  # twice is enough (Kahan-Parlett)
                c = torch.einsum("jpm,pm->jm", basis[: j + 1], w)
                w -= torch.einsum("jpm,jm->pm", basis[: j + 1], c)
        if progress is not None:
            progress(j + 1, steps)
        if j + 1 == steps:
            break
        b = torch.linalg.norm(w, dim=0).cpu().numpy()
        scale = np.abs(alpha[:, : j + 1]).max(axis=1)
        stop = active & (b <= 1e-12 * np.maximum(scale, 1e-300))  # invariant subspace: this probe's spectrum is exhausted
        length[stop] = j + 1
        active &= ~stop
        b = np.where(active, b, 0.0)
        beta[:, j] = b
        bt = torch.as_tensor(b, device=device)
        q_prev, b_prev = q, bt
        q = torch.where(torch.as_tensor(active, device=device), w / torch.where(bt > 0, bt, 1.0), 0.0)
        if not active.any():
            break
    return alpha, beta, length


@dataclass
class RitzPairs:
    """What :func:`thick_restart_lanczos` found: ``values`` ``(k,)`` ascending, ``vectors`` ``(P, k)``
    on the operator's device, ``estimates`` ``(k,)`` the Lanczos residual norms ``|β s_last|``."""

    values: np.ndarray
    vectors: torch.Tensor
    estimates: np.ndarray
    restarts: int
    products: int
    converged: bool


def thick_restart_lanczos(
    matmat: TorchMatmat,
    n: int,
    k: int,
    *,
    ncv: int | None = None,
    tol: float = 1e-12,
    maxiter: int = 1000,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool | Callable[[int, float], None] | None = None,
) -> RitzPairs:
    """The ``k`` largest eigenpairs of a symmetric ``H`` (``matmat``: ``(n, m) -> (n, m)``) by
    thick-restart Lanczos (Wu & Simon 2000), in torch on ``device``.

    A basis ``V`` of ``ncv`` vectors (default ``max(2k + 1, k + 20)``, as for ARPACK) is
    built with full reorthogonalisation (twice); the projected matrix ``T = Vᵀ H V`` is then
    diagonalised and the ``l = k + (ncv − k) / 2`` largest Ritz vectors kept, together with the
    last Lanczos vector, as the start of the next cycle (``T`` becomes an arrowhead). The same
    Krylov spaces as ARPACK's implicit restart, with the basis and its updates on the device:
    ARPACK would move each vector to the host. A cycle ends when every wanted pair has
    ``|β s_last| ≤ max(tol |θ|, 4 ε |θ_max|)``; ``maxiter`` cycles at most.
    Memory: ``(ncv + 1) n`` floats.
    """
    ncv = min(n, ncv if ncv is not None else max(2 * k + 1, k + 20))
    if not 1 <= k < ncv:
        raise NearoptError(f"thick-restart Lanczos needs 1 <= k < ncv <= n, got k = {k}, ncv = {ncv}, n = {n}")
    dev = torch.device(device)
    H = Counter(matmat, progress, "largest: ")
    gen = generator(seed, dev)
    V = torch.zeros((n, ncv + 1), dtype=torch.float64, device=dev)
    T = torch.zeros((ncv + 1, ncv + 1), dtype=torch.float64)  # small: on the host
    v = torch.randn(n, generator=gen, dtype=torch.float64, device=dev)
    V[:, 0] = v / torch.linalg.norm(v)
    keep = min(k + (ncv - k) // 2, ncv - 1)
    start, restarts = 0, 0  # start: the basis vectors carried over (kept Ritz vectors)
    while True:
        for j in range(start, ncv):
            _extend(H, V, T, j, gen)
        theta, S = torch.linalg.eigh(T[:ncv, :ncv])  # (T lives on the host)
        est = (T[ncv, ncv - 1] * S[ncv - 1]).abs()
        top = slice(ncv - k, ncv)
        floor = 4 * EPS * float(theta.abs().max())
        done = bool((est[top] <= torch.clamp(tol * theta[top].abs(), min=floor)).all())
        if done or restarts >= maxiter or ncv == n:
            break
        restarts += 1
        start = keep
        kept = slice(ncv - keep, ncv)
        _rotate(V, S[:, kept].to(dev), ncv)
        V[:, keep] = V[:, ncv]
        beta = float(T[ncv, ncv - 1])
        T.zero_()
        T[:keep, :keep] = torch.diag(theta[kept])
        T[keep, :keep] = T[:keep, keep] = beta * S[ncv - 1, kept]
    _rotate(V, S[:, top].to(dev), ncv)
    return RitzPairs(theta[top].numpy(), V[:, :k], est[top].numpy(), restarts, H.products, done)


def _extend(H: Counter, V: torch.Tensor, T: torch.Tensor, j: int, gen: torch.Generator) -> None:
    """Lanczos step ``j``: ``V[:, j + 1]`` and column ``j`` of ``T`` from ``H V[:, j]`` (full
    reorthogonalisation, twice: the coefficients are ``T``'s column, arrowhead included)."""
    n = V.shape[0]
    w = H(V[:, j : j + 1])[:, 0]
    Vj = V[:, : j + 1]
    h = Vj.T @ w
    w -= Vj @ h
    h2 = Vj.T @ w
    w -= Vj @ h2
    h = (h + h2).cpu()
    T[: j + 1, j], T[j, : j + 1] = h, h
    b = float(torch.linalg.norm(w))
    if b <= 1e-12 * float(h.abs().max()) and j + 1 < n:  # invariant subspace: go on from a fresh direction
        w = torch.randn(n, generator=gen, dtype=torch.float64, device=V.device)
        for _ in range(2):
            w -= Vj @ (Vj.T @ w)
        V[:, j + 1] = w / torch.linalg.norm(w)
        b = 0.0
    else:
        V[:, j + 1] = w / b if b > 0 else 0.0
    T[j + 1, j] = T[j, j + 1] = b


def _rotate(V: torch.Tensor, S: torch.Tensor, ncv: int) -> None:
    """``V[:, :r] ← V[:, :ncv] S`` in place, ``S`` ``(ncv, r)``, by row chunks (no second basis in memory)."""
    r, rows = S.shape[1], row_chunk(V.device)
    for s in range(0, V.shape[0], rows):
        V[s : s + rows, :r] = V[s : s + rows, :ncv] @ S


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


