"""The exact population loss, gradient and Hessian at *any* student point.

A student of width ``K`` (``W1`` rows ``w_a``, outgoing weights ``v_a``) learns a
teacher of width ``M`` (rows ``t_m``, outgoing ``u_m``), same ``N_i`` and activation,
inputs ``x ~ N(0, I)``. Stack every unit in ``Omega = [W1_s; W1_t]`` ``(K + M, N_i)``
(rows ``omega_j``) with signed outgoing weights ``beta = [v; -u]`` ``(K + M,)``, so
that the residual is ``r(x) = f_s(x) - f_t(x) = sum_j beta_j g(omega_j . x)``. Then
(``docs/students.md`` §1)::

    L            = 1/2 beta^T Phi beta,          Phi[i, j] = E[g(omega_i.x) g(omega_j.x)]
    dL/dv_a      = sum_j beta_j Phi[a, j]
    dL/dw_a      = v_a rho_a,                    rho_a = E[r g'(w_a.x) x] = s0_a w_a + sum_j beta_j b1[a,j] omega_j
    H            = G + R                         (Gauss-Newton + residual term)
    G            = E[J J^T]                      (``population.assemble`` on the student's own pairs)
    R[w_a, v_a]  = rho_a
    R[w_a, w_a]  = v_a E[r g''(w_a.x) x x^T]
                 = v_a (s0_a I + q_a w_a w_a^T + w_a t_a^T + t_a w_a^T + Omega^T diag(beta * K01[a]) Omega)

with the Stein-form pair moments of :mod:`nearopt.gaussian.expectations` on the Gram matrix
``Omega Omega^T``: ``s0_a = sum_j beta_j b0[a,j]`` (``b0 = E[g''(u) g(v)]``),
``t_a = sum_j beta_j K00[a,j] omega_j`` (``K00 = E[g'''(u) g'(v)]``), ``K01 = E[g''(u) g''(v)]``
and one moment more, ``q_a = sum_j beta_j E[g''''(w_a.x) g(omega_j.x)]``
(:meth:`~nearopt.model.activations.Activation.closed_form_fourth_moment`: polynomials, erf,
ReLU; checked quadrature for any other smooth activation). The Stein form needs no
inverse covariance, so duplicated and sign-flipped units (``rho = +-1``) are exact.

:class:`~nearopt.curvature.student.LandscapeProduct` (matrix-free ``H V``) and
:func:`~nearopt.curvature.student.assemble_landscape` (the dense matrix) build the Hessian from these moments.
:class:`~nearopt.curvature.population.PopulationHessian` composes them with the
trained-block restriction and the change of variables of ``x ~ N(0, Sigma)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import NearoptError
from ..model.activations import Activation, PairMoments
from ..model.network import TwoLayerNet
from ..model.problem import Problem, as_problem
from .expectations import QUADRATURE_TOL, check_smooth, pair_moments, product_expectation

__all__ = [
    "fourth_moments", "landscape_moments", "LandscapeMoments", "MOMENT_ULPS", "nonnegative_quadratic", "population_gradient", "population_loss",
    "residual_terms"
]


def _slice(m: PairMoments, rows: slice, cols: slice) -> PairMoments:
    return m[rows, cols]  # keeps the stable self-pair sums for the assembly (never folded here: the residual needs b0, K00)


def fourth_moments(activation: Activation, c11, c12, c22, *, order: int | None = None, tol: float = QUADRATURE_TOL) -> np.ndarray:
    """``E[g''''(u) g(v)]`` for ``(u, v) ~ N(0, [[c11, c12], [c12, c22]])``, broadcast shape ``S``.

    The activation's closed form when it has one; otherwise the checked quadrature
    (:func:`~nearopt.gaussian.expectations.product_expectation`, two levels agreeing to ``tol``) --
    smooth activations only (``g''''`` by autograd, checked by Stein's identity).
    """
    exact = activation.closed_form_fourth_moment(c11, c12, c22)
    if exact is not None:
        return np.asarray(exact, dtype=np.float64)
    if not activation.is_smooth:
        raise NearoptError(
            f"activation {activation.name!r} has a kink and no closed form for E[g''''(u) g(v)]: the residual term of the "
            "population Hessian off a global minimum is not available (use residual=False for the Gauss-Newton part, or the batch route)"
        )
    check_smooth(activation, np.concatenate([np.ravel(c11), np.ravel(c22)]))
    return product_expectation(lambda z: activation.derivatives(z, 4)[4], activation, c11, c12, c22, order=order, tol=tol)


@dataclass(frozen=True)
class LandscapeMoments:
    """Everything the loss, gradient and Hessian need at one student point.

    ``student`` (``K x K`` pairs) feeds the Gauss-Newton part; ``cross`` (``K x (K+M)``
    pairs of a student unit with every unit of ``Omega``) the gradient and the
    residual; ``phi`` ``(K+M, K+M)`` is ``E[g g]`` over all units; ``fourth``
    ``(K, K+M)`` ``E[g''''(w_a.x) g(omega_j.x)]`` (``None`` without the residual);
    ``beta`` ``(K+M,)``, ``Omega`` ``(K+M, N_i)``.
    """

    student: PairMoments
    cross: PairMoments
    phi: np.ndarray
    fourth: np.ndarray | None
    beta: np.ndarray
    Omega: np.ndarray

    @property
    def method(self) -> str:
        return self.student.method


def landscape_moments(problem: Problem | TwoLayerNet, *, residual: bool = True, order: int | None = None, tol: float = QUADRATURE_TOL) -> LandscapeMoments:
    """Pair moments over the Gram matrix ``Omega Sigma Omega^T`` of ``Omega = [W1_student; W1_teacher]`` (module docstring).

    ``Omega`` is stored in the problem's coordinates; the isotropic formulas of this module
    take it as is for ``Sigma = I`` and whitened (``Omega L``) otherwise.
    """
    pr = as_problem(problem)
    s, t = pr.point, pr.teacher
    K = s.n_hidden
    Omega = np.vstack([s.W1, t.W1])
    beta = np.concatenate([s.W2.ravel(), -t.W2.ravel()])
    G = Omega @ Omega.T if pr.inputs.isotropic else pr.inputs.matmul(Omega) @ Omega.T
    G = 0.5 * (G + G.T)
    mom = pair_moments(s.activation, G, order=order, tol=tol)
    d = np.diag(G)
    fourth = fourth_moments(s.activation, d[:K, None], G[:K], d[None, :], order=order, tol=tol) if residual else None
    return LandscapeMoments(_slice(mom, slice(0, K), slice(0, K)), _slice(mom, slice(0, K), slice(None)), mom.gg, fourth, beta, Omega)


def residual_terms(mo: LandscapeMoments, Omega: np.ndarray, W: np.ndarray) -> dict[str, np.ndarray]:
    """Per-unit residual coefficients in coordinates where ``Omega`` has ``d`` columns (full or reduced)."""
    beta = mo.beta
    b0, b1 = mo.cross.b[..., 0], mo.cross.b[..., 1]
    s0 = b0 @ beta  # (K,): E[r g''(w_a.x)]
    rho = s0[:, None] * W + (b1 * beta) @ Omega  # (K, d): E[r g'(w_a.x) x]
    out = {"s0": s0, "rho": rho}
    if mo.fourth is not None:
        out["q"] = mo.fourth @ beta  # (K,)
        out["t"] = (mo.cross.K[..., 0, 0] * beta) @ Omega  # (K, d)
        out["c"] = mo.cross.K[..., 0, 1] * beta  # (K, K+M): Omega^T diag(c_a) Omega
    return out


#: relative rounding of one closed-form or quadrature pair moment ``Phi_ij`` (a few ulps: :mod:`nearopt.gaussian.expectations`)
MOMENT_ULPS = 8


def population_loss(problem: Problem | TwoLayerNet, moments: LandscapeMoments | None = None) -> float:
    """``L = 1/2 E[(f_student(x) - f_teacher(x))^2]``, ``x ~ N(0, I)`` (``1/2 beta^T Phi beta``), never below 0 from rounding.

    ``Phi`` is a Gram matrix of functions, so ``L >= 0`` exactly; in float64 the sum has an absolute
    error of at most ``bound = 1/2 (2 n + MOMENT_ULPS) eps sum |beta_i Phi_ij beta_j|`` (``n = K + M``
    terms in each of the two dot products, each moment to ``MOMENT_ULPS`` ulps). A computed value in
    ``[-bound, 0)`` is that rounding at a global minimum and is returned as ``0.0``; a value further
    below 0 is returned as computed (it would mean wrong moments, not rounding).
    """
    mo = landscape_moments(problem, residual=False) if moments is None else moments
    return nonnegative_quadratic(mo.beta, mo.phi)


def nonnegative_quadratic(beta: np.ndarray, Phi: np.ndarray) -> float:
    """``1/2 beta^T Phi beta`` for a PSD ``Phi`` ``(n, n)``, with rounding-level negatives (:func:`population_loss`) set to 0."""
    value = float(0.5 * beta @ Phi @ beta)
    if value >= 0.0:
        return value
    bound = 0.5 * (2 * beta.size + MOMENT_ULPS) * np.finfo(np.float64).eps * float(np.abs(beta) @ np.abs(Phi) @ np.abs(beta))
    return 0.0 if value >= -bound else value


def population_gradient(problem: Problem | TwoLayerNet, moments: LandscapeMoments | None = None) -> np.ndarray:
    """``grad L`` over the trained parameters, shape ``(P,)`` (order of :attr:`Problem.trained_indices`).

    Under ``x ~ N(0, Sigma)`` the Stein directions become ``Sigma w``: ``rho_a -> Sigma rho_a``.
    """
    pr = as_problem(problem)
    mo = landscape_moments(pr, residual=False) if moments is None else moments
    v = pr.point.W2.ravel()
    K = v.size
    gv = mo.phi[:K] @ mo.beta
    rho = residual_terms(mo, np.vstack([pr.point.W1, pr.teacher.W1]), pr.point.W1)["rho"]
    gW = v[:, None] * (rho if pr.inputs.isotropic else pr.inputs.matmul(rho))
    return np.concatenate([gW.ravel(), gv])[pr.trained_indices]
