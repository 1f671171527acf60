"""Matrix-free Hessian–vector products at the optimum, for sizes where no matrix fits.

* :func:`population_hvp` / :class:`PopulationHessianOperator`: ``H v`` for the
  population Hessian from the pairwise moments (:mod:`nearopt.gaussian`), cost
  ``O(N_h^2 N_i)`` per vector, memory ``O(N_h N_i + N_h^2)``;
* :func:`batch_hvp` / :class:`BatchHessianOperator`: ``J^T (J v) / N`` for a batch
  ``X`` ``(N, N_i)`` without forming ``J``, cost ``O(N N_h N_i)`` per vector.

The ``*_hvp`` functions are torch functions (CPU or CUDA, float64) taking
``(P,)`` or ``(P, k)`` tensors; the operators wrap them as SciPy
:class:`~scipy.sparse.linalg.LinearOperator` s ``(P, P)`` float64 for ARPACK
(:func:`extreme_eigenvalues`) and stochastic Lanczos quadrature (:func:`spectral_density`).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import scipy.linalg
import torch
from scipy.sparse.linalg import LinearOperator, eigsh

from ..errors import NearoptError, require_positive_int
from ..model import TwoLayerNet
from .empirical import _as_tensor, resolve_device
from .population import net_moments

TorchHVP = Callable[[torch.Tensor], torch.Tensor]


def _split(net: TwoLayerNet, V: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """``(P,)``/``(P, k)`` -> ``dW`` ``(k, N_h, N_i)``, ``dv`` ``(k, N_h)``."""
    vec = V.ndim == 1
    Vk = V[:, None] if vec else V
    if Vk.shape[0] != net.n_params:
        raise NearoptError(f"vector has {Vk.shape[0]} entries, expected P = {net.n_params}")
    m = net.W1.size
    return Vk[:m].T.reshape(-1, net.n_hidden, net.n_inputs), Vk[m:].T, vec


def _join(dW: torch.Tensor, dv: torch.Tensor, vec: bool) -> torch.Tensor:
    out = torch.cat([dW.reshape(dW.shape[0], -1), dv], dim=1).T
    return out[:, 0] if vec else out


def population_hvp(net: TwoLayerNet, *, device="cpu") -> TorchHVP:
    """Torch function ``V (P,) or (P, k) -> H V`` for the population Hessian (float64)."""
    dev = resolve_device(device)
    mo = net_moments(net)

    def t(x):
        return torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float64, device=dev)

    W, v = t(net.W1), t(net.W2.ravel())
    gg, dd, b0, b1 = t(mo.gg), t(mo.dd), t(mo.b[..., 0]), t(mo.b[..., 1])
    K00, K01, K10, K11 = (t(mo.K[..., i, j]) for i in (0, 1) for j in (0, 1))
    vv = v[:, None] * v[None, :]

    def hvp(V: torch.Tensor) -> torch.Tensor:
        dW, dv, vec = _split(net, V)
        G = torch.einsum("ai,kci->kac", W, dW)  # G[k,a,c] = w_a . dW_c
        Gd = torch.diagonal(G, dim1=1, dim2=2)  # (k, c): w_c . dW_c
        # v-rows: sum_c gg dv_c + v_c (b0[c,a] w_c.dW_c + b1[c,a] w_a.dW_c)
        out_v = dv @ gg.T + (Gd * v) @ b0 + torch.einsum("ca,c,kac->ka", b1, v, G)
        # w-rows
        coef_a = v * (dv @ b0.T) + (vv * K00 * G).sum(2) + (Gd[:, None, :] * vv * K01).sum(2)
        coef_c = (v[:, None] * b1) * dv[:, None, :] + vv * (K10 * G + K11 * Gd[:, None, :])  # (k, a, c)
        out_W = coef_a[..., None] * W + coef_c @ W + torch.einsum("ac,kci->kai", vv * dd, dW)
        return _join(out_W, out_v, vec)

    return hvp


def batch_hvp(net: TwoLayerNet, X, *, device="cpu") -> TorchHVP:
    """Torch function ``V -> J^T J V / N`` for inputs ``X`` ``(N, N_i)`` (float64, no ``J`` formed).

    Memory ``O(N (N_i + N_h k))`` for ``k`` vectors at once.
    """
    dev = resolve_device(device)
    Xt = _as_tensor(X, net, torch.float64, dev)
    W = torch.as_tensor(net.W1, dtype=torch.float64, device=dev)
    v = torch.as_tensor(net.W2.ravel(), dtype=torch.float64, device=dev)
    Z = Xt @ W.T
    gZ, dZ = net.activation(Z), net.activation.derivative(Z) * v  # (N, N_h)
    N = Xt.shape[0]

    def hvp(V: torch.Tensor) -> torch.Tensor:
        dW, dv, vec = _split(net, V)
        r = (dZ * torch.einsum("ni,kai->kna", Xt, dW)).sum(2) + dv @ gZ.T  # (k, N) = J V
        out_W = torch.einsum("kn,na,ni->kai", r, dZ, Xt) / N
        out_v = r @ gZ / N
        return _join(out_W, out_v, vec)

    return hvp


class _TorchOperator(LinearOperator):
    """SciPy view of a torch HVP (symmetric, float64)."""

    def __init__(self, hvp: TorchHVP, n: int, device: torch.device):
        super().__init__(dtype=np.float64, shape=(n, n))
        self._hvp, self._device = hvp, device

    def _matmat(self, X):
        T = torch.as_tensor(np.asarray(X, dtype=np.float64), device=self._device)
        return self._hvp(T).cpu().numpy()

    def _matvec(self, x):
        return self._matmat(np.asarray(x).reshape(-1, 1)).ravel()

    def _rmatvec(self, x):  # symmetric
        return self._matvec(x)

    def _adjoint(self):
        return self


class PopulationHessianOperator(_TorchOperator):
    """Population Hessian of ``net`` at the optimum as a ``(P, P)`` LinearOperator."""

    def __init__(self, net: TwoLayerNet, *, device="cpu"):
        dev = resolve_device(device)
        super().__init__(population_hvp(net, device=dev), net.n_params, dev)


class BatchHessianOperator(_TorchOperator):
    """Batch Hessian ``J^T J / N`` of ``net`` on ``X`` ``(N, N_i)`` as a ``(P, P)`` LinearOperator."""

    def __init__(self, net: TwoLayerNet, X, *, device="cpu"):
        dev = resolve_device(device)
        super().__init__(batch_hvp(net, X, device=dev), net.n_params, dev)


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


def _lanczos(op: LinearOperator, q: np.ndarray, steps: int) -> tuple[np.ndarray, np.ndarray]:
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
        alpha, beta = _lanczos(op, q, steps)
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
