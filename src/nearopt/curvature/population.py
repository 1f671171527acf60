"""The exact population Hessian ``H = E_x[J J^T]`` (``N -> infinity``): :class:`PopulationHessian`.

Inputs are ``x ~ N(0, Sigma)`` (the problem's :class:`~nearopt.problem.GaussianInputs`;
``Sigma = I`` by default). Every block is assembled from the pairwise Gaussian
moments of :mod:`nearopt.expectations` (``docs/theory.md`` §2.2) for the Gram
matrix ``W1 Sigma W1^T``, with ``s_a = Sigma w_a`` (``docs/inputs.md``)::

    H[v_a, v_c] = gg[a,c]
    H[w_a, v_c] = v_a (b[a,c,0] s_a + b[a,c,1] s_c)
    H[w_a, w_c] = v_a v_c (dd[a,c] Sigma + [s_a s_c] K[a,c] [s_a s_c]^T)

This is ``T H~ T^T`` with ``H~`` the isotropic Hessian of the whitened network
``W1 L`` (``L = Sigma^{1/2}``, ``T = blockdiag(I (x) L, I)``, :func:`nearopt.problem.whiten`);
the matrix-free product goes through ``T`` (:class:`CovarianceTransform`).

Parameter order as :meth:`nearopt.model.TwoLayerNet.parameters` (``W1`` row-major,
then ``W2``). Routes to the spectrum (:meth:`PopulationHessian.spectrum`):

* ``dense``: ``eigvalsh`` of the ``P x P`` matrix (:func:`population_hessian`);
* ``structured``: exact, via the row space of ``W1`` (:func:`structured_spectrum`);
  never forms the ``P x P`` matrix;
* ``factor``: linear networks only, singular values of the Jacobian factor ``B^T``;
* ``lanczos``: the ``k`` largest (ARPACK; on a GPU a thick-restart Lanczos in torch) or smallest
  nonzero (locking LOBPCG) eigenvalues of the matrix-free product;
* ``auto``: the cheapest exact route (``structured`` unless it saves nothing).

Structured route (``docs/theory.md`` §2.5). Write ``W1 = U S V^T`` (thin SVD,
numerical rank ``r``). The directions ``e_a ⊗ u`` (``u`` orthogonal to the rows of
``W1``, in the ``W1`` block) are invariant under ``H``, which acts on them as
``M = (v v^T) ∘ E[g'(w_a.x) g'(w_c.x)]`` (``N_h x N_h``), once per complement
dimension. The rest is the population Hessian of the same network with first
layer ``W1 V = U S`` (inputs in ``R^r``): the pairwise moments depend only on
``W1 W1^T``, so they are computed once and reused. Hence::

    spec(H) = spec(H_reduced)  ∪  spec(M) × (N_i - r)

Cost ``O(N_h^2 N_i + (N_h (r + 1))^3)``; memory ``O(N_h N_i + (N_h (r+1))^2)``.
With only the first layer trained the ``v`` rows and columns of the reduced
block drop out; with only the second, ``H = E[g g^T]`` (``N_h x N_h``).

Under a covariance (:func:`covariance_structured_spectrum`, ``docs/inputs.md``):
for each eigenspace ``E_j`` of ``Sigma`` (value ``lambda_j``, dimension ``m_j``), the
directions ``e_a (x) u`` with ``u`` in ``E_j`` and orthogonal to the projected rows
``P_j w_a`` are invariant, and ``H`` acts on them as ``lambda_j M``. The reduced
space ``R = sum_j span(P_j W1^T)`` (dimension ``r' <= sum_j min(N_h, m_j)``) is
``Sigma``-invariant and holds the rows of ``W1``; there ``H`` is the Hessian of
``W1 Q`` with covariance ``Q^T Sigma Q``. Hence::

    spec(H) = spec(H_reduced)  ∪_j  lambda_j spec(M) × (m_j - r_j)

For a spiked ``Sigma = I + sum_k theta_k u_k u_k^T`` the bulk (value 1) leaves
``N_i - k - N_h`` directions outside ``R``: the same saving as for ``I``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import scipy.linalg
import torch
from scipy.sparse.linalg import LinearOperator

from ..activations import Activation, ReLU
from ..errors import NearoptError
from ..expectations import PairMoments, pair_moments
from ..model import TwoLayerNet
from ..problem import GaussianInputs, Problem, as_problem, whiten
from ..resources import require_memory
from ..spectra.rank_rule import rank_from_eigenvalues
from ..spectra.spectrum import Spectrum
from ..spectra.torch_ops import TorchOperator
from .base import LANCZOS_K, Curvature, restrict, select

POPULATION_METHODS = ("auto", "dense", "structured", "factor", "lanczos")
#: largest matrix side ``auto`` diagonalises densely (float64: ~1.2 GB at 12000)
MAX_DENSE = 12_000
#: cost model of ``auto`` for ``k`` extreme eigenvalues (seconds; measured on 2 CPU cores: the
#: dense route at P = 1640 takes 0.13 s, ARPACK's top 20 at n = 40 91 products in 0.09 s, a
#: product at n = 1000 0.065 s): the exact route on a block of side ``n`` ~ ``EIGH_S n^3``; one matrix-free
#: product ~ ``PRODUCT_S N_h^2 N_i + CALL_S``; ARPACK needs ~``3 (2k + 20)`` products for the
#: top, LOBPCG ~``70 k`` for the bottom
EIGH_S, PRODUCT_S, CALL_S = 4e-11, 1e-10, 5e-4
#: the same for products on a GPU (one NVIDIA H200, float64: a 1-column product takes 0.3 ms up to
#: n = 500, launches dominating, 0.52 ms at n = 1000, 1.24 ms at n = 2000; the smallest end's block
#: work adds about 0.15 ms per product at n = 100); the exact routes diagonalise on the host either way
GPU_PRODUCT_S, GPU_CALL_S = 1.2e-13, 4e-4


def net_moments(net: TwoLayerNet, inputs: GaussianInputs | None = None) -> PairMoments:
    """Pairwise Gaussian moments of ``net``'s hidden units (arrays ``(N_h, N_h, ...)``).

    Pre-activations ``W1 x`` with ``x ~ N(0, Sigma)`` have Gram matrix ``W1 Sigma W1^T``
    (``Sigma = I`` when ``inputs`` is ``None`` or isotropic).
    """
    if inputs is None or inputs.isotropic:
        return pair_moments(net.activation, net.W1 @ net.W1.T)
    gram = inputs.matmul(net.W1) @ net.W1.T
    return pair_moments(net.activation, 0.5 * (gram + gram.T))


def assemble(moments: PairMoments, W: np.ndarray, v: np.ndarray, covariance: np.ndarray | None = None) -> np.ndarray:
    """Population Hessian ``(N_h (d+1), N_h (d+1))`` for first-layer weights ``W`` ``(N_h, d)``.

    ``covariance`` ``Sigma`` ``(d, d)`` of the inputs (default ``I``). ``moments``
    must belong to the Gram matrix ``W Sigma W^T`` (any rotation of the rows'
    space gives the same moments: this is how the structured route reuses them).
    """
    n_h, d = W.shape
    vv = np.outer(v, v)
    # the Stein directions are s_a = Sigma w_a (rows of A), the identity becomes Sigma
    A = W if covariance is None else W @ covariance
    eye = np.eye(d) if covariance is None else covariance

    def k(x):  # (a, c) -> broadcast over (a, i, c, j)
        return (vv * x)[:, None, :, None]

    Wa_i, Wa_j = A[:, :, None, None], A[:, None, None, :]
    Wc_i, Wc_j = A.T[None, :, :, None], A[None, None, :, :]
    K = moments.K
    Hww = k(K[..., 0, 0]) * Wa_i * Wa_j
    Hww += k(K[..., 0, 1]) * Wa_i * Wc_j
    Hww += k(K[..., 1, 0]) * Wc_i * Wa_j
    Hww += k(K[..., 1, 1]) * Wc_i * Wc_j
    Hww += k(moments.dd) * eye[None, :, None, :]
    # H[w_a i, v_c] = v_a (b0[a,c] s_a[i] + b1[a,c] s_c[i])
    Hwv = v[:, None, None] * (moments.b[:, None, :, 0] * A[:, :, None] + moments.b[:, None, :, 1] * A.T[None, :, :])
    m = n_h * d
    H = np.empty((m + n_h, m + n_h))
    H[:m, :m] = Hww.reshape(m, m)
    H[:m, m:] = Hwv.reshape(m, n_h)
    H[m:, :m] = H[:m, m:].T
    H[m:, m:] = moments.gg
    return H


def population_hessian(net: TwoLayerNet, inputs: GaussianInputs | None = None) -> np.ndarray:
    """Dense population Hessian at the optimum, shape ``(P, P)``, float64, for ``x ~ N(0, Sigma)``.

    ``inputs`` default ``N(0, I)``. Memory ``8 P^2`` bytes; use
    :func:`population_spectrum` (structured) or :class:`PopulationHessian`
    (matrix-free) for large ``P``.
    """
    require_memory(8 * net.n_params**2, f"the dense {net.n_params} x {net.n_params} population Hessian", "the structured or lanczos method")
    cov = None if inputs is None or inputs.isotropic else inputs.covariance
    return assemble(net_moments(net, inputs), net.W1, net.W2.ravel(), cov)


@dataclass(frozen=True)
class StructuredSpectrum:
    """Eigenvalue blocks of the population Hessian.

    ``values`` ``(n_blocks,)`` ascending with integer ``counts`` (multiplicities,
    summing to ``P``); ``reduced`` ``(N_h (r+1),)`` and ``complement`` ``(N_h,)`` are
    the two ingredient spectra, ``row_rank`` is ``r`` and ``complement_multiplicity``
    is ``N_i - r``.
    """

    values: np.ndarray
    counts: np.ndarray
    reduced: np.ndarray
    complement: np.ndarray
    row_rank: int
    complement_multiplicity: int
    #: under a covariance: the eigenvalues ``lambda_j`` scaling ``complement`` and their multiplicities ``m_j - r_j``
    complement_scales: tuple[tuple[float, int], ...] = ()

    @property
    def n_params(self) -> int:
        return int(self.counts.sum())

    @property
    def block_size(self) -> int:
        """Side of the largest dense matrix diagonalised (the reduced Hessian)."""
        return max(self.reduced.size, self.complement.size)

    def expand(self) -> np.ndarray:
        """All ``P`` eigenvalues, ascending, shape ``(P,)``."""
        return np.repeat(self.values, self.counts)


def row_space(W1: np.ndarray) -> tuple[np.ndarray, int]:
    """``W1`` in an orthonormal basis of its row space: ``U S`` ``(N_h, r)`` and the rank ``r``."""
    U, S, _ = scipy.linalg.svd(W1, full_matrices=False)
    tol = max(W1.shape) * np.finfo(np.float64).eps * (S[0] if S.size else 0.0)
    r = int(np.count_nonzero(S > tol))
    return U[:, :r] * S[:r], r


def structured_spectrum(net: TwoLayerNet, trained: str = "both", moments: PairMoments | None = None) -> StructuredSpectrum:
    """Exact population spectrum of ``net`` at the optimum as eigenvalue blocks with multiplicities.

    ``trained`` restricts ``H`` to the trained blocks (see the module docstring).
    """
    moments = net_moments(net) if moments is None else moments
    v = net.W2.ravel()
    n_h = net.n_hidden
    if trained == "second":
        reduced, r, mult = scipy.linalg.eigvalsh(moments.gg), 0, 0
    else:
        W_red, r = row_space(net.W1)
        H_red = assemble(moments, W_red, v)
        if trained == "first":
            H_red = H_red[: n_h * r, : n_h * r]
        reduced = scipy.linalg.eigvalsh(H_red) if H_red.size else np.zeros(0)
        mult = net.n_inputs - r
    complement = scipy.linalg.eigvalsh(np.outer(v, v) * moments.dd) if mult > 0 else np.zeros(0)
    values = np.concatenate([reduced, complement])
    counts = np.concatenate([np.ones(reduced.size, dtype=np.int64), np.full(complement.size, mult, dtype=np.int64)])
    order = np.argsort(values, kind="stable")
    return StructuredSpectrum(values[order], counts[order], reduced, complement, r, mult)


def _merge(blocks: list[tuple[np.ndarray, int]]) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalue arrays with one multiplicity each -> ascending ``values``, ``counts``."""
    blocks = [(b, m) for b, m in blocks if b.size and m > 0]
    if not blocks:
        return np.zeros(0), np.zeros(0, dtype=np.int64)
    values = np.concatenate([b for b, _ in blocks])
    counts = np.concatenate([np.full(b.size, m, dtype=np.int64) for b, m in blocks])
    order = np.argsort(values, kind="stable")
    return values[order], counts[order]


