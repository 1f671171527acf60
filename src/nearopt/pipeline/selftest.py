"""Experiment ``selftest``: a cheap sweep with known answers that exercises the pipeline.

Each cell draws ``n`` standard normal samples (seeded by ``(seed, n)``) and
returns their mean and variance. Theory: ``√n · x̄ ~ N(0, 1)`` exactly, the
RMS of ``x̄`` over seeds scales as ``n^{-1/2}``, and the pooled sample variance
is 1. ``shift`` adds a constant to every sample, which breaks the first two
checks (a way to see a failing report); ``sleep`` and ``log_dir`` make cells
slow and leave one file per execution, for interruption tests.

Registered only when imported (``nearopt reproduce --only selftest`` does so);
it is not part of the study.
"""

from __future__ import annotations

import csv
import io as _io
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from ..errors import NearoptError
from ..experiments.base import FLOAT64, SEED, Experiment, ExperimentResult, Setting, check_below, check_close, register, writable_folder
from ..figures.plotting import new_figure, save_figure
from ..model import io

__all__ = ["cells", "EXPERIMENT", "finalize", "FULL", "KS_ALPHA", "memory", "QUICK", "run_cell", "SETTINGS", "SIGMAS"]

QUICK = {"sizes": [100, 1000, 10000], "seeds": 16, "seed": 0, "shift": 0.0, "sleep": 0.0, "log_dir": None}
FULL = {"sizes": [100, 1000, 10000, 100000, 1000000], "seeds": 64, "seed": 0, "shift": 0.0, "sleep": 0.0, "log_dir": None}
KS_ALPHA = 1e-3  # false-alarm rate of the KS check
SIGMAS = 5.0  # width of the other checks in standard errors


def cells(config: dict[str, Any]) -> list[dict[str, Any]]:
    """One cell per (sample size, seed)."""
    return [
        {"samples": int(n), "seed": config["seed"] + t, "shift": config["shift"], "sleep": config["sleep"], "log_dir": config["log_dir"]}
        for n in config["sizes"]
        for t in range(config["seeds"])
    ]


def run_cell(cell: dict[str, Any]) -> dict[str, Any]:
    """Mean and unbiased variance of ``samples`` draws of ``N(shift, 1)``."""
    if cell["log_dir"]:
        # One new file per execution: counts how often each cell really ran.
        Path(cell["log_dir"], f"{cell['samples']}-{cell['seed']}-{uuid.uuid4().hex}.ran").touch()
    time.sleep(cell["sleep"])
    x = np.random.default_rng([cell["seed"], cell["samples"]]).standard_normal(cell["samples"]) + cell["shift"]
    return {"samples": cell["samples"], "seed": cell["seed"], "mean": float(x.mean()), "var": float(x.var(ddof=1))}


def _slope(n: np.ndarray, rms: np.ndarray, seeds: int) -> tuple[float, float]:
    """Least-squares slope of ``log rms`` vs ``log n`` and its standard error.

    ``log`` of an RMS over ``m`` Gaussian means has standard deviation ``≈ 1/√(2m)``.
    """
    ln = np.log(n)
    slope = float(np.polyfit(ln, np.log(rms), 1)[0])
    se = (1.0 / np.sqrt(2 * seeds)) / np.sqrt(np.sum((ln - ln.mean()) ** 2))
    return slope, float(se)


