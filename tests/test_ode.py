"""The order-parameter ODEs: trajectories, the soft committee machine, the time to a target error, any activation."""

import numpy as np
import pytest
import torch
from scipy import integrate, special

import nearopt as no
from nearopt.dynamics.ode import committee_ode, integrate_ode, order_parameters
from nearopt.dynamics.sgd import simulate_sgd
from nearopt.errors import NearoptError
from nearopt.gaussian.objective import population_loss
from nearopt.model.activations import CustomActivation


def _start(K=2, M=2, seed=0):
    teacher = no.sample_teacher(6, M, "erf", seed=seed)
    rng = np.random.default_rng(seed + 1)
    student = no.TwoLayerNet(0.3 * rng.standard_normal((K, 6)), rng.standard_normal((1, K)), teacher.activation)
    return teacher, student


def test_soft_committee_keeps_the_second_layer_and_both_layers_move_it():
    teacher, student = _start()
    Q0, R0, v0 = order_parameters(student, teacher)
    alphas = np.linspace(0.0, 5.0, 6)
    soft = integrate_ode(committee_ode(teacher, 0.5, trained="first"), Q0, R0, v0, alphas)
    both = integrate_ode(committee_ode(teacher, 0.5), Q0, R0, v0, alphas)
    assert soft.Q.shape == (6, 2, 2) and soft.R.shape == (6, 2, 2) and soft.v.shape == (6, 2)
    np.testing.assert_array_equal(soft.v, np.broadcast_to(v0, soft.v.shape))
    assert np.abs(both.v[-1] - v0).max() > 1e-3
    assert soft.eps[-1] < soft.eps[0] and both.eps[-1] < both.eps[0]


def test_time_to_target_lies_where_the_error_crosses_it():
    teacher, student = _start(K=3, M=2, seed=3)
    Q0, R0, v0 = order_parameters(student, teacher)
    ode = committee_ode(teacher, 0.5)
    alphas = np.linspace(0.0, 40.0, 401)
    traj = integrate_ode(ode, Q0, R0, v0, alphas)
    target = 0.5 * (traj.eps[0] + traj.eps[-1])
    hit = integrate_ode(ode, Q0, R0, v0, alphas, target=target)
    k = int(np.argmax(traj.eps <= target))
    assert alphas[k - 1] <= hit.alpha_target <= alphas[k]
    assert integrate_ode(ode, Q0, R0, v0, alphas[:3], target=1e-30).alpha_target is None


@pytest.mark.parametrize("kwargs", [{"trained": "second"}, {"noise": -1.0}, {"noise": float("nan")}])
def test_bad_options_are_refused(kwargs):
    teacher, _ = _start()
    with pytest.raises(NearoptError):
        committee_ode(teacher, 0.5, **kwargs)


# --------------------------------------------------------------------------- any activation
def _net(K, M, act, seed, scale=0.5):
    teacher = no.sample_teacher(6, M, act, seed=seed)
    rng = np.random.default_rng(seed + 1)
    student = no.TwoLayerNet(scale * rng.standard_normal((K, 6)) / np.sqrt(6), rng.standard_normal((1, K)), teacher.activation)
    return teacher, student


@pytest.mark.parametrize("act", ["erf", "erf:unit", "relu", "linear", "tanh", "polynomial:0.1,1,0.3"])
def test_error_is_the_population_loss_of_the_weights(act):
    """The ODE's eps from (Q, R, v) equals the population loss of the networks computed from their weights."""
    teacher, student = _net(3, 2, act, seed=4, scale=1.5)
    ode = committee_ode(teacher, 0.5, 0.2)
    assert ode.activation == teacher.activation
    eps = ode.error(*order_parameters(student, teacher))
    assert eps == pytest.approx(population_loss(no.Problem(teacher, student=student)), rel=1e-12)
    assert eps > 1e-3


