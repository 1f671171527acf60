"""The batched and compiled engines of the ReLU and erf pair kernels: the formulas of :mod:`nearopt.model.pair_terms`, bound to torch and ``math``.

For inputs ``x ~ N(0, I)`` and two units ``a``, ``b`` the pair kernel ``kappa(a, b) = E[g(a.x) g(b.x)]``
and its gradient in ``a``, ``grad_1 kappa(a, b) = A a + B b`` (:mod:`nearopt.model.pair_terms`), give the
population loss of a student ``(W, v)`` against a teacher ``(T, u)``: with ``Omega = [W; T]`` (rows
``omega_j``) and ``beta = [v; -u]``::

    L        = 1/2 sum_ij beta_i beta_j kappa(omega_i, omega_j)
    dL/dv_a  = sum_j beta_j kappa(w_a, omega_j)
    dL/dw_a  = v_a (w_a sum_j beta_j A_aj + sum_j beta_j B_aj omega_j)

so each engine takes the terms of every pair from the one text of the activation's closed form
(:func:`~nearopt.model.pair_terms.relu_angles`, :func:`~nearopt.model.pair_terms.relu_pair` and
:func:`~nearopt.model.pair_terms.relu_kernel`,
:func:`~nearopt.model.pair_terms.erf_gap` and :func:`~nearopt.model.pair_terms.erf_pair`, the code objects
that :meth:`nearopt.model.activations.ReLU.closed_form_moments` and
:meth:`~nearopt.model.activations.Erf.closed_form_moments` evaluate with NumPy) and folds them over ``j`` by
matrix products (:func:`fold`):

* ReLU: ``(A, B)`` of the unit rows (``na = nb = 1``, correlation gap :func:`~nearopt.model.pair_terms.unit_gap`
  of their cosine), scaled by homogeneity: ``sum_j beta_j A_aj = sum_j (beta_j |omega_j|) A^_aj / |w_a|``;
  ``dL/dv_a = relu_kernel(sum_j beta_j A_aj, w_a . sum_j beta_j B_aj omega_j, |w_a|^2)``
  (:func:`~nearopt.model.pair_terms.relu_kernel` is linear). A unit with itself has cosine 1 exactly
  (``Theta = pi``, ``S = 0``).
* ``erf(z / s)`` (``k = 2 / s^2``): ``rho = k a.b / sqrt(d_a d_b)`` and ``omega`` from the norms and the
  correlation gap of the unit rows. A unit with itself has gap 0 and ``rho = 1 - 1/d`` exactly.

The formulas are bound (:func:`bind`) to :data:`TORCH` for the batched tensors of this module (CPU or
GPU, differentiable in forward mode: the Newton polish's Hessian products are the derivative of
:func:`relu_terms` / :func:`erf_terms`, or for the ReLU committee that derivative worked out once,
``nearopt.landscape.polish._ReluHessian``, tested equal to it) and to :data:`SCALAR` (``math`` on floats)
for the per-run descent compiled by numba (``nearopt.landscape._relu_jit``). Both bind ``polar_angle`` to an
``acos`` (:func:`unit_circle_angles`, :func:`unit_circle_angle`): the engines' points lie on the unit circle
(the library, whose sine comes from the covariance entries, binds ``atan2``). Every engine runs the same
code objects as the library; ``tests/test_kernels.py`` holds them equal for each activation.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.autograd.forward_ad as forward_ad

from ..errors import NearoptError
from ..model import pair_terms
from ..model.pair_terms import PI, TWO_PI, bind

__all__ = [
    "CLOSED_FORMS",
    "SCALAR",
    "TORCH",
    "TWO_PI",
    "bind",
    "erf_gap",
    "erf_pair",
    "erf_terms",
    "fold",
    "gradient",
    "loss_gradient",
    "relu_angles",
    "relu_kernel",
    "relu_pair",
    "relu_terms",
    "safe_norm",
    "teacher_power",
    "unit_circle_angle",
    "unit_circle_angles",
    "unit_gap",
]

#: activations with a closed form here
CLOSED_FORMS = ("relu", "erf", "erf:unit")



def unit_circle_angle(y: float, x: float) -> float:
    """``atan2(y, x)`` of a point ``(x, y)``, ``y >= 0``, on the unit circle, on floats: ``acos(x)``, exactly ``0`` or ``pi`` at ``y = 0``.

    The engines' ``polar_angle``: their points are ``(-c, sqrt(unit_gap(c)))`` (:func:`relu_angles` of a unit-row
    cosine ``c``), on the unit circle to rounding, where ``acos`` carries the same information as ``atan2`` (the
    rounding of ``c``) at about half the cost (a third in torch). At ``y = 0`` (a pair snapped parallel) ``x``
    is a few ulps off ``+-1``: the angle is that of its sign.
    """
    return math.acos(x) if y > 0.0 else (PI if x < 0.0 else 0.0)  # selects: cheaper here than a copysign into acos


def unit_circle_angles(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """:func:`unit_circle_angle` entrywise on tensors (``x`` in ``[-1, 1]``)."""
    return torch.arccos(torch.where(y > 0.0, x, torch.sign(x)))


#: the free names of the formulas (:data:`nearopt.model.pair_terms.FREE_NAMES`) per engine
TORCH: dict[str, Any] = {"arctan2": torch.atan2, "polar_angle": unit_circle_angles, "sqrt": torch.sqrt}
SCALAR: dict[str, Any] = {"arctan2": math.atan2, "polar_angle": unit_circle_angle, "sqrt": math.sqrt}

#: the formulas of :mod:`nearopt.model.pair_terms` bound to torch (the same code objects)
relu_angles, relu_pair, relu_kernel, erf_gap, erf_pair, unit_gap = (bind(f, TORCH) for f in (
    pair_terms.relu_angles, pair_terms.relu_pair, pair_terms.relu_kernel, pair_terms.erf_gap, pair_terms.erf_pair, pair_terms.unit_gap))

#: ``relu_angles`` at ``c = -1`` and ``c = 1`` (an antiparallel pair; a parallel pair or a unit with itself)
(_THETA_ANTI, _S_ANTI), (_THETA_PAR, _S_PAR) = (bind(pair_terms.relu_angles, SCALAR)(c, 0.0) for c in (-1.0, 1.0))


def unit_gradient(w: Any, a_sum: Any, p: Any, v: Any) -> Any:
    """``dL/dw_a = v_a (w_a sum_j beta_j A_aj + sum_j beta_j B_aj omega_j)``, entrywise: ``a_sum``, ``p`` the two sums (any engine)."""
    return (w * a_sum + p) * v


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


def _has_tangent(*xs: torch.Tensor) -> bool:
    return any(forward_ad.unpack_dual(x).tangent is not None for x in xs)


def _relu_pair_terms(Wh: torch.Tensor, Oh: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A, B)`` ``(R, K, J)`` of unit rows ``Wh`` ``(R, K, d)`` against unit rows ``Oh`` ``(R, J, d)`` (``Oh[:, :K] = Wh``).

    Self pairs take ``c = 1``. Under forward-mode differentiation pairs parallel to rounding
    (correlation gap at most :data:`~nearopt.model.pair_terms.GAP_SNAP`) take the angle terms at
    ``c = +-1`` through ``where``, so their tangents stay finite (the angle has an infinite derivative
    there): such pairs are held at angle 0 or ``pi``. Without tangents the values are the same and the
    ``where`` passes are skipped.
    """
    R, K, _ = Wh.shape
    if not _has_tangent(Wh, Oh):
        cos = torch.bmm(Wh, Oh.transpose(1, 2)).clamp_(-1.0, 1.0)
        cos[:, :, :K].diagonal(dim1=1, dim2=2).fill_(1.0)
        return relu_pair(*relu_angles(cos, unit_gap(cos)), 1.0, 1.0)
    cos = torch.bmm(Wh, Oh.transpose(1, 2)).clamp(-1.0, 1.0)
    cos = torch.where(_self_pairs(R, K, Oh.shape[1], Wh.device), 1.0, cos)
    flat = unit_gap(cos) <= pair_terms.GAP_SNAP
    inner = torch.where(flat, 0.0, cos)
    theta, S = relu_angles(inner, unit_gap(inner))
    pos = cos > 0

    def at_ends(par: float, anti: float) -> torch.Tensor:  # float64 scalars (a where of two Python floats is float32)
        return torch.where(pos, cos.new_tensor(par), cos.new_tensor(anti))

    theta, S = torch.where(flat, at_ends(_THETA_PAR, _THETA_ANTI), theta), torch.where(flat, at_ends(_S_PAR, _S_ANTI), S)
    return relu_pair(theta, S, 1.0, 1.0)


