"""Rank as the effective number of parameters: predictions, measurements, CLI, experiment."""

import json

import numpy as np
import pytest

import nearopt as no
from nearopt.cli import main
from nearopt.curvature.rank_measurement import default_samples, measure_rank, rank_sweep, rank_vs_samples
from nearopt.model.io import to_json
from nearopt.policy import CLEAR_MARGIN
from nearopt.theory.rank_prediction import (
    generic_polynomial_rank,
    linear_plus_quadratic_rank,
    monomial_rank,
    predict_rank,
    rank_mod,
    saturation_hidden,
)

# -- theory ---------------------------------------------------------------------


def test_closed_forms_of_theory_table():
    assert predict_rank("linear", 7, 3).rank == 7
    # z²: N_h N_i − N_h(N_h−1)/2, saturating at N_i(N_i+1)/2 from N_h = N_i on
    assert [predict_rank("quadratic", 5, h).rank for h in range(1, 8)] == [5, 9, 12, 14, 15, 15, 15]
    assert saturation_hidden("quadratic", 5) == 5
    # z³ in N_i = 4: min(4 N_h, C(6,3) = 20)
    assert [monomial_rank(3, 4, h) for h in range(1, 7)] == [4, 8, 12, 16, 20, 20]
    assert predict_rank("relu", 4, 6).rank == 6 * 5 - 6
    erf = predict_rank("erf", 3, 4)
    assert (erf.rank, erf.kind) == (16, "observed")


def test_defective_cases_one_below_expected():
    for p, n_i, n_h, rank in [(3, 5, 7, 34), (4, 3, 5, 14), (4, 4, 9, 34), (4, 5, 14, 69)]:
        pred = predict_rank(f"monomial:{p}", n_i, n_h)
        assert (pred.rank, pred.kind) == (rank, "exact")
        assert "defective" in pred.basis
    assert predict_rank("monomial:4", 5, 13).rank == 65 and predict_rank("monomial:4", 5, 15).rank == 70


def test_modular_rank_reproduces_closed_forms_and_defects():
    # independent exact-arithmetic route: Alexander–Hirschowitz defects and non-defective neighbours
    for p, n_i, n_h in [(3, 5, 7), (4, 3, 5), (4, 4, 9), (4, 5, 14), (4, 5, 13), (3, 5, 8), (2, 5, 3)]:
        assert generic_polynomial_rank((p,), n_i, n_h) == monomial_rank(p, n_i, n_h)
    for n_i in range(1, 5):
        for n_h in range(1, 7):
            assert generic_polynomial_rank((1, 2), n_i, n_h) == linear_plus_quadratic_rank(n_i, n_h)


def test_rank_mod_matches_float_rank_on_small_integer_matrices():
    rng = np.random.default_rng(3)
    for shape, r in [((6, 9), 4), ((8, 5), 2), ((7, 7), 7)]:
        M = rng.integers(-5, 6, (shape[0], r)) @ rng.integers(-5, 6, (r, shape[1]))
        assert rank_mod(M) == np.linalg.matrix_rank(M.astype(float))


def test_mixed_polynomial_prediction_below_bound_and_support_only():
    pred = predict_rank("polynomial:0,1,1", 4, 2)
    assert (pred.rank, pred.upper_bound, pred.kind) == (9, 10, "exact")
    # rank depends only on which coefficients are nonzero
    assert predict_rank("polynomial:0,2.5,-7", 4, 3).rank == predict_rank("polynomial:0,1,1", 4, 3).rank == 12
    assert predict_rank("polynomial:0,0,1,1", 4, 6).rank == 29  # z² + z³ one below its bound 30
    big = predict_rank("polynomial:0,0,1,1", 10, 30, modular=False)
    assert big.kind == "bound" and big.rank == big.upper_bound


def test_prediction_capped_by_samples():
    pred = predict_rank("erf", 5, 4, n_samples=10)
    assert pred.rank == 10 and pred.population_rank == 24 and pred.capped
    assert predict_rank("erf", 5, 4, n_samples=10).admits(10) and not pred.admits(11)
    assert predict_rank("tanh", 2, 2, modular=None).label() == "6 observed"


def test_bad_input_raises_nearopt_error():
    with pytest.raises(no.NearoptError):
        predict_rank("quadratic", 0, 3)
    with pytest.raises(no.NearoptError):
        generic_polynomial_rank((), 3, 3)
    with pytest.raises(no.NearoptError):
        measure_rank(no.sample_teacher(2, 2, "erf"), np.zeros((5, 2)), n_samples=5)


# -- measurement ----------------------------------------------------------------


def test_quadratic_saturation_measured():
    rows = rank_sweep("quadratic", 4, range(1, 7), teachers=2)
    assert [min(r.ranks) for r in rows] == [max(r.ranks) for r in rows] == [4, 7, 9, 10, 10, 10]
    assert all(r.agrees and r.all_clear and not r.warnings for r in rows)
    assert all(r.smallest_gap > 1e8 for r in rows)


@pytest.mark.parametrize("act, n_i, n_h, rank", [("cubic", 3, 5, 10), ("monomial:4", 3, 4, 12), ("linear", 4, 6, 4)])
def test_monomial_degrees_measured(act, n_i, n_h, rank):
    m = measure_rank(no.sample_teacher(n_i, n_h, act, seed=1))
    assert m.rank == rank == m.prediction.rank and m.decision.clear and m.agrees


@pytest.mark.parametrize("p, n_i, n_h", [(4, 3, 5), (3, 5, 7)])
def test_defective_cases_measured(p, n_i, n_h):
    m = measure_rank(no.sample_teacher(n_i, n_h, f"monomial:{p}", seed=0))
    assert m.rank == monomial_rank(p, n_i, n_h) == min(n_h * n_i, {(4, 3): 15, (3, 5): 35}[(p, n_i)]) - 1
    assert m.decision.clear and m.decision.gap > 1e6


