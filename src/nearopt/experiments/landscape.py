"""Experiment ``landscape``: many-start surveys of ReLU committee machines against Safran & Shamir (2018).

Teacher ``f_t(x) = sum_i relu(x_i)`` (``W1 = I``, ``k = N_i``, ``W2 = 1``); student of ``n`` units,
inputs ``x ~ N(0, I_k)``, loss ``1/2 E[(f_s - f_t)^2]``. Protocol, as in the authors' code
(:data:`SS2018_CODE`): second layer fixed to ones, first-layer entries ``N(0, 1/k)``, gradient
descent with step 0.1 until every unit's gradient norm is at most ``1e-9 / (2 pi)``
(:data:`SS2018_GTOL`; handed over to Newton at ``handover``, runs not at a strict minimum resume the
descent), a run spurious when its final loss is ``>= 1e-3``. Every end point is Newton-polished and
classified by its exact Hessian; families are grouped up to symmetry with their multiplicity
patterns and ``Delta S_k`` stabilisers.

A cell is one batch of surveys (several sizes share one zero-padded batch): ``variant``
(``relu`` ``n = k``, ``n = k + 1``, ``n = k + 2``; ``erf`` committees; ``relu`` trained in both
layers), ``cases`` ``[[k, n, starts, seed], ...]`` and the descent's ``gtol``.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from ..figures.plotting import new_figure, save_figure
from ..landscape.critical import classify, committee_teacher, newton_polish
from ..landscape.descent import SAFRAN_SHAMIR
from ..landscape.survey import Case, survey_many, wilson_interval
from ..model import io
from ..model.network import TwoLayerNet
from ..model.problem import Problem
from .base import FLOAT64, SEED, Check, Experiment, ExperimentResult, Relation, Setting, check_not_applicable, count, register

__all__ = [
    "cells", "finalize", "group_text", "MARKERS", "memory", "newcombe_interval", "PUBLISHED_K7", "published_k7", "RECALLED_SS2018", "RELATIONS",
    "run_cell", "SETTINGS", "SS2018_CODE", "SS2018_GTOL", "SS2018_RUNS", "VARIANT_LABELS", "VARIANTS"
]

#: where the protocol was read: the authors' MATLAB code, github.com/ItaySafran/OneLayerGDconvergence at commit
#: 093cc92781768ee24342b7e97a2e543d73d37c6b (GD_code/findBadMinima.m, findMinimum.m, objval.m, run_findBadMinima.m,
#: runExps.csh; Results/readme.txt)
SS2018_CODE = "github.com/ItaySafran/OneLayerGDconvergence@093cc92 (GD_code/*.m, runExps.csh, Results/readme.txt)"
#: gradient descent runs per size (k, n) in the paper's experiment: runExps.csh submits 10 jobs per size, each of
#: run_findBadMinima's 100 starts; Results/readme.txt states 1000
SS2018_RUNS = 1000
#: findMinimum.m steps on ``G = 2 pi dL/dW`` (step 0.1 / (2 pi), i.e. 0.1 on dL/dW) and stops once ``max_i |G_i| <= 1e-9`` over the
#: units i: in our normalisation, a per-unit gradient threshold of 1e-9 / (2 pi)
SS2018_GTOL = 1e-9 / (2 * math.pi)
#: spurious fractions (percent of runs, n = k) of Safran & Shamir (2018), Table 1, *as recalled*: the table could not be
#: retrieved through this project's search tools (its results files, Results/newExp-k-n.mat, are binary), so these
#: values are unverified
RECALLED_SS2018 = {6: 0.3, 7: 5.5, 8: 12.6, 9: 21.8, 10: 34.6}

#: the k = n = 7 spurious minimum published with the code of Safran, Yehudai & Shamir (2021), "The effects of
#: mild over-parameterization ..." (github.com/ItaySafran/Overparameterization, README.md, commit 1ba9d9c): in
#: their storage (units as columns) diagonal 0.9969227988 (x6) and -0.6327039049 (x1); the far unit's other
#: coordinates 0.1859910463, the matched units' weight on the unmatched coordinate 0.2616910758, every other entry
#: -0.0350801559. The README states that a non-global minimum found at k = 7 is, with overwhelming probability, this one.
PUBLISHED_K7 = {"diag": 0.9969227988, "far_diag": -0.6327039049, "far_row": 0.1859910463, "to_far": 0.2616910758, "rest": -0.0350801559}

MARKERS = {"global minimum": "*", "spurious local minimum": "o", "saddle": "^"}

VARIANTS = {
    "relu n=k": ("relu", "first", 0),
    "relu n=k+1": ("relu", "first", 1),
    "relu n=k+2": ("relu", "first", 2),
    "erf n=k": ("erf", "first", 0),
    "relu both layers": ("relu", "both", 0),
}

#: what the figures and tables call each variant
VARIANT_LABELS = {
    "relu n=k": "ReLU, n = k (student width = teacher width)",
    "relu n=k+1": "ReLU, n = k + 1 (one student unit more)",
    "relu n=k+2": "ReLU, n = k + 2 (two student units more)",
    "erf n=k": "erf, n = k (erf committee)",
    "relu both layers": "ReLU, n = k, both layers trained",
}


def published_k7() -> np.ndarray:
    """The published ``k = 7`` spurious minimum as a first layer ``(7, 7)`` (rows = units; :data:`PUBLISHED_K7`)."""
    p, k = PUBLISHED_K7, 7
    W = np.full((k, k), p["rest"])
    W[0, :] = p["far_row"]  # unit 0 is the far one
    W[0, 0] = p["far_diag"]
    W[1:, 0] = p["to_far"]
    W[np.arange(1, k), np.arange(1, k)] = p["diag"]
    return W


def newcombe_interval(x1: int, n1: int, x2: int, n2: int, confidence: float = 0.99) -> tuple[float, float]:
    """Newcombe's hybrid score interval for ``p1 - p2`` of two independent binomial proportions.

    With the Wilson intervals ``(l_i, u_i)`` of ``p_i = x_i / n_i`` (Newcombe 1998, method 10)::

        p1 - p2 - sqrt((p1 - l1)^2 + (u2 - p2)^2)  <=  p1 - p2  <=  p1 - p2 + sqrt((u1 - p1)^2 + (p2 - l2)^2)
    """
    p1, p2 = x1 / n1, x2 / n2
    l1, u1 = wilson_interval(x1, n1, confidence)
    l2, u2 = wilson_interval(x2, n2, confidence)
    d = p1 - p2
    return d - math.hypot(p1 - l1, u2 - p2), d + math.hypot(u1 - p1, p2 - l2)


def cells(config: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for variant in config["variants"]:
        _, _, extra = VARIANTS[variant]
        cases = [[k, k + extra, config["starts"], config["seed"] + 1000 * i + k] for i, k in enumerate(config["ks"])]
        for s0 in range(0, len(cases), config["sizes_per_cell"]):
            out.append({"variant": variant, "cases": cases[s0 : s0 + config["sizes_per_cell"]], "handover": config["handover"],
                        "max_steps": config["max_steps"], "gtol": SS2018_GTOL})
    return out


def _family_row(f: dict[str, Any], W1: np.ndarray, W2: np.ndarray) -> dict[str, Any]:
    row = {k: v for k, v in f.items() if k != "members"}
    row["W1"], row["W2"] = W1.tolist(), W2.tolist()
    return row


def run_cell(cell: dict[str, Any]) -> dict[str, Any]:
    act, trained, _ = VARIANTS[cell["variant"]]
    cases = [Case(committee_teacher(k, k, act), n, starts, seed) for k, n, starts, seed in cell["cases"]]
    protocol = SAFRAN_SHAMIR.replace(max_steps=cell["max_steps"], gtol=cell["gtol"])
    surveys = survey_many(cases, trained=trained, protocol=protocol, handover=cell["handover"])
    rows = []
    for (k, n, _, _), s in zip(cell["cases"], surveys):
        d = s.to_dict()
        d["families"] = [_family_row(f, fam.representative.student.W1, fam.representative.student.W2) for f, fam in zip(d["families"], s.families)]
        d.update(k=k, n=n, variant=cell["variant"])
        rows.append(d)
    return {"variant": cell["variant"], "surveys": rows}


def _spectrum(f: dict[str, Any]) -> np.ndarray:
    """A family's full sorted spectrum from its distinct eigenvalues and their counts."""
    return np.repeat(np.asarray(f["distinct_eigenvalues"], dtype=float), np.asarray(f["eigenvalue_counts"], dtype=int))


