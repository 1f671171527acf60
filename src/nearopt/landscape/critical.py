"""Critical points of the exact population loss, and their classification by the Hessian spectrum.

From a start ``theta_0`` (a student of any width, any trained blocks) we

1. *descend* on the exact population loss ``L`` (:mod:`nearopt.gaussian.objective`):
   plain gradient descent ``theta <- theta - eta grad L`` (``descent="gd"``; the step
   halves whenever the loss would rise), or SciPy's trust region with the exact
   Hessian (``descent="trust"``, ``scipy.optimize.minimize(method="trust-exact")``);
2. *polish* with a safeguarded Newton iteration on the gradient,
   ``s = -(H^2 + mu I)^+ H g`` (eigenvalues above the rank tolerance; ``mu`` adapted
   Levenberg-Marquardt style, ``mu = 0`` is Newton's ``-H^+ g``), accepted only when
   ``||g||`` falls. The step is a descent direction for ``1/2 ||g||^2`` (derivative
   ``-g^T H (H^2 + mu)^+ H g <= 0``) whatever the signs of ``lambda``, so the polish
   converges to saddles as well as minima -- quadratically where ``H`` is nonsingular
   -- down to a gradient norm at the rounding level of the pair terms;
3. *classify* by the spectrum of the exact Hessian ``H`` (trained blocks), asked of
   :func:`nearopt.spectra.solve` like every spectrum: the one rank and null-space policy
   (:class:`~nearopt.policy.RankPolicy`, on ``|lambda|``) fixes the tolerance ``tau`` and
   the inertia: ``index = #{lambda < -tau}``, zero modes ``#{|lambda| <= tau}``. Classes
   (``loss_relative = L / E[f_t^2]``):

   * ``global minimum``: ``loss_relative <= 1e-12`` (:data:`GLOBAL_RTOL`);
   * ``spurious local minimum``: index 0, no zero mode, loss above the global level;
   * ``degenerate critical point``: index 0 with zero modes, loss above the global level
     (the second-order test is inconclusive);
   * ``saddle``: index ``>= 1`` and some ``lambda > tau``;
   * ``local maximum``: every eigenvalue ``< -tau``;
   * ``not converged``: ``||g|| >`` the tolerance.

   A critical point whose student output vanishes (``E[f^2] <= TRIVIAL_RTOL E[f_t^2]``: the
   second layer ``v = 0``, or ``W1 = 0`` without biases for an activation with ``g(0) = 0``) is
   the trivial critical point ``f = 0``: its class stays (usually ``saddle``) and
   :attr:`CriticalPoint.trivial` says so. ``avoid_trivial`` restarts the search from seeded
   perturbations of the start when it ends there (:func:`find_critical_point`).

A target index replaces step 1 by :func:`eigenvector_following` (ascend along the lowest
Hessian modes, descend along the others); steps 2 and 3 are unchanged.

The gradient is a sum of ``O(K + M)`` pair terms of size ``~ E[f_t^2]^(1/2) ||theta||``, so
its rounding floor is ``~ (K + M) eps`` times that; :func:`gradient_tolerance` asks for
``1e3`` times the floor (``2.6e-11`` for the ``k = 6`` committee machine of ``docs/students.md``
§4); the polish itself goes on to the floor (``||g|| ~ 1e-16`` there).
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.optimize

from ..curvature.population import PopulationHessian
from ..curvature.tracking import CurvatureTrack, TrackSpec, track_curvature
from ..errors import NearoptError, require_nonneg_finite, require_positive_int
from ..gaussian.expectations import output_power
from ..gaussian.network_objective import NetworkObjective
from ..gaussian.objective import landscape_moments, population_gradient, population_loss
from ..model import io
from ..model.activations import Activation, get_activation
from ..model.network import TwoLayerNet
from ..model.problem import Problem, as_problem
from ..policy import RankPolicy
from ..resources import dense_bytes, require_memory
from ..spectra.solver import NullSpaceWarning
from ..tolerances import EPS, TINY

__all__ = [
    "at_parameters", "check_gtol", "CLASSES", "classify", "committee_start", "committee_teacher", "CriticalPoint", "DENSE_ADVICE", "Descent",
    "distinct_points", "eigenvector_following", "exact_hessian", "find_critical_point", "FLOOR_FACTOR", "GLOBAL_RTOL", "gradient_descent", "gradient_scale",
    "gradient_tolerance", "GTOL_MAX_FRACTION", "is_trivial", "isotropy_multiplicities", "load_point", "loss_and_gradient", "newton_polish",
    "Progress", "relu_committee_global_spectrum", "require_classification_memory", "require_teacher_power", "RESTARTS", "SavedPoint",
    "symmetry_multiplicities", "trained_parameters", "TRIVIAL_NOTE", "TRIVIAL_RTOL", "trust_region", "width_note"
]

#: a critical point is a global minimum when ``L <= GLOBAL_RTOL * E[f_t^2]``
GLOBAL_RTOL = 1e-12
#: gradient tolerance in units of its rounding floor (:func:`gradient_tolerance`)
FLOOR_FACTOR = 1e3
#: largest gtol, as a fraction of :func:`gradient_scale` at the start (the size of one pair term):
#: a gradient norm above a thousandth of it says nothing about criticality
GTOL_MAX_FRACTION = 1e-3
#: the student's output is identically zero when ``E[f^2] <= TRIVIAL_RTOL E[f_t^2]`` (an output amplitude of ``1e-6`` relative):
#: a power this small is rounding of weights that converged to ``v = 0`` or ``W1 = 0``, not a network
TRIVIAL_RTOL = 1e-12
#: the note a trivial critical point carries
TRIVIAL_NOTE = "the trivial critical point f = 0 (v = 0)"
#: default number of restarts of ``avoid_trivial``
RESTARTS = 3
CLASSES = ("global minimum", "spurious local minimum", "degenerate critical point", "saddle", "local maximum", "not converged")


# ----------------------------------------------------------------------------- helpers
def require_teacher_power(teacher: TwoLayerNet) -> float:
    """:func:`~nearopt.gaussian.expectations.output_power`, refused when it is zero or not finite: the relative loss ``L / E[f_t^2]``,
    the global-minimum test and the gradient tolerance are all measured in it."""
    tp = output_power(teacher)
    if not (math.isfinite(tp) and tp > 0):
        raise NearoptError(f"the teacher's output power E[f_t^2] is {tp:.3g} in float64: a teacher this small (or this large) gives the loss "
                           "no scale to call a point critical or a minimum global; use teacher weights of ordinary size")
    return tp


def gradient_scale(problem: Problem) -> float:
    """``E[f_t^2]^(1/2) max(1, ||theta||)``: the size of one pair term of the gradient, the unit of its tolerances."""
    pr = as_problem(problem)
    return math.sqrt(require_teacher_power(pr.teacher)) * max(1.0, float(np.linalg.norm(pr.point.parameters())))


def check_gtol(gtol: float | None, problem: Problem) -> float | None:
    """``gtol`` as a float, or ``None`` (the rounding-level default); refused unless a finite number in
    ``[0, GTOL_MAX_FRACTION * gradient_scale]``: a larger one would count a gradient of the loss's own scale as zero."""
    if gtol is None:
        return None
    g = require_nonneg_finite(gtol, "gtol")
    bound = GTOL_MAX_FRACTION * gradient_scale(as_problem(problem))
    if not g <= bound:
        raise NearoptError(f"gtol (--gtol) {g:g} would count a gradient this large as zero: it must be at most {bound:.3g} "
                           f"({GTOL_MAX_FRACTION:g} E[f_t^2]^1/2 max(1, |theta|) at the start), or leave it out for the rounding-level default")
    return g