def test_rhs_of_a_smooth_activation_by_quadrature_matches_a_close_polynomial():
    """tanh's checked quadrature against the exact route of its odd Taylor polynomial at tiny overlaps (tanh z = z - z^3/3 + O(z^5))."""
    teacher, student = _net(2, 2, "tanh", seed=2)
    s = 0.05  # fields of std ~0.05: the z^5 term moves the integrals by ~s^4 relative
    T_, S_ = (no.TwoLayerNet(n.W1 * s, n.W2, n.activation) for n in (teacher, student))
    poly = no.get_activation("polynomial:0,1,0,-0.3333333333333333")
    Tp, Sp = (no.TwoLayerNet(n.W1, n.W2, poly) for n in (T_, S_))
    a = committee_ode(T_, 0.5, 0.1).rhs(*order_parameters(S_, T_))
    b = committee_ode(Tp, 0.5, 0.1).rhs(*order_parameters(Sp, Tp))
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, rtol=0, atol=2e-5 * np.abs(y).max())


def _gauss_hermite_rhs(T, u, lr, noise, trained, n_max=28):
    """An independent RHS of the erf ODEs: every expectation by tensor Gauss–Hermite over the K + M fields.

    The rule lives in the eigenbasis of the fields' covariance, ``ceil(n_max sqrt(lambda_i / 2))`` nodes (3 to ``n_max``)
    along eigenvalue ``lambda_i`` (erf varies on the scale 1), so nearly degenerate directions cost few nodes; no closed form is used.
    """
    rules = {}

    def rule(lam):
        ns = tuple(min(n_max, max(3, int(np.ceil(n_max * np.sqrt(x / 2))))) for x in lam)
        if ns not in rules:
            xs, ws = zip(*(np.polynomial.hermite_e.hermegauss(n) for n in ns))
            Y = np.stack(np.meshgrid(*xs, indexing="ij"), -1).reshape(-1, lam.size)
            W = np.prod(np.stack(np.meshgrid(*ws, indexing="ij"), -1).reshape(-1, lam.size), 1) / (2 * np.pi) ** (lam.size / 2)
            keep = W > 1e-16 * W.max()
            rules[ns] = Y[keep], W[keep]
        return rules[ns]

    def rhs(Q, R, v):
        K = Q.shape[0]
        lam, V = np.linalg.eigh(np.block([[Q, R], [R.T, T]]))
        lam = np.clip(lam, 0.0, None)
        Y, W = rule(lam)
        F = Y @ (V * np.sqrt(lam)).T  # (nodes, K + M): the fields lambda, nu
        g, dg = special.erf(F / np.sqrt(2)), np.sqrt(2 / np.pi) * np.exp(-F * F / 2)
        r0 = g[:, :K] @ v - g[:, K:] @ u
        first = (dg[:, :K] * (W * r0)[:, None]).T @ F
        second = (dg[:, :K] * (W * (r0**2 + noise**2))[:, None]).T @ dg[:, :K]
        fq = v[:, None] * first[:, :K]
        dQ = -lr * (fq + fq.T) + lr**2 * np.outer(v, v) * second
        dv = -lr * (W * r0) @ g[:, :K] if trained == "both" else np.zeros_like(v)
        return dQ, -lr * v[:, None] * first[:, K:], dv, 0.5 * (W * r0) @ r0

    return rhs


def _independent_trajectory(rhs, Q0, R0, v0, alphas):
    """``eps`` at ``alphas`` integrating ``rhs`` by LSODA over the full ``Q`` (not its triangle)."""
    K, M = R0.shape

    def unpack(y):
        return y[: K * K].reshape(K, K), y[K * K : K * K + K * M].reshape(K, M), y[K * K + K * M :]

    def f(_a, y):
        dQ, dR, dv, _ = rhs(*unpack(y))
        return np.concatenate([(0.5 * (dQ + dQ.T)).ravel(), dR.ravel(), dv])

    sol = integrate.solve_ivp(f, (0.0, alphas[-1]), np.concatenate([Q0.ravel(), R0.ravel(), v0]), t_eval=alphas, method="LSODA", rtol=1e-10, atol=1e-13)
    assert sol.success
    return np.array([rhs(*unpack(y))[3] for y in sol.y.T])


