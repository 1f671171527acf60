"""Plateaus of the order-parameter ODEs, their fixed points, escape times and the Hessian there.

A trajectory of :func:`~nearopt.dynamics.ode.integrate_ode` from a nearly symmetric start sits for a
long stretch near an unstable fixed point of the ODEs (the symmetric plateau of Saad & Solla 1995)
and leaves it along the fixed point's unstable direction. This module

* finds the fixed point by Newton's method on the ODEs' right-hand side in packed coordinates
  (the upper triangle of ``Q``, ``R`` and, when both layers train, ``v``): :func:`fixed_point`;
* linearises the ODEs there (Jacobian by central differences): :func:`linearise`, and detects a plateau
  along a trajectory: :func:`find_plateau` (a :class:`Plateau`);
* predicts the escape time from the initial symmetry breaking ``s``:
  ``alpha_escape(s) = alpha_escape(s_ref) + ln(s_ref / s) / rate`` (:func:`predict_escape`, the
  constant from one reference run, :func:`escape_time`);
* rebuilds weights from ``(Q, R, v)`` (:func:`minimal_weights`) and takes the population
  Hessian there (:func:`lowest_curvature`), and splits the ODEs' unstable rate into its gradient-flow
  part ``eta~ |lambda_min|`` and the learning-rate correction (:func:`rate_expansion`).

The relation between the unstable rate and the Hessian is derived in ``docs/theory.md`` §15.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass

import numpy as np

from ..curvature.population import PopulationHessian
from ..curvature.tracking import CurvatureTrack, TrackSpec
from ..errors import NearoptError
from ..model.network import TwoLayerNet
from ..model.problem import Problem
from ..spectra.solver import NullSpaceWarning
from .ode import CommitteeODE, ODETrajectory, committee_ode, integrate_ode, order_parameters
from .ode_weights import track_ode, weights_from_order_parameters

__all__ = [
    "escape_time",
    "find_plateau",
    "fixed_point",
    "linearise",
    "lowest_curvature",
    "ODERun",
    "Plateau",
    "predict_escape",
    "rate_expansion",
    "RateExpansion",
    "run_ode",
    "minimal_weights",
]

#: Newton stops when the packed right-hand side is below this times the learning rate (1 + lr)
NEWTON_TOL = 1e-12
#: a Newton stalled at its rounding floor is converged when ``|F|`` lies within this factor of the tolerance
ROUNDING_SLACK = 10.0
#: relative central-difference step of the Jacobian (error ~ step^2 ~ 1e-12 relative)
FD_STEP = 1e-6


# ----------------------------------------------------------------------------- packed coordinates
def _trains_v(ode: CommitteeODE) -> bool:
    return getattr(ode, "trained", "both") == "both"


def _pack(Q: np.ndarray, R: np.ndarray, v: np.ndarray, with_v: bool) -> np.ndarray:
    iu = np.triu_indices(Q.shape[0])
    parts = [Q[iu], R.ravel()] + ([v] if with_v else [])
    return np.concatenate(parts).astype(np.float64)


def _unpack(x: np.ndarray, K: int, M: int, v_fixed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    iu = np.triu_indices(K)
    n = iu[0].size
    Q = np.zeros((K, K))
    Q[iu] = x[:n]
    Q = Q + np.triu(Q, 1).T
    R = x[n : n + K * M].reshape(K, M)
    v = x[n + K * M :].copy() if v_fixed is None else v_fixed.copy()
    return Q, R, v


class _Field:
    """The ODEs' right-hand side on packed coordinates ``x`` ``(n,)`` (``v`` held when only the first layer trains)."""

    def __init__(self, ode: CommitteeODE, K: int, M: int, v: np.ndarray):
        self.ode, self.K, self.M = ode, K, M
        self.with_v = _trains_v(ode)
        self.v_fixed = None if self.with_v else np.asarray(v, dtype=np.float64).copy()

    def pack(self, Q, R, v) -> np.ndarray:
        return _pack(Q, R, v, self.with_v)

    def unpack(self, x: np.ndarray):
        return _unpack(x, self.K, self.M, self.v_fixed)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.pack(*self.ode.rhs(*self.unpack(x)))

    def jacobian(self, x: np.ndarray) -> np.ndarray:
        """Central differences ``(n, n)``, step ``FD_STEP * max(1, |x_i|)``."""
        J = np.empty((x.size, x.size))
        for i in range(x.size):
            h = FD_STEP * max(1.0, abs(x[i]))
            e = np.zeros_like(x)
            e[i] = h
            J[:, i] = (self(x + e) - self(x - e)) / (2 * h)
        return J


