"""Numerics at every scale: the closed-form pair moments and the population Hessian from tiny
to huge pre-activations (weights 1e-6 .. 1e6, input covariance s I or a random SPD times s,
s in 1e-6 .. 1e6), for every activation with a closed form.

(a) The population Hessian at the optimum is PSD to rounding: its smallest eigenvalue is at
    least ``-PSD_C * P * eps * lambda_max``; moments that float64 cannot hold are refused in
    one ``NearoptError`` line.
(b) Every Stein-form moment agrees with a reference coded here in mpmath that shares nothing
    with the library: erf and ReLU from their kernels ``E[g g]`` and ``E[g' g']`` and Price's
    theorem (``d/dc12 E[f(u) h(v)] = E[f'(u) h'(v)]``, ``d/dc11 = E[f''(u) h(v)] / 2``) by
    high-precision numerical differentiation; polynomials from exact Gaussian moments
    ``E[u^i v^j]`` (``v = beta u + e`` with ``e`` independent of ``u``).
"""

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nearopt.curvature import assemble, net_moments, population_hessian
from nearopt.errors import NearoptError
from nearopt.gaussian.expectations import pair_moments
from nearopt.model.activations import get_activation
from nearopt.model.network import TwoLayerNet
from nearopt.model.problem import GaussianInputs

mp = pytest.importorskip("mpmath")

EPS = np.finfo(np.float64).eps
#: the PSD bound's constant: a backward-stable assembly perturbs H by a few eps |H| per entry,
#: and |lambda_min| <= ||E||_2 <= P max|E_ij|; measured worst over 300 random teachers: 0.46 (monomial:12)
PSD_C = 4.0
#: relative agreement required of the erf moments with the reference (measured worst ~1e-15)
ERF_RTOL = 1e-13
#: polynomial and ReLU moments: error relative to each moment's natural size (polynomials: the
#: Cauchy-Schwarz bound sqrt(E[p(u)^2] E[q(v)^2]), as their terms may cancel; measured worst ~1e-15)
CS_RTOL = 1e-12
#: absolute error allowed of the reference's numerical derivative of a kernel of size 1 in a variable of size 1
DIFF_ATOL = 1e-40
#: every activation with a closed form (``monomial:12``: a high degree whose moments stay within
#: ``1e-280 .. 1e170`` over the strategy; ``monomial:25`` leaves float64's range: the refusal tests)
ACTIVATIONS = ["erf", "erf:unit", "relu", "linear", "quadratic", "cubic", "polynomial:0.5,-1,0.3,0.2", "monomial:12"]
NAMES = ["gg", "b0", "b1", "dd", "K11", "K12", "K22", "E[g4 g]"]
_fast = settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


# --------------------------------------------------------------------------- references (mpmath)
def _erf_kernels(k):
    """``E[g g]`` and ``E[g' g']`` of ``g = erf(a z)``, ``k = 2 a^2``, as functions of ``(c11, c12, c22)``."""

    def gg(c11, c12, c22):
        return 2 / mp.pi * mp.asin(k * c12 / mp.sqrt((1 + k * c11) * (1 + k * c22)))

    def dd(c11, c12, c22):
        return 2 * k / mp.pi / mp.sqrt((1 + k * c11) * (1 + k * c22) - (k * c12) ** 2)

    return gg, dd


def _relu_kernels():
    def gg(c11, c12, c22):
        th = mp.acos(c12 / mp.sqrt(c11 * c22))
        return mp.sqrt(c11 * c22) / (2 * mp.pi) * (mp.sin(th) + (mp.pi - th) * mp.cos(th))

    def dd(c11, c12, c22):
        return (mp.pi - mp.acos(c12 / mp.sqrt(c11 * c22))) / (2 * mp.pi)

    return gg, dd


def _price(gg, dd, c):
    """``[gg, b0, b1, dd, K11, K12, K22, E[g4(u) g(v)]]`` from the two kernels by Price's theorem.

    Derivatives in the variables scaled by ``sigma = (c11, sqrt(c11 c22), c22)``, so the
    step suits every scale; ``E[g4(u) g(v)] = 4 d^2 gg / d c11^2`` (``g4`` the fourth derivative).
    """
    sigma = [c[0], mp.sqrt(c[0] * c[2]), c[2]]

    def d(f, i, n=1):
        return mp.diff(lambda t: f(*(c[j] + (t * sigma[j] if j == i else 0) for j in range(3))), 0, n) / sigma[i] ** n

    return [gg(*c), 2 * d(gg, 0), d(gg, 1), dd(*c), 2 * d(dd, 0), d(dd, 1), 2 * d(dd, 2), 4 * d(gg, 0, 2)]


