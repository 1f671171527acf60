"""GPU paths agree with the CPU ones (skipped where no CUDA device is present, as on CI)."""

import numpy as np
import pytest
import torch

import nearopt as no
from nearopt.curvature import BatchGaussNewton, PopulationHessian, population_hessian
from nearopt.spectra import slq

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@pytest.mark.parametrize("act", ["erf", "quadratic", "relu"])
def test_batch_hessians_on_gpu_match_cpu(act):
    net = no.sample_teacher(6, 5, act, seed=0)
    X = no.sample_inputs(3000, 6, seed=1)
    G = no.gauss_newton(net, X)
    assert np.allclose(no.gauss_newton(net, X, device="cuda", chunk_size=700), G, rtol=1e-12, atol=1e-15)
    assert np.allclose(no.loss_hessian(net, X, device="cuda"), G, rtol=1e-10, atol=1e-13)
    R = no.curvature.jacobian_r_factor(net, X, device="cuda")
    assert np.allclose(R.T @ R / 3000, G, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("method", ["jacobian-svd", "gauss-newton", "autodiff"])
def test_batch_spectrum_on_gpu(method):
    net = no.sample_teacher(5, 8, "quadratic", seed=2)
    X = no.sample_inputs(2000, 5, seed=3)
    cpu = no.batch_spectrum(net, X, method=method)
    gpu = no.batch_spectrum(net, X, method=method, device="cuda")
    assert gpu.extra["device"].startswith("cuda")
    assert gpu.rank.rank == cpu.rank.rank == 15
    assert np.allclose(gpu.eigenvalues, cpu.eigenvalues, rtol=1e-9, atol=1e-12)


def test_hvp_operators_on_gpu():
    net = no.sample_teacher(7, 4, "erf", seed=4)
    X = no.sample_inputs(500, 7, seed=5)
    V = np.random.default_rng(0).standard_normal((net.n_params, 3))
    assert np.allclose(PopulationHessian(net, device="cuda") @ V, population_hessian(net) @ V, rtol=1e-10, atol=1e-13)
    assert np.allclose(BatchGaussNewton(net, X, device="cuda") @ V, no.gauss_newton(net, X) @ V, rtol=1e-10, atol=1e-13)


def test_smallest_eigenpairs_run_on_the_gpu():
    """The locking LOBPCG keeps its blocks on the operator's device and agrees with the CPU run."""
    net = no.sample_teacher(16, 12, "erf", seed=0)
    cpu = PopulationHessian(net).spectrum("lanczos", which="smallest", k=6, null_dim=0)
    gpu_op = PopulationHessian(net, device="cuda")
    gpu = gpu_op.spectrum("lanczos", which="smallest", k=6, null_dim=0)
    assert gpu.method == "lobpcg-locking+preconditioner" and gpu.accuracy["device"].startswith("cuda")
    assert gpu.converged and np.allclose(gpu.eigenvalues, cpu.eigenvalues, rtol=1e-9)


def test_top_end_and_slq_stay_on_the_gpu():
    """On a GPU, ``auto`` takes the torch thick-restart Lanczos (ARPACK would move every vector
    to the host), and SLQ's recurrence runs there too; both agree with the CPU runs."""
    net = no.sample_teacher(16, 12, "erf", seed=0)
    cpu_op, gpu_op = PopulationHessian(net), PopulationHessian(net, device="cuda")
    cpu, gpu = (op.spectrum("lanczos", which="largest", k=8) for op in (cpu_op, gpu_op))
    assert gpu.method == "lanczos-thick-restart" and cpu.method == "arpack-LA"
    assert gpu.converged and np.allclose(gpu.eigenvalues, cpu.eigenvalues, rtol=1e-12)
    d_cpu, d_gpu = slq(cpu_op, n_probes=4, steps=20), slq(gpu_op, n_probes=4, steps=20)
    assert np.allclose(d_gpu.moments(3)[0], d_cpu.moments(3)[0], rtol=1e-9)
