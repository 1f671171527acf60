"""Experiment ``rank``: the Hessian rank as the effective number of parameters (docs/theory.md §4).

Cells are ``(activation, N_i, N_h, teacher seed)``; each measures the rank from
the singular values of ``J/√N`` (``N = oversample · P``, float64) and compares
it with :func:`nearopt.theory.rank_prediction.predict_rank`. Groups of cells:

* ``sweep``: rank vs ``N_h`` for ``z²``, ``z³`` (saturation) and ReLU;
* ``defective``: the Alexander–Hirschowitz cases of ``z^p``;
* ``mixed``: mixed polynomials (``z + z²``, ``z² + z³``, ``z² + z⁴``) against the
  bound and the exact modular count;
* ``generic``: erf and tanh over an ``(N_i, N_h)`` grid (full rank);
* ``limit``: erf at small ``N_i`` and large ``N_h``, where the tiny singular
  values reach float64 round-off: here the check is that every rank deficit is
  *flagged* (no clear gap), never reported silently;
* ``pooled``: many teachers at one size for pooled eigenvalue histograms.
"""

from __future__ import annotations

import csv
import io as _io
from math import comb
from pathlib import Path
from typing import Any

import numpy as np

from ..curvature.rank_measurement import measure_rank
from ..figures.plotting import new_figure, save_figure
from ..model import io
from ..model.activations import get_activation
from ..model.network import sample_teacher
from ..theory.rank_prediction import DEFECTIVE_CASES, predict_rank, saturation_hidden
from .base import FLOAT64, SEED, Check, Experiment, ExperimentResult, Relation, Setting, count, counts, n_params, names, register

__all__ = ["cells", "finalize", "FULL", "memory", "QUICK", "RELATIONS", "run_cell", "SETTINGS"]

QUICK = {
    "teachers": 2,
    "seed": 0,
    "data_seed": 0,
    "oversample": 4,
    "quadratic_ni": 4,
    "cubic_ni": 3,
    "max_nh": 7,
    "relu_sizes": [[2, 3], [4, 5]],
    "relu_samples": 4000,
    "defective": [[4, 3, 5], [3, 5, 7]],
    "mixed": ["polynomial:0,1,1", "polynomial:0,0,1,1"],
    "mixed_ni": 4,
    "generic": ["erf", "tanh"],
    "generic_ni": [2, 4],
    "generic_nh": [2, 6, 12],
    "limit_ni": [1],
    "limit_nh": [4, 8],
    "pooled": ["quadratic", "cubic", "erf"],
    "pooled_size": [4, 6],
    "pooled_teachers": 6,
}

FULL = {
    "teachers": 5,
    "seed": 0,
    "data_seed": 0,
    "oversample": 6,
    "quadratic_ni": 8,
    "cubic_ni": 5,
    "max_nh": 14,
    "relu_sizes": [[2, 3], [3, 8], [5, 5], [8, 16]],
    "relu_samples": 10000,
    "defective": [list(c) for c in DEFECTIVE_CASES],
    "mixed": ["polynomial:0,1,1", "polynomial:0,0,1,1", "polynomial:0,0,1,0,1", "polynomial:0,1,0,1"],
    "mixed_ni": 4,
    "generic": ["erf", "tanh"],
    "generic_ni": [3, 5, 10],
    "generic_nh": [2, 4, 8, 16, 32, 48],
    "limit_ni": [1, 2],
    "limit_nh": [4, 8, 16, 24, 32, 48],
    "pooled": ["quadratic", "cubic", "erf"],
    "pooled_size": [8, 12],
    "pooled_teachers": 40,
}


def cells(config: dict[str, Any]) -> list[dict[str, Any]]:
    """One cell per (group, activation, N_i, N_h, teacher)."""
    base = {"data_seed": config["data_seed"], "oversample": config["oversample"]}
    seeds = [config["seed"] + t for t in range(config["teachers"])]
    specs: list[tuple[str, str, int, int]] = []
    nhs = range(1, config["max_nh"] + 1)
    specs += [("sweep", "quadratic", config["quadratic_ni"], h) for h in nhs]
    specs += [("sweep", "cubic", config["cubic_ni"], h) for h in nhs]
    specs += [("sweep", "relu", i, h) for i, h in config["relu_sizes"]]
    for p, i, h in config["defective"]:
        specs += [("defective", f"monomial:{p}", i, hh) for hh in (h - 1, h, h + 1)]
    for act in config["mixed"]:
        specs += [("mixed", act, config["mixed_ni"], h) for h in nhs]
    specs += [("generic", a, i, h) for a in config["generic"] for i in config["generic_ni"] for h in config["generic_nh"]]
    specs += [("limit", "erf", i, h) for i in config["limit_ni"] for h in config["limit_nh"]]
    # ReLU: a fixed large N so that thin wedges between nearly parallel units hold samples
    out = [
        dict(base, group=g, activation=a, n_inputs=i, n_hidden=h, seed=s, samples=config["relu_samples"] if a == "relu" else None)
        for g, a, i, h in specs
        for s in seeds
    ]
    i, h = config["pooled_size"]
    out += [
        dict(base, group="pooled", activation=a, n_inputs=i, n_hidden=h, seed=config["seed"] + t)
        for a in config["pooled"]
        for t in range(config["pooled_teachers"])
    ]
    return out


