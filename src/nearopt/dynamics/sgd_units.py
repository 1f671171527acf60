"""The exact SGD recursion's moments through at most four hidden units at a time (docs/sgd.md).

The exact route of :mod:`nearopt.dynamics.sgd_predict` takes ``H = E[J J^T]`` and
``M4 = E[F F^T]`` (``F`` the pair features of ``J_A`` and ``c``) by one Gauss-Hermite rule in the
``r`` dimensions of the row space of ``W1``: ``order^r`` nodes. Every entry involves at most four
units. Per unit ``a`` write the full feature ``J_a(y) = (c_a(y) y, g(u_a))`` ``(r + 1,)`` with
``c_a = v_a g'(u_a)``, ``u_a = w_a . y``. For a multiset of at most four units let ``B`` ``(r, q)`` be
an orthonormal basis of the span of their ``w``, ``s = B^T y ~ N(0, I_q)`` and ``p = y - B s``,
independent of ``s`` with covariance ``Pi = I - B B^T``. Then ``J_a = Bt z_a(s) + c_a(s) e(p)``
with ``z_a = (c_a s, g(u_a))`` ``(q + 1,)``, ``Bt = diag(B, 1)`` and ``e(p) = (p, 0)``, and Wick's
theorem on ``p`` (odd moments vanish, ``E[e e^T] = Pt = diag(Pi, 0)``) gives::

    E[J_a (x) J_b]              = Bt E[z_a z_b^T] Bt^T + E[c_a c_b] Pt
    E[J_a (x) J_b (x) J_c (x) J_d] = Bt^(x4) E[z_a (x) z_b (x) z_c (x) z_d]
                                   + sum over the 6 position pairs {t, t'}: Pt at (t, t') (x) Bt^(x2) E[c_t c_t' z (x) z] at the others
                                   + E[c_a c_b c_c c_d] (Pt (x) Pt, three pairings)

so only expectations over ``q <= 4`` dimensions remain: ``order^q`` nodes per multiset and
``C(K + 3, 4)`` multisets. :func:`unit_second_moments` and :func:`unit_fourth_moments` return what
``_second_moments`` and ``_fourth_moments`` of :mod:`~nearopt.dynamics.sgd_predict` return, in the
same coordinates (tested equal).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch

from ..gaussian.expectations import gauss_hermite

__all__ = ["axis_order", "MAX_AXIS_ORDER", "NODE_CHUNK", "UNIT_COST_FACTOR", "unit_fourth_moments", "unit_layout", "unit_second_moments", "unit_work"]

#: quadrature nodes evaluated at once
NODE_CHUNK = 1 << 17
#: a node of this route costs about this many times a multiply-add of the tensor rule (measured: ReLU
#: N_i = 20, N_h = 4, 3.0e10 counted operations in 82 s against the tensor rule's 8.0e10 in 40 s, same machine)
UNIT_COST_FACTOR = 5.0
#: most nodes per axis of the lower-dimensional rules (Gauss-Hermite stays accurate there)
MAX_AXIS_ORDER = 192


def axis_order(order: int, q: int) -> int:
    """Nodes per axis of the ``q``-dimensional rule of a route run at ``order``: ``order 2^(4 - q)`` up to :data:`MAX_AXIS_ORDER`.

    A multiset spanning fewer dimensions gets a finer rule at no more cost than the four-unit ones: the
    tensor rule in ``r`` dimensions sees a ridge function ``h(w . y)`` at ``order^r`` projected points, so a
    one-dimensional rule with ``order`` nodes alone would be coarser than it.
    """
    return max(order, min(MAX_AXIS_ORDER, order * 2 ** max(4 - q, 0)))


def unit_layout(K: int, r: int, first: bool, second: bool) -> np.ndarray:
    """Indices ``(size_a,)`` into the per-unit layout ``a (r + 1) + i`` of ``J_A``'s entries (``i = r``: ``g(u_a)``).

    ``J_A`` is ``(c_a y_i)`` unit-major when the first layer trains, then ``g(u_a)`` when the second does.
    """
    parts = []
    if first:
        parts.append((np.arange(K)[:, None] * (r + 1) + np.arange(r)[None, :]).ravel())
    if second:
        parts.append(np.arange(K) * (r + 1) + r)
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def _span(W: np.ndarray) -> np.ndarray:
    """Orthonormal basis ``(r, q)`` of the span of the rows of ``W`` ``(k, r)`` (rank by the SVD, rounding-level cut)."""
    if W.size == 0:
        return np.zeros((W.shape[1], 0))
    _, S, Vt = np.linalg.svd(W, full_matrices=False)
    q = int(np.count_nonzero(S > max(W.shape) * np.finfo(np.float64).eps * (S[0] if S.size else 0.0)))
    return Vt[:q].T


def _rule(order: int, q: int):
    """Tensor Gauss-Hermite rule for ``s ~ N(0, I_q)``: yields ``(nodes (c, q), weights (c,))`` chunks (one node for ``q = 0``)."""
    order = axis_order(order, q)
    x, w = gauss_hermite(order)
    total = order**q
    for start in range(0, total, NODE_CHUNK):
        idx = np.arange(start, min(total, start + NODE_CHUNK))
        digits = (idx[:, None] // order ** np.arange(q)[None, :]) % order
        yield torch.as_tensor(x[digits].reshape(idx.size, q)), torch.as_tensor(np.prod(w[digits], axis=1))


class _Group:
    """The distinct units of one multiset: their span ``B``, ``Bt = diag(B, 1)``, ``Pt = diag(I - B B^T, 0)``."""

    def __init__(self, activation, Wr: np.ndarray, v: np.ndarray, units: tuple[int, ...]):
        self.activation, self.units = activation, units
        self.Wd = Wr[list(units)]  # (k, r)
        self.vd = v[list(units)]
        r = Wr.shape[1]
        self.B = _span(self.Wd)
        q = self.B.shape[1]
        self.Bt = np.zeros((r + 1, q + 1))
        self.Bt[:r, :q] = self.B
        self.Bt[r, q] = 1.0
        self.Pt = np.zeros((r + 1, r + 1))
        self.Pt[:r, :r] = np.eye(r) - self.B @ self.B.T

    @property
    def q(self) -> int:
        return int(self.B.shape[1])

    def features(self, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``z`` ``(c, k, q + 1)`` and ``c`` ``(c, k)`` of the distinct units at span points ``s`` ``(c, q)``."""
        u = s @ torch.as_tensor(self.Wd @ self.B).T  # (c, k)
        c = self.activation.derivative(u) * torch.as_tensor(self.vd)
        g = self.activation(u)
        z = torch.cat([c[:, :, None] * s[:, None, :], g[:, :, None]], 2)
        return z, c


