"""Critical points of the exact population loss (nearopt.landscape.critical, nearopt critical, experiment committee)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nearopt.cli import main
from nearopt.errors import NearoptError
from nearopt.landscape.critical import (
    CLASSES,
    classify,
    committee_start,
    committee_teacher,
    distinct_points,
    find_critical_point,
    isotropy_multiplicities,
    loss_and_gradient,
    newton_polish,
    relu_committee_global_spectrum,
    symmetry_multiplicities,
)
from nearopt.model.network import TwoLayerNet
from nearopt.model.problem import Problem
from nearopt.spectra.grouping import eigenvalue_clusters

#: seed of a k = d = 6 committee start that gradient descent takes to the spurious minimum (found by the full scan)
SPURIOUS_SEED_K6 = 52
SPURIOUS_LOSS_K6 = 2.508058e-02


@pytest.mark.parametrize("k", [4, 5, 7])
def test_relu_committee_global_minimum_spectrum_closed_form_and_symmetry(k):
    T = committee_teacher(k)
    cp = classify(Problem(T, student=T, trained="first"))
    assert cp.classification == "global minimum" and cp.gradient_norm < 1e-14
    values, counts = relu_committee_global_spectrum(k)
    np.testing.assert_allclose(cp.eigenvalues, np.repeat(values, counts), rtol=0, atol=1e-13)
    c = 1 / (2 * np.pi)
    m = symmetry_multiplicities(k)
    got = dict(zip(np.round(values, 12), counts))
    assert got[round(0.25 - c, 12)] == m["[k-2,1,1]"] + m["standard"] == k * (k - 1) // 2
    assert got[round(0.25 + c, 12)] == m["[k-2,2]"]
    assert sorted(counts.tolist()) == sorted([1, 1, k - 1, k - 1, k * (k - 3) // 2, k * (k - 1) // 2])


def test_spurious_minimum_k6_found_and_strict():
    T = committee_teacher(6)
    cp = find_critical_point(committee_start(T, seed=SPURIOUS_SEED_K6), lr=0.5)
    assert cp.classification == "spurious local minimum"
    assert cp.loss == pytest.approx(SPURIOUS_LOSS_K6, rel=1e-6)
    assert cp.gradient_norm < 1e-14 and cp.converged
    assert cp.index == 0 and cp.zero_modes == 0 and cp.eigenvalues[0] > 1e-3
    # its isotropy Delta(S_5 x S_1) forces 12 distinct eigenvalues with multiplicities 1 x5, 4 x5, 5, 6
    assert sorted(eigenvalue_clusters(cp.eigenvalues)[1].tolist()) == isotropy_multiplicities(6) == [1] * 5 + [4] * 5 + [5, 6]
    # the same point with permuted units (a symmetry of the loss) is the same critical point up to symmetry
    perm = np.random.default_rng(0).permutation(6)
    other = classify(cp.problem.replace(student=TwoLayerNet(cp.student.W1[perm], np.ones((1, 6)), "relu")))
    assert other.classification == "spurious local minimum"
    assert [n for _, n in distinct_points([cp, other])] == [2]
    # Newton from a perturbation returns to it, quadratically, to machine precision
    W = cp.student.W1 + 1e-4 * np.random.default_rng(1).standard_normal((6, 6))
    end, hist = newton_polish(cp.problem.replace(student=TwoLayerNet(W, np.ones((1, 6)), "relu")))
    assert hist[-1] < 1e-14 and len(hist) <= 6
    assert np.max(np.abs(end.point.W1 - cp.student.W1)) < 1e-10
    # the global minimum is a different class at a lower loss
    assert distinct_points([cp, classify(Problem(T, student=T, trained="first"))])[0][0].classification == "global minimum"


def test_analytic_saddle_at_the_origin_erf():
    """``w = 0, v = 0`` for one erf unit: ``H = [[0, rho], [rho^T, 0]]``, ``rho = -u g'(0) E[g'(t.x)] t``."""
    rng = np.random.default_rng(3)
    t, u = rng.standard_normal(4), 0.8
    T = TwoLayerNet(t[None, :], [[u]], "erf")
    cp = classify(Problem(T, student=TwoLayerNet(np.zeros((1, 4)), [[0.0]], "erf")))
    tn = np.linalg.norm(t)
    lam = abs(u) * (2 / np.pi) * tn / np.sqrt(1 + tn**2)  # erf(z/sqrt 2): g'(0) = sqrt(2/pi), E g'(t.x) = sqrt(2/pi)/sqrt(1+|t|^2)
    assert cp.classification == "saddle" and cp.gradient_norm == 0.0
    assert (cp.index, cp.zero_modes, cp.positive) == (1, 3, 1)
    np.testing.assert_allclose(cp.eigenvalues[[0, -1]], [-lam, lam], rtol=1e-12)


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_newton_end_points_are_classified_consistently(seed):
    """From any start Newton ends at a point whose class agrees with its gradient, loss and eigenvalue signs."""
    T = TwoLayerNet(np.random.default_rng(seed).standard_normal((2, 3)) / np.sqrt(3), [[1.0, -0.7]], "erf")
    S = TwoLayerNet(np.random.default_rng(seed + 1).standard_normal((2, 3)) / np.sqrt(3), [[0.5, 0.5]], "erf")
    cp = find_critical_point(Problem(T, student=S), descent="newton")
    assert cp.classification in CLASSES
    assert cp.index + cp.zero_modes + cp.positive == cp.eigenvalues.size == 8
    _, g = loss_and_gradient(cp.problem)
    assert np.linalg.norm(g) == pytest.approx(cp.gradient_norm)
    if cp.classification == "not converged":
        assert cp.gradient_norm > cp.gradient_tolerance
    else:
        assert cp.gradient_norm <= cp.gradient_tolerance
        if cp.classification in ("saddle", "local maximum"):
            assert cp.index > 0 and np.min(cp.eigenvalues) < -cp.tolerance
        if cp.classification in ("spurious local minimum", "degenerate critical point"):
            assert cp.index == 0 and cp.loss_relative > 1e-12


def test_trust_region_descent_reaches_a_critical_point():
    T = committee_teacher(4)
    cp = find_critical_point(committee_start(T, seed=0), descent="trust")
    assert cp.descent == "trust-exact" and cp.classification == "global minimum" and cp.gradient_norm < 1e-13


def test_bad_input():
    with pytest.raises(NearoptError):
        committee_teacher(4, 3)
    with pytest.raises(NearoptError):
        find_critical_point(committee_start(committee_teacher(3), seed=0), descent="sideways")
    with pytest.raises(NearoptError):
        symmetry_multiplicities(3)


def test_cli_critical_writes_the_point(tmp_path, capsys):
    out = tmp_path / "p.npz"
    assert main(["critical", "--committee", "6", "--student-seed", str(SPURIOUS_SEED_K6), "--lr", "0.5", "--save-point", str(out)]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["classification"] == "spurious local minimum" and d["index"] == 0 and d["zero_modes"] == 0 and d["P"] == 36
    assert d["loss"] == pytest.approx(SPURIOUS_LOSS_K6, rel=1e-6) and d["gradient_norm"] < 1e-14 and d["trained"] == "first"
    z = np.load(out)
    assert z["W1"].shape == (6, 6) and str(z["classification"]) == "spurious local minimum"
    np.testing.assert_array_equal(z["W2"], np.ones((1, 6)))
    # the written point is a student file for `nearopt spectrum --student`
    assert main(["spectrum", "-a", "relu", "--teacher", str(_teacher_file(tmp_path)), "--student", str(out), "--trained", "first", "--population", "--json"]) == 0
    spec = json.loads(capsys.readouterr().out)
    assert spec["loss"] == pytest.approx(SPURIOUS_LOSS_K6, rel=1e-6)


def _teacher_file(tmp_path):
    path = tmp_path / "t.npz"
    committee_teacher(6).save(path)
    return path


def test_cli_critical_bad_input_is_one_line(tmp_path, capsys):
    assert main(["critical", "--committee", "4", "--nh", "3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error" in err
    assert main(["critical", "-a", "erf", "--ni", "3", "--nh", "2"]) == 2
    assert main(["critical", "--committee", "4", "--save-point", str(tmp_path / "p.txt")]) == 2
    capsys.readouterr()
