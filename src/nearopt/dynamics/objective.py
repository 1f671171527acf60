"""The loss a student is trained on near the optimum, and its Hessian there.

An :class:`Objective` is ``L(theta)`` for a student of the teacher's architecture:

* ``batch``: ``L = 1/(2N) sum_n (f_theta(x_n) - f_theta*(x_n))**2`` on fixed inputs ``X``;
* ``closed-form``: the population loss (``N -> infinity``) in closed form, for i.i.d. zero-mean
  unit-variance inputs (``linear``: ``1/2 ||W2 W1 - W2* W1*||**2``; ``quadratic``:
  ``1/2 (tr(D)**2 + 2 tr(D**2) + kappa sum_i D_ii**2)`` with ``D = A - A*``,
  ``A = W1^T diag(W2) W1`` and ``kappa`` the excess kurtosis of the inputs, 0 for
  Gaussian). Both forms take the difference to the teacher *before* squaring, so
  the loss has no cancellation floor above ``eps**2``.
* ``large-sample``: any other activation in the population limit, approximated
  by a fixed large Gaussian sample (``population_samples`` inputs, seeded);
* ``exact`` (:class:`~nearopt.dynamics.exact_objective.ExactPopulationObjective`): the
  exact population loss from the pair moments, at any point and for any teacher.

"Population" always means ``N -> infinity``; the kind says how that limit is computed.

Every loss accepts a stack of parameter vectors ``(..., P)`` and returns ``(...)``,
so several initial perturbations are trained together.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import torch
from torch import func

from ..curvature.base import Curvature
from ..curvature.batch import BatchGaussNewton
from ..errors import NearoptError
from ..model.network import TwoLayerNet, require_plain, sample_inputs
from ..spectra.spectrum import Spectrum

__all__ = ["ClosedFormHessian", "forward_batched", "make_objective", "Objective", "POPULATION_CLOSED_FORMS", "POPULATION_SAMPLES", "split_parameters"]

#: activations whose population loss has an exact closed form here
POPULATION_CLOSED_FORMS = ("linear", "quadratic")
#: default size of the fixed sample standing in for the population otherwise
POPULATION_SAMPLES = 100_000


def split_parameters(theta: torch.Tensor, n_hidden: int, n_inputs: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W1, v)`` of shapes ``(..., N_h, N_i)`` and ``(..., N_h)`` from ``theta`` ``(..., P)``."""
    n1 = n_hidden * n_inputs
    return theta[..., :n1].reshape(*theta.shape[:-1], n_hidden, n_inputs), theta[..., n1:]


def forward_batched(theta: torch.Tensor, X: torch.Tensor, net: TwoLayerNet) -> torch.Tensor:
    """Outputs ``(..., N)`` for parameter stacks ``theta`` ``(..., P)`` and inputs ``X`` ``(N, N_i)``."""
    W1, v = split_parameters(theta, net.n_hidden, net.n_inputs)
    Z = X @ W1.transpose(-1, -2)  # (..., N, N_h)
    return (net.activation(Z) @ v.unsqueeze(-1)).squeeze(-1)


