"""Experiment ``overparameterized``: Hessian spectra on the global-minimum manifold of wider students.

A teacher of width ``M`` is learned by students of width ``K > M`` placed on the
manifold of global minima (:mod:`nearopt.landscape.manifold`): split units (ratios), dead
units (zero outgoing weight), sign flips, rescalings, permutations. At each point
the exact population Hessian (:class:`~nearopt.curvature.population.PopulationHessian`,
residual term included) is compared with theory (``docs/students.md``):

* ``points``: measured rank (one rank rule) = predicted rank (span of the tangent
  functions by groups of copies), for both layers, the first only (committee
  machine) and the second only; the nonzero spectrum equals
  ``spec(D^(1/2) H_compact D^(1/2))``; no negative eigenvalue; zero loss;
* ``ratio``: the smallest nonzero eigenvalue after splitting one unit into
  ``(alpha, 1 - alpha)``, against the teacher's, inside Ostrowski's bounds
  ``[min D, max D]``;
* ``width``: the smallest nonzero eigenvalue against the excess width (dead units;
  even splits of every unit);
* ``dynamics``: gradient descent on the exact population loss from a manifold point
  plus ``delta_0 ~ N(0, sigma0^2 I)`` against the quadratic (spectral) prediction there.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..curvature.population import PopulationHessian
from ..dynamics.exact_objective import exact_population_objective
from ..dynamics.train import run_dynamics
from ..errors import NearoptError
from ..figures.plotting import new_figure, save_figure
from ..landscape.manifold import add_dead_units, flip_signs, is_odd, manifold_report, permute_units, predicted_nonzero_spectrum, rescale_units, split_unit
from ..model import io
from ..model.network import TwoLayerNet, sample_teacher
from ..model.problem import Problem
from .base import FLOAT64, Check, Experiment, ExperimentResult, Setting, activation_name, count, n_params, names, register, sigma0

__all__ = ["cells", "finalize", "manifold_points", "memory", "run_cell", "SETTINGS"]


def manifold_points(teacher: TwoLayerNet, seed: int) -> dict[str, TwoLayerNet]:
    """Named points of the teacher's global-minimum manifold (every constructor, alone and combined)."""
    T = teacher
    pts = {
        "teacher": T,
        "split 1/2,1/2": split_unit(T, 0, [0.5, 0.5]),
        "split 0.1,0.9": split_unit(T, 0, [0.1, 0.9]),
        "split 2,-1": split_unit(T, 0, [2.0, -1.0]),
        "split 3-way": split_unit(T, T.n_hidden - 1, [0.2, 0.3, 0.5]),
        "1 dead": add_dead_units(T, 1, seed=seed),
        "3 dead": add_dead_units(T, 3, seed=seed),
        "split + dead, permuted": permute_units(add_dead_units(split_unit(T, 0, [0.4, 0.6]), 2, seed=seed + 1), np.random.default_rng(seed).permutation(T.n_hidden + 3)),
    }
    if is_odd(T.activation):
        pts["split, one copy sign-flipped"] = flip_signs(split_unit(T, 0, [0.3, 0.7]), [T.n_hidden])
    if T.activation.name == "relu":
        pts["split, copies rescaled"] = rescale_units(split_unit(T, 0, [0.3, 0.7]), [0, T.n_hidden], [0.5, 2.0])
    return pts


def cells(config: dict[str, Any]) -> list[dict[str, Any]]:
    base = {k: config[k] for k in ("n_inputs", "n_hidden")}
    out = [dict(kind="points", activation=a, seed=s, **base) for a in config["activations"] for s in range(config["teachers"])]
    out.append(dict(kind="ratio", activation=config["sweep_activation"], seed=0, alphas=config["alphas"], **base))
    out.append(dict(kind="width", activation=config["sweep_activation"], seed=0, excess=config["excess"], **base))
    out.append(dict(kind="dynamics", activation=config["sweep_activation"], seed=0, sigmas=config["sigmas"], steps=config["dyn_steps"], draws=config["draws"], **base))
    return out


