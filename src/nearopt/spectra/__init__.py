"""Spectra and rank: the one rank rule, the :class:`Spectrum` result, operator-generic algorithms."""

from .lanczos import extreme_eigenvalues, lanczos_tridiagonal, spectral_density
from .rank_rule import CLEAR_MARGIN, RankDecision, decide_rank, default_rtol, eigenvalue_rtol, rank_from_eigenvalues
from .spectrum import Spectrum

__all__ = [
    "CLEAR_MARGIN",
    "RankDecision",
    "Spectrum",
    "decide_rank",
    "default_rtol",
    "eigenvalue_rtol",
    "extreme_eigenvalues",
    "lanczos_tridiagonal",
    "rank_from_eigenvalues",
    "spectral_density",
]
