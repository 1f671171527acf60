"""The pair kernels of :mod:`nearopt.gaussian.kernels`: one formula per activation, every engine equal to it.

Per activation, on random students and teachers with zero padding rows, duplicated, doubled,
sign-flipped and teacher-aligned units (collinear pairs) besides the self pairs:

* the batched torch engine (:func:`nearopt.gaussian.kernels.loss_gradient`) against the library's
  single-start loss and gradient (:mod:`nearopt.gaussian.objective`, the activation's own closed
  form), and its padded batch against the unpadded one;
* ReLU: the per-run numba engine (:mod:`nearopt.landscape._relu_jit`, general teacher and the committee
  basis shortcut) against the torch engine; erf: the formula bound to ``math`` (the compiled
  engine's binding) against the torch binding;
* the Newton polish's Hessian products (forward-mode derivative of the batched gradient; for the
  ReLU committee with ``v`` fixed the derivative worked out by hand) against the dense exact Hessian of
  :func:`nearopt.landscape.critical.exact_hessian`, against each other, and against torch autograd's
  Hessian of the textbook arc-cosine loss (``tests/_reference.py``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import _reference as ref
import numpy as np
import pytest
import torch

from nearopt.gaussian import kernels
from nearopt.gaussian.objective import population_gradient, population_loss
from nearopt.landscape.critical import committee_teacher, exact_hessian
from nearopt.model.activations import get_activation
from nearopt.model.network import TwoLayerNet
from nearopt.model.problem import Problem

ACTIVATIONS = ["relu", "erf", "erf:unit"]
K, M, D, R = 4, 3, 5, 5


def _case(seed: int):
    """Students ``(R, K + 1, D)`` whose last row is zero padding, a teacher ``(M + 1, D)`` likewise; collinear pairs in runs 0-2."""
    rng = np.random.default_rng(seed)
    T, u = np.zeros((M + 1, D)), np.zeros(M + 1)
    T[:M], u[:M] = rng.normal(size=(M, D)), rng.normal(size=M)
    W, v = np.zeros((R, K + 1, D)), np.zeros((R, K + 1))
    W[:, :K], v[:, :K] = rng.normal(size=(R, K, D)), rng.normal(size=(R, K))
    W[0, 1] = W[0, 0]  # duplicated unit
    W[0, 3] = 2.0 * W[0, 2]  # parallel unit
    W[1, 2] = -W[1, 0]  # sign-flipped unit
    W[2, 0] = T[0]  # a unit on a teacher unit
    W[2, 1] = -3.0 * T[1]
    return W, v, T, u


def _library(act: str, T, u, W, v, trained: str = "both"):
    a = get_activation(act)
    return Problem(TwoLayerNet(T, u[None], a), student=TwoLayerNet(W, v[None], a), trained=trained)


def _t(*xs):
    return tuple(torch.as_tensor(x, dtype=torch.float64) for x in xs)


@pytest.mark.parametrize("act", ACTIVATIONS)
def test_every_engine_gives_the_one_loss_and_gradient(act):
    W, v, T, u = _case(1)
    L, gW, gv = kernels.loss_gradient(act, *_t(W, v, T, u))
    # padding rows stay zero and change nothing: the unpadded batch gives the same numbers
    L0, gW0, gv0 = kernels.loss_gradient(act, *_t(W[:, :K], v[:, :K], T[:M], u[:M]))
    assert not gW[:, K].any() and not gv[:, K].any()
    np.testing.assert_allclose(L.numpy(), L0.numpy(), rtol=1e-15, atol=0)
    np.testing.assert_allclose(gW[:, :K].numpy(), gW0.numpy(), rtol=0, atol=1e-15 * float(gW0.abs().max()))
    np.testing.assert_allclose(gv[:, :K].numpy(), gv0.numpy(), rtol=0, atol=1e-15 * float(gv0.abs().max()))
    for r in range(R):  # the library's single-start path, unpadded
        pr = _library(act, T[:M], u[:M], W[r, :K], v[r, :K])
        g = population_gradient(pr)
        assert abs(L[r].item() - population_loss(pr)) <= 1e-13 * max(1.0, abs(L[r].item()))
        mine = np.concatenate([gW[r, :K].numpy().ravel(), gv[r, :K].numpy()])
        np.testing.assert_allclose(mine, g, rtol=0, atol=1e-13 * max(1.0, np.abs(g).max()))
    tp = kernels.teacher_power(act, *_t(T, u))
    assert abs(tp.item() - 2.0 * population_loss(_library(act, T[:M], u[:M], np.zeros((1, D)), np.zeros(1)))) <= 1e-14 * tp.item()


def test_compiled_relu_gradient_equals_the_torch_engine():
    """The numba engine (same formulas, bound to ``math``) against the torch engine: general teacher, padding, and the basis shortcut."""
    from nearopt.landscape import _relu_jit
    from nearopt.landscape.descent import ClosedForm

    W, v, T, u = _case(2)
    committee = committee_teacher(D)
    for T_, u_, basis in ((T, u, False), (committee.W1, committee.W2.ravel(), True)):
        gW, gv = kernels.gradient("relu", *_t(W, v, T_, u_))
        That, bn, bw = ClosedForm("relu", *_t(T_, u_)).numpy_teacher(np.arange(R))
        for r in range(R):
            cW, cv = np.zeros_like(W[r]), np.zeros_like(v[r])
            work = _relu_jit.workspace(W.shape[1], That.shape[1], D)
            _relu_jit.gradient(W[r], v[r], np.ascontiguousarray(That[r]), np.ascontiguousarray(bn[r]), np.ascontiguousarray(bw[r]), basis,
                               cW, cv, work, True)
            np.testing.assert_allclose(cW, gW[r].numpy(), rtol=0, atol=1e-14 * float(gW.abs().max()))
            np.testing.assert_allclose(cv, gv[r].numpy(), rtol=0, atol=1e-14 * float(gv.abs().max()))


@pytest.mark.parametrize("act", ["erf", "erf:unit"])
def test_erf_pair_bound_to_math_equals_the_torch_binding(act):
    c = 2.0 if act == "erf:unit" else 1.0
    rng = np.random.default_rng(4)
    rho, da, db = rng.uniform(-1.0, 1.0, 50), rng.uniform(1.0, 9.0, 50), rng.uniform(1.0, 9.0, 50)
    rho[:3] = [1.0, -1.0, 1.0 - 1e-16]  # self pair at |w| -> inf, antiparallel, rounding
    root = np.sqrt(da * db)
    scalar = kernels.bind(kernels.erf_pair, kernels.SCALAR)
    tensors = kernels.erf_pair(*_t(rho, da, root), c)
    for i in range(50):
        for x, y in zip(scalar(float(rho[i]), float(da[i]), float(root[i]), c), tensors):
            assert x == pytest.approx(float(y[i]), rel=1e-15, abs=0)


@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("trained", ["first", "both"])
def test_hessian_product_is_the_derivative_of_the_one_gradient(act, trained):
    """The polish's ``H x`` (forward mode of :func:`nearopt.gaussian.kernels.gradient`) against the dense exact Hessian."""
    from nearopt.landscape.polish import _Gradient

    W, v, T, u = _case(3)
    W, v, T, u = W[:3, :K], v[:3, :K], T[:M], u[:M]  # runs 0-2: collinear pairs (held at angle 0 or pi for ReLU)
    g = _Gradient(act, *_t(T, u, W, v), trained)
    th = g.theta(*_t(W, v))
    hvp = g.hessian(th, torch.arange(3))
    P = th.shape[1]
    H = torch.stack([hvp(torch.eye(P, dtype=torch.float64)[i].expand(3, -1).contiguous()) for i in range(P)], -1).numpy()
    for r in range(3):
        np.testing.assert_allclose(H[r], H[r].T, rtol=0, atol=1e-12 * np.abs(H[r]).max())
        if act != "relu" or r == 2:  # ReLU: the exact Hessian has delta terms at parallel student pairs (runs 0, 1)
            ref = exact_hessian(_library(act, T, u, W[r], v[r], trained))
            np.testing.assert_allclose(H[r], ref, rtol=0, atol=1e-12 * np.abs(ref).max())


