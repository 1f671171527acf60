"""A dense symmetric matrix as a :class:`~nearopt.spectra.solver.SpectralOperator`: :class:`DenseMatrix`.

How a matrix built elsewhere (a certificate's exact Hessian, the manifold's scaled compact
Hessian) is answered by :func:`~nearopt.spectra.solver.solve`, so that its rank, inertia and
null space come from the one :class:`~nearopt.policy.RankPolicy` like every curvature's.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator

from ..errors import NearoptError
from .torch_ops import SymmetricOperator

__all__ = ["DenseMatrix"]


class DenseMatrix(SymmetricOperator):
    """A symmetric float64 matrix ``H`` ``(P, P)`` offering only the dense route.

    ``kind`` names it in messages; ``positive_semidefinite`` says whether the smallest end
    may assume PSD; ``known_rank`` ``(rank, basis)`` when theory gives its rank; ``describe``
    the fields a :class:`~nearopt.spectra.spectrum.Spectrum` of it carries.
    """

    def __init__(self, H: np.ndarray, *, kind: str = "matrix", positive_semidefinite: bool = False,
                 known_rank: tuple[int, str] | None = None, describe: dict[str, Any] | None = None):
        H = np.asarray(H, dtype=np.float64)
        if H.ndim != 2 or H.shape[0] != H.shape[1]:
            raise NearoptError(f"{kind}: a square matrix is needed, got shape {H.shape}")
        if not np.all(np.isfinite(H)):
            raise NearoptError(f"{kind} has NaN or infinite entries")
        super().__init__(dtype=np.float64, shape=H.shape)
        self.matrix, self.kind, self.positive_semidefinite = 0.5 * (H + H.T), kind, positive_semidefinite
        self.device = torch.device("cpu")
        self._rank, self._describe = known_rank, dict(describe or {})

    def _matmat(self, X: np.ndarray) -> np.ndarray:
        return self.matrix @ np.asarray(X, dtype=np.float64)

    def offers(self, route: str) -> bool:
        return route == "dense"

    def to_dense(self) -> np.ndarray:
        return self.matrix

    def factor(self) -> np.ndarray | None:
        return None

    def factor_shape(self, S: np.ndarray) -> tuple[int, int]:
        return S.shape

    def structured(self) -> Any:
        raise NearoptError(f"{self.kind} has no structured route")

    def structured_size(self) -> int:
        return self.shape[0]

    def null_vectors(self) -> np.ndarray | None:
        return None

    def preconditioner(self, shift: float = 0.0) -> LinearOperator | None:
        return None

    def route_costs(self, k: int, which: str) -> dict[str, float]:
        return {"exact": 0.0, "lanczos": float("inf")}

    def known_rank(self) -> tuple[int, str] | None:
        return self._rank

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"activation": "-", "n_inputs": 0, "n_hidden": 0, "samples": None, "extra": {"curvature": self.kind}}
        d.update(self._describe)
        return d
