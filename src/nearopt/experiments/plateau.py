"""Experiment ``plateau``: the symmetric plateau of the soft committee machine, its escape, and the Hessian along the way.

The teacher is the orthonormal soft committee ``f*(x) = sum_m g(t_m . x)``, ``T = I`` (``M`` units), the
student ``K = M`` units with its second layer fixed at ones (``trained = "first"``), erf. The start is nearly
symmetric: ``Q0 = q0 I``, ``R0 = r0 + s D``, ``D = I - 1/M`` (student ``a`` leans towards teacher ``a`` by ``s``).
Two kinds of cells (``docs/learning.md``):

* ``ode`` (per ``K`` and ``eta~``): the trajectory from the reference breaking ``s_ref``, its plateau
  (:func:`~nearopt.dynamics.plateau.find_plateau`: height, length, unstable rate), the escape time (the
  error falling to half the plateau's) at every ``s`` of ``breaking`` against the prediction
  ``alpha(s_ref) + ln(s_ref / s) / rate``, the population Hessian's smallest eigenvalue at the weights of the
  trajectory's ``(Q, R, v)`` (it crosses zero at the escape), and the unstable rate against
  ``eta~ |lambda|`` (:func:`~nearopt.dynamics.plateau.rate_expansion`, ``docs/theory.md`` §15);
* ``sgd`` (per ``K``, ``eta~`` of ``sgd_lrs`` and ``N_i`` of ``sizes``): online SGD from the same ``(Q0, R0)``
  embedded in ``N_i`` dimensions, step ``eta~ / N_i``, the mean excess population loss over ``runs`` runs
  against the ODE: the mean escape time and the plateau's error meet the ODE's, and the runs' spread of escape
  times shrinks (about as ``1 / sqrt(N_i)``) as ``N_i`` grows.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..dynamics.ode import committee_ode, embedded_teacher, integrate_ode
from ..dynamics.plateau import escape_time, find_plateau, lowest_curvature, predict_escape, rate_expansion
from ..dynamics.sgd import simulate_sgd
from ..figures.plotting import new_figure, save_figure
from ..model import io
from ..model.activations import get_activation
from ..model.network import TwoLayerNet
from ..model.problem import Problem
from .base import FLOAT64, SEED, Check, Experiment, ExperimentResult, Relation, Setting, check_below, count, counts, register

__all__ = ["cells", "ESCAPE_RTOL", "finalize", "FULL", "memory", "QUICK", "RATE_RTOL", "run_cell", "SETTINGS", "SGD_RTOL", "start"]

#: the escape-time prediction holds within this (relative) over the breaking sweep
ESCAPE_RTOL = 0.1
#: the unstable rate equals ``eta~ |lambda|`` of the Hessian's unstable direction to this (relative)
RATE_RTOL = 1e-6
#: at the largest N_i, SGD's escape time and plateau error lie within this of the ODE's (relative)
SGD_RTOL = 0.1
#: rate / eta~ at the smallest learning rate of the expansion lies within this of ``|lambda_min|`` at the saddle (relative)
LIMIT_RTOL = 0.01
#: the learning rates of the expansion, as fractions of each cell's eta~
EXPANSION = (1.0, 0.1, 0.01)

QUICK: dict[str, Any] = {
    "seed": 0,
    "committees": [2],
    "lrs": [0.5, 1.0],
    "sgd_lrs": [1.0],
    "sizes": [100, 200, 400],
    "runs": 16,
    "q0": 0.2,
    "r0": 0.01,
    "s_ref": 1e-3,
    "breaking": [1e-2, 1e-3, 1e-4],
    "s_sgd": 0.03,
    "hessian_points": 24,
}
FULL: dict[str, Any] = {
    **QUICK,
    "committees": [2, 3],
    "lrs": [0.1, 0.5, 1.0],
    "sgd_lrs": [0.5, 1.0],
    "sizes": [100, 200, 500, 1000, 2000],
    "runs": 32,
    "breaking": [1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5],
    "hessian_points": 60,
}


def start(K: int, q0: float, r0: float, s: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``Q0 = q0 I`` ``(K, K)``, ``R0 = r0 + s (I - 1/K)`` ``(K, K)``, ``v = 1`` ``(K,)``."""
    return q0 * np.eye(K), r0 + s * (np.eye(K) - 1.0 / K), np.ones(K)


