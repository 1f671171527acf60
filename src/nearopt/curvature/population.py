"""The exact population Hessian (``N -> infinity``) of any problem: :class:`PopulationHessian`.

``H = E_x[J J^T] + E_x[r grad^2 f]`` of the population loss
``L = 1/2 E (f_student - f_teacher)^2`` at the problem's point: at the teacher (a
global minimum) the residual ``r`` vanishes and ``H = E[J J^T]`` (``docs/theory.md``
§2); at any other student point the residual term enters (``docs/students.md``).
Every option of the :class:`~nearopt.model.problem.Problem` composes:

* the point: the teacher (:class:`~nearopt.curvature.product.PopulationProduct`,
  :func:`~nearopt.curvature.assembly.assemble`) or any student of any width
  (:class:`~nearopt.curvature.student.LandscapeProduct`,
  :func:`~nearopt.curvature.student.assemble_landscape`);
* inputs ``x ~ N(0, Sigma)``: the change of variables ``T H~ T`` of
  :class:`~nearopt.curvature.compose.Congruence` around the whitened problem;
* trained blocks: :class:`~nearopt.curvature.compose.Restricted`.

Every question goes through :func:`nearopt.spectra.solve`, which chooses among the
routes this operator offers: ``structured`` (every eigenvalue, never the ``P x P``
matrix: :mod:`nearopt.curvature.structured`), ``dense``, ``factor`` (linear networks:
the Jacobian ``J(x) = B x`` gives ``H = B Sigma B^T``) and the matrix-free ``lanczos``
and ``slq`` (with the preconditioner and ReLU's null vectors at the teacher).
"""

from __future__ import annotations

import dataclasses
from functools import cached_property
from typing import Any

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator

from ..errors import NearoptError
from ..gaussian.expectations import PairMoments
from ..gaussian.network_objective import NETWORK_EXPECTATIONS
from ..gaussian.objective import LandscapeMoments, landscape_moments, population_gradient, population_loss
from ..model.activations import ReLU
from ..model.deep_linear import DeepLinearNet, DeepLinearProblem
from ..model.network import TwoLayerNet
from ..model.problem import GaussianInputs, Problem, as_problem, whiten
from ..resources import require_memory
from ..spectra.spectrum import Spectrum
from ..spectra.torch_ops import TorchOperator
from ..theory.rank_prediction import predict_rank
from .assembly import assemble, is_linear, net_moments, rescaling_modes
from .base import Curvature
from .compose import Composed, compose, describe_point
from .costs import route_costs
from .deep_linear import formula_rank
from .network import NetworkHessian, network_structured_spectrum
from .product import PopulationProduct
from .structured import StructuredSpectrum, structured_spectrum
from .student import LandscapeProduct, assemble_landscape

__all__ = ["IsotropicPopulationHessian", "population_hessian", "POPULATION_METHODS", "population_spectrum", "PopulationHessian"]

#: the population routes by name (``auto`` chooses: :mod:`nearopt.spectra.solve`)
POPULATION_METHODS = ("auto", "dense", "structured", "factor", "lanczos", "slq")


