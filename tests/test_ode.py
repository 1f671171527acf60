"""The order-parameter ODEs: trajectories, the soft committee machine, the time to a target error."""

import numpy as np
import pytest

import nearopt as no
from nearopt.dynamics.ode import committee_ode, integrate_ode, order_parameters
from nearopt.errors import NearoptError


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
