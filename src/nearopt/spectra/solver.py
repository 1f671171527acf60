"""One answer path: :func:`solve` answers a :class:`~nearopt.spectra.request.SpectrumRequest` for any operator.

The operator says what it offers (the :class:`SpectralOperator` protocol; every
:class:`~nearopt.curvature.base.Curvature` implements it) and :func:`solve` picks the
route:

* **exact** routes compute every eigenvalue, so they answer every request (the
  ends and the density are read off the full spectrum) and know the rank and the
  inertia: ``structured`` (blocks with multiplicities, when offered and smaller than
  ``P``), ``factor`` (singular values of a square root, when offered: ranks without
  squaring the condition number), ``dense`` (``eigh`` of the matrix);
* **matrix-free** routes answer one end or the density to a stated tolerance:
  ``lanczos`` (ARPACK or the torch thick-restart Lanczos for the largest end, the
  locking / preconditioned LOBPCG for the smallest, the operator's null vectors
  deflated) and ``slq`` (stochastic Lanczos quadrature).

``method="auto"`` answers ``all`` by an exact route only, a density exactly when
the exact block has side at most :data:`AUTO_DENSE_MAX` (SLQ beyond), and an end
by weighing the exact route against the matrix-free one with the operator's cost
model (:meth:`SpectralOperator.route_costs`), going exact when ``k`` is close to ``P``. The smallest end of an operator that is not known to be
positive semi-definite (the Hessian at a saddle) is answered by an exact route only:
the matrix-free smallest end assumes a PSD operator, and the capability check
refuses it with the alternative named.

"Smallest" means the algebraically smallest eigenvalues outside the null space: at a
minimum the smallest nonzero ones, at a saddle the most negative ones. One rule decides
that null space on every route (:class:`~nearopt.policy.NullSpace` on the answer says how
many eigenvalues were taken as zero and why):

1. ``null_dim`` given in the request: that many (``"given"``);
2. the rank is known (:meth:`SpectralOperator.known_rank`, ``P -``
   :func:`~nearopt.theory.rank_prediction.predict_rank` at the teacher): the ``P - rank``
   smallest ``|lambda|`` (``"predicted rank"``), checked against the eigenvalues;
3. otherwise the request's :class:`~nearopt.policy.RankPolicy`: eigenvalues within its
   tolerance (``"structured"`` on the structured route's blocks, ``"rank policy"`` on
   dense eigenvalues, singular values or Ritz values; the operator's exact null vectors
   are deflated first, ``"null vectors"``).

A decision the eigenvalues do not back (a cut without a clear margin or gap, a prediction
the eigenvalues contradict, a null space that fails its check) is not ``clear``: the
answer carries a note and :func:`solve` warns (:class:`NullSpaceWarning`).
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from typing import Any, Protocol

import numpy as np
import scipy.linalg
import torch
from scipy.sparse.linalg import LinearOperator

from ..errors import NearoptError
from ..policy import NullSpace, RankDecision, RankPolicy
from ..threads import sized_threads
from .density import slq
from .extremes import GUARD, Eigenpairs, largest_eigenpairs, smallest_eigenpairs
from .request import SpectrumRequest
from .spectrum import Spectrum

__all__ = ["AUTO_DENSE_MAX", "choose_route", "DENSITY_POINTS", "known_rank", "NULL_CHECK", "NullSpaceWarning", "solve", "SpectralOperator", "StructuredBlocks"]

#: largest ``P`` (or structured block) ``auto`` diagonalises without weighing costs
AUTO_DENSE_MAX = 4000
#: a Ritz value ``|theta| <= NULL_CHECK * threshold`` of a deflated null vector passes the null-space check
NULL_CHECK = 10.0
#: density grid points of an exact-route density
DENSITY_POINTS = 400


class StructuredBlocks(Protocol):
    """What a structured route returns: distinct ``values`` with ``counts`` (summing to ``P``) and the
    side of the largest dense block it diagonalised."""

    values: np.ndarray
    counts: np.ndarray
    block_size: int


class SpectralOperator(Protocol):
    """What :func:`solve` asks of an operator (a :class:`~nearopt.curvature.base.Curvature`)."""

    shape: tuple[int, int]
    device: torch.device
    kind: str
    positive_semidefinite: bool

    def offers(self, route: str) -> bool: ...
    def to_dense(self) -> np.ndarray: ...
    def factor(self) -> np.ndarray | None: ...
    def factor_shape(self, S: np.ndarray) -> tuple[int, int]: ...
    def structured(self) -> StructuredBlocks: ...
    def structured_size(self) -> int: ...
    def null_vectors(self) -> np.ndarray | None: ...
    def preconditioner(self, shift: float = 0.0) -> LinearOperator | None: ...
    def route_costs(self, k: int, which: str) -> dict[str, float]: ...
    def describe(self) -> dict[str, Any]: ...
    def known_rank(self) -> tuple[int, str] | None: ...


class NullSpaceWarning(UserWarning):
    """The count of zero eigenvalues of an answer is not backed clearly by its eigenvalues (module docstring)."""


def known_rank(op: SpectralOperator) -> tuple[int, str] | None:
    """``(rank, basis)`` when the operator knows its rank from theory, else ``None``."""
    method = getattr(op, "known_rank", None)
    return None if method is None else method()


@sized_threads(lambda a: (float(getattr(a["op"], "shape", (0,))[0]) ** 2, getattr(a["op"], "device", "cpu")))  # one thread below P = 10^4
def solve(op: SpectralOperator, request: SpectrumRequest | None = None) -> Spectrum:
    """Answer ``request`` (default: all eigenvalues) for ``op``; see the module docstring.

    Returns
    -------
    Spectrum
        What was computed, by which route, with the rank and inertia when every
        eigenvalue was computed and the accuracy when an iterative route ran.
    """
    request = SpectrumRequest() if request is None else request
    t0 = time.perf_counter()
    route = choose_route(op, request)
    if route in ("dense", "factor", "structured"):
        spec = _exact(op, request, route)
    elif route == "slq":
        spec = _slq(op, request)
    else:
        spec = _matrix_free(op, request)
    spec = dataclasses.replace(spec, seconds=time.perf_counter() - t0, extra={**spec.extra, "route_choice": {"asked": request.method, "chosen": route}})
    if spec.null_space is not None and spec.null_space.warning:
        warnings.warn(spec.null_space.warning, NullSpaceWarning, stacklevel=2)
    return spec


# ---------------------------------------------------------------------- choosing the route
def _exact_route(op: SpectralOperator, request: SpectrumRequest) -> str | None:
    """The exact route for this request (structured, factor, dense), or ``None`` when none fits."""
    P = op.shape[0]
    if op.offers("structured") and not request.vectors and op.structured_size() < P:
        return "structured"
    if op.offers("factor"):
        return "factor"
    return "dense" if op.offers("dense") else None


def _exact_size(op: SpectralOperator, route: str) -> int:
    return op.structured_size() if route == "structured" else op.shape[0]


def choose_route(op: SpectralOperator, request: SpectrumRequest) -> str:
    """The route :func:`solve` takes for ``request`` (module docstring); refuses impossible combinations."""
    P = op.shape[0]
    k = request.count
    if k is not None and k > P:
        raise NearoptError(f"k = {k} exceeds P = {P}: ask which='all' for every eigenvalue")
    psd = bool(getattr(op, "positive_semidefinite", False))
    if request.method != "auto":
        return _check_forced(op, request, psd)
    exact = _exact_route(op, request)
    small = exact is not None and _exact_size(op, exact) <= AUTO_DENSE_MAX
    if request.which == "all":
        if exact is None:
            raise NearoptError(f"no exact route fits this operator (P = {P}); ask which='largest'/'smallest' with k, or which='density'")
        return exact
    if request.which == "density":
        return exact if small and exact is not None else "slq"
    assert k is not None
    if exact is None:
        if request.which == "smallest" and not psd:
            raise NearoptError(_INDEFINITE_SMALLEST.format(kind=op.kind))
        return "lanczos"
    if (request.which == "smallest" and not psd) or 5 * (k + GUARD) > P:
        return exact  # LOBPCG / ARPACK need P >> k, and the matrix-free bottom a PSD operator
    costs = _costs(op, k, request.which)
    return "lanczos" if costs["lanczos"] < costs["exact"] else exact


_INDEFINITE_SMALLEST = (
    "the smallest end of {kind} is answered by exact routes only here: the operator is not known to be positive "
    "semi-definite (a point off the global minimum) and the matrix-free smallest end assumes it; use --method dense "
    "or structured (a smaller problem), or ask which='largest'"
)


def _costs(op: SpectralOperator, k: int, which: str) -> dict[str, float]:
    costs = getattr(op, "route_costs", None)
    if costs is None:
        return {"exact": float(op.shape[0]) ** 3, "lanczos": 0.0}
    return costs(k, which)


def _check_forced(op: SpectralOperator, request: SpectrumRequest, psd: bool) -> str:
    """The capability table for a route named by the caller: one message that names the alternative."""
    route, P = request.method, op.shape[0]
    if route in ("dense", "factor", "structured") and not op.offers(route):
        raise NearoptError(f"{op.kind} offers no {route} route here; use method='auto' (or one of {', '.join(r for r in ('dense', 'factor', 'structured', 'lanczos') if op.offers(r))})")
    if route == "lanczos":
        k = request.count
        assert k is not None
        if k >= P:
            raise NearoptError(f"k = {k} must be smaller than P = {P} for the matrix-free route; use method='auto' or 'dense'")
        if request.which == "smallest" and not psd:
            raise NearoptError(_INDEFINITE_SMALLEST.format(kind=op.kind))
    return route


# ---------------------------------------------------------------------- exact routes
def _exact(op: SpectralOperator, request: SpectrumRequest, route: str) -> Spectrum:
    """Every eigenvalue by ``route``; the null space by the one rule (module docstring); the request's end or density read off them."""
    policy, P = request.policy, op.shape[0]
    U = counts = None
    floor = None
    if route == "structured":
        blocks = op.structured()
        values, counts = np.asarray(blocks.values, dtype=np.float64), np.asarray(blocks.counts, dtype=np.int64)
        decision = policy.from_eigenvalues(values, counts, resolved_size=max(int(blocks.block_size), 1))
        eig = np.repeat(values, counts)
        extra = dict(getattr(blocks, "extra", {}))
    elif route == "factor":
        S = op.factor()
        assert S is not None
        if request.vectors:
            _, s, Vt = np.linalg.svd(S, full_matrices=True)  # H = V s^2 V^T: null vectors first after the flip
            U = np.ascontiguousarray(Vt[::-1].T)
        else:
            s = scipy.linalg.svdvals(S)
        eig = np.zeros(P)
        eig[P - s.size :] = np.sort(s**2)
        decision = policy.from_singular_values(s, P, shape=op.factor_shape(S))
        floor = decision.eigenvalue_tolerance  # singular values resolve their own squares to this
        extra = {"rank_source": "singular values of a square root"}
    else:
        eig, U = _dense_eigh(op, request.vectors)
        decision = policy.from_eigenvalues(eig)
        extra = {"rank_source": "eigenvalues of the dense matrix"}
    null_space = _exact_null_space(op, request, eig, decision, route, floor)
    held, vecs = _select(eig, U, null_space, request)
    desc = dict(op.describe())
    provenance = desc.pop("extra", {})
    return Spectrum.from_eigenvalues(values if counts is not None else eig, decision, counts=counts, method=route, request=request,
                                     extra={**provenance, **extra}, null_space=null_space, held=held,
                                     eigenvectors=vecs if request.vectors else None,
                                     density=_exact_density(eig, request) if request.which == "density" else None, **desc)