def _lmin(teacher: TwoLayerNet, student: TwoLayerNet, trained: str = "both") -> float:
    return PopulationHessian(Problem(teacher, student=student, trained=trained)).spectrum("structured").smallest_nonzero


def run_cell(cell: dict[str, Any]) -> dict[str, Any]:
    T = sample_teacher(cell["n_inputs"], cell["n_hidden"], cell["activation"], seed=cell["seed"])
    kind = cell["kind"]
    if kind == "points":
        rows = []
        for name, S in manifold_points(T, cell["seed"]).items():
            for trained in ("both", "first", "second"):
                rep = manifold_report(T, S, trained)
                rows.append({"point": name, "K": S.n_hidden, "trained": trained, **rep})
        return json.loads(io.to_json({"rows": rows}, indent=None))
    if kind == "ratio":
        base = _lmin(T, T)
        rows = []
        for a in cell["alphas"]:
            S = split_unit(T, 0, [a, 1.0 - a])
            _, D = predicted_nonzero_spectrum(S)
            rows.append({"alpha": a, "lmin": _lmin(T, S), "D_min": float(D[D > 0].min()), "D_max": float(D[D > 0].max()), "sum_r2": a * a + (1 - a) ** 2})
        return {"teacher_lmin": base, "rows": rows}
    if kind == "width":
        base = _lmin(T, T)
        dead, split = [], []
        for e in cell["excess"]:
            dead.append({"excess": e, "lmin": _lmin(T, add_dead_units(T, e, seed=1)) if e else base})
            S = T
            for _ in range(e):  # one more even copy of each unit in turn
                S = split_unit(S, _ % T.n_hidden, [0.5, 0.5])
            split.append({"excess": e, "lmin": _lmin(T, S)})
        return {"teacher_lmin": base, "dead": dead, "split": split}
    # dynamics: GD on the exact population loss from a split + dead manifold point
    S = add_dead_units(split_unit(T, 0, [0.5, 0.5]), 1, seed=2)
    obj = exact_population_objective(S, T)
    eig = obj.eigensystem()
    out = []
    for s0 in cell["sigmas"]:
        res = run_dynamics(S, objective=obj, eigensystem=eig, sigma0=s0, steps=cell["steps"], draws=cell["draws"], seed=cell["seed"], points=25)
        out.append({"sigma0": s0, "times": res.times, "loss": res.mean_loss, "predicted": res.predicted_draw.mean(0),
                    "ensemble_deviation": res.ensemble_deviation(), "zero_mode_drift": res.zero_mode_drift(), "floor": res.floor,
                    "final_over_predicted": float(res.mean_loss[-1] / res.predicted_draw.mean(0)[-1])})
    return json.loads(io.to_json({"K": S.n_hidden, "rank": eig[0].rank.rank, "P": S.n_params, "lr": float(1.0 / eig[0].largest), "runs": out}, indent=None))


