"""Marchenko–Pastur, the law of s, and the χ² ⊛ MP convolution (docs/theory.md §3.2)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, special, stats

from nearopt.errors import NearoptError
from nearopt.theory.asymptotic import asymptotic_law
from nearopt.theory.distributions import (
    ChiSquareMPConvolution,
    MarchenkoPastur,
    SpectralLaw,
    TabulatedCDF,
    gamma_gauss_rule,
    mp_bulk,
    output_norm_law,
    wishart_law,
)


@pytest.mark.parametrize("q", [0.25, 0.5, 1.0, 3.0])
def test_mp_pdf_integrates_to_bulk_mass_and_cdf_matches_quad(q):
    mp = MarchenkoPastur(q, scale=2.0)
    lo, hi = mp.bulk.support()
    assert (lo, hi) == pytest.approx((2 * (1 - np.sqrt(q)) ** 2, 2 * (1 + np.sqrt(q)) ** 2))
    assert mp.atom_mass == pytest.approx(max(0.0, 1 - 1 / q))
    assert integrate.quad(mp.pdf, lo, hi, limit=200)[0] == pytest.approx(min(1.0, 1 / q), abs=1e-9)
    x = np.linspace(lo, hi, 9)[1:-1]
    numeric = [mp.atom_mass + integrate.quad(mp.pdf, lo, xi, limit=200)[0] for xi in x]
    np.testing.assert_allclose(mp.cdf(x), numeric, atol=1e-9)
    assert mp.cdf(-1e-12) == 0.0 and mp.cdf(0.0) == pytest.approx(mp.atom_mass) and mp.cdf(hi) == pytest.approx(1.0)


def test_mp_density_formula_pinned():
    # rho_q(m) = sqrt((m+ - m)(m - m-)) / (2 pi q m) at q = 1/4, m = 1: sqrt(1.25*0.75)/(pi/2)
    assert MarchenkoPastur(0.25).pdf(1.0) == pytest.approx(np.sqrt(1.25 * 0.75) / (0.5 * np.pi))
    # scaled law: density of c*m is rho(x/c)/c
    assert MarchenkoPastur(0.25, 3.0).pdf(3.0) == pytest.approx(MarchenkoPastur(0.25).pdf(1.0) / 3.0)


@pytest.mark.parametrize("q", [0.5, 3.0])
def test_mp_moments_and_sampling(q):
    mp = MarchenkoPastur(q, scale=1.5)
    assert mp.mean() == 1.5 and mp.var() == pytest.approx(1.5**2 * q)
    assert mp.moment(2) == pytest.approx(1.5**2 * (1 + q))
    assert mp.moment(3) == pytest.approx(1.5**3 * (1 + 3 * q + q * q))
    # bulk moments by quadrature agree with the closed-form stats
    assert mp.bulk.expect(lambda x: x) == pytest.approx(mp.bulk.mean(), rel=1e-8)
    assert mp.bulk.mean() == pytest.approx(1.5 * max(1.0, q)) and mp.bulk.var() == pytest.approx(1.5**2 * q)
    r = mp.rvs(size=40000, random_state=1)
    assert np.mean(r == 0.0) == pytest.approx(mp.atom_mass, abs=0.01)
    assert stats.kstest(r[r > 0], mp.bulk.cdf).pvalue > 1e-3
    assert np.array_equal(r, mp.rvs(size=40000, random_state=1))  # seeded


def test_mp_ppf_inverts_cdf():
    mp = MarchenkoPastur(3.0)
    p = np.linspace(0.7, 0.99, 7)  # above the atom mass 2/3
    np.testing.assert_allclose(mp.cdf(mp.ppf(p)), p, atol=1e-10)
    assert np.all(mp.ppf([0.1, 0.5]) == 0.0)
    np.testing.assert_allclose(mp_bulk.cdf(mp_bulk.ppf([0.1, 0.9], 0.5), 0.5), [0.1, 0.9], atol=1e-10)


def test_mp_matches_wishart_eigenvalues():
    rng = np.random.default_rng(0)
    W = rng.standard_normal((600, 300)) / np.sqrt(300)  # N_h = 600, N_i = 300, sigma1^2 = 1/N_i
    mu = np.linalg.eigvalsh(W.T @ W)
    law = wishart_law(300, 600)
    assert law.ratio == 0.5 and law.scale == pytest.approx(2.0)
    assert stats.kstest(mu, law.cdf).statistic < 0.02


def test_bad_parameters_raise():
    with pytest.raises(NearoptError):
        MarchenkoPastur(0.0)
    with pytest.raises(NearoptError):
        MarchenkoPastur(1.0, scale=-1)
    with pytest.raises(NearoptError):
        ChiSquareMPConvolution(0, 3)
    with pytest.raises(NearoptError):
        MarchenkoPastur(2.0).ppf(1.5)


def test_output_norm_law_is_scipy_chi2():
    law = output_norm_law(20)
    assert isinstance(law.dist, type(stats.chi2)) and law.mean() == pytest.approx(1.0) and law.var() == pytest.approx(2 / 20)
    rng = np.random.default_rng(3)
    s = np.sum((rng.standard_normal((4000, 20)) * 0.5) ** 2, axis=1)
    assert stats.kstest(s, output_norm_law(20, sigma2=0.5).cdf).pvalue > 1e-3


@pytest.mark.parametrize("ni,nh", [(10, 20), (30, 10)])
def test_convolution_normalised_monotone_and_moments(ni, nh):
    law = ChiSquareMPConvolution(ni, nh)
    hi = law.mean() + 25 * law.std()
    edges = np.array([law.a, law.mean(), law.mean() + 3 * law.std(), hi])
    mass = sum(integrate.quad(law.pdf, a, b, limit=100, epsabs=1e-12)[0] for a, b in zip(edges[:-1], edges[1:]))
    assert abs(mass - 1.0) < 1e-6
    F = law.cdf(np.linspace(law.a, hi, 3000))
    assert np.all(np.diff(F) >= -1e-15) and F[0] == pytest.approx(0.0, abs=1e-12) and F[-1] == pytest.approx(1.0, abs=1e-12)
    # mean = sigma2^2 N_h + sigma1^2 N_h, var = 2 sigma2^4 N_h + (sigma1^2 N_h)^2 q
    assert law.mean() == pytest.approx(1.0 + nh / ni)
    assert law.var() == pytest.approx(2.0 / nh + (nh / ni) ** 2 * ni / nh)
    lam = np.linspace(law.a, hi, 8001)
    rho = law.pdf(lam)
    assert integrate.simpson(lam * rho, x=lam) == pytest.approx(law.mean(), rel=1e-6)
    assert integrate.simpson((lam - law.mean()) ** 2 * rho, x=lam) == pytest.approx(law.var(), rel=1e-5)


def test_convolution_large_size_monotone_and_normalised():
    law = ChiSquareMPConvolution(400, 800)
    lam = np.linspace(law.a, law.mean() + 25 * law.std(), 8001)
    assert abs(integrate.simpson(law.pdf(lam), x=lam) - 1.0) < 1e-6
    assert np.all(np.diff(law.cdf(lam[::4])) >= -1e-15)


def test_convolution_pdf_is_derivative_of_cdf_and_matches_direct_quad():
    law = ChiSquareMPConvolution(30, 10)  # q = 3: chi2 component of weight 2/3
    x = np.array([0.5, 1.0, 2.0])
    h = 1e-5
    np.testing.assert_allclose((law.cdf(x + h) - law.cdf(x - h)) / (2 * h), law.pdf(x), rtol=1e-6)
    # direct convolution integral over mu, independent of the theta substitution
    lo, hi = law.mp.bulk.support()
    direct = [
        law.chi2_weight * law.chi2.pdf(xi) + integrate.quad(lambda m, xi=xi: law.chi2.pdf(xi - m) * law.mp.pdf(m), lo, min(hi, xi), limit=200)[0]
        for xi in x
    ]
    np.testing.assert_allclose(law.pdf(x), direct, rtol=1e-7)


def test_convolution_sampling_and_kstest():
    law = ChiSquareMPConvolution(10, 20)
    r = law.rvs(size=20000, random_state=5)
    assert stats.kstest(r, law.cdf).pvalue > 1e-3
    assert law.support() == pytest.approx(((1 - np.sqrt(0.5)) ** 2 * 2.0, np.inf))
    frozen = law()  # scipy freezing re-creates the object from its parameters
    assert frozen.cdf(2.0) == pytest.approx(law.cdf(2.0))


def test_tabulated_cdf_error_is_small_and_measured():
    law = ChiSquareMPConvolution(40, 80)
    tab = TabulatedCDF(law.cdf, law.a, law.mean() + 10 * law.std(), n=2001)
    assert tab.max_error < 1e-7
    x = np.linspace(law.a, law.mean() + 5 * law.std(), 37)
    np.testing.assert_allclose(tab(x), law.cdf(x), atol=1e-7)


_INTERFACE_LAWS = {
    "MP, q = 3 (atom at 0)": lambda: MarchenkoPastur(3.0, scale=0.5),
    "MP, q = 1/2": lambda: MarchenkoPastur(0.5),
    "chi2 * MP": lambda: ChiSquareMPConvolution(12, 6),
    "asymptotic, cubic (atom at 0)": lambda: asymptotic_law("cubic", 10, 12),
}


@pytest.mark.parametrize("name", list(_INTERFACE_LAWS))
def test_one_interface_for_every_law(name):
    """pdf, cdf, cdf_left, sf, ppf, rvs, support, mean, var, std and atoms behave the same for every law."""
    law = _INTERFACE_LAWS[name]()
    assert isinstance(law, SpectralLaw)
    atoms = law.atoms
    assert isinstance(atoms, tuple) and law.atom_mass == pytest.approx(sum(m for _, m in atoms))
    lo, hi = law.support()
    assert lo <= law.mean() <= hi and law.var() > 0 and law.std() == pytest.approx(np.sqrt(law.var()))
    for loc, mass in atoms:  # the jump of the cdf at an atom is its mass; ppf inside the jump is its location
        assert float(law.cdf(loc) - law.cdf_left(loc)) == pytest.approx(mass, rel=1e-9)
        assert float(law.ppf(float(law.cdf_left(loc)) + 0.5 * mass)) == loc
    x = np.linspace(lo, law.mean() + 6 * law.std(), 50)[1:]
    assert np.all(np.diff(law.cdf(x)) >= -1e-12) and np.allclose(law.sf(x), 1 - law.cdf(x))
    off = x[~np.isin(x, [a for a, _ in atoms])]
    np.testing.assert_allclose(law.cdf_left(off), law.cdf(off), atol=1e-15)
    p = np.array([0.05, 0.3, 0.6, 0.9])
    xp = law.ppf(p)
    assert np.all(law.cdf(xp) >= p - 1e-6) and np.all(law.cdf_left(xp) <= p + 1e-6)  # left-continuous inverse
    with pytest.raises(NearoptError, match=r"\[0, 1\]"):
        law.ppf(1.5)
    r = np.asarray(law.rvs(size=4000, random_state=2))
    for loc, mass in atoms:
        assert np.mean(r == loc) == pytest.approx(mass, abs=0.03)
    assert stats.kstest(r[~np.isin(r, [a for a, _ in atoms])], lambda t: (law.cdf(t) - law.atom_mass) / (1 - law.atom_mass)).statistic < 0.05


@settings(max_examples=25, deadline=None)
@given(st.floats(0.05, 1e6))
def test_gamma_gauss_rule_is_exact_for_low_moments(shape):
    """Central moments of Gamma(k): variance k, third 2k, fourth 3k^2 + 6k (exact for degree < 2n)."""
    y, w = gamma_gauss_rule(shape, 16)
    assert np.all(np.isfinite(y)) and np.all(y > 0) and w.sum() == pytest.approx(1.0, abs=1e-14)
    d = y - shape
    assert w @ y == pytest.approx(shape, rel=1e-12)
    assert w @ d**2 == pytest.approx(shape, rel=1e-9)
    assert w @ d**3 == pytest.approx(2 * shape, rel=1e-6, abs=1e-9 * shape**1.5)
    assert w @ d**4 == pytest.approx(3 * shape**2 + 6 * shape, rel=1e-8)


def test_gamma_gauss_rule_matches_scipy_where_scipy_is_finite():
    y, w = gamma_gauss_rule(6.5, 48)
    y_ref, w_ref = special.roots_genlaguerre(48, 5.5)
    np.testing.assert_allclose(y, y_ref, rtol=1e-12)
    np.testing.assert_allclose(w, w_ref / w_ref.sum(), rtol=1e-8, atol=1e-14)  # weights: absolute accuracy
    with pytest.raises(NearoptError):
        gamma_gauss_rule(-1.0, 8)
