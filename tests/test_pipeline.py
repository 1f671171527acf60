"""The reproduction pipeline: cache keys, resumable runs, Dask, report files and the CLI."""

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nearopt.cli import main
from nearopt.experiments import base as experiments_base
from nearopt.experiments.base import Experiment, ExperimentResult
from nearopt.pipeline import CellCache, cell_key, get, reproduce
from nearopt.pipeline.report import markdown_html

SELFTEST = get("selftest")
SMALL = {"sizes": [100, 1000], "seeds": 4}  # 8 cells


def small(**extra):
    return {"selftest": dict(SMALL, **extra)}


def runs_logged(log_dir: Path) -> list[str]:
    """``samples-seed`` of every execution of a selftest cell (one file per execution)."""
    return sorted(p.name.rsplit("-", 1)[0] for p in log_dir.glob("*.ran"))


def cli(capsys, *argv):
    try:
        code = main(list(argv))
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def measured(results_json: Path) -> dict:
    data = json.loads(results_json.read_text())
    return {c["name"]: c["measured"] for e in data["experiments"] for c in e["checks"]}


# -- cache ---------------------------------------------------------------------


def test_cell_key_is_stable_and_changes_with_everything_that_matters():
    cell = {"samples": 100, "seed": 3, "shift": 0.0, "sleep": 0.0, "log_dir": None}
    key = cell_key(SELFTEST, cell)
    assert re.fullmatch(r"[0-9a-f]{32}", key)
    assert cell_key(SELFTEST, dict(reversed(list(cell.items())))) == key  # key order is irrelevant
    assert cell_key(SELFTEST, dict(cell, seed=4)) != key
    assert cell_key(SELFTEST, dict(cell, shift=1e-12)) != key
    assert cell_key(dataclasses.replace(SELFTEST, version="2"), cell) != key
    assert cell_key(dataclasses.replace(SELFTEST, name="other"), cell) != key
    assert cell_key(SELFTEST, cell, threads=1) != cell_key(SELFTEST, cell, threads=2)  # round-off depends on threads


def test_cache_round_trip_ignores_corrupt_and_foreign_entries(tmp_path):
    cache = CellCache(tmp_path)
    cell = {"a": 1}
    cache.put("exp", "k1", cell, {"x": [1.0, 2.0]}, 0.5, "host:1")
    assert cache.get("exp", "k1", cell)["result"] == {"x": [1.0, 2.0]}
    with pytest.warns(UserWarning, match="another cell"):
        assert cache.get("exp", "k1", {"a": 2}) is None
    (tmp_path / "exp" / "k2.json").write_text("{truncated")
    with pytest.warns(UserWarning, match="unreadable"):
        assert cache.get("exp", "k2", cell) is None
    (tmp_path / "exp" / ".k3.tmp.json").write_text("{}")  # an unfinished atomic write
    assert cache.keys("exp") == {"k1", "k2"}
    assert CellCache(tmp_path, read=False).get("exp", "k1", cell) is None
    CellCache(tmp_path / "off", enabled=False).put("exp", "k1", cell, {}, 0.0)
    assert not (tmp_path / "off").exists()


# -- runs ----------------------------------------------------------------------


def test_rerun_reuses_cells_and_changed_config_computes_only_new_ones(tmp_path):
    out, log = tmp_path / "out", tmp_path / "log"
    log.mkdir()
    first = reproduce(["selftest"], overrides=small(log_dir=str(log)), out=out, jobs=1, quiet=True)
    assert first.passed and len(runs_logged(log)) == 8
    for name in ["report.html", "report.md", "results.json", "selftest/selftest.png", "selftest/selftest.pdf", "selftest/cells.csv", "selftest/result.json"]:
        assert (out / name).is_file(), name
    assert len(list((out / "cache" / "selftest").glob("*.json"))) == 8

    again = reproduce(["selftest"], overrides=small(log_dir=str(log)), out=out, jobs=1, quiet=True)
    assert len(runs_logged(log)) == 8  # nothing recomputed
    assert again.runs[0].timings()["cached"] == 8 and again.runs[0].timings()["computed"] == 0
    assert [c.measured for c in again.runs[0].checks] == [c.measured for c in first.runs[0].checks]

    # A third size: the 8 old cells are reused, only its 4 cells run.
    reproduce(["selftest"], overrides=small(log_dir=str(log), sizes=[100, 1000, 10000]), out=out, jobs=1, quiet=True)
    assert len(runs_logged(log)) == 12
    # Any change inside every cell (here the shift) reuses nothing.
    shifted = reproduce(["selftest"], overrides=small(log_dir=str(log), shift=1e-9), out=out, jobs=1, quiet=True)
    assert len(runs_logged(log)) == 20 and shifted.runs[0].timings()["cached"] == 0
    # --fresh recomputes (and re-stores); --no-cache neither reads nor writes.
    reproduce(["selftest"], overrides=small(log_dir=str(log)), out=out, jobs=1, quiet=True, fresh=True)
    assert len(runs_logged(log)) == 28
    reproduce(["selftest"], overrides=small(log_dir=str(log)), out=tmp_path / "nocache", jobs=1, quiet=True, cache=False)
    assert len(runs_logged(log)) == 36 and not (tmp_path / "nocache" / "cache").exists()


