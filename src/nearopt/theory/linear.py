"""Exact Hessian spectrum of linear networks at the optimum (docs/theory.md §3.1).

For ``g(z) = z`` the per-sample Jacobian is ``J(x) = B x`` with ``B`` of shape
``(P, N_i)``: rows ``a*N_i:(a+1)*N_i`` (weights ``w_a``) are ``v_a I``, the last
``N_h`` rows (output weights) are ``W1``. Hence ``B^T B = s I + W1^T W1`` with
``s = ||W2||^2`` and

* population (``S = I``): ``H = B B^T``, nonzero eigenvalues ``s + spec(W1^T W1)``,
  ``rank H = N_i``, the other ``P - N_i`` eigenvalues exactly 0;
* batch ``X`` (``N x N_i``, ``S = X^T X / N``): ``H = B S B^T``, nonzero eigenvalues
  ``spec(S^{1/2} (s I + W1^T W1) S^{1/2})``, ``rank H = min(N_i, N)``.

:func:`simulate_linear_spectrum` samples the same spectra for random teachers
without building any network (``s`` from ``scipy.stats.chi2`` and ``W1^T W1`` from
``scipy.stats.wishart`` by the Bartlett decomposition): the exact finite-size law
that :class:`~nearopt.theory.distributions.ChiSquareMPConvolution` approximates.
"""

from __future__ import annotations

import time

import numpy as np
from scipy import linalg, stats

from ..errors import NearoptError, require_positive_int
from ..model.network import TwoLayerNet, sample_inputs, sample_teacher
from ..policy import decide_rank
from ..spectra.spectrum import Spectrum
from .distributions import _scale, wishart_law

__all__ = [
    "linear_batch_spectrum", "linear_batch_trace_moments", "linear_gram", "linear_jacobian_factor", "linear_population_hessian",
    "linear_population_spectrum", "output_norm", "pooled_linear_eigenvalues", "simulate_linear_spectrum", "smallest_nonzero_edge"
]


def _require_linear(net: TwoLayerNet) -> None:
    act = net.activation
    coeffs = getattr(act, "polynomial_coefficients", None)
    if coeffs is None or coeffs.size != 2 or coeffs[0] != 0.0 or coeffs[1] != 1.0:
        raise NearoptError(f"the closed-form linear spectrum needs activation g(z) = z, got {act.name!r}")


def output_norm(net: TwoLayerNet) -> float:
    """``s = ||W2||^2``."""
    return float(np.sum(net.W2**2))


def linear_jacobian_factor(net: TwoLayerNet) -> np.ndarray:
    """``B`` of shape ``(P, N_i)`` with ``J(x) = grad_theta f(x) = B x``."""
    _require_linear(net)
    v = net.W2.ravel()
    top = np.kron(v[:, None], np.eye(net.n_inputs))  # (N_h N_i, N_i): v_a I per hidden unit
    return np.vstack([top, net.W1])


def linear_gram(net: TwoLayerNet) -> np.ndarray:
    """``B^T B = s I + W1^T W1``, shape ``(N_i, N_i)``."""
    _require_linear(net)
    return output_norm(net) * np.eye(net.n_inputs) + net.W1.T @ net.W1


def linear_population_hessian(net: TwoLayerNet) -> np.ndarray:
    """The population Hessian at the optimum, ``B B^T``, shape ``(P, P)`` (dense; small nets)."""
    B = linear_jacobian_factor(net)
    return B @ B.T


def _wishart_eigenvalues(W1: np.ndarray) -> np.ndarray:
    """``spec(W1^T W1)`` ascending, shape ``(N_i,)``, from the singular values of ``W1``."""
    sv = linalg.svdvals(W1)
    mu = np.zeros(W1.shape[1])
    mu[W1.shape[1] - sv.size :] = np.sort(sv**2)
    return mu