def _teacher(K: int) -> TwoLayerNet:
    return TwoLayerNet(np.eye(K), np.ones((1, K)), get_activation("erf"))


def cells(config: dict[str, Any]) -> list[dict[str, Any]]:
    common = {k: config[k] for k in ("q0", "r0", "s_ref", "seed")}
    out = [{"kind": "ode", "K": K, "lr": lr, "breaking": config["breaking"], "hessian_points": config["hessian_points"], **common}
           for K in config["committees"] for lr in config["lrs"]]
    out += [{"kind": "sgd", "K": K, "lr": lr, "n_inputs": n, "runs": config["runs"], "s": config["s_sgd"], **common}
            for K in config["committees"] for lr in config["sgd_lrs"] for n in config["sizes"]]
    return out


def _reference(ode, K: int, cell: dict[str, Any], s: float, points: int = 400):
    """The trajectory from breaking ``s`` over a horizon doubled until it has passed a plateau; ``(traj, plateau)``."""
    horizon = 150.0 / cell["lr"]
    for _ in range(8):
        traj = integrate_ode(ode, *start(K, cell["q0"], cell["r0"], s), np.linspace(0.0, horizon, points))
        p = find_plateau(ode, traj)
        if p is not None and traj.eps[-1] < p.eps / 4:
            return traj, p
        horizon *= 2
    return traj, None


def _crossing(a: np.ndarray, y: np.ndarray, level: float) -> float:
    """First ``a`` where ``y`` falls to ``level`` (linear interpolation; ``nan`` if never)."""
    below = np.where(y <= level)[0]
    if below.size == 0 or below[0] == 0:
        return float("nan")
    i = below[0]
    return float(a[i - 1] + (a[i] - a[i - 1]) * (y[i - 1] - level) / (y[i - 1] - y[i]))


def _zero_crossing(a: np.ndarray, y: np.ndarray) -> float:
    """Last ``a`` where ``y`` goes from negative to non-negative (linear interpolation; ``nan`` if never)."""
    up = np.where((y[:-1] < 0) & (y[1:] >= 0))[0]
    if up.size == 0:
        return float("nan")
    i = up[-1]
    return float(a[i] + (a[i + 1] - a[i]) * (-y[i]) / (y[i + 1] - y[i]))


