"""Curvature of the batch loss: :class:`BatchGaussNewton` and :class:`BatchHessian`.

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

The curvature classes wrap these as :class:`~nearopt.curvature.base.Curvature`
operators of a :class:`~nearopt.model.problem.Problem` over all parameters, composed with
the trained-block restriction (:class:`~nearopt.curvature.compose.Restricted`);
:func:`batch_spectrum` answers the spectrum of the batch Hessian through
:func:`nearopt.spectra.solve`, with the method names of ``nearopt spectrum``.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cached_property
from typing import Any

import numpy as np
import torch
from torch import func

from ..errors import NearoptError
from ..model.network import TwoLayerNet, network_output
from ..model.problem import Problem, as_problem
from ..resources import require_memory
from ..spectra.spectrum import Spectrum
from .base import Curvature, resolve_device
from .compose import Composed, compose, describe_point

__all__ = [
    "AUTODIFF_BUDGET_BYTES", "batch_hvp", "BATCH_METHODS", "batch_spectrum", "BatchCurvature", "BatchGaussNewton", "BatchHessian", "CHUNK_BUDGET_BYTES",
    "FullBatchGaussNewton", "FullBatchHessian", "functional_hessian", "gauss_newton", "gauss_newton_tensor", "iter_jacobian_chunks", "jacobian",
    "jacobian_r_factor", "loss_hessian", "SVD_MAX_PARAMS"
]

#: bytes of intermediate memory a chunk may use (tunable by ``chunk_size``)
CHUNK_BUDGET_BYTES = 2**28
#: smaller chunks for forward-over-reverse autodiff: they stay in cache and run faster
AUTODIFF_BUDGET_BYTES = 2**25


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
    if X is None:
        raise NearoptError("inputs X are required (an array of shape (N, N_i))")
    # a tensor is asked itself: NumPy would copy a GPU tensor to look at its dtype (and fails to)
    if X.is_complex() if isinstance(X, torch.Tensor) else np.iscomplexobj(X):
        raise NearoptError("inputs must be real numbers, got a complex array")
    try:
        X = torch.as_tensor(np.asarray(X) if not isinstance(X, torch.Tensor) else X, dtype=dtype, device=device)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise NearoptError(f"inputs must be a real (N, {net.n_inputs}) array: {exc}") from exc
    if not bool(torch.isfinite(X).all()):
        raise NearoptError("inputs contain NaN or infinite values")
    if X.ndim != 2 or X.shape[1] != net.n_inputs:
        raise NearoptError(f"inputs must have shape (N, {net.n_inputs}), got {tuple(X.shape)}")
    if X.shape[0] < 1:
        raise NearoptError("need at least one input sample")
    return X


def _jacobian_block(net: TwoLayerNet, X: torch.Tensor, W1: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Rows ``grad_theta f(x_n)`` for a chunk ``X`` ``(n, N_i)``; returns ``(n, P)``.

    ``df/dW1[a, :] = v_a g'(w_a . x) x`` and ``df/dv_a = g(w_a . x)``.
    """
    if not net.is_plain:
        return _general_jacobian_block(net, X)
    Z = X @ W1.T  # (n, N_h)
    dW1 = (net.activation.derivative(Z) * v)[:, :, None] * X[:, None, :]  # (n, N_h, N_i)
    return torch.cat([dW1.reshape(X.shape[0], -1), net.activation(Z)], dim=1)


