"""Activation functions ``g`` and a registry that names them.

An :class:`Activation` evaluates ``g`` and ``g'`` elementwise on torch tensors
(and, through torch, on NumPy arrays). Polynomial activations expose their
coefficients so that Gaussian expectations and rank predictions can use exact
formulas; every other activation is treated generically (quadrature, autodiff).

Names understood by :func:`get_activation` (``name[:argument]``):

* ``linear``: ``g(z) = z``
* ``quadratic``: ``g(z) = z**2``
* ``cubic``: ``g(z) = z**3``
* ``monomial:p``: ``g(z) = z**p`` (integer ``p >= 1``)
* ``polynomial:c0,c1,...``: ``g(z) = sum_k c_k z**k``
* ``erf``: ``g(z) = erf(z / sqrt(2))`` (teacher-student convention)
* ``erf:unit``: ``g(z) = erf(z)``
* ``tanh``: ``g(z) = tanh(z)``
* ``relu``: ``g(z) = max(z, 0)``

Users add their own with :func:`register_activation`.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np
import torch
from numpy.polynomial import hermite_e

from ..errors import NearoptError
from .pair_terms import COLLINEAR_SNAP, erf_gap, erf_pair, relu_angles, relu_kernel, relu_pair

__all__ = [
    "Activation", "activation_from_module", "available_activations", "check_activation", "COLLINEAR_SNAP", "COLLINEAR_TOL", "correlation_gap",
    "CustomActivation", "Erf", "get_activation", "monomial", "pair_covariance", "PairMoments", "Polynomial", "PROBE_POINTS", "register_activation",
    "ReLU", "SMOOTH_ORDER", "Tanh", "TorchFn"
]

TorchFn = Callable[[torch.Tensor], torch.Tensor]

#: parallel pairs: ``1 - rho**2`` below this counts as collinear (ReLU's delta terms, quadrature's 1-D route)
COLLINEAR_TOL = 1e-12


@dataclass(frozen=True)
class PairMoments:
    """Stein-form moments of unit pairs (see module docstring).

    Arrays share a leading shape ``S`` (``(N_h, N_h)`` from :func:`pair_moments`):
    ``gg`` ``S``, ``b`` ``S + (2,)``, ``dd`` ``S``, ``K`` ``S + (2, 2)``. ``method`` is
    ``"closed-form"`` or ``"quadrature"``; ``order``/``error`` describe the quadrature.
    """

    gg: np.ndarray
    b: np.ndarray
    dd: np.ndarray
    K: np.ndarray
    method: str
    order: int | None = None
    error: float = 0.0
    #: ``b[..., 0] + b[..., 1]`` and ``K.sum((-2, -1))`` (shape ``S``) from a closed form free of
    #: cancellation, where the activation has one; ``None``: the sums of the entries (:meth:`fold_diagonal`)
    b_sum: np.ndarray | None = None
    K_sum: np.ndarray | None = None
    #: ``k`` when ``g'(u)`` is proportional to ``exp(-k u^2 / 2)`` (erf): then the first-layer pair block has
    #: the closed form ``E[g'(u_a) g'(u_c) x x^T] = dd (I + k A^T A)^{-1}``, ``A = [w_a; w_c]`` (a Gaussian
    #: integral), which :func:`nearopt.curvature.assembly.assemble` uses instead of ``dd I + A^T K A``: along
    #: ``A``'s rows the Stein form's terms, ``~ dd k c`` each at pre-activation variance ``c``, cancel to ``~ dd / (1 + k c)``
    gaussian_k: float | None = None

    def __getitem__(self, index) -> PairMoments:
        """The moments of the pairs ``index`` selects on the leading shape ``S`` (``m[rows, cols]``; no ``...``)."""

        def take(x: np.ndarray | None) -> np.ndarray | None:
            return None if x is None else x[index]

        return replace(self, gg=self.gg[index], b=self.b[index], dd=self.dd[index], K=self.K[index], b_sum=take(self.b_sum), K_sum=take(self.K_sum))

    def fold_diagonal(self) -> PairMoments:
        """The moments of ``(N_h, N_h)`` unit pairs with each pair ``(a, a)`` in its parallel form.

        For a unit with itself both Stein directions are ``s_a``, so only sums enter:
        ``E[g'(u) g(u) x] = b_sum s_a`` and ``E[g'(u)^2 x x^T] = dd Sigma + K_sum s_a s_a^T``.
        Writing ``b = (b_sum, 0)`` and ``K = [[K_sum, 0], [0, 0]]`` there gives the same
        Stein form without adding four terms that cancel: for ``erf`` at pre-activation
        variance ``c`` each ``K`` entry times ``s_a s_a^T`` is ``~ dd k c`` (``k = 2 a^2``)
        while their total is ``-dd (1 - 1/(1 + 2 k c))``, so summing the entries loses
        ``log10(k c)`` digits (negative eigenvalues from ``|w| ~ 1e3`` on). For assembling
        Stein forms only: the folded ``(a, a)`` entries are no longer ``E[g''(u) g(u)]`` etc.
        """
        if self.gg.ndim != 2 or self.gg.shape[0] != self.gg.shape[1]:
            raise NearoptError(f"fold_diagonal needs the moments of all (N_h, N_h) unit pairs, got shape {self.gg.shape}")
        i = np.arange(self.gg.shape[0])
        b_sum = self.b.sum(-1) if self.b_sum is None else self.b_sum
        K_sum = self.K.sum((-2, -1)) if self.K_sum is None else self.K_sum
        b, K = self.b.copy(), self.K.copy()
        b[i, i], K[i, i] = 0.0, 0.0
        b[i, i, 0], K[i, i, 0, 0] = b_sum[i, i], K_sum[i, i]
        return replace(self, b=b, K=K)

    def raw(self, c11, c12, c22) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Moments in ``z``-coordinates for the covariances ``(c11, c12, c22)`` they were made for.

        Returns ``E[g(u)g(v)]``, ``E[g'(u)g(v) z]`` ``S+(2,)``, ``E[g'(u)g'(v)]`` and
        ``E[g'(u)g'(v) z z^T]`` ``S+(2,2)`` (``E[phi z] = C b``, ``E[phi z z^T] = C K C + E[phi] C``).
        """
        C = pair_covariance(c11, c12, c22)
        first = np.einsum("...ij,...j->...i", C, self.b)
        second = C @ self.K @ C + self.dd[..., None, None] * C
        return self.gg, first, self.dd, second


