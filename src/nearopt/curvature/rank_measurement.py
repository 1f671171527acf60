"""Measured rank of the Hessian at the optimum, and sweeps over sizes.

The rank is decided from the singular values of ``J / sqrt(N)`` (``J`` the
``N × P`` per-sample Jacobian, obtained as the R factor of a chunked QR in
float64), never from ``eigvalsh(H)``. Each :class:`RankMeasurement` carries the
:class:`~nearopt.policy.RankDecision` (tolerance, the singular values either
side of it, their ratio ``gap`` and the ``margin`` to the tolerance), the
prediction of :mod:`nearopt.theory.rank_prediction`, and a list of ``warnings``: when
``N < P`` (the sample size may cap the rank), when the decision has no clear
gap, when a larger gap lies among the kept values than at the cut, and when
the measurement disagrees with an exact prediction.

Typical use::

    import nearopt as no
    m = no.measure_rank(no.sample_teacher(6, 8, "quadratic", seed=0))
    m.rank, m.prediction.rank, m.decision.gap, m.warnings
    rows = no.rank_sweep("cubic", n_inputs=[4], n_hidden=range(1, 9), teachers=3)
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.stats

from ..errors import NearoptError, require_positive_int
from ..model.activations import Activation, get_activation
from ..model.network import TwoLayerNet, sample_inputs, sample_teacher
from ..model.problem import GaussianInputs, Problem
from ..policy import CLEAR_MARGIN, MIN_GAP, RankDecision, RankPolicy
from ..spectra import NullSpaceWarning, Spectrum
from ..theory.rank_prediction import RankPrediction, predict_rank
from .batch import BatchGaussNewton
from .population import PopulationHessian, population_spectrum

__all__ = [
    "compare_spectra", "compare_with_population", "DEFAULT_OVERSAMPLE", "default_samples", "measure_population_rank", "measure_rank",
    "MIN_DEFAULT_SAMPLES", "network_rank", "NetworkRank", "null_space_hint", "rank_sweep", "rank_vs_samples", "RankMeasurement", "ROUTES", "sweep_samples", "SweepRow"
]

#: default batch size is this many times ``P`` (so ``N`` never caps the rank) ...
DEFAULT_OVERSAMPLE = 4
#: ... and at least this many samples
MIN_DEFAULT_SAMPLES = 200

ROUTES = ("batch", "population")



def default_samples(n_params: int, oversample: float = DEFAULT_OVERSAMPLE) -> int:
    """``N = max(oversample · P, 200)``: enough that ``N`` does not cap the rank.

    With ``N ≥ 4P`` the smallest nonzero singular value of ``J/√N`` sits near the
    population value (Marchenko–Pastur factor ``1 − √(P/N) ≥ 0.5``).
    """
    if not (np.isfinite(oversample) and oversample > 0):
        raise NearoptError(f"oversample factor must be positive, got {oversample}")
    return int(max(np.ceil(oversample * n_params), MIN_DEFAULT_SAMPLES))


def sweep_samples(n_params: int, *, samples: int | None = None, samples_sweep: Sequence[int] | None = None,
                  oversample: float = DEFAULT_OVERSAMPLE) -> int:
    """The largest batch size ``N`` a rank measurement of ``n_params`` parameters uses: the largest of
    ``samples_sweep``, else ``samples``, else :func:`default_samples` (what memory checks must fit)."""
    if samples_sweep is not None:
        return max(samples_sweep)
    return int(samples) if samples is not None else default_samples(n_params, oversample)


@dataclass
class RankMeasurement:
    """Numerical rank of one network's Hessian at the optimum.

    ``singular_values`` are those of ``J/√N`` (batch) or ``sqrt`` of the
    population eigenvalues, descending, shape ``(min(N, P),)``; the Hessian's
    eigenvalues are their squares (the other ``P − len`` are exact zeros).
    """

    activation: str
    n_inputs: int
    n_hidden: int
    n_samples: int | None  # None: population
    decision: RankDecision
    singular_values: np.ndarray
    prediction: RankPrediction
    route: str = "batch"
    teacher_seed: int | None = None
    data_seed: int | None = None
    seconds: float = float("nan")
    warnings: list[str] = field(default_factory=list)
    min_gap: float = MIN_GAP

    @property
    def clear(self) -> bool:
        """A trusted decision: the policy's ``clear`` (margin to the tolerance *and* a gap ``≥ min_gap``)."""
        return bool(self.decision.clear)

    @property
    def rank(self) -> int:
        return self.decision.rank

    @property
    def n_params(self) -> int:
        return self.decision.size

    @property
    def eigenvalues(self) -> np.ndarray:
        """Nonzero-candidate eigenvalues ``s²`` of ``H``, descending, ``(min(N, P),)``."""
        return self.singular_values**2

    @property
    def smallest_nonzero_eigenvalue(self) -> float:
        return float(self.singular_values[self.rank - 1] ** 2) if self.rank else float("nan")

    @property
    def agrees(self) -> bool:
        """Whether the measured rank is what the prediction says (``≤`` for a bound)."""
        return self.prediction.admits(self.rank)

    @property
    def largest_internal_gap(self) -> tuple[int, float]:
        """``(k, s_k / s_{k+1})`` for the largest ratio among the kept values (``(0, 1)`` if none)."""
        kept = self.singular_values[: self.rank]
        if kept.size < 2:
            return 0, 1.0
        ratios = kept[:-1] / kept[1:]
        k = int(np.argmax(ratios))
        return k + 1, float(ratios[k])

    def to_dict(self, values: bool = True) -> dict[str, Any]:
        d = {
            "activation": self.activation,
            "N_i": self.n_inputs,
            "N_h": self.n_hidden,
            "P": self.n_params,
            "samples": self.n_samples,
            "route": self.route,
            "teacher_seed": self.teacher_seed,
            "data_seed": self.data_seed,
            "rank": self.rank,
            "predicted": self.prediction.to_dict(),
            "agrees": self.agrees,
            "clear": self.clear,
            "min_gap": self.min_gap,
            "decision": self.decision.to_dict(),
            "smallest_nonzero_eigenvalue": self.smallest_nonzero_eigenvalue,
            "largest_eigenvalue": float(self.singular_values[0] ** 2) if self.singular_values.size else float("nan"),
            "seconds": self.seconds,
            "warnings": list(self.warnings),
        }
        if values:
            d["singular_values"] = self.singular_values
        return d


