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
from nearopt.model import pair_terms
from nearopt.model.activations import correlation_gap, get_activation
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


def test_the_engines_run_the_library_code_objects():
    """One text per formula: the torch and numba bindings are the code objects the activations' closed forms evaluate."""
    from nearopt.landscape import _relu_jit
    from nearopt.model import activations

    for name in ("unit_gap", "relu_angles", "relu_pair", "relu_kernel", "erf_gap", "erf_pair"):
        shared = getattr(pair_terms, name)
        assert getattr(kernels, name).__code__ is shared.__code__
        assert getattr(kernels, name).__globals__["sqrt"] is torch.sqrt
        assert kernels.bind(shared, kernels.SCALAR).__code__ is shared.__code__
    for name in ("relu_angles", "relu_pair", "relu_kernel", "erf_gap", "erf_pair"):
        assert getattr(activations, name) is getattr(pair_terms, name)  # what ReLU / Erf.closed_form_moments call
    for jitted, shared in ((_relu_jit._relu_angles, pair_terms.relu_angles), (_relu_jit._relu_pair, pair_terms.relu_pair),
                           (_relu_jit._relu_kernel, pair_terms.relu_kernel), (_relu_jit._unit_gap, pair_terms.unit_gap),
                           (_relu_jit._unit_gradient, kernels.unit_gradient)):
        assert jitted.py_func.__code__ is shared.__code__