def _published_checks(by: dict[tuple[str, int, int], dict[str, Any]]) -> list[Check]:
    """The published ``k = 7`` minimum, polished by Newton, against the surveyed ``k = n = 7`` families.

    Match: loss to ``1e-8`` relative, the whole spectrum to ``1e-6 lambda_max``, and the sorted entries of the
    first layer (invariant under unit and input permutations) to ``1e-8``.
    """
    s7 = by.get(("relu n=k", 7, 7))
    if s7 is None:
        return []
    T = committee_teacher(7)
    raw = Problem(T, student=TwoLayerNet(published_k7(), np.ones((1, 7)), T.activation), trained="first")
    g_raw = classify(raw, gtol=1e-8).gradient_norm
    cp = classify(newton_polish(raw)[0])
    lam, Wp = cp.eigenvalues, np.sort(cp.student.W1.ravel())
    spur = [f for f in s7["families"] if f["classification"] == "spurious local minimum"]

    def matches(f: dict[str, Any]) -> bool:
        mine = _spectrum(f)
        return bool(abs(f["loss"] - cp.loss) <= 1e-8 * cp.loss and mine.shape == lam.shape
                    and np.max(np.abs(mine - lam)) <= 1e-6 * abs(lam[-1])
                    and np.max(np.abs(np.sort(np.ravel(f["W1"])) - Wp)) <= 1e-8)

    name_found = ("the published k = n = 7 spurious minimum (Safran, Yehudai & Shamir 2021, code README) is among the families: "
                  "loss, whole spectrum, entries")
    name_all = "every spurious end point at k = n = 7 lies in the published family (its README: the non-global minimum found at k = 7)"
    if not spur:
        why = "no start of the k = n = 7 survey ended at a spurious minimum"
        return [check_not_applicable(name_found, why), check_not_applicable(name_all, why)]
    found = [f for f in spur if matches(f)]
    ok = bool(found) and cp.classification == "spurious local minimum"
    fams = "; ".join(f"loss {f['loss']:.10g}, lambda_min {f['lambda_min']:.6g}, {f['symmetry'].get('group') or '-'} (x{f['count']})" for f in spur) or "none"
    detail = (f"published 10-digit point: ||grad L|| = {g_raw:.2g}; after Newton ||grad L|| = {cp.gradient_norm:.2g}, loss {cp.loss:.10g}, "
              f"lambda_min {lam[0]:.6g}, lambda_max {lam[-1]:.6g}, {cp.classification}; surveyed k = 7 spurious families: {fams}")
    checks = [Check(name_found, "found", "found" if ok else "not found", "loss 1e-8 rel., eigenvalues 1e-6 lambda_max, sorted entries 1e-8", ok, detail)]
    n_sp = sum(f["count"] for f in spur)
    n_pub = sum(f["count"] for f in found)
    checks.append(Check(name_all, n_sp, n_pub, "exact", n_pub == n_sp,
                        f"{n_pub} of {n_sp} spurious end points at k = 7 in the published family; {len(spur)} spurious families"))
    return checks


