"""Numbers that must not be silently wrong: the laws at NaN and infinity, the asymptotic law at large
weights, a population loss at a global minimum, and the thread count chosen by problem size."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
import torch
from scipy import integrate, stats

import nearopt as no
from nearopt.curvature.assembly import assemble, gaussian_pair_blocks, net_moments
from nearopt.errors import NearoptError
from nearopt.gaussian.objective import landscape_moments, nonnegative_quadratic, population_loss
from nearopt.model.network import TwoLayerNet
from nearopt.model.problem import GaussianInputs, Problem
from nearopt.resources import ENV_THREADS as ENV
from nearopt.theory.asymptotic import asymptotic_law, hermite_coefficients, unit_constants
from nearopt.theory.distributions import ChiSquareMPConvolution, MarchenkoPastur, TabulatedCDF
from nearopt.threads import PARALLEL_FROM, thread_count, threads_for


# ----------------------------------------------------------------------------- PSD at the optimum under a covariance
def _covariance(kind: str, seed: int) -> np.ndarray:
    if kind == "scaled":
        return 1e10 * np.eye(3)
    Q = np.linalg.qr(np.random.default_rng(seed).standard_normal((3, 3)))[0]
    S = Q @ np.diag([0.0, 0.0, 1e10]) @ Q.T  # rank one: whitened rows parallel with |w| ~ 1e5
    return 0.5 * (S + S.T)


@pytest.mark.parametrize("kind", ["rank-one", "scaled"])
@pytest.mark.parametrize("method", ["dense", "structured"])
def test_population_hessian_at_the_teacher_is_psd_under_a_large_covariance(kind, method):
    for seed in range(4):
        teacher = no.sample_teacher(3, 2, "erf", seed=seed)
        problem = Problem(teacher, inputs=GaussianInputs(covariance=_covariance(kind, seed)))
        spec = no.PopulationHessian(problem).spectrum(method)
        lam = spec.eigenvalues
        assert lam.min() >= -64 * np.finfo(np.float64).eps * lam.max(), (seed, lam.min(), lam.max())
        assert spec.inertia is not None and spec.inertia.negative == 0


def test_cli_calls_the_teacher_under_a_rank_one_covariance_a_minimum(tmp_path):
    import json

    from _cli import cli

    np.save(tmp_path / "S.npy", _covariance("rank-one", 0))
    code, out, err = cli("spectrum", "-a", "erf", "--ni", 3, "--nh", 2, "--population", "--input-cov", tmp_path / "S.npy", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["inertia"]["negative"] == 0
    assert "saddle" not in cli("spectrum", "-a", "erf", "--ni", 3, "--nh", 2, "--population", "--input-cov", tmp_path / "S.npy")[1]


def test_gaussian_pair_blocks_equal_the_stein_form_where_it_is_accurate():
    for act, sigma1 in (("erf", None), ("erf:unit", 2.0)):
        teacher = no.sample_teacher(6, 4, act, seed=1, sigma1=sigma1)
        m = net_moments(teacher)
        assert m.gaussian_k is not None
        stein = assemble(dataclasses.replace(m, gaussian_k=None), teacher.W1, teacher.W2.ravel())
        assert np.abs(assemble(m, teacher.W1, teacher.W2.ravel()) - stein).max() <= 1e-14 * np.abs(stein).max()


def test_gaussian_pair_blocks_keep_the_small_direction_of_wide_units():
    w = np.array([[3e5, 0.0], [6e5, 0.0]])  # parallel rows: along e_1 the block is 1 / (1 + k |A e_1|^2)
    blocks = gaussian_pair_blocks(w, 1.0)
    for a in range(2):
        for c in range(2):
            exact = 1.0 / (1.0 + w[a, 0] ** 2 + w[c, 0] ** 2)
            assert blocks[a, 0, c, 0] == pytest.approx(exact, rel=1e-12)
            assert blocks[a, 1, c, 1] == pytest.approx(1.0, rel=1e-15)


# ----------------------------------------------------------------------------- laws at NaN and infinity
_LAWS: dict = {}


def _law(name: str):
    """Each law built once per session (the asymptotic ones take seconds)."""
    if name not in _LAWS:
        _LAWS[name] = {
            "mp-1": lambda: MarchenkoPastur(1.0),
            "mp-2": lambda: MarchenkoPastur(2.0, 3.0),
            "mp-half": lambda: MarchenkoPastur(0.5),
            "chi2-mp": lambda: ChiSquareMPConvolution(4, 3),
            "asymptotic-erf": lambda: asymptotic_law("erf", 4, 3),
            "asymptotic-erf-families": lambda: asymptotic_law("erf", 4, 3, dyson=False),
            "asymptotic-relu": lambda: asymptotic_law("relu", 4, 3),
        }[name]()
    return _LAWS[name]


LAW_NAMES = ("mp-1", "mp-2", "mp-half", "chi2-mp", "asymptotic-erf", "asymptotic-erf-families", "asymptotic-relu")


@pytest.mark.parametrize("name", LAW_NAMES)
def test_every_law_is_nan_at_nan_and_exact_at_infinity_without_warnings(name):
    law = _law(name)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for fn in (law.pdf, law.cdf, law.cdf_left, law.sf):
            assert np.isnan(fn(np.nan)), fn
            out = np.asarray(fn(np.array([np.nan, 0.5])))
            assert np.isnan(out[0]) and np.isfinite(out[1])
        assert law.pdf(np.inf) == 0.0 and law.pdf(-np.inf) == 0.0
        assert law.cdf(np.inf) == 1.0 and law.cdf(-np.inf) == 0.0
        assert law.cdf_left(np.inf) == 1.0 and law.sf(np.inf) == 0.0


def test_marchenko_pastur_at_ratio_one_diverges_at_zero_without_a_warning():
    law = MarchenkoPastur(1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert law.pdf(0.0) == np.inf
        x = 1e-12  # rho_1(m) ~ 1 / (pi sqrt(m)) at the hard edge
        assert law.pdf(x) * np.pi * np.sqrt(x) == pytest.approx(1.0, rel=1e-5)
        assert law.pdf(-1.0) == 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert MarchenkoPastur(0.5).pdf(0.0) == 0.0  # outside the support (m- > 0)


def test_tabulated_density_is_nan_at_nan():
    table = TabulatedCDF(stats.norm.cdf, -5.0, 5.0, n=101)
    assert np.isnan(table.density(np.nan)) and np.isnan(table(np.nan))
    assert table.density(7.0) == 0.0


# ----------------------------------------------------------------------------- the asymptotic law at large weights
def _erf_exact(c: np.ndarray) -> dict:
    """Closed forms for ``g = erf(u / sqrt 2)``, ``u = sqrt(c) z``: E g', E g'^2, E g'^2 z^2, E g^2."""
    return {"mu1": np.sqrt(2 / np.pi) / np.sqrt(1 + c), "second": (2 / np.pi) / np.sqrt(1 + 2 * c),
            "second_z2": (2 / np.pi) * (1 + 2 * c) ** -1.5, "gg": (2 / np.pi) * np.arctan2(c, np.sqrt(1 + 2 * c))}


