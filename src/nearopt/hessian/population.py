"""The exact population Hessian ``H = E_x[J J^T]`` (``N -> infinity``) at the optimum.

Inputs are ``x ~ N(0, I_{N_i})``. Every block is assembled from the pairwise
Gaussian moments of :mod:`nearopt.gaussian` (``theory.md`` §2)::

    H[v_a, v_c] = gg[a,c]
    H[w_a, v_c] = v_a (b[a,c,0] w_a + b[a,c,1] w_c)
    H[w_a, w_c] = v_a v_c (dd[a,c] I + [w_a w_c] K[a,c] [w_a w_c]^T)

Parameter order as :meth:`nearopt.model.TwoLayerNet.parameters` (``W1`` row-major,
then ``W2``). Routes to the spectrum (:func:`population_spectrum`):

``dense``       ``eigvalsh`` of the ``P x P`` matrix (:func:`population_hessian`);
``structured``  exact, via the row space of ``W1`` (:mod:`nearopt.hessian.structured`);
``lanczos``     the ``k`` largest eigenvalues of the matrix-free operator (eigsh);
``auto``        the cheapest exact route (``structured`` unless it saves nothing).
"""

from __future__ import annotations

import time

import numpy as np
import scipy.linalg

from ..errors import NearoptError
from ..gaussian import PairMoments, pair_moments
from ..model import TwoLayerNet
from ..spectrum import RankDecision, Spectrum, decide_rank, default_rtol

POPULATION_METHODS = ("auto", "dense", "structured", "lanczos")
#: largest matrix side ``auto`` diagonalises densely (float64: ~1.2 GB at 12000)
MAX_DENSE = 12_000
#: eigenvalues returned by the ``lanczos`` route
LANCZOS_K = 20


def net_moments(net: TwoLayerNet) -> PairMoments:
    """Pairwise Gaussian moments of ``net``'s hidden units (arrays ``(N_h, N_h, ...)``)."""
    return pair_moments(net.activation, net.W1 @ net.W1.T)