#: what a user can change when the dense Hessian of a point does not fit (options of ``nearopt critical``)
DENSE_ADVICE = "a narrower student (--student-width, --student) or a smaller teacher (--committee, --ni, --nh, --teacher)"


def require_classification_memory(problem: Problem) -> None:
    """Refuse, before any descent, a point whose classification (the dense Hessian, its eigenvectors and a copy) cannot fit."""
    pr = as_problem(problem)
    P = pr.n_params
    require_memory(dense_bytes(P, copies=3), f"the classification of the point (its dense {P} x {P} Hessian and eigenvectors)", DENSE_ADVICE)


def width_note(problem: Problem) -> str | None:
    """A note for a student narrower than the teacher: zero loss (the global level) is then out of reach in general."""
    pr = as_problem(problem)
    K, M = pr.point.n_hidden, pr.teacher.n_hidden
    if K >= M:
        return None
    return (f"the student (K = {K}) is narrower than the teacher (M = {M}): zero loss is out of reach unless the teacher's units are "
            "redundant, so a minimum above the global level (loss 0) may be the best at this width although it is classed spurious")


def is_trivial(problem: Problem) -> bool:
    """Whether the student's output is identically zero: ``E[f^2] <= TRIVIAL_RTOL E[f_t^2]`` (same inputs; scale-free)."""
    pr = as_problem(problem)
    return bool(output_power(pr.point, pr.inputs) <= TRIVIAL_RTOL * require_teacher_power(pr.teacher))


def gradient_tolerance(problem: Problem) -> float:
    """``FLOOR_FACTOR (K + M) eps E[f_t^2]^(1/2) max(1, ||theta||)``: a gradient norm this small is 'zero'."""
    pr = as_problem(problem)
    return FLOOR_FACTOR * (pr.point.n_hidden + pr.teacher.n_hidden) * EPS * gradient_scale(pr)


def trained_parameters(problem: Problem) -> np.ndarray:
    """The trained entries ``(P,)`` of the student's parameters (order of :attr:`Problem.trained_indices`)."""
    return problem.point.parameters()[problem.trained_indices]


def at_parameters(problem: Problem, theta: np.ndarray) -> Problem:
    """The problem with the trained entries of the student replaced by ``theta`` ``(P,)``."""
    full = problem.point.parameters().copy()
    full[problem.trained_indices] = np.asarray(theta, dtype=np.float64).ravel()
    return problem.replace(student=problem.point.with_parameters(full))


def loss_and_gradient(problem: Problem) -> tuple[float, np.ndarray]:
    """Exact ``(L, grad L)`` at the problem's point (one set of pair moments; any network: :class:`NetworkObjective`)."""
    if not problem.is_plain:
        obj = NetworkObjective(problem, degree=1)
        return obj.loss, obj.gradient()
    mo = landscape_moments(problem, residual=False)
    return population_loss(problem, mo), population_gradient(problem, mo)


def exact_hessian(problem: Problem) -> np.ndarray:
    """Dense exact Hessian ``(P, P)`` over the trained parameters (residual term included)."""
    return PopulationHessian(problem).to_dense()


