"""The torch thick-restart Lanczos (the top end on a GPU) and the torch-side SLQ recurrence,
against dense spectra, ARPACK and the NumPy route."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.sparse.linalg import aslinearoperator

import nearopt as no
from nearopt.curvature.population import PopulationHessian
from nearopt.errors import NearoptError
from nearopt.spectra.extremes import largest_eigenpairs
from nearopt.spectra.lanczos import lanczos_tridiagonals, thick_restart_lanczos
from nearopt.spectra.torch_ops import TorchOperator


def _dense(eigs: np.ndarray, seed: int) -> np.ndarray:
    Q = scipy.linalg.qr(np.random.default_rng(seed).standard_normal((eigs.size, eigs.size)))[0]
    return (Q * eigs) @ Q.T


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(30, 120),
    k=st.integers(1, 8),
    extra=st.integers(0, 10),
    seed=st.integers(0, 10**6),
    spread=st.sampled_from(["uniform", "clustered", "signed"]),
)
def test_top_of_random_spectra(n, k, extra, seed, spread):
    """Any symmetric spectrum (clusters, negative values) with a small basis (``max(2k + 1, k + 6)``
    and up; the default is ``max(2k + 1, k + 20)``): many restarts, and the top ``k`` to the
    rounding of a dense ``eigh``. (Smaller bases need thousands of restarts on some spectra: a
    basis of ``k + 2`` on a cluster with relative gaps ``5·10⁻⁶``, or of 3 for ``k = 1`` on a
    uniform spectrum of 120 values. That is the method's limit, as for ARPACK.)"""
    rng = np.random.default_rng(seed)
    eigs = {"uniform": rng.uniform(0, 1, n), "clustered": 1 + 1e-3 * rng.standard_normal(n), "signed": rng.standard_normal(n)}[spread]
    H = torch.as_tensor(_dense(eigs, seed + 1))
    ncv = min(n, max(2 * k + 1, k + 6) + extra)
    res = thick_restart_lanczos(lambda V: H @ V, n, k, ncv=ncv, tol=1e-12, seed=seed)
    exact = np.sort(eigs)[-k:]
    scale = np.abs(eigs).max()
    assert res.converged
    assert np.abs(res.values - exact).max() <= 1e-10 * scale
    R = H @ res.vectors - res.vectors * torch.as_tensor(res.values)
    assert float(torch.linalg.norm(R, dim=0).max()) <= 1e-8 * scale
    assert torch.allclose(res.vectors.T @ res.vectors, torch.eye(k, dtype=torch.float64), atol=1e-10)


def test_low_rank_operator_restarts_from_fresh_directions():
    """Rank 3 with ``ncv = 10``: the Krylov space is exhausted after 3 steps and must go on
    from fresh directions (the zero eigenvalues are then found exactly)."""
    n = 200
    U = scipy.linalg.qr(np.random.default_rng(0).standard_normal((n, 3)), mode="economic")[0]
    H = torch.as_tensor((U * np.array([3.0, 2.0, 1.0])) @ U.T)
    res = thick_restart_lanczos(lambda V: H @ V, n, 5, ncv=10)
    assert res.converged and np.allclose(res.values, [0.0, 0.0, 1.0, 2.0, 3.0], atol=1e-12)


def test_basis_as_large_as_the_operator_is_exact():
    eigs = np.linspace(1, 2, 12)
    H = torch.as_tensor(_dense(eigs, 3))
    res = thick_restart_lanczos(lambda V: H @ V, 12, 4, ncv=12)
    assert np.allclose(res.values, eigs[-4:], rtol=1e-13)


def test_rejects_a_basis_no_larger_than_k():
    with pytest.raises(NearoptError, match="ncv"):
        thick_restart_lanczos(lambda V: V, 50, 10, ncv=10)


@pytest.mark.parametrize("act", ["erf", "tanh", "relu"])
def test_population_top_agrees_with_arpack_and_dense(act):
    net = no.sample_teacher(14, 12, act, seed=1)
    op = PopulationHessian(net)
    exact = scipy.linalg.eigvalsh(op.to_dense())[-10:]
    ours = largest_eigenpairs(op, 10, solver="lanczos", return_vectors=True)
    arpack = largest_eigenpairs(op, 10, solver="arpack")
    assert ours.method == "lanczos-thick-restart" and arpack.method == "arpack-LA"
    assert ours.converged and np.abs(ours.values / exact - 1).max() <= 1e-12
    assert np.abs(arpack.values / exact - 1).max() <= 1e-12
    assert ours.vectors.shape == (op.n_params, 10)
    with pytest.raises(NearoptError, match="solver"):
        largest_eigenpairs(op, 10, solver="eigs")


def test_same_seed_same_numbers():
    H = torch.as_tensor(_dense(np.random.default_rng(5).uniform(0, 1, 80), 6))
    a = thick_restart_lanczos(lambda V: H @ V, 80, 6, ncv=14, seed=4)
    b = thick_restart_lanczos(lambda V: H @ V, 80, 6, ncv=14, seed=4)
    assert np.array_equal(a.values, b.values) and a.products == b.products


def test_slq_recurrence_is_the_same_through_torch_and_numpy():
    """The tridiagonals from a torch operator (kept on its device) equal those through NumPy
    (over a few steps: later coefficients of this ill-conditioned operator amplify rounding)."""
    net = no.sample_teacher(10, 8, "erf", seed=2)
    op = PopulationHessian(net)
    Q0 = np.random.default_rng(0).choice([-1.0, 1.0], size=(op.n_params, 3))
    via_torch = lanczos_tridiagonals(op, Q0, 8)
    via_numpy = lanczos_tridiagonals(aslinearoperator(op.to_dense()), Q0, 8)
    wrapped = lanczos_tridiagonals(TorchOperator(lambda V: op.torch_matmat(V), op.n_params), Q0, 8, reorth=False)
    for x, y in zip(via_torch, via_numpy):
        assert np.allclose(x, y, rtol=1e-9, atol=1e-14)
    assert np.allclose(wrapped[0], via_torch[0], rtol=1e-9)
