"""ReLU students with biases, several outputs or a teacher of another activation: the exact population route.

The reference shares no code with the library and integrates the kinks exactly. With ``N_i = 2`` and whitened
inputs ``x = L z``, ``z ~ N(0, I)``, every unit is an affine function of ``z`` whose kink is a line:

* the region integrals (loss, gradient, and the Hessian's almost-everywhere part: ``torch.autograd`` of the loss
  written out here) are iterated, ``z2`` inside split where the kink lines cross it, ``z1`` outside split where
  two kink lines intersect (Gauss–Legendre on every piece, whose integrand is then analytic);
* the Hessian's delta part, ``sum_m V_mi E[r_m(x) delta(u_i) (x, 1)(x, 1)^T]`` in the ``(W1[i], b1[i])`` block of
  each student unit, is a line integral along the kink line ``u_i = 0``, split where other kink lines cross it.

Two resolutions of the reference (16 and 24 nodes per piece) agree to ``3e-13`` relative to the largest entry
(measured), and the library agrees with it to ``5e-13``; the bar is ``1e-11``.
"""

from __future__ import annotations

import functools
import json
import math

import numpy as np
import pytest
import torch
from _cli import cli

import nearopt as no
from nearopt.curvature.population import PopulationHessian
from nearopt.gaussian.network_objective import NetworkObjective
from nearopt.model.problem import GaussianInputs, Problem

N_I, RTOL, R_MAX, PANEL = 2, 1e-11, 10.0, 0.5
_G = {"relu": torch.relu, "erf": lambda z: torch.erf(z / math.sqrt(2.0)), "tanh": torch.tanh}


def _sigma() -> np.ndarray:
    return np.array([[1.3, 0.4], [0.4, 0.6]])


def _net(rng, width: int, M: int, act: str, b1: bool, b2: bool) -> no.TwoLayerNet:
    return no.TwoLayerNet(rng.standard_normal((width, N_I)) / math.sqrt(N_I), rng.standard_normal((M, width)) / math.sqrt(width), act,
                          0.5 * rng.standard_normal(width) if b1 else None, 0.3 * rng.standard_normal(M) if b2 else None)


#: (teacher activation, width, M, b1, b2, inputs): a ReLU student of width 3 at a random point
CASES = {
    "erf-teacher-b1b2-M2-iso": ("erf", 2, 2, True, True, "isotropic"),
    "erf-teacher-b1b2-M1-cov": ("erf", 2, 1, True, True, "covariance"),
    "tanh-teacher-b2-M1-iso": ("tanh", 2, 1, False, True, "isotropic"),
    "relu-teacher-b1b2-M3-cov": ("relu", 2, 3, True, True, "covariance"),
    "relu-teacher-nobias-M2-iso": ("relu", 2, 2, False, False, "isotropic"),
    "relu-teacher-b1-M1-iso": ("relu", 3, 1, True, False, "isotropic"),
}


#: where the student is: a random point, the teacher, or the teacher with unit 0 split in two (outgoing weights 0.3 / 0.7)
POINTS = ("random", "teacher", "split")


def _split(t: no.TwoLayerNet) -> no.TwoLayerNet:
    """The teacher with unit 0 duplicated, its outgoing weights shared 0.3 / 0.7: the same function (zero residual)."""
    W2 = np.hstack([t.W2, 0.7 * t.W2[:, :1]])
    W2[:, 0] *= 0.3
    return no.TwoLayerNet(np.vstack([t.W1, t.W1[:1]]), W2, "relu", None if t.b1 is None else np.append(t.b1, t.b1[0]), t.b2)


@functools.cache
def _problem(case: str, point: str = "random") -> Problem:
    act, width, M, b1, b2, inputs = CASES[case]
    rng = np.random.default_rng(len(case) * 7919 + sum(map(ord, case)))
    teacher = _net(rng, width, M, act, b1, b2)
    student = {"random": lambda: _net(rng, 3, M, "relu", b1, b2), "teacher": lambda: teacher, "split": lambda: _split(teacher)}[point]()
    law = GaussianInputs(N_I) if inputs == "isotropic" else GaussianInputs(covariance=_sigma())
    return Problem(teacher, student, law)


def _lines(pr: Problem) -> tuple[np.ndarray, np.ndarray]:
    """Every unit's affine map in ``z``: ``a`` ``(J, 2)`` (``L^T w``) and ``b`` ``(J,)``; kinks only for ReLU units."""
    L = _chol(pr)
    nets = [pr.point] + ([pr.teacher] if pr.teacher.activation.name == "relu" else [])
    a = np.vstack([n.W1 @ L for n in nets])
    b = np.concatenate([n.b1 if n.b1 is not None else np.zeros(n.n_hidden) for n in nets])
    return a, b


