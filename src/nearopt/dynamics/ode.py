"""Order-parameter ODEs of online SGD for committee machines of any activation (Saad & Solla 1995; Goldt et al. 2019).

Student ``f(x) = sum_a v_a g(w_a . x)`` (``K`` units), teacher ``f*(x) = sum_m u_m g(t_m . x)`` (``M`` units),
one activation ``g`` with its own scaling (nearopt's ``erf`` is ``erf(z / sqrt 2)``),
inputs ``x ~ N(0, I_N)``, labels ``y = f*(x) + sigma xi``, online SGD with step ``eta = eta~ / N`` on both
layers (``trained="both"``) or on the first only (``trained="first"``: the soft committee machine of
the classic papers, ``v`` held fixed). As ``N -> infinity`` at fixed ``alpha = t / N`` the overlaps ``Q_ab = w_a . w_b``,
``R_am = w_a . t_m`` and the second layer ``v`` follow (``lambda = W x``, ``nu = T x`` jointly Gaussian
with covariance ``[[Q, R], [R^T, T]]``, ``r = f - y``)::

    dR_am / d alpha = -eta~ v_a E[g'(lambda_a) r nu_m]
    dQ_ab / d alpha = -eta~ (v_a E[g'(lambda_a) r lambda_b] + v_b E[g'(lambda_b) r lambda_a])
                      + eta~^2 v_a v_b E[g'(lambda_a) g'(lambda_b) r^2]
    dv_a  / d alpha = -eta~ E[g(lambda_a) r]

with ``E[g' g' r^2]`` including ``sigma^2 E[g' g']``. The expectations are sums of the Gaussian
integrals ``I2``, ``I3``, ``I4``, ``J2`` of :mod:`nearopt.gaussian.committee_integrals` (re-exported here:
:func:`i2`, :func:`i3`, :func:`i4`, :func:`j2`; closed forms for erf, ReLU's ``I2``, ``I3``, ``J2`` and
polynomials, checked rules otherwise): ``sum_k beta_k I3(a, j, k)`` is two matrix products of the pair
moments, ``sum_kl beta_k beta_l I4(a, b, k, l)`` is :meth:`CommitteeODE.fourth`. The generalisation error
``eps = 1/2 E[r0^2]`` (``r0`` without the noise) is the excess population loss, from the same pair
moments as :func:`nearopt.gaussian.objective.population_loss`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import integrate

from ..errors import NearoptError, require_positive_finite
from ..gaussian.committee_integrals import fourth_integral, i2, i3, i4, j2
from ..gaussian.expectations import pair_moments
from ..gaussian.objective import nonnegative_quadratic
from ..model.activations import Activation, Erf, ReLU
from ..model.network import TwoLayerNet

__all__ = [
    "committee_ode",
    "CommitteeODE",
    "embedded_teacher",
    "i2",
    "i3",
    "i4",
    "integrate_ode",
    "j2",
    "ode_near_optimum",
    "ODE_TRAINED",
    "ODETrajectory",
    "order_parameters",
]

#: the blocks the ODEs can train: both layers, or the first only (the soft committee machine)
ODE_TRAINED = ("both", "first")


@dataclass(frozen=True)
class CommitteeODE:
    """The ODEs for a student of ``K`` units learning a teacher with overlaps ``T`` ``(M, M)`` and second layer ``u`` ``(M,)``.

    ``activation`` is the networks' own ``g`` (default erf, ``erf(z / sqrt 2)``), with its own scaling.
    """

    T: np.ndarray
    u: np.ndarray
    lr: float
    noise: float = 0.0
    trained: str = "both"
    activation: Activation = field(default_factory=Erf)

    def _overlaps(self, Q: np.ndarray, R: np.ndarray) -> np.ndarray:
        return np.block([[Q, R], [R.T, self.T]])  # covariance of (lambda, nu), (K+M, K+M)

    def error(self, Q: np.ndarray, R: np.ndarray, v: np.ndarray) -> float:
        """Generalisation error ``1/2 E[(f - f*)^2] = 1/2 beta^T I2 beta``, ``beta = (v, -u)``: the population loss."""
        moments = pair_moments(self.activation, self._overlaps(Q, R))
        return nonnegative_quadratic(np.concatenate([v, -self.u]), moments.gg)

    def fourth(self, Q: np.ndarray, R: np.ndarray, v: np.ndarray) -> np.ndarray:
        """``E[g'(lambda_a) g'(lambda_b) r0^2] = sum_kl beta_k beta_l I4(a, b, k, l)`` ``(K, K)`` (the pairs ``a <= b``, ``k <= l`` once)."""
        K = Q.shape[0]
        Om = self._overlaps(Q, R)
        beta = np.concatenate([v, -self.u])
        ia, ib = np.triu_indices(K)
        ik, il = np.triu_indices(Om.shape[0])
        idx = np.broadcast_arrays(ia[:, None], ib[:, None], ik[None, :], il[None, :])  # (pairs ab, pairs kl) each
        C = np.stack([np.stack([Om[i, j] for j in idx], -1) for i in idx], -2)  # (P, S, 4, 4)
        I4 = fourth_integral(self.activation, C).values
        weight = np.where(ik == il, 1.0, 2.0) * beta[ik] * beta[il]
        out = np.zeros((K, K))
        out[ia, ib] = I4 @ weight
        out[ib, ia] = out[ia, ib]
        return out

    def rhs(self, Q: np.ndarray, R: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(dQ, dR, dv) / d alpha``."""
        K = Q.shape[0]
        Om = self._overlaps(Q, R)
        m = pair_moments(self.activation, Om)  # every pair of the K+M fields: I2 = gg, J2 = dd, E[g''(u) g(w)] = b[..., 0]
        beta = np.concatenate([v, -self.u])
        # sum_k beta_k I3(a, j, k) = E[g'(lambda_a) r0 phi_j] = Om[a, j] E[g''(lambda_a) r0] + sum_k dd[a, k] beta_k Om[k, j]
        first = (m.b[:K, :, 0] @ beta)[:, None] * Om[:K] + (m.dd[:K] * beta) @ Om  # (K, K+M)
        second = self.fourth(Q, R, v) + self.noise**2 * m.dd[:K, :K]
        grad_v = m.gg[:K] @ beta  # E[g(lambda_a) r0]
        eta = self.lr
        dR = -eta * v[:, None] * first[:, K:]
        fq = v[:, None] * first[:, :K]
        dQ = -eta * (fq + fq.T) + eta**2 * np.outer(v, v) * second
        dv = -eta * grad_v if self.trained == "both" else np.zeros_like(v)
        return dQ, dR, dv


