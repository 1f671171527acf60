"""Experiment ``architectures``: its cells, teachers and laws, the quick run end to end, and checks that fail on wrong numbers."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import scipy.special

from nearopt.errors import NearoptError
from nearopt.experiments.architectures import BIASES, cells, covariance, finalize, hidden_layers, spectra_teacher
from nearopt.experiments.base import get_experiment
from nearopt.model import io
from nearopt.model.network import sample_teacher
from nearopt.pipeline import run_experiment


def erf_activation(z: np.ndarray) -> np.ndarray:
    """The library's "erf": ``erf(z / sqrt 2)``."""
    return scipy.special.erf(z / np.sqrt(2.0))


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """The quick configuration through the pipeline (one process, no cache): the run and its output folder."""
    exp = get_experiment("architectures")
    out = tmp_path_factory.mktemp("architectures")
    run = run_experiment(exp, exp.config("quick"), out, jobs=1, cache=False, quiet=True)
    return run, out / "architectures"


def test_quick_run_passes_every_check_and_its_files_read_back(quick_run):
    run, folder = quick_run
    assert run.error is None and run.result is not None
    failed = [(c.name, c.measured, c.detail) for c in run.result.checks if not c.passed]
    assert not failed, failed
    assert len(run.result.checks) >= 10
    record = json.loads((folder / "result.json").read_text())
    assert record["passed"] is True
    assert [c["name"] for c in record["checks"]] == [c.name for c in run.result.checks]
    assert record["config"]["seed"] == 0 and record["timings"]["cells"] == len(run.cells)
    data = io.read_json(folder / "architectures.json")
    assert {"ranks", "spectra", "batch", "fit", "fit_best"} <= set(data)
    assert json.loads(io.to_json(data, strict=True)) == json.loads((folder / "architectures.json").read_text())
    assert (folder / "architectures.png").exists() and (folder / "architectures.pdf").exists()
    # every rank compared is a measured one: the deep linear grid covers depths 1-4, K = 1-3, full and deficient rank Sigma
    deep = [r for r in data["ranks"] if r["engine"] == "deep linear"]
    assert {r["depth"] for r in deep} == {1, 2, 3, 4} and {r["K"] for r in deep} == {1, 2, 3}
    assert {r["rank_sigma"] for r in deep} == {4, 2}
    assert any(r["engine"].startswith("two-layer") for r in data["ranks"])


def test_summary_states_the_measured_numbers(quick_run):
    run, _ = quick_run
    text = run.result.summary
    for row in io.read_json(quick_run[1] / "architectures.json")["spectra"]:
        assert f"| {row['activation']} | {row['bias']} | {row['M']} | {row['P']} | {row['rank']} |" in text
    assert "ReLU students of the same erf teacher** (exact population loss and Hessian" in text
    relu = io.read_json(quick_run[1] / "architectures.json")["relu_best"]
    assert sorted(r["K"] for r in relu) == [1, 2, 3, 4]
    for r in relu:
        assert f"| {r['K']} | {r['P']} | {r['loss']:.4g} |" in text


def test_the_exact_relu_losses_agree_with_a_monte_carlo_estimate(quick_run):
    """The best ReLU student's population loss against the mean of ``1/2 |f_s - f*|^2`` over 400 000 fresh inputs (4 se)."""
    run, folder = quick_run
    teacher = sample_teacher(run.config["fit_inputs"], run.config["fit_width"], "erf", seed=run.config["seed"])
    X = np.random.default_rng(12).standard_normal((400_000, teacher.n_inputs))
    y = teacher.W2 @ erf_activation(X @ teacher.W1.T).T
    for r in io.read_json(folder / "architectures.json")["relu_best"]:
        W1, W2 = np.asarray(r["W1"]), np.asarray(r["W2"])
        sq = 0.5 * ((W2 @ np.maximum(X @ W1.T, 0.0).T - y) ** 2).sum(0)
        se = sq.std(ddof=1) / np.sqrt(sq.size)
        assert abs(sq.mean() - r["loss"]) < 4 * se, (r["K"], sq.mean(), r["loss"], se)


def _results(run):
    return [run.entries[k]["result"] for k in run.keys]