def run_cell(cell: dict[str, Any]) -> dict[str, Any]:
    """Measured rank, decision, prediction and all singular values of one teacher."""
    net = sample_teacher(cell["n_inputs"], cell["n_hidden"], cell["activation"], seed=cell["seed"])
    m = measure_rank(net, n_samples=cell.get("samples"), oversample=cell["oversample"], data_seed=cell["data_seed"], teacher_seed=cell["seed"])
    d = m.to_dict(values=False)
    d["singular_values"] = m.singular_values.tolist()
    d["group"] = cell["group"]
    d["bound"] = m.prediction.upper_bound
    return d


# -- tables --------------------------------------------------------------------


def _rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Aggregate teachers: one row per (group, activation, N_i, N_h)."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault((r["group"], r["activation"], r["N_i"], r["N_h"]), []).append(r)
    rows = []
    for (g, a, i, h), rs in groups.items():
        pred = rs[0]["predicted"]
        ranks = [r["rank"] for r in rs]
        rows.append(
            {
                "group": g,
                "activation": a,
                "N_i": i,
                "N_h": h,
                "P": rs[0]["P"],
                "N": rs[0]["samples"],
                "teachers": len(rs),
                "rank_min": min(ranks),
                "rank_max": max(ranks),
                "predicted": pred["rank"],
                "kind": pred["kind"],
                "bound": rs[0]["bound"],
                "smallest_gap": min(r["decision"]["gap"] for r in rs),
                "min_margin": min(r["decision"]["margin"] for r in rs),
                "all_clear": all(r["clear"] for r in rs),
                "any_silent_deficit": any(r["rank"] < r["P"] and r["clear"] for r in rs),
                "agrees": all(r["agrees"] for r in rs),
                "lambda_min_median": float(np.median([r["smallest_nonzero_eigenvalue"] for r in rs])),
                "lambda_min_lo": min(r["smallest_nonzero_eigenvalue"] for r in rs),
                "lambda_min_hi": max(r["smallest_nonzero_eigenvalue"] for r in rs),
            }
        )
    return rows


