"""``reproduce``: run the study's experiments and write the report (the API behind the CLI)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import NearoptError
from ..experiments.base import Experiment
from .backends import default_jobs
from .lock import output_lock
from .provenance import provenance, utc_now
from .report import write_report
from .runner import ExperimentRun, get, make_config, run_experiments, study_experiments

__all__ = ["plan", "reproduce", "StudyRun"]


@dataclass
class StudyRun:
    """The runs of one ``reproduce`` call, their provenance and the report files."""

    runs: list[ExperimentRun]
    provenance: dict[str, Any]
    paths: dict[str, Path]

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.runs)


def plan(names: list[str] | None = None, size: str = "quick", overrides: dict[str, dict[str, Any]] | None = None) -> list[tuple[Experiment, dict[str, Any]]]:
    """``(experiment, config)`` pairs: ``names`` (default: the whole study) at ``size`` with per-experiment overrides.

    ``overrides`` maps an experiment name to ``{setting: value}``; every name
    must be among those run and every setting must exist (else :class:`NearoptError`).
    """
    exps = [get(n) for n in dict.fromkeys(names)] if names else study_experiments()
    if not exps:
        raise NearoptError("no experiments are registered")
    chosen = {e.name for e in exps}
    for name in overrides or {}:
        if name not in chosen:
            raise NearoptError(f"--set names experiment {name!r}, which is not being run (running: {', '.join(sorted(chosen))})")
    return [(e, make_config(e, size, (overrides or {}).get(e.name))) for e in exps]


def reproduce(
    names: list[str] | None = None,
    size: str = "quick",
    overrides: dict[str, dict[str, Any]] | None = None,
    out: str | Path = "results",
    *,
    jobs: int | None = None,
    scheduler: str | None = None,
    cache: bool = True,
    fresh: bool = False,
    quiet: bool = False,
    command: str | None = None,
    report_root: str | Path | None = None,
    title: str = "nearopt reproduction report",
    scheduler_timeout: float = 30.0,
    worker_wait: float | None = 60.0,
    lock_wait: float = 0.0,
) -> StudyRun:
    """Run experiments through the cached runner and write ``results.json``, ``report.md``, ``report.html``.

    Outputs go to ``out/<experiment>/``, the cell cache to ``out/cache/``, the
    report to ``report_root`` (default ``out``). ``out`` is locked for the
    whole call (:func:`nearopt.pipeline.lock.output_lock`). See
    :func:`nearopt.pipeline.runner.run_experiments` for the other options.
    """
    plans = plan(names, size, overrides)
    with output_lock(out, lock_wait, command):
        return _reproduce(plans, size, out, jobs=jobs, scheduler=scheduler, cache=cache, fresh=fresh, quiet=quiet, command=command,
                          report_root=report_root, title=title, scheduler_timeout=scheduler_timeout, worker_wait=worker_wait)


def _reproduce(plans, size, out, *, jobs, scheduler, cache, fresh, quiet, command, report_root, title, scheduler_timeout, worker_wait) -> StudyRun:
    started = utc_now()
    t0 = time.perf_counter()
    runs = run_experiments(plans, out, size=size, jobs=jobs, scheduler=scheduler, cache=cache, fresh=fresh, quiet=quiet,
                           scheduler_timeout=scheduler_timeout, worker_wait=worker_wait)
    prov = provenance(
        size=size,
        command=command,
        backend={"scheduler": scheduler} if scheduler else {"jobs": jobs or default_jobs()},
        cache="off" if not cache else ("fresh" if fresh else "on"),
        started=started,
        finished=utc_now(),
        wall_seconds=round(time.perf_counter() - t0, 3),
    )
    paths = write_report(runs, prov, Path(report_root or out), title)
    return StudyRun(runs, prov, paths)
