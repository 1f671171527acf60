"""Experiment ``dynamics``: training near the optimum against the quadratic prediction.

Per case (activation, size, GD or gradient flow): train ``K`` students from
``theta* + delta_0`` on a batch, record ``L_t`` on a log time grid and compare with
``1/2 sum_k lambda_k decay_k(t)**2 c_k(0)**2`` (each draw) and ``<L_t>`` (ensemble)
from the batch Hessian at ``theta*``; fit the late-time slope of ``log <L_t>``. One
more cell checks the soft-edge law ``<L_t> ~ t**-3/2 exp(-2 eta lambda_- t)`` of a
large linear network (docs/theory.md §5.4) from its exact spectrum against the MP integral.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

from ..dynamics import linear_edge_asymptote, linear_edge_loss, predict_mean_loss, run_dynamics
from ..errors import NearoptError
from ..figures.plotting import new_figure, save_figure
from ..model import io
from ..model.network import sample_inputs, sample_teacher
from .base import (
    ACTIVATION,
    FLOAT64,
    SEED,
    Check,
    Experiment,
    ExperimentResult,
    Relation,
    Setting,
    check_below,
    check_equal,
    count,
    n_params,
    register,
    sigma0,
)

__all__ = ["cells", "finalize", "LINEAR_RTOL", "memory", "RELATIONS", "run_cell", "SETTINGS", "SLOPE_RTOL"]

#: relative error allowed between the fitted late-time slope and the theory rate
SLOPE_RTOL = 0.03
#: linear student: each draw's loss against its own quadratic prediction
LINEAR_RTOL = 0.01

_CASES_QUICK = [
    {"activation": "linear", "n_inputs": 4, "n_hidden": 3, "samples": 1000, "sigma0": 1e-6, "flow": False, "steps": 30},
    {"activation": "quadratic", "n_inputs": 4, "n_hidden": 3, "samples": 1000, "sigma0": 1e-4, "flow": False, "steps": "auto"},
    {"activation": "erf", "n_inputs": 4, "n_hidden": 3, "samples": 1000, "sigma0": 1e-4, "flow": True, "steps": "auto"},
]
_CASES_FULL = [
    {"activation": "linear", "n_inputs": 10, "n_hidden": 20, "samples": 5000, "sigma0": 1e-6, "flow": False, "steps": 400},
    {"activation": "quadratic", "n_inputs": 6, "n_hidden": 4, "samples": 2000, "sigma0": 1e-4, "flow": True, "steps": "auto"},
    {"activation": "quadratic", "n_inputs": 4, "n_hidden": 3, "samples": 2000, "sigma0": 1e-4, "flow": False, "steps": "auto"},
    {"activation": "erf", "n_inputs": 4, "n_hidden": 3, "samples": 2000, "sigma0": 1e-4, "flow": False, "steps": "auto"},
    {"activation": "erf", "n_inputs": 6, "n_hidden": 6, "samples": 1000, "sigma0": 1e-4, "flow": True, "steps": "auto"},
]


def cells(config: dict[str, Any]) -> list[dict[str, Any]]:
    out = [dict(case, kind="train", draws=config["draws"], seed=config["seed"], points=config["points"]) for case in config["cases"]]
    out.append(dict(config["edge"], kind="edge", seed=config["seed"]))
    return out


def _edge_cell(cell: dict[str, Any]) -> dict[str, Any]:
    """Exact-spectrum ``<L_t>`` of a large linear teacher vs the MP integral and its asymptote (flow)."""
    ni, nh = cell["n_inputs"], cell["n_hidden"]
    net = sample_teacher(ni, nh, "linear", seed=cell["seed"])
    s = float(np.sum(net.W2**2))
    lam = s + np.linalg.eigvalsh(net.W1.T @ net.W1)  # nonzero population spectrum (docs/theory.md §3.1)
    sigma1, lr = 1.0 / math.sqrt(ni), 1.0 / float(lam.max())
    lam_lo = s + sigma1**2 * nh * (1 - math.sqrt(ni / nh)) ** 2
    # up to 2 eta lambda_- t = t_units: far enough for the asymptote, short of underflow
    times = np.logspace(0, math.log10(cell["t_units"] / (2 * lr * lam_lo)), cell["points"])
    kw = {"n_inputs": ni, "n_hidden": nh, "s": s, "sigma1": sigma1, "sigma0": 1.0, "lr": lr}
    exact = predict_mean_loss(lam, 1.0, lr, times, flow=True)
    mp = linear_edge_loss(times, flow=True, **kw)
    asym = linear_edge_asymptote(times, **kw)
    # local exponent d log(<L> e^{2 eta lambda_- t}) / d log t of the MP curve over its last decade
    late = times >= times[-1] / 10
    expo = float(np.polyfit(np.log(times[late]), np.log(mp[late]) + 2 * lr * lam_lo * times[late], 1)[0])
    mid = (times >= cell["window"][0]) & (times <= cell["window"][1])
    return {
        "kind": "edge",
        "times": times,
        "exact": exact,
        "mp": mp,
        "asymptote": asym,
        "lambda_edge": lam_lo,
        "lambda_min_exact": float(lam.min()),
        "lr": lr,
        "edge_exponent_mp": expo,
        "exact_vs_mp_window": list(cell["window"]),
        "exact_vs_mp_max_rel": float(np.max(np.abs(exact[mid] / mp[mid] - 1))),
    }


def run_cell(cell: dict[str, Any]) -> dict[str, Any]:
    if cell["kind"] == "edge":
        return json.loads(io.to_json(_edge_cell(cell), indent=None))
    net = sample_teacher(cell["n_inputs"], cell["n_hidden"], cell["activation"], seed=cell["seed"])
    X = sample_inputs(cell["samples"], cell["n_inputs"], seed=cell["seed"])
    res = run_dynamics(net, X, sigma0=cell["sigma0"], steps=cell["steps"], draws=cell["draws"], flow=cell["flow"], seed=cell["seed"], points=cell["points"])
    d = res.to_dict()
    d["kind"] = "train"
    d["mode_decay_predicted"] = (
        np.exp(-2 * res.lr * np.outer(res.times, res.eigenvalues)) if res.flow else (1 - res.lr * res.eigenvalues[None, :]) ** (2 * res.times[:, None])
    )
    return json.loads(io.to_json(d, indent=None))  # plain lists and floats for workers and caches


def _label(r: dict[str, Any]) -> str:
    return f"{r['activation']} $N_i$={r['N_i']} $N_h$={r['N_h']} N={r['samples']} ({'flow' if r['integrator'] != 'gd' else 'GD'})"


def _plot_losses(trains: list[dict[str, Any]], stem: Path) -> list[Path]:
    n = len(trains)
    fig, axes = new_figure(1, n, figsize=(3.6 * n, 3.4), squeeze=False)
    for ax, r in zip(axes[0], trains):
        t = np.asarray(r["times"])
        pos = t > 0
        ax.loglog(t[pos], np.asarray(r["loss_mean"])[pos], "o", ms=3, label=r"measured $\langle L_t\rangle$")
        ax.loglog(t[pos], np.asarray(r["predicted_mean"])[pos], "-", label=r"$\frac{\sigma_0^2}{2}\sum_k\lambda_k d_k(t)^2$")
        ax.loglog(t[pos], np.asarray(r["predicted_draw_mean"])[pos], "--", label="same draws, quadratic")
        lt = r["late_time"]
        if lt["window"]:
            t1 = lt["window"][1]
            L1 = np.interp(t1, t, np.asarray(r["loss_mean"]))
            tt = np.linspace(lt["window"][0] / 2, t1, 50)
            rate = lt["rate_continuous"] if r["integrator"] != "gd" else lt["rate_exact"]
            ax.loglog(tt, L1 * np.exp(-rate * (tt - t1)), ":", color="k", label=r"$e^{-2\eta\lambda^+_{\min} t}$")
        ax.axhline(r["float_floor"], color="0.6", lw=0.8, ls="-.", label="float floor")
        ax.set_xlabel("t (steps; flow time in units of 1/η)")
        ax.set_ylabel(r"loss $L_t$")
        ax.set_title(_label(r), fontsize=8)
    axes[0][0].legend(loc="lower left")
    return save_figure(fig, stem)


def _plot_modes(trains: list[dict[str, Any]], stem: Path) -> list[Path]:
    n = len(trains)
    fig, axes = new_figure(1, n, figsize=(3.6 * n, 3.4), squeeze=False)
    for ax, r in zip(axes[0], trains):
        t = np.asarray(r["times"])
        pos = t > 0
        power = np.asarray(r["mode_power"])
        pred = np.asarray(r["mode_decay_predicted"])
        lam = np.asarray(r["eigenvalues"])
        n_zero = lam.size - r["rank"]
        cmap = matplotlib.colormaps["viridis"]
        logs = np.log10(lam[n_zero:])
        span = max(np.ptp(logs), 1e-12) if logs.size else 1.0
        for k in range(lam.size):
            if k < n_zero:
                ax.loglog(t[pos], power[pos, k], color="0.5", lw=0.8, label="zero modes" if k == 0 else None)
            else:
                c = cmap((logs[k - n_zero] - logs.min()) / span)
                ax.loglog(t[pos], power[pos, k], color=c, lw=1.0, label=r"$\lambda^+_{\min}$ mode" if k == n_zero else None)
                ax.loglog(t[pos], pred[pos, k], color=c, lw=0.6, ls="--")
        ax.set_ylim(1e-16, 10)
        ax.set_xlabel("t")
        ax.set_ylabel(r"$\langle c_k(t)^2\rangle / \langle c_k(0)^2\rangle$")
        ax.set_title(_label(r) + "\ncolour: log λ (dashed: prediction)", fontsize=8)
    axes[0][0].legend(loc="lower left")
    return save_figure(fig, stem)


def _plot_edge(e: dict[str, Any], cell: dict[str, Any], stem: Path) -> list[Path]:
    """``<L_t>`` with the edge's exponential ``e^{-2 eta lambda_- t}`` divided out, so the
    soft edge's ``t^{-3/2}`` is a straight line and the axis spans a few decades, not 10^-128."""
    fig, ax = new_figure(figsize=(4.6, 3.2))
    t = np.asarray(e["times"])
    undo = np.exp(2 * e["lr"] * e["lambda_edge"] * t)  # e^{2 eta lambda_- t}
    exact, mp, asym = (np.asarray(e[k]) * undo for k in ("exact", "mp", "asymptote"))
    ax.loglog(t, exact, "o", ms=2.5, label=f"exact spectrum ($N_i$={cell['n_inputs']}, $N_h$={cell['n_hidden']})")
    if e["lambda_min_exact"] < e["lambda_edge"]:  # finite size: the last eigenvalue lies below the edge
        ax.plot([], [], " ", label=r"(rises late: its $\lambda_{\min}$ < $\lambda_-$ at finite size)")
    ax.loglog(t, mp, "-", label=r"$\chi^2 \oplus$ MP integral")
    ax.loglog(t, asym, "--", label=r"asymptote $\propto t^{-3/2}$")
    shown = np.concatenate([exact, mp])
    shown = shown[np.isfinite(shown) & (shown > 0)]
    ax.set_ylim(shown.min() / 3, shown.max() * 3)
    ax.set_xlabel(r"flow time $t$ (units of $1/\eta$, $\eta = 1/\lambda_{\max}$)")
    ax.set_ylabel(r"$e^{2\eta\lambda_- t}\,\langle L_t\rangle / \sigma_0^2$")
    ax.set_title(f"linear net, soft spectral edge $\\lambda_-$: fitted exponent {e['edge_exponent_mp']:.3f} (theory −1.5)", fontsize=8)
    ax.legend(fontsize=7)
    return save_figure(fig, stem)