class IsotropicPopulationHessian(Curvature):
    """``H~`` over all parameters of an isotropic problem: the base the wrappers compose around.

    Products by :class:`PopulationProduct` (teacher) or :class:`LandscapeProduct` (any
    other point); the dense matrix by :func:`assemble` / :func:`assemble_landscape`;
    for a linear network at the teacher the square root ``B^T`` ``(N_i, P)`` with
    ``J(x) = B x`` (``docs/theory.md`` §3.1).
    """

    kind = "population Hessian"

    def __init__(self, problem: Problem, moments: PairMoments | LandscapeMoments, *, residual: bool, device: torch.device):
        super().__init__(problem, device=device)
        self.moments, self.residual = moments, residual
        self.positive_semidefinite = problem.at_teacher or not residual

    @cached_property
    def product(self) -> PopulationProduct | LandscapeProduct:
        if isinstance(self.moments, LandscapeMoments):
            return LandscapeProduct(self.problem, self.moments, residual=self.residual, device=self.device)
        return PopulationProduct(self.problem.point, device=self.device, moments=self.moments)

    def torch_matmat(self, V: torch.Tensor) -> torch.Tensor:
        return self.product(V)

    def to_dense(self) -> np.ndarray:
        s, P = self.problem.point, self.n_params
        require_memory(8 * P * P, f"the dense {P} x {P} population Hessian", "the structured route, or a request for one end (k eigenvalues)")
        if isinstance(self.moments, LandscapeMoments):
            H = assemble_landscape(self.moments, s.W1, self.moments.Omega, s.W2.ravel(), self.residual)
            return 0.5 * (H + H.T)
        return assemble(self.moments, s.W1, s.W2.ravel())

    def has_factor(self) -> bool:
        return self.problem.at_teacher and is_linear(self.problem.activation)

    def factor(self) -> np.ndarray | None:
        if not self.has_factor():
            return None
        net = self.problem.point
        v = net.W2.ravel()
        return np.vstack([np.kron(v[:, None], np.eye(net.n_inputs)), net.W1]).T


