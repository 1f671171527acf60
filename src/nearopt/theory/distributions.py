"""Laws of the linear-network Hessian spectrum (docs/theory.md §3.2), ``scipy.stats`` style.

Every eigenvalue law of nearopt (:class:`MarchenkoPastur`, :class:`ChiSquareMPConvolution`,
:class:`nearopt.theory.asymptotic.AsymptoticLaw`) is a :class:`SpectralLaw`: one interface
with ``pdf``, ``cdf``, ``cdf_left``, ``sf``, ``ppf``, ``rvs``, ``support``, ``mean``, ``var``,
``std`` and the property ``atoms``, a tuple of ``(location, mass)`` point masses (empty for a
law with a density). Atoms are handled the same way by every law: ``pdf`` is the density of
the continuous part and integrates to ``1 - atom_mass``; ``cdf`` is ``P(X <= x)``, atoms
included; ``cdf_left`` is ``P(X < x)``; ``ppf`` is the left-continuous inverse of ``cdf``
(the atom's location for every ``p`` inside its jump) and raises
:class:`~nearopt.errors.NearoptError` outside ``[0, 1]``; ``rvs`` draws atoms with their masses.

* :data:`mp_bulk` -- the continuous part of the Marchenko–Pastur law ``MP_q``,
  normalised to mass 1: an ``rv_continuous`` with shape ``ratio = q`` (use
  ``scale=`` for a scaled law), closed-form ``pdf``/``cdf``.
* :class:`MarchenkoPastur` -- the full (mixed) ``MP_q`` law with its atom of mass
  ``1 - 1/q`` at 0 when ``q > 1``.
* :func:`output_norm_law` -- the law of ``s = ||W2||^2``: ``scipy.stats.chi2``
  with ``df = N_h``, ``scale = sigma2**2`` (reused, not reimplemented).
* :class:`ChiSquareMPConvolution` -- the law of one pooled nonzero Hessian
  eigenvalue ``lambda = s + mu`` of a random linear teacher, ``mu`` an eigenvalue
  of ``W1^T W1`` (asymptotically ``sigma1**2 N_h MP_q``): also an ``rv_continuous``
  (the atom of ``MP_q`` becomes a ``chi2`` component, so the law has a density and no atoms).
* :func:`gamma_gauss_rule` -- Gauss nodes and weights of a Gamma law at any shape (the law of
  ``|w_a|^2`` in the asymptotic law).

Convention: ``q = N_i / N_h`` and

    rho_q(m) = sqrt((m+ - m)(m - m-)) / (2 pi q m),   m± = (1 ± sqrt q)^2,

so ``E[m] = 1``, ``Var[m] = q``; the eigenvalues of ``W1^T W1`` (``N_i x N_i``,
entries of ``W1`` with variance ``sigma1**2``) are ``sigma1**2 N_h m``.

Integrals over the bulk use ``m = (1 + q) + 2 sqrt(q) cos(theta)``, ``theta in
[0, pi]``: the edge square roots cancel against ``dm`` and the integrand
``(2/pi) sin(theta)**2 / m`` is smooth (also at ``q = 1``, where ``m- = 0``).
"""

from __future__ import annotations

import numpy as np
from scipy import stats
from scipy.integrate import quad_vec
from scipy.interpolate import PchipInterpolator
from scipy.linalg import eigh_tridiagonal
from scipy.optimize import elementwise
from scipy.special import comb
from scipy.stats import rv_continuous

from ..errors import NearoptError, require_positive_int

__all__ = [
    "ChiSquareMPConvolution", "gamma_gauss_rule", "marchenko_pastur_bulk_gen", "MarchenkoPastur", "mp_bulk", "output_norm_law", "SpectralLaw",
    "TabulatedCDF", "wishart_law"
]


