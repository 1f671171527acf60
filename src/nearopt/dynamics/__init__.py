"""Learning dynamics near the optimum: training from ``theta* + delta_0`` against docs/theory.md §5.

Quick tour::

    import nearopt as no
    net = no.sample_teacher(4, 3, "linear", seed=0)
    X = no.sample_inputs(2000, 4, seed=0)
    res = no.run_dynamics(net, X, sigma0=1e-6, draws=8)   # GD, lr = 1/lambda_max
    res.draw_error()            # max relative error of each draw against its prediction
    res.late_time()             # fitted late-time slope vs -2 lr lambda_min
"""

from .deep_linear import DeepLinearGD, deep_linear_gd
from .objective import POPULATION_CLOSED_FORMS, ClosedFormHessian, Objective, forward_batched, make_objective
from .ode import ODE_TRAINED, CommitteeODE, ODETrajectory, committee_ode, embedded_teacher, integrate_ode, ode_near_optimum, order_parameters
from .ode_weights import track_ode, weights_from_order_parameters
from .plateau import (
    ODERun,
    Plateau,
    RateExpansion,
    escape_time,
    find_plateau,
    fixed_point,
    linearise,
    lowest_curvature,
    minimal_weights,
    predict_escape,
    rate_expansion,
    run_ode,
)
from .predict import (
    check_step_size,
    fit_log_slope,
    late_time_rate,
    linear_edge_asymptote,
    linear_edge_loss,
    mode_decay,
    predict_draw_loss,
    predict_mean_loss,
)
from .sgd import PopulationLoss, SGDResult, SGDSimulation, record_steps, run_sgd, simulate_sgd
from .sgd_predict import (
    FixedSetModel,
    SecondMomentModel,
    exact_model,
    fixed_set_model,
    problem_spectrum,
    spectral_critical_lr,
    spectral_model,
    spectral_stationary_loss,
    spectrum_model,
    stationary_factor,
    training_set,
)
from .train import (
    DynamicsResult,
    Trajectory,
    auto_horizon,
    auto_lr,
    float_floor,
    run_dynamics,
    sample_displacements,
    time_grid,
    train_flow,
    train_gd,
)

__all__ = [
    "Plateau",
    "ODERun",
    "RateExpansion",
    "escape_time",
    "find_plateau",
    "fixed_point",
    "linearise",
    "lowest_curvature",
    "minimal_weights",
    "track_ode",
    "predict_escape",
    "rate_expansion",
    "run_ode",
    "weights_from_order_parameters",
    "POPULATION_CLOSED_FORMS",
    "DeepLinearGD",
    "DynamicsResult",
    "FixedSetModel",
    "Objective",
    "PopulationLoss",
    "SGDResult",
    "SGDSimulation",
    "SecondMomentModel",
    "Trajectory",
    "auto_horizon",
    "auto_lr",
    "ClosedFormHessian",
    "CommitteeODE",
    "ODE_TRAINED",
    "ODETrajectory",
    "order_parameters",
    "committee_ode",
    "deep_linear_gd",
    "embedded_teacher",
    "integrate_ode",
    "ode_near_optimum",
    "check_step_size",
    "exact_model",
    "fixed_set_model",
    "fit_log_slope",
    "float_floor",
    "forward_batched",
    "late_time_rate",
    "linear_edge_asymptote",
    "linear_edge_loss",
    "make_objective",
    "mode_decay",
    "predict_draw_loss",
    "predict_mean_loss",
    "problem_spectrum",
    "record_steps",
    "run_dynamics",
    "run_sgd",
    "sample_displacements",
    "simulate_sgd",
    "spectral_critical_lr",
    "spectral_model",
    "spectral_stationary_loss",
    "spectrum_model",
    "stationary_factor",
    "time_grid",
    "train_flow",
    "train_gd",
    "training_set",
]
