"""Experiment ``linear-spectrum``: pooled linear-network spectra against the χ² ⊛ MP law.

For each size ``(N_i, N_h)`` the nonzero population Hessian eigenvalues of ``T``
random linear teachers are pooled and compared with

* the asymptotic law :class:`~nearopt.theory.distributions.ChiSquareMPConvolution`
  (Kolmogorov–Smirnov distance ``KS``);
* the same law *given the observed* ``s_t = ||W2||^2`` of the teachers,
  ``F_s(l) = mean_t F_MP(l - s_t)`` (``KS_s``): removes the ``chi2`` sampling noise
  (``s`` is shared by all eigenvalues of a teacher) and isolates the finite-size
  error of the Marchenko–Pastur part;
* the exact finite-size law sampled independently
  (:func:`~nearopt.theory.linear.simulate_linear_spectrum`).

Eigenvalues of one teacher are not independent (they share ``s`` and repel), so
the usual KS p-values do not apply; sampling noise is measured at the teacher
level instead: a teacher bootstrap for the one-sample distances (95 % quantile of
``sup |D* - D|``) and a teacher permutation test for the two-sample comparisons.
Also: rank ``= N_i`` for every teacher, the closed form against the dense
population Hessian, the smallest nonzero eigenvalue against ``s + σ1² N_h (1-√q)²``,
and finite batches ``N`` against the population law and the exact finite-``N`` law.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.ticker import FixedFormatter, FixedLocator, NullFormatter, NullLocator

from ..errors import NearoptError
from ..figures.plotting import new_figure, save_figure
from ..model import io
from ..model.network import sample_teacher
from ..theory.distributions import ChiSquareMPConvolution, MarchenkoPastur, TabulatedCDF, wishart_law
from ..theory.linear import (
    linear_batch_trace_moments,
    linear_population_hessian,
    linear_population_spectrum,
    pooled_linear_eigenvalues,
    simulate_linear_spectrum,
    smallest_nonzero_edge,
)
from .base import FLOAT64, SEED, Check, Experiment, ExperimentResult, Setting, check_below, check_equal, count, n_params, register
from .stats import bootstrap_sup_noise, ks_distance, permutation_sup_test, quantile_grid

__all__ = ["cells", "conditional_cdf", "DENSE_MAX_PARAMS", "finalize", "memory", "NAME", "P_THRESHOLD", "run_cell", "SETTINGS", "teachers_for"]

NAME = "linear-spectrum"
#: dense P x P population Hessians are diagonalised for this many teachers per chunk when P is small
DENSE_MAX_PARAMS = 1500
#: two-sample comparisons fail below this permutation p-value (~12 comparisons: ~6% family-wise)
P_THRESHOLD = 0.005


def _sim_seed(seed: int, *parts: int) -> int:
    return int(np.random.SeedSequence([int(seed), 0x11, *map(int, parts)]).generate_state(1)[0])


def teachers_for(config: dict[str, Any], ni: int, nh: int) -> int:
    """``T`` for size ``(N_i, N_h)``: ``teachers``, times ``small_size_factor`` when
    ``N_i N_h <= small_size_limit`` (cheap sizes get more teachers so that their
    sampling noise sits below their finite-size error)."""
    T = int(config["teachers"])
    return T * int(config["small_size_factor"]) if ni * nh <= int(config["small_size_limit"]) else T


def cells(config: dict[str, Any]) -> list[dict[str, Any]]:
    T, chunk, seed = int(config["teachers"]), int(config["chunk"]), int(config["seed"])
    if T < 8:
        raise NearoptError(f"linear-spectrum needs at least 8 teachers, got {T}")
    out = []
    for ni, nh in config["sizes"]:
        Ts = teachers_for(config, ni, nh)
        for start in range(0, Ts, chunk):
            out.append({"kind": "population", "n_inputs": ni, "n_hidden": nh, "start": start, "count": min(chunk, Ts - start), "seed": seed})
    ni, nh = config["batch_size"]
    for N in config["batch_samples"]:
        for start in range(0, T, chunk):
            out.append({"kind": "batch", "n_inputs": ni, "n_hidden": nh, "samples": N, "start": start, "count": min(chunk, T - start), "seed": seed})
    return out


def run_cell(cell: dict[str, Any]) -> dict[str, Any]:
    ni, nh, start, count, seed = cell["n_inputs"], cell["n_hidden"], cell["start"], cell["count"], cell["seed"]
    N = cell.get("samples")
    eig, s, ranks = pooled_linear_eigenvalues(ni, nh, count, seed, start=start, samples=N)
    sim, _ = simulate_linear_spectrum(ni, nh, count, _sim_seed(seed, ni, nh, N or 0, start), samples=N)
    out = {"eigenvalues": eig.tolist(), "s": s.tolist(), "ranks": ranks.tolist(), "simulated": sim.tolist()}
    if N is None and ni * nh + nh <= DENSE_MAX_PARAMS:
        # the closed form against eigvalsh of the dense P x P Hessian (docs/theory.md §2.1 blocks)
        net = sample_teacher(ni, nh, "linear", seed=seed + start)
        dense = np.linalg.eigvalsh(linear_population_hessian(net))
        closed = linear_population_spectrum(net).eigenvalues
        out["dense_max_rel_error"] = float(np.max(np.abs(dense - closed)) / closed[-1])
    if N is not None:
        moments = [linear_batch_trace_moments(sample_teacher(ni, nh, "linear", seed=seed + start + i), N) for i in range(count)]
        out["expected_trace_sq"] = [m[1] for m in moments]
    return out


def conditional_cdf(ni: int, nh: int, s: np.ndarray):
    """``F_s(l) = mean_t F_MP(l - s_t)``: the asymptotic law given the teachers' ``s``.

    The atom part (``q > 1``, eigenvalue ``= s_t``) is an exact step function; the
    bulk part is tabulated (:class:`TabulatedCDF`, its ``max_error`` is returned).
    Returns ``(cdf, mp, max_error)``.
    """
    mp = wishart_law(ni, nh)
    s_sorted = np.sort(np.asarray(s, dtype=np.float64))
    lo_b, hi_b = mp.bulk.support()

    def bulk(x):
        out = np.zeros_like(x)
        for chunk in np.array_split(s_sorted, max(1, s_sorted.size // 128)):  # (chunk, len(x)) at a time
            out += mp.bulk.cdf(x[None, :] - chunk[:, None]).sum(axis=0)
        return mp.bulk_mass * out / s_sorted.size

    table = TabulatedCDF(bulk, s_sorted[0] + lo_b, s_sorted[-1] + hi_b, n=8001)

    def cdf(x, side="right"):
        """``side="left"`` gives the left limits ``F_s(x-)`` (the atom steps excluded)."""
        x = np.asarray(x, dtype=np.float64)
        steps = np.searchsorted(s_sorted, x, side=side) / s_sorted.size
        return mp.atom_mass * steps + table(x)

    return cdf, mp, table.max_error


def _pool(cells_, results, kind: str, key) -> dict[str, np.ndarray]:
    parts: dict[str, list] = {"eigenvalues": [], "s": [], "ranks": [], "simulated": [], "expected_trace_sq": []}
    extra = []
    for c, r in zip(cells_, results):
        if c["kind"] == kind and key(c):
            for k in parts:
                if k in r:
                    parts[k].append(np.asarray(r[k]))
            if "dense_max_rel_error" in r:
                extra.append(r["dense_max_rel_error"])
    out = {k: np.concatenate(v) for k, v in parts.items() if v}
    out["dense_max_rel_error"] = np.asarray(extra)
    return out


# ---------------------------------------------------------------- analysis
def _analyse_size(ni: int, nh: int, P: dict[str, np.ndarray], seed: int) -> dict[str, Any]:
    E, s, sim = P["eigenvalues"], P["s"], P["simulated"]
    T = E.shape[0]
    law = ChiSquareMPConvolution(ni, nh)
    x = np.sort(E.ravel())
    span = x[-1] - x[0]
    table = TabulatedCDF(law.cdf, max(law.a, x[0] - 0.05 * span), x[-1] + 0.05 * span)
    _, mp, _ = conditional_cdf(ni, nh, s[:1])
    grid = quantile_grid(E)
    cond_rows = mp.cdf(grid[None, :] - s[:, None])  # (T, G)
    res: dict[str, Any] = {"N_i": ni, "N_h": nh, "q": ni / nh, "teachers": T, "pooled": int(x.size)}
    res["ks_by_teachers"] = []
    for Tk in sorted({max(4, T // 16), max(4, T // 4), T}):
        xk = np.sort(E[:Tk].ravel())
        ck, _, ck_err = conditional_cdf(ni, nh, s[:Tk])
        res["ks_by_teachers"].append({
            "teachers": Tk,
            "ks": ks_distance(xk, table),
            "ks_noise95": bootstrap_sup_noise(E[:Tk], None, grid, seed),
            "ks_given_s": ks_distance(xk, ck, functools.partial(ck, side="left")),
            "ks_given_s_noise95": bootstrap_sup_noise(E[:Tk], cond_rows[:Tk], grid, seed),
            "given_s_table_max_error": ck_err,
        })
    res.update({k: v for k, v in res["ks_by_teachers"][-1].items() if k != "teachers"})
    res["cdf_table_max_error"] = table.max_error
    res["ranks"] = sorted({int(r) for r in P["ranks"]})
    res["sim_distance"], res["sim_pvalue"] = permutation_sup_test(E, sim, seed)
    res["sim_min_distance"], res["sim_min_pvalue"] = permutation_sup_test(E[:, :1], sim[:, :1], seed)
    res["dense_max_rel_error"] = float(P["dense_max_rel_error"].max()) if P["dense_max_rel_error"].size else None
    # lower edge: smallest nonzero eigenvalue minus s, in units of sigma1^2 N_h
    gap = (E[:, 0] - s) / mp.scale
    res["edge_predicted"] = float(smallest_nonzero_edge(ni, nh, 0.0) / mp.scale)
    res["edge_mean"], res["edge_sd"] = float(gap.mean()), float(gap.std(ddof=1))
    res["edge_max_abs_residual"] = float(np.max(np.abs(E[:, 0] - smallest_nonzero_edge(ni, nh, s))))
    return res


def _law_checks(ni: int, nh: int) -> dict[str, float]:
    """Normalisation and monotonicity of the predicted law (the issue's accuracy targets).

    The mass is Simpson's rule on 20001 points of the (smooth) density up to
    ``mean + 40 sd``; the tests check it with adaptive ``quad`` as well.
    """
    from scipy.integrate import simpson

    law = ChiSquareMPConvolution(ni, nh)
    lam = np.linspace(law.a, law.mean() + 40 * law.std(), 20001)
    F = law.cdf(lam[::5])
    return {"mass": float(simpson(law.pdf(lam), x=lam)), "cdf_min_step": float(np.min(np.diff(F)))}


def _analyse_batch(ni: int, nh: int, N: int, P: dict[str, np.ndarray], seed: int) -> dict[str, Any]:
    E, sim = P["eigenvalues"], P["simulated"]
    law = ChiSquareMPConvolution(ni, nh)
    x = np.sort(E.ravel())
    table = TabulatedCDF(law.cdf, law.a, x[-1] * 1.05 + 1.0)
    dist, pval = permutation_sup_test(E, sim, seed)
    sq = np.sum(E**2, axis=1)
    exp_sq = P["expected_trace_sq"]
    se = float(np.std(sq - exp_sq, ddof=1) / np.sqrt(E.shape[0]))
    return {
        "samples": N,
        "teachers": E.shape[0],
        "ranks": sorted({int(r) for r in P["ranks"]}),
        "ks_population_law": ks_distance(x, table),
        "ks_population_law_noise95": bootstrap_sup_noise(E, None, quantile_grid(E), seed),
        "sim_distance": dist,
        "sim_pvalue": pval,
        "trace_sq_mean": float(sq.mean()),
        "trace_sq_expected": float(np.mean(exp_sq)),
        "trace_sq_stderr": se,
    }


# ---------------------------------------------------------------- figures
def _label(ni, nh):
    return rf"$N_i={ni},\ N_h={nh}$"


def _fig_panels(sizes, pooled, analysis, out: Path) -> list[Path]:
    n = len(sizes)
    ncols = 3 if n > 4 else n
    nrows = int(np.ceil(n / ncols))
    fig, axes = new_figure(nrows, ncols, figsize=(3.4 * ncols, 2.7 * nrows), squeeze=False)
    for ax, (ni, nh) in zip(axes.ravel(), sizes):
        P, A = pooled[(ni, nh)], analysis[(ni, nh)]
        law = ChiSquareMPConvolution(ni, nh)
        E = P["eigenvalues"].ravel()
        hi = np.quantile(E, 0.999)
        bins = np.linspace(0, hi * 1.05, 60)
        ax.hist(E, bins=bins, density=True, color="0.75", label=f"pooled Hessian ({A['teachers']} teachers)")
        ax.hist(P["simulated"].ravel(), bins=bins, density=True, histtype="step", color="C0", lw=1.0, label="exact finite-size sim.")
        lam = np.linspace(1e-6, hi * 1.05, 600)
        ax.plot(lam, law.pdf(lam), color="C3", label=r"$\chi^2\circledast$MP (asymptotic)")
        if law.chi2_weight > 0:
            ax.plot(lam, law.chi2_weight * law.chi2.pdf(lam), color="C3", ls=":", lw=1.0, label=r"$\lambda=s$ part, $(1-1/q)\,p_s$")
        ax.set_title(_label(ni, nh) + f"  KS={A['ks']:.3f}", fontsize=9)
        ax.set_xlabel(r"eigenvalue $\lambda$")
        ax.set_ylabel(r"density $\rho(\lambda)$")
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    axes.ravel()[0].legend(loc="upper right")
    return save_figure(fig, out / "linear_spectrum_panels")


def _fig_ks(sizes, analysis, out: Path) -> list[Path]:
    fig, (ax1, ax2) = new_figure(1, 2, figsize=(9.0, 3.5))
    for k, ratio in enumerate(sorted({ni / nh for ni, nh in sizes})):
        ladder = sorted([sz for sz in sizes if sz[0] / sz[1] == ratio], key=lambda z: z[0] * z[1])
        n = [np.sqrt(ni * nh) for ni, nh in ladder]
        for key, ls, lab in (("ks", "-", "KS to $\\chi^2\\circledast$MP"), ("ks_given_s", "--", "KS given teachers' $s$")):
            ax1.plot(n, [analysis[sz][key] for sz in ladder], color=f"C{k}", ls=ls, marker="o", ms=3, label=f"q={ratio:g}: {lab}")
            ax1.plot(n, [analysis[sz][key + "_noise95"] for sz in ladder], color=f"C{k}", ls=":", lw=0.8)
        for sz in ladder:
            rows = analysis[sz]["ks_by_teachers"]
            ax2.plot([r["teachers"] for r in rows], [r["ks"] for r in rows], color=f"C{k}", marker="o", ms=3, lw=1.0, alpha=0.4 + 0.6 * (sz == ladder[-1]))
            ax2.plot([r["teachers"] for r in rows], [r["ks_noise95"] for r in rows], color=f"C{k}", ls=":", lw=0.8)
    ax1.set(xscale="log", yscale="log", xlabel=r"size $\sqrt{N_i N_h}$", ylabel="KS distance (dotted: 95% noise)")
    ax1.xaxis.set_minor_formatter(NullFormatter())
    ax1.legend(fontsize=6)
    ax2.set(xscale="log", yscale="log", xlabel="number of teachers $T$", ylabel="KS distance (dotted: 95% noise)")
    ax2.set_title("solid: KS, one line per size (darkest = largest)", fontsize=8)
    return save_figure(fig, out / "linear_spectrum_ks")


def _fig_edge(sizes, analysis, out: Path) -> list[Path]:
    """Lower edge against ``q``; sizes that share a ``q`` are drawn side by side (a small
    horizontal offset, smallest size left) so that none hides another."""
    fig, ax = new_figure(1, 1, figsize=(5.0, 3.4))
    qs = sorted({ni / nh for ni, nh in sizes})
    for k, (ni, nh) in enumerate(sizes):
        A, q = analysis[(ni, nh)], ni / nh
        same = sorted((z for z in sizes if z[0] / z[1] == q), key=lambda z: z[0] * z[1])
        offset = 10.0 ** (0.06 * (same.index((ni, nh)) - (len(same) - 1) / 2))
        ax.errorbar(q * offset, A["edge_mean"], yerr=A["edge_sd"], fmt="o", ms=4, color=f"C{k}", capsize=2, label=_label(ni, nh))
    q = np.geomspace(min(qs) / 4, max(qs) * 2, 400)
    ax.plot(q, [MarchenkoPastur(r).bulk_edges[0] if r < 1 else 0.0 for r in q], color="k", lw=1.0, label=r"$(1-\sqrt{q})^2$ for $q<1$, $0$ for $q\geq 1$")
    ax.set(xscale="log", xlabel=r"$q = N_i/N_h$ (sizes of one $q$ side by side)", ylabel=r"$(\lambda^+_{\min} - s)/(\sigma_1^2 N_h)$")
    ticks = sorted(set(qs) | {1.0})
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(FixedFormatter([f"{t:g}" for t in ticks]))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.legend(fontsize=6)
    return save_figure(fig, out / "linear_spectrum_lower_edge")


def _fig_batch(ni, nh, batch_pooled, pop_pooled, out: Path) -> list[Path]:
    fig, ax = new_figure(1, 1, figsize=(5.0, 3.4))
    law = ChiSquareMPConvolution(ni, nh)
    hi = np.quantile(batch_pooled[min(batch_pooled)]["eigenvalues"], 0.995)
    lam = np.linspace(1e-6, hi, 500)
    for k, N in enumerate(sorted(batch_pooled)):
        E = np.sort(batch_pooled[N]["eigenvalues"].ravel())
        ax.step(E, np.arange(1, E.size + 1) / E.size, where="post", color=f"C{k}", lw=1.0, label=f"batch $N={N}$")
    if pop_pooled is not None:
        E = np.sort(pop_pooled["eigenvalues"].ravel())
        ax.step(E, np.arange(1, E.size + 1) / E.size, where="post", color="0.4", lw=1.0, label=r"population ($N\to\infty$)")
    ax.plot(lam, law.cdf(lam), color="k", ls="--", label=r"$\chi^2\circledast$MP cdf")
    ax.set(xlabel=r"eigenvalue $\lambda$", ylabel=r"cdf $F(\lambda)$", xlim=(0, hi), title=_label(ni, nh) + ", finite batches")
    ax.legend(fontsize=7)
    return save_figure(fig, out / "linear_spectrum_batch")


# ---------------------------------------------------------------- finalize
def finalize(config: dict[str, Any], cells_: list[dict], results: list[dict], out_dir: Path) -> ExperimentResult:
    out_dir = Path(out_dir)
    seed = int(config["seed"])
    sizes = [(int(z[0]), int(z[1])) for z in config["sizes"]]
    pooled = {sz: _pool(cells_, results, "population", lambda c, sz=sz: (c["n_inputs"], c["n_hidden"]) == sz) for sz in sizes}
    analysis = {sz: _analyse_size(*sz, pooled[sz], seed) for sz in sizes}
    for sz in sizes:
        analysis[sz].update({f"law_{k}": v for k, v in _law_checks(*sz).items()})
    bni, bnh = config["batch_size"]
    batch_pooled = {N: _pool(cells_, results, "batch", lambda c, N=N: c["samples"] == N) for N in config["batch_samples"]}
    batch = [_analyse_batch(bni, bnh, N, batch_pooled[N], seed) for N in sorted(batch_pooled)]

    checks: list[Check] = []
    for sz in sizes:
        A, tag = analysis[sz], f"N_i={sz[0]},N_h={sz[1]}"
        checks.append(check_equal(f"rank of every teacher ({tag})", [sz[0]], A["ranks"]))
        checks.append(Check(f"pooled vs exact finite-size simulation ({tag})", "same law", A["sim_pvalue"], f"teacher-permutation p > {P_THRESHOLD}", A["sim_pvalue"] > P_THRESHOLD, f"sup|F1-F2| = {A['sim_distance']:.4f}"))
        checks.append(Check(f"smallest eigenvalue vs simulation ({tag})", "same law", A["sim_min_pvalue"], f"teacher-permutation p > {P_THRESHOLD}", A["sim_min_pvalue"] > P_THRESHOLD, f"sup|F1-F2| = {A['sim_min_distance']:.4f}"))
        checks.append(check_below(f"|1 - mass of predicted density| ({tag})", abs(A["law_mass"] - 1.0), 1e-6))
        checks.append(Check(f"predicted cdf monotone ({tag})", ">= -1e-15", A["law_cdf_min_step"], "rounding", A["law_cdf_min_step"] >= -1e-15))
        checks.append(Check(f"KS explained by finite size + noise ({tag})", f"<= KS_s + noise95 = {A['ks_given_s'] + A['ks_noise95']:.4f}", A["ks"], "95% teacher bootstrap",
                            A["ks"] <= A["ks_given_s"] + A["ks_noise95"]))
        if A["dense_max_rel_error"] is not None:
            checks.append(check_below(f"closed form vs dense population Hessian ({tag})", A["dense_max_rel_error"], 1e-12))
        if sz[0] > sz[1]:
            checks.append(check_below(f"lambda_min = s exactly for q > 1 ({tag})", A["edge_max_abs_residual"], 1e-12))
    for ratio in sorted({ni / nh for ni, nh in sizes}):
        ladder = sorted([sz for sz in sizes if sz[0] / sz[1] == ratio], key=lambda z: z[0] * z[1])
        if len(ladder) < 2:
            continue
        small, large = analysis[ladder[0]], analysis[ladder[-1]]
        bound = small["ks_given_s"] - small["ks_given_s_noise95"] - large["ks_given_s_noise95"]
        checks.append(Check(f"KS given s shrinks with size (q={ratio:g})", f"< {bound:.4f} (small-size KS minus both noises)", large["ks_given_s"], "95% teacher bootstrap",
                            bool(large["ks_given_s"] < bound), f"{ladder[0]}: {small['ks_given_s']:.4f}, {ladder[-1]}: {large['ks_given_s']:.4f}"))
        if ratio < 1:
            err = [abs(analysis[sz]["edge_mean"] / analysis[sz]["edge_predicted"] - 1) for sz in ladder]
            checks.append(Check(f"lower edge -> s + sigma1^2 N_h (1-sqrt q)^2 (q={ratio:g})", f"relative error shrinking, < 0.1 at {ladder[-1]}", err[-1], "0.1 (Tracy-Widom shift ~ N^-2/3)",
                                bool(err[-1] < 0.1 and err[-1] < err[0]), f"relative errors {', '.join(f'{e:.3f}' for e in err)}"))
    for b in batch:
        tag = f"N={b['samples']}"
        checks.append(check_equal(f"batch rank min(N_i, N) ({tag})", [min(bni, b["samples"])], b["ranks"]))
        checks.append(Check(f"batch pooled vs exact finite-N simulation ({tag})", "same law", b["sim_pvalue"], f"teacher-permutation p > {P_THRESHOLD}", b["sim_pvalue"] > P_THRESHOLD, f"sup|F1-F2| = {b['sim_distance']:.4f}"))
        z = abs(b["trace_sq_mean"] - b["trace_sq_expected"]) / b["trace_sq_stderr"]
        checks.append(check_below(f"E tr H^2 vs (1+1/N) tr A^2 + (tr A)^2/N ({tag}), in standard errors", z, 4.0))

    rows = [dict(analysis[sz].items()) for sz in sizes]
    data = [io.write_json(out_dir / "linear_spectrum.json", {"config": config, "sizes": rows, "batch": batch, "checks": [c.to_dict() for c in checks]})]
    csv = ["N_i,N_h,q,teachers,ks,ks_noise95,ks_given_s,ks_given_s_noise95,sim_pvalue,edge_mean,edge_predicted"]
    for A in rows:
        csv.append(",".join(str(A[k]) for k in ("N_i", "N_h", "q", "teachers", "ks", "ks_noise95", "ks_given_s", "ks_given_s_noise95", "sim_pvalue", "edge_mean", "edge_predicted")))
    data.append(io.write_text(out_dir / "linear_spectrum_ks.csv", "\n".join(csv) + "\n"))
    arrays = {}
    for (ni, nh), P in pooled.items():
        arrays[f"eig_{ni}_{nh}"], arrays[f"s_{ni}_{nh}"], arrays[f"sim_{ni}_{nh}"] = P["eigenvalues"], P["s"], P["simulated"]
    for N, P in batch_pooled.items():
        arrays[f"batch_eig_{bni}_{bnh}_N{N}"], arrays[f"batch_sim_{bni}_{bnh}_N{N}"] = P["eigenvalues"], P["simulated"]
    data.append(io.write_npz(out_dir / "linear_spectrum_eigenvalues.npz", **arrays))

    figures = [_fig_panels(sizes, pooled, analysis, out_dir)[0], _fig_ks(sizes, analysis, out_dir)[0], _fig_edge(sizes, analysis, out_dir)[0]]
    figures.append(_fig_batch(bni, bnh, batch_pooled, pooled.get((bni, bnh)), out_dir)[0])

    lines = ["| N_i | N_h | T | KS to χ²⊛MP (noise95) | KS given s (noise95) | sim. p |", "|---|---|---|---|---|---|"]
    for A in rows:
        lines.append(f"| {A['N_i']} | {A['N_h']} | {A['teachers']} | {A['ks']:.4f} ({A['ks_noise95']:.4f}) | {A['ks_given_s']:.4f} ({A['ks_given_s_noise95']:.4f}) | {A['sim_pvalue']:.2f} |")
    summary = (
        "Pooled nonzero Hessian eigenvalues of random linear teachers against the χ² ⊛ Marchenko–Pastur law "
        "(docs/theory.md §3); rank = N_i for every teacher. KS distances with 95% teacher-bootstrap noise:\n\n" + "\n".join(lines)
    )
    return ExperimentResult(NAME, checks, figures=figures, data=data, summary=summary, config=dict(config))


def _enough_teachers(value: int) -> None:
    if value < 8:
        raise NearoptError("the teacher bootstrap needs at least 8 teachers")


_SIZE = count("size", 10**5)
SETTINGS = (
    Setting("sizes", list, nonempty=True, unique=True, item=Setting("size", list, length=2, item=_SIZE)),
    Setting("teachers", int, low=1, high=10**6, check=_enough_teachers),
    count("small_size_factor", 1000),
    Setting("small_size_limit", int, low=0, high=10**12),
    count("chunk", 10**6),
    SEED,
    Setting("batch_size", list, length=2, item=_SIZE),
    Setting("batch_samples", list, nonempty=True, unique=True, item=count("samples", 10**7)),
)


def memory(config: dict[str, Any]) -> float:
    """Per chunk: the teachers' ``N_i`` nonzero eigenvalues (measured and simulated), ``W1`` and its
    Gram matrices, the dense Hessian below :data:`DENSE_MAX_PARAMS`; batch cells: the ``(N, N_i + N_h)`` data."""
    worst = 0.0
    for ni, nh in config["sizes"]:
        P, T = n_params(ni, nh), min(config["chunk"], teachers_for(config, ni, nh))
        dense = 4.0 * P * P if P <= DENSE_MAX_PARAMS else 0.0
        worst = max(worst, FLOAT64 * (3.0 * T * ni + 4.0 * (ni * nh + ni * ni + nh * nh) + dense))
    ni, nh = config["batch_size"]
    return max(worst, FLOAT64 * 4.0 * (max(config["batch_samples"]) * (ni + nh) + ni * nh + ni * ni + nh * nh))


register(
    Experiment(
        name=NAME,
        description="Linear networks: rank N_i and the pooled chi-square * Marchenko-Pastur spectrum (docs/theory.md §3)",
        quick={
            "sizes": [[10, 20], [40, 80], [160, 320], [30, 10], [120, 40], [480, 160]],
            "teachers": 200,
            "small_size_factor": 10,
            "small_size_limit": 5000,
            "chunk": 200,
            "seed": 0,
            "batch_size": [10, 20],
            "batch_samples": [5, 20, 200],
        },
        full={
            "sizes": [[10, 20], [40, 80], [160, 320], [400, 800], [30, 10], [120, 40], [480, 160], [1200, 400]],
            "teachers": 2000,
            "small_size_factor": 5,
            "small_size_limit": 5000,
            "chunk": 250,
            "seed": 0,
            "batch_size": [10, 20],
            "batch_samples": [5, 20, 200, 2000],
        },
        cells=cells,
        run_cell=run_cell,
        finalize=finalize,
        settings=SETTINGS,
        memory=memory,
    )
)
