"""Where the linearised predictions apply (start error, critical rates) and the time to a target loss."""

import json
import math
import warnings

import numpy as np
import pytest
from _cli import cli

import nearopt as no
from nearopt.curvature.population import population_hessian
from nearopt.dynamics import predict_mean_loss, problem_spectrum, run_dynamics, run_sgd, spectrum_model
from nearopt.dynamics import regime as rg
from nearopt.dynamics import sgd as sgd_module
from nearopt.dynamics.sgd import sgd_start_error
from nearopt.errors import NearoptError
from nearopt.gaussian.objective import population_loss
from nearopt.model.network import TwoLayerNet
from nearopt.model.problem import Problem


def _quiet_sgd(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return run_sgd(*args, **kwargs)


def _quiet_dynamics(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return run_dynamics(*args, **kwargs)


@pytest.mark.parametrize("act", ["erf", "relu", "linear"])
def test_sgd_start_error_against_population_loss_and_dense_hessian(act):
    """The start error equals |L - Q| / Q from population_loss and the dense population Hessian, on the same draws."""
    net = no.sample_teacher(3, 2, act, seed=1)
    sigma0, seed, draws = 0.05, 3, 4
    rng = np.random.default_rng([seed, 0x56D])  # simulate_sgd's delta_0
    d = rng.standard_normal((draws, net.n_params)) * sigma0
    H = population_hessian(net)
    errs = []
    for k in range(draws):
        th = net.parameters() + d[k]
        W1 = th[: net.W1.size].reshape(net.W1.shape)
        W2 = th[net.W1.size :].reshape(net.W2.shape)
        L = population_loss(Problem(net, student=TwoLayerNet(W1, W2, net.activation)))
        Q = 0.5 * d[k] @ H @ d[k]
        errs.append(abs(L - Q) / Q)
    assert sgd_start_error(net, sigma0, seed=seed, draws=draws) == pytest.approx(np.mean(errs), rel=1e-8)


def test_sgd_warns_at_large_sigma0_not_at_small():
    net = no.sample_teacher(4, 3, "erf", seed=0)
    with pytest.warns(UserWarning, match="outside the quadratic regime"):
        far = run_sgd(net, lr=0.1, steps=20, sigma0=0.1, runs=8, points=5, exact=False)
    near = _quiet_sgd(net, lr=0.1, steps=20, sigma0=1e-3, runs=8, points=5, exact=False)
    assert not far.regime["quadratic"] and far.regime["start_error"] > rg.SGD_START_LIMIT
    assert any("outside the quadratic regime" in w for w in far.warnings)
    assert near.regime["quadratic"] and near.regime["start_error"] < 0.1 * rg.SGD_START_LIMIT
    assert not any("quadratic regime" in w for w in near.warnings)
    # the start error is first order in sigma0 (the cubic term)
    assert far.regime["start_error"] / near.regime["start_error"] == pytest.approx(100.0, rel=0.3)


def test_dynamics_warns_at_large_sigma0_not_at_small():
    net = no.sample_teacher(4, 3, "erf", seed=0)
    X = no.sample_inputs(200, 4, seed=0)
    with pytest.warns(UserWarning, match="outside the quadratic regime"):
        far = run_dynamics(net, X, sigma0=0.1, draws=4, steps=30, points=8)
    near = _quiet_dynamics(net, X, sigma0=1e-4, draws=4, steps=30, points=8)
    assert not far.regime["quadratic"] and far.warnings
    assert near.regime["quadratic"] and not near.warnings
    d = far.to_dict(arrays=False)
    assert d["regime"]["start_error"] > rg.GD_START_LIMIT and d["warnings"] == far.warnings
    # independent: the batch loss at theta* + delta_0 against 1/2 delta^T H delta with the autodiff Hessian
    obj = no.dynamics.make_objective(net, X)
    spec, U = obj.eigensystem()
    c0 = far.info["c0"]
    Q = 0.5 * (c0**2 * spec.eigenvalues).sum(1)
    assert np.allclose(Q, far.predicted_draw[:, 0], rtol=1e-10)
    L = far.loss[:, 0]
    assert far.regime["start_error"] == pytest.approx(np.mean(np.abs(L - Q) / Q), rel=1e-10)
    assert d["regime"]["lr_over_critical"] == pytest.approx(far.lr * spec.largest / 2.0)


def test_lr_above_and_near_the_critical_rate():
    net = no.sample_teacher(3, 2, "linear", seed=0)
    crit = spectrum_model(problem_spectrum(net)).critical_lr(1)
    above = _quiet_sgd(net, lr=1.2 * crit, steps=5, sigma0=1e-3, runs=4, points=3)
    assert above.regime["lr_over_critical"] == pytest.approx(1.2, rel=1e-6)
    assert any("beyond the" in w for w in above.warnings)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # below the critical rate, in the quadratic regime: no warning at all
        below = run_sgd(net, lr=0.95 * crit, steps=5, sigma0=1e-3, runs=4, points=3)
    assert below.regime["lr_over_critical"] == pytest.approx(0.95, rel=1e-6) and below.regime["critical_lr_source"] == "exact"
    assert below.regime["spectral_is_exact"] and below.regime["critical_lr_note"] is None and not below.warnings


def test_relu_spectral_critical_rate_flagged():
    """ReLU: the spectral critical rate is flagged; with the exact recursion its value is given, without it the reason."""
    net = no.sample_teacher(3, 2, "relu", seed=0)
    sp = spectrum_model(problem_spectrum(net)).critical_lr(1)
    lo = rg.SPECTRAL_RATIO_RANGE["relu"][0]
    with pytest.warns(UserWarning, match="can be as low as"):
        res = run_sgd(net, lr=1.05 * lo * sp, steps=5, sigma0=1e-3, runs=4, points=3, exact=False)
    r = res.regime
    assert not r["spectral_is_exact"] and r["critical_lr_exact"] is None and r["critical_lr_source"] == "spectral"
    assert "not exact for relu" in r["critical_lr_note"] and "not built" in r["critical_lr_note"]
    # refused for its cost: the reason is stated
    big = no.sample_teacher(20, 12, "relu", seed=0)
    far = _quiet_sgd(big, lr=0.01, steps=2, sigma0=1e-3, runs=2, points=2)
    assert "not affordable here (the exact SGD recursion is out of reach" in far.regime["critical_lr_note"]
    ex = _quiet_sgd(net, lr=0.3 * sp, steps=5, sigma0=1e-3, runs=4, points=3)
    assert ex.regime["critical_lr_exact"] == pytest.approx(ex.exact["critical_lr"])
    assert f"{ex.exact['critical_lr']:.6g}" in ex.regime["critical_lr_note"]
    # the measured direction: the spectral rate overestimates ReLU's exact one
    assert ex.exact["critical_lr"] < sp


@pytest.mark.parametrize("noise", [0.0, 0.05])
def test_sgd_time_to_target_against_its_curves(noise):
    net = no.sample_teacher(3, 2, "erf", seed=0)
    res = _quiet_sgd(net, lr=0.2, steps=400, sigma0=0.01, runs=64, points=15, noise=noise, target=2e-5)
    t = res.target
    assert t["eps"] == 2e-5 and set(t["predicted"]) == {"exact", "spectral"}
    info = res.simulation.info
    for name, model in res.models.items():
        p = t["predicted"][name]
        if noise and model.stationary_loss(0.2, 1, noise) > 2e-5:
            assert not p["reached"] and p["step"] is None
            continue
        step = p["step"]
        curve = model.curve(0.2, 1, [step - 1, step], sigma0=info["sigma0"], noise=noise)
        assert curve[1] <= 2e-5 < curve[0], name
    m = t["measured"]
    steps, mean = res.simulation.steps, res.simulation.mean
    if m["reached"]:
        k = int(np.flatnonzero(steps == m["step"])[0])
        assert mean[k] <= 2e-5 and np.all(mean[:k] > 2e-5) and m["previous_record"] == steps[k - 1]
    else:
        assert np.all(mean > 2e-5)


def test_time_to_target_beyond_the_horizon_and_never():
    net = no.sample_teacher(3, 2, "linear", seed=0)
    res = _quiet_sgd(net, lr=0.1, steps=10, sigma0=0.01, runs=4, points=3, target=1e-12)
    p = res.target["predicted"]["exact"]
    assert p["reached"] and p["step"] > 10 and not res.target["measured"]["reached"]
    model = res.models["exact"]
    c = model.curve(0.1, 1, [p["step"] - 1, p["step"]], sigma0=0.01)
    assert c[1] <= 1e-12 < c[0]
    noisy = _quiet_sgd(net, lr=0.1, steps=10, sigma0=0.01, runs=4, points=3, noise=0.1, target=1e-12)
    assert noisy.target["predicted"]["exact"] == {"step": None, "method": "grid", "reached": False}


@pytest.mark.parametrize("flow", [False, True])
def test_dynamics_time_to_target_against_its_curve(flow):
    net = no.sample_teacher(4, 3, "quadratic", seed=0)
    X = no.sample_inputs(300, 4, seed=0)
    res = _quiet_dynamics(net, X, sigma0=1e-4, draws=4, flow=flow, points=20, target=1e-9)
    lam, var = res.eigenvalues, res.info["mode_variance"]
    p = res.target["predicted"]["ensemble"]
    assert p["reached"]
    if flow:
        assert p["method"] == "brent"
        assert predict_mean_loss(lam, var, res.lr, np.array([p["step"]]), True)[0] == pytest.approx(1e-9, rel=1e-8)
    else:
        assert p["method"] == "scan"
        c = predict_mean_loss(lam, var, res.lr, np.array([p["step"] - 1, p["step"]], dtype=float))
        assert c[1] <= 1e-9 < c[0]
    m = res.target["measured"]
    assert m["reached"]
    k = int(np.flatnonzero(res.times == m["step"])[0])
    assert res.mean_loss[k] <= 1e-9 < res.mean_loss[k - 1]


def test_first_step_below_scan_and_bisection_agree(monkeypatch):
    def curve(t):
        return 3.0 * 0.999 ** np.asarray(t, dtype=float)

    exact = math.ceil(math.log(1e-3 / 3.0) / math.log(0.999))
    scan = rg.first_step_below(curve, 1e-3, 100.0)
    assert scan == {"step": exact, "method": "scan", "reached": True}
    monkeypatch.setattr(rg, "SCAN_BUDGET", 10.0)
    assert rg.first_step_below(curve, 1e-3, 100.0) == {"step": exact, "method": "bisection", "reached": True}
    assert rg.first_step_below(curve, 5.0, 100.0)["step"] == 0
    assert not rg.first_step_below(lambda t: np.ones(len(t)), 0.5, 10.0, limit=1e3)["reached"]


def test_fixed_training_set_regime_and_target():
    """A fixed training set: no critical rate (keys present, null), the start error still measured, the target read from its curve."""
    net = no.sample_teacher(3, 2, "erf", seed=0)
    res = _quiet_sgd(net, lr=0.2, steps=200, sigma0=0.01, runs=16, points=10, sampling="replacement", samples=20, target=1e-5)
    r = res.regime
    assert r["critical_lr"] is None and r["lr_over_critical"] is None and r["critical_lr_source"] is None
    assert 0 < r["start_error"] < rg.SGD_START_LIMIT
    p = res.target["predicted"]["exact"]
    assert p["method"] == "records"
    curve, steps = res.exact["curve"], res.simulation.steps
    assert p["reached"] and p["previous_record"] < p["step"]
    k = int(np.flatnonzero(steps == p["step"])[0])
    assert curve[k] <= 1e-5 and np.all(curve[:k] > 1e-5)


def test_bad_target_refused_before_work():
    net = no.sample_teacher(3, 2, "erf", seed=0)
    with pytest.raises(NearoptError, match="target loss"):
        run_sgd(net, lr=0.1, steps=5, runs=2, target=-1.0)
    with pytest.raises(NearoptError, match="target loss"):
        run_dynamics(net, no.sample_inputs(50, 3, seed=0), target=0.0)


def test_cli_json_keys_and_one_line_warning(tmp_path):
    code, out, err = cli("sgd", "-a", "erf", "--ni", "3", "--nh", "2", "--lr", "0.1", "--steps", "30", "--runs", "8", "--points", "5",
                         "--sigma0", "0.2", "--target", "1e-4", "--no-exact", "--json")
    assert code == 0, err
    d = json.loads(out)
    assert {"start_error", "start_error_limit", "quadratic", "critical_lr", "lr_over_critical", "critical_lr_source",
            "critical_lr_exact", "critical_lr_spectral", "spectral_is_exact", "critical_lr_note"} <= set(d["regime"])
    assert set(d["target"]) == {"eps", "predicted", "measured", "resolution"}
    assert set(d["target"]["measured"]) == {"step", "previous_record", "reached"}
    lines = [ln for ln in err.splitlines() if "outside the quadratic regime" in ln]
    assert len(lines) == 1 and lines[0].startswith("nearopt: warning:") and "Traceback" not in err
    code, out, err = cli("dynamics", "-a", "quadratic", "--ni", "3", "--nh", "2", "--samples", "100", "--sigma0", "1e-4",
                         "--draws", "2", "--points", "10", "--target", "1e-10")
    assert code == 0, err
    assert "first step with mean loss <= 1e-10: predicted ensemble" in out and "warning" not in err
    code, out, err = cli("dynamics", "-a", "quadratic", "--ni", "3", "--nh", "2", "--samples", "100", "--sigma0", "0.1",
                         "--draws", "2", "--steps", "20", "--points", "5", "--json", "--target", "1e-3")
    assert code == 0, err
    d = json.loads(out)
    assert not d["regime"]["quadratic"] and d["warnings"] and set(d["target"]["predicted"]) == {"ensemble", "same_draws"}
    assert err.count("nearopt: warning: outside the quadratic regime") == 1


def test_unmeasured_start_error_is_said_not_fatal(monkeypatch):
    def refuse(*args, **kwargs):
        raise NearoptError("no population Hessian here")

    monkeypatch.setattr(sgd_module, "sgd_start_error", refuse)
    res = _quiet_sgd(no.sample_teacher(3, 2, "erf", seed=0), lr=0.1, steps=5, runs=2, points=2, exact=False)
    assert math.isnan(res.regime["start_error"]) and any("not measured here: no population Hessian" in w for w in res.warnings)
