"""Reproduce the study: parallel, cached, resumable runs of registered experiments, and their report.

* :func:`reproduce` — run experiments (default: all) and write ``results.json``,
  ``report.md`` and a self-contained ``report.html``;
* :func:`run_experiments` / :func:`run_experiment` — the runner alone;
* :class:`CellCache`, :func:`cell_key` — the per-cell cache under ``OUT/cache``;
* backends: local processes (default), this process (``jobs=1``) or a Dask
  scheduler (``scheduler="tcp://..."``).
"""

from __future__ import annotations

from .cache import CellCache, cell_key
from .report import render_html, render_markdown, summary_table, write_report
from .runner import (
    ExperimentRun,
    get,
    make_config,
    run_experiment,
    run_experiments,
    study_experiments,
)
from .study import StudyRun, plan, reproduce

__all__ = [
    "CellCache",
    "ExperimentRun",
    "StudyRun",
    "cell_key",
    "get",
    "make_config",
    "plan",
    "render_html",
    "render_markdown",
    "reproduce",
    "run_experiment",
    "run_experiments",
    "study_experiments",
    "summary_table",
    "write_report",
]