def test_without_numba_the_descent_falls_back_to_torch():
    """numba is an optional extra: without it ``import`` works, ``engine="auto"`` descends in torch, ``"compiled"`` says what to install."""
    code = """
import sys
sys.modules["numba"] = None  # as if not installed
import numpy as np
from nearopt.landscape.critical import committee_teacher
from nearopt.errors import NearoptError
from nearopt.landscape.descent import DescentProtocol, batched_descent
t = committee_teacher(3)
W0 = np.random.default_rng(0).normal(scale=0.5, size=(2, 3, 3))
d = batched_descent(t, W0, np.ones((2, 3)), protocol=DescentProtocol(gtol=1e-6, max_steps=50))
assert d.engine == "torch", d.engine
try:
    batched_descent(t, W0, np.ones((2, 3)), protocol=DescentProtocol(gtol=1e-6, max_steps=50), engine="compiled")
except NearoptError as e:
    assert "nearopt[fast]" in str(e), e
else:
    raise AssertionError("no error")
assert "nearopt.landscape._relu_jit" not in sys.modules
print("ok")
"""
    src = Path(__file__).resolve().parents[1] / "src"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(src)})
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_relu_hessian_engine_equals_the_forward_mode_derivative():
    """The polish's ReLU Hessian product (worked out by hand for speed) against the forward-mode derivative of the one gradient,
    at points with duplicated, doubled, sign-flipped and teacher-aligned units."""
    from nearopt.landscape.polish import _Gradient, _ReluHessian

    W, v, T, u = _case(5)
    W, v, T, u = W[:, :K], v[:, :K], T[:M], u[:M]
    g = _Gradient("relu", *_t(T, u, W, v), "first")
    th = g.theta(*_t(W, v))
    assert isinstance(g.hessian(th, torch.arange(R)), _ReluHessian)
    fast, ref = g.hessian(th, torch.arange(R)), g.forward_hessian(th, torch.arange(R))
    x = torch.as_tensor(np.random.default_rng(6).normal(size=th.shape))
    a, b = fast(x), ref(x)
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=0, atol=1e-13 * float(b.abs().max()))


