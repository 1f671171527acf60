"""The locking LOBPCG (nearopt.spectra.lobpcg) against exact spectra, and its integration in smallest_eigenpairs."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import scipy.sparse.linalg
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import nearopt as no
from nearopt.curvature.population import PopulationHessian, rescaling_modes
from nearopt.errors import NearoptError
from nearopt.spectra.extremes import locking_block, smallest_eigenpairs
from nearopt.spectra.lobpcg import _directions, lobpcg_smallest, product_rounding
from nearopt.spectra.torch_ops import ProductMeter, column_norms, residual_norms


def _operator(eigs: np.ndarray, seed: int):
    """``H = Q diag(eigs) Q^T`` as a torch matmat, with ``Q`` a random orthogonal matrix; and a
    rough preconditioner (the inverse of ``H`` with each eigenvalue off by a random factor in [1/3, 3])."""
    rng = np.random.default_rng(seed)
    Q = torch.as_tensor(scipy.linalg.qr(rng.standard_normal((eigs.size, eigs.size)))[0])
    d = torch.as_tensor(eigs)
    fuzz = torch.as_tensor(np.exp(rng.uniform(-np.log(3), np.log(3), eigs.size)))
    inv = torch.where(d > 0, 1.0 / torch.clamp(d, min=1e-300) * fuzz, torch.ones_like(d))

    def matmat(V):
        return Q @ (d[:, None] * (Q.T @ V))

    def precondition(V):
        return Q @ (inv[:, None] * (Q.T @ V))

    return Q, matmat, precondition


def test_locks_through_a_small_block_to_the_exact_bottom():
    """k = 12 eigenvalues spread over 4 decades, through a block of 5: locking and refilling.

    (The products of this dense operator carry errors ``~ eps ||H||``, so relative accuracy
    ``1e-10`` needs eigenvalues above ``~1e-5 ||H||``.)"""
    eigs = np.sort(np.concatenate([np.geomspace(1e-4, 1e-2, 40), np.random.default_rng(0).uniform(0.1, 1.0, 360)]))
    Q, matmat, pre = _operator(eigs, 1)
    res = lobpcg_smallest(matmat, eigs.size, 12, lambda_max=1.0, precondition=pre, block=5, tol=1e-8, seed=3)
    assert res.converged and res.values.shape == (12,)
    assert np.abs(res.values / eigs[:12] - 1).max() <= 1e-10
    X = res.vectors
    assert torch.allclose(X.T @ X, torch.eye(12, dtype=torch.float64), atol=1e-8)
    assert np.all(res.residuals <= 1e-8 * res.values * (1 + 1e-6)) | np.all(res.bounds <= 1e-16)
    assert res.products > 0 and res.iterations > 0


def test_constraints_deflate_a_known_null_space():
    eigs = np.concatenate([np.zeros(7), np.geomspace(1e-4, 1.0, 293)])
    Q, matmat, pre = _operator(eigs, 2)
    res = lobpcg_smallest(matmat, eigs.size, 5, lambda_max=1.0, precondition=pre, constraints=Q[:, :7].contiguous(), block=9)
    assert res.converged and np.abs(res.values / eigs[7:12] - 1).max() <= 1e-9
    assert float(torch.abs(Q[:, :7].T @ res.vectors).max()) <= 1e-10  # stays off the null space


def test_out_of_iterations_is_reported_not_hidden():
    eigs = np.geomspace(1e-8, 1.0, 300)
    _, matmat, _ = _operator(eigs, 5)
    res = lobpcg_smallest(matmat, eigs.size, 6, lambda_max=1.0, block=4, maxiter=2)  # no preconditioner
    # a block of 4 cannot hold 6 pairs: what it has comes back, marked unconverged
    assert not res.converged and res.values.shape == (4,) and res.iterations == 2
    assert np.all(res.values >= eigs[:4] * (1 - 1e-12))  # Ritz values bound the eigenvalues from above


def _coarse(matmat, bits: int):
    """``matmat`` whose products round to ``bits``-bit mantissas: deterministic relative rounding
    like float64's, ``2^-(bits+1)`` instead of ``ε / 2`` (a product rounding far above ``ε ‖H‖``)."""

    def coarse(V):
        m, e = torch.frexp(matmat(V))
        return torch.ldexp(torch.round(m * 2.0**bits) / 2.0**bits, e)

    return coarse


def test_product_rounding_measures_the_products_rounding():
    eigs = np.geomspace(1e-3, 1.0, 200)
    _, matmat, _ = _operator(eigs, 7)
    V = torch.linalg.qr(torch.randn((200, 5), generator=torch.Generator().manual_seed(0), dtype=torch.float64))[0]
    assert np.all(product_rounding(matmat, V) <= 1e-14)  # float64: a few eps
    coarse = _coarse(matmat, 36)
    true = torch.linalg.norm(coarse(V) - matmat(V), dim=0).numpy()
    got = product_rounding(coarse, V)
    assert np.all((got >= 0.3 * true) & (got <= 5.0 * true))


