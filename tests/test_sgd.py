"""SGD near the optimum: simulation, exact and spectral second-moment predictions (docs/sgd.md)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import erf as erf_fn

import nearopt as no
from nearopt.cli import main
from nearopt.curvature.population import PopulationHessian
from nearopt.dynamics.ode import committee_ode, embedded_teacher, i2, i3, i4, j2, ode_near_optimum
from nearopt.dynamics.sgd import PopulationLoss, record_steps, run_sgd, simulate_sgd
from nearopt.dynamics.sgd_predict import (
    exact_model,
    problem_spectrum,
    spectral_critical_lr,
    spectral_model,
    spectral_stationary_loss,
    spectrum_model,
    stationary_factor,
)
from nearopt.errors import NearoptError
from nearopt.gaussian.objective import population_loss
from nearopt.model.problem import GaussianInputs, Problem


def dense_recursion(H: np.ndarray, m4, lr: float, batch: int, noise: float, sigma0: float, steps: int) -> np.ndarray:
    """Independent ``P x P`` iteration of ``S' = S - eta(HS + SH) + eta^2[(1-1/B) HSH + M4(S)/B + sigma^2/B H]``."""
    S = sigma0**2 * np.eye(H.shape[0])
    out = [0.5 * np.trace(H @ S)]
    for _ in range(steps):
        S = S - lr * (H @ S + S @ H) + lr**2 * ((1 - 1 / batch) * H @ S @ H + m4(S) / batch + noise**2 / batch * H)
        out.append(0.5 * np.trace(H @ S))
    return np.array(out)


@pytest.mark.parametrize("ni,nh,trained", [(4, 3, "both"), (3, 5, "both"), (5, 2, "first"), (4, 3, "second")])
def test_linear_exact_equals_spectral_equals_dense(ni, nh, trained):
    net = no.sample_teacher(ni, nh, "linear", seed=1)
    pr = Problem(net, trained=trained)
    ex = exact_model(pr, closed_form=False)  # the quadrature route, not the Gaussian shortcut
    sp = spectrum_model(problem_spectrum(pr))
    H = PopulationHessian(pr).to_dense()
    gauss = lambda S: 2 * H @ S @ H + np.trace(H @ S) * H  # J = B x is Gaussian
    lr, B, noise, s0 = 0.4 * sp.critical_lr(2), 2, 0.3, 0.1
    ref = dense_recursion(H, gauss, lr, B, noise, s0, 60)
    t = np.arange(61)
    np.testing.assert_allclose(ex.curve(lr, B, t, sigma0=s0, noise=noise), ref, rtol=1e-11)
    np.testing.assert_allclose(sp.curve(lr, B, t, sigma0=s0, noise=noise), ref, rtol=1e-11)
    assert ex.critical_lr(B) == pytest.approx(sp.critical_lr(B), rel=1e-9)
    assert sp.critical_lr(B, method="radius") == pytest.approx(sp.critical_lr(B), rel=1e-9)
    assert ex.stationary_loss(lr, B, noise) == pytest.approx(sp.stationary_loss(lr, B, noise), rel=1e-10)


def test_erf_exact_m4_against_full_quadrature():
    """The row-space reduction + Wick complement against a plain tensor rule over all N_i inputs."""
    net = no.sample_teacher(3, 2, "erf", seed=2)  # rank W1 = 2, one complement direction
    ex = exact_model(net)
    assert ex.info["quadrature_error"] < 1e-6
    x, w = np.polynomial.hermite_e.hermegauss(40)
    w = w / math.sqrt(2 * math.pi)
    X = np.stack(np.meshgrid(x, x, x, indexing="ij"), -1).reshape(-1, 3)
    Wt = np.prod(np.stack(np.meshgrid(w, w, w, indexing="ij"), -1).reshape(-1, 3), 1)
    J = np.asarray(no.jacobian(net, X))  # (Q, P)
    H = J.T @ (Wt[:, None] * J)

    def m4(S):
        a = np.einsum("qi,ij,qj->q", J, S, J)
        return J.T @ ((Wt * a)[:, None] * J)

    lr, B = 0.5 * ex.critical_lr(1), 1
    ref = dense_recursion(H, m4, lr, B, 0.2, 0.05, 40)
    np.testing.assert_allclose(ex.curve(lr, B, np.arange(41), sigma0=0.05, noise=0.2), ref, rtol=1e-6)


