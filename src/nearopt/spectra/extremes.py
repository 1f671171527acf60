"""Both ends of a symmetric PSD spectrum at scale: the ``k`` largest and the ``k`` smallest nonzero eigenvalues.

Operator-generic: every function takes a symmetric :class:`scipy.sparse.linalg.LinearOperator`
(every :class:`~nearopt.curvature.base.Curvature` is one) and, for the smallest end,
an optional preconditioner ``M ≈ H^{-1}`` (a LinearOperator; the population Hessian
builds one from its per-unit blocks, ``docs/scale.md``).

* :func:`largest_eigenpairs` -- ARPACK (``eigsh``, ``which="LA"``): the top of a
  Hessian spectrum is well separated and Lanczos needs a few dozen products.
* :func:`smallest_eigenpairs` -- LOBPCG (``scipy.sparse.linalg.lobpcg``) with the
  preconditioner, the null space deflated: known null vectors are constraints
  (``Y``), a known null-space dimension enlarges the block, and otherwise zero
  eigenvalues found on the way are detected (``|theta| <= null_rtol * lambda_max``,
  by default the :class:`~nearopt.policy.RankPolicy`'s Ritz threshold) and
  deflated in further rounds. ARPACK's ``which="SA"`` on the same operator
  needs orders of magnitude more products at the bottom of an ill-conditioned
  spectrum (``benchmarks/bench_extremes.py`` measures it).

Accuracy is stated, not assumed: for each Ritz pair ``(theta_i, x_i)`` the relative
residual ``rho_i = ||H x_i - theta_i x_i|| / |theta_i|`` is computed with one extra
block product after convergence; ``rho_i <= tol`` is the stopping rule and the
eigenvalue's relative error is at most about ``rho_i^2 theta_i / gap_i``
(Rayleigh quotient bound; ``gap_i`` to the rest of the spectrum, estimated by the
distance to the last Ritz value of the block), reported as ``error_bound``.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.linalg
import torch
from scipy.sparse.linalg import LinearOperator, eigsh, lobpcg

from ..errors import NearoptError, require_positive_int
from ..policy import DEFAULT_POLICY
from ..resources import available_device_memory, available_memory
from .lanczos import thick_restart_lanczos
from .lobpcg import GUARD as LOCKING_GUARD
from .lobpcg import lobpcg_smallest, ritz_bound
from .torch_ops import ProductMeter, SymmetricOperator, residual_norms, through_numpy, torch_side

__all__ = [
    "CountingOperator", "DEFAULT_TOL", "dense_extremes", "Eigenpairs", "eigenpairs", "GUARD", "largest_eigenpairs", "locking_block", "LOCKING_MEMORY",
    "MAX_BLOCK", "smallest_eigenpairs"
]

#: default relative residual ``||H x - theta x|| / theta`` a Ritz pair must reach
DEFAULT_TOL = 1e-6
#: extra block vectors LOBPCG carries beyond those asked for (convergence of the last wanted one)
GUARD = 4
#: largest LOBPCG block (memory ``~ 9 P block`` float64)
MAX_BLOCK = 2000
#: memory the locking LOBPCG's blocks may take (bytes), at most half what is available
LOCKING_MEMORY = 5 << 29


@dataclass
class Eigenpairs:
    """Extreme eigenpairs of a symmetric operator with their accuracy.

    ``values`` ``(k,)`` ascending; ``vectors`` ``(P, k)`` (columns match ``values``)
    or ``None``; ``residuals`` ``(k,)`` relative residuals ``||H x - theta x|| / |theta|``;
    ``error_bound`` ``(k,)`` estimated relative eigenvalue errors; ``null_dim`` the
    dimension of the null space deflated (smallest end) and ``null_source`` where it
    came from (``"given"``, ``"vectors"``, ``"detected"``, ``"none"``);
    ``null_vectors`` ``(P, null_dim)`` when they were computed or given and asked for.
    """

    values: np.ndarray
    which: str
    residuals: np.ndarray
    error_bound: np.ndarray
    tol: float
    converged: bool
    method: str
    products: int
    iterations: int
    seconds: float
    vectors: np.ndarray | None = None
    null_dim: int = 0
    null_source: str = "none"
    null_threshold: float = float("nan")
    null_vectors: np.ndarray | None = None
    largest_null: float = float("nan")
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def tolerance_reached(self) -> float:
        """``max rho_i``: the largest relative residual of the returned pairs."""
        return float(self.residuals.max()) if self.residuals.size else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON fields (no vectors)."""
        return {
            "which": self.which,
            "eigenvalues": self.values,
            "relative_residuals": self.residuals,
            "error_bound": self.error_bound,
            "tolerance": self.tol,
            "tolerance_reached": self.tolerance_reached,
            "converged": self.converged,
            "eigensolver": self.method,
            "products": self.products,
            "iterations": self.iterations,
            "null_dim": self.null_dim,
            "null_source": self.null_source,
            "null_threshold": self.null_threshold,
            "largest_null_eigenvalue": self.largest_null,
            **self.extra,
        }


