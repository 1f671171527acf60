"""Experiment ``architectures``: Hessians of the networks beyond the paper's (biases, outputs, depth, mismatched activations).

Three parts, each measured on the exact population Hessian (``docs/reproduce.md``, section *architectures*):

* ``ranks`` (a): deep linear networks ``f(x) = W_L ... W_1 x`` of depth ``L = 1 ... 4`` with
  ``K`` outputs under ``x ~ N(0, Sigma)`` of full and deficient rank ``r``, at the teacher. The rank
  is measured by the rank policy on every eigenvalue of the exact Hessian
  (:class:`~nearopt.curvature.deep_linear.DeepLinearHessian`, dense route of
  :func:`nearopt.spectra.solve`: the rank decision reads the eigenvalues only, never the
  prediction) and compared with ``q (r + K - q)``, ``q = min(r, K, hidden widths)``
  (:func:`~nearopt.theory.rank_prediction.predict_deep_linear_rank`). Depth-2 networks are measured
  a second time as two-layer networks with the linear activation and ``K`` outputs by the general
  population engine (:class:`~nearopt.curvature.population.PopulationHessian`, kernels by
  Price's theorem), an independent route to the same matrix.
* ``spectra`` (b): erf and tanh teachers without biases, with ``b1``, with ``b1`` and ``b2``, and
  ``M = 1, 2, 3`` outputs (the configurations nest: the same ``W1``, the first ``M`` rows of one
  ``W2``, the same biases): rank against ``P``, the smallest nonzero and the largest eigenvalues.
  One configuration is held against the batch Gauss-Newton matrix ``J^T J / N`` of ``N`` fresh
  Gaussian inputs (autodiff Jacobians, no kernel formula), entry by entry in units of the
  Monte Carlo standard error.
* ``fit`` (c): an erf teacher of width ``k`` fitted by tanh students of width ``k ... k + 3``:
  :func:`~nearopt.landscape.critical.find_critical_point` (trust region on the exact population
  loss, then Newton) from random starts, and, for each width above ``k``, from the best point of the
  width below with one dead unit added (outgoing weight 0: the same function, so the loss cannot
  rise); the lowest-loss end point per width, its loss, gradient norm, index and smallest
  eigenvalues. ReLU students of the same widths the same way from the same random starts (the exact
  ReLU moments with means: closed forms, and a checked quadrature against the erf unit).
"""

from __future__ import annotations

import json
import math
import time
import warnings
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..curvature.batch import iter_jacobian_chunks
from ..curvature.deep_linear import DeepLinearHessian
from ..curvature.population import PopulationHessian
from ..figures.plotting import new_figure, save_figure
from ..landscape.critical import CriticalPoint, find_critical_point
from ..landscape.manifold import add_dead_units, random_student
from ..model import io
from ..model.activations import get_activation
from ..model.deep_linear import DeepLinearProblem, sample_deep_linear
from ..model.network import TwoLayerNet, sample_inputs, sample_teacher
from ..model.problem import GaussianInputs, Problem
from ..spectra.solver import NullSpaceWarning
from ..theory.rank_prediction import predict_deep_linear_rank, predict_rank
from .base import (
    FLOAT64,
    SEED,
    Check,
    Experiment,
    ExperimentResult,
    Relation,
    Setting,
    activation_name,
    check_below,
    check_equal,
    check_not_applicable,
    count,
    counts,
    names,
    register,
)

__all__ = ["BIASES", "cells", "covariance", "finalize", "FULL", "hidden_layers", "memory", "QUICK", "run_cell", "SETTINGS", "spectra_teacher"]

#: the bias configurations of part (b), in order: none, first layer, both layers
BIASES = ("none", "b1", "b1+b2")
#: a Monte Carlo entry more than this many standard errors from the population value fails part (b)'s batch check
Z_MAX = 6.0
#: where an entry has no sampling variance (the same for every input: the b2 block, the W2 and b2 entries of two different outputs),
#: it must agree to this (absolute)
EXACT_ATOL = 1e-12
#: the few smallest nonzero eigenvalues reported per configuration
N_SMALLEST = 3