def _value(x: float) -> str:
    """A singular value for a message: ``none`` where there is none (nothing kept or nothing dropped)."""
    return f"{x:.3g}" if np.isfinite(x) else "none"


def _warnings(decision: RankDecision, s: np.ndarray, pred: RankPrediction, n_samples: int | None, measured: RankMeasurement) -> list[str]:
    out = []
    P = decision.size
    if n_samples is not None and n_samples < P:
        binding = n_samples <= pred.population_rank
        out.append(
            f"N = {n_samples} < P = {P}: the batch rank is capped at N"
            + (f", below the population rank {pred.population_rank}; the measured rank says nothing about it" if binding else "")
        )
    if decision.margin < CLEAR_MARGIN:
        out.append(
            f"no clear gap at the tolerance {decision.tolerance:.3g}: last kept {_value(decision.last_kept)}, "
            f"first dropped {_value(decision.first_dropped)} (margin {decision.margin:.3g} < 10); rank {decision.rank} is uncertain"
        )
    if decision.margin >= CLEAR_MARGIN and decision.gap < measured.min_gap:
        out.append(
            f"the gap at the cut is only {decision.gap:.3g} (< {measured.min_gap:.3g}): a smooth decay of the kept values into "
            "float64 round-off looks like this; the dropped directions may be real but unresolvable, rank "
            f"{decision.rank} is uncertain"
        )
    k, ratio = measured.largest_internal_gap
    if np.isfinite(decision.gap) and ratio > decision.gap:
        out.append(f"a larger gap ({ratio:.3g}) lies inside the kept values at rank {k} than at the cut ({decision.gap:.3g})")
    if not pred.admits(decision.rank):
        rel = "≤" if pred.kind == "bound" else "="
        out.append(f"measured rank {decision.rank} disagrees with the prediction ({rel} {pred.rank}, {pred.kind})")
    return out


def _finish(m: RankMeasurement) -> RankMeasurement:
    m.warnings = _warnings(m.decision, m.singular_values, m.prediction, m.n_samples, m)
    return m


