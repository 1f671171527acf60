"""Weights from order parameters, and the curvature along an ODE trajectory.

The order-parameter ODEs (:mod:`nearopt.dynamics.ode`) follow ``Q = W W^T`` ``(K, K)``,
``R = W T^T`` ``(K, M)`` and ``v`` ``(K,)``; the population loss and its Hessian depend on the
student only through them and the teacher, so any ``W`` ``(K, N_i)`` with those overlaps
has the same curvature up to a rotation of input space that fixes the teacher's rows.
:func:`weights_from_order_parameters` builds one::

    W = R (T T^T)^{-1} T + Z,   Z T^T = 0,   Z Z^T = C = Q - R (T T^T)^{-1} R^T,

``Z = V diag(sqrt(c)) B`` from the eigen-decomposition ``C = V diag(c) V^T`` and ``B``
``(K, N_i)`` orthonormal rows orthogonal to the teacher's (the first ``K`` of an orthonormal
basis of the complement). Then ``W T^T = R`` and ``W W^T = Q`` to rounding. ``C`` must be
PSD (a Gram matrix's Schur complement) and the complement must hold ``K`` directions:
``N_i >= K + M``. :func:`track_ode` reconstructs the weights at the recorded ``alpha`` and
tracks their curvature (:func:`~nearopt.curvature.tracking.track_curvature`).
"""

from __future__ import annotations

import numpy as np
import scipy.linalg

from ..curvature.tracking import CurvatureTrack, TrackSpec, track_curvature
from ..errors import NearoptError
from ..model.network import TwoLayerNet
from ..model.problem import PSD_RTOL, Problem
from ..policy import DEFAULT_POLICY, RankPolicy
from .ode import ODE_TRAINED, ODETrajectory, embedded_teacher

__all__ = ["track_ode", "weights_from_order_parameters"]


def _teacher_rank(T: np.ndarray) -> int:
    s = np.linalg.svd(T, compute_uv=False)
    return DEFAULT_POLICY.cut(s, float(s[0]) if s.size else 0.0, T.shape)


def weights_from_order_parameters(Q: np.ndarray, R: np.ndarray, v: np.ndarray, teacher: TwoLayerNet, *, psd_rtol: float = PSD_RTOL) -> TwoLayerNet:
    """A student ``W2 g(W1 x)`` with ``W1 W1^T = Q``, ``W1 T^T = R`` and ``W2 = v`` (module docstring).

    Parameters
    ----------
    Q : ndarray ``(K, K)``
        Student overlaps (symmetric).
    R : ndarray ``(K, M)``
        Student-teacher overlaps.
    v : ndarray ``(K,)``
        Second layer.
    teacher : TwoLayerNet
        ``T = W1*`` ``(M, N_i)`` of full row rank, ``N_i >= K + M``; the student takes its activation.
    psd_rtol : float
        Eigenvalues of ``Q - R (T T^T)^{-1} R^T`` down to ``-psd_rtol max eig Q`` count as rounding
        (taken as 0); lower ones are refused.
    """
    Q, R, v = (np.asarray(x, dtype=np.float64) for x in (Q, R, v))
    T = np.asarray(teacher.W1, dtype=np.float64)
    M, n_in = T.shape
    if Q.ndim != 2 or Q.shape[0] != Q.shape[1] or R.shape != (Q.shape[0], M) or v.shape != (Q.shape[0],):
        raise NearoptError(f"order parameters must be Q (K, K), R (K, {M}), v (K,); got Q {Q.shape}, R {R.shape}, v {v.shape}")
    K = Q.shape[0]
    if not all(np.all(np.isfinite(x)) for x in (Q, R, v)):
        raise NearoptError("order parameters contain NaN or infinite values")
    if n_in < K + M:
        raise NearoptError(f"weights with K = {K} units need N_i >= K + M = {K + M} inputs, the teacher has N_i = {n_in}: embed it in more inputs")
    if _teacher_rank(T) < M:
        raise NearoptError("the teacher's first-layer rows are linearly dependent: T T^T is singular")
    A = np.linalg.solve(T @ T.T, R.T).T  # R (T T^T)^{-1}  (K, M)
    C = Q - A @ R.T
    C = 0.5 * (C + C.T)
    c, V = np.linalg.eigh(C)
    floor = RankPolicy.psd_floor(np.linalg.eigvalsh(0.5 * (Q + Q.T)), psd_rtol)
    if c[0] < floor:
        raise NearoptError(f"the order parameters are not those of real weights: Q - R (T T^T)^-1 R^T has eigenvalue {c[0]:.3g} < 0 "
                           f"(rounding allows {floor:.3g})")
    B = scipy.linalg.null_space(T)[:, :K].T  # (K, N_i) orthonormal rows, orthogonal to the teacher's
    W = A @ T + (V * np.sqrt(np.clip(c, 0.0, None))) @ B
    return TwoLayerNet(W, v.reshape(1, K), teacher.activation)


def track_ode(trajectory: ODETrajectory, teacher: TwoLayerNet, *, track: TrackSpec | int = 3, trained: str = "both",
              n_inputs: int | None = None) -> CurvatureTrack:
    """The curvature along an ODE trajectory: weights from ``(Q, R, v)`` at the tracked ``alpha``.

    ``teacher`` is the ODE's (``T = W1* W1*^T`` its overlaps); it is embedded in ``n_inputs``
    inputs (default ``max(N_i, K + M)``: zero columns added, :func:`~nearopt.dynamics.ode.embedded_teacher`),
    which adds the directions orthogonal to every weight to the spectrum, with the multiplicity
    ``n_inputs - K - M``. ``trained``: the ODE's trained blocks (``both`` or ``first``). The
    clock is ``alpha``; ``track.every`` selects among the recorded ``alpha``.
    """
    spec = TrackSpec.coerce(track)
    assert spec is not None
    if trained not in ODE_TRAINED:
        raise NearoptError(f"the order-parameter ODEs train {' or '.join(ODE_TRAINED)}, got trained={trained!r}")
    K, M = trajectory.R.shape[1:]
    n_in = max(teacher.n_inputs, K + M) if n_inputs is None else int(n_inputs)
    big = embedded_teacher(teacher, n_in)
    idx = spec.select(trajectory.alpha.size)
    points = [weights_from_order_parameters(trajectory.Q[i], trajectory.R[i], trajectory.v[i], big) for i in idx]
    return track_curvature(Problem(big, student=points[0], trained=trained), points, steps=trajectory.alpha[idx], spec=spec, clock="alpha")
