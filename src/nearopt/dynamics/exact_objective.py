"""Training on the *exact* population loss, from any start, for students of any width.

:class:`ExactPopulationObjective` is an :class:`~nearopt.dynamics.objective.Objective`
whose loss, gradient and Hessian are the exact population quantities of
:mod:`nearopt.gaussian.objective` (pair moments: closed forms, checked quadrature
otherwise), not a quadratic approximation and not a fixed sample. Its reference
point ``theta*`` (the ``point`` field, as in every Objective) is the point the
spectral prediction expands around -- the teacher itself, or any point of the
global-minimum manifold of a wider student (:mod:`nearopt.landscape.manifold`); the labels
come from ``teacher`` (width ``M``). So::

    obj = ExactPopulationObjective(point, "exact", teacher=teacher)
    res = run_dynamics(point, objective=obj, sigma0=1e-2, flow=True)

trains ``K``-unit students on the true population loss from ``point + delta_0`` and
compares with the quadratic (spectral) prediction at ``point``.

Rounding: the loss is ``1/2 beta^T Phi beta``, a sum of ``O(E[f^2])`` pair terms, so it
is exact only down to an absolute ``~ (K + M) eps E[f_t^2]`` (:attr:`loss_floor`),
not ``eps^2`` as the closed forms that subtract before squaring.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..curvature.base import Curvature
from ..curvature.population import PopulationHessian
from ..errors import NearoptError
from ..gaussian.expectations import output_power
from ..gaussian.objective import landscape_moments, population_gradient, population_loss
from ..model.network import TwoLayerNet
from ..model.problem import Problem
from ..tolerances import EPS
from .objective import Objective

__all__ = ["exact_population_objective", "ExactPopulationObjective"]


@dataclass(frozen=True, eq=False)
class ExactPopulationObjective(Objective):
    """Exact population loss of a student shaped like ``point`` (the reference point) against ``teacher``.

    ``point`` ``(K units)``: the reference point ``theta*``; ``teacher`` ``(M units)``:
    the network that labels (defaults to ``point``). ``kind`` is ``"exact"``.
    Accepts stacks ``(..., P)`` like every Objective (one exact evaluation per point).
    """

    teacher: TwoLayerNet | None = None
    #: ``E[f_teacher(x)^2]`` (set in ``__post_init__``): scales the loss's rounding floor
    _power: float = field(init=False, default=0.0, repr=False)

    def __post_init__(self):
        if self.X is not None:
            raise NearoptError("the exact population objective takes no inputs X")
        teacher = self.point if self.teacher is None else self.teacher
        if teacher.n_inputs != self.point.n_inputs or teacher.activation != self.point.activation:
            raise NearoptError("the teacher must have the reference point's N_i and activation")
        object.__setattr__(self, "teacher", teacher)
        object.__setattr__(self, "_y", None)
        object.__setattr__(self, "_power", output_power(teacher))

    def _problem(self, theta: np.ndarray) -> Problem:
        assert self.teacher is not None
        return Problem(self.teacher, student=self.point.with_parameters(theta))

    def _each(self, theta: torch.Tensor, fn) -> torch.Tensor:
        th = theta.detach().cpu().numpy().astype(np.float64)
        flat = th.reshape(-1, th.shape[-1])
        out = np.stack([np.asarray(fn(self._problem(t))) for t in flat])
        return torch.as_tensor(out.reshape(th.shape[:-1] + out.shape[1:]), dtype=torch.float64)

    def loss(self, theta: torch.Tensor) -> torch.Tensor:
        """Exact population loss at ``theta`` ``(..., P)``; returns ``(...)``."""
        return self._each(theta, lambda pr: population_loss(pr, landscape_moments(pr, residual=False)))

    def gradient(self, theta: torch.Tensor) -> torch.Tensor:
        """Exact population gradient ``(..., P)``."""
        return self._each(theta, lambda pr: population_gradient(pr, landscape_moments(pr, residual=False)))

    def hessian_at(self, delta: torch.Tensor) -> torch.Tensor:
        """Exact population Hessian ``(P, P)`` at ``theta* + delta`` (residual term included)."""
        theta = (self.theta_star + delta.detach()).numpy()
        return torch.as_tensor(PopulationHessian(self._problem(theta)).to_dense())

    def curvature(self) -> Curvature:
        """The exact population Hessian at the reference point."""
        return PopulationHessian(self._problem(self.point.parameters()))

    @property
    def loss_floor(self) -> float:
        """Absolute rounding level of the loss: ``(K + M) eps E[f_teacher^2]``."""
        assert self.teacher is not None
        return (self.point.n_hidden + self.teacher.n_hidden) * EPS * self._power


def exact_population_objective(point: TwoLayerNet, teacher: TwoLayerNet | None = None) -> ExactPopulationObjective:
    """The exact population objective around ``point`` (labels from ``teacher``, default ``point``)."""
    return ExactPopulationObjective(point, "exact", None, 0.0, teacher)
