"""Hessians of the batch loss at (or near) the optimum.

For a batch ``X`` of ``N`` inputs the loss is
``L(theta) = 1/(2N) sum_n (f_theta(x_n) - f_theta*(x_n))**2``. Two independent
routes are provided and held against each other in the tests:

* :func:`loss_hessian` -- the exact Hessian of ``L`` by autodiff
  (``torch.func.hessian``), valid at any student ``theta``;
* :func:`gauss_newton` -- ``J^T J / N`` from the explicit per-sample Jacobian
  (:func:`jacobian`), equal to the Hessian at ``theta = theta*``.

Both accumulate over chunks of inputs, so memory is ``O(P**2 + chunk * P)``.
:func:`jacobian_r_factor` gives the triangular factor ``R`` of ``J = Q R``
(TSQR over chunks): the singular values of ``J``, hence the eigenvalues and the
rank of ``H``, without squaring the condition number.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from torch import func

from ..errors import NearoptError
from ..model import TwoLayerNet, forward_torch

#: bytes of intermediate memory a chunk may use (tunable by ``chunk_size``)
CHUNK_BUDGET_BYTES = 2**28
#: smaller chunks for forward-over-reverse autodiff: they stay in cache and run faster
AUTODIFF_BUDGET_BYTES = 2**25


def resolve_device(device: str | torch.device | None = "cpu") -> torch.device:
    """``"auto"`` picks CUDA when available; otherwise the named device."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise NearoptError("device 'cuda' requested but no CUDA GPU is available")
    return dev