def committee_ode(teacher: TwoLayerNet, lr: float, noise: float = 0.0, *, trained: str = "both") -> CommitteeODE:
    """The ODEs for ``teacher`` (its activation, which the student shares) at ``eta~ = lr`` (the SGD step is ``lr / N_i``).

    ``trained`` is ``"both"`` (both layers) or ``"first"`` (the soft committee machine: ``v`` fixed).
    Activations: erf at any scale, ReLU, polynomials (``linear``) and any smooth one
    (:mod:`nearopt.gaussian.committee_integrals`).
    """
    if trained not in ODE_TRAINED:
        raise NearoptError(f"the order-parameter ODEs train {' or '.join(ODE_TRAINED)}, got trained={trained!r}")
    if not isinstance(teacher, TwoLayerNet):
        raise NearoptError(f"the order-parameter ODEs take a teacher TwoLayerNet, got {type(teacher).__name__}")
    act = teacher.activation
    if not (isinstance(act, (Erf, ReLU)) or act.is_polynomial or act.is_smooth):
        raise NearoptError(f"the order-parameter ODEs need erf, ReLU, a polynomial or a smooth activation, got {act.name!r} (a kink without a closed form)")
    if teacher.W2.shape[0] != 1 or not teacher.is_plain:
        raise NearoptError("the order-parameter ODEs take a committee machine: one output, no biases")
    lr = require_positive_finite(lr, "learning rate")
    noise = float(noise)
    if not np.isfinite(noise) or noise < 0:
        raise NearoptError(f"the label noise must be finite and >= 0, got {noise}")
    T = teacher.W1.astype(np.float64) @ teacher.W1.T.astype(np.float64)
    return CommitteeODE(0.5 * (T + T.T), teacher.W2.ravel().astype(np.float64), float(lr), noise, trained, act)


@dataclass(frozen=True)
class ODETrajectory:
    """An integrated trajectory of the order parameters at ``alpha`` ``(A,)``.

    ``eps`` ``(A,)`` the generalisation error, ``Q`` ``(A, K, K)``, ``R`` ``(A, K, M)``, ``v`` ``(A, K)``;
    ``alpha_target`` the first ``alpha`` at which ``eps`` reached ``target`` (``None`` if it did
    not within the horizon, or no target was asked for).
    """

    alpha: np.ndarray
    eps: np.ndarray
    Q: np.ndarray
    R: np.ndarray
    v: np.ndarray
    target: float | None = None
    alpha_target: float | None = None


