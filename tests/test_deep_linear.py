"""Deep linear networks ``f(x) = W_L ... W_1 x``: the model, the exact population Hessian against an
independent reference written here, the rank formula ``q (r + K - q)``, GD near the optimum, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _cli import cli
from hypothesis import given, settings
from hypothesis import strategies as st

from nearopt.curvature.deep_linear import (
    DeepLinearHessian,
    deep_linear_factor,
    deep_linear_gauss_newton,
    deep_linear_gradient,
    deep_linear_loss,
    deep_linear_rank,
    rank_conditions,
)
from nearopt.dynamics.deep_linear import deep_linear_gd
from nearopt.errors import NearoptError
from nearopt.model.deep_linear import DeepLinearNet, DeepLinearProblem, deep_linear_depth, sample_deep_linear
from nearopt.model.problem import GaussianInputs
from nearopt.policy import RankPolicy
from nearopt.theory.rank_prediction import predict_deep_linear_rank

# -- an independent reference: the polynomial's derivatives entry by entry, in NumPy ----------------


def _chain(mats, n):
    """``M_k ... M_1`` (``n x n`` identity when empty)."""
    out = np.eye(n)
    for M in mats:
        out = M @ out
    return out


def _entries(net):
    """``(layer, i, j)`` of every parameter in the package's order (W1, ..., WL, each row-major)."""
    return [(ell, i, j) for ell, W in enumerate(net.weights) for i in range(W.shape[0]) for j in range(W.shape[1])]


def reference(net, T, Sigma):
    """``(loss, gradient, Hessian)`` of ``1/2 tr((A - T) Sigma (A - T)^T)`` by the product rule, entry by entry.

    ``dA/dW_l[i, j] = B_l[:, i] C_l[j, :]``; for ``l < m`` the second derivative by
    ``W_l[i, j]`` and ``W_m[i', j']`` is ``B_m[:, i'] M[j', i] C_l[j, :]`` with
    ``M = W_{m-1} ... W_{l+1}``; within a layer it is zero.
    """
    W = net.weights
    L = len(W)
    A = _chain(W, net.n_inputs)
    R = (A - T) @ Sigma
    B = [_chain(W[ell + 1:], W[ell].shape[0]) for ell in range(L)]
    C = [_chain(W[:ell], net.n_inputs) for ell in range(L)]
    idx = _entries(net)
    dA = np.array([np.outer(B[ell][:, i], C[ell][j, :]) for ell, i, j in idx])  # (P, K, N_i)
    loss = 0.5 * np.sum(R * (A - T))
    grad = np.einsum("pkn,kn->p", dA, R)
    H = np.einsum("pkn,nm,qkm->pq", dA, Sigma, dA)
    for p, (ell, i, j) in enumerate(idx):
        for q, (m, i2, j2) in enumerate(idx):
            if ell < m:  # the residual term couples different layers only
                M = _chain(W[ell + 1:m], W[ell].shape[0])
                H[p, q] += M[j2, i] * (B[m][:, i2] @ R @ C[ell][j, :])
                H[q, p] = H[p, q]
    return loss, grad, H


def _covariance(n, rank, seed):
    rng = np.random.default_rng(seed)
    U = np.linalg.qr(rng.standard_normal((n, n)))[0][:, :rank]
    return U @ np.diag(rng.uniform(0.5, 2.0, rank)) @ U.T


def test_the_reference_is_the_loss_it_claims():
    """The reference's gradient and Hessian against central differences of its own loss (a check of the check)."""
    net, T = sample_deep_linear((3, 2, 2), seed=0), sample_deep_linear((3, 4, 2), seed=1).end_to_end()
    Sigma = _covariance(3, 3, 0)
    _, g, H = reference(net, T, Sigma)
    theta, h = net.parameters(), 1e-5
    f = lambda t: reference(net.with_parameters(t), T, Sigma)[0]
    fd = np.array([(f(theta + h * e) - f(theta - h * e)) / (2 * h) for e in np.eye(theta.size)])
    np.testing.assert_allclose(g, fd, rtol=1e-7, atol=1e-9)
    gfun = lambda t: reference(net.with_parameters(t), T, Sigma)[1]
    fdH = np.array([(gfun(theta + h * e) - gfun(theta - h * e)) / (2 * h) for e in np.eye(theta.size)])
    np.testing.assert_allclose(H, fdH, rtol=1e-6, atol=1e-8)