@settings(max_examples=25, deadline=None)
@given(
    lam=st.lists(st.floats(1e-3, 5.0), min_size=1, max_size=6),
    counts=st.lists(st.integers(1, 50), min_size=6, max_size=6),
    batch=st.integers(1, 16),
    frac=st.floats(0.05, 0.9),
)
def test_spectral_closed_forms(lam, counts, batch, frac):
    lam = np.array(lam)
    n = np.array(counts[: lam.size])
    model = spectral_model(lam, n)
    crit = spectral_critical_lr(lam, n, batch)
    # independent: the spectral radius of the recursion reaches 1 there
    assert model.spectral_radius(crit * (1 - 1e-7), batch) < 1.0 <= model.spectral_radius(crit * (1 + 1e-7), batch) + 1e-12
    assert model.critical_lr(batch, method="radius") == pytest.approx(crit, rel=1e-7)
    lr, noise = frac * crit, 0.7
    closed = spectral_stationary_loss(lam, n, lr, batch, noise)
    # independent: the fixed point of the diagonal recursion (multiplicities expanded) by a linear solve
    lam_all = np.repeat(lam, n)
    T = np.diag(1 - 2 * lr * lam_all + lr**2 * lam_all**2 * (1 + 1 / batch)) + lr**2 / batch * np.outer(lam_all, lam_all)
    s = np.linalg.solve(np.eye(lam_all.size) - T, lr**2 / batch * noise**2 * lam_all)
    assert 0.5 * lam_all @ s == pytest.approx(closed, rel=1e-8)
    assert model.stationary_loss(lr, batch, noise) == pytest.approx(closed, rel=1e-9)
    assert stationary_factor(lam, n, crit, batch) == pytest.approx(1.0, rel=1e-6)


def test_exact_stationary_and_critical_against_linear_map():
    net = no.sample_teacher(3, 2, "erf", seed=0)
    ex = exact_model(net)
    B, noise = 2, 0.5
    crit = ex.critical_lr(B)
    lr = 0.6 * crit
    # independent: eigenvalues of the map applied to a basis, and (I - T)^{-1} b by a linear solve
    D = ex.size
    T = np.stack([ex.operator(lr, B) @ e for e in np.eye(D)], 1)
    assert np.max(np.abs(np.linalg.eigvals(T))) < 1
    Tc = ex.operator(crit, B)
    assert np.max(np.abs(np.linalg.eigvals(Tc))) == pytest.approx(1.0, abs=1e-8)
    s = np.linalg.solve(np.eye(D) - T, lr**2 * noise**2 / B * ex.h)
    assert ex.stationary_loss(lr, B, noise) == pytest.approx(0.5 * ex.h @ s, rel=1e-10)
    late = ex.curve(lr, B, [20000], sigma0=0.01, noise=noise)[0]
    assert late == pytest.approx(0.5 * ex.h @ s, rel=1e-6)


@pytest.mark.parametrize("act", ["erf", "erf:unit", "relu", "linear", "quadratic", "polynomial:0,1,0.5", "tanh"])
def test_population_loss_closed_forms(act):
    net = no.sample_teacher(4, 3, act, seed=3)
    pr = Problem(net)
    loss = PopulationLoss(pr, torch.device("cpu"))
    rng = np.random.default_rng(0)
    W1 = net.W1 + 0.2 * rng.standard_normal((4, 3, 4))
    v = net.W2.ravel() + 0.2 * rng.standard_normal((4, 3))
    got = loss(torch.as_tensor(W1), torch.as_tensor(v)).numpy()
    ref = [population_loss(Problem(net, student=no.TwoLayerNet(W1[i], v[i][None], net.activation))) for i in range(4)]
    np.testing.assert_allclose(got, ref, rtol=1e-11)  # one kernel (closed form or checked quadrature) under both