# ----------------------------------------------------------------------------- descent
@dataclass
class Descent:
    """Outcome of the descent phase: end point, steps taken, loss and gradient-norm history."""

    problem: Problem
    steps: int
    losses: list[float] = field(default_factory=list)
    gradient_norms: list[float] = field(default_factory=list)
    method: str = "gd"


class Progress:
    """One stderr line at most every ``every`` seconds (``enabled``), for the long loops of this module."""

    def __init__(self, enabled: bool, label: str, every: float = 10.0):
        self.enabled, self.label, self.every = bool(enabled), label, every
        self.t0 = self.last = time.perf_counter()

    def __call__(self, text: str) -> None:
        now = time.perf_counter()
        if self.enabled and now - self.last >= self.every:
            self.last = now
            print(f"  {self.label}: {text}, {now - self.t0:.0f} s", file=sys.stderr, flush=True)


def gradient_descent(problem: Problem, *, lr: float | None = None, max_steps: int = 20000, gtol: float = 1e-6, record_every: int = 50,
                     progress: bool = False) -> Descent:
    """Gradient descent on the exact population loss until ``||g|| <= gtol`` or ``max_steps``.

    ``lr`` defaults to ``1 / lambda_max`` of the exact Hessian at the start (computed
    once); a step that would raise the loss is retried at half the rate (kept halved).
    ``progress``: a line on stderr at most every 10 s (steps, loss, gradient norm).
    """
    report = Progress(progress, "descent")
    pr = as_problem(problem)
    max_steps = require_positive_int(max_steps, "max_steps")
    if lr is None:
        top = PopulationHessian(pr).spectrum(which="largest", k=1).largest
        lr = 1.0 / max(float(top or 0.0), 1e-12)
    if not np.isfinite(lr) or lr <= 0:
        raise NearoptError(f"lr must be positive and finite, got {lr}")
    theta = trained_parameters(pr)
    loss, g = loss_and_gradient(pr)
    out = Descent(pr, 0, [loss], [float(np.linalg.norm(g))], "gd")
    step = 0
    while step < max_steps and np.linalg.norm(g) > gtol:
        trial = at_parameters(pr, theta - lr * g)
        t_loss, t_g = loss_and_gradient(trial)
        if not np.isfinite(t_loss) or t_loss > loss:
            lr *= 0.5
            if lr < 1e-12:
                break
            continue
        theta, pr, loss, g = theta - lr * g, trial, t_loss, t_g
        step += 1
        report(f"step {step}/{max_steps}, loss {loss:.6g}, gradient norm {np.linalg.norm(g):.3g} (stops at {gtol:.3g})")
        if step % record_every == 0:
            out.losses.append(loss)
            out.gradient_norms.append(float(np.linalg.norm(g)))
    out.problem, out.steps = pr, step
    out.losses.append(loss)
    out.gradient_norms.append(float(np.linalg.norm(g)))
    return out


def trust_region(problem: Problem, *, max_steps: int = 500, gtol: float = 1e-10) -> Descent:
    """``scipy.optimize.minimize(method="trust-exact")`` on the exact loss, gradient and Hessian."""
    pr = as_problem(problem)

    def fun(th):
        return loss_and_gradient(at_parameters(pr, th))

    res = scipy.optimize.minimize(fun, trained_parameters(pr), jac=True, hess=lambda th: exact_hessian(at_parameters(pr, th)),
                                  method="trust-exact", options={"maxiter": int(max_steps), "gtol": float(gtol)})
    end = at_parameters(pr, res.x)
    loss, g = loss_and_gradient(end)
    return Descent(end, int(res.nit), [float(res.fun)], [float(np.linalg.norm(g))], "trust-exact")


# ----------------------------------------------------------------------------- Newton polish
def newton_polish(problem: Problem, *, gtol: float | None = None, max_iter: int = 100, progress: bool = False) -> tuple[Problem, list[float]]:
    """Safeguarded Newton on the gradient (module docstring), damped Levenberg-Marquardt style.

    The step is ``s = -(H^2 + mu I)^+ H g`` over the eigenvalues of ``H`` above the rank
    tolerance: ``mu -> 0`` is the Newton step ``-H^+ g``; ``mu`` grows (x10) when a step
    does not lower ``||g||`` and shrinks (/10) when it does, so near-singular Hessians
    (non-isolated critical points) still make progress. Goes on past ``gtol`` (default
    :func:`gradient_tolerance`) towards the rounding floor ``gtol / FLOOR_FACTOR`` and
    stops there, after ``max_iter`` accepted steps, or when ``mu`` exceeds ``1e8 lambda_max^2``.
    Returns the end point and the history of ``||g||``.
    """
    pr = as_problem(problem)
    gtol = gradient_tolerance(pr) if gtol is None else float(gtol)
    theta = trained_parameters(pr)
    _, g = loss_and_gradient(pr)
    hist = [float(np.linalg.norm(g))]
    mu = 0.0
    report = Progress(progress, "Newton polish")
    for _ in range(int(max_iter)):
        if hist[-1] <= gtol / FLOOR_FACTOR:
            break
        with warnings.catch_warnings():  # the step's pseudo-inverse, not an answer: its null space needs no warning
            warnings.simplefilter("ignore", NullSpaceWarning)
            spec, U = PopulationHessian(pr).eigh()
        lam = spec.eigenvalues
        keep = ~RankPolicy.zero_mask(lam, spec.rank)
        lam_k, U_k = lam[keep], U[:, keep]
        top = float(np.max(np.abs(lam))) if lam.size else 1.0
        c = U_k.T @ g
        accepted = False
        while mu <= 1e8 * top**2:
            s = -(U_k @ (c * lam_k / (lam_k**2 + mu)))
            trial = at_parameters(pr, theta + s)
            _, t_g = loss_and_gradient(trial)
            if np.all(np.isfinite(t_g)) and np.linalg.norm(t_g) < hist[-1]:
                theta, pr, g, accepted = theta + s, trial, t_g, True
                mu = mu / 10.0 if mu > 1e-16 * top**2 else 0.0
                break
            mu = max(10.0 * mu, 1e-8 * top**2)
        if not accepted:
            break
        hist.append(float(np.linalg.norm(g)))
        report(f"iteration {len(hist) - 1}, gradient norm {hist[-1]:.3g}")
    return pr, hist


