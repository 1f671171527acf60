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
(:func:`nearopt.model.io.write_json`) by the driver as soon as a cell finishes, so an
interrupted run keeps every finished cell.

Each experiment's final step (``finalize``: bootstraps, tests, figures) is cached
the same way (:meth:`CellCache.get_final`): its key is the SHA-256 of the
experiment's name and version, the source hash, the plotting library's version,
its configuration and the ordered keys of its cells; the entry holds the
:class:`~nearopt.experiments.base.ExperimentResult` and the SHA-256 of every
file the step left in the experiment's folder. A hit is trusted only while each
of those files is still there, unchanged, so an unchanged rerun recomputes
nothing and a run whose cells or settings changed finalizes only the
experiments concerned.

Layout: ``<root>/<experiment>/<key>.json`` holding ``{"key", "experiment",
"cell", "result", "digest", "seconds", "worker", "finished"}`` (``worker`` is
``host:pid``; ``digest`` is the SHA-256 of the result's canonical JSON). Reading
checks the schema, the key, the cell and the digest, so an entry damaged in a
way that still parses is recomputed (with a warning naming the file) rather
than trusted. Final steps: ``<root>/_final/<experiment>/<key>.json`` holding
``{"key", "experiment", "result", "files", "digest", "seconds", "finished"}``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import warnings
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from ..errors import NearoptError
from ..experiments.base import Check, Experiment, ExperimentResult
from ..model import io

__all__ = [
    "canonical_json", "cell_key", "CellCache", "entry_problem", "file_digest", "final_entry_problem", "FINALIZE_FOLDER", "finalize_key", "folder_digests",
    "jsonable", "KEY_LENGTH", "NOT_FINAL_OUTPUTS", "NUMERIC_PACKAGES", "numeric_versions", "PACKAGE_ROOT", "PLOTTING_PACKAGES", "result_digest",
    "result_from_dict", "result_to_dict", "source_hash"
]

KEY_LENGTH = 32  # hex characters of the SHA-256 kept in file names
PACKAGE_ROOT = Path(__file__).resolve().parent.parent  # src/nearopt
NUMERIC_PACKAGES = ("numpy", "scipy", "torch")
PLOTTING_PACKAGES = ("matplotlib",)  # figures of a final step depend on it too
FINALIZE_FOLDER = "_final"  # beside the experiments' folders (no experiment name starts with "_")


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
    return _versions(NUMERIC_PACKAGES)


def _versions(names: tuple[str, ...]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in names:
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


def finalize_key(exp: Experiment, config: dict[str, Any], cell_keys: list[str]) -> str:
    """The cache key of ``exp``'s final step over cells with keys ``cell_keys`` (in order) under ``config``.

    The cell keys carry the source hash, the numeric libraries and the threads;
    the source hash and the plotting library's version are added for the step itself.
    """
    ident = {
        "experiment": exp.name,
        "version": exp.version,
        "source": source_hash(),
        "plotting": _versions(PLOTTING_PACKAGES),
        "config": config,
        "cells": list(cell_keys),
    }
    return hashlib.sha256(canonical_json(ident).encode()).hexdigest()[:KEY_LENGTH]


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


#: files in an experiment's folder that are written after its final step (its record, and the
#: report that ``nearopt experiment`` puts beside it): not part of what the step produced
NOT_FINAL_OUTPUTS = frozenset({"result.json", "results.json", "report.html", "report.md"})


def folder_digests(folder: Path, skip: frozenset[str] = NOT_FINAL_OUTPUTS) -> dict[str, str]:
    """``{relative path: SHA-256}`` of every file under ``folder`` except the names in ``skip`` and temporaries."""
    if not folder.is_dir():
        return {}
    return {
        p.relative_to(folder).as_posix(): file_digest(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name not in skip and not p.name.startswith(".")
    }


def result_to_dict(result: ExperimentResult, out_dir: Path) -> dict[str, Any]:
    """A JSON-able :class:`ExperimentResult`; file paths relative to ``out_dir`` where they lie under it."""

    def rel(paths: list[Path]) -> list[str]:
        out = []
        for p in map(Path, paths):
            full = p if p.is_absolute() else out_dir / p
            out.append(os.path.relpath(full, out_dir) if full.resolve().is_relative_to(out_dir.resolve()) else str(full))
        return out

    return jsonable(
        {
            "name": result.name,
            "checks": [c.to_dict() for c in result.checks],
            "figures": rel(result.figures),
            "data": rel(result.data),
            "summary": result.summary,
            "config": result.config,
        }
    )


def result_from_dict(data: dict[str, Any]) -> ExperimentResult:
    """The :class:`ExperimentResult` that :func:`result_to_dict` stored (paths relative to the experiment's folder)."""
    return ExperimentResult(
        name=data["name"],
        checks=[Check(**c) for c in data["checks"]],
        figures=[Path(p) for p in data["figures"]],
        data=[Path(p) for p in data["data"]],
        summary=data["summary"],
        config=data["config"],
    )


def result_digest(result: Any) -> str:
    """SHA-256 of a result's canonical JSON: a damaged cached result no longer matches it."""
    return hashlib.sha256(canonical_json(result).encode()).hexdigest()


def _plain_digest(parsed: Any) -> str:
    """:func:`result_digest` of data parsed from JSON (already plain): one encoding, not three."""
    return hashlib.sha256(json.dumps(parsed, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


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
    if entry["digest"] != _plain_digest(entry["result"]):
        return "its result does not match its digest (damaged or edited)"
    return None


def final_entry_problem(entry: Any, experiment: str, key: str, out_dir: Path) -> str | None:
    """Why a parsed final-step entry cannot be trusted for ``out_dir``, or ``None`` if it can."""
    if not isinstance(entry, dict):
        return "not a JSON object"
    fields: dict[str, type | tuple[type, ...]] = {"key": str, "experiment": str, "result": dict, "files": dict, "digest": str, "seconds": (int, float), "finished": str}
    for name, kind in fields.items():
        if not isinstance(entry.get(name), kind) or isinstance(entry.get(name), bool):
            return f"no {name!r} field of the right type"
    if entry["key"] != key or entry["experiment"] != experiment:
        return "its key or experiment does not match its file name"
    if entry["digest"] != _plain_digest({"result": entry["result"], "files": entry["files"]}):
        return "its result does not match its digest (damaged or edited)"
    for rel, digest in entry["files"].items():
        path = out_dir / rel
        if not path.is_file() or file_digest(path) != digest:
            return f"its output {rel} is missing or changed"
    try:
        result_from_dict(entry["result"])
    except (KeyError, TypeError):
        return "its result is not an experiment result"
    return None


class CellCache:
    """Finished cells and final steps of every experiment under ``root`` (usually ``OUT/cache``).

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
            entry = io.read_json(path)  # strict JSON: the non-finite numbers come back as written
        except (OSError, ValueError, NearoptError):
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

    def final_path(self, experiment: str, key: str) -> Path:
        return self.root / FINALIZE_FOLDER / experiment / f"{key}.json"

    def get_final(self, experiment: str, key: str, out_dir: Path) -> ExperimentResult | None:
        """The stored final step for ``key`` whose files in ``out_dir`` are all unchanged, else ``None``.

        A missing or changed output is an ordinary miss (the step reruns and rewrites
        it); an unreadable or damaged entry also warns, naming the file.
        """
        if not self.read:
            return None
        path = self.final_path(experiment, key)
        if not path.is_file():
            return None
        try:
            entry = io.read_json(path)
        except (OSError, ValueError, NearoptError):
            warnings.warn(f"ignoring unreadable cache entry {path}; the final step is recomputed", stacklevel=2)
            return None
        problem = final_entry_problem(entry, experiment, key, out_dir)
        if problem is None:
            return result_from_dict(entry["result"])
        if "missing or changed" not in problem:
            warnings.warn(f"ignoring cache entry {path}: {problem}; the final step is recomputed", stacklevel=2)
        return None

    def put_final(self, experiment: str, key: str, result: ExperimentResult, out_dir: Path, seconds: float) -> None:
        """Store a final step atomically, with the digests of the files now in ``out_dir``."""
        if not self.enabled:
            return
        stored = result_to_dict(result, out_dir)
        files = folder_digests(out_dir)
        entry = {
            "key": key,
            "experiment": experiment,
            "result": stored,
            "files": files,
            "digest": result_digest({"result": stored, "files": files}),
            "seconds": float(seconds),
            "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        io.write_json(self.final_path(experiment, key), entry)

    def keys(self, experiment: str) -> set[str]:
        """Keys of the stored cells of ``experiment``."""
        folder = self.root / experiment
        if not folder.is_dir():
            return set()
        return {p.stem for p in folder.glob("*.json") if not p.name.startswith(".")}  # skip temporaries