def test_population_loss_under_covariance_matches_whitened():
    net = no.sample_teacher(3, 2, "erf", seed=0)
    law = GaussianInputs.spiked(3, [2.0], seed=1)
    L = law.sqrt_factor()
    rng = np.random.default_rng(1)
    W1, v = net.W1 + 0.1 * rng.standard_normal((2, 3)), net.W2.ravel() + 0.1 * rng.standard_normal(2)
    got = PopulationLoss(Problem(net, inputs=law), torch.device("cpu"))(torch.as_tensor(W1[None]), torch.as_tensor(v[None]))[0]
    white = no.TwoLayerNet(net.W1 @ L, net.W2, net.activation)
    ref = population_loss(Problem(white, student=no.TwoLayerNet(W1 @ L, v[None], net.activation)))
    assert float(got) == pytest.approx(ref, rel=1e-12)


@pytest.mark.parametrize("sigma0,noise", [(0.05, 0.0), (0.01, 0.01)])
def test_erf_simulation_within_error_bars_of_exact(sigma0, noise):
    net = no.sample_teacher(3, 2, "erf", seed=0)
    ex = exact_model(net)
    lr = 0.6 * ex.critical_lr(1)
    res = run_sgd(net, lr=lr, batch=1, steps=400, sigma0=sigma0, noise=noise, runs=800, seed=1, points=10)
    z = np.abs(res.simulation.mean - res.exact["curve"]) / res.simulation.sem
    assert np.mean(z[1:] <= 3.0) >= 0.9 and np.all(z[1:] <= 4.0), z
    assert np.all(res.simulation.reliable)


def test_linear_simulation_matches_prediction_with_noise_and_batches():
    net = no.sample_teacher(3, 2, "linear", seed=0)
    res = run_sgd(net, lr=0.05, batch=4, steps=300, sigma0=0.05, noise=0.3, runs=400, seed=2, points=8)
    np.testing.assert_allclose(res.exact["curve"], res.spectral["curve"], rtol=1e-10)
    assert res.within_error_bars(3.0).mean() >= 0.85


@pytest.mark.parametrize("trained,noise", [("both", 0.0), ("second", 0.05)])
def test_fixed_training_set_against_its_recursion(trained, noise):
    """With replacement on N = 30 samples (label noise drawn once): simulation vs the dense recursion over that set."""
    pr = Problem(no.sample_teacher(3, 2, "erf", seed=0), trained=trained)
    res = run_sgd(pr, lr=0.3, batch=2, steps=300, sigma0=0.02, noise=noise, runs=400, sampling="replacement", samples=30, points=6, seed=3)
    z = np.abs(res.simulation.mean - res.exact["curve"]) / res.simulation.sem
    assert np.all(z <= 3.5), z
    assert res.spectral is None and res.exact["critical_lr"] is None


def test_epochs_and_trained_blocks_simulated():
    net = no.sample_teacher(3, 2, "erf", seed=0)
    pr = Problem(net, trained="first")
    for sampling in ("replacement", "epochs"):
        sim = simulate_sgd(pr, lr=0.3, batch=3, steps=50, sigma0=0.05, runs=8, sampling=sampling, samples=20, points=5)
        assert np.all(np.isfinite(sim.mean)) and sim.mean[-1] < sim.mean[0]
    res = run_sgd(pr, lr=0.3, steps=20, runs=4, sampling="epochs", samples=20, points=3)
    assert res.exact is None and any("epochs" in w for w in res.warnings)


