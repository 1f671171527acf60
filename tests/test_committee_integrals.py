"""The committee-machine ODEs' Gaussian integrals I2, J2, I3, I4 against independent references written here.

References: tensor Gauss–Hermite on a symmetric square root of the covariance (smooth activations),
Monte Carlo with error bars, and for ReLU's I4 a different exact reduction (three nested tanh-sinh
integrals with only ``E[relu(u4) | u1, u2, u3]`` closed, where the library closes the last two).
"""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import special

from nearopt.errors import NearoptError
from nearopt.gaussian.committee_integrals import fourth_integral, i2, i3, i4, j2
from nearopt.model.activations import CustomActivation, get_activation

ENTRIES4 = [(0, 0), (0, 1), (1, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 2), (2, 3), (3, 3)]


def _covariance(seed, d=4, scale=1.0, rank=None):
    """A random PSD ``(d, d)`` covariance of diagonal ``~ scale`` (rank ``rank`` if given)."""
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((d, rank or d + 2))
    return scale * A @ A.T / A.shape[1]


def _gh_expect(fns, C, n=40):
    """``E[prod_i fns[i](u_i)]``, ``u ~ N(0, C)``: tensor Gauss–Hermite on the symmetric square root of ``C``."""
    d = C.shape[0]
    x, w = np.polynomial.hermite_e.hermegauss(n)
    w = w / math.sqrt(2 * math.pi)
    lam, V = np.linalg.eigh(C)
    S = V * np.sqrt(np.clip(lam, 0, None)) @ V.T
    Y = np.stack(np.meshgrid(*([x] * d), indexing="ij"), -1).reshape(-1, d)
    W = np.prod(np.stack(np.meshgrid(*([w] * d), indexing="ij"), -1).reshape(-1, d), 1)
    U = Y @ S.T
    out = W.copy()
    for i, f in enumerate(fns):
        out = out * f(U[:, i])
    return out.sum()


def _np(act, derivative=False):
    a = get_activation(act)
    return (lambda z: a.numpy_derivative(z)) if derivative else (lambda z: a.numpy(z))


@pytest.mark.parametrize("act", ["erf", "erf:unit", "tanh"])
@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_smooth_integrals_match_tensor_gauss_hermite(act, seed):
    C = _covariance(seed, scale=0.8)
    g, dg = _np(act), _np(act, True)
    tol = 1e-9 if act.startswith("erf") else 1e-6  # tanh's poles slow Gauss–Hermite (the reference), not the library
    ref2 = _gh_expect([g, g], C[:2, :2], 80)
    assert i2(C[0, 0], C[0, 1], C[1, 1], act) == pytest.approx(ref2, abs=tol)
    assert j2(C[0, 0], C[0, 1], C[1, 1], act) == pytest.approx(_gh_expect([dg, dg], C[:2, :2], 80), abs=tol)
    ref3 = _gh_expect([dg, lambda z: z, g], C[:3, :3], 60)
    assert i3(C[0, 0], C[0, 1], C[0, 2], C[1, 2], C[2, 2], act) == pytest.approx(ref3, abs=tol)
    ref4 = _gh_expect([dg, dg, g, g], C, 36)
    assert i4(*[C[i, j] for i, j in ENTRIES4], act) == pytest.approx(ref4, abs=10 * tol)


def test_erf_fourth_integral_is_saad_solla_at_any_scale():
    """erf(z) = erf(z' / sqrt 2) at z' = sqrt 2 z: I4 of erf:unit is 2 I4_erf(2 C)."""
    C = np.stack([_covariance(s) for s in range(5)])
    unit = fourth_integral("erf:unit", C).values
    np.testing.assert_allclose(unit, 2 * fourth_integral("erf", 2 * C).values, rtol=1e-13)