# -- the model ---------------------------------------------------------------------------------------


def test_the_network_keeps_its_shapes_parameters_and_outputs():
    net = sample_deep_linear((4, 3, 5, 2), seed=3)
    assert net.depth == 3 and net.widths == (4, 3, 5, 2) and net.n_params == 12 + 15 + 10
    theta = net.parameters()
    np.testing.assert_array_equal(theta[:12], net.weights[0].ravel())
    again = net.with_parameters(theta)
    assert all(np.array_equal(a, b) for a, b in zip(again.weights, net.weights, strict=True))
    X = np.random.default_rng(0).standard_normal((7, 4))
    np.testing.assert_allclose(net.forward(X), X @ (net.weights[2] @ net.weights[1] @ net.weights[0]).T, rtol=1e-13)
    np.testing.assert_allclose(net.end_to_end(), net.weights[2] @ net.weights[1] @ net.weights[0], rtol=1e-13)
    with pytest.raises(ValueError):
        net.weights[0][0, 0] = 1.0  # read-only


@settings(max_examples=20, deadline=None)
@given(widths=st.lists(st.integers(1, 6), min_size=2, max_size=6), seed=st.integers(0, 2**16))
def test_parameters_files_and_products_agree_for_any_widths(tmp_path_factory, widths, seed):
    net = sample_deep_linear(widths, seed=seed)
    assert net.widths == tuple(widths) and net.parameters().shape == (net.n_params,)
    again = net.with_parameters(net.parameters())
    back = DeepLinearNet.load(net.save(tmp_path_factory.mktemp("w") / "n.npz"))
    for other in (again, back):
        assert other.widths == net.widths and np.array_equal(other.parameters(), net.parameters())
    X = np.random.default_rng(seed).standard_normal((3, widths[0]))
    np.testing.assert_allclose(net.forward(X), X @ net.end_to_end().T, rtol=1e-12, atol=1e-14)


def test_sampling_is_seeded_with_fan_in_variance():
    a, b = sample_deep_linear((400, 300, 2), seed=5), sample_deep_linear((400, 300, 2), seed=5)
    assert all(np.array_equal(x, y) for x, y in zip(a.weights, b.weights, strict=True))
    assert not np.array_equal(a.weights[0], sample_deep_linear((400, 300, 2), seed=6).weights[0])
    assert np.var(a.weights[0]) == pytest.approx(1 / 400, rel=0.02)
    assert np.std(sample_deep_linear((4, 3), seed=0, scale=2.0).weights[0]) > 1.0


@pytest.mark.parametrize("weights, needle", [
    ((), "at least one layer"),
    ((np.ones((3, 2)), np.ones((2, 2))), "shapes must chain"),
    ((np.ones((3, 2)), np.full((2, 3), np.nan)), "W2 contains NaN"),
    ((np.ones(3),), "W1 must be a 2-D array"),
    ((np.ones((2, 0)),), "both sides >= 1"),
    ((np.ones((2, 2)) * 1j,), "W1 must be real"),
])
def test_bad_networks_are_refused_in_one_line(weights, needle):
    with pytest.raises(NearoptError, match=needle) as exc:
        DeepLinearNet(weights)
    assert "\n" not in str(exc.value)


def test_files_round_trip_and_are_told_from_two_layer_files(tmp_path):
    net = sample_deep_linear((4, 3, 3, 2), seed=1)
    path = net.save(tmp_path / "t.npz")
    back = DeepLinearNet.load(path)
    assert back.widths == net.widths and all(np.array_equal(a, b) for a, b in zip(back.weights, net.weights, strict=True))
    assert deep_linear_depth(path) == 3
    np.savez(tmp_path / "one.npz", W1=np.ones((2, 3)))
    np.savez(tmp_path / "two.npz", W1=np.ones((2, 3)), W2=np.ones((1, 2)))
    np.savez(tmp_path / "bias.npz", W1=np.ones((2, 3)), W2=np.ones((1, 2)), b1=np.ones(2))
    assert deep_linear_depth(tmp_path / "one.npz") == 1
    assert deep_linear_depth(tmp_path / "two.npz") is None and deep_linear_depth(tmp_path / "bias.npz") is None
    np.savez(tmp_path / "gap.npz", W1=np.ones((2, 3)), W3=np.ones((2, 2)))
    with pytest.raises(NearoptError, match="without gaps"):
        deep_linear_depth(tmp_path / "gap.npz")
    np.savez(tmp_path / "deepbias.npz", W1=np.ones((2, 3)), W2=np.ones((2, 2)), W3=np.ones((1, 2)), b1=np.ones(2))
    with pytest.raises(NearoptError, match="b1"):
        DeepLinearNet.load(tmp_path / "deepbias.npz")
    np.savez(tmp_path / "chain.npz", W1=np.ones((2, 3)), W2=np.ones((2, 5)), W3=np.ones((1, 2)))
    with pytest.raises(NearoptError, match="chain.npz: W2 has 5 columns"):
        DeepLinearNet.load(tmp_path / "chain.npz")


