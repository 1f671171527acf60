"""Both ends and the density of a symmetric operator at scale: nearopt.spectra.extremes / density."""

import json

import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate

import nearopt as no
from nearopt.cli import main
from nearopt.curvature.assembly import rescaling_modes
from nearopt.curvature.population import PopulationHessian, population_hessian
from nearopt.curvature.product import PopulationProduct
from nearopt.errors import NearoptError
from nearopt.spectra import SpectrumRequest, choose_route
from nearopt.spectra.density import slq, spectral_density
from nearopt.spectra.extremes import largest_eigenpairs, smallest_eigenpairs
from nearopt.spectra.lanczos import gauss_quadrature, lanczos_tridiagonals
from nearopt.spectra.torch_ops import TorchOperator

CPU = torch.device("cpu")


def _pre(op: PopulationHessian) -> TorchOperator:
    return TorchOperator(PopulationProduct(op.net, device=CPU, moments=op.moments).precondition, op.n_params)


@settings(max_examples=8, deadline=None)
@given(act=st.sampled_from(["erf", "tanh", "relu", "quadratic"]), n_i=st.integers(1, 6), n_h=st.integers(1, 5), seed=st.integers(0, 99))
def test_population_product_and_preconditioner(act, n_i, n_h, seed):
    """The fast product equals the dense population Hessian; the preconditioner is symmetric positive definite."""
    net = no.sample_teacher(n_i, n_h, act, seed=seed)
    H = population_hessian(net)
    hvp = PopulationProduct(net, device=CPU)
    E = torch.eye(net.n_params, dtype=torch.float64)
    assert np.abs(hvp(E).numpy() - H).max() <= 1e-12 * max(np.abs(H).max(), 1e-300)
    x = np.random.default_rng(seed).standard_normal(net.n_params)
    assert np.allclose(hvp(torch.as_tensor(x)).numpy(), H @ x, rtol=1e-12, atol=1e-14)  # (P,) vectors too
    T = hvp.precondition(E).numpy()
    # SPD up to rounding: a near-linear unit (tiny w, erf) makes T ~ H^-1 with cond ~ 1e11, and then
    # its rounding shows at ~1e-7 of ||T|| (hypothesis found erf n_i=2, n_h=1, seed=33)
    assert np.abs(T - T.T).max() <= 1e-6 * np.abs(T).max()
    eig = np.linalg.eigvalsh(0.5 * (T + T.T))
    assert eig[0] > -1e-6 * eig[-1]


def test_preconditioner_is_the_structured_inverse():
    """T^{-1} = per-unit blocks of (H - A A^T) + A A^T, with A = E[J x^T] the degree-1 Hermite part."""
    net = no.sample_teacher(6, 4, "erf", seed=3)
    H = population_hessian(net)
    n_i, n_h, P = 6, 4, net.n_params
    # A from Stein's lemma with 1-D quadrature: E[g'(u)], E[g'''(u)] for u ~ N(0, |w_a|^2)
    z, wq = np.polynomial.hermite_e.hermegauss(120)
    wq = wq / wq.sum()
    A = np.zeros((P, n_i))
    for a in range(n_h):
        w, v = net.W1[a], net.W2.ravel()[a]
        q = w @ w
        u = np.sqrt(q) * z
        gp = net.activation.derivative(torch.as_tensor(u)).numpy()
        e1, e3 = gp @ wq, (gp * (u * u - q)) @ wq / q**2
        A[a * n_i : (a + 1) * n_i] = v * (e1 * np.eye(n_i) + e3 * np.outer(w, w))
        A[n_h * n_i + a] = e1 * w
    H2 = H - A @ A.T
    assert np.linalg.eigvalsh(H2)[0] > -1e-12  # Hermite orthogonality: the rest is PSD
    B = np.zeros_like(H)
    for a in range(n_h):
        idx = list(range(a * n_i, (a + 1) * n_i)) + [n_h * n_i + a]
        B[np.ix_(idx, idx)] = H2[np.ix_(idx, idx)]
    T = PopulationProduct(net, device=CPU).precondition(torch.eye(P, dtype=torch.float64)).numpy()
    assert np.allclose(T @ (B + A @ A.T), np.eye(P), atol=1e-8)


