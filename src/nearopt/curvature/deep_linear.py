"""The exact population Hessian of a deep linear network: :class:`DeepLinearHessian`.

For ``f(x) = W_L ... W_1 x`` under ``x ~ N(0, Sigma)`` the population loss is the
polynomial ``L(theta) = 1/2 tr((A - T) Sigma (A - T)^T) = 1/2 ||(A - T) S||_F^2``
(``A = W_L ... W_1``, ``T`` the teacher's end-to-end map, ``S`` ``(N_i, r)`` a square root
``S S^T = Sigma`` of rank ``r``: :func:`sigma_root`), so its
Hessian is exactly that of the closed form: Hessian-vector products of ``torch.func`` in
float64 (columns of the identity for the dense matrix) at any student point, residual term
included.

The Gauss-Newton part ``E[J J^T]`` has a closed form. With ``B_l = W_L ... W_{l+1}``
``(K, n_l)`` and ``C_l = W_{l-1} ... W_1`` ``(n_{l-1}, N_i)`` the end-to-end differential is
``dA = sum_l B_l dW_l C_l``; in row-major vectors ``vec(B X C) = (B kron C^T) vec(X)``, so

* the square root (:func:`deep_linear_factor`): ``F_l = B_l kron (C_l S)^T`` ``(K r, n_l n_{l-1})``,
  ``F = [F_1 ... F_L]``, ``F^T F = E[J J^T]``;
* block ``(l, m)`` (:func:`deep_linear_gauss_newton`): ``(B_l^T B_m) kron (C_l Sigma C_m^T)``.

At the teacher (a global minimum) the residual vanishes and ``H = E[J J^T]``; its
rank is ``q (r + K - q)`` (:func:`~nearopt.theory.rank_prediction.predict_deep_linear_rank`)
where :func:`rank_conditions` hold. Every question goes through :func:`nearopt.spectra.solve`
(``DeepLinearHessian(problem).spectrum(...)``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import torch
from torch import func

from ..errors import NearoptError
from ..model.deep_linear import DeepLinearNet, DeepLinearProblem
from ..model.problem import PSD_RTOL, GaussianInputs
from ..policy import RankDecision, RankPolicy
from ..resources import require_memory
from ..theory.rank_prediction import RankPrediction, predict_deep_linear_rank
from .base import Curvature, resolve_device

__all__ = ["formula_rank",
    "as_deep_problem", "deep_linear_factor", "deep_linear_gauss_newton", "deep_linear_gradient", "deep_linear_loss", "deep_linear_rank",
    "DeepLinearHessian", "DeepLinearRank", "end_to_end_torch", "outer_products", "rank_conditions", "sigma_root"
]


def sigma_root(law: GaussianInputs) -> np.ndarray:
    """A thin square root ``S`` ``(N_i, r)`` of ``Sigma``, ``S S^T = Sigma``, ``r = law.rank``.

    Eigenvalues at or below the law's rank cut are dropped, not square-rooted: the root of a
    rounding-level ``1e-17`` would be ``3e-9``, a direction no factor could tell from a real one.
    """
    if law.isotropic:
        return np.eye(law.n_inputs)
    lam, Q = np.linalg.eigh(law.covariance)
    keep = lam > PSD_RTOL * lam[-1]
    return Q[:, keep] * np.sqrt(lam[keep])


def as_deep_problem(problem: DeepLinearProblem | DeepLinearNet) -> DeepLinearProblem:
    """``DeepLinearProblem(net)`` for a bare network (student = teacher); a problem unchanged."""
    return problem if isinstance(problem, DeepLinearProblem) else DeepLinearProblem(problem)


def end_to_end_torch(theta: torch.Tensor, shapes: tuple[tuple[int, int], ...]) -> torch.Tensor:
    """``A = W_L ... W_1`` ``(K, N_i)`` from ``theta`` ``(P,)`` split into layers of ``shapes``."""
    A, start = None, 0
    for rows, cols in shapes:
        W = theta[start:start + rows * cols].reshape(rows, cols)
        A = W if A is None else W @ A
        start += rows * cols
    assert A is not None
    return A


def outer_products(net: DeepLinearNet) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``(B, C)``: ``B_l = W_L ... W_{l+1}`` ``(K, n_l)`` and ``C_l = W_{l-1} ... W_1`` ``(n_{l-1}, N_i)`` per layer."""
    W = net.weights
    C = [np.eye(net.n_inputs)]
    for Wl in W[:-1]:
        C.append(Wl @ C[-1])
    B = [np.eye(net.n_outputs)]
    for Wl in reversed(W[1:]):
        B.insert(0, B[0] @ Wl)
    return B, C