#: Veltkamp's splitting constant for float64 (``2**27 + 1``): ``x = hi + lo`` with 26-bit halves
_SPLIT = 134217729.0


def _two_product(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``a b = p + e`` exactly (Dekker): ``p = fl(a b)`` and its rounding error ``e`` (``|a|, |b| <= 1``)."""

    def split(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        t = _SPLIT * x
        hi = t - (t - x)
        return hi, x - hi

    p = a * b
    (ah, al), (bh, bl) = split(a), split(b)
    return p, ((ah * bh - p) + ah * bl + al * bh) + al * bl


def correlation_gap(c11, c12, c22) -> np.ndarray:
    """``1 - r**2 = det C / (c11 c22)`` for ``C = [[c11, c12], [c12, c22]]`` (``r`` the correlation), in ``[0, 1]``.

    Accurate to a few ulps of itself for every representable PSD ``C``, not only to
    ``eps / (1 - r**2)``: the entries are scaled into ``[1/4, 1)`` by even powers of two
    (exact; no over- or underflow) and ``c11 c22 - c12**2`` is formed from exact
    products (:func:`_two_product`), so the difference of two nearly equal products
    is exact (Sterbenz). ``0`` where ``c11 c22 = 0``; exactly ``0`` for ``c11 = c12 = c22``.
    """
    c11, c12, c22 = _broadcast(c11, c12, c22)
    j1, j2 = (np.frexp(c11)[1] + 1) // 2, (np.frexp(c22)[1] + 1) // 2
    a11, a12, a22 = np.ldexp(c11, -2 * j1), np.ldexp(c12, -(j1 + j2)), np.ldexp(c22, -2 * j2)
    p1, e1 = _two_product(a11, a22)
    p2, e2 = _two_product(a12, a12)
    det = (p1 - p2) + (e1 - e2)
    with np.errstate(invalid="ignore", divide="ignore"):
        gap = np.where(p1 > 0, det / np.where(p1 > 0, p1 + e1, 1.0), 0.0)
    return np.clip(gap, 0.0, 1.0)


def pair_covariance(c11, c12, c22) -> np.ndarray:
    """``[[c11, c12], [c12, c22]]`` stacked over the broadcast shape ``S``: ``S + (2, 2)``."""
    c11, c12, c22 = np.broadcast_arrays(*(np.asarray(c, dtype=np.float64) for c in (c11, c12, c22)))
    return np.stack([np.stack([c11, c12], -1), np.stack([c12, c22], -1)], -2)


def _autograd_on() -> contextlib.ExitStack:
    """Autograd enabled even inside ``torch.no_grad()`` or ``torch.inference_mode()`` (batched descents run there).

    Tensors made inside are ordinary ones, so a derivative by autograd works from any caller;
    the input must be cloned inside (an inference tensor cannot require grad).
    """
    stack = contextlib.ExitStack()
    stack.enter_context(torch.inference_mode(False))
    stack.enter_context(torch.enable_grad())
    return stack


class Activation:
    """Elementwise activation ``g`` with derivative ``g'``.

    Subclasses implement :meth:`__call__`; :meth:`derivative` defaults to
    autograd of :meth:`__call__`, so a torch-differentiable ``g`` is enough.
    """

    #: canonical spec string; ``get_activation(act.name)`` rebuilds ``act``
    name: str = "activation"

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def derivative(self, z: torch.Tensor) -> torch.Tensor:
        """``g'(z)`` elementwise (autograd unless a subclass knows better)."""
        with _autograd_on():
            zz = z.detach().clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(self(zz).sum(), zz)
        return grad

    def derivatives(self, z: torch.Tensor, order: int = 3) -> list[torch.Tensor]:
        """``[g(z), g'(z), ..., g^(order)(z)]`` elementwise (nested autograd unless a subclass knows better).

        Used by the population quadrature of smooth activations (Stein's lemma turns
        ``x``-moments into expectations of derivatives), so ``g`` must be
        differentiable ``order`` times by autograd if a subclass does not override this.
        """
        with _autograd_on():
            zz = z.detach().clone().requires_grad_(True)
            out = [self(zz), self.derivative(zz)]
            if out[0].requires_grad and not out[1].requires_grad:  # g' came from a detached autograd call
                (out[1],) = torch.autograd.grad(out[0].sum(), zz, create_graph=True)
            for k in range(2, order + 1):
                if not out[-1].requires_grad:  # constant in z (e.g. a user's derivative of a linear g)
                    out.append(torch.zeros_like(zz))
                    continue
                (d,) = torch.autograd.grad(out[-1].sum(), zz, create_graph=k < order, allow_unused=True, materialize_grads=True)
                out.append(d)
        return [d.detach() for d in out[: order + 1]]

    # NumPy views, used by quadrature and by plotting code.
    def numpy(self, z: np.ndarray) -> np.ndarray:
        """``g(z)`` for a NumPy array (float64)."""
        return self(torch.as_tensor(np.asarray(z, dtype=np.float64))).numpy()

    def numpy_derivative(self, z: np.ndarray) -> np.ndarray:
        """``g'(z)`` for a NumPy array (float64)."""
        return self.derivative(torch.as_tensor(np.asarray(z, dtype=np.float64))).numpy()

    @property
    def polynomial_coefficients(self) -> np.ndarray | None:
        """Coefficients ``c_0..c_p`` if ``g`` is a polynomial, else ``None``."""
        return None

    @property
    def is_polynomial(self) -> bool:
        return self.polynomial_coefficients is not None

    @property
    def is_smooth(self) -> bool:
        """Whether ``g`` is infinitely differentiable (population quadrature then uses its derivatives)."""
        return True

    def closed_form_moments(self, c11, c12, c22) -> PairMoments | None:
        """Exact Stein-form pair moments (:class:`PairMoments`) for covariances ``(c11, c12, c22)``.

        The arrays broadcast to a common shape ``S``. ``None`` means no closed form is
        known, and :mod:`nearopt.gaussian.expectations` integrates by checked quadrature instead.
        A subclass with a known Gaussian integral overrides this one method, so a new
        closed form touches one place (the activation itself).
        """
        return None

    def closed_form_fourth_moment(self, c11, c12, c22) -> np.ndarray | None:
        """Exact ``E[g^(4)(u) g(v)]`` for ``(u, v) ~ N(0, [[c11, c12], [c12, c22]])`` (shape ``S``), or ``None``.

        The one moment the residual term of the population Hessian away from a
        global minimum needs beyond :meth:`closed_form_moments` (Price's theorem:
        ``4 d^2 E[g(u) g(v)] / d c11^2``); ``None`` means checked quadrature
        (:mod:`nearopt.gaussian.objective`).
        """
        return None

    def __repr__(self) -> str:
        return f"<Activation {self.name}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Activation) and type(other) is type(self) and other.name == self.name

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.name))


