"""Many-start surveys of the population landscape: batched descent, Newton polish, families.

From ``R`` random starts of a student of width ``K`` (any teacher, any trained blocks) we

1. *descend* on the exact population loss ``L = 1/2 E[(f_s - f_t)^2]``, ``x ~ N(0, I)``
   (:func:`batched_descent`, :func:`descend`: for ReLU on the CPU each run compiled by numba,
   ``nearopt.landscape._relu_jit``, where numba is installed (``nearopt[fast]``); otherwise all starts at once
   in torch, CPU or GPU): plain gradient descent
   ``theta <- theta - eta grad L`` with a fixed step, until the largest *per-unit* gradient
   norm ``max_a ||dL/d(w_a, v_a)||`` (trained entries) is at most ``gtol`` (``converged``),
   the point leaves every bounded region or turns non-finite (``diverged``), or ``max_steps``
   pass (``unconverged``). Every start is kept and counted under its status;
2. *polish* all end points that did not diverge at once (:func:`batched_newton_polish`:
   Newton on the gradient, each step by a batched MINRES on exact Hessian products, safeguarded
   as :func:`nearopt.landscape.critical.newton_polish`; a point it leaves unconverged is polished alone by
   :func:`nearopt.landscape.critical.newton_polish`) and *classify* them per group of equal loss and
   symmetry invariants (:func:`polish_case`): a few members of each group get the dense exact
   spectrum (:func:`nearopt.landscape.critical.classify`: global minimum, spurious local minimum,
   degenerate critical point, saddle with its index, local maximum, not converged), the others
   take it when these agree;
3. group the points into *families* (:func:`families`): same class, same loss and same
   Hessian spectrum, i.e. equal up to the loss' symmetries. Each family reports its count,
   loss, class, index, extreme eigenvalues, the multiplicity pattern of its spectrum
   (eigenvalues clustered with gaps ``> CLUSTER_RTOL max|lambda|``) and, for the orthonormal
   committee (``K = M = N_i``, second layer fixed), the stabiliser of its representative in
   ``Delta S_k`` and the multiplicities that stabiliser forces (:func:`symmetry_analysis`).

Batched closed forms (:func:`batched_loss_gradient`): the pair kernels of ReLU, ``erf`` and
``erf:unit`` of :mod:`nearopt.gaussian.kernels` (the formulas written once there; the compiled engine
runs the same code objects), on tensors of ``R`` students at once; the Newton polish's Hessian
products are the forward-mode derivative of that gradient, or for the ReLU committee (``v`` fixed)
its differential worked out once (``nearopt.landscape.polish._ReluHessian``, tested equal to the forward-mode
derivative and to an autodiff Hessian; 9-19 times cheaper per product than forward mode, with which a
survey cell runs at 0.78-0.96 of the speed, ``benchmarks/bench_polish_hvp.py``).
Any other activation: the library's
checked expectations (:func:`nearopt.gaussian.objective.population_loss` /
``population_gradient``), one start at a time (correct, not vectorised).

The protocol of Safran & Shamir (2018) is :data:`SAFRAN_SHAMIR` (``docs/landscape.md``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.optimize
import scipy.stats
import torch

from .. import __version__
from ..curvature.base import resolve_device
from ..errors import NearoptError, require_positive_finite, require_positive_int
from ..gaussian.kernels import CLOSED_FORMS
from ..model.network import TwoLayerNet, require_plain
from ..model.problem import TRAINED_BLOCKS
from ..resources import dense_bytes, require_memory
from .critical import CriticalPoint, committee_teacher, require_teacher_power
from .descent import SAFRAN_SHAMIR, BatchDescent, DescentProtocol, descend, loss_gradient_function, padded_loss_gradient_function, starts, with_grad
from .families import Family, families
from .polish import polish_case

__all__ = [
    "Case", "committee_survey", "FINAL_CLASSES", "require_fresh_family_folder", "require_survey_memory", "SPURIOUS_CLASSES", "Survey", "survey",
    "SURVEY_ADVICE", "SURVEY_COPIES", "survey_many", "UNRESOLVED_CLASSES", "wilson_interval"
]


# ----------------------------------------------------------------------------- the survey
def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (``scipy.stats.binomtest``); ``(nan, nan)`` for ``n = 0``."""
    if n == 0:
        return float("nan"), float("nan")
    ci = scipy.stats.binomtest(int(successes), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


#: polished classes counted as spurious (index 0 above the global level; a degenerate one is a minimum up to its zero modes)
SPURIOUS_CLASSES = ("spurious local minimum", "degenerate critical point")


#: polished classes that are not minima: the run's end is unknown
UNRESOLVED_CLASSES = ("saddle", "local maximum", "not converged")


@dataclass
class Survey:
    """A finished survey: the descents, every polished point (``None`` for diverged runs) and the families."""

    teacher: TwoLayerNet
    width: int
    trained: str
    protocol: DescentProtocol
    seed: int
    descent: BatchDescent
    points: list[CriticalPoint | None]
    families: list[Family]
    seconds: dict[str, float]
    #: per-unit gradient norm at which the descent handed over to Newton (``None``: the full descent)
    handover: float | None = None
    #: handed-over runs that did not end at a strict minimum and resumed the descent to ``protocol.gtol``
    resumed: int = 0
    #: polished points by route (:func:`polish_case`): ``batched`` Newton, ``one_point`` Newton, ``dense_spectra`` computed,
    #: and the seconds of each phase (``newton_s``, ``one_point_s``, ``classify_s``)
    polish: dict[str, float] = field(default_factory=dict)

    @property
    def n_starts(self) -> int:
        return int(self.descent.status.size)

    def _minimum_above(self) -> np.ndarray:
        """``(R,)`` bool: polished end point of a class in :data:`SPURIOUS_CLASSES` with loss ``>= protocol.spurious_loss``."""
        return np.array([p is not None and p.classification in SPURIOUS_CLASSES and p.loss >= self.protocol.spurious_loss
                         for p in self.points], dtype=bool)

    @property
    def spurious(self) -> np.ndarray:
        """``(R,)`` bool: converged runs whose *polished* end point is a minimum above the global level (class in
        :data:`SPURIOUS_CLASSES`) with loss at least ``protocol.spurious_loss``.

        Judged on the polished point, not on the descent's last loss: a descent stopped early (a
        handover, a coarse ``gtol``) has a loss that says nothing about where it ends. Unconverged
        runs are not counted (the protocol's criterion), whatever their polished class (:meth:`notes`).
        """
        return (self.descent.status == "converged") & self._minimum_above()

    @property
    def unresolved(self) -> int:
        """Runs whose polished end point is not a minimum (a saddle, a local maximum, not converged): where the
        descent would end from there is unknown, so they count neither as spurious nor as global."""
        return sum(p is not None and p.classification in UNRESOLVED_CLASSES for p in self.points)

    def notes(self) -> list[str]:
        """What a reader of the headline must know: unresolved runs, a student narrower than the teacher."""
        out = []
        n = self.unresolved
        if n:
            out.append(f"{n} of {self.n_starts} runs ended at a saddle or an unresolved point, not at a minimum: the stop of the descent "
                       "(gtol, max_steps) is too coarse to say where they would end; they are not counted as spurious")
        late = int(np.count_nonzero((self.descent.status == "unconverged") & self._minimum_above()))
        if late:
            out.append(f"{late} unconverged run(s) were polished to a minimum above the global level; not counted as spurious "
                       "(the protocol counts converged runs; more max_steps would decide them)")
        if self.width < self.teacher.n_hidden:
            out.append(f"the student (K = {self.width}) is narrower than the teacher (M = {self.teacher.n_hidden}): zero loss is out of reach "
                       "unless the teacher's units are redundant, so the lowest minimum found may be the best at this width although it is "
                       "classed 'spurious local minimum' (above the global level, loss 0)")
        return out

    def to_dict(self) -> dict[str, Any]:
        n_sp, R = int(self.spurious.sum()), self.n_starts
        lo, hi = wilson_interval(n_sp, R)
        classes: dict[str, int] = {}
        for p in self.points:
            name = "diverged" if p is None else p.classification
            classes[name] = classes.get(name, 0) + 1
        d = self.descent
        return {"nearopt": __version__, "starts": R, "K": self.width, "M": self.teacher.n_hidden, "N_i": self.teacher.n_inputs,
                "activation": self.teacher.activation.name, "trained": self.trained, "seed": self.seed, "protocol": self.protocol.to_dict(),
                "spurious": n_sp, "spurious_fraction": n_sp / R if R else float("nan"),
                "spurious_definition": f"converged run polished to a {' or '.join(SPURIOUS_CLASSES)} with loss >= {self.protocol.spurious_loss:g}",
                "spurious_fraction_ci": [lo, hi], "ci": "Wilson score, 95 %, over all starts", "unresolved": self.unresolved,
                "notes": self.notes(),
                "converged": d.count("converged"), "diverged": d.count("diverged"), "unconverged": d.count("unconverged"),
                "classes": classes, "handover": self.handover, "resumed": self.resumed, "polish": dict(self.polish), "descent_steps": {"median": float(np.median(d.steps)) if R else 0.0, "max": int(d.steps.max()) if R else 0}, "engine": d.engine,
                "dtype": "float64", "families": [f.to_dict() for f in self.families], "seconds": dict(self.seconds)}

    def failure(self) -> str | None:
        """Why the survey measured nothing (no run ended at a minimum: all diverged, or all stopped at saddles or
        unresolved points), else ``None``: its spurious fraction of 0 would not be an answer."""
        minima = sum(p is not None and p.classification in ("global minimum", *SPURIOUS_CLASSES) for p in self.points)
        if minima:
            return None
        d = self.descent
        return (f"none of the {self.n_starts} runs ended at a minimum ({d.count('diverged')} diverged, {self.unresolved} at a saddle or "
                "an unresolved point): the spurious fraction is not measured")

    def save_families(self, folder: str | Path) -> list[Path]:
        """Write each family's representative to ``folder/family_NN.npz`` (``W1``, ``W2``: a ``--student`` file)."""
        require_fresh_family_folder(folder)
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        return [f.representative.save(folder / f"family_{i:02d}.npz") for i, f in enumerate(self.families)]


def require_fresh_family_folder(folder: str | Path) -> None:
    """Refuse a folder that already holds ``family_*.npz`` files: an earlier survey's families would lie beside this one's."""
    old = sorted(Path(folder).glob("family_*.npz")) if Path(folder).is_dir() else []
    if old:
        raise NearoptError(f"{folder} already holds {len(old)} family file(s) ({old[0].name}, ...) of an earlier survey: "
                           "choose an empty folder or remove them")


#: classes at which a handed-over run is final: the descent would not leave a strict minimum
FINAL_CLASSES = ("global minimum", "spurious local minimum")


@dataclass(frozen=True)
class Case:
    """One survey of a batch: a teacher, the student width ``K``, the number of starts and their seed."""

    teacher: TwoLayerNet
    width: int
    n_starts: int
    seed: int = 0

    def __post_init__(self) -> None:
        require_positive_int(self.width, "width")
        require_positive_int(self.n_starts, "starts")
        if isinstance(self.seed, (bool, np.bool_)) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise NearoptError(f"seed must be an integer >= 0, got {self.seed!r}")
        require_teacher_power(self.teacher)


#: working copies of the starts' arrays a survey holds at once (starts, the descent's state and gradient, the end points)
SURVEY_COPIES = 4


#: what a user can change when a survey does not fit (the options of ``nearopt landscape``)
SURVEY_ADVICE = "fewer starts (--starts), a narrower student (--student-width) or a smaller teacher (--committee, --ni, --teacher)"


def require_survey_memory(cases: list[Case], trained: str, device: str | torch.device = "cpu") -> None:
    """Refuse, before anything is drawn, a batch whose arrays or per-point dense Hessian cannot fit.

    The descent holds :data:`SURVEY_COPIES` float64 copies of the padded starts ``(R, K, d)``, ``(R, K)``
    and the padded teachers ``(R, M, d)``; each end point is classified by its dense ``P x P`` Hessian
    (``P = K d``, plus ``K`` with both layers trained) and its eigendecomposition.
    """
    K, d, M = max(c.width for c in cases), max(c.teacher.n_inputs for c in cases), max(c.teacher.n_hidden for c in cases)
    R = sum(c.n_starts for c in cases)
    arrays = SURVEY_COPIES * (dense_bytes((R, K, d)) + dense_bytes((R, K))) + dense_bytes((R, M, d)) + dense_bytes((R, M))
    require_memory(arrays, f"the survey's arrays ({R} starts, K = {K}, M = {M}, N_i = {d})", SURVEY_ADVICE, device=device)
    P = max(c.width * c.teacher.n_inputs + (c.width if trained != "first" else 0) for c in cases)
    if trained == "second":
        P = max(c.width for c in cases)
    require_memory(dense_bytes(P, copies=3), f"the classification of each end point (its dense {P} x {P} Hessian and eigenvectors)", SURVEY_ADVICE)


def survey(teacher: TwoLayerNet, *, width: int | None = None, n_starts: int = 100, trained: str = "first", protocol: DescentProtocol = SAFRAN_SHAMIR,
           seed: int = 0, handover: float | None = None, device: str | torch.device = "cpu",
           progress: Callable[[str], None] | None = None) -> Survey:
    """Draw ``n_starts`` students, descend all at once, polish and classify every end point, group the families.

    ``handover``: stop the descent when the largest per-unit gradient norm is at most this
    (instead of ``protocol.gtol``) and let the Newton polish finish. Near a strict minimum
    (``lambda_min > 0``) the descent's remaining path lies in the minimum's basin and ends at
    the same point, so such runs are final; every other run (a saddle, a degenerate point,
    not converged) resumes the descent from where it stopped, to ``protocol.gtol``, and is
    polished again. ``None`` (default): the protocol's descent in full.
    """
    case = Case(teacher, teacher.n_hidden if width is None else width, n_starts, seed)
    return survey_many([case], trained=trained, protocol=protocol, handover=handover, device=device, progress=progress)[0]


def _padded(cases: list[Case], trained: str, protocol: DescentProtocol) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[slice]]:
    """Starts and teachers of all cases zero-padded to common sizes: ``W0`` ``(R, K, d)``, ``v0``, ``T`` ``(R, M, d)``, ``u``, and each case's rows."""
    K = max(c.width for c in cases)
    d = max(c.teacher.n_inputs for c in cases)
    M = max(c.teacher.n_hidden for c in cases)
    R = sum(c.n_starts for c in cases)
    W0, v0, T, u = np.zeros((R, K, d)), np.zeros((R, K)), np.zeros((R, M, d)), np.zeros((R, M))
    rows, at = [], 0
    for c in cases:
        sl = slice(at, at + c.n_starts)
        Wc, vc = starts(c.teacher, c.width, c.n_starts, trained, protocol, c.seed)
        W0[sl, : c.width, : c.teacher.n_inputs], v0[sl, : c.width] = Wc, vc
        T[sl, : c.teacher.n_hidden, : c.teacher.n_inputs], u[sl, : c.teacher.n_hidden] = c.teacher.W1, c.teacher.W2.ravel()
        rows.append(sl)
        at += c.n_starts
    return W0, v0, T, u, rows