def eigenvector_following(problem: Problem, target_index: int, *, max_steps: int = 500, radius: float | None = None, gtol: float | None = None,
                          progress: bool = False) -> Descent:
    """Eigenvector following towards a critical point of index ``target_index`` (Cerjan & Miller 1981; Wales 1994).

    At ``theta`` with Hessian eigenpairs ``(lambda_i, u_i)`` (ascending) and ``F_i = u_i . g``, the step is
    ``h = sum_i s_i 2 F_i / (|lambda_i| + (lambda_i^2 + 4 F_i^2)^(1/2)) u_i`` with ``s_i = +1`` (ascend) for the
    ``target_index`` lowest eigenvalues and ``-1`` (descend) for the others: Newton's ``-F_i / lambda_i`` where
    ``lambda_i`` has the sign the target asks for and ``|lambda_i| >> |F_i|``, a step of length ``~ 1`` (then
    cut) where ``lambda_i ~ 0``. ``||h||`` is capped by the trust radius ``radius`` (default ``0.1 max(1, ||theta_0||)``),
    halved when a step raises ``||g||`` by more than half and doubled (up to its start) when it lowers it.
    Stops when ``||g|| <= gtol`` (default :func:`gradient_tolerance` times ``FLOOR_FACTOR``: the Newton polish
    goes on from there) or after ``max_steps`` steps. Returns the end point (``method="eigenvector following"``).
    """
    pr = as_problem(problem)
    theta = trained_parameters(pr)
    r_max = 0.1 * max(1.0, float(np.linalg.norm(theta))) if radius is None else float(radius)
    r = r_max
    gtol = FLOOR_FACTOR * gradient_tolerance(pr) if gtol is None else float(gtol)
    loss, g = loss_and_gradient(pr)
    out = Descent(pr, 0, [loss], [float(np.linalg.norm(g))], "eigenvector following")
    report = Progress(progress, "eigenvector following")
    sign = -np.ones(theta.size)
    sign[:target_index] = 1.0
    step = 0
    while step < max_steps and out.gradient_norms[-1] > gtol:
        with warnings.catch_warnings():  # the step's modes, not an answer
            warnings.simplefilter("ignore", NullSpaceWarning)
            spec, U = PopulationHessian(pr).eigh()
        lam = spec.eigenvalues
        F = U.T @ g
        h = U @ (sign * 2.0 * F / (np.abs(lam) + np.sqrt(lam**2 + 4.0 * F**2) + TINY))
        norm = float(np.linalg.norm(h))
        if norm > r:
            h *= r / norm
        trial = at_parameters(pr, theta + h)
        t_loss, t_g = loss_and_gradient(trial)
        t_norm = float(np.linalg.norm(t_g))
        if not np.isfinite(t_norm) or t_norm > 1.5 * out.gradient_norms[-1]:
            r *= 0.5
            if r < 1e-12 * r_max:
                break
            continue
        r = min(2.0 * r, r_max) if t_norm < out.gradient_norms[-1] else r
        theta, pr, loss, g = theta + h, trial, t_loss, t_g
        step += 1
        out.losses.append(float(loss))
        out.gradient_norms.append(t_norm)
        report(f"step {step}/{max_steps}, gradient norm {t_norm:.3g}")
    out.problem, out.steps = pr, step
    return out


