"""The parallel, cached, resumable runner behind ``nearopt reproduce`` and ``nearopt experiment``.

Flow for a list of experiments (each with its configuration):

1. every experiment lists its cells; each cell gets a cache key
   (:func:`nearopt.pipeline.cache.cell_key`); identical cells run once;
2. cells already in ``OUT/cache`` are reused, all others are submitted at once
   to a backend (local processes, this process, or a Dask cluster), so small
   experiments never leave workers idle;
3. the driver stores each cell the moment it finishes, and finalizes an
   experiment (data, figures, checks into ``OUT/<name>/``) as soon as its last
   cell is in, or takes that final step from the cache when its cells, settings
   and output files are unchanged;
4. each experiment's record goes to ``OUT/<name>/result.json``.

Stopping the run (Ctrl-C, a killed worker or driver) loses only the cells that
were running; the same command resumes from the cache.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..errors import NearoptError, ResourceError
from ..experiments import all_experiments, base
from ..experiments.base import Experiment, ExperimentResult
from ..model import io
from ..resources import available_memory, format_bytes
from . import selftest  # noqa: F401 - registers the pipeline's self-test experiment
from .backends import make_backend
from .cache import CellCache, cell_key, finalize_key, jsonable
from .lock import output_lock
from .provenance import find_seeds, utc_now

__all__ = [
    "cell_memory", "DASK_LOG", "estimated_cells", "ExperimentRun", "get", "make_config", "MAX_CELLS", "run_experiment", "run_experiments", "SELFTEST",
    "study_experiments"
]

SELFTEST = "selftest"
#: the Dask backend's own log, under the output folder
DASK_LOG = "dask.log"


# -- choosing experiments and configurations ------------------------------------


def get(name: str) -> Experiment:
    """The registered experiment ``name``; ``selftest`` is loaded on demand."""
    if name not in base._REGISTRY:
        return base.get_experiment(name)  # loads every module; clear error if still unknown
    return base._REGISTRY[name]


def study_experiments() -> list[Experiment]:
    """Every experiment of the study (the registry without the pipeline's ``selftest``)."""
    return [e for e in all_experiments() if e.name != SELFTEST]


#: most cells one experiment may expand to (estimated before expanding)
MAX_CELLS = 200_000


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _cells(exp: Experiment, config: dict[str, Any]) -> list[dict[str, Any]]:
    """``exp.cells(config)``, with settings that break it reported as one line."""
    try:
        return exp.cells(config)
    except (TypeError, ValueError, KeyError, IndexError, AttributeError) as exc:
        raise NearoptError(f"{exp.name}: cannot list its cells with these settings: {type(exc).__name__}: {exc}") from None


def estimated_cells(exp: Experiment, size: str, overrides: dict[str, Any]) -> float:
    """Cells that ``overrides`` would give, estimated without expanding a large sweep.

    Integer settings raised above their default (``seeds=10**8``) are held at
    the default; the effect of each is measured by doubling it, and the count
    is extrapolated linearly in each (the sweeps are products of such counts).
    """
    base = exp.config(size)
    big = {k: v for k, v in overrides.items() if _is_int(v) and _is_int(base.get(k)) and base[k] >= 1 and v > 2 * base[k]}
    reduced = {**overrides, **{k: base[k] for k in big}}
    n0 = len(_cells(exp, exp.config(size, reduced)))
    estimate = float(n0)
    for k, v in big.items():
        n2 = len(_cells(exp, exp.config(size, {**reduced, k: 2 * base[k]})))
        estimate *= 1.0 + (n2 / max(n0, 1) - 1.0) * (v / base[k] - 1.0)
    return estimate


def make_config(exp: Experiment, size: str = "quick", overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """``exp``'s ``size`` configuration with ``overrides``, refused with one line before any cell runs unless

    every key exists and passes its :class:`~nearopt.experiments.base.Setting` and every
    :class:`~nearopt.experiments.base.Relation` holds (:meth:`Experiment.validate`), the
    configuration gives between 1 and :data:`MAX_CELLS` cells (estimated before expanding),
    and its largest cell fits in the available memory (``exp.memory``).
    """
    overrides = overrides or {}
    config = exp.config(size, overrides)
    exp.validate(config)
    if overrides:
        n = estimated_cells(exp, size, overrides)
        if n > MAX_CELLS:
            raise NearoptError(f"{exp.name}: these settings give about {n:.3g} cells, more than {MAX_CELLS}; reduce {', '.join(sorted(overrides))}")
    if not _cells(exp, config):
        raise NearoptError(f"{exp.name}: these settings give no cells, so nothing would be computed or checked")
    need = cell_memory(exp, config)
    avail = available_memory()
    if need > avail:
        raise ResourceError(
            f"{exp.name}: the largest cell of these settings needs about {format_bytes(need)}, but only {format_bytes(avail)} is available"
            + (f"; reduce {', '.join(sorted(overrides))}" if overrides else "")
        )
    return config


def cell_memory(exp: Experiment, config: dict[str, Any]) -> float:
    """Estimated peak bytes of ``exp``'s largest cell under ``config`` (0 when the experiment gives no estimate)."""
    return float(exp.memory(config)) if exp.memory is not None else 0.0


# -- one experiment's run ------------------------------------------------------


@dataclass
class ExperimentRun:
    """What running one experiment through the pipeline gave."""

    experiment: Experiment
    size: str
    config: dict[str, Any]
    out_dir: Path
    cells: list[dict[str, Any]]
    keys: list[str]
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)  # cache entries by key
    reused: set[str] = field(default_factory=set)  # keys taken from the cache
    failures: dict[str, str] = field(default_factory=dict)  # key -> traceback text
    result: ExperimentResult | None = None
    error: str | None = None
    started: str = ""
    finished: str = ""
    wall_seconds: float = 0.0
    finalize_seconds: float = 0.0
    finalize_cached: bool = False  # the final step's result and files came from the cache

    @property
    def name(self) -> str:
        return self.experiment.name

    @property
    def unique_keys(self) -> list[str]:
        return list(dict.fromkeys(self.keys))

    @property
    def complete(self) -> bool:
        return all(k in self.entries or k in self.failures for k in self.unique_keys)

    @property
    def passed(self) -> bool:
        return self.error is None and self.result is not None and self.result.passed

    @property
    def checks(self) -> list[Any]:
        return self.result.checks if self.result is not None else []

    def files(self, kind: str) -> list[Path]:
        """Absolute paths of the result's ``figures`` or ``data``."""
        if self.result is None:
            return []
        return [p if Path(p).is_absolute() else self.out_dir / p for p in map(Path, getattr(self.result, kind))]

    def timings(self) -> dict[str, Any]:
        computed = [k for k in self.unique_keys if k in self.entries and k not in self.reused]
        return {
            "cells": len(self.unique_keys),
            "computed": len(computed),
            "cached": len(self.reused),
            "failed": len(self.failures),
            "compute_seconds": sum(self.entries[k]["seconds"] for k in computed),
            "cached_seconds": sum(self.entries[k]["seconds"] for k in self.reused),
            "finalize_seconds": self.finalize_seconds,
            "finalize_cached": self.finalize_cached,
            "wall_seconds": self.wall_seconds,
        }

    def to_dict(self, root: str | Path | None = None) -> dict[str, Any]:
        """JSON-able record; file paths relative to ``root`` (default: the experiment's folder)."""
        root = Path(root) if root is not None else self.out_dir

        def rel(paths: list[Path]) -> list[str]:
            return [os.path.relpath(p, root) for p in paths]

        res = self.result
        return jsonable(
            {
                "name": self.name,
                "description": self.experiment.description,
                "size": self.size,
                "passed": self.passed,
                "error": self.error,
                "checks": [c.to_dict() for c in self.checks],
                "summary": res.summary if res else "",
                "figures": rel(self.files("figures")),
                "data": rel(self.files("data")),
                "config": self.config,
                "reported_config": res.config if res else {},
                "seeds": find_seeds(self.config),
                "version": self.experiment.version,
                "started": self.started,
                "finished": self.finished,
                "timings": self.timings(),
                "cells": [
                    {
                        "index": i,
                        "key": k,
                        "cached": k in self.reused,
                        "seconds": self.entries[k]["seconds"] if k in self.entries else None,
                        "worker": self.entries[k].get("worker", "") if k in self.entries else None,
                    }
                    for i, k in enumerate(self.keys)
                ],
            }
        )


def _error_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1].strip() if lines else "unknown error"


