"""nearopt: Hessian spectra and learning dynamics of teacher-student networks near the optimum.

Quick tour::

    import nearopt as no
    net = no.sample_teacher(n_inputs=10, n_hidden=20, activation="erf", seed=0)
    X = no.sample_inputs(4000, net.n_inputs, seed=0)
    spec = no.batch_spectrum(net, X)          # all P eigenvalues + rank decision
    H = no.gauss_newton(net, X)               # (P, P) = Hessian at the optimum
"""

from __future__ import annotations

__version__ = "0.1.0"

from .activations import (  # noqa: E402
    Activation,
    CustomActivation,
    Erf,
    Polynomial,
    ReLU,
    Tanh,
    available_activations,
    get_activation,
    monomial,
    register_activation,
)
from .dynamics import DynamicsResult, make_objective, predict_mean_loss, run_dynamics  # noqa: E402
from .errors import NearoptError  # noqa: E402
from .hessian.empirical import functional_hessian, gauss_newton, jacobian, jacobian_r_factor, loss_hessian  # noqa: E402
from .gaussian import gaussian_expectations, pair_moments  # noqa: E402
from .hessian.operators import BatchHessianOperator, PopulationHessianOperator, extreme_eigenvalues, spectral_density  # noqa: E402
from .hessian.population import population_hessian, population_spectrum  # noqa: E402
from .hessian.structured import structured_spectrum  # noqa: E402
from .model import TwoLayerNet, sample_inputs, sample_teacher  # noqa: E402
from .spectrum import RankDecision, Spectrum, batch_spectrum, decide_rank  # noqa: E402
from .theory.distributions import ChiSquareMPConvolution, MarchenkoPastur, output_norm_law, wishart_law  # noqa: E402
from .theory.linear import (  # noqa: E402
    linear_batch_spectrum,
    linear_population_spectrum,
    pooled_linear_eigenvalues,
    simulate_linear_spectrum,
)
from .rank import RankMeasurement, SweepRow, measure_rank, rank_sweep, rank_vs_samples  # noqa: E402
from .theory.rank import RankPrediction, predict_rank  # noqa: E402

__all__ = [
    "BatchHessianOperator",
    "PopulationHessianOperator",
    "extreme_eigenvalues",
    "gaussian_expectations",
    "pair_moments",
    "population_hessian",
    "population_spectrum",
    "spectral_density",
    "structured_spectrum",
    "RankMeasurement",
    "RankPrediction",
    "SweepRow",
    "measure_rank",
    "predict_rank",
    "rank_sweep",
    "rank_vs_samples",
    "Activation",
    "ChiSquareMPConvolution",
    "MarchenkoPastur",
    "linear_batch_spectrum",
    "linear_population_spectrum",
    "output_norm_law",
    "pooled_linear_eigenvalues",
    "simulate_linear_spectrum",
    "wishart_law",
    "CustomActivation",
    "DynamicsResult",
    "Erf",
    "NearoptError",
    "Polynomial",
    "RankDecision",
    "ReLU",
    "Spectrum",
    "Tanh",
    "TwoLayerNet",
    "available_activations",
    "batch_spectrum",
    "decide_rank",
    "functional_hessian",
    "gauss_newton",
    "get_activation",
    "jacobian",
    "jacobian_r_factor",
    "loss_hessian",
    "make_objective",
    "monomial",
    "predict_mean_loss",
    "register_activation",
    "run_dynamics",
    "sample_inputs",
    "sample_teacher",
]