def _ode_cell(cell: dict[str, Any]) -> dict[str, Any]:
    K, lr = cell["K"], cell["lr"]
    teacher = _teacher(K)
    ode = committee_ode(teacher, lr, trained="first")
    traj, p = _reference(ode, K, cell, cell["s_ref"])
    if p is None:
        return {"plateau": None, "alpha": traj.alpha, "eps": traj.eps}
    level = p.eps / 2
    a_ref = _crossing(traj.alpha, traj.eps, level)
    s = np.asarray(cell["breaking"], dtype=float)
    predicted = predict_escape(p.unstable_rate, s, s_ref=cell["s_ref"], alpha_ref=a_ref)
    measured = [escape_time(ode, *start(K, cell["q0"], cell["r0"], x), level=level, alpha_max=float(1.5 * y + 50 / lr))
                for x, y in zip(s, predicted)]
    # the Hessian along the trajectory, from the plateau's start to well past the escape
    stop = min(traj.alpha[-1], a_ref + 3 * (a_ref - p.alpha_start))
    a_h = np.linspace(p.alpha_start, stop, cell["hessian_points"])
    hess = integrate_ode(ode, *start(K, cell["q0"], cell["r0"], cell["s_ref"]), np.concatenate([[0.0], a_h]))
    lam = [lowest_curvature(teacher, hess.Q[i], hess.R[i], hess.v[i], trained="first", extra=1)[0] for i in range(1, hess.alpha.size)]
    ex = rate_expansion(ode, teacher, p.Q, p.R, p.v, [lr * f for f in EXPANSION])
    return json.loads(io.to_json({
        "plateau": {"eps": p.eps, "alpha_start": p.alpha_start, "alpha_end": p.alpha_end, "unstable_rate": p.unstable_rate,
                    "Q": p.Q, "R": p.R, "positive_eigenvalues": int(np.sum(p.jacobian_eigenvalues.real > 0))},
        "alpha": traj.alpha, "eps": traj.eps, "escape_level": level, "alpha_escape_ref": a_ref,
        "breaking": s, "escape_measured": [math.nan if m is None else m for m in measured], "escape_predicted": predicted,
        "hessian_alpha": a_h, "hessian_eps": hess.eps[1:], "lambda_min": lam,
        "expansion": {"lr": ex.lr, "rate": ex.rate, "lambda_min": ex.lambda_min, "lambda_unstable": ex.lambda_unstable,
                      "lift_residual": ex.lift_residual, "eps": ex.eps, "lambda_min0": ex.lambda_min0, "eps0": ex.eps0},
    }, indent=None))


def _sgd_cell(cell: dict[str, Any]) -> dict[str, Any]:
    K, lr, N = cell["K"], cell["lr"], cell["n_inputs"]
    base = _teacher(K)
    ode = committee_ode(base, lr, trained="first")
    Q0, R0, v0 = start(K, cell["q0"], cell["r0"], cell["s"])
    traj, p = _reference(ode, K, cell, cell["s"], points=200)
    if p is not None:  # SGD up to a little past the error's fall to a tenth of the plateau's
        horizon = 1.2 * _crossing(traj.alpha, traj.eps, p.eps / 10)
        traj = integrate_ode(ode, Q0, R0, v0, np.linspace(0.0, horizon, 121))
    # the same overlaps in N_i dimensions: R0 on the teacher's coordinates, sqrt(Q0 - R0 R0^T) on the next K
    W = np.zeros((K, N))
    W[:, :K] = R0
    lam, U = np.linalg.eigh(Q0 - R0 @ R0.T)
    W[:, K : 2 * K] = (U * np.sqrt(lam)) @ U.T
    student = TwoLayerNet(W, v0.reshape(1, K), base.activation)
    record = np.unique(np.round(traj.alpha * N).astype(np.int64))
    sim = simulate_sgd(Problem(embedded_teacher(base, N), student=student, trained="first"), lr=lr / N, steps=int(record[-1]), sigma0=1e-8,
                       runs=cell["runs"], seed=cell["seed"], record=record)
    a = sim.steps / N
    runs_escape = [] if p is None else [_crossing(a, loss, p.eps / 2) for loss in sim.loss]
    return json.loads(io.to_json({"alpha": a, "mean": sim.mean, "sem": sim.sem, "ode_alpha": traj.alpha, "ode_eps": traj.eps,
                                  "escape_runs": runs_escape,
                                  "ode_escape": None if p is None else _crossing(traj.alpha, traj.eps, p.eps / 2),
                                  "plateau_eps": None if p is None else p.eps, "plateau_alpha": None if p is None else [p.alpha_start, p.alpha_end],
                                  "seconds": sim.seconds}, indent=None))


def run_cell(cell: dict[str, Any]) -> dict[str, Any]:
    return _ode_cell(cell) if cell["kind"] == "ode" else _sgd_cell(cell)


