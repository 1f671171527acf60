"""Two-layer networks and their inputs (nearopt.model.network).

The parameter order, the forward pass against NumPy formulas written here, validation of
weights, seeds and sizes, the seeded teacher and input streams, and the moments of every
input distribution.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.special
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nearopt.errors import NearoptError
from nearopt.model.network import INPUT_DISTRIBUTIONS, TwoLayerNet, forward_torch, sample_inputs, sample_teacher

_fast = settings(max_examples=40, deadline=None)

ACTIVATIONS = {
    "linear": lambda z: z,
    "quadratic": lambda z: z**2,
    "erf": lambda z: scipy.special.erf(z / np.sqrt(2)),
    "erf:unit": scipy.special.erf,
    "tanh": np.tanh,
    "relu": lambda z: np.maximum(z, 0),
}


@_fast
@given(K=st.integers(1, 5), n=st.integers(1, 5), seed=st.integers(0, 1000), act=st.sampled_from(sorted(ACTIVATIONS)))
def test_parameters_are_W1_row_major_then_W2_and_round_trip(K, n, seed, act):
    rng = np.random.default_rng(seed)
    W1, W2 = rng.standard_normal((K, n)), rng.standard_normal(K)
    net = TwoLayerNet(W1, W2, act)
    assert (net.n_hidden, net.n_inputs, net.n_params) == (K, n, K * n + K) and net.W2.shape == (1, K)
    theta = net.parameters()
    assert theta.shape == (K * n + K,)
    for a in range(K):
        np.testing.assert_array_equal(theta[a * n:(a + 1) * n], W1[a])
    np.testing.assert_array_equal(theta[K * n:], W2)
    theta2 = rng.standard_normal(theta.size)
    other = net.with_parameters(theta2)
    np.testing.assert_array_equal(other.parameters(), theta2)
    assert other.activation == net.activation and other.W1.shape == W1.shape
    X = rng.standard_normal((7, n))
    np.testing.assert_allclose(net.forward(X), ACTIVATIONS[act](X @ W1.T) @ W2, rtol=1e-12, atol=1e-12)


def test_forward_torch_is_differentiable_in_the_parameters():
    """For a linear network ``f = v . (W1 x)``: ``df/dv_a = w_a . x`` and ``df/dW1[a] = v_a x``."""
    rng = np.random.default_rng(0)
    net = TwoLayerNet(rng.standard_normal((3, 4)), rng.standard_normal((1, 3)), "linear")
    x = torch.as_tensor(rng.standard_normal((1, 4)))
    theta = torch.as_tensor(net.parameters()).requires_grad_(True)
    forward_torch(theta, x, net.activation, 3).sum().backward()
    g = theta.grad.numpy()
    np.testing.assert_allclose(g[12:], net.W1 @ x.numpy()[0], rtol=1e-14)
    np.testing.assert_allclose(g[:12].reshape(3, 4), np.outer(net.W2.ravel(), x.numpy()[0]), rtol=1e-14)


def test_save_and_load_round_trip(tmp_path):
    net = sample_teacher(4, 3, "tanh", seed=2)
    net.save(tmp_path / "t.npz")
    back = TwoLayerNet.load(tmp_path / "t.npz", "tanh")
    np.testing.assert_array_equal(back.W1, net.W1)
    np.testing.assert_array_equal(back.W2, net.W2)
    assert back.activation == net.activation
    assert [p.name for p in tmp_path.iterdir()] == ["t.npz"]  # no temporary file left
    with pytest.raises(NearoptError, match=r"must end in \.npz"):
        net.save(tmp_path / "t.txt")


@pytest.mark.parametrize("W1, W2, match", [
    (np.ones(3), np.ones(1), r"W1 must have shape \(N_h, N_i\)"),
    (np.ones((0, 3)), np.ones(0), r"W1 must have shape"),
    (np.ones((2, 3)), np.ones(3), r"W2 must have shape \(M, 2\)"),
    (np.full((2, 3), np.nan), np.ones(2), "NaN or infinite"),
    (np.ones((2, 3)), np.array([1.0, np.inf]), "NaN or infinite"),
    (np.ones((2, 3)) * (1 + 0j), np.ones(2), "W1 must be real"),
    (np.array([["a"]]), np.ones(1), "W1 must be real numbers"),
])
def test_bad_weights_are_refused(W1, W2, match):
    with pytest.raises(NearoptError, match=match):
        TwoLayerNet(W1, W2, "erf")


def test_wrong_parameter_count_and_unknown_activation_are_refused():
    net = sample_teacher(3, 2, "erf")
    with pytest.raises(NearoptError, match="expected 8 parameters, got 7"):
        net.with_parameters(np.zeros(7))
    with pytest.raises(NearoptError):
        net.with_activation("nonsense")
    assert net.with_activation("tanh").activation.name == "tanh"


def test_teachers_are_seeded_and_scaled():
    a, b = sample_teacher(50, 40, "erf", seed=3), sample_teacher(50, 40, "erf", seed=3)
    np.testing.assert_array_equal(a.parameters(), b.parameters())
    assert not np.array_equal(a.W1, sample_teacher(50, 40, "erf", seed=4).W1)
    # default variances 1 / N_i and 1 / N_h (2000 and 40 draws: within 4 standard errors)
    assert abs(a.W1.var() * 50 - 1) < 4 * np.sqrt(2 / 2000)
    assert abs(np.mean(a.W2**2) * 40 - 1) < 4 * np.sqrt(2 / 40)
    big = sample_teacher(50, 40, "erf", seed=3, sigma1=2.0, sigma2=3.0)
    np.testing.assert_allclose(big.W1, a.W1 * 2.0 * np.sqrt(50))
    np.testing.assert_allclose(big.W2, a.W2 * 3.0 * np.sqrt(40))


@pytest.mark.parametrize("kwargs, match", [
    (dict(n_inputs=0, n_hidden=2), "N_i must be a positive integer"),
    (dict(n_inputs=2, n_hidden=1.5), "N_h must be a positive integer"),
    (dict(n_inputs=2, n_hidden=2, sigma1=0.0), "sigma1 must be a finite number > 0"),
    (dict(n_inputs=2, n_hidden=2, sigma2=np.nan), "sigma2 must be a finite number > 0"),
    (dict(n_inputs=2, n_hidden=2, seed=-1), "seed must be a non-negative integer"),
    (dict(n_inputs=2, n_hidden=2, seed=1.5), "seed must be a non-negative integer"),
    (dict(n_inputs=2, n_hidden=2, seed=True), "seed must be a non-negative integer"),
])
def test_bad_teacher_arguments_are_refused(kwargs, match):
    with pytest.raises(NearoptError, match=match):
        sample_teacher(**kwargs)


@pytest.mark.parametrize("distribution", INPUT_DISTRIBUTIONS)
def test_every_input_distribution_has_zero_mean_and_unit_variance(distribution):
    X = sample_inputs(20_000, 3, seed=1, distribution=distribution)
    assert X.shape == (20_000, 3)
    np.testing.assert_array_equal(X, sample_inputs(20_000, 3, seed=1, distribution=distribution))
    assert not np.array_equal(X, sample_inputs(20_000, 3, seed=2, distribution=distribution))
    assert np.abs(X.mean(axis=0)).max() < 0.04  # 5 standard errors of 1 / sqrt(20000)
    assert np.abs(X.var(axis=0) - 1).max() < 0.1
    if distribution == "rademacher":
        assert set(np.unique(X)) == {-1.0, 1.0}
    if distribution == "uniform":
        assert np.abs(X).max() <= np.sqrt(3)


def test_teacher_and_input_streams_are_distinct():
    """The same seed draws teacher weights and inputs from different streams."""
    t = sample_teacher(4, 4, "linear", seed=5, sigma1=1.0, sigma2=1.0)
    X = sample_inputs(5, 4, seed=5)
    assert not np.any(np.isclose(X[:4], t.W1))


def test_a_covariance_factor_reuses_the_same_draws():
    L = np.array([[2.0, 0.0], [1.0, 0.5]])
    Z = sample_inputs(100, 2, seed=3)
    np.testing.assert_allclose(sample_inputs(100, 2, seed=3, factor=L), Z @ L.T, rtol=1e-15)
    np.testing.assert_array_equal(sample_inputs(100, 2, seed=3, factor=np.eye(2)), Z)


@pytest.mark.parametrize("kwargs, match", [
    (dict(distribution="cauchy"), "unknown input distribution 'cauchy'"),
    (dict(distribution="student-t", df=2.0), "df > 2"),
    (dict(distribution="uniform", factor=np.eye(3)), "needs Gaussian inputs"),
    (dict(factor=np.eye(2)), r"finite \(3, 3\) array"),
    (dict(factor=np.full((3, 3), np.nan)), r"finite \(3, 3\) array"),
    (dict(seed=-3), "seed must be"),
])
def test_bad_input_arguments_are_refused(kwargs, match):
    with pytest.raises(NearoptError, match=match):
        sample_inputs(10, 3, **kwargs)
    with pytest.raises(NearoptError, match="number of samples must be a positive integer"):
        sample_inputs(0, 3)
