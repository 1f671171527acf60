"""Gradient descent of a deep linear network near a global minimum, against the quadratic prediction.

:func:`deep_linear_gd` runs ``delta <- delta - lr grad L(theta* + delta)`` on the exact
population loss ``L = 1/2 tr((A - T) Sigma (A - T)^T)`` (closed-form gradient,
:func:`~nearopt.curvature.deep_linear.deep_linear_gradient`) from ``delta_0 ~ N(0, sigma0^2 I)``,
and predicts the loss from the eigen-decomposition ``H = U diag(lambda) U^T`` of the exact
Hessian at ``theta*``: ``L_t = 1/2 sum_k lambda_k (1 - lr lambda_k)^(2t) c_k^2``, ``c = U^T delta_0``
(:func:`~nearopt.dynamics.predict.predict_draw_loss`). The prediction is the first term of an
expansion in ``sigma0``: the measured loss approaches it as ``sigma0 -> 0``.

The state is the displacement ``delta`` itself, so rounding of ``theta*`` does not
accumulate, and the loss takes ``A - T`` before squaring (no cancellation floor above ``eps^2``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..curvature.deep_linear import DeepLinearHessian, deep_linear_gradient, deep_linear_loss
from ..errors import NearoptError, require_nonneg_finite, require_positive_finite, require_positive_int
from ..model.deep_linear import DeepLinearNet, DeepLinearProblem
from ..model.problem import GaussianInputs
from .predict import check_step_size, predict_draw_loss

__all__ = ["DeepLinearGD", "deep_linear_gd", "MINIMUM_RTOL"]

#: ``theta*`` must have a loss below this times ``1/2 tr(T Sigma T^T)`` (a global minimum to rounding)
MINIMUM_RTOL = 1e-20


@dataclass(frozen=True)
class DeepLinearGD:
    """What :func:`deep_linear_gd` measured and predicted at steps ``0`` to ``steps``.

    ``loss``, ``predicted`` ``(T,)``; ``eigenvalues`` ``(P,)`` of the Hessian at ``theta*``
    (ascending, rounding negatives set to 0); ``delta0`` ``(P,)`` the start's displacement.
    """

    steps: np.ndarray
    loss: np.ndarray
    predicted: np.ndarray
    eigenvalues: np.ndarray
    delta0: np.ndarray
    lr: float
    sigma0: float

    def relative_error(self, floor: float = 0.0) -> float:
        """Largest ``|loss - predicted| / predicted`` over the steps whose prediction exceeds ``floor``."""
        keep = self.predicted > floor
        if not keep.any():
            return float("nan")
        return float(np.max(np.abs(self.loss[keep] - self.predicted[keep]) / self.predicted[keep]))

    def to_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "loss": self.loss, "predicted": self.predicted, "eigenvalues": self.eigenvalues, "lr": self.lr,
                "sigma0": self.sigma0, "relative_error": self.relative_error()}


def _check_minimum(problem: DeepLinearProblem) -> None:
    """Refuse a ``theta*`` that is not a global minimum (the quadratic prediction expands around one)."""
    T = problem.target
    power = 0.5 * float(np.sum(problem.inputs.matmul(T) * T))
    loss = deep_linear_loss(problem)
    if loss > MINIMUM_RTOL * max(power, np.finfo(float).tiny):
        raise NearoptError(f"the network is not a global minimum of the loss against this teacher (loss {loss:.3g}, "
                           f"{loss / power if power else float('inf'):.3g} of 1/2 tr(T Sigma T^T)): the quadratic prediction expands around one")


def deep_linear_gd(net: DeepLinearNet, teacher: DeepLinearNet | None = None, inputs: GaussianInputs | None = None, lr: float | None = None,
                   steps: int = 1000, delta_seed: int = 0, sigma0: float = 1e-3) -> DeepLinearGD:
    """Gradient descent from ``net + delta_0`` on the exact population loss, with the linearised prediction.

    Parameters
    ----------
    net : DeepLinearNet
        ``theta*``: a global minimum (the teacher itself, or any net with its end-to-end map).
    teacher : DeepLinearNet, optional
        The labels (default: ``net``).
    inputs : GaussianInputs, optional
        ``x ~ N(0, Sigma)`` (default ``N(0, I)``).
    lr : float, optional
        Step size, ``0 < lr < 2 / lambda_max`` (default ``1 / lambda_max``).
    steps : int
        Number of steps (the loss is recorded after each, and at the start).
    delta_seed, sigma0 :
        ``delta_0 ~ N(0, sigma0^2 I_P)`` drawn with this seed.
    """
    law = GaussianInputs(net.n_inputs) if inputs is None else inputs
    problem = DeepLinearProblem(net if teacher is None else teacher, student=net, inputs=law)
    steps = require_positive_int(steps, "steps")
    sigma0 = require_nonneg_finite(sigma0, "sigma0")
    _check_minimum(problem)
    spec, U = DeepLinearHessian(problem).eigh()
    lam = np.clip(spec.eigenvalues, 0.0, None)
    lr = 1.0 / float(lam[-1]) if lr is None else require_positive_finite(lr, "learning rate")
    check_step_size(lr, float(lam[-1]))
    if isinstance(delta_seed, bool) or int(delta_seed) != delta_seed or delta_seed < 0:
        raise NearoptError(f"delta_seed must be a non-negative integer, got {delta_seed!r}")
    delta0 = np.random.default_rng([int(delta_seed), 0xDD]).standard_normal(net.n_params) * sigma0
    theta_star, delta = net.parameters(), delta0.copy()
    loss = np.empty(steps + 1)
    for t in range(steps + 1):
        point = net.with_parameters(theta_star + delta)
        loss[t] = deep_linear_loss(DeepLinearProblem(problem.teacher, point, problem.inputs))
        if not np.isfinite(loss[t]):
            raise NearoptError(f"gradient descent diverged at step {t} (lr = {lr:.6g}); take a smaller lr or sigma0")
        if t < steps:
            delta = delta - lr * deep_linear_gradient(problem, point)
    times = np.arange(steps + 1, dtype=np.float64)
    predicted = predict_draw_loss(lam, (U.T @ delta0)[None, :], lr, times)[0]
    return DeepLinearGD(times, loss, predicted, lam, delta0, lr, sigma0)
