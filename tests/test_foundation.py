"""Model, activations and batch Hessians at the optimum."""

import subprocess
import sys

import numpy as np
import pytest
import torch

import nearopt as no
from nearopt import curvature as empirical
from nearopt.curvature import batch as batch_mod
from nearopt.errors import NearoptError
from nearopt.model.activations import CustomActivation

ACTS = ["linear", "quadratic", "cubic", "monomial:4", "polynomial:0.5,1,-0.3", "erf", "erf:unit", "tanh", "relu"]


def _fd_loss_hessian(teacher, X, theta, h=1e-4):
    """Central finite differences of the batch loss, independent of the package's Hessians."""
    y = teacher.forward(X)

    def loss(th):
        return 0.5 * np.mean((teacher.with_parameters(th).forward(X) - y) ** 2)

    P = theta.size
    H = np.zeros((P, P))
    E = np.eye(P) * h
    for i in range(P):
        for j in range(i, P):
            H[i, j] = H[j, i] = (
                loss(theta + E[i] + E[j]) - loss(theta + E[i] - E[j]) - loss(theta - E[i] + E[j]) + loss(theta - E[i] - E[j])
            ) / (4 * h * h)
    return H


@pytest.mark.parametrize("act", ACTS)
def test_derivative_matches_autograd(act):
    g = no.get_activation(act)
    z = torch.linspace(-3, 3, 101, dtype=torch.float64)
    z = z[z != 0]  # relu is not differentiable at 0
    auto = no.Activation.derivative(g, z)  # the autograd default of the base class
    assert torch.allclose(g.derivative(z), auto, rtol=1e-12, atol=1e-12)


def test_activation_registry_and_errors():
    assert no.get_activation("monomial:2") == no.get_activation("quadratic")
    assert np.allclose(no.get_activation("polynomial:0,1,1").polynomial_coefficients, [0, 1, 1])
    assert no.get_activation("erf").numpy(np.array([1.0]))[0] == pytest.approx(0.6826894921370859)  # erf(1/sqrt 2)
    assert no.get_activation("erf:unit").numpy(np.array([1.0]))[0] == pytest.approx(0.8427007929497149)
    for bad in ["nope", "monomial", "monomial:x", "monomial:0", "polynomial:a,b", "linear:3", "erf:what", ""]:
        with pytest.raises(NearoptError):
            no.get_activation(bad)


def test_register_custom_activation():
    no.register_activation("softplus_test", CustomActivation("softplus_test", torch.nn.functional.softplus), overwrite=True)
    net = no.sample_teacher(3, 2, "softplus_test", seed=1)
    X = no.sample_inputs(200, 3, seed=2)
    H = no.gauss_newton(net, X)
    Hauto = no.loss_hessian(net, X)
    assert np.allclose(H, Hauto, rtol=1e-10, atol=1e-12)
    with pytest.raises(NearoptError):
        no.register_activation("softplus_test", CustomActivation("x", torch.tanh))


@pytest.mark.parametrize("act", ["linear", "quadratic", "erf", "tanh", "relu"])
def test_autodiff_equals_gauss_newton_at_optimum(act):
    net = no.sample_teacher(4, 3, act, seed=3)
    X = no.sample_inputs(500, 4, seed=4)
    G = no.gauss_newton(net, X)
    H = no.loss_hessian(net, X, chunk_size=97)
    assert np.allclose(H, H.T, atol=1e-14)
    assert np.linalg.norm(H - G) <= 1e-10 * np.linalg.norm(G)


def test_hand_computed_linear_hessian():
    # f = v w x with N_i = N_h = 1: J_n = (v x_n, w x_n), H = mean(x^2) [[v^2, vw], [vw, w^2]].
    net = no.TwoLayerNet(np.array([[0.7]]), np.array([[-1.3]]), "linear")
    X = np.array([[1.0], [-2.0], [0.5]])
    m2 = np.mean(X[:, 0] ** 2)
    w, v = 0.7, -1.3
    expected = m2 * np.array([[v * v, v * w], [v * w, w * w]])
    assert np.allclose(no.gauss_newton(net, X), expected, rtol=1e-14)
    assert np.allclose(no.loss_hessian(net, X), expected, rtol=1e-13)


