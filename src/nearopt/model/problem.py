"""What is being analysed: a :class:`Problem` (teacher, student, input law, trained blocks).

Every curvature operator, spectrum route and dynamics run takes one immutable
``Problem``. The student defaults to the teacher (the global minimum the paper
studies); the input law defaults to isotropic Gaussian inputs ``x ~ N(0, I)``;
both layers train by default. Parameters are ordered as
:meth:`nearopt.model.network.TwoLayerNet.parameters` (``W1`` row-major, then ``W2``);
when only some blocks train, :attr:`Problem.trained_indices` picks them out of
that vector, in the same order.

Example::

    import nearopt as no
    teacher = no.sample_teacher(8, 4, "erf", seed=0)
    problem = no.Problem(teacher)                    # student = teacher, x ~ N(0, I)
    committee = problem.replace(trained="first")     # second layer fixed
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import scipy.linalg
import torch

from ..errors import NearoptError, require_positive_int
from ..policy import RankPolicy
from ..tolerances import EPS
from . import io
from .io import TRAINED_BLOCKS
from .network import BLOCKS, TwoLayerNet, capability_error, sample_inputs

__all__ = [
    "as_problem", "Eigenspace", "GaussianInputs", "InputLaw", "Problem", "PSD_RTOL", "require_paper_setting", "SYMMETRY_RTOL", "TRAINED_BLOCKS",
    "whiten"
]



#: asymmetry ``max|S - S^T|`` allowed in a covariance, relative to ``max|S|`` (rounding of ``X^T X / N`` passes)
SYMMETRY_RTOL = 1e-10
#: eigenvalues down to ``-PSD_RTOL * max eigenvalue`` are rounding (set to 0); lower ones make a covariance invalid
PSD_RTOL = 1e-10


@dataclass(frozen=True)
class Eigenspace:
    """One eigenspace of a covariance: ``Sigma u = value u`` for ``u`` in it.

    ``basis`` ``(N_i, multiplicity)`` orthonormal, or ``None`` for the *bulk*: the
    orthogonal complement of every explicit eigenvector (never formed).
    """

    value: float
    basis: np.ndarray | None
    multiplicity: int


class GaussianInputs:
    """Gaussian inputs ``x ~ N(0, Sigma)``; ``Sigma = I_{N_i}`` unless a covariance is given.

    ``GaussianInputs(N_i)`` is the isotropic law of the paper.
    ``GaussianInputs(covariance=S)`` takes any symmetric positive semi-definite
    ``S`` ``(N_i, N_i)``; :meth:`spiked` builds ``I + sum_k theta_k u_k u_k^T``
    without forming it; :meth:`from_data` is the Gaussian-equivalent law of a batch
    (``Sigma = X^T X / N``); :meth:`load` reads an ``.npy``.

    Internally ``Sigma = bulk (I - Q Q^T) + Q diag(values) Q^T`` with ``Q``
    ``(N_i, m)`` orthonormal: ``m = 0`` for the identity, ``m = k`` for a spiked
    law, ``m = N_i`` for a general matrix (from ``eigh``). Products with
    ``Sigma`` and ``Sigma^{1/2}`` (:meth:`matmul`) use this form, in ``O(N_i m)``
    per row.

    Validation (one :class:`~nearopt.errors.NearoptError` each): finite; square
    (2-D); ``N_i x N_i`` when ``n_inputs`` is given too; symmetric within
    ``SYMMETRY_RTOL``; positive semi-definite within ``PSD_RTOL`` (eigenvalues in
    ``[-PSD_RTOL lambda_max, 0)`` are rounding and count as 0); not zero.
    """

    def __init__(self, n_inputs: int | None = None, covariance=None, *, name: str | None = None):
        if covariance is None:
            if n_inputs is None:
                raise NearoptError("GaussianInputs needs n_inputs or a covariance")
            n = require_positive_int(n_inputs, "N_i")
            self._init(n, 1.0, np.zeros(0), np.zeros((n, 0)), None, name or "gaussian")
            return
        S = _validate_covariance(covariance, n_inputs)
        n = S.shape[0]
        if np.array_equal(S, np.eye(n)):  # exactly the identity: the isotropic law, exact routes kept
            self._init(n, 1.0, np.zeros(0), np.zeros((n, 0)), None, name or "gaussian")
            return
        lam, Q = scipy.linalg.eigh(S)
        lam = np.where(lam < 0, 0.0, lam)  # rounding-level negatives (validated above)
        self._init(n, 0.0, lam, Q, S, name or "gaussian-covariance")

    def _init(self, n: int, bulk: float, values: np.ndarray, vectors: np.ndarray, dense: np.ndarray | None, name: str) -> None:
        self._n = n
        self._bulk = float(bulk)
        self._values = np.asarray(values, dtype=np.float64)
        self._vectors = np.asarray(vectors, dtype=np.float64)
        self._dense = dense
        self.name = name
        for arr in (self._values, self._vectors):
            arr.setflags(write=False)
        if dense is not None:
            dense.setflags(write=False)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def spiked(cls, n_inputs: int, strengths, directions=None, *, seed: int | None = 0) -> GaussianInputs:
        """Spiked covariance ``Sigma = I + sum_k theta_k u_k u_k^T`` (``u_k`` unit vectors).

        ``strengths`` ``(k,)``: the ``theta_k`` (``> -1`` keeps variance along
        ``u_k``; ``-1`` removes it). ``directions`` ``(k, N_i)`` (normalised here;
        need not be orthogonal), default ``k`` random orthonormal directions drawn
        with ``seed``. Eigen-structure: ``1`` on the complement of the spikes
        (exactly, never formed), and ``k`` eigenvalues from a ``k x k`` problem.
        """
        n = require_positive_int(n_inputs, "N_i")
        theta = np.atleast_1d(np.asarray(strengths, dtype=np.float64))
        if theta.ndim != 1 or theta.size < 1 or not np.all(np.isfinite(theta)):
            raise NearoptError(f"spike strengths must be a non-empty 1-D array of finite numbers, got {strengths!r}")
        k = theta.size
        if directions is None:
            if k > n:
                raise NearoptError(f"{k} random orthogonal spikes do not fit in N_i = {n} dimensions")
            rng = np.random.default_rng([0 if seed is None else int(seed), 0x5C])
            U = np.linalg.qr(rng.standard_normal((n, k)))[0].T
        else:
            if np.size(directions) != k * n:
                raise NearoptError(f"spike directions must have shape ({k}, {n}), got {np.shape(directions)}")
            U = np.asarray(directions, dtype=np.float64).reshape(k, n)
            if not np.all(np.isfinite(U)):
                raise NearoptError("spike directions contain NaN or infinite values")
            norms = np.linalg.norm(U, axis=1)
            if np.any(norms == 0):
                raise NearoptError("a spike direction is the zero vector")
            U = U / norms[:, None]
        # I + U^T diag(theta) U = I + Q (s Z^T diag(theta) Z s) Q^T with U^T = Q s Z^T (thin SVD)
        Q, s, Zt = scipy.linalg.svd(U.T, full_matrices=False)
        keep = s > max(U.shape) * EPS * s[0]
        Q, B = Q[:, keep], (s[keep, None] * Zt[keep]) @ (theta[:, None] * (Zt[keep].T * s[keep]))
        mu, Y = scipy.linalg.eigh(0.5 * (B + B.T))
        values = 1.0 + mu
        top = max(1.0, float(values.max()))
        if values.min() < RankPolicy.psd_floor(np.append(values, top), PSD_RTOL):
            raise NearoptError(f"the spiked covariance is not positive semi-definite (smallest eigenvalue {values.min():.3g}); strengths must keep 1 + theta >= 0")
        law = cls.__new__(cls)
        law._init(n, 1.0, np.where(values < 0, 0.0, values), Q @ Y, None, "gaussian-spiked")
        return law

    @classmethod
    def from_data(cls, X) -> GaussianInputs:
        """The Gaussian-equivalent law of a batch ``X`` ``(N, N_i)``: ``Sigma = X^T X / N`` (second moment).

        For a linear network the batch Hessian on ``X`` equals the population
        Hessian under this law (``docs/inputs.md``).
        """
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or min(X.shape) < 1:
            raise NearoptError(f"inputs must have shape (N, N_i), got {X.shape}")
        if not np.all(np.isfinite(X)):
            raise NearoptError("inputs contain NaN or infinite values")
        S = X.T @ X / X.shape[0]
        return cls(covariance=0.5 * (S + S.T), name="gaussian-equivalent")

    @classmethod
    def load(cls, path, n_inputs: int | None = None) -> GaussianInputs:
        """Read a covariance ``(N_i, N_i)`` from an ``.npy`` file (validated as in the constructor)."""
        path = Path(path)
        S = io.load_real_array(path, "covariance")
        try:
            return cls(n_inputs, covariance=S)
        except NearoptError as exc:
            raise NearoptError(f"covariance file {path}: {exc}") from None

    # ------------------------------------------------------------------ the law
    @property
    def n_inputs(self) -> int:
        """``N_i``."""
        return self._n

    @property
    def isotropic(self) -> bool:
        """Whether ``Sigma = I`` exactly."""
        return self._values.size == 0 and self._bulk == 1.0

    @cached_property
    def covariance(self) -> np.ndarray:
        """``Sigma = E[x x^T]``, shape ``(N_i, N_i)`` (formed on first use for the identity and spiked laws)."""
        if self._dense is not None:
            return self._dense
        S = self.matmul(np.eye(self._n))
        S = 0.5 * (S + S.T)
        S.setflags(write=False)
        return S

    @property
    def eigenvalues(self) -> np.ndarray:
        """All ``N_i`` eigenvalues of ``Sigma``, ascending (negative rounding set to 0)."""
        bulk = np.full(self._n - self._values.size, self._bulk)
        return np.sort(np.concatenate([self._values, bulk]))

    @property
    def rank(self) -> int:
        """Number of eigenvalues above ``PSD_RTOL`` times the largest."""
        lam = self.eigenvalues
        return int(np.count_nonzero(lam > PSD_RTOL * lam[-1]))

    def matmul(self, X: np.ndarray, power: float = 1.0) -> np.ndarray:
        """``X Sigma^power`` for ``X`` ``(..., N_i)`` (``Sigma`` symmetric: rows ``Sigma^power x``).

        ``power`` 1 (the covariance), 1/2 (the symmetric square root ``L``, ``L L^T = Sigma``),
        or any ``p >= 0``. ``O(N_i m)`` per row in the structured form.
        """
        X = np.asarray(X, dtype=np.float64)
        if power == 1.0 and self._dense is not None:
            return X @ self._dense
        if self._values.size == 0:
            return X * self._bulk**power
        Q = self._vectors
        b = self._bulk**power if self._bulk > 0 or power > 0 else 0.0
        return b * X + ((X @ Q) * (self._values**power - b)) @ Q.T

    def torch_matmul(self, X):
        """``X Sigma`` for a torch tensor ``X`` ``(..., N_i)`` (differentiable in ``X``; the structured form, no ``N_i x N_i`` matrix
        unless the covariance is a general one)."""
        if self._values.size == 0:
            return X * self._bulk
        Q = torch.as_tensor(np.array(self._vectors), dtype=X.dtype, device=X.device)
        scale = torch.as_tensor(self._values - self._bulk, dtype=X.dtype, device=X.device)
        return self._bulk * X + ((X @ Q) * scale) @ Q.T

    def sqrt_factor(self) -> np.ndarray:
        """``L = Sigma^{1/2}`` ``(N_i, N_i)``, symmetric, ``L L^T = Sigma`` (the identity when isotropic)."""
        return np.eye(self._n) if self.isotropic else self.matmul(np.eye(self._n), 0.5)

    def eigenspaces(self, rtol: float | None = None) -> list[Eigenspace]:
        """The eigenspaces of ``Sigma`` (for the structured population route).

        Explicit eigenvalues within ``rtol * lambda_max`` of a group's smallest
        share one eigenspace (value: their mean; default ``rtol = 32 N_i eps``,
        the rounding of ``eigh``), so an identity-plus-spikes matrix read from a
        file is recognised. The bulk (``basis=None``) has multiplicity ``N_i - m``.
        """
        lam = self._values
        out: list[Eigenspace] = []
        if self._n > lam.size:
            out.append(Eigenspace(self._bulk, None, self._n - lam.size))
        if lam.size:
            top = max(float(np.max(lam)), self._bulk)
            tol = (32 * self._n * EPS if rtol is None else float(rtol)) * top
            order = np.argsort(lam, kind="stable")
            start = 0
            for i in range(1, lam.size + 1):
                if i == lam.size or lam[order[i]] - lam[order[start]] > tol:
                    idx = order[start:i]
                    out.append(Eigenspace(float(np.mean(lam[idx])), self._vectors[:, idx], idx.size))
                    start = i
        return out

    def sample(self, n_samples: int, seed: int | None = 0) -> np.ndarray:
        """``(N, N_i)`` rows ``x ~ N(0, Sigma)``, seeded (:func:`nearopt.model.network.sample_inputs` with ``factor = Sigma^{1/2}``)."""
        if self.isotropic:
            return sample_inputs(n_samples, self._n, seed)
        return sample_inputs(n_samples, self._n, seed, factor=self.sqrt_factor())

    def describe(self) -> dict:
        """Short JSON-able description (for :class:`~nearopt.spectra.spectrum.Spectrum` extras)."""
        lam = self.eigenvalues
        return {"law": self.name, "isotropic": self.isotropic, "covariance_trace": float(lam.sum()),
                "covariance_eigenvalue_range": [float(lam[0]), float(lam[-1])], "covariance_rank": self.rank}

    def __repr__(self) -> str:
        if self.isotropic:
            return f"GaussianInputs({self._n})"
        lam = self.eigenvalues
        return f"GaussianInputs(N_i={self._n}, {self.name}, eigenvalues {lam[0]:.3g}..{lam[-1]:.3g})"


def _validate_covariance(S, n_inputs: int | None) -> np.ndarray:
    """Checked, symmetrised float64 copy of a covariance ``S`` ``(N_i, N_i)`` (see :class:`GaussianInputs`)."""
    try:
        S = np.array(S, dtype=np.float64)
    except (TypeError, ValueError):
        raise NearoptError("the covariance must be a real numeric (N_i, N_i) array") from None
    if not np.all(np.isfinite(S)):
        raise NearoptError("the covariance contains NaN or infinite values")
    if S.ndim != 2 or S.shape[0] != S.shape[1] or S.shape[0] < 1:
        raise NearoptError(f"the covariance must be a square (N_i, N_i) matrix, got shape {S.shape}")
    if n_inputs is not None and S.shape[0] != require_positive_int(n_inputs, "N_i"):
        raise NearoptError(f"the covariance is {S.shape[0]} x {S.shape[0]}, but N_i = {n_inputs}")
    scale = float(np.max(np.abs(S)))
    if scale == 0.0:
        raise NearoptError("the covariance is zero: every input would be 0")
    asym = float(np.max(np.abs(S - S.T)))
    if asym > SYMMETRY_RTOL * scale:
        raise NearoptError(f"the covariance is not symmetric: max |S - S^T| = {asym:.3g} (> {SYMMETRY_RTOL:g} x max |S|)")
    S = 0.5 * (S + S.T)
    lam = scipy.linalg.eigvalsh(S)
    if lam[0] < RankPolicy.psd_floor(lam, PSD_RTOL) or lam[-1] <= 0:
        raise NearoptError(f"the covariance is not positive semi-definite: smallest eigenvalue {lam[0]:.3g} (largest {lam[-1]:.3g}, tolerance {PSD_RTOL:g} relative)")
    return S


InputLaw = GaussianInputs


@dataclass(frozen=True, eq=False)
class Problem:
    """An immutable description of a teacher-student curvature problem.

    Attributes
    ----------
    teacher : TwoLayerNet
        Labels ``y = f_teacher(x)``; ``W1`` ``(M_h, N_i)``, ``W2`` ``(M, M_h)``, biases optional.
    student : TwoLayerNet
        The point ``theta`` where curvature is taken; ``W1`` ``(K, N_i)``; same ``N_i`` and
        number of outputs ``M`` as the teacher; its own activation and biases. Defaults to
        the teacher.
    inputs : GaussianInputs
        The input law (defaults to ``N(0, I_{N_i})``).
    trained : str
        Which blocks are parameters; the others stay fixed: ``both``, ``first`` (``W1`` and
        ``b1``), ``second`` (``W2`` and ``b2``), or a comma list of blocks (``"W1,b1"``).
    """

    teacher: TwoLayerNet
    # ``None`` is replaced in ``__post_init__`` (student -> the teacher, inputs -> N(0, I)),
    # so after construction both are always set: typed as such for the code downstream.
    student: TwoLayerNet = None  # type: ignore[assignment]
    inputs: InputLaw = None  # type: ignore[assignment]
    trained: str = "both"

    def __post_init__(self) -> None:
        if not isinstance(self.teacher, TwoLayerNet):
            raise NearoptError(f"teacher must be a TwoLayerNet, got {type(self.teacher).__name__}")
        student = self.teacher if self.student is None else self.student
        if not isinstance(student, TwoLayerNet):
            raise NearoptError(f"student must be a TwoLayerNet, got {type(student).__name__}")
        if student.n_inputs != self.teacher.n_inputs:
            raise NearoptError(f"student has N_i = {student.n_inputs}, teacher has N_i = {self.teacher.n_inputs}")
        if student.n_outputs != self.teacher.n_outputs:
            raise NearoptError(f"student has M = {student.n_outputs} outputs, teacher has M = {self.teacher.n_outputs}")
        inputs = GaussianInputs(self.teacher.n_inputs) if self.inputs is None else self.inputs
        if inputs.n_inputs != self.teacher.n_inputs:
            raise NearoptError(f"the input law has dimension {inputs.n_inputs}, the networks N_i = {self.teacher.n_inputs}")
        blocks = _trained_blocks(self.trained, student)  # validates
        for name in TRAINED_BLOCKS:  # one spelling per set of blocks: "W1" of a network without b1 is "first"
            if _trained_blocks(name, student) == blocks:
                object.__setattr__(self, "trained", name)
                break
        else:
            object.__setattr__(self, "trained", ",".join(blocks))
        object.__setattr__(self, "student", student)
        object.__setattr__(self, "inputs", inputs)

    # the student is always set after __post_init__; these accessors give it a non-optional type
    @property
    def point(self) -> TwoLayerNet:
        """The student network (the point where curvature is taken)."""
        assert self.student is not None
        return self.student

    @property
    def n_inputs(self) -> int:
        return self.teacher.n_inputs

    @property
    def activation(self):
        return self.teacher.activation

    @property
    def at_teacher(self) -> bool:
        """Whether the student *is* the teacher (same architecture, activation and weights): the residual vanishes there."""
        s, t = self.point, self.teacher
        if s is t:
            return True
        same = s.activation == t.activation and s.W1.shape == t.W1.shape and s.W2.shape == t.W2.shape
        return same and all(_same_array(getattr(s, k), getattr(t, k)) for k in ("W1", "W2", "b1", "b2"))

    @property
    def is_plain(self) -> bool:
        """The paper's setting: both networks ``W2 g(W1 x)`` with one output, one activation, a named trained set."""
        return self.teacher.is_plain and self.point.is_plain and self.point.activation == self.teacher.activation and self.trained in TRAINED_BLOCKS

    def features(self) -> list[str]:
        """What the problem has beyond the paper's setting (empty when :attr:`is_plain`)."""
        out = sorted(set(self.teacher.features()) | set(self.point.features()))
        if self.point.activation != self.teacher.activation:
            out.append(f"a {self.teacher.activation.name} teacher for a {self.point.activation.name} student")
        if self.trained not in TRAINED_BLOCKS:
            out.append(f"trained blocks {self.trained}")
        return out

    @property
    def trained_blocks(self) -> tuple[str, ...]:
        """The names of the trained parameter blocks of the student (``W1``, ``b1``, ``W2``, ``b2``)."""
        return _trained_blocks(self.trained, self.point)

    @property
    def trained_indices(self) -> np.ndarray:
        """Indices ``(P,)`` of the trained entries in ``student.parameters()``."""
        bl = self.point.blocks()
        return np.concatenate([np.arange(*bl[name]) for name in self.trained_blocks])

    @property
    def n_params(self) -> int:
        """``P``: the number of trained parameters."""
        return int(self.trained_indices.size)

    def replace(self, **changes) -> Problem:
        """A copy with some fields changed (``dataclasses.replace``; validated again)."""
        if "teacher" in changes and "student" not in changes and self.point is self.teacher:
            changes["student"] = None
        return dataclasses.replace(self, **changes)