def test_linear_integrals_are_the_covariances():
    C = np.stack([_covariance(s) for s in range(4)])
    e = [C[:, i, j] for i, j in ENTRIES4]
    np.testing.assert_allclose(i4(*e, "linear"), C[:, 2, 3], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(i2(C[:, 0, 0], C[:, 0, 1], C[:, 1, 1], "linear"), C[:, 0, 1], rtol=1e-12)
    np.testing.assert_allclose(j2(C[:, 0, 0], C[:, 0, 1], C[:, 1, 1], "linear"), 1.0)
    np.testing.assert_allclose(i3(C[:, 0, 0], C[:, 0, 1], C[:, 0, 2], C[:, 1, 2], C[:, 2, 2], "linear"), C[:, 1, 2], rtol=1e-12, atol=1e-15)


def test_cubic_fourth_integral_matches_gauss_hermite():
    C = _covariance(3, scale=0.7)
    ref = _gh_expect([_np("cubic", True), _np("cubic", True), _np("cubic"), _np("cubic")], C, 12)
    assert i4(*[C[i, j] for i, j in ENTRIES4], "cubic") == pytest.approx(ref, rel=1e-11)


# --------------------------------------------------------------------------- ReLU
def _tanh_sinh(h):
    t = h * np.arange(-round(3.5 / h), round(3.5 / h) + 1)
    s = np.minimum(special.expit(np.pi * np.sinh(t)), 1 - 2.3e-16)
    return s, h * np.pi * np.cosh(t) * s * special.expit(-np.pi * np.sinh(t))


def _relu_i4_nested(C, h=1 / 12):
    """ReLU's I4 by three nested integrals (y1, y2, y3 on their truncated half-lines) and E[relu(u4) | y1..y3] closed."""
    d = np.sqrt(np.diag(C))
    R = C / np.outer(d, d)
    L = np.linalg.cholesky(R + 1e-300 * np.eye(4))
    s, w = _tanh_sinh(h)

    def nodes(partial, piv):  # mass above the bound and the nodes there
        q = special.ndtr(partial / piv)
        return q, -special.ndtri(np.maximum(q[..., None] * s, 1e-300))

    y1 = -special.ndtri(0.5 * s)
    q2, y2 = nodes(L[1, 0] * y1, L[1, 1])
    p3 = (L[2, 0] * y1)[:, None] + L[2, 1] * y2
    q3, y3 = nodes(p3, L[2, 2])
    u3 = p3[..., None] + L[2, 2] * y3
    mu = ((L[3, 0] * y1)[:, None] + L[3, 1] * y2)[..., None] + L[3, 2] * y3
    z = mu / L[3, 3]
    e4 = mu * special.ndtr(z) + L[3, 3] * np.exp(-z * z / 2) / math.sqrt(2 * math.pi)
    return d[2] * d[3] * 0.5 * (((((u3 * e4) @ w) * q3) @ w * q2) @ w)


def _mc(C, f, n=400_000, seed=0):
    u = np.random.default_rng(seed).standard_normal((n, C.shape[0])) @ np.linalg.cholesky(C + 1e-14 * np.eye(C.shape[0])).T
    v = f(u)
    return v.mean(), v.std() / math.sqrt(n)


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_relu_fourth_integral_matches_a_different_reduction(seed):
    C = _covariance(seed, scale=1.7)
    got = fourth_integral("relu", C)
    assert got.method == "tanh-sinh" and got.change <= 1e-7
    assert float(got.values) == pytest.approx(_relu_i4_nested(C), abs=1e-10 * np.trace(C))


def test_relu_integrals_match_monte_carlo():
    C = _covariance(11)
    relu, step = (lambda z: np.maximum(z, 0)), (lambda z: (z > 0).astype(float))
    checks = [
        (i2(C[0, 0], C[0, 1], C[1, 1], "relu"), lambda u: relu(u[:, 0]) * relu(u[:, 1])),
        (j2(C[0, 0], C[0, 1], C[1, 1], "relu"), lambda u: step(u[:, 0]) * step(u[:, 1])),
        (i3(C[0, 0], C[0, 1], C[0, 2], C[1, 2], C[2, 2], "relu"), lambda u: step(u[:, 0]) * u[:, 1] * relu(u[:, 2])),
        (i4(*[C[i, j] for i, j in ENTRIES4], "relu"), lambda u: step(u[:, 0]) * step(u[:, 1]) * relu(u[:, 2]) * relu(u[:, 3])),
    ]
    for value, f in checks:
        mean, err = _mc(C, f)
        assert abs(float(value) - mean) < 5 * err


@pytest.mark.parametrize("rows", [
    [0, 0, 1, 2],  # a unit with itself (u2 = u1): every diagonal term of the ODE
    [0, 1, 0, 2],  # u3 = u1
    [0, 1, 2, 2],  # u4 = u3
    [0, 0, 0, 0],  # all one field: E[relu(u)^2 step(u)] = c / 2
    [0, 1, "-0", 2],  # u3 = -u1: relu(u3) = 0 where step(u1) = 1
])
def test_relu_fourth_integral_of_collinear_fields(rows):
    """Exactly collinear fields (zero pivots) against Monte Carlo on the same rows."""
    rng = np.random.default_rng(5)
    base = rng.standard_normal((3, 5))
    A = np.stack([-base[0] if r == "-0" else base[r] for r in rows])
    C = A @ A.T / 5
    got = float(fourth_integral("relu", C).values)
    u = rng.standard_normal((400_000, 5)) @ A.T / math.sqrt(5)
    f = (u[:, 0] > 0) * (u[:, 1] > 0) * np.maximum(u[:, 2], 0) * np.maximum(u[:, 3], 0)
    assert abs(got - f.mean()) < 5 * f.std() / math.sqrt(f.size) + 1e-12
    if rows == [0, 0, 0, 0]:
        assert got == pytest.approx(C[0, 0] / 2, rel=1e-10)
    if rows == [0, 1, "-0", 2]:
        assert abs(got) < 1e-15


def test_relu_fourth_integral_is_zero_for_a_dead_field():
    C = _covariance(2)
    C[1, :] = C[:, 1] = 0.0
    assert float(fourth_integral("relu", C).values) == 0.0


def test_bad_inputs_are_refused():
    with pytest.raises(NearoptError, match="4 x 4"):
        fourth_integral("erf", np.eye(3))
    kink = CustomActivation("kinked", lambda z: torch.abs(z), smooth=False)
    with pytest.raises(NearoptError, match="kink"):
        fourth_integral(kink, np.eye(4))
    with pytest.raises(NearoptError, match="kink"):
        i2(1.0, 0.2, 1.0, kink)


@pytest.mark.parametrize("gap, pair", [(g, p) for g in (1e-2, 1e-4) for p in ((0, 2), (1, 3), (2, 3))]
                         + [(0.3, (0, 1)), (0.1, (0, 1)), (-0.3, (0, 1)), (-0.1, (0, 1))])
def test_relu_fourth_integral_of_nearly_collinear_fields(gap, pair):
    """A field near another (a student unit close to a teacher unit; two student units within 45 degrees of parallel or
    antiparallel, ``gap < 0``, which the library integrates in polar coordinates) against the nested reduction."""
    rng = np.random.default_rng(3)
    A = rng.standard_normal((4, 6))
    A[pair[1]] = np.sign(gap) * A[pair[0]] + abs(gap) * rng.standard_normal(6)
    C = A @ A.T / 6
    assert float(fourth_integral("relu", C).values) == pytest.approx(_relu_i4_nested(C, h=1 / 24), abs=1e-10)


def test_relu_fourth_integral_of_nearly_parallel_theta_fields_matches_monte_carlo():
    """u2 within 1e-4 of u1 (the Cartesian reduction's sharp bound; the library's polar one)."""
    rng = np.random.default_rng(8)
    A = rng.standard_normal((4, 6))
    A[1] = A[0] + 1e-4 * rng.standard_normal(6)
    C = A @ A.T / 6
    got = float(fourth_integral("relu", C).values)
    mean, err = _mc(C, lambda u: (u[:, 0] > 0) * (u[:, 1] > 0) * np.maximum(u[:, 2], 0) * np.maximum(u[:, 3], 0), n=2_000_000)
    assert abs(got - mean) < 5 * err
