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
single keys. Each key is declared by a :class:`Setting` (type, range, choices),
conditions across keys by :class:`Relation` s, and ``memory(config)`` estimates
the peak bytes of the largest cell, so that a configuration is refused with one
line before any cell runs (:meth:`Experiment.validate`). The parallel, cached, resumable runner lives in
:mod:`nearopt.pipeline`; :func:`run_serial` here is the simplest correct one.
"""

from __future__ import annotations

import importlib
import json
import math
import pkgutil
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import NearoptError
from ..model.activations import get_activation

__all__ = [
    "ACTIVATION", "activation_name", "all_experiments", "Check", "check_below", "check_close", "check_equal", "check_not_applicable", "count", "counts",
    "Experiment", "ExperimentResult", "FLOAT64", "get_experiment", "infer_setting", "load_all", "n_params", "names", "NOT_APPLICABLE", "register",
    "Relation", "run_serial", "SEED", "Setting", "sigma0", "writable_folder"
]


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


#: the ``measured`` of a check whose subject is absent from the run (it passes, and says so)
NOT_APPLICABLE = "not applicable"


def check_not_applicable(name: str, reason: str) -> Check:
    """A check with nothing to check (its subject is absent from the settings asked): passes, measured
    ``"not applicable"``, ``reason`` in the detail, instead of comparing an empty count with itself."""
    return Check(name, "-", NOT_APPLICABLE, "-", True, reason)


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
        """Every check passed, and there was at least one (nothing checked is no pass)."""
        return bool(self.checks) and all(c.passed for c in self.checks)


# -- settings: what each key of a configuration may hold ------------------------


@dataclass(frozen=True)
class Setting:
    """The values one setting may take, checked before any cell runs.

    ``type``: ``bool``, ``int``, ``float`` (an int is accepted), ``str``,
    ``list``, ``dict`` or ``object`` (anything). Numbers must be finite and lie
    in ``[low, high]`` (``low`` excluded when ``low_open``); strings must be one
    of ``choices`` when given; ``check(value)`` may refuse a value with a
    :class:`NearoptError` (an activation name that does not resolve, a folder
    that cannot be written). Lists: ``nonempty``, ``length`` (exact),
    ``unique`` items, each item checked by ``item``. Dicts: ``fields`` are the
    keys it must have (no others); without ``fields`` any string keys, each value
    checked by ``item``. ``optional`` also allows ``None``.
    """

    name: str
    type: type = object
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    choices: tuple[str, ...] = ()
    check: Callable[[Any], Any] | None = None
    nonempty: bool = False
    length: int | None = None
    unique: bool = False
    item: Setting | None = None
    fields: tuple[Setting, ...] = ()
    optional: bool = False

    def validate(self, value: Any, where: str) -> None:
        """Raise :class:`NearoptError` naming ``where`` unless ``value`` is allowed."""
        if value is None and (self.optional or self.type is object):
            return
        self._check_type(value, where)
        if self.type in (int, float):
            self._check_number(value, where)
        elif self.type is str and self.choices and value not in self.choices:
            raise NearoptError(f"{where} = {value!r} is not one of {', '.join(self.choices)}")
        elif self.type is list:
            self._check_list(value, where)
        elif self.type is dict:
            self._check_dict(value, where)
        if self.check is not None:
            try:
                self.check(value)
            except NearoptError as exc:
                raise NearoptError(f"{where} = {value!r}: {exc}") from None

    def _check_type(self, value: Any, where: str) -> None:
        if self.type is object:
            return
        if self.type is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        elif self.type is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif self.type is list:
            ok = isinstance(value, (list, tuple))
        else:
            ok = isinstance(value, self.type)
        if not ok:
            raise NearoptError(f"{where} = {value!r} has the wrong type; expected {_TYPE_NAMES.get(self.type, self.type.__name__)}")

    def _check_number(self, value: float, where: str) -> None:
        if not math.isfinite(value):
            raise NearoptError(f"{where} = {value!r} must be a finite number")
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            raise NearoptError(f"{where} = {value!r} must be {'>' if self.low_open else '>='} {self.low:g}")
        if self.high is not None and value > self.high:
            raise NearoptError(f"{where} = {value!r} must be <= {self.high:g}")

    def _check_list(self, value: list[Any], where: str) -> None:
        if self.nonempty and not value:
            raise NearoptError(f"{where} = [] must not be empty")
        if self.length is not None and len(value) != self.length:
            raise NearoptError(f"{where} = {value!r} must have {self.length} entries, not {len(value)}")
        if self.unique:
            seen = [json.dumps(v, sort_keys=True, default=str) for v in value]
            if len(set(seen)) != len(seen):
                raise NearoptError(f"{where} = {value!r} repeats an entry")
        if self.item is not None:
            for i, v in enumerate(value):
                self.item.validate(v, f"{where}[{i}]")

    def _check_dict(self, value: dict[str, Any], where: str) -> None:
        if self.nonempty and not value:
            raise NearoptError(f"{where} = {{}} must not be empty")
        if not self.fields:
            for key, v in value.items():
                if not isinstance(key, str):
                    raise NearoptError(f"{where} has a key {key!r} that is not a string")
                if self.item is not None:
                    self.item.validate(v, f"{where}.{key}")
            return
        known = {f.name: f for f in self.fields}
        unknown = sorted(set(value) - set(known))
        if unknown:
            raise NearoptError(f"{where} has no entry {unknown[0]!r}; entries: {', '.join(known)}")
        missing = [k for k in known if k not in value]
        if missing:
            raise NearoptError(f"{where} lacks the entry {missing[0]!r}; entries: {', '.join(known)}")
        for key, f in known.items():
            f.validate(value[key], f"{where}.{key}")


_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string", list: "a list", dict: "a JSON object"}


@dataclass(frozen=True)
class Relation:
    """A condition across settings, e.g. ``Relation("sigma0_min <= sigma0_max", lambda c: c["sigma0_min"] <= c["sigma0_max"])``.

    ``holds(config)`` runs after every setting passed its own :class:`Setting`;
    the error names the settings that ``text`` mentions, with their values.
    """

    text: str
    holds: Callable[[dict[str, Any]], bool]


def infer_setting(name: str, default: Any) -> Setting:
    """The loosest :class:`Setting` a default value implies (for experiments that declare none).

    Counts and sizes (int default >= 1) stay >= 1, seeds (int 0) >= 0, positive
    float settings > 0; lists, element by element, like their first element.
    """
    if default is None:
        return Setting(name)
    if isinstance(default, bool):
        return Setting(name, bool)
    if isinstance(default, int):
        return Setting(name, int, low=1 if default >= 1 else 0 if default == 0 else None)
    if isinstance(default, float):
        return Setting(name, float, low=0.0 if default > 0 else None, low_open=default > 0)
    if isinstance(default, (list, tuple)):
        return Setting(name, list, item=_infer_item(name, list(default)))
    if isinstance(default, dict):
        return Setting(name, dict)
    return Setting(name, type(default))


def _infer_item(name: str, default: list[Any]) -> Setting | None:
    """The first item's :class:`Setting`, without bounds if another default item falls outside them."""
    if not default:
        return None
    item = infer_setting(name, default[0])
    try:
        for value in default:
            item.validate(value, name)
    except NearoptError:
        return Setting(name, item.type)
    return item