def linear_population_spectrum(net: TwoLayerNet) -> Spectrum:
    """All ``P`` population eigenvalues of a linear network in closed form.

    ``eigenvalues`` (ascending, ``(P,)``) are ``P - N_i`` zeros and ``s + mu_i``,
    ``mu_i`` the squared singular values of ``W1`` (zero-padded to ``N_i``). The rank
    is decided from the singular values ``sqrt(s + mu_i)`` of ``B``. ``extra``
    holds ``s`` and ``mu`` (``(N_i,)``). Cost ``O(N_h N_i min(N_h, N_i))``.
    """
    _require_linear(net)
    t0 = time.perf_counter()
    s = output_norm(net)
    mu = _wishart_eigenvalues(net.W1)
    nonzero = s + mu
    P = net.n_params
    eig = np.zeros(P)
    eig[P - net.n_inputs :] = nonzero
    return Spectrum.from_eigenvalues(eig, decide_rank(np.sqrt(nonzero), P, shape=(P, net.n_inputs)), method="linear-closed-form",
                                     activation=net.activation.name, n_inputs=net.n_inputs, n_hidden=net.n_hidden, samples=None,
                                     seconds=time.perf_counter() - t0, extra={"s": s, "mu": mu})


def linear_batch_spectrum(net: TwoLayerNet, X) -> Spectrum:
    """All ``P`` eigenvalues of the batch Hessian of a linear network at the optimum.

    Nonzero part: ``spec(S^{1/2} A S^{1/2})``, ``A = s I + W1^T W1``, ``S = X^T X / N``,
    taken as the squared singular values of ``X L / sqrt(N)`` (``A = L L^T``,
    Cholesky) so that small eigenvalues keep full relative accuracy. ``X`` has shape
    ``(N, N_i)``; the rank ``min(N_i, N)`` is decided from those singular values.
    Cost ``O(N N_i^2 + N_h N_i^2)``.
    """
    _require_linear(net)
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != net.n_inputs or X.shape[0] < 1:
        raise NearoptError(f"inputs must have shape (N, {net.n_inputs}) with N >= 1, got {X.shape}")
    t0 = time.perf_counter()
    N, P = X.shape[0], net.n_params
    L = linalg.cholesky(linear_gram(net), lower=True)
    sv = linalg.svdvals(X @ L) / np.sqrt(N)
    eig = np.zeros(P)
    eig[P - sv.size :] = np.sort(sv**2)
    return Spectrum.from_eigenvalues(eig, decide_rank(sv, P, shape=(N, P)), method="linear-closed-form", activation=net.activation.name,
                          n_inputs=net.n_inputs, n_hidden=net.n_hidden, samples=N, seconds=time.perf_counter() - t0,
                          extra={"s": output_norm(net)})


def linear_batch_trace_moments(net: TwoLayerNet, samples: int) -> tuple[float, float]:
    """Exact ``(E tr H, E tr H^2)`` over Gaussian batches of ``N = samples`` inputs.

    With ``A = s I + W1^T W1``: ``E tr H = tr A`` and
    ``E tr H^2 = (1 + 1/N) tr A^2 + (tr A)^2 / N`` (Isserlis), so the mean
    squared eigenvalue grows by ``(tr A^2 + (tr A)^2) / (N N_i)`` over the population.
    """
    N = require_positive_int(samples, "number of samples")
    A = linear_gram(net)
    trA, trA2 = float(np.trace(A)), float(np.sum(A * A))
    return trA, (1.0 + 1.0 / N) * trA2 + trA**2 / N


def smallest_nonzero_edge(n_inputs: int, n_hidden: int, s, sigma1: float | None = None):
    """Predicted smallest nonzero eigenvalue ``s + sigma1^2 N_h (1 - sqrt q)^2`` (``q < 1``), ``s`` (``q >= 1``)."""
    mp = wishart_law(n_inputs, n_hidden, sigma1)  # spec(W1^T W1) -> sigma1^2 N_h MP_q
    edge = mp.bulk_edges[0] if mp.atom_mass == 0 else 0.0
    return np.asarray(s, dtype=np.float64) + edge


