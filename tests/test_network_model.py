"""Networks with biases, several outputs and a teacher of another activation, through the one answer path.

The matrix: activation pair (teacher, student) x what the networks have (biases, outputs) x
point (the teacher, a wider random student) x inputs (isotropic, a covariance) x request
(every eigenvalue, the 3 largest, the 3 smallest), plus the loss and gradient; each pair and
set of features at two of the four (point, inputs) combinations.

The reference shares no code with the library: with ``N_i = 2`` the population is a
tensor-product Gauss-Hermite rule in the whitened inputs (``x = L z``, ``L L^T = Sigma``,
``REF_NODES^2`` points, NumPy's ``hermegauss``), and the reference Hessian is
``torch.autograd.functional.hessian`` of the loss written out here on those points.
For the smooth activations used (erf, tanh) at these weight scales (rows of norm ~0.4) the
rule is exact to about ``1e-12`` (wider units need many more nodes for tanh, whose poles at
``+-i pi / 2`` slow Gauss-Hermite down); the bar is ``1e-8`` relative.
"""

from __future__ import annotations

import functools
import json
import math
import zlib

import numpy as np
import pytest
import torch
from _cli import cli

import nearopt as no
from nearopt.curvature.population import PopulationHessian
from nearopt.gaussian.network_objective import NetworkObjective
from nearopt.model.problem import GaussianInputs, Problem

N_I, REF_NODES, RTOL = 2, 64, 1e-8
PAIRS = (("erf", "erf"), ("tanh", "tanh"), ("erf", "tanh"))
HAS = ("b1,b2", "outputs=3", "b1,b2,outputs=2")
POINTS = ("teacher", "wider")
INPUTS = ("isotropic", "covariance")
REQUESTS = ("all", "largest", "smallest")

_G = {"erf": lambda z: torch.erf(z / math.sqrt(2.0)), "tanh": torch.tanh}


def _sigma() -> np.ndarray:
    A = np.random.default_rng(5).standard_normal((N_I, N_I))
    return A @ A.T / N_I + 0.3 * np.eye(N_I)


def _net(rng: np.random.Generator, width: int, has: str, act: str) -> no.TwoLayerNet:
    M = int(has.split("outputs=")[1]) if "outputs=" in has else 1
    b = "b1" in has
    # rows of norm ~0.4: tanh's poles at +-i pi/2 then sit far enough for the reference rule to reach 1e-12
    return no.TwoLayerNet(0.4 * rng.standard_normal((width, N_I)) / math.sqrt(N_I), rng.standard_normal((M, width)) / math.sqrt(width), act,
                          0.5 * rng.standard_normal(width) if b else None, 0.3 * rng.standard_normal(M) if b else None)


@functools.cache
def _problem(pair: tuple[str, str], has: str, point: str, inputs: str) -> Problem:
    rng = np.random.default_rng(zlib.crc32(f"{pair}{has}".encode()))
    teacher = _net(rng, 3, has, pair[0])
    student = teacher if point == "teacher" else _net(rng, 4, has, pair[1])
    law = GaussianInputs(N_I) if inputs == "isotropic" else GaussianInputs(covariance=_sigma())
    return Problem(teacher, student, law)


def _params() -> list:
    """Every pair x what the networks have, each at two (point, inputs) of the four (cycled, so all four occur)."""
    out = []
    for i, pair in enumerate(PAIRS):
        for j, has in enumerate(HAS):
            for point, inputs in ((POINTS[(i + j) % 2], INPUTS[0]), ("wider", INPUTS[1])):
                if point == "teacher" and pair[0] != pair[1]:
                    point = "wider"  # a teacher of another activation is never its own student
                out.append((pair, has, point, inputs))
    return out


