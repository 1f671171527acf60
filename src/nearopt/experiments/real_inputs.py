"""Experiment ``real-inputs``: does the Gaussian picture carry over to real data?

Inputs are a bundled real data set (:mod:`nearopt.model.datasets`; ``digits`` by default:
1797 images, standardised, projected on the leading ``N_i`` principal components
and trace-normalised). A random teacher labels them. Per cell (data set,
activation, ``N_i``, ``N_h``, teacher seed):

* **real**: the batch Hessian at the optimum on the ``N`` real inputs
  (eigenvalues from the singular values of ``J / sqrt(N)``);
* **Gaussian equivalent**: the exact population Hessian for ``x ~ N(0, Sigma)``
  with the data's own second moment ``Sigma = X^T X / N``;
* **Gaussian control**: batch Hessians on ``N`` inputs drawn from that same
  ``N(0, Sigma)`` (several data seeds): the distance a *Gaussian* sample of the
  same size has from the population, i.e. the finite-``N`` noise floor.

Distances to the Gaussian equivalent: the two-sample KS statistic of the spectra
(each truncated at its own rank, eigenvalues equal to 9 significant digits
counted as equal), the relative error of the largest and of the smallest nonzero
eigenvalue, and the rank. Theory: for linear networks the Hessian depends on the
inputs only through ``E[x x^T]``, so real and Gaussian-equivalent matrices agree to
rounding (checked entry by entry); for non-linear ones higher moments enter
(``E[g'(w.x)^2 x x^T]`` is not a function of ``Sigma`` alone): the measured
distances, set against the Gaussian control, show where the equivalence holds.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from ..curvature.batch import BatchGaussNewton
from ..curvature.population import PopulationHessian
from ..errors import NearoptError
from ..figures.plotting import new_figure, save_figure
from ..model import io
from ..model.datasets import dataset_names, load_inputs, raw_features, standardise
from ..model.network import sample_teacher
from ..model.problem import GaussianInputs, Problem
from ..spectra.spectrum import Spectrum
from .base import FLOAT64, SEED, Check, Experiment, ExperimentResult, Setting, check_below, check_equal, count, n_params, names, register

__all__ = ["cells", "CONTROL_TOP_RTOL", "finalize", "KS_BITS", "LINEAR_RTOL", "memory", "run_cell", "SETTINGS"]

#: significant bits kept when comparing spectra by KS (2^-30 ~ 1e-9 relative): rounding-level differences are ties
KS_BITS = 30
#: the Gaussian control's median top-eigenvalue error must stay below this (finite-N noise at N ~ 1800, P <= 800)
CONTROL_TOP_RTOL = 0.2
#: the linear identity holds to rounding: entrywise, relative to the largest entry
LINEAR_RTOL = 1e-10


def _features(dataset: str) -> float:
    """Usable features of ``dataset``; unbounded when scikit-learn is missing, so that planning and
    ``nearopt experiment --list`` work without the ``data`` extra (running a cell then says what to install)."""
    try:
        return int(standardise(raw_features(dataset)).shape[1])
    except NearoptError:
        if importlib.util.find_spec("sklearn") is None:
            return math.inf
        raise


def cells(config: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for ds in config["datasets"]:
        width = _features(ds)
        for act in config["activations"]:
            for ni in config["n_inputs"]:
                if ni > width:
                    continue
                for nh in config["n_hidden"]:
                    for seed in config["teacher_seeds"]:
                        out.append({"dataset": ds, "activation": act, "n_inputs": ni, "n_hidden": nh, "seed": seed, "control_seeds": config["control_seeds"]})
    return out


def _nonzero(spec: Spectrum) -> np.ndarray:
    """The spectrum ``(P,)`` with the eigenvalues beyond its rank set to 0, quantised to ``KS_BITS`` bits."""
    e = np.array(spec.eigenvalues, dtype=np.float64)
    e[: e.size - spec.rank.rank] = 0.0
    m, x = np.frexp(e)
    return np.ldexp(np.round(m * 2.0**KS_BITS) / 2.0**KS_BITS, x)


def _distances(spec: Spectrum, ref: Spectrum) -> dict[str, float | int]:
    return {
        "ks": float(stats.ks_2samp(_nonzero(spec), _nonzero(ref), method="asymp").statistic),
        "top_rel_error": float(abs(spec.largest / ref.largest - 1)),
        "smallest_rel_error": float(abs(spec.smallest_nonzero / ref.smallest_nonzero - 1)),
        "rank": int(spec.rank.rank),
    }


def run_cell(cell: dict[str, Any]) -> dict[str, Any]:
    X = load_inputs(cell["dataset"], n_inputs=cell["n_inputs"])
    net = sample_teacher(cell["n_inputs"], cell["n_hidden"], cell["activation"], seed=cell["seed"])
    law = GaussianInputs.from_data(X)
    real_op = BatchGaussNewton(net, X)
    pop_op = PopulationHessian(Problem(net, inputs=law))
    real, pop = real_op.spectrum("factor"), pop_op.spectrum("auto")
    out: dict[str, Any] = {"samples": int(X.shape[0]), "P": net.n_params, "rank_population": pop.rank.rank,
                           "real": _distances(real, pop), "population_method": pop.method,
                           "eig_real": real.eigenvalues, "eig_population": pop.eigenvalues}
    if cell["activation"] == "linear":
        G, H = real_op.to_dense(), pop_op.to_dense()
        out["linear_identity_error"] = float(np.abs(G - H).max() / np.abs(G).max())
    controls = []
    for s in range(cell["control_seeds"]):
        g = BatchGaussNewton(net, law.sample(X.shape[0], seed=1000 + s)).spectrum("factor")
        controls.append(_distances(g, pop))
        if s == 0:
            out["eig_control"] = g.eigenvalues
    out["control"] = {k: float(np.median([c[k] for c in controls])) for k in ("ks", "top_rel_error", "smallest_rel_error")}
    out["control_ranks"] = [int(c["rank"]) for c in controls]
    return json.loads(io.to_json(out, indent=None))


def finalize(config: dict[str, Any], cell_list: list[dict[str, Any]], results: list[dict[str, Any]], out_dir: Path) -> ExperimentResult:
    out_dir = Path(out_dir)
    rows = []
    checks: list[Check] = []
    for c, r in zip(cell_list, results):
        tag = f"{c['dataset']}, {c['activation']}, N_i={c['n_inputs']}, N_h={c['n_hidden']}, seed {c['seed']}"
        rows.append({**{k: c[k] for k in ("dataset", "activation", "n_inputs", "n_hidden", "seed")}, "P": r["P"], "N": r["samples"],
                     "rank_gaussian_equivalent": r["rank_population"], "rank_real": r["real"]["rank"],
                     "ks_real": r["real"]["ks"], "ks_control": r["control"]["ks"],
                     "top_rel_error_real": r["real"]["top_rel_error"], "top_rel_error_control": r["control"]["top_rel_error"],
                     "smallest_rel_error_real": r["real"]["smallest_rel_error"], "smallest_rel_error_control": r["control"]["smallest_rel_error"],
                     "linear_identity_error": r.get("linear_identity_error")})
        if c["activation"] == "linear":
            checks.append(check_below(f"linear identity, {tag}: batch Hessian on real data = population Hessian with its second moment (max entry error / max entry)",
                                      r["linear_identity_error"], LINEAR_RTOL))
        checks.append(check_equal(f"rank, {tag}: real data = Gaussian equivalent", r["rank_population"], r["real"]["rank"]))
        checks.append(Check(f"Gaussian control, {tag}: N(0, Sigma) batches have the population rank and top eigenvalue (median error < {CONTROL_TOP_RTOL})",
                            f"rank {r['rank_population']}, error < {CONTROL_TOP_RTOL}", {"ranks": r["control_ranks"], "top_rel_error": r["control"]["top_rel_error"]},
                            f"exact / < {CONTROL_TOP_RTOL}", bool(all(k == r["rank_population"] for k in r["control_ranks"]) and r["control"]["top_rel_error"] < CONTROL_TOP_RTOL)))
    figures = [_figure(config, cell_list, results, out_dir)]
    data = [io.write_json(out_dir / "real_inputs.json", {"definition": __doc__, "rows": rows, "cells": cell_list, "results": results})]
    summary = _summary(config, rows)
    return ExperimentResult("real-inputs", checks, figures, data, summary, dict(config))


def _figure(config, cell_list, results, out_dir: Path) -> Path:
    acts = config["activations"]
    ds = config["datasets"][0]
    fig, axes = new_figure(2, max(3, len(acts)), figsize=(3.3 * max(3, len(acts)), 6.6), squeeze=False)
    # top row: spectra at the largest size of the first data set, per activation
    for ax, act in zip(axes[0], acts):
        sel = [(c, r) for c, r in zip(cell_list, results) if c["dataset"] == ds and c["activation"] == act and c["seed"] == config["teacher_seeds"][0]]
        c, r = max(sel, key=lambda cr: (cr[0]["n_inputs"], cr[0]["n_hidden"]))
        for key, style, label in (("eig_population", "-", "Gaussian equivalent (population)"), ("eig_real", "o", f"real {ds} (N={r['samples']})"),
                                  ("eig_control", "x", "Gaussian control batch")):
            e = np.sort(np.asarray(r[key]))[::-1][: r["rank_population"]]
            k = np.arange(1, e.size + 1)
            ax.semilogy(k, np.clip(e, 1e-300, None), style, ms=2.5, lw=1.0, label=label, alpha=0.8 if key != "eig_control" else 0.5)
        ax.set_title(f"{act}: N_i={c['n_inputs']}, N_h={c['n_hidden']}", fontsize=9)
        ax.set_xlabel("eigenvalue index (descending)")
        ax.set_ylabel("Hessian eigenvalue")
        ax.legend(fontsize=6)
    for ax in axes[0][len(acts):]:
        ax.set_visible(False)
    # bottom row: distances vs N_i (KS, smallest) and vs N_h (top), real (solid) and Gaussian control (dashed)
    panels = (("ks", "n_inputs", "KS distance of spectra"), ("top_rel_error", "n_hidden", "rel. error, largest eigenvalue"),
              ("smallest_rel_error", "n_inputs", "rel. error, smallest nonzero"))
    for ax, (metric, axis, label) in zip(axes[1], panels):
        for i, act in enumerate(a for a in acts if a != "linear"):
            sel = [(c, r) for c, r in zip(cell_list, results) if c["dataset"] == ds and c["activation"] == act]
            xs = sorted({c[axis] for c, _ in sel})
            real = [np.median([r["real"][metric] for c, r in sel if c[axis] == x]) for x in xs]
            ctrl = [np.median([r["control"][metric] for c, r in sel if c[axis] == x]) for x in xs]
            ax.plot(xs, real, "o-", color=f"C{i}", ms=3, label=f"{act} real")
            ax.plot(xs, ctrl, "s--", color=f"C{i}", ms=2.5, lw=0.8, alpha=0.7, label=f"{act} Gaussian control")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("N_i" if axis == "n_inputs" else "N_h")
        ax.set_ylabel(f"{label} (median)")
        ax.legend(fontsize=5.5)
    for ax in axes[1][len(panels):]:
        ax.set_visible(False)
    return save_figure(fig, out_dir / "real_inputs")[0]


def _summary(config, rows) -> str:
    lines = ["| data | activation | N_i | N_h | P | rank real / Gauss. eq. | KS real (control) | top rel. err real (control) | smallest nonzero rel. err real (control) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lin = f" (linear identity {r['linear_identity_error']:.1e})" if r["linear_identity_error"] is not None else ""
        lines.append(f"| {r['dataset']} | {r['activation']}{lin} | {r['n_inputs']} | {r['n_hidden']} | {r['P']} | {r['rank_real']} / {r['rank_gaussian_equivalent']} | "
                     f"{r['ks_real']:.3f} ({r['ks_control']:.3f}) | {r['top_rel_error_real']:.3g} ({r['top_rel_error_control']:.3g}) | "
                     f"{r['smallest_rel_error_real']:.3g} ({r['smallest_rel_error_control']:.3g}) |")
    return (
        f"Real inputs ({', '.join(config['datasets'])}; standardised, projected on N_i principal components) labelled by a random teacher. "
        "The batch Hessian at the optimum on the real data is compared with the Gaussian-equivalent population Hessian (x ~ N(0, Sigma), "
        "Sigma = the data's second moment); the control column is the median distance of batches of the same size drawn from N(0, Sigma) "
        f"({config['control_seeds']} seeds), i.e. the finite-N noise. Linear networks agree to rounding (only second moments enter). "
        "For non-linear ones, real-data distances well above the control mark where Gaussian equivalence breaks.\n\n" + "\n".join(lines)
    )


SETTINGS = (
    names("datasets", Setting("dataset", str, choices=tuple(dataset_names()))),
    names("activations"),
    Setting("n_inputs", list, nonempty=True, unique=True, item=count("n_inputs", 10**4)),
    Setting("n_hidden", list, nonempty=True, unique=True, item=count("n_hidden", 10**4)),
    Setting("teacher_seeds", list, nonempty=True, unique=True, item=SEED),
    count("control_seeds", 100),
)


def memory(config: dict[str, Any]) -> float:
    """The batch Jacobian ``(N, P)`` of the largest data set (``N <= 2000`` rows) and the dense population Hessian (a few copies)."""
    P = n_params(max(config["n_inputs"]), max(config["n_hidden"]))
    return FLOAT64 * (3.0 * 2000 * P + 4.0 * P * P)


register(
    Experiment(
        name="real-inputs",
        description="real data (bundled digits) against the Gaussian-equivalent population Hessian with the data's covariance",
        quick={"datasets": ["digits"], "activations": ["linear", "erf", "relu", "quadratic"], "n_inputs": [8, 16], "n_hidden": [2, 4],
               "teacher_seeds": [0], "control_seeds": 2},
        full={"datasets": ["digits", "breast-cancer"], "activations": ["linear", "quadratic", "erf", "tanh", "relu"], "n_inputs": [4, 8, 16, 32, 48],
              "n_hidden": [2, 4, 8, 16], "teacher_seeds": [0, 1], "control_seeds": 5},
        cells=cells,
        run_cell=run_cell,
        finalize=finalize,
        settings=SETTINGS,
        memory=memory,
    )
)
