"""Where cells run: in this process, in local worker processes, or on a Dask cluster.

Every backend takes a list of tasks ``(task_id, run_cell, cell)``, starts them
all, and yields ``(task_id, outcome)`` as each finishes, where ``outcome`` is
either the dict returned by :func:`run_task` or the exception the cell raised.
The driver (:mod:`nearopt.pipeline.runner`) stores each finished cell before
asking for the next, so nothing finished is lost when the run stops.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import importlib.util
import logging
import multiprocessing
import os
import pickle
import re
import signal
import socket
import sys
import threading
import time
import traceback
import types
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

import torch

from ..errors import NearoptError
from ..resources import available_memory, format_bytes

__all__ = [
    "backend_log", "BACKEND_LOGGERS", "cap_jobs", "check_address", "CountingFileHandler", "DaskBackend", "default_jobs", "distributed", "handshake",
    "limit_threads", "LocalBackend", "make_backend", "PARENT_POLL_SECONDS", "POLL_SECONDS", "RemoteTraceback", "run_task", "SerialBackend",
    "STOP_SECONDS", "Task", "THREAD_ENV", "WORKER_BYTES"
]


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
#: seconds a stopped worker gets to exit after SIGTERM before it is killed
STOP_SECONDS = 2.0
#: resident memory of one worker process with NumPy, SciPy, torch and nearopt loaded (measured: about 400 MB)
WORKER_BYTES = 400e6

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


def cap_jobs(requested: int | None, cell_bytes: float = 0.0) -> tuple[int, str | None]:
    """Worker processes to start: ``requested`` (default: every core) capped by the cores and by memory.

    Each worker needs about :data:`WORKER_BYTES` plus ``cell_bytes`` (the largest
    cell's estimate); more workers than cores only share them and run slower.
    Returns the number and a note saying why it is below ``requested`` (``None``
    when nothing was capped).
    """
    cores = default_jobs()
    per_worker = WORKER_BYTES + max(float(cell_bytes), 0.0)
    avail = available_memory()
    by_memory = max(1, int(avail // per_worker))
    wanted = cores if requested is None else int(requested)
    jobs = max(1, min(wanted, cores, by_memory))
    if jobs >= wanted:
        return jobs, None
    why = []  # the limits that bind
    if cores == jobs:
        why.append(f"{cores} cores")
    if by_memory == jobs:
        why.append(f"{format_bytes(avail)} of memory available at about {format_bytes(per_worker)} per worker")
    asked = f"--jobs {requested}" if requested is not None else f"{wanted} workers (one per core)"
    return jobs, f"{asked} capped to {jobs}: {' and '.join(why)}"


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
    """In a worker: ignore Ctrl-C (the driver stops the pool) and exit if the driver dies.

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


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker process (its ``__cause__``)."""

    def __init__(self, text: str):
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f"\n{self.text}"


def _worker_main(conn: Connection, parent: int, threads: int) -> None:
    """A worker process: run each ``(run_cell, cell)`` received on ``conn``, send back its outcome; ``None`` ends it."""
    _watch_parent(parent)
    limit_threads(threads)
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):  # the driver closed its end
            return
        if task is None:
            return
        fn, cell = task
        try:
            message: tuple[str, Any, str] = ("ok", run_task(fn, cell), "")
        except Exception as exc:
            message = ("error", exc, traceback.format_exc())
        try:
            conn.send(message)
        except (pickle.PicklingError, TypeError, AttributeError):  # an exception that does not pickle
            conn.send(("error", RuntimeError(f"{type(message[1]).__name__}: {message[1]}"), message[2]))


class _Worker:
    """One spawned worker process and the driver's end of its private pipe."""

    def __init__(self, ctx: Any, threads: int):
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker_main, args=(child, os.getpid(), threads), name="nearopt-worker", daemon=True)
        self.process.start()
        child.close()  # only the worker holds its end: its death is an EOF here, never a hang
        self.task: Any = None

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after :data:`STOP_SECONDS`; never blocks longer."""
        _stop_all([self])


def _stop_all(workers: list[_Worker]) -> None:
    """SIGTERM to every worker at once, SIGKILL to those still alive after :data:`STOP_SECONDS`."""
    alive = [w for w in workers if w.process.is_alive()]
    for w in alive:
        w.process.terminate()
    deadline = time.monotonic() + STOP_SECONDS
    for w in alive:
        w.process.join(max(deadline - time.monotonic(), 0.0))
    for w in alive:
        if w.process.is_alive():
            w.process.kill()
            w.process.join(STOP_SECONDS)
    for w in workers:
        w.conn.close()


class LocalBackend:
    """``jobs`` spawned worker processes, each with ``cores // jobs`` threads and its own pipe.

    The driver's main thread hands one cell at a time to each idle worker and
    waits on the pipes with a timeout, so it has no helper thread that could
    block on a pipe, and a signal (Ctrl-C, SIGTERM turned into an exception by
    the CLI) interrupts it at once. Stopping terminates every worker (SIGTERM,
    then SIGKILL after :data:`STOP_SECONDS`). A worker that dies (killed, out of
    memory) fails only the cell it was running, with :class:`BrokenProcessPool`,
    and is replaced; a worker whose driver died exits by itself (:func:`_watch_parent`).
    """

    def __init__(self, jobs: int, threads: int | None = None):
        if jobs < 1:
            raise NearoptError(f"--jobs must be >= 1, got {jobs}")
        self.jobs = jobs
        self.threads = max(1, default_jobs() // jobs) if threads is None else int(threads)
        self.description = f"{jobs} local processes x {self.threads} thread(s)"

    def _start(self, ctx: Any) -> _Worker:
        # Thread pools read these when they load: set them before the worker starts.
        with _environ({k: str(self.threads) for k in THREAD_ENV}):
            return _Worker(ctx, self.threads)

    def run(self, tasks: list[Task]) -> Iterator[tuple[Any, Any]]:
        if not tasks:
            return
        ctx = multiprocessing.get_context("spawn")  # fork + torch threads can deadlock
        queue = collections.deque(tasks)
        workers = [self._start(ctx) for _ in range(min(self.jobs, len(tasks)))]
        try:
            while queue or any(w.task is not None for w in workers):
                for i, w in enumerate(workers):
                    if w.task is None and queue:
                        tid, fn, cell = queue.popleft()
                        try:
                            w.conn.send((fn, cell))
                        except OSError:  # it died while idle: replace it, the cell goes first to the next idle one
                            queue.appendleft((tid, fn, cell))
                            w.stop()
                            workers[i] = self._start(ctx)
                            continue
                        w.task = tid
                busy = {id(w.conn): w for w in workers if w.task is not None}
                for ready in wait([w.conn for w in busy.values()], timeout=PARENT_POLL_SECONDS):
                    w = busy[id(ready)]
                    tid, w.task = w.task, None
                    try:
                        kind, value, text = w.conn.recv()
                    except (EOFError, OSError):
                        w.stop()
                        workers[workers.index(w)] = self._start(ctx)
                        yield tid, BrokenProcessPool(f"worker process {w.process.pid} died (exit status {w.process.exitcode}) while running this cell")
                        continue
                    if kind == "error":
                        value.__cause__ = RemoteTraceback(text)
                    yield tid, value
            for w in workers:  # done: let them exit on their own, so they release what they hold
                with contextlib.suppress(OSError):
                    w.conn.send(None)
            deadline = time.monotonic() + STOP_SECONDS
            for w in workers:  # (a terminated worker leaves its semaphores to the resource tracker's warning)
                w.process.join(max(0.0, deadline - time.monotonic()))
        finally:
            _stop_all(workers)


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


async def _identity(address: str, timeout: float) -> Any:
    """Connect to ``address`` (Dask's own handshake, with the TLS settings of Dask's configuration, as a ``Client`` does) and ask for its identity."""
    assert distributed is not None  # checked by DaskBackend
    comm = await distributed.comm.connect(address, timeout=timeout, **distributed.Security().get_connection_args("client"))
    try:
        await comm.write({"op": "identity", "reply": True})
        return await comm.read()
    finally:
        comm.abort()


def _reachable(address: str, timeout: float) -> bool:
    """Whether a TCP connection to a ``tcp://``/``tls://`` (or bare ``host:port``) address opens; other schemes: ``True``.

    Raises :class:`NearoptError` when nothing accepts the connection."""
    m = _ADDRESS.fullmatch(address)
    if m is None or m.group(1) not in (None, "tcp", "tls"):
        return True
    host = m.group(2).strip("[]")
    try:
        with socket.create_connection((host, int(m.group(3))), timeout=timeout):
            return True
    except OSError as exc:
        raise NearoptError(f"cannot connect to the Dask scheduler at {address} within {timeout:g} s: {exc.strerror or exc}") from None


def handshake(address: str, timeout: float) -> dict[str, Any]:
    """The identity of the Dask scheduler at ``address``, within ``timeout`` seconds in all, or one :class:`NearoptError` line.

    ``distributed.Client(timeout=...)`` bounds only the socket connect: a peer
    that accepts the connection but never speaks the protocol holds it for
    minutes. Here the whole exchange (TCP connect, Dask handshake, identity
    request and reply) runs under one deadline, in a short-lived thread with
    its own event loop (so it also works where a loop is already running).
    """
    deadline = time.monotonic() + timeout
    _reachable(address, timeout)
    left = max(deadline - time.monotonic(), 0.1)
    outcome: dict[str, Any] = {}

    def probe() -> None:
        try:
            outcome["reply"] = asyncio.run(asyncio.wait_for(_identity(address, left), left))
        except BaseException as exc:  # reported by the caller, in the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=probe, name="nearopt-dask-handshake", daemon=True)
    thread.start()
    thread.join(left + 1.0)
    where = f"the Dask scheduler at {address}"
    exc = outcome.get("error")
    if thread.is_alive() or isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        raise NearoptError(f"{where} did not complete the Dask handshake within {timeout:g} s: something may listen there that does not speak the Dask protocol")
    if exc is not None and not isinstance(exc, OSError):  # garbage read as frames: absurd sizes, undecodable bytes
        text = " ".join(str(exc).split())[:120] or type(exc).__name__
        raise NearoptError(f"{where} answered with data that is not the Dask protocol ({text})")
    if exc is not None:
        text = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise NearoptError(f"cannot connect to {where} within {timeout:g} s: {text}")
    reply = outcome.get("reply")
    if not isinstance(reply, dict) or reply.get("type") != "Scheduler":
        kind = reply.get("type") if isinstance(reply, dict) else type(reply).__name__
        raise NearoptError(f"{address} answers the Dask protocol but is not a scheduler (it is a {kind})")
    return reply


#: loggers of Dask and the libraries under it, sent to the backend's log file during a run
BACKEND_LOGGERS = ("distributed", "tornado", "asyncio", "bokeh")


class CountingFileHandler(logging.Handler):
    """Writes records to ``path`` (created on the first record) and counts warnings and errors."""

    def __init__(self, path: Path | None):
        super().__init__(logging.DEBUG)
        self.path = path
        self.problems = 0
        self.file: logging.Handler | None = None
        if path is not None:
            self.file = logging.FileHandler(path, encoding="utf-8", delay=True)
            self.file.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.WARNING:
            self.problems += 1
        if self.file is not None:
            with contextlib.suppress(Exception):
                self.file.emit(record)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        super().close()


def _backend_loggers() -> list[logging.Logger]:
    """The top :data:`BACKEND_LOGGERS` and every existing logger below them with its own handlers (``distributed.client`` has one)."""
    names = set(BACKEND_LOGGERS) | {
        name for name, logger in logging.root.manager.loggerDict.items()
        if isinstance(logger, logging.Logger) and logger.handlers and name.split(".")[0] in BACKEND_LOGGERS
    }
    return [logging.getLogger(name) for name in sorted(names)]


@contextlib.contextmanager
def backend_log(path: Path | None) -> Iterator[CountingFileHandler]:
    """Send the :data:`BACKEND_LOGGERS` to ``path`` (``None``: nowhere) instead of the terminal.

    After a clean run the loggers get their handlers back. After a failure
    (a lost scheduler) they stay redirected: the client's background thread
    keeps logging its reconnection attempts until the interpreter exits.
    """
    handler = CountingFileHandler(path)
    saved = []
    for logger in _backend_loggers():
        saved.append((logger, logger.handlers[:], logger.propagate))
        logger.handlers = [handler]
        logger.propagate = False
    try:
        yield handler
    except BaseException:
        raise
    else:
        for logger, handlers, propagate in saved:
            logger.handlers = handlers
            logger.propagate = propagate
        handler.close()


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

    def __init__(self, address: str, timeout: float = 30.0, worker_wait: float | None = 60.0, poll: float = 1.0, log_file: str | Path | None = None):
        if distributed is None:
            raise NearoptError("--scheduler needs Dask's distributed package: pip install 'nearopt[dask]' (or 'dask[distributed]')")
        self.address = check_address(address)
        self.timeout = timeout
        self.worker_wait = worker_wait
        self.poll = poll
        self.log_file = Path(log_file) if log_file is not None else None
        self.description = f"Dask scheduler {self.address}"

    def _client(self):
        deadline = time.monotonic() + self.timeout
        if not self.address.startswith("inproc://"):  # a scheduler in this process cannot stall the handshake
            handshake(self.address, self.timeout)
        try:
            return distributed.Client(self.address, timeout=max(deadline - time.monotonic(), 1.0), set_as_default=False)
        except (OSError, TimeoutError, ValueError) as exc:
            text = " ".join(str(exc).split())[:200] or type(exc).__name__
            raise NearoptError(f"cannot connect to the Dask scheduler at {self.address} within {self.timeout:g} s: {text}") from None

    def _lost(self, done: int, total: int, why: str) -> NearoptError:
        return NearoptError(f"lost the Dask scheduler at {self.address} ({why}) after {done} of {total} cells; finished cells are kept, rerun to resume")

    def _workers(self, client) -> int:
        return len(client.nthreads())

    def run(self, tasks: list[Task]) -> Iterator[tuple[Any, Any]]:
        """Yield each task's outcome; Dask's own log goes to ``log_file``, and the run ends with at most one line about it."""
        if not tasks:
            return
        assert distributed is not None  # checked in __init__
        _ = distributed.Client  # import Dask now, so that its loggers exist when they are redirected
        with backend_log(self.log_file) as log:
            try:
                yield from self._run(tasks)
            except NearoptError as exc:
                where = f"; the backend's log is in {self.log_file}" if log.problems and self.log_file is not None else ""
                raise NearoptError(f"{exc}{where}") from None
        if log.problems:
            where = f"; see {self.log_file}" if self.log_file is not None else ""
            print(f"nearopt: note: the Dask backend logged {log.problems} warning(s) or error(s){where}", file=sys.stderr)

    def _run(self, tasks: list[Task]) -> Iterator[tuple[Any, Any]]:
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


def make_backend(
    jobs: int | None = None,
    scheduler: str | None = None,
    *,
    scheduler_timeout: float = 30.0,
    worker_wait: float | None = 60.0,
    cell_bytes: float = 0.0,
    log_file: str | Path | None = None,
):
    """``DaskBackend`` if ``scheduler`` is given, else ``SerialBackend`` when one job is asked for, else ``LocalBackend``.

    Local jobs are capped by the cores and by memory (:func:`cap_jobs`, with
    ``cell_bytes`` the largest cell's estimate); a note on stderr says so.
    ``log_file``: where a Dask run writes the backend's own log.
    """
    if scheduler:
        if jobs is not None:
            raise NearoptError("--jobs applies to local processes; with --scheduler the cluster's workers run the cells")
        return DaskBackend(scheduler, timeout=scheduler_timeout, worker_wait=worker_wait, log_file=log_file)
    if jobs is not None and jobs < 1:
        raise NearoptError(f"--jobs must be >= 1, got {jobs}")
    wanted = default_jobs() if jobs is None else jobs
    capped, note = cap_jobs(jobs, cell_bytes)
    if note:
        print(f"nearopt: note: {note}", file=sys.stderr)
    # One job asked for runs here; a larger number capped to one still runs in a worker process.
    # Threads per worker follow the jobs asked for (capped by the cores), not the memory cap: the
    # thread count is part of every cell's cache key, and free memory changes from run to run.
    threads = max(1, default_jobs() // min(wanted, default_jobs()))
    return SerialBackend() if wanted == 1 else LocalBackend(capped, threads=threads)