def _field(ode: CommitteeODE, Q, R, v) -> _Field:
    Q, R, v = (np.asarray(a, dtype=np.float64) for a in (Q, R, v))
    K, M = R.shape
    if Q.shape != (K, K) or v.shape != (K,):
        raise NearoptError(f"order parameters of mismatched shapes: Q {Q.shape}, R {R.shape}, v {v.shape}")
    return _Field(ode, K, M, v)


def _newton(field, jacobian, x0: np.ndarray, tol: float, max_iter: int) -> np.ndarray:
    """Newton with backtracking on ``|F|`` (least-squares steps: a zero mode does not stop it).

    Converged at ``|F| <= tol``; where no step lowers ``|F|`` any more (the field's rounding floor,
    which moves with the summation order of the NumPy in use) also at ``|F| <= ROUNDING_SLACK tol``.
    """
    x = x0.copy()
    F = field(x)
    stalled = False
    for _ in range(max_iter):
        if np.linalg.norm(F) <= tol:
            return x
        step = np.linalg.lstsq(jacobian(x), -F, rcond=None)[0]
        t = 1.0
        while t > 1e-6:
            trial = x + t * step
            F_trial = field(trial)
            if np.all(np.isfinite(F_trial)) and np.linalg.norm(F_trial) < np.linalg.norm(F):
                break
            t *= 0.5
        else:
            stalled = True
            break
        x, F = trial, F_trial
    if np.linalg.norm(F) <= (ROUNDING_SLACK * tol if stalled else tol):
        return x
    raise NearoptError(f"Newton on the ODEs' right-hand side did not converge: |F| = {np.linalg.norm(F):.3g} > {tol:.3g}")