class Polynomial(Activation):
    """``g(z) = sum_k c_k z**k`` with real coefficients ``c = (c_0, ..., c_p)``."""

    def __init__(self, coefficients, name: str | None = None):
        c = np.asarray(coefficients, dtype=np.float64).ravel()
        if not np.all(np.isfinite(c)):
            raise NearoptError(f"polynomial coefficients must be finite numbers, got {', '.join(f'{x:g}' for x in c)}")
        c = np.trim_zeros(c, "b")
        if c.size == 0:
            raise NearoptError("polynomial activation needs at least one nonzero coefficient")
        self._c = c
        self.name = name or "polynomial:" + ",".join(f"{x:g}" for x in c)

    @property
    def polynomial_coefficients(self) -> np.ndarray:
        return self._c.copy()

    @property
    def degree(self) -> int:
        return self._c.size - 1

    def __call__(self, z):
        return _horner(self._c, z)

    def derivative(self, z):
        return _horner(_differentiate(self._c), z)

    def derivatives(self, z, order=3):
        out, c = [], self._c
        for _ in range(order + 1):
            out.append(_horner(c, z))
            c = _differentiate(c)
        return out

    def closed_form_moments(self, c11, c12, c22) -> PairMoments:
        """Mehler: ``E[p(u) q(v)] = sum_k k! alpha_k beta_k rho^k`` with Hermite coefficients of ``p(s1 t)``, ``q(s2 t)``."""
        c11, c12, c22 = _broadcast(c11, c12, c22)
        c = self._c
        derivs = [c]
        for _ in range(3):
            d = derivs[-1]
            derivs.append(d[1:] * np.arange(1, d.size) if d.size > 1 else np.zeros(1))
        s1, s2 = np.sqrt(c11), np.sqrt(c22)
        denom = s1 * s2
        rho = np.divide(c12, denom, out=np.zeros_like(denom), where=denom > 0)

        def herm(coef: np.ndarray, s: np.ndarray) -> np.ndarray:
            # Hermite coefficients of t -> coef(s t), shape S + (p+1,)
            scaled = coef * s[..., None] ** np.arange(coef.size)
            return scaled @ _power_to_hermite(coef.size)

        def E(i: int, j: int) -> np.ndarray:
            alpha, beta = herm(derivs[i], s1), herm(derivs[j], s2)
            k = min(alpha.shape[-1], beta.shape[-1])
            fact = np.array([math.factorial(m) for m in range(k)], dtype=np.float64)
            return np.sum(alpha[..., :k] * beta[..., :k] * fact * rho[..., None] ** np.arange(k), axis=-1)

        b = np.stack([E(2, 0), E(1, 1)], -1)
        K12 = E(2, 2)
        K = np.stack([np.stack([E(3, 1), K12], -1), np.stack([K12, E(1, 3)], -1)], -2)
        return PairMoments(E(0, 0), b, E(1, 1), K, "closed-form")

    def closed_form_fourth_moment(self, c11, c12, c22) -> np.ndarray:
        """Mehler's formula for ``E[g^(4)(u) g(v)]`` (zero below degree 4)."""
        d4 = self._c
        for _ in range(4):
            d4 = _differentiate(d4)
        return _mehler(d4, self._c, *_broadcast(c11, c12, c22))


