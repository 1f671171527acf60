"""The exact population Hessian at *any* student point, from the moments of :mod:`nearopt.gaussian.objective`.

``H = G + R``: the Gauss-Newton part on the student's own pairs plus the residual term
(formulas in :mod:`nearopt.gaussian.objective`). :class:`LandscapeProduct` is the
matrix-free ``H V``; :func:`assemble_landscape` the dense matrix (full, or the reduced
block of :mod:`nearopt.curvature.structured`).
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import NearoptError
from ..gaussian.objective import LandscapeMoments, residual_terms
from ..model.problem import Problem
from .assembly import assemble
from .product import PopulationProduct

__all__ = ["LandscapeProduct", "assemble_landscape"]


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
    rt = residual_terms(mo, Omega, W)
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

        self.rt = {k: t(x) for k, x in residual_terms(moments, moments.Omega, s.W1).items()}
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
