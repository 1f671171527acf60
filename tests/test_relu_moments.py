"""The exact ReLU moments with means (``nearopt.gaussian.relu_moments``, ``derivative_moments``, ``unit_moments``).

References written here, sharing no code with the library: ``scipy.integrate`` (adaptive ``quad`` / ``dblquad`` over
the region where the units are on, so the kinks are integration limits, not integrand features), SciPy's
bivariate normal CDF, and Price's theorem by central differences (``d/dm1`` raises the order on ``u`` by one,
``d/dc12`` both, ``d/dc11`` on ``u`` by two with 1/2): the higher (delta) moments of the closed forms must be the
derivatives of the lower ones, which the library computes by a different formula.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.integrate
from scipy.stats import multivariate_normal, norm

import nearopt as no
from nearopt.gaussian import expectations as G
from nearopt.gaussian.relu_moments import collinear_low_pair, orthant, ramp_derivatives
from nearopt.model.activations import ReLU

#: pairs (m1, m2, c11, c12, c22): means of both signs and zero, correlations of both signs, one strong
PAIRS = [(0.3, -0.4, 1.3, 0.5, 0.8), (0.0, 0.0, 0.7, -0.3, 1.1), (-1.2, 0.8, 2.0, 1.9, 2.1), (0.9, 0.0, 0.5, 0.1, 0.4)]
SMOOTH = {"erf": lambda z: math.erf(z / math.sqrt(2.0)), "tanh": math.tanh}


def _table(f, h, pair, orders=(4, 4)):
    m1, m2, c11, c12, c22 = pair
    return G.derivative_moments(f, h, m1, m2, c11, c12, c22, orders=orders).values


def _region_expectation(fu, fv, pair, u_on=True, v_on=True):
    """``E[fu(u) fv(v)]`` over ``u > 0`` (if ``u_on``) and ``v > 0`` (if ``v_on``) by adaptive ``dblquad`` (1e-12)."""
    m1, m2, c11, c12, c22 = pair
    law = multivariate_normal([m1, m2], [[c11, c12], [c12, c22]])
    lo_u, lo_v = (0.0 if u_on else m1 - 12 * math.sqrt(c11)), (0.0 if v_on else m2 - 12 * math.sqrt(c22))
    hi_u, hi_v = m1 + 12 * math.sqrt(c11), m2 + 12 * math.sqrt(c22)
    val, _ = scipy.integrate.dblquad(lambda v, u: fu(u) * fv(v) * law.pdf([u, v]), lo_u, hi_u, lo_v, hi_v, epsabs=1e-12, epsrel=1e-12)
    return val


@pytest.mark.parametrize("h, k, r", [(0.3, -0.2, 0.4), (0.0, 0.5, -0.7), (0.0, 0.0, 0.3), (-1.0, -2.0, 0.9), (2.0, 0.0, -0.2), (-0.5, 0.0, 0.99)])
def test_orthant_equals_scipys_bivariate_normal_cdf(h, k, r):
    ref = multivariate_normal.cdf([h, k], mean=[0, 0], cov=[[1, r], [r, 1]], abseps=1e-13, releps=1e-13)
    assert orthant(h, k, r, 1 - r * r) == pytest.approx(ref, abs=1e-12)


@pytest.mark.parametrize("pair", PAIRS)
def test_ramps_and_steps_equal_a_region_integral(pair):
    V = _table("relu", "relu", pair, (1, 1))
    one, ident = (lambda z: 1.0), (lambda z: z)
    for a, fu in ((0, ident), (1, one)):
        for b, fv in ((0, ident), (1, one)):
            assert V[a, b] == pytest.approx(_region_expectation(fu, fv, pair), abs=1e-10)


@pytest.mark.parametrize("pair", PAIRS)
@pytest.mark.parametrize("partner", ["relu", "erf", "tanh"])
def test_every_order_is_the_derivative_of_the_one_below_prices_theorem(pair, partner):
    """Central differences (step 1e-5) of the whole table ``a, b <= 4`` in the means and covariances: relative 1e-8."""
    m1, m2, c11, c12, c22 = pair
    V = _table("relu", partner, pair)
    scale = np.abs(V).max()
    h = 1e-5

    def d(i):
        up, dn = list(pair), list(pair)
        up[i] += h
        dn[i] -= h
        return (_table("relu", partner, up) - _table("relu", partner, dn)) / (2 * h)

    np.testing.assert_allclose(d(0)[:4, :], V[1:, :], atol=1e-8 * scale)
    np.testing.assert_allclose(d(1)[:, :4], V[:, 1:], atol=1e-8 * scale)
    np.testing.assert_allclose(d(3)[:4, :4], V[1:, 1:], atol=1e-8 * scale)
    np.testing.assert_allclose(d(2)[:3, :], 0.5 * V[2:, :], atol=1e-8 * scale)
    np.testing.assert_allclose(d(4)[:, :3], 0.5 * V[:, 2:], atol=1e-8 * scale)


@pytest.mark.parametrize("pair", PAIRS[:3])
@pytest.mark.parametrize("partner", ["erf", "tanh"])
def test_relu_against_a_smooth_unit_equals_a_region_integral(pair, partner):
    """The one-dimensional checked quadrature (conditioned on the smooth unit) against ``dblquad`` over ``u > 0``."""
    V = _table("relu", partner, pair, (1, 0))
    g = SMOOTH[partner]
    assert V[0, 0] == pytest.approx(_region_expectation(lambda z: z, g, pair, v_on=False), abs=1e-10)
    assert V[1, 0] == pytest.approx(_region_expectation(lambda z: 1.0, g, pair, v_on=False), abs=1e-10)
    # roles exchanged: the same moments transposed
    m1, m2, c11, c12, c22 = pair
    W = G.derivative_moments(partner, "relu", m2, m1, c22, c12, c11, orders=(0, 1)).values
    np.testing.assert_allclose(W.T, V, rtol=0, atol=1e-15)


def test_at_zero_means_the_pair_terms_of_the_arc_cosine_kernel_are_reproduced():
    """The plain ReLU pair terms (``model.pair_terms``, via ``ReLU.closed_form_moments``) are the centred case: 1e-14."""
    rng = np.random.default_rng(3)
    W = rng.standard_normal((6, 4))
    Gm = W @ W.T
    d = np.diag(Gm)
    iu, ju = np.triu_indices(6, 1)
    c11, c12, c22 = d[iu], Gm[iu, ju], d[ju]
    V = G.derivative_moments("relu", "relu", 0.0, 0.0, c11, c12, c22, orders=(3, 2)).values
    cf = ReLU().closed_form_moments(c11, c12, c22)
    for got, want in ((V[:, 0, 0], cf.gg), (V[:, 2, 0], cf.b[:, 0]), (V[:, 1, 1], cf.dd), (V[:, 2, 2], cf.K[:, 0, 1]), (V[:, 3, 1], cf.K[:, 0, 0])):
        np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("beta, s", [(0.4, 0.7), (-1.5, 1.2), (0.0, 2.0)])
def test_unit_moments_of_relu_are_the_smoothed_ramp_and_its_derivatives(beta, s):
    R = G.unit_moments("relu", beta, s * s, orders=5).values
    np.testing.assert_allclose(R, ramp_derivatives(beta, s, 5))
    ramp, _ = scipy.integrate.quad(lambda z: max(beta + s * z, 0.0) * norm.pdf(z), -15, 15, points=[-beta / s], epsabs=1e-14)
    assert R[0] == pytest.approx(ramp, abs=1e-13) and R[1] == pytest.approx(norm.cdf(beta / s), abs=1e-15)
    h = 1e-4  # R^(k + 1) = d/dbeta R^(k)
    up, dn = ramp_derivatives(beta + h, s, 5), ramp_derivatives(beta - h, s, 5)
    np.testing.assert_allclose((up - dn)[:5] / (2 * h), R[1:], atol=1e-7 * np.abs(R).max())


@pytest.mark.parametrize("m1, m2, s1, s2", [(0.3, -0.2, 1.0, 0.5), (0.3, 0.1, 1.0, -0.5), (0.0, 0.0, 0.8, 0.8), (-0.4, 0.2, 0.0, 1.0), (0.5, -1.0, 0.7, -1.3)])
def test_collinear_ramps_and_steps_equal_a_one_dimensional_integral(m1, m2, s1, s2):
    V = collinear_low_pair(m1, m2, s1, s2)
    kinks = [x for x in (-m1 / s1 if s1 else None, -m2 / s2 if s2 else None) if x is not None]
    for a in (0, 1):
        for b in (0, 1):
            def f(z, a=a, b=b):
                u, v = m1 + s1 * z, m2 + s2 * z
                return (u if a == 0 else 1.0) * (u > 0) * (v if b == 0 else 1.0) * (v > 0) * norm.pdf(z)
            ref, _ = scipy.integrate.quad(f, -15, 15, points=kinks or None, epsabs=1e-14, limit=200)
            assert V[a, b] == pytest.approx(ref, abs=1e-13)


def test_a_delta_on_a_collinear_pair_is_refused_in_one_line():
    with pytest.raises(no.NearoptError, match="do not cover.*batch route") as info:
        G.derivative_moments("relu", "relu", 0.1, 0.2, 1.0, 2.0, 4.0, orders=(2, 0))
    assert "\n" not in str(info.value)
    # ramps and steps of the same pair are finite and given
    V = G.derivative_moments("relu", "relu", 0.1, 0.2, 1.0, 2.0, 4.0, orders=(1, 1)).values
    np.testing.assert_allclose(V, collinear_low_pair(0.1, 0.2, 1.0, 2.0))