def finalize(config: dict[str, Any], cells: list[dict[str, Any]], results: list[dict[str, Any]], out_dir: Path) -> ExperimentResult:
    """Checks, a CSV of cells, and a two-panel figure (RMS of x̄ vs n; histogram of √n x̄)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    n = np.array([r["samples"] for r in results], dtype=np.float64)
    mean = np.array([r["mean"] for r in results], dtype=np.float64)
    var = np.array([r["var"] for r in results], dtype=np.float64)
    z = np.sqrt(n) * mean  # N(0, 1) per cell under the theory
    m = len(z)
    sizes = np.array(sorted(set(n)))
    rms = np.array([np.sqrt(np.mean(mean[n == s] ** 2)) for s in sizes])

    ks = stats.kstest(z, "norm")
    ks_bound = float(stats.kstwo.ppf(1 - KS_ALPHA, m))
    pooled_var = float(np.sum((n - 1) * var) / np.sum(n - 1))
    var_rtol = SIGMAS * np.sqrt(2.0 / np.sum(n - 1))  # sd of a pooled normal variance
    checks = [
        check_below("KS distance of √n·x̄ to N(0,1)", float(ks.statistic), ks_bound, f"p = {ks.pvalue:.3g}; bound = KS quantile at α = {KS_ALPHA:g}, {m} cells"),
        check_below("|mean of √n·x̄|", float(abs(z.mean())), SIGMAS / np.sqrt(m), f"{SIGMAS:g} standard errors of {m} cells"),
        check_close("pooled sample variance", 1.0, pooled_var, float(var_rtol), f"{SIGMAS:g} standard errors"),
    ]
    if len(sizes) >= 2:
        slope, se = _slope(sizes, rms, config["seeds"])
        checks.append(check_close("slope of log RMS(x̄) vs log n", -0.5, slope, SIGMAS * se / 0.5, f"standard error {se:.3g}"))

    buf = _io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["samples", "seed", "mean", "var"])
    writer.writeheader()
    writer.writerows({k: r[k] for k in writer.fieldnames} for r in results)
    data = [io.write_text(out_dir / "cells.csv", buf.getvalue())]

    fig, (ax1, ax2) = new_figure(1, 2, figsize=(8.0, 3.2))
    ax1.loglog(sizes, rms, "o", label="measured (RMS over seeds)")
    ax1.loglog(sizes, 1 / np.sqrt(sizes), "-", color="k", lw=1, label=r"theory $n^{-1/2}$")
    ax1.set_xlabel("samples $n$")
    ax1.set_ylabel(r"RMS of $\bar{x}$")
    ax1.legend()
    grid = np.linspace(-4, 4, 201)
    ax2.hist(z, bins=max(5, int(np.sqrt(m))), density=True, alpha=0.6, label=f"{m} cells")
    ax2.plot(grid, stats.norm.pdf(grid), "k-", lw=1, label=r"$\mathcal{N}(0,1)$")
    ax2.set_xlabel(r"$\sqrt{n}\,\bar{x}$")
    ax2.set_ylabel("density")
    ax2.legend()
    png, _pdf = save_figure(fig, out_dir / "selftest")

    summary = (
        f"{m} cells of $n$ standard normal draws ({', '.join(str(int(s)) for s in sizes)}); "
        f"the standardised means should be $\\mathcal{{N}}(0,1)$ and their RMS should fall as $n^{{-1/2}}$. "
        f"KS distance {ks.statistic:.3f} (bound {ks_bound:.3f})."
    )
    return ExperimentResult("selftest", checks, figures=[png], data=data, summary=summary, config=dict(config))


def _variance_size(value: int) -> None:
    if value < 2:
        raise NearoptError("a sample variance needs at least 2 samples")


SETTINGS = (
    Setting("sizes", list, nonempty=True, unique=True, item=Setting("size", int, low=1, high=10**10, check=_variance_size)),
    Setting("seeds", int, low=1, high=10**9),
    SEED,
    Setting("shift", float, low=-1e6, high=1e6),
    Setting("sleep", float, low=0.0, high=3600.0),
    Setting("log_dir", str, optional=True, check=writable_folder),
)


def memory(config: dict[str, Any]) -> float:
    """The samples of the largest cell and one temporary copy."""
    return 2.0 * FLOAT64 * max(config["sizes"])


EXPERIMENT = register(
    Experiment(
        name="selftest",
        description="Pipeline self-test: Monte-Carlo means of Gaussian samples against the central limit theorem.",
        quick=QUICK,
        full=FULL,
        cells=cells,
        run_cell=run_cell,
        finalize=finalize,
        settings=SETTINGS,
        memory=memory,
    )
)