class PopulationHessian(Composed):
    """The exact population Hessian ``(P, P)`` of the problem's loss at its point (module docstring).

    Parameters
    ----------
    problem : Problem or TwoLayerNet
        Teacher, student point (default: the teacher), input law ``N(0, Sigma)``, trained blocks.
    residual : bool
        Include the residual term off a global minimum (default). ``False`` gives the
        population Gauss-Newton matrix ``E[J J^T]`` at the point (PSD).
    device : str or torch.device
        Where the matrix-free products run.
    order : int, optional
        Quadrature order of an activation without closed-form moments (required for a
        custom activation with a kink, ``smooth=False``).
    """

    kind = "population Hessian"

    def __init__(self, problem: Problem | TwoLayerNet, *, residual: bool = True, device: str | torch.device = "cpu", order: int | None = None):
        super().__init__(problem, device=device)
        self.residual = bool(residual)
        self.order = order
        self.positive_semidefinite = self.problem.at_teacher or not self.residual
        if not self.problem.is_plain and not self.residual:
            raise NearoptError(f"the Gauss-Newton part alone (residual=False) covers the paper's networks only; this problem has "
                               f"{', '.join(self.problem.features())}: ask for the Hessian (the residual term included)")

    @property
    def general(self) -> bool:
        """Whether the problem leaves the paper's setting (biases, outputs, another teacher activation, bias blocks):
        then :class:`~nearopt.curvature.network.NetworkHessian` answers, by the dense and matrix-free routes."""
        return not self.problem.is_plain

    @property
    def net(self) -> TwoLayerNet:
        """The point (the student; the teacher by default)."""
        return self.problem.point

    @property
    def inputs(self) -> GaussianInputs:
        return self.problem.inputs

    @cached_property
    def moments(self) -> PairMoments | LandscapeMoments:
        """Pair moments for the Gram ``W1 Sigma W1^T`` (teacher) or ``Omega Sigma Omega^T`` (any point), once."""
        if self.problem.at_teacher:
            return net_moments(self.net, self.inputs, order=self.order)
        return landscape_moments(self.problem, residual=self.residual, order=self.order)

    @cached_property
    def operator(self) -> Curvature:  # type: ignore[override]
        """The product / dense / factor chain: the isotropic Hessian of the whitened problem, wrapped
        (any problem outside the paper's setting: :class:`~nearopt.curvature.network.NetworkHessian`)."""
        if self.general:
            return NetworkHessian(self.problem, order=self.order, device=self.device)
        white, L = whiten(self.problem.replace(trained="both"))
        moments = self.moments
        if isinstance(moments, LandscapeMoments) and not self.inputs.isotropic:
            moments = dataclasses.replace(moments, Omega=np.vstack([white.point.W1, white.teacher.W1]))
        base = IsotropicPopulationHessian(white, moments, residual=self.residual, device=self.device)
        return compose(base, self.problem, None if self.inputs.isotropic else L)

    def _network(self) -> NetworkHessian:
        op = self.operator
        assert isinstance(op, NetworkHessian)
        return op

    # ------------------------------------------------------------------ what only the population Hessian knows
    def offers(self, route: str) -> bool:
        if self.general and route == "factor":
            return False
        return super().offers(route)

    def structured(self) -> StructuredSpectrum:
        if self.general:
            return network_structured_spectrum(self.problem, order=self.order)
        return structured_spectrum(self.problem, self.moments, residual=self.residual)

    def structured_size(self) -> int:
        """``K (r' + 1)``: ``r'`` bounds the dimension of the reduced space (``Omega``'s rows under ``Sigma``)."""
        s = self.net
        if self.general:  # the padded reduced problem: rows of every unit, one coordinate more
            r = min(s.n_inputs, s.n_hidden + self.problem.teacher.n_hidden) + 1
            return min(s.n_hidden * (r + 1) + s.n_outputs * (s.n_hidden + 1), self.n_params)
        rows = s.n_hidden if self.problem.at_teacher else s.n_hidden + self.problem.teacher.n_hidden
        if self.problem.trained == "second":
            return s.n_hidden
        if self.inputs.isotropic:
            r = min(rows, s.n_inputs)
        else:
            r = min(s.n_inputs, sum(min(rows, e.multiplicity) for e in self.inputs.eigenspaces()))
        return min(s.n_hidden * (r + 1), self.n_params)

    def preconditioner(self, shift: float = 0.0) -> LinearOperator | None:
        """``(B_2 + A A^T + shift)^{-1}`` from the block structure (``docs/scale.md``), for the smallest end.

        At the teacher, with isotropic inputs and both layers trained (``None`` otherwise:
        LOBPCG then runs unpreconditioned).
        """
        if self.general or not (self.problem.at_teacher and self.inputs.isotropic and self.problem.trained == "both"):
            return None
        base = self.operator  # isotropic, both layers: the unwrapped base, whose product owns the preconditioner
        assert isinstance(base, IsotropicPopulationHessian) and isinstance(base.product, PopulationProduct)
        product = base.product
        return TorchOperator(lambda R: product.precondition(R, shift), self.n_params, self.device)

    def null_vectors(self) -> np.ndarray | None:
        """ReLU at the teacher with both layers trained: the exact zero modes of positive rescaling (any input law)."""
        if not self.general and isinstance(self.net.activation, ReLU) and self.problem.at_teacher and self.problem.trained == "both":
            return rescaling_modes(self.net)
        return None

    def known_rank(self) -> tuple[int, str] | None:
        """``predict_rank`` at the teacher with both layers trained, when it is exact or observed.

        An observed full rank counts: erf's and tanh's genuine eigenvalues reach ``1e-12 lambda_max``,
        below what a threshold on computed eigenvalues can tell from zero. Under ``x ~ N(0, Sigma)``
        with ``Sigma`` of full rank the Hessian is ``T H~ T`` with ``T`` invertible (the whitened
        problem's Hessian ``H~``, teacher ``W1 Sigma^(1/2)``), so its rank is the prediction's too.
        """
        pr = self.problem
        if self.general:
            return self._linear_outputs_rank()
        if not (pr.at_teacher and pr.trained == "both" and pr.inputs.rank == pr.n_inputs):
            return None
        net = self.net
        try:
            pred = predict_rank(net.activation, net.n_inputs, net.n_hidden)
        except NearoptError:  # an activation the prediction does not cover
            return None
        if pred.kind not in ("exact", "observed"):
            return None
        return pred.rank, f"predict_rank, {pred.kind}: {pred.basis}"

    def _linear_outputs_rank(self) -> tuple[int, str] | None:
        """A linear network with ``M`` outputs and no biases is the deep linear network ``W2 W1`` of depth 2:
        ``q (r + M - q)`` at the teacher where the formula's conditions hold (:func:`~nearopt.curvature.deep_linear.formula_rank`)."""
        pr, net = self.problem, self.net
        if not (pr.at_teacher and pr.trained == "both" and is_linear(net.activation) and net.b1 is None and net.b2 is None):
            return None
        return formula_rank(DeepLinearProblem(DeepLinearNet((net.W1, net.W2)), inputs=pr.inputs))

    def route_costs(self, k: int, which: str) -> dict[str, float]:
        s = self.net
        flops = float(s.n_hidden) ** 2 * s.n_inputs * (1 if self.problem.at_teacher else 3)
        if not self.inputs.isotropic:
            flops += float(s.n_hidden) * s.n_inputs**2  # the change of variables T on each side
        return route_costs(self.structured_size(), flops, k, which, self.device)

    @cached_property
    def loss(self) -> float:
        """Population loss ``1/2 E (f_student - f_teacher)^2`` at the point (0 at the teacher)."""
        if self.problem.at_teacher:
            return 0.0
        if self.general:
            return self._network().objective.loss
        return population_loss(self.problem, self.moments)  # type: ignore[arg-type]

    @cached_property
    def gradient(self) -> np.ndarray:
        """Population gradient over the trained parameters ``(P,)`` (zero at the teacher)."""
        if self.problem.at_teacher:
            return np.zeros(self.n_params)
        if self.general:
            return self._network().objective.gradient()
        return population_gradient(self.problem, self.moments)  # type: ignore[arg-type]

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        x = d["extra"]
        x.update(describe_point(self.problem))
        if self.general:
            net = self._network()
            computed = "objective" in net.__dict__ and "point" in net.objective.__dict__
            # at the teacher nothing else needs the full problem's moments: the structured route integrates its own
            if computed or not self.problem.at_teacher:
                x.update(net.objective.describe())
            else:
                x["expectations"] = NETWORK_EXPECTATIONS
            x["features"] = self.problem.features()
        else:
            x["expectations"] = self.moments.method
        x.update(loss=self.loss, gradient_norm=float(np.linalg.norm(self.gradient)))
        if not self.problem.at_teacher:
            x["residual_term"] = self.residual
        return d


