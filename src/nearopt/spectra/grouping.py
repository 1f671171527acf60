"""One clustering of values and one grouping of points, with their tolerances named once.

:func:`cluster_labels` is the gap rule: sort the values, and a gap between neighbours larger
than ``tol`` starts a new cluster (so a cluster may span more than ``tol`` through a chain of
small gaps, and the labels do not depend on the order of the input). :func:`clusters` and
:func:`eigenvalue_clusters` (relative to ``max|lambda|``) give each cluster's smallest value and
its size; multiplicity patterns of spectra, the stabiliser of a square first layer and the
spectral SGD model's merged eigenvalues all use it.

:func:`first_match_groups` is the greedy grouping: items, in a given order, join the first
group whose representative (its first item) they match, else start a group. Critical points
form families this way, by :func:`close_losses` (to ``max(LOSS_RTOL |L|, floor)``) and
:func:`close_spectra` (``SPECTRUM_RTOL`` relative plus ``SPECTRUM_ATOL max(1, |lambda|_max)``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

__all__ = [
    "CLUSTER_RTOL",
    "LOSS_RTOL",
    "SPECTRUM_ATOL",
    "SPECTRUM_RTOL",
    "close_losses",
    "close_spectra",
    "cluster_labels",
    "clusters",
    "eigenvalue_clusters",
    "first_match_groups",
]

#: eigenvalues closer than ``CLUSTER_RTOL * max|lambda|`` count as one value of a multiplicity pattern
CLUSTER_RTOL = 1e-7
#: two points of one family have losses equal to this (relative to the representative's), or to the floor
LOSS_RTOL = 1e-7
#: ... and eigenvalues equal to ``SPECTRUM_RTOL |lambda| + SPECTRUM_ATOL max(1, |lambda|_max)``
SPECTRUM_RTOL = 1e-5
SPECTRUM_ATOL = 1e-6


def cluster_labels(values, tol: float) -> np.ndarray:
    """Cluster index of every entry of ``values`` (any shape ``S``; returns ``S`` int64).

    Sorted values whose gap exceeds ``tol`` fall in different clusters; clusters are numbered
    ``0, 1, ...`` in increasing value. ``tol >= 0``; ``nan`` entries are not allowed.
    """
    arr = np.asarray(values, dtype=np.float64)
    flat = arr.ravel()
    order = np.argsort(flat, kind="stable")
    cuts = np.concatenate([[0], np.cumsum(np.diff(flat[order]) > tol)]) if flat.size else np.zeros(0, dtype=np.int64)
    lab = np.empty(flat.size, dtype=np.int64)
    lab[order] = cuts
    return lab.reshape(arr.shape)


def clusters(values, tol: float, weights=None) -> tuple[np.ndarray, np.ndarray]:
    """Clusters of ``values`` ``(n,)`` by :func:`cluster_labels`: the smallest value ``(c,)`` and the size ``(c,)`` of each.

    With ``weights`` ``(n,)`` the sizes are the summed weights (float) instead of the counts.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    lab = cluster_labels(v, tol)
    c = int(lab.max()) + 1 if v.size else 0
    first = np.full(c, np.inf)
    np.minimum.at(first, lab, v)
    if weights is None:
        return first, np.bincount(lab, minlength=c).astype(np.int64)
    return first, np.bincount(lab, weights=np.asarray(weights, dtype=np.float64).ravel(), minlength=c)


def eigenvalue_clusters(eigenvalues, rtol: float = CLUSTER_RTOL) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values of a spectrum ``(n,)`` (gaps ``> rtol max|lambda|`` separate them) and their counts, ascending."""
    lam = np.asarray(eigenvalues, dtype=np.float64).ravel()
    return clusters(lam, rtol * max(float(np.max(np.abs(lam), initial=0.0)), 1e-300))


def first_match_groups(order: Iterable[int], matches: Callable[[np.ndarray, int], np.ndarray]) -> list[list[int]]:
    """Greedy grouping: each item of ``order`` joins the first group whose representative it matches, else starts one.

    ``matches(reps, i)`` gets the representatives so far ``(r,)`` (each group's first item, in
    order of creation) and one item; it returns ``(r,)`` booleans. Groups come in order of creation.
    """
    reps: list[int] = []
    groups: list[list[int]] = []
    for i in order:
        i = int(i)
        if reps:
            hit = np.flatnonzero(matches(np.asarray(reps), i))
            if hit.size:
                groups[int(hit[0])].append(i)
                continue
        reps.append(i)
        groups.append([i])
    return groups


def close_losses(reference, loss: float, floor: float, rtol: float = LOSS_RTOL) -> np.ndarray:
    """``|reference - loss| <= max(rtol |reference|, floor)`` for representatives' losses ``reference`` ``(r,)``."""
    ref = np.asarray(reference, dtype=np.float64)
    return np.abs(ref - loss) <= np.maximum(rtol * np.abs(ref), floor)


def close_spectra(reference, eigenvalues) -> np.ndarray:
    """Whether each spectrum in ``reference`` ``(r, n)`` equals ``eigenvalues`` ``(n,)`` to
    ``SPECTRUM_RTOL |lambda| + SPECTRUM_ATOL max(1, max|reference row|)``; ``(r,)``. Spectra of another length never match."""
    ref = np.asarray(reference, dtype=np.float64)
    lam = np.asarray(eigenvalues, dtype=np.float64).ravel()
    if ref.ndim != 2 or ref.shape[1] != lam.size:
        return np.zeros(ref.shape[0] if ref.ndim else 0, dtype=bool)
    top = np.maximum(1.0, np.abs(ref).max(axis=1, initial=0.0))
    return np.all(np.abs(ref - lam) <= SPECTRUM_ATOL * top[:, None] + SPECTRUM_RTOL * np.abs(lam), axis=1)