def _fraction_check(by: dict[tuple[str, int, int], dict[str, Any]], starts: list[int]) -> Check | None:
    """Our spurious count (``n = k``) against the recalled table: Newcombe's 99 % interval of the difference must hold 0."""
    rows, bad = [], []
    for k, pct in sorted(RECALLED_SS2018.items()):
        s = by.get(("relu n=k", k, k))
        if s is None:
            continue
        theirs = round(pct / 100 * SS2018_RUNS)
        lo, hi = newcombe_interval(s["spurious"], s["starts"], theirs, SS2018_RUNS, 0.99)
        rows.append(f"k={k}: {s['spurious']}/{s['starts']} = {100 * s['spurious_fraction']:.1f} % vs {theirs}/{SS2018_RUNS}; "
                    f"difference {100 * lo:+.1f} to {100 * hi:+.1f} points")
        if not lo <= 0.0 <= hi:
            bad.append(k)
    if not rows:
        return None
    return Check("spurious fraction (n = k) agrees with Safran & Shamir's Table 1 (two-sample, Newcombe 99 % interval of the difference holds 0; "
                 "their values as recalled, unverified; their runs: 1000 per size, read from their code)",
                 0, len(bad), "0 inside the interval", not bad, f"{'/'.join(map(str, starts))} starts per size; " + "; ".join(rows))


