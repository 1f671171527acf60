"""Every combination of problem and question, through the one answer path, against independent references.

The matrix: curvature (batch Gauss-Newton, batch Hessian, population Hessian) x trained
block (both, first, second) x inputs (isotropic, a covariance Sigma) x point (the
teacher, a wider student on the global-minimum manifold, a student off the optimum) x
request (all eigenvalues, the 3 largest, the 3 smallest outside the null space,
eigenvectors, the density's moments).

References share no code with the routes under test: ``torch.func.hessian`` of a batch
loss written out here, ``torch.func.jacrev`` of the batch outputs for the Gauss-Newton
matrix, and ``torch.func.hessian`` of the closed-form erf population loss
``1/2 sum_ij beta_i beta_j (2/pi) arcsin(G_ij / sqrt((1 + G_ii)(1 + G_jj)))`` with
``G = Omega Sigma Omega^T`` (``g(z) = erf(z / sqrt 2)``). The batch curvatures see
``Sigma`` through their inputs ``X ~ N(0, Sigma)``.
"""

from __future__ import annotations

import functools
import json
import math

import numpy as np
import pytest
import scipy.linalg
import scipy.special
import torch
from _cli import cli
from torch import func

import nearopt as no
from nearopt.cli import main
from nearopt.model.io import to_json
from nearopt.model.problem import GaussianInputs, Problem
from nearopt.policy import RankPolicy
from nearopt.spectra import SpectrumRequest

N_I, N_H, WIDTH, SAMPLES = 5, 3, 4, 400
KINDS = ("batch-gauss-newton", "batch-hessian", "population")
TRAINED = ("both", "first", "second")
INPUTS = ("isotropic", "covariance")
POINTS = ("teacher", "wider", "off")
REQUESTS = ("all", "largest", "smallest", "vectors", "density")


def _teacher() -> no.TwoLayerNet:
    return no.sample_teacher(N_I, N_H, "erf", seed=0)


def _sigma() -> np.ndarray:
    A = np.random.default_rng(3).standard_normal((N_I, N_I))
    return A @ A.T / N_I + 0.2 * np.eye(N_I)


def _student(point: str) -> no.TwoLayerNet:
    t = _teacher()
    if point == "teacher":
        return t
    if point == "wider":  # unit 0 split in two copies with outgoing weights 0.4 v, 0.6 v: a global minimum
        W1 = np.vstack([t.W1[:1], t.W1])
        W2 = np.concatenate([0.4 * t.W2[:, :1], 0.6 * t.W2[:, :1], t.W2[:, 1:]], axis=1)
        return no.TwoLayerNet(W1, W2, t.activation)
    rng = np.random.default_rng(7)
    return no.TwoLayerNet(rng.standard_normal((WIDTH, N_I)) / math.sqrt(N_I), rng.standard_normal((1, WIDTH)) / 2, t.activation)


def _split(theta: torch.Tensor, K: int) -> tuple[torch.Tensor, torch.Tensor]:
    return theta[: K * N_I].reshape(K, N_I), theta[K * N_I :]


def _g(z: torch.Tensor) -> torch.Tensor:
    return torch.erf(z / math.sqrt(2.0))


def _inputs_X(inputs: str) -> np.ndarray:
    Z = np.random.default_rng(11).standard_normal((SAMPLES, N_I))
    return Z if inputs == "isotropic" else Z @ scipy.linalg.sqrtm(_sigma()).real


@functools.cache
def reference(kind: str, inputs: str, point: str) -> np.ndarray:
    """The dense reference over all parameters of the student (independent code, float64)."""
    t, s = _teacher(), _student(point)
    K = s.n_hidden
    theta = torch.as_tensor(s.parameters())
    Wt, vt = torch.as_tensor(t.W1), torch.as_tensor(t.W2.ravel())
    if kind == "population":
        Sig = torch.as_tensor(np.eye(N_I) if inputs == "isotropic" else _sigma())

        def loss(th):
            W, v = _split(th, K)
            Om, beta = torch.cat([W, Wt]), torch.cat([v, -vt])
            G = Om @ Sig @ Om.T
            d = 1.0 + torch.diagonal(G)
            kern = (2 / math.pi) * torch.arcsin(G / torch.sqrt(d[:, None] * d[None, :]))
            return 0.5 * beta @ kern @ beta

        return func.hessian(loss)(theta).numpy()
    X = torch.as_tensor(_inputs_X(inputs))
    y = _g(X @ Wt.T) @ vt

    def f(th):
        W, v = _split(th, K)
        return _g(X @ W.T) @ v

    if kind == "batch-gauss-newton":
        J = func.jacrev(f)(theta)
        return (J.T @ J / SAMPLES).numpy()
    return func.hessian(lambda th: 0.5 * ((f(th) - y) ** 2).mean())(theta).numpy()