def _fmt(x: float, spec: str) -> str:
    """Format a table number; a NaN means no late-time window (loss hit the float floor first)."""
    return format(x, spec) if np.isfinite(x) else "— (float floor first)"


def _window(w: list[float] | None) -> str:
    return f"[{w[0]:.4g}, {w[1]:.4g}]" if w else "none"


def finalize(config: dict[str, Any], cell_list: list[dict[str, Any]], results: list[dict[str, Any]], out_dir: Path) -> ExperimentResult:
    out_dir = Path(out_dir)
    trains = [r for r in results if r["kind"] == "train"]
    edge = next(r for r in results if r["kind"] == "edge")
    edge_cell = next(c for c in cell_list if c["kind"] == "edge")
    figures = [
        _plot_losses(trains, out_dir / "dynamics_loss")[0],
        _plot_modes(trains, out_dir / "dynamics_modes")[0],
        _plot_edge(edge, edge_cell, out_dir / "dynamics_edge")[0],
    ]
    keys = ("activation", "N_i", "N_h", "P", "samples", "integrator", "lr", "sigma0", "draws", "rank", "lambda_max", "lambda_min_nonzero",
            "condition_number", "float_floor", "max_rel_error_per_draw", "max_rel_error_mean", "ensemble_deviation", "zero_mode_drift",
            "slowest_remaining_mode", "slowest_nonzero_mode", "late_time")
    table = [{k: r[k] for k in keys} for r in trains]
    data = [
        io.write_json(out_dir / "dynamics.json", {"cases": table, "edge": {k: v for k, v in edge.items() if k not in ("times", "exact", "mp", "asymptote")}}),
        io.write_npz(out_dir / "dynamics_curves.npz", **{f"{i}_{r['activation']}_{k}": np.asarray(r[k]) for i, r in enumerate(trains) for k in ("times", "loss_mean", "predicted_mean", "predicted_draw_mean", "mode_power")}),
    ]
    checks: list[Check] = []
    lines = ["| case | κ | per-draw max rel. err | ⟨L⟩ vs formula | fitted slope | −2ηλ⁺min | exact GD rate | rel. err |", "|---|---|---|---|---|---|---|---|"]
    for r in trains:
        lt = r["late_time"]
        name = f"{r['activation']} {r['N_i']}x{r['N_h']} {r['integrator']}"
        if r["activation"] == "linear":
            checks.append(check_below(f"{name}: max relative error of each draw's loss vs its quadratic prediction (until the float floor)", r["max_rel_error_per_draw"], LINEAR_RTOL))
        ref = "rel_error_vs_continuous" if r["integrator"] != "gd" else "rel_error_vs_exact"
        if r["activation"] != "linear":
            checks.append(check_below(f"{name}: late-time slope vs {'−2ηλ⁺min' if r['integrator'] != 'gd' else 'exact GD rate 2|log(1−ηλ⁺min)|'} (relative error)", lt[ref], SLOPE_RTOL,
                                      detail=f"window {_window(lt['window'])}, slope {lt['slope_measured']:.6g}, −2ηλ⁺min = {-lt['rate_continuous']:.6g}"))
            if r["P"] == r["rank"]:
                # with zero modes the minimum manifold is curved: the other coordinates settle at O(sigma0**2) offsets
                checks.append(check_equal(f"{name}: slowest nonzero mode is the one left at the end", r["slowest_nonzero_mode"], r["slowest_remaining_mode"]))
        if r["P"] > r["rank"]:
            checks.append(check_below(f"{name}: zero modes frozen (max |Δc_k| / |δ0|)", r["zero_mode_drift"], 1e-2))
        lines.append(f"| {name} | {r['condition_number']:.3g} | {r['max_rel_error_per_draw']:.2e} | {r['max_rel_error_mean']:.2f} | {_fmt(lt['slope_measured'], '.5g')} | {-lt['rate_continuous']:.5g} | {-lt['rate_exact']:.5g} | {_fmt(lt[ref], '.2e')} |")
    checks.append(check_below("soft edge: |fitted exponent of MP-curve + 1.5|", abs(edge["edge_exponent_mp"] + 1.5), 0.1, detail=f"exponent {edge['edge_exponent_mp']:.4f}"))
    stalls = [
        f"{r['activation']} {r['N_i']}x{r['N_h']}: {len(r['stalled_draws'])} of {r['draws']} draws stalled near the rounding level "
        f"(first at t = {min(x['time'] for x in r['stalled_draws']):.4g} of {r['times'][-1]:.4g}); their later points are left out"
        for r in trains if r.get("stalled_draws")
    ]
    if stalls:
        lines.append("\n" + "; ".join(stalls) + ".")
    summary = (
        "Training from θ* + δ0 follows the quadratic prediction: for the linear student each draw's loss matches "
        "½Σλ_k(1−ηλ_k)^{2t}c_k(0)² to the relative error shown until the float floor; ⟨L⟩ against the ensemble formula "
        f"differs by sampling noise ~√(2/K) with K = {config['draws']} draws once few modes remain. Late-time slopes "
        "(GD compared with its exact per-step rate 2|log(1−ηλ⁺min)|, flow with 2ηλ⁺min):\n\n" + "\n".join(lines) +
        f"\n\nSoft edge (linear, N_i={edge_cell['n_inputs']}, N_h={edge_cell['n_hidden']}): MP-integral exponent "
        f"{edge['edge_exponent_mp']:.3f} (theory −3/2); exact spectrum vs MP integral within {edge['exact_vs_mp_max_rel']:.1%} over t ∈ {edge['exact_vs_mp_window']}."
    )
    return ExperimentResult("dynamics", checks, figures, data, summary, dict(config))


