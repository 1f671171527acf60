"""The exact population loss, gradient and Hessian of any two-layer teacher-student problem.

Student ``f_s(x) = V g_s(W x + b) + c`` and teacher ``f_t(x) = U g_t(T x + d) + e`` with ``M``
outputs (biases optional, each network its own width and activation), inputs ``x ~ N(0, Sigma)``.
Stack every unit in ``Omega = [W; T]`` ``(J, N_i)`` with means ``mu = [b; d]`` ``(J,)`` and
signed outgoing weights ``B = [V, -U]`` ``(M, J)``; ``delta = c - e`` ``(M,)``. The unit
pre-activations are jointly Gaussian, ``u_i ~ N(mu_i, G_ii)``, with the Gram matrix
``G = Omega Sigma Omega^T``, so the loss ``L = 1/2 sum_m E[(f_s,m - f_t,m)^2]`` (summed over
the outputs; ``nn.MSELoss`` averages over them instead and has no ``1/2``) is::

    L = 1/2 sum_ij A_ij Phi_ij + sum_i a_i psi_i + 1/2 |delta|^2,     A = B^T B,  a = B^T delta,
    Phi_ij = E[g_i(u_i) g_j(u_j)] = F_ij(mu_i, mu_j, G_ii, G_jj, G_ij),   psi_i = E[g_i(u_i)].

Price's theorem gives every derivative of ``F`` in its five arguments as a moment of the
activations' derivatives: ``d/dmu_i`` raises the order on ``g_i`` by one, ``d/dG_ii`` by two
(with a factor 1/2), ``d/dG_ij`` both by one (:func:`~nearopt.gaussian.expectations.derivative_moments`).
So at the point ``theta_0`` the second-order Taylor polynomial of each ``Phi_ij`` and ``psi_i`` in
its own arguments is known exactly, and the function

    S(theta) = L with Phi_ij, psi_i replaced by those polynomials in (mu(theta), G(theta))

has the same value, gradient and Hessian as ``L`` at ``theta_0`` (chain rule: both depend on
the kernels only through their values, first and second derivatives there). ``S`` is cheap
(no quadrature) and polynomial in ``theta``; its gradient, Hessian and Hessian-vector products
come by automatic differentiation (``torch.func``), residual term included, at the teacher
and at any student point, for any input covariance and any subset of trained blocks. The
kernel moments are the one formula; nothing else is written by hand.

ReLU's moments are exact (:mod:`nearopt.gaussian.relu_moments`). A ReLU pair that shares its kink
(``u_j = c u_i``: a unit with itself, a student unit at its teacher unit, a unit split in two) has
diverging delta moments, but ``L`` is twice differentiable in the weights there; such a pair takes
Taylor data that give that Hessian through the same chain rule (:func:`_coincident_pairs`,
``docs/theory.md`` §13).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from ..errors import NearoptError
from ..model.activations import Activation, ReLU, correlation_gap
from ..model.network import TwoLayerNet
from ..model.problem import Problem, as_problem
from .expectations import QUADRATURE_TOL, DerivativeMoments, derivative_moments, unit_moments
from .objective import nonnegative_quadratic
from .relu_moments import coincident, collinear_pair_values

__all__ = ["KernelPoint", "NETWORK_EXPECTATIONS", "NetworkObjective", "PRICE_FACTORS", "PRICE_SHIFTS"]

#: how the kernels of a general problem are integrated (results' provenance)
NETWORK_EXPECTATIONS = "checked quadrature with means (Price's theorem); ReLU in closed form"

#: derivative orders added by ``d/dmu_i, d/dmu_j, d/dG_ii, d/dG_jj, d/dG_ij`` (Price's theorem), and their factors
PRICE_SHIFTS = ((1, 0), (0, 1), (2, 0), (0, 2), (1, 1))
PRICE_FACTORS = (1.0, 1.0, 0.5, 0.5, 1.0)


def _taylor(M: np.ndarray, nb: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Value, gradient ``(..., 5)`` and Hessian ``(..., 5, 5)`` of a pair kernel from its moments ``M`` ``(..., na, nb)``.

    Entries whose orders exceed the table stay 0 (arguments held fixed there: a teacher's).
    """
    na = M.shape[-2]
    grad = np.zeros(M.shape[:-2] + (5,))
    hess = np.zeros(M.shape[:-2] + (5, 5))
    for k, ((a, b), fk) in enumerate(zip(PRICE_SHIFTS, PRICE_FACTORS)):
        if a < na and b < nb:
            grad[..., k] = fk * M[..., a, b]
        for l_, ((c, d), fl) in enumerate(zip(PRICE_SHIFTS, PRICE_FACTORS)):
            if a + c < na and b + d < nb:
                hess[..., k, l_] = fk * fl * M[..., a + c, b + d]
    return M[..., 0, 0], grad, hess


