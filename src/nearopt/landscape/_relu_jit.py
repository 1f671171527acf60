"""Gradient descent of one ReLU student on the exact population loss, compiled by numba (``pip install nearopt[fast]``).

The formulas are those of the ReLU's closed form (:func:`nearopt.model.pair_terms.unit_gap`,
:func:`~nearopt.model.pair_terms.relu_angles`, :func:`~nearopt.model.pair_terms.relu_pair`,
:func:`~nearopt.model.pair_terms.relu_kernel`) and the fold of :mod:`nearopt.gaussian.kernels`
(:func:`~nearopt.gaussian.kernels.unit_gradient`), the same code objects compiled on floats
(:data:`SCALAR_COMPILED`: :data:`nearopt.gaussian.kernels.SCALAR` compiled); this module only orders the sums.
With unit rows ``w^_a`` of the student ``W`` ``(K, d)``, teacher unit rows ``t^_j`` ``(M, d)``,
``bn_j = beta_j |omega_j|`` and ``bw_j = beta_j omega_j`` (``beta = [v; -u]``, ``omega = [w; t]``), the pair
terms of unit rows scaled by homogeneity::

    c_aj = w^_a . omega^_j,   (A^, B)_aj = relu_pair(*relu_angles(c_aj, unit_gap(c_aj)), 1, 1)   (self pairs: c = 1)
    a_a = (A^ bn)_a / |w_a|,  P_a = (B bw)_a
    dL/dw_a = unit_gradient(w_a, a_a, P_a, v_a),    dL/dv_a = relu_kernel(a_a, w_a . P_a, |w_a|^2)

The unit-row terms are symmetric: each student-student pair is taken once. When the teacher's unit rows
are the standard basis (``t^_j = e_j``, ``M = d``: the committee machines of Safran & Shamir), the
teacher cosines are the entries of ``W^`` and the teacher part of ``B bw`` is diagonal, so only the
student blocks take matrix products.

One run's whole descent is one compiled call: a step costs its arithmetic, with no per-step
dispatch (a batched torch step of a few runs is bound by the dispatch of its ~25 operations).
The compiled code is cached on disk (numba's ``cache=True``). numba keys that cache on this file
and on each function's own bytecode and closure, not on the functions it calls, so
:func:`gradient` and :func:`descend_run` are made with a digest of :mod:`nearopt.gaussian.kernels` and
:mod:`nearopt.model.pair_terms` as a closure variable (:func:`_keyed`): a change of a formula compiles them afresh.
"""

from __future__ import annotations

import hashlib
import math
import types
from collections.abc import Callable
from pathlib import Path

import numba
import numpy as np

from ..gaussian import kernels
from ..model import pair_terms
from ..tolerances import TINY

__all__ = ["descend_run", "gradient", "KERNELS_DIGEST", "SCALAR_COMPILED", "workspace"]

#: run outcomes of :func:`descend_run`, in the order of ``nearopt.landscape.descent.STATUSES``
CONVERGED, UNCONVERGED, DIVERGED = 0, 1, 2

#: the cache key's share of the formulas' modules (module docstring)
KERNELS_DIGEST = hashlib.sha256(b"".join(Path(str(m.__file__)).read_bytes() for m in (kernels, pair_terms))).hexdigest()

#: :data:`nearopt.gaussian.kernels.SCALAR` for numba: its Python functions compiled
SCALAR_COMPILED = {name: numba.njit(inline="always")(f) if isinstance(f, types.FunctionType) else f for name, f in kernels.SCALAR.items()}
_unit_gap, _relu_angles, _relu_pair, _relu_kernel = (numba.njit(inline="always")(kernels.bind(f, SCALAR_COMPILED)) for f in (
    pair_terms.unit_gap, pair_terms.relu_angles, pair_terms.relu_pair, pair_terms.relu_kernel))
_unit_gradient = numba.njit(inline="always")(kernels.unit_gradient)


@numba.njit(inline="always")
def _pair(B, A, a, j):
    """``B[a, j], A[a, j] <- B, A^`` of the unit-row pair with cosine ``c = B[a, j]``. A cosine an ulp beyond
    ``+-1`` needs no clipping: its gap is snapped to 0, where the angle is exactly ``0`` or ``pi``."""
    c = B[a, j]
    theta, S = _relu_angles(c, _unit_gap(c))
    A[a, j], B[a, j] = _relu_pair(theta, S, 1.0, 1.0)


def _keyed(make: Callable[[str], Callable]) -> Callable:
    """``make(KERNELS_DIGEST)`` compiled with ``cache=True``: the function ``make`` defines reads ``digest``, so the
    digest is in its closure, hence in numba's cache key."""
    return numba.njit(cache=True)(make(KERNELS_DIGEST))


