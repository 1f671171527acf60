"""Exact population loss, gradient and Hessian at any student point (nearopt.gaussian.objective).

Independent references: autodiff (torch.func) of closed-form population losses
(erf: arcsine kernel; cubic: Wick; ReLU: arc-cosine), of a Gauss-Hermite population
loss (tanh), Monte Carlo at its own standard error, and the teacher-point
PopulationHessian.
"""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.polynomial.hermite_e import hermegauss

import nearopt as no
from nearopt.curvature.population import PopulationHessian
from nearopt.dynamics.exact_objective import exact_population_objective
from nearopt.dynamics.train import float_floor, run_dynamics
from nearopt.errors import NearoptError
from nearopt.gaussian.expectations import gaussian_expectations
from nearopt.gaussian.objective import (
    fourth_moments,
    landscape_moments,
    population_gradient,
    population_loss,
)
from nearopt.landscape.manifold import add_dead_units, split_unit
from nearopt.model.activations import CustomActivation, get_activation
from nearopt.model.network import TwoLayerNet
from nearopt.model.problem import Problem


# ----------------------------------------------------------------------------- independent references
def _kernel(act: str, nodes: int = 240):
    """Torch ``E[g(u) g(v)]`` from the covariance entries (pairs) and ``E[g(u)^2]`` (diagonal)."""
    if act == "erf":  # g = erf(z / sqrt 2)
        F = lambda c11, c12, c22: (2 / math.pi) * torch.asin(c12 / torch.sqrt((1 + c11) * (1 + c22)))
        return F, lambda c: F(c, c, c)
    if act == "cubic":
        F = lambda c11, c12, c22: 9 * c11 * c22 * c12 + 6 * c12**3
        return F, lambda c: F(c, c, c)
    if act == "relu":

        def F(c11, c12, c22):
            s = torch.sqrt(c11 * c22)
            th = torch.acos(c12 / s)
            return s / (2 * math.pi) * (torch.sin(th) + (math.pi - th) * torch.cos(th))

        return F, lambda c: c / 2
    if act == "tanh":
        x, w = hermegauss(nodes)
        x, w = torch.as_tensor(x), torch.as_tensor(w / w.sum())

        def F(c11, c12, c22):
            l11 = torch.sqrt(c11)
            l21 = c12 / l11
            l22 = torch.sqrt(c22 - l21**2)
            u = l11[..., None, None] * x[:, None]
            v = l21[..., None, None] * x[:, None] + l22[..., None, None] * x[None, :]
            return (torch.tanh(u) * torch.tanh(v) * w[:, None] * w[None, :]).sum((-1, -2))

        return F, lambda c: (torch.tanh(torch.sqrt(c)[:, None] * x) ** 2 * w).sum(-1)
    raise AssertionError(act)


def reference_loss(act: str, teacher: TwoLayerNet, K: int):
    """``theta (P,) -> 1/2 beta^T Phi beta`` in torch, diagonal pairs by the 1-D formula."""
    F, diag = _kernel(act)
    Wt, u = torch.as_tensor(teacher.W1), torch.as_tensor(teacher.W2.ravel())
    n = teacher.n_inputs

    def L(theta):
        W, v = theta[: K * n].reshape(K, n), theta[K * n :]
        Om, beta = torch.cat([W, Wt]), torch.cat([v, -u])
        G = Om @ Om.T
        d = torch.diagonal(G)
        eye = torch.eye(G.shape[0], dtype=torch.bool)
        Gs = torch.where(eye, 0.5 * d[:, None] * torch.ones_like(G), G)  # keeps the (unused) diagonal off the singular point
        Phi = F(d[:, None].expand_as(G), Gs, d[None, :].expand_as(G))
        Phi = torch.where(eye, torch.diag(diag(d)), Phi)
        return 0.5 * beta @ Phi @ beta

    return L


def _reference(act, teacher, student):
    L = reference_loss(act, teacher, student.n_hidden)
    th = torch.as_tensor(student.parameters())
    return L(th).item(), torch.func.grad(L)(th).numpy(), torch.func.hessian(L)(th).numpy()


def _rel(a, b):
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


# ----------------------------------------------------------------------------- tests
@pytest.mark.parametrize("name", ["erf", "erf:unit", "tanh", "polynomial:0.5,1,0.3,0.2,0.1"])
def test_fourth_moment_matches_gaussian_expectations(name):
    act = get_activation(name)
    for C in (np.array([[1.3, 0.4], [0.4, 0.8]]), np.array([[0.7, -0.7], [-0.7, 0.7]]), np.array([[0.5, 0.0], [0.0, 2.0]])):
        got = fourth_moments(act, C[0, 0], C[0, 1], C[1, 1])
        ref = gaussian_expectations(lambda u, v: (act.derivatives(torch.as_tensor(u), 4)[4] * act(torch.as_tensor(v))).numpy(), C).mean
        assert abs(got - ref) < 1e-10 * max(1.0, abs(ref))


