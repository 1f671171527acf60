"""Curvature along a trajectory (:mod:`nearopt.curvature.tracking`), the ``track=`` options and ``--track``.

Every tracked quantity is checked against the dense autodiff Hessian of the closed-form population
loss in ``tests/_reference.py`` and ``numpy.linalg.eigh``, at points of a short gradient-descent run
written here on that same reference loss.
"""

from __future__ import annotations

import json

import _reference as ref
import numpy as np
import pytest
import torch
from _cli import cli
from hypothesis import given, settings
from hypothesis import strategies as st

from nearopt.curvature.tracking import CurvatureTrack, TrackSpec, teacher_overlap, track_curvature
from nearopt.dynamics import committee_ode, integrate_ode, order_parameters, run_dynamics
from nearopt.dynamics.ode_weights import track_ode, weights_from_order_parameters
from nearopt.dynamics.sgd import run_sgd
from nearopt.errors import NearoptError
from nearopt.landscape.critical import find_critical_point
from nearopt.model.network import TwoLayerNet, sample_teacher
from nearopt.model.problem import Problem


def _gd_points(teacher: TwoLayerNet, K: int, trained: str, steps=(0, 3, 10, 30), lr=0.3, seed=1) -> list[TwoLayerNet]:
    """Students along GD on the reference population loss, from a random start (the reference's gradient, not nearopt's)."""
    rng = np.random.default_rng(seed)
    n = teacher.n_inputs
    W = torch.tensor(rng.standard_normal((K, n)) / np.sqrt(n), requires_grad=True)
    v = torch.tensor(rng.standard_normal(K), requires_grad=trained == "both")
    T1, u = torch.as_tensor(teacher.W1), torch.as_tensor(teacher.W2.ravel())
    act = teacher.activation.name
    out, t = [], 0
    for target in steps:
        while t < target:
            L = ref.loss(act, W, v, T1, u, torch.eye(n, dtype=torch.float64))
            params = [W, v] if trained == "both" else [W]
            grads = torch.autograd.grad(L, params)
            with torch.no_grad():
                for p, g in zip(params, grads):
                    p -= lr * g
            t += 1
        out.append(TwoLayerNet(W.detach().numpy().copy(), v.detach().numpy().copy(), teacher.activation))
    return out


def _reference_overlap(U: np.ndarray, problem: Problem) -> np.ndarray:
    """Squared share of each eigenvector's W1 block in the teacher's row space, by a QR of the teacher's rows."""
    K, n = problem.point.W1.shape
    Qt, _ = np.linalg.qr(problem.teacher.W1.T)  # (n, M) orthonormal basis of the rows' span
    U1 = U[: K * n].T.reshape(-1, K, n)
    inside = np.linalg.norm(U1 @ Qt, axis=(1, 2)) ** 2
    return inside / np.linalg.norm(U1, axis=(1, 2)) ** 2


@pytest.mark.parametrize("act,trained", [("erf", "both"), ("relu", "both"), ("erf", "first"), ("relu", "first")])
def test_tracked_quantities_match_autodiff_reference(act, trained):
    teacher = sample_teacher(5, 2, act, seed=3)
    points = _gd_points(teacher, 3, trained)
    k = 2
    tr = track_curvature(Problem(teacher, trained=trained), points, steps=[0, 3, 10, 30], spec=k)
    assert tr.route == "dense" and tr.largest.shape == (4, k) and tr.teacher_overlap.shape == (4, 2 * k)
    for t, net in enumerate(points):
        pr = Problem(teacher, student=net, trained=trained)
        H = ref.problem_hessian(pr)
        lam, U = np.linalg.eigh(H)
        scale = np.abs(lam).max()
        assert tr.inertia[t, 1] == 0  # generic points off the minimum: no zero eigenvalue
        np.testing.assert_array_equal(tr.inertia[t], [(lam < 0).sum(), 0, (lam > 0).sum()])
        np.testing.assert_allclose(tr.largest[t], lam[-k:], atol=1e-10 * scale)
        np.testing.assert_allclose(tr.smallest[t], lam[:k], atol=1e-10 * scale)
        assert tr.loss[t] == pytest.approx(ref.problem_loss(pr), rel=1e-10, abs=1e-15)
        np.testing.assert_allclose(tr.teacher_overlap[t], _reference_overlap(np.hstack([U[:, :k], U[:, -k:]]), pr), atol=1e-8)
    np.testing.assert_array_equal(tr.steps, [0, 3, 10, 30])
    assert tr.loss[-1] < tr.loss[0]


def test_teacher_overlap_is_one_in_the_teacher_span_and_zero_outside():
    teacher = TwoLayerNet(np.eye(2, 4), np.ones(2), "erf")
    pr = Problem(teacher, student=TwoLayerNet(np.ones((2, 4)), np.ones(2), "erf"))
    inside, outside, second = np.zeros((10, 1)), np.zeros((10, 1)), np.zeros((10, 1))
    inside[[0, 5]] = 1.0  # W1[0, 0], W1[1, 1]
    outside[[2, 7]] = 1.0  # W1[0, 2], W1[1, 3]
    second[8] = 1.0  # v only: no first-layer part
    np.testing.assert_allclose(teacher_overlap(np.hstack([inside, outside]), pr), [1.0, 0.0])
    assert np.isnan(teacher_overlap(second, pr)[0])
    assert np.isnan(teacher_overlap(inside, pr.replace(trained="second"))).all()


