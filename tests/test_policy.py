"""The one rank and null-space policy: tolerances, clear cuts, and how many eigenvalues an answer takes as zero."""

from __future__ import annotations

import math

import numpy as np
import pytest

import nearopt as no
from nearopt.curvature import rank_measurement as measurement
from nearopt.errors import NearoptError
from nearopt.policy import EIGENVALUE_SAFETY, MIN_GAP, NullSpace, RankPolicy, eigenvalue_rtol

EPS = np.finfo(np.float64).eps


def test_one_min_gap_for_spectra_and_rank_measurements():
    assert measurement.MIN_GAP is MIN_GAP and RankPolicy().min_gap == MIN_GAP


def test_a_cut_with_margin_but_a_small_gap_is_not_clear_by_default():
    lam = np.concatenate([np.geomspace(1e-6, 1.0, 20), [1e-22]])  # an exact zero mode far below the kept values
    clear = RankPolicy().from_eigenvalues(lam)
    assert clear.rank == 20 and clear.clear
    smooth = np.geomspace(1e-15, 1.0, 40)  # a smooth decay: whatever the cut, the neighbours differ by a factor < 3
    d = RankPolicy().from_eigenvalues(smooth)
    assert d.gap < MIN_GAP and not d.clear
    assert RankPolicy(min_gap=1.0).from_eigenvalues(smooth).clear == (d.margin >= 10)


def test_relative_threshold_is_the_eigenvalue_tolerance():
    assert RankPolicy().relative_threshold(300) == pytest.approx(EIGENVALUE_SAFETY * 300 * EPS)
    assert RankPolicy().relative_threshold(300) == pytest.approx(eigenvalue_rtol(300) ** 2)
    assert RankPolicy(rtol=1e-3).relative_threshold(300) == pytest.approx(1e-6)


def test_null_space_by_the_policy_counts_what_lies_within_the_tolerance():
    lam = np.array([-3e-18, 2e-17, 1e-3, 0.5, 1.0])
    policy = RankPolicy()
    d = policy.from_eigenvalues(lam)
    ns = policy.null_space(lam, d)
    assert (ns.n_zero, ns.source, ns.clear) == (2, "rank policy", True)
    assert ns.threshold == d.eigenvalue_tolerance and ns.warning is None
    assert ns.mask(lam).tolist() == [True, True, False, False, False]


def test_an_unclear_policy_cut_says_why():
    lam = np.geomspace(1e-15, 1.0, 40)
    policy = RankPolicy()
    ns = policy.null_space(lam, policy.from_eigenvalues(lam))
    assert not ns.clear and "gap" in ns.note and "not clearly" in ns.warning


def test_a_known_rank_decides_the_null_space_and_is_checked_against_the_eigenvalues():
    policy = RankPolicy()
    genuine = np.array([3e-14, 1e-6, 1e-3, 1.0])  # full rank: 3e-14 lies above what eigh resolves at n = 4 (4 eps)
    d = policy.from_eigenvalues(genuine)
    assert d.rank == 3  # the tolerance alone (100 n eps) calls 3e-14 zero
    ns = policy.null_space(genuine, d, known=(4, "theory"))
    assert (ns.n_zero, ns.source, ns.clear) == (0, "predicted rank", True)
    assert "alone would give rank 3" in ns.note and math.isnan(ns.threshold)
    wrong = policy.null_space(genuine, d, known=(2, "theory"))  # drops 1e-6, far above the tolerance
    assert wrong.n_zero == 2 and not wrong.clear and "disagree" in wrong.note
    floor = policy.null_space(np.array([1e-30, 1e-6, 1.0]), policy.from_eigenvalues(np.array([1e-30, 1e-6, 1.0])), known=(3, "theory"))
    assert not floor.clear  # keeps a value at rounding
    with pytest.raises(NearoptError, match="outside"):
        policy.null_space(genuine, d, known=(5, "theory"))


def test_the_null_space_mask_takes_the_smallest_magnitudes():
    lam = np.array([-2.0, -1e-16, 1e-17, 3.0])
    assert NullSpace(2, "given", True).mask(lam).tolist() == [False, True, True, False]
    assert NullSpace(0, "structured", True).mask(lam).sum() == 0


def test_null_space_sources_are_a_closed_set():
    with pytest.raises(NearoptError, match="null-space source"):
        NullSpace(1, "detected", True)
    d = NullSpace(3, "rank policy", False, "why", 1e-9).to_dict()
    assert d == {"n_zero": 3, "zero_source": "rank policy", "zero_clear": False, "zero_note": "why", "zero_threshold": 1e-9}


def test_the_ritz_threshold_is_what_a_matrix_free_run_resolves():
    assert RankPolicy().ritz_threshold(100) == RankPolicy().ritz_threshold(10**7) == 1e-9
    assert RankPolicy(rtol=1e-5).ritz_threshold(100) == pytest.approx(1e-10)


def test_an_invertible_covariance_keeps_the_predicted_rank_on_every_route():
    """``H = T H~ T`` with ``T`` invertible: the matrix-free smallest end takes no genuine eigenvalue for a zero mode."""
    net = no.sample_teacher(3, 2, "erf", seed=0)
    H = no.PopulationHessian(no.Problem(net, inputs=no.GaussianInputs(covariance=1e10 * np.eye(3))))
    dense = H.spectrum("dense").eigenvalues
    low = H.spectrum("lanczos", which="smallest", k=2)
    assert low.null_space.n_zero == 0 and low.null_space.source == "predicted rank"
    np.testing.assert_allclose(low.eigenvalues, dense[:2], rtol=1e-3)
