"""Theory beside the numerics: spectral laws of linear networks (``distributions``, ``linear``), rank
predictions (``rank_prediction``) and the asymptotic law of odd non-linear networks (``asymptotic``)."""

from .asymptotic import AsymptoticLaw, asymptotic_law
from .distributions import ChiSquareMPConvolution, MarchenkoPastur, output_norm_law, wishart_law
from .rank_prediction import RankPrediction, predict_rank

__all__ = ["AsymptoticLaw", "ChiSquareMPConvolution", "MarchenkoPastur", "RankPrediction", "asymptotic_law", "output_norm_law", "predict_rank", "wishart_law"]