def fold(kappa: torch.Tensor, A: torch.Tensor, B: torch.Tensor, weight: torch.Tensor,
         rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The pair terms ``(R, K, J)`` summed over ``j``: ``sum_j weight_j kappa_aj``, ``sum_j weight_j A_aj`` ``(R, K)``, ``sum_j B_aj rows_j`` ``(R, K, d)``.

    ``weight`` ``(R, J, 1)``, ``rows`` ``(R, J, d)`` (``beta_j omega_j``, or their unit-row forms).
    """
    return torch.bmm(kappa, weight)[..., 0], torch.bmm(A, weight)[..., 0], torch.bmm(B, rows)


def relu_terms(W: torch.Tensor, v: torch.Tensor, T: torch.Tensor, u: torch.Tensor, *,
               want_loss: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """ReLU ``dL/dW`` ``(R, K, d)``, ``dL/dv`` ``(R, K)`` and, if ``want_loss``, ``2 (L - 1/2 E[f_t^2])`` ``(R,)``.

    ``W`` ``(R, K, d)``, ``v`` ``(R, K)``; teachers ``T`` ``(R, M, d)``, ``u`` ``(R, M)`` (or expanded views);
    zero rows of either (padding) contribute nothing. Out of place, forward-mode differentiable.
    The pair terms of the unit rows, scaled by homogeneity; ``dL/dv`` by :func:`relu_kernel` of the sums (module docstring).
    """
    K = W.shape[1]
    nW, inv = safe_norm(W)
    nT, invT = safe_norm(T)
    Wh = W * inv[..., None]
    A, B = _relu_pair_terms(Wh, torch.cat([Wh, T * invT[..., None]], 1))
    bn = torch.cat([v * nW, -u * nT], 1)[..., None]  # (R, J, 1): beta_j |omega_j|
    bw = torch.cat([v[..., None] * W, -u[..., None] * T], 1)  # (R, J, d): beta_j omega_j
    a_sum, P = torch.bmm(A, bn)[..., 0] * inv, torch.bmm(B, bw)  # sum_j beta_j A_aj, sum_j beta_j B_aj omega_j
    gW = unit_gradient(W, a_sum[..., None], P, v[..., None])
    n2 = nW * nW
    kb = relu_kernel(a_sum, (W * P).sum(-1), n2)  # (R, K): dL/dv = sum_j beta_j kappa_aj
    if not want_loss:
        return gW, kb, None
    # the teacher pairs' part of kb: sum_{j >= K} beta_j kappa_aj
    kt = relu_kernel(torch.bmm(A[:, :, K:], bn[:, K:])[..., 0] * inv, (W * torch.bmm(B[:, :, K:], bw[:, K:])).sum(-1), n2)
    return gW, kb, ((kb + kt) * v).sum(-1)


def _erf_c(activation: str) -> float:
    return 2.0 / (1.0 if activation == "erf:unit" else 2.0)  # g = erf(z / s): c = 2 / s^2


def _erf_kernel(c: float, W: torch.Tensor, Om: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``kappa``, ``A``, ``B`` ``(R, K, J)`` of rows ``W`` ``(R, K, d)`` against ``Om`` ``(R, J, d)`` (``Om[:, :K] = W``).

    ``omega`` from the rows' ``k |.|^2`` and the correlation gap of their cosine; self pairs take
    cosine 1 and ``rho = 1 - 1/d_a`` (exact, and smooth under forward-mode differentiation).
    """
    R, K, _ = W.shape
    _, inv = safe_norm(Om)  # (R, J)
    kc = c * (Om * Om).sum(-1)  # (R, J): k |omega_j|^2
    dn = 1.0 + kc
    rd = torch.sqrt(dn)
    da, root = dn[:, :K, None], rd[:, :K, None] * rd[:, None, :]  # sqrt(d_a) sqrt(d_b): no overflow
    dots = torch.bmm(W, Om.transpose(1, 2))
    self_pairs = _self_pairs(R, K, Om.shape[1], W.device)
    cos = torch.where(self_pairs, 1.0, (dots * inv[:, :K, None] * inv[:, None, :]).clamp(-1.0, 1.0))
    rho = torch.where(self_pairs, 1.0 - 1.0 / da, c * dots / root)  # c |w|^2 / (1 + c |w|^2), smooth
    return erf_pair(rho, erf_gap(kc[:, :K, None], kc[:, None, :], unit_gap(cos)), da, root, c)


def erf_terms(activation: str, W: torch.Tensor, v: torch.Tensor, T: torch.Tensor, u: torch.Tensor, *,
              want_loss: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The same three arrays as :func:`relu_terms` for ``erf`` / ``erf:unit`` (arcsine kernel)."""
    K = W.shape[1]
    Om = torch.cat([W, T], 1)  # (R, J, d)
    beta = torch.cat([v, -u], 1)[..., None]  # (R, J, 1)
    kappa, A, B = _erf_kernel(_erf_c(activation), W, Om)
    kb, a_sum, P = fold(kappa, A, B, beta, beta * Om)  # kb (R, K): dL/dv
    gW = unit_gradient(W, a_sum[..., None], P, v[..., None])
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