QUICK: dict[str, Any] = {
    "seed": 0,
    "linear_inputs": 4,
    "depths": [1, 2, 3, 4],
    "hidden_patterns": [[5], [2], [5, 1]],
    "outputs": [1, 2, 3],
    "rank_sigmas": [4, 2],
    "activations": ["erf", "tanh"],
    "n_inputs": 5,
    "n_hidden": 3,
    "batch_samples": 20000,
    "fit_inputs": 3,
    "fit_width": 1,
    "fit_seeds": 1,
    "fit_chain": False,
    "fit_steps": 30,
    "newton_iter": 10,
}
FULL: dict[str, Any] = {
    **QUICK,
    "linear_inputs": 6,
    "hidden_patterns": [[7], [4], [2], [7, 1], [3, 7]],
    "rank_sigmas": [6, 3, 1],
    "n_inputs": 8,
    "n_hidden": 4,
    "batch_samples": 200000,
    "fit_inputs": 4,
    "fit_width": 2,
    "fit_seeds": 2,
    "fit_chain": True,
    "fit_steps": 150,
    "newton_iter": 40,
}


# ----------------------------------------------------------------------------- cells
def cells(config: dict[str, Any]) -> list[dict[str, Any]]:
    """The fits first (the slowest, widest first, so that a pool of workers starts them at once), then ranks, spectra, the batch check."""
    seed = config["seed"]
    fit = dict(n_inputs=config["fit_inputs"], width=config["fit_width"], steps=config["fit_steps"], newton_iter=config["newton_iter"], seed=seed)
    out = [dict(kind="fit-chain", **fit)] if config["fit_chain"] else []
    widths = range(config["fit_width"] + 3, config["fit_width"] - 1, -1)
    out += [dict(kind="fit", K=K, start=s, **fit) for K in widths for s in range(config["fit_seeds"])]
    out += [dict(kind="relu-fit", K=K, start=s, **fit) for K in widths for s in range(config["fit_seeds"])]
    out += [dict(kind="ranks", depth=d, n_inputs=config["linear_inputs"], patterns=config["hidden_patterns"], outputs=config["outputs"],
                rank_sigmas=config["rank_sigmas"], seed=seed) for d in config["depths"]]
    teacher = {k: config[k] for k in ("n_inputs", "n_hidden", "outputs")}
    out += [dict(kind="spectra", activation=a, seed=seed, **teacher) for a in config["activations"]]
    out.append(dict(kind="batch", activation=config["activations"][0], samples=config["batch_samples"], seed=seed, **teacher))
    return out


def run_cell(cell: dict[str, Any]) -> dict[str, Any]:
    t0 = time.perf_counter()
    kind = cell["kind"]
    out: dict[str, Any]
    with warnings.catch_warnings():  # an unclear rank cut is recorded in the rows ("clear"), not warned about per problem
        warnings.simplefilter("ignore", NullSpaceWarning)
        if kind == "ranks":
            out = {"rows": _rank_rows(cell)}
        elif kind == "spectra":
            out = {"rows": [_spectrum_row(cell, bias, M) for bias in BIASES for M in cell["outputs"]]}
        elif kind == "batch":
            out = _batch_check(cell)
        elif kind == "fit":
            out = _fit_from_random(cell)
        elif kind == "relu-fit":
            out = _fit_from_random(cell, "relu")
        else:
            out = _fit_chain(cell)
    out["seconds"] = time.perf_counter() - t0
    return json.loads(io.to_json(out, indent=None))


# ----------------------------------------------------------------------------- (a) ranks
def hidden_layers(pattern: list[int], depth: int) -> tuple[int, ...]:
    """The ``depth - 1`` hidden widths of a pattern, repeated cyclically (``[5, 1]`` at depth 4: ``5, 1, 5``)."""
    return tuple(pattern[i % len(pattern)] for i in range(depth - 1))


def covariance(n_inputs: int, rank: int, seed: int) -> GaussianInputs:
    """``N(0, Sigma)`` with ``Sigma = Q diag(d) Q^T`` of rank ``rank``: ``Q`` a seeded random rotation, ``d`` in ``[0.5, 2]``
    (the identity when ``rank = n_inputs``: the isotropic law)."""
    if rank == n_inputs:
        return GaussianInputs(n_inputs)
    rng = np.random.default_rng([seed, 0xA5, rank])
    Q = np.linalg.qr(rng.standard_normal((n_inputs, n_inputs)))[0]
    d = np.zeros(n_inputs)
    d[:rank] = rng.uniform(0.5, 2.0, rank)
    return GaussianInputs(covariance=(Q * d) @ Q.T)


