"""The one rank and null-space policy of nearopt (``docs/theory.md`` §4).

A curvature matrix ``H = S^T S`` is ranked from the singular values ``s`` of a
square root ``S`` whenever one is available (``J/sqrt(N)`` for a batch, the
structured or Cholesky factor otherwise): forming ``H`` squares the condition
number, so thresholding ``eigvalsh(H)`` at ``eps`` would call real directions
zero. The tolerance is NumPy's ``matrix_rank`` convention,
``max(shape) * eps * s_max`` (:func:`default_rtol`).

When only eigenvalues are known (a dense ``eigvalsh``), :func:`rank_from_eigenvalues`
applies the same rule to ``sqrt(lambda)`` with the tolerance their accuracy allows:
``eigvalsh`` of a matrix of side ``n`` resolves eigenvalues to about
``n eps lambda_max``; with a factor 100 of safety that is ``10 sqrt(n eps)``
relative on ``sqrt(lambda)`` (:func:`eigenvalue_rtol`).

Every decision is a :class:`RankDecision`: the rank, its tolerance, the
singular values either side of the cut, their ratio (``gap``) and the ``margin``
(how many times the nearer of the two lies from the tolerance). A decision with
``margin < CLEAR_MARGIN`` is not ``clear``: do not trust that rank.

A symmetric ``H`` that is not PSD (a saddle of the loss) has singular values
``|lambda|``: the same rule on ``sqrt(|lambda|)`` decides its rank, and the
eigenvalues inside the tolerance are its null space (:class:`Inertia` counts the
negative, zero and positive ones).

:class:`RankPolicy` bundles the tolerances in one immutable object and is the only
place nearopt decides what is zero: the rank of a spectrum, the null space that the
``smallest`` request skips, the classification of critical points, the numerical
rank of a weight matrix (row-space cuts of the structured routes) and the
positive semi-definiteness of a covariance. A cut is ``clear`` when both sides lie
``clear_margin`` from the tolerance and their ratio is at least :data:`MIN_GAP`, for
rank measurements and spectra alike.

How many eigenvalues an answer takes as zero is a :class:`NullSpace`
(:meth:`RankPolicy.null_space`): ``P - rank`` where the rank is known
(``predict_rank``), else the eigenvalues within the policy's tolerance (Ritz values of
a matrix-free run: below :meth:`RankPolicy.ritz_threshold`), with whether the
eigenvalues back that count and a note saying why.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import NearoptError, require_nonneg_finite, require_positive_finite

__all__ = [
    "CLEAR_MARGIN", "decide_rank", "DEFAULT_POLICY", "default_rtol", "eigenvalue_rtol", "EIGENVALUE_SAFETY", "Inertia", "MIN_GAP", "NullSpace",
    "rank_from_eigenvalues", "RankDecision", "RankPolicy", "RITZ_NULL_RTOL", "ZERO_SOURCES"
]

#: a rank decision is "clear" when the kept and the dropped singular values both
#: sit at least this factor away from the tolerance
CLEAR_MARGIN = 10.0
#: safety factor on eigenvalue accuracy (``n eps lambda_max``) in :func:`eigenvalue_rtol`
EIGENVALUE_SAFETY = 100.0
#: a cut with a gap (last kept / first dropped singular value) below this is not trusted even
#: when both sides sit far from the tolerance: erf/tanh spectra that decay smoothly into
#: float64 round-off were seen cut with gaps up to ``3e5``, while exact zero modes of
#: polynomial and ReLU networks showed gaps ``>= 1.6e8`` (``docs/rank.md``)
MIN_GAP = 1e6
#: a matrix-free run resolves the Ritz value of a zero mode only to about ``1e-11 .. 1e-10 lambda_max``
#: at its default tolerance (the value is about ``||r||^2 / gap``): Ritz values below this fraction of
#: ``lambda_max`` count as zero there when nothing else decides (:meth:`RankPolicy.ritz_threshold`)
RITZ_NULL_RTOL = 1e-9
#: where the count of zero eigenvalues of an answer comes from (:class:`NullSpace`)
ZERO_SOURCES = ("predicted rank", "structured", "rank policy", "null vectors", "given")


@dataclass(frozen=True)
class RankDecision:
    """Numerical rank of ``H = S^T S`` from the singular values ``s`` of ``S``.

    ``tolerance`` applies to singular values (``sqrt`` of eigenvalue scale);
    ``last_kept``/``first_dropped`` are the singular values either side of it
    (``nan`` when there is none), ``gap = last_kept / first_dropped`` and
    ``margin`` is how far (as a factor) the nearer of the two lies from the
    tolerance. ``clear`` is ``margin >= CLEAR_MARGIN``.
    """

    rank: int
    size: int
    tolerance: float
    last_kept: float
    first_dropped: float
    gap: float
    margin: float
    clear: bool

    @property
    def eigenvalue_tolerance(self) -> float:
        """The tolerance on the eigenvalue scale (``tolerance**2``)."""
        return self.tolerance**2

    def to_dict(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "size": self.size,
            "tolerance_singular_value": self.tolerance,
            "tolerance_eigenvalue": self.eigenvalue_tolerance,
            "last_kept_singular_value": self.last_kept,
            "first_dropped_singular_value": self.first_dropped,
            "gap": self.gap,
            "margin": self.margin,
            "clear": self.clear,
        }


def default_rtol(shape: tuple[int, int], dtype: Any = np.float64) -> float:
    """NumPy's ``matrix_rank`` convention for a square root of ``shape``: ``max(shape) * eps``."""
    return max(shape) * float(np.finfo(dtype).eps)


