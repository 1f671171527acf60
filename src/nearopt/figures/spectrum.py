"""One figure of a spectrum: ``nearopt spectrum --plot FILE`` (PNG, PDF or SVG by the file's suffix).

Left: the sorted eigenvalues (``|lambda|`` on a log axis, negative ones marked),
beside the population spectrum when one is compared. Right: the density of the
eigenvalues (histogram of ``log10 |lambda|`` over the nonzero ones, beside the population's
when compared; the exact or SLQ density for a density request). Axis labels name quantities, legends name what is drawn.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import NearoptError
from ..model.io import atomic_path, check_output_path
from ..spectra import Spectrum
from .plotting import new_figure, plt

__all__ = ["check_plot_path", "plot_spectrum", "SUFFIXES"]

SUFFIXES = (".png", ".pdf", ".svg")


def check_plot_path(path: str | Path) -> Path:
    """Refuse before any work a plot path whose suffix is not PNG, PDF or SVG, or whose folder cannot be written."""
    p = Path(path)
    if p.suffix.lower() not in SUFFIXES:
        raise NearoptError(f"--plot {path}: the suffix chooses the format, one of {', '.join(SUFFIXES)}")
    return check_output_path(p)


def _label(spec: Spectrum, what: str) -> str:
    return f"{what}, N = {spec.samples}" if spec.samples is not None else "population (N → ∞)"


def _sorted_panel(ax, spec: Spectrum, other: Spectrum | None) -> None:
    for s, style in ((spec, "-"), (other, "--")):
        if s is None or not s.eigenvalues.size:
            continue
        lam = s.eigenvalues[::-1]
        mag = np.abs(lam)
        idx = np.arange(1, lam.size + 1)
        ax.plot(idx, np.where(mag > 0, mag, np.nan), style, label=_label(s, "batch" if s.samples is not None else "population"))
        neg = lam < 0
        if neg.any():
            ax.plot(idx[neg], mag[neg], "v", ms=3, label="negative eigenvalue")
    if spec.exact:
        tol, shown = spec.rank.eigenvalue_tolerance, np.abs(spec.eigenvalues[spec.eigenvalues != 0])
        if shown.size and tol >= 1e-3 * shown.min():  # drawn only near the data, so the axis stays on the spectrum
            ax.axhline(tol, color="0.6", lw=0.8, ls=":", label="rank tolerance")
    ax.set_yscale("log")
    ax.set_xlabel("index k (largest first)")
    ax.set_ylabel("|eigenvalue λ_k|")
    ax.legend()


def _density_panel(ax, spec: Spectrum, other: Spectrum | None) -> None:
    if spec.density is not None:
        d = spec.density
        ax.plot(d["grid"], d["density"], label=f"density ({d.get('source', spec.method)})")
        err = np.asarray(d.get("density_err", np.zeros_like(d["density"])))
        if np.any(err > 0):
            ax.fill_between(d["grid"], d["density"] - err, d["density"] + err, alpha=0.3, lw=0, label="± 1 standard error")
        ax.set_xlabel("eigenvalue λ")
        ax.set_ylabel("density")
        ax.legend()
        return
    tol = spec.rank.eigenvalue_tolerance if spec.exact else 0.0
    series = [(s, name) for s, name in ((spec, "batch" if spec.samples else "population"), (other, "population")) if s is not None]
    nonzero = [np.abs(s.eigenvalues[np.abs(s.eigenvalues) > tol]) for s, _ in series]
    values = np.concatenate(nonzero) if nonzero else np.zeros(0)
    if not values.size:
        ax.text(0.5, 0.5, "no nonzero eigenvalue", ha="center", transform=ax.transAxes)
        return
    logs = np.log10(values)
    lo, hi = float(logs.min()), float(logs.max())
    bins = np.linspace(lo, hi + 1e-9, 30) if hi > lo else np.array([lo - 0.5, hi + 0.5])
    for (s, name), nz in zip(series, nonzero, strict=True):
        ax.hist(np.log10(nz), bins=bins, histtype="step", density=True, label=f"{name}: {nz.size} nonzero of P = {s.n_params}")
    ax.set_xlabel("log10 |eigenvalue λ| (nonzero)")
    ax.set_ylabel("density per decade")
    ax.legend()


def plot_spectrum(spec: Spectrum, path: str | Path, population: Spectrum | None = None) -> Path:
    """Write the figure of ``spec`` (and of the ``population`` spectrum it is compared with) to ``path`` atomically."""
    path = check_plot_path(path)
    fig, (left, right) = new_figure(1, 2, figsize=(9.0, 3.6))
    if spec.eigenvalues.size:
        _sorted_panel(left, spec, population)
    else:
        left.set_axis_off()
    _density_panel(right, spec, population)
    fig.suptitle(f"{spec.activation}: N_i = {spec.n_inputs}, N_h = {spec.n_hidden}, P = {spec.n_params} ({spec.which}, {spec.method})", fontsize=10)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lower().lstrip("."))
    plt.close(fig)
    return path