def _price_atol(ref, c):
    """The reference's own absolute differentiation error per entry (``DIFF_ATOL |f| / sigma^n``)."""
    s11, s12, s22 = c[0], mp.sqrt(c[0] * c[2]), c[2]
    dd = abs(ref[3])
    return [0, DIFF_ATOL / s11, DIFF_ATOL / s12, 0, DIFF_ATOL * dd / s11, DIFF_ATOL * dd / s12, DIFF_ATOL * dd / s22, DIFF_ATOL / s11**2]


def _gauss_moment(i, j, c11, c12, c22):
    """``E[u^i v^j]`` exactly: ``v = beta u + e``, ``beta = c12 / c11``, ``e ~ N(0, c22 - c12^2 / c11)`` independent."""
    beta, s2 = c12 / c11, c22 - c12**2 / c11

    def even(n, var):  # E[x^n], x ~ N(0, var)
        return mp.mpf(0) if n % 2 else var ** (n // 2) * mp.fac2(n - 1)

    return mp.fsum(mp.binomial(j, m) * beta**m * even(i + m, c11) * even(j - m, s2) for m in range(j + 1))


def _poly_reference(coef, c):
    """``[gg, b0, b1, dd, K11, K12, K22, E[g4(u) g(v)]]`` of ``g = sum_k coef_k z^k`` and their natural sizes."""
    ders = [[mp.mpf(x) for x in coef]]
    for _ in range(4):
        p = ders[-1]
        ders.append([p[m] * m for m in range(1, len(p))] or [mp.mpf(0)])

    def E(i, j):  # E[g^(i)(u) g^(j)(v)]
        p, q = ders[i], ders[j]
        return mp.fsum(p[m] * q[n] * _gauss_moment(m, n, *c) for m in range(len(p)) for n in range(len(q)) if p[m] and q[n])

    def square(i, var):  # E[g^(i)(x)^2], x ~ N(0, var)
        return mp.fsum(a * b * _gauss_moment(m + n, 0, var, var, var) for m, a in enumerate(ders[i]) for n, b in enumerate(ders[i]))

    idx = [(0, 0), (2, 0), (1, 1), (1, 1), (3, 1), (2, 2), (1, 3), (4, 0)]
    return [E(i, j) for i, j in idx], [mp.sqrt(square(i, c[0]) * square(j, c[2])) for i, j in idx]


def _library(act, c):
    """The library's ``[gg, b0, b1, dd, K11, K12, K22, E[g4 g]]`` (floats) and ``(b_sum, K_sum)``."""
    g = get_activation(act)
    m = g.closed_form_moments(*c)
    vals = [m.gg, m.b[..., 0], m.b[..., 1], m.dd, m.K[..., 0, 0], m.K[..., 0, 1], m.K[..., 1, 1], g.closed_form_fourth_moment(*c)]
    return [float(np.asarray(x).ravel()[0]) for x in vals], m.b_sum, m.K_sum


# --------------------------------------------------------------------------- strategies
@st.composite
def covariances(draw, decades=12):
    """``(c11, c12, c22)`` floats of one PSD pair: variances ``10^(+-(decades + 1))``, correlation anywhere in [-1, 1]."""
    t = 10.0 ** draw(st.floats(-decades, decades))
    c11 = t * 10.0 ** draw(st.floats(-1, 1))
    kind = draw(st.sampled_from(["same", "generic", "near"]))
    if kind == "same":  # a unit with itself
        return c11, c11, c11
    c22 = t * 10.0 ** draw(st.floats(-1, 1))
    sign = draw(st.sampled_from([-1.0, 1.0]))
    r = draw(st.floats(-0.99, 0.99)) if kind == "generic" else sign * (1 - 10.0 ** draw(st.floats(-14, -2)))
    c12 = r * np.sqrt(c11) * np.sqrt(c22)
    while Fraction(c12) ** 2 > Fraction(c11) * Fraction(c22):  # keep the float triple exactly PSD
        c12 = np.nextafter(c12, 0.0)
    return c11, float(c12), c22


@st.composite
def teachers(draw):
    """A teacher (weights of scale 1e-6 .. 1e6, half of them of order 1e3 .. 1e6) and its input law."""
    act = draw(st.sampled_from(ACTIVATIONS))
    n_i, n_h = draw(st.integers(2, 5)), draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**32 - 1))
    s1 = 10.0 ** draw(st.one_of(st.floats(3, 6), st.floats(-6, 6)))
    s2 = 10.0 ** draw(st.floats(-3, 3))
    cov = draw(st.sampled_from(["identity", "scaled", "spd"]))
    s = 10.0 ** draw(st.floats(-6, 6))
    rng = np.random.default_rng(seed)
    W1 = rng.standard_normal((n_h, n_i)) * s1
    W2 = rng.standard_normal((1, n_h)) * s2
    if cov == "identity":
        inputs = None
    elif cov == "scaled":
        inputs = GaussianInputs(covariance=s * np.eye(n_i))
    else:  # eigenvalues s * 10^[-1, 1], random eigenvectors
        Q, _ = np.linalg.qr(rng.standard_normal((n_i, n_i)))
        S = (Q * (s * 10.0 ** rng.uniform(-1, 1, n_i))) @ Q.T
        inputs = GaussianInputs(covariance=0.5 * (S + S.T))
    return TwoLayerNet(W1, W2, get_activation(act)), inputs