def measure_rank(
    net: TwoLayerNet,
    X: np.ndarray | None = None,
    *,
    n_samples: int | None = None,
    oversample: float = DEFAULT_OVERSAMPLE,
    data_seed: int = 0,
    rtol: float | None = None,
    chunk_size: int | None = None,
    device="cpu",
    teacher_seed: int | None = None,
    min_gap: float = MIN_GAP,
) -> RankMeasurement:
    """Rank of the batch Hessian ``JᵀJ/N`` at the optimum, from the singular values of ``J``.

    Parameters
    ----------
    net : TwoLayerNet
        The teacher (= student).
    X : ndarray, shape (N, N_i), optional
        Inputs; default ``n_samples`` Gaussian inputs drawn with ``data_seed``.
    n_samples : int, optional
        Default :func:`default_samples` ``(P, oversample)``.
    rtol : float, optional
        Relative tolerance on singular values (default ``max(N, P)·eps``).
    min_gap : float
        Smallest ratio last-kept / first-dropped that counts as a clear cut
        (:data:`MIN_GAP`); see :attr:`RankMeasurement.clear`.

    Returns
    -------
    RankMeasurement
        ``singular_values`` of ``J/√N``, shape ``(min(N, P),)``, descending.
    """
    t0 = time.perf_counter()
    if X is None:
        N = require_positive_int(n_samples, "number of samples") if n_samples is not None else default_samples(net.n_params, oversample)
        X = sample_inputs(N, net.n_inputs, seed=data_seed)
    elif n_samples is not None:
        raise NearoptError("give either inputs X or n_samples, not both")
    N = int(np.shape(X)[0])
    policy = RankPolicy(rtol=rtol, min_gap=min_gap)
    spec = BatchGaussNewton(net, X, chunk_size=chunk_size, device=device).spectrum("factor", policy=policy)
    s = np.sqrt(spec.eigenvalues[::-1][: min(N, net.n_params)])  # singular values of J / sqrt(N), descending
    decision = spec.rank
    pred = predict_rank(net.activation, net.n_inputs, net.n_hidden, n_samples=N)
    extra = [] if net.activation.is_smooth else _coverage_warnings(net, np.asarray(X, dtype=np.float64))
    m = RankMeasurement(
        net.activation.name, net.n_inputs, net.n_hidden, N, decision, s, pred, "batch", teacher_seed, data_seed, time.perf_counter() - t0, min_gap=min_gap
    )
    m = _finish(m)
    m.warnings[:0] = extra
    return m


def _coverage_warnings(net: TwoLayerNet, X: np.ndarray) -> list[str]:
    """Kinked activations (ReLU): warn when too few samples resolve the units' half-spaces.

    The batch rank of a ReLU net reaches ``P − N_h`` only if every unit is active
    on enough samples and every pair of units is separated (``sign(w_a·x) ≠
    sign(w_b·x)``) on enough samples; nearly parallel ``w_a, w_b`` leave a thin
    wedge that a finite batch may miss. "Enough" is taken as ``2 N_i`` (heuristic).
    """
    S = (X @ net.W1.T > 0).astype(np.float64)  # (N, N_h)
    need = 2 * net.n_inputs
    out = []
    active = np.minimum(S.sum(0), X.shape[0] - S.sum(0))
    if active.min() < need:
        out.append(f"unit {int(active.argmin())} is on one side of its kink for all but {int(active.min())} samples (< 2 N_i = {need}): the batch rank may fall below the population rank")
    if net.n_hidden > 1:
        sep = S.T @ (1 - S) + (1 - S).T @ S  # (N_h, N_h) samples separating units a and b
        np.fill_diagonal(sep, np.inf)
        a, b = np.unravel_index(np.argmin(sep), sep.shape)
        if sep[a, b] < need:
            out.append(f"only {int(sep[a, b])} samples separate the half-spaces of units {a} and {b} (< 2 N_i = {need}; nearly parallel weights): the batch rank may fall below the population rank")
    return out


def measure_population_rank(net: TwoLayerNet, *, method: str = "auto", rtol: float | None = None, teacher_seed: int | None = None) -> RankMeasurement:
    """Rank of the population Hessian via :func:`nearopt.curvature.population.population_spectrum`.

    The decision is the one the population route made (its own square root
    and tolerance); ``singular_values`` are ``sqrt`` of its eigenvalues.
    """
    t0 = time.perf_counter()
    with warnings.catch_warnings():  # the measurement states its own clarity (its warnings), once
        warnings.simplefilter("ignore", NullSpaceWarning)
        spec = population_spectrum(net, method=method, policy=RankPolicy(rtol=rtol, min_gap=MIN_GAP))
    eig = np.sort(np.abs(np.asarray(spec.eigenvalues, dtype=np.float64)))[::-1]
    pred = predict_rank(net.activation, net.n_inputs, net.n_hidden)
    m = RankMeasurement(
        net.activation.name, net.n_inputs, net.n_hidden, None, spec.rank, np.sqrt(eig), pred, "population", teacher_seed, None, time.perf_counter() - t0
    )
    return _finish(m)