@dataclass(frozen=True, eq=False)
class Objective:
    """``L(theta)`` of a student around the optimum ``point`` (see the module docstring).

    Attributes
    ----------
    point : TwoLayerNet
        The optimum ``theta*``, which is also the teacher that labels the inputs (the
        student = teacher global minimum; :class:`~nearopt.dynamics.exact_objective.ExactPopulationObjective`
        takes another teacher).
    kind : str
        ``"batch"``, ``"closed-form"`` or ``"large-sample"`` (``"exact"`` for the exact objective).
    X : Tensor, shape (N, N_i), or None
        The inputs (``None`` for the closed-form population loss).
    kurtosis : float
        Excess kurtosis of the inputs used by the quadratic closed form.
    """

    point: TwoLayerNet
    kind: str
    X: torch.Tensor | None = None
    kurtosis: float = 0.0
    #: teacher outputs on ``X`` (set in ``__post_init__``)
    _y: Any = field(init=False, default=None, repr=False)

    def __post_init__(self):
        # teacher outputs on the batch, computed once: every loss call needs them
        y = None if self.X is None else forward_batched(self.theta_star, self.X, self.point)
        object.__setattr__(self, "_y", y)

    @property
    def theta_star(self) -> torch.Tensor:
        """``theta*`` of shape ``(P,)`` (float64)."""
        return torch.as_tensor(self.point.parameters())

    @property
    def n_params(self) -> int:
        return self.point.n_params

    @property
    def samples(self) -> int | None:
        """``N`` of the batch (``None`` for the closed-form population loss)."""
        return None if self.X is None else int(self.X.shape[0])

    def loss(self, theta: torch.Tensor) -> torch.Tensor:
        """``L`` at parameters ``theta`` ``(..., P)``; returns ``(...)``."""
        net = self.point
        if self.X is not None:
            r = forward_batched(theta, self.X, net) - self._y
            return 0.5 * (r**2).mean(-1)
        W1, v = split_parameters(theta, net.n_hidden, net.n_inputs)
        W1s, vs = split_parameters(self.theta_star, net.n_hidden, net.n_inputs)
        if net.activation.name == "linear":
            d = (v.unsqueeze(-2) @ W1).squeeze(-2) - vs @ W1s  # (..., N_i)
            return 0.5 * (d**2).sum(-1)
        # quadratic: f(x) = x^T A x with A = W1^T diag(v) W1
        D = W1.transpose(-1, -2) @ (v.unsqueeze(-1) * W1) - W1s.T @ (vs[:, None] * W1s)
        tr = D.diagonal(dim1=-2, dim2=-1)
        return 0.5 * (tr.sum(-1) ** 2 + 2.0 * (D**2).sum((-2, -1)) + self.kurtosis * (tr**2).sum(-1))

    def loss_at(self, delta: torch.Tensor) -> torch.Tensor:
        """``L(theta* + delta)`` for displacements ``delta`` ``(..., P)``."""
        return self.loss(self.theta_star + delta)

    def gradient(self, theta: torch.Tensor) -> torch.Tensor:
        """``grad L(theta)``, shape ``(..., P)`` (one gradient per stacked ``theta``).

        Batch losses use the explicit ``J^T r / N`` (``dL/dv_a = <r g(z_a)>``,
        ``dL/dw_a = <r v_a g'(z_a) x>``), several times faster than autograd;
        closed forms use autograd.
        """
        if self.X is None:
            with torch.enable_grad():
                th = theta.detach().requires_grad_(True)
                (g,) = torch.autograd.grad(self.loss(th).sum(), th)
            return g
        net, X = self.point, self.X
        W1, v = split_parameters(theta, net.n_hidden, net.n_inputs)
        Z = X @ W1.transpose(-1, -2)  # (..., N, N_h)
        G = net.activation(Z)
        r = (G @ v.unsqueeze(-1)).squeeze(-1) - self._y  # (..., N)
        N = X.shape[0]
        gv = (r.unsqueeze(-2) @ G).squeeze(-2) / N  # (..., N_h)
        gW = (r.unsqueeze(-1) * net.activation.derivative(Z) * v.unsqueeze(-2)).transpose(-1, -2) @ X / N  # (..., N_h, N_i)
        return torch.cat([gW.flatten(-2), gv], dim=-1)

    def gradient_at(self, delta: torch.Tensor) -> torch.Tensor:
        """``grad L(theta* + delta)``, shape ``(..., P)``."""
        return self.gradient(self.theta_star + delta)

    def hessian_at(self, delta: torch.Tensor) -> torch.Tensor:
        """Exact ``grad^2 L(theta* + delta)`` for one ``delta`` ``(P,)``; returns ``(P, P)``.

        Forward-mode Jacobian of :meth:`gradient` (batch) or ``torch.func.hessian``
        of the closed form.
        """
        if self.X is None:
            return func.hessian(self.loss_at)(delta.detach())
        H = func.jacfwd(self.gradient_at)(delta.detach())
        return 0.5 * (H + H.T)

    def eigensystem(self) -> tuple[Spectrum, np.ndarray]:
        """Eigen-decomposition of the Hessian at ``theta*``: :meth:`Curvature.eigh` of :meth:`curvature`.

        Returns ``(spec, U)``: ``spec.eigenvalues`` ascending ``(P,)`` with a rank
        decision, and ``U`` ``(P, P)`` whose columns are the matching eigenvectors.
        For a batch the eigenvectors diagonalise ``J^T J / N`` (the exact Hessian at
        the optimum) and the rank comes from the singular values of ``J``.
        """
        spec, U = self.curvature().eigh()
        if self.X is None:
            spec = spec.replace(eigenvalues=np.clip(spec.eigenvalues, 0.0, None), extra={**spec.extra, "input_excess_kurtosis": self.kurtosis})
        return spec, U

    def curvature(self) -> Curvature:
        """The Hessian at ``theta*`` as a curvature operator: Gauss–Newton on the batch, autodiff of a closed form."""
        if self.X is not None:
            return BatchGaussNewton(self.point, self.X.numpy())
        return ClosedFormHessian(self)