def require_paper_setting(problem: Problem, route: str) -> None:
    """Refuse a problem outside the paper's setting (:attr:`Problem.is_plain`) on a route that covers only it: one message.

    What the problem has and the routes that take it (:func:`~nearopt.model.network.capability_error`).
    """
    if problem.is_plain:
        return
    raise capability_error(route, "with one output, no biases and one activation", "problem", problem.features())


def _same_array(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and a.shape == b.shape and np.array_equal(a, b))


def _trained_blocks(trained: str, net: TwoLayerNet) -> tuple[str, ...]:
    """The blocks a ``trained`` value names for ``net``: ``both``, ``first`` (``W1``, ``b1``), ``second`` (``W2``, ``b2``)
    or a comma list of block names (``"W1,b1"``, ``"W2"``), in parameter order."""
    present = tuple(net.blocks())
    if not isinstance(trained, str):
        raise NearoptError(f"trained must be a text, one of {', '.join(TRAINED_BLOCKS)} or a comma list of {', '.join(BLOCKS)}; got {trained!r}")
    if trained == "both":
        return present
    if trained == "first":
        return tuple(b for b in present if b in ("W1", "b1"))
    if trained == "second":
        return tuple(b for b in present if b in ("W2", "b2"))
    names = [t.strip() for t in trained.split(",")]
    bad = [t for t in names if t not in BLOCKS]
    if bad or not names or len(set(names)) != len(names):
        raise NearoptError(f"trained must be one of {', '.join(TRAINED_BLOCKS)} or a comma list of distinct blocks from {', '.join(BLOCKS)}; "
                           f"got {trained!r}")
    missing = [t for t in names if t not in present]
    if missing:
        raise NearoptError(f"trained names block(s) {', '.join(missing)} that the network lacks (it has {', '.join(present)})")
    return tuple(b for b in present if b in names)


