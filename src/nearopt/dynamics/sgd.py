"""Stochastic gradient descent near the optimum: ``R`` runs at once in torch, against the predictions.

:func:`simulate_sgd` trains ``R`` independent students from ``theta* + delta_0``,
``delta_0 ~ N(0, sigma0^2 I)`` on the trained parameters, by
``theta <- theta - eta grad (1/2B) sum_b (f_theta(x_b) - y_b)^2`` with labels
``y = f*(x) + sigma xi``. Inputs are *online* (fresh ``x ~ N(0, Sigma)`` every step) or a fixed
training set of ``N`` samples (one set, seeded, shared by the runs; its labels' noise is drawn once)
visited with replacement or in epochs without replacement (``N // B`` batches per epoch, the rest
of each shuffled epoch dropped). All ``R`` runs step together: one batched forward and an explicit
gradient ``J^T r / B`` per step, on the CPU or a GPU.

At the recorded steps (log-spaced by default) it records the **excess population loss**
``L(theta) = 1/2 E(f_theta - f*)^2`` of every run exactly, by :func:`population_loss_batch`:
``1/2 beta^T Phi beta`` over the units of student and teacher with closed-form pair kernels
(:func:`nearopt.gaussian.expectations.kernel`: linear and polynomials: Mehler; erf: arcsine; ReLU:
arc-cosine; the checked quadrature for any other activation). :func:`run_sgd` adds the exact and spectral predictions of
:mod:`nearopt.dynamics.sgd_predict`.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..curvature.base import resolve_device
from ..curvature.population import PopulationHessian
from ..curvature.tracking import CurvatureTrack, TrackSpec, track_curvature
from ..errors import NearoptError, require_nonneg_finite, require_positive_finite, require_positive_int
from ..gaussian.expectations import kernel, output_power
from ..model.network import TwoLayerNet
from ..model.problem import Problem, as_problem, require_paper_setting
from ..resources import dense_bytes, require_memory
from ..threads import sized_threads
from ..tolerances import EPS
from .regime import SGD_START_LIMIT, SPECTRAL_RATIO_RANGE, first_step_below, lr_verdict, measured_crossing, start_error, start_verdict, target_block
from .sgd_predict import SecondMomentModel, exact_model, fixed_set_model, predictions, problem_spectrum, spectrum_model, training_set

__all__ = [
    "DIVERGENCE_FACTOR", "MAX_STEPS", "pair_kernel", "PopulationLoss", "record_steps", "REGIME_DRAWS", "run_sgd", "SAMPLING", "sgd_memory", "SGDResult",
    "SGDSimulation", "simulate_sgd", "sgd_regime", "sgd_start_error", "sgd_target", "TAIL_SHARE"
]

#: a run has diverged once its loss exceeds this times the mean initial loss (or is not finite)
DIVERGENCE_FACTOR = 1e8
#: most SGD steps one call accepts
MAX_STEPS = 10**9
#: the mean over runs is flagged unreliable where one run carries more than this share of it
TAIL_SHARE = 0.25
SAMPLING = ("online", "replacement", "epochs")
#: the start error of the regime check is measured on the first this many runs' ``delta_0``
REGIME_DRAWS = 16


def record_steps(steps: int, points: int = 40) -> np.ndarray:
    """``0`` and ``points`` log-spaced integer steps up to ``steps`` (unique, ascending), shape ``(T,)``."""
    steps = require_positive_int(steps, "number of steps")
    t = np.unique(np.round(np.logspace(0.0, math.log10(steps), require_positive_int(points, "number of record points"))))
    return np.concatenate([[0], t.astype(np.int64)])


# --------------------------------------------------------------------------- exact population loss, batched
def pair_kernel(activation, G: torch.Tensor) -> torch.Tensor:
    """``Phi[i, j] = E[g(u_i) g(u_j)]`` ``(..., n, n)`` for Gram matrices ``G`` ``(..., n, n)`` of the pre-activations.

    :func:`nearopt.gaussian.expectations.kernel` on the upper triangle (the activation's closed form, or
    the checked quadrature), mirrored.
    """
    n = G.shape[-1]
    iu, ju = np.triu_indices(n)
    Gn = G.detach().cpu().numpy()
    d = np.diagonal(Gn, axis1=-2, axis2=-1)
    upper = kernel(activation, d[..., iu], 0.5 * (Gn[..., iu, ju] + Gn[..., ju, iu]), d[..., ju])
    Phi = np.empty_like(Gn)
    Phi[..., iu, ju] = upper
    Phi[..., ju, iu] = upper
    return torch.as_tensor(Phi, dtype=G.dtype, device=G.device)


class PopulationLoss:
    """Exact ``L = 1/2 E_x(f_student(x) - f_teacher(x))^2`` for stacks of students, ``x ~ N(0, Sigma)``.

    Call with first layers ``W1`` ``(R, K, N_i)`` and second layers ``v`` ``(R, K)``; returns ``(R,)``.
    Rounding: ``1/2 beta^T Phi beta`` is exact up to ``~ (K + M) eps E[f*^2]`` absolute
    (:attr:`floor`), except for linear activations, whose ``1/2 |Sigma^{1/2} (W1^T v - W1*^T v*)|^2``
    subtracts before squaring.
    """

    def __init__(self, problem: Problem, device: torch.device):
        self.problem = problem
        t = problem.teacher
        self.act = t.activation
        self.W1t = torch.as_tensor(t.W1, dtype=torch.float64, device=device)
        self.vt = torch.as_tensor(t.W2.ravel(), dtype=torch.float64, device=device)
        law = problem.inputs
        self.cov = None if law.isotropic else torch.tensor(np.array(law.covariance), dtype=torch.float64, device=device)
        c = self.act.polynomial_coefficients
        self.linear = c is not None and len(c) == 2 and c[0] == 0.0
        self.slope = float(c[1]) if c is not None and self.linear else 1.0
        power = output_power(t, law)
        self.floor = (problem.point.n_hidden + t.n_hidden) * EPS * power

    def _pairs(self, W1: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        R = W1.shape[0]
        Om = torch.cat([W1, self.W1t.expand(R, -1, -1)], 1)  # (R, K+M, N_i)
        beta = torch.cat([v, -self.vt.expand(R, -1)], 1)
        G = Om @ (Om if self.cov is None else Om @ self.cov).transpose(1, 2)
        G = 0.5 * (G + G.transpose(1, 2))
        try:
            return 0.5 * torch.einsum("ri,rij,rj->r", beta, pair_kernel(self.act, G), beta)
        except NearoptError:  # some run's weights have grown past what the moments can hold: that run diverged
            return torch.stack([self._pair_loss_or_inf(G[r], beta[r]) for r in range(R)])

    def _pair_loss_or_inf(self, G: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        """One run's ``1/2 beta^T Phi beta``, ``+inf`` when its Gram matrix ``G`` ``(n, n)`` is beyond float64's moments."""
        if not bool(torch.isfinite(G).all()):
            return torch.tensor(math.inf, dtype=G.dtype, device=G.device)
        try:
            return 0.5 * beta @ pair_kernel(self.act, G) @ beta
        except NearoptError:
            return torch.tensor(math.inf, dtype=G.dtype, device=G.device)

    def __call__(self, W1: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if self.linear:
            d = (v[:, :, None] * W1).sum(1) - self.vt @ self.W1t  # (R, N_i)
            q = d * d if self.cov is None else d * (d @ self.cov)
            return 0.5 * self.slope**2 * q.sum(1)
        return torch.clamp(self._pairs(W1, v), min=0.0)


# --------------------------------------------------------------------------- simulation
@dataclass
class SGDSimulation:
    """What :func:`simulate_sgd` recorded: ``steps`` ``(T,)``, per-run ``loss`` ``(R, T)`` (``inf`` after divergence)."""

    steps: np.ndarray
    loss: np.ndarray
    diverged: np.ndarray
    seconds: float
    floor: float
    info: dict[str, Any] = field(default_factory=dict)
    #: the population Hessian along run 0 at the recorded steps (``track=``), else ``None``
    curvature: CurvatureTrack | None = None

    @property
    def runs(self) -> int:
        return int(self.loss.shape[0])

    @property
    def mean(self) -> np.ndarray:
        """Mean excess population loss over runs ``(T,)`` (``inf`` once a run diverged)."""
        return self.loss.mean(0)

    @property
    def sem(self) -> np.ndarray:
        """Standard error of :attr:`mean` ``(T,)``: ``std / sqrt(R)`` (``nan`` for one run)."""
        if self.runs < 2:
            return np.full(self.steps.size, np.nan)
        with np.errstate(invalid="ignore"):
            return self.loss.std(0, ddof=1) / math.sqrt(self.runs)

    @property
    def tail_share(self) -> np.ndarray:
        """Share of the summed loss carried by the single largest run ``(T,)``: near 1 the mean is one rare run."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.loss.max(0) / self.loss.sum(0)

    @property
    def reliable(self) -> np.ndarray:
        """Times where no run diverged and no single run carries more than :data:`TAIL_SHARE` of the mean."""
        return np.isfinite(self.mean) & (self.tail_share <= TAIL_SHARE)

    @property
    def throughput(self) -> float:
        """Run-steps per second (``R x steps / seconds``)."""
        return float(self.runs * self.steps[-1] / self.seconds) if self.seconds > 0 else float("nan")


