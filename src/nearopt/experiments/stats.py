"""General statistics used to compare spectra: KS distances, teacher bootstrap, permutation tests.

Eigenvalues of one teacher are not independent (they share the teacher's weights
and repel each other), so the textbook KS p-values do not apply to pooled
spectra. Noise is measured at the level of the independent unit, the teacher:
each teacher ``t`` contributes the empirical cdf of its own eigenvalues on a
common grid (:func:`teacher_ecdf`), and resampling or permuting acts on those
rows. Both resampling schemes are written as matrix products of resampling
weights with the ``(T, G)`` ecdf rows: ``scipy.stats.bootstrap`` gives confidence
intervals of a statistic, not the null quantile of ``sup |D* - D|``, and
``scipy.stats.permutation_test`` materialises every permuted sample (memory
``O(B T G)``), far beyond a laptop at the sizes of the linear-spectrum study.
The tests hold :func:`permutation_sup_test` against ``scipy.stats.permutation_test``
on small inputs.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..errors import NearoptError, require_positive_int

__all__ = ["BOOTSTRAP", "bootstrap_sup_noise", "Cdf", "GRID", "ks_distance", "permutation_sup_test", "PERMUTATIONS", "quantile_grid", "teacher_ecdf"]

#: grid points (quantiles of the pooled values) on which teacher ecdfs are compared
GRID = 2048
#: teacher-bootstrap resamples in :func:`bootstrap_sup_noise`
BOOTSTRAP = 300
#: permutations in :func:`permutation_sup_test`
PERMUTATIONS = 1000

Cdf = Callable[[np.ndarray], np.ndarray]


def ks_distance(x_sorted: np.ndarray, cdf: Cdf, cdf_left: Cdf | None = None) -> float:
    """One-sample KS distance ``sup |F_n - F|`` of sorted data ``(n,)`` against a vectorised cdf.

    Ties are handled exactly: at each distinct value ``u`` both the right limits
    (``F_n(u)`` vs ``F(u)``) and the left limits (``F_n(u-)`` vs ``cdf_left(u)``,
    default ``cdf``, i.e. a continuous model) are compared, so a model with atoms
    at the data's tied values is not penalised for them.
    """
    x = np.asarray(x_sorted, dtype=np.float64)
    if x.size == 0 or not np.all(np.isfinite(x)):
        raise NearoptError("KS distance needs a non-empty sample of finite values")
    u, counts = np.unique(x, return_counts=True)
    right = np.cumsum(counts) / x.size
    left = right - counts / x.size
    F = cdf(u)
    F_left = F if cdf_left is None else cdf_left(u)
    return float(max(np.max(np.abs(right - F)), np.max(np.abs(F_left - left))))


def quantile_grid(values: np.ndarray, points: int = GRID) -> np.ndarray:
    """Distinct quantiles of ``values`` (any shape) at ``points`` evenly spaced levels: ``(G,)``, ``G <= points``."""
    return np.unique(np.quantile(np.asarray(values, dtype=np.float64), np.linspace(0, 1, require_positive_int(points, "grid points"))))


def teacher_ecdf(E: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """``C[t, g]`` = fraction of row ``t``'s values ``<= grid[g]``: ``E`` ``(T, n)`` -> ``(T, G)``."""
    E = np.atleast_2d(np.asarray(E, dtype=np.float64))
    return np.stack([np.searchsorted(row, grid, side="right") for row in np.sort(E, axis=1)]) / E.shape[1]


def bootstrap_sup_noise(E: np.ndarray, model_rows: np.ndarray | None, grid: np.ndarray, seed: int, *, resamples: int = BOOTSTRAP, level: float = 0.95) -> float:
    """``level`` quantile of ``sup_grid |D* - D|`` over a teacher bootstrap, ``D = F_n - F_model``.

    ``E`` ``(T, n)``: ``n`` values of each of ``T`` teachers; ``model_rows``
    ``(T, G)``: per-teacher model cdf on ``grid`` (a conditional law) or ``None``
    for a fixed model (then only ``F_n`` is resampled). The distance of the data
    to its model is within sampling noise when it is below this value.
    """
    C = teacher_ecdf(E, grid)
    D = C - (0.0 if model_rows is None else model_rows)
    T = C.shape[0]
    rng = np.random.default_rng([seed, 0xB0])
    Wt = rng.multinomial(T, np.full(T, 1.0 / T), size=require_positive_int(resamples, "bootstrap resamples")) / T  # (B, T)
    sups = np.max(np.abs(Wt @ D - D.mean(axis=0)), axis=1)
    return float(np.quantile(sups, level))


def permutation_sup_test(E1: np.ndarray, E2: np.ndarray, seed: int, *, permutations: int = PERMUTATIONS) -> tuple[float, float]:
    """Two-sample distance ``sup |F1 - F2|`` of pooled spectra and its teacher-permutation p-value.

    ``E1`` ``(T1, n)``, ``E2`` ``(T2, n)``; teachers (rows) are exchanged between
    the groups; one-sided (large distances are evidence of a difference), p-value
    ``(1 + #{null >= observed}) / (1 + permutations)`` as in
    :func:`scipy.stats.permutation_test`. Each permutation is a row of signed
    group weights, so all of them cost one ``(B, T) @ (T, G)`` product; SciPy's
    vectorised test materialises ``(B, G, T)`` resampled arrays instead (61 GiB
    for the linear-spectrum experiment), which is why it is not used here.
    """
    grid = quantile_grid(np.concatenate([np.ravel(E1), np.ravel(E2)]))
    C = np.vstack([teacher_ecdf(E1, grid), teacher_ecdf(E2, grid)])
    n1, T = np.atleast_2d(E1).shape[0], C.shape[0]
    stat = float(np.max(np.abs(C[:n1].mean(0) - C[n1:].mean(0))))
    B = require_positive_int(permutations, "permutations")
    rng = np.random.default_rng([seed, 0xBE])
    W = np.empty((B, T))
    for b in range(B):
        perm = rng.permutation(T)
        W[b, perm[:n1]] = 1.0 / n1
        W[b, perm[n1:]] = -1.0 / (T - n1)
    null = np.max(np.abs(W @ C), axis=1)
    return stat, float((1 + np.sum(null >= stat)) / (1 + B))