class SpectralLaw:
    """The interface shared by nearopt's eigenvalue laws (module docstring).

    A subclass supplies ``pdf`` (continuous part), ``cdf`` (``P(X <= x)``), ``ppf``
    (left-continuous inverse), ``support``, ``mean``, ``var`` and, when the law has point
    masses, overrides :attr:`atoms`. Provided here: :attr:`atom_mass`, :meth:`cdf_left`
    (``cdf`` minus the atoms located exactly at ``x``), :meth:`sf`, :meth:`std`,
    :meth:`rvs` (inverse transform through ``ppf``) and the probability check of ``ppf``.
    """

    @property
    def atoms(self) -> tuple[tuple[float, float], ...]:
        """``((location, mass), ...)`` of the point masses, ascending in location; ``()`` if none."""
        return ()

    # supplied by each law (``rv_continuous`` supplies them for ChiSquareMPConvolution, first in its MRO)
    def pdf(self, x):
        raise NotImplementedError

    def cdf(self, x):
        raise NotImplementedError

    def ppf(self, p):
        raise NotImplementedError

    def mean(self) -> float:
        raise NotImplementedError

    def var(self) -> float:
        raise NotImplementedError

    def support(self) -> tuple[float, float]:
        raise NotImplementedError

    @property
    def atom_mass(self) -> float:
        """Total mass of the atoms (``1 -`` the integral of ``pdf``)."""
        return float(sum(m for _, m in self.atoms))

    def cdf_left(self, x):
        """``P(X < x)``: equal to ``cdf`` except at an atom, where it leaves out the atom's mass."""
        x = np.asarray(x, dtype=np.float64)
        out = np.asarray(self.cdf(x), dtype=np.float64)
        for loc, mass in self.atoms:
            out = out - mass * (x == loc)
        return np.clip(out, 0.0, 1.0)

    def sf(self, x):
        """``P(X > x)``."""
        return 1.0 - self.cdf(x)

    def std(self) -> float:
        return float(np.sqrt(self.var()))

    def rvs(self, size=None, random_state=None):
        """Independent draws (atoms included) by inverse transform; ``random_state`` as in ``scipy.stats``."""
        rng = random_state if hasattr(random_state, "uniform") else np.random.default_rng(random_state)
        return self.ppf(rng.uniform(size=size))

    @staticmethod
    def _on_reals(fn, x, at_minus_inf: float, at_plus_inf: float):
        """``fn`` on the finite entries of ``x``; NaN stays NaN and ``-inf`` / ``+inf`` take the given limits.

        As ``scipy.stats`` does: a law's ``pdf``/``cdf`` of NaN is NaN (never a number), and the limits
        at infinity are exact (``cdf(inf) = 1``, not ``1 - eps``), without a warning from ``inf - inf``.
        """
        x = np.asarray(x, dtype=np.float64)
        out = np.full(x.shape, np.nan)
        real = np.isfinite(x)
        if real.any():
            out[real] = fn(x[real])
        out[x == np.inf], out[x == -np.inf] = at_plus_inf, at_minus_inf
        return out[()] if out.ndim == 0 else out

    @staticmethod
    def _probabilities(p) -> np.ndarray:
        """``p`` as a float array, or one :class:`NearoptError` if any value is outside ``[0, 1]``."""
        p = np.asarray(p, dtype=np.float64)
        if np.any(~np.isfinite(p) | (p < 0) | (p > 1)):
            raise NearoptError("probabilities must lie in [0, 1]")
        return p


def _edges(q):
    """``(m-, m+) = ((1 - sqrt q)^2, (1 + sqrt q)^2)``."""
    r = np.sqrt(q)
    return (1.0 - r) ** 2, (1.0 + r) ** 2


def _bulk_mass(q):
    """Mass of the continuous part of ``MP_q``: ``min(1, 1/q)``."""
    return np.minimum(1.0, 1.0 / q)