def _mehler(p: np.ndarray, q: np.ndarray, c11, c12, c22) -> np.ndarray:
    """``E[p(u) q(v)]`` for power-basis coefficients ``p``, ``q`` (Mehler: ``sum_k k! alpha_k beta_k rho^k``)."""
    s1, s2 = np.sqrt(c11), np.sqrt(c22)
    denom = s1 * s2
    rho = np.divide(c12, denom, out=np.zeros_like(denom), where=denom > 0)
    alpha = (p * s1[..., None] ** np.arange(p.size)) @ _power_to_hermite(p.size)
    beta = (q * s2[..., None] ** np.arange(q.size)) @ _power_to_hermite(q.size)
    k = min(p.size, q.size)
    fact = np.array([math.factorial(m) for m in range(k)], dtype=np.float64)
    return np.sum(alpha[..., :k] * beta[..., :k] * fact * rho[..., None] ** np.arange(k), axis=-1)


def _horner(c: np.ndarray, z: torch.Tensor) -> torch.Tensor:
    """``sum_k c_k z**k`` elementwise (Horner)."""
    out = torch.zeros_like(z)
    for ck in c[::-1]:
        out = out * z + float(ck)
    return out


@lru_cache(maxsize=16)
def _tanh_polynomials(order: int) -> tuple[np.ndarray, ...]:
    """Power coefficients of ``p_k(t)`` with ``tanh^(k)(z) = p_k(tanh z)``, ``k = 0 .. order``."""
    out = [np.array([0.0, 1.0])]
    for _ in range(order):
        d = _differentiate(out[-1])
        out.append(np.polynomial.polynomial.polymul(d, [1.0, 0.0, -1.0]))
    return tuple(out)


@lru_cache(maxsize=16)
def _gaussian_polynomials(order: int, a2: float) -> tuple[np.ndarray, ...]:
    """``q_0 .. q_order`` with ``d^k/dz^k exp(-a2 z^2) = exp(-a2 z^2) q_k(z)`` (power coefficients)."""
    out = [np.array([1.0])]
    for _ in range(order):
        q = out[-1]
        out.append(np.polynomial.polynomial.polysub(_differentiate(q), np.polynomial.polynomial.polymul([0.0, 2.0 * a2], q)))
    return tuple(out)


def _differentiate(c: np.ndarray) -> np.ndarray:
    """Coefficients of the derivative of ``sum_k c_k z**k``."""
    return c[1:] * np.arange(1, c.size) if c.size > 1 else np.zeros(1)


def _broadcast(c11, c12, c22) -> list[np.ndarray]:
    """Covariance entries as float64 arrays of one broadcast shape."""
    return list(np.broadcast_arrays(*(np.asarray(c, dtype=np.float64) for c in (c11, c12, c22))))


@functools.cache
def _power_to_hermite(n: int) -> np.ndarray:
    """``(n, n)`` matrix taking power-basis coefficients to probabilists' Hermite ones."""
    T = np.zeros((n, n))
    for k in range(n):
        h = hermite_e.poly2herme(np.eye(n)[k])
        T[k, : h.size] = h
    return T


def monomial(p: int) -> Polynomial:
    """``g(z) = z**p``; named ``linear``/``quadratic``/``cubic`` for ``p = 1, 2, 3``."""
    if isinstance(p, bool) or int(p) != p or p < 1:
        raise NearoptError(f"monomial degree must be an integer >= 1, got {p!r}")
    p = int(p)
    c = np.zeros(p + 1)
    c[p] = 1.0
    return Polynomial(c, name={1: "linear", 2: "quadratic", 3: "cubic"}.get(p, f"monomial:{p}"))