def test_the_problem_checks_its_parts():
    t = sample_deep_linear((4, 3, 2), seed=0)
    with pytest.raises(NearoptError, match="K = 1"):
        DeepLinearProblem(t, sample_deep_linear((4, 3, 1), seed=0))
    with pytest.raises(NearoptError, match="dimension 5"):
        DeepLinearProblem(t, inputs=GaussianInputs(5))
    assert DeepLinearProblem(t).at_teacher and DeepLinearProblem(t, DeepLinearNet(t.weights)).at_teacher
    assert not DeepLinearProblem(t, sample_deep_linear((4, 5, 6, 2), seed=1)).at_teacher


# -- the Hessian against the reference ---------------------------------------------------------------

CASES = [((3, 2), 3), ((4, 3, 2), 4), ((4, 3, 2), 2), ((3, 2, 4, 1), 3), ((4, 2, 3, 2, 3), 2)]


@pytest.mark.parametrize("widths, rank", CASES)
@pytest.mark.parametrize("where", ["teacher", "student", "deeper student"])
def test_the_hessian_loss_and_gradient_match_the_reference(widths, rank, where):
    teacher = sample_deep_linear(widths, seed=0)
    student = {"teacher": teacher, "student": sample_deep_linear(widths, seed=1),
               "deeper student": sample_deep_linear((widths[0], 5, *widths[1:]), seed=2)}[where]
    Sigma = _covariance(widths[0], rank, seed=4)
    problem = DeepLinearProblem(teacher, student, GaussianInputs(covariance=Sigma))
    loss, grad, H_ref = reference(student, teacher.end_to_end(), Sigma)
    curv = DeepLinearHessian(problem)
    scale = np.abs(H_ref).max()
    np.testing.assert_allclose(curv.to_dense(), H_ref, rtol=0, atol=1e-12 * scale)
    np.testing.assert_allclose(curv.matmat(np.eye(curv.n_params)), H_ref, rtol=0, atol=1e-12 * scale)
    assert deep_linear_loss(problem) == pytest.approx(loss, rel=1e-12, abs=1e-30)
    np.testing.assert_allclose(deep_linear_gradient(problem), grad, rtol=0, atol=1e-12 * max(np.abs(grad).max(), 1e-300))
    assert curv.positive_semidefinite == (where == "teacher")


@pytest.mark.parametrize("widths, rank", CASES)
def test_the_gauss_newton_closed_form_is_the_hessian_at_the_teacher(widths, rank):
    teacher, student = sample_deep_linear(widths, seed=0), sample_deep_linear(widths, seed=7)
    law = GaussianInputs(covariance=_covariance(widths[0], rank, seed=1))
    at = DeepLinearProblem(teacher, inputs=law)
    H = DeepLinearHessian(at).to_dense()  # torch.func.hessian of the closed-form loss
    G, F = deep_linear_gauss_newton(at), deep_linear_factor(at)
    np.testing.assert_allclose(G, H, rtol=0, atol=1e-12 * np.abs(H).max())
    np.testing.assert_allclose(F.T @ F, H, rtol=0, atol=1e-12 * np.abs(H).max())
    # off the minimum: the Gauss-Newton blocks, the factor and the J^T J products agree
    off = DeepLinearProblem(teacher, student, law)
    G = deep_linear_gauss_newton(off)
    gn = DeepLinearHessian(off, residual=False)
    np.testing.assert_allclose(gn.matmat(np.eye(gn.n_params)), G, rtol=0, atol=1e-12 * np.abs(G).max())
    F = deep_linear_factor(off)
    np.testing.assert_allclose(F.T @ F, G, rtol=0, atol=1e-12 * np.abs(G).max())