def test_results_json_holds_checks_provenance_and_timings(tmp_path):
    study = reproduce(["selftest"], overrides=small(seed=7), out=tmp_path, jobs=1, quiet=True, command="nearopt reproduce")
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["passed"] is True
    prov = data["provenance"]
    assert prov["versions"]["nearopt"] and prov["versions"]["numpy"] and prov["versions"]["torch"]
    assert prov["dtype"] == "float64" and prov["size"] == "quick" and prov["command"] == "nearopt reproduce"
    assert prov["git"]["commit"] is None or re.fullmatch(r"[0-9a-f]{40}", prov["git"]["commit"])
    assert prov["device"]["cpu_count"] >= 1 and prov["started"] <= prov["finished"]
    (exp,) = data["experiments"]
    assert exp["seeds"] == {"seed": 7} and exp["config"]["sizes"] == [100, 1000]
    assert {c["name"] for c in exp["checks"]} == {c.name for c in study.runs[0].checks}
    for c in exp["checks"]:
        assert set(c) >= {"name", "expected", "measured", "tolerance", "passed"}
    assert exp["figures"] == ["selftest/selftest.png"]
    assert len(exp["cells"]) == 8 and all(c["seconds"] >= 0 for c in exp["cells"])
    assert exp["timings"]["computed"] == 8


def test_failing_check_gives_exit_status_1_and_a_failing_report(tmp_path, capsys):
    code, out, _ = cli(capsys, "reproduce", "--only", "selftest", "--out", str(tmp_path), "--jobs", "1", "-q", "--set", "selftest.shift=0.5", "--set", "selftest.seeds=4")
    assert code == 1
    assert "FAILED KS distance" in out and "FAIL" in out.splitlines()[1]
    html = (tmp_path / "report.html").read_text()
    assert "some checks fail" in html and 'class="fail-row"' in html


def _half_failing_cell(cell):
    if cell["x"] < 0:
        raise ValueError(f"negative x = {cell['x']}")
    return {"x": cell["x"]}


HALF_FAILING = Experiment(
        name="test-half-failing",
        description="two of four cells raise",
        quick={"xs": [1.0, -1.0], "seeds": 2},
        full={"xs": [1.0, -1.0], "seeds": 2},
        cells=lambda c: [{"x": x, "seed": s} for x in c["xs"] for s in range(c["seeds"])],
        run_cell=_half_failing_cell,
        finalize=lambda config, cells, results, out_dir: ExperimentResult("test-half-failing", []),
)


def test_a_failing_cell_is_reported_and_finished_cells_are_kept(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(experiments_base._REGISTRY, HALF_FAILING.name, HALF_FAILING)  # registered for this test only
    # cells with x < 0 raise; the other cells still run and are cached.
    code, out, err = cli(capsys, "reproduce", "--only", HALF_FAILING.name, "--out", str(tmp_path), "-j", "1", "-q")
    assert code == 1
    assert "2 of 4 cells failed" in out and "ValueError" in err
    assert len(list((tmp_path / "cache" / HALF_FAILING.name).glob("*.json"))) == 2


@pytest.mark.parametrize(
    "argv, message",
    [
        (["reproduce", "--only", "no-such-experiment"], "unknown experiment"),
        (["reproduce", "--only", "selftest", "--set", "selftest.nope=1"], "no setting 'nope'"),
        (["reproduce", "--only", "selftest", "--set", "selftest.seeds=many"], "wrong type"),
        (["reproduce", "--only", "selftest", "--set", "seeds=3"], "EXPERIMENT.key=value"),
        (["reproduce", "--only", "selftest", "--set", "rank.teachers=3"], "not being run"),
        (["reproduce", "--quick", "--full"], "not allowed with"),
        (["reproduce", "--jobs", "0"], "must be >= 1"),
        (["reproduce", "--only", "selftest", "--jobs", "2", "--scheduler", "tcp://127.0.0.1:1"], "--jobs applies"),
        (["experiment", "selftest", "--teachers", "3"], "no 'teachers' setting"),
        (["experiment", "selftest", "--set", "seeds"], "key=value"),
        (["experiment"], "name an experiment"),
    ],
)
def test_bad_input_is_one_line_and_exit_status_2(tmp_path, capsys, argv, message):
    code, _, err = cli(capsys, *argv, "--out", str(tmp_path)) if argv != ["experiment"] else cli(capsys, *argv)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "cache").exists()


def test_experiment_command_lists_and_runs_one_experiment(tmp_path, capsys):
    code, out, _ = cli(capsys, "experiment", "--list")
    assert code == 0 and re.search(r"^selftest\s+Pipeline self-test.*cells quick/full: 48/320", out, re.MULTILINE)
    code, out, _ = cli(capsys, "experiment", "selftest", "--set", "seeds=3", "--jobs", "1", "--out", str(tmp_path), "--json")
    assert code == 0
    data = json.loads(out)
    assert data["passed"] and data["experiments"][0]["config"]["seeds"] == 3
    assert (tmp_path / "selftest" / "report.html").is_file() and not (tmp_path / "report.html").exists()