# ----------------------------------------------------------------------------- classification
@dataclass
class CriticalPoint:
    """A (candidate) critical point of the population loss and its spectral classification.

    ``eigenvalues`` ``(P,)``: the exact Hessian over the trained parameters, ascending;
    ``tolerance``: the rank rule's eigenvalue tolerance ``tau``; ``index``, ``zero_modes``,
    ``positive`` count ``lambda < -tau``, ``|lambda| <= tau``, ``lambda > tau``.
    """

    problem: Problem
    loss: float
    loss_relative: float
    gradient_norm: float
    gradient_tolerance: float
    eigenvalues: np.ndarray
    tolerance: float
    index: int
    zero_modes: int
    positive: int
    classification: str
    descent_steps: int = 0
    newton_history: list[float] = field(default_factory=list)
    descent: str = "none"
    #: the student's output vanishes (:func:`is_trivial`): the trivial critical point ``f = 0``
    trivial: bool = False
    #: restarts made by ``avoid_trivial`` (``None``: not asked)
    restarts: int | None = None
    #: the index asked of :func:`eigenvector_following` (``None``: not asked)
    target_index: int | None = None
    #: the curvature at the start and at this point (``track=`` of :func:`find_critical_point`), else ``None``
    curvature: CurvatureTrack | None = None

    @property
    def converged(self) -> bool:
        return bool(self.gradient_norm <= self.gradient_tolerance)

    @property
    def student(self) -> TwoLayerNet:
        return self.problem.point

    def notes(self) -> list[str]:
        """What the class rests on, where a reader could misread it: a ``gtol`` above the rounding-level
        tolerance (near a degenerate minimum the smallest eigenvalues are only right at the rounding level),
        a student narrower than the teacher (:func:`width_note`), the trivial point ``f = 0`` (:data:`TRIVIAL_NOTE`)."""
        out = []
        if self.target_index is not None and self.converged and self.index != self.target_index:
            out.append(f"the search ended at index {self.index}, not the target index {self.target_index}")
        if self.trivial and self.converged:
            v_zero = not np.any(np.abs(self.student.W2) > math.sqrt(TRIVIAL_RTOL) * max(1.0, float(np.max(np.abs(self.problem.teacher.W2)))))
            out.append(TRIVIAL_NOTE if v_zero else "the trivial critical point f = 0 (the student's output vanishes)")
        floor = gradient_tolerance(self.problem)
        if self.converged and self.gradient_norm > floor:
            out.append(f"accepted at gradient norm {self.gradient_norm:.3g} by gtol {self.gradient_tolerance:.3g}, above the "
                       f"rounding-level tolerance {floor:.3g}: near a degenerate minimum the class may be wrong")
        width = width_note(self.problem)
        if width is not None and self.classification in ("spurious local minimum", "degenerate critical point"):
            out.append(width)
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary (the CLI output of ``nearopt critical``); ``classification_note`` holds :meth:`notes`, if any."""
        lam = self.eigenvalues
        notes = self.notes()
        return {
            "classification": self.classification,
            **({"classification_note": "; ".join(notes)} if notes else {}),
            "loss": self.loss,
            "loss_relative": self.loss_relative,
            "gradient_norm": self.gradient_norm,
            "gradient_tolerance": self.gradient_tolerance,
            "converged": self.converged,
            "trivial": self.trivial,
            **({"restarts": self.restarts} if self.restarts is not None else {}),
            **({"target_index": self.target_index} if self.target_index is not None else {}),
            "index": self.index,
            "zero_modes": self.zero_modes,
            "positive": self.positive,
            "P": int(lam.size),
            "eigenvalue_tolerance": self.tolerance,
            "lambda_min": float(lam[0]) if lam.size else float("nan"),
            "lambda_max": float(lam[-1]) if lam.size else float("nan"),
            "smallest_positive": float(lam[lam > self.tolerance].min()) if np.any(lam > self.tolerance) else float("nan"),
            "K": self.student.n_hidden,
            "M": self.problem.teacher.n_hidden,
            "N_i": self.problem.n_inputs,
            "activation": self.student.activation.name,
            "trained": self.problem.trained,
            "descent": self.descent,
            "descent_steps": self.descent_steps,
            "newton_iterations": max(len(self.newton_history) - 1, 0),
            "newton_gradient_norms": list(self.newton_history),
            **({"curvature": self.curvature.to_dict()} if self.curvature is not None else {}),
        }

    def save(self, path: str | Path) -> Path:
        """Write the point atomically to ``.npz``: the student's ``W1`` ``(K, N_i)``, ``W2`` ``(M, K)`` and biases (a student
        file for ``nearopt spectrum --student``), the teacher (``teacher_W1``, ``teacher_W2``, its biases, its activation
        when it differs), ``eigenvalues`` and the scalars."""
        s, t = self.student, self.problem.teacher
        extra = {f"teacher_{k}": v for k, v in t.arrays().items() if k in ("b1", "b2")}
        if t.activation != s.activation:
            extra["teacher_activation"] = np.asarray(t.activation.name)
        return io.write_npz(path, **s.arrays(), teacher_W1=t.W1, teacher_W2=t.W2, **extra, eigenvalues=self.eigenvalues,
                            loss=np.asarray(self.loss), gradient_norm=np.asarray(self.gradient_norm), index=np.asarray(self.index),
                            zero_modes=np.asarray(self.zero_modes), classification=np.asarray(self.classification),
                            activation=np.asarray(s.activation.name), trained=np.asarray(self.problem.trained))


@dataclass(frozen=True)
class SavedPoint:
    """A point read back from :meth:`CriticalPoint.save` (or any student file): the student, and the
    teacher and trained blocks when the file carries them (``None`` otherwise)."""

    student: TwoLayerNet
    teacher: TwoLayerNet | None
    trained: str | None


def load_point(path: str | Path, activation: Activation) -> SavedPoint:
    """Read a student file; a saved critical point also gives its teacher and trained blocks.

    The weights are validated by :func:`nearopt.model.io.load_weights`; a file that names an
    activation must name ``activation``.
    """
    arrays = io.load_weights(path, role="student")
    W1 = arrays["W1"]
    student = TwoLayerNet(W1, arrays["W2"], activation, arrays.get("b1"), arrays.get("b2"))
    keys = ("teacher_W1", "teacher_b1", "teacher_W2", "teacher_b2", "teacher_activation", "trained", "activation")
    stored = io.read_arrays(path, "student file")
    meta = {k: stored[k] for k in keys if k in stored}
    if "activation" in meta and str(meta["activation"]) != activation.name:
        raise NearoptError(f"student file {path} was saved for activation {str(meta['activation'])!r}, not {activation.name!r}")
    teacher = None
    if "teacher_W1" in meta and "teacher_W2" in meta:
        tW1, tW2 = (np.asarray(meta[k], dtype=np.float64) for k in ("teacher_W1", "teacher_W2"))
        t_act = get_activation(str(meta["teacher_activation"])) if "teacher_activation" in meta else activation
        if tW1.ndim != 2 or tW1.shape[1] != W1.shape[1] or tW2.size != tW1.shape[0] * student.n_outputs:
            raise NearoptError(f"student file {path}: its teacher_W1 {tW1.shape} / teacher_W2 {tW2.shape} do not form a teacher for N_i = {W1.shape[1]}")
        biases = {k: np.asarray(meta[f"teacher_{k}"], dtype=np.float64) for k in ("b1", "b2") if f"teacher_{k}" in meta}
        try:
            teacher = TwoLayerNet(tW1, tW2.reshape(student.n_outputs, -1), t_act, biases.get("b1"), biases.get("b2"))
        except NearoptError as exc:
            raise NearoptError(f"student file {path}: its teacher is not valid: {exc}") from None
    trained = str(meta["trained"]) if "trained" in meta else None
    return SavedPoint(student, teacher, trained)


def classify(problem: Problem | TwoLayerNet, *, gtol: float | None = None) -> CriticalPoint:
    """Spectrum, index, zero modes and class of the problem's point (module docstring)."""
    pr = as_problem(problem)
    return _classify(pr, check_gtol(gtol, pr))