def _path(P_inputs=40, K=4, n=3, seed=0, act="erf"):
    teacher = sample_teacher(P_inputs, K, act, seed=seed)
    rng = np.random.default_rng(seed + 1)
    d = rng.standard_normal(teacher.n_params) / np.sqrt(P_inputs)
    return teacher, [teacher.with_parameters(teacher.parameters() + 0.5 * d * 0.9**i) for i in range(n)]


def test_warm_start_gives_the_cold_and_dense_eigenvalues_with_fewer_products():
    teacher, points = _path()
    pr = Problem(teacher)
    warm = track_curvature(pr, points, spec=TrackSpec(k=3, method="lanczos", warm=True))
    cold = track_curvature(pr, points, spec=TrackSpec(k=3, method="lanczos", warm=False))
    dense = track_curvature(pr, points, spec=TrackSpec(k=3, method="dense"))
    assert warm.route == "lanczos" and warm.warm and not cold.warm and warm.converged and cold.converged
    scale = np.abs(dense.largest).max()
    for tr in (warm, cold):
        np.testing.assert_allclose(tr.largest, dense.largest, atol=1e-9 * scale)
        np.testing.assert_allclose(tr.smallest, dense.smallest, atol=1e-9 * scale)
        np.testing.assert_array_equal(tr.inertia, dense.inertia)
        np.testing.assert_allclose(tr.loss, dense.loss, rtol=1e-13)
    assert warm.products[1:].sum() < cold.products[1:].sum()
    assert warm.exact_route == "structured"


def test_at_the_teacher_the_null_space_is_skipped_and_counted():
    teacher = sample_teacher(4, 3, "linear", seed=0)  # a linear network at the teacher: H = J^T J of rank N_i = 4 < P = 15
    tr = track_curvature(Problem(teacher), [teacher], spec=2)
    lam = np.linalg.eigvalsh(ref.problem_hessian(Problem(teacher)))
    n_zero = int((np.abs(lam) <= 1e-8 * lam.max()).sum())
    assert n_zero == 11 and tr.inertia[0].tolist() == [0, n_zero, lam.size - n_zero]
    np.testing.assert_allclose(tr.smallest[0], lam[n_zero : n_zero + 2], rtol=1e-10)
    assert tr.zero_clear[0] and tr.loss[0] == 0.0


@given(K=st.integers(1, 3), M=st.integers(1, 3), extra=st.integers(0, 3), seed=st.integers(0, 10**6))
@settings(max_examples=40, deadline=None)
def test_weights_from_order_parameters_reproduce_Q_and_R(K, M, extra, seed):
    rng = np.random.default_rng(seed)
    n = K + M + extra
    teacher = TwoLayerNet(rng.standard_normal((M, n)), rng.standard_normal(M), "erf")
    W = rng.standard_normal((K, n))
    Q, R, v = order_parameters(TwoLayerNet(W, rng.standard_normal(K), "erf"), teacher)
    net = weights_from_order_parameters(Q, R, v, teacher)
    scale = max(1.0, float(np.abs(Q).max()))
    np.testing.assert_allclose(net.W1 @ net.W1.T, Q, atol=1e-10 * scale)
    np.testing.assert_allclose(net.W1 @ teacher.W1.T, R, atol=1e-10 * scale)
    np.testing.assert_array_equal(net.W2.ravel(), v)
    assert net.activation == teacher.activation


def test_weights_from_order_parameters_refuses_too_few_inputs_and_non_psd():
    teacher = TwoLayerNet(np.eye(2, 3), np.ones(2), "erf")
    with pytest.raises(NearoptError, match="N_i >= K \\+ M"):
        weights_from_order_parameters(np.eye(2), np.zeros((2, 2)), np.ones(2), teacher)
    big = TwoLayerNet(np.eye(2, 5), np.ones(2), "erf")
    with pytest.raises(NearoptError, match="not those of real weights"):
        weights_from_order_parameters(np.eye(2), 2.0 * np.eye(2), np.ones(2), big)  # R R^T > Q: no real weights


def test_track_ode_loss_is_the_ode_error_and_reconstruction_holds():
    teacher = TwoLayerNet(np.eye(2, 2), np.ones(2), "erf")
    ode = committee_ode(teacher, 0.5)
    Q0 = np.array([[0.3, 0.05], [0.05, 0.25]])
    traj = integrate_ode(ode, Q0, np.array([[0.1, 0.02], [0.01, 0.12]]), np.array([0.6, 0.5]), np.linspace(0, 20, 5))
    tr = track_ode(traj, teacher, track=TrackSpec(k=2, every=2))
    assert tr.clock == "alpha"
    np.testing.assert_array_equal(tr.steps, traj.alpha[[0, 2, 4]])
    np.testing.assert_allclose(tr.loss, traj.eps[[0, 2, 4]], rtol=1e-10)
    assert tr.inertia.sum(1).tolist() == [2 * 4 + 2] * 3  # K N_i + K with N_i = K + M = 4


