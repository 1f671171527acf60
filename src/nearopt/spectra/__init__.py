"""Spectra of any operator: the request, the one answer path, the result, and the algorithms it uses.

:class:`SpectrumRequest` says what to compute, :func:`solve` answers it for any
curvature (choosing among dense, factor, structured, Lanczos/LOBPCG and SLQ), and
:class:`Spectrum` says what was computed. The rank and null-space policy lives in
:mod:`nearopt.policy`; the algorithms (:mod:`.extremes`, :mod:`.lobpcg`, :mod:`.lanczos`,
:mod:`.density`) take any symmetric SciPy ``LinearOperator``.
"""

from ..policy import (
    CLEAR_MARGIN,
    DEFAULT_POLICY,
    MIN_GAP,
    Inertia,
    NullSpace,
    RankDecision,
    RankPolicy,
    decide_rank,
    default_rtol,
    eigenvalue_rtol,
    rank_from_eigenvalues,
)
from .density import SpectralDensity, slq, spectral_density
from .extremes import Eigenpairs, eigenpairs, largest_eigenpairs, smallest_eigenpairs
from .lanczos import extreme_eigenvalues, gauss_quadrature, lanczos_tridiagonal, lanczos_tridiagonals
from .matrix import DenseMatrix
from .request import SpectrumRequest
from .solver import NullSpaceWarning, choose_route, solve
from .spectrum import Spectrum

__all__ = [
    "CLEAR_MARGIN",
    "DEFAULT_POLICY",
    "DenseMatrix",
    "Eigenpairs",
    "Inertia",
    "MIN_GAP",
    "NullSpace",
    "NullSpaceWarning",
    "RankDecision",
    "RankPolicy",
    "SpectralDensity",
    "Spectrum",
    "SpectrumRequest",
    "choose_route",
    "decide_rank",
    "default_rtol",
    "eigenpairs",
    "eigenvalue_rtol",
    "extreme_eigenvalues",
    "gauss_quadrature",
    "lanczos_tridiagonal",
    "lanczos_tridiagonals",
    "largest_eigenpairs",
    "rank_from_eigenvalues",
    "slq",
    "smallest_eigenpairs",
    "solve",
    "spectral_density",
]
