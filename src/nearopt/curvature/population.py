"""The exact population Hessian ``H = E_x[J J^T]`` (``N -> infinity``): :class:`PopulationHessian`.

Inputs are ``x ~ N(0, I_{N_i})``. Every block is assembled from the pairwise
Gaussian moments of :mod:`nearopt.expectations` (``docs/theory.md`` §2.2)::

    H[v_a, v_c] = gg[a,c]
    H[w_a, v_c] = v_a (b[a,c,0] w_a + b[a,c,1] w_c)
    H[w_a, w_c] = v_a v_c (dd[a,c] I + [w_a w_c] K[a,c] [w_a w_c]^T)

Parameter order as :meth:`nearopt.model.TwoLayerNet.parameters` (``W1`` row-major,
then ``W2``). Routes to the spectrum (:meth:`PopulationHessian.spectrum`):

``dense``       ``eigvalsh`` of the ``P x P`` matrix (:func:`population_hessian`);
``structured``  exact, via the row space of ``W1`` (:func:`structured_spectrum`):
                never forms the ``P x P`` matrix;
``factor``      linear networks only: singular values of the Jacobian factor ``B^T``;
``lanczos``     the ``k`` largest eigenvalues of the matrix-free product (eigsh);
``auto``        the cheapest exact route (``structured`` unless it saves nothing).

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
"""

from __future__ import annotations

import time

import numpy as np
import scipy.linalg

from dataclasses import dataclass
from functools import cached_property
from typing import Any, Callable

import torch

from ..activations import Activation
from ..errors import NearoptError
from ..expectations import PairMoments, pair_moments
from ..model import TwoLayerNet
from ..problem import Problem
from ..resources import require_memory
from ..spectra.rank_rule import rank_from_eigenvalues
from ..spectra.spectrum import Spectrum
from .base import LANCZOS_K, Curvature, restrict, select

POPULATION_METHODS = ("auto", "dense", "structured", "factor", "lanczos")
#: largest matrix side ``auto`` diagonalises densely (float64: ~1.2 GB at 12000)
MAX_DENSE = 12_000


def net_moments(net: TwoLayerNet) -> PairMoments:
    """Pairwise Gaussian moments of ``net``'s hidden units (arrays ``(N_h, N_h, ...)``)."""
    return pair_moments(net.activation, net.W1 @ net.W1.T)