def _chol(pr: Problem) -> np.ndarray:
    return np.eye(N_I) if pr.inputs.isotropic else np.linalg.cholesky(_sigma())


def _panels(cuts, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss–Legendre nodes and weights (``n`` per piece) on ``[-R_MAX, R_MAX]`` split at ``cuts`` and every ``PANEL``.

    The fixed panels resolve what varies fast (a step across a steep line varies on ``|a_2| / |a_1|`` in ``z1``).
    """
    edges = np.unique(np.clip(np.concatenate([np.arange(-R_MAX, R_MAX + PANEL / 2, PANEL), cuts]), -R_MAX, R_MAX))
    x, w = np.polynomial.legendre.leggauss(n)
    lo, hi = edges[:-1, None], edges[1:, None]
    return (0.5 * (hi - lo) * (x + 1) + lo).ravel(), (0.5 * (hi - lo) * w).ravel()


def _region_rule(a: np.ndarray, b: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Points ``z`` ``(P, 2)`` and weights of ``E[F(z)]`` for ``F`` smooth between the lines ``a_i . z + b_i = 0``.

    ``int phi(z1) int F phi(z2) dz2 dz1``: the inner integral split at the lines' crossings ``z2(z1)`` (linear in
    ``z1``), so it is analytic in ``z1`` between the lines' intersections, where the outer integral is split.
    """
    crossings = []
    for i in range(len(b)):
        for j in range(i):
            A = np.array([a[i], a[j]])
            if abs(np.linalg.det(A)) > 1e-12:
                crossings.append(np.linalg.solve(A, -np.array([b[i], b[j]]))[0])
    Z, W = [], []
    for z1, w1 in zip(*_panels(crossings, n)):
        steep = np.abs(a[:, 1]) > 1e-14
        z2, w2 = _panels(-(b[steep] + a[steep, 0] * z1) / a[steep, 1], n)
        Z.append(np.column_stack([np.full_like(z2, z1), z2]))
        W.append(w1 * w2 * np.exp(-0.5 * (z1 * z1 + z2 * z2)) / (2 * math.pi))
    return np.vstack(Z), np.concatenate(W)


def _line_rule(a: np.ndarray, b: np.ndarray, i: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Points on the kink line of unit ``i`` and weights of ``E[F(z) delta(a_i . z + b_i)]`` (split where other lines cross)."""
    na = np.linalg.norm(a[i])
    z0, e = -b[i] * a[i] / na**2, np.array([-a[i, 1], a[i, 0]]) / na
    cuts = []
    for j in range(len(b)):
        den = a[j] @ e
        if j != i and abs(den) > 1e-12:
            t = -(a[j] @ z0 + b[j]) / den
            if abs(t) < R_MAX:
                cuts.append(t)
    T, Wt = _panels(cuts, n)
    scale = math.exp(-0.5 * z0 @ z0) / (math.sqrt(2 * math.pi) * na)
    return z0 + T[:, None] * e, scale * Wt * np.exp(-0.5 * T * T) / math.sqrt(2 * math.pi)


def _forward(net: no.TwoLayerNet, theta: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """``W2 g(W1 x + b1) + b2`` on the parameter vector (order W1, b1, W2, b2), written out."""
    K, M = net.n_hidden, net.n_outputs
    i = K * N_I
    z = X @ theta[:i].reshape(K, N_I).T
    if net.b1 is not None:
        z, i = z + theta[i : i + K], i + K
    out = _G[net.activation.name](z) @ theta[i : i + M * K].reshape(M, K).T
    return out + theta[i + M * K :] if net.b2 is not None else out


@functools.cache
def _reference(case: str, point: str = "random", n: int = 16) -> tuple[float, np.ndarray, np.ndarray]:
    return _reference_of(_problem(case, point), n)


def _reference_of(pr: Problem, n: int = 16) -> tuple[float, np.ndarray, np.ndarray]:
    """Loss, gradient and Hessian of ``1/2 E|f_s - f_t|^2``: the region rule plus the kink-line terms."""
    a, b = _lines(pr)
    L = _chol(pr)
    Z, w = _region_rule(a, b, n)
    X, weights = torch.as_tensor(Z @ L.T), torch.as_tensor(w)
    t_theta = torch.as_tensor(pr.teacher.parameters())

    def loss(theta: torch.Tensor) -> torch.Tensor:
        r = _forward(pr.point, theta, X) - _forward(pr.teacher, t_theta, X)
        return 0.5 * (weights[:, None] * r * r).sum()

    th = torch.as_tensor(pr.point.parameters())
    H = torch.autograd.functional.hessian(loss, th).numpy()
    g = torch.func.grad(loss)(th).numpy()
    s = pr.point
    K, V = s.n_hidden, s.W2
    for i in range(K):  # the delta part: sum_m V_mi E[r_m delta(u_i) (x, 1)(x, 1)^T]
        Zl, wl = _line_rule(a, b, i, n)
        Xl = Zl @ L.T
        r = (_forward(s, th, torch.as_tensor(Xl)) - _forward(pr.teacher, t_theta, torch.as_tensor(Xl))).numpy()
        c = wl * (r @ V[:, i])
        xt = np.hstack([Xl, np.ones((len(wl), 1))]) if s.b1 is not None else Xl
        idx = list(range(i * N_I, (i + 1) * N_I)) + ([K * N_I + i] if s.b1 is not None else [])
        H[np.ix_(idx, idx)] += np.einsum("p,pi,pj->ij", c, xt, xt)
    return float(loss(th)), g, 0.5 * (H + H.T)


def test_the_reference_is_converged():
    """Two resolutions of the reference agree far below the bar (the reference limits the tolerance, not the library)."""
    for point in ("random", "teacher"):
        L1, g1, H1 = _reference("relu-teacher-b1b2-M3-cov", point)
        L2, g2, H2 = _reference("relu-teacher-b1b2-M3-cov", point, 24)
        assert abs(L1 - L2) <= 1e-13 * L2 + 1e-16
        assert np.abs(g1 - g2).max() <= 1e-12 * np.abs(g2).max() + 1e-16
        assert np.abs(H1 - H2).max() <= 1e-12 * np.abs(H2).max()


def _cases() -> list[tuple[str, str]]:
    """Every case at a random student; the ReLU teachers also at the teacher and at a split teacher (units sharing a kink)."""
    return [(c, p) for c in CASES for p in POINTS if p == "random" or CASES[c][0] == "relu"]


@pytest.mark.parametrize("case, point", _cases(), ids=lambda x: x)
def test_loss_gradient_and_hessian_match_the_kink_exact_reference(case, point):
    L_ref, g_ref, H_ref = _reference(case, point)
    pr = _problem(case, point)
    obj = NetworkObjective(pr)
    assert obj.loss == pytest.approx(L_ref, rel=RTOL, abs=1e-15)
    np.testing.assert_allclose(obj.gradient(), g_ref, rtol=0, atol=max(RTOL * np.abs(g_ref).max(), 1e-15))
    np.testing.assert_allclose(obj.hessian(), H_ref, rtol=0, atol=RTOL * np.abs(H_ref).max())
    curv = PopulationHessian(pr)
    ev = np.linalg.eigvalsh(H_ref)
    np.testing.assert_allclose(np.sort(curv.spectrum().eigenvalues), ev, rtol=0, atol=RTOL * np.abs(ev).max())


def test_at_the_teacher_the_hessian_is_the_limit_of_the_gradients_differences():
    """Units sharing their kink: the Hessian there is the limit of central differences of the exact gradient at the
    generic points around it (error ``O(h)``: measured 4e-5, 4e-6, 5e-7 at h = 1e-3, 1e-4, 1e-5)."""
    pr = _problem("relu-teacher-b1b2-M3-cov", "teacher")
    H = NetworkObjective(pr).hessian()
    t = pr.teacher
    E = np.random.default_rng(1).standard_normal((t.n_params, 2))

    def grad(theta):
        return NetworkObjective(Problem(t, t.with_parameters(theta), pr.inputs), degree=1).gradient()

    h = 1e-5
    fd = np.column_stack([(grad(t.parameters() + h * e) - grad(t.parameters() - h * e)) / (2 * h) for e in E.T])
    np.testing.assert_allclose(fd, H @ E, rtol=0, atol=5e-6 * np.abs(H @ E).max())


def test_at_the_teacher_the_papers_network_equals_the_papers_engine():
    """``W2 relu(W1 x)`` at its teacher: the general route (units sharing their kink) equals the arc-cosine engine."""
    rng = np.random.default_rng(0)
    t = no.TwoLayerNet(rng.standard_normal((3, 5)) / 2, rng.standard_normal((1, 3)), "relu")
    H = NetworkObjective(Problem(t, t, GaussianInputs(5))).hessian()
    np.testing.assert_allclose(H, no.population_hessian(t), rtol=0, atol=1e-14 * np.abs(H).max())


def test_a_zero_row_is_refused_in_one_line():
    """A ReLU unit of zero variance has ``delta(b)`` moments: undefined at ``b = 0``; the batch route is named."""
    t = no.TwoLayerNet(np.array([[1.0, 0.5]]), np.ones((1, 1)), "erf", b1=np.array([0.2]))
    s = no.TwoLayerNet(np.array([[0.0, 0.0], [0.3, -1.0]]), np.ones((1, 2)), "relu", b1=np.array([0.1, 0.0]))
    with pytest.raises(no.NearoptError, match="do not cover.*batch route") as info:
        NetworkObjective(Problem(t, s, GaussianInputs(2))).hessian()
    assert "\n" not in str(info.value)


def test_a_relu_student_parallel_to_its_erf_teacher_matches_the_reference():
    """The optimum of a ReLU student of a one-unit erf teacher has its row parallel to the teacher's: collinear pairs."""
    t = no.TwoLayerNet(np.array([[1.0, 0.5]]), np.ones((1, 1)), "erf", b1=np.array([0.2]), b2=np.array([0.1]))
    s = no.TwoLayerNet(np.array([[2.0, 1.0], [0.3, -1.0]]), np.array([[0.7, -0.4]]), "relu", b1=np.array([0.1, -0.3]), b2=np.array([0.2]))
    pr = Problem(t, s, GaussianInputs(2))
    L_ref, g_ref, H_ref = _reference_of(pr)
    obj = NetworkObjective(pr)
    assert obj.loss == pytest.approx(L_ref, rel=RTOL)
    np.testing.assert_allclose(obj.gradient(), g_ref, rtol=0, atol=RTOL * np.abs(g_ref).max())
    np.testing.assert_allclose(obj.hessian(), H_ref, rtol=0, atol=RTOL * np.abs(H_ref).max())


def test_the_command_line_answers_a_relu_student_of_an_erf_teacher_as_the_api(tmp_path):
    pr = _problem("erf-teacher-b1b2-M2-iso")
    pr.teacher.save(tmp_path / "T.npz")
    pr.point.save(tmp_path / "S.npz")
    code, out, err = cli("spectrum", "--population", "--teacher", tmp_path / "T.npz", "-a", "relu", "--teacher-activation", "erf",
                         "--student", tmp_path / "S.npz", "--json")
    assert code == 0, err
    d = json.loads(out)
    ev = np.linalg.eigvalsh(NetworkObjective(pr).hessian())
    np.testing.assert_allclose(np.sort(d["eigenvalues"]), ev, rtol=0, atol=1e-12 * np.abs(ev).max())
    assert d["loss"] == pytest.approx(NetworkObjective(pr).loss, rel=1e-12)


@pytest.mark.parametrize("point", ["random", "teacher"])
def test_the_structured_route_equals_the_dense_one_for_relu(point):
    """Rows of dimension 9 > units: the complement block with its multiplicity (ReLU teacher and student, b1, b2, 2 outputs, a covariance)."""
    rng = np.random.default_rng(4)
    n = 9

    def net(K):
        return no.TwoLayerNet(rng.standard_normal((K, n)) / 3, rng.standard_normal((2, K)) / 2, "relu", 0.4 * rng.standard_normal(K),
                              0.3 * rng.standard_normal(2))

    t = net(3)
    s = t if point == "teacher" else net(4)
    A = rng.standard_normal((n, n))
    curv = PopulationHessian(Problem(t, s, GaussianInputs(covariance=A @ A.T / n + 0.3 * np.eye(n))))
    dense = np.sort(curv.spectrum("dense").eigenvalues)
    st = curv.spectrum("structured")
    assert st.eigenvalues.size == curv.n_params
    np.testing.assert_allclose(np.sort(st.eigenvalues), dense, rtol=0, atol=1e-12 * np.abs(dense).max())


@pytest.mark.parametrize("distance", [1e-5, 1e-7, 1e-9])
def test_near_a_shared_kink_the_answers_stay_accurate(distance):
    """A student ``distance`` from a ReLU teacher with biases: the general formulas lose ``eps / distance``, the
    shared-kink data ``O(distance)``; the switch at ``SHARED_GAP`` keeps both within ``2e-8`` (measured: at most
    ``6e-9`` for the Hessian, relative, and ``9e-9`` for the gradient, relative to the Hessian's largest entry)."""
    pr = _problem("relu-teacher-b1b2-M3-cov", "teacher")
    t = pr.teacher
    s = t.with_parameters(t.parameters() + distance * np.random.default_rng(3).standard_normal(t.n_params))
    near = Problem(t, s, pr.inputs)
    _, g_ref, H_ref = _reference_of(near)
    obj = NetworkObjective(near)
    scale = np.abs(H_ref).max()
    np.testing.assert_allclose(obj.hessian(), H_ref, rtol=0, atol=2e-8 * scale)
    np.testing.assert_allclose(obj.gradient(), g_ref, rtol=0, atol=2e-8 * scale)
