"""Where cells run: in this process, in local worker processes, or on a Dask cluster.

Every backend takes a list of tasks ``(task_id, run_cell, cell)``, starts them
all, and yields ``(task_id, outcome)`` as each finishes, where ``outcome`` is
either the dict returned by :func:`run_task` or the exception the cell raised.
The driver (:mod:`nearopt.pipeline.runner`) stores each finished cell before
asking for the next, so nothing finished is lost when the run stops.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import socket
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any, Callable, Iterator

import torch

try:  # Dask is an optional extra: only --scheduler needs it
    import distributed
except ImportError:  # pragma: no cover - depends on the installation
    distributed = None

from ..errors import NearoptError

Task = tuple[Any, Callable[[dict[str, Any]], dict[str, Any]], dict[str, Any]]

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


class SerialBackend:
    """Run cells one after another in this process (``--jobs 1``; easiest to debug)."""

    description = "this process"

    def run(self, tasks: list[Task]) -> Iterator[tuple[Any, Any]]:
        for tid, fn, cell in tasks:
            try:
                outcome: Any = run_task(fn, cell)
            except Exception as exc:  # a failing cell is reported, the others still run
                outcome = exc
            yield tid, outcome


class LocalBackend:
    """A pool of ``jobs`` spawned worker processes, each with ``cores // jobs`` threads."""

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
        pool = ProcessPoolExecutor(min(self.jobs, len(tasks)), mp_context=ctx)
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


class DaskBackend:
    """Submit cells to the Dask distributed scheduler at ``address`` (``tcp://host:port``).

    The workers need ``nearopt`` importable (same version) to unpickle the
    experiments' ``run_cell`` functions. Each task caps torch at one thread,
    as Dask runs one task per worker thread.
    """

    def __init__(self, address: str, timeout: float = 30.0):
        self.address = address
        self.timeout = timeout
        self.description = f"Dask scheduler {address}"

    def _client(self):
        try:
            return distributed.Client(self.address, timeout=self.timeout, set_as_default=False)
        except (OSError, TimeoutError, ValueError) as exc:
            raise NearoptError(f"cannot connect to the Dask scheduler at {self.address}: {exc}") from None

    def run(self, tasks: list[Task]) -> Iterator[tuple[Any, Any]]:
        if not tasks:
            return
        client = self._client()
        futures = {}
        try:
            for tid, fn, cell in tasks:
                futures[client.submit(run_task, fn, cell, 1, pure=False)] = tid
            for fut in distributed.as_completed(list(futures), loop=client.loop):
                if fut.status == "error":
                    yield futures[fut], fut.exception()
                elif fut.status == "cancelled":
                    yield futures[fut], RuntimeError("the Dask scheduler cancelled this cell (worker lost?)")
                else:
                    yield futures[fut], fut.result()
        finally:
            pending = [f for f in futures if not f.done()]
            if pending:
                client.cancel(pending)
            client.close()


def make_backend(jobs: int | None = None, scheduler: str | None = None):
    """``DaskBackend`` if ``scheduler`` is given, else ``SerialBackend`` for ``jobs == 1``, else ``LocalBackend``."""
    if scheduler:
        if jobs is not None:
            raise NearoptError("--jobs applies to local processes; with --scheduler the cluster's workers run the cells")
        return DaskBackend(scheduler)
    jobs = default_jobs() if jobs is None else jobs
    return SerialBackend() if jobs == 1 else LocalBackend(jobs)