def _check_args(lr, batch, sigma0, noise, runs, steps, sampling, samples):
    lr = require_positive_finite(lr, "learning rate")
    batch = require_positive_int(batch, "batch size")
    require_positive_finite(sigma0, "sigma0")
    require_nonneg_finite(noise, "label noise sigma")
    runs = require_positive_int(runs, "number of runs")
    steps = require_positive_int(steps, "number of steps")
    if steps > MAX_STEPS:
        raise NearoptError(f"{steps} steps: at most {MAX_STEPS}")
    if sampling not in SAMPLING:
        raise NearoptError(f"unknown sampling {sampling!r}; choose {', '.join(SAMPLING)}")
    if sampling == "online" and samples is not None:
        raise NearoptError("online SGD draws fresh inputs: give samples only with sampling 'replacement' or 'epochs'")
    if sampling != "online":
        if samples is None:
            raise NearoptError(f"sampling {sampling!r} needs a training set size (samples)")
        samples = require_positive_int(samples, "number of training samples")
        if sampling == "epochs" and batch > samples:
            raise NearoptError(f"batch size {batch} exceeds the {samples} training samples of an epoch")
    return lr, batch, runs, steps, samples


def _step_flops(problem, runs, batch) -> float:
    """Multiply-adds of one SGD step's forward pass (the thread choice of :mod:`nearopt.threads`)."""
    try:
        pr = as_problem(problem)
        return float(runs) * float(batch) * (pr.point.n_hidden + pr.teacher.n_hidden) * pr.n_inputs
    except (TypeError, ValueError, NearoptError):  # bad arguments: simulate_sgd reports them
        return 0.0


