"""Training a student from ``theta* + delta_0`` and comparing with the quadratic prediction.

The state is the displacement ``delta = theta - theta*`` itself (never ``theta``):
``theta* + delta`` is formed only to evaluate the loss, so rounding of ``theta*``
does not accumulate into the trajectory.

* :func:`train_gd`: full-batch gradient descent on a stack of ``K`` draws at once
  (one autograd pass for all of them: the losses are independent);
* :func:`train_flow`: gradient flow ``d delta/dt = -lr grad L`` by a stiff implicit
  integrator (``scipy.integrate.solve_ivp``, BDF by default) with the exact Hessian
  as its Jacobian, in the coordinates ``y = U^T delta`` of the Hessian's eigenbasis at
  ``theta*``: there each mode decays on its own, so the solver's per-component error
  control keeps every mode to relative accuracy ``rtol`` even when the loss spans 20
  decades and the condition number is ``1e7``.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy import integrate
from tqdm.auto import tqdm

from ..curvature.tracking import CurvatureTrack, TrackSpec, track_curvature
from ..errors import NearoptError, require_positive_finite, require_positive_int
from ..gaussian.expectations import output_power
from ..model.network import TwoLayerNet
from ..model.problem import Problem
from ..spectra.spectrum import Spectrum
from ..tolerances import EPS
from .objective import Objective, make_objective
from .predict import check_step_size, fit_log_slope, late_time_rate, predict_draw_loss, predict_mean_loss
from .regime import GD_START_LIMIT, first_step_below, lr_verdict, measured_crossing, start_error, start_verdict, target_block

__all__ = [
    "auto_horizon", "auto_lr", "DynamicsResult", "dynamics_regime", "dynamics_target", "float_floor", "FLOOR_MARGIN", "flow_atol", "LATE_SHARE", "MAX_FLOW_JACOBIANS", "MAX_FLOW_STEPS",
    "MAX_GD_STEPS", "run_dynamics", "sample_displacements", "time_grid", "track_trajectory", "train_flow", "train_gd", "Trajectory"
]

#: largest number of GD steps :func:`run_dynamics` accepts before pointing to ``flow=True``
MAX_GD_STEPS = 2_000_000
#: a stretch is "late time" when the slowest nonzero mode carries this share of the predicted loss
LATE_SHARE = 0.99
#: measured points closer than this factor to the float floor are excluded from comparisons
FLOOR_MARGIN = 1e4
#: flow: a draw whose integrator needs more Jacobians than this has stalled (a healthy draw needs 1-5)
MAX_FLOW_JACOBIANS = 40
#: flow: ... or more steps than this
MAX_FLOW_STEPS = 200_000


def time_grid(t_max: float, points: int = 60, integer: bool = True) -> np.ndarray:
    """``0``, then ``points`` log-spaced times up to ``t_max`` and ``points // 4`` linear ones over
    ``[t_max / 2, t_max]``; shape ``(T,)``, ascending (unique integers for GD)."""
    if not (np.isfinite(t_max) and t_max >= 1):
        raise NearoptError(f"the time horizon must be >= 1, got {t_max}")
    points = require_positive_int(points, "number of time points")
    # log-spaced, plus a linear stretch over the last half for the late-time slope fit
    t = np.concatenate([np.logspace(0.0, math.log10(t_max), points), np.linspace(t_max / 2, t_max, max(points // 4, 3))])
    t = np.unique(t)
    if integer:
        t = np.unique(np.round(t))
    return np.concatenate([[0.0], t])


def sample_displacements(
    n_params: int,
    draws: int,
    sigma0: float,
    seed: int = 0,
    layer_scales: tuple[float, float] | None = None,
    n_first_layer: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``K`` draws of ``delta_0 ~ N(0, diag(sigma**2))``, shape ``(K, P)``, and ``sigma`` ``(P,)``.

    Isotropic (``sigma = sigma0``) by default; ``layer_scales = (a1, a2)`` gives
    ``sigma0 * a1`` on the ``n_first_layer`` entries of ``W1`` and ``sigma0 * a2`` on ``W2``.
    """
    draws = require_positive_int(draws, "number of draws")
    sigma0 = require_positive_finite(sigma0, "sigma0")
    sigma = np.full(n_params, float(sigma0))
    if layer_scales is not None:
        a1, a2 = (require_positive_finite(a, "layer scale") for a in layer_scales)
        if n_first_layer is None:
            raise NearoptError("layer scales need the size of the first layer")
        sigma[:n_first_layer] *= a1
        sigma[n_first_layer:] *= a2
    rng = np.random.default_rng([int(seed), 0xD0])
    return rng.standard_normal((draws, n_params)) * sigma, sigma


