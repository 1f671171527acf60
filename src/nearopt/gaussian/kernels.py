"""Closed-form Gaussian pair terms of the ReLU and erf students, written once for every engine.

For inputs ``x ~ N(0, I)`` and two units ``a``, ``b`` the pair kernel ``kappa(a, b) = E[g(a.x) g(b.x)]``
and its gradient in ``a``, ``grad_1 kappa(a, b) = A a + B b``, give the population loss of a student
``(W, v)`` against a teacher ``(T, u)``: with ``Omega = [W; T]`` (rows ``omega_j``) and ``beta = [v; -u]``::

    L        = 1/2 sum_ij beta_i beta_j kappa(omega_i, omega_j)
    dL/dv_a  = sum_j beta_j kappa(w_a, omega_j)
    dL/dw_a  = v_a sum_j beta_j (A_aj w_a + B_aj omega_j)

* ReLU (arc-cosine kernel), ``c`` the cosine of the pair, ``t = arccos c`` its angle,
  ``Theta = pi - t``, ``S = sin t`` (:func:`relu_angles`)::

      kappa = |a| |b| (S + Theta c) / (2 pi),   A = |b| S / (2 pi |a|),   B = Theta / (2 pi)

  Folded over ``j`` with ``s1_a = sum_j S_aj beta_j |omega_j|`` and ``P_a = sum_j Theta_aj beta_j omega_j``
  (two matrix products, no outer products)::

      sum_j beta_j kappa(w_a, omega_j) = (|w_a| s1_a + w_a . P_a) / (2 pi)       (relu_sum)
      dL/dw_a = (w_a s1_a / |w_a| + P_a) v_a / (2 pi)                           (relu_unit_gradient)

  A unit with itself has ``c = 1`` exactly (``Theta = pi``, ``S = 0``).
* ``erf(z / s)`` (arcsine kernel, ``c = 2 / s^2``, :func:`erf_pair`): ``rho = c a.b / sqrt(d_a d_b)``,
  ``d = 1 + c |.|^2``, ``q = (pi/2) sqrt(1 - rho^2)``::

      kappa = (2/pi) arcsin(rho),   A = -c rho / (d_a q),   B = c / (sqrt(d_a d_b) q)

  A unit with itself has ``rho = c |w|^2 / d = 1 - 1/d`` exactly.

The formulas (:func:`relu_angles`, :func:`relu_sum`, :func:`relu_unit_gradient`, :func:`erf_pair`) are
plain Python over a few names (``arccos``, ``arcsin``, ``sqrt``, ``floor_at``) that each engine binds
(:func:`bind`): :data:`TORCH` for the batched tensors of this module (CPU or GPU, differentiable in
forward mode: the Newton polish's Hessian products are the derivative of :func:`relu_terms` /
:func:`erf_terms`, or for the ReLU committee that derivative worked out once,
``nearopt.landscape.polish._ReluHessian``, tested equal to it), :data:`SCALAR` (``math`` on floats) for the per-run descent compiled by numba
(``nearopt.landscape._relu_jit``). Every engine runs the same code object; ``tests/test_kernels.py``
holds them equal for each activation.
"""

from __future__ import annotations

import math
import types
from collections.abc import Callable
from typing import Any

import torch
import torch.autograd.forward_ad as forward_ad

from ..errors import NearoptError

__all__ = [
    "CLOSED_FORMS",
    "SCALAR",
    "TORCH",
    "TWO_PI",
    "bind",
    "erf_pair",
    "erf_terms",
    "gradient",
    "loss_gradient",
    "relu_angles",
    "relu_sum",
    "relu_terms",
    "relu_unit_gradient",
    "safe_norm",
    "teacher_power",
]

#: activations with a closed form here
CLOSED_FORMS = ("relu", "erf", "erf:unit")
PI = math.pi
TWO_PI = 2.0 * math.pi
#: ``1 - rho^2`` of the erf kernel is floored here (a unit with itself at ``|w| -> inf``)
ERF_GAP_FLOOR = 1e-300


