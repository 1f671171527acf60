"""Memory and device guards: refuse a dense allocation that cannot fit, before making it.

A dense ``P x P`` curvature matrix in float64 takes ``8 P^2`` bytes (80 GB at
``P = 10^5``), and its eigendecomposition needs a few copies more. Torch's own
failure is a ``RuntimeError`` traceback after minutes, or none at all while the
machine swaps. So every dense route first asks :func:`require_memory`, which

* raises :class:`~nearopt.errors.ResourceError` (one line: the size, what needs
  it, and the route that fits) when the estimate exceeds the available memory;
* warns (:class:`MemoryPressureWarning`) when it would take more than
  :data:`WARN_FRACTION` of it.

Available memory is the smaller of what the operating system reports as
available (``psutil`` if installed, else ``/proc/meminfo``) and the room left
under a cgroup limit (containers, batch schedulers); on CUDA devices it is
``torch.cuda.mem_get_info``. ``NEAROPT_MEMORY_LIMIT`` (bytes, or ``8GB``,
``512MiB``, ...) caps it further, to stay polite on a shared machine; a value
that is not a positive size (``abc``, ``-5GB``, ``0``) is an error
(:func:`check_environment`, which the CLI runs before any command), never
ignored. An empty value counts as unset.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from .errors import NearoptError, ResourceError

try:  # psutil is optional; /proc/meminfo is the fallback
    import psutil
except ImportError:  # pragma: no cover - depends on the installation
    psutil = None

__all__ = [
    "available_memory", "check_device", "check_environment", "dense_bytes", "ENV_THREADS", "format_bytes", "memory_limit", "MemoryPressureWarning",
    "requested_threads", "require_memory", "ResourceError", "WARN_FRACTION"
]

#: warn when one allocation would take more than this fraction of the available memory
WARN_FRACTION = 0.5
ENV_LIMIT = "NEAROPT_MEMORY_LIMIT"
_CGROUP = Path("/sys/fs/cgroup")
_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9, "t": 10**12, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


class MemoryPressureWarning(UserWarning):  # ResourceWarning is hidden by default
    """An allocation fits, but takes most of the available memory (expect slowness or swapping)."""


def format_bytes(nbytes: float) -> str:
    """``1.5 GB``-style text (decimal units)."""
    value = float(nbytes)
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if abs(value) < 1000 or unit == "PB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.3g} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def parse_bytes(text: str) -> int:
    """``"8GB"``, ``"512 MiB"``, ``"1e9"`` -> bytes (at least 1); :class:`NearoptError` otherwise."""
    m = re.fullmatch(r"\s*([0-9.eE+]+)\s*([a-zA-Z]*)\s*", str(text))
    nbytes = math.nan
    if m and m.group(2).lower() in _UNITS:
        with contextlib.suppress(ValueError):
            nbytes = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if not (math.isfinite(nbytes) and nbytes >= 1):
        raise NearoptError(f"{ENV_LIMIT} must be a size of at least 1 byte such as 8GB or 512MiB, got {text!r}")
    return int(nbytes)


def memory_limit() -> int | None:
    """The cap set by ``NEAROPT_MEMORY_LIMIT`` in bytes, ``None`` when unset or empty; :class:`NearoptError` if invalid."""
    env = os.environ.get(ENV_LIMIT, "")
    return parse_bytes(env) if env.strip() else None


#: the environment variable that overrides the thread count (a positive integer, or ``auto``)
ENV_THREADS = "NEAROPT_THREADS"

def requested_threads() -> int | None:
    """The thread count ``NEAROPT_THREADS`` asks for, ``None`` for the size rule (unset or ``auto``)."""
    raw = os.environ.get(ENV_THREADS, "").strip()
    if raw in ("", "auto"):
        return None
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if n < 1:
        raise NearoptError(f"{ENV_THREADS} must be a positive integer or 'auto', got {raw!r}")
    return n


def check_environment() -> None:
    """Validate nearopt's environment variables (``NEAROPT_MEMORY_LIMIT``, ``NEAROPT_THREADS``) before any work: one-line error if invalid."""
    memory_limit()
    requested_threads()


def _meminfo_available(path: Path = Path("/proc/meminfo")) -> int | None:
    try:
        text = path.read_text()
    except OSError:
        return None
    fields = dict(re.findall(r"^(\w+):\s+(\d+)\s*kB", text, flags=re.MULTILINE))
    kb = fields.get("MemAvailable") or fields.get("MemFree")
    return int(kb) * 1024 if kb is not None else None


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # "max" (v2) means no limit