def _pairs(scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Row pairs ``(P, D)`` twice at norms ``~ scale``: random, parallel, doubled, antiparallel, sign-flipped and
    quadrupled, a unit with itself, orthogonal, nearly parallel (angle ``1e-7``) and nearly antiparallel."""
    rng = np.random.default_rng(7)
    a = rng.normal(size=(12, D))
    b = rng.normal(size=(12, D))
    b[4], b[5], b[6], b[7], b[8] = a[4], 2.0 * a[5], -a[6], -4.0 * a[7], a[8]  # exactly collinear covariance entries
    b[9] -= (a[9] @ b[9]) / (a[9] @ a[9]) * a[9]  # orthogonal to rounding
    e = rng.normal(size=D)
    e -= (e @ a[10]) / (a[10] @ a[10]) * a[10]
    b[10] = a[10] + 1e-7 * np.linalg.norm(a[10]) / np.linalg.norm(e) * e
    b[11] = -a[11] + 1e-7 * np.linalg.norm(a[11]) / np.linalg.norm(e) * e
    return scale * a, scale * b


def _library_terms(act: str, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(kappa, A, B)`` of each row pair from the activation's closed form (NumPy): ``gg``, ``b0`` and the step / ``dd``."""
    m = get_activation(act).closed_form_moments((a * a).sum(1), (a * b).sum(1), (b * b).sum(1))
    return m.gg, m.b[:, 0], m.b[:, 1]


def _engine_terms(act: str, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, ...]:
    """The same from the batched torch engine: each pair a run with one student ``a`` against the row ``b``."""
    W, Om = _t(a[:, None, :], np.stack([a, b], 1))
    if act == "relu":
        n, inv = kernels.safe_norm(Om)
        A, B = kernels._relu_pair_terms(Om[:, :1] * inv[:, :1, None], Om * inv[..., None])
        A = A * n[:, None, :] * inv[:, :1, None]  # homogeneity
        kappa = kernels.relu_kernel(A, B * torch.bmm(W, Om.transpose(1, 2)), (W * W).sum(-1, keepdim=True))
    else:
        kappa, A, B = kernels._erf_kernel(kernels._erf_c(act), W, Om)
    return tuple(x[:, 0, 1].numpy() for x in (kappa, A, B))


@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("scale", [1e-50, 1e-3, 1.0, 1e3, 1e150])  # the ReLU's K ~ 1 / |a|^3 leaves float64 below 1e-100
def test_engine_pair_terms_equal_the_library_moments(act, scale):
    """Parallel, antiparallel, orthogonal and nearly collinear units at tiny to huge norms: the engine's ``(kappa, A, B)``
    (unit rows and their correlation gap) equal the closed form's (covariance entries and ``correlation_gap``)."""
    a, b = _pairs(scale)
    # the engine starts from the cosine of rounded unit rows: its rounding (eps) is amplified by up to 1 / sin^2 t for the
    # ReLU (in A, and in Theta near t = pi) and by 1 / omega for erf (the library's covariance entries are exact data)
    c11, c12, c22 = (a * a).sum(1), (a * b).sum(1), (b * b).sum(1)
    gap = correlation_gap(c11, c12, c22)
    if act != "relu":
        k = kernels._erf_c(act)
        gap = pair_terms.erf_gap(k * c11, k * c22, gap)
    cond = np.where(gap > 0, 8 * np.finfo(float).eps / np.where(gap > 0, gap, 1.0), 0.0)
    for i, (lib, eng) in enumerate(zip(_library_terms(act, a, b), _engine_terms(act, a, b))):
        assert np.all(np.isfinite(lib)) and np.all(np.isfinite(eng))
        assert np.all(np.abs(eng - lib) <= (1e-13 + cond) * np.abs(lib) + 1e-15 * np.abs(lib).max()), (i, eng, lib)
    if act == "relu":  # parallel to rounding: angle 0 or pi exactly, in both
        for x in (_library_terms(act, a, b), _engine_terms(act, a, b)):
            assert np.all(x[2][[4, 5, 8]] == 0.5) and np.all(x[2][[6, 7]] == 0.0) and np.all(x[1][4:9] == 0.0)


@pytest.mark.parametrize("name", ["unit_gap", "relu_angles", "relu_pair", "relu_kernel", "erf_gap", "erf_pair"])
def test_each_formula_gives_the_same_values_in_every_binding(name):
    """NumPy (the library), torch (the batched engine), ``math`` and its numba compilation (the per-run engine), entry by entry."""
    pytest.importorskip("numba")
    from nearopt.landscape import _relu_jit
    rng = np.random.default_rng(8)
    n = 40
    cos = np.concatenate([[1.0, -1.0, 0.0, 1.0 - 2e-16, -1.0 + 2e-16, 1.0 - 1e-10, -1.0 + 1e-10], rng.uniform(-1.0, 1.0, n - 7)])
    gap = pair_terms.unit_gap(cos)  # (-cos, sqrt(gap)) on the unit circle: the scalar engine's polar_angle is acos
    norms = 10.0 ** rng.uniform(-150, 150, (2, n))
    kc = norms**2
    args = {"unit_gap": (cos,), "relu_angles": (cos, gap), "relu_pair": (cos + 2.0, gap, norms[0], norms[1]), "relu_kernel": (cos, gap, norms[0] ** 2),
            "erf_gap": (kc[0], kc[1], gap), "erf_pair": (cos, gap + 0.5, 1.0 + kc[0], np.sqrt(1.0 + kc[0]) * np.sqrt(1.0 + kc[1]), 2.0)}[name]
    f = getattr(pair_terms, name)
    ref = f(*args)
    ref = ref if isinstance(ref, tuple) else (ref,)
    tens = getattr(kernels, name)(*(torch.as_tensor(x) if isinstance(x, np.ndarray) else x for x in args))
    tens = tens if isinstance(tens, tuple) else (tens,)
    for y, t in zip(ref, tens):
        np.testing.assert_allclose(t.numpy(), y, rtol=5e-16, atol=0)  # an ulp: torch's and NumPy's atan2
    for engine in (kernels.bind(f, kernels.SCALAR), _relu_jit.numba.njit(kernels.bind(f, _relu_jit.SCALAR_COMPILED))):
        for i in range(n):
            out = engine(*(float(x[i]) if isinstance(x, np.ndarray) else x for x in args))
            out = out if isinstance(out, tuple) else (out,)
            for x, y in zip(out, ref):
                assert x == pytest.approx(float(y[i]), rel=5e-16, abs=0)


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