def _theta_weight(theta, q):
    """Density of the bulk of ``MP_q`` in ``theta`` (unnormalised: mass ``min(1, 1/q)``)."""
    c = np.cos(theta)
    m = (1.0 + q) + 2.0 * np.sqrt(q) * c
    # sin^2/m -> 0 at theta = pi when q = 1 (m- = 0); guard the 0/0
    return (2.0 / np.pi) * np.divide((1.0 - c) * (1.0 + c), m, out=np.zeros_like(m * c), where=m > 0)


def _theta_antiderivative(theta, q):
    """``G`` with ``(2/pi)(G(pi) - G(theta))`` = bulk mass of ``MP_q`` below ``m(theta)``.

    From ``sin^2/(a + b cos) = (1 - a^2/b^2)/(a + b cos) + a/b^2 - cos/b`` with
    ``a = 1 + q``, ``b = 2 sqrt q``, ``a^2 - b^2 = (1 - q)^2``.
    """
    m_lo, m_hi = _edges(q)
    half = 0.5 * theta
    atan = np.arctan2(np.sqrt(m_lo) * np.sin(half), np.sqrt(m_hi) * np.cos(half))
    return -np.abs(1.0 - q) / (2.0 * q) * atan + (1.0 + q) * theta / (4.0 * q) - np.sin(theta) / (2.0 * np.sqrt(q))


class marchenko_pastur_bulk_gen(rv_continuous):
    """Continuous part of ``MP_q`` normalised to mass 1 (shape ``ratio = q > 0``).

    Support ``[(1 - sqrt q)^2, (1 + sqrt q)^2]``; ``mean = max(1, q)``, ``var = q``.
    For ``q > 1`` this is the law of a *nonzero* eigenvalue (equal to ``q MP_{1/q}``).
    """

    def _argcheck(self, ratio):
        return (ratio > 0) & np.isfinite(ratio)

    def _get_support(self, ratio):
        return _edges(ratio)

    def _pdf(self, x, ratio):
        m_lo, m_hi = _edges(ratio)
        inside = np.clip((m_hi - x) * (x - m_lo), 0.0, None)
        # x = 0 lies in the support only at q = 1 (m- = 0), where the density diverges like 1 / (pi sqrt(x))
        at_zero = np.where(m_lo == 0, np.inf, 0.0)
        xs = np.where(x > 0, x, 1.0)
        return np.where(x > 0, np.sqrt(inside) / (2.0 * np.pi * ratio * xs) / _bulk_mass(ratio), at_zero)

    def _cdf(self, x, ratio):
        a, b = 1.0 + ratio, 2.0 * np.sqrt(ratio)
        theta = np.arccos(np.clip((x - a) / b, -1.0, 1.0))
        mass = (2.0 / np.pi) * (_theta_antiderivative(np.pi, ratio) - _theta_antiderivative(theta, ratio))
        return np.clip(mass / _bulk_mass(ratio), 0.0, 1.0)

    def _ppf(self, p, ratio):
        p, ratio = np.broadcast_arrays(np.asarray(p, float), np.asarray(ratio, float))
        lo, hi = _edges(ratio)
        res = elementwise.find_root(lambda x, pp, qq: self._cdf(x, qq) - pp, (lo, hi), args=(p, ratio))
        return np.where(p <= 0, lo, np.where(p >= 1, hi, res.x))

    def _stats(self, ratio):
        return np.maximum(1.0, ratio), ratio, None, None


#: the normalised continuous part of ``MP_q`` (``mp_bulk(ratio, scale=c)`` for ``c * m``)
mp_bulk = marchenko_pastur_bulk_gen(name="marchenko_pastur_bulk")


def _require_ratio_scale(ratio, scale) -> tuple[float, float]:
    ratio, scale = float(ratio), float(scale)
    if not (np.isfinite(ratio) and ratio > 0):
        raise NearoptError(f"Marchenko–Pastur ratio must be a finite number > 0, got {ratio}")
    if not (np.isfinite(scale) and scale > 0):
        raise NearoptError(f"Marchenko–Pastur scale must be a finite number > 0, got {scale}")
    return ratio, scale