def _torch_net(net: no.TwoLayerNet, theta: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """The network written out: ``W2 g(W1 x + b1) + b2`` on the parameter vector (order W1, b1, W2, b2)."""
    K, M = net.n_hidden, net.n_outputs
    i = K * N_I
    W1 = theta[:i].reshape(K, N_I)
    z = X @ W1.T
    if net.b1 is not None:
        z, i = z + theta[i : i + K], i + K
    W2 = theta[i : i + M * K].reshape(M, K)
    out = _G[net.activation.name](z) @ W2.T
    return out + theta[i + M * K :] if net.b2 is not None else out


@functools.cache
def _reference(pair, has, point, inputs) -> tuple[float, np.ndarray, np.ndarray]:
    """Loss, gradient and Hessian of ``1/2 E|f_s - f_t|^2`` by the tensor Gauss-Hermite rule in ``x = L z``."""
    pr = _problem(pair, has, point, inputs)
    x, w = np.polynomial.hermite_e.hermegauss(REF_NODES)
    w = w / w.sum()
    Z = np.stack(np.meshgrid(x, x, indexing="ij"), -1).reshape(-1, N_I)
    L = np.eye(N_I) if inputs == "isotropic" else np.linalg.cholesky(_sigma())
    X = torch.as_tensor(Z @ L.T)
    weights = torch.as_tensor(np.outer(w, w).ravel())
    y = _torch_net(pr.teacher, torch.as_tensor(pr.teacher.parameters()), X)

    def loss(theta: torch.Tensor) -> torch.Tensor:
        r = _torch_net(pr.point, theta, X) - y
        return 0.5 * (weights[:, None] * r * r).sum()

    th = torch.as_tensor(pr.point.parameters())
    H = torch.autograd.functional.hessian(loss, th, vectorize=True).numpy()
    g = torch.func.grad(loss)(th).numpy()
    return float(loss(th)), g, 0.5 * (H + H.T)


@functools.cache
def _curvature(pair, has, point, inputs) -> PopulationHessian:
    return PopulationHessian(_problem(pair, has, point, inputs))


@pytest.mark.parametrize("case", _params(), ids=lambda c: f"{c[0][0]}-{c[0][1]}-{c[1]}-{c[2]}-{c[3]}")
def test_loss_gradient_and_hessian_match_the_x_space_reference(case):
    L_ref, g_ref, H_ref = _reference(*case)
    curv = _curvature(*case)
    H = curv.to_dense()
    scale = np.abs(H_ref).max()
    assert np.abs(H - H_ref).max() <= RTOL * scale
    assert abs(curv.loss - L_ref) <= RTOL * max(1.0, L_ref)
    assert np.abs(curv.gradient - g_ref).max() <= RTOL * max(1.0, np.abs(g_ref).max())


@pytest.mark.parametrize("request_name", REQUESTS)
@pytest.mark.parametrize("case", _params()[::3], ids=lambda c: f"{c[0][0]}-{c[0][1]}-{c[1]}-{c[2]}-{c[3]}")
def test_every_request_against_the_reference_eigenvalues(case, request_name):
    ref = np.linalg.eigvalsh(_reference(*case)[2])
    curv = _curvature(*case)
    scale = np.abs(ref).max()
    if request_name == "all":
        spec = curv.spectrum()
        np.testing.assert_allclose(np.sort(spec.eigenvalues), ref, atol=RTOL * scale)
        return
    # the matrix-free smallest end needs a PSD operator (the teacher); off it the request goes to the exact route
    method = "lanczos" if request_name == "largest" or case[2] == "teacher" else "auto"
    spec = curv.spectrum(method, which=request_name, k=3, tol=1e-12, **({"null_dim": 0} if request_name == "smallest" else {}))
    want = ref[-3:] if request_name == "largest" else ref[:3]
    np.testing.assert_allclose(np.sort(spec.eigenvalues), want, atol=1e-7 * scale)


@pytest.mark.parametrize("trained", ["W1,b1", "W2,b2", "b1", "first", "second"])
def test_trained_block_lists_restrict_the_hessian_to_their_entries(trained):
    pr = _problem(("tanh", "tanh"), "b1,b2,outputs=2", "wider", "covariance")
    full = PopulationHessian(pr).to_dense()
    sub = pr.replace(trained=trained)
    idx = sub.trained_indices
    np.testing.assert_allclose(PopulationHessian(sub).to_dense(), full[np.ix_(idx, idx)], rtol=0, atol=1e-13 * np.abs(full).max())
    assert sub.n_params == idx.size


def test_the_general_engine_equals_the_paper_engine_on_the_papers_networks():
    """For ``W2 g(W1 x)`` both engines apply: the kernels with means (at zero means) against the Stein-form moments."""
    t = no.sample_teacher(6, 4, "erf", seed=0)
    s = no.sample_teacher(6, 5, "erf", seed=3)
    for pr in (Problem(t, s), Problem(t, s, GaussianInputs(covariance=np.eye(6) + 0.5)), Problem(t, s, trained="first")):
        general = NetworkObjective(pr)
        paper = PopulationHessian(pr)
        assert paper.problem.is_plain
        np.testing.assert_allclose(general.hessian(), paper.to_dense(), rtol=0, atol=1e-13)
        np.testing.assert_allclose(general.gradient(), paper.gradient, rtol=0, atol=1e-13)
        assert general.loss == pytest.approx(paper.loss, rel=1e-13)


def test_the_batch_routes_take_biases_and_outputs():
    """Batch Gauss-Newton (Jacobian rows per output) equals the autodiff Hessian of the batch loss at the teacher."""
    t = _problem(("tanh", "tanh"), "b1,b2,outputs=3", "teacher", "isotropic").teacher
    X = no.sample_inputs(300, N_I, seed=2)
    gn = no.BatchGaussNewton(Problem(t), X)
    H = no.BatchHessian(Problem(t), X).to_dense()
    np.testing.assert_allclose(gn.to_dense(), H, atol=1e-13)
    V = np.random.default_rng(0).standard_normal((t.n_params, 2))
    np.testing.assert_allclose(gn @ V, H @ V, atol=1e-12)
    np.testing.assert_allclose(np.linalg.eigvalsh(H), np.sort(no.batch_spectrum(t, X).eigenvalues), atol=1e-12)


def test_routes_for_the_papers_network_only_refuse_with_the_capability_message():
    t = _problem(("erf", "erf"), "b1,b2", "teacher", "isotropic").teacher
    with pytest.raises(no.NearoptError, match="covers f\\(x\\) = W2 g\\(W1 x\\).*b1, b2.*what takes it: the population spectrum"):
        no.model.network.require_plain(t, "this route")


# ----------------------------------------------------------------------------- the command line
@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(0)
    t = _net(rng, 3, "b1,b2,outputs=2", "erf")
    s = _net(rng, 4, "b1,b2,outputs=2", "tanh")
    t.save(tmp_path / "T.npz")
    s.save(tmp_path / "S.npz")
    np.save(tmp_path / "C.npy", _sigma())
    return tmp_path, t, s


def test_cli_spectrum_contract_equals_the_api(files):
    tmp, t, s = files
    code, out, err = cli("spectrum", "--population", "--teacher", tmp / "T.npz", "-a", "tanh", "--teacher-activation", "erf",
                         "--student", tmp / "S.npz", "--input-cov", tmp / "C.npy", "--json")
    assert code == 0, err
    d = json.loads(out)
    api = PopulationHessian(Problem(t, s, GaussianInputs(covariance=_sigma()))).spectrum()
    np.testing.assert_allclose(d["eigenvalues"], api.eigenvalues, rtol=0, atol=1e-12)
    assert d["loss"] == pytest.approx(PopulationHessian(Problem(t, s, GaussianInputs(covariance=_sigma()))).loss, rel=1e-12)
    assert d["rank"] == api.rank_decision.rank and d["P"] == s.n_params


def test_cli_critical_contract_writes_the_students_biases(tmp_path):
    rng = np.random.default_rng(0)
    t = no.TwoLayerNet(rng.standard_normal((2, 4)) / 2, rng.standard_normal((2, 2)) / math.sqrt(2), "erf", 0.3 * rng.standard_normal(2),
                       0.2 * rng.standard_normal(2))
    t.save(tmp_path / "T.npz")
    code, out, err = cli("critical", "--teacher", tmp_path / "T.npz", "-a", "tanh", "--teacher-activation", "erf", "--student-width", "2",
                         "--student-seed", "1", "--save-point", tmp_path / "P.npz", "--json", "--quiet")
    assert code == 0, err
    d = json.loads(out)
    assert d["gradient_norm"] <= d["gradient_tolerance"] and d["loss"] > 0  # tanh cannot represent erf exactly
    with np.load(tmp_path / "P.npz") as z:
        assert {"W1", "b1", "W2", "b2", "teacher_activation"} <= set(z.files) and str(z["teacher_activation"]) == "erf"
    # the saved point carries its teacher: the spectrum there needs only the student's activation
    code, out, err = cli("spectrum", "--population", "--student", tmp_path / "P.npz", "-a", "tanh", "--json")
    assert code == 0, err
    assert json.loads(out)["loss"] == pytest.approx(d["loss"], rel=1e-6)


@pytest.mark.parametrize("args, needle", [
    (("--teacher-activation", "erf"), "needs a student point"),
    (("--trained", "b3"), "comma list of distinct blocks"),
])
def test_cli_refusals_are_one_line(files, args, needle):
    tmp, _, _ = files
    base = ["spectrum", "--population", "--teacher", tmp / "T.npz"]
    if "-a" not in args:
        base += ["-a", "tanh"]
    code, out, err = cli(*base, *args)
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("trained", ["both", "W1,b1", "second"])
@pytest.mark.parametrize("inputs", ["isotropic", "spiked", "covariance"])
@pytest.mark.parametrize("point", POINTS)
def test_the_structured_route_equals_the_dense_one(point, inputs, trained):
    """Rows of dimension 9 > units 7: the complement block with its multiplicity, per eigenspace of Sigma."""
    rng = np.random.default_rng(2)
    n = 9

    def net(K, act):
        return no.TwoLayerNet(rng.standard_normal((K, n)) / 3, rng.standard_normal((2, K)) / 2, act, 0.4 * rng.standard_normal(K), 0.3 * rng.standard_normal(2))

    t = net(3, "erf")
    s = t if point == "teacher" else net(4, "tanh")
    A = rng.standard_normal((n, n))
    law = {"isotropic": GaussianInputs(n), "spiked": GaussianInputs.spiked(n, [1.5, -0.5], seed=1),
           "covariance": GaussianInputs(covariance=A @ A.T / n + 0.3 * np.eye(n))}[inputs]
    curv = PopulationHessian(Problem(t, s, law, trained))
    dense = np.sort(curv.spectrum("dense").eigenvalues)
    st = curv.spectrum("structured")
    assert st.method == "structured" and st.eigenvalues.size == curv.n_params
    np.testing.assert_allclose(np.sort(st.eigenvalues), dense, rtol=0, atol=1e-12 * np.abs(dense).max())


def test_rank_of_a_two_layer_file_is_measured_and_a_formula_given_only_where_one_is_known(files):
    tmp, t, _ = files
    code, out, err = cli("rank", "--teacher", tmp / "T.npz", "-a", "erf", "--json")
    assert code == 0, err
    d = json.loads(out)
    assert d["predicted"] is None and "no rank formula is known" in d["basis"] and d["measured"] == d["n_params"] == t.n_params
    rng = np.random.default_rng(1)
    no.TwoLayerNet(rng.standard_normal((3, 6)), rng.standard_normal((2, 3)), "linear").save(tmp / "L.npz")
    code, out, err = cli("rank", "--teacher", tmp / "L.npz", "-a", "linear", "--json")
    d = json.loads(out)
    assert code == 0 and d["measured"] == d["predicted"] == 2 * (6 + 2 - 2) and d["agrees"]
