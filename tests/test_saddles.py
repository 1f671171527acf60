"""Saddles on purpose: the Newton limit, the trivial critical point f = 0 labelled and avoided (erf, small networks)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _cli import cli

from nearopt.cli import main
from nearopt.errors import NearoptError
from nearopt.landscape.critical import TRIVIAL_NOTE, committee_start, committee_teacher, find_critical_point, is_trivial
from nearopt.model.network import TwoLayerNet
from nearopt.model.problem import Problem


def _pair(ni: int, M: int, K: int, seed: int) -> tuple[TwoLayerNet, TwoLayerNet]:
    """An erf teacher ``(M, ni)`` with ``W2 = 1`` and a student ``(K, ni)`` near ``theta = 0`` (entries ``~ 1e-2``)."""
    rng = np.random.default_rng(seed)
    T = TwoLayerNet(rng.normal(size=(M, ni)) / np.sqrt(ni), np.ones((1, M)), "erf")
    S = TwoLayerNet(1e-2 * rng.normal(size=(K, ni)), 1e-2 * rng.normal(size=(1, K)), "erf")
    return T, S


def _files(tmp_path, ni: int, M: int, K: int, seed: int) -> list[str]:
    T, S = _pair(ni, M, K, seed)
    T.save(tmp_path / "t.npz")
    S.save(tmp_path / "s.npz")
    return ["critical", "-a", "erf", "--teacher", str(tmp_path / "t.npz"), "--student", str(tmp_path / "s.npz"), "--descent", "newton", "--quiet"]


@pytest.mark.parametrize("option,value", [("--newton-iter", "0"), ("--newton-iter", "x"), ("--restarts", "0"), ("--restarts", "-1")])
def test_cli_options_are_validated_in_one_line(option, value):
    code, _, err = cli("critical", "-a", "erf", "--ni", "2", "--nh", "1", "--student-width", "2", "--descent", "newton", option, value)
    assert code == 2 and err.count("\n") == 1 and "error" in err and option in err


def test_library_refuses_a_bad_newton_limit():
    T, S = _pair(3, 1, 3, 0)
    with pytest.raises(NearoptError, match="newton_iter"):
        find_critical_point(Problem(T, student=S), descent="newton", newton_iter=0)


def test_cli_newton_limit_is_used():
    # from a random start of this width Newton needs more than 3 iterations; the limit stops it there
    code, out, err = cli("critical", "-a", "erf", "--ni", "3", "--nh", "2", "--student-width", "4", "--descent", "newton", "--newton-iter", 3, "--quiet")
    assert code == 1 and "--newton-iter (now 3)" in err
    d = json.loads(out)
    assert d["classification"] == "not converged" and d["newton_iterations"] == 3 and len(d["newton_gradient_norms"]) == 4


def test_newton_near_zero_ends_at_the_labelled_trivial_point(tmp_path, capsys):
    T, S = _pair(3, 1, 3, 0)
    cp = find_critical_point(Problem(T, student=S), descent="newton")
    assert cp.converged and cp.trivial and cp.classification == "saddle"
    assert cp.loss_relative == pytest.approx(0.5, rel=1e-12)  # L = E[f_t^2] / 2 at f = 0
    assert np.max(np.abs(cp.student.W2)) < 1e-12 and TRIVIAL_NOTE in cp.notes() and cp.restarts is None
    assert main(_files(tmp_path, 3, 1, 3, 0)) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["trivial"] is True and d["classification"] == "saddle" and TRIVIAL_NOTE in d["classification_note"] and "restarts" not in d


def test_trivial_is_a_vanishing_output_not_small_weights():
    T, S = _pair(3, 1, 3, 0)
    assert not is_trivial(Problem(T, student=S))  # entries 1e-2: output power 1e-8 relative
    assert is_trivial(Problem(T, student=TwoLayerNet(S.W1, np.zeros((1, 3)), "erf")))
    assert is_trivial(Problem(T, student=TwoLayerNet(np.zeros((3, 3)), S.W2, "erf")))  # erf(0) = 0
    assert not is_trivial(Problem(T, student=TwoLayerNet(np.zeros((3, 3)), S.W2, "erf", b1=np.ones(3))))


def test_avoid_trivial_restarts_to_a_non_trivial_saddle():
    T, S = _pair(2, 2, 2, 1)
    plain = find_critical_point(Problem(T, student=S), descent="newton")
    assert plain.trivial and plain.converged
    cp = find_critical_point(Problem(T, student=S), descent="newton", avoid_trivial=True, seed=1)
    assert cp.converged and not cp.trivial and cp.restarts == 1
    assert cp.classification == "saddle" and cp.index == 1 and cp.index == int(np.sum(cp.eigenvalues < -cp.tolerance))
    assert TRIVIAL_NOTE not in cp.notes()


def test_cli_avoid_trivial_reports_restarts_and_fails_honestly(tmp_path, capsys):
    assert main([*_files(tmp_path, 2, 2, 2, 1), "--avoid-trivial", "--student-seed", "1"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["trivial"] is False and d["restarts"] == 1 and d["classification"] == "saddle"
    # from this start every restart (seeds 4, 5, 6) ends at f = 0 again: exit 1 with one line after the JSON
    assert main([*_files(tmp_path, 3, 1, 3, 0), "--avoid-trivial", "--student-seed", "3", "--restarts", "3"]) == 1
    out, err = capsys.readouterr()
    d = json.loads(out)
    assert d["trivial"] is True and d["restarts"] == 3
    assert err.count("\n") == 1 and "trivial point f = 0" in err


def test_target_index_finds_the_symmetric_saddle_of_the_erf_committee():
    # K = M = 2 erf committee (second layer ones): the symmetric point, both units w = (a, a), is a saddle of index 1
    start = committee_start(committee_teacher(2, 2, "erf"), seed=0)
    cp = find_critical_point(start, target_index=1, max_steps=100)
    assert cp.converged and cp.descent == "eigenvector following" and cp.target_index == 1
    assert cp.classification == "saddle" and cp.index == 1 == int(np.sum(cp.eigenvalues < -cp.tolerance))
    W = cp.student.W1
    np.testing.assert_allclose(W, W[0, 0], atol=1e-4)  # the symmetric point (one flat direction within 1e-4)
    assert cp.eigenvalues[0] == pytest.approx(-0.0657, abs=1e-3) and not any("target index" in n for n in cp.notes())
    assert find_critical_point(start, target_index=0, max_steps=100).classification == "global minimum"


def test_target_index_mismatch_is_reported():
    # from this start the index-1 search ends at a degenerate point of index 0: said in the notes and by the CLI's exit status
    cp = find_critical_point(committee_start(committee_teacher(2, 2, "erf"), seed=1), target_index=1, max_steps=300)
    assert cp.converged and cp.index != 1 and f"ended at index {cp.index}, not the target index 1" in "; ".join(cp.notes())
    code, out, err = cli("critical", "--committee", 2, "-a", "erf", "--index", 1, "--student-seed", 1, "--max-steps", 300, "--quiet")
    assert code == 1 and json.loads(out)["target_index"] == 1 and err.strip().splitlines()[-1].startswith("nearopt critical: failed: the search ended at")


@pytest.mark.parametrize("extra", [["--index", "-1"], ["--index", "5"], ["--index", "1", "--descent", "newton"]])
def test_cli_index_is_validated_in_one_line(extra):
    code, _, err = cli("critical", "--committee", 2, "-a", "erf", "--quiet", *extra)
    assert code == 2 and err.count("\n") == 1 and "error" in err and "index" in err