@pytest.mark.parametrize("n_i,n_h,act", [(14, 10, "erf"), (10, 14, "tanh")])
def test_smallest_and_largest_match_dense(n_i, n_h, act):
    net = no.sample_teacher(n_i, n_h, act, seed=0)
    op = PopulationHessian(net)
    exact = scipy.linalg.eigvalsh(op.to_dense())
    k = 5
    small = smallest_eigenpairs(op, k, preconditioner=_pre(op), null_dim=0, return_vectors=True)
    assert np.abs(small.values - exact[:k]).max() <= 1e-8 * exact[:k].min()
    assert small.converged and small.tolerance_reached <= 1e-6 and small.null_dim == 0 and small.null_source == "given"
    X = small.vectors
    assert X.shape == (op.n_params, k) and np.allclose(X.T @ X, np.eye(k), atol=1e-8)
    assert np.allclose(op.matmat(X), X * small.values, atol=1e-6 * small.values.max())
    large = largest_eigenpairs(op, k)
    assert np.abs(large.values - exact[-k:]).max() <= 1e-8 * exact[-1] and large.converged
    assert np.all(np.diff(small.values) >= 0) and np.all(np.diff(large.values) >= 0)


def test_null_space_deflated_three_ways():
    """ReLU: N_h exact zero modes (rescaling); given as vectors, as a dimension, or detected."""
    net = no.sample_teacher(12, 8, "relu", seed=1)
    op = PopulationHessian(net)
    H = op.to_dense()
    Z = rescaling_modes(net)
    assert np.abs(H @ Z).max() <= 1e-12 * np.abs(H).max()
    exact = scipy.linalg.eigvalsh(H)
    k, n0 = 3, 8
    want = exact[n0 : n0 + k]
    for kw, source in ((dict(null_vectors=Z), "vectors"), (dict(null_dim=n0), "given"), ({}, "detected")):
        res = smallest_eigenpairs(op, k, preconditioner=_pre(op), maxiter=600, **kw)
        assert res.null_dim == n0 and res.null_source == source, (kw.keys(), res.null_dim, res.null_source)
        assert np.abs(res.values - want).max() <= 1e-8 * want[0], (source, res.values, want)


def test_small_operator_goes_dense_and_detects_null_space():
    net = no.sample_teacher(5, 4, "quadratic", seed=2)
    op = PopulationHessian(net)
    exact = scipy.linalg.eigvalsh(op.to_dense())
    n0 = int(np.sum(exact < 1e-9 * exact[-1]))
    assert n0 == net.n_params - no.predict_rank("quadratic", 5, 4).rank
    res = smallest_eigenpairs(op, 2)
    assert res.null_dim == n0 and np.allclose(res.values, exact[n0 : n0 + 2], rtol=1e-10)


def test_bad_requests_are_one_line_errors():
    op = PopulationHessian(no.sample_teacher(3, 2, "erf", seed=0))
    with pytest.raises(NearoptError):
        smallest_eigenpairs(op, op.n_params)
    with pytest.raises(NearoptError):
        smallest_eigenpairs(op, 2, null_dim=-1)
    with pytest.raises(NearoptError):
        op.spectrum("lanczos", k=2, which="middle")
    with pytest.raises(NearoptError):
        op.spectrum("dense", n_probes=3)  # not a request option
    with pytest.raises(NearoptError):
        op.spectrum("dense", probes=3)  # an option of another request (the density)
    with pytest.raises(NearoptError):
        op.spectrum(which="largest", k=op.n_params + 1)  # more eigenvalues than P


def test_slq_moments_are_exact_traces():
    """With the identity's columns as probes, SLQ's quadrature moments are tr(H^k)/P exactly (k <= 2 steps - 1).

    A corrupted Lanczos (a wrong alpha/beta, a lost reorthogonalisation) breaks this at ~1e-10."""
    net = no.sample_teacher(6, 5, "erf", seed=4)
    H = population_hessian(net)
    P = H.shape[0]
    op = PopulationHessian(net)
    res = slq(op, probes=np.eye(P), steps=4)
    est, _ = res.moments(6)
    eig = np.linalg.eigvalsh(H)
    exact = np.array([np.mean(eig**k) for k in range(7)])
    assert np.allclose(est, exact, rtol=1e-10, atol=0)
    # random probes: each probe's quadrature reproduces q^T H^k q
    rnd = slq(op, n_probes=3, steps=5, seed=1)
    Q = np.random.default_rng(1)
    for i in range(3):
        q = Q.choice([-1.0, 1.0], size=P)
        q /= np.linalg.norm(q)
        ok = rnd.weights[i] > 0
        for k in range(1, 8):
            assert (rnd.weights[i][ok] * rnd.nodes[i][ok] ** k).sum() == pytest.approx(q @ np.linalg.matrix_power(H, k) @ q, rel=1e-10)


