"""Theory beside the numerics: spectral laws of linear networks (``distributions``, ``linear``), rank
predictions (``rank_prediction``) and the asymptotic law of non-linear networks (``asymptotic``).
Every eigenvalue law is a :class:`SpectralLaw` (one ``scipy.stats``-style interface, atoms included)."""

from .asymptotic import AsymptoticLaw, asymptotic_law
from .distributions import ChiSquareMPConvolution, MarchenkoPastur, SpectralLaw, gamma_gauss_rule, output_norm_law, wishart_law
from .rank_prediction import RankPrediction, predict_deep_linear_rank, predict_rank

__all__ = [
    "AsymptoticLaw", "ChiSquareMPConvolution", "MarchenkoPastur", "RankPrediction", "SpectralLaw", "asymptotic_law",
    "gamma_gauss_rule", "output_norm_law", "predict_deep_linear_rank", "predict_rank", "wishart_law",
]