def _csv(rows: list[dict[str, Any]]) -> str:
    buf = _io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def _markdown(rows: list[dict[str, Any]], cols: list[str]) -> str:
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(f"{r[c]:.2g}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
    return "\n".join(lines)


# -- figures -------------------------------------------------------------------

_SUPERSCRIPTS = str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹")


def _pretty(name: str) -> str:
    """``"polynomial:0,1,1"`` → ``"z + z²"``; monomials as ``z³``; other names unchanged."""
    act = get_activation(name)
    if not act.is_polynomial:
        return name
    c = act.polynomial_coefficients
    assert c is not None  # is_polynomial
    ks = np.flatnonzero(c)
    terms = ["1" if k == 0 else "z" if k == 1 else "z" + str(k).translate(_SUPERSCRIPTS) for k in ks]
    coef = ["" if abs(c[k]) == 1 or k == 0 else f"{c[k]:g}" for k in ks]
    return " + ".join(a + t for a, t in zip(coef, terms))



def _plot_rank_vs_nh(rows, config, stem: Path) -> list[Path]:
    panels = [("quadratic", config["quadratic_ni"], "sweep"), ("cubic", config["cubic_ni"], "sweep")]
    panels += [(a, config["mixed_ni"], "mixed") for a in config["mixed"][:2]]
    fig, axes = new_figure(1, len(panels), figsize=(3.0 * len(panels), 3.2))
    for ax, (act, n_i, group) in zip(np.atleast_1d(axes), panels):
        rs = sorted((r for r in rows if r["group"] == group and r["activation"] == act), key=lambda r: r["N_h"])
        nh = np.array([r["N_h"] for r in rs])
        grid = np.arange(1, nh.max() + 1)
        ax.plot(grid, [h * (n_i + 1) for h in grid], ":", color="0.5", label="$P = N_h(N_i+1)$")
        ax.plot(grid, [predict_rank(act, n_i, h).upper_bound for h in grid], "--", color="C1", lw=1, label="bound")
        ax.plot(grid, [predict_rank(act, n_i, h).population_rank for h in grid], "-", color="C0", label="prediction")
        lo = np.array([r["rank_min"] for r in rs])
        hi = np.array([r["rank_max"] for r in rs])
        ax.errorbar(nh, (lo + hi) / 2, yerr=(hi - lo) / 2, fmt="o", ms=4, color="k", label="measured")
        sat = saturation_hidden(act, n_i, max_hidden=200)
        if sat is not None and sat <= nh.max():
            ax.axvline(sat, color="C3", lw=0.8)
            ax.annotate(f"saturation\n$N_h={sat}$", (sat, ax.get_ylim()[1] * 0.1), xytext=(3, 0), textcoords="offset points", color="C3", fontsize=7)
        ax.set_xlabel("hidden units $N_h$")
        ax.set_title(f"{_pretty(act)}, $N_i={n_i}$")
    axes[0].set_ylabel("rank of $H$ at the optimum")
    axes[0].legend(loc="upper left")
    return save_figure(fig, stem)


def _plot_generic_grid(rows, config, stem: Path) -> list[Path]:
    acts = config["generic"]
    fig, axes = new_figure(1, len(acts), figsize=(3.6 * len(acts), 3.0))
    nis, nhs = config["generic_ni"], config["generic_nh"]
    for ax, act in zip(np.atleast_1d(axes), acts):
        Z = np.full((len(nis), len(nhs)), np.nan)
        for r in rows:
            if r["group"] == "generic" and r["activation"] == act:
                i, j = nis.index(r["N_i"]), nhs.index(r["N_h"])
                Z[i, j] = np.log10(r["lambda_min_lo"] / 1.0)
                full = r["rank_min"] == r["P"] and r["all_clear"]
                ax.text(j, i, f"{r['rank_min']}/{r['P']}" + ("" if full else "!"), ha="center", va="center", fontsize=7, color="k" if full else "r", bbox={"fc": "w", "ec": "none", "alpha": 0.7, "pad": 1})
        im = ax.imshow(Z, origin="lower", cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(nhs)), [str(h) for h in nhs])
        ax.set_yticks(range(len(nis)), [str(i) for i in nis])
        ax.set_xlabel("hidden units $N_h$")
        ax.set_ylabel("inputs $N_i$")
        ax.set_title(f"{act}: rank / P (smallest teacher)")
        fig.colorbar(im, ax=ax, label=r"$\log_{10}\lambda^+_{\min}$")
    return save_figure(fig, stem)


def _plot_pooled(results, config, stem: Path) -> list[Path]:
    acts = config["pooled"]
    n_i, n_h = config["pooled_size"]
    fig, axes = new_figure(1, len(acts), figsize=(3.2 * len(acts), 3.0), sharey=True)
    bins = np.linspace(-34, 2, 73)
    for ax, act in zip(np.atleast_1d(axes), acts):
        rs = [r for r in results if r["group"] == "pooled" and r["activation"] == act]
        lam = np.concatenate([np.square(r["singular_values"]) for r in rs])
        tol = max(r["decision"]["tolerance_eigenvalue"] for r in rs)
        logs = np.log10(np.clip(lam, 10.0 ** bins[0], None))
        ax.hist(logs, bins=bins, density=False, weights=np.full(logs.size, 1.0 / len(rs)), color="C0")
        ax.axvline(np.log10(tol), color="C3", lw=0.8, ls="--", label="rank tolerance")
        ranks = sorted({r["rank"] for r in rs})
        ax.set_title(f"{_pretty(act)}: rank {'/'.join(map(str, ranks))} of {rs[0]['P']}")
        ax.set_xlabel(r"$\log_{10}\lambda$")
    np.atleast_1d(axes)[0].set_ylabel(f"eigenvalues per teacher ({config['pooled_teachers']} pooled)")
    np.atleast_1d(axes)[0].legend(loc="upper center")
    fig.suptitle(f"pooled Hessian eigenvalues at the optimum, $N_i={n_i}$, $N_h={n_h}$ (zero modes at round-off)", fontsize=9)
    return save_figure(fig, stem)


