"""Experiment ``breakdown``: at which ``sigma0`` does the quadratic picture of training fail?

For each activation and ``sigma0`` (log grid), train ``K`` students from
``theta* + delta_0`` (GD for linear/quadratic, gradient flow for erf) and measure

    D(sigma0) = max_t | <L_t>_measured / <L_t^quad> - 1 |

where ``<L_t^quad>`` is the mean over the *same* draws of the quadratic prediction
``1/2 sum_k lambda_k decay_k(t)**2 c_k(0)**2`` and ``t`` runs over the recorded times
whose prediction lies above the float floor (a diverged run counts as ``D = inf``).
Using the same draws removes the sampling noise in ``delta_0``: ``D`` measures
nonlinearity only. ``sigma0*`` is where ``D`` first exceeds 10 %, interpolated
linearly in ``(log sigma0, log D)`` between the bracketing grid points.

The runs above train on the batch loss of ``N`` samples. For the activations in
``population_for`` the same students also train (gradient flow) on the *exact*
population loss (:class:`~nearopt.dynamics.exact_objective.ExactPopulationObjective`:
pair moments, no sample), compared with the quadratic prediction from the exact
population Hessian at the teacher: the breakdown of the true population dynamics,
on the grid ``population_sigma0``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..dynamics import run_dynamics
from ..dynamics.exact_objective import exact_population_objective
from ..errors import NearoptError
from ..figures.plotting import new_figure, save_figure
from ..model import io
from ..model.network import sample_inputs, sample_teacher
from .base import FLOAT64, SEED, Check, Experiment, ExperimentResult, Relation, Setting, check_below, count, n_params, names, register, sigma0

__all__ = ["cells", "crossing", "finalize", "memory", "RELATIONS", "run_cell", "SETTINGS", "THRESHOLD"]

THRESHOLD = 0.10


def cells(config: dict[str, Any]) -> list[dict[str, Any]]:
    sig = np.logspace(math.log10(config["sigma0_min"]), math.log10(config["sigma0_max"]), config["n_sigma0"])
    return [
        {"activation": a, "sigma0": float(s), "flow": a in config["flow_for"], "n_inputs": config["n_inputs"], "n_hidden": config["n_hidden"],
         "samples": config["samples"], "draws": config["draws"], "seed": config["seed"], "points": config["points"]}
        for a in config["activations"] for s in sig
    ] + [
        {"activation": a, "sigma0": float(s), "flow": True, "n_inputs": config["n_inputs"], "n_hidden": config["n_hidden"],
         "samples": None, "draws": config["draws"], "seed": config["seed"], "points": config["points"], "objective": "population-exact"}
        for a in config.get("population_for", []) for s in config.get("population_sigma0", [])
    ]


def run_cell(cell: dict[str, Any]) -> dict[str, Any]:
    net = sample_teacher(cell["n_inputs"], cell["n_hidden"], cell["activation"], seed=cell["seed"])
    exact = cell.get("objective") == "population-exact"
    X = None if exact else sample_inputs(cell["samples"], cell["n_inputs"], seed=cell["seed"])
    try:
        res = run_dynamics(net, X, sigma0=cell["sigma0"], draws=cell["draws"], flow=cell["flow"], seed=cell["seed"], points=cell["points"],
                           objective=exact_population_objective(net) if exact else None)
    except NearoptError as exc:  # e.g. the stiff integrator gives up far from the optimum
        return {"deviation": float("inf"), "failed": str(exc)}
    dev = float("inf") if res.diverged else res.ensemble_deviation()
    pred = res.predicted_draw.mean(0)
    return json.loads(io.to_json({
        "deviation": dev,
        "diverged": res.diverged,
        "theta_scale": float(np.linalg.norm(net.parameters()) / math.sqrt(net.n_params)),
        "times": res.times,
        "loss_mean": res.mean_loss,
        "predicted": pred,
        "valid": res.valid,
    }, indent=None))


def crossing(sigma0: np.ndarray, dev: np.ndarray, threshold: float = THRESHOLD) -> float:
    """First ``sigma0`` where ``dev`` exceeds ``threshold``, log-log interpolated (``nan`` if never, ``sigma0[0]`` if at once)."""
    above = np.where(dev > threshold)[0]
    if above.size == 0:
        return float("nan")
    i = above[0]
    if i == 0:
        return float(sigma0[0])
    x0, x1 = math.log(sigma0[i - 1]), math.log(sigma0[i])
    y0 = math.log(max(dev[i - 1], 1e-300))
    y1 = math.log(dev[i]) if math.isfinite(dev[i]) else y0 + 50.0  # diverged: crossing right after the last good point
    return float(math.exp(x0 + (math.log(threshold) - y0) * (x1 - x0) / (y1 - y0)))


def finalize(config: dict[str, Any], cell_list: list[dict[str, Any]], results: list[dict[str, Any]], out_dir: Path) -> ExperimentResult:
    out_dir = Path(out_dir)
    table, checks = [], []
    fig, (ax, ax2) = new_figure(1, 2, figsize=(9.0, 3.6))
    variants = [(a, "batch") for a in config["activations"]] + [(a, "population-exact") for a in config.get("population_for", []) if config.get("population_sigma0")]
    for act, objective in variants:
        rows = [(c, r) for c, r in zip(cell_list, results) if c["activation"] == act and c.get("objective", "batch") == objective]
        if objective != "batch":
            act = f"{act} (exact population)"
        sig = np.array([c["sigma0"] for c, _ in rows])
        dev = np.array([r["deviation"] for _, r in rows], dtype=float)
        star = crossing(sig, dev)
        small = np.isfinite(dev) & (dev < 0.05) & (dev > 0)
        slope = float(np.polyfit(np.log(sig[small]), np.log(dev[small]), 1)[0]) if small.sum() >= 2 else float("nan")
        table.append({"activation": act, "sigma0": sig, "deviation": dev, "sigma0_star": star, "small_sigma_exponent": slope,
                      "integrator": "flow" if rows[0][0]["flow"] else "gd", "theta_rms": rows[0][1].get("theta_scale")})
        line, = ax.loglog(sig, np.where(np.isfinite(dev), dev, np.nan), "o-", label=f"{act} ({'flow' if rows[0][0]['flow'] else 'GD'}): σ0* = {star:.2g}")
        if math.isfinite(star):
            ax.axvline(star, color=line.get_color(), ls=":", lw=0.8)
        checks.append(Check(f"{act}: sigma0 where the deviation exceeds 10% is found in the sweep", f"in [{sig[0]:g}, {sig[-1]:g}]", star, "finite",
                            bool(math.isfinite(star) and star > sig[0])))
        checks.append(check_below(f"{act}: deviation at the smallest sigma0 = {sig[0]:g}", float(dev[0]), 0.01))
        # curves at the sigma0 just past the crossing
        j = int(np.argmin(np.abs(np.log(sig) - np.log(star)))) if math.isfinite(star) else len(rows) - 1
        r = rows[j][1]
        if "times" in r:
            t = np.asarray(r["times"])
            m = t > 0
            ax2.loglog(t[m], np.asarray(r["loss_mean"])[m] / sig[j] ** 2, "o", ms=2.5, color=line.get_color(), label=f"{act}, σ0={sig[j]:.2g} measured")
            ax2.loglog(t[m], np.asarray(r["predicted"])[m] / sig[j] ** 2, "-", lw=0.9, color=line.get_color(), label="quadratic prediction")
    ax.axhline(THRESHOLD, color="k", lw=0.8, ls="--", label="10 %")
    ax.set_xlabel(r"$\sigma_0$ (std of each entry of $\delta_0$)")
    ax.set_ylabel(r"$D = \max_t |\langle L_t\rangle / \langle L^{\rm quad}_t\rangle - 1|$")
    ax.legend(fontsize=7)
    ax2.set_xlabel("t (steps / flow time)")
    ax2.set_ylabel(r"$\langle L_t\rangle / \sigma_0^2$")
    ax2.set_title("curves near σ0*", fontsize=9)
    ax2.legend(fontsize=6)
    figures = [save_figure(fig, out_dir / "breakdown")[0]]
    data = [io.write_json(out_dir / "breakdown.json", {"definition": __doc__, "results": table})]
    lines = ["| activation | integrator | σ0* (D = 10 %) | D ∝ σ0^a at small σ0, a = |", "|---|---|---|---|"]
    lines += [f"| {t['activation']} | {t['integrator']} | {t['sigma0_star']:.3g} | {t['small_sigma_exponent']:.2f} |" for t in table]
    summary = (
        f"Quadratic picture vs real training, N_i={config['n_inputs']}, N_h={config['n_hidden']}, N={config['samples']}, "
        f"K={config['draws']} draws, teacher weights of rms ~{table[0]['theta_rms']:.2g}. D is the largest relative deviation of the "
        "measured mean loss from the mean quadratic prediction of the same draws over the recorded times.\n\n" + "\n".join(lines)
    )
    return ExperimentResult("breakdown", checks, figures, data, summary, dict(config))


SETTINGS = (
    names("activations"),
    names("flow_for", nonempty=False),
    count("n_inputs", 10**4),
    count("n_hidden", 10**4),
    count("samples", 10**8),
    sigma0("sigma0_min"),
    sigma0("sigma0_max"),
    count("n_sigma0", 1000),
    count("draws", 10**4),
    SEED,
    count("points", 10**4, low=2),
    names("population_for", nonempty=False),
    Setting("population_sigma0", list, unique=True, item=sigma0()),
)
RELATIONS = (
    Relation("sigma0_min < sigma0_max (or n_sigma0 = 1 and sigma0_min = sigma0_max)",
             lambda c: c["sigma0_min"] < c["sigma0_max"] or (c["n_sigma0"] == 1 and c["sigma0_min"] == c["sigma0_max"])),
    Relation("every flow_for activation is in activations", lambda c: set(c["flow_for"]) <= set(c["activations"])),
    Relation("population_sigma0 is non-empty when population_for is", lambda c: bool(c["population_sigma0"]) or not c["population_for"]),
)


def memory(config: dict[str, Any]) -> float:
    """The batch Jacobian ``(N, P)`` and Hessian ``(P, P)`` (a few copies) and the recorded losses of every draw."""
    P = n_params(config["n_inputs"], config["n_hidden"])
    return FLOAT64 * (3.0 * config["samples"] * P + 4.0 * P * P + 2.0 * config["draws"] * config["points"] * P)


register(
    Experiment(
        name="breakdown",
        description="sweep sigma0 over decades: where does the quadratic (Hessian) prediction of training stop holding?",
        quick={"activations": ["linear", "quadratic", "erf"], "flow_for": ["erf"], "n_inputs": 4, "n_hidden": 3, "samples": 500,
               "sigma0_min": 1e-4, "sigma0_max": 1.0, "n_sigma0": 5, "draws": 4, "seed": 0, "points": 25,
               "population_for": ["erf"], "population_sigma0": [1e-4, 1e-2, 1.0]},
        full={"activations": ["linear", "quadratic", "erf"], "flow_for": ["erf"], "n_inputs": 6, "n_hidden": 4, "samples": 2000,
              "sigma0_min": 1e-5, "sigma0_max": 1.0, "n_sigma0": 16, "draws": 16, "seed": 0, "points": 40,
              "population_for": ["erf"], "population_sigma0": [1e-5, 1e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0]},
        cells=cells,
        run_cell=run_cell,
        finalize=finalize,
        settings=SETTINGS,
        relations=RELATIONS,
        memory=memory,
    )
)