def rank_vs_samples(
    net: TwoLayerNet, samples: Iterable[int], *, data_seed: int = 0, rtol: float | None = None, chunk_size: int | None = None, device="cpu", min_gap: float = MIN_GAP
) -> list[RankMeasurement]:
    """Measured rank for each batch size ``N`` in ``samples`` (nested batches: the first ``N`` rows of one draw)."""
    sizes = [require_positive_int(n, "number of samples") for n in samples]
    if not sizes:
        raise NearoptError("give at least one sample size")
    X = sample_inputs(max(sizes), net.n_inputs, seed=data_seed)
    return [measure_rank(net, X[:n], rtol=rtol, chunk_size=chunk_size, device=device, data_seed=data_seed, min_gap=min_gap) for n in sizes]


@dataclass
class SweepRow:
    """All teachers of one ``(N_i, N_h)`` cell of a sweep."""

    measurements: list[RankMeasurement]

    @property
    def first(self) -> RankMeasurement:
        return self.measurements[0]

    @property
    def ranks(self) -> list[int]:
        return [m.rank for m in self.measurements]

    @property
    def prediction(self) -> RankPrediction:
        return self.first.prediction

    @property
    def smallest_gap(self) -> float:
        """The smallest gap at the cut over the row's teachers."""
        return min(m.decision.gap for m in self.measurements)

    @property
    def min_margin(self) -> float:
        return min(m.decision.margin for m in self.measurements)

    @property
    def all_clear(self) -> bool:
        return all(m.clear for m in self.measurements)

    @property
    def agrees(self) -> bool:
        return all(m.agrees for m in self.measurements)

    @property
    def warnings(self) -> list[str]:
        seen: dict[str, None] = {}
        for m in self.measurements:
            for w in m.warnings:
                seen.setdefault(f"teacher {m.teacher_seed}: {w}" if len(self.measurements) > 1 else w)
        return list(seen)

    def to_dict(self, values: bool = False) -> dict[str, Any]:
        m = self.first
        return {
            "activation": m.activation,
            "N_i": m.n_inputs,
            "N_h": m.n_hidden,
            "P": m.n_params,
            "samples": m.n_samples,
            "route": m.route,
            "rank_min": min(self.ranks),
            "rank_max": max(self.ranks),
            "ranks": self.ranks,
            "predicted": self.prediction.to_dict(),
            "agrees": self.agrees,
            "smallest_gap": self.smallest_gap,
            "min_margin": self.min_margin,
            "all_clear": self.all_clear,
            "warnings": self.warnings,
            "teachers": [x.to_dict(values=values) for x in self.measurements],
        }


def rank_sweep(
    activation: str | Activation,
    n_inputs: Sequence[int] | int,
    n_hidden: Sequence[int] | int,
    *,
    teachers: int = 3,
    seed: int = 0,
    samples: int | None = None,
    oversample: float = DEFAULT_OVERSAMPLE,
    data_seed: int = 0,
    rtol: float | None = None,
    sigma1: float | None = None,
    sigma2: float | None = None,
    population: bool = False,
    chunk_size: int | None = None,
    device="cpu",
    min_gap: float = MIN_GAP,
) -> list[SweepRow]:
    """Measured vs predicted rank over a grid of ``(N_i, N_h)``, ``teachers`` per cell.

    Teacher ``t`` of every cell uses seed ``seed + t``; inputs use ``data_seed``.
    ``samples`` fixes ``N`` for every cell (default :func:`default_samples` per
    cell). ``population=True`` uses the population route instead of a batch.
    """
    act = get_activation(activation)
    n_is = [int(n_inputs)] if isinstance(n_inputs, (int, np.integer)) else [int(n) for n in n_inputs]
    n_hs = [int(n_hidden)] if isinstance(n_hidden, (int, np.integer)) else [int(n) for n in n_hidden]
    if not n_is or not n_hs:
        raise NearoptError("give at least one N_i and one N_h")
    teachers = require_positive_int(teachers, "number of teachers")
    rows = []
    for n_i in n_is:
        for n_h in n_hs:
            ms = []
            for t in range(teachers):
                net = sample_teacher(n_i, n_h, act, seed=seed + t, sigma1=sigma1, sigma2=sigma2)
                if population:
                    ms.append(measure_population_rank(net, rtol=rtol, teacher_seed=seed + t))
                else:
                    ms.append(
                        measure_rank(
                            net,
                            n_samples=samples,
                            oversample=oversample,
                            data_seed=data_seed,
                            rtol=rtol,
                            chunk_size=chunk_size,
                            device=device,
                            teacher_seed=seed + t,
                            min_gap=min_gap,
                        )
                    )
            rows.append(SweepRow(ms))
    return rows


