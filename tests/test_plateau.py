"""Plateaus of the order-parameter ODEs: fixed points, unstable rates, escape times and the Hessian there."""

import numpy as np
import pytest
from scipy import optimize

import nearopt as no
from nearopt.dynamics.ode import committee_ode, integrate_ode, order_parameters
from nearopt.dynamics.plateau import (
    escape_time,
    find_plateau,
    fixed_point,
    linearise,
    lowest_curvature,
    minimal_weights,
    predict_escape,
    rate_expansion,
)
from nearopt.errors import NearoptError

#: the antisymmetric pattern of the initial symmetry breaking (K = M = 2)
BREAK = np.array([[1.0, -1.0], [-1.0, 1.0]])


def _teacher():
    return no.TwoLayerNet(np.eye(2), np.ones((1, 2)), no.get_activation("erf"))


def _start(s, v=(1.0, 1.0)):
    return 0.2 * np.eye(2), 0.01 * np.ones((2, 2)) + s * BREAK, np.array(v)


@pytest.fixture(scope="module")
def soft():
    ode = committee_ode(_teacher(), 0.5, trained="first")
    traj = integrate_ode(ode, *_start(1e-3), np.linspace(0.0, 400.0, 201))
    return ode, traj, find_plateau(ode, traj)


def test_the_plateau_is_found_with_its_fixed_point(soft):
    ode, traj, p = soft
    assert p is not None and 0 < p.alpha_start < p.alpha_end < traj.alpha[-1]
    inside = (traj.alpha > p.alpha_start) & (traj.alpha < p.alpha_end)
    assert np.all(np.abs(traj.eps[inside] / p.eps - 1) <= 0.1)
    assert traj.eps[-1] < p.eps / 10
    dQ, dR, dv = ode.rhs(p.Q, p.R, p.v)
    assert max(np.abs(dQ).max(), np.abs(dR).max()) < 1e-11
    np.testing.assert_array_equal(p.v, [1.0, 1.0])
    assert p.unstable_rate > 0 and np.sum(p.jacobian_eigenvalues.real > 0) == 1


def test_fixed_point_and_rate_match_a_reduced_independent_computation(soft):
    """By symmetry ``Q = [[q, c], [c, q]]``, ``R = r``: MINPACK on three unknowns; the rate from the antisymmetric sector alone."""
    ode, _, p = soft

    def reduced(z):
        q, c, r = z
        dQ, dR, _ = ode.rhs(np.array([[q, c], [c, q]]), np.full((2, 2), r), np.ones(2))
        return [dQ[0, 0], dQ[0, 1], dR[0, 0]]

    q, c, r = optimize.fsolve(reduced, [0.35, 0.33, 0.41], xtol=1e-14)
    np.testing.assert_allclose(p.Q, [[q, c], [c, q]], rtol=1e-9)
    np.testing.assert_allclose(p.R, np.full((2, 2), r), rtol=1e-9)
    h = 1e-5
    grow = (ode.rhs(p.Q, p.R + h * BREAK, p.v)[1] - ode.rhs(p.Q, p.R - h * BREAK, p.v)[1]) / (2 * h)
    mu = float(np.sum(grow * BREAK) / np.sum(BREAK * BREAK))
    assert p.unstable_rate == pytest.approx(mu, rel=1e-7)
    np.testing.assert_allclose(np.abs(p.unstable_direction[1]), 0.5, atol=1e-8)  # all of it in R's antisymmetric pattern
    assert np.abs(p.unstable_direction[0]).max() < 1e-8


def test_escape_time_prediction_holds_over_two_decades_of_symmetry_breaking(soft):
    ode, _, p = soft
    s = np.array([1e-2, 1e-3, 1e-4])
    measured = np.array([escape_time(ode, *_start(x), level=p.eps / 2, alpha_max=1000.0) for x in s])
    predicted = predict_escape(p.unstable_rate, s, s_ref=1e-3, alpha_ref=measured[1])
    assert np.all(np.abs(predicted / measured - 1) < 0.1)
    assert np.all(np.diff(measured) > 0)


def test_no_plateau_from_near_the_teacher():
    ode = committee_ode(_teacher(), 0.5, trained="first")
    traj = integrate_ode(ode, np.eye(2) + 0.01, np.eye(2), np.ones(2), np.linspace(0.0, 200.0, 101))
    assert find_plateau(ode, traj) is None


def test_fixed_point_refuses_when_newton_fails():
    ode = committee_ode(_teacher(), 0.5, trained="first")
    with pytest.raises(NearoptError, match="did not converge"):
        fixed_point(ode, 0.2 * np.eye(2), np.zeros((2, 2)), np.ones(2), max_iter=1)


