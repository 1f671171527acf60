"""Training near the optimum against the quadratic prediction (docs/theory.md §5)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import nearopt as no
from nearopt.cli import main
from nearopt.dynamics import (
    check_step_size,
    late_time_rate,
    linear_edge_asymptote,
    linear_edge_loss,
    make_objective,
    mode_decay,
    predict_draw_loss,
    predict_mean_loss,
    run_dynamics,
    sample_displacements,
    time_grid,
)
from nearopt.dynamics.train import float_floor
from nearopt.errors import NearoptError


@pytest.fixture(scope="module")
def linear_run():
    net = no.sample_teacher(4, 3, "linear", seed=1)
    X = no.sample_inputs(500, 4, seed=1)
    return run_dynamics(net, X, sigma0=1e-6, steps=30, draws=6, seed=3)


def test_linear_gd_matches_prediction_per_draw(linear_run):
    res = linear_run
    assert res.valid.sum() >= 10
    assert res.draw_error() < 1e-2
    # the curve spans many decades before the float floor
    v = res.valid
    assert res.mean_loss[v].max() / res.mean_loss[v].min() > 1e10
    assert res.zero_mode_drift() < 1e-4


def test_mean_prediction_is_average_of_draw_predictions():
    rng = np.random.default_rng(0)
    lam = np.sort(rng.uniform(0, 2, 6))
    lam[0] = 0.0
    c0 = rng.standard_normal((20000, 6)) * 0.1
    times = np.array([0.0, 1, 5, 20])
    mean = predict_mean_loss(lam, 0.01, 0.4, times)
    np.testing.assert_allclose(predict_draw_loss(lam, c0, 0.4, times).mean(0), mean, rtol=0.05)
    # L_0 = sigma0^2 tr(H) / 2
    assert mean[0] == pytest.approx(0.5 * 0.01 * lam.sum())


def test_mode_decay_gd_and_flow():
    lam = np.array([0.0, 0.5, 1.0])
    d = mode_decay(lam, 0.5, np.array([0.0, 3.0]))
    np.testing.assert_allclose(d[1], [1.0, 0.75**3, 0.5**3])
    f = mode_decay(lam, 0.5, np.array([2.0]), flow=True)
    np.testing.assert_allclose(f[0], np.exp(-0.5 * lam * 2.0))
    r = late_time_rate(0.1, 0.5)
    assert r["continuous"] == pytest.approx(0.1)
    assert r["exact"] == pytest.approx(-2 * math.log(0.95))
    # lr lambda_min = 1 (one sample, lr = 1/lambda_max): GD removes the mode in one step
    assert late_time_rate(2.0, 0.5) == {"continuous": 2.0, "exact": math.inf}


def test_unstable_step_is_an_error():
    with pytest.raises(NearoptError, match="2/lambda_max"):
        check_step_size(1.0, 2.5)
    net = no.sample_teacher(3, 2, "linear", seed=0)
    with pytest.raises(NearoptError, match="unstable"):
        run_dynamics(net, no.sample_inputs(100, 3), lr=100.0, steps=5, draws=1)


def test_population_closed_forms_match_large_batch():
    for act in ("linear", "quadratic"):
        net = no.sample_teacher(3, 2, act, seed=2)
        pop = make_objective(net)
        X = no.sample_inputs(200_000, 3, seed=5)
        batch = make_objective(net, X)
        delta = torch.as_tensor(np.random.default_rng(1).standard_normal((3, net.n_params)) * 0.1)
        np.testing.assert_allclose(pop.loss_at(delta).numpy(), batch.loss_at(delta).numpy(), rtol=0.03)
        # Hessian at the optimum: autodiff of the closed-form loss vs the exact population Hessian (Mehler moments)
        H_closed = pop.curvature().to_dense()
        H_exact = no.PopulationHessian(net).to_dense()
        np.testing.assert_allclose(H_closed, H_exact, rtol=1e-12, atol=1e-13 * np.abs(H_exact).max())
        spec, _ = pop.eigensystem()
        np.testing.assert_allclose(spec.eigenvalues, no.population_spectrum(net, "dense").eigenvalues, rtol=1e-10, atol=1e-12)


def test_float_floor_of_a_population_objective_takes_the_exact_output_power():
    """Linear network, x ~ N(0, I): E[f*(x)^2] = |W2 W1|_F^2 exactly, not a sample mean."""
    net = no.sample_teacher(4, 3, "linear", seed=7)
    obj = make_objective(net)
    assert obj.X is None
    spec, _ = obj.eigensystem()
    kappa = spec.condition_number if math.isfinite(spec.condition_number) else 1.0
    power = float(np.sum((net.W2 @ net.W1) ** 2))
    expected = 0.5 * (net.n_params * np.finfo(np.float64).eps) ** 2 * power * max(1.0, kappa)
    assert float_floor(obj, spec) == pytest.approx(expected, rel=1e-12, abs=0.0)


def test_quadratic_population_rank_and_kurtosis():
    net = no.sample_teacher(3, 2, "quadratic", seed=0)
    spec, _ = make_objective(net).eigensystem()
    assert spec.rank.rank == 3 * 2 - 1  # N_h N_i - N_h(N_h-1)/2 (docs/theory.md §4.1)
    # Rademacher inputs (excess kurtosis -2): closed form vs a large batch
    X = no.sample_inputs(100_000, 3, seed=4, distribution="rademacher")
    delta = torch.as_tensor(np.random.default_rng(2).standard_normal(net.n_params) * 0.1)
    exact = make_objective(net, kurtosis=-2.0).loss_at(delta).item()
    assert make_objective(net, X).loss_at(delta).item() == pytest.approx(exact, rel=0.03)
    assert make_objective(net).loss_at(delta).item() != pytest.approx(exact, rel=0.03)


def test_batch_gradient_and_hessian_match_autograd():
    net = no.sample_teacher(3, 2, "erf", seed=0)
    obj = make_objective(net, no.sample_inputs(300, 3, seed=0))
    delta = torch.as_tensor(np.random.default_rng(0).standard_normal((2, net.n_params)) * 0.05)
    with torch.enable_grad():
        d = delta.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(obj.loss_at(d).sum(), d)
    torch.testing.assert_close(obj.gradient_at(delta), g)
    torch.testing.assert_close(obj.hessian_at(delta[0]), torch.func.hessian(obj.loss_at)(delta[0]))
    spec, U = obj.eigensystem()
    H0 = no.gauss_newton(net, obj.X.numpy())
    np.testing.assert_allclose(U.T @ H0 @ U, np.diag(spec.eigenvalues), atol=1e-12)


def test_erf_flow_late_slope():
    net = no.sample_teacher(3, 2, "erf", seed=0)
    X = no.sample_inputs(400, 3, seed=0)
    res = run_dynamics(net, X, sigma0=1e-4, draws=2, flow=True, points=25)
    lt = res.late_time()
    assert lt["reached"]
    assert lt["rel_error_vs_continuous"] < 0.03
    assert res.draw_error() < 0.05


def test_gd_slope_uses_exact_rate():
    net = no.sample_teacher(3, 2, "quadratic", seed=1)
    X = no.sample_inputs(400, 3, seed=1)
    res = run_dynamics(net, X, sigma0=1e-4, draws=3, points=25)
    lt = res.late_time()
    assert lt["reached"] and lt["rel_error_vs_exact"] < 0.03


def test_seeds_and_layer_scales():
    a, s = sample_displacements(5, 3, 0.1, seed=7, layer_scales=(1.0, 10.0), n_first_layer=3)
    b, _ = sample_displacements(5, 3, 0.1, seed=7, layer_scales=(1.0, 10.0), n_first_layer=3)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(s, [0.1, 0.1, 0.1, 1.0, 1.0])
    with pytest.raises(NearoptError):
        sample_displacements(5, 3, -1.0)
    t = time_grid(100, 10)
    assert t[0] == 0 and t[-1] == 100 and np.all(np.diff(t) > 0)


def test_linear_edge_law():
    kw = {"n_inputs": 50, "n_hidden": 200, "s": 1.0, "sigma1": 1 / math.sqrt(50), "sigma0": 1.0, "lr": 0.1}
    lam_lo = 1.0 + 4 * 0.25
    t = np.array([20.0, 300.0])  # 2 eta lambda_- t stays below float underflow
    ratio = linear_edge_loss(t, **kw) / linear_edge_asymptote(t, **kw)
    assert abs(ratio[1] - 1) < abs(ratio[0] - 1) and abs(ratio[1] - 1) < 0.1
    # t=0: sigma0^2/2 * N_i * mean(lambda) = 1/2 * 50 * (s + sigma1^2 N_h)
    assert linear_edge_loss(np.array([0.0]), **kw)[0] == pytest.approx(0.5 * 50 * (1.0 + 4.0), rel=1e-6)
    assert lam_lo == pytest.approx(2.0)


def test_cli_json_and_errors(capsys):
    rc = main(["dynamics", "-a", "linear", "--ni", "3", "--nh", "2", "--samples", "300", "--sigma0", "1e-6", "--steps", "20", "--draws", "2", "--json"])
    assert rc == 0
    d = json.loads(capsys.readouterr().out)
    assert len(d["times"]) == len(d["loss_mean"]) == len(d["predicted_mean"])
    assert d["max_rel_error_per_draw"] < 0.01
    assert main(["dynamics", "-a", "linear", "--ni", "3", "--nh", "2", "--samples", "300", "--lr", "50"]) == 2
    assert "2/lambda_max" in capsys.readouterr().err
    assert main(["dynamics", "-a", "erf", "--ni", "3", "--nh", "2", "--samples", "300", "--steps", "30", "--draws", "2"]) == 0
    out = capsys.readouterr().out
    assert "measured <L>" in out and "predicted <L>" in out


@pytest.mark.parametrize("name", ["dynamics", "breakdown", "non-gaussian"])
def test_experiment_quick(name, tmp_path):
    """One experiment per test, so no test waits on several whole experiments under the per-test timeout."""
    from nearopt.experiments import get_experiment, run_serial

    exp = get_experiment(name)
    res = run_serial(exp, exp.config("quick"), tmp_path / name)
    assert res.passed, [c for c in res.checks if not c.passed]
    assert all(p.exists() and p.with_suffix(".pdf").exists() for p in res.figures)


def test_flow_integrator_accuracy_and_stall_guard():
    """The stepping driver matches exp(-lambda t); a rhs with noise above atol stalls and is stopped, not run forever."""
    from nearopt.dynamics.train import MAX_FLOW_JACOBIANS, _integrate

    lam = np.array([1.0, 1e-3, 1e-6])
    t = np.concatenate([[0.0], np.logspace(-2, 6, 30)])
    jac = lambda s, y: -np.diag(lam)
    Y, stop = _integrate(lambda s, y: -lam * y, jac, np.ones(3), t, "BDF", 1e-9, 1e-14)
    assert stop is None and np.max(np.abs(Y - np.exp(-np.outer(t, lam)))) < 1e-7
    rng = np.random.default_rng(0)
    calls = []

    def counting_jac(s, y):
        calls.append(s)
        return jac(s, y)

    Y, stop = _integrate(lambda s, y: -lam * y + 1e-9 * rng.standard_normal(3), counting_jac, np.ones(3), t, "BDF", 1e-12, 1e-16)
    assert stop is not None and 0 < stop[0] < t[-1] and "Jacobians" in stop[1]
    assert len(calls) == MAX_FLOW_JACOBIANS + 1
    after = t > stop[0]
    assert np.all(np.isnan(Y[after])) and np.all(np.isfinite(Y[~after]))