def test_checks_fail_on_a_wrong_rank_a_far_batch_entry_and_a_rising_loss(quick_run, tmp_path):
    run, _ = quick_run
    cfg, cl = run.config, run.cells
    names = {c.name: c for c in finalize(cfg, cl, _results(run), tmp_path).checks}
    assert all(c.passed for c in names.values())

    bad = copy.deepcopy(_results(run))
    ranks = next(r for c, r in zip(cl, bad) if c["kind"] == "ranks")
    ranks["rows"][0]["measured"] += 1
    batch = next(r for c, r in zip(cl, bad) if c["kind"] == "batch")
    batch["max_z"] = 8.0
    fits = [r for c, r in zip(cl, bad) if c["kind"] == "fit"]
    widest = max(fits, key=lambda r: r["rows"][0]["K"])
    widest["rows"][0]["loss"] = 1.0  # the widest student fits worse than the narrowest
    failed = {c.name for c in finalize(cfg, cl, bad, tmp_path).checks if not c.passed}
    assert any(n.startswith("deep linear and multi-output linear networks: measured rank") for n in failed)
    assert any(n.startswith("population Hessian = batch Gauss-Newton") for n in failed)
    assert any("fits better than width k" in n for n in failed)
    assert len(failed) == 3


def test_a_minimum_with_a_negative_eigenvalue_fails(quick_run, tmp_path):
    run, _ = quick_run
    bad = copy.deepcopy(_results(run))
    row = next(r for c, r in zip(run.cells, bad) if c["kind"] == "fit" and r["rows"][0]["K"] == run.config["fit_width"])["rows"][0]
    assert "minimum" in row["classification"]
    row["index"] = 1
    failed = [c.name for c in finalize(run.config, run.cells, bad, tmp_path).checks if not c.passed]
    assert failed == ["every end point called a minimum has index 0"]


def test_cells_put_the_fits_first_and_the_chain_only_when_asked():
    exp = get_experiment("architectures")
    quick, full = exp.config("quick"), exp.config("full")
    cq = cells(quick)
    kinds = [c["kind"] for c in cq]
    assert kinds[:4] == ["fit"] * 4 and "fit-chain" not in kinds
    assert [c["K"] for c in cq[:4]] == [quick["fit_width"] + 3 - i for i in range(4)]
    assert kinds.count("ranks") == len(quick["depths"]) and kinds.count("spectra") == 2 and kinds.count("batch") == 1
    assert sorted(c["K"] for c in cq if c["kind"] == "relu-fit") == [quick["fit_width"] + i for i in range(4) for _ in range(quick["fit_seeds"])]
    cf = cells(full)
    assert cf[0]["kind"] == "fit-chain" and sum(c["kind"] == "fit" for c in cf) == 4 * full["fit_seeds"]
    assert len({json.dumps(c, sort_keys=True) for c in cf}) == len(cf)


def test_hidden_patterns_repeat_cyclically():
    assert hidden_layers([5, 1], 1) == ()
    assert hidden_layers([5, 1], 4) == (5, 1, 5)
    assert hidden_layers([2], 3) == (2, 2)


@pytest.mark.parametrize("rank", [1, 2, 4])
def test_covariance_has_the_asked_rank(rank):
    law = covariance(4, rank, seed=3)
    assert law.rank == rank
    assert law.isotropic == (rank == 4)
    np.testing.assert_allclose(law.covariance, law.covariance.T, atol=0)


def test_spectra_teachers_nest():
    """The configurations differ only by what they add: the same W1, the first M rows of W2, the same biases."""
    nets = {(b, M): spectra_teacher(5, 3, "erf", b, M, seed=0) for b in BIASES for M in (1, 2, 3)}
    base = nets[("b1+b2", 3)]
    for (b, M), net in nets.items():
        assert net.n_outputs == M and np.array_equal(net.W1, base.W1) and np.array_equal(net.W2, base.W2[:M])
        assert (net.b1 is None) == (b == "none") and (net.b2 is None) == (b != "b1+b2")
        if net.b1 is not None:
            assert np.array_equal(net.b1, base.b1)
    assert nets[("none", 1)].is_plain


def test_settings_refuse_a_rank_sigma_above_the_inputs_and_relu():
    exp = get_experiment("architectures")
    with pytest.raises(NearoptError, match="rank_sigmas"):
        exp.validate(exp.config("quick", {"rank_sigmas": [5]}))
    with pytest.raises(NearoptError, match="activations"):
        exp.validate(exp.config("quick", {"activations": ["relu"]}))