def whiten(problem: Problem) -> tuple[Problem, np.ndarray]:
    """The same problem in whitened coordinates, and the map back.

    With ``x = L z``, ``z ~ N(0, I)``, ``L = Sigma^{1/2}`` ``(N_i, N_i)`` symmetric, every
    network sees ``W1 x = (W1 L) z``: returns ``(Problem(teacher W1* L, student W1 L,
    isotropic inputs, same trained blocks), L)``. The Jacobians obey ``J = T J~``
    with ``T = blockdiag(I_{N_h} (x) L, I_{N_h})``, so every curvature under
    ``Sigma`` is ``T H~ T^T`` with ``H~`` the isotropic one of the whitened problem
    (at any student point: the loss is the same function of ``W1 L``).
    ``T^T = T`` since ``L`` is symmetric; on a ``W1`` block (row-major ``(N_h, N_i)``)
    it acts as ``dW1 -> dW1 L``.
    """
    law = problem.inputs
    assert law is not None
    if law.isotropic:
        return problem, np.eye(problem.n_inputs)
    L = law.sqrt_factor()
    t, s = problem.teacher, problem.point

    def turn(net: TwoLayerNet) -> TwoLayerNet:
        return TwoLayerNet(net.W1 @ L, net.W2, net.activation, net.b1, net.b2)

    teacher = turn(t)
    student = teacher if s is t else turn(s)
    return Problem(teacher, student, GaussianInputs(problem.n_inputs), problem.trained), L


def as_problem(problem_or_net: Problem | TwoLayerNet) -> Problem:
    """``Problem(net)`` for a bare network (student = teacher), a problem unchanged."""
    if isinstance(problem_or_net, Problem):
        return problem_or_net
    if isinstance(problem_or_net, TwoLayerNet):
        return Problem(problem_or_net)
    raise NearoptError(f"expected a Problem or a TwoLayerNet, got {type(problem_or_net).__name__}")
