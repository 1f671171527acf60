"""The structured reduction of the population Hessian (nearopt.curvature.structured).

Every eigenvalue with its multiplicity, checked against ``eigvalsh`` of a dense Hessian
built by autograd from the closed-form Gaussian integrals (``tests/_reference.py``), at
the teacher and at other students, under isotropic, general and spiked covariances, for
each set of trained blocks; the invariant space of :func:`reduction`; and the block sizes
that make very wide inputs cheap.
"""

from __future__ import annotations

import _reference as ref
import numpy as np
import scipy.linalg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nearopt.curvature.structured import StructuredSpectrum, reduction, structured_spectrum
from nearopt.model.network import TwoLayerNet
from nearopt.model.problem import GaussianInputs, Problem

_fast = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _net(rng: np.random.Generator, K: int, n: int, act: str) -> TwoLayerNet:
    return TwoLayerNet(rng.standard_normal((K, n)) / np.sqrt(n), rng.standard_normal((1, K)), act)


def _law(rng: np.random.Generator, n: int, kind: str) -> GaussianInputs:
    if kind == "isotropic":
        return GaussianInputs(n)
    if kind == "dense":  # a general covariance, possibly singular
        A = rng.standard_normal((n, int(rng.integers(1, n + 1))))
        return GaussianInputs(covariance=A @ A.T / n + (0.0 if rng.random() < 0.5 else 0.3) * np.eye(n))
    k = int(rng.integers(1, n + 1))  # spiked: I + sum theta u u^T, repeated eigenvalues
    return GaussianInputs.spiked(n, rng.uniform(-0.9, 3.0, k), seed=int(rng.integers(100)))


@st.composite
def problems(draw):
    act = draw(st.sampled_from(ref.KERNELS))
    n, K = draw(st.integers(1, 7)), draw(st.integers(1, 3))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    teacher = _net(rng, K, n, act)
    at_teacher = draw(st.booleans())
    student = teacher if at_teacher else _net(rng, draw(st.integers(1, 3)), n, act)
    law = _law(rng, n, draw(st.sampled_from(["isotropic", "dense", "spiked"])))
    return Problem(teacher, student, law, draw(st.sampled_from(["both", "first", "second"])))


def _close(got: np.ndarray, want: np.ndarray, rtol: float = 1e-9) -> None:
    scale = max(1.0, float(np.abs(want).max(initial=0.0)))
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=rtol * scale)


@_fast
@given(problem=problems(), residual=st.booleans())
def test_every_eigenvalue_with_multiplicity_equals_the_dense_hessian(problem, residual):
    s = structured_spectrum(problem, residual=residual)
    assert isinstance(s, StructuredSpectrum)
    assert s.n_params == problem.n_params == s.expand().size
    assert np.all(np.diff(s.values) >= 0) and np.all(s.counts >= 1)
    H = ref.problem_hessian(problem, gauss_newton=not residual and not problem.at_teacher)
    _close(s.expand(), scipy.linalg.eigvalsh(H))


@_fast
@given(problem=problems())
def test_the_complement_is_the_unit_block_scaled_by_each_eigenspace(problem):
    """``complement`` is ``spec((v v^T) ∘ E[g'g'] + diag(residual))``; copies over the eigenspaces add up to ``P``."""
    s = structured_spectrum(problem)
    if problem.trained == "second":
        assert s.complement.size == 0 and s.complement_multiplicity == 0 and s.reduced.size == problem.point.n_hidden
        return
    K = problem.point.n_hidden
    assert s.complement_multiplicity == problem.n_inputs - s.row_rank
    rows = K * s.row_rank + (K if problem.trained == "both" else 0)
    assert s.reduced.size == rows and s.complement.size == (K if s.complement_multiplicity else 0)
    assert rows + K * s.complement_multiplicity == problem.n_params
    if s.complement_scales:
        assert sum(m for _, m in s.complement_scales) == s.complement_multiplicity