def test_block_lanczos_matches_single_and_detects_invariant_subspace():
    H = np.diag([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    Q0 = np.zeros((6, 2))
    Q0[:2, 0] = 1.0  # lives in a 2-dimensional invariant subspace
    Q0[:, 1] = 1.0
    alpha, beta, length = lanczos_tridiagonals(H, Q0, 6)
    assert list(length) == [2, 6]
    nodes, weights = gauss_quadrature(alpha, beta, length)
    assert np.allclose(np.sort(nodes[0, :2]), [1.0, 2.0]) and np.allclose(weights[0, :2], 0.5)
    assert np.allclose(nodes[1], np.arange(1, 7)) and np.allclose(weights.sum(axis=1), 1.0)
    a0, b0, _ = lanczos_tridiagonals(H, Q0[:, 1:], 6, reorth=False)
    assert np.allclose(a0[0], alpha[1]) and np.allclose(b0[0], beta[1])


def test_slq_density_matches_exact_histogram_with_error_bars():
    net = no.sample_teacher(16, 12, "erf", seed=0)
    op = PopulationHessian(net)
    exact = scipy.linalg.eigvalsh(op.to_dense())
    res = slq(op, n_probes=12, steps=60, seed=0)
    ks = res.ks_distance(exact)
    assert ks < 0.08, ks
    d = res.density()
    assert integrate.trapezoid(d["density"], d["grid"]) == pytest.approx(1.0, abs=2e-3)
    assert np.all(d["density_err"] >= 0) and d["density_err"].max() > 0
    m, err = res.moments(2)
    exact_m = [np.mean(exact**k) for k in range(3)]
    assert abs(m[1] - exact_m[1]) <= 5 * err[1] + 1e-12 and abs(m[2] - exact_m[2]) <= 5 * err[2] + 1e-12
    a, b = spectral_density(op, n_vectors=3, steps=20, seed=5), spectral_density(op, n_vectors=3, steps=20, seed=5)
    assert np.array_equal(a["density"], b["density"])  # seeded


def test_routes_and_cli(capsys):
    op = PopulationHessian(no.sample_teacher(10, 6, "erf", seed=0))
    exact = scipy.linalg.eigvalsh(op.to_dense())
    spec = op.spectrum("lanczos", k=3, which="smallest", null_dim=0)
    assert spec.partial and np.allclose(spec.eigenvalues, exact[:3], rtol=1e-8)
    d = spec.to_dict()
    assert d["which"] == "smallest" and d["accuracy"]["null_dim"] == 0 and d["smallest_nonzero"] == spec.eigenvalues[0]
    assert d["rank"] is None and d["largest"] is None  # a partial result knows neither
    dens = op.spectrum("slq", probes=2, steps=10).to_dict()["density"]
    assert len(dens["grid"]) == len(dens["density"]) == len(dens["density_err"])
    code = main(["spectrum", "-a", "erf", "--ni", "10", "--nh", "6", "--population", "--method", "lanczos", "--which", "smallest", "--k", "3", "--json", "--quiet"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["which"] == "smallest" and out["accuracy"]["null_dim"] == 0 and out["accuracy"]["tolerance_reached"] <= 1e-6
    assert np.allclose(out["eigenvalues"], exact[:3], rtol=1e-8) and out["eigenvalues"] == sorted(out["eigenvalues"])
    code = main(["spectrum", "-a", "relu", "--ni", "10", "--nh", "6", "--population", "--method", "lanczos", "--which", "smallest", "--k", "2", "--json", "--quiet"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["accuracy"]["null_dim"] == 6 and out["accuracy"]["null_source"] == "vectors" and out["rank"] is None
    code = main(["spectrum", "-a", "erf", "--ni", "10", "--nh", "6", "--population", "--method", "slq", "--probes", "3", "--steps", "15", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["method"] == "slq" and {"grid", "density", "density_lower", "density_upper"} <= set(out["density"])
    assert main(["spectrum", "-a", "erf", "--ni", "4", "--nh", "3", "--population", "--method", "lanczos", "--which", "smallest", "--null-dim", "99"]) == 2


def test_cli_writes_eigenvectors_on_request(tmp_path, capsys):
    """``--vectors F.npz``: the K eigenvectors of either end, eigenpairs of the dense population Hessian;
    refused up front (nothing written) where no eigenvectors would come."""
    H = PopulationHessian(no.sample_teacher(8, 5, "erf", seed=2)).to_dense()
    for which in ("smallest", "largest"):
        path = tmp_path / f"{which}.npz"
        code = main(["spectrum", "-a", "erf", "--ni", "8", "--nh", "5", "--seed", "2", "--population", "--method", "lanczos",
                     "--which", which, "--k", "3", "--vectors", str(path), "--json", "--quiet"])
        out = json.loads(capsys.readouterr().out)
        assert code == 0 and out["vectors_file"] == str(path)
        with np.load(path) as d:
            lam, U = d["eigenvalues"], d["eigenvectors"]
        assert U.shape == (H.shape[0], 3) and np.allclose(lam, out["eigenvalues"])
        assert np.allclose(U.T @ U, np.eye(3), atol=1e-10)
        assert np.linalg.norm(H @ U - U * lam, axis=0).max() <= 1e-6 * lam.max()
    for bad in (["--method", "structured"], ["--method", "slq"]):
        path = tmp_path / "refused.npz"
        code = main(["spectrum", "-a", "erf", "--ni", "8", "--nh", "5", "--population", *bad, "--vectors", str(path)])
        err = capsys.readouterr().err.strip()
        assert code == 2 and "eigenvectors" in err and len(err.splitlines()) == 1 and not path.exists()
    code = main(["spectrum", "-a", "erf", "--ni", "8", "--nh", "5", "--population", "--method", "lanczos", "--vectors", str(tmp_path / "v.txt")])
    assert code == 2 and ".npz" in capsys.readouterr().err
    (tmp_path / "f").write_text("")  # a file where the folder should be: refused before the run
    code = main(["spectrum", "-a", "erf", "--ni", "8", "--nh", "5", "--population", "--method", "lanczos", "--vectors", str(tmp_path / "f" / "v.npz")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "is a file, not a folder" in err and len(err.splitlines()) == 1


def test_route_costs_use_the_gpu_constants_on_a_gpu():
    """An operator on a GPU prices its products by the GPU's measured constants (the exact route
    diagonalises on the host either way); no GPU needed: only the device's type is read."""
    cpu = PopulationHessian(no.sample_teacher(60, 60, "erf", seed=0))
    gpu = PopulationHessian(no.sample_teacher(60, 60, "erf", seed=0))
    gpu.device = torch.device("cuda")
    for k, which in ((20, "largest"), (20, "smallest")):
        c, g = cpu.route_costs(k, which), gpu.route_costs(k, which)
        assert g["exact"] == c["exact"] and g["lanczos"] < c["lanczos"]
    tiny = PopulationHessian(no.sample_teacher(12, 3, "erf", seed=0))  # exact block of side 12: 7e-8 s
    tiny.device = torch.device("cuda")
    assert choose_route(tiny, SpectrumRequest(which="largest", k=2)) == "structured"  # launches alone cost more than the exact block


def test_auto_takes_the_cheaper_route_for_k_extremes(capsys):
    """Only k eigenvalues wanted: auto weighs the exact block against the matrix-free route."""
    small = PopulationHessian(no.sample_teacher(6, 4, "erf", seed=0))
    large = PopulationHessian(no.sample_teacher(60, 60, "erf", seed=0))  # exact block of side 3660
    assert choose_route(small, SpectrumRequest(which="largest", k=5)) == choose_route(small, SpectrumRequest()) == "structured"
    costs = large.route_costs(20, "largest")
    assert costs["lanczos"] < costs["exact"] and choose_route(large, SpectrumRequest(which="largest", k=20)) == "lanczos"
    assert choose_route(large, SpectrumRequest()) == "dense"  # the whole spectrum: always an exact route
    spec = small.spectrum("auto", k=3, which="largest", tol=1e-8)  # an exact route: the 3 largest of every eigenvalue
    assert spec.method == "structured" and spec.eigenvalues.size == 3 and spec.exact
    code = main(["spectrum", "-a", "erf", "--ni", "40", "--nh", "40", "--population", "--which", "largest", "--k", "3", "--json", "--quiet"])
    out = json.loads(capsys.readouterr().out)
    exact = np.sort(scipy.linalg.eigvalsh(PopulationHessian(no.sample_teacher(40, 40, "erf", seed=0)).to_dense()))[-3:]
    assert code == 0 and out["route_choice"]["chosen"] == "lanczos" and np.allclose(out["eigenvalues"], exact, rtol=1e-10)
    code = main(["spectrum", "-a", "erf", "--ni", "5", "--nh", "3", "--population", "--which", "smallest", "--k", "2", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["route_choice"]["chosen"] == "structured" and len(out["eigenvalues"]) == 2


def test_bottom_lives_on_the_weakest_unit():
    """The structure that makes the smallest end hard (docs/scale.md): at erf ``n = 40`` the ``N_i``
    smallest eigenvectors each carry > 90 % of their weight on one row of ``W1``, the incoming
    weights of the unit with the smallest ``|v_a|``, and the next eigenvalue lies off that row."""
    n = 40
    net = no.sample_teacher(n, n, "erf", seed=0)
    lam, U = np.linalg.eigh(PopulationHessian(net).to_dense())
    weakest = int(np.argmin(np.abs(net.W2.ravel())))
    on_row = (U[weakest * n : (weakest + 1) * n] ** 2).sum(0)
    assert on_row[:n].min() > 0.9 and on_row[n] < 0.1
    assert lam[n] > 10 * lam[n - 1]  # the next unit's eigenvalues lie an order of magnitude higher
