"""Step 3 of a survey: polished points grouped into families (same class, loss and Hessian spectrum: equal up
to the loss' symmetries), with the multiplicity pattern of each family's spectrum.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..gaussian.expectations import output_power
from ..spectra.grouping import CLUSTER_RTOL, close_losses, close_spectra, eigenvalue_clusters, first_match_groups
from .critical import GLOBAL_RTOL, CriticalPoint
from .symmetry import ENTRY_TOL, symmetry_analysis

__all__ = ["families", "Family", "same_family", "split_pattern", "SPLIT_TOL"]


# ----------------------------------------------------------------------------- families
@dataclass
class Family:
    """Critical points equal up to symmetry: same class, loss and Hessian spectrum.

    A *non-isolated* global minimum (:func:`_manifold_key`: e.g. a teacher unit split between two
    student units at any ratio) is one family per split pattern (:func:`split_pattern`): its
    points lie on one set of global minima along which the spectrum varies, so the family reports
    its representative's spectrum and, over its members, the range of the smallest nonzero and of
    the largest eigenvalue (``spread``).
    """

    representative: CriticalPoint
    members: list[int] = field(default_factory=list)
    #: non-isolated families: ``{"lambda_nonzero_min": [lo, hi], "lambda_max": [lo, hi]}`` over the members; else ``None``
    spread: dict[str, list[float]] | None = None

    @property
    def count(self) -> int:
        return len(self.members)

    def to_dict(self) -> dict[str, Any]:
        cp = self.representative
        lam = cp.eigenvalues
        values, counts = eigenvalue_clusters(lam, CLUSTER_RTOL)
        return {"loss": cp.loss, "loss_relative": cp.loss_relative, "count": self.count, "classification": cp.classification,
                "index": cp.index, "zero_modes": cp.zero_modes, "non_isolated": self.spread is not None, "spread": self.spread,
                "lambda_min": float(lam[0]) if lam.size else float("nan"), "lambda_max": float(lam[-1]) if lam.size else float("nan"),
                "multiplicities": sorted(int(c) for c in counts), "distinct_eigenvalues": [float(x) for x in values],
                "eigenvalue_counts": [int(c) for c in counts], "cluster_rtol": CLUSTER_RTOL,
                "gradient_norm": cp.gradient_norm, "symmetry": symmetry_analysis(cp), "members": list(self.members)}


#: student units whose unit directions differ by at most this are parallel in :func:`split_pattern` (a polished split
#: pair is parallel to about the square root of the gradient's rounding floor, and a small unit's direction is noisier)
SPLIT_TOL = 1e-4


def split_pattern(W: np.ndarray, tol: float = SPLIT_TOL, zero: float = ENTRY_TOL) -> tuple[int, ...]:
    """Sizes of the groups of parallel student units (rows of ``W`` ``(K, d)`` whose unit directions agree to ``tol``),
    descending; rows of norm at most ``zero`` form their own group (its size recorded negative)."""
    norms = np.linalg.norm(W, axis=1)
    live = norms > zero
    U = W[live] / norms[live, None]
    groups = first_match_groups(range(len(U)), lambda reps, a: np.linalg.norm(U[reps] - U[a], axis=1) <= tol)
    sizes = [len(g) for g in groups]
    dead = int(np.count_nonzero(~live))
    return tuple(sorted(sizes, reverse=True)) + ((-dead,) if dead else ())


def _manifold_key(cp: CriticalPoint) -> tuple[int, ...] | None:
    """The family key of a non-isolated global minimum (:class:`Family`): its split pattern; ``None`` for any other point.

    A global minimum is taken as non-isolated when its spectrum is not positive definite (zero
    modes, or eigenvalues of either sign, as at a ReLU split pair, where the Hessian's derivative
    jumps) or when it has parallel or zero units (a split teacher unit can be shared at any ratio,
    a zero unit is the end of such a segment)."""
    if cp.classification != "global minimum":
        return None
    pattern = split_pattern(cp.student.W1)
    if cp.zero_modes == 0 and cp.index == 0 and all(p == 1 for p in pattern):
        return None
    return pattern


def _spread(points: list[CriticalPoint]) -> dict[str, list[float]]:
    """Ranges over ``points`` of the smallest eigenvalue above the zero modes and negative ones, and of the largest."""
    lo = [float(p.eigenvalues[p.zero_modes + p.index]) for p in points if p.eigenvalues.size > p.zero_modes + p.index]
    hi = [float(p.eigenvalues[-1]) for p in points if p.eigenvalues.size]
    return {"lambda_nonzero_min": [min(lo), max(lo)] if lo else [], "lambda_max": [min(hi), max(hi)] if hi else []}


def same_family(a: CriticalPoint, b: CriticalPoint, floor: float) -> bool:
    """Same class, loss (:func:`~nearopt.spectra.grouping.close_losses`) and spectrum (:func:`~nearopt.spectra.grouping.close_spectra`) as the representative ``a``."""
    return bool(_family_matches([a], b, floor)[0])


def _family_matches(reps: list[CriticalPoint], b: CriticalPoint, floor: float) -> np.ndarray:
    """:func:`same_family` of ``b`` with each representative in ``reps`` at once, ``(r,)``."""
    cls = np.array([a.classification == b.classification for a in reps], dtype=bool)
    ok = cls & close_losses([a.loss for a in reps], b.loss, floor)
    if ok.any():
        n = b.eigenvalues.size
        sized = [i for i in np.flatnonzero(ok) if reps[i].eigenvalues.size == n]
        ok[:] = False
        if sized:
            ok[sized] = close_spectra(np.stack([reps[i].eigenvalues for i in sized]).reshape(len(sized), n), b.eigenvalues)
    return ok


def families(points: list[CriticalPoint | None]) -> list[Family]:
    """Group points into families (:func:`same_family`), ordered by loss; ``None`` entries (diverged runs) are skipped.

    Each point, by increasing loss, joins the first family whose representative it matches, else
    starts one (:func:`~nearopt.spectra.grouping.first_match_groups`). Non-isolated global minima group by
    split pattern instead (:class:`Family`).
    """
    live = {i: p for i, p in enumerate(points) if p is not None}
    if not live:
        return []
    floor = GLOBAL_RTOL * output_power(next(iter(live.values())).problem.teacher)
    keys = {i: _manifold_key(p) for i, p in live.items()}  # non-isolated global minima: their split pattern

    def matches(reps: np.ndarray, i: int) -> np.ndarray:
        key = keys[i]
        if key is not None:
            return np.array([keys[int(r)] == key for r in reps], dtype=bool)
        out = np.zeros(reps.size, dtype=bool)
        plain = [j for j, r in enumerate(reps) if keys[int(r)] is None]
        if plain:
            out[plain] = _family_matches([live[int(reps[j])] for j in plain], live[i], floor)
        return out

    groups = [Family(live[g[0]], g) for g in first_match_groups(sorted(live, key=lambda i: live[i].loss), matches)]
    for fam in groups:
        if keys[fam.members[0]] is not None:
            fam.spread = _spread([live[i] for i in fam.members])
    return groups