# ----------------------------------------------------------------------------- the formulas (one text each)
#: the free names of the formulas; here the torch functions, rebound per engine by :func:`bind`
arccos, arcsin, sqrt, floor_at = torch.arccos, torch.arcsin, torch.sqrt, torch.clamp_min


def relu_angles(c: Any) -> tuple[Any, Any]:
    """``(Theta, S) = (pi - arccos c, sqrt(1 - c^2))`` of a cosine ``c`` in ``[-1, 1]`` (``2 pi B`` and ``sin t``).

    ``1 - c^2 >= 0`` exactly for ``|c| <= 1`` (the rounded square of such a ``c`` is at most 1): no clamp.
    """
    return PI - arccos(c), sqrt(1.0 - c * c)


def relu_sum(nw: Any, s1: Any, wp: Any) -> Any:
    """``sum_j beta_j kappa(w, omega_j) = (|w| s1 + w . P) / (2 pi)`` (``dL/dv`` of a unit): ``nw = |w|``, ``wp = w . P``."""
    return (s1 * nw + wp) / TWO_PI


def relu_unit_gradient(w: Any, s1_over_norm: Any, p: Any, v: Any) -> Any:
    """``dL/dw = (w s1 / |w| + P) v / (2 pi)``, entrywise: ``s1_over_norm = s1 / |w|``."""
    return (w * s1_over_norm + p) * (v / TWO_PI)


def erf_pair(rho: Any, da: Any, root: Any, c: float) -> tuple[Any, Any, Any]:
    """``(kappa, A, B)`` of ``erf(z / s)`` for a pair with ``rho``, ``d_a = 1 + c |a|^2``, ``root = sqrt(d_a d_b)``, ``c = 2 / s^2``."""
    q = (PI / 2.0) * sqrt(floor_at(1.0 - rho * rho, ERF_GAP_FLOOR))
    return (2.0 / PI) * arcsin(rho), -c * rho / (da * q), c / (root * q)


#: the names a formula may use besides its arguments, per engine
TORCH: dict[str, Any] = {"arccos": torch.arccos, "arcsin": torch.arcsin, "sqrt": torch.sqrt, "floor_at": torch.clamp_min}
SCALAR: dict[str, Any] = {"arccos": math.acos, "arcsin": math.asin, "sqrt": math.sqrt, "floor_at": max}
_CONSTANTS = {"PI": PI, "TWO_PI": TWO_PI, "ERF_GAP_FLOOR": ERF_GAP_FLOOR}


def bind(f: Callable[..., Any], namespace: dict[str, Any]) -> Callable[..., Any]:
    """The formula ``f`` with its free names taken from ``namespace`` (:data:`TORCH`, :data:`SCALAR`): the same code object."""
    return types.FunctionType(f.__code__, {**_CONSTANTS, **namespace}, f.__name__, f.__defaults__)


#: ``relu_angles`` at ``c = -1`` and ``c = 1`` (an antiparallel pair; a parallel pair or a unit with itself)
(_THETA_ANTI, _S_ANTI), (_THETA_PAR, _S_PAR) = (bind(relu_angles, SCALAR)(c) for c in (-1.0, 1.0))