def fixed_point(ode: CommitteeODE, Q: np.ndarray, R: np.ndarray, v: np.ndarray, *, max_iter: int = 60) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The fixed point ``(Q, R, v)`` of the ODEs nearest (by Newton) to the start ``(Q, R, v)`` (e.g. a plateau's point).

    Raises :class:`~nearopt.errors.NearoptError` when Newton does not bring the right-hand side below
    ``NEWTON_TOL * lr (1 + lr)``. ``v`` is returned unchanged when only the first layer trains.
    """
    f = _field(ode, Q, R, v)
    x = _newton(f, f.jacobian, f.pack(Q, R, v), NEWTON_TOL * ode.lr * (1 + ode.lr), max_iter)
    return f.unpack(x)


def _sorted_eig(J: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lam, U = np.linalg.eig(J)
    order = np.argsort(-lam.real)
    return lam[order], U[:, order]


def linearise(ode: CommitteeODE, Q, R, v) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues ``(n,)`` (descending real part) and eigenvectors ``(n, n)`` of the ODEs' Jacobian at ``(Q, R, v)``.

    Coordinates: the packed upper triangle of ``Q``, then ``R`` row by row, then ``v`` (both layers only).
    """
    f = _field(ode, Q, R, v)
    return _sorted_eig(f.jacobian(f.pack(Q, R, v)))


# ----------------------------------------------------------------------------- plateaus
@dataclass(frozen=True)
class Plateau:
    """A plateau of an ODE trajectory: the stretch near an unstable fixed point and the fixed point itself.

    ``alpha_start``, ``alpha_end``: where the trajectory's error lies within ``band`` (relative) of the
    fixed point's ``eps``; ``Q`` ``(K, K)``, ``R`` ``(K, M)``, ``v`` ``(K,)``: the fixed point;
    ``unstable_rate``: the largest real part of the ODEs' Jacobian eigenvalues there, per unit alpha
    (the order parameters' deviation grows like ``exp(rate alpha)``; at a symmetric plateau, where the error is
    stationary along the unstable direction, the error's like ``exp(2 rate alpha)``);
    ``unstable_direction``: its eigenvector as ``(dQ, dR, dv)`` (unit norm in packed coordinates);
    ``jacobian_eigenvalues``: all of them, descending real part.
    """

    alpha_start: float
    alpha_end: float
    eps: float
    Q: np.ndarray
    R: np.ndarray
    v: np.ndarray
    unstable_rate: float
    unstable_direction: tuple[np.ndarray, np.ndarray, np.ndarray]
    jacobian_eigenvalues: np.ndarray

    @property
    def length(self) -> float:
        """``alpha_end - alpha_start``."""
        return self.alpha_end - self.alpha_start

    def to_dict(self) -> dict:
        return {"alpha_start": self.alpha_start, "alpha_end": self.alpha_end, "eps": self.eps, "Q": self.Q, "R": self.R, "v": self.v,
                "unstable_rate": self.unstable_rate}


def _crossing(alpha: np.ndarray, y: np.ndarray, i: int, j: int) -> float:
    """Linear interpolation of where ``y`` (``<= 0`` inside) crosses zero between samples ``i`` and ``j``."""
    if y[i] == y[j]:
        return float(alpha[j])
    return float(alpha[i] + (alpha[j] - alpha[i]) * y[i] / (y[i] - y[j]))


def _band(alpha: np.ndarray, eps: np.ndarray, eps_star: float, k: int, band: float) -> tuple[float, float]:
    """The stretch around sample ``k`` where ``|eps / eps* - 1| <= band``, ends interpolated."""
    out = np.abs(eps / eps_star - 1) - band
    lo = k
    while lo > 0 and out[lo - 1] <= 0:
        lo -= 1
    hi = k
    while hi < eps.size - 1 and out[hi + 1] <= 0:
        hi += 1
    start = float(alpha[0]) if lo == 0 else _crossing(alpha, out, lo, lo - 1)
    end = float(alpha[-1]) if hi == eps.size - 1 else _crossing(alpha, out, hi, hi + 1)
    return start, end


def _flat_stretch(traj: ODETrajectory, lr: float, flatness: float, height: float, min_length: float) -> int | None:
    """Index of the flattest sample of the longest stretch where ``|d ln eps / d alpha| <= flatness * lr`` and ``eps >= height * eps_final``."""
    a, eps = traj.alpha, traj.eps
    if a.size < 5 or a[-1] <= a[0]:
        return None
    positive = eps > 0  # an error at rounding level may come out <= 0
    slope = np.abs(np.gradient(np.log(np.where(positive, eps, np.finfo(float).tiny)), a))
    ok = positive & (slope <= flatness * lr) & (eps >= height * max(float(eps[-1]), 0.0))
    best, best_len, i = None, 0.0, 0
    while i < ok.size:
        if not ok[i]:
            i += 1
            continue
        j = i
        while j + 1 < ok.size and ok[j + 1]:
            j += 1
        if a[j] - a[i] > best_len:
            best, best_len = (i, j), float(a[j] - a[i])
        i = j + 1
    if best is None or best_len * lr < min_length:
        return None
    i, j = best
    return i + int(np.argmin(slope[i : j + 1]))


def _plateau_at(ode: CommitteeODE, traj: ODETrajectory, k: int, band: float) -> Plateau:
    Q, R, v = fixed_point(ode, traj.Q[k], traj.R[k], traj.v[k])
    f = _field(ode, Q, R, v)
    lam, U = _sorted_eig(f.jacobian(f.pack(Q, R, v)))
    d = U[:, 0].real
    d = d / np.linalg.norm(d)
    d = d if d[np.argmax(np.abs(d))] > 0 else -d
    K, M = R.shape
    dQ, dR, dv = _unpack(d, K, M, None if f.with_v else np.zeros(K))
    eps = ode.error(Q, R, v)
    start, end = _band(traj.alpha, traj.eps, eps, k, band)
    return Plateau(start, end, float(eps), Q, R, v, float(lam[0].real), (dQ, dR, dv), lam)


def find_plateau(ode: CommitteeODE, traj: ODETrajectory, *, flatness: float = 0.005, height: float = 2.0, min_length: float = 10.0,
                 band: float = 0.1) -> Plateau | None:
    """The plateau a trajectory passes, or ``None``.

    A plateau is the longest stretch (at least ``min_length`` long in ``eta~ alpha``, the time of the
    gradient flow) where the error is flat, ``|d ln eps / d alpha| <= flatness * eta~``, and at least
    ``height`` times the final error (so the trajectory left it). Newton from its flattest sample gives the fixed point (``None``
    when Newton does not converge there); ``alpha_start``/``alpha_end`` bound where the error lies within
    ``band`` (relative) of the fixed point's.
    """
    k = _flat_stretch(traj, ode.lr, flatness, height, min_length)
    if k is None:
        return None
    try:
        return _plateau_at(ode, traj, k, band)
    except NearoptError:
        return None


# ----------------------------------------------------------------------------- escape
def escape_time(ode: CommitteeODE, Q0, R0, v0, *, level: float, alpha_max: float) -> float | None:
    """The first alpha at which the error from ``(Q0, R0, v0)`` falls to ``level`` (e.g. half a plateau's height), or ``None`` by ``alpha_max``."""
    return integrate_ode(ode, Q0, R0, v0, np.array([0.0, float(alpha_max)]), target=level).alpha_target


def predict_escape(rate: float, s, *, s_ref: float, alpha_ref: float) -> np.ndarray:
    """``alpha_escape(s) = alpha_ref + ln(s_ref / s) / rate``: the linearisation's prediction from one reference run.

    ``s`` (any shape): the initial symmetry breaking (the component of the start along the unstable
    direction scales with it); ``alpha_ref`` the escape time measured at ``s_ref``.
    """
    if not rate > 0:
        raise NearoptError(f"an escape needs a positive unstable rate, got {rate}")
    return alpha_ref + np.log(s_ref / np.asarray(s, dtype=np.float64)) / rate


# ----------------------------------------------------------------------------- weights and the Hessian
#: ``Q - R T^{-1} R^T`` may dip below zero by this much relative to ``max eig Q`` (rounding, Newton's drift along a
#: null direction at a saddle whose students lie in the teacher span) and is then taken as zero
PSD_TOL = 1e-7


def minimal_weights(teacher: TwoLayerNet, Q, R, v, *, extra: int = 0) -> tuple[TwoLayerNet, TwoLayerNet]:
    """A student and teacher in the fewest inputs, ``N_i = M + K + extra``, with overlaps ``Q`` ``(K, K)``, ``R`` ``(K, M)`` and the teacher's ``T``.

    The teacher's rows become ``L^T`` (``T = L L^T``, Cholesky) on the first ``M`` coordinates, and the
    student is :func:`~nearopt.dynamics.ode_weights.weights_from_order_parameters` against it (its
    components outside the teacher span on the next ``K`` coordinates). ``extra`` more coordinates,
    orthogonal to both, carry the directions that move no overlap at first order (``docs/theory.md``
    §2.5). Second layers: ``v`` and the teacher's.
    """
    Tw = np.asarray(teacher.W1, dtype=np.float64)
    M, K = Tw.shape[0], np.shape(Q)[0]
    T = Tw @ Tw.T
    T_min = np.zeros((M, M + K + int(extra)))
    T_min[:, :M] = np.linalg.cholesky(0.5 * (T + T.T))
    teach = TwoLayerNet(T_min, teacher.W2.astype(np.float64), teacher.activation)
    return weights_from_order_parameters(Q, R, v, teach, psd_rtol=PSD_TOL), teach


def _hessian_at(teacher: TwoLayerNet, Q, R, v, trained: str, extra: int):
    student, teach = minimal_weights(teacher, Q, R, v, extra=extra)
    with warnings.catch_warnings():  # eigenvalues and vectors are wanted, not a rank: its null space needs no warning
        warnings.simplefilter("ignore", NullSpaceWarning)
        spec, U = PopulationHessian(Problem(teach, student=student, trained=trained)).eigh()
    return spec.eigenvalues, U, student, teach


def lowest_curvature(teacher: TwoLayerNet, Q, R, v, *, trained: str = "both", extra: int = 0) -> tuple[float, np.ndarray, TwoLayerNet]:
    """The population Hessian's smallest eigenvalue, its eigenvector ``(P,)`` and the student, at the weights of ``(Q, R, v)``.

    ``trained``: ``"first"`` for the soft committee machine (the Hessian over ``W1``), ``"both"`` otherwise;
    parameters ordered as ``W1`` row by row, then ``W2``. The loss is ``1/2 E (f - f*)^2`` in the weights'
    own scale (the ODEs' ``eps``).
    """
    lam, U, student, _ = _hessian_at(teacher, Q, R, v, trained, extra)
    return float(lam[0]), U[:, 0], student


def _lift(teach: TwoLayerNet, direction, with_v: bool) -> np.ndarray:
    """The weights' direction ``(P,)`` of an order-parameter direction that moves ``R`` (and ``v``) only: ``dW = dR T^{-1} T_w``."""
    dQ, dR, dv = direction
    Tw = teach.W1
    dW = np.linalg.solve(Tw @ Tw.T, dR.T).T @ Tw
    return np.concatenate([dW.ravel()] + ([dv] if with_v else []))


@dataclass(frozen=True)
class RateExpansion:
    """The unstable rate against the Hessian (``docs/theory.md`` §15) at learning rates ``lr`` ``(L,)`` (descending).

    ``rate`` ``(L,)``: the ODEs' unstable rate at their own fixed point (the plateau's branch);
    ``lambda_min`` ``(L,)``: the population Hessian's smallest eigenvalue at the weights of that fixed point;
    ``lambda_unstable`` ``(L,)``: the Hessian's Rayleigh quotient on the weights' direction of the unstable
    eigenvector (``dW = dR T^{-1} T_w``, exact when that direction moves neither ``Q`` nor ``v``);
    ``lift_residual`` ``(L,)``: ``|H d - lambda_unstable d| / |d|`` there (zero: ``d`` is an eigenvector);
    ``eps`` ``(L,)``: the fixed point's error; ``lambda_min0``, ``eps0``: the same at the ``eta~ -> 0`` fixed
    point (a critical point of the loss: the saddle). ``rate = -eta~ lambda_unstable`` at every ``eta~`` when the
    unstable direction moves ``R`` alone, and ``lambda_unstable = lambda_min`` when that is the most negative
    direction; ``rate / eta~ -> |lambda_min0|`` as ``eta~ -> 0``.
    """

    lr: np.ndarray
    rate: np.ndarray
    lambda_min: np.ndarray
    lambda_unstable: np.ndarray
    lift_residual: np.ndarray
    eps: np.ndarray
    lambda_min0: float
    eps0: float


def _split(ode: CommitteeODE, f: _Field):
    """The right-hand side is ``eta~ F1 + eta~^2 F2`` exactly: ``F1`` (gradient flow at rate 1) from the rates 1 and 2."""
    v = f.v_fixed if f.v_fixed is not None else np.zeros(f.K)
    f1 = _Field(dataclasses.replace(ode, lr=1.0), f.K, f.M, v)
    f2 = _Field(dataclasses.replace(ode, lr=2.0), f.K, f.M, v)

    def F1(x):
        return 2 * f1(x) - 0.5 * f2(x)

    def jac(x):
        return 2 * f1.jacobian(x) - 0.5 * f2.jacobian(x)

    return F1, jac


def rate_expansion(ode: CommitteeODE, teacher: TwoLayerNet, Q, R, v, lrs) -> RateExpansion:
    """The unstable rate at each learning rate of ``lrs`` against the Hessian's smallest eigenvalue at the same fixed point.

    ``ode`` gives the teacher's overlaps and options; ``(Q, R, v)`` a point on (or near) its plateau at
    ``ode.lr``. The fixed points are followed by Newton from ``ode.lr`` down through ``lrs`` (the branch the
    trajectory visits: at ``eta~ > 0`` another branch, with the students' components outside the teacher
    span equal, has more unstable directions), then to ``eta~ -> 0`` (Newton on the gradient-flow part).
    The Hessian is over the trained blocks at the weights of each point (:func:`minimal_weights`,
    one spare coordinate for the directions that move no overlap). Derivation: ``docs/theory.md`` §15.
    """
    lrs = np.sort(np.asarray(lrs, dtype=np.float64))[::-1]
    if lrs.size == 0 or not np.all(np.isfinite(lrs)) or lrs[-1] <= 0:
        raise NearoptError("the learning rates must be finite and > 0")
    f = _field(ode, Q, R, v)
    trained = "both" if f.with_v else "first"
    x = _newton(f, f.jacobian, f.pack(Q, R, v), NEWTON_TOL * ode.lr * (1 + ode.lr), 60)
    rows: list[tuple[float, float, float, float, float]] = []
    for lr in lrs:
        o = dataclasses.replace(ode, lr=float(lr))
        g = _Field(o, f.K, f.M, f.v_fixed if f.v_fixed is not None else np.zeros(f.K))
        x = _newton(g, g.jacobian, x, NEWTON_TOL * lr * (1 + lr), 60)
        mu, V = _sorted_eig(g.jacobian(x))
        Qx, Rx, vx = g.unpack(x)
        lam, U, _, teach = _hessian_at(teacher, Qx, Rx, vx, trained, 1)
        d = _lift(teach, _unpack(V[:, 0].real, f.K, f.M, None if f.with_v else np.zeros(f.K)), f.with_v)
        Hd = (U * lam) @ (U.T @ d)
        q = float(d @ Hd / (d @ d))
        rows.append((float(mu[0].real), float(lam[0]), q, float(np.linalg.norm(Hd - q * d) / np.linalg.norm(d)), o.error(Qx, Rx, vx)))
    F1, J1 = _split(ode, f)
    x0 = _newton(F1, J1, x, NEWTON_TOL, 60)
    lam0 = lowest_curvature(teacher, *f.unpack(x0), trained=trained, extra=1)[0]
    rate, lam_min, lam_u, resid, eps = (np.array(c) for c in zip(*rows))
    return RateExpansion(lrs, rate, lam_min, lam_u, resid, eps, lam0, float(ode.error(*f.unpack(x0))))


# ----------------------------------------------------------------------------- a run from weights
@dataclass(frozen=True)
class ODERun:
    """The ODEs integrated from a student's weights: ``trajectory`` and the ``plateau`` it passes (``None`` if none)."""

    activation: str
    lr: float
    trained: str
    noise: float
    n_inputs: int
    trajectory: ODETrajectory
    plateau: Plateau | None
    #: the population Hessian along the trajectory (``track=``: :func:`~nearopt.dynamics.ode_weights.track_ode`), else ``None``
    curvature: CurvatureTrack | None = None

    def to_dict(self) -> dict:
        """``alpha``, ``eps``, ``Q``, ``R``, ``v`` (one entry per recorded alpha), ``plateau`` (``eps``, ``unstable_rate``, ...) or ``None``."""
        t = self.trajectory
        out = {"activation": self.activation, "lr": self.lr, "trained": self.trained, "noise": self.noise, "N_i": self.n_inputs,
               "K": int(t.Q.shape[1]), "M": int(t.R.shape[2]),
               "alpha": t.alpha, "eps": t.eps, "Q": t.Q, "R": t.R, "v": t.v,
               "plateau": None if self.plateau is None else self.plateau.to_dict()}
        if t.target is not None:
            out["target"] = t.target
            out["alpha_target"] = t.alpha_target
        if self.curvature is not None:
            out["curvature"] = self.curvature.to_dict()
        return out


def run_ode(teacher: TwoLayerNet, student: TwoLayerNet, *, lr: float, alpha: float, points: int = 200, trained: str = "both", noise: float = 0.0,
            target: float | None = None, track: TrackSpec | int | None = None) -> ODERun:
    """The ODEs from ``student``'s weights (``x ~ N(0, I)``, SGD step ``lr / N_i``) at ``points`` alphas evenly in ``[0, alpha]``, and the plateau.

    ``Q = W1 W1^T``, ``R = W1 T^T`` in the weights' own scale; ``target``: also the first alpha where the
    error reaches it (``alpha_target``). ``track``: the curvature at the recorded alphas (an integer is ``k``),
    on weights rebuilt from ``(Q, R, v)`` in the teacher's inputs (:func:`~nearopt.dynamics.ode_weights.track_ode`).
    """
    spec = TrackSpec.coerce(track)
    if not np.isfinite(alpha) or alpha <= 0:
        raise NearoptError(f"the horizon alpha must be finite and > 0, got {alpha}")
    if int(points) < 2:
        raise NearoptError(f"the number of recorded points must be >= 2, got {points}")
    if target is not None and not (np.isfinite(target) and target > 0):
        raise NearoptError(f"the target error must be finite and > 0, got {target}")
    if student.activation.name != teacher.activation.name:
        raise NearoptError(f"the ODEs take student and teacher of one activation, got {student.activation.name} and {teacher.activation.name}")
    ode = committee_ode(teacher, lr, noise, trained=trained)
    Q0, R0, v0 = order_parameters(student, teacher)
    if spec is not None:
        spec.require(student.n_params if trained == "both" else student.W1.size)
    traj = integrate_ode(ode, Q0, R0, v0, np.linspace(0.0, float(alpha), int(points)), target=target)
    curvature = None if spec is None else track_ode(traj, teacher, track=spec, trained=trained)
    return ODERun(teacher.activation.name, float(lr), trained, float(noise), int(teacher.n_inputs), traj, find_plateau(ode, traj), curvature)
