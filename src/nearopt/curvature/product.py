"""The matrix-free product of the population Hessian at the teacher, and its preconditioner.

:class:`PopulationProduct` multiplies ``H = E_x[J J^T]`` (isotropic inputs, all
parameters, the teacher's point) by blocks of vectors in ``O(N_h^2 N_i)`` per
vector, never forming ``H``; :meth:`PopulationProduct.precondition` applies an SPD
approximation of ``(H + shift I)^{-1}`` built from the same blocks (``docs/scale.md``),
which the smallest-end LOBPCG needs at an ill-conditioned bottom.
"""

from __future__ import annotations

from functools import cached_property

import numpy as np
import torch

from ..errors import NearoptError
from ..gaussian.expectations import PairMoments, gauss_hermite
from ..model.network import TwoLayerNet
from .assembly import net_moments

__all__ = ["join_params", "PopulationProduct", "PRECONDITIONER_ORDER", "split_params"]

#: ``(k, N_h, N_h)`` float64 temporaries per chunk of columns: about 4 x 256 MB in all
_CHUNK_ENTRIES = 1 << 25
#: Gauss–Hermite nodes for the preconditioner's unit moments ``E[g'(u)]``, ``E[g'(u) u^2]``: exact for
#: polynomials, ``~1e-15`` for tanh at unit variance, ``~1e-2`` at variance 100 (measured), where a
#: preconditioner needs only a few digits
PRECONDITIONER_ORDER = 160