def _gradient(digest: str) -> Callable:
    """:func:`gradient`, made for :func:`_keyed`."""

    def gradient(W, v, That, bnT, bwT, basis, gW, gv, work, want_v):
        """``dL/dW`` into ``gW`` ``(K, d)`` and, if ``want_v``, ``dL/dv`` into ``gv`` ``(K,)``.

        ``That`` ``(M, d)``, ``bnT`` ``(M,)``, ``bwT`` ``(M, d)``: the teacher's unit rows and folded terms;
        ``basis``: ``That`` is the identity (``M = d``). ``work``: the arrays of :func:`workspace`.
        """
        if len(digest) == 0:  # the digest keys the on-disk cache (_keyed); never empty
            raise ValueError("no digest")
        Wh, bw, bn, nW, Bs, As, Bt, At, P, Pt, sA = work
        K, d = W.shape
        M = That.shape[0]
        for a in range(K):
            s = 0.0
            for i in range(d):
                s += W[a, i] * W[a, i]
            nW[a] = math.sqrt(s)
            inv = 1.0 / max(nW[a], TINY)
            for i in range(d):
                Wh[a, i] = W[a, i] * inv
                bw[a, i] = v[a] * W[a, i]
            bn[a] = v[a] * nW[a]
        np.dot(Wh, Wh.T, Bs)  # cosines, overwritten by the pair terms
        if basis:
            Bt[:, :] = Wh
        else:
            np.dot(Wh, That.T, Bt)
        for a in range(K):
            Bs[a, a] = 1.0  # a unit with itself: c = 1 exactly
            _pair(Bs, As, a, a)
            for b in range(a + 1, K):
                _pair(Bs, As, a, b)
                Bs[b, a], As[b, a] = Bs[a, b], As[a, b]
            for j in range(M):
                _pair(Bt, At, a, j)
        np.dot(Bs, bw, P)
        if basis:
            for a in range(K):
                for i in range(d):
                    P[a, i] += Bt[a, i] * bwT[i, i]
        else:
            np.dot(Bt, bwT, Pt)
            P += Pt
        np.dot(As, bn, sA)
        for a in range(K):
            for j in range(M):
                sA[a] += At[a, j] * bnT[j]
        for a in range(K):
            a_sum = sA[a] * (1.0 / max(nW[a], TINY))
            wp = 0.0
            for i in range(d):
                gW[a, i] = _unit_gradient(W[a, i], a_sum, P[a, i], v[a])
                wp += W[a, i] * P[a, i]
            if want_v:
                gv[a] = _relu_kernel(a_sum, wp, nW[a] * nW[a])
    return gradient


gradient = _keyed(_gradient)


@numba.njit
def workspace(K, M, d):
    """Work arrays of :func:`gradient`: ``W^``, ``bw`` ``(K, d)``, ``bn``, ``|w|`` ``(K,)``, the student pair terms
    ``B``, ``A^`` ``(K, K)`` and the teacher ones ``(K, M)``, ``B bw`` and its teacher part ``(K, d)``, ``A^ bn`` ``(K,)``."""
    return (np.empty((K, d)), np.empty((K, d)), np.empty(K), np.empty(K), np.empty((K, K)), np.empty((K, K)),
            np.empty((K, M)), np.empty((K, M)), np.empty((K, d)), np.empty((K, d)), np.empty(K))


def _descend_run(digest: str) -> Callable:
    """:func:`descend_run`, made for :func:`_keyed`."""

    def descend_run(W, v, That, bnT, bwT, basis, lr, gtol, max_steps, train_w, train_v, bound):
        """Fixed-step descent of one student ``W`` ``(K, d)``, ``v`` ``(K,)`` in place; returns ``(steps, outcome, largest per-unit gradient)``.

        The loop of :func:`nearopt.landscape.descent.descend`: at each step the gradient, then stop as
        :data:`DIVERGED` (a non-finite gradient, or an entry of ``W``, ``v`` beyond ``bound``),
        :data:`CONVERGED` (every unit's gradient norm over its trained entries ``<= gtol``) or
        :data:`UNCONVERGED` (``max_steps`` steps taken), else step by ``lr``.
        """
        if len(digest) == 0:  # the digest keys the on-disk cache (_keyed); never empty
            raise ValueError("no digest")
        K, d = W.shape
        gW, gv = np.zeros((K, d)), np.zeros(K)
        work = workspace(K, That.shape[0], d)
        step = 0
        while True:
            gradient(W, v, That, bnT, bwT, basis, gW, gv, work, train_v)
            gmax, big = 0.0, 0.0
            for a in range(K):
                s = 0.0
                if train_w:
                    for i in range(d):
                        s += gW[a, i] * gW[a, i]
                if train_v:
                    s += gv[a] * gv[a]
                gmax = max(gmax, math.sqrt(s))
                big = max(big, abs(v[a]))
                for i in range(d):
                    big = max(big, abs(W[a, i]))
            if not math.isfinite(gmax) or not big <= bound:
                return step, DIVERGED, gmax
            if gmax <= gtol:
                return step, CONVERGED, gmax
            if step >= max_steps:
                return step, UNCONVERGED, gmax
            if train_w:
                for a in range(K):
                    for i in range(d):
                        W[a, i] -= lr * gW[a, i]
            if train_v:
                for a in range(K):
                    v[a] -= lr * gv[a]
            step += 1

    return descend_run


descend_run = _keyed(_descend_run)
