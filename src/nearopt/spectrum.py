"""Eigenvalues and rank of Hessians at the optimum.

The rank is decided from singular values of a square root of ``H`` (the
Jacobian ``J / sqrt(N)`` for a batch), never by thresholding ``eigvalsh(H)``:
forming ``H`` squares the condition number. Every decision carries its
tolerance and the size of the gap it was based on (:class:`RankDecision`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .errors import NearoptError
from .hessian import empirical
from .model import TwoLayerNet

#: a rank decision is "clear" when the kept and the dropped singular values both
#: sit at least this factor away from the tolerance
CLEAR_MARGIN = 10.0


@dataclass(frozen=True)
class RankDecision:
    """Numerical rank of ``H = S^T S`` from the singular values ``s`` of ``S``.

    ``tolerance`` applies to singular values (``sqrt`` of eigenvalue scale);
    ``last_kept``/``first_dropped`` are the singular values either side of it
    (``nan`` when there is none), ``gap = last_kept / first_dropped`` and
    ``margin`` is how far (as a factor) the nearer of the two lies from the
    tolerance. ``clear`` is ``margin >= CLEAR_MARGIN``.
    """

    rank: int
    size: int
    tolerance: float
    last_kept: float
    first_dropped: float
    gap: float
    margin: float
    clear: bool

    @property
    def eigenvalue_tolerance(self) -> float:
        """The tolerance on the eigenvalue scale (``tolerance**2``)."""
        return self.tolerance**2

    def to_dict(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "size": self.size,
            "tolerance_singular_value": self.tolerance,
            "tolerance_eigenvalue": self.eigenvalue_tolerance,
            "last_kept_singular_value": self.last_kept,
            "first_dropped_singular_value": self.first_dropped,
            "gap": self.gap,
            "margin": self.margin,
            "clear": self.clear,
        }


def default_rtol(shape: tuple[int, int], dtype=np.float64) -> float:
    """NumPy's ``matrix_rank`` convention: ``max(shape) * eps``."""
    return max(shape) * float(np.finfo(dtype).eps)


def decide_rank(singular_values: np.ndarray, size: int, *, rtol: float | None = None, atol: float = 0.0, shape: tuple[int, int] | None = None) -> RankDecision:
    """Rank from singular values, tolerance ``max(atol, rtol * s_max)``.

    Parameters
    ----------
    singular_values : ndarray, shape (k,)
        Singular values of a square root ``S`` of ``H`` (any order).
    size : int
        The dimension ``P`` of ``H``; values missing from ``singular_values``
        (``k < size``) are exact zeros.
    rtol : float, optional
        Relative tolerance; default :func:`default_rtol` of ``shape`` (or
        ``(k, size)``).
    """
    s = np.sort(np.abs(np.asarray(singular_values, dtype=np.float64)))[::-1]
    if s.size > size:
        raise NearoptError(f"{s.size} singular values for a matrix of size {size}")
    if rtol is None:
        rtol = default_rtol(shape or (max(s.size, 1), size))
    s_max = s[0] if s.size else 0.0
    tol = max(atol, rtol * s_max)
    rank = int(np.count_nonzero(s > tol))
    last = float(s[rank - 1]) if rank > 0 else float("nan")
    first = float(s[rank]) if rank < s.size else (0.0 if rank < size else float("nan"))
    gap = last / first if rank > 0 and rank < size and first > 0 else float("inf")
    margins = []
    if rank > 0 and tol > 0:
        margins.append(last / tol)
    if rank < size and first > 0:
        margins.append(tol / first)
    margin = min(margins) if margins else float("inf")
    return RankDecision(rank, size, tol, last, first, gap, margin, margin >= CLEAR_MARGIN)


@dataclass
class Spectrum:
    """All ``P`` eigenvalues of a Hessian at the optimum, with provenance.

    ``eigenvalues`` is ascending, float64, shape ``(P,)``. ``multiplicities``,
    when given, pairs distinct eigenvalue blocks with their counts (structured
    population route).
    """

    eigenvalues: np.ndarray
    rank: RankDecision
    method: str
    activation: str
    n_inputs: int
    n_hidden: int
    samples: int | None
    dtype: str = "float64"
    seconds: float = float("nan")
    multiplicities: tuple[np.ndarray, np.ndarray] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def n_params(self) -> int:
        """``P = N_h (N_i + 1)`` (``eigenvalues`` may hold fewer: see ``partial``)."""
        return self.n_hidden * (self.n_inputs + 1)

    @property
    def partial(self) -> bool:
        """True when only some eigenvalues are known (Lanczos routes)."""
        return self.eigenvalues.size < self.n_params

    @property
    def nonzero(self) -> np.ndarray:
        """The ``rank`` largest eigenvalues (ascending)."""
        return self.eigenvalues[self.eigenvalues.size - self.rank.rank :]

    @property
    def smallest_nonzero(self) -> float:
        nz = self.nonzero
        return float(nz[0]) if nz.size else float("nan")

    @property
    def largest(self) -> float:
        return float(self.eigenvalues[-1])

    @property
    def condition_number(self) -> float:
        """``lambda_max / lambda_min^+`` over the nonzero eigenvalues."""
        return self.largest / self.smallest_nonzero if self.rank.rank else float("nan")

    def to_dict(self) -> dict[str, Any]:
        d = {
            "activation": self.activation,
            "N_i": self.n_inputs,
            "N_h": self.n_hidden,
            "P": self.n_params,
            "samples": self.samples,
            "method": self.method,
            "dtype": self.dtype,
            "rank": self.rank.rank,
            "rank_tolerance": self.rank.eigenvalue_tolerance,
            "rank_decision": self.rank.to_dict(),
            "smallest_nonzero": self.smallest_nonzero,
            "largest": self.largest,
            "condition_number": self.condition_number,
            "seconds": self.seconds,
            "eigenvalues": self.eigenvalues,
        }
        if self.multiplicities is not None:
            values, counts = self.multiplicities
            d["multiplicities"] = {"values": values, "counts": counts}
        d.update(self.extra)
        return d


