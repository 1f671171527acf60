"""Where cells run: in this process, in local worker processes, or on a Dask cluster.

Every backend takes a list of tasks ``(task_id, run_cell, cell)``, starts them
all, and yields ``(task_id, outcome)`` as each finishes, where ``outcome`` is
either the dict returned by :func:`run_task` or the exception the cell raised.
The driver (:mod:`nearopt.pipeline.runner`) stores each finished cell before
asking for the next, so nothing finished is lost when the run stops.
"""

from __future__ import annotations

import contextlib
import importlib.util
import multiprocessing
import os
import re
import signal
import socket
import sys
import threading
import time
import types
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any

import torch

from ..errors import NearoptError


def _lazy_module(name: str) -> types.ModuleType | None:
    """``name`` loaded on first attribute access (``importlib.util.LazyLoader``), or ``None`` if not installed.

    Dask is an optional extra that only ``--scheduler`` needs, and importing it
    costs seconds that every ``nearopt`` command would otherwise pay at start.
    """
    if name in sys.modules:
        return sys.modules[name]
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):  # pragma: no cover - a broken installation
        return None
    if spec is None or spec.loader is None:
        return None
    spec.loader = importlib.util.LazyLoader(spec.loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


distributed = _lazy_module("distributed")

Task = tuple[Any, Callable[[dict[str, Any]], dict[str, Any]], dict[str, Any]]

#: how often a worker checks that its driver is still alive
PARENT_POLL_SECONDS = 1.0
#: how often the Dask driver looks at its futures
POLL_SECONDS = 0.05

# Thread pools of the numerical libraries read these when they load, so they
# must be in a worker's environment before it starts.
THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")

_limited_to: int | None = None


def limit_threads(threads: int) -> None:
    """Cap torch's intra-op threads in this worker process (once per process)."""
    global _limited_to
    if _limited_to == threads:
        return
    torch.set_num_threads(threads)
    _limited_to = threads


def run_task(run_cell: Callable[[dict[str, Any]], dict[str, Any]], cell: dict[str, Any], threads: int | None = None) -> dict[str, Any]:
    """Run one cell on a worker: ``{"result", "seconds", "host", "pid"}``."""
    if threads is not None:
        limit_threads(threads)
    t0 = time.perf_counter()
    result = run_cell(cell)
    return {"result": result, "seconds": time.perf_counter() - t0, "host": socket.gethostname(), "pid": os.getpid()}


def default_jobs() -> int:
    """Cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@contextlib.contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the duration (workers inherit them when spawned)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _watch_parent(parent: int) -> None:
    """Worker initializer: ignore Ctrl-C (the driver stops the pool) and exit if the driver dies.

    A driver killed with SIGKILL runs no cleanup, and spawned workers would
    otherwise keep computing cells nobody will read, forever.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_SECONDS)
        os._exit(1)

    threading.Thread(target=watch, name="nearopt-parent-watch", daemon=True).start()


class SerialBackend:
    """Run cells one after another in this process (``--jobs 1``; easiest to debug)."""

    description = "this process"

    def __init__(self) -> None:
        self.threads = torch.get_num_threads()  # what the cells run with here (part of their cache key)

    def run(self, tasks: list[Task]) -> Iterator[tuple[Any, Any]]:
        for tid, fn, cell in tasks:
            try:
                outcome: Any = run_task(fn, cell)
            except Exception as exc:
                outcome = exc
            yield tid, outcome