def sgd_memory(problem: Problem, runs: int, batch: int, points: int, samples: int | None, sampling: str) -> int:
    """Bytes the simulation holds at once (checked before anything is allocated)."""
    K, M, ni = problem.point.n_hidden, problem.teacher.n_hidden, problem.n_inputs
    per_step = runs * batch * (ni + 4 * K + 2 * M + 4)  # inputs, pre-activations, g, g', residuals
    state = runs * 4 * (K * ni + K)  # displacement, parameters, gradient
    record = runs * (points + 1) + runs * (K + M) ** 2 * 4  # losses and the kernel of one record
    data = 0 if samples is None else samples * (ni + 1) + (runs * samples * 2 if sampling == "epochs" else 0)
    return dense_bytes((per_step + state + record + data,))


@sized_threads(lambda a: (_step_flops(a["problem"], a["runs"], a["batch"]), a["device"]))
def simulate_sgd(
    problem: Problem | TwoLayerNet,
    *,
    lr: float,
    batch: int = 1,
    steps: int = 1000,
    sigma0: float = 1e-2,
    noise: float = 0.0,
    runs: int = 100,
    seed: int = 0,
    sampling: str = "online",
    samples: int | None = None,
    points: int = 40,
    record: np.ndarray | None = None,
    device: str | torch.device = "cpu",
    progress: bool = False,
    track: TrackSpec | int | None = None,
) -> SGDSimulation:
    """``runs`` independent SGD runs from ``theta* + delta_0`` (module docstring).

    Parameters
    ----------
    problem : Problem or TwoLayerNet
        Teacher (labels), student point (the start ``theta*``), input law, trained blocks.
    lr, batch : float, int
        ``eta > 0`` and ``B >= 1``.
    sigma0 : float
        Scale of ``delta_0`` on the trained parameters.
    noise : float
        Label noise ``sigma >= 0``.
    sampling : {"online", "replacement", "epochs"}
        Fresh inputs each step, or a fixed set of ``samples`` inputs.
    record : array of int, optional
        Steps to record (default :func:`record_steps` of ``steps`` and ``points``).
    track : TrackSpec or int, optional
        The curvature (exact population Hessian, :func:`~nearopt.curvature.tracking.track_curvature`)
        along **run 0** at the recorded steps ``track.every`` selects, until it diverges (an integer is ``k``).

    Notes
    -----
    Everything random is drawn from ``seed``: ``delta_0`` and a fixed training set
    (:func:`~nearopt.dynamics.sgd_predict.training_set`) by NumPy on every device; online inputs
    and label noise by NumPy on the CPU and a torch generator on a GPU; batch indices by a torch
    generator on the device. CPU and GPU runs differ in those draws, not in law.
    """
    pr = as_problem(problem)
    require_paper_setting(pr, "SGD")
    lr, batch, runs, steps, samples = _check_args(lr, batch, sigma0, noise, runs, steps, sampling, samples)
    spec = TrackSpec.coerce(track)
    if spec is not None:
        spec.require(pr.n_params)
    rec = record_steps(steps, points) if record is None else np.unique(np.asarray(record, dtype=np.int64))
    if rec.size == 0 or rec[0] < 0 or rec[-1] > steps:
        raise NearoptError(f"record steps must lie in [0, {steps}]")
    dev = resolve_device(device)
    require_memory(sgd_memory(pr, runs, batch, rec.size, samples, sampling), f"{runs} SGD runs with batch {batch}", "fewer runs or a smaller batch", device=dev)
    sim = _Simulator(pr, lr, batch, noise, runs, seed, sampling, samples, dev)
    delta = sim.initial(sigma0)
    loss = np.full((runs, rec.size), np.nan)
    diverged = np.zeros(runs, dtype=bool)
    t, limit = 0, None
    tracked: dict[int, TwoLayerNet | None] = {} if spec is None else dict.fromkeys(spec.select(rec.size).tolist())
    bar = tqdm(total=int(rec[-1]), disable=not progress, desc="SGD", unit="step")
    start = time.perf_counter()
    for i, target in enumerate(rec):
        while t < target:
            sim.step(delta)
            t += 1
            if progress and t % 256 == 0:
                bar.update(256)
        L = sim.loss(delta).cpu().numpy()
        limit = DIVERGENCE_FACTOR * max(float(np.mean(L)), sim.population.floor) if limit is None else limit
        bad = ~np.isfinite(L) | (L > limit)
        if bad.any():
            diverged |= bad
            for blk in delta:  # park diverged runs at the optimum: no overflow, marked inf from here on
                blk[torch.as_tensor(bad, device=dev)] = 0.0
        L[diverged] = np.inf
        loss[:, i] = L
        if spec is not None and i in tracked and not diverged[0]:
            tracked[i] = pr.point.with_parameters(pr.point.parameters() + torch.cat([delta[0][0].ravel(), delta[1][0]]).cpu().numpy())
    seconds = time.perf_counter() - start
    bar.close()
    info = {"sampling": sampling, "samples": samples, "lr": lr, "batch": batch, "noise": noise, "sigma0": sigma0,
            "seed": seed, "device": str(dev), "trained": pr.trained, "dtype": "float64"}
    at = [i for i, net in tracked.items() if net is not None]
    curvature = None if spec is None or not at else track_curvature(pr, [net for net in tracked.values() if net is not None], steps=rec[at], spec=spec)
    return SGDSimulation(rec, loss, diverged, seconds, sim.population.floor, info, curvature)