def _exact_null_space(op: SpectralOperator, request: SpectrumRequest, eig: np.ndarray, decision: RankDecision, route: str, floor: float | None) -> NullSpace:
    """The null space of every eigenvalue ``eig`` ``(P,)``: given, known rank, or the policy's cut of ``decision``."""
    if request.null_dim is not None:
        n = int(request.null_dim)
        if not 0 <= n < eig.size:
            raise NearoptError(f"null_dim must lie in [0, P) = [0, {eig.size}), got {n}")
        return dataclasses.replace(request.policy.null_space(eig, decision, known=(eig.size - n, "null_dim given")), source="given")
    return request.policy.null_space(eig, decision, known=known_rank(op), source="structured" if route == "structured" else "rank policy", floor=floor)


def _dense_eigh(op: SpectralOperator, vectors: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Ascending eigenvalues (and eigenvectors) of ``op.to_dense()``; on the operator's GPU when it has one."""
    H = op.to_dense()
    device = getattr(op, "device", torch.device("cpu"))
    if device.type == "cuda":
        T = torch.as_tensor(H, device=device)
        if vectors:
            w, V = torch.linalg.eigh(T)
            return w.cpu().numpy(), V.cpu().numpy()
        return torch.linalg.eigvalsh(T).cpu().numpy(), None
    if vectors:
        w, V = scipy.linalg.eigh(H)
        return w, V
    return scipy.linalg.eigvalsh(H), None


def _select(eig: np.ndarray, U: np.ndarray | None, null_space: NullSpace, request: SpectrumRequest) -> tuple[np.ndarray, np.ndarray | None]:
    """The eigenvalues (and vectors) the request holds, from the full ascending spectrum."""
    if request.which in ("all", "density"):
        return eig if request.which == "all" else np.zeros(0), U
    k = request.count
    assert k is not None
    if request.which == "largest":
        idx = np.arange(eig.size - k, eig.size)
    else:
        idx = np.flatnonzero(~null_space.mask(eig))[:k]
    return eig[idx], (None if U is None else U[:, idx])


def _exact_density(eig: np.ndarray, request: SpectrumRequest) -> dict[str, Any]:
    """The exact spectral measure smoothed by a Gaussian of width ``sigma`` on a grid (integrates to ~1)."""
    lo, hi = float(eig[0]), float(eig[-1])
    width = hi - lo if hi > lo else max(abs(hi), 1.0)
    sigma = request.sigma if request.sigma is not None else 0.01 * width
    grid = np.linspace(lo - 3 * sigma, hi + 3 * sigma, DENSITY_POINTS) if request.grid is None else np.asarray(request.grid, dtype=np.float64)
    values, counts = np.unique(eig, return_counts=True)
    z = (grid[:, None] - values[None, :]) / sigma
    dens = (np.exp(-0.5 * z * z) * counts).sum(axis=1) / (eig.size * sigma * np.sqrt(2 * np.pi))
    moments = [float(np.mean(eig**j)) for j in range(5)]
    return {"grid": grid, "density": dens, "density_err": np.zeros_like(dens), "sigma": sigma, "moments": moments, "source": "exact eigenvalues"}


# ---------------------------------------------------------------------- matrix-free routes
def _matrix_free(op: SpectralOperator, request: SpectrumRequest) -> Spectrum:
    k = request.count
    assert k is not None
    progress = request.progress or None
    if request.which == "largest":
        res = largest_eigenpairs(op, k, tol=request.tol, seed=request.seed, return_vectors=request.vectors, progress=progress, maxiter=request.maxiter)
        return _make(op, request, res.values, res.method, vectors=res.vectors, accuracy=_accuracy(res), largest=float(res.values[-1]))
    P = op.shape[0]
    null_dim, null_vectors, source, basis = _null_space_plan(op, request)
    res = smallest_eigenpairs(op, k, null_dim=null_dim, null_vectors=null_vectors, preconditioner=op.preconditioner(), maxiter=request.maxiter,
                              block=request.block, tol=request.tol, seed=request.seed, return_vectors=request.vectors, progress=progress,
                              null_rtol=request.policy.ritz_threshold(P))
    accuracy = _accuracy(res)  # its null_source says how the eigensolver deflated; the answer's null_space says why
    null_space = _ritz_null_space(res, accuracy, source, basis, request.policy)
    return _make(op, request, res.values, res.method, vectors=res.vectors, accuracy=accuracy, smallest_nonzero=float(res.values[0]), null_space=null_space)


def _null_space_plan(op: SpectralOperator, request: SpectrumRequest) -> tuple[int | None, np.ndarray | None, str, str]:
    """What the matrix-free smallest end deflates: ``(null_dim, null_vectors, source, basis)`` by the module's rule."""
    P = op.shape[0]
    if request.null_dim is not None:
        if not 0 <= request.null_dim < P:
            raise NearoptError(f"null_dim must lie in [0, P) = [0, {P}), got {request.null_dim}")
        return int(request.null_dim), None, "given", "null_dim given"
    vectors = op.null_vectors()
    n_vec = 0 if vectors is None else int(vectors.shape[1])
    known = known_rank(op)
    if known is not None and P - known[0] >= n_vec:
        return P - known[0], vectors, "predicted rank", known[1]
    if vectors is not None:
        return n_vec, vectors, "null vectors", "the operator's exact null vectors"
    return None, None, "rank policy", "Ritz values against the rank policy's threshold"


def _ritz_null_space(res: Eigenpairs, accuracy: dict[str, Any], source: str, basis: str, policy: RankPolicy) -> NullSpace:
    """The null space a matrix-free smallest end skipped, and whether its Ritz values back it."""
    if source != "rank policy":
        ok = accuracy.get("null_check", "passed") == "passed"
        return NullSpace(res.null_dim, source, ok, basis if ok else f"{basis}; {accuracy.get('null_check_detail', '')}")
    t = res.null_threshold
    # zero modes' Ritz values are fuzzy (about ||r||^2 / gap): the cut is clear when the kept values lie far above it,
    # by the policy's margin on sqrt(lambda); a continuum of values through the threshold may hide genuine ones below it
    margin = float(np.sqrt(res.values[0] / t)) if res.values.size and res.values[0] > 0 else 0.0
    clear = margin >= policy.clear_margin
    note = f"{basis} ({t:.3g})" if clear else (
        f"the smallest kept Ritz value lies within a factor {margin:.3g} (< {policy.clear_margin:g}, on sqrt(lambda)) of the zero "
        f"threshold {t:.3g}, so genuine eigenvalues may have been taken as zero: pass null_dim (the known null-space dimension) "
        "or use an exact route")
    return NullSpace(res.null_dim, "rank policy", clear, note, t)


def _accuracy(res: Eigenpairs) -> dict[str, Any]:
    """The iterative result's accuracy, with the null-space check folded into ``converged``."""
    acc = {key: val for key, val in res.to_dict().items() if key not in ("eigenvalues", "which")}
    acc["converged"] = bool(res.converged)
    if res.which == "smallest" and res.null_dim:
        found = res.extra.get("null_dim_found")
        bad_dim = found is not None and found != res.null_dim
        bad_value = np.isfinite(res.largest_null) and abs(res.largest_null) > NULL_CHECK * res.null_threshold
        acc["null_check"] = "failed" if (bad_dim or bad_value) else "passed"
        if bad_dim or bad_value:
            acc["converged"] = False
            acc["null_check_detail"] = (
                f"the null space skipped does not hold: {found} zero modes found for null_dim {res.null_dim}" if bad_dim
                else f"a deflated 'null' eigenvalue is {res.largest_null:.3g} (threshold {res.null_threshold:.3g}): null_dim is too large"
            )
    return acc


def _slq(op: SpectralOperator, request: SpectrumRequest) -> Spectrum:
    res = slq(op, n_probes=request.probes or 10, steps=request.steps or 80, seed=request.seed, progress=request.progress if callable(request.progress) else None)
    density = res.to_dict(request.grid, request.sigma)
    density["source"] = "stochastic Lanczos quadrature"
    lo, hi = res.support
    return _make(op, request, np.zeros(0), "slq", accuracy={"converged": True, "products": res.products, "probes": res.n_probes, "steps": res.steps,
                                                            "tolerance": request.tol, "tolerance_reached": None},
                 density=density, ritz_range=[lo, hi])


def _make(op: SpectralOperator, request: SpectrumRequest, eigenvalues: np.ndarray, method: str, *, vectors: np.ndarray | None = None,
          ritz_range: list[float] | None = None, **fields: Any) -> Spectrum:
    """A :class:`Spectrum` of ``op`` (its description: sizes, activation, samples, provenance)."""
    desc = dict(op.describe())
    extra = dict(desc.pop("extra", {}))
    if ritz_range is not None:
        extra["ritz_range"] = ritz_range
    return Spectrum(eigenvalues=np.asarray(eigenvalues, dtype=np.float64), request=request, method=method, n_params=int(op.shape[0]),
                    eigenvectors=vectors if request.vectors else None, extra=extra, **desc, **fields)
