"""nearopt: Hessian spectra and learning dynamics of teacher-student networks near the optimum.

Quick tour::

    import nearopt as no
    net = no.sample_teacher(n_inputs=10, n_hidden=20, activation="erf", seed=0)
    X = no.sample_inputs(4000, net.n_inputs, seed=0)
    spec = no.batch_spectrum(net, X)          # all P eigenvalues + rank decision
    H = no.PopulationHessian(net)             # exact N -> infinity curvature, a scipy LinearOperator
    pop = H.spectrum("structured")            # all P eigenvalues, never forming the P x P matrix
    H = no.gauss_newton(net, X)               # (P, P) = Hessian at the optimum
"""

from __future__ import annotations

__version__ = "0.1.0"

from .activations import (
    Activation,
    CustomActivation,
    Erf,
    PairMoments,
    Polynomial,
    ReLU,
    Tanh,
    available_activations,
    get_activation,
    monomial,
    register_activation,
)
from .curvature import (
    BatchGaussNewton,
    BatchHessian,
    Curvature,
    PopulationHessian,
    batch_spectrum,
    functional_hessian,
    gauss_newton,
    jacobian,
    jacobian_r_factor,
    loss_hessian,
    population_hessian,
    population_spectrum,
    structured_spectrum,
)
from .dynamics import DynamicsResult, make_objective, predict_mean_loss, run_dynamics
from .errors import NearoptError
from .expectations import gaussian_expectations, pair_moments
from .measurement import RankMeasurement, SweepRow, measure_rank, rank_sweep, rank_vs_samples
from .model import TwoLayerNet, sample_inputs, sample_teacher
from .problem import GaussianInputs, Problem
from .spectra import RankDecision, Spectrum, decide_rank, extreme_eigenvalues, rank_from_eigenvalues, spectral_density
from .theory.asymptotic import AsymptoticLaw, asymptotic_law
from .theory.distributions import ChiSquareMPConvolution, MarchenkoPastur, output_norm_law, wishart_law
from .theory.linear import (
    linear_batch_spectrum,
    linear_population_spectrum,
    pooled_linear_eigenvalues,
    simulate_linear_spectrum,
)
from .theory.rank_prediction import RankPrediction, predict_rank

__all__ = [
    "AsymptoticLaw",
    "asymptotic_law",
    "Activation",
    "BatchGaussNewton",
    "BatchHessian",
    "ChiSquareMPConvolution",
    "Curvature",
    "CustomActivation",
    "DynamicsResult",
    "Erf",
    "GaussianInputs",
    "MarchenkoPastur",
    "NearoptError",
    "PairMoments",
    "Polynomial",
    "PopulationHessian",
    "Problem",
    "RankDecision",
    "RankMeasurement",
    "RankPrediction",
    "ReLU",
    "Spectrum",
    "SweepRow",
    "Tanh",
    "TwoLayerNet",
    "available_activations",
    "batch_spectrum",
    "decide_rank",
    "extreme_eigenvalues",
    "functional_hessian",
    "gauss_newton",
    "gaussian_expectations",
    "get_activation",
    "jacobian",
    "jacobian_r_factor",
    "linear_batch_spectrum",
    "linear_population_spectrum",
    "loss_hessian",
    "make_objective",
    "measure_rank",
    "monomial",
    "output_norm_law",
    "pair_moments",
    "pooled_linear_eigenvalues",
    "population_hessian",
    "population_spectrum",
    "predict_mean_loss",
    "predict_rank",
    "rank_from_eigenvalues",
    "rank_sweep",
    "rank_vs_samples",
    "register_activation",
    "run_dynamics",
    "sample_inputs",
    "sample_teacher",
    "simulate_linear_spectrum",
    "spectral_density",
    "structured_spectrum",
    "wishart_law",
]
