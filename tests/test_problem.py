"""What is analysed (nearopt.model.problem): the input law ``GaussianInputs`` and the immutable ``Problem``.

The law's eigen-structure, products with ``Sigma^p`` and spiked form against dense matrices
built here; the one-line refusal of each kind of bad covariance; a ``Problem``'s defaults,
validation of sizes, activations and trained blocks, and ``whiten``.
"""

from __future__ import annotations

import dataclasses

import _reference as ref
import numpy as np
import pytest
import scipy.linalg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nearopt.errors import NearoptError
from nearopt.model.network import TwoLayerNet
from nearopt.model.problem import TRAINED_BLOCKS, GaussianInputs, Problem, as_problem, whiten

_fast = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _net(rng, K: int, n: int, act: str = "erf") -> TwoLayerNet:
    return TwoLayerNet(rng.standard_normal((K, n)), rng.standard_normal((1, K)), act)


def _power(S: np.ndarray, p: float) -> np.ndarray:
    lam, U = np.linalg.eigh(S)
    return (U * np.clip(lam, 0, None) ** p) @ U.T


@st.composite
def covariances(draw):
    n = draw(st.integers(1, 6))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    A = rng.standard_normal((n, draw(st.integers(1, n))))
    return A @ A.T + draw(st.sampled_from([0.0, 0.5])) * np.eye(n)


# -- the input law -----------------------------------------------------------------------------------
@_fast
@given(S=covariances(), p=st.sampled_from([1.0, 0.5, 2.0, 0.0]))
def test_a_covariance_law_has_its_eigenvalues_powers_and_square_root(S, p):
    law = GaussianInputs(covariance=S)
    n = S.shape[0]
    assert law.n_inputs == n and not law.isotropic or np.array_equal(S, np.eye(n))
    np.testing.assert_allclose(law.covariance, S, atol=1e-12 * np.abs(S).max())
    lam = np.linalg.eigvalsh(S)
    np.testing.assert_allclose(law.eigenvalues, np.clip(lam, 0, None), atol=1e-10 * lam[-1])
    assert law.rank == np.linalg.matrix_rank(S, tol=1e-8 * lam[-1])
    X = np.random.default_rng(0).standard_normal((3, n))
    # a fractional power of a singular Sigma amplifies rounding at its zero eigenvalues: sqrt(eps lambda_max)
    atol = 1e-9 * max(1.0, lam[-1]) ** max(p, 1) if p in (0.0, 1.0, 2.0) else 1e-7 * np.sqrt(lam[-1])
    np.testing.assert_allclose(law.matmul(X, p), X @ _power(S, p), atol=atol * np.abs(X).max())
    L = law.sqrt_factor()
    np.testing.assert_allclose(L, L.T, atol=1e-12 * max(1.0, lam[-1]))
    np.testing.assert_allclose(L @ L, S, atol=1e-9 * lam[-1])
    spaces = law.eigenspaces()
    assert sum(e.multiplicity for e in spaces) == n
    for e in spaces:
        B = e.basis
        assert B is not None and B.shape == (n, e.multiplicity)
        np.testing.assert_allclose(S @ B, e.value * B, atol=1e-9 * lam[-1])
    d = law.describe()
    assert d["isotropic"] is law.isotropic and d["covariance_trace"] == pytest.approx(np.trace(S), rel=1e-10)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 8), seed=st.integers(0, 1000), data=st.data())
def test_a_spiked_law_is_identity_plus_its_spikes(n, seed, data):
    """``I + sum theta_k u_k u_k^T`` (normalised, not necessarily orthogonal directions), never formed:
    the bulk of value 1 keeps multiplicity ``N_i - k`` and ``theta = -1`` removes a direction."""
    k = data.draw(st.integers(1, n))
    theta = np.array(data.draw(st.lists(st.sampled_from([-1.0, -0.5, 0.5, 2.0, 10.0]), min_size=k, max_size=k)))
    U = np.random.default_rng(seed).standard_normal((k, n)) * 3.0
    Un = U / np.linalg.norm(U, axis=1, keepdims=True)
    S = np.eye(n) + Un.T @ (theta[:, None] * Un)
    lam = np.linalg.eigvalsh(S)
    if lam[0] < -1e-8:  # negative spikes along non-orthogonal directions can leave no covariance
        with pytest.raises(NearoptError, match="not positive semi-definite"):
            GaussianInputs.spiked(n, theta, U)
        return
    law = GaussianInputs.spiked(n, theta, U)
    np.testing.assert_allclose(law.covariance, S, atol=1e-10 * lam[-1])
    np.testing.assert_allclose(law.eigenvalues, np.clip(lam, 0, None), atol=1e-10 * lam[-1])
    spaces = law.eigenspaces()
    bulk = [e for e in spaces if e.basis is None]
    assert len(bulk) == (1 if n > k else 0) and sum(e.multiplicity for e in spaces) == n
    if bulk:
        assert bulk[0].value == 1.0 and bulk[0].multiplicity >= n - k