def _cgroup_room(root: Path = _CGROUP) -> int | None:
    """Bytes left under this process's cgroup memory limit, or ``None`` without one.

    cgroup v2: ``memory.max - memory.current``; v1: ``memory/memory.limit_in_bytes -
    memory/memory.usage_in_bytes`` (v1 reports "no limit" as a huge number).
    """
    for limit_file, usage_file in (("memory.max", "memory.current"), ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes")):
        limit = _read_int(root / limit_file)
        if limit is None or limit >= 2**60:
            continue
        usage = _read_int(root / usage_file) or 0
        return max(limit - usage, 0)
    return None


def available_memory() -> int:
    """Bytes of host memory this process can still allocate without swapping (see the module docstring)."""
    if psutil is not None:
        candidates = [int(psutil.virtual_memory().available)]
    else:
        meminfo = _meminfo_available()
        candidates = [meminfo] if meminfo is not None else []
    room = _cgroup_room()
    if room is not None:
        candidates.append(room)
    limit = memory_limit()
    if limit is not None:
        candidates.append(limit)
    if not candidates:  # unknown platform: do not block anything
        return 2**63 - 1
    return min(candidates)


def available_device_memory(device: str | torch.device) -> int:
    """Free bytes on ``device``: GPU memory for CUDA (``torch.cuda.mem_get_info``), host memory otherwise."""
    dev = torch.device(device)
    if dev.type == "cuda":
        free, _total = torch.cuda.mem_get_info(dev)
        limit = memory_limit()
        return int(free) if limit is None else min(int(free), limit)
    return available_memory()


def dense_bytes(n: int | Iterable[int], dtype=np.float64, copies: float = 1.0) -> int:
    """Bytes of ``copies`` dense arrays: ``n x n`` for an int ``n``, else of shape ``n``.

    Exact integer arithmetic, so absurd sizes (``P = 10^9``) give a number to
    refuse rather than an overflow. ``dtype`` may be a NumPy or torch dtype.
    """
    itemsize = dtype.itemsize if isinstance(dtype, torch.dtype) else np.dtype(dtype).itemsize
    shape = (int(n), int(n)) if isinstance(n, (int, np.integer)) else tuple(int(s) for s in n)
    if any(s < 0 for s in shape):
        raise NearoptError(f"array shape must be non-negative, got {shape}")
    return math.ceil(math.prod(shape) * itemsize * copies)


def require_memory(nbytes: int, what: str, alternatives: str | Iterable[str] = (), *, device: str | torch.device = "cpu") -> int:
    """Check that ``nbytes`` fit in the memory available on ``device``; return ``nbytes``.

    Raises :class:`ResourceError` naming the size, ``what`` needs it, what is
    available, and ``alternatives`` (the routes that fit: structured,
    matrix-free, a smaller chunk); warns with :class:`MemoryPressureWarning`
    above :data:`WARN_FRACTION` of the available memory. Nothing is allocated.
    """
    nbytes = int(nbytes)
    dev = torch.device(device)
    avail = available_device_memory(dev)
    where = f"on {dev}" if dev.type == "cuda" else "available"
    alts = [alternatives] if isinstance(alternatives, str) else list(alternatives)
    if nbytes > avail:
        instead = f"; instead use {' or '.join(alts)}" if alts else ""
        raise ResourceError(f"{what} needs {format_bytes(nbytes)} but only {format_bytes(avail)} is {where}{instead}")
    if nbytes > WARN_FRACTION * avail:
        warnings.warn(
            f"{what} takes {format_bytes(nbytes)} of the {format_bytes(avail)} {where}; expect slowness or swapping",
            MemoryPressureWarning,
            stacklevel=2,
        )
    return nbytes


DEVICES = ("cpu", "cuda", "cuda:N", "auto")


def check_device(device: str | torch.device | None) -> str:
    """Validate a device name; return it normalised (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"auto"``).

    Raises :class:`NearoptError` for an unknown device type (``"tpu"``), a CUDA
    device when torch sees no GPU, or an index beyond the GPUs present.
    """
    if device is None or device == "auto":
        return "auto"
    if not isinstance(device, (str, torch.device)):
        raise NearoptError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    text = str(device).strip().lower()
    m = re.fullmatch(r"(cpu|cuda)(?::(\d+))?", text)
    if not m:
        raise NearoptError(f"unknown device {str(device)!r}; choose from {', '.join(DEVICES)}")
    kind, index = m.group(1), m.group(2)
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise NearoptError(f"device {text!r} requested but torch sees no CUDA GPU; use --device cpu")
        if index is not None and int(index) >= torch.cuda.device_count():
            raise NearoptError(f"device {text!r} requested but only {torch.cuda.device_count()} CUDA GPU(s) are visible")
    elif index is not None and int(index) != 0:
        raise NearoptError(f"unknown device {text!r}; choose from {', '.join(DEVICES)}")
    return text
