"""The one answer path: :func:`solve`, its null-space rule on every route, the request and the immutable result."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest

import nearopt as no
from nearopt.errors import NearoptError
from nearopt.spectra import DenseMatrix, NullSpaceWarning, SpectrumRequest, solve


def _matrix(eigenvalues, seed: int = 0) -> np.ndarray:
    """A symmetric matrix with the given eigenvalues in a random orthonormal basis."""
    lam = np.asarray(eigenvalues, dtype=np.float64)
    Q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((lam.size, lam.size)))
    return (Q * lam) @ Q.T


#: 5 exact zero modes, then a well separated, well conditioned spectrum (the plain LOBPCG converges fast)
SEPARATED = np.concatenate([np.zeros(5), np.linspace(0.1, 1.0, 195)])


@pytest.mark.parametrize("method", ["dense", "lanczos"])
def test_every_route_skips_the_policy_null_space_and_says_so(method):
    op = DenseMatrix(_matrix(SEPARATED), positive_semidefinite=True)
    spec = solve(op, SpectrumRequest(which="smallest", k=3, method=method))
    np.testing.assert_allclose(spec.eigenvalues, SEPARATED[5:8], rtol=1e-8)
    ns = spec.null_space
    assert (ns.n_zero, ns.source, ns.clear) == (5, "rank policy", True)
    assert spec.to_dict()["n_zero"] == 5 and "5 eigenvalues taken as zero (rank policy" in spec.summary()


@pytest.mark.parametrize("method", ["dense", "lanczos"])
def test_a_known_rank_keeps_a_genuine_eigenvalue_below_the_tolerance(method):
    lam = np.concatenate([[1e-13], np.linspace(0.1, 1.0, 199)])  # full rank; 1e-13 < 100 P eps = 4.4e-12
    H = _matrix(lam)
    plain = DenseMatrix(H, positive_semidefinite=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NullSpaceWarning)  # (the dense route flags its cut: a margin of 6.6 < 10)
        guessed = solve(plain, SpectrumRequest(which="smallest", k=2, method=method))
    assert guessed.null_space.n_zero == 1 and guessed.eigenvalues[0] == pytest.approx(0.1, rel=1e-6)  # the policy alone: zero
    known = DenseMatrix(H, positive_semidefinite=True, known_rank=(lam.size, "theory: full rank"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", NullSpaceWarning)
        spec = solve(known, SpectrumRequest(which="smallest", k=2, method=method))  # ... the known rank can, and is clear
    assert (spec.null_space.n_zero, spec.null_space.source) == (0, "predicted rank")
    if method == "dense":  # the measured rank stays the policy's, and the summary says which is which
        assert spec.rank.rank == lam.size - 1 and "by the rank policy alone" in spec.summary()
        assert "alone would give rank 199" in spec.null_space.note
    np.testing.assert_allclose(spec.eigenvalues, lam[:2], rtol=1e-3, atol=1e-14)  # eigh resolves 1e-13 to a few eps lambda_max
    assert spec.smallest_nonzero == spec.eigenvalues[0]


def test_a_given_null_dim_holds_on_the_exact_routes_too():
    op = DenseMatrix(_matrix(SEPARATED), positive_semidefinite=True)
    spec = solve(op, SpectrumRequest(which="smallest", k=2, method="dense", null_dim=7))
    assert (spec.null_space.n_zero, spec.null_space.source) == (7, "given")
    np.testing.assert_allclose(spec.eigenvalues, SEPARATED[7:9], rtol=1e-9)
    with pytest.raises(NearoptError, match="null_dim must lie"):
        solve(op, SpectrumRequest(which="smallest", k=2, method="dense", null_dim=200))


def test_a_matrix_free_null_space_near_the_threshold_is_flagged():
    lam = np.concatenate([np.zeros(3), [5e-9], np.linspace(0.1, 1.0, 196)])  # a kept value 5x above the Ritz threshold 1e-9
    op = DenseMatrix(_matrix(lam), positive_semidefinite=True)
    with pytest.warns(NullSpaceWarning, match="pass null_dim"):
        spec = solve(op, SpectrumRequest(which="smallest", k=2, method="lanczos"))
    assert spec.null_space.source == "rank policy" and not spec.null_space.clear and spec.null_space.threshold == pytest.approx(1e-9, rel=1e-2)
    assert "NOT CLEAR" in spec.summary() and spec.to_dict()["null_space"]["zero_clear"] is False


def test_the_result_is_immutable_and_replace_copies_extra():
    spec = solve(DenseMatrix(_matrix(SEPARATED)))
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.seconds = 1.0  # type: ignore[misc]
    other = spec.replace(method="renamed")
    other.extra["x"] = 1
    assert other.method == "renamed" and spec.method == "dense" and "x" not in spec.extra
    assert spec.null_space.n_zero == 5 and spec.extra["route_choice"] == {"asked": "auto", "chosen": "dense"}


def test_certificate_manifold_and_sgd_ranges_use_the_policy_through_solve(monkeypatch):
    calls = []
    import nearopt.spectra.solver as solver

    original = solver._exact_null_space
    monkeypatch.setattr(solver, "_exact_null_space", lambda *a: calls.append(a[0].kind) or original(*a))
    net = no.sample_teacher(3, 2, "erf", seed=0)
    no.certify(net)
    from nearopt.landscape.manifold import predicted_nonzero_spectrum, split_unit

    predicted_nonzero_spectrum(split_unit(net, 0, [0.5, 0.5]))
    assert "the exact Hessian" in calls and "the scaled compact Hessian" in calls


def test_structured_multiplicities_describe_the_eigenvalues_held():
    curv = no.PopulationHessian(no.sample_teacher(4, 3, "erf", seed=0))
    top = curv.spectrum("structured", which="largest", k=3)
    values, counts = top.multiplicities
    assert counts.sum() == top.eigenvalues.size == 3 and set(values) == set(top.eigenvalues)
    full = curv.spectrum("structured")
    assert full.multiplicities[1].sum() == full.n_params


@pytest.mark.parametrize("kind", ["population", "batch"])
def test_the_loss_is_in_every_answer_at_the_teacher(kind):
    net = no.sample_teacher(3, 2, "erf", seed=0)
    curv = no.PopulationHessian(net) if kind == "population" else no.BatchGaussNewton(net, no.sample_inputs(50, 3, seed=0))
    d = curv.spectrum().to_dict()
    assert d["loss"] == 0.0 and d["gradient_norm"] == 0.0


def test_the_rounding_floor_is_named_with_its_value():
    curv = no.PopulationHessian(no.sample_teacher(8, 30, "erf", seed=1))
    spec = curv.spectrum("lanczos", which="smallest", k=3)
    a = spec.accuracy
    assert spec.converged and a["at_rounding_floor"] > 0 and a["tolerance_reached"] > a["tolerance"]
    line = next(x for x in spec.summary().splitlines() if x.startswith("accuracy"))
    assert "rounding floor" in line and f"{a['rounding_floor']:.2g}" in line and "NOT CONVERGED" not in line


def test_the_request_refuses_options_that_do_not_apply():
    with pytest.raises(NearoptError, match="null_dim"):
        SpectrumRequest(which="largest", k=2, null_dim=1)
    req = SpectrumRequest(which="smallest", k=2)
    assert req.replace(null_dim=3).null_dim == 3 and req.null_dim is None
    with pytest.raises(NearoptError):
        req.replace(k=0)