class Erf(Activation):
    """``g(z) = erf(z / scale)``; ``scale = sqrt(2)`` (default) or ``1`` (``erf:unit``)."""

    def __init__(self, unit: bool = False):
        self.unit = unit
        self.scale = 1.0 if unit else math.sqrt(2.0)
        self.name = "erf:unit" if unit else "erf"

    def __call__(self, z):
        return torch.erf(z / self.scale)

    def derivative(self, z):
        return (2.0 / (math.sqrt(math.pi) * self.scale)) * torch.exp(-((z / self.scale) ** 2))

    def derivatives(self, z, order=3):
        """``g^(k+1) = g' q_k(z)`` with ``q_0 = 1``, ``q_(k+1) = q_k' - 2 a^2 z q_k`` (``g' ~ exp(-a^2 z^2)``): one exponential for all."""
        if order < 1:
            return [self(z)]
        d1 = self.derivative(z)
        return [self(z)] + [d1 * _horner(q, z) for q in _gaussian_polynomials(order - 1, 1.0 / self.scale**2)]

    def closed_form_moments(self, c11, c12, c22) -> PairMoments:
        """``g = erf(a z)``: arcsine kernel; ``g'`` is Gaussian so ``g'g'``-moments are Gaussian integrals.

        With ``k = 2 a^2``, ``d_i = 1 + k c_ii``, ``rho = k c12 / sqrt(d1 d2)`` and
        ``D = I + k C`` (``det D = d1 d2 omega``, ``omega = 1 - rho^2``)::

            gg = (2/pi) atan2(rho, sqrt(omega))           dd = (2k/pi) / sqrt(det D)
            b0 = -(2k/pi) rho / (d1 sqrt(omega))         K = -dd k D^{-1} = -dd k adj(D) / det D

        ``gg``, ``b0`` and ``dd`` are the pair terms ``(kappa, A, B)`` of :func:`nearopt.model.pair_terms.erf_pair`
        with ``omega`` from :func:`~nearopt.model.pair_terms.erf_gap` (the code objects the batched engine of
        ``nearopt.gaussian.kernels`` runs). Numerically: every factor is a product or quotient of positive numbers computed
        to a few ulps, ``omega`` included (:func:`~nearopt.model.pair_terms.erf_gap`), so each moment is accurate
        to a few ulps at every scale (no overflow up to ``c ~ 1e300``). The textbook
        forms lose digits as ``k c`` grows: ``det D = d1 d2 - k^2 c12^2`` and ``1 - rho^2``
        cancel (for ``a = c`` the exact value ``1 + 2 k c`` is the difference of two
        numbers ``~ (k c)^2``), ``K_11 = dd (k^2 C'_11 - k)`` with ``C' = C D^{-1}``
        cancels (``k C'_11 -> 1``), and ``arcsin`` amplifies the rounding of ``rho``
        near ``+-1`` by ``1 / sqrt(omega)``. ``b_sum`` and ``K_sum`` (the only
        combinations a unit's pair with itself needs, :meth:`PairMoments.fold_diagonal`)
        are formed from ``c11 - c12`` and ``c11 + c22 - 2 c12`` (exactly 0 for ``a = c``)::

            b0 + b1 = (2k/pi) (1 + k (c11 - c12)) / (d1 sqrt(d1 d2 omega))
            sum K   = -dd k (2 + k (c11 + c22 - 2 c12)) / (d1 d2 omega)
        """
        c11, c12, c22 = _broadcast(c11, c12, c22)
        k = 2.0 / self.scale**2
        amp = 2 * k / np.pi  # (2a / sqrt(pi))^2
        d1, d2 = 1.0 + k * c11, 1.0 + k * c22
        r12 = np.sqrt(d1) * np.sqrt(d2)  # sqrt(d1 d2) without overflow
        rho = k * c12 / r12
        om = erf_gap(k * c11, k * c22, correlation_gap(c11, c12, c22))
        so = np.sqrt(om)
        gg, b0, dd = erf_pair(rho, om, d1, r12, k)  # b0 = 2 d gg / d c11, dd = E[g'(u) g'(v)]
        K11, K22 = -dd * k / (d1 * om), -dd * k / (d2 * om)  # E[g'''(u) g'(v)] = -dd k d2 / det D
        K12 = dd * k * rho / (r12 * om)  # E[g''(u) g''(v)] = dd k^2 c12 / det D
        K = np.stack([np.stack([K11, K12], -1), np.stack([K12, K22], -1)], -2)
        # products ordered so that no intermediate over- or underflows (d1 om, r12 so ~ sqrt(c) at most)
        b_sum = amp * (1.0 + k * (c11 - c12)) / d1 / (r12 * so)
        K_sum = -dd * k * ((2.0 + k * np.clip(c11 + c22 - 2 * c12, 0.0, None)) / d1) / (d2 * om)
        return PairMoments(gg, np.stack([b0, dd], -1), dd, K, "closed-form", b_sum=b_sum, K_sum=K_sum, gaussian_k=k)

    def closed_form_fourth_moment(self, c11, c12, c22) -> np.ndarray:
        """``4 d^2/dc11^2`` of ``(2/pi) arcsin(rho)``, ``rho = k c12 / sqrt(d1 d2)``, ``k = 2 a^2``, ``d = 1 + k c``.

        ``d rho/d c11 = -k rho / (2 d1)`` and ``d^2 rho / d c11^2 = 3 k^2 rho / (4 d1^2)`` give
        ``(2/pi) k^2 rho / d1^2 (rho^2 omega^(-3/2) + 3 omega^(-1/2))``, ``omega = 1 - rho^2 > 0``
        always (``d1 d2 > k^2 c12^2``), collinear units included; ``omega`` from
        :func:`~nearopt.model.pair_terms.erf_gap` (``1 - rho**2`` itself would lose ``log10(k c)`` digits).
        """
        c11, c12, c22 = _broadcast(c11, c12, c22)
        k = 2.0 / self.scale**2
        d1, d2 = 1.0 + k * c11, 1.0 + k * c22
        rho = k * c12 / (np.sqrt(d1) * np.sqrt(d2))
        om = erf_gap(k * c11, k * c22, correlation_gap(c11, c12, c22))
        so = np.sqrt(om)
        q = d1 * so  # d1^2 om^(3/2) = q^2 so: no over- or underflow for c up to ~1e300
        return (2 / np.pi) * k**2 * rho / (q * q * so) * (rho**2 + 3.0 * om)


class Tanh(Activation):
    """``g(z) = tanh(z)``."""

    name = "tanh"

    def __call__(self, z):
        return torch.tanh(z)

    def derivative(self, z):
        return 1.0 - torch.tanh(z) ** 2

    def derivatives(self, z, order=3):
        """Every derivative is a polynomial in ``t = tanh z``: ``p_0 = t``, ``p_(k+1) = p_k'(t) (1 - t^2)``; one tanh for all."""
        t = torch.tanh(z)
        return [_horner(c, t) for c in _tanh_polynomials(order)]


