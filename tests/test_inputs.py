"""Inputs beyond isotropic Gaussians: x ~ N(0, Sigma), spiked covariances, real data.

The population Hessian under a covariance is checked against an independent exact
route: the Hessian, by autodiff, of the closed-form population loss
``1/2 E[(f_theta - f_theta*)^2]`` written directly in the Gram entries
``w_a^T Sigma w_c`` (a polynomial in them for polynomial activations, the
arcsine kernel for erf). That route shares no code with the Stein-form moments,
the whitening transform or the structured reduction.
"""

from __future__ import annotations

import importlib.util
import json
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nearopt as no
from nearopt.cli import main
from nearopt.curvature.batch import BatchGaussNewton, batch_spectrum
from nearopt.curvature.compose import Congruence
from nearopt.curvature.population import PopulationHessian, population_hessian, population_spectrum
from nearopt.errors import NearoptError
from nearopt.model.datasets import load_inputs
from nearopt.model.problem import GaussianInputs, Problem, whiten

_fast = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------- independent population loss
def _poly_kernel(coef: np.ndarray, c11: torch.Tensor, c12: torch.Tensor, c22: torch.Tensor) -> torch.Tensor:
    """``E[p(u) p(v)]`` for ``(u, v) ~ N(0, [[c11, c12], [c12, c22]])``, ``p = sum_j coef_j z^j``.

    ``t^j = sum_m j!/(m! 2^m (j-2m)!) He_{j-2m}(t)``, so with ``u = s t``:
    ``p(u) = sum_k s^k A_k(s^2) He_k(t)`` and ``E = sum_k k! c12^k A_k(c11) A_k(c22)``:
    a polynomial in the three entries (differentiable everywhere, parallel units included).
    """
    deg = coef.size - 1

    def A(k: int, c: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(c)
        for j in range(k, deg + 1, 2):
            m = (j - k) // 2
            out = out + coef[j] * math.factorial(j) / (math.factorial(m) * 2**m * math.factorial(k)) * c**m
        return out

    return sum(math.factorial(k) * c12**k * A(k, c11) * A(k, c22) for k in range(deg + 1))


def _erf_kernel(c11, c12, c22):
    """``E[erf(u/sqrt 2) erf(v/sqrt 2)] = (2/pi) arcsin(c12 / sqrt((1 + c11)(1 + c22)))``."""
    return (2 / math.pi) * torch.asin(c12 / torch.sqrt((1 + c11) * (1 + c22)))


def autodiff_population_hessian(net: no.TwoLayerNet, Sigma: np.ndarray) -> np.ndarray:
    """Hessian ``(P, P)`` of the closed-form population loss at the teacher, by ``torch.func``."""
    act = net.activation
    if act.name == "erf":
        kernel = _erf_kernel
    else:
        coef = act.polynomial_coefficients
        assert coef is not None

        def kernel(c11, c12, c22):
            return _poly_kernel(coef, c11, c12, c22)

    S = torch.tensor(np.array(Sigma), dtype=torch.float64)
    n_h, n_i = net.W1.shape
    th_star = torch.as_tensor(net.parameters(), dtype=torch.float64)

    def phi(W, U):  # (a, c) -> E[g(w_a.x) g(u_c.x)]
        C = W @ S @ U.T
        return kernel(torch.diagonal(W @ S @ W.T)[:, None], C, torch.diagonal(U @ S @ U.T)[None, :])

    def loss(th):
        W, v = th[: n_h * n_i].reshape(n_h, n_i), th[n_h * n_i :]
        Ws, vs = th_star[: n_h * n_i].reshape(n_h, n_i), th_star[n_h * n_i :]
        return 0.5 * (v @ phi(W, W) @ v - 2 * v @ phi(W, Ws) @ vs + vs @ phi(Ws, Ws) @ vs)

    return torch.func.hessian(loss)(th_star).numpy()


def _random_cov(n: int, seed: int, rank: int | None = None) -> np.ndarray:
    A = np.random.default_rng(seed).standard_normal((n, rank or n + 2))
    return A @ A.T / A.shape[1]


LAWS = {
    "dense": lambda n: GaussianInputs(covariance=_random_cov(n, 4)),
    "singular": lambda n: GaussianInputs(covariance=_random_cov(n, 5, rank=n - 2)),
    "spiked": lambda n: GaussianInputs.spiked(n, [5.0, 2.0, -0.6], seed=3),
}


@pytest.mark.parametrize("law", sorted(LAWS))
@pytest.mark.parametrize("act", ["linear", "quadratic", "cubic", "polynomial:0.3,1,0.5,0.2", "erf"])
def test_population_hessian_under_covariance_matches_autodiff(act, law):
    net = no.sample_teacher(6, 3, act, seed=7)
    inputs = LAWS[law](6)
    H_ref = autodiff_population_hessian(net, inputs.covariance)
    curv = PopulationHessian(Problem(net, inputs=inputs))
    H = curv.to_dense()
    scale = np.abs(H_ref).max()
    assert np.abs(H - H_ref).max() <= 1e-10 * scale
    # the whitening route T H~ T^T, built from the isotropic Hessian of W1 L, is the same matrix
    white, L = whiten(curv.problem)
    H_white = Congruence(PopulationHessian(white), curv.problem, L).to_dense()
    assert np.abs(H_white - H_ref).max() <= 1e-10 * scale
    # structured spectrum (eigenspaces of Sigma) = dense spectrum
    eig = np.linalg.eigvalsh(H_ref)
    spec = curv.spectrum("structured")
    assert np.abs(spec.eigenvalues - eig).max() <= 1e-10 * eig[-1]


@pytest.mark.parametrize("act", ["erf", "tanh", "relu", "quadratic"])
@pytest.mark.parametrize("trained", ["both", "first", "second"])
def test_matrix_free_and_structured_routes_agree(act, trained):
    """Products through T, the dense matrix and the eigenspace reduction agree for every trained block."""
    net = no.sample_teacher(9, 3, act, seed=2)
    problem = Problem(net, inputs=GaussianInputs.spiked(9, [3.0, 0.5], seed=1), trained=trained)
    curv = PopulationHessian(problem)
    H = curv.to_dense()
    assert np.abs(curv @ np.eye(curv.n_params) - H).max() <= 1e-12 * np.abs(H).max()
    eig = np.linalg.eigvalsh(H)
    res = curv.spectrum("structured")
    assert np.abs(res.eigenvalues - eig).max() <= 1e-11 * eig[-1]
    if trained != "second":
        # spiked: the bulk (value 1) keeps N_i - k - N_h = 4 directions outside the reduced space
        assert res.extra["complement_scales"] == [[1.0, 9 - 2 - 3]]
        assert curv.spectrum().method == "structured"
    assert res.rank.rank == curv.spectrum("dense").rank.rank


def test_spiked_structured_route_scales_without_dense_matrix():
    """N_i = 2000, N_h = 4: the structured route diagonalises a 4*(4+2+1) block, not P = 8004."""
    net = no.sample_teacher(2000, 4, "erf", seed=0)
    law = GaussianInputs.spiked(2000, [10.0, 3.0], seed=0)
    spec = population_spectrum(net, inputs=law)
    assert spec.method == "structured" and spec.extra["reduced_size"] == 4 * 7
    assert spec.rank.rank == net.n_params  # erf: no continuous symmetry; the block (v v^T) o dd repeats 1996 times
    top = PopulationHessian(Problem(net, inputs=law)).spectrum(which="largest", k=3, method="lanczos").eigenvalues
    assert np.abs(top - spec.eigenvalues[-3:]).max() <= 1e-8 * spec.largest


def test_isotropic_law_is_unchanged():
    net = no.sample_teacher(8, 3, "tanh", seed=0)
    law = GaussianInputs(covariance=np.eye(8))
    assert law.isotropic and GaussianInputs(8).isotropic
    np.testing.assert_array_equal(population_hessian(net, law), population_hessian(net))
    assert np.array_equal(law.sample(5, seed=3), no.sample_inputs(5, 8, seed=3))


def test_sampling_has_the_covariance():
    law = GaussianInputs.spiked(5, [4.0], seed=2)
    X = law.sample(400_000, seed=1)
    assert np.abs(X.T @ X / len(X) - law.covariance).max() < 0.05
    assert np.array_equal(X, law.sample(400_000, seed=1))
    L = law.sqrt_factor()
    assert np.abs(L @ L.T - law.covariance).max() < 1e-14 * 5


@_fast
@given(n_i=st.integers(1, 6), n_h=st.integers(1, 4), n=st.integers(1, 12), seed=st.integers(0, 2**31 - 1),
       scale=st.sampled_from([1e-3, 1.0, 1e3]), dup=st.booleans())
def test_linear_batch_hessian_equals_population_with_its_second_moment(n_i, n_h, n, seed, scale, dup):
    """Linear networks: the batch Hessian on ANY X is the population Hessian with Sigma = X^T X / N."""
    rng = np.random.default_rng(seed)
    X = scale * rng.standard_normal((n, n_i)) + rng.integers(-3, 4, size=(1, n_i))  # not centred: second moment, not covariance
    if dup and n_i > 1:
        X[:, -1] = X[:, 0]  # a singular second moment
    net = no.sample_teacher(n_i, n_h, "linear", seed=seed % 1000)
    law = GaussianInputs.from_data(X)
    G = BatchGaussNewton(net, X).to_dense()
    curv = PopulationHessian(Problem(net, inputs=law))
    H = curv.to_dense()
    assert np.abs(G - H).max() <= 1e-12 * np.abs(G).max()
    # and the Jacobian factors agree: same spectrum from the population factor (B L)^T
    assert np.abs(curv.spectrum("factor").eigenvalues - np.linalg.eigvalsh(G)).max() <= 1e-11 * np.abs(G).max()


def test_nonlinear_batch_converges_to_covariance_population():
    """Sanity (Monte Carlo, loose): batches from N(0, Sigma) approach the population Hessian under Sigma."""
    net = no.sample_teacher(4, 2, "erf", seed=1)
    law = GaussianInputs.spiked(4, [3.0], seed=0)
    H = population_hessian(net, law)
    X = law.sample(200_000, seed=2)
    G = BatchGaussNewton(net, X).to_dense()
    assert np.linalg.norm(G - H) / np.linalg.norm(H) < 0.02


@pytest.mark.parametrize(
    "S, match",
    [
        (np.ones((3, 4)), "square"),
        (np.ones(3), "square"),
        (np.eye(4), "N_i = 3"),
        (np.array([[1.0, 0.5, 0], [0, 1, 0], [0, 0, 1]]), "not symmetric"),
        (np.diag([1.0, 1.0, -0.1]), "positive semi-definite"),
        (np.diag([1.0, np.nan, 1.0]), "NaN or infinite"),
        (np.diag([1.0, np.inf, 1.0]), "NaN or infinite"),
        (np.zeros((3, 3)), "zero"),
        ([["a", "b"], ["c", "d"]], "numeric"),
    ],
)
def test_bad_covariances_are_one_error(S, match):
    with pytest.raises(NearoptError, match=match):
        GaussianInputs(3, covariance=S)


def test_rounding_negative_eigenvalues_are_accepted():
    S = _random_cov(5, 1, rank=3)  # rank 3: eigenvalues ~ +-1e-16 below
    law = GaussianInputs(covariance=S)
    assert law.rank == 3 and law.eigenvalues.min() >= 0


def test_bad_spikes_and_mismatch():
    with pytest.raises(NearoptError, match="positive semi-definite"):
        GaussianInputs.spiked(4, [-2.0])
    with pytest.raises(NearoptError, match="shape"):
        GaussianInputs.spiked(4, [1.0, 2.0], directions=np.ones((3, 4)))
    with pytest.raises(NearoptError, match="dimension 4"):
        Problem(no.sample_teacher(5, 2, "erf"), inputs=GaussianInputs(4))


def test_spiked_nonorthogonal_directions():
    u = np.array([[1.0, 0, 0, 0], [1.0, 1.0, 0, 0]])
    law = GaussianInputs.spiked(4, [2.0, 1.0], directions=u)
    n = u / np.linalg.norm(u, axis=1, keepdims=True)
    S = np.eye(4) + 2.0 * np.outer(n[0], n[0]) + 1.0 * np.outer(n[1], n[1])
    assert np.abs(law.covariance - S).max() < 1e-14
    assert sum(e.multiplicity for e in law.eigenspaces()) == 4


# ---------------------------------------------------------------- data sets
needs_sklearn = pytest.mark.skipif(importlib.util.find_spec("sklearn") is None, reason="scikit-learn (the data extra) is not installed")


@needs_sklearn
def test_digits_inputs_standardised_and_projected():
    X = load_inputs("digits", n_inputs=16)
    assert X.shape == (1797, 16)
    assert np.abs(X.mean(0)).max() < 1e-12
    assert abs(np.trace(X.T @ X / len(X)) / 16 - 1) < 1e-12  # trace-normalised
    Xs = load_inputs("digits")
    assert np.abs(Xs.std(0) - 1).max() < 1e-12 and Xs.shape[1] == 61  # three constant pixels dropped
    with pytest.raises(NearoptError, match="at most"):
        load_inputs("digits", n_inputs=100)
    with pytest.raises(NearoptError, match="unknown data set"):
        load_inputs("mnist")


@needs_sklearn
def test_linear_identity_on_digits():
    X = load_inputs("digits", n_inputs=12)
    net = no.sample_teacher(12, 4, "linear", seed=0)
    G = BatchGaussNewton(net, X).to_dense()
    H = population_hessian(net, GaussianInputs.from_data(X))
    assert np.abs(G - H).max() <= 1e-12 * np.abs(G).max()


# ---------------------------------------------------------------- CLI
def test_cli_population_with_input_cov(tmp_path, capsys):
    S = _random_cov(6, 2)
    path = tmp_path / "S.npy"
    np.save(path, S)
    assert main(["spectrum", "--ni", "6", "--nh", "2", "--activation", "erf", "--population", "--input-cov", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    eig = np.linalg.eigvalsh(population_hessian(no.sample_teacher(6, 2, "erf", seed=0), GaussianInputs(covariance=S)))
    assert np.abs(np.array(out["eigenvalues"]) - eig).max() <= 1e-10 * eig[-1]
    assert main(["spectrum", "--ni", "6", "--nh", "2", "--activation", "erf", "--samples", "50", "--input-cov", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    X = GaussianInputs(covariance=S).sample(50, seed=0)
    ref = batch_spectrum(no.sample_teacher(6, 2, "erf", seed=0), X)
    assert np.abs(np.array(out["eigenvalues"]) - ref.eigenvalues).max() <= 1e-12 * ref.largest


def test_cli_bad_input_cov_is_one_line(tmp_path, capsys):
    path = tmp_path / "S.npy"
    np.save(path, np.diag([1.0, -1.0, 1.0]))
    assert main(["spectrum", "--ni", "3", "--nh", "2", "-a", "erf", "--population", "--input-cov", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "positive semi-definite" in err and len(err.splitlines()) == 1
    np.save(path, np.eye(4))
    assert main(["spectrum", "--ni", "3", "--nh", "2", "-a", "erf", "--population", "--input-cov", str(path)]) == 2
    assert "N_i = 3" in capsys.readouterr().err


@needs_sklearn
def test_cli_digits_inputs(capsys):
    assert main(["spectrum", "--ni", "8", "--nh", "2", "--activation", "linear", "--inputs", "digits", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["samples"] == 1797 and out["rank"] == 8  # linear: H = B Sigma B^T has rank N_i
