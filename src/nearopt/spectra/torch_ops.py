"""Operators on the torch side: what the torch eigensolvers (locking LOBPCG, thick-restart and SLQ
Lanczos) multiply by, and how a NumPy operator or a torch function crosses over.

A :class:`~nearopt.curvature.base.Curvature` that has a ``torch_matmat`` (the population
Hessian, on CPU or CUDA) is used as it is, so the solver's blocks never leave its device; any
other SciPy ``LinearOperator`` goes through NumPy (a host round trip per product).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator

__all__ = [
    "CHUNK", "chunked", "column_norms", "Counter", "generator", "GPU_CHUNK", "HOST_REDUCE_ROWS", "ProductMeter", "residual_norms", "row_chunk",
    "small_eigh", "SymmetricOperator", "through_numpy", "torch_side", "TorchMatmat", "TorchOperator"
]

#: a torch operator: ``(n, m) -> (n, m)`` float64 on one device
TorchMatmat = Callable[[torch.Tensor], torch.Tensor]
#: columns per operator call on the host (bounds the product's own temporaries: ~0.6 GB at ``P = 4·10⁶``)
CHUNK = 4
#: rows per chunk of an in-place update of a tall block (``V ← V C``): host, GPU. The host's keeps
#: the temporaries small; a GPU has the memory, and each chunk costs kernel launches
ROW_CHUNK, GPU_ROW_CHUNK = 1 << 16, 1 << 21
#: rows per chunk of a host reduction down a tall block's columns (Gram matrices, column norms): the
#: chunk stays in cache (512 to 4096 measured alike for Gram matrices at P = 2.5e5)
HOST_REDUCE_ROWS = 4096
#: columns per operator call on a GPU (memory is no concern there; an H200 measured 1.1–1.2 ms per column
#: for 1 to 32 columns at erf ``n = 2000``, so wider calls only save launches: ``bench_extremes.py`` times them)
GPU_CHUNK = 32


class ProductMeter:
    """Counts the vectors an operator multiplies and reports progress.

    ``progress``: ``None``/``False`` (silent), ``True`` (a line ``"  {label}{products} products,
    {seconds} s[, {status}]"`` to stderr at most every ``every`` seconds) or a callable ``(products, seconds)``.
    ``status``: what the solver has to say of its progress (e.g. ``"12/20 pairs locked"``), set by it.
    """

    def __init__(self, progress: bool | Callable[[int, float], None] | None = None, label: str = "", every: float = 10.0):
        self.progress, self.label, self.every = progress, label, every
        self.status = ""
        self.products, self.t0 = 0, time.perf_counter()
        self.last = self.t0

    def add(self, n: int) -> None:
        """Count ``n`` more vectors; report if one is due."""
        self.products += n
        now = time.perf_counter()
        if not self.progress or now - self.last < self.every:
            return
        self.last = now
        if callable(self.progress):
            self.progress(self.products, now - self.t0)
        else:
            status = f", {self.status}" if self.status else ""
            print(f"  {self.label}{self.products} products, {now - self.t0:.0f} s{status}", file=sys.stderr, flush=True)


class Counter:
    """A torch ``matmat`` applied ``CHUNK`` columns at a time, its products counted by a :class:`ProductMeter`
    (``meter``: one already counting, e.g. the products spent estimating ``λ_max``, so that progress
    lines go on from there)."""

    def __init__(self, matmat: TorchMatmat, progress: bool | Callable[[int, float], None] | None = None, label: str = "", meter: ProductMeter | None = None):
        self.matmat, self.meter = matmat, meter if meter is not None else ProductMeter(progress, label)

    @property
    def products(self) -> int:
        return self.meter.products

    def __call__(self, X: torch.Tensor) -> torch.Tensor:
        out = chunked(self.matmat, X)
        self.meter.add(X.shape[1])
        return out


def chunked(fn: TorchMatmat, X: torch.Tensor) -> torch.Tensor:
    """``fn`` applied to ``X`` ``(n, m)`` a few columns at a time (:data:`CHUNK` on the host,
    :data:`GPU_CHUNK` on a GPU): bounds ``fn``'s temporaries."""
    step = GPU_CHUNK if X.device.type == "cuda" else CHUNK
    if X.shape[1] <= step:
        return fn(X.contiguous())
    out = torch.empty_like(X)
    for s in range(0, X.shape[1], step):
        out[:, s : s + step] = fn(X[:, s : s + step].contiguous())
    return out


class SymmetricOperator(LinearOperator):
    """A symmetric float64 SciPy ``LinearOperator``: a subclass supplies only ``_matmat``
    (``(P, m) -> (P, m)``); vectors, the transpose and the adjoint follow from it."""

    def _matvec(self, x: np.ndarray) -> np.ndarray:
        return self._matmat(np.asarray(x).reshape(-1, 1)).ravel()

    def _rmatvec(self, x: np.ndarray) -> np.ndarray:
        return self._matvec(x)

    def _adjoint(self) -> SymmetricOperator:
        return self


class TorchOperator(SymmetricOperator):
    """A symmetric LinearOperator ``(P, P)`` from a torch function ``(P, k) -> (P, k)`` (float64, on ``device``).

    How a preconditioner written in torch (CPU or GPU) reaches SciPy's LOBPCG.
    """

    def __init__(self, fn: Callable[[Any], Any], P: int, device: Any = "cpu"):
        super().__init__(dtype=np.float64, shape=(P, P))
        self.fn, self.device = fn, device

    def _matmat(self, X: np.ndarray) -> np.ndarray:
        T = torch.as_tensor(np.ascontiguousarray(X, dtype=np.float64).reshape(self.shape[0], -1), device=self.device)
        return self.fn(T).cpu().numpy()


def through_numpy(lin: LinearOperator) -> Callable:
    """``lin`` (a NumPy LinearOperator) as a torch function ``(P, m) -> (P, m)`` on the input's device."""

    def fn(V):
        return torch.as_tensor(np.asarray(lin.matmat(V.cpu().numpy()), dtype=np.float64), device=V.device)

    return fn


def torch_side(op: LinearOperator) -> tuple[TorchMatmat, torch.device]:
    """``(matmat, device)``: a curvature's own ``torch_matmat`` and a :class:`TorchOperator`'s function
    run on their device; any other operator goes through NumPy (on the host)."""
    device = torch.device(getattr(op, "device", None) or "cpu")
    if isinstance(op, TorchOperator):
        return op.fn, device
    if callable(getattr(op, "torch_matmat", None)):
        return op.torch_matmat, device
    return through_numpy(op), device


def column_norms(V: torch.Tensor) -> torch.Tensor:
    """``‖V[:, j]‖`` ``(m,)`` of a tall ``V`` ``(n, m)``. On the host summed over chunks of
    :data:`HOST_REDUCE_ROWS` rows: a reduction down the columns of a row-major block is strided, and
    ``torch.linalg.norm(V, dim=0)`` took 49 ms at ``(10⁶, 24)`` against 8 ms (2 cores). A GPU reduces
    it directly."""
    rows = HOST_REDUCE_ROWS
    if V.device.type != "cpu" or V.shape[0] <= rows:
        return torch.linalg.vector_norm(V, dim=0)
    out = V.new_zeros(V.shape[1:])
    for s in range(0, V.shape[0], rows):
        c = V[s : s + rows]
        out += (c * c).sum(0)
    return out.sqrt_()


def residual_norms(matmat: TorchMatmat, X: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """``‖H x_i − θ_i x_i‖`` ``(m,)`` for the columns of ``X`` ``(n, m)``, a product call of :data:`CHUNK`
    (:data:`GPU_CHUNK`) columns at a time: a whole block's product and its copies would hold GBs at
    ``P ~ 10⁶`` (the 20-column check of the top end had set the peak memory at ``n = 2000``)."""
    step = GPU_CHUNK if X.device.type == "cuda" else CHUNK
    out = X.new_empty(X.shape[1])
    for s in range(0, X.shape[1], step):
        c = slice(s, s + step)
        out[c] = column_norms(torch.addcmul(matmat(X[:, c].contiguous()), X[:, c], theta[c], value=-1.0))
    return out


def row_chunk(device: torch.device) -> int:
    """Rows per chunk of an in-place block update on ``device`` (:data:`ROW_CHUNK`, :data:`GPU_ROW_CHUNK`)."""
    return GPU_ROW_CHUNK if device.type == "cuda" else ROW_CHUNK


def generator(seed: int, device: torch.device) -> torch.Generator:
    """A generator seeded with ``seed`` on ``device``: random blocks are drawn where they are used.

    On a GPU, drawing the starting block on the host and copying it over took 3 s of the
    30 s erf ``n = 2000`` task (``9.6·10⁷`` normals, H200 host). The same seed gives the same
    numbers on the same kind of device (the host's and a GPU's streams differ)."""
    return torch.Generator(device=device).manual_seed(seed)


def small_eigh(M: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.linalg.eigh`` of a small symmetric ``M`` (a Rayleigh–Ritz or Gram matrix), on the host:
    for a matrix of tens of rows a GPU solver costs more in launches and syncs than the work.
    The results go back to ``M``'s device."""
    if M.device.type == "cpu":
        return torch.linalg.eigh(M)
    w, U = torch.linalg.eigh(M.cpu())
    return w.to(M.device), U.to(M.device)