def _classify(pr: Problem, gtol: float | None) -> CriticalPoint:
    """:func:`classify` with a checked ``gtol``."""
    tp = require_teacher_power(pr.teacher)
    loss, g = loss_and_gradient(pr)
    gnorm = float(np.linalg.norm(g))
    gtol = gradient_tolerance(pr) if gtol is None else gtol
    with warnings.catch_warnings():  # the class says what the zero count decided (degenerate or not), and the CLI its note
        warnings.simplefilter("ignore", NullSpaceWarning)
        spec = PopulationHessian(pr).spectrum()
    assert spec.inertia is not None
    lam, tau = spec.eigenvalues, spec.rank.eigenvalue_tolerance
    neg, zero, pos = spec.inertia.negative, spec.inertia.zero, spec.inertia.positive
    rel = loss / tp
    if gnorm > gtol:
        cls = "not converged"
    elif rel <= GLOBAL_RTOL:
        cls = "global minimum"
    elif neg == 0:
        cls = "spurious local minimum" if zero == 0 else "degenerate critical point"
    elif pos == 0 and zero == 0:
        cls = "local maximum"
    else:
        cls = "saddle"
    return CriticalPoint(pr, float(loss), float(rel), gnorm, gtol, lam, float(tau), neg, zero, pos, cls, trivial=is_trivial(pr))


def find_critical_point(problem: Problem | TwoLayerNet, *, descent: str | None = None, lr: float | None = None, max_steps: int = 20000,
                        descent_gtol: float = 1e-6, gtol: float | None = None, newton_iter: int = 100, progress: bool = False,
                        avoid_trivial: bool = False, restarts: int = RESTARTS, seed: int = 0, target_index: int | None = None,
                        track: TrackSpec | int | None = None) -> CriticalPoint:
    """Converge from the problem's point to a critical point and classify it.

    ``descent``: ``"gd"`` (:func:`gradient_descent`, then Newton), ``"trust"``
    (:func:`trust_region`, then Newton) or ``"newton"`` (Newton only: converges to the
    nearest critical point of any index); ``None`` is ``"gd"`` for the paper's networks and
    ``"trust"`` otherwise (biases, outputs, another teacher activation: each loss evaluation
    integrates the kernels with means, so few steps matter). ``newton_iter``: most Newton
    iterations (:func:`newton_polish`). ``progress``: stderr lines for the long phases.

    ``avoid_trivial``: when the search converges to the trivial point ``f = 0``
    (:func:`is_trivial`), search again from the start plus a Gaussian perturbation seeded
    ``seed + i`` (restart ``i = 1 .. restarts``) of entry scale ``max(rms(theta_0), 1/sqrt(N_i))``
    (the default initial scale: a start near ``0`` is moved out of the trivial point's basin);
    the point's :attr:`~CriticalPoint.restarts` counts the restarts made, and it stays
    ``trivial`` when every restart ended there too.

    ``target_index``: the descent phase is :func:`eigenvector_following` towards a critical
    point of that index (at most ``max_steps`` steps; ``descent`` must be left out), then the
    Newton polish and the classification as always; the point's ``index`` is what the
    spectrum says, and :meth:`CriticalPoint.notes` says when it differs from the target.

    ``track`` (a :class:`~nearopt.curvature.tracking.TrackSpec` or ``k``): the curvature
    (:func:`~nearopt.curvature.tracking.track_curvature`) at the start and at the end point
    (the descent records no iterates), clock ``iterate``: ``0`` and the descent steps plus
    Newton iterations of the search that ended there; :attr:`CriticalPoint.curvature`.
    """
    pr = as_problem(problem)
    spec = TrackSpec.coerce(track)
    if spec is not None:
        spec.require(pr.n_params)
    descent_given = descent is not None
    if descent is None:
        descent = "gd" if pr.is_plain else "trust"
    if descent not in ("gd", "trust", "newton"):
        raise NearoptError(f"descent must be 'gd', 'trust' or 'newton', got {descent!r}")
    if target_index is not None:
        if descent_given:
            raise NearoptError("a target index (--index) chooses its own descent, eigenvector following: leave descent (--descent) out")
        if isinstance(target_index, bool) or not isinstance(target_index, (int, np.integer)) or target_index < 0:
            raise NearoptError(f"target_index (--index) must be an integer >= 0, got {target_index!r}")
        target_index = int(target_index)
        if target_index > pr.n_params:
            raise NearoptError(f"target_index (--index) {target_index} exceeds the number of trained parameters P = {pr.n_params}")
        descent = "ef"
    newton_iter = require_positive_int(newton_iter, "newton_iter")
    restarts = require_positive_int(restarts, "restarts")
    require_teacher_power(pr.teacher)
    gtol = check_gtol(gtol, pr)
    require_classification_memory(pr)
    cp = _search(pr, descent, lr, max_steps, descent_gtol, gtol, newton_iter, progress, target_index)
    if not avoid_trivial:
        return _tracked(pr, cp, spec)
    made = 0
    theta0 = trained_parameters(pr)
    scale = max(float(np.sqrt(np.mean(theta0**2))) if theta0.size else 0.0, 1.0 / math.sqrt(pr.n_inputs))
    while cp.converged and cp.trivial and made < restarts:
        made += 1
        xi = np.random.default_rng(int(seed) + made).standard_normal(theta0.shape)
        cp = _search(at_parameters(pr, theta0 + scale * xi), descent, lr, max_steps, descent_gtol, gtol, newton_iter, progress, target_index)
    cp.restarts = made
    return _tracked(pr, cp, spec)