@pytest.mark.slow
@pytest.mark.parametrize("K, trained, noise, plateau, escape", [
    (2, "first", 0.0, [40.0, 70.0, 100.0], [200.0, 230.0, 260.0, 300.0]),
    (3, "both", 0.1, [100.0, 140.0, 180.0], [260.0, 300.0, 340.0]),
])
def test_erf_trajectories_match_an_independent_integration(K, trained, noise, plateau, escape):
    """Near the symmetric state (symmetry broken at 1e-3) the erf ODEs sit on a plateau, then escape; an independent RHS
    (Gauss–Hermite over the fields, LSODA) agrees to 1e-6 relative on the plateau and 1e-3 through the escape."""
    teacher = no.TwoLayerNet(np.eye(2, 6), np.ones((1, 2)), "erf")  # T = I, u = 1
    ode = committee_ode(teacher, 0.5, noise, trained=trained)
    Q0 = 0.2 * np.eye(K) + 0.02
    R0 = 1e-3 * np.random.default_rng(1).standard_normal((K, 2))
    v0 = np.array([1.0, 0.8, 0.6])[:K] if trained == "both" else np.ones(K)
    alphas = np.array([0.0] + plateau + escape)
    ours = integrate_ode(ode, Q0, R0, v0, alphas).eps
    ref = _independent_trajectory(_gauss_hermite_rhs(ode.T, ode.u, 0.5, noise, trained), Q0, R0, v0, alphas)
    on, out = slice(1, 1 + len(plateau)), slice(1 + len(plateau), None)
    assert np.ptp(ours[on]) < 0.1 * ours[on].mean() and ours[-1] < 0.5 * ours[on].mean()  # a plateau, then the escape
    np.testing.assert_allclose(ours[on], ref[on], rtol=1e-6)
    np.testing.assert_allclose(ours[out], ref[out], rtol=1e-3)


@pytest.mark.parametrize("trained", ["both", "first"])
def test_relu_trajectories_match_online_sgd_at_large_n(trained):
    """ReLU K = M = 2 at eta~ = 1: the ODE against the mean of 40 online-SGD runs at N = 1000 (step eta~ / N),
    within 4 standard errors plus the O(1/N) finite-size bias."""
    N, alpha, eta = 1000, 3.0, 1.0
    rng = np.random.default_rng(0)
    W = np.linalg.qr(rng.standard_normal((N, 2)))[0].T  # orthonormal teacher rows: T = I
    teacher = no.TwoLayerNet(W, np.ones((1, 2)), "relu")
    student = no.TwoLayerNet(0.5 * rng.standard_normal((2, N)) / np.sqrt(N), np.array([[0.7, 0.4]]), "relu")
    traj = integrate_ode(committee_ode(teacher, eta, trained=trained), *order_parameters(student, teacher), np.linspace(0.0, alpha, 4), rtol=1e-6, atol=1e-9)
    sim = simulate_sgd(no.Problem(teacher, student=student, trained=trained), lr=eta / N, sigma0=1e-12, runs=40, steps=int(alpha * N),
                       record=np.arange(0, int(alpha * N) + 1, N), seed=3)
    assert traj.eps[-1] < 0.8 * traj.eps[0]
    np.testing.assert_array_less(np.abs(sim.mean - traj.eps), 4 * sim.sem + 5 * traj.eps / N + 1e-12)


@pytest.mark.parametrize("case, match", [
    ("kink", "kink"),
    ("biases", "committee machine"),
    ("outputs", "committee machine"),
    ("not a net", "TwoLayerNet"),
])
def test_unsupported_networks_are_refused(case, match):
    teacher, _ = _start()
    if case == "kink":
        kink = CustomActivation("kinked", lambda z: torch.abs(z), smooth=False)
        teacher = no.TwoLayerNet(teacher.W1, teacher.W2, kink)
    elif case == "biases":
        teacher = no.TwoLayerNet(teacher.W1, teacher.W2, teacher.activation, b1=np.ones(2))
    elif case == "outputs":
        teacher = no.TwoLayerNet(teacher.W1, np.ones((2, 2)), teacher.activation)
    else:
        teacher = teacher.W1
    with pytest.raises(NearoptError, match=match):
        committee_ode(teacher, 0.5)


def test_a_student_of_another_activation_is_refused():
    teacher, student = _start()
    other = no.TwoLayerNet(student.W1, student.W2, "tanh")
    with pytest.raises(NearoptError, match="one activation"):
        order_parameters(other, teacher)