class ReLU(Activation):
    """``g(z) = max(z, 0)``; ``g'(0)`` is taken as 0."""

    name = "relu"

    def __call__(self, z):
        return torch.clamp(z, min=0.0)

    def derivative(self, z):
        return (z > 0).to(z.dtype)

    @property
    def is_smooth(self) -> bool:
        return False

    def closed_form_moments(self, c11, c12, c22) -> PairMoments:
        """Arc-cosine kernels; ``g'' = delta`` and ``g''' = delta'`` integrated exactly.

        ``gg``, ``b0`` and the step ``E[g'(u) g'(v)]`` are the pair terms ``(kappa, A, B)`` of
        :mod:`nearopt.model.pair_terms` (:func:`~nearopt.model.pair_terms.relu_angles`,
        :func:`~nearopt.model.pair_terms.relu_pair`, :func:`~nearopt.model.pair_terms.relu_kernel`, the code objects the batched and compiled engines of
        ``nearopt.gaussian.kernels`` run), with the sine from ``det C`` (:func:`correlation_gap`) and the angle
        by ``atan2``: a few ulps at every scale, parallel and sign-flipped units included.
        """
        c11, c12, c22 = _broadcast(c11, c12, c22)
        s1, s2 = np.sqrt(c11), np.sqrt(c22)
        denom = s1 * s2
        live = denom > 0
        cos = np.clip(np.divide(c12, denom, out=np.ones_like(denom), where=live), -1.0, 1.0)
        # sin from det C (correlation_gap), not from cos: 1 - cos^2 loses eps / sin^2 for nearly parallel
        # pairs; relu_angles takes the angle by atan2 and snaps parallel pairs to theta = 0 or pi exactly
        theta, sin = relu_angles(cos, correlation_gap(c11, c12, c22))  # Theta = pi - angle; dead pairs: 0 gap
        b0, step = relu_pair(theta, sin, np.where(live, s1, 1.0), s2)  # b0 = E[delta(u) relu(v)]
        b0, step = np.where(live, b0, 0.0), np.where(live, step, 0.0)
        gg = relu_kernel(b0, step * c12, c11)
        # For parallel units the delta terms cancel exactly (E[step(u) x x^T] = I/2): K = 0 there.
        ok = live & (sin**2 > COLLINEAR_TOL)
        sqrt_det = np.where(ok, denom * sin, 1.0)
        K12 = np.where(ok, 1.0 / (2 * np.pi * sqrt_det), 0.0)  # E[delta(u) delta(v)]
        # E[delta'(u) step(v)]; c12 / c11 first: c11 sqrt_det over- or underflows at norms ~ 1e+-100
        K11 = np.where(ok, -(c12 / np.where(ok, c11, 1.0)) / (2 * np.pi * sqrt_det), 0.0)
        K22 = np.where(ok, -(c12 / np.where(ok, c22, 1.0)) / (2 * np.pi * sqrt_det), 0.0)
        K = np.stack([np.stack([K11, K12], -1), np.stack([K12, K22], -1)], -2)
        return PairMoments(gg, np.stack([b0, step], -1), step, K, "closed-form")

    def closed_form_fourth_moment(self, c11, c12, c22) -> np.ndarray:
        """``E[delta^(3)(u) relu(v)]``: the ``w_a w_a^T`` coefficient of ``E[delta(u) relu(v) x x^T]``.

        Conditioning on ``u = 0``: ``E[delta(u) relu(v) x x^T] = (sigma P + q q^T / sigma) / (2 pi s1)``
        with ``P = I - w_a w_a^T / c11``, ``q = w_c - (c12 / c11) w_a``, ``sigma^2 = c22 - c12^2 / c11``;
        its ``w_a w_a^T`` coefficient is ``(2 c12^2 - c11 c22) / (2 pi c11^(5/2) sigma)``. Collinear
        pairs (``sigma = 0``) and zero rows give 0: ``relu(v) = 0`` on the hyperplane ``u = 0``.
        """
        c11, c12, c22 = _broadcast(c11, c12, c22)
        s1, s2 = np.sqrt(c11), np.sqrt(c22)
        denom = s1 * s2
        live = denom > 0
        gap = np.where(live, correlation_gap(c11, c12, c22), 0.0)  # sin^2 of the angle, from det C
        ok = live & (gap > COLLINEAR_TOL)
        sigma = np.where(ok, s2 * np.sqrt(gap), 1.0)
        c11s = np.where(ok, c11, 1.0)
        return np.where(ok, (2 * c12**2 - c11 * c22) / (2 * np.pi * c11s**2.5 * sigma), 0.0)


class CustomActivation(Activation):
    """A user activation from a torch function (and optionally its derivative).

    ``fn`` must map a float64 tensor to a real float64 tensor of the same shape,
    out of place; if ``derivative`` is omitted, ``fn`` must be differentiable by
    autograd. Both are probed on construction (:func:`check_activation`): a
    function that breaks one of these rules is one :class:`NearoptError` here,
    not a traceback or a float32 answer later.
    """

    def __init__(self, name: str, fn: TorchFn, derivative: TorchFn | None = None, smooth: bool = True):
        if not callable(fn) or (derivative is not None and not callable(derivative)):
            raise NearoptError(f"activation {name!r}: fn and derivative must be functions of a torch tensor")
        self.name = name
        self._fn = fn
        self._deriv = derivative
        self._smooth = smooth
        check_activation(self)

    def __call__(self, z):
        return self._fn(z)

    def derivative(self, z):
        return self._deriv(z) if self._deriv is not None else super().derivative(z)

    @property
    def is_smooth(self) -> bool:
        return self._smooth