def null_space_hint(problem: Problem | TwoLayerNet) -> tuple[int, str] | None:
    """The null-space dimension every route's smallest end skips when theory knows the rank, and its basis.

    ``P -`` :meth:`PopulationHessian.known_rank` (``predict_rank`` at the teacher with both layers
    trained, exact or observed); ``None`` elsewhere (the rank policy decides).
    """
    curv = PopulationHessian(problem if isinstance(problem, Problem) else Problem(problem))
    known = curv.known_rank()
    return None if known is None else (curv.n_params - known[0], known[1])


def compare_with_population(batch: Spectrum, problem: Problem, law: GaussianInputs | None = None, *, policy: RankPolicy | None = None,
                            device: str = "cpu") -> tuple[Spectrum, Spectrum]:
    """``batch`` (every eigenvalue of a batch Hessian of ``problem``) with ``extra["comparison"]`` against the exact
    population spectrum of the same problem under ``law`` (default the problem's own), and that population spectrum.

    ``comparison``: ``population_law`` (the law's name; ``"gaussian-equivalent of the inputs"`` for a law fitted to
    data) and :func:`compare_spectra`.
    """
    curv = PopulationHessian(problem.replace(inputs=law) if law is not None else problem, device=device)
    population = curv.spectrum(policy=policy or RankPolicy())
    name = "gaussian" if law is None else "gaussian-equivalent of the inputs" if law.name == "gaussian-equivalent" else law.name
    comparison = {"population_law": name, **compare_spectra(batch, population)}
    return batch.replace(extra={**batch.extra, "comparison": comparison}), population


def compare_spectra(batch: Spectrum, population: Spectrum) -> dict[str, Any]:
    """How far a batch spectrum lies from the population one: the two-sample KS distance of all
    ``P`` eigenvalues, and the relative errors of the largest and of the smallest nonzero eigenvalue.

    Both must be exact results (every eigenvalue); ``samples`` is the batch's ``N``.
    """
    if not (batch.exact and population.exact):
        raise NearoptError("comparing spectra needs every eigenvalue of both (exact routes)")
    ks = float(scipy.stats.ks_2samp(batch.eigenvalues, population.eigenvalues).statistic)

    def rel(a: float, b: float) -> float | None:
        return None if not (np.isfinite(a) and np.isfinite(b)) or b == 0 else float(abs(a - b) / abs(b))

    return {
        "samples": batch.samples,
        "ks_distance": ks,
        "largest_relative_error": rel(batch.largest, population.largest),
        "smallest_nonzero_relative_error": rel(batch.smallest_nonzero, population.smallest_nonzero),
        "rank_batch": batch.rank.rank,
        "rank_population": population.rank.rank,
        "population_method": population.method,
        "population_largest": population.largest,
        "population_smallest_nonzero": population.smallest_nonzero,
    }


@dataclass(frozen=True)
class NetworkRank:
    """The rank of the population Hessian of one two-layer network at the optimum: measured (the one
    :class:`~nearopt.policy.RankPolicy` on every eigenvalue) against a prediction where one is known.

    ``predicted`` is ``None`` with ``basis`` saying why when no formula covers the network (biases,
    or several outputs of a non-linear network).
    """

    n_params: int
    measured: int
    decision: RankDecision
    predicted: int | None
    basis: str
    features: tuple[str, ...]

    @property
    def agrees(self) -> bool | None:
        return None if self.predicted is None else self.measured == self.predicted

    def to_dict(self) -> dict[str, Any]:
        return {"n_params": self.n_params, "measured": self.measured, "predicted": self.predicted, "agrees": self.agrees, "basis": self.basis,
                "features": list(self.features), "rank_decision": self.decision.to_dict()}


def network_rank(problem: Problem, policy: RankPolicy | None = None) -> NetworkRank:
    """:class:`NetworkRank` of the problem's point (every eigenvalue by the exact routes: structured when it offers)."""
    curv = PopulationHessian(problem)
    spec = curv.spectrum("auto", policy=policy or RankPolicy())
    decision = spec.rank_decision
    assert decision is not None  # every eigenvalue: the decision is made
    known = curv.known_rank()
    predicted: int | None
    if known is not None:
        predicted, basis = known
    elif problem.is_plain:
        pred = predict_rank(problem.activation, problem.n_inputs, problem.point.n_hidden)
        predicted, basis = (pred.rank if pred.kind in ("exact", "observed") else None), f"predict_rank, {pred.kind}: {pred.basis}"
    else:
        predicted, basis = None, ("no rank formula is known for " + ", ".join(problem.features())
                                  + " (a linear network with several outputs and no biases has q (r + M - q))")
    return NetworkRank(curv.n_params, int(decision.rank), decision, predicted, basis, tuple(problem.features()))