def _general_jacobian_block(net: TwoLayerNet, X: torch.Tensor) -> torch.Tensor:
    """Rows ``grad_theta f_m(x_n)`` ``(n M, P)`` of a network with biases or ``M`` outputs (sample-major), by ``torch.func.jacrev``."""
    theta = torch.as_tensor(net.parameters(), dtype=X.dtype, device=X.device)
    J = func.vmap(func.jacrev(lambda th, x: network_output(net, th, x[None])[0]), in_dims=(None, 0))(theta, X)  # (n, M, P)
    return J.reshape(-1, theta.shape[0])


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
    P = net.n_params
    require_memory(8 * P * P, f"the {P} x {P} Gauss-Newton matrix", "the jacobian-svd method (P <= N) or the matrix-free operator")
    G: torch.Tensor | None = None
    n = 0
    for Jc in iter_jacobian_chunks(net, X, chunk_size=chunk_size, dtype=dtype, device=device):
        G = Jc.T @ Jc if G is None else G.addmm_(Jc.T, Jc)
        n += Jc.shape[0] // net.n_outputs  # samples: a network with M outputs has M rows per input
    assert G is not None  # _as_tensor refuses an empty batch
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
    R: torch.Tensor | None = None
    # Chunks of at least P rows keep the cost near 2 N P^2 (each QR is of (chunk + P) x P).
    if chunk_size is None:
        chunk_size = max(net.n_params, _chunk_size(np.shape(X)[0], 2 * net.n_params, None))
    for Jc in iter_jacobian_chunks(net, X, chunk_size=chunk_size, dtype=dtype, device=device):
        stacked = Jc if R is None else torch.cat([R, Jc], dim=0)
        R = torch.linalg.qr(stacked, mode="r").R
    assert R is not None  # _as_tensor refuses an empty batch
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

    ``student`` is a network (any width ``K``: ``P = K (N_i + 1)``) or a parameter
    vector of the teacher's architecture; default: the teacher itself (the
    optimum). Uses ``torch.func.hessian`` (forward-over-reverse) on chunks of
    inputs and sums the chunks.
    """
    dev = resolve_device(device)
    Xt = _as_tensor(X, teacher, dtype, dev)
    if student is None:
        student = teacher
    elif not isinstance(student, TwoLayerNet):
        student = teacher.with_parameters(student)
    if student.n_inputs != teacher.n_inputs:
        raise NearoptError(f"student has N_i = {student.n_inputs}, teacher has N_i = {teacher.n_inputs}")
    P = student.n_params
    require_memory(8 * P * P, f"the {P} x {P} autodiff Hessian", "the gauss-newton factor (jacobian-svd) at the optimum, or the matrix-free operator")
    theta = torch.as_tensor(student.parameters(), dtype=dtype, device=dev)
    theta_t = torch.as_tensor(teacher.parameters(), dtype=dtype, device=dev)
    N, n_h = Xt.shape[0], student.n_hidden

    def chunk_loss(th: torch.Tensor, Xc: torch.Tensor, yc: torch.Tensor) -> torch.Tensor:
        return 0.5 * ((network_output(student, th, Xc) - yc) ** 2).sum() / N

    hess = func.hessian(chunk_loss)
    # forward-over-reverse pushes P tangents through the chunk: ~P*n*N_h floats each.
    size = _chunk_size(N, 4 * P * (n_h + student.n_inputs), chunk_size, AUTODIFF_BUDGET_BYTES)
    H = torch.zeros(P, P, dtype=dtype, device=dev)
    with torch.no_grad():
        for Xc in _chunks(Xt, size):
            yc = network_output(teacher, theta_t, Xc)
            H += hess(theta, Xc, yc)
    return H.cpu().numpy()


def functional_hessian(teacher: TwoLayerNet, X, student: TwoLayerNet | np.ndarray, **kwargs) -> np.ndarray:
    """``(1/N) sum r_n grad^2 f(x_n)``: exact Hessian minus Gauss–Newton, ``(P, P)``.

    Zero at the optimum; nonzero as soon as the residuals ``r_n`` are.
    """
    s = student if isinstance(student, TwoLayerNet) else teacher.with_parameters(student)
    return loss_hessian(teacher, X, student=s, **kwargs) - gauss_newton(s, X, **kwargs)


def batch_hvp(net: TwoLayerNet, X, *, device="cpu"):
    """Torch function ``V (P,) or (P, k) -> J^T J V / N`` for inputs ``X`` ``(N, N_i)`` (float64, no ``J`` formed).

    Memory ``O(N (N_i + N_h k))`` for ``k`` vectors at once; cost ``O(N N_h N_i k)``.
    """
    dev = resolve_device(device)
    Xt = _as_tensor(X, net, torch.float64, dev)
    if not net.is_plain:
        return _general_hvp(net, Xt)
    W, v = _weights(net, torch.float64, dev)
    Z = Xt @ W.T
    gZ, dZ = net.activation(Z), net.activation.derivative(Z) * v  # (N, N_h)
    N, m = Xt.shape[0], net.W1.size

    def hvp(V: torch.Tensor) -> torch.Tensor:
        vec = V.ndim == 1
        Vk = V[:, None] if vec else V
        dW, dv = Vk[:m].T.reshape(-1, net.n_hidden, net.n_inputs), Vk[m:].T
        r = (dZ * torch.einsum("ni,kai->kna", Xt, dW)).sum(2) + dv @ gZ.T  # (k, N) = (J V)^T
        out_W = torch.einsum("kn,na,ni->kai", r, dZ, Xt) / N
        out = torch.cat([out_W.reshape(out_W.shape[0], -1), r @ gZ / N], dim=1).T
        return out[:, 0] if vec else out

    return hvp


def _general_hvp(net: TwoLayerNet, X: torch.Tensor):
    """``V -> J^T J V / N`` for a network with biases or several outputs (``torch.func`` forward and reverse products)."""
    theta = torch.as_tensor(net.parameters(), dtype=X.dtype, device=X.device)
    N = X.shape[0]

    def f(th: torch.Tensor) -> torch.Tensor:
        return network_output(net, th, X)

    pullback = func.vjp(f, theta)[1]

    def one(v: torch.Tensor) -> torch.Tensor:
        return pullback(func.jvp(f, (theta,), (v,))[1])[0] / N

    def hvp(V: torch.Tensor) -> torch.Tensor:
        return one(V) if V.ndim == 1 else torch.stack([one(V[:, j]) for j in range(V.shape[1])], dim=1)

    return hvp


#: above this ``P`` the batch routes avoid the ``O(N P^2)`` QR of ``J`` (rank from eigenvalues instead)
SVD_MAX_PARAMS = 4000


class FullBatchGaussNewton(Curvature):
    """``J^T J / N`` over all parameters (the base :class:`BatchGaussNewton` restricts)."""

    kind = "batch Gauss-Newton"
    positive_semidefinite = True

    def __init__(self, problem: Problem, X: torch.Tensor, chunk_size: int | None):
        super().__init__(problem, device=X.device)
        self.X, self.chunk_size = X, chunk_size

    @cached_property
    def _hvp(self):
        # built on the first product: O(N N_h N_i) work the Hessian subclass (its own product) never needs
        return batch_hvp(self.problem.point, self.X, device=self.X.device)

    def torch_matmat(self, V: torch.Tensor) -> torch.Tensor:
        return self._hvp(V)

    def has_factor(self) -> bool:
        return True

    def factor(self) -> np.ndarray:
        """``R / sqrt(N)`` ``(min(N, P), P)`` of ``J = Q R``: ``S^T S = J^T J / N``."""
        R = jacobian_r_factor(self.problem.point, self.X, chunk_size=self.chunk_size, device=self.device)
        return R / np.sqrt(self.X.shape[0])

    def factor_shape(self, S: np.ndarray) -> tuple[int, int]:
        return (int(self.X.shape[0]), int(S.shape[1]))  # R stands for J (N, P): its rounding grows with N

    def to_dense(self) -> np.ndarray:
        return gauss_newton_tensor(self.problem.point, self.X, chunk_size=self.chunk_size, device=self.device).cpu().numpy()


class FullBatchHessian(FullBatchGaussNewton):
    """The exact batch-loss Hessian over all parameters: products by ``jvp`` of ``grad``, dense by ``torch.func.hessian``."""

    kind = "batch Hessian"

    def __init__(self, problem: Problem, X: torch.Tensor, chunk_size: int | None):
        super().__init__(problem, X, chunk_size)
        self.positive_semidefinite = problem.at_teacher
        st, te = problem.point, problem.teacher
        self._theta = torch.as_tensor(st.parameters(), dtype=torch.float64, device=self.device)
        y = network_output(te, torch.as_tensor(te.parameters(), dtype=torch.float64, device=self.device), X)
        N = X.shape[0]

        def loss(th: torch.Tensor) -> torch.Tensor:
            return 0.5 * ((network_output(st, th, X) - y) ** 2).sum() / N

        self.loss_fn = loss
        grad = func.grad(loss)
        self._hvp1 = lambda v: func.jvp(grad, (self._theta,), (v,))[1]

    def torch_matmat(self, V: torch.Tensor) -> torch.Tensor:
        return torch.stack([self._hvp1(V[:, j]) for j in range(V.shape[1])], dim=1)

    def has_factor(self) -> bool:
        return self.problem.at_teacher  # there the Gauss-Newton square root is one of H too (it decides the rank)

    def factor(self) -> np.ndarray:
        if not self.has_factor():
            raise NearoptError("the batch Hessian has no square root off the global minimum")
        return super().factor()

    def to_dense(self) -> np.ndarray:
        pr = self.problem
        return loss_hessian(pr.teacher, self.X, student=pr.point, chunk_size=self.chunk_size, device=self.device)


class BatchCurvature(Composed):
    """What every curvature of a batch shares: the inputs ``X`` ``(N, N_i)``, ``N`` in results,
    and the trained-block restriction around a base over all parameters."""

    base_class: type[FullBatchGaussNewton] = FullBatchGaussNewton

    def __init__(self, problem: Problem | TwoLayerNet, X, *, chunk_size: int | None = None, device="cpu"):
        super().__init__(problem, device=device)
        if not self.problem.inputs.isotropic:
            raise NearoptError("a batch curvature takes its inputs from X; draw X from the law (GaussianInputs.sample) instead of a covariance")
        self.X = _as_tensor(X, self.problem.point, torch.float64, self.device)
        self.chunk_size = chunk_size
        self.base = self.base_class(self.problem.replace(trained="both"), self.X, chunk_size)
        self.operator = compose(self.base, self.problem)
        self.positive_semidefinite = self.base.positive_semidefinite

    @property
    def samples(self) -> int:
        """``N``."""
        return int(self.X.shape[0])

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d["samples"] = self.samples
        d["extra"].update(describe_point(self.problem))
        if self.problem.at_teacher:
            d["extra"].update(loss=0.0, gradient_norm=0.0)  # the student is the teacher: every residual is exactly zero
        return d


class BatchGaussNewton(BatchCurvature):
    """Gauss–Newton matrix of the batch loss at the student, ``G = J^T J / N`` ``(P, P)``.

    ``J[n] = grad_theta f_theta(x_n)`` for inputs ``X`` ``(N, N_i)``. At the
    optimum (student = teacher) ``G`` is the Hessian. Square root
    (:meth:`factor`): ``R / sqrt(N)``, ``R`` the triangular factor of ``J = Q R``
    (chunked TSQR), restricted to the trained columns. Product: ``J^T (J V) / N``
    without forming ``J`` (cost ``O(N N_h N_i)`` per vector).
    """

    kind = "batch Gauss-Newton"


class BatchHessian(BatchCurvature):
    """Exact Hessian of the batch loss ``L = 1/(2N) sum (f_student - f_teacher)^2`` at the student.

    ``H = G + (1/N) sum_n r_n grad^2 f(x_n)`` with residuals ``r_n``: the
    Gauss–Newton matrix plus the functional term, which vanishes at the teacher.
    Dense by ``torch.func.hessian`` (:func:`loss_hessian`); products by
    forward-over-reverse autodiff (``jvp`` of ``grad``). At the teacher the
    square root of :class:`BatchGaussNewton` is a square root of ``H`` too, and
    :meth:`factor` returns it (it decides the rank); elsewhere ``H`` may be
    indefinite and has none. Results at a student point carry the batch loss
    and the norm of its gradient over the trained parameters.
    """

    kind = "batch Hessian"
    base_class = FullBatchHessian

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        if not self.problem.at_teacher:
            base = self.base
            assert isinstance(base, FullBatchHessian)
            theta = base._theta.clone().requires_grad_(True)
            loss = base.loss_fn(theta)
            (grad,) = torch.autograd.grad(loss, theta)
            idx = torch.as_tensor(self.problem.trained_indices, device=grad.device)
            d["extra"].update(loss=float(loss.detach()), gradient_norm=float(grad[idx].norm()))
        return d


BATCH_METHODS = ("auto", "jacobian-svd", "gauss-newton", "autodiff")
#: batch method -> (curvature, route)
_BATCH_ROUTES = {"jacobian-svd": (BatchGaussNewton, "factor"), "gauss-newton": (BatchGaussNewton, "dense"), "autodiff": (BatchHessian, "dense")}


def batch_spectrum(
    net: TwoLayerNet | Problem,
    X,
    *,
    method: str = "auto",
    chunk_size: int | None = None,
    device="cpu",
    rtol: float | None = None,
    **request: Any,
) -> Spectrum:
    """Spectrum of the batch Hessian at the optimum (or at ``problem``'s student), through :func:`nearopt.spectra.solve`.

    ``method`` is one of

    * ``jacobian-svd``: eigenvalues ``s**2 / N`` from the singular values ``s`` of ``J``
      (chunked QR, then SVD of ``R``): best accuracy for the small eigenvalues, and the rank
      by the singular-value rule (:class:`BatchGaussNewton`, ``factor`` route);
    * ``gauss-newton``: ``eigvalsh(J^T J / N)``, fastest for large ``P`` and on a GPU; the
      rank by the eigenvalue rule (a wider tolerance);
    * ``autodiff``: ``eigvalsh`` of the ``torch.func`` Hessian of the loss (:class:`BatchHessian`);
    * ``auto``: at the optimum ``jacobian-svd`` up to ``P = SVD_MAX_PARAMS``, else
      ``gauss-newton``; at any other point ``autodiff`` (the Gauss-Newton matrix is not the
      Hessian there).

    ``request``: further :class:`~nearopt.spectra.request.SpectrumRequest` fields
    (``which``, ``k``, ``vectors``).
    """
    if method not in BATCH_METHODS:
        raise NearoptError(f"unknown batch method {method!r}; choose from {', '.join(BATCH_METHODS)}")
    problem = as_problem(net)
    if method == "auto":
        method = "autodiff" if not problem.at_teacher else "jacobian-svd" if problem.n_params <= SVD_MAX_PARAMS else "gauss-newton"
    elif method != "autodiff" and not problem.at_teacher:
        raise NearoptError(f"method {method} computes the Gauss-Newton matrix, which is not the Hessian off the global minimum; use autodiff (or auto)")
    cls, route = _BATCH_ROUTES[method]
    spec = cls(problem, X, chunk_size=chunk_size, device=device).spectrum(route, rtol=rtol, **request)
    # ``method`` stays the route that ran (factor, dense, ...); the batch method asked is recorded beside it
    return spec.replace(extra={**spec.extra, "batch_method": method})