def eigenvalue_rtol(resolved_size: int) -> float:
    """Relative tolerance on ``sqrt(lambda)`` for eigenvalues from ``eigvalsh`` of side ``resolved_size``.

    ``sqrt(EIGENVALUE_SAFETY * n * eps)`` = ``10 sqrt(n eps)``: eigenvalues below
    ``100 n eps lambda_max`` count as zero.
    """
    return float(np.sqrt(EIGENVALUE_SAFETY * default_rtol((resolved_size, resolved_size))))


def _check_tolerance(rtol: float, atol: float) -> None:
    rtol, atol = require_positive_finite(rtol, "rtol"), require_nonneg_finite(atol, "atol")


def decide_rank(
    singular_values: np.ndarray,
    size: int,
    *,
    rtol: float | None = None,
    atol: float = 0.0,
    shape: tuple[int, int] | None = None,
) -> RankDecision:
    """Rank from singular values of a square root, tolerance ``max(atol, rtol * s_max)``.

    Parameters
    ----------
    singular_values : ndarray, shape (k,)
        Singular values of a square root ``S`` of ``H`` (any order, ``k <= size``).
    size : int
        The dimension ``P`` of ``H``; values missing from ``singular_values``
        (``k < size``) are exact zeros.
    rtol : float, optional
        Relative tolerance; default :func:`default_rtol` of ``shape`` (or ``(k, size)``).
    atol : float
        Absolute tolerance on singular values.
    shape : (int, int), optional
        Shape of ``S`` (for the default ``rtol``).
    """
    s = np.asarray(singular_values)
    if np.iscomplexobj(s) or s.dtype == object:
        raise NearoptError("singular values must be real numbers")
    s = s.astype(np.float64).ravel()
    if np.any(s < 0):
        raise NearoptError(f"singular values must be >= 0, got {float(s.min()):.3g}")
    s = np.sort(s)[::-1]
    if not np.all(np.isfinite(s)):
        raise NearoptError("singular values contain NaN or infinite values: the curvature is not finite")
    if s.size > size:
        raise NearoptError(f"{s.size} singular values for a matrix of size {size}")
    if rtol is None:
        rtol = default_rtol(shape or (max(s.size, 1), size))
    _check_tolerance(rtol, atol)
    s_max = s[0] if s.size else 0.0
    tol = max(atol, rtol * s_max)
    rank = int(np.count_nonzero(s > tol))
    last = float(s[rank - 1]) if rank > 0 else float("nan")
    first = float(s[rank]) if rank < s.size else (0.0 if rank < size else float("nan"))
    gap = last / first if 0 < rank < size and first > 0 else float("inf")
    margins = []
    if rank > 0 and tol > 0:
        margins.append(last / tol)
    if rank < size and first > 0:
        margins.append(tol / first)
    margin = min(margins) if margins else float("inf")
    return RankDecision(rank, size, tol, last, first, gap, margin, margin >= CLEAR_MARGIN)