@pytest.mark.parametrize("c", [0.5, 30.0, 1e3, 1e6, 1e10, 1e20, 1e100])
def test_unit_constants_keep_every_digit_at_any_variance(c):
    k = unit_constants("erf", c)
    ex = _erf_exact(np.array([c]))
    assert k.mu1[0] == pytest.approx(ex["mu1"][0], rel=1e-12)
    assert k.delta[0] == pytest.approx(ex["second"][0] - ex["mu1"][0] ** 2, rel=1e-12)
    assert k.nu[0] + k.readout_linear[0] ** 2 == pytest.approx(ex["gg"][0], rel=1e-12)
    # h_1 = E[g'(u) z] = 0 (even g'); h_2 = E[g'(u) (z^2 - 1)] = -sqrt(2/pi) c / (1 + c)^(3/2)
    h = hermite_coefficients("erf", c, (1, 2))[0]
    assert abs(h[0]) <= 1e-14 * ex["mu1"][0]
    assert h[1] == pytest.approx(-np.sqrt(2 / np.pi) * c / (1 + c) ** 1.5, rel=1e-10)


def _pooled_trace(ni: int, nh: int, s1: float) -> float:
    """``E tr H / P`` of the erf population Hessian at a random teacher (``W1 ~ N(0, s1^2)``, ``W2 ~ N(0, 1/N_h)``).

    ``tr H = sum_a v_a^2 E[g'(u_a)^2 |x|^2] + E[g(u_a)^2]`` with ``|x|^2 = z^2 + chi2_{N_i - 1}``; the law of
    ``c = |w_a|^2`` is ``s1^2 chi2_{N_i}``.
    """
    def per_unit(y):
        ex = _erf_exact(s1**2 * y)
        return (1.0 / nh) * ((ni - 1) * ex["second"] + ex["second_z2"]) + ex["gg"]

    val = integrate.quad(lambda y: per_unit(y) * stats.chi2(ni).pdf(y), 0, np.inf, epsabs=1e-14, epsrel=1e-12, limit=500)[0]
    return nh * val / (nh * (ni + 1))