class ClosedFormHessian(Curvature):
    """Hessian of a closed-form population loss at ``theta*``, by ``torch.func.hessian`` (``(P, P)``, dense).

    No square root is formed, so its rank follows the eigenvalue rule
    (:func:`~nearopt.policy.rank_from_eigenvalues`).
    """

    kind = "closed-form-hessian"

    def __init__(self, objective: Objective):
        super().__init__(objective.point)
        self.objective = objective

    @cached_property
    def _dense(self) -> np.ndarray:
        # one torch.func.hessian per operator: products reuse it instead of differentiating again
        H = self.objective.hessian_at(torch.zeros(self.n_params, dtype=torch.float64)).numpy()
        return 0.5 * (H + H.T)

    def to_dense(self) -> np.ndarray:
        return self._dense.copy()

    def torch_matmat(self, V: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(self._dense, device=V.device) @ V


def make_objective(
    net: TwoLayerNet,
    X=None,
    *,
    population_samples: int = POPULATION_SAMPLES,
    seed: int = 0,
    kurtosis: float = 0.0,
) -> Objective:
    """The loss around ``net`` on inputs ``X`` ``(N, N_i)``, or the population loss if ``X is None``.

    ``kurtosis`` (excess kurtosis of i.i.d. unit-variance inputs) only enters the
    quadratic closed form; any other non-Gaussian population needs a batch ``X``.
    """
    require_plain(net, "the dynamics near the optimum (gradient descent and flow)")
    if X is not None:
        Xt = torch.as_tensor(np.asarray(X, dtype=np.float64))
        if Xt.ndim != 2 or Xt.shape[1] != net.n_inputs or Xt.shape[0] < 1:
            raise NearoptError(f"inputs must have shape (N, {net.n_inputs}) with N >= 1, got {tuple(Xt.shape)}")
        return Objective(net, "batch", Xt)
    if net.activation.name in POPULATION_CLOSED_FORMS:
        if kurtosis and net.activation.name != "quadratic":
            raise NearoptError("input kurtosis only enters the quadratic population loss")
        return Objective(net, "closed-form", None, float(kurtosis))
    if kurtosis:
        raise NearoptError(f"no closed-form population loss for {net.activation.name} with non-Gaussian inputs; use a batch")
    Xp = sample_inputs(population_samples, net.n_inputs, seed=seed)
    return Objective(net, "large-sample", torch.as_tensor(Xp))