# ----------------------------------------------------------------------------- the batched torch engine
def safe_norm(W: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row norms ``|w_a|`` and ``1/|w_a|`` (0 for a zero row), differentiable at zero rows (their tangents stay finite)."""
    n2 = (W * W).sum(-1)
    pos = n2 > 0
    nrm = torch.where(pos, torch.where(pos, n2, 1.0).sqrt(), 0.0)
    return nrm, torch.where(pos, 1.0 / torch.where(pos, nrm, 1.0), 0.0)


def _self_pairs(R: int, K: int, J: int, device: torch.device) -> torch.Tensor:
    """``(K, J)`` mask of the pairs ``(a, a)`` (the first ``K`` of ``J`` rows are the students themselves)."""
    eye = torch.zeros((K, J), dtype=torch.bool, device=device)
    eye[:, :K] = torch.eye(K, dtype=torch.bool, device=device)
    return eye


def _relu_pair_terms(Wh: torch.Tensor, Oh: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``Theta``, ``S`` ``(R, K, J)`` of unit rows ``Wh`` ``(R, K, d)`` against unit rows ``Oh`` ``(R, J, d)`` (``Oh[:, :K] = Wh``).

    Self pairs take ``c = 1``. Under forward-mode differentiation pairs parallel to rounding
    (``|c| = 1`` after clipping) take the formula's values at ``+-1`` through ``where``, so their
    tangents stay finite (``arccos`` has an infinite derivative at ``+-1``): such pairs are held
    at angle 0 or ``pi``. Without tangents the values are the same and the ``where`` passes are skipped.
    """
    R, K, _ = Wh.shape
    if forward_ad.unpack_dual(Wh).tangent is None and forward_ad.unpack_dual(Oh).tangent is None:
        cos = torch.bmm(Wh, Oh.transpose(1, 2)).clamp_(-1.0, 1.0)
        cos[:, :, :K].diagonal(dim1=1, dim2=2).fill_(1.0)
        return relu_angles(cos)
    cos = torch.bmm(Wh, Oh.transpose(1, 2)).clamp(-1.0, 1.0)
    cos = torch.where(_self_pairs(R, K, Oh.shape[1], Wh.device), 1.0, cos)
    flat = cos.abs() >= 1.0
    theta, S = relu_angles(torch.where(flat, 0.0, cos))
    pos = cos > 0

    def at_ends(par: float, anti: float) -> torch.Tensor:  # float64 scalars (a where of two Python floats is float32)
        return torch.where(pos, cos.new_tensor(par), cos.new_tensor(anti))

    return torch.where(flat, at_ends(_THETA_PAR, _THETA_ANTI), theta), torch.where(flat, at_ends(_S_PAR, _S_ANTI), S)


def relu_terms(W: torch.Tensor, v: torch.Tensor, T: torch.Tensor, u: torch.Tensor, *,
               want_loss: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """ReLU ``dL/dW`` ``(R, K, d)``, ``dL/dv`` ``(R, K)`` and, if ``want_loss``, ``2 (L - 1/2 E[f_t^2])`` ``(R,)``.

    ``W`` ``(R, K, d)``, ``v`` ``(R, K)``; teachers ``T`` ``(R, M, d)``, ``u`` ``(R, M)`` (or expanded views);
    zero rows of either (padding) contribute nothing. Out of place, forward-mode differentiable.
    """
    K = W.shape[1]
    nW, inv = safe_norm(W)
    nT, invT = safe_norm(T)
    Wh = W * inv[..., None]
    theta, S = _relu_pair_terms(Wh, torch.cat([Wh, T * invT[..., None]], 1))
    bn = torch.cat([v * nW, -u * nT], 1)[..., None]  # (R, J, 1): beta_j |omega_j|
    bw = torch.cat([v[..., None] * W, -u[..., None] * T], 1)  # (R, J, d): beta_j omega_j
    s1, P = torch.bmm(S, bn)[..., 0], torch.bmm(theta, bw)
    gW = relu_unit_gradient(W, (s1 * inv)[..., None], P, v[..., None])
    kb = relu_sum(nW, s1, (W * P).sum(-1))  # (R, K): dL/dv
    if not want_loss:
        return gW, kb, None
    # the teacher pairs' part of kb: sum_{j >= K} beta_j kappa_aj
    kt = relu_sum(nW, torch.bmm(S[:, :, K:], bn[:, K:])[..., 0], (W * torch.bmm(theta[:, :, K:], bw[:, K:])).sum(-1))
    return gW, kb, ((kb + kt) * v).sum(-1)


def _erf_c(activation: str) -> float:
    return 2.0 / (1.0 if activation == "erf:unit" else 2.0)  # g = erf(z / s): c = 2 / s^2


def _erf_kernel(c: float, W: torch.Tensor, Om: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``kappa``, ``A``, ``B`` ``(R, K, J)`` of rows ``W`` ``(R, K, d)`` against ``Om`` ``(R, J, d)`` (``Om[:, :K] = W``)."""
    R, K, _ = W.shape
    dn = 1.0 + c * (Om * Om).sum(-1)  # (R, J)
    da = dn[:, :K, None]
    root = torch.sqrt(da * dn[:, None, :])
    rho = (c * torch.bmm(W, Om.transpose(1, 2)) / root).clamp(-1.0, 1.0)
    rho = torch.where(_self_pairs(R, K, Om.shape[1], W.device), 1.0 - 1.0 / da, rho)  # c |w|^2 / (1 + c |w|^2), smooth
    return erf_pair(rho, da, root, c)


def erf_terms(activation: str, W: torch.Tensor, v: torch.Tensor, T: torch.Tensor, u: torch.Tensor, *,
              want_loss: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The same three arrays as :func:`relu_terms` for ``erf`` / ``erf:unit`` (arcsine kernel)."""
    K = W.shape[1]
    Om = torch.cat([W, T], 1)  # (R, J, d)
    beta = torch.cat([v, -u], 1)[..., None]  # (R, J, 1)
    kappa, A, B = _erf_kernel(_erf_c(activation), W, Om)
    kb = torch.bmm(kappa, beta)[..., 0]  # (R, K): dL/dv
    gW = (torch.bmm(A, beta) * W + torch.bmm(B, beta * Om)) * v[..., None]
    if not want_loss:
        return gW, kb, None
    kt = torch.bmm(kappa[:, :, K:], beta[:, K:])[..., 0]
    return gW, kb, ((kb + kt) * v).sum(-1)


def _terms(activation: str, W: torch.Tensor, v: torch.Tensor, T: torch.Tensor, u: torch.Tensor,
           want_loss: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    if activation == "relu":
        return relu_terms(W, v, T, u, want_loss=want_loss)
    if activation in CLOSED_FORMS:
        return erf_terms(activation, W, v, T, u, want_loss=want_loss)
    raise NearoptError(f"no batched closed form for activation {activation!r} (have {', '.join(CLOSED_FORMS)})")


def _per_run(T: torch.Tensor, u: torch.Tensor, R: int) -> tuple[torch.Tensor, torch.Tensor]:
    return (T, u) if T.ndim == 3 else (T[None].expand(R, -1, -1), u[None].expand(R, -1))


def gradient(activation: str, W: torch.Tensor, v: torch.Tensor, T: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``dL/dW`` ``(R, K, d)`` and ``dL/dv`` ``(R, K)``; teacher ``T`` ``(M, d)``, ``u`` ``(M,)`` or one per run ``(R, M, d)``, ``(R, M)``."""
    gW, gv, _ = _terms(activation, W, v, *_per_run(T, u, W.shape[0]), want_loss=False)
    return gW, gv


def teacher_power(activation: str, T: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """``E[f_t^2] = u^T Phi_tt u`` from the same pair terms: ``()`` for ``T`` ``(M, d)``, ``(R,)`` for ``(R, M, d)``.

    The teacher against a zero teacher: ``2 (L - 0) = E[f_t^2]`` with the teacher as the student.
    """
    if T.ndim == 2:
        return teacher_power(activation, T[None], u[None])[0]
    zero = torch.zeros_like(T[:, :1])
    _, _, twice = _terms(activation, T, u, zero, torch.zeros_like(u[:, :1]), want_loss=True)
    assert twice is not None
    return twice


def loss_gradient(activation: str, W: torch.Tensor, v: torch.Tensor, T: torch.Tensor, u: torch.Tensor,
                  power: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact population ``L`` ``(R,)``, ``dL/dW`` ``(R, K, d)``, ``dL/dv`` ``(R, K)`` of ``R`` students at once.

    Teacher ``T`` ``(M, d)``, ``u`` ``(M,)``, or one per student ``(R, M, d)``, ``(R, M)``; ``power``:
    ``E[f_t^2]`` ``()`` or ``(R,)`` if known (:func:`teacher_power`). ``L = 1/2 (v . (dL/dv - Phi_st u) + E[f_t^2])``.
    """
    Tb, ub = _per_run(T, u, W.shape[0])
    tp = teacher_power(activation, Tb, ub) if power is None else power
    gW, gv, twice = _terms(activation, W, v, Tb, ub, want_loss=True)
    assert twice is not None
    return 0.5 * (twice + tp), gW, gv
