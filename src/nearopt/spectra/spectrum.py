"""The result type of every spectrum route: :class:`Spectrum`.

Whatever computed them (dense ``eigvalsh``, singular values of a square root,
structured blocks with multiplicities, Lanczos), eigenvalues come back as one
:class:`Spectrum`: ascending float64 values, the :class:`~nearopt.spectra.rank_rule.RankDecision`
made by the one rank rule, the method, dtype and timing. ``to_dict()`` is the JSON
of ``nearopt spectrum``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .rank_rule import RankDecision


@dataclass
class Spectrum:
    """All ``P`` eigenvalues of a Hessian at the optimum, with provenance.

    ``eigenvalues`` is ascending, float64, shape ``(P,)``. ``multiplicities``,
    when given, pairs distinct eigenvalue blocks with their counts (structured
    population route). ``eigenvectors`` ``(P, m)``, when a partial route was asked for
    them (``return_vectors=True``), has columns matching ``eigenvalues``; it is not part
    of ``to_dict()``.
    """

    eigenvalues: np.ndarray
    rank: RankDecision
    method: str
    activation: str
    n_inputs: int
    n_hidden: int
    samples: int | None
    dtype: str = "float64"
    seconds: float = float("nan")
    multiplicities: tuple[np.ndarray, np.ndarray] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: ``P`` when not every parameter trains (default ``N_h (N_i + 1)``)
    params: int | None = None
    eigenvectors: np.ndarray | None = None

    @property
    def n_params(self) -> int:
        """``P``, the side of the curvature matrix (``eigenvalues`` may hold fewer: see ``partial``)."""
        return self.params if self.params is not None else self.n_hidden * (self.n_inputs + 1)

    @property
    def partial(self) -> bool:
        """True when only some eigenvalues are known (Lanczos routes)."""
        return self.eigenvalues.size < self.n_params

    @property
    def nonzero(self) -> np.ndarray:
        """The ``rank`` largest eigenvalues (ascending)."""
        return self.eigenvalues[self.eigenvalues.size - self.rank.rank :]

    @property
    def smallest_nonzero(self) -> float:
        nz = self.nonzero
        return float(nz[0]) if nz.size else float("nan")

    @property
    def largest(self) -> float:
        return float(self.eigenvalues[-1])

    @property
    def condition_number(self) -> float:
        """``lambda_max / lambda_min^+`` over the nonzero eigenvalues."""
        small = self.smallest_nonzero
        if not self.rank.rank or not small > 0:  # no rank, or the smallest kept value underflowed to 0
            return float("nan") if not self.rank.rank else float("inf")
        return self.largest / small

    def to_dict(self) -> dict[str, Any]:
        d = {
            "activation": self.activation,
            "N_i": self.n_inputs,
            "N_h": self.n_hidden,
            "P": self.n_params,
            "samples": self.samples,
            "method": self.method,
            "dtype": self.dtype,
            "rank": self.rank.rank,
            "rank_tolerance": self.rank.eigenvalue_tolerance,
            "rank_decision": self.rank.to_dict(),
            "smallest_nonzero": self.smallest_nonzero,
            "largest": self.largest,
            "condition_number": self.condition_number,
            "seconds": self.seconds,
            "eigenvalues": self.eigenvalues,
        }
        if self.multiplicities is not None:
            values, counts = self.multiplicities
            d["multiplicities"] = {"values": values, "counts": counts}
        d.update(self.extra)
        return d
