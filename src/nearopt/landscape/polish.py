"""Step 2 of a survey: Newton polish of the end points (batched MINRES on exact Hessian products) and their
classification per group of equal loss and symmetry invariants (:mod:`nearopt.landscape.survey`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.autograd.forward_ad as forward_ad

from ..errors import NearoptError
from ..gaussian import kernels
from ..gaussian.expectations import output_power
from ..gaussian.kernels import CLOSED_FORMS
from ..model.network import TwoLayerNet
from ..model.pair_terms import GAP_SNAP
from ..model.problem import Problem
from ..spectra.grouping import close_losses, first_match_groups
from .critical import EPS, FLOOR_FACTOR, GLOBAL_RTOL, CriticalPoint, classify, newton_polish
from .descent import batched_loss_gradient, batched_teacher_power
from .families import same_family
from .manifold import is_positively_homogeneous

__all__ = [
    "balanced", "batched_minres", "batched_newton_polish", "BatchPolish", "CLASSIFY_PER_GROUP", "invariant_groups", "INVARIANT_RTOL", "invariants",
    "polish_and_classify", "polish_case", "POLISH_CHUNK"
]

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
    worked out once so that everything that depends on the point only is computed once.
    ``tests/test_kernels.py`` holds it equal to the forward-mode derivative of the gradient
    (:meth:`_Gradient.forward_hessian`) and to torch autograd's Hessian of an independent loss. The
    products derived by autodiff cost more (``benchmarks/bench_polish_hvp.py``: forward mode 9-19 times
    per product, ``torch.func.linearize`` 2-3 times plus its tracing per Newton step), and with forward mode
    a survey cell runs at 0.78-0.96 of the speed. In the direction ``Delta`` (``dn_a = w^_a . Delta_a``,
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
        flat = kernels.unit_gap(c) <= GAP_SNAP  # parallel to rounding, as relu_angles takes them
        flat[:, :, :K] |= torch.eye(K, dtype=torch.bool, device=W.device)
        c = torch.where(flat, torch.where(c > 0, 1.0, -1.0), c)
        self.c = c
        theta, sin = kernels.relu_angles(c, kernels.unit_gap(c))  # the point's pair terms: Theta = pi - t, S = sin t
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
    derivative of the batched closed-form gradient (an exact Hessian product; for ReLU with ``v`` fixed
    that derivative worked out once, :class:`_ReluHessian`), so ``s -> -H^+ g`` also at saddles and on non-isolated minima; ``g^T H s = -|P g|^2 <= 0``
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