class CountingOperator(SymmetricOperator):
    """``op`` that counts the vectors it multiplies and reports progress on stderr
    (a :class:`~nearopt.spectra.torch_ops.ProductMeter`).

    ``progress``: ``None`` (silent), ``True`` (a line to stderr at most every
    ``every`` seconds) or a callable ``(products, seconds) -> None``.
    """

    def __init__(self, op: LinearOperator, progress: bool | Callable[[int, float], None] | None = None, every: float = 10.0, label: str = ""):
        super().__init__(dtype=np.float64, shape=op.shape)
        self.op, self.meter = op, ProductMeter(progress, label, every)

    @property
    def products(self) -> int:
        return self.meter.products

    def _matmat(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        out = np.asarray(self.op.matmat(X), dtype=np.float64)
        self.meter.add(X.shape[1])
        return out


def _check_k(op: LinearOperator, k: int) -> int:
    k = require_positive_int(k, "k")
    if op.shape[0] != op.shape[1]:
        raise NearoptError(f"the operator must be square, got shape {op.shape}")
    if k >= op.shape[0]:
        raise NearoptError(f"k = {k} must be smaller than the operator size {op.shape[0]} (use a dense route)")
    return k


def _residuals(op: LinearOperator, X: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """:func:`~nearopt.spectra.torch_ops.residual_norms` for NumPy pairs (ARPACK's, SciPy's LOBPCG's, a
    dense ``eigh``'s), through ``op``'s NumPy product (so a counting operator counts them)."""
    return residual_norms(through_numpy(op), torch.as_tensor(X), torch.as_tensor(theta)).numpy()


def largest_eigenpairs(
    op: LinearOperator,
    k: int = 20,
    *,
    tol: float = DEFAULT_TOL,
    seed: int = 0,
    return_vectors: bool = False,
    maxiter: int | None = None,
    solver: str = "auto",
    progress: bool | Callable[[int, float], None] | None = None,
) -> Eigenpairs:
    """The ``k`` largest eigenvalues (ascending), residuals checked.

    ``solver``: ``"arpack"`` (SciPy's ``eigsh(which="LA")``, ARPACK's own ``tol`` set
    to ``tol**2``: it bounds the Ritz value error), ``"lanczos"`` (the torch
    thick-restart Lanczos of :func:`~nearopt.spectra.lanczos.thick_restart_lanczos`,
    same Krylov spaces and stopping rule, basis on the operator's device) or ``"auto"``:
    the torch one for an operator on a GPU (ARPACK would move every vector to the
    host), ARPACK otherwise. Afterwards one block product gives the relative residuals.
    Cost: a few dozen products for a separated top (``docs/scale.md``).
    """
    k = _check_k(op, k)
    if solver not in ("auto", "arpack", "lanczos"):
        raise NearoptError(f"solver must be 'auto', 'arpack' or 'lanczos', got {solver!r}")
    t0 = time.perf_counter()
    ncv = min(op.shape[0], max(2 * k + 1, k + 20))
    matmat, device = torch_side(op)
    if solver == "lanczos" or (solver == "auto" and device.type == "cuda" and ncv < op.shape[0]):
        found = thick_restart_lanczos(matmat, op.shape[0], k, ncv=ncv, tol=tol**2, maxiter=1000 if maxiter is None else maxiter, seed=seed, device=device, progress=progress)
        theta, Xt, products, iterations, method = found.values, found.vectors, found.products, found.restarts, "lanczos-thick-restart"
        res = residual_norms(matmat, Xt, torch.as_tensor(theta, device=device)).cpu().numpy()
        products += k
        X = Xt.cpu().numpy() if return_vectors else None
    else:
        cop = CountingOperator(op, progress, label="largest: ")
        v0 = np.random.default_rng(seed).standard_normal(op.shape[0])
        theta, X = eigsh(cop, k=k, which="LA", tol=tol**2, v0=v0, ncv=ncv, maxiter=maxiter)
        order = np.argsort(theta)
        theta, X = theta[order], X[:, order]
        iterations = cop.products
        res = _residuals(cop, X, theta)
        products, method = cop.products, "arpack-LA"
    rel = res / np.maximum(np.abs(theta), np.finfo(np.float64).tiny)
    bound = ritz_bound(theta, res, theta[0] if k > 1 else 0.0)
    return Eigenpairs(
        values=theta,
        which="largest",
        residuals=rel,
        error_bound=bound,
        tol=tol,
        converged=bool(np.all(rel <= tol)),
        method=method,
        products=products,
        iterations=iterations,
        seconds=time.perf_counter() - t0,
        vectors=X if return_vectors else None,
        extra={"device": str(device)},
    )


def _orthonormal(Y: np.ndarray, P: int) -> np.ndarray:
    Y = np.asarray(Y, dtype=np.float64)
    if Y.ndim == 1:
        Y = Y[:, None]
    if Y.shape[0] != P:
        raise NearoptError(f"null vectors have {Y.shape[0]} rows, expected P = {P}")
    if not np.all(np.isfinite(Y)):
        raise NearoptError("null vectors contain non-finite entries")
    Q, R = np.linalg.qr(Y)
    d = np.abs(np.diag(R))
    keep = d > 1e-10 * (d.max() if d.size else 1.0)
    return Q[:, keep]


def _lobpcg_round(A: LinearOperator, X: np.ndarray, M: LinearOperator | None, Y: np.ndarray | None, tol_abs: float, maxiter: int) -> tuple[np.ndarray, np.ndarray, int]:
    with warnings.catch_warnings():
        # non-convergence is judged from the residuals below, not from SciPy's warning
        warnings.simplefilter("ignore", UserWarning)
        theta, V, hist = lobpcg(A, X, M=M, Y=Y if Y is not None and Y.shape[1] else None, tol=tol_abs, maxiter=maxiter, largest=False, retLambdaHistory=True)
    order = np.argsort(theta)
    return np.asarray(theta)[order], np.asarray(V)[:, order], max(len(hist) - 1, 0)


def _dense_bottom(op: LinearOperator, Y: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``m`` smallest eigenpairs of ``op`` on the complement of ``Y`` by a dense ``eigh`` (small ``P``)."""
    P = op.shape[0]
    Q = scipy.linalg.null_space(Y.T) if Y.shape[1] else np.eye(P)
    Hq = Q.T @ op.matmat(Q)
    theta, S = scipy.linalg.eigh(0.5 * (Hq + Hq.T), subset_by_index=[0, m - 1])
    X = Q @ S
    return theta, X, _residuals(op, X, theta)


def locking_block(P: int, k: int, n_fixed: int = 0, budget: int | None = None, device: Any = "cpu") -> int:
    """Block size for :func:`~nearopt.spectra.lobpcg.lobpcg_smallest`: ``k + GUARD`` when the blocks
    (``≈ (7 m + 2 k + n_fixed) P`` floats) fit ``budget``, else the largest ``m ≥ 2`` that fits.

    Default budget: on the host ``LOCKING_MEMORY`` or half the available memory, whichever is
    smaller (the cap keeps ``P = 4·10⁶`` under 4 GB in all); on a GPU half its free memory
    (a larger block costs no more products per pair and saves iterations)."""
    if budget is None:
        on_gpu = torch.device(device).type == "cuda"
        budget = available_device_memory(device) // 2 if on_gpu else min(LOCKING_MEMORY, available_memory() // 2)
    fit = (budget // (8 * P) - 2 * k - n_fixed) // 7
    if fit < 2:
        raise NearoptError(
            f"the smallest-eigenvalue blocks for P = {P}, k = {k} need about {8 * P * (14 + 2 * k + n_fixed) / 2**30:.1f} GiB; "
            "ask for a smaller k or free memory"
        )
    return int(min(k + LOCKING_GUARD, fit))


def _smallest_locking(op, k, cop, Y, M, *, tol, lambda_max, threshold, maxiter, block, seed, return_vectors, source, t0) -> Eigenpairs:
    """:func:`smallest_eigenpairs` with the null space known: the locking LOBPCG in torch."""
    matmat, device = torch_side(op)
    precondition = torch_side(M)[0] if M is not None else None
    P = op.shape[0]
    m = block if block is not None else locking_block(P, k, Y.shape[1], device=device)
    Yt = torch.as_tensor(Y, device=device) if Y.shape[1] else None
    res = lobpcg_smallest(
        matmat, P, k, lambda_max=lambda_max, precondition=precondition, constraints=Yt,
        tol=tol, block=m, maxiter=maxiter, seed=seed, device=device, meter=cop.meter,
    )
    theta = res.values
    rel = res.residuals / np.maximum(np.abs(theta), np.finfo(np.float64).tiny)
    return Eigenpairs(
        values=theta,
        which="smallest",
        residuals=rel,
        error_bound=res.bounds,
        tol=tol,
        converged=res.converged,
        method="lobpcg-locking" + ("+preconditioner" if M is not None else ""),
        products=res.products,  # (the shared meter: the lambda_max estimate's products included)
        iterations=res.iterations,
        seconds=time.perf_counter() - t0,
        vectors=res.vectors.cpu().numpy() if return_vectors else None,
        null_dim=int(Y.shape[1]),
        null_source=source,
        null_threshold=threshold,
        null_vectors=Y if return_vectors else None,
        extra={"lambda_max": lambda_max, "block": int(m), "at_rounding_floor": int(res.at_floor.sum()), "rounding_floor": res.floor, "restarts": res.restarts, "device": str(device)},
    )


def smallest_eigenpairs(
    op: LinearOperator,
    k: int = 20,
    *,
    null_dim: int | None = None,
    null_vectors: np.ndarray | None = None,
    preconditioner: LinearOperator | None = None,
    tol: float = DEFAULT_TOL,
    null_rtol: float | None = None,
    lambda_max: float | None = None,
    maxiter: int | None = None,
    guard: int = GUARD,
    block: int | None = None,
    solver: str = "auto",
    seed: int = 0,
    return_vectors: bool = False,
    progress: bool | Callable[[int, float], None] | None = None,
) -> Eigenpairs:
    """The ``k`` smallest nonzero eigenvalues (ascending) of a symmetric PSD operator by preconditioned LOBPCG.

    Two solvers. When the null space is known (``null_dim`` given and equal to the
    number of ``null_vectors``, or ``0``), the **locking** LOBPCG of
    :mod:`nearopt.spectra.lobpcg` runs in torch on the operator's device with a block of
    ``block`` vectors (default :func:`locking_block`: ``k + 4`` within a memory budget),
    locking pairs as they converge. Otherwise (zero modes to find by number or by
    threshold) SciPy's ``lobpcg`` runs with a block of ``k + n0 + guard``, enlarged
    when it fills with zero modes. ``solver``: ``"auto"``, ``"locking"`` or ``"scipy"``.

    Parameters
    ----------
    op : LinearOperator ``(P, P)``
    k : int
        How many nonzero eigenvalues.
    null_dim : int, optional
        Known dimension of the null space (e.g. ``P - predict_rank(...).rank``, or
        the zero-eigenvalue count of the structured route). Zero modes beyond
        ``null_vectors`` are then found inside an enlarged block. ``None``: detect.
    null_vectors : array ``(P, n0)``, optional
        Known null vectors (ReLU's rescaling modes, ...): deflated exactly as
        LOBPCG constraints.
    preconditioner : LinearOperator, optional
        ``M ≈ H^{-1}`` (SPD). Without one, LOBPCG is plain (slow at an ill-conditioned bottom).
    tol : float
        Relative residual ``||H x - theta x|| / theta`` each returned pair must reach.
    null_rtol : float, optional
        A Ritz value ``|theta| <= null_rtol * lambda_max`` is a zero mode (default the rank
        policy's :meth:`~nearopt.policy.RankPolicy.ritz_threshold` at side ``P``).
    lambda_max : float, optional
        ``||H||`` if known (else a short ARPACK run estimates it; it scales the null threshold).
    maxiter : int, optional
        LOBPCG iterations in all rounds together (default 400 for SciPy's, 3000 for the locking solver).

    Returns
    -------
    Eigenpairs
        ``which="smallest"``; ``null_dim``/``null_source`` say what was deflated;
        ``null_vectors`` (when ``return_vectors``) an orthonormal basis of it.
    """
    k = _check_k(op, k)
    P = op.shape[0]
    t0 = time.perf_counter()
    cop = CountingOperator(op, progress, label="smallest: ")
    if lambda_max is None:
        lambda_max = float(eigsh(cop, k=1, which="LA", tol=1e-3, v0=np.random.default_rng(seed + 1).standard_normal(P), return_eigenvectors=False)[0])
    if not (np.isfinite(lambda_max) and lambda_max > 0):
        raise NearoptError(f"the operator's largest eigenvalue is {lambda_max:g}; the smallest nonzero eigenvalues need a nonzero PSD operator")
    threshold = (DEFAULT_POLICY.ritz_threshold(P) if null_rtol is None else null_rtol) * lambda_max
    Y = _orthonormal(null_vectors, P) if null_vectors is not None else np.zeros((P, 0))
    source = "vectors" if Y.shape[1] else "none"
    if null_dim is not None:
        null_dim = int(null_dim)
        if null_dim < 0 or null_dim >= P:
            raise NearoptError(f"null_dim must lie in [0, P) = [0, {P}), got {null_dim}")
        source = "vectors" if Y.shape[1] and null_dim == Y.shape[1] else "given"
    unknown = max((null_dim or 0) - Y.shape[1], 0)
    if solver not in ("auto", "locking", "scipy"):
        raise NearoptError(f"solver must be 'auto', 'locking' or 'scipy', got {solver!r}")
    known = null_dim is not None and null_dim == Y.shape[1]
    if solver == "locking" and not known:
        raise NearoptError("the locking solver needs the whole null space: pass null_dim (= the number of null_vectors, or 0)")
    if solver != "scipy" and known and 5 * (k + guard + Y.shape[1]) <= P:
        return _smallest_locking(
            op, k, cop, Y, preconditioner, tol=tol, lambda_max=lambda_max, threshold=threshold,
            maxiter=3000 if maxiter is None else maxiter, block=block, seed=seed,
            return_vectors=return_vectors, source=source, t0=t0,
        )
    maxiter = 400 if maxiter is None else maxiter
    def zero_modes(theta: np.ndarray) -> np.ndarray:
        """Which Ritz values are zero modes: the ``unknown`` smallest when ``null_dim`` is given
        (tiny nonzero eigenvalues stay nonzero), else those under the threshold."""
        if null_dim is not None:
            return np.arange(theta.size) < unknown
        return theta <= threshold

    rng = np.random.default_rng(seed)
    iterations, rounds, left = 0, 0, maxiter
    M = preconditioner
    X_prev = np.zeros((P, 0))
    while True:
        m = min(k + unknown + guard, P - Y.shape[1] - 1)
        if m > MAX_BLOCK:
            raise NearoptError(
                f"the smallest-eigenvalue block would hold {m} vectors (k={k}, {unknown} undeflated zero modes); "
                "pass the null vectors (null_vectors=) or a smaller k"
            )
        if 5 * (m + Y.shape[1]) > P:  # LOBPCG needs P >> block: small operators go dense (exact)
            theta, X, res = _dense_bottom(cop, Y, m)
            rounds += 1
        else:
            # first to an absolute tolerance relative to ||H||, then (restarting from the
            # Ritz vectors) to one relative to the wanted eigenvalues themselves
            X0 = np.hstack([X_prev, rng.standard_normal((P, m - X_prev.shape[1]))])
            theta, X, it = _lobpcg_round(cop, X0, M, Y, tol * lambda_max, left)
            iterations, left, rounds = iterations + it, left - it, rounds + 1
            for _ in range(4):
                res = _residuals(cop, X, theta)
                zero = zero_modes(theta)
                wanted = zero | ((np.cumsum(~zero) <= k) & ~zero)
                ok = np.where(zero, res <= tol * lambda_max, res <= tol * np.abs(theta))
                if ok[wanted].all() or left <= 0:
                    break
                target = 0.5 * tol * max(float(np.abs(theta[wanted & ~zero]).min()) if (wanted & ~zero).any() else threshold, threshold)
                theta, X, it = _lobpcg_round(cop, X, M, Y, target, left)
                iterations, left = iterations + it, left - it
        zero = zero_modes(theta)
        n_zero = int(zero.sum())
        if int((~zero).sum()) < k and null_dim is None and left > 0 and m < P - Y.shape[1] - 1:
            # the block was (nearly) full of zero modes: enlarge it (warm start) and look further;
            # detected modes are not deflated as constraints, being accurate only to the tolerance
            unknown += max(n_zero, k)
            X_prev = X
            continue
        break
    sel = np.flatnonzero(~zero)[:k]
    if sel.size < k:
        raise NearoptError(
            f"found only {sel.size} nonzero eigenvalues in the block (null threshold {threshold:.3g}); "
            "raise maxiter, or pass null_dim / null_vectors"
        )
    if n_zero:
        Y = _orthonormal(np.hstack([Y, X[:, zero]]), P)
        if source in ("none", "vectors"):
            source = "detected" if source == "none" else "vectors+detected"
    if source == "none":
        source = "detected"  # looked for zero modes among the smallest and found none
    theta_k, X_k, res_k = theta[sel], X[:, sel], res[sel]
    rel = res_k / np.abs(theta_k)
    extra = {"lambda_max": lambda_max, "block": int(m), "rounds": rounds, "zero_modes_in_block": n_zero}
    if null_dim is not None and Y.shape[1] != null_dim:
        extra["null_dim_found"] = int(Y.shape[1])  # the given dimension disagrees with what the block showed
    return Eigenpairs(
        values=theta_k,
        which="smallest",
        residuals=rel,
        error_bound=ritz_bound(theta_k, res_k, theta[-1]),
        tol=tol,
        converged=bool(np.all(rel <= tol)),
        method="lobpcg" + ("+preconditioner" if M is not None else ""),
        products=cop.products,
        iterations=iterations,
        seconds=time.perf_counter() - t0,
        vectors=X_k if return_vectors else None,
        null_dim=int(null_dim) if null_dim is not None else int(Y.shape[1]),
        null_source=source,
        null_threshold=threshold,
        null_vectors=Y if return_vectors else None,
        largest_null=float(theta[zero].max()) if n_zero else float("nan"),
        extra=extra,
    )


def eigenpairs(op: LinearOperator, k: int = 20, which: str = "largest", **kwargs: Any) -> Eigenpairs:
    """:func:`largest_eigenpairs` or :func:`smallest_eigenpairs` by ``which``."""
    if which == "largest":
        return largest_eigenpairs(op, k, **kwargs)
    if which == "smallest":
        return smallest_eigenpairs(op, k, **kwargs)
    raise NearoptError(f"which must be 'largest' or 'smallest', got {which!r}")


def dense_extremes(H: np.ndarray, k: int, which: str, null_dim: int = 0) -> np.ndarray:
    """Reference: the same ``k`` values from a dense ``eigvalsh`` (ascending), skipping ``null_dim`` zero modes."""
    eig = scipy.linalg.eigvalsh(H)
    return eig[-k:] if which == "largest" else eig[null_dim : null_dim + k]