#: where a user's activation is probed: both signs, away from 0 and from the half-integers
#: (kinks and jumps of common activations), float64
PROBE_POINTS = (-2.61, -1.37, -0.42, 0.29, 0.93, 1.74, 2.58)
#: central-difference step and tolerance comparing the derivative with ``g`` itself
_FD_STEP, _FD_RTOL = 1e-5, 1e-4
#: derivatives the population quadrature takes of a smooth activation (Stein's lemma)
SMOOTH_ORDER = 3


def _probe_output(label: str, what: str, out, z: torch.Tensor) -> torch.Tensor:
    """``out`` (``what`` of ``z``) as a checked tensor: real float64, ``z``'s shape, finite."""
    if isinstance(out, np.ndarray):
        raise NearoptError(f"activation {label}: {what} returns a NumPy array, not a torch tensor; write it with torch functions "
                           "(autograd cannot differentiate NumPy)")
    if not isinstance(out, torch.Tensor):
        raise NearoptError(f"activation {label}: {what} returns {type(out).__name__}, not a torch tensor")
    if out.is_complex():
        raise NearoptError(f"activation {label}: {what} returns complex values ({out.dtype}); an activation must be real")
    if not out.is_floating_point():
        raise NearoptError(f"activation {label}: {what} returns {out.dtype} values, not float64; integer or boolean values "
                           "have no derivative (compute in floating point, e.g. (z > 0).double())")
    if out.dtype != torch.float64:
        raise NearoptError(f"activation {label}: {what} returns {out.dtype} values for a float64 input; nearopt computes in float64 "
                           f"and would keep only {out.dtype}'s digits while reporting float64: compute in float64 (no .float(), no float32 constants)")
    if out.shape != z.shape:
        raise NearoptError(f"activation {label}: {what} returns shape {tuple(out.shape)} for an input of shape {tuple(z.shape)}; it must act elementwise")
    if not bool(torch.isfinite(out).all()):
        raise NearoptError(f"activation {label}: {what} is NaN or infinite at some of z = {', '.join(f'{x:g}' for x in PROBE_POINTS)}")
    return out


def _call(label: str, what: str, fn: Callable[[], object]):
    """``fn()``, with a user function's failure as one line that names the likely cause."""
    try:
        return fn()
    except NearoptError:
        raise
    except SystemExit as exc:
        raise NearoptError(f"activation {label}: {what} called sys.exit({exc.code!r})") from None
    except Exception as exc:  # a user's function: any failure is one line
        text = " ".join(str(exc).split())
        if "in-place" in text or "inplace" in text:
            why = "it works in place on its input (z.mul_(), z.tanh_(), z[...] = ...); write it out of place (torch.tanh(z))"
        elif "numpy()" in text.lower():
            why = "it calls NumPy on its tensor, which autograd cannot follow; write it with torch functions"
        elif "does not require grad" in text or "grad_fn" in text:
            why = "it is not differentiable by autograd (its value does not come from torch operations on z: detached, NumPy or integer)"
        else:
            why = f"{type(exc).__name__}: {text[:300]}"
        raise NearoptError(f"activation {label}: {what} fails on a float64 tensor: {why}") from None


def check_activation(act: Activation, label: str | None = None) -> Activation:
    """Probe ``act`` on a small float64 tensor (:data:`PROBE_POINTS`) and return it; one-line :class:`NearoptError` otherwise.

    ``g`` and ``g'`` must return real float64 tensors of the input's shape, finite,
    without modifying the input; ``g'`` must agree with central differences of ``g``
    (a part that autograd does not see, such as ``z.detach()`` or a rounding,
    gives a wrong derivative); a smooth activation must be differentiable
    :data:`SMOOTH_ORDER` times with finite values (the population quadrature's
    Stein identities use them). ``label`` names it in messages (default its name).
    """
    label = label or act.name
    z = torch.tensor(PROBE_POINTS, dtype=torch.float64)
    zin = z.clone()
    with torch.no_grad():
        g = _probe_output(label, "g(z)", _call(label, "g(z)", lambda: act(zin)), z)
    if not torch.equal(zin, z):
        raise NearoptError(f"activation {label}: g modifies its input in place (z.mul_(), z.tanh_(), z[...] = ...); write it out of place (torch.tanh(z))")
    d1 = _probe_output(label, "g'(z)", _call(label, "g'(z)", lambda: act.derivative(z.clone())), z)
    with torch.no_grad():
        h = _FD_STEP
        up, down = (_probe_output(label, "g(z)", _call(label, "g(z)", functools.partial(act, z + step)), z) for step in (h, -h))
    fd = (up - down) / (2 * h)
    rounding = 8 * torch.finfo(torch.float64).eps * torch.maximum(up.abs(), down.abs()) / h  # of the difference itself
    bad = (d1 - fd).abs() > _FD_RTOL * (1.0 + fd.abs()) + rounding
    if bool(bad.any()):
        i = int(torch.nonzero(bad)[0])
        raise NearoptError(f"activation {label}: its derivative g'({PROBE_POINTS[i]:g}) = {float(d1[i]) + 0.0:.6g} disagrees with the slope "
                           f"{float(fd[i]):.6g} of g there; part of g is hidden from autograd (detached, rounded or NumPy values), "
                           "or the derivative given is wrong")
    if act.is_smooth:
        ds = _call(label, f"derivatives to order {SMOOTH_ORDER}", lambda: act.derivatives(z.clone(), SMOOTH_ORDER))
        for k, d in enumerate(ds[2:], start=2):
            _probe_output(label, f"derivative of order {k}", d, z)
    del g
    return act