class MarchenkoPastur(SpectralLaw):
    """The Marchenko–Pastur law ``scale * MP_ratio`` (a mixed law for ``ratio > 1``), a :class:`SpectralLaw`.

    ``MP_q`` is the limiting eigenvalue law of ``W^T W / N_h`` for ``W`` of shape
    ``(N_h, N_i)`` with unit-variance entries and ``q = N_i / N_h``.

    Attributes
    ----------
    ratio, scale : float
    atom : float
        Location of the atom, ``0.0``.
    bulk : frozen ``rv_continuous``
        The continuous part normalised to mass 1 (``mp_bulk(ratio, scale=scale)``).

    ``pdf`` is the density of the continuous part and integrates to
    ``1 - atom_mass``; ``cdf`` includes the atom (a jump of ``atom_mass`` at 0).
    """

    def __init__(self, ratio: float, scale: float = 1.0):
        self.ratio, self.scale = _require_ratio_scale(ratio, scale)
        self.atom = 0.0
        self._atom_mass = max(0.0, 1.0 - 1.0 / self.ratio)
        self.bulk = mp_bulk(self.ratio, scale=self.scale)

    def __repr__(self) -> str:
        return f"MarchenkoPastur(ratio={self.ratio:g}, scale={self.scale:g})"

    @property
    def atoms(self) -> tuple[tuple[float, float], ...]:
        return ((self.atom, self._atom_mass),) if self._atom_mass > 0 else ()

    @property
    def bulk_mass(self) -> float:
        """``1 - atom_mass = min(1, 1/ratio)``."""
        return 1.0 - self.atom_mass

    @property
    def bulk_edges(self) -> tuple[float, float]:
        """``scale * ((1 - sqrt q)^2, (1 + sqrt q)^2)``: the edges of the continuous part."""
        lo, hi = _edges(self.ratio)
        return float(self.scale * lo), float(self.scale * hi)

    def support(self) -> tuple[float, float]:
        """``(lower, upper)``: the bulk edges, with ``lower = 0`` when there is an atom."""
        lo, hi = self.bulk.support()
        return (0.0 if self.atom_mass > 0 else float(lo)), float(hi)

    def pdf(self, x):
        """Density of the continuous part (integrates to ``1 - atom_mass``)."""
        return self.bulk_mass * self.bulk.pdf(x)

    def cdf(self, x):
        """``P(X <= x)``, the atom included."""
        x = np.asarray(x, dtype=np.float64)
        return self.atom_mass * (x >= self.atom) + self.bulk_mass * self.bulk.cdf(x)

    def ppf(self, p):
        """Left-continuous inverse of :meth:`cdf` (``0`` for ``p <= atom_mass``)."""
        p = self._probabilities(p)
        pb = np.clip((p - self.atom_mass) / self.bulk_mass, 0.0, 1.0)
        return np.where(p <= self.atom_mass, self.atom, self.bulk.ppf(pb))

    def mean(self) -> float:
        """``scale``."""
        return self.scale

    def var(self) -> float:
        """``scale**2 * ratio``."""
        return self.scale**2 * self.ratio

    def moment(self, order: int) -> float:
        """Raw moment ``E[X**k]`` from the Narayana polynomials, ``k >= 0``.

        ``E[m**k] = sum_{j=0}^{k-1} q**j / (j + 1) * C(k, j) C(k - 1, j)``.
        """
        k = int(order)
        if k < 0:
            raise NearoptError(f"moment order must be >= 0, got {order}")
        if k == 0:
            return 1.0
        j = np.arange(k)
        return float(self.scale**k * np.sum(self.ratio**j / (j + 1) * comb(k, j) * comb(k - 1, j)))


def output_norm_law(n_hidden: int, sigma2: float | None = None):
    """Law of ``s = ||W2||^2`` for ``W2 ~ N(0, sigma2**2)``: ``chi2(df=N_h, scale=sigma2**2)``.

    ``sigma2`` defaults to ``1/sqrt(N_h)`` (as in :func:`nearopt.sample_teacher`).
    """
    n_hidden = require_positive_int(n_hidden, "N_h")
    s2 = _scale(sigma2, n_hidden, "sigma2")
    return stats.chi2(df=n_hidden, scale=s2**2)


