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

with the Stein-form pair moments of :mod:`nearopt.expectations` on the Gram matrix
``Omega Omega^T``: ``s0_a = sum_j beta_j b0[a,j]`` (``b0 = E[g''(u) g(v)]``),
``t_a = sum_j beta_j K00[a,j] omega_j`` (``K00 = E[g'''(u) g'(v)]``), ``K01 = E[g''(u) g''(v)]``
and one moment more, ``q_a = sum_j beta_j E[g''''(w_a.x) g(omega_j.x)]``
(:meth:`~nearopt.activations.Activation.closed_form_fourth_moment`: polynomials, erf,
ReLU; checked quadrature for any other smooth activation). The Stein form needs no
inverse covariance, so duplicated and sign-flipped units (``rho = +-1``) are exact.

:class:`LandscapeProduct` is the matrix-free ``H V``; :func:`assemble_landscape` the
dense matrix (full, or the reduced block of :mod:`nearopt.curvature.structured`).
:class:`~nearopt.curvature.population.PopulationHessian` composes them with the
trained-block restriction and the change of variables of ``x ~ N(0, Sigma)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..activations import COLLINEAR_TOL, Activation, PairMoments
from ..errors import NearoptError
from ..expectations import QUADRATURE_TOL, _converge_pairs, check_smooth, normal_rule, pair_moments
from ..model import TwoLayerNet
from ..problem import Problem, as_problem
from .assembly import assemble
from .product import PopulationProduct


def _slice(m: PairMoments, rows: slice, cols: slice) -> PairMoments:
    return m[rows, cols]  # keeps the stable self-pair sums for the assembly (never folded here: the residual needs b0, K00)


def fourth_moments(activation: Activation, c11, c12, c22, *, order: int | None = None, tol: float = QUADRATURE_TOL) -> np.ndarray:
    """``E[g''''(u) g(v)]`` for ``(u, v) ~ N(0, [[c11, c12], [c12, c22]])``, broadcast shape ``S``.

    The activation's closed form when it has one; otherwise tensor quadrature
    (Cholesky ``u = l11 y1``, ``v = l21 y1 + l22 y2``; collinear pairs on the 1-D
    rule) refined pair by pair until two levels agree to ``tol`` -- smooth
    activations only (``g''''`` by autograd, checked by Stein's identity).
    """
    exact = activation.closed_form_fourth_moment(c11, c12, c22)
    if exact is not None:
        return np.asarray(exact, dtype=np.float64)
    if not activation.is_smooth:
        raise NearoptError(
            f"activation {activation.name!r} has a kink and no closed form for E[g''''(u) g(v)]: the residual term of the "
            "population Hessian off a global minimum is not available (use residual=False for the Gauss-Newton part, or the batch route)"
        )
    shape = np.broadcast_shapes(np.shape(c11), np.shape(c12), np.shape(c22))
    c11, c12, c22 = (np.asarray(c, dtype=np.float64).ravel() for c in np.broadcast_arrays(c11, c12, c22))
    check_smooth(activation, np.concatenate([c11, c22]))
    l11 = np.sqrt(c11)
    l21 = np.divide(c12, l11, out=np.zeros_like(l11), where=l11 > 0)
    l22 = np.sqrt(np.clip(c22 - l21**2, 0.0, None))
    coll = l22**2 <= COLLINEAR_TOL * np.maximum(c22, 1e-300)

    def evaluate(idx: np.ndarray, n: int) -> np.ndarray:
        x, w = normal_rule(n)
        xt, wt = torch.as_tensor(x), torch.as_tensor(w)
        a11, a21, a22 = (torch.as_tensor(t[idx])[:, None] for t in (l11, l21, l22))
        g4 = activation.derivatives(a11 * xt, 4)[4]  # (m, n): u on the y1 nodes
        v = (a21 * xt)[:, :, None] + a22[:, :, None] * xt  # (m, n, n): [pair, y1, y2]
        gv2 = activation(v) @ wt  # (m, n): sum_j w_j g(v_ij)
        gv1 = activation(a21 * xt)  # collinear: v on the same node
        inner = torch.where(torch.as_tensor(coll[idx])[:, None], gv1, gv2)
        return (wt * g4 * inner).sum(-1).numpy()[:, None]

    flat, _, _ = _converge_pairs(evaluate, c11.size, order, tol)
    return flat[:, 0].reshape(shape)


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


def _residual_terms(mo: LandscapeMoments, Omega: np.ndarray, W: np.ndarray) -> dict[str, np.ndarray]:
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


#: relative rounding of one closed-form or quadrature pair moment ``Phi_ij`` (a few ulps: :mod:`nearopt.expectations`)
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
    rho = _residual_terms(mo, np.vstack([pr.point.W1, pr.teacher.W1]), pr.point.W1)["rho"]
    gW = v[:, None] * (rho if pr.inputs.isotropic else pr.inputs.matmul(rho))
    return np.concatenate([gW.ravel(), gv])[pr.trained_indices]


def assemble_landscape(mo: LandscapeMoments, W: np.ndarray, Omega: np.ndarray, v: np.ndarray, residual: bool = True) -> np.ndarray:
    """Dense population Hessian ``(K (d+1), K (d+1))`` with first layer ``W`` ``(K, d)`` and all units ``Omega`` ``(K+M, d)``.

    ``W`` and ``Omega`` may be expressed in any orthonormal basis of a space holding
    every row (the moments depend only on ``Omega Omega^T``): ``d = N_i`` gives the
    full matrix, ``d = r`` the reduced block of the structured route.
    """
    H = assemble(mo.student, W, v)
    if not residual:
        return H
    if mo.fourth is None:
        raise NearoptError("these moments were computed without the residual term")
    K, d = W.shape
    rt = _residual_terms(mo, Omega, W)
    Rww = rt["s0"][:, None, None] * np.eye(d)
    Rww += rt["q"][:, None, None] * W[:, :, None] * W[:, None, :]
    Rww += W[:, :, None] * rt["t"][:, None, :] + rt["t"][:, :, None] * W[:, None, :]
    Rww += np.einsum("aj,ji,jk->aik", rt["c"], Omega, Omega)
    Rww *= v[:, None, None]
    m = K * d
    for a in range(K):
        H[a * d : (a + 1) * d, a * d : (a + 1) * d] += Rww[a]
        H[a * d : (a + 1) * d, m + a] += rt["rho"][a]
        H[m + a, a * d : (a + 1) * d] += rt["rho"][a]
    return H


class LandscapeProduct:
    """``V (P_all, k) -> H V`` for the population Hessian at a student point (isotropic inputs, all parameters).

    The Gauss-Newton part by :class:`~nearopt.curvature.product.PopulationProduct` on the
    student's own pairs, plus (``residual=True``) the residual term of the module
    docstring, ``O(K (K + M) N_i k)`` per block of ``k`` vectors.
    """

    def __init__(self, problem: Problem, moments: LandscapeMoments, *, residual: bool, device: torch.device):
        s = problem.point
        self.gauss_newton = PopulationProduct(s, device=device, moments=moments.student)
        self.residual = residual
        if not residual:
            return

        def t(x):
            return torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float64, device=device)

        self.rt = {k: t(x) for k, x in _residual_terms(moments, moments.Omega, s.W1).items()}
        self.W, self.v, self.Om = t(s.W1), t(s.W2.ravel()), t(moments.Omega)
        self.K, self.n = s.n_hidden, s.n_inputs

    def __call__(self, V: torch.Tensor) -> torch.Tensor:
        out = self.gauss_newton(V)
        if not self.residual:
            return out
        rt, W, v, Om, K, n = self.rt, self.W, self.v, self.Om, self.K, self.n
        dW, dv = V[: K * n].T.reshape(-1, K, n), V[K * n :].T  # (k, K, n), (k, K)
        wd = torch.einsum("ai,kai->ka", W, dW)  # w_a . dW_a
        td = torch.einsum("ai,kai->ka", rt["t"], dW)  # t_a . dW_a
        od = torch.einsum("ji,kai->kaj", Om, dW)  # omega_j . dW_a
        rW = rt["s0"][None, :, None] * dW + (rt["q"] * wd + td)[..., None] * W + wd[..., None] * rt["t"]
        rW = rW + torch.einsum("aj,kaj,ji->kai", rt["c"], od, Om)
        rW = v[None, :, None] * rW + dv[..., None] * rt["rho"]
        rv = torch.einsum("ai,kai->ka", rt["rho"], dW)
        return out + torch.cat([rW.reshape(rW.shape[0], -1), rv], dim=1).T