@pytest.mark.parametrize("act", ["erf", "tanh", "relu", "cubic"])
def test_teacher_point_equals_population_hessian(act):
    T = no.sample_teacher(5, 3, act, seed=1) if act != "tanh" else no.sample_teacher(4, 2, act, seed=1)  # tanh: quadrature, keep it small
    for trained in ("both", "first", "second"):
        pr = Problem(T, trained=trained)
        H = PopulationHessian(pr).to_dense()
        H0 = PopulationHessian(pr).to_dense()
        assert _rel(H, H0) < 1e-12
    scale = float(np.mean(T.forward(no.sample_inputs(2000, T.n_inputs, seed=0)) ** 2))
    assert abs(population_loss(T)) < 1e-14 * max(1.0, scale)
    assert np.abs(population_gradient(T)).max() < 1e-13 * max(1.0, scale)


@pytest.mark.parametrize("act", ["erf", "cubic", "relu"])
@pytest.mark.parametrize("K", [2, 3, 5])
def test_autodiff_of_closed_form_loss(act, K):
    """Wider, narrower and equal students at random points: loss, gradient, Hessian to ~1e-13."""
    T = no.sample_teacher(4, 3, act, seed=1)
    S = no.sample_teacher(4, K, act, seed=10 + K)
    la, ga, Ha = _reference(act, T, S)
    C = PopulationHessian(Problem(T, student=S))
    assert abs(C.loss - la) < 1e-12 * max(1.0, abs(la))
    assert _rel(C.gradient, ga) < 1e-12
    assert _rel(C.to_dense(), Ha) < 1e-12


def test_autodiff_of_quadrature_loss_tanh():
    """No closed form: against torch.func.hessian of a 240-node Gauss-Hermite population loss."""
    T = no.sample_teacher(4, 2, "tanh", seed=1)
    S = no.sample_teacher(4, 3, "tanh", seed=2)
    la, ga, Ha = _reference("tanh", T, S)
    C = PopulationHessian(Problem(T, student=S))
    assert abs(C.loss - la) < 1e-11
    assert _rel(C.gradient, ga) < 1e-10
    assert _rel(C.to_dense(), Ha) < 1e-10


@pytest.mark.parametrize("act", ["erf", "cubic"])
def test_collinear_units_exact(act):
    """Duplicated, sign-flipped and teacher-parallel units (rho = +-1) against the closed form."""
    T = no.sample_teacher(4, 2, act, seed=3)
    W = np.vstack([T.W1[0], T.W1[0], -T.W1[1], 1.7 * T.W1[1], [0.3, -0.2, 0.1, 0.5]])
    v = np.array([0.4, -0.9, 0.3, 0.7, 0.2])
    S = TwoLayerNet(W, v[None], T.activation)
    la, ga, Ha = _reference(act, T, S)
    C = PopulationHessian(Problem(T, student=S))
    assert abs(C.loss - la) < 1e-12 * max(1.0, abs(la))
    assert _rel(C.gradient, ga) < 1e-12
    assert _rel(C.to_dense(), Ha) < 1e-12


@pytest.mark.parametrize("act", ["erf", "tanh"])
def test_monte_carlo_at_its_rate(act):
    """Per-sample Hessians of the batch loss: the population Hessian lies within 5 standard errors of their mean."""
    T = no.sample_teacher(3, 2, act, seed=4)
    S = no.sample_teacher(3, 3, act, seed=5)
    N = 20_000
    X = torch.as_tensor(no.sample_inputs(N, 3, seed=6))
    g = T.activation
    th_t = torch.as_tensor(T.parameters())

    def f(th, x, k):
        return th[k * 3 :] @ g(th[: k * 3].reshape(k, 3) @ x)

    def one(th, x):
        return 0.5 * (f(th, x, 3) - f(th_t, x, 2)) ** 2

    Hn = torch.func.vmap(torch.func.hessian(one), in_dims=(None, 0))(torch.as_tensor(S.parameters()), X).numpy()
    mean, se = Hn.mean(0), Hn.std(0, ddof=1) / math.sqrt(N)
    H = PopulationHessian(Problem(T, student=S)).to_dense()
    assert np.all(np.abs(H - mean) <= 5 * se + 1e-12)
    assert _rel(H, mean) > 1e-4  # the comparison is at the Monte Carlo rate, not rounding


