"""Dense assembly of the population Hessian at the teacher from the pairwise Gaussian moments of its units.

Inputs are ``x ~ N(0, Sigma)`` (``Sigma = I`` by default). Every block comes from the
pairwise moments of :mod:`nearopt.gaussian.expectations` (``docs/theory.md`` §2.2) for the Gram
matrix ``W1 Sigma W1^T``, with ``s_a = Sigma w_a`` (``docs/inputs.md``)::

    H[v_a, v_c] = gg[a,c]
    H[w_a, v_c] = v_a (b[a,c,0] s_a + b[a,c,1] s_c)
    H[w_a, w_c] = v_a v_c (dd[a,c] Sigma + [s_a s_c] K[a,c] [s_a s_c]^T)

Parameter order as :meth:`nearopt.model.network.TwoLayerNet.parameters` (``W1`` row-major,
then ``W2``).
"""

from __future__ import annotations

import numpy as np

from ..errors import NearoptError
from ..gaussian.expectations import PairMoments, pair_moments
from ..model.activations import Activation
from ..model.network import TwoLayerNet
from ..model.problem import GaussianInputs
from ..tolerances import EPS

__all__ = ["assemble", "gaussian_pair_blocks", "is_linear", "net_moments", "rescaling_modes"]


def net_moments(net: TwoLayerNet, inputs: GaussianInputs | None = None, *, order: int | None = None) -> PairMoments:
    """Pairwise Gaussian moments of ``net``'s hidden units (arrays ``(N_h, N_h, ...)``).

    Pre-activations ``W1 x`` with ``x ~ N(0, Sigma)`` have Gram matrix ``W1 Sigma W1^T``
    (``Sigma = I`` when ``inputs`` is ``None`` or isotropic). ``order``: the quadrature order of an
    activation without closed-form moments (required for one with a kink, ``smooth=False``).
    """
    if inputs is None or inputs.isotropic:
        return pair_moments(net.activation, net.W1 @ net.W1.T, order=order)
    gram = inputs.matmul(net.W1) @ net.W1.T
    return pair_moments(net.activation, 0.5 * (gram + gram.T), order=order)


def assemble(moments: PairMoments, W: np.ndarray, v: np.ndarray, covariance: np.ndarray | None = None) -> np.ndarray:
    """Population Hessian ``(N_h (d+1), N_h (d+1))`` for first-layer weights ``W`` ``(N_h, d)``.

    ``covariance`` ``Sigma`` ``(d, d)`` of the inputs (default ``I``). ``moments``
    must belong to the Gram matrix ``W Sigma W^T`` (any rotation of the rows'
    space gives the same moments: this is how the structured route reuses them).
    """
    moments = moments.fold_diagonal()  # a unit's pair with itself through the stable sums b0 + b1, sum K (no cancellation)
    n_h, d = W.shape
    vv = np.outer(v, v)
    # the Stein directions are s_a = Sigma w_a (rows of A), the identity becomes Sigma
    A = W if covariance is None else W @ covariance
    eye = np.eye(d) if covariance is None else covariance

    def k(x):  # (a, c) -> broadcast over (a, i, c, j)
        return (vv * x)[:, None, :, None]

    if moments.gaussian_k is not None and covariance is None:
        Hww = k(moments.dd) * gaussian_pair_blocks(W, moments.gaussian_k)
    else:
        Wa_i, Wa_j = A[:, :, None, None], A[:, None, None, :]
        Wc_i, Wc_j = A.T[None, :, :, None], A[None, None, :, :]
        K = moments.K
        Hww = k(K[..., 0, 0]) * Wa_i * Wa_j
        Hww += k(K[..., 0, 1]) * Wa_i * Wc_j
        Hww += k(K[..., 1, 0]) * Wc_i * Wa_j
        Hww += k(K[..., 1, 1]) * Wc_i * Wc_j
        Hww += k(moments.dd) * eye[None, :, None, :]
    # H[w_a i, v_c] = v_a (b0[a,c] s_a[i] + b1[a,c] s_c[i])
    Hwv = v[:, None, None] * (moments.b[:, None, :, 0] * A[:, :, None] + moments.b[:, None, :, 1] * A.T[None, :, :])
    m = n_h * d
    H = np.empty((m + n_h, m + n_h))
    H[:m, :m] = Hww.reshape(m, m)
    H[:m, m:] = Hwv.reshape(m, n_h)
    H[m:, :m] = H[:m, m:].T
    H[m:, m:] = moments.gg
    top = float(np.abs(H).max()) if H.size else 0.0
    if 0.0 < top < np.finfo(np.float64).tiny / EPS:
        raise NearoptError(f"the population Hessian's entries underflow float64 (largest {top:.3g}): its spectrum cannot be resolved; use larger weights or input variances")
    return H


def gaussian_pair_blocks(W: np.ndarray, k: float) -> np.ndarray:
    """``(I + k A_ac^T A_ac)^{-1}`` for every pair of rows ``A_ac = [w_a; w_c]`` of ``W`` ``(N_h, d)``: shape ``(N_h, d, N_h, d)``.

    With ``A_ac^T = Q R`` (thin QR, ``Q`` ``(d, m)`` orthonormal, ``m = min(d, 2)``) and ``R R^T = V diag(lam) V^T``,
    the inverse is ``I - Q V diag(k lam / (1 + k lam)) V^T Q^T``: every factor is computed without a
    difference of large terms, so the result is accurate to ``eps`` of 1 in every direction (the Stein form
    ``I + A^T K A / dd`` is accurate only to ``eps k c``, ``c = |w|^2``).
    """
    n_h, d = W.shape
    pairs = np.stack(np.broadcast_arrays(W[:, None, :], W[None, :, :]), -1)  # (N_h, N_h, d, 2): columns w_a, w_c
    Q, R = np.linalg.qr(pairs)  # Q (N_h, N_h, d, m), R (N_h, N_h, m, 2)
    lam, V = np.linalg.eigh(R @ np.swapaxes(R, -1, -2))
    lam = np.clip(lam, 0.0, None)
    U = Q @ V
    blocks = (U * (k * lam / (1.0 + k * lam))[..., None, :]) @ np.swapaxes(U, -1, -2)  # Q V diag(..) V^T Q^T (N_h, N_h, d, d)
    blocks *= -1.0
    blocks += np.eye(d)
    return blocks.transpose(0, 2, 1, 3)


def is_linear(act: Activation) -> bool:
    """Whether ``act`` is exactly ``g(z) = z`` (its Hessian has a Jacobian square root)."""
    c = act.polynomial_coefficients
    return c is not None and c.size == 2 and c[0] == 0.0 and c[1] == 1.0


def rescaling_modes(net: TwoLayerNet) -> np.ndarray:
    """ReLU's exact zero modes ``(P, N_h)``: ``(w_a, -v_a)`` on unit ``a`` (positive rescaling ``w -> c w, v -> v / c``)."""
    n_h, n_i = net.n_hidden, net.n_inputs
    Z = np.zeros((net.n_params, n_h))
    for a in range(n_h):
        Z[a * n_i : (a + 1) * n_i, a] = net.W1[a]
        Z[n_h * n_i + a, a] = -net.W2.ravel()[a]
    return Z