def _extra_unit_check(by: dict[tuple[str, int, int], dict[str, Any]]) -> Check | None:
    """The abstract's claim that mild over-parameterization reduces spurious minima: at every ``k`` surveyed with both
    ``n = k`` and ``n = k + 1`` where ``n = k`` ends spurious in at least 5 % of the starts, the Newcombe 99 % interval of
    ``p(n = k + 1) - p(n = k)`` lies below 0."""
    rows, bad = [], []
    for (variant, k, _), s in sorted(by.items(), key=lambda kv: kv[0][1]):
        wide = by.get(("relu n=k+1", k, k + 1))
        if variant != "relu n=k" or wide is None or s["spurious_fraction"] < 0.05:
            continue
        lo, hi = newcombe_interval(wide["spurious"], wide["starts"], s["spurious"], s["starts"], 0.99)
        rows.append(f"k={k}: {wide['spurious']}/{wide['starts']} vs {s['spurious']}/{s['starts']}, difference {100 * lo:+.1f} to {100 * hi:+.1f} points")
        if not hi < 0:
            bad.append(k)
    if not rows:
        return None
    return Check("one extra student unit (n = k + 1) ends spurious less often than n = k (Newcombe 99 % interval of the difference below 0, "
                 "at every k where n = k is spurious in >= 5 % of the starts)", 0, len(bad), "interval below 0", not bad, "; ".join(rows))


def finalize(config: dict[str, Any], cell_list: list[dict[str, Any]], results: list[dict[str, Any]], out_dir: Path) -> ExperimentResult:
    out_dir = Path(out_dir)
    surveys = [s for r in results for s in r["surveys"]]
    by = {(s["variant"], s["k"], s["n"]): s for s in surveys}
    checks: list[Check] = []
    lost = [f"{s['variant']} k={s['k']}" for s in surveys
            if s["converged"] + s["unconverged"] + s["diverged"] != s["starts"] or sum(s["classes"].values()) != s["starts"]]
    n_div, n_unc = sum(s["diverged"] for s in surveys), sum(s["unconverged"] for s in surveys)
    checks.append(Check("every start is counted (converged + unconverged + diverged = classified points = starts)", 0, len(lost), "exact", not lost,
                        f"{sum(s['starts'] for s in surveys)} starts; {n_div} diverged, {n_unc} unconverged" + (f"; miscounted: {', '.join(lost)}" if lost else "")))
    notcrit = sum(s["classes"].get("not converged", 0) for s in surveys)
    checks.append(Check("every end point is polished to a critical point (no 'not converged' class)", 0, notcrit, "exact", notcrit == 0))
    frac = _fraction_check(by, sorted({s["starts"] for s in surveys}))
    if frac is not None:
        checks.append(frac)
    extra = _extra_unit_check(by)
    if extra is not None:
        checks.append(extra)
    checks.extend(_published_checks(by))
    sym = [(s, f) for s in surveys for f in s["families"] if f["classification"] == "spurious local minimum" and f["symmetry"].get("analysed")]
    unexplained = [f"{s['variant']} k={s['k']} loss {f['loss']:.6g}: {f['multiplicities']} vs {f['symmetry'].get('predicted_multiplicities')}"
                   for s, f in sym if not f["symmetry"].get("consistent")]
    name_sym = "spurious minima of the square committee: Hessian multiplicities = unions of the isotypic pieces of their stabiliser"
    if not sym:
        checks.append(check_not_applicable(name_sym, "no spurious minimum among the sizes surveyed"))
    else:
        checks.append(Check(name_sym, 0, len(unexplained), "exact", not unexplained,
                        "; ".join(f"k={s['k']}: {f['symmetry'].get('group')} -> {'exact' if f['symmetry'].get('explained') else 'merged'}" for s, f in sym[:12])
                        + ("; " + "; ".join(unexplained) if unexplained else "")))
    strict = [f for s in surveys for f in s["families"] if f["classification"] == "spurious local minimum"]
    all_strict = all(f["lambda_min"] > 0 and f["zero_modes"] == 0 for f in strict)
    name_strict = "spurious minima are strict (lambda_min > 0, no zero mode)"
    checks.append(Check(name_strict, "all", all_strict, "all", all_strict) if strict
                  else check_not_applicable(name_strict, "no spurious minimum among the sizes surveyed"))
    figures = _figures(surveys, out_dir)
    saved = _save_families(surveys, out_dir / "landscape_families")
    slim = [{**s, "families": [{k: v for k, v in f.items() if k not in ("W1", "W2")} for f in s["families"]]} for s in surveys]
    data = [io.write_json(out_dir / "landscape.json", {"definition": __doc__, "protocol_source": SS2018_CODE, "gtol": SS2018_GTOL,
                                                       "recalled_ss2018_percent": RECALLED_SS2018, "ss2018_runs": SS2018_RUNS, "surveys": slim})]
    summary = ("Many-start surveys of ReLU committee machines (Safran & Shamir's protocol as in their code: step 0.1, N(0, 1/k) starts, "
               "per-unit gradient 1e-9/(2 pi) via a Newton handover, spurious at loss >= 1e-3); every end point Newton-polished and "
               f"classified by its exact Hessian; {len(saved)} family representatives saved.\n\n" + _table(surveys))
    return ExperimentResult("landscape", checks, figures, data + saved, summary, dict(config))