def deep_linear_loss(problem: DeepLinearProblem) -> float:
    """``1/2 tr((A - T) Sigma (A - T)^T)`` at the problem's point."""
    D = problem.point.end_to_end() - problem.target
    return 0.5 * float(np.sum(problem.inputs.matmul(D) * D))


def deep_linear_gradient(problem: DeepLinearProblem, net: DeepLinearNet | None = None) -> np.ndarray:
    """Population gradient ``(P,)`` at ``net`` (default: the problem's point): ``dL/dW_l = B_l^T (A - T) Sigma C_l^T``."""
    net = problem.point if net is None else net
    G = problem.inputs.matmul(net.end_to_end() - problem.target)  # (K, N_i): (A - T) Sigma
    B, C = outer_products(net)
    return np.concatenate([(Bl.T @ G @ Cl.T).ravel() for Bl, Cl in zip(B, C, strict=True)])


def deep_linear_factor(problem: DeepLinearProblem) -> np.ndarray:
    """A square root ``F`` ``(K r, P)`` of the Gauss-Newton matrix at the point: ``F^T F = E[J J^T]`` (module docstring)."""
    net = problem.point
    rows = net.n_outputs * problem.inputs.rank
    require_memory(8 * rows * net.n_params, f"the {rows} x {net.n_params} Gauss-Newton factor", "a request for one end (k eigenvalues)")
    S = sigma_root(problem.inputs)
    B, C = outer_products(net)
    return np.hstack([np.kron(Bl, (Cl @ S).T) for Bl, Cl in zip(B, C, strict=True)])


def deep_linear_gauss_newton(problem: DeepLinearProblem) -> np.ndarray:
    """The Gauss-Newton matrix ``E[J J^T]`` ``(P, P)``, block ``(l, m) = (B_l^T B_m) kron (C_l Sigma C_m^T)``."""
    net, law = problem.point, problem.inputs
    P = net.n_params
    require_memory(8 * P * P, f"the dense {P} x {P} Gauss-Newton matrix", "a request for one end (k eigenvalues)")
    B, C = outer_products(net)
    CS = [law.matmul(Cl) for Cl in C]  # C_l Sigma (Sigma symmetric)
    ends = np.cumsum([0, *(W.size for W in net.weights)])
    G = np.empty((P, P))
    for ell in range(net.depth):
        for m in range(ell, net.depth):
            block = np.kron(B[ell].T @ B[m], CS[ell] @ C[m].T)
            G[ends[ell]:ends[ell + 1], ends[m]:ends[m + 1]] = block
            G[ends[m]:ends[m + 1], ends[ell]:ends[ell + 1]] = block.T
    return G


def formula_rank(problem: DeepLinearProblem) -> tuple[int, str] | None:
    """``(q (r + K - q), basis)`` of the point's Gauss-Newton matrix where :func:`rank_conditions` hold, else ``None``."""
    cond = rank_conditions(problem)
    if not cond["holds"]:
        return None
    pred = predict_deep_linear_rank(problem.point.widths, cond["rank_sigma"])
    return pred.rank, f"predict_deep_linear_rank, {pred.kind}: {pred.basis}"


