"""Every curvature operator against a dense ground truth; invariants by property-based tests.

Ground truths: ``torch.func.hessian`` of the batch loss (batch operators) and the
dense population matrix assembled from the pair moments (population operator),
itself held against a large batch in ``test_population.py``. A new curvature joins
the suite by being added to ``CURVATURES``.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import func

import nearopt as no
from nearopt.curvature import Composed, Congruence, Curvature, Restricted
from nearopt.curvature.batch import BatchCurvature
from nearopt.curvature.compose import Wrapper
from nearopt.curvature.deep_linear import DeepLinearHessian
from nearopt.curvature.network import NetworkHessian
from nearopt.dynamics.objective import POPULATION_CLOSED_FORMS, ClosedFormHessian, make_objective
from nearopt.model.deep_linear import sample_deep_linear
from nearopt.model.network import forward_torch
from nearopt.spectra import decide_rank

ACTIVATIONS = ["linear", "quadratic", "cubic", "polynomial:0.5,1,0.3", "erf", "erf:unit", "tanh", "relu"]
SMOOTH = [a for a in ACTIVATIONS if a != "relu"]
TRAINED = ["both", "first", "second"]
#: routes that return every eigenvalue (the extreme-eigenvalue and density routes are tested in test_extremes.py)
FULL_SPECTRUM_ROUTES = {"dense", "factor", "structured"}


def autodiff_hessian(teacher: no.TwoLayerNet, X: np.ndarray, student: no.TwoLayerNet) -> np.ndarray:
    """Independent ground truth: ``torch.func.hessian`` of the whole batch loss (no chunks, no helpers)."""
    Xt = torch.as_tensor(X)
    y = forward_torch(torch.as_tensor(teacher.parameters()), Xt, teacher.activation, teacher.n_hidden)

    def loss(th):
        return 0.5 * ((forward_torch(th, Xt, student.activation, student.n_hidden) - y) ** 2).mean()

    return func.hessian(loss)(torch.as_tensor(student.parameters())).numpy()


def _problem(act: str, trained: str = "both", seed: int = 0) -> no.Problem:
    return no.Problem(no.sample_teacher(4, 3, act, seed=seed), trained=trained)


def _batch_gn(pr, X):
    return no.BatchGaussNewton(pr, X)


def _batch_hessian(pr, X):
    return no.BatchHessian(pr, X)


def _population(pr, X):
    return no.PopulationHessian(pr)


def _closed_form(pr, X):
    """The torch.func Hessian of the closed-form population loss (dynamics), restricted like any curvature."""
    if pr.activation.name not in POPULATION_CLOSED_FORMS:
        pytest.skip(f"no closed-form population loss for {pr.activation.name}")
    op = ClosedFormHessian(make_objective(pr.teacher))
    return op if pr.trained == "both" else Restricted(op, pr)


def _network(pr, X):
    """The general engine (kernels with means, Price's theorem, torch.func) on the paper's networks: smooth activations and ReLU."""
    if not pr.activation.is_smooth and pr.activation.name != "relu":
        pytest.skip(f"{pr.activation.name} has a kink: the general engine takes smooth activations and ReLU")
    return NetworkHessian(pr)


CURVATURES = {"batch-gauss-newton": _batch_gn, "batch-hessian": _batch_hessian, "population": _population, "closed-form": _closed_form,
              "network": _network}


def _truth(kind: str, pr: no.Problem, X: np.ndarray) -> np.ndarray:
    idx = pr.trained_indices
    if kind in ("population", "closed-form", "network"):
        return no.population_hessian(pr.teacher)[np.ix_(idx, idx)]
    return autodiff_hessian(pr.teacher, X, pr.point)[np.ix_(idx, idx)]


@pytest.mark.parametrize("kind, act", [(k, a) for k in CURVATURES for a in ACTIVATIONS if k != "closed-form" or a in POPULATION_CLOSED_FORMS])
@pytest.mark.parametrize("trained", TRAINED)
def test_every_curvature_matches_its_dense_ground_truth(kind, act, trained):
    pr = _problem(act, trained)
    X = no.sample_inputs(300, 4, seed=1)
    curv = CURVATURES[kind](pr, X)
    H = _truth(kind, pr, X)
    scale = np.abs(H).max()
    P = pr.n_params
    assert curv.shape == (P, P) == H.shape
    V = np.random.default_rng(2).standard_normal((P, 3))
    np.testing.assert_allclose(curv @ V, H @ V, rtol=1e-10, atol=1e-12 * scale * P)
    np.testing.assert_allclose(curv.to_dense(), H, rtol=1e-10, atol=1e-12 * scale)
    S = curv.factor()
    if S is not None:  # a square root must be one
        np.testing.assert_allclose(S.T @ S, H, rtol=1e-9, atol=1e-11 * scale)
    for method in sorted(r for r in FULL_SPECTRUM_ROUTES if curv.offers(r)):
        spec = curv.spectrum(method)
        np.testing.assert_allclose(spec.eigenvalues, scipy.linalg.eigvalsh(H), rtol=1e-8, atol=1e-10 * scale)
        assert spec.n_params == P and spec.dtype == "float64"


def _chain(op) -> set[type]:
    """The classes a curvature is built from (its wrappers, their inner operators, a batch's base)."""
    seen, todo = set(), [op]
    while todo:
        cur = todo.pop()
        seen.add(type(cur))
        todo += [getattr(cur, name) for name in ("operator", "inner", "base") if isinstance(getattr(cur, name, None), Curvature)]
    return seen


def _subclasses(cls: type) -> set[type]:
    out = set()
    for sub in cls.__subclasses__():
        out |= {sub} | _subclasses(sub)
    return out


def test_every_curvature_subclass_is_held_against_a_ground_truth():
    """Every concrete Curvature is reached by the operator test above (directly or as a wrapper / base of
    one), or, for the change of variables, by tests/test_combinations.py and tests/test_inputs.py."""
    X = no.sample_inputs(50, 4, seed=1)
    covered: set[type] = set()
    for make in CURVATURES.values():
        for trained in TRAINED:
            covered |= _chain(make(_problem("quadratic", trained), X))
    # deep linear networks: held against a reference written in tests/test_deep_linear.py
    covered |= _chain(DeepLinearHessian(sample_deep_linear([4, 3, 2], seed=0)))
    sigma = no.GaussianInputs.spiked(4, [2.0], seed=0)
    covered |= _chain(no.PopulationHessian(no.Problem(no.sample_teacher(4, 3, "erf", seed=0), inputs=sigma)))
    assert Congruence in covered and Restricted in covered
    abstract = {Wrapper, Composed, BatchCurvature}
    missing = {c.__name__ for c in _subclasses(Curvature) - abstract - covered if c.__module__.startswith("nearopt.")}  # test doubles are not curvatures
    assert not missing, f"curvatures no operator test reaches: {sorted(missing)}"


def test_batch_hessian_away_from_the_teacher_includes_the_residual_term():
    teacher = no.sample_teacher(3, 2, "tanh", seed=0)
    student = teacher.with_parameters(teacher.parameters() + 0.3 * np.random.default_rng(0).standard_normal(teacher.n_params))
    X = no.sample_inputs(200, 3, seed=1)
    pr = no.Problem(teacher, student)
    H = no.BatchHessian(pr, X).to_dense()
    np.testing.assert_allclose(H, autodiff_hessian(teacher, X, student), rtol=1e-10, atol=1e-13)
    G = no.BatchGaussNewton(pr, X).to_dense()
    assert np.abs(H - G).max() > 1e-3  # the functional term is there
    assert not no.BatchHessian(pr, X).offers("factor") and not no.BatchHessian(pr, X).positive_semidefinite


def test_wider_student_batch_hessian_matches_autodiff():
    teacher = no.sample_teacher(3, 2, "erf", seed=0)
    student = no.sample_teacher(3, 4, "erf", seed=5)
    X = no.sample_inputs(150, 3, seed=1)
    H = no.BatchHessian(no.Problem(teacher, student), X).to_dense()
    assert H.shape == (16, 16)
    np.testing.assert_allclose(H, autodiff_hessian(teacher, X, student), rtol=1e-10, atol=1e-13)


def test_problem_validation():
    t = no.sample_teacher(3, 2, "erf", seed=0)
    with pytest.raises(no.NearoptError):
        no.Problem(t, no.sample_teacher(4, 2, "erf"))
    assert not no.Problem(t, no.sample_teacher(3, 2, "tanh")).is_plain  # a teacher of another activation: the general model
    with pytest.raises(no.NearoptError, match="outputs"):
        no.Problem(t, no.TwoLayerNet(t.W1, np.ones((2, 2)), "erf"))
    with pytest.raises(no.NearoptError):
        no.Problem(t, trained="none")
    pr = no.Problem(t)
    assert pr.point is t and pr.at_teacher and pr.n_params == 8
    assert pr.replace(trained="first").n_params == 6 and pr.replace(trained="second").n_params == 2


def test_eigh_gives_eigenpairs():
    net = no.sample_teacher(4, 3, "erf", seed=3)
    for curv in (no.PopulationHessian(net), no.BatchGaussNewton(net, no.sample_inputs(100, 4, seed=0))):
        spec, U = curv.eigh()
        H = curv.to_dense()
        np.testing.assert_allclose(H @ U, U * spec.eigenvalues, atol=1e-10 * np.abs(H).max())
        np.testing.assert_allclose(U.T @ U, np.eye(curv.n_params), atol=1e-12)


# ------------------------------------------------------------------ property-based invariants
_sizes = st.tuples(st.integers(1, 5), st.integers(1, 4))
_fast = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _random_orthogonal(n: int, seed: int) -> np.ndarray:
    Q, R = np.linalg.qr(np.random.default_rng(seed).standard_normal((n, n)))
    return Q * np.sign(np.diag(R))


@_fast
@given(_sizes, st.sampled_from(SMOOTH + ["relu"]), st.integers(0, 10_000))
def test_rotating_the_input_space_leaves_the_population_spectrum_unchanged(size, act, seed):
    ni, nh = size
    net = no.sample_teacher(ni, nh, act, seed=seed)
    rotated = no.TwoLayerNet(net.W1 @ _random_orthogonal(ni, seed + 1), net.W2, net.activation)
    a, b = (no.population_spectrum(n, "dense").eigenvalues for n in (net, rotated))
    np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-11 * max(1.0, a.max()))


@_fast
@given(_sizes, st.sampled_from(SMOOTH), st.integers(0, 10_000))
def test_permuting_hidden_units_leaves_the_spectrum_unchanged(size, act, seed):
    ni, nh = size
    net = no.sample_teacher(ni, nh, act, seed=seed)
    perm = np.random.default_rng(seed).permutation(nh)
    permuted = no.TwoLayerNet(net.W1[perm], net.W2[:, perm], net.activation)
    X = no.sample_inputs(60, ni, seed=seed)
    for route in (lambda n: no.population_spectrum(n, "dense"), lambda n: no.batch_spectrum(n, X)):
        a, b = route(net), route(permuted)
        np.testing.assert_allclose(a.eigenvalues, b.eigenvalues, rtol=1e-9, atol=1e-11 * max(1.0, a.largest))
        assert a.rank.rank == b.rank.rank


@_fast
@given(st.integers(1, 4), st.integers(1, 6), st.sampled_from(SMOOTH + ["relu"]), st.sampled_from(TRAINED), st.integers(0, 10_000))
def test_structured_equals_dense_on_random_shapes(nh, ni, act, trained, seed):
    pr = no.Problem(no.sample_teacher(ni, nh, act, seed=seed), trained=trained)
    curv = no.PopulationHessian(pr)
    s, d = curv.spectrum("structured"), curv.spectrum("dense")
    np.testing.assert_allclose(s.eigenvalues, d.eigenvalues, rtol=1e-9, atol=1e-11 * max(1.0, d.largest))
    assert int(s.multiplicities[1].sum()) == pr.n_params


@_fast
@given(_sizes, st.integers(0, 10_000))
def test_with_parameters_of_parameters_is_the_identity(size, seed):
    net = no.sample_teacher(*size, "tanh", seed=seed)
    again = net.with_parameters(net.parameters())
    assert np.array_equal(again.W1, net.W1) and np.array_equal(again.W2, net.W2) and again.activation == net.activation


@_fast
@given(st.lists(st.floats(1e-18, 1e3), min_size=1, max_size=30), st.floats(1e-16, 1e-1), st.floats(1.0, 1e6))
def test_rank_is_monotone_in_the_tolerance(values, rtol, factor):
    s = np.asarray(values)
    loose, tight = decide_rank(s, s.size + 2, rtol=min(rtol * factor, 1.0)), decide_rank(s, s.size + 2, rtol=rtol)
    assert loose.rank <= tight.rank


def test_rank_rule_refuses_bad_tolerances_and_values():
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(no.NearoptError):
            decide_rank(np.ones(3), 3, rtol=bad)
    with pytest.raises(no.NearoptError):
        decide_rank(np.array([1.0, np.nan]), 2)
    with pytest.raises(no.NearoptError):
        decide_rank(np.array([1.0 + 1j]), 2)
    with pytest.raises(no.NearoptError):
        decide_rank(np.array([1.0, -0.5]), 2)  # singular values are >= 0
