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
* ``g`` and the loss: evaluated in ``REFERENCE_DIGITS``-digit arithmetic (``mpmath``) from the
  closed forms at the float64 point ``x0`` (exactly representable);
* ``H0``: the library's float64 Hessian (:func:`nearopt.critical.exact_hessian`), its error
  measured against a reference from central differences of the high-precision gradient
  (step ``REFERENCE_STEP``), and ``lambda_min`` bounded below by a float64 Cholesky
  factorisation of ``H0 - s I`` with the backward error of Higham (2002), Thm. 10.3.

This is float64 and high-precision arithmetic with explicit allowances, not interval
arithmetic: the certificate is as good as IEEE rounding of the BLAS and mpmath's
rounding at 50 digits (not enclosed). ``docs/certificate.md`` says how this differs from
the verification of Safran & Shamir (2018).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import mpmath
import numpy as np
import scipy.linalg

from .critical import CriticalPoint, exact_hessian, loss_and_gradient
from .errors import NearoptError
from .model import TwoLayerNet
from .problem import Problem, as_problem

#: activations with a derived third-derivative bound (``erf`` is ``erf(z / sqrt 2)``, ``erf:unit`` is ``erf(z)``)
SUPPORTED = ("relu", "erf", "erf:unit")
#: working digits of the reference gradient, loss and Hessian
REFERENCE_DIGITS = 50
#: central-difference step of the reference Hessian (relative to ``max(1, |x0|_inf)``); its error, ``L3 step / 2`` per column, is allowed for
REFERENCE_STEP = 1e-24
U = float(np.finfo(np.float64).eps) / 2.0  # unit roundoff
#: ``E|Z|^3`` for ``Z ~ N(0, 1)``
C3 = 2.0 * math.sqrt(2.0 / math.pi)
#: ReLU: ``|d^3_aaa kappa[p, p, p]| <= C_AAA |b| |p|^3 / |a|^2`` (``docs/certificate.md`` §2)
C_AAA = math.sqrt(27.0) / (4.0 * math.pi)
#: ``max cos(phi)^2 sin(phi)`` over the circle: bounds ``s^2 r`` and ``s r^2`` by ``(s^2 + r^2)^(3/2)``
MIX = 2.0 / (3.0 * math.sqrt(3.0))


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
    dtype: str = "float64"
    arithmetic: str = (f"float64 Hessian with a Cholesky backward-error bound (Higham Thm 10.3); gradient, loss and reference "
                       f"Hessian in {REFERENCE_DIGITS}-digit mpmath; not interval arithmetic")

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
    (``docs/certificate.md`` §3). ``inf`` for ReLU when the ball reaches a zero unit.
    """
    pr = as_problem(problem)
    name = pr.point.activation.name
    if name not in SUPPORTED:
        raise NearoptError(f"no derived third-derivative bound for activation {name!r} (have {', '.join(SUPPORTED)})")
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
    nlo, nhi = np.maximum(norms - rho * fw, 0.0), norms + rho * fw
    bhi = beta + rho * fv
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
    return float(unit.max() + np.linalg.norm(G, axis=1).max()) if K else 0.0


# ----------------------------------------------------------------------------- high-precision reference
class _Reference:
    """Loss, gradient and (central-difference) Hessian of the closed forms in ``REFERENCE_DIGITS`` digits.

    Units ``Omega = [W; T]`` ``(J, d)``, ``beta = [v; -u]``; ``dL/dw_a = v_a sum_j beta_j (A_aj w_a + B_aj omega_j)``,
    ``dL/dv_a = sum_j beta_j kappa_aj`` (``docs/landscape.md`` §1).
    """

    def __init__(self, problem: Problem):
        s, t = problem.point, problem.teacher
        self.name = s.activation.name
        self.c = mpmath.mpf(2) / (2 if self.name == "erf" else 1)
        self.K, self.d = s.n_hidden, s.n_inputs
        self.Om = [[mpmath.mpf(float(x)) for x in row] for row in np.vstack([s.W1, t.W1])]
        self.beta = [mpmath.mpf(float(x)) for x in np.concatenate([s.W2.ravel(), -t.W2.ravel()])]
        #: the central-difference step: REFERENCE_STEP max(1, largest student entry)
        self.step = REFERENCE_STEP * max(1.0, float(np.abs(s.parameters()).max()))

    def pair(self, a: list, b: list) -> tuple[Any, Any, Any, Any]:
        """``kappa(a, b)``, ``A_ab``, ``A_ba``, ``B`` with ``grad_1 kappa(a, b) = A_ab a + B b``."""
        na2, nb2, ab = mpmath.fdot(a, a), mpmath.fdot(b, b), mpmath.fdot(a, b)
        pi = mpmath.pi
        if self.name == "relu":
            if na2 == 0 or nb2 == 0:
                return mpmath.mpf(0), mpmath.mpf(0), mpmath.mpf(0), mpmath.mpf(1) / 4
            S = mpmath.sqrt(max(na2 * nb2 - ab * ab, mpmath.mpf(0)))
            th = mpmath.atan2(S, ab)
            return (S + (pi - th) * ab) / (2 * pi), S / (2 * pi * na2), S / (2 * pi * nb2), (pi - th) / (2 * pi)
        c = self.c
        da, db = 1 + c * na2, 1 + c * nb2
        root = mpmath.sqrt(da * db)
        r = c * ab / root
        q = pi / 2 * mpmath.sqrt(1 - r * r)
        return 2 / pi * mpmath.asin(r), -c * r / (da * q), -c * r / (db * q), c / (root * q)

    def row(self, Om: list, beta: list, a: int) -> tuple[list, Any, list]:
        """``(dL/dw_a, dL/dv_a, pairs)`` of student ``a``; ``pairs[j] = pair(omega_a, omega_j)``."""
        pairs = [self.pair(Om[a], Om[j]) for j in range(len(Om))]
        gw = [mpmath.mpf(0)] * self.d
        gv = mpmath.mpf(0)
        for j, (k, A, _, B) in enumerate(pairs):
            gw = [x + beta[j] * (A * Om[a][i] + B * Om[j][i]) for i, x in enumerate(gw)]
            gv += beta[j] * k
        return [beta[a] * x for x in gw], gv, pairs

    def loss_gradient(self) -> tuple[Any, list]:
        """``L = 1/2 sum_ij beta_i beta_j kappa_ij`` and the full gradient (``W`` row-major, then ``v``) at the point."""
        K, J = self.K, len(self.Om)
        with mpmath.workdps(REFERENCE_DIGITS):
            gW, gv, loss = [], [], mpmath.mpf(0)
            for a in range(K):
                w, v, pairs = self.row(self.Om, self.beta, a)
                gW += w
                gv.append(v)
                loss += self.beta[a] * v  # sum_j beta_a beta_j kappa_aj
                loss += sum(self.beta[a] * self.beta[m] * pairs[m][0] for m in range(K, J))  # the (m, a) terms
            for m in range(K, J):
                loss += sum(self.beta[m] * self.beta[n] * self.pair(self.Om[m], self.Om[n])[0] for n in range(K, J))
            return loss / 2, gW + gv

    def column(self, a: int, i: int, h: Any) -> list:
        """``d grad L / d theta`` for ``theta = w_a[i]`` (``i < d``) or ``v_a`` (``i = d``), by central differences."""
        K, d = self.K, self.d
        col = [mpmath.mpf(0)] * (K * d + K)
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

    def hessian_error(self, H: np.ndarray, trained: np.ndarray) -> float:
        """``|H - H_ref|_F`` over the trained parameters (``H`` the float64 Hessian, ``trained`` its indices)."""
        K, d = self.K, self.d
        with mpmath.workdps(REFERENCE_DIGITS):
            h = mpmath.mpf(self.step)
            total = mpmath.mpf(0)
            pos = {int(p): n for n, p in enumerate(trained)}
            for n, p in enumerate(trained):
                a, i = (int(p) // d, int(p) % d) if p < K * d else (int(p) - K * d, d)
                col = self.column(a, i, h)
                for q, m in pos.items():
                    total += (mpmath.mpf(float(H[m, n])) - col[q]) ** 2
            return float(mpmath.sqrt(total)) * (1 + 1e-12)


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
    return s - allowance


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


def certify(point: Problem | CriticalPoint | TwoLayerNet, *, radius: float | None = None) -> Certificate:
    """Certify that the point's exact critical point nearby is a strict local minimum (module docstring).

    ``point``: a :class:`~nearopt.problem.Problem`, a :class:`~nearopt.critical.CriticalPoint`
    (its polished problem) or a student (teacher = itself); isotropic inputs, activation in
    :data:`SUPPORTED`. ``radius``: the ball ``B(x0, rho)`` of the Lipschitz bound (default: the
    largest ``rho`` with ``L3(rho) rho <= mu / 2``). Returns a :class:`Certificate` with
    ``certified=False`` and a reason where the argument does not close (a saddle, a degenerate
    Hessian, too large a gradient, a ball reaching a zero ReLU unit).
    """
    pr = point.problem if isinstance(point, CriticalPoint) else as_problem(point)
    name = pr.point.activation.name
    if name not in SUPPORTED:
        raise NearoptError(f"certify: no derived third-derivative bound for activation {name!r} (have {', '.join(SUPPORTED)})")
    if pr.teacher.activation.name != name:
        raise NearoptError(f"certify: student ({name}) and teacher ({pr.teacher.activation.name}) activations differ")
    if not pr.inputs.isotropic:
        raise NearoptError("certify: only isotropic inputs x ~ N(0, I) are supported")
    if radius is not None and not (math.isfinite(radius) and radius > 0):
        raise NearoptError(f"certify: radius must be a finite number > 0, got {radius!r}")
    first = pr.trained in ("both", "first")
    norms = np.linalg.norm(pr.point.W1, axis=1)
    info: dict[str, Any] = {"activation": name, "trained": pr.trained, "P": int(pr.trained_indices.size),
                            "smallest_unit_norm": float(norms.min())}
    if name == "relu" and first and norms.min() == 0:
        return _refuse("a zero ReLU unit: the loss is not twice differentiable at the point", **info)
    H = exact_hessian(pr)
    H = np.triu(H) + np.triu(H, 1).T  # the symmetric matrix the Cholesky factorisation reads (its upper triangle)
    _, g_float = loss_and_gradient(pr)
    lam = scipy.linalg.eigvalsh(H)
    info["lambda_min_float"], info["gradient_norm_float"] = float(lam[0]), float(np.linalg.norm(g_float))
    top = float(max(abs(lam[0]), abs(lam[-1])))
    if not lam[0] > 0:
        neg = int(np.sum(lam < 0))
        what = f"a saddle or maximum ({neg} negative eigenvalues)" if lam[0] < -1e-8 * max(top, 1.0) else "a degenerate (non-isolated?) point"
        return _refuse(f"the Hessian is not positive definite: lambda_min = {lam[0]:.3g} ({what})", **info)
    ref = _Reference(pr)
    loss_mp, grad_mp = ref.loss_gradient()
    trained = pr.trained_indices
    info["gradient_rounding"] = float(np.linalg.norm(g_float - np.array([float(grad_mp[int(p)]) for p in trained])))
    with mpmath.workdps(REFERENCE_DIGITS):
        gnorm = float(mpmath.sqrt(mpmath.fsum(grad_mp[int(p)] ** 2 for p in trained))) * (1 + 1e-12) + 1e-40
    info["gradient_norm"], info["loss"] = gnorm, float(loss_mp)
    # |H_ref - H| measured, plus the central difference's own error: |column - H e_k| <= L3 step / 2 (H is L3-Lipschitz)
    dH = ref.hessian_error(H, trained) + math.sqrt(H.shape[0]) * hessian_lipschitz_bound(pr, ref.step) * ref.step / 2 + 1e-30
    info["hessian_error"] = dH
    s = float(lam[0]) - 64 * lam.size * U * top
    if not s > 0:
        return _refuse(f"lambda_min = {lam[0]:.3g} is within the eigensolver's allowance {64 * lam.size * U * top:.3g}: not certifiably "
                       "positive definite (a degenerate point?)", **info)
    chol = cholesky_lower_bound(H, s)
    if chol is None:
        return _refuse(f"the Cholesky check of lambda_min >= {s:.3g} failed (lambda_min = {lam[0]:.3g}): not certifiably positive definite",
                       **info)
    mu = chol - dH
    info["cholesky_allowance"] = float(lam[0]) - chol
    info["mu"] = mu
    if not mu > 0:
        return _refuse(f"lambda_min = {lam[0]:.3g} is within the rounding allowance {lam[0] - mu:.3g}: not certifiably positive definite "
                       "(a degenerate point?)", **info)
    eta = gnorm / mu
    info["eta"] = eta
    rho = _ball(pr, mu, eta, radius)
    L3 = hessian_lipschitz_bound(pr, rho)
    info["ball_radius"], info["lipschitz"] = rho, L3
    if not math.isfinite(L3):
        return _refuse(f"the ball B(x0, {rho:.3g}) meets a zero unit (smallest unit norm {norms.min():.3g}): the ReLU Hessian is "
                       "unbounded there", **info)
    h = L3 * eta / mu
    info["h"] = h
    info["isolation"] = mu - L3 * rho
    if not h <= 0.5:
        return _refuse(f"Kantorovich condition fails: h = L3 eta / mu = {h:.3g} > 1/2 (gradient norm {gnorm:.3g} too large for "
                       f"lambda_min {mu:.3g} and L3 {L3:.3g}; polish the point first)", **info)
    r = 2 * eta / (1 + math.sqrt(1 - 2 * h))  # = (1 - sqrt(1 - 2h)) mu / L3, without the cancellation
    info["radius"], info["margin"] = r, mu - L3 * r
    info["unique_radius"] = min(rho, (1 + math.sqrt(1 - 2 * h)) * mu / L3) if L3 > 0 else rho
    if r > rho:
        return _refuse(f"the critical point's radius {r:.3g} exceeds the ball {rho:.3g} of the Lipschitz bound", **info)
    hnorm = top + dH + (lam[0] - mu)
    drop = 0.5 * (hnorm + L3 * r) * r * r
    # L(x*) <= L(x0) (x* minimises L on the convex segment) and L >= 0 (a mean square)
    info["loss_interval"] = (max(0.0, float(np.nextafter(info["loss"] - drop, -np.inf))), float(np.nextafter(info["loss"], np.inf)))
    if not info["margin"] > 0:
        return _refuse(f"the margin mu - L3 r* = {info['margin']:.3g} is not positive", **info)
    return Certificate(certified=True, reason="", **info)