def curvature(kind: str, trained: str, inputs: str, point: str):
    law = None if inputs == "isotropic" or kind != "population" else GaussianInputs(covariance=_sigma())
    problem = Problem(_teacher(), student=_student(point), inputs=law, trained=trained)
    if kind == "population":
        return no.PopulationHessian(problem)
    cls = no.BatchGaussNewton if kind == "batch-gauss-newton" else no.BatchHessian
    return cls(problem, _inputs_X(inputs))


def _request(name: str) -> SpectrumRequest:
    return {
        "all": SpectrumRequest(),
        "largest": SpectrumRequest(which="largest", k=3),
        "smallest": SpectrumRequest(which="smallest", k=3),
        "vectors": SpectrumRequest(vectors=True),
        "density": SpectrumRequest(which="density"),
    }[name]


@pytest.mark.parametrize("request_name", REQUESTS)
@pytest.mark.parametrize("point", POINTS)
@pytest.mark.parametrize("inputs", INPUTS)
@pytest.mark.parametrize("trained", TRAINED)
@pytest.mark.parametrize("kind", KINDS)
def test_every_combination_against_an_independent_reference(kind, trained, inputs, point, request_name):
    curv = curvature(kind, trained, inputs, point)
    idx = curv.problem.trained_indices
    H = reference(kind, inputs, point)[np.ix_(idx, idx)]
    H = 0.5 * (H + H.T)
    lam = scipy.linalg.eigvalsh(H)
    scale = np.abs(lam).max()
    atol = 1e-9 * scale
    request = _request(request_name)
    spec = curv.spectrum(request)
    assert spec.request == request and spec.n_params == idx.size and spec.dtype == "float64"
    if request_name in ("all", "vectors"):
        np.testing.assert_allclose(spec.eigenvalues, lam, atol=atol)
    if request_name == "largest":
        np.testing.assert_allclose(spec.eigenvalues, lam[-3:], atol=atol)
    if request_name == "smallest":  # algebraically smallest outside the null space the result itself decided
        assert spec.exact
        outside = lam[np.abs(lam) > max(spec.rank.eigenvalue_tolerance, atol)]  # the reference resolves zero to atol
        np.testing.assert_allclose(spec.eigenvalues, outside[:3], atol=atol)
        assert spec.smallest_nonzero == spec.eigenvalues[0]
    if request_name == "vectors":
        U = spec.eigenvectors
        assert U is not None and U.shape == (idx.size, idx.size)
        np.testing.assert_allclose(U.T @ U, np.eye(idx.size), atol=1e-9)
        np.testing.assert_allclose(H @ U, U * spec.eigenvalues, atol=1e-8 * scale)
    if request_name == "density":
        moments = spec.density["moments"]
        for j in (1, 2):
            assert moments[j] == pytest.approx(np.mean(lam**j), rel=1e-9, abs=1e-12 * scale**j)
    if spec.exact:  # an exact route: the inertia is the reference's, wherever the reference resolves the sign
        tol, band = spec.rank.eigenvalue_tolerance, max(spec.rank.eigenvalue_tolerance, atol)
        i = spec.inertia
        assert np.sum(lam < -band) <= i.negative <= np.sum(lam < -tol) and np.sum(lam > band) <= i.positive <= np.sum(lam > tol)
        assert spec.rank.rank == i.negative + i.positive and i.negative + i.zero + i.positive == idx.size
    _attributes_agree_with_json(spec)


def _attributes_agree_with_json(spec) -> None:
    d = spec.to_dict()
    assert d["which"] == spec.which and d["method"] == spec.method and d["P"] == spec.n_params
    assert d["rank"] == (spec.rank.rank if spec.exact else None)
    for name in ("smallest_nonzero", "largest", "condition_number"):  # nan (not known) is null in JSON
        value = getattr(spec, name)
        assert d[name] == (None if math.isnan(value) else value)
    assert d["converged"] == spec.converged
    assert d["inertia"] == (None if spec.inertia is None else spec.inertia.to_dict())
    assert np.array_equal(d["eigenvalues"], spec.eigenvalues)
    back = json.loads(to_json(d))  # the JSON the CLI writes says the same
    assert back["rank"] == d["rank"] and back["which"] == d["which"] and len(back["eigenvalues"]) == spec.eigenvalues.size


