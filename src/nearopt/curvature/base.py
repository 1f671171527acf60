"""The curvature abstraction: one base class, each curvature a short subclass.

A :class:`Curvature` is a symmetric ``(P, P)`` float64 matrix ``H`` of a
:class:`~nearopt.model.problem.Problem`, exposed as a SciPy
:class:`~scipy.sparse.linalg.LinearOperator` (so ``eigsh``, ``lobpcg``, ``cg``
and SLQ take it directly) with a torch product for CPU and GPU. A subclass
supplies only

* :meth:`Curvature.torch_matmat` -- ``H V`` for ``V`` of shape ``(P, k)`` (torch, float64);

and, where it knows better than ``P`` products with the identity,

* :meth:`Curvature.to_dense` -- the matrix itself;
* :meth:`Curvature.factor` -- a square root ``S`` ``(m, P)`` with ``S^T S = H``
  (``J / sqrt(N)`` for a batch, the Jacobian factor of a linear network, ...);
* :meth:`Curvature.structured` -- every eigenvalue as blocks with multiplicities;
* :meth:`Curvature.null_vectors`, :meth:`Curvature.preconditioner`, a cost model
  (:meth:`Curvature.route_costs`) for the matrix-free smallest end and ``auto``.

:meth:`Curvature.offers` says which routes it has, and every question -- all
eigenvalues, one end, a density, with or without eigenvectors -- is answered by
the one function :func:`nearopt.spectra.solve` (:meth:`Curvature.spectrum` builds
the :class:`~nearopt.spectra.request.SpectrumRequest` and calls it).

Options of the problem are wrappers that compose over any curvature
(:mod:`nearopt.curvature.compose`): the trained-block restriction and the change
of variables of ``x ~ N(0, Sigma)``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator

from ..errors import NearoptError
from ..model.problem import Problem, as_problem
from ..policy import RankPolicy
from ..resources import check_device, require_memory
from ..spectra.request import SpectrumRequest
from ..spectra.solver import solve
from ..spectra.spectrum import Spectrum
from ..spectra.torch_ops import SymmetricOperator
from .costs import generic_costs

__all__ = ["Curvature", "DENSE_BLOCK", "MAX_DENSE_PARAMS", "resolve_device"]

#: columns of the identity pushed through :meth:`Curvature.torch_matmat` at once by the generic ``to_dense``
DENSE_BLOCK = 256
_REQUEST_FIELDS = {f.name for f in dataclasses.fields(SpectrumRequest)}
#: largest ``P`` a curvature offers a dense route for (8 P^2 bytes: 3.2 GB at 20000)
MAX_DENSE_PARAMS = 20_000


def resolve_device(device: str | torch.device | None = "cpu") -> torch.device:
    """``"auto"`` picks CUDA when available; otherwise the named device (``cpu``, ``cuda``, ``cuda:1``)."""
    name = check_device(device)  # one clear error for tpu, a missing GPU, a bad index
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class Curvature(SymmetricOperator):
    """A curvature matrix ``H`` ``(P, P)`` of a problem, as a symmetric float64 LinearOperator.

    Parameters
    ----------
    problem : Problem or TwoLayerNet
        What is analysed (a bare network means student = teacher).
    device : str or torch.device
        Where :meth:`torch_matmat` runs (``cpu``, ``cuda``, ``auto``).
    """

    #: short name used in messages and results
    kind = "curvature"
    #: whether ``H`` is known to be positive semi-definite (Gauss-Newton matrices, Hessians at a global minimum)
    positive_semidefinite = False

    def __init__(self, problem: Problem | Any, *, device: str | torch.device = "cpu"):
        self.problem = as_problem(problem)
        self.device = resolve_device(device)
        P = self.problem.n_params
        super().__init__(dtype=np.float64, shape=(P, P))

    # ------------------------------------------------------------------ what subclasses supply
    def torch_matmat(self, V: torch.Tensor) -> torch.Tensor:
        """``H V`` for ``V`` ``(P, k)`` float64 on :attr:`device`; returns ``(P, k)``."""
        raise NotImplementedError

    def to_dense(self) -> np.ndarray:
        """``H`` as a dense ``(P, P)`` float64 array (generic: ``H`` times identity blocks)."""
        P = self.n_params
        require_memory(8 * P * P, f"a dense {P} x {P} curvature matrix", "a request for one end (k eigenvalues) or a density")
        out = np.empty((P, P))
        for start in range(0, P, DENSE_BLOCK):
            stop = min(P, start + DENSE_BLOCK)
            E = torch.zeros(P, stop - start, dtype=torch.float64, device=self.device)
            E[torch.arange(start, stop), torch.arange(stop - start)] = 1.0
            out[:, start:stop] = self.torch_matmat(E).cpu().numpy()
        return 0.5 * (out + out.T)

    def factor(self) -> np.ndarray | None:
        """A square root ``S`` ``(m, P)`` with ``S^T S = H``, or ``None`` when none is cheap."""
        return None

    def has_factor(self) -> bool:
        """Whether :meth:`factor` gives a square root (without computing it)."""
        return False

    def factor_shape(self, S: np.ndarray) -> tuple[int, int]:
        """Shape that sets the default rank tolerance of :meth:`factor` (NumPy's ``max(shape) eps``).

        ``S.shape`` unless the factor compresses a taller matrix (a batch's ``R``
        stands for ``J`` ``(N, P)``, whose rounding grows with ``N``).
        """
        return (int(S.shape[0]), int(S.shape[1]))

    def structured(self) -> Any:
        """Every eigenvalue as blocks with multiplicities (``values``, ``counts``, ``block_size``), if offered."""
        raise NearoptError(f"{self.kind} has no structured route")

    def structured_size(self) -> int:
        """Side of the largest dense block :meth:`structured` diagonalises (``P`` when there is no structure)."""
        return self.n_params

    def preconditioner(self, shift: float = 0.0) -> LinearOperator | None:
        """An SPD ``T ≈ (H + shift I)^{-1}`` for the smallest-end LOBPCG, or ``None`` (plain LOBPCG)."""
        return None

    def null_vectors(self) -> np.ndarray | None:
        """Known null vectors ``(P, n0)`` of ``H`` (symmetries, e.g. ReLU's rescaling), or ``None``."""
        return None

    def known_rank(self) -> tuple[int, str] | None:
        """``(rank, basis)`` when theory gives the rank of ``H`` (the null space every route then skips), or ``None``."""
        return None

    def route_costs(self, k: int, which: str) -> dict[str, float]:
        """Estimated seconds of the exact route and of the matrix-free one for ``k`` eigenvalues at ``which``."""
        return generic_costs(self.n_params, self.structured_size(), k, which, self.device)

    # ------------------------------------------------------------------ capabilities
    def offers(self, route: str) -> bool:
        """Whether this curvature has ``route`` (``dense``, ``factor``, ``structured``, ``lanczos``, ``slq``)."""
        if route == "dense":
            return self.n_params <= MAX_DENSE_PARAMS
        if route == "factor":
            return self.has_factor()
        if route == "structured":
            return type(self).structured is not Curvature.structured
        return route in ("lanczos", "slq")

    @property
    def n_params(self) -> int:
        """``P``: the number of trained parameters (the side of ``H``)."""
        return int(self.shape[0])

    def _matmat(self, X: np.ndarray) -> np.ndarray:
        T = torch.as_tensor(np.asarray(X, dtype=np.float64), device=self.device)
        return self.torch_matmat(T).cpu().numpy()

    # ------------------------------------------------------------------ spectra
    def spectrum(self, method: str | SpectrumRequest = "auto", *, which: str | None = None, k: int | None = None, vectors: bool = False,
                 rtol: float | None = None, **options: Any) -> Spectrum:
        """Answer a spectral request (:func:`nearopt.spectra.solve`).

        ``spectrum(request)`` takes a :class:`~nearopt.spectra.request.SpectrumRequest`;
        ``spectrum(method, which=..., k=..., vectors=..., rtol=..., **options)`` builds one
        (``options``: the request's other fields, e.g. ``tol``, ``null_dim``, ``probes``).
        """
        if isinstance(method, SpectrumRequest):
            if options or k is not None or which is not None or vectors or rtol is not None:
                raise NearoptError("pass either a SpectrumRequest or its fields, not both")
            return solve(self, method)
        unknown = set(options) - _REQUEST_FIELDS
        if unknown:
            raise NearoptError(f"unknown request option(s) {', '.join(sorted(unknown))}; a SpectrumRequest takes {', '.join(sorted(_REQUEST_FIELDS))}")
        policy = options.pop("policy", RankPolicy(rtol=rtol))
        return solve(self, SpectrumRequest(which=which, k=k, vectors=vectors, method=method, policy=policy, **options))  # type: ignore[arg-type]

    def eigh(self, *, rtol: float | None = None) -> tuple[Spectrum, np.ndarray]:
        """All eigenpairs: ``(spectrum, U)``, ``U`` ``(P, P)`` with columns matching the ascending eigenvalues."""
        spec = self.spectrum("auto", vectors=True, rtol=rtol)
        assert spec.eigenvectors is not None
        return spec, spec.eigenvectors

    def describe(self) -> dict[str, Any]:
        """Fields every :class:`Spectrum` of this curvature carries (sizes, activation, samples, provenance)."""
        net = self.problem.point
        return {"activation": net.activation.name, "n_inputs": net.n_inputs, "n_hidden": net.n_hidden, "samples": None,
                "extra": {"curvature": self.kind, "device": str(self.device), "trained": self.problem.trained}}