# -- the rank formula ----------------------------------------------------------------------------------

def _grid():
    rng = np.random.default_rng(11)
    out = []
    for depth in range(1, 5):
        for k in (1, 2, 3):
            for _ in range(2):
                widths = (int(rng.integers(2, 6)), *(int(w) for w in rng.integers(1, 6, depth - 1)), k)
                for r in sorted({widths[0], 1, max(widths[0] - 2, 1)}):
                    out.append((widths, r))
    return out


GRID = _grid()


def _measure(problem):
    """Ranks of the Hessian at the teacher by two routes that never read the prediction."""
    dense = RankPolicy().from_eigenvalues(np.linalg.eigvalsh(DeepLinearHessian(problem).to_dense())).rank  # autodiff, eigenvalues
    return dense, deep_linear_rank(problem).measured  # singular values of the Gauss-Newton factor


@pytest.mark.parametrize("widths, r", GRID, ids=[f"{'-'.join(map(str, w))}-r{r}" for w, r in GRID])
def test_the_rank_at_the_teacher_is_q_times_r_plus_k_minus_q(widths, r):
    problem = DeepLinearProblem(sample_deep_linear(widths, seed=sum(widths)), inputs=GaussianInputs(covariance=_covariance(widths[0], r, seed=r)))
    q = min(r, widths[-1], *widths[1:-1])
    assert predict_deep_linear_rank(widths, r).rank == q * (r + widths[-1] - q)
    assert _measure(problem) == (q * (r + widths[-1] - q),) * 2
    assert rank_conditions(problem)["holds"]


@settings(max_examples=25, deadline=None)
@given(widths=st.lists(st.integers(1, 5), min_size=2, max_size=5), data=st.data())
def test_the_rank_formula_holds_for_generic_weights_and_covariances(widths, data):
    r = data.draw(st.integers(1, widths[0]))
    seed = data.draw(st.integers(0, 2**16))
    problem = DeepLinearProblem(sample_deep_linear(widths, seed=seed), inputs=GaussianInputs(covariance=_covariance(widths[0], r, seed=seed)))
    result = deep_linear_rank(problem)
    assert result.agrees and result.decision.clear, result.to_dict()


def test_the_gauss_newton_rank_of_a_generic_student_is_the_formula_too():
    teacher = sample_deep_linear((5, 3, 2), seed=0)
    student = sample_deep_linear((5, 4, 2, 3, 2), seed=1)
    off = DeepLinearProblem(teacher, student, GaussianInputs(covariance=_covariance(5, 3, seed=2)))
    s = np.linalg.svd(deep_linear_factor(off), compute_uv=False)
    assert RankPolicy().from_singular_values(s, off.n_params).rank == predict_deep_linear_rank(student.widths, 3).rank == 2 * (3 + 2 - 2)


def test_non_generic_weights_fall_below_the_formula_and_are_not_given_its_rank():
    """A product of lower rank than its smallest width (W2 of rank 1 in 4-3-3-2) leaves the formula's conditions."""
    rng = np.random.default_rng(0)
    W1, W3 = rng.standard_normal((3, 4)), rng.standard_normal((2, 3))
    W2 = np.outer(rng.standard_normal(3), rng.standard_normal(3))
    problem = DeepLinearProblem(DeepLinearNet((W1, W2, W3)))
    cond = rank_conditions(problem)
    assert not cond["holds"] and cond["rank_A"] == 1 and cond["min_width"] == 2
    dense, measured = _measure(problem)
    assert dense == measured < predict_deep_linear_rank((4, 3, 3, 2)).rank
    curv = DeepLinearHessian(problem)
    assert curv.known_rank() is None
    spec = curv.spectrum()
    assert spec.rank.rank == measured and spec.null_space.source == "rank policy"