def rank_from_eigenvalues(
    eigenvalues: np.ndarray,
    counts: np.ndarray | None = None,
    *,
    resolved_size: int | None = None,
    rtol: float | None = None,
) -> RankDecision:
    """The rank rule applied to ``sqrt(lambda)`` when no square root was formed.

    Parameters
    ----------
    eigenvalues : ndarray, shape (m,)
        Eigenvalues of ``H`` (any sign: the rule applies to ``sqrt(|lambda|)``).
    counts : ndarray of int, shape (m,), optional
        Multiplicities (structured spectra); default all ones.
    resolved_size : int, optional
        Side of the largest dense matrix whose ``eigvalsh`` produced them
        (default the total count): sets :func:`eigenvalue_rtol`.
    rtol : float, optional
        Overrides the default relative tolerance on ``sqrt(lambda)``.
    """
    lam = np.asarray(eigenvalues, dtype=np.float64).ravel()
    counts = np.ones(lam.size, dtype=np.int64) if counts is None else np.asarray(counts, dtype=np.int64)
    s = np.repeat(np.sqrt(np.abs(lam)), counts)  # singular values of a symmetric H are |lambda|
    n = int(resolved_size) if resolved_size is not None else max(s.size, 1)
    return decide_rank(s, s.size, rtol=eigenvalue_rtol(n) if rtol is None else rtol)


@dataclass(frozen=True)
class NullSpace:
    """How many eigenvalues of an answer were taken as zero, and why.

    ``n_zero`` eigenvalues (the ``n_zero`` smallest ``|lambda|``) are the null space the
    ``smallest`` end skips; ``source`` one of :data:`ZERO_SOURCES`: ``"predicted rank"``
    (``P -`` :func:`~nearopt.theory.rank_prediction.predict_rank`, exact or observed),
    ``"structured"`` (the structured route's blocks ranked by the policy), ``"rank policy"``
    (the computed eigenvalues or Ritz values against the policy's tolerance), ``"null vectors"``
    (the operator's exact null vectors, ReLU's rescaling modes), ``"given"`` (``null_dim``).
    ``clear`` is False when the eigenvalues do not back the decision (``note`` says how);
    ``threshold`` is the eigenvalue threshold applied (``nan`` when the count was known).
    """

    n_zero: int
    source: str
    clear: bool
    note: str = ""
    threshold: float = math.nan

    def __post_init__(self) -> None:
        if self.source not in ZERO_SOURCES:
            raise NearoptError(f"unknown null-space source {self.source!r}; one of {', '.join(ZERO_SOURCES)}")

    def mask(self, eigenvalues: np.ndarray) -> np.ndarray:
        """Which of every eigenvalue ``(P,)`` are taken as zero: the ``n_zero`` smallest in magnitude."""
        lam = np.asarray(eigenvalues, dtype=np.float64)
        out = np.zeros(lam.shape, dtype=bool)
        out[np.argsort(np.abs(lam), kind="stable")[: self.n_zero]] = True
        return out

    @property
    def warning(self) -> str | None:
        """A sentence for people when the decision was not clear (``None`` when it was)."""
        return None if self.clear else f"{self.n_zero} eigenvalues taken as zero ({self.source}), not clearly: {self.note}"

    def to_dict(self) -> dict[str, Any]:
        return {"n_zero": self.n_zero, "zero_source": self.source, "zero_clear": self.clear, "zero_note": self.note,
                "zero_threshold": None if math.isnan(self.threshold) else self.threshold}


@dataclass(frozen=True)
class Inertia:
    """Counts of negative, zero (inside the rank tolerance) and positive eigenvalues of ``H``."""

    negative: int
    zero: int
    positive: int

    @property
    def rank(self) -> int:
        return self.negative + self.positive

    def to_dict(self) -> dict[str, int]:
        return {"negative": self.negative, "zero": self.zero, "positive": self.positive}


