"""Backends under stress: a bounded Dask handshake, Dask's log kept in a file, --jobs capped, a pool that never hangs.

* a peer that accepts the connection but never speaks the Dask protocol (or
  speaks garbage) is refused within the stated timeout, in one line;
* ``--jobs`` above the cores or the memory is capped, with a note;
* a worker that dies fails only its own cell; SIGTERM of a running
  ``nearopt experiment`` ends it within a few seconds and leaves no process behind.
"""

import contextlib
import io as _io
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import psutil
import pytest
from _cli import cli

from nearopt.errors import NearoptError
from nearopt.pipeline import backends


@contextlib.contextmanager
def listener(greeting: bytes | None = None):
    """A TCP server on 127.0.0.1 that accepts every connection and sends ``greeting`` (``None``: stays silent)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held = []

    def accept():
        with contextlib.suppress(OSError):
            while True:
                conn, _ = server.accept()
                held.append(conn)
                if greeting is not None:
                    conn.sendall(greeting)

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"tcp://127.0.0.1:{server.getsockname()[1]}"
    finally:
        server.close()
        for c in held:
            c.close()


# -- the Dask handshake ------------------------------------------------------------


# garbage is "not the Dask protocol" for recent distributed; older releases (2023.1) wait for more bytes and
# time out inside their own connect: a one-line refusal within the timeout either way
@pytest.mark.parametrize("greeting, needle", [(None, "did not complete the Dask handshake within 1.5 s"),
                                              (b"\xff" * 64, "not the Dask protocol|within 1.5 s")])
def test_a_peer_that_does_not_speak_dask_is_refused_within_the_timeout(greeting, needle):
    pytest.importorskip("distributed")
    with listener(greeting) as address:
        t0 = time.monotonic()
        with pytest.raises(NearoptError, match=needle) as info:
            backends.handshake(address, 1.5)
        assert time.monotonic() - t0 < 1.5 + 5  # the timeout, and slack for a loaded machine
    assert "\n" not in str(info.value)


def test_a_silent_scheduler_address_ends_the_command_in_one_line_within_its_timeout(tmp_path):
    pytest.importorskip("distributed")
    with listener() as address:
        t0 = time.monotonic()
        code, out, err = cli("experiment", "selftest", "--out", tmp_path, "--scheduler", address, "--scheduler-timeout", "1", "--set", "seeds=2")
        assert time.monotonic() - t0 < 5
    assert code == 2 and len(err.strip().splitlines()) == 1 and "within 1 s" in err and "Traceback" not in err, err


def test_a_real_scheduler_passes_the_handshake_and_its_log_goes_to_a_file(tmp_path):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        assert backends.handshake(cluster.scheduler_address, 5)["type"] == "Scheduler"
    log = tmp_path / "dask.log"
    stderr = _io.StringIO()
    with contextlib.redirect_stderr(stderr), backends.backend_log(log) as handler:
        logging.getLogger("distributed.test").error("a backend error")
        logging.getLogger("distributed.worker").warning("chatter")
    assert stderr.getvalue() == "" and handler.problems == 2
    text = log.read_text()
    assert "a backend error" in text and "chatter" in text
    assert logging.getLogger("distributed").handlers != [handler]  # restored afterwards


# -- --jobs ------------------------------------------------------------------------


def test_jobs_are_capped_by_cores_and_memory(monkeypatch):
    monkeypatch.setattr(backends, "default_jobs", lambda: 4)
    monkeypatch.setattr(backends, "available_memory", lambda: 10 * 10**9)
    assert backends.cap_jobs(2) == (2, None)
    jobs, note = backends.cap_jobs(1000)
    assert jobs == 4 and "--jobs 1000 capped to 4: 4 cores" in note
    jobs, note = backends.cap_jobs(4, cell_bytes=4.6e9)  # 5 GB per worker
    assert jobs == 2 and "capped to 2" in note and "per worker" in note
    assert backends.cap_jobs(None, cell_bytes=20e9)[0] == 1  # at least one


def test_jobs_above_the_cores_give_a_note_and_run(tmp_path, monkeypatch):
    monkeypatch.setattr(backends, "default_jobs", lambda: 1)
    code, out, err = cli("experiment", "selftest", "--out", tmp_path, "--jobs", "1000", "-q", "--json", "--set", "seeds=2", "--set", "sizes=[100, 1000]")
    assert code == 0 and "nearopt: note: --jobs 1000 capped to 1: 1 cores" in err
    data = json.loads(out)
    assert data["passed"]
    workers = {c["worker"] for c in data["experiments"][0]["cells"]}
    assert len(workers) == 1 and not workers.pop().endswith(f":{os.getpid()}")  # one worker process, not this one
    assert isinstance(backends.make_backend(1), backends.SerialBackend)


# -- the local pool ----------------------------------------------------------------


def _square(cell):
    return {"y": cell["x"] ** 2}


def _die(cell):
    os._exit(7)


def _raise(cell):
    raise ValueError(f"bad x = {cell['x']}")


def _helpers() -> list[psutil.Process]:
    """This process's children except multiprocessing's resource tracker (which lives as long as its parent)."""
    return [p for p in psutil.Process().children(recursive=True) if "resource_tracker" not in " ".join(p.cmdline())]


@pytest.mark.slow
def test_a_dying_worker_fails_only_its_cell_and_errors_keep_their_traceback():
    tasks = [(i, _square, {"x": i}) for i in range(4)] + [("die", _die, {"x": 0}), ("raise", _raise, {"x": -1})]
    t0 = time.monotonic()
    outcomes = dict(backends.LocalBackend(2).run(tasks))
    assert time.monotonic() - t0 < 120
    assert {i: outcomes[i]["result"]["y"] for i in range(4)} == {0: 0, 1: 1, 2: 4, 3: 9}
    assert isinstance(outcomes["die"], BrokenProcessPool) and "exit status 7" in str(outcomes["die"])
    assert isinstance(outcomes["raise"], ValueError) and "_raise" in str(outcomes["raise"].__cause__)
    assert _gone(_helpers(), 5), "workers outlived the run"


def _gone(procs, timeout: float) -> bool:
    _, alive = psutil.wait_procs(list(procs), timeout=timeout)
    return not alive


@pytest.mark.slow
def test_sigterm_ends_a_running_experiment_within_seconds_and_leaves_no_process(tmp_path):
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "nearopt", "experiment", "selftest", "--out", str(out), "--jobs", "2", "-q",
            "--set", "sizes=[100]", "--set", "seeds=40", "--set", "sleep=0.3"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    cache = Path(out, "cache", "selftest")
    try:
        t0 = time.monotonic()
        while not (cache.is_dir() and any(cache.glob("[!.]*.json"))):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() - t0 < 120, "no cell finished"
            time.sleep(0.05)
        helpers = psutil.Process(proc.pid).children(recursive=True)  # workers and multiprocessing's resource tracker
        assert helpers
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
        assert time.monotonic() - t0 < 15, "SIGTERM took more than a few seconds"  # 2 s to kill, the rest is a loaded machine
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and "terminated" in err and "Traceback" not in err, err
    assert _gone(helpers, timeout=5), "a helper process outlived the driver"
