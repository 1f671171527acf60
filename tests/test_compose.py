"""The wrappers that compose the options of a problem around a curvature (nearopt.curvature.compose).

:class:`Congruence` against ``T H T`` built here with ``np.kron`` (``T = blockdiag(I ⊗ L, I)``),
:class:`Restricted` against ``H[idx, idx]``, their products and square roots, and the change
of variables itself: the congruence of the whitened problem's isotropic Hessian equals the
Hessian under ``x ~ N(0, Sigma)`` from the closed-form loss (``tests/_reference.py``).
"""

from __future__ import annotations

import _reference as ref
import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nearopt.curvature import Congruence, Curvature, Restricted
from nearopt.curvature.compose import compose, describe_point
from nearopt.curvature.population import PopulationHessian
from nearopt.model.network import TwoLayerNet
from nearopt.model.problem import GaussianInputs, Problem, whiten

_fast = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class Factored(Curvature):
    """``H = S^T S`` from a given square root ``S`` ``(m, P_all)``: product, matrix and factor."""

    kind = "test"
    positive_semidefinite = True

    def __init__(self, problem: Problem, S: np.ndarray):
        super().__init__(problem)
        self.S = S
        self.matrix = S.T @ S

    def torch_matmat(self, V: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(self.matrix) @ V

    def to_dense(self) -> np.ndarray:
        return self.matrix.copy()

    def has_factor(self) -> bool:
        return True

    def factor(self) -> np.ndarray:
        return self.S


@st.composite
def cases(draw):
    n, K = draw(st.integers(1, 5)), draw(st.integers(1, 4))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    net = TwoLayerNet(rng.standard_normal((K, n)), rng.standard_normal((1, K)), "erf")
    A = rng.standard_normal((n, n))
    law = GaussianInputs(covariance=A @ A.T + 0.1 * np.eye(n))
    trained = draw(st.sampled_from(["both", "first", "second"]))
    S = rng.standard_normal((draw(st.integers(1, 2 * K * (n + 1))), K * (n + 1)))
    return Problem(net, inputs=law, trained=trained), S


def _T(problem: Problem, L: np.ndarray) -> np.ndarray:
    K = problem.point.n_hidden
    return scipy.linalg.block_diag(np.kron(np.eye(K), L), np.eye(K))


@_fast
@given(case=cases())
def test_congruence_is_T_H_T_in_matrix_product_and_square_root(case):
    problem, S = case
    full = problem.replace(trained="both")
    L = problem.inputs.sqrt_factor()
    T = _T(full, L)
    inner = Factored(full, S)
    op = Congruence(inner, full, L)
    want = T @ inner.matrix @ T
    np.testing.assert_allclose(op.to_dense(), want, rtol=1e-12, atol=1e-12 * np.abs(want).max())
    V = np.random.default_rng(0).standard_normal((full.n_params, 3))
    np.testing.assert_allclose(op.torch_matmat(torch.as_tensor(V)).numpy(), want @ V, rtol=1e-11, atol=1e-11 * np.abs(want).max())
    F = op.factor()
    assert F.shape == S.shape and op.factor_shape(F) == S.shape
    np.testing.assert_allclose(F.T @ F, want, rtol=1e-11, atol=1e-11 * np.abs(want).max())
    assert op.positive_semidefinite and op.has_factor() and "under N(0, Sigma)" in op.kind


@_fast
@given(case=cases())
def test_restricted_is_the_trained_submatrix(case):
    problem, S = case
    inner = Factored(problem.replace(trained="both"), S)
    op = Restricted(inner, problem)
    idx = problem.trained_indices
    want = inner.matrix[np.ix_(idx, idx)]
    assert op.shape == (idx.size, idx.size) == (problem.n_params, problem.n_params)
    np.testing.assert_allclose(op.to_dense(), want, rtol=0, atol=0)
    V = np.random.default_rng(1).standard_normal((idx.size, 2))
    np.testing.assert_allclose(op.torch_matmat(torch.as_tensor(V)).numpy(), want @ V, rtol=1e-12, atol=1e-12 * np.abs(want).max())
    F = op.factor()
    np.testing.assert_allclose(F.T @ F, want, rtol=1e-12, atol=1e-12 * np.abs(want).max())


@_fast
@given(case=cases(), whitened=st.booleans())
def test_compose_wraps_a_whitened_curvature_for_the_problem(case, whitened):
    """``compose`` gives ``(T H T)[idx, idx]`` with a covariance factor, ``H[idx, idx]`` without; the base itself for
    both layers and no factor."""
    problem, S = case
    base = Factored(problem.replace(trained="both"), S)
    L = problem.inputs.sqrt_factor() if whitened else None
    op = compose(base, problem, L)
    if problem.trained == "both" and L is None:
        assert op is base
    T = _T(problem, L) if whitened else np.eye(base.n_params)
    idx = problem.trained_indices
    want = (T @ base.matrix @ T)[np.ix_(idx, idx)]
    np.testing.assert_allclose(op.to_dense(), want, rtol=1e-12, atol=1e-12 * np.abs(want).max())


@pytest.mark.parametrize("act", ["erf", "quadratic"])
@pytest.mark.parametrize("trained", ["both", "first", "second"])
def test_the_congruence_of_the_whitened_hessian_is_the_hessian_under_sigma(act, trained):
    """At a student that is not the teacher: ``T H~ T`` with ``H~`` the isotropic Hessian of the whitened
    problem equals the autograd Hessian of the closed-form loss under ``Sigma`` (and so does the
    :class:`PopulationHessian` that composes it); the loss is the same function of ``W1 L``."""
    rng = np.random.default_rng(5)
    n = 4
    teacher = TwoLayerNet(rng.standard_normal((2, n)) / 2, rng.standard_normal((1, 2)), act)
    student = TwoLayerNet(rng.standard_normal((3, n)) / 2, rng.standard_normal((1, 3)), act)
    A = rng.standard_normal((n, n))
    problem = Problem(teacher, student, GaussianInputs(covariance=A @ A.T / n + 0.2 * np.eye(n)), trained)
    white, L = whiten(problem)
    assert white.inputs.isotropic and np.allclose(L @ L, problem.inputs.covariance, atol=1e-12)
    assert ref.problem_loss(white) == pytest.approx(ref.problem_loss(problem), rel=1e-12)
    want = ref.problem_hessian(problem)
    scale = np.abs(want).max()
    got = compose(PopulationHessian(white.replace(trained="both")), problem, L).to_dense()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-10 * scale)
    np.testing.assert_allclose(PopulationHessian(problem).to_dense(), want, rtol=0, atol=1e-10 * scale)


def test_describe_point_names_only_what_differs_from_the_paper_setting():
    rng = np.random.default_rng(3)
    teacher = TwoLayerNet(rng.standard_normal((2, 3)), rng.standard_normal((1, 2)), "erf")
    assert describe_point(Problem(teacher)) == {}
    other = Problem(teacher, TwoLayerNet(rng.standard_normal((4, 3)), rng.standard_normal((1, 4)), "erf"))
    assert describe_point(other) == {"teacher_width": 2}
    law = GaussianInputs.spiked(3, [1.5], seed=0)
    d = describe_point(Problem(teacher, inputs=law))
    assert set(d) == {"inputs"} and d["inputs"]["law"] == "gaussian-spiked" and d["inputs"]["covariance_trace"] == pytest.approx(4.5)