def _coincident_pairs(phi: tuple[np.ndarray, np.ndarray, np.ndarray], i: np.ndarray, j: np.ndarray, c: np.ndarray, first: np.ndarray,
                      R: np.ndarray) -> None:
    """Write the Taylor data of ReLU pairs that share their kink, ``u_j = c u_i``, at ``(i, j)`` and ``(j, i)`` of ``phi`` (in place).

    ``i``, ``j``, ``c`` ``(n,)``; ``first`` ``(n, 3, 3)``: the pairs' moments ``a, b <= 2`` taken as exactly collinear
    (:func:`~nearopt.gaussian.relu_moments.collinear_pair_values`: the value and first derivatives, exact at a shared kink and
    off by the square of the distance from one); ``R`` ``(n, 4)`` (``R_k = E[relu^(k)(u_i)]``) of unit ``i``.
    Their delta moments diverge, but ``Phi_ij`` is twice differentiable in the weights ``p = (w, b)`` there: with
    ``x~ = (x, 1)``, ``d2/dp_i2 = E[delta(u_i) relu(u_j) x~ x~^T] = 0`` (``relu(u_j) = 0`` on ``u_i = 0``), likewise in ``p_j``, and
    ``d2/dp_i dp_j = E[step(u_i) step(u_j) x~ x~^T]``, which for ``c > 0`` is ``E[step(u_i) x~ x~^T] = R1 (Sigma (+) 1) + R2 (Sigma w_i e^T + e w_i^T Sigma) + R3 Sigma w_i w_i^T Sigma``
    (``e`` the bias coordinate) by Stein's lemma. The chain rule through ``z = (mu_i, mu_j, G_ii, G_jj, G_ij)`` gives exactly that Hessian from
    the first derivatives (at a shared kink ``(c R0, R0, 0, 0, R1)``) and the second derivatives ``F_mu_i,mu_j = R1``, ``F_mu_i,G_jj = R2 / (2c)``,
    ``F_G_ii,mu_j = R2 / 2``, ``F_G_ii,G_jj = R3 / (4c)`` (all others 0); the value is ``c E[relu(u_i)^2] = c (mu R0 + G_ii R1)``.
    ``c < 0`` (opposite sides of one kink): ``relu(u_i) relu(u_j) = 0`` and everything is 0. A unit with itself
    (``c = 1``) is the same data: the Taylor polynomial of ``E[relu(u)^2]`` in ``(mu, G)``.
    """
    val, grad, hess = phi
    pos = c > 0
    cs = np.where(pos, c, 1.0)
    v, g, _ = _taylor(first, 3)  # value and first derivatives (the Hessian slots need orders 3 and 4: below)
    h = np.zeros((c.size, 5, 5))
    for (k, l_), value in (((0, 1), R[:, 1]), ((0, 3), R[:, 2] / (2 * cs)), ((2, 1), 0.5 * R[:, 2]), ((2, 3), R[:, 3] / (4 * cs))):
        h[:, k, l_] = h[:, l_, k] = value
    h = h * pos[:, None, None]
    swap = [1, 0, 3, 2, 4]  # (j, i): the pair's arguments with the roles exchanged
    val[i, j], grad[i, j], hess[i, j] = v, g, h
    val[j, i], grad[j, i], hess[j, i] = v, g[:, swap], h[:, swap][:, :, swap]


