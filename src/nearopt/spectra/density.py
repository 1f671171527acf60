"""Spectral density of a symmetric operator by stochastic Lanczos quadrature (SLQ), with error bars.

For a probe ``q`` (``|q| = 1``) Lanczos gives a tridiagonal whose eigenpairs are
the nodes ``theta_j`` and weights ``tau_j^2`` of the Gauss quadrature of the
probe's spectral measure ``mu_q = sum_i (u_i . q)^2 delta(lambda - lambda_i)``:
``sum_j tau_j^2 theta_j^k = q^T H^k q`` exactly for ``k <= 2 steps - 1``. For
Rademacher (or Gaussian) probes ``E[mu_q] = (1/P) sum_i delta(lambda - lambda_i)``,
the spectral density. Averaging ``n`` probes estimates it; the probes' spread
gives the error bar (standard error ``std / sqrt(n)``), for the smoothed density,
its CDF and its moments alike.

All probes run together (one block product per Lanczos step, float64 tridiagonals;
:func:`~nearopt.spectra.lanczos.lanczos_tridiagonals`). Full reorthogonalisation
when the basis fits in ``REORTH_BYTES``, else none (the quadrature then belongs
to a nearby matrix; Greenbaum 1989).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.sparse.linalg import LinearOperator

from ..errors import NearoptError, require_positive_finite, require_positive_int
from ..tolerances import EPS
from .lanczos import gauss_quadrature, lanczos_tridiagonals

__all__ = ["make_probes", "PROBES", "REORTH_BYTES", "slq", "spectral_density", "SpectralDensity"]

#: largest Lanczos basis (bytes) kept for full reorthogonalisation under ``reorth="auto"``
REORTH_BYTES = 1 << 30
PROBES = ("rademacher", "gaussian")


@dataclass
class SpectralDensity:
    """SLQ estimate of the spectral density of a ``(P, P)`` operator.

    ``nodes``/``weights`` ``(n, steps)``: probe ``i``'s Gauss quadrature (NaN / 0 past
    its length; weights of a probe sum to 1). ``P`` the operator size; ``probe``,
    ``steps``, ``reorth`` how it was computed; ``products`` operator-vector products.
    """

    nodes: np.ndarray
    weights: np.ndarray
    P: int
    probe: str
    steps: int
    reorth: bool
    products: int
    seconds: float

    @property
    def n_probes(self) -> int:
        return int(self.nodes.shape[0])

    @property
    def support(self) -> tuple[float, float]:
        """Smallest and largest node over all probes (Ritz values: inside the spectrum's hull)."""
        return float(np.nanmin(self.nodes)), float(np.nanmax(self.nodes))

    def _spread(self, per_probe: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean over probes (axis 0) and its standard error (``std / sqrt(n)``; 0 for one probe)."""
        n = per_probe.shape[0]
        err = per_probe.std(axis=0, ddof=1) / np.sqrt(n) if n > 1 else np.zeros(per_probe.shape[1:])
        return per_probe.mean(axis=0), err

    def moments(self, kmax: int) -> tuple[np.ndarray, np.ndarray]:
        """Estimates of ``tr(H^k) / P`` for ``k = 0..kmax`` ``(kmax + 1,)`` and their standard errors.

        Exact per probe (``q^T H^k q``) for ``k <= 2 steps - 1``.
        """
        ok = self.weights > 0
        x = np.where(ok, self.nodes, 0.0)
        per = np.stack([(self.weights * x**k).sum(axis=1) for k in range(kmax + 1)], axis=1)
        return self._spread(per)

    def cdf(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Estimated spectral CDF ``#{lambda_i <= x} / P`` at ``x`` and its standard error."""
        x = np.atleast_1d(np.asarray(x, dtype=np.float64))
        ok = self.weights > 0
        per = np.stack([(w[o][None, :] * (t[o][None, :] <= x[:, None])).sum(axis=1) for t, w, o in zip(self.nodes, self.weights, ok)])
        return self._spread(per)

    def default_sigma(self) -> float:
        lo, hi = self.support
        return 0.01 * max(hi - lo, abs(hi), 1e-300)

    def density(self, grid: np.ndarray | None = None, sigma: float | None = None) -> dict[str, Any]:
        """Gaussian-smoothed density ``{"grid", "density", "density_err", "sigma"}``.

        Width ``sigma`` (default 1% of the node range); default grid: 1000 points over
        the nodes +- 5 sigma. ``density_err`` is the standard error over probes.
        """
        width = require_positive_finite(sigma, "the smoothing width") if sigma is not None else self.default_sigma()
        lo, hi = self.support
        g = np.linspace(lo - 5 * width, hi + 5 * width, 1000) if grid is None else np.asarray(grid, dtype=np.float64)
        ok = self.weights > 0
        per = np.stack(
            [np.exp(-0.5 * ((g[:, None] - t[o][None, :]) / width) ** 2) @ w[o] / (width * np.sqrt(2 * np.pi)) for t, w, o in zip(self.nodes, self.weights, ok)]
        )
        mean, err = self._spread(per)
        return {"grid": g, "density": mean, "density_err": err, "sigma": np.float64(width)}

    def ks_distance(self, eigenvalues: np.ndarray, counts: np.ndarray | None = None) -> float:
        """Kolmogorov-Smirnov distance ``sup_x |F_slq(x) - F(x)|`` to an exact spectrum (``counts``: multiplicities)."""
        ev = np.asarray(eigenvalues, dtype=np.float64).ravel()
        c = np.ones(ev.size) if counts is None else np.asarray(counts, dtype=np.float64).ravel()
        order = np.argsort(ev)
        ev, c = ev[order], c[order]
        F_exact = np.cumsum(c) / c.sum()
        ok = self.weights > 0
        pts = np.unique(np.concatenate([ev, self.nodes[ok]]))
        # both CDFs are right-continuous step functions: compare at every jump and just before it
        below = np.nextafter(pts, -np.inf)
        worst = 0.0
        for x in (pts, below):
            f_slq = self.cdf(x)[0]
            idx = np.searchsorted(ev, x, side="right")
            f_ex = np.where(idx > 0, F_exact[np.maximum(idx - 1, 0)], 0.0)
            worst = max(worst, float(np.abs(f_slq - f_ex).max()))
        return worst

    def to_dict(self, grid: np.ndarray | None = None, sigma: float | None = None) -> dict[str, Any]:
        """JSON fields: the smoothed density with its error band, the quadratures, and how they were made."""
        d = self.density(grid, sigma)
        return {
            "method": "slq",
            "P": self.P,
            "probes": self.n_probes,
            "probe": self.probe,
            "steps": self.steps,
            "reorthogonalised": self.reorth,
            "products": self.products,
            "seconds": self.seconds,
            "grid": d["grid"],
            "density": d["density"],
            "density_err": d["density_err"],
            "density_lower": d["density"] - 2 * d["density_err"],
            "density_upper": d["density"] + 2 * d["density_err"],
            "sigma": float(d["sigma"]),
            "support": list(self.support),
            "nodes": self.nodes,
            "weights": self.weights,
        }


def make_probes(P: int, n: int, *, seed: int = 0, kind: str = "rademacher") -> np.ndarray:
    """``n`` seeded unit probes ``(P, n)``; probe ``i`` is the ``i``-th draw of one generator."""
    if kind not in PROBES:
        raise NearoptError(f"probe must be one of {', '.join(PROBES)}, got {kind!r}")
    rng = np.random.default_rng(seed)
    Q = np.empty((P, n))
    for i in range(n):
        q = rng.choice([-1.0, 1.0], size=P) if kind == "rademacher" else rng.standard_normal(P)
        Q[:, i] = q / np.linalg.norm(q)
    return Q


def slq(
    op: LinearOperator,
    *,
    n_probes: int = 10,
    steps: int = 80,
    seed: int = 0,
    probe: str = "rademacher",
    probes: np.ndarray | None = None,
    reorth: str | bool = "auto",
    progress: Callable[[int, int], None] | None = None,
) -> SpectralDensity:
    """Stochastic Lanczos quadrature of a symmetric ``op`` ``(P, P)``.

    ``probes`` ``(P, n)`` overrides the seeded random ones (e.g. the identity's
    columns make the moments exact traces). ``reorth``: ``True``, ``False`` or
    ``"auto"`` (full when the basis fits in :data:`REORTH_BYTES`).
    """
    P = op.shape[0]
    Q = make_probes(P, require_positive_int(n_probes, "number of probe vectors"), seed=seed, kind=probe) if probes is None else np.asarray(probes, dtype=np.float64)
    if Q.ndim != 2 or Q.shape[0] != P:
        raise NearoptError(f"probes must have shape (P={P}, n), got {Q.shape}")
    steps = min(require_positive_int(steps, "Lanczos steps"), P)
    if reorth == "auto":
        reorth = 8 * steps * P * Q.shape[1] <= REORTH_BYTES
    t0 = time.perf_counter()
    alpha, beta, length = lanczos_tridiagonals(op, Q, steps, reorth=bool(reorth), progress=progress)
    nodes, weights = gauss_quadrature(alpha, beta, length)
    return SpectralDensity(nodes, weights, P, "given" if probes is not None else probe, steps, bool(reorth), int(length.sum()), time.perf_counter() - t0)


def spectral_density(
    op: LinearOperator,
    *,
    n_vectors: int = 10,
    steps: int = 80,
    seed: int = 0,
    grid: np.ndarray | None = None,
    sigma: float | None = None,
) -> dict[str, Any]:
    """Smoothed SLQ density as a dict ``{"grid", "density", "density_err", "nodes", "weights", "point_mass"}`` (see :func:`slq`).

    ``n_vectors`` seeded Rademacher probes, ``steps`` Lanczos steps each, Gaussian
    smoothing of width ``sigma`` (default 1% of the spectral range); ``density``
    integrates to ~1 and ``density_err`` is its standard error over probes.
    ``nodes``/``weights`` ``(n, m)`` stop at the longest probe's quadrature (``m <=
    steps``: Lanczos ends early on an invariant subspace); a shorter probe has NaN
    nodes of weight 0 after its own.

    A spectrum of zero width (every node the same value ``c`` to rounding, as for
    ``c I``) is the point mass ``delta(lambda - c)``: ``point_mass`` is ``c``
    (``None`` otherwise) and the default width is 1% of ``max(|c|, 1)``, since the
    range gives no scale.
    """
    res = slq(op, n_probes=n_vectors, steps=steps, seed=seed)
    m = int(np.flatnonzero(np.isfinite(res.nodes).any(axis=0)).max(initial=0)) + 1
    lo, hi = res.support
    point = lo if hi - lo <= 64 * EPS * max(abs(lo), abs(hi)) else None
    if sigma is None and point is not None:
        sigma = 0.01 * max(abs(point), 1.0)
    d = res.density(grid, sigma)
    return {"grid": d["grid"], "density": d["density"], "density_err": d["density_err"], "nodes": res.nodes[:, :m], "weights": res.weights[:, :m],
            "point_mass": point}