def unit_work(K: int, r: int, order: int, kA: int, kC: int) -> float:
    """Cost of :func:`unit_fourth_moments` (rules and contractions) from the sizes alone, in multiply-adds of the
    tensor rule (the rules' count times :data:`UNIT_COST_FACTOR`)."""
    rules = 0.0
    for ms in itertools.combinations_with_replacement(range(K), 4):
        q = min(len(set(ms)), r)
        rules += float(axis_order(order, q)) ** q * ((q + 1) ** 4 + 6 * (q + 1) ** 2)
    F = K * (r + 1)
    contract = 4.0 * F**4 * max(kA, 1) + 4.0 * F**2 * K**2 * max(kA, kC, 1) + 4.0 * K**4 * max(kC, 1)
    return UNIT_COST_FACTOR * rules + contract


def unit_second_moments(activation, Wr: np.ndarray, v: np.ndarray, first: bool, second: bool, with_c: bool,
                        order: int) -> tuple[np.ndarray, np.ndarray]:
    """``H_A = E[J_A J_A^T]`` ``(size_a, size_a)`` and ``E[c c^T]`` ``(size_c, size_c)`` by pairs of units."""
    K, r = Wr.shape
    F = K * (r + 1)
    full = np.zeros((K, r + 1, K, r + 1))
    cc = np.zeros((K, K))
    for a, b in itertools.combinations_with_replacement(range(K), 2):
        grp = _Group(activation, Wr, v, tuple(sorted({a, b})))
        ia, ib = grp.units.index(a), grp.units.index(b)
        zz = torch.zeros((grp.q + 1, grp.q + 1), dtype=torch.float64)
        c2 = torch.zeros((), dtype=torch.float64)
        for s, w in _rule(order, grp.q):
            z, c = grp.features(s)
            zz += (w[:, None] * z[:, ia]).T @ z[:, ib]
            c2 += (w * c[:, ia] * c[:, ib]).sum()
        blk = grp.Bt @ zz.numpy() @ grp.Bt.T + float(c2) * grp.Pt
        full[a, :, b, :], full[b, :, a, :] = blk, blk.T
        cc[a, b] = cc[b, a] = float(c2)
    sel = unit_layout(K, r, first, second)
    HA = full.reshape(F, F)[np.ix_(sel, sel)]
    return HA, (cc if with_c else np.zeros((0, 0)))