def test_pairs_at_a_high_rounding_floor_lock_instead_of_diverging():
    """Products rounding at ``7·10⁻¹²``: every pair stalls at that floor, far above the fixed one
    (``FLOOR_RTOL λ_max``). The solver measures the rounding, locks the stalled pairs there
    and restarts its search directions when a residual grows, so the carried rounding cannot grow
    until the pairs are lost (relative errors of order 1 after 500 iterations). Whether the
    final check calls each pair ``at_floor`` depends on a margin (4× the measured rounding);
    the residuals all lie within 10× of it. A float64 run asked for a tolerance below its rounding
    stays accurate too."""
    eigs = np.geomspace(1e-3, 1.0, 200)
    _, matmat, pre = _operator(eigs, 7)
    coarse = _coarse(matmat, 36)
    res = lobpcg_smallest(coarse, eigs.size, 12, lambda_max=1.0, precondition=pre, block=8, tol=1e-12, maxiter=500)
    assert res.iterations < 500 and res.at_floor.any()  # all 12 locked at the measured floor
    assert np.all(res.residuals > 1e-12 * res.values)  # the tolerance itself is out of reach
    assert np.all(res.residuals <= 10 * product_rounding(coarse, res.vectors))  # ... and the floor reached
    assert np.abs(res.values / eigs[:12] - 1).max() <= 1e-10
    exact = lobpcg_smallest(matmat, eigs.size, 12, lambda_max=1.0, precondition=pre, block=8, tol=1e-12, maxiter=500)
    assert exact.residuals.max() <= 1e-14 and np.abs(exact.values / eigs[:12] - 1).max() <= 1e-12  # exact products: every pair to 1e-12
    early = lobpcg_smallest(_coarse(matmat, 36), eigs.size, 4, lambda_max=1.0, precondition=pre, block=8, tol=1e-12, maxiter=2)
    assert not early.converged and not early.at_floor.any()  # unconverged is not "at the floor"


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.integers(1, 8), extra=st.integers(1, 6), decades=st.floats(1.0, 4.0))
def test_finds_the_bottom_of_random_spectra(seed, k, extra, decades):
    """Any spread of eigenvalues, a block of k + 1 ... k + 6 (a block with no guard vector converges at the
    pace of the gap to the next eigenvalue, hopeless in a dense cluster)."""
    block = k + extra
    rng = np.random.default_rng(seed)
    eigs = np.sort(10 ** rng.uniform(-decades, 0.0, 150))  # above eps ||H|| by 1e-4 at least
    _, matmat, pre = _operator(eigs, seed)
    res = lobpcg_smallest(matmat, eigs.size, k, lambda_max=float(eigs[-1]), precondition=pre, block=block, tol=1e-7, seed=seed)
    assert res.converged
    # clustered pairs may come out accurate to the eigenvalue bound tol^2 (relative), not better
    assert np.abs(res.values / eigs[:k] - 1).max() <= 1e-8


@pytest.mark.parametrize("act,n_i,n_h", [("erf", 16, 12), ("tanh", 10, 14)])
def test_population_bottom_matches_dense(act, n_i, n_h):
    net = no.sample_teacher(n_i, n_h, act, seed=0)
    op = PopulationHessian(net)
    exact = scipy.linalg.eigvalsh(op.to_dense())
    res = smallest_eigenpairs(op, 12, preconditioner=op.preconditioner(), null_dim=0, block=6)
    assert res.method == "lobpcg-locking+preconditioner" and res.extra["block"] == 6
    assert res.converged and np.abs(res.values / exact[:12] - 1).max() <= 1e-8


def test_relu_with_its_rescaling_modes_as_constraints():
    net = no.sample_teacher(12, 8, "relu", seed=1)
    op = PopulationHessian(net)
    exact = scipy.linalg.eigvalsh(op.to_dense())
    Z = rescaling_modes(net)
    res = smallest_eigenpairs(op, 5, preconditioner=op.preconditioner(), null_vectors=Z, null_dim=Z.shape[1])
    assert res.method.startswith("lobpcg-locking") and res.null_dim == 8 and res.null_source == "vectors"
    assert np.abs(res.values / exact[8:13] - 1).max() <= 1e-8


def test_solver_choice_and_memory_budget():
    op = PopulationHessian(no.sample_teacher(16, 12, "erf", seed=0))
    with pytest.raises(NearoptError, match="locking solver needs the whole null space"):
        smallest_eigenpairs(op, 3, solver="locking")
    with pytest.raises(NearoptError, match="solver must be"):
        smallest_eigenpairs(op, 3, null_dim=0, solver="arnoldi")
    scipy_res = smallest_eigenpairs(op, 3, preconditioner=op.preconditioner(), null_dim=0, solver="scipy")
    assert scipy_res.method.startswith("lobpcg+")
    P = 4_000_000
    assert locking_block(P, 20, budget=3 << 30) == 8  # (7 m + 2 k) P floats within 3 GiB
    assert locking_block(1000, 20, budget=3 << 30) == 24
    with pytest.raises(NearoptError, match="need about"):
        locking_block(P, 20, budget=1 << 30)