@pytest.mark.parametrize("point", POINTS)
@pytest.mark.parametrize("trained", TRAINED)
def test_forced_routes_agree_or_are_refused_with_one_message(trained, point):
    """Every route an operator offers gives the reference; the matrix-free smallest end of an indefinite one is refused."""
    for inputs in INPUTS:
        curv = curvature("population", trained, inputs, point)
        idx = curv.problem.trained_indices
        lam = scipy.linalg.eigvalsh(reference("population", inputs, point)[np.ix_(idx, idx)])
        atol = 1e-9 * np.abs(lam).max()
        for route in ("dense", "structured", "factor"):
            if curv.offers(route):
                np.testing.assert_allclose(curv.spectrum(route).eigenvalues, lam, atol=atol)
        if idx.size > 3:
            top = curv.spectrum("lanczos", which="largest", k=2, tol=1e-10)
            np.testing.assert_allclose(top.eigenvalues, lam[-2:], rtol=1e-8)
            assert not top.exact and top.accuracy["converged"]
        if curv.positive_semidefinite:
            assert lam.min() > -1e-10 * lam.max()
        elif idx.size > 3:
            with pytest.raises(no.NearoptError, match="exact routes only"):
                curv.spectrum("lanczos", which="smallest", k=2)


def test_k_at_p_goes_dense_and_beyond_p_is_refused():
    curv = curvature("population", "second", "isotropic", "teacher")  # P = 3 second-layer parameters
    spec = curv.spectrum(which="largest", k=3)
    assert spec.eigenvalues.size == 3 and spec.method in ("dense", "structured")
    with pytest.raises(no.NearoptError, match="exceeds P"):
        curv.spectrum(which="largest", k=4)


def test_smallest_at_a_saddle_is_the_most_negative():
    curv = curvature("population", "both", "covariance", "off")
    spec = curv.spectrum(which="smallest", k=2)
    assert spec.inertia.negative > 0 and spec.eigenvalues[0] < 0 and spec.eigenvalues[0] == spec.smallest_nonzero
    assert "saddle" in spec.summary() and "loss" in spec.summary()


def test_a_policy_rtol_moves_the_null_space_of_the_smallest_end():
    curv = curvature("population", "both", "isotropic", "wider")
    tight = curv.spectrum(which="smallest", k=1)
    loose = curv.spectrum(which="smallest", k=1, policy=RankPolicy(rtol=0.3))
    assert loose.eigenvalues[0] > tight.eigenvalues[0] and loose.rank.rank < tight.rank.rank


# ---------------------------------------------------------------------- the same matrix through the command line
@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("combinations")
    _teacher().save(d / "t.npz")
    _student("off").save(d / "s.npz")
    np.save(d / "cov.npy", _sigma())
    return d


@pytest.mark.parametrize("question", ["all", "largest", "smallest"])
@pytest.mark.parametrize("trained", ["both", "W1", "W2"])
@pytest.mark.parametrize("point", ["teacher", "off"])
@pytest.mark.parametrize("inputs", INPUTS)
def test_cli_population_combinations(files, capsys, question, trained, point, inputs):
    """The 36 combinations of ``spectrum --population``: every eigenvalue, the 3 largest, the 3 smallest."""
    args = ["spectrum", "-a", "erf", "--teacher", str(files / "t.npz"), "--population", "--trained", trained, "--json"]
    if point == "off":
        args += ["--student", str(files / "s.npz")]
    if inputs == "covariance":
        args += ["--input-cov", str(files / "cov.npy")]
    if question != "all":
        args += ["--which", question, "--k", "3"]
    code = main(args)
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    idx = {"both": slice(None), "W1": slice(0, (N_H if point == "teacher" else WIDTH) * N_I), "W2": slice((N_H if point == "teacher" else WIDTH) * N_I, None)}[trained]
    H = reference("population", inputs, point)
    H = H[idx, idx]
    lam = scipy.linalg.eigvalsh(0.5 * (H + H.T))
    got = np.asarray(out["eigenvalues"])
    want = {"all": lam, "largest": lam[-3:], "smallest": lam[np.abs(lam) > out["rank_tolerance"]][:3]}[question]
    np.testing.assert_allclose(got, want, atol=1e-9 * np.abs(lam).max())
    assert out["which"] == question and out["rank"] == int(np.sum(np.abs(lam) > out["rank_tolerance"]))


# ---------------------------------------------------------------------- the smallest end of full-rank erf and tanh Hessians
#: (activation, N_i, N_h, sigma2, seed): wide teachers and small |v_a| whose Hessians are full rank with
#: their smallest eigenvalues below 1e-9 lambda_max (1.9e-11 ... 8.2e-11 of it), far above rounding (P eps)
FULL_RANK = (("erf", 8, 30, 1.0, 1), ("tanh", 8, 30, 1.0, 1), ("erf", 5, 20, 0.01, 1), ("tanh", 5, 20, 0.01, 1))


def _g_np(act: str, z: np.ndarray, derivative: bool = False) -> np.ndarray:
    if act == "erf":  # g(z) = erf(z / sqrt 2)
        return math.sqrt(2 / math.pi) * np.exp(-0.5 * z * z) if derivative else scipy.special.erf(z / math.sqrt(2.0))
    return 1.0 - np.tanh(z) ** 2 if derivative else np.tanh(z)


