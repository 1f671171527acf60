"""Closed-form linear spectra against the general Hessians, and the linear-spectrum experiment."""

import numpy as np
import pytest
from scipy import stats

import nearopt as no
from nearopt.errors import NearoptError
from nearopt.theory.linear import (
    linear_batch_spectrum,
    linear_batch_trace_moments,
    linear_gram,
    linear_jacobian_factor,
    linear_population_hessian,
    linear_population_spectrum,
    pooled_linear_eigenvalues,
    simulate_linear_spectrum,
    smallest_nonzero_edge,
)


@pytest.mark.parametrize("ni,nh", [(4, 6), (6, 3)])
def test_batch_closed_form_matches_gauss_newton_and_autodiff(ni, nh):
    net = no.sample_teacher(ni, nh, "linear", seed=3)
    X = no.sample_inputs(40, ni, seed=1)
    closed = linear_batch_spectrum(net, X)
    gn = np.linalg.eigvalsh(no.gauss_newton(net, X))
    ad = np.linalg.eigvalsh(no.loss_hessian(net, X))
    np.testing.assert_allclose(closed.eigenvalues, gn, atol=1e-12)
    np.testing.assert_allclose(closed.eigenvalues, ad, atol=1e-12)
    assert closed.rank.rank == no.batch_spectrum(net, X).rank.rank == ni


def test_batch_rank_is_min_ni_n():
    net = no.sample_teacher(6, 4, "linear", seed=0)
    X = no.sample_inputs(3, 6, seed=0)
    sp = linear_batch_spectrum(net, X)
    assert sp.rank.rank == 3 and sp.rank.clear
    np.testing.assert_allclose(sp.eigenvalues, no.batch_spectrum(net, X).eigenvalues, atol=1e-12)


def test_population_closed_form():
    net = no.sample_teacher(5, 7, "linear", seed=2)
    sp = linear_population_spectrum(net)
    s = float(np.sum(net.W2**2))
    P = net.n_params
    # P - N_i exact zeros, then s + spec(W1^T W1)
    assert np.all(sp.eigenvalues[: P - 5] == 0.0) and sp.rank.rank == 5
    np.testing.assert_allclose(sp.nonzero, s + np.linalg.eigvalsh(net.W1.T @ net.W1), rtol=1e-13)
    np.testing.assert_allclose(np.linalg.eigvalsh(linear_population_hessian(net)), sp.eigenvalues, atol=1e-13)
    B = linear_jacobian_factor(net)
    np.testing.assert_allclose(B.T @ B, linear_gram(net), atol=1e-14)
    x = np.random.default_rng(0).standard_normal(5)
    np.testing.assert_allclose(B @ x, no.jacobian(net, x[None, :]).numpy()[0], atol=1e-14)  # J(x) = B x


def test_population_is_large_batch_limit():
    net = no.sample_teacher(4, 5, "linear", seed=4)
    X = no.sample_inputs(100_000, 4, seed=1)
    pop, batch = linear_population_spectrum(net), linear_batch_spectrum(net, X)
    np.testing.assert_allclose(batch.nonzero, pop.nonzero, rtol=0.03)


@pytest.mark.parametrize("method", ["dense", "structured", "factor"])
def test_population_curvature_matches_linear_closed_form(method):
    net = no.sample_teacher(6, 4, "linear", seed=1)
    closed = linear_population_spectrum(net)
    spec = no.PopulationHessian(net).spectrum(method)
    np.testing.assert_allclose(spec.eigenvalues, closed.eigenvalues, rtol=1e-12, atol=1e-13)
    assert spec.rank.rank == closed.rank.rank == net.n_inputs


def test_lower_edge_and_q_greater_than_one():
    net = no.sample_teacher(12, 4, "linear", seed=0)  # q = 3: eight eigenvalues equal s exactly
    sp = linear_population_spectrum(net)
    s = sp.extra["s"]
    assert np.sum(sp.nonzero == s) == 8 and sp.smallest_nonzero == smallest_nonzero_edge(12, 4, s)
    assert smallest_nonzero_edge(10, 40, 0.5) == pytest.approx(0.5 + 40 / 10 * 0.25)


def test_trace_moments_exact():
    net = no.sample_teacher(3, 4, "linear", seed=1)
    A = linear_gram(net)
    m1, m2 = linear_batch_trace_moments(net, 6)
    assert m1 == pytest.approx(np.trace(A))
    assert m2 == pytest.approx(np.trace(A @ A) * (1 + 1 / 6) + np.trace(A) ** 2 / 6)
    sq = [np.sum(linear_batch_spectrum(net, no.sample_inputs(6, 3, seed=k)).eigenvalues ** 2) for k in range(3000)]
    assert abs(np.mean(sq) - m2) < 4 * np.std(sq) / np.sqrt(len(sq))


def test_pooled_eigenvalues_chunks_and_seeds():
    e, s, r = pooled_linear_eigenvalues(5, 3, 6, seed=7)
    e2, s2, _ = pooled_linear_eigenvalues(5, 3, 4, seed=7, start=2)
    np.testing.assert_array_equal(e[2:], e2)
    np.testing.assert_array_equal(s[2:], s2)
    assert np.all(r == 5) and e.shape == (6, 5)
    eb, _, rb = pooled_linear_eigenvalues(5, 3, 2, seed=0, samples=2)
    assert eb.shape == (2, 2) and np.all(rb == 2)


@pytest.mark.parametrize("ni,nh,N", [(6, 12, None), (12, 4, None), (6, 12, 8)])
def test_simulation_matches_pooled_hessians(ni, nh, N):
    e, s, _ = pooled_linear_eigenvalues(ni, nh, 400, seed=0, samples=N)
    sim, s_sim = simulate_linear_spectrum(ni, nh, 400, seed=1, samples=N)
    assert sim.shape == e.shape
    # one eigenvalue per teacher keeps the samples independent; several quantiles covered
    for j in (0, e.shape[1] // 2, -1):
        assert stats.ks_2samp(e[:, j], sim[:, j]).pvalue > 1e-3
    assert stats.ks_2samp(s, s_sim).pvalue > 1e-3
    np.testing.assert_array_equal(sim, simulate_linear_spectrum(ni, nh, 400, seed=1, samples=N)[0])


def test_non_linear_activation_rejected():
    with pytest.raises(NearoptError):
        linear_population_spectrum(no.sample_teacher(3, 2, "erf", seed=0))
    with pytest.raises(NearoptError):
        linear_batch_spectrum(no.sample_teacher(3, 2, "linear", seed=0), np.zeros((4, 2)))


def test_experiment_quick_small(tmp_path):
    from nearopt.experiments import get_experiment, run_serial

    exp = get_experiment("linear-spectrum")
    # two sizes per ladder; the small ones cheap enough for 2000 teachers (noise below their finite-size KS)
    cfg = exp.config("quick", {"sizes": [[10, 20], [160, 320], [30, 10], [480, 160]], "teachers": 50, "small_size_factor": 40, "chunk": 500, "batch_samples": [5, 200]})
    res = run_serial(exp, cfg, tmp_path)
    failed = [c.name for c in res.checks if not c.passed]
    assert not failed, failed
    for fig in res.figures:
        assert fig.exists() and fig.with_suffix(".pdf").exists()
    assert (tmp_path / "linear_spectrum.json").exists() and (tmp_path / "linear_spectrum_eigenvalues.npz").exists()
    with pytest.raises(NearoptError):
        exp.cells(exp.config("quick", {"teachers": 2}))
