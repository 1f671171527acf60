"""The exact population Hessian of any two-layer problem: biases, several outputs, a teacher of another activation.

:class:`NetworkHessian` takes its products and its matrix from
:class:`~nearopt.gaussian.network_objective.NetworkObjective` (the kernel moments by Price's
theorem, differentiated by ``torch.func``), over the problem's trained blocks and under its input
covariance directly: no wrapper is needed. :class:`~nearopt.curvature.population.PopulationHessian`
uses it for every problem outside the paper's setting (:attr:`~nearopt.model.problem.Problem.is_plain`).
"""

from __future__ import annotations

from functools import cached_property

import numpy as np
import torch

from ..gaussian.network_objective import NetworkObjective
from ..model.problem import Problem
from ..resources import require_memory
from .base import Curvature

__all__ = ["NetworkHessian"]


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