def _rank_rows(cell: dict[str, Any]) -> list[dict[str, Any]]:
    """Every (hidden pattern, K, rank Sigma) of one depth: the measured rank against ``q (r + K - q)``."""
    depth, n_i, seed = cell["depth"], cell["n_inputs"], cell["seed"]
    hiddens = list(dict.fromkeys(hidden_layers(p, depth) for p in cell["patterns"]))
    rows = []
    for hidden, K, r in product(hiddens, cell["outputs"], cell["rank_sigmas"]):
        widths = (n_i, *hidden, K)
        law = covariance(n_i, r, seed)
        teacher = sample_deep_linear(widths, seed=seed)
        pred = predict_deep_linear_rank(widths, law.rank)
        spec = DeepLinearHessian(DeepLinearProblem(teacher, inputs=law)).spectrum("dense")
        rows.append(_rank_row("deep linear", widths, law.rank, spec, pred.rank))
        if depth == 2:  # the same architecture as a two-layer network, linear activation, by the general engine
            W1, W2 = teacher.weights
            spec2 = PopulationHessian(Problem(TwoLayerNet(W1, W2, get_activation("linear")), inputs=law)).spectrum("dense")
            rows.append(_rank_row("two-layer, linear activation", widths, law.rank, spec2, pred.rank))
    return rows


def _rank_row(engine: str, widths: tuple[int, ...], r: int, spec: Any, predicted: int) -> dict[str, Any]:
    q = min(r, widths[-1], *widths[1:-1])
    return {"engine": engine, "widths": list(widths), "depth": len(widths) - 1, "K": widths[-1], "rank_sigma": r, "q": q, "P": spec.n_params,
            "measured": spec.rank.rank, "predicted": predicted, "clear": spec.rank.clear, "gap": spec.rank.gap, "route": spec.method}


# ----------------------------------------------------------------------------- (b) spectra
def spectra_teacher(n_inputs: int, n_hidden: int, activation: str, bias: str, M: int, seed: int) -> TwoLayerNet:
    """The teacher of part (b): ``W1 ~ N(0, 1/N_i)``, the first ``M`` rows of one ``W2`` ``(3, N_h) ~ N(0, 1/N_h)``,
    ``b1 ~ N(0, 1/4)``, ``b2 ~ N(0, 1/N_h)`` (when ``bias`` has them), all from one seeded draw: the configurations nest."""
    rng = np.random.default_rng([seed, 0xB1A5])
    W1 = rng.standard_normal((n_hidden, n_inputs)) / math.sqrt(n_inputs)
    W2 = rng.standard_normal((max(M, 3), n_hidden)) / math.sqrt(n_hidden)
    b1 = 0.5 * rng.standard_normal(n_hidden)
    b2 = rng.standard_normal(max(M, 3)) / math.sqrt(n_hidden)
    return TwoLayerNet(W1, W2[:M], get_activation(activation), b1 if bias != "none" else None, b2[:M] if bias == "b1+b2" else None)


def _spectrum_row(cell: dict[str, Any], bias: str, M: int) -> dict[str, Any]:
    T = spectra_teacher(cell["n_inputs"], cell["n_hidden"], cell["activation"], bias, M, cell["seed"])
    spec = PopulationHessian(Problem(T)).spectrum("dense")
    nz = spec.nonzero
    row = {"activation": cell["activation"], "bias": bias, "M": M, "P": spec.n_params, "rank": spec.rank.rank, "clear": spec.rank.clear,
           "null": spec.n_params - spec.rank.rank, "smallest": [float(x) for x in nz[:N_SMALLEST]], "largest": spec.largest,
           "eigenvalues": spec.eigenvalues, "route": spec.method}
    if T.is_plain:
        row["predict_rank"] = predict_rank(T.activation, T.n_inputs, T.n_hidden).rank
    return row


