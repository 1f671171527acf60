"""The curvature abstraction: one base class, each curvature a short subclass.

A :class:`Curvature` is a symmetric ``(P, P)`` float64 matrix ``H`` of a
:class:`~nearopt.problem.Problem`, exposed as a SciPy
:class:`~scipy.sparse.linalg.LinearOperator` (so ``eigsh``, ``lobpcg``, ``cg``
and SLQ take it directly) with a torch product for CPU and GPU. A subclass
supplies only

* :meth:`Curvature.torch_matmat` -- ``H V`` for ``V`` of shape ``(P, k)`` (torch, float64);

and, where it knows better than ``P`` products with the identity,

* :meth:`Curvature.to_dense` -- the matrix itself;
* :meth:`Curvature.factor` -- a square root ``S`` ``(m, P)`` with ``S^T S = H``
  (``J / sqrt(N)`` for a batch, the Jacobian factor of a linear network, ...);
* extra routes in :attr:`Curvature.routes` (the population structured route).

:meth:`Curvature.spectrum` routes to them and returns one
:class:`~nearopt.spectra.spectrum.Spectrum`, ranked by the one rank rule
(:mod:`nearopt.spectra.rank_rule`): singular values of the factor when there is
one, the eigenvalue rule otherwise.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.linalg
import torch
from scipy.sparse.linalg import LinearOperator

from ..errors import NearoptError, require_positive_int
from ..problem import Problem, as_problem
from ..resources import check_device, require_memory
from ..spectra.density import SpectralDensity, slq, spectral_density
from ..spectra.extremes import Eigenpairs, largest_eigenpairs, smallest_eigenpairs
from ..spectra.rank_rule import RankDecision, decide_rank, eigenvalue_rtol, rank_from_eigenvalues
from ..spectra.spectrum import Spectrum
from ..spectra.torch_ops import SymmetricOperator

#: options of the extreme-eigenvalue routes, dropped when ``auto`` picks an exact route instead
EXTREME_OPTIONS = ("which", "tol", "maxiter", "null_dim", "null_vectors", "block", "seed", "progress", "preconditioner", "lambda_max", "guard", "solver", "return_vectors")
#: eigenvalues the ``lanczos`` route computes by default
LANCZOS_K = 20
#: columns of the identity pushed through :meth:`Curvature.torch_matmat` at once by the generic ``to_dense``
DENSE_BLOCK = 256


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

    #: short name used in :class:`Spectrum` ``method`` fields
    kind = "curvature"

    def __init__(self, problem: Problem | Any, *, device: str | torch.device = "cpu"):
        self.problem = as_problem(problem)
        self.device = resolve_device(device)
        P = self.problem.n_params
        super().__init__(dtype=np.float64, shape=(P, P))

    # ------------------------------------------------------------------ what subclasses supply
    def torch_matmat(self, V: torch.Tensor) -> torch.Tensor:
        """``H V`` for ``V`` ``(P, k)`` float64 on :attr:`device`; returns ``(P, k)``."""
        raise NotImplementedError

    def preconditioner(self, shift: float = 0.0) -> LinearOperator | None:
        """An SPD ``T ≈ (H + shift I)^{-1}`` for LOBPCG (the ``smallest`` route), or ``None``.

        Subclasses that know their block structure supply one (e.g. a
        :class:`~nearopt.spectra.torch_ops.TorchOperator` around a torch solve);
        without one the ``smallest`` route runs plain LOBPCG (slow at an
        ill-conditioned bottom: ``docs/scale.md``).
        """
        return None

    def null_vectors(self) -> np.ndarray | None:
        """Known null vectors ``(P, n0)`` of ``H`` (symmetries, e.g. ReLU's rescaling), or ``None``."""
        return None

    def factor(self) -> np.ndarray | None:
        """A square root ``S`` ``(m, P)`` with ``S^T S = H``, or ``None`` when none is cheap."""
        return None

    def factor_shape(self, S: np.ndarray) -> tuple[int, int]:
        """Shape that sets the default rank tolerance of :meth:`factor` (NumPy's ``max(shape) eps``).

        ``S.shape`` unless the factor compresses a taller matrix (a batch's ``R``
        stands for ``J`` ``(N, P)``, whose rounding grows with ``N``).
        """
        return (int(S.shape[0]), int(S.shape[1]))

    def to_dense(self) -> np.ndarray:
        """``H`` as a dense ``(P, P)`` float64 array (generic: ``H`` times identity blocks)."""
        P = self.n_params
        require_memory(8 * P * P, f"a dense {P} x {P} curvature matrix", "the lanczos or structured route")
        out = np.empty((P, P))
        for start in range(0, P, DENSE_BLOCK):
            stop = min(P, start + DENSE_BLOCK)
            E = torch.zeros(P, stop - start, dtype=torch.float64, device=self.device)
            E[torch.arange(start, stop), torch.arange(stop - start)] = 1.0
            out[:, start:stop] = self.torch_matmat(E).cpu().numpy()
        return 0.5 * (out + out.T)

    # ------------------------------------------------------------------ SciPy LinearOperator
    @property
    def n_params(self) -> int:
        """``P``: the number of trained parameters (the side of ``H``)."""
        return int(self.shape[0])

    def _matmat(self, X: np.ndarray) -> np.ndarray:
        T = torch.as_tensor(np.asarray(X, dtype=np.float64), device=self.device)
        return self.torch_matmat(T).cpu().numpy()

    # ------------------------------------------------------------------ spectra
    @property
    def routes(self) -> dict[str, Callable[..., Spectrum]]:
        """Spectrum routes this curvature offers, by name (``auto`` is resolved by :meth:`choose_route`)."""
        routes: dict[str, Callable[..., Spectrum]] = {
            "dense": self._dense_spectrum,
            "lanczos": self._lanczos_spectrum,
            "smallest": self._smallest_spectrum,
            "slq": self._slq_spectrum,
        }
        if type(self).factor is not Curvature.factor:
            routes["factor"] = self._factor_spectrum
        return routes

    def choose_route(self, k: int | None = None, which: str | None = None) -> str:
        """The route ``auto`` takes: the factor when there is one, else dense. ``k``/``which``
        say that only the ``k`` eigenvalues at one end were asked for (subclasses with a cost
        model then pick the matrix-free route when it is cheaper)."""
        return "factor" if "factor" in self.routes else "dense"

    def spectrum(self, method: str = "auto", *, rtol: float | None = None, k: int = LANCZOS_K, **options: Any) -> Spectrum:
        """Eigenvalues of ``H`` and the rank decision, by route ``method``.

        ``dense``: ``eigvalsh`` of :meth:`to_dense`, ranked by the eigenvalue rule;
        ``factor``: squared singular values of :meth:`factor`, ranked by the
        singular-value rule; ``lanczos``: the ``k`` largest eigenvalues only
        (``Spectrum.partial``; no rank), or with ``which="smallest"`` the ``k``
        smallest nonzero ones (same as ``smallest``: preconditioned LOBPCG with the
        null space deflated; options ``null_dim``, ``null_vectors``, ``tol``,
        ``maxiter``, ``progress``; ``return_vectors=True`` fills
        ``Spectrum.eigenvectors``); ``slq``: the density by stochastic Lanczos
        quadrature (options ``n_probes``, ``steps``, ``seed``, ``grid``, ``sigma``;
        the density, its error band and the quadratures in ``extra``, the extreme
        Ritz values as ``eigenvalues``); subclasses add routes (``structured``).
        ``options`` go to the route; a route that takes none refuses them. With
        ``method="auto"`` and ``which`` given, :meth:`choose_route` weighs the exact
        routes against the matrix-free one for those ``k`` eigenvalues.
        """
        routes = self.routes
        if method == "auto":
            method = self.choose_route(k, options.get("which"))
            if method not in ("lanczos", "smallest"):  # an exact route answers every end at once
                options = {key: val for key, val in options.items() if key not in EXTREME_OPTIONS}
        if method not in routes:
            raise NearoptError(f"unknown method {method!r} for {self.kind}; choose from auto, {', '.join(routes)}")
        t0 = time.perf_counter()
        try:
            spec = routes[method](rtol=rtol, k=k, **options)
        except TypeError as exc:
            if options and "unexpected keyword" in str(exc):
                raise NearoptError(f"method {method!r} takes no options {', '.join(options)}") from exc
            raise
        spec.seconds = time.perf_counter() - t0
        return spec

    def eigh(self, *, rtol: float | None = None) -> tuple[Spectrum, np.ndarray]:
        """All eigenpairs: ``(spectrum, U)`` with ``U`` ``(P, P)`` whose columns match the ascending eigenvalues.

        From the SVD of :meth:`factor` when there is one (``S = W s V^T`` gives
        ``H = V s^2 V^T`` without squaring the condition number; null-space
        vectors come first), else ``eigh`` of :meth:`to_dense`. Ranked by the one rule.
        """
        t0 = time.perf_counter()
        S = self.factor()
        if S is not None:
            _, s, Vt = np.linalg.svd(S, full_matrices=True)  # s descending (m,), Vt (P, P)
            U = np.ascontiguousarray(Vt[::-1].T)
            spec = self._spectrum_from_singular_values(s, S, rtol)
        else:
            eig, U = scipy.linalg.eigh(self.to_dense())
            spec = self.make_spectrum(eig, rank_from_eigenvalues(eig, rtol=rtol), "dense", extra={"rank_source": "eigenvalues of the dense matrix"})
        spec.seconds = time.perf_counter() - t0
        return spec, U

    def density(self, **kwargs: Any) -> dict[str, np.ndarray]:
        """Smoothed spectral density by SLQ as a dict (:func:`nearopt.spectra.density.spectral_density`)."""
        return spectral_density(self, **kwargs)

    def slq(self, **kwargs: Any) -> SpectralDensity:
        """Stochastic Lanczos quadrature with error bars (:func:`nearopt.spectra.density.slq`)."""
        return slq(self, **kwargs)

    def eigenpairs(self, k: int = LANCZOS_K, which: str = "largest", **kwargs: Any) -> Eigenpairs:
        """The ``k`` largest, or ``k`` smallest nonzero, eigenpairs with their accuracy
        (:mod:`nearopt.spectra.extremes`); the smallest end uses :meth:`preconditioner`
        and :meth:`null_vectors` unless given."""
        if which == "largest":
            return largest_eigenpairs(self, k, **kwargs)
        if which != "smallest":
            raise NearoptError(f"which must be 'largest' or 'smallest', got {which!r}")
        if "preconditioner" not in kwargs:
            kwargs["preconditioner"] = self.preconditioner()
        if "null_vectors" not in kwargs and kwargs.get("null_dim") is None:
            kwargs["null_vectors"] = self.null_vectors()
        return smallest_eigenpairs(self, k, **kwargs)

    def describe(self) -> dict[str, Any]:
        """Fields every :class:`Spectrum` of this curvature carries (sizes, activation, samples)."""
        net = self.problem.point
        return {"activation": net.activation.name, "n_inputs": net.n_inputs, "n_hidden": net.n_hidden, "samples": None}

    def make_spectrum(self, eigenvalues: np.ndarray, decision: RankDecision, method: str, **fields: Any) -> Spectrum:
        """A :class:`Spectrum` of this curvature (ascending ``eigenvalues``)."""
        extra = fields.pop("extra", {})
        base = self.describe()
        base.update(fields)
        return Spectrum(
            eigenvalues=np.asarray(eigenvalues, dtype=np.float64),
            rank=decision,
            method=method,
            params=self.n_params,
            extra={"device": str(self.device), "trained": self.problem.trained, **extra},
            **base,
        )

    def _dense_spectrum(self, rtol: float | None, k: int) -> Spectrum:
        H = self.to_dense()
        eig = scipy.linalg.eigvalsh(H)
        decision = rank_from_eigenvalues(eig, rtol=rtol)
        return self.make_spectrum(eig, decision, "dense", extra={"rank_source": "eigenvalues of the dense matrix"})

    def _factor_spectrum(self, rtol: float | None, k: int) -> Spectrum:
        S = self.factor()
        assert S is not None
        return self._spectrum_from_singular_values(scipy.linalg.svdvals(S), S, rtol)

    def _spectrum_from_singular_values(self, s: np.ndarray, S: np.ndarray, rtol: float | None = None) -> Spectrum:
        """All ``P`` eigenvalues ``s^2`` of ``H = S^T S`` (zero-padded, ascending), ranked by the singular-value rule."""
        P = self.n_params
        eig = np.zeros(P)
        eig[P - s.size :] = np.sort(s**2)
        decision = decide_rank(s, P, rtol=rtol, shape=self.factor_shape(S))
        return self.make_spectrum(eig, decision, "factor", extra={"rank_source": "singular values of the square root"})

    def _partial_k(self, k: int) -> int:
        P = self.n_params
        k = int(min(require_positive_int(k, "k"), P - 1))
        if k < 1:
            raise NearoptError("the lanczos route needs P >= 2; use the dense method")
        return k

    def _lanczos_spectrum(self, rtol: float | None, k: int, which: str = "largest", **options: Any) -> Spectrum:
        if which == "smallest":
            return self._smallest_spectrum(rtol, k, **options)
        if which != "largest":
            raise NearoptError(f"which must be 'largest' or 'smallest', got {which!r}")
        P, k = self.n_params, self._partial_k(k)
        options.setdefault("tol", 1e-8)
        res = self.eigenpairs(k, "largest", **options)
        eig = res.values
        # Only the k largest are known: the decision concerns these k values, not H.
        decision = decide_rank(np.sqrt(np.clip(eig, 0.0, None)), k, rtol=rtol if rtol is not None else eigenvalue_rtol(k))
        extra = {
            "rank_source": "not determined: only the largest eigenvalues are known",
            "P": P,
            "eigenvalues_held": f"largest {k} of {P} (ascending)",
            "rank": None,
            "rank_tolerance": None,
            "rank_decision": None,
            "smallest_nonzero": None,
            "condition_number": None,
            **{key: val for key, val in res.to_dict().items() if key not in ("eigenvalues", "null_dim", "null_source", "null_threshold", "largest_null_eigenvalue")},
        }
        spec = self.make_spectrum(eig, decision, "lanczos", extra=extra)
        spec.eigenvectors = res.vectors
        return spec

    def _smallest_spectrum(self, rtol: float | None, k: int, **options: Any) -> Spectrum:
        P, k = self.n_params, self._partial_k(k)
        res = self.eigenpairs(k, "smallest", **options)
        eig = res.values
        decision = decide_rank(np.sqrt(np.clip(eig, 0.0, None)), k, rtol=rtol if rtol is not None else eigenvalue_rtol(k))
        rank = P - res.null_dim
        extra = {
            "rank_source": f"P minus the null-space dimension ({res.null_source})",
            "P": P,
            "eigenvalues_held": f"smallest {k} nonzero of {P} (ascending)",
            "rank": rank,
            "rank_tolerance": None,
            "rank_decision": None,
            "smallest_nonzero": float(eig[0]),
            "largest": None,
            "condition_number": None,
            **{key: val for key, val in res.to_dict().items() if key != "eigenvalues"},
        }
        spec = self.make_spectrum(eig, decision, "lanczos", extra=extra)
        spec.eigenvectors = res.vectors
        return spec

    def _slq_spectrum(self, rtol: float | None, k: int, grid: np.ndarray | None = None, sigma: float | None = None, **options: Any) -> Spectrum:
        res = self.slq(**options)
        lo, hi = res.support
        decision = decide_rank(np.sqrt(np.clip([lo, hi], 0.0, None)), 2, rtol=rtol if rtol is not None else eigenvalue_rtol(2))
        extra = {
            "rank_source": "not determined: a density estimate",
            "P": self.n_params,
            "eigenvalues_held": "lowest and highest Ritz value over the SLQ probes",
            "rank": None,
            "rank_tolerance": None,
            "rank_decision": None,
            "smallest_nonzero": None,
            "condition_number": None,
            "density": res.to_dict(grid, sigma),
        }
        return self.make_spectrum(np.array([lo, hi]), decision, "slq", extra=extra)

def restrict(problem: Problem, V: torch.Tensor) -> torch.Tensor:
    """Embed ``V`` ``(P_trained, k)`` into all parameters ``(P_all, k)`` (zeros on fixed blocks)."""
    if problem.trained == "both":
        return V
    idx = torch.as_tensor(problem.trained_indices, device=V.device)
    full = torch.zeros(problem.point.n_params, V.shape[1], dtype=V.dtype, device=V.device)
    full[idx] = V
    return full


def select(problem: Problem, HV: torch.Tensor) -> torch.Tensor:
    """Rows of the trained parameters from ``(P_all, k)`` products."""
    if problem.trained == "both":
        return HV
    return HV[torch.as_tensor(problem.trained_indices, device=HV.device)]