def gauss_newton_at_teacher(act: str, W: np.ndarray, v: np.ndarray, h: float = 0.1, L: float = 10.0) -> np.ndarray:
    """``E_x[J J^T]`` ``(P, P)`` for ``x ~ N(0, I)``, assembled pair by pair: for units ``a, b`` the input splits into
    ``Q z`` on the span of ``w_a, w_b`` (``Q`` orthonormal ``(N_i, 2)``, ``z ~ N(0, I_2)``) and an independent rest, so
    ``E[phi x x^T] = Q E[phi z z^T] Q^T + E[phi] (I - Q Q^T)``; the 2-d Gaussian integrals by the trapezoidal rule
    (step ``h`` on ``[-L, L]``, exponentially accurate for these analytic integrands)."""
    K, n = W.shape
    z = np.arange(-L, L + h / 2, h)
    w = h * np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    Z = np.stack(np.meshgrid(z, z, indexing="ij"), -1).reshape(-1, 2)
    wt = np.outer(w, w).ravel()
    H = np.zeros((K * n + K, K * n + K))
    for a in range(K):
        for b in range(a, K):
            Q, _ = np.linalg.qr(np.stack([W[a], W[b]], 1))
            ua, ub = Z @ (Q.T @ W[a]), Z @ (Q.T @ W[b])
            ga, gb, da, db = _g_np(act, ua), _g_np(act, ub), _g_np(act, ua, True), _g_np(act, ub, True)
            phi = wt * da * db
            Exx = Q @ ((Z * phi[:, None]).T @ Z) @ Q.T + phi.sum() * (np.eye(n) - Q @ Q.T)
            H[a * n : (a + 1) * n, b * n : (b + 1) * n] = v[a] * v[b] * Exx
            H[b * n : (b + 1) * n, a * n : (a + 1) * n] = v[a] * v[b] * Exx.T
            H[K * n + a, K * n + b] = H[K * n + b, K * n + a] = wt @ (ga * gb)
            H[a * n : (a + 1) * n, K * n + b] = v[a] * (Q @ ((wt * da * gb) @ Z))
            H[b * n : (b + 1) * n, K * n + a] = v[b] * (Q @ ((wt * db * ga) @ Z))
    H[K * n :, : K * n] = H[: K * n, K * n :].T
    return H


@functools.cache
def full_rank_case(case: tuple) -> tuple[no.TwoLayerNet, np.ndarray]:
    act, n_i, n_h, sigma2, seed = case
    net = no.sample_teacher(n_i, n_h, act, seed=seed, sigma2=sigma2)
    return net, scipy.linalg.eigvalsh(gauss_newton_at_teacher(act, net.W1, net.W2.ravel()))


@pytest.mark.parametrize("method", ["auto", "dense", "lanczos"])
@pytest.mark.parametrize("case", FULL_RANK, ids=lambda c: f"{c[0]}-{c[1]}x{c[2]}-v{c[3]:g}")
def test_the_smallest_end_of_full_rank_hessians_skips_no_genuine_eigenvalue(case, method):
    net, lam = full_rank_case(case)
    assert 100 * net.n_params * np.finfo(float).eps < lam[0] / lam[-1] < 1e-9  # full rank, below the old zero threshold
    spec = no.PopulationHessian(net).spectrum(method, which="smallest", k=5)
    np.testing.assert_allclose(spec.eigenvalues, lam[:5], rtol=1e-4)
    assert spec.smallest_nonzero == spec.eigenvalues[0] and spec.converged
    ns = spec.null_space
    assert (ns.n_zero, ns.source, ns.clear) == (0, "predicted rank", True)
    d = spec.to_dict()
    assert d["n_zero"] == 0 and d["zero_source"] == "predicted rank" and d["null_space"]["zero_clear"]


@pytest.mark.parametrize("method", ["auto", "lanczos"])
@pytest.mark.parametrize("case", FULL_RANK[::3], ids=lambda c: f"{c[0]}-{c[1]}x{c[2]}-v{c[3]:g}")
def test_api_and_cli_give_the_same_smallest_end(tmp_path, case, method):
    net, lam = full_rank_case(case)
    net.save(tmp_path / "t.npz")
    spec = no.PopulationHessian(net).spectrum(method, which="smallest", k=5)
    code, out, _ = cli("spectrum", "-a", case[0], "--teacher", tmp_path / "t.npz", "--population", "--method", method,
                       "--which", "smallest", "--k", 5, "--json")
    assert code == 0
    d = json.loads(out)
    np.testing.assert_allclose(d["eigenvalues"], spec.eigenvalues, rtol=1e-12)
    assert (d["n_zero"], d["zero_source"], d["method"]) == (spec.null_space.n_zero, spec.null_space.source, spec.method)
    np.testing.assert_allclose(d["eigenvalues"], lam[:5], rtol=1e-4)