def _pairings(Pt: np.ndarray) -> np.ndarray:
    """``E[e (x) e (x) e (x) e]`` ``(n,)*4`` for ``E[e e^T] = Pt``: the three Wick pairings."""
    return (np.einsum("ab,cd->abcd", Pt, Pt) + np.einsum("ac,bd->abcd", Pt, Pt) + np.einsum("ad,bc->abcd", Pt, Pt))


def _multiset_moments(grp: _Group, pos: tuple[int, ...], order: int):
    """For positions ``pos`` (4 indices into ``grp.units``): ``E[z (x4)]`` ``(q+1,)*4``, ``E[c_t c_t' z z]`` per position pair, ``E[c c c c]``."""
    n = grp.q + 1
    Z4 = torch.zeros((n * n, n * n), dtype=torch.float64)
    pairs = list(itertools.combinations(range(4), 2))
    Z2 = {pr: torch.zeros((n, n), dtype=torch.float64) for pr in pairs}
    Z0 = torch.zeros((), dtype=torch.float64)
    for s, w in _rule(order, grp.q):
        z, c = grp.features(s)
        zs = [z[:, p] for p in pos]
        cs = [c[:, p] for p in pos]
        left = (w[:, None, None] * zs[0][:, :, None] * zs[1][:, None, :]).reshape(-1, n * n)
        Z4 += left.T @ (zs[2][:, :, None] * zs[3][:, None, :]).reshape(-1, n * n)
        for t, u in pairs:
            o1, o2 = (i for i in range(4) if i not in (t, u))
            Z2[(t, u)] += (w * cs[t] * cs[u])[:, None].mul(zs[o1]).T @ zs[o2]
        Z0 += (w * cs[0] * cs[1] * cs[2] * cs[3]).sum()
    return Z4.numpy().reshape(n, n, n, n), {k: x.numpy() for k, x in Z2.items()}, float(Z0)


def _quadruple_block(grp: _Group, Z4: np.ndarray, Z2: dict, Z0: float) -> np.ndarray:
    """``E[J_a (x) J_b (x) J_c (x) J_d]`` ``(r+1,)*4`` from the span moments (module docstring)."""
    Bt, Pt = grp.Bt, grp.Pt
    out = np.einsum("ai,bj,ck,dl,ijkl->abcd", Bt, Bt, Bt, Bt, Z4, optimize=True)
    for (t, u), zz in Z2.items():
        o1, o2 = (i for i in range(4) if i not in (t, u))
        inner = Bt @ zz @ Bt.T  # axes (o1, o2)
        term = np.einsum("ab,cd->abcd", Pt, inner)  # axes (t, u, o1, o2)
        out += np.transpose(term, np.argsort([t, u, o1, o2]))
    return out + Z0 * _pairings(Pt)