def _save_families(surveys: list[dict[str, Any]], fam_dir: Path) -> list[Path]:
    saved = []
    for s in surveys:
        for i, f in enumerate(s["families"]):
            name = f"{s['variant'].replace(' ', '_').replace('=', '')}_k{s['k']}_n{s['n']}_family{i:02d}.npz"
            saved.append(io.write_npz(fam_dir / name, W1=np.asarray(f["W1"]), W2=np.asarray(f["W2"]), loss=np.asarray(f["loss"]),
                                      classification=np.asarray(f["classification"])))
    return saved


def _table(surveys: list[dict[str, Any]]) -> str:
    lines = ["| variant | k | n | starts | spurious (99 % CI) | diverged / unconverged | families: loss (class, λ_min, stabiliser) ×count |",
             "|---|---|---|---|---|---|---|"]
    for s in surveys:
        lo, hi = wilson_interval(s["spurious"], s["starts"], 0.99)
        fams = ", ".join(f"{f['loss']:.6g} ({f['classification'].split()[0]}, {f['lambda_min']:.3g}, {f['symmetry'].get('group') or '-'}) ×{f['count']}"
                         for f in s["families"] if f["classification"] != "global minimum") or "global only"
        lines.append(f"| {VARIANT_LABELS[s['variant']]} | {s['k']} | {s['n']} | {s['starts']} | {100 * s['spurious_fraction']:.1f} % "
                     f"({100 * lo:.1f}-{100 * hi:.1f}) | {s['diverged']} / {s['unconverged']} | {fams} |")
    return "\n".join(lines)


def _by_variant(surveys: list[dict[str, Any]]) -> list[tuple[int, str, list[dict[str, Any]]]]:
    """``(colour index, variant, its surveys by k)`` in :data:`VARIANTS` order."""
    present = {s["variant"] for s in surveys}
    return [(j, v, sorted((s for s in surveys if s["variant"] == v), key=lambda s: s["k"])) for j, v in enumerate(VARIANTS) if v in present]


def _k_ticks(ax: Any, surveys: list[dict[str, Any]]) -> None:
    """Integer ticks at the surveyed ``k`` (at most 16 of them, else integer ticks chosen by matplotlib)."""
    ks = sorted({s["k"] for s in surveys})
    if len(ks) <= 16:
        ax.set_xticks(ks)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _offset(j: int, groups: int) -> float:
    """Horizontal shift of group ``j`` of ``groups`` at one ``k``, so that the intervals do not overlap."""
    return 0.08 * (j - (groups - 1) / 2)