def _batch_check(cell: dict[str, Any]) -> dict[str, Any]:
    """The population Hessian of the richest configuration (``b1 + b2``, most outputs) against ``J^T J / N`` of ``N`` fresh inputs.

    Per entry: the Monte Carlo mean ``G`` of the per-input ``G_n = sum_m J_nm J_nm^T`` and its standard error
    ``sd(G_n) / sqrt(N)``; ``z = (G - H) / se``. Entries without sampling variance must agree to :data:`EXACT_ATOL`.
    """
    M = max(cell["outputs"])
    T = spectra_teacher(cell["n_inputs"], cell["n_hidden"], cell["activation"], "b1+b2", M, cell["seed"])
    H = PopulationHessian(Problem(T)).to_dense()
    X = sample_inputs(cell["samples"], T.n_inputs, seed=cell["seed"])
    P, N = T.n_params, cell["samples"]
    s1, s2 = torch.zeros(P, P, dtype=torch.float64), torch.zeros(P, P, dtype=torch.float64)
    for Jc in iter_jacobian_chunks(T, X, chunk_size=2000):  # 2000 inputs (M rows each) per chunk
        J = Jc.reshape(-1, M, P)
        G = torch.einsum("nmp,nmq->npq", J, J)
        s1 += G.sum(0)
        s2 += (G * G).sum(0)
    mean = (s1 / N).numpy()
    var = np.maximum((s2 / N).numpy() - mean**2, 0.0) * N / (N - 1)
    se = np.sqrt(var / N)
    diff = mean - H
    noisy = se > 1e-14 * np.abs(H).max()
    z = np.abs(diff[noisy]) / se[noisy]
    expected = float((se[noisy] ** 2).sum())
    return {"activation": cell["activation"], "M": M, "bias": "b1+b2", "P": P, "samples": N, "max_z": float(z.max()), "entries": int(noisy.sum()),
            "exact_entries": int((~noisy).sum()), "exact_max_diff": float(np.abs(diff[~noisy]).max()) if (~noisy).any() else 0.0,
            "frobenius_ratio": float((diff[noisy] ** 2).sum() / expected), "relative_error": float(np.linalg.norm(diff) / np.linalg.norm(H))}


# ----------------------------------------------------------------------------- (c) fit
def _fit_teacher(cell: dict[str, Any]) -> TwoLayerNet:
    return sample_teacher(cell["n_inputs"], cell["width"], "erf", seed=cell["seed"])


def _fit_row(cp: CriticalPoint, start: str) -> dict[str, Any]:
    d = cp.to_dict()
    lam = cp.eigenvalues
    keep = ("classification", "loss", "loss_relative", "gradient_norm", "gradient_tolerance", "converged", "index", "zero_modes", "P", "K",
            "lambda_min", "lambda_max", "smallest_positive", "descent_steps", "newton_iterations")
    return {"start": start, **{k: d[k] for k in keep}, "smallest": [float(x) for x in lam[:N_SMALLEST]], "W1": cp.student.W1, "W2": cp.student.W2}


def _fit(teacher: TwoLayerNet, student: TwoLayerNet, cell: dict[str, Any]) -> CriticalPoint:
    return find_critical_point(Problem(teacher, student=student), max_steps=cell["steps"], newton_iter=cell["newton_iter"])


def _fit_from_random(cell: dict[str, Any], activation: str = "tanh") -> dict[str, Any]:
    T = _fit_teacher(cell)
    S = random_student(T, cell["K"], seed=cell["seed"] + 1 + cell["start"]).with_activation(activation)
    return {"rows": [_fit_row(_fit(T, S, cell), f"random {cell['start']}")]}


def _fit_chain(cell: dict[str, Any]) -> dict[str, Any]:
    """Width ``k`` from the teacher's weights (tanh), then each wider width from the point before with one dead unit added."""
    T = _fit_teacher(cell)
    rows, S = [], T.with_activation("tanh")
    for K in range(cell["width"], cell["width"] + 4):
        if K > cell["width"]:
            S = add_dead_units(S, 1, seed=cell["seed"] + K)
        cp = _fit(T, S, cell)
        rows.append(_fit_row(cp, "teacher's weights" if K == cell["width"] else "previous width + dead unit"))
        S = cp.student
    return {"rows": rows}


