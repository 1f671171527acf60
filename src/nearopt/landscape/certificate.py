"""A certificate that a critical point of the population loss is a strict local minimum.

At a polished point ``x0`` (the trained parameters) with ``g = grad L(x0)`` and
``H0 = grad^2 L(x0)`` (exact population loss, ``x ~ N(0, I)``), a Newton-Kantorovich argument
(``docs/certificate.md``) proves: if, on the ball ``B(x0, rho)``, the Hessian is Lipschitz with
constant ``L3`` (``||H(x) - H(y)|| <= L3 |x - y|``), ``mu <= lambda_min(H0)``, ``eta >= ||H0^-1 g||``
(``||g|| / mu``) and

    h = L3 eta / mu <= 1/2,     r* = (1 - sqrt(1 - 2 h)) mu / L3 <= rho,

then there is exactly one critical point ``x*`` with ``|x* - x0| <= r*``, and
``lambda_min(H(x*)) >= mu - L3 r* > 0``: a strict local minimum. On the whole ball
``H >= mu - L3 rho``, so when that is positive ``x*`` is the only critical point in
``B(x0, rho)`` and ``L`` is strongly convex there.

The ingredients and what backs each:

* ``L3``: a *derived* bound (:func:`hessian_lipschitz_bound`) -- the loss is a sum of pair
  kernels ``beta_i beta_j kappa(omega_i, omega_j)``, the third derivative of each pair is bounded
  in closed form by the norms of the units over the ball (ReLU: arc-cosine kernel, needs every
  trained unit away from zero; erf: arcsine kernel, bounded everywhere), and the pair bounds are
  summed over the unit sphere of directions. ReLU pairs need no angle condition: the
  arc-cosine kernel's Hessian is Lipschitz across parallel and antiparallel pairs;
* ``g`` and the loss: enclosed in ``REFERENCE_DIGITS``-digit interval arithmetic
  (``mpmath.iv``) from the closed forms at the float64 point ``x0`` (exactly representable);
* ``H0``: the library's float64 Hessian (:func:`nearopt.landscape.critical.exact_hessian`); its distance
  to the exact Hessian is bounded by an interval enclosure of central differences of the
  gradient (power-of-two step near ``REFERENCE_STEP``, whose own error is ``<= L3 step / 2`` per
  column), and ``lambda_min`` bounded below by a float64 Cholesky factorisation of ``H0 - s I``
  with the backward error of Higham (2002), Thm. 10.3;
* ``L3`` and the final inequalities: float64, rounded outward.

What is assumed rather than enclosed: IEEE round-to-nearest in the BLAS of the Cholesky
factorisation, and the correctness of ``mpmath.iv`` and of the derivation of the bounds
(``docs/certificate.md``). ``interval=False`` replaces the enclosures by plain 50-digit
``mpmath`` (rounded, about half the time). ``docs/certificate.md`` says how this compares with
the verification of Safran & Shamir (2018).

``mpmath`` is an optional dependency (the ``certify`` extra: ``pip install nearopt[certify]``),
imported on first use; without it :func:`certify` and :func:`require_supported` raise one
:class:`~nearopt.errors.NearoptError` naming the extra, and the rest of nearopt works.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import scipy.linalg

from ..errors import NearoptError
from ..model.network import TwoLayerNet
from ..model.problem import Problem, as_problem, require_paper_setting
from ..spectra.matrix import DenseMatrix
from ..spectra.solver import solve
from ..tolerances import EPS
from .critical import CriticalPoint, exact_hessian, loss_and_gradient

__all__ = [
    "ARITHMETIC", "C3", "C_AAA", "Certificate", "certify", "cholesky_lower_bound", "hessian_lipschitz_bound", "INSTALL_HINT", "MIX", "REFERENCE_DIGITS",
    "REFERENCE_STEP", "require_supported", "SUPPORTED", "U"
]

#: activations with a derived third-derivative bound (``erf`` is ``erf(z / sqrt 2)``, ``erf:unit`` is ``erf(z)``)
SUPPORTED = ("relu", "erf", "erf:unit")
#: working digits of the reference gradient, loss and Hessian (intervals or plain)
REFERENCE_DIGITS = 50
#: central-difference step of the reference Hessian (relative to ``max(1, |x0|_inf)``); its error, ``L3 step / 2`` per column, is allowed for
REFERENCE_STEP = 1e-24
U = EPS / 2.0  # unit roundoff
#: ``E|Z|^3`` for ``Z ~ N(0, 1)``
C3 = 2.0 * math.sqrt(2.0 / math.pi)
#: ReLU: ``|d^3_aaa kappa[p, p, p]| <= C_AAA |b| |p|^3 / |a|^2`` (``docs/certificate.md`` §2)
C_AAA = math.sqrt(27.0) / (4.0 * math.pi)
#: ``max cos(phi)^2 sin(phi)`` over the circle: bounds ``s^2 r`` and ``s r^2`` by ``(s^2 + r^2)^(3/2)``
MIX = 2.0 / (3.0 * math.sqrt(3.0))


#: what installs the high-precision arithmetic of the certificates (``mpmath``, an optional dependency)
INSTALL_HINT = "pip install nearopt[certify]"


def _mpmath() -> Any:
    """The ``mpmath`` module, imported on first use; one error line naming the extra when it is not installed."""
    try:
        import mpmath
    except ImportError:
        raise NearoptError(f"certificates need mpmath for their interval arithmetic, which is not installed: {INSTALL_HINT}") from None
    return mpmath


def require_supported(activation: str, who: str) -> None:
    """One error line unless a certificate can be made: ``activation`` has a derived third-derivative bound
    (:data:`SUPPORTED`) and ``mpmath`` is installed; ``who`` names the caller."""
    if activation not in SUPPORTED:
        raise NearoptError(f"{who}: no derived third-derivative bound for activation {activation!r} (have {', '.join(SUPPORTED)})")
    try:
        _mpmath()
    except NearoptError as exc:
        raise NearoptError(f"{who}: {exc}") from None


def _up(x: float) -> float:
    """The next float64 up: one rounding of a correctly rounded operation, made outward."""
    return float(np.nextafter(x, np.inf))


def _down(x: float) -> float:
    return float(np.nextafter(x, -np.inf))


#: what backs the numbers, by ``interval``
ARITHMETIC = {
    True: (f"reference loss, gradient and Hessian enclosed in {REFERENCE_DIGITS}-digit mpmath.iv interval arithmetic; lambda_min of the "
           "float64 Hessian by a Cholesky backward-error bound (Higham Thm 10.3, IEEE BLAS); L3 and the final inequalities in float64 "
           "rounded outward"),
    False: (f"reference loss, gradient and Hessian in {REFERENCE_DIGITS}-digit mpmath (rounded, not enclosed); lambda_min of the float64 "
            "Hessian by a Cholesky backward-error bound (Higham Thm 10.3, IEEE BLAS); L3 and the final inequalities in float64 rounded outward"),
}


@dataclass(frozen=True)
class Certificate:
    """Outcome of :func:`certify` (``docs/certificate.md``). Norms are Euclidean over the trained parameters.

    ``certified``: a strict local minimum ``x*`` lies within ``radius`` of the point; ``reason``
    says why not otherwise. ``mu``: proven lower bound on ``lambda_min(H0)`` (``lambda_min_float``
    is the float64 eigenvalue); ``gradient_norm``: upper bound on ``|grad L(x0)|``; ``eta``:
    ``gradient_norm / mu``; ``lipschitz``: ``L3`` on ``B(x0, ball_radius)``; ``h``; ``radius``:
    ``r*``; ``margin``: ``mu - L3 r*`` (lower bound on ``lambda_min`` at ``x*``); ``isolation``:
    ``mu - L3 ball_radius``, a lower bound on ``lambda_min`` over the ball (``> 0``: ``L`` is strongly
    convex there); ``unique_radius``: ``min(ball_radius, (1 + sqrt(1 - 2h)) mu / L3)``, no critical
    point other than ``x*`` within it (Kantorovich's uniqueness ball);
    ``loss_interval``: ``[lo, hi]`` holding ``L(x*)``.
    """

    certified: bool
    reason: str
    activation: str
    trained: str
    P: int
    lambda_min_float: float
    mu: float
    hessian_error: float
    cholesky_allowance: float
    gradient_norm: float
    gradient_norm_float: float
    gradient_rounding: float
    eta: float
    lipschitz: float
    ball_radius: float
    h: float
    radius: float
    margin: float
    isolation: float
    unique_radius: float
    loss: float
    loss_interval: tuple[float, float]
    smallest_unit_norm: float
    arithmetic: str
    dtype: str = "float64"

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["loss_interval"] = list(self.loss_interval)
        return out


# ----------------------------------------------------------------------------- third-derivative bound
def _kernel_constants(name: str, nlo: np.ndarray, nhi: np.ndarray, mlo: np.ndarray, mhi: np.ndarray) -> dict[str, np.ndarray]:
    """Bounds on the directional derivatives of ``kappa(a + t p, b + t q)`` at ``t = 0``, any ``(a, b)`` in the ball.

    ``|a| in [nlo, nhi]``, ``|b| in [mlo, mhi]`` (arrays of one shape). With ``P = |p|``, ``Q = |q|``:
    ``|k'| <= c1a P + c1b Q``, ``|k''| <= c2a P^2 + c2b Q^2 + c11 P Q``,
    ``|k'''| <= c3a P^3 + c3b Q^3 + c21 P^2 Q + c12 P Q^2`` (``docs/certificate.md`` §2; a zero lower
    norm gives ``inf`` where ReLU needs it).
    """
    if name == "relu":
        with np.errstate(divide="ignore"):
            ia, ib = 1.0 / nlo, 1.0 / mlo
        return {"c1a": mhi / math.sqrt(2.0), "c1b": nhi / math.sqrt(2.0), "c2a": mhi * ia / math.pi, "c2b": nhi * ib / math.pi,
                "c11": np.ones_like(nlo), "c3a": C_AAA * mhi * ia**2, "c3b": C_AAA * nhi * ib**2, "c21": 3.0 * ia / math.pi,
                "c12": 3.0 * ib / math.pi}
    s = math.sqrt(2.0) if name == "erf" else 1.0  # g = erf(z / s)
    g1, g2, g3 = 2.0 / math.sqrt(math.pi) / s, 2.0 * math.sqrt(2.0) * math.exp(-0.5) / math.sqrt(math.pi) / s**2, 4.0 / math.sqrt(math.pi) / s**3
    one = np.ones_like(nlo)
    e1 = g1 * math.sqrt(2.0 / math.pi)  # E|P| = sqrt(2/pi) |p|
    return {"c1a": e1 * one, "c1b": e1 * one, "c2a": g2 * one, "c2b": g2 * one, "c11": 2.0 * g1**2 * one, "c3a": g3 * C3 * one,
            "c3b": g3 * C3 * one, "c21": 3.0 * g1 * g2 * C3 * one, "c12": 3.0 * g1 * g2 * C3 * one}


def hessian_lipschitz_bound(problem: Problem | TwoLayerNet, rho: float) -> float:
    """``L3 >= sup ||D^3 L||`` over ``B(x0, rho)`` (trained parameters): ``||H(x) - H(y)|| <= L3 |x - y|`` there.

    ``L = 1/2 sum_ij beta_i beta_j kappa(omega_i, omega_j)``; along a unit direction with parts
    ``(p_a, e_a)`` per student unit (``z_a^2 = |p_a|^2 + e_a^2``), every pair's third derivative is
    bounded by :func:`_kernel_constants` and the norms over the ball. Monomials of one unit are
    bounded by ``z_a^3`` (coefficients ``pi_a``), mixed ones by ``z_a^2 z_b`` (``Gamma_ab``), and
    ``sum_a pi_a z_a^3 + sum_ab Gamma_ab z_a^2 z_b <= max_a pi_a + max_a |Gamma_a|_2``
    (``docs/certificate.md`` §3). ``inf`` for ReLU when the ball reaches a zero unit. Evaluated in
    float64 with outward margins (relative ``2e-12`` on the norms, ``1e-10`` on the result) that
    dominate the rounding of this sum of positive terms.
    """
    pr = as_problem(problem)
    require_paper_setting(pr, "the certificate")
    name = pr.point.activation.name
    require_supported(name, "hessian_lipschitz_bound")
    rho = float(rho)
    if not (math.isfinite(rho) and rho >= 0):
        raise NearoptError(f"the ball radius must be finite and >= 0, got {rho!r}")
    s, t = pr.point, pr.teacher
    K, J = s.n_hidden, s.n_hidden + t.n_hidden
    first, second = pr.trained in ("both", "first"), pr.trained in ("both", "second")
    norms = np.linalg.norm(np.vstack([s.W1, t.W1]), axis=1)
    beta = np.abs(np.concatenate([s.W2.ravel(), t.W2.ravel()]))
    fw = np.zeros(J)
    fw[:K] = 1.0 if first else 0.0
    fv = np.zeros(J)
    fv[:K] = 1.0 if second else 0.0
    # outward: relative 2e-12 on the inputs dominates their rounding (and that of the subtraction); 1e-10 on the result
    nlo, nhi = np.maximum(norms * (1 - 2e-12) - rho * fw, 0.0), norms * (1 + 2e-12) + rho * fw
    bhi = beta * (1 + 2e-12) + rho * fv
    if name == "relu" and first and np.any(nlo[:K] <= 0):
        return math.inf
    cs3, cs2r, csr2, G = np.zeros(K), np.zeros(K), np.zeros(K), np.zeros((K, K))
    a_idx, j_idx = np.triu_indices(K, 1, J)  # unordered pairs (a, j), a a student, j > a any unit
    c = _kernel_constants(name, nlo[a_idx], nhi[a_idx], nlo[j_idx], nhi[j_idx])
    fwa, fwj, fva, fvj = fw[a_idx], fw[j_idx], fv[a_idx], fv[j_idx]
    ba, bj = bhi[a_idx], bhi[j_idx]
    stud = j_idx < K
    jj = np.where(stud, j_idx, 0)

    def z(x: np.ndarray, mask: np.ndarray) -> np.ndarray:  # 0 * inf = 0 where a term is absent
        return np.where(mask > 0, x, 0.0) * mask

    bb = ba * bj
    np.add.at(cs3, a_idx, z(bb * c["c3a"], fwa))
    np.add.at(cs3, jj, z(bb * c["c3b"], fwj))
    np.add.at(cs2r, a_idx, z(3.0 * bj * c["c2a"], fva * fwa))
    np.add.at(cs2r, jj, z(3.0 * ba * c["c2b"], fvj * fwj))
    to_aj = z(bb * c["c21"], fwa * fwj) + z(1.5 * bj * c["c11"], fva * fwa * fwj) + z(3.0 * ba * c["c2a"], fvj * fwa) \
        + z(3.0 * c["c1a"], fva * fvj * fwa)  # monomials <= z_a^2 z_j (r_a s_a <= z_a^2 / 2)
    to_ja = z(bb * c["c12"], fwa * fwj) + z(1.5 * ba * c["c11"], fvj * fwa * fwj) + z(3.0 * bj * c["c2b"], fva * fwj) \
        + z(3.0 * c["c1b"], fva * fvj * fwj)  # monomials <= z_a z_j^2
    m = stud
    np.add.at(G, (a_idx[m], j_idx[m]), to_aj[m])
    np.add.at(G, (j_idx[m], a_idx[m]), to_ja[m])
    # self pairs 1/2 beta_a^2 kappa(w_a, w_a)
    idx = np.arange(K)
    if name == "relu":  # = beta^2 |w|^2 / 4: D^3 = 3 e^2 (w.p) + 3 e beta |p|^2
        csr2 += 3.0 * nhi[:K] * fv[:K] * fw[:K]
        cs2r += 3.0 * bhi[:K] * fv[:K] * fw[:K]
    else:
        cc = _kernel_constants(name, nlo[idx], nhi[idx], nlo[idx], nhi[idx])
        k3 = cc["c3a"] + cc["c3b"] + cc["c21"] + cc["c12"]
        k2 = cc["c2a"] + cc["c2b"] + cc["c11"]
        k1 = cc["c1a"] + cc["c1b"]
        cs3 += 0.5 * bhi[:K] ** 2 * k3 * fw[:K]
        cs2r += 3.0 * bhi[:K] * k2 * fv[:K] * fw[:K]
        csr2 += 3.0 * k1 * fv[:K] * fw[:K]
    unit = cs3 + MIX * (cs2r + csr2)
    return float(unit.max() + np.linalg.norm(G, axis=1).max()) * (1 + 1e-10) if K else 0.0


# ----------------------------------------------------------------------------- high-precision reference
class _Reference:
    """Loss, gradient and (central-difference) Hessian of the closed forms in ``REFERENCE_DIGITS`` digits.

    ``interval=True``: ``mpmath.iv`` interval arithmetic, every result an enclosure; otherwise
    ``mpmath.mp`` (rounded, not enclosed). Units ``Omega = [W; T]`` ``(J, d)``, ``beta = [v; -u]``;
    ``dL/dw_a = v_a sum_j beta_j (A_aj w_a + B_aj omega_j)``, ``dL/dv_a = sum_j beta_j kappa_aj``
    (``docs/landscape.md`` §1).
    """

    def __init__(self, problem: Problem, interval: bool = True):
        s, t = problem.point, problem.teacher
        self.interval = interval
        mpmath = _mpmath()
        self.ctx: Any = mpmath.iv if interval else mpmath.mp
        self.name = s.activation.name
        self.K, self.d = s.n_hidden, s.n_inputs
        with self.digits():
            self.c = self.ctx.mpf(1 if self.name == "erf" else 2)  # erf(z / s): c = 2 / s^2
            self.Om = [[self.ctx.mpf(float(x)) for x in row] for row in np.vstack([s.W1, t.W1])]
            self.beta = [self.ctx.mpf(float(x)) for x in np.concatenate([s.W2.ravel(), -t.W2.ravel()])]
        #: the central-difference step: a power of two near REFERENCE_STEP max(1, largest student entry), so x0 +- step is exact
        self.step = math.ldexp(1.0, math.ceil(math.log2(REFERENCE_STEP * max(1.0, float(np.abs(s.parameters()).max())))))

    @contextlib.contextmanager
    def digits(self) -> Iterator[None]:
        old = self.ctx.dps
        self.ctx.dps = REFERENCE_DIGITS
        try:
            yield
        finally:
            self.ctx.dps = old

    def upper(self, x: Any) -> float:
        """A float64 ``>= x`` (the enclosure's upper end; without intervals, a relative ``1e-40`` and absolute ``1e-45`` allowance)."""
        if self.interval:
            return float(np.nextafter(float(x.b), np.inf))
        return float(np.nextafter(float(x * (1 + 1e-40 * (1 if x >= 0 else -1)) + 1e-45), np.inf))

    def lower(self, x: Any) -> float:
        return -self.upper(-x)

    def _cross2(self, a: list, b: list, na2: Any, nb2: Any, ab: Any) -> Any:
        """``|a|^2 |b|^2 - (a.b)^2 >= 0``; where that difference cancels (near-parallel pairs), Lagrange's
        ``sum_{i<j} (a_i b_j - a_j b_i)^2``, which does not."""
        prod = na2 * nb2
        S2 = prod - ab * ab
        if float(S2.a if self.interval else S2) > 1e-12 * float(prod.b if self.interval else prod):
            return S2
        return sum(((a[i] * b[j] - a[j] * b[i]) ** 2 for i in range(len(a)) for j in range(i + 1, len(a))), self.ctx.mpf(0))

    def pair(self, a: list, b: list, same: bool = False) -> tuple[Any, Any, Any, Any]:
        """``kappa(a, b)``, ``A_ab``, ``A_ba``, ``B`` with ``grad_1 kappa(a, b) = A_ab a + B b`` (``same``: ``b`` is ``a``)."""
        ctx = self.ctx
        na2 = sum((x * x for x in a), ctx.mpf(0))
        nb2, ab = (na2, na2) if same else (sum((x * x for x in b), ctx.mpf(0)), sum((x * y for x, y in zip(a, b)), ctx.mpf(0)))
        pi = ctx.pi
        if self.name == "relu":
            if same:  # angle 0: kappa = |a|^2 / 2, grad_1 = a / 2
                return na2 / 2, ctx.mpf(0), ctx.mpf(0), ctx.mpf(1) / 2
            if na2 == 0 or nb2 == 0:
                return ctx.mpf(0), ctx.mpf(0), ctx.mpf(0), ctx.mpf(1) / 4
            S = ctx.sqrt(self._cross2(a, b, na2, nb2, ab))
            th = ctx.atan2(S, ab)
            return (S + (pi - th) * ab) / (2 * pi), S / (2 * pi * na2), S / (2 * pi * nb2), (pi - th) / (2 * pi)
        c = self.c
        da, db = 1 + c * na2, 1 + c * nb2
        root = da if same else ctx.sqrt(da * db)
        r = c * ab / root
        # sqrt(1 - r^2) = sqrt(1 + c |a|^2 + c |b|^2 + c^2 (|a|^2 |b|^2 - (a.b)^2)) / root, without cancellation
        cosr = ctx.sqrt(1 + 2 * c * na2) / da if same else ctx.sqrt(1 + c * (na2 + nb2) + c * c * self._cross2(a, b, na2, nb2, ab)) / root
        q = pi / 2 * cosr
        return 2 / pi * ctx.atan2(r, cosr), -c * r / (da * q), -c * r / (db * q), c / (root * q)

    def row(self, Om: list, beta: list, a: int) -> tuple[list, Any, list]:
        """``(dL/dw_a, dL/dv_a, pairs)`` of student ``a``; ``pairs[j] = pair(omega_a, omega_j)``."""
        zero = self.ctx.mpf(0)
        pairs = [self.pair(Om[a], Om[j], same=j == a) for j in range(len(Om))]
        sa = sum((beta[j] * p[1] for j, p in enumerate(pairs)), zero)  # sum_j beta_j A_aj
        gw = [sa * x for x in Om[a]]
        for j, (_, _, _, B) in enumerate(pairs):
            cj = beta[j] * B
            gw = [x + cj * y for x, y in zip(gw, Om[j])]
        gv = sum((beta[j] * p[0] for j, p in enumerate(pairs)), zero)
        return [beta[a] * x for x in gw], gv, pairs

    def loss_gradient(self) -> tuple[Any, list]:
        """``L = 1/2 sum_ij beta_i beta_j kappa_ij`` and the full gradient (``W`` row-major, then ``v``) at the point."""
        K, J = self.K, len(self.Om)
        with self.digits():
            gW, gv, loss = [], [], self.ctx.mpf(0)
            for a in range(K):
                w, v, pairs = self.row(self.Om, self.beta, a)
                gW += w
                gv.append(v)
                loss += self.beta[a] * v  # sum_j beta_a beta_j kappa_aj
                loss += sum((self.beta[a] * self.beta[m] * pairs[m][0] for m in range(K, J)), self.ctx.mpf(0))  # the (m, a) terms
            for m in range(K, J):
                loss += sum((self.beta[m] * self.beta[n] * self.pair(self.Om[m], self.Om[n])[0] for n in range(K, J)), self.ctx.mpf(0))
            return loss / 2, gW + gv

    def column(self, a: int, i: int) -> list:
        """``(grad L(x0 + h e) - grad L(x0 - h e)) / 2h`` for ``e`` the unit vector of ``w_a[i]`` (``i < d``) or ``v_a`` (``i = d``)."""
        K, d, h = self.K, self.d, self.ctx.mpf(self.step)
        col = [self.ctx.mpf(0)] * (K * d + K)
        for sign in (1, -1):
            Om, beta = [list(r) for r in self.Om], list(self.beta)
            if i < d:
                Om[a][i] += sign * h
            else:
                beta[a] += sign * h
            w, v, pairs = self.row(Om, beta, a)
            for n in range(d):
                col[a * d + n] += sign * w[n]
            col[K * d + a] += sign * v
            for b in range(K):
                if b == a:
                    continue
                k, _, A_ba, B = pairs[b]  # pair(omega_a, omega_b): grad_1 kappa(omega_b, omega_a) = A_ba omega_b + B omega_a
                for n in range(d):
                    col[b * d + n] += sign * beta[b] * beta[a] * (A_ba * Om[b][n] + B * Om[a][n])
                col[K * d + b] += sign * beta[a] * k
        return [x / (2 * h) for x in col]

    def hessian_error(self, H: np.ndarray, trained: np.ndarray, lipschitz: float) -> float:
        """An upper bound on ``|H - grad^2 L(x0)|_F`` over the trained parameters (``H`` float64, ``trained`` its indices).

        Each column of the exact Hessian lies within ``lipschitz step / 2`` of the central
        difference (``lipschitz`` bounds the Hessian's Lipschitz constant on ``B(x0, step)``).
        """
        K, d = self.K, self.d
        with self.digits():
            total = self.ctx.mpf(0)
            for n, p in enumerate(trained):
                a, i = (int(p) // d, int(p) % d) if p < K * d else (int(p) - K * d, d)
                col = self.column(a, i)
                diff = [self.ctx.mpf(float(H[m, n])) - col[int(q)] for m, q in enumerate(trained)]
                mags = [abs(x) for x in diff]
                e = self.ctx.sqrt(sum((x * x for x in mags), self.ctx.mpf(0))) + self.ctx.mpf(lipschitz * self.step / 2) * (1 + self.ctx.mpf(1e-12))
                total += e * e
            return self.upper(self.ctx.sqrt(total))


# ----------------------------------------------------------------------------- the certificate
def cholesky_lower_bound(H: np.ndarray, s: float) -> float | None:
    """A proven lower bound on ``lambda_min(H)`` (the float64 matrix) from a Cholesky factorisation of ``fl(H - s I)``.

    If it completes, ``R^T R = fl(H - s I) + E`` with ``|E| <= gamma_{n+1} |R^T| |R|`` (Higham 2002,
    Thm 10.3, any summation order), so ``lambda_min(H) >= s - gamma_{n+1} |R|_F^2 - u max_i |fl(H_ii - s)|``.
    ``None`` when the factorisation breaks down.
    """
    n = H.shape[0]
    A = np.array(H, dtype=np.float64, copy=True)
    A[np.diag_indices(n)] -= s
    try:
        R = scipy.linalg.cholesky(A, lower=False, check_finite=True)
    except (np.linalg.LinAlgError, ValueError):
        return None
    gamma = (n + 1) * U / (1 - (n + 1) * U)
    allowance = gamma * float(np.sum(R * R)) * (1 + 4 * n * U) + U * float(np.max(np.abs(np.diag(A))))
    return _down(s - allowance * (1 + 1e-12))


def _refuse(reason: str, **kw: Any) -> Certificate:
    base: dict[str, Any] = {"lambda_min_float": math.nan, "mu": math.nan, "hessian_error": math.nan, "cholesky_allowance": math.nan,
                            "gradient_norm": math.nan, "gradient_norm_float": math.nan, "gradient_rounding": math.nan, "eta": math.nan, "lipschitz": math.nan,
                            "ball_radius": math.nan, "h": math.nan, "radius": math.nan, "margin": math.nan, "isolation": math.nan, "unique_radius": math.nan,
                            "loss": math.nan, "loss_interval": (math.nan, math.nan), "smallest_unit_norm": math.nan}
    base.update(kw)
    return Certificate(certified=False, reason=reason, **base)


def _ball(problem: Problem, mu: float, eta: float, rho: float | None) -> float:
    """The ball radius: ``rho`` if given, else the largest ``rho`` with ``L3(rho) rho <= mu / 2`` (bisection; ``H >= mu / 2`` there)."""
    if rho is not None:
        return float(rho)
    lo, hi = 0.0, max(4.0 * eta, 1e-300)
    while hessian_lipschitz_bound(problem, hi) * hi <= mu / 2:
        lo, hi = hi, 2.0 * hi
        if hi > 1e6:
            return lo
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if hessian_lipschitz_bound(problem, mid) * mid <= mu / 2 else (lo, mid)
    return lo


def certify(point: Problem | CriticalPoint | TwoLayerNet, *, radius: float | None = None, interval: bool = True) -> Certificate:
    """Certify that the point's exact critical point nearby is a strict local minimum (module docstring).

    ``point``: a :class:`~nearopt.model.problem.Problem`, a :class:`~nearopt.landscape.critical.CriticalPoint`
    (its polished problem) or a student (teacher = itself); isotropic inputs, activation in
    :data:`SUPPORTED`. ``radius``: the ball ``B(x0, rho)`` of the Lipschitz bound (default: the
    largest ``rho`` with ``L3(rho) rho <= mu / 2``). ``interval``: the reference loss, gradient and
    Hessian in ``mpmath.iv`` interval arithmetic (enclosures; default), or in plain 50-digit
    ``mpmath`` (about 4x faster, rounded). Returns a :class:`Certificate` with ``certified=False``
    and a reason where the argument does not close (a saddle, a degenerate Hessian, too large a
    gradient, a ball reaching a zero ReLU unit).
    """
    pr = point.problem if isinstance(point, CriticalPoint) else as_problem(point)
    name = pr.point.activation.name
    require_supported(name, "certify")
    if pr.teacher.activation.name != name:
        raise NearoptError(f"certify: student ({name}) and teacher ({pr.teacher.activation.name}) activations differ")
    if not pr.inputs.isotropic:
        raise NearoptError("certify: only isotropic inputs x ~ N(0, I) are supported")
    if radius is not None and not (isinstance(radius, (int, float)) and math.isfinite(radius) and radius > 0):
        raise NearoptError(f"certify: radius must be a finite number > 0, got {radius!r}")
    first = pr.trained in ("both", "first")
    norms = np.linalg.norm(pr.point.W1, axis=1)
    info: dict[str, Any] = {"activation": name, "trained": pr.trained, "P": int(pr.trained_indices.size),
                            "smallest_unit_norm": float(norms.min()), "arithmetic": ARITHMETIC[bool(interval)]}
    if name == "relu" and first and norms.min() == 0:
        return _refuse("a zero ReLU unit: the loss is not twice differentiable at the point", **info)
    H = exact_hessian(pr)
    H = np.triu(H) + np.triu(H, 1).T  # the symmetric matrix the Cholesky factorisation reads (its upper triangle)
    _, g_float = loss_and_gradient(pr)
    spec = solve(DenseMatrix(H, kind="the exact Hessian"))  # the one rank policy: what counts as zero, what as negative
    assert spec.inertia is not None
    lam = spec.eigenvalues
    info["lambda_min_float"], info["gradient_norm_float"] = float(lam[0]), float(np.linalg.norm(g_float))
    top = float(max(abs(lam[0]), abs(lam[-1])))
    if not lam[0] > 0:
        neg = spec.inertia.negative
        what = f"a saddle or maximum ({neg} negative eigenvalues)" if neg else f"a degenerate (non-isolated?) point: {spec.inertia.zero} zero eigenvalues"
        return _refuse(f"the Hessian is not positive definite: lambda_min = {lam[0]:.3g} ({what})", **info)
    ref = _Reference(pr, interval=interval)
    loss_ref, grad_ref = ref.loss_gradient()
    trained = pr.trained_indices
    with ref.digits():
        info["gradient_rounding"] = float(np.linalg.norm(g_float - np.array([float(ref.ctx.mpf(grad_ref[int(p)]).mid if interval else grad_ref[int(p)])
                                                                          for p in trained])))
        gnorm = ref.upper(ref.ctx.sqrt(sum((grad_ref[int(p)] ** 2 for p in trained), ref.ctx.mpf(0))))
        loss_lo, loss_hi = ref.lower(loss_ref), ref.upper(loss_ref)
    info["gradient_norm"], info["loss"] = gnorm, 0.5 * (loss_lo + loss_hi)
    dH = ref.hessian_error(H, trained, hessian_lipschitz_bound(pr, ref.step))
    info["hessian_error"] = dH
    s = float(lam[0]) - 64 * lam.size * U * top
    if not s > 0:
        return _refuse(f"lambda_min = {lam[0]:.3g} is within the eigensolver's allowance {64 * lam.size * U * top:.3g}: not certifiably "
                       "positive definite (a degenerate point?)", **info)
    chol = cholesky_lower_bound(H, s)
    if chol is None:
        return _refuse(f"the Cholesky check of lambda_min >= {s:.3g} failed (lambda_min = {lam[0]:.3g}): not certifiably positive definite",
                       **info)
    mu = _down(chol - dH)
    info["cholesky_allowance"], info["mu"] = float(lam[0]) - chol, mu
    if not mu > 0:
        return _refuse(f"lambda_min = {lam[0]:.3g} is within the rounding allowance {lam[0] - mu:.3g}: not certifiably positive definite "
                       "(a degenerate point?)", **info)
    eta = _up(gnorm / mu)
    info["eta"] = eta
    rho = _ball(pr, mu, eta, radius)
    L3 = hessian_lipschitz_bound(pr, rho)
    info["ball_radius"], info["lipschitz"] = rho, L3
    if not math.isfinite(L3):
        return _refuse(f"the ball B(x0, {rho:.3g}) meets a zero unit (smallest unit norm {norms.min():.3g}): the ReLU Hessian is "
                       "unbounded there", **info)
    h = _up(_up(L3 * eta) / mu)
    info["h"], info["isolation"] = h, _down(mu - _up(L3 * rho))
    if not h <= 0.5:
        return _refuse(f"Kantorovich condition fails: h = L3 eta / mu = {h:.3g} > 1/2 (gradient norm {gnorm:.3g} too large for "
                       f"lambda_min {mu:.3g} and L3 {L3:.3g}; polish the point first)", **info)
    root = _down(math.sqrt(_down(1.0 - 2.0 * h)))  # 2h is exact
    r = _up(2.0 * eta / _down(1.0 + root))  # = (1 - sqrt(1 - 2h)) mu / L3, without the cancellation
    info["radius"], info["margin"] = r, _down(mu - _up(L3 * r))
    info["unique_radius"] = min(rho, _down(_down(_down(1.0 + root) * mu) / L3)) if L3 > 0 else rho
    if r > rho:
        return _refuse(f"the critical point's radius {r:.3g} exceeds the ball {rho:.3g} of the Lipschitz bound", **info)
    hnorm = top * (1 + 64 * lam.size * U) + dH  # >= |grad^2 L(x0)|
    drop = 0.5 * (hnorm + L3 * r) * r * r * (1 + 1e-12)
    # L(x*) <= L(x0) (x* minimises L on the convex segment) and L >= 0 (a mean square)
    info["loss_interval"] = (max(0.0, _down(loss_lo - drop)), loss_hi)
    if not info["margin"] > 0:
        return _refuse(f"the margin mu - L3 r* = {info['margin']:.3g} is not positive", **info)
    return Certificate(certified=True, reason="", **info)