def test_spectrum_answers_every_request_with_the_predicted_rank():
    curv = DeepLinearHessian(sample_deep_linear((12, 9, 7, 3), seed=2))
    assert curv.known_rank()[0] == predict_deep_linear_rank((12, 9, 7, 3)).rank == 3 * 12
    full = curv.spectrum()
    dense = curv.spectrum("dense")
    assert full.method == "factor" and full.rank.rank == dense.rank.rank == 36 and full.null_space.source == "predicted rank"
    np.testing.assert_allclose(full.eigenvalues, dense.eigenvalues, rtol=0, atol=1e-11 * dense.eigenvalues.max())
    nz = dense.eigenvalues[-36:]
    top = curv.spectrum("lanczos", which="largest", k=4)
    np.testing.assert_allclose(top.eigenvalues, nz[-4:], rtol=1e-8)
    bottom = curv.spectrum("lanczos", which="smallest", k=3)
    np.testing.assert_allclose(bottom.eigenvalues, nz[:3], rtol=1e-6)
    assert curv.spectrum(which="density").density is not None


def test_rank_input_errors_are_one_line():
    with pytest.raises(NearoptError, match="at least two numbers"):
        predict_deep_linear_rank((3,))
    with pytest.raises(NearoptError, match="exceeds N_i"):
        predict_deep_linear_rank((3, 2), 4)
    with pytest.raises(NearoptError, match="global minimum"):
        deep_linear_rank(DeepLinearProblem(sample_deep_linear((3, 2), seed=0), sample_deep_linear((3, 2), seed=1)))


# -- gradient descent near the optimum -----------------------------------------------------------------


@pytest.mark.parametrize("rank", [5, 3])
def test_gd_follows_the_linearised_prediction_as_sigma0_shrinks(rank):
    net = sample_deep_linear((5, 4, 3, 2), seed=0)
    law = GaussianInputs(covariance=_covariance(5, rank, seed=3))
    errors = [deep_linear_gd(net, inputs=law, steps=200, sigma0=s0, delta_seed=1).relative_error(1e-26) for s0 in (1e-3, 1e-4)]
    assert errors[1] < 5e-3
    assert 5 < errors[0] / errors[1] < 20  # the prediction is the first order: the error falls with sigma0


def test_gd_from_another_global_minimum_and_its_refusals():
    teacher = sample_deep_linear((4, 3, 2), seed=0)
    G = np.random.default_rng(1).standard_normal((3, 3)) + 3 * np.eye(3)  # W2 W1 = (W2 G^-1)(G W1): the same map
    other = DeepLinearNet((G @ teacher.weights[0], teacher.weights[1] @ np.linalg.inv(G)))
    res = deep_linear_gd(other, teacher, steps=100, sigma0=1e-5)
    assert res.relative_error(1e-28) < 1e-3 and res.loss[-1] < res.loss[0]
    with pytest.raises(NearoptError, match="not a global minimum"):
        deep_linear_gd(sample_deep_linear((4, 3, 2), seed=5), teacher)
    lam_max = DeepLinearHessian(teacher).spectrum("dense").eigenvalues[-1]
    with pytest.raises(NearoptError, match="unstable"):
        deep_linear_gd(teacher, lr=2.5 / lam_max)


# -- the command line ----------------------------------------------------------------------------------


@pytest.fixture
def files(tmp_path):
    teacher = sample_deep_linear((5, 4, 3, 2), seed=0)
    student = sample_deep_linear((5, 6, 2), seed=1)
    paths = {"t": teacher.save(tmp_path / "t.npz"), "s": student.save(tmp_path / "s.npz"), "cov": tmp_path / "c.npy"}
    Sigma = _covariance(5, 3, seed=0)
    np.save(paths["cov"], Sigma)
    return paths, teacher, student, Sigma