# ----------------------------------------------------------------------------- finalize
def finalize(config: dict[str, Any], cell_list: list[dict[str, Any]], results: list[dict[str, Any]], out_dir: Path) -> ExperimentResult:
    out_dir = Path(out_dir)
    by = lambda kind: [(c, r) for c, r in zip(cell_list, results) if c["kind"] == kind]
    ranks = [row for _, r in by("ranks") for row in r["rows"]]
    spectra = [row for _, r in by("spectra") for row in r["rows"]]
    batch = by("batch")[0][1]
    fits = [row for _, r in by("fit") + by("fit-chain") for row in r["rows"]]
    relu = [row for _, r in by("relu-fit") for row in r["rows"]]
    best, relu_best = _best_per_width(fits), _best_per_width(relu)
    checks = _rank_checks(ranks) + _spectra_checks(spectra, batch) + _fit_checks(fits, best, config) + _relu_checks(relu, relu_best)
    figures = [_figure(ranks, spectra, best, relu_best, config, out_dir)]
    data = [io.write_json(out_dir / "architectures.json", {"definition": __doc__, "ranks": ranks, "spectra": spectra, "batch": batch,
                                                           "fit": fits, "fit_best": best, "relu_fit": relu, "relu_best": relu_best})]
    summary = _summary(ranks, spectra, batch, fits, best, config) + "\n\n" + _relu_summary(relu_best, config)
    return ExperimentResult("architectures", checks, figures, data, summary, dict(config))