@dataclass
class Trajectory:
    """What a training run recorded at ``times`` ``(T,)`` for ``K`` draws.

    ``loss`` ``(K, T)``; ``distance`` ``(K, T)`` = ``||theta_t - theta*||``;
    ``modes`` ``(K, T, P)`` = ``U^T delta_t`` in the Hessian eigenbasis at ``theta*``;
    ``curvature`` the population Hessian along draw 0 when tracking was asked for (:func:`track_trajectory`).
    """

    times: np.ndarray
    loss: np.ndarray
    distance: np.ndarray
    modes: np.ndarray
    diverged: bool = False
    #: flow only: ``{"draw", "time", "reason"}`` where the integrator stalled; later points of that draw are ``nan``
    stalled: list[dict[str, Any]] = field(default_factory=list)
    curvature: CurvatureTrack | None = None


def track_trajectory(obj: Objective, traj: Trajectory, U: np.ndarray, track: TrackSpec | int | None, clock: str = "step") -> CurvatureTrack | None:
    """The curvature along draw 0 of ``traj`` (``None`` without ``track``): the exact population Hessian at
    ``theta* + U modes[0, t]`` for the recorded times ``track.every`` selects (finite ones: a diverged or stalled
    draw stops there), against the objective's teacher (``theta*`` itself unless the objective has another),
    whatever loss the run trained on (a batch loss too: the curvature is the population's)."""
    spec = TrackSpec.coerce(track)
    if spec is None:
        return None
    idx = [int(i) for i in spec.select(traj.times.size) if np.all(np.isfinite(traj.modes[0, i]))]
    if not idx:
        raise NearoptError("draw 0 recorded no finite point to track the curvature at")
    theta = obj.point.parameters()
    points = [obj.point.with_parameters(theta + U @ traj.modes[0, i]) for i in idx]
    teacher = getattr(obj, "teacher", None) or obj.point
    return track_curvature(Problem(teacher, student=points[0]), points, steps=traj.times[idx], spec=spec, clock=clock)