def _tracked(start: Problem, cp: CriticalPoint, spec: TrackSpec | None) -> CriticalPoint:
    """``cp`` with the curvature at ``start`` and at its point (``spec``), or unchanged."""
    if spec is not None:
        iterates = cp.descent_steps + max(len(cp.newton_history) - 1, 0)
        cp.curvature = track_curvature(start, [start.point, cp.student], steps=[0, iterates], spec=spec, clock="iterate")
    return cp


def _search(pr: Problem, descent: str, lr: float | None, max_steps: int, descent_gtol: float, gtol: float | None, newton_iter: int,
            progress: bool, target_index: int | None) -> CriticalPoint:
    """One descent, Newton polish and classification from ``pr`` (arguments checked by :func:`find_critical_point`)."""
    if target_index is not None:
        d = eigenvector_following(pr, target_index, max_steps=max_steps, progress=progress)
    elif descent == "gd":
        d = gradient_descent(pr, lr=lr, max_steps=max_steps, gtol=descent_gtol, progress=progress)
    elif descent == "trust":
        d = trust_region(pr, max_steps=max_steps, gtol=descent_gtol)
    else:
        d = Descent(pr, 0, method="newton")
    end, hist = newton_polish(d.problem, gtol=gtol, max_iter=newton_iter, progress=progress)
    cp = _classify(end, gtol)  # gtol was checked against the start's scale
    cp.descent_steps, cp.newton_history, cp.descent, cp.target_index = d.steps, hist, d.method, target_index
    return cp


# ----------------------------------------------------------------------------- committee machines
def committee_teacher(k: int, d: int | None = None, activation: str | Activation = "relu") -> TwoLayerNet:
    """The orthonormal committee teacher ``f_t(x) = sum_i g(x_i)``: ``W1 = I`` ``(k, d)`` rows, ``W2 = 1``."""
    k = require_positive_int(k, "k")
    d = k if d is None else require_positive_int(d, "d")
    if d < k:
        raise NearoptError(f"an orthonormal teacher needs d >= k, got k={k}, d={d}")
    return TwoLayerNet(np.eye(k, d), np.ones((1, k)), get_activation(activation))


def committee_start(teacher: TwoLayerNet, k: int | None = None, seed: int = 0, scale: float | None = None) -> Problem:
    """A committee-machine student (second layer fixed to ones, ``trained="first"``) with
    ``W1 ~ N(0, scale^2)`` entries (default ``scale = 1/sqrt(N_i)``), seeded."""
    k = teacher.n_hidden if k is None else require_positive_int(k, "k")
    d = teacher.n_inputs
    rng = np.random.default_rng(seed)
    W = rng.normal(scale=1.0 / np.sqrt(d) if scale is None else float(scale), size=(k, d))
    return Problem(teacher, student=TwoLayerNet(W, np.ones((1, k)), teacher.activation), trained="first")


def distinct_points(points: list[CriticalPoint], rtol: float = 1e-7) -> list[tuple[CriticalPoint, int]]:
    """Group critical points equal up to the loss' symmetries (permutations of units, and of
    the input coordinates for orthonormal teachers): same loss and same Hessian spectrum to
    ``rtol``. Returns ``(representative, count)`` pairs, by increasing loss."""
    groups: list[list[Any]] = []
    for cp in sorted(points, key=lambda c: c.loss):
        for grp in groups:
            ref = grp[0]
            scale = max(abs(ref.loss), output_power(ref.problem.teacher) * GLOBAL_RTOL)
            if abs(cp.loss - ref.loss) <= rtol * scale and cp.eigenvalues.shape == ref.eigenvalues.shape and np.allclose(
                cp.eigenvalues, ref.eigenvalues, rtol=1e-5, atol=1e-6 * max(1.0, abs(ref.eigenvalues[-1]))
            ):
                grp[1] += 1
                break
        else:
            groups.append([cp, 1])
    return [(g[0], g[1]) for g in groups]


