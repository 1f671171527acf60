"""Quadratic-regime predictions for training near the optimum (docs/theory.md §5).

Around ``theta*`` the loss is ``L = 1/2 delta^T H delta``. In the eigenbasis
``H = U diag(lambda) U^T`` each mode ``c_k = u_k^T delta`` decays on its own:

* gradient descent, step ``eta``:  ``c_k(t) = (1 - eta lambda_k)**t c_k(0)``;
* gradient flow ``d theta/dt = -eta grad L``:  ``c_k(t) = exp(-eta lambda_k t) c_k(0)``

(with this time unit the flow at time ``t`` is the ``eta -> 0`` limit of ``t`` steps).
Hence ``L_t = 1/2 sum_k lambda_k decay_k(t)**2 c_k(0)**2`` for each draw, and, for
``delta_0 ~ N(0, Sigma)``, ``<L_t> = 1/2 sum_k lambda_k decay_k(t)**2 u_k^T Sigma u_k``
(``= sigma0**2/2 sum_k lambda_k decay_k(t)**2`` for ``Sigma = sigma0**2 I``).

The predictions take the Hessian at a minimum: real, finite eigenvalues that are
``>= 0`` up to the rounding of a symmetric eigensolver (:func:`check_eigenvalues`);
anything else is refused with one line rather than turned into a curve.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import integrate, special

from ..errors import NearoptError, real_array, require_positive_finite
from ..theory.distributions import MarchenkoPastur
from ..tolerances import EPS

__all__ = [
    "check_eigenvalues", "check_step_size", "EIGENVALUE_SAFETY", "fit_log_slope", "late_time_rate", "linear_edge_asymptote", "linear_edge_loss",
    "mode_decay", "predict_draw_loss", "predict_mean_loss"
]

#: an eigenvalue below ``-EIGENVALUE_SAFETY P eps max|lambda|`` is negative beyond a symmetric
#: eigensolver's rounding (``~ P eps max|lambda|``, with the rank policy's safety factor)
EIGENVALUE_SAFETY = 100.0


def check_eigenvalues(eigenvalues, what: str = "eigenvalues") -> np.ndarray:
    """``eigenvalues`` ``(P,)`` as float64: real, finite and ``>= 0`` up to rounding; :class:`NearoptError` otherwise."""
    lam = real_array(eigenvalues, what)
    if lam.ndim != 1:
        raise NearoptError(f"{what} must be a 1-D array (P,), got shape {lam.shape}")
    if lam.size:
        floor = -EIGENVALUE_SAFETY * lam.size * EPS * float(np.abs(lam).max())
        if lam.min() < floor:
            raise NearoptError(f"{what} must be >= 0 (the Hessian at a minimum), got {lam.min():.6g} < {floor:.3g} "
                               f"(the rounding allowance {EIGENVALUE_SAFETY:g} P eps max|lambda|): a negative mode grows, it does not decay")
    return lam


def _check_times(times, lr: float) -> tuple[np.ndarray, float]:
    t = real_array(times, "times")
    if t.ndim != 1 or np.any(t < 0):
        raise NearoptError(f"times must be a 1-D array of values >= 0, got shape {t.shape} (min {t.min() if t.size else 'none'})")
    return t, require_positive_finite(lr, "learning rate")


def check_step_size(lr: float, lambda_max: float) -> None:
    """Raise unless ``0 < lr < 2 / lambda_max`` (gradient descent on the quadratic is stable)."""
    lr = require_positive_finite(lr, "learning rate")
    if lambda_max > 0 and lr * lambda_max >= 2.0:
        raise NearoptError(
            f"step size {lr:.6g} is unstable: gradient descent needs lr < 2/lambda_max = {2.0 / lambda_max:.6g} "
            f"(lambda_max = {lambda_max:.6g}); use a smaller --lr or --lr auto (= 1/lambda_max)"
        )


def mode_decay(eigenvalues: np.ndarray, lr: float, times: np.ndarray, flow: bool = False) -> np.ndarray:
    """``c_k(t) / c_k(0)``, shape ``(T, P)``, for times ``(T,)`` and eigenvalues ``(P,)``.

    GD: ``(1 - lr lambda)**t`` (``times`` are step counts); flow: ``exp(-lr lambda t)``.
    """
    lam = np.asarray(eigenvalues, dtype=np.float64)[None, :]
    t = np.asarray(times, dtype=np.float64)[:, None]
    if flow:
        return np.exp(-lr * lam * t)
    base = 1.0 - lr * lam
    with np.errstate(divide="ignore", invalid="ignore"):  # base == 0 (lr = 1/lambda) decays to exactly 0
        return np.where(t == 0, 1.0, np.sign(base) ** t * np.exp(t * np.log(np.abs(base))))


def predict_mean_loss(eigenvalues: np.ndarray, mode_variance, lr: float, times: np.ndarray, flow: bool = False) -> np.ndarray:
    """``<L_t>`` of shape ``(T,)`` over ``delta_0 ~ N(0, Sigma)``.

    ``mode_variance`` is ``u_k^T Sigma u_k`` per mode ``(P,)`` or a scalar ``sigma0**2``
    (isotropic). Zero modes contribute nothing. Eigenvalues: :func:`check_eigenvalues`;
    variances real, finite, ``>= 0``; ``lr`` finite ``> 0``; ``times`` ``>= 0``.
    """
    lam = check_eigenvalues(eigenvalues)
    t, lr = _check_times(times, lr)
    var = real_array(mode_variance, "mode variances")
    if np.any(var < 0):
        raise NearoptError(f"mode variances must be >= 0, got {var.min():.6g}")
    try:
        var = np.broadcast_to(var, lam.shape)
    except ValueError:
        raise NearoptError(f"mode variances must be a scalar or one per eigenvalue ({lam.size}), got shape {var.shape}") from None
    return 0.5 * (mode_decay(lam, lr, t, flow) ** 2 * (lam * var)[None, :]).sum(1)


def predict_draw_loss(eigenvalues: np.ndarray, coefficients: np.ndarray, lr: float, times: np.ndarray, flow: bool = False) -> np.ndarray:
    """Quadratic-regime loss of each draw, shape ``(K, T)``, from ``c_k(0) = U^T delta_0`` ``(K, P)``.

    Inputs checked as in :func:`predict_mean_loss`.
    """
    lam = check_eigenvalues(eigenvalues)
    t, lr = _check_times(times, lr)
    c = real_array(coefficients, "mode coefficients")
    if c.ndim != 2 or c.shape[1] != lam.size:
        raise NearoptError(f"mode coefficients must have shape (K, {lam.size}), got {c.shape}")
    return 0.5 * (c**2 * lam[None, :]) @ (mode_decay(lam, lr, t, flow) ** 2).T


def late_time_rate(lambda_min: float, lr: float, flow: bool = False) -> dict[str, float]:
    """Asymptotic decay rate of ``log L`` per unit time from the smallest nonzero eigenvalue.

    ``continuous = 2 lr lambda_min`` (the paper's rate, exact for flow);
    ``exact`` = ``-2 log|1 - lr lambda_min|`` per step for GD (equal to
    ``continuous`` for flow). Both are positive (``log L ~ -rate * t``). Where
    ``lr lambda_min = 1`` (one sample: every nonzero eigenvalue is ``lambda_max``, and the
    default ``lr = 1 / lambda_max``) GD removes the mode in one step: ``exact = inf``.
    """
    cont = 2.0 * lr * lambda_min
    factor = abs(1.0 - lr * lambda_min)
    exact = cont if flow else (math.inf if factor == 0.0 else -2.0 * math.log(factor))
    return {"continuous": cont, "exact": exact}


def fit_log_slope(times: np.ndarray, loss: np.ndarray) -> float:
    """Least-squares slope of ``log L`` against ``t`` over the given points (``nan`` if < 2)."""
    t = np.asarray(times, dtype=np.float64)
    y = np.log(np.asarray(loss, dtype=np.float64))
    ok = np.isfinite(y)
    if ok.sum() < 2 or np.ptp(t[ok]) == 0:
        return float("nan")
    return float(np.polyfit(t[ok], y[ok], 1)[0])


# --- spectral edges of linear networks -------------------------------------------------


def linear_edge_loss(times: np.ndarray, *, n_inputs: int, n_hidden: int, s: float, sigma1: float, sigma0: float, lr: float, flow: bool = True) -> np.ndarray:
    """Large-size ``<L_t>`` of a linear network from the ``s + MP`` law of docs/theory.md §3.2, shape ``(T,)``.

    The ``N_i`` nonzero eigenvalues are ``lambda = s + sigma1**2 N_h m`` with
    ``m ~ MP_q``, ``q = N_i / N_h`` (plus ``N_i (1 - 1/q)`` eigenvalues equal to ``s``
    when ``q > 1``); ``<L_t> = sigma0**2/2 * N_i * E[lambda decay(lambda, t)**2]``.
    """
    q = n_inputs / n_hidden
    scale = sigma1**2 * n_hidden
    mp = MarchenkoPastur(q)  # pdf: the continuous part only (mass min(1, 1/q))
    lo, hi = mp.bulk_edges
    out = np.empty(len(times))
    for i, t in enumerate(np.asarray(times, dtype=np.float64)):

        def integrand(m, t=t):  # bind this time: quad calls it within the iteration
            lam = s + scale * m
            return lam * mode_decay(np.array([lam]), lr, np.array([t]), flow)[0, 0] ** 2 * float(mp.pdf(m))

        val, _ = integrate.quad(integrand, lo, hi, limit=200, epsabs=0.0, epsrel=1e-10)
        if q > 1:
            val += (1 - 1 / q) * s * mode_decay(np.array([s]), lr, np.array([t]), flow)[0, 0] ** 2
        out[i] = 0.5 * sigma0**2 * n_inputs * val
    return out


def linear_edge_asymptote(times: np.ndarray, *, n_inputs: int, n_hidden: int, s: float, sigma1: float, sigma0: float, lr: float) -> np.ndarray:
    """Soft-edge asymptote of :func:`linear_edge_loss` (flow, ``q < 1``), shape ``(T,)``.

    Near ``lambda_- = s + sigma1**2 N_h m_-`` the density is ``c (lambda - lambda_-)**(1/2)``, so
    ``<L_t> ~ sigma0**2/2 N_i c lambda_- Gamma(3/2) (2 lr t)**(-3/2) exp(-2 lr lambda_- t)``:
    the ``t**-(alpha+1)``, ``alpha = 1/2`` law of docs/theory.md §5.4.
    """
    q = n_inputs / n_hidden
    if q >= 1:
        raise NearoptError(f"the soft-edge law needs N_i < N_h (q < 1), got q = {q:g}")
    scale = sigma1**2 * n_hidden
    lo, hi = MarchenkoPastur(q).bulk_edges
    # rho_m(m) ~ sqrt(hi - lo) sqrt(m - lo) / (2 pi q lo); lambda = s + scale m
    c = math.sqrt(hi - lo) / (2 * math.pi * q * lo) / scale**1.5
    lam_lo = s + scale * lo
    t = np.asarray(times, dtype=np.float64)
    return 0.5 * sigma0**2 * n_inputs * c * lam_lo * special.gamma(1.5) * (2 * lr * t) ** -1.5 * np.exp(-2 * lr * lam_lo * t)
