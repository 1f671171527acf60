"""Per-cell result cache: one JSON file per finished cell, keyed by what produced it.

A cell's key is the SHA-256 of the canonical JSON of

* the experiment's name and ``version`` (bumped by hand when library code the
  cell calls changes its numbers),
* the cell itself (everything ``run_cell`` reads, seeds included),
* the package version and a hash of the source file that defines ``run_cell``.

So a changed configuration gives different cells and different keys, and an
edited experiment module never reuses its old cells. Entries are written
atomically (:func:`nearopt.io.write_json`) by the driver as soon as a cell
finishes, so an interrupted run keeps every finished cell.

Layout: ``<root>/<experiment>/<key>.json`` holding ``{"key", "experiment",
"cell", "result", "seconds", "worker", "finished"}`` (``worker`` is ``host:pid``).
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .. import __version__, io
from ..experiments.base import Experiment

KEY_LENGTH = 32  # hex characters of the SHA-256 kept in file names


def canonical_json(data: Any) -> str:
    """Compact JSON with sorted keys; NumPy values become plain numbers/lists."""
    return json.dumps(json.loads(io.to_json(data, indent=None)), sort_keys=True, separators=(",", ":"))


def jsonable(data: Any) -> Any:
    """``data`` after a JSON round trip: what a cached result looks like when read back."""
    return json.loads(io.to_json(data, indent=None))


@functools.lru_cache(maxsize=None)
def _source_hash(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def code_salt(exp: Experiment) -> str:
    """Hash of the source file defining ``exp.run_cell`` ("" if it has none, e.g. a builtin)."""
    try:
        return _source_hash(inspect.getsourcefile(exp.run_cell) or "")
    except (TypeError, OSError):
        return ""


def cell_key(exp: Experiment, cell: dict[str, Any]) -> str:
    """The cache key of ``cell`` of ``exp`` (``KEY_LENGTH`` hex characters)."""
    ident = {
        "experiment": exp.name,
        "version": exp.version,
        "package": __version__,
        "code": code_salt(exp),
        "cell": cell,
    }
    return hashlib.sha256(canonical_json(ident).encode()).hexdigest()[:KEY_LENGTH]


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
        """The stored entry for ``key``, or ``None`` if absent, unreadable or for another cell."""
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
        # Guards against truncated keys colliding and against hand-edited files.
        if not isinstance(entry, dict) or "result" not in entry or canonical_json(entry.get("cell")) != canonical_json(cell):
            warnings.warn(f"ignoring cache entry {path}: it belongs to another cell", stacklevel=2)
            return None
        return entry

    def put(self, experiment: str, key: str, cell: dict[str, Any], result: dict[str, Any], seconds: float, worker: str = "") -> dict[str, Any]:
        """Store a finished cell atomically; returns the entry as stored."""
        entry = {
            "key": key,
            "experiment": experiment,
            "cell": jsonable(cell),
            "result": jsonable(result),
            "seconds": float(seconds),
            "worker": worker,
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
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