def _chunk_size(n_samples: int, per_sample_floats: int, chunk_size: int | None, budget: int = CHUNK_BUDGET_BYTES) -> int:
    if chunk_size is not None:
        if chunk_size < 1:
            raise NearoptError(f"chunk size must be >= 1, got {chunk_size}")
        return min(chunk_size, n_samples)
    return int(max(1, min(n_samples, budget // (8 * max(per_sample_floats, 1)))))


def _chunks(X: torch.Tensor, size: int) -> Iterator[torch.Tensor]:
    for start in range(0, X.shape[0], size):
        yield X[start : start + size]


def _as_tensor(X: np.ndarray | torch.Tensor, net: TwoLayerNet, dtype, device) -> torch.Tensor:
    X = torch.as_tensor(X, dtype=dtype, device=device)
    if X.ndim != 2 or X.shape[1] != net.n_inputs:
        raise NearoptError(f"inputs must have shape (N, {net.n_inputs}), got {tuple(X.shape)}")
    if X.shape[0] < 1:
        raise NearoptError("need at least one input sample")
    return X


def _jacobian_block(net: TwoLayerNet, X: torch.Tensor, W1: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Rows ``grad_theta f(x_n)`` for a chunk ``X`` ``(n, N_i)``; returns ``(n, P)``.

    ``df/dW1[a, :] = v_a g'(w_a . x) x`` and ``df/dv_a = g(w_a . x)``.
    """
    Z = X @ W1.T  # (n, N_h)
    dW1 = (net.activation.derivative(Z) * v)[:, :, None] * X[:, None, :]  # (n, N_h, N_i)
    return torch.cat([dW1.reshape(X.shape[0], -1), net.activation(Z)], dim=1)


def _weights(net: TwoLayerNet, dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
    W1 = torch.as_tensor(net.W1, dtype=dtype, device=device)
    v = torch.as_tensor(net.W2.ravel(), dtype=dtype, device=device)
    return W1, v


def jacobian(net: TwoLayerNet, X, *, dtype=torch.float64, device="cpu") -> torch.Tensor:
    """Per-sample Jacobian ``J[n] = grad_theta f_theta(x_n)``, shape ``(N, P)``."""
    dev = resolve_device(device)
    Xt = _as_tensor(X, net, dtype, dev)
    return _jacobian_block(net, Xt, *_weights(net, dtype, dev))


def iter_jacobian_chunks(net: TwoLayerNet, X, *, chunk_size: int | None = None, dtype=torch.float64, device="cpu") -> Iterator[torch.Tensor]:
    """Yield the Jacobian ``(n_chunk, P)`` chunk by chunk (rows of :func:`jacobian`)."""
    dev = resolve_device(device)
    Xt = _as_tensor(X, net, dtype, dev)
    W1, v = _weights(net, dtype, dev)
    size = _chunk_size(Xt.shape[0], 2 * net.n_params, chunk_size)
    for Xc in _chunks(Xt, size):
        yield _jacobian_block(net, Xc, W1, v)


def gauss_newton_tensor(net: TwoLayerNet, X, *, chunk_size: int | None = None, dtype=torch.float64, device="cpu") -> torch.Tensor:
    """:func:`gauss_newton` as a tensor left on ``device`` (for GPU eigensolvers)."""
    G = None
    n = 0
    for Jc in iter_jacobian_chunks(net, X, chunk_size=chunk_size, dtype=dtype, device=device):
        G = Jc.T @ Jc if G is None else G.addmm_(Jc.T, Jc)
        n += Jc.shape[0]
    return G.div_(n)


def gauss_newton(net: TwoLayerNet, X, *, chunk_size: int | None = None, dtype=torch.float64, device="cpu") -> np.ndarray:
    """Gauss–Newton matrix ``J^T J / N`` at ``net``'s parameters, shape ``(P, P)``.

    At the optimum (student = teacher) this *is* the Hessian of the loss.
    """
    return gauss_newton_tensor(net, X, chunk_size=chunk_size, dtype=dtype, device=device).cpu().numpy()


def jacobian_r_factor(net: TwoLayerNet, X, *, chunk_size: int | None = None, dtype=torch.float64, device="cpu") -> np.ndarray:
    """Upper-triangular ``R`` with ``J = Q R`` (TSQR over chunks), shape ``(min(N, P), P)``.

    ``R`` has the singular values of ``J``; ``R^T R / N`` is the Gauss–Newton matrix.
    """
    R = None
    # Chunks of at least P rows keep the cost near 2 N P^2 (each QR is of (chunk + P) x P).
    if chunk_size is None:
        chunk_size = max(net.n_params, _chunk_size(np.shape(X)[0], 2 * net.n_params, None))
    for Jc in iter_jacobian_chunks(net, X, chunk_size=chunk_size, dtype=dtype, device=device):
        stacked = Jc if R is None else torch.cat([R, Jc], dim=0)
        R = torch.linalg.qr(stacked, mode="r").R
    return R.cpu().numpy()


def loss_hessian(
    teacher: TwoLayerNet,
    X,
    *,
    student: TwoLayerNet | np.ndarray | None = None,
    chunk_size: int | None = None,
    dtype=torch.float64,
    device="cpu",
) -> np.ndarray:
    """Exact Hessian of ``L = 1/(2N) sum (f_student - f_teacher)**2`` by autodiff, ``(P, P)``.

    ``student`` is a network or a parameter vector ``(P,)``; default: the teacher
    itself (the optimum). Uses ``torch.func.hessian`` (forward-over-reverse) on
    chunks of inputs and sums the chunks.
    """
    dev = resolve_device(device)
    Xt = _as_tensor(X, teacher, dtype, dev)
    if student is None:
        theta_s = teacher.parameters()
    elif isinstance(student, TwoLayerNet):
        theta_s = student.parameters()
    else:
        theta_s = np.asarray(student, dtype=np.float64).ravel()
    if theta_s.size != teacher.n_params:
        raise NearoptError(f"student has {theta_s.size} parameters, teacher has {teacher.n_params}")
    theta = torch.as_tensor(theta_s, dtype=dtype, device=dev)
    theta_t = torch.as_tensor(teacher.parameters(), dtype=dtype, device=dev)
    act, n_h, N = teacher.activation, teacher.n_hidden, Xt.shape[0]

    def chunk_loss(th: torch.Tensor, Xc: torch.Tensor, yc: torch.Tensor) -> torch.Tensor:
        return 0.5 * ((forward_torch(th, Xc, act, n_h) - yc) ** 2).sum() / N

    hess = func.hessian(chunk_loss)
    # forward-over-reverse pushes P tangents through the chunk: ~P*n*N_h floats each.
    size = _chunk_size(N, 4 * teacher.n_params * (n_h + teacher.n_inputs), chunk_size, AUTODIFF_BUDGET_BYTES)
    H = torch.zeros(teacher.n_params, teacher.n_params, dtype=dtype, device=dev)
    with torch.no_grad():
        for Xc in _chunks(Xt, size):
            yc = forward_torch(theta_t, Xc, act, n_h)
            H += hess(theta, Xc, yc)
    return H.cpu().numpy()


def functional_hessian(teacher: TwoLayerNet, X, student: TwoLayerNet | np.ndarray, **kwargs) -> np.ndarray:
    """``(1/N) sum r_n grad^2 f(x_n)``: exact Hessian minus Gauss–Newton, ``(P, P)``.

    Zero at the optimum; nonzero as soon as the residuals ``r_n`` are.
    """
    s = student if isinstance(student, TwoLayerNet) else teacher.with_parameters(student)
    return loss_hessian(teacher, X, student=s, **kwargs) - gauss_newton(s, X, **kwargs)
