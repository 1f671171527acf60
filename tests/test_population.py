"""Exact population Hessian, structured spectrum and matrix-free operators."""

import json

import numpy as np
import pytest
from scipy import integrate

import nearopt as no
from nearopt import curvature as empirical
from nearopt import curvature as population
from nearopt import curvature as structured
from nearopt import spectra as operators
from nearopt.cli import main
from nearopt.errors import NearoptError

ACTS = ["linear", "quadratic", "cubic", "erf", "erf:unit", "tanh", "relu"]


@pytest.mark.parametrize("act", ACTS)
def test_structured_matches_dense(act):
    net = no.sample_teacher(9, 3, act, seed=1)
    H = population.population_hessian(net)
    assert H.shape == (net.n_params, net.n_params) and np.allclose(H, H.T, atol=1e-14 * np.abs(H).max())
    dense = np.linalg.eigvalsh(H)
    res = structured.structured_spectrum(net)
    assert res.n_params == net.n_params and res.complement_multiplicity == 9 - 3
    assert np.abs(res.expand() - dense).max() <= 1e-10 * dense[-1]
    assert dense[0] > -1e-12 * dense[-1]  # PSD


@pytest.mark.parametrize("act", ["quadratic", "erf", "relu"])
def test_dense_population_matches_large_batch(act):
    """Batch Hessians converge to the population one at the Monte-Carlo rate 1/sqrt(N)."""
    net = no.sample_teacher(5, 3, act, seed=2)
    H = population.population_hessian(net)
    X = no.sample_inputs(160_000, 5, seed=3)
    errs = []
    for n in (2_500, 160_000):
        errs.append(np.linalg.norm(empirical.gauss_newton(net, X[:n]) - H) / np.linalg.norm(H))
    # sqrt(64) = 8 fewer noise; allow a factor 3 either way for one draw
    assert 8 / 3 < errs[0] / errs[1] < 8 * 3
    assert errs[1] < 20 / np.sqrt(160_000)


def test_linear_population_spectrum_is_theory():
    net = no.sample_teacher(6, 4, "linear", seed=0)
    eig = population.population_spectrum(net, method="dense").eigenvalues
    v2 = float(np.sum(net.W2**2))
    expect = np.sort(np.concatenate([v2 + np.linalg.eigvalsh(net.W1.T @ net.W1), np.zeros(net.n_params - 6)]))
    assert np.allclose(eig, expect, atol=1e-13)


@pytest.mark.parametrize(
    "act, ni, nh, rank",
    [("linear", 12, 4, 12), ("quadratic", 6, 3, 6 * 3 - 3), ("relu", 8, 3, 8 * 3 + 3 - 3), ("erf", 8, 3, 27), ("cubic", 5, 3, 15)],
)
def test_population_rank_matches_theory(act, ni, nh, rank):
    spec = population.population_spectrum(no.sample_teacher(ni, nh, act, seed=4))
    assert spec.method == "structured" and spec.samples is None
    assert spec.rank.rank == rank and spec.rank.clear
    values, counts = spec.multiplicities
    assert counts.sum() == spec.n_params and np.array_equal(np.repeat(values, counts), spec.eigenvalues)


def test_methods_agree_and_auto_picks_cheapest():
    wide = no.sample_teacher(12, 3, "erf", seed=5)
    narrow = no.sample_teacher(3, 6, "erf", seed=5)
    assert population.population_spectrum(narrow).method == "dense"
    d = population.population_spectrum(wide, method="dense")
    s = population.population_spectrum(wide, method="structured")
    assert np.abs(d.eigenvalues - s.eigenvalues).max() <= 1e-12 * d.largest and d.rank.rank == s.rank.rank
    lz = population.population_spectrum(wide, method="lanczos", k=5)
    assert lz.eigenvalues.size == 5 and np.allclose(lz.eigenvalues, d.eigenvalues[-5:], rtol=1e-9)
    out = lz.to_dict()
    assert out["P"] == wide.n_params and out["rank"] is None and out["which"] == "largest" and out["k"] == 5
    assert out["method"].startswith("arpack") and out["accuracy"]["converged"] and out["smallest_nonzero"] is None
    assert lz.largest == out["largest"] == lz.eigenvalues[-1]
    with pytest.raises(NearoptError):
        population.population_spectrum(wide, method="bogus")


def test_operators_match_dense_matrices():
    net = no.sample_teacher(7, 3, "tanh", seed=6)
    P = net.n_params
    H = population.population_hessian(net)
    op = no.PopulationHessian(net)
    assert op.shape == (P, P) and op.dtype == np.float64
    assert np.abs(op.matmat(np.eye(P)) - H).max() <= 1e-13 * np.abs(H).max()
    X = no.sample_inputs(300, 7, seed=0)
    Hb = empirical.gauss_newton(net, X)
    ob = no.BatchGaussNewton(net, X)
    x = np.random.default_rng(0).standard_normal(P)
    assert np.allclose(ob.matvec(x), Hb @ x, rtol=1e-12, atol=1e-13)
    assert np.allclose(operators.extreme_eigenvalues(op, k=3), np.linalg.eigvalsh(H)[-3:], rtol=1e-9)
    with pytest.raises(NearoptError):
        operators.extreme_eigenvalues(op, k=P)


def test_spectral_density_is_seeded_and_exact_on_moments():
    net = no.sample_teacher(8, 3, "erf", seed=7)
    H = population.population_hessian(net)
    op = no.PopulationHessian(net)
    a = operators.spectral_density(op, n_vectors=4, steps=30, seed=1)
    b = operators.spectral_density(op, n_vectors=4, steps=30, seed=1)
    assert np.array_equal(a["density"], b["density"])
    assert integrate.trapezoid(a["density"], a["grid"]) == pytest.approx(1.0, abs=1e-3)
    # the quadrature of each probe is exact for low moments: sum tau^2 theta = q^T H q
    rng = np.random.default_rng(1)
    q = rng.choice([-1.0, 1.0], size=net.n_params) / np.sqrt(net.n_params)
    ok = a["weights"][0] > 0
    assert (a["weights"][0][ok] * a["nodes"][0][ok]).sum() == pytest.approx(q @ H @ q, rel=1e-10)


def test_cli_population_json(capsys):
    code = main(["spectrum", "-a", "erf", "--ni", "10", "--nh", "4", "--population", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["samples"] is None and out["method"] == "structured" and out["P"] == 44
    assert sum(out["multiplicities"]["counts"]) == 44 and len(out["eigenvalues"]) == 44
    code = main(["spectrum", "-a", "erf", "--ni", "10", "--nh", "20", "--population", "--method", "dense", "--json"])
    assert code == 0 and json.loads(capsys.readouterr().out)["method"] == "dense"
