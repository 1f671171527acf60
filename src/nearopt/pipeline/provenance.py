"""Where, when and with what a run was made: versions, git commit, host, device, seeds."""

from __future__ import annotations

import os
import platform
import re
import socket
import subprocess
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from .. import __version__

__all__ = ["device_info", "find_seeds", "git_state", "package_versions", "PACKAGES", "provenance", "utc_now"]

PACKAGES = ("numpy", "scipy", "torch", "numba", "matplotlib", "mpmath", "dask", "distributed")


def utc_now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def _git(*args: str) -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", *args], cwd=here, capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def git_state() -> dict[str, Any]:
    """``{"commit", "dirty"}`` of the checkout holding this package (``None`` outside git)."""
    commit = _git("rev-parse", "HEAD")
    if not commit:
        return {"commit": None, "dirty": None}
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def package_versions() -> dict[str, str | None]:
    """Installed versions of the numerical stack (``None`` where not installed)."""
    out: dict[str, str | None] = {"nearopt": __version__, "python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def device_info() -> dict[str, Any]:
    """CPU count and, if torch sees one, the CUDA device (experiments default to CPU)."""
    info: dict[str, Any] = {"cpu_count": os.cpu_count(), "cuda": None}
    try:
        if torch.cuda.is_available():
            info["cuda"] = torch.cuda.get_device_name(0)
    except RuntimeError:  # a broken CUDA setup must not stop the report
        pass
    return info


def find_seeds(config: Any, prefix: str = "") -> dict[str, Any]:
    """Every seed setting (``seed``, ``data_seed``, ``seed_...``; not a count like ``seeds``) of a configuration."""
    found: dict[str, Any] = {}
    if isinstance(config, dict):
        for key, value in config.items():
            name = f"{prefix}{key}"
            if re.search(r"(^|_)seed(_|$)", str(key).lower()) and not isinstance(value, dict):
                found[name] = value
            else:
                found.update(find_seeds(value, f"{name}."))
    return found


def provenance(**extra: Any) -> dict[str, Any]:
    """The run-level record written to ``results.json`` and the report.

    ``extra`` (e.g. ``size``, ``jobs``, ``scheduler``) is merged in last.
    """
    record: dict[str, Any] = {
        "versions": package_versions(),
        "git": git_state(),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "device": device_info(),
        "dtype": "float64",
    }
    record.update(extra)
    return record