@pytest.mark.parametrize("act", ["quadratic", "erf"])
def test_hessians_match_finite_differences(act):
    net = no.sample_teacher(2, 2, act, seed=5)
    X = no.sample_inputs(50, 2, seed=6)
    fd = _fd_loss_hessian(net, X, net.parameters())
    assert np.allclose(no.gauss_newton(net, X), fd, atol=1e-6)
    # away from the optimum the full Hessian (not Gauss-Newton) is what differences see
    theta = net.parameters() + 0.3 * np.random.default_rng(0).standard_normal(net.n_params)
    fd_off = _fd_loss_hessian(net, X, theta)
    assert np.allclose(no.loss_hessian(net, X, student=theta), fd_off, atol=1e-6)


def test_functional_term_vanishes_only_at_optimum():
    net = no.sample_teacher(3, 4, "tanh", seed=7)
    X = no.sample_inputs(300, 3, seed=8)
    at_opt = no.curvature.functional_hessian(net, X, net.parameters())
    assert np.abs(at_opt).max() < 1e-13
    theta = net.parameters() + 0.1 * np.random.default_rng(1).standard_normal(net.n_params)
    off = no.curvature.functional_hessian(net, X, theta)
    assert np.abs(off).max() > 1e-3


def test_chunking_and_tsqr_agree():
    net = no.sample_teacher(5, 4, "erf", seed=9)
    X = no.sample_inputs(333, 5, seed=10)
    G = no.gauss_newton(net, X)
    assert np.allclose(no.gauss_newton(net, X, chunk_size=7), G, rtol=1e-12, atol=1e-15)
    R = no.curvature.jacobian_r_factor(net, X, chunk_size=50)
    assert R.shape == (net.n_params, net.n_params)
    assert np.allclose(R.T @ R / 333, G, rtol=1e-10, atol=1e-14)
    J = no.jacobian(net, X).numpy()
    assert J.shape == (333, net.n_params)
    assert np.allclose(J.T @ J / 333, G, rtol=1e-12, atol=1e-15)


def test_r_factor_when_fewer_samples_than_parameters():
    net = no.sample_teacher(6, 5, "erf", seed=11)
    X = no.sample_inputs(9, 6, seed=12)
    R = no.curvature.jacobian_r_factor(net, X, chunk_size=4)
    assert R.shape == (9, net.n_params)
    spec = no.batch_spectrum(net, X)
    assert spec.rank.rank == 9  # N caps the rank
    assert np.allclose(np.sort(np.linalg.eigvalsh(no.gauss_newton(net, X))), spec.eigenvalues, atol=1e-12)


@pytest.mark.parametrize("n_samples", [4, 50])
def test_linear_rank_is_min_ni_n(n_samples):
    net = no.sample_teacher(10, 20, "linear", seed=0)
    spec = no.batch_spectrum(net, no.sample_inputs(n_samples, 10, seed=1))
    assert spec.rank.rank == min(10, n_samples)
    assert spec.rank.clear
    assert spec.eigenvalues.size == net.n_params
    assert np.all(np.diff(spec.eigenvalues) >= 0)


@pytest.mark.parametrize("nh,expected", [(1, 5), (2, 9), (4, 14), (5, 15), (8, 15)])
def test_quadratic_rank_matches_theory(nh, expected):
    # docs/theory.md §4.1: N_h N_i - N_h(N_h-1)/2 for N_h <= N_i, saturating at N_i(N_i+1)/2
    net = no.sample_teacher(5, nh, "quadratic", seed=nh)
    spec = no.batch_spectrum(net, no.sample_inputs(2000, 5, seed=2))
    assert spec.rank.rank == expected
    assert spec.rank.clear


def test_autodiff_and_gauss_newton_spectra_agree():
    net = no.sample_teacher(4, 6, "erf", seed=13)
    X = no.sample_inputs(800, 4, seed=14)
    a = no.batch_spectrum(net, X, method="autodiff")
    b = no.batch_spectrum(net, X, method="jacobian-svd")
    c = no.batch_spectrum(net, X, method="gauss-newton")
    assert c.rank.rank == net.n_params and np.allclose(c.eigenvalues, b.eigenvalues, rtol=1e-8, atol=1e-13)
    assert a.rank.rank == b.rank.rank == net.n_params
    assert np.allclose(a.eigenvalues, b.eigenvalues, rtol=1e-8, atol=1e-13)


