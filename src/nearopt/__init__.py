"""nearopt: Hessian spectra and learning dynamics of teacher-student networks near the optimum.

Quick tour::

    import nearopt as no
    teacher = no.sample_teacher(n_inputs=10, n_hidden=20, activation="erf", seed=0)
    problem = no.Problem(teacher)           # student = teacher, x ~ N(0, I)
    H = no.PopulationHessian(problem)       # the exact N -> infinity Hessian
    spec = H.spectrum()                     # every eigenvalue (structured route)
    low = H.spectrum(which="smallest", k=5) # the 5 smallest outside the null space
    X = no.sample_inputs(4000, teacher.n_inputs, seed=0)
    batch = no.batch_spectrum(teacher, X)   # the batch Hessian, same answer path

Names are imported on first use (``import nearopt`` itself stays light); the
groups below follow the pipeline: problem -> curvature -> request -> spectrum ->
theory -> dynamics -> experiments.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: public name -> the module that defines it
_GROUPS: dict[str, tuple[str, ...]] = {
    # the problem: networks, activations, input laws
    "activations": ("Activation", "CustomActivation", "Erf", "PairMoments", "Polynomial", "ReLU", "Tanh",
                    "available_activations", "get_activation", "monomial", "register_activation"),
    "model": ("TwoLayerNet", "sample_inputs", "sample_teacher"),
    "problem": ("GaussianInputs", "Problem"),
    "errors": ("NearoptError",),
    "expectations": ("gaussian_expectations", "pair_moments"),
    # curvature operators
    "curvature": ("BatchGaussNewton", "BatchHessian", "Curvature", "PopulationHessian", "batch_spectrum", "functional_hessian",
                  "gauss_newton", "jacobian", "jacobian_r_factor", "loss_hessian", "population_hessian", "population_spectrum",
                  "structured_spectrum"),
    # requests, answers, the rank policy
    "spectra": ("Spectrum", "SpectrumRequest", "solve", "extreme_eigenvalues", "spectral_density"),
    "policy": ("Inertia", "RankDecision", "RankPolicy", "decide_rank", "rank_from_eigenvalues"),
    # theory
    "theory.asymptotic": ("AsymptoticLaw", "asymptotic_law"),
    "theory.distributions": ("ChiSquareMPConvolution", "MarchenkoPastur", "SpectralLaw", "gamma_gauss_rule", "output_norm_law",
                             "wishart_law"),
    "theory.linear": ("linear_batch_spectrum", "linear_population_spectrum", "pooled_linear_eigenvalues", "simulate_linear_spectrum"),
    "theory.rank_prediction": ("RankPrediction", "predict_rank"),
    # measurements and dynamics
    "measurement": ("RankMeasurement", "SweepRow", "measure_rank", "rank_sweep", "rank_vs_samples"),
    "dynamics": ("DynamicsResult", "make_objective", "predict_mean_loss", "run_dynamics"),
    # critical points and the landscape: descent, classification, many-start surveys, certificates
    "critical": ("CriticalPoint", "classify", "committee_teacher", "find_critical_point"),
    "landscape_survey": ("SAFRAN_SHAMIR", "Survey", "committee_survey", "survey"),
    "certificate": ("Certificate", "certify"),
}
_WHERE = {name: module for module, names in _GROUPS.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'nearopt' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
