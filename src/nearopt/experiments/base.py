"""The contract every experiment follows, and a plain serial runner.

An experiment is a sweep of independent **cells** followed by a **finalize**
step:

* ``cells(config) -> list[dict]``: small JSON-able dicts, one per unit of work
  (e.g. one size x activation x teacher). A cell must carry everything
  ``run_cell`` needs, seeds included, so that it is a pure function of the cell.
* ``run_cell(cell) -> dict``: the work; returns a JSON-able dict (lists for
  arrays). Runs in worker processes or on Dask workers, so it must be a
  module-level function.
* ``finalize(config, cells, results, out_dir) -> ExperimentResult``: turns the
  cell results (same order as ``cells``) into data files, figures and checks.

``quick`` and ``full`` are the two standard configurations; users override
single keys. The parallel, cached, resumable runner lives in
:mod:`nearopt.pipeline`; :func:`run_serial` here is the simplest correct one.
"""

from __future__ import annotations

import importlib
import math
import pkgutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import NearoptError


@dataclass
class Check:
    """One named comparison of numerics against theory.

    ``expected`` and ``tolerance`` are human-readable (numbers or short text);
    ``passed`` is the verdict the experiment computed.
    """

    name: str
    expected: Any
    measured: Any
    tolerance: Any
    passed: bool
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_close(name: str, expected: float, measured: float, rtol: float, detail: str = "") -> Check:
    """``|measured - expected| <= rtol * |expected|``."""
    ok = bool(math.isfinite(measured) and abs(measured - expected) <= rtol * abs(expected))
    return Check(name, expected, measured, f"rel {rtol:g}", ok, detail)


def check_below(name: str, measured: float, bound: float, detail: str = "") -> Check:
    """``measured < bound``."""
    return Check(name, f"< {bound:g}", measured, f"< {bound:g}", bool(math.isfinite(measured) and measured < bound), detail)


def check_equal(name: str, expected: Any, measured: Any, detail: str = "") -> Check:
    """Exact equality (ranks, counts)."""
    return Check(name, expected, measured, "exact", bool(expected == measured), detail)


@dataclass
class ExperimentResult:
    """What an experiment produced: files (relative to its output dir), checks, text."""

    name: str
    checks: list[Check]
    figures: list[Path] = field(default_factory=list)  # PNG paths; a PDF lies next to each
    data: list[Path] = field(default_factory=list)
    summary: str = ""  # a short Markdown paragraph for the report
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)


@dataclass(frozen=True)
class Experiment:
    """A registered experiment (see the module docstring for the contract)."""

    name: str
    description: str
    quick: dict[str, Any]
    full: dict[str, Any]
    cells: Callable[[dict[str, Any]], list[dict[str, Any]]]
    run_cell: Callable[[dict[str, Any]], dict[str, Any]]
    finalize: Callable[[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]], Path], ExperimentResult]
    # Part of every cell's cache key: bump it when code that ``run_cell`` calls
    # (outside its own module) changes its results, so cached cells are recomputed.
    version: str = "1"

    def config(self, size: str = "quick", overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        """The ``quick``/``full`` configuration with ``overrides`` applied (keys must exist)."""
        if size not in ("quick", "full"):
            raise NearoptError(f"size must be 'quick' or 'full', got {size!r}")
        cfg = dict(self.quick if size == "quick" else self.full)
        for key, value in (overrides or {}).items():
            if key not in cfg:
                raise NearoptError(f"experiment {self.name} has no setting {key!r}; settings: {', '.join(sorted(cfg))}")
            cfg[key] = value
        return cfg


_REGISTRY: dict[str, Experiment] = {}


def register(exp: Experiment) -> Experiment:
    """Add ``exp`` to the registry (replacing one of the same name)."""
    _REGISTRY[exp.name] = exp
    return exp


_loaded = False


def load_all() -> None:
    """Import every experiment module of this package once (each registers itself).

    Modules are found on disk (``pkgutil``) and imported by name, so this base
    module needs no static import of the experiments built on it.
    """
    global _loaded
    if _loaded:
        return
    package = __name__.rpartition(".")[0]
    for info in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if info.name != "base" and not info.name.startswith("_"):
            importlib.import_module(f"{package}.{info.name}")
    _loaded = True


def get_experiment(name: str) -> Experiment:
    load_all()
    if name not in _REGISTRY:
        raise NearoptError(f"unknown experiment {name!r}; choose from {', '.join(sorted(_REGISTRY)) or 'none'}")
    return _REGISTRY[name]


def all_experiments() -> list[Experiment]:
    load_all()
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def run_serial(exp: Experiment, config: dict[str, Any], out_dir: str | Path) -> ExperimentResult:
    """Run every cell in this process, then finalize (no cache, no parallelism)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cells = exp.cells(config)
    t0 = time.perf_counter()
    results = [exp.run_cell(c) for c in cells]
    res = exp.finalize(config, cells, results, out_dir)
    res.config.setdefault("seconds", time.perf_counter() - t0)
    return res