def test_seeds_repeat_bit_for_bit():
    a = no.sample_teacher(7, 3, "erf", seed=42)
    b = no.sample_teacher(7, 3, "erf", seed=42)
    assert np.array_equal(a.W1, b.W1) and np.array_equal(a.W2, b.W2)
    Xa, Xb = no.sample_inputs(100, 7, seed=3), no.sample_inputs(100, 7, seed=3)
    assert np.array_equal(Xa, Xb)
    assert np.array_equal(no.batch_spectrum(a, Xa).eigenvalues, no.batch_spectrum(b, Xb).eigenvalues)
    # teacher and input streams differ even for equal seeds
    assert not np.allclose(no.sample_inputs(1, 7, seed=42)[0], a.W1[0] * np.sqrt(7))


def test_teacher_variances():
    net = no.sample_teacher(400, 300, seed=0)
    assert np.var(net.W1) == pytest.approx(1 / 400, rel=0.02)
    assert np.var(net.W2) == pytest.approx(1 / 300, rel=0.25)
    net = no.sample_teacher(400, 300, seed=0, sigma1=2.0, sigma2=0.5)
    assert np.std(net.W1) == pytest.approx(2.0, rel=0.02)


@pytest.mark.parametrize("dist", ["gaussian", "uniform", "rademacher", "student-t"])
def test_input_distributions_have_unit_variance(dist):
    X = no.sample_inputs(20000, 5, seed=0, distribution=dist)
    assert np.mean(X) == pytest.approx(0, abs=0.03)
    assert np.var(X) == pytest.approx(1, rel=0.05)


def test_model_validation():
    with pytest.raises(NearoptError):
        no.sample_teacher(0, 3)
    with pytest.raises(NearoptError):
        no.TwoLayerNet(np.ones((2, 3)), np.ones(3), "linear")
    with pytest.raises(NearoptError):
        no.TwoLayerNet(np.full((2, 3), np.nan), np.ones(2), "linear")
    net = no.sample_teacher(3, 2, "erf")
    with pytest.raises(NearoptError):
        no.gauss_newton(net, np.ones((5, 4)))
    with pytest.raises(NearoptError):
        no.sample_inputs(0, 3)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised when CUDA is absent")
def test_cuda_request_without_gpu_is_a_clear_error():
    with pytest.raises(NearoptError, match="no CUDA"):
        empirical.resolve_device("cuda")


def test_decide_rank_reports_gap_and_flags_unclear():
    d = no.policy.decide_rank(np.array([1.0, 0.5, 1e-20]), 4)
    assert d.rank == 2 and d.clear and d.gap == pytest.approx(0.5 / 1e-20)
    fuzzy = no.policy.decide_rank(np.array([1.0, 1e-15, 5e-16]), 3, rtol=7e-16)
    assert not fuzzy.clear
    full = no.policy.decide_rank(np.array([2.0, 1.0]), 2)
    assert full.rank == 2 and np.isinf(full.gap)


def test_rank_from_eigenvalues_when_no_svd_is_affordable(monkeypatch):
    monkeypatch.setattr(batch_mod, "SVD_MAX_PARAMS", 10)
    net = no.sample_teacher(6, 8, "linear", seed=0)
    spec = no.batch_spectrum(net, no.sample_inputs(400, 6, seed=1))
    assert spec.extra["batch_method"] == "gauss-newton" and spec.method == "dense" and spec.extra["rank_source"] == "eigenvalues of the dense matrix"
    assert spec.rank.rank == 6 and spec.rank.clear


def test_import_and_version_stay_light():
    """``import nearopt`` and ``nearopt --version`` load no numerical stack (benchmarks/bench_import.py times them)."""
    probe = "import sys, nearopt; assert 'torch' not in sys.modules and 'scipy' not in sys.modules; nearopt.Problem; assert 'torch' in sys.modules"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True).returncode == 0
    version = "import sys, io, contextlib; from nearopt.cli import main\nbuf = io.StringIO()\nwith contextlib.redirect_stdout(buf): code = main(['--version'])\nassert code == 0 and buf.getvalue().startswith('nearopt ') and 'torch' not in sys.modules"
    out = subprocess.run([sys.executable, "-c", version], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert sorted(no.__all__) == sorted(set(no.__all__)) and all(hasattr(no, name) for name in no.__all__)
