"""Experiment ``committee``: critical points of ReLU committee machines (spurious minima for k = d >= 6).

Teacher: the orthonormal soft committee ``f_t(x) = sum_i relu(x_i)`` (``W1 = I``, ``k = d``,
``W2 = 1``); student: ``k`` ReLU units, second layer fixed to ones (``trained="first"``),
inputs ``x ~ N(0, I_d)``, loss ``1/2 E[(f_s - f_t)^2]`` -- the setting of Safran & Shamir
(2018) and Arjevani & Field (2020). Two kinds of cells (``docs/students.md`` §4):

* ``global``: the exact Hessian at the global minimum ``W = I`` against the closed form
  :func:`~nearopt.landscape.critical.relu_committee_global_spectrum` (6 distinct eigenvalues;
  multiplicities from the ``S_k`` symmetry: ``k(k-1)/2`` at ``1/4 - 1/(2 pi)``,
  ``k(k-3)/2`` at ``1/4 + 1/(2 pi)``, ``k - 1`` twice, ``1`` twice);
* ``starts``: seeded random starts ``W ~ N(0, 1/d)``; gradient descent on the exact
  population loss (``eta = 0.5``) then the damped Newton polish of
  :func:`~nearopt.landscape.critical.find_critical_point`; every end point classified by its
  exact Hessian spectrum. Distinct spurious minima are grouped up to symmetry (same
  loss and spectrum).

The quick configuration runs ``k = 6`` from a handful of seeds that include one known
(from the full scan) to end at the spurious minimum, plus 25 starts at ``k = 8``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import NearoptError
from ..figures.plotting import new_figure, save_figure
from ..landscape.critical import (
    classify,
    committee_start,
    committee_teacher,
    find_critical_point,
    isotropy_multiplicities,
    relu_committee_global_spectrum,
    symmetry_multiplicities,
)
from ..model import io
from ..model.problem import Problem
from ..spectra.grouping import clusters, eigenvalue_clusters
from .base import FLOAT64, SEED, Check, Experiment, ExperimentResult, Relation, Setting, count, register

__all__ = ["cells", "finalize", "MEASURED_TOL", "memory", "RELATIONS", "run_cell", "SETTINGS"]

#: measured eigenvalues of the global minimum closer than this (absolute, neighbour to neighbour) are one value
MEASURED_TOL = 1e-9


def cells(config: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [dict(kind="global", k=k) for k in config["global_ks"]]
    for k, n in zip(config["ks"], config["starts"]):
        for s0 in range(0, n, config["block"]):
            out.append(dict(kind="starts", k=k, seeds=list(range(s0, min(n, s0 + config["block"]))), lr=config["lr"], max_steps=config["max_steps"]))
    for k, seeds in config.get("known", {}).items():
        out.append(dict(kind="starts", k=int(k), seeds=list(seeds), lr=config["lr"], max_steps=config["max_steps"], known=True))
    return out


def run_cell(cell: dict[str, Any]) -> dict[str, Any]:
    k = cell["k"]
    T = committee_teacher(k)
    if cell["kind"] == "global":
        cp = classify(Problem(T, student=T, trained="first"))
        values, counts = relu_committee_global_spectrum(k)
        pred = np.repeat(values, counts)
        lam = cp.eigenvalues
        mvals, mcounts = (x.tolist() for x in clusters(lam, MEASURED_TOL))
        return {"k": k, "classification": cp.classification, "gradient_norm": cp.gradient_norm, "max_abs_diff": float(np.max(np.abs(lam - pred))),
                "eigenvalues": lam.tolist(), "predicted_values": values.tolist(), "predicted_counts": counts.tolist(),
                "measured_values": mvals, "measured_counts": mcounts, "symmetry": symmetry_multiplicities(k)}
    rows = []
    for seed in cell["seeds"]:
        cp = find_critical_point(committee_start(T, seed=seed), lr=cell["lr"], max_steps=cell["max_steps"], descent_gtol=1e-6)
        row = {"seed": seed, "classification": cp.classification, "loss": cp.loss, "gradient_norm": cp.gradient_norm,
               "gradient_tolerance": cp.gradient_tolerance, "index": cp.index, "zero_modes": cp.zero_modes,
               "lambda_min": float(cp.eigenvalues[0]), "steps": cp.descent_steps, "newton": len(cp.newton_history) - 1}
        if cp.classification != "global minimum":
            row["eigenvalues"] = cp.eigenvalues.tolist()
            row["W1"] = cp.student.W1.tolist()
        rows.append(row)
    return {"k": k, "known": bool(cell.get("known", False)), "rows": rows}


def _distinct(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Group non-global end points by (class, loss, spectrum) up to symmetry."""
    groups: list[dict[str, Any]] = []
    for r in sorted(rows, key=lambda r: r["loss"]):
        lam = np.asarray(r["eigenvalues"])
        for g in groups:
            if g["classification"] == r["classification"] and abs(g["loss"] - r["loss"]) <= 1e-8 * max(abs(g["loss"]), 1e-12) and np.allclose(lam, g["eigenvalues"], rtol=1e-6, atol=1e-9):
                g["count"] += 1
                g["seeds"].append(r["seed"])
                break
        else:
            k = int(round(np.sqrt(lam.size)))
            counts = sorted(eigenvalue_clusters(lam)[1].tolist())
            groups.append({"classification": r["classification"], "loss": r["loss"], "index": r["index"], "zero_modes": r["zero_modes"],
                           "lambda_min": r["lambda_min"], "lambda_max": float(lam[-1]), "eigenvalues": lam, "count": 1, "seeds": [r["seed"]], "W1": r["W1"],
                           "multiplicities": counts, "isotropy_S(k-1)xS1": bool(k >= 5 and counts == isotropy_multiplicities(k))})
    return groups