@pytest.mark.parametrize("trained", ["both", "first", "second"])
def test_routes_agree_and_restrict(trained):
    """dense / structured / matrix-free products / lanczos for each trained block set, N_i > K + M."""
    T = no.sample_teacher(8, 2, "erf", seed=7)
    S = no.sample_teacher(8, 3, "erf", seed=8)
    full = PopulationHessian(Problem(T, student=S)).to_dense()
    C = PopulationHessian(Problem(T, student=S, trained=trained))
    H = C.to_dense()
    idx = C.problem.trained_indices
    assert np.array_equal(H, full[np.ix_(idx, idx)])
    V = np.random.default_rng(0).standard_normal((H.shape[0], 4))
    assert _rel(C.matmat(V), H @ V) < 1e-13
    dense, struct = C.spectrum("dense"), C.spectrum("structured")
    assert np.abs(dense.eigenvalues - struct.eigenvalues).max() < 1e-12 * np.abs(dense.eigenvalues).max()
    assert dense.rank.rank == struct.rank.rank and dense.inertia == struct.inertia
    lan = C.spectrum("lanczos", which="largest", k=2)
    assert np.allclose(lan.eigenvalues, dense.eigenvalues[-2:], rtol=1e-9)
    assert C.gradient.shape == (C.n_params,)


def test_gradient_and_hessian_are_derivatives_of_the_loss():
    """Central differences of population_loss / population_gradient (tanh: quadrature moments)."""
    T = no.sample_teacher(3, 2, "tanh", seed=9)
    S = no.sample_teacher(3, 2, "tanh", seed=11)
    th = S.parameters()
    P = th.size
    h = 1e-5
    pr = Problem(T, student=S)
    g = population_gradient(pr)
    H = PopulationHessian(pr).to_dense()
    for i in range(P):
        e = np.zeros(P)
        e[i] = h
        plus, minus = Problem(T, student=S.with_parameters(th + e)), Problem(T, student=S.with_parameters(th - e))
        assert abs((population_loss(plus) - population_loss(minus)) / (2 * h) - g[i]) < 1e-8
        assert np.abs((population_gradient(plus) - population_gradient(minus)) / (2 * h) - H[:, i]).max() < 1e-7


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), K=st.integers(1, 4))
def test_permutation_equivariance(seed, K):
    """Relabelling the student's units permutes H, the gradient, and leaves the loss unchanged."""
    T = no.sample_teacher(3, 2, "erf", seed=seed)
    S = no.sample_teacher(3, K, "erf", seed=seed + 1)
    perm = np.random.default_rng(seed).permutation(K)
    Sp = TwoLayerNet(S.W1[perm], S.W2[:, perm], S.activation)
    C, Cp = PopulationHessian(Problem(T, student=S)), PopulationHessian(Problem(T, student=Sp))
    idx = np.concatenate([(perm[:, None] * 3 + np.arange(3)).ravel(), K * 3 + perm])
    assert abs(C.loss - Cp.loss) < 1e-13 * max(1.0, C.loss)
    assert np.allclose(Cp.gradient, C.gradient[idx], atol=1e-13)
    assert np.allclose(Cp.to_dense(), C.to_dense()[np.ix_(idx, idx)], atol=1e-13)


def test_errors_and_gauss_newton_option():
    T = no.sample_teacher(3, 2, "erf", seed=0)
    with pytest.raises(NearoptError):
        Problem(T, student=no.sample_teacher(4, 2, "erf", seed=0))
    kink = CustomActivation("kink", lambda z: torch.abs(z), smooth=False)
    Tk = TwoLayerNet(T.W1, T.W2, kink)
    Sk = TwoLayerNet(T.W1 * 1.1, T.W2, kink)
    with pytest.raises(NearoptError, match="residual"):
        landscape_moments(Problem(Tk, student=Sk), order=200)
    S = no.sample_teacher(3, 3, "erf", seed=1)
    gn = PopulationHessian(Problem(T, student=S), residual=False).to_dense()
    assert np.linalg.eigvalsh(gn).min() > -1e-14  # Gauss-Newton is PSD even off the optimum


def test_exact_population_objective_dynamics_near_a_manifold_point():
    """GD on the exact population loss from a wide manifold point: gradient = landscape gradient; small sigma0 follows the spectral prediction."""
    T = no.sample_teacher(3, 2, "erf", seed=2)
    S = add_dead_units(split_unit(T, 0, [0.3, 0.7]), 1, seed=1)
    obj = exact_population_objective(S, T)
    th = torch.as_tensor(S.parameters() + 1e-2 * np.random.default_rng(0).standard_normal(S.n_params))
    g = obj.gradient(th[None].repeat(2, 1))
    assert g.shape == (2, S.n_params)
    assert np.allclose(g[0].numpy(), population_gradient(Problem(T, student=S.with_parameters(th.numpy()))), atol=1e-15)
    assert float(obj.loss(torch.as_tensor(S.parameters()))) < 1e-15
    eig = obj.eigensystem()
    assert float_floor(obj, eig[0]) >= obj.loss_floor > 0
    small = run_dynamics(S, objective=obj, eigensystem=eig, sigma0=1e-4, steps=150, draws=2, points=10)
    big = run_dynamics(S, objective=obj, eigensystem=eig, sigma0=1e-1, steps=150, draws=2, points=10)
    assert small.ensemble_deviation() < 1e-2 < big.ensemble_deviation()