def test_weights_reproduce_the_order_parameters():
    teacher = no.sample_teacher(5, 2, "erf", seed=1)
    rng = np.random.default_rng(0)
    student = no.TwoLayerNet(rng.standard_normal((3, 5)), rng.standard_normal((1, 3)), teacher.activation)
    Q, R, v = order_parameters(student, teacher)
    w, t = minimal_weights(teacher, Q, R, v, extra=1)
    assert w.n_inputs == 2 + 3 + 1
    Q2, R2, v2 = order_parameters(w, t)
    np.testing.assert_allclose(Q2, Q, atol=1e-12)
    np.testing.assert_allclose(R2, R, atol=1e-12)
    np.testing.assert_allclose(t.W1 @ t.W1.T, teacher.W1 @ teacher.W1.T, atol=1e-12)
    np.testing.assert_array_equal(v2, v)
    with pytest.raises(NearoptError, match="not those of real weights"):
        minimal_weights(teacher, Q - 10 * np.eye(3), R, v)


def test_unstable_rate_is_the_learning_rate_times_the_hessians_negative_curvature(soft):
    """docs/theory.md §15: rate = eta~ |lambda| at the eta~ fixed point's weights; rate / eta~ -> |lambda_min| of the saddle."""
    ode, _, p = soft
    ex = rate_expansion(ode, _teacher(), p.Q, p.R, p.v, [0.5, 0.1, 0.01])
    np.testing.assert_allclose(ex.rate, -ex.lr * ex.lambda_unstable, rtol=1e-8)
    np.testing.assert_allclose(ex.lambda_unstable, ex.lambda_min, rtol=1e-8)
    assert ex.lift_residual.max() < 1e-8
    assert ex.rate[0] == pytest.approx(p.unstable_rate, rel=1e-9)
    gap = np.abs(ex.rate / ex.lr + ex.lambda_min0)
    assert gap[2] < gap[1] < gap[0] and gap[2] < 1e-3 * abs(ex.lambda_min0)
    assert ex.lambda_min0 == pytest.approx(-0.0657, abs=1e-4)  # the symmetric saddle's value in the issue
    lam, vec, student = lowest_curvature(_teacher(), p.Q, p.R, p.v, trained="first")
    assert lam == pytest.approx(ex.lambda_min[0], rel=1e-10) and vec.shape == (student.W1.size,)


def test_both_layers_plateau_meets_the_hessian_at_its_own_fixed_point():
    """The issue's case: both layers, eta~ = 0.5: plateau at eps = 0.01375; 2 eta~ |lambda| there, not at the saddle."""
    ode = committee_ode(_teacher(), 0.5)
    traj = integrate_ode(ode, *_start(1e-3, v=(0.1, 0.12)), np.linspace(0.0, 600.0, 301))
    p = find_plateau(ode, traj)
    assert p is not None and p.eps == pytest.approx(0.01376, abs=1e-5)
    ex = rate_expansion(ode, _teacher(), p.Q, p.R, p.v, [0.5])
    assert 2 * p.unstable_rate == pytest.approx(2 * 0.5 * abs(ex.lambda_min[0]), rel=1e-8)
    assert 2 * 0.5 * abs(ex.lambda_min0) == pytest.approx(0.0657, abs=2e-4)
    assert 2 * p.unstable_rate == pytest.approx(0.0590, abs=2e-4)


def test_linearise_orders_eigenvalues(soft):
    ode, _, p = soft
    lam, U = linearise(ode, p.Q, p.R, p.v)
    assert lam.shape == (7,) and U.shape == (7, 7)
    assert np.all(np.diff(lam.real) <= 0)
    np.testing.assert_allclose(lam, p.jacobian_eigenvalues)


def test_a_saddle_in_the_teacher_span_rounds_to_weights():
    """At the eta~ -> 0 saddle ``Q = R T^{-1} R^T``: Newton's drift of 1e-9 below it is rounding, 1e-3 is not."""
    teacher = _teacher()
    R = np.full((2, 2), 0.4)
    w, _ = minimal_weights(teacher, R @ R.T - 1e-9 * np.eye(2), R, np.ones(2))
    np.testing.assert_allclose(w.W1[:, 2:], 0.0, atol=1e-12)
    with pytest.raises(NearoptError, match="not those of real weights"):
        minimal_weights(teacher, R @ R.T - 1e-3 * np.eye(2), R, np.ones(2))