def test_markdown_summaries_become_escaped_html():
    text = "A **bold** `code` *claim* <b>.\n\n- one\n- [two](x.csv)\n\n| N | KS |\n|---|---|\n| 10 | 0.02 |"
    out = markdown_html(text)
    assert "<strong>bold</strong>" in out and "<code>code</code>" in out and "<em>claim</em>" in out
    assert "&lt;b&gt;" in out and "<ul><li>one</li><li><a href=\"x.csv\">two</a></li></ul>" in out
    assert "<tr><th>N</th><th>KS</th></tr><tr><td>10</td><td>0.02</td></tr>" in out


# -- parallel backends ---------------------------------------------------------


def _wait_for(predicate, proc, timeout=120.0):
    t0 = time.monotonic()
    while not predicate():
        assert proc.poll() is None, f"the run ended (status {proc.returncode}) before it could be interrupted"
        assert time.monotonic() - t0 < timeout, "no progress"
        time.sleep(0.05)


def test_interrupted_local_run_resumes_without_redoing_finished_cells(tmp_path):
    """Ctrl-C, then kill -9, then a full run: no cell finished before a stop runs again."""
    out, log = tmp_path / "out", tmp_path / "log"
    log.mkdir()
    cache = out / "cache" / "selftest"
    sets = ["--set", "selftest.sizes=[100,1000]", "--set", "selftest.seeds=6", "--set", "selftest.sleep=0.3", "--set", f'selftest.log_dir="{log}"']
    argv = [sys.executable, "-m", "nearopt", "reproduce", "--only", "selftest", "--out", str(out), "--jobs", "2", "-q", *sets]
    cached = lambda: {p.stem for p in cache.glob("[!.]*.json")} if cache.is_dir() else set()

    logs = lambda: set(log.glob("*.ran"))
    stops = []  # (cells cached, executions logged) at each stop

    # Ctrl-C in a terminal signals the whole process group: driver and workers.
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    _wait_for(lambda: len(cached()) >= 3, proc)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "run the same command again to resume" in err
    stops.append((cached(), logs()))
    pool_workers = {json.loads(p.read_text())["worker"] for p in cache.glob("[!.]*.json")}
    assert pool_workers and not any(w.endswith(f":{proc.pid}") for w in pool_workers)  # ran in worker processes

    # kill -9 of the run and its workers (same --jobs: same threads per cell, same keys).
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    _wait_for(lambda: len(cached()) >= len(stops[0][0]) + 3, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    stops.append((cached(), logs()))
    assert stops[0][0] < stops[1][0] and len(stops[1][0]) < 12

    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert len(cached()) == 12

    entries = [json.loads(p.read_text()) for p in cache.glob("[!.]*.json")]
    label = {e["key"]: f"{e['cell']['samples']}-{e['cell']['seed']}" for e in entries}
    for keys, logged in stops:  # no cell finished before a stop ran again after it
        ran_later = {p.name.rsplit("-", 1)[0] for p in logs() - logged}
        assert not ran_later & {label[k] for k in keys}
    result = json.loads((out / "results.json").read_text())["experiments"][0]
    assert result["timings"]["cached"] == len(stops[1][0]) and result["timings"]["computed"] == 12 - len(stops[1][0])

    # Same numbers as one uninterrupted run in this process.
    ref_log = tmp_path / "ref-log"
    ref_log.mkdir()
    ref = reproduce(["selftest"], overrides=small(seeds=6, sleep=0.0, log_dir=str(ref_log)), out=tmp_path / "ref", jobs=1, quiet=True)
    assert measured(out / "results.json") == {c.name: c.measured for c in ref.runs[0].checks}
    assert (out / "selftest" / "cells.csv").read_text() == (tmp_path / "ref" / "selftest" / "cells.csv").read_text()


def test_same_sweep_runs_on_a_dask_cluster_given_by_address(tmp_path):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        study = reproduce(["selftest"], overrides=small(), out=tmp_path / "dask", scheduler=cluster.scheduler_address, quiet=True)
    assert study.passed
    entries = [json.loads(p.read_text()) for p in (tmp_path / "dask" / "cache" / "selftest").glob("*.json")]
    assert len(entries) == 8
    assert all(not e["worker"].endswith(f":{os.getpid()}") for e in entries)  # ran on the workers
    serial = reproduce(["selftest"], overrides=small(), out=tmp_path / "serial", jobs=1, quiet=True)
    assert {c.name: c.measured for c in study.runs[0].checks} == {c.name: c.measured for c in serial.runs[0].checks}
    cells = SELFTEST.cells(SELFTEST.config("quick", SMALL))  # Dask workers run one thread per cell
    assert sorted(p.stem for p in (tmp_path / "dask" / "cache" / "selftest").iterdir()) == sorted(cell_key(SELFTEST, c, threads=1) for c in cells)