def test_random_spikes_are_orthonormal_and_seeded():
    a, b = GaussianInputs.spiked(6, [1.0, 3.0], seed=1), GaussianInputs.spiked(6, [1.0, 3.0], seed=1)
    np.testing.assert_array_equal(a.covariance, b.covariance)
    assert not np.allclose(a.covariance, GaussianInputs.spiked(6, [1.0, 3.0], seed=2).covariance)
    np.testing.assert_allclose(a.eigenvalues, [1, 1, 1, 1, 2, 4], atol=1e-12)


def test_an_identity_plus_spike_matrix_from_a_file_is_recognised(tmp_path):
    """A dense ``I + 2 u u^T`` read from ``.npy``: two eigenspaces, of dimension ``N_i - 1`` and 1."""
    u = np.ones(5) / np.sqrt(5)
    np.save(tmp_path / "s.npy", np.eye(5) + 2 * np.outer(u, u))
    law = GaussianInputs.load(tmp_path / "s.npy", 5)
    spaces = sorted(law.eigenspaces(), key=lambda e: e.value)
    assert [(round(e.value, 12), e.multiplicity) for e in spaces] == [(1.0, 4), (3.0, 1)]
    with pytest.raises(NearoptError, match=r"covariance file .*s\.npy: the covariance is 5 x 5, but N_i = 4"):
        GaussianInputs.load(tmp_path / "s.npy", 4)


def test_the_identity_is_the_isotropic_law():
    for law in (GaussianInputs(4), GaussianInputs(covariance=np.eye(4))):
        assert law.isotropic and law.rank == 4 and repr(law) == "GaussianInputs(4)"
        np.testing.assert_array_equal(law.sqrt_factor(), np.eye(4))
        np.testing.assert_array_equal(law.sample(5, seed=3), GaussianInputs(4).sample(5, seed=3))
    assert not GaussianInputs(covariance=2 * np.eye(4)).isotropic


def test_samples_are_seeded_and_have_the_covariance():
    S = np.array([[2.0, 0.8, 0.0], [0.8, 1.0, 0.3], [0.0, 0.3, 0.5]])
    law = GaussianInputs(covariance=S)
    X = law.sample(40_000, seed=7)
    np.testing.assert_array_equal(X, law.sample(40_000, seed=7))
    np.testing.assert_allclose(X.T @ X / X.shape[0], S, atol=0.05)  # ~ 4 standard errors


def test_from_data_is_the_second_moment_of_the_batch():
    X = np.random.default_rng(0).standard_normal((30, 4)) + 1.0
    np.testing.assert_allclose(GaussianInputs.from_data(X).covariance, X.T @ X / 30, atol=1e-13)
    for bad, match in [(np.zeros(4), r"shape \(N, N_i\)"), (np.zeros((0, 3)), r"shape \(N, N_i\)"), (np.full((3, 2), np.nan), "NaN")]:
        with pytest.raises(NearoptError, match=match):
            GaussianInputs.from_data(bad)


@pytest.mark.parametrize("S, n, match", [
    ([[1.0, np.nan], [np.nan, 1.0]], None, "NaN or infinite"),
    (np.ones((2, 3)), None, "square"),
    (np.ones(3), None, "square"),
    (np.eye(3), 4, "3 x 3, but N_i = 4"),
    (np.zeros((3, 3)), None, "zero"),
    ([[1.0, 0.5], [0.0, 1.0]], None, "not symmetric"),
    ([[1.0, 2.0], [2.0, 1.0]], None, "not positive semi-definite"),
    ([["a", "b"], ["c", "d"]], None, "real numeric"),
])
def test_a_bad_covariance_is_refused_with_one_line(S, n, match):
    with pytest.raises(NearoptError, match=match) as info:
        GaussianInputs(n, covariance=S)
    assert "\n" not in str(info.value)


def test_bad_spikes_and_sizes_are_refused():
    for call, match in [
        (lambda: GaussianInputs(), "needs n_inputs or a covariance"),
        (lambda: GaussianInputs(0), "N_i must be a positive integer"),
        (lambda: GaussianInputs(2.5), "N_i must be a positive integer"),
        (lambda: GaussianInputs.spiked(3, []), "non-empty"),
        (lambda: GaussianInputs.spiked(3, [np.inf]), "finite"),
        (lambda: GaussianInputs.spiked(2, [1, 1, 1]), "do not fit"),
        (lambda: GaussianInputs.spiked(3, [1.0], np.ones(4)), r"shape \(1, 3\)"),
        (lambda: GaussianInputs.spiked(3, [1.0], np.zeros(3)), "zero vector"),
        (lambda: GaussianInputs.spiked(3, [1.0], [np.nan, 0, 0]), "NaN"),
        (lambda: GaussianInputs.spiked(3, [-1.5]), "not positive semi-definite"),
    ]:
        with pytest.raises(NearoptError, match=match):
            call()
    # the covariance is read-only
    with pytest.raises(ValueError):
        GaussianInputs.spiked(3, [1.0]).covariance[0, 0] = 5.0


