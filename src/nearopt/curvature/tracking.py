"""Curvature along a trajectory: :func:`track_curvature` and its result :class:`CurvatureTrack`.

Given a :class:`~nearopt.model.problem.Problem` (teacher, input law, trained blocks) and a
sequence of student points (the weights a training run recorded), at each point the exact
population Hessian :class:`~nearopt.curvature.population.PopulationHessian` (residual term
included) gives

* the ``k`` largest eigenvalues and the ``k`` smallest outside the null space (the
  ``smallest`` end of :class:`~nearopt.spectra.request.SpectrumRequest`: the most negative
  first at a saddle, the smallest nonzero at a minimum; ``nan`` where fewer than ``k``
  eigenvalues lie outside it);
* the inertia (negative, zero, positive counts) from every eigenvalue, with the one rank
  policy (:meth:`~nearopt.policy.RankPolicy.inertia` of the :class:`~nearopt.spectra.spectrum.Spectrum`'s
  rank decision, as :func:`~nearopt.landscape.critical.classify` uses);
* the population loss;
* the teacher overlap of each of the ``2k`` eigenvectors (:func:`teacher_overlap`).

Two routes, chosen by :func:`nearopt.spectra.solver.choose_route` for the ``k`` largest with
eigenvectors (``method="auto"``) or named:

``dense``
    one ``eigh`` of the dense Hessian (:meth:`~nearopt.curvature.base.Curvature.eigh`): every
    eigenpair, so the ends, the inertia and the vectors come from one factorisation.
``lanczos``
    every eigenvalue by the exact route :func:`~nearopt.spectra.solve` picks for
    ``which="all"`` (the structured spectrum for the paper's networks at any size; the
    dense one otherwise) for the inertia and to place the ends, and the eigenvectors of both
    ends by block LOBPCG (``scipy.sparse.linalg.lobpcg``, a block Krylov method) on the
    matrix-free product, **warm-started** from the previous point's Ritz vectors (plus
    :data:`~nearopt.spectra.extremes.GUARD` guard vectors per end). The eigenvalues reported
    are the Ritz values of those vectors (relative residual ``||H x - theta x|| / max|lambda|``
    at most ``tol``, recorded per point); ``products`` counts the matrix-vector products, the
    saving of warm starts is measured by ``benchmarks/bench_tracking.py``.

Everything is float64.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.sparse.linalg import lobpcg

from ..errors import NearoptError, require_positive_int
from ..model.network import TwoLayerNet
from ..model.problem import Problem, as_problem
from ..policy import DEFAULT_POLICY
from ..spectra.extremes import GUARD, CountingOperator
from ..spectra.request import DEFAULT_TOL, SpectrumRequest
from ..spectra.solver import NullSpaceWarning, choose_route
from ..spectra.spectrum import Spectrum
from .population import PopulationHessian

__all__ = ["CurvatureTrack", "teacher_overlap", "teacher_projector", "track_curvature", "TRACK_METHODS", "TRACK_MAXITER", "TrackSpec"]

#: the routes of :func:`track_curvature` (``auto`` chooses by nearopt's route costs)
TRACK_METHODS = ("auto", "dense", "lanczos")
#: most LOBPCG iterations per end and point on the ``lanczos`` route
TRACK_MAXITER = 1000


@dataclass(frozen=True)
class TrackSpec:
    """What to track along a trajectory: the ``track=`` option of the training functions.

    Attributes
    ----------
    k : int
        Eigenvalues (and eigenvectors) at each end, ``1 <= k < P``.
    every : int
        Track every ``every``-th recorded point (the first and the last always).
    method : {"auto", "dense", "lanczos"}
        The route (module docstring).
    tol : float
        ``lanczos``: relative residual ``||H x - theta x|| / max|lambda|`` each Ritz pair must reach.
    warm : bool
        ``lanczos``: start each point from the previous point's Ritz vectors (else random, seeded).
    seed : int
        Seed of the random start vectors.
    """

    k: int = 3
    every: int = 1
    method: str = "auto"
    tol: float = DEFAULT_TOL
    warm: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, (int, np.integer)) or self.k < 1:
            raise NearoptError(f"the tracked k must be an integer >= 1, got {self.k!r}")
        object.__setattr__(self, "k", int(self.k))
        object.__setattr__(self, "every", require_positive_int(self.every, "track every"))
        if self.method not in TRACK_METHODS:
            raise NearoptError(f"unknown tracking method {self.method!r}; choose from {', '.join(TRACK_METHODS)}")
        if not (isinstance(self.tol, (int, float)) and math.isfinite(self.tol) and 0 < self.tol < 1):
            raise NearoptError(f"the tracking tolerance must be a number in (0, 1), got {self.tol!r}")

    @classmethod
    def coerce(cls, track: TrackSpec | int | None) -> TrackSpec | None:
        """``None`` (no tracking), a spec unchanged, or an integer ``k`` (every recorded point)."""
        if track is None or isinstance(track, TrackSpec):
            return track
        return cls(k=track)

    def require(self, n_params: int) -> None:
        """Refuse ``k >= P`` (one line), before any work."""
        if self.k >= n_params:
            raise NearoptError(f"the tracked k = {self.k} must be smaller than the number of trained parameters P = {n_params}")

    def select(self, n: int) -> np.ndarray:
        """Indices ``(T,)`` of the tracked points among ``n`` recorded ones: ``0, every, 2 every, ...`` and ``n - 1``."""
        if n < 1:
            return np.zeros(0, dtype=np.int64)
        return np.unique(np.concatenate([np.arange(0, n, self.every), [n - 1]])).astype(np.int64)


@dataclass(frozen=True)
class CurvatureTrack:
    """The curvature at ``T`` recorded points of a trajectory (arrays indexed by recorded point).

    Attributes
    ----------
    steps : ndarray ``(T,)``
        Where each point was recorded, in the unit ``clock`` names (GD or SGD steps, flow time,
        ``alpha``, iterate).
    largest, smallest : ndarray ``(T, k)``
        The ``k`` largest and the ``k`` smallest eigenvalues outside the null space, ascending
        (``nan`` where fewer exist).
    inertia : ndarray of int ``(T, 3)``
        Negative, zero and positive counts (the rank policy's tolerance on every eigenvalue).
    loss : ndarray ``(T,)``
        Population loss ``1/2 E (f_student - f_teacher)^2``.
    teacher_overlap : ndarray ``(T, 2k)``
        :func:`teacher_overlap` of the eigenvectors of ``smallest`` then ``largest`` (column order as theirs).
    zero_tolerance : ndarray ``(T,)``
        The eigenvalue tolerance of the inertia's zero count.
    zero_clear : ndarray of bool ``(T,)``
        Whether the eigenvalues back the zero count clearly (:class:`~nearopt.policy.NullSpace`).
    residual : ndarray ``(T,)``
        ``lanczos``: the largest relative residual of the Ritz pairs; ``dense``: 0 (exact).
    products : ndarray of int ``(T,)``
        Matrix-vector products of the eigensolver (``lanczos``; 0 on the ``dense`` route).
    route : str
        ``dense`` or ``lanczos``; ``warm`` whether Ritz vectors carried over; ``exact_route``
        the route of every eigenvalue (the inertia).
    """

    steps: np.ndarray
    largest: np.ndarray
    smallest: np.ndarray
    inertia: np.ndarray
    loss: np.ndarray
    teacher_overlap: np.ndarray
    zero_tolerance: np.ndarray
    zero_clear: np.ndarray
    residual: np.ndarray
    products: np.ndarray
    k: int
    route: str
    exact_route: str
    warm: bool
    tol: float
    clock: str = "step"
    dtype: str = "float64"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def converged(self) -> bool:
        """Every Ritz pair met the tolerance (always on the ``dense`` route)."""
        return bool(np.all(self.residual <= self.tol)) if self.route == "lanczos" else True

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (the ``curvature`` section of the CLI's ``--json``)."""
        return {
            "clock": self.clock, "steps": self.steps, "k": self.k, "largest": self.largest, "smallest": self.smallest,
            "inertia": self.inertia, "inertia_columns": ["negative", "zero", "positive"], "loss": self.loss,
            "teacher_overlap": self.teacher_overlap, "overlap_columns": [f"smallest_{i}" for i in range(self.k)] + [f"largest_{i}" for i in range(self.k)],
            "zero_tolerance": self.zero_tolerance, "zero_clear": self.zero_clear, "residual": self.residual, "products": self.products,
            "route": self.route, "exact_route": self.exact_route, "warm": self.warm, "tol": self.tol, "converged": self.converged,
            "dtype": self.dtype, **self.extra,
        }

    def table(self) -> str:
        """A short plain-text table: one line per point (loss, both extreme eigenvalues, inertia, top overlap)."""
        head = f"  {self.clock:>10}  {'loss':>11}  {'lambda_min':>11}  {'lambda_max':>11}  {'inertia (-/0/+)':>16}  {'overlap(top)':>12}"
        lines = [f"curvature along the trajectory (k = {self.k}, route {self.route}):", head]
        for i, s in enumerate(self.steps):
            neg, zero, pos = (int(x) for x in self.inertia[i])
            lines.append(f"  {s:>10.6g}  {self.loss[i]:>11.4g}  {self.smallest[i, 0]:>11.4g}  {self.largest[i, -1]:>11.4g}  "
                         f"{f'{neg}/{zero}/{pos}':>16}  {self.teacher_overlap[i, -1]:>12.4f}")
        return "\n".join(lines)


def teacher_projector(teacher: TwoLayerNet) -> np.ndarray:
    """The orthogonal projector ``(N_i, N_i)`` onto the span of the teacher's first-layer rows.

    The rows' numerical rank is the rank policy's cut of the singular values of ``W1*``
    (:meth:`~nearopt.policy.RankPolicy.cut`, as the structured routes find row spaces).
    """
    _, s, Vt = np.linalg.svd(teacher.W1, full_matrices=False)
    r = DEFAULT_POLICY.cut(s, float(s[0]) if s.size else 0.0, teacher.W1.shape)
    V = Vt[:r].T
    return V @ V.T


def teacher_overlap(vectors: np.ndarray, problem: Problem, projector: np.ndarray | None = None) -> np.ndarray:
    """Fraction of each vector's first-layer part in the teacher's first-layer row space, ``(m,)``.

    For a vector ``u`` ``(P,)`` over the trained parameters, ``U1`` ``(K, N_i)`` is its ``W1`` block
    and ``Pi`` the projector onto the span of the teacher's rows ``W1*`` (:func:`teacher_projector`):
    ``overlap = ||U1 Pi||_F^2 / ||U1||_F^2`` in ``[0, 1]``; ``nan`` when ``U1 = 0`` or ``W1`` is not
    trained. Coordinates are the weights' own (under ``x ~ N(0, Sigma)`` too). For an eigenvalue of
    multiplicity above one the overlap of a single eigenvector depends on the basis chosen in its
    eigenspace; sums over a whole eigenspace do not.

    Parameters
    ----------
    vectors : ndarray ``(P, m)``
    problem : Problem
        Its trained blocks place ``W1`` in the vectors; its teacher gives the span.
    """
    V = np.asarray(vectors, dtype=np.float64)
    m = V.shape[1]
    student = problem.point
    if "W1" not in problem.trained_blocks:
        return np.full(m, np.nan)
    start, stop = student.blocks()["W1"]
    rows = np.flatnonzero((problem.trained_indices >= start) & (problem.trained_indices < stop))
    Pi = teacher_projector(problem.teacher) if projector is None else projector
    U1 = V[rows].T.reshape(m, student.n_hidden, student.n_inputs)  # W1 is the leading block, row-major
    total = np.einsum("mki,mki->m", U1, U1)
    inside = np.einsum("mki,ij,mkj->m", U1, Pi, U1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, inside / np.where(total > 0, total, 1.0), np.nan)


def _check(problem: Problem, points: Sequence[TwoLayerNet], spec: TrackSpec) -> int:
    """``P``; refuses an empty sequence, mismatched points and ``k`` outside ``[1, P)`` (one line each)."""
    if len(points) == 0:
        raise NearoptError("no points to track the curvature at")
    for net in points:
        if not isinstance(net, TwoLayerNet):
            raise NearoptError(f"tracked points must be TwoLayerNet students, got {type(net).__name__}")
    P = problem.replace(student=points[0]).n_params
    spec.require(P)
    return P


def _route(curv: PopulationHessian, spec: TrackSpec) -> str:
    if spec.method != "auto":
        return spec.method
    return "lanczos" if choose_route(curv, SpectrumRequest(which="largest", k=spec.k, vectors=True)) == "lanczos" else "dense"


def _start(prev: np.ndarray | None, m: int, P: int, rng: np.random.Generator) -> np.ndarray:
    """``(P, m)`` start block: the previous Ritz vectors (warm), filled up with Gaussian columns."""
    if prev is None:
        return rng.standard_normal((P, m))
    have = min(prev.shape[1], m)
    cols = [prev[:, :have]] if have else []
    return np.hstack(cols + [rng.standard_normal((P, m - have))])


def _lobpcg_end(op: CountingOperator, X0: np.ndarray, largest: bool, tol_abs: float) -> tuple[np.ndarray, np.ndarray]:
    """Ascending Ritz values ``(m,)`` and vectors ``(P, m)`` of one end by LOBPCG from ``X0``."""
    with warnings.catch_warnings():  # convergence is judged from the residuals the caller computes
        warnings.simplefilter("ignore", UserWarning)
        theta, X = lobpcg(op, X0, tol=tol_abs, maxiter=TRACK_MAXITER, largest=largest)
    order = np.argsort(theta)
    return np.asarray(theta)[order], np.asarray(X)[:, order]


def _exact_spectrum(curv: PopulationHessian) -> Spectrum:
    with warnings.catch_warnings():  # the zero count's clarity is recorded per point (zero_clear)
        warnings.simplefilter("ignore", NullSpaceWarning)
        return curv.spectrum(which="all")


def _dense_point(curv: PopulationHessian, k: int) -> tuple[Spectrum, np.ndarray, np.ndarray, np.ndarray, float, int]:
    """``(spectrum, smallest, largest, vectors (P, 2k), ...)`` from one dense ``eigh``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NullSpaceWarning)
        full, U = curv.eigh()
    assert full.null_space is not None
    lam = full.eigenvalues
    idx = np.flatnonzero(~full.null_space.mask(lam))[:k]
    small = np.full(k, np.nan)
    small[: idx.size] = lam[idx]
    vecs = np.full((lam.size, 2 * k), np.nan)
    vecs[:, : idx.size] = U[:, idx]
    vecs[:, k:] = U[:, lam.size - k :]
    return full, small, lam[lam.size - k :], vecs, 0.0, 0


def _lanczos_point(curv: PopulationHessian, k: int, prev: dict[str, np.ndarray], spec: TrackSpec, rng: np.random.Generator):
    """The ends' Ritz pairs by LOBPCG (warm from ``prev``, updated in place), every eigenvalue by the exact route."""
    full = _exact_spectrum(curv)
    assert full.null_space is not None
    lam, P = full.eigenvalues, full.n_params
    idx = np.flatnonzero(~full.null_space.mask(lam))[:k]
    scale = max(abs(float(lam[0])), abs(float(lam[-1])), np.finfo(np.float64).tiny)
    op = CountingOperator(curv)
    m_small = min(int(idx[-1]) + 1 + GUARD if idx.size else k + GUARD, P - 1)
    top_t, top_X = _lobpcg_end(op, _start(prev.get("largest"), min(k + GUARD, P - 1), P, rng), True, spec.tol * scale)
    bot_t, bot_X = _lobpcg_end(op, _start(prev.get("smallest"), m_small, P, rng), False, spec.tol * scale)
    products = op.products
    if spec.warm:
        prev["largest"], prev["smallest"] = top_X, bot_X
    theta = np.concatenate([bot_t[idx], top_t[top_t.size - k :]])
    X = np.hstack([bot_X[:, idx], top_X[:, top_X.shape[1] - k :]])
    R = np.asarray(curv.matmat(X)) - X * theta
    residual = float(np.max(np.linalg.norm(R, axis=0)) / scale)
    small = np.full(k, np.nan)
    small[: idx.size] = theta[: idx.size]
    vecs = np.full((P, 2 * k), np.nan)
    vecs[:, : idx.size] = X[:, : idx.size]
    vecs[:, k:] = X[:, idx.size :]
    return full, small, theta[idx.size :], vecs, residual, products


def track_curvature(problem: Problem | TwoLayerNet, points: Sequence[TwoLayerNet], *, steps: Sequence[float] | np.ndarray | None = None,
                    spec: TrackSpec | int | None = None, clock: str = "step") -> CurvatureTrack:
    """The curvature at each of ``points`` (module docstring).

    Parameters
    ----------
    problem : Problem or TwoLayerNet
        Teacher, input law and trained blocks (its own student point is not used).
    points : sequence of TwoLayerNet
        The student at each recorded point, ``T`` of them, in order (warm starts follow it).
    steps : sequence of float ``(T,)``, optional
        Where each was recorded (default ``0 .. T-1``), in the unit ``clock`` names.
    spec : TrackSpec or int
        ``k`` and the route (an integer is ``k``); its ``every`` is applied by the callers
        that select points from a record, not here.
    """
    pr = as_problem(problem)
    spec = TrackSpec.coerce(3 if spec is None else spec)
    assert spec is not None
    points = list(points)
    P = _check(pr, points, spec)
    st = np.arange(len(points), dtype=np.float64) if steps is None else np.asarray(steps, dtype=np.float64).ravel()
    if st.size != len(points):
        raise NearoptError(f"{st.size} steps for {len(points)} points")
    k, T = spec.k, len(points)
    Pi = teacher_projector(pr.teacher)
    out = {name: np.full((T, k), np.nan) for name in ("largest", "smallest")}
    overlap = np.full((T, 2 * k), np.nan)
    inertia = np.zeros((T, 3), dtype=np.int64)
    loss, ztol, resid = np.full(T, np.nan), np.full(T, np.nan), np.zeros(T)
    zclear, products = np.zeros(T, dtype=bool), np.zeros(T, dtype=np.int64)
    prev: dict[str, np.ndarray] = {}
    rng = np.random.default_rng(spec.seed)
    route = exact_route = ""
    for t, net in enumerate(points):
        pt = pr.replace(student=net)
        curv = PopulationHessian(pt)
        if curv.n_params != P:
            raise NearoptError(f"point {t} has {curv.n_params} trained parameters, the first {P}")
        route = route or _route(curv, spec)
        if route == "dense":
            full, small, large, vecs, res, prod = _dense_point(curv, k)
        else:
            full, small, large, vecs, res, prod = _lanczos_point(curv, k, prev, spec, rng)
        assert full.inertia is not None and full.null_space is not None
        exact_route = full.method
        out["smallest"][t], out["largest"][t] = small, large
        overlap[t] = teacher_overlap(np.nan_to_num(vecs), pt, Pi)
        overlap[t, :k][np.isnan(small)] = np.nan
        inertia[t] = (full.inertia.negative, full.inertia.zero, full.inertia.positive)
        loss[t], ztol[t], zclear[t] = curv.loss, full.rank.eigenvalue_tolerance, full.null_space.clear
        resid[t], products[t] = res, prod
    return CurvatureTrack(st, out["largest"], out["smallest"], inertia, loss, overlap, ztol, zclear, resid, products, k, route, exact_route,
                          bool(spec.warm and route == "lanczos"), float(spec.tol), clock)