# ----------------------------------------------------------------------------- finalize
def _ode_checks(K: int, lr: float, r: dict[str, Any]) -> list[Check]:
    tag = f"K = M = {K}, eta~ = {lr:g}"
    p = r["plateau"]
    if p is None:
        return [Check(f"{tag}: the trajectory passes a plateau", "a plateau", "none", "-", False)]
    checks = [Check(f"{tag}: the trajectory passes a plateau with an unstable fixed point", "eps* > 0, rate > 0",
                    f"eps* = {p['eps']:.5g}, rate = {p['unstable_rate']:.4g}", "-", bool(p["eps"] > 0 and p["unstable_rate"] > 0))]
    meas, pred = np.array(r["escape_measured"], dtype=float), np.array(r["escape_predicted"], dtype=float)
    err = float(np.max(np.abs(pred / meas - 1))) if np.all(np.isfinite(meas)) else float("inf")
    decades = math.log10(max(r["breaking"]) / min(r["breaking"]))
    checks.append(check_below(f"{tag}: escape time against alpha(s_ref) + ln(s_ref / s) / rate over {decades:.1f} decades of s (max rel)",
                              err, ESCAPE_RTOL))
    ex = r["expansion"]
    rate, lam_u = np.array(ex["rate"]), np.array(ex["lambda_unstable"])
    ident = float(np.max(np.abs(rate + np.array(ex["lr"]) * lam_u) / rate))
    checks.append(check_below(f"{tag}: unstable rate = eta~ |lambda| of the Hessian on the unstable direction's weights (max rel, eta~ x {EXPANSION})",
                              ident, RATE_RTOL, f"lift residual {max(ex['lift_residual']):.2g}"))
    limit = abs(rate[-1] / ex["lr"][-1] + ex["lambda_min0"]) / abs(ex["lambda_min0"])
    checks.append(check_below(f"{tag}: rate / eta~ at eta~ = {ex['lr'][-1]:g} against |lambda_min| = {abs(ex['lambda_min0']):.5g} at the saddle (rel)",
                              limit, LIMIT_RTOL))
    lam = np.array(r["lambda_min"])
    cross = _zero_crossing(np.array(r["hessian_alpha"]), lam)
    a_tenth = _crossing(np.array(r["alpha"]), np.array(r["eps"]), p["eps"] / 10)
    checks.append(Check(f"{tag}: the Hessian's smallest eigenvalue, negative on the plateau ({lam[0]:.3g}), crosses zero during the escape "
                        f"(after the plateau's end {p['alpha_end']:.4g}, before the error falls to a tenth of the plateau's at {a_tenth:.4g})",
                        f"in [{p['alpha_end']:.4g}, {a_tenth:.4g}]", cross, "-",
                        bool(lam[0] < 0 and math.isfinite(cross) and p["alpha_end"] <= cross <= a_tenth),
                        f"escape (error at half the plateau's) at {r['alpha_escape_ref']:.4g}"))
    return checks


def _sgd_summary(rows: list[tuple[dict[str, Any], dict[str, Any]]]) -> dict[str, Any]:
    sizes = [c["n_inputs"] for c, _ in rows]
    # a run that has not escaped by the recorded horizon (or diverged) has no escape time: left out, and counted
    esc = [np.array(r["escape_runs"], dtype=float) for _, r in rows]
    done = [e[np.isfinite(e)] for e in esc]
    mean = [float(np.mean(e)) if e.size else float("nan") for e in done]
    spread = [float(np.std(e, ddof=1)) if e.size > 1 else float("nan") for e in done]
    sem = [sd / math.sqrt(e.size) if e.size else float("nan") for sd, e in zip(spread, done)]
    missing = [int(e.size - d.size) for e, d in zip(esc, done)]
    ref = rows[0][1]
    a0, a1 = ref["plateau_alpha"] or [0.0, 0.0]
    heights = []
    for _, r in rows:
        a, m = np.array(r["alpha"]), np.array(r["mean"])
        win = (a >= a0) & (a <= a1)
        heights.append(float(np.mean(m[win])) if win.any() else float("nan"))
    ode_a, ode_e = np.array(ref["ode_alpha"]), np.array(ref["ode_eps"])
    win = (ode_a >= a0) & (ode_a <= a1)
    return {"sizes": sizes, "escape_mean": mean, "escape_sem": sem, "escape_std": spread, "not_escaped": missing, "ode_escape": ref["ode_escape"], "height": heights,
            "ode_height": float(np.mean(ode_e[win])) if win.any() else float("nan")}