def activation_name(value: str) -> None:
    """``Setting.check`` for activation names: anything :func:`nearopt.model.activations.get_activation` resolves."""
    get_activation(value)


#: one activation name (``erf``, ``monomial:3``, ``polynomial:0,1,1``, ...)
ACTIVATION = Setting("activation", str, check=activation_name)
#: a seed of a random stream (seeds are offset by small counts inside the experiments)
SEED = Setting("seed", int, low=0, high=2**31 - 1)


def writable_folder(value: str) -> None:
    """``Setting.check`` for folders a cell writes into: an existing directory where a file can be created."""
    path = Path(value).expanduser()
    if not path.is_dir():
        raise NearoptError("no such folder")
    try:
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise NearoptError(f"cannot write in this folder: {exc.strerror or exc}") from None


def sigma0(name: str = "sigma0") -> Setting:
    """A displacement scale ``sigma0`` of ``delta_0 ~ N(0, sigma0^2 I)`` in ``[1e-8, 1e3]``: below ``1e-8`` the
    rounding of ``theta*`` (about ``1e-16`` relative) is a visible share of ``delta_0``."""
    return Setting(name, float, low=1e-8, high=1e3)


def count(name: str, high: float, low: float = 1) -> Setting:
    """An integer in ``[low, high]`` (sizes, numbers of teachers, steps)."""
    return Setting(name, int, low=low, high=high)


def names(name: str, item: Setting = ACTIVATION, nonempty: bool = True) -> Setting:
    """A list of distinct names (non-empty unless told), each checked by ``item``."""
    return Setting(name, list, nonempty=nonempty, unique=True, item=item)


def counts(name: str, high: float, low: float = 1, length: int | None = None) -> Setting:
    """A non-empty list of integers in ``[low, high]`` (a fixed ``length``: a size such as ``[N_i, N_h]``)."""
    return Setting(name, list, nonempty=True, length=length, item=Setting(name, int, low=low, high=high))


#: bytes of one float64
FLOAT64 = 8


def n_params(n_inputs: int, n_hidden: int) -> int:
    """``P = N_i N_h + N_h`` of a two-layer network with one output."""
    return n_inputs * n_hidden + n_hidden


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
    #: the declared settings (keys of ``quick``/``full`` without one get :func:`infer_setting`'s)
    settings: tuple[Setting, ...] = ()
    relations: tuple[Relation, ...] = ()
    #: estimated peak bytes of the largest cell of a configuration (``None``: not estimated)
    memory: Callable[[dict[str, Any]], float] | None = None

    def schema(self) -> dict[str, Setting]:
        """The :class:`Setting` of every key of the configuration."""
        declared = {s.name: s for s in self.settings}
        return {k: declared.get(k) or infer_setting(k, v) for k, v in {**self.full, **self.quick}.items()}

    def validate(self, config: dict[str, Any]) -> None:
        """Raise :class:`NearoptError` (one line) unless every setting and every relation of ``config`` holds."""
        for key, setting in self.schema().items():
            if key in config:
                setting.validate(config[key], f"{self.name}.{key}")
        for rel in self.relations:
            if not rel.holds(config):
                named = [k for k in dict.fromkeys(re.findall(r"[A-Za-z_]\w*", rel.text)) if k in config]
                got = ", ".join(f"{k} = {json.dumps(config[k], default=str)}" for k in named)
                raise NearoptError(f"{self.name}: the settings must satisfy {rel.text}" + (f"; got {got}" if got else ""))

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