def order_parameters(student: TwoLayerNet, teacher: TwoLayerNet) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``Q = W W^T`` ``(K, K)``, ``R = W T^T`` ``(K, M)`` and ``v`` ``(K,)`` of a committee student, in the weights' own scale."""
    if student.W1.shape[1] != teacher.W1.shape[1]:
        raise NearoptError(f"student and teacher must have the same input dimension, got {student.W1.shape[1]} and {teacher.W1.shape[1]}")
    if student.W2.shape[0] != 1 or not student.is_plain:
        raise NearoptError("the order-parameter ODEs take a committee machine: one output, no biases")
    if student.activation != teacher.activation:
        raise NearoptError(f"the order-parameter ODEs need one activation: the student has {student.activation.name!r}, the teacher {teacher.activation.name!r}")
    W, T = student.W1.astype(np.float64), teacher.W1.astype(np.float64)
    Q = W @ W.T
    return 0.5 * (Q + Q.T), W @ T.T, student.W2.ravel().astype(np.float64)


def integrate_ode(ode: CommitteeODE, Q0: np.ndarray, R0: np.ndarray, v0: np.ndarray, alphas, *, target: float | None = None,
                  rtol: float = 1e-10, atol: float = 1e-14) -> ODETrajectory:
    """The trajectory at times ``alphas`` (ascending, from 0) from ``(Q0, R0, v0)`` (DOP853).

    With ``target``, also the first ``alpha`` where the error falls to ``target`` (an event of the
    integrator, located to its tolerance).
    """
    K, M = R0.shape
    iu = np.triu_indices(K)

    def pack(Q, R, v):
        return np.concatenate([Q[iu], R.ravel(), v])

    def unpack(y):
        Q = np.zeros((K, K))
        Q[iu] = y[: iu[0].size]
        Q = Q + np.triu(Q, 1).T
        R = y[iu[0].size : iu[0].size + K * M].reshape(K, M)
        return Q, R, y[iu[0].size + K * M :]

    def f(_alpha, y):
        return pack(*ode.rhs(*unpack(y)))

    al = np.asarray(alphas, dtype=np.float64)
    if al.ndim != 1 or al.size == 0 or not np.all(np.isfinite(al)) or al[0] < 0 or np.any(np.diff(al) < 0):
        raise NearoptError("the ODE's alphas must be a non-empty ascending list of finite values >= 0")
    events = None
    if target is not None:
        def reach(_alpha, y):
            return ode.error(*unpack(y)) - target

        reach.direction = -1  # type: ignore[attr-defined]
        events = [reach]
    sol = integrate.solve_ivp(f, (0.0, float(al[-1])), pack(Q0, R0, v0), t_eval=al, method="DOP853", rtol=rtol, atol=atol, events=events)
    if not sol.success:
        raise NearoptError(f"the order-parameter ODEs failed to integrate: {sol.message}")
    parts = [unpack(y) for y in sol.y.T]
    hit = None
    if target is not None:
        hit = float(sol.t_events[0][0]) if sol.t_events[0].size else (0.0 if ode.error(Q0, R0, v0) <= target else None)
    return ODETrajectory(
        alpha=al.copy(),
        eps=np.array([ode.error(*p) for p in parts]),
        Q=np.array([p[0] for p in parts]),
        R=np.array([p[1] for p in parts]),
        v=np.array([p[2] for p in parts]),
        target=None if target is None else float(target),
        alpha_target=hit,
    )


def embedded_teacher(base: TwoLayerNet, n_inputs: int) -> TwoLayerNet:
    """``base`` (``W1`` ``(M, d)``) padded with zero columns to ``N_i = n_inputs``: the same overlaps ``T`` at any ``N_i``."""
    M, d = base.W1.shape
    if n_inputs < d:
        raise NearoptError(f"cannot embed a teacher with {d} inputs in N_i = {n_inputs}")
    W1 = np.zeros((M, n_inputs))
    W1[:, :d] = base.W1
    return TwoLayerNet(W1, base.W2, base.activation)


def ode_near_optimum(teacher: TwoLayerNet, *, lr: float, c: float, alphas, noise: float = 0.0) -> np.ndarray:
    """The ODE's error from the ``N -> infinity`` limit of ``delta_0 ~ N(0, (c / N) I)``: ``Q = T + c I``, ``R = T``, ``v = u``."""
    ode = committee_ode(teacher, lr, noise)
    K = ode.T.shape[0]
    return integrate_ode(ode, ode.T + c * np.eye(K), ode.T.copy(), ode.u.copy(), alphas).eps