def test_wide_inputs_split_into_a_small_problem_and_copies_of_one_block():
    """N_i = 600 with K = 3 erf units: a 12 x 12 block is diagonalised, the rest is 597 copies of the
    3 x 3 block ``(v v^T) ∘ E[g'(a) g'(b)]``, ``E[g'g'] = 2/pi / sqrt((1 + c11)(1 + c22) - c12^2)``; and
    the reduced spectrum is the whole spectrum of the same units rotated into N_i = 3."""
    rng = np.random.default_rng(4)
    n, K = 600, 3
    net = _net(rng, K, n, "erf")
    s = structured_spectrum(net)
    assert s.block_size == K * (K + 1) and s.row_rank == K and s.complement_multiplicity == n - K
    W, v = net.W1, net.W2.ravel()
    C = W @ W.T
    d = np.diag(C)
    dd = 2 / np.pi / np.sqrt(np.outer(1 + d, 1 + d) - C**2)
    _close(s.complement, scipy.linalg.eigvalsh(np.outer(v, v) * dd), 1e-12)
    R = np.linalg.cholesky(C)  # W = R Q^T with Q orthonormal: the same Gram in N_i = K
    small = ref.hessian("erf", R, v, R, v)
    _close(s.reduced, scipy.linalg.eigvalsh(small))
    full = np.concatenate([s.reduced, np.repeat(s.complement, n - K)])
    _close(s.expand(), np.sort(full))


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31), n=st.integers(1, 8), rows=st.integers(1, 5), kind=st.sampled_from(["isotropic", "dense", "spiked"]))
def test_reduction_is_an_invariant_space_holding_the_rows(seed, n, rows, kind):
    """``Q`` orthonormal, the rows of ``Omega`` in ``span Q``, ``Sigma span Q ⊂ span Q``, and the
    eigenspace dimensions left over add up to ``N_i - r'``."""
    rng = np.random.default_rng(seed)
    law = _law(rng, n, kind)
    Omega = rng.standard_normal((rows, n))
    if rows > 1 and rng.random() < 0.5:
        Omega[-1] = 2.0 * Omega[0]  # a repeated direction adds nothing
    Q, rest = reduction(Omega, law)
    r = Q.shape[1]
    assert r <= n
    np.testing.assert_allclose(Q.T @ Q, np.eye(r), atol=1e-10)
    np.testing.assert_allclose(Omega - Omega @ Q @ Q.T, 0, atol=1e-9)
    SQ = law.matmul(Q.T).T
    np.testing.assert_allclose(SQ - Q @ (Q.T @ SQ), 0, atol=1e-9 * max(1.0, np.abs(SQ).max()))
    assert r + sum(m for _, m in rest) == n and all(m >= 0 for _, m in rest)
    assert r <= sum(min(rows, e.multiplicity) for e in law.eigenspaces())


def test_off_the_teacher_the_copies_carry_the_residual_term():
    """A student of width 2 against a teacher of width 1 in N_i = 7: the directions of each eigenspace
    orthogonal to the three rows (four isotropic, three with a spike) are copies of ``(v v^T) ∘ E[g'g'] + diag(v_a E[r g''(w_a.x)])``, which the residual shifts."""
    rng = np.random.default_rng(11)
    for act in ("erf", "quadratic"):
        for law in (GaussianInputs(7), GaussianInputs.spiked(7, [2.0], seed=1)):
            pr = Problem(_net(rng, 1, 7, act), _net(rng, 2, 7, act), law)
            full, gn = structured_spectrum(pr), structured_spectrum(pr, residual=False)
            assert full.complement_multiplicity == (4 if law.isotropic else 3) and not np.allclose(full.complement, gn.complement)
            _close(full.expand(), scipy.linalg.eigvalsh(ref.problem_hessian(pr)))
            _close(gn.expand(), scipy.linalg.eigvalsh(ref.problem_hessian(pr, gauss_newton=True)))


def test_second_layer_only_is_the_gram_of_the_units():
    rng = np.random.default_rng(2)
    net = _net(rng, 4, 6, "erf")
    s = structured_spectrum(Problem(net, trained="second"))
    C = net.W1 @ net.W1.T
    d = np.diag(C)
    G = 2 / np.pi * np.arcsin(C / np.sqrt(np.outer(1 + d, 1 + d)))  # E[g(w_a.x) g(w_c.x)]
    _close(s.expand(), scipy.linalg.eigvalsh(G), 1e-12)
    assert s.row_rank == 0 and s.complement_multiplicity == 0


def test_the_bulk_holds_no_more_directions_than_its_dimension():
    """A spiked law whose stored spike basis is orthonormal only to rounding: projecting it out of the rows
    leaves rounding tails above the rank cut, yet the bulk eigenspace (dimension ``N_i - spikes``) holds at
    most that many directions, so the structured spectrum still has ``P`` eigenvalues, those of the dense Hessian."""
    rng = np.random.default_rng(8)  # a seed whose tails exceed the cut (found by search)
    law = _law(rng, 7, "spiked")
    W = rng.standard_normal((2, 7))
    Q, rest = reduction(W, law)
    bulk = next(e for e in law.eigenspaces() if e.basis is None)
    assert Q.shape[1] <= 7 and sum(m for _, m in rest) == 7 - Q.shape[1]
    assert bulk.multiplicity == 1
    net = TwoLayerNet(W[:1], np.array([[1.3]]), "erf")
    student = TwoLayerNet(W[1:], np.array([[0.7]]), "erf")
    problem = Problem(net, student, law, "both")
    s = structured_spectrum(problem, residual=False)
    assert s.expand().size == problem.n_params
    _close(s.expand(), scipy.linalg.eigvalsh(ref.problem_hessian(problem, gauss_newton=True)))
