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
its differential worked out once (:class:`_ReluHessian`, ten times faster, tested equal to it).
Any other activation: the library's
checked expectations (:func:`nearopt.gaussian.objective.population_loss` /
``population_gradient``), one start at a time (correct, not vectorised).

The protocol of Safran & Shamir (2018) is :data:`SAFRAN_SHAMIR` (``docs/landscape.md``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.optimize
import scipy.stats
import torch
import torch.autograd.forward_ad as forward_ad

from .. import __version__
from ..curvature.base import resolve_device
from ..errors import NearoptError, require_positive_int
from ..gaussian import kernels
from ..gaussian.expectations import output_power
from ..gaussian.kernels import CLOSED_FORMS
from ..gaussian.objective import population_gradient, population_loss
from ..model.network import TwoLayerNet
from ..model.problem import TRAINED_BLOCKS, Problem
from ..resources import dense_bytes, require_memory
from ..spectra.grouping import CLUSTER_RTOL, close_losses, close_spectra, cluster_labels, eigenvalue_clusters, first_match_groups
from . import _relu_jit
from .critical import EPS, FLOOR_FACTOR, GLOBAL_RTOL, CriticalPoint, classify, committee_teacher, newton_polish, require_teacher_power
from .manifold import is_positively_homogeneous

__all__ = [
    "aligned", "balanced", "BatchDescent", "batched_descent", "batched_loss_gradient", "batched_minres", "batched_newton_polish", "batched_teacher_power",
    "BatchPolish", "Case", "chunked_call", "CLASSIFY_PER_GROUP", "ClosedForm", "committee_survey", "compiled_applies", "cpu_chunk", "CPU_CHUNK_ENTRIES",
    "descend", "DescentProtocol", "DIVERGE_FACTOR", "ENGINES", "ENTRY_TOL", "families", "Family", "FINAL_CLASSES", "invariant_groups", "INVARIANT_RTOL",
    "invariants", "loss_gradient_function", "merges_into", "numba_available", "padded_loss_gradient_function", "polish_and_classify", "polish_case",
    "POLISH_CHUNK", "require_fresh_family_folder", "require_survey_memory", "SAFRAN_SHAMIR", "same_family", "SERIAL_BELOW", "split_pattern", "SPLIT_TOL",
    "SPURIOUS_CLASSES", "stabiliser", "starts", "STATUS_DTYPE", "STATUSES", "Survey", "survey", "SURVEY_ADVICE", "SURVEY_COPIES", "survey_many",
    "symmetric_committee", "symmetry_analysis", "UNRESOLVED_CLASSES", "wilson_interval", "Workspace", "young_multiplicities"
]

#: entries of a representative closer than this are "equal" in the stabiliser analysis
ENTRY_TOL = 1e-6
#: a run diverged when a parameter's magnitude exceeds this multiple of the start's largest
DIVERGE_FACTOR = 1e4
STATUSES = ("converged", "unconverged", "diverged")
#: wide enough for every status: a run resumed later may turn "unconverged" in an array made when all had converged
STATUS_DTYPE = f"U{max(map(len, STATUSES))}"


@dataclass(frozen=True)
class DescentProtocol:
    """How each start is drawn, descended and judged.

    ``lr``: the fixed gradient-descent step; ``gtol``: the largest per-unit gradient norm at
    which a run stops; ``max_steps``; ``init_scale``: first-layer entries ``N(0, init_scale^2)``
    (``None``: ``1 / sqrt(N_i)``); ``second_scale``: trained second-layer entries
    ``N(0, second_scale^2)`` (``None``: ``1 / sqrt(K)``; a fixed second layer stays at ones);
    ``spurious_loss``: a converged run polished to a minimum above the global level with a loss at least this is *spurious* (:attr:`Survey.spurious`).
    """

    name: str = "custom"
    lr: float = 0.1
    gtol: float = 1e-9
    max_steps: int = 200_000
    init_scale: float | None = None
    second_scale: float | None = None
    spurious_loss: float = 1e-3

    def __post_init__(self) -> None:
        for key in ("lr", "gtol", "spurious_loss"):
            value = getattr(self, key)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise NearoptError(f"{key} must be a finite number > 0, got {value!r}")
        require_positive_int(self.max_steps, "max_steps")
        for key in ("init_scale", "second_scale"):
            value = getattr(self, key)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise NearoptError(f"{key} must be a finite number > 0, got {value!r}")

    def replace(self, **changes: Any) -> DescentProtocol:
        """A copy with some fields changed (``None`` values leave a field as it is)."""
        fields_ = {k: v for k, v in changes.items() if v is not None}
        return DescentProtocol(**{**self.__dict__, **fields_})

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


#: Safran & Shamir (2018) as read in the authors' code (github.com/ItaySafran/OneLayerGDconvergence,
#: GD_code/findBadMinima.m and findMinimum.m; docs/landscape.md section 2): ReLU committee (identity
#: teacher, second layer fixed to ones), student entries N(0, 1/d), gradient descent with step 0.1 on
#: grad L until every unit's ||2 pi dL/dw_i|| is at most 1e-9 (so gtol = 1e-9 / (2 pi) on grad L), a
#: run spurious when its final loss is >= 1e-3. Their descent has no step limit; ``max_steps`` is ours.
SAFRAN_SHAMIR = DescentProtocol(name="safran-shamir", lr=0.1, gtol=1e-9 / (2 * math.pi), max_steps=200_000, spurious_loss=1e-3)


# ----------------------------------------------------------------------------- batched closed forms
class Workspace:
    """Named float64 buffers, reused: ``ws(name, *shape)`` is a contiguous view of the buffer ``name``
    (grown when too small). The descent's per-step arrays are allocated once, not at every step: a fresh
    array of a megabyte pays its page faults again on every touch."""

    def __init__(self, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self._buffers: dict[str, torch.Tensor] = {}

    def __call__(self, name: str, *shape: int) -> torch.Tensor:
        n = math.prod(shape)
        buf = self._buffers.get(name)
        if buf is None or buf.numel() < n:
            buf = self._buffers[name] = torch.empty(n, dtype=torch.float64, device=self.device)
        return buf[:n].view(shape)


def _require_closed_form(activation: str) -> None:
    if activation not in CLOSED_FORMS:
        raise NearoptError(f"no batched closed form for activation {activation!r} (have {', '.join(CLOSED_FORMS)})")


def batched_loss_gradient(activation: str, W: torch.Tensor, v: torch.Tensor, T: torch.Tensor, u: torch.Tensor,
                          teacher_power: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact population ``L`` ``(R,)``, ``dL/dW`` ``(R, K, d)`` and ``dL/dv`` ``(R, K)`` of ``R`` students at once.

    ``W`` ``(R, K, d)``, ``v`` ``(R, K)``: the students; ``T`` ``(M, d)``, ``u`` ``(M,)``: the
    teacher, or ``(R, M, d)``, ``(R, M)``: one per student; ``activation`` one of
    :data:`CLOSED_FORMS` (:func:`nearopt.gaussian.kernels.loss_gradient`), float64 throughout;
    ``teacher_power``: ``E[f_t^2]`` ``()`` or ``(R,)`` if known (:func:`batched_teacher_power`).

    Zero rows (with zero outgoing weight) pad students and teachers of different sizes into
    one batch: their kernel terms vanish, so they change no loss or gradient and stay zero.
    """
    _require_closed_form(activation)
    return kernels.loss_gradient(activation, W, v, T, u, teacher_power)


def batched_teacher_power(activation: str, T: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """``E[f_t^2]`` from the same closed form (:func:`nearopt.gaussian.kernels.teacher_power`): ``()`` for ``T`` ``(M, d)``, ``(R,)`` for ``(R, M, d)``."""
    _require_closed_form(activation)
    return kernels.teacher_power(activation, T, u)


class ClosedForm:
    """``(W, v, runs) -> (L, dL/dW, dL/dv)`` of batches of students (:func:`batched_loss_gradient`) against one
    teacher (``T`` ``(M, d)``) or one per run (``(R, M, d)``, rows picked by ``runs``), and
    :meth:`gradient`, the descent's per-step call: the gradient only, written into given arrays."""

    def __init__(self, activation: str, T: torch.Tensor, u: torch.Tensor):
        _require_closed_form(activation)
        self.activation, self.T, self.u = activation, T, u
        self.M = T.shape[-2]
        self.tp = kernels.teacher_power(activation, T, u)
        #: the compiled engine applies (:func:`compiled_applies`)
        self.relu = activation == "relu"

    def _teacher(self, runs: torch.Tensor, R: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.T.ndim == 2:
            return self.T.expand(R, -1, -1), self.u.expand(R, -1), self.tp.expand(R)
        return self.T[runs], self.u[runs], self.tp[runs]

    def __call__(self, W: torch.Tensor, v: torch.Tensor, runs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        T, u, tp = self._teacher(runs, W.shape[0])
        return kernels.loss_gradient(self.activation, W, v, T, u, tp)

    def numpy_teacher(self, runs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The teacher terms of rows ``runs`` for :func:`nearopt.landscape._relu_jit.descend_run`: unit rows ``(R, M, d)``
        (zero rows stay 0), ``-u |t|`` ``(R, M)`` and ``-u t`` ``(R, M, d)`` (``beta_j |omega_j|``, ``beta_j omega_j``)."""
        nT = torch.linalg.vector_norm(self.T, dim=-1)
        That, bn, bw = (x.cpu().numpy() for x in (self.T / nT.clamp_min(kernels.TINY)[..., None], -self.u * nT, -self.u[..., None] * self.T))
        if That.ndim == 3:
            return That[runs], bn[runs], bw[runs]
        R = runs.size
        return np.broadcast_to(That, (R, *That.shape)), np.broadcast_to(bn, (R, *bn.shape)), np.broadcast_to(bw, (R, *bw.shape))

    def gradient(self, W: torch.Tensor, v: torch.Tensor, runs: torch.Tensor, gW: torch.Tensor, gv: torch.Tensor | None) -> None:
        """``dL/dW`` into ``gW`` ``(R, K, d)`` and, unless ``gv`` is ``None``, ``dL/dv`` into ``gv`` ``(R, K)``."""
        T, u, _ = self._teacher(runs, W.shape[0])
        g, kb = kernels.gradient(self.activation, W, v, T, u)
        gW.copy_(g)
        if gv is not None:
            gv.copy_(kb)


def _library_loss_gradient(teacher: TwoLayerNet, W: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The same three arrays from the library's checked expectations, one start at a time (any activation)."""
    R, K, d = W.shape
    Wn, vn = W.cpu().numpy(), v.cpu().numpy()
    loss, gW, gv = np.zeros(R), np.zeros((R, K, d)), np.zeros((R, K))
    for r in range(R):
        pr = Problem(teacher, student=TwoLayerNet(Wn[r], vn[r][None, :], teacher.activation), trained="both")
        loss[r] = population_loss(pr)
        g = population_gradient(pr)
        gW[r], gv[r] = g[: K * d].reshape(K, d), g[K * d :]
    def t(x):
        return torch.as_tensor(x, dtype=torch.float64, device=W.device)
    return t(loss), t(gW), t(gv)


def loss_gradient_function(teacher: TwoLayerNet, device: str | torch.device = "cpu") -> Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``(W, v, runs) -> (L, dL/dW, dL/dv)`` for batches of students of this teacher: a :class:`ClosedForm` where
    there is one (``runs``, the batch rows' run indices, is unused: one teacher for all)."""
    name = teacher.activation.name
    if name in CLOSED_FORMS:
        return ClosedForm(name, torch.as_tensor(teacher.W1, dtype=torch.float64, device=device),
                          torch.as_tensor(teacher.W2.ravel(), dtype=torch.float64, device=device))
    return lambda W, v, runs: _library_loss_gradient(teacher, W, v)


def padded_loss_gradient_function(activation: str, T: np.ndarray, u: np.ndarray, device: str | torch.device = "cpu") -> ClosedForm:
    """The same for one (zero-padded) teacher per run: ``T`` ``(R, M, d)``, ``u`` ``(R, M)``; ``runs`` picks the rows."""
    return ClosedForm(activation, torch.as_tensor(T, dtype=torch.float64, device=device), torch.as_tensor(u, dtype=torch.float64, device=device))

# ----------------------------------------------------------------------------- batched descent
@dataclass
class BatchDescent:
    """End points of ``R`` descents: ``W`` ``(R, K, d)``, ``v`` ``(R, K)``, ``loss``, ``gradient_max``
    (largest per-unit gradient norm), ``steps`` ``(R,)`` and ``status`` (one of :data:`STATUSES`)."""

    W: np.ndarray
    v: np.ndarray
    loss: np.ndarray
    gradient_max: np.ndarray
    steps: np.ndarray
    status: np.ndarray
    seconds: float = 0.0
    #: runs still descending at each step ``(steps,)`` (the batch size of each step's kernels)
    active: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    #: the engine that took the steps (:data:`ENGINES`: ``compiled`` or ``torch``)
    engine: str = "torch"

    def count(self, status: str) -> int:
        return int(np.count_nonzero(self.status == status))


def starts(teacher: TwoLayerNet, width: int, n_starts: int, trained: str, protocol: DescentProtocol, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded random starts: ``W`` ``(R, K, N_i)`` with ``N(0, init_scale^2)`` entries, ``v`` ``(R, K)``:
    ones when the second layer is fixed (``trained="first"``), else ``N(0, second_scale^2)``."""
    rng = np.random.default_rng(seed)
    d = teacher.n_inputs
    s1 = 1.0 / math.sqrt(d) if protocol.init_scale is None else protocol.init_scale
    W = rng.normal(scale=s1, size=(n_starts, width, d))
    if trained == "first":
        return W, np.ones((n_starts, width))
    s2 = 1.0 / math.sqrt(width) if protocol.second_scale is None else protocol.second_scale
    return W, rng.normal(scale=s2, size=(n_starts, width))


#: CPU batches with fewer kernel entries than this run each op on one thread (their ops are
#: overhead-bound; two threads on a loaded 2-core machine measured 25x slower)
SERIAL_BELOW = 1 << 20


#: CPU descents evaluate the batch in chunks of about this many kernel entries (students x K x (K + M)): each
#: chunk's kernel arrays stay in the core's cache (measured on the 2-core VM, 1000 students: k = 20 runs best at
#: chunks of 64-128 students, k = 8 at 256-512; a chunk of 32 is 1.5-2.5x slower per student)
CPU_CHUNK_ENTRIES = 1 << 17


def cpu_chunk(K: int, J: int) -> int:
    """Students per chunk for kernel arrays ``(chunk, K, J)``: :data:`CPU_CHUNK_ENTRIES` entries, between 32 and 1024."""
    return max(32, min(1024, CPU_CHUNK_ENTRIES // max(1, K * J)))


def chunked_call(fn: Callable[..., Any], W: torch.Tensor, v: torch.Tensor, runs: torch.Tensor, chunk: int | None) -> tuple[torch.Tensor, ...]:
    """``fn(W, v, runs)`` over row chunks of at most ``chunk`` students (``None``: one call), concatenated."""
    if chunk is None or W.shape[0] <= chunk:
        return tuple(fn(W, v, runs))
    parts = [fn(W[s : s + chunk], v[s : s + chunk], runs[s : s + chunk]) for s in range(0, W.shape[0], chunk)]
    return tuple(torch.cat(x) for x in zip(*parts))


@contextlib.contextmanager
def _threads(device: str | torch.device, entries: int) -> Iterator[None]:
    """One torch thread for small CPU batches (:data:`SERIAL_BELOW`), restored afterwards."""
    if torch.device(device).type != "cpu" or entries >= SERIAL_BELOW:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def batched_descent(teacher: TwoLayerNet, W0: np.ndarray, v0: np.ndarray, *, trained: str = "first", protocol: DescentProtocol = SAFRAN_SHAMIR,
                    device: str | torch.device = "cpu", progress: Callable[[int, int, int, int], None] | None = None,
                    engine: str = "auto") -> BatchDescent:
    """Fixed-step gradient descent of all starts ``W0`` ``(R, K, d)``, ``v0`` ``(R, K)`` of one teacher (module docstring, step 1; :func:`descend`)."""
    return descend(loss_gradient_function(teacher, device), W0, v0, trained=trained, protocol=protocol, device=device, progress=progress, engine=engine)


def _gradient_into(fn: Callable[..., Any], W: torch.Tensor, v: torch.Tensor, runs: torch.Tensor, G: torch.Tensor, Gv: torch.Tensor | None,
                   chunk: int | None) -> None:
    """The gradient of every row into ``G`` ``(R, K, d)`` (and ``Gv`` ``(R, K)``), chunk by chunk: ``fn.gradient`` when ``fn`` has one."""
    grad = getattr(fn, "gradient", None)
    R = W.shape[0]
    step = chunk or R
    for s in range(0, R, step):
        e = min(R, s + step)
        if grad is not None:
            grad(W[s:e], v[s:e], runs[s:e], G[s:e], None if Gv is None else Gv[s:e])
        else:
            _, g, gv = fn(W[s:e], v[s:e], runs[s:e])
            G[s:e].copy_(g)
            if Gv is not None:
                Gv[s:e].copy_(gv)


#: engines of :func:`descend`: ``auto`` (``compiled`` where it applies, else ``torch``), ``torch`` (batched
#: steps, any device and closed form), ``compiled`` (one run at a time in ``nearopt.landscape._relu_jit``: ReLU on the CPU)
#: steps, any device and closed form), ``compiled`` (one run at a time in ``nearopt.landscape._relu_jit``: ReLU on the CPU, numba)
ENGINES = ("auto", "torch", "compiled")


def numba_available() -> bool:
    """Whether numba is installed (the optional extra ``nearopt[fast]``), without importing it."""
    return importlib.util.find_spec("numba") is not None


def compiled_applies(fn: Any, device: str | torch.device) -> bool:
    """Whether :func:`descend` can take the compiled engine for ``fn``: the ReLU :class:`ClosedForm` on the CPU, numba installed."""
    return torch.device(device).type == "cpu" and isinstance(fn, ClosedForm) and fn.relu and numba_available()


def _live_block(W: np.ndarray, v: np.ndarray, That: np.ndarray, bn: np.ndarray) -> tuple[int, int, int]:
    """``(K, M, d)`` of one run's zero-padded arrays (:func:`survey_many`): the student rows up to the last
    nonzero one, likewise the teacher rows and the input columns. Padding rows and columns have exactly
    zero gradient and stay zero, so dropping them changes no number."""

    def last(mask: np.ndarray) -> int:
        nz = np.flatnonzero(mask)
        return int(nz[-1]) + 1 if nz.size else 0

    K = last((W != 0).any(1) | (v != 0)) or W.shape[0]
    M = last((That != 0).any(1) | (bn != 0)) or That.shape[0]
    d = last((W != 0).any(0) | (That != 0).any(0)) or W.shape[1]
    return K, M, d


def _descend_compiled(fn: ClosedForm, W: np.ndarray, v: np.ndarray, ids: np.ndarray, protocol: DescentProtocol, trained: str, bound: float,
                      progress: Callable[[int, int, int, int], None] | None) -> tuple[np.ndarray, ...]:
    """The compiled engine of :func:`descend`: each run's whole descent in ``nearopt.landscape._relu_jit.descend_run``, ``W``, ``v``
    updated in place; returns ``(steps, status, largest per-unit gradient)``."""

    R = W.shape[0]
    That, bnT, bwT = fn.numpy_teacher(ids)
    steps, gmax = np.zeros(R, dtype=np.int64), np.full(R, np.nan)
    status = np.full(R, "unconverged", dtype=object)
    train_w, train_v = trained != "second", trained != "first"
    every = max(1, R // 50)
    for r in range(R):
        K, M, d = _live_block(W[r], v[r], That[r], bnT[r])
        w, vr = np.ascontiguousarray(W[r, :K, :d]), np.ascontiguousarray(v[r, :K])
        T = np.ascontiguousarray(That[r, :M, :d])
        basis = M == d and bool(np.array_equal(T, np.eye(d)))
        n, code, g = _relu_jit.descend_run(w, vr, T, np.ascontiguousarray(bnT[r, :M]), np.ascontiguousarray(bwT[r, :M, :d]), basis,
                                           float(protocol.lr), float(protocol.gtol), int(protocol.max_steps), train_w, train_v, float(bound))
        W[r, :K, :d], v[r, :K] = w, vr
        steps[r], gmax[r], status[r] = n, g, STATUSES[code]
        if progress is not None and ((r + 1) % every == 0 or r + 1 == R):
            progress(int(steps[: r + 1].max()), int(np.count_nonzero(status[: r + 1] == "converged")),
                     int(np.count_nonzero(status[: r + 1] == "diverged")), R - r - 1)
    return steps, status, gmax


def descend(fn: Callable[..., Any], W0: np.ndarray, v0: np.ndarray, *, trained: str = "first", protocol: DescentProtocol = SAFRAN_SHAMIR,
            device: str | torch.device = "cpu", runs: np.ndarray | None = None, progress: Callable[[int, int, int, int], None] | None = None,
            engine: str = "auto") -> BatchDescent:
    """The descent loop over ``fn(W, v, runs) -> (L, dL/dW, dL/dv)``; ``runs`` ``(R,)``: the run index of each row (default ``0..R-1``).

    Two engines (:data:`ENGINES`) take the same steps with the same stopping rules. ``torch``:
    all runs at once, each step the gradient only (``fn.gradient`` where ``fn`` has it, e.g.
    :class:`ClosedForm`); runs that stop leave the batch, so late steps cost only the runs still
    going; ``progress(step, converged, diverged, active)`` every 500 steps. ``compiled`` (ReLU on
    the CPU, :func:`compiled_applies`): one run after the other, each descent one compiled call
    (``nearopt.landscape._relu_jit``), at a run's own sizes (zero padding dropped); ``progress`` every
    2 % of the runs, ``active`` the runs not yet descended. The numbers agree to rounding (the
    sums run in another order). Either way the loss is evaluated at the end points only.
    """
    if trained not in TRAINED_BLOCKS:
        raise NearoptError(f"trained must be one of {', '.join(TRAINED_BLOCKS)}, got {trained!r}")
    if engine not in ENGINES:
        raise NearoptError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    compiled = compiled_applies(fn, device)
    if engine == "compiled" and not compiled:
        if not numba_available():
            raise NearoptError("the compiled engine needs numba: pip install nearopt[fast] (or use engine='torch' or 'auto')")
        raise NearoptError("the compiled engine takes the ReLU closed form on the CPU; use engine='torch' or 'auto'")
    t0 = time.perf_counter()
    W = torch.as_tensor(np.asarray(W0, dtype=np.float64), device=device).clone()
    v = torch.as_tensor(np.asarray(v0, dtype=np.float64), device=device).clone()
    R, K, d = W.shape
    every = np.concatenate([np.ravel(W0), np.ravel(v0)])
    bound = DIVERGE_FACTOR * max(1.0, float(np.abs(np.where(np.isfinite(every), every, 0.0)).max(initial=0.0)))
    loss, gmax = np.full(R, np.nan), np.full(R, np.nan)
    steps, status = np.zeros(R, dtype=np.int64), np.full(R, "unconverged", dtype=object)
    Wend, vend = W.cpu().numpy().copy(), v.cpu().numpy().copy()
    act = torch.arange(R, device=device)
    ids = torch.as_tensor(np.arange(R) if runs is None else np.asarray(runs), device=device)
    lr, train_w, train_v = protocol.lr, trained != "second", trained != "first"
    step, trace = 0, list[int]()
    chunk = cpu_chunk(K, K + getattr(fn, "M", K)) if torch.device(device).type == "cpu" else None
    if compiled and engine != "torch":
        assert isinstance(fn, ClosedForm)
        steps, status, gmax = _descend_compiled(fn, Wend, vend, ids.cpu().numpy(), protocol, trained, bound, progress)
        with torch.inference_mode():
            loss = chunked_call(fn, torch.as_tensor(Wend), torch.as_tensor(vend), ids, 1024)[0].numpy().copy()
        status[~np.isfinite(loss)] = "diverged"
        left = R - np.cumsum(np.bincount(steps, minlength=int(steps.max(initial=0)) + 1))  # runs still going after each step
        return BatchDescent(Wend, vend, loss, gmax, steps, status.astype(STATUS_DTYPE), time.perf_counter() - t0,
                            left[: int(steps.max(initial=0))].astype(np.int64), "compiled")
    ws = Workspace(device)
    with torch.inference_mode(), _threads(device, min(R, chunk or R) * K * K):
        rid = ids
        while act.numel():
            Ra = act.numel()
            G, Gv = ws("G", Ra, K, d), (ws("Gv", Ra, K) if train_v else None)
            _gradient_into(fn, W, v, rid, G, Gv, chunk)
            if not train_w:
                G.zero_()
            gn = torch.linalg.vector_norm(G, dim=-1)  # (Ra, K) per-unit gradient norms
            gunit = (gn if Gv is None else torch.hypot(gn, Gv)).amax(-1)
            big = (torch.maximum(W.amax((1, 2)), W.amin((1, 2)).neg()) > bound) | (v.abs().amax(-1) > bound)
            bad = ~torch.isfinite(gunit) | big
            done = (gunit <= protocol.gtol) & ~bad
            out = bad | done | (step >= protocol.max_steps)
            if bool(out.any()):
                sel = out.nonzero().ravel()
                idx = act[sel].cpu().numpy()
                L = fn(W[sel], v[sel], rid[sel])[0]
                bad_sel = (bad[sel] | ~torch.isfinite(L)).cpu().numpy()
                Wend[idx], vend[idx] = W[sel].cpu().numpy(), v[sel].cpu().numpy()
                loss[idx], gmax[idx], steps[idx] = L.cpu().numpy(), gunit[sel].cpu().numpy(), step
                status[idx] = np.where(bad_sel, "diverged", np.where(done[sel].cpu().numpy(), "converged", "unconverged"))
                keep = ~out
                act, rid, W, v = act[keep], rid[keep], W[keep], v[keep]
                if not act.numel():
                    break
                G = G[keep]
                Gv = None if Gv is None else Gv[keep]
            if train_w:
                W.sub_(G, alpha=lr)
            if Gv is not None:
                v.sub_(Gv, alpha=lr)
            trace.append(act.numel())
            step += 1
            if progress is not None and step % 500 == 0:
                progress(step, int(np.count_nonzero(status == "converged")), int(np.count_nonzero(status == "diverged")), int(act.numel()))
    return BatchDescent(Wend, vend, loss, gmax, steps, status.astype(STATUS_DTYPE), time.perf_counter() - t0, np.asarray(trace, dtype=np.int64))


# ----------------------------------------------------------------------------- batched Newton polish
#: points polished together (one linearised Hessian product per Newton step for each chunk)
POLISH_CHUNK = 128
#: Newton steps of the batched polish, MINRES iterations per step, its relative residual, and step halvings
POLISH_ITER, KRYLOV_ITER, KRYLOV_RTOL, BACKTRACK = 16, 40, 1e-3, 6


class _Gradient:
    """``theta -> dL/dtheta`` ``(R, P)`` over the trained entries (``W`` row-major, then ``v``) of ``R`` students of
    one teacher (``T`` ``(M, d)``, ``u`` ``(M,)``), the fixed block taken from ``W0`` / ``v0`` (:func:`nearopt.gaussian.kernels.gradient`)."""

    def __init__(self, activation: str, T: torch.Tensor, u: torch.Tensor, W0: torch.Tensor, v0: torch.Tensor, trained: str):
        self.activation, self.T, self.u, self.W0, self.v0, self.trained = activation, T, u, W0, v0, trained
        self.K, self.d = W0.shape[1:]

    def theta(self, W: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        parts = ([W.reshape(W.shape[0], -1)] if self.trained != "second" else []) + ([v] if self.trained != "first" else [])
        return torch.cat(parts, 1)

    def blocks(self, theta: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n1 = self.K * self.d if self.trained != "second" else 0
        W = theta[:, :n1].reshape(-1, self.K, self.d) if n1 else self.W0[rows]
        v = theta[:, n1:] if self.trained != "first" else self.v0[rows]
        return W, v

    def __call__(self, theta: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        W, v = self.blocks(theta, rows)
        return self.theta(*kernels.gradient(self.activation, W, v, self.T, self.u))

    def hessian(self, theta: torch.Tensor, rows: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """``x -> H x`` at ``theta`` ``(R, P)``: :class:`_ReluHessian` for ReLU with ``v`` fixed, else :meth:`forward_hessian`."""
        if self.activation == "relu" and self.trained == "first":
            W, v = self.blocks(theta, rows)
            return _ReluHessian(W, v, self.T, self.u)
        return self.forward_hessian(theta, rows)

    def forward_hessian(self, theta: torch.Tensor, rows: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """``x -> H x`` at ``theta`` ``(R, P)``: the forward-mode derivative of the gradient (``torch.autograd.forward_ad``)."""

        def hvp(x: torch.Tensor) -> torch.Tensor:
            with forward_ad.dual_level():
                return forward_ad.unpack_dual(self(forward_ad.make_dual(theta, x), rows)).tangent

        return hvp


class _ReluHessian:
    """``Delta -> H Delta`` ``(R, K d)``: the exact Hessian product of the ReLU closed form over ``W`` (``v`` fixed), at a point.

    The polish's engine for the ReLU committee: the differential of :func:`nearopt.gaussian.kernels.relu_terms`,
    worked out once so that everything that depends on the point only is computed once (a product
    costs about a tenth of the forward-mode derivative of the gradient, :meth:`_Gradient.forward_hessian`,
    which ``tests/test_kernels.py`` holds it equal to). In the direction ``Delta`` (``dn_a = w^_a . Delta_a``,
    ``dw^_a = (Delta_a - w^_a dn_a) / |w_a|``, ``dc_aj = dw^_a . omega^_j + w^_a . dw^_j``,
    ``dt = -dc / s``, ``ds = c dt``)::

        d(dL/dw_a) = v_a (ds1_a w^_a + s1_a dw^_a + dP_a) / (2 pi),
        ds1_a = sum_j ds_aj bn_j + sum_b s_ab v_b dn_b,   dP_a = sum_b Theta_ab v_b Delta_b - sum_j dt_aj bw_j

    Everything that depends on the point only (cosines, :func:`nearopt.gaussian.kernels.relu_angles`, ``1 / s``) is computed once;
    self pairs and pairs parallel to rounding are held fixed (``dt = 0``), as in :func:`nearopt.gaussian.kernels.relu_terms`.
    """

    def __init__(self, W: torch.Tensor, v: torch.Tensor, T: torch.Tensor, u: torch.Tensor):
        R, K, d = W.shape
        self.shape, self.v = (R, K, d), v
        nW, self.inv = kernels.safe_norm(W)
        nT, invT = kernels.safe_norm(T)
        self.Wh = W * self.inv[..., None]
        self.Om = torch.cat([self.Wh, (T * invT[..., None]).expand(R, -1, -1)], 1)  # (R, J, d) unit rows
        c = torch.bmm(self.Wh, self.Om.transpose(1, 2)).clamp(-1.0, 1.0)
        flat = c.abs() >= 1.0
        flat[:, :, :K] |= torch.eye(K, dtype=torch.bool, device=W.device)
        c = torch.where(flat, torch.where(c > 0, 1.0, -1.0), c)
        self.c = c
        theta, sin = kernels.relu_angles(c)  # the point's pair terms: Theta = pi - t, S = sin t
        self.theta_s = theta[:, :, :K]
        self.rs = torch.where(flat, 0.0, 1.0 / torch.where(flat, 1.0, sin))
        self.sin_s = sin[:, :, :K]
        self.bn = torch.cat([v * nW, (-u * nT).expand(R, -1)], 1)[..., None]  # (R, J, 1)
        self.bw = torch.cat([v[..., None] * W, (-u[..., None] * T).expand(R, -1, -1)], 1)  # (R, J, d)
        self.s1 = torch.bmm(sin, self.bn)  # (R, K, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        R, K, d = self.shape
        D = x.reshape(R, K, d)
        dn = (self.Wh * D).sum(-1, keepdim=True)  # (R, K, 1)
        dWh = (D - self.Wh * dn) * self.inv[..., None]
        dc = torch.bmm(dWh, self.Om.transpose(1, 2))  # dw^_a . omega^_j; the student block gets its transpose added
        dc[:, :, :K] = dc[:, :, :K] + dc[:, :, :K].transpose(1, 2)  # out of place: the block and its transpose overlap
        dt = dc.mul_(self.rs).neg_()
        vD = self.v[..., None] * D
        ds1 = torch.bmm(self.c * dt, self.bn) + torch.bmm(self.sin_s, self.v[..., None] * dn)
        dP = torch.bmm(self.theta_s, vD) - torch.bmm(dt, self.bw)
        out = (self.Wh * ds1 + dWh * self.s1 + dP) * (self.v / kernels.TWO_PI)[..., None]
        return out.reshape(R, K * d)


def batched_minres(A: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, maxiter: int = KRYLOV_ITER, rtol: float = KRYLOV_RTOL) -> torch.Tensor:
    """MINRES (Paige & Saunders) for ``R`` symmetric systems at once: ``x`` ``(R, P)`` with ``A x ~ b`` ``(R, P)``.

    ``A`` maps ``(R, P) -> (R, P)`` (a symmetric operator per row, possibly indefinite or singular;
    from ``x_0 = 0`` a consistent singular system converges to its minimum-norm solution). Each
    row stops when its residual estimate is at most ``rtol ||b||`` or its Lanczos vectors vanish.
    """
    tiny = torch.finfo(b.dtype).tiny

    def dot(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (x * y).sum(-1, keepdim=True)

    beta1 = dot(b, b).sqrt()
    live = beta1 > 0
    x, w, w2 = torch.zeros_like(b), torch.zeros_like(b), torch.zeros_like(b)
    r1, r2, y = b.clone(), b.clone(), b.clone()
    beta, oldb, dbar, epsln, phibar = beta1.clone(), torch.zeros_like(beta1), torch.zeros_like(beta1), torch.zeros_like(beta1), beta1.clone()
    cs, sn = -torch.ones_like(beta1), torch.zeros_like(beta1)
    for itn in range(int(maxiter)):
        if not bool(live.any()):
            break
        vk = y / torch.where(live, beta, 1.0)
        y = A(vk)
        if itn:
            y = y - (beta / torch.where(oldb > 0, oldb, 1.0)) * r1
        alfa = dot(vk, y)
        y = y - (alfa / torch.where(live, beta, 1.0)) * r2
        r1, r2 = r2, y
        oldb, beta = beta, dot(y, y).sqrt()
        oldeps = epsln
        delta = cs * dbar + sn * alfa
        gbar = sn * dbar - cs * alfa
        epsln, dbar = sn * beta, -cs * beta
        gamma = torch.sqrt(gbar * gbar + beta * beta).clamp(min=tiny)
        cs, sn = gbar / gamma, beta / gamma
        phi, phibar = cs * phibar, sn * phibar
        w1, w2 = w2, w
        w = (vk - oldeps * w1 - delta * w2) / gamma
        x = torch.where(live, x + phi * w, x)
        live = live & (phibar > rtol * beta1) & (beta > 1e-14 * beta1) & torch.isfinite(phibar)
    return x


@dataclass
class BatchPolish:
    """End points of the batched Newton polish: ``W`` ``(R, K, d)``, ``v`` ``(R, K)``, ``gradient_norm`` ``(R,)``
    (over the trained entries), ``gradient_tolerance`` ``(R,)`` (:func:`nearopt.landscape.critical.gradient_tolerance`),
    ``history`` (``||g||`` per accepted step), ``converged`` (``||g|| <= gradient_tolerance``)."""

    W: np.ndarray
    v: np.ndarray
    gradient_norm: np.ndarray
    gradient_tolerance: np.ndarray
    history: list[list[float]]

    @property
    def converged(self) -> np.ndarray:
        return np.asarray(self.gradient_norm <= self.gradient_tolerance)


def batched_newton_polish(teacher: TwoLayerNet, W0: np.ndarray, v0: np.ndarray, trained: str = "first", *, max_iter: int = POLISH_ITER,
                          chunk: int = POLISH_CHUNK) -> BatchPolish:
    """Newton on the gradient for ``R`` end points of one teacher at once, matrix-free (closed forms only).

    Each step solves ``H s = -g`` by :func:`batched_minres`, ``H`` applied as the forward-mode
    derivative of the batched closed-form gradient (``torch.func.jvp``: an exact Hessian
    product), so ``s -> -H^+ g`` also at saddles and on non-isolated minima; ``g^T H s = -|P g|^2 <= 0``
    makes ``s`` a descent direction of ``1/2 ||g||^2``. Safeguard as :func:`nearopt.landscape.critical.newton_polish`:
    of the step and its double (at a pair of parallel units the gradient grows like the angle squared
    and Newton only halves the angle) the better is taken when it lowers ``||g||``; else the step is
    halved, up to :data:`BACKTRACK` times, else the point stops. Every point goes on towards the rounding floor ``gradient_tolerance / FLOOR_FACTOR``
    (and stops there). ``W0`` ``(R, K, d)``, ``v0`` ``(R, K)``, float64.
    """
    name = teacher.activation.name
    if name not in CLOSED_FORMS:
        raise NearoptError(f"no batched closed form for activation {name!r} (have {', '.join(CLOSED_FORMS)})")
    W0 = np.asarray(W0, dtype=np.float64)
    v0 = np.asarray(v0, dtype=np.float64)
    R = W0.shape[0]
    T = torch.as_tensor(teacher.W1, dtype=torch.float64)
    u = torch.as_tensor(teacher.W2.ravel(), dtype=torch.float64)
    scale = math.sqrt(float(batched_teacher_power(name, T, u)))
    params = np.sqrt((W0.reshape(R, -1) ** 2).sum(1) + (v0**2).sum(1))
    gtol = FLOOR_FACTOR * (W0.shape[1] + teacher.n_hidden) * EPS * scale * np.maximum(1.0, params)
    Wout, vout, gnorm = W0.copy(), v0.copy(), np.zeros(R)
    hist: list[list[float]] = [[] for _ in range(R)]
    with torch.no_grad():
        for s0 in range(0, R, chunk):
            sl = slice(s0, min(R, s0 + chunk))
            W, v, g, h = _polish_chunk(name, T, u, torch.as_tensor(W0[sl]), torch.as_tensor(v0[sl]), trained, gtol[sl] / FLOOR_FACTOR, max_iter)
            Wout[sl], vout[sl], gnorm[sl] = W, v, g
            hist[sl] = h
    return BatchPolish(Wout, vout, gnorm, gtol, hist)


def _polish_chunk(name: str, T: torch.Tensor, u: torch.Tensor, W0: torch.Tensor, v0: torch.Tensor, trained: str, floor: np.ndarray,
                  max_iter: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[list[float]]]:
    """:func:`batched_newton_polish` of one chunk: the end point, ``||g||`` and its history per point."""
    grad = _Gradient(name, T, u, W0, v0, trained)
    all_rows = torch.arange(W0.shape[0])
    theta = grad.theta(W0, v0)
    g = grad(theta, all_rows)
    gn = torch.linalg.vector_norm(g, dim=-1)
    hist = [[float(x)] for x in gn]
    live = torch.isfinite(gn) & (gn > torch.as_tensor(floor))
    for _ in range(int(max_iter)):
        rows = live.nonzero().ravel()
        if not rows.numel():
            break
        th = theta[rows]
        step = batched_minres(grad.hessian(th, rows), -g[rows])
        # the step and its double, the better one when either lowers ||g|| (at a pair of parallel units the gradient
        # grows like the angle squared, where the Newton step halves the angle), else halvings of the step
        gn_rows = gn[rows]
        best = torch.full_like(gn_rows, math.inf)
        best_th, best_g = th.clone(), g[rows].clone()
        for a in (2.0, 1.0):
            trial = th + a * step
            gt = grad(trial, rows)
            gtn = torch.linalg.vector_norm(gt, dim=-1)
            better = torch.isfinite(gtn) & (gtn < best)
            best = torch.where(better, gtn, best)
            best_th[better], best_g[better] = trial[better], gt[better]
        alpha = 0.5
        for _ in range(BACKTRACK):
            todo = (~(best < gn_rows)).nonzero().ravel()
            if not todo.numel():
                break
            trial = th[todo] + alpha * step[todo]
            gt = grad(trial, rows[todo])
            gtn = torch.linalg.vector_norm(gt, dim=-1)
            better = torch.isfinite(gtn) & (gtn < gn_rows[todo])
            hit = todo[better]
            best[hit], best_th[hit], best_g[hit] = gtn[better], trial[better], gt[better]
            alpha *= 0.5
        accepted = best < gn_rows
        r = rows[accepted]
        theta[r], g[r], gn[r] = best_th[accepted], best_g[accepted], best[accepted]
        for i in rows[accepted].tolist():
            hist[i].append(float(gn[i]))
        live[rows[~accepted]] = False
        live &= gn > torch.as_tensor(floor)
    W, v = grad.blocks(theta, all_rows)
    return W.numpy().copy(), v.numpy().copy(), gn.numpy().copy(), hist


# ----------------------------------------------------------------------------- symmetry
def _refine(L: np.ndarray) -> list[list[int]]:
    """Colour refinement of the vertex-and-edge-labelled complete digraph ``L`` ``(k, k)``: the cells."""
    k = L.shape[0]
    colour = [int(L[i, i]) for i in range(k)]
    while True:
        sig = [(colour[i], tuple(sorted((colour[j], int(L[i, j]), int(L[j, i])) for j in range(k) if j != i))) for i in range(k)]
        names = {s: n for n, s in enumerate(sorted(set(sig)))}
        new = [names[s] for s in sig]
        if len(set(new)) == len(set(colour)):
            break
        colour = new
    cells: dict[int, list[int]] = {}
    for i, c in enumerate(colour):
        cells.setdefault(c, []).append(i)
    return sorted(cells.values(), key=lambda c: (-len(c), c))


def stabiliser(W: np.ndarray, tol: float = ENTRY_TOL) -> dict[str, Any]:
    """The stabiliser of a square first layer ``W`` ``(k, k)`` in ``Delta S_k`` (``W -> P W P^T``).

    Colour refinement gives cells that every automorphism preserves; when every block
    ``W[A, B]`` (off the diagonal) is constant and every diagonal block constant on its
    diagonal, permuting inside each cell fixes ``W``, so the stabiliser is exactly
    ``S_{p_1} x ... x S_{p_r}`` (``exact: True``). Otherwise only the cells are reported.
    """
    W = np.asarray(W, dtype=np.float64)
    k = W.shape[0]
    L = cluster_labels(W, tol)
    cells = _refine(L)
    exact = True
    for A in cells:
        for B in cells:
            vals = {int(L[i, j]) for i in A for j in B if i != j}
            if len(vals) > 1:
                exact = False
    sizes = [len(c) for c in cells]
    order = math.prod(math.factorial(p) for p in sizes) if exact else None
    return {"cells": [list(map(int, c)) for c in cells], "cell_sizes": sizes, "exact": exact, "order": order,
            "group": " x ".join(f"S_{p}" for p in sizes) if exact else None, "k": k}


def young_multiplicities(sizes: list[int]) -> list[int]:
    """Multiplicities forced on a ``k x k`` first-layer Hessian by a stabiliser ``Delta(S_{p_1} x ... x S_{p_r})``.

    Restricted to the Young subgroup, ``R^k = sum_i (1 + s_i)`` (``s_i`` the standard
    representation of ``S_{p_i}``, dimension ``p_i - 1``; absent for ``p_i = 1``), and
    ``M(k, k) = R^k (x) R^k`` decomposes into ``r^2 + #{p_i >= 2}`` trivial pieces, for each
    ``p_i >= 2`` ``2 r + [p_i >= 3]`` copies of ``s_i``, for each pair ``i < j`` two copies of
    ``s_i (x) s_j`` (dimension ``(p_i - 1)(p_j - 1)``), and inside ``s_i (x) s_i``: ``[p-2, 2]``
    and ``[p-2, 1, 1]`` (dimensions ``p(p-3)/2``, ``(p-1)(p-2)/2``) for ``p >= 4``, the sign for
    ``p = 3``. An isotypic piece of ``c`` copies of an irreducible of dimension ``m`` gives
    (generically) ``c`` eigenvalues of multiplicity ``m``. Returned sorted.
    """
    r = len(sizes)
    out = [1] * (r * r + sum(p >= 2 for p in sizes))
    for p in sizes:
        if p >= 2:
            out += [p - 1] * (2 * r + (p >= 3))
        if p >= 4:
            out += [p * (p - 3) // 2, (p - 1) * (p - 2) // 2]
        elif p == 3:
            out += [1]
    for i in range(r):
        for j in range(i + 1, r):
            if sizes[i] >= 2 and sizes[j] >= 2:
                out += [(sizes[i] - 1) * (sizes[j] - 1)] * 2
    return sorted(m for m in out if m > 0)


def symmetric_committee(problem: Problem) -> bool:
    """Whether the problem is the square orthonormal committee (``W1_t = I``, ``u = 1``, ``K = M = N_i``, first layer trained)."""
    t, s = problem.teacher, problem.point
    k = t.n_hidden
    return (problem.trained == "first" and s.n_hidden == k == t.n_inputs and np.array_equal(t.W1, np.eye(k))
            and np.array_equal(t.W2, np.ones((1, k))) and np.allclose(s.W2, 1.0))


def aligned(W: np.ndarray) -> np.ndarray:
    """``P_pi W`` with the row permutation that maximises ``sum_i W_ii^2`` (``scipy.optimize.linear_sum_assignment``).

    The committee loss is invariant under ``W -> P_pi W P_rho^T`` (``S_k x S_k``); putting each
    unit on the row of the coordinate it weighs most picks an orbit point whose stabiliser is
    sought in ``Delta S_k`` (the squares, not the entries: a unit far from every teacher unit
    weighs the unmatched coordinate with a negative entry).
    """
    rows, cols = scipy.optimize.linear_sum_assignment(-np.asarray(W) ** 2)
    out = np.empty_like(W)
    out[cols] = W[rows]
    return out


def merges_into(pieces: list[int], clusters: list[int]) -> bool:
    """Whether the predicted isotypic dimensions ``pieces`` can be grouped so their sums are the measured ``clusters``
    (eigenvalues of different isotypic pieces may coincide; they never split)."""
    if sum(pieces) != sum(clusters):
        return False
    left = sorted(clusters, reverse=True)

    def place(i: int, ps: list[int]) -> bool:
        if i == len(ps):
            return all(x == 0 for x in left)
        tried = set()
        for j, room in enumerate(left):
            if room >= ps[i] and room not in tried:
                tried.add(room)
                left[j] -= ps[i]
                if place(i + 1, ps):
                    return True
                left[j] += ps[i]
        return False

    return place(0, sorted(pieces, reverse=True))


def symmetry_analysis(cp: CriticalPoint) -> dict[str, Any]:
    """Stabiliser of the point and the multiplicities it forces (square committee only), against the measured pattern.

    ``explained``: the measured multiplicities are exactly the predicted ones; ``consistent``:
    they are unions of predicted pieces (coincident eigenvalues of different pieces, e.g.
    ``1/4 - 1/(2 pi)`` on ``[k-2,1,1]`` and in the standard block at the global minimum).
    """
    measured = sorted(int(c) for c in eigenvalue_clusters(cp.eigenvalues, CLUSTER_RTOL)[1])
    if not symmetric_committee(cp.problem):
        return {"analysed": False, "reason": "the Delta S_k analysis covers the square orthonormal committee (K = M = N_i, second layer fixed)"}
    st = stabiliser(aligned(cp.student.W1))
    out: dict[str, Any] = {"analysed": True, **st}
    if st["exact"]:
        pred = young_multiplicities(st["cell_sizes"])
        out["predicted_multiplicities"] = pred
        out["explained"] = pred == measured
        out["consistent"] = merges_into(pred, measured)
    return out


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


def balanced(net: TwoLayerNet) -> TwoLayerNet:
    """``(w_a, v_a) -> (s_a w_a, v_a / s_a)`` with ``s_a = sqrt(|v_a| / |w_a|)``, so that ``|w_a| = |v_a|`` (units with a zero side unchanged).

    For a positively homogeneous ``g`` (ReLU) this is a symmetry of the loss with both layers
    trained: the same function, a critical point maps to a critical point. Its Hessian
    spectrum changes along the rescaling orbit, so points are compared at this representative.
    """
    W, v = net.W1.copy(), net.W2.ravel().copy()
    nw = np.linalg.norm(W, axis=1)
    ok = (nw > 0) & (v != 0)
    s = np.ones_like(v)
    s[ok] = np.sqrt(np.abs(v[ok]) / nw[ok])
    return TwoLayerNet(W * s[:, None], (v / s)[None, :], net.activation)


def polish_and_classify(teacher: TwoLayerNet, W: np.ndarray, v: np.ndarray, trained: str) -> CriticalPoint:
    """Newton polish (:func:`nearopt.landscape.critical.newton_polish`) and classification of one end point.

    With both layers trained and a positively homogeneous activation the polished point is
    first :func:`balanced` (a symmetry), so that family spectra are comparable.
    """
    pr = Problem(teacher, student=TwoLayerNet(W, v[None, :], teacher.activation), trained=trained)
    end, hist = newton_polish(pr)
    if trained == "both" and is_positively_homogeneous(teacher.activation):
        end = end.replace(student=balanced(end.point))
    cp = classify(end)
    cp.newton_history, cp.descent = hist, "batched-gd"
    return cp


#: members of each invariant group classified by their own dense spectrum; the rest take the group's when these agree
CLASSIFY_PER_GROUP = 3
#: points of equal loss share an invariant group when their invariants agree to this (times the largest invariant)
INVARIANT_RTOL = 1e-6


def invariants(W: np.ndarray, v: np.ndarray, T: np.ndarray) -> np.ndarray:
    """Keys ``(R, q)`` of points ``W`` ``(R, K, d)``, ``v`` ``(R, K)`` of the teacher rows ``T`` ``(M, d)`` that no symmetry of the loss changes.

    The loss is invariant under permuting the student units (rows of ``W`` with ``v``) and under
    ``W -> W O^T`` for input rotations ``O`` that permute the teacher's units (for the orthonormal
    committee: the simultaneous permutation of inputs and teacher units). The sorted row norms
    ``|w_a|``, the singular values of ``W``, the sorted entries of ``W T^T`` and the sorted ``v`` are
    invariant under all of them.
    """
    R = W.shape[0]
    rows = np.sort(np.linalg.norm(W, axis=2), axis=1)
    sv = np.linalg.svd(W, compute_uv=False)
    wt = np.sort((W @ T.T).reshape(R, -1), axis=1)
    return np.concatenate([rows, sv, wt, np.sort(v, axis=1)], axis=1)


def invariant_groups(loss: np.ndarray, keys: np.ndarray, floor: float) -> list[list[int]]:
    """Indices grouped by loss (:func:`~nearopt.spectra.grouping.close_losses`, as :func:`same_family`) and invariants
    (:data:`INVARIANT_RTOL`), by loss (:func:`~nearopt.spectra.grouping.first_match_groups`)."""
    scale = INVARIANT_RTOL * max(1.0, float(np.abs(keys).max(initial=0.0)))

    def matches(reps: np.ndarray, i: int) -> np.ndarray:
        return close_losses(loss[reps], loss[i], floor) & np.all(np.abs(keys[reps] - keys[i]) <= scale, axis=1)

    return first_match_groups(np.argsort(loss, kind="stable"), matches)


def _point(teacher: TwoLayerNet, W: np.ndarray, v: np.ndarray, trained: str) -> Problem:
    return Problem(teacher, student=TwoLayerNet(W, v[None, :], teacher.activation), trained=trained)


def _classified(problem: Problem, history: list[float]) -> CriticalPoint:
    """:func:`nearopt.landscape.critical.classify` of a polished point (its own dense exact spectrum)."""
    cp = classify(problem)
    cp.newton_history, cp.descent = history, "batched-gd"
    return cp


def polish_case(teacher: TwoLayerNet, W: np.ndarray, v: np.ndarray, trained: str) -> tuple[list[CriticalPoint], dict[str, float]]:
    """Polish and classify ``R`` end points ``W`` ``(R, K, d)``, ``v`` ``(R, K)`` of one teacher: one :class:`CriticalPoint` each.

    Closed forms: :func:`batched_newton_polish` for all at once (a point it leaves above its
    gradient tolerance goes through the one-point :func:`polish_and_classify` from its start);
    the polished points are grouped by loss and :func:`invariants` (:func:`invariant_groups`); up to
    :data:`CLASSIFY_PER_GROUP` members of each group get their own dense spectrum
    (:func:`nearopt.landscape.critical.classify`), and when these are one family (:func:`same_family`) the
    other members take its spectrum and class (their own loss, gradient and tolerance; the
    loss-based global-minimum test is their own); otherwise every member is classified. Other
    activations: every point one at a time. Also returns the counts of each route (``batched``,
    ``one_point``, ``dense_spectra``) and the seconds of each phase (``newton_s``, ``one_point_s``, ``classify_s``).
    """
    R = W.shape[0]
    name = teacher.activation.name
    if name not in CLOSED_FORMS:
        t0 = time.perf_counter()
        pts = [polish_and_classify(teacher, W[r], v[r], trained) for r in range(R)]
        return pts, {"batched": 0, "one_point": R, "dense_spectra": R, "newton_s": 0.0, "one_point_s": time.perf_counter() - t0, "classify_s": 0.0}
    t0 = time.perf_counter()
    bp = batched_newton_polish(teacher, W, v, trained)
    Wp, vp = bp.W, bp.v
    if trained == "both" and is_positively_homogeneous(teacher.activation):
        for r in range(R):
            b = balanced(TwoLayerNet(Wp[r], vp[r][None, :], teacher.activation))
            Wp[r], vp[r] = b.W1, b.W2.ravel()
    T, u = (torch.as_tensor(x, dtype=torch.float64) for x in (teacher.W1, teacher.W2.ravel()))
    L, gW, gv = (x.numpy() for x in batched_loss_gradient(name, torch.as_tensor(Wp), torch.as_tensor(vp), T, u))
    g2 = (gW**2).sum((1, 2)) * (trained != "second") + (gv**2).sum(1) * (trained != "first")
    params = np.sqrt((Wp.reshape(R, -1) ** 2).sum(1) + (vp**2).sum(1))
    tp = output_power(teacher)
    gnorm, gtol = np.sqrt(g2), FLOOR_FACTOR * (W.shape[1] + teacher.n_hidden) * EPS * math.sqrt(tp) * np.maximum(1.0, params)
    points: list[CriticalPoint | None] = [None] * R
    ok = np.flatnonzero(gnorm <= gtol)
    t1 = time.perf_counter()
    for i in np.flatnonzero(~(gnorm <= gtol)):
        points[i] = polish_and_classify(teacher, W[i], v[i], trained)
    t2 = time.perf_counter()
    floor = GLOBAL_RTOL * tp
    dense = R - ok.size
    for grp in [] if ok.size == 0 else invariant_groups(L[ok], invariants(Wp[ok], vp[ok], teacher.W1), floor):
        members = ok[grp]
        reps = [_classified(_point(teacher, Wp[r], vp[r], trained), bp.history[r]) for r in members[:CLASSIFY_PER_GROUP]]
        dense += len(reps)
        for r, cp in zip(members, reps):
            points[r] = cp
        head = reps[0]
        agree = head.classification != "not converged" and all(same_family(head, cp, floor) for cp in reps[1:])
        for r in members[len(reps):]:
            pr, rel = _point(teacher, Wp[r], vp[r], trained), float(L[r]) / tp
            if agree and (rel <= GLOBAL_RTOL) == (head.loss_relative <= GLOBAL_RTOL):
                points[r] = CriticalPoint(pr, float(L[r]), rel, float(gnorm[r]), float(gtol[r]), head.eigenvalues, head.tolerance, head.index,
                                          head.zero_modes, head.positive, head.classification, newton_history=bp.history[r], descent="batched-gd")
            else:
                points[r] = _classified(pr, bp.history[r])
                dense += 1
    assert all(p is not None for p in points)
    seconds = {"newton_s": t1 - t0, "one_point_s": t2 - t1, "classify_s": time.perf_counter() - t2}
    return points, {"batched": int(ok.size), "one_point": int(R - ok.size), "dense_spectra": int(dense), **seconds}  # type: ignore[return-value]


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


def _with_grad(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` run with autograd on: the library's expectations of an activation without a closed form
    differentiate it, and the descent calls its gradient function in inference mode."""
    def call(*args: Any) -> Any:
        with torch.inference_mode(False), torch.enable_grad():
            return fn(*args)
    return call


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
    if trained not in TRAINED_BLOCKS:
        raise NearoptError(f"trained must be one of {', '.join(TRAINED_BLOCKS)}, got {trained!r}")
    if handover is not None and not (math.isfinite(handover) and handover > 0):
        raise NearoptError(f"handover must be a finite number > 0, got {handover!r}")
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
    fn = padded_loss_gradient_function(name, T, u, device) if name in CLOSED_FORMS else _with_grad(loss_gradient_function(cases[0].teacher, device))

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
