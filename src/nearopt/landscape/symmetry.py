"""Symmetry of a critical point of the orthonormal committee: its stabiliser in ``Delta S_k`` (colour refinement)
and the eigenvalue multiplicities that stabiliser forces (Young's rule).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import scipy.optimize
import scipy.stats

from ..model.problem import Problem
from ..spectra.grouping import CLUSTER_RTOL, cluster_labels, eigenvalue_clusters
from .critical import CriticalPoint

__all__ = ["aligned", "ENTRY_TOL", "merges_into", "stabiliser", "symmetric_committee", "symmetry_analysis", "young_multiplicities"]

#: entries of a representative closer than this are "equal" in the stabiliser analysis
ENTRY_TOL = 1e-6


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