def _plot_spurious(ax, table: list[dict[str, Any]]) -> None:
    """One point per distinct spurious minimum: its loss against ``k``, annotated with how
    often random starts reached it (``m/n starts``; "known start" where none were run)."""
    ks = [t["k"] for t in table]
    found = [(t, g) for t in table for g in t["distinct"] if g["classification"] == "spurious local minimum"]
    if not found:
        ax.text(0.5, 0.5, "none found", transform=ax.transAxes, ha="center")
    for t, g in found:
        ax.plot([t["k"]], [g["loss"]], "o", color="C0", ms=5)
        note = f"{t['spurious']}/{t['starts']} starts" if t["starts"] else "known start"
        ax.annotate(note, (t["k"], g["loss"]), fontsize=7, xytext=(5, 3), textcoords="offset points")
    ax.set_xticks(range(min(ks), max(ks) + 1))
    ax.set_xlim(min(ks) - 0.6, max(ks) + 1.2)
    ax.margins(y=0.3)
    ax.set_xlabel("k = d (teacher and student width)")
    ax.set_ylabel("loss of each spurious minimum")
    ax.set_title("spurious minima found (GD + Newton, exact population loss)", fontsize=8)


def finalize(config: dict[str, Any], cell_list: list[dict[str, Any]], results: list[dict[str, Any]], out_dir: Path) -> ExperimentResult:
    out_dir = Path(out_dir)
    checks: list[Check] = []
    glob = [r for c, r in zip(cell_list, results) if c["kind"] == "global"]
    starts = [r for c, r in zip(cell_list, results) if c["kind"] == "starts"]
    # global minimum: closed form and symmetry multiplicities
    err = max(r["max_abs_diff"] for r in glob)
    checks.append(Check("Hessian at W = V = I equals the closed form (max |diff|)", "< 1e-12", err, "< 1e-12", bool(err < 1e-12)))
    bad = [f"k={r['k']}: {r['measured_counts']} vs {r['predicted_counts']}" for r in glob if r["measured_counts"] != r["predicted_counts"]]
    checks.append(Check("global-minimum multiplicities = S_k symmetry prediction (k(k-1)/2, k(k-3)/2, k-1 x2, 1 x2)", 0, len(bad), "exact", not bad, "; ".join(bad)))
    # random starts
    by_k: dict[int, dict[str, Any]] = {}
    for r in starts:
        d = by_k.setdefault(r["k"], {"random": [], "known": []})
        d["known" if r["known"] else "random"].extend(r["rows"])
    allrows = [row for d in by_k.values() for rows in d.values() for row in rows]
    unconv = [f"k? seed {r['seed']}: {r['gradient_norm']:.2g}" for r in allrows if r["gradient_norm"] > r["gradient_tolerance"]]
    gmax = max(r["gradient_norm"] for r in allrows)
    checks.append(Check("every end point is a critical point: ||grad L|| <= tolerance (~1e-11)", 0, len(unconv), f"max ||g|| = {gmax:.2g}", not unconv, "; ".join(unconv[:5])))
    table = []
    for k in sorted(by_k):
        d = by_k[k]
        rnd = d["random"]
        n_sp = sum(r["classification"] == "spurious local minimum" for r in rnd)
        nonglobal = [r for r in rnd + d["known"] if r["classification"] != "global minimum"]
        groups = _distinct(nonglobal) if nonglobal else []
        table.append({"k": k, "starts": len(rnd), "spurious": n_sp, "fraction": n_sp / len(rnd) if rnd else float("nan"),
                      "other": {c: sum(r["classification"] == c for r in rnd) for c in sorted({r["classification"] for r in rnd})},
                      "known_seeds": [r["seed"] for r in d["known"]], "known_classes": [r["classification"] for r in d["known"]],
                      "distinct": [{kk: (v.tolist() if isinstance(v, np.ndarray) else v) for kk, v in g.items()} for g in groups]})
    six = next((t for t in table if t["k"] == 6), None)
    if six is not None:
        found = sum(g["classification"] == "spurious local minimum" for g in six["distinct"])
        checks.append(Check("k = d = 6: at least one spurious local minimum (Safran & Shamir 2018: they exist for k >= 6)", ">= 1", found, ">= 1", found >= 1,
                            f"{six['spurious']} of {six['starts']} random starts; known seeds {six['known_seeds']} -> {six['known_classes']}"))
    small = [t for t in table if t["k"] <= 5]
    if small:
        n = sum(t["spurious"] for t in small)
        checks.append(Check("k = d <= 5: no spurious minimum from random starts (none reported for k < 6)", 0, n, "exact", n == 0))
    if six is not None:
        sp6 = [g for g in six["distinct"] if g["classification"] == "spurious local minimum"]
        ok = bool(sp6) and all(g["isotropy_S(k-1)xS1"] for g in sp6)
        checks.append(Check("k = 6 spurious minima: Hessian multiplicities = the Delta(S_5 x S_1) isotropy pattern (1 x5, 4 x5, 5, 6)", isotropy_multiplicities(6),
                            [g["multiplicities"] for g in sp6], "exact", ok))
    sp = [g for t in table for g in t["distinct"] if g["classification"] == "spurious local minimum"]
    strict = all(g["zero_modes"] == 0 and g["index"] == 0 and g["lambda_min"] > 0 for g in sp)
    checks.append(Check("spurious minima are strict (Hessian positive definite: no zero mode, lambda_min > 0)", "all", strict, "all", strict,
                        "; ".join(f"k={t['k']}: loss {g['loss']:.6g}, lambda_min {g['lambda_min']:.3g}" for t in table for g in t["distinct"] if g["classification"] == "spurious local minimum")))

    fig, axes = new_figure(1, 2, figsize=(9.0, 3.4), squeeze=False, gridspec_kw={"width_ratios": [1, 1.4]})
    _plot_spurious(axes[0][0], table)
    ax = axes[0][1]
    g6 = next((r for r in glob if r["k"] == 6), glob[-1])
    lam = np.asarray(g6["eigenvalues"])
    ax.semilogy(np.arange(lam.size), lam, ".", ms=4, label=f"W = I (k={g6['k']})")
    for v in g6["predicted_values"]:
        ax.axhline(v, color="k", lw=0.4, ls=":")
    if six is not None:
        first6 = [g for g in six["distinct"] if g["classification"] == "spurious local minimum"]
        if first6:
            ax.semilogy(np.arange(len(first6[0]["eigenvalues"])), np.asarray(first6[0]["eigenvalues"]), "x", ms=3, label="spurious min (k=6)")
    ax.set_xlabel("eigenvalue index")
    ax.set_ylabel(r"$\lambda$ (dotted: closed form at W = I)")
    ax.legend(fontsize=6)
    figures = [save_figure(fig, out_dir / "committee")[0]]
    data = [io.write_json(out_dir / "committee.json", {"definition": __doc__, "global": glob, "starts": table})]
    lines = ["| k = d | random starts | → spurious | distinct spurious minima: loss (λ_min, S_{k-1} isotropy pattern) ×count |", "|---|---|---|---|"]
    for t in table:
        found = ", ".join(f"{g['loss']:.5g} ({g['lambda_min']:.2g}, {'yes' if g['isotropy_S(k-1)xS1'] else 'no'}) ×{g['count']}"
                          for g in t["distinct"] if g["classification"] == "spurious local minimum") or "none"
        lines.append(f"| {t['k']} | {t['starts']} | {t['spurious']} | {found} |")
    summary = (
        "ReLU soft committee machines (second layer fixed to ones, orthonormal teacher, k = d): random starts, gradient descent on the "
        "exact population loss, damped Newton to ||∇L|| ~ 1e-16, classification by the exact Hessian. Global minimum spectrum "
        f"matches the closed form to {err:.2g} with the S_k multiplicities.\n\n" + "\n".join(lines)
    )
    return ExperimentResult("committee", checks, figures, data, summary, dict(config))


