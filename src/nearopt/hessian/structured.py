"""Exact population spectrum without forming the ``P x P`` Hessian (``theory.md`` §2).

Write ``W1 = U S V^T`` (thin SVD, numerical rank ``r``). The directions ``e_a ⊗ u``
(``u`` orthogonal to the rows of ``W1``, in the ``W1`` block) are invariant under
``H``, which acts on them as ``M = (v v^T) ∘ E[g'(w_a.x) g'(w_c.x)]`` (``N_h x N_h``), once per
complement dimension. The rest is the population Hessian of the same network
with first layer ``W1 V = U S`` (inputs in ``R^r``): the pairwise moments depend
only on ``W1 W1^T``, so they are computed once and reused. Hence::

    spec(H) = spec(H_reduced)  ∪  spec(M) × (N_i - r)

Cost ``O(N_h^2 N_i + (N_h (r + 1))^3)``; memory ``O(N_h N_i + (N_h (r+1))^2)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg

from ..model import TwoLayerNet
from .population import assemble, net_moments


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


def structured_spectrum(net: TwoLayerNet) -> StructuredSpectrum:
    """Exact population spectrum of ``net`` as eigenvalue blocks with multiplicities."""
    moments = net_moments(net)
    v = net.W2.ravel()
    W_red, r = row_space(net.W1)
    reduced = scipy.linalg.eigvalsh(assemble(moments, W_red, v))
    mult = net.n_inputs - r
    complement = scipy.linalg.eigvalsh(np.outer(v, v) * moments.dd) if mult > 0 else np.zeros(0)
    values = np.concatenate([reduced, complement])
    counts = np.concatenate([np.ones(reduced.size, dtype=np.int64), np.full(complement.size, mult, dtype=np.int64)])
    order = np.argsort(values, kind="stable")
    return StructuredSpectrum(values[order], counts[order], reduced, complement, r, mult)