def wishart_law(n_inputs: int, n_hidden: int, sigma1: float | None = None) -> MarchenkoPastur:
    """Asymptotic eigenvalue law of ``W1^T W1`` (``N_i x N_i``): ``sigma1**2 N_h MP_{N_i/N_h}``."""
    n_inputs, n_hidden = require_positive_int(n_inputs, "N_i"), require_positive_int(n_hidden, "N_h")
    s1 = _scale(sigma1, n_inputs, "sigma1")
    return MarchenkoPastur(n_inputs / n_hidden, s1**2 * n_hidden)


def _scale(sigma, n: int, name: str) -> float:
    s = 1.0 / np.sqrt(n) if sigma is None else float(sigma)
    if not (np.isfinite(s) and s > 0):
        raise NearoptError(f"{name} must be a finite number > 0, got {sigma}")
    return s


class ChiSquareMPConvolution(rv_continuous, SpectralLaw):
    """Law of a pooled nonzero Hessian eigenvalue of a random linear teacher (a :class:`SpectralLaw` without atoms).

    ``lambda = s + mu`` with ``s ~ sigma2**2 chi2_{N_h}`` (:func:`output_norm_law`)
    independent of ``mu ~ sigma1**2 N_h MP_q`` (:func:`wishart_law`), ``q = N_i/N_h``.
    The atom of ``MP_q`` (``q > 1``) gives the component ``lambda = s`` with weight
    ``1 - 1/q``; so

        pdf(l) = (1 - w) chi2.pdf(l) + w * int chi2.pdf(l - mu) bulk.pdf(mu) dmu,
        w = min(1, 1/q),

    evaluated by adaptive vector quadrature (``scipy.integrate.quad_vec``) in the
    smooth variable ``theta`` (module docstring); ``cdf`` likewise with
    ``chi2.cdf``, so it is monotone by construction. The ``chi2`` part is exact for
    every size; the MP part is the ``N_i, N_h -> inf`` limit at fixed ``q`` (see
    :func:`nearopt.theory.linear.simulate_linear_spectrum` for the exact
    finite-size law).

    Parameters
    ----------
    n_inputs, n_hidden : int
        ``N_i``, ``N_h``.
    sigma1, sigma2 : float, optional
        Standard deviations of the teacher weights (defaults ``1/sqrt(N_i)``,
        ``1/sqrt(N_h)``, as in :func:`nearopt.sample_teacher`).
    epsrel : float
        Relative tolerance of the quadrature (default ``1e-10``).

    All ``scipy.stats`` methods work (``pdf``, ``cdf``, ``sf``, ``ppf`` (numerical
    inversion), ``rvs``, ``mean``, ``var``, ``support``), and ``cdf`` can be
    passed to ``scipy.stats.kstest``. Inputs of ``pdf``/``cdf`` are vectorised:
    one quadrature serves a whole array.
    """

    def __init__(self, n_inputs: int, n_hidden: int, sigma1: float | None = None, sigma2: float | None = None, epsrel: float = 1e-10, **kwargs):
        self.n_inputs = require_positive_int(n_inputs, "N_i")
        self.n_hidden = require_positive_int(n_hidden, "N_h")
        self.sigma1 = _scale(sigma1, self.n_inputs, "sigma1")
        self.sigma2 = _scale(sigma2, self.n_hidden, "sigma2")
        self.epsrel = float(epsrel)
        self.chi2 = output_norm_law(self.n_hidden, self.sigma2)
        self.mp = wishart_law(self.n_inputs, self.n_hidden, self.sigma1)
        self.ratio = self.mp.ratio
        kwargs.setdefault("name", "chi2_mp_convolution")
        kwargs["a"] = self.mp.support()[0]  # s >= 0, so lambda >= lower edge of mu
        kwargs["b"] = np.inf
        super().__init__(**kwargs)

    def __repr__(self) -> str:
        return f"ChiSquareMPConvolution(n_inputs={self.n_inputs}, n_hidden={self.n_hidden}, sigma1={self.sigma1:g}, sigma2={self.sigma2:g})"

    def _updated_ctor_param(self):  # lets scipy re-create the object (freezing, copies)
        dct = super()._updated_ctor_param()
        dct.update(n_inputs=self.n_inputs, n_hidden=self.n_hidden, sigma1=self.sigma1, sigma2=self.sigma2, epsrel=self.epsrel)
        return dct

    @property
    def chi2_weight(self) -> float:
        """Weight ``1 - 1/q`` (``q > 1``) of the component ``lambda = s``."""
        return self.mp.atom_mass

    def _bulk_integral(self, fn, x) -> np.ndarray:
        """``int_0^pi fn(x - mu(theta)) w(theta) dtheta`` for every ``x`` at once."""
        x = np.asarray(x, dtype=np.float64)
        if x.size == 0:
            return np.zeros_like(x)
        q, c = self.ratio, self.mp.scale
        a, b = 1.0 + q, 2.0 * np.sqrt(q)

        def integrand(theta):
            return fn(x - c * (a + b * np.cos(theta))) * _theta_weight(theta, q)

        val, _ = quad_vec(integrand, 0.0, np.pi, epsabs=1e-13, epsrel=self.epsrel, norm="max", limit=4000)
        return val

    def bulk_pdf(self, x):
        """Density of ``s + mu`` given ``mu`` in the bulk, times ``min(1, 1/q)``."""
        return self._bulk_integral(self.chi2.pdf, x)

    def _pdf(self, x):
        return self._on_reals(lambda y: self.chi2_weight * self.chi2.pdf(y) + self._bulk_integral(self.chi2.pdf, y), x, 0.0, 0.0)

    def _cdf(self, x):
        return self._on_reals(self._cdf_real, x, 0.0, 1.0)

    def _cdf_real(self, x):
        # lower tail directly, upper tail as 1 - sf: keeps the small side accurate
        x = np.asarray(x, dtype=np.float64)
        lower = x <= self.median_guess
        out = np.empty_like(x)
        out[lower] = self.chi2_weight * self.chi2.cdf(x[lower]) + self._bulk_integral(self.chi2.cdf, x[lower])
        out[~lower] = 1.0 - self._sf(x[~lower])
        return np.clip(out, 0.0, 1.0)

    @property
    def median_guess(self) -> float:
        """Where :meth:`cdf` switches from the lower to the upper tail (the mean)."""
        return self.chi2.mean() + self.mp.mean()

    def _sf(self, x):
        return self._on_reals(lambda y: np.clip(self.chi2_weight * self.chi2.sf(y) + self._bulk_integral(self.chi2.sf, y), 0.0, 1.0), x, 1.0, 0.0)

    def ppf(self, q, *args, **kwds):
        """Numerical inverse of :meth:`cdf` (``scipy.stats``); :class:`NearoptError` outside ``[0, 1]``."""
        return super().ppf(self._probabilities(q), *args, **kwds)

    def _ppf(self, q):
        """All points at once: bracketed root finding on the vectorised :meth:`cdf` (one quadrature per step)."""
        q = np.asarray(q, dtype=np.float64)
        lo = np.full(q.shape, float(self.a))
        hi = np.full(q.shape, float(self.chi2.isf(1e-16) + self.mp.bulk_edges[1]))
        res = elementwise.find_root(lambda x, p: self._cdf_real(x) - p, (lo, hi), args=(q,))
        return np.where(q <= 0, lo, np.where(q >= 1, np.inf, res.x))

    def _rvs(self, size=None, random_state=None):
        return self.chi2.rvs(size=size, random_state=random_state) + self.mp.rvs(size=size, random_state=random_state)

    def _stats(self):
        mean = self.chi2.mean() + self.mp.mean()
        var = self.chi2.var() + self.mp.var()
        return mean, var, None, None