class LocalBackend:
    """A pool of ``jobs`` spawned worker processes, each with ``cores // jobs`` threads.

    When the run stops early (Ctrl-C, SIGTERM turned into an exception by the
    CLI, an error) the running workers are terminated at once; a worker whose
    driver died exits by itself (:func:`_watch_parent`).
    """

    def __init__(self, jobs: int):
        if jobs < 1:
            raise NearoptError(f"--jobs must be >= 1, got {jobs}")
        self.jobs = jobs
        self.threads = max(1, default_jobs() // jobs)
        self.description = f"{jobs} local processes x {self.threads} thread(s)"

    def run(self, tasks: list[Task]) -> Iterator[tuple[Any, Any]]:
        if not tasks:
            return
        ctx = multiprocessing.get_context("spawn")  # fork + torch threads can deadlock
        pool = ProcessPoolExecutor(min(self.jobs, len(tasks)), mp_context=ctx, initializer=_watch_parent, initargs=(os.getpid(),))
        finished = False
        try:
            # Workers start during submit and keep the environment they started with.
            with _environ({k: str(self.threads) for k in THREAD_ENV}):
                futures = {pool.submit(run_task, fn, cell, self.threads): tid for tid, fn, cell in tasks}
            for fut in as_completed(futures):
                exc = fut.exception()
                yield futures[fut], exc if exc is not None else fut.result()
            finished = True
        finally:
            if not finished:
                # Interrupted: drop queued cells and stop running ones now rather
                # than after they finish (their results would be thrown away).
                for proc in list(getattr(pool, "_processes", {}).values()):
                    proc.terminate()
            pool.shutdown(wait=finished, cancel_futures=True)


_ADDRESS = re.compile(r"(?:(tcp|tls|ucx|ws|wss)://)?(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})")
_INPROC = re.compile(r"inproc://[A-Za-z0-9_.:-]+(?:/\d+)+")  # a scheduler in this process (LocalCluster(processes=False))


def check_address(address: str) -> str:
    """Validate a Dask scheduler address (``tcp://host:port``, ``host:port``, ``tls://...``, ``inproc://...``) without connecting."""
    if isinstance(address, str) and _INPROC.fullmatch(address.strip()):
        return address.strip()
    m = _ADDRESS.fullmatch(address.strip()) if isinstance(address, str) else None
    if m is None or not 0 < int(m.group(3)) < 65536:
        raise NearoptError(f"malformed Dask scheduler address {address!r}; expected tcp://HOST:PORT, e.g. tcp://10.0.0.5:8786")
    return address.strip()


class DaskBackend:
    """Submit cells to the Dask distributed scheduler at ``address`` (``tcp://host:port``).

    The workers need ``nearopt`` importable (same source) to unpickle the
    experiments' ``run_cell`` functions. Each task caps torch at one thread,
    as Dask runs one task per worker thread.

    Failures of the cluster end the run with one :class:`NearoptError` line
    (finished cells are already stored by the driver): a malformed address
    (checked before connecting), a scheduler that does not answer within
    ``timeout`` seconds or goes away mid-run, and no workers for
    ``worker_wait`` seconds (``None``: keep waiting, saying so once).
    """

    threads = 1

    def __init__(self, address: str, timeout: float = 30.0, worker_wait: float | None = 60.0, poll: float = 1.0):
        if distributed is None:
            raise NearoptError("--scheduler needs Dask's distributed package: pip install 'nearopt[dask]' (or 'dask[distributed]')")
        self.address = check_address(address)
        self.timeout = timeout
        self.worker_wait = worker_wait
        self.poll = poll
        self.description = f"Dask scheduler {self.address}"

    def _client(self):
        try:
            return distributed.Client(self.address, timeout=self.timeout, set_as_default=False)
        except (OSError, TimeoutError, ValueError) as exc:
            text = " ".join(str(exc).split())[:200] or type(exc).__name__
            raise NearoptError(f"cannot connect to the Dask scheduler at {self.address} within {self.timeout:g} s: {text}") from None

    def _lost(self, done: int, total: int, why: str) -> NearoptError:
        return NearoptError(f"lost the Dask scheduler at {self.address} ({why}) after {done} of {total} cells; finished cells are kept, rerun to resume")

    def _workers(self, client) -> int:
        return len(client.nthreads())

    def run(self, tasks: list[Task]) -> Iterator[tuple[Any, Any]]:
        if not tasks:
            return
        client = self._client()
        futures: dict[Any, Any] = {}
        done = 0
        try:
            try:
                for tid, fn, cell in tasks:
                    futures[client.submit(run_task, fn, cell, 1, pure=False)] = tid
            except Exception as exc:
                raise self._lost(0, len(tasks), type(exc).__name__) from None
            pending = set(futures)
            no_workers_since: float | None = None
            last_check = time.monotonic()
            warned = False
            while pending:
                # The client's own thread updates the futures; polling them keeps every wait bounded.
                finished = [f for f in pending if f.done()]
                for fut in finished:
                    pending.discard(fut)
                    done += 1
                    if fut.status == "error":
                        outcome: Any = fut.exception()
                    elif fut.status == "finished":
                        outcome = fut.result()
                    else:  # cancelled or lost: the scheduler went away or dropped the task
                        raise self._lost(done - 1, len(tasks), f"task {fut.status}")
                    yield futures[fut], outcome
                if finished or not pending:
                    continue
                time.sleep(POLL_SECONDS)
                if time.monotonic() - last_check < self.poll:
                    continue
                last_check = time.monotonic()
                if client.status not in ("running", "connecting"):
                    raise self._lost(done, len(tasks), f"client {client.status}")
                try:
                    workers = self._workers(client)
                except Exception as exc:
                    raise self._lost(done, len(tasks), type(exc).__name__) from None
                if workers:
                    no_workers_since = None
                    continue
                now = time.monotonic()
                no_workers_since = no_workers_since or now
                waited = now - no_workers_since
                if self.worker_wait is not None and waited >= self.worker_wait:
                    raise NearoptError(
                        f"no Dask workers connected to {self.address} for {waited:.0f} s ({done} of {len(tasks)} cells done); "
                        f"start workers with `dask worker {self.address}`, or wait longer with --worker-wait"
                    )
                if self.worker_wait is None and not warned and waited >= 60.0:
                    warnings.warn(f"no Dask workers connected to {self.address} for 60 s; still waiting (Ctrl-C stops, finished cells are kept)", stacklevel=2)
                    warned = True
        finally:
            with contextlib.suppress(Exception):
                pending_futures = [f for f in futures if not f.done()]
                if pending_futures:
                    client.cancel(pending_futures)
            with contextlib.suppress(Exception):
                client.close(timeout=5)


def make_backend(jobs: int | None = None, scheduler: str | None = None, *, scheduler_timeout: float = 30.0, worker_wait: float | None = 60.0):
    """``DaskBackend`` if ``scheduler`` is given, else ``SerialBackend`` for ``jobs == 1``, else ``LocalBackend``."""
    if scheduler:
        if jobs is not None:
            raise NearoptError("--jobs applies to local processes; with --scheduler the cluster's workers run the cells")
        return DaskBackend(scheduler, timeout=scheduler_timeout, worker_wait=worker_wait)
    jobs = default_jobs() if jobs is None else jobs
    return SerialBackend() if jobs == 1 else LocalBackend(jobs)