def test_spectrum_json_round_trip(files):
    paths, teacher, student, Sigma = files
    code, out, err = cli("spectrum", "--population", "--teacher", paths["t"], "-a", "linear", "--json")
    data = json.loads(out)
    assert code == 0 and not err
    H = reference(teacher, teacher.end_to_end(), np.eye(5))[2]
    np.testing.assert_allclose(data["eigenvalues"], np.linalg.eigvalsh(H), rtol=0, atol=1e-11 * np.abs(H).max())
    assert data["rank"] == predict_deep_linear_rank((5, 4, 3, 2)).rank == 10 and data["loss"] == 0.0 and data["widths"] == [5, 4, 3, 2]
    code, out, _ = cli("spectrum", "--population", "--teacher", paths["t"], "--student", paths["s"], "--input-cov", paths["cov"], "-a", "linear", "--json")
    data = json.loads(out)
    loss, _, H = reference(student, teacher.end_to_end(), Sigma)
    assert code == 0 and data["loss"] == pytest.approx(loss, rel=1e-12) and data["P"] == student.n_params
    np.testing.assert_allclose(data["eigenvalues"], np.linalg.eigvalsh(H), rtol=0, atol=1e-11 * np.abs(H).max())
    assert data["rank"] == RankPolicy().from_eigenvalues(np.linalg.eigvalsh(H)).rank
    assert data["null_space"]["zero_source"] == "rank policy"  # off the minimum the formula is not used
    code, out, _ = cli("spectrum", "--population", "--teacher", paths["t"], "--input-cov", paths["cov"], "-a", "linear", "--json",
                       "--vectors", paths["t"].parent / "v.npz")
    data = json.loads(out)
    assert data["rank"] == predict_deep_linear_rank((5, 4, 3, 2), 3).rank == 2 * (3 + 2 - 2) and data["null_space"]["zero_source"] == "predicted rank"
    with np.load(paths["t"].parent / "v.npz") as v:
        H = reference(teacher, teacher.end_to_end(), Sigma)[2]
        np.testing.assert_allclose(H @ v["eigenvectors"], v["eigenvectors"] * v["eigenvalues"], rtol=0, atol=1e-10 * np.abs(H).max())


def test_rank_command_compares_the_formula_with_the_measurement(files):
    paths, *_ = files
    code, out, _ = cli("rank", "-a", "linear", "--teacher", paths["t"], "--input-cov", paths["cov"], "--json")
    data = json.loads(out)
    assert code == 0 and data["measured"] == data["predicted"] == 6 and data["agrees"] and data["rank_sigma"] == 3
    code, out, _ = cli("rank", "-a", "linear", "--teacher", paths["t"])
    assert code == 0 and "ok: the measured rank is the prediction" in out and "measured rank  10 of P = 38" in out


@pytest.mark.parametrize("extra, needle", [
    (("spectrum", "--population", "-a", "erf"), "deep networks are linear only"),
    (("spectrum", "--samples", "20", "-a", "linear"), "--samples does not apply"),
    (("spectrum", "-a", "linear"), "add --population"),
    (("spectrum", "--population", "-a", "linear", "--student-width", "3"), "--student-width does not apply"),
    (("spectrum", "--population", "-a", "linear", "--trained", "first"), "trains all its layers"),
    (("spectrum", "--population", "-a", "linear", "--method", "structured"), "offers no structured route"),
    (("rank", "-a", "tanh"), "deep networks are linear only"),
    (("rank", "-a", "linear", "--ni", "3"), "--ni does not apply"),
])
def test_bad_deep_linear_command_lines_get_one_error_line(files, extra, needle):
    paths, *_ = files
    code, out, err = cli(*extra, "--teacher", paths["t"])
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1 and not out


def test_a_bad_deep_file_and_a_two_layer_file(tmp_path):
    np.savez(tmp_path / "gap.npz", W1=np.ones((2, 3)), W3=np.ones((1, 2)))
    code, _, err = cli("spectrum", "--population", "-a", "linear", "--teacher", tmp_path / "gap.npz")
    assert code == 2 and "without gaps" in err and len(err.strip().splitlines()) == 1
    two = tmp_path / "two.npz"
    np.savez(two, W1=np.random.default_rng(0).standard_normal((3, 4)), W2=np.ones((1, 3)))
    code, out, _ = cli("spectrum", "--population", "-a", "linear", "--teacher", two, "--json")
    data = json.loads(out)
    assert code == 0 and data["curvature"] == "population Hessian" and data["P"] == 15 and data["rank"] == 4
    code, out, err = cli("rank", "-a", "linear", "--teacher", two, "--json")  # a two-layer file: its own rank and prediction
    assert code == 0, err
    assert json.loads(out)["measured"] == json.loads(out)["predicted"] == 4
    one = tmp_path / "one.npz"
    np.savez(one, W1=np.random.default_rng(0).standard_normal((2, 3)))
    code, out, _ = cli("spectrum", "--population", "-a", "linear", "--teacher", one, "--json")
    assert code == 0 and json.loads(out)["rank"] == 6  # depth 1: H = I_K kron Sigma
    code, _, err = cli("spectrum", "--population", "-a", "erf", "--teacher", one)
    assert code == 2 and "lacks W2" in err and "-a linear" in err and len(err.strip().splitlines()) == 1