def pooled_linear_eigenvalues(
    n_inputs: int,
    n_hidden: int,
    teachers: int,
    seed: int = 0,
    *,
    sigma1: float | None = None,
    sigma2: float | None = None,
    samples: int | None = None,
    start: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nonzero Hessian eigenvalues of ``teachers`` random linear teachers.

    Teacher ``t`` (``t = start, ..., start + teachers - 1``) is
    ``sample_teacher(N_i, N_h, "linear", seed=seed + t)``; with ``samples = N`` its
    batch is ``sample_inputs(N, N_i, seed=seed + t)`` (otherwise the population
    Hessian). Chunks ``start`` therefore reproduce the corresponding rows of one
    large call.

    Returns
    -------
    eigenvalues : ndarray, shape (teachers, min(N_i, N))
        Nonzero eigenvalues of each teacher, ascending.
    s : ndarray, shape (teachers,)
        ``||W2||^2`` of each teacher.
    ranks : ndarray of int, shape (teachers,)
        Numerical ranks (from singular values).
    """
    teachers = require_positive_int(teachers, "number of teachers")
    k = n_inputs if samples is None else min(n_inputs, require_positive_int(samples, "number of samples"))
    eig, s, ranks = np.empty((teachers, k)), np.empty(teachers), np.empty(teachers, dtype=int)
    for i in range(teachers):
        t = seed + start + i
        net = sample_teacher(n_inputs, n_hidden, "linear", seed=t, sigma1=sigma1, sigma2=sigma2)
        if samples is None:
            spec = linear_population_spectrum(net)
        else:
            spec = linear_batch_spectrum(net, sample_inputs(samples, n_inputs, seed=t))
        eig[i], s[i], ranks[i] = spec.eigenvalues[-k:], spec.extra["s"], spec.rank.rank
    return eig, s, ranks


def simulate_linear_spectrum(
    n_inputs: int,
    n_hidden: int,
    teachers: int,
    seed: int = 0,
    *,
    sigma1: float | None = None,
    sigma2: float | None = None,
    samples: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact finite-size law of the nonzero spectrum, sampled without networks.

    ``s ~ sigma2^2 chi2_{N_h}`` (``scipy.stats.chi2``) and the nonzero eigenvalues
    of ``W1^T W1``, i.e. of ``W1 W1^T`` when ``N_i > N_h``, from
    ``scipy.stats.wishart`` (``df = max(N_i, N_h)``, scale ``sigma1^2 I``), the rest
    zeros. With ``samples = N`` the batch covariance ``S`` is ``wishart(df=N,
    scale=I/N)`` when ``N >= N_i`` and ``X^T X / N`` from Gaussian draws otherwise.
    Same law as :func:`pooled_linear_eigenvalues`, independent random streams.

    Returns ``eigenvalues`` ``(teachers, min(N_i, N))`` ascending and ``s`` ``(teachers,)``.
    """
    n_inputs, n_hidden = require_positive_int(n_inputs, "N_i"), require_positive_int(n_hidden, "N_h")
    teachers = require_positive_int(teachers, "number of teachers")
    s1, s2 = _scale(sigma1, n_inputs, "sigma1"), _scale(sigma2, n_hidden, "sigma2")
    rng = np.random.default_rng([int(seed), 0x5111])
    s = stats.chi2(df=n_hidden, scale=s2**2).rvs(size=teachers, random_state=rng)
    d, df = min(n_inputs, n_hidden), max(n_inputs, n_hidden)
    G = stats.wishart(df=df, scale=s1**2 * np.eye(d)).rvs(size=teachers, random_state=rng).reshape(teachers, d, d)
    mu = np.zeros((teachers, n_inputs))
    mu[:, n_inputs - d :] = np.linalg.eigvalsh(G)
    if samples is None:
        return s[:, None] + mu, s
    N = require_positive_int(samples, "number of samples")
    k = min(n_inputs, N)
    out = np.empty((teachers, k))
    for t in range(teachers):
        # a random rotation of A is immaterial (S is rotation invariant): use A diagonal
        a_half = np.sqrt(s[t] + mu[t])
        if N >= n_inputs:
            S = stats.wishart(df=N, scale=np.eye(n_inputs) / N).rvs(random_state=rng).reshape(n_inputs, n_inputs)
            out[t] = np.linalg.eigvalsh(a_half[:, None] * S * a_half[None, :])
        else:
            Xa = rng.standard_normal((N, n_inputs)) * a_half / np.sqrt(N)
            out[t] = np.sort(linalg.svdvals(Xa) ** 2)
    return out, s
