"""What to compute: a :class:`SpectrumRequest`, answered for any curvature by :func:`nearopt.spectra.solve`.

A request is a small immutable value. It says *what* is wanted -- all
eigenvalues, the ``k`` largest, the ``k`` smallest, or a density -- with or
without eigenvectors, to which tolerance, decided by which :class:`~nearopt.policy.RankPolicy`;
the route (``method``) is normally left to :func:`~nearopt.spectra.solve`, which
picks it from what the operator offers.

``which``
    ``"all"``: every eigenvalue (``P`` of them, exact routes only);
    ``"largest"``: the ``k`` algebraically largest;
    ``"smallest"``: the ``k`` algebraically smallest **outside the null space** -- at
    a minimum the smallest nonzero ones, at a saddle the most negative ones
    (negative curvature first);
    ``"density"``: the spectral density (exact eigenvalues smoothed, or stochastic
    Lanczos quadrature with an error band).
``method``
    ``"auto"`` or one route: ``dense`` (``eigh`` of the matrix), ``factor``
    (singular values of a square root), ``structured`` (blocks with
    multiplicities), ``lanczos`` (matrix-free: ARPACK / thick-restart Lanczos for
    the largest, locking LOBPCG for the smallest) or ``slq`` (density).

Options that do not apply to the request are refused, never ignored: ``probes``
on a request that is not a density, ``null_dim`` on one that is not the smallest
end, a ``k`` with ``which="all"``, eigenvectors from a density.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import NearoptError, require_positive_finite, require_positive_int
from ..policy import DEFAULT_POLICY, RankPolicy

__all__ = ["DEFAULT_K", "DEFAULT_TOL", "ROUTES", "SpectrumRequest", "WHICH"]

WHICH = ("all", "largest", "smallest", "density")
ROUTES = ("auto", "dense", "factor", "structured", "lanczos", "slq")
#: eigenvalues a ``largest``/``smallest`` request computes when ``k`` is not given
DEFAULT_K = 20
#: relative residual ``||H x - theta x|| / |theta|`` an iterative route must reach by default
DEFAULT_TOL = 1e-6

#: the options only some requests take, and which
_ONLY = {
    "null_dim": ("smallest",),
    "maxiter": ("largest", "smallest"),
    "block": ("smallest",),
    "probes": ("density",),
    "steps": ("density",),
    "sigma": ("density",),
    "grid": ("density",),
}


@dataclass(frozen=True)
class SpectrumRequest:
    """What to compute (module docstring). Immutable; :meth:`replace` gives a changed copy.

    Attributes
    ----------
    which : {"all", "largest", "smallest", "density"}, optional
        Default: ``"largest"`` for ``method="lanczos"``, ``"density"`` for ``"slq"``, else ``"all"``.
    k : int, optional
        How many eigenvalues at the ``which`` end (default :data:`DEFAULT_K`, capped by
        nothing: ``k >= P`` is refused, ask ``which="all"``).
    vectors : bool
        Also return eigenvectors ``(P, m)`` matching the eigenvalues.
    method : str
        ``auto`` or a route (module docstring).
    tol : float
        Relative residual the iterative routes must reach (exact routes: rounding).
    policy : RankPolicy
        Rank and null-space tolerances.
    null_dim : int, optional
        Smallest end, matrix-free: dimension of the null space to skip (default: the
        operator's known null vectors, else detected).
    maxiter, block : int, optional
        Iterative solver limits (see :func:`nearopt.spectra.extremes.smallest_eigenpairs`).
    probes, steps : int, optional
        Density by SLQ: probe vectors and Lanczos steps (defaults 10 and 80).
    sigma : float, optional
        Density: Gaussian smoothing width (default 1 % of the spectral range).
    grid : ndarray, optional
        Density: evaluation points.
    seed : int
        Seed of random start and probe vectors.
    progress : bool or callable
        Progress lines (or a callback) for the matrix-free routes.
    """

    # ``None`` is resolved in ``__post_init__`` (the route's default end), so after construction it is a str
    which: str = None  # type: ignore[assignment]
    k: int | None = None
    vectors: bool = False
    method: str = "auto"
    tol: float = DEFAULT_TOL
    policy: RankPolicy = DEFAULT_POLICY
    null_dim: int | None = None
    maxiter: int | None = None
    block: int | None = None
    probes: int | None = None
    steps: int | None = None
    sigma: float | None = None
    grid: Any = field(default=None, compare=False)
    seed: int = 0
    progress: bool | Callable[..., None] = field(default=False, compare=False)

    def __post_init__(self) -> None:
        if self.which is None:  # the default end of each route: every eigenvalue, lanczos's top, slq's density
            object.__setattr__(self, "which", {"lanczos": "largest", "slq": "density"}.get(self.method, "all"))
        if self.which not in WHICH:
            raise NearoptError(f"which must be one of {', '.join(WHICH)}, got {self.which!r}")
        if self.method not in ROUTES:
            raise NearoptError(f"unknown method {self.method!r}; choose from {', '.join(ROUTES)}")
        if self.k is not None:
            if self.which in ("all", "density"):
                raise NearoptError(f"k applies to which='largest' or 'smallest', not to which={self.which!r}")
            object.__setattr__(self, "k", require_positive_int(self.k, "k"))
        if not (isinstance(self.tol, (int, float)) and np.isfinite(self.tol) and 0 < self.tol < 1):
            raise NearoptError(f"tol must be a number in (0, 1), got {self.tol!r}")
        if not isinstance(self.policy, RankPolicy):
            raise NearoptError(f"policy must be a RankPolicy, got {type(self.policy).__name__}")
        for name, applies in _ONLY.items():
            if getattr(self, name) is not None and self.which not in applies:
                raise NearoptError(f"option {name} applies to which={' or '.join(map(repr, applies))}, not to which={self.which!r}")
        if self.null_dim is not None and (not isinstance(self.null_dim, (int, np.integer)) or self.null_dim < 0):
            raise NearoptError(f"null_dim must be an integer >= 0, got {self.null_dim!r}")
        for name in ("maxiter", "block", "probes", "steps"):
            if getattr(self, name) is not None:
                require_positive_int(getattr(self, name), name)
        if self.sigma is not None:
            require_positive_finite(self.sigma, "sigma")
        if self.vectors and self.which == "density":
            raise NearoptError("a density has no eigenvectors: ask which='all', 'largest' or 'smallest' with vectors=True")
        if self.method == "slq" and self.which != "density":
            raise NearoptError("method 'slq' estimates a density: use which='density'")
        if self.which == "density" and self.method in ("factor", "lanczos"):
            raise NearoptError(f"method {self.method!r} does not estimate a density; choose auto, dense, structured or slq")
        if self.which == "all" and self.method == "lanczos":
            raise NearoptError("method 'lanczos' computes eigenvalues at one end: use which='largest' or 'smallest' with k")
        if self.vectors and self.method in ("structured", "slq"):
            raise NearoptError(f"method {self.method!r} gives no eigenvectors; use dense, factor or lanczos (or auto)")

    @property
    def count(self) -> int | None:
        """``k`` for the ends (default :data:`DEFAULT_K`), ``None`` for ``all`` and ``density``."""
        if self.which in ("largest", "smallest"):
            return self.k if self.k is not None else DEFAULT_K
        return None

    @property
    def partial(self) -> bool:
        """Whether only the eigenvalues at one end are asked for."""
        return self.which in ("largest", "smallest")

    def replace(self, **changes: Any) -> SpectrumRequest:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def describe(self) -> dict[str, Any]:
        """Short JSON-able form (for results)."""
        out: dict[str, Any] = {"which": self.which, "method": self.method, "vectors": self.vectors, "tol": self.tol, "rtol": self.policy.rtol}
        if self.partial:
            out["k"] = self.count
        return out