def gamma_gauss_rule(shape: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n``-point Gauss rule of the law ``Gamma(shape, 1)``: nodes ``y`` and weights ``w`` (``sum w = 1``), ``(n,)`` each.

    Exact for polynomials of degree ``< 2n`` (the moments of ``y`` up to ``2n - 1``).
    Golub–Welsch on the Jacobi matrix of the generalised Laguerre polynomials
    (``alpha = shape - 1``: diagonal ``2j + shape``, off-diagonal ``sqrt((j+1)(j+shape))``),
    standardised as ``y = shape + sqrt(shape) s``: the matrix of ``s`` has entries
    ``O(1)`` and the weights are squared first eigenvector components, so nothing
    overflows (``scipy.special.roots_genlaguerre`` forms ``Gamma(shape)`` and returns
    NaN weights once ``shape`` is a few hundred). Relative node error ``O(eps)`` at any shape.
    """
    shape = float(shape)
    if not (np.isfinite(shape) and shape > 0):
        raise NearoptError(f"Gamma shape must be a finite number > 0, got {shape}")
    n = require_positive_int(n, "number of Gauss nodes")
    j = np.arange(n, dtype=np.float64)
    diag = 2.0 * j / np.sqrt(shape)
    off = np.sqrt((j[:-1] + 1.0) * (j[:-1] + shape) / shape)
    s, vecs = eigh_tridiagonal(diag, off)
    w = vecs[0] ** 2
    y = np.maximum(shape + np.sqrt(shape) * s, 0.0)  # nodes lie in (0, inf); the clip guards rounding only
    return y, w / w.sum()


class TabulatedCDF:
    """A cdf tabulated on a grid and interpolated monotonically (``PchipInterpolator``).

    For evaluating an expensive cdf at very many points (Kolmogorov–Smirnov
    distances of large pooled samples). ``max_error`` is the largest deviation
    from the exact cdf measured at the midpoints of the grid; below ``lo`` the
    value is ``cdf(lo)`` and above ``hi`` it is ``cdf(hi)`` (choose the range to
    cover the data).

    Parameters
    ----------
    cdf : callable
        Vectorised exact cdf.
    lo, hi : float
        Grid range.
    n : int
        Number of grid points (default 4001).
    """

    def __init__(self, cdf, lo: float, hi: float, n: int = 4001):
        if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
            raise NearoptError(f"need a finite range lo < hi, got ({lo}, {hi})")
        n = require_positive_int(n, "number of grid points")
        grid = np.linspace(lo, hi, n)
        values = np.maximum.accumulate(cdf(grid))  # removes rounding-level wobble only
        self.lo, self.hi = float(lo), float(hi)
        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):  # flat tails: zero slopes
            self._interp = PchipInterpolator(grid, values, extrapolate=False)
            self._slope = self._interp.derivative()
        self._ends = (float(values[0]), float(values[-1]))
        mid = 0.5 * (grid[1:] + grid[:-1])
        self.max_error = float(np.max(np.abs(self(mid) - cdf(mid))))

    def __call__(self, x):
        x = np.asarray(x, dtype=np.float64)
        y = self._interp(np.clip(x, self.lo, self.hi))
        return np.where(x < self.lo, self._ends[0], np.where(x > self.hi, self._ends[1], y))

    def density(self, x):
        """Derivative of the interpolant (0 outside ``[lo, hi]``): a density consistent with the table."""
        x = np.asarray(x, dtype=np.float64)
        with np.errstate(invalid="ignore"):
            y = np.nan_to_num(self._slope(np.clip(x, self.lo, self.hi)), nan=0.0)  # zero slopes of flat tails
        return np.where(np.isnan(x), np.nan, np.where((x < self.lo) | (x > self.hi), 0.0, np.clip(y, 0.0, None)))
