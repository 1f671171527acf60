"""The result of every spectral request: :class:`Spectrum`.

Whatever answered it (dense ``eigh``, singular values of a square root, structured
blocks with multiplicities, Lanczos / LOBPCG, SLQ), a
:class:`~nearopt.spectra.request.SpectrumRequest` comes back as one ``Spectrum`` that
says exactly what was computed: the request, the route that ran, the eigenvalues
held (ascending float64: all ``P``, or the ``k`` asked for), and the quantities that
are known -- the rank decision and the inertia (negative / zero / positive counts)
when every eigenvalue was computed, the accuracy reached when an iterative route
ran. Unknown quantities are ``None``, never guessed. ``to_dict()`` is built from
the same attributes (the JSON of ``nearopt spectrum``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ..errors import NearoptError
from ..policy import Inertia, NullSpace, RankDecision, RankPolicy
from .request import SpectrumRequest

__all__ = ["Spectrum"]


def _fmt(x: float) -> str:
    return "-" if not np.isfinite(x) else f"{x:.6g}"


def _rel(x: float | None) -> str:
    return "-" if x is None else f"{x:.3g}"


def _known(x: float) -> float | None:
    """``nan`` (not known, not defined) as JSON ``null``; ``inf`` stays (a condition number with a zero at the bottom)."""
    return None if math.isnan(x) else x


@dataclass(frozen=True)
class Spectrum:
    """Eigenvalues of a curvature ``H`` ``(P, P)`` with what is known about them (immutable:
    :meth:`replace` gives a changed copy).

    Attributes
    ----------
    eigenvalues : ndarray ``(m,)``
        Ascending float64: all ``P`` (``which="all"``), or the ``k`` at the asked end.
    request : SpectrumRequest
        What was asked.
    method : str
        The route that ran (``dense``, ``factor``, ``structured``, ``arpack-LA``,
        ``lanczos-thick-restart``, ``lobpcg...``, ``slq``).
    n_params : int
        ``P``, the side of ``H``.
    rank_decision, inertia : RankDecision, Inertia or None
        Known when the route computed every eigenvalue (exact routes): what the rank policy
        reads off the eigenvalues alone; :attr:`rank` is the decision itself (an error on a
        partial result, whose rank is not known).
    null_space : NullSpace or None
        How many eigenvalues were taken as zero and why (``n_zero``, ``source``: predicted
        rank, structured, rank policy, null vectors, given; ``clear``, ``note``): every exact
        result and the smallest end. The smallest end and :attr:`smallest_nonzero` skip it.
    smallest_nonzero, largest, condition_number : float
        The algebraically smallest eigenvalue outside the null space, the largest
        eigenvalue, ``max |lambda| / min |lambda|`` over the nonzero ones; ``nan`` when
        not known (a partial result) or not defined (no nonzero eigenvalue), ``null`` in JSON.
    multiplicities : (values, counts) or None
        Distinct eigenvalues with their counts (structured route).
    eigenvectors : ndarray ``(P, m)`` or None
        Columns matching ``eigenvalues`` (when ``request.vectors``); not in ``to_dict()``.
    accuracy : dict or None
        Iterative routes: residuals, error bounds, tolerance asked and reached,
        ``converged``, products, null space skipped.
    density : dict or None
        ``which="density"``: grid, density and (SLQ) its standard error.
    activation, n_inputs, n_hidden, samples :
        The problem (``samples=None``: population, ``N -> infinity``).
    extra : dict
        Provenance of the operator (device, trained blocks, input law, expectations,
        loss and gradient norm at the point, ...).
    """

    eigenvalues: np.ndarray
    request: SpectrumRequest
    method: str
    n_params: int
    activation: str
    n_inputs: int
    n_hidden: int
    samples: int | None = None
    rank_decision: RankDecision | None = None
    inertia: Inertia | None = None
    null_space: NullSpace | None = None
    smallest_nonzero: float = math.nan
    largest: float = math.nan
    condition_number: float = math.nan
    multiplicities: tuple[np.ndarray, np.ndarray] | None = None
    eigenvectors: np.ndarray | None = None
    accuracy: dict[str, Any] | None = None
    density: dict[str, Any] | None = None
    dtype: str = "float64"
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_eigenvalues(cls, eigenvalues: np.ndarray, rank: RankDecision, *, method: str, activation: str, n_inputs: int, n_hidden: int,
                         samples: int | None = None, counts: np.ndarray | None = None, request: SpectrumRequest | None = None,
                         null_space: NullSpace | None = None, held: np.ndarray | None = None, **fields: Any) -> Spectrum:
        """Every eigenvalue of ``H`` (ascending ``(P,)``, or distinct values with ``counts``) ranked by ``rank``:
        the inertia and the summaries follow (closed forms and the exact routes build their results so).

        ``null_space``: the zero eigenvalues (default: those within ``rank``'s tolerance).
        ``held``: the eigenvalues the answer holds when the request asked for fewer than all
        (an end, ``(k,)``; a density, ``(0,)``); ``multiplicities`` then group the held ones.
        """
        values = np.asarray(eigenvalues, dtype=np.float64)
        eig = values if counts is None else np.repeat(values, counts)
        request = SpectrumRequest() if request is None else request
        null_space = RankPolicy().null_space(values, rank, counts=counts) if null_space is None else null_space
        nz = eig[~null_space.mask(eig)]
        mags = np.abs(nz)
        held_values = eig if held is None else np.asarray(held, dtype=np.float64)
        multiplicities = None
        if counts is not None:
            multiplicities = (values, np.asarray(counts, dtype=np.int64)) if held is None else _grouped(held_values)
        return cls(eigenvalues=held_values, request=request, method=method, n_params=int(eig.size), activation=activation, n_inputs=n_inputs,
                   n_hidden=n_hidden, samples=samples, rank_decision=rank, inertia=RankPolicy.inertia(values, rank, counts), null_space=null_space,
                   smallest_nonzero=float(nz[0]) if nz.size else math.nan, largest=float(eig[-1]) if eig.size else math.nan,
                   condition_number=(float(mags.max() / mags.min()) if mags.min() > 0 else math.inf) if nz.size else math.nan,
                   multiplicities=multiplicities, **fields)

    def replace(self, **changes: Any) -> Spectrum:
        """A copy with some fields changed (``extra`` is copied, never shared)."""
        changes.setdefault("extra", dict(self.extra))
        return replace(self, **changes)

    @property
    def which(self) -> str:
        assert self.request.which is not None
        return self.request.which

    @property
    def rank(self) -> RankDecision:
        """The rank decision (exact results only: a partial result knows no rank)."""
        if self.rank_decision is None:
            raise NearoptError(f"the rank is not known: this result holds only {self.eigenvalues.size} of P = {self.n_params} eigenvalues (which={self.which!r})")
        return self.rank_decision

    @property
    def partial(self) -> bool:
        """True when only some eigenvalues are held (a ``largest``/``smallest`` request, or a density)."""
        return self.eigenvalues.size < self.n_params

    @property
    def exact(self) -> bool:
        """Whether every eigenvalue was computed (rank and inertia known)."""
        return self.rank_decision is not None

    @property
    def nonzero(self) -> np.ndarray:
        """The held eigenvalues outside the null space (ascending; needs an exact route or the smallest end)."""
        if self.which == "smallest":
            return self.eigenvalues
        if self.null_space is not None and self.which == "all":
            return self.eigenvalues[~self.null_space.mask(self.eigenvalues)]
        if self.rank_decision is not None:
            return self.eigenvalues[np.abs(self.eigenvalues) > self.rank_decision.eigenvalue_tolerance]
        raise AttributeError("the null space is not known for this result (an iterative largest-end route)")

    @property
    def converged(self) -> bool:
        """Exact routes: True. Iterative routes: every pair met the tolerance and the null space passed its check."""
        return True if self.accuracy is None else bool(self.accuracy.get("converged", False))

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: every attribute above (eigenvectors excepted), the request and the provenance."""
        d: dict[str, Any] = {
            "activation": self.activation,
            "N_i": self.n_inputs,
            "N_h": self.n_hidden,
            "P": self.n_params,
            "samples": self.samples,
            "request": self.request.describe(),
            "which": self.which,
            "k": self.request.count,
            "method": self.method,
            "dtype": self.dtype,
            "exact": self.exact,
            "rank": None if self.rank_decision is None else self.rank_decision.rank,
            "rank_tolerance": None if self.rank_decision is None else self.rank_decision.eigenvalue_tolerance,
            "rank_decision": None if self.rank_decision is None else self.rank_decision.to_dict(),
            "inertia": None if self.inertia is None else self.inertia.to_dict(),
            "n_zero": None if self.null_space is None else self.null_space.n_zero,
            "zero_source": None if self.null_space is None else self.null_space.source,
            "null_space": None if self.null_space is None else self.null_space.to_dict(),
            "smallest_nonzero": _known(self.smallest_nonzero),
            "largest": _known(self.largest),
            "condition_number": _known(self.condition_number),
            "converged": self.converged,
            "seconds": self.seconds,
            "eigenvalues": self.eigenvalues,
        }
        if self.accuracy is not None:
            d["accuracy"] = self.accuracy
        if self.density is not None:
            d["density"] = self.density
        if self.multiplicities is not None:
            values, counts = self.multiplicities
            d["multiplicities"] = {"values": values, "counts": counts}
        d.update(self.extra)
        return d

    def summary(self) -> str:
        """A few lines for people: what was computed, how, and what it says."""
        size = "population" if self.samples is None else str(self.samples)
        x = self.extra
        lines = [
            f"activation     {self.activation}",
            f"sizes          N_i={self.n_inputs}  N_h={self.n_hidden}  P={self.n_params}  samples={size}",
        ]
        if "inputs_source" in x or "inputs" in x:
            lines.append(f"inputs         {x.get('inputs_source') or x['inputs'].get('law', x['inputs'])}")
        context = [f"trained {x['trained']}"] if x.get("trained", "both") != "both" else []
        if x.get("device"):
            context.append(f"device {x['device']}")
        if context:
            lines.append(f"problem        {', '.join(context)}")
        if "loss" in x:
            teacher = f" (a student of width {self.n_hidden}, teacher width {x['teacher_width']})" if "teacher_width" in x else ""
            lines.append(f"point          loss {x['loss']:.6g}, gradient norm {x.get('gradient_norm', float('nan')):.3g}{teacher}")
        asked = "all eigenvalues" if self.which == "all" else self.which if self.which == "density" else f"{self.which} {self.request.count}"
        lines.append(f"computed       {asked} by {self.method}  ({self.dtype}, {self.seconds:.3g} s)")
        if self.rank_decision is not None:
            r = self.rank_decision
            by = " by the rank policy alone" if self.null_space is not None and self.null_space.source != "rank policy" and self.n_params - self.null_space.n_zero != r.rank else ""
            lines.append(
                f"rank           {r.rank} of {self.n_params}{by}  (tolerance {r.eigenvalue_tolerance:.3g} on |eigenvalues|; "
                f"gap {r.gap:.3g}, margin {r.margin:.3g}{'' if r.clear else '  -- NO CLEAR GAP, rank is uncertain'})"
            )
        if self.null_space is not None:
            ns = self.null_space
            lines.append(f"null space     {ns.n_zero} eigenvalues taken as zero ({ns.source}{': ' + ns.note if ns.clear and ns.note else ''})"
                         + ("" if ns.clear else f"  -- NOT CLEAR: {ns.note}"))
        if self.inertia is not None and self.inertia.negative:
            i = self.inertia
            lines.append(f"inertia        {i.negative} negative, {i.zero} zero, {i.positive} positive  -- a saddle (negative curvature)")
        if self.samples is not None and self.exact and self.samples < self.n_params:
            lines.append(f"note           N = {self.samples} < P caps the batch rank at N")
        if self.accuracy is not None and self.accuracy.get("tolerance_reached") is not None:
            lines.append(_accuracy_line(self.accuracy))
        if self.which == "density" and self.density is not None:
            lines.append(f"density        on {len(self.density['grid'])} points ({self.density.get('source', self.method)}); --json for the values")
        elif self.eigenvalues.size:
            lines.append(f"held           {self.eigenvalues.size} eigenvalues, {self.eigenvalues[0]:.6g} .. {self.eigenvalues[-1]:.6g}")
        if "comparison" in x:
            c = x["comparison"]
            lines.append(f"vs population  KS {c['ks_distance']:.3g}; relative error largest {_rel(c['largest_relative_error'])}, "
                         f"smallest nonzero {_rel(c['smallest_nonzero_relative_error'])}; rank {c['rank_batch']} vs {c['rank_population']} (N = {c['samples']})")
        lines.append(f"smallest != 0  {_fmt(self.smallest_nonzero)}")
        lines.append(f"largest        {_fmt(self.largest)}")
        lines.append(f"condition      {_fmt(self.condition_number)}  (max |lambda| / min |lambda| over nonzero)")
        return "\n".join(lines)

    def __repr__(self) -> str:
        rank = "" if self.rank_decision is None else f", rank={self.rank_decision.rank}"
        span = f"{self.eigenvalues[0]:.4g}..{self.eigenvalues[-1]:.4g}" if self.eigenvalues.size else "empty"
        return f"Spectrum({self.which}, {self.eigenvalues.size} of P={self.n_params}, {span}, method={self.method!r}{rank})"


def _grouped(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct ``values`` (copies of the same exact value) with their counts."""
    distinct, counts = np.unique(values, return_counts=True)
    return distinct, counts.astype(np.int64)


def _accuracy_line(a: dict[str, Any]) -> str:
    """The summary's accuracy line; pairs accepted at the products' rounding floor are said to be so, with the floor."""
    line = f"accuracy       relative residual {a['tolerance_reached']:.2g} (asked {a['tolerance']:.2g}; {a['products']} products)"
    at_floor = int(a.get("at_rounding_floor") or 0)
    if at_floor and a.get("converged", True):
        floor, lam = a.get("rounding_floor"), a.get("lambda_max")
        where = f" ||H x - theta x|| <= {floor:.2g}" + (f" = {floor / (np.finfo(np.float64).eps * lam):.2g} eps lambda_max" if lam else "") if floor else ""
        line += (f"; {at_floor} pair(s) reached the rounding floor of the products{where} before the asked tolerance: "
                 f"accepted, eigenvalue error bounds up to {float(np.max(a['error_bound'])):.2g} relative")
    return line + ("" if a.get("converged", True) else "  -- NOT CONVERGED")