def assemble(moments: PairMoments, W: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Population Hessian ``(N_h (d+1), N_h (d+1))`` for first-layer weights ``W`` ``(N_h, d)``.

    ``moments`` must belong to the Gram matrix ``W W^T`` (any rotation of the
    rows' space gives the same moments: this is how the structured route reuses them).
    """
    n_h, d = W.shape
    vv = np.outer(v, v)

    def k(x):  # (a, c) -> broadcast over (a, i, c, j)
        return (vv * x)[:, None, :, None]

    Wa_i, Wa_j = W[:, :, None, None], W[:, None, None, :]
    Wc_i, Wc_j = W.T[None, :, :, None], W[None, None, :, :]
    K = moments.K
    Hww = k(K[..., 0, 0]) * Wa_i * Wa_j
    Hww += k(K[..., 0, 1]) * Wa_i * Wc_j
    Hww += k(K[..., 1, 0]) * Wc_i * Wa_j
    Hww += k(K[..., 1, 1]) * Wc_i * Wc_j
    Hww += k(moments.dd) * np.eye(d)[None, :, None, :]
    # H[w_a i, v_c] = v_a (b0[a,c] W[a,i] + b1[a,c] W[c,i])
    Hwv = v[:, None, None] * (moments.b[:, None, :, 0] * W[:, :, None] + moments.b[:, None, :, 1] * W.T[None, :, :])
    m = n_h * d
    H = np.empty((m + n_h, m + n_h))
    H[:m, :m] = Hww.reshape(m, m)
    H[:m, m:] = Hwv.reshape(m, n_h)
    H[m:, :m] = H[:m, m:].T
    H[m:, m:] = moments.gg
    return H


def population_hessian(net: TwoLayerNet) -> np.ndarray:
    """Dense population Hessian at the optimum, shape ``(P, P)``, float64.

    Memory ``8 P^2`` bytes; use :func:`population_spectrum` (structured) or
    :class:`nearopt.hessian.operators.PopulationHessianOperator` for large ``P``.
    """
    return assemble(net_moments(net), net.W1, net.W2.ravel())


def eigen_rtol(block_size: int) -> float:
    """Singular-value tolerance for a rank read off ``eigvalsh`` of a dense block of side ``block_size``.

    ``eigvalsh`` resolves eigenvalues to ~``n eps lambda_max``; with a factor 100
    of safety that is ``10 sqrt(n eps)`` relative on ``sqrt(lambda)``.
    """
    return 10.0 * np.sqrt(default_rtol((block_size, block_size)))


def rank_from_eigenvalues(values: np.ndarray, counts: np.ndarray, block_size: int, rtol: float | None) -> RankDecision:
    """:class:`RankDecision` from eigenvalue blocks ``values`` with multiplicities ``counts``.

    The square root used is ``diag(sqrt(lambda)) V^T`` of each dense block: its
    singular values are exact for ``H`` as assembled, but only as accurate as
    ``eigvalsh`` of the largest block (``block_size``), hence :func:`eigen_rtol`.
    """
    s = np.repeat(np.sqrt(np.clip(values, 0.0, None)), counts)
    return decide_rank(s, s.size, rtol=eigen_rtol(block_size) if rtol is None else rtol)


def _dense(net: TwoLayerNet, rtol):
    eig = scipy.linalg.eigvalsh(population_hessian(net))
    return eig, rank_from_eigenvalues(eig, np.ones(eig.size, dtype=int), eig.size, rtol), None, {}


def _structured(net: TwoLayerNet, rtol):
    from .structured import structured_spectrum

    res = structured_spectrum(net)
    decision = rank_from_eigenvalues(res.values, res.counts, res.block_size, rtol)
    extra = {"reduced_rank_W1": res.row_rank, "complement_multiplicity": res.complement_multiplicity, "reduced_size": res.block_size}
    return res.expand(), decision, (res.values, res.counts), extra


def _lanczos(net: TwoLayerNet, rtol, k: int):
    from .operators import PopulationHessianOperator, extreme_eigenvalues

    op = PopulationHessianOperator(net)
    k = int(min(k, net.n_params - 1))
    if k < 1:
        raise NearoptError("the lanczos route needs P >= 2; use --method dense")
    eig = extreme_eigenvalues(op, k=k, which="LA")
    s = np.sqrt(np.clip(eig, 0.0, None))
    # Only the k largest are known: the decision concerns these k values, not H.
    decision = decide_rank(s, k, rtol=rtol if rtol is not None else eigen_rtol(k))
    extra = {
        "rank_source": "not determined: only the largest eigenvalues are known",
        "P": net.n_params,
        "eigenvalues_held": f"largest {k} of {net.n_params} (ascending)",
        "rank": None,
        "rank_tolerance": None,
        "rank_decision": None,
        "smallest_nonzero": None,
        "condition_number": None,
    }
    return eig, decision, None, extra


def choose_method(net: TwoLayerNet) -> str:
    """``auto``: ``dense`` when ``W1`` has full column rank (nothing to reduce), else ``structured``;
    ``lanczos`` is never chosen (not exact): too large a reduced block raises instead."""
    r = min(net.n_hidden, net.n_inputs)
    size = net.n_hidden * (r + 1)
    if size > MAX_DENSE:
        raise NearoptError(
            f"the exact population spectrum needs a dense block of side {size} (> {MAX_DENSE}); "
            "use --method lanczos for the extreme eigenvalues, or a smaller N_h"
        )
    return "dense" if net.n_inputs <= net.n_hidden else "structured"


def population_spectrum(net: TwoLayerNet, method: str = "auto", rtol: float | None = None, *, k: int = LANCZOS_K) -> Spectrum:
    """Spectrum of the population Hessian at the optimum.

    Parameters
    ----------
    net : TwoLayerNet
    method : {"auto", "dense", "structured", "lanczos"}
        See the module docstring; ``auto`` picks the cheapest exact route.
    rtol : float, optional
        Relative tolerance of the rank decision on singular values (default
        :func:`eigen_rtol` of the largest dense block).
    k : int
        Eigenvalues computed by ``lanczos`` (the largest ``k``).

    Returns
    -------
    Spectrum
        ``samples=None``; ``eigenvalues`` ascending ``(P,)`` (``lanczos``: the
        ``k`` largest only, ``extra`` says so); ``multiplicities`` for ``structured``.
    """
    if method not in POPULATION_METHODS:
        raise NearoptError(f"unknown population method {method!r}; choose from {', '.join(POPULATION_METHODS)}")
    t0 = time.perf_counter()
    if method == "auto":
        method = choose_method(net)
    if method == "dense" and net.n_params > 2 * MAX_DENSE:
        raise NearoptError(f"dense population Hessian with P = {net.n_params} needs {8 * net.n_params**2 / 1e9:.1f} GB; use --method structured")
    if method == "lanczos":
        eig, decision, mult, extra = _lanczos(net, rtol, k)
    else:
        eig, decision, mult, extra = (_dense if method == "dense" else _structured)(net, rtol)
    moments_route = "closed-form" if _has_closed_form(net) else "gauss-hermite"
    return Spectrum(
        eigenvalues=eig,
        rank=decision,
        method=method,
        activation=net.activation.name,
        n_inputs=net.n_inputs,
        n_hidden=net.n_hidden,
        samples=None,
        seconds=time.perf_counter() - t0,
        multiplicities=mult,
        extra={"rank_source": "eigenvalues of the exact dense blocks", "expectations": moments_route, **extra},  # lanczos overrides
    )


def _has_closed_form(net: TwoLayerNet) -> bool:
    from ..gaussian import closed_form_moments

    return closed_form_moments(net.activation, 1.0, 0.0, 1.0) is not None