def covariance_reduction(W1: np.ndarray, inputs: GaussianInputs) -> tuple[np.ndarray, list[tuple[float, int]]]:
    """The ``Sigma``-invariant space ``R`` holding the rows of ``W1`` ``(N_h, N_i)``, and what is left.

    Returns ``Q`` ``(N_i, r')`` orthonormal with ``R = span(Q) = sum_j span(P_j W1^T)``
    (``P_j`` the projector on eigenspace ``j`` of ``Sigma``), and the list
    ``[(lambda_j, m_j - r_j)]`` of eigenvalues and dimensions of ``E_j ∩ R^⊥``.
    The rank of each projected block is decided against ``max(N_h, N_i) eps ||W1||_2``.
    """
    n_h, n_i = W1.shape
    norm = float(scipy.linalg.norm(W1, 2))
    tol = max(n_h, n_i) * np.finfo(np.float64).eps * norm
    spaces = inputs.eigenspaces()
    explicit = [e.basis for e in spaces if e.basis is not None]
    Q_all = np.hstack(explicit) if explicit else np.zeros((n_i, 0))
    bases, rest = [], []
    for e in spaces:
        if e.basis is None:  # the bulk: complement of every explicit eigenvector
            A = W1 - (W1 @ Q_all) @ Q_all.T
            _, sv, Vt = scipy.linalg.svd(A, full_matrices=False)
            r = int(np.count_nonzero(sv > tol))
            bases.append(Vt[:r].T)
        else:
            _, sv, Vt = scipy.linalg.svd(W1 @ e.basis, full_matrices=False)
            r = int(np.count_nonzero(sv > tol))
            bases.append(e.basis @ Vt[:r].T)
        rest.append((e.value, e.multiplicity - r))
    Q = np.hstack(bases) if bases else np.zeros((n_i, 0))
    return Q, rest


