"""Many-start surveys of the population landscape: batched descent, Newton polish, families.

From ``R`` random starts of a student of width ``K`` (any teacher, any trained blocks) we

1. *descend* on the exact population loss ``L = 1/2 E[(f_s - f_t)^2]``, ``x ~ N(0, I)``,
   all starts at once (:func:`batched_descent`, torch, CPU or GPU): plain gradient descent
   ``theta <- theta - eta grad L`` with a fixed step, until the largest *per-unit* gradient
   norm ``max_a ||dL/d(w_a, v_a)||`` (trained entries) is at most ``gtol`` (``converged``),
   the point leaves every bounded region or turns non-finite (``diverged``), or ``max_steps``
   pass (``unconverged``). Every start is kept and counted under its status;
2. *polish* each end point that did not diverge with the safeguarded Newton iteration of
   :func:`nearopt.critical.newton_polish` and *classify* it by the exact Hessian
   (:func:`nearopt.critical.classify`: global minimum, spurious local minimum, degenerate
   critical point, saddle with its index, local maximum, not converged);
3. group the points into *families* (:func:`families`): same class, same loss and same
   Hessian spectrum, i.e. equal up to the loss' symmetries. Each family reports its count,
   loss, class, index, extreme eigenvalues, the multiplicity pattern of its spectrum
   (eigenvalues clustered with gaps ``> CLUSTER_RTOL max|lambda|``) and, for the orthonormal
   committee (``K = M = N_i``, second layer fixed), the stabiliser of its representative in
   ``Delta S_k`` and the multiplicities that stabiliser forces (:func:`symmetry_analysis`).

Batched closed forms (:func:`batched_loss_gradient`). With ``Omega = [W; T]`` ``(K + M, N_i)``,
``beta = [v; -u]`` and the pair kernel ``kappa(a, b) = E[g(a.x) g(b.x)]``::

    L        = 1/2 sum_ij beta_i beta_j kappa(omega_i, omega_j)
    dL/dv_a  = sum_j beta_j kappa(w_a, omega_j)
    dL/dw_a  = v_a sum_j beta_j grad_1 kappa(w_a, omega_j),   grad_1 kappa(a, b_j) = A_j a + B_j b_j

* ReLU (arc-cosine kernel): ``kappa = |a||b| (sin t + (pi - t) cos t) / (2 pi)``, ``t`` the angle;
  ``A = |b| sin t / (2 pi |a|)``, ``B = (pi - t) / (2 pi)`` (self pairs: ``t = 0`` exactly);
* ``erf(z / s)`` (arcsine kernel, ``c = 2 / s^2``): ``kappa = (2/pi) arcsin(rho)``,
  ``rho = c a.b / sqrt(d_a d_b)``, ``d = 1 + c |.|^2``; ``A = -c rho / (d_a q)``,
  ``B = c / (sqrt(d_a d_b) q)``, ``q = (pi/2) sqrt(1 - rho^2)``;
* any other activation: the library's checked expectations
  (:func:`nearopt.curvature.landscape.population_loss` / ``population_gradient``), one start
  at a time (correct, not vectorised).

The protocol of Safran & Shamir (2018) is :data:`SAFRAN_SHAMIR` (``docs/landscape.md``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.optimize
import scipy.stats
import torch

from .critical import GLOBAL_RTOL, CriticalPoint, classify, committee_teacher, eigenvalue_clusters, newton_polish, teacher_power
from .curvature.landscape import population_gradient, population_loss
from .errors import NearoptError, require_positive_int
from .model import TwoLayerNet
from .problem import TRAINED_BLOCKS, Problem

#: eigenvalues closer than ``CLUSTER_RTOL * max|lambda|`` count as one value of a multiplicity pattern
CLUSTER_RTOL = 1e-7
#: entries of a representative closer than this are "equal" in the stabiliser analysis
ENTRY_TOL = 1e-6
#: a run diverged when a parameter's magnitude exceeds this multiple of the start's largest
DIVERGE_FACTOR = 1e4
STATUSES = ("converged", "unconverged", "diverged")
CLOSED_FORMS = ("relu", "erf", "erf:unit")


@dataclass(frozen=True)
class Protocol:
    """How each start is drawn, descended and judged.

    ``lr``: the fixed gradient-descent step; ``gtol``: the largest per-unit gradient norm at
    which a run stops; ``max_steps``; ``init_scale``: first-layer entries ``N(0, init_scale^2)``
    (``None``: ``1 / sqrt(N_i)``); ``second_scale``: trained second-layer entries
    ``N(0, second_scale^2)`` (``None``: ``1 / sqrt(K)``; a fixed second layer stays at ones);
    ``spurious_loss``: a run whose final loss is at least this is *spurious*.
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

    def replace(self, **changes: Any) -> Protocol:
        """A copy with some fields changed (``None`` values leave a field as it is)."""
        fields_ = {k: v for k, v in changes.items() if v is not None}
        return Protocol(**{**self.__dict__, **fields_})

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


