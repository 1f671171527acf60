"""Spectra and rank: the one rank rule, the :class:`Spectrum` result, operator-generic algorithms."""

from .density import SpectralDensity, slq, spectral_density
from .extremes import Eigenpairs, eigenpairs, largest_eigenpairs, smallest_eigenpairs
from .lanczos import extreme_eigenvalues, gauss_quadrature, lanczos_tridiagonal, lanczos_tridiagonals
from .rank_rule import CLEAR_MARGIN, RankDecision, decide_rank, default_rtol, eigenvalue_rtol, rank_from_eigenvalues
from .spectrum import Spectrum

__all__ = [
    "CLEAR_MARGIN",
    "Eigenpairs",
    "SpectralDensity",
    "RankDecision",
    "Spectrum",
    "decide_rank",
    "default_rtol",
    "eigenvalue_rtol",
    "eigenpairs",
    "extreme_eigenvalues",
    "gauss_quadrature",
    "largest_eigenpairs",
    "smallest_eigenpairs",
    "slq",
    "lanczos_tridiagonals",
    "lanczos_tridiagonal",
    "rank_from_eigenvalues",
    "spectral_density",
]
