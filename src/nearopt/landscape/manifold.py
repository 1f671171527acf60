"""The global-minimum manifold of overparameterized students, and its zero modes.

A student of width ``K > M`` reproduces the teacher ``f_t = sum_m u_m g(t_m . x)`` on
a whole manifold of points. Constructors here build points of it from a teacher:

* :func:`add_dead_units` -- extra units with zero outgoing weight and any incoming weights;
* :func:`split_unit` -- a unit replaced by copies with the same incoming weights whose
  outgoing weights are ``ratio_c * u`` with ``sum_c ratio_c = 1`` (any real ratios);
* :func:`permute_units`; :func:`flip_signs` (odd ``g``: ``(w, v) -> (-w, -v)``);
  :func:`rescale_units` (positively homogeneous ``g`` such as ReLU: ``(w, v) -> (a w, v / a)``, ``a > 0``);

and :func:`on_manifold` checks that the population loss vanishes there.
:func:`random_student` draws a student of any width off the manifold and
:func:`load_student` reads one from a file. Every
constructor checks the memory of what it builds before building it
(:func:`nearopt.resources.require_memory`).

Zero modes (``docs/students.md`` §3). At a point of the manifold the residual
vanishes and ``H = E[J J^T]``, so ``rank H`` is the dimension of the span of the
student's tangent functions. Group the student units into *copies*: units whose
incoming weights are ``a_c w`` for one representative ``w`` (``a_c = 1``; ``+-1`` for
odd ``g``; any ``a_c > 0`` for positively homogeneous ``g``). A group spans
``{g(w.x)}`` plus, if any copy has ``v_c != 0`` (a *live* group), ``{g'(w.x) x_i}``;
for a generic (non-polynomial) activation distinct groups span independent
functions, so::

    rank H = sum_live (N_i + 1) + #dead groups                (ReLU: N_i per live group, g(w.x) lies in the span)

The manifold's tangent dimension is smaller: a live group of ``k`` copies keeps only
its ``k - 1`` ratio directions (``2k - 1`` for ReLU, with the rescalings), a dead
unit its ``N_i`` incoming weights. The remaining ``(k - 1) N_i`` zero modes of each
split (``(k - 1)(N_i - 1)`` for ReLU) move copies apart with ``sum_c v_c dw_c = 0``: the
loss grows at fourth order along them, so they are flat for the Hessian but leave
the manifold.

The nonzero spectrum is exact without any genericity: ``J_student = J_compact A``
where the *compact* point has one unit per group (incoming ``w``, outgoing
``sum_c a_c v_c``) and ``A`` maps copy parameters to the compact ones
(``dw_c -> (v_c / u) dw``, ``dv_c -> a_c du``). ``A A^T = D`` is diagonal
(``sum_c (v_c / u)^2`` on a group's incoming weights, ``sum_c a_c^2`` on its outgoing
weight), hence (:func:`predicted_nonzero_spectrum`)::

    nonzero spec(H_student) = nonzero spec(D^(1/2) H_compact D^(1/2))

and by Ostrowski's theorem each eigenvalue is the compact one times a factor in
``[min D, max D]``: an even ``k``-way split scales the incoming-weight eigenvalues
by ``1/k`` (ratios ``r_c``: by ``sum r_c^2``) and the outgoing ones by ``k``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..curvature.population import PopulationHessian
from ..errors import NearoptError, require_positive_int
from ..gaussian.expectations import output_power
from ..gaussian.objective import population_loss
from ..model import io
from ..model.activations import Activation, ReLU
from ..model.network import TwoLayerNet, require_plain
from ..model.problem import Problem
from ..resources import dense_bytes, require_memory
from ..spectra.grouping import first_match_groups
from ..spectra.matrix import DenseMatrix
from ..spectra.solver import solve
from ..tolerances import EPS, ROUNDING_RTOL

#: relative tolerance on rows for "the same unit" (copies are built exactly; this absorbs rounding)
SAME_UNIT_RTOL = 1e-10
#: a point is on the manifold when its population loss is below this times ``E[f_teacher^2]``
MANIFOLD_RTOL = 1e-12
#: largest ``sum_c |ratio_c|`` of a split: the copies' outgoing weights cancel to ``v`` with an error
#: ``~ sum |r| eps |v|``, which must stay below ``sqrt(MANIFOLD_RTOL)`` relative for the point to be on the manifold
MAX_RATIO_SUM = float(np.sqrt(MANIFOLD_RTOL) / EPS)
#: float64 copies of a student's weights a constructor holds at once (draw, stacked copy, the network's own)
BUILD_COPIES = 3


# ----------------------------------------------------------------------------- activation properties
def is_odd(activation: Activation) -> bool:
    """Whether ``g(-z) = -g(z)`` (checked on a grid; polynomials by their coefficients)."""
    c = activation.polynomial_coefficients
    if c is not None:
        return bool(np.all(c[::2] == 0.0))
    z = torch.linspace(-6.0, 6.0, 241, dtype=torch.float64)
    g = activation(z)
    return bool(torch.max(torch.abs(g + activation(-z))) <= 1e-13 * max(1.0, float(torch.max(torch.abs(g)))))


def is_positively_homogeneous(activation: Activation) -> bool:
    """Whether ``g(a z) = a g(z)`` for ``a > 0`` (ReLU, leaky ReLU, linear)."""
    if isinstance(activation, ReLU):
        return True
    z = torch.linspace(-6.0, 6.0, 241, dtype=torch.float64)
    g = activation(z)
    return bool(torch.max(torch.abs(activation(2.5 * z) - 2.5 * g)) <= 1e-13 * max(1.0, float(torch.max(torch.abs(g)))))


# ----------------------------------------------------------------------------- constructors
def _net(W1: np.ndarray, v: np.ndarray, act: Activation) -> TwoLayerNet:
    return TwoLayerNet(np.asarray(W1, dtype=np.float64), np.asarray(v, dtype=np.float64).reshape(1, -1), act)


def _unit(net: TwoLayerNet, unit: int) -> int:
    if isinstance(unit, bool) or int(unit) != unit or not 0 <= int(unit) < net.n_hidden:
        raise NearoptError(f"unit must be an integer in [0, {net.n_hidden}), got {unit!r}")
    return int(unit)


def require_student_memory(width: int, n_inputs: int, what: str) -> None:
    """Refuse (one line) a student of ``width`` units on ``n_inputs`` inputs whose weights cannot be built in memory.

    Counts :data:`BUILD_COPIES` float64 copies of ``W1`` ``(width, n_inputs)`` and ``W2``;
    whatever is computed at the student afterwards needs its own check.
    """
    nbytes = dense_bytes((int(width), int(n_inputs) + 1), np.float64, BUILD_COPIES)
    require_memory(nbytes, f"{what} (K = {width} units, N_i = {n_inputs}: {BUILD_COPIES} float64 copies of the weights)", "a smaller width")


def random_student(teacher: TwoLayerNet, width: int, seed: int = 1) -> TwoLayerNet:
    """A random student of ``width`` units for ``teacher``'s inputs, outputs, biases and activation (seeded).

    ``W1 ~ N(0, 1/N_i)`` ``(K, N_i)`` and ``W2 ~ N(0, 1/K)`` ``(M, K)``, then (where the teacher
    has them) ``b1 ~ N(0, 1/N_i)`` ``(K,)`` and ``b2 ~ N(0, 1/K)`` ``(M,)``, drawn in that order from
    ``default_rng([seed, 0x57])`` (``nearopt spectrum --student-width K --student-seed seed``).
    The memory is checked before anything is drawn.
    """
    K = require_positive_int(width, "student width")
    require_student_memory(K, teacher.n_inputs, "a random student")
    rng = np.random.default_rng([int(seed), 0x57])
    W1 = rng.standard_normal((K, teacher.n_inputs)) / np.sqrt(teacher.n_inputs)
    W2 = rng.standard_normal((teacher.n_outputs, K)) / np.sqrt(K)
    b1 = None if teacher.b1 is None else rng.standard_normal(K) / np.sqrt(teacher.n_inputs)
    b2 = None if teacher.b2 is None else rng.standard_normal(teacher.n_outputs) / np.sqrt(K)
    return TwoLayerNet(W1, W2, teacher.activation, b1, b2)


def load_student(path, teacher: TwoLayerNet, activation: Activation | None = None) -> TwoLayerNet:
    """The student of weight file ``path`` (``W1`` ``(K, N_i)``, ``W2`` ``(M, K)``, biases optional) with ``activation``
    (default: the teacher's).

    Validated by :func:`nearopt.model.io.load_weights` (messages name a "student file");
    its ``N_i`` must be the teacher's.
    """
    arrays = io.load_weights(path, role="student")
    W1 = arrays["W1"]
    if W1.shape[1] != teacher.n_inputs:
        raise NearoptError(f"student file {path} has N_i = {W1.shape[1]} (W1 {W1.shape}); the teacher has N_i = {teacher.n_inputs}")
    return TwoLayerNet(W1, arrays["W2"], activation or teacher.activation, arrays.get("b1"), arrays.get("b2"))


def add_dead_units(net: TwoLayerNet, n: int, *, incoming: np.ndarray | None = None, scale: float | None = None, seed: int = 0) -> TwoLayerNet:
    """``net`` with ``n`` extra units (appended) of outgoing weight 0.

    ``incoming`` ``(n, N_i)`` gives their rows; default i.i.d. ``N(0, scale^2)``,
    ``scale = 1/sqrt(N_i)`` (seeded). The function is unchanged. The memory of the
    wider student is checked before anything is drawn.
    """
    require_plain(net, "adding dead units (--dead)")
    n = require_positive_int(n, "number of extra units")
    require_student_memory(net.n_hidden + n, net.n_inputs, f"a student with {n} dead units")
    if incoming is None:
        s = 1.0 / np.sqrt(net.n_inputs) if scale is None else float(scale)
        if not (np.isfinite(s) and s >= 0):
            raise NearoptError(f"scale of the dead units' incoming weights must be finite and >= 0, got {scale!r}")
        incoming = np.random.default_rng([int(seed), 0xDE]).standard_normal((n, net.n_inputs)) * s
    incoming = np.asarray(incoming, dtype=np.float64)
    if incoming.shape != (n, net.n_inputs):
        raise NearoptError(f"incoming weights must have shape ({n}, {net.n_inputs}), got {incoming.shape}")
    return _net(np.vstack([net.W1, incoming]), np.concatenate([net.W2.ravel(), np.zeros(n)]), net.activation)


def split_ratios(ratios) -> np.ndarray:
    """Validated split ratios ``(k,)``: finite, ``sum |r| <=`` :data:`MAX_RATIO_SUM`, summing to 1.

    The sum may miss 1 by the rounding of the ratios' own size,
    ``1e-12 max(1, sum |r|)``; larger ratios would cancel to the unit's outgoing
    weight only to worse than the manifold's tolerance.
    """
    try:
        r = np.asarray(ratios, dtype=np.float64).ravel()
    except (TypeError, ValueError):
        raise NearoptError(f"split ratios must be real numbers, got {ratios!r}") from None
    shown = "[" + ", ".join(repr(float(x)) for x in r[:8]) + (", ...]" if r.size > 8 else "]")
    if r.size < 1 or not np.all(np.isfinite(r)):
        raise NearoptError(f"split ratios must be finite numbers, got {shown}")
    with np.errstate(over="ignore"):
        size, total = float(np.abs(r).sum()), float(r.sum())
    if not size <= MAX_RATIO_SUM:
        raise NearoptError(f"split ratios too large: sum |r| = {size:.3g} > {MAX_RATIO_SUM:.3g}, where float64 cancels the copies' "
                           f"weights back to the unit's only to worse than the manifold tolerance; got {shown}")
    if abs(total - 1.0) > ROUNDING_RTOL * max(1.0, size):
        raise NearoptError(f"split ratios must sum to 1, got {shown} (sum {total:.17g})")
    return r


def split_unit(net: TwoLayerNet, unit: int, ratios) -> TwoLayerNet:
    """Replace ``unit`` by ``len(ratios)`` copies (same incoming row, outgoing ``ratio_c * v``).

    ``ratios`` must sum to 1 (any real values, :func:`split_ratios`); the first copy
    stays at ``unit``, the others are appended. The function is unchanged.
    """
    require_plain(net, "splitting a unit (--split)")
    unit = _unit(net, unit)
    r = split_ratios(ratios)
    require_student_memory(net.n_hidden + r.size - 1, net.n_inputs, f"a student with unit {unit} split {r.size} ways")
    W1, v = net.W1.copy(), net.W2.ravel().copy()
    v_unit = v[unit]
    with np.errstate(over="ignore"):
        if not np.all(np.isfinite(r * v_unit)):
            raise NearoptError(f"split ratios times the unit's outgoing weight {v_unit:.3g} overflow float64")
    v[unit] = r[0] * v_unit
    return _net(np.vstack([W1, np.repeat(W1[unit : unit + 1], r.size - 1, axis=0)]), np.concatenate([v, r[1:] * v_unit]), net.activation)


def permute_units(net: TwoLayerNet, perm) -> TwoLayerNet:
    """Hidden units reordered: new unit ``i`` is old unit ``perm[i]``."""
    p = np.asarray(perm)
    if p.shape != (net.n_hidden,) or not np.array_equal(np.sort(p), np.arange(net.n_hidden)):
        raise NearoptError(f"perm must be a permutation of 0..{net.n_hidden - 1}, got {perm!r}")
    return _net(net.W1[p], net.W2.ravel()[p], net.activation)


def flip_signs(net: TwoLayerNet, units) -> TwoLayerNet:
    """``(w_a, v_a) -> (-w_a, -v_a)`` for the listed units; the function is unchanged for odd ``g`` only."""
    if not is_odd(net.activation):
        raise NearoptError(f"sign flips preserve the function only for odd activations; {net.activation.name!r} is not odd")
    idx = [_unit(net, u) for u in np.atleast_1d(units)]
    W1, v = net.W1.copy(), net.W2.ravel().copy()
    W1[idx] *= -1.0
    v[idx] *= -1.0
    return _net(W1, v, net.activation)


def rescale_units(net: TwoLayerNet, units, factors) -> TwoLayerNet:
    """``(w_a, v_a) -> (c w_a, v_a / c)``, ``c > 0``: preserves the function for positively homogeneous ``g`` (ReLU)."""
    if not is_positively_homogeneous(net.activation):
        raise NearoptError(f"rescaling preserves the function only for positively homogeneous activations (relu); not {net.activation.name!r}")
    idx = [_unit(net, u) for u in np.atleast_1d(units)]
    c = np.broadcast_to(np.asarray(factors, dtype=np.float64), (len(idx),))
    if not np.all((c > 0) & np.isfinite(c)):
        raise NearoptError(f"rescaling factors must be finite and > 0, got {factors!r}")
    W1, v = net.W1.copy(), net.W2.ravel().copy()
    W1[idx] *= c[:, None]
    v[idx] /= c
    return _net(W1, v, net.activation)


def on_manifold(teacher: TwoLayerNet, student: TwoLayerNet, rtol: float = MANIFOLD_RTOL) -> tuple[bool, float]:
    """``(loss <= rtol * E[f_t^2], loss)``: whether the student computes the teacher's function."""
    loss = population_loss(Problem(teacher, student=student))
    return bool(abs(loss) <= rtol * output_power(teacher)), float(loss)


# ----------------------------------------------------------------------------- groups of copies
@dataclass(frozen=True)
class UnitGroup:
    """Student units that are copies of one representative row ``w``: ``w_c = a_c w``.

    ``units`` and ``coefficients`` ``a_c`` (``(k,)``); ``outgoing`` = ``sum_c a_c v_c`` (the
    compact unit's weight); ``live`` when some copy has ``v_c != 0``.
    """

    units: tuple[int, ...]
    coefficients: tuple[float, ...]
    row: np.ndarray
    outgoing: float
    live: bool

    @property
    def size(self) -> int:
        return len(self.units)


def unit_groups(student: TwoLayerNet, rtol: float = SAME_UNIT_RTOL) -> list[UnitGroup]:
    """Group the student's units into copies (see the module docstring; zero rows are never grouped).

    Each unit joins the first group whose representative it copies (:func:`~nearopt.spectra.grouping.first_match_groups`).
    """
    act = student.activation
    odd, homog = is_odd(act), is_positively_homogeneous(act)
    W, v = student.W1, student.W2.ravel()
    norms = np.linalg.norm(W, axis=1)

    def coefficient(a0: int, c: int) -> float | None:
        """``a_c`` with ``w_c = a_c w_a0``, or ``None`` when unit ``c`` is no copy of ``a0``."""
        if norms[a0] == 0.0 or norms[c] == 0.0:
            return None
        if homog:
            cos = W[a0] @ W[c] / (norms[a0] * norms[c])
            return float(norms[c] / norms[a0]) if 1.0 - cos <= rtol else None
        tol = rtol * max(norms[a0], norms[c])
        if np.abs(W[c] - W[a0]).max() <= tol:
            return 1.0
        return -1.0 if odd and np.abs(W[c] + W[a0]).max() <= tol else None

    found: dict[tuple[int, int], float] = {}  # (representative, unit) -> a_c, for every match tried

    def copies(reps: np.ndarray, c: int) -> np.ndarray:
        out = np.zeros(reps.size, dtype=bool)
        for j, r in enumerate(reps.tolist()):
            a_c = coefficient(r, c)
            if a_c is not None:
                found[r, c], out[j] = a_c, True
        return out

    groups = []
    for units in first_match_groups(range(student.n_hidden), copies):
        coef = [1.0] + [found[units[0], c] for c in units[1:]]
        a = np.array(coef)
        groups.append(UnitGroup(tuple(units), tuple(coef), W[units[0]].copy(), float(a @ v[units]), bool(np.any(v[units] != 0.0))))
    return groups


@dataclass
class ZeroModePrediction:
    """Predicted zero modes at a manifold point (``docs/students.md`` §3).

    ``rank`` (generic activations; ``None`` for polynomials, whose function spaces
    are finite-dimensional), ``zero_modes = P - rank``, ``tangent`` (manifold tangent
    dimension), ``flat_off_manifold = zero_modes - tangent`` (quartic directions),
    ``groups`` (sizes, live), ``symmetries`` (what the count assumed).
    """

    n_params: int
    rank: int | None
    zero_modes: int | None
    tangent: int
    flat_off_manifold: int | None
    groups: list[dict[str, Any]] = field(default_factory=list)
    symmetries: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def predict_zero_modes(student: TwoLayerNet, trained: str = "both") -> ZeroModePrediction:
    """Rank, zero modes and manifold tangent dimension at a global-minimum point (module docstring)."""
    if trained not in ("both", "first", "second"):
        raise NearoptError(f"trained must be both, first or second, got {trained!r}")
    act = student.activation
    n = student.n_inputs
    homog, odd = is_positively_homogeneous(act), is_odd(act)
    generic = act.polynomial_coefficients is None
    groups = unit_groups(student)
    zero_rows = [g for g in groups if not np.any(g.row)]
    if zero_rows:
        raise NearoptError("the zero-mode count needs nonzero incoming rows (a zero row's tangent functions are degenerate)")
    rank = tangent = 0
    for g in groups:
        k = g.size
        w_funcs = n if g.live else 0  # g'(w.x) x_i
        v_func = 0 if (homog and g.live) else 1  # g(w.x) (ReLU: in the span of step(w.x) x_i)
        if trained == "both":
            rank += w_funcs + v_func
            tangent += (2 * k - 1 if homog else k - 1) if g.live else n
        elif trained == "first":
            rank += w_funcs
            tangent += (k - 1 if homog else 0) if g.live else n
        else:
            rank += 1
            tangent += k - 1 if g.live else 0
    P = {"both": student.n_params, "first": student.W1.size, "second": student.n_hidden}[trained]
    sym = "permutations" + (", sign flips (odd g)" if odd else "") + (", positive rescalings (homogeneous g)" if homog else "")
    table = [{"units": list(g.units), "coefficients": list(g.coefficients), "live": g.live, "outgoing": g.outgoing} for g in groups]
    if not generic:
        return ZeroModePrediction(P, None, None, tangent, None, table, sym + "; polynomial g: rank not predicted by the group count")
    return ZeroModePrediction(P, rank, P - rank, tangent, P - rank - tangent, table, sym)


# ----------------------------------------------------------------------------- exact nonzero spectrum
def compact_point(student: TwoLayerNet) -> tuple[TwoLayerNet, list[UnitGroup]]:
    """One unit per group of copies: incoming ``w``, outgoing ``sum_c a_c v_c`` (same function)."""
    groups = unit_groups(student)
    W = np.vstack([g.row for g in groups])
    return _net(W, np.array([g.outgoing for g in groups]), student.activation), groups


def predicted_nonzero_spectrum(student: TwoLayerNet, trained: str = "both") -> tuple[np.ndarray, np.ndarray]:
    """``(eigenvalues, D)``: nonzero spectrum of ``H`` at a manifold point from the compact point.

    ``eig(D^(1/2) H_compact D^(1/2))`` over the compact parameters with ``D > 0``
    (ascending; exact zeros dropped by the rank rule of the compact block) and the
    diagonal ``D`` ``(P_compact,)`` itself. ``H_compact`` is the exact population
    Hessian at the compact point (a global minimum: Gauss-Newton).
    """
    compact, groups = compact_point(student)
    n = student.n_inputs
    v = student.W2.ravel()
    D = np.zeros(compact.n_params)
    for j, g in enumerate(groups):
        a = np.array(g.coefficients)
        if trained in ("both", "first") and g.live:
            D[j * n : (j + 1) * n] = np.sum((v[list(g.units)] / g.outgoing) ** 2) if g.outgoing != 0.0 else np.inf
        if trained in ("both", "second"):
            D[compact.W1.size + j] = np.sum(a**2)
    if np.any(np.isinf(D)):
        raise NearoptError("a live group whose outgoing weights cancel (sum a_c v_c = 0) is not a point of the generic manifold")
    Hc = PopulationHessian(Problem(compact), residual=False).to_dense()
    keep = D > 0
    d = np.sqrt(D[keep])
    spec = solve(DenseMatrix(d[:, None] * Hc[np.ix_(keep, keep)] * d[None, :], kind="the scaled compact Hessian", positive_semidefinite=True))
    return spec.nonzero, D


def manifold_report(teacher: TwoLayerNet, student: TwoLayerNet, trained: str = "both") -> dict[str, Any]:
    """Loss, predicted vs measured rank and nonzero spectrum at a student point of the manifold.

    Measured: :meth:`PopulationHessian.spectrum` (structured route, full Hessian
    including the residual term) ranked by the one rank rule.
    """
    ok, loss = on_manifold(teacher, student)
    pred = predict_zero_modes(student, trained)
    curv = PopulationHessian(Problem(teacher, student=student, trained=trained))
    spec = curv.spectrum("structured")
    nz_pred, D = predicted_nonzero_spectrum(student, trained)
    nz_meas = spec.nonzero
    m = min(nz_pred.size, nz_meas.size)
    err = float(np.max(np.abs(nz_pred[-m:] - nz_meas[-m:])) / spec.largest) if m else float("nan")
    return {
        "on_manifold": ok,
        "loss": loss,
        "P": pred.n_params,
        "rank_predicted": pred.rank,
        "rank_measured": spec.rank.rank,
        "rank_clear": spec.rank.clear,
        "zero_modes_predicted": pred.zero_modes,
        "zero_modes_measured": pred.n_params - spec.rank.rank,
        "tangent_dimension": pred.tangent,
        "flat_off_manifold": pred.flat_off_manifold,
        "negative_eigenvalues": spec.inertia.negative if spec.inertia is not None else None,
        "lambda_min_nonzero": spec.smallest_nonzero,
        "lambda_min_nonzero_predicted": float(nz_pred[0]) if nz_pred.size else float("nan"),
        "lambda_max": spec.largest,
        "nonzero_spectrum_error": err,
        "D_range": [float(D[D > 0].min()), float(D[D > 0].max())] if np.any(D > 0) else None,
        "symmetries": pred.symmetries,
    }


__all__ = [
    "MANIFOLD_RTOL",
    "MAX_RATIO_SUM",
    "UnitGroup",
    "ZeroModePrediction",
    "add_dead_units",
    "compact_point",
    "flip_signs",
    "is_odd",
    "is_positively_homogeneous",
    "load_student",
    "manifold_report",
    "on_manifold",
    "permute_units",
    "predict_zero_modes",
    "predicted_nonzero_spectrum",
    "random_student",
    "require_student_memory",
    "rescale_units",
    "split_ratios",
    "split_unit",
    "unit_groups",
]
