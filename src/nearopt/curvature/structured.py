"""The one structured reduction of the population Hessian: every eigenvalue, never the ``P x P`` matrix.

It serves every point, input law and trained block (``docs/theory.md`` §2.5,
``docs/inputs.md``, ``docs/students.md``). Let ``Omega`` be the first-layer rows the
loss depends on: the student's ``W1`` ``(K, N_i)`` at the teacher, ``[W1; W1*]``
``(K + M, N_i)`` at any other point. The pairwise moments depend only on the Gram
``Omega Sigma Omega^T``, hence:

* for each eigenspace ``E_j`` of ``Sigma`` (value ``lambda_j``, dimension ``m_j``;
  ``Sigma = I`` has one), the directions ``e_a (x) u`` with ``u`` in ``E_j`` and
  orthogonal to the projected rows ``P_j Omega^T`` are invariant, and ``H`` acts on
  them as ``lambda_j M`` with ``M = (v v^T) ∘ E[g'(w_a.x) g'(w_c.x)]`` plus, off a
  global minimum, ``diag(v_a E[r g''(w_a.x)])`` (the residual);
* the rest is the Hessian of the *reduced* problem on ``R = sum_j span(P_j Omega^T)``
  (dimension ``r' <= sum_j min(K + M, m_j)``): first layer ``W1 Q``, rows ``Omega Q``
  and covariance ``C = Q^T Sigma Q`` (``Q`` an orthonormal basis of ``R``), assembled
  densely as ``T_r H~_r T_r`` with ``H~_r`` the isotropic Hessian of the whitened
  reduced weights ``W1 Q C^{1/2}`` (the change of variables of
  :mod:`nearopt.curvature.compose`, on a block of side ``K (r' + 1)``).

Hence ``spec(H) = spec(H_reduced) ∪_j lambda_j spec(M) × (m_j - r_j)``. Cost
``O(K^2 N_i)`` (an SVD per eigenspace of ``Sigma``) plus ``O((K (r' + 1))^3)``.
With only the first layer trained the ``v`` rows of the reduced block drop out; with
only the second ``H = E[g g^T]`` over the student's units (``K x K``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.linalg

from ..gaussian.expectations import PairMoments
from ..gaussian.objective import LandscapeMoments, landscape_moments
from ..model.network import TwoLayerNet
from ..model.problem import GaussianInputs, Problem, as_problem
from ..policy import DEFAULT_POLICY, RankPolicy
from .assembly import assemble, net_moments
from .student import assemble_landscape

__all__ = ["merge_blocks", "reduction", "structured_spectrum", "StructuredSpectrum"]


@dataclass(frozen=True)
class StructuredSpectrum:
    """Eigenvalue blocks of the population Hessian.

    ``values`` ``(n_blocks,)`` ascending with integer ``counts`` (multiplicities,
    summing to ``P``); ``reduced`` ``(K (r'+1),)`` and ``complement`` ``(K,)`` are the
    two ingredient spectra, ``row_rank`` is ``r'`` and ``complement_multiplicity`` the
    number of copies of ``complement`` (over every eigenspace);
    ``complement_scales`` the ``(lambda_j, m_j - r_j)`` pairs scaling them.
    """

    values: np.ndarray
    counts: np.ndarray
    reduced: np.ndarray
    complement: np.ndarray
    row_rank: int
    complement_multiplicity: int
    complement_scales: tuple[tuple[float, int], ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def n_params(self) -> int:
        return int(self.counts.sum())

    @property
    def block_size(self) -> int:
        """Side of the largest dense matrix diagonalised (the reduced Hessian)."""
        return max(self.reduced.size, self.complement.size)

    def expand(self) -> np.ndarray:
        """All ``P`` eigenvalues, ascending, shape ``(P,)``."""
        return np.repeat(self.values, self.counts)


def reduction(Omega: np.ndarray, inputs: GaussianInputs, policy: RankPolicy = DEFAULT_POLICY) -> tuple[np.ndarray, list[tuple[float, int]]]:
    """The ``Sigma``-invariant space ``R`` holding the rows of ``Omega`` ``(n, N_i)``, and what is left.

    Returns ``Q`` ``(N_i, r')`` orthonormal with ``R = span(Q) = sum_j span(P_j Omega^T)``
    (``P_j`` the projector on eigenspace ``j`` of ``Sigma``) and the list
    ``[(lambda_j, m_j - r_j)]`` of eigenvalues and dimensions of ``E_j ∩ R^⊥``.
    Each projected block's rank is decided by ``policy`` against ``||Omega||_2``.
    """
    n_i = Omega.shape[1]
    norm = float(scipy.linalg.norm(Omega, 2)) if Omega.size else 0.0
    spaces = inputs.eigenspaces()
    explicit = [e.basis for e in spaces if e.basis is not None]
    Q_all = np.hstack(explicit) if explicit else np.zeros((n_i, 0))
    bases, rest = [], []
    for e in spaces:
        A = Omega - (Omega @ Q_all) @ Q_all.T if e.basis is None else Omega @ e.basis  # the bulk: complement of every explicit eigenvector
        _, sv, Vt = scipy.linalg.svd(A, full_matrices=False)
        # an m-dimensional eigenspace holds at most m of the rows' directions: the bulk's projection is
        # computed as a complement, and a spike basis orthonormal only to rounding leaves tails above the cut
        r = min(policy.cut(sv, norm, Omega.shape), e.multiplicity)
        bases.append(Vt[:r].T if e.basis is None else e.basis @ Vt[:r].T)
        rest.append((e.value, e.multiplicity - r))
    Q = np.hstack(bases) if bases else np.zeros((n_i, 0))
    return Q, rest


def merge_blocks(blocks: list[tuple[np.ndarray, int]]) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalue arrays with one multiplicity each -> ascending ``values``, ``counts``."""
    blocks = [(b, m) for b, m in blocks if b.size and m > 0]
    if not blocks:
        return np.zeros(0), np.zeros(0, dtype=np.int64)
    values = np.concatenate([b for b, _ in blocks])
    counts = np.concatenate([np.full(b.size, m, dtype=np.int64) for b, m in blocks])
    order = np.argsort(values, kind="stable")
    return values[order], counts[order]


def _sym_sqrt(C: np.ndarray) -> np.ndarray:
    lam, V = scipy.linalg.eigh(0.5 * (C + C.T))
    return (V * np.sqrt(np.clip(lam, 0.0, None))) @ V.T


def _conjugate_w(H: np.ndarray, L: np.ndarray, n_h: int) -> np.ndarray:
    """``T H T`` with ``T = blockdiag(I_{n_h} (x) L, I_{n_h})`` on a dense ``(n_h (d+1), n_h (d+1))`` ``H``."""
    T = scipy.linalg.block_diag(np.kron(np.eye(n_h), L), np.eye(n_h))
    out = T @ H @ T
    return 0.5 * (out + out.T)


def structured_spectrum(problem: Problem | TwoLayerNet, moments: PairMoments | LandscapeMoments | None = None, *, residual: bool = True,
                        policy: RankPolicy = DEFAULT_POLICY) -> StructuredSpectrum:
    """Every eigenvalue of the population Hessian of ``problem`` as blocks with multiplicities (module docstring).

    ``moments``: :class:`~nearopt.gaussian.expectations.PairMoments` of the student's units at the
    teacher (Gram ``W1 Sigma W1^T``), or :class:`~nearopt.gaussian.objective.LandscapeMoments`
    of ``Omega = [W1; W1*]`` elsewhere (Gram ``Omega Sigma Omega^T``). ``residual=False``
    gives the population Gauss-Newton matrix at a student point. ``moments=None``: computed here.
    """
    problem = as_problem(problem)
    if moments is None:
        moments = net_moments(problem.point, problem.inputs) if problem.at_teacher else landscape_moments(problem, residual=residual)
    s = problem.point
    K, v = s.n_hidden, s.W2.ravel()
    if isinstance(moments, LandscapeMoments):
        mo = moments
        Omega, gg, dd = np.vstack([s.W1, problem.teacher.W1]), mo.phi[:K, :K], mo.student.dd
        shift = v * (mo.cross.b[..., 0] @ mo.beta) if residual else np.zeros(K)  # diag(v_a E[r g''(w_a.x)])

        def hessian(W_r: np.ndarray, Om_r: np.ndarray) -> np.ndarray:
            return assemble_landscape(mo, W_r, Om_r, v, residual)
    else:
        pm = moments
        Omega, gg, dd, shift = s.W1, pm.gg, pm.dd, np.zeros(K)

        def hessian(W_r: np.ndarray, Om_r: np.ndarray) -> np.ndarray:
            return assemble(pm, W_r, v)
    if problem.trained == "second":
        reduced = scipy.linalg.eigvalsh(gg)
        values, counts = merge_blocks([(reduced, 1)])
        return StructuredSpectrum(values, counts, reduced, np.zeros(0), 0, 0)
    Q, rest = reduction(Omega, problem.inputs, policy)
    r = Q.shape[1]
    C = Q.T @ problem.inputs.matmul(Q.T).T  # Q^T Sigma Q (r', r')
    Lr = np.eye(r) if problem.inputs.isotropic else _sym_sqrt(C)
    W_r, Om_r = s.W1 @ Q @ Lr, Omega @ Q @ Lr  # the whitened reduced weights (same Gram as under Sigma)
    H_red = hessian(W_r, Om_r)
    if not problem.inputs.isotropic:
        H_red = _conjugate_w(H_red, Lr, K)
    if problem.trained == "first":
        H_red = H_red[: K * r, : K * r]
    reduced = scipy.linalg.eigvalsh(H_red) if H_red.size else np.zeros(0)
    rest = [(lam, m) for lam, m in rest if m > 0]
    M = np.outer(v, v) * dd + np.diag(shift)
    mu = scipy.linalg.eigvalsh(M) if rest else np.zeros(0)
    values, counts = merge_blocks([(reduced, 1)] + [(lam * mu, m) for lam, m in rest])
    mult = sum(m for _, m in rest)
    scales = tuple((float(lam), int(m)) for lam, m in rest) if not problem.inputs.isotropic else ()
    extra: dict[str, Any] = {"reduced_rank": r, "complement_multiplicity": mult, "reduced_size": max(reduced.size, mu.size)}
    if scales:
        extra["complement_scales"] = [list(c) for c in scales]
    return StructuredSpectrum(values, counts, reduced, mu, r, mult, scales, extra)