BATCH_METHODS = ("auto", "jacobian-svd", "gauss-newton", "autodiff")

#: above this P, ``auto`` and the rank decision avoid the O(N P^2)-with-QR route
SVD_MAX_PARAMS = 4000


def _rank_from_eigenvalues(eig: np.ndarray, rtol: float | None) -> RankDecision:
    """Rank from eigenvalues of ``H`` when no square root is affordable.

    ``eigvalsh`` resolves eigenvalues only to ~``P eps lambda_max``, so the
    default threshold is ``100 P eps lambda_max`` on eigenvalues, i.e.
    ``10 sqrt(P eps) s_max`` on singular values: wide, and honest about it.
    """
    P = eig.size
    s = np.sqrt(np.clip(eig, 0.0, None))
    return decide_rank(s, P, rtol=rtol if rtol is not None else 10.0 * np.sqrt(default_rtol((P, P))))


def batch_spectrum(
    net: TwoLayerNet,
    X,
    *,
    method: str = "auto",
    chunk_size: int | None = None,
    device="cpu",
    rtol: float | None = None,
) -> Spectrum:
    """Spectrum of the batch Hessian at the optimum (student = ``net``).

    Methods
    -------
    ``jacobian-svd``
        eigenvalues ``s**2 / N`` from the singular values ``s`` of ``J`` (chunked
        QR, then SVD of ``R``): best accuracy for the small eigenvalues.
    ``gauss-newton``
        ``eigvalsh(J^T J / N)``: fastest for large ``P``, on GPU too.
    ``autodiff``
        ``eigvalsh`` of the ``torch.func`` Hessian of the loss.
    ``auto``
        ``jacobian-svd`` up to ``P = SVD_MAX_PARAMS``, else ``gauss-newton``.

    The rank is decided from the singular values of ``J`` when ``P <=
    SVD_MAX_PARAMS`` (or the method computed them), else from the eigenvalues
    with a correspondingly wider tolerance; ``extra["rank_source"]`` says which.
    """
    if method not in BATCH_METHODS:
        raise NearoptError(f"unknown batch method {method!r}; choose from {', '.join(BATCH_METHODS)}")
    t0 = time.perf_counter()
    N, P = int(np.shape(X)[0]), net.n_params
    if method == "auto":
        method = "jacobian-svd" if P <= SVD_MAX_PARAMS else "gauss-newton"
    dev = empirical.resolve_device(device)
    decision = None
    if method == "jacobian-svd" or P <= SVD_MAX_PARAMS:
        R = torch.as_tensor(empirical.jacobian_r_factor(net, X, chunk_size=chunk_size, device=dev), device=dev)
        s = torch.linalg.svdvals(R).cpu().numpy() / np.sqrt(N)
        decision = decide_rank(s, P, rtol=rtol, shape=(N, P))
    if method == "jacobian-svd":
        eig = np.zeros(P)
        eig[P - s.size :] = np.sort(s**2)
    else:
        if method == "gauss-newton":
            H = empirical.gauss_newton_tensor(net, X, chunk_size=chunk_size, device=dev)
        else:
            H = torch.as_tensor(empirical.loss_hessian(net, X, chunk_size=chunk_size, device=dev), device=dev)
        eig = torch.linalg.eigvalsh(H).cpu().numpy()
    source = "jacobian singular values"
    if decision is None:
        decision, source = _rank_from_eigenvalues(eig, rtol), "hessian eigenvalues"
    return Spectrum(
        eigenvalues=eig,
        rank=decision,
        method=method,
        activation=net.activation.name,
        n_inputs=net.n_inputs,
        n_hidden=net.n_hidden,
        samples=N,
        seconds=time.perf_counter() - t0,
        extra={"rank_source": source, "device": str(dev)},
    )