def test_seeded_and_divergence_reported():
    net = no.sample_teacher(3, 2, "erf", seed=0)
    a = simulate_sgd(net, lr=0.2, steps=30, runs=5, seed=7, points=4)
    b = simulate_sgd(net, lr=0.2, steps=30, runs=5, seed=7, points=4)
    np.testing.assert_array_equal(a.loss, b.loss)
    crit = exact_model(net).critical_lr(1)
    with pytest.warns(UserWarning, match="critical"):
        res = run_sgd(net, lr=3 * crit, steps=3000, runs=20, sigma0=0.05, seed=0, points=6)
    assert res.simulation.diverged.any() and not np.isfinite(res.simulation.mean[-1])
    assert res.exact["stationary_loss"] == math.inf


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"lr": 0.0}, "learning rate"),
        ({"lr": -1.0}, "learning rate"),
        ({"lr": 0.1, "batch": 0}, "batch size"),
        ({"lr": 0.1, "noise": -0.1}, "label noise"),
        ({"lr": 0.1, "runs": 10**9, "batch": 10**6}, "memory|GB|MB"),
        ({"lr": 0.1, "sampling": "epochs"}, "training set"),
    ],
)
def test_bad_input(kwargs, match):
    net = no.sample_teacher(3, 2, "erf", seed=0)
    with pytest.raises(NearoptError, match=match):
        simulate_sgd(net, **kwargs)


def test_exact_refuses_what_it_cannot_do():
    net = no.sample_teacher(3, 2, "erf", seed=0)
    with pytest.raises(NearoptError, match="isotropic"):
        exact_model(Problem(net, inputs=GaussianInputs.spiked(3, [1.0])))
    far = no.TwoLayerNet(net.W1 + 0.1, net.W2, net.activation)
    with pytest.raises(NearoptError, match="global minimum"):
        exact_model(Problem(net, student=far))
    with pytest.raises(NearoptError, match="spectral prediction"):  # refused from the sizes, before any quadrature
        exact_model(no.sample_teacher(20, 10, "erf", seed=0))


def test_record_steps():
    t = record_steps(1000, 20)
    assert t[0] == 0 and t[-1] == 1000 and np.all(np.diff(t) > 0)


def test_cli_json_and_table(capsys):
    code = main(["sgd", "-a", "erf", "--ni", "3", "--nh", "2", "--lr", "0.2", "--steps", "50", "--runs", "16", "--points", "5", "--json"])
    out = capsys.readouterr().out
    assert code == 0
    d = json.loads(out)
    for key in ("steps", "loss", "loss_sem", "predicted", "predicted_spectral", "stationary_loss", "stationary_loss_spectral",
                "critical_lr", "critical_lr_spectral", "lr", "batch", "noise", "timings"):
        assert key in d
    assert len(d["loss"]) == len(d["steps"]) == len(d["predicted"]) and d["stationary_loss"] == 0.0
    assert main(["sgd", "-a", "linear", "--ni", "3", "--nh", "2", "--lr", "0.1", "--steps", "20", "--runs", "8", "--batch", "2", "--noise", "0.1"]) == 0
    text = capsys.readouterr().out
    assert "critical learning rate (batch 2)" in text and "stationary excess loss" in text


@pytest.mark.parametrize(
    "extra,match",
    [(["--lr", "0"], "--lr"), (["--lr", "0.1", "--batch", "0"], "--batch"), (["--lr", "0.1", "--noise", "-1"], "--noise"),
     (["--lr", "0.1", "--runs", "100000000", "--batch", "100000"], "runs")],
)
def test_cli_bad_input_one_line(capsys, extra, match):
    code = main(["sgd", "-a", "erf", "--ni", "3", "--nh", "2", "--steps", "5", *extra]) if extra[:2] != ["--lr", "0"] else None
    if code is None:
        with pytest.raises(SystemExit) as exc:
            main(["sgd", "-a", "erf", "--ni", "3", "--nh", "2", "--steps", "5", *extra])
        code = exc.value.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and match in err[0]


def test_cli_beyond_critical_with_every_run_diverged_fails(capsys):
    code = main(["sgd", "-a", "erf", "--ni", "3", "--nh", "2", "--lr", "5", "--steps", "200", "--runs", "4", "--points", "3"])
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "critical rate" in err[0] and "diverged" in captured.out


def _gauss_rule(dim: int, order: int = 16):
    x, w = np.polynomial.hermite_e.hermegauss(order)
    w = w / math.sqrt(2 * math.pi)
    grids = np.meshgrid(*([x] * dim), indexing="ij")
    wts = np.prod(np.stack(np.meshgrid(*([w] * dim), indexing="ij"), -1), -1).ravel()
    return np.stack([g.ravel() for g in grids], 1), wts


