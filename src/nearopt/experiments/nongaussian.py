"""Experiment ``non-gaussian``: how far do spectrum and dynamics move with non-Gaussian inputs?

Inputs i.i.d., zero mean, unit variance: Gaussian, uniform, Rademacher, Student-t
(rescaled). Theory:

* linear: ``H`` depends on the inputs only through ``E[x x^T] = I``: the population
  spectrum ``s + spec(W1^T W1)`` is the same for every distribution; finite-``N``
  batches differ from it by the (universal) Marchenko-Pastur spread;
* quadratic: ``E[(x^T D x)**2] = tr(D)**2 + 2 tr(D**2) + kappa sum_i D_ii**2`` with
  ``kappa`` the excess kurtosis (uniform -1.2, Rademacher -2, Student-t ``6/(df-4)``):
  the population Hessian moves by a known amount, predicted here in closed form;
* erf: no closed form for non-Gaussian inputs; the shift is measured against the
  Gaussian population (a fixed 100000-input sample).

Per activation and distribution, the batch spectrum (``N`` inputs, several data seeds)
is compared with the Gaussian population prediction (and, for quadratic, the
kurtosis-corrected one) by the relative error of each nonzero eigenvalue (median over
seeds; max and mean over eigenvalues) and by the two-sample KS distance of the pooled
relative errors against the Gaussian batches. A dynamics case (GD from
``theta* + delta_0`` on the non-Gaussian batch) is compared with the per-draw
quadratic prediction from the Gaussian population Hessian.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from ..curvature.batch import BatchGaussNewton
from ..dynamics import make_objective, predict_draw_loss, run_dynamics, sample_displacements
from ..figures.plotting import new_figure, save_figure
from ..model import io
from ..model.network import INPUT_DISTRIBUTIONS, sample_inputs, sample_teacher
from .base import FLOAT64, SEED, Check, Experiment, ExperimentResult, Relation, Setting, activation_name, count, n_params, names, register

__all__ = ["cells", "excess_kurtosis", "finalize", "memory", "RELATIONS", "run_cell", "SETTINGS"]


def excess_kurtosis(distribution: str, df: float) -> float:
    """``E[x**4] - 3`` of the unit-variance input distributions of :func:`nearopt.model.network.sample_inputs`."""
    return {"gaussian": 0.0, "uniform": -1.2, "rademacher": -2.0}.get(distribution, 6.0 / (df - 4.0) if df > 4 else math.inf)


def cells(config: dict[str, Any]) -> list[dict[str, Any]]:
    return [dict(activation=a, distribution=d, **{k: config[k] for k in ("n_inputs", "n_hidden", "samples", "data_seeds", "df", "seed", "draws", "dyn_samples", "dyn_steps")})
            for a in config["activations"] for d in config["distributions"]]


def run_cell(cell: dict[str, Any]) -> dict[str, Any]:
    act, dist = cell["activation"], cell["distribution"]
    net = sample_teacher(cell["n_inputs"], cell["n_hidden"], act, seed=cell["seed"])
    kappa = excess_kurtosis(dist, cell["df"])
    gauss_spec, U_pop = make_objective(net).eigensystem()
    specs = {"gaussian": gauss_spec}
    if act == "quadratic" and math.isfinite(kappa):
        specs["kurtosis"] = make_objective(net, kurtosis=kappa).eigensystem()[0]
    batch_specs = [BatchGaussNewton(net, sample_inputs(cell["samples"], net.n_inputs, seed=1000 + s, distribution=dist, df=cell["df"])).spectrum("factor")
                   for s in range(cell["data_seeds"])]
    full = np.array([b.eigenvalues for b in batch_specs])  # (seeds, P)
    errors, pred = {}, {}
    for key, spec in specs.items():
        # compare the prediction's own nonzero eigenvalues with the batch eigenvalues of the same rank order
        r = spec.rank.rank
        pred[key] = spec.eigenvalues[-r:]
        errors[key] = np.median(np.abs(full[:, -r:] / pred[key][None, :] - 1), axis=0)
    rank = gauss_spec.rank.rank
    batches = full[:, -rank:]
    # dynamics: GD on a non-Gaussian batch vs the Gaussian-population quadratic prediction
    X = sample_inputs(cell["dyn_samples"], net.n_inputs, seed=7, distribution=dist, df=cell["df"])
    res = run_dynamics(net, X, sigma0=1e-5, steps=cell["dyn_steps"], draws=cell["draws"], seed=cell["seed"], points=30)
    delta0, _ = sample_displacements(net.n_params, cell["draws"], 1e-5, cell["seed"])
    pop_pred = predict_draw_loss(gauss_spec.eigenvalues, delta0 @ U_pop, res.lr, res.times).mean(0)
    v = res.valid
    return json.loads(io.to_json({
        "kurtosis": kappa,
        "rank": rank,
        "rank_predicted": {k: sp.rank.rank for k, sp in specs.items()},
        "rank_batch": [b.rank.rank for b in batch_specs],
        "batch_eigenvalues": batches,
        "predicted": pred,
        "rel_error_median_over_seeds": errors,
        "max_rel_error": {k: float(e.max()) for k, e in errors.items()},
        "mean_rel_error": {k: float(e.mean()) for k, e in errors.items()},
        "signed_rel_shift": (batches / pred["gaussian"][None, :] - 1).ravel(),
        "dyn_times": res.times,
        "dyn_loss": res.mean_loss,
        "dyn_pred_own_hessian": res.predicted_draw.mean(0),
        "dyn_pred_gauss_population": pop_pred,
        "dyn_dev_own_hessian": res.ensemble_deviation(),
        "dyn_dev_gauss_population": float(np.max(np.abs(res.mean_loss[v] / pop_pred[v] - 1))),
        "dyn_late_slope": res.late_time()["slope_measured"],
        "dyn_rate_gauss_population": -2 * res.lr * gauss_spec.smallest_nonzero,
    }, indent=None))


def finalize(config: dict[str, Any], cell_list: list[dict[str, Any]], results: list[dict[str, Any]], out_dir: Path) -> ExperimentResult:
    out_dir = Path(out_dir)
    acts = config["activations"]
    by = {(c["activation"], c["distribution"]): r for c, r in zip(cell_list, results)}
    checks: list[Check] = []
    rows = []
    for act in acts:
        g = by[(act, "gaussian")]
        for dist in config["distributions"]:
            r = by[(act, dist)]
            ks = stats.ks_2samp(r["signed_rel_shift"], g["signed_rel_shift"]) if dist != "gaussian" else None
            rows.append({"activation": act, "distribution": dist, "kurtosis": r["kurtosis"],
                         "rank_gaussian_population": r["rank"], "rank_kurtosis_corrected": r["rank_predicted"].get("kurtosis"),
                         "rank_batch": int(np.median(r["rank_batch"])),
                         "max_rel_error_vs_gaussian_population": r["max_rel_error"]["gaussian"],
                         "mean_rel_error_vs_gaussian_population": r["mean_rel_error"]["gaussian"],
                         "max_rel_error_vs_kurtosis_corrected": r["max_rel_error"].get("kurtosis"),
                         "ks_vs_gaussian_batches": None if ks is None else float(ks.statistic),
                         "ks_pvalue": None if ks is None else float(ks.pvalue),
                         "dyn_dev_own_hessian": r["dyn_dev_own_hessian"], "dyn_dev_gauss_population": r["dyn_dev_gauss_population"],
                         "dyn_late_slope": r["dyn_late_slope"], "dyn_rate_gauss_population": r["dyn_rate_gauss_population"]})
            if act == "linear" and dist != "gaussian":
                base = g["max_rel_error"]["gaussian"]
                checks.append(Check(f"linear, {dist}: spectrum as close to the Gaussian population as Gaussian batches are (universality)",
                                    f"<= 3 x Gaussian-batch error {base:.3g} + 0.01", r["max_rel_error"]["gaussian"], "3x + 0.01",
                                    bool(r["max_rel_error"]["gaussian"] <= 3 * base + 0.01)))
            if act == "quadratic" and dist in ("uniform", "rademacher"):
                corr, raw = r["max_rel_error"]["kurtosis"], r["max_rel_error"]["gaussian"]
                checks.append(Check(f"quadratic, {dist}: kurtosis-corrected population spectrum beats the Gaussian one",
                                    f"corrected < Gaussian ({raw:.3g}) and < 0.05", corr, "< min(Gaussian, 0.05)", bool(corr < raw and corr < 0.05)))
                checks.append(Check(f"quadratic, {dist}: rank of the kurtosis-corrected population Hessian = batch rank", r["rank_predicted"]["kurtosis"],
                                    r["rank_batch"], "exact, every seed", bool(all(b == r["rank_predicted"]["kurtosis"] for b in r["rank_batch"]))))
    # figure: per activation, relative eigenvalue shift vs Gaussian population, per distribution
    fig, axes = new_figure(1, len(acts) + 1, figsize=(3.4 * (len(acts) + 1), 3.4), squeeze=False)
    for ax, act in zip(axes[0], acts):
        for i, dist in enumerate(config["distributions"]):
            r = by[(act, dist)]
            lam = np.asarray(r["predicted"]["gaussian"])
            # markers only: neighbouring eigenvalues are separate measurements, not a curve
            ax.semilogx(lam, np.asarray(r["rel_error_median_over_seeds"]["gaussian"]) + 1e-16, "o", ms=3.5, color=f"C{i}", alpha=0.85, label=dist)
            if "kurtosis" in r["predicted"] and dist != "gaussian":
                lk = np.asarray(r["predicted"]["kurtosis"])
                ax.semilogx(lk, np.asarray(r["rel_error_median_over_seeds"]["kurtosis"]) + 1e-16, "x", ms=4.5, color=f"C{i}", label=f"{dist}, κ-corrected")
        ax.set_yscale("log")
        ax.set_xlabel(r"Gaussian population eigenvalue $\lambda_k$")
        ax.set_ylabel(r"median $|\lambda_k^{\rm batch}/\lambda_k - 1|$")
        ax.set_title(f"{act}, N={config['samples']}", fontsize=9)
        ax.legend(fontsize=6)
    ax = axes[0][-1]
    act = config["dynamics_activation"]
    for i, dist in enumerate(config["distributions"]):
        r = by[(act, dist)]
        t = np.asarray(r["dyn_times"])
        m = t > 0
        ax.loglog(t[m], np.asarray(r["dyn_loss"])[m], "o", ms=2.5, color=f"C{i}", label=f"{dist} measured")
        ax.loglog(t[m], np.asarray(r["dyn_pred_gauss_population"])[m], "-", lw=0.8, color=f"C{i}")
    ax.set_xlabel("GD step t")
    ax.plot([], [], "-", lw=0.8, color="0.3", label="lines: Gaussian-population prediction")
    ax.set_ylabel(r"$\langle L_t\rangle$")
    ax.set_title(f"{act} student, N={config['dyn_samples']}", fontsize=9)
    ax.legend(fontsize=6)
    figures = [save_figure(fig, out_dir / "nongaussian")[0]]
    data = [io.write_json(out_dir / "nongaussian.json", {"definition": __doc__, "rows": rows, "cells": results})]
    lines = ["| activation | inputs | κ | rank: Gauss pop. / batch | max rel. err vs Gauss pop. | κ-corrected (rank) | KS vs Gauss batches | dyn. dev vs Gauss pop. |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        kc = "" if r["max_rel_error_vs_kurtosis_corrected"] is None else f"{r['max_rel_error_vs_kurtosis_corrected']:.3g} ({r['rank_kurtosis_corrected']})"
        ks = "" if r["ks_vs_gaussian_batches"] is None else f"{r['ks_vs_gaussian_batches']:.2f} (p={r['ks_pvalue']:.2g})"
        lines.append(f"| {r['activation']} | {r['distribution']} | {r['kurtosis']:.3g} | {r['rank_gaussian_population']} / {r['rank_batch']} | {r['max_rel_error_vs_gaussian_population']:.3g} | {kc} | {ks} | {r['dyn_dev_gauss_population']:.3g} |")
    summary = (
        f"Unit-variance non-Gaussian inputs (Student-t df={config['df']}), N_i={config['n_inputs']}, N_h={config['n_hidden']}, "
        f"N={config['samples']}, {config['data_seeds']} data seeds. Linear spectra stay at the Gaussian prediction (only second "
        "moments enter); quadratic spectra move by the excess-kurtosis term, which the corrected closed form predicts (for "
        "Rademacher inputs x_i**2 = 1, so the diagonal of A drops out and the rank falls); erf moves by a measured amount (Rademacher "
        "inputs take only 2**N_i values, which caps the batch rank). The dynamics column is the largest relative deviation of the "
        "measured GD loss from the Gaussian-population prediction for the same draws (a finite-N batch alone gives the Gaussian row).\n\n" + "\n".join(lines)
    )
    return ExperimentResult("non-gaussian", checks, figures, data, summary, dict(config))


SETTINGS = (
    names("activations"),
    names("distributions", Setting("distribution", str, choices=INPUT_DISTRIBUTIONS)),
    count("n_inputs", 10**4),
    count("n_hidden", 10**4),
    count("samples", 10**8),
    count("data_seeds", 1000),
    Setting("df", float, low=4.0, low_open=True, high=1e6),
    SEED,
    count("draws", 10**4),
    count("dyn_samples", 10**8),
    count("dyn_steps", 10**6),
    Setting("dynamics_activation", str, check=activation_name),
)
RELATIONS = (Relation("dynamics_activation is one of activations", lambda c: c["dynamics_activation"] in c["activations"]),)


def memory(config: dict[str, Any]) -> float:
    """The batch Jacobian ``(N, P)`` and its factorisation (a few copies), for the spectrum or the dynamics batch."""
    P = n_params(config["n_inputs"], config["n_hidden"])
    return FLOAT64 * (3.0 * max(config["samples"], config["dyn_samples"]) * P + 4.0 * P * P)


register(
    Experiment(
        name="non-gaussian",
        description="spectrum and dynamics with uniform, Rademacher and Student-t inputs against the Gaussian prediction",
        quick={"activations": ["linear", "quadratic", "erf"], "distributions": ["gaussian", "uniform", "rademacher", "student-t"],
               "n_inputs": 4, "n_hidden": 3, "samples": 20000, "data_seeds": 3, "df": 5.0, "seed": 0,
               "draws": 4, "dyn_samples": 2000, "dyn_steps": 200, "dynamics_activation": "quadratic"},
        full={"activations": ["linear", "quadratic", "erf"], "distributions": ["gaussian", "uniform", "rademacher", "student-t"],
              "n_inputs": 8, "n_hidden": 6, "samples": 200000, "data_seeds": 10, "df": 5.0, "seed": 0,
              "draws": 16, "dyn_samples": 20000, "dyn_steps": 2000, "dynamics_activation": "quadratic"},
        cells=cells,
        run_cell=run_cell,
        finalize=finalize,
        settings=SETTINGS,
        relations=RELATIONS,
        memory=memory,
    )
)