def _sgd_checks(K: int, lr: float, sm: dict[str, Any]) -> list[Check]:
    tag = f"K = M = {K}, eta~ = {lr:g}, SGD"
    if sm["ode_escape"] is None:
        return [Check(f"{tag}: the ODE trajectory passes a plateau", "a plateau", "none", "-", False)]
    gaps = np.abs(np.array(sm["escape_mean"]) / sm["ode_escape"] - 1)
    hgap = abs(sm["height"][-1] / sm["ode_height"] - 1)
    ratio = sm["escape_std"][-1] / sm["escape_std"][0]
    return [
        check_below(f"{tag}: escape time at N_i = {sm['sizes'][-1]} against the ODE's {sm['ode_escape']:.4g} (rel; every run escaped)",
                    float(gaps[-1]) if sm["not_escaped"][-1] == 0 else float("inf"), SGD_RTOL,
                    f"runs without an escape by the horizon: {sm['not_escaped'][-1]}"),
        check_below(f"{tag}: plateau error at N_i = {sm['sizes'][-1]} against the ODE's {sm['ode_height']:.4g} (rel)", hgap, SGD_RTOL),
        Check(f"{tag}: the runs' spread of escape times shrinks from N_i = {sm['sizes'][0]} to {sm['sizes'][-1]} (self-averaging; "
              f"runs without an escape by the horizon: {sm['not_escaped'][0]}, {sm['not_escaped'][-1]}, left out)",
              f"ratio < 1 (about {math.sqrt(sm['sizes'][0] / sm['sizes'][-1]):.2g} for 1/sqrt(N_i))", f"{ratio:.3g}", "< 1", bool(ratio < 1)),
    ]