def _parse_coefficients(arg: str) -> list[float]:
    try:
        c = [float(x) for x in arg.split(",")]
    except ValueError:
        raise NearoptError(f"polynomial coefficients must be comma-separated numbers, got {arg!r}") from None
    if not all(math.isfinite(x) for x in c):  # nan, inf, or beyond float64 such as 1e400
        raise NearoptError(f"polynomial coefficients must be finite numbers, got {arg!r}")
    return c


def _parse_degree(arg: str) -> int:
    try:
        return int(arg)
    except ValueError:
        raise NearoptError(f"monomial degree must be an integer, got {arg!r}") from None


def _no_arg(factory: Callable[[], Activation]) -> Callable[[str | None], Activation]:
    def make(arg: str | None) -> Activation:
        if arg is not None:
            raise NearoptError(f"activation takes no argument, got {arg!r}")
        return factory()

    return make


def _needs_arg(what: str, parse: Callable[[str], object], build: Callable) -> Callable[[str | None], Activation]:
    def make(arg: str | None) -> Activation:
        if arg is None:
            raise NearoptError(f"this activation needs {what} after a colon")
        return build(parse(arg))

    return make


def _erf(arg: str | None) -> Activation:
    if arg not in (None, "unit", "sqrt2"):
        raise NearoptError(f"erf takes ':unit' for erf(z) or nothing for erf(z/sqrt(2)), got {arg!r}")
    return Erf(unit=arg == "unit")


_REGISTRY: dict[str, Callable[[str | None], Activation]] = {
    "linear": _no_arg(lambda: monomial(1)),
    "quadratic": _no_arg(lambda: monomial(2)),
    "cubic": _no_arg(lambda: monomial(3)),
    "monomial": _needs_arg("a degree, e.g. monomial:4", _parse_degree, monomial),
    "polynomial": _needs_arg("coefficients c0,c1,..., e.g. polynomial:0,1,1", _parse_coefficients, Polynomial),
    "erf": _erf,
    "tanh": _no_arg(Tanh),
    "relu": _no_arg(ReLU),
}


def register_activation(name: str, factory: Callable[[str | None], Activation] | Activation, *, overwrite: bool = False) -> None:
    """Make ``name`` (and ``name:arg``) resolvable by :func:`get_activation`.

    ``factory`` is either an :class:`Activation` instance or a callable taking the
    text after the colon (``None`` if absent) and returning an Activation.
    """
    if not name or ":" in name:
        raise NearoptError(f"invalid activation name {name!r}")
    if name in _REGISTRY and not overwrite:
        raise NearoptError(f"activation {name!r} is already registered (pass overwrite=True)")
    if isinstance(factory, Activation):
        instance: Activation = factory
        _REGISTRY[name] = _no_arg(lambda: instance)
    else:
        _REGISTRY[name] = factory


def available_activations() -> list[str]:
    """Registered activation names."""
    return sorted(_REGISTRY)


def get_activation(spec: str | Activation) -> Activation:
    """Resolve ``spec`` (e.g. ``"erf"``, ``"monomial:4"``) to an :class:`Activation`."""
    if isinstance(spec, Activation):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise NearoptError(f"activation must be a name, got {spec!r}")
    name, _, arg = spec.strip().partition(":")
    factory = _REGISTRY.get(name.lower())
    if factory is None:
        if arg and "." not in arg and name.replace(".", "").replace("_", "").isalnum():
            return activation_from_module(name, arg)
        raise NearoptError(f"unknown activation {name!r}; choose from {', '.join(available_activations())}, or MODULE:FUNCTION")
    return factory(arg if arg else None)


def activation_from_module(module: str, attribute: str) -> Activation:
    """The activation ``module:attribute`` (``-a mymodule:softplus`` on the command line).

    ``attribute`` is an :class:`Activation` (e.g. a :class:`CustomActivation` with
    ``smooth=False`` for a kink) or a torch-differentiable function ``z -> g(z)``, wrapped
    as ``CustomActivation("module:attribute", fn)`` (smooth). The module is imported from
    ``sys.path`` (the current folder included when run as ``python -m nearopt``). The
    activation is probed before use (:func:`check_activation`); a module that fails on
    import, or exits, is one :class:`NearoptError`.
    """
    label = f"{module}:{attribute}"
    mod = _import_user_module(module, label)
    obj = getattr(mod, attribute, None)
    if obj is None:
        raise NearoptError(f"activation {label}: module {module!r} has no attribute {attribute!r}")
    if isinstance(obj, Activation):
        return check_activation(obj, label)
    if not callable(obj):
        raise NearoptError(f"activation {label} is neither an Activation nor a function")
    return CustomActivation(label, obj)


def _import_user_module(module: str, label: str):
    """``importlib.import_module(module)``; whatever the module does on import that fails (``sys.exit``, an exception) is one line."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise NearoptError(f"activation {label}: cannot import module {module!r} ({exc})") from None
    except SystemExit as exc:
        raise NearoptError(f"activation {label}: importing module {module!r} called sys.exit({exc.code!r})") from None
    except NearoptError as exc:
        raise NearoptError(f"activation {label}: importing module {module!r} failed: {exc}") from None
    except Exception as exc:  # a user's module: any failure is one line
        raise NearoptError(f"activation {label}: importing module {module!r} failed: {type(exc).__name__}: {exc}") from None
