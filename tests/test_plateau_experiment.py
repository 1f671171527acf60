"""Experiment ``plateau``: the quick run end to end, and checks that fail on wrong numbers."""

from __future__ import annotations

import copy
import json

import pytest

from nearopt.errors import NearoptError
from nearopt.experiments.base import get_experiment
from nearopt.experiments.plateau import finalize
from nearopt.model import io
from nearopt.pipeline import run_experiment


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    exp = get_experiment("plateau")
    out = tmp_path_factory.mktemp("plateau")
    run = run_experiment(exp, exp.config("quick"), out, jobs=1, cache=False, quiet=True)
    return run, out / "plateau"


def test_quick_run_passes_every_check_and_its_files_read_back(quick_run):
    run, folder = quick_run
    assert run.error is None and run.result is not None
    failed = [(c.name, c.measured, c.detail) for c in run.result.checks if not c.passed]
    assert not failed, failed
    assert len(run.result.checks) >= 10
    data = io.read_json(folder / "plateau.json")
    assert {"plateaus", "sgd"} <= set(data)
    assert data["plateaus"][0]["plateau_eps"] == pytest.approx(0.0146448, abs=1e-6)  # K = M = 2, eta~ = 0.5
    assert json.loads((folder / "result.json").read_text())["passed"] is True
    assert (folder / "plateau.png").exists() and (folder / "plateau.pdf").exists()


def _failed(cells, results, tmp_path, config):
    res = finalize(config, cells, results, tmp_path)
    return [c.name for c in res.checks if not c.passed]


def test_checks_fail_on_wrong_numbers(quick_run, tmp_path):
    run, _ = quick_run
    exp = get_experiment("plateau")
    config = exp.config("quick")
    cells = run.cells
    results = [run.entries[k]["result"] for k in run.keys]
    ode = next(i for i, c in enumerate(cells) if c["kind"] == "ode")
    sgd = max((i for i, c in enumerate(cells) if c["kind"] == "sgd"), key=lambda i: cells[i]["n_inputs"])

    bad = copy.deepcopy(results)
    bad[ode]["escape_measured"] = [1.2 * a for a in bad[ode]["escape_measured"]]
    assert any("escape time against" in n for n in _failed(cells, bad, tmp_path, config))

    bad = copy.deepcopy(results)
    bad[ode]["expansion"]["lambda_unstable"] = [1.01 * x for x in bad[ode]["expansion"]["lambda_unstable"]]
    assert any("unstable rate = eta~" in n for n in _failed(cells, bad, tmp_path, config))

    bad = copy.deepcopy(results)
    bad[ode]["lambda_min"] = [-abs(x) - 1e-3 for x in bad[ode]["lambda_min"]]
    assert any("crosses zero" in n for n in _failed(cells, bad, tmp_path, config))

    bad = copy.deepcopy(results)
    bad[sgd]["escape_runs"] = [1.3 * a for a in bad[sgd]["escape_runs"]]
    assert any("escape time at N_i" in n for n in _failed(cells, bad, tmp_path, config))

    bad = copy.deepcopy(results)
    bad[sgd]["escape_runs"][0] = float("nan")  # a run that never escaped is not averaged away
    assert any("escape time at N_i" in n for n in _failed(cells, bad, tmp_path, config))


def test_settings_refuse_a_start_no_weights_can_have():
    exp = get_experiment("plateau")
    with pytest.raises(NearoptError, match="positive"):
        exp.validate(exp.config("quick", {"q0": 1e-4}))
