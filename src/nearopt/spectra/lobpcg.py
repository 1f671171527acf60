"""Preconditioned LOBPCG with soft locking, in torch: the smallest eigenpairs of a symmetric PSD operator.

The bottom of a population Hessian spectrum is tiny and crowded (erf at
``N_i = N_h = 1000``: ``2·10⁻¹²`` against ``λ_max = 1.6``), so the smallest end needs a
preconditioner and a block method (``docs/scale.md``). This is Knyazev's LOBPCG
(SIAM J. Sci. Comput. 23, 2001) with the robustness measures of Hetmaniuk &
Lehoucq (J. Comput. Phys. 218, 2006) and Duersch et al. (SIAM J. Sci. Comput. 40,
2018): each Rayleigh–Ritz runs on an orthonormal basis ``[L, X, W, P]``, so the
projected problem is a standard ``eigh``. ``P`` is made orthonormal and orthogonal to
the new ``L`` and ``X`` in the Ritz coefficients (Duersch et al.), ``W`` by projection
off ``L``, ``X``, ``P`` and SVQB, dropping directions that have become dependent.

Why not SciPy's or torch's ``lobpcg``: both iterate until *every* block vector
converges (the guard vectors at the top of the block converge last) and keep no
locked set, so ``k`` eigenpairs need a block of ``k`` and more; SciPy's moves each
block to the host; torch's has no constraints. Here

* a pair is **locked** as soon as it and every pair below it are accurate: it gets no
  more search directions and its column is refilled with a fresh random vector, but it
  stays in the Rayleigh–Ritz basis (soft locking), so its small error never floors the
  pairs above it. The block can be smaller than ``k`` (memory ``≈ (2 k + 7 m) P`` floats);
* a pair is accurate when its relative residual is ``≤ tol`` (with a margin), or, where
  that lies below the product's rounding, when its backward error ``‖r‖ ≤ ε λ_max`` is that
  of a dense ``eigh`` or the Rayleigh-quotient bound ``‖r_i‖² / ((θ_edge − θ_i) θ_i)`` (gap to
  the block's top Ritz value) is ``≤ tol²``;
  the returned pairs come from a last Rayleigh–Ritz on the locked vectors with explicit
  products, since the block's ``H X`` is carried implicitly;
* the null space must be known and comes in as constraints (every other Ritz value is a
  wanted eigenvalue, however tiny: erf's reach ``10⁻¹²`` of ``λ_max``, below any zero threshold);
* a pair whose residual has stopped falling at the rounding floor of the product
  (``‖r‖ ≤ FLOOR_RTOL λ_max``, about ``4.5 ε λ_max``) is locked and flagged ``at_floor``
  instead of looping; the final check accepts a pair at that floor too (a GPU's float64
  products round differently from the CPU's: erf ``n = 2000`` ends at ``‖r‖ ≈ 3.5 ε λ_max``);
* where products round above that fixed floor (erf ``n = 3000``, ``P = 9·10⁶``: one pair at
  6–7 ``ε λ_max``), the floor is measured: :func:`product_rounding` compares ``H x`` with
  ``H x_a + H x_b`` on the stalled pair (three products, once per run) and, in the final check,
  on the first returned pair that fails the other rules, and a residual within
  :data:`ROUNDING_MARGIN` of it is at the floor;
* when a wanted pair's residual grows :data:`GROWTH`-fold over :data:`STAGNATION` iterations the
  search directions are dropped and ``H X`` recomputed (a restart): the rounding carried in the
  implicit products otherwise grows once the pairs reach their floor, until they are lost.

Everything runs on the device of the operator (CPU or CUDA), float64.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

from ..errors import NearoptError
from ..tolerances import EPS
from .torch_ops import HOST_REDUCE_ROWS, Counter, ProductMeter, TorchMatmat, chunked, column_norms, generator, row_chunk, small_eigh

__all__ = [
    "FLOOR_RTOL", "GROWTH", "GUARD", "lobpcg_smallest", "LOCK_MARGIN", "LockedPairs", "P_DROP", "product_rounding", "ritz_bound", "ROUNDING_MARGIN",
    "STAGNATION"
]

#: a residual ``‖r‖ ≤ FLOOR_RTOL λ_max`` that stopped falling counts as the product's rounding floor
FLOOR_RTOL = 1e-15
#: float64 machine epsilon: ``‖r‖ ≤ EPS λ_max`` is the backward error of a dense eigensolver
#: a pair whose explicit residual is above ``FLOOR_RTOL λ_max`` is still at the floor when it is within this
#: factor of its product's measured rounding (:func:`product_rounding`)
ROUNDING_MARGIN = 4.0
#: iterations without a 2x fall of a residual before it counts as stagnant
STAGNATION = 10
#: search directions whose squared singular value (of the pairs' unit-scaled coefficients, :func:`_directions`)
#: falls below this fraction of the largest are dropped: they are numerically dependent
P_DROP = 1e-8
#: a wanted pair's residual this many times larger than ``STAGNATION`` iterations before: restart (:func:`_restart`)
GROWTH = 10.0
#: locking asks this fraction of ``tol`` of the carried residual (the explicit one, checked at the end, may differ)
LOCK_MARGIN = 0.5
#: block vectors beyond those still wanted (the convergence of the last wanted one)
GUARD = 4


@dataclass
class LockedPairs:
    """What :func:`lobpcg_smallest` found.

    ``values`` ``(k,)`` ascending nonzero Ritz values, ``vectors`` ``(P, k)``;
    ``residuals`` ``(k,)`` absolute ``‖H x − θ x‖`` (explicit products);
    ``bounds`` ``(k,)`` relative eigenvalue error bounds ``‖r‖² / (gap θ)``;
    ``restarts`` how often the search directions were dropped (:func:`_restart`);
    ``floor`` the absolute residual accepted as the products' rounding floor;
    ``at_floor`` ``(k,)`` pairs accepted on their backward error (``‖r‖ ≤ FLOOR_RTOL λ_max``,
    a few ``ε λ_max``: about what a dense ``eigh`` guarantees) or their eigenvalue bound
    (``≤ tol²``), because ``tol θ`` lies below the product's rounding; their ``bounds`` say how
    accurate their eigenvalues are (and Weyl's ``‖r‖ / θ`` holds however crowded they are).
    """

    values: np.ndarray
    vectors: torch.Tensor
    residuals: np.ndarray
    bounds: np.ndarray
    at_floor: np.ndarray
    iterations: int
    products: int
    converged: bool
    edge: float
    restarts: int = 0
    floor: float = float("nan")


def _gram(As: tuple[torch.Tensor, ...], Bs: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """``[A_1 … A_p]ᵀ [B_1 … B_q]`` for tall blocks ``(n, ·)``, summed over row chunks.

    On the host, one pass over the blocks with the chunk's rows side by side: the chunk
    (:data:`~nearopt.spectra.torch_ops.HOST_REDUCE_ROWS` rows) stays in cache while every pair of blocks uses it, where block-by-block
    products (``A_i.T @ B_j``, each a memory-bound pass) made the locking LOBPCG 1.75× slower
    (erf ``n = 500``, 40 iterations: 50.4 s against 28.8 s). On a GPU the block products run as
    they are (that is how the H200 timings in ``docs/scale.md`` were measured).
    """
    n, ma, mb = As[0].shape[0], sum(a.shape[1] for a in As), sum(b.shape[1] for b in Bs)
    out = As[0].new_zeros((ma, mb))
    if ma == 0 or mb == 0:
        return out
    if As[0].device.type != "cpu":
        return torch.cat([torch.cat([a.T @ b for b in Bs], 1) for a in As], 0)
    for s in range(0, n, HOST_REDUCE_ROWS):
        r = slice(s, s + HOST_REDUCE_ROWS)
        Ar = torch.cat([a[r] for a in As], 1) if len(As) > 1 else As[0][r]
        Br = torch.cat([b[r] for b in Bs], 1) if len(Bs) > 1 else Bs[0][r]
        out.addmm_(Ar.T, Br)
    return out


def _project(V: torch.Tensor, *bases: torch.Tensor) -> torch.Tensor:
    """``V`` minus its components in the orthonormal ``bases`` (in place, twice for accuracy)."""
    bases = tuple(Q for Q in bases if Q.shape[1])
    if not bases or not V.shape[1]:
        return V
    edges = np.cumsum([0] + [Q.shape[1] for Q in bases])
    for _ in range(2):
        c = _gram(bases, (V,))
        for i, Q in enumerate(bases):
            V.addmm_(Q, c[edges[i] : edges[i + 1]], alpha=-1.0)
    return V


def _svqb(V: torch.Tensor, drop: float = 1e-12) -> torch.Tensor:
    """``T`` ``(n, r)`` with ``V T`` orthonormal (SVQB, Stathopoulos & Wu 2002), directions whose
    Gram eigenvalue falls below ``drop`` (relative, after scaling the columns) left out."""
    if V.shape[1] == 0:
        return V.new_zeros((0, 0))
    G = _gram((V,), (V,))
    d = torch.sqrt(torch.clamp(torch.diagonal(G), min=torch.finfo(V.dtype).tiny))
    G = G / d[:, None] / d[None, :]
    s, U = small_eigh(0.5 * (G + G.T))
    keep = s > drop * max(float(s.max()), 0.0)
    return (U[:, keep] / torch.sqrt(s[keep])) / d[:, None]


def _rayleigh_ritz(V: torch.Tensor, HV: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ritz values ``(m,)`` ascending and the rotated ``V C``, ``H V C`` of an orthonormal block ``V``
    ``(n, m)`` with its product ``HV``."""
    theta, C = small_eigh(0.5 * (V.T @ HV + HV.T @ V))
    return theta, V @ C, HV @ C


def _orthonormal(V: torch.Tensor, *bases: torch.Tensor) -> torch.Tensor:
    """An orthonormal basis of ``V`` off the ``bases``: projection (two passes) and SVQB, once more
    when the projection removed nearly all of a column (then rounding is no longer negligible)."""
    before = column_norms(V)
    V = _project(V, *bases)
    lost = bool((column_norms(V) < 1e-2 * before).any())
    V = V @ _svqb(V)
    if lost:
        V = _project(V, *bases)
        V = V @ _svqb(V)
    return V


def ritz_bound(theta: npt.ArrayLike, res: npt.ArrayLike, edge: npt.ArrayLike) -> np.ndarray:
    """Relative eigenvalue error bound ``‖r‖² / (|θ_edge − θ| |θ|)`` of Ritz pairs (the Rayleigh-quotient
    bound, gap to ``edge``: the block's farthest Ritz value). Floats or arrays ``(k,)``, elementwise."""
    tiny = np.finfo(np.float64).tiny
    return np.square(res) / np.maximum(np.abs(np.subtract(edge, theta)), tiny) / np.maximum(np.abs(theta), tiny)


@dataclass
class _State:
    """The iteration's blocks: locked ``L``/``HL`` ``(n, l)`` (no search directions of their own) with
    Ritz values ``theta_l``, active ``X``/``HX`` ``(n, m)`` with ``theta_x``, search directions
    ``P``/``HP`` ``(n, p)``."""

    L: torch.Tensor
    HL: torch.Tensor
    theta_l: torch.Tensor
    edges: list  # for each locked pair, the block's top Ritz value when it was locked (its gap estimate)
    X: torch.Tensor
    HX: torch.Tensor
    theta_x: torch.Tensor
    P: torch.Tensor
    HP: torch.Tensor


def lobpcg_smallest(
    matmat: TorchMatmat,
    n: int,
    k: int,
    *,
    lambda_max: float,
    precondition: TorchMatmat | None = None,
    constraints: torch.Tensor | None = None,
    tol: float = 1e-6,
    block: int = 8,
    guard: int = GUARD,
    maxiter: int = 500,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool | Callable[[int, float], None] | None = None,
    meter: ProductMeter | None = None,
) -> LockedPairs:
    """The ``k`` smallest nonzero eigenpairs of a symmetric PSD ``H`` (``matmat``: ``(n, m) -> (n, m)``).

    Parameters
    ----------
    lambda_max : ``‖H‖`` (scales the rounding floor).
    precondition : ``T ≈ H⁻¹`` (SPD) as a torch function ``(n, m) -> (n, m)``, or ``None``.
    constraints : ``(n, c)`` orthonormal basis of the null space (all of it), kept out of the search.
    tol : relative residual ``‖H x − θ x‖ / θ`` each returned pair must reach (its eigenvalue
        is then accurate to about ``tol² θ / gap``, reported in ``bounds``).
    block : largest active block ``m``: memory ``≈ (7 m + 2 l) n`` floats, ``l ≤ k`` the pairs locked.
    guard : active vectors beyond those still wanted.
    maxiter : iterations in all; past it the best pairs found are returned with ``converged=False``.
    meter : count the products on this meter (``progress`` then unused) and report its total in
        ``products``: the caller's earlier products included.
    """
    if block < 1 or k < 1 or guard < 0:
        raise NearoptError("lobpcg_smallest needs k >= 1, block >= 1 and guard >= 0")
    dev = torch.device(device)
    H = Counter(matmat, progress, "smallest: ", meter)
    Y = constraints.to(dev) if constraints is not None else torch.zeros((n, 0), dtype=torch.float64, device=dev)
    gen = generator(seed, dev)
    floor = FLOOR_RTOL * lambda_max
    backward = EPS * lambda_max
    empty = torch.zeros((n, 0), dtype=torch.float64, device=dev)
    no_theta = torch.zeros(0, dtype=torch.float64, device=dev)

    def fresh(m: int, *against: torch.Tensor) -> torch.Tensor:
        return _orthonormal(torch.randn((n, m), generator=gen, dtype=torch.float64, device=dev), *against)

    def wanted(st: _State) -> int:
        """Active vectors still needed: the pairs not yet locked, plus the guard."""
        left = k - st.L.shape[1]
        return max(1, min(block, left + guard, n - Y.shape[1] - st.L.shape[1] - 1))

    X = fresh(min(block, k + guard, n - Y.shape[1] - 1), Y)
    th, X, HX = _rayleigh_ritz(X, H(X))
    st = _State(empty, empty, no_theta, [], X, HX, th, empty, empty)
    history: list[torch.Tensor] = []  # residual norms per active column, one entry per iteration
    iterations = restarts = 0
    measured = False  # whether the floor has been raised to the products' measured rounding
    while True:
        R = torch.addcmul(st.HX, st.X, st.theta_x, value=-1.0)
        rn = column_norms(R)
        edge = float(st.theta_x[-1])
        n_lock, floored = _lockable(st, rn, edge, tol, floor, history, backward)
        if floored and not measured:  # stalled above the fixed floor: is that the products' own rounding?
            measured = True
            floor = max(floor, ROUNDING_MARGIN * float(product_rounding(H, st.X[:, n_lock : n_lock + 1])[0]))
            n_lock, _ = _lockable(st, rn, edge, tol, floor, history, backward)
        if n_lock:
            st = _lock(st, n_lock)
            R, rn = R[:, n_lock:], rn[n_lock:]
            history = [h[n_lock:] for h in history]
        H.meter.status = f"{min(st.L.shape[1], k)}/{k} pairs locked"
        if st.L.shape[1] >= k or iterations >= maxiter:
            break
        if _growing(rn, history, k - st.L.shape[1]):
            st, history, restarts = _restart(H, st), [], restarts + 1
            continue
        need = wanted(st) - st.X.shape[1]
        if need > 0:  # refill the active block: fresh vectors enter at its top, the others keep their P
            Xn = fresh(need, Y, st.L, st.X)
            HXn = H(Xn)
            th = torch.cat([st.theta_x, (Xn * HXn).sum(0)])
            st = _State(st.L, st.HL, st.theta_l, st.edges, torch.cat([st.X, Xn], 1), torch.cat([st.HX, HXn], 1), th, st.P, st.HP)
            continue
        history.append(rn.clone())
        W = chunked(precondition, R) if precondition is not None else R
        del R  # (memory: the block is P x m)
        iterations += 1
        st = _step(H, Y, st, W)
    return _result(H, st, k, tol, iterations, floor, restarts)


def _growing(rn: torch.Tensor, history: list[torch.Tensor], left: int) -> bool:
    """Whether a wanted active pair's residual grew :data:`GROWTH`-fold over :data:`STAGNATION` iterations.

    At a residual floor above the lock rules (products rounding far above ``ε ‖H‖``), the
    rounding carried in the implicit ``H X``, ``H P`` grows from iteration to iteration and the
    pairs diverge (measured, when ``P`` was still projected and orthonormalised as a tall block,
    which amplified that rounding: a product rounding at ``7·10⁻¹²`` took the residuals from
    ``10⁻¹⁰`` to ``10⁻²``).
    """
    if len(history) < STAGNATION:
        return False
    old = history[-STAGNATION]
    m = min(left, old.numel(), rn.numel())
    return m > 0 and bool((rn[:m] > GROWTH * old[:m]).any())


def _restart(H: Counter, st: _State) -> _State:
    """The active block with explicit products ``H X`` and a Rayleigh–Ritz on it; no search directions
    (what their carried rounding had spoiled). ``m`` products."""
    theta, X, HX = _rayleigh_ritz(st.X, H(st.X))
    empty = st.X.new_zeros((st.X.shape[0], 0))
    return _State(st.L, st.HL, st.theta_l, st.edges, X, HX, theta, empty, empty)


def _lockable(st: _State, rn: torch.Tensor, edge: float, tol: float, floor: float, history: list[torch.Tensor], backward: float) -> tuple[int, bool]:
    """How many of the lowest active pairs are accurate enough to lock (each one below it too), and
    whether the first pair that is not had stalled above ``floor`` (then the floor may be too low).

    A pair needs ``‖r‖ ≤ tol θ`` (judged on the vector, not only the eigenvalue: once locked
    it gets no search directions of its own, so this is its final accuracy); or a backward
    error ``‖r‖ ≤ ε λ_max`` (an exact eigenpair of ``H + E`` with ``‖E‖ ≤ ε ‖H‖``, what a dense
    ``eigh`` guarantees: the way out when ``tol θ`` lies below the product's rounding);
    or an eigenvalue bound ``≤ tol²``; or a residual at the floor that stopped falling.
    """
    theta, res = st.theta_x.tolist(), rn.tolist()  # (one device sync, not one per pair)
    n_lock = 0
    old = history[-STAGNATION].tolist() if len(history) >= STAGNATION else None
    for i in range(len(theta) - 1):
        th_i, r_i = theta[i], res[i]
        ok = r_i <= LOCK_MARGIN * tol * th_i or r_i <= backward or ritz_bound(th_i, r_i, edge) <= (LOCK_MARGIN * tol) ** 2
        stalled = old is not None and i < len(old) and old[i] < 2.0 * r_i
        if not (ok or (stalled and r_i <= floor)):
            return n_lock, stalled
        n_lock += 1
    return n_lock, False


def _lock(st: _State, n_lock: int) -> _State:
    """Move the ``n_lock`` lowest active pairs to the locked set ``L``."""
    L = torch.cat([st.L, st.X[:, :n_lock]], 1)
    HL = torch.cat([st.HL, st.HX[:, :n_lock]], 1)
    theta_l = torch.cat([st.theta_l, st.theta_x[:n_lock]])
    edges = st.edges + [float(st.theta_x[-1])] * n_lock
    keep = slice(n_lock, None)
    P, HP = (st.P[:, keep], st.HP[:, keep]) if st.P.shape[1] else (st.P, st.HP)
    return _State(L, HL, theta_l, edges, st.X[:, keep].clone(), st.HX[:, keep].clone(), st.theta_x[keep], P, HP)


def _step(H: Counter, Y: torch.Tensor, st: _State, W: torch.Tensor) -> _State:
    """One LOBPCG iteration: Rayleigh–Ritz on the orthonormal ``[L, X, W, P]`` (soft locking: the
    locked pairs stay in the basis, so their errors never floor the active ones), all orthogonal
    to the constraints ``Y``; ``W`` the preconditioned residuals of the active block only.

    ``P`` comes in orthonormal and orthogonal to ``L`` and ``X`` (:func:`_update` builds it so), so
    only ``W`` is projected here: against ``Y``, ``L``, ``X`` and ``P``.
    """
    L, HL, X, HX, P, HP = st.L, st.HL, st.X, st.HX, st.P, st.HP
    G = _gram((X,), (X,))
    if float(torch.linalg.matrix_norm(G - torch.eye(G.shape[0], dtype=G.dtype, device=G.device))) > 1e-10:
        T = _svqb(X)  # X drifted from orthonormal: restore it (H X follows by the same map)
        X, HX = X @ T, HX @ T
        P = HP = X.new_zeros((X.shape[0], 0))  # (and P, built against the old X, is dropped)
    W = _orthonormal(W, Y, L, X, P)
    HW = H(W)
    S, HS = (L, X, W, P), (HL, HX, HW, HP)
    A = _gram(S, HS)
    theta, C = small_eigh(0.5 * (A + A.T))
    nl, nx = L.shape[1], X.shape[1]
    Cp = _directions(C, nl, nx)
    P, HP = _update(S, HS, torch.cat([C[:, : nl + nx], Cp], 1), nl + nx)
    return _State(L, HL, theta[:nl], st.edges, X, HX, theta[nl : nl + nx], P, HP)


def _directions(C: torch.Tensor, nl: int, nx: int) -> torch.Tensor:
    """Coefficients ``(s, p)`` of the next search directions in the basis ``S = [L X W P]`` (``s`` columns),
    orthonormal and orthogonal to those of the new ``L`` and ``X`` (``C[:, :nl + nx]``).

    LOBPCG's directions are the ``W``/``P`` parts of the new ``X``'s coefficients. Projected off the new
    ``L``, ``X`` here, on ``s × s`` matrices (Duersch et al. 2018), they give a ``P = S C_p`` that
    needs no projection of tall blocks, and ``H P = H S C_p`` carries no rounding amplified by
    nearly dependent directions. With each pair's direction scaled to norm 1 (as SVQB scales
    columns), those whose singular value falls below ``P_DROP^1/2`` of the largest are dropped.
    """
    Z = C[:, nl : nl + nx].clone()
    Z[: nl + nx] = 0.0  # (the new X's W and P parts)
    rest = C[:, nl + nx :]
    B = rest.T @ Z
    d = torch.linalg.vector_norm(B, dim=0)
    B = B[:, d > 0] / d[d > 0]  # (each pair's direction counts, however converged: SVQB's scaling)
    U, sv, _ = torch.linalg.svd(B, full_matrices=False)
    keep = sv > P_DROP**0.5 * float(sv.max()) if sv.numel() else sv > 0
    return rest @ U[:, keep]


def _update(S, HS, C, nk: int):
    """``[L X] ← S C[:, :nk]``, ``[HL HX] ← HS C[:, :nk]``, ``P ← S C[:, nk:]`` (and ``HP``), in place,
    ``S = [L X W P]``, ``nk = l + m``.

    Row by row-chunk, so no second copy of the blocks is ever held (memory ``≈ (2 l + 6 m) n``
    floats); the new ``P``/``HP`` go into ``W``/``HW``'s storage when the shapes allow. Each
    block is read once per chunk (products summed with ``addmm``, no concatenated copy).
    Returns ``(P, HP)``.
    """
    L, X, W, _ = S
    nl, nw, npn = L.shape[1], W.shape[1], C.shape[1] - nk
    bounds = np.cumsum([0] + [B.shape[1] for B in S])
    parts = [C[bounds[i] : bounds[i + 1]] for i in range(4)]
    rows = row_chunk(X.device)
    out = []
    for blocks in (S, HS):
        Lb, Xb, Wb, Pb = blocks
        Pn = Wb if nw == npn else Xb.new_empty((Xb.shape[0], npn))
        for s in range(0, Xb.shape[0], rows):
            r = slice(s, s + rows)
            new = Wb[r] @ parts[2]  # (rows, l + m + p): every new column from this chunk's rows
            new.addmm_(Xb[r], parts[1])
            if nl:
                new.addmm_(Lb[r], parts[0])
            if Pb.shape[1]:
                new.addmm_(Pb[r], parts[3])
            Lb[r], Xb[r], Pn[r] = new[:, :nl], new[:, nl:nk], new[:, nk:]
        out.append(Pn)
    return out[0], out[1]


def product_rounding(H: TorchMatmat, V: torch.Tensor) -> np.ndarray:
    """Column norms ``(m,)`` of ``fl(H V) − fl(H V_a) − fl(H V_b)``, ``V = V_a + V_b`` (even and odd rows).

    Zero in exact arithmetic, so it measures the rounding of one product on these very vectors
    (about ``√2`` times it): a residual no larger than this cannot be told from rounding.
    Three products per column.
    """
    Va = V.clone()
    Va[1::2] = 0.0
    D = H(V)
    D -= H(Va)
    D -= H(V - Va)
    return column_norms(D).cpu().numpy()


def _result(H: Counter, st: _State, k: int, tol: float, iterations: int, floor: float, restarts: int = 0) -> LockedPairs:
    """The lowest ``k`` pairs of ``[L, X]``, refined by a last Rayleigh–Ritz on their span with
    explicit products (the iteration's ``H L ≈ L θ_l`` is not used for what is returned)."""
    edge_now = float(st.theta_x[-1]) if st.theta_x.numel() else float(st.theta_l[-1])
    edges = np.array((st.edges + [edge_now] * k)[:k])
    V = st.L if k <= st.L.shape[1] else torch.cat([st.L, st.X], 1)
    Vk = V[:, :k]
    st.X = st.HX = st.P = st.HP = st.HL = st.L.new_zeros((st.L.shape[0], 0))  # drop the blocks: memory for the last products
    theta, Vk, HV = _rayleigh_ritz(Vk, H(Vk))
    res = column_norms(HV.addcmul_(Vk, theta, value=-1.0)).cpu().numpy()
    vals = theta.cpu().numpy()
    bounds = ritz_bound(vals, res, edges[: vals.size])
    ok = (res <= tol * np.abs(vals)) | (bounds <= tol * tol) | (res <= floor)
    if not ok.all():  # the product's own rounding may lie above the fixed floor (P = 9e6: 6-7 eps lambda_max)
        first = int(np.flatnonzero(~ok)[0])  # measured on one pair: 3 products, however many failed
        floor = max(floor, ROUNDING_MARGIN * float(product_rounding(H, Vk[:, first : first + 1])[0]))
        ok |= res <= floor
    return LockedPairs(
        values=vals,
        vectors=Vk,
        residuals=res,
        bounds=bounds,
        at_floor=ok & (res > tol * np.abs(vals)),
        iterations=iterations,
        products=H.products,
        converged=bool(vals.size >= k and np.all(ok)),
        edge=edge_now,
        restarts=restarts,
        floor=floor,
    )