# --------------------------------------------------------------------------- (b) moments
@_fast
@given(act=st.sampled_from(["erf", "erf:unit"]), c=st.one_of(covariances(), covariances(decades=150)))
def test_erf_moments_match_the_arcsine_reference_at_every_scale(act, c):
    mp.mp.dps = 50 + int(2 * max(0.0, np.log10(max(c))))  # the reference's det(I + k C) cancels (k c)^2
    cm = [mp.mpf(x) for x in c]
    ref = _price(*_erf_kernels(mp.mpf(1.0 if act == "erf" else 2.0)), cm)
    got, b_sum, K_sum = _library(act, c)
    tol = [ERF_RTOL * abs(r) + a for r, a in zip(ref, _price_atol(ref, cm))]
    for name, g, r, t in zip(NAMES, got, ref, tol):
        assert abs(g - r) <= t, (name, g, float(r))
    # the parallel-form sums (fold_diagonal) are as exact as the entries, though their terms cancel
    assert abs(float(b_sum) - (ref[1] + ref[2])) <= ERF_RTOL * abs(ref[1] + ref[2]) + tol[1] + tol[2]
    ksum = ref[4] + 2 * ref[5] + ref[6]
    assert abs(float(K_sum) - ksum) <= ERF_RTOL * abs(ksum) + tol[4] + 2 * tol[5] + tol[6]


@_fast
@given(c=covariances())
def test_relu_moments_match_the_arc_cosine_reference_at_every_scale(c):
    mp.mp.dps = 50
    got, _, _ = _library("relu", c)
    c11, c12, c22 = (mp.mpf(x) for x in c)
    s = mp.sqrt(c11 * c22)
    if 1 - abs(c12 / s) < 1e-6:  # (nearly) parallel: the kernels are not smooth there; check the kernels only
        th = mp.acos(max(-1, min(1, c12 / s)))
        assert abs(got[0] - s / (2 * mp.pi) * (mp.sin(th) + (mp.pi - th) * mp.cos(th))) <= 1e-7 * s
        assert abs(got[3] - (mp.pi - th) / (2 * mp.pi)) <= 1e-7
        return
    ref = _price(*_relu_kernels(), [c11, c12, c22])
    # natural sizes (times powers of 1 / sin theta): gg ~ s, b0 ~ sqrt(c22 / c11), dd ~ 1, K11 ~ 1 / c11,
    # K12 ~ 1 / s, K22 ~ 1 / c22, E[delta'''(u) relu(v)] ~ sqrt(c22) / c11^(3/2)
    size = [s, mp.sqrt(c22 / c11), 1, 1, 1 / c11, 1 / s, 1 / c22, mp.sqrt(c22) / c11**1.5]
    for name, g, r, z in zip(NAMES, got, ref, size):
        assert abs(g - r) <= CS_RTOL * (abs(r) + z), (name, g, float(r))


@_fast
@given(act=st.sampled_from(["linear", "quadratic", "cubic", "polynomial:0.5,-1,0.3,0.2", "monomial:12"]), c=covariances())
def test_polynomial_moments_match_exact_gaussian_moments_at_every_scale(act, c):
    mp.mp.dps = 60
    got, b_sum, K_sum = _library(act, c)
    ref, size = _poly_reference(get_activation(act).polynomial_coefficients, [mp.mpf(x) for x in c])
    for name, x, r, z in zip(NAMES, got, ref, size):
        assert abs(x - r) <= CS_RTOL * z, (name, x, float(r), float(z))
    assert b_sum is None and K_sum is None  # sums of the entries: no cancellation that grows with scale


def test_moments_that_float64_cannot_hold_are_refused():
    """Overflow and underflow are one clear error each, never inf, NaN or an all-zero Hessian."""
    for gram, word in ((np.array([[1e-18]]), "underflow"), (np.array([[1e30]]), "overflow")):
        with pytest.raises(NearoptError, match=word) as err:
            pair_moments("monomial:25", gram)
        assert "\n" not in str(err.value) and "float64" in str(err.value)
    m = pair_moments("monomial:25", np.array([[1e-6]]))  # tiny but representable: E[g^2] = 49!! 1e-150
    assert 1e-120 < m.gg[0, 0] < 1e-115