def _known_starts(value: dict[str, Any]) -> None:
    for k in value:
        if not (k.isdigit() and 2 <= int(k) <= 40):
            raise NearoptError(f"its keys are student widths k from 2 to 40 (as strings), not {k!r}")


SETTINGS = (
    Setting("global_ks", list, nonempty=True, unique=True, item=count("k", 40, low=4)),
    Setting("ks", list, unique=True, item=count("k", 40, low=2)),
    Setting("starts", list, item=count("starts", 10**6)),
    count("block", 10**4),
    Setting("lr", float, low=0.0, low_open=True, high=10.0),
    count("max_steps", 10**7),
    Setting("known", dict, check=_known_starts, item=Setting("seeds", list, nonempty=True, unique=True, item=SEED)),
)
RELATIONS = (
    Relation("len(starts) = len(ks)", lambda c: len(c["starts"]) == len(c["ks"])),
    Relation("ks or known is non-empty (the search needs starts)", lambda c: bool(c["ks"]) or bool(c["known"])),
)


def memory(config: dict[str, Any]) -> float:
    """The exact Hessian of ``k^2`` first-layer weights (a few dense copies) at the widest ``k``."""
    k = max([*config["global_ks"], *config["ks"], *(int(s) for s in config["known"])])
    return FLOAT64 * 6.0 * k**4


register(
    Experiment(
        name="committee",
        description="critical points of ReLU committee machines: spurious minima for k = d >= 6, Hessian at the global minimum vs its symmetry",
        quick={"global_ks": [4, 6], "ks": [8], "starts": [25], "block": 25, "lr": 0.5, "max_steps": 50000, "known": {"6": [50, 51, 52, 53]}},
        full={"global_ks": [4, 5, 6, 7, 8, 9, 10], "ks": [4, 5, 6, 7, 8, 9, 10], "starts": [200, 200, 1000, 500, 300, 200, 200], "block": 50,
              "lr": 0.5, "max_steps": 50000, "known": {}},
        cells=cells,
        run_cell=run_cell,
        finalize=finalize,
        settings=SETTINGS,
        relations=RELATIONS,
        memory=memory,
    )
)