@dataclass(frozen=True)
class RankPolicy:
    """What counts as zero, decided once for every use (module docstring).

    Attributes
    ----------
    rtol : float, optional
        Relative tolerance on singular values ``s`` (``sqrt(|lambda|)`` for
        eigenvalues). ``None``: the route's default -- :func:`default_rtol` of the
        factor's shape for singular values, :func:`eigenvalue_rtol` of the largest
        dense block for eigenvalues.
    clear_margin : float
        A decision is ``clear`` when the kept and the dropped values both lie at
        least this factor from the tolerance ...
    min_gap : float
        ... and the ratio of the last kept to the first dropped value is at least this
        (default :data:`MIN_GAP`: spectra that decay smoothly into round-off were seen cut
        with gaps up to ``3e5``, ``docs/rank.md``). A full rank (nothing dropped) has an
        infinite gap.
    """

    rtol: float | None = None
    clear_margin: float = CLEAR_MARGIN
    min_gap: float = MIN_GAP

    def __post_init__(self) -> None:
        if self.rtol is not None:
            _check_tolerance(float(self.rtol), 0.0)
            if self.rtol >= 1.0:
                raise NearoptError(f"rtol must be < 1 (a tolerance of {self.rtol:g} x the largest singular value calls every direction zero)")
        if not (np.isfinite(self.clear_margin) and self.clear_margin >= 1.0):
            raise NearoptError(f"clear_margin must be finite and >= 1, got {self.clear_margin!r}")
        if not (self.min_gap >= 1.0 and not np.isnan(self.min_gap)):
            raise NearoptError(f"min_gap must be >= 1, got {self.min_gap!r}")

    def _clear(self, d: RankDecision) -> RankDecision:
        """The decision with this policy's one meaning of ``clear``: margin and gap."""
        clear = bool(d.margin >= self.clear_margin and d.gap >= self.min_gap)
        if clear == d.clear:
            return d
        return RankDecision(d.rank, d.size, d.tolerance, d.last_kept, d.first_dropped, d.gap, d.margin, clear)

    def from_singular_values(self, s: np.ndarray, size: int, shape: tuple[int, int] | None = None) -> RankDecision:
        """Rank of ``H = S^T S`` from the singular values ``s`` of a square root ``S`` of ``shape``."""
        return self._clear(decide_rank(s, size, rtol=self.rtol, shape=shape))

    def from_eigenvalues(self, eigenvalues: np.ndarray, counts: np.ndarray | None = None, resolved_size: int | None = None) -> RankDecision:
        """Rank of a symmetric ``H`` from its eigenvalues (any sign; ``counts``: multiplicities)."""
        return self._clear(rank_from_eigenvalues(eigenvalues, counts, resolved_size=resolved_size, rtol=self.rtol))

    def relative_threshold(self, resolved_size: int) -> float:
        """The null threshold on ``|lambda| / lambda_max`` for eigenvalues resolved at side ``resolved_size``:
        ``rtol**2`` (``rtol`` on ``sqrt(lambda)``; default :func:`eigenvalue_rtol`, i.e. ``100 n eps``)."""
        rtol = self.rtol if self.rtol is not None else eigenvalue_rtol(max(int(resolved_size), 1))
        return float(rtol) ** 2

    def ritz_threshold(self, size: int) -> float:
        """The null threshold on ``|theta| / lambda_max`` for Ritz values of a matrix-free run on side ``size``:
        ``rtol**2`` when this policy sets ``rtol``, else what such a run resolves of a zero mode
        (:data:`RITZ_NULL_RTOL`, whatever ``size``: a Ritz value's accuracy is set by its residual,
        not by the rounding of a dense factorisation of side ``size``)."""
        if self.rtol is not None:
            return float(self.rtol) ** 2
        return RITZ_NULL_RTOL

    def null_space(self, eigenvalues: np.ndarray, decision: RankDecision, *, counts: np.ndarray | None = None,
                   known: tuple[int, str] | None = None, source: str = "rank policy", floor: float | None = None) -> NullSpace:
        """How many of every eigenvalue of ``H`` are taken as zero, and why (:class:`NullSpace`).

        ``known = (rank, basis)``: the rank is known (``predict_rank``): the ``P - rank``
        smallest ``|lambda|`` are zero; the decision is clear when that cut agrees with the
        eigenvalues (the dropped ones within ``decision``'s tolerance, the kept ones above
        ``floor``, default the tolerance over :data:`EIGENVALUE_SAFETY`: what ``eigh`` resolves).
        Otherwise the eigenvalues within ``decision``'s tolerance are zero (``source``: how
        they were computed) and the decision is as clear as ``decision`` is.
        """
        lam = np.asarray(eigenvalues, dtype=np.float64).ravel()
        lam = lam if counts is None else np.repeat(lam, np.asarray(counts, dtype=np.int64))
        tol = decision.eigenvalue_tolerance
        if known is None:
            n_zero = int(np.count_nonzero(np.abs(lam) <= tol))
            weak = [f"margin {decision.margin:.3g} < {self.clear_margin:g}"] if decision.margin < self.clear_margin else []
            weak += [f"gap {decision.gap:.3g} < {self.min_gap:g}"] if decision.gap < self.min_gap else []
            note = f"eigenvalues within the tolerance {tol:.3g}" + ("" if decision.clear else f"; the cut there has {' and '.join(weak)}")
            return NullSpace(n_zero, source, decision.clear, note, tol)
        rank, basis = known
        n_zero = lam.size - int(rank)
        if not 0 <= n_zero <= lam.size:
            raise NearoptError(f"known rank {rank} outside [0, {lam.size}]")
        mags = np.sort(np.abs(lam))
        dropped = float(mags[n_zero - 1]) if n_zero else 0.0
        kept = float(mags[n_zero]) if n_zero < lam.size else math.inf
        floor = tol / EIGENVALUE_SAFETY if floor is None else float(floor)
        clear = bool(dropped <= tol and kept > floor)
        if decision.rank != int(rank):
            basis += f" (the policy's tolerance {tol:.3g} alone would give rank {decision.rank}{'' if decision.clear else ', without a clear cut'})"
        note = basis if clear else (
            f"{basis}; the eigenvalues disagree with it: the largest taken as zero is {dropped:.3g} (tolerance {tol:.3g}), "
            f"the smallest kept {kept:.3g} (resolution {floor:.3g})")
        return NullSpace(n_zero, "predicted rank", clear, note, math.nan)

    @staticmethod
    def zero_mask(eigenvalues: np.ndarray, decision: RankDecision) -> np.ndarray:
        """Which eigenvalues lie in the null space of ``decision``: ``|lambda| <= tolerance^2``."""
        return np.abs(np.asarray(eigenvalues, dtype=np.float64)) <= decision.eigenvalue_tolerance

    @classmethod
    def inertia(cls, eigenvalues: np.ndarray, decision: RankDecision, counts: np.ndarray | None = None) -> Inertia:
        """Negative / zero / positive counts of ``eigenvalues`` (with multiplicities ``counts``)."""
        lam = np.asarray(eigenvalues, dtype=np.float64).ravel()
        c = np.ones(lam.size, dtype=np.int64) if counts is None else np.asarray(counts, dtype=np.int64)
        zero = cls.zero_mask(lam, decision)
        return Inertia(int(c[(lam < 0) & ~zero].sum()), int(c[zero].sum()), int(c[(lam > 0) & ~zero].sum()))

    def cut(self, singular_values: np.ndarray, scale: float, shape: tuple[int, int]) -> int:
        """How many ``singular_values`` exceed the tolerance ``rtol * scale`` of a matrix of ``shape``.

        ``rtol`` defaults to NumPy's ``max(shape) eps``; ``scale`` is the matrix norm the
        values are relative to (the largest singular value, or the norm of a larger
        matrix the values come from): how the structured routes find row spaces.
        """
        rtol = self.rtol if self.rtol is not None else default_rtol(shape)
        return int(np.count_nonzero(np.asarray(singular_values, dtype=np.float64) > rtol * scale))

    @staticmethod
    def psd_floor(eigenvalues: np.ndarray, rtol: float) -> float:
        """The most negative eigenvalue that still counts as rounding of a PSD matrix: ``-rtol * max(lambda_max, 0)``."""
        lam = np.asarray(eigenvalues, dtype=np.float64)
        return -float(rtol) * max(float(lam.max()) if lam.size else 0.0, 0.0)


#: the policy every route uses unless a request carries its own
DEFAULT_POLICY = RankPolicy()