def _finalize(run: ExperimentRun, t_start: float, store: CellCache) -> None:
    """Finalize ``run`` (from ``store`` when its cells, settings and files are unchanged, or
    record why it cannot be) and write its ``result.json``."""
    if run.failures:
        first = next(iter(run.failures.values()))
        run.error = f"{len(run.failures)} of {len(run.unique_keys)} cells failed; first: {_error_line(first)}"
        print(f"nearopt: {run.name}: a cell failed:\n{first}", file=sys.stderr)
    else:
        t0 = time.perf_counter()
        key = finalize_key(run.experiment, run.config, run.keys)
        cached = store.get_final(run.name, key, run.out_dir)
        if cached is not None:
            run.result, run.finalize_cached = cached, True
        else:
            _compute_final(run)
            if run.result is not None:
                store.put_final(run.name, key, run.result, run.out_dir, time.perf_counter() - t0)
        run.finalize_seconds = time.perf_counter() - t0
    run.wall_seconds = time.perf_counter() - t_start
    run.finished = utc_now()
    io.write_json(run.out_dir / "result.json", run.to_dict())


def _compute_final(run: ExperimentRun) -> None:
    """Run the experiment's ``finalize`` over its cell results; a failure becomes ``run.error``."""
    results = [run.entries[k]["result"] for k in run.keys]
    try:
        res = run.experiment.finalize(run.config, run.cells, results, run.out_dir)
        if not isinstance(res, ExperimentResult):
            raise TypeError(f"finalize returned {type(res).__name__}, not ExperimentResult")
        run.result = res
    except Exception:
        text = traceback.format_exc()
        run.error = f"finalize failed: {_error_line(text)}"
        print(f"nearopt: {run.name}: finalize failed:\n{text}", file=sys.stderr)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BrokenProcessPool):
        return "a worker process died (killed or out of memory); rerun to resume from the finished cells\n"
    return "".join(traceback.format_exception(exc))


