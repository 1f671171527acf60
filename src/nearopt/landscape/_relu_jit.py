"""Gradient descent of one ReLU student on the exact population loss, compiled by numba (``pip install nearopt[fast]``).

The formulas are those of :mod:`nearopt.gaussian.kernels` (:func:`~nearopt.gaussian.kernels.relu_angles`,
:func:`~nearopt.gaussian.kernels.relu_sum`, :func:`~nearopt.gaussian.kernels.relu_unit_gradient`), the same code
objects compiled on floats (:data:`nearopt.gaussian.kernels.SCALAR`); this module only orders the sums.
With unit rows ``w^_a`` of the student ``W`` ``(K, d)``, teacher unit rows ``t^_j`` ``(M, d)``,
``bn_j = beta_j |omega_j|`` and ``bw_j = beta_j omega_j`` (``beta = [v; -u]``, ``omega = [w; t]``)::

    c_aj = w^_a . omega^_j,   (Theta_aj, S_aj) = relu_angles(c_aj)   (self pairs: c = 1)
    P = Theta bw   (K, d),    s1 = S bn   (K,)
    dL/dw_a = relu_unit_gradient(w_a, s1_a / |w_a|, P_a, v_a),    dL/dv_a = relu_sum(|w_a|, s1_a, w_a . P_a)

Each student-student angle is taken once for its pair. When the teacher's unit rows are the
standard basis (``t^_j = e_j``, ``M = d``: the committee machines of Safran & Shamir), the
teacher cosines are the entries of ``W^`` and the teacher part of ``P`` is diagonal, so only the
student blocks take matrix products.

One run's whole descent is one compiled call: a step costs its arithmetic, with no per-step
dispatch (a batched torch step of a few runs is bound by the dispatch of its ~25 operations).
The compiled code is cached on disk (numba's ``cache=True``). numba keys that cache on this file
and on each function's own bytecode and closure, not on the functions it calls, so
:func:`gradient` and :func:`descend_run` are made with a digest of :mod:`nearopt.gaussian.kernels` as a
closure variable (:func:`_keyed`): a change of a formula compiles them afresh.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from pathlib import Path

import numba
import numpy as np

#: run outcomes of :func:`descend_run`, in the order of ``nearopt.landscape.descent.STATUSES``
from ..gaussian import kernels
from ..tolerances import TINY

__all__ = ["descend_run", "gradient", "KERNELS_DIGEST", "workspace"]

#: run outcomes of :func:`descend_run`, in the order of ``nearopt.landscape.descent.STATUSES``
CONVERGED, UNCONVERGED, DIVERGED = 0, 1, 2

#: the cache key's share of :mod:`nearopt.gaussian.kernels` (module docstring)
KERNELS_DIGEST = hashlib.sha256(Path(kernels.__file__).read_bytes()).hexdigest()

_relu_angles = numba.njit(kernels.bind(kernels.relu_angles, kernels.SCALAR))
_relu_sum = numba.njit(kernels.bind(kernels.relu_sum, kernels.SCALAR))
_relu_unit_gradient = numba.njit(kernels.bind(kernels.relu_unit_gradient, kernels.SCALAR))


@numba.njit
def _angles(C, S, a, j):
    """``C[a, j], S[a, j] <- relu_angles(c)`` for the cosine ``c = C[a, j]`` (clipped to ``[-1, 1]``)."""
    C[a, j], S[a, j] = _relu_angles(min(1.0, max(-1.0, C[a, j])))


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
        Wh, bw, bn, nW, Cs, Ss, Ct, St, P, Pt, s1 = work
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
        np.dot(Wh, Wh.T, Cs)
        if basis:
            Ct[:, :] = Wh
        else:
            np.dot(Wh, That.T, Ct)
        for a in range(K):
            Cs[a, a] = 1.0  # a unit with itself: c = 1 exactly
            _angles(Cs, Ss, a, a)
            for b in range(a + 1, K):
                _angles(Cs, Ss, a, b)
                Cs[b, a] = Cs[a, b]
                Ss[b, a] = Ss[a, b]
            for j in range(M):
                _angles(Ct, St, a, j)
        np.dot(Cs, bw, P)
        if basis:
            for a in range(K):
                for i in range(d):
                    P[a, i] += Ct[a, i] * bwT[i, i]
        else:
            np.dot(Ct, bwT, Pt)
            P += Pt
        np.dot(Ss, bn, s1)
        for a in range(K):
            for j in range(M):
                s1[a] += St[a, j] * bnT[j]
        for a in range(K):
            s1_inv = s1[a] * (1.0 / max(nW[a], TINY))
            for i in range(d):
                gW[a, i] = _relu_unit_gradient(W[a, i], s1_inv, P[a, i], v[a])
            if want_v:
                dot = 0.0
                for i in range(d):
                    dot += W[a, i] * P[a, i]
                gv[a] = _relu_sum(nW[a], s1[a], dot)
    return gradient


gradient = _keyed(_gradient)


@numba.njit
def workspace(K, M, d):
    """Work arrays of :func:`gradient`: ``W^``, ``bw`` ``(K, d)``, ``bn``, ``|w|`` ``(K,)``, student and teacher
    angle blocks ``(K, K)``, ``(K, M)`` twice, ``P`` and its teacher part ``(K, d)``, ``s1`` ``(K,)``."""
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