class _Simulator:
    """State and one step of ``R`` runs; the displacement ``delta = (dW (R, K, N_i), dv (R, K))`` is updated in place."""

    def __init__(self, pr: Problem, lr, batch, noise, runs, seed, sampling, samples, dev):
        self.pr, self.lr, self.B, self.noise, self.R, self.dev = pr, lr, batch, noise, runs, dev
        self.act = pr.activation
        s, t = pr.point, pr.teacher
        f64 = dict(dtype=torch.float64, device=dev)
        self.W1s, self.vs = torch.as_tensor(s.W1, **f64), torch.as_tensor(s.W2.ravel(), **f64)
        self.W1t, self.vt = torch.as_tensor(t.W1, **f64), torch.as_tensor(t.W2.ravel(), **f64)
        law = pr.inputs
        self.L = None if law.isotropic else torch.as_tensor(law.sqrt_factor(), **f64)
        self.first, self.second = pr.trained in ("both", "first"), pr.trained in ("both", "second")
        self.gen = torch.Generator(device=dev)
        self.gen.manual_seed(int(seed))
        self.seed = int(seed)
        # NumPy's ziggurat draws float64 normals about twice as fast as torch on a CPU
        self.rng = np.random.default_rng([self.seed, 0x5D]) if dev.type == "cpu" else None
        self.sampling, self.samples = sampling, samples
        self.population = PopulationLoss(pr, dev)
        if sampling != "online":
            assert samples is not None
            X, eps = training_set(pr, samples, noise, seed)
            self.X = torch.as_tensor(X, dtype=torch.float64, device=dev)
            self.y = self._teacher(self.X) + torch.as_tensor(eps, dtype=torch.float64, device=dev)
            self.t_epoch = 0
            self.perm: torch.Tensor | None = None

    def initial(self, sigma0: float) -> tuple[torch.Tensor, torch.Tensor]:
        K, ni = self.W1s.shape
        rng = np.random.default_rng([self.seed, 0x56D])
        d = rng.standard_normal((self.R, K * ni + K)) * sigma0
        d[:, : K * ni] *= self.first
        d[:, K * ni :] *= self.second
        dt = torch.as_tensor(d, dtype=torch.float64, device=self.dev)
        return dt[:, : K * ni].reshape(self.R, K, ni).contiguous(), dt[:, K * ni :].contiguous()

    def _normal(self, shape: tuple[int, ...]) -> torch.Tensor:
        """Standard normal float64 draws of ``shape`` on the device (seeded)."""
        if self.rng is not None:
            return torch.from_numpy(self.rng.standard_normal(shape))
        return torch.randn(*shape, generator=self.gen, dtype=torch.float64, device=self.dev)

    def _inputs(self, shape: tuple[int, ...]) -> torch.Tensor:
        x = self._normal((*shape, self.pr.n_inputs))
        return x if self.L is None else x @ self.L

    def _teacher(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x @ self.W1t.T) @ self.vt

    def _batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        R, B = self.R, self.B
        if self.sampling == "online":
            x = self._inputs((R, B))
            y = self._teacher(x)
            if self.noise:
                y = y + self.noise * self._normal((R, B))
            return x, y
        assert self.samples is not None
        if self.sampling == "replacement":
            idx = torch.randint(self.samples, (R, B), generator=self.gen, device=self.dev)
        else:
            per_epoch = self.samples // B
            perm = self.perm
            if perm is None or self.t_epoch == per_epoch:
                perm = self.perm = torch.argsort(torch.rand(R, self.samples, generator=self.gen, device=self.dev), dim=1)
                self.t_epoch = 0
            idx = perm[:, self.t_epoch * B : (self.t_epoch + 1) * B]
            self.t_epoch += 1
        return self.X[idx], self.y[idx]

    def step(self, delta: tuple[torch.Tensor, torch.Tensor]) -> None:
        dW, dv = delta
        x, y = self._batch()  # (R, B, N_i), (R, B)
        W1, v = self.W1s + dW, self.vs + dv
        z = x @ W1.transpose(1, 2)  # (R, B, K)
        g = self.act(z)
        r = (g * v[:, None, :]).sum(-1) - y  # (R, B)
        scale = self.lr / self.B
        if self.second:
            dv -= scale * (r[:, :, None] * g).sum(1)
        if self.first:
            dW -= scale * (r[:, :, None] * self.act.derivative(z) * v[:, None, :]).transpose(1, 2) @ x

    def loss(self, delta: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        dW, dv = delta
        return self.population(self.W1s + dW, self.vs + dv)


# --------------------------------------------------------------------------- simulation + predictions
@dataclass
class SGDResult:
    """Measured and predicted excess population loss of SGD (:func:`run_sgd`); ``to_dict()`` is the CLI's JSON."""

    problem: Problem
    simulation: SGDSimulation
    exact: dict[str, Any] | None
    spectral: dict[str, Any] | None
    models: dict[str, SecondMomentModel]
    timings: dict[str, float]
    warnings: list[str] = field(default_factory=list)
    #: where the predictions apply (:func:`sgd_regime`) and the time to a target loss (:func:`sgd_target`)
    regime: dict[str, Any] = field(default_factory=dict)
    target: dict[str, Any] | None = None

    def failure(self) -> str | None:
        """Why the simulation measured nothing (every run diverged: the mean loss is ``inf`` at the end), else ``None``."""
        sim = self.simulation
        if not sim.diverged.all():
            return None
        crit = [f"{name} critical rate {block['critical_lr']:.6g}" for name, block in (("exact", self.exact), ("spectral", self.spectral))
                if block is not None and block.get("critical_lr") is not None and math.isfinite(block["critical_lr"])]
        return (f"training diverged: all {sim.runs} runs diverged at learning rate {sim.info['lr']:.6g}, batch {sim.info['batch']}, "
                f"label noise {sim.info['noise']:.3g}" + (f" ({', '.join(crit)})" if crit else "") + "; the loss is not measured")

    def to_dict(self) -> dict[str, Any]:
        sim, pr = self.simulation, self.problem
        net = pr.point

        def pick(block, key):
            return None if block is None else block[key]

        d: dict[str, Any] = {
            "activation": net.activation.name, "N_i": net.n_inputs, "N_h": net.n_hidden, "P": pr.n_params,
            "trained": pr.trained, "inputs": "gaussian" if pr.inputs.isotropic else pr.inputs.describe(),
            "lr": sim.info["lr"], "batch": sim.info["batch"], "noise": sim.info["noise"], "sigma0": sim.info["sigma0"],
            "runs": sim.runs, "seed": sim.info["seed"], "sampling": sim.info["sampling"], "samples": sim.info["samples"],
            "device": sim.info["device"], "dtype": "float64",
            "steps": sim.steps, "loss": sim.mean, "loss_sem": sim.sem, "loss_median": np.median(sim.loss, 0),
            "tail_share": sim.tail_share, "mean_reliable": sim.reliable, "diverged_runs": int(sim.diverged.sum()),
            "loss_floor": sim.floor,
            "predicted": pick(self.exact, "curve"), "predicted_spectral": pick(self.spectral, "curve"),
            "stationary_loss": pick(self.exact, "stationary_loss"), "stationary_loss_spectral": pick(self.spectral, "stationary_loss"),
            "critical_lr": pick(self.exact, "critical_lr"), "critical_lr_spectral": pick(self.spectral, "critical_lr"),
            "late_rate": pick(self.exact, "late_rate"), "late_rate_spectral": pick(self.spectral, "late_rate"),
            "late_rate_gd": self.gd_rate(),
            "exact_method": None if "exact" not in self.models else self.models["exact"].info,
            "timings": self.timings, "throughput_run_steps_per_s": sim.throughput, "warnings": self.warnings,
            "regime": self.regime, "target": self.target,
        }
        if sim.curvature is not None:
            d["curvature"] = sim.curvature.to_dict()
        return d

    def gd_rate(self) -> float | None:
        """GD's late-time rate ``-2 log|1 - eta lambda_min^+|`` per step (``2 eta lambda_min^+`` to first order)."""
        model = self.models.get("spectral") or self.models.get("exact")
        if model is None:
            return None
        f = abs(1.0 - self.simulation.info["lr"] * model.lambda_min)
        return math.inf if f == 0 else -2.0 * math.log(f)

    def within_error_bars(self, n_sem: float = 3.0, which: str = "exact") -> np.ndarray:
        """Per recorded step: ``|measured - predicted| <= n_sem * sem`` (``(T,)``; where the mean is reliable)."""
        block = self.exact if which == "exact" else self.spectral
        if block is None:
            raise NearoptError(f"no {which} prediction in this result")
        sim = self.simulation
        return np.abs(sim.mean - block["curve"]) <= n_sem * sim.sem


def run_sgd(
    problem: Problem | TwoLayerNet,
    *,
    lr: float,
    batch: int = 1,
    steps: int = 1000,
    sigma0: float = 1e-2,
    noise: float = 0.0,
    runs: int = 100,
    seed: int = 0,
    sampling: str = "online",
    samples: int | None = None,
    points: int = 40,
    device: str | torch.device = "cpu",
    exact: bool | str = "auto",
    spectral: bool = True,
    models: dict[str, SecondMomentModel] | None = None,
    progress: bool = False,
    track: TrackSpec | int | None = None,
    target: float | None = None,
) -> SGDResult:
    """Simulate SGD (:func:`simulate_sgd`) and predict it: exact linearised and spectral (online inputs).

    ``exact``: ``True`` requires the exact prediction, ``"auto"`` gives it where it runs (isotropic
    inputs, a student at a global minimum, the quadrature affordable) and says why not otherwise.
    ``models`` (``{"exact": ..., "spectral": ...}``) reuses recursions built before, e.g. across a sweep of ``eta`` and ``B``.
    Online SGD gets both predictions; a fixed training set sampled with replacement gets the
    linearised recursion over that set (:class:`~nearopt.dynamics.sgd_predict.FixedSetModel`, dense,
    at the teacher), epochs only the simulation.
    A learning rate at or beyond a critical one warns (the prediction diverges); the simulation still runs.
    ``track``: the curvature along run 0 (:func:`simulate_sgd`), in ``to_dict()["curvature"]``.
    ``result.regime`` says where the predictions apply (:func:`sgd_regime`: a start displacement beyond
    the quadratic regime, a near-critical rate, a spectral-only critical rate of a non-linear network
    warn too); ``target = eps`` adds ``result.target``, the steps to reach a mean loss ``eps``
    (:func:`sgd_target`).
    """
    pr = as_problem(problem)
    require_paper_setting(pr, "SGD")
    lr, batch, runs, steps, samples = _check_args(lr, batch, sigma0, noise, runs, steps, sampling, samples)
    if target is not None:
        require_positive_finite(target, "target loss")
    dev = resolve_device(device)
    require_memory(sgd_memory(pr, runs, batch, points, samples, sampling), f"{runs} SGD runs with batch {batch}", "fewer runs or a smaller batch", device=dev)
    timings: dict[str, float] = {}
    notes: list[str] = []
    exact_reason: str | None = None
    given = dict(models or {})
    models = {}
    if sampling == "online" and given:
        models = {k: given[k] for k in ("spectral", "exact") if k in given and (exact if k == "exact" else spectral)}
    elif sampling == "online":
        t0 = time.perf_counter()
        if spectral:
            try:
                models["spectral"] = spectrum_model(problem_spectrum(pr))
            except NearoptError as exc:  # e.g. a wider student on the minimum manifold: no population spectrum route
                notes.append(f"no spectral prediction: {exc}")
        timings["spectral_model_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        if exact:
            try:
                models["exact"] = exact_model(pr, check="auto")
                if "check_skipped" in models["exact"].info:
                    notes.append(f"exact prediction: {models['exact'].info['check_skipped']}")
            except NearoptError as exc:
                if exact is True:
                    raise
                exact_reason = str(exc)
                notes.append(f"no exact prediction: {exc}")
        timings["exact_model_s"] = time.perf_counter() - t0
    rec = record_steps(steps, points)
    out: dict[str, dict[str, Any]] = {}
    if sampling == "replacement" and exact:
        assert samples is not None
        t0 = time.perf_counter()
        try:
            fixed = fixed_set_model(pr, *training_set(pr, samples, noise, seed))
            out["exact"] = {"curve": fixed.curve(lr, batch, rec, sigma0=sigma0), "stationary_loss": None, "critical_lr": None,
                            "spectral_radius": None, "late_rate": None}
            notes.append("fixed training set: 'predicted' is the linearised recursion over this training set (with replacement); "
                         "no spectral prediction, stationary loss or critical rate")
        except NearoptError as exc:
            if exact is True:
                raise
            notes.append(f"no prediction for this training set: {exc}")
        timings["exact_model_s"] = time.perf_counter() - t0
    elif sampling == "epochs":
        notes.append("epochs without replacement are simulated only (the recursion assumes independent batches)")
    t0 = time.perf_counter()
    for name, model in models.items():
        out[name] = predictions(model, lr, batch, rec, sigma0=sigma0, noise=noise)
        crit = out[name]["critical_lr"]
        if lr >= crit:
            msg = f"learning rate {lr:.6g} is at or beyond the {name} critical rate {crit:.6g} for batch {batch}: the linearised prediction diverges"
            notes.append(msg)
            warnings.warn(msg, stacklevel=2)
    timings["predict_s"] = time.perf_counter() - t0
    sim = simulate_sgd(pr, lr=lr, batch=batch, steps=steps, sigma0=sigma0, noise=noise, runs=runs, seed=seed,
                       sampling=sampling, samples=samples, record=rec, device=dev, progress=progress, track=track)
    timings["simulate_s"] = sim.seconds
    if sim.diverged.any():
        notes.append(f"{int(sim.diverged.sum())} of {sim.runs} runs diverged")
    t0 = time.perf_counter()
    regime, extra = sgd_regime(pr, models, out, lr=lr, batch=batch, sigma0=sigma0, seed=seed, exact_reason=exact_reason)
    for msg in extra:
        notes.append(msg)
        warnings.warn(msg, stacklevel=2)
    timings["regime_s"] = time.perf_counter() - t0
    result = SGDResult(pr, sim, out.get("exact"), out.get("spectral"), models, timings, notes, regime)
    if target is not None:
        result.target = sgd_target(result, target)
    return result


# --------------------------------------------------------------------------- where the predictions apply
def sgd_start_error(problem: Problem | TwoLayerNet, sigma0: float, seed: int = 0, draws: int = REGIME_DRAWS) -> float:
    """:func:`~nearopt.dynamics.regime.start_error` of the population loss at the first ``draws`` starts of :func:`simulate_sgd`.

    The same ``delta_0`` as runs ``0 .. draws - 1`` of a simulation with this ``seed``; ``L`` is the exact
    population loss (:class:`PopulationLoss`), ``Q = 1/2 delta^T H delta`` with the population Hessian.
    Draws whose ``Q`` lies within ``1e4`` times the loss's rounding floor are left out (``nan`` if all are).
    """
    pr = as_problem(problem)
    cpu = torch.device("cpu")
    sim = _Simulator(pr, 1.0, 1, 0.0, require_positive_int(draws, "number of draws"), seed, "online", None, cpu)
    dW, dv = sim.initial(sigma0)
    L = sim.loss((dW, dv)).numpy()
    delta = torch.cat([dW.reshape(draws, -1), dv], 1)[:, torch.as_tensor(pr.trained_indices)]  # (draws, P)
    HV = PopulationHessian(pr).torch_matmat(delta.T.contiguous())
    Q = 0.5 * (delta.T * HV).sum(0).numpy()
    return start_error(L, Q, floor=sim.population.floor)


def sgd_regime(problem: Problem, models: dict[str, SecondMomentModel], predicted: dict[str, dict[str, Any]], *, lr: float, batch: int,
               sigma0: float, seed: int = 0, exact_reason: str | None = None) -> tuple[dict[str, Any], list[str]]:
    """Where the linearised SGD predictions apply, and the warnings (one line each) where they do not.

    ``{"start_error", "start_error_limit", "quadratic", "critical_lr", "critical_lr_source", "lr_over_critical",
    "critical_lr_exact", "critical_lr_spectral", "spectral_is_exact", "critical_lr_note"}``:
    the start error (:func:`sgd_start_error`) against :data:`~nearopt.dynamics.regime.SGD_START_LIMIT`;
    ``lr`` against the exact critical rate where the exact recursion was built, else the spectral one;
    whether the spectral rate is exact (linear networks: ``J`` is Gaussian) and, where it is not, what is known
    (``exact_reason``: why the exact recursion could not be built, e.g. its cost).
    """
    try:
        err = sgd_start_error(problem, sigma0, seed)
        notes = start_verdict(err, sigma0, SGD_START_LIMIT)
    except NearoptError as exc:  # e.g. no population Hessian for this problem: the run stands, unchecked
        err, notes = float("nan"), [f"the start displacement's regime is not measured here: {exc}"]
    ex, sp = predicted.get("exact"), predicted.get("spectral")
    c_ex = None if ex is None else ex.get("critical_lr")
    c_sp = None if sp is None else sp.get("critical_lr")
    coeffs = problem.activation.polynomial_coefficients
    linear = coeffs is not None and len(coeffs) <= 2
    regime: dict[str, Any] = {"start_error": err, "start_error_limit": SGD_START_LIMIT, "quadratic": not err > SGD_START_LIMIT,
                              "critical_lr_exact": c_ex, "critical_lr_spectral": c_sp, "spectral_is_exact": linear, "critical_lr_note": None,
                              "critical_lr": None, "lr_over_critical": None, "critical_lr_source": None}
    source, crit = ("exact", c_ex) if c_ex is not None else ("spectral", c_sp) if c_sp is not None else (None, None)
    if crit is not None:
        regime.update(lr_verdict(lr, crit), critical_lr_source=source)  # at or beyond it: run_sgd's warning
    if c_sp is not None and not linear:
        name = problem.activation.name
        if c_ex is not None:
            regime["critical_lr_note"] = (f"the spectral critical rate {c_sp:.6g} is not exact for {name}: the exact one is {c_ex:.6g} "
                                          f"({c_ex / c_sp:.3g} of it)")
        else:
            why = f"not affordable here ({exact_reason})" if exact_reason else "not built here"
            lo_hi = SPECTRAL_RATIO_RANGE.get(name)
            known = f"; measured exact/spectral ratios for {name} at B = 1: {lo_hi[0]:g}-{lo_hi[1]:g}" if lo_hi else ""
            regime["critical_lr_note"] = (f"the spectral critical rate {c_sp:.6g} is not exact for {name} (the Jacobian is not Gaussian) "
                                          f"and the exact one is {why} here{known}")
            if lo_hi is not None and lr >= lo_hi[0] * c_sp:
                notes.append(f"learning rate {lr:.6g} is {lr / c_sp:.3g} of the spectral critical rate, which is not exact for {name}: "
                             f"its exact critical rate can be as low as {lo_hi[0]:g} of the spectral one (measured, B = 1), "
                             "and the exact one is not computed here")
    return regime, notes


def sgd_target(result: SGDResult, eps: float) -> dict[str, Any]:
    """Steps to a mean excess loss ``eps``: predicted by each model, measured from the simulation.

    Predicted (online): the first integer step where the recursion's ``E[L_t] <= eps``
    (:func:`~nearopt.dynamics.regime.first_step_below`, searched up to :data:`MAX_STEPS`, beyond the
    simulated horizon too); a fixed training set: the first recorded step of its curve. Measured: the
    first recorded step where the mean over runs is ``<= eps``; the crossing lies after ``previous_record``.
    """
    eps = require_positive_finite(eps, "target loss")
    sim, info = result.simulation, result.simulation.info
    predicted: dict[str, dict[str, Any]] = {}
    for name, model in result.models.items():
        f = model.curve_function(info["lr"], info["batch"], sigma0=info["sigma0"], noise=info["noise"])
        predicted[name] = first_step_below(f, eps, float(sim.steps[-1]), width=model.size, limit=float(MAX_STEPS))
    if result.exact is not None and "exact" not in result.models:  # the fixed-set recursion: its recorded curve only
        predicted["exact"] = dict(measured_crossing(sim.steps, result.exact["curve"], eps), method="records")
    return target_block(eps, predicted, measured_crossing(sim.steps, sim.mean, eps),
                        "recorded steps: the first crossing of the measured mean lies in (previous_record, step]")