def run_experiments(
    plans: list[tuple[Experiment, dict[str, Any]]],
    out: str | Path = "results",
    *,
    size: str = "quick",
    jobs: int | None = None,
    scheduler: str | None = None,
    cache: bool = True,
    fresh: bool = False,
    quiet: bool = False,
    scheduler_timeout: float = 30.0,
    worker_wait: float | None = 60.0,
    lock_wait: float = 0.0,
) -> list[ExperimentRun]:
    """Run ``(experiment, config)`` pairs through the cache and a backend; see the module docstring.

    ``jobs``: local worker processes (default: all cores; 1 runs in this
    process; capped by the cores and by memory at the largest cell's estimate,
    with a note); ``scheduler``: a Dask scheduler address instead (connect and
    handshake within ``scheduler_timeout`` s; stop after ``worker_wait`` s
    without workers, ``None``: keep waiting; Dask's own log goes to
    ``OUT/dask.log``); ``cache=False`` neither reads nor writes
    ``OUT/cache``; ``fresh=True`` recomputes every cell but still stores it;
    ``lock_wait``: seconds to wait for another run holding ``OUT``'s lock.
    Returns one :class:`ExperimentRun` per plan, in order.
    ``KeyboardInterrupt`` propagates after running cells are stopped.
    """
    out = Path(out)
    cell_bytes = max((cell_memory(exp, config) for exp, config in plans), default=0.0)
    backend = make_backend(jobs, scheduler, scheduler_timeout=scheduler_timeout, worker_wait=worker_wait, cell_bytes=cell_bytes, log_file=out / DASK_LOG)
    with output_lock(out, lock_wait):
        return _run_locked(plans, out, backend, size=size, cache=cache, fresh=fresh, quiet=quiet)


def _run_locked(plans: list[tuple[Experiment, dict[str, Any]]], out: Path, backend: Any, *, size: str, cache: bool, fresh: bool, quiet: bool) -> list[ExperimentRun]:
    store = CellCache(out / "cache", enabled=cache, read=not fresh)
    runs: list[ExperimentRun] = []
    tasks = []
    for exp, config in plans:
        cells = _cells(exp, config)
        keys = [cell_key(exp, c, backend.threads) for c in cells]
        run = ExperimentRun(exp, size, config, out / exp.name, cells, keys, started=utc_now())
        for key, cell in dict(zip(keys, cells)).items():
            entry = store.get(exp.name, key, cell)
            if entry is not None:
                run.entries[key] = entry
                run.reused.add(key)
            else:
                tasks.append(((len(runs), key), exp.run_cell, cell))
        runs.append(run)

    t_start = time.perf_counter()
    total = sum(len(r.unique_keys) for r in runs)
    bar = tqdm(total=total, initial=total - len(tasks), desc="cells", unit="cell", file=sys.stderr, disable=True if quiet else None, dynamic_ncols=True)
    bar.set_postfix_str(backend.description)  # shown while workers start or the scheduler is reached
    try:
        for run in runs:
            if run.complete:
                bar.set_postfix_str(f"{run.name}: final step")
                _finalize(run, t_start, store)
        cells_by_task = {tid: cell for tid, _, cell in tasks}
        for (i, key), outcome in backend.run(tasks):
            run = runs[i]
            if isinstance(outcome, BaseException):
                run.failures[key] = _describe(outcome)
            else:
                run.entries[key] = store.put(run.name, key, cells_by_task[(i, key)], outcome["result"], outcome["seconds"], f"{outcome['host']}:{outcome['pid']}")
            bar.set_postfix_str(run.name, refresh=False)
            bar.update()
            if run.complete:
                bar.set_postfix_str(f"{run.name}: final step")  # finalize can take a while after the last cell
                _finalize(run, t_start, store)
    finally:
        bar.close()
    return runs


def run_experiment(exp: Experiment, config: dict[str, Any], out: str | Path = "results", **options: Any) -> ExperimentRun:
    """:func:`run_experiments` for one experiment (same options)."""
    return run_experiments([(exp, config)], out, **options)[0]
