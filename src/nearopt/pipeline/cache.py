"""Per-cell result cache: one JSON file per finished cell, keyed by everything that produced it.

A cell's key is the SHA-256 of the canonical JSON of

* the experiment's name and ``version``,
* the cell itself (everything ``run_cell`` reads, seeds included),
* a hash of the whole installed ``nearopt`` source (every ``.py`` file under
  the package, sorted by path; computed once per process), so editing *any*
  module a cell may call recomputes it — no hand-bumped version to forget,
* what changes numbers at round-off: the versions of NumPy, SciPy and torch,
  and the number of threads the cell runs with (BLAS and torch reductions
  sum in a thread-dependent order).

So a changed configuration gives different cells and different keys, and
changed code never reuses old cells. Entries are written atomically
(:func:`nearopt.io.write_json`) by the driver as soon as a cell finishes, so an
interrupted run keeps every finished cell.

Layout: ``<root>/<experiment>/<key>.json`` holding ``{"key", "experiment",
"cell", "result", "digest", "seconds", "worker", "finished"}`` (``worker`` is
``host:pid``; ``digest`` is the SHA-256 of the result's canonical JSON). Reading
checks the schema, the key, the cell and the digest, so an entry damaged in a
way that still parses is recomputed (with a warning naming the file) rather
than trusted.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import warnings
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from .. import io
from ..experiments.base import Experiment

KEY_LENGTH = 32  # hex characters of the SHA-256 kept in file names
PACKAGE_ROOT = Path(__file__).resolve().parent.parent  # src/nearopt
NUMERIC_PACKAGES = ("numpy", "scipy", "torch")


def canonical_json(data: Any) -> str:
    """Compact JSON with sorted keys; NumPy values become plain numbers/lists."""
    return json.dumps(json.loads(io.to_json(data, indent=None)), sort_keys=True, separators=(",", ":"))


def jsonable(data: Any) -> Any:
    """``data`` after a JSON round trip: what a cached result looks like when read back."""
    return json.loads(io.to_json(data, indent=None))


def source_hash(root: str | Path = PACKAGE_ROOT) -> str:
    """SHA-256 (hex, 16 characters) over every ``.py`` file under ``root``: relative path and bytes, sorted by path."""
    return _source_hash(str(Path(root).resolve()))


@functools.cache
def _source_hash(root: str) -> str:
    h = hashlib.sha256()
    base = Path(root)
    for path in sorted(base.rglob("*.py"), key=lambda p: p.relative_to(base).as_posix()):
        if "__pycache__" in path.parts:
            continue
        h.update(path.relative_to(base).as_posix().encode() + b"\0")
        h.update(path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


@functools.cache
def numeric_versions() -> dict[str, str | None]:
    """Versions of the libraries whose kernels set the round-off of every cell."""
    out: dict[str, str | None] = {}
    for name in NUMERIC_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def cell_key(exp: Experiment, cell: dict[str, Any], threads: int | None = None) -> str:
    """The cache key of ``cell`` of ``exp`` run with ``threads`` threads (``KEY_LENGTH`` hex characters)."""
    ident = {
        "experiment": exp.name,
        "version": exp.version,
        "source": source_hash(),
        "numerics": {"threads": threads, **numeric_versions()},
        "cell": cell,
    }
    return hashlib.sha256(canonical_json(ident).encode()).hexdigest()[:KEY_LENGTH]


def result_digest(result: Any) -> str:
    """SHA-256 of a result's canonical JSON: a damaged cached result no longer matches it."""
    return hashlib.sha256(canonical_json(result).encode()).hexdigest()


def entry_problem(entry: Any, experiment: str, key: str, cell: dict[str, Any]) -> str | None:
    """Why a parsed cache entry cannot be trusted for ``cell``, or ``None`` if it can."""
    if not isinstance(entry, dict):
        return "not a JSON object"
    fields: dict[str, type | tuple[type, ...]] = {"key": str, "experiment": str, "cell": dict, "result": dict, "digest": str, "seconds": (int, float), "worker": str, "finished": str}
    for name, kind in fields.items():
        if name not in entry:
            return f"no {name!r} field"
        if not isinstance(entry[name], kind) or isinstance(entry[name], bool):
            return f"field {name!r} has the wrong type"
    # Guards against truncated keys colliding and against hand-edited files.
    if canonical_json(entry["cell"]) != canonical_json(cell):
        return "it belongs to another cell"
    if entry["key"] != key or entry["experiment"] != experiment:
        return "its key or experiment does not match its file name"
    if not (math.isfinite(entry["seconds"]) and entry["seconds"] >= 0):
        return "its run time is not a finite number >= 0"
    if entry["digest"] != result_digest(entry["result"]):
        return "its result does not match its digest (damaged or edited)"
    return None


class CellCache:
    """Finished cells of every experiment under ``root`` (usually ``OUT/cache``).

    ``enabled=False`` makes every lookup miss and every store a no-op
    (``--no-cache``); ``read=False`` only skips lookups (``--fresh``).
    """

    def __init__(self, root: str | Path, enabled: bool = True, read: bool = True):
        self.root = Path(root)
        self.enabled = enabled
        self.read = read and enabled

    def path(self, experiment: str, key: str) -> Path:
        return self.root / experiment / f"{key}.json"

    def get(self, experiment: str, key: str, cell: dict[str, Any]) -> dict[str, Any] | None:
        """The stored entry for ``key``, or ``None`` if absent, unreadable, damaged or for another cell (with a warning)."""
        if not self.read:
            return None
        path = self.path(experiment, key)
        if not path.is_file():
            return None
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            warnings.warn(f"ignoring unreadable cache entry {path}; the cell is recomputed", stacklevel=2)
            return None
        problem = entry_problem(entry, experiment, key, cell)
        if problem is not None:
            warnings.warn(f"ignoring cache entry {path}: {problem}; the cell is recomputed", stacklevel=2)
            return None
        return entry

    def put(self, experiment: str, key: str, cell: dict[str, Any], result: dict[str, Any], seconds: float, worker: str = "") -> dict[str, Any]:
        """Store a finished cell atomically; returns the entry as stored."""
        entry = {
            "key": key,
            "experiment": experiment,
            "cell": jsonable(cell),
            "result": jsonable(result),
            "digest": result_digest(result),
            "seconds": float(seconds),
            "worker": worker,
            "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        if self.enabled:
            io.write_json(self.path(experiment, key), entry)
        return entry

    def keys(self, experiment: str) -> set[str]:
        """Keys of the stored cells of ``experiment``."""
        folder = self.root / experiment
        if not folder.is_dir():
            return set()
        return {p.stem for p in folder.glob("*.json") if not p.name.startswith(".")}  # skip temporaries