def split_params(net: TwoLayerNet, V: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """``(P,)``/``(P, k)`` -> ``dW`` ``(k, N_h, N_i)``, ``dv`` ``(k, N_h)``, and whether ``V`` was a vector."""
    vec = V.ndim == 1
    Vk = V[:, None] if vec else V
    if Vk.shape[0] != net.n_params:
        raise NearoptError(f"vector has {Vk.shape[0]} entries, expected P = {net.n_params}")
    m = net.W1.size
    return Vk[:m].T.reshape(-1, net.n_hidden, net.n_inputs), Vk[m:].T, vec


def join_params(dW: torch.Tensor, dv: torch.Tensor, vec: bool) -> torch.Tensor:
    """Inverse of :func:`split_params`."""
    out = torch.cat([dW.reshape(dW.shape[0], -1), dv], dim=1).T
    return out[:, 0] if vec else out


class PopulationProduct:
    """``V (P,) or (P, k) -> H V`` for the population Hessian of ``net`` at the teacher (torch, float64).

    Per block of ``k`` vectors: three matrix products (``G = W dW^T``, ``C W`` and
    ``(vv∘dd) dW``: ``6 N_h^2 N_i k`` flops, no loop over units) and a few
    elementwise passes over ``(k, N_h, N_h)`` arrays. Columns go through in chunks
    so those temporaries stay near 256 MB: memory ``O(N_h N_i + N_h^2)`` besides
    the vectors.

    Parameters
    ----------
    net : TwoLayerNet
        The teacher (= the student); inputs ``x ~ N(0, I)``.
    device : torch.device
    moments : PairMoments, optional
        Pair moments of ``net``'s hidden units (computed when not given).
    """

    def __init__(self, net: TwoLayerNet, *, device: torch.device, moments: PairMoments | None = None):
        self.net, self.device = net, device
        self.moments = (net_moments(net) if moments is None else moments).fold_diagonal()  # stable self-pair sums
        mo, t = self.moments, self._t
        self.W, self.v = t(net.W1), t(net.W2.ravel())
        v = self.v
        vv = v[:, None] * v[None, :]
        # the output weights are folded into the (N_h, N_h) moment matrices once
        self.gg = t(mo.gg)
        self.vb0 = v[:, None] * t(mo.b[..., 0])  # v_a b0[a,c]
        self.vb1 = v[:, None] * t(mo.b[..., 1])  # v_a b1[a,c]
        self.vb1_t = self.vb1.T.contiguous()
        self.A00, self.A01, self.A10, self.A11 = (vv * t(mo.K[..., i, j]) for i in (0, 1) for j in (0, 1))
        self.A01_t = self.A01.T.contiguous()
        self.vvdd = vv * t(mo.dd)
        self.chunk = max(1, _CHUNK_ENTRIES // max(1, net.n_hidden**2))
        self._factor_cache: dict[float, tuple[torch.Tensor, ...]] = {}

    def _t(self, x: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float64, device=self.device)

    # ------------------------------------------------------------------ the product
    def _block(self, dW: torch.Tensor, dv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        W = self.W
        G = torch.matmul(W, dW.transpose(1, 2))  # (k, a, c): w_a . dW_c
        Gd = torch.diagonal(G, dim1=1, dim2=2).clone()  # (k, c): w_c . dW_c (a copy: G is overwritten below)
        # v-rows: sum_c gg[a,c] dv_c + v_c b0[c,a] w_c.dW_c + v_c b1[c,a] w_a.dW_c
        out_v = dv @ self.gg.T + Gd @ self.vb0 + (G * self.vb1_t).sum(2)
        # w-rows: coef_a w_a + sum_c C[a,c] w_c + sum_c v_a v_c dd[a,c] dW_c
        coef_a = dv @ self.vb0.T + (G * self.A00).sum(2) + Gd @ self.A01_t
        C = G.mul_(self.A10)  # G is not needed any more: reuse its memory
        C.addcmul_(self.A11, Gd.unsqueeze(1)).addcmul_(self.vb1, dv.unsqueeze(1))
        out_W = torch.matmul(C, W)
        out_W += torch.matmul(self.vvdd, dW)
        out_W.addcmul_(coef_a.unsqueeze(2), W)
        return out_W, out_v

    def __call__(self, V: torch.Tensor) -> torch.Tensor:
        dW, dv, vec = split_params(self.net, V)
        dW, dv = dW.contiguous(), dv.contiguous()  # strided operands take a slow matmul path (10-200x, measured)
        c = self.chunk
        parts = [self._block(dW[s : s + c], dv[s : s + c]) for s in range(0, dW.shape[0], c)]
        out_W = torch.cat([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
        out_v = torch.cat([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
        return join_params(out_W, out_v, vec)

    # ------------------------------------------------------------------ the preconditioner
    @cached_property
    def _unit_blocks(self) -> dict[str, torch.Tensor]:
        """Per-unit pieces of ``H = A A^T + H2`` (``docs/scale.md``).

        ``A = E[J x^T]`` ``(P, N_i)`` is the degree-1 Hermite part of the tangent (rank
        ``N_i``, ``O(1)`` eigenvalues) and ``H2`` PSD. Unit ``a``'s rows of ``A``: ``W``-part
        ``v_a (e1_a I + e3_a w_a w_a^T)``, ``v``-part ``e1_a w_a^T``, with ``e1 = E[g'(u_a)]``,
        ``e3 = E[g'''(u_a)] = E[g'(u_a)(u_a^2 - q_a)] / q_a^2`` (Stein), ``u_a ~ N(0, q_a = |w_a|^2)``.
        """
        net, mo, t = self.net, self.moments, self._t
        v, W, gg = self.v, self.W, self.gg
        n_h = net.n_hidden
        diag = torch.arange(n_h, device=self.device)
        q = (net.W1 * net.W1).sum(1)
        nodes, wts = gauss_hermite(PRECONDITIONER_ORDER)
        u = np.sqrt(q)[:, None] * nodes[None, :]
        gp = net.activation.derivative(torch.as_tensor(u, dtype=torch.float64)).numpy() * wts
        e1 = gp.sum(1)
        e3 = np.divide((gp * (u * u - q[:, None])).sum(1), q * q, out=np.zeros_like(q), where=q > 0)
        norm_w = t(np.sqrt(q))
        w_hat = W / torch.clamp(norm_w, min=torch.finfo(torch.float64).tiny)[:, None]
        E1, lam1 = t(e1), t(e1 + e3 * q)  # lam1: A's eigenvalue along w_a
        kappa = t(mo.K[np.arange(n_h), np.arange(n_h)].sum(axis=(1, 2)))
        beta = t(mo.b[np.arange(n_h), np.arange(n_h)].sum(axis=1))
        dd_aa = t(mo.dd)[diag, diag]
        # unit blocks of H: perp (orthogonal to w_a) and the 2 x 2 on (w_hat_a, e_{v_a}); minus those of A A^T
        scale = v * v * dd_aa + gg[diag, diag]
        return {
            "w_hat": w_hat, "E1": E1, "e3": t(e3), "scale": scale,
            "perp": torch.clamp(v * v * (dd_aa - E1 * E1), min=1e-12 * scale),
            "b11": v * v * (dd_aa + kappa * norm_w**2) - (v * lam1) ** 2,
            "b12": v * beta * norm_w - v * lam1 * E1 * norm_w,
            "b22": gg[diag, diag] - (E1 * norm_w) ** 2,
            "aw": v * lam1, "av": E1 * norm_w,  # A's unit-a column along w_hat_a: W-part aw w_hat_a, v-part av
        }

    def _factors(self, shift: float) -> tuple[torch.Tensor, ...]:
        """For ``B2 + shift I``: ``1/perp`` ``(N_h,)``, the 2 x 2 inverses ``(i11, i12, i22)`` and the
        Cholesky factor of the capacitance ``C = I + A^T (B2 + shift)^{-1} A`` ``(N_i, N_i)``."""
        if shift not in self._factor_cache:
            u = self._unit_blocks
            a11, a22, b12 = u["b11"] + shift, u["b22"] + shift, u["b12"]
            # 2 x 2 inverse through its eigenpairs: a singular block (ReLU's rescaling mode)
            # gets its small eigenvalue floored at 1e-10 of the large one, staying SPD
            mid, rad = 0.5 * (a11 + a22), torch.sqrt((0.5 * (a11 - a22)) ** 2 + b12 * b12)
            lo = torch.clamp(mid - rad, min=1e-10 * (mid + rad).abs() + torch.finfo(torch.float64).tiny)
            hi = torch.clamp(mid + rad, min=torch.finfo(torch.float64).tiny)
            phi = 0.5 * torch.atan2(2 * b12, a11 - a22)
            c, s_ = torch.cos(phi), torch.sin(phi)
            i11, i12, i22 = c * c / hi + s_ * s_ / lo, c * s_ * (1 / hi - 1 / lo), s_ * s_ / hi + c * c / lo
            inv_perp = 1.0 / torch.clamp(u["perp"] + shift, min=1e-10 * u["scale"])
            rho = i11 * u["aw"] ** 2 + 2 * i12 * u["aw"] * u["av"] + i22 * u["av"] ** 2  # A^T B2^{-1} A along w_hat_a
            cq = (self.v * u["E1"]) ** 2 * inv_perp  # ... and orthogonal to it
            C = (u["w_hat"].T * (rho - cq)) @ u["w_hat"]
            C.diagonal().add_(1.0 + cq.sum())
            L, info = torch.linalg.cholesky_ex(C)
            if int(info) != 0:
                raise NearoptError("the population preconditioner's capacitance matrix is not positive definite")
            self._factor_cache[shift] = (inv_perp, i11, i12, i22, L)
        return self._factor_cache[shift]

    def _unit_solve(self, dW: torch.Tensor, dv: torch.Tensor, shift: float) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B2 + shift I)^{-1}`` on ``dW`` ``(k, N_h, N_i)``, ``dv`` ``(k, N_h)``."""
        inv_perp, i11, i12, i22, _ = self._factors(shift)
        w_hat = self._unit_blocks["w_hat"]
        alpha = torch.einsum("kai,ai->ka", dW, w_hat)
        out_W = (dW - alpha.unsqueeze(2) * w_hat) * inv_perp.unsqueeze(1)
        out_W += (i11 * alpha + i12 * dv).unsqueeze(2) * w_hat
        return out_W, i12 * alpha + i22 * dv

    def precondition(self, R: torch.Tensor, shift: float = 0.0) -> torch.Tensor:
        """``T R`` with ``T = (B2 + A A^T + shift I)^{-1}``, an SPD approximation of ``(H + shift I)^{-1}``.

        ``B2`` are the per-unit blocks of ``H2`` on ``(w_a, v_a)`` (identity plus a 2 x 2
        on ``(w_a/|w_a|, e_{v_a})``, inverted in closed form; a singular block, ReLU's
        rescaling mode, gets its small eigenvalue floored at ``1e-10`` of the large
        one), and the rank-``N_i`` term enters by Woodbury through an ``N_i x N_i``
        Cholesky factor. Cost ``O(P k + N_h N_i k)`` per block, set-up ``O(N_h N_i^2)``
        (once, on first use). On erf ``N_i = N_h = 20`` it takes ``cond`` from
        ``2.3e5`` to ``25``.
        """
        u = self._unit_blocks
        W, v, E1 = self.W, self.v, u["E1"]
        dW, dv, vec = split_params(self.net, R)
        XW, Xv = self._unit_solve(dW.contiguous(), dv, shift)
        # A^T X: sum_a v_a e1_a XW_a + w_a (v_a e3_a (w_a . XW_a) + e1_a Xv_a)
        Z = torch.einsum("a,kai->ki", v * E1, XW) + (v * u["e3"] * torch.einsum("kai,ai->ka", XW, W) + E1 * Xv) @ W
        Y = torch.cholesky_solve(Z.T, self._factors(shift)[4]).T  # (k, N_i)
        # A Y: W-part v_a (e1_a y + e3_a w_a (w_a . y)), v-part e1_a (w_a . y)
        Wy = Y @ W.T  # (k, N_h)
        AW = (v * E1)[None, :, None] * Y[:, None, :] + (v * u["e3"] * Wy).unsqueeze(2) * W
        CW, Cv = self._unit_solve(AW, E1 * Wy, shift)
        return join_params(XW - CW, Xv - Cv, vec)