@pytest.mark.parametrize("s1", [1e5, 1e12])
def test_asymptotic_law_mean_is_the_pooled_trace_at_large_weights(s1):
    law = asymptotic_law("erf", 4, 3, sigma1=s1, dyson=False)
    assert law.mean() == pytest.approx(_pooled_trace(4, 3, s1), rel=1e-6)
    assert law.mu1_sq > 0  # E g' ~ 1 / sqrt(c) resolved: the linear family keeps its share of the trace


def test_asymptotic_law_refuses_constants_float64_cannot_hold():
    with pytest.raises(NearoptError, match="overflow"):
        unit_constants("monomial:3", 1e210)


# ----------------------------------------------------------------------------- a population loss is >= 0
def _split_teacher(seed: int) -> tuple[TwoLayerNet, TwoLayerNet]:
    """A teacher and a wider student at a global minimum: unit 0 split into two copies with ``r, 1 - r`` of its weight."""
    t = no.sample_teacher(5, 3, "erf", seed=seed)
    r = np.random.default_rng(seed).uniform(0.1, 0.9)
    v = t.W2.ravel()
    W2 = np.concatenate([[v[0] * r], v[1:], [v[0] * (1 - r)]])
    return t, TwoLayerNet(np.vstack([t.W1, t.W1[:1]]), W2[None, :], t.activation)


def test_population_loss_at_a_global_minimum_is_never_negative():
    losses = [population_loss(Problem(t, student=s)) for t, s in map(_split_teacher, range(20))]
    assert min(losses) >= 0.0
    assert max(losses) <= 1e-15  # zero to rounding; the rounding-level negatives (about half of these) are 0.0


def test_cli_prints_no_negative_population_loss():
    from _cli import cli

    for seed in (10, 12, 14):  # seed 10's split student has a rounding-level negative 1/2 beta^T Phi beta
        code, out, err = cli("spectrum", "-a", "erf", "--ni", 5, "--nh", 3, "--seed", seed, "--population", "--split", "0:0.3,0.7")
        assert code == 0, err
        line = next(ln for ln in out.splitlines() if ln.startswith("point"))
        assert "loss -" not in line, line


def test_population_loss_keeps_positive_values_and_real_negatives():
    t, s = _split_teacher(0)
    moved = TwoLayerNet(s.W1 + 0.1, s.W2, s.activation)
    mo = landscape_moments(Problem(t, student=moved), residual=False)
    assert population_loss(Problem(t, student=moved)) == float(0.5 * mo.beta @ mo.phi @ mo.beta) > 0
    beta = np.array([1.0, -2.0])
    assert nonnegative_quadratic(beta, -np.eye(2)) == -2.5  # not rounding: kept, never hidden


# ----------------------------------------------------------------------------- threads by problem size
@pytest.fixture
def two_threads(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_small_problems_run_on_one_thread_and_large_ones_on_the_default(two_threads):
    assert thread_count(1e4) == 1
    assert thread_count(10 * PARALLEL_FROM) == 2
    with threads_for(1e4) as n:
        assert n == 1 and torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    with threads_for(1e4, "meta"):  # not the CPU: left alone
        assert torch.get_num_threads() == 2


def test_the_solver_and_the_sgd_simulator_run_small_problems_on_one_thread(two_threads, monkeypatch):
    seen = []
    teacher = no.sample_teacher(4, 3, "erf", seed=0)
    H = no.PopulationHessian(teacher)
    original = type(H).to_dense
    monkeypatch.setattr(type(H), "to_dense", lambda self: seen.append(torch.get_num_threads()) or original(self))
    H.spectrum("dense")
    from nearopt.dynamics import sgd

    step = sgd._Simulator.step
    monkeypatch.setattr(sgd._Simulator, "step", lambda self, d: seen.append(torch.get_num_threads()) or step(self, d))
    sgd.simulate_sgd(teacher, lr=0.05, steps=3, runs=2, points=2)
    assert seen and set(seen) == {1}
    assert torch.get_num_threads() == 2


def test_nearopt_threads_overrides_the_choice_and_is_checked(two_threads, monkeypatch):
    monkeypatch.setenv(ENV, "2")
    assert thread_count(1.0) == 2
    monkeypatch.setenv(ENV, "auto")
    assert thread_count(1.0) == 1
    for bad in ("0", "-3", "two", "1.5"):
        monkeypatch.setenv(ENV, bad)
        with pytest.raises(NearoptError, match=ENV):
            thread_count(1.0)


def test_cli_refuses_a_bad_thread_setting_before_work(monkeypatch):
    from _cli import cli

    monkeypatch.setenv(ENV, "many")
    code, out, err = cli("spectrum", "-a", "erf", "--ni", 3, "--nh", 2, "--population")
    assert code == 2 and out == ""
    assert "error:" in err and ENV in err and "Traceback" not in err
