"""Shared figure style and atomic saving (PNG + PDF side by side)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no screen on servers and CI
import matplotlib.pyplot as plt

from ..model.io import atomic_path

__all__ = ["new_figure", "save_figure", "STYLE"]

STYLE: dict[str, Any] = {
    "figure.figsize": (5.0, 3.6),
    "figure.dpi": 110,
    "savefig.dpi": 150,
    "font.size": 10,
    "axes.labelsize": 10,
    "axes.titlesize": 10,
    "legend.fontsize": 8,
    "legend.frameon": False,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "lines.linewidth": 1.4,
}


def new_figure(nrows: int = 1, ncols: int = 1, **kwargs):
    """``plt.subplots`` under the package style; returns ``(fig, axes)``."""
    with plt.rc_context(STYLE):  # type: ignore[arg-type]  # matplotlib types rc keys as a Literal
        fig, axes = plt.subplots(nrows, ncols, constrained_layout=True, **kwargs)
    return fig, axes


def save_figure(fig, stem: str | Path) -> list[Path]:
    """Write ``stem.png`` and ``stem.pdf`` atomically, close ``fig``, return both paths."""
    stem = Path(stem)
    paths = []
    with plt.rc_context(STYLE):  # type: ignore[arg-type]
        for ext in ("png", "pdf"):
            path = stem.with_suffix(f".{ext}")
            with atomic_path(path) as tmp:
                fig.savefig(tmp, format=ext)
            paths.append(path)
    plt.close(fig)
    return paths