def _fraction_figure(surveys: list[dict[str, Any]], out_dir: Path) -> Path:
    """Spurious fraction against ``k`` with 95 % Wilson intervals, every variant, and the recalled published values."""
    fig, ax = new_figure(1, 1, figsize=(7.5, 4.6))
    groups = _by_variant(surveys)
    for j, variant, ss in groups:
        ks = np.array([s["k"] for s in ss], dtype=float)
        fr = np.array([s["spurious_fraction"] for s in ss])
        ci = np.array([wilson_interval(s["spurious"], s["starts"]) for s in ss])
        ax.errorbar(ks + _offset(j, len(groups)), 100 * fr, yerr=100 * np.abs(np.stack([fr - ci[:, 0], ci[:, 1] - fr])), fmt="o-", ms=4,
                    capsize=2, color=f"C{j}", label=VARIANT_LABELS[variant])
    covered = {s["k"] for s in surveys if s["variant"] == "relu n=k"}
    rk = [k for k in sorted(RECALLED_SS2018) if k in covered]
    if rk:
        pub = np.array([RECALLED_SS2018[k] / 100 for k in rk])
        ci = np.array([wilson_interval(round(p * SS2018_RUNS), SS2018_RUNS) for p in pub])
        ax.errorbar(np.array(rk) + _offset(len(groups) - 1, len(groups)) + 0.1, 100 * pub, yerr=100 * np.abs(np.stack([pub - ci[:, 0], ci[:, 1] - pub])), fmt="kx", ms=6, capsize=3,
                    label=f"Safran & Shamir (2018), n = k: as recalled, unverified ({SS2018_RUNS} runs each)")
    starts = sorted({s["starts"] for s in surveys})
    ax.set_title(f"Starts ending at a spurious minimum (final loss ≥ 10⁻³), {'/'.join(map(str, starts))} starts per size")
    ax.set_xlabel("k (teacher units = input dimension)")
    ax.set_ylabel("% of starts, 95 % Wilson interval")
    _k_ticks(ax, surveys)
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper left", fontsize=7)
    return save_figure(fig, out_dir / "landscape_fractions")[0]


def _families_figure(surveys: list[dict[str, Any]], out_dir: Path) -> Path:
    """Loss and ``lambda_min`` of every family other than the global minimum (marker: class; colour: variant; size: count)."""
    fig, axes = new_figure(1, 2, figsize=(10, 4.2), squeeze=False)
    groups = _by_variant(surveys)
    classes: set[str] = set()
    for ax, key, label in ((axes[0][0], "loss", "family loss L"), (axes[0][1], "lambda_min", r"family $\lambda_{\min}$ of the Hessian")):
        for j, _, ss in groups:
            for s in ss:
                for f in s["families"]:
                    if f["classification"] == "global minimum":
                        continue
                    classes.add(f["classification"])
                    ax.plot([s["k"] + _offset(j, len(groups))], [f[key]], MARKERS.get(f["classification"], "s"), color=f"C{j}",
                            ms=3 + min(7.0, 2.5 * math.log10(1 + f["count"])), alpha=0.8)
        ax.set_xlabel("k (teacher units)")
        ax.set_ylabel(label)
        _k_ticks(ax, surveys)
        if key == "loss":
            ax.set_yscale("log")
        else:
            ax.axhline(0.0, color="0.6", lw=0.8)
    handles = [Line2D([], [], ls="", marker="o", color=f"C{j}", label=VARIANT_LABELS[v]) for j, v, _ in groups]
    handles += [Line2D([], [], ls="", marker=MARKERS.get(c, "s"), color="0.3", label=c) for c in sorted(classes)]
    axes[0][0].legend(handles=handles, fontsize=7, loc="best")
    axes[0][0].set_title("Loss of each family")
    axes[0][1].set_title("Smallest Hessian eigenvalue of each family")
    fig.suptitle("Critical points other than the global minimum, grouped into families (marker size: number of starts)", fontsize=10)
    return save_figure(fig, out_dir / "landscape_family_losses")[0]