def unit_fourth_moments(activation, Wr: np.ndarray, v: np.ndarray, first: bool, second: bool, m: int,
                        UA: np.ndarray, UC: np.ndarray, order: int) -> np.ndarray:
    """``M4`` ``(D, D)`` in the coordinates ``(vech_w(S_AA), sqrt(m) vech_w(C))`` of the bases ``UA`` ``(size_a, kA)``, ``UC`` ``(size_c, kC)``.

    What :mod:`~nearopt.dynamics.sgd_predict`'s tensor rule computes, by multisets of at most four units.
    """
    K, r = Wr.shape
    F = K * (r + 1)
    sel = unit_layout(K, r, first, second)
    T4 = np.zeros((K, r + 1) * 4)
    with_c = UC.shape[1] > 0
    TAC = np.zeros((K, r + 1, K, r + 1, K, K)) if with_c else None
    TC = np.zeros((K,) * 4) if with_c else None
    for ms in itertools.combinations_with_replacement(range(K), 4):
        grp = _Group(activation, Wr, v, tuple(sorted(set(ms))))
        pos = tuple(grp.units.index(a) for a in ms)
        Z4, Z2, Z0 = _multiset_moments(grp, pos, order)
        blk = _quadruple_block(grp, Z4, Z2, Z0)
        for perm in set(itertools.permutations(range(4))):
            b = tuple(ms[i] for i in perm)
            T4[b[0], :, b[1], :, b[2], :, b[3], :] = np.transpose(blk, perm)
        if with_c:
            assert TAC is not None and TC is not None
            for perm in set(itertools.permutations(range(4))):
                b = tuple(ms[i] for i in perm)
                # E[J_b0 J_b1 c_b2 c_b3] = Bt E[c_t c_u z z] Bt^T + E[cccc] Pt, (t, u) = positions perm[2:] of the multiset
                t, u = sorted(perm[2:])
                zz = Z2[(t, u)] if perm[0] < perm[1] else Z2[(t, u)].T
                TAC[b[0], :, b[1], :, b[2], b[3]] = grp.Bt @ zz @ grp.Bt.T + Z0 * grp.Pt
                TC[b] = Z0
    UAf = np.zeros((F, UA.shape[1]))
    UAf[sel] = UA
    X = _contract(T4.reshape(F, F, F, F), (UAf, UAf, UAf, UAf))
    ia, ja = np.triu_indices(UA.shape[1])
    sa = np.where(ia == ja, 1.0, math.sqrt(2.0))
    AA = X[ia, ja][:, ia, ja] * np.outer(sa, sa)
    if not with_c:
        return 0.5 * (AA + AA.T)
    assert TAC is not None and TC is not None
    ic, jc = np.triu_indices(UC.shape[1])
    sc = np.where(ic == jc, 1.0, math.sqrt(2.0))
    Y = _contract(TAC.reshape(F, F, K, K), (UAf, UAf, UC, UC))
    AC = math.sqrt(m) * Y[ia, ja][:, ic, jc] * np.outer(sa, sc)
    Zc = _contract(TC, (UC, UC, UC, UC))
    CC = (m + 2.0) * Zc[ic, jc][:, ic, jc] * np.outer(sc, sc)
    out = np.block([[AA, AC], [AC.T, CC]])
    return 0.5 * (out + out.T)


def _contract(T: np.ndarray, Us: tuple[np.ndarray, ...]) -> np.ndarray:
    """``T`` ``(n1, n2, n3, n4)`` with each axis ``i`` contracted against ``Us[i]`` ``(n_i, k_i)``: ``(k1, k2, k3, k4)``."""
    out = T
    for U in Us:  # contract the leading axis and move the new one to the back
        out = np.tensordot(out, U, axes=([0], [0]))
    return out
