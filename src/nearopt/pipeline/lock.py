"""One run per output folder: an advisory lock on ``OUT/.nearopt.lock``.

Two ``nearopt reproduce`` runs on the same ``--out`` would compute every cell
twice and race on the report files. The first run holds an exclusive
``flock`` on ``OUT/.nearopt.lock`` (and writes its pid, host and start time
there, for the message); a second run waits up to ``wait`` seconds, then stops
with one line naming the holder.

The operating system drops an ``flock`` when its holder dies, however it dies,
so a lock file left by a dead run is simply taken over. Where ``flock`` is not
available (some network file systems), the pid recorded in the file decides:
a lock whose process no longer exists on this host is stale and taken over.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import NearoptError
from .provenance import utc_now

__all__ = ["LOCK_NAME", "output_lock", "POLL_SECONDS"]

try:
    import fcntl
except ImportError:  # pragma: no cover - not on POSIX
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".nearopt.lock"
POLL_SECONDS = 0.2

_held: dict[Path, int] = {}  # folders locked by this process -> nesting depth


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _read_holder(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _describe(holder: dict[str, Any]) -> str:
    if not holder:
        return "another nearopt run"
    return f"another nearopt run (pid {holder.get('pid')} on {holder.get('host')}, since {holder.get('started')})"


def _try_flock(fd: int) -> bool | None:
    """``True`` if locked, ``False`` if held elsewhere, ``None`` if this file system has no ``flock``."""
    if fcntl is None:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
            return None
        raise


def _pid_lock_free(holder: dict[str, Any]) -> bool:
    """Without ``flock``: free if nobody holds it, or its holder is a dead process on this host."""
    if not holder or holder.get("pid") == os.getpid():
        return True
    return holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int) and not _pid_alive(holder["pid"])


@contextlib.contextmanager
def output_lock(folder: str | Path, wait: float = 0.0, command: str | None = None) -> Iterator[Path]:
    """Hold the output lock of ``folder`` for the duration (re-entrant within one process).

    ``wait``: seconds to wait for another run to finish before raising
    :class:`NearoptError` (``0``: fail at once). Yields the lock file's path.
    """
    folder = Path(folder).resolve()
    if folder in _held:
        _held[folder] += 1
        try:
            yield folder / LOCK_NAME
        finally:
            _held[folder] -= 1
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise NearoptError(f"cannot create the lock file in {folder}: {exc.strerror or exc}") from None
    path = folder / LOCK_NAME
    deadline = time.monotonic() + max(wait, 0.0)
    try:
        while True:
            got = _try_flock(fd)
            if got is None:
                got = _pid_lock_free(_read_holder(path))
            if got:
                break
            if time.monotonic() >= deadline:
                hint = f"waited {wait:g} s; " if wait > 0 else ""
                raise NearoptError(
                    f"{_describe(_read_holder(path))} is writing to {folder}; {hint}wait for it to finish, use another --out, or --lock-wait SECONDS"
                )
            time.sleep(POLL_SECONDS)
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": utc_now(), "command": command}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        _held[folder] = 1
        try:
            yield path
        finally:
            del _held[folder]
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)  # an empty lock file: nobody holds it
    finally:
        os.close(fd)  # releases the flock
