"""The exact population Hessian of any two-layer problem: biases, several outputs, a teacher of another activation.

:class:`NetworkHessian` takes its products and its matrix from
:class:`~nearopt.gaussian.network_objective.NetworkObjective` (the kernel moments by Price's
theorem, differentiated by ``torch.func``), over the problem's trained blocks and under its input
covariance directly: no wrapper is needed. :class:`~nearopt.curvature.population.PopulationHessian`
uses it for every problem outside the paper's setting (:attr:`~nearopt.model.problem.Problem.is_plain`).

The structured route (:func:`network_structured_spectrum`) is the reduction of
:mod:`nearopt.curvature.structured` applied to the same objective. The loss depends on ``W1`` only
through the Gram ``Omega Sigma Omega^T`` of all units (and the biases, output weights), so with
``R`` the ``Sigma``-invariant span of the rows (:func:`~nearopt.curvature.structured.reduction`):

* a direction ``c (x) u`` (``c`` over the student's units, ``u`` in an eigenspace ``E_j`` of
  ``Sigma`` orthogonal to ``R``) changes the Gram only at second order, by ``lambda_j c c^T``;
  it is decoupled from every other direction and ``H`` acts on it as ``lambda_j D`` with
  ``D = 2 sym(dL/dG)`` over the student's units;
* the rest is the Hessian of the reduced problem, rows ``Omega Q``, covariance ``Q^T Sigma Q``.

Both come from one reduced problem of dimension ``r' + 1``: the rows ``Omega Q`` padded by one
coordinate ``e`` orthogonal to all of them with variance 1 (covariance ``Q^T Sigma Q (+) 1``),
whose Hessian holds the reduced block (the entries off ``e``) and ``D`` (the ``K`` entries on
``e``). Hence ``spec(H) = spec(H_reduced) ∪_j lambda_j spec(D) × (m_j - r_j)``: every eigenvalue
at the cost of a problem of ``K (r' + 2) + M (K + 1)`` parameters, whatever ``N_i``.
"""

from __future__ import annotations

from functools import cached_property

import numpy as np
import scipy.linalg
import torch

from ..gaussian.network_objective import NetworkObjective
from ..model.network import TwoLayerNet
from ..model.problem import GaussianInputs, Problem
from ..policy import DEFAULT_POLICY, RankPolicy
from ..resources import require_memory
from .base import Curvature
from .structured import StructuredSpectrum, merge_blocks, reduction

__all__ = ["network_structured_spectrum", "NetworkHessian"]


class NetworkHessian(Curvature):
    """``H`` ``(P, P)`` of ``L = 1/2 E|f_s - f_t|^2`` over the trained parameters of any problem (module docstring)."""

    kind = "population Hessian"

    def __init__(self, problem: Problem, *, order: int | None = None, device: str | torch.device = "cpu"):
        super().__init__(problem, device=device)
        self.order = order
        self.positive_semidefinite = self.problem.at_teacher

    @cached_property
    def objective(self) -> NetworkObjective:
        return NetworkObjective(self.problem, order=self.order)

    def torch_matmat(self, V: torch.Tensor) -> torch.Tensor:
        return self.objective.hvp(V.cpu()).to(V.device)

    def to_dense(self) -> np.ndarray:
        P = self.n_params
        require_memory(8 * P * P, f"the dense {P} x {P} population Hessian", "a request for one end (k eigenvalues)")
        return self.objective.hessian()


def _padded(problem: Problem, Q: np.ndarray, pad: bool) -> Problem:
    """The problem on rows ``W1 Q`` (``+ 0`` on one padding coordinate ``e`` when ``pad``), covariance ``Q^T Sigma Q (+) 1``."""
    r = Q.shape[1]
    C = Q.T @ problem.inputs.matmul(Q.T).T
    n = r + int(pad)
    cov = np.eye(n)
    cov[:r, :r] = 0.5 * (C + C.T)

    def reduce(net: TwoLayerNet) -> TwoLayerNet:
        W = np.zeros((net.n_hidden, n))
        W[:, :r] = net.W1 @ Q
        return TwoLayerNet(W, net.W2, net.activation, net.b1, net.b2)

    teacher = reduce(problem.teacher)
    student = teacher if problem.point is problem.teacher else reduce(problem.point)
    law = GaussianInputs(n) if problem.inputs.isotropic else GaussianInputs(covariance=cov)
    return Problem(teacher, student, law, problem.trained)


def network_structured_spectrum(problem: Problem, *, order: int | None = None, policy: RankPolicy = DEFAULT_POLICY) -> StructuredSpectrum:
    """Every eigenvalue of the population Hessian of any two-layer problem as blocks with multiplicities (module docstring)."""
    s, t = problem.point, problem.teacher
    Omega = np.vstack([s.W1, t.W1])
    Q, rest = reduction(Omega, problem.inputs, policy)
    rest = [(lam, m) for lam, m in rest if m > 0]
    r, K = Q.shape[1], s.n_hidden
    first = "W1" in problem.trained_blocks
    pad = bool(rest) and first
    reduced_problem = _padded(problem, Q, pad)
    objective = NetworkObjective(reduced_problem, order=order)
    H = objective.hessian()
    e_idx = np.zeros(0, dtype=np.int64)
    if pad:  # the W1 entries on the padding coordinate: row a's last column, in the trained order
        start = list(reduced_problem.trained_indices).index(0)
        e_idx = start + np.arange(K) * (r + 1) + r
    keep = np.setdiff1d(np.arange(H.shape[0]), e_idx)
    reduced = scipy.linalg.eigvalsh(H[np.ix_(keep, keep)]) if keep.size else np.zeros(0)
    D = scipy.linalg.eigvalsh(H[np.ix_(e_idx, e_idx)]) if pad else np.zeros(0)
    values, counts = merge_blocks([(reduced, 1)] + [(lam * D, m) for lam, m in rest] if pad else [(reduced, 1)])
    mult = sum(m for _, m in rest) if pad else 0
    scales = tuple((float(lam), int(m)) for lam, m in rest) if pad and not problem.inputs.isotropic else ()
    extra = {"reduced_rank": r, "complement_multiplicity": mult, "reduced_size": int(H.shape[0]), **objective.describe()}
    return StructuredSpectrum(values, counts, reduced, D, r, mult, scales, extra)