@dataclass(frozen=True)
class KernelPoint:
    """The units at ``theta_0``: means ``mu`` ``(J,)``, Gram ``G`` ``(J, J)``, and the Taylor data of every kernel."""

    mu: np.ndarray
    G: np.ndarray
    phi: tuple[np.ndarray, np.ndarray, np.ndarray]  # (J, J), (J, J, 5), (J, J, 5, 5)
    psi: tuple[np.ndarray, np.ndarray, np.ndarray]  # (J,), (J, 2), (J, 2, 2)
    nodes: int
    change: float


class NetworkObjective:
    """``L(theta)`` of a problem over its trained parameters: exact value, gradient, Hessian and products (module docstring).

    Parameters
    ----------
    problem : Problem or TwoLayerNet
        Any teacher and student (biases, outputs, activations), input law, trained blocks.
    order, tol :
        Quadrature of the kernel moments (:func:`~nearopt.gaussian.expectations.derivative_moments`).
    degree : {1, 2}
        The Taylor degree of the surrogate: 2 (default) for the Hessian; 1 integrates half the
        derivative orders and gives the loss and the gradient only.
    """

    def __init__(self, problem: Problem | TwoLayerNet, *, order: int | None = None, tol: float = QUADRATURE_TOL, degree: int = 2):
        self.problem = as_problem(problem)
        self.order, self.tol = order, tol
        if degree not in (1, 2):
            raise NearoptError(f"degree must be 1 (loss and gradient) or 2 (and the Hessian), got {degree!r}")
        self.degree = degree
        pr = self.problem
        self.theta_full = pr.point.parameters()
        self.indices = pr.trained_indices
        self.theta0 = self.theta_full[self.indices]

    # ------------------------------------------------------------------ the point
    def _units(self, full: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``Omega`` ``(J, N_i)``, ``mu`` ``(J,)``, ``B`` ``(M, J)``, ``delta`` ``(M,)`` at full student parameters ``(P_all,)``."""
        s, t = self.problem.point, self.problem.teacher
        W, b, V, c = s.unpack(full)
        T, U = torch.as_tensor(np.array(t.W1)), torch.as_tensor(np.array(t.W2))
        zero_s, zero_t = full.new_zeros(s.n_hidden), full.new_zeros(t.n_hidden)
        Omega = torch.cat([W, T])
        mu = torch.cat([zero_s if b is None else b, zero_t if t.b1 is None else torch.as_tensor(np.array(t.b1))])
        B = torch.cat([V, -U], 1)
        delta = full.new_zeros(s.n_outputs)
        if c is not None:
            delta = delta + c
        if t.b2 is not None:
            delta = delta - torch.as_tensor(np.array(t.b2))
        return Omega, mu, B, delta

    @cached_property
    def point(self) -> KernelPoint:
        """The kernels' Taylor data at the problem's point (quadrature: student pairs to order ``2 degree``, student-teacher to ``(2 degree, degree)``)."""
        s, t = self.problem.point, self.problem.teacher
        K, J = s.n_hidden, s.n_hidden + t.n_hidden
        Omega, mu, _, _ = (x.numpy() for x in self._units(torch.as_tensor(self.theta_full)))
        G = self.problem.inputs.matmul(Omega) @ Omega.T
        G = 0.5 * (G + G.T)
        d = np.diag(G)
        M = np.zeros((J, J, 5, 5))
        runs: list[DerivativeMoments] = []  # every quadrature, for the accuracy reached

        def fill(rows: np.ndarray, cols: np.ndarray, f: Activation, h: Activation, orders: tuple[int, int]) -> None:
            r = derivative_moments(f, h, mu[rows], mu[cols], d[rows], G[rows, cols], d[cols], orders=orders, order=self.order, tol=self.tol)
            M[rows, cols, : orders[0] + 1, : orders[1] + 1] = r.values
            runs.append(r)

        S, T_ = slice(0, K), slice(K, J)
        top = 2 * self.degree  # the highest derivative order on a student unit (a teacher unit: half)
        shared = self._shared_kinks(mu, G, d)  # ReLU pairs whose delta moments diverge: _coincident_pairs below
        si, sj = np.nonzero(~shared[S, S])
        fill(si, sj, s.activation, s.activation, (top, top))
        ti, tj = np.nonzero(~shared[S, T_])
        fill(ti, tj + K, s.activation, t.activation, (top, self.degree))
        M[T_, S] = np.swapaxes(M[S, T_], 0, 1).swapaxes(-1, -2)  # E[g_t^(b) g_s^(a)]: the same moments, roles exchanged
        ti, tj = (x.ravel() for x in np.meshgrid(np.arange(K, J), np.arange(K, J), indexing="ij"))
        fill(ti, tj, t.activation, t.activation, (0, 0))
        phi = _taylor(M, 5)
        m = np.zeros((J, 5))  # E[g^(a)(u_i)]
        for rows, act, n in ((S, s.activation, top), (T_, t.activation, 0)):
            r = unit_moments(act, mu[rows], d[rows], orders=n, order=self.order, tol=self.tol)
            m[rows, : n + 1] = r.values
            runs.append(r)
        psi = (m[:, 0], np.stack([m[:, 1], 0.5 * m[:, 2]], -1),
               np.stack([np.stack([m[:, 2], 0.5 * m[:, 3]], -1), np.stack([0.5 * m[:, 3], 0.25 * m[:, 4]], -1)], -2))
        ci, cj = np.nonzero(shared)
        if ci.size:
            first = collinear_pair_values(mu[ci], mu[cj], d[ci], G[ci, cj], d[cj], 3, 3)
            _coincident_pairs(phi, ci, cj, G[ci, cj] / d[ci], first, m[ci, :4])
        change = max((r.change for r in runs if np.isfinite(r.change)), default=0.0)
        return KernelPoint(mu, G, phi, psi, max(r.nodes for r in runs), change)

    def _shared_kinks(self, mu: np.ndarray, G: np.ndarray, d: np.ndarray) -> np.ndarray:
        """``(J, J)`` mask of the student's ReLU pairs (with itself, another student unit or a ReLU teacher unit) that share their kink.

        Only the student rows ``(K, J)`` are marked: a teacher pair enters with its value only (finite).
        """
        s, t = self.problem.point, self.problem.teacher
        K, J = s.n_hidden, mu.size
        out = np.zeros((J, J), dtype=bool)
        if not isinstance(s.activation, ReLU):
            return out
        cols = J if isinstance(t.activation, ReLU) else K
        c11, c12, c22 = d[:K, None] * np.ones((1, cols)), G[:K, :cols], d[None, :cols] * np.ones((K, 1))
        out[:K, :cols] = coincident(mu[:K, None], mu[None, :cols], c11, c12, c22, correlation_gap(c11, c12, c22))
        return out

    # ------------------------------------------------------------------ the surrogate
    @cached_property
    def _tensors(self) -> dict[str, torch.Tensor]:
        pt = self.point
        out = {"mu": pt.mu, "G": pt.G, "full": self.theta_full, "idx": self.indices}
        out.update({f"phi{i}": x for i, x in enumerate(pt.phi)})
        out.update({f"psi{i}": x for i, x in enumerate(pt.psi)})
        return {k: torch.as_tensor(np.ascontiguousarray(v)) for k, v in out.items()}

    def _prepare(self) -> None:
        """Compute the point's moments before any ``torch.func`` transform runs (the quadrature is not traced)."""
        _ = self._tensors

    def surrogate(self, theta: torch.Tensor) -> torch.Tensor:
        """``S(theta)`` for trained parameters ``theta`` ``(P,)`` (torch, float64): equal to ``L`` to second order at the point."""
        c = self._tensors
        full = c["full"].index_put((c["idx"],), theta)
        Omega, mu, B, delta = self._units(full)
        G = self.problem.inputs.torch_matmul(Omega) @ Omega.T
        dmu, dG = mu - c["mu"], G - c["G"]
        dd = torch.diagonal(dG)
        J = mu.shape[0]
        Z = torch.stack([dmu[:, None].expand(J, J), dmu[None, :].expand(J, J), dd[:, None].expand(J, J), dd[None, :].expand(J, J), dG], -1)
        Phi = c["phi0"] + (c["phi1"] * Z).sum(-1) + 0.5 * torch.einsum("ijk,ijkl,ijl->ij", Z, c["phi2"], Z)
        z = torch.stack([dmu, dd], -1)  # (J, 2)
        psi = c["psi0"] + (c["psi1"] * z).sum(-1) + 0.5 * torch.einsum("ik,ikl,il->i", z, c["psi2"], z)
        A = B.T @ B
        return 0.5 * (A * Phi).sum() + (B.T @ delta) @ psi + 0.5 * (delta @ delta)

    # ------------------------------------------------------------------ what users ask for
    @cached_property
    def loss(self) -> float:
        """``L`` at the point (exact up to the kernels' quadrature; rounding-level negatives are 0)."""
        pt = self.point
        _, _, B, delta = (x.numpy() for x in self._units(torch.as_tensor(self.theta_full)))
        J = pt.mu.size
        # L = 1/2 beta^T Phi~ beta with beta = [vec B; delta] over the units and the constant "unit" 1
        Phi = np.zeros((J + 1, J + 1))
        Phi[:J, :J], Phi[:J, J], Phi[J, :J], Phi[J, J] = pt.phi[0], pt.psi[0], pt.psi[0], 1.0
        beta = np.concatenate([B, delta[:, None]], 1)  # (M, J + 1): each output's coefficients
        return float(sum(nonnegative_quadratic(row, Phi) for row in beta))

    def gradient(self) -> np.ndarray:
        """``grad L`` ``(P,)`` over the trained parameters."""
        self._prepare()
        g = torch.func.grad(self.surrogate)(torch.as_tensor(self.theta0))
        return g.numpy()

    def hessian(self) -> np.ndarray:
        """``H`` ``(P, P)`` over the trained parameters (symmetrised)."""
        if self.degree < 2:
            raise NearoptError("this objective was built for the loss and gradient only (degree=1): build it with degree=2 for the Hessian")
        self._prepare()
        H = torch.func.hessian(self.surrogate)(torch.as_tensor(self.theta0)).numpy()
        return 0.5 * (H + H.T)

    def hvp(self, V: torch.Tensor) -> torch.Tensor:
        """``H V`` for ``V`` ``(P, k)`` (forward over reverse, one column at a time in a vmap)."""
        if self.degree < 2:
            raise NearoptError("this objective was built for the loss and gradient only (degree=1): build it with degree=2 for Hessian products")
        self._prepare()
        theta = torch.as_tensor(self.theta0, device=V.device)
        grad = torch.func.grad(self.surrogate)

        def one(v: torch.Tensor) -> torch.Tensor:
            return torch.func.jvp(grad, (theta,), (v,))[1]

        return torch.func.vmap(one, in_dims=1, out_dims=1)(V)

    def describe(self) -> dict:
        """How the kernels were integrated (for results' provenance)."""
        pt = self.point
        return {"expectations": NETWORK_EXPECTATIONS, "quadrature_nodes": pt.nodes,
                "quadrature_change": pt.change, "quadrature_tol": self.tol}