def test_mixed_z_plus_z2_measured_below_bound():
    m = measure_rank(no.sample_teacher(4, 3, "polynomial:0,1,1", seed=2))
    assert m.rank == 12 < m.prediction.upper_bound == 13 and m.decision.clear


def test_relu_loses_one_direction_per_unit():
    net = no.sample_teacher(4, 5, "relu", seed=0)
    m = measure_rank(net, n_samples=2000)
    assert m.rank == net.n_params - 5 and m.decision.clear and m.agrees and not m.warnings


def test_relu_thin_wedge_is_warned():
    # teacher 1 at (2, 3) has two nearly parallel units: 200 samples leave their wedge almost empty
    m = measure_rank(no.sample_teacher(2, 3, "relu", seed=1), n_samples=200)
    assert m.rank == 5 and any("separate the half-spaces" in w for w in m.warnings)
    assert measure_rank(no.sample_teacher(2, 3, "relu", seed=1), n_samples=4000).rank == 6


def test_erf_full_rank_with_tiny_eigenvalues():
    m = measure_rank(no.sample_teacher(3, 8, "erf", seed=0))
    assert m.rank == m.n_params == 32 and m.decision.clear and m.agrees
    assert m.smallest_nonzero_eigenvalue < 1e-5 * m.eigenvalues[0]  # tiny but resolved


def test_erf_float64_limit_is_flagged_not_silent():
    m = measure_rank(no.sample_teacher(1, 8, "erf", seed=0))
    assert m.rank < m.n_params
    assert not m.decision.clear and not m.clear and any("no clear gap" in w for w in m.warnings)
    # teacher 3 at (1, 4): the cut sits far from the tolerance, but the gap is only ~7e4
    # (a smooth decay into round-off): flagged by the gap criterion, not reported as clear
    m = measure_rank(no.sample_teacher(1, 4, "erf", seed=3), oversample=6)
    assert m.rank == 7 and m.decision.margin >= CLEAR_MARGIN and not m.decision.clear and not m.clear  # one meaning of clear
    assert any("gap at the cut is only" in w for w in m.warnings)


def test_samples_cap_is_warned_and_rank_grows_with_n():
    net = no.sample_teacher(5, 4, "erf", seed=0)
    ms = rank_vs_samples(net, [10, 20, 200])
    assert [m.rank for m in ms] == [10, 20, 24]
    assert any("capped at N" in w for w in ms[0].warnings) and not ms[2].warnings
    assert default_samples(net.n_params) >= 4 * net.n_params


def test_measurement_is_deterministic_and_serialisable():
    net = no.sample_teacher(3, 4, "cubic", seed=5)
    a, b = measure_rank(net, data_seed=3), measure_rank(net, data_seed=3)
    assert np.array_equal(a.singular_values, b.singular_values)
    d = json.loads(to_json(a.to_dict()))
    assert d["rank"] == 10 and d["predicted"]["kind"] == "exact" and len(d["singular_values"]) == 16


# -- CLI ------------------------------------------------------------------------


def test_cli_table_and_json(capsys):
    assert main(["rank", "-a", "quadratic", "--ni", "4", "--nh", "1:5", "--teachers", "2"]) == 0
    out = capsys.readouterr().out
    assert "saturates at N_h = 4" in out and "5 of 5 rows agree" in out and "MISMATCH" not in out
    assert main(["rank", "-a", "cubic", "--ni", "3", "--nh", "2,5", "--teachers", "1", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["N_h"], r["rank_min"], r["predicted"]["rank"], r["P"]) for r in rows] == [(2, 6, 6, 8), (5, 10, 10, 20)]


def test_cli_samples_sweep_warns(capsys):
    assert main(["rank", "-a", "erf", "--ni", "5", "--nh", "4", "--samples-sweep", "10,100", "--teachers", "1"]) == 0
    out = capsys.readouterr().out
    assert "capped at N" in out and "2 of 2 rows agree" in out


@pytest.mark.parametrize(
    "argv",
    [
        ["rank", "-a", "cubic", "--ni", "0:3", "--nh", "2"],
        ["rank", "-a", "cubic", "--ni", "3", "--nh", "x"],
        ["rank", "-a", "nope", "--ni", "3", "--nh", "2"],
        ["rank", "-a", "cubic", "--ni", "3,4", "--nh", "2", "--samples-sweep", "10"],
    ],
)
def test_cli_bad_input_one_line(capsys, argv):
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err


# -- experiment -----------------------------------------------------------------


def test_experiment_small_config(tmp_path):
    from nearopt.experiments import get_experiment, run_serial

    exp = get_experiment("rank")
    cfg = exp.config(
        "quick",
        {
            "max_nh": 4,
            "quadratic_ni": 3,
            "cubic_ni": 2,
            "relu_sizes": [[3, 2]],
            "relu_samples": 500,
            "defective": [[4, 3, 5]],
            "mixed": ["polynomial:0,1,1"],
            "mixed_ni": 3,
            "generic_ni": [3],
            "generic_nh": [2, 4],
            "limit_nh": [8],
            "pooled_size": [3, 3],
            "pooled_teachers": 2,
        },
    )
    res = run_serial(exp, cfg, tmp_path)
    assert res.passed, [c for c in res.checks if not c.passed]
    for f in res.figures:
        assert f.exists() and f.with_suffix(".pdf").exists()
    rows = json.loads((tmp_path / "rank_table.json").read_text())
    assert any(r["group"] == "defective" and r["N_h"] == 5 and r["rank_max"] == 14 for r in rows)