def _best_per_width(fits: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The lowest-loss end point of each width among the converged ones (all end points where none converged)."""
    out = []
    for K in sorted({f["K"] for f in fits}):
        rows = [f for f in fits if f["K"] == K]
        pool = [f for f in rows if f["converged"]] or rows
        out.append({**min(pool, key=lambda f: f["loss"]), "starts": len(rows), "converged_starts": sum(f["converged"] for f in rows)})
    return out


def _rank_checks(ranks: list[dict[str, Any]]) -> list[Check]:
    bad = [f"{r['engine']} {'-'.join(map(str, r['widths']))} r={r['rank_sigma']}: {r['measured']} vs {r['predicted']}" for r in ranks
           if r["measured"] != r["predicted"]]
    deep = [r for r in ranks if r["engine"] == "deep linear"]
    return [
        check_equal(f"deep linear and multi-output linear networks: measured rank = q (r + K - q) ({len(ranks)} problems)", 0, len(bad),
                    "; ".join(bad[:5])),
        check_equal("deep linear engine: every rank cut clear (margin and gap)", len(deep), sum(r["clear"] for r in deep)),
    ]


def _spectra_checks(spectra: list[dict[str, Any]], batch: dict[str, Any]) -> list[Check]:
    plain = [r for r in spectra if "predict_rank" in r]
    out = [check_equal(f"{r['activation']} teacher without biases, one output: measured rank = predict_rank", r["predict_rank"], r["rank"])
           for r in plain]
    neg = [r for r in spectra if r["eigenvalues"][0] < -1e-10 * r["largest"]]
    out.append(check_equal("no eigenvalue below -1e-10 lambda_max at any teacher (a global minimum)", 0, len(neg)))
    out.append(check_below(f"population Hessian = batch Gauss-Newton of N = {batch['samples']} inputs ({batch['activation']}, b1+b2, "
                           f"M = {batch['M']}): largest |entry difference| in standard errors", batch["max_z"], Z_MAX,
                           f"{batch['entries']} entries; Frobenius error / its expectation {batch['frobenius_ratio']:.3g}"))
    out.append(check_below("entries without sampling variance (b2 block; W2, b2 across two outputs) equal to rounding", batch["exact_max_diff"],
                           EXACT_ATOL, f"{batch['exact_entries']} entries"))
    return out


def _fit_checks(fits: list[dict[str, Any]], best: list[dict[str, Any]], config: dict[str, Any]) -> list[Check]:
    losses = [b["loss"] for b in best]
    rises = [f"K={best[i + 1]['K']}: {losses[i + 1]:.6g} > {losses[i]:.6g}" for i in range(len(best) - 1) if losses[i + 1] > losses[i] * (1 + 1e-9)]
    k_best = best[0]
    above = [f"K={b['K']}: {b['loss']:.6g}" for b in best[1:] if not b["loss"] < k_best["loss"]]
    minima = [f for f in fits if "minimum" in f["classification"]]
    wrong = [f for f in minima if f["index"] != 0]
    monotone = check_equal("tanh students of an erf teacher, with the chain of embedded starts: the best loss does not rise with the width", 0,
                           len(rises), "; ".join(rises))
    if not config["fit_chain"]:  # random starts alone may stop above a narrower width's minimum
        monotone = check_not_applicable(monotone.name, "fit_chain is off: without a start from the narrower width's point (plus a dead unit) "
                                                       "nothing puts the wider width's best end point below it")
    return [
        check_equal(f"tanh students of an erf teacher: every width above k = {k_best['K']} fits better than width k", 0, len(above),
                    "; ".join(above)),
        monotone,
        check_below(f"the best student of the teacher's width (K = {k_best['K']}) is a critical point: gradient norm at rounding level",
                    k_best["gradient_norm"], k_best["gradient_tolerance"]),
        check_equal("every end point called a minimum has index 0", 0, len(wrong), f"{len(minima)} minima"),
    ]


def _summary(ranks, spectra, batch, fits, best, config) -> str:
    deep = [r for r in ranks if r["engine"] == "deep linear"]
    agree = sum(r["measured"] == r["predicted"] for r in ranks)
    lines = [
        f"**(a) ranks.** {agree} of {len(ranks)} problems ({len(deep)} deep linear networks of depth "
        f"{min(r['depth'] for r in deep)}–{max(r['depth'] for r in deep)}, N_i = {config['linear_inputs']}, K = "
        f"{', '.join(map(str, config['outputs']))}, rank Σ = {', '.join(map(str, config['rank_sigmas']))}; "
        f"{len(ranks) - len(deep)} depth-2 ones again as two-layer linear networks by the general engine) have the measured rank "
        f"q (r + K − q). Rank cuts without a clear margin: {sum(not r['clear'] for r in deep)} (deep linear engine), "
        f"{sum(not r['clear'] for r in ranks if r['engine'] != 'deep linear')} (general engine).",
        "",
        f"**(b) spectra at the teacher** (N_i = {config['n_inputs']}, N_h = {config['n_hidden']}):",
        "",
        "| activation | biases | M | P | rank | null | smallest nonzero | largest |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in spectra:
        small = ", ".join(f"{x:.3g}" for x in r["smallest"])
        lines.append(f"| {r['activation']} | {r['bias']} | {r['M']} | {r['P']} | {r['rank']} | {r['null']} | {small} | {r['largest']:.3g} |")
    lines += ["", _spectra_findings(spectra), "",
              f"Batch check ({batch['activation']}, b1+b2, M = {batch['M']}, N = {batch['samples']}): largest entry difference "
              f"{batch['max_z']:.2f} standard errors over {batch['entries']} entries, Frobenius error {batch['frobenius_ratio']:.2f} × its "
              f"expectation, relative error {batch['relative_error']:.2g}.", "",
              f"**(c) erf teacher (N_i = {config['fit_inputs']}, k = {config['fit_width']}) fitted by tanh students** "
              f"({config['fit_seeds']} random start(s) per width"
              + (", and a chain from the teacher's weights, each wider width starting from the point before plus a dead unit" if config["fit_chain"] else "")
              + f"; at most {config['fit_steps']} trust-region steps, then at most {config['newton_iter']} Newton steps); the lowest-loss "
              "end point per width (among the converged ones where there is one):", "",
              "| K | P | loss | L / E[f*²] | gradient norm | class | index | zero | smallest eigenvalues | starts converged |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for b in best:
        small = ", ".join(f"{x:.3g}" for x in b["smallest"])
        lines.append(f"| {b['K']} | {b['P']} | {b['loss']:.4g} | {b['loss_relative']:.3g} | {b['gradient_norm']:.2g} | {b['classification']} | "
                     f"{b['index']} | {b['zero_modes']} | {small} | {b['converged_starts']}/{b['starts']} |")
    lines += ["", "A tanh student never represents an erf teacher exactly, so its best loss is above 0 and a minimum is classed "
              "'spurious' (the global level being 0). A 'not converged' end point stopped within the step limits with its gradient above "
              "the rounding level, where the smallest eigenvalues lie near 0 (a nearly flat region): its index counts the negative "
              "eigenvalues there, not those of a critical point."]
    return "\n".join(lines)


def _relu_checks(relu: list[dict[str, Any]], best: list[dict[str, Any]]) -> list[Check]:
    k_best = best[0]
    wrong = [f for f in relu if "minimum" in f["classification"] and f["index"] != 0]
    return [
        check_below(f"the best ReLU student of the teacher's width (K = {k_best['K']}) is a critical point of the exact population loss: "
                    "gradient norm at rounding level", k_best["gradient_norm"], k_best["gradient_tolerance"]),
        check_equal("every ReLU end point called a minimum has index 0", 0, len(wrong)),
    ]


def _relu_summary(best: list[dict[str, Any]], config: dict[str, Any]) -> str:
    """Part (c) for ReLU students: the same table as for tanh, from the exact population route."""
    lines = [f"**(c) ReLU students of the same erf teacher** (exact population loss and Hessian; {config['fit_seeds']} random start(s) per "
             "width, the same step limits); the lowest-loss end point per width:", "",
             "| K | P | loss | L / E[f*²] | gradient norm | class | index | zero | smallest eigenvalues | starts converged |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for b in best:
        small = ", ".join(f"{x:.3g}" for x in b["smallest"])
        lines.append(f"| {b['K']} | {b['P']} | {b['loss']:.4g} | {b['loss_relative']:.3g} | {b['gradient_norm']:.2g} | {b['classification']} | "
                     f"{b['index']} | {b['zero_modes']} | {small} | {b['converged_starts']}/{b['starts']} |")
    lines += ["", "Without biases a ReLU student is positively homogeneous (f(cx) = c f(x) for c > 0) and cannot follow the erf teacher's "
              "saturation, so its loss stays far above the tanh students'; each unit's rescaling (w, v) -> (c w, v / c) is a zero mode."]
    return "\n".join(lines)


def _spectra_findings(spectra: list[dict[str, Any]]) -> str:
    """Sentences with the measured ratios: what outputs and biases do to the smallest and largest eigenvalues."""
    out = []
    for act in dict.fromkeys(r["activation"] for r in spectra):
        rows = {(r["bias"], r["M"]): r for r in spectra if r["activation"] == act}
        Ms = sorted({M for _, M in rows})
        nulls = ", ".join(f"{b}/M={M}: {r['null']}" for (b, M), r in rows.items() if r["null"])
        rank_text = f"zero eigenvalues {nulls}" if nulls else "every configuration has full rank (no zero eigenvalue)"
        out.append(
            f"{act}: {rank_text}; "
            f"λ⁺min from M = {Ms[0]} to M = {Ms[-1]} outputs (no biases) × {_lowest(rows, 'none', Ms[-1]) / _lowest(rows, 'none', Ms[0]):.3g}; "
            f"b1 changes λ⁺min (M = {Ms[0]}) × {_lowest(rows, 'b1', Ms[0]) / _lowest(rows, 'none', Ms[0]):.3g}, b2 changes λmax × "
            f"{rows[('b1+b2', Ms[0])]['largest'] / rows[('b1', Ms[0])]['largest']:.3g}.")
    return " ".join(out)


def _lowest(rows: dict[tuple[str, int], dict[str, Any]], bias: str, M: int) -> float:
    """The smallest nonzero eigenvalue of configuration ``(bias, M)`` (``nan`` without one)."""
    small = rows[(bias, M)]["smallest"]
    return small[0] if small else float("nan")


def _figure(ranks, spectra, best, relu, config, out_dir: Path) -> Path:
    """(a) measured against predicted ranks, (b) every eigenvalue per configuration, (c) the best losses per width (``relu``: ReLU's best rows)."""
    fig, axes = new_figure(1, 3, figsize=(13, 3.8), squeeze=False, gridspec_kw={"width_ratios": [1, 2.2, 1]})
    ax = axes[0][0]
    depths = sorted({r["depth"] for r in ranks})
    for j, d in enumerate(depths):  # depths side by side (a small offset), so that equal ranks do not hide each other
        rr = [r for r in ranks if r["depth"] == d]
        shift = 0.12 * (j - (len(depths) - 1) / 2)
        ax.plot([r["predicted"] + shift for r in rr], [r["measured"] for r in rr], "o", ms=4, mfc="none", label=f"L = {d}")
    top = max(max(r["predicted"] for r in ranks), 1)
    ax.plot([0, top], [0, top], "k:", lw=0.8)
    ax.set_xlabel("q (r + K − q)")
    ax.set_ylabel("measured rank")
    ax.set_title("(a) linear networks", fontsize=9)
    ax.legend(fontsize=6)
    ax = axes[0][1]
    labels = []
    for i, r in enumerate(spectra):
        lam = np.abs(np.asarray(r["eigenvalues"], dtype=float))
        lam = lam[lam > 0]
        color = "C0" if r["activation"] == spectra[0]["activation"] else "C1"
        ax.plot(np.full(lam.size, i), np.log10(lam), "_", ms=9, color=color)
        labels.append(f"{r['activation']} {r['bias']} M={r['M']}")
    ax.set_xticks(range(len(spectra)))
    ax.set_xticklabels(labels, rotation=70, fontsize=5.5)
    ax.set_ylabel(r"$\log_{10}|\lambda|$")
    ax.set_title(f"(b) spectra at the teacher, N_i = {config['n_inputs']}, N_h = {config['n_hidden']}", fontsize=9)
    ax = axes[0][2]
    K = [b["K"] for b in best]
    ax.semilogy(K, [b["loss_relative"] for b in best], "-", color="C0", lw=0.8)
    for b in best:  # filled: converged (gradient at rounding level); open: stopped before
        ax.semilogy(b["K"], b["loss_relative"], "o", ms=5, color="C0", mfc="C0" if b["converged"] else "none")
    ax.plot([], [], "o", color="C0", label="best loss / E[f*²] (open: not converged)")
    ax.semilogy(K, [max(b["smallest_positive"], 1e-300) if math.isfinite(b["smallest_positive"]) else np.nan for b in best], "s--", ms=4, color="C1",
                label=r"smallest positive $\lambda$")
    ax.semilogy([b["K"] for b in relu], [b["loss_relative"] for b in relu], ":", color="C2", lw=0.8)
    for b in relu:
        ax.semilogy(b["K"], b["loss_relative"], "^", ms=5, color="C2", mfc="C2" if b["converged"] else "none")
    ax.plot([], [], "^", color="C2", label="ReLU students, best loss / E[f*²]")
    ax.set_xlabel("student width K")
    ax.set_title(f"(c) erf teacher, k = {config['fit_width']}: tanh and ReLU students", fontsize=9)
    ax.legend(fontsize=6)
    return save_figure(fig, out_dir / "architectures")[0]


# ----------------------------------------------------------------------------- settings
SETTINGS = (
    SEED,
    count("linear_inputs", 64),
    counts("depths", 8),
    Setting("hidden_patterns", list, nonempty=True, item=counts("pattern", 64)),
    counts("outputs", 8),
    counts("rank_sigmas", 64),
    names("activations", Setting("activation", str, choices=("erf", "tanh"), check=activation_name)),
    count("n_inputs", 64),
    count("n_hidden", 32),
    count("batch_samples", 10**7, low=100),
    count("fit_inputs", 32),
    count("fit_width", 16),
    count("fit_seeds", 100),
    Setting("fit_chain", bool),
    count("fit_steps", 100_000),
    count("newton_iter", 1000),
)
RELATIONS = (Relation("max(rank_sigmas) <= linear_inputs", lambda c: max(c["rank_sigmas"]) <= c["linear_inputs"]),)


def memory(config: dict[str, Any]) -> float:
    """The batch check's chunk of per-input ``P x P`` matrices, or the widest fit's dense Hessian and eigenvectors."""
    P = config["n_hidden"] * (config["n_inputs"] + 1) + max(config["outputs"]) * (config["n_hidden"] + 1)
    Pf = (config["fit_width"] + 3) * (config["fit_inputs"] + 1)
    return FLOAT64 * max(2000.0 * P * P * 3, 6.0 * Pf * Pf)


register(
    Experiment(
        name="architectures",
        description="ranks of deep linear and multi-output networks against q (r + K - q); erf and tanh spectra with biases and outputs; "
                    "tanh and ReLU students of an erf teacher",
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