# -- the problem ---------------------------------------------------------------------------------------
def test_a_problem_defaults_to_the_teacher_isotropic_inputs_and_both_layers():
    t = _net(np.random.default_rng(0), 3, 4)
    p = Problem(t)
    assert p.point is t and p.student is t and p.at_teacher and p.inputs.isotropic and p.inputs.n_inputs == 4
    assert p.trained == "both" and p.n_params == 15 and p.n_inputs == 4 and p.activation == t.activation
    assert as_problem(t).point is t and as_problem(p) is p
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.trained = "first"  # type: ignore[misc]
    with pytest.raises(NearoptError, match="expected a Problem or a TwoLayerNet"):
        as_problem("net")


@pytest.mark.parametrize("trained", TRAINED_BLOCKS)
def test_trained_indices_pick_the_blocks_of_the_parameter_vector(trained):
    rng = np.random.default_rng(1)
    t, s = _net(rng, 2, 3), _net(rng, 4, 3)
    p = Problem(t, s, trained=trained)
    theta = s.parameters()
    picked = theta[p.trained_indices]
    want = {"both": theta, "first": s.W1.ravel(), "second": s.W2.ravel()}[trained]
    np.testing.assert_array_equal(picked, want)
    assert p.n_params == want.size and not p.at_teacher


def test_a_copy_of_the_teacher_is_at_the_teacher():
    t = _net(np.random.default_rng(2), 3, 4)
    assert Problem(t, TwoLayerNet(t.W1.copy(), t.W2.copy(), "erf")).at_teacher
    assert not Problem(t, TwoLayerNet(t.W1 + 1e-15, t.W2, "erf")).at_teacher


def test_bad_problems_are_refused():
    rng = np.random.default_rng(3)
    t = _net(rng, 2, 3)
    for kwargs, match in [
        (dict(teacher="t"), "teacher must be a TwoLayerNet"),
        (dict(teacher=t, student=np.ones(3)), "student must be a TwoLayerNet"),
        (dict(teacher=t, student=_net(rng, 2, 4)), "student has N_i = 4, teacher has N_i = 3"),
        (dict(teacher=t, student=TwoLayerNet(t.W1, np.ones((2, 2)), t.activation)), "student has M = 2 outputs, teacher has M = 1"),
        (dict(teacher=t, inputs=GaussianInputs(5)), "dimension 5, the networks N_i = 3"),
        (dict(teacher=t, trained="third"), "trained must be one of both, first, second or a comma list"),
        (dict(teacher=t, trained="W1,b1"), "names block\\(s\\) b1 that the network lacks"),
    ]:
        with pytest.raises(NearoptError, match=match):
            Problem(**kwargs)


def test_replace_validates_again_and_keeps_the_student_at_a_new_teacher():
    rng = np.random.default_rng(4)
    t, t2 = _net(rng, 2, 3), _net(rng, 2, 3)
    p = Problem(t).replace(teacher=t2)
    assert p.point is t2 and p.at_teacher
    s = _net(rng, 5, 3)
    assert Problem(t, s).replace(teacher=t2).point is s
    with pytest.raises(NearoptError, match="trained must be"):
        Problem(t).replace(trained="none")
    with pytest.raises(NearoptError, match="N_i"):
        Problem(t).replace(inputs=GaussianInputs(7))


@pytest.mark.parametrize("trained", TRAINED_BLOCKS)
def test_whiten_keeps_the_loss_and_maps_the_first_layer(trained):
    """Whitened weights ``W1 L`` under ``N(0, I)``: the same loss (closed form, computed here) as ``W1``
    under ``N(0, Sigma)``; an isotropic problem comes back unchanged with ``L = I``."""
    rng = np.random.default_rng(5)
    t, s = _net(rng, 2, 4, "quadratic"), _net(rng, 3, 4, "quadratic")
    A = rng.standard_normal((4, 4))
    p = Problem(t, s, GaussianInputs(covariance=A @ A.T), trained)
    white, L = whiten(p)
    np.testing.assert_allclose(L, scipy.linalg.sqrtm(A @ A.T).real, atol=1e-10)
    np.testing.assert_allclose(white.point.W1, s.W1 @ L, atol=1e-12)
    np.testing.assert_allclose(white.teacher.W1, t.W1 @ L, atol=1e-12)
    assert white.inputs.isotropic and white.trained == trained and not white.at_teacher
    assert ref.problem_loss(white) == pytest.approx(ref.problem_loss(p), rel=1e-12)
    at_t = Problem(t, inputs=p.inputs)
    assert whiten(at_t)[0].at_teacher
    iso = Problem(t, s)
    same, eye = whiten(iso)
    assert same is iso and np.array_equal(eye, np.eye(4))