def covariance_structured_spectrum(net: TwoLayerNet, inputs: GaussianInputs, trained: str = "both", moments: PairMoments | None = None) -> StructuredSpectrum:
    """Exact population spectrum under ``x ~ N(0, Sigma)`` as blocks with multiplicities (module docstring).

    Cost: an SVD per eigenspace of ``Sigma`` (``O(N_h^2 N_i)`` for the bulk), the
    reduced ``N_h (r'+1)`` dense block and one ``N_h x N_h`` complement block
    ``M = (v v^T) ∘ dd``, whose eigenvalues are scaled by each ``lambda_j``.
    """
    moments = net_moments(net, inputs) if moments is None else moments
    v = net.W2.ravel()
    n_h = net.n_hidden
    if trained == "second":
        reduced = scipy.linalg.eigvalsh(moments.gg)
        values, counts = _merge([(reduced, 1)])
        return StructuredSpectrum(values, counts, reduced, np.zeros(0), 0, 0, ())
    Q, rest = covariance_reduction(net.W1, inputs)
    S_red = Q.T @ inputs.matmul(Q.T).T  # Q^T Sigma Q (r', r'): diagonal up to the eigenvalue grouping
    H_red = assemble(moments, net.W1 @ Q, v, 0.5 * (S_red + S_red.T))
    if trained == "first":
        H_red = H_red[: n_h * Q.shape[1], : n_h * Q.shape[1]]
    reduced = scipy.linalg.eigvalsh(H_red) if H_red.size else np.zeros(0)
    rest = [(lam, m) for lam, m in rest if m > 0]
    mu = scipy.linalg.eigvalsh(np.outer(v, v) * moments.dd) if rest else np.zeros(0)
    values, counts = _merge([(reduced, 1)] + [(lam * mu, m) for lam, m in rest])
    mult = sum(m for _, m in rest)
    return StructuredSpectrum(values, counts, reduced, mu, Q.shape[1], mult, tuple((float(lam), int(m)) for lam, m in rest))


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