@pytest.mark.parametrize("spec", ["polynomial:nan,1", "polynomial:1,inf", "polynomial:1e400,1"])
def test_non_finite_polynomial_coefficients_are_named_as_such(spec):
    with pytest.raises(NearoptError, match="must be finite numbers"):
        get_activation(spec)


def test_pair_moments_select_and_fold():
    """``m[rows, cols]`` keeps the stable sums; ``fold_diagonal`` changes only the ``(a, a)`` pairs, idempotently."""
    W = np.random.default_rng(3).standard_normal((4, 3)) * 1e4
    m = pair_moments("erf", W @ W.T)
    sub = m[np.arange(2), slice(None)]
    assert sub.K.shape == (2, 4, 2, 2) and np.array_equal(sub.K_sum, m.K_sum[:2])
    f = m.fold_diagonal()
    off = ~np.eye(4, dtype=bool)
    assert np.array_equal(f.K[off], m.K[off]) and np.array_equal(f.b[off], m.b[off])
    assert np.array_equal(np.diagonal(f.K[..., 0, 0]), np.diag(m.K_sum)) and not np.diagonal(f.K[..., 1, 1]).any()
    assert np.array_equal(f.fold_diagonal().K, f.K)
    with pytest.raises(NearoptError, match="N_h, N_h"):
        m[0].fold_diagonal()


# --------------------------------------------------------------------------- (a) PSD spectrum
def _check_psd(H):
    lam = np.linalg.eigvalsh(H)
    bound = PSD_C * H.shape[0] * EPS * lam[-1]
    assert lam[0] >= -bound, f"lambda_min {lam[0]:.3g} < -{bound:.3g} (lambda_max {lam[-1]:.3g})"


def _folded_hessian(net, inputs):
    """``population_hessian`` with each unit's pair with itself in its parallel form (:meth:`PairMoments.fold_diagonal`)."""
    cov = None if inputs is None or inputs.isotropic else inputs.covariance
    return assemble(net_moments(net, inputs).fold_diagonal(), net.W1, net.W2.ravel(), cov)


@_fast
@given(case=teachers())
def test_folded_population_hessian_is_psd_at_every_scale(case):
    H = _folded_hessian(*case)
    assert np.all(np.isfinite(H))
    _check_psd(H)


def _reported(act, sigma1, s):
    rng = np.random.default_rng(0)
    net = TwoLayerNet(rng.standard_normal((3, 5)) * sigma1, rng.standard_normal((1, 3)) / np.sqrt(3), get_activation(act))
    return net, None if s == 1.0 else GaussianInputs(covariance=s * np.eye(5))


@pytest.mark.parametrize("act", ["erf", "erf:unit"])
@pytest.mark.parametrize("sigma1, s", [(1e3, 1.0), (1e6, 1.0), (1.0, 1e10), (1e3, 1e10), (1e6, 1e10), (1e6, 1e6)])
def test_folded_erf_hessian_is_psd_in_the_reported_cases(act, sigma1, s):
    """erf weights of order 1e3 .. 1e6 and ``Sigma = 1e10 I``: scales where cancellation in the moments could make lambda_min / lambda_max of order -1."""
    _check_psd(_folded_hessian(*_reported(act, sigma1, s)))


@pytest.mark.parametrize("act", ["erf", "erf:unit"])
@pytest.mark.parametrize("sigma1, s", [(1.0, 1e10), (1e3, 1e10)])
def test_population_hessian_is_psd_in_the_reported_cases(act, sigma1, s):
    _check_psd(population_hessian(*_reported(act, sigma1, s)))


def test_population_hessian_beyond_float64_is_refused():
    """``monomial:25``: moments past float64's range are one error line; a Hessian within range is PSD."""
    for sigma1, word in ((1e6, "overflow"), (1e-8, "underflow")):
        with pytest.raises(NearoptError, match=word) as err:
            population_hessian(_reported("monomial:25", sigma1, 1.0)[0])
        assert "\n" not in str(err.value) and "float64" in str(err.value)
    for sigma1 in (1e-4, 1.0, 1e4):  # (3e-8: moments in range, Hessian entries near 1e-308: refused as underflow)
        _check_psd(population_hessian(_reported("monomial:25", sigma1, 1.0)[0]))


def test_subnormal_population_hessian_is_refused():
    net, inputs = _reported("monomial:25", 1e-6, 1e-3)
    assert pair_moments(net.activation, inputs.matmul(net.W1) @ net.W1.T).K.max() > 1e-300  # the moments are representable
    with pytest.raises(NearoptError, match="underflow"):
        population_hessian(net, inputs)