def test_committee_integrals_against_quadrature():
    rng = np.random.default_rng(0)
    A = rng.standard_normal((4, 4))
    C = A @ A.T / 4
    Z, w = _gauss_rule(4)
    U = Z @ np.linalg.cholesky(C).T
    g = lambda z: erf_fn(z / math.sqrt(2))
    gp = lambda z: math.sqrt(2 / math.pi) * np.exp(-z * z / 2)
    assert w @ (gp(U[:, 0]) * U[:, 1] * g(U[:, 2])) == pytest.approx(i3(C[0, 0], C[0, 1], C[0, 2], C[1, 2], C[2, 2]), rel=1e-6)
    ref4 = w @ (gp(U[:, 0]) * gp(U[:, 1]) * g(U[:, 2]) * g(U[:, 3]))
    assert ref4 == pytest.approx(i4(C[0, 0], C[0, 1], C[1, 1], C[0, 2], C[0, 3], C[1, 2], C[1, 3], C[2, 2], C[2, 3], C[3, 3]), rel=1e-6)
    assert w @ (gp(U[:, 0]) * gp(U[:, 1])) == pytest.approx(j2(C[0, 0], C[0, 1], C[1, 1]), rel=1e-8)
    assert w @ (g(U[:, 0]) * g(U[:, 1])) == pytest.approx(i2(C[0, 0], C[0, 1], C[1, 1]), rel=1e-8)


def test_committee_ode_fixed_point_and_large_n_limit():
    base = no.sample_teacher(2, 2, "erf", seed=1)
    ode = committee_ode(base, 1.0)
    dQ, dR, dv = ode.rhs(ode.T, ode.T.copy(), ode.u.copy())
    assert max(np.abs(dQ).max(), np.abs(dR).max(), np.abs(dv).max()) < 1e-14 and abs(ode.error(ode.T, ode.T, ode.u)) < 1e-15
    alphas = np.array([0.0, 1.0, 5.0, 20.0])
    ref = ode_near_optimum(base, lr=1.0, c=0.01, alphas=alphas)
    gaps = []
    for n in (16, 128):
        ex = exact_model(embedded_teacher(base, n))
        pred = ex.curve(1.0 / n, 1, np.round(alphas * n), sigma0=math.sqrt(0.01 / n))
        gaps.append(np.max(np.abs(pred / ref - 1)))
    assert gaps[1] < 0.1 and gaps[1] < gaps[0] / 4  # the O(1/N) approach to the ODE


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_simulation_on_gpu():
    net = no.sample_teacher(3, 2, "erf", seed=0)
    cpu = simulate_sgd(net, lr=0.2, steps=100, runs=200, seed=1, points=4)
    gpu = simulate_sgd(net, lr=0.2, steps=100, runs=200, seed=1, points=4, device="cuda")
    assert gpu.info["device"].startswith("cuda")
    np.testing.assert_allclose(gpu.loss[:, 0], cpu.loss[:, 0], rtol=1e-12)  # the same delta_0 (NumPy), other input draws
    assert abs(gpu.mean[-1] - cpu.mean[-1]) <= 4 * math.hypot(gpu.sem[-1], cpu.sem[-1])


def test_wider_student_on_the_minimum_manifold():
    """A student with one teacher unit split in two (a global minimum with a zero mode) against its exact recursion."""
    t = no.sample_teacher(3, 2, "erf", seed=0)
    v = t.W2.ravel()
    student = no.TwoLayerNet(np.vstack([t.W1, t.W1[:1]]), np.array([[0.5 * v[0], v[1], 0.5 * v[0]]]), t.activation)
    res = run_sgd(Problem(t, student=student), lr=0.2, steps=200, runs=400, sigma0=0.02, points=6, seed=2)
    z = np.abs(res.simulation.mean - res.exact["curve"]) / res.simulation.sem
    assert np.all(z <= 3.5), z