def rank_conditions(problem: DeepLinearProblem) -> dict[str, Any]:
    """Whether the point meets the conditions of the rank formula (numerically, NumPy's ``matrix_rank``).

    ``rank A = m = min(n_0, ..., n_L)`` (the product fills its variety) and
    ``rank(A Sigma^(1/2)) = q = min(r, K, hidden widths)``. Returns the ranks found and ``holds``.
    """
    net, law = problem.point, problem.inputs
    A = net.end_to_end()
    m, r = min(net.widths), law.rank
    q = min(r, net.n_outputs, *net.widths[1:-1])
    rank_A = int(np.linalg.matrix_rank(A))
    rank_AS = int(np.linalg.matrix_rank(A @ sigma_root(law)))
    return {"rank_A": rank_A, "min_width": m, "rank_A_sqrt_sigma": rank_AS, "q": q, "rank_sigma": r, "holds": rank_A == m and rank_AS == q}


class DeepLinearHessian(Curvature):
    """The exact population Hessian ``(P, P)`` of a deep linear problem at its point (module docstring).

    Parameters
    ----------
    problem : DeepLinearProblem or DeepLinearNet
        Teacher, student point (default: the teacher), input law ``N(0, Sigma)``.
    residual : bool
        Include the residual term off a global minimum (default); ``False`` gives the
        Gauss-Newton matrix ``E[J J^T]`` at the point (PSD).
    device : str or torch.device
        Where the Hessian-vector products run.
    """

    kind = "deep linear population Hessian"

    def __init__(self, problem: DeepLinearProblem | DeepLinearNet, *, residual: bool = True, device: str | torch.device = "cpu"):
        # the base's __init__ takes a two-layer Problem: set its fields here instead
        self.deep = as_deep_problem(problem)
        self.device = resolve_device(device)
        self.residual = bool(residual)
        self.positive_semidefinite = self.deep.at_teacher or not self.residual
        P = self.deep.n_params
        super(Curvature, self).__init__(dtype=np.float64, shape=(P, P))  # SymmetricOperator's

    # ------------------------------------------------------------------ the closed-form loss, differentiated
    @cached_property
    def _torch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(theta, T S, S)`` on the device: the point, the scaled target and ``S`` (:func:`sigma_root`)."""
        S = sigma_root(self.deep.inputs)
        as_t = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float64, device=self.device)
        return as_t(self.deep.point.parameters()), as_t(self.deep.target @ S), as_t(S)

    def _scaled_output(self, theta: torch.Tensor) -> torch.Tensor:
        """``A(theta) S`` ``(K, r)``."""
        return end_to_end_torch(theta, self.deep.point.shapes) @ self._torch[2]

    def _loss(self, theta: torch.Tensor) -> torch.Tensor:
        """``1/2 ||(A - T) S||_F^2`` (the difference taken before squaring)."""
        return 0.5 * ((self._scaled_output(theta) - self._torch[1]) ** 2).sum()

    def torch_matmat(self, V: torch.Tensor) -> torch.Tensor:
        """``H V`` ``(P, k)``: Hessian-vector products of the closed form (Gauss-Newton products ``J^T J V`` without the residual)."""
        theta = self._torch[0]
        if self.residual:
            grad = func.grad(self._loss)
            one = lambda v: func.jvp(grad, (theta,), (v,))[1]
        else:
            def one(v: torch.Tensor) -> torch.Tensor:
                Jv = func.jvp(self._scaled_output, (theta,), (v,))[1]
                return func.vjp(self._scaled_output, theta)[1](Jv)[0]
        return func.vmap(one, in_dims=1, out_dims=1)(V.to(device=self.device, dtype=torch.float64))

    def to_dense(self) -> np.ndarray:
        """``H`` ``(P, P)``: Hessian-vector products with identity blocks, or the closed-form Gauss-Newton matrix.

        (The products are exact as ``torch.func.hessian`` is, and ~100 times faster at ``P`` in the hundreds.)
        """
        if not self.residual:
            P = self.n_params
            require_memory(8 * P * P, f"the dense {P} x {P} deep linear Hessian", "a request for one end (k eigenvalues)")
            return deep_linear_gauss_newton(self.deep)
        return super().to_dense()

    def has_factor(self) -> bool:
        """At the teacher (``H`` is the Gauss-Newton matrix) or without the residual term."""
        return self.deep.at_teacher or not self.residual

    def factor(self) -> np.ndarray | None:
        return deep_linear_factor(self.deep) if self.has_factor() else None

    def known_rank(self) -> tuple[int, str] | None:
        """``q (r + K - q)`` where ``H`` is the Gauss-Newton matrix and :func:`rank_conditions` hold, else ``None``."""
        return formula_rank(self.deep) if self.has_factor() else None

    # ------------------------------------------------------------------ what a spectrum of it says
    @cached_property
    def loss(self) -> float:
        """Population loss at the point (0 at the teacher)."""
        return 0.0 if self.deep.at_teacher else deep_linear_loss(self.deep)

    @cached_property
    def gradient(self) -> np.ndarray:
        """Population gradient ``(P,)`` at the point (zero at the teacher)."""
        return np.zeros(self.n_params) if self.deep.at_teacher else deep_linear_gradient(self.deep)

    def describe(self) -> dict[str, Any]:
        net, law = self.deep.point, self.deep.inputs
        extra: dict[str, Any] = {
            "curvature": self.kind, "device": str(self.device), "trained": "all", "model": "deep linear", "widths": list(net.widths),
            "depth": net.depth, "n_outputs": net.n_outputs, "teacher_widths": list(self.deep.teacher.widths), "at_teacher": self.deep.at_teacher,
            "loss": self.loss, "gradient_norm": float(np.linalg.norm(self.gradient)), "rank_conditions": rank_conditions(self.deep),
        }
        if not law.isotropic:
            extra["inputs"] = law.describe()
        if not self.deep.at_teacher:
            extra["residual_term"] = self.residual
        return {"activation": "linear", "n_inputs": net.n_inputs, "n_hidden": net.widths[1] if net.depth > 1 else net.n_outputs, "samples": None,
                "extra": extra}


@dataclass(frozen=True)
class DeepLinearRank:
    """The rank of the Hessian at a global minimum: measured (one :class:`~nearopt.policy.RankPolicy`
    on the singular values of the Gauss-Newton factor) against :func:`~nearopt.theory.rank_prediction.predict_deep_linear_rank`."""

    widths: tuple[int, ...]
    rank_sigma: int
    measured: int
    decision: RankDecision
    prediction: RankPrediction
    conditions: dict[str, Any]

    @property
    def agrees(self) -> bool:
        """Whether the measured rank is the predicted one."""
        return self.measured == self.prediction.rank

    def to_dict(self) -> dict[str, Any]:
        return {"widths": list(self.widths), "depth": len(self.widths) - 1, "n_outputs": self.widths[-1], "rank_sigma": self.rank_sigma,
                "n_params": self.prediction.n_params, "measured": self.measured, "predicted": self.prediction.rank, "agrees": self.agrees,
                "rank_decision": self.decision.to_dict(), "prediction": self.prediction.to_dict(), "rank_conditions": self.conditions}


def deep_linear_rank(problem: DeepLinearProblem | DeepLinearNet, policy: RankPolicy | None = None) -> DeepLinearRank:
    """Measured and predicted rank of the Hessian at the teacher (where it is the Gauss-Newton matrix).

    The measurement never uses the prediction: it is the policy's cut of the singular
    values of :func:`deep_linear_factor`.
    """
    problem = as_deep_problem(problem)
    if not problem.at_teacher:
        raise NearoptError("the rank formula q (r + K - q) is for the Hessian at a global minimum: give the teacher itself (no student)")
    policy = RankPolicy() if policy is None else policy
    F = deep_linear_factor(problem)
    s = np.linalg.svd(F, compute_uv=False)
    decision = policy.from_singular_values(s, problem.n_params, shape=(int(F.shape[0]), int(F.shape[1])))
    cond = rank_conditions(problem)
    widths = problem.point.widths
    return DeepLinearRank(widths, cond["rank_sigma"], decision.rank, decision, predict_deep_linear_rank(widths, cond["rank_sigma"]), cond)
