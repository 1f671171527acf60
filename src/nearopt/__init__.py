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

Names are imported on first use (``import nearopt`` itself stays light). The 40
top-level names follow the pipeline: problem -> curvature -> request -> spectrum ->
theory -> dynamics -> landscape; every other name lives in its stage's package
(``nearopt.model``, ``nearopt.gaussian``, ``nearopt.curvature``, ``nearopt.spectra``,
``nearopt.theory``, ``nearopt.dynamics``, ``nearopt.landscape``, ``nearopt.experiments``,
``nearopt.pipeline``), which ``nearopt.<package>`` imports on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: public name -> the module that defines it (40 names; everything else lives in its stage's package)
_GROUPS: dict[str, tuple[str, ...]] = {
    # the problem: networks, activations, input laws
    "model.network": ("TwoLayerNet", "sample_inputs", "sample_teacher"),
    "model.activations": ("Activation", "get_activation", "register_activation"),
    "model.problem": ("GaussianInputs", "Problem"),
    "errors": ("NearoptError",),
    # curvature operators
    "curvature": ("BatchGaussNewton", "BatchHessian", "Curvature", "PopulationHessian", "gauss_newton", "jacobian", "loss_hessian",
                  "population_hessian"),
    # requests, answers, the rank policy
    "spectra": ("Spectrum", "SpectrumRequest", "solve", "spectral_density"),
    "curvature.population": ("population_spectrum",),
    "curvature.batch": ("batch_spectrum",),
    "policy": ("RankPolicy",),
    # theory beside numerics
    "theory.asymptotic": ("asymptotic_law",),
    "theory.distributions": ("ChiSquareMPConvolution", "MarchenkoPastur"),
    "theory.linear": ("linear_batch_spectrum", "linear_population_spectrum"),
    "theory.rank_prediction": ("predict_rank",),
    "curvature.rank_measurement": ("measure_rank", "rank_sweep"),
    # dynamics
    "dynamics": ("predict_mean_loss", "run_dynamics"),
    # critical points and the landscape: descent, classification, many-start surveys, certificates
    "landscape.critical": ("classify", "committee_teacher", "find_critical_point"),
    "landscape.survey": ("committee_survey", "survey"),
    "landscape.certificate": ("certify",),
}
#: the stage packages, importable as attributes (``nearopt.curvature.structured_spectrum``)
_PACKAGES = ("cli", "curvature", "dynamics", "errors", "experiments", "figures", "gaussian", "landscape", "model", "pipeline", "policy",
             "resources", "spectra", "theory")
_WHERE = {name: module for module, names in _GROUPS.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _PACKAGES:
        return importlib.import_module(f".{name}", __name__)
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'nearopt' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