def population_hvp(net: TwoLayerNet, *, device: torch.device, moments: PairMoments | None = None) -> TorchHVP:
    """Torch function ``V (P,) or (P, k) -> H V`` for the population Hessian (float64).

    Per block of ``k`` vectors: three matrix products (``G = W dW^T``, ``C W`` and
    ``(vv∘dd) dW``: ``6 N_h^2 N_i k`` flops, no loop over units) and a few
    elementwise passes over ``(k, N_h, N_h)`` arrays. Columns go through in chunks
    so those temporaries stay near 256 MB: memory ``O(N_h N_i + N_h^2)`` besides
    the vectors.

    The function carries ``precondition(R, shift=0.0)``: ``T R`` with
    ``T = (B2 + A A^T + shift I)^{-1}``, an SPD approximation of ``(H + shift I)^{-1}``
    built from the operator's structure (``docs/scale.md``): ``A = E[J x^T]``
    ``(P, N_i)`` is the degree-1 Hermite part of the tangent (``H = A A^T + H2``,
    ``H2`` PSD), ``B2`` the per-unit blocks of ``H2`` on ``(w_a, v_a)`` (identity
    plus a 2 x 2 on ``(w_a/|w_a|, e_{v_a})``, inverted in closed form; a singular
    block, ReLU's rescaling mode, gets its small eigenvalue floored at ``1e-10`` of
    the large one), and the rank-``N_i`` term enters by Woodbury through an
    ``N_i x N_i`` Cholesky factor. Cost ``O(P k + N_h N_i k)`` per block, set-up
    ``O(N_h N_i^2)``. On erf ``N_i = N_h = 20`` it takes ``cond`` from ``2.3e5``
    to ``25``.
    """
    dev = device
    mo = net_moments(net) if moments is None else moments

    def t(x):
        return torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float64, device=dev)

    W, v = t(net.W1), t(net.W2.ravel())
    n_h, n_i = W.shape
    vv = v[:, None] * v[None, :]
    # the output weights are folded into the (N_h, N_h) moment matrices once
    gg = t(mo.gg)
    vb0 = v[:, None] * t(mo.b[..., 0])  # v_a b0[a,c]
    vb1 = v[:, None] * t(mo.b[..., 1])  # v_a b1[a,c]
    vb1_t = vb1.T.contiguous()
    A00, A01, A10, A11 = (vv * t(mo.K[..., i, j]) for i in (0, 1) for j in (0, 1))
    A01_t = A01.T.contiguous()
    vvdd = vv * t(mo.dd)
    chunk = max(1, (1 << 25) // max(1, n_h * n_h))  # ~4 (k, N_h, N_h) float64 temporaries of 256 MB in all

    def block(dW: torch.Tensor, dv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        G = torch.matmul(W, dW.transpose(1, 2))  # (k, a, c): w_a . dW_c
        Gd = torch.diagonal(G, dim1=1, dim2=2).clone()  # (k, c): w_c . dW_c (a copy: G is overwritten below)
        # v-rows: sum_c gg[a,c] dv_c + v_c b0[c,a] w_c.dW_c + v_c b1[c,a] w_a.dW_c
        out_v = dv @ gg.T + Gd @ vb0 + (G * vb1_t).sum(2)
        # w-rows: coef_a w_a + sum_c C[a,c] w_c + sum_c v_a v_c dd[a,c] dW_c
        coef_a = dv @ vb0.T + (G * A00).sum(2) + Gd @ A01_t
        C = G.mul_(A10)  # G is not needed any more: reuse its memory
        C.addcmul_(A11, Gd.unsqueeze(1)).addcmul_(vb1, dv.unsqueeze(1))
        out_W = torch.matmul(C, W)
        out_W += torch.matmul(vvdd, dW)
        out_W.addcmul_(coef_a.unsqueeze(2), W)
        return out_W, out_v

    def hvp(V: torch.Tensor) -> torch.Tensor:
        dW, dv, vec = _split(net, V)
        dW, dv = dW.contiguous(), dv.contiguous()  # strided operands take a slow matmul path (10-200x, measured)
        parts = [block(dW[s : s + chunk], dv[s : s + chunk]) for s in range(0, dW.shape[0], chunk)]
        out_W = torch.cat([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
        out_v = torch.cat([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
        return _join(out_W, out_v, vec)

    # ---- preconditioner (docs/scale.md): H = A A^T + H2 with A = E[J x^T] (P, N_i) the
    # degree-1 Hermite part of the tangent (rank N_i, O(1) eigenvalues) and H2 PSD; take
    # T = (B2 + A A^T)^{-1} with B2 the per-unit blocks of H2, applied by Woodbury.
    # A's unit-a rows: W-part v_a (e1_a I + e3_a w_a w_a^T), v-part e1_a w_a^T, with
    # e1 = E[g'(u_a)], e3 = E[g'''(u_a)] = E[g'(u_a)(u_a^2 - q_a)] / q_a^2 (Stein), u_a ~ N(0, q_a = |w_a|^2).
    diag = torch.arange(n_h, device=dev)
    q = (net.W1 * net.W1).sum(1)
    nodes, wts = np.polynomial.hermite_e.hermegauss(160)
    u = np.sqrt(q)[:, None] * nodes[None, :]
    gp = net.activation.derivative(torch.as_tensor(u, dtype=torch.float64)).numpy() * (wts / wts.sum())
    e1 = gp.sum(1)
    e3 = np.divide((gp * (u * u - q[:, None])).sum(1), q * q, out=np.zeros_like(q), where=q > 0)
    norm_w = t(np.sqrt(q))
    w_hat = W / torch.clamp(norm_w, min=torch.finfo(torch.float64).tiny)[:, None]
    E1, lam1 = t(e1), t(e1 + e3 * q)  # lam1: A's eigenvalue along w_a
    kappa = t(mo.K[np.arange(n_h), np.arange(n_h)].sum(axis=(1, 2)))
    beta = t(mo.b[np.arange(n_h), np.arange(n_h)].sum(axis=1))
    dd_aa = t(mo.dd)[diag, diag]
    # unit blocks of H: perp (orthogonal to w_a) and the 2 x 2 on (w_hat_a, e_{v_a}); minus those of A A^T
    scale = v * v * dd_aa + gg[diag, diag]
    perp = torch.clamp(v * v * (dd_aa - E1 * E1), min=1e-12 * scale)
    b11 = v * v * (dd_aa + kappa * norm_w**2) - (v * lam1) ** 2
    b12 = v * beta * norm_w - v * lam1 * E1 * norm_w
    b22 = gg[diag, diag] - (E1 * norm_w) ** 2
    aw, av = v * lam1, E1 * norm_w  # A's unit-a column along w_hat_a: W-part aw w_hat_a, v-part av
    cache: dict[float, tuple[torch.Tensor, ...]] = {}

    def factors(shift: float) -> tuple[torch.Tensor, ...]:
        """For ``B2 + shift I``: ``1/perp`` ``(N_h,)``, the 2 x 2 inverses ``(i11, i12, i22)`` and the
        Cholesky factor of the capacitance ``C = I + A^T (B2 + shift)^{-1} A`` ``(N_i, N_i)``."""
        if shift not in cache:
            a11, a22 = b11 + shift, b22 + shift
            # 2 x 2 inverse through its eigenpairs: a singular block (ReLU's rescaling mode)
            # gets its small eigenvalue floored at 1e-10 of the large one, staying SPD
            mid, rad = 0.5 * (a11 + a22), torch.sqrt((0.5 * (a11 - a22)) ** 2 + b12 * b12)
            lo = torch.clamp(mid - rad, min=1e-10 * (mid + rad).abs() + torch.finfo(torch.float64).tiny)
            hi = torch.clamp(mid + rad, min=torch.finfo(torch.float64).tiny)
            phi = 0.5 * torch.atan2(2 * b12, a11 - a22)
            c, s_ = torch.cos(phi), torch.sin(phi)
            i11, i12, i22 = c * c / hi + s_ * s_ / lo, c * s_ * (1 / hi - 1 / lo), s_ * s_ / hi + c * c / lo
            inv_perp = 1.0 / torch.clamp(perp + shift, min=1e-10 * scale)
            rho = i11 * aw * aw + 2 * i12 * aw * av + i22 * av * av  # A^T B2^{-1} A along w_hat_a
            cq = (v * E1) ** 2 * inv_perp  # ... and orthogonal to it
            C = (w_hat.T * (rho - cq)) @ w_hat
            C.diagonal().add_(1.0 + cq.sum())
            L, info = torch.linalg.cholesky_ex(C)
            if int(info) != 0:
                raise NearoptError("the population preconditioner's capacitance matrix is not positive definite")
            cache[shift] = (inv_perp, i11, i12, i22, L)
        return cache[shift]

    def unit_solve(dW: torch.Tensor, dv: torch.Tensor, shift: float) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B2 + shift I)^{-1}`` on ``dW`` ``(k, N_h, N_i)``, ``dv`` ``(k, N_h)``."""
        inv_perp, i11, i12, i22, _ = factors(shift)
        alpha = torch.einsum("kai,ai->ka", dW, w_hat)
        out_W = (dW - alpha.unsqueeze(2) * w_hat) * inv_perp.unsqueeze(1)
        out_W += (i11 * alpha + i12 * dv).unsqueeze(2) * w_hat
        return out_W, i12 * alpha + i22 * dv

    def precondition(R: torch.Tensor, shift: float = 0.0) -> torch.Tensor:
        dW, dv, vec = _split(net, R)
        XW, Xv = unit_solve(dW.contiguous(), dv, shift)
        # A^T X: sum_a v_a e1_a XW_a + w_a (v_a e3_a (w_a . XW_a) + e1_a Xv_a)
        Z = torch.einsum("a,kai->ki", v * E1, XW) + (v * t(e3) * torch.einsum("kai,ai->ka", XW, W) + E1 * Xv) @ W
        Y = torch.cholesky_solve(Z.T, factors(shift)[4]).T  # (k, N_i)
        # A Y: W-part v_a (e1_a y + e3_a w_a (w_a . y)), v-part e1_a (w_a . y)
        Wy = Y @ W.T  # (k, N_h)
        AW = (v * E1)[None, :, None] * Y[:, None, :] + (v * t(e3) * Wy).unsqueeze(2) * W
        CW, Cv = unit_solve(AW, E1 * Wy, shift)
        return _join(XW - CW, Xv - Cv, vec)

    hvp.precondition = precondition  # type: ignore[attr-defined]
    return hvp

class CovarianceTransform:
    """``T = blockdiag(I_{N_h} (x) L, I_{N_h})`` on parameter vectors, ``L = Sigma^{1/2}`` (symmetric, so ``T^T = T``).

    ``J = T J~`` maps the whitened problem (:func:`nearopt.problem.whiten`) back:
    a curvature under ``Sigma`` is ``T H~ T^T``. On the ``W1`` block (row-major
    ``(N_h, N_i)``) ``T`` acts as ``dW1 -> dW1 L``; it is the identity on ``W2``.
    Works on the trained blocks of ``problem`` (``(P, k)`` torch tensors) and
    costs ``O(N_h N_i^2 k)`` per product.
    """

    def __init__(self, problem: Problem, L: np.ndarray, device: torch.device):
        self.n_hidden, self.n_inputs = problem.point.n_hidden, problem.n_inputs
        self.has_w1 = problem.trained in ("both", "first")
        self.L = torch.as_tensor(np.ascontiguousarray(L), dtype=torch.float64, device=device)

    def __call__(self, V: torch.Tensor) -> torch.Tensor:
        """``T V`` (``= T^T V``) for ``V`` ``(P, k)``."""
        if not self.has_w1:
            return V
        m = self.n_hidden * self.n_inputs
        dW = V[:m].T.reshape(-1, self.n_hidden, self.n_inputs) @ self.L
        return torch.cat([dW.reshape(dW.shape[0], m).T, V[m:]], dim=0)

    def conjugate(self, H: np.ndarray) -> np.ndarray:
        """``T H T^T`` for a dense ``(P, P)`` ``H`` (numpy)."""
        Ht = torch.as_tensor(H, dtype=torch.float64, device=self.L.device)
        out = self(self(Ht).T)
        return 0.5 * (out + out.T).cpu().numpy()


def _is_linear(act: Activation) -> bool:
    c = act.polynomial_coefficients
    return c is not None and c.size == 2 and c[0] == 0.0 and c[1] == 1.0


def rescaling_modes(net: TwoLayerNet) -> np.ndarray:
    """ReLU's exact zero modes ``(P, N_h)``: ``(w_a, -v_a)`` on unit ``a`` (positive rescaling ``w -> c w, v -> v / c``)."""
    n_h, n_i = net.n_hidden, net.n_inputs
    Z = np.zeros((net.n_params, n_h))
    for a in range(n_h):
        Z[a * n_i : (a + 1) * n_i, a] = net.W1[a]
        Z[n_h * n_i + a, a] = -net.W2.ravel()[a]
    return Z


class ExpectationCurvature(Curvature):
    """Base of the population curvatures (``N -> infinity``): results carry ``samples = None`` and
    which Gaussian expectations (closed form or checked quadrature) built the blocks.

    Subclasses provide :attr:`moments` (pair moments with a ``method`` field).
    """

    @property
    def moments(self) -> Any:
        """The pair moments the blocks are built from (each subclass computes its own, once)."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "samples": None}

    def make_spectrum(self, eigenvalues, decision, method, **fields):
        spec = super().make_spectrum(eigenvalues, decision, method, **fields)
        spec.extra.setdefault("rank_source", "eigenvalues of the exact dense blocks")
        spec.extra["expectations"] = self.moments.method
        return spec


class PopulationHessian(ExpectationCurvature):
    """The population Hessian ``H = E_x[J^T J]`` ``(P, P)`` at the optimum, ``x ~ N(0, I)``.

    Blocks from the pairwise Gaussian moments of the hidden units (module
    docstring); products matrix-free in ``O(N_h^2 N_i)``; the exact spectrum by
    the ``structured`` route without forming the matrix. Needs the student at
    the teacher (the residual term vanishes there). Inputs ``x ~ N(0, Sigma)``
    from the problem's law: products go through ``T`` (:class:`CovarianceTransform`,
    ``O(N_h N_i^2)`` more per vector), the structured route through the
    eigenspaces of ``Sigma`` (:func:`covariance_structured_spectrum`).
    """

    kind = "population-hessian"

    def __init__(self, problem: Problem | TwoLayerNet, *, device="cpu"):
        super().__init__(problem, device=device)
        pr = self.problem
        if not pr.at_teacher:
            raise NearoptError("the population Hessian is implemented at the teacher (student = teacher); use the batch route at other points")

    @property
    def net(self) -> TwoLayerNet:
        return self.problem.point

    @property
    def inputs(self) -> GaussianInputs:
        """The input law ``N(0, Sigma)``."""
        assert self.problem.inputs is not None
        return self.problem.inputs

    @cached_property
    def moments(self) -> PairMoments:
        """Pairwise moments of the hidden units for the Gram ``W1 Sigma W1^T`` (computed once)."""
        return net_moments(self.net, self.inputs)

    @cached_property
    def _isotropic_hvp(self) -> TorchHVP:
        return population_hvp(self.net, device=self.device, moments=self.moments)

    @cached_property
    def _hvp(self) -> TorchHVP:
        if self.inputs.isotropic:
            hvp = self._isotropic_hvp
            return lambda V: select(self.problem, hvp(restrict(self.problem, V)))
        # H = T H~ T^T: the isotropic product of the whitened network W1 L (same Gram, same moments)
        white, L = whiten(self.problem)
        T = CovarianceTransform(self.problem, L, self.device)
        hvp = population_hvp(white.point, device=self.device, moments=self.moments)
        return lambda V: T(select(white, hvp(restrict(white, T(V)))))

    def torch_matmat(self, V: torch.Tensor) -> torch.Tensor:
        return self._hvp(V)

    def preconditioner(self, shift: float = 0.0) -> LinearOperator | None:
        """``(B_2 + A A^T - shift)^{-1}`` from the block structure (``docs/scale.md``), for the smallest end.

        Built for isotropic inputs with both layers trained (``None`` otherwise: LOBPCG
        then runs unpreconditioned).
        """
        if not self.inputs.isotropic or self.problem.trained != "both":
            return None
        pre = self._isotropic_hvp.precondition  # type: ignore[attr-defined]
        return TorchOperator(lambda R: pre(R, shift), self.n_params, self.device)

    def null_vectors(self) -> np.ndarray | None:
        """ReLU with both layers trained: the exact zero modes of positive rescaling (:func:`rescaling_modes`)."""
        if isinstance(self.net.activation, ReLU) and self.problem.trained == "both":
            return rescaling_modes(self.net)
        return None

    def to_dense(self) -> np.ndarray:
        P = self.net.n_params
        require_memory(8 * P * P, f"the dense {P} x {P} population Hessian", "the structured or lanczos method")
        cov = None if self.inputs.isotropic else self.inputs.covariance
        H = assemble(self.moments, self.net.W1, self.net.W2.ravel(), cov)
        idx = self.problem.trained_indices
        return H if self.problem.trained == "both" else H[np.ix_(idx, idx)]

    def factor(self) -> np.ndarray | None:
        """Linear networks: ``(B L)^T[:, trained]`` ``(N_i, P)`` with ``J(x) = B x`` and ``L = Sigma^{1/2}``
        (``docs/theory.md`` §3.1: ``H = B Sigma B^T``); else ``None``."""
        if not _is_linear(self.net.activation):
            return None
        v = self.net.W2.ravel()
        B = np.vstack([np.kron(v[:, None], np.eye(self.net.n_inputs)), self.net.W1])
        S = B.T if self.inputs.isotropic else self.inputs.matmul(B, 0.5).T
        return S[:, self.problem.trained_indices]

    @property
    def routes(self) -> dict[str, Callable[..., Spectrum]]:
        routes = super().routes
        if not _is_linear(self.net.activation):
            routes.pop("factor", None)
        routes["structured"] = self._structured_spectrum
        return routes

    def exact_size(self) -> int:
        """Side of the block the exact route diagonalises: ``N_h (r + 1)``, ``r = min(N_h, N_i)``, or
        under a covariance ``r ≤ sum_j min(N_h, m_j)`` over the eigenspaces of ``Sigma``."""
        net = self.net
        if self.inputs.isotropic:
            r = min(net.n_hidden, net.n_inputs)
        else:
            r = min(net.n_inputs, sum(min(net.n_hidden, e.multiplicity) for e in self.inputs.eigenspaces()))
        return net.n_hidden * (r + 1)

    def route_costs(self, k: int, which: str) -> dict[str, float]:
        """Estimated seconds of the exact route and of the matrix-free one for ``k`` eigenvalues at ``which``
        (the cost model above, with the GPU's product constants for an operator on a GPU; ``inf`` for an
        exact block beyond ``MAX_DENSE``)."""
        size, net = self.exact_size(), self.net
        exact = EIGH_S * float(size) ** 3 if size <= MAX_DENSE else float("inf")
        products = 3 * (2 * k + 20) if which == "largest" else 70 * k
        per_flop, per_call = (GPU_PRODUCT_S, GPU_CALL_S) if self.device.type == "cuda" else (PRODUCT_S, CALL_S)
        return {"exact": exact, "lanczos": products * (per_flop * net.n_hidden**2 * net.n_inputs + per_call)}

    def choose_route(self, k: int | None = None, which: str | None = None) -> str:
        """``dense`` when ``W1`` has full column rank (nothing to reduce), else ``structured``.

        For the whole spectrum ``lanczos`` is never chosen (not exact): too large a reduced
        block raises instead. When only ``k`` eigenvalues at one end (``which``) are asked
        for, ``lanczos`` is chosen where :meth:`route_costs` finds it cheaper: both answer
        them to a stated tolerance.
        """
        net = self.net
        size = self.exact_size()
        if which is not None and k is not None and k < self.n_params:
            costs = self.route_costs(k, which)
            if costs["lanczos"] < costs["exact"]:
                return "lanczos"
        if size > MAX_DENSE:
            raise NearoptError(
                f"the exact population spectrum needs a dense block of side {size} (> {MAX_DENSE}); "
                "use --method lanczos for the extreme eigenvalues, or a smaller N_h"
            )
        return "dense" if size >= net.n_hidden * (net.n_inputs + 1) else "structured"

    def make_spectrum(self, eigenvalues, decision, method, **fields):
        spec = super().make_spectrum(eigenvalues, decision, method, **fields)
        if not self.inputs.isotropic:
            spec.extra["inputs"] = self.inputs.describe()
        return spec

    def _structured_spectrum(self, rtol: float | None, k: int) -> Spectrum:
        if self.inputs.isotropic:
            res = structured_spectrum(self.net, self.problem.trained, self.moments)
        else:
            res = covariance_structured_spectrum(self.net, self.inputs, self.problem.trained, self.moments)
        decision = rank_from_eigenvalues(res.values, res.counts, resolved_size=res.block_size, rtol=rtol)
        extra: dict[str, Any] = {"reduced_rank_W1": res.row_rank, "complement_multiplicity": res.complement_multiplicity, "reduced_size": res.block_size}
        if res.complement_scales:
            extra["complement_scales"] = [list(c) for c in res.complement_scales]
        return self.make_spectrum(res.expand(), decision, "structured", multiplicities=(res.values, res.counts), extra=extra)


def population_spectrum(
    net: TwoLayerNet | Problem,
    method: str = "auto",
    rtol: float | None = None,
    *,
    k: int = LANCZOS_K,
    device="cpu",
    inputs: GaussianInputs | None = None,
) -> Spectrum:
    """Spectrum of the population Hessian at the optimum (:meth:`PopulationHessian.spectrum`).

    Parameters
    ----------
    net : TwoLayerNet or Problem
    method : {"auto", "dense", "structured", "factor", "lanczos"}
        See the module docstring; ``auto`` picks the cheapest exact route.
    rtol : float, optional
        Relative tolerance of the rank decision on singular values (default
        :func:`~nearopt.spectra.rank_rule.eigenvalue_rtol` of the largest dense block).
    k : int
        Eigenvalues computed by ``lanczos`` (the largest ``k``).
    inputs : GaussianInputs, optional
        The input law ``N(0, Sigma)`` (replaces the problem's; default: the problem's, ``N(0, I)`` for a network).

    Returns
    -------
    Spectrum
        ``samples=None``; ``eigenvalues`` ascending ``(P,)`` (``lanczos``: the
        ``k`` largest only, ``extra`` says so); ``multiplicities`` for ``structured``.
    """
    if method not in POPULATION_METHODS:
        raise NearoptError(f"unknown population method {method!r}; choose from {', '.join(POPULATION_METHODS)}")
    if inputs is not None:
        net = as_problem(net).replace(inputs=inputs)
    curv = PopulationHessian(net, device=device)
    if method == "dense" and curv.n_params > 2 * MAX_DENSE:
        raise NearoptError(f"dense population Hessian with P = {curv.n_params} needs {8 * curv.n_params**2 / 1e9:.1f} GB; use --method structured")
    return curv.spectrum(method, rtol=rtol, k=k)