def test_run_dynamics_tracks_draw_zero():
    teacher = sample_teacher(4, 2, "linear", seed=0)  # the closed-form population objective: the same loss as the tracked one
    res = run_dynamics(teacher, sigma0=0.2, steps=20, draws=2, points=4, track=TrackSpec(k=2, every=2))
    tr = res.curvature
    assert isinstance(tr, CurvatureTrack) and tr.clock == "step"
    idx = TrackSpec(k=2, every=2).select(res.times.size)
    np.testing.assert_array_equal(tr.steps, res.times[idx])
    np.testing.assert_allclose(tr.loss, res.loss[0, idx], rtol=1e-9)
    assert "curvature" in res.to_dict(arrays=False)
    flow = run_dynamics(teacher, sigma0=0.2, steps=5, draws=1, points=3, flow=True, track=1)
    assert flow.curvature is not None and flow.curvature.clock == "time" and flow.curvature.steps.size == flow.times.size


def test_run_sgd_tracks_run_zero_and_its_loss():
    teacher = sample_teacher(5, 2, "relu", seed=0)
    res = run_sgd(teacher, lr=0.1, steps=40, runs=3, sigma0=0.1, points=4, track=2, exact=False)
    tr = res.simulation.curvature
    assert tr is not None
    np.testing.assert_array_equal(tr.steps, res.simulation.steps)
    np.testing.assert_allclose(tr.loss, res.simulation.loss[0], rtol=1e-9)


def test_find_critical_point_tracks_start_and_end():
    teacher = sample_teacher(4, 2, "erf", seed=0)
    start = Problem(teacher, student=TwoLayerNet(np.random.default_rng(0).standard_normal((2, 4)) / 2, np.ones(2), "erf"))
    cp = find_critical_point(start, track=2, max_steps=3000)
    tr = cp.curvature
    assert tr is not None and tr.clock == "iterate" and tr.steps[0] == 0
    assert tr.inertia[-1].tolist() == [cp.index, cp.zero_modes, cp.positive]
    np.testing.assert_allclose(tr.largest[-1], cp.eigenvalues[-2:], rtol=1e-12)
    assert "curvature" in cp.to_dict()


@pytest.mark.parametrize("k", [0, -1, 1.5, True])
def test_bad_k_refused(k):
    with pytest.raises(NearoptError, match="k must be an integer >= 1"):
        TrackSpec(k=k)


def test_k_not_below_P_refused_before_work():
    teacher = sample_teacher(3, 2, "erf", seed=0)  # P = 8
    with pytest.raises(NearoptError, match="k = 8 must be smaller than the number of trained parameters P = 8"):
        track_curvature(Problem(teacher), [teacher], spec=8)
    with pytest.raises(NearoptError, match="P = 8"):
        run_sgd(teacher, lr=0.1, steps=5, runs=2, track=8)
    with pytest.raises(NearoptError, match="P = 8"):
        run_dynamics(teacher, sigma0=0.1, steps=5, draws=1, track=9)


def test_cli_track_json_equals_the_api():
    args = ["sgd", "-a", "relu", "--ni", "4", "--nh", "2", "--lr", "0.1", "--steps", "30", "--runs", "3", "--points", "4", "--quiet", "--no-exact"]
    code, out, err = cli(*args, "--track", "2", "--json")
    assert code == 0, err
    d = json.loads(out)["curvature"]
    assert {"steps", "largest", "smallest", "inertia", "loss", "teacher_overlap", "route", "dtype"} <= set(d)
    teacher = sample_teacher(4, 2, "relu", seed=0)
    api = run_sgd(teacher, lr=0.1, steps=30, runs=3, points=4, exact=False, track=2).simulation.curvature
    assert api is not None
    for key in ("steps", "largest", "smallest", "inertia", "loss", "teacher_overlap"):
        np.testing.assert_allclose(np.asarray(d[key], dtype=float), getattr(api, key), rtol=1e-12, atol=1e-15)
    code, out, _ = cli(*args, "--track", "2")
    assert code == 0 and "curvature along the trajectory" in out


@pytest.mark.parametrize("command", [["dynamics", "-a", "erf", "--ni", "3", "--nh", "2", "--population", "--steps", "5", "--draws", "1", "--quiet"],
                                     ["critical", "-a", "erf", "--ni", "3", "--nh", "2", "--student-width", "2", "--quiet"]])
def test_cli_track_keys_and_refusals(command):
    code, out, err = cli(*command, "--track", "1", "--json")
    assert code == 0, err
    assert json.loads(out)["curvature"]["k"] == 1
    for bad, text in (("0", "must be >= 1"), ("8", "must be smaller than the number of trained parameters")):
        code, out, err = cli(*command, "--track", bad, "--json")
        assert code == 2 and text in err and "Traceback" not in err
        assert len([line for line in err.splitlines() if "error" in line]) == 1
