"""Options of a problem as wrappers around any curvature (in the manner of curvlinops' submatrix operators).

* :class:`Restricted` -- the trained-block restriction ``H[idx, idx]`` (a fixed layer);
* :class:`Congruence` -- inputs ``x ~ N(0, Sigma)`` as a change of variables: with
  ``x = L z``, ``L = Sigma^{1/2}``, every network sees ``W1 x = (W1 L) z``, so the loss
  is the isotropic loss of the whitened weights, at any point, and every curvature
  is ``T H~ T`` with ``T = blockdiag(I_{N_h} (x) L, I_{N_h})`` (``T^T = T``) and ``H~``
  the isotropic curvature of the whitened problem (:func:`nearopt.model.problem.whiten`);
* :class:`Composed` -- the base of a curvature built from such wrappers: it
  delegates the product, the matrix and the square root to its :attr:`operator`.

Each wrapper passes on what survives it: a square root (``S[:, idx]``, ``S~ T``),
positive semi-definiteness, the factor's rank shape. A wrapper has no structured
route of its own (the structured reduction of :mod:`nearopt.curvature.structured`
takes the whole problem instead).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..model.problem import Problem
from .base import Curvature

__all__ = ["compose", "Composed", "Congruence", "describe_point", "Restricted", "Wrapper"]


class Wrapper(Curvature):
    """A curvature defined from an ``inner`` one (same device); passes on PSD-ness and the factor's shape."""

    def __init__(self, inner: Curvature, problem: Problem):
        super().__init__(problem, device=inner.device)
        self.inner = inner
        self.positive_semidefinite = inner.positive_semidefinite

    def factor_shape(self, S: np.ndarray) -> tuple[int, int]:
        m, _ = self.inner.factor_shape(S)
        return (m, int(S.shape[1]))

    def has_factor(self) -> bool:
        return self.inner.has_factor()


class Restricted(Wrapper):
    """``H[idx, idx]`` ``(P, P)`` of a curvature ``inner`` over all ``P_all`` parameters.

    ``idx = problem.trained_indices`` (the trained blocks). Product: embed ``V``
    ``(P, k)`` with zeros on the fixed blocks, multiply, keep the trained rows. A
    square root ``S`` of ``inner`` gives ``S[:, idx]`` (``S[:, idx]^T S[:, idx] = H[idx, idx]``).
    """

    kind = "restricted"

    def __init__(self, inner: Curvature, problem: Problem):
        super().__init__(inner, problem)
        self.kind = f"{inner.kind} ({problem.trained} layer trained)"
        self.indices = np.asarray(problem.trained_indices)
        self._idx = torch.as_tensor(self.indices, device=self.device)

    def torch_matmat(self, V: torch.Tensor) -> torch.Tensor:
        full = torch.zeros(self.inner.n_params, V.shape[1], dtype=V.dtype, device=V.device)
        full[self._idx] = V
        return self.inner.torch_matmat(full)[self._idx]

    def to_dense(self) -> np.ndarray:
        H = self.inner.to_dense()
        return H[np.ix_(self.indices, self.indices)]

    def factor(self) -> np.ndarray | None:
        S = self.inner.factor()
        return None if S is None else S[:, self.indices]


class Congruence(Wrapper):
    """``T H~ T`` ``(P, P)``: ``inner`` = ``H~`` of the whitened problem, ``T = blockdiag(I (x) L, I)``.

    ``L`` ``(N_i, N_i)`` symmetric (``Sigma^{1/2}``). On the ``W1`` block (row-major
    ``(N_h, N_i)``) ``T`` acts as ``dW1 -> dW1 L``; it is the identity on ``W2``. Cost
    ``O(N_h N_i^2 k)`` per product on top of ``inner``'s. A square root ``S~`` of
    ``H~`` gives ``S~ T``.
    """

    kind = "congruence"

    def __init__(self, inner: Curvature, problem: Problem, L: np.ndarray):
        super().__init__(inner, problem)
        self.kind = f"{inner.kind} under N(0, Sigma)"
        self.L = torch.as_tensor(np.ascontiguousarray(L), dtype=torch.float64, device=self.device)
        net = problem.point
        self._m, self._shape = net.W1.size, net.W1.shape

    def transform(self, V: torch.Tensor) -> torch.Tensor:
        """``T V`` (``= T^T V``) for ``V`` ``(P_all, k)``."""
        n_h, n_i = self._shape
        dW = V[: self._m].T.reshape(-1, n_h, n_i) @ self.L
        return torch.cat([dW.reshape(dW.shape[0], self._m).T, V[self._m :]], dim=0)

    def torch_matmat(self, V: torch.Tensor) -> torch.Tensor:
        return self.transform(self.inner.torch_matmat(self.transform(V)))

    def to_dense(self) -> np.ndarray:
        Ht = torch.as_tensor(self.inner.to_dense(), dtype=torch.float64, device=self.device)
        out = self.transform(self.transform(Ht).T)
        return (0.5 * (out + out.T)).cpu().numpy()

    def factor(self) -> np.ndarray | None:
        S = self.inner.factor()
        if S is None:
            return None
        St = torch.as_tensor(np.ascontiguousarray(S.T), dtype=torch.float64, device=self.device)
        return self.transform(St).T.cpu().numpy()


class Composed(Curvature):
    """A curvature whose product, matrix and square root come from :attr:`operator` (a chain of wrappers).

    Subclasses set :attr:`operator` in their constructor and add what only they
    know (structured route, null vectors, preconditioner, provenance).
    """

    operator: Curvature

    def torch_matmat(self, V: torch.Tensor) -> torch.Tensor:
        return self.operator.torch_matmat(V)

    def to_dense(self) -> np.ndarray:
        return self.operator.to_dense()

    def factor(self) -> np.ndarray | None:
        return self.operator.factor()

    def has_factor(self) -> bool:
        return self.operator.has_factor()

    def factor_shape(self, S: np.ndarray) -> tuple[int, int]:
        return self.operator.factor_shape(S)


def compose(base: Curvature, problem: Problem, L: np.ndarray | None = None) -> Curvature:
    """Wrap ``base`` (a curvature of the whitened problem over all parameters) for ``problem``:
    :class:`Congruence` by ``L`` when the inputs have a covariance, then :class:`Restricted`
    when only some blocks train."""
    op: Curvature = base
    full = problem if problem.trained == "both" else problem.replace(trained="both")
    if L is not None:
        op = Congruence(op, full, L)
    if problem.trained != "both":
        op = Restricted(op, problem)
    return op


def describe_point(problem: Problem) -> dict[str, Any]:
    """Provenance of the problem that every composed curvature's results carry."""
    out: dict[str, Any] = {}
    if not problem.inputs.isotropic:
        out["inputs"] = problem.inputs.describe()
    if not problem.at_teacher:
        out["teacher_width"] = problem.teacher.n_hidden
    return out