def population_hessian(net: TwoLayerNet | Problem, inputs: GaussianInputs | None = None, *, order: int | None = None) -> np.ndarray:
    """The dense population Hessian ``(P, P)`` float64 of a network at the optimum (or of a problem's point).

    ``inputs`` replaces the problem's input law (default ``N(0, I)``). Memory ``8 P^2``
    bytes; :func:`population_spectrum` reaches large ``P`` without it.
    """
    problem = as_problem(net) if inputs is None else as_problem(net).replace(inputs=inputs)
    return PopulationHessian(problem, order=order).to_dense()


def population_spectrum(net: TwoLayerNet | Problem, method: str = "auto", rtol: float | None = None, *, which: str | None = None, k: int | None = None,
                        vectors: bool = False, device: str | torch.device = "cpu", inputs: GaussianInputs | None = None,
                        order: int | None = None, **options: Any) -> Spectrum:
    """Eigenvalues of the population Hessian: ``PopulationHessian(problem).spectrum(...)`` (one answer path).

    Parameters
    ----------
    net : TwoLayerNet or Problem
    method : {"auto", "dense", "structured", "factor", "lanczos", "slq"}
    rtol : float, optional
        Relative tolerance of the rank decision on ``sqrt(|lambda|)``.
    which, k, vectors, options :
        The :class:`~nearopt.spectra.request.SpectrumRequest` (every eigenvalue by default).
    inputs : GaussianInputs, optional
        Replaces the problem's input law.
    """
    if method not in POPULATION_METHODS:
        raise NearoptError(f"unknown population method {method!r}; choose from {', '.join(POPULATION_METHODS)}")
    problem = as_problem(net) if inputs is None else as_problem(net).replace(inputs=inputs)
    curv = PopulationHessian(problem, device=device, order=order)
    return curv.spectrum(method, which=which, k=k, vectors=vectors, rtol=rtol, **options)