def _steps(value: Any) -> None:
    if value != "auto" and not (isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 10**7):
        raise NearoptError("steps must be 'auto' or an integer from 1 to 10000000")


_SIGMA0 = sigma0()
_CASE = Setting("case", dict, fields=(
    ACTIVATION, count("n_inputs", 10**4), count("n_hidden", 10**4), count("samples", 10**8), _SIGMA0, Setting("flow", bool), Setting("steps", check=_steps),
))
SETTINGS = (
    Setting("cases", list, nonempty=True, item=_CASE),
    count("draws", 10**4),
    SEED,
    count("points", 10**4, low=2),
    Setting("edge", dict, fields=(
        count("n_inputs", 10**5), count("n_hidden", 10**5), Setting("t_units", float, low=0.0, low_open=True, high=1e4), count("points", 10**5, low=2),
        Setting("window", list, length=2, item=Setting("t", float, low=0.0, low_open=True, high=1e12)),
    )),
)
RELATIONS = (
    Relation("edge.n_inputs < edge.n_hidden (the soft edge of N_i / N_h < 1)", lambda c: c["edge"]["n_inputs"] < c["edge"]["n_hidden"]),
    Relation("edge.window[0] < edge.window[1]", lambda c: c["edge"]["window"][0] < c["edge"]["window"][1]),
)