def test_products_are_counted_once_from_the_lambda_max_estimate_on():
    """``products`` is every vector the operator multiplied, the ``λ_max`` estimate included, counted
    on one meter (so progress lines go on from the estimate instead of starting again at 0)."""
    op = PopulationHessian(no.sample_teacher(10, 6, "erf", seed=0))
    seen = []

    class Watched(scipy.sparse.linalg.LinearOperator):
        def __init__(self):
            super().__init__(dtype=np.float64, shape=op.shape)

        def _matmat(self, X):
            seen.append(X.shape[1])
            return op.matmat(X)

    res = smallest_eigenpairs(Watched(), 3, null_dim=0, preconditioner=op.preconditioner())
    assert res.method.startswith("lobpcg-locking") and res.converged
    assert res.products == sum(seen) and sum(seen) > 0
    # the meter goes on from what it had counted: progress lines never restart at 0
    reports = []
    meter = ProductMeter(lambda products, seconds: reports.append(products), every=0.0)
    meter.add(7)
    eigs = np.geomspace(1e-3, 1.0, 120)
    _, matmat, pre = _operator(eigs, 3)
    again = lobpcg_smallest(matmat, eigs.size, 3, lambda_max=1.0, precondition=pre, block=6, meter=meter)
    assert reports[0] == 7 and all(b > a for a, b in zip(reports, reports[1:]))
    assert again.products == meter.products == reports[-1] > 7


@settings(max_examples=40, deadline=None)
@given(nl=st.integers(0, 4), nx=st.integers(1, 5), nw=st.integers(1, 5), np_=st.integers(0, 5), seed=st.integers(0, 2**16), tiny=st.booleans())
def test_search_directions_from_the_ritz_coefficients(nl, nx, nw, np_, seed, tiny):
    """The next ``P``'s coefficients are orthonormal, orthogonal to the new ``L`` and ``X``'s, and span
    what LOBPCG's directions (the ``W``/``P`` parts of the new ``X``'s coefficients) add to them,
    also when a pair's part is tiny (a nearly converged pair keeps its direction)."""
    g = np.random.default_rng(seed)
    s = nl + nx + nw + np_
    C, _ = np.linalg.qr(g.standard_normal((s, s)))
    if tiny:
        C[nl + nx :, nl] *= 1e-9  # the first new X's W/P part: tiny, its column renormalised below
        C, _ = np.linalg.qr(C)
    Ct = torch.as_tensor(C)
    Cp = _directions(Ct, nl, nx).numpy()
    assert np.allclose(Cp.T @ Cp, np.eye(Cp.shape[1]), atol=1e-10)
    assert np.abs(Cp.T @ C[:, : nl + nx]).max() <= 1e-10
    Z = C[:, nl : nl + nx].copy()
    Z[: nl + nx] = 0.0
    Z -= C[:, : nl + nx] @ (C[:, : nl + nx].T @ Z)  # what the directions add to span [L X]
    assert np.linalg.norm(Z - Cp @ (Cp.T @ Z)) <= 1e-8 * max(np.linalg.norm(Z), 1e-300)
    assert Cp.shape[1] == min(nx, s - nl - nx, nw + np_)


def test_progress_lines_say_how_many_pairs_are_locked(capsys):
    """A long run's progress lines (``progress=True``) carry the locked count, which only grows,
    and the last one (the final check's products) says all ``k`` are locked."""
    eigs = np.geomspace(1e-3, 1.0, 120)
    _, matmat, pre = _operator(eigs, 4)
    meter = ProductMeter(True, "smallest: ", every=0.0)
    res = lobpcg_smallest(matmat, eigs.size, 4, lambda_max=1.0, precondition=pre, block=6, meter=meter)
    lines = capsys.readouterr().err.strip().splitlines()
    locked = [int(line.rsplit(", ", 1)[1].split("/")[0]) for line in lines if "pairs locked" in line]
    assert res.converged and len(locked) > 3 and locked == sorted(locked)
    assert lines[-1].startswith("  smallest: ") and lines[-1].endswith("4/4 pairs locked")


@settings(max_examples=15, deadline=None)
@given(n=st.sampled_from([1, 7, 4096, 4097, 9000, 12288]), m=st.integers(1, 6), offset=st.integers(0, 2), seed=st.integers(0, 2**16))
def test_column_norms_and_residual_norms_by_chunks(n, m, offset, seed):
    """The host's row-chunked column norms equal ``torch.linalg.norm(V, dim=0)`` for any row count
    (a partial last chunk included) and for column slices of wider blocks; the chunked residual
    check equals ``‖H X − X θ‖`` column by column."""
    g = torch.Generator().manual_seed(seed)
    V = torch.randn((n, m + offset), generator=g, dtype=torch.float64)[:, offset:]
    torch.testing.assert_close(column_norms(V), torch.linalg.norm(V, dim=0), rtol=1e-13, atol=0.0)
    d = torch.rand(n, generator=g, dtype=torch.float64)
    theta = torch.rand(m, generator=g, dtype=torch.float64)

    def matmat(X):
        return d[:, None] * X

    want = torch.linalg.norm(matmat(V) - V * theta, dim=0)
    torch.testing.assert_close(residual_norms(matmat, V, theta), want, rtol=1e-12, atol=1e-300)