def symmetry_multiplicities(k: int) -> dict[str, int]:
    """Dimensions of the ``S_k`` isotypic pieces of ``M(k, k) = R^k (x) R^k`` at ``W = V = I`` (k >= 4).

    ``R^k = 1 + s`` (trivial + standard), ``s (x) s = 1 + s + [k-2, 2] + [k-2, 1, 1]``, so the
    committee Hessian (first layer, ``k = d``) has at most 7 distinct eigenvalues: 2 simple
    (trivial), 3 of multiplicity ``k - 1`` (standard), one of ``k(k-3)/2`` and one of
    ``(k-1)(k-2)/2``.
    """
    if k < 4:
        raise NearoptError("the 7-eigenvalue pattern needs k >= 4")
    return {"trivial": 1, "standard": k - 1, "[k-2,2]": k * (k - 3) // 2, "[k-2,1,1]": (k - 1) * (k - 2) // 2}


def isotropy_multiplicities(k: int) -> list[int]:
    """Eigenvalue multiplicities forced at a committee critical point with isotropy ``Delta(S_{k-1} x S_1)`` (k >= 5).

    Restricted to ``S_{k-1}``, ``R^k = 2 (1) + s'`` (``s'`` standard, dimension ``k - 2``), so
    ``M(k, k) = R^k (x) R^k = 5 (1) + 5 s' + [k-3, 2] + [k-3, 1, 1]``: at most 12 distinct
    eigenvalues, 5 simple, 5 of multiplicity ``k - 2``, one of ``(k-1)(k-4)/2`` and one of
    ``(k-2)(k-3)/2`` (sorted ascending here). The spurious minima of Safran & Shamir
    have this isotropy (one unit off the teacher, the others permuted among themselves).
    """
    if k < 5:
        raise NearoptError("the Delta(S_{k-1} x S_1) pattern needs k >= 5")
    return sorted([1] * 5 + [k - 2] * 5 + [(k - 1) * (k - 4) // 2, (k - 2) * (k - 3) // 2])


def _committee_operator(k: int):
    """``X -> HX`` for the ReLU committee Hessian at ``W = V = I`` (``k = d``; see :func:`relu_committee_global_spectrum`)."""
    c = 1.0 / (2.0 * np.pi)
    one = np.ones(k)

    def op(X: np.ndarray) -> np.ndarray:
        T = X.T.copy()
        np.fill_diagonal(T, np.trace(X) - np.diag(X))
        return X / 4.0 + np.outer(one, one @ X) / 4.0 + c * T

    return op


def _block(k: int, basis: list[np.ndarray]) -> np.ndarray:
    """Eigenvalues of the operator restricted to the invariant span of ``basis`` (exact least squares)."""
    op = _committee_operator(k)
    B = np.stack([b.ravel() for b in basis], axis=1)
    A = np.linalg.lstsq(B, np.stack([op(b).ravel() for b in basis], axis=1), rcond=None)[0]
    return np.sort(np.linalg.eigvals(A).real)


def relu_committee_global_spectrum(k: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct eigenvalues ``(7,)`` and multiplicities of the ReLU committee Hessian at ``W = V = I`` (``k = d >= 4``).

    At the global minimum ``H = E[J J^T]``, ``J_(i,a) = 1{x_i > 0} x_a``, so
    ``H[(i,a),(j,b)] = delta_ij delta_ab / 2 + (1 - delta_ij)(delta_ab / 4 + (delta_ai delta_bj + delta_aj delta_bi) / (2 pi))``
    (``E[x_a x_b 1{x_i>0} 1{x_j>0}]``). As an operator on ``X`` ``(k, k)``:
    ``HX = X/4 + 1 1^T X / 4 + T(X) / (2 pi)`` with ``T(X)_ii = sum_{j != i} X_jj``,
    ``T(X)_ij = X_ji``. It commutes with ``X -> P X P^T``, so (:func:`symmetry_multiplicities`)
    ``1/4 - 1/(2 pi)`` on antisymmetric ``X`` with zero row sums (``[k-2,1,1]``),
    ``1/4 + 1/(2 pi)`` on symmetric zero-diagonal ``X`` with zero row sums (``[k-2,2]``), and
    the eigenvalues of a 2 x 2 block (trivial: ``X = a I + b (J - I)``) and a 3 x 3 block,
    each ``k - 1`` times (standard: ``diag(z)``, ``z 1^T - diag(z)``, ``1 z^T - diag(z)``, ``1.z = 0``).
    """
    k = require_positive_int(k, "k")
    mult = symmetry_multiplicities(k)
    one = np.ones(k)
    z = np.zeros(k)
    z[0], z[1] = 1.0, -1.0
    c = 1.0 / (2.0 * np.pi)
    triv = _block(k, [np.eye(k), np.ones((k, k)) - np.eye(k)])
    std = _block(k, [np.diag(z), np.outer(z, one) - np.diag(z), np.outer(one, z) - np.diag(z)])
    values = np.concatenate([triv, std, [0.25 + c, 0.25 - c]])
    counts = np.array([1, 1] + [mult["standard"]] * 3 + [mult["[k-2,2]"], mult["[k-2,1,1]"]])
    o = np.argsort(values)
    values, counts = values[o], counts[o]
    # the standard block contains 1/4 - 1/(2 pi) once: merge coincident values (k(k-1)/2 in all: every antisymmetric X)
    keep = np.concatenate([[True], np.diff(values) > 1e-12])
    return values[keep], np.add.reduceat(counts, np.flatnonzero(keep))