def _record(obj: Objective, delta: torch.Tensor, U: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with torch.no_grad():
        return obj.loss_at(delta).numpy(), torch.linalg.vector_norm(delta, dim=-1).numpy(), (delta @ U).numpy()


def train_gd(obj: Objective, delta0: np.ndarray, lr: float, times: np.ndarray, U: np.ndarray, progress: bool = False,
             track: TrackSpec | int | None = None) -> Trajectory:
    """Full-batch GD ``delta <- delta - lr grad L(theta* + delta)`` for draws ``delta0`` ``(K, P)``.

    ``times`` are integer step counts ``(T,)`` (ascending). Stops early, marking
    ``diverged``, if the loss becomes non-finite or exceeds ``1e6`` times its start.
    ``track``: the curvature along draw 0 at the recorded steps (:func:`track_trajectory`).
    """
    spec = TrackSpec.coerce(track)
    if spec is not None:
        spec.require(delta0.shape[1])
    steps = np.asarray(times, dtype=np.int64)
    if np.any(np.diff(steps) < 0) or steps[0] < 0:
        raise NearoptError("GD record times must be ascending non-negative step counts")
    d = torch.as_tensor(np.asarray(delta0, dtype=np.float64)).clone()
    Ut = torch.as_tensor(U)
    K, T = d.shape[0], steps.size
    loss, dist, modes = np.full((K, T), np.nan), np.full((K, T), np.nan), np.full((K, T, d.shape[1]), np.nan)
    t, limit = 0, None
    bar = tqdm(total=int(steps[-1]), disable=not progress, desc="GD", unit="step")
    for i, target in enumerate(steps):
        while t < target:
            d -= lr * obj.gradient_at(d)
            t += 1
            bar.update(1)
        loss[:, i], dist[:, i], modes[:, i] = _record(obj, d, Ut)
        limit = 1e6 * loss[:, 0].max() if limit is None else limit
        if not np.all(np.isfinite(loss[:, i])) or loss[:, i].max() > limit:
            bar.close()
            traj = Trajectory(steps.astype(float), loss, dist, modes, diverged=True)
            return dataclasses.replace(traj, curvature=track_trajectory(obj, traj, U, spec))
    bar.close()
    traj = Trajectory(steps.astype(float), loss, dist, modes)
    return dataclasses.replace(traj, curvature=track_trajectory(obj, traj, U, spec))


def flow_atol(obj: Objective) -> float:
    """Default absolute tolerance of the flow integrator: ``100 eps max|theta*|``."""
    return 100.0 * EPS * float(obj.theta_star.abs().max())


def train_flow(
    obj: Objective,
    delta0: np.ndarray,
    lr: float,
    times: np.ndarray,
    U: np.ndarray,
    *,
    method: str = "BDF",
    rtol: float = 1e-9,
    atol: float | None = None,
    progress: bool = False,
    track: TrackSpec | int | None = None,
) -> Trajectory:
    """Gradient flow ``d delta/dt = -lr grad L`` for each draw of ``delta0`` ``(K, P)``.

    Integrated by ``solve_ivp(method=...)`` (``BDF``, ``Radau`` or ``LSODA``) in the
    eigen-coordinates ``y = U^T delta`` with the exact Jacobian ``-lr U^T H U``.
    ``atol`` defaults to :func:`flow_atol`: asking for more than the rounding noise
    of the gradient allows makes the implicit solver's Newton iterations fail and its
    steps collapse. Modes below ``atol`` are uncontrolled but carry a loss under
    ``1/2 tr(H) atol**2`` (added to the floor by :func:`run_dynamics`).
    ``track``: the curvature along draw 0 at the recorded times (:func:`track_trajectory`).
    """
    spec = TrackSpec.coerce(track)
    if spec is not None:
        spec.require(delta0.shape[1])
    if method not in ("BDF", "Radau", "LSODA"):
        raise NearoptError(f"unknown stiff integrator {method!r}; choose BDF, Radau or LSODA")
    Ut = torch.as_tensor(U)
    t_eval = np.asarray(times, dtype=np.float64)
    atol = flow_atol(obj) if atol is None else atol

    def rhs(_t, y):
        delta = Ut @ torch.as_tensor(y)
        return -lr * (Ut.T @ obj.gradient_at(delta)).numpy()

    def jac(_t, y):
        delta = Ut @ torch.as_tensor(y)
        return -lr * (Ut.T @ obj.hessian_at(delta) @ Ut).numpy()

    K, P, T = delta0.shape[0], delta0.shape[1], t_eval.size
    loss, dist, modes = np.full((K, T), np.nan), np.full((K, T), np.nan), np.full((K, T, P), np.nan)
    stalled = []
    for k in tqdm(range(K), disable=not progress, desc="flow", unit="draw"):
        Y, stop = _integrate(rhs, jac, U.T @ delta0[k], t_eval, method, rtol, atol)
        if stop is not None:
            stalled.append({"draw": k, "time": stop[0], "reason": stop[1]})
        done = np.all(np.isfinite(Y), axis=1)
        loss[k, done], dist[k, done], modes[k, done] = _record(obj, torch.as_tensor(Y[done]) @ Ut.T, Ut)
    traj = Trajectory(t_eval, loss, dist, modes, stalled=stalled)
    return dataclasses.replace(traj, curvature=track_trajectory(obj, traj, U, spec, clock="time"))


def _integrate(rhs, jac, y0: np.ndarray, t_eval: np.ndarray, method: str, rtol: float, atol: float) -> tuple[np.ndarray, tuple[float, str] | None]:
    """States ``(T, P)`` at ``t_eval`` (ascending, from 0) by stepping ``scipy.integrate``'s solver.

    What ``solve_ivp`` does, plus a stall guard: near the rounding level of the
    gradient the implicit solver's Newton iterations can keep failing, its steps
    shrink and every step recomputes the Jacobian, so the run crawls without ever
    failing, or ends with "step size less than spacing between numbers". Past
    :data:`MAX_FLOW_JACOBIANS` Jacobians, :data:`MAX_FLOW_STEPS` steps or at such a
    failure the draw stops; its remaining points are ``nan`` and ``(time, reason)``
    is returned (``None`` if it reached the end).
    """
    calls = [0]

    def counted_jac(t, y):
        calls[0] += 1
        return jac(t, y)

    solver_cls = {"BDF": integrate.BDF, "Radau": integrate.Radau, "LSODA": integrate.LSODA}[method]
    solver = solver_cls(rhs, 0.0, y0, t_eval[-1], rtol=rtol, atol=atol, jac=counted_jac)
    Y = np.full((t_eval.size, y0.size), np.nan)
    i = int(np.searchsorted(t_eval, 0.0, side="right"))
    Y[:i] = y0
    steps = 0
    while i < t_eval.size:
        if calls[0] > MAX_FLOW_JACOBIANS or steps > MAX_FLOW_STEPS:
            return Y, (float(solver.t), f"{calls[0]} Jacobians / {steps} steps")
        msg = solver.step()
        steps += 1
        if solver.status == "failed":
            return Y, (float(solver.t), str(msg))
        j = int(np.searchsorted(t_eval, solver.t, side="right"))
        if j > i:
            Y[i:j] = solver.dense_output()(t_eval[i:j]).T
            i = j
    return Y, None


@dataclass
class DynamicsResult:
    """Measured and predicted training curves near the optimum (see :func:`run_dynamics`).

    Arrays: ``times`` ``(T,)``; ``loss``, ``predicted_draw``, ``distance`` ``(K, T)``;
    ``predicted_mean`` ``(T,)`` (``<L_t>`` over ``delta_0``); ``mode_power`` ``(T, P)`` =
    mean over draws of ``c_k(t)**2 / c_k``-variance (1 at ``t = 0`` in expectation);
    ``eigenvalues`` ``(P,)`` ascending. ``valid`` ``(T,)`` marks times whose predicted loss
    lies at least ``FLOOR_MARGIN`` above the floating-point floor ``floor``.
    """

    spectrum: Spectrum
    flow: bool
    lr: float
    sigma0: float
    times: np.ndarray
    loss: np.ndarray
    distance: np.ndarray
    predicted_draw: np.ndarray
    predicted_mean: np.ndarray
    mode_power: np.ndarray
    floor: float
    diverged: bool
    objective_kind: str
    info: dict[str, Any] = field(default_factory=dict)
    #: the population Hessian along draw 0 (``track=``), else ``None``
    curvature: CurvatureTrack | None = None
    #: where the quadratic prediction applies (:func:`dynamics_regime`), its warnings, the time to a target (:func:`dynamics_target`)
    regime: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    target: dict[str, Any] | None = None

    @property
    def eigenvalues(self) -> np.ndarray:
        return self.spectrum.eigenvalues

    @property
    def mean_loss(self) -> np.ndarray:
        """Measured ``<L_t>`` over the draws, shape ``(T,)``."""
        return self.loss.mean(0)

    @property
    def valid(self) -> np.ndarray:
        return (self.predicted_draw.mean(0) > FLOOR_MARGIN * self.floor) & np.all(np.isfinite(self.loss), axis=0)

    def draw_error(self) -> float:
        """``max_{k,t} |L_k(t) / L^pred_k(t) - 1|`` over valid times: each draw against its own prediction."""
        v = self.valid
        return float(np.max(np.abs(self.loss[:, v] / self.predicted_draw[:, v] - 1.0))) if v.any() else float("nan")

    def mean_error(self) -> float:
        """``max_t |<L_t>_meas / <L_t>_pred - 1|`` against the ensemble formula (has sampling noise)."""
        v = self.valid
        return float(np.max(np.abs(self.mean_loss[v] / self.predicted_mean[v] - 1.0))) if v.any() else float("nan")

    def ensemble_deviation(self) -> float:
        """``max_t |<L>_meas / <L^pred_draw> - 1|``: mean of the draws against the mean of their own predictions.

        Free of sampling noise in ``delta_0``; only nonlinearity (and the float floor) moves it.
        This is the breakdown metric.
        """
        v = self.valid
        pred = self.predicted_draw.mean(0)
        return float(np.max(np.abs(self.mean_loss[v] / pred[v] - 1.0))) if v.any() else float("nan")

    def zero_mode_drift(self) -> float:
        """``max |c_k(T) - c_k(0)| / ||delta_0||`` over draws and zero modes (0 if there are none).

        In the quadratic picture zero modes never move; nonlinearity moves them by
        ``O(sigma0)`` relative.
        """
        n_zero = self.eigenvalues.size - self.spectrum.rank.rank
        if n_zero == 0:
            return 0.0
        modes = self.info["modes"]
        last = np.where(np.all(np.isfinite(modes[..., 0]), axis=0))[0][-1]
        move = np.abs(modes[:, last, :n_zero] - modes[:, 0, :n_zero]).max(1)
        return float(np.max(move / np.linalg.norm(modes[:, 0], axis=1)))

    def slowest_remaining(self) -> int:
        """Index (ascending order) of the nonzero mode with the largest power at the last valid time."""
        n_zero = self.eigenvalues.size - self.spectrum.rank.rank
        v = np.where(self.valid)[0]
        last = v[-1] if v.size else -1
        power = self.mode_power[last, n_zero:] * self.eigenvalues[n_zero:]
        return int(n_zero + np.argmax(power))

    def late_time(self) -> dict[str, Any]:
        """Fitted late-time slope of ``log <L_t>`` against the theory rates.

        The window is the valid times where the slowest nonzero mode carries at
        least ``LATE_SHARE`` of the predicted loss (from these draws). Returns the
        window, the fitted slopes of the measured and the predicted curves, the
        rates of :func:`late_time_rate` and relative errors (measured slope vs
        ``-2 lr lambda_min`` and vs the exact GD rate).
        """
        lam_min = self.spectrum.smallest_nonzero
        rates = late_time_rate(lam_min, self.lr, self.flow)
        k_min = self.eigenvalues.size - self.spectrum.rank.rank
        pred_slow = predict_draw_loss(self.eigenvalues[k_min : k_min + 1], self.info["c0"][:, k_min : k_min + 1], self.lr, self.times, self.flow).mean(0)
        pred = self.predicted_draw.mean(0)
        with np.errstate(invalid="ignore", divide="ignore"):
            share = pred_slow / pred
        window = self.valid & (share >= LATE_SHARE) & (self.times > 0)
        out: dict[str, Any] = {
            "lambda_min_nonzero": lam_min,
            "rate_continuous": rates["continuous"],
            "rate_exact": rates["exact"],
            "window": [float(self.times[window].min()), float(self.times[window].max())] if window.sum() >= 2 else None,
            "window_points": int(window.sum()),
        }
        slope = fit_log_slope(self.times[window], self.mean_loss[window]) if window.sum() >= 3 else float("nan")
        out["slope_measured"] = slope
        out["slope_predicted_curve"] = fit_log_slope(self.times[window], pred[window]) if window.sum() >= 3 else float("nan")
        out["rel_error_vs_continuous"] = abs(slope / -rates["continuous"] - 1.0) if math.isfinite(slope) else float("nan")
        out["rel_error_vs_exact"] = abs(slope / -rates["exact"] - 1.0) if math.isfinite(slope) else float("nan")
        out["reached"] = bool(math.isfinite(slope))
        return out

    def to_dict(self, arrays: bool = True) -> dict[str, Any]:
        spec = self.spectrum
        d: dict[str, Any] = {
            "activation": spec.activation,
            "N_i": spec.n_inputs,
            "N_h": spec.n_hidden,
            "P": spec.n_params,
            "samples": spec.samples,
            "objective": self.objective_kind,
            "integrator": ("flow:" + self.info.get("method", "BDF")) if self.flow else "gd",
            "lr": self.lr,
            "sigma0": self.sigma0,
            "draws": int(self.loss.shape[0]),
            "rank": spec.rank.rank,
            "lambda_max": spec.largest,
            "lambda_min_nonzero": spec.smallest_nonzero,
            "condition_number": spec.condition_number,
            "stable_lr_bound": 2.0 / spec.largest,
            "float_floor": self.floor,
            "diverged": self.diverged,
            "stalled_draws": list(self.info.get("stalled", [])),
            "max_rel_error_per_draw": self.draw_error(),
            "max_rel_error_mean": self.mean_error(),
            "ensemble_deviation": self.ensemble_deviation(),
            "zero_mode_drift": self.zero_mode_drift(),
            "slowest_remaining_mode": self.slowest_remaining(),
            "slowest_nonzero_mode": int(self.eigenvalues.size - spec.rank.rank),
            "late_time": self.late_time(),
            "regime": self.regime,
            "warnings": self.warnings,
            "target": self.target,
        }
        if self.curvature is not None:
            d["curvature"] = self.curvature.to_dict()
        if arrays:
            d.update(
                times=self.times,
                loss_mean=self.mean_loss,
                predicted_mean=self.predicted_mean,
                predicted_draw_mean=self.predicted_draw.mean(0),
                loss=self.loss,
                distance_mean=self.distance.mean(0),
                valid=self.valid,
                eigenvalues=self.eigenvalues,
                mode_power=self.mode_power,
            )
        return d


def auto_lr(lambda_max: float) -> float:
    """Default step ``1/lambda_max``: stable with a factor 2 margin, every mode decays monotonically."""
    return 1.0 / lambda_max


def auto_horizon(spec: Spectrum, mode_variance: np.ndarray, lr: float, flow: bool = False, floor: float = 0.0, decay: float = 12.0) -> float:
    """Time horizon that reaches the late-time regime, if the float floor allows.

    At least ``decay / (2 lr lambda_min)`` (the slowest mode's loss down by
    ``e**-decay``); extended, in steps of that unit, until the slowest nonzero mode
    carries ``LATE_SHARE`` of the predicted ``<L_t>``, unless ``<L_t>`` would first
    fall below ``FLOOR_MARGIN * floor``.
    """
    lam = spec.eigenvalues
    k = lam.size - spec.rank.rank
    unit = 1.0 / (2.0 * lr * spec.smallest_nonzero)
    t = decay * unit
    for _ in range(40):
        total = predict_mean_loss(lam, mode_variance, lr, np.array([t]), flow)[0]
        slow = predict_mean_loss(lam[k : k + 1], mode_variance[k : k + 1], lr, np.array([t]), flow)[0]
        if total < FLOOR_MARGIN * floor:
            return t
        if slow >= LATE_SHARE * total:
            return 1.5 * t  # room for a fitting window inside the regime
        t += 2.0 * unit
    return t


def run_dynamics(
    net: TwoLayerNet,
    X=None,
    *,
    sigma0: float = 1e-3,
    lr: float | str = "auto",
    steps: float | str = "auto",
    draws: int = 8,
    flow: bool = False,
    seed: int = 0,
    points: int = 60,
    layer_scales: tuple[float, float] | None = None,
    method: str = "BDF",
    rtol: float = 1e-9,
    objective: Objective | None = None,
    eigensystem: tuple[Spectrum, np.ndarray] | None = None,
    progress: bool = False,
    track: TrackSpec | int | None = None,
    target: float | None = None,
) -> DynamicsResult:
    """Train students from ``theta* + delta_0`` and predict the curves from the Hessian at ``theta*``.

    Parameters
    ----------
    net : TwoLayerNet
        The teacher (the optimum).
    X : array, shape (N, N_i), optional
        Inputs of the batch loss; ``None`` for the population loss (closed form for
        linear/quadratic, a fixed large sample otherwise; see :func:`make_objective`).
    sigma0 : float
        Scale of ``delta_0 ~ N(0, sigma0**2 I)`` (times ``layer_scales`` per layer).
    lr : float or "auto"
        Step size ``eta`` (``auto``: ``1/lambda_max``). GD requires ``eta < 2/lambda_max``.
    steps : float or "auto"
        Horizon (GD steps, or flow time in the same units); ``auto``: see
        :func:`auto_horizon` (reaches the late-time regime where the float floor allows).
    draws : int
        Number ``K`` of independent ``delta_0``.
    flow : bool
        Gradient flow by a stiff integrator instead of GD.
    track : TrackSpec or int, optional
        The curvature (exact population Hessian) along draw 0 at the recorded times
        (:func:`track_trajectory`; an integer is ``k``): :attr:`DynamicsResult.curvature`.
    target : float, optional
        A loss ``eps``: ``result.target`` gets the predicted and measured times to reach it (:func:`dynamics_target`).

    Returns
    -------
    DynamicsResult
        The measured and predicted curves; ``result.regime`` and ``result.warnings`` say whether the
        start lies in the quadratic regime (:func:`dynamics_regime`), each warning also issued by
        :func:`warnings.warn`.
    """
    spec_track = TrackSpec.coerce(track)
    if spec_track is not None:
        spec_track.require(net.n_params)
    if target is not None:
        require_positive_finite(target, "target loss")
    obj = objective if objective is not None else make_objective(net, X)
    spec, U = eigensystem if eigensystem is not None else obj.eigensystem()
    lam = spec.eigenvalues
    lr = auto_lr(spec.largest) if lr == "auto" else require_positive_finite(lr, "learning rate")
    if not flow:
        check_step_size(lr, spec.largest)
    delta0, sigma = sample_displacements(obj.n_params, draws, sigma0, seed, layer_scales, net.W1.size)
    mode_var = (U**2 * sigma[:, None] ** 2).sum(0)  # u_k^T Sigma u_k
    floor = float_floor(obj, spec)
    if flow:
        floor = max(floor, 0.5 * float(lam.sum()) * flow_atol(obj) ** 2)
    if steps == "auto":
        if spec.rank.rank == 0:
            raise NearoptError("the Hessian is zero: nothing decays, give --steps explicitly")
        horizon = auto_horizon(spec, mode_var, lr, flow, floor)
    else:
        horizon = float(steps)
    if not flow and horizon > MAX_GD_STEPS:
        raise NearoptError(
            f"{horizon:.3g} GD steps needed (condition number {spec.condition_number:.3g}); "
            f"use gradient flow (--flow) or fewer --steps (at most {MAX_GD_STEPS})"
        )
    times = time_grid(horizon, points, integer=not flow)
    traj = (
        train_flow(obj, delta0, lr, times, U, method=method, rtol=rtol, progress=progress, track=spec_track)
        if flow
        else train_gd(obj, delta0, lr, times, U, progress=progress, track=spec_track)
    )
    c0 = delta0 @ U  # (K, P)
    res = DynamicsResult(
        spectrum=spec,
        flow=flow,
        lr=lr,
        sigma0=float(sigma0),
        times=traj.times,
        loss=traj.loss,
        distance=traj.distance,
        predicted_draw=predict_draw_loss(lam, c0, lr, traj.times, flow),
        predicted_mean=predict_mean_loss(lam, mode_var, lr, traj.times, flow),
        mode_power=(traj.modes**2).mean(0) / mode_var[None, :],
        floor=floor,
        diverged=traj.diverged,
        objective_kind=obj.kind,
        info={"c0": c0, "modes": traj.modes, "method": method, "rtol": rtol, "seed": seed, "layer_scales": layer_scales, "stalled": traj.stalled,
              "mode_variance": mode_var},
        curvature=traj.curvature,
    )
    res.regime, res.warnings = dynamics_regime(res)
    for msg in res.warnings:
        warnings.warn(msg, stacklevel=2)
    if target is not None:
        res.target = dynamics_target(res, target)
    return res


def dynamics_regime(res: DynamicsResult) -> tuple[dict[str, Any], list[str]]:
    """Whether the start of ``res`` lies in the quadratic regime, and the warnings where it does not.

    ``{"start_error", "start_error_limit", "quadratic", "critical_lr", "lr_over_critical"}``: the start
    error of :func:`~nearopt.dynamics.regime.start_error` (the trained loss at ``theta* + delta_0``
    against ``1/2 delta_0^T H delta_0``, per draw, from the recorded ``t = 0``), and for GD ``eta``
    against ``2 / lambda_max`` (larger rates are refused before training; flow has no critical rate).
    """
    err = start_error(res.loss[:, 0], res.predicted_draw[:, 0], floor=res.floor) if res.times.size and res.times[0] == 0 else float("nan")
    crit = math.inf if res.flow else 2.0 / res.spectrum.largest
    regime = {"start_error": err, "start_error_limit": GD_START_LIMIT, "quadratic": not err > GD_START_LIMIT, **lr_verdict(res.lr, crit)}
    return regime, start_verdict(err, res.sigma0, GD_START_LIMIT)


def dynamics_target(res: DynamicsResult, eps: float) -> dict[str, Any]:
    """Time to a mean loss ``eps``: predicted (first GD step, or flow time, where ``<L_t>`` of the ensemble formula,
    and of the same draws' predictions, is ``<= eps``, searched beyond the horizon too) and measured (first
    recorded time where the mean over draws is ``<= eps``; the crossing lies after ``previous_record``)."""
    eps = require_positive_finite(eps, "target loss")
    lam, var, c0 = res.eigenvalues, res.info["mode_variance"], res.info["c0"]
    horizon = float(res.times[-1])
    predicted = {
        "ensemble": first_step_below(lambda t: predict_mean_loss(lam, var, res.lr, t, res.flow), eps, horizon, integer=not res.flow, width=lam.size),
        "same_draws": first_step_below(lambda t: predict_draw_loss(lam, c0, res.lr, t, res.flow).mean(0), eps, horizon, integer=not res.flow,
                                       width=lam.size * c0.shape[0]),
    }
    unit = "flow times" if res.flow else "GD steps"
    return target_block(eps, predicted, measured_crossing(res.times, res.mean_loss, eps),
                        f"recorded {unit}: the first crossing of the measured mean lies in (previous_record, step]")


def float_floor(obj: Objective, spec: Spectrum) -> float:
    """Loss below which float64 rounding dominates: ``1/2 (P eps)**2 E[f*(x)**2] max(1, kappa)``.

    Residuals carry a rounding error ``~ P eps |f|``; the condition number ``kappa``
    accounts for gradient rounding amplified in the slowest modes.
    """
    kappa = spec.condition_number if math.isfinite(spec.condition_number) else 1.0
    # objectives that cannot subtract before squaring (the exact population loss) state their own floor
    return max(0.5 * (obj.n_params * EPS) ** 2 * _output_power(obj) * max(1.0, kappa), getattr(obj, "loss_floor", 0.0))


def _output_power(obj: Objective) -> float:
    """``E[f*(x)**2]`` of ``theta*`` on the objective's inputs: the mean over its inputs ``X``, or for a population
    objective (``X is None``) the exact value for ``x ~ N(0, I)`` (:func:`nearopt.gaussian.expectations.output_power`; the
    quadratic closed form with input kurtosis takes it too: a rounding scale, not a loss)."""
    net = obj.point
    if obj.X is not None:
        return float(np.mean(net.forward(obj.X.numpy()) ** 2))
    return output_power(net)
