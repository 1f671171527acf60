"""The general statistics module, tested directly."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

import nearopt as no
from nearopt.experiments import stats


def test_ks_distance_matches_scipy_for_continuous_models():
    x = np.sort(np.random.default_rng(0).standard_normal(500))
    assert stats.ks_distance(x, sps.norm.cdf) == pytest.approx(sps.kstest(x, "norm").statistic, rel=1e-12)


def test_ks_distance_with_atoms_uses_left_limits():
    x = np.sort(np.r_[np.zeros(50), np.linspace(0.01, 1, 50)])  # half the mass is an atom at 0

    def cdf(u):
        return np.where(u >= 0, 0.5 + 0.5 * np.clip(u, 0, 1), 0.0)

    def left(u):
        return np.where(u > 0, 0.5 + 0.5 * np.clip(u, 0, 1), 0.0)

    assert stats.ks_distance(x, cdf, left) < 0.02
    assert stats.ks_distance(x, cdf) > 0.45  # a continuous-model comparison is penalised by the atom


def test_teacher_ecdf_and_grid():
    E = np.array([[0.0, 1.0, 2.0], [1.0, 1.0, 3.0]])
    grid = stats.quantile_grid(E, 5)
    C = stats.teacher_ecdf(E, np.array([0.5, 1.0, 3.0]))
    np.testing.assert_allclose(C, [[1 / 3, 2 / 3, 1], [0, 2 / 3, 1]])
    assert grid[0] == 0.0 and grid[-1] == 3.0 and np.all(np.diff(grid) > 0)


def test_permutation_test_detects_a_shift_and_not_a_null():
    rng = np.random.default_rng(1)
    same = stats.permutation_sup_test(rng.standard_normal((20, 30)), rng.standard_normal((20, 30)), seed=0, permutations=300)
    shifted = stats.permutation_sup_test(rng.standard_normal((20, 30)), 0.8 + rng.standard_normal((20, 30)), seed=0, permutations=300)
    assert same[1] > 0.01 and shifted[1] < 0.01 and shifted[0] > same[0]
    assert stats.permutation_sup_test(np.ones((3, 2)), np.ones((3, 2)), seed=0, permutations=50)[0] == 0.0
    # seeded: the same seed gives the same p-value
    a, b = rng.standard_normal((8, 5)), rng.standard_normal((8, 5))
    assert stats.permutation_sup_test(a, b, seed=3, permutations=100) == stats.permutation_sup_test(a, b, seed=3, permutations=100)


def test_permutation_test_agrees_with_scipy_on_small_inputs():
    rng = np.random.default_rng(4)
    E1, E2 = rng.standard_normal((6, 10)), 0.3 + rng.standard_normal((5, 10))
    stat, p = stats.permutation_sup_test(E1, E2, seed=0, permutations=4000)
    grid = stats.quantile_grid(np.r_[E1.ravel(), E2.ravel()])
    C1, C2 = stats.teacher_ecdf(E1, grid), stats.teacher_ecdf(E2, grid)
    ref = sps.permutation_test(
        (C1, C2),
        lambda a, b, axis: np.max(np.abs(a.mean(axis=axis) - b.mean(axis=axis)), axis=-1),
        permutation_type="independent", vectorized=True, n_resamples=4000, alternative="greater", rng=np.random.default_rng(1),
    )
    assert stat == pytest.approx(ref.statistic, rel=1e-12)
    assert abs(p - ref.pvalue) < 0.03  # two Monte-Carlo estimates of the same p-value (sd ~ 0.008)


def test_bootstrap_noise_scales_like_one_over_sqrt_teachers():
    rng = np.random.default_rng(2)
    small, large = rng.standard_normal((25, 40)), rng.standard_normal((400, 40))
    grid = np.linspace(-2, 2, 41)
    n_small = stats.bootstrap_sup_noise(small, None, grid, seed=0)
    n_large = stats.bootstrap_sup_noise(large, None, grid, seed=0)
    assert 2.5 < n_small / n_large < 6.5  # sqrt(400 / 25) = 4


def test_bad_input_is_one_clear_error():
    with pytest.raises(no.NearoptError):
        stats.ks_distance(np.array([]), sps.norm.cdf)
    with pytest.raises(no.NearoptError):
        stats.ks_distance(np.array([0.0, np.nan]), sps.norm.cdf)
