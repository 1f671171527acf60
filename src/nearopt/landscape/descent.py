"""Step 1 of a survey: fixed-step gradient descent of many students on the exact population loss.

All starts at once in torch (CPU or GPU), or each ReLU run compiled by numba (``nearopt.landscape._relu_jit``,
``nearopt[fast]``); the closed forms are :mod:`nearopt.gaussian.kernels`. Statuses, the protocol of
Safran & Shamir (:data:`SAFRAN_SHAMIR`) and the seeded starts live here (:mod:`nearopt.landscape.survey`).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..errors import NearoptError, require_positive_finite, require_positive_int
from ..gaussian import kernels
from ..gaussian.kernels import CLOSED_FORMS
from ..gaussian.objective import population_gradient, population_loss
from ..model.network import TwoLayerNet
from ..model.problem import TRAINED_BLOCKS, Problem
from ..tolerances import TINY

__all__ = [
    "BatchDescent", "batched_descent", "batched_loss_gradient", "batched_teacher_power", "chunked_call", "ClosedForm", "compiled_applies", "cpu_chunk",
    "CPU_CHUNK_ENTRIES", "descend", "DescentProtocol", "DIVERGE_FACTOR", "ENGINES", "loss_gradient_function", "numba_available",
    "padded_loss_gradient_function", "SAFRAN_SHAMIR", "SERIAL_BELOW", "starts", "STATUS_DTYPE", "STATUSES", "with_grad", "Workspace"
]

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
            require_positive_finite(getattr(self, key), key)
        require_positive_int(self.max_steps, "max_steps")
        for key in ("init_scale", "second_scale"):
            if getattr(self, key) is not None:
                require_positive_finite(getattr(self, key), key)

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
        """The teacher terms of rows ``runs`` for ``nearopt.landscape._relu_jit.descend_run``: unit rows ``(R, M, d)``
        (zero rows stay 0), ``-u |t|`` ``(R, M)`` and ``-u t`` ``(R, M, d)`` (``beta_j |omega_j|``, ``beta_j omega_j``)."""
        nT = torch.linalg.vector_norm(self.T, dim=-1)
        That, bn, bw = (x.cpu().numpy() for x in (self.T / nT.clamp_min(TINY)[..., None], -self.u * nT, -self.u[..., None] * self.T))
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
    # numba loads here, on first use: it is the optional extra nearopt[fast] (numba_available() checked it)
    _relu_jit = importlib.import_module(f"{__package__}._relu_jit")
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


def with_grad(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` run with autograd on: the library's expectations of an activation without a closed form
    differentiate it, and the descent calls its gradient function in inference mode."""
    def call(*args: Any) -> Any:
        with torch.inference_mode(False), torch.enable_grad():
            return fn(*args)
    return call