def finalize(config: dict[str, Any], cell_list: list[dict[str, Any]], results: list[dict[str, Any]], out_dir: Path) -> ExperimentResult:
    out_dir = Path(out_dir)
    odes = [(c, r) for c, r in zip(cell_list, results) if c["kind"] == "ode"]
    checks: list[Check] = []
    for c, r in odes:
        checks += _ode_checks(c["K"], c["lr"], r)
    groups: dict[tuple[int, float], list] = {}
    for c, r in zip(cell_list, results):
        if c["kind"] == "sgd":
            groups.setdefault((c["K"], c["lr"]), []).append((c, r))
    sgd = {key: _sgd_summary(sorted(rows, key=lambda cr: cr[0]["n_inputs"])) for key, rows in groups.items()}
    for (K, lr), sm in sgd.items():
        checks += _sgd_checks(K, lr, sm)
    figures = [_figure(odes, groups, sgd, out_dir / "plateau")]
    table = [{"K": c["K"], "lr": c["lr"], **({} if r["plateau"] is None else {
        "plateau_eps": r["plateau"]["eps"], "alpha_start": r["plateau"]["alpha_start"], "alpha_end": r["plateau"]["alpha_end"],
        "unstable_rate": r["plateau"]["unstable_rate"], "lambda_min_at_plateau": r["expansion"]["lambda_min"][0],
        "lambda_min_saddle": r["expansion"]["lambda_min0"], "eps_saddle": r["expansion"]["eps0"],
        "breaking": r["breaking"], "escape_measured": r["escape_measured"], "escape_predicted": r["escape_predicted"]})} for c, r in odes]
    data = [io.write_json(out_dir / "plateau.json", {"definition": __doc__, "plateaus": table,
                                                     "sgd": [{"K": K, "lr": lr, **sm} for (K, lr), sm in sgd.items()]})]
    lines = ["| K = M | eta~ | plateau eps | alpha from - to | rate (per alpha) | 2 eta~ lambda at the plateau / at the saddle | max escape error |",
             "|---|---|---|---|---|---|---|"]
    for t in table:
        if "plateau_eps" not in t:
            lines.append(f"| {t['K']} | {t['lr']:g} | none | - | - | - | - |")
            continue
        err = np.max(np.abs(np.array(t["escape_predicted"]) / np.array(t["escape_measured"], dtype=float) - 1))
        lines.append(f"| {t['K']} | {t['lr']:g} | {t['plateau_eps']:.5g} | {t['alpha_start']:.4g} - {t['alpha_end']:.4g} | {t['unstable_rate']:.4g} | "
                     f"{2 * t['lr'] * abs(t['lambda_min_at_plateau']):.4g} / {2 * t['lr'] * abs(t['lambda_min_saddle']):.4g} | {err:.2%} |")
    sg = [f"K = {K}, eta~ = {lr:g}: SGD escape alpha (mean ± sem, run spread) " + ", ".join(
          f"{m:.4g} ± {e:.2g}, {sd:.2g} (N_i = {n}" + (f"; {x} runs without an escape" if x else "") + ")"
          for n, m, e, sd, x in zip(sm["sizes"], sm["escape_mean"], sm["escape_sem"], sm["escape_std"], sm["not_escaped"]))
          + f"; ODE {sm['ode_escape']:.4g}" for (K, lr), sm in sgd.items() if sm["ode_escape"] is not None]
    summary = ("Soft committee machines (erf, orthonormal teacher, second layer fixed) from a nearly symmetric start. The error's "
               "deviation from the plateau grows at twice the unstable rate; the ODEs' unstable rate equals eta~ |lambda| of the population "
               "Hessian at the weights of the plateau's own fixed point (docs/theory.md §15).\n\n" + "\n".join(lines) + "\n\n" + "\n".join(sg))
    return ExperimentResult("plateau", checks, figures, data, summary, dict(config))


