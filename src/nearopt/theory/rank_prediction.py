"""Predicted rank of the Hessian at the optimum (docs/theory.md §4).

At ``theta = theta*`` the population Hessian is ``E[J Jᵀ]``, so its rank is the
dimension of the tangent space of ``theta ↦ f_theta``: the number of
function-space directions the network can move in (the *effective number of
parameters*). :func:`predict_rank` returns that number for every activation
family the theory covers, and says whether it is exact or a bound:

* linear: ``N_i`` (exact);
* ``z²``: ``N_h N_i − N_h(N_h−1)/2`` for ``N_h ≤ N_i``, ``N_i(N_i+1)/2`` for ``N_h ≥ N_i`` (exact);
* ``z^p``, ``p ≥ 3``: ``min(N_h N_i, C(N_i+p−1, p))``, minus one in the Alexander–Hirschowitz
  cases (exact);
* ``c1 z + c2 z²``: ``N_h(N_i+1) − N_h(N_h−1)/2`` for ``N_h ≤ N_i`` (derived below),
  ``N_i + N_i(N_i+1)/2`` above (exact);
* other polynomials: the exact generic rank by modular arithmetic when small enough (exact),
  else the upper bound (bound);
* ReLU: ``P − N_h`` for ``N_i ≥ 2`` (exact);
* erf, tanh: ``P`` (observed, not a theorem);
* other activations: ``P`` (bound);
* deep linear networks ``f(x) = W_L ... W_1 x`` (:func:`predict_deep_linear_rank`):
  ``q (r + K - q)`` with ``q = min(r, K, smallest hidden width)`` and ``r = rank Sigma``
  (exact for generic weights; Singh, Bachmann & Hofmann 2021).

Polynomial activations, exactly. Write ``f`` in the scaled monomial basis
``{(k!/α!) x^α}``: its coordinate at ``α`` (``|α| = k``) is
``F_α = c_k Σ_a v_a w_a^α``. The Gaussian inner product is positive definite on
polynomials, so ``rank H = rank ∂F/∂(W1, v)``, a ``D × P`` matrix with entries
``c_k w_a^α`` (``∂/∂v_a``) and ``c_k v_a α_j w_a^{α−e_j}`` (``∂/∂W1[a, j]``).
Two consequences used here:

* every row of degree ``k`` carries the factor ``c_k``, so the rank depends only
  on the *support* ``{k : c_k ≠ 0}``, not on the coefficient values
  (``z + z²`` and ``z + 5 z²`` have the same rank, teacher by teacher);
* the entries are polynomials with integer coefficients in the weights, so the
  generic rank can be computed exactly: Gaussian elimination over the prime
  field ``F_q`` (``q = 2³¹ − 1``) at random integer weights gives a rank that is
  never above the generic rank and equals it unless the random point is a root
  of a nonzero minor (probability ``≤ r·deg/q < 1e-6`` by Schwartz–Zippel;
  two independent points are tried). :func:`generic_polynomial_rank`.

``z + z²`` (derivation, checked against the modular rank in the tests): with
``L1`` and ``L2`` the degree-1 and degree-2 parts of the tangent map,
``rank = rank L2 + rank(L1 restricted to ker L2)``. ``rank L2`` is the ``z²``
rank; ``ker L2`` (dimension ``N_h(N_h+1)/2`` for ``N_h ≤ N_i``) is spanned by the
per-unit rescalings ``(dw_a, dv_a) = (t w_a, −2 t v_a)`` and the
pseudo-rotations ``dW1 = A W1`` with ``diag(v) A`` antisymmetric, which keep
``W1ᵀ diag(v) W1`` fixed. Both move the linear coefficient ``W1ᵀ v`` only within
``span{w_a}`` (rescalings by ``−W1ᵀ(t∘v)``, rotations by ``−W1ᵀ B 1``), an
``min(N_h, N_i)``-dimensional space. Hence the ``N_h(N_h−1)/2`` rotations stay
zero modes: ``rank = N_h(N_i+1) − N_h(N_h−1)/2`` below saturation, one
``N_h(N_h−1)/2`` short of the bound ``min(P, N_i + N_i(N_i+1)/2)``.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field
from math import comb
from typing import Any

import numpy as np

from ..errors import NearoptError, require_positive_int
from ..model.activations import Activation, Erf, ReLU, Tanh, get_activation

__all__ = [
    "DEFECTIVE_CASES", "generic_polynomial_rank", "KINDS", "linear_plus_quadratic_rank", "MODULAR_WORK_LIMIT", "MODULUS", "monomial_rank",
    "polynomial_rank_bound", "polynomial_support", "predict_deep_linear_rank", "predict_rank", "rank_mod", "RankPrediction", "saturation_hidden", "tangent_matrix_mod"
]

#: ``(p, N_i, N_h)`` where ``z^p`` networks lose one dimension (Alexander–Hirschowitz)
DEFECTIVE_CASES: tuple[tuple[int, int, int], ...] = ((3, 5, 7), (4, 3, 5), (4, 4, 9), (4, 5, 14))

#: the prime of the modular rank computation (Mersenne, so products fit in int64)
MODULUS = 2**31 - 1

#: largest ``P * D * min(P, D)`` the automatic modular computation attempts
MODULAR_WORK_LIMIT = 5e8

KINDS = ("exact", "bound", "observed")


@dataclass(frozen=True)
class RankPrediction:
    """A predicted rank and how much to trust it.

    ``kind`` is ``"exact"`` (a theorem or an exact computation),
    ``"bound"`` (an upper bound; the rank may be lower) or ``"observed"``
    (full rank, seen numerically for erf/tanh but not proven).
    ``population_rank`` is the ``N → ∞`` value; ``rank`` is capped at the
    number of samples when one was given (``capped`` then says so).
    """

    rank: int
    kind: str
    population_rank: int
    upper_bound: int
    n_params: int
    activation: str
    n_inputs: int
    n_hidden: int
    basis: str
    n_samples: int | None = None
    capped: bool = False
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def exact(self) -> bool:
        return self.kind == "exact"

    def admits(self, measured: int) -> bool:
        """Whether a measured rank is what this prediction says (``≤`` for a bound)."""
        return measured <= self.rank if self.kind == "bound" else measured == self.rank

    def label(self) -> str:
        """Short text such as ``"21 exact"`` or ``"≤ 30 bound"``."""
        return f"<={self.rank} bound" if self.kind == "bound" else f"{self.rank} {self.kind}"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["notes"] = list(self.notes)
        return d


# -- closed forms ----------------------------------------------------------------


def monomial_rank(p: int, n_inputs: int, n_hidden: int) -> int:
    """Generic rank for ``g(z) = z^p`` (``p ≥ 1``), including the defective cases."""
    p, n_i, n_h = (require_positive_int(v, name) for v, name in ((p, "degree"), (n_inputs, "N_i"), (n_hidden, "N_h")))
    if p == 1:
        return n_i
    if p == 2:
        return n_h * n_i - n_h * (n_h - 1) // 2 if n_h <= n_i else n_i * (n_i + 1) // 2
    expected = min(n_h * n_i, comb(n_i + p - 1, p))
    return expected - 1 if (p, n_i, n_h) in DEFECTIVE_CASES else expected


def linear_plus_quadratic_rank(n_inputs: int, n_hidden: int) -> int:
    """Generic rank for ``g = c1 z + c2 z²`` (``c1, c2 ≠ 0``); see the module docstring."""
    n_i, n_h = require_positive_int(n_inputs, "N_i"), require_positive_int(n_hidden, "N_h")
    if n_h <= n_i:
        return n_h * (n_i + 1) - n_h * (n_h - 1) // 2
    return n_i + n_i * (n_i + 1) // 2


def polynomial_support(coefficients) -> tuple[int, ...]:
    """Degrees ``k`` with ``c_k ≠ 0``."""
    return tuple(int(k) for k in np.flatnonzero(np.asarray(coefficients, dtype=np.float64)))


def polynomial_rank_bound(support, n_inputs: int, n_hidden: int) -> int:
    """Upper bound ``min(P, Σ_k r_k)`` with ``r_k`` the ``z^k`` rank (``r_0 = 1``).

    The rank of a stack of row blocks is at most the sum of the block ranks, and
    block ``k`` alone is the ``z^k`` network (so this is never looser than
    the ``min(N_h(N_i+1), Σ C(N_i+k−1, k))``).
    """
    p_total = n_hidden * (n_inputs + 1)
    blocks = sum(1 if k == 0 else monomial_rank(k, n_inputs, n_hidden) for k in support)
    return min(p_total, blocks)


# -- exact generic rank of polynomial networks by modular arithmetic --------------


def _exponents(n_inputs: int, degree: int) -> np.ndarray:
    """All ``α`` with ``|α| = degree``, shape ``(C(N_i+degree−1, degree), N_i)``."""
    rows = []
    for combo in itertools.combinations_with_replacement(range(n_inputs), degree):
        rows.append(np.bincount(np.asarray(combo, dtype=np.int64), minlength=n_inputs))
    return np.array(rows, dtype=np.int64).reshape(-1, n_inputs)


def _monomials_mod(W: np.ndarray, alpha: np.ndarray, q: int) -> np.ndarray:
    """``w_a^α mod q`` for ``W`` ``(N_h, N_i)`` and ``alpha`` ``(D, N_i)``; returns ``(D, N_h)``."""
    n_h, n_i = W.shape
    deg = int(alpha.max(initial=0))
    powers = np.ones((deg + 1, n_h, n_i), dtype=np.int64)  # powers[e] = W**e mod q
    for e in range(1, deg + 1):
        powers[e] = powers[e - 1] * W % q
    out = np.ones((alpha.shape[0], n_h), dtype=np.int64)
    for j in range(n_i):
        out = out * powers[alpha[:, j], :, j] % q
    return out


def tangent_matrix_mod(support, W: np.ndarray, v: np.ndarray, q: int = MODULUS) -> np.ndarray:
    """``∂F/∂θ mod q`` (coefficient factors ``c_k`` dropped), shape ``(D, P)``.

    ``W`` ``(N_h, N_i)`` and ``v`` ``(N_h,)`` are integer weights; columns follow the
    package's parameter order (``W1`` row by row, then ``v``).
    """
    n_h, n_i = W.shape
    blocks = []
    for k in sorted(set(support)):
        alpha = _exponents(n_i, k)  # (D_k, N_i)
        dv = _monomials_mod(W, alpha, q)  # (D_k, N_h)
        dW = np.zeros((alpha.shape[0], n_h, n_i), dtype=np.int64)
        for j in range(n_i):
            lowered = alpha.copy()
            lowered[:, j] = np.maximum(lowered[:, j] - 1, 0)
            dW[:, :, j] = _monomials_mod(W, lowered, q) * (alpha[:, j:j + 1] * v[None, :] % q) % q
        blocks.append(np.concatenate([dW.reshape(alpha.shape[0], -1), dv], axis=1))
    return np.concatenate(blocks, axis=0)


def rank_mod(M: np.ndarray, q: int = MODULUS) -> int:
    """Rank of an integer matrix over the field ``F_q`` (Gaussian elimination, ``q < 2³¹``)."""
    A = np.array(M, dtype=np.int64) % q
    if A.shape[0] > A.shape[1]:
        A = A.T.copy()  # eliminate along the shorter side
    rank = 0
    for c in range(A.shape[1]):
        nz = np.flatnonzero(A[rank:, c])
        if nz.size == 0:
            continue
        piv = rank + nz[0]
        A[[rank, piv]] = A[[piv, rank]]
        A[rank] = A[rank] * pow(int(A[rank, c]), q - 2, q) % q
        below = A[rank + 1 :]
        below -= below[:, c : c + 1] * A[rank] % q
        below %= q
        rank += 1
        if rank == A.shape[0]:
            break
    return rank


def generic_polynomial_rank(support, n_inputs: int, n_hidden: int, *, seed: int = 0, trials: int = 2, q: int = MODULUS) -> int:
    """Generic population rank of a polynomial network with coefficient support ``support``.

    Exact arithmetic in ``F_q`` at ``trials`` random integer weight points; the
    maximum is a lower bound on the generic rank and equals it with probability
    ``≥ 1 − trials·(r·deg/q)`` (see the module docstring).
    """
    support = tuple(sorted({int(k) for k in support}))
    if not support or min(support) < 0:
        raise NearoptError(f"polynomial support must be non-empty degrees >= 0, got {support}")
    n_i, n_h = require_positive_int(n_inputs, "N_i"), require_positive_int(n_hidden, "N_h")
    rng = np.random.default_rng([seed, 0x5A])
    best = 0
    for _ in range(trials):
        W = rng.integers(1, q, size=(n_h, n_i), dtype=np.int64)
        v = rng.integers(1, q, size=n_h, dtype=np.int64)
        best = max(best, rank_mod(tangent_matrix_mod(support, W, v, q), q))
    return best


def _modular_work(support, n_inputs: int, n_hidden: int) -> float:
    P = n_hidden * (n_inputs + 1)
    D = sum(comb(n_inputs + k - 1, k) for k in support)
    return float(P) * D * min(P, D)


# -- the prediction --------------------------------------------------------------


def _polynomial_prediction(act: Activation, n_i: int, n_h: int, modular: bool | None) -> tuple[int, str, int, str]:
    support = polynomial_support(act.polynomial_coefficients)
    bound = polynomial_rank_bound(support, n_i, n_h)
    if len(support) == 1 and support[0] >= 1:
        p = support[0]
        if p == 1:
            return n_i, "exact", bound, "linear: f is the linear form (W1ᵀv)·x"
        if p == 2:
            return monomial_rank(2, n_i, n_h), "exact", bound, "z²: tangent space of symmetric matrices of rank ≤ N_h"
        defective = (p, n_i, n_h) in DEFECTIVE_CASES
        basis = f"z^{p}: Alexander–Hirschowitz, min(N_h N_i, C(N_i+{p}-1,{p}))" + (" − 1 (defective case)" if defective else "")
        return monomial_rank(p, n_i, n_h), "exact", bound, basis
    if support == (1, 2):
        return linear_plus_quadratic_rank(n_i, n_h), "exact", bound, "c1 z + c2 z²: rank(z²) + dim span{w_a} (pseudo-rotations stay zero modes)"
    if modular is None:
        modular = _modular_work(support, n_i, n_h) <= MODULAR_WORK_LIMIT
    if modular:
        r = generic_polynomial_rank(support, n_i, n_h)
        return r, "exact", bound, f"polynomial with support {list(support)}: generic rank by exact arithmetic mod 2^31-1"
    return bound, "bound", bound, f"polynomial with support {list(support)}: min(P, Σ_k rank(z^k)) (too large for the exact modular count)"


def predict_rank(activation: str | Activation, n_inputs: int, n_hidden: int, *, n_samples: int | None = None, modular: bool | None = None) -> RankPrediction:
    """Predicted rank of the Hessian at the optimum for a generic teacher.

    Parameters
    ----------
    activation : str or Activation
    n_inputs, n_hidden : int
        ``N_i`` and ``N_h``; ``P = N_h (N_i + 1)``.
    n_samples : int, optional
        Batch size ``N``: the batch rank is ``min(N, population rank)`` for
        generic inputs (``rank`` is capped, ``population_rank`` is not).
    modular : bool, optional
        For polynomials without a closed form: force (``True``) or forbid
        (``False``) the exact modular count; default: when it is cheap.

    Examples
    --------
    >>> predict_rank("quadratic", 6, 12).rank
    21
    >>> predict_rank("monomial:4", 5, 14).rank       # Alexander–Hirschowitz defect
    69
    """
    act = get_activation(activation)
    n_i, n_h = require_positive_int(n_inputs, "N_i"), require_positive_int(n_hidden, "N_h")
    P = n_h * (n_i + 1)
    notes: list[str] = []
    if act.is_polynomial:
        rank, kind, bound, basis = _polynomial_prediction(act, n_i, n_h, modular)
    elif isinstance(act, ReLU):
        if n_i >= 2:
            rank, kind, bound, basis = P - n_h, "exact", P - n_h, "ReLU: one positive-rescaling zero mode per unit"
        else:
            rank = bound = min(n_h, 2)
            kind, basis = "bound", "ReLU with N_i = 1: only x·1[x>0] and x·1[x<0] exist (2 if both weight signs occur)"
    elif isinstance(act, (Erf, Tanh)):
        rank, kind, bound, basis = P, "observed", P, f"{act.name}: full rank, observed numerically (not proven); many eigenvalues are tiny"
    else:
        rank, kind, bound, basis = P, "bound", P, f"{act.name}: no theory; rank ≤ P"
    population_rank = rank
    capped = False
    if n_samples is not None:
        n = require_positive_int(n_samples, "number of samples")
        if n < rank:
            rank, capped = n, True
            notes.append(f"N = {n} samples cap the rank below the population value {population_rank}")
        bound = min(bound, n)
    return RankPrediction(rank, kind, population_rank, bound, P, act.name, n_i, n_h, basis, n_samples, capped, tuple(notes))


def saturation_hidden(activation: str | Activation, n_inputs: int, *, max_hidden: int = 10_000) -> int | None:
    """Smallest ``N_h`` from which the predicted rank stops growing (``None`` if it never does).

    ``z²``: ``N_i − 1`` (adding unit ``N_i`` adds nothing); ``z^p``:
    ``ceil(C(N_i+p−1, p) / N_i)``. Found by scanning the prediction, so it
    covers every family with a finite function space.
    """
    act = get_activation(activation)
    if not act.is_polynomial:
        return None
    prev = predict_rank(act, n_inputs, 1).population_rank
    for n_h in range(2, max_hidden + 1):
        r = predict_rank(act, n_inputs, n_h).population_rank
        if r == prev:
            return n_h - 1
        prev = r
    return None


def predict_deep_linear_rank(widths, rank_sigma: int | None = None) -> RankPrediction:
    """Rank of the Hessian of a deep linear network at a global minimum, for generic weights.

    ``widths`` ``(n_0, ..., n_L)`` (``n_0 = N_i`` inputs, ``n_L = K`` outputs, ``L >= 1``);
    ``rank_sigma`` ``r = rank Sigma`` of the input covariance (default ``N_i``). Returns
    ``q (r + K - q)`` with ``q = min(r, K, n_1, ..., n_{L-1})`` (Singh, Bachmann & Hofmann 2021).

    Why: at a minimum ``H = E[J J^T]``, whose rank is the dimension of the image of
    ``d theta -> dA Sigma^(1/2)`` (``A = W_L ... W_1``). The products ``A`` are the
    ``K x N_i`` matrices of rank ``<= m = min(n_0, ..., n_L)``; where ``rank A = m`` the
    differential of ``theta -> A`` reaches the whole tangent space ``{U Y + Z V^T}``
    (``U``, ``V`` the column and row spaces of ``A``), and restricted to the ``r``-dimensional
    range of ``Sigma`` that space has dimension ``m r + K q - m q = q (r + K - q)``
    (``q = m`` or ``q = r``). Conditions (generic weights and covariance): ``rank A = m``
    and ``rank(A Sigma^(1/2)) = q``; at a point where either fails the rank is lower
    (:func:`nearopt.curvature.deep_linear.rank_conditions` checks both).

    Examples
    --------
    >>> predict_deep_linear_rank((6, 4, 3, 2)).rank     # q = 2: 2 (6 + 2 - 2)
    12
    >>> predict_deep_linear_rank((6, 4, 3, 2), 1).rank  # q = 1: 1 (1 + 2 - 1)
    2
    """
    try:
        sizes = tuple(require_positive_int(n, "a width") for n in widths)
    except TypeError:
        raise NearoptError(f"widths must be a sequence of positive integers (n_0, ..., n_L), got {widths!r}") from None
    if len(sizes) < 2:
        raise NearoptError(f"widths must list n_0, ..., n_L with L >= 1 (at least two numbers), got {list(sizes)}")
    n_i, k = sizes[0], sizes[-1]
    r = n_i if rank_sigma is None else require_positive_int(rank_sigma, "rank Sigma")
    if r > n_i:
        raise NearoptError(f"rank Sigma = {r} exceeds N_i = {n_i}")
    q = min(r, k, *sizes[1:-1])
    P = sum(a * b for a, b in zip(sizes[:-1], sizes[1:], strict=True))
    rank = q * (r + k - q)
    basis = (f"deep linear, widths {'-'.join(map(str, sizes))}, rank Sigma = {r}: q (r + K - q) with q = min(r, K, hidden widths) = {q} "
             "(Singh, Bachmann & Hofmann 2021; generic weights: rank A = min width, rank A Sigma^(1/2) = q)")
    hidden = sizes[1] if len(sizes) > 2 else k
    return RankPrediction(rank, "exact", rank, min(P, k * r), P, "linear", n_i, hidden, basis,
                          notes=(f"depth L = {len(sizes) - 1}, K = {k} outputs", f"rank Sigma = {r}"))