#: Safran & Shamir (2018), section 4: ReLU committee (identity teacher, second layer fixed to ones),
#: student entries N(0, 1/d), gradient descent with step 0.1 until every unit's gradient norm is at
#: most 1e-9, a run spurious when its final loss is >= 1e-3 (docs/landscape.md says which of these
#: could be checked against the paper's text)
SAFRAN_SHAMIR = Protocol(name="safran-shamir", lr=0.1, gtol=1e-9, max_steps=200_000, spurious_loss=1e-3)


# ----------------------------------------------------------------------------- batched closed forms
def _kernel_terms(name: str, W: torch.Tensor, Om: torch.Tensor, K: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``kappa``, ``A``, ``B`` ``(R, K, J)`` for student rows ``W`` ``(R, K, d)`` against all rows ``Om`` ``(R, J, d)``.

    The first ``K`` rows of ``Om`` are ``W`` itself: self pairs get their exact values
    (angle 0, ``rho = c|w|^2 / d``) instead of an arccos of a rounded cosine.
    """
    G = torch.bmm(W, Om.transpose(1, 2))  # (R, K, J)
    n2 = (Om * Om).sum(-1)  # (R, J)
    na2 = n2[:, :K]
    eye = torch.zeros(G.shape[1:], dtype=torch.bool, device=G.device)
    eye[:, :K] = torch.eye(K, dtype=torch.bool, device=G.device)
    if name == "relu":
        na, nb = na2.sqrt()[:, :, None], n2.sqrt()[:, None, :]
        prod = na * nb
        cos = torch.where(prod > 0, G / torch.where(prod > 0, prod, torch.ones_like(prod)), torch.zeros_like(G)).clamp(-1.0, 1.0)
        cos = torch.where(eye, torch.ones_like(cos), cos)
        t = torch.arccos(cos)
        sin = torch.sqrt(torch.clamp(1.0 - cos * cos, min=0.0))
        kappa = prod * (sin + (math.pi - t) * cos) / (2 * math.pi)
        A = torch.where(na > 0, nb * sin / (2 * math.pi * torch.where(na > 0, na, torch.ones_like(na))), torch.zeros_like(G))
        B = (math.pi - t) / (2 * math.pi)
        return kappa, A, B
    c = 2.0 / (1.0 if name == "erf:unit" else 2.0)  # g = erf(z / s): c = 2 / s^2
    da, db = (1.0 + c * na2)[:, :, None], (1.0 + c * n2)[:, None, :]
    root = torch.sqrt(da * db)
    rho = torch.where(eye, (c * na2 / (1.0 + c * na2))[:, :, None].expand_as(G), c * G / root).clamp(-1.0, 1.0)
    kappa = (2.0 / math.pi) * torch.arcsin(rho)
    q = (math.pi / 2.0) * torch.sqrt(torch.clamp(1.0 - rho * rho, min=1e-300))
    return kappa, -c * rho / (da * q), c / (root * q)


def batched_loss_gradient(activation: str, W: torch.Tensor, v: torch.Tensor, T: torch.Tensor, u: torch.Tensor,
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact population ``L`` ``(R,)``, ``dL/dW`` ``(R, K, d)`` and ``dL/dv`` ``(R, K)`` of ``R`` students at once.

    ``W`` ``(R, K, d)``, ``v`` ``(R, K)``: the students; ``T`` ``(M, d)``, ``u`` ``(M,)``: the
    teacher; ``activation`` one of :data:`CLOSED_FORMS` (module docstring), float64 throughout.
    """
    if activation not in CLOSED_FORMS:
        raise NearoptError(f"no batched closed form for activation {activation!r} (have {', '.join(CLOSED_FORMS)})")
    R, K, _ = W.shape
    Tb = T[None].expand(R, -1, -1)
    Om = torch.cat([W, Tb], dim=1)  # (R, K + M, d)
    beta = torch.cat([v, -u[None].expand(R, -1)], dim=1)  # (R, K + M)
    kappa, A, B = _kernel_terms(activation, W, Om, K)
    kb = (kappa * beta[:, None, :]).sum(-1)  # (R, K): sum_j beta_j kappa_aj = dL/dv_a
    Ttt = _teacher_power(activation, T, u)
    loss = 0.5 * (v * kb).sum(-1) - 0.5 * (v * (kappa[:, :, K:] @ u)).sum(-1) + 0.5 * Ttt
    # L = 1/2 v^T Phi_ss v - v^T Phi_st u + 1/2 u^T Phi_tt u; kb = Phi_ss v - Phi_st u
    Ab = (A * beta[:, None, :]).sum(-1)  # (R, K)
    gW = v[:, :, None] * (Ab[:, :, None] * W + torch.bmm(B * beta[:, None, :], Om))
    return loss, gW, kb


def _teacher_power(activation: str, T: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """``u^T Phi_tt u`` ``()`` (``E[f_t^2]``), from the same closed form."""
    kappa, _, _ = _kernel_terms(activation, T[None], T[None], T.shape[0])
    return u @ kappa[0] @ u


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
    """``(W, v) -> (L, dL/dW, dL/dv)`` for batches of students of this teacher: the closed form where there is one."""
    name = teacher.activation.name
    T = torch.as_tensor(teacher.W1, dtype=torch.float64, device=device)
    u = torch.as_tensor(teacher.W2.ravel(), dtype=torch.float64, device=device)
    if name in CLOSED_FORMS:
        return lambda W, v: batched_loss_gradient(name, W, v, T, u)
    return lambda W, v: _library_loss_gradient(teacher, W, v)


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

    def count(self, status: str) -> int:
        return int(np.count_nonzero(self.status == status))


def starts(teacher: TwoLayerNet, width: int, n_starts: int, trained: str, protocol: Protocol, seed: int) -> tuple[np.ndarray, np.ndarray]:
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


def batched_descent(teacher: TwoLayerNet, W0: np.ndarray, v0: np.ndarray, *, trained: str = "first", protocol: Protocol = SAFRAN_SHAMIR,
                    device: str | torch.device = "cpu", progress: Callable[[int, int, int, int], None] | None = None) -> BatchDescent:
    """Fixed-step gradient descent of all starts at once (module docstring, step 1).

    Runs that stop leave the batch, so late steps cost only the runs still going.
    ``progress(step, converged, diverged, active)`` is called every 500 steps.
    """
    if trained not in TRAINED_BLOCKS:
        raise NearoptError(f"trained must be one of {', '.join(TRAINED_BLOCKS)}, got {trained!r}")
    t0 = time.perf_counter()
    fn = loss_gradient_function(teacher, device)
    W = torch.as_tensor(np.asarray(W0, dtype=np.float64), device=device).clone()
    v = torch.as_tensor(np.asarray(v0, dtype=np.float64), device=device).clone()
    R = W.shape[0]
    bound = DIVERGE_FACTOR * max(1.0, float(max(W.abs().max(), v.abs().max())) if R else 1.0)
    loss, gmax = np.full(R, np.nan), np.full(R, np.nan)
    steps, status = np.zeros(R, dtype=np.int64), np.full(R, "unconverged", dtype=object)
    Wend, vend = W.cpu().numpy().copy(), v.cpu().numpy().copy()
    act = torch.arange(R, device=device)
    lr, mw, mv = protocol.lr, float(trained != "second"), float(trained != "first")
    step = 0
    while act.numel():
        L, gW, gv = fn(W, v)
        gW, gv = gW * mw, gv * mv
        gunit = torch.sqrt((gW * gW).sum(-1) + gv * gv).amax(-1)  # (R_active,)
        bad = ~torch.isfinite(L) | ~torch.isfinite(gunit) | (W.abs().amax((1, 2)) > bound) | (v.abs().amax(-1) > bound)
        done = (gunit <= protocol.gtol) & ~bad
        out = bad | done | (step >= protocol.max_steps)
        if bool(out.any()):
            idx = act[out].cpu().numpy()
            sel = out.nonzero().ravel()
            Wend[idx], vend[idx] = W[sel].cpu().numpy(), v[sel].cpu().numpy()
            loss[idx], gmax[idx], steps[idx] = L[sel].cpu().numpy(), gunit[sel].cpu().numpy(), step
            st = np.where(bad[sel].cpu().numpy(), "diverged", np.where(done[sel].cpu().numpy(), "converged", "unconverged"))
            status[idx] = st
            keep = ~out
            act, W, v, gW, gv = act[keep], W[keep], v[keep], gW[keep], gv[keep]
        if not act.numel():
            break
        W = W - lr * gW
        v = v - lr * gv
        step += 1
        if progress is not None and step % 500 == 0:
            progress(step, int(np.count_nonzero(status == "converged")), int(np.count_nonzero(status == "diverged")), int(act.numel()))
    return BatchDescent(Wend, vend, loss, gmax, steps, status.astype(str), time.perf_counter() - t0)


# ----------------------------------------------------------------------------- symmetry
def _labels(values: np.ndarray, tol: float) -> np.ndarray:
    """Integer labels of the entries of ``values`` after clustering (sorted gaps ``> tol`` separate)."""
    flat = values.ravel()
    order = np.argsort(flat, kind="stable")
    cuts = np.concatenate([[0], np.cumsum(np.diff(flat[order]) > tol)])
    lab = np.empty(flat.size, dtype=np.int64)
    lab[order] = cuts
    return lab.reshape(values.shape)


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
    L = _labels(W, tol)
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
    """Critical points equal up to symmetry: same class, loss and Hessian spectrum."""

    representative: CriticalPoint
    members: list[int] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.members)

    def to_dict(self) -> dict[str, Any]:
        cp = self.representative
        lam = cp.eigenvalues
        values, counts = eigenvalue_clusters(lam, CLUSTER_RTOL)
        return {"loss": cp.loss, "loss_relative": cp.loss_relative, "count": self.count, "classification": cp.classification,
                "index": cp.index, "zero_modes": cp.zero_modes,
                "lambda_min": float(lam[0]) if lam.size else float("nan"), "lambda_max": float(lam[-1]) if lam.size else float("nan"),
                "multiplicities": sorted(int(c) for c in counts), "distinct_eigenvalues": [float(x) for x in values],
                "eigenvalue_counts": [int(c) for c in counts], "cluster_rtol": CLUSTER_RTOL,
                "gradient_norm": cp.gradient_norm, "symmetry": symmetry_analysis(cp), "members": list(self.members)}


def same_family(a: CriticalPoint, b: CriticalPoint, floor: float, rtol: float = 1e-7) -> bool:
    """Same class, loss to ``max(rtol |L|, floor)`` and spectrum (``1e-5`` rel., ``1e-6 max(1, |lambda|_max)`` abs.)."""
    if a.classification != b.classification or a.eigenvalues.shape != b.eigenvalues.shape:
        return False
    if abs(a.loss - b.loss) > max(rtol * abs(a.loss), floor):
        return False
    top = max(1.0, float(np.max(np.abs(a.eigenvalues)))) if a.eigenvalues.size else 1.0
    return bool(np.allclose(a.eigenvalues, b.eigenvalues, rtol=1e-5, atol=1e-6 * top))


def families(points: list[CriticalPoint | None]) -> list[Family]:
    """Group points into families (:func:`same_family`), ordered by loss; ``None`` entries (diverged runs) are skipped."""
    groups: list[Family] = []
    live = [p for p in points if p is not None]
    if not live:
        return groups
    floor = GLOBAL_RTOL * teacher_power(live[0].problem.teacher)
    order = sorted((i for i, p in enumerate(points) if p is not None), key=lambda i: points[i].loss)  # type: ignore[union-attr]
    for i in order:
        cp = points[i]
        assert cp is not None
        for g in groups:
            if same_family(g.representative, cp, floor):
                g.members.append(i)
                break
        else:
            groups.append(Family(cp, [i]))
    return groups


# ----------------------------------------------------------------------------- the survey
def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (``scipy.stats.binomtest``); ``(nan, nan)`` for ``n = 0``."""
    if n == 0:
        return float("nan"), float("nan")
    ci = scipy.stats.binomtest(int(successes), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


@dataclass
class Survey:
    """A finished survey: the descents, every polished point (``None`` for diverged runs) and the families."""

    teacher: TwoLayerNet
    width: int
    trained: str
    protocol: Protocol
    seed: int
    descent: BatchDescent
    points: list[CriticalPoint | None]
    families: list[Family]
    seconds: dict[str, float]

    @property
    def n_starts(self) -> int:
        return int(self.descent.status.size)

    @property
    def spurious(self) -> np.ndarray:
        """``(R,)`` bool: converged runs whose final loss is at least ``protocol.spurious_loss``."""
        return (self.descent.status == "converged") & (self.descent.loss >= self.protocol.spurious_loss)

    def to_dict(self) -> dict[str, Any]:
        n_sp, R = int(self.spurious.sum()), self.n_starts
        lo, hi = wilson_interval(n_sp, R)
        classes: dict[str, int] = {}
        for p in self.points:
            name = "diverged" if p is None else p.classification
            classes[name] = classes.get(name, 0) + 1
        d = self.descent
        return {"starts": R, "K": self.width, "M": self.teacher.n_hidden, "N_i": self.teacher.n_inputs,
                "activation": self.teacher.activation.name, "trained": self.trained, "seed": self.seed, "protocol": self.protocol.to_dict(),
                "spurious": n_sp, "spurious_fraction": n_sp / R if R else float("nan"),
                "spurious_fraction_ci": [lo, hi], "ci": "Wilson score, 95 %, over all starts",
                "converged": d.count("converged"), "diverged": d.count("diverged"), "unconverged": d.count("unconverged"),
                "classes": classes, "descent_steps": {"median": float(np.median(d.steps)) if R else 0.0, "max": int(d.steps.max()) if R else 0},
                "dtype": "float64", "families": [f.to_dict() for f in self.families], "seconds": dict(self.seconds)}

    def save_families(self, folder: str | Path) -> list[Path]:
        """Write each family's representative to ``folder/family_NN.npz`` (``W1``, ``W2``: a ``--student`` file)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        return [f.representative.save(folder / f"family_{i:02d}.npz") for i, f in enumerate(self.families)]


def polish_and_classify(teacher: TwoLayerNet, W: np.ndarray, v: np.ndarray, trained: str) -> CriticalPoint:
    """Newton polish (:func:`nearopt.critical.newton_polish`) and classification of one end point."""
    pr = Problem(teacher, student=TwoLayerNet(W, v[None, :], teacher.activation), trained=trained)
    end, hist = newton_polish(pr)
    cp = classify(end)
    cp.newton_history, cp.descent = hist, "batched-gd"
    return cp


def survey(teacher: TwoLayerNet, *, width: int | None = None, n_starts: int = 100, trained: str = "first", protocol: Protocol = SAFRAN_SHAMIR,
           seed: int = 0, device: str | torch.device = "cpu", progress: Callable[[str], None] | None = None) -> Survey:
    """Draw ``n_starts`` students, descend all at once, polish and classify every end point, group the families."""
    width = teacher.n_hidden if width is None else require_positive_int(width, "width")
    n_starts = require_positive_int(n_starts, "starts")
    if trained not in TRAINED_BLOCKS:
        raise NearoptError(f"trained must be one of {', '.join(TRAINED_BLOCKS)}, got {trained!r}")
    W0, v0 = starts(teacher, width, n_starts, trained, protocol, seed)

    def report(step: int, conv: int, div: int, active: int) -> None:
        if progress is not None:
            progress(f"step {step}: {conv}/{n_starts} converged, {div} diverged, {active} running")

    d = batched_descent(teacher, W0, v0, trained=trained, protocol=protocol, device=device, progress=report)
    if progress is not None:
        progress(f"descent done in {d.seconds:.1f} s: {d.count('converged')}/{n_starts} converged, {d.count('diverged')} diverged, "
                 f"{d.count('unconverged')} unconverged; polishing")
    t0 = time.perf_counter()
    points: list[CriticalPoint | None] = []
    for r in range(n_starts):
        points.append(None if d.status[r] == "diverged" else polish_and_classify(teacher, d.W[r], d.v[r], trained))
    t1 = time.perf_counter()
    fam = families(points)
    t2 = time.perf_counter()
    return Survey(teacher, width, trained, protocol, seed, d, points, fam, {"descent": d.seconds, "polish": t1 - t0, "families": t2 - t1})


def committee_survey(k: int, n: int | None = None, *, activation: str = "relu", **kw: Any) -> Survey:
    """:func:`survey` of the orthonormal committee ``sum_i g(x_i)`` (``k`` units, ``N_i = k``) with ``n`` student units (default ``k``)."""
    return survey(committee_teacher(k, k, activation), width=k if n is None else n, **kw)