def _figure(odes, groups, sgd, stem: Path) -> Path:
    fig, axes = new_figure(2, 3, figsize=(13.0, 7.0))
    (ax_sgd, ax_esc, ax_lam), (ax_rate, ax_fs, ax_eps) = axes
    for (K, lr), rows in groups.items():
        rows = sorted(rows, key=lambda cr: cr[0]["n_inputs"])
        ref = rows[0][1]
        ax_sgd.semilogy(ref["ode_alpha"], ref["ode_eps"], "k-", lw=1.2, label=f"ODE K={K}, η̃={lr:g}")
        for c, r in rows:
            ax_sgd.semilogy(r["alpha"], r["mean"], "-", lw=0.8, alpha=0.8, label=f"SGD N_i={c['n_inputs']}")
        sm = sgd[(K, lr)]
        if sm["ode_escape"] is not None:
            line, = ax_fs.loglog(sm["sizes"], sm["escape_std"], "o-", label=f"K={K}, η̃={lr:g}: std over runs")
            n = np.array(sm["sizes"], dtype=float)
            ax_fs.loglog(n, sm["escape_std"][0] * np.sqrt(n[0] / n), ":", color=line.get_color(), lw=0.8, label="∝ 1/√N_i")
    ax_sgd.set_xlabel("α = steps / N_i")
    ax_sgd.set_ylabel("ε (mean over runs)")
    ax_sgd.legend(fontsize=6)
    ax_fs.set_xlabel("N_i")
    ax_fs.set_ylabel("spread of α_escape over SGD runs")
    ax_fs.legend(fontsize=7)
    for c, r in odes:
        if r["plateau"] is None:
            continue
        lab = f"K={c['K']}, η̃={c['lr']:g}"
        line, = ax_esc.semilogx(r["breaking"], r["escape_measured"], "o", label=f"{lab} measured")
        ax_esc.semilogx(r["breaking"], r["escape_predicted"], "-", color=line.get_color(), lw=0.9)
        x = np.array(r["hessian_alpha"]) / r["alpha_escape_ref"]
        ax_lam.plot(x, r["lambda_min"], "-", label=lab)
        ax_eps.semilogy(np.array(r["alpha"]) * c["lr"], r["eps"], "-", label=lab)
        ex = r["expansion"]
        line, = ax_rate.semilogx(ex["lr"], np.array(ex["rate"]) / np.array(ex["lr"]), "o-", label=lab)
        ax_rate.axhline(abs(ex["lambda_min0"]), color=line.get_color(), ls=":", lw=0.8)
    ax_esc.set_xlabel("initial symmetry breaking s")
    ax_esc.set_ylabel("α_escape (ε = plateau / 2)")
    ax_esc.set_title("dots: ODE; lines: α(s_ref) + ln(s_ref/s) / rate", fontsize=8)
    ax_esc.legend(fontsize=6)
    ax_lam.axhline(0.0, color="k", lw=0.6)
    ax_lam.axvline(1.0, color="k", lw=0.6, ls="--")
    ax_lam.set_xlabel("α / α_escape")
    ax_lam.set_ylabel("λ_min of the population Hessian")
    ax_lam.legend(fontsize=6)
    ax_rate.set_xlabel("η̃")
    ax_rate.set_ylabel("unstable rate / η̃ (dotted: |λ_min| at the saddle)")
    ax_rate.legend(fontsize=6)
    ax_eps.set_xlabel("η̃ α")
    ax_eps.set_ylabel("ε (ODE, s = s_ref)")
    ax_eps.legend(fontsize=6)
    return save_figure(fig, stem)[0]


SETTINGS = (
    SEED,
    counts("committees", 4, low=2),
    Setting("lrs", list, nonempty=True, unique=True, item=Setting("lrs", float, low=0.0, low_open=True, high=4.0)),
    Setting("sgd_lrs", list, unique=True, item=Setting("sgd_lrs", float, low=0.0, low_open=True, high=4.0)),
    counts("sizes", 10**5, low=10),
    count("runs", 10**4, low=2),
    Setting("q0", float, low=0.0, low_open=True, high=10.0),
    Setting("r0", float, low=0.0, high=10.0),
    Setting("s_ref", float, low=0.0, low_open=True, high=1.0),
    Setting("breaking", list, nonempty=True, unique=True, item=Setting("breaking", float, low=0.0, low_open=True, high=1.0)),
    Setting("s_sgd", float, low=0.0, low_open=True, high=1.0),
    count("hessian_points", 10**4, low=3),
)
RELATIONS = (
    Relation("q0 > (max(committees) r0)^2 and q0 > max(breaking + [s_ref, s_sgd])^2: Q0 - R0 R0^T positive (a start that weights can have)",
             lambda c: c["q0"] > (max(c["committees"]) * c["r0"]) ** 2 and c["q0"] > max(c["breaking"] + [c["s_ref"], c["s_sgd"]]) ** 2),
    Relation("sizes ascending", lambda c: list(c["sizes"]) == sorted(c["sizes"])),
)


def memory(config: dict[str, Any]) -> float:
    """The SGD runs' weights and gradients ``(runs, K, N_i)`` (a few copies) and their recorded losses."""
    K, N = max(config["committees"]), max(config["sizes"])
    return FLOAT64 * (8.0 * config["runs"] * K * N + 2.0 * config["runs"] * 200)


register(
    Experiment(
        name="plateau",
        description="the symmetric plateau of soft committee machines: ODE against SGD, escape against the unstable rate, the Hessian crossing zero",
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