def _polish_rows(cases: list[Case], rows: list[slice], d: BatchDescent, which: np.ndarray, trained: str,
                 counts: list[dict[str, float]]) -> dict[int, CriticalPoint | None]:
    """Polish and classify the runs ``which`` (global row indices) of the padded descent ``d``, each case at its own sizes
    (:func:`polish_case`); diverged runs get ``None``. ``counts[i]`` accumulates the routes taken for case ``i``."""
    out: dict[int, CriticalPoint | None] = {}
    for i, (c, sl) in enumerate(zip(cases, rows)):
        mine = which[(which >= sl.start) & (which < sl.stop)]
        out.update({int(r): None for r in mine if d.status[r] == "diverged"})
        live = np.asarray([r for r in mine if d.status[r] != "diverged"], dtype=np.int64)
        if live.size:
            pts, n = polish_case(c.teacher, d.W[live, : c.width, : c.teacher.n_inputs], d.v[live, : c.width], trained)
            out.update({int(r): p for r, p in zip(live, pts)})
            for key, value in n.items():
                counts[i][key] = counts[i].get(key, 0) + value
    return out


def survey_many(cases: list[Case], *, trained: str = "first", protocol: DescentProtocol = SAFRAN_SHAMIR, handover: float | None = None,
                device: str | torch.device = "cpu", progress: Callable[[str], None] | None = None) -> list[Survey]:
    """:func:`survey` of several cases in one batch: the starts of every case, zero-padded to the largest ``K``,
    ``M`` and ``N_i`` (padding units stay exactly zero, :func:`batched_loss_gradient`), descend together, so
    small cases share the per-step cost. All cases need the same activation; without a closed form
    they run one after the other."""
    if not cases:
        raise NearoptError("survey_many needs at least one case")
    for case in cases:
        require_plain(case.teacher, "the landscape survey")
    if trained not in TRAINED_BLOCKS:
        raise NearoptError(f"trained must be one of {', '.join(TRAINED_BLOCKS)}, got {trained!r}")
    if handover is not None:
        require_positive_finite(handover, "handover")
    names = {c.teacher.activation.name for c in cases}
    if len(names) > 1:
        raise NearoptError(f"one batch takes one activation, got {', '.join(sorted(names))}")
    name = names.pop()
    device = resolve_device(device)
    require_survey_memory(cases, trained, device)
    if name not in CLOSED_FORMS and len(cases) > 1:
        return [s for c in cases for s in survey_many([c], trained=trained, protocol=protocol, handover=handover, device=device, progress=progress)]
    R = sum(c.n_starts for c in cases)
    W0, v0, T, u, rows = _padded(cases, trained, protocol)
    fn = padded_loss_gradient_function(name, T, u, device) if name in CLOSED_FORMS else with_grad(loss_gradient_function(cases[0].teacher, device))

    def report(step: int, conv: int, div: int, active: int) -> None:
        if progress is not None:
            progress(f"step {step}: {conv}/{R} converged, {div} diverged, {active} still to descend")

    first = protocol if handover is None or handover <= protocol.gtol else protocol.replace(gtol=handover)
    d = descend(fn, W0, v0, trained=trained, protocol=first, device=device, progress=report)
    if progress is not None:
        progress(f"descent done in {d.seconds:.1f} s: {d.count('converged')}/{R} converged, {d.count('diverged')} diverged, "
                 f"{d.count('unconverged')} unconverged; polishing")
    t0 = time.perf_counter()
    counts: list[dict[str, float]] = [{} for _ in cases]
    pts = _polish_rows(cases, rows, d, np.arange(R), trained, counts)
    resumed, extra = np.zeros(0, dtype=np.int64), 0.0
    if first is not protocol:
        resumed = np.array([r for r in range(R) if pts[r] is not None and d.status[r] == "converged" and pts[r].classification not in FINAL_CLASSES],  # type: ignore[union-attr]
                           dtype=np.int64)
        if resumed.size:
            rest = protocol.replace(max_steps=max(1, protocol.max_steps - int(d.steps[resumed].max())))
            e = descend(fn, d.W[resumed], d.v[resumed], trained=trained, protocol=rest, device=device, runs=resumed, progress=report)
            d.W[resumed], d.v[resumed], d.loss[resumed], d.gradient_max[resumed], d.status[resumed] = e.W, e.v, e.loss, e.gradient_max, e.status
            d.steps[resumed] += e.steps
            d.active = np.concatenate([d.active, e.active])
            extra = e.seconds
            pts.update(_polish_rows(cases, rows, d, resumed, trained, counts))
        for r, p in pts.items():  # a handed-over run meets the protocol's threshold once polished
            if p is not None and d.status[r] == "converged":
                d.gradient_max[r] = min(float(d.gradient_max[r]), p.gradient_norm)
    polish = time.perf_counter() - t0 - extra
    out = []
    for c, sl, n_polish in zip(cases, rows, counts):
        part = BatchDescent(d.W[sl, : c.width, : c.teacher.n_inputs], d.v[sl, : c.width], d.loss[sl], d.gradient_max[sl], d.steps[sl], d.status[sl],
                            d.seconds + extra, d.active, d.engine)
        points = [pts[r] for r in range(sl.start, sl.stop)]
        t1 = time.perf_counter()
        fam = families(points)
        n_res = int(np.count_nonzero((resumed >= sl.start) & (resumed < sl.stop)))
        out.append(Survey(c.teacher, c.width, trained, protocol, c.seed, part, points, fam,
                          {"descent": d.seconds + extra, "polish": polish, "families": time.perf_counter() - t1},
                          None if first is protocol else handover, n_res, n_polish))
    return out


def committee_survey(k: int, n: int | None = None, *, activation: str = "relu", **kw: Any) -> Survey:
    """:func:`survey` of the orthonormal committee ``sum_i g(x_i)`` (``k`` units, ``N_i = k``) with ``n`` student units (default ``k``)."""
    return survey(committee_teacher(k, k, activation), width=k if n is None else n, **kw)