def _plot_lambda_min(rows, config, stem: Path) -> list[Path]:
    fig, ax = new_figure()
    series = [("quadratic", "sweep", config["quadratic_ni"]), ("cubic", "sweep", config["cubic_ni"])]
    series += [(a, "generic", max(config["generic_ni"])) for a in config["generic"]]
    for k, (act, group, n_i) in enumerate(series):
        rs = sorted((r for r in rows if r["group"] == group and r["activation"] == act and r["N_i"] == n_i), key=lambda r: r["N_h"])
        if not rs:
            continue
        nh = [r["N_h"] for r in rs]
        ax.plot(nh, [r["lambda_min_median"] for r in rs], "o-", ms=3, color=f"C{k}", label=f"{_pretty(act)}, $N_i={n_i}$ (median, range)")
        ax.fill_between(nh, [r["lambda_min_lo"] for r in rs], [r["lambda_min_hi"] for r in rs], color=f"C{k}", alpha=0.2)
    ax.set_yscale("log")
    ax.set_xlabel("hidden units $N_h$")
    ax.set_ylabel(r"smallest nonzero eigenvalue $\lambda^+_{\min}$")
    ax.legend()
    return save_figure(fig, stem)


# -- checks --------------------------------------------------------------------


def _count_check(name: str, rows: list[dict[str, Any]], ok, detail: str) -> Check:
    good = sum(bool(ok(r)) for r in rows)
    bad = [f"{r['activation']} ({r['N_i']},{r['N_h']}): {r['rank_min']}-{r['rank_max']} vs {r['predicted']}" for r in rows if not ok(r)]
    return Check(name, f"{len(rows)} of {len(rows)} rows", f"{good} of {len(rows)} rows", "exact", good == len(rows) and len(rows) > 0, detail + ("; failing: " + "; ".join(bad) if bad else ""))


def finalize(config: dict[str, Any], cells_: list[dict[str, Any]], results: list[dict[str, Any]], out_dir: Path) -> ExperimentResult:
    out_dir = Path(out_dir)
    rows = _rows(results)
    data = [io.write_text(out_dir / "rank_table.csv", _csv(rows)), io.write_json(out_dir / "rank_table.json", rows)]
    data.append(io.write_json(out_dir / "rank_cells.json", results))
    by = lambda g: [r for r in rows if r["group"] == g]
    trusted = [r for r in rows if r["group"] != "limit"]
    exact = [r for r in trusted if r["kind"] == "exact"]
    checks = [
        _count_check("measured = predicted (exact rows)", exact, lambda r: r["agrees"], "every teacher of every row with an exact prediction"),
        _count_check("measured <= upper bound (all rows)", trusted, lambda r: r["rank_max"] <= r["bound"], "rank never exceeds the upper bound min(P, sum of block ranks)"),
        _count_check("erf/tanh full rank on the grid", by("generic"), lambda r: r["rank_min"] == r["P"], "rank = P for every teacher"),
        _count_check("all rank decisions clear (outside the float64-limit group)", trusted + by("pooled"), lambda r: r["all_clear"], "margin >= 10 on both sides of the tolerance and gap >= 1e6"),
        _count_check(
            "Alexander-Hirschowitz defects reproduced",
            [r for r in by("defective") if [_degree(r), r["N_i"], r["N_h"]] in config["defective"]],
            lambda r: r["agrees"] and r["rank_min"] == r["rank_max"] == min(r["N_h"] * r["N_i"], _binom(r)) - 1,
            "rank one below min(N_h N_i, C(N_i+p-1,p))",
        ),
        _count_check(
            "no silent rank deficit in the float64-limit group",
            by("limit"),
            lambda r: not r["any_silent_deficit"],
            "every erf teacher with rank < P is flagged (no clear gap, or a gap < 1e6)",
        ),
    ]
    mixed = by("mixed")
    below = [r for r in mixed if r["predicted"] < r["bound"]]
    checks.append(Check("mixed polynomials: rows below the bound", "> 0", len(below), "count", len(below) > 0 and all(r["agrees"] for r in mixed), "exact (modular) rank < bound, matched by the measurement"))
    figures = []
    figures += _plot_rank_vs_nh(rows, config, out_dir / "rank_vs_nh")[:1]
    figures += _plot_generic_grid(rows, config, out_dir / "generic_full_rank")[:1]
    figures += _plot_pooled(results, config, out_dir / "pooled_log_eigenvalues")[:1]
    figures += _plot_lambda_min(rows, config, out_dir / "smallest_nonzero_vs_nh")[:1]
    cols = ["activation", "N_i", "N_h", "P", "rank_min", "rank_max", "predicted", "bound", "smallest_gap"]
    defect_md = _markdown(by("defective"), cols)
    mixed_md = _markdown(mixed, cols)
    limit_md = _markdown(by("limit"), ["N_i", "N_h", "P", "rank_min", "rank_max", "min_margin", "all_clear"])
    data += [io.write_text(out_dir / "defective_cases.md", defect_md + "\n"), io.write_text(out_dir / "mixed_polynomials.md", mixed_md + "\n")]
    summary = (
        f"Rank of the Hessian at the optimum from singular values of J/sqrt(N) (N = {config['oversample']}·P, float64), "
        f"{config['teachers']} teachers per size. {sum(r['agrees'] for r in exact)}/{len(exact)} exact rows match the theory "
        "(z² saturates at N_h = N_i, z³ at ceil(C(N_i+2,3)/N_i), ReLU loses one direction per unit, erf/tanh are full rank).\n\n"
        "Alexander–Hirschowitz defective cases (prediction and measurement one below min(N_h N_i, C(N_i+p−1,p))):\n\n"
        f"{defect_md}\n\nMixed polynomials: the rank depends only on which coefficients are nonzero. "
        "For z + z² the pseudo-rotations that keep Wᵀdiag(v)W fixed move the linear coefficient Wᵀv only inside span{w_a}, "
        "already reached by rescalings, so N_h(N_h−1)/2 zero modes survive below N_h = N_i; z² + z⁴ inherits the quartic "
        "defects, and z² + z³ loses one direction at (N_i, N_h) = (4, 6) (found by the exact modular count, confirmed here):\n\n"
        f"{mixed_md}\n\nfloat64 limit for erf (small N_i, many units: the smallest singular values reach round-off; "
        f"every deficit must be flagged as unclear):\n\n{limit_md}\n"
    )
    return ExperimentResult("rank", checks, figures, data, summary, dict(config))