def assemble(moments: PairMoments, W: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Population Hessian ``(N_h (d+1), N_h (d+1))`` for first-layer weights ``W`` ``(N_h, d)``.

    ``moments`` must belong to the Gram matrix ``W W^T`` (any rotation of the
    rows' space gives the same moments: this is how the structured route reuses them).
    """
    n_h, d = W.shape
    vv = np.outer(v, v)

    def k(x):  # (a, c) -> broadcast over (a, i, c, j)
        return (vv * x)[:, None, :, None]

    Wa_i, Wa_j = W[:, :, None, None], W[:, None, None, :]
    Wc_i, Wc_j = W.T[None, :, :, None], W[None, None, :, :]
    K = moments.K
    Hww = k(K[..., 0, 0]) * Wa_i * Wa_j
    Hww += k(K[..., 0, 1]) * Wa_i * Wc_j
    Hww += k(K[..., 1, 0]) * Wc_i * Wa_j
    Hww += k(K[..., 1, 1]) * Wc_i * Wc_j
    Hww += k(moments.dd) * np.eye(d)[None, :, None, :]
    # H[w_a i, v_c] = v_a (b0[a,c] W[a,i] + b1[a,c] W[c,i])
    Hwv = v[:, None, None] * (moments.b[:, None, :, 0] * W[:, :, None] + moments.b[:, None, :, 1] * W.T[None, :, :])
    m = n_h * d
    H = np.empty((m + n_h, m + n_h))
    H[:m, :m] = Hww.reshape(m, m)
    H[:m, m:] = Hwv.reshape(m, n_h)
    H[m:, :m] = H[:m, m:].T
    H[m:, m:] = moments.gg
    return H


def population_hessian(net: TwoLayerNet) -> np.ndarray:
    """Dense population Hessian at the optimum, shape ``(P, P)``, float64.

    Memory ``8 P^2`` bytes; use :func:`population_spectrum` (structured) or
    :class:`PopulationHessian` (matrix-free) for large ``P``.
    """
    require_memory(8 * net.n_params**2, f"the dense {net.n_params} x {net.n_params} population Hessian", "the structured or lanczos method")
    return assemble(net_moments(net), net.W1, net.W2.ravel())


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

    Cost ``O(N_h^2 N_i k)`` per block of ``k`` vectors (batched einsums, no loop
    over units); memory ``O(N_h N_i + N_h^2)`` besides the vectors.
    """
    dev = device
    mo = net_moments(net) if moments is None else moments

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

def _is_linear(act: Activation) -> bool:
    c = act.polynomial_coefficients
    return c is not None and c.size == 2 and c[0] == 0.0 and c[1] == 1.0


class PopulationHessian(Curvature):
    """The population Hessian ``H = E_x[J^T J]`` ``(P, P)`` at the optimum, ``x ~ N(0, I)``.

    Blocks from the pairwise Gaussian moments of the hidden units (module
    docstring); products matrix-free in ``O(N_h^2 N_i)``; the exact spectrum by
    the ``structured`` route without forming the matrix. Needs the student at
    the teacher (the residual term vanishes there) and isotropic inputs.
    """

    kind = "population-hessian"

    def __init__(self, problem: Problem | TwoLayerNet, *, device="cpu"):
        super().__init__(problem, device=device)
        pr = self.problem
        if not pr.at_teacher:
            raise NearoptError("the population Hessian is implemented at the teacher (student = teacher); use the batch route at other points")
        if not pr.inputs.isotropic:
            raise NearoptError("the population Hessian is implemented for isotropic Gaussian inputs")

    @property
    def net(self) -> TwoLayerNet:
        return self.problem.point

    @cached_property
    def moments(self) -> PairMoments:
        """Pairwise moments of the hidden units (computed once)."""
        return net_moments(self.net)

    @cached_property
    def _hvp(self) -> TorchHVP:
        return population_hvp(self.net, device=self.device, moments=self.moments)

    def torch_matmat(self, V: torch.Tensor) -> torch.Tensor:
        return select(self.problem, self._hvp(restrict(self.problem, V)))

    def to_dense(self) -> np.ndarray:
        P = self.net.n_params
        require_memory(8 * P * P, f"the dense {P} x {P} population Hessian", "the structured or lanczos method")
        H = assemble(self.moments, self.net.W1, self.net.W2.ravel())
        idx = self.problem.trained_indices
        return H if self.problem.trained == "both" else H[np.ix_(idx, idx)]

    def factor(self) -> np.ndarray | None:  # type: ignore[override]
        """Linear networks: ``B^T[:, trained]`` ``(N_i, P)`` with ``J(x) = B x`` (``docs/theory.md`` §3.1); else ``None``."""
        if not _is_linear(self.net.activation):
            return None
        v = self.net.W2.ravel()
        B = np.vstack([np.kron(v[:, None], np.eye(self.net.n_inputs)), self.net.W1])
        return B.T[:, self.problem.trained_indices]

    @property
    def routes(self) -> dict[str, Callable[..., Spectrum]]:
        routes = super().routes
        if not _is_linear(self.net.activation):
            routes.pop("factor", None)
        routes["structured"] = self._structured_spectrum
        return routes

    def choose_route(self) -> str:
        """``dense`` when ``W1`` has full column rank (nothing to reduce), else ``structured``;
        ``lanczos`` is never chosen (not exact): too large a reduced block raises instead."""
        net = self.net
        r = min(net.n_hidden, net.n_inputs)
        size = net.n_hidden * (r + 1)
        if size > MAX_DENSE:
            raise NearoptError(
                f"the exact population spectrum needs a dense block of side {size} (> {MAX_DENSE}); "
                "use --method lanczos for the extreme eigenvalues, or a smaller N_h"
            )
        return "dense" if net.n_inputs <= net.n_hidden else "structured"

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "samples": None}

    def make_spectrum(self, eigenvalues, decision, method, **fields):
        spec = super().make_spectrum(eigenvalues, decision, method, **fields)
        spec.extra.setdefault("rank_source", "eigenvalues of the exact dense blocks")
        spec.extra["expectations"] = self.moments.method
        return spec

    def _structured_spectrum(self, rtol: float | None, k: int) -> Spectrum:
        res = structured_spectrum(self.net, self.problem.trained, self.moments)
        decision = rank_from_eigenvalues(res.values, res.counts, resolved_size=res.block_size, rtol=rtol)
        extra = {"reduced_rank_W1": res.row_rank, "complement_multiplicity": res.complement_multiplicity, "reduced_size": res.block_size}
        return self.make_spectrum(res.expand(), decision, "structured", multiplicities=(res.values, res.counts), extra=extra)


def population_spectrum(net: TwoLayerNet | Problem, method: str = "auto", rtol: float | None = None, *, k: int = LANCZOS_K, device="cpu") -> Spectrum:
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

    Returns
    -------
    Spectrum
        ``samples=None``; ``eigenvalues`` ascending ``(P,)`` (``lanczos``: the
        ``k`` largest only, ``extra`` says so); ``multiplicities`` for ``structured``.
    """
    if method not in POPULATION_METHODS:
        raise NearoptError(f"unknown population method {method!r}; choose from {', '.join(POPULATION_METHODS)}")
    curv = PopulationHessian(net, device=device)
    if method == "dense" and curv.n_params > 2 * MAX_DENSE:
        raise NearoptError(f"dense population Hessian with P = {curv.n_params} needs {8 * curv.n_params**2 / 1e9:.1f} GB; use --method structured")
    return curv.spectrum(method, rtol=rtol, k=k)