@pytest.mark.parametrize("trained", ["first", "both"])
def test_polish_hessian_products_equal_the_autodiff_hessian_of_an_independent_loss(trained):
    """The polish's products (by hand for ReLU with ``v`` fixed, forward mode otherwise), as dense matrices, against
    torch autograd's Hessian of the textbook arc-cosine loss (``tests/_reference.py``) at generic points."""
    from nearopt.landscape.polish import _Gradient, _ReluHessian

    rng = np.random.default_rng(8)
    T, u = rng.normal(size=(M, D)), rng.normal(size=M)
    W, v = rng.normal(size=(R, K, D)), rng.normal(size=(R, K))
    g = _Gradient("relu", *_t(T, u, W, v), trained)
    th = g.theta(*_t(W, v))
    hvp = g.hessian(th, torch.arange(R))
    assert isinstance(hvp, _ReluHessian) == (trained == "first")
    P = th.shape[1]
    H = torch.stack([hvp(torch.eye(P, dtype=torch.float64)[i].expand(R, -1).contiguous()) for i in range(P)], -1).numpy()
    for r in range(R):
        H_ref = ref.hessian("relu", W[r], v[r], T, u, trained=trained)
        np.testing.assert_allclose(H[r], H_ref, rtol=0, atol=1e-13 * np.abs(H_ref).max())