def memory(config: dict[str, Any]) -> float:
    """Train cells: the batch Jacobian ``(N, P)``, Hessian ``(P, P)`` and per-draw records; the edge cell: ``W1^T W1`` and its curves."""
    worst = 0.0
    for case in config["cases"]:
        P = n_params(case["n_inputs"], case["n_hidden"])
        worst = max(worst, FLOAT64 * (3.0 * case["samples"] * P + 4.0 * P * P + 2.0 * config["draws"] * config["points"] * P))
    e = config["edge"]
    return max(worst, FLOAT64 * (4.0 * e["n_inputs"] ** 2 + e["n_inputs"] * e["n_hidden"] + 8.0 * e["points"] * e["n_inputs"]))


register(
    Experiment(
        name="dynamics",
        description="GD / gradient flow from θ*+δ0: measured loss vs the quadratic prediction, late-time slope vs −2ηλ⁺min, mode decay, MP soft-edge law",
        quick={"cases": _CASES_QUICK, "draws": 8, "seed": 0, "points": 40,
               "edge": {"n_inputs": 200, "n_hidden": 800, "t_units": 300.0, "points": 60, "window": [1.0, 30.0]}},
        full={"cases": _CASES_FULL, "draws": 32, "seed": 0, "points": 60,
              "edge": {"n_inputs": 1000, "n_hidden": 4000, "t_units": 600.0, "points": 80, "window": [1.0, 100.0]}},
        cells=cells,
        run_cell=run_cell,
        finalize=finalize,
        settings=SETTINGS,
        relations=RELATIONS,
        memory=memory,
    )
)