def finalize(config: dict[str, Any], cell_list: list[dict[str, Any]], results: list[dict[str, Any]], out_dir: Path) -> ExperimentResult:
    out_dir = Path(out_dir)
    checks: list[Check] = []
    points = [(c, r) for c, r in zip(cell_list, results) if c["kind"] == "points"]
    ratio = next(r for c, r in zip(cell_list, results) if c["kind"] == "ratio")
    width = next(r for c, r in zip(cell_list, results) if c["kind"] == "width")
    dyn = next(r for c, r in zip(cell_list, results) if c["kind"] == "dynamics")
    rows = [dict(activation=c["activation"], seed=c["seed"], **row) for c, r in points for row in r["rows"]]
    bad_rank = [f"{r['activation']}/{r['point']}/{r['trained']}: {r['rank_measured']} vs {r['rank_predicted']}" for r in rows if r["rank_measured"] != r["rank_predicted"]]
    checks.append(Check("measured rank = predicted rank at every manifold point (both / first / second layer trained)", 0, len(bad_rank), "exact", not bad_rank, "; ".join(bad_rank[:5])))
    err = max(r["nonzero_spectrum_error"] for r in rows)
    checks.append(Check("nonzero spectrum = spec(D^1/2 H_compact D^1/2) (max |diff| / lambda_max)", "< 1e-10", err, "< 1e-10", bool(err < 1e-10)))
    checks.append(Check("population loss zero at every constructed point (< 1e-12 E[f^2])", len(rows), sum(r["on_manifold"] for r in rows), "all", all(r["on_manifold"] for r in rows)))
    neg = sum(r["negative_eigenvalues"] for r in rows)
    checks.append(Check("no negative eigenvalue at manifold points (residual term vanishes)", 0, neg, "exact", neg == 0))
    base = ratio["teacher_lmin"]
    inside = all(r["D_min"] * base * (1 - 1e-9) <= r["lmin"] <= r["D_max"] * base * (1 + 1e-9) for r in ratio["rows"])
    checks.append(Check("split (alpha, 1-alpha): lambda_min^+ within Ostrowski's [min D, max D] x teacher's", "inside", inside, "all alphas", inside))
    runs = dyn["runs"]
    dev0 = runs[0]["ensemble_deviation"]
    checks.append(Check(f"GD on the exact population loss near a manifold point, sigma0={runs[0]['sigma0']:g}: matches the quadratic prediction", "< 0.02", dev0, "< 0.02", bool(dev0 < 0.02)))
    devs = [r["ensemble_deviation"] for r in runs]
    checks.append(Check("deviation from the quadratic prediction grows with sigma0", "increasing", devs, "monotone", bool(np.all(np.diff(devs) > 0))))

    fig, axes = new_figure(1, 3, figsize=(11, 3.4), squeeze=False)
    ax = axes[0][0]
    a = np.array([r["alpha"] for r in ratio["rows"]])
    o = np.argsort(a)
    ax.plot(a[o], np.array([r["lmin"] for r in ratio["rows"]])[o] / base, "o-", ms=3, label=r"$\lambda^+_{\min}$ / teacher's")
    ax.plot(a[o], np.array([r["D_min"] for r in ratio["rows"]])[o], "k:", lw=0.8, label="min D (Ostrowski)")
    ax.plot(a[o], np.array([r["sum_r2"] for r in ratio["rows"]])[o], "C1--", lw=0.8, label=r"$\alpha^2 + (1-\alpha)^2$")
    ax.set_yscale("log")
    ax.set_xlabel(r"split ratio $\alpha$ of unit 0")
    ax.set_title(f"{config['sweep_activation']}: split into $(\\alpha, 1-\\alpha)$", fontsize=9)
    ax.legend(fontsize=6)
    ax = axes[0][1]
    wb = width["teacher_lmin"]
    ax.plot([d["excess"] for d in width["dead"]], [d["lmin"] / wb for d in width["dead"]], "o-", ms=3, label="dead units")
    ax.plot([d["excess"] for d in width["split"]], [d["lmin"] / wb for d in width["split"]], "s-", ms=3, label="even splits")
    ax.set_yscale("log")
    ax.set_xlabel("excess width K - M")
    ax.set_ylabel(r"$\lambda^+_{\min}$ / teacher's")
    ax.legend(fontsize=6)
    ax = axes[0][2]
    for i, r in enumerate(runs):
        t, L, Pd = (np.asarray(r[k], dtype=float) for k in ("times", "loss", "predicted"))
        m = t > 0
        ax.loglog(t[m], L[m], "o", ms=2.5, color=f"C{i}", label=f"exact, $\\sigma_0$={r['sigma0']:g}")
        ax.loglog(t[m], Pd[m], "-", lw=0.8, color=f"C{i}")
    ax.set_xlabel("GD step")
    ax.set_ylabel(r"$\langle L_t\rangle$ (lines: spectral prediction)")
    ax.set_title(f"K={dyn['K']} manifold point, rank {dyn['rank']}/{dyn['P']}", fontsize=9)
    ax.legend(fontsize=6)
    figures = [save_figure(fig, out_dir / "overparameterized")[0]]
    data = [io.write_json(out_dir / "overparameterized.json", {"definition": __doc__, "points": rows, "ratio": ratio, "width": width, "dynamics": dyn})]
    lines = ["| activation | point | K | trained | P | rank pred. / meas. | tangent dim. | λ⁺min |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["seed"] == 0:
            lines.append(f"| {r['activation']} | {r['point']} | {r['K']} | {r['trained']} | {r['P']} | {r['rank_predicted']} / {r['rank_measured']} | {r['tangent_dimension']} | {r['lambda_min_nonzero']:.3g} |")
    dl = ", ".join(f"σ0={r['sigma0']:g}: {r['ensemble_deviation']:.3g}" for r in runs)
    summary = (
        f"Students wider than the teacher (N_i={config['n_inputs']}, M={config['n_hidden']}) on the global-minimum manifold. "
        "Zero modes = P − rank, rank = the span of the tangent functions counted by groups of copies; the manifold's tangent "
        "dimension is smaller (split copies can move apart at fourth order in the loss). Splitting a unit into (α, 1−α) scales the "
        "incoming-weight eigenvalues by α²+(1−α)² (Ostrowski bounds checked). Dynamics on the exact population loss vs the "
        f"spectral prediction, relative deviation: {dl}.\n\n" + "\n".join(lines)
    )
    return ExperimentResult("overparameterized", checks, figures, data, summary, dict(config))


def _split_ratio(value: float) -> None:
    if value in (0.0, 1.0):
        raise NearoptError("a split (alpha, 1 - alpha) needs alpha other than 0 and 1")


SETTINGS = (
    names("activations"),
    count("teachers", 1000),
    count("n_inputs", 1000),
    count("n_hidden", 1000),
    Setting("sweep_activation", str, check=activation_name),
    Setting("alphas", list, nonempty=True, unique=True, item=Setting("alpha", float, low=-100.0, high=100.0, check=_split_ratio)),
    Setting("excess", list, nonempty=True, unique=True, item=count("excess", 1000, low=0)),
    Setting("sigmas", list, nonempty=True, unique=True, item=sigma0()),
    count("dyn_steps", 10**6),
    count("draws", 1000),
)


def memory(config: dict[str, Any]) -> float:
    """The exact dense Hessian (a few copies) of the widest student: ``N_h + max(excess, 3)`` units."""
    K = config["n_hidden"] + max(3, *config["excess"])
    P = n_params(config["n_inputs"], K)
    return FLOAT64 * (6.0 * P * P + 2.0 * config["draws"] * P * 25)


register(
    Experiment(
        name="overparameterized",
        description="zero modes and smallest nonzero eigenvalues on the global-minimum manifold of wider students; exact population dynamics there",
        quick={"activations": ["erf", "relu"], "teachers": 1, "n_inputs": 4, "n_hidden": 2, "sweep_activation": "erf",
               "alphas": [0.05, 0.2, 0.35, 0.5, 0.65, 0.8, 0.95, -1.0, 2.0], "excess": [0, 1, 2, 3],
               "sigmas": [1e-4, 1e-2, 1e-1], "dyn_steps": 300, "draws": 2},
        full={"activations": ["erf", "relu", "tanh"], "teachers": 3, "n_inputs": 6, "n_hidden": 3, "sweep_activation": "erf",
              "alphas": [-2.0, -1.0, -0.5, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 1.5, 2.0, 3.0],
              "excess": [0, 1, 2, 3, 4, 6, 8], "sigmas": [1e-4, 1e-3, 1e-2, 3e-2, 1e-1, 3e-1], "dyn_steps": 3000, "draws": 8},
        cells=cells,
        run_cell=run_cell,
        finalize=finalize,
        settings=SETTINGS,
        memory=memory,
    )
)