def _spectrum_figure(surveys: list[dict[str, Any]], out_dir: Path) -> Path | None:
    """The distinct Hessian eigenvalues of the most visited spurious family at the largest square size, with multiplicities."""
    spur = [(s, f) for s in surveys for f in s["families"] if f["classification"] == "spurious local minimum"]
    if not spur:
        return None
    s, f = max(spur, key=lambda p: (p[0]["variant"] == "relu n=k", p[0]["k"], p[1]["count"]))
    fig, ax = new_figure(1, 1, figsize=(7.5, 4.2))
    vals, counts = np.asarray(f["distinct_eigenvalues"]), np.asarray(f["eigenvalue_counts"])
    ax.bar(np.arange(vals.size), vals, color="C0")
    for i, (v, c) in enumerate(zip(vals, counts)):
        ax.annotate(f"×{c}", (i, v), ha="center", va="bottom", fontsize=7)
    ax.set_yscale("log")
    ax.set_xticks(np.arange(vals.size))
    ax.set_xlabel("distinct eigenvalue, ascending (label: multiplicity)")
    ax.set_ylabel(r"Hessian eigenvalue $\lambda$")
    group = f["symmetry"].get("group")
    pred = f["symmetry"].get("predicted_multiplicities")
    ax.set_title(f"{VARIANT_LABELS[s['variant']]}, k = {s['k']}: spurious family, loss {f['loss']:.6g}, {f['count']} starts\n"
                 + (f"stabiliser {group_text(group)}; multiplicities {'as' if f['symmetry'].get('explained') else 'merged from'} its isotypic pieces {pred}"
                    if group else "stabiliser not analysed"), fontsize=9)
    return save_figure(fig, out_dir / "landscape_spectrum")[0]


_SUBSCRIPTS = str.maketrans("0123456789", "₀₁₂₃₄₅₆₇₈₉")


def group_text(group: str) -> str:
    """``"S_8 x S_1"`` as ``"S₈ × S₁"``."""
    return re.sub(r"S_(\d+)", lambda m: "S" + m.group(1).translate(_SUBSCRIPTS), group).replace(" x ", " × ")


def _figures(surveys: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    figs = [_fraction_figure(surveys, out_dir), _families_figure(surveys, out_dir)]
    spec = _spectrum_figure(surveys, out_dir)
    return figs + ([spec] if spec is not None else [])


SETTINGS = (
    Setting("variants", list, nonempty=True, unique=True, item=Setting("variant", str, choices=tuple(VARIANTS))),
    Setting("ks", list, nonempty=True, unique=True, item=count("k", 40, low=2)),
    count("starts", 10**6),
    SEED,
    count("sizes_per_cell", 100),
    Setting("handover", float, low=0.0, low_open=True, high=1.0),
    count("max_steps", 10**7),
)
RELATIONS = (Relation("seed + 1000 len(ks) + max(ks) < 2^31 (the per-size seeds)", lambda c: c["seed"] + 1000 * len(c["ks"]) + max(c["ks"]) < 2**31),)


def memory(config: dict[str, Any]) -> float:
    """A padded batch (a dozen ``(R, n, n + k)`` kernel arrays) or the dense Hessian of the widest point, whichever is larger."""
    k = max(config["ks"])
    n = k + max(VARIANTS[v][2] for v in config["variants"])
    R = config["starts"] * min(config["sizes_per_cell"], len(config["ks"]))
    P = n * (k + 1)
    return float(max(FLOAT64 * 12 * R * n * (n + k), FLOAT64 * 6 * P * P))


register(
    Experiment(
        name="landscape",
        description="many-start surveys of ReLU committee machines: spurious fractions vs Safran & Shamir, families of critical points and their spectra",
        quick={"variants": ["relu n=k", "relu n=k+1"], "ks": [6, 7, 8, 9], "starts": 300, "seed": 0, "sizes_per_cell": 4, "handover": 1e-5, "max_steps": 200_000},
        full={"variants": ["relu n=k", "relu n=k+1", "relu n=k+2", "erf n=k", "relu both layers"], "ks": list(range(6, 21)), "starts": 1000, "seed": 0,
              "sizes_per_cell": 1, "handover": 1e-5, "max_steps": 1_000_000},
        cells=cells,
        run_cell=run_cell,
        finalize=finalize,
        settings=SETTINGS,
        relations=RELATIONS,
        memory=memory,
    )
)