def _degree(r: dict[str, Any]) -> int:
    c = get_activation(r["activation"]).polynomial_coefficients
    assert c is not None, "degree of a non-polynomial activation"
    return int(c.size - 1)


def _binom(r: dict[str, Any]) -> int:
    return comb(r["N_i"] + _degree(r) - 1, _degree(r))


_SIZE = count("size", 10**4)
SETTINGS = (
    count("teachers", 10**4),
    SEED,
    Setting("data_seed", int, low=0, high=2**31 - 1),
    count("oversample", 1000),
    count("quadratic_ni", 10**4),
    count("cubic_ni", 10**4),
    count("max_nh", 10**4),
    Setting("relu_sizes", list, nonempty=True, item=Setting("size", list, length=2, item=_SIZE)),
    count("relu_samples", 10**8),
    Setting("defective", list, nonempty=True, item=Setting("case", list, length=3, item=count("case", 10**4))),
    names("mixed"),
    count("mixed_ni", 10**4),
    names("generic"),
    counts("generic_ni", 10**4),
    counts("generic_nh", 10**4),
    counts("limit_ni", 10**4),
    counts("limit_nh", 10**4),
    names("pooled"),
    counts("pooled_size", 10**4, length=2),
    count("pooled_teachers", 10**4),
)
RELATIONS = (Relation("every defective case [p, N_i, N_h] has N_h >= 2 (it also runs N_h - 1)", lambda c: all(h >= 2 for _, _, h in c["defective"])),)


def memory(config: dict[str, Any]) -> float:
    """The Jacobian ``(N, P)`` with ``N = oversample P`` (ReLU: ``relu_samples``) at the largest ``P``, and its SVD (a few copies)."""
    nh = config["max_nh"]
    sizes = [(config["quadratic_ni"], nh), (config["cubic_ni"], nh), (config["mixed_ni"], nh), tuple(config["pooled_size"])]
    sizes += [(i, h + 1) for _, i, h in config["defective"]]
    sizes += [(i, h) for i in config["generic_ni"] for h in config["generic_nh"]] + [(i, h) for i in config["limit_ni"] for h in config["limit_nh"]]
    P = max(n_params(i, h) for i, h in sizes)
    P_relu = max(n_params(i, h) for i, h in config["relu_sizes"])
    return FLOAT64 * 3.0 * max(config["oversample"] * P * P, config["relu_samples"] * P_relu)


register(
    Experiment(
        name="rank",
        description="Hessian rank as the effective number of parameters: saturation of polynomial networks, "
        "Alexander-Hirschowitz defects, mixed polynomials, ReLU, full-rank erf/tanh, pooled spectra",
        quick=QUICK,
        full=FULL,
        cells=cells,
        run_cell=run_cell,
        finalize=finalize,
        settings=SETTINGS,
        relations=RELATIONS,
        memory=memory,
    )
)
